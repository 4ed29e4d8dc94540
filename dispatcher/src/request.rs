//! `POST /v1/jobs` bodies. Each rule lives in the type of its field (a `TryFrom` that serde
//! runs while reading), and the body is read through `serde_path_to_error`, so a rejection
//! names the exact field (`input.messages[2].role`) and the rule it breaks. The limits are
//! constants because they are part of the contract: the OpenAPI document states them.

use std::fmt;
use std::marker::PhantomData;

use serde::de::value::MapAccessDeserializer;
use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use std::collections::BTreeMap;

use serde_json::{json, Map, Number, Value};
use url::Url;

use agentfleet_agent::{InputSchema, LimitOverrides};
use agentfleet_common::config::AgentConfig;
use agentfleet_common::wire::{ChatMessage, JobInput, Role};

use crate::problem::ApiError;

/// Longest agent name a request may carry (configured names are shorter still).
pub const MAX_AGENT_CHARS: usize = 128;
/// Largest text input, or content of one message, in bytes of UTF-8.
pub const MAX_CONTENT_BYTES: usize = 512 * 1024;
/// Most messages a conversation input may hold.
pub const MAX_MESSAGES: usize = 256;
/// Largest `metadata`, serialized as compact JSON.
pub const MAX_METADATA_BYTES: usize = 8 * 1024;
/// Most keys at the top of `metadata`.
pub const MAX_METADATA_KEYS: usize = 64;
/// Deepest nesting of arrays and objects inside `metadata` or a structured `input`.
pub const MAX_JSON_DEPTH: usize = 32;
/// Longest `webhook_url`.
pub const MAX_URL_CHARS: usize = 2048;
/// The longest deadline a job may ask for (it can only lower the agent's own).
pub const MAX_TIMEOUT_SECS: u64 = 86_400;

/// A submission whose every field follows its rules. `input` is still raw JSON: what it must
/// be depends on the agent (see [`job_input`]), which the caller looks up first.
#[derive(Debug, PartialEq)]
pub struct SubmitRequest {
    pub agent: String,
    pub input: Value,
    pub webhook_url: Option<Url>,
    pub metadata: Option<Value>,
    pub timeout_secs: Option<u64>,
    pub limits: Option<LimitOverrides>,
}

/// Reads a `POST /v1/jobs` body.
pub fn parse_submit(body: &[u8]) -> Result<SubmitRequest, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let Object(raw): Object<Body> =
        serde_path_to_error::deserialize(&mut de).map_err(body_error)?;
    de.end()
        .map_err(|e| ApiError::InvalidBody(format!("body is not valid JSON: {e}")))?;
    if raw.input.is_null() {
        return Err(ApiError::field("input", "is required"));
    }
    if depth(&raw.input) > MAX_JSON_DEPTH {
        return Err(too_deep("input"));
    }
    Ok(SubmitRequest {
        agent: raw.agent.0,
        input: raw.input,
        webhook_url: raw.webhook_url.map(|u| u.0),
        metadata: raw.metadata.map(|m| Value::Object(m.0)),
        timeout_secs: raw.timeout_secs.map(|t| t.0),
        limits: raw.limits.map(|Object(l)| l.into_overrides()),
    })
}

/// The job's input for an agent: with an input schema, any JSON value that satisfies it;
/// without, text or a conversation `{messages: [...]}`.
pub fn job_input(input: Value, schema: Option<&InputSchema>) -> Result<JobInput, ApiError> {
    if let Some(schema) = schema {
        return match schema.check(&input) {
            Ok(()) => Ok(JobInput::Data { data: input }),
            Err(violation) => Err(ApiError::field(
                pointer_path("input", &violation.pointer),
                violation.rule,
            )),
        };
    }
    match input {
        Value::String(text) => Content::text(text).map(JobInput::Text),
        Value::Object(_) => {
            let messages: Conversation =
                serde_path_to_error::deserialize(input).map_err(|e| field_error("input", e))?;
            Ok(JobInput::Messages {
                messages: messages.messages.0,
            })
        }
        _ => Err(ApiError::field(
            "input",
            "must be a string or an object with `messages`",
        )),
    }
}

