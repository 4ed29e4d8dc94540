//! `POST /v1/jobs` bodies, as the dispatcher reads them: the body's own rules
//! (`parse_submit`), then its `input` as the agent takes it (`job_input`): text or a
//! conversation, or any JSON checked against an input schema.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use serde_json::json;

use agentfleet_agent::InputSchema;
use agentfleet_dispatcher::request::{job_input, parse_submit};

static SCHEMA: LazyLock<InputSchema> = LazyLock::new(|| {
    InputSchema::new(json!({
        "type": "object",
        "properties": {
            "order": {
                "type": "object",
                "properties": {
                    "id": {"type": "string", "pattern": "^[A-Z][0-9]+$"},
                    "items": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "type": "object",
                            "properties": {"sku": {"type": "string"}, "n": {"type": "integer", "minimum": 1}},
                            "required": ["sku", "n"]
                        }
                    }
                },
                "required": ["id"]
            }
        },
        "required": ["order"],
        "additionalProperties": false
    }))
    .expect("a valid input schema")
});

fuzz_target!(|body: &[u8]| {
    if let Ok(request) = parse_submit(body) {
        if let Ok(input) = job_input(request.input.clone(), None) {
            let _ = input.to_messages();
        }
        let _ = job_input(request.input, Some(&SCHEMA));
    }
});
