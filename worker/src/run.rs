//! One job delivery, start to finish. The record in Redis is the truth; the message only says
//! "this job needs work". A run changes the record only while it holds the job's lease, and
//! every write checks the lease's fencing token in the same atomic step (see
//! `JobStore::save_leased`), so a stalled worker that lost its lease cannot overwrite anything
//! or send a webhook. A message is acked only after what its processing produced (the next
//! state, a retry message, the webhook hand-off) is durably stored or confirmed.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicNackOptions};
use lapin::types::AMQPValue;
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use agentfleet_common::events;
use agentfleet_common::store::{Begun, Lease, Renewed, Written};
use agentfleet_common::wire::{
    AttemptError, Completion, ErrorCategory, JobMessage, JobRecord, JobSpec, JobStatus, Versioned,
    SCHEMA_VERSION,
};

use crate::circuit::{Admission, CallResult};
use crate::provider::Failure;
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
    /// Not started (shutting down while it waited for a slot): back to the queue at once.
    GiveBack,
}

/// How a run ended: what to do with its delivery, and whether it handed the job's terminal
/// event to the webhook queue (noted in the same write that releases the lease).
struct Ending {
    disposition: Disposition,
    handed_off: bool,
}

impl From<Disposition> for Ending {
    fn from(disposition: Disposition) -> Self {
        Self {
            disposition,
            handed_off: false,
        }
    }
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
            let deliveries = delivery_count(&delivery);
            process(&shared, &agent, msg, deliveries)
                .instrument(span)
                .await
        }
        Err(err) => undecodable(&shared, &agent.name, &err),
    };
    settle(&shared, delivery, disposition).await;
}

/// A message no worker could ever process: to the dead-letter queue, without stopping.
pub fn undecodable(
    shared: &Shared,
    queue: &str,
    err: &agentfleet_common::wire::WireError,
) -> Disposition {
    tracing::error!(queue, error = %err, "undecodable message; dead-lettering");
    shared
        .metrics
        .dead_letters
        .with_label_values(&["undecodable"])
        .inc();
    Disposition::DeadLetter
}

