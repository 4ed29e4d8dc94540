//! RabbitMQ: one connection per process, re-established on demand; the topology (exchanges,
//! per-agent work queues, delay queues, the dead-letter queue, the webhook queue) declared on
//! every (re)connect; and publishing with confirms on persistent messages.
//!
//! A cluster is given as several URLs (`amqp.urls`): a connect tries them in order from the
//! node last in use, and a lost connection moves on to the node after it, so a process whose
//! node died reconnects to a live one at once. Every declaration is idempotent (the same
//! names, options and arguments each time), so declaring again after a reconnect changes
//! nothing; quorum queues keep their messages on a majority of their replicas, and a confirm
//! means that majority has the message.
//!
//! Topology, all names from [`Names`]:
//! - `{p}.work` (direct): `jobs.{agent}` → `{p}.jobs.{agent}` (the agent's shared queue),
//!   `jobs.{agent}.{tenant}` → `{p}.jobs.{agent}.{tenant}` (one per tenant, for agents with
//!   `fairness: tenants`), `webhooks` → `{p}.webhooks`.
//! - `{p}.delay` (headers): `delay-ms = N` → `{p}.delay.{N}ms`, a queue whose messages expire
//!   after N ms and dead-letter (at least once, on quorum queues) back to `{p}.work` with their
//!   original routing key. Waiting for a retry therefore holds no unacked message and no
//!   worker slot.
//! - `{p}.dead` (fanout) → `{p}.dead`: poison, undecodable and over-delivered messages, and a
//!   copy of every job that failed for good, for inspection.
//! - `{p}.control` (fanout) → one exclusive queue per worker: cancellation broadcasts.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind,
};
use secrecy::ExposeSecret;
use tokio::sync::Mutex;

use crate::config::{AmqpConfig, QueueType};
use crate::naming::{JobQueue, Names};
use crate::wire::{ControlMessage, JobBatch, JobMessage, Versioned, WebhookMessage};

/// Steps of the delay ladder. A delay is served by hopping through the largest step that does
/// not overshoot what is left (see [`delay_step_for`]); the message's `not_before` makes the
/// last hop exact enough.
pub const DELAY_STEPS_MS: &[u64] = &[250, 1_000, 5_000, 30_000, 120_000, 600_000, 3_600_000];

