//! Payload privacy, end to end. A job's input, the model's answer, the tool's arguments and
//! the tool's result carry an e-mail address, a card number, an API key and an employee id (a
//! custom pattern); a second job's provider rejects it with a 400 that quotes the prompt.
//! Every line the dispatcher and the worker log meanwhile is captured as the binaries print it
//! (the telemetry subscriber, JSON, at `trace`, `log` records included). By default none of
//! those values is in any line; with `log_payloads` the payload lines are there, masked; with
//! `mask_output` the stored results and the webhook are masked, and an agent may opt out.
//!
//! Capture (`agentfleet_tests::logs`): the test runs on a runtime of its own whose threads (workers and blocking pool)
//! have the capturing subscriber as their default, so lines of tests running in parallel on
//! other runtimes never mix in.

use std::time::Duration;

use serde_json::{json, Value};

use agentfleet_stub::script::{Scenario, ScriptedCall, Turn};
use agentfleet_tests::logs::captured;
use agentfleet_tests::{AgentSpec, AppOptions, Fault, TestApp};

const EMAIL: &str = "alice.smith@example.com";
/// Passes the Luhn check.
const CARD: &str = "4111 1111 1111 1111";
const KEY: &str = "sk-proj-4f9Qm2Zt8Lw1Xv7Rb3Nc";
/// Masked only by the custom pattern `employee_id`.
const EMPLOYEE: &str = "EMP-204816";
/// Fails the Luhn check: never masked.
const NOT_A_CARD: &str = "4111 1111 1111 1112";

/// What must never be in a log line (the card also without its spaces).
const PRIVATE: [&str; 5] = [EMAIL, CARD, "4111111111111111", KEY, EMPLOYEE];

const PRIVACY_ON: &str = r#"{ log_payloads: true, mask_output: true, patterns: [{ name: employee_id, regex: "EMP-[0-9]{6}" }] }"#;

fn payload() -> String {
    format!("ship to {EMAIL}, card {CARD} (not {NOT_A_CARD}), key {KEY}, for {EMPLOYEE}")
}

/// The values as masked: what the payload lines and masked results hold instead.
const MASKS: [&str; 4] = ["[email]", "[card_number]", "[api_key]", "[employee_id]"];

#[test]
fn payloads_stay_out_of_every_log_line_by_default() -> anyhow::Result<()> {
    let (run, lines) = captured(|| run_jobs(None))?;

    // Without mask_output the API shows the steps as they are.
    assert!(
        run.ordered_steps.to_string().contains(EMAIL),
        "{}",
        run.ordered_steps
    );

    // The values went all the way through: input, tool call, tool result, answer, error.
    let output = run.ordered["output"].to_string();
    for value in [EMAIL, CARD, KEY, EMPLOYEE] {
        assert!(output.contains(value), "{value} not in the output {output}");
    }
    let error = run.rejected["error"]["message"]
        .as_str()
        .unwrap_or_default();
    assert!(
        error.contains(EMAIL),
        "the provider's 400 quotes the prompt: {error}"
    );

    // Lines were captured, from the dispatcher and from the worker's every stage.
    for message in [
        "job accepted",
        "job finished",
        "job failed",
        "webhook attempt done",
    ] {
        assert!(
            lines
                .iter()
                .any(|l| l.contains(&format!("\"message\":\"{message}\""))),
            "no `{message}` line among {} captured",
            lines.len()
        );
    }
    assert_no_private_values(&lines);
    for payload_line in ["run input", "model answered", "tool called"] {
        assert!(
            !lines.iter().any(|l| l.contains(payload_line)),
            "`{payload_line}` logged with log_payloads off"
        );
    }
    Ok(())
}

