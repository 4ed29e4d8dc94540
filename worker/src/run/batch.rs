//! A delivery that carries several jobs of one queue ([`JobBatch`]): the broker's cost is per
//! message, so a dispatcher that accepts a burst publishes it as one.
//!
//! The message is acked once every job in it is settled, so the batch must not hold what a
//! message of its own would not:
//! - **Slots and turns.** The batch runs on the delivery slot it was handed, plus slots idle
//!   when it starts (taken without waiting). Each of its other jobs claims a turn of its
//!   source on the consume loop's lanes ([`Turns`]), behind what already waits there, and the
//!   round-robin serves it as it serves a delivery of that source: a batch of n jobs takes n
//!   turns of its tenant's, as n messages would, and no more than the tenant's share. A run's
//!   slot goes back to the loop when it ends, not to the batch's next job. A job of a batch
//!   never waits for a slot in a way that stops a run it holds: no deadlock.
//! - **Time.** A job that has not started within [`SPILL_AFTER`] is published again as a
//!   message of its own, and the batch no longer waits for it: a batch is held no longer than
//!   its longest run plus that (invariant 7), and a worker that took more batches than it can
//!   start soon hands their jobs back for other replicas.
//! - **Redelivery.** A batch delivered again (a worker died or stopped mid-batch) is split:
//!   each job not ended (by its record) is published again on its own, the event of each
//!   that ended is made sure of as its own delivery would, and the batch acked. The records
//!   say what is done (a job that ends after the split is dropped on delivery), and the
//!   broker's delivery count, which dead-letters poison, then counts each job alone, so one
//!   bad job cannot take its batch-mates to the dead letters.

use std::collections::VecDeque;
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt as _;
use tokio::sync::{oneshot, OwnedSemaphorePermit};
use tokio::time::Instant;
use tracing::Instrument as _;

use agentfleet_common::wire::{JobBatch, JobMessage};

use super::{ensure_handoff, process, run_span};
use crate::consumer::Turns;
use crate::delivery::Disposition;
use crate::{AgentRuntime, Shared};

/// How long a job of a batch may wait for a slot before it is published again as a message
/// of its own. Longer than a wave of runs takes to turn over (scenario 3's waves of 1-s calls:
/// with 1 s, the jobs waiting at the turnover were all published again, and the makespan went
/// from 1.07× to 1.43× the ideal), short next to the broker's `consumer_timeout` (30 min).
pub const SPILL_AFTER: Duration = Duration::from_secs(5);

/// A batch as its handler got it.
pub struct Handed {
    pub batch: JobBatch,
    /// How often the broker delivered it before.
    pub deliveries: u32,
    pub slot: OwnedSemaphorePermit,
    pub turns: Turns,
}

/// Works a batch delivered for the first time, or splits one delivered again; answers what
/// becomes of the batch's message.
pub async fn handle(shared: &Shared, agent: &AgentRuntime, handed: Handed) -> Disposition {
    let Handed {
        batch,
        deliveries,
        slot,
        turns,
    } = handed;
    let outcome = if deliveries > 0 {
        drop(slot);
        let jobs = batch.jobs.len();
        let republish = not_yet_ended(shared, batch.jobs).await;
        tracing::info!(
            jobs,
            ended = jobs - republish.len(),
            deliveries,
            "a batch delivered again; publishing its jobs not ended one by one"
        );
        count(shared, "ended", jobs - republish.len());
        count(shared, "split", republish.len());
        Outcome {
            republish,
            ..Outcome::default()
        }
    } else {
        count(shared, "run", batch.jobs.len());
        let work = Work {
            jobs: batch.jobs,
            slot,
            turns,
        };
        work.run(shared, agent).await
    };
    outcome.settle(shared).await
}

