use serde_json::json;

use super::*;
use crate::testing::{agent, call, intent, model, model_with, tool, usage};

#[test]
fn model_step_serializes_with_stable_names() {
    let step = model(0, 0, None, vec![call("call_1", "lookup", r#"{"q":"x"}"#)]);
    let value = serde_json::to_value(&step).expect("serializes");
    assert_eq!(
        value,
        json!({
            "seq": 0, "attempt": 1,
            "started_at": "2023-11-14T22:13:20Z", "finished_at": "2023-11-14T22:13:21Z",
            "duration_ms": 1000,
            "kind": "model", "turn": 0,
            "message": {"content": null, "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": "{\"q\":\"x\"}"}}
            ]},
            "usage": {"prompt_tokens": 50, "completion_tokens": 50, "total_tokens": 100},
            "cost_usd": 0.001, "cached": false
        })
    );
    let back: Step = serde_json::from_value(value).expect("round trip");
    assert_eq!(back, step);
}

#[test]
fn tool_and_intent_steps_serialize_with_stable_names() {
    let mut result = tool(3, "call_1", "lookup", ToolStatus::Invalid, "unknown tool");
    if let StepKind::Tool { http_status, .. } = &mut result.kind {
        *http_status = Some(404);
    }
    let text = serde_json::to_string(&result).expect("serializes");
    assert_eq!(
        text,
        r#"{"seq":3,"attempt":1,"started_at":"2023-11-14T22:13:23Z","finished_at":"2023-11-14T22:13:24Z","duration_ms":1000,"kind":"tool","call_id":"call_1","name":"lookup","arguments":"{}","status":"invalid","content":"unknown tool","http_status":404}"#
    );
    assert_eq!(
        serde_json::from_str::<Step>(&text).expect("round trip"),
        result
    );

    let intent = intent(2, "call_9", "send_mail");
    let value = serde_json::to_value(&intent).expect("serializes");
    assert_eq!(value["kind"], "tool_intent");
    assert_eq!(value["call_id"], "call_9");
    assert_eq!(
        serde_json::from_value::<Step>(value).expect("round trip"),
        intent
    );
}

#[test]
fn steps_read_without_optional_fields_and_with_unknown_ones() {
    // What an older writer stored, plus a field a newer one might add.
    let stored = json!({
        "seq": 0, "attempt": 2,
        "started_at": "2024-01-01T00:00:00Z", "finished_at": "2024-01-01T00:00:01Z",
        "kind": "model", "turn": 0, "message": {"content": "hi"}, "future_field": [1, 2]
    });
    let step: Step = serde_json::from_value(stored).expect("lenient read");
    let StepKind::Model {
        feedback,
        usage,
        cost_usd,
        cached,
        message,
        ..
    } = step.kind
    else {
        panic!("a model step");
    };
    assert_eq!(
        (feedback, usage, cost_usd, cached),
        (None, Usage::default(), 0.0, false)
    );
    assert_eq!(message.content.as_deref(), Some("hi"));
    let stored = json!({
        "seq": 1, "attempt": 1, "started_at": "2024-01-01T00:00:00Z", "finished_at": "2024-01-01T00:00:00Z",
        "kind": "tool", "call_id": "c", "name": "n", "arguments": "{}", "status": "uncertain", "content": ""
    });
    let step: Step = serde_json::from_value(stored).expect("no http_status");
    assert!(matches!(
        step.kind,
        StepKind::Tool {
            status: ToolStatus::Uncertain,
            http_status: None,
            ..
        }
    ));
}

