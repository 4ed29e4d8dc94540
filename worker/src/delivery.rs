//! What becomes of a delivery, for both consumers (agent queues and the webhook queue): the
//! ack decision ([`Disposition`]) and its execution ([`settle`]), messages no worker could ever
//! process, and the `not_before` check that sends an early message back round the delay
//! ladder.

use std::time::Duration;

use chrono::{DateTime, Utc};
use lapin::message::Delivery;
use lapin::options::BasicNackOptions;
use lapin::types::AMQPValue;

use agentfleet_common::broker::BrokerError;
use agentfleet_common::wire::WireError;

use crate::acks::Settlement;
use crate::Shared;

/// What to do with the delivery once the handler is done with it.
#[derive(Debug, PartialEq, Eq)]
pub enum Disposition {
    Ack,
    /// Infrastructure trouble (Redis or the broker): give the message back to be retried.
    Requeue,
    /// Unusable message: to the dead-letter queue.
    DeadLetter,
    /// Shutting down mid-run: leave it unacked; closing the connection requeues it.
    Abandon,
    /// Not started (shutting down while it waited for a slot): back to the queue at once.
    GiveBack,
}

/// Pause before giving a message back after an infrastructure error, so an outage does not
/// become a hot redelivery loop.
pub(crate) const REQUEUE_PAUSE: Duration = Duration::from_secs(1);

/// Messages due within this much are worked now rather than sent round the delay ladder again.
const DUE_SLACK: Duration = Duration::from_millis(25);

/// Acks, requeues or dead-letters a delivery. An ack goes to the channel's ack sender, which
/// may combine it with others (see [`crate::acks`]); a nack is written before this returns.
pub async fn settle(shared: &Shared, settlement: Settlement, disposition: Disposition) {
    let Settlement { tag, acker, acks } = settlement;
    let requeue = match disposition {
        Disposition::Ack => return acks.ack(tag, acker),
        Disposition::Abandon => return,
        Disposition::Requeue => {
            tokio::select! {
                () = tokio::time::sleep(REQUEUE_PAUSE) => {}
                () = shared.hard_stop.cancelled() => {}
            }
            true
        }
        Disposition::GiveBack => true,
        Disposition::DeadLetter => false,
    };
    let nacked = acker
        .nack(BasicNackOptions {
            requeue,
            ..BasicNackOptions::default()
        })
        .await;
    match nacked {
        Ok(_) => acks.gone(tag),
        // The channel is gone: the broker will redeliver the message, which is safe.
        Err(err) => {
            tracing::warn!(error = %err, "could not settle a delivery; it will be redelivered")
        }
    }
}

/// A message no worker could ever process: to the dead-letter queue, without stopping.
pub fn undecodable(shared: &Shared, queue: &str, err: &WireError) -> Disposition {
    tracing::error!(queue, error = %err, "undecodable message; dead-lettering");
    shared
        .metrics
        .dead_letters
        .with_label_values(&["undecodable"])
        .inc();
    Disposition::DeadLetter
}

/// How often the broker delivered this message before (quorum queues count it).
pub fn delivery_count(delivery: &Delivery) -> u32 {
    delivery
        .properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get("x-delivery-count"))
        .and_then(|v| match v {
            AMQPValue::LongLongInt(n) => u32::try_from(*n).ok(),
            AMQPValue::LongInt(n) => u32::try_from(*n).ok(),
            AMQPValue::LongUInt(n) => Some(*n),
            AMQPValue::ShortInt(n) => u32::try_from(*n).ok(),
            _ => None,
        })
        .unwrap_or(0)
}

/// The `not_before` of a message due after `delay` from now (none past chrono's range).
pub fn not_before(delay: Duration) -> Option<DateTime<Utc>> {
    chrono::Duration::from_std(delay)
        .ok()
        .map(|d| Utc::now() + d)
}

/// How long until `not_before`, if it is meaningfully in the future.
pub fn remaining_delay(not_before: Option<DateTime<Utc>>, now: DateTime<Utc>) -> Option<Duration> {
    let remaining = (not_before? - now).to_std().ok()?;
    (remaining > DUE_SLACK).then_some(remaining)
}

/// The disposition of a message that was (or could not be) published to the delay ladder:
/// acked once its delayed copy is confirmed, given back otherwise (the error is logged here,
/// so no caller drops it).
pub fn after_delayed_publish(result: Result<(), BrokerError>, what: &str) -> Disposition {
    match result {
        Ok(()) => Disposition::Ack,
        Err(err) => {
            tracing::warn!(error = %err, "could not delay {what}; giving it back");
            Disposition::Requeue
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_delay_comes_back_as_the_time_still_to_wait() {
        let due = not_before(Duration::from_secs(60));
        let left = remaining_delay(due, Utc::now()).expect("in the future");
        assert!(
            left <= Duration::from_secs(60) && left > Duration::from_secs(59),
            "{left:?}"
        );
        assert_eq!(not_before(Duration::MAX), None, "past chrono's range");
    }

    #[test]
    fn only_future_not_before_delays() {
        let now = Utc::now();
        assert_eq!(remaining_delay(None, now), None);
        assert_eq!(
            remaining_delay(Some(now - chrono::Duration::seconds(1)), now),
            None
        );
        assert_eq!(
            remaining_delay(Some(now + chrono::Duration::milliseconds(10)), now),
            None
        );
        assert_eq!(
            remaining_delay(Some(now + chrono::Duration::seconds(2)), now),
            Some(Duration::from_secs(2))
        );
    }
}
