//! The agent runtime end to end: multi-turn runs with tools, repairs, limits, traces and
//! cost, against the real RabbitMQ and Redis, a scripted stub model and a counting tool
//! server.

use std::time::Duration;

use serde_json::{json, Value};

use agentfleet_stub::script::{Scenario, ScriptedCall, Turn};
use agentfleet_tests::{step_kinds, AgentSpec, AppOptions, TestApp};

/// An app whose `agent` has `tools`, with the scenario `turns` scripted for its model.
async fn app_with(agent: AgentSpec, turns: Vec<Turn>) -> anyhow::Result<TestApp> {
    let model = agent.model();
    let app = TestApp::spawn(AppOptions {
        agents: vec![agent],
        ..AppOptions::default()
    })
    .await?;
    app.llm.script_model(&model, Scenario::new(turns));
    Ok(app)
}

fn agent(tools: &[&'static str]) -> AgentSpec {
    AgentSpec {
        tools: tools.to_vec(),
        ..AgentSpec::new("helper")
    }
}

fn call(name: &str, arguments: Value) -> ScriptedCall {
    ScriptedCall::new(name, arguments)
}

async fn submit(app: &TestApp, body: Value) -> anyhow::Result<String> {
    let response = app.submit_as(&app.acme, &body).await;
    anyhow::ensure!(response.status() == 202, "submit: {}", response.status());
    let accepted: Value = response.json().await?;
    Ok(accepted["id"].as_str().unwrap_or_default().to_owned())
}

/// Runs one job of the `helper` agent to its end; answers the record with its steps.
async fn run(app: &TestApp, extra: Value) -> anyhow::Result<Value> {
    let mut body =
        json!({"agent": "helper", "input": "Do the task.", "webhook_url": app.webhook_url()});
    if let (Some(body), Value::Object(extra)) = (body.as_object_mut(), extra) {
        body.extend(extra);
    }
    let id = submit(app, body).await?;
    app.wait_terminal(std::slice::from_ref(&id), Duration::from_secs(30))
        .await?;
    app.job_with_steps(&id).await
}

/// Two tool calls in one turn run at the same time; their results reach the model; the trace
/// and the cost add up, and the webhook carries the same steps.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multi_turn_run_calls_tools_in_parallel_and_its_trace_adds_up() -> anyhow::Result<()> {
    let helper = AgentSpec {
        price: Some((2.0, 8.0)),
        ..agent(&["slow", "lookup"])
    };
    let app = app_with(
        helper,
        vec![
            Turn::ToolCalls(vec![
                call("slow", json!({"ms": 400})),
                call("slow", json!({"ms": 400})),
            ]),
            Turn::ToolCalls(vec![call("lookup", json!({"id": "7"}))]),
            Turn::EchoToolResults,
        ],
    )
    .await?;
    let record = run(&app, json!({})).await?;
    assert_eq!(record["status"], "succeeded", "{record:#}");
    assert_eq!(
        step_kinds(&record),
        ["model", "tool:ok", "tool:ok", "model", "tool:ok", "model"]
    );
    assert_eq!(
        app.tools.in_flight_peak("/slow"),
        2,
        "the two calls overlapped"
    );
    assert_eq!(app.tools.requests("/slow"), 2);
    let output = record["output"].as_str().unwrap_or_default();
    assert!(
        output.contains("value-7"),
        "tool results reach the model: {output}"
    );
    assert_eq!(record["turns"], 3);
    assert_eq!(record["tool_calls"], 3);

    // The trace adds up: tokens and dollars of the steps are the run's.
    let steps = record["steps"].as_array().expect("steps");
    let models: Vec<&Value> = steps.iter().filter(|s| s["kind"] == "model").collect();
    let sum = |f: &dyn Fn(&Value) -> f64| models.iter().map(|s| f(s)).sum::<f64>();
    let prompt = sum(&|s| s["usage"]["prompt_tokens"].as_f64().unwrap_or(0.0));
    let completion = sum(&|s| s["usage"]["completion_tokens"].as_f64().unwrap_or(0.0));
    assert_eq!(record["usage"]["prompt_tokens"].as_f64(), Some(prompt));
    assert_eq!(
        record["usage"]["completion_tokens"].as_f64(),
        Some(completion)
    );
    let expected_cost = (prompt * 2.0 + completion * 8.0) / 1e6;
    let cost = record["cost_usd"].as_f64().expect("cost");
    assert!(
        (cost - expected_cost).abs() < 1e-12,
        "{cost} vs {expected_cost}"
    );
    let step_costs = sum(&|s| s["cost_usd"].as_f64().unwrap_or(0.0));
    assert!((cost - step_costs).abs() < 1e-12);
    assert!(cost > 0.0);
    for (i, step) in steps.iter().enumerate() {
        assert_eq!(step["seq"], i, "steps are numbered in order");
        assert!(step["started_at"].is_string() && step["finished_at"].is_string());
    }

    app.wait_webhooks(1, Duration::from_secs(20)).await?;
    let delivery = app.receiver.deliveries().remove(0);
    assert!(delivery.verified);
    let event = delivery.event.expect("a JSON event");
    assert_eq!(event["data"]["steps"], record["steps"]);
    assert_eq!(event["data"]["cost_usd"], record["cost_usd"]);
    Ok(())
}

