//! Load shedding: the ready depth of each agent queue that has a `max_queue_depth`, polled in
//! the background (a passive declare every 250 ms), so a POST checks a number instead of
//! asking the broker.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use tokio_util::sync::CancellationToken;

use agentfleet_common::broker::Broker;
use agentfleet_common::config::Config;

const POLL_EVERY: Duration = Duration::from_millis(250);
const UNKNOWN: u64 = u64::MAX;

/// Last seen depth of each shed-able agent's queue (`UNKNOWN` until seen).
#[derive(Clone, Default)]
pub struct QueueDepths {
    limits: Arc<HashMap<String, (u64, Arc<AtomicU64>)>>,
}

impl QueueDepths {
    pub fn new(config: &Config) -> Self {
        let limits = config
            .agents
            .iter()
            .filter_map(|(name, agent)| {
                agent.max_queue_depth.map(|max| {
                    (
                        name.clone(),
                        (u64::from(max), Arc::new(AtomicU64::new(UNKNOWN))),
                    )
                })
            })
            .collect();
        Self {
            limits: Arc::new(limits),
        }
    }

    /// True when `agent` has a limit and its queue is known to be over it. An unknown depth
    /// (broker unreachable) does not shed: publishing will fail on its own.
    pub fn over_limit(&self, agent: &str) -> bool {
        self.limits.get(agent).is_some_and(|(max, depth)| {
            let depth = depth.load(Ordering::Relaxed);
            depth != UNKNOWN && depth >= *max
        })
    }

    /// Polls until `stop`.
    pub async fn poll(self, broker: Broker, stop: CancellationToken) {
        if self.limits.is_empty() {
            return;
        }
        loop {
            tokio::select! {
                () = tokio::time::sleep(POLL_EVERY) => {}
                () = stop.cancelled() => return,
            }
            if let Err(err) = self.poll_once(&broker).await {
                tracing::debug!(error = %err, "queue depth poll failed");
                for (_, depth) in self.limits.values() {
                    depth.store(UNKNOWN, Ordering::Relaxed);
                }
            }
        }
    }

    async fn poll_once(
        &self,
        broker: &Broker,
    ) -> Result<(), agentfleet_common::broker::BrokerError> {
        let conn = broker.connection().await?;
        let channel = conn.create_channel().await?;
        for (agent, (_, depth)) in self.limits.iter() {
            let queue = channel
                .queue_declare(
                    broker.names().agent_queue(agent).into(),
                    QueueDeclareOptions {
                        passive: true,
                        ..QueueDeclareOptions::default()
                    },
                    FieldTable::default(),
                )
                .await?;
            depth.store(u64::from(queue.message_count()), Ordering::Relaxed);
        }
        let _ = channel.close(200, "polled".into()).await;
        Ok(())
    }
}
