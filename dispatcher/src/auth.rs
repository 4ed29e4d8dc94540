//! Tenant authentication: `Authorization: Bearer <key>`, matched by the SHA-256 of the key.
//! Only hashes are configured, so a leaked config leaks no key; looking up by hash means the
//! comparison never touches the key itself.

use std::collections::HashMap;
use std::sync::Arc;

use axum::http::{header, HeaderMap};
use sha2::{Digest, Sha256};

use agentfleet_common::config::{parse_sha256_hex, TenantConfig};

use crate::problem::ApiError;

pub struct Tenants {
    /// Shared, so a submission's accept (a task of its own) can hold its tenant.
    by_key_hash: HashMap<[u8; 32], Arc<TenantConfig>>,
}

impl Tenants {
    /// Hashes were validated with the config; an unparsable one simply matches nothing.
    pub fn new(tenants: &[TenantConfig]) -> Self {
        let by_key_hash = tenants
            .iter()
            .filter_map(|t| parse_sha256_hex(&t.api_key_sha256).map(|h| (h, Arc::new(t.clone()))))
            .collect();
        Self { by_key_hash }
    }

    /// The tenant a request authenticates as.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<&Arc<TenantConfig>, ApiError> {
        let value = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .ok_or(ApiError::Unauthorized)?;
        let (scheme, token) = value.split_once(' ').ok_or(ApiError::Unauthorized)?;
        if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
            return Err(ApiError::Unauthorized);
        }
        let digest: [u8; 32] = Sha256::digest(token.trim().as_bytes()).into();
        self.by_key_hash.get(&digest).ok_or(ApiError::Unauthorized)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenants() -> Tenants {
        Tenants::new(&[TenantConfig {
            id: "acme".into(),
            api_key_sha256: hex::encode(Sha256::digest(b"secret-key")),
            webhook_secret_env: None,
            weight: 1,
            quotas: Default::default(),
            budget: None,
        }])
    }

    fn headers(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, value.parse().expect("header"));
        headers
    }

    #[test]
    fn accepts_the_right_key_only() {
        let tenants = tenants();
        assert_eq!(
            tenants
                .authenticate(&headers("Bearer secret-key"))
                .ok()
                .map(|t| t.id.as_str()),
            Some("acme")
        );
        assert_eq!(
            tenants
                .authenticate(&headers("bearer secret-key"))
                .ok()
                .map(|t| t.id.as_str()),
            Some("acme")
        );
        for bad in ["Bearer other", "Basic secret-key", "secret-key", "Bearer "] {
            assert!(tenants.authenticate(&headers(bad)).is_err(), "{bad}");
        }
        assert!(tenants.authenticate(&HeaderMap::new()).is_err());
    }
}
