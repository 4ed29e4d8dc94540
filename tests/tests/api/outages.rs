//! Outages of RabbitMQ or Redis, simulated by cutting a proxy in front of the real service
//! (other tests keep using the real one undisturbed).

use std::time::{Duration, Instant};

use serde_json::json;

use agentfleet_tests::proxy::Proxy;
use agentfleet_tests::{wait_until, AppOptions, TestApp};

async fn proxy_for(url_port: u16) -> anyhow::Result<Proxy> {
    Proxy::start(([127, 0, 0, 1], url_port).into()).await
}

/// `n` submissions during an outage: each refused with 503 and `Retry-After: 1`, within a second.
async fn assert_fast_503s(app: &TestApp, n: usize) {
    for _ in 0..n {
        let started = Instant::now();
        let response = app
            .submit_as(&app.acme, &json!({"agent": "summarize", "input": "x"}))
            .await;
        let took = started.elapsed();
        assert!(took < Duration::from_secs(1), "took {took:?}");
        assert_eq!(response.status(), 503);
        assert_eq!(response.headers()["retry-after"], "1");
    }
}

/// Polls until submissions are accepted again, with no restart of anything.
async fn wait_recovered(app: &TestApp) -> anyhow::Result<()> {
    wait_until(
        Duration::from_secs(15),
        "submissions to recover",
        || async {
            let response = app
                .submit_as(&app.acme, &json!({"agent": "summarize", "input": "x"}))
                .await;
            (response.status() == 202).then_some(())
        },
    )
    .await
}

/// While Redis is unreachable the dispatcher answers 503 with Retry-After within a second,
/// enqueues nothing, reports not-ready, and recovers by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_gives_fast_503s_and_recovers() -> anyhow::Result<()> {
    let proxy = proxy_for(6379).await?;
    let app = TestApp::spawn(AppOptions {
        workers: 0,
        redis_url: format!("redis://{}/0", proxy.addr()),
        ..AppOptions::default()
    })
    .await?;
    assert_eq!(
        app.submit_as(&app.acme, &json!({"agent": "summarize", "input": "x"}))
            .await
            .status(),
        202
    );
    proxy.cut();
    assert_fast_503s(&app, 3).await;
    let ready = app.http.get(app.url("/readyz")).send().await?;
    assert_eq!(ready.status(), 503);
    assert_eq!(ready.json::<serde_json::Value>().await?["redis"], "down");
    assert_eq!(
        app.agent_queue_depth("summarize").await?,
        1,
        "nothing enqueued during the outage"
    );

    proxy.restore();
    wait_recovered(&app).await?;
    Ok(())
}

/// The same for the broker: fast 503s, no record left behind, recovery without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_outage_gives_fast_503s_leaves_nothing_and_recovers() -> anyhow::Result<()> {
    let proxy = proxy_for(5672).await?;
    let app = TestApp::spawn(AppOptions {
        workers: 0,
        amqp_url: format!("amqp://guest:guest@{}/%2f", proxy.addr()),
        ..AppOptions::default()
    })
    .await?;
    proxy.cut();
    // The dispatcher learns of the cut when its connection's socket closes. A publish that
    // races ahead of that waits out `publish_timeout` instead (the bound on a publish in
    // flight at the moment of an outage), so the fast answers are asserted once it knows.
    app.wait_not_ready(Duration::from_secs(5)).await?;
    assert_fast_503s(&app, 5).await;
    assert!(
        app.job_keys().await?.is_empty(),
        "no record of a refused job stays behind"
    );

    proxy.restore();
    wait_recovered(&app).await?;
    Ok(())
}

/// Workers reconnect after the broker comes back and carry on with the jobs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_reconnect_after_a_broker_outage() -> anyhow::Result<()> {
    let worker_proxy = proxy_for(5672).await?;
    let mut app = TestApp::spawn(AppOptions {
        workers: 0,
        ..AppOptions::default()
    })
    .await?;
    let mut config = app.config.clone();
    config.amqp.url = Some(format!("amqp://guest:guest@{}/%2f", worker_proxy.addr()).into());
    app.start_worker_with(config).await?;
    let first = app.submit_job("summarize", "before").await?;
    app.wait_terminal(&[first], Duration::from_secs(20)).await?;

    worker_proxy.cut();
    let during = app.submit_job("summarize", "during").await?;
    worker_proxy.restore();
    let record = app
        .wait_terminal(&[during], Duration::from_secs(30))
        .await?
        .remove(0);
    assert_eq!(record["status"], "succeeded");
    app.wait_webhooks(2, Duration::from_secs(20)).await?;
    Ok(())
}
