//! The provider call: an OpenAI-compatible `POST {base_url}/chat/completions` through the
//! shared outbound client, and the classification of every way it can fail.

use std::time::Duration;

use chrono::Utc;
use secrecy::ExposeSecret as _;
use serde_json::{json, Value};
use url::Url;

use agentfleet_common::config::{AgentConfig, HttpVersion};
use agentfleet_common::outbound::{Destination, Outbound, OutboundError};
use agentfleet_common::wire::{ChatMessage, Completion, ErrorCategory, JobError, Role, Usage};

use crate::retry::parse_retry_after;

/// A failed call: its category (which decides retrying), a message safe to store and show,
/// and the provider's `Retry-After` if it sent one.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    pub category: ErrorCategory,
    pub message: String,
    pub retry_after: Option<Duration>,
}

impl Failure {
    pub fn new(category: ErrorCategory, message: impl Into<String>) -> Self {
        Self {
            category,
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn to_job_error(&self) -> JobError {
        JobError {
            category: self.category,
            message: self.message.clone(),
        }
    }
}

/// One configured agent's provider endpoint.
pub struct Provider {
    endpoint: Url,
    model: String,
    system_prompt: Option<String>,
    max_tokens: u32,
    http_version: HttpVersion,
    authorization: Option<String>,
}

impl std::fmt::Debug for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Provider")
            .field("endpoint", &self.endpoint.as_str())
            .field("model", &self.model)
            .finish_non_exhaustive()
    }
}

impl Provider {
    pub fn new(agent: &AgentConfig, api_key: Option<&secrecy::SecretString>) -> Self {
        let mut endpoint = agent.base_url.clone();
        let path = format!("{}/chat/completions", endpoint.path().trim_end_matches('/'));
        endpoint.set_path(&path);
        Self {
            endpoint,
            model: agent.model.clone(),
            system_prompt: agent.system_prompt.clone(),
            max_tokens: agent.max_tokens,
            http_version: agent.http_version,
            authorization: api_key.map(|k| format!("Bearer {}", k.expose_secret())),
        }
    }

    pub fn max_tokens(&self) -> u32 {
        self.max_tokens
    }

    pub fn request_body(&self, input: &[ChatMessage]) -> Value {
        let mut messages = Vec::with_capacity(input.len() + 1);
        if let Some(prompt) = &self.system_prompt {
            messages.push(json!({"role": "system", "content": prompt}));
        }
        for m in input {
            let role = match m.role {
                Role::System => "system",
                Role::User => "user",
                Role::Assistant => "assistant",
            };
            messages.push(json!({"role": role, "content": m.content}));
        }
        json!({"model": self.model, "messages": messages, "max_tokens": self.max_tokens})
    }

    /// The endpoint URL, for the circuit breaker's key.
    pub fn endpoint(&self) -> &Url {
        &self.endpoint
    }

    /// Calls the provider. The job id and the run's fencing token travel as headers, so a
    /// provider-side log (or the test stub) can tell runs apart.
    pub async fn complete(
        &self,
        outbound: &Outbound,
        input: &[ChatMessage],
        job_id: &str,
        attempt: &str,
        fencing_token: &str,
        timeout: Duration,
    ) -> Result<Completion, Failure> {
        let body = serde_json::to_vec(&self.request_body(input))
            .map_err(|e| Failure::new(ErrorCategory::Internal, e.to_string()))?;
        let mut headers = vec![
            ("x-agentfleet-job-id", job_id),
            ("x-agentfleet-attempt", attempt),
            ("x-agentfleet-lease", fencing_token),
        ];
        if let Some(auth) = &self.authorization {
            headers.push(("authorization", auth.as_str()));
        }
        let response = outbound
            .post_json(
                Destination::Provider(self.http_version),
                &self.endpoint,
                &headers,
                body,
                timeout,
            )
            .await
            .map_err(classify_transport)?;
        let retry_after = response
            .retry_after
            .as_deref()
            .and_then(|v| parse_retry_after(v, Utc::now()));
        match response.status {
            200..=299 => parse_completion(&response.body),
            status => {
                let category = match status {
                    429 => ErrorCategory::RateLimited,
                    401 | 403 => ErrorCategory::Auth,
                    408 => ErrorCategory::Timeout,
                    500..=599 => ErrorCategory::ProviderError,
                    _ => ErrorCategory::BadRequest,
                };
                Err(Failure {
                    category,
                    message: format!(
                        "provider answered HTTP {status}{}",
                        error_hint(&response.body)
                    ),
                    retry_after,
                })
            }
        }
    }
}