// === the contract ===

/// The JSON Schema of a `POST /v1/jobs` body for these agents, for the OpenAPI document: the
/// rules of the types below, with the same constants, and the configured agents' names and
/// inputs. (Nesting depth and the byte sizes of `metadata` and non-ASCII text are not
/// expressible here; they are stated in the descriptions.)
pub fn body_schema(agents: &BTreeMap<String, AgentConfig>) -> Value {
    let nullable = |kind: &str| json!([kind, "null"]);
    let count = || json!({"type": nullable("integer"), "minimum": 1});
    let structured: Vec<(&String, &Value)> = agents
        .iter()
        .filter_map(|(name, agent)| agent.input_schema.as_ref().map(|s| (name, s)))
        .collect();
    let mut body = json!({
        "type": "object",
        "additionalProperties": false,
        "required": ["agent", "input"],
        "properties": {
            "agent": {
                "type": "string",
                "enum": agents.keys().collect::<Vec<_>>(),
                "description": "The agent to run (GET /v1/agents lists them)",
            },
            "input": chat_input_schema(),
            "webhook_url": {
                "type": nullable("string"),
                "format": "uri",
                "maxLength": MAX_URL_CHARS,
                "pattern": "^https?://[^@/?#]+([/?#].*)?$",
                "description": "Where the signed job.* event is POSTed: a public http(s) URL without user name or password",
            },
            "metadata": {
                "type": nullable("object"),
                "maxProperties": MAX_METADATA_KEYS,
                "description": format!("Returned as given on the record and the webhook: at most {MAX_METADATA_BYTES} bytes as compact JSON, nested at most {MAX_JSON_DEPTH} levels"),
            },
            "timeout_secs": {"type": nullable("integer"), "minimum": 1, "maximum": MAX_TIMEOUT_SECS},
            "limits": {
                "type": nullable("object"),
                "additionalProperties": false,
                "description": "Lower the agent's limits for this job (a higher value has no effect)",
                "properties": {
                    "max_turns": count(),
                    "max_tool_calls": count(),
                    "max_total_tokens": count(),
                    "max_cost_usd": {"type": nullable("number"), "exclusiveMinimum": 0},
                },
            },
        },
    });
    if !structured.is_empty() {
        // What `input` must be depends on `agent`: one if/then per agent.
        body["properties"]["input"] = json!({"description": "Depends on the agent"});
        body["allOf"] = agents
            .iter()
            .map(|(name, agent)| {
                let input = agent.input_schema.clone().unwrap_or_else(chat_input_schema);
                json!({
                    "if": {"properties": {"agent": {"const": name}}},
                    "then": {"properties": {"input": input}},
                })
            })
            .collect();
    }
    body
}

/// `input` of an agent without an input schema: text, or a conversation.
fn chat_input_schema() -> Value {
    let text = json!({
        "type": "string",
        "minLength": 1,
        "maxLength": MAX_CONTENT_BYTES,
        "pattern": "\\S",
        "description": format!("Text that is not blank, at most {MAX_CONTENT_BYTES} bytes as UTF-8"),
    });
    let message = json!({
        "type": "object",
        "additionalProperties": false,
        "required": ["role", "content"],
        "properties": {
            "role": {"type": "string", "enum": ["system", "user", "assistant"]},
            "content": {"type": "string", "maxLength": MAX_CONTENT_BYTES},
        },
    });
    json!({"oneOf": [
        text,
        {
            "type": "object",
            "additionalProperties": false,
            "required": ["messages"],
            "properties": {
                "messages": {"type": "array", "minItems": 1, "maxItems": MAX_MESSAGES, "items": message},
            },
        },
    ]})
}

