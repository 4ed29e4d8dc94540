//! Tenants sharing the fleet: fairness inside one agent, quotas at the dispatcher and in the
//! workers, and the per-replica limiters at the edges.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use agentfleet_stub::llm::Behavior;
use agentfleet_tests::{wait_until, AgentSpec, AppOptions, TestApp};

fn finished_at(record: &Value) -> DateTime<Utc> {
    record["finished_at"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("a terminal record has finished_at")
}

/// How many of `backlog` finished before the last of `few` did.
fn finished_before_last(backlog: &[Value], few: &[Value]) -> usize {
    let last = few.iter().map(finished_at).max().expect("some jobs");
    backlog.iter().filter(|r| finished_at(r) < last).count()
}

/// Tenant A queues 60 jobs, then B queues 6, on two agents served by three worker processes:
/// on the agent with per-tenant queues (the default) B's six are done after a handful of A's;
/// on the `fifo` agent they wait behind A's whole backlog — the control that shows the
/// measurement can tell the two apart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenants_backlog_does_not_hold_up_another_tenants_few_jobs() -> anyhow::Result<()> {
    let mut fair = AgentSpec::new("fair");
    fair.concurrency = 2;
    let mut fifo = AgentSpec::new("fifo");
    fifo.concurrency = 2;
    fifo.fairness = Some("fifo");
    let mut app = TestApp::spawn(AppOptions {
        agents: vec![fair, fifo],
        workers: 0,
        behavior: Behavior {
            latency: Duration::from_millis(60),
            ..Behavior::default()
        },
        ..AppOptions::default()
    })
    .await?;
    let (a, b) = (app.acme.clone(), app.globex.clone());
    let mut ids: Vec<(Vec<String>, Vec<String>)> = Vec::new();
    for agent in ["fair", "fifo"] {
        let mut backlog = Vec::new();
        for i in 0..60 {
            backlog.push(app.submit_for(&a, agent, &format!("a{i}")).await?);
        }
        let mut few = Vec::new();
        for i in 0..6 {
            few.push(app.submit_for(&b, agent, &format!("b{i}")).await?);
        }
        ids.push((backlog, few));
    }
    for _ in 0..3 {
        app.start_worker_process(crate::WORKER_BIN)?;
    }
    let mut before = Vec::new();
    for (backlog, few) in &ids {
        let backlog = app.wait_terminal(backlog, Duration::from_secs(60)).await?;
        let few = app.wait_terminal(few, Duration::from_secs(60)).await?;
        assert!(backlog
            .iter()
            .chain(&few)
            .all(|r| r["status"] == "succeeded"));
        before.push(finished_before_last(&backlog, &few));
    }
    let (fair, fifo) = (before[0], before[1]);
    assert!(
        fair <= 20,
        "B's last job finished after {fair} of A's on the fair agent"
    );
    assert!(
        fifo >= 40,
        "the fifo control should make B wait behind A's backlog ({fifo} of A's first)"
    );
    Ok(())
}

/// `max_running_jobs: 2` holds across three worker processes with room for twelve: the stub
/// never sees more than two of the tenant's calls at once (and does see two), while another
/// tenant's jobs on another agent are not held to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenants_running_quota_holds_across_the_fleet() -> anyhow::Result<()> {
    let mut quoted = AgentSpec::new("quoted");
    quoted.concurrency = 4;
    let mut free = AgentSpec::new("free");
    free.concurrency = 4;
    let (quoted_model, free_model) = (quoted.model(), free.model());
    let mut app = TestApp::spawn(AppOptions {
        agents: vec![quoted, free],
        workers: 0,
        behavior: Behavior {
            latency: Duration::from_millis(200),
            ..Behavior::default()
        },
        tenant_settings: vec![("acme", "quotas: { max_running_jobs: 2 }".into())],
        ..AppOptions::default()
    })
    .await?;
    for _ in 0..3 {
        app.start_worker_process(crate::WORKER_BIN)?;
    }
    let (a, b) = (app.acme.clone(), app.globex.clone());
    let mut quoted_ids = Vec::new();
    let mut free_ids = Vec::new();
    for i in 0..10 {
        quoted_ids.push(app.submit_for(&a, "quoted", &format!("a{i}")).await?);
        free_ids.push(app.submit_for(&b, "free", &format!("b{i}")).await?);
    }
    // Caught waiting at least once: the record says why.
    let waiting = wait_until(
        Duration::from_secs(20),
        "a job waiting on the quota",
        || async {
            for id in &quoted_ids {
                let record = app.job(id).await.ok()?;
                if record["waiting"]["reason"] == "tenant_quota" {
                    return Some(record);
                }
            }
            None
        },
    )
    .await?;
    assert_eq!(waiting["status"], "queued");
    let all: Vec<String> = quoted_ids.iter().chain(&free_ids).cloned().collect();
    let records = app.wait_terminal(&all, Duration::from_secs(60)).await?;
    assert!(records.iter().all(|r| r["status"] == "succeeded"));
    assert_eq!(app.llm.peak_in_flight(&quoted_model), 2);
    assert!(
        app.llm.peak_in_flight(&free_model) > 2,
        "the other tenant is not held to acme's quota"
    );
    Ok(())
}

