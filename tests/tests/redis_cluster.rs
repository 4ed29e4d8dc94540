//! Redis Cluster as the store (`redis_cluster`: three masters on loopback, with a replica each
//! where `WAIT` is tested): the whole path of a job, a rate-limited agent, a cancellation and a
//! worker killed mid-run, with keys spread over the masters and no node ever answering
//! `CROSSSLOT` (every script's and transaction's keys share a hash slot).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde_json::{json, Value};

use agentfleet_stub::llm::Behavior;
use agentfleet_tests::redis_cluster::ClusterRedis;
use agentfleet_tests::resubmit::{Resubmit, Submitted, Tally};
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
    app.wait_succeeded(&ids, Duration::from_secs(60)).await?;
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
    app.wait_succeeded(&ids, Duration::from_secs(60)).await?;
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
    app.wait_calls_in_flight(&model, 1, Duration::from_secs(10))
        .await?;
    assert_eq!(app.cancel(&id).await.status(), 200);
    app.wait_calls_in_flight(&model, 0, Duration::from_secs(5))
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
    app.wait_calls_in_flight(&model, 6, Duration::from_secs(20))
        .await?;
    app.kill_worker_process(pid)?;
    app.start_worker().await?;
    app.wait_succeeded(&ids, Duration::from_secs(30)).await?;
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

/// When the master was killed, when submissions were answered 503, and how long from the kill
/// until its replica was promoted and until the killed node was a replica again.
struct MasterKill {
    at: Instant,
    rejected: Vec<Instant>,
    promoted: Duration,
    rejoined: Duration,
}

/// Waits for every job of `ids` to end and for a webhook each; answers how many succeeded.
async fn succeeded_and_delivered(app: &TestApp, ids: &[String]) -> anyhow::Result<usize> {
    let records = app.wait_terminal(ids, Duration::from_secs(90)).await?;
    app.wait_webhooks(ids.len(), Duration::from_secs(60))
        .await?;
    Ok(records
        .iter()
        .filter(|r| r["status"] == "succeeded")
        .count())
}

/// An app for jobs submitted while the cluster changes under them: 50-ms model calls, 32 at a
/// time, and retries enough (10, at most 2 s apart) to outlast a failover.
async fn spawn_for_churn(cluster: &ClusterRedis, redis_extra: &str) -> anyhow::Result<TestApp> {
    let mut agent = AgentSpec::new("summarize");
    agent.concurrency = 32;
    agent.retry_attempts = 10;
    agent.retry_max_delay_secs = 2;
    agent.timeout_secs = 600;
    let behavior = Behavior {
        latency: Duration::from_millis(50),
        ..Behavior::default()
    };
    let options = AppOptions {
        agents: vec![agent],
        behavior,
        ..AppOptions::default()
    };
    spawn_on(cluster, redis_extra, options).await
}

/// Submits `n` jobs `spacing` apart (see [`submit_until_accepted`]), noting 503s in
/// `rejected`.
async fn submit_spaced(
    app: &TestApp,
    n: u32,
    spacing: Duration,
    rejected: &Rejections,
) -> anyhow::Result<Tally> {
    let started = Instant::now();
    let submitted = futures_util::future::join_all((0..n).map(|i| async move {
        tokio::time::sleep_until((started + spacing * i).into()).await;
        submit_until_accepted(app, i as usize, rejected).await
    }))
    .await;
    submitted.into_iter().collect()
}

/// Submits `n` jobs 60 ms apart, SIGKILLs `victim` a third of the way through, waits for its
/// replica's promotion and for it to come back as a replica.
async fn submit_across_a_master_kill(
    app: &TestApp,
    cluster: &mut ClusterRedis,
    victim: u16,
    n: u32,
) -> anyhow::Result<(Tally, MasterKill)> {
    let spacing = Duration::from_millis(60);
    let started = Instant::now();
    let rejected = Rejections::default();
    let submitter = submit_spaced(app, n, spacing, &rejected);
    let chaos = async {
        tokio::time::sleep_until((started + spacing * (n / 3)).into()).await;
        let at = Instant::now();
        cluster.kill(victim)?;
        let promoted = cluster
            .wait_failover(victim, 3, Duration::from_secs(30))
            .await?;
        cluster.restart(victim).await?;
        cluster
            .wait_replica(victim, Duration::from_secs(30))
            .await?;
        anyhow::Ok((at, promoted, at.elapsed()))
    };
    let (submitted, chaos) = tokio::join!(submitter, chaos);
    let (at, promoted, rejoined) = chaos?;
    let tally = submitted?;
    let rejected = rejected.into_inner().unwrap_or_else(|p| p.into_inner());
    Ok((
        tally,
        MasterKill {
            at,
            rejected,
            promoted,
            rejoined,
        },
    ))
}

