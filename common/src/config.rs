//! One typed configuration, loaded once: a YAML file, then `AGENTFLEET__SECTION__KEY`
//! environment overrides, then validation that names the offending key. Secrets are never in
//! the file: the file names the environment variables that hold them, and only the process
//! that needs a secret resolves it (see [`Config::secrets`]).

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use url::Url;

use crate::naming::Names;
use crate::signing::WebhookSecret;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot load configuration: {0}")]
    Load(#[from] config::ConfigError),
    #[error("invalid configuration at `{key}`: {reason}")]
    Invalid { key: String, reason: String },
}

impl ConfigError {
    fn invalid(key: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Invalid {
            key: key.into(),
            reason: reason.into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub amqp: AmqpConfig,
    pub redis: RedisConfig,
    #[serde(default)]
    pub dispatcher: DispatcherConfig,
    #[serde(default)]
    pub worker: WorkerConfig,
    #[serde(default)]
    pub webhooks: WebhookConfig,
    #[serde(default)]
    pub telemetry: TelemetryConfig,
    #[serde(default)]
    pub tenants: Vec<TenantConfig>,
    pub agents: BTreeMap<String, AgentConfig>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum QueueType {
    /// Replicated, with a delivery limit for poison messages. The default.
    #[default]
    Quorum,
    /// For brokers without quorum queues.
    Classic,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AmqpConfig {
    /// May hold credentials, so it is a secret: never logged.
    pub url: SecretString,
    #[serde(default = "default_prefix")]
    pub prefix: String,
    #[serde(default)]
    pub queue_type: QueueType,
    /// Deliveries of one message (quorum queues) before it is dead-lettered as poison.
    #[serde(default = "default_delivery_limit")]
    pub delivery_limit: u32,
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// How long a publish may wait for the broker's confirm before the caller gets 503.
    #[serde(default = "default_publish_timeout_ms")]
    pub publish_timeout_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    pub url: SecretString,
    #[serde(default = "default_prefix")]
    pub prefix: String,
    #[serde(default = "default_result_ttl_secs")]
    pub result_ttl_secs: u64,
    /// Upper bound on one Redis command, so an outage fails requests instead of hanging them.
    #[serde(default = "default_redis_timeout_ms")]
    pub timeout_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DispatcherConfig {
    #[serde(default = "default_dispatcher_listen")]
    pub listen: SocketAddr,
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
}

impl Default for DispatcherConfig {
    fn default() -> Self {
        Self {
            listen: default_dispatcher_listen(),
            max_body_bytes: default_max_body_bytes(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerConfig {
    #[serde(default = "default_metrics_listen")]
    pub metrics_listen: SocketAddr,
    /// Agents this replica serves; `"*"` means all configured agents.
    #[serde(default = "default_worker_agents")]
    pub agents: Vec<String>,
    #[serde(default = "default_shutdown_grace_secs")]
    pub shutdown_grace_secs: u64,
    /// How long a run's lease on its job lasts without renewal (renewed every third of it).
    /// A crashed worker's jobs wait this long before another worker may take them.
    #[serde(default = "default_lease_secs")]
    pub lease_secs: u64,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            metrics_listen: default_metrics_listen(),
            agents: default_worker_agents(),
            shutdown_grace_secs: default_shutdown_grace_secs(),
            lease_secs: default_lease_secs(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    #[serde(default = "default_webhook_timeout_secs")]
    pub timeout_secs: u64,
    /// Deliveries in flight per worker replica, separate from any agent's concurrency.
    #[serde(default = "default_webhook_concurrency")]
    pub concurrency: u16,
    /// Delay before each retry of a failed delivery; its length is the number of retries.
    #[serde(default = "default_webhook_retry_schedule")]
    pub retry_schedule_secs: Vec<u64>,
    /// Allow webhook URLs that resolve to loopback, private or link-local addresses.
    /// Off in production (SSRF guard); on for local demos and tests.
    #[serde(default)]
    pub allow_private_networks: bool,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        Self {
            timeout_secs: default_webhook_timeout_secs(),
            concurrency: default_webhook_concurrency(),
            retry_schedule_secs: default_webhook_retry_schedule(),
            allow_private_networks: false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    #[default]
    Json,
    Pretty,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    /// A `tracing` filter directive, e.g. `info` or `agentfleet_worker=debug,info`.
    #[serde(default = "default_log_level")]
    pub log_level: String,
    #[serde(default)]
    pub log_format: LogFormat,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            log_level: default_log_level(),
            log_format: LogFormat::Json,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantConfig {
    pub id: String,
    /// Hex SHA-256 of the tenant's bearer token; the token itself is never configured.
    pub api_key_sha256: String,
    /// Environment variable holding the tenant's `whsec_…` webhook signing secret.
    #[serde(default)]
    pub webhook_secret_env: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProviderKind {
    /// Any OpenAI-compatible `/chat/completions`: OpenAI, vLLM, Ollama, LiteLLM…
    Openai,
}

/// The prefetch of an agent with `concurrency` call slots; see
/// [`AgentConfig::delivery_window`].
pub fn delivery_window(concurrency: u16) -> u16 {
    concurrency.saturating_add(concurrency.div_ceil(4))
}

/// How a worker speaks HTTP to an agent's provider.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HttpVersion {
    /// Over https, HTTP/2 when the server offers it (ALPN), else HTTP/1.1; over http, HTTP/1.1.
    #[default]
    Auto,
    /// HTTP/1.1 only: one connection per call in flight.
    Http1,
    /// HTTP/2 only, also over plain http (prior knowledge): every call in flight shares one
    /// connection, up to the server's limit on concurrent streams.
    Http2,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    pub requests_per_minute: u32,
    #[serde(default)]
    pub tokens_per_minute: Option<u32>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    /// Attempts in all, the first included.
    #[serde(default = "default_retry_attempts")]
    pub attempts: u32,
    #[serde(default = "default_retry_max_delay_secs")]
    pub max_delay_secs: u64,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            attempts: default_retry_attempts(),
            max_delay_secs: default_retry_max_delay_secs(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CircuitBreakerConfig {
    /// Consecutive retryable failures of an endpoint that open the circuit.
    #[serde(default = "default_failure_threshold")]
    pub failure_threshold: u32,
    /// How long the circuit stays open before one probe call is let through.
    #[serde(default = "default_cooldown_secs")]
    pub cooldown_secs: u64,
}

impl Default for CircuitBreakerConfig {
    fn default() -> Self {
        Self {
            failure_threshold: default_failure_threshold(),
            cooldown_secs: default_cooldown_secs(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    pub provider: ProviderKind,
    pub base_url: Url,
    /// Environment variable holding the provider's API key, when it needs one.
    #[serde(default)]
    pub api_key_env: Option<String>,
    pub model: String,
    #[serde(default)]
    pub system_prompt: Option<String>,
    #[serde(default = "default_max_tokens")]
    pub max_tokens: u32,
    /// Provider calls of this agent in flight per worker replica. The queue prefetch is a
    /// quarter more, so runs that are finishing do not hold up the next calls.
    #[serde(default = "default_concurrency")]
    pub concurrency: u16,
    #[serde(default)]
    pub http_version: HttpVersion,
    #[serde(default)]
    pub rate_limit: Option<RateLimitConfig>,
    /// Deadline of a whole run: admission, every attempt and the waits between them. A job
    /// may lower it with its own `timeout_secs`.
    #[serde(default = "default_timeout_secs")]
    pub timeout_secs: u64,
    /// Bound on one provider HTTP call (default: `timeout_secs`).
    #[serde(default)]
    pub request_timeout_secs: Option<u64>,
    #[serde(default)]
    pub retry: RetryConfig,
    #[serde(default)]
    pub circuit_breaker: CircuitBreakerConfig,
    /// Ready messages in the agent's queue above which new jobs are refused with 429.
    #[serde(default)]
    pub max_queue_depth: Option<u32>,
}

impl AgentConfig {
    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout_secs)
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.request_timeout_secs.unwrap_or(self.timeout_secs))
    }

    /// How many deliveries of this agent's queue a worker replica holds at once (its
    /// prefetch): the call slots plus a quarter more, so the runs that are finishing (storing
    /// results, handing off webhooks) do not keep the next calls waiting for the broker.
    pub fn delivery_window(&self) -> u16 {
        delivery_window(self.concurrency)
    }
}

/// Secrets resolved from the environment by the process that needs them.
#[derive(Clone, Default)]
pub struct Secrets {
    pub webhook: HashMap<String, WebhookSecret>,
    pub provider_keys: HashMap<String, SecretString>,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secrets")
            .field("webhook_tenants", &self.webhook.keys().collect::<Vec<_>>())
            .field(
                "provider_agents",
                &self.provider_keys.keys().collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Config {
    /// Loads the YAML file at `path`, applies `AGENTFLEET__SECTION__KEY` overrides from the
    /// process environment, and validates.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let source = config::Config::builder()
            .add_source(config::File::from(path).format(config::FileFormat::Yaml))
            .add_source(environment_overrides());
        Self::build(source)
    }

    /// Parses and validates a YAML document, with no environment overrides (tests, tools).
    pub fn from_yaml(yaml: &str) -> Result<Self, ConfigError> {
        let source = config::Config::builder()
            .add_source(config::File::from_str(yaml, config::FileFormat::Yaml));
        Self::build(source)
    }

    fn build(
        source: config::ConfigBuilder<config::builder::DefaultState>,
    ) -> Result<Self, ConfigError> {
        let config: Self = source.build()?.try_deserialize()?;
        config.validate()?;
        Ok(config)
    }

    pub fn names(&self) -> Names {
        Names::new(&self.amqp.prefix, &self.redis.prefix)
    }

    /// The agents a worker replica serves, in a stable order.
    pub fn served_agents(&self) -> Vec<String> {
        if self.worker.agents.iter().any(|a| a == "*") {
            self.agents.keys().cloned().collect()
        } else {
            let mut agents = self.worker.agents.clone();
            agents.sort();
            agents.dedup();
            agents
        }
    }

    /// Resolves the secrets the worker needs: every tenant's webhook secret and every
    /// agent's provider key. `lookup` is the environment (`std::env::var` in production).
    pub fn secrets(&self, lookup: impl Fn(&str) -> Option<String>) -> Result<Secrets, ConfigError> {
        let mut secrets = Secrets::default();
        for (i, tenant) in self.tenants.iter().enumerate() {
            let Some(var) = &tenant.webhook_secret_env else {
                continue;
            };
            let key = format!("tenants[{i}].webhook_secret_env");
            let value = lookup(var).ok_or_else(|| {
                ConfigError::invalid(&key, format!("environment variable {var} is not set"))
            })?;
            let secret = WebhookSecret::parse(&value).map_err(|e| {
                ConfigError::invalid(&key, format!("environment variable {var}: {e}"))
            })?;
            secrets.webhook.insert(tenant.id.clone(), secret);
        }
        for (name, agent) in &self.agents {
            let Some(var) = &agent.api_key_env else {
                continue;
            };
            let key = format!("agents.{name}.api_key_env");
            let value = lookup(var).ok_or_else(|| {
                ConfigError::invalid(&key, format!("environment variable {var} is not set"))
            })?;
            if value.trim().is_empty() {
                return Err(ConfigError::invalid(
                    &key,
                    format!("environment variable {var} is empty"),
                ));
            }
            secrets
                .provider_keys
                .insert(name.clone(), SecretString::from(value));
        }
        Ok(secrets)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        check_url_scheme(
            "amqp.url",
            self.amqp.url.expose_secret(),
            &["amqp", "amqps"],
        )?;
        check_url_scheme(
            "redis.url",
            self.redis.url.expose_secret(),
            &["redis", "rediss"],
        )?;
        check_prefix("amqp.prefix", &self.amqp.prefix)?;
        check_prefix("redis.prefix", &self.redis.prefix)?;
        positive("redis.result_ttl_secs", self.redis.result_ttl_secs)?;
        positive("redis.timeout_ms", self.redis.timeout_ms)?;
        positive("amqp.connect_timeout_ms", self.amqp.connect_timeout_ms)?;
        positive("amqp.publish_timeout_ms", self.amqp.publish_timeout_ms)?;
        positive("amqp.delivery_limit", u64::from(self.amqp.delivery_limit))?;
        if self.dispatcher.max_body_bytes < 64 {
            return Err(ConfigError::invalid(
                "dispatcher.max_body_bytes",
                "must be at least 64 bytes",
            ));
        }
        positive("webhooks.timeout_secs", self.webhooks.timeout_secs)?;
        if self.worker.lease_secs < 3 {
            return Err(ConfigError::invalid(
                "worker.lease_secs",
                "must be at least 3",
            ));
        }
        positive("webhooks.concurrency", u64::from(self.webhooks.concurrency))?;
        tracing_subscriber::EnvFilter::try_new(&self.telemetry.log_level)
            .map_err(|e| ConfigError::invalid("telemetry.log_level", e.to_string()))?;

        if self.agents.is_empty() {
            return Err(ConfigError::invalid(
                "agents",
                "at least one agent is required",
            ));
        }
        for (name, agent) in &self.agents {
            validate_agent(name, agent)?;
        }
        if self.worker.agents.is_empty() {
            return Err(ConfigError::invalid(
                "worker.agents",
                "list the agents to serve, or \"*\" for all",
            ));
        }
        for (i, agent) in self.worker.agents.iter().enumerate() {
            if agent != "*" && !self.agents.contains_key(agent) {
                return Err(ConfigError::invalid(
                    format!("worker.agents[{i}]"),
                    format!("unknown agent `{agent}`"),
                ));
            }
        }

        let mut tenant_ids = std::collections::HashSet::new();
        let mut key_hashes = std::collections::HashSet::new();
        for (i, tenant) in self.tenants.iter().enumerate() {
            check_identifier(&format!("tenants[{i}].id"), &tenant.id)?;
            if !tenant_ids.insert(tenant.id.as_str()) {
                return Err(ConfigError::invalid(
                    format!("tenants[{i}].id"),
                    format!("duplicate tenant `{}`", tenant.id),
                ));
            }
            let key = format!("tenants[{i}].api_key_sha256");
            let hash = parse_sha256_hex(&tenant.api_key_sha256).ok_or_else(|| {
                ConfigError::invalid(&key, "must be 64 hex characters (a SHA-256)")
            })?;
            if !key_hashes.insert(hash) {
                return Err(ConfigError::invalid(key, "two tenants share this API key"));
            }
        }
        Ok(())
    }
}

fn validate_agent(name: &str, agent: &AgentConfig) -> Result<(), ConfigError> {
    let key = |field: &str| format!("agents.{name}.{field}");
    check_identifier(&format!("agents.{name}"), name)?;
    if !matches!(agent.base_url.scheme(), "http" | "https") {
        return Err(ConfigError::invalid(
            key("base_url"),
            "must be an http(s) URL",
        ));
    }
    if agent.model.trim().is_empty() {
        return Err(ConfigError::invalid(key("model"), "must not be empty"));
    }
    positive(&key("max_tokens"), u64::from(agent.max_tokens))?;
    positive(&key("concurrency"), u64::from(agent.concurrency))?;
    positive(&key("timeout_secs"), agent.timeout_secs)?;
    positive(&key("retry.attempts"), u64::from(agent.retry.attempts))?;
    positive(&key("retry.max_delay_secs"), agent.retry.max_delay_secs)?;
    if let Some(secs) = agent.request_timeout_secs {
        positive(&key("request_timeout_secs"), secs)?;
    }
    positive(
        &key("circuit_breaker.failure_threshold"),
        u64::from(agent.circuit_breaker.failure_threshold),
    )?;
    positive(
        &key("circuit_breaker.cooldown_secs"),
        agent.circuit_breaker.cooldown_secs,
    )?;
    if let Some(depth) = agent.max_queue_depth {
        positive(&key("max_queue_depth"), u64::from(depth))?;
    }
    if let Some(limit) = &agent.rate_limit {
        positive(
            &key("rate_limit.requests_per_minute"),
            u64::from(limit.requests_per_minute),
        )?;
        if let Some(tpm) = limit.tokens_per_minute {
            positive(&key("rate_limit.tokens_per_minute"), u64::from(tpm))?;
        }
    }
    Ok(())
}

fn environment_overrides() -> config::Environment {
    config::Environment::with_prefix("AGENTFLEET")
        .separator("__")
        .try_parsing(true)
        .list_separator(",")
        .with_list_parse_key("worker.agents")
}

fn positive(key: &str, value: u64) -> Result<(), ConfigError> {
    if value == 0 {
        Err(ConfigError::invalid(key, "must be greater than zero"))
    } else {
        Ok(())
    }
}

fn check_url_scheme(key: &str, raw: &str, schemes: &[&str]) -> Result<(), ConfigError> {
    // The error never echoes the URL: it may carry a password.
    let url = Url::parse(raw).map_err(|e| ConfigError::invalid(key, format!("not a URL ({e})")))?;
    if schemes.contains(&url.scheme()) {
        Ok(())
    } else {
        Err(ConfigError::invalid(
            key,
            format!("scheme must be one of {}", schemes.join(", ")),
        ))
    }
}

/// Prefixes become parts of queue and key names: keep them to a safe alphabet.
fn check_prefix(key: &str, prefix: &str) -> Result<(), ConfigError> {
    let ok = !prefix.is_empty()
        && prefix.len() <= 64
        && prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(ConfigError::invalid(
            key,
            "must be 1-64 characters of letters, digits, '-', '_' or '.'",
        ))
    }
}

/// Agent and tenant names appear in queue names, keys and metric labels.
pub fn is_identifier(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_'))
        && s.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
}

fn check_identifier(key: &str, value: &str) -> Result<(), ConfigError> {
    if is_identifier(value) {
        Ok(())
    } else {
        Err(ConfigError::invalid(
            key,
            "must be 1-63 characters of lowercase letters, digits, '-' or '_', starting with a letter or digit",
        ))
    }
}

pub fn parse_sha256_hex(s: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(s.trim(), &mut out).ok()?;
    Some(out)
}

fn default_prefix() -> String {
    "agentfleet".into()
}
fn default_delivery_limit() -> u32 {
    20
}
fn default_connect_timeout_ms() -> u64 {
    3_000
}
fn default_publish_timeout_ms() -> u64 {
    5_000
}
fn default_result_ttl_secs() -> u64 {
    604_800
}
fn default_redis_timeout_ms() -> u64 {
    // Requests must fail within a second when Redis hangs.
    800
}
fn default_dispatcher_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}
fn default_max_body_bytes() -> usize {
    1_048_576
}
fn default_metrics_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9091))
}
fn default_worker_agents() -> Vec<String> {
    vec!["*".into()]
}
fn default_shutdown_grace_secs() -> u64 {
    30
}
fn default_lease_secs() -> u64 {
    15
}
fn default_failure_threshold() -> u32 {
    5
}
fn default_cooldown_secs() -> u64 {
    30
}
fn default_webhook_timeout_secs() -> u64 {
    10
}
fn default_webhook_concurrency() -> u16 {
    32
}
fn default_webhook_retry_schedule() -> Vec<u64> {
    // The Standard Webhooks recommendation: 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h.
    vec![5, 300, 1_800, 7_200, 18_000, 36_000, 36_000]
}
fn default_log_level() -> String {
    "info".into()
}
fn default_max_tokens() -> u32 {
    512
}
fn default_concurrency() -> u16 {
    16
}
fn default_timeout_secs() -> u64 {
    60
}
fn default_retry_attempts() -> u32 {
    3
}
fn default_retry_max_delay_secs() -> u64 {
    30
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY_HASH: &str = "2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae";

    fn yaml(extra_agent: &str) -> String {
        format!(
            r#"
amqp: {{ url: "amqp://guest:guest@127.0.0.1:5672/%2f", prefix: "t1" }}
redis: {{ url: "redis://127.0.0.1:6379/0", prefix: "t1" }}
tenants:
  - id: acme
    api_key_sha256: "{KEY_HASH}"
    webhook_secret_env: ACME_SECRET
agents:
  summarize:
    provider: openai
    base_url: "http://127.0.0.1:8000/v1"
    model: "m"
    {extra_agent}
"#
        )
    }

    #[test]
    fn loads_defaults() {
        let config = Config::from_yaml(&yaml("")).expect("valid");
        let agent = &config.agents["summarize"];
        assert_eq!(agent.concurrency, 16);
        assert_eq!(agent.retry.attempts, 3);
        assert_eq!(config.dispatcher.max_body_bytes, 1_048_576);
        assert_eq!(config.served_agents(), vec!["summarize".to_string()]);
        assert_eq!(agent.http_version, HttpVersion::Auto);
        assert_eq!(agent.delivery_window(), 20);
    }

    #[test]
    fn http_version_is_one_of_three() {
        let config = Config::from_yaml(&yaml("http_version: http2")).expect("valid");
        assert_eq!(config.agents["summarize"].http_version, HttpVersion::Http2);
        let err = Config::from_yaml(&yaml("http_version: http3")).expect_err("invalid");
        let text = err.to_string();
        assert!(
            text.contains("http3") && text.contains("agents.summarize"),
            "{err}"
        );
    }

    #[test]
    fn invalid_values_name_their_key() {
        let err = Config::from_yaml(&yaml("concurrency: 0")).expect_err("invalid");
        assert!(
            err.to_string().contains("agents.summarize.concurrency"),
            "{err}"
        );
        let err = Config::from_yaml(&yaml("rate_limit: { requests_per_minute: 0 }"))
            .expect_err("invalid");
        assert!(
            err.to_string()
                .contains("agents.summarize.rate_limit.requests_per_minute"),
            "{err}"
        );
        let err = Config::from_yaml(&yaml("concurency: 3")).expect_err("typo");
        assert!(err.to_string().contains("concurency"), "{err}");
        let err = Config::from_yaml(&yaml("timeout_secs: soon")).expect_err("type");
        assert!(err.to_string().contains("timeout_secs"), "{err}");
    }

    #[test]
    fn bad_tenant_hash_is_rejected() {
        let bad = yaml("").replace(KEY_HASH, "nothex");
        let err = Config::from_yaml(&bad).expect_err("invalid");
        assert!(
            err.to_string().contains("tenants[0].api_key_sha256"),
            "{err}"
        );
    }

    #[test]
    fn secrets_come_from_the_lookup_and_never_print() {
        let config = Config::from_yaml(&yaml("")).expect("valid");
        let err = config.secrets(|_| None).expect_err("missing");
        assert!(err.to_string().contains("ACME_SECRET"), "{err}");
        let secrets = config
            .secrets(|_| Some("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into()))
            .expect("resolved");
        assert!(secrets.webhook.contains_key("acme"));
        assert!(!format!("{secrets:?}").contains("MfKQ"));
        assert!(!format!("{:?}", config.amqp).contains("guest:guest"));
    }

    #[test]
    fn identifiers_are_safe_for_names() {
        assert!(is_identifier("summarize-v2"));
        assert!(!is_identifier("Summarize"));
        assert!(!is_identifier("a.b"));
        assert!(!is_identifier(""));
        assert!(!is_identifier("-x"));
    }
}
