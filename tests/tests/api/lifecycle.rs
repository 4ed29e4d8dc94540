use serde_json::Value;
use std::time::Duration;

use agentfleet_stub::llm::Behavior;
use agentfleet_tests::{AgentSpec, AppOptions, TestApp};

/// SIGTERM-equivalent: the worker stops consuming, lets the runs in flight finish, and
/// returns well before its grace period.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_finishes_runs_in_flight() -> anyhow::Result<()> {
    let mut app = TestApp::spawn(AppOptions {
        workers: 1,
        shutdown_grace_secs: 20,
        behavior: Behavior {
            latency: Duration::from_millis(1500),
            ..Behavior::default()
        },
        ..AppOptions::default()
    })
    .await?;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(app.submit_job("summarize", &format!("job {i}")).await?);
    }
    let model = app.config.agents["summarize"].model.clone();
    app.wait_calls_in_flight(&model, 5, Duration::from_secs(10))
        .await?;
    let took = app.stop_worker(0).await?;
    assert!(took < Duration::from_secs(10), "stopped in {took:?}");
    // Finished by the stopping worker itself: no other worker is running.
    app.wait_succeeded(&ids, Duration::from_secs(5)).await?;
    Ok(())
}

/// A delivery still waiting for a call slot when shutdown begins goes back to the queue at
/// once, untouched (still `queued`), instead of being started during the grace period.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_waiting_for_a_slot_go_back_at_shutdown() -> anyhow::Result<()> {
    let mut single = AgentSpec::new("single");
    single.concurrency = 1;
    let model = single.model();
    let mut app = TestApp::spawn(AppOptions {
        agents: vec![single],
        workers: 1,
        shutdown_grace_secs: 20,
        behavior: Behavior {
            latency: Duration::from_millis(1500),
            ..Behavior::default()
        },
        ..AppOptions::default()
    })
    .await?;
    let running = app.submit_job("single", "first").await?;
    app.wait_calls_in_flight(&model, 1, Duration::from_secs(10))
        .await?;
    let waiting = app.submit_job("single", "second").await?;
    // The worker's prefetch (two, for one slot) has taken it: nothing is ready in the queue.
    agentfleet_tests::wait_until(Duration::from_secs(10), "second delivered", || async {
        (app.agent_queue_depth("single").await.ok()? == 0).then_some(())
    })
    .await?;
    app.stop_worker(0).await?;
    assert_eq!(app.job(&running).await?["status"], "succeeded");
    assert_eq!(app.job(&waiting).await?["status"], "queued");
    assert_eq!(app.llm.calls_per_job().get(&waiting), None);
    app.start_worker().await?;
    let records = app
        .wait_terminal(std::slice::from_ref(&waiting), Duration::from_secs(30))
        .await?;
    assert_eq!(records[0]["status"], "succeeded");
    Ok(())
}

/// A run that outlives the grace period goes back to the queue and another worker finishes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_past_the_grace_period_are_requeued() -> anyhow::Result<()> {
    let mut app = TestApp::spawn(AppOptions {
        workers: 1,
        shutdown_grace_secs: 1,
        behavior: Behavior {
            latency: Duration::from_secs(4),
            ..Behavior::default()
        },
        ..AppOptions::default()
    })
    .await?;
    let id = app.submit_job("summarize", "slow").await?;
    let model = app.config.agents["summarize"].model.clone();
    app.wait_calls_in_flight(&model, 1, Duration::from_secs(10))
        .await?;
    let took = app.stop_worker(0).await?;
    assert!(
        took < Duration::from_secs(4),
        "did not wait for the run: {took:?}"
    );
    assert_ne!(app.job(&id).await?["status"], "succeeded");
    app.start_worker().await?;
    let records = app
        .wait_terminal(std::slice::from_ref(&id), Duration::from_secs(30))
        .await?;
    assert_eq!(records[0]["status"], "succeeded");
    assert_eq!(app.llm.calls_per_job().get(&id), Some(&2));
    Ok(())
}

/// A worker process SIGKILLed in the middle of runs loses none of them: the broker redelivers
/// the unacked messages to the next worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_run_loses_no_job() -> anyhow::Result<()> {
    let mut app = TestApp::spawn(AppOptions {
        workers: 0,
        behavior: Behavior {
            latency: Duration::from_secs(2),
            ..Behavior::default()
        },
        ..AppOptions::default()
    })
    .await?;
    let pid = app.start_worker_process(crate::WORKER_BIN)?;
    let mut ids = Vec::new();
    for i in 0..8 {
        ids.push(app.submit_job("summarize", &format!("job {i}")).await?);
    }
    let model = app.config.agents["summarize"].model.clone();
    app.wait_calls_in_flight(&model, 8, Duration::from_secs(20))
        .await?;
    app.kill_worker_process(pid)?;
    app.start_worker().await?;
    app.wait_succeeded(&ids, Duration::from_secs(30)).await?;
    app.wait_webhooks(8, Duration::from_secs(20)).await?;
    let calls = app.llm.calls_per_job();
    assert!(
        ids.iter().all(|id| calls.get(id) == Some(&2)),
        "each job ran on both workers: {calls:?}"
    );
    Ok(())
}

/// The worker binary refuses an invalid config before binding anything, naming the key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_config_exits_nonzero_naming_the_key() -> anyhow::Result<()> {
    let mut app = TestApp::spawn(AppOptions {
        workers: 0,
        ..AppOptions::default()
    })
    .await?;
    app.config_yaml = app
        .config_yaml
        .replace("    concurrency: 16\n", "    concurrency: 0\n");
    let path = app.write_config_file("bad")?;
    let output = std::process::Command::new(crate::WORKER_BIN)
        .arg("--config")
        .arg(&path)
        .envs(app.worker_env())
        .output()?;
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("agents.summarize.concurrency"), "{stderr}");
    Ok(())
}

