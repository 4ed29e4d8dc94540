//! One job delivery, start to finish. The record in Redis is the truth; the message only says
//! "this job needs work". A run changes the record only while it holds the job's lease, and
//! every write checks the lease's fencing token in the same atomic step (see
//! `JobStore::save_leased`), so a stalled worker that lost its lease cannot overwrite anything
//! or send a webhook. A message is acked only after what its processing produced (the next
//! state, a retry message, the webhook hand-off) is durably stored or confirmed.
//!
//! The delivery goes through [`intake`] (too early? circuit open? a call slot), then
//! [`Run::begin`] reads the job, takes its lease and marks it running in one round trip (a job
//! that ended is dropped), [`Run::execute`] drives the agent loop from the step log
//! ([`turns`]) and decides the attempt's end ([`outcome`]), whose write lets the lease go, and
//! [`Run::close`] notes a webhook hand-off (or releases a lease no write let go).

mod batch;
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

use agentfleet_common::store::{BeginRun, Begun, Lease, Loaded, RunMark, StoredJob};
use agentfleet_common::wire::{
    JobBatch, JobMessage, JobRecord, JobSpec, Step, Versioned, WaitReason, Waiting, WireError,
};

use crate::circuit::Admission;
use crate::consumer::Handed;
use crate::delivery::{
    after_delayed_publish, delivery_count, not_before, remaining_delay, settle, undecodable,
    Disposition,
};
use crate::{AgentRuntime, Shared};

pub use outcome::ensure_handoff;

/// Early ends of a delivery: `Err(disposition)` means "settle the delivery this way now".
type Settled<T> = Result<T, Disposition>;

/// What a job delivery carries: one job, or several of one queue.
enum Work {
    One(Result<JobMessage, WireError>),
    Batch(Result<JobBatch, WireError>),
}

impl Work {
    fn read(delivery: &Delivery) -> Self {
        let kind = delivery.properties.kind().as_ref();
        if kind.is_some_and(|kind| kind.as_str() == JobBatch::KIND) {
            Self::Batch(JobBatch::decode(&delivery.data))
        } else {
            Self::One(JobMessage::decode(&delivery.data))
        }
    }
}

/// The handler of one job delivery. The delivery's content is read here, before the task
/// starts, so the task keeps only what settles it (a run's task lives as long as the run).
pub fn handle_job(
    shared: Arc<Shared>,
    agent: Arc<AgentRuntime>,
    Handed {
        delivery,
        acks,
        slot,
        turns,
    }: Handed,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    let work = Work::read(&delivery);
    let deliveries = delivery_count(&delivery);
    let settlement = acks.settlement(delivery);
    async move {
        // A single job's slot is held until its delivery is settled (a batch settles its
        // slots itself).
        let (disposition, _slot) = match work {
            Work::One(Ok(msg)) => {
                let span = run_span(&msg);
                let disposition = process(&shared, &agent, msg, deliveries)
                    .instrument(span)
                    .await;
                (disposition, Some(slot))
            }
            // Boxed: a batch's task holds several runs, a single job's task one.
            Work::Batch(Ok(batch)) => {
                let handed = batch::Handed {
                    batch,
                    deliveries,
                    slot,
                    turns,
                };
                let handled = batch::handle(&shared, &agent, handed);
                (Box::pin(handled).await, None)
            }
            Work::One(Err(err)) | Work::Batch(Err(err)) => {
                (undecodable(&shared, &agent.name, &err), Some(slot))
            }
        };
        settle(&shared, settlement, disposition).await;
    }
}

/// The span a job's run logs in.
fn run_span(msg: &JobMessage) -> tracing::Span {
    tracing::info_span!(
        "run",
        job_id = %msg.job_id,
        agent = %msg.agent,
        tenant = %msg.tenant,
        attempt = msg.attempt,
        request_id = msg.request_id.as_deref()
    )
}

