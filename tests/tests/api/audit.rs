//! The audit trail: every API call — submitted, read, cancelled, listed, refused — leaves one
//! record naming the tenant, the key id, the job, the input's hash (never the input), the
//! client's address, the request id and the status, both as an `agentfleet::audit` log line
//! and in the tenant's Redis stream.

use std::time::Duration;

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use agentfleet_tests::logs::captured;
use agentfleet_tests::{wait_until, AppOptions, TestApp};

const INPUT: &str = "Summarise the private ticket of Alice Smith";

/// What the test did, to compare with what the trail says.
struct Calls {
    job: String,
    acme_stream: Vec<Entry>,
    globex_stream: Vec<Entry>,
}

#[test]
fn every_api_call_is_audited_with_who_what_and_from_where() -> anyhow::Result<()> {
    let (calls, lines) = captured(|| async {
        let app = TestApp::spawn(AppOptions {
            workers: 0,
            ..AppOptions::default()
        })
        .await?;
        make_every_kind_of_call(&app).await
    })?;
    let audit: Vec<Value> = lines
        .iter()
        .filter(|l| l.contains("agentfleet::audit"))
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert_eq!(audit.len(), 7, "one record per call: {audit:#?}");
    let input_hash = hex::encode(Sha256::digest(json!(INPUT).to_string()));
    assert_log_records(&audit, &calls, &input_hash);
    assert_streams(&calls, &input_hash);
    let everything = format!("{audit:?}{:?}{:?}", calls.acme_stream, calls.globex_stream);
    assert!(
        !everything.contains("Alice"),
        "the input never reaches the trail"
    );
    Ok(())
}

/// Submits, reads, lists and cancels as acme, probes acme's job as globex and with no valid
/// key, and reads the tenants' audit streams back once acme's five entries are in.
async fn make_every_kind_of_call(app: &TestApp) -> anyhow::Result<Calls> {
    let acme = &app.acme;
    let submitted = app
        .http
        .post(app.url("/v1/jobs"))
        .bearer_auth(&acme.api_key)
        .header("x-request-id", "audit-submit-1")
        .header("x-forwarded-for", "203.0.113.7")
        .json(&json!({"agent": "summarize", "input": INPUT}))
        .send()
        .await?;
    anyhow::ensure!(submitted.status() == 202, "submit: {}", submitted.status());
    let job = submitted.json::<Value>().await?["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let status = |path: String, key: &str| {
        let request = app.http.get(app.url(&path)).bearer_auth(key).send();
        async move { anyhow::Ok(request.await?.status()) }
    };
    assert_eq!(status(format!("/v1/jobs/{job}"), &acme.api_key).await?, 200);
    let steps = format!("/v1/jobs/{job}/steps");
    assert_eq!(status(steps, &acme.api_key).await?, 200);
    assert_eq!(status("/v1/agents".into(), &acme.api_key).await?, 200);
    // Another tenant probing acme's job, and a caller without a valid key.
    let probe = format!("/v1/jobs/{job}");
    assert_eq!(status(probe, &app.globex.api_key).await?, 404);
    assert_eq!(status(format!("/v1/jobs/{job}"), "not-a-key").await?, 401);
    assert_eq!(app.cancel(&job).await.status(), 200);

    let names = app.names();
    let mut redis = app.redis().await?;
    // The stream is written off the request path: poll until all five of acme's are in.
    let acme_stream = wait_until(Duration::from_secs(5), "acme's audit stream", || {
        let mut redis = redis.clone();
        let key = names.audit_stream("acme");
        async move {
            let entries = stream(&mut redis, &key).await.ok()?;
            (entries.len() == 5).then_some(entries)
        }
    })
    .await?;
    let globex_stream = stream(&mut redis, &names.audit_stream("globex")).await?;
    Ok(Calls {
        job,
        acme_stream,
        globex_stream,
    })
}

