//! Publishing accepted jobs. One message per job, or, with `dispatcher.batch_jobs`, group
//! commit: the jobs of one queue (agent and tenant) accepted while that queue's previous
//! publish awaits its confirm go out together as one [`JobBatch`] message, and each POST is
//! answered once that message is confirmed.
//!
//! Why: a confirmed publish to a quorum queue costs RabbitMQ 33–53 µs of CPU whatever the
//! message holds, so under a burst of submissions the broker's share per job falls with the
//! jobs per message (docs/BENCHMARKS.md). A job waits for no timer: alone, it is published at
//! once; in a burst, for at most the publish before it. Every POST still answers 202 only
//! after its job's message is confirmed (invariant 2), and a failed publish fails every POST
//! it carried, each of which undoes its own record.
//!
//! `fifo` agents are never batched: a batch's job that is spilled or split by a worker goes
//! to the back of the queue (see the worker's `run::batch`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use tokio::sync::{mpsc, oneshot};

use agentfleet_common::broker::{Broker, BrokerError};
use agentfleet_common::config::{Config, Fairness};
use agentfleet_common::wire::{JobBatch, JobMessage};

/// Why a job's publish failed (shared by every job its message carried).
pub type PublishError = Arc<BrokerError>;

/// A job waiting to go out with the next message of its queue.
struct Waiting {
    msg: JobMessage,
    published: oneshot::Sender<Result<(), PublishError>>,
}

/// How many jobs a message on one queue carries, estimated from what this replica published
/// to it: a queue's depth is in messages, and shedding, quotas and the autoscaler's backlog
/// count jobs. The estimate rises at once to a larger batch and falls back over about 256
/// messages, so after a burst it errs on the side of more jobs queued (shedding sooner rather
/// than letting a queue of batches grow past its limit).
#[derive(Debug)]
pub struct JobsPerMessage {
    /// Thousandths of a job.
    milli: AtomicU64,
}

impl Default for JobsPerMessage {
    fn default() -> Self {
        Self {
            milli: AtomicU64::new(1_000),
        }
    }
}

impl JobsPerMessage {
    /// A message of `jobs` jobs was published.
    pub fn note(&self, jobs: usize) {
        let now = (jobs as u64).saturating_mul(1_000);
        let _ = self
            .milli
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |was| {
                Some(if now >= was {
                    now
                } else {
                    was - ((was - now) / 256).max(1)
                })
            });
    }

    /// The jobs `messages` messages are estimated to hold.
    pub fn jobs_in(&self, messages: u64) -> u64 {
        let milli = self.milli.load(Ordering::Relaxed).max(1_000);
        let jobs = u128::from(messages) * u128::from(milli) / 1_000;
        u64::try_from(jobs).unwrap_or(u64::MAX)
    }
}

/// One batched queue: its estimate and its gatherer, started at its first job.
#[derive(Default)]
struct Route {
    per_message: Arc<JobsPerMessage>,
    gatherer: OnceLock<mpsc::UnboundedSender<Waiting>>,
}

/// The dispatcher's way onto the work queues.
pub struct JobPublisher {
    broker: Broker,
    /// The batched queues (`batch_jobs` on; agents with fairness per tenant), by agent and
    /// tenant.
    routes: HashMap<String, HashMap<String, Route>>,
}

impl JobPublisher {
    pub fn new(broker: Broker, config: &Config) -> Self {
        let batched = config
            .agents
            .iter()
            .filter(|_| config.dispatcher.batch_jobs)
            .filter(|(_, agent)| agent.fairness == Fairness::Tenants);
        let routes = batched
            .map(|(agent, _)| {
                let tenants = config
                    .tenants
                    .iter()
                    .map(|t| (t.id.clone(), Route::default()));
                (agent.clone(), tenants.collect())
            })
            .collect();
        Self { broker, routes }
    }

    /// The estimate of jobs per message on `agent`'s queue for `tenant`, if it is batched.
    pub fn jobs_per_message(&self, agent: &str, tenant: &str) -> Option<Arc<JobsPerMessage>> {
        let route = self.routes.get(agent)?.get(tenant)?;
        Some(route.per_message.clone())
    }

    /// Puts the job on its queue; answers once the message that carries it is confirmed.
    pub async fn publish(&self, msg: JobMessage) -> Result<(), PublishError> {
        let Some(route) = self.routes.get(&msg.agent).and_then(|r| r.get(&msg.tenant)) else {
            return self.broker.publish_job(&msg).await.map_err(Arc::new);
        };
        let gatherer = route.gatherer.get_or_init(|| {
            let (jobs, inbox) = mpsc::unbounded_channel();
            tokio::spawn(gather(
                self.broker.clone(),
                inbox,
                route.per_message.clone(),
            ));
            jobs
        });
        let (published, outcome) = oneshot::channel();
        // The gatherer lives as long as this publisher, which holds its sender; if it were
        // gone, the job's sender would be dropped with it and the job refused below.
        let _ = gatherer.send(Waiting { msg, published });
        outcome
            .await
            .unwrap_or_else(|_| Err(Arc::new(BrokerError::NotConnected)))
    }
}

/// One queue's group commit: takes every job waiting (up to a batch's worth), publishes them
/// as one message, tells each its outcome, and starts over; jobs that arrive meanwhile wait
/// for the next message. Ends when the publisher is dropped.
async fn gather(
    broker: Broker,
    mut inbox: mpsc::UnboundedReceiver<Waiting>,
    per_message: Arc<JobsPerMessage>,
) {
    let mut waiting = Vec::new();
    while inbox.recv_many(&mut waiting, JobBatch::MAX_JOBS).await > 0 {
        let jobs = waiting.iter().map(|w| w.msg.clone()).collect();
        // One queue's jobs, at most a batch's worth: always a batch.
        let published = match JobBatch::new(jobs) {
            Ok(batch) => broker.publish_jobs(&batch).await,
            Err(err) => Err(err.into()),
        };
        if published.is_ok() {
            per_message.note(waiting.len());
        }
        let published = published.map_err(Arc::new);
        for job in waiting.drain(..) {
            let _ = job.published.send(published.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_estimate_rises_to_a_batch_at_once_and_falls_back_slowly() {
        let estimate = JobsPerMessage::default();
        assert_eq!(estimate.jobs_in(10), 10, "one job a message until told");
        estimate.note(20);
        assert_eq!(estimate.jobs_in(10), 200);
        estimate.note(1);
        let after_one = estimate.jobs_in(1_000);
        assert!((19_000..20_000).contains(&after_one), "{after_one}");
        for _ in 0..2_000 {
            estimate.note(1);
        }
        assert!(
            estimate.jobs_in(1_000) < 1_010,
            "back to about one a message"
        );
        assert_eq!(JobsPerMessage::default().jobs_in(u64::MAX), u64::MAX);
    }
}
