use std::time::Duration;

use agentfleet_common::config::HttpVersion;
use agentfleet_stub::llm::Behavior;
use agentfleet_tests::{wait_until, AgentSpec, AppOptions, TestApp};

/// How a concurrency test's worker reaches the stub LLM.
struct Transport {
    http_version: HttpVersion,
    /// https, with the test CA the worker trusts through `worker.extra_ca_file`.
    tls: bool,
    /// Over https: the stub offers HTTP/2 in ALPN, not HTTP/1.1 alone.
    offers_http2: bool,
    /// Concurrent HTTP/2 streams the stub allows per connection, and the agent's
    /// `http2_streams_per_connection`.
    streams: u32,
    concurrency: u16,
    /// The HTTP version every call must arrive in.
    expected: http::Version,
}

/// Plain http, HTTP/1.1, 100 streams per connection, a concurrency of 4: each test names
/// what it changes.
const PLAIN: Transport = Transport {
    http_version: HttpVersion::Auto,
    tls: false,
    offers_http2: true,
    streams: 100,
    concurrency: 4,
    expected: http::Version::HTTP_11,
};

/// With one worker, the stub never sees more calls of the agent at once than its concurrency
/// — and does see that many, so the concurrency is what bounds it, not the connections
/// (HTTP/2 calls beyond a connection's streams ride more connections).
async fn calls_in_flight_reach_the_concurrency(transport: Transport) -> anyhow::Result<()> {
    let mut agent = AgentSpec::new("narrow");
    agent.concurrency = transport.concurrency;
    agent.http_version = transport.http_version;
    agent.http2_streams_per_connection = Some(transport.streams);
    let model = agent.model();
    let app = TestApp::spawn(AppOptions {
        agents: vec![agent],
        workers: 1,
        behavior: Behavior {
            latency: Duration::from_millis(300),
            ..Behavior::default()
        },
        provider_http2_streams: transport.streams,
        provider_tls: transport.tls,
        provider_tls_offers_http2: transport.offers_http2,
        ..AppOptions::default()
    })
    .await?;
    let jobs = 3 * usize::from(transport.concurrency);
    let mut ids = Vec::new();
    for i in 0..jobs {
        ids.push(app.submit_job("narrow", &format!("job {i}")).await?);
    }
    app.wait_succeeded(&ids, Duration::from_secs(60)).await?;
    let peak = app.llm.peak_in_flight(&model);
    assert_eq!(peak, u64::from(transport.concurrency));
    let calls = app.llm.calls();
    assert_eq!(calls.len(), jobs);
    let expected = transport.expected;
    assert!(
        calls.iter().all(|c| c.version == expected),
        "every call over {expected:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agents_concurrency_is_never_exceeded_over_http1() -> anyhow::Result<()> {
    calls_in_flight_reach_the_concurrency(PLAIN).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agents_concurrency_is_never_exceeded_over_http2() -> anyhow::Result<()> {
    calls_in_flight_reach_the_concurrency(Transport {
        http_version: HttpVersion::Http2,
        expected: http::Version::HTTP_2,
        ..PLAIN
    })
    .await
}

/// The provider allows 4 concurrent HTTP/2 streams per connection and the agent 12 calls in
/// flight: with 4 streams per connection configured, the replica spreads its calls over 3
/// connections and the stub sees all 12 at once — on one connection it would see 4.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_calls_beyond_a_connections_streams_take_more_connections() -> anyhow::Result<()> {
    calls_in_flight_reach_the_concurrency(Transport {
        http_version: HttpVersion::Http2,
        streams: 4,
        concurrency: 12,
        expected: http::Version::HTTP_2,
        ..PLAIN
    })
    .await
}

/// A provider over https, trusted through `worker.extra_ca_file`, offering HTTP/2 by ALPN
/// and 4 streams per connection: `auto` speaks HTTP/2 to it and spreads an agent's 12 calls
/// over 3 connections, as to a hosted provider.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_over_tls_speaks_http2_on_lanes() -> anyhow::Result<()> {
    calls_in_flight_reach_the_concurrency(Transport {
        tls: true,
        streams: 4,
        concurrency: 12,
        expected: http::Version::HTTP_2,
        ..PLAIN
    })
    .await
}

