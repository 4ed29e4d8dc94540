//! Issue 12, part 6: several jobs of one queue in one broker message (`JobBatch`). A worker
//! runs each job once, under its own slots; a job that cannot start in time goes back on its
//! own; a batch delivered again is split; a batch no worker could read is dead-lettered.
//!
//! The worker's half: jobs are submitted through the dispatcher with no worker running, taken
//! off their queue, and published again as one batch. The dispatcher's half
//! (`dispatcher.batch_jobs`): bursts of submissions.

use std::time::Duration;

use serde_json::{json, Value};

use agentfleet_common::wire::JobBatch;
use agentfleet_stub::llm::Behavior;
use agentfleet_tests::proxy::Proxy;
use agentfleet_tests::{wait_until, AgentSpec, AppOptions, TestApp};

/// The app with no worker running, `n` jobs submitted for acme, and their messages taken off
/// acme's queue and published again as one batch. Answers the job ids.
async fn batch_of(app: &TestApp, n: usize) -> anyhow::Result<Vec<String>> {
    let mut ids = Vec::new();
    for i in 0..n {
        ids.push(app.submit_job("summarize", &format!("job {i}")).await?);
    }
    let queue = app.names().tenant_queue("summarize", &app.acme.id);
    let jobs = app.take_queued_jobs(&queue).await?;
    assert_eq!(jobs.len(), n, "every job's message was on acme's queue");
    app.broker().publish_jobs(&JobBatch::new(jobs)?).await?;
    assert_eq!(
        app.queue_depth(&queue).await?,
        1,
        "one message for {n} jobs"
    );
    Ok(ids)
}

/// Like [`batch_of`], for several batches of acme's, published in order.
async fn batches_of(app: &TestApp, sizes: &[usize]) -> anyhow::Result<Vec<String>> {
    let total = sizes.iter().sum();
    let mut ids = Vec::new();
    for i in 0..total {
        ids.push(app.submit_job("summarize", &format!("job {i}")).await?);
    }
    let queue = app.names().tenant_queue("summarize", &app.acme.id);
    let mut jobs = app.take_queued_jobs(&queue).await?.into_iter();
    for &size in sizes {
        let batch = JobBatch::new(jobs.by_ref().take(size).collect())?;
        app.broker().publish_jobs(&batch).await?;
    }
    Ok(ids)
}

fn no_worker(agent: AgentSpec) -> AppOptions {
    AppOptions {
        workers: 0,
        agents: vec![agent],
        ..AppOptions::default()
    }
}

