//! One job delivery, start to finish. The record in Redis is the truth; the message only says
//! "this job needs work". A run changes the record only while it holds the job's lease, and
//! every write checks the lease's fencing token in the same atomic step (see
//! `JobStore::save_leased`), so a stalled worker that lost its lease cannot overwrite anything
//! or send a webhook. A message is acked only after what its processing produced (the next
//! state, a retry message, the webhook hand-off) is durably stored or confirmed.
//!
//! The delivery goes through [`intake`] (too early? already ended? circuit open? a call slot),
//! then [`Run::begin`] takes the lease and marks the job running, [`Run::execute`] drives the
//! agent loop from the step log ([`turns`]) and decides the attempt's end ([`outcome`]), and
//! [`Run::close`] releases the lease.

mod lease;
mod outcome;
mod payloads;
mod turns;

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use lapin::message::Delivery;
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use agentfleet_common::store::{Begun, Lease, Loaded, Written};
use agentfleet_common::wire::{
    JobMessage, JobRecord, JobSpec, JobStatus, Step, Versioned, WaitReason, Waiting,
};

use crate::circuit::Admission;
use crate::delivery::{
    after_delayed_publish, delivery_count, remaining_delay, settle, undecodable, Disposition,
};
use crate::{AgentRuntime, Shared};

pub use outcome::ensure_handoff;

/// Early ends of a delivery: `Err(disposition)` means "settle the delivery this way now".
type Settled<T> = Result<T, Disposition>;

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
                attempt = msg.attempt,
                request_id = msg.request_id.as_deref()
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

async fn process(
    shared: &Shared,
    agent: &AgentRuntime,
    msg: JobMessage,
    deliveries: u32,
) -> Disposition {
    let admitted = match intake(shared, agent, &msg, deliveries).await {
        Ok(admitted) => admitted,
        Err(disposition) => return disposition,
    };
    let Admitted {
        record,
        spec,
        steps,
        slot,
    } = admitted;
    let poison = slot.is_none();
    let mut run = match Run::begin(shared, agent, msg, (record, spec, steps), poison).await {
        Ok(run) => run,
        Err(disposition) => return disposition,
    };
    let _registered = shared.running.register(run.msg.job_id, run.cancel.clone());
    let renewal = tokio::spawn(lease::keep(
        shared.store.clone(),
        run.msg.job_id,
        run.lease.clone(),
        shared.config.worker.lease,
        run.cancel.clone(),
    ));
    let ending = match slot {
        Some(slot) => run.execute(slot).await,
        None => run.give_up(deliveries).await,
    };
    renewal.abort();
    run.close(ending).await
}

/// A delivery that may run: its job, the run's step log so far, and a call slot (`None` for
/// a message that keeps coming back: it is failed, not run).
struct Admitted {
    record: JobRecord,
    spec: JobSpec,
    steps: Vec<Step>,
    slot: Option<OwnedSemaphorePermit>,
}

/// Everything before the lease: a message that is early goes back round the delay ladder, a
/// job that ended or vanished is dropped, an open circuit delays the job, and a run waits for
/// one of the agent's call slots (the job is still `queued` meanwhile).
async fn intake(
    shared: &Shared,
    agent: &AgentRuntime,
    msg: &JobMessage,
    deliveries: u32,
) -> Settled<Admitted> {
    if let Some(remaining) = remaining_delay(msg.not_before, Utc::now()) {
        // Still early (a long delay is served in hops): back onto the ladder.
        let published = shared.broker.publish_job_delayed(msg, remaining).await;
        return Err(after_delayed_publish(published, "an early job"));
    }
    let (record, spec, steps) = match shared.store.load_for_run(msg.job_id).await {
        Ok(Loaded::Ready {
            record,
            spec,
            steps,
        }) => (record, spec, steps),
        Ok(Loaded::Concluded(record)) => {
            tracing::info!(
                status = record.status.as_str(),
                "job ended and its event was delivered; message dropped"
            );
            return Err(Disposition::Ack);
        }
        Ok(Loaded::Gone) => {
            tracing::warn!("job record is gone (expired or never stored); dropping the message");
            return Err(Disposition::Ack);
        }
        Err(err) => {
            tracing::warn!(error = %err, "cannot load the job");
            return Err(Disposition::Requeue);
        }
    };
    if record.status.is_terminal() {
        // Finished or cancelled already: make sure its webhook was handed off (a crash may
        // have come between storing the result and the hand-off), then drop the message.
        tracing::info!(
            status = record.status.as_str(),
            "job already ended; message dropped"
        );
        return Err(ensure_handoff(shared, &record, &spec).await);
    }
    let poison = deliveries + 1 >= shared.config.amqp.delivery_limit;
    let slot = if poison {
        None
    } else {
        if let Admission::Wait(wait) = agent.circuit.admit() {
            tracing::info!(?wait, "provider circuit open; job delayed");
            note_waiting(shared, record, WaitReason::CircuitOpen, wait).await;
            return Err(delay(shared, msg, wait).await);
        }
        tokio::select! {
            slot = agent.limits.call_slot() => Some(slot),
            () = shared.draining.cancelled() => return Err(Disposition::GiveBack),
        }
    };
    Ok(Admitted {
        record,
        spec,
        steps,
        slot,
    })
}

