//! The worker: consumes the queues of the agents it serves, runs each job (admission, the
//! provider call, retries), stores the run in Redis and hands the terminal event to the
//! webhook queue, which it also consumes. Replicas share nothing but RabbitMQ and Redis.

mod acks;
mod cache;
mod circuit;
mod consumer;
mod control;
mod delivery;
mod fair;
mod limits;
mod provider;
mod provider_limits;
mod quota;
mod retry;
mod run;
mod starts_first;
mod tools;
mod webhook;

pub mod cli;

/// The worker's readers of what a provider sends, for the fuzz targets in `fuzz/` (their
/// modules are private). Not an API: nothing but the fuzz targets uses it.
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::provider::parse_completion;
    pub use crate::provider_limits::ProviderLimits;
    pub use crate::retry::parse_retry_after;
}

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use agentfleet_agent::AgentDefinition;
use agentfleet_common::broker::Broker;
use agentfleet_common::config::{AgentConfig, Config, Secrets};
use agentfleet_common::metrics::Metrics;
use agentfleet_common::ops::{self, Dependencies};
use agentfleet_common::outbound::{ExtraRoots, Outbound};
use agentfleet_common::privacy::Privacy;
use agentfleet_common::shutdown::{Deadline, Grace};
use agentfleet_common::store::{JobStore, Redis, StoreError};

use agentfleet_common::live::Live;
use agentfleet_common::rate::LocalLimiter;
use consumer::{Consumption, Source};
use limits::{AgentLimits, LimitsConfig};
use provider::Provider;

/// Largest provider or webhook response body read.
const MAX_RESPONSE_BYTES: usize = 8 * 1024 * 1024;

/// State shared by every task of a worker replica.
pub(crate) struct Shared {
    config: Config,
    secrets: Secrets,
    store: JobStore,
    broker: Broker,
    outbound: Outbound,
    metrics: Arc<Metrics>,
    /// Cancelled when shutdown begins: deliveries still waiting for a call slot go back.
    draining: CancellationToken,
    /// Cancelled when the grace period is over: runs still going give their message back.
    hard_stop: CancellationToken,
    /// Runs in progress here, for cancellation broadcasts.
    running: Arc<control::Running>,
    /// This replica's identity in leases and consumer tags.
    instance: String,
    /// Every configured HTTP tool, by name.
    tools: std::collections::HashMap<String, tools::HttpTool>,
    /// Tenants' runs at once, fleet-wide.
    running_quota: quota::RunningQuota,
    /// The fleet-wide spending ledgers (tenants' daily and agents' monthly budgets).
    ledgers: agentfleet_common::budget::Ledgers,
    /// Webhook deliveries per receiver host on this replica (`webhooks.per_host_rate`).
    webhook_hosts: Live<Option<LocalLimiter>>,
    /// Room for inline first webhook attempts (`webhooks.inline_concurrency`).
    inline_webhooks: Arc<tokio::sync::Semaphore>,
    /// The configuration limits, quotas and budgets are read from: `config` as loaded,
    /// replaced by [`Reloader::apply`].
    policy: Live<Config>,
    /// Whether payloads may be logged (masked), and whose results are masked.
    privacy: Live<Privacy>,
    /// Runs beginning on this replica, which a crowd of endings yields to.
    starts_first: starts_first::StartsFirst,
}

