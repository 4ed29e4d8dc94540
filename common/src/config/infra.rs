//! The infrastructure a process talks to or runs on: the broker, Redis, the dispatcher's
//! listener, the worker replica, webhook delivery and telemetry.

use std::net::SocketAddr;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use url::Url;

use super::duration;
use super::validation::{check_prefix, check_url_scheme, invalid, positive};
use super::ConfigError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum QueueType {
    /// Replicated, with a delivery limit for poison messages. The default.
    #[default]
    Quorum,
    /// For brokers without quorum queues. Classic queues dead-letter at most once: a retry
    /// waiting in the delay ladder when the broker restarts can be lost (the chaos test
    /// caught it), so only quorum queues keep every accepted job.
    Classic,
}

// === impl AmqpConfig ===

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AmqpConfig {
    /// One broker node. Exactly one of `url` and `urls` is set. May hold credentials, so it
    /// is a secret: never logged.
    #[serde(default)]
    pub url: Option<SecretString>,
    /// The nodes of one cluster, tried in this order: a process connects to the first that
    /// answers and, when that connection fails or is lost, to the next after it.
    #[serde(default)]
    pub urls: Option<Vec<SecretString>>,
    #[serde(default = "default_prefix")]
    pub prefix: String,
    #[serde(default)]
    pub queue_type: QueueType,
    /// Deliveries of one message (quorum queues) before it is dead-lettered as poison.
    #[serde(default = "default_delivery_limit")]
    pub delivery_limit: u32,
    #[serde(
        rename = "connect_timeout_ms",
        with = "duration::millis",
        default = "default_connect_timeout"
    )]
    pub connect_timeout: Duration,
    /// How long a publish may wait for the broker's confirm before the caller gets 503.
    #[serde(
        rename = "publish_timeout_ms",
        with = "duration::millis",
        default = "default_publish_timeout"
    )]
    pub publish_timeout: Duration,
    /// `x-quorum-initial-group-size` of every quorum queue declared (work, delay, dead-letter
    /// and webhook queues): how many cluster nodes hold a replica. Absent: RabbitMQ's default
    /// (every node of the cluster when the queue is declared). Like `delivery_limit`, it is
    /// a queue argument: RabbitMQ refuses a declaration that differs from the existing queue's
    /// (`PRECONDITION_FAILED`, naming it), so set it before the queues exist; changing it later
    /// needs the queues re-created, or their replicas moved with `rabbitmq-queues`.
    #[serde(default)]
    pub quorum_initial_group_size: Option<u32>,
}

impl AmqpConfig {
    /// The broker nodes, in the order to try them: `urls`, or the one `url`.
    pub fn endpoints(&self) -> &[SecretString] {
        match (&self.urls, &self.url) {
            (Some(urls), _) => urls,
            (None, Some(url)) => std::slice::from_ref(url),
            (None, None) => &[],
        }
    }

    pub(super) fn validate(&self, at: &str) -> Result<(), ConfigError> {
        let key = |field: &str| format!("{at}.{field}");
        match (&self.url, &self.urls) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    key("urls"),
                    "set either `url` (one node) or `urls` (a cluster's nodes), not both",
                ))
            }
            (None, None) => {
                return Err(invalid(
                    key("url"),
                    "missing: set `url` (one node) or `urls` (a cluster's nodes)",
                ))
            }
            (Some(url), None) => {
                check_url_scheme(&key("url"), url.expose_secret(), &["amqp", "amqps"])?
            }
            (None, Some(urls)) => {
                if urls.is_empty() {
                    return Err(invalid(key("urls"), "must list at least one URL"));
                }
                for (i, url) in urls.iter().enumerate() {
                    let at = format!("{}[{i}]", key("urls"));
                    check_url_scheme(&at, url.expose_secret(), &["amqp", "amqps"])?;
                }
            }
        }
        if let Some(size) = self.quorum_initial_group_size {
            positive(&key("quorum_initial_group_size"), size)?;
        }
        check_prefix(&key("prefix"), &self.prefix)?;
        positive(&key("connect_timeout_ms"), self.connect_timeout)?;
        positive(&key("publish_timeout_ms"), self.publish_timeout)?;
        positive(&key("delivery_limit"), self.delivery_limit)
    }
}

