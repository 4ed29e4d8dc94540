//! Secrets, which are never in the file: the file names the environment variables that hold
//! them, and only the process that needs a secret resolves it, once, at start.

use std::collections::HashMap;

use secrecy::SecretString;

use super::validation::invalid;
use super::{Config, ConfigError, HeaderValue};
use crate::signing::SigningKeys;

/// Secrets resolved from the environment by the process that needs them.
#[derive(Clone, Default)]
pub struct Secrets {
    /// Each tenant's signing secrets (several during a rotation).
    pub webhook: HashMap<String, SigningKeys>,
    pub provider_keys: HashMap<String, SecretString>,
    /// Every tool's headers, literal or from the environment, by tool name; kept secret
    /// alike, since a header is where a tool's credentials go.
    pub tool_headers: HashMap<String, Vec<(String, SecretString)>>,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secrets")
            .field("webhook_tenants", &self.webhook.keys().collect::<Vec<_>>())
            .field(
                "provider_agents",
                &self.provider_keys.keys().collect::<Vec<_>>(),
            )
            .field("tools", &self.tool_headers.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Config {
    /// Resolves the secrets the worker needs: every tenant's webhook secret and every
    /// agent's provider key. `lookup` is the environment (`std::env::var` in production).
    pub fn secrets(&self, lookup: impl Fn(&str) -> Option<String>) -> Result<Secrets, ConfigError> {
        let mut secrets = Secrets::default();
        for (i, tenant) in self.tenants.iter().enumerate() {
            let Some(var) = &tenant.webhook_secret_env else {
                continue;
            };
            let key = format!("tenants[{i}].webhook_secret_env");
            let value = lookup(var)
                .ok_or_else(|| invalid(&key, format!("environment variable {var} is not set")))?;
            let keys = SigningKeys::parse(&value)
                .map_err(|e| invalid(&key, format!("environment variable {var}: {e}")))?;
            secrets.webhook.insert(tenant.id.clone(), keys);
        }
        for (name, agent) in &self.agents {
            let Some(var) = &agent.api_key_env else {
                continue;
            };
            let key = format!("agents.{name}.api_key_env");
            let value = lookup(var)
                .ok_or_else(|| invalid(&key, format!("environment variable {var} is not set")))?;
            if value.trim().is_empty() {
                return Err(invalid(
                    &key,
                    format!("environment variable {var} is empty"),
                ));
            }
            secrets
                .provider_keys
                .insert(name.clone(), SecretString::from(value));
        }
        for (name, tool) in &self.tools {
            let mut headers = Vec::with_capacity(tool.http.headers.len());
            for (header, value) in &tool.http.headers {
                let value = match value {
                    HeaderValue::Literal(text) => text.clone(),
                    HeaderValue::FromEnv { env } => {
                        let key = format!("tools.{name}.http.headers.{header}");
                        let value = lookup(env).ok_or_else(|| {
                            invalid(&key, format!("environment variable {env} is not set"))
                        })?;
                        if reqwest::header::HeaderValue::from_str(&value).is_err() {
                            return Err(invalid(
                                &key,
                                format!("environment variable {env} is not a valid header value"),
                            ));
                        }
                        value
                    }
                };
                headers.push((header.clone(), SecretString::from(value)));
            }
            secrets.tool_headers.insert(name.clone(), headers);
        }
        Ok(secrets)
    }
}
