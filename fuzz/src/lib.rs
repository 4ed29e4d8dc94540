//! What the agent-runtime fuzz targets share: an agent with tools of each side effect, whose
//! schemas use the keywords real configurations do, and an output schema.

use chrono::DateTime;
use serde_json::json;

use agentfleet_agent::{
    AgentDefinition, AssistantMessage, Limits, Message, OutputSchema, RunInput, SideEffect, Step,
    StepKind, ToolCall, ToolSpec, Usage,
};

/// The tools of [`agent`], and a name it does not have.
pub const TOOL_NAMES: [&str; 4] = ["lookup", "charge", "ping", "missing"];

pub fn agent() -> AgentDefinition {
    let tool = |name: &str, side_effect, parameters| {
        ToolSpec::new(name, "a tool", parameters, side_effect, 4096).expect("a valid tool")
    };
    AgentDefinition {
        system_prompt: Some("be brief".into()),
        tools: vec![
            tool(
                "lookup",
                SideEffect::Read,
                json!({
                    "type": "object",
                    "properties": {
                        "q": {"type": "string", "minLength": 1, "maxLength": 200},
                        "limit": {"type": "integer", "minimum": 1, "maximum": 50}
                    },
                    "required": ["q"],
                    "additionalProperties": false
                }),
            ),
            tool(
                "charge",
                SideEffect::Write,
                json!({
                    "type": "object",
                    "properties": {
                        "amount": {"type": "number", "exclusiveMinimum": 0},
                        "currency": {"enum": ["EUR", "USD"]},
                        "card": {"type": "string", "pattern": "^[0-9]{4}$"},
                        "items": {
                            "type": "array",
                            "maxItems": 10,
                            "items": {
                                "type": "object",
                                "properties": {"sku": {"type": "string"}, "n": {"type": "integer"}},
                                "required": ["sku"]
                            }
                        },
                        "meta": {"$ref": "#/$defs/meta"}
                    },
                    "required": ["amount", "currency"],
                    "$defs": {"meta": {"type": "object", "additionalProperties": {"type": "string"}}}
                }),
            ),
            tool("ping", SideEffect::Idempotent, json!({"type": "object"})),
        ],
        output_schema: Some(
            OutputSchema::new(json!({
                "type": "object",
                "properties": {
                    "answer": {"type": "string"},
                    "confidence": {"type": "number", "minimum": 0, "maximum": 1}
                },
                "required": ["answer"]
            }))
            .expect("a valid output schema"),
        ),
        ..AgentDefinition::default()
    }
}

pub fn input() -> RunInput {
    RunInput {
        messages: vec![Message::user("What is the weather in Oslo?")],
        limits: Limits::default(),
    }
}

/// A model step answering `content` with `calls`.
pub fn model_step(turn: u32, content: Option<String>, calls: Vec<ToolCall>) -> Step {
    let at = DateTime::from_timestamp(1_700_000_000, 0).unwrap_or_default();
    Step {
        seq: turn,
        attempt: 1,
        started_at: at,
        finished_at: at,
        duration_ms: 0,
        kind: StepKind::Model {
            turn,
            feedback: None,
            message: AssistantMessage {
                content,
                tool_calls: calls,
            },
            usage: Usage::default(),
            cost_usd: 0.0,
            cached: false,
        },
    }
}
