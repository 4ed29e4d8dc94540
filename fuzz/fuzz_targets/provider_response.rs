//! A provider's chat-completions response body: `choices[0].message` (content and tool calls,
//! read by the agent crate's `parse_assistant`), `usage`, and an `error` object sent with a 2xx.
#![no_main]

use libfuzzer_sys::fuzz_target;

use agentfleet_worker::fuzzing::parse_completion;

fuzz_target!(|body: &[u8]| {
    match parse_completion(body) {
        Ok(answer) => {
            // The answer is stored in the step log and sent back in the next request.
            let _ = answer.message.to_message();
        }
        Err(failure) => {
            let _ = failure.to_job_error();
        }
    }
});