/// `submissions_per_minute: 12` (a burst of two): the third POST is refused with 429, a
/// problem naming the limit and a `Retry-After`, and stores nothing; another tenant is not
/// affected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submissions_over_a_tenants_quota_are_refused_with_retry_after() -> anyhow::Result<()> {
    let app = TestApp::spawn(AppOptions {
        workers: 0,
        tenant_settings: vec![("acme", "quotas: { submissions_per_minute: 12 }".into())],
        ..AppOptions::default()
    })
    .await?;
    let body = json!({"agent": "summarize", "input": "x"});
    for _ in 0..2 {
        assert_eq!(app.submit_as(&app.acme, &body).await.status(), 202);
    }
    let keys = app.job_keys().await?.len();
    let refused = app.submit_as(&app.acme, &body).await;
    assert_eq!(refused.status(), 429);
    let retry_after: u64 = refused.headers()["retry-after"].to_str()?.parse()?;
    assert!((1..=5).contains(&retry_after), "Retry-After {retry_after}");
    let problem: Value = refused.json().await?;
    assert_eq!(problem["type"], "urn:agentfleet:problem:tenant-quota");
    assert_eq!(problem["limit"], "submissions_per_minute");
    assert_eq!(
        app.job_keys().await?.len(),
        keys,
        "the refused job stored nothing"
    );
    assert_eq!(app.submit_as(&app.globex, &body).await.status(), 202);
    let rejected = app.dispatcher_metrics.render();
    assert!(
        rejected.contains(r#"agentfleet_jobs_rejected_total{reason="submissions_per_minute"} 1"#),
        "{rejected}"
    );
    Ok(())
}

/// `max_queued_jobs: 3`: the fourth job is refused while three wait, the per-tenant depth is
/// exported, and once a worker drains the queue the tenant may submit again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenants_queued_jobs_quota_refuses_then_recovers() -> anyhow::Result<()> {
    let mut app = TestApp::spawn(AppOptions {
        workers: 0,
        tenant_settings: vec![("acme", "quotas: { max_queued_jobs: 3 }".into())],
        ..AppOptions::default()
    })
    .await?;
    let body = json!({"agent": "summarize", "input": "x"});
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(
            app.submit_for(&app.acme, "summarize", &format!("{i}"))
                .await?,
        );
    }
    let refused = app.submit_as(&app.acme, &body).await;
    assert_eq!(refused.status(), 429);
    let problem: Value = refused.json().await?;
    assert_eq!(problem["limit"], "max_queued_jobs");
    assert_eq!(app.submit_as(&app.globex, &body).await.status(), 202);
    wait_until(
        Duration::from_secs(10),
        "per-tenant depth exported",
        || async {
            let text = app.dispatcher_metrics.render();
            text.contains(r#"agentfleet_queue_depth{agent="summarize",tenant="acme"} 3"#)
                .then_some(())
        },
    )
    .await?;

    app.start_worker().await?;
    app.wait_terminal(&ids, Duration::from_secs(20)).await?;
    wait_until(Duration::from_secs(10), "acme may submit again", || async {
        (app.submit_as(&app.acme, &body).await.status() == 202).then_some(())
    })
    .await?;
    let worker = app.worker_metrics(0).expect("worker").render();
    assert!(
        worker.contains(r#"agentfleet_queue_wait_seconds_count{agent="summarize",tenant="acme"}"#),
        "queue wait exported per tenant"
    );
    Ok(())
}

/// `dispatcher.per_key_rate` (1/s, burst 3): a fourth POST in the same instant is refused
/// before its body is read, per key; a bad key is still a 401.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_from_one_key_is_refused_at_the_edge() -> anyhow::Result<()> {
    let app = TestApp::spawn(AppOptions {
        workers: 0,
        per_key_rate: Some((1, 3)),
        ..AppOptions::default()
    })
    .await?;
    let body = json!({"agent": "summarize", "input": "x"});
    for _ in 0..3 {
        assert_eq!(app.submit_as(&app.acme, &body).await.status(), 202);
    }
    let refused = app.submit_as(&app.acme, &body).await;
    assert_eq!(refused.status(), 429);
    assert_eq!(refused.headers()["retry-after"], "1");
    let problem: Value = refused.json().await?;
    assert_eq!(problem["type"], "urn:agentfleet:problem:rate-limited");
    assert_eq!(app.submit_as(&app.globex, &body).await.status(), 202);
    let stranger = app
        .http
        .post(app.url("/v1/jobs"))
        .bearer_auth("not-a-key")
        .json(&body)
        .send()
        .await?;
    assert_eq!(stranger.status(), 401);
    Ok(())
}

