//! Webhook delivery: a first attempt inline from the run that ended the job (bounded, with
//! its own per-replica room), then from its own durable queue with its own slots, so a slow
//! receiver never occupies an agent's concurrency. Each delivery is signed per Standard Webhooks with the
//! tenant's secret; the `webhook-id` is derived from the job and event, so it is the same on
//! every retry and every replica. Failures are retried on the configured schedule through the
//! delay ladder; 410 Gone stops retries.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use lapin::message::Delivery;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, SemaphorePermit, TryAcquireError};
use tracing::Instrument as _;
use url::Url;

use agentfleet_common::broker::BrokerError;
use agentfleet_common::events;
use agentfleet_common::outbound::{Destination, OutboundError};
use agentfleet_common::signing;
use agentfleet_common::store::{Loaded, StoredJob as Job};
use agentfleet_common::wire::{
    JobRecord, Versioned, WebhookEvent, WebhookMessage, WebhookOutcome, WebhookStatus,
};

use crate::acks::Acks;
use crate::delivery::{
    after_delayed_publish, not_before, remaining_delay, settle, undecodable, Disposition,
};
use crate::Shared;

/// How one attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Delivered(u16),
    Gone,
    Failed(Option<u16>),
    Blocked,
}

/// The handler of one webhook delivery (its content is read before the task starts, as for
/// a job: see [`crate::run::handle_job`]).
pub fn handle_webhook(
    shared: Arc<Shared>,
    delivery: Delivery,
    acks: Acks,
    slot: OwnedSemaphorePermit,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    let decoded = WebhookMessage::decode(&delivery.data);
    let settlement = acks.settlement(delivery);
    async move {
        let _slot = slot;
        let disposition = match decoded {
            Ok(msg) => {
                let span = tracing::info_span!(
                    "webhook",
                    job_id = %msg.job_id,
                    tenant = %msg.tenant,
                    event = msg.event.as_str(),
                    attempt = msg.attempt.saturating_add(1)
                );
                deliver(&shared, msg).instrument(span).await
            }
            Err(err) => undecodable(&shared, "webhooks", &err),
        };
        settle(&shared, settlement, disposition).await;
    }
}

async fn deliver(shared: &Shared, msg: WebhookMessage) -> Disposition {
    if let Some(remaining) = remaining_delay(msg.not_before, Utc::now()) {
        let published = shared.broker.publish_webhook_delayed(&msg, remaining).await;
        return after_delayed_publish(published, "an early webhook");
    }
    let job = match shared.store.load_for_run(msg.job_id).await {
        Ok(Loaded::Ready(job)) => job,
        Ok(Loaded::Concluded(_)) => {
            // A second hand-off of the same event (at least once): its delivery is over.
            tracing::debug!("the job's event was delivered already; duplicate dropped");
            return Disposition::Ack;
        }
        Ok(Loaded::Gone) => {
            tracing::warn!("job is gone; dropping its webhook");
            return Disposition::Ack;
        }
        Err(err) => {
            tracing::warn!(error = %err, "cannot load the job for its webhook");
            return Disposition::Requeue;
        }
    };
    match attempt(shared, msg, job, shared.config.webhooks.timeout).await {
        Next::Done => Disposition::Ack,
        Next::Undeliverable => Disposition::DeadLetter,
        Next::Later { msg, delay, what } => {
            let published = shared.broker.publish_webhook_delayed(&msg, delay).await;
            after_delayed_publish(published, what)
        }
    }
}

/// What is left to do for an event after an attempt.
enum Next {
    /// Nothing: delivered, or its delivery ended (gone, blocked, exhausted, no URL or secret).
    Done,
    /// The event cannot be encoded.
    Undeliverable,
    /// Another attempt (or the same one, throttled), through the delay ladder.
    Later {
        msg: WebhookMessage,
        delay: Duration,
        what: &'static str,
    },
}

