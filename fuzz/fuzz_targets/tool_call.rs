//! What a model writes that the runtime parses: a tool call's `arguments` (JSON text, checked
//! against the tool's parameters schema, or refused with a message for the model), and a final
//! answer checked against the output schema (a fenced block is looked into too).
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;

use agentfleet_agent::{decide, AgentDefinition, RunInput, ToolCall};
use agentfleet_fuzz::{agent, input, model_step, TOOL_NAMES};

static AGENT: LazyLock<(AgentDefinition, RunInput)> = LazyLock::new(|| (agent(), input()));

fuzz_target!(|data: &[u8]| {
    // The model's text arrives inside a JSON string: always UTF-8.
    let text = String::from_utf8_lossy(data);
    let (agent, input) = &*AGENT;
    for name in TOOL_NAMES {
        let call = ToolCall::function("call_1", name, text.as_ref());
        let _ = decide(agent, input, &[model_step(0, None, vec![call])]);
    }
    let _ = decide(
        agent,
        input,
        &[model_step(0, Some(text.into_owned()), Vec::new())],
    );
});
