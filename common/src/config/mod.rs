//! One typed configuration, loaded once: a YAML file, then `AGENTFLEET__SECTION__KEY`
//! environment overrides, then validation that names the offending key. Secrets are never in
//! the file: the file names the environment variables that hold them, and only the process
//! that needs a secret resolves it (see [`Config::secrets`]).
//!
//! The top [`Config`] is built from one part per concept, each in its own file and each
//! validating itself under the key it sits at: `infra` (broker, Redis, listeners, webhooks,
//! telemetry), `agents`, `tenants`, `privacy`, and the `secrets` resolved from the
//! environment; the shared checks are in `validation`. Durations are
//! [`Duration`](std::time::Duration)s from load time on, while the file keeps whole numbers
//! with the unit in the key (`lease_secs`, `timeout_ms`): the `duration` helpers convert
//! them, so no caller does.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use agentfleet_agent::{AgentDefinition, OutputSchema, Price};

use crate::naming::{JobQueue, Names};

mod agents;
mod duration;
mod infra;
mod privacy;
mod reload;
mod secrets;
mod tenants;
mod tools;
mod validation;

#[cfg(test)]
mod tests;

pub use agents::{
    delivery_window, AgentConfig, CacheConfig, CircuitBreakerConfig, Fairness, HttpVersion,
    ProviderKind, RateLimitConfig, RetryConfig,
};
pub use infra::{
    AmqpConfig, AuditConfig, BurstConfig, ClusterConfig, DispatcherConfig, LogFormat, QueueType,
    RedisConfig, RedisTopology, SentinelConfig, TelemetryConfig, WebhookConfig, WorkerConfig,
};
pub use privacy::{PatternConfig, PrivacyConfig};
pub use reload::check_reloadable;
pub use secrets::Secrets;
pub use tenants::{
    ApiKey, ApiKeyConfig, TenantBudget, TenantConfig, TenantQuotas, DEFAULT_KEY_ID,
    MAX_TENANT_WEIGHT,
};
pub use tools::{HeaderValue, HttpToolConfig, ToolConfig, ToolMethod};
pub use validation::{is_identifier, parse_sha256_hex};

use validation::{check_identifier, invalid};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot load configuration: {0}")]
    Load(#[from] config::ConfigError),
    #[error("invalid configuration at `{key}`: {reason}")]
    Invalid { key: String, reason: String },
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
    /// Whether payloads may be logged, what is masked, and whether results are masked.
    #[serde(default)]
    pub privacy: PrivacyConfig,
    #[serde(default)]
    pub tenants: Vec<TenantConfig>,
    pub agents: BTreeMap<String, AgentConfig>,
    /// HTTP tools, by name; agents list the ones they may call.
    #[serde(default)]
    pub tools: BTreeMap<String, ToolConfig>,
    /// Provider pools: fleet-wide limits shared by every agent that names the pool (one API
    /// key's limits, typically). An agent's own `rate_limit` still applies beneath its pool's.
    #[serde(default)]
    pub pools: BTreeMap<String, RateLimitConfig>,
    /// USD per million input and output tokens, by model name: every step and run is priced
    /// with its model's entry (a model without one costs nothing).
    #[serde(default)]
    pub prices: BTreeMap<String, Price>,
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

    /// Validates each part under its key, then what only the whole can see: that the worker
    /// serves agents that exist.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.amqp.validate("amqp")?;
        self.redis.validate("redis")?;
        self.dispatcher.validate("dispatcher")?;
        self.worker.validate("worker")?;
        self.webhooks.validate("webhooks")?;
        self.telemetry.validate("telemetry")?;
        self.privacy.masker("privacy")?;

        if self.agents.is_empty() {
            return Err(invalid("agents", "at least one agent is required"));
        }
        for (name, tool) in &self.tools {
            tool.validate(name, &format!("tools.{name}"))?;
        }
        for (name, pool) in &self.pools {
            let at = format!("pools.{name}");
            check_identifier(&at, name)?;
            pool.validate(&at)?;
        }
        for (model, price) in &self.prices {
            let at = format!("prices.{model}");
            for (field, value) in [
                ("input_usd_per_million", price.input_usd_per_million),
                ("output_usd_per_million", price.output_usd_per_million),
            ] {
                if !(value.is_finite() && value >= 0.0) {
                    return Err(invalid(format!("{at}.{field}"), "must be a number ≥ 0"));
                }
            }
        }
        for (name, agent) in &self.agents {
            let at = format!("agents.{name}");
            check_identifier(&at, name)?;
            agent.validate(&at)?;
            if let Some(pool) = &agent.pool {
                if !self.pools.contains_key(pool) {
                    return Err(invalid(
                        format!("{at}.pool"),
                        format!("unknown pool `{pool}`"),
                    ));
                }
            }
            self.agent_definition(name)?;
        }
        for (i, agent) in self.worker.agents.iter().enumerate() {
            if agent != "*" && !self.agents.contains_key(agent) {
                return Err(invalid(
                    format!("worker.agents[{i}]"),
                    format!("unknown agent `{agent}`"),
                ));
            }
        }

        tenants::validate_tenants(&self.tenants, "tenants")
    }
}

