//! The provider call: an OpenAI-compatible `POST {base_url}/chat/completions` through the
//! shared outbound client, and the classification of every way it can fail.

use std::time::Duration;

use chrono::Utc;
use secrecy::ExposeSecret as _;
use serde_json::Value;
use url::Url;

use agentfleet_agent::{parse_assistant, AssistantMessage, ModelRequest, Usage};
use agentfleet_common::config::AgentConfig;
use agentfleet_common::outbound::{
    Destination, ExtraRoots, Outbound, OutboundError, ProviderRoute, RouteSettings,
};
use agentfleet_common::wire::{ErrorCategory, JobError};

use crate::provider_limits::ProviderLimits;
use crate::retry::parse_retry_after;

/// A failed call: its category (which decides retrying), what happened in our own words,
/// what the provider said about it, and the provider's `Retry-After` if it sent one.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    pub category: ErrorCategory,
    /// Our words only (a status, a transport error, which part of an answer was wrong): safe
    /// for any log line.
    pub message: String,
    /// Text taken from the provider's response (its error message, what its answer held). It
    /// may quote the request — a 400 often quotes the prompt — so it is logged only as a
    /// payload; the record stores it after `message`.
    pub detail: Option<String>,
    pub retry_after: Option<Duration>,
}

impl Failure {
    pub fn new(category: ErrorCategory, message: impl Into<String>) -> Self {
        Self {
            category,
            message: message.into(),
            detail: None,
            retry_after: None,
        }
    }

    fn with_detail(self, detail: Option<String>) -> Self {
        Self { detail, ..self }
    }

    /// The message as the record stores it: ours, then the provider's.
    pub fn full_message(&self) -> String {
        match &self.detail {
            Some(detail) => format!("{}: {detail}", self.message),
            None => self.message.clone(),
        }
    }

    pub fn to_job_error(&self) -> JobError {
        JobError {
            category: self.category,
            message: self.full_message(),
        }
    }
}

/// What one model call came back with.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelAnswer {
    pub message: AssistantMessage,
    pub usage: Usage,
    /// What the provider's rate-limit headers said about the key's limits.
    pub limits: ProviderLimits,
}

/// One model call: the encoded request ([`Provider::encode`]), and what identifies the run to
/// the provider (headers a provider-side log, or the test stub, can tell runs apart by).
pub struct ModelCall<'a> {
    pub body: Vec<u8>,
    pub job_id: &'a str,
    pub attempt: &'a str,
    pub fencing_token: &'a str,
    pub timeout: Duration,
}

/// One configured agent's provider endpoint.
pub struct Provider {
    endpoint: Url,
    model: String,
    /// The HTTP version, and the connections the agent's HTTP/2 calls are spread over.
    route: ProviderRoute,
    authorization: Option<String>,
}

impl std::fmt::Debug for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Provider")
            .field("endpoint", &self.endpoint.as_str())
            .field("model", &self.model)
            .field("route", &self.route)
            .finish_non_exhaustive()
    }
}

impl Provider {
    /// `roots`: certificate authorities trusted besides the public ones.
    pub fn new(
        agent: &AgentConfig,
        api_key: Option<&secrecy::SecretString>,
        roots: &ExtraRoots,
    ) -> Self {
        let mut endpoint = agent.base_url.clone();
        let path = format!("{}/chat/completions", endpoint.path().trim_end_matches('/'));
        endpoint.set_path(&path);
        let route = ProviderRoute::new(RouteSettings {
            version: agent.http_version,
            base_url: &endpoint,
            concurrency: agent.concurrency,
            streams_per_connection: agent.http2_streams_per_connection,
            extra_roots: roots,
        });
        Self {
            endpoint,
            model: agent.model.clone(),
            route,
            authorization: api_key.map(|k| format!("Bearer {}", k.expose_secret())),
        }
    }

