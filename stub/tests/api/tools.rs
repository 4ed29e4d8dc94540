use serde_json::{json, Value};

use agentfleet_stub::tools::ToolServer;

use crate::helpers::{eventually, spawn, within};

struct Tools {
    server: ToolServer,
    url: String,
    client: reqwest::Client,
}

impl Tools {
    async fn spawn() -> Self {
        let server = ToolServer::new();
        let url = spawn(server.router()).await;
        Self {
            server,
            url,
            client: reqwest::Client::new(),
        }
    }

    async fn get(&self, path: &str) -> (u16, String) {
        let response = self
            .client
            .get(format!("{}{path}", self.url))
            .send()
            .await
            .expect("the tool server answers");
        let status = response.status().as_u16();
        (status, response.text().await.unwrap_or_default())
    }

    async fn post(&self, path: &str, key: Option<&str>, body: Value) -> (u16, Value) {
        let mut request = self.client.post(format!("{}{path}", self.url)).json(&body);
        if let Some(key) = key {
            request = request.header("Idempotency-Key", key);
        }
        let response = request.send().await.expect("the tool server answers");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }
}

fn parse(text: &str) -> Value {
    serde_json::from_str(text).expect("a JSON answer")
}

#[tokio::test]
async fn lookup_answers_and_counts_by_path_prefix() {
    let tools = Tools::spawn().await;
    let (status, body) = tools.get("/lookup/1").await;
    assert_eq!(status, 200);
    assert_eq!(parse(&body), json!({"id": "1", "value": "value-1"}));
    tools.get("/lookup/2").await;
    assert_eq!(tools.server.requests("/lookup"), 2);
    assert_eq!(tools.server.requests("/lookup/1/"), 1);
    assert_eq!(tools.server.executions("/lookup"), 2);
    assert_eq!(tools.server.requests("/look"), 0);
    assert_eq!(tools.server.requests("/"), 2);
}

#[tokio::test]
async fn orders_are_idempotent_by_key() {
    let tools = Tools::spawn().await;
    let (status, first) = tools
        .post("/orders", Some("k1"), json!({"item": "a"}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(first, json!({"order": 1, "body": {"item": "a"}}));
    let (_, repeat) = tools
        .post("/orders", Some("k1"), json!({"item": "a"}))
        .await;
    assert_eq!(repeat, first);
    assert_eq!(tools.server.requests("/orders"), 2);
    assert_eq!(tools.server.executions("/orders"), 1);

    let (_, other) = tools
        .post("/orders", Some("k2"), json!({"item": "b"}))
        .await;
    assert_eq!(other["order"], 2);
    assert_eq!(tools.server.executions("/orders"), 2);
    assert_eq!(tools.server.idempotency_keys("/orders"), ["k1", "k1", "k2"]);
}

#[tokio::test]
async fn payments_happen_on_every_call_whatever_the_key() {
    let tools = Tools::spawn().await;
    for expected in 1..=2 {
        let (status, answer) = tools
            .post("/payments", Some("same"), json!({"eur": 5}))
            .await;
        assert_eq!(status, 200);
        assert_eq!(answer, json!({"payment": expected, "body": {"eur": 5}}));
    }
    assert_eq!(tools.server.requests("/payments"), 2);
    assert_eq!(tools.server.executions("/payments"), 2);
    assert_eq!(tools.server.idempotency_keys("/payments"), ["same", "same"]);
}

#[tokio::test]
async fn invalid_json_is_refused_without_an_effect() {
    let tools = Tools::spawn().await;
    let response = tools
        .client
        .post(format!("{}/payments", tools.url))
        .body("{not json")
        .send()
        .await
        .expect("the tool server answers");
    assert_eq!(response.status().as_u16(), 400);
    assert_eq!(tools.server.requests("/payments"), 1);
    assert_eq!(tools.server.executions("/payments"), 0);
}

#[tokio::test]
async fn a_held_request_is_counted_and_answered_on_release() {
    let tools = Tools::spawn().await;
    tools.server.hold("/payments");
    let call = {
        let (client, url) = (tools.client.clone(), format!("{}/payments", tools.url));
        tokio::spawn(async move { client.post(url).json(&json!({})).send().await })
    };
    within("the held call", tools.server.wait_requests("/payments", 1)).await;
    assert_eq!(tools.server.executions("/payments"), 0);
    assert!(!call.is_finished());
    tools.server.release("/payments");
    let response = within("the released call", call)
        .await
        .expect("the call task ends")
        .expect("an answer");
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(tools.server.executions("/payments"), 1);
}

#[tokio::test]
async fn a_held_effect_happens_even_if_the_caller_is_gone() {
    let tools = Tools::spawn().await;
    tools.server.hold("/payments");
    let call = {
        let (client, url) = (tools.client.clone(), format!("{}/payments", tools.url));
        tokio::spawn(async move { client.post(url).json(&json!({})).send().await })
    };
    within("the held call", tools.server.wait_requests("/payments", 1)).await;
    // The caller dies, as a SIGKILLed worker would.
    call.abort();
    let _ = call.await;
    assert_eq!(tools.server.executions("/payments"), 0);
    tools.server.release("/payments");
    eventually("the payment", || tools.server.executions("/payments") == 1).await;
    // Other paths were never held.
    assert_eq!(tools.get("/lookup/1").await.0, 200);
}

#[tokio::test]
async fn parallel_slow_calls_overlap() {
    let tools = Tools::spawn().await;
    let (first, second) = tokio::join!(tools.get("/slow?ms=200"), tools.get("/slow?ms=200"));
    assert_eq!(parse(&first.1), json!({"slept_ms": 200}));
    assert_eq!(second.0, 200);
    assert_eq!(tools.server.in_flight_peak("/slow"), 2);
    tools.get("/slow?ms=0").await;
    assert_eq!(tools.server.in_flight_peak("/slow"), 2);
}

#[tokio::test]
async fn big_answers_exactly_the_bytes_asked_for() {
    let tools = Tools::spawn().await;
    let (status, body) = tools.get("/big?bytes=5000").await;
    assert_eq!(status, 200);
    assert_eq!(body.len(), 5000);
    assert!(parse(&body)["data"].is_string());
    assert_eq!(tools.get("/big").await.1.len(), 100_000);
    assert_eq!(tools.get("/big?bytes=3").await.1, r#"{"data":""}"#);
}

#[tokio::test]
async fn fail_and_unknown_paths_answer_json_errors() {
    let tools = Tools::spawn().await;
    let (status, body) = tools.get("/fail").await;
    assert_eq!(status, 500);
    assert_eq!(parse(&body), json!({"error": "boom"}));
    let (status, body) = tools.get("/nope").await;
    assert_eq!(status, 404);
    assert_eq!(parse(&body), json!({"error": "no such tool"}));
}
