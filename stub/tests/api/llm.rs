use serde_json::{json, Value};

use agentfleet_stub::llm::{Behavior, Fault, StubLlm};
use agentfleet_stub::script::Scenario;

use crate::helpers::spawn;

const SCRIPTED: &str = "scripted-model";

struct Llm {
    stub: StubLlm,
    url: String,
    client: reqwest::Client,
}

impl Llm {
    async fn spawn() -> Self {
        let stub = StubLlm::new(Behavior {
            completion_tokens: 5,
            ..Behavior::default()
        });
        let scenario = Scenario::named("tool-then-answer").expect("built in");
        stub.script_model(SCRIPTED, scenario);
        let url = format!("{}/v1/chat/completions", spawn(stub.router()).await);
        Self {
            stub,
            url,
            client: reqwest::Client::new(),
        }
    }

    async fn call(&self, job: &str, body: Value) -> (u16, Value) {
        let response = self
            .client
            .post(&self.url)
            .header("x-agentfleet-job-id", job)
            .json(&body)
            .send()
            .await
            .expect("the stub answers");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }
}

fn tools() -> Value {
    json!([{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}])
}

fn first_turn(model: &str) -> Value {
    json!({
        "model": model,
        "tools": tools(),
        "messages": [{"role": "user", "content": "find item forty-two"}],
    })
}

#[tokio::test]
async fn a_scripted_model_calls_a_tool_then_sees_its_result() {
    let llm = Llm::spawn().await;
    let (status, first) = llm.call("job-1", first_turn(SCRIPTED)).await;
    assert_eq!(status, 200);
    let message = &first["choices"][0]["message"];
    assert_eq!(first["choices"][0]["finish_reason"], "tool_calls");
    assert_eq!(message["tool_calls"][0]["id"], "call_0_0");
    assert_eq!(message["tool_calls"][0]["function"]["name"], "lookup");
    assert_eq!(
        message["tool_calls"][0]["function"]["arguments"],
        r#"{"id":"42"}"#
    );
    // 19 characters of content: 19 / 4 = 4 prompt tokens; completion tokens from Behavior.
    assert_eq!(
        first["usage"],
        json!({"prompt_tokens": 4, "completion_tokens": 5, "total_tokens": 9})
    );

    let mut second_turn = first_turn(SCRIPTED);
    if let Some(messages) = second_turn["messages"].as_array_mut() {
        messages.push(message.clone());
        messages.push(json!({"role": "tool", "tool_call_id": "call_0_0", "content": "value-42"}));
    }
    let (status, second) = llm.call("job-1", second_turn.clone()).await;
    assert_eq!(status, 200);
    assert_eq!(second["choices"][0]["finish_reason"], "stop");
    assert_eq!(
        second["choices"][0]["message"]["content"],
        "results: value-42"
    );

    assert_eq!(llm.stub.calls_for_job("job-1"), 2);
    assert_eq!(llm.stub.last_request("job-1"), Some(second_turn));
}

#[tokio::test]
async fn unscripted_models_answer_as_before() {
    let llm = Llm::spawn().await;
    let (status, answer) = llm.call("job-2", first_turn("plain-model")).await;
    assert_eq!(status, 200);
    assert_eq!(
        answer["choices"][0]["message"]["content"],
        "stub answer to: find item forty-two"
    );
    assert_eq!(answer["usage"]["prompt_tokens"], 12);
    assert_eq!(llm.stub.calls_for_job("job-2"), 1);
    // Only scripted models keep request bodies.
    assert_eq!(llm.stub.last_request("job-2"), None);
}

#[tokio::test]
async fn faults_come_before_the_script() {
    let llm = Llm::spawn().await;
    llm.stub.script_faults([Fault::Status {
        status: 503,
        retry_after: None,
    }]);
    let (status, _) = llm.call("job-3", first_turn(SCRIPTED)).await;
    assert_eq!(status, 503);
    // The retry sends the same conversation and so gets the script's first turn.
    let (status, answer) = llm.call("job-3", first_turn(SCRIPTED)).await;
    assert_eq!(status, 200);
    assert_eq!(answer["choices"][0]["finish_reason"], "tool_calls");
    assert_eq!(llm.stub.calls_for_job("job-3"), 2);
}