async fn process(
    shared: &Shared,
    agent: &AgentRuntime,
    msg: JobMessage,
    deliveries: u32,
) -> Disposition {
    let slot = match intake(shared, agent, &msg, deliveries).await {
        Ok(slot) => slot,
        Err(disposition) => return disposition,
    };
    // Counted as beginning until it holds its lease (see `starts_first`).
    let beginning = shared.starts_first.beginning();
    // Boxed: beginning (a Redis script and its reply) takes more room than the rest of the
    // run, and lasts a round trip.
    let mut run = match Box::pin(Run::begin(shared, agent, msg, slot.is_none())).await {
        Ok(run) => run,
        Err(disposition) => return disposition,
    };
    drop(beginning);
    let _registered = shared.running.register(run.msg.job_id, run.cancel.clone());
    run.renewal = Some(tokio::spawn(lease::keep(
        shared.store.clone(),
        run.msg.job_id,
        run.lease.clone(),
        shared.config.worker.lease,
        run.cancel.clone(),
    )));
    let ending = match slot {
        Some(slot) => run.execute(slot).await,
        // Rare, and as large as a run's end: boxed (see `intake`).
        None => Box::pin(run.give_up(deliveries)).await,
    };
    run.stop_renewal();
    Box::pin(run.close(ending)).await
}

/// Everything before the job is read: a message that is early goes back round the delay
/// ladder, an open circuit delays the job, and a run waits for one of the agent's call slots
/// (the job is still `queued` meanwhile). Answers the slot (`None` for a message that keeps
/// coming back: it is failed, not run).
async fn intake(
    shared: &Shared,
    agent: &AgentRuntime,
    msg: &JobMessage,
    deliveries: u32,
) -> Settled<Option<OwnedSemaphorePermit>> {
    if let Some(remaining) = remaining_delay(msg.not_before, Utc::now()) {
        // Still early (a long delay is served in hops): back onto the ladder. (Boxed, like
        // every branch a run passes through briefly or rarely: a run's task is as large as
        // its largest state, and it spends its life in the model call.)
        let published = Box::pin(shared.broker.publish_job_delayed(msg, remaining)).await;
        return Err(after_delayed_publish(published, "an early job"));
    }
    if deliveries + 1 >= shared.config.amqp.delivery_limit {
        return Ok(None);
    }
    if let Admission::Wait(wait) = agent.circuit.admit() {
        tracing::info!(?wait, "provider circuit open; job delayed");
        Box::pin(note_waiting(shared, msg, WaitReason::CircuitOpen, wait)).await;
        return Err(Box::pin(delay(shared, msg, wait)).await);
    }
    tokio::select! {
        slot = agent.limits.call_slot() => Ok(Some(slot)),
        () = shared.draining.cancelled() => Err(Disposition::GiveBack),
    }
}

/// Says on the record why and until when a job that is not running waits (if the record is
/// still as read: a cancellation meanwhile wins). Bookkeeping for the caller: failing to
/// write it delays nothing.
async fn note_waiting(shared: &Shared, msg: &JobMessage, reason: WaitReason, wait: Duration) {
    let mut record = match shared.store.load(msg.job_id).await {
        Ok(Some(record)) if !record.status.is_terminal() => record,
        Ok(_) => return,
        Err(err) => {
            tracing::debug!(error = %err, "could not note why the job waits");
            return;
        }
    };
    // A rate-limit turn reserved for it stays reserved.
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
        not_before: not_before(delay),
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
    /// The step log: what the runtime decides from. The first `stored_steps` are in Redis;
    /// the rest wait for the run's next write (see `turns::Run::stage`).
    steps: Vec<Step>,
    stored_steps: usize,
    lease: Lease,
    /// Set once a write let the lease go (the run's last one).
    released: bool,
    /// The task that keeps the lease alive.
    renewal: Option<tokio::task::JoinHandle<()>>,
    /// Cancelled by a cancellation broadcast or a lost lease.
    cancel: CancellationToken,
    /// The job's deadline: the agent's `timeout_secs`, lowered by the job's, from its start.
    deadline: DateTime<Utc>,
    /// The run comes back from waiting outside with a rate-limit turn reserved for its next
    /// model call (taken by that call).
    reserved_turn: std::sync::atomic::AtomicBool,
}

