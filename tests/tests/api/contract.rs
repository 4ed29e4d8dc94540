//! The OpenAPI document: served, complete, and true to what the routes answer. (The full
//! property-based check against it is schemathesis, in `tests/tests/contract.rs`.)

use serde_json::Value;

use agentfleet_tests::{AgentSpec, AppOptions, TestApp};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_describes_every_route_and_problem() -> anyhow::Result<()> {
    let app = TestApp::spawn(AppOptions {
        workers: 0,
        agents: vec![AgentSpec::new("summarize"), AgentSpec::new("triage")],
        ..AppOptions::default()
    })
    .await?;
    let response = app.http.get(app.url("/openapi.json")).send().await?;
    assert_eq!(response.status(), 200, "served without a key");
    assert_eq!(response.headers()["content-type"], "application/json");
    let doc: Value = response.json().await?;
    assert_eq!(doc["openapi"], "3.1.0");
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );

    let mut operations: Vec<String> = Vec::new();
    for (path, item) in doc["paths"].as_object().into_iter().flatten() {
        for method in item.as_object().into_iter().flatten().map(|(m, _)| m) {
            operations.push(format!("{} {path}", method.to_uppercase()));
        }
    }
    operations.sort();
    assert_eq!(
        operations,
        [
            "DELETE /v1/jobs/{id}",
            "GET /healthz",
            "GET /metrics",
            "GET /openapi.json",
            "GET /readyz",
            "GET /v1/agents",
            "GET /v1/jobs/{id}",
            "GET /v1/jobs/{id}/steps",
            "POST /v1/jobs",
        ]
    );
    let body =
        &doc["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]["application/json"]["schema"];
    assert_eq!(
        body["properties"]["agent"]["enum"],
        serde_json::json!(["summarize", "triage"]),
        "the configured agents"
    );
    assert_eq!(body["additionalProperties"], false);
    let types = doc["components"]["schemas"]["Problem"]["properties"]["type"]["enum"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(types.len(), 15, "{types:?}");

    // Every answer the API gives here is one the document declares for its operation.
    let declared = |path: &str, method: &str, status: u16| {
        doc["paths"][path][method]["responses"]
            .get(status.to_string())
            .is_some()
    };
    let id = app.submit_job("summarize", "hello").await?;
    let unknown = uuid::Uuid::now_v7().to_string();
    for (method, path, url, expect) in [
        ("get", "/v1/jobs/{id}", format!("/v1/jobs/{id}"), 200),
        ("get", "/v1/jobs/{id}", format!("/v1/jobs/{unknown}"), 404),
        (
            "get",
            "/v1/jobs/{id}",
            format!("/v1/jobs/{id}?include=nope"),
            400,
        ),
        (
            "get",
            "/v1/jobs/{id}/steps",
            format!("/v1/jobs/{id}/steps"),
            200,
        ),
        ("get", "/v1/agents", "/v1/agents".to_owned(), 200),
        ("delete", "/v1/jobs/{id}", format!("/v1/jobs/{id}"), 200),
        ("delete", "/v1/jobs/{id}", format!("/v1/jobs/{id}"), 409),
    ] {
        let request = match method {
            "delete" => app.http.delete(app.url(&url)),
            _ => app.http.get(app.url(&url)),
        };
        let status = request
            .bearer_auth(&app.acme.api_key)
            .send()
            .await?
            .status()
            .as_u16();
        assert_eq!(status, expect, "{method} {url}");
        assert!(declared(path, method, status), "{method} {path} {status}");
        let anonymous = match method {
            "delete" => app.http.delete(app.url(&url)),
            _ => app.http.get(app.url(&url)),
        };
        let status = anonymous.send().await?.status().as_u16();
        assert_eq!(status, 401, "{method} {url} without a key");
        assert!(declared(path, method, 401), "{method} {path} 401");
    }
    Ok(())
}
