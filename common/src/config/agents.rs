//! The agents: which provider and model each one calls, and how hard — concurrency, rate
//! limits, deadlines, retries and the circuit breaker.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use url::Url;

use agentfleet_agent::{InputSchema, Limits};

use super::duration;
use super::validation::{invalid, positive};
use super::ConfigError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ProviderKind {
    /// Any OpenAI-compatible `/chat/completions`: OpenAI, vLLM, Ollama, LiteLLM…
    Openai,
}

/// The prefetch of an agent with `concurrency` call slots; see
/// [`AgentConfig::delivery_window`].
pub fn delivery_window(concurrency: u16) -> u16 {
    concurrency.saturating_add(concurrency.div_ceil(2))
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
    /// HTTP/2 only, also over plain http (prior knowledge). Calls share a connection up to
    /// [`AgentConfig::http2_streams_per_connection`], and a replica opens as many connections
    /// as its concurrency needs at that rate: a server's limit on concurrent streams would
    /// otherwise hold the calls beyond it waiting for a stream (with a limit of 100 and one
    /// connection, a concurrency of 1,000 ran 100 calls at a time). `Auto` over TLS spreads
    /// its calls the same way.
    Http2,
}

// === impl RateLimitConfig ===

/// Serialized as configured: the API's agent listing shows it.
#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    pub requests_per_minute: u32,
    #[serde(default)]
    pub tokens_per_minute: Option<u32>,
}

impl RateLimitConfig {
    pub(super) fn validate(&self, at: &str) -> Result<(), ConfigError> {
        positive(
            &format!("{at}.requests_per_minute"),
            self.requests_per_minute,
        )?;
        if let Some(tpm) = self.tokens_per_minute {
            positive(&format!("{at}.tokens_per_minute"), tpm)?;
        }
        Ok(())
    }
}

// === impl RetryConfig ===

/// Serialized with the keys of the file (`max_delay_secs` in whole seconds): the API's agent
/// listing shows it.
#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct RetryConfig {
    /// Attempts in all, the first included.
    pub attempts: u32,
    /// Upper bound on the backoff between two attempts.
    #[serde(rename = "max_delay_secs", with = "duration::secs")]
    #[schema(value_type = u64)]
    pub max_delay: Duration,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            attempts: 3,
            max_delay: Duration::from_secs(30),
        }
    }
}

impl RetryConfig {
    fn validate(&self, at: &str) -> Result<(), ConfigError> {
        positive(&format!("{at}.attempts"), self.attempts)?;
        positive(&format!("{at}.max_delay_secs"), self.max_delay)
    }
}

// === impl CircuitBreakerConfig ===

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct CircuitBreakerConfig {
    /// Consecutive retryable failures of an endpoint that open the circuit.
    pub failure_threshold: u32,
    /// How long the circuit stays open before one probe call is let through.
    #[serde(rename = "cooldown_secs", with = "duration::secs")]
    pub cooldown: Duration,
}

impl Default for CircuitBreakerConfig {
    fn default() -> Self {
        Self {
            failure_threshold: 5,
            cooldown: Duration::from_secs(30),
        }
    }
}

impl CircuitBreakerConfig {
    fn validate(&self, at: &str) -> Result<(), ConfigError> {
        positive(&format!("{at}.failure_threshold"), self.failure_threshold)?;
        positive(&format!("{at}.cooldown_secs"), self.cooldown)
    }
}

// === impl AgentConfig ===

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
    /// Provider calls of this agent in flight per worker replica. The queue prefetch is half
    /// as many more, so runs that are finishing do not hold up the next calls.
    #[serde(default = "default_concurrency")]
    pub concurrency: u16,
    #[serde(default)]
    pub http_version: HttpVersion,
    /// Calls that share one HTTP/2 connection to the provider: set it to the provider's limit
    /// on concurrent streams when that is known. A replica spreads its `concurrency` calls
    /// over ⌈concurrency ÷ this⌉ connections. 100 by default: the least a server should allow
    /// (RFC 9113), and what hosted providers commonly do.
    #[serde(default = "default_http2_streams_per_connection")]
    pub http2_streams_per_connection: u32,
    #[serde(default)]
    pub rate_limit: Option<RateLimitConfig>,
    /// The provider pool (top-level `pools:`) whose limits this agent shares with others.
    #[serde(default)]
    pub pool: Option<String>,
    /// Deadline of a whole run: admission, every attempt and the waits between them. A job
    /// may lower it with its own `timeout_secs`.
    #[serde(
        rename = "timeout_secs",
        with = "duration::secs",
        default = "default_timeout"
    )]
    pub timeout: Duration,
    /// Bound on one provider HTTP call, when set; read it through
    /// [`AgentConfig::request_timeout()`], which falls back to `timeout`.
    #[serde(rename = "request_timeout_secs", with = "duration::secs_opt", default)]
    pub request_timeout: Option<Duration>,
    #[serde(default)]
    pub retry: RetryConfig,
    #[serde(default)]
    pub circuit_breaker: CircuitBreakerConfig,
    /// Ready messages in the agent's queue above which new jobs are refused with 429.
    #[serde(default)]
    pub max_queue_depth: Option<u32>,
    /// Names of the tools (from the top-level `tools:`) the model may call.
    #[serde(default)]
    pub tools: Vec<String>,
    /// Hard limits of one run; a job may lower them, never raise them.
    #[serde(default)]
    pub limits: Limits,
    /// JSON Schema the final answer must satisfy: the answer is parsed as JSON, validated, and
    /// sent back once for repair when it fails.
    #[serde(default)]
    pub output_schema: Option<Value>,
    /// JSON Schema of a job's `input`: when set, `input` is any JSON value that satisfies it
    /// (checked by the dispatcher, which refuses the job otherwise) and reaches the model as
    /// one user message holding that JSON; when absent, `input` is text or `{messages}`.
    #[serde(default)]
    pub input_schema: Option<Value>,
    /// Whose job runs next when several tenants have jobs queued for this agent.
    #[serde(default)]
    pub fairness: Fairness,
    /// Answers of identical model calls (same agent, model, messages and tools) reused for
    /// this long, without a provider call; off when absent.
    #[serde(default)]
    pub cache: Option<CacheConfig>,
    /// USD this agent's model calls may cost in a UTC calendar month, fleet-wide, all tenants
    /// together: reserved and settled per call like a tenant's daily budget.
    #[serde(default)]
    pub monthly_budget_usd: Option<f64>,
    /// Mask `privacy`'s patterns in what this agent's runs give back; `privacy.mask_output`
    /// when absent.
    #[serde(default)]
    pub mask_output: Option<bool>,
}