/// Says on the record why and until when a job that is not running waits (if the record is
/// still as read: a cancellation meanwhile wins). A rate-limit turn reserved for it stays
/// reserved. Bookkeeping for the caller: failing to write it delays nothing.
async fn note_waiting(shared: &Shared, mut record: JobRecord, reason: WaitReason, wait: Duration) {
    let reserved = record.waiting.as_ref().is_some_and(|w| w.reserved);
    record.waiting = Some(Waiting {
        reason,
        until: Utc::now() + chrono::Duration::from_std(wait).unwrap_or_default(),
        reserved,
    });
    let expected = record.status;
    if let Err(err) = shared.store.save_if_status(&record, expected).await {
        tracing::debug!(error = %err, "could not note why the job waits");
    }
}

/// Puts the message back on the delay ladder for `delay`, unchanged but for `not_before`.
async fn delay(shared: &Shared, msg: &JobMessage, delay: Duration) -> Disposition {
    let later = JobMessage {
        not_before: chrono::Duration::from_std(delay)
            .ok()
            .map(|d| Utc::now() + d),
        ..msg.clone()
    };
    let published = shared.broker.publish_job_delayed(&later, delay).await;
    after_delayed_publish(published, "a job")
}

/// What one delivery works with once it holds the job's lease.
struct Run<'a> {
    shared: &'a Shared,
    agent: &'a AgentRuntime,
    msg: JobMessage,
    /// The run's view of the record: what it writes back, under the lease.
    record: JobRecord,
    spec: JobSpec,
    /// The step log as stored: what the runtime decides from, appended under the lease.
    steps: Vec<Step>,
    lease: Lease,
    /// Cancelled by a cancellation broadcast or a lost lease.
    cancel: CancellationToken,
    /// The job's deadline: the agent's `timeout_secs`, lowered by the job's, from its start.
    deadline: DateTime<Utc>,
    /// The run comes back from waiting outside with a rate-limit turn reserved for its next
    /// model call (taken by that call).
    reserved_turn: std::sync::atomic::AtomicBool,
}

impl<'a> Run<'a> {
    /// Takes the job's lease and stores the record as `running` (a message that keeps coming
    /// back keeps its status: it is about to be failed).
    async fn begin(
        shared: &'a Shared,
        agent: &'a AgentRuntime,
        msg: JobMessage,
        (mut record, spec, steps): (JobRecord, JobSpec, Vec<Step>),
        poison: bool,
    ) -> Settled<Run<'a>> {
        let read_status = record.status;
        let reserved_turn = record.waiting.take().is_some_and(|w| w.reserved);
        if !poison && record.attempts == 0 {
            observe_queue_wait(shared, agent, &msg, &record);
        }
        if !poison {
            record.status = JobStatus::Running;
            // Attempts count messages, not deliveries: a redelivery after a crash is the same
            // attempt.
            record.attempts = record.attempts.max(msg.attempt);
            record.started_at.get_or_insert_with(Utc::now);
        }
        let begun = shared
            .store
            .begin_run(
                &record,
                read_status,
                &shared.instance,
                shared.config.worker.lease,
            )
            .await;
        let lease = match begun {
            Ok(Begun::Held(lease)) => lease,
            Ok(Begun::Busy(left)) => {
                // Another run holds it (or a crashed one whose lease has not expired): wait in
                // the delay ladder, not here.
                tracing::info!(?left, "job leased elsewhere; delayed");
                return Err(delay(shared, &msg, left.max(Duration::from_millis(250))).await);
            }
            // Ended since it was read (cancelled: the canceller handed its event off) or gone.
            Ok(Begun::Refused(Written::Terminal | Written::Missing)) => {
                return Err(Disposition::Ack)
            }
            Ok(Begun::Refused(_)) => {
                tracing::info!("job changed while its run was starting; given back");
                return Err(Disposition::Requeue);
            }
            Err(err) => {
                tracing::warn!(error = %err, "cannot start the run");
                return Err(Disposition::Requeue);
            }
        };
        let deadline = deadline(&record, &spec, agent);
        Ok(Run {
            shared,
            agent,
            msg,
            record,
            spec,
            steps,
            lease,
            cancel: CancellationToken::new(),
            deadline,
            reserved_turn: reserved_turn.into(),
        })
    }
}

/// How long a job queued before its first start ever, by tenant: fairness shows here.
fn observe_queue_wait(shared: &Shared, agent: &AgentRuntime, msg: &JobMessage, record: &JobRecord) {
    let queued = (Utc::now() - record.created_at)
        .to_std()
        .unwrap_or_default();
    shared
        .metrics
        .queue_wait
        .with_label_values(&[&agent.name, &msg.tenant])
        .observe(queued.as_secs_f64());
}

/// The job's deadline: from its first start, the agent's run timeout, lowered by the job's.
fn deadline(record: &JobRecord, spec: &JobSpec, agent: &AgentRuntime) -> DateTime<Utc> {
    let started_at = record.started_at.unwrap_or_else(Utc::now);
    let budget = spec.timeout_secs.map_or(agent.config.timeout, |secs| {
        Duration::from_secs(secs).min(agent.config.timeout)
    });
    started_at + chrono::Duration::from_std(budget).unwrap_or(chrono::TimeDelta::MAX)
}