#[test]
fn logged_payloads_and_masked_results_hold_only_masks() -> anyhow::Result<()> {
    let (run, lines) = captured(|| run_jobs(Some(PRIVACY_ON)))?;
    assert_no_private_values(&lines);

    // Each payload line is there, with every value masked and the non-card number kept.
    let line = |message: &str| -> String {
        let needle = format!("\"message\":\"{message}\"");
        lines
            .iter()
            .filter(|l| l.contains(&needle))
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    };
    for message in ["run input", "tool called"] {
        let found = line(message);
        for mask in MASKS {
            assert!(found.contains(mask), "`{message}` lacks {mask}: {found}");
        }
        assert!(found.contains(NOT_A_CARD), "`{message}`: {found}");
    }
    let answers = line("model answered");
    assert!(
        answers.contains("create_order") && answers.contains("results: "),
        "model answers: {answers}"
    );
    for mask in MASKS {
        assert!(
            answers.contains(mask),
            "`model answered` lacks {mask}: {answers}"
        );
    }
    let failed = line("job failed");
    assert!(
        failed.contains("provider answered HTTP 400") && failed.contains("[email]"),
        "the provider's words are a masked detail: {failed}"
    );

    // Results are stored masked: the output, the rejected job's error.
    let output = run.ordered["output"].to_string();
    assert_masked(&output, "the stored output");
    let error = run.rejected["error"].to_string();
    assert_masked(&error, "the stored error");

    // The webhook carries the masked record and masked steps.
    let event = run.webhook.to_string();
    assert_masked(&event, "the webhook event");
    assert!(
        run.webhook["data"]["steps"]
            .as_array()
            .is_some_and(|s| s.len() == 3),
        "the webhook has the steps: {event}"
    );

    // So does the API's view of the steps (the stored log itself stays as the run needs it).
    let steps = run.ordered_steps.to_string();
    assert_masked(&steps, "the steps read through the API");

    // An agent that opts out of mask_output gives its results back as they are.
    let raw = run.raw["output"].to_string();
    assert!(
        raw.contains(EMAIL) && raw.contains(KEY),
        "raw output: {raw}"
    );
    Ok(())
}

fn assert_no_private_values(lines: &[String]) {
    for line in lines {
        for value in PRIVATE {
            assert!(!line.contains(value), "{value} logged: {line}");
        }
    }
}

fn assert_masked(text: &str, what: &str) {
    for value in PRIVATE {
        assert!(!text.contains(value), "{value} in {what}: {text}");
    }
    for mask in ["[email]", "[card_number]", "[api_key]", "[employee_id]"] {
        assert!(text.contains(mask), "{mask} not in {what}: {text}");
    }
    assert!(
        text.contains(NOT_A_CARD),
        "{NOT_A_CARD} masked in {what}: {text}"
    );
}

/// The records (and the webhook event) of one privacy run.
struct Run {
    /// Tool call, then an answer echoing the tool's result; succeeded.
    ordered: Value,
    /// Its steps, as `GET /v1/jobs/{id}?include=steps` returns them.
    ordered_steps: Value,
    /// Rejected by the provider with a 400 quoting the prompt; failed.
    rejected: Value,
    /// The webhook event of `ordered`.
    webhook: Value,
    /// A plain answer echoing the input, from an agent with `mask_output: false`.
    raw: Value,
}

/// One app with `privacy` (defaults when `None`), its jobs run one after the other.
async fn run_jobs(privacy: Option<&str>) -> anyhow::Result<Run> {
    let helper = AgentSpec {
        tools: vec!["create_order"],
        ..AgentSpec::new("helper")
    };
    let model = helper.model();
    let plain = AgentSpec {
        retry_attempts: 1,
        ..AgentSpec::new("plain")
    };
    let raw = AgentSpec {
        mask_output: Some(false),
        ..AgentSpec::new("raw")
    };
    let app = TestApp::spawn(AppOptions {
        agents: vec![helper, plain, raw],
        workers: 1,
        privacy: privacy.map(str::to_owned),
        ..AppOptions::default()
    })
    .await?;
    app.llm.script_model(
        &model,
        Scenario::new(vec![
            Turn::ToolCalls(vec![ScriptedCall::new(
                "create_order",
                json!({ "item": payload() }),
            )]),
            Turn::EchoToolResults,
        ]),
    );
    let within = Duration::from_secs(30);

    let ordered_id = app.submit_job("helper", &payload()).await?;
    let ordered = app
        .wait_terminal(std::slice::from_ref(&ordered_id), within)
        .await?
        .remove(0);
    let ordered_steps = app.job_with_steps(&ordered_id).await?["steps"].clone();
    assert_eq!(ordered["status"], "succeeded", "{ordered}");
    app.wait_webhooks(1, within).await?;
    let webhook = app.receiver.deliveries()[0]
        .event
        .clone()
        .unwrap_or_default();

    app.llm
        .script_faults([Fault::QuotingPrompt { status: 400 }]);
    let rejected = app.submit_for(&app.acme, "plain", &payload()).await?;
    let rejected = app.wait_terminal(&[rejected], within).await?.remove(0);
    assert_eq!(rejected["status"], "failed", "{rejected}");
    assert_eq!(rejected["error"]["category"], "bad_request", "{rejected}");

    let raw = app.submit_for(&app.acme, "raw", &payload()).await?;
    let raw = app.wait_terminal(&[raw], within).await?.remove(0);
    assert_eq!(raw["status"], "succeeded", "{raw}");
    Ok(Run {
        ordered,
        ordered_steps,
        rejected,
        webhook,
        raw,
    })
}
