//! `/v1/jobs` and `/v1/agents`.

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::Utc;
use serde_json::json;
use tracing::Instrument as _;
use uuid::Uuid;

use agentfleet_common::wire::{JobMessage, JobRecord, JobSpec, SCHEMA_VERSION};

use crate::problem::ApiError;
use crate::request::parse_submit;
use crate::AppState;

pub async fn submit(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let inner = &state.inner;
    let result = async {
        let tenant_config = inner.tenants.authenticate(&headers)?;
        let tenant = tenant_config.id.clone();
        require_json(&headers)?;
        let limit = inner.config.dispatcher.max_body_bytes;
        let bytes: Bytes = axum::body::to_bytes(body, limit)
            .await
            .map_err(|_| ApiError::PayloadTooLarge { limit })?;
        let request = parse_submit(&bytes)?;
        if !inner.config.agents.contains_key(&request.agent) {
            return Err(ApiError::field(
                "agent",
                format!("unknown agent `{}`", request.agent),
            ));
        }
        if let Some(url) = &request.webhook_url {
            if tenant_config.webhook_secret_env.is_none() {
                return Err(ApiError::field(
                    "webhook_url",
                    "this tenant has no webhook signing secret configured",
                ));
            }
            inner
                .outbound
                .check_webhook_url(url)
                .map_err(|e| ApiError::field("webhook_url", e.to_string()))?;
        }

        let id = Uuid::now_v7();
        let span = tracing::info_span!("submit", job_id = %id, agent = %request.agent, tenant = %tenant);
        async {
            let record = JobRecord::new_queued(id, &tenant, &request.agent, request.metadata, Utc::now());
            let spec = JobSpec {
                input: request.input,
                webhook_url: request.webhook_url.map(String::from),
            };
            inner
                .store
                .create(&record, &spec)
                .await
                .map_err(|e| ApiError::Unavailable(format!("storing the job: {e}")))?;
            let message = JobMessage {
                v: SCHEMA_VERSION,
                job_id: id,
                tenant: tenant.clone(),
                agent: record.agent.clone(),
                attempt: 1,
                not_before: None,
            };
            if let Err(err) = inner.broker.publish_job(&message).await {
                // Undo the record so nothing half-written stays behind. If Redis is gone too,
                // the orphan record expires with its TTL; no worker will ever see it.
                if let Err(undo) = inner.store.delete(id).await {
                    tracing::error!(error = %undo, "could not remove the record of an unpublished job");
                }
                return Err(ApiError::Unavailable(format!("publishing the job: {err}")));
            }
            inner
                .metrics
                .jobs_submitted
                .with_label_values(&[&record.agent])
                .inc();
            tracing::info!("job accepted");
            let location = format!("/v1/jobs/{id}");
            let body = json!({
                "id": id,
                "status": record.status,
                "agent": record.agent,
                "created_at": record.created_at,
            });
            let mut response = (StatusCode::ACCEPTED, Json(body)).into_response();
            if let Ok(value) = HeaderValue::from_str(&location) {
                response.headers_mut().insert(header::LOCATION, value);
            }
            Ok(response)
        }
        .instrument(span)
        .await
    }
    .await;
    if let Err(err) = &result {
        let reason = match err {
            ApiError::Unauthorized => "unauthorized",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::PayloadTooLarge { .. } => "too_large",
            _ => "invalid",
        };
        inner
            .metrics
            .jobs_rejected
            .with_label_values(&[reason])
            .inc();
    }
    result
}

fn require_json(headers: &HeaderMap) -> Result<(), ApiError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let essence = content_type.split(';').next().unwrap_or_default().trim();
    if essence.eq_ignore_ascii_case("application/json") {
        Ok(())
    } else {
        Err(ApiError::UnsupportedMediaType)
    }
}

pub async fn get(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<JobRecord>, ApiError> {
    let tenant = state.inner.tenants.authenticate(&headers)?;
    // A malformed id is answered exactly like an unknown one.
    let id = Uuid::parse_str(&id).map_err(|_| ApiError::NotFound)?;
    let record = state
        .inner
        .store
        .load(id)
        .await
        .map_err(|e| ApiError::Unavailable(format!("loading the job: {e}")))?
        .ok_or(ApiError::NotFound)?;
    // Another tenant's job does not exist, as far as this tenant can tell.
    if record.tenant != tenant.id {
        return Err(ApiError::NotFound);
    }
    Ok(Json(record))
}

pub async fn agents(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    state.inner.tenants.authenticate(&headers)?;
    let agents: Vec<_> = state
        .inner
        .config
        .agents
        .iter()
        .map(|(name, agent)| {
            // Only what a caller needs: never base URLs, key names or prompts.
            json!({
                "name": name,
                "provider": agent.provider,
                "model": agent.model,
                "max_tokens": agent.max_tokens,
                "concurrency": agent.concurrency,
                "rate_limit": agent.rate_limit,
                "timeout_secs": agent.timeout_secs,
                "retry": agent.retry,
            })
        })
        .collect();
    Ok(Json(json!({ "agents": agents })))
}
