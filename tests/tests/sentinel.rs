//! Redis behind Sentinel (one master, two replicas, three sentinels; `redis_sentinel`): the
//! fleet runs jobs while the master is SIGKILLed and a replica is promoted.
//!
//! With `redis.min_replicas_acked: 1` no accepted job may be lost (each reaches a terminal
//! state and its webhook arrives) and none may run twice at once. Without it the same run is
//! measured and printed, lost or not: replication is asynchronous, so a write the master
//! acknowledged just before dying may be missing on the replica that replaces it; that is the
//! point of the comparison. Both print the failover window: from the first to the last failed
//! submission or Redis error.
//!
//! Short form (CI): 200 jobs a run. Full form: `AGENTFLEET_SENTINEL_JOBS=2000`
//! (`scripts/sentinel-chaos.sh`).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use agentfleet_common::config::RedisConfig;
use agentfleet_common::naming::Names;
use agentfleet_common::store::{JobStore, Redis};
use agentfleet_common::wire::{JobInput, JobRecord, JobSpec, JobStatus};
use agentfleet_stub::llm::Behavior;
use agentfleet_tests::redis_sentinel::SentinelRedis;
use agentfleet_tests::resubmit::{Answered, Resubmit, Submitted, Tally};
use agentfleet_tests::{AgentSpec, AppOptions, TestApp};

/// The tests here each start a topology and time things: one at a time, so they do not
/// measure each other.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn jobs_per_run() -> usize {
    std::env::var("AGENTFLEET_SENTINEL_JOBS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200)
}

/// When failures were seen (by the submitters, or by the Redis probe).
#[derive(Clone, Default)]
struct Failures(Arc<Mutex<Vec<Instant>>>);

impl Failures {
    fn note(&self) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Instant::now());
    }

    /// First and last failure, and how many.
    fn window(&self) -> Option<(Instant, Instant, usize)> {
        let seen = self.0.lock().unwrap_or_else(|p| p.into_inner());
        Some((*seen.iter().min()?, *seen.iter().max()?, seen.len()))
    }
}

/// What one run measured.
struct Outcome {
    accepted: usize,
    /// Submissions whose Idempotency-Key stayed claimed without a job ([`Submitted::StuckKey`]).
    stuck_keys: usize,
    terminal: usize,
    /// Accepted and never terminal: `gone` of them have no record at all (404).
    lost: usize,
    gone: usize,
    webhooks_missing: usize,
    double_runs: u64,
    submit_503s: usize,
    redis_errors: usize,
    /// First and last failed submission (503), and Redis error of the probe, after the kill.
    rejected: Option<(Duration, Duration)>,
    probed: Option<(Duration, Duration)>,
    promoted_after: Duration,
    new_master_differs: bool,
    elapsed: Duration,
}

impl Outcome {
    /// From the first to the last failure of either kind, as (from, to) after the kill.
    fn window(&self) -> Option<(Duration, Duration)> {
        let spans: Vec<(Duration, Duration)> =
            [self.rejected, self.probed].into_iter().flatten().collect();
        let from = spans.iter().map(|s| s.0).min()?;
        let to = spans.iter().map(|s| s.1).max()?;
        Some((from, to))
    }

