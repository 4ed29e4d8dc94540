//! Parsing and validating `POST /v1/jobs` bodies by hand, so every mistake is reported with
//! the exact field it concerns (`input.messages[2].role`), not a generic serde message.

use serde_json::{Map, Value};
use url::Url;

use agentfleet_agent::LimitOverrides;
use agentfleet_common::wire::{ChatMessage, JobInput, Role};

use crate::problem::ApiError;

/// A validated submission (the agent is checked against the config by the caller).
#[derive(Debug, PartialEq)]
pub struct SubmitRequest {
    pub agent: String,
    pub input: JobInput,
    pub webhook_url: Option<Url>,
    pub metadata: Option<Value>,
    pub timeout_secs: Option<u64>,
    pub limits: Option<LimitOverrides>,
}

const FIELDS: &[&str] = &[
    "agent",
    "input",
    "webhook_url",
    "metadata",
    "timeout_secs",
    "limits",
];
const LIMIT_FIELDS: &[&str] = &[
    "max_turns",
    "max_tool_calls",
    "max_total_tokens",
    "max_cost_usd",
];
/// The longest deadline a job may ask for (it can only lower the agent's own).
const MAX_TIMEOUT_SECS: u64 = 86_400;
const MAX_URL_LEN: usize = 2048;

pub fn parse_submit(body: &[u8]) -> Result<SubmitRequest, ApiError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::InvalidBody(format!("body is not valid JSON: {e}")))?;
    let Value::Object(mut obj) = value else {
        return Err(ApiError::InvalidBody("body must be a JSON object".into()));
    };
    if let Some(unknown) = obj.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        return Err(ApiError::field(
            unknown.clone(),
            format!("unknown field; expected one of {}", FIELDS.join(", ")),
        ));
    }
    let agent = match obj.remove("agent") {
        Some(Value::String(agent)) if !agent.is_empty() => agent,
        Some(Value::String(_)) => return Err(ApiError::field("agent", "must not be empty")),
        Some(_) => return Err(ApiError::field("agent", "must be a string")),
        None => return Err(ApiError::field("agent", "is required")),
    };
    let input = parse_input(obj.remove("input"))?;
    let webhook_url = match obj.remove("webhook_url") {
        None | Some(Value::Null) => None,
        Some(Value::String(raw)) => {
            if raw.len() > MAX_URL_LEN {
                return Err(ApiError::field(
                    "webhook_url",
                    format!("longer than {MAX_URL_LEN} characters"),
                ));
            }
            let url = Url::parse(&raw)
                .map_err(|e| ApiError::field("webhook_url", format!("not a valid URL: {e}")))?;
            Some(url)
        }
        Some(_) => return Err(ApiError::field("webhook_url", "must be a string")),
    };
    let metadata = match obj.remove("metadata") {
        None | Some(Value::Null) => None,
        Some(meta @ Value::Object(_)) => Some(meta),
        Some(_) => return Err(ApiError::field("metadata", "must be a JSON object")),
    };
    let timeout_secs = match obj.remove("timeout_secs") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => match n.as_u64() {
            Some(secs @ 1..=MAX_TIMEOUT_SECS) => Some(secs),
            _ => {
                return Err(ApiError::field(
                    "timeout_secs",
                    format!("must be a whole number of seconds from 1 to {MAX_TIMEOUT_SECS}"),
                ))
            }
        },
        Some(_) => return Err(ApiError::field("timeout_secs", "must be a number")),
    };
    let limits = parse_limits(obj.remove("limits"))?;
    Ok(SubmitRequest {
        agent,
        input,
        webhook_url,
        metadata,
        timeout_secs,
        limits,
    })
}