/// Header that selects a delay queue on the delay exchange. It must not start with `x-`:
/// RabbitMQ's headers exchange ignores such binding arguments when matching, which would
/// route every delayed message to every delay queue.
const DELAY_HEADER: &str = "delay-ms";

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("broker: {0}")]
    Amqp(#[from] lapin::Error),
    #[error("broker did not answer within {0:?}")]
    Timeout(Duration),
    #[error("broker refused the message (nack)")]
    Nacked,
    #[error("broker could not route the message to any queue")]
    Unroutable,
    #[error("broker not connected")]
    NotConnected,
    #[error("{0}")]
    Batch(#[from] crate::wire::WireError),
    /// A configured URL does not parse as AMQP (the parser's message is not kept: it may
    /// quote the URL, credentials and all).
    #[error("a broker URL does not parse as an AMQP URL")]
    BadUrl,
}

/// A recent failed connect makes fail-fast callers give up at once for this long.
const FAIL_FAST_HOLD: Duration = Duration::from_millis(500);

/// How long a fail-fast caller waits for the connect it started (which goes on without it).
const FAIL_FAST_WAIT: Duration = Duration::from_millis(700);

/// The largest AMQP frame a connection asks for unless its URL sets `frame_max`. lapin keeps
/// a send and a receive buffer of 32 frames each, zero-filled at connect: at RabbitMQ's
/// 128 KiB that is 8 MiB resident per connection (an eighth of a worker's heap with 2,000 runs
/// in flight); at 16 KiB, 1 MiB. Messages here are ids and a few hundred bytes; a larger one
/// is carried in several body frames.
const FRAME_MAX: u32 = 16 * 1024;

/// `url` parsed, with [`FRAME_MAX`] unless the URL asks for another `frame_max`.
fn lean_frames(url: &str) -> Result<lapin::uri::AMQPUri, BrokerError> {
    let mut uri: lapin::uri::AMQPUri = url.parse().map_err(|_: String| BrokerError::BadUrl)?;
    uri.query.frame_max.get_or_insert(FRAME_MAX);
    Ok(uri)
}

/// A cheap-clone handle to the broker.
#[derive(Clone)]
pub struct Broker {
    inner: Arc<Inner>,
}

struct Inner {
    config: AmqpConfig,
    names: Names,
    /// The work queues this process declares (and, for jobs, publishes to).
    job_queues: Vec<JobQueue>,
    /// Their routing keys: a job goes to its tenant's queue when this process knows it.
    routes: HashSet<String>,
    connection_name: String,
    /// The live connection and the index (in `amqp.urls`) of its node, read on every
    /// publish without waiting on a connect.
    current: std::sync::RwLock<Option<(Arc<Connection>, usize)>>,
    /// The node a connect tries first: the one last in use, or the one after it once that
    /// connection was lost or refused.
    next_node: AtomicUsize,
    /// Held while connecting, so one caller connects and the others wait (or, fail-fast,
    /// give up at once).
    connecting: Arc<Mutex<()>>,
    publisher: Mutex<Option<Channel>>,
    /// Request paths (the dispatcher) must answer within a second during an outage: they
    /// never wait for another caller's connect, and skip connecting right after a failure.
    fail_fast: bool,
    last_failure: std::sync::Mutex<Option<std::time::Instant>>,
    /// Set by [`Broker::close`]: a closing process does not connect again.
    closed: AtomicBool,
}

impl Broker {
    /// `job_queues` are the work queues this process declares (see `Config::job_queues`).
    pub fn new(
        config: &AmqpConfig,
        names: Names,
        job_queues: Vec<JobQueue>,
        connection_name: &str,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                config: config.clone(),
                names,
                routes: job_queues.iter().map(|q| q.routing_key.clone()).collect(),
                job_queues,
                connection_name: connection_name.to_owned(),
                current: std::sync::RwLock::new(None),
                next_node: AtomicUsize::new(0),
                connecting: Arc::new(Mutex::new(())),
                publisher: Mutex::new(None),
                fail_fast: false,
                last_failure: std::sync::Mutex::new(None),
                closed: AtomicBool::new(false),
            }),
        }
    }

    /// A broker handle for request paths: see `Inner::fail_fast`.
    pub fn new_fail_fast(
        config: &AmqpConfig,
        names: Names,
        job_queues: Vec<JobQueue>,
        connection_name: &str,
    ) -> Self {
        let mut broker = Self::new(config, names, job_queues, connection_name);
        if let Some(inner) = Arc::get_mut(&mut broker.inner) {
            inner.fail_fast = true;
        }
        broker
    }

    pub fn names(&self) -> &Names {
        &self.inner.names
    }

    /// True while a connection is up. Never blocks on the network.
    pub async fn is_connected(&self) -> bool {
        self.current_connected().is_some()
    }

    fn current_connected(&self) -> Option<Arc<Connection>> {
        self.inner
            .current
            .read()
            .ok()?
            .as_ref()
            .map(|(conn, _)| conn)
            .filter(|c| c.status().connected())
            .cloned()
    }

    /// The live connection, connecting (and declaring the topology) if there is none.
    pub async fn connection(&self) -> Result<Arc<Connection>, BrokerError> {
        if let Some(conn) = self.current_connected() {
            return Ok(conn);
        }
        if self.inner.closed.load(Ordering::SeqCst) {
            return Err(BrokerError::NotConnected);
        }
        if self.inner.fail_fast {
            return self.connect_in_background().await;
        }
        let _connecting = self.inner.connecting.lock().await;
        // Someone else may have connected while we waited, or closed the broker.
        if let Some(conn) = self.current_connected() {
            return Ok(conn);
        }
        self.connect_round().await
    }

    /// For request paths: the connect runs in a task of its own, with the full per-node
    /// timeouts, and the caller that started it waits for it only `FAIL_FAST_WAIT`; callers
    /// that find one running, or a failure in the last `FAIL_FAST_HOLD`, give up at once. A
    /// slow connect — a cluster that lost a node declares the quorum queues whose leader was
    /// on it only once a new leader is elected — so completes for the requests after.
    async fn connect_in_background(&self) -> Result<Arc<Connection>, BrokerError> {
        if self.failed_recently() {
            return Err(BrokerError::NotConnected);
        }
        let connecting = self
            .inner
            .connecting
            .clone()
            .try_lock_owned()
            .map_err(|_| BrokerError::NotConnected)?;
        let broker = self.clone();
        let round = tokio::spawn(async move {
            let _connecting = connecting;
            if broker.current_connected().is_some() {
                return;
            }
            let _ = broker.connect_round().await;
        });
        let _ = tokio::time::timeout(FAIL_FAST_WAIT, round).await;
        self.current_connected().ok_or(BrokerError::NotConnected)
    }

    /// One round over the nodes; the connection it makes becomes the current one.
    async fn connect_round(&self) -> Result<Arc<Connection>, BrokerError> {
        if self.inner.closed.load(Ordering::SeqCst) {
            return Err(BrokerError::NotConnected);
        }
        let timeout = self.inner.config.connect_timeout;
        self.forget_lost_connection();
        let result = self.connect_any(timeout).await;
        if let Ok(mut last) = self.inner.last_failure.lock() {
            *last = result.is_err().then(std::time::Instant::now);
        }
        let (conn, node) = result?;
        if self.inner.closed.load(Ordering::SeqCst) {
            // Closed while this round ran: the connection is not kept.
            let _ = tokio::time::timeout(timeout, conn.close(200, "closing".into())).await;
            return Err(BrokerError::NotConnected);
        }
        if let Ok(mut current) = self.inner.current.write() {
            *current = Some((conn.clone(), node));
        }
        Ok(conn)
    }

    fn failed_recently(&self) -> bool {
        self.inner
            .last_failure
            .lock()
            .ok()
            .and_then(|at| *at)
            .is_some_and(|at| at.elapsed() < FAIL_FAST_HOLD)
    }

    /// A connection that was lost points the next connect at the node after its own: that
    /// node is likely down, and is tried last.
    fn forget_lost_connection(&self) {
        let lost = self.inner.current.write().ok().and_then(|mut c| c.take());
        if let Some((_, node)) = lost {
            let nodes = self.inner.config.endpoints().len().max(1);
            self.inner
                .next_node
                .store((node + 1) % nodes, Ordering::SeqCst);
            tracing::warn!(node, "broker connection lost; connecting to the next node");
        }
    }

    /// Tries each node once, from `next_node` on, each within `timeout`; the first that
    /// connects and takes the topology wins. A node that fails moves `next_node` past it.
    async fn connect_any(
        &self,
        timeout: Duration,
    ) -> Result<(Arc<Connection>, usize), BrokerError> {
        let endpoints = self.inner.config.endpoints();
        let first = self.inner.next_node.load(Ordering::SeqCst);
        let mut last_error = BrokerError::NotConnected;
        for node in node_order(first, endpoints.len()) {
            match self.connect(node, timeout).await {
                Ok(conn) => {
                    self.inner.next_node.store(node, Ordering::SeqCst);
                    return Ok((conn, node));
                }
                Err(err) => {
                    // The URL may hold credentials: only its place in the list is logged. At
                    // debug: the caller reports the round's failure.
                    tracing::debug!(node, error = %err, "broker node did not connect");
                    self.inner
                        .next_node
                        .store((node + 1) % endpoints.len(), Ordering::SeqCst);
                    last_error = err;
                }
            }
        }
        Err(last_error)
    }

    async fn connect(
        &self,
        node: usize,
        timeout: Duration,
    ) -> Result<Arc<Connection>, BrokerError> {
        let url = self
            .inner
            .config
            .endpoints()
            .get(node)
            .ok_or(BrokerError::NotConnected)?;
        let props = ConnectionProperties::default()
            .with_connection_name(self.inner.connection_name.clone().into());
        let uri = lean_frames(url.expose_secret())?;
        let conn = tokio::time::timeout(timeout, Connection::connect_uri(uri, props))
            .await
            .map_err(|_| BrokerError::Timeout(timeout))??;
        let conn = Arc::new(conn);
        let declared = bounded(timeout, async {
            let channel = conn.create_channel().await?;
            self.declare_topology(&channel).await?;
            let _ = channel.close(200, "topology declared".into()).await;
            Ok(())
        })
        .await;
        if let Err(err) = declared {
            // A node that takes connections but not declarations (a minority, booting) is
            // not one to stay on.
            let _ = tokio::time::timeout(timeout, conn.close(200, "topology not declared".into()))
                .await;
            return Err(err);
        }
        tracing::info!(prefix = %self.inner.names.amqp_prefix(), node, "connected to the broker");
        Ok(conn)
    }

    /// Closes `channels` (those whose owners kept them open for acks, see the worker's
    /// consumer), the publishing channel and then the connection, all within `within`, and
    /// says so once, at INFO. Unacked deliveries go back to their queues. From now on this
    /// handle does not connect again.
    ///
    /// Every channel is closed explicitly, and first: lapin closes a channel that is merely
    /// dropped in a task of its own, and when that task runs after the connection began to
    /// close it fails, and lapin logs the connection as failed, at ERROR. A broker that does
    /// not answer in time is left to the process's exit, whose closing socket requeues the
    /// same deliveries.
    pub async fn close(&self, channels: Vec<Channel>, within: Duration) {
        self.inner.closed.store(true, Ordering::SeqCst);
        let deadline = tokio::time::Instant::now() + within;
        let publisher = tokio::time::timeout_at(deadline, self.inner.publisher.lock())
            .await
            .ok()
            .and_then(|mut publisher| publisher.take());
        let conn = self.inner.current.write().ok().and_then(|mut c| c.take());
        let Some((conn, _)) = conn else {
            tracing::info!("broker connection closed (none was open)");
            return;
        };
        let closing = async {
            for channel in channels.iter().chain(&publisher) {
                if channel.status().connected() {
                    let _ = channel.close(200, "shutting down".into()).await;
                }
            }
            conn.close(200, "shutting down".into()).await
        };
        match tokio::time::timeout_at(deadline, closing).await {
            Ok(Ok(())) => tracing::info!("broker connection closed"),
            // Lost before: an outage, nothing left to close.
            Ok(Err(err)) => tracing::info!(error = %err, "broker connection closed (it had ended)"),
            Err(_) => tracing::warn!(
                ?within,
                "broker did not answer the close in time; the process's exit closes the socket"
            ),
        }
    }

    async fn declare_topology(&self, channel: &Channel) -> Result<(), BrokerError> {
        let names = &self.inner.names;
        if self.inner.config.queue_type == QueueType::Classic {
            tracing::warn!(
                "amqp.queue_type is classic: classic queues dead-letter at most once, so a retry \
                 waiting in the delay ladder when the broker restarts can be lost; quorum \
                 queues keep every accepted job"
            );
        }
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..ExchangeDeclareOptions::default()
        };
        for (exchange, kind) in [
            (names.work_exchange(), ExchangeKind::Direct),
            (names.delay_exchange(), ExchangeKind::Headers),
            (names.dead_exchange(), ExchangeKind::Fanout),
            (names.control_exchange(), ExchangeKind::Fanout),
        ] {
            channel
                .exchange_declare(exchange.into(), kind, durable, FieldTable::default())
                .await?;
        }
        let dead_queue = names.dead_queue();
        self.declare_queue(channel, &dead_queue, self.queue_args(false))
            .await?;
        bind(
            channel,
            dead_queue,
            names.dead_exchange(),
            "",
            FieldTable::default(),
        )
        .await?;

        let job_queues = self.inner.job_queues.iter();
        let webhooks = (names.webhook_queue(), names.webhook_routing_key());
        for (queue, routing_key) in job_queues
            .map(|q| (q.queue.clone(), q.routing_key.as_str()))
            .chain([webhooks])
        {
            self.declare_queue(channel, &queue, self.queue_args(true))
                .await?;
            let exchange = names.work_exchange();
            bind(channel, queue, exchange, routing_key, FieldTable::default()).await?;
        }

        for &step in DELAY_STEPS_MS {
            let queue = names.delay_queue(step);
            self.declare_queue(channel, &queue, self.delay_queue_args(step))
                .await?;
            let mut binding = FieldTable::default();
            binding.insert("x-match".into(), AMQPValue::LongString("all".into()));
            binding.insert(DELAY_HEADER.into(), AMQPValue::LongLongInt(step as i64));
            bind(channel, queue, names.delay_exchange(), "", binding).await?;
        }
        Ok(())
    }

    /// Arguments of the delay queue whose messages wait `step` ms, then go back to the work
    /// exchange.
    fn delay_queue_args(&self, step: u64) -> FieldTable {
        let names = &self.inner.names;
        let mut args = FieldTable::default();
        args.insert("x-message-ttl".into(), AMQPValue::LongLongInt(step as i64));
        args.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString(LongString::from(names.work_exchange())),
        );
        if self.inner.config.queue_type == QueueType::Quorum {
            // Expired messages move back to the work queues at least once: the broker
            // re-publishes with confirms and retries until the target has them. (Classic
            // queues dead-letter at most once: a message expiring while its target is not
            // ready — right after a broker restart — would be dropped. The chaos test
            // caught exactly that.)
            self.quorum_args(&mut args);
            args.insert(
                "x-dead-letter-strategy".into(),
                AMQPValue::LongString("at-least-once".into()),
            );
            args.insert(
                "x-overflow".into(),
                AMQPValue::LongString("reject-publish".into()),
            );
        }
        args
    }

    /// Arguments of a work queue (`dead_letters`) or of the dead-letter queue itself.
    fn queue_args(&self, dead_letters: bool) -> FieldTable {
        let mut args = FieldTable::default();
        if self.inner.config.queue_type == QueueType::Quorum {
            self.quorum_args(&mut args);
            if dead_letters {
                // A message redelivered this often (workers crashing on it) is poison.
                args.insert(
                    "x-delivery-limit".into(),
                    AMQPValue::LongLongInt(i64::from(self.inner.config.delivery_limit)),
                );
            }
        }
        if dead_letters {
            args.insert(
                "x-dead-letter-exchange".into(),
                AMQPValue::LongString(LongString::from(self.inner.names.dead_exchange())),
            );
        }
        args
    }

    /// Makes a queue a quorum queue, with `amqp.quorum_initial_group_size` replicas if set.
    fn quorum_args(&self, args: &mut FieldTable) {
        args.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("quorum".into()),
        );
        if let Some(size) = self.inner.config.quorum_initial_group_size {
            args.insert(
                "x-quorum-initial-group-size".into(),
                AMQPValue::LongLongInt(i64::from(size)),
            );
        }
    }

    async fn declare_queue(
        &self,
        channel: &Channel,
        queue: &str,
        args: FieldTable,
    ) -> Result<(), BrokerError> {
        let options = QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        };
        channel.queue_declare(queue.into(), options, args).await?;
        Ok(())
    }

    async fn publisher(&self) -> Result<Channel, BrokerError> {
        let mut guard = self.inner.publisher.lock().await;
        if let Some(channel) = guard.as_ref() {
            if channel.status().connected() {
                return Ok(channel.clone());
            }
        }
        *guard = None;
        let conn = self.connection().await?;
        let opened = async {
            let channel = conn.create_channel().await?;
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await?;
            Ok::<_, BrokerError>(channel)
        }
        .await;
        match opened {
            Ok(channel) => {
                *guard = Some(channel.clone());
                Ok(channel)
            }
            Err(err) => {
                // A connection that cannot open a channel is not one to keep (a node killed
                // without a close may leave it looking connected): the next call reconnects.
                self.drop_connection(&conn);
                Err(err)
            }
        }
    }

    /// Forgets `conn` if it is still the current connection, so the next caller connects
    /// again (to the next node).
    fn drop_connection(&self, conn: &Arc<Connection>) {
        let Ok(mut current) = self.inner.current.write() else {
            return;
        };
        if let Some((held, node)) = current.as_ref() {
            if Arc::ptr_eq(held, conn) {
                let nodes = self.inner.config.endpoints().len().max(1);
                self.inner
                    .next_node
                    .store((node + 1) % nodes, Ordering::SeqCst);
                tracing::warn!(
                    node = *node,
                    "broker connection unusable; connecting to the next node"
                );
                *current = None;
            }
        }
    }

    /// Publishes a persistent message and waits for the broker's confirm. Fails if the
    /// message could not be routed to a queue (mandatory) or was not confirmed in time.
    async fn publish_confirmed(
        &self,
        exchange: String,
        routing_key: String,
        message: Outgoing<'_>,
    ) -> Result<(), BrokerError> {
        self.publish_with(exchange, routing_key, message, true)
            .await
    }

    async fn publish_with(
        &self,
        exchange: String,
        routing_key: String,
        message: Outgoing<'_>,
        mandatory: bool,
    ) -> Result<(), BrokerError> {
        let timeout = self.inner.config.publish_timeout;
        let result = bounded(timeout, async {
            let channel = self.publisher().await?;
            let mut props = BasicProperties::default()
                .with_delivery_mode(2)
                .with_content_type("application/json".into())
                .with_message_id(message.id.into());
            if let Some(headers) = message.headers {
                props = props.with_headers(headers);
            }
            if let Some(kind) = message.kind {
                props = props.with_type(kind.into());
            }
            let options = BasicPublishOptions {
                mandatory,
                ..BasicPublishOptions::default()
            };
            let confirm = channel
                .basic_publish(
                    exchange.into(),
                    routing_key.into(),
                    options,
                    message.payload,
                    props,
                )
                .await?
                .await?;
            match confirm {
                Confirmation::Ack(None) | Confirmation::NotRequested => Ok(()),
                Confirmation::Ack(Some(_)) => Err(BrokerError::Unroutable),
                Confirmation::Nack(_) => Err(BrokerError::Nacked),
            }
        })
        .await;
        if matches!(
            result,
            Err(BrokerError::Amqp(_) | BrokerError::Timeout(_) | BrokerError::Nacked)
        ) {
            // The channel may be dead or wedged: the next publish opens a fresh one. A nack
            // counts too: a channel opened while a quorum queue elected a new leader (its node
            // just died) kept nacking every publish to it — the cluster test saw 46,000 nacks
            // in two minutes on one channel while a fresh one on the same node was taken.
            self.inner.publisher.lock().await.take();
        }
        result
    }

    /// The routing key of a job: its tenant's queue of its agent when this process declared
    /// one, else the agent's shared queue.
    fn job_route(&self, msg: &JobMessage) -> String {
        let names = &self.inner.names;
        let tenant = names.tenant_routing_key(&msg.agent, &msg.tenant);
        if self.inner.routes.contains(&tenant) {
            tenant
        } else {
            names.agent_routing_key(&msg.agent)
        }
    }

    /// Puts a job on its agent's work queue.
    pub async fn publish_job(&self, msg: &JobMessage) -> Result<(), BrokerError> {
        self.publish_confirmed(
            self.inner.names.work_exchange(),
            self.job_route(msg),
            Outgoing::new(&msg.encode(), &msg.job_id.to_string()),
        )
        .await
    }

    /// Puts jobs of one agent and tenant on their queue in one message (a [`JobBatch`]); one
    /// job goes as a message of its own.
    pub async fn publish_jobs(&self, batch: &JobBatch) -> Result<(), BrokerError> {
        let (first, rest) = batch
            .jobs
            .split_first()
            .ok_or(crate::wire::WireError::Batch("no jobs"))?;
        if rest.is_empty() {
            return self.publish_job(first).await;
        }
        let id = format!("{}+{}", first.job_id, rest.len());
        self.publish_confirmed(
            self.inner.names.work_exchange(),
            self.job_route(first),
            Outgoing {
                kind: Some(JobBatch::KIND),
                ..Outgoing::new(&batch.encode(), &id)
            },
        )
        .await
    }

    /// Keeps a copy of a message in the dead-letter queue, with the reason as a header.
    pub async fn publish_dead(
        &self,
        payload: &[u8],
        reason: &str,
        message_id: &str,
    ) -> Result<(), BrokerError> {
        let mut headers = FieldTable::default();
        headers.insert(
            "agentfleet-reason".into(),
            AMQPValue::LongString(LongString::from(reason)),
        );
        self.publish_confirmed(
            self.inner.names.dead_exchange(),
            String::new(),
            Outgoing {
                headers: Some(headers),
                ..Outgoing::new(payload, message_id)
            },
        )
        .await
    }

    /// Broadcasts to every connected worker. No worker listening is not an error.
    pub async fn publish_control(&self, msg: &ControlMessage) -> Result<(), BrokerError> {
        self.publish_with(
            self.inner.names.control_exchange(),
            String::new(),
            Outgoing::new(&msg.encode(), &msg.cancel.to_string()),
            false,
        )
        .await
    }

    /// Puts a job back on its agent's queue after `delay`, through the delay ladder.
    pub async fn publish_job_delayed(
        &self,
        msg: &JobMessage,
        delay: Duration,
    ) -> Result<(), BrokerError> {
        self.publish_delayed(
            self.job_route(msg),
            &msg.encode(),
            delay,
            &msg.job_id.to_string(),
        )
        .await
    }

    /// Hands a webhook delivery to the webhook queue.
    pub async fn publish_webhook(&self, msg: &WebhookMessage) -> Result<(), BrokerError> {
        let names = &self.inner.names;
        self.publish_confirmed(
            names.work_exchange(),
            names.webhook_routing_key().to_owned(),
            Outgoing::new(&msg.encode(), &msg.job_id.to_string()),
        )
        .await
    }

    pub async fn publish_webhook_delayed(
        &self,
        msg: &WebhookMessage,
        delay: Duration,
    ) -> Result<(), BrokerError> {
        let names = &self.inner.names;
        self.publish_delayed(
            names.webhook_routing_key().to_owned(),
            &msg.encode(),
            delay,
            &msg.job_id.to_string(),
        )
        .await
    }

    async fn publish_delayed(
        &self,
        routing_key: String,
        payload: &[u8],
        delay: Duration,
        message_id: &str,
    ) -> Result<(), BrokerError> {
        let step = delay_step_for(delay);
        let mut headers = FieldTable::default();
        headers.insert(
            ShortString::from(DELAY_HEADER),
            AMQPValue::LongLongInt(step as i64),
        );
        self.publish_confirmed(
            self.inner.names.delay_exchange(),
            routing_key,
            Outgoing {
                headers: Some(headers),
                ..Outgoing::new(payload, message_id)
            },
        )
        .await
    }
}