fn batched(app: &TestApp, outcome: &str) -> u64 {
    app.worker_metrics(0)
        .expect("worker 0")
        .batched_jobs
        .with_label_values(&[outcome])
        .get()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_runs_each_of_its_jobs_once() -> anyhow::Result<()> {
    let mut app = TestApp::spawn(no_worker(AgentSpec::new("summarize"))).await?;
    let ids = batch_of(&app, 5).await?;
    app.start_worker().await?;
    let records = app.wait_terminal(&ids, Duration::from_secs(20)).await?;
    for record in &records {
        assert_eq!(record["status"], "succeeded", "{record}");
    }
    for id in &ids {
        assert_eq!(app.llm.calls_for_job(id), 1, "job {id}'s model called once");
    }
    assert_eq!(app.llm.double_runs(), 0);
    app.wait_webhooks(5, Duration::from_secs(10)).await?;
    assert_eq!(batched(&app, "run"), 5);
    assert_eq!(batched(&app, "spilled") + batched(&app, "split"), 0);
    // The batch's message was acked once its jobs were done: nothing waits or comes back.
    let queue = app.names().tenant_queue("summarize", &app.acme.id);
    wait_until(Duration::from_secs(10), "the batch acked", || async {
        (app.queue_depth(&queue).await.ok()? == 0).then_some(())
    })
    .await?;
    Ok(())
}

/// A batch that comes back (its worker died or stopped) is split job by job: a job that ended
/// meanwhile is not run or published again, and the others run once each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_delivered_again_is_split_into_its_jobs() -> anyhow::Result<()> {
    let mut app = TestApp::spawn(no_worker(AgentSpec::new("summarize"))).await?;
    let ids = batch_of(&app, 3).await?;
    // One job ends before any worker sees the batch.
    let cancel = app.cancel(&ids[0]).await;
    assert!(cancel.status().is_success(), "{}", cancel.status());
    // Play a worker that took the batch and died: the broker delivers it again.
    let conn =
        lapin::Connection::connect(&app.amqp_url, lapin::ConnectionProperties::default()).await?;
    let channel = conn.create_channel().await?;
    let queue = app.names().tenant_queue("summarize", &app.acme.id);
    let delivery = channel
        .basic_get(
            queue.as_str().into(),
            lapin::options::BasicGetOptions::default(),
        )
        .await?
        .ok_or_else(|| anyhow::anyhow!("the batch is on acme's queue"))?;
    assert_eq!(
        delivery.properties.kind().as_ref().map(|k| k.as_str()),
        Some(JobBatch::KIND)
    );
    let _ = conn.close(200, "died".into()).await;

    app.start_worker().await?;
    let records = app.wait_terminal(&ids, Duration::from_secs(20)).await?;
    let statuses: Vec<_> = records.iter().map(|r| r["status"].clone()).collect();
    assert_eq!(statuses, ["cancelled", "succeeded", "succeeded"]);
    assert_eq!(
        app.llm.calls_for_job(&ids[0]),
        0,
        "the cancelled job did not run"
    );
    for id in &ids[1..] {
        assert_eq!(app.llm.calls_for_job(id), 1, "job {id}'s model called once");
    }
    // The ended job is settled at the split, not published again; the others are.
    assert_eq!(batched(&app, "ended"), 1);
    assert_eq!(batched(&app, "split"), 2);
    assert_eq!(batched(&app, "run"), 0);
    // Every job's event, the cancelled one's included.
    app.wait_webhooks(3, Duration::from_secs(10)).await?;
    Ok(())
}

/// A job of a batch that finds no slot within 5 s goes back to the queue on its own, so the
/// batch's message is held no longer than its longest run plus that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_job_that_cannot_start_in_time_goes_back_on_its_own() -> anyhow::Result<()> {
    // One call at a time, two delivery slots, 3-s calls. The batch's first job calls at once;
    // its second either waits for the call slot on the second delivery slot (if the batch got
    // it) or starts at 3 s on the first. At 5 s, no call having ended since 3 s, the jobs not
    // started (one or two) are published on their own.
    let agent = AgentSpec {
        concurrency: 1,
        ..AgentSpec::new("summarize")
    };
    let model = agent.model();
    let mut app = TestApp::spawn(AppOptions {
        behavior: Behavior {
            latency: Duration::from_secs(3),
            ..Behavior::default()
        },
        ..no_worker(agent)
    })
    .await?;
    let ids = batch_of(&app, 4).await?;
    app.start_worker().await?;
    let records = app.wait_terminal(&ids, Duration::from_secs(40)).await?;
    for record in &records {
        assert_eq!(record["status"], "succeeded", "{record}");
    }
    for id in &ids {
        assert_eq!(app.llm.calls_for_job(id), 1, "job {id}'s model called once");
    }
    assert_eq!(app.llm.peak_in_flight(&model), 1, "concurrency held");
    assert_eq!(batched(&app, "run"), 4);
    let spilled = batched(&app, "spilled");
    assert!((1..=2).contains(&spilled), "{spilled} jobs spilled");
    Ok(())
}