/// `webhooks.per_host_rate` (2/s, burst 1): six events for one receiver arrive at least
/// ~2.5 s apart end to end, every one of them, and the throttling is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_to_one_host_keep_the_per_host_rate() -> anyhow::Result<()> {
    let app = TestApp::spawn(AppOptions {
        workers: 1,
        webhook_per_host_rate: Some((2, 1)),
        ..AppOptions::default()
    })
    .await?;
    let mut ids = Vec::new();
    for i in 0..6 {
        ids.push(app.submit_job("summarize", &format!("{i}")).await?);
    }
    app.wait_terminal(&ids, Duration::from_secs(20)).await?;
    app.wait_webhooks(6, Duration::from_secs(20)).await?;
    let mut times: Vec<_> = app.receiver.deliveries().iter().map(|d| d.at).collect();
    times.sort();
    let span = times[5].duration_since(times[0]);
    assert!(
        span >= Duration::from_millis(2_300),
        "six deliveries at 2/s took {span:?}"
    );
    let metrics = app.worker_metrics(0).expect("worker").render();
    assert!(
        metrics.contains(r#"agentfleet_webhook_deliveries_total{status="throttled"}"#),
        "{metrics}"
    );
    Ok(())
}

/// A daily budget of 0.2 USD with calls that cost 0.008 (8 tokens at 1,000 USD/M) but reserve
/// up to 0.064 (`max_tokens` 64) holds across three worker processes: what the calls cost
/// never passes it, the jobs that do not fit wait with `waiting.reason = budget` (a pause,
/// not a failure), a POST is then refused with 402, the spend is exported — and once the
/// ledger resets (as at midnight) the waiting jobs resume and finish.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenants_daily_budget_pauses_its_runs_across_the_fleet() -> anyhow::Result<()> {
    let mut priced = AgentSpec::new("priced");
    priced.price = Some((0.0, 1_000.0));
    priced.concurrency = 2;
    let mut app = TestApp::spawn(AppOptions {
        agents: vec![priced],
        workers: 0,
        tenant_settings: vec![("acme", "budget: { daily_usd: 0.2 }".into())],
        budget_recheck_secs: 1,
        ..AppOptions::default()
    })
    .await?;
    let acme = app.acme.clone();
    let mut first = Vec::new();
    for i in 0..30 {
        first.push(app.submit_for(&acme, "priced", &format!("{i}")).await?);
    }
    let ids = std::sync::Mutex::new(first);
    for _ in 0..3 {
        app.start_worker_process(crate::WORKER_BIN)?;
    }
    // Once no call fits, the dispatcher refuses more (those accepted meanwhile wait too).
    let refused = wait_until(
        Duration::from_secs(30),
        "a 402 once the budget is spent",
        || async {
            let response = app
                .submit_as(&acme, &json!({"agent": "priced", "input": "one more"}))
                .await;
            if response.status() == 402 {
                return Some(response);
            }
            let id = response.json::<Value>().await.ok()?["id"]
                .as_str()?
                .to_owned();
            ids.lock().ok()?.push(id);
            None
        },
    )
    .await?;
    assert!(refused.headers().contains_key("retry-after"));
    let problem: Value = refused.json().await?;
    assert_eq!(problem["type"], "urn:agentfleet:problem:budget-exhausted");
    assert!(problem["resets_at"].is_string());
    let ids = ids.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.clone();
    let settled = wait_until(
        Duration::from_secs(30),
        "every job done or waiting for budget",
        || async {
            let mut records = Vec::new();
            for id in &ids {
                let record = app.job(id).await.ok()?;
                let waiting = record["waiting"]["reason"] == "budget";
                if record["status"] != "succeeded" && !waiting {
                    return None;
                }
                records.push(record);
            }
            let succeeded = records
                .iter()
                .filter(|r| r["status"] == "succeeded")
                .count();
            (app.llm.call_count() == succeeded).then_some(records)
        },
    )
    .await?;
    let succeeded = settled
        .iter()
        .filter(|r| r["status"] == "succeeded")
        .count();
    let spent: f64 = settled.iter().filter_map(|r| r["cost_usd"].as_f64()).sum();
    assert!(
        succeeded >= 1 && succeeded < ids.len(),
        "{succeeded} succeeded"
    );
    assert!(
        spent <= 0.2 + 1e-9,
        "the calls cost {spent} USD of a 0.2 budget"
    );

    let line = r#"agentfleet_tenant_spend_usd{tenant="acme"} "#;
    wait_until(Duration::from_secs(5), "spend exported", || async {
        app.dispatcher_metrics
            .render()
            .lines()
            .find_map(|l| l.strip_prefix(line)?.parse::<f64>().ok())
            .filter(|usd| (usd - spent).abs() < 1e-6)
    })
    .await?;

    // Midnight: the day's ledger is gone, and the paused jobs go on.
    let today = chrono::Utc::now().format("%Y-%m-%d").to_string();
    let ledger = app.names().spend_key(
        agentfleet_common::naming::SpendOwner::Tenant("acme"),
        &today,
    );
    let mut redis = app.redis().await?;
    let _: () = redis::cmd("DEL")
        .arg(&ledger)
        .query_async(&mut redis)
        .await?;
    let after = wait_until(
        Duration::from_secs(20),
        "paused jobs resumed after the reset",
        || async {
            let mut records = Vec::new();
            for id in &ids {
                records.push(app.job(id).await.ok()?);
            }
            let more = records
                .iter()
                .filter(|r| r["status"] == "succeeded")
                .count();
            (more > succeeded).then_some(records)
        },
    )
    .await?;
    assert!(
        after.iter().all(|r| r["status"] != "failed"),
        "a budget is a pause, never a failure"
    );
    Ok(())
}