/// `limits: {max_turns, max_tool_calls, max_total_tokens, max_cost_usd}`, each optional and
/// positive. They can only lower the agent's limits; a higher value is not an error, it just
/// has no effect (the agent's ceiling holds).
fn parse_limits(value: Option<Value>) -> Result<Option<LimitOverrides>, ApiError> {
    let obj = match value {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Object(obj)) => obj,
        Some(_) => return Err(ApiError::field("limits", "must be a JSON object")),
    };
    if let Some(unknown) = obj.keys().find(|k| !LIMIT_FIELDS.contains(&k.as_str())) {
        return Err(ApiError::field(
            format!("limits.{unknown}"),
            format!("unknown field; expected one of {}", LIMIT_FIELDS.join(", ")),
        ));
    }
    let count = |name: &str| -> Result<Option<u64>, ApiError> {
        match obj.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(value) => match value.as_u64() {
                Some(n) if n > 0 => Ok(Some(n)),
                _ => Err(ApiError::field(
                    format!("limits.{name}"),
                    "must be a whole number greater than zero",
                )),
            },
        }
    };
    // A count past u32 is no limit at all: the agent's own ceiling holds.
    let narrow = |name: &str| -> Result<Option<u32>, ApiError> {
        Ok(count(name)?.map(|n| u32::try_from(n).unwrap_or(u32::MAX)))
    };
    let max_cost_usd = match obj.get("max_cost_usd") {
        None | Some(Value::Null) => None,
        Some(value) => match value.as_f64() {
            Some(usd) if usd.is_finite() && usd > 0.0 => Some(usd),
            _ => {
                return Err(ApiError::field(
                    "limits.max_cost_usd",
                    "must be a number greater than zero",
                ))
            }
        },
    };
    Ok(Some(LimitOverrides {
        max_turns: narrow("max_turns")?,
        max_tool_calls: narrow("max_tool_calls")?,
        max_total_tokens: count("max_total_tokens")?,
        max_cost_usd,
    }))
}

fn parse_input(value: Option<Value>) -> Result<JobInput, ApiError> {
    match value {
        None | Some(Value::Null) => Err(ApiError::field("input", "is required")),
        Some(Value::String(text)) => {
            if text.trim().is_empty() {
                Err(ApiError::field("input", "must not be empty"))
            } else {
                Ok(JobInput::Text(text))
            }
        }
        Some(Value::Object(obj)) => parse_messages(obj),
        Some(_) => Err(ApiError::field(
            "input",
            "must be a string or an object with `messages`",
        )),
    }
}