/// A call with invalid arguments is not executed: it goes back to the model as a tool error,
/// and the model's corrected call runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_tool_call_is_refused_and_repaired_by_the_model() -> anyhow::Result<()> {
    // A number where the schema wants a string, until the model is told.
    let repair = || Turn::RepairOnError {
        first: call("lookup", json!({"id": 5})),
        repaired: call("lookup", json!({"id": "5"})),
    };
    let app = app_with(
        agent(&["lookup"]),
        vec![repair(), repair(), Turn::EchoToolResults],
    )
    .await?;
    let record = run(&app, json!({})).await?;
    assert_eq!(record["status"], "succeeded", "{record:#}");
    assert_eq!(
        step_kinds(&record),
        ["model", "tool:invalid", "model", "tool:ok", "model"]
    );
    let refused = &record["steps"][1]["content"];
    assert!(
        refused.as_str().unwrap_or_default().contains("/id"),
        "the refusal names the bad argument: {refused}"
    );
    assert_eq!(
        app.tools.requests("/lookup"),
        1,
        "the invalid call never ran"
    );
    assert_eq!(record["tool_calls"], 2, "invalid calls count");
    Ok(())
}

/// Each limit ends a runaway run with its own category, keeping the partial trace; a job can
/// lower the agent's limits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_limit_ends_a_runaway_run_with_its_category() -> anyhow::Result<()> {
    let helper = AgentSpec {
        limits: Some("{ max_turns: 3, max_tool_calls: 20 }".into()),
        price: Some((1000.0, 1000.0)),
        ..agent(&["lookup", "slow"])
    };
    let app = app_with(
        helper,
        vec![Turn::ToolCalls(vec![call("lookup", json!({"id": "x"}))])],
    )
    .await?;
    let cases = [
        (json!({}), "max_turns", 3),
        (
            json!({"limits": {"max_tool_calls": 1}}),
            "max_tool_calls",
            2,
        ),
        (
            json!({"limits": {"max_total_tokens": 30}}),
            "budget_exceeded",
            2,
        ),
        (
            json!({"limits": {"max_cost_usd": 0.001}}),
            "budget_exceeded",
            1,
        ),
    ];
    for (extra, category, models) in cases {
        let record = run(&app, extra.clone()).await?;
        assert_eq!(record["status"], "failed", "{extra}: {record:#}");
        assert_eq!(record["error"]["category"], category, "{extra}: {record:#}");
        let made = step_kinds(&record).iter().filter(|k| *k == "model").count();
        assert_eq!(
            made,
            models,
            "{extra}: partial trace kept: {:?}",
            step_kinds(&record)
        );
        assert_eq!(record["attempts"], 1, "a limit is not retried");
    }
    Ok(())
}

/// The job's deadline bounds tool calls too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_past_its_deadline_times_out_even_inside_a_tool() -> anyhow::Result<()> {
    let app = app_with(
        agent(&["slow"]),
        vec![Turn::ToolCalls(vec![call("slow", json!({"ms": 4000}))])],
    )
    .await?;
    let started = std::time::Instant::now();
    let record = run(&app, json!({"timeout_secs": 1})).await?;
    assert_eq!(record["status"], "failed", "{record:#}");
    assert_eq!(record["error"]["category"], "timeout");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "did not wait for the tool"
    );
    Ok(())
}

