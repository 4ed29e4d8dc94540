//! The step log: the run, as an append-only list of what happened.
//!
//! One [`Step`] is appended per completed model call or tool call (and per intent, before a
//! `write` tool runs). The log is stored in Redis, one JSON list element per step, and served to
//! the tenant that owns the run, so [`Step`] is a wire type: names are stable, and optional fields
//! default when absent so older readers and newer writers get along.
//!
//! Messages are stored once. A model step holds only what that call produced, and the
//! conversation is rebuilt from the run's input and the log by [`conversation`], so a run of `n`
//! turns stores `O(n)` bytes, not the `O(n²)` of storing each request's full conversation.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::definition::AgentDefinition;
use crate::message::{AssistantMessage, Message, Usage};

/// One entry of the log. Timing is filled in by the worker: the runtime never reads a clock.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Step {
    /// Position in the log. Informational: the runtime goes by the order of the list. Stored
    /// without it: the store fills it in from the step's place in the log.
    #[serde(default)]
    #[schema(required = true)]
    pub seq: u32,
    /// The job attempt that made this step.
    pub attempt: u32,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    /// `finished_at - started_at`, for people and dashboards reading the trace.
    #[serde(default)]
    pub duration_ms: u64,
    #[serde(flatten)]
    pub kind: StepKind,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum StepKind {
    /// One model call.
    Model {
        /// 0-based count of model calls before this one.
        turn: u32,
        /// A user message sent just before this call (the output-repair request). Stored here so
        /// the conversation can be rebuilt from the log.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        feedback: Option<String>,
        message: AssistantMessage,
        #[serde(default)]
        usage: Usage,
        #[serde(default)]
        cost_usd: f64,
        /// Served from a response cache rather than the provider.
        #[serde(default)]
        cached: bool,
    },
    /// Written before a `write` tool runs, so that a crash between running it and recording the
    /// result is noticed instead of the write being repeated.
    ToolIntent { call_id: String, name: String },
    /// One tool call, executed or refused.
    Tool {
        call_id: String,
        name: String,
        /// The arguments as the model wrote them.
        arguments: String,
        status: ToolStatus,
        /// What is fed back to the model: the (truncated) result or the error text.
        content: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        http_status: Option<u16>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ToolStatus {
    Ok,
    /// The tool ran and failed, or timed out. Fed back to the model, which may try otherwise.
    Error,
    /// Unknown tool, or arguments that failed validation. Never executed.
    Invalid,
    /// A write whose intent was recorded but whose result never was, settled as unknown.
    Uncertain,
}

impl ToolStatus {
    /// The wire name (as serialized), e.g. for metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Error => "error",
            Self::Invalid => "invalid",
            Self::Uncertain => "uncertain",
        }
    }
}

/// The conversation to send for the next model call: the system prompt (if any), the input,
/// then each model call's feedback and answer and each tool call's result, in log order.
///
/// A tool result is included only if it answers a call of the latest assistant message that has
/// not been answered yet. OpenAI refuses a conversation with an orphan or duplicate tool message,
/// and one odd entry in the log should not make every later model call fail.
pub fn conversation(def: &AgentDefinition, input: &[Message], steps: &[Step]) -> Vec<Message> {
    let mut out = Vec::with_capacity(1 + input.len() + steps.len() * 2);
    if let Some(prompt) = &def.system_prompt {
        out.push(Message::system(prompt.clone()));
    }
    out.extend(input.iter().cloned());
    let mut awaiting: Vec<&str> = Vec::new();
    for step in steps {
        match &step.kind {
            StepKind::Model {
                feedback, message, ..
            } => {
                if let Some(feedback) = feedback {
                    out.push(Message::user(feedback.clone()));
                }
                awaiting = message.tool_calls.iter().map(|c| c.id.as_str()).collect();
                out.push(message.to_message());
            }
            StepKind::Tool {
                call_id, content, ..
            } => {
                if let Some(pos) = awaiting.iter().position(|id| id == call_id) {
                    awaiting.swap_remove(pos);
                    out.push(Message::Tool {
                        tool_call_id: call_id.clone(),
                        content: content.clone(),
                    });
                }
            }
            StepKind::ToolIntent { .. } => {}
        }
    }
    out
}

/// What a run has used so far.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Totals {
    /// Model calls made.
    pub turns: u32,
    /// Tool steps of any status: refused calls count too.
    pub tool_calls: u32,
    pub usage: Usage,
    pub cost_usd: f64,
}

pub fn totals(steps: &[Step]) -> Totals {
    let mut totals = Totals::default();
    for step in steps {
        match &step.kind {
            StepKind::Model {
                usage, cost_usd, ..
            } => {
                totals.turns = totals.turns.saturating_add(1);
                totals.usage += *usage;
                // A NaN or negative cost would make the budget check pass forever.
                if cost_usd.is_finite() && *cost_usd > 0.0 {
                    totals.cost_usd += cost_usd;
                }
            }
            StepKind::Tool { .. } => totals.tool_calls = totals.tool_calls.saturating_add(1),
            StepKind::ToolIntent { .. } => {}
        }
    }
    totals
}

/// A tool's response body as text for the model: decoded as UTF-8 (invalid bytes replaced) and
/// cut to at most `max_bytes` bytes of the body, with a marker saying so.
///
/// The cut is made on the raw body, moved back to the start of the character it would split, so
/// the counts in the marker are bytes of the body and a huge body is never decoded whole.
pub fn truncate_tool_output(body: &[u8], max_bytes: usize) -> String {
    if body.len() <= max_bytes {
        return String::from_utf8_lossy(body).into_owned();
    }
    let mut cut = max_bytes;
    // A UTF-8 character is at most 4 bytes: at most 3 continuation bytes to step back over.
    for _ in 0..3 {
        match body.get(cut) {
            Some(b) if cut > 0 && is_continuation(*b) => cut -= 1,
            _ => break,
        }
    }
    let shown = body.get(..cut).unwrap_or_default();
    let mut text = String::from_utf8_lossy(shown).into_owned();
    text.push_str(&format!(
        "\n[truncated: showed {cut} of {} bytes]",
        body.len()
    ));
    text
}

fn is_continuation(byte: u8) -> bool {
    byte & 0b1100_0000 == 0b1000_0000
}

#[cfg(test)]
mod tests;
