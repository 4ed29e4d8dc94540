//! A deployment under measurement: the harness's [`TestApp`] (unique prefix, stub LLM and
//! verifying webhook receiver in this process, cleanup on drop) plus the real dispatcher and
//! worker binaries as separate processes, so their memory and CPU can be read from `/proc`
//! and several workers are several processes, as in production.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use chrono::{DateTime, Utc};
use futures_util::StreamExt as _;
use serde_json::{json, Value};

use agentfleet_common::config::WorkerConfig;
use agentfleet_common::signing::WebhookSecret;
use agentfleet_stub::llm::{Behavior, StubLlm};
use agentfleet_stub::receiver::{Delivery, Receiver};
use agentfleet_tests::{AgentSpec, AppOptions, TestApp};

use crate::procfs::Groups;

/// The binaries under measurement.
#[derive(Debug, Clone)]
pub struct Binaries {
    pub dispatcher: PathBuf,
    pub worker: PathBuf,
    /// Where each process's stderr goes (one file per process and run).
    pub logs: PathBuf,
}

impl Binaries {
    /// Checks the binaries exist and makes an empty log folder.
    pub fn check(&self) -> anyhow::Result<()> {
        for bin in [&self.dispatcher, &self.worker] {
            if !bin.is_file() {
                bail!(
                    "{} is missing: build it with `cargo build --release -p agentfleet-dispatcher -p agentfleet-worker` (scripts/bench.sh does)",
                    bin.display()
                );
            }
        }
        std::fs::create_dir_all(&self.logs)
            .with_context(|| format!("creating {}", self.logs.display()))?;
        // The logs of earlier runs (one file per process and run) would pile up.
        for entry in std::fs::read_dir(&self.logs)?.filter_map(Result::ok) {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with("aftest-") && name.ends_with(".log") {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        Ok(())
    }
}

/// What to deploy.
#[derive(Debug, Clone)]
pub struct FleetOptions {
    pub agent: AgentSpec,
    pub latency: Duration,
    /// Worker processes started with the fleet (more with [`Fleet::start_worker`]).
    pub workers: usize,
    /// `webhooks.concurrency` of the workers: the shipped default, not the harness's.
    pub webhook_concurrency: u16,
    /// Agents served by the same workers besides `agent`.
    pub others: Vec<OtherAgent>,
    /// Tenants besides `acme` and `globex`, by id.
    pub tenants: Vec<&'static str>,
    /// `dispatcher.batch_jobs`: the dispatcher's group commit (on, as shipped).
    pub batch_jobs: bool,
}

impl FleetOptions {
    pub fn new(agent: AgentSpec, latency: Duration, workers: usize) -> Self {
        Self {
            agent,
            latency,
            workers,
            webhook_concurrency: 32,
            others: Vec::new(),
            tenants: Vec::new(),
            batch_jobs: true,
        }
    }

    /// Without the dispatcher's group commit (`dispatcher.batch_jobs: false`): one message
    /// per job.
    pub fn one_message_per_job(mut self) -> Self {
        self.batch_jobs = false;
        self
    }

    /// More tenants besides `acme` and `globex`.
    pub fn with_tenants(mut self, tenants: &[&'static str]) -> Self {
        self.tenants.extend_from_slice(tenants);
        self
    }

    /// One more agent on the same workers.
    pub fn with_agent(mut self, other: OtherAgent) -> Self {
        self.others.push(other);
        self
    }
}

/// An agent of the fleet besides the main one.
#[derive(Debug, Clone)]
pub struct OtherAgent {
    pub spec: AgentSpec,
    /// When set, the agent calls a stub LLM of its own with this behaviour (its calls, faults
    /// and circuit apart from the other agents'); otherwise the fleet's stub.
    pub own_llm: Option<Behavior>,
}

/// A child process, killed when dropped.
pub(crate) struct Process {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Process {
    pub(crate) fn spawn(command: &mut Command, name: &str, log: PathBuf) -> anyhow::Result<Self> {
        let file =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        Ok(Self {
            name: name.to_owned(),
            child,
            log,
        })
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// An error if the process has exited, with the end of its log.
    pub(crate) fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(5).collect();
            bail!(
                "{} exited ({status}); last log lines: {}",
                self.name,
                tail.into_iter().rev().collect::<Vec<_>>().join(" / ")
            );
        }
        Ok(())
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One job as the client sent it.
#[derive(Debug, Clone)]
pub struct Sent {
    pub id: String,
    pub at: Instant,
    pub wall: DateTime<Utc>,
    /// Until the 202 came back.
    pub answered: Duration,
}

pub struct Fleet {
    // Fields drop in order: the processes must be gone before the app deletes the queues they
    // would otherwise re-declare on reconnect.
    dispatcher: Process,
    workers: Vec<Process>,
    worker_ports: Vec<u16>,
    pub app: TestApp,
    pub agent: String,
    pub model: String,
    /// The stub LLMs of the agents that have their own, by agent name.
    own_llms: HashMap<String, StubLlm>,
    /// The webhook receivers of the tenants besides `acme` (whose receiver is the app's), by
    /// tenant id: each verifies with its tenant's secret, as a tenant's endpoint would.
    tenant_hooks: HashMap<String, TenantHook>,
    options: FleetOptions,
    bins: Binaries,
    config: PathBuf,
    dispatcher_url: String,
    http: reqwest::Client,
}

impl Fleet {
    pub async fn start(bins: &Binaries, options: FleetOptions) -> anyhow::Result<Self> {
        let mut agents = vec![options.agent.clone()];
        agents.extend(options.others.iter().map(|o| o.spec.clone()));
        let mut app = TestApp::spawn(AppOptions {
            agents,
            workers: 0,
            behavior: Behavior {
                latency: options.latency,
                ..Behavior::default()
            },
            extra_tenants: options.tenants.clone(),
            batch_jobs: options.batch_jobs,
            // The replica's own lease, not the harness's 3 s (there to make crash tests
            // quick): with 3 s, every run of a second or more renews its lease at 1 s, and
            // a wave of runs renews together, in the middle of the wave's turnover.
            lease_secs: WorkerConfig::default().lease.as_secs(),
            ..AppOptions::default()
        })
        .await?;
        let own_llms = start_own_llms(&mut app, &options.others).await?;
        let tenant_hooks = start_tenant_hooks(&app).await?;
        let config = app.write_config_file("bench")?;
        let port = free_port()?;
        let mut command = Command::new(&bins.dispatcher);
        command.arg("--config").arg(&config).env(
            "AGENTFLEET__DISPATCHER__LISTEN",
            format!("127.0.0.1:{port}"),
        );
        let mut dispatcher = Process::spawn(
            &mut command,
            "dispatcher",
            bins.logs.join(format!("{}-dispatcher.log", app.prefix)),
        )?;
        let dispatcher_url = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()?;
        wait_ready(&http, &format!("{dispatcher_url}/readyz"), &mut dispatcher).await?;
        let mut fleet = Self {
            dispatcher,
            workers: Vec::new(),
            worker_ports: Vec::new(),
            agent: options.agent.name.clone(),
            model: options.agent.model(),
            own_llms,
            tenant_hooks,
            app,
            bins: bins.clone(),
            config,
            dispatcher_url,
            http,
            options: options.clone(),
        };
        for _ in 0..options.workers {
            fleet.start_worker().await?;
        }
        Ok(fleet)
    }

    /// Starts one more worker process and waits until it is connected; returns its pid.
    pub async fn start_worker(&mut self) -> anyhow::Result<u32> {
        let pid = self.spawn_worker()?;
        self.wait_worker_ready(self.workers.len() - 1).await?;
        Ok(pid)
    }

    /// Starts one more worker process without waiting for it.
    pub fn spawn_worker(&mut self) -> anyhow::Result<u32> {
        let port = free_port()?;
        let index = self.workers.len();
        let mut command = Command::new(&self.bins.worker);
        command
            .arg("--config")
            .arg(&self.config)
            .envs(self.app.worker_env())
            .env(
                "AGENTFLEET__WORKER__METRICS_LISTEN",
                format!("127.0.0.1:{port}"),
            )
            .env(
                "AGENTFLEET__WEBHOOKS__CONCURRENCY",
                self.options.webhook_concurrency.to_string(),
            );
        let process = Process::spawn(
            &mut command,
            &format!("worker {index}"),
            self.bins
                .logs
                .join(format!("{}-worker-{index}.log", self.app.prefix)),
        )?;
        let pid = process.child.id();
        self.workers.push(process);
        self.worker_ports.push(port);
        Ok(pid)
    }

    pub async fn wait_worker_ready(&mut self, index: usize) -> anyhow::Result<()> {
        let url = format!("http://127.0.0.1:{}/readyz", self.worker_ports[index]);
        let http = self.http.clone();
        wait_ready(&http, &url, &mut self.workers[index]).await
    }

    /// The Prometheus text of worker `index`.
    pub async fn worker_metrics(&self, index: usize) -> anyhow::Result<String> {
        let url = format!("http://127.0.0.1:{}/metrics", self.worker_ports[index]);
        Ok(self.http.get(url).send().await?.text().await?)
    }

    /// The sum over the workers of the series starting with `series` (a name, or a name and
    /// its labels) in their metrics; `None` where a worker does not export it.
    pub async fn worker_counter(&self, series: &str) -> anyhow::Result<Option<u64>> {
        let mut total = Some(0);
        for index in 0..self.worker_ports.len() {
            let counted = series_total(&self.worker_metrics(index).await?, series);
            total = total.zip(counted).map(|(sum, n)| sum + n);
        }
        Ok(total)
    }

    /// The Prometheus text of the dispatcher.
    async fn dispatcher_metrics(&self) -> anyhow::Result<String> {
        let url = format!("{}/metrics", self.dispatcher_url);
        Ok(self.http.get(url).send().await?.text().await?)
    }

    /// Redis round trips made so far by the workers (all of them) and by the dispatcher, from
    /// their `agentfleet_redis_round_trips_total`.
    pub async fn redis_round_trips(&self) -> anyhow::Result<RoundTrips> {
        let mut workers = Some(0);
        for index in 0..self.worker_ports.len() {
            let counted = round_trips_in(&self.worker_metrics(index).await?);
            workers = workers.zip(counted).map(|(sum, n)| sum + n);
        }
        let dispatcher = round_trips_in(&self.dispatcher_metrics().await?);
        Ok(RoundTrips {
            workers,
            dispatcher,
        })
    }

    /// Jobs the dispatcher accepted so far, and the messages waiting on `agent`'s queues
    /// (with no worker draining them, the messages those jobs went out in).
    pub async fn jobs_and_messages(&self, agent: &str) -> anyhow::Result<(u64, u64)> {
        let text = self.dispatcher_metrics().await?;
        let jobs = series_total(&text, "agentfleet_jobs_submitted_total{").unwrap_or(0);
        let messages = self.app.agent_queue_depth(agent).await?;
        Ok((jobs, u64::from(messages)))
    }

    pub fn dispatcher_pid(&self) -> u32 {
        self.dispatcher.child.id()
    }

    pub fn worker_pids(&self) -> Vec<u32> {
        self.workers.iter().map(|w| w.child.id()).collect()
    }

    /// Fails if a process of the fleet died.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        self.dispatcher.check_alive()?;
        for worker in &mut self.workers {
            worker.check_alive()?;
        }
        Ok(())
    }

    /// The processes whose CPU a scenario accounts for.
    pub fn cpu_groups(&self) -> Groups {
        let mut groups = Groups::standard();
        groups.add("dispatcher", self.dispatcher_pid());
        for pid in self.worker_pids() {
            groups.add("workers", pid);
        }
        groups
    }

    /// The stub LLM that `agent` calls: its own, or the fleet's.
    pub fn llm(&self, agent: &str) -> StubLlm {
        self.own_llms.get(agent).unwrap_or(&self.app.llm).clone()
    }

    /// A handle that submits jobs from spawned tasks.
    pub fn client(&self) -> Client {
        self.client_for(&self.agent)
    }

    /// A handle that submits jobs for `agent`.
    pub fn client_for(&self, agent: &str) -> Client {
        self.client_with(&self.app.acme.api_key, agent, self.app.webhook_url())
    }

    /// A handle that submits jobs for `agent` as `tenant`, each with a webhook to that
    /// tenant's receiver.
    pub fn client_as(&self, tenant: &str, agent: &str) -> anyhow::Result<Client> {
        let keys = self
            .app
            .tenants
            .iter()
            .find(|t| t.id == tenant)
            .with_context(|| format!("no tenant {tenant} in this fleet"))?;
        let webhook_url = match self.tenant_hooks.get(tenant) {
            Some(hook) => hook.url.clone(),
            None => self.app.webhook_url(),
        };
        Ok(self.client_with(&keys.api_key, agent, webhook_url))
    }

    fn client_with(&self, api_key: &str, agent: &str, webhook_url: String) -> Client {
        Client::to(
            self.http.clone(),
            format!("{}/v1/jobs", self.dispatcher_url),
            api_key,
            agent,
            webhook_url,
        )
    }

    /// Submits `n` jobs with `clients` in flight at once; fails on any refusal.
    pub async fn submit_many(&self, n: usize, clients: usize) -> anyhow::Result<Vec<Sent>> {
        self.submit_many_to(&self.agent, n, clients, |i| format!("bench job {i}"))
            .await
    }

    /// Submits `n` jobs for `agent`, job `i` with the input `input(i)`, `clients` in flight
    /// at once; fails on any refusal.
    pub async fn submit_many_to(
        &self,
        agent: &str,
        n: usize,
        clients: usize,
        input: impl Fn(usize) -> String,
    ) -> anyhow::Result<Vec<Sent>> {
        self.client_for(agent).submit_many(n, clients, input).await
    }

    /// `GET /v1/jobs/{id}` from the dispatcher process, as the tenant that submitted the job.
    pub async fn job(&self, id: &str) -> anyhow::Result<Value> {
        let response = self
            .http
            .get(format!("{}/v1/jobs/{id}", self.dispatcher_url))
            .bearer_auth(&self.app.acme.api_key)
            .send()
            .await?;
        let status = response.status();
        if !status.is_success() {
            bail!("GET job {id} answered {status}");
        }
        Ok(response.json().await?)
    }

    /// Every webhook receiver of the fleet: the app's (acme's), then the other tenants'.
    fn receivers(&self) -> impl Iterator<Item = &Receiver> {
        std::iter::once(&self.app.receiver).chain(self.tenant_hooks.values().map(|h| &h.receiver))
    }

    /// Deliveries received so far by every tenant's receiver.
    pub fn webhook_count(&self) -> usize {
        self.receivers().map(Receiver::count).sum()
    }

    /// Deliveries received so far, by job id (the first delivery of each job).
    pub fn deliveries_by_job(&self) -> HashMap<String, Delivery> {
        let mut by_job = HashMap::new();
        for d in self.receivers().flat_map(Receiver::deliveries) {
            if let Some(id) = d
                .event
                .as_ref()
                .and_then(|e| e["data"]["id"].as_str())
                .map(str::to_owned)
            {
                by_job.entry(id).or_insert(d);
            }
        }
        by_job
    }

    /// Waits until every job in `sent` has its webhook; fails if a process died meanwhile.
    pub async fn wait_webhooks_for(
        &mut self,
        baseline: usize,
        sent: usize,
        within: Duration,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        loop {
            if self.webhook_count() >= baseline + sent {
                return Ok(());
            }
            self.check_alive()?;
            if Instant::now() > deadline {
                bail!(
                    "{} of {sent} webhooks after {within:?}",
                    self.webhook_count().saturating_sub(baseline)
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// A tenant's webhook endpoint in this process.
struct TenantHook {
    receiver: Receiver,
    url: String,
}

/// Starts the stub LLMs of the agents that have their own and points those agents at them.
async fn start_own_llms(
    app: &mut TestApp,
    others: &[OtherAgent],
) -> anyhow::Result<HashMap<String, StubLlm>> {
    let mut own_llms = HashMap::new();
    for other in others {
        let Some(behavior) = &other.own_llm else {
            continue;
        };
        let llm = StubLlm::new(behavior.clone());
        let listener = agentfleet_stub::bind_loopback()?;
        let addr = agentfleet_stub::spawn_router(listener, llm.router());
        point_at(app, &other.spec, addr)?;
        own_llms.insert(other.spec.name.clone(), llm);
    }
    Ok(own_llms)
}

/// A verifying receiver for each tenant besides `acme`: a worker signs a tenant's webhooks
/// with that tenant's secret, which the app's receiver (acme's) would answer 401.
async fn start_tenant_hooks(app: &TestApp) -> anyhow::Result<HashMap<String, TenantHook>> {
    let mut hooks = HashMap::new();
    for tenant in app.tenants.iter().filter(|t| t.id != app.acme.id) {
        let receiver = Receiver::new(Some(WebhookSecret::parse(&tenant.webhook_secret)?));
        let listener = agentfleet_stub::bind_loopback()?;
        let addr = agentfleet_stub::spawn_router(listener, receiver.router());
        let url = format!("http://{addr}/hooks/{}", tenant.id);
        hooks.insert(tenant.id.clone(), TenantHook { receiver, url });
    }
    Ok(hooks)
}

/// Submits jobs to the dispatcher process.
#[derive(Clone)]
pub struct Client {
    inner: Arc<ClientInner>,
}

struct ClientInner {
    http: reqwest::Client,
    url: String,
    api_key: String,
    agent: String,
    webhook_url: String,
}

impl Client {
    /// A client of any intake that takes the dispatcher's `POST /v1/jobs` (the BullMQ peer's).
    pub fn to(
        http: reqwest::Client,
        url: String,
        api_key: &str,
        agent: &str,
        webhook_url: String,
    ) -> Self {
        Self {
            inner: Arc::new(ClientInner {
                http,
                url,
                api_key: api_key.to_owned(),
                agent: agent.to_owned(),
                webhook_url,
            }),
        }
    }

    /// POSTs job `i`; the answer's status and id (when accepted).
    pub async fn post(&self, i: usize) -> Result<(u16, Option<String>), reqwest::Error> {
        self.post_input(&format!("bench job {i}")).await
    }

    /// POSTs a job with this input; the answer's status and id (when accepted).
    async fn post_input(&self, input: &str) -> Result<(u16, Option<String>), reqwest::Error> {
        let c = &self.inner;
        let body = json!({
            "agent": c.agent,
            "input": input,
            "webhook_url": c.webhook_url,
        });
        let response = c
            .http
            .post(&c.url)
            .bearer_auth(&c.api_key)
            .json(&body)
            .send()
            .await?;
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap_or_default();
        Ok((status, body["id"].as_str().map(str::to_owned)))
    }

    /// Submits `n` jobs, job `i` with the input `input(i)`, `clients` in flight at once;
    /// fails on any refusal.
    pub async fn submit_many(
        &self,
        n: usize,
        clients: usize,
        input: impl Fn(usize) -> String,
    ) -> anyhow::Result<Vec<Sent>> {
        futures_util::stream::iter(0..n)
            .map(|i| {
                let client = self.clone();
                let input = input(i);
                async move { client.submit_input(i, &input).await }
            })
            .buffer_unordered(clients)
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect()
    }

    /// POSTs job `i` and expects a 202.
    pub async fn submit(&self, i: usize) -> anyhow::Result<Sent> {
        self.submit_input(i, &format!("bench job {i}")).await
    }

    /// POSTs job `i` with this input and expects a 202.
    pub async fn submit_input(&self, i: usize, input: &str) -> anyhow::Result<Sent> {
        let at = Instant::now();
        let wall = Utc::now();
        match self.post_input(input).await? {
            (202, Some(id)) => Ok(Sent {
                id,
                at,
                wall,
                answered: at.elapsed(),
            }),
            (status, _) => bail!("the dispatcher answered {status} to job {i}"),
        }
    }
}

/// Points `agent`'s `base_url` in the app's config at `llm` (before the config file is written).
fn point_at(app: &mut TestApp, agent: &AgentSpec, llm: SocketAddr) -> anyhow::Result<()> {
    // The harness renders `base_url` right before the agent's `model`, which is unique per agent.
    let line = |addr: SocketAddr| {
        format!(
            "base_url: \"http://{addr}/v1\"\n    model: \"{}\"",
            agent.model()
        )
    };
    let from = line(app.llm_addr);
    if !app.config_yaml.contains(&from) {
        bail!(
            "agent {} has no `{from}` in the harness's config to point elsewhere",
            agent.name
        );
    }
    app.config_yaml = app.config_yaml.replace(&from, &line(llm));
    Ok(())
}

/// A port free on loopback right now (the child binds it a moment later).
pub(crate) fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

async fn wait_ready(
    http: &reqwest::Client,
    url: &str,
    process: &mut Process,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        process.check_alive()?;
        if let Ok(response) = http.get(url).send().await {
            if response.status().is_success() {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            bail!("{} not ready within 30 s ({url})", process.name);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The `finished_at` of a delivery's job record.
pub fn finished_at(delivery: &Delivery) -> Option<DateTime<Utc>> {
    let event = delivery.event.as_ref()?;
    event["data"]["finished_at"].as_str()?.parse().ok()
}

/// Whether the delivery reports a succeeded job.
pub fn succeeded(delivery: &Delivery) -> bool {
    delivery
        .event
        .as_ref()
        .is_some_and(|e| e["type"] == "job.succeeded")
}

/// Redis round trips counted by the fleet's processes (`None` where a binary does not export
/// the counter: one built before it existed, measured for a before/after).
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct RoundTrips {
    pub workers: Option<u64>,
    pub dispatcher: Option<u64>,
}

/// The value of `agentfleet_redis_round_trips_total` in a Prometheus text, if it is there.
/// The sum of the series starting with `series` (a name, or a name and its labels) in one
/// process's metrics: 0 for a family it exports but has not counted in yet, `None` for one it
/// does not export at all (an older binary).
fn series_total(metrics: &str, series: &str) -> Option<u64> {
    let family = series.split('{').next().unwrap_or(series);
    let exported = metrics.contains(&format!("# HELP {family} "));
    exported.then(|| {
        metrics
            .lines()
            .filter_map(|line| line.strip_prefix(series))
            .filter_map(|rest| rest.rsplit(' ').next()?.parse::<f64>().ok())
            .map(|value| value as u64)
            .sum::<u64>()
    })
}

fn round_trips_in(metrics: &str) -> Option<u64> {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix("agentfleet_redis_round_trips_total "))
        .and_then(|value| value.trim().parse::<f64>().ok())
        .map(|value| value as u64)
}

#[cfg(test)]
mod series_tests {
    use super::series_total;

    #[test]
    fn a_series_is_summed_over_its_labels_and_unknown_when_not_exported() {
        let text = "# HELP agentfleet_x_total X.\n\
                    agentfleet_x_total{agent=\"a\"} 3\n\
                    agentfleet_x_total{agent=\"b\"} 4.0\n\
                    # HELP agentfleet_y_total Y.\n";
        assert_eq!(series_total(text, "agentfleet_x_total{"), Some(7));
        assert_eq!(
            series_total(text, "agentfleet_x_total{agent=\"b\"}"),
            Some(4)
        );
        assert_eq!(
            series_total(text, "agentfleet_y_total"),
            Some(0),
            "exported, not counted"
        );
        assert_eq!(
            series_total(text, "agentfleet_z_total"),
            None,
            "not exported"
        );
    }
}