fn default_prefix() -> String {
    "agentfleet".into()
}

fn default_delivery_limit() -> u32 {
    20
}

fn default_connect_timeout() -> Duration {
    Duration::from_millis(3_000)
}

fn default_publish_timeout() -> Duration {
    Duration::from_millis(5_000)
}

// === impl RedisConfig ===

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// One Redis server. Exactly one of `url`, `sentinel` and `cluster` is given
    /// ([`RedisConfig::topology`]). May hold credentials, so it is a secret: never logged.
    #[serde(default)]
    pub url: Option<SecretString>,
    /// A master and its replicas watched by Redis Sentinel: the master is asked of the sentinels.
    #[serde(default)]
    pub sentinel: Option<SentinelConfig>,
    /// A Redis Cluster: keys are spread over its masters by hash slot (`docs/REDIS-CLUSTER.md`).
    #[serde(default)]
    pub cluster: Option<ClusterConfig>,
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// How long job records and specs are kept; a Redis `EX` value, so whole seconds.
    #[serde(
        rename = "result_ttl_secs",
        with = "duration::secs",
        default = "default_result_ttl"
    )]
    pub result_ttl: Duration,
    /// Upper bound on one Redis command, so an outage fails requests instead of hanging them.
    #[serde(
        rename = "timeout_ms",
        with = "duration::millis",
        default = "default_redis_timeout"
    )]
    pub timeout: Duration,
    /// Replicas that must have a write that backs a promise (an accepted job, a record
    /// transition, the step log) before it counts as done: `WAIT` in the same round trip.
    /// 0, the default, waits for none (replication stays asynchronous).
    #[serde(default)]
    pub min_replicas_acked: u32,
    /// How long such a write waits for its replicas before it fails; below `timeout_ms`,
    /// which bounds the whole round trip.
    #[serde(
        rename = "wait_timeout_ms",
        with = "duration::millis",
        default = "default_wait_timeout"
    )]
    pub wait_timeout: Duration,
}

