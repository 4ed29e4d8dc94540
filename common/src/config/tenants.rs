//! The tenants: who may submit jobs (by the hash of their API key), which secret signs their
//! webhooks, their share of an agent when tenants compete, and their quotas.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use super::validation::{check_identifier, invalid, parse_sha256_hex, positive};
use super::ConfigError;

/// The largest `weight`: a weight is a share, and a hundredfold is already a strong one.
pub const MAX_TENANT_WEIGHT: u32 = 100;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantConfig {
    pub id: String,
    /// Hex SHA-256 of the tenant's bearer token; the token itself is never configured.
    pub api_key_sha256: String,
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
        self.api_key_hash(at).map(drop)
    }

    fn api_key_hash(&self, at: &str) -> Result<[u8; 32], ConfigError> {
        parse_sha256_hex(&self.api_key_sha256).ok_or_else(|| {
            invalid(
                format!("{at}.api_key_sha256"),
                "must be 64 hex characters (a SHA-256)",
            )
        })
    }
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
        if !key_hashes.insert(tenant.api_key_hash(&at)?) {
            return Err(invalid(
                format!("{at}.api_key_sha256"),
                "two tenants share this API key",
            ));
        }
    }
    Ok(())
}
