//! The OpenAI chat format.
//!
//! [`Message`] serializes exactly as an item of OpenAI's `messages` request array, so the worker
//! puts the conversation into the request body as it is. [`parse_assistant`] reads
//! `choices[0].message` of a response, strictly: a malformed answer is refused with a precise
//! reason instead of becoming a step the runtime has to second-guess.

use std::ops::{Add, AddAssign};

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

use crate::schema::json_kind;

/// One item of a chat conversation, tagged by `role` as OpenAI expects.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "role", rename_all = "snake_case")]
pub enum Message {
    System {
        content: String,
    },
    User {
        content: String,
    },
    Assistant {
        /// `null` when the model only called tools.
        content: Option<String>,
        #[serde(
            default,
            skip_serializing_if = "Vec::is_empty",
            deserialize_with = "null_as_empty"
        )]
        tool_calls: Vec<ToolCall>,
    },
    Tool {
        tool_call_id: String,
        content: String,
    },
}

impl Message {
    pub fn system(content: impl Into<String>) -> Self {
        Self::System {
            content: content.into(),
        }
    }

    pub fn user(content: impl Into<String>) -> Self {
        Self::User {
            content: content.into(),
        }
    }
}

/// One function call the model asked for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ToolCall {
    pub id: String,
    /// Always `"function"`, the only kind of tool call OpenAI has.
    #[serde(rename = "type", default = "function_kind")]
    pub kind: String,
    pub function: FunctionCall,
}

impl ToolCall {
    pub fn function(
        id: impl Into<String>,
        name: impl Into<String>,
        arguments: impl Into<String>,
    ) -> Self {
        Self {
            id: id.into(),
            kind: function_kind(),
            function: FunctionCall {
                name: name.into(),
                arguments: arguments.into(),
            },
        }
    }
}

fn function_kind() -> String {
    "function".to_owned()
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FunctionCall {
    pub name: String,
    /// The arguments as the model wrote them: JSON text that may well be invalid, which is why it
    /// is kept raw and only parsed when the call is planned.
    pub arguments: String,
}

/// What one model call produced.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AssistantMessage {
    #[serde(default)]
    pub content: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_empty"
    )]
    pub tool_calls: Vec<ToolCall>,
}

impl AssistantMessage {
    /// This message as an item of the conversation.
    ///
    /// An assistant message with neither content nor tool calls is sent with empty content:
    /// OpenAI refuses a `null` content unless tool calls are present.
    pub fn to_message(&self) -> Message {
        let content = match (&self.content, self.tool_calls.is_empty()) {
            (None, true) => Some(String::new()),
            (content, _) => content.clone(),
        };
        Message::Assistant {
            content,
            tool_calls: self.tool_calls.clone(),
        }
    }
}

/// Some providers send `"tool_calls": null` where OpenAI leaves the field out.
fn null_as_empty<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Vec<T>, D::Error> {
    Ok(Option::<Vec<T>>::deserialize(d)?.unwrap_or_default())
}

/// Token counts of one call, or summed over a run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(default)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
}

/// Saturating: the counts come from a provider's response, and a garbled one must not panic.
impl Add for Usage {
    type Output = Usage;

    fn add(self, rhs: Usage) -> Usage {
        Usage {
            prompt_tokens: self.prompt_tokens.saturating_add(rhs.prompt_tokens),
            completion_tokens: self.completion_tokens.saturating_add(rhs.completion_tokens),
            total_tokens: self.total_tokens.saturating_add(rhs.total_tokens),
        }
    }
}

impl AddAssign for Usage {
    fn add_assign(&mut self, rhs: Usage) {
        *self = *self + rhs;
    }
}