/// `auto` over https to a server that offers only HTTP/1.1 in ALPN: the lanes' own HTTP/2
/// connections step aside and each lane's reqwest client (made then) speaks HTTP/1.1, still
/// reaching the agent's concurrency.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_over_tls_to_a_server_without_http2_speaks_http1() -> anyhow::Result<()> {
    calls_in_flight_reach_the_concurrency(Transport {
        tls: true,
        offers_http2: false,
        streams: 4,
        concurrency: 12,
        ..PLAIN
    })
    .await
}

/// `http1` over https takes the shared HTTP/1.1 client, which trusts the extra CA too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_over_tls_trusts_the_extra_ca() -> anyhow::Result<()> {
    calls_in_flight_reach_the_concurrency(Transport {
        http_version: HttpVersion::Http1,
        tls: true,
        ..PLAIN
    })
    .await
}

/// Call times at the stub never run ahead of `interval` per call after a burst of `burst`.
fn assert_paced(times: &mut [std::time::Instant], interval: Duration, burst: usize) {
    times.sort();
    let n = times.len();
    let slack = Duration::from_millis(60);
    for (i, t) in times.iter().enumerate().skip(burst) {
        let earliest = interval * u32::try_from(i + 1 - burst).unwrap_or(u32::MAX);
        let elapsed = t.duration_since(times[0]);
        assert!(
            elapsed + slack >= earliest,
            "call {i} came {elapsed:?} after the first; the limit allows it no sooner than {earliest:?}"
        );
    }
    // And the whole run took as long as the limit demands.
    let span = times[n - 1].duration_since(times[0]);
    let least = interval * u32::try_from(n - burst).unwrap_or(u32::MAX);
    assert!(span + slack >= least, "{span:?} < {least:?}");
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
    app.wait_succeeded(&ids, Duration::from_secs(60)).await?;
    let mut times: Vec<_> = app.llm.calls().iter().map(|c| c.at).collect();
    assert_eq!(times.len(), n);
    assert_paced(&mut times, Duration::from_millis(500), 2);
    Ok(())
}

/// Two agents in one provider pool of 120 requests/min share it: together, across two
/// workers, their calls keep to the pool's schedule (each alone would be unlimited).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_in_a_pool_share_its_limit() -> anyhow::Result<()> {
    let pooled = |name: &str| AgentSpec {
        pool: Some("shared-key".into()),
        ..AgentSpec::new(name)
    };
    let app = TestApp::spawn(AppOptions {
        agents: vec![pooled("first"), pooled("second")],
        pools: vec![("shared-key".into(), 120)],
        workers: 2,
        ..AppOptions::default()
    })
    .await?;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(app.submit_job("first", &format!("job {i}")).await?);
        ids.push(app.submit_job("second", &format!("job {i}")).await?);
    }
    app.wait_succeeded(&ids, Duration::from_secs(60)).await?;
    let calls = app.llm.calls();
    for agent in ["first", "second"] {
        let model = format!("model-{agent}");
        assert_eq!(calls.iter().filter(|c| c.model == model).count(), 5);
    }
    let mut times: Vec<_> = calls.iter().map(|c| c.at).collect();
    assert_paced(&mut times, Duration::from_millis(500), 2);
    Ok(())
}

/// Three workers run 60 jobs of an agent at concurrency 2 while the stub serves `fault` once:
/// every job succeeds, and no call of any worker reaches the stub inside the 2 s the fault
/// asked the fleet to hold.
async fn one_answer_pauses_the_whole_fleet(fault: agentfleet_tests::Fault) -> anyhow::Result<()> {
    let mut busy = AgentSpec::new("busy");
    busy.concurrency = 2;
    let app = TestApp::spawn(AppOptions {
        agents: vec![busy],
        workers: 3,
        // Without the pause, 60 jobs at 6 calls per 50 ms keep calling for about 0.5 s.
        behavior: Behavior {
            latency: Duration::from_millis(50),
            ..Behavior::default()
        },
        ..AppOptions::default()
    })
    .await?;
    app.llm.script_faults([fault]);
    let mut ids = Vec::new();
    for i in 0..60 {
        ids.push(app.submit_job("busy", &format!("job {i}")).await?);
    }
    app.wait_succeeded(&ids, Duration::from_secs(60)).await?;
    assert_fleet_paused(&app, Duration::from_secs(2));
    Ok(())
}