/// When submissions were answered 503, for the failover window.
type Rejections = std::sync::Mutex<Vec<Instant>>;

/// Submits job `i` as acme, retrying 503s (noted in `rejected`), 409s and 429s with the same
/// Idempotency-Key until accepted, its key is stuck (409s for 15 s), or 60 s have passed.
async fn submit_until_accepted(
    app: &TestApp,
    i: usize,
    rejected: &Rejections,
) -> anyhow::Result<Submitted> {
    let submission = Resubmit {
        url: app.url("/v1/jobs"),
        tenant: &app.acme,
        body: json!({"agent": "summarize", "input": format!("job {i}"), "webhook_url": app.webhook_url()}),
        key: format!("failover-{i}"),
        within: Duration::from_secs(60),
        stuck_after: Some(Duration::from_secs(15)),
    };
    app.resubmit(submission, |answered| {
        if answered.status == 503 {
            rejected
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(answered.answered);
        }
    })
    .await
}

/// The master holding acme's keys (its Idempotency-Keys, among others) is SIGKILLed while 100
/// jobs are being submitted, with `min_replicas_acked: 1`: its replica is promoted, the killed
/// node comes back as a replica, and no accepted job is lost — each succeeds and its webhook
/// arrives; submissions in the gap get 503 and are retried with their key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_killed_mid_run_loses_no_accepted_job_on_a_cluster() -> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    let mut cluster = ClusterRedis::start_with(3, 1, Duration::from_secs(2)).await?;
    let mut app =
        spawn_for_churn(&cluster, ", min_replicas_acked: 1, wait_timeout_ms: 500").await?;
    let victim = cluster
        .owner_of(&app.names().idempotency_key("acme", "any"))
        .await?;

    let n = 100;
    let started = Instant::now();
    let (
        Tally {
            accepted: ids,
            stuck_keys: stuck,
        },
        kill,
    ) = submit_across_a_master_kill(&app, &mut cluster, victim, n).await?;
    let after_kill = |at: Option<&Instant>| at.map(|at| at.saturating_duration_since(kill.at));
    let window = (
        after_kill(kill.rejected.iter().min()),
        after_kill(kill.rejected.iter().max()),
    );
    let succeeded = succeeded_and_delivered(&app, &ids).await?;
    // The harness cleans up on the masters there are now.
    app.redis_masters = cluster.masters().await?;
    println!(
        "redis cluster failover (3 masters + 3 replicas, WAIT 1, node timeout 2 s): accepted {} \
         of {n} (keys stuck at 409: {stuck}), succeeded {succeeded}, webhooks {}; 503s {} (from {:?} to {:?} after the kill); \
         replica promoted {:?} after the kill, old master a replica again after \
         {:?}; double runs {}; total {:?}",
        ids.len(),
        app.receiver.count(),
        kill.rejected.len(),
        window.0,
        window.1,
        kill.promoted,
        kill.rejoined,
        app.llm.double_runs(),
        started.elapsed()
    );
    assert_eq!(
        succeeded,
        ids.len(),
        "with WAIT, every accepted job succeeds"
    );
    assert_eq!(
        app.llm.double_runs(),
        0,
        "no job ran on two workers at once"
    );
    // A failover makes other errors (`CLUSTERDOWN`, `EXECABORT`, `MOVED` to the new master,
    // commands rejected meanwhile): only `CROSSSLOT` would be a fault of ours.
    let stats = cluster.error_stats().await?;
    assert!(!stats.iter().any(|s| s.contains("CROSSSLOT")), "{stats:?}");
    Ok(())
}

