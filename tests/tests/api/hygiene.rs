//! HTTP hygiene: request ids, load shedding and a timeout on the API, problems for axum's own
//! 404/405, no version banners, and replays answered before any shedding.

use std::time::{Duration, Instant};

use futures_util::future::join_all;
use serde_json::{json, Value};
use uuid::Uuid;

use agentfleet_common::config::Config;
use agentfleet_common::wire::{JobMessage, Versioned as _};
use agentfleet_tests::{read_raw_response, wait_until, AgentSpec, AppOptions, TestApp};

fn header<'a>(response: &'a reqwest::Response, name: &str) -> Option<&'a str> {
    response.headers().get(name).and_then(|v| v.to_str().ok())
}

/// The id the dispatcher made up: a UUID v7.
fn assert_generated(id: Option<&str>) {
    let id = id.expect("an x-request-id");
    let uuid = Uuid::parse_str(id).unwrap_or_else(|_| panic!("{id} is not a uuid"));
    assert_eq!(uuid.get_version_num(), 7, "{id}");
}

async fn post_with_request_id(app: &TestApp, id: &[u8]) -> reqwest::Response {
    app.http
        .post(app.url("/v1/jobs"))
        .bearer_auth(&app.acme.api_key)
        .header(
            "x-request-id",
            reqwest::header::HeaderValue::from_bytes(id).expect("header value"),
        )
        .json(&json!({"agent": "summarize", "input": "x"}))
        .send()
        .await
        .expect("dispatcher reachable")
}

/// A sane `X-Request-Id` comes back and is stored on the record and carried by the job's
/// message; without one, or with one too long or with a space, a UUID v7 is made up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_id_is_kept_or_made_up_and_reaches_the_job() -> anyhow::Result<()> {
    let app = TestApp::spawn(AppOptions {
        workers: 0,
        ..AppOptions::default()
    })
    .await?;

    let given = "hygiene-req_1.a:b";
    let response = post_with_request_id(&app, given.as_bytes()).await;
    assert_eq!(response.status(), 202);
    assert_eq!(header(&response, "x-request-id"), Some(given));
    let id = response.json::<Value>().await?["id"]
        .as_str()
        .expect("id")
        .to_owned();
    assert_eq!(app.job(&id).await?["request_id"], given);

    // The work token carries it to the worker (whose run span logs it).
    let conn =
        lapin::Connection::connect(&app.amqp_url, lapin::ConnectionProperties::default()).await?;
    let channel = conn.create_channel().await?;
    let queue = app.names().tenant_queue("summarize", &app.acme.id);
    let delivery = wait_until(Duration::from_secs(5), "the job message", || async {
        channel
            .basic_get(
                queue.as_str().into(),
                lapin::options::BasicGetOptions { no_ack: true },
            )
            .await
            .ok()
            .flatten()
    })
    .await?;
    let _ = conn.close(200, "done".into()).await;
    let message = JobMessage::decode(&delivery.data)?;
    assert_eq!(message.job_id.to_string(), id);
    assert_eq!(message.request_id.as_deref(), Some(given));

    let response = app
        .submit_as(&app.acme, &json!({"agent": "summarize", "input": "x"}))
        .await;
    assert_eq!(response.status(), 202);
    let made_up = header(&response, "x-request-id").map(str::to_owned);
    assert_generated(made_up.as_deref());
    let id = response.json::<Value>().await?["id"]
        .as_str()
        .expect("id")
        .to_owned();
    assert_eq!(
        app.job(&id).await?["request_id"].as_str(),
        made_up.as_deref()
    );

    let too_long = "a".repeat(129);
    for insane in [too_long.as_bytes(), b"two words".as_slice()] {
        let response = post_with_request_id(&app, insane).await;
        assert_eq!(response.status(), 202);
        assert_generated(header(&response, "x-request-id"));
    }
    Ok(())
}