/// A final answer that fails the output schema is sent back once, and the repaired answer is
/// the job's JSON output; one that fails twice ends as `invalid_output`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_output_that_fails_its_schema_is_repaired_once() -> anyhow::Result<()> {
    let helper = AgentSpec {
        output_schema: Some(
            "{ type: object, properties: { answer: { type: integer } }, required: [answer] }"
                .into(),
        ),
        ..agent(&[])
    };
    let app = app_with(
        helper,
        vec![
            Turn::Final("The answer is 42.".into()),
            Turn::Final("```json\n{\"answer\": 42}\n```".into()),
        ],
    )
    .await?;
    let record = run(&app, json!({})).await?;
    assert_eq!(record["status"], "succeeded", "{record:#}");
    assert_eq!(record["output"], json!({"answer": 42}));
    assert_eq!(step_kinds(&record), ["model", "model"]);
    assert!(
        record["steps"][1]["feedback"].is_string(),
        "the repair request is in the log"
    );

    let helper = AgentSpec {
        output_schema: Some("{ type: object, required: [answer] }".into()),
        ..agent(&[])
    };
    let app = app_with(helper, vec![Turn::Final("no JSON here".into())]).await?;
    let record = run(&app, json!({})).await?;
    assert_eq!(record["status"], "failed");
    assert_eq!(record["error"]["category"], "invalid_output");
    assert_eq!(step_kinds(&record), ["model", "model"]);
    Ok(())
}

/// Tool responses are cut to the tool's `max_response_bytes`, with a marker, before they
/// enter the context.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn big_tool_responses_are_truncated_before_the_model_sees_them() -> anyhow::Result<()> {
    let app = app_with(
        agent(&["big"]),
        vec![
            Turn::ToolCalls(vec![call("big", json!({"bytes": 50000}))]),
            Turn::Final("done".into()),
        ],
    )
    .await?;
    let record = run(&app, json!({})).await?;
    assert_eq!(record["status"], "succeeded", "{record:#}");
    let content = record["steps"][1]["content"].as_str().unwrap_or_default();
    assert!(
        content.len() < 1200,
        "cut to about 1000 bytes: {}",
        content.len()
    );
    assert!(content.contains("truncated"), "{content}");
    Ok(())
}

/// With `cache: { ttl_secs: 60 }`, a second job asking exactly the same is answered from the
/// cache: the stub sees one call, the step says `cached: true` at zero cost, and a different
/// input (or an agent without a cache) still calls the provider.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_calls_are_served_from_the_response_cache() -> anyhow::Result<()> {
    let mut cached = AgentSpec::new("cached");
    cached.cache_ttl_secs = Some(60);
    cached.price = Some((1.0, 2.0));
    let plain = AgentSpec::new("plain");
    let (cached_model, plain_model) = (cached.model(), plain.model());
    let app = TestApp::spawn(AppOptions {
        agents: vec![cached, plain],
        workers: 1,
        ..AppOptions::default()
    })
    .await?;
    let calls = |model: &str| app.llm.calls().iter().filter(|c| c.model == model).count();
    let mut records = Vec::new();
    for input in ["same question", "same question", "another question"] {
        let id = app.submit_for(&app.acme, "cached", input).await?;
        app.wait_terminal(std::slice::from_ref(&id), Duration::from_secs(20))
            .await?;
        records.push(app.job_with_steps(&id).await?);
    }
    assert!(records.iter().all(|r| r["status"] == "succeeded"));
    assert_eq!(
        calls(&cached_model),
        2,
        "the repeat was not sent to the provider"
    );
    let (first, repeat) = (&records[0], &records[1]);
    assert_eq!(first["steps"][0]["cached"], false);
    assert!(first["cost_usd"].as_f64().unwrap_or_default() > 0.0);
    assert_eq!(repeat["steps"][0]["cached"], true);
    assert_eq!(repeat["cost_usd"].as_f64(), Some(0.0));
    assert_eq!(repeat["output"], first["output"]);
    assert_eq!(records[2]["steps"][0]["cached"], false);
    // Never across tenants.
    let other = app
        .submit_for(&app.globex, "cached", "same question")
        .await?;
    app.wait_terminal(std::slice::from_ref(&other), Duration::from_secs(20))
        .await?;
    assert_eq!(
        app.job_with_steps(&other).await?["steps"][0]["cached"],
        false
    );
    assert_eq!(calls(&cached_model), 3);

    for _ in 0..2 {
        let id = app.submit_for(&app.acme, "plain", "same question").await?;
        app.wait_terminal(std::slice::from_ref(&id), Duration::from_secs(20))
            .await?;
    }
    assert_eq!(calls(&plain_model), 2, "no cache unless configured");
    let metrics = app.worker_metrics(0).expect("worker").render();
    assert!(
        metrics.contains(r#"agentfleet_llm_cache_total{agent="cached",result="hit"} 1"#),
        "{metrics}"
    );
    Ok(())
}
