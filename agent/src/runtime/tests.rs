use serde_json::json;

use super::*;
use crate::definition::OutputSchema;
use crate::step::ToolStatus;
use crate::testing::{agent, call, intent, model, model_with, tool};

fn input() -> RunInput {
    RunInput {
        messages: vec![Message::user("What is the weather in Oslo?")],
        limits: Limits::default(),
    }
}

fn with_limits(limits: Limits) -> RunInput {
    RunInput { limits, ..input() }
}

fn model_request(action: Action) -> ModelRequest {
    match action {
        Action::CallModel(request) => request,
        other => panic!("expected CallModel, got {other:?}"),
    }
}

fn planned(action: Action) -> Vec<PlannedCall> {
    match action {
        Action::RunTools(calls) => calls,
        other => panic!("expected RunTools, got {other:?}"),
    }
}

fn stopped(action: Action) -> Stop {
    match action {
        Action::Stop(stop) => stop,
        other => panic!("expected Stop, got {other:?}"),
    }
}

/// The reason a call was refused, after the prefix every refusal starts with (so the model
/// reads it as an error).
fn rejection(call: &PlannedCall) -> &str {
    match &call.plan {
        CallPlan::Reject { error } => error
            .strip_prefix("error: invalid call, not executed: ")
            .unwrap_or_else(|| panic!("refusal without its error prefix: {error}")),
        other => panic!("expected Reject, got {other:?}"),
    }
}

fn two_calls() -> Vec<ToolCall> {
    vec![
        call("call_a", "lookup", r#"{"q":"oslo"}"#),
        call("call_b", "charge", r#"{"amount":3}"#),
    ]
}

#[test]
fn first_call_sends_prompt_input_and_tools() {
    let def = agent();
    let request = model_request(decide(&def, &input(), &[]));
    assert_eq!(request.turn, 0);
    assert_eq!(request.feedback, None);
    assert_eq!(request.max_tokens, 4096);
    assert_eq!(
        request.messages,
        vec![
            Message::system("You help."),
            Message::user("What is the weather in Oslo?")
        ]
    );
    let names: Vec<&Value> = request
        .tools
        .iter()
        .map(|t| &t["function"]["name"])
        .collect();
    assert_eq!(
        names,
        [&json!("lookup"), &json!("send_mail"), &json!("charge")]
    );

    let bare = AgentDefinition::default();
    let request = model_request(decide(&bare, &input(), &[]));
    assert!(request.tools.is_empty());
    assert_eq!(request.messages, input().messages);
}

#[test]
fn parallel_calls_are_planned_with_distinct_stable_keys() {
    let def = agent();
    let steps = vec![model(0, 0, None, vec![]), model(1, 1, None, two_calls())];
    let calls = planned(decide(&def, &input(), &steps));
    assert_eq!(calls.len(), 2);
    let expected = [
        ("call_a", json!({"q": "oslo"}), SideEffect::Read, "t1.c0"),
        (
            "call_b",
            json!({"amount": 3}),
            SideEffect::Idempotent,
            "t1.c1",
        ),
    ];
    for (call, (id, args, effect, key)) in calls.iter().zip(expected) {
        assert_eq!(call.call_id, id);
        assert_eq!(
            call.plan,
            CallPlan::Execute {
                arguments: args,
                side_effect: effect,
                key: key.into()
            }
        );
    }
    // The same log gives the same plan, keys included: resumes reuse idempotency keys.
    assert_eq!(planned(decide(&def, &input(), &steps)), calls);
}

#[test]
fn resume_runs_only_the_missing_call() {
    let def = agent();
    let steps = vec![
        model(0, 0, None, two_calls()),
        tool(1, "call_b", "charge", ToolStatus::Ok, "charged"),
    ];
    let calls = planned(decide(&def, &input(), &steps));
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].call_id, "call_a");
    assert!(matches!(&calls[0].plan, CallPlan::Execute { key, .. } if key == "t0.c0"));
}