    fn print(&self, label: &str) {
        let span = |s: Option<(Duration, Duration)>| {
            s.map_or("none".to_owned(), |(from, to)| {
                format!("{}-{} ms", from.as_millis(), to.as_millis())
            })
        };
        let window = self
            .window()
            .map_or(0, |(from, to)| (to - from).as_millis());
        println!(
            "sentinel [{label}]: accepted={} (keys stuck at 409: {}) terminal={} lost={} (no record: {}) webhooks missing={} | double runs={} | failover window {window} ms (503s={} at {}, redis errors={} at {}, after the kill); promotion {} ms after the kill | {:.1?}",
            self.accepted,
            self.stuck_keys,
            self.terminal,
            self.lost,
            self.gone,
            self.webhooks_missing,
            self.double_runs,
            self.submit_503s,
            span(self.rejected),
            self.redis_errors,
            span(self.probed),
            self.promoted_after.as_millis(),
            self.elapsed,
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_killed_mid_run_loses_no_accepted_job_with_wait() -> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    let acked = run_with_master_kill(1).await?;
    acked.print("min_replicas_acked: 1");
    let unacked = run_with_master_kill(0).await?;
    unacked.print("min_replicas_acked: 0");

    for outcome in [&acked, &unacked] {
        assert!(outcome.new_master_differs, "a replica was promoted");
        assert!(
            outcome.window().is_some(),
            "the failover was observed (failed submissions or Redis errors)"
        );
    }
    assert_eq!(
        acked.lost, 0,
        "with WAIT, every accepted job reaches an end"
    );
    assert_eq!(
        acked.webhooks_missing, 0,
        "with WAIT, every webhook arrives"
    );
    assert_eq!(acked.double_runs, 0, "no job ran on two workers at once");
    Ok(())
}

/// Runs `jobs_per_run` jobs over the fleet on a fresh topology, SIGKILLs the master a third of
/// the way through the submissions, and counts what became of the accepted jobs.
async fn run_with_master_kill(min_replicas_acked: u32) -> anyhow::Result<Outcome> {
    let mut topology = SentinelRedis::start().await?;
    let jobs = jobs_per_run();
    let mut app = spawn_on(&topology, min_replicas_acked).await?;
    let (failures, probe_failures) = (Failures::default(), Failures::default());
    let probe_stop = CancellationToken::new();
    let probe = tokio::spawn(probe_redis(
        app.config.redis.clone(),
        probe_failures.clone(),
        probe_stop.clone(),
    ));

    let started = Instant::now();
    let (
        Tally {
            accepted,
            stuck_keys,
        },
        kill,
    ) = submit_across_a_master_kill(&app, &mut topology, jobs, &failures).await?;
    anyhow::ensure!(
        accepted.iter().collect::<HashSet<_>>().len() == accepted.len(),
        "every accepted job has its own id"
    );

    let (terminal, gone) = settle(&app, &accepted, Duration::from_secs(90)).await?;
    let webhooks_missing = missing_webhooks(&app, &terminal, Duration::from_secs(60)).await;
    probe_stop.cancel();
    let redis_errors = probe.await?;
    let since_kill = |f: &Failures| {
        f.window().map(|(first, last, n)| {
            let from = first.saturating_duration_since(kill.at);
            (from, from + (last - first), n)
        })
    };
    let (rejected, probed) = (since_kill(&failures), since_kill(&probe_failures));
    if terminal.len() < accepted.len() {
        // Replication lost writes: keep the servers' and sentinels' logs to say how.
        topology.keep();
    }
    // The harness cleans up on whichever server is the master now.
    app.redis_url = topology.master_url().await?;
    Ok(Outcome {
        accepted: accepted.len(),
        stuck_keys,
        terminal: terminal.len(),
        lost: accepted.len() - terminal.len(),
        gone,
        webhooks_missing,
        double_runs: app.llm.double_runs(),
        submit_503s: rejected.map_or(0, |(_, _, n)| n),
        redis_errors,
        rejected: rejected.map(|(from, to, _)| (from, to)),
        probed: probed.map(|(from, to, _)| (from, to)),
        promoted_after: kill.promoted_after,
        new_master_differs: kill.new_master_differs,
        elapsed: started.elapsed(),
    })
}

/// A fleet of two workers on the topology, its agent retrying through a failover.
async fn spawn_on(topology: &SentinelRedis, min_replicas_acked: u32) -> anyhow::Result<TestApp> {
    let mut agent = AgentSpec::new("sentinel");
    agent.concurrency = 32;
    agent.retry_attempts = 10;
    agent.retry_max_delay_secs = 2;
    agent.timeout_secs = 600;
    let connection = format!(
        "{}, min_replicas_acked: {min_replicas_acked}",
        topology.config_fields()
    );
    TestApp::spawn(AppOptions {
        agents: vec![agent],
        workers: 2,
        behavior: Behavior {
            latency: Duration::from_millis(50),
            ..Behavior::default()
        },
        redis_connection: Some(connection),
        admin_redis_url: topology.master_url().await?,
        ..AppOptions::default()
    })
    .await
}

/// When the master was killed, how long the sentinels took to promote a replica, and whether
/// the master is another server now.
struct MasterKill {
    at: Instant,
    promoted_after: Duration,
    new_master_differs: bool,
}

/// Submits `jobs` jobs spaced over a window (32 at a time), SIGKILLs the master a third of the
/// way through and waits for the failover.
async fn submit_across_a_master_kill(
    app: &TestApp,
    topology: &mut SentinelRedis,
    jobs: usize,
    failures: &Failures,
) -> anyhow::Result<(Tally, MasterKill)> {
    let started = Instant::now();
    let window = Duration::from_millis((jobs as u64 * 50).clamp(6_000, 100_000));
    let spacing = window / u32::try_from(jobs)?;
    let submitter = futures_util::stream::iter(0..jobs)
        .map(|i| async move {
            let at = started + spacing * u32::try_from(i).unwrap_or(u32::MAX);
            tokio::time::sleep_until(at.into()).await;
            submit_until_accepted(app, i, failures).await
        })
        .buffer_unordered(32)
        .collect::<Vec<Submitted>>();
    let chaos = async {
        tokio::time::sleep_until((started + window / 3).into()).await;
        let at = Instant::now();
        let old = topology.kill_master().await?;
        let new = topology.wait_failover(old, Duration::from_secs(30)).await?;
        anyhow::Ok(MasterKill {
            at,
            promoted_after: at.elapsed(),
            new_master_differs: old != new,
        })
    };
    let (ends, kill) = tokio::join!(submitter, chaos);
    Ok((ends.into_iter().collect(), kill?))
}

/// Writes through the same client code as the fleet (an acknowledged write when the fleet's
/// config asks for it) every 10 ms until stopped; notes each failure; answers their count.
async fn probe_redis(config: RedisConfig, failures: Failures, stop: CancellationToken) -> usize {
    let Ok(redis) = Redis::connect(&config) else {
        failures.note();
        return 1;
    };
    let mut errors = 0;
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    while !stop.is_cancelled() {
        tick.tick().await;
        let mut pipe = redis::pipe();
        pipe.cmd("SET")
            .arg(format!("{}:probe", config.prefix))
            .arg(1)
            .arg("EX")
            .arg(60)
            .ignore();
        if redis.pipe_acked(&pipe).await.is_err() {
            errors += 1;
            failures.note();
        }
    }
    errors
}

/// How long 409s may go on before a submission counts as [`Submitted::StuckKey`]: far past
/// any accept in progress (store and publish timeouts).
const STUCK_AFTER: Duration = Duration::from_secs(15);

/// Submits job `i`, retrying 503s (noted as failures), 409s and 429s with the same
/// Idempotency-Key, until accepted, its key is stuck, or the test's patience ends.
async fn submit_until_accepted(app: &TestApp, i: usize, failures: &Failures) -> Submitted {
    let submission = Resubmit {
        url: app.url("/v1/jobs"),
        tenant: &app.acme,
        body: json!({"agent": "sentinel", "input": format!("job {i}"), "webhook_url": app.webhook_url()}),
        key: format!("sentinel-{i}"),
        within: Duration::from_secs(60),
        stuck_after: Some(STUCK_AFTER),
    };
    let noted = |answered: Answered| {
        if answered.status == 503 {
            failures.note();
        }
    };
    match app.resubmit(submission, noted).await {
        Ok(submitted) => submitted,
        Err(err) => panic!("job {i}: {err:#}"),
    }
}

/// Polls until every accepted job is terminal or gone (404: its record was lost), or the
/// deadline.
async fn settle(
    app: &TestApp,
    accepted: &[String],
    within: Duration,
) -> anyhow::Result<(Vec<String>, usize)> {
    // Answers the terminal jobs and how many are gone (404) at the end; the rest never ended.
    let deadline = Instant::now() + within;
    let mut terminal = HashSet::new();
    loop {
        let mut gone = 0;
        let open: Vec<&String> = accepted
            .iter()
            .filter(|id| !terminal.contains(*id))
            .collect();
        for id in open {
            let response = app.get_job_as(&app.acme, id).await;
            if response.status() == reqwest::StatusCode::NOT_FOUND {
                gone += 1;
                continue;
            }
            let Ok(record) = response.json::<serde_json::Value>().await else {
                continue;
            };
            let status = record["status"].as_str().and_then(JobStatus::parse);
            if status.is_some_and(JobStatus::is_terminal) {
                terminal.insert(id.clone());
            }
        }
        if terminal.len() + gone == accepted.len() || Instant::now() > deadline {
            return Ok((terminal.into_iter().collect(), gone));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// How many of the jobs have no webhook delivery by the deadline.
async fn missing_webhooks(app: &TestApp, jobs: &[String], within: Duration) -> usize {
    let expected: HashSet<String> = jobs
        .iter()
        .filter_map(|id| uuid::Uuid::parse_str(id).ok())
        .map(|u| format!("msg_{}_", u.simple()))
        .collect();
    let deadline = Instant::now() + within;
    loop {
        let got: HashSet<String> = app
            .receiver
            .deliveries()
            .iter()
            .filter_map(|d| d.webhook_id.rsplit_once('_').map(|(p, _)| format!("{p}_")))
            .collect();
        let missing = expected.difference(&got).count();
        if missing == 0 || Instant::now() > deadline {
            return missing;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The client config for a topology, as the fleet's `redis:` would say it.
fn sentinel_config(
    topology: &SentinelRedis,
    min_replicas_acked: u32,
) -> anyhow::Result<RedisConfig> {
    Ok(serde_json::from_value(json!({
        "sentinel": { "urls": topology.sentinel_urls(), "master_name": agentfleet_tests::redis_sentinel::MASTER_NAME },
        "prefix": format!("aftest-{}", uuid::Uuid::now_v7().simple()),
        "min_replicas_acked": min_replicas_acked,
    }))?)
}

/// A failover the sentinels are asked for leaves the old master alive as a replica, which
/// answers writes with `READONLY`: the client must go and find the new master, not retry the
/// old one forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_follow_a_demoted_master_to_the_new_one() -> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    let topology = SentinelRedis::start().await?;
    let redis = Redis::connect(&sentinel_config(&topology, 1)?)?;
    let set = |value: usize| {
        let mut pipe = redis::pipe();
        pipe.cmd("SET").arg("aftest-demotion").arg(value).ignore();
        pipe
    };
    redis.pipe_acked(&set(0)).await?;
    let old = topology.demote_master().await?;
    // Write until a write is on a master other than the old one (acknowledged by a replica).
    let deadline = Instant::now() + Duration::from_secs(30);
    let (mut written, mut failed) = (0usize, 0usize);
    loop {
        written += 1;
        match redis.pipe_acked(&set(written)).await {
            Ok(()) => {
                let port = topology.master_port().await?;
                if port != old && read_value(port).await? == Some(written) {
                    break;
                }
            }
            Err(_) => failed += 1,
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "no write reached the new master within 30 s ({failed} of {written} failed)"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!("sentinel: after a demotion, {failed} of {written} writes failed before one reached the new master");
    Ok(())
}

async fn read_value(port: u16) -> anyhow::Result<Option<usize>> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/0"))?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    Ok(redis::cmd("GET")
        .arg("aftest-demotion")
        .query_async(&mut conn)
        .await?)
}

/// The cost of `WAIT 1` on a job's creation: p50 and p99 of `JobStore::create` with and
/// without it, one at a time, on the test topology. The two alternate, after a warm-up, so a
/// busy moment of the machine weighs on both alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_latency_cost_of_wait_is_measured() -> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    let topology = SentinelRedis::start().await?;
    let ops = jobs_per_run() * 10;
    let stores = [latency_store(&topology, 0)?, latency_store(&topology, 1)?];
    let mut latencies = [Vec::with_capacity(ops), Vec::with_capacity(ops)];
    for round in 0..ops + WARM_UP {
        for (store, latencies) in stores.iter().zip(latencies.iter_mut()) {
            let took = timed_create(store).await?;
            if round >= WARM_UP {
                latencies.push(took);
            }
        }
    }
    let lines: Vec<String> = latencies
        .iter_mut()
        .enumerate()
        .map(|(replicas, latencies)| {
            latencies.sort();
            let at = |q: f64| latencies[((ops as f64 * q) as usize).min(ops - 1)];
            format!(
                "WAIT {replicas}: p50 {:?} p99 {:?} max {:?}",
                at(0.50),
                at(0.99),
                latencies[ops - 1]
            )
        })
        .collect();
    println!(
        "sentinel: JobStore::create, {ops} one at a time each: {}",
        lines.join(" | ")
    );
    Ok(())
}

const WARM_UP: usize = 200;

fn latency_store(topology: &SentinelRedis, replicas: u32) -> anyhow::Result<JobStore> {
    let config = sentinel_config(topology, replicas)?;
    let names = Names::new(&config.prefix, &config.prefix);
    Ok(JobStore::new(Redis::connect(&config)?, names, 600))
}

async fn timed_create(store: &JobStore) -> anyhow::Result<Duration> {
    let spec = JobSpec {
        input: JobInput::Text("latency probe".into()),
        webhook_url: None,
        timeout_secs: None,
        limits: None,
    };
    let record = JobRecord::new_queued(
        uuid::Uuid::now_v7(),
        "acme",
        "latency",
        None,
        chrono::Utc::now(),
    );
    let began = Instant::now();
    store.create(&record, &spec).await?;
    Ok(began.elapsed())
}
