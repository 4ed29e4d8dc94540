use serde_json::{json, Value};

use agentfleet_tests::{AppOptions, TestApp};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_v1_route_needs_a_valid_bearer_token() -> anyhow::Result<()> {
    let app = TestApp::spawn(AppOptions {
        workers: 0,
        ..AppOptions::default()
    })
    .await?;
    let job = json!({"agent": "summarize", "input": "x"});
    let id = uuid::Uuid::now_v7();
    for auth in [
        None,
        Some("Bearer wrong-key"),
        Some("Basic abc"),
        Some(app.acme.api_key.as_str()),
    ] {
        for (method, path) in [
            ("POST", "/v1/jobs".to_owned()),
            ("GET", format!("/v1/jobs/{id}")),
            ("GET", "/v1/agents".to_owned()),
        ] {
            let mut request = match method {
                "POST" => app.http.post(app.url(&path)).json(&job),
                _ => app.http.get(app.url(&path)),
            };
            if let Some(auth) = auth {
                request = request.header("authorization", auth);
            }
            let response = request.send().await?;
            let status = response.status();
            let body: Value = response.json().await.unwrap_or_default();
            if auth.is_none() || auth.is_some_and(|a| !a.starts_with("key-")) {
                assert_eq!(status, 401, "{method} {path} with {auth:?}");
                assert_eq!(body["status"], 401);
                assert_eq!(body["type"], "urn:agentfleet:problem:unauthorized");
            }
        }
    }
    assert!(
        app.job_keys().await?.is_empty(),
        "no unauthenticated request wrote anything"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_tenants_job_is_indistinguishable_from_an_unknown_one() -> anyhow::Result<()> {
    let app = TestApp::spawn(AppOptions {
        workers: 0,
        ..AppOptions::default()
    })
    .await?;
    let id = app.submit_job("summarize", "acme's private work").await?;
    assert_eq!(app.get_job_as(&app.acme, &id).await.status(), 200);

    let theirs = app.get_job_as(&app.globex, &id).await;
    assert_eq!(theirs.status(), 404);
    let theirs: Value = theirs.json().await?;
    let unknown = app
        .get_job_as(&app.globex, &uuid::Uuid::now_v7().to_string())
        .await;
    assert_eq!(unknown.status(), 404);
    let unknown: Value = unknown.json().await?;
    assert_eq!(
        theirs, unknown,
        "same answer for another tenant's job and an unknown id"
    );
    let malformed = app.get_job_as(&app.globex, "not-a-uuid").await;
    assert_eq!(malformed.status(), 404);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_are_listed_without_secrets_or_endpoints() -> anyhow::Result<()> {
    let app = TestApp::spawn(AppOptions {
        workers: 0,
        ..AppOptions::default()
    })
    .await?;
    let response = app
        .http
        .get(app.url("/v1/agents"))
        .bearer_auth(&app.acme.api_key)
        .send()
        .await?;
    assert_eq!(response.status(), 200);
    let text = response.text().await?;
    let body: Value = serde_json::from_str(&text)?;
    assert_eq!(body["agents"][0]["name"], "summarize");
    assert_eq!(body["agents"][0]["concurrency"], 16);
    assert!(!text.contains(&app.llm_addr.to_string()), "no base URL");
    assert!(!text.contains("system_prompt") && !text.contains("You are a test agent"));
    Ok(())
}

/// A tenant with several keys: each live one authenticates as the tenant (a rotation needs
/// no downtime), and an expired one answers exactly like an unknown key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenants_keys_rotate_and_an_expired_key_is_unknown() -> anyhow::Result<()> {
    use sha2::Digest as _;
    let hash = |token: &str| hex::encode(sha2::Sha256::digest(token.as_bytes()));
    let keys = format!(
        "api_keys: [{{ id: next, sha256: \"{}\" }}, {{ id: retired, sha256: \"{}\", expires_at: \"2020-01-01T00:00:00Z\" }}]",
        hash("acme-next-key"),
        hash("acme-retired-key")
    );
    let app = TestApp::spawn(AppOptions {
        workers: 0,
        tenant_settings: vec![("acme", keys)],
        ..AppOptions::default()
    })
    .await?;
    let submit = |token: &str| {
        app.http
            .post(app.url("/v1/jobs"))
            .bearer_auth(token)
            .json(&json!({"agent": "summarize", "input": "x"}))
            .send()
    };
    assert_eq!(
        submit(&app.acme.api_key).await?.status(),
        202,
        "the default key"
    );
    let next = submit("acme-next-key").await?;
    assert_eq!(next.status(), 202, "the new key");
    let id = next.json::<Value>().await?["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let read = app.get_job_as(&app.acme, &id).await;
    assert_eq!(read.status(), 200, "the same tenant, whichever key");
    let retired = submit("acme-retired-key").await?;
    let unknown = submit("no-such-key").await?;
    assert_eq!(retired.status(), 401);
    assert_eq!(unknown.status(), 401);
    assert_eq!(
        retired.json::<Value>().await?,
        unknown.json::<Value>().await?,
        "expired and unknown keys are indistinguishable"
    );
    Ok(())
}