#[test]
fn conversation_is_rebuilt_in_order() {
    let def = agent();
    let input = vec![Message::user("weather in Oslo?")];
    let calls = vec![
        call("a", "lookup", r#"{"q":"oslo"}"#),
        call("b", "send_mail", "{}"),
    ];
    let steps = vec![
        model(0, 0, Some("checking"), calls.clone()),
        intent(1, "b", "send_mail"),
        tool(2, "b", "send_mail", ToolStatus::Ok, "sent"),
        tool(3, "a", "lookup", ToolStatus::Ok, "3°C"),
        model(4, 1, Some("not JSON"), vec![]),
        model_with(5, 2, Some("please fix"), Some("{}"), vec![]),
    ];
    let expected = vec![
        Message::system("You help."),
        Message::user("weather in Oslo?"),
        Message::Assistant {
            content: Some("checking".into()),
            tool_calls: calls,
        },
        Message::Tool {
            tool_call_id: "b".into(),
            content: "sent".into(),
        },
        Message::Tool {
            tool_call_id: "a".into(),
            content: "3°C".into(),
        },
        Message::Assistant {
            content: Some("not JSON".into()),
            tool_calls: vec![],
        },
        Message::user("please fix"),
        Message::Assistant {
            content: Some("{}".into()),
            tool_calls: vec![],
        },
    ];
    assert_eq!(conversation(&def, &input, &steps), expected);
}

#[test]
fn conversation_drops_orphan_and_duplicate_tool_results() {
    let def = AgentDefinition::default();
    let steps = vec![
        tool(0, "x", "lookup", ToolStatus::Ok, "before any model call"),
        model(1, 0, None, vec![call("a", "lookup", "{}")]),
        tool(2, "a", "lookup", ToolStatus::Ok, "first"),
        tool(3, "a", "lookup", ToolStatus::Ok, "again"),
        tool(4, "zzz", "lookup", ToolStatus::Ok, "nobody asked"),
    ];
    let messages = conversation(&def, &[], &steps);
    assert_eq!(
        messages,
        vec![
            Message::Assistant {
                content: None,
                tool_calls: vec![call("a", "lookup", "{}")]
            },
            Message::Tool {
                tool_call_id: "a".into(),
                content: "first".into()
            },
        ]
    );
}

/// A run of `turns` turns, each a model call with one tool call and its result.
fn run_of(turns: u32) -> Vec<Step> {
    let mut steps = Vec::new();
    for turn in 0..turns {
        let id = format!("call_{turn:03}");
        let content =
            format!("Turn {turn:03}: looking this up, then I will summarise what I find for you.");
        steps.push(model(
            turn * 2,
            turn,
            Some(&content),
            vec![call(&id, "lookup", r#"{"q":"some query text"}"#)],
        ));
        let result = "result ".repeat(40);
        steps.push(tool(turn * 2 + 1, &id, "lookup", ToolStatus::Ok, &result));
    }
    steps
}

fn stored_bytes(steps: &[Step]) -> usize {
    steps
        .iter()
        .map(|s| serde_json::to_vec(s).map_or(0, |v| v.len()))
        .sum()
}

#[test]
fn storage_grows_linearly_with_the_run() {
    let one = stored_bytes(&run_of(1));
    let fifty = stored_bytes(&run_of(50));
    // Each turn stores the same delta, up to the digits of `seq` and `turn`.
    assert!(
        fifty <= 50 * one + 50 * 8,
        "50 turns store {fifty} bytes, 1 turn {one}"
    );
    // Whereas storing each request's full conversation would grow with the square.
    let def = AgentDefinition::default();
    let steps = run_of(50);
    let quadratic: usize = (1..=steps.len())
        .map(|n| {
            serde_json::to_vec(&conversation(&def, &[], steps.get(..n).unwrap_or_default()))
                .map_or(0, |v| v.len())
        })
        .sum();
    assert!(
        quadratic > 20 * fifty,
        "full conversations: {quadratic} bytes, step log: {fifty} bytes"
    );
}

#[test]
fn totals_count_every_tool_step_and_ignore_bad_costs() {
    let mut bad_cost = model(3, 1, Some("x"), vec![]);
    if let StepKind::Model {
        cost_usd, usage: u, ..
    } = &mut bad_cost.kind
    {
        *cost_usd = f64::NAN;
        *u = usage(50);
    }
    let steps = vec![
        model(
            0,
            0,
            None,
            vec![call("a", "lookup", "{}"), call("b", "nope", "{}")],
        ),
        tool(1, "a", "lookup", ToolStatus::Ok, "ok"),
        tool(2, "b", "nope", ToolStatus::Invalid, "unknown tool"),
        intent(3, "c", "send_mail"),
        bad_cost,
    ];
    let totals = totals(&steps);
    assert_eq!(totals.turns, 2);
    assert_eq!(totals.tool_calls, 2);
    assert_eq!(totals.usage.total_tokens, 150);
    assert!((totals.cost_usd - 0.001).abs() < 1e-12);
}

#[test]
fn truncation_keeps_short_output_whole() {
    assert_eq!(truncate_tool_output(b"hello", 5), "hello");
    assert_eq!(truncate_tool_output("héllo".as_bytes(), 100), "héllo");
    assert_eq!(truncate_tool_output(b"", 1), "");
}

#[test]
fn truncation_cuts_at_a_char_boundary_at_or_below_the_limit() {
    assert_eq!(
        truncate_tool_output(b"hello world", 5),
        "hello\n[truncated: showed 5 of 11 bytes]"
    );
    // "é" is 2 bytes (1..3): a cut at 2 would split it.
    assert_eq!(
        truncate_tool_output("héllo".as_bytes(), 2),
        "h\n[truncated: showed 1 of 6 bytes]"
    );
    assert_eq!(
        truncate_tool_output("héllo".as_bytes(), 3),
        "hé\n[truncated: showed 3 of 6 bytes]"
    );
    // "€" is 3 bytes, "𝄞" 4: every cut inside them moves back to their start.
    let euro = "a€b".as_bytes();
    for max in 1..=3 {
        assert_eq!(
            truncate_tool_output(euro, max),
            "a\n[truncated: showed 1 of 5 bytes]",
            "max {max}"
        );
    }
    let clef = "x𝄞".as_bytes();
    for max in 1..=4 {
        assert_eq!(
            truncate_tool_output(clef, max),
            "x\n[truncated: showed 1 of 5 bytes]",
            "max {max}"
        );
    }
    assert_eq!(
        truncate_tool_output("€".as_bytes(), 2),
        "\n[truncated: showed 0 of 3 bytes]"
    );
    assert_eq!(
        truncate_tool_output(b"abc", 0),
        "\n[truncated: showed 0 of 3 bytes]"
    );
}

#[test]
fn truncation_decodes_invalid_utf8_lossily() {
    assert_eq!(truncate_tool_output(&[b'o', b'k', 0xff], 10), "ok\u{fffd}");
    // Garbage continuation bytes: the cut moves back at most 3 bytes and never panics.
    let garbage = [0x80u8; 10];
    let text = truncate_tool_output(&garbage, 6);
    assert!(
        text.ends_with("[truncated: showed 3 of 10 bytes]"),
        "{text}"
    );
}