/// Where Redis is, as [`RedisConfig`] says once validated.
#[derive(Debug, Clone, Copy)]
pub enum RedisTopology<'a> {
    Single(&'a SecretString),
    Sentinel(&'a SentinelConfig),
    Cluster(&'a ClusterConfig),
}

impl RedisConfig {
    /// One server, a sentinel-watched master or a cluster; an error naming the key unless
    /// exactly one of `url`, `sentinel` and `cluster` is given.
    pub fn topology(&self, at: &str) -> Result<RedisTopology<'_>, ConfigError> {
        match (&self.url, &self.sentinel, &self.cluster) {
            (Some(url), None, None) => Ok(RedisTopology::Single(url)),
            (None, Some(sentinel), None) => Ok(RedisTopology::Sentinel(sentinel)),
            (None, None, Some(cluster)) => Ok(RedisTopology::Cluster(cluster)),
            (None, None, None) => Err(invalid(
                format!("{at}.url"),
                format!("missing: give {at}.url (one server), {at}.sentinel or {at}.cluster"),
            )),
            (_, _, cluster) => {
                // Named after the later of the two given (`url` comes first).
                let second = if cluster.is_some() {
                    "cluster"
                } else {
                    "sentinel"
                };
                Err(invalid(
                    format!("{at}.{second}"),
                    format!("give only one of {at}.url, {at}.sentinel and {at}.cluster"),
                ))
            }
        }
    }

    pub(super) fn validate(&self, at: &str) -> Result<(), ConfigError> {
        let key = |field: &str| format!("{at}.{field}");
        match self.topology(at)? {
            RedisTopology::Single(url) => {
                check_url_scheme(&key("url"), url.expose_secret(), &["redis", "rediss"])?
            }
            RedisTopology::Sentinel(sentinel) => sentinel.validate(&key("sentinel"))?,
            RedisTopology::Cluster(cluster) => cluster.validate(&key("cluster"))?,
        }
        check_prefix(&key("prefix"), &self.prefix)?;
        positive(&key("result_ttl_secs"), self.result_ttl)?;
        positive(&key("timeout_ms"), self.timeout)?;
        if self.min_replicas_acked > 0 {
            // WAIT with a timeout of 0 blocks forever.
            positive(&key("wait_timeout_ms"), self.wait_timeout)?;
            if self.wait_timeout >= self.timeout {
                return Err(invalid(
                    key("wait_timeout_ms"),
                    format!("must be shorter than {at}.timeout_ms, which bounds the whole write"),
                ));
            }
        }
        Ok(())
    }
}

fn default_result_ttl() -> Duration {
    // A week.
    Duration::from_secs(604_800)
}

fn default_redis_timeout() -> Duration {
    // Requests must fail within a second when Redis hangs.
    Duration::from_millis(800)
}

fn default_wait_timeout() -> Duration {
    // Within the default command timeout, with room for the write itself.
    Duration::from_millis(500)
}

// === impl SentinelConfig ===

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SentinelConfig {
    /// The sentinels, `redis://[[user]:password@]host:port`: each may carry its own
    /// credentials, so they are secrets. Asked in order for the master's address.
    pub urls: Vec<SecretString>,
    /// The name the sentinels monitor the master under (`sentinel monitor <name> ...`).
    pub master_name: String,
    /// The master's credentials (the sentinels' own are in `urls`).
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<SecretString>,
    #[serde(default)]
    pub db: u16,
}

impl SentinelConfig {
    fn validate(&self, at: &str) -> Result<(), ConfigError> {
        if self.urls.is_empty() {
            return Err(invalid(
                format!("{at}.urls"),
                "must name at least one sentinel",
            ));
        }
        for (i, url) in self.urls.iter().enumerate() {
            // This build talks to sentinels without TLS (the client's TLS features are off).
            check_url_scheme(&format!("{at}.urls[{i}]"), url.expose_secret(), &["redis"])?;
        }
        let name_ok = !self.master_name.is_empty()
            && !self
                .master_name
                .chars()
                .any(|c| c.is_whitespace() || c.is_control());
        if !name_ok {
            return Err(invalid(
                format!("{at}.master_name"),
                "must be a non-empty name without spaces",
            ));
        }
        if self
            .password
            .as_ref()
            .is_some_and(|p| p.expose_secret().is_empty())
        {
            return Err(invalid(
                format!("{at}.password"),
                "must not be empty when given",
            ));
        }
        Ok(())
    }
}

// === impl ClusterConfig ===

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// Some of the cluster's nodes, `redis://[[user]:password@]host:port`: the client asks the
    /// first that answers for the slot map and finds the others from it, so a few suffice.
    /// Secrets (they may carry the password), never logged.
    pub nodes: Vec<SecretString>,
}

impl ClusterConfig {
    fn validate(&self, at: &str) -> Result<(), ConfigError> {
        let Some(first) = self.nodes.first() else {
            return Err(invalid(
                format!("{at}.nodes"),
                "must name at least one node",
            ));
        };
        let login = |url: &Url| (url.username().to_owned(), url.password().map(str::to_owned));
        let first_login = Url::parse(first.expose_secret()).ok().map(|u| login(&u));
        for (i, node) in self.nodes.iter().enumerate() {
            let key = format!("{at}.nodes[{i}]");
            // This build talks to Redis without TLS (the client's TLS features are off).
            check_url_scheme(&key, node.expose_secret(), &["redis"])?;
            let url = Url::parse(node.expose_secret())
                .map_err(|e| invalid(&key, format!("not a URL ({e})")))?;
            if url.host_str().is_none_or(str::is_empty) {
                return Err(invalid(key, "must name a host"));
            }
            if !matches!(url.path(), "" | "/" | "/0") {
                return Err(invalid(key, "a cluster has only database 0"));
            }
            // The client logs in to every node it discovers with one set of credentials.
            if first_login.as_ref() != Some(&login(&url)) {
                return Err(invalid(
                    key,
                    "every node must carry the same credentials as the first",
                ));
            }
        }
        Ok(())
    }
}