/// How the job's end reached its receiver, as [`first_attempt`] tells the run.
pub(crate) enum FirstAttempt {
    /// The job has no event to send (no webhook URL).
    NoEvent,
    /// Delivered inline, or its delivery ended: nothing went to the webhook queue.
    Concluded,
    /// On the webhook queue (no inline room, or the inline attempt failed or was slow).
    HandedOff,
}

/// The first attempt at a job's event, made by the run that just stored the job's end, so
/// a job whose receiver answers crosses the broker once. Bounded by
/// `webhooks.inline_timeout_ms`, by the agent's room (`agent_room`: its deliveries beyond its
/// call slots) and by the replica's `inline_concurrency` (no room within [`ROOM_WAIT`]: to
/// the queue), so a slow receiver costs its own run at most that timeout and other tenants'
/// runs at most the wait, after their results are stored and their call slots given back.
/// Anything but a concluded delivery is handed to the webhook queue (a failed attempt as
/// attempt 1, on the retry schedule); an error means the event is on no queue, and the run
/// must not ack.
pub(crate) async fn first_attempt(
    shared: &Shared,
    agent_room: &Semaphore,
    job: Job,
) -> Result<FirstAttempt, BrokerError> {
    let Some(msg) = events::event_message(&job.record, &job.spec) else {
        return Ok(FirstAttempt::NoEvent);
    };
    let inline = &shared.config.webhooks;
    // Either at 0 turns inline attempts off: no room to wait for.
    let room = if inline.inline_timeout.is_zero() || inline.inline_concurrency == 0 {
        None
    } else {
        inline_room(agent_room, &shared.inline_webhooks).await
    };
    let Some(_room) = room else {
        Box::pin(shared.broker.publish_webhook(&msg)).await?;
        count_first(shared, &FirstAttempt::HandedOff);
        return Ok(FirstAttempt::HandedOff);
    };
    let timeout = inline.inline_timeout.min(inline.timeout);
    let first = match attempt(shared, msg.clone(), job, timeout).await {
        Next::Done => FirstAttempt::Concluded,
        Next::Undeliverable => {
            // The queue's consumer dead-letters it, keeping a copy to look at.
            Box::pin(shared.broker.publish_webhook(&msg)).await?;
            FirstAttempt::HandedOff
        }
        Next::Later { msg, delay, .. } => {
            Box::pin(shared.broker.publish_webhook_delayed(&msg, delay)).await?;
            FirstAttempt::HandedOff
        }
    };
    count_first(shared, &first);
    Ok(first)
}

/// How long a run that finds the inline room full waits for a place before it hands its
/// event to the queue. Short next to a run, so a receiver that hangs (and holds its places
/// for the inline timeout) costs another tenant's run at most this; long next to a fast
/// receiver's answer, so that under load — when every attempt is slower, and a hand-off
/// costs a publish, a delivery and a record read, ~0.1 ms of CPU — the run waits for the
/// next free place instead (scenario 1: 0.20 of the events queued without the wait).
const ROOM_WAIT: Duration = Duration::from_millis(20);

/// A place in the agent's inline room and in the replica's, waiting at most [`ROOM_WAIT`]
/// in all (the agent's first, everywhere, so two runs never hold one each and wait for the
/// other's).
async fn inline_room<'a>(
    agent_room: &'a Semaphore,
    replica_room: &'a Semaphore,
) -> Option<(SemaphorePermit<'a>, SemaphorePermit<'a>)> {
    let deadline = tokio::time::Instant::now() + ROOM_WAIT;
    let agent = place(agent_room, deadline).await?;
    let replica = place(replica_room, deadline).await?;
    Some((agent, replica))
}

/// A place in `room`: at once when one is free (no timer on the usual path), else the first
/// that frees before `deadline`.
async fn place(room: &Semaphore, deadline: tokio::time::Instant) -> Option<SemaphorePermit<'_>> {
    match room.try_acquire() {
        Ok(permit) => Some(permit),
        Err(TryAcquireError::Closed) => None,
        Err(TryAcquireError::NoPermits) => tokio::time::timeout_at(deadline, room.acquire())
            .await
            .ok()?
            .ok(),
    }
}