    /// The OpenAI chat request, encoded once (its length is also the admission's token
    /// estimate): the conversation (system prompt included: the runtime puts it first), the
    /// tools when the agent has any, and the call's `max_tokens`.
    pub fn encode(&self, request: &ModelRequest) -> Result<Vec<u8>, Failure> {
        #[derive(serde::Serialize)]
        struct Body<'a> {
            model: &'a str,
            messages: &'a [agentfleet_agent::Message],
            max_tokens: u32,
            #[serde(skip_serializing_if = "<[Value]>::is_empty")]
            tools: &'a [Value],
        }
        let body = Body {
            model: &self.model,
            messages: &request.messages,
            max_tokens: request.max_tokens,
            tools: &request.tools,
        };
        serde_json::to_vec(&body).map_err(|e| Failure::new(ErrorCategory::Internal, e.to_string()))
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
        call: ModelCall<'_>,
    ) -> Result<ModelAnswer, Failure> {
        let mut headers = vec![
            ("x-agentfleet-job-id", call.job_id),
            ("x-agentfleet-attempt", call.attempt),
            ("x-agentfleet-lease", call.fencing_token),
        ];
        if let Some(auth) = &self.authorization {
            headers.push(("authorization", auth.as_str()));
        }
        let response = outbound
            .post_json(
                Destination::Provider(&self.route),
                &self.endpoint,
                &headers,
                call.body,
                call.timeout,
            )
            .await
            .map_err(classify_transport)?;
        let limits = ProviderLimits::parse(&response.rate_headers, Utc::now());
        // A 429 without `Retry-After` may still say when the exhausted window resets.
        let retry_after = wait_asked(
            response.retry_after_ms.as_deref(),
            response.retry_after.as_deref(),
        )
        .or_else(|| limits.exhausted_for());
        match response.status {
            200..=299 => {
                parse_completion(&response.body).map(|answer| ModelAnswer { limits, ..answer })
            }
            status => Err(Failure {
                category: status_category(status),
                message: format!("provider answered HTTP {status}"),
                detail: error_message(&response.body),
                retry_after,
            }),
        }
    }
}

/// How long the provider asked us to wait: `retry-after-ms` is the finer of the two headers
/// when a server sends both; nonsense in either is ignored.
fn wait_asked(retry_after_ms: Option<&str>, retry_after: Option<&str>) -> Option<Duration> {
    retry_after_ms
        .and_then(|ms| ms.trim().parse::<f64>().ok())
        .filter(|ms| ms.is_finite() && *ms >= 0.0)
        .map(|ms| Duration::from_secs_f64(ms.min(86_400_000.0) / 1000.0))
        .or_else(|| retry_after.and_then(|v| parse_retry_after(v, Utc::now())))
}