/// The store's client on a cluster: a plain pipeline may span slots (its commands go one by
/// one, each to its node, replies in order); a transaction or a script that spans slots is
/// refused, by the client or by the node (`CROSSSLOT`, which the node counts: the check the
/// other tests rely on can fail).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_client_spans_slots_only_where_it_may() -> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    let cluster = ClusterRedis::start(3, 0).await?;
    let app = spawn_on(
        &cluster,
        "",
        AppOptions {
            workers: 0,
            ..AppOptions::default()
        },
    )
    .await?;
    let redis = agentfleet_common::store::Redis::connect(&app.config.redis)?;
    let keys: Vec<String> = (0..12)
        .map(|i| format!("{}:k{{{i}}}", app.prefix))
        .collect();
    let owners = futures_util::future::try_join_all(keys.iter().map(|k| cluster.owner_of(k)));
    let owners: std::collections::HashSet<u16> = owners.await?.into_iter().collect();
    assert!(
        owners.len() >= 2,
        "the keys are on several masters: {owners:?}"
    );
    for (i, key) in keys.iter().enumerate() {
        let mut set = redis::cmd("SET");
        set.arg(key).arg(i);
        redis.cmd::<()>(&set).await?;
    }
    let mut reads = redis::pipe();
    for key in &keys {
        reads.cmd("GET").arg(key);
    }
    let values: Vec<Option<u32>> = redis.pipe(&reads).await?;
    let expected: Vec<Option<u32>> = (0..12).map(Some).collect();
    assert_eq!(values, expected, "replies in the order of the commands");
    // With ignored replies (a batch of writes, as the audit trail sends): only the rest come
    // back, in order.
    let mut mixed = redis::pipe();
    for (i, key) in keys.iter().enumerate() {
        mixed.cmd("SET").arg(key).arg(i + 100).ignore();
        mixed.cmd("GET").arg(key);
    }
    let values: Vec<Option<u32>> = redis.pipe(&mixed).await?;
    let expected: Vec<Option<u32>> = (100..112).map(Some).collect();
    assert_eq!(values, expected, "the ignored replies are dropped");

    let mut transaction = redis::pipe();
    transaction.atomic();
    for key in &keys {
        transaction.cmd("GET").arg(key);
    }
    let refused = redis.pipe::<Vec<Option<u32>>>(&transaction).await;
    assert!(refused.is_err(), "a transaction across slots: {refused:?}");

    let script = redis::Script::new("return redis.call('GET', KEYS[2])");
    let mut invocation = script.key(&keys[0]);
    for key in &keys[1..] {
        invocation.key(key);
    }
    let refused = redis.script::<Option<u32>>(&invocation).await;
    let err = format!("{:?}", refused.expect_err("a script across slots"));
    assert!(
        err.contains("CROSSSLOT") || err.contains("CrossSlot"),
        "{err}"
    );
    let stats = cluster.error_stats().await?;
    assert!(
        stats.iter().any(|s| s.contains("errorstat_CROSSSLOT")),
        "{stats:?}"
    );
    Ok(())
}

/// Writes to keys on every master through the store's client, until they all succeed.
async fn wait_writable(redis: &agentfleet_common::store::Redis, what: &str) -> anyhow::Result<()> {
    wait_until(Duration::from_secs(30), what, || async {
        for i in 0..12 {
            let mut set = redis::cmd("SET");
            set.arg(format!("aftest-outage:k{{{i}}}"))
                .arg(i)
                .arg("EX")
                .arg(60);
            redis.cmd::<()>(&set).await.ok()?;
        }
        Some(())
    })
    .await
}

/// A process whose cluster is down when it starts, or goes down whole later, fails its
/// commands meanwhile and works again once the nodes are back: the client redials from the
/// configured nodes by itself (nothing of ours to reset, unlike Sentinel's master).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_comes_back_after_the_whole_cluster_was_down() -> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    let mut cluster = ClusterRedis::start(3, 0).await?;
    let config: agentfleet_common::config::RedisConfig = serde_json::from_value(json!({
        "cluster": { "nodes": cluster.node_urls() },
        "prefix": "aftest-outage",
    }))?;
    for port in cluster.ports() {
        cluster.kill(port)?;
    }
    let redis = agentfleet_common::store::Redis::connect(&config)?;
    assert!(redis.ping().await.is_err(), "nothing answers yet");
    for port in cluster.ports() {
        cluster.restart(port).await?;
    }
    let restarted = Instant::now();
    wait_writable(&redis, "writes after starting while the cluster was down").await?;
    let first = restarted.elapsed();

    for port in cluster.ports() {
        cluster.kill(port)?;
    }
    assert!(redis.ping().await.is_err(), "the cluster is down");
    for port in cluster.ports() {
        cluster.restart(port).await?;
    }
    let restarted = Instant::now();
    wait_writable(&redis, "writes after the whole cluster restarted").await?;
    println!(
        "redis cluster down whole: writable {first:?} after the restart (started while down), {:?} \
         (down while running)",
        restarted.elapsed()
    );
    Ok(())
}

/// Half the slots of the master holding acme's keys move to another master (`redis-cli
/// --cluster reshard`, keys and all) while 100 jobs are submitted and run: the clients follow
/// the slots (`ASK` while a slot migrates, `MOVED` after), no submission is refused, and no
/// accepted job is lost — each succeeds, once, and its webhook arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slots_moved_mid_run_lose_no_accepted_job_on_a_cluster() -> anyhow::Result<()> {
    reshard_mid_run(0, "").await
}

