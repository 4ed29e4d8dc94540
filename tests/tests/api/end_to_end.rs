use std::time::Duration;

use serde_json::{json, Value};

use agentfleet_tests::{AppOptions, TestApp};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_goes_through_to_a_verified_webhook() -> anyhow::Result<()> {
    let app = TestApp::spawn(AppOptions::default()).await?;
    let response = app
        .submit_as(
            &app.acme,
            &json!({
                "agent": "summarize",
                "input": {"messages": [{"role": "user", "content": "Summarize: the sky is blue."}]},
                "webhook_url": app.webhook_url(),
                "metadata": {"ticket": 42}
            }),
        )
        .await;
    assert_eq!(response.status(), 202);
    let location = response
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .expect("Location header");
    let accepted: Value = response.json().await?;
    let id = accepted["id"].as_str().expect("id").to_owned();
    assert_eq!(location, format!("/v1/jobs/{id}"));
    assert_eq!(accepted["status"], "queued");
    assert_eq!(accepted["agent"], "summarize");
    assert_eq!(uuid::Uuid::parse_str(&id)?.get_version_num(), 7);

    let records = app
        .wait_terminal(std::slice::from_ref(&id), Duration::from_secs(20))
        .await?;
    let record = &records[0];
    assert_eq!(record["status"], "succeeded", "{record}");
    assert_eq!(record["attempts"], 1);
    assert_eq!(
        record["output"],
        "stub answer to: Summarize: the sky is blue."
    );
    assert_eq!(
        record["usage"],
        json!({"prompt_tokens": 12, "completion_tokens": 8, "total_tokens": 20})
    );
    assert_eq!(record["metadata"], json!({"ticket": 42}));
    assert!(record["started_at"].is_string() && record["finished_at"].is_string());
    assert!(
        record.get("input").is_none(),
        "the record never carries the input"
    );

    app.wait_webhooks(1, Duration::from_secs(20)).await?;
    let delivery = app.receiver.deliveries().remove(0);
    assert!(delivery.verified, "our verifier accepts the signature");
    // An independent Standard Webhooks implementation must accept it too.
    let mut headers = http::HeaderMap::new();
    headers.insert("webhook-id", delivery.webhook_id.parse()?);
    headers.insert("webhook-timestamp", delivery.timestamp.parse()?);
    headers.insert("webhook-signature", delivery.signature.parse()?);
    standardwebhooks::Webhook::new(&app.acme.webhook_secret)?
        .verify(&delivery.body, &headers)
        .map_err(|e| anyhow::anyhow!("standardwebhooks rejected the delivery: {e:?}"))?;
    let event = delivery.event.expect("JSON body");
    assert_eq!(event["type"], "job.succeeded");
    assert_eq!(event["data"]["id"], id.as_str());
    assert_eq!(event["data"]["output"], record["output"]);
    assert_eq!(event["timestamp"], record["finished_at"]);

    // The delivery is recorded on the job.
    let delivered =
        agentfleet_tests::wait_until(Duration::from_secs(10), "webhook recorded", || async {
            let record = app.job(&id).await.ok()?;
            record["webhook"]["delivered_at"]
                .is_string()
                .then_some(record)
        })
        .await?;
    assert_eq!(delivered["webhook"]["last_status"], 204);
    assert_eq!(delivered["webhook"]["attempts"], 1);
    assert_eq!(app.llm.calls_per_job().get(&id), Some(&1));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_without_webhook_still_completes() -> anyhow::Result<()> {
    let app = TestApp::spawn(AppOptions::default()).await?;
    let response = app
        .submit_as(
            &app.acme,
            &json!({"agent": "summarize", "input": "plain text"}),
        )
        .await;
    assert_eq!(response.status(), 202);
    let id = response.json::<Value>().await?["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let records = app.wait_terminal(&[id], Duration::from_secs(20)).await?;
    assert_eq!(records[0]["status"], "succeeded");
    assert_eq!(records[0]["webhook"], Value::Null);
    assert_eq!(app.receiver.count(), 0);
    Ok(())
}

/// During a secret rotation every active secret signs: a receiver holding the old secret and
/// one holding the new both verify the delivery with an independent Standard Webhooks
/// implementation, and a tampered id, timestamp or body fails with either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn during_a_secret_rotation_both_secrets_verify() -> anyhow::Result<()> {
    let mut app = TestApp::spawn(AppOptions {
        workers: 0,
        ..AppOptions::default()
    })
    .await?;
    let old = app.acme.webhook_secret.clone();
    let new = agentfleet_common::signing::WebhookSecret::generate();
    app.set_webhook_secrets("acme", format!("{new} {old}"));
    app.start_worker().await?;
    app.submit_job("summarize", "rotate").await?;
    app.wait_webhooks(1, Duration::from_secs(20)).await?;
    let delivery = app.receiver.deliveries().remove(0);
    assert!(
        delivery.verified,
        "the receiver holding the old secret accepts it"
    );
    assert_eq!(
        delivery.signature.split(' ').count(),
        2,
        "one signature per secret"
    );
    let headers = |id: &str, timestamp: &str| -> anyhow::Result<http::HeaderMap> {
        let mut headers = http::HeaderMap::new();
        headers.insert("webhook-id", id.parse()?);
        headers.insert("webhook-timestamp", timestamp.parse()?);
        headers.insert("webhook-signature", delivery.signature.parse()?);
        Ok(headers)
    };
    let later = (delivery.timestamp.parse::<i64>()? + 1).to_string();
    for secret in [&old, &new] {
        let hook = standardwebhooks::Webhook::new(secret)?;
        let genuine = headers(&delivery.webhook_id, &delivery.timestamp)?;
        hook.verify(&delivery.body, &genuine)
            .map_err(|e| anyhow::anyhow!("standardwebhooks rejected the delivery: {e:?}"))?;
        let other_id = headers("msg_tampered", &delivery.timestamp)?;
        assert!(
            hook.verify(&delivery.body, &other_id).is_err(),
            "tampered id"
        );
        let other_time = headers(&delivery.webhook_id, &later)?;
        assert!(
            hook.verify(&delivery.body, &other_time).is_err(),
            "tampered timestamp"
        );
        assert!(hook.verify(b"{}", &genuine).is_err(), "tampered body");
    }
    Ok(())
}
