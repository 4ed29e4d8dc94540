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
