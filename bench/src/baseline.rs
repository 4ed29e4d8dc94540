//! The broker's own ceilings, measured with lapin alone in the same run as the figures they
//! bound: the same message (an encoded job message), persistent and mandatory like the
//! dispatcher's, to a quorum queue like an agent's, with publisher confirms and (for the
//! pipeline) a consumer with manual acks and the agent's prefetch. Each measurement declares
//! its own queue under a unique prefix and deletes it afterwards, even when cancelled.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use futures_util::StreamExt as _;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};
use uuid::Uuid;

use agentfleet_common::wire::{JobMessage, Versioned as _, SCHEMA_VERSION};
use agentfleet_tests::AMQP_URL;

use crate::load::{closed_loop, LoadResult};

/// Bound on one publish and its confirm.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(10);

/// A job message as the dispatcher publishes it, for the same size on the wire.
pub fn job_payload(agent: &str) -> Vec<u8> {
    JobMessage {
        v: SCHEMA_VERSION,
        job_id: Uuid::now_v7(),
        tenant: "acme".to_owned(),
        agent: agent.to_owned(),
        attempt: 1,
        not_before: None,
        // The dispatcher makes one up when the client sends none.
        request_id: Some(Uuid::now_v7().to_string()),
    }
    .encode()
}

/// A quorum queue of our own, deleted on drop.
pub struct RawQueue {
    pub name: String,
}

impl RawQueue {
    pub async fn declare(conn: &Connection) -> anyhow::Result<Self> {
        let name = format!("afbench-{}.raw", Uuid::now_v7().simple());
        let channel = conn.create_channel().await?;
        let mut args = FieldTable::default();
        args.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("quorum".into()),
        );
        args.insert("x-delivery-limit".into(), AMQPValue::LongLongInt(20));
        channel
            .queue_declare(
                name.as_str().into(),
                QueueDeclareOptions {
                    durable: true,
                    ..QueueDeclareOptions::default()
                },
                args,
            )
            .await?;
        let _ = channel.close(200, "declared".into()).await;
        Ok(Self { name })
    }
}

impl Drop for RawQueue {
    fn drop(&mut self) {
        // Drop cannot await: delete on a thread with its own runtime, like the harness does.
        let name = self.name.clone();
        let cleanup = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            let result: anyhow::Result<()> = runtime.block_on(async {
                let conn = connect().await?;
                let channel = conn.create_channel().await?;
                channel
                    .queue_delete(name.as_str().into(), QueueDeleteOptions::default())
                    .await?;
                let _ = conn.close(200, "cleanup".into()).await;
                Ok(())
            });
            if let Err(err) = result {
                eprintln!("could not delete the baseline queue {name}: {err:#}");
            }
        });
        let _ = cleanup.join();
    }
}

pub async fn connect() -> anyhow::Result<Connection> {
    tokio::time::timeout(
        Duration::from_secs(5),
        Connection::connect(AMQP_URL, ConnectionProperties::default()),
    )
    .await
    .context("connecting to RabbitMQ timed out")?
    .context("connecting to RabbitMQ")
}

/// A confirm channel publishing persistent, mandatory messages to one queue.
#[derive(Clone)]
pub struct Publisher {
    channel: Channel,
    queue: Arc<str>,
    payload: Arc<[u8]>,
}

impl Publisher {
    pub async fn new(conn: &Connection, queue: &str, payload: &[u8]) -> anyhow::Result<Self> {
        let channel = conn.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(Self {
            channel,
            queue: queue.into(),
            payload: payload.into(),
        })
    }

    /// Publishes one message and waits for its confirm.
    pub async fn publish(&self) -> anyhow::Result<()> {
        let props = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type("application/json".into())
            .with_message_id(Uuid::now_v7().to_string().into());
        let confirm = tokio::time::timeout(CONFIRM_TIMEOUT, async {
            self.channel
                .basic_publish(
                    "".into(),
                    self.queue.as_ref().into(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..BasicPublishOptions::default()
                    },
                    &self.payload,
                    props,
                )
                .await?
                .await
        })
        .await
        .context("no confirm within 10 s")??;
        match confirm {
            Confirmation::Ack(None) => Ok(()),
            other => bail!("the broker did not take the message: {other:?}"),
        }
    }
}

/// The pipeline ceiling: `n` messages published with `publishers` confirms in flight and
/// consumed with manual acks at `prefetch`, at the same time. Returns messages per second,
/// first publish to last ack.
pub async fn pipeline(
    n: usize,
    publishers: usize,
    prefetch: u16,
    payload: &[u8],
    within: Duration,
) -> anyhow::Result<f64> {
    let publish_conn = connect().await?;
    let consume_conn = connect().await?;
    let queue = RawQueue::declare(&publish_conn).await?;
    let publisher = Publisher::new(&publish_conn, &queue.name, payload).await?;

    let channel = consume_conn.create_channel().await?;
    channel
        .basic_qos(prefetch, BasicQosOptions::default())
        .await?;
    let mut consumer = channel
        .basic_consume(
            queue.name.as_str().into(),
            "afbench-consumer".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;

    let started = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let mut publishing = tokio::task::JoinSet::new();
    for _ in 0..publishers {
        let publisher = publisher.clone();
        let next = next.clone();
        publishing.spawn(async move {
            while next.fetch_add(1, Ordering::Relaxed) < n {
                publisher.publish().await?;
            }
            anyhow::Ok(())
        });
    }
    let consuming = async {
        // Acks go out from their own tasks, as a worker's runs do.
        let mut acks = tokio::task::JoinSet::new();
        for _ in 0..n {
            let delivery = consumer.next().await.context("the consumer stopped")??;
            acks.spawn(async move { delivery.ack(BasicAckOptions::default()).await });
        }
        while let Some(ack) = acks.join_next().await {
            ack??;
        }
        anyhow::Ok(started.elapsed())
    };
    let elapsed = tokio::time::timeout(within, async {
        let elapsed = consuming.await?;
        while let Some(done) = publishing.join_next().await {
            done??;
        }
        anyhow::Ok(elapsed)
    })
    .await
    .with_context(|| format!("the pipeline baseline did not finish within {within:?}"))??;
    let _ = consume_conn.close(200, "done".into()).await;
    let _ = publish_conn.close(200, "done".into()).await;
    drop(queue);
    Ok(n as f64 / elapsed.as_secs_f64())
}

/// The intake ceiling: publishes with confirms from `concurrency` tasks for `warmup`, then
/// for `duration`, and reports the second run.
pub async fn publish_only(
    concurrency: usize,
    warmup: Duration,
    duration: Duration,
    payload: &[u8],
) -> anyhow::Result<LoadResult> {
    let conn = connect().await?;
    let queue = RawQueue::declare(&conn).await?;
    let publisher = Publisher::new(&conn, &queue.name, payload).await?;
    let op = move |_| {
        let publisher = publisher.clone();
        async move { publisher.publish().await.is_ok() }
    };
    closed_loop(concurrency, warmup, op.clone()).await;
    let result = closed_loop(concurrency, duration, op).await;
    let _ = conn.close(200, "done".into()).await;
    drop(queue);
    Ok(result)
}