/// A `worker.extra_ca_file` that is missing or holds no certificate stops the worker at start,
/// naming the key and the path, rather than failing every provider call later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_extra_ca_file_stops_the_worker_naming_it() -> anyhow::Result<()> {
    let mut app = TestApp::spawn(AppOptions {
        workers: 0,
        ..AppOptions::default()
    })
    .await?;
    let path = app.write_config_file("roots")?;
    let missing = "/nonexistent/agentfleet-ca.pem".to_owned();
    // The config file itself: YAML, not a certificate.
    let not_pem = path.display().to_string();
    for (file, why) in [(missing, "No such file"), (not_pem, "no certificate")] {
        let output = std::process::Command::new(crate::WORKER_BIN)
            .arg("--config")
            .arg(&path)
            .envs(app.worker_env())
            .env("AGENTFLEET__WORKER__EXTRA_CA_FILE", &file)
            .output()?;
        assert!(!output.status.success());
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains(&format!("worker.extra_ca_file `{file}`")) && stderr.contains(why),
            "{stderr}"
        );
    }
    Ok(())
}

/// Any key can be overridden from the environment (`AGENTFLEET__SECTION__KEY`), and an
/// overridden value is validated like a file value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn environment_overrides_are_applied_and_validated() -> anyhow::Result<()> {
    let mut app = TestApp::spawn(AppOptions {
        workers: 0,
        ..AppOptions::default()
    })
    .await?;
    let path = app.write_config_file("env")?;
    let output = std::process::Command::new(crate::WORKER_BIN)
        .arg("--config")
        .arg(&path)
        .envs(app.worker_env())
        .env("AGENTFLEET__AGENTS__SUMMARIZE__TIMEOUT_SECS", "0")
        .output()?;
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("agents.summarize.timeout_secs"), "{stderr}");
    let output = std::process::Command::new(crate::WORKER_BIN)
        .arg("--config")
        .arg(&path)
        .env("AGENTFLEET__WORKER__SHUTDOWN_GRACE_SECS", "soon")
        .output()?;
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("shutdown_grace_secs"), "{stderr}");
    Ok(())
}

/// A finished job whose webhook was delivered keeps one key, sealed into one string: the
/// record and then the step log, a line each — and nothing it no longer needs: no lease,
/// fencing-token counter, input, webhook URL or hand-off note. It reads back as it was, and
/// expires as a whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_job_keeps_one_key_and_only_what_it_still_needs() -> anyhow::Result<()> {
    let app = TestApp::spawn(AppOptions::default()).await?;
    let id = app.submit_job("summarize", "a short one").await?;
    let record = agentfleet_tests::wait_until(
        Duration::from_secs(15),
        "the job's webhook delivered and noted",
        || async {
            let record = app.job(&id).await.ok()?;
            (record["webhook"]["outcome"] == "delivered").then_some(record)
        },
    )
    .await?;
    assert_eq!(record["status"], "succeeded");
    assert_eq!(record["id"], id.as_str(), "the id comes back from the key");

    let uuid: uuid::Uuid = id.parse()?;
    let job_key = app.names().job_key(uuid);
    let mut redis = app.redis().await?;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{}:*{id}*", app.prefix))
        .query_async(&mut redis)
        .await?;
    assert_eq!(keys, vec![job_key.clone()], "the job's keys");
    let sealed: String = redis::cmd("GET")
        .arg(&job_key)
        .query_async(&mut redis)
        .await?;
    let lines: Vec<Value> = sealed
        .split('\n')
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    assert_eq!(lines.len(), 2, "the record and one step: {sealed}");
    assert_eq!(lines[0]["status"], "succeeded");
    assert_eq!(lines[0]["webhook"]["outcome"], "delivered");
    assert_eq!(lines[1]["kind"], "model");
    for derived in ["id", "seq"] {
        assert!(
            lines.iter().all(|line| line.get(derived).is_none()),
            "`{derived}` is not stored: {sealed}"
        );
    }

    let again = app.job_with_steps(&id).await?;
    let steps = again["steps"].as_array().cloned().unwrap_or_default();
    assert_eq!(steps.len(), 1, "{again}");
    assert_eq!(steps[0]["seq"], 0);
    assert_eq!(steps[0]["cached"], false);
    let mut without_steps = again.clone();
    if let Some(fields) = without_steps.as_object_mut() {
        fields.remove("steps");
    }
    assert_eq!(without_steps, record, "the sealed job reads back as it was");

    // Without a webhook nothing waits on the job once it ended: its end seals it.
    let quiet = app.submit_for(&app.acme, "summarize", "no webhook").await?;
    let ended = app
        .wait_terminal(std::slice::from_ref(&quiet), Duration::from_secs(15))
        .await?
        .remove(0);
    assert_eq!(ended["status"], "succeeded");
    let kind: String = redis::cmd("TYPE")
        .arg(app.names().job_key(quiet.parse()?))
        .query_async(&mut redis)
        .await?;
    assert_eq!(kind, "string", "sealed by its terminal write");
    assert_eq!(app.job(&quiet).await?, ended);
    let ttl: i64 = redis::cmd("TTL")
        .arg(&job_key)
        .query_async(&mut redis)
        .await?;
    let configured = app.config.redis.result_ttl.as_secs() as i64;
    assert!(ttl > 0 && ttl <= configured, "TTL {ttl} of {configured}");
    let bytes: u64 = redis::cmd("MEMORY")
        .arg("USAGE")
        .arg(&job_key)
        .arg("SAMPLES")
        .arg(0)
        .query_async(&mut redis)
        .await?;
    println!("a finished single-call job takes {bytes} B in Redis");
    Ok(())
}