/// A message on its way out: its body and the properties that vary between messages.
struct Outgoing<'a> {
    payload: &'a [u8],
    id: &'a str,
    headers: Option<FieldTable>,
    /// The AMQP `type`: set for messages that are not what their queue usually carries.
    kind: Option<&'static str>,
}

impl<'a> Outgoing<'a> {
    fn new(payload: &'a [u8], id: &'a str) -> Self {
        Self {
            payload,
            id,
            headers: None,
            kind: None,
        }
    }
}

/// The delay step for what is left to wait: the largest step that does not overshoot, or the
/// smallest step when less than that is left.
pub fn delay_step_for(remaining: Duration) -> u64 {
    let remaining_ms = u64::try_from(remaining.as_millis()).unwrap_or(u64::MAX);
    DELAY_STEPS_MS
        .iter()
        .rev()
        .copied()
        .find(|&step| step <= remaining_ms)
        .unwrap_or(DELAY_STEPS_MS[0])
}

/// The order a connect tries `nodes` nodes in: from `first`, wrapping round, each once.
fn node_order(first: usize, nodes: usize) -> impl Iterator<Item = usize> {
    (0..nodes).map(move |i| (first + i) % nodes)
}

async fn bounded<T>(
    timeout: Duration,
    fut: impl std::future::Future<Output = Result<T, BrokerError>>,
) -> Result<T, BrokerError> {
    tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| BrokerError::Timeout(timeout))?
}

