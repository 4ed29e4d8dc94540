//! The dispatcher: authenticates a tenant, validates a job, stores its record, publishes it to
//! RabbitMQ with a confirm, and answers `202` — only once both the record and the message
//! are durable. It holds no job state of its own, so any number of replicas can run.

mod audit;
mod auth;
mod backlog;
pub mod cli;
mod depths;
mod jobs;
mod layers;
mod openapi;
mod problem;
mod publish;
mod quotas;
pub mod request;

use std::collections::HashMap;
use std::future::IntoFuture as _;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use agentfleet_agent::InputSchema;
use agentfleet_common::broker::Broker;
use agentfleet_common::config::Config;
use agentfleet_common::live::Live;
use agentfleet_common::metrics::Metrics;
use agentfleet_common::ops::{self, Dependencies};
use agentfleet_common::outbound::Outbound;
use agentfleet_common::privacy::Privacy;
use agentfleet_common::shutdown::Grace;
use agentfleet_common::store::{JobStore, Redis, StoreError};

pub use problem::ApiError;

/// Shared, cheap-clone state of the HTTP handlers.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

struct Inner {
    config: Config,
    tenants: auth::Tenants,
    store: JobStore,
    broker: Broker,
    /// Accepted jobs onto their queues (one message each, or batched: `dispatcher.batch_jobs`).
    jobs: publish::JobPublisher,
    metrics: Arc<Metrics>,
    outbound: Outbound,
    queue_depths: depths::QueueDepths,
    /// Rebuilt from a reloaded configuration, as is `queue_depths`' policy.
    quotas: Live<quotas::Quotas>,
    /// The configuration limits, quotas and budgets were last taken from.
    policy: Live<Config>,
    redis: Redis,
    /// The agents' `input_schema`s, compiled once.
    input_schemas: HashMap<String, InputSchema>,
    /// Which agents' results are masked (their steps too, as read through the API).
    privacy: Live<Privacy>,
}