/// A batch's jobs take their tenant's turns one by one, as messages of one job would: another
/// tenant's job that arrives is next, not behind every job of the batches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_tenants_job_does_not_wait_behind_a_batch() -> anyhow::Result<()> {
    // One call at a time, two delivery slots: acme's two batches of 6 take both, and globex's
    // job arrives while they hold them.
    let agent = AgentSpec {
        concurrency: 1,
        ..AgentSpec::new("summarize")
    };
    let mut app = TestApp::spawn(AppOptions {
        behavior: Behavior {
            latency: Duration::from_millis(500),
            ..Behavior::default()
        },
        ..no_worker(agent)
    })
    .await?;
    let mut ids = batches_of(&app, &[6, 6]).await?;
    app.start_worker().await?;
    wait_until(Duration::from_secs(10), "acme's first call", || async {
        (app.llm.call_count() > 0).then_some(())
    })
    .await?;
    let theirs = app.submit_for(&app.globex, "summarize", "globex's").await?;
    ids.push(theirs.clone());
    app.wait_terminal(&ids, Duration::from_secs(30)).await?;
    let order: Vec<String> = app
        .llm
        .calls()
        .into_iter()
        .filter_map(|call| call.job_id)
        .collect();
    let turn = order.iter().position(|id| *id == theirs);
    // Its call waits for the calls already admitted (one per batch) and no more.
    assert!(
        turn.is_some_and(|turn| turn <= 3),
        "globex's job made call {turn:?} of {}",
        order.len()
    );
    for id in &ids {
        assert_eq!(app.llm.calls_for_job(id), 1, "job {id}'s model called once");
    }
    Ok(())
}

/// A batch message that is not a batch (no jobs, or jobs of two agents) goes to the dead
/// letters, and the worker carries on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_batch_is_dead_lettered() -> anyhow::Result<()> {
    let app = TestApp::spawn(AppOptions {
        workers: 1,
        ..AppOptions::default()
    })
    .await?;
    let conn =
        lapin::Connection::connect(&app.amqp_url, lapin::ConnectionProperties::default()).await?;
    let channel = conn.create_channel().await?;
    channel
        .confirm_select(lapin::options::ConfirmSelectOptions::default())
        .await?;
    let queue = app.names().tenant_queue("summarize", &app.acme.id);
    channel
        .basic_publish(
            "".into(),
            queue.as_str().into(),
            lapin::options::BasicPublishOptions::default(),
            br#"{"v":1,"jobs":[]}"#,
            lapin::BasicProperties::default()
                .with_delivery_mode(2)
                .with_type(JobBatch::KIND.into()),
        )
        .await?
        .await?;
    let _ = conn.close(200, "done".into()).await;
    let dead = app.names().dead_queue();
    wait_until(
        Duration::from_secs(10),
        "the batch dead-lettered",
        || async { (app.queue_depth(&dead).await.ok()? == 1).then_some(()) },
    )
    .await?;
    let id = app.submit_job("summarize", "still working").await?;
    let record = app.wait_terminal(&[id], Duration::from_secs(20)).await?;
    assert_eq!(record[0]["status"], "succeeded");
    Ok(())
}

/// `n` submissions to `summarize` as acme, all at once: their statuses and the accepted ids.
async fn burst(app: &TestApp, n: usize) -> (Vec<u16>, Vec<String>) {
    let submissions = (0..n).map(|i| async move {
        let body = json!({"agent": "summarize", "input": format!("burst {i}"), "webhook_url": app.webhook_url()});
        let response = app.submit_as(&app.acme, &body).await;
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap_or_default();
        (status, body["id"].as_str().map(str::to_owned))
    });
    let answers = futures_util::future::join_all(submissions).await;
    let statuses = answers.iter().map(|(status, _)| *status).collect();
    let ids = answers.into_iter().filter_map(|(_, id)| id).collect();
    (statuses, ids)
}

