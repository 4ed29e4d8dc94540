//! The tenants: who may submit jobs (by the hash of their API key), which secret signs their
//! webhooks, their share of an agent when tenants compete, and their quotas.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::validation::{check_identifier, invalid, parse_sha256_hex, positive};
use super::ConfigError;

/// The largest `weight`: a weight is a share, and a hundredfold is already a strong one.
pub const MAX_TENANT_WEIGHT: u32 = 100;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantConfig {
    pub id: String,
    /// Hex SHA-256 of the tenant's bearer token (the key `default`); the token itself is
    /// never configured. A tenant that rotates keys lists them in `api_keys` instead (or too).
    #[serde(default)]
    pub api_key_sha256: Option<String>,
    /// The tenant's keys, each with an id (logged, never the key) and an optional expiry:
    /// a key rotates by adding the new one, moving the clients, then removing the old.
    #[serde(default)]
    pub api_keys: Vec<ApiKeyConfig>,
    /// Environment variable holding the tenant's `whsec_…` webhook signing secret.
    #[serde(default)]
    pub webhook_secret_env: Option<String>,
    /// The tenant's share of an agent's slots on each worker when several tenants have jobs
    /// queued for it (smooth weighted round-robin over per-tenant queues): 2 gets twice the
    /// turns of 1.
    #[serde(default = "default_weight")]
    pub weight: u32,
    #[serde(default)]
    pub quotas: TenantQuotas,
    /// What the tenant's model calls may cost in a UTC day, fleet-wide.
    #[serde(default)]
    pub budget: Option<TenantBudget>,
}

/// One of a tenant's API keys, as configured.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyConfig {
    pub id: String,
    /// Hex SHA-256 of the bearer token.
    pub sha256: String,
    /// From this instant on the key is refused like an unknown one.
    #[serde(default)]
    pub expires_at: Option<DateTime<Utc>>,
}

/// A tenant's API key as authentication uses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKey {
    pub id: String,
    pub hash: [u8; 32],
    pub expires_at: Option<DateTime<Utc>>,
}

/// The id of the key given as `api_key_sha256`.
pub const DEFAULT_KEY_ID: &str = "default";

/// A tenant's spending limit. Serialized as configured.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TenantBudget {
    /// USD per UTC day. Each model call reserves its worst case (the prompt estimate at the
    /// input price plus `max_tokens` at the output price) before it is made and settles to
    /// what it cost; a call that does not fit waits (`waiting.reason = budget`) and a POST
    /// once the day's budget is spent is refused with 402.
    pub daily_usd: f64,
}

fn default_weight() -> u32 {
    1
}

/// Per-tenant limits, each off when absent. Serialized as configured: the API shows a tenant
/// its own quotas.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TenantQuotas {
    /// Jobs of the tenant waiting in its queues (all agents) above which a POST is refused
    /// with 429. Read from the broker's queue depths, polled once a second by each
    /// dispatcher replica, plus what the replica accepted since: other replicas' last
    /// second of accepts can overshoot it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_queued_jobs: Option<u32>,
    /// Submissions a minute, fleet-wide (a GCRA in Redis shared by every dispatcher): more
    /// are refused with 429 and `Retry-After`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub submissions_per_minute: Option<u32>,
    /// Runs of the tenant holding a lease at once, fleet-wide. A run over it waits outside
    /// (a delay queue) with `waiting.reason = tenant_quota`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_running_jobs: Option<u32>,
}

impl TenantQuotas {
    fn validate(&self, at: &str) -> Result<(), ConfigError> {
        for (field, value) in [
            ("max_queued_jobs", self.max_queued_jobs),
            ("submissions_per_minute", self.submissions_per_minute),
            ("max_running_jobs", self.max_running_jobs),
        ] {
            if let Some(value) = value {
                positive(&format!("{at}.{field}"), value)?;
            }
        }
        Ok(())
    }
}

impl TenantConfig {
    pub(super) fn validate(&self, at: &str) -> Result<(), ConfigError> {
        check_identifier(&format!("{at}.id"), &self.id)?;
        if !(1..=MAX_TENANT_WEIGHT).contains(&self.weight) {
            return Err(invalid(
                format!("{at}.weight"),
                format!("must be between 1 and {MAX_TENANT_WEIGHT}"),
            ));
        }
        self.quotas.validate(&format!("{at}.quotas"))?;
        if let Some(budget) = &self.budget {
            if !(budget.daily_usd.is_finite() && budget.daily_usd > 0.0) {
                return Err(invalid(
                    format!("{at}.budget.daily_usd"),
                    "must be a number > 0",
                ));
            }
        }
        self.checked_keys(at).map(drop)
    }

    /// The tenant's keys, `api_key_sha256` first (as `default`). Validated with the config,
    /// so a key that does not parse is simply left out here.
    pub fn api_keys(&self) -> Vec<ApiKey> {
        self.checked_keys("tenants").unwrap_or_default()
    }

    fn checked_keys(&self, at: &str) -> Result<Vec<ApiKey>, ConfigError> {
        let mut keys = Vec::with_capacity(self.api_keys.len() + 1);
        if let Some(hash) = &self.api_key_sha256 {
            keys.push(ApiKey {
                id: DEFAULT_KEY_ID.to_owned(),
                hash: parse_hash(hash, &format!("{at}.api_key_sha256"))?,
                expires_at: None,
            });
        }
        for (i, key) in self.api_keys.iter().enumerate() {
            let at = format!("{at}.api_keys[{i}]");
            check_identifier(&format!("{at}.id"), &key.id)?;
            if keys.iter().any(|k| k.id == key.id) {
                return Err(invalid(
                    format!("{at}.id"),
                    format!("duplicate key id `{}`", key.id),
                ));
            }
            keys.push(ApiKey {
                id: key.id.clone(),
                hash: parse_hash(&key.sha256, &format!("{at}.sha256"))?,
                expires_at: key.expires_at,
            });
        }
        if keys.is_empty() {
            return Err(invalid(
                format!("{at}.api_keys"),
                "a tenant needs a key: api_key_sha256 or api_keys",
            ));
        }
        Ok(keys)
    }
}

fn parse_hash(hex: &str, at: &str) -> Result<[u8; 32], ConfigError> {
    parse_sha256_hex(hex).ok_or_else(|| invalid(at, "must be 64 hex characters (a SHA-256)"))
}

/// Checks every tenant listed at `at` (`tenants`), then that no two share an id or an API key:
/// a key must identify one tenant.
pub(super) fn validate_tenants(tenants: &[TenantConfig], at: &str) -> Result<(), ConfigError> {
    let mut ids = HashSet::new();
    let mut key_hashes = HashSet::new();
    for (i, tenant) in tenants.iter().enumerate() {
        let at = format!("{at}[{i}]");
        tenant.validate(&at)?;
        if !ids.insert(tenant.id.as_str()) {
            return Err(invalid(
                format!("{at}.id"),
                format!("duplicate tenant `{}`", tenant.id),
            ));
        }
        for key in tenant.checked_keys(&at)? {
            if !key_hashes.insert(key.hash) {
                return Err(invalid(
                    format!("{at}.api_keys"),
                    format!(
                        "key `{}` is also another key (two keys share a hash)",
                        key.id
                    ),
                ));
            }
        }
    }
    Ok(())
}