// === impl DispatcherConfig ===

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DispatcherConfig {
    pub listen: SocketAddr,
    pub max_body_bytes: usize,
    /// Submissions per API key that one dispatcher replica takes, in process (`governor`):
    /// a flood from one key is refused with 429 before it reaches Redis or the broker, so it
    /// cannot monopolise the replica. Off when absent. Fleet-wide quotas are per tenant
    /// (`tenants[].quotas`).
    pub per_key_rate: Option<BurstConfig>,
    /// How long one API request (`/v1/...`) may take before it is answered 503 `timeout`
    /// with `Retry-After`. A submission that got as far as claiming its Idempotency-Key or
    /// storing its record still finishes (or undoes itself) after that answer, so a retry
    /// with the same key finds what happened. `/healthz`, `/readyz` and `/metrics` bound
    /// themselves.
    #[serde(rename = "request_timeout_ms", with = "duration::millis")]
    pub request_timeout: Duration,
    /// API requests this replica serves at once; one more is answered 503 `busy` with
    /// `Retry-After: 1` at once (shed, never queued). `/healthz`, `/readyz` and `/metrics`
    /// are outside the limit, so probes and scrapes still answer under load.
    pub max_concurrent_requests: u32,
    /// The audit trail of API calls.
    pub audit: AuditConfig,
    /// How long a stopping replica (SIGTERM) takes at most: requests in flight are answered
    /// within it, less the part kept for closing the broker connection (see
    /// [`crate::shutdown::Grace`]); connections still open then are dropped.
    #[serde(rename = "shutdown_grace_secs", with = "duration::secs")]
    pub shutdown_grace: Duration,
    /// Group commit: the jobs of one queue accepted while its previous publish awaits its
    /// confirm go out as one message (agents with per-tenant fairness; see the dispatcher's
    /// `publish`). On by default: workers have understood batches since the release before
    /// the one that turned it on (readers first, then writers). A worker older than that
    /// dead-letters a batch: a fleet upgrading from such a build keeps it off until every
    /// worker runs a newer one, and turns it off and lets the queues drain before rolling
    /// workers back below it. Read at start (a reload keeps it).
    pub batch_jobs: bool,
    /// Threads of the replica's async runtime. One by default: a request is I/O around ~40 µs
    /// of CPU, so one thread serves ~20,000 submissions a second, and a second thread on a
    /// small machine shared with Redis, the broker and the workers mostly adds wake-ups from
    /// one thread to the other (scenario 4 took 4–18% more POSTs/s with one than with two on
    /// two cores, in four runs pairing them; see docs/BENCHMARKS.md). Raise it with the
    /// replica's CPU, or add replicas.
    /// Read at start (a reload keeps it).
    pub runtime_threads: u16,
}

/// Where the dispatcher's audit records go besides their log target (`agentfleet::audit`).
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuditConfig {
    /// Also add each record to the tenant's Redis stream `{prefix}:audit:{t:<tenant>}`.
    pub redis_stream: bool,
    /// Records a tenant's stream keeps, about (trimmed with `MAXLEN ~`).
    pub max_entries: u32,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            redis_stream: true,
            max_entries: 10_000,
        }
    }
}