/// The job's lease and the job as stored, marked running by `mark` in the same round trip;
/// a job leased elsewhere goes round the delay ladder, one that cannot run is settled.
async fn take_lease(
    shared: &Shared,
    msg: &JobMessage,
    mark: Option<RunMark>,
) -> Settled<(Lease, StoredJob)> {
    let begun = shared
        .store
        .begin_run(BeginRun {
            id: msg.job_id,
            owner: &shared.instance,
            ttl: shared.config.worker.lease,
            mark,
        })
        .await;
    match begun {
        Ok(Begun::Held(lease, job)) => Ok((lease, job)),
        Ok(Begun::Busy(left)) => {
            // Another run holds it (or a crashed one whose lease has not expired): wait in
            // the delay ladder, not here.
            tracing::info!(?left, "job leased elsewhere; delayed");
            let wait = left.max(Duration::from_millis(250));
            Err(Box::pin(delay(shared, msg, wait)).await)
        }
        Ok(Begun::NotRunnable(found)) => Err(Box::pin(not_runnable(shared, found)).await),
        Err(err) => {
            tracing::warn!(error = %err, "cannot start the run");
            Err(Disposition::Requeue)
        }
    }
}

impl<'a> Run<'a> {
    /// Reads the job, takes its lease and marks it running, in one round trip (a message
    /// that keeps coming back keeps its status: it is about to be failed). A job that ended
    /// is dropped, after making sure its event was handed off.
    async fn begin(
        shared: &'a Shared,
        agent: &'a AgentRuntime,
        msg: JobMessage,
        poison: bool,
    ) -> Settled<Run<'a>> {
        let mark = (!poison).then(|| RunMark {
            attempt: msg.attempt,
            started_at: Utc::now(),
        });
        let (lease, job) = take_lease(shared, &msg, mark).await?;
        let StoredJob {
            mut record,
            spec,
            steps,
        } = job;
        let reserved_turn = record.waiting.as_ref().is_some_and(|w| w.reserved);
        if let Some(mark) = mark {
            if record.attempts == 0 {
                observe_queue_wait(shared, agent, &msg, &record);
            }
            mark.apply(&mut record);
        }
        let deadline = deadline(&record, &spec, agent);
        Ok(Run {
            shared,
            agent,
            msg,
            record,
            spec,
            stored_steps: steps.len(),
            steps,
            lease,
            released: false,
            renewal: None,
            cancel: CancellationToken::new(),
            deadline,
            reserved_turn: reserved_turn.into(),
        })
    }

    /// Stops renewing the lease (the run is over, or its last write lets the lease go).
    fn stop_renewal(&mut self) {
        if let Some(renewal) = self.renewal.take() {
            renewal.abort();
        }
    }
}

/// A delivery of a job that ended or vanished is dropped. One that ended: its webhook is
/// made sure of first (a crash may have come between storing the result and the hand-off).
async fn not_runnable(shared: &Shared, found: Loaded) -> Disposition {
    match found {
        Loaded::Ready(job) => {
            tracing::info!(
                status = job.record.status.as_str(),
                "job already ended; message dropped"
            );
            ensure_handoff(shared, &job.record, &job.spec).await
        }
        Loaded::Concluded(record) => {
            tracing::info!(
                status = record.status.as_str(),
                "job ended and its event was delivered; message dropped"
            );
            Disposition::Ack
        }
        Loaded::Gone => {
            tracing::warn!("job record is gone (expired or never stored); dropping the message");
            Disposition::Ack
        }
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
