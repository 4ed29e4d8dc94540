//! The chaos test: jobs submitted while worker processes are SIGKILLed and restarted, the
//! broker and Redis (AOF on) are restarted, the provider injects 429s with Retry-After, 500s,
//! hangs past the timeout and malformed bodies, and the webhook receiver fails its first
//! deliveries. It runs against its own private RabbitMQ node and Redis server, so restarting
//! them disturbs nothing else.
//!
//! Short form (CI): 400 jobs over ~25 s. Full form: `AGENTFLEET_CHAOS_JOBS=2000` (see
//! `scripts/chaos.sh`), ~90 s of chaos.

use std::collections::{HashMap, HashSet};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use serde_json::json;

use agentfleet_stub::llm::{Behavior, Fault};
use agentfleet_tests::resubmit::{Resubmit, Submitted};
use agentfleet_tests::services::{PrivateRabbit, PrivateRedis};
use agentfleet_tests::{AgentSpec, AppOptions, TestApp};

const WORKER_BIN: &str = env!("CARGO_BIN_EXE_agentfleet-test-worker");

struct Plan {
    jobs: usize,
    window: Duration,
    kill_every: Duration,
    broker_restart_at: Duration,
    redis_restart_at: Duration,
}

impl Plan {
    fn from_env() -> Self {
        let jobs = std::env::var("AGENTFLEET_CHAOS_JOBS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(400usize);
        let window = Duration::from_secs((jobs as u64 / 20).clamp(20, 100));
        Self {
            jobs,
            window,
            kill_every: Duration::from_secs(3),
            broker_restart_at: window / 3,
            redis_restart_at: window * 2 / 3,
        }
    }
}

struct Workers {
    children: Vec<Child>,
    config: std::path::PathBuf,
    env: HashMap<String, String>,
    log: std::path::PathBuf,
}

impl Workers {
    fn spawn_one(&self) -> anyhow::Result<Child> {
        Ok(Command::new(WORKER_BIN)
            .arg("--config")
            .arg(&self.config)
            .envs(&self.env)
            .stdout(Stdio::from(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&self.log)?,
            ))
            .stderr(Stdio::null())
            .spawn()?)
    }

    fn kill_and_replace(&mut self, index: usize) -> anyhow::Result<()> {
        let child = &mut self.children[index];
        child.kill()?; // SIGKILL
        child.wait()?;
        self.children[index] = self.spawn_one()?;
        Ok(())
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The chaos runs take turns: each restarts its own broker and Redis, and two at once would
/// starve each other on a small machine.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_job_is_lost_or_run_twice_at_once_under_chaos() -> anyhow::Result<()> {
    let _turn = ONE_AT_A_TIME.lock().await;
    chaos(false).await
}

/// The same with the dispatcher's group commit: the submissions (32 at a time) go out several
/// to a message, so workers die holding batches, which come back and are split.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_batched_job_is_lost_or_run_twice_at_once_under_chaos() -> anyhow::Result<()> {
    let _turn = ONE_AT_A_TIME.lock().await;
    chaos(true).await
}