impl Default for DispatcherConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            max_body_bytes: 1_048_576,
            per_key_rate: None,
            request_timeout: Duration::from_millis(10_000),
            max_concurrent_requests: 1024,
            audit: AuditConfig::default(),
            shutdown_grace: Duration::from_secs(15),
            batch_jobs: true,
            runtime_threads: 1,
        }
    }
}

/// A per-replica rate: `per_second` sustained, `burst` at once.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BurstConfig {
    pub per_second: u32,
    pub burst: u32,
}

impl BurstConfig {
    fn validate(&self, at: &str) -> Result<(), ConfigError> {
        positive(&format!("{at}.per_second"), self.per_second)?;
        positive(&format!("{at}.burst"), self.burst)
    }
}

impl DispatcherConfig {
    pub(super) fn validate(&self, at: &str) -> Result<(), ConfigError> {
        if self.max_body_bytes < 64 {
            return Err(invalid(
                format!("{at}.max_body_bytes"),
                "must be at least 64 bytes",
            ));
        }
        if let Some(rate) = &self.per_key_rate {
            rate.validate(&format!("{at}.per_key_rate"))?;
        }
        positive(&format!("{at}.request_timeout_ms"), self.request_timeout)?;
        positive(&format!("{at}.shutdown_grace_secs"), self.shutdown_grace)?;
        positive(&format!("{at}.audit.max_entries"), self.audit.max_entries)?;
        positive(&format!("{at}.runtime_threads"), self.runtime_threads)?;
        positive(
            &format!("{at}.max_concurrent_requests"),
            self.max_concurrent_requests,
        )
    }
}

// === impl WorkerConfig ===

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorkerConfig {
    pub metrics_listen: SocketAddr,
    /// Agents this replica serves; `"*"` means all configured agents.
    pub agents: Vec<String>,
    /// How long a stopping replica (SIGTERM) takes at most: its runs may finish within it,
    /// less the part kept for giving the rest back and closing (see
    /// [`crate::shutdown::Grace`]).
    #[serde(rename = "shutdown_grace_secs", with = "duration::secs")]
    pub shutdown_grace: Duration,
    /// How long a run's lease on its job lasts without renewal (renewed every third of it).
    /// A crashed worker's jobs wait this long before another worker may take them.
    #[serde(rename = "lease_secs", with = "duration::secs")]
    pub lease: Duration,
    /// The longest a run waits for a rate-limit turn (or a provider's pause) while holding its
    /// call slot and lease; a longer wait goes back through the delay queues, holding nothing,
    /// and the record says why and until when. Request turns are reserved for the run (it
    /// comes back at its own turn); token-limited runs ask again when they come back, since
    /// a turn reserved at the estimated cost would pace them at their estimates.
    #[serde(rename = "max_limit_hold_ms", with = "duration::millis")]
    pub max_limit_hold: Duration,
    /// How often a run waiting for budget asks again (at the latest, when the budget's period
    /// resets): a budget raised meanwhile resumes it within this long.
    #[serde(rename = "budget_recheck_secs", with = "duration::secs")]
    pub budget_recheck: Duration,
    /// A PEM file of certificate authorities trusted for providers and tools besides the
    /// public roots: a private CA in front of an internal model server or tool. Never for
    /// tenants' webhook URLs.
    pub extra_ca_file: Option<std::path::PathBuf>,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            metrics_listen: SocketAddr::from(([127, 0, 0, 1], 9091)),
            agents: vec!["*".into()],
            shutdown_grace: Duration::from_secs(30),
            lease: Duration::from_secs(15),
            max_limit_hold: Duration::from_secs(30),
            budget_recheck: Duration::from_secs(60),
            extra_ca_file: None,
        }
    }
}