// === the body's types ===

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Body {
    agent: AgentName,
    #[serde(default)]
    input: Value,
    #[serde(default)]
    webhook_url: Option<WebhookUrl>,
    #[serde(default)]
    metadata: Option<Metadata>,
    #[serde(default)]
    timeout_secs: Option<TimeoutSecs>,
    #[serde(default)]
    limits: Option<Object<LimitsBody>>,
}

/// A struct read only from a JSON object: serde's derive also reads a struct from an array
/// (`[1]` as `{max_turns: 1}`), which is not what a caller who sent an array meant.
struct Object<T>(T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Object<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct OnlyMaps<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for OnlyMaps<T> {
            type Value = T;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
                T::deserialize(MapAccessDeserializer::new(map))
            }
        }
        deserializer
            .deserialize_map(OnlyMaps(PhantomData))
            .map(Object)
    }
}

#[derive(Deserialize)]
#[serde(try_from = "String")]
struct AgentName(String);

impl TryFrom<String> for AgentName {
    type Error = String;
    fn try_from(name: String) -> Result<Self, String> {
        match name.chars().count() {
            0 => Err("must not be empty".into()),
            n if n > MAX_AGENT_CHARS => Err(format!("longer than {MAX_AGENT_CHARS} characters")),
            _ => Ok(Self(name)),
        }
    }
}

/// An http(s) URL without user info: credentials in a URL end up in logs and proxies.
#[derive(Deserialize)]
#[serde(try_from = "String")]
struct WebhookUrl(Url);

impl TryFrom<String> for WebhookUrl {
    type Error = String;
    fn try_from(raw: String) -> Result<Self, String> {
        if raw.chars().count() > MAX_URL_CHARS {
            return Err(format!("longer than {MAX_URL_CHARS} characters"));
        }
        let url = Url::parse(&raw).map_err(|e| format!("not a valid URL: {e}"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err("must be an http or https URL".into());
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err("must not carry a user name or password".into());
        }
        Ok(Self(url))
    }
}

#[derive(Deserialize)]
#[serde(try_from = "Map<String, Value>")]
struct Metadata(Map<String, Value>);

impl TryFrom<Map<String, Value>> for Metadata {
    type Error = String;
    fn try_from(map: Map<String, Value>) -> Result<Self, String> {
        if map.len() > MAX_METADATA_KEYS {
            return Err(format!("more than {MAX_METADATA_KEYS} keys"));
        }
        if map.values().map(depth).max().unwrap_or(0) + 1 > MAX_JSON_DEPTH {
            return Err(format!("nested deeper than {MAX_JSON_DEPTH} levels"));
        }
        let size = serde_json::to_vec(&map).map_or(usize::MAX, |bytes| bytes.len());
        if size > MAX_METADATA_BYTES {
            return Err(format!(
                "larger than {MAX_METADATA_BYTES} bytes as compact JSON"
            ));
        }
        Ok(Self(map))
    }
}

#[derive(Deserialize)]
#[serde(try_from = "Number")]
struct TimeoutSecs(u64);

impl TryFrom<Number> for TimeoutSecs {
    type Error = String;
    fn try_from(n: Number) -> Result<Self, String> {
        match whole(&n) {
            Some(secs @ 1..=MAX_TIMEOUT_SECS) => Ok(Self(secs)),
            _ => Err(format!(
                "must be a whole number of seconds from 1 to {MAX_TIMEOUT_SECS}"
            )),
        }
    }
}

/// `limits: {max_turns, max_tool_calls, max_total_tokens, max_cost_usd}`, each optional and
/// positive. They can only lower the agent's limits; a higher value is not an error, it just
/// has no effect (the agent's ceiling holds).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitsBody {
    #[serde(default)]
    max_turns: Option<Count>,
    #[serde(default)]
    max_tool_calls: Option<Count>,
    #[serde(default)]
    max_total_tokens: Option<Count>,
    #[serde(default)]
    max_cost_usd: Option<Usd>,
}

