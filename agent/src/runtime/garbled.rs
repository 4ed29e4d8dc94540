//! `decide` on many random, garbled logs: it must return an action every time, never panic.

use serde_json::json;

use super::*;
use crate::definition::{OutputSchema, Price};
use crate::message::Usage;
use crate::step::{ToolStatus, Totals};
use crate::testing::{agent, at};

/// xorshift64*: enough randomness for a generator, reproducible from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn pick<T: Clone>(&mut self, items: &[T]) -> T {
        let index = usize::try_from(self.below(items.len() as u64)).unwrap_or(0);
        items[index].clone()
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

const IDS: &[&str] = &["a", "b", "c", "", "call_ünï"];
const NAMES: &[&str] = &["lookup", "send_mail", "charge", "nope", "", "ünï"];
const ARGUMENTS: &[&str] = &[
    "{}",
    "",
    "{\"q\":\"x\"}",
    "{\"q\":1}",
    "[1]",
    "{",
    "null",
    "\"s\"",
    "{\"q\":\"x\",\"limit\":0}",
];
const CONTENTS: &[&str] = &[
    "",
    "plain text",
    "{\"city\":\"Oslo\",\"temp_c\":1}",
    "{\"city\":1}",
    "```json\n{\"city\":\"Oslo\",\"temp_c\":2}\n```",
    "```",
    "``````",
    "```json",
    "€𝄞 ```\n{\n```",
];
const COSTS: &[f64] = &[0.0, 0.001, 0.5, f64::NAN, -1.0, f64::INFINITY, 1e308];
const TOKENS: &[u64] = &[0, 1, 100, 10_000, u64::MAX];

fn random_call(rng: &mut Rng) -> ToolCall {
    ToolCall::function(rng.pick(IDS), rng.pick(NAMES), rng.pick(ARGUMENTS))
}

fn random_kind(rng: &mut Rng) -> StepKind {
    match rng.below(3) {
        0 => {
            let calls = (0..rng.below(4)).map(|_| random_call(rng)).collect();
            let content = if rng.chance(30) {
                None
            } else {
                Some(rng.pick(CONTENTS).to_owned())
            };
            let total = rng.pick(TOKENS);
            StepKind::Model {
                turn: u32::try_from(rng.below(6)).unwrap_or(0),
                feedback: rng.chance(20).then(|| "fix it".to_owned()),
                message: AssistantMessage {
                    content,
                    tool_calls: calls,
                },
                usage: Usage {
                    prompt_tokens: rng.pick(TOKENS),
                    completion_tokens: rng.pick(TOKENS),
                    total_tokens: total,
                },
                cost_usd: rng.pick(COSTS),
                cached: rng.chance(10),
            }
        }
        1 => StepKind::ToolIntent {
            call_id: rng.pick(IDS).to_owned(),
            name: rng.pick(NAMES).to_owned(),
        },
        _ => StepKind::Tool {
            call_id: rng.pick(IDS).to_owned(),
            name: rng.pick(NAMES).to_owned(),
            arguments: rng.pick(ARGUMENTS).to_owned(),
            status: rng.pick(&[
                ToolStatus::Ok,
                ToolStatus::Error,
                ToolStatus::Invalid,
                ToolStatus::Uncertain,
            ]),
            content: rng.pick(CONTENTS).to_owned(),
            http_status: rng.chance(50).then_some(200),
        },
    }
}

fn random_log(rng: &mut Rng) -> Vec<Step> {
    (0..rng.below(12))
        .map(|_| {
            let seq = u32::try_from(rng.below(20)).unwrap_or(0);
            Step {
                seq,
                attempt: 1,
                started_at: at(0),
                finished_at: at(1),
                duration_ms: 1000,
                kind: random_kind(rng),
            }
        })
        .collect()
}

fn random_limits(rng: &mut Rng) -> Limits {
    Limits {
        max_turns: u32::try_from(rng.below(8)).unwrap_or(0),
        max_tool_calls: rng.pick(&[0, 1, 3, 10, u32::MAX]),
        max_total_tokens: rng.pick(&[0, 150, 5_000, u64::MAX]),
        max_cost_usd: rng.pick(&[0.0, 0.01, 1.0, f64::NAN, f64::INFINITY]),
    }
}

fn definitions() -> Vec<AgentDefinition> {
    let schema = OutputSchema::new(json!({
        "type": "object", "properties": {"city": {"type": "string"}, "temp_c": {"type": "number"}},
        "required": ["city", "temp_c"]
    }))
    .expect("valid schema");
    let price = Some(Price {
        input_usd_per_million: 1.0,
        output_usd_per_million: 4.0,
    });
    vec![
        AgentDefinition::default(),
        agent(),
        AgentDefinition {
            output_schema: Some(schema.clone()),
            max_repairs: 0,
            ..agent()
        },
        AgentDefinition {
            output_schema: Some(schema),
            max_repairs: 2,
            price,
            max_tokens: 0,
            ..agent()
        },
    ]
}

/// What must hold of any action, on top of not panicking.
fn check_action(action: &Action, totals: &Totals) {
    match action {
        Action::CallModel(request) => {
            assert_eq!(request.turn, totals.turns);
            assert!(request.max_tokens >= 1);
        }
        Action::RunTools(calls) => {
            assert!(!calls.is_empty());
            let mut keys = std::collections::HashSet::new();
            for call in calls {
                assert!(!call.call_id.is_empty());
                if let CallPlan::Execute { key, arguments, .. } = &call.plan {
                    assert!(keys.insert(key.clone()), "duplicate key {key}");
                    assert!(arguments.is_object());
                }
            }
        }
        Action::Finish(_) | Action::Stop(_) => {}
    }
}

#[test]
fn random_logs_always_get_an_action() {
    let definitions = definitions();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for _ in 0..20_000 {
        let def = rng.pick(&definitions);
        let messages = (0..rng.below(3))
            .map(|_| Message::user(rng.pick(CONTENTS)))
            .collect();
        let run = RunInput {
            messages,
            limits: random_limits(&mut rng),
        };
        let steps = random_log(&mut rng);
        let action = decide(&def, &run, &steps);
        check_action(&action, &totals(&steps));
        // Deciding is a pure function of its inputs.
        assert_eq!(decide(&def, &run, &steps), action);
    }
}