fn count_first(shared: &Shared, first: &FirstAttempt) {
    let path = match first {
        FirstAttempt::NoEvent => return,
        FirstAttempt::Concluded => "inline",
        FirstAttempt::HandedOff => "queued",
    };
    shared
        .metrics
        .webhook_first_attempts
        .with_label_values(&[path])
        .inc();
}

/// One attempt at `msg`'s event, bounded by `timeout`, noted on the record; answers what is
/// left to do.
async fn attempt(shared: &Shared, msg: WebhookMessage, job: Job, timeout: Duration) -> Next {
    let Some(url) = job
        .spec
        .webhook_url
        .as_deref()
        .and_then(|u| Url::parse(u).ok())
    else {
        return Next::Done;
    };
    if let Some(wait) = over_host_rate(shared, &url) {
        // Same attempt, later: a throttled delivery is not a failed one.
        count_delivery(shared, "throttled");
        let attempt = msg.attempt;
        return later(msg, attempt, wait, "a throttled webhook");
    }
    let Some(secret) = shared.secrets.webhook.get(&msg.tenant) else {
        tracing::error!("tenant has no webhook secret configured; cannot sign, dropping");
        count_delivery(shared, "blocked");
        return Next::Done;
    };
    let Some(signed) = sign_event(shared, &msg, secret, &job) else {
        return Next::Undeliverable;
    };
    let outcome = post(shared, &url, signed, timeout).await;
    let schedule = &shared.config.webhooks.retry_schedule;
    let retry_delay = match outcome {
        Outcome::Failed(_) => schedule
            .get(msg.attempt as usize)
            .map(|&delay| jitter(delay)),
        _ => None,
    };
    let (label, ended) = conclude(outcome, retry_delay.is_some());
    count_delivery(shared, label);
    tracing::info!(outcome = label, "webhook attempt done");

    // Boxed, like the publishes of `first_attempt`: a run's ending waits mostly on the POST,
    // and would otherwise hold room for this Redis write (and its reply) all along.
    let recorded = Box::pin(record_attempt(shared, job.record, &msg, (outcome, ended))).await;
    if let Err(err) = recorded {
        // Bookkeeping only: the delivery itself stands; do not send it again for this.
        tracing::warn!(error = %err, "cannot record the webhook attempt");
    }
    match retry_delay {
        Some(delay) => {
            let next = msg.attempt.saturating_add(1);
            later(msg, next, delay, "the webhook retry")
        }
        None => Next::Done,
    }
}

/// `msg` as attempt number `attempt`, due after `delay`.
fn later(msg: WebhookMessage, attempt: u32, delay: Duration, what: &'static str) -> Next {
    Next::Later {
        msg: WebhookMessage {
            attempt,
            not_before: not_before(delay),
            ..msg
        },
        delay,
        what,
    }
}

fn count_delivery(shared: &Shared, label: &str) {
    shared
        .metrics
        .webhook_deliveries
        .with_label_values(&[label])
        .inc();
}

/// A signed event: its body and its Standard Webhooks headers.
struct Signed {
    body: Vec<u8>,
    id: String,
    timestamp: String,
    signature: String,
}

/// The event is the record as it was when the job ended, with the run's steps: the delivery
/// bookkeeping is not part of it, and its timestamp is the end time, so every attempt sends
/// the same body. `None` if it cannot be encoded.
fn sign_event(
    shared: &Shared,
    msg: &WebhookMessage,
    secret: &signing::SigningKeys,
    job: &Job,
) -> Option<Signed> {
    let mut data = job.record.clone();
    data.webhook = None;
    data.steps = Some(job.steps.clone());
    let privacy = shared.privacy.get();
    if privacy.masks_output(&data.agent) {
        // The record was stored masked; its steps were not (they are the run's own state).
        privacy.masker().mask_result(&mut data);
    }
    let event = WebhookEvent {
        event_type: msg.event,
        timestamp: job.record.finished_at.unwrap_or_else(Utc::now),
        data,
    };
    let body = serde_json::to_vec(&event).ok()?;
    let id = event.id();
    let timestamp = Utc::now().timestamp();
    let signature = secret.sign(&id, timestamp, &body);
    Some(Signed {
        body,
        id,
        timestamp: timestamp.to_string(),
        signature,
    })
}