impl LimitsBody {
    fn into_overrides(self) -> LimitOverrides {
        // A count past u32 is no limit at all: the agent's own ceiling holds.
        let narrow = |c: Option<Count>| c.map(|c| u32::try_from(c.0).unwrap_or(u32::MAX));
        LimitOverrides {
            max_turns: narrow(self.max_turns),
            max_tool_calls: narrow(self.max_tool_calls),
            max_total_tokens: self.max_total_tokens.map(|c| c.0),
            max_cost_usd: self.max_cost_usd.map(|u| u.0),
        }
    }
}

#[derive(Deserialize)]
#[serde(try_from = "Number")]
struct Count(u64);

impl TryFrom<Number> for Count {
    type Error = &'static str;
    fn try_from(n: Number) -> Result<Self, Self::Error> {
        match whole(&n) {
            Some(n) if n > 0 => Ok(Self(n)),
            _ => Err("must be a whole number greater than zero"),
        }
    }
}

/// A number that is whole and not negative, written `27` or `27.0` (JSON Schema's `integer`
/// is a mathematical integer, whatever the spelling). One past `u64` (serde_json reads it as a
/// float) saturates: as a limit it is no limit, and as a timeout it is over the maximum anyway.
fn whole(n: &Number) -> Option<u64> {
    if let Some(n) = n.as_u64() {
        return Some(n);
    }
    let f = n.as_f64()?;
    // `as` saturates at u64::MAX.
    (f.fract() == 0.0 && f >= 0.0).then_some(f as u64)
}

#[derive(Deserialize)]
#[serde(try_from = "Number")]
struct Usd(f64);

impl TryFrom<Number> for Usd {
    type Error = &'static str;
    fn try_from(n: Number) -> Result<Self, Self::Error> {
        match n.as_f64() {
            Some(usd) if usd.is_finite() && usd > 0.0 => Ok(Self(usd)),
            _ => Err("must be a number greater than zero"),
        }
    }
}

/// `input` of an agent without an input schema, when it is an object.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Conversation {
    messages: Messages,
}

#[derive(Deserialize)]
#[serde(try_from = "Vec<Object<MessageBody>>")]
struct Messages(Vec<ChatMessage>);

