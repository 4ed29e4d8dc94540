use agentfleet_tests::{AppOptions, TestApp};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_and_metrics_are_served() -> anyhow::Result<()> {
    let app = TestApp::spawn(AppOptions {
        workers: 1,
        ..AppOptions::default()
    })
    .await?;
    let worker = app.worker_metrics_addr(0).expect("worker");
    for base in [app.dispatcher_addr, worker] {
        let health = app
            .http
            .get(format!("http://{base}/healthz"))
            .send()
            .await?;
        assert_eq!(health.status(), 200);
        let ready = app.http.get(format!("http://{base}/readyz")).send().await?;
        assert_eq!(ready.status(), 200);
        let body: serde_json::Value = ready.json().await?;
        assert_eq!(body, serde_json::json!({"rabbitmq": "up", "redis": "up"}));
    }
    app.submit_job("summarize", "x").await?;
    app.wait_webhooks(1, std::time::Duration::from_secs(20))
        .await?;
    let dispatcher = app.metrics_text(app.dispatcher_addr).await?;
    assert!(
        dispatcher.contains("agentfleet_jobs_submitted_total{agent=\"summarize\"} 1"),
        "{dispatcher}"
    );
    let text = agentfleet_tests::wait_until(
        std::time::Duration::from_secs(5),
        "worker metrics",
        || async {
            let text = app.metrics_text(worker).await.ok()?;
            text.contains("agentfleet_webhook_deliveries_total{status=\"delivered\"} 1")
                .then_some(text)
        },
    )
    .await?;
    for name in [
        "agentfleet_jobs_completed_total{agent=\"summarize\",status=\"succeeded\"} 1",
        "agentfleet_job_duration_seconds_bucket",
        "agentfleet_jobs_in_flight{agent=\"summarize\"} 0",
        "agentfleet_llm_tokens_total{agent=\"summarize\",kind=\"completion\"} 8",
        "agentfleet_rate_limit_wait_seconds_count{agent=\"summarize\"} 1",
    ] {
        assert!(text.contains(name), "missing {name} in\n{text}");
    }
    // Secrets never reach the metrics or the readiness output.
    assert!(!text.contains(&app.acme.webhook_secret) && !dispatcher.contains("guest:guest"));
    Ok(())
}