/// Why a response's `choices[0].message` could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("the message is {found}, not an object")]
    NotAnObject { found: &'static str },
    #[error("the message has role {role:?}, not \"assistant\"")]
    WrongRole { role: String },
    #[error("`content` is {found}, not a string or null")]
    ContentNotAString { found: &'static str },
    #[error("`tool_calls` is {found}, not an array")]
    ToolCallsNotAnArray { found: &'static str },
    #[error("tool_calls[{index}] is {found}, not an object")]
    ToolCallNotAnObject { index: usize, found: &'static str },
    #[error("tool_calls[{index}] has no `id` (it must be a non-empty string)")]
    MissingToolCallId { index: usize },
    #[error("tool_calls[{index}] has type {kind:?}; only \"function\" is supported")]
    UnsupportedToolCallType { index: usize, kind: String },
    #[error("tool_calls[{index}] has no `function` object")]
    MissingFunction { index: usize },
    #[error("tool_calls[{index}].function has no `name` (it must be a non-empty string)")]
    MissingFunctionName { index: usize },
    #[error("tool_calls[{index}].function.arguments is {found}, not a string of JSON text")]
    ArgumentsNotAString { index: usize, found: &'static str },
}

/// Reads OpenAI's `choices[0].message`. `content` may be absent or null (it is when the model
/// only calls tools) and `tool_calls` may be absent or null; everything else must be as OpenAI
/// documents it. Unknown fields (`refusal`, `annotations`, …) are ignored.
pub fn parse_assistant(choice_message: &Value) -> Result<AssistantMessage, ParseError> {
    let Value::Object(obj) = choice_message else {
        return Err(ParseError::NotAnObject {
            found: json_kind(choice_message),
        });
    };
    match obj.get("role") {
        None | Some(Value::Null) => {}
        Some(Value::String(role)) if role == "assistant" => {}
        Some(other) => {
            let role = other
                .as_str()
                .map_or_else(|| other.to_string(), str::to_owned);
            return Err(ParseError::WrongRole { role });
        }
    }
    let content = match obj.get("content") {
        None | Some(Value::Null) => None,
        Some(Value::String(text)) => Some(text.clone()),
        Some(other) => {
            return Err(ParseError::ContentNotAString {
                found: json_kind(other),
            })
        }
    };
    let tool_calls = match obj.get("tool_calls") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(index, item)| parse_tool_call(index, item))
            .collect::<Result<_, _>>()?,
        Some(other) => {
            return Err(ParseError::ToolCallsNotAnArray {
                found: json_kind(other),
            })
        }
    };
    Ok(AssistantMessage {
        content,
        tool_calls,
    })
}

fn parse_tool_call(index: usize, item: &Value) -> Result<ToolCall, ParseError> {
    let Value::Object(call) = item else {
        return Err(ParseError::ToolCallNotAnObject {
            index,
            found: json_kind(item),
        });
    };
    let id = non_empty_str(call, "id").ok_or(ParseError::MissingToolCallId { index })?;
    match call.get("type") {
        // Some OpenAI-compatible servers leave `type` out; there is only one kind anyway.
        None | Some(Value::Null) => {}
        Some(Value::String(kind)) if kind == "function" => {}
        Some(other) => {
            let kind = other
                .as_str()
                .map_or_else(|| other.to_string(), str::to_owned);
            return Err(ParseError::UnsupportedToolCallType { index, kind });
        }
    }
    let Some(Value::Object(function)) = call.get("function") else {
        return Err(ParseError::MissingFunction { index });
    };
    let name = non_empty_str(function, "name").ok_or(ParseError::MissingFunctionName { index })?;
    let arguments = match function.get("arguments") {
        Some(Value::String(arguments)) => arguments.clone(),
        Some(other) => {
            return Err(ParseError::ArgumentsNotAString {
                index,
                found: json_kind(other),
            })
        }
        None => {
            return Err(ParseError::ArgumentsNotAString {
                index,
                found: "missing",
            })
        }
    };
    Ok(ToolCall::function(id, name, arguments))
}

fn non_empty_str<'a>(obj: &'a Map<String, Value>, key: &str) -> Option<&'a str> {
    obj.get(key)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn messages_serialize_as_openai_items() {
        let call = ToolCall::function("call_1", "lookup", r#"{"q":"x"}"#);
        let cases = [
            (
                Message::system("be brief"),
                json!({"role": "system", "content": "be brief"}),
            ),
            (
                Message::user("hi"),
                json!({"role": "user", "content": "hi"}),
            ),
            (
                Message::Assistant {
                    content: None,
                    tool_calls: vec![call],
                },
                json!({"role": "assistant", "content": null, "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": "{\"q\":\"x\"}"}}
                ]}),
            ),
            (
                Message::Assistant {
                    content: Some("done".into()),
                    tool_calls: vec![],
                },
                json!({"role": "assistant", "content": "done"}),
            ),
            (
                Message::Tool {
                    tool_call_id: "call_1".into(),
                    content: "42".into(),
                },
                json!({"role": "tool", "tool_call_id": "call_1", "content": "42"}),
            ),
        ];
        for (message, expected) in cases {
            let value = serde_json::to_value(&message).expect("serializes");
            assert_eq!(value, expected);
            let back: Message = serde_json::from_value(value).expect("deserializes");
            assert_eq!(back, message);
        }
        let text = serde_json::to_string(&Message::user("hi")).expect("serializes");
        assert_eq!(text, r#"{"role":"user","content":"hi"}"#);
    }

    #[test]
    fn parses_openai_choice_messages() {
        let with_calls = json!({
            "role": "assistant", "content": null, "refusal": null,
            "tool_calls": [
                {"id": "call_a", "type": "function", "function": {"name": "f", "arguments": "{}"}},
                {"id": "call_b", "function": {"name": "g", "arguments": "{\"x\":1}"}}
            ]
        });
        let parsed = parse_assistant(&with_calls).expect("valid");
        assert_eq!(parsed.content, None);
        assert_eq!(
            parsed.tool_calls,
            vec![
                ToolCall::function("call_a", "f", "{}"),
                ToolCall::function("call_b", "g", "{\"x\":1}")
            ]
        );

        let text_only = json!({"role": "assistant", "content": "hello"});
        assert_eq!(
            parse_assistant(&text_only).expect("valid"),
            AssistantMessage {
                content: Some("hello".into()),
                tool_calls: vec![]
            }
        );
        let null_calls = json!({"content": "x", "tool_calls": null});
        assert!(parse_assistant(&null_calls)
            .expect("valid")
            .tool_calls
            .is_empty());
        // The serde derive agrees with the hand-written parser on OpenAI's shape.
        let derived: AssistantMessage = serde_json::from_value(with_calls).expect("derive");
        assert_eq!(derived, parsed);
    }

    #[test]
    fn refuses_malformed_messages_precisely() {
        let cases = [
            (json!("text"), ParseError::NotAnObject { found: "a string" }),
            (
                json!({"role": "user"}),
                ParseError::WrongRole {
                    role: "user".into(),
                },
            ),
            (
                json!({"content": ["part"]}),
                ParseError::ContentNotAString { found: "an array" },
            ),
            (
                json!({"tool_calls": {}}),
                ParseError::ToolCallsNotAnArray { found: "an object" },
            ),
        ];
        for (input, expected) in cases {
            assert_eq!(parse_assistant(&input), Err(expected), "{input}");
        }
    }

    #[test]
    fn refuses_malformed_tool_calls_precisely() {
        use ParseError::*;
        // The bad call comes second, so the index in the error is checked too.
        let good = json!({"id": "ok", "function": {"name": "f", "arguments": "{}"}});
        let message = |bad: Value| json!({"role": "assistant", "tool_calls": [good, bad]});
        let cases = [
            (
                json!(1),
                ToolCallNotAnObject {
                    index: 1,
                    found: "a number",
                },
            ),
            (
                json!({"function": {"name": "f", "arguments": "{}"}}),
                MissingToolCallId { index: 1 },
            ),
            (
                json!({"id": "", "function": {"name": "f"}}),
                MissingToolCallId { index: 1 },
            ),
            (
                json!({"id": "a", "type": "code"}),
                UnsupportedToolCallType {
                    index: 1,
                    kind: "code".into(),
                },
            ),
            (json!({"id": "a"}), MissingFunction { index: 1 }),
            (
                json!({"id": "a", "function": {"arguments": "{}"}}),
                MissingFunctionName { index: 1 },
            ),
            (
                json!({"id": "a", "function": {"name": "f"}}),
                ArgumentsNotAString {
                    index: 1,
                    found: "missing",
                },
            ),
        ];
        for (bad, expected) in cases {
            assert_eq!(
                parse_assistant(&message(bad.clone())),
                Err(expected),
                "{bad}"
            );
        }
        let bad = json!({"id": "a", "function": {"name": "f", "arguments": {"x": 1}}});
        let err = parse_assistant(&message(bad)).expect_err("arguments must be text");
        assert_eq!(
            err.to_string(),
            "tool_calls[1].function.arguments is an object, not a string of JSON text"
        );
    }

    #[test]
    fn empty_assistant_message_is_sent_with_empty_content() {
        let empty = AssistantMessage::default().to_message();
        assert_eq!(
            serde_json::to_value(empty).expect("ser"),
            json!({"role": "assistant", "content": ""})
        );
    }

    #[test]
    fn usage_adds_without_overflowing() {
        let mut total = Usage {
            prompt_tokens: 1,
            completion_tokens: 2,
            total_tokens: 3,
        };
        total += Usage {
            prompt_tokens: 10,
            completion_tokens: 20,
            total_tokens: 30,
        };
        assert_eq!(
            total,
            Usage {
                prompt_tokens: 11,
                completion_tokens: 22,
                total_tokens: 33
            }
        );
        let max = Usage {
            prompt_tokens: u64::MAX,
            ..Usage::default()
        };
        assert_eq!((max + max).prompt_tokens, u64::MAX);
    }
}