async fn post(shared: &Shared, url: &Url, signed: Signed, timeout: Duration) -> Outcome {
    let headers = [
        (signing::HEADER_ID, signed.id.as_str()),
        (signing::HEADER_TIMESTAMP, signed.timestamp.as_str()),
        (signing::HEADER_SIGNATURE, signed.signature.as_str()),
    ];
    let result = shared
        .outbound
        .post_json(Destination::Webhook, url, &headers, signed.body, timeout)
        .await;
    if let Err(err) = &result {
        tracing::info!(error = %err, "webhook attempt failed");
    }
    match &result {
        Ok(r) if (200..300).contains(&r.status) => Outcome::Delivered(r.status),
        Ok(r) if r.status == 410 => Outcome::Gone,
        Ok(r) => Outcome::Failed(Some(r.status)),
        Err(OutboundError::Blocked(_)) => Outcome::Blocked,
        Err(_) => Outcome::Failed(None),
    }
}

/// How long a delivery to `url`'s host must wait under `webhooks.per_host_rate`, if at all.
fn over_host_rate(shared: &Shared, url: &Url) -> Option<Duration> {
    let limiters = shared.webhook_hosts.get();
    let limiter = limiters.as_ref().as_ref()?;
    let host = format!(
        "{}:{}",
        url.host_str().unwrap_or_default(),
        url.port_or_known_default().unwrap_or_default()
    );
    limiter.check(&host).err()
}

/// The attempt's metric label, and how the delivery ended if it has.
fn conclude(outcome: Outcome, retrying: bool) -> (&'static str, Option<WebhookOutcome>) {
    match (outcome, retrying) {
        (Outcome::Delivered(_), _) => ("delivered", Some(WebhookOutcome::Delivered)),
        (Outcome::Gone, _) => ("gone", Some(WebhookOutcome::Gone)),
        (Outcome::Blocked, _) => ("blocked", Some(WebhookOutcome::WebhookBlocked)),
        (Outcome::Failed(_), true) => ("retry", None),
        (Outcome::Failed(_), false) => ("exhausted", Some(WebhookOutcome::Exhausted)),
    }
}

/// ±10% so a burst of failures does not come back as a burst of retries.
fn jitter(delay: Duration) -> Duration {
    delay.mul_f64(0.9 + 0.2 * rand::random::<f64>())
}

/// Notes the attempt on the record loaded for it: a terminal record changes only by this
/// bookkeeping, so there is nothing newer to read back first (two deliveries of the same
/// event racing can only leave the lower attempt count, which the next attempt corrects).
async fn record_attempt(
    shared: &Shared,
    mut record: JobRecord,
    msg: &WebhookMessage,
    (outcome, ended): (Outcome, Option<WebhookOutcome>),
) -> Result<(), agentfleet_common::store::StoreError> {
    let status = record.webhook.get_or_insert_with(WebhookStatus::default);
    status.outcome = ended;
    status.attempts = status.attempts.max(msg.attempt.saturating_add(1));
    status.last_status = match outcome {
        Outcome::Delivered(code) | Outcome::Failed(Some(code)) => Some(code),
        Outcome::Gone => Some(410),
        Outcome::Failed(None) | Outcome::Blocked => None,
    };
    if matches!(outcome, Outcome::Delivered(_)) {
        status.delivered_at.get_or_insert_with(Utc::now);
    }
    shared.store.save_bookkeeping(&record).await.map(|_| ())
}
