//! Test harness: [`TestApp::spawn`] starts the stub LLM, a verifying webhook receiver, the
//! dispatcher and N workers on port 0 against the real RabbitMQ and Redis on localhost, under
//! a prefix unique to the test, and returns typed helpers. Dropping the app stops everything
//! and deletes every queue, exchange and key under its prefix.
//!
//! RabbitMQ and Redis must be running (`scripts/test.sh` makes sure); a test fails loudly
//! rather than skipping when they are not.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub mod logs;
pub mod proxy;
pub mod rabbit_cluster;
pub mod redis_cluster;
pub mod redis_sentinel;
pub mod resubmit;
pub mod services;

use agentfleet_common::broker::DELAY_STEPS_MS;
use agentfleet_common::config::{Config, HttpVersion};
use agentfleet_common::metrics::Metrics;
use agentfleet_common::signing::WebhookSecret;
use agentfleet_common::wire::JobStatus;
use agentfleet_dispatcher::Dispatcher;
use agentfleet_stub::llm::{Behavior, StubLlm};
use agentfleet_stub::receiver::Receiver;
use agentfleet_stub::tools::ToolServer;
use agentfleet_worker::Worker;

pub use agentfleet_stub::llm::Fault;

pub const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
pub const REDIS_URL: &str = "redis://127.0.0.1:6379/0";

/// One agent of a test deployment.
#[derive(Debug, Clone)]
pub struct AgentSpec {
    pub name: String,
    pub concurrency: u16,
    pub requests_per_minute: Option<u32>,
    pub tokens_per_minute: Option<u32>,
    pub timeout_secs: u64,
    pub retry_attempts: u32,
    pub retry_max_delay_secs: u64,
    pub request_timeout_secs: Option<u64>,
    pub max_queue_depth: Option<u32>,
    pub circuit_failure_threshold: u32,
    pub circuit_cooldown_secs: u64,
    pub http_version: HttpVersion,
    /// `http2_streams_per_connection`; the default (100) when absent.
    pub http2_streams_per_connection: Option<u32>,
    /// Tools (of [`TOOLS_YAML`]) the agent may call.
    pub tools: Vec<&'static str>,
    /// The agent's `limits:` as a YAML flow map, e.g. `{ max_turns: 3 }`.
    pub limits: Option<String>,
    /// The agent's `output_schema:` as a YAML flow map.
    pub output_schema: Option<String>,
    /// The agent's `input_schema:` as a YAML flow map.
    pub input_schema: Option<String>,
    /// USD per million input and output tokens of the agent's model.
    pub price: Option<(f64, f64)>,
    /// The provider pool (of [`AppOptions::pools`]) the agent shares limits with.
    pub pool: Option<String>,
    /// `fairness:` (`tenants`, the default, or `fifo`).
    pub fairness: Option<&'static str>,
    /// `cache: { ttl_secs }`: the agent's response cache.
    pub cache_ttl_secs: Option<u64>,
    /// `mask_output:`, overriding `privacy.mask_output` for this agent.
    pub mask_output: Option<bool>,
}

impl AgentSpec {
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            concurrency: 16,
            requests_per_minute: None,
            tokens_per_minute: None,
            timeout_secs: 10,
            retry_attempts: 3,
            retry_max_delay_secs: 1,
            request_timeout_secs: None,
            max_queue_depth: None,
            circuit_failure_threshold: 5,
            circuit_cooldown_secs: 30,
            http_version: HttpVersion::Auto,
            http2_streams_per_connection: None,
            tools: Vec::new(),
            limits: None,
            output_schema: None,
            input_schema: None,
            price: None,
            pool: None,
            fairness: None,
            cache_ttl_secs: None,
            mask_output: None,
        }
    }

    /// The model name the agent sends: unique per agent, so the stub counts them apart.
    pub fn model(&self) -> String {
        format!("model-{}", self.name)
    }
}