#[derive(Debug, thiserror::Error)]
pub enum DispatcherError {
    #[error("redis client: {0}")]
    Store(#[from] StoreError),
    #[error("http server: {0}")]
    Serve(#[from] std::io::Error),
    #[error("agents.{agent}.input_schema: {reason}")]
    InputSchema { agent: String, reason: String },
    #[error("privacy: {0}")]
    Privacy(agentfleet_common::config::ConfigError),
}

/// A dispatcher ready to serve: built from the config, not yet listening.
pub struct Dispatcher {
    state: AppState,
    deps: Dependencies,
}

impl Dispatcher {
    pub fn new(config: Config, metrics: Arc<Metrics>) -> Result<Self, DispatcherError> {
        let names = config.names();
        let redis =
            Redis::connect(&config.redis)?.counting_round_trips(metrics.redis_round_trips.clone());
        let store = JobStore::new(
            redis.clone(),
            names.clone(),
            config.redis.result_ttl.as_secs(),
        );
        let job_queues = config
            .agents
            .keys()
            .flat_map(|a| config.job_queues(a))
            .collect();
        let broker =
            Broker::new_fail_fast(&config.amqp, names, job_queues, "agentfleet-dispatcher");
        let deps = Dependencies {
            broker: broker.clone(),
            redis: redis.clone(),
            metrics: metrics.clone(),
        };
        // Webhook URLs are only checked here; responses are never read, so no size cap matters.
        let outbound = Outbound::new(
            config.webhooks.allow_private_networks,
            0,
            &config.webhooks.hosts,
        );
        let input_schemas = compile_input_schemas(&config)?;
        let privacy = config.privacy().map_err(DispatcherError::Privacy)?;
        let jobs = publish::JobPublisher::new(broker.clone(), &config);
        let state = AppState {
            inner: Arc::new(Inner {
                input_schemas,
                privacy: Live::new(privacy),
                tenants: auth::Tenants::new(&config.tenants),
                queue_depths: depths::QueueDepths::new(
                    &config,
                    &jobs,
                    redis.clone(),
                    metrics.clone(),
                ),
                quotas: Live::new(quotas::Quotas::new(&config, redis.clone())),
                policy: Live::new(config.clone()),
                redis: redis.clone(),
                jobs,
                config,
                store,
                broker,
                metrics,
                outbound,
            }),
        };
        Ok(Self { state, deps })
    }

    /// A handle that applies a reloaded configuration's limits to this dispatcher while it
    /// serves.
    pub fn reloader(&self) -> Reloader {
        Reloader {
            state: self.state.clone(),
        }
    }

    /// The API under load shedding and a timeout (inner layers first: the body limit, the
    /// timeout, then the shedding, so a shed request never starts a clock); the operational
    /// endpoints beside it, outside both; axum's own 404/405 as problems; metrics and the
    /// request id around everything.
    pub fn router(&self) -> Router {
        let config = &self.state.inner.config.dispatcher;
        let max_body = config.max_body_bytes;
        let slots = Arc::new(Semaphore::new(config.max_concurrent_requests as usize));
        // Registered through their annotations, so every route is in the document.
        let (api, routes) = OpenApiRouter::new()
            .routes(routes!(jobs::submit))
            .routes(routes!(jobs::get, jobs::cancel))
            .routes(routes!(jobs::steps))
            .routes(routes!(jobs::agents))
            .split_for_parts();
        let document = openapi::render(routes, &self.state.inner.config);
        let api = api
            // The handler enforces the limit itself (for a problem+json 413); this only keeps
            // axum's default 2 MB cap from applying first.
            .layer(DefaultBodyLimit::max(max_body.saturating_add(1)))
            .layer(middleware::from_fn_with_state(
                config.request_timeout,
                layers::time_out,
            ))
            // Outside the timeout, so a request that timed out is recorded too.
            .layer(middleware::from_fn_with_state(
                self.audit_trail(),
                audit::record,
            ))
            .layer(middleware::from_fn_with_state(slots, layers::shed_load))
            .with_state(self.state.clone());
        let contract = Router::new()
            .route("/openapi.json", get(openapi::document))
            .with_state(Bytes::from(document));
        api.merge(contract)
            .merge(ops::router(self.deps.clone()))
            // Before the layers below: these replace fallbacks, and must be wrapped by them.
            .fallback(layers::not_found)
            .method_not_allowed_fallback(layers::method_not_allowed)
            .layer(middleware::from_fn_with_state(
                self.state.inner.metrics.clone(),
                record_http,
            ))
            .layer(middleware::from_fn(layers::with_request_id))
    }

    fn audit_trail(&self) -> audit::AuditTrail {
        let inner = &self.state.inner;
        audit::AuditTrail::new(
            inner.redis.clone(),
            inner.config.names(),
            inner.config.dispatcher.audit,
        )
    }

    /// Serves on `listener` until `shutdown` is cancelled, then stops within
    /// `dispatcher.shutdown_grace_secs` (a [`Grace`] from the signal): requests in flight are
    /// answered until its work part ends, and connections still open then are dropped; the
    /// queue-depth poller stops; the broker connection is closed by the end.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: CancellationToken,
    ) -> Result<(), DispatcherError> {
        // Connect early so the first request does not pay for it; an outage here is fine,
        // `/readyz` reports it and publishing reconnects on demand.
        if let Err(err) = self.state.inner.broker.connection().await {
            tracing::warn!(error = %err, "broker not reachable at start; will retry on demand");
        }
        let router = self.router();
        let inner = &self.state.inner;
        let poller = tokio::spawn(
            inner
                .queue_depths
                .clone()
                .poll(inner.broker.clone(), shutdown.clone()),
        );
        let addr = listener.local_addr()?;
        // The runtime's own count, not the setting's: what the replica really runs on.
        let runtime_threads = tokio::runtime::Handle::current().metrics().num_workers();
        tracing::info!(%addr, runtime_threads, "dispatcher listening");
        // With the peer's address, for the audit trail.
        let service = router.into_make_service_with_connect_info::<std::net::SocketAddr>();
        let mut server = std::pin::pin!(axum::serve(listener, service)
            .with_graceful_shutdown(shutdown.clone().cancelled_owned())
            .into_future());
        // Only a failing listener ends the server before the signal.
        let ended = tokio::select! {
            result = &mut server => Some(result),
            () = shutdown.cancelled() => None,
        };
        let grace = Grace::start(
            inner.config.dispatcher.shutdown_grace,
            inner.config.amqp.connect_timeout,
        );
        let served = match ended {
            Some(result) => result,
            None => grace.work.bound(server).await.unwrap_or_else(|| {
                // axum waits for every connection, a stalled client's too.
                tracing::warn!("requests still in flight at the end of the grace period dropped");
                Ok(())
            }),
        };
        // Its channel is closed before the connection (see `Broker::close`).
        let mut poller = poller;
        if grace.end.bound(&mut poller).await.is_none() {
            poller.abort();
        }
        inner.broker.close(Vec::new(), grace.end.remaining()).await;
        tracing::info!("dispatcher stopped");
        Ok(served?)
    }
}

/// Applies a reloaded configuration (SIGHUP) to a serving dispatcher: tenants' quotas and
/// budgets, agents' `max_queue_depth`, `dispatcher.per_key_rate`, `privacy`. See
/// [`agentfleet_common::config::check_reloadable`] for what waits for a restart.
#[derive(Clone)]
pub struct Reloader {
    state: AppState,
}

impl Reloader {
    pub fn apply(&self, new: Config) -> Result<(), agentfleet_common::config::ConfigError> {
        let inner = &self.state.inner;
        agentfleet_common::config::check_reloadable(&inner.policy.get(), &new)?;
        inner.privacy.set(new.privacy()?);
        inner
            .quotas
            .set(quotas::Quotas::new(&new, inner.redis.clone()));
        inner.queue_depths.reload(&new);
        inner.policy.set(new);
        tracing::info!("configuration reloaded: quotas and budgets applied");
        Ok(())
    }
}

/// Config validation compiled them already; this keeps the compiled form.
fn compile_input_schemas(config: &Config) -> Result<HashMap<String, InputSchema>, DispatcherError> {
    let mut schemas = HashMap::new();
    for (agent, settings) in &config.agents {
        if let Some(schema) = &settings.input_schema {
            let compiled =
                InputSchema::new(schema.clone()).map_err(|e| DispatcherError::InputSchema {
                    agent: agent.clone(),
                    reason: e.to_string(),
                })?;
            schemas.insert(agent.clone(), compiled);
        }
    }
    Ok(schemas)
}

async fn record_http(State(metrics): State<Arc<Metrics>>, req: Request, next: Next) -> Response {
    // A clone of the matched path shares its string; no copy per request.
    let route = req.extensions().get::<MatchedPath>().cloned();
    let route = route.as_ref().map_or("unmatched", MatchedPath::as_str);
    let started = Instant::now();
    let response = next.run(req).await;
    metrics
        .http_request_duration
        .with_label_values(&[route])
        .observe(started.elapsed().as_secs_f64());
    metrics
        .http_requests
        .with_label_values(&[route, response.status().as_str()])
        .inc();
    response
}
