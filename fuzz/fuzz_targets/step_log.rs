//! The step log as stored in Redis (one JSON step per field of the job's hash), read back on
//! every resume and replayed through `decide`, which promises to be total: whatever the log
//! holds, it returns an action.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;

use agentfleet_agent::{conversation, decide, totals, AgentDefinition, Limits, RunInput, Step};
use agentfleet_fuzz::{agent, input};

static AGENT: LazyLock<(AgentDefinition, RunInput)> = LazyLock::new(|| (agent(), input()));

fuzz_target!(|data: &[u8]| {
    // The store reads each element with `serde_json::from_str::<Step>`; an array of them
    // runs the same code, and a bad element fails the read.
    let Ok(steps) = serde_json::from_slice::<Vec<Step>>(data) else {
        return;
    };
    let (agent, input) = &*AGENT;
    let _ = totals(&steps);
    let _ = conversation(agent, &input.messages, &steps);
    let _ = decide(agent, input, &steps);
    // Tight limits reach the stopping rules.
    let tight = RunInput {
        limits: Limits {
            max_turns: 2,
            max_tool_calls: 2,
            max_total_tokens: 1000,
            max_cost_usd: 0.01,
        },
        ..input.clone()
    };
    let _ = decide(agent, &tight, &steps);
});