#[derive(Debug, Clone)]
pub struct AppOptions {
    pub agents: Vec<AgentSpec>,
    pub workers: usize,
    pub behavior: Behavior,
    pub shutdown_grace_secs: u64,
    pub webhook_retry_schedule_secs: Vec<u64>,
    pub allow_private_webhooks: bool,
    /// Where the app's processes reach RabbitMQ and Redis (a proxy, a private server).
    pub amqp_url: String,
    /// A cluster's nodes (`amqp.urls`), in the order the app tries them; when not empty it
    /// replaces `amqp_url`.
    pub amqp_urls: Vec<String>,
    /// `amqp.quorum_initial_group_size`.
    pub quorum_initial_group_size: Option<u32>,
    pub redis_url: String,
    /// Where the harness itself inspects and cleans up: the real services behind any proxy.
    pub admin_amqp_url: String,
    pub admin_redis_url: String,
    /// A Redis Cluster's masters: the harness looks for and deletes the app's keys on each
    /// (a key lives on one master only) instead of on `admin_redis_url`.
    pub admin_redis_masters: Vec<String>,
    /// The app's `redis:` connection fields as YAML flow-map fields (a `sentinel: {...}`,
    /// `min_replicas_acked`...), in place of `url: redis_url`.
    pub redis_connection: Option<String>,
    pub lease_secs: u64,
    /// Provider pools: name and requests per minute.
    pub pools: Vec<(String, u32)>,
    /// `worker.max_limit_hold_ms`: longer rate-limit waits leave the worker.
    pub max_limit_hold_ms: u64,
    /// Tenants besides `acme` and `globex`, by id.
    pub extra_tenants: Vec<&'static str>,
    /// More fields of a tenant's entry, as YAML flow-map fields: `("acme", "weight: 2")`.
    pub tenant_settings: Vec<(&'static str, String)>,
    /// `dispatcher.per_key_rate` as (per second, burst).
    pub per_key_rate: Option<(u32, u32)>,
    /// `dispatcher.max_body_bytes`: small by default, so a test can reach it cheaply.
    pub max_body_bytes: usize,
    /// `dispatcher.batch_jobs` (on, as shipped).
    pub batch_jobs: bool,
    /// `webhooks.per_host_rate` as (per second, burst).
    pub webhook_per_host_rate: Option<(u32, u32)>,
    /// `webhooks.inline_timeout_ms` and `inline_concurrency`; the defaults when absent.
    pub webhook_inline: Option<(u64, u16)>,
    /// `worker.budget_recheck_secs`.
    pub budget_recheck_secs: u64,
    /// `webhooks.hosts`: static entries for webhook host names.
    pub webhook_hosts: Vec<(&'static str, &'static str)>,
    /// `dispatcher.request_timeout_ms`; the default (10 s) when absent.
    pub request_timeout_ms: Option<u64>,
    /// `dispatcher.max_concurrent_requests`; the default (1024) when absent.
    pub max_concurrent_requests: Option<u32>,
    /// `privacy:` as a YAML flow map; the defaults when absent.
    pub privacy: Option<String>,
    /// Concurrent HTTP/2 streams the stub LLM allows on one connection.
    pub provider_http2_streams: u32,
    /// The stub LLM serves https (ALPN: HTTP/2, HTTP/1.1) with a certificate of the test CA
    /// (`fixtures/tls`), which the workers trust through `worker.extra_ca_file`.
    pub provider_tls: bool,
    /// With `provider_tls`: the stub offers HTTP/2 in ALPN (else HTTP/1.1 alone, as a server
    /// without HTTP/2).
    pub provider_tls_offers_http2: bool,
}

impl Default for AppOptions {
    fn default() -> Self {
        Self {
            agents: vec![AgentSpec::new("summarize")],
            workers: 2,
            behavior: Behavior::default(),
            shutdown_grace_secs: 10,
            webhook_retry_schedule_secs: vec![1, 1, 2],
            allow_private_webhooks: true,
            amqp_url: AMQP_URL.to_owned(),
            amqp_urls: Vec::new(),
            quorum_initial_group_size: None,
            redis_url: REDIS_URL.to_owned(),
            admin_amqp_url: AMQP_URL.to_owned(),
            admin_redis_url: REDIS_URL.to_owned(),
            admin_redis_masters: Vec::new(),
            redis_connection: None,
            lease_secs: 3,
            pools: Vec::new(),
            max_limit_hold_ms: 30_000,
            extra_tenants: Vec::new(),
            tenant_settings: Vec::new(),
            per_key_rate: None,
            max_body_bytes: 4096,
            batch_jobs: true,
            webhook_per_host_rate: None,
            webhook_inline: None,
            budget_recheck_secs: 60,
            webhook_hosts: Vec::new(),
            request_timeout_ms: None,
            max_concurrent_requests: None,
            privacy: None,
            provider_http2_streams: agentfleet_stub::MAX_HTTP2_STREAMS,
            provider_tls: false,
            provider_tls_offers_http2: true,
        }
    }
}

/// A tenant's credentials as a client holds them.
#[derive(Debug, Clone)]
pub struct TenantKeys {
    pub id: String,
    pub api_key: String,
    pub webhook_secret: String,
}

struct RunningWorker {
    stop: CancellationToken,
    task: JoinHandle<Result<(), agentfleet_worker::WorkerError>>,
    metrics: Arc<Metrics>,
    metrics_addr: SocketAddr,
}

pub struct TestApp {
    pub prefix: String,
    /// What the harness itself uses to inspect and clean up (never a proxy).
    pub amqp_url: String,
    pub redis_url: String,
    /// Where the app's keys are: `redis_url`, or each master of a cluster.
    pub redis_masters: Vec<String>,
    pub config: Config,
    pub config_yaml: String,
    pub dispatcher_addr: SocketAddr,
    pub dispatcher_metrics: Arc<Metrics>,
    /// Applies a changed configuration to the running dispatcher (what SIGHUP does).
    pub dispatcher_reloader: agentfleet_dispatcher::Reloader,
    pub llm: StubLlm,
    pub llm_addr: SocketAddr,
    pub receiver: Receiver,
    pub receiver_addr: SocketAddr,
    /// The HTTP tool server every app's tools point at; it counts calls.
    pub tools: ToolServer,
    pub acme: TenantKeys,
    pub globex: TenantKeys,
    /// Every tenant, `acme` and `globex` first.
    pub tenants: Vec<TenantKeys>,
    pub http: reqwest::Client,
    dispatcher_stop: CancellationToken,
    workers: Vec<Option<RunningWorker>>,
    /// Replacements for tenants' secret variables (see [`TestApp::set_webhook_secrets`]).
    signing_secrets: HashMap<String, String>,
    children: Vec<std::process::Child>,
    temp_files: Vec<PathBuf>,
}

impl TestApp {
    pub async fn spawn(options: AppOptions) -> anyhow::Result<Self> {
        let prefix = format!("aftest-{}", uuid::Uuid::now_v7().simple());
        let llm = StubLlm::new(options.behavior.clone());
        let serving = agentfleet_stub::Serving {
            max_http2_streams: options.provider_http2_streams,
            tls: options
                .provider_tls
                .then(|| test_tls(options.provider_tls_offers_http2))
                .transpose()?,
        };
        let llm_addr = agentfleet_stub::spawn_serving(bind().await?, llm.router(), serving);

        let acme = tenant("acme");
        let globex = tenant("globex");
        let receiver = Receiver::new(Some(WebhookSecret::parse(&acme.webhook_secret)?));
        let receiver_addr = agentfleet_stub::spawn_router(bind().await?, receiver.router());

        let tools = ToolServer::new();
        let tools_addr = agentfleet_stub::spawn_router(bind().await?, tools.router());
        let endpoints = Endpoints {
            llm: llm_addr,
            llm_scheme: if options.provider_tls {
                "https"
            } else {
                "http"
            },
            tools: tools_addr,
        };
        let mut tenants = vec![acme.clone(), globex.clone()];
        tenants.extend(options.extra_tenants.iter().map(|id| tenant(id)));
        let config_yaml = render_config(
            &prefix,
            &options,
            endpoints,
            &tenants.iter().collect::<Vec<_>>(),
        );
        let config = Config::from_yaml(&config_yaml).context("test config")?;

        let dispatcher_metrics = Arc::new(Metrics::new());
        let dispatcher = Dispatcher::new(config.clone(), dispatcher_metrics.clone())?;
        let dispatcher_reloader = dispatcher.reloader();
        let listener = bind().await?;
        let dispatcher_addr = listener.local_addr()?;
        let dispatcher_stop = CancellationToken::new();
        tokio::spawn(dispatcher.serve(listener, dispatcher_stop.clone()));

        let mut app = Self {
            prefix,
            amqp_url: options.admin_amqp_url.clone(),
            redis_url: options.admin_redis_url.clone(),
            redis_masters: if options.admin_redis_masters.is_empty() {
                vec![options.admin_redis_url.clone()]
            } else {
                options.admin_redis_masters.clone()
            },
            config,
            config_yaml,
            dispatcher_addr,
            dispatcher_metrics,
            dispatcher_reloader,
            llm,
            llm_addr,
            receiver,
            receiver_addr,
            tools,
            acme,
            globex,
            tenants,
            http: reqwest::Client::new(),
            dispatcher_stop,
            workers: Vec::new(),
            signing_secrets: HashMap::new(),
            children: Vec::new(),
            temp_files: Vec::new(),
        };
        for _ in 0..options.workers {
            app.start_worker().await?;
        }
        app.wait_ready().await?;
        Ok(app)
    }

