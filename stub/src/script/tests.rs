use serde_json::{json, Value};

use super::*;

fn request(messages: Value) -> Value {
    json!({"model": "m", "messages": messages})
}

fn user() -> Value {
    json!({"role": "user", "content": "look it up"})
}

fn assistant_calls() -> Value {
    json!({"role": "assistant", "content": null, "tool_calls": [
        {"id": "call_0_0", "type": "function", "function": {"name": "lookup", "arguments": "{}"}}
    ]})
}

fn tool(content: &str) -> Value {
    json!({"role": "tool", "tool_call_id": "call_0_0", "content": content})
}

fn reply(scenario: &str, messages: Value) -> Reply {
    Scenario::named(scenario)
        .and_then(|s| s.reply(&request(messages)))
        .expect("a built-in scenario always answers")
}

fn call_names_and_arguments(reply: &Reply) -> Vec<(String, String)> {
    reply.message["tool_calls"]
        .as_array()
        .expect("tool_calls is an array")
        .iter()
        .map(|c| {
            (
                c["function"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                c["function"]["arguments"]
                    .as_str()
                    .expect("arguments are JSON text")
                    .to_owned(),
            )
        })
        .collect()
}

#[test]
fn the_turn_is_the_number_of_assistant_messages() {
    assert_eq!(turn_index(&request(json!([user()]))), 0);
    let two = json!([
        user(),
        assistant_calls(),
        tool("a"),
        assistant_calls(),
        tool("b")
    ]);
    assert_eq!(turn_index(&request(two)), 2);
    assert_eq!(turn_index(&json!({"messages": "not a list"})), 0);
}

#[test]
fn tool_then_answer_calls_lookup_then_echoes_the_result() {
    let first = reply("tool-then-answer", json!([user()]));
    assert_eq!(first.finish_reason, "tool_calls");
    assert_eq!(first.message["content"], Value::Null);
    assert_eq!(first.message["tool_calls"][0]["id"], "call_0_0");
    assert_eq!(first.message["tool_calls"][0]["type"], "function");
    let calls = call_names_and_arguments(&first);
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].0, "lookup");
    // The arguments are JSON *text*, which parses back to the scripted value.
    let arguments: Value = serde_json::from_str(&calls[0].1).expect("valid JSON text");
    assert_eq!(arguments, json!({"id": "42"}));

    let second = reply(
        "tool-then-answer",
        json!([user(), assistant_calls(), tool("value-42")]),
    );
    assert_eq!(second.finish_reason, "stop");
    assert_eq!(second.message["content"], "results: value-42");
}

#[test]
fn parallel_tools_calls_twice_in_one_message_with_distinct_ids() {
    let first = reply("parallel-tools", json!([user()]));
    let ids: Vec<&str> = first.message["tool_calls"]
        .as_array()
        .map(|calls| calls.iter().filter_map(|c| c["id"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(ids, ["call_0_0", "call_0_1"]);
    let second = reply(
        "parallel-tools",
        json!([user(), assistant_calls(), tool("one"), tool("two")]),
    );
    assert_eq!(second.message["content"], "results: one | two");
}

#[test]
fn five_turns_makes_four_calls_then_answers() {
    let mut messages = vec![user()];
    for turn in 0..4 {
        let answer = reply("five-turns", Value::Array(messages.clone()));
        assert_eq!(answer.finish_reason, "tool_calls", "turn {turn}");
        assert_eq!(
            answer.message["tool_calls"][0]["id"],
            format!("call_{turn}_0")
        );
        let calls = call_names_and_arguments(&answer);
        assert_eq!(
            serde_json::from_str::<Value>(&calls[0].1).ok(),
            Some(json!({"id": turn.to_string()}))
        );
        messages.push(answer.message);
        messages.push(tool("v"));
    }
    let last = reply("five-turns", Value::Array(messages));
    assert_eq!(last.finish_reason, "stop");
    assert_eq!(last.message["content"], "done");
}

#[test]
fn the_last_turn_repeats_past_the_end() {
    let many = Value::Array(
        std::iter::once(user())
            .chain(std::iter::repeat_n(assistant_calls(), 9))
            .collect(),
    );
    assert_eq!(reply("five-turns", many.clone()).message["content"], "done");
    let looping = reply("loop-forever", many);
    assert_eq!(looping.finish_reason, "tool_calls");
    assert_eq!(looping.message["tool_calls"][0]["id"], "call_9_0");
}

#[test]
fn the_same_conversation_gets_the_same_answer() {
    let conversation = json!([user(), assistant_calls(), tool("x")]);
    assert_eq!(
        reply("five-turns", conversation.clone()),
        reply("five-turns", conversation)
    );
}

#[test]
fn raw_arguments_are_sent_verbatim() {
    let scenario = Scenario::new(vec![Turn::RawArguments {
        name: "lookup".to_owned(),
        arguments: "{\"id\": 4".to_owned(),
    }]);
    let answer = scenario.reply(&request(json!([user()]))).expect("one turn");
    assert_eq!(
        call_names_and_arguments(&answer),
        [("lookup".to_owned(), "{\"id\": 4".to_owned())]
    );
}

#[test]
fn repair_on_error_repairs_only_after_a_failed_tool_message() {
    let scenario = Scenario::new(vec![Turn::RepairOnError {
        first: ScriptedCall::new("lookup", json!({"id": 7})),
        repaired: ScriptedCall::new("lookup", json!({"id": "7"})),
    }]);
    let arguments = |messages: Value| {
        let answer = scenario.reply(&request(messages)).expect("one turn");
        call_names_and_arguments(&answer)[0].1.clone()
    };
    assert_eq!(arguments(json!([user()])), r#"{"id":7}"#);
    assert_eq!(
        arguments(json!([user(), assistant_calls(), tool("value-7")])),
        r#"{"id":7}"#
    );
    for failure in ["Invalid arguments: id must be a string", "ERROR: boom"] {
        assert_eq!(
            arguments(json!([user(), assistant_calls(), tool(failure)])),
            r#"{"id":"7"}"#,
            "{failure}"
        );
    }
    // Only the last message counts: an old failure followed by a user message is not repaired.
    assert_eq!(
        arguments(json!([assistant_calls(), tool("error"), user()])),
        r#"{"id":7}"#
    );
}

#[test]
fn an_empty_scenario_has_no_answer() {
    assert_eq!(Scenario::default().reply(&request(json!([user()]))), None);
}

#[test]
fn every_listed_name_is_a_scenario() {
    for name in Scenario::NAMES {
        assert!(Scenario::named(name).is_some(), "{name}");
    }
    assert_eq!(Scenario::named("nope"), None);
}

#[test]
fn prompt_tokens_are_estimated_from_message_text() {
    let twelve = request(json!([{"role": "user", "content": "abcdefgh"}, tool("abcd")]));
    assert_eq!(estimate_prompt_tokens(&twelve), 3);
    assert_eq!(estimate_prompt_tokens(&request(json!([]))), 1);
}

#[test]
fn model_scenario_assignments_parse_or_name_the_problem() {
    let parsed: ModelScenario = "gpt-test=five-turns".parse().expect("valid");
    assert_eq!(parsed.model, "gpt-test");
    assert_eq!(Some(parsed.scenario), Scenario::named("five-turns"));
    assert_eq!(
        "gpt-test".parse::<ModelScenario>(),
        Err(ModelScenarioError::NotAnAssignment("gpt-test".to_owned()))
    );
    assert_eq!(
        "m=nope".parse::<ModelScenario>(),
        Err(ModelScenarioError::UnknownScenario("nope".to_owned()))
    );
}