/// One served agent: its config, what the agent runtime knows of it, provider endpoint and
/// limits.
pub(crate) struct AgentRuntime {
    name: String,
    config: AgentConfig,
    definition: AgentDefinition,
    provider: Provider,
    limits: AgentLimits,
    circuit: Arc<circuit::Circuit>,
    /// The agent's response cache, when configured.
    cache: Option<cache::ResponseCache>,
    /// Room for inline first webhook attempts of this agent's runs: the deliveries its window
    /// holds beyond its call slots (`delivery_window − concurrency`, at least one). A run in
    /// its attempt holds its delivery, so within this room hanging receivers never leave the
    /// call slots without deliveries to run.
    inline_room: Arc<tokio::sync::Semaphore>,
}

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("{0}")]
    Config(#[from] agentfleet_common::config::ConfigError),
    #[error("tool `{tool}`: {error}")]
    Tool {
        tool: String,
        error: agentfleet_common::tool_url::TemplateError,
    },
    #[error("redis client: {0}")]
    Store(#[from] StoreError),
    #[error("metrics server: {0}")]
    Serve(#[from] std::io::Error),
    #[error("worker.extra_ca_file `{path}`: {error}")]
    ExtraRoots { path: String, error: String },
}

pub struct Worker {
    shared: Arc<Shared>,
    agents: BTreeMap<String, Arc<AgentRuntime>>,
    deps: Dependencies,
}

impl Worker {
    pub fn new(
        config: Config,
        secrets: Secrets,
        metrics: Arc<Metrics>,
    ) -> Result<Self, WorkerError> {
        let names = config.names();
        let redis =
            Redis::connect(&config.redis)?.counting_round_trips(metrics.redis_round_trips.clone());
        let store = JobStore::new(
            redis.clone(),
            names.clone(),
            config.redis.result_ttl.as_secs(),
        );
        let served = config.served_agents();
        let job_queues = served.iter().flat_map(|a| config.job_queues(a)).collect();
        let broker = Broker::new(&config.amqp, names.clone(), job_queues, "agentfleet-worker");
        let roots = extra_roots(&config)?;
        let agents = build_agents(&config, &secrets, &redis, &metrics, &roots)?;
        let tools = build_tools(&config, &secrets)?;
        let running_quota = quota::RunningQuota::new(&config, redis.clone());
        let ledgers = agentfleet_common::budget::Ledgers::new(redis.clone(), names.clone());
        let webhook_hosts = Live::new(config.webhooks.per_host_rate.map(LocalLimiter::new));
        let inline_webhooks = Arc::new(tokio::sync::Semaphore::new(usize::from(
            config.webhooks.inline_concurrency,
        )));
        let policy = Live::new(config.clone());
        let privacy = Live::new(config.privacy()?);
        let deps = Dependencies {
            broker: broker.clone(),
            redis,
            metrics: metrics.clone(),
        };
        let shared = Arc::new(Shared {
            outbound: Outbound::trusting(
                config.webhooks.allow_private_networks,
                MAX_RESPONSE_BYTES,
                &config.webhooks.hosts,
                &roots,
            ),
            config,
            secrets,
            store,
            broker,
            metrics,
            draining: CancellationToken::new(),
            hard_stop: CancellationToken::new(),
            running: Arc::default(),
            instance: uuid::Uuid::now_v7().simple().to_string(),
            tools,
            running_quota,
            ledgers,
            webhook_hosts,
            inline_webhooks,
            policy,
            privacy,
            starts_first: starts_first::StartsFirst::default(),
        });
        Ok(Self {
            shared,
            agents,
            deps,
        })
    }

    /// A handle that applies a reloaded configuration's limits to this worker while it runs.
    pub fn reloader(&self) -> Reloader {
        Reloader {
            shared: self.shared.clone(),
            agents: self.agents.clone(),
        }
    }

    /// Runs until `shutdown` is cancelled, then stops within `worker.shutdown_grace_secs` (a
    /// [`Grace`] from the signal): it stops consuming and lets runs in flight finish until the
    /// grace period's work part ends; runs still going then are interrupted and give their
    /// messages back within half the closing part; the consumers' channels and the broker
    /// connection are closed by the end (which requeues every delivery not acked).
    pub async fn run(
        self,
        metrics_listener: TcpListener,
        shutdown: CancellationToken,
    ) -> Result<(), WorkerError> {
        let ops_stop = CancellationToken::new();
        let ops_server = tokio::spawn({
            let router = ops::router(self.deps.clone());
            let stop = ops_stop.clone();
            async move {
                axum::serve(metrics_listener, router)
                    .with_graceful_shutdown(stop.cancelled_owned())
                    .await
            }
        });

        let tracker = TaskTracker::new();
        let loops = self.start_consuming(&tracker, &shutdown);
        tracing::info!(agents = ?self.agents.keys().collect::<Vec<_>>(), instance = %self.shared.instance, "worker started");

        shutdown.cancelled().await;
        let config = &self.shared.config;
        let grace = Grace::start(config.worker.shutdown_grace, config.amqp.connect_timeout);
        self.shared.draining.cancel();
        let channels = stop_consuming(loops, grace.work).await;
        tracker.close();
        tracing::info!(
            in_flight = tracker.len(),
            grace = ?config.worker.shutdown_grace,
            "stopped consuming; draining runs"
        );
        if grace.work.bound(tracker.wait()).await.is_none() {
            tracing::warn!(
                in_flight = tracker.len(),
                "grace period over; returning unfinished runs to the queue"
            );
            self.shared.hard_stop.cancel();
            if grace.give_back.bound(tracker.wait()).await.is_none() {
                // Their messages are unacked: closing the connection requeues them.
                tracing::warn!(
                    in_flight = tracker.len(),
                    "runs still giving back at the end of the grace period left"
                );
            }
        }
        self.shared
            .broker
            .close(channels, grace.end.remaining())
            .await;
        ops_stop.cancel();
        let mut ops_server = ops_server;
        match grace.end.bound(&mut ops_server).await {
            Some(Ok(result)) => result?,
            Some(Err(err)) => tracing::error!(error = %err, "metrics server task failed"),
            None => ops_server.abort(),
        }
        tracing::info!("worker stopped");
        Ok(())
    }
}

/// Waits for the consume loops and the control listener to stop, until `deadline` (a loop
/// still waiting on the broker then is dropped); answers their channels, which runs in flight
/// still ack on.
async fn stop_consuming(
    mut loops: tokio::task::JoinSet<Option<lapin::Channel>>,
    deadline: Deadline,
) -> Vec<lapin::Channel> {
    let mut channels = Vec::new();
    let joined = deadline.bound(async {
        while let Some(joined) = loops.join_next().await {
            if let Ok(Some(channel)) = joined {
                channels.push(channel);
            }
        }
    });
    if joined.await.is_none() {
        tracing::warn!(
            loops = loops.len(),
            "consumers still waiting on the broker at the end of the grace period dropped"
        );
        loops.abort_all();
    }
    channels
}

impl Worker {
    /// Starts the consume loops: each agent's queues (one per tenant, and its shared one) and
    /// the webhook queue, each handler tracked by `tracker`; and the control listener.
    fn start_consuming(
        &self,
        tracker: &TaskTracker,
        shutdown: &CancellationToken,
    ) -> tokio::task::JoinSet<Option<lapin::Channel>> {
        let shared = &self.shared;
        let mut loops = tokio::task::JoinSet::new();
        let broker = || shared.broker.clone();
        for (name, agent) in &self.agents {
            let sources = shared.config.job_queues(name).into_iter().map(|q| Source {
                queue: q.queue,
                weight: q.weight,
            });
            let consumption = Consumption::new(
                sources.collect(),
                agent.config.delivery_window(),
                format!("{}.{name}", shared.instance),
                shared.metrics.ack_frames.clone(),
            );
            let (shared, agent) = (shared.clone(), agent.clone());
            loops.spawn(consumer::consume(
                broker(),
                consumption,
                tracker.clone(),
                shutdown.clone(),
                move |handed| run::handle_job(shared.clone(), agent.clone(), handed),
            ));
        }
        let webhooks = Consumption::new(
            vec![Source {
                queue: shared.broker.names().webhook_queue(),
                weight: 1,
            }],
            shared.config.webhooks.concurrency,
            format!("{}.webhooks", shared.instance),
            shared.metrics.ack_frames.clone(),
        );
        let for_webhooks = shared.clone();
        loops.spawn(consumer::consume(
            broker(),
            webhooks,
            tracker.clone(),
            shutdown.clone(),
            move |handed: consumer::Handed| {
                webhook::handle_webhook(
                    for_webhooks.clone(),
                    handed.delivery,
                    handed.acks,
                    handed.slot,
                )
            },
        ));
        loops.spawn(control::listen(
            shared.broker.clone(),
            shared.running.clone(),
            shutdown.clone(),
        ));
        loops
    }
}

/// Applies a reloaded configuration (SIGHUP) to a running worker: see
/// [`agentfleet_common::config::check_reloadable`] for what changes and what waits for a
/// restart.
#[derive(Clone)]
pub struct Reloader {
    shared: Arc<Shared>,
    agents: BTreeMap<String, Arc<AgentRuntime>>,
}

impl Reloader {
    pub fn apply(&self, new: Config) -> Result<(), agentfleet_common::config::ConfigError> {
        let shared = &self.shared;
        agentfleet_common::config::check_reloadable(&shared.policy.get(), &new)?;
        let privacy = new.privacy()?;
        let names = new.names();
        for (name, runtime) in &self.agents {
            if let Some(agent) = new.agents.get(name) {
                runtime
                    .limits
                    .reload(limits_config(&new, name, agent, &names));
            }
        }
        shared.running_quota.reload(&new);
        shared
            .webhook_hosts
            .set(new.webhooks.per_host_rate.map(LocalLimiter::new));
        shared.policy.set(new);
        shared.privacy.set(privacy);
        tracing::info!("configuration reloaded: limits, quotas, budgets and privacy applied");
        Ok(())
    }
}

/// The certificate authorities of `worker.extra_ca_file`, if set: read and checked at start,
/// so a bad file stops the replica with its path rather than failing every call.
fn extra_roots(config: &Config) -> Result<ExtraRoots, WorkerError> {
    let Some(path) = &config.worker.extra_ca_file else {
        return Ok(ExtraRoots::default());
    };
    let failed = |error: String| WorkerError::ExtraRoots {
        path: path.display().to_string(),
        error,
    };
    let pem = std::fs::read(path).map_err(|e| failed(e.to_string()))?;
    ExtraRoots::from_pem(&pem).map_err(|e| failed(e.to_string()))
}

/// The runtime of each agent this replica serves: provider, limits, circuit, cache.
fn build_agents(
    config: &Config,
    secrets: &Secrets,
    redis: &Redis,
    metrics: &Arc<Metrics>,
    roots: &ExtraRoots,
) -> Result<BTreeMap<String, Arc<AgentRuntime>>, WorkerError> {
    let names = config.names();
    let circuits = circuit::Circuits::default();
    let mut agents = BTreeMap::new();
    for name in &config.served_agents() {
        let Some(agent) = config.agents.get(name) else {
            continue;
        };
        let provider = Provider::new(agent, secrets.provider_keys.get(name), roots);
        let circuit = circuits.get(
            provider.endpoint().as_str(),
            &endpoint_label(provider.endpoint()),
            &agent.circuit_breaker,
            metrics,
        );
        let runtime = AgentRuntime {
            name: name.clone(),
            config: agent.clone(),
            definition: config.agent_definition(name)?,
            provider,
            limits: AgentLimits::new(limits_config(config, name, agent, &names), redis.clone()),
            circuit,
            cache: agent.cache.map(|cache| {
                cache::ResponseCache::new(name, cache.ttl, names.clone(), redis.clone())
            }),
            inline_room: Arc::new(tokio::sync::Semaphore::new(usize::from(
                agent
                    .delivery_window()
                    .saturating_sub(agent.concurrency)
                    .max(1),
            ))),
        };
        agents.insert(name.clone(), Arc::new(runtime));
    }
    Ok(agents)
}

/// What an agent's limits are built from in `config`.
fn limits_config<'a>(
    config: &'a Config,
    name: &'a str,
    agent: &'a AgentConfig,
    names: &'a agentfleet_common::naming::Names,
) -> LimitsConfig<'a> {
    LimitsConfig {
        name,
        agent,
        pool: agent
            .pool
            .as_deref()
            .and_then(|pool| config.pools.get_key_value(pool))
            .map(|(pool, limit)| (pool.as_str(), limit)),
        names,
    }
}

/// `scheme://host[:port]` of a provider endpoint: the circuit breaker's label.
fn endpoint_label(endpoint: &url::Url) -> String {
    let port = endpoint.port().map(|p| format!(":{p}")).unwrap_or_default();
    format!(
        "{}://{}{port}",
        endpoint.scheme(),
        endpoint.host_str().unwrap_or_default()
    )
}

fn build_tools(
    config: &Config,
    secrets: &Secrets,
) -> Result<std::collections::HashMap<String, tools::HttpTool>, WorkerError> {
    config
        .tools
        .iter()
        .map(|(name, tool)| {
            let headers = secrets.tool_headers.get(name).cloned().unwrap_or_default();
            tools::HttpTool::new(tool, headers)
                .map(|built| (name.clone(), built))
                .map_err(|error| WorkerError::Tool {
                    tool: name.clone(),
                    error,
                })
        })
        .collect()
}