    /// Secrets as the worker reads them from its environment: each tenant's, unless
    /// [`TestApp::set_webhook_secrets`] replaced it.
    fn secret_env(&self) -> HashMap<String, String> {
        self.tenants
            .iter()
            .map(|t| {
                let value = self.signing_secrets.get(&t.id).unwrap_or(&t.webhook_secret);
                (env_var(&t.id), value.clone())
            })
            .collect()
    }

    /// What workers started from now on read from `tenant`'s secret variable: during a
    /// rotation, several secrets separated by spaces.
    pub fn set_webhook_secrets(&mut self, tenant: &str, value: String) {
        self.signing_secrets.insert(tenant.to_owned(), value);
    }

    /// Starts one more in-process worker; returns its index.
    pub async fn start_worker(&mut self) -> anyhow::Result<usize> {
        self.start_worker_with(self.config.clone()).await
    }

    pub async fn start_worker_with(&mut self, config: Config) -> anyhow::Result<usize> {
        let env = self.secret_env();
        let secrets = config.secrets(|var| env.get(var).cloned())?;
        let metrics = Arc::new(Metrics::new());
        let worker = Worker::new(config, secrets, metrics.clone())?;
        let listener = bind().await?;
        let metrics_addr = listener.local_addr()?;
        let stop = CancellationToken::new();
        let task = tokio::spawn(worker.run(listener, stop.clone()));
        self.workers.push(Some(RunningWorker {
            stop,
            task,
            metrics,
            metrics_addr,
        }));
        Ok(self.workers.len() - 1)
    }

    /// Starts the worker binary (`CARGO_BIN_EXE_agentfleet-test-worker`, which only
    /// integration tests see) as a separate process, so it can be SIGKILLed.
    pub fn start_worker_process(&mut self, binary: &str) -> anyhow::Result<u32> {
        let path = self.write_config_file("worker")?;
        let child = std::process::Command::new(binary)
            .arg("--config")
            .arg(&path)
            .envs(self.secret_env())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .context("spawning the worker binary")?;
        let pid = child.id();
        self.children.push(child);
        Ok(pid)
    }

    /// Writes this app's config to a temporary file (removed on drop).
    pub fn write_config_file(&mut self, name: &str) -> anyhow::Result<PathBuf> {
        let path = std::env::temp_dir().join(format!("{}-{name}.yaml", self.prefix));
        std::fs::write(&path, &self.config_yaml)?;
        self.temp_files.push(path.clone());
        Ok(path)
    }

    /// The secret environment variables a worker process needs.
    pub fn worker_env(&self) -> HashMap<String, String> {
        self.secret_env()
    }

    /// Sends SIGHUP to a worker process started by [`TestApp::start_worker_process`]: it
    /// reloads its configuration file.
    pub fn hang_up_worker_process(&self, pid: u32) -> anyhow::Result<()> {
        let status = std::process::Command::new("kill")
            .arg("-HUP")
            .arg(pid.to_string())
            .status()
            .context("running kill")?;
        anyhow::ensure!(status.success(), "kill -HUP {pid} failed");
        Ok(())
    }

    /// SIGKILLs a worker process started by [`TestApp::start_worker_process`].
    pub fn kill_worker_process(&mut self, pid: u32) -> anyhow::Result<()> {
        let child = self
            .children
            .iter_mut()
            .find(|c| c.id() == pid)
            .context("no such worker process")?;
        child.kill()?;
        child.wait()?;
        Ok(())
    }

    /// Asks an in-process worker to shut down gracefully and waits for it (bounded).
    pub async fn stop_worker(&mut self, index: usize) -> anyhow::Result<Duration> {
        let worker = self.workers[index]
            .take()
            .context("worker already stopped")?;
        let started = Instant::now();
        worker.stop.cancel();
        tokio::time::timeout(Duration::from_secs(60), worker.task)
            .await
            .context("worker did not stop within 60 s")???;
        Ok(started.elapsed())
    }

    pub fn worker_metrics(&self, index: usize) -> Option<Arc<Metrics>> {
        self.workers[index].as_ref().map(|w| w.metrics.clone())
    }

    pub fn worker_metrics_addr(&self, index: usize) -> Option<SocketAddr> {
        self.workers[index].as_ref().map(|w| w.metrics_addr)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.dispatcher_addr)
    }

    pub fn webhook_url(&self) -> String {
        self.webhook_url_for("acme")
    }

    /// The test receiver's URL for `tenant`'s events.
    pub fn webhook_url_for(&self, tenant: &str) -> String {
        format!("http://{}/hooks/{tenant}", self.receiver_addr)
    }