/// Every answer carries a request id, errors and axum's own 404/405 (as problem+json) too,
/// and none names the server or its version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answer_has_a_request_id_and_no_banner() -> anyhow::Result<()> {
    let app = TestApp::spawn(AppOptions {
        workers: 0,
        ..AppOptions::default()
    })
    .await?;
    let not_found = app
        .http
        .get(app.url("/v1/nothing-here"))
        .header("x-request-id", "hygiene-404")
        .send()
        .await?;
    assert_eq!(not_found.status(), 404);
    assert_eq!(header(&not_found, "x-request-id"), Some("hygiene-404"));
    assert_eq!(
        header(&not_found, "content-type"),
        Some("application/problem+json")
    );
    let problem: Value = not_found.json().await?;
    assert_eq!(problem["type"], "urn:agentfleet:problem:not-found");
    assert_eq!(problem["status"], 404);

    let wrong_method = app.http.put(app.url("/v1/jobs")).send().await?;
    assert_eq!(wrong_method.status(), 405);
    assert_generated(header(&wrong_method, "x-request-id"));
    assert_eq!(header(&wrong_method, "allow"), Some("POST"));
    assert_eq!(
        header(&wrong_method, "content-type"),
        Some("application/problem+json")
    );
    let problem: Value = wrong_method.json().await?;
    assert_eq!(problem["type"], "urn:agentfleet:problem:method-not-allowed");

    let responses = vec![
        app.submit_as(&app.acme, &json!({"agent": "summarize", "input": "x"}))
            .await,
        app.http.get(app.url("/v1/agents")).send().await?, // 401
        app.http
            .post(app.url("/v1/jobs"))
            .bearer_auth(&app.acme.api_key)
            .body("{}")
            .send()
            .await?, // 415
        app.http.get(app.url("/healthz")).send().await?,
        app.http.get(app.url("/readyz")).send().await?,
        app.http.get(app.url("/metrics")).send().await?,
        app.http.post(app.url("/healthz")).send().await?, // 405
    ];
    let statuses: Vec<u16> = responses.iter().map(|r| r.status().as_u16()).collect();
    assert_eq!(statuses, [202, 401, 415, 200, 200, 200, 405]);
    for response in &responses {
        assert_generated(header(response, "x-request-id"));
        for banner in ["server", "x-powered-by", "via"] {
            assert!(
                response.headers().get(banner).is_none(),
                "{banner} on {}: {:?}",
                response.url(),
                response.headers()
            );
        }
    }
    Ok(())
}

/// A replay of an accepted job is answered (200, the original job; 422 for another body)
/// while its agent's queue is over `max_queue_depth`; a new job at the same moment is shed
/// with 429, and a shed job's key is free again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_is_answered_while_new_jobs_are_shed() -> anyhow::Result<()> {
    let mut agent = AgentSpec::new("summarize");
    agent.max_queue_depth = Some(2);
    let app = TestApp::spawn(AppOptions {
        agents: vec![agent],
        workers: 0,
        ..AppOptions::default()
    })
    .await?;
    let body = json!({"agent": "summarize", "input": "the original"});
    let first = app
        .submit_with_key(&app.acme, "hygiene-original", &body)
        .await;
    assert_eq!(first.status(), 202);
    let original: Value = first.json().await?;

    let filler = json!({"agent": "summarize", "input": "filler"});
    wait_until(Duration::from_secs(10), "the agent shedding", || async {
        match app.submit_as(&app.acme, &filler).await.status().as_u16() {
            202 => None,
            429 => Some(()),
            other => panic!("unexpected {other}"),
        }
    })
    .await?;

    let replay = app
        .submit_with_key(&app.acme, "hygiene-original", &body)
        .await;
    assert_eq!(replay.status(), 200, "a replay is never shed");
    let replayed: Value = replay.json().await?;
    assert_eq!(replayed["id"], original["id"]);

    let new = app.submit_as(&app.acme, &filler).await;
    assert_eq!(new.status(), 429);
    let problem: Value = new.json().await?;
    assert_eq!(problem["type"], "urn:agentfleet:problem:overloaded");

    let other_body = json!({"agent": "summarize", "input": "something else"});
    let mismatch = app
        .submit_with_key(&app.acme, "hygiene-original", &other_body)
        .await;
    assert_eq!(mismatch.status(), 422);

    // A new job with a key is shed, and its key released: the same key with another body is
    // a new job again (shed again), not a mismatch with a job that never was.
    let shed = app.submit_with_key(&app.acme, "hygiene-new", &body).await;
    assert_eq!(shed.status(), 429);
    let again = app
        .submit_with_key(&app.acme, "hygiene-new", &other_body)
        .await;
    assert_eq!(again.status(), 429);
    Ok(())
}

