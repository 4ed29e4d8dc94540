//! Issue 3: errors, retries, dead letters, deadlines, cancellation, fencing, saved answers,
//! idempotency, the circuit breaker, load shedding and webhook give-up.

use std::time::Duration;

use serde_json::{json, Value};

use agentfleet_agent::{AssistantMessage, Step, StepKind};
use agentfleet_common::store::{BeginRun, Begun, JobStore, Loaded, Redis, RunMark, Written};
use agentfleet_common::wire::{JobStatus, Usage};
use agentfleet_stub::llm::Behavior;
use agentfleet_tests::{wait_until, AgentSpec, AppOptions, Fault, TestApp};

fn one_worker() -> AppOptions {
    AppOptions {
        workers: 1,
        ..AppOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_is_honoured_and_each_attempt_error_recorded() -> anyhow::Result<()> {
    let app = TestApp::spawn(one_worker()).await?;
    app.llm.script_faults([Fault::Status {
        status: 429,
        retry_after: Some(2),
    }]);
    let id = app.submit_job("summarize", "x").await?;
    let record = app
        .wait_terminal(std::slice::from_ref(&id), Duration::from_secs(30))
        .await?
        .remove(0);
    assert_eq!(record["status"], "succeeded", "{record}");
    assert_eq!(record["attempts"], 2);
    assert_eq!(record["attempt_errors"][0]["category"], "rate_limited");
    assert_eq!(record["attempt_errors"][0]["attempt"], 1);
    let calls = app.llm.calls();
    let gap = calls[1].at.duration_since(calls[0].at);
    assert!(
        gap >= Duration::from_millis(1950),
        "retried after {gap:?}, Retry-After said 2 s"
    );
    Ok(())
}

/// Each kind of provider failure gets its category; the transient ones are retried (2
/// attempts here), the permanent ones are not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_classified_and_only_transient_ones_retried() -> anyhow::Result<()> {
    let mut agent = AgentSpec::new("summarize");
    agent.retry_attempts = 2;
    agent.request_timeout_secs = Some(1);
    agent.circuit_failure_threshold = 100;
    let app = TestApp::spawn(AppOptions {
        agents: vec![agent],
        ..one_worker()
    })
    .await?;
    let cases = [
        (
            Fault::Status {
                status: 500,
                retry_after: None,
            },
            "provider_error",
            2,
        ),
        (
            Fault::Status {
                status: 503,
                retry_after: None,
            },
            "provider_error",
            2,
        ),
        (
            Fault::Status {
                status: 429,
                retry_after: None,
            },
            "rate_limited",
            2,
        ),
        (Fault::Malformed, "invalid_response", 2),
        (Fault::Hang, "timeout", 2),
        (
            Fault::Status {
                status: 400,
                retry_after: None,
            },
            "bad_request",
            1,
        ),
        (
            Fault::Status {
                status: 401,
                retry_after: None,
            },
            "auth",
            1,
        ),
        (
            Fault::Status {
                status: 403,
                retry_after: None,
            },
            "auth",
            1,
        ),
    ];
    for (fault, category, calls) in cases {
        app.llm.script_faults(vec![fault.clone(); calls]);
        let id = app.submit_job("summarize", "x").await?;
        let record = app
            .wait_terminal(std::slice::from_ref(&id), Duration::from_secs(30))
            .await?
            .remove(0);
        assert_eq!(record["status"], "failed", "{fault:?}: {record}");
        assert_eq!(record["error"]["category"], category, "{fault:?}");
        assert_eq!(
            app.llm.calls_per_job().get(&id),
            Some(&(calls as u32)),
            "{fault:?}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_jobs_and_undecodable_messages_land_in_the_dead_letter_queue() -> anyhow::Result<()>
{
    let app = TestApp::spawn(one_worker()).await?;
    let dead = app.names().dead_queue();
    app.llm.script_faults([Fault::Status {
        status: 400,
        retry_after: None,
    }]);
    let id = app.submit_job("summarize", "x").await?;
    app.wait_terminal(std::slice::from_ref(&id), Duration::from_secs(20))
        .await?;
    wait_until(Duration::from_secs(10), "failed job's copy", || async {
        (app.queue_depth(&dead).await.ok()? == 1).then_some(())
    })
    .await?;

    app.publish_raw(&app.names().agent_queue("summarize"), b"{not a job")
        .await?;
    wait_until(Duration::from_secs(10), "garbage dead-lettered", || async {
        (app.queue_depth(&dead).await.ok()? == 2).then_some(())
    })
    .await?;
    // And the worker carries on.
    let ok = app.submit_job("summarize", "still working").await?;
    let record = app
        .wait_terminal(&[ok], Duration::from_secs(20))
        .await?
        .remove(0);
    assert_eq!(record["status"], "succeeded");
    Ok(())
}

/// A message redelivered up to the delivery limit (workers kept dying on it) fails its job
/// for good — terminal, with a webhook — instead of looping.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_over_its_delivery_limit_fails_the_job() -> anyhow::Result<()> {
    let mut app = TestApp::spawn(AppOptions {
        workers: 0,
        ..AppOptions::default()
    })
    .await?;
    let id = app.submit_job("summarize", "poison").await?;
    // Play a worker that crashes on it: take it and give it back, 19 times (limit 20).
    let conn =
        lapin::Connection::connect(&app.amqp_url, lapin::ConnectionProperties::default()).await?;
    let channel = conn.create_channel().await?;
    let queue = app.names().tenant_queue("summarize", &app.acme.id);
    for _ in 0..19 {
        let delivery = wait_until(Duration::from_secs(5), "message", || async {
            channel
                .basic_get(
                    queue.as_str().into(),
                    lapin::options::BasicGetOptions::default(),
                )
                .await
                .ok()
                .flatten()
        })
        .await?;
        delivery
            .nack(lapin::options::BasicNackOptions {
                requeue: true,
                ..Default::default()
            })
            .await?;
    }
    let _ = conn.close(200, "done".into()).await;
    app.start_worker().await?;
    let record = app
        .wait_terminal(std::slice::from_ref(&id), Duration::from_secs(20))
        .await?
        .remove(0);
    assert_eq!(record["status"], "failed");
    assert_eq!(record["error"]["category"], "internal");
    assert_eq!(app.llm.call_count(), 0, "the poison job was not run again");
    app.wait_webhooks(1, Duration::from_secs(10)).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jobs_own_deadline_bounds_the_whole_run() -> anyhow::Result<()> {
    let app = TestApp::spawn(AppOptions {
        behavior: Behavior {
            latency: Duration::from_secs(5),
            ..Behavior::default()
        },
        ..one_worker()
    })
    .await?;
    let response = app
        .submit_as(
            &app.acme,
            &json!({"agent": "summarize", "input": "x", "timeout_secs": 1}),
        )
        .await;
    assert_eq!(response.status(), 202);
    let id = response.json::<Value>().await?["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let started = std::time::Instant::now();
    let record = app
        .wait_terminal(std::slice::from_ref(&id), Duration::from_secs(10))
        .await?
        .remove(0);
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "ended after {:?}",
        started.elapsed()
    );
    assert_eq!(record["status"], "failed");
    assert_eq!(record["error"]["category"], "timeout");
    assert_eq!(record["attempts"], 1, "a passed deadline is not retried");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_queued_job_skips_it_and_sends_job_cancelled() -> anyhow::Result<()> {
    let mut app = TestApp::spawn(AppOptions {
        workers: 0,
        ..AppOptions::default()
    })
    .await?;
    let id = app.submit_job("summarize", "never run").await?;
    let response = app.cancel(&id).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await?;
    assert_eq!(body["status"], "cancelled");
    assert_eq!(body["error"]["category"], "cancelled");
    // Without a webhook nothing waits on a cancelled job: the cancellation seals it.
    let quiet = app
        .submit_for(&app.acme, "summarize", "never run either")
        .await?;
    assert_eq!(app.cancel(&quiet).await.status(), 200);
    let mut redis = app.redis().await?;
    let kind: String = redis::cmd("TYPE")
        .arg(app.names().job_key(quiet.parse()?))
        .query_async(&mut redis)
        .await?;
    assert_eq!(kind, "string", "sealed by the cancellation");
    assert_eq!(app.job(&quiet).await?["status"], "cancelled");
    app.start_worker().await?;
    app.wait_webhooks(1, Duration::from_secs(15)).await?;
    let event = app.receiver.deliveries()[0].event.clone().expect("event");
    assert_eq!(event["type"], "job.cancelled");
    // The work token was dropped, not run.
    wait_until(Duration::from_secs(10), "queue drained", || async {
        (app.agent_queue_depth("summarize").await.ok()? == 0).then_some(())
    })
    .await?;
    assert_eq!(app.llm.call_count(), 0);
    assert_eq!(app.receiver.count(), 1, "one event");
    assert_eq!(app.cancel(&id).await.status(), 409, "already cancelled");
    assert_eq!(
        app.cancel(&quiet).await.status(),
        409,
        "sealed, still final"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_running_job_aborts_the_provider_call() -> anyhow::Result<()> {
    let app = TestApp::spawn(AppOptions {
        behavior: Behavior {
            latency: Duration::from_secs(30),
            ..Behavior::default()
        },
        ..one_worker()
    })
    .await?;
    let id = app.submit_job("summarize", "slow").await?;
    let model = app.config.agents["summarize"].model.clone();
    app.wait_calls_in_flight(&model, 1, Duration::from_secs(10))
        .await?;
    assert_eq!(app.cancel(&id).await.status(), 200);
    let started = std::time::Instant::now();
    app.wait_calls_in_flight(&model, 0, Duration::from_secs(3))
        .await?;
    let aborted_in = started.elapsed();
    assert!(
        aborted_in < Duration::from_secs(2),
        "aborted after {aborted_in:?}"
    );
    app.wait_webhooks(1, Duration::from_secs(10)).await?;
    let event = app.receiver.deliveries()[0].event.clone().expect("event");
    assert_eq!(event["type"], "job.cancelled");
    assert_eq!(app.job(&id).await?["status"], "cancelled");
    Ok(())
}

/// A finished job is final in both its forms: terminal with its webhook pending, and sealed
/// once the webhook was delivered (`field::afterwards`). A cancellation answers 409, and a
/// redelivered message for the sealed job begins nothing: no lease, no second model call, no
/// second webhook, and the job reads as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_finished_job_is_a_conflict() -> anyhow::Result<()> {
    let app = TestApp::spawn(one_worker()).await?;
    let id = app.submit_job("summarize", "x").await?;
    app.wait_terminal(std::slice::from_ref(&id), Duration::from_secs(20))
        .await?;
    let response = app.cancel(&id).await;
    assert_eq!(response.status(), 409);
    assert_eq!(app.job(&id).await?["status"], "succeeded");
    let other = app
        .http
        .delete(app.url(&format!("/v1/jobs/{id}")))
        .bearer_auth(&app.globex.api_key)
        .send()
        .await?;
    assert_eq!(other.status(), 404, "another tenant cannot cancel it");

    let sealed = wait_until(Duration::from_secs(15), "the job sealed", || async {
        let record = app.job(&id).await.ok()?;
        (record["webhook"]["outcome"] == "delivered").then_some(record)
    })
    .await?;
    let uuid: uuid::Uuid = id.parse()?;
    let mut redis = app.redis().await?;
    let kind: String = redis::cmd("TYPE")
        .arg(app.names().job_key(uuid))
        .query_async(&mut redis)
        .await?;
    assert_eq!(kind, "string", "sealed");
    assert_eq!(app.cancel(&id).await.status(), 409, "sealed, still final");

    // The same job's message again, as after a crash between the webhook and the ack: the run
    // it would begin finds the job concluded, takes no lease and writes nothing (the worker
    // acks such a message). A late delivery note is refused; the event counts as handed off.
    let store = JobStore::new(Redis::connect(&app.config.redis)?, app.names(), 3600);
    let begun = store
        .begin_run(BeginRun {
            id: uuid,
            owner: "redelivered",
            ttl: Duration::from_secs(5),
            mark: Some(RunMark {
                attempt: 2,
                started_at: chrono::Utc::now(),
            }),
        })
        .await?;
    let Begun::NotRunnable(Loaded::Concluded(record)) = begun else {
        anyhow::bail!("a sealed job began as {begun:?}");
    };
    assert_eq!(record.status, JobStatus::Succeeded);
    let leases: u32 = redis::cmd("EXISTS")
        .arg(app.names().lease_key(uuid))
        .query_async(&mut redis)
        .await?;
    assert_eq!(leases, 0, "no lease taken");
    assert!(store.handed_off(uuid).await?);
    assert_eq!(store.save_bookkeeping(&record).await?, Written::Terminal);
    assert_eq!(app.llm.calls_per_job().get(&id), Some(&1));
    assert_eq!(app.receiver.count(), 1, "one webhook");
    assert_eq!(app.job(&id).await?, sealed);
    Ok(())
}

/// A stalled worker whose lease expired cannot write, and the new holder can.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_lost_its_lease_cannot_overwrite_the_job() -> anyhow::Result<()> {
    let app = TestApp::spawn(AppOptions {
        workers: 0,
        ..AppOptions::default()
    })
    .await?;
    let id = app.submit_job("summarize", "x").await?;
    let store = JobStore::new(Redis::connect(&app.config.redis)?, app.names(), 3600);
    let uuid = uuid::Uuid::parse_str(&id)?;
    let begin = |owner: &'static str, ttl: Duration| {
        let store = store.clone();
        async move {
            store
                .begin_run(BeginRun {
                    id: uuid,
                    owner,
                    ttl,
                    mark: Some(RunMark {
                        attempt: 1,
                        started_at: chrono::Utc::now(),
                    }),
                })
                .await
        }
    };
    let Begun::Held(stale, _) = begin("stalled", Duration::from_millis(200)).await? else {
        anyhow::bail!("first run refused");
    };
    assert!(matches!(
        begin("other", Duration::from_secs(5)).await?,
        Begun::Busy(_)
    ));
    let fresh = wait_until(Duration::from_secs(5), "stale lease to expire", || async {
        match begin("fresh", Duration::from_secs(5)).await.ok()? {
            Begun::Held(lease, _) => Some(lease),
            _ => None,
        }
    })
    .await?;
    assert!(fresh.token > stale.token, "fencing tokens only grow");
    let mut record = store.load(uuid).await?.expect("record");
    record.output = Some(json!("from the stalled worker"));
    assert_eq!(
        store.save_leased(&record, &stale).await?,
        Written::LeaseLost
    );
    assert_eq!(store.load(uuid).await?.expect("record").output, None);
    record.output = Some(json!("from the holder"));
    assert_eq!(store.save_leased(&record, &fresh).await?, Written::Ok);
    Ok(())
}

/// Beginning a run reads the job, takes its lease and marks it running in one step: readers
/// see it running (as attempt 1, since the run's start) until the run writes its record; a
/// job that ended is not begun, and the refusal writes nothing (no lease, no change).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_begun_run_shows_as_running_and_an_ended_job_is_not_begun() -> anyhow::Result<()> {
    let app = TestApp::spawn(AppOptions {
        workers: 0,
        ..AppOptions::default()
    })
    .await?;
    let store = JobStore::new(Redis::connect(&app.config.redis)?, app.names(), 3600);
    let begin = |id: uuid::Uuid, started_at| {
        store.begin_run(BeginRun {
            id,
            owner: "w",
            ttl: Duration::from_secs(5),
            mark: Some(RunMark {
                attempt: 1,
                started_at,
            }),
        })
    };
    let id = app.submit_job("summarize", "x").await?;
    let uuid = uuid::Uuid::parse_str(&id)?;
    let started_at = chrono::Utc::now();
    let Begun::Held(lease, job) = begin(uuid, started_at).await? else {
        anyhow::bail!("the run was not begun");
    };
    assert_eq!(job.record.status, JobStatus::Queued, "the job as it was");
    let shown = app.job(&id).await?;
    assert_eq!(shown["status"], "running", "{shown}");
    assert_eq!(shown["attempts"], 1);
    let shown_start: chrono::DateTime<chrono::Utc> =
        serde_json::from_value(shown["started_at"].clone())?;
    assert_eq!(shown_start, started_at);
    // The run's own write replaces the mark.
    let mut record = job.record;
    record.status = JobStatus::Retrying;
    assert_eq!(store.save_leased(&record, &lease).await?, Written::Ok);
    assert_eq!(app.job(&id).await?["status"], "retrying");
    store.close_run(uuid, &lease, false).await?;

    let ended = app.submit_job("summarize", "y").await?;
    let ended_uuid = uuid::Uuid::parse_str(&ended)?;
    assert_eq!(app.cancel(&ended).await.status(), 200);
    let Begun::NotRunnable(Loaded::Ready(found)) = begin(ended_uuid, started_at).await? else {
        anyhow::bail!("an ended job must not be begun");
    };
    assert_eq!(found.record.status, JobStatus::Cancelled);
    assert_eq!(
        store.load(ended_uuid).await?.expect("record").status,
        JobStatus::Cancelled
    );
    let lease_key = app.names().lease_key(ended_uuid);
    let mut redis = app.redis().await?;
    let leased: bool = redis::cmd("EXISTS")
        .arg(&lease_key)
        .query_async(&mut redis)
        .await?;
    assert!(!leased, "no lease was taken");
    Ok(())
}

/// A model call recorded in the step log (the worker crashed after the call, before the
/// result) is not paid for again: the redelivery resumes after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recorded_model_call_is_not_paid_for_twice() -> anyhow::Result<()> {
    let mut app = TestApp::spawn(AppOptions {
        workers: 0,
        ..AppOptions::default()
    })
    .await?;
    let id = app.submit_job("summarize", "x").await?;
    let uuid = uuid::Uuid::parse_str(&id)?;
    let store = JobStore::new(Redis::connect(&app.config.redis)?, app.names(), 3600);
    // A crashed run: it started, its model call completed and was recorded, then it died.
    let Begun::Held(lease, _) = store
        .begin_run(BeginRun {
            id: uuid,
            owner: "crashed",
            ttl: Duration::from_secs(30),
            mark: Some(RunMark {
                attempt: 1,
                started_at: chrono::Utc::now(),
            }),
        })
        .await?
    else {
        anyhow::bail!("could not take the lease");
    };
    let now = chrono::Utc::now();
    let step = Step {
        seq: 0,
        attempt: 1,
        started_at: now,
        finished_at: now,
        duration_ms: 0,
        kind: StepKind::Model {
            turn: 0,
            feedback: None,
            message: AssistantMessage {
                content: Some("answer from before the crash".into()),
                tool_calls: Vec::new(),
            },
            usage: Usage {
                prompt_tokens: 1,
                completion_tokens: 2,
                total_tokens: 3,
            },
            cost_usd: 0.0,
            cached: false,
        },
    };
    assert_eq!(
        store
            .append_steps(uuid, &lease, 0, std::slice::from_ref(&step))
            .await?,
        Written::Ok
    );
    // The log only grows by the length its writer expects: a stale view cannot append.
    assert_eq!(
        store.append_steps(uuid, &lease, 0, &[step]).await?,
        Written::Conflict
    );
    store.close_run(uuid, &lease, false).await?;
    app.start_worker().await?;
    let record = app
        .wait_terminal(std::slice::from_ref(&id), Duration::from_secs(20))
        .await?
        .remove(0);
    assert_eq!(record["status"], "succeeded");
    assert_eq!(record["output"], "answer from before the crash");
    assert_eq!(record["usage"]["total_tokens"], 3);
    assert_eq!(record["turns"], 1);
    assert_eq!(app.llm.call_count(), 0);
    Ok(())
}

/// An Idempotency-Key whose claim names a job that was never stored — the dispatcher died
/// mid-accept, or a Redis failover kept the claim and forgot the record — answers 409 (in
/// progress) while the claim is young, and is taken over by a retry once the claim is older
/// than any accept can take: the retry is accepted as a new job, and replays of it find it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_idempotency_key_is_taken_over_by_a_retry() -> anyhow::Result<()> {
    let app = TestApp::spawn(AppOptions {
        workers: 0,
        ..AppOptions::default()
    })
    .await?;
    let body = json!({"agent": "summarize", "input": "once"});
    let first = app.submit_with_key(&app.acme, "order-9", &body).await;
    assert_eq!(first.status(), 202);
    let first: Value = first.json().await?;
    let first_id = uuid::Uuid::parse_str(first["id"].as_str().unwrap_or_default())?;
    // The record forgotten, the claim kept.
    let mut redis = app.redis().await?;
    let _: () = redis::cmd("DEL")
        .arg(app.names().job_key(first_id))
        .query_async(&mut redis)
        .await?;
    let young = app.submit_with_key(&app.acme, "order-9", &body).await;
    assert_eq!(young.status(), 409, "a young claim may still be accepting");

    // The same claim, made ten minutes ago.
    let claim_key = app.names().idempotency_key("acme", "order-9");
    let claim: String = redis::cmd("GET")
        .arg(&claim_key)
        .query_async(&mut redis)
        .await?;
    let (_, fingerprint) = claim.split_once(' ').expect("id and fingerprint");
    let ten_minutes_ago = chrono::Utc::now().timestamp() as u64 - 600;
    let old_id = uuid::Uuid::new_v7(uuid::Timestamp::from_unix(
        uuid::NoContext,
        ten_minutes_ago,
        0,
    ));
    let _: () = redis::cmd("SET")
        .arg(&claim_key)
        .arg(format!("{old_id} {fingerprint}"))
        .arg("KEEPTTL")
        .query_async(&mut redis)
        .await?;
    let retry = app.submit_with_key(&app.acme, "order-9", &body).await;
    assert_eq!(retry.status(), 202, "the abandoned claim is taken over");
    let retry: Value = retry.json().await?;
    let new_id = retry["id"].as_str().unwrap_or_default().to_owned();
    assert!(new_id != old_id.to_string() && new_id != first_id.to_string());
    let replay = app.submit_with_key(&app.acme, "order-9", &body).await;
    assert_eq!(replay.status(), 200);
    let replay: Value = replay.json().await?;
    assert_eq!(
        replay["id"],
        new_id.as_str(),
        "the key now names the new job"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_keys_return_the_original_job() -> anyhow::Result<()> {
    let app = TestApp::spawn(AppOptions {
        workers: 0,
        ..AppOptions::default()
    })
    .await?;
    let body = json!({"agent": "summarize", "input": "once"});
    let first = app.submit_with_key(&app.acme, "order-7", &body).await;
    assert_eq!(first.status(), 202);
    let first: Value = first.json().await?;
    // Same body, keys in another order: the same request.
    let again = app
        .submit_with_key(
            &app.acme,
            "order-7",
            &json!({"input": "once", "agent": "summarize"}),
        )
        .await;
    assert_eq!(again.status(), 200);
    assert_eq!(again.json::<Value>().await?["id"], first["id"]);
    let different = app
        .submit_with_key(
            &app.acme,
            "order-7",
            &json!({"agent": "summarize", "input": "twice"}),
        )
        .await;
    assert_eq!(different.status(), 422);
    let other_tenant = app.submit_with_key(&app.globex, "order-7", &body).await;
    assert_eq!(other_tenant.status(), 202, "keys are per tenant");
    assert_ne!(other_tenant.json::<Value>().await?["id"], first["id"]);
    let bad = app.submit_with_key(&app.acme, "", &body).await;
    assert_eq!(bad.status(), 400);
    assert_eq!(
        app.agent_queue_depth("summarize").await?,
        2,
        "one job per tenant, not more"
    );
    Ok(())
}

/// Two consecutive failures open the circuit for 2 s: the retry waits out the cool-down
/// instead of hitting the provider (its record says `waiting: circuit_open`), then a probe
/// succeeds and closes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_circuit_breaker_holds_calls_during_its_cooldown() -> anyhow::Result<()> {
    let mut agent = AgentSpec::new("summarize");
    agent.circuit_failure_threshold = 2;
    agent.circuit_cooldown_secs = 2;
    agent.retry_attempts = 5;
    let app = TestApp::spawn(AppOptions {
        agents: vec![agent],
        ..one_worker()
    })
    .await?;
    app.llm.script_faults(vec![
        Fault::Status {
            status: 500,
            retry_after: None
        };
        2
    ]);
    let id = app.submit_job("summarize", "x").await?;
    let metrics_addr = app.worker_metrics_addr(0).expect("worker");
    wait_until(Duration::from_secs(10), "circuit open", || async {
        let text = app.metrics_text(metrics_addr).await.ok()?;
        text.contains("agentfleet_circuit_state{endpoint=")
            .then_some(())?;
        text.lines()
            .any(|l| l.starts_with("agentfleet_circuit_state") && l.ends_with(" 1"))
            .then_some(())
    })
    .await?;
    // The retry that meets the open circuit says so on its record while it waits.
    let waiting = wait_until(Duration::from_secs(10), "waiting: circuit_open", || async {
        let record = app.job(&id).await.ok()?;
        (record["waiting"]["reason"] == "circuit_open").then_some(record)
    })
    .await?;
    assert!(waiting["waiting"]["until"].is_string());
    let record = app
        .wait_terminal(std::slice::from_ref(&id), Duration::from_secs(30))
        .await?
        .remove(0);
    assert_eq!(record["status"], "succeeded", "{record}");
    assert!(record["waiting"].is_null(), "cleared when it ran: {record}");
    let calls = app.llm.calls();
    assert_eq!(calls.len(), 3);
    let gap = calls[2].at.duration_since(calls[1].at);
    assert!(
        gap >= Duration::from_millis(1900),
        "the probe came {gap:?} after the circuit opened"
    );
    let text = app.metrics_text(metrics_addr).await?;
    assert!(
        text.lines()
            .any(|l| l.starts_with("agentfleet_circuit_state") && l.ends_with(" 0")),
        "closed again:\n{text}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_sheds_load_with_429() -> anyhow::Result<()> {
    let mut agent = AgentSpec::new("summarize");
    agent.max_queue_depth = Some(3);
    let app = TestApp::spawn(AppOptions {
        agents: vec![agent],
        workers: 0,
        ..AppOptions::default()
    })
    .await?;
    let body = json!({"agent": "summarize", "input": "x"});
    let mut accepted = 0;
    let shed = wait_until(Duration::from_secs(10), "a 429", || async {
        let response = app.submit_as(&app.acme, &body).await;
        match response.status().as_u16() {
            202 => None,
            429 => Some(response),
            other => panic!("unexpected {other}"),
        }
    });
    let response = shed.await?;
    assert_eq!(response.headers()["retry-after"], "2");
    let problem: Value = response.json().await?;
    assert_eq!(problem["type"], "urn:agentfleet:problem:overloaded");
    let depth = app.agent_queue_depth("summarize").await?;
    accepted += depth;
    assert!(accepted >= 3, "accepted up to the limit first ({accepted})");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_410_from_the_receiver_stops_webhook_retries() -> anyhow::Result<()> {
    let app = TestApp::spawn(one_worker()).await?;
    app.receiver.set_gone();
    let id = app.submit_job("summarize", "x").await?;
    let record = wait_until(Duration::from_secs(20), "410 recorded", || async {
        let r = app.job(&id).await.ok()?;
        (r["webhook"]["last_status"] == 410).then_some(r)
    })
    .await?;
    assert_eq!(record["webhook"]["attempts"], 1);
    assert!(record["webhook"]["delivered_at"].is_null());
    assert_eq!(record["webhook"]["outcome"], "gone");
    // The decision is made at the attempt: a 410 is counted as gone, never as a retry.
    let metrics = app.worker_metrics(0).expect("worker");
    assert_eq!(
        metrics
            .webhook_deliveries
            .with_label_values(&["gone"])
            .get(),
        1
    );
    assert_eq!(
        metrics
            .webhook_deliveries
            .with_label_values(&["retry"])
            .get(),
        0
    );
    assert_eq!(app.receiver.requests(), 1);
    Ok(())
}

/// Runs that end together are acked together, with one `multiple` ack, and no further: fewer
/// ack frames than jobs, every job called once (an ack that reached a delivery still running
/// would have lost it; one that named an acked tag would have closed the channel and brought
/// the others back), and after a graceful stop nothing is on the queue (an ack never sent
/// would have been requeued by the stop).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_that_end_together_are_acked_in_fewer_frames_and_none_is_lost() -> anyhow::Result<()> {
    const JOBS: usize = 40;
    // Inline room (half the slots) for every event at once: no webhook queue, so every ack
    // counted is a job's.
    let mut agent = AgentSpec::new("summarize");
    agent.concurrency = 80;
    let mut app = TestApp::spawn(AppOptions {
        workers: 0,
        agents: vec![agent],
        behavior: Behavior {
            latency: Duration::from_millis(300),
            ..Behavior::default()
        },
        ..AppOptions::default()
    })
    .await?;
    let mut ids = Vec::new();
    for i in 0..JOBS {
        ids.push(app.submit_job("summarize", &format!("job {i}")).await?);
    }
    let worker = app.start_worker().await?;
    let metrics = app.worker_metrics(worker).expect("a running worker");
    let records = app.wait_terminal(&ids, Duration::from_secs(30)).await?;
    assert!(records.iter().all(|r| r["status"] == "succeeded"));
    app.wait_webhooks(JOBS, Duration::from_secs(30)).await?;
    app.stop_worker(worker).await?;

    let frames = |kind: &str| metrics.ack_frames.with_label_values(&[kind]).get();
    let (multiple, single) = (frames("multiple"), frames("single"));
    eprintln!("{JOBS} jobs acked in {multiple} multiple and {single} single frames");
    assert!(
        multiple >= 1 && multiple + single < JOBS as u64,
        "{multiple} multiple + {single} single frames for {JOBS} jobs"
    );
    assert_eq!(
        metrics
            .webhook_first_attempts
            .with_label_values(&["queued"])
            .get(),
        0,
        "no event took the webhook queue"
    );
    for id in &ids {
        assert_eq!(app.llm.calls_for_job(id), 1, "job {id} called once");
    }
    assert_eq!(
        app.agent_queue_depth("summarize").await?,
        0,
        "every delivery was acked before the stop"
    );
    Ok(())
}

/// An ack cannot be combined past a delivery still running: runs that end together while an
/// older one is in its model call are acked one by one (after a short hold), not held back
/// until it ends; and a later `multiple` that reaches over those already-acked tags and the
/// old one is accepted by the broker (an ack naming a tag it no longer holds would close the channel and
/// bring every unacked job back, which the one-call-per-job check would see).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_run_is_not_acked_past_and_does_not_hold_back_later_acks() -> anyhow::Result<()> {
    const BURST: usize = 20;
    let mut agent = AgentSpec::new("summarize");
    agent.concurrency = 80;
    let model = agent.model();
    let slow = Behavior {
        latency: Duration::from_secs(4),
        ..Behavior::default()
    };
    let mut app = TestApp::spawn(AppOptions {
        workers: 0,
        agents: vec![agent],
        behavior: slow,
        ..AppOptions::default()
    })
    .await?;
    // The channel's first delivery: tag 1, in its model call for 4 s.
    let long = app.submit_job("summarize", "long").await?;
    let worker = app.start_worker().await?;
    let metrics = app.worker_metrics(worker).expect("a running worker");
    let frames = |kind: &str| metrics.ack_frames.with_label_values(&[kind]).get();
    app.wait_calls_in_flight(&model, 1, Duration::from_secs(10))
        .await?;
    app.llm.set_behavior(Behavior {
        latency: Duration::from_millis(100),
        ..Behavior::default()
    });

    // The early burst's calls are held until all are in flight, so they end together.
    app.llm.close_gate();
    let mut ids = Vec::new();
    for i in 0..BURST {
        ids.push(app.submit_job("summarize", &format!("early {i}")).await?);
    }
    app.wait_calls_in_flight(&model, 1 + BURST as u64, Duration::from_secs(10))
        .await?;
    app.llm.open_gate();
    app.wait_terminal(&ids, Duration::from_secs(10)).await?;
    wait_until(Duration::from_secs(5), "the early burst acked", || async {
        (frames("multiple") > 0 || frames("single") >= BURST as u64).then_some(())
    })
    .await?;
    assert_eq!(
        app.llm.in_flight(&model),
        1,
        "the long run is still in its call"
    );
    assert_eq!(
        (frames("multiple"), frames("single")),
        (0, BURST as u64),
        "nothing combined past the long run's delivery"
    );

    app.wait_terminal(std::slice::from_ref(&long), Duration::from_secs(10))
        .await?;
    // The late burst is held twice, so its runs reach their acks together however slowly
    // the machine stores their results: at the model's gate, then at the receiver's, where
    // each run waits on its inline webhook attempt, the last step before its ack.
    app.llm.close_gate();
    app.receiver.close_gate();
    let mut late = Vec::new();
    for i in 0..BURST {
        late.push(app.submit_job("summarize", &format!("late {i}")).await?);
    }
    app.wait_calls_in_flight(&model, BURST as u64, Duration::from_secs(10))
        .await?;
    let delivered_before = app.receiver.requests();
    app.llm.open_gate();
    wait_until(
        Duration::from_secs(10),
        "the late webhooks held",
        || async { (app.receiver.requests() >= delivered_before + BURST as u32).then_some(()) },
    )
    .await?;
    app.receiver.open_gate();
    app.wait_terminal(&late, Duration::from_secs(10)).await?;
    app.wait_webhooks(1 + 2 * BURST, Duration::from_secs(20))
        .await?;
    app.stop_worker(worker).await?;
    assert!(
        frames("multiple") >= 1,
        "the late burst, with nothing running below it, was combined"
    );
    for id in ids.iter().chain(&late).chain([&long]) {
        assert_eq!(app.llm.calls_for_job(id), 1, "job {id} called once");
    }
    assert_eq!(app.agent_queue_depth("summarize").await?, 0);
    Ok(())
}