    async fn wait_ready(&self) -> anyhow::Result<()> {
        let url = self.url("/readyz");
        wait_until(Duration::from_secs(20), "dispatcher ready", || async {
            let r = self.http.get(&url).send().await.ok()?;
            r.status().is_success().then_some(())
        })
        .await
    }

    /// POSTs a job as `tenant` (default body fields are the caller's to set).
    pub async fn submit_as(&self, tenant: &TenantKeys, body: &Value) -> reqwest::Response {
        self.http
            .post(self.url("/v1/jobs"))
            .bearer_auth(&tenant.api_key)
            .json(body)
            .send()
            .await
            .expect("dispatcher reachable")
    }

    /// Submits a text job to `agent` as acme with the test webhook; returns the job id.
    pub async fn submit_job(&self, agent: &str, input: &str) -> anyhow::Result<String> {
        let response = self
            .submit_as(
                &self.acme,
                &json!({"agent": agent, "input": input, "webhook_url": self.webhook_url()}),
            )
            .await;
        accepted_id(response).await
    }

    /// Submits a text job to `agent` as `tenant`, without a webhook; returns the job id.
    pub async fn submit_for(
        &self,
        tenant: &TenantKeys,
        agent: &str,
        input: &str,
    ) -> anyhow::Result<String> {
        let response = self
            .submit_as(tenant, &json!({"agent": agent, "input": input}))
            .await;
        accepted_id(response).await
    }

    /// POSTs a job with an `Idempotency-Key`.
    pub async fn submit_with_key(
        &self,
        tenant: &TenantKeys,
        key: &str,
        body: &Value,
    ) -> reqwest::Response {
        self.http
            .post(self.url("/v1/jobs"))
            .bearer_auth(&tenant.api_key)
            .header("idempotency-key", key)
            .json(body)
            .send()
            .await
            .expect("dispatcher reachable")
    }

    /// Starts `POST /v1/jobs` as `tenant` on a raw connection and sends only the start of its
    /// body: the request stays in the dispatcher (holding its place among the requests in
    /// flight, its timeout running) until the stream is dropped. Read the answer, if one
    /// comes, with [`read_raw_response`].
    pub async fn start_stalled_submit(
        &self,
        tenant: &TenantKeys,
    ) -> anyhow::Result<tokio::net::TcpStream> {
        stalled_submit(self.dispatcher_addr, &tenant.api_key).await
    }

    /// `DELETE /v1/jobs/{id}` as acme.
    pub async fn cancel(&self, id: &str) -> reqwest::Response {
        self.http
            .delete(self.url(&format!("/v1/jobs/{id}")))
            .bearer_auth(&self.acme.api_key)
            .send()
            .await
            .expect("dispatcher reachable")
    }

    /// A Redis connection to the real server, for inspecting and seeding state.
    pub async fn redis(&self) -> anyhow::Result<redis::aio::MultiplexedConnection> {
        let client = redis::Client::open(self.redis_url.as_str())?;
        Ok(client.get_multiplexed_async_connection().await?)
    }

    /// Publishes raw bytes straight onto a queue (to test what workers do with garbage).
    pub async fn publish_raw(&self, queue: &str, payload: &[u8]) -> anyhow::Result<()> {
        let conn =
            lapin::Connection::connect(&self.amqp_url, lapin::ConnectionProperties::default())
                .await?;
        let channel = conn.create_channel().await?;
        channel
            .confirm_select(lapin::options::ConfirmSelectOptions::default())
            .await?;
        channel
            .basic_publish(
                "".into(),
                queue.into(),
                lapin::options::BasicPublishOptions::default(),
                payload,
                lapin::BasicProperties::default().with_delivery_mode(2),
            )
            .await?
            .await?;
        let _ = conn.close(200, "done".into()).await;
        Ok(())
    }

    /// A broker handle like the dispatcher's (every agent's queues), for publishing what a
    /// dispatcher would.
    pub fn broker(&self) -> agentfleet_common::broker::Broker {
        let queues = self
            .config
            .agents
            .keys()
            .flat_map(|agent| self.config.job_queues(agent))
            .collect();
        agentfleet_common::broker::Broker::new(
            &self.config.amqp,
            self.names(),
            queues,
            "agentfleet-test",
        )
    }

    /// Takes every message waiting on `queue` off it (acked) and answers them decoded as
    /// jobs: with no worker running, what the dispatcher published for the jobs submitted.
    pub async fn take_queued_jobs(
        &self,
        queue: &str,
    ) -> anyhow::Result<Vec<agentfleet_common::wire::JobMessage>> {
        use agentfleet_common::wire::Versioned as _;
        let conn =
            lapin::Connection::connect(&self.amqp_url, lapin::ConnectionProperties::default())
                .await?;
        let channel = conn.create_channel().await?;
        let mut jobs = Vec::new();
        while let Some(delivery) = channel
            .basic_get(queue.into(), lapin::options::BasicGetOptions::default())
            .await?
        {
            jobs.push(agentfleet_common::wire::JobMessage::decode(&delivery.data)?);
            delivery
                .ack(lapin::options::BasicAckOptions::default())
                .await?;
        }
        let _ = conn.close(200, "done".into()).await;
        Ok(jobs)
    }

    /// The job's record with its run's steps (`GET /v1/jobs/{id}?include=steps`).
    pub async fn job_with_steps(&self, id: &str) -> anyhow::Result<Value> {
        let mut status = reqwest::StatusCode::NOT_FOUND;
        for tenant in &self.tenants {
            let response = self
                .http
                .get(self.url(&format!("/v1/jobs/{id}?include=steps")))
                .bearer_auth(&tenant.api_key)
                .send()
                .await?;
            status = response.status();
            if status == reqwest::StatusCode::OK {
                return Ok(response.json().await?);
            }
        }
        anyhow::bail!("GET {id}: {status}")
    }

    /// The tenant with this id.
    pub fn tenant(&self, id: &str) -> &TenantKeys {
        self.tenants
            .iter()
            .find(|t| t.id == id)
            .unwrap_or_else(|| panic!("no tenant {id} in this app"))
    }

