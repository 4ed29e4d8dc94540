use std::time::Duration;

use serde_json::{json, Value};

use agentfleet_stub::script::{Scenario, Turn};
use agentfleet_tests::{wait_until, AgentSpec, AppOptions, TestApp};

/// Each kind of bad submission gets its 4xx naming the problem, and enqueues and stores
/// nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_submissions_get_a_4xx_and_change_nothing() -> anyhow::Result<()> {
    let app = TestApp::spawn(AppOptions {
        workers: 0,
        ..AppOptions::default()
    })
    .await?;
    let hook = app.webhook_url();
    let cases: Vec<(&str, String, u16, Option<&str>)> = vec![
        ("not JSON", "{\"agent\":".into(), 400, None),
        ("array body", "[]".into(), 400, None),
        ("missing agent", json!({"input": "x"}).to_string(), 400, Some("agent")),
        ("unknown agent", json!({"agent": "nope", "input": "x"}).to_string(), 400, Some("agent")),
        ("agent not a string", json!({"agent": 1, "input": "x"}).to_string(), 400, Some("agent")),
        ("missing input", json!({"agent": "summarize"}).to_string(), 400, Some("input")),
        ("empty input", json!({"agent": "summarize", "input": " "}).to_string(), 400, Some("input")),
        ("input wrong type", json!({"agent": "summarize", "input": 3}).to_string(), 400, Some("input")),
        ("no messages", json!({"agent": "summarize", "input": {"messages": []}}).to_string(), 400, Some("input.messages")),
        (
            "bad role",
            json!({"agent": "summarize", "input": {"messages": [{"role": "robot", "content": "x"}]}}).to_string(),
            400,
            Some("input.messages[0].role"),
        ),
        ("unknown field", json!({"agent": "summarize", "input": "x", "priority": 1}).to_string(), 400, Some("priority")),
        ("bad webhook URL", json!({"agent": "summarize", "input": "x", "webhook_url": "not a url"}).to_string(), 400, Some("webhook_url")),
        ("webhook scheme", json!({"agent": "summarize", "input": "x", "webhook_url": "file:///etc/passwd"}).to_string(), 400, Some("webhook_url")),
        ("metadata not an object", json!({"agent": "summarize", "input": "x", "metadata": "m"}).to_string(), 400, Some("metadata")),
        (
            "metadata too deep",
            json!({"agent": "summarize", "input": "x", "metadata": {"k": nested(40)}}).to_string(),
            400,
            Some("metadata"),
        ),
        (
            "message not an object",
            json!({"agent": "summarize", "input": {"messages": [["user", "x"]]}}).to_string(),
            400,
            Some("input.messages[0]"),
        ),
        ("webhook URL with credentials", json!({"agent": "summarize", "input": "x", "webhook_url": "https://u:p@example.com/h"}).to_string(), 400, Some("webhook_url")),
        ("limits not an object", json!({"agent": "summarize", "input": "x", "limits": [3]}).to_string(), 400, Some("limits")),
        ("timeout not whole", json!({"agent": "summarize", "input": "x", "timeout_secs": 2.5}).to_string(), 400, Some("timeout_secs")),
        ("trailing bytes", format!("{} x", json!({"agent": "summarize", "input": "x"})), 400, None),
        ("too large", json!({"agent": "summarize", "input": "x".repeat(5000), "webhook_url": hook}).to_string(), 413, None),
    ];
    for (name, body, status, field) in cases {
        let response = app
            .http
            .post(app.url("/v1/jobs"))
            .bearer_auth(&app.acme.api_key)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await?;
        assert_eq!(response.status().as_u16(), status, "{name}");
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json",
            "{name}"
        );
        let problem: Value = response.json().await?;
        assert_eq!(problem["status"], status, "{name}");
        assert!(
            problem["detail"].as_str().is_some_and(|d| !d.is_empty()),
            "{name}"
        );
        if let Some(field) = field {
            assert_eq!(problem["field"], field, "{name}: {problem}");
        }
    }
    let response = app
        .http
        .post(app.url("/v1/jobs"))
        .bearer_auth(&app.acme.api_key)
        .header("content-type", "text/plain")
        .body(json!({"agent": "summarize", "input": "x"}).to_string())
        .send()
        .await?;
    assert_eq!(response.status(), 415);

    assert_eq!(
        app.agent_queue_depth("summarize").await?,
        0,
        "nothing was enqueued"
    );
    assert!(app.job_keys().await?.is_empty(), "nothing was stored");
    Ok(())
}

fn nested(levels: usize) -> Value {
    (0..levels).fold(json!(1), |inner, _| json!([inner]))
}

