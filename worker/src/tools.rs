//! HTTP tools: one operator-configured endpoint per tool, called through the one outbound
//! client. Arguments fill the URL template's placeholders (path segments and query values,
//! percent-encoded); the rest travel as the JSON body (POST, PUT, PATCH) or as query
//! parameters (GET, DELETE). The host is never the model's to choose.
//!
//! A tool's failure is not the run's: it goes back to the model as the tool's result, which
//! may try otherwise. Only the agent runtime's limits end a run that keeps failing.

use std::time::Duration;

use secrecy::{ExposeSecret as _, SecretString};
use serde_json::{Map, Value};

use agentfleet_agent::{truncate_tool_output, SideEffect, ToolStatus};
use agentfleet_common::config::{ToolConfig, ToolMethod};
use agentfleet_common::outbound::{Destination, Outbound, OutboundError, Request};
use agentfleet_common::tool_url::{TemplateError, UrlTemplate};

/// One configured tool, ready to call.
pub struct HttpTool {
    method: reqwest::Method,
    has_body: bool,
    template: UrlTemplate,
    headers: Vec<(String, SecretString)>,
    timeout: Duration,
    max_response_bytes: usize,
    side_effect: SideEffect,
}

/// One call: its validated arguments, and the `Idempotency-Key` to send (for `idempotent`
/// and `write` tools: stable across every attempt of the same step).
pub struct ToolCall<'a> {
    pub arguments: &'a Value,
    pub idempotency_key: Option<&'a str>,
}

/// What a call gave back, as it goes into the step log and to the model.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolResult {
    pub status: ToolStatus,
    pub content: String,
    pub http_status: Option<u16>,
}

impl HttpTool {
    pub fn new(
        config: &ToolConfig,
        headers: Vec<(String, SecretString)>,
    ) -> Result<Self, TemplateError> {
        let method = match config.http.method {
            ToolMethod::Get => reqwest::Method::GET,
            ToolMethod::Post => reqwest::Method::POST,
            ToolMethod::Put => reqwest::Method::PUT,
            ToolMethod::Patch => reqwest::Method::PATCH,
            ToolMethod::Delete => reqwest::Method::DELETE,
        };
        Ok(Self {
            method,
            has_body: config.http.method.has_body(),
            template: config.url_template()?,
            headers,
            timeout: config.timeout,
            max_response_bytes: config.max_response_bytes,
            side_effect: config.side_effect,
        })
    }

    pub async fn call(&self, outbound: &Outbound, call: ToolCall<'_>) -> ToolResult {
        let empty = Map::new();
        let args = call.arguments.as_object().unwrap_or(&empty);
        let mut url = match self.template.render(args) {
            Ok(url) => url,
            Err(err) => return failed(format!("cannot build the tool's URL: {err}")),
        };
        let rest: Map<String, Value> = args
            .iter()
            .filter(|(name, _)| !self.template.placeholders().contains(*name))
            .map(|(name, value)| (name.clone(), value.clone()))
            .collect();
        let json_body = if self.has_body {
            serde_json::to_vec(&rest).ok()
        } else {
            append_query(&mut url, &rest);
            None
        };
        let mut headers: Vec<(&str, &str)> = self
            .headers
            .iter()
            .map(|(name, value)| (name.as_str(), value.expose_secret()))
            .collect();
        if let Some(key) = call.idempotency_key {
            headers.push(("idempotency-key", key));
        }
        let request = Request {
            method: self.method.clone(),
            url: &url,
            headers: &headers,
            json_body,
            timeout: self.timeout,
        };
        match outbound.send(Destination::Tool, request).await {
            Ok(response) => {
                let content = truncate_tool_output(&response.body, self.max_response_bytes);
                let ok = (200..300).contains(&response.status);
                ToolResult {
                    status: if ok {
                        ToolStatus::Ok
                    } else {
                        ToolStatus::Error
                    },
                    content: if ok {
                        content
                    } else {
                        format!("the tool answered HTTP {}: {content}", response.status)
                    },
                    http_status: Some(response.status),
                }
            }
            Err(err) => failed(self.describe_failure(&err)),
        }
    }

    /// A transport failure, said so the model knows whether the call may have happened.
    fn describe_failure(&self, err: &OutboundError) -> String {
        let may_have_run = !matches!(err, OutboundError::Connect(_) | OutboundError::Blocked(_));
        let effect = match (self.side_effect, may_have_run) {
            (SideEffect::Write, true) => "; it may have taken effect, so check before repeating it",
            _ => "",
        };
        match err {
            OutboundError::Timeout => {
                format!("the tool did not answer within {:?}{effect}", self.timeout)
            }
            other => format!("the tool call failed: {other}{effect}"),
        }
    }
}

fn failed(content: String) -> ToolResult {
    ToolResult {
        status: ToolStatus::Error,
        content,
        http_status: None,
    }
}

/// Arguments the template does not use, as query parameters (encoded by `url`).
fn append_query(url: &mut url::Url, rest: &Map<String, Value>) {
    if rest.is_empty() {
        return;
    }
    let mut pairs = url.query_pairs_mut();
    for (name, value) in rest {
        match value {
            Value::Null => {}
            Value::String(text) => {
                pairs.append_pair(name, text);
            }
            other => {
                pairs.append_pair(name, &other.to_string());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn unused_arguments_become_query_parameters() {
        let mut url = url::Url::parse("http://h/x?a=1").expect("url");
        let rest = json!({"q": "a b&c", "n": 2, "skip": null});
        append_query(&mut url, rest.as_object().expect("object"));
        assert_eq!(url.as_str(), "http://h/x?a=1&n=2&q=a+b%26c");
    }
}
