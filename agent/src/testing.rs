//! Builders shared by the unit tests.

use chrono::{DateTime, Utc};
use serde_json::json;

use crate::definition::{AgentDefinition, SideEffect, ToolSpec};
use crate::message::{AssistantMessage, ToolCall, Usage};
use crate::step::{Step, StepKind, ToolStatus};

pub(crate) fn at(second: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(1_700_000_000 + second, 0).unwrap_or_default()
}

pub(crate) fn step(seq: u32, kind: StepKind) -> Step {
    Step {
        seq,
        attempt: 1,
        started_at: at(i64::from(seq)),
        finished_at: at(i64::from(seq) + 1),
        duration_ms: 1000,
        kind,
    }
}

pub(crate) fn usage(total: u64) -> Usage {
    Usage {
        prompt_tokens: total / 2,
        completion_tokens: total - total / 2,
        total_tokens: total,
    }
}

/// A model step that answered with `content` and the given calls, using 100 tokens.
pub(crate) fn model(seq: u32, turn: u32, content: Option<&str>, calls: Vec<ToolCall>) -> Step {
    model_with(seq, turn, None, content, calls)
}

pub(crate) fn model_with(
    seq: u32,
    turn: u32,
    feedback: Option<&str>,
    content: Option<&str>,
    calls: Vec<ToolCall>,
) -> Step {
    step(
        seq,
        StepKind::Model {
            turn,
            feedback: feedback.map(str::to_owned),
            message: AssistantMessage {
                content: content.map(str::to_owned),
                tool_calls: calls,
            },
            usage: usage(100),
            cost_usd: 0.001,
            cached: false,
        },
    )
}

pub(crate) fn tool(seq: u32, call_id: &str, name: &str, status: ToolStatus, content: &str) -> Step {
    step(
        seq,
        StepKind::Tool {
            call_id: call_id.into(),
            name: name.into(),
            arguments: "{}".into(),
            status,
            content: content.into(),
            http_status: None,
        },
    )
}

pub(crate) fn intent(seq: u32, call_id: &str, name: &str) -> Step {
    step(
        seq,
        StepKind::ToolIntent {
            call_id: call_id.into(),
            name: name.into(),
        },
    )
}

pub(crate) fn call(id: &str, name: &str, arguments: &str) -> ToolCall {
    ToolCall::function(id, name, arguments)
}

/// An agent with `lookup` (read, `{"q": string}` required), `send_mail` (write) and `charge`
/// (idempotent).
pub(crate) fn agent() -> AgentDefinition {
    let lookup = json!({
        "type": "object",
        "properties": {"q": {"type": "string"}, "limit": {"type": "integer", "minimum": 1}},
        "required": ["q"],
        "additionalProperties": false
    });
    let tools = [
        ("lookup", lookup, SideEffect::Read),
        ("send_mail", json!({"type": "object"}), SideEffect::Write),
        ("charge", json!({"type": "object"}), SideEffect::Idempotent),
    ];
    let tools = tools
        .into_iter()
        .map(|(name, schema, effect)| {
            ToolSpec::new(name, format!("the {name} tool"), schema, effect, 4096)
        })
        .collect::<Result<Vec<_>, _>>()
        .expect("test tools are valid");
    AgentDefinition {
        system_prompt: Some("You help.".into()),
        tools,
        ..AgentDefinition::default()
    }
}