/// Limits change without a restart: the dispatcher takes a raised submissions quota from a
/// reloaded configuration, a worker process takes a raised running quota on SIGHUP (from its
/// rewritten file), and a reload that adds a tenant is refused whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quotas_change_on_reload_without_a_restart() -> anyhow::Result<()> {
    let mut slow = AgentSpec::new("slow");
    slow.concurrency = 8;
    let model = slow.model();
    let mut app = TestApp::spawn(AppOptions {
        agents: vec![slow],
        workers: 0,
        behavior: Behavior {
            latency: Duration::from_millis(300),
            ..Behavior::default()
        },
        tenant_settings: vec![(
            "acme",
            "quotas: { max_running_jobs: 1, submissions_per_minute: 6 }".into(),
        )],
        ..AppOptions::default()
    })
    .await?;
    let pid = app.start_worker_process(crate::WORKER_BIN)?;
    let acme = app.acme.clone();
    let mut ids = vec![app.submit_for(&acme, "slow", "0").await?];
    let refused = app
        .submit_as(&acme, &json!({"agent": "slow", "input": "1"}))
        .await;
    assert_eq!(refused.status(), 429, "6 a minute: a burst of one");

    let raised = app
        .config_yaml
        .replace("submissions_per_minute: 6", "submissions_per_minute: 600")
        .replace("max_running_jobs: 1", "max_running_jobs: 4");
    let config = agentfleet_common::config::Config::from_yaml(&raised)?;
    app.dispatcher_reloader.apply(config)?;
    // Eleven more within 15 s, where the old quota would let in one per ten seconds. (The
    // bucket's time already spent under the old rate is paid at the new one: at most the old
    // burst's ten seconds.)
    let raised_at = std::time::Instant::now();
    for i in 1..12 {
        let id = wait_until(
            Duration::from_secs(15),
            "a submission under the new quota",
            || async {
                let response = app
                    .submit_as(&acme, &json!({"agent": "slow", "input": format!("{i}")}))
                    .await;
                let body: Value = response.json().await.ok()?;
                body["id"].as_str().map(str::to_owned)
            },
        )
        .await?;
        ids.push(id);
    }
    assert!(raised_at.elapsed() < Duration::from_secs(15));
    wait_until(
        Duration::from_secs(20),
        "a few jobs done one at a time",
        || async {
            let done = app.llm.call_count() >= 3;
            done.then_some(())
        },
    )
    .await?;
    assert_eq!(
        app.llm.peak_in_flight(&model),
        1,
        "one at a time before the reload"
    );

    app.config_yaml = raised;
    app.write_config_file("worker")?;
    app.hang_up_worker_process(pid)?;
    app.wait_terminal(&ids, Duration::from_secs(60)).await?;
    let peak = app.llm.peak_in_flight(&model);
    assert!(
        peak > 1 && peak <= 4,
        "after the reload, up to four at once ({peak})"
    );

    let with_new_tenant = app.config_yaml.replace(
        "tenants:\n",
        "tenants:\n  - { id: newcomer, api_key_sha256: \"0000000000000000000000000000000000000000000000000000000000000000\" }\n",
    );
    let err = app
        .dispatcher_reloader
        .apply(agentfleet_common::config::Config::from_yaml(
            &with_new_tenant,
        )?)
        .expect_err("adding a tenant needs a restart");
    assert!(err.to_string().contains("tenants"), "{err}");
    Ok(())
}