async fn chaos(batch_jobs: bool) -> anyhow::Result<()> {
    let plan = Plan::from_env();
    let rabbit = PrivateRabbit::start().await?;
    let redis = PrivateRedis::start_with_aof().await?;
    let mut agent = AgentSpec::new("chaos");
    agent.concurrency = 32;
    agent.retry_attempts = 10;
    agent.retry_max_delay_secs = 2;
    agent.request_timeout_secs = Some(1);
    agent.timeout_secs = 600;
    agent.circuit_cooldown_secs = 2;
    let mut app = TestApp::spawn(AppOptions {
        agents: vec![agent],
        workers: 0,
        behavior: Behavior {
            latency: Duration::from_millis(100),
            fault_rate: 0.1,
            random_faults: vec![
                Fault::Status {
                    status: 429,
                    retry_after: Some(1),
                },
                Fault::Status {
                    status: 500,
                    retry_after: None,
                },
                Fault::Hang,
                Fault::Malformed,
            ],
            ..Behavior::default()
        },
        amqp_url: rabbit.url(),
        redis_url: redis.url(),
        admin_amqp_url: rabbit.url(),
        admin_redis_url: redis.url(),
        batch_jobs,
        ..AppOptions::default()
    })
    .await?;
    app.receiver.fail_next(30);

    // Worker logs (JSON lines, info level) go to a file kept for post-mortems.
    app.config_yaml = app
        .config_yaml
        .replace("log_level: \"warn\"", "log_level: \"info\"");
    let log = std::env::temp_dir().join("agentfleet-chaos-workers.log");
    let _ = std::fs::remove_file(&log);
    let mut workers = Workers {
        children: Vec::new(),
        config: app.write_config_file("chaos-worker")?,
        env: app.worker_env(),
        log,
    };
    for _ in 0..3 {
        let child = workers.spawn_one()?;
        workers.children.push(child);
    }

    let started = Instant::now();
    let spacing = plan.window / u32::try_from(plan.jobs)?;
    // With group commit, submissions come in bursts (at the same average rate), so that they
    // go out several to a message.
    let burst = if batch_jobs { 16 } else { 1 };
    let submitter = futures_util::stream::iter(0..plan.jobs)
        .map(|i| {
            let app = &app;
            async move {
                let at = started + spacing * u32::try_from(i - i % burst).ok()?;
                tokio::time::sleep_until(at.into()).await;
                submit_until_accepted(app, i).await
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<Option<String>>>();

    let mut kills = 0u32;
    let mut restarts = Vec::new();
    let mut in_flight_at_disruptions = 0u64;
    let chaos = async {
        let mut next_kill = started + plan.kill_every;
        let (mut broker_done, mut redis_done) = (false, false);
        // At least MIN_KILLS even when a slow broker restart eats into the window.
        while started.elapsed() < plan.window || kills < MIN_KILLS {
            tokio::time::sleep_until(next_kill.into()).await;
            next_kill += plan.kill_every;
            in_flight_at_disruptions += app.llm.total_in_flight();
            let victim = kills as usize % workers.children.len();
            workers.kill_and_replace(victim)?;
            kills += 1;
            // A restart disrupts the calls in flight when it begins and those that start while
            // the service is going down and coming back (their results cannot be recorded).
            if !broker_done && started.elapsed() >= plan.broker_restart_at {
                in_flight_at_disruptions += app.llm.total_in_flight();
                let calls_before = app.llm.call_count();
                rabbit.restart().await?;
                in_flight_at_disruptions += (app.llm.call_count() - calls_before) as u64;
                restarts.push("rabbitmq");
                broker_done = true;
            }
            if !redis_done && started.elapsed() >= plan.redis_restart_at {
                in_flight_at_disruptions += app.llm.total_in_flight();
                let calls_before = app.llm.call_count();
                redis.restart().await?;
                in_flight_at_disruptions += (app.llm.call_count() - calls_before) as u64;
                restarts.push("redis");
                redis_done = true;
            }
        }
        anyhow::Ok(())
    };
    let (accepted, chaos_result) = tokio::join!(submitter, chaos);
    chaos_result?;
    let accepted: Vec<String> = accepted.into_iter().flatten().collect();
    let unique: HashSet<&String> = accepted.iter().collect();
    assert_eq!(
        unique.len(),
        accepted.len(),
        "every accepted job has its own id"
    );

    let records = app
        .wait_terminal(&accepted, Duration::from_secs(240))
        .await?;
    let terminal = records.len();
    let succeeded = records
        .iter()
        .filter(|r| r["status"] == "succeeded")
        .count();
    app.wait_webhooks(terminal, Duration::from_secs(120))
        .await?;
    // Every job's event arrives; wait for the stragglers by id, not just by count.
    let expected: HashSet<String> = accepted
        .iter()
        .map(|id| {
            format!(
                "msg_{}_",
                uuid::Uuid::parse_str(id)
                    .map(|u| u.simple().to_string())
                    .unwrap_or_default()
            )
        })
        .collect();
    let deliveries =
        agentfleet_tests::wait_until(Duration::from_secs(120), "a webhook per job", || async {
            let deliveries = app.receiver.deliveries();
            let got: HashSet<String> = deliveries
                .iter()
                .filter_map(|d| d.webhook_id.rsplit_once('_').map(|(p, _)| format!("{p}_")))
                .collect();
            expected.is_subset(&got).then_some(deliveries)
        })
        .await?;
    assert!(
        deliveries.iter().all(|d| d.verified),
        "every delivery verifies"
    );
    let distinct: HashSet<&String> = deliveries.iter().map(|d| &d.webhook_id).collect();
    let webhook_duplicates = deliveries.len() - distinct.len();
    let double_runs = app.llm.double_runs();
    let duplicate_calls = app.llm.duplicate_calls();

    println!(
        "chaos (batch_jobs={batch_jobs}): jobs accepted={} terminal={terminal} succeeded={succeeded} lost={} | worker kills={kills} restarts={restarts:?} | webhooks delivered={} duplicates={webhook_duplicates} | provider calls={} duplicate calls={duplicate_calls} (bound {in_flight_at_disruptions}) | double runs={double_runs} | {:.0?}",
        accepted.len(),
        accepted.len() - terminal,
        deliveries.len(),
        app.llm.call_count(),
        started.elapsed(),
    );
    assert_eq!(terminal, accepted.len(), "0 lost");
    assert_eq!(double_runs, 0, "no job ran on two workers at once");
    assert!(
        duplicate_calls <= in_flight_at_disruptions,
        "{duplicate_calls} duplicate calls, more than the {in_flight_at_disruptions} in flight at the disruptions"
    );
    assert_eq!(restarts.len(), 2);
    assert!(kills >= MIN_KILLS);
    Ok(())
}

/// The fewest worker kills a run makes, whatever the window.
const MIN_KILLS: u32 = 5;

/// Submits job `i` until accepted, retrying with its Idempotency-Key as a client should.
async fn submit_until_accepted(app: &TestApp, i: usize) -> Option<String> {
    let submission = Resubmit {
        url: app.url("/v1/jobs"),
        tenant: &app.acme,
        body: json!({"agent": "chaos", "input": format!("chaos job {i}"), "webhook_url": app.webhook_url()}),
        key: format!("chaos-{i}"),
        within: Duration::from_secs(120),
        stuck_after: None,
    };
    match app.resubmit(submission, |_| {}).await {
        Ok(Submitted::Accepted(id)) => Some(id),
        other => panic!("job {i}: {other:?}"),
    }
}
