use std::time::Duration;

use agentfleet_common::config::HttpVersion;
use agentfleet_stub::llm::Behavior;
use agentfleet_tests::{AgentSpec, AppOptions, TestApp};

/// With one worker and concurrency 4, the stub never sees more than 4 calls of the agent at
/// once — and does see 4, so the limit is what bounds it — whichever way the worker speaks
/// HTTP to the provider (HTTP/2 puts every call on one connection).
async fn concurrency_is_never_exceeded(
    http_version: HttpVersion,
    expected: http::Version,
) -> anyhow::Result<()> {
    let mut narrow = AgentSpec::new("narrow");
    narrow.concurrency = 4;
    narrow.http_version = http_version;
    let model = narrow.model();
    let app = TestApp::spawn(AppOptions {
        agents: vec![narrow],
        workers: 1,
        behavior: Behavior {
            latency: Duration::from_millis(150),
            ..Behavior::default()
        },
        ..AppOptions::default()
    })
    .await?;
    let mut ids = Vec::new();
    for i in 0..24 {
        ids.push(app.submit_job("narrow", &format!("job {i}")).await?);
    }
    let records = app.wait_terminal(&ids, Duration::from_secs(60)).await?;
    assert!(records.iter().all(|r| r["status"] == "succeeded"));
    assert_eq!(app.llm.peak_in_flight(&model), 4);
    let calls = app.llm.calls();
    assert_eq!(calls.len(), 24);
    assert!(
        calls.iter().all(|c| c.version == expected),
        "every call over {expected:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agents_concurrency_is_never_exceeded_over_http1() -> anyhow::Result<()> {
    concurrency_is_never_exceeded(HttpVersion::Auto, http::Version::HTTP_11).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agents_concurrency_is_never_exceeded_over_http2() -> anyhow::Result<()> {
    concurrency_is_never_exceeded(HttpVersion::Http2, http::Version::HTTP_2).await
}

/// Two workers share one fleet-wide limit of 120 requests/min (2/s, burst 2): the calls the
/// stub sees never run ahead of that schedule.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agents_rate_limit_holds_across_the_fleet() -> anyhow::Result<()> {
    let mut limited = AgentSpec::new("limited");
    limited.requests_per_minute = Some(120);
    let app = TestApp::spawn(AppOptions {
        agents: vec![limited],
        workers: 2,
        ..AppOptions::default()
    })
    .await?;
    let n = 10;
    let mut ids = Vec::new();
    for i in 0..n {
        ids.push(app.submit_job("limited", &format!("job {i}")).await?);
    }
    let records = app.wait_terminal(&ids, Duration::from_secs(60)).await?;
    assert!(records.iter().all(|r| r["status"] == "succeeded"));

    let mut times: Vec<_> = app.llm.calls().iter().map(|c| c.at).collect();
    times.sort();
    assert_eq!(times.len(), n);
    let interval = Duration::from_millis(500);
    let burst = 2;
    let slack = Duration::from_millis(60);
    for (i, t) in times.iter().enumerate().skip(burst) {
        let earliest = interval * u32::try_from(i + 1 - burst)?;
        let elapsed = t.duration_since(times[0]);
        assert!(
            elapsed + slack >= earliest,
            "call {i} came {elapsed:?} after the first; the limit allows it no sooner than {earliest:?}"
        );
    }
    // And the whole run took as long as the limit demands.
    let span = times[n - 1].duration_since(times[0]);
    assert!(
        span + slack >= interval * u32::try_from(n - burst)?,
        "{span:?}"
    );
    Ok(())
}
