//! Redis Cluster as the store (`redis_cluster`: three masters on loopback, with a replica each
//! where `WAIT` is tested): the whole path of a job, a rate-limited agent, a cancellation and a
//! worker killed mid-run, with keys spread over the masters and no node ever answering
//! `CROSSSLOT` (every script's and transaction's keys share a hash slot).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use agentfleet_stub::llm::Behavior;
use agentfleet_tests::redis_cluster::ClusterRedis;
use agentfleet_tests::{keys_per_master, wait_until, AgentSpec, AppOptions, TestApp};

const WORKER_BIN: &str = env!("CARGO_BIN_EXE_agentfleet-test-worker");

/// The tests here each start a cluster and some time things: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// An app on `cluster`: its `redis:` is the cluster, and the harness cleans up on each master.
async fn spawn_on(
    cluster: &ClusterRedis,
    redis_extra: &str,
    options: AppOptions,
) -> anyhow::Result<TestApp> {
    let masters = cluster.masters().await?;
    TestApp::spawn(AppOptions {
        redis_connection: Some(format!("{}{redis_extra}", cluster.config_fields())),
        admin_redis_url: masters[0].clone(),
        admin_redis_masters: masters,
        ..options
    })
    .await
}

/// No node answered `CROSSSLOT`, and no command failed but the first `EVALSHA` of a script on
/// a node (`NOSCRIPT`: the client loads it and calls again). The other errors a node counts
/// are redirections the client follows (`MOVED`, `ASK`) and `ERR` for `CLIENT SETINFO`, which
/// the client sends on connecting and Redis 7.0 does not know (unknown commands are not in
/// `commandstats`).
async fn assert_no_crossslot(cluster: &ClusterRedis) -> anyhow::Result<()> {
    let stats = cluster.error_stats().await?;
    println!("redis cluster error stats: {stats:?}");
    let unexpected: Vec<&String> = stats
        .iter()
        .filter(|s| {
            let known = [
                "errorstat_MOVED",
                "errorstat_ASK",
                "errorstat_NOSCRIPT",
                "errorstat_ERR",
            ];
            // `cluster|...` failures are `redis-cli --cluster create`'s, while it joins nodes.
            !known.iter().any(|k| s.contains(k))
                && !s.contains("cmdstat_evalsha:")
                && !s.contains("cmdstat_cluster|")
        })
        .collect();
    assert!(unexpected.is_empty(), "errors answered: {unexpected:?}");
    assert!(!stats.iter().any(|s| s.contains("CROSSSLOT")), "{stats:?}");
    Ok(())
}