/// The jobs of a batch delivered again that still have work left. A job whose record says it
/// ended is settled here as its own delivery would settle it: its terminal event handed off
/// (if it was not), nothing published. The jobs are read at once (the rare path of a worker
/// that died); a job that cannot be read, or whose hand-off fails, is kept (its own delivery
/// tries again).
async fn not_yet_ended(shared: &Shared, jobs: Vec<JobMessage>) -> Vec<JobMessage> {
    let ended = futures_util::future::join_all(jobs.iter().map(|msg| ended(shared, msg))).await;
    jobs.into_iter()
        .zip(ended)
        .filter_map(|(msg, ended)| (!ended).then_some(msg))
        .collect()
}

/// Whether the job of `msg` ended, with its event handed off: gone (expired, or its delivery
/// concluded and sealed it), or terminal and handed off now (by [`ensure_handoff`], as the
/// delivery of an ended job does).
async fn ended(shared: &Shared, msg: &JobMessage) -> bool {
    match shared.store.load_with_spec(msg.job_id).await {
        Ok(None) => true,
        Ok(Some((record, spec))) if record.status.is_terminal() => matches!(
            ensure_handoff(shared, &record, &spec).await,
            Disposition::Ack
        ),
        Ok(Some(_)) | Err(_) => false,
    }
}

/// What the batch's jobs came to.
#[derive(Default)]
struct Outcome {
    /// Jobs to publish again as messages of their own when the batch settles: met
    /// infrastructure trouble, not published when spilled, or the whole batch when it was
    /// delivered again.
    republish: Vec<JobMessage>,
    /// A job met infrastructure trouble: pause before publishing it again.
    pause: bool,
    /// A run was cut short by a shutdown: the message stays unacked and comes back.
    abandoned: bool,
    /// A job was not started because the worker is shutting down.
    given_back: bool,
}

impl Outcome {
    fn note(&mut self, msg: JobMessage, disposition: Disposition) {
        match disposition {
            Disposition::Ack => {}
            Disposition::Abandon => self.abandoned = true,
            Disposition::GiveBack => self.given_back = true,
            Disposition::Requeue | Disposition::DeadLetter => {
                self.pause = true;
                self.republish.push(msg);
            }
        }
    }

    /// The batch's disposition. A shutdown leaves the whole batch to its redelivery, which
    /// splits it (its finished jobs are dropped there); otherwise the jobs it does not settle
    /// itself are published on their own first, and if one of those publishes fails the batch
    /// comes back and is split then.
    async fn settle(self, shared: &Shared) -> Disposition {
        if self.abandoned {
            return Disposition::Abandon;
        }
        if self.given_back {
            return Disposition::GiveBack;
        }
        if self.pause {
            tokio::select! {
                () = tokio::time::sleep(crate::delivery::REQUEUE_PAUSE) => {}
                () = shared.hard_stop.cancelled() => return Disposition::Abandon,
            }
        }
        // Published together, their confirms awaited together.
        let published = futures_util::future::join_all(
            self.republish
                .iter()
                .map(|msg| Box::pin(shared.broker.publish_job(msg))),
        )
        .await;
        for (msg, published) in self.republish.iter().zip(published) {
            if let Err(err) = published {
                tracing::warn!(error = %err, job_id = %msg.job_id, "could not publish a job of a batch on its own; the batch comes back");
                return Disposition::Requeue;
            }
        }
        Disposition::Ack
    }
}

/// A first delivery of a batch, to run.
struct Work {
    jobs: Vec<JobMessage>,
    slot: OwnedSemaphorePermit,
    turns: Turns,
}

