//! The first webhook attempt, made inline by the run that ended the job.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use agentfleet_tests::{wait_until, AgentSpec, AppOptions, TestApp};

/// How long an inline first attempt may take in these tests.
const INLINE_TIMEOUT_MS: u64 = 4_000;

/// A receiver that accepts connections and never answers; counts them.
async fn hanging_receiver() -> anyhow::Result<(String, Arc<AtomicUsize>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/hooks/acme", listener.local_addr()?);
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            held.push(socket);
        }
    });
    Ok((url, accepted))
}

fn first_attempts(app: &TestApp, path: &str) -> u64 {
    app.worker_metrics(0)
        .map(|m| m.webhook_first_attempts.with_label_values(&[path]).get())
        .unwrap_or_default()
}

/// A receiver that hangs costs its own tenant's events the inline timeout and another
/// tenant's runs nothing. Inline attempts of an agent hold at most the deliveries its window
/// has beyond its call slots (8 for the test agent's 16 slots): globex's first 8 events hang
/// inline, its next 8 find no room and take the webhook queue (where they hang too, in 8 of
/// its 16 slots), and meanwhile acme's 40 jobs still run on all 16 call slots, end, and are
/// delivered through the queue. When globex's inline attempts time out, those events go to the queue as attempt 1.
/// (The test receiver verifies acme's signatures, so acme is the one answered.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_receiver_slows_only_its_own_tenants_events() -> anyhow::Result<()> {
    // The test agent's 16 call slots and its window of 24 deliveries.
    const ROOM: usize = 8;
    let app = TestApp::spawn(AppOptions {
        workers: 1,
        webhook_inline: Some((INLINE_TIMEOUT_MS, 64)),
        webhook_retry_schedule_secs: vec![3_600],
        ..AppOptions::default()
    })
    .await?;
    let (hanging_url, accepted) = hanging_receiver().await?;
    let globex = app.tenant("globex").clone();
    let mut globex_jobs = Vec::new();
    for i in 0..2 * ROOM {
        let body =
            json!({"agent": "summarize", "input": format!("g{i}"), "webhook_url": hanging_url});
        let response = app.submit_as(&globex, &body).await;
        assert_eq!(response.status(), 202);
        let accepted: serde_json::Value = response.json().await?;
        globex_jobs.push(accepted["id"].as_str().unwrap_or_default().to_owned());
    }
    wait_until(
        Duration::from_secs(10),
        "globex's 16 attempts hanging",
        || async { (accepted.load(Ordering::SeqCst) >= 2 * ROOM).then_some(()) },
    )
    .await?;
    assert_eq!(
        first_attempts(&app, "queued"),
        ROOM as u64,
        "the agent's inline room is 8: the other 8 events took the queue"
    );

    for i in 0..40 {
        app.submit_job("summarize", &format!("a{i}")).await?;
    }
    app.wait_webhooks(40, Duration::from_secs(20)).await?;
    // Still hanging: no globex attempt has ended (it would be noted on the record).
    for id in &globex_jobs {
        let record = app.job(id).await?;
        assert_eq!(record["status"], "succeeded", "{record}");
        assert!(
            record["webhook"].is_null(),
            "globex's attempt ended before acme's jobs were done: {record}"
        );
    }
    assert_eq!(
        (
            first_attempts(&app, "inline"),
            first_attempts(&app, "queued")
        ),
        (0, ROOM as u64 + 40),
        "no inline room while globex's attempts hang: acme's events took the queue"
    );
    assert!(
        app.receiver.deliveries().iter().all(|d| d.verified),
        "every delivery signed for acme"
    );

    wait_until(
        Duration::from_secs(INLINE_TIMEOUT_MS / 1000 + 10),
        "globex's attempts timed out",
        || async {
            for id in &globex_jobs {
                let record = app.job(id).await.ok()?;
                if record["webhook"]["attempts"] != 1 {
                    return None;
                }
                assert!(record["webhook"]["outcome"].is_null(), "{record}");
            }
            Some(())
        },
    )
    .await?;
    assert_eq!(
        first_attempts(&app, "queued"),
        2 * ROOM as u64 + 40,
        "the timed-out inline attempts went to the queue as attempt 1"
    );
    Ok(())
}

/// With no inline room (`inline_concurrency: 0`) every event takes the webhook queue, and is
/// still delivered once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_inline_room_events_take_the_queue() -> anyhow::Result<()> {
    let app = TestApp::spawn(AppOptions {
        workers: 1,
        webhook_inline: Some((INLINE_TIMEOUT_MS, 0)),
        ..AppOptions::default()
    })
    .await?;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(app.submit_job("summarize", &format!("q{i}")).await?);
    }
    app.wait_webhooks(5, Duration::from_secs(15)).await?;
    assert_eq!(first_attempts(&app, "queued"), 5);
    assert_eq!(first_attempts(&app, "inline"), 0);
    Ok(())
}

/// A one-call job whose receiver answers costs its worker three Redis round trips: one
/// script reads the job, takes the lease and marks it running; one writes the model step
/// with the job's end and lets the lease go; one notes the delivered webhook. (An agent
/// without rate limits reads the provider-pause key at most once per 50 ms besides.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_call_job_costs_its_worker_three_redis_round_trips() -> anyhow::Result<()> {
    const JOBS: u64 = 20;
    // Inline room for 32 attempts at once (half of 64 slots), so none finds it full.
    let mut agent = AgentSpec::new("summarize");
    agent.concurrency = 64;
    let app = TestApp::spawn(AppOptions {
        workers: 1,
        agents: vec![agent],
        ..AppOptions::default()
    })
    .await?;
    let round_trips = || {
        app.worker_metrics(0)
            .map(|m| m.redis_round_trips.get())
            .unwrap_or_default()
    };
    // The first job loads the scripts into Redis' cache.
    let first = app.submit_job("summarize", "warm-up").await?;
    app.wait_terminal(&[first], Duration::from_secs(20)).await?;
    app.wait_webhooks(1, Duration::from_secs(20)).await?;
    let before = round_trips();
    let started = tokio::time::Instant::now();
    let mut ids = Vec::new();
    for i in 0..JOBS {
        ids.push(app.submit_job("summarize", &format!("job {i}")).await?);
    }
    app.wait_webhooks(1 + JOBS as usize, Duration::from_secs(30))
        .await?;
    // The last note of a delivery is written after the receiver answered.
    let records = wait_until(Duration::from_secs(10), "deliveries noted", || async {
        let records = app.wait_terminal(&ids, Duration::from_secs(5)).await.ok()?;
        records
            .iter()
            .all(|r| r["webhook"]["outcome"] == "delivered")
            .then_some(records)
    })
    .await?;
    assert!(records.iter().all(|r| r["status"] == "succeeded"));
    assert_eq!(
        first_attempts(&app, "inline"),
        1 + JOBS,
        "every event inline"
    );
    let spent = round_trips() - before;
    let pause_reads = started.elapsed().as_millis() as u64 / 50 + 1;
    eprintln!(
        "round trips: {spent} for {JOBS} jobs in {:?}",
        started.elapsed()
    );
    assert!(
        spent >= 3 * JOBS && spent <= 3 * JOBS + pause_reads,
        "{spent} round trips for {JOBS} jobs (at most {pause_reads} of them pause reads)"
    );
    Ok(())
}