/// A 429 with `Retry-After: 2` seen by one worker holds the calls of every worker for those
/// 2 s: the stub sees none inside the window, then the jobs finish.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_with_retry_after_pauses_the_whole_fleet() -> anyhow::Result<()> {
    one_answer_pauses_the_whole_fleet(agentfleet_tests::Fault::Status {
        status: 429,
        retry_after: Some(2),
    })
    .await
}

/// No call reached the stub inside `pause` after the answer that asked for it (the first
/// scripted one), bar those already admitted when it came; and calls resumed after it.
fn assert_fleet_paused(app: &TestApp, pause: Duration) {
    let calls = app.llm.calls();
    let asked_at = app
        .llm
        .refused_at()
        .first()
        .copied()
        .expect("the scripted answer was served");
    // Calls the other workers had admitted before the pause was written may still arrive
    // just after it; none may start later inside the window.
    let race = Duration::from_millis(150);
    let window = pause - Duration::from_millis(100);
    let inside: Vec<Duration> = calls
        .iter()
        .filter(|c| c.at > asked_at + race)
        .map(|c| c.at.duration_since(asked_at))
        .filter(|after| *after < window)
        .collect();
    assert!(
        inside.is_empty(),
        "calls {inside:?} came inside the {pause:?} the provider asked for"
    );
    assert!(
        calls.iter().any(|c| c.at > asked_at + window),
        "calls resumed"
    );
}

/// A run whose rate-limit turn is further off than `worker.max_limit_hold_ms` does not wait
/// holding its slot and lease: it reserves that turn, goes back through the delay queues, its
/// record says why and until when, and it calls when its turn comes — turns one apart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_rate_limit_wait_holds_nothing_and_says_why() -> anyhow::Result<()> {
    let mut paced = AgentSpec::new("paced");
    paced.requests_per_minute = Some(12); // one call per 5 s, burst 1
    paced.timeout_secs = 30;
    let app = TestApp::spawn(AppOptions {
        agents: vec![paced],
        workers: 1,
        max_limit_hold_ms: 1000,
        ..AppOptions::default()
    })
    .await?;
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(app.submit_job("paced", &format!("job {i}")).await?);
    }
    let metrics = app.worker_metrics(0).expect("worker 0");
    let in_flight = || metrics.jobs_in_flight.with_label_values(&["paced"]).get();
    // Two jobs wait for their turns, and no run is in progress on the worker meanwhile.
    let waiting = agentfleet_tests::wait_until(
        Duration::from_secs(10),
        "two jobs waiting outside the worker",
        || async {
            let mut waiting = Vec::new();
            for id in &ids {
                let record = app.job(id).await.ok()?;
                if record["status"] == "queued" && record["waiting"]["reason"] == "rate_limited" {
                    waiting.push(record);
                }
            }
            (waiting.len() == 2 && in_flight() == 0).then_some(waiting)
        },
    )
    .await?;
    for record in &waiting {
        assert_eq!(
            record["waiting"]["reserved"], true,
            "its turn is held for it"
        );
        assert!(
            record["started_at"].is_null(),
            "only queued: its deadline has not started"
        );
        let until = record["waiting"]["until"].as_str().unwrap_or_default();
        let until = chrono::DateTime::parse_from_rfc3339(until)?;
        let ahead = until.signed_duration_since(chrono::Utc::now());
        assert!(
            ahead > chrono::Duration::zero() && ahead < chrono::Duration::seconds(11),
            "until {until} is {ahead} away"
        );
    }
    let records = app.wait_terminal(&ids, Duration::from_secs(30)).await?;
    assert!(
        records
            .iter()
            .all(|r| r["status"] == "succeeded" && r.get("waiting").is_none()),
        "{records:#?}"
    );
    let mut times: Vec<_> = app.llm.calls().iter().map(|c| c.at).collect();
    assert_eq!(times.len(), 3);
    assert_paced(&mut times, Duration::from_secs(5), 1);
    Ok(())
}