/// With `dispatcher.batch_jobs`, a burst of submissions to one queue goes out in fewer
/// messages than jobs, each POST answered 202 once its message is confirmed, and every job
/// runs once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dispatcher_that_batches_puts_a_burst_in_fewer_messages() -> anyhow::Result<()> {
    let mut app = TestApp::spawn(AppOptions {
        batch_jobs: true,
        ..no_worker(AgentSpec::new("summarize"))
    })
    .await?;
    let jobs = 64;
    let (statuses, ids) = burst(&app, jobs).await;
    assert!(statuses.iter().all(|s| *s == 202), "{statuses:?}");
    assert_eq!(ids.len(), jobs);
    let queue = app.names().tenant_queue("summarize", &app.acme.id);
    // Each POST was answered after its message's confirm: every message is on the queue.
    let messages = app.queue_depth(&queue).await? as usize;
    assert!(
        (1..jobs).contains(&messages),
        "{jobs} jobs in {messages} messages"
    );

    app.start_worker().await?;
    let records = app.wait_terminal(&ids, Duration::from_secs(30)).await?;
    assert!(records.iter().all(|r| r["status"] == "succeeded"));
    for id in &ids {
        assert_eq!(app.llm.calls_for_job(id), 1, "job {id}'s model called once");
    }
    app.wait_webhooks(jobs, Duration::from_secs(10)).await?;
    assert!(batched(&app, "run") >= (jobs - messages + 1) as u64);
    Ok(())
}

/// A batched burst the broker cannot take is refused whole, with nothing left behind; once the
/// broker is back, the next burst is accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batched_burst_that_cannot_be_published_leaves_nothing() -> anyhow::Result<()> {
    let proxy = Proxy::start(([127, 0, 0, 1], 5672).into()).await?;
    let app = TestApp::spawn(AppOptions {
        batch_jobs: true,
        amqp_url: format!("amqp://guest:guest@{}/%2f", proxy.addr()),
        ..no_worker(AgentSpec::new("summarize"))
    })
    .await?;
    proxy.cut();
    app.wait_not_ready(Duration::from_secs(5)).await?;
    let (statuses, _) = burst(&app, 20).await;
    assert!(statuses.iter().all(|s| *s == 503), "{statuses:?}");
    assert!(
        app.job_keys().await?.is_empty(),
        "no record of a refused job stays behind"
    );

    proxy.restore();
    wait_until(
        Duration::from_secs(15),
        "submissions to recover",
        || async {
            let (statuses, _) = burst(&app, 1).await;
            (statuses == [202]).then_some(())
        },
    )
    .await?;
    let (statuses, ids) = burst(&app, 20).await;
    assert!(statuses.iter().all(|s| *s == 202), "{statuses:?}");
    assert_eq!(ids.len(), 20);
    Ok(())
}

/// Shedding counts jobs, not messages: once a batched burst has filled the agent's queue past
/// `max_queue_depth` in jobs (in far fewer messages than that), the next submission gets 429.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shedding_counts_the_jobs_in_batched_messages() -> anyhow::Result<()> {
    let agent = AgentSpec {
        max_queue_depth: Some(48),
        ..AgentSpec::new("summarize")
    };
    let app = TestApp::spawn(AppOptions {
        batch_jobs: true,
        ..no_worker(agent)
    })
    .await?;
    let (statuses, _) = burst(&app, 64).await;
    let accepted = statuses.iter().filter(|s| **s == 202).count();
    let queue = app.names().tenant_queue("summarize", &app.acme.id);
    let messages = app.queue_depth(&queue).await? as usize;
    assert!(
        accepted >= 48 && messages < 18,
        "{accepted} jobs accepted in {messages} messages"
    );
    // The next poll (every 250 ms; a submission every 20 ms or so until then) sees the queue's
    // jobs. Counted in messages, it would take 48 - messages (over 30) more accepts first.
    let body = json!({"agent": "summarize", "input": "one more"});
    let more = std::sync::atomic::AtomicUsize::new(0);
    let response = wait_until(Duration::from_secs(10), "a 429", || async {
        let response = app.submit_as(&app.acme, &body).await;
        if response.status() == 202 {
            more.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        (response.status() == 429).then_some(response)
    })
    .await?;
    let problem: Value = response.json().await?;
    assert_eq!(problem["type"], "urn:agentfleet:problem:overloaded");
    let more = more.into_inner();
    assert!(
        more < 25,
        "{more} more accepted before the queue counted as full"
    );
    Ok(())
}