fn classify_transport(err: OutboundError) -> Failure {
    let category = match &err {
        OutboundError::Timeout => ErrorCategory::Timeout,
        OutboundError::TooLarge(_) => ErrorCategory::InvalidResponse,
        OutboundError::Blocked(_) => ErrorCategory::BadRequest,
        OutboundError::Connect(_) | OutboundError::Other(_) => ErrorCategory::Network,
    };
    Failure::new(category, err.to_string())
}

/// A short, safe excerpt of a provider's error message.
fn error_hint(body: &[u8]) -> String {
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
        .map(|m| format!(": {}", m.chars().take(200).collect::<String>()))
        .unwrap_or_default()
}

/// `choices[0].message.content` and `usage`; anything else in a 2xx is `invalid_response`.
pub fn parse_completion(body: &[u8]) -> Result<Completion, Failure> {
    let invalid = |why: &str| Failure::new(ErrorCategory::InvalidResponse, why.to_owned());
    let value: Value =
        serde_json::from_slice(body).map_err(|_| invalid("provider response is not JSON"))?;
    if !value["error"].is_null() {
        return Err(Failure::new(
            ErrorCategory::InvalidResponse,
            format!(
                "provider returned an error in a 2xx response{}",
                error_hint(body)
            ),
        ));
    }
    let choices = value["choices"]
        .as_array()
        .ok_or_else(|| invalid("provider response has no `choices` list"))?;
    let first = choices
        .first()
        .ok_or_else(|| invalid("provider response has an empty `choices` list"))?;
    let content = first["message"]["content"]
        .as_str()
        .ok_or_else(|| invalid("`choices[0].message.content` is not a string"))?
        .to_owned();
    let count = |field: &str| value["usage"][field].as_u64().unwrap_or(0);
    let prompt_tokens = count("prompt_tokens");
    let completion_tokens = count("completion_tokens");
    let total_tokens = value["usage"]["total_tokens"]
        .as_u64()
        .unwrap_or(prompt_tokens + completion_tokens);
    Ok(Completion {
        content,
        usage: Usage {
            prompt_tokens,
            completion_tokens,
            total_tokens,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_completion() {
        let body = br#"{"choices":[{"message":{"role":"assistant","content":"hi"}}],"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}"#;
        let c = parse_completion(body).expect("ok");
        assert_eq!(c.content, "hi");
        assert_eq!(c.usage.total_tokens, 5);
    }

    #[test]
    fn malformed_responses_are_invalid_response() {
        for body in [
            &b"not json"[..],
            br#"{"choices":"x"}"#,
            br#"{"choices":[]}"#,
            br#"{"choices":[{"message":{"content":7}}]}"#,
            br#"{"error":{"message":"overloaded"},"choices":[]}"#,
        ] {
            let f = parse_completion(body).expect_err("invalid");
            assert_eq!(f.category, ErrorCategory::InvalidResponse, "{f:?}");
        }
    }

    #[test]
    fn request_puts_the_system_prompt_first() {
        let agent: AgentConfig = serde_json::from_value(json!({
            "provider": "openai", "base_url": "http://127.0.0.1:1/v1", "model": "m",
            "system_prompt": "be brief"
        }))
        .expect("agent");
        let provider = Provider::new(&agent, None);
        assert_eq!(
            provider.endpoint.as_str(),
            "http://127.0.0.1:1/v1/chat/completions"
        );
        let body = provider.request_body(&[ChatMessage {
            role: Role::User,
            content: "x".into(),
        }]);
        assert_eq!(body["messages"][0]["role"], "system");
        assert_eq!(body["messages"][1]["content"], "x");
        assert_eq!(body["max_tokens"], 512);
    }
}
