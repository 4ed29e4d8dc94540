//! Control broadcasts: each replica binds an exclusive queue to `{prefix}.control` and cancels
//! the runs it is told to. A broadcast missed while reconnecting is not lost for good: a run
//! also learns of its job's cancellation when it renews its lease.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use futures_util::StreamExt as _;
use lapin::options::{BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::Channel;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use agentfleet_common::broker::{Broker, BrokerError};
use agentfleet_common::wire::{ControlMessage, Versioned};

/// The runs in progress on this replica, by job, with the token that aborts each.
#[derive(Default)]
pub struct Running {
    runs: Mutex<HashMap<Uuid, CancellationToken>>,
}

impl Running {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, CancellationToken>> {
        self.runs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Registers a run; it is removed when the guard drops.
    pub fn register(&self, id: Uuid, token: CancellationToken) -> RunGuard<'_> {
        self.lock().insert(id, token);
        RunGuard { running: self, id }
    }

    pub fn cancel(&self, id: Uuid) -> bool {
        match self.lock().get(&id) {
            Some(token) => {
                token.cancel();
                true
            }
            None => false,
        }
    }
}

pub struct RunGuard<'a> {
    running: &'a Running,
    id: Uuid,
}

impl Drop for RunGuard<'_> {
    fn drop(&mut self) {
        self.running.lock().remove(&self.id);
    }
}

/// Listens for broadcasts until `stop`, reconnecting with backoff. Answers the channel it
/// was listening on when stopped, for the caller to close with the connection (see
/// `Broker::close`).
pub async fn listen(
    broker: Broker,
    running: std::sync::Arc<Running>,
    stop: CancellationToken,
) -> Option<Channel> {
    let mut backoff = Duration::from_millis(100);
    while !stop.is_cancelled() {
        match listen_once(&broker, &running, &stop).await {
            Ok(Some(channel)) => return Some(channel),
            Ok(None) => backoff = Duration::from_millis(100),
            Err(err) => {
                tracing::warn!(error = %err, ?backoff, "control listener lost; reconnecting");
            }
        }
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            () = stop.cancelled() => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
    None
}

/// Listens on a queue of its own until `stop` (answering the channel) or until its consumer
/// ends (`None`).
async fn listen_once(
    broker: &Broker,
    running: &Running,
    stop: &CancellationToken,
) -> Result<Option<Channel>, BrokerError> {
    // A stop waits for this, as for a consumption's (see `consumer::consume_once`).
    let conn = broker.connection().await?;
    let channel = conn.create_channel().await?;
    let queue = channel
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    channel
        .queue_bind(
            queue.name().clone(),
            broker.names().control_exchange().into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let mut consumer = channel
        .basic_consume(
            queue.name().clone(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    loop {
        let delivery = tokio::select! {
            next = consumer.next() => next,
            () = stop.cancelled() => return Ok(Some(channel)),
        };
        let delivery = match delivery {
            Some(Ok(delivery)) => delivery,
            Some(Err(err)) => return Err(err.into()),
            None => return Ok(None),
        };
        match ControlMessage::decode(&delivery.data) {
            Ok(msg) => {
                if running.cancel(msg.cancel) {
                    tracing::info!(job_id = %msg.cancel, "cancelling the run");
                }
            }
            Err(err) => tracing::warn!(error = %err, "undecodable control message ignored"),
        }
    }
}