impl Config {
    /// The work queues of `agent`, the shared one first: with `fairness: tenants` (the
    /// default) one more per configured tenant, which the workers serve in weighted
    /// round-robin. The shared queue stays for messages published without a tenant queue
    /// (an older dispatcher, a tenant not yet configured everywhere).
    pub fn job_queues(&self, agent: &str) -> Vec<JobQueue> {
        let names = self.names();
        let mut queues = vec![JobQueue::shared(&names, agent)];
        let fair = self
            .agents
            .get(agent)
            .is_some_and(|a| a.fairness == Fairness::Tenants);
        if fair {
            queues.extend(
                self.tenants
                    .iter()
                    .map(|t| JobQueue::tenant(&names, agent, &t.id, t.weight)),
            );
        }
        queues
    }

    /// What the agent runtime needs to know about agent `name`: its tools (with their compiled
    /// argument schemas), limits, output schema and its model's price.
    pub fn agent_definition(&self, name: &str) -> Result<AgentDefinition, ConfigError> {
        let at = format!("agents.{name}");
        let agent = self
            .agents
            .get(name)
            .ok_or_else(|| invalid(&at, "no such agent"))?;
        let mut tools = Vec::with_capacity(agent.tools.len());
        for (i, tool) in agent.tools.iter().enumerate() {
            let key = format!("{at}.tools[{i}]");
            let config = self
                .tools
                .get(tool)
                .ok_or_else(|| invalid(&key, format!("unknown tool `{tool}`")))?;
            let spec = config
                .spec(tool)
                .map_err(|e| invalid(format!("tools.{tool}"), e.to_string()))?;
            tools.push(spec);
        }
        let output_schema = agent
            .output_schema
            .clone()
            .map(OutputSchema::new)
            .transpose()
            .map_err(|e| invalid(format!("{at}.output_schema"), e.to_string()))?;
        let definition = AgentDefinition {
            system_prompt: agent.system_prompt.clone(),
            tools,
            limits: agent.limits,
            output_schema,
            price: self.prices.get(&agent.model).copied(),
            max_tokens: agent.max_tokens,
            ..AgentDefinition::default()
        };
        definition
            .check()
            .map_err(|e| invalid(format!("{at}.tools"), e.to_string()))?;
        Ok(definition)
    }
}

fn environment_overrides() -> config::Environment {
    config::Environment::with_prefix("AGENTFLEET")
        .separator("__")
        .try_parsing(true)
        .list_separator(",")
        .with_list_parse_key("amqp.urls")
        .with_list_parse_key("worker.agents")
        .with_list_parse_key("privacy.mask")
        .with_list_parse_key("redis.sentinel.urls")
        .with_list_parse_key("redis.cluster.nodes")
}
