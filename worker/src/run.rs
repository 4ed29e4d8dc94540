//! One job delivery, start to finish. The record in Redis is the truth; the message only says
//! "this job needs work". A message is acked only after what its processing produced (the
//! next state, a retry message, the webhook hand-off) is durably stored or confirmed.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicNackOptions};
use tokio::sync::OwnedSemaphorePermit;
use tracing::Instrument as _;

use agentfleet_common::wire::{
    EventType, JobMessage, JobRecord, JobSpec, JobStatus, Versioned, WebhookMessage, SCHEMA_VERSION,
};

use crate::provider::{Completion, Failure};
use crate::retry::backoff;
use crate::{AgentRuntime, Shared};

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
}

/// Pause before giving a message back after an infrastructure error, so an outage does not
/// become a hot redelivery loop.
const REQUEUE_PAUSE: Duration = Duration::from_secs(1);

/// Messages due within this much are worked now rather than sent round the delay ladder again.
const DUE_SLACK: Duration = Duration::from_millis(25);

pub async fn handle_job(
    shared: Arc<Shared>,
    agent: Arc<AgentRuntime>,
    delivery: Delivery,
    _slot: OwnedSemaphorePermit,
) {
    let disposition = match JobMessage::decode(&delivery.data) {
        Ok(msg) => {
            let span = tracing::info_span!(
                "run",
                job_id = %msg.job_id,
                agent = %msg.agent,
                tenant = %msg.tenant,
                attempt = msg.attempt
            );
            process(&shared, &agent, msg).instrument(span).await
        }
        Err(err) => {
            tracing::error!(agent = %agent.name, error = %err, "undecodable job message; dead-lettering");
            shared
                .metrics
                .dead_letters
                .with_label_values(&["undecodable"])
                .inc();
            Disposition::DeadLetter
        }
    };
    settle(&shared, delivery, disposition).await;
}

/// Acks, requeues or dead-letters a delivery.
pub async fn settle(shared: &Shared, delivery: Delivery, disposition: Disposition) {
    let result = match disposition {
        Disposition::Ack => delivery.ack(BasicAckOptions::default()).await,
        Disposition::Requeue => {
            tokio::select! {
                () = tokio::time::sleep(REQUEUE_PAUSE) => {}
                () = shared.hard_stop.cancelled() => {}
            }
            delivery
                .nack(BasicNackOptions {
                    requeue: true,
                    ..BasicNackOptions::default()
                })
                .await
        }
        Disposition::DeadLetter => {
            delivery
                .nack(BasicNackOptions {
                    requeue: false,
                    ..BasicNackOptions::default()
                })
                .await
        }
        Disposition::Abandon => return,
    };
    if let Err(err) = result {
        // The channel is gone: the broker will redeliver the message, which is safe.
        tracing::warn!(error = %err, "could not settle a delivery; it will be redelivered");
    }
}

/// How long until `not_before`, if it is meaningfully in the future.
pub fn remaining_delay(not_before: Option<DateTime<Utc>>, now: DateTime<Utc>) -> Option<Duration> {
    let remaining = (not_before? - now).to_std().ok()?;
    (remaining > DUE_SLACK).then_some(remaining)
}

async fn process(shared: &Shared, agent: &AgentRuntime, msg: JobMessage) -> Disposition {
    if let Some(remaining) = remaining_delay(msg.not_before, Utc::now()) {
        // Still early (a long delay is served in hops): back onto the ladder.
        return match shared.broker.publish_job_delayed(&msg, remaining).await {
            Ok(()) => Disposition::Ack,
            Err(err) => {
                tracing::warn!(error = %err, "could not re-delay a job");
                Disposition::Requeue
            }
        };
    }
    let (mut record, spec) = match shared.store.load_with_spec(msg.job_id).await {
        Ok(Some(found)) => found,
        Ok(None) => {
            tracing::warn!("job record is gone (expired or never stored); dropping the message");
            return Disposition::Ack;
        }
        Err(err) => {
            tracing::warn!(error = %err, "cannot load the job");
            return Disposition::Requeue;
        }
    };
    if record.status.is_terminal() {
        // A redelivery after the job finished: make sure its webhook was handed off (a crash
        // may have come between storing the result and the hand-off), then drop it.
        tracing::info!(status = record.status.as_str(), "job already finished");
        return hand_off_webhook(shared, &record, &spec).await;
    }

    record.status = JobStatus::Running;
    record.attempts += 1;
    record.started_at.get_or_insert_with(Utc::now);
    if let Err(err) = shared.store.save(&record).await {
        tracing::warn!(error = %err, "cannot mark the job running");
        return Disposition::Requeue;
    }

    let in_flight = shared
        .metrics
        .jobs_in_flight
        .with_label_values(&[&agent.name]);
    in_flight.inc();
    let outcome = call_provider(shared, agent, &record, &spec).await;
    in_flight.dec();

    let outcome = match outcome {
        Some(outcome) => outcome,
        None => return Disposition::Abandon,
    };
    match outcome {
        Ok(completion) => {
            record.output = Some(completion.content);
            record.usage = Some(completion.usage);
            record.error = None;
            finish(shared, agent, record, &spec, JobStatus::Succeeded).await
        }
        Err(failure) => {
            let retryable = failure.category.is_retryable();
            record.error = Some(failure.to_job_error());
            if retryable && record.attempts < agent.config.retry.attempts {
                schedule_retry(shared, agent, record, &msg, &failure).await
            } else {
                tracing::info!(category = failure.category.as_str(), error = %failure.message, "job failed");
                finish(shared, agent, record, &spec, JobStatus::Failed).await
            }
        }
    }
}