/// Binds `queue` to `exchange` under `routing_key`, with `arguments` (a headers exchange's
/// match).
async fn bind(
    channel: &Channel,
    queue: String,
    exchange: String,
    routing_key: &str,
    arguments: FieldTable,
) -> Result<(), BrokerError> {
    channel
        .queue_bind(
            queue.into(),
            exchange.into(),
            routing_key.into(),
            QueueBindOptions::default(),
            arguments,
        )
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_ask_for_lean_frames_unless_the_url_sets_them() {
        let uri = lean_frames("amqp://guest:guest@127.0.0.1:5672/%2f").expect("valid");
        assert_eq!(uri.query.frame_max, Some(FRAME_MAX));
        let uri = lean_frames("amqp://127.0.0.1:5672/%2f?frame_max=131072").expect("valid");
        assert_eq!(uri.query.frame_max, Some(131_072));
        assert!(lean_frames("http://nowhere").is_err());
    }

    #[test]
    fn delay_steps_never_overshoot_by_more_than_the_smallest_step() {
        assert_eq!(delay_step_for(Duration::from_millis(10)), 250);
        assert_eq!(delay_step_for(Duration::from_millis(999)), 250);
        assert_eq!(delay_step_for(Duration::from_secs(1)), 1_000);
        assert_eq!(delay_step_for(Duration::from_secs(7)), 5_000);
        assert_eq!(delay_step_for(Duration::from_secs(36_000)), 3_600_000);
    }

    #[test]
    fn nodes_are_tried_in_rotation_from_the_first_given() {
        assert_eq!(node_order(0, 3).collect::<Vec<_>>(), [0, 1, 2]);
        assert_eq!(node_order(2, 3).collect::<Vec<_>>(), [2, 0, 1]);
        assert_eq!(node_order(0, 1).collect::<Vec<_>>(), [0]);
        assert_eq!(node_order(5, 0).count(), 0);
    }
}