/// 60 jobs of two tenants, each submitted with an Idempotency-Key and replayed, run on two
/// workers with `min_replicas_acked: 1` (`WAIT` goes with each write to the master of its
/// slot); every job succeeds, every webhook arrives, and the jobs' keys are on every master.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_run_end_to_end_on_a_cluster_with_their_keys_spread() -> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    let started = Instant::now();
    let cluster = ClusterRedis::start(3, 1).await?;
    let cluster_up = started.elapsed();
    let app = spawn_on(
        &cluster,
        ", min_replicas_acked: 1, wait_timeout_ms: 500",
        AppOptions::default(),
    )
    .await?;

    let n = 60;
    let mut ids = Vec::new();
    let mut accept_times = Vec::new();
    for i in 0..n {
        let (tenant, body) = if i % 2 == 0 {
            let hook = app.webhook_url();
            (
                &app.acme,
                json!({"agent": "summarize", "input": format!("job {i}"), "webhook_url": hook}),
            )
        } else {
            (
                &app.globex,
                json!({"agent": "summarize", "input": format!("job {i}")}),
            )
        };
        let key = format!("key-{i}");
        let at = Instant::now();
        let first = app.submit_with_key(tenant, &key, &body).await;
        accept_times.push(at.elapsed());
        anyhow::ensure!(first.status() == 202, "submit {i}: {}", first.status());
        let id = first.json::<Value>().await?["id"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let replay = app.submit_with_key(tenant, &key, &body).await;
        anyhow::ensure!(replay.status() == 200, "replay {i}: {}", replay.status());
        assert_eq!(
            replay.json::<Value>().await?["id"],
            id.as_str(),
            "the replay names the job"
        );
        ids.push(id);
    }
    let records = app.wait_terminal(&ids, Duration::from_secs(60)).await?;
    assert!(
        records.iter().all(|r| r["status"] == "succeeded"),
        "{records:?}"
    );
    app.wait_webhooks(n / 2, Duration::from_secs(30)).await?;
    assert_eq!(app.llm.call_count(), n, "each job ran once");

    let jobs = keys_per_master(&app.redis_masters, &format!("{}:job:*", app.prefix)).await?;
    let spread: Vec<usize> = jobs.iter().map(|(_, keys)| keys.len()).collect();
    assert_eq!(
        spread.iter().sum::<usize>(),
        n,
        "one hash per job: {spread:?}"
    );
    assert!(
        spread.iter().filter(|&&k| k > 0).count() >= 2,
        "jobs spread over the masters: {spread:?}"
    );
    // A tenant's keys share its tag: all its Idempotency-Keys are on one master.
    for tenant in ["acme", "globex"] {
        let pattern = format!("{}:idem:{{t:{tenant}}}:*", app.prefix);
        let idem = keys_per_master(&app.redis_masters, &pattern).await?;
        let holding: Vec<usize> = idem
            .iter()
            .map(|(_, k)| k.len())
            .filter(|&k| k > 0)
            .collect();
        assert_eq!(holding, [n / 2], "{tenant}'s keys on one master: {idem:?}");
    }
    // `WAIT` went with each acknowledged write to the master that took it: a job's create
    // (`MULTI`/`EXEC` + `WAIT`) ran on the job's master, and no master saw fewer `WAIT`s than
    // creates (the record transitions and step appends add more).
    let execs = cluster.calls_per_master("exec").await?;
    let waits = cluster.calls_per_master("wait").await?;
    assert_eq!(
        execs,
        spread.iter().map(|&k| k as u64).collect::<Vec<_>>(),
        "one create per job, on its master"
    );
    assert!(
        waits.iter().zip(&execs).all(|(w, e)| w >= e),
        "WAIT {waits:?} vs EXEC {execs:?} per master"
    );
    assert_no_crossslot(&cluster).await?;
    accept_times.sort();
    println!(
        "redis cluster (3 masters + 3 replicas, WAIT 1): cluster up in {cluster_up:?}; {n} jobs, \
         job hashes per master {spread:?}, EXEC {execs:?}, WAIT {waits:?}; accept p50 {:?} p max {:?}; total {:?}",
        accept_times[n / 2],
        accept_times[n - 1],
        started.elapsed()
    );
    Ok(())
}

/// An agent limited to 120 requests/min that also shares a pool: its bucket and the pool's are
/// in different slots (each with its own pause key), and across two workers the calls keep
/// to the agent's schedule; a pause set on the pool holds every call until it ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limited_agent_keeps_its_rate_on_a_cluster() -> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    let cluster = ClusterRedis::start(3, 0).await?;
    let mut limited = AgentSpec::new("limited");
    limited.requests_per_minute = Some(120);
    limited.pool = Some("shared-key".into());
    let app = spawn_on(
        &cluster,
        "",
        AppOptions {
            agents: vec![limited],
            pools: vec![("shared-key".into(), 6_000)],
            ..AppOptions::default()
        },
    )
    .await?;
    let n = 8;
    let mut ids = Vec::new();
    for i in 0..n {
        ids.push(app.submit_job("limited", &format!("job {i}")).await?);
    }
    let records = app.wait_terminal(&ids, Duration::from_secs(60)).await?;
    assert!(records.iter().all(|r| r["status"] == "succeeded"));
    let mut times: Vec<Instant> = app.llm.calls().iter().map(|c| c.at).collect();
    assert_eq!(times.len(), n);
    assert_paced(&mut times, Duration::from_millis(500), 2);

    // The pool's pause (what a 429 with Retry-After sets) holds the next call.
    let names = app.names();
    let pause = names.pause_key(agentfleet_common::naming::LimitScope::Pool("shared-key"));
    let mut conn = cluster_connection(&cluster).await?;
    let paused_at = Instant::now();
    let _: () = redis::cmd("SET")
        .arg(&pause)
        .arg(1)
        .arg("PX")
        .arg(1_500)
        .query_async(&mut conn)
        .await?;
    let id = app.submit_job("limited", "after the pause").await?;
    app.wait_terminal(&[id], Duration::from_secs(20)).await?;
    let last = app.llm.calls().iter().map(|c| c.at).max().expect("a call");
    assert!(
        last.duration_since(paused_at) >= Duration::from_millis(1_400),
        "the call waited out the pool's pause: {:?}",
        last.duration_since(paused_at)
    );
    assert_no_crossslot(&cluster).await
}

