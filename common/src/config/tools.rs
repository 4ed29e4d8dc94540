//! The tools agents may call: HTTP endpoints the operator names, with a JSON Schema for the
//! arguments a model may pass and the class of side effect a call has. The host is always the
//! operator's: arguments fill placeholders in the path and query values only (see
//! [`crate::tool_url`]).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

use agentfleet_agent::{SideEffect, ToolSpec};

use super::duration;
use super::validation::{invalid, positive};
use super::ConfigError;
use crate::tool_url::UrlTemplate;

/// One tool, under `tools.<name>`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolConfig {
    /// What the tool does, for the model.
    pub description: String,
    /// JSON Schema of the arguments object.
    pub parameters: Value,
    pub http: HttpToolConfig,
    /// `read` calls may repeat; `idempotent` ones repeat with the same `Idempotency-Key`;
    /// a `write` records an intent first and is never repeated blindly after a crash.
    pub side_effect: SideEffect,
    /// Bound on one call.
    #[serde(
        rename = "timeout_secs",
        with = "duration::secs",
        default = "default_timeout"
    )]
    pub timeout: Duration,
    /// The response is cut to this many bytes (with a marker) before it enters the context.
    #[serde(default = "default_max_response_bytes")]
    pub max_response_bytes: usize,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum ToolMethod {
    #[default]
    Get,
    Post,
    Put,
    Patch,
    Delete,
}

impl ToolMethod {
    /// Whether the arguments the URL does not use travel as a JSON body (otherwise as query
    /// parameters).
    pub fn has_body(self) -> bool {
        matches!(self, Self::Post | Self::Put | Self::Patch)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Get => "GET",
            Self::Post => "POST",
            Self::Put => "PUT",
            Self::Patch => "PATCH",
            Self::Delete => "DELETE",
        }
    }
}

/// How a tool is called over HTTP.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpToolConfig {
    #[serde(default)]
    pub method: ToolMethod,
    /// `http(s)://host[:port]/path/{arg}?key={arg}`: placeholders only in the path and in
    /// query values.
    pub url: String,
    /// Header values, literal or from an environment variable (`{env: VAR}`) for secrets.
    #[serde(default)]
    pub headers: BTreeMap<String, HeaderValue>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged, deny_unknown_fields)]
pub enum HeaderValue {
    Literal(String),
    /// Resolved by the worker at start ([`super::Config::secrets`]); never in the file.
    FromEnv {
        env: String,
    },
}

impl ToolConfig {
    /// The tool as the agent runtime sees it; fails on a name, schema or size the runtime
    /// would refuse.
    pub fn spec(&self, name: &str) -> Result<ToolSpec, agentfleet_agent::DefinitionError> {
        ToolSpec::new(
            name,
            self.description.clone(),
            self.parameters.clone(),
            self.side_effect,
            self.max_response_bytes,
        )
    }

    pub fn url_template(&self) -> Result<UrlTemplate, crate::tool_url::TemplateError> {
        UrlTemplate::parse(&self.http.url)
    }

    pub(super) fn validate(&self, name: &str, at: &str) -> Result<(), ConfigError> {
        let key = |field: &str| format!("{at}.{field}");
        self.spec(name)
            .map_err(|e| invalid(key("parameters"), e.to_string()))?;
        self.url_template()
            .map_err(|e| invalid(key("http.url"), e.to_string()))?;
        positive(&key("timeout_secs"), self.timeout)?;
        for (header, value) in &self.http.headers {
            let valid_name = reqwest::header::HeaderName::from_bytes(header.as_bytes()).is_ok();
            if !valid_name {
                return Err(invalid(
                    key(&format!("http.headers.{header}")),
                    "not a valid HTTP header name",
                ));
            }
            if let HeaderValue::Literal(text) = value {
                if reqwest::header::HeaderValue::from_str(text).is_err() {
                    return Err(invalid(
                        key(&format!("http.headers.{header}")),
                        "not a valid HTTP header value",
                    ));
                }
            }
        }
        Ok(())
    }
}

fn default_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_max_response_bytes() -> usize {
    16 * 1024
}