/// The same with a replica each and `min_replicas_acked: 1`, where a job's `MULTI`/`EXEC` goes
/// in one plain pipeline with its `WAIT`: the client sends such a pipeline again on a
/// redirection by itself (measured: 7 transactions aborted in a run, no 503, with the store's
/// own resending turned off).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slots_moved_mid_run_lose_no_acknowledged_job_on_a_cluster() -> anyhow::Result<()> {
    reshard_mid_run(1, ", min_replicas_acked: 1, wait_timeout_ms: 500").await
}

async fn reshard_mid_run(replicas: usize, redis_extra: &str) -> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    let cluster = ClusterRedis::start(3, replicas).await?;
    let app = spawn_for_churn(&cluster, redis_extra).await?;
    let from = cluster
        .owner_of(&app.names().idempotency_key("acme", "any"))
        .await?;
    let masters = cluster.masters().await?;
    let to = masters
        .iter()
        .filter_map(|url| url.rsplit(':').next()?.parse::<u16>().ok())
        .find(|&port| port != from)
        .context("a second master")?;
    let before = cluster.slots_of(from).await?;

    let n = 100;
    let (tally, rejected, resharded) =
        submit_across_a_reshard(&app, &cluster, (from, to), n).await?;
    let ids = tally.accepted;
    let succeeded = succeeded_and_delivered(&app, &ids).await?;
    let after = cluster.slots_of(from).await?;
    let calls = app.llm.calls_per_job();
    let repeated = ids.iter().filter(|id| calls.get(*id) != Some(&1)).count();
    let stats = cluster.error_stats().await?;
    println!(
        "redis cluster reshard (replicas {replicas}{redis_extra}; {} slots from {from} to {to} in {resharded:?}, {before} → {after}): \
         accepted {} of {n} (keys stuck at 409: {}), 503s {rejected}, succeeded {succeeded}, \
         webhooks {}, jobs not called exactly once {repeated}; transactions aborted by a moved \
         slot (and sent again) {}",
        before / 2,
        ids.len(),
        tally.stuck_keys,
        app.receiver.count(),
        aborted_transactions(&stats),
    );
    assert_eq!(after, before - before / 2, "the reshard moved the slots");
    // A job's MULTI sent to its slot's old owner is aborted; the store sends it again.
    assert_eq!(
        rejected, 0,
        "no submission was refused while the slots moved"
    );
    assert_eq!(ids.len(), n as usize, "every submission was accepted");
    assert_eq!(succeeded, ids.len(), "every accepted job succeeded");
    assert_eq!(repeated, 0, "each job called its model once: {calls:?}");
    assert_eq!(
        app.llm.double_runs(),
        0,
        "no job ran on two workers at once"
    );
    assert!(!stats.iter().any(|s| s.contains("CROSSSLOT")), "{stats:?}");
    Ok(())
}

/// Submits `n` jobs 40 ms apart and, a fifth of the way through, moves half of `from`'s
/// slots to `to`; answers the submissions' ends, the 503s met on the way, and how long the
/// reshard took.
async fn submit_across_a_reshard(
    app: &TestApp,
    cluster: &ClusterRedis,
    (from, to): (u16, u16),
    n: u32,
) -> anyhow::Result<(Tally, usize, Duration)> {
    let spacing = Duration::from_millis(40);
    let started = Instant::now();
    let rejected = Rejections::default();
    let submitter = submit_spaced(app, n, spacing, &rejected);
    let reshard = async {
        tokio::time::sleep_until((started + spacing * (n / 5)).into()).await;
        let slots = cluster.slots_of(from).await? / 2;
        cluster
            .reshard(from, to, u32::try_from(slots)?, Duration::from_secs(120))
            .await
    };
    let (submitted, resharded) = tokio::join!(submitter, reshard);
    let tally = submitted?;
    let rejected = rejected
        .into_inner()
        .unwrap_or_else(|p| p.into_inner())
        .len();
    Ok((tally, rejected, resharded?))
}

/// The `EXECABORT`s every node counted (`errorstat_EXECABORT:count=5` lines).
fn aborted_transactions(stats: &[String]) -> u64 {
    stats
        .iter()
        .filter_map(|s| {
            s.split_once("errorstat_EXECABORT:count=")?
                .1
                .parse::<u64>()
                .ok()
        })
        .sum()
}