/// Admission, then the provider call. `None` when the worker is being stopped hard.
async fn call_provider(
    shared: &Shared,
    agent: &AgentRuntime,
    record: &JobRecord,
    spec: &JobSpec,
) -> Option<Result<Completion, Failure>> {
    let estimate = estimate_tokens(spec, agent.provider.max_tokens());
    match agent.limits.admit(estimate, &shared.hard_stop).await {
        Ok(waited) => {
            shared
                .metrics
                .rate_limit_wait
                .with_label_values(&[&agent.name])
                .observe(waited.as_secs_f64());
        }
        Err(crate::limits::AdmitError::Stopped) => return None,
        Err(err) => {
            return Some(Err(Failure::new(
                agentfleet_common::wire::ErrorCategory::Internal,
                err.to_string(),
            )))
        }
    }
    let messages = spec.input.to_messages();
    let started = tokio::time::Instant::now();
    let job_id = record.id.to_string();
    let call =
        agent
            .provider
            .complete(&shared.outbound, &messages, &job_id, agent.config.timeout());
    let result = tokio::select! {
        result = call => result,
        () = shared.hard_stop.cancelled() => return None,
    };
    let metrics = &shared.metrics;
    metrics
        .llm_request_duration
        .with_label_values(&[&agent.name])
        .observe(started.elapsed().as_secs_f64());
    let outcome = match &result {
        Ok(_) => "ok",
        Err(f) => f.category.as_str(),
    };
    metrics
        .llm_requests
        .with_label_values(&[&agent.name, outcome])
        .inc();
    if let Ok(completion) = &result {
        let usage = completion.usage;
        metrics
            .llm_tokens
            .with_label_values(&[&agent.name, "prompt"])
            .inc_by(usage.prompt_tokens);
        metrics
            .llm_tokens
            .with_label_values(&[&agent.name, "completion"])
            .inc_by(usage.completion_tokens);
        if let Err(err) = agent
            .limits
            .settle_tokens(estimate, usage.total_tokens)
            .await
        {
            tracing::warn!(error = %err, "could not settle the token budget");
        }
    }
    Some(result)
}

/// Tokens a call may use before the provider reports: ~4 characters a token for the prompt,
/// plus the most it may generate.
fn estimate_tokens(spec: &JobSpec, max_tokens: u32) -> u64 {
    (spec.input.content_chars() as u64).div_ceil(4) + u64::from(max_tokens)
}

async fn schedule_retry(
    shared: &Shared,
    agent: &AgentRuntime,
    mut record: JobRecord,
    msg: &JobMessage,
    failure: &Failure,
) -> Disposition {
    let next_attempt = record.attempts + 1;
    let delay = backoff(
        next_attempt,
        Duration::from_secs(agent.config.retry.max_delay_secs),
        failure.retry_after,
    );
    record.status = JobStatus::Retrying;
    if let Err(err) = shared.store.save(&record).await {
        tracing::warn!(error = %err, "cannot record the retry");
        return Disposition::Requeue;
    }
    let retry = JobMessage {
        v: SCHEMA_VERSION,
        attempt: next_attempt,
        not_before: chrono::Duration::from_std(delay)
            .ok()
            .map(|d| Utc::now() + d),
        ..msg.clone()
    };
    if let Err(err) = shared.broker.publish_job_delayed(&retry, delay).await {
        tracing::warn!(error = %err, "cannot schedule the retry");
        return Disposition::Requeue;
    }
    shared
        .metrics
        .job_retries
        .with_label_values(&[&agent.name, failure.category.as_str()])
        .inc();
    tracing::info!(category = failure.category.as_str(), error = %failure.message, ?delay, next_attempt, "retry scheduled");
    Disposition::Ack
}

async fn finish(
    shared: &Shared,
    agent: &AgentRuntime,
    mut record: JobRecord,
    spec: &JobSpec,
    status: JobStatus,
) -> Disposition {
    let now = Utc::now();
    record.status = status;
    record.finished_at = Some(now);
    if let Err(err) = shared.store.save(&record).await {
        tracing::warn!(error = %err, "cannot store the result");
        return Disposition::Requeue;
    }
    shared
        .metrics
        .jobs_completed
        .with_label_values(&[&agent.name, status.as_str()])
        .inc();
    let elapsed = (now - record.created_at).to_std().unwrap_or_default();
    shared
        .metrics
        .job_duration
        .with_label_values(&[&agent.name])
        .observe(elapsed.as_secs_f64());
    tracing::info!(status = status.as_str(), "job finished");
    hand_off_webhook(shared, &record, spec).await
}

/// Puts the job's terminal event on the webhook queue (if it has a webhook URL).
async fn hand_off_webhook(shared: &Shared, record: &JobRecord, spec: &JobSpec) -> Disposition {
    let Some(event) = EventType::for_status(record.status) else {
        return Disposition::Ack;
    };
    if spec.webhook_url.is_none() {
        return Disposition::Ack;
    }
    if record
        .webhook
        .as_ref()
        .is_some_and(|w| w.delivered_at.is_some())
    {
        return Disposition::Ack;
    }
    let msg = WebhookMessage {
        v: SCHEMA_VERSION,
        job_id: record.id,
        tenant: record.tenant.clone(),
        event,
        attempt: 0,
        not_before: None,
    };
    match shared.broker.publish_webhook(&msg).await {
        Ok(()) => Disposition::Ack,
        Err(err) => {
            // Not acked: the redelivery finds the job terminal and hands off again.
            tracing::warn!(error = %err, "cannot hand off the webhook");
            Disposition::Requeue
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