#[test]
fn all_results_in_calls_the_model_with_them() {
    let def = agent();
    let steps = vec![
        model(0, 0, None, two_calls()),
        tool(1, "call_b", "charge", ToolStatus::Ok, "charged"),
        tool(2, "call_a", "lookup", ToolStatus::Error, "timed out"),
    ];
    let request = model_request(decide(&def, &input(), &steps));
    assert_eq!(request.turn, 1);
    let tail = request.messages.get(3..).unwrap_or_default();
    assert_eq!(
        tail,
        [
            Message::Tool {
                tool_call_id: "call_b".into(),
                content: "charged".into()
            },
            Message::Tool {
                tool_call_id: "call_a".into(),
                content: "timed out".into()
            },
        ]
    );
}

#[test]
fn unknown_tool_is_rejected_with_the_available_ones() {
    let def = agent();
    let steps = vec![model(0, 0, None, vec![call("c", "weather", "{}")])];
    let calls = planned(decide(&def, &input(), &steps));
    assert_eq!(
        rejection(&calls[0]),
        "unknown tool `weather`; available tools: lookup, send_mail, charge"
    );
    let bare = AgentDefinition::default();
    let calls = planned(decide(&bare, &input(), &steps));
    assert_eq!(
        rejection(&calls[0]),
        "unknown tool `weather`; this agent has no tools"
    );
}

#[test]
fn invalid_arguments_are_rejected_with_their_paths() {
    let def = agent();
    let cases = [
        (
            r#"{"q": 5}"#,
            vec![
                "schema of `lookup`",
                "at `/q`:",
                "5 is not of type \"string\"",
            ],
        ),
        (
            r#"{"limit": 2}"#,
            vec!["at `(root)`:", "\"q\" is a required property"],
        ),
        (
            r#"{"q": "x", "limit": 0}"#,
            vec!["at `/limit`:", "minimum of 1"],
        ),
    ];
    for (arguments, needles) in cases {
        let steps = vec![model(0, 0, None, vec![call("c", "lookup", arguments)])];
        let calls = planned(decide(&def, &input(), &steps));
        let error = rejection(&calls[0]);
        for needle in needles {
            assert!(
                error.contains(needle),
                "{arguments}: {error:?} lacks {needle:?}"
            );
        }
        assert_eq!(calls[0].arguments, arguments);
    }
}

#[test]
fn schema_errors_are_capped_at_five() {
    let def = AgentDefinition {
        tools: vec![ToolSpec::new(
            "many",
            "",
            json!({"type": "object", "additionalProperties": {"type": "string"}}),
            SideEffect::Read,
            10,
        )
        .expect("valid")],
        ..AgentDefinition::default()
    };
    let arguments = r#"{"a":1,"b":2,"c":3,"d":4,"e":5,"f":6,"g":7}"#;
    let steps = vec![model(0, 0, None, vec![call("c", "many", arguments)])];
    let calls = planned(decide(&def, &input(), &steps));
    let error = rejection(&calls[0]);
    assert_eq!(error.matches("\n- at `").count(), 5, "{error}");
    assert!(error.ends_with("\n- … and 2 more"), "{error}");
}

#[test]
fn arguments_that_are_not_a_json_object_are_rejected() {
    let def = agent();
    let cases = [
        (
            "{\"q\": ",
            "the arguments are not valid JSON: EOF while parsing",
        ),
        (
            "[\"oslo\"]",
            "the arguments must be a JSON object, not an array",
        ),
        (
            "\"oslo\"",
            "the arguments must be a JSON object, not a string",
        ),
    ];
    for (arguments, expected) in cases {
        let steps = vec![model(0, 0, None, vec![call("c", "lookup", arguments)])];
        let calls = planned(decide(&def, &input(), &steps));
        assert!(
            rejection(&calls[0]).starts_with(expected),
            "{arguments}: {}",
            rejection(&calls[0])
        );
    }
    // An empty argument string means "no arguments".
    let steps = vec![model(0, 0, None, vec![call("c", "send_mail", "")])];
    let calls = planned(decide(&def, &input(), &steps));
    assert!(
        matches!(&calls[0].plan, CallPlan::Execute { arguments, .. } if *arguments == json!({}))
    );
}