impl WorkerConfig {
    /// Checks the replica on its own; whether the agents it names exist is checked by
    /// [`super::Config::validate`], which sees them.
    pub(super) fn validate(&self, at: &str) -> Result<(), ConfigError> {
        if self.lease < Duration::from_secs(3) {
            return Err(invalid(format!("{at}.lease_secs"), "must be at least 3"));
        }
        positive(&format!("{at}.budget_recheck_secs"), self.budget_recheck)?;
        if self.agents.is_empty() {
            return Err(invalid(
                format!("{at}.agents"),
                "list the agents to serve, or \"*\" for all",
            ));
        }
        Ok(())
    }
}

// === impl WebhookConfig ===

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhookConfig {
    /// Bound on one delivery attempt.
    #[serde(rename = "timeout_secs", with = "duration::secs")]
    pub timeout: Duration,
    /// Deliveries in flight per worker replica, separate from any agent's concurrency.
    pub concurrency: u16,
    /// The first attempt is made by the run that ended the job, right after storing it (no
    /// trip through the webhook queue), bounded by this and by `timeout_secs`; a failed or
    /// slower first attempt goes to the webhook queue as attempt 1. 0 turns it off.
    #[serde(rename = "inline_timeout_ms", with = "duration::millis")]
    pub inline_timeout: Duration,
    /// Inline first attempts in flight per worker replica, over every agent; each agent also
    /// has room only for as many as its delivery window holds beyond its call slots (half
    /// its `concurrency`). A run that finds no room within 20 ms hands its event to the
    /// webhook queue.
    pub inline_concurrency: u16,
    /// Delay before each retry of a failed delivery; its length is the number of retries.
    #[serde(rename = "retry_schedule_secs", with = "duration::secs_list")]
    pub retry_schedule: Vec<Duration>,
    /// Allow webhook URLs that resolve to loopback, private or link-local addresses.
    /// Off in production (SSRF guard); on for local demos and tests.
    pub allow_private_networks: bool,
    /// Static host entries for webhook URLs, consulted before DNS (as `/etc/hosts` would
    /// be): `{ "hooks.example.com": "203.0.113.7" }`. The SSRF guard still applies to the
    /// address, so an entry cannot open a way to a private network.
    pub hosts: std::collections::BTreeMap<String, std::net::IpAddr>,
    /// Deliveries per receiver host that one worker replica makes (in process, `governor`):
    /// one slow or flooded receiver cannot take every delivery slot. A delivery over it waits
    /// in the delay queues, holding nothing, and keeps its attempt count. Off when absent.
    pub per_host_rate: Option<BurstConfig>,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(10),
            concurrency: 32,
            inline_timeout: Duration::from_millis(1_000),
            inline_concurrency: 256,
            // The Standard Webhooks recommendation: 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h.
            retry_schedule: [5, 300, 1_800, 7_200, 18_000, 36_000, 36_000]
                .map(Duration::from_secs)
                .to_vec(),
            allow_private_networks: false,
            hosts: std::collections::BTreeMap::new(),
            per_host_rate: None,
        }
    }
}

impl WebhookConfig {
    pub(super) fn validate(&self, at: &str) -> Result<(), ConfigError> {
        positive(&format!("{at}.timeout_secs"), self.timeout)?;
        if let Some(rate) = &self.per_host_rate {
            rate.validate(&format!("{at}.per_host_rate"))?;
        }
        positive(&format!("{at}.concurrency"), self.concurrency)
    }
}

// === impl TelemetryConfig ===

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    #[default]
    Json,
    Pretty,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetryConfig {
    /// A `tracing` filter directive, e.g. `info` or `agentfleet_worker=debug,info`.
    pub log_level: String,
    pub log_format: LogFormat,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            log_level: "info".into(),
            log_format: LogFormat::Json,
        }
    }
}

impl TelemetryConfig {
    pub(super) fn validate(&self, at: &str) -> Result<(), ConfigError> {
        tracing_subscriber::EnvFilter::try_new(&self.log_level)
            .map(drop)
            .map_err(|e| invalid(format!("{at}.log_level"), e.to_string()))
    }
}