impl TryFrom<Vec<Object<MessageBody>>> for Messages {
    type Error = String;
    fn try_from(items: Vec<Object<MessageBody>>) -> Result<Self, String> {
        match items.len() {
            0 => Err("must not be empty".into()),
            n if n > MAX_MESSAGES => Err(format!("more than {MAX_MESSAGES} messages")),
            _ => Ok(Self(
                items
                    .into_iter()
                    .map(|Object(m)| ChatMessage {
                        role: m.role,
                        content: m.content.0,
                    })
                    .collect(),
            )),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MessageBody {
    role: Role,
    content: Content,
}

/// The text of an input or a message: at most [`MAX_CONTENT_BYTES`].
#[derive(Deserialize)]
#[serde(try_from = "String")]
struct Content(String);

impl TryFrom<String> for Content {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        if text.len() > MAX_CONTENT_BYTES {
            return Err(format!("longer than {MAX_CONTENT_BYTES} bytes"));
        }
        Ok(Self(text))
    }
}

impl Content {
    /// A text input: like a message's content, and not blank.
    fn text(text: String) -> Result<String, ApiError> {
        if is_blank(&text) {
            return Err(ApiError::field("input", "must not be empty"));
        }
        Content::try_from(text)
            .map(|c| c.0)
            .map_err(|rule| ApiError::field("input", rule))
    }
}

/// Whether `text` has nothing but whitespace as the document's `"pattern": "\\S"` means it:
/// JSON Schema patterns are ECMA-262 regular expressions, whose `\s` is a fixed set that,
/// unlike Unicode's White_Space (`str::trim`), leaves out U+0085 (NEL) — a client validating
/// against the document must not see its valid input refused.
fn is_blank(text: &str) -> bool {
    text.chars().all(|c| {
        matches!(
            c,
            '\t' | '\n' | '\u{b}' | '\u{c}' | '\r' | ' ' | '\u{a0}' | '\u{1680}' | '\u{2000}'
                ..='\u{200a}'
                    | '\u{2028}'
                    | '\u{2029}'
                    | '\u{202f}'
                    | '\u{205f}'
                    | '\u{3000}'
                    | '\u{feff}'
        )
    })
}

// === errors ===

/// A body serde could not read: bad JSON is about the body; anything else names its field.
fn body_error(err: serde_path_to_error::Error<serde_json::Error>) -> ApiError {
    use serde_json::error::Category;
    match err.inner().classify() {
        Category::Syntax | Category::Eof | Category::Io => {
            ApiError::InvalidBody(format!("body is not valid JSON: {}", err.inner()))
        }
        Category::Data if err.path().iter().next().is_none() && is_type_error(err.inner()) => {
            ApiError::InvalidBody("body must be a JSON object".into())
        }
        Category::Data => field_error("", err),
    }
}

/// The field an error is about, under `prefix`, and the rule, in words a caller can act on.
fn field_error(prefix: &str, err: serde_path_to_error::Error<serde_json::Error>) -> ApiError {
    let mut path = prefix.to_owned();
    for segment in err.path().iter() {
        use serde_path_to_error::Segment;
        match segment {
            Segment::Seq { index } => path.push_str(&format!("[{index}]")),
            Segment::Map { key } | Segment::Enum { variant: key } => push_key(&mut path, key),
            Segment::Unknown => push_key(&mut path, "?"),
        }
    }
    let message = without_position(&err.inner().to_string());
    // serde reports a missing field at the object that should hold it: name the field. (An
    // unknown field is in the path already.)
    if let Some(rest) = message.strip_prefix("missing field `") {
        push_key(&mut path, rest.split('`').next().unwrap_or_default());
        return ApiError::field(path, "is required");
    }
    if let Some(rest) = message.strip_prefix("unknown field `") {
        return ApiError::field(path, unknown_field_rule(rest));
    }
    ApiError::field(path, message)
}

/// `unknown field; expected one of agent, input, …` from serde's `x`, expected one of …`.
fn unknown_field_rule(rest: &str) -> String {
    match rest.split_once("expected ") {
        Some((_, expected)) => format!("unknown field; expected {}", expected.replace('`', "")),
        None => "unknown field".into(),
    }
}

fn push_key(path: &mut String, key: &str) {
    if !path.is_empty() {
        path.push('.');
    }
    path.push_str(key);
}

fn is_type_error(err: &serde_json::Error) -> bool {
    err.to_string().starts_with("invalid type")
}

/// serde_json's message without its ` at line 1 column 42` suffix: the field is named already.
fn without_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(at) => message[..at].to_owned(),
        None => message.to_owned(),
    }
}

/// `input/items/0/sku` as `input.items[0].sku`, from a JSON pointer into the input.
fn pointer_path(root: &str, pointer: &str) -> String {
    let mut path = root.to_owned();
    for token in pointer.split('/').skip(1) {
        let token = token.replace("~1", "/").replace("~0", "~");
        if token.parse::<usize>().is_ok() {
            path.push_str(&format!("[{token}]"));
        } else {
            push_key(&mut path, &token);
        }
    }
    path
}

fn too_deep(field: &str) -> ApiError {
    ApiError::field(field, format!("nested deeper than {MAX_JSON_DEPTH} levels"))
}

/// Nesting depth of arrays and objects: a scalar is 0, `[]` and `{}` are 1. Iterative, so a
/// value nested as deep as serde_json allows cannot overflow the stack here.
fn depth(value: &Value) -> usize {
    let mut deepest = 0;
    let mut stack = vec![(value, 0usize)];
    while let Some((value, level)) = stack.pop() {
        let children: Box<dyn Iterator<Item = &Value>> = match value {
            Value::Array(items) => Box::new(items.iter()),
            Value::Object(map) => Box::new(map.values()),
            _ => continue,
        };
        deepest = deepest.max(level + 1);
        stack.extend(children.map(|child| (child, level + 1)));
    }
    deepest
}

#[cfg(test)]
mod tests;
