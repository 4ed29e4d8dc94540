use std::time::Duration;

use agentfleet_tests::{AppOptions, Fault, TestApp};

/// A retryable failure (500) is retried through the delay queue and succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transient_provider_error_is_retried() -> anyhow::Result<()> {
    let app = TestApp::spawn(AppOptions {
        workers: 1,
        ..AppOptions::default()
    })
    .await?;
    app.llm.script_faults([Fault::Status {
        status: 500,
        retry_after: None,
    }]);
    let id = app.submit_job("summarize", "flaky").await?;
    let records = app
        .wait_terminal(std::slice::from_ref(&id), Duration::from_secs(30))
        .await?;
    assert_eq!(records[0]["status"], "succeeded", "{}", records[0]);
    assert_eq!(records[0]["attempts"], 2);
    assert_eq!(app.llm.calls_per_job().get(&id), Some(&2));
    // The retry went through exactly one delay queue: no copy is parked in another.
    let names = agentfleet_common::naming::Names::new(&app.prefix, &app.prefix);
    for step in agentfleet_common::broker::DELAY_STEPS_MS {
        assert_eq!(
            app.queue_depth(&names.delay_queue(*step)).await?,
            0,
            "delay queue {step} ms"
        );
    }
    Ok(())
}

/// A permanent failure (400) is not retried: the job fails with its category and the
/// caller gets a `job.failed` webhook.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permanent_provider_error_fails_the_job() -> anyhow::Result<()> {
    let app = TestApp::spawn(AppOptions {
        workers: 1,
        ..AppOptions::default()
    })
    .await?;
    app.llm.script_faults([Fault::Status {
        status: 400,
        retry_after: None,
    }]);
    let id = app.submit_job("summarize", "bad").await?;
    let records = app
        .wait_terminal(std::slice::from_ref(&id), Duration::from_secs(30))
        .await?;
    assert_eq!(records[0]["status"], "failed");
    assert_eq!(records[0]["error"]["category"], "bad_request");
    assert_eq!(records[0]["attempts"], 1);
    app.wait_webhooks(1, Duration::from_secs(20)).await?;
    let event = app.receiver.deliveries()[0].event.clone().expect("event");
    assert_eq!(event["type"], "job.failed");
    Ok(())
}

/// A webhook receiver that fails first is retried with the same `webhook-id`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_webhooks_are_retried_with_a_stable_id() -> anyhow::Result<()> {
    let app = TestApp::spawn(AppOptions {
        workers: 1,
        ..AppOptions::default()
    })
    .await?;
    app.receiver.fail_next(2);
    let id = app.submit_job("summarize", "x").await?;
    app.wait_webhooks(1, Duration::from_secs(30)).await?;
    let record =
        agentfleet_tests::wait_until(Duration::from_secs(10), "delivery recorded", || async {
            let r = app.job(&id).await.ok()?;
            r["webhook"]["delivered_at"].is_string().then_some(r)
        })
        .await?;
    assert_eq!(
        record["webhook"]["attempts"],
        3,
        "{record} {:?}",
        app.receiver
            .deliveries()
            .iter()
            .map(|d| (d.at, d.verified))
            .collect::<Vec<_>>()
    );
    let delivery = &app.receiver.deliveries()[0];
    assert!(delivery.verified);
    assert!(delivery
        .webhook_id
        .contains(&uuid::Uuid::parse_str(&id)?.simple().to_string()));
    Ok(())
}