#[test]
fn max_turns_stops_the_run() {
    let def = agent();
    let steps = vec![
        model(0, 0, None, vec![call("c", "lookup", r#"{"q":"x"}"#)]),
        tool(1, "c", "lookup", ToolStatus::Ok, "x"),
    ];
    let limits = Limits {
        max_turns: 1,
        ..Limits::default()
    };
    let stop = stopped(decide(&def, &with_limits(limits), &steps));
    assert_eq!(stop.reason, StopReason::MaxTurns);
    assert_eq!(
        stop.message,
        "turn limit reached: 1 model calls made, the limit is 1"
    );
    let limits = Limits {
        max_turns: 2,
        ..Limits::default()
    };
    assert!(matches!(
        decide(&def, &with_limits(limits), &steps),
        Action::CallModel(_)
    ));
}

#[test]
fn max_tool_calls_counts_invalid_calls() {
    let def = agent();
    let mut steps = vec![
        model(
            0,
            0,
            None,
            vec![call("x", "nope", "{}"), call("y", "lookup", "[]")],
        ),
        tool(1, "x", "nope", ToolStatus::Invalid, "unknown tool"),
        tool(2, "y", "lookup", ToolStatus::Invalid, "not an object"),
    ];
    steps.push(model(3, 1, None, two_calls()));
    let limits = Limits {
        max_tool_calls: 3,
        ..Limits::default()
    };
    let stop = stopped(decide(&def, &with_limits(limits), &steps));
    assert_eq!(stop.reason, StopReason::MaxToolCalls);
    assert_eq!(
        stop.message,
        "tool-call limit reached: 2 calls made, the model asks for 2 more, the limit is 3"
    );
    let limits = Limits {
        max_tool_calls: 4,
        ..Limits::default()
    };
    assert_eq!(planned(decide(&def, &with_limits(limits), &steps)).len(), 2);
    // Resumed with one of the two done, only the missing call counts as asked for.
    steps.push(tool(4, "call_a", "lookup", ToolStatus::Ok, "ok"));
    let limits = Limits {
        max_tool_calls: 4,
        ..Limits::default()
    };
    assert_eq!(planned(decide(&def, &with_limits(limits), &steps)).len(), 1);
}

#[test]
fn token_budget_stops_the_run() {
    let def = agent();
    let steps = vec![
        model(0, 0, Some("a"), vec![]),
        model_with(1, 1, Some("fix"), Some("b"), vec![]),
    ];
    let limits = Limits {
        max_total_tokens: 200,
        ..Limits::default()
    };
    let def = AgentDefinition {
        output_schema: Some(object_schema()),
        max_repairs: 5,
        ..def
    };
    let stop = stopped(decide(&def, &with_limits(limits), &steps));
    assert_eq!(stop.reason, StopReason::BudgetExceeded);
    assert_eq!(
        stop.message,
        "token limit reached: 200 tokens used, the limit is 200"
    );
}

#[test]
fn cost_budget_stops_the_run() {
    let def = agent();
    let steps = vec![
        model(0, 0, None, vec![call("c", "send_mail", "{}")]),
        tool(1, "c", "send_mail", ToolStatus::Ok, "sent"),
    ];
    let limits = Limits {
        max_cost_usd: 0.001,
        ..Limits::default()
    };
    let stop = stopped(decide(&def, &with_limits(limits), &steps));
    assert_eq!(stop.reason, StopReason::BudgetExceeded);
    assert!(
        stop.message
            .starts_with("cost limit reached: 0.0010 USD spent"),
        "{}",
        stop.message
    );
}

#[test]
fn max_tokens_is_lowered_to_the_remaining_budget() {
    let def = agent();
    let steps = vec![
        model(0, 0, None, vec![call("c", "send_mail", "{}")]),
        tool(1, "c", "send_mail", ToolStatus::Ok, "sent"),
    ];
    let limits = Limits {
        max_total_tokens: 350,
        ..Limits::default()
    };
    assert_eq!(
        model_request(decide(&def, &with_limits(limits), &steps)).max_tokens,
        250
    );
    let limits = Limits {
        max_total_tokens: 101,
        ..Limits::default()
    };
    assert_eq!(
        model_request(decide(&def, &with_limits(limits), &steps)).max_tokens,
        1
    );
    let tiny = AgentDefinition {
        max_tokens: 0,
        ..agent()
    };
    assert_eq!(model_request(decide(&tiny, &input(), &[])).max_tokens, 1);
}

#[test]
fn intent_without_result_stops_as_uncertain() {
    let def = agent();
    let steps = vec![
        model(
            0,
            0,
            None,
            vec![
                call("m1", "send_mail", "{}"),
                call("l1", "lookup", r#"{"q":"x"}"#),
            ],
        ),
        intent(1, "m1", "send_mail"),
    ];
    let stop = stopped(decide(&def, &input(), &steps));
    assert_eq!(stop.reason, StopReason::UncertainSideEffect);
    let unresolved = stop.unresolved.as_ref().expect("the unresolved call");
    assert_eq!(
        (unresolved.call_id.as_str(), unresolved.name.as_str()),
        ("m1", "send_mail")
    );
    assert!(
        stop.message
            .starts_with("tool `send_mail` (call `m1`) may have run"),
        "{}",
        stop.message
    );
}

#[test]
fn intent_with_result_continues() {
    let def = agent();
    let mut steps = vec![
        model(
            0,
            0,
            None,
            vec![
                call("m1", "send_mail", "{}"),
                call("l1", "lookup", r#"{"q":"x"}"#),
            ],
        ),
        intent(1, "m1", "send_mail"),
        tool(2, "m1", "send_mail", ToolStatus::Ok, "sent"),
    ];
    let calls = planned(decide(&def, &input(), &steps));
    assert_eq!(
        calls.iter().map(|c| c.call_id.as_str()).collect::<Vec<_>>(),
        ["l1"]
    );
    steps.push(tool(3, "l1", "lookup", ToolStatus::Ok, "found"));
    assert_eq!(model_request(decide(&def, &input(), &steps)).turn, 1);
}

#[test]
fn duplicate_or_empty_call_ids_are_an_invalid_response() {
    let def = agent();
    let duplicate = vec![model(
        0,
        0,
        None,
        vec![call("a", "lookup", "{}"), call("a", "charge", "{}")],
    )];
    let stop = stopped(decide(&def, &input(), &duplicate));
    assert_eq!(stop.reason, StopReason::InvalidModelResponse);
    assert_eq!(
        stop.message,
        "the model's turn 0 uses the tool call id `a` more than once"
    );
    let empty = vec![model(0, 0, None, vec![call("", "lookup", "{}")])];
    let stop = stopped(decide(&def, &input(), &empty));
    assert_eq!(stop.reason, StopReason::InvalidModelResponse);
    assert_eq!(
        stop.message,
        "the model's turn 0 has a call of `lookup` with an empty id"
    );
}

#[test]
fn plain_answers_finish() {
    let def = agent();
    let steps = vec![model(0, 0, Some("It is 3°C."), vec![])];
    assert_eq!(
        decide(&def, &input(), &steps),
        Action::Finish(FinalOutput {
            text: "It is 3°C.".into(),
            json: None
        })
    );
    let steps = vec![model(0, 0, None, vec![])];
    assert_eq!(
        decide(&def, &input(), &steps),
        Action::Finish(FinalOutput {
            text: String::new(),
            json: None
        })
    );
}

fn object_schema() -> OutputSchema {
    OutputSchema::new(json!({
        "type": "object",
        "properties": {"city": {"type": "string"}, "temp_c": {"type": "number"}},
        "required": ["city", "temp_c"]
    }))
    .expect("valid schema")
}

fn structured() -> AgentDefinition {
    AgentDefinition {
        output_schema: Some(object_schema()),
        ..agent()
    }
}

#[test]
fn valid_output_finishes_with_json() {
    let text = r#"{"city": "Oslo", "temp_c": 3}"#;
    let steps = vec![model(0, 0, Some(text), vec![])];
    let expected = FinalOutput {
        text: text.into(),
        json: Some(json!({"city": "Oslo", "temp_c": 3})),
    };
    assert_eq!(
        decide(&structured(), &input(), &steps),
        Action::Finish(expected)
    );
}

#[test]
fn fenced_output_is_accepted() {
    let text = "Sure!\n```json\n{\"city\": \"Oslo\", \"temp_c\": 3.5}\n```";
    let steps = vec![model(0, 0, Some(text), vec![])];
    let expected = FinalOutput {
        text: text.into(),
        json: Some(json!({"city": "Oslo", "temp_c": 3.5})),
    };
    assert_eq!(
        decide(&structured(), &input(), &steps),
        Action::Finish(expected)
    );
}

#[test]
fn invalid_output_is_repaired_then_finishes() {
    let def = structured();
    let mut steps = vec![model(0, 0, Some(r#"{"city": "Oslo"}"#), vec![])];
    let request = model_request(decide(&def, &input(), &steps));
    assert_eq!(request.turn, 1);
    let feedback = request.feedback.clone().expect("a repair request");
    assert!(
        feedback.contains("\"temp_c\" is a required property"),
        "{feedback}"
    );
    assert!(feedback.contains("only the corrected JSON"), "{feedback}");
    assert_eq!(
        request.messages.last(),
        Some(&Message::user(feedback.clone()))
    );

    steps.push(model_with(
        1,
        1,
        Some(&feedback),
        Some(r#"{"city": "Oslo", "temp_c": 3}"#),
        vec![],
    ));
    let Action::Finish(output) = decide(&def, &input(), &steps) else {
        panic!("expected Finish")
    };
    assert_eq!(output.json, Some(json!({"city": "Oslo", "temp_c": 3})));
}

#[test]
fn output_invalid_twice_stops() {
    let def = structured();
    let steps = vec![
        model(0, 0, Some("It is 3°C in Oslo."), vec![]),
        model_with(1, 1, Some("fix it"), Some(r#"{"city": 3}"#), vec![]),
    ];
    let stop = stopped(decide(&def, &input(), &steps));
    assert_eq!(stop.reason, StopReason::InvalidOutput);
    assert!(
        stop.message
            .starts_with("the answer does not match the output schema after 1 repair request(s)"),
        "{}",
        stop.message
    );
    assert!(stop.message.contains("at `/city`"), "{}", stop.message);

    let no_repairs = AgentDefinition {
        max_repairs: 0,
        ..structured()
    };
    let steps = vec![model(0, 0, None, vec![])];
    let stop = stopped(decide(&no_repairs, &input(), &steps));
    assert_eq!(stop.reason, StopReason::InvalidOutput);
    assert!(
        stop.message
            .ends_with("the answer is empty; it must be JSON"),
        "{}",
        stop.message
    );
}

#[test]
fn stop_reasons_are_spelled_the_same_everywhere() {
    let reasons = [
        StopReason::MaxTurns,
        StopReason::MaxToolCalls,
        StopReason::BudgetExceeded,
        StopReason::UncertainSideEffect,
        StopReason::InvalidOutput,
        StopReason::InvalidModelResponse,
    ];
    for reason in reasons {
        assert_eq!(
            serde_json::to_value(reason).expect("ser"),
            json!(reason.as_str())
        );
        assert_eq!(reason.to_string(), reason.as_str());
    }
}

#[test]
fn odd_logs_still_get_an_action() {
    let def = agent();
    // Tool results before any model call, for calls nobody made.
    let steps = vec![
        tool(7, "ghost", "lookup", ToolStatus::Ok, "boo"),
        intent(3, "ghost", "send_mail"),
    ];
    let request = model_request(decide(&def, &input(), &steps));
    assert_eq!(request.turn, 0);
    assert_eq!(request.messages.len(), 2, "orphan results are not sent");
}
