//! Tenant authentication: `Authorization: Bearer <key>`, matched by the SHA-256 of the key.
//! Only hashes are configured, so a leaked config leaks no key. A tenant may have several
//! keys, each with an id and an optional expiry, so a key rotates without downtime. The
//! presented key's digest is compared with every configured one in constant time, and a
//! missing, unknown or expired key is the same 401. The key id (never the key) goes into the
//! request's span, so every log line of the request names it.

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderMap};
use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq as _;

use agentfleet_common::config::TenantConfig;

use crate::audit::AuditNote;
use crate::problem::ApiError;
use crate::AppState;

struct Key {
    /// Index into `Tenants::tenants`.
    tenant: usize,
    id: String,
    hash: [u8; 32],
    expires_at: Option<DateTime<Utc>>,
}

pub struct Tenants {
    /// Shared, so a submission's accept (a task of its own) can hold its tenant.
    tenants: Vec<Arc<TenantConfig>>,
    keys: Vec<Key>,
}

impl Tenants {
    /// Keys were validated with the config; one that does not parse is left out.
    pub fn new(tenants: &[TenantConfig]) -> Self {
        let mut keys = Vec::new();
        for (index, tenant) in tenants.iter().enumerate() {
            keys.extend(tenant.api_keys().into_iter().map(|key| Key {
                tenant: index,
                id: key.id,
                hash: key.hash,
                expires_at: key.expires_at,
            }));
        }
        Self {
            tenants: tenants.iter().cloned().map(Arc::new).collect(),
            keys,
        }
    }

    /// The tenant a request authenticates as, and the id of the key it used.
    pub fn authenticate(
        &self,
        headers: &HeaderMap,
    ) -> Result<(&Arc<TenantConfig>, &str), ApiError> {
        let value = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .ok_or(ApiError::Unauthorized)?;
        let (scheme, token) = value.split_once(' ').ok_or(ApiError::Unauthorized)?;
        if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
            return Err(ApiError::Unauthorized);
        }
        let digest: [u8; 32] = Sha256::digest(token.trim().as_bytes()).into();
        let key = self.matching(&digest).ok_or(ApiError::Unauthorized)?;
        if key.expires_at.is_some_and(|at| at <= Utc::now()) {
            return Err(ApiError::Unauthorized);
        }
        tracing::Span::current().record("key_id", key.id.as_str());
        let tenant = self.tenants.get(key.tenant).ok_or(ApiError::Unauthorized)?;
        Ok((tenant, key.id.as_str()))
    }

    /// The key whose hash is `digest`. Every key is compared, each in constant time, so the
    /// time taken says nothing about how close a guess came.
    fn matching(&self, digest: &[u8; 32]) -> Option<&Key> {
        let mut found = None;
        for key in &self.keys {
            if bool::from(key.hash.ct_eq(digest)) {
                found = Some(key);
            }
        }
        found
    }
}

/// The authenticated caller of an API request: the extractor every `/v1` handler takes. It
/// notes the tenant and key id for the request's audit record.
pub struct Caller {
    pub tenant: Arc<TenantConfig>,
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let (tenant, key_id) = state.inner.tenants.authenticate(&parts.headers)?;
        if let Some(note) = parts.extensions.get::<AuditNote>() {
            note.caller(&tenant.id, key_id);
        }
        Ok(Self {
            tenant: tenant.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agentfleet_common::config::ApiKeyConfig;

    fn tenants() -> Tenants {
        Tenants::new(&[TenantConfig {
            id: "acme".into(),
            api_key_sha256: Some(hex::encode(Sha256::digest(b"secret-key"))),
            api_keys: vec![
                ApiKeyConfig {
                    id: "next".into(),
                    sha256: hex::encode(Sha256::digest(b"next-key")),
                    expires_at: None,
                },
                ApiKeyConfig {
                    id: "old".into(),
                    sha256: hex::encode(Sha256::digest(b"old-key")),
                    expires_at: Some(Utc::now() - chrono::Duration::seconds(1)),
                },
            ],
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
                .map(|(t, _)| t.id.as_str()),
            Some("acme")
        );
        assert_eq!(
            tenants
                .authenticate(&headers("bearer secret-key"))
                .ok()
                .map(|(t, _)| t.id.as_str()),
            Some("acme")
        );
        for bad in ["Bearer other", "Basic secret-key", "secret-key", "Bearer "] {
            assert!(tenants.authenticate(&headers(bad)).is_err(), "{bad}");
        }
        assert!(tenants.authenticate(&HeaderMap::new()).is_err());
    }

    #[test]
    fn every_live_key_of_a_tenant_works_and_an_expired_one_is_unknown() {
        let tenants = tenants();
        let tenant = |token: &str| {
            tenants
                .authenticate(&headers(&format!("Bearer {token}")))
                .map(|(t, key)| format!("{}/{key}", t.id))
        };
        assert_eq!(tenant("next-key").ok().as_deref(), Some("acme/next"));
        assert_eq!(tenant("secret-key").ok().as_deref(), Some("acme/default"));
        assert!(
            matches!(tenant("old-key"), Err(ApiError::Unauthorized)),
            "expired: the same 401 as an unknown key"
        );
    }
}