/// A running job is cancelled: its provider call is dropped and `job.cancelled` arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_job_is_cancelled_on_a_cluster() -> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    let cluster = ClusterRedis::start(3, 0).await?;
    let app = spawn_on(
        &cluster,
        "",
        AppOptions {
            workers: 1,
            behavior: Behavior {
                latency: Duration::from_secs(30),
                ..Behavior::default()
            },
            ..AppOptions::default()
        },
    )
    .await?;
    let id = app.submit_job("summarize", "slow").await?;
    let model = app.config.agents["summarize"].model.clone();
    wait_until(Duration::from_secs(10), "run in flight", || async {
        (app.llm.in_flight(&model) == 1).then_some(())
    })
    .await?;
    assert_eq!(app.cancel(&id).await.status(), 200);
    wait_until(Duration::from_secs(5), "provider call dropped", || async {
        (app.llm.in_flight(&model) == 0).then_some(())
    })
    .await?;
    app.wait_webhooks(1, Duration::from_secs(15)).await?;
    let event = app.receiver.deliveries()[0].event.clone().expect("event");
    assert_eq!(event["type"], "job.cancelled");
    assert_eq!(app.job(&id).await?["status"], "cancelled");
    assert_no_crossslot(&cluster).await
}

/// A worker process SIGKILLed with runs in flight loses none: another worker takes each job
/// over once the dead one's lease has expired (a new fencing token), and each succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_run_loses_no_job_on_a_cluster() -> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    let cluster = ClusterRedis::start(3, 0).await?;
    let mut app = spawn_on(
        &cluster,
        "",
        AppOptions {
            workers: 0,
            behavior: Behavior {
                latency: Duration::from_secs(2),
                ..Behavior::default()
            },
            ..AppOptions::default()
        },
    )
    .await?;
    let pid = app.start_worker_process(WORKER_BIN)?;
    let mut ids = Vec::new();
    for i in 0..6 {
        ids.push(app.submit_job("summarize", &format!("job {i}")).await?);
    }
    let model = app.config.agents["summarize"].model.clone();
    wait_until(Duration::from_secs(20), "6 runs in flight", || async {
        (app.llm.in_flight(&model) == 6).then_some(())
    })
    .await?;
    app.kill_worker_process(pid)?;
    app.start_worker().await?;
    let records = app.wait_terminal(&ids, Duration::from_secs(30)).await?;
    assert!(
        records.iter().all(|r| r["status"] == "succeeded"),
        "{records:?}"
    );
    app.wait_webhooks(6, Duration::from_secs(20)).await?;
    let calls: HashMap<String, u32> = app.llm.calls_per_job();
    assert!(
        ids.iter().all(|id| calls.get(id) == Some(&2)),
        "each job ran on both workers: {calls:?}"
    );
    assert_no_crossslot(&cluster).await
}

/// A connection that routes by slot, for setting keys the way a worker would.
async fn cluster_connection(
    cluster: &ClusterRedis,
) -> anyhow::Result<redis::cluster_async::ClusterConnection> {
    let client = redis::cluster::ClusterClient::new(cluster.node_urls())?;
    Ok(client.get_async_connection().await?)
}

/// Calls at `interval` after a burst of `burst`, with a little slack for clocks.
fn assert_paced(times: &mut [Instant], interval: Duration, burst: usize) {
    times.sort();
    let slack = Duration::from_millis(60);
    for (i, t) in times.iter().enumerate().skip(burst) {
        let earliest = interval * u32::try_from(i + 1 - burst).unwrap_or(u32::MAX);
        let elapsed = t.duration_since(times[0]);
        assert!(
            elapsed + slack >= earliest,
            "call {i} came {elapsed:?} after the first; the limit allows it no sooner than {earliest:?}"
        );
    }
}