    pub fn names(&self) -> agentfleet_common::naming::Names {
        agentfleet_common::naming::Names::new(&self.prefix, &self.prefix)
    }

    pub async fn get_job_as(&self, tenant: &TenantKeys, id: &str) -> reqwest::Response {
        self.http
            .get(self.url(&format!("/v1/jobs/{id}")))
            .bearer_auth(&tenant.api_key)
            .send()
            .await
            .expect("dispatcher reachable")
    }

    /// The job's record, read as whichever tenant owns it (acme first).
    pub async fn job(&self, id: &str) -> anyhow::Result<Value> {
        let mut status = reqwest::StatusCode::NOT_FOUND;
        for tenant in &self.tenants {
            let response = self.get_job_as(tenant, id).await;
            status = response.status();
            if status.is_success() {
                return Ok(response.json().await?);
            }
            if status != reqwest::StatusCode::NOT_FOUND {
                break;
            }
        }
        bail!("GET job answered {status}")
    }

    /// Polls until the stub has exactly `n` calls of `model` in flight.
    pub async fn wait_calls_in_flight(
        &self,
        model: &str,
        n: u64,
        within: Duration,
    ) -> anyhow::Result<()> {
        let what = format!("{n} calls of {model} in flight");
        wait_until(within, &what, || async {
            (self.llm.in_flight(model) == n).then_some(())
        })
        .await
    }

    /// Polls until every job is terminal and requires each to have succeeded; returns their
    /// records.
    pub async fn wait_succeeded(
        &self,
        ids: &[String],
        within: Duration,
    ) -> anyhow::Result<Vec<Value>> {
        let records = self.wait_terminal(ids, within).await?;
        if let Some(other) = records.iter().find(|r| r["status"] != "succeeded") {
            bail!("a job did not succeed: {other}");
        }
        Ok(records)
    }

