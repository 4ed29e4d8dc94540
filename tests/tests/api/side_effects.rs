//! Side effects by class, through worker processes SIGKILLed in the middle of a tool call and
//! counted at the tool server: a `read` is repeated, an `idempotent` call is repeated with the
//! same `Idempotency-Key` (one effect), a `write` is never repeated blindly — and completed
//! steps, model calls included, are never run or paid twice.

use std::time::Duration;

use serde_json::{json, Value};

use agentfleet_stub::script::{Scenario, ScriptedCall, Turn};
use agentfleet_tests::{step_kinds, AgentSpec, AppOptions, TestApp};

/// Worker processes serving the app (killed together: the run is on one of them).
const WORKERS: usize = 2;

struct Crash {
    app: TestApp,
    id: String,
}

/// Starts `WORKERS` worker processes, submits a job whose model follows `turns`, waits until
/// the tool server holds a call to `held`, SIGKILLs every worker, lets the held call complete
/// (its effect happens; its answer is lost with the worker), and starts fresh workers.
async fn crash_inside(held: &str, turns: Vec<Turn>) -> anyhow::Result<Crash> {
    let helper = AgentSpec {
        tools: vec!["lookup", "create_order", "pay"],
        ..AgentSpec::new("helper")
    };
    let model = helper.model();
    let mut app = TestApp::spawn(AppOptions {
        agents: vec![helper],
        workers: 0,
        ..AppOptions::default()
    })
    .await?;
    app.llm.script_model(&model, Scenario::new(turns));
    app.tools.hold(held);
    let mut pids = Vec::new();
    for _ in 0..WORKERS {
        pids.push(app.start_worker_process(crate::WORKER_BIN)?);
    }
    let body = json!({"agent": "helper", "input": "Do the task."});
    let response = app.submit_as(&app.acme, &body).await;
    anyhow::ensure!(response.status() == 202, "submit: {}", response.status());
    let id = response.json::<Value>().await?["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let before = app.tools.requests(held);
    tokio::time::timeout(
        Duration::from_secs(30),
        app.tools.wait_requests(held, before + 1),
    )
    .await
    .map_err(|_| anyhow::anyhow!("the held tool was never called"))?;
    for pid in pids {
        app.kill_worker_process(pid)?;
    }
    app.tools.release(held);
    for _ in 0..WORKERS {
        app.start_worker_process(crate::WORKER_BIN)?;
    }
    Ok(Crash { app, id })
}

impl Crash {
    async fn record(&self) -> anyhow::Result<Value> {
        self.app
            .wait_terminal(std::slice::from_ref(&self.id), Duration::from_secs(45))
            .await?;
        self.app.job_with_steps(&self.id).await
    }
}

fn then_answer(call: ScriptedCall) -> Vec<Turn> {
    vec![Turn::ToolCalls(vec![call]), Turn::EchoToolResults]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_tool_is_called_again_after_a_crash() -> anyhow::Result<()> {
    let crash = crash_inside(
        "/lookup",
        then_answer(ScriptedCall::new("lookup", json!({"id": "9"}))),
    )
    .await?;
    let record = crash.record().await?;
    assert_eq!(record["status"], "succeeded", "{record:#}");
    assert_eq!(step_kinds(&record), ["model", "tool:ok", "model"]);
    assert_eq!(crash.app.tools.requests("/lookup"), 2, "a read may repeat");
    assert_eq!(
        crash.app.llm.calls_for_job(&crash.id),
        2,
        "the first model call was recorded before the crash: not paid again"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotent_tool_repeats_with_the_same_key_and_one_effect() -> anyhow::Result<()> {
    let crash = crash_inside(
        "/orders",
        then_answer(ScriptedCall::new("create_order", json!({"item": "book"}))),
    )
    .await?;
    let record = crash.record().await?;
    assert_eq!(record["status"], "succeeded", "{record:#}");
    let tools = &crash.app.tools;
    assert_eq!(tools.requests("/orders"), 2, "called again after the crash");
    assert_eq!(tools.executions("/orders"), 1, "but one order was made");
    let keys = tools.idempotency_keys("/orders");
    assert_eq!(keys.len(), 2);
    assert_eq!(
        keys[0], keys[1],
        "the same Idempotency-Key on both attempts"
    );
    assert!(keys[0].starts_with(&uuid::Uuid::parse_str(&crash.id)?.simple().to_string()));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_that_may_have_happened_is_not_repeated() -> anyhow::Result<()> {
    let crash = crash_inside(
        "/payments",
        then_answer(ScriptedCall::new("pay", json!({"amount": 10}))),
    )
    .await?;
    let record = crash.record().await?;
    assert_eq!(record["status"], "failed", "{record:#}");
    assert_eq!(record["error"]["category"], "uncertain_side_effect");
    assert_eq!(
        step_kinds(&record),
        ["model", "tool_intent", "tool:uncertain"]
    );
    let tools = &crash.app.tools;
    assert_eq!(tools.requests("/payments"), 1, "never called blindly again");
    assert_eq!(
        tools.executions("/payments"),
        1,
        "the payment did happen once"
    );
    Ok(())
}

/// A write that completed and was recorded is not repeated by the resumed run, nor is any
/// completed model call: only the step that was in flight runs again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completed_steps_are_not_repeated_after_a_crash() -> anyhow::Result<()> {
    let crash = crash_inside(
        "/lookup",
        vec![
            Turn::ToolCalls(vec![ScriptedCall::new("pay", json!({"amount": 5}))]),
            Turn::ToolCalls(vec![ScriptedCall::new("lookup", json!({"id": "1"}))]),
            Turn::EchoToolResults,
        ],
    )
    .await?;
    let record = crash.record().await?;
    assert_eq!(record["status"], "succeeded", "{record:#}");
    assert_eq!(
        step_kinds(&record),
        [
            "model",
            "tool_intent",
            "tool:ok",
            "model",
            "tool:ok",
            "model"
        ]
    );
    let tools = &crash.app.tools;
    assert_eq!(
        tools.executions("/payments"),
        1,
        "the recorded write ran once"
    );
    assert_eq!(tools.requests("/lookup"), 2, "the read in flight ran again");
    assert_eq!(
        crash.app.llm.calls_for_job(&crash.id),
        3,
        "no model call paid twice"
    );
    Ok(())
}