fn status_category(status: u16) -> ErrorCategory {
    match status {
        429 => ErrorCategory::RateLimited,
        401 | 403 => ErrorCategory::Auth,
        408 => ErrorCategory::Timeout,
        500..=599 => ErrorCategory::ProviderError,
        _ => ErrorCategory::BadRequest,
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

/// The first 200 characters of a provider's error message (`error.message`), if it sent one.
fn error_message(body: &[u8]) -> Option<String> {
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
        .map(|m| m.chars().take(200).collect())
}

/// `choices[0].message` (content and tool calls) and `usage`; anything else in a 2xx is
/// `invalid_response`.
pub fn parse_completion(body: &[u8]) -> Result<ModelAnswer, Failure> {
    let invalid = |why: String| Failure::new(ErrorCategory::InvalidResponse, why);
    let value: Value = serde_json::from_slice(body)
        .map_err(|_| invalid("provider response is not JSON".into()))?;
    if !value["error"].is_null() {
        return Err(
            invalid("provider returned an error in a 2xx response".into())
                .with_detail(error_message(body)),
        );
    }
    let choices = value["choices"]
        .as_array()
        .ok_or_else(|| invalid("provider response has no `choices` list".into()))?;
    let first = choices
        .first()
        .ok_or_else(|| invalid("provider response has an empty `choices` list".into()))?;
    // What is wrong may quote the answer (a role, a tool-call type): a detail.
    let message = parse_assistant(&first["message"]).map_err(|e| {
        invalid("provider response has an unreadable `choices[0].message`".into())
            .with_detail(Some(e.to_string()))
    })?;
    let count = |field: &str| value["usage"][field].as_u64().unwrap_or(0);
    let prompt_tokens = count("prompt_tokens");
    let completion_tokens = count("completion_tokens");
    // Saturating: the counts are the provider's, and a garbled pair must not overflow.
    let total_tokens = value["usage"]["total_tokens"]
        .as_u64()
        .unwrap_or(prompt_tokens.saturating_add(completion_tokens));
    Ok(ModelAnswer {
        message,
        usage: Usage {
            prompt_tokens,
            completion_tokens,
            total_tokens,
        },
        limits: ProviderLimits::default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_a_completion() {
        let body = br#"{"choices":[{"message":{"role":"assistant","content":"hi"}}],"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}"#;
        let answer = parse_completion(body).expect("ok");
        assert_eq!(answer.message.content.as_deref(), Some("hi"));
        assert_eq!(answer.usage.total_tokens, 5);
    }

    /// Found by the `provider_response` fuzz target: a sum past `u64::MAX` panicked.
    #[test]
    fn huge_usage_counts_saturate() {
        let body = br#"{"choices":[{"message":{"role":"assistant","content":"x"}}],"usage":{"prompt_tokens":18446744073709551615,"completion_tokens":1}}"#;
        let answer = parse_completion(body).expect("ok");
        assert_eq!(answer.usage.total_tokens, u64::MAX);
    }

    #[test]
    fn retry_after_ms_is_preferred_and_nonsense_ignored() {
        assert_eq!(
            wait_asked(Some("1500"), Some("9")),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(
            wait_asked(Some("soon"), Some("2")),
            Some(Duration::from_secs(2))
        );
        assert_eq!(wait_asked(Some("-5"), None), None);
        assert_eq!(wait_asked(None, None), None);
    }

    #[test]
    fn parses_tool_calls() {
        let body = br#"{"choices":[{"message":{"role":"assistant","content":null,"tool_calls":[{"id":"c1","type":"function","function":{"name":"lookup","arguments":"{\"id\":\"1\"}"}}]}}]}"#;
        let answer = parse_completion(body).expect("ok");
        assert_eq!(answer.message.tool_calls.len(), 1);
        assert_eq!(answer.message.tool_calls[0].function.name, "lookup");
    }

    #[test]
    fn malformed_responses_are_invalid_response() {
        for body in [
            &b"not json"[..],
            br#"{"choices":"x"}"#,
            br#"{"choices":[]}"#,
            br#"{"choices":[{"message":{"content":7}}]}"#,
            br#"{"choices":[{"message":{"role":"assistant","tool_calls":[{"type":"function"}]}}]}"#,
            br#"{"error":{"message":"overloaded"},"choices":[]}"#,
        ] {
            let f = parse_completion(body).expect_err("invalid");
            assert_eq!(f.category, ErrorCategory::InvalidResponse, "{f:?}");
        }
    }

    #[test]
    fn what_the_provider_said_stays_out_of_the_message() {
        let body = br#"{"error":{"message":"Invalid prompt: 'mail alice@example.com'"}}"#;
        assert_eq!(
            error_message(body).as_deref(),
            Some("Invalid prompt: 'mail alice@example.com'")
        );
        let failure = Failure::new(ErrorCategory::BadRequest, "provider answered HTTP 400")
            .with_detail(error_message(body));
        assert_eq!(failure.message, "provider answered HTTP 400");
        assert_eq!(
            failure.to_job_error().message,
            "provider answered HTTP 400: Invalid prompt: 'mail alice@example.com'"
        );
        let long = format!(r#"{{"error":{{"message":"{}"}}}}"#, "x".repeat(500));
        assert_eq!(error_message(long.as_bytes()).map(|m| m.len()), Some(200));
        assert_eq!(error_message(b"<html>busy</html>"), None);

        let in_2xx = br#"{"error":{"message":"overloaded, alice@example.com"},"choices":[]}"#;
        let f = parse_completion(in_2xx).expect_err("invalid");
        assert_eq!(f.message, "provider returned an error in a 2xx response");
        assert_eq!(f.detail.as_deref(), Some("overloaded, alice@example.com"));
        let role = br#"{"choices":[{"message":{"role":"alice@example.com","content":"x"}}]}"#;
        let f = parse_completion(role).expect_err("invalid");
        assert!(!f.message.contains("alice"), "{f:?}");
        assert!(f.full_message().contains("alice@example.com"), "{f:?}");
    }

    #[test]
    fn request_carries_the_conversation_and_tools() {
        let agent: AgentConfig = serde_json::from_value(json!({
            "provider": "openai", "base_url": "http://127.0.0.1:1/v1", "model": "m"
        }))
        .expect("agent");
        let provider = Provider::new(&agent, None, &ExtraRoots::default());
        assert_eq!(
            provider.endpoint.as_str(),
            "http://127.0.0.1:1/v1/chat/completions"
        );
        let request = ModelRequest {
            turn: 0,
            messages: vec![
                agentfleet_agent::Message::system("be brief"),
                agentfleet_agent::Message::user("x"),
            ],
            tools: vec![json!({"type": "function", "function": {"name": "t"}})],
            feedback: None,
            max_tokens: 64,
        };
        let encoded = |request: &ModelRequest| -> Value {
            serde_json::from_slice(&provider.encode(request).expect("encodes")).expect("JSON")
        };
        let body = encoded(&request);
        assert_eq!(body["messages"][0]["role"], "system");
        assert_eq!(body["messages"][1]["content"], "x");
        assert_eq!(body["max_tokens"], 64);
        assert_eq!(body["tools"][0]["function"]["name"], "t");
        let plain = ModelRequest {
            tools: Vec::new(),
            ..request
        };
        assert!(encoded(&plain).get("tools").is_none());
    }
}