impl Work {
    /// Runs the jobs on the batch's slots (see the module's note), each as a delivery of its
    /// own would be run.
    async fn run(self, shared: &Shared, agent: &AgentRuntime) -> Outcome {
        let Self { jobs, slot, turns } = self;
        let mut batch = Progress {
            shared,
            agent,
            free: idle_slots(slot, jobs.len()),
            pending: VecDeque::from(jobs),
            running: FuturesUnordered::new(),
            outcome: Outcome::default(),
        };
        let spill_at = Instant::now() + SPILL_AFTER;
        // The turn claimed for the next job: one at a time, so the batch's next claim queues
        // behind what its source received meanwhile.
        let mut claimed: Option<oneshot::Receiver<OwnedSemaphorePermit>> = None;
        loop {
            batch.start_what_fits();
            if batch.pending.is_empty() {
                claimed = None;
                if batch.running.is_empty() {
                    break;
                }
            } else if claimed.is_none() {
                claimed = Some(turns.claim());
            }
            let next_turn = async {
                match claimed.as_mut() {
                    Some(turn) => turn.await.ok(),
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                Some((msg, disposition)) = batch.running.next(), if !batch.running.is_empty() => {
                    batch.outcome.note(msg, disposition);
                }
                turn = next_turn => {
                    claimed = None;
                    match turn {
                        Some(slot) => batch.free.push(slot),
                        // The consumption ended (a stop or a lost channel): no more turns.
                        None => Box::pin(batch.spill()).await,
                    }
                }
                () = tokio::time::sleep_until(spill_at), if !batch.pending.is_empty() => {
                    Box::pin(batch.spill()).await;
                }
            }
        }
        batch.outcome
    }
}

/// A run of one of the batch's jobs, ended: the job and what became of it (its slot went
/// back to the consume loop as it ended).
type Ended = (JobMessage, Disposition);

/// Where a batch's jobs stand while it works.
struct Progress<'a> {
    shared: &'a Shared,
    agent: &'a AgentRuntime,
    /// Slots the batch holds that no run is using.
    free: Vec<OwnedSemaphorePermit>,
    pending: VecDeque<JobMessage>,
    running: FuturesUnordered<BoxFuture<'a, Ended>>,
    outcome: Outcome,
}

impl Progress<'_> {
    /// Starts a job on each free slot; gives back the slots no job needs any more.
    fn start_what_fits(&mut self) {
        let (shared, agent) = (self.shared, self.agent);
        while let (Some(_), false) = (self.pending.front(), self.free.is_empty()) {
            let (Some(msg), Some(slot)) = (self.pending.pop_front(), self.free.pop()) else {
                break;
            };
            self.running.push(Box::pin(async move {
                let span = run_span(&msg);
                let run = process(shared, agent, msg.clone(), 0).instrument(span);
                let disposition = Box::pin(run).await;
                drop(slot);
                (msg, disposition)
            }));
        }
        if self.pending.is_empty() {
            // Nothing left to start: slots this batch no longer needs go back at once.
            self.free.clear();
        }
    }

    /// Publishes the jobs not started yet as messages of their own, at once, so another
    /// replica can take them while the batch's runs go on.
    /// (The runs are not polled meanwhile: a publish takes a confirm's round trip.) A job
    /// whose publish fails is tried again when the batch settles.
    async fn spill(&mut self) {
        count(self.shared, "spilled", self.pending.len());
        while let Some(msg) = self.pending.pop_front() {
            if let Err(err) = self.shared.broker.publish_job(&msg).await {
                tracing::warn!(error = %err, "could not publish a job of a batch on its own yet");
                self.outcome.republish.push(msg);
                self.outcome.republish.extend(self.pending.drain(..));
            }
        }
    }
}

/// The slot the batch was handed, and up to `jobs - 1` more that no one is waiting for.
fn idle_slots(slot: OwnedSemaphorePermit, jobs: usize) -> Vec<OwnedSemaphorePermit> {
    let slots = slot.semaphore().clone();
    let mut taken = vec![slot];
    while taken.len() < jobs {
        match slots.clone().try_acquire_owned() {
            Ok(permit) => taken.push(permit),
            Err(_) => break,
        }
    }
    taken
}

fn count(shared: &Shared, outcome: &str, jobs: usize) {
    shared
        .metrics
        .batched_jobs
        .with_label_values(&[outcome])
        .inc_by(jobs as u64);
}
