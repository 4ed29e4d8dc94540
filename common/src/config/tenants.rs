//! The tenants: who may submit jobs (by the hash of their API key) and which secret signs
//! their webhooks.

use std::collections::HashSet;

use serde::Deserialize;

use super::validation::{check_identifier, invalid, parse_sha256_hex};
use super::ConfigError;

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

impl TenantConfig {
    pub(super) fn validate(&self, at: &str) -> Result<(), ConfigError> {
        check_identifier(&format!("{at}.id"), &self.id)?;
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