/// How often the broker delivered this message before (quorum queues count it).
fn delivery_count(delivery: &Delivery) -> u32 {
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

/// Acks, requeues or dead-letters a delivery.
pub async fn settle(shared: &Shared, delivery: Delivery, disposition: Disposition) {
    let result = match disposition {
        Disposition::Ack => delivery.ack(BasicAckOptions::default()).await,
        Disposition::Requeue | Disposition::GiveBack => {
            if disposition == Disposition::Requeue {
                tokio::select! {
                    () = tokio::time::sleep(REQUEUE_PAUSE) => {}
                    () = shared.hard_stop.cancelled() => {}
                }
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

/// Puts the message back on the delay ladder for `delay`, unchanged but for `not_before`.
async fn delay(shared: &Shared, msg: &JobMessage, delay: Duration) -> Disposition {
    let later = JobMessage {
        not_before: chrono::Duration::from_std(delay)
            .ok()
            .map(|d| Utc::now() + d),
        ..msg.clone()
    };
    match shared.broker.publish_job_delayed(&later, delay).await {
        Ok(()) => Disposition::Ack,
        Err(err) => {
            tracing::warn!(error = %err, "could not delay a job");
            Disposition::Requeue
        }
    }
}

async fn process(
    shared: &Shared,
    agent: &AgentRuntime,
    msg: JobMessage,
    deliveries: u32,
) -> Disposition {
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
    let (mut record, spec, memo) = match shared.store.load_for_run(msg.job_id, msg.attempt).await {
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
        // Finished or cancelled already: make sure its webhook was handed off (a crash may
        // have come between storing the result and the hand-off), then drop the message.
        tracing::info!(
            status = record.status.as_str(),
            "job already ended; message dropped"
        );
        return ensure_handoff(shared, &record, &spec).await;
    }
    let poison = deliveries + 1 >= shared.config.amqp.delivery_limit;
    if !poison {
        if let Admission::Wait(wait) = agent.circuit.admit() {
            tracing::info!(?wait, "provider circuit open; job delayed");
            return delay(shared, &msg, wait).await;
        }
    }
    // A free call slot before anything is written: until then the job is still queued.
    let slot = if poison {
        None
    } else {
        tokio::select! {
            slot = agent.limits.call_slot() => Some(slot),
            () = shared.draining.cancelled() => return Disposition::GiveBack,
        }
    };
    let lease_ttl = shared.config.worker.lease;
    let read_status = record.status;
    if !poison {
        record.status = JobStatus::Running;
        // Attempts count messages, not deliveries: a redelivery after a crash is the same
        // attempt.
        record.attempts = record.attempts.max(msg.attempt);
        record.started_at.get_or_insert_with(Utc::now);
    }
    let lease = match shared
        .store
        .begin_run(&record, read_status, &shared.instance, lease_ttl)
        .await
    {
        Ok(Begun::Held(lease)) => lease,
        Ok(Begun::Busy(left)) => {
            // Another run holds it (or a crashed one whose lease has not expired): wait in
            // the delay ladder, not here.
            tracing::info!(?left, "job leased elsewhere; delayed");
            return delay(shared, &msg, left.max(Duration::from_millis(250))).await;
        }
        // Ended since it was read (cancelled: the canceller handed its event off) or gone.
        Ok(Begun::Refused(Written::Terminal | Written::Missing)) => return Disposition::Ack,
        Ok(Begun::Refused(_)) => {
            tracing::info!("job changed while its run was starting; given back");
            return Disposition::Requeue;
        }
        Err(err) => {
            tracing::warn!(error = %err, "cannot start the run");
            return Disposition::Requeue;
        }
    };

    let run = CancellationToken::new();
    let _registered = shared.running.register(msg.job_id, run.clone());
    let renewal = tokio::spawn(keep_lease(
        shared.store.clone(),
        msg.job_id,
        lease.clone(),
        lease_ttl,
        run.clone(),
    ));
    let ending = if let Some(slot) = slot {
        run_leased(shared, agent, &msg, record, &spec, memo, slot, &lease, &run).await
    } else {
        tracing::error!(
            deliveries,
            "message keeps coming back (workers crash on it); failing the job"
        );
        let failure = Failure::new(
            ErrorCategory::Internal,
            format!(
                "delivered {} times without finishing; given up",
                deliveries + 1
            ),
        );
        record.error = Some(failure.to_job_error());
        shared
            .metrics
            .dead_letters
            .with_label_values(&["delivery_limit"])
            .inc();
        finish(
            shared,
            agent,
            record,
            &spec,
            &lease,
            &msg,
            JobStatus::Failed,
            None,
        )
        .await
    };
    renewal.abort();
    if let Err(err) = shared
        .store
        .close_run(msg.job_id, &lease, ending.handed_off)
        .await
    {
        // The lease expires by itself; a missing hand-off note only matters to a
        // redelivery, and this delivery is acked.
        tracing::debug!(error = %err, "run not closed");
    }
    ending.disposition
}

/// Renews the lease every third of its life. Cancels the run if the lease is lost or the job
/// was cancelled (a fallback for a missed broadcast).
async fn keep_lease(
    store: agentfleet_common::store::JobStore,
    id: uuid::Uuid,
    lease: Lease,
    ttl: Duration,
    run: CancellationToken,
) {
    let every = ttl / 3;
    let mut last_ok = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(every).await;
        match store.renew_lease(id, &lease, ttl).await {
            Ok(Renewed::Held(status)) => {
                last_ok = tokio::time::Instant::now();
                if status == Some(JobStatus::Cancelled) {
                    run.cancel();
                }
            }
            Ok(Renewed::Lost) => {
                tracing::warn!("lease lost; aborting the run");
                run.cancel();
                return;
            }
            Err(err) => {
                if last_ok.elapsed() >= ttl {
                    tracing::warn!(error = %err, "lease could not be renewed in time; aborting the run");
                    run.cancel();
                    return;
                }
            }
        }
    }
}

/// Why a run stopped before its provider call ended.
enum Interrupted {
    /// The worker is shutting down past its grace period.
    Shutdown,
    /// Cancelled by the caller, or the lease went away.
    Cancelled,
}

/// The run proper, once `begin_run` has stored it as running under `lease`.
#[allow(clippy::too_many_arguments)]
async fn run_leased(
    shared: &Shared,
    agent: &AgentRuntime,
    msg: &JobMessage,
    mut record: JobRecord,
    spec: &JobSpec,
    memo: Option<Completion>,
    slot: OwnedSemaphorePermit,
    lease: &Lease,
    run: &CancellationToken,
) -> Ending {
    let started_at = record.started_at.unwrap_or_else(Utc::now);
    let budget = spec.timeout_secs.map_or(agent.config.timeout, |secs| {
        Duration::from_secs(secs).min(agent.config.timeout)
    });
    let deadline =
        started_at + chrono::Duration::from_std(budget).unwrap_or(chrono::TimeDelta::MAX);

    let in_flight = shared
        .metrics
        .jobs_in_flight
        .with_label_values(&[&agent.name]);
    in_flight.inc();
    let outcome = attempt(
        shared, agent, msg, &record, spec, memo, slot, lease, deadline, run,
    )
    .await;
    in_flight.dec();

    let outcome = match outcome {
        Ok(outcome) => outcome,
        Err(Interrupted::Shutdown) => return Disposition::Abandon.into(),
        Err(Interrupted::Cancelled) => {
            // Either the caller cancelled (the record says so, and the dispatcher handed the
            // event off) or the lease is gone (someone else may run it): give the message
            // back; its redelivery sees which.
            return match shared.store.load(msg.job_id).await {
                Ok(Some(current)) if current.status.is_terminal() => {
                    ensure_handoff(shared, &current, spec).await
                }
                _ => Disposition::Requeue,
            }
            .into();
        }
    };
    match outcome {
        Ok(completion) => {
            record.output = Some(completion.content.clone());
            record.usage = Some(completion.usage);
            record.error = None;
            finish(
                shared,
                agent,
                record,
                spec,
                lease,
                msg,
                JobStatus::Succeeded,
                Some(&completion),
            )
            .await
        }
        Err(failure) => {
            record.error = Some(failure.to_job_error());
            record.attempt_errors.push(AttemptError {
                attempt: record.attempts,
                category: failure.category,
                message: failure.message.clone(),
                at: Utc::now(),
            });
            let next_attempt = record.attempts + 1;
            let wait = backoff(
                next_attempt,
                agent.config.retry.max_delay,
                failure.retry_after,
            );
            let in_time = chrono::Duration::from_std(wait).is_ok_and(|w| Utc::now() + w < deadline);
            if failure.category.is_retryable()
                && record.attempts < agent.config.retry.attempts
                && in_time
            {
                schedule_retry(shared, agent, record, msg, &failure, lease, wait)
                    .await
                    .into()
            } else {
                tracing::info!(category = failure.category.as_str(), error = %failure.message, "job failed");
                finish(
                    shared,
                    agent,
                    record,
                    spec,
                    lease,
                    msg,
                    JobStatus::Failed,
                    None,
                )
                .await
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
/// Admission, then the provider call (or the answer saved by an earlier delivery of this
/// attempt), bounded by the job's deadline.
async fn attempt(
    shared: &Shared,
    agent: &AgentRuntime,
    msg: &JobMessage,
    record: &JobRecord,
    spec: &JobSpec,
    memo: Option<Completion>,
    slot: OwnedSemaphorePermit,
    lease: &Lease,
    deadline: DateTime<Utc>,
    run: &CancellationToken,
) -> Result<Result<Completion, Failure>, Interrupted> {
    let deadline_exceeded = || {
        Failure::new(
            ErrorCategory::Timeout,
            "the job's deadline passed before it finished",
        )
    };
    let remaining = |now: DateTime<Utc>| (deadline - now).to_std().ok().filter(|d| !d.is_zero());
    if remaining(Utc::now()).is_none() {
        return Ok(Err(deadline_exceeded()));
    }
    if let Some(completion) = memo {
        tracing::info!("provider answer for this attempt was saved; not calling again");
        return Ok(Ok(completion));
    }

    let estimate = estimate_tokens(spec, agent.provider.max_tokens());
    let admitted = tokio::select! {
        admitted = agent.limits.admit(estimate, run) => admitted,
        () = shared.hard_stop.cancelled() => return Err(Interrupted::Shutdown),
    };
    match admitted {
        Ok(waited) => {
            shared
                .metrics
                .rate_limit_wait
                .with_label_values(&[&agent.name])
                .observe(waited.as_secs_f64());
        }
        Err(crate::limits::AdmitError::Stopped) => {
            return Err(if shared.hard_stop.is_cancelled() {
                Interrupted::Shutdown
            } else {
                Interrupted::Cancelled
            })
        }
        Err(err) => {
            return Ok(Err(Failure::new(ErrorCategory::Internal, err.to_string())));
        }
    }
    let Some(left) = remaining(Utc::now()) else {
        if let Err(err) = agent.limits.refund(estimate).await {
            tracing::warn!(error = %err, "could not give back an unused rate-limit turn");
        }
        return Ok(Err(deadline_exceeded()));
    };
    let timeout = agent.config.request_timeout().min(left);
    let messages = spec.input.to_messages();
    let job_id = record.id.to_string();
    let fencing_token = lease.token.to_string();
    let attempt_number = msg.attempt.to_string();
    let started = tokio::time::Instant::now();
    let call = agent.provider.complete(
        &shared.outbound,
        &messages,
        &job_id,
        &attempt_number,
        &fencing_token,
        timeout,
    );
    let result = tokio::select! {
        result = call => result,
        () = run.cancelled() => return Err(Interrupted::Cancelled),
        () = shared.hard_stop.cancelled() => return Err(Interrupted::Shutdown),
    };
    // The provider is done with this run: the next one may call while this one finishes.
    drop(slot);
    let result = match result {
        // The request timed out because the job's deadline did, not the per-call bound.
        Err(f) if f.category == ErrorCategory::Timeout && timeout == left => {
            Err(deadline_exceeded())
        }
        other => other,
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
    agent.circuit.record(match &result {
        Err(f) if f.category.is_retryable() => CallResult::Unhealthy,
        _ => CallResult::Healthy,
    });
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
        // The answer itself is saved with the result (`finish`), in the same round trip.
        if let Err(err) = agent
            .limits
            .settle_tokens(estimate, usage.total_tokens)
            .await
        {
            tracing::warn!(error = %err, "could not settle the token budget");
        }
    }
    Ok(result)
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
    lease: &Lease,
    wait: Duration,
) -> Disposition {
    let next_attempt = record.attempts + 1;
    record.status = JobStatus::Retrying;
    match shared.store.save_leased(&record, lease).await {
        Ok(Written::Ok) => {}
        Ok(Written::Terminal | Written::Missing) => return Disposition::Ack,
        Ok(Written::LeaseLost | Written::Conflict) => return Disposition::Requeue,
        Err(err) => {
            tracing::warn!(error = %err, "cannot record the retry");
            return Disposition::Requeue;
        }
    }
    let retry = JobMessage {
        v: SCHEMA_VERSION,
        attempt: next_attempt,
        not_before: chrono::Duration::from_std(wait)
            .ok()
            .map(|d| Utc::now() + d),
        ..msg.clone()
    };
    if let Err(err) = shared.broker.publish_job_delayed(&retry, wait).await {
        tracing::warn!(error = %err, "cannot schedule the retry");
        return Disposition::Requeue;
    }
    shared
        .metrics
        .job_retries
        .with_label_values(&[&agent.name, failure.category.as_str()])
        .inc();
    tracing::info!(category = failure.category.as_str(), error = %failure.message, ?wait, next_attempt, "retry scheduled");
    Disposition::Ack
}

/// Stores the job's end (with the provider answer it came from, if any), keeps a copy of a
/// failed job's message, and hands the terminal event off.
#[allow(clippy::too_many_arguments)]
async fn finish(
    shared: &Shared,
    agent: &AgentRuntime,
    mut record: JobRecord,
    spec: &JobSpec,
    lease: &Lease,
    msg: &JobMessage,
    status: JobStatus,
    answer: Option<&Completion>,
) -> Ending {
    let now = Utc::now();
    record.status = status;
    record.finished_at = Some(now);
    let written = match answer {
        Some(answer) => {
            shared
                .store
                .save_leased_with_memo(&record, lease, msg.attempt, answer)
                .await
        }
        None => shared.store.save_leased(&record, lease).await,
    };
    match written {
        Ok(Written::Ok) => {}
        // Cancelled meanwhile: the canceller handed its event off.
        Ok(Written::Terminal | Written::Missing) => return Disposition::Ack.into(),
        Ok(Written::LeaseLost | Written::Conflict) => {
            tracing::warn!("lease lost before the result was stored; giving the job back");
            return Disposition::Requeue.into();
        }
        Err(err) => {
            tracing::warn!(error = %err, "cannot store the result");
            return Disposition::Requeue.into();
        }
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
    if status == JobStatus::Failed {
        // Keep the work token for inspection, beside the poison messages.
        let reason = record
            .error
            .as_ref()
            .map_or("failed", |e| e.category.as_str());
        match shared
            .broker
            .publish_dead(&msg.encode(), reason, &msg.job_id.to_string())
            .await
        {
            Ok(()) => shared
                .metrics
                .dead_letters
                .with_label_values(&["failed"])
                .inc(),
            Err(err) => {
                tracing::warn!(error = %err, "could not keep a copy in the dead-letter queue")
            }
        }
    }
    // This run just ended the job, so nobody handed its event off before: publish without
    // looking for the note, and let `close_run` write the note.
    match events::publish_event(&shared.broker, &record, spec).await {
        Ok(handed_off) => Ending {
            disposition: Disposition::Ack,
            handed_off,
        },
        Err(err) => {
            // Not acked: the redelivery finds the job terminal and hands off then.
            tracing::warn!(error = %err, "cannot hand off the webhook");
            Disposition::Requeue.into()
        }
    }
}

/// Puts the job's terminal event on the webhook queue once (if it has a webhook URL).
pub async fn ensure_handoff(shared: &Shared, record: &JobRecord, spec: &JobSpec) -> Disposition {
    match events::hand_off(&shared.store, &shared.broker, record, spec).await {
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
