//! Payload log lines: what a run was given, what the model answered, and what each tool was
//! called with and gave back. Written only with `privacy.log_payloads`, and then masked the
//! way results are (`Masker::mask_step`). No other line of the worker carries a payload: a
//! failure logs our own words (`Failure::message`), and the provider's words only as a
//! payload field (`detail`).

use serde_json::{json, Value};

use agentfleet_agent::{Step, StepKind};
use agentfleet_common::privacy::Privacy;
use agentfleet_common::wire::JobInput;

/// The job's input, as the model gets it after the agent's system prompt.
pub(super) fn input(privacy: &Privacy, input: &JobInput) {
    if !privacy.log_payloads() {
        return;
    }
    let mut value = serde_json::to_value(input).unwrap_or(Value::Null);
    privacy.masker().mask_json(&mut value);
    tracing::info!(input = %value, "run input");
}

/// A step just appended: the model's answer (its text and tool calls), or a tool call with
/// its arguments and result.
pub(super) fn step(privacy: &Privacy, step: &Step) {
    if !privacy.log_payloads() {
        return;
    }
    let mut step = step.clone();
    privacy.masker().mask_step(&mut step);
    match &step.kind {
        StepKind::Model {
            turn,
            feedback,
            message,
            cached,
            ..
        } => {
            let calls: Value = message
                .tool_calls
                .iter()
                .map(|call| {
                    json!({
                        "id": call.id,
                        "name": call.function.name,
                        "arguments": call.function.arguments,
                    })
                })
                .collect::<Vec<_>>()
                .into();
            tracing::info!(
                seq = step.seq,
                turn,
                cached,
                feedback = feedback.as_deref(),
                content = message.content.as_deref(),
                tool_calls = %calls,
                "model answered"
            );
        }
        StepKind::Tool {
            call_id,
            name,
            arguments,
            status,
            content,
            http_status,
        } => tracing::info!(
            seq = step.seq,
            tool = %name,
            %call_id,
            status = status.as_str(),
            http_status,
            arguments = %arguments,
            result = %content,
            "tool called"
        ),
        StepKind::ToolIntent { .. } => {}
    }
}
