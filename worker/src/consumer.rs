//! The consume loop shared by agent queues and the webhook queue: (re)connect with backoff,
//! set the prefetch, take a slot per delivery, hand the delivery to a handler task, and on
//! shutdown cancel the consumer so nothing new arrives.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt as _;
use lapin::message::Delivery;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use agentfleet_common::broker::{Broker, BrokerError};

/// What to consume and how.
pub struct Consumption {
    pub queue: String,
    pub prefetch: u16,
    pub slots: Arc<Semaphore>,
    pub consumer_tag: String,
}

const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Consumes `queue` until `stop` is cancelled, running `handle` for each delivery in a task
/// tracked by `tracker` that holds a slot until it finishes.
pub async fn consume<H, F>(
    broker: Broker,
    consumption: Consumption,
    tracker: TaskTracker,
    stop: CancellationToken,
    handle: H,
) where
    H: Fn(Delivery, OwnedSemaphorePermit) -> F + Send + Sync + 'static,
    F: Future<Output = ()> + Send + 'static,
{
    let mut backoff = Duration::from_millis(100);
    while !stop.is_cancelled() {
        match consume_once(&broker, &consumption, &tracker, &stop, &handle).await {
            Ok(()) => backoff = Duration::from_millis(100),
            Err(err) => {
                tracing::warn!(queue = %consumption.queue, error = %err, ?backoff, "consumer lost; reconnecting");
            }
        }
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            () = stop.cancelled() => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

async fn consume_once<H, F>(
    broker: &Broker,
    consumption: &Consumption,
    tracker: &TaskTracker,
    stop: &CancellationToken,
    handle: &H,
) -> Result<(), BrokerError>
where
    H: Fn(Delivery, OwnedSemaphorePermit) -> F,
    F: Future<Output = ()> + Send + 'static,
{
    let conn = broker.connection().await?;
    let channel = conn.create_channel().await?;
    channel
        .basic_qos(consumption.prefetch, BasicQosOptions::default())
        .await?;
    let mut consumer = channel
        .basic_consume(
            consumption.queue.as_str().into(),
            consumption.consumer_tag.as_str().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    tracing::info!(queue = %consumption.queue, prefetch = consumption.prefetch, "consuming");
    loop {
        let delivery = tokio::select! {
            next = consumer.next() => next,
            () = stop.cancelled() => {
                // Stop deliveries; prefetched ones not yet handed out go back when the
                // channel closes.
                let _ = channel
                    .basic_cancel(consumption.consumer_tag.as_str().into(), BasicCancelOptions::default())
                    .await;
                return Ok(());
            }
        };
        let delivery = match delivery {
            Some(Ok(delivery)) => delivery,
            Some(Err(err)) => return Err(err.into()),
            None => return Ok(()),
        };
        let permit = tokio::select! {
            permit = consumption.slots.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => return Ok(()),
            },
            () = stop.cancelled() => return Ok(()),
        };
        tracker.spawn(handle(delivery, permit));
    }
}