/// With `max_concurrent_requests: 1` and one request held open, API requests are answered
/// 503 `busy` at once; health, readiness and metrics still answer; once the held request
/// goes, submissions are accepted again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_concurrency_limit_the_api_sheds_and_probes_answer() -> anyhow::Result<()> {
    let app = TestApp::spawn(AppOptions {
        workers: 0,
        max_concurrent_requests: Some(1),
        ..AppOptions::default()
    })
    .await?;
    let body = json!({"agent": "summarize", "input": "x"});
    // Hold the one place with a request whose body never comes. Our probe may race it: when
    // the probe is accepted, the held request may have arrived after it (and hold the place
    // now) or during it (and been shed): start a fresh one and probe again. A 503 proves the
    // held request has the place, since nothing else is in flight.
    let deadline = Instant::now() + Duration::from_secs(10);
    let (held, shed) = loop {
        let held = app.start_stalled_submit(&app.acme).await?;
        let response = app.submit_as(&app.acme, &body).await;
        match response.status().as_u16() {
            503 => break (held, response),
            202 if Instant::now() < deadline => {}
            other => anyhow::bail!("no request was shed (last answer {other})"),
        }
    };
    assert_eq!(header(&shed, "retry-after"), Some("1"));
    assert_eq!(
        header(&shed, "content-type"),
        Some("application/problem+json")
    );
    assert_generated(header(&shed, "x-request-id"));
    let problem: Value = shed.json().await?;
    assert_eq!(problem["type"], "urn:agentfleet:problem:busy");
    assert_eq!(problem["status"], 503);

    let many = join_all((0..20).map(|_| app.submit_as(&app.acme, &body))).await;
    let statuses: Vec<u16> = many.iter().map(|r| r.status().as_u16()).collect();
    assert!(statuses.iter().all(|&s| s == 503), "{statuses:?}");
    let agents = app
        .http
        .get(app.url("/v1/agents"))
        .bearer_auth(&app.acme.api_key)
        .send()
        .await?;
    assert_eq!(agents.status(), 503, "the whole API is behind the limit");
    for path in ["/healthz", "/readyz", "/metrics"] {
        let response = app.http.get(app.url(path)).send().await?;
        assert_eq!(response.status(), 200, "{path} is outside the limit");
    }

    drop(held);
    wait_until(Duration::from_secs(5), "a submission accepted", || async {
        (app.submit_as(&app.acme, &body).await.status() == 202).then_some(())
    })
    .await?;
    Ok(())
}

/// A request that outlives `request_timeout_ms` is answered 503 `timeout` problem+json with
/// `Retry-After` and its request id; requests within it are not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_over_its_timeout_gets_a_503_problem() -> anyhow::Result<()> {
    let app = TestApp::spawn(AppOptions {
        workers: 0,
        request_timeout_ms: Some(300),
        ..AppOptions::default()
    })
    .await?;
    let started = Instant::now();
    let mut held = app.start_stalled_submit(&app.acme).await?;
    let response = read_raw_response(&mut held, Duration::from_secs(10)).await?;
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "answered after {:?}",
        started.elapsed()
    );
    assert_eq!(response.status, 503, "{response:?}");
    assert_eq!(
        response.headers.get("content-type").map(String::as_str),
        Some("application/problem+json")
    );
    assert_eq!(
        response.headers.get("retry-after").map(String::as_str),
        Some("1")
    );
    assert_generated(response.headers.get("x-request-id").map(String::as_str));
    let problem: Value = serde_json::from_str(&response.body)?;
    assert_eq!(problem["type"], "urn:agentfleet:problem:timeout");
    assert_eq!(problem["status"], 503);

    let agents = app
        .http
        .get(app.url("/v1/agents"))
        .bearer_auth(&app.acme.api_key)
        .send()
        .await?;
    assert_eq!(agents.status(), 200);
    Ok(())
}

/// The new dispatcher keys are checked before anything starts, and named when wrong.
#[test]
fn the_dispatcher_limits_must_be_positive() {
    let yaml = |dispatcher: &str| {
        format!(
            r#"
amqp: {{ url: "amqp://guest:guest@127.0.0.1:5672/%2f", prefix: "hygiene" }}
redis: {{ url: "redis://127.0.0.1:6379/0", prefix: "hygiene" }}
dispatcher: {{ {dispatcher} }}
tenants:
  - {{ id: acme, api_key_sha256: "{}" }}
agents:
  summarize: {{ provider: openai, base_url: "http://127.0.0.1:8000/v1", model: "m" }}
"#,
            "ab".repeat(32)
        )
    };
    let config = Config::from_yaml(&yaml("")).expect("defaults");
    assert_eq!(
        config.dispatcher.request_timeout,
        Duration::from_millis(10_000)
    );
    assert_eq!(config.dispatcher.max_concurrent_requests, 1024);
    for key in ["request_timeout_ms", "max_concurrent_requests"] {
        let err = Config::from_yaml(&yaml(&format!("{key}: 0"))).expect_err("zero");
        assert!(
            err.to_string().contains(&format!("dispatcher.{key}")),
            "{err}"
        );
    }
}