    /// Polls until every job is terminal; returns their records.
    pub async fn wait_terminal(
        &self,
        ids: &[String],
        within: Duration,
    ) -> anyhow::Result<Vec<Value>> {
        let mut done: HashMap<String, Value> = HashMap::new();
        let deadline = Instant::now() + within;
        loop {
            for id in ids {
                if done.contains_key(id) {
                    continue;
                }
                let record = self.job(id).await?;
                let status = record["status"].as_str().and_then(JobStatus::parse);
                if status.is_some_and(JobStatus::is_terminal) {
                    done.insert(id.clone(), record);
                }
            }
            if done.len() == ids.len() {
                return Ok(ids.iter().filter_map(|id| done.remove(id)).collect());
            }
            if Instant::now() > deadline {
                let mut stuck = Vec::new();
                for id in ids.iter().filter(|id| !done.contains_key(*id)).take(5) {
                    stuck.push(self.job(id).await.unwrap_or_default());
                }
                bail!(
                    "{} of {} jobs terminal after {within:?}; some that are not: {stuck:#?}",
                    done.len(),
                    ids.len()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Polls until at least `n` webhook deliveries arrived.
    pub async fn wait_webhooks(&self, n: usize, within: Duration) -> anyhow::Result<()> {
        let receiver = self.receiver.clone();
        wait_until(within, &format!("{n} webhooks"), || {
            let receiver = receiver.clone();
            async move { (receiver.count() >= n).then_some(()) }
        })
        .await
    }

    /// Waits until `/readyz` answers 503: the dispatcher has seen a dependency go (a cut
    /// proxy's sockets close, and it learns of it when they do).
    pub async fn wait_not_ready(&self, within: Duration) -> anyhow::Result<()> {
        wait_until(within, "the dispatcher to see the cut", || async {
            let ready = self.http.get(self.url("/readyz")).send().await.ok()?;
            (ready.status() == 503).then_some(())
        })
        .await
    }

    /// Messages ready in an agent's queue (passive declare).
    pub async fn queue_depth(&self, queue: &str) -> anyhow::Result<u32> {
        let conn =
            lapin::Connection::connect(AMQP_URL, lapin::ConnectionProperties::default()).await?;
        let channel = conn.create_channel().await?;
        let q = channel
            .queue_declare(
                queue.into(),
                lapin::options::QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                lapin::types::FieldTable::default(),
            )
            .await?;
        let _ = conn.close(200, "done".into()).await;
        Ok(q.message_count())
    }

    /// Jobs ready in all of `agent`'s queues (its shared queue and one per tenant).
    pub async fn agent_queue_depth(&self, agent: &str) -> anyhow::Result<u32> {
        let mut total = 0;
        for queue in self.config.job_queues(agent) {
            total += self.queue_depth(&queue.queue).await?;
        }
        Ok(total)
    }

    /// Job-record keys under this app's prefix.
    pub async fn job_keys(&self) -> anyhow::Result<Vec<String>> {
        let pattern = format!("{}:job:*", self.prefix);
        let mut keys = Vec::new();
        for (_, found) in keys_per_master(&self.redis_masters, &pattern).await? {
            keys.extend(found);
        }
        Ok(keys)
    }

    pub async fn metrics_text(&self, addr: SocketAddr) -> anyhow::Result<String> {
        Ok(self
            .http
            .get(format!("http://{addr}/metrics"))
            .send()
            .await?
            .text()
            .await?)
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.dispatcher_stop.cancel();
        for worker in self.workers.iter().flatten() {
            worker.stop.cancel();
            worker.task.abort();
        }
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        for file in &self.temp_files {
            let _ = std::fs::remove_file(file);
        }
        let prefix = self.prefix.clone();
        let (amqp_url, redis_masters) = (self.amqp_url.clone(), self.redis_masters.clone());
        let job_queues: Vec<String> = self
            .config
            .agents
            .keys()
            .flat_map(|a| self.config.job_queues(a))
            .map(|q| q.queue)
            .collect();
        // Drop cannot await: clean up on a thread with its own runtime.
        let cleanup = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            if let Ok(runtime) = runtime {
                runtime.block_on(async {
                    let cleaned = cleanup(&prefix, job_queues, &amqp_url, &redis_masters).await;
                    if let Err(err) = cleaned {
                        eprintln!("cleanup of {prefix} failed: {err:#}");
                    }
                });
            }
        });
        let _ = cleanup.join();
    }
}

/// Deletes every queue, exchange and key of a test prefix.
async fn cleanup(
    prefix: &str,
    mut queues: Vec<String>,
    amqp_url: &str,
    redis_masters: &[String],
) -> anyhow::Result<()> {
    let names = agentfleet_common::naming::Names::new(prefix, prefix);
    let conn = lapin::Connection::connect(amqp_url, lapin::ConnectionProperties::default()).await?;
    let channel = conn.create_channel().await?;
    queues.push(names.webhook_queue());
    queues.push(names.dead_queue());
    queues.extend(DELAY_STEPS_MS.iter().map(|&s| names.delay_queue(s)));
    for queue in queues {
        channel
            .queue_delete(queue.into(), lapin::options::QueueDeleteOptions::default())
            .await?;
    }
    for exchange in [
        names.work_exchange(),
        names.delay_exchange(),
        names.dead_exchange(),
    ] {
        channel
            .exchange_delete(
                exchange.into(),
                lapin::options::ExchangeDeleteOptions::default(),
            )
            .await?;
    }
    let _ = conn.close(200, "cleanup".into()).await;

    // A key lives on one master of a cluster: each is scanned.
    for (master, keys) in keys_per_master(redis_masters, &names.redis_pattern()).await? {
        let client = redis::Client::open(master.as_str())?;
        let mut conn = client.get_multiplexed_async_connection().await?;
        for batch in keys.chunks(1_000) {
            unlink(&mut conn, batch).await?;
        }
    }
    Ok(())
}

/// Deletes `keys` of one server. One `UNLINK` per key, pipelined: a cluster's master refuses a
/// multi-key `UNLINK` whose keys are in different slots (`CROSSSLOT`).
async fn unlink(
    conn: &mut redis::aio::MultiplexedConnection,
    keys: &[String],
) -> anyhow::Result<()> {
    let mut pipe = redis::pipe();
    for key in keys {
        pipe.cmd("UNLINK").arg(key).ignore();
    }
    pipe.query_async::<()>(conn).await?;
    Ok(())
}

/// The keys of one server matching `pattern`, a batch at a time (`SCAN`): a soak leaves
/// hundreds of thousands, which one `KEYS` would hold Redis up for, past the client's timeout.
async fn scan_keys(
    conn: &mut redis::aio::MultiplexedConnection,
    pattern: &str,
) -> anyhow::Result<Vec<String>> {
    const BATCH: usize = 1_000;
    let mut found = Vec::new();
    let mut cursor: u64 = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(BATCH)
            .query_async(conn)
            .await?;
        found.extend(keys);
        if next == 0 {
            return Ok(found);
        }
        cursor = next;
    }
}

/// The keys matching `pattern` on each of `servers` (one server, or a cluster's masters).
pub async fn keys_per_master(
    servers: &[String],
    pattern: &str,
) -> anyhow::Result<Vec<(String, Vec<String>)>> {
    let mut found = Vec::new();
    for server in servers {
        let client = redis::Client::open(server.as_str())?;
        let mut conn = client.get_multiplexed_async_connection().await?;
        found.push((server.clone(), scan_keys(&mut conn, pattern).await?));
    }
    Ok(found)
}

async fn bind() -> anyhow::Result<tokio::net::TcpListener> {
    Ok(agentfleet_stub::bind_loopback()?)
}

fn env_var(tenant: &str) -> String {
    format!("AFTEST_{}_WEBHOOK_SECRET", tenant.to_uppercase())
}

/// The id of an accepted job; any other answer is an error naming it.
async fn accepted_id(response: reqwest::Response) -> anyhow::Result<String> {
    let status = response.status();
    let body: Value = response.json().await?;
    if status != reqwest::StatusCode::ACCEPTED {
        bail!("submit answered {status}: {body}");
    }
    Ok(body["id"].as_str().context("id")?.to_owned())
}

fn tenant(id: &str) -> TenantKeys {
    TenantKeys {
        id: id.to_owned(),
        api_key: format!("key-{id}-{}", uuid::Uuid::new_v4().simple()),
        webhook_secret: WebhookSecret::generate(),
    }
}

/// The tools every test app configures, all served by its [`ToolServer`] at `{tools}`: one
/// per side-effect class, a slow one and a big one.
pub const TOOLS_YAML: &str = r#"tools:
  lookup:
    description: "Looks a record up by id"
    parameters: { type: object, properties: { id: { type: string } }, required: [id], additionalProperties: false }
    http: { url: "http://{tools}/lookup/{id}" }
    side_effect: read
  create_order:
    description: "Creates an order"
    parameters: { type: object, properties: { item: { type: string } }, required: [item] }
    http: { method: POST, url: "http://{tools}/orders" }
    side_effect: idempotent
  pay:
    description: "Pays an amount"
    parameters: { type: object, properties: { amount: { type: number } }, required: [amount] }
    http: { method: POST, url: "http://{tools}/payments" }
    side_effect: write
  slow:
    description: "Answers after ms milliseconds"
    parameters: { type: object, properties: { ms: { type: integer } }, required: [ms] }
    http: { url: "http://{tools}/slow?ms={ms}" }
    side_effect: read
    timeout_secs: 5
  big:
    description: "Answers with many bytes"
    parameters: { type: object, properties: { bytes: { type: integer } }, required: [bytes] }
    http: { url: "http://{tools}/big?bytes={bytes}" }
    side_effect: read
    max_response_bytes: 1000
"#;

/// Where an app's agents and tools point.
#[derive(Debug, Clone, Copy)]
struct Endpoints {
    llm: SocketAddr,
    llm_scheme: &'static str,
    tools: SocketAddr,
}

/// The test CA's certificate, which signed the stand-ins' TLS certificate (`localhost`,
/// `127.0.0.1`; see `fixtures/tls/README.md`).
const TEST_CA_FILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/tls/ca.pem");

/// A TLS acceptor with the test CA's server certificate.
fn test_tls(offers_http2: bool) -> anyhow::Result<agentfleet_stub::TlsAcceptor> {
    let chain = include_bytes!("../fixtures/tls/server.pem");
    let key = include_bytes!("../fixtures/tls/server.key");
    Ok(agentfleet_stub::tls_acceptor(chain, key, offers_http2)?)
}

fn render_config(
    prefix: &str,
    options: &AppOptions,
    endpoints: Endpoints,
    tenants: &[&TenantKeys],
) -> String {
    let mut yaml = render_infra(prefix, options);
    yaml.push_str("tenants:\n");
    for t in tenants {
        render_tenant(&mut yaml, options, t);
    }
    yaml.push_str("agents:\n");
    let base_url = format!("{}://{}/v1", endpoints.llm_scheme, endpoints.llm);
    for a in &options.agents {
        render_agent(&mut yaml, a, &base_url);
        render_agent_runtime(&mut yaml, a);
    }
    yaml.push_str(&TOOLS_YAML.replace("{tools}", &endpoints.tools.to_string()));
    if let Some(privacy) = &options.privacy {
        yaml.push_str(&format!("privacy: {privacy}\n"));
    }
    render_pools_and_prices(&mut yaml, options);
    yaml
}

/// The `amqp`, `redis`, `dispatcher`, `worker`, `webhooks` and `telemetry` sections.
fn render_infra(prefix: &str, options: &AppOptions) -> String {
    format!(
        r#"amqp: {{ {amqp}, prefix: "{prefix}", publish_timeout_ms: 3000{group} }}
redis: {{ {redis}, prefix: "{prefix}", result_ttl_secs: 3600 }}
dispatcher: {{ listen: "127.0.0.1:0", max_body_bytes: {max_body}{dispatcher} }}
worker: {{ metrics_listen: "127.0.0.1:0", agents: ["*"], shutdown_grace_secs: {grace}, lease_secs: {lease}, max_limit_hold_ms: {hold}, budget_recheck_secs: {recheck}{roots} }}
webhooks: {{ timeout_secs: 5, concurrency: 16, allow_private_networks: {private}, retry_schedule_secs: {schedule:?}{webhooks} }}
telemetry: {{ log_level: "warn" }}
"#,
        amqp = if options.amqp_urls.is_empty() {
            format!("url: \"{}\"", options.amqp_url)
        } else {
            format!("urls: {:?}", options.amqp_urls)
        },
        group = options
            .quorum_initial_group_size
            .map(|n| format!(", quorum_initial_group_size: {n}"))
            .unwrap_or_default(),
        redis = options
            .redis_connection
            .clone()
            .unwrap_or_else(|| format!("url: \"{}\"", options.redis_url)),
        lease = options.lease_secs,
        grace = options.shutdown_grace_secs,
        hold = options.max_limit_hold_ms,
        recheck = options.budget_recheck_secs,
        private = options.allow_private_webhooks,
        schedule = options.webhook_retry_schedule_secs,
        max_body = options.max_body_bytes,
        roots = if options.provider_tls {
            format!(", extra_ca_file: {TEST_CA_FILE:?}")
        } else {
            String::new()
        },
        dispatcher = dispatcher_fields(options),
        webhooks = webhook_fields(options),
    )
}

/// The optional fields of `dispatcher`, each with its leading comma.
fn dispatcher_fields(options: &AppOptions) -> String {
    [
        options.per_key_rate.map(|(rate, burst)| {
            format!(", per_key_rate: {{ per_second: {rate}, burst: {burst} }}")
        }),
        options
            .request_timeout_ms
            .map(|ms| format!(", request_timeout_ms: {ms}")),
        options
            .max_concurrent_requests
            .map(|n| format!(", max_concurrent_requests: {n}")),
        Some(format!(", batch_jobs: {}", options.batch_jobs)),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// The optional fields of `webhooks`, each with its leading comma.
fn webhook_fields(options: &AppOptions) -> String {
    let hosts = (!options.webhook_hosts.is_empty()).then(|| {
        let entries: Vec<String> = options
            .webhook_hosts
            .iter()
            .map(|(name, ip)| format!("\"{name}\": \"{ip}\""))
            .collect();
        format!(", hosts: {{ {} }}", entries.join(", "))
    });
    [
        options.webhook_per_host_rate.map(|(rate, burst)| {
            format!(", per_host_rate: {{ per_second: {rate}, burst: {burst} }}")
        }),
        options.webhook_inline.map(|(timeout, room)| {
            format!(", inline_timeout_ms: {timeout}, inline_concurrency: {room}")
        }),
        hosts,
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// One entry of `tenants`, with the test's extra settings for it.
fn render_tenant(yaml: &mut String, options: &AppOptions, t: &TenantKeys) {
    let hash = hex::encode(Sha256::digest(t.api_key.as_bytes()));
    let extra: String = options
        .tenant_settings
        .iter()
        .filter(|(id, _)| *id == t.id)
        .map(|(_, fields)| format!(", {fields}"))
        .collect();
    yaml.push_str(&format!(
        "  - {{ id: {}, api_key_sha256: \"{hash}\", webhook_secret_env: {}{extra} }}\n",
        t.id,
        env_var(&t.id)
    ));
}

/// An agent's provider, model, concurrency, deadlines, transport and limits.
fn render_agent(yaml: &mut String, a: &AgentSpec, base_url: &str) {
    yaml.push_str(&format!(
        "  {name}:\n    provider: openai\n    base_url: \"{base_url}\"\n    model: \"{model}\"\n    system_prompt: \"You are a test agent.\"\n    max_tokens: 64\n    concurrency: {c}\n    timeout_secs: {t}\n    retry: {{ attempts: {ra}, max_delay_secs: {rd} }}\n    circuit_breaker: {{ failure_threshold: {cf}, cooldown_secs: {cc} }}\n",
        name = a.name,
        model = a.model(),
        c = a.concurrency,
        t = a.timeout_secs,
        ra = a.retry_attempts,
        rd = a.retry_max_delay_secs,
        cf = a.circuit_failure_threshold,
        cc = a.circuit_cooldown_secs,
    ));
    if let Some(secs) = a.request_timeout_secs {
        yaml.push_str(&format!("    request_timeout_secs: {secs}\n"));
    }
    match a.http_version {
        HttpVersion::Auto => {}
        HttpVersion::Http1 => yaml.push_str("    http_version: http1\n"),
        HttpVersion::Http2 => yaml.push_str("    http_version: http2\n"),
    }
    if let Some(streams) = a.http2_streams_per_connection {
        yaml.push_str(&format!("    http2_streams_per_connection: {streams}\n"));
    }
    if let Some(depth) = a.max_queue_depth {
        yaml.push_str(&format!("    max_queue_depth: {depth}\n"));
    }
    if let Some(rpm) = a.requests_per_minute {
        let tpm = a
            .tokens_per_minute
            .map(|t| format!(", tokens_per_minute: {t}"))
            .unwrap_or_default();
        yaml.push_str(&format!(
            "    rate_limit: {{ requests_per_minute: {rpm}{tpm} }}\n"
        ));
    }
}

/// `pools` and `prices`, when any test asked for them.
fn render_pools_and_prices(yaml: &mut String, options: &AppOptions) {
    if !options.pools.is_empty() {
        yaml.push_str("pools:\n");
        for (pool, rpm) in &options.pools {
            yaml.push_str(&format!("  {pool}: {{ requests_per_minute: {rpm} }}\n"));
        }
    }
    let priced: Vec<_> = options
        .agents
        .iter()
        .filter_map(|a| a.price.map(|p| (a.model(), p)))
        .collect();
    if !priced.is_empty() {
        yaml.push_str("prices:\n");
        for (model, (input, output)) in priced {
            yaml.push_str(&format!(
                "  {model}: {{ input_usd_per_million: {input}, output_usd_per_million: {output} }}\n"
            ));
        }
    }
}

/// An agent's tools, limits and output schema.
fn render_agent_runtime(yaml: &mut String, agent: &AgentSpec) {
    if let Some(fairness) = agent.fairness {
        yaml.push_str(&format!("    fairness: {fairness}\n"));
    }
    if let Some(ttl) = agent.cache_ttl_secs {
        yaml.push_str(&format!("    cache: {{ ttl_secs: {ttl} }}\n"));
    }
    if let Some(mask) = agent.mask_output {
        yaml.push_str(&format!("    mask_output: {mask}\n"));
    }
    if !agent.tools.is_empty() {
        yaml.push_str(&format!("    tools: [{}]\n", agent.tools.join(", ")));
    }
    if let Some(limits) = &agent.limits {
        yaml.push_str(&format!("    limits: {limits}\n"));
    }
    if let Some(schema) = &agent.input_schema {
        yaml.push_str(&format!("    input_schema: {schema}\n"));
    }
    if let Some(schema) = &agent.output_schema {
        yaml.push_str(&format!("    output_schema: {schema}\n"));
    }
    if let Some(pool) = &agent.pool {
        yaml.push_str(&format!("    pool: {pool}\n"));
    }
}

/// A record's steps in brief: `model`, `tool_intent`, or `tool:<status>` each.
pub fn step_kinds(record: &Value) -> Vec<String> {
    record["steps"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| match s["kind"].as_str() {
            Some("tool") => format!("tool:{}", s["status"].as_str().unwrap_or("?")),
            other => other.unwrap_or("?").to_owned(),
        })
        .collect()
}

/// An HTTP/1.1 response read off a raw connection.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    /// Header names in lower case.
    pub headers: HashMap<String, String>,
    pub body: String,
}

/// Reads one response (with a `content-length`) from `stream`, failing after `within`.
pub async fn read_raw_response(
    stream: &mut tokio::net::TcpStream,
    within: Duration,
) -> anyhow::Result<RawResponse> {
    use tokio::io::AsyncReadExt as _;
    let read = async {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(response) = parse_raw_response(&buf)? {
                return Ok(response);
            }
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                bail!(
                    "connection closed before a whole response: {:?}",
                    String::from_utf8_lossy(&buf)
                );
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    };
    tokio::time::timeout(within, read)
        .await
        .with_context(|| format!("no response within {within:?}"))?
}

/// The response in `buf`, once its head and `content-length` bytes of body are there.
fn parse_raw_response(buf: &[u8]) -> anyhow::Result<Option<RawResponse>> {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Ok(None);
    };
    let head = std::str::from_utf8(&buf[..end])?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("status line {status_line:?}"))?;
    let headers: HashMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let length: usize = headers
        .get("content-length")
        .context("no content-length")?
        .parse()?;
    let body = &buf[end + 4..];
    if body.len() < length {
        return Ok(None);
    }
    Ok(Some(RawResponse {
        status,
        body: String::from_utf8_lossy(&body[..length]).into_owned(),
        headers,
    }))
}

/// Starts `POST /v1/jobs` with `api_key` on a raw connection to `addr` and sends only the
/// start of its body: the request stays in the dispatcher until the stream is dropped.
pub async fn stalled_submit(
    addr: SocketAddr,
    api_key: &str,
) -> anyhow::Result<tokio::net::TcpStream> {
    use tokio::io::AsyncWriteExt as _;
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let head = format!(
        "POST /v1/jobs HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {api_key}\r\n\
         content-type: application/json\r\ncontent-length: 1000\r\n\r\n{{\"agent\":"
    );
    stream.write_all(head.as_bytes()).await?;
    stream.flush().await?;
    Ok(stream)
}

/// Polls `probe` until it yields a value or `within` passes.
pub async fn wait_until<T, F, Fut>(within: Duration, what: &str, mut probe: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = probe().await {
            return Ok(value);
        }
        if Instant::now() > deadline {
            bail!("timed out after {within:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