/// An agent's response cache. Serialized as configured.
#[derive(Debug, Clone, Copy, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    #[serde(rename = "ttl_secs", with = "duration::secs")]
    pub ttl: Duration,
}

/// How an agent's queued jobs are ordered across tenants.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Fairness {
    /// A queue per tenant, served in weighted round-robin on every worker: a tenant with a
    /// deep backlog does not make another tenant's few jobs wait behind it.
    #[default]
    Tenants,
    /// One queue, first come first served, whoever submitted.
    Fifo,
}

impl AgentConfig {
    /// Bound on one provider HTTP call: `request_timeout_secs`, else the run's `timeout_secs`.
    pub fn request_timeout(&self) -> Duration {
        self.request_timeout.unwrap_or(self.timeout)
    }

    /// How many deliveries of this agent's queue a worker replica holds at once (its
    /// prefetch): the call slots plus half as many more, so the runs that are finishing
    /// (storing results, delivering their webhook inline) do not keep the next calls waiting
    /// for the broker. (A quarter more left too little inline room at 6,000 jobs/s: 0.44 of
    /// the events took the webhook queue, a second broker round each.)
    pub fn delivery_window(&self) -> u16 {
        delivery_window(self.concurrency)
    }

    /// Checks the agent configured at `at` (`agents.<name>`); the name itself is checked by
    /// [`super::Config::validate`].
    pub(super) fn validate(&self, at: &str) -> Result<(), ConfigError> {
        let key = |field: &str| format!("{at}.{field}");
        if let Some(schema) = &self.input_schema {
            InputSchema::new(schema.clone())
                .map_err(|e| invalid(key("input_schema"), e.to_string()))?;
        }
        if let Some(cache) = &self.cache {
            positive(&key("cache.ttl_secs"), cache.ttl)?;
        }
        if let Some(usd) = self.monthly_budget_usd {
            if !(usd.is_finite() && usd > 0.0) {
                return Err(invalid(key("monthly_budget_usd"), "must be a number > 0"));
            }
        }
        if !matches!(self.base_url.scheme(), "http" | "https") {
            return Err(invalid(key("base_url"), "must be an http(s) URL"));
        }
        if self.model.trim().is_empty() {
            return Err(invalid(key("model"), "must not be empty"));
        }
        positive(&key("max_tokens"), self.max_tokens)?;
        positive(&key("concurrency"), self.concurrency)?;
        positive(
            &key("http2_streams_per_connection"),
            self.http2_streams_per_connection,
        )?;
        positive(&key("timeout_secs"), self.timeout)?;
        self.retry.validate(&key("retry"))?;
        if let Some(timeout) = self.request_timeout {
            positive(&key("request_timeout_secs"), timeout)?;
        }
        self.circuit_breaker.validate(&key("circuit_breaker"))?;
        if let Some(depth) = self.max_queue_depth {
            positive(&key("max_queue_depth"), depth)?;
        }
        if let Some(limit) = &self.rate_limit {
            limit.validate(&key("rate_limit"))?;
        }
        positive(&key("limits.max_turns"), self.limits.max_turns)?;
        positive(&key("limits.max_tool_calls"), self.limits.max_tool_calls)?;
        positive(
            &key("limits.max_total_tokens"),
            self.limits.max_total_tokens,
        )?;
        let cost = self.limits.max_cost_usd;
        if !(cost.is_finite() && cost > 0.0) {
            return Err(invalid(
                key("limits.max_cost_usd"),
                "must be a positive number",
            ));
        }
        Ok(())
    }
}

fn default_max_tokens() -> u32 {
    512
}

fn default_concurrency() -> u16 {
    16
}

fn default_http2_streams_per_connection() -> u32 {
    100
}

fn default_timeout() -> Duration {
    Duration::from_secs(60)
}