/// What autoscaling sees: with 20 jobs queued for an agent limited to 6 requests/min, the
/// admissible backlog is 6 (a minute of turns), not 20; a provider pause makes it 0; and a
/// tenant holding every place of its running quota is left out of another agent's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admissible_backlog_leaves_out_what_limits_hold_back() -> anyhow::Result<()> {
    let mut limited = AgentSpec::new("limited");
    limited.requests_per_minute = Some(6);
    let open = AgentSpec::new("open");
    let app = TestApp::spawn(AppOptions {
        agents: vec![limited, open],
        workers: 0,
        tenant_settings: vec![("acme", "quotas: { max_running_jobs: 1 }".into())],
        ..AppOptions::default()
    })
    .await?;
    let gauge = |agent: &str, value: u64| {
        format!("agentfleet_admissible_backlog{{agent=\"{agent}\"}} {value}")
    };
    let shows = |line: String| {
        let metrics = app.dispatcher_metrics.clone();
        async move {
            wait_until(Duration::from_secs(10), &line, || async {
                metrics.render().contains(&line).then_some(())
            })
            .await
        }
    };
    for i in 0..20 {
        app.submit_for(&app.acme, "limited", &format!("{i}"))
            .await?;
    }
    shows(gauge("limited", 6)).await?;
    assert_eq!(app.agent_queue_depth("limited").await?, 20);

    let names = app.names();
    let mut redis = app.redis().await?;
    let _: () = redis::cmd("SET")
        .arg(names.pause_key(agentfleet_common::naming::LimitScope::Agent("limited")))
        .arg(1)
        .arg("PX")
        .arg(30_000)
        .query_async(&mut redis)
        .await?;
    shows(gauge("limited", 0)).await?;

    for i in 0..3 {
        app.submit_for(&app.acme, "open", &format!("a{i}")).await?;
        app.submit_for(&app.globex, "open", &format!("g{i}"))
            .await?;
    }
    shows(gauge("open", 6)).await?;
    // Acme's one place is taken (as a run elsewhere would hold it): its jobs wait.
    let held_until = chrono::Utc::now().timestamp_millis() + 60_000;
    let _: () = redis::cmd("ZADD")
        .arg(names.running_key("acme"))
        .arg(held_until)
        .arg("a-running-job")
        .query_async(&mut redis)
        .await?;
    shows(gauge("open", 3)).await?;
    Ok(())
}

/// A successful answer whose `x-ratelimit-remaining-requests` is 0 (reset in 2 s) pauses the
/// whole fleet like a 429 would: the provider counts every caller of the key, so it knows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_that_reports_its_limit_used_up_pauses_the_fleet() -> anyhow::Result<()> {
    one_answer_pauses_the_whole_fleet(agentfleet_tests::Fault::WithHeaders(vec![
        ("x-ratelimit-remaining-requests".into(), "0".into()),
        ("x-ratelimit-reset-requests".into(), "2s".into()),
        ("x-ratelimit-remaining-tokens".into(), "90000".into()),
        ("x-ratelimit-reset-tokens".into(), "6m0s".into()),
    ]))
    .await
}

/// An agent allowed 1,200 requests/min (a burst of 20) is told by the provider, in the first
/// answer, that one request is left in the window: its bucket is tightened to that, so the
/// next 20 calls are paced one per 50 ms instead of going out at once. One worker calling one
/// at a time, with all 21 jobs queued first, so the calls follow the answer at once (the
/// tightening lasts about a second: the bucket's burst).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_headers_with_less_room_tighten_the_shared_bucket() -> anyhow::Result<()> {
    let mut fast = AgentSpec::new("fast");
    fast.requests_per_minute = Some(1_200);
    fast.concurrency = 1;
    let mut app = TestApp::spawn(AppOptions {
        agents: vec![fast],
        workers: 0,
        ..AppOptions::default()
    })
    .await?;
    app.llm
        .script_faults([agentfleet_tests::Fault::WithHeaders(vec![
            ("x-ratelimit-remaining-requests".into(), "1".into()),
            ("x-ratelimit-reset-requests".into(), "30s".into()),
        ])]);
    let mut ids = Vec::new();
    for i in 0..21 {
        ids.push(app.submit_job("fast", &format!("job {i}")).await?);
    }
    app.start_worker().await?;
    app.wait_terminal(&ids, Duration::from_secs(30)).await?;
    let mut times: Vec<_> = app.llm.calls().iter().skip(1).map(|c| c.at).collect();
    assert_eq!(times.len(), 20);
    assert_paced(&mut times, Duration::from_millis(50), 2);
    Ok(())
}