fn parse_messages(mut obj: Map<String, Value>) -> Result<JobInput, ApiError> {
    if let Some(unknown) = obj.keys().find(|k| k.as_str() != "messages") {
        return Err(ApiError::field(
            format!("input.{unknown}"),
            "unknown field; expected `messages`",
        ));
    }
    let Some(Value::Array(items)) = obj.remove("messages") else {
        return Err(ApiError::field("input.messages", "must be an array"));
    };
    if items.is_empty() {
        return Err(ApiError::field("input.messages", "must not be empty"));
    }
    let mut messages = Vec::with_capacity(items.len());
    for (i, item) in items.into_iter().enumerate() {
        let at = |field: &str| format!("input.messages[{i}]{field}");
        let Value::Object(mut msg) = item else {
            return Err(ApiError::field(
                at(""),
                "must be an object with `role` and `content`",
            ));
        };
        if let Some(unknown) = msg
            .keys()
            .find(|k| !matches!(k.as_str(), "role" | "content"))
        {
            return Err(ApiError::field(
                at(&format!(".{unknown}")),
                "unknown field; expected `role` and `content`",
            ));
        }
        let role = match msg.remove("role") {
            Some(Value::String(role)) => Role::parse(&role).ok_or_else(|| {
                ApiError::field(at(".role"), "must be one of system, user, assistant")
            })?,
            Some(_) => return Err(ApiError::field(at(".role"), "must be a string")),
            None => return Err(ApiError::field(at(".role"), "is required")),
        };
        let content = match msg.remove("content") {
            Some(Value::String(content)) => content,
            Some(_) => return Err(ApiError::field(at(".content"), "must be a string")),
            None => return Err(ApiError::field(at(".content"), "is required")),
        };
        messages.push(ChatMessage { role, content });
    }
    Ok(JobInput::Messages { messages })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(body: &str) -> String {
        match parse_submit(body.as_bytes()) {
            Err(ApiError::InvalidField { field, .. }) => field,
            Err(other) => format!("<{other}>"),
            Ok(_) => "<ok>".into(),
        }
    }

    #[test]
    fn accepts_text_and_messages() {
        let req = parse_submit(br#"{"agent":"a","input":"hi","metadata":{"k":1}}"#).expect("ok");
        assert_eq!(req.input, JobInput::Text("hi".into()));
        let req = parse_submit(
            br#"{"agent":"a","input":{"messages":[{"role":"user","content":"x"}]},"webhook_url":"https://example.com/h"}"#,
        )
        .expect("ok");
        assert!(matches!(req.input, JobInput::Messages { .. }));
        assert_eq!(
            req.webhook_url.expect("url").host_str(),
            Some("example.com")
        );
    }

    #[test]
    fn names_the_bad_field() {
        assert_eq!(field_of(r#"{"input":"x"}"#), "agent");
        assert_eq!(field_of(r#"{"agent":7,"input":"x"}"#), "agent");
        assert_eq!(field_of(r#"{"agent":"a"}"#), "input");
        assert_eq!(field_of(r#"{"agent":"a","input":""}"#), "input");
        assert_eq!(field_of(r#"{"agent":"a","input":5}"#), "input");
        assert_eq!(
            field_of(r#"{"agent":"a","input":{"messages":[]}}"#),
            "input.messages"
        );
        assert_eq!(
            field_of(
                r#"{"agent":"a","input":{"messages":[{"role":"user","content":"x"},{"role":"robot","content":"x"}]}}"#
            ),
            "input.messages[1].role"
        );
        assert_eq!(
            field_of(r#"{"agent":"a","input":{"messages":[{"role":"user"}]}}"#),
            "input.messages[0].content"
        );
        assert_eq!(
            field_of(r#"{"agent":"a","input":"x","webhook_url":"nope"}"#),
            "webhook_url"
        );
        assert_eq!(
            field_of(r#"{"agent":"a","input":"x","metadata":[1]}"#),
            "metadata"
        );
        assert_eq!(
            field_of(r#"{"agent":"a","input":"x","agnet":"b"}"#),
            "agnet"
        );
        assert_eq!(
            field_of(r#"{"agent":"a","input":"x","limits":{"max_turns":0}}"#),
            "limits.max_turns"
        );
        assert_eq!(
            field_of(r#"{"agent":"a","input":"x","limits":{"max_cost_usd":"1"}}"#),
            "limits.max_cost_usd"
        );
        assert_eq!(
            field_of(r#"{"agent":"a","input":"x","limits":{"max_turnz":3}}"#),
            "limits.max_turnz"
        );
        assert_eq!(
            field_of(r#"{"agent":"a","input":"x","limits":[1]}"#),
            "limits"
        );
    }

    #[test]
    fn limits_are_read() {
        let req = parse_submit(
            br#"{"agent":"a","input":"x","limits":{"max_turns":3,"max_cost_usd":0.5}}"#,
        )
        .expect("ok");
        let limits = req.limits.expect("limits");
        assert_eq!(limits.max_turns, Some(3));
        assert_eq!(limits.max_cost_usd, Some(0.5));
        assert_eq!(limits.max_tool_calls, None);
    }

    #[test]
    fn rejects_non_objects_and_bad_json() {
        assert!(matches!(
            parse_submit(b"[1]"),
            Err(ApiError::InvalidBody(_))
        ));
        assert!(matches!(
            parse_submit(b"{\"agent\":"),
            Err(ApiError::InvalidBody(_))
        ));
        assert!(matches!(
            parse_submit(b"\xff\xfe"),
            Err(ApiError::InvalidBody(_))
        ));
    }
}