/// An agent that declares an `input_schema` takes structured input: a value that breaks the
/// schema is refused naming the place and the rule, and stores nothing; a valid one runs, and
/// the model gets it as one user message holding the JSON.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn structured_input_is_checked_against_the_agents_schema() -> anyhow::Result<()> {
    let extract = AgentSpec {
        input_schema: Some(
            "{ type: object, required: [invoice], additionalProperties: false, properties: { invoice: { type: object, required: [lines], properties: { lines: { type: array, minItems: 1, items: { type: object, required: [sku, qty], properties: { sku: { type: string }, qty: { type: integer, minimum: 1 } } } } } } } }".into(),
        ),
        ..AgentSpec::new("extract")
    };
    let model = extract.model();
    let app = TestApp::spawn(AppOptions {
        agents: vec![extract],
        workers: 1,
        ..AppOptions::default()
    })
    .await?;
    app.llm
        .script_model(&model, Scenario::new(vec![Turn::Final("done".into())]));
    for (input, field) in [
        (
            json!({"invoice": {"lines": [{"sku": "A1", "qty": 0}]}}),
            "input.invoice.lines[0].qty",
        ),
        (
            json!({"invoice": {"lines": [{"sku": "A1"}]}}),
            "input.invoice.lines[0]",
        ),
        (json!({"invoice": {"lines": []}}), "input.invoice.lines"),
        (json!({"invoice": {}}), "input.invoice"),
        (
            json!({"invoice": {"lines": [{"sku": "A1", "qty": 1}]}, "extra": 1}),
            "input",
        ),
        (json!("a text input"), "input"),
    ] {
        let response = app
            .submit_as(&app.acme, &json!({"agent": "extract", "input": input}))
            .await;
        assert_eq!(response.status(), 400, "{input}");
        let problem: Value = response.json().await?;
        assert_eq!(problem["field"], field, "{input}: {problem}");
    }
    assert!(app.job_keys().await?.is_empty(), "nothing was stored");

    let invoice = json!({"invoice": {"lines": [{"sku": "A1", "qty": 2}]}});
    let response = app
        .submit_as(&app.acme, &json!({"agent": "extract", "input": invoice}))
        .await;
    assert_eq!(response.status(), 202);
    let id = response.json::<Value>().await?["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let record = app
        .wait_terminal(std::slice::from_ref(&id), Duration::from_secs(20))
        .await?;
    assert_eq!(record[0]["status"], "succeeded", "{record:?}");
    let request = app.llm.last_request(&id).expect("the model was called");
    let user: Vec<&Value> = request["messages"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|m| m["role"] == "user")
        .collect();
    assert_eq!(user.len(), 1, "{request}");
    let sent: Value = serde_json::from_str(user[0]["content"].as_str().unwrap_or_default())?;
    assert_eq!(sent, invoice, "the model got the input as JSON");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_to_internal_addresses_are_refused() -> anyhow::Result<()> {
    let app = TestApp::spawn(AppOptions {
        workers: 0,
        allow_private_webhooks: false,
        webhook_hosts: vec![("inward.example.test", "127.0.0.1")],
        ..AppOptions::default()
    })
    .await?;
    for url in [
        "http://127.0.0.1:9/hook",
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.1/",
        "http://[::1]/",
        "http://localhost/",
        // The transition forms of private addresses: NAT64, 6to4, Teredo (client
        // 127.0.0.1), local-use NAT64, IPv4-compatible.
        "http://[64:ff9b::7f00:1]/",
        "http://[2002:a00:1::1]/",
        "http://[2001:0:5ef5:79fb:0:0:80ff:fffe]/",
        "http://[64:ff9b:1::808:808]/",
        "http://[::a00:1]/",
        // A name whose configured address is loopback.
        "http://inward.example.test:9/hook",
    ] {
        let response = app
            .submit_as(
                &app.acme,
                &json!({"agent": "summarize", "input": "x", "webhook_url": url}),
            )
            .await;
        assert_eq!(response.status(), 400, "{url}");
        let problem: Value = response.json().await?;
        assert_eq!(problem["field"], "webhook_url", "{url}");
    }
    assert!(app.job_keys().await?.is_empty());
    Ok(())
}

/// The delivery-time guard: a name that was fine when the job was accepted resolves to
/// loopback when the worker delivers (as after DNS rebinding; here a worker whose static
/// `webhooks.hosts` entry points inward). The delivery is refused, not sent: the receiver sees
/// nothing, and the record ends as `webhook_blocked`, counted in the metrics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_that_resolves_inward_at_delivery_is_blocked_and_recorded() -> anyhow::Result<()>
{
    let mut app = TestApp::spawn(AppOptions {
        workers: 0,
        allow_private_webhooks: false,
        ..AppOptions::default()
    })
    .await?;
    let mut rebound = app.config.clone();
    rebound
        .webhooks
        .hosts
        .insert("hooks.rebind.test".into(), "127.0.0.1".parse()?);
    let worker = app.start_worker_with(rebound).await?;
    let port = app.receiver_addr.port();
    let response = app
        .submit_as(
            &app.acme,
            &json!({"agent": "summarize", "input": "x", "webhook_url": format!("http://hooks.rebind.test:{port}/hooks/acme")}),
        )
        .await;
    assert_eq!(
        response.status(),
        202,
        "a public-looking name passes at submit"
    );
    let id = response.json::<Value>().await?["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let record = wait_until(Duration::from_secs(20), "webhook blocked", || async {
        let record = app.job(&id).await.ok()?;
        (record["webhook"]["outcome"] == "webhook_blocked").then_some(record)
    })
    .await?;
    assert_eq!(record["status"], "succeeded");
    assert!(record["webhook"]["delivered_at"].is_null());
    assert_eq!(app.receiver.requests(), 0, "nothing reached the receiver");
    let metrics = app.worker_metrics(worker).expect("worker").render();
    assert!(
        metrics.contains(r#"agentfleet_webhook_deliveries_total{status="blocked"} 1"#),
        "{metrics}"
    );
    Ok(())
}