/// The `agentfleet::audit` log lines: one per call, each naming who asked, for what, from
/// where, and with which answer.
fn assert_log_records(audit: &[Value], calls: &Calls, input_hash: &str) {
    let fields = |action: &str| -> Vec<Value> {
        audit
            .iter()
            .filter(|l| l["target"] == "agentfleet::audit" && l["action"] == action)
            .cloned()
            .collect()
    };
    let submit = &fields("submit")[0];
    assert_eq!(submit["tenant"], "acme");
    assert_eq!(submit["key_id"], "default");
    assert_eq!(submit["job_id"], calls.job);
    assert_eq!(submit["input_sha256"], input_hash);
    assert_eq!(submit["status"], 202);
    assert_eq!(submit["request_id"], "audit-submit-1");
    assert_eq!(submit["forwarded_for"], "203.0.113.7");
    assert!(
        submit["client"]
            .as_str()
            .is_some_and(|c| c.starts_with("127.0.0.1:")),
        "{submit}"
    );
    assert_reads(&fields("read"), &calls.job);
    assert_eq!(fields("read_steps")[0]["status"], 200);
    assert_eq!(fields("list_agents")[0]["status"], 200);
    let cancel = &fields("cancel")[0];
    assert_eq!(
        (&cancel["status"], &cancel["job_id"]),
        (&json!(200), &json!(calls.job))
    );
}

/// The three reads of the job: acme's, globex's probe and the refused key's.
fn assert_reads(reads: &[Value], job: &str) {
    assert_eq!(reads.len(), 3, "{reads:#?}");
    let statuses: Vec<(Value, Value, Value)> = reads
        .iter()
        .map(|r| {
            (
                r["tenant"].clone(),
                r["status"].clone(),
                r["job_id"].clone(),
            )
        })
        .collect();
    assert!(statuses.contains(&(json!("acme"), json!(200), json!(job))));
    assert!(
        statuses.contains(&(json!("globex"), json!(404), json!(job))),
        "another tenant's probe is recorded against that tenant: {statuses:?}"
    );
    assert!(
        statuses.contains(&(Value::Null, json!(401), Value::Null)),
        "a refused key is recorded, attributed to nobody: {statuses:?}"
    );
    assert!(
        reads.iter().all(|r| r["path"] == format!("/v1/jobs/{job}")),
        "the path says what was asked for: {reads:#?}"
    );
}

/// The streams: acme's five calls in order, globex's probe.
fn assert_streams(calls: &Calls, input_hash: &str) {
    let actions: Vec<String> = calls
        .acme_stream
        .iter()
        .map(|(_, entry)| field(entry, "action"))
        .collect();
    assert_eq!(
        actions,
        ["submit", "read", "read_steps", "list_agents", "cancel"]
    );
    assert_eq!(field(&calls.acme_stream[0].1, "input_sha256"), input_hash);
    assert_eq!(field(&calls.acme_stream[0].1, "key_id"), "default");
    assert_eq!(calls.globex_stream.len(), 1);
    assert_eq!(field(&calls.globex_stream[0].1, "status"), "404");
}

type Entry = (String, Vec<(String, String)>);

/// Every entry of a stream: its id and its fields in order.
async fn stream(
    redis: &mut redis::aio::MultiplexedConnection,
    key: &str,
) -> anyhow::Result<Vec<Entry>> {
    let raw: Vec<(String, Vec<String>)> = redis::cmd("XRANGE")
        .arg(key)
        .arg("-")
        .arg("+")
        .query_async(redis)
        .await?;
    Ok(raw
        .into_iter()
        .map(|(id, flat)| {
            let pairs = flat
                .chunks(2)
                .map(|kv| (kv[0].clone(), kv.get(1).cloned().unwrap_or_default()))
                .collect();
            (id, pairs)
        })
        .collect())
}

fn field(entry: &[(String, String)], name: &str) -> String {
    entry
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.clone())
        .unwrap_or_default()
}
