//! The operational endpoints every process serves: `/healthz` (alive), `/readyz` (broker and
//! Redis reachable, else 503) and `/metrics` (Prometheus text format).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use crate::broker::Broker;
use crate::metrics::Metrics;
use crate::store::Redis;

/// What readiness depends on.
#[derive(Clone)]
pub struct Dependencies {
    pub broker: Broker,
    pub redis: Redis,
    pub metrics: Arc<Metrics>,
}

impl Dependencies {
    /// Checks both services, each bounded so `/readyz` answers within about a second.
    pub async fn check(&self) -> (bool, bool) {
        let bound = Duration::from_millis(900);
        let broker = async {
            if self.broker.is_connected().await {
                return true;
            }
            // Not connected: try once, within the bound (this is also how a process that
            // started during an outage notices the broker is back).
            matches!(
                tokio::time::timeout(bound, self.broker.connection()).await,
                Ok(Ok(_))
            )
        };
        let redis = async {
            matches!(
                tokio::time::timeout(bound, self.redis.ping()).await,
                Ok(Ok(()))
            )
        };
        tokio::join!(broker, redis)
    }
}

pub fn router(deps: Dependencies) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(deps)
}

/// Alive: answers as long as the process serves.
#[utoipa::path(get, path = "/healthz", tag = "operations", operation_id = "healthz", security(()),
    responses((status = 200, description = "`{\"status\": \"ok\"}`", body = Object)))]
pub async fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

/// Ready: RabbitMQ and Redis reachable (each checked within about a second).
#[utoipa::path(get, path = "/readyz", tag = "operations", operation_id = "readyz", security(()),
    responses(
        (status = 200, description = "`{\"rabbitmq\": \"up\", \"redis\": \"up\"}`", body = Object),
        (status = 503, description = "One is down: `{\"rabbitmq\": \"down\", ...}`", body = Object),
    ))]
pub async fn readyz(State(deps): State<Dependencies>) -> Response {
    let (broker, redis) = deps.check().await;
    let status = if broker && redis {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let word = |ok: bool| if ok { "up" } else { "down" };
    (
        status,
        Json(json!({"rabbitmq": word(broker), "redis": word(redis)})),
    )
        .into_response()
}

/// Prometheus metrics, text format.
#[utoipa::path(get, path = "/metrics", tag = "operations", operation_id = "metrics", security(()),
    responses((status = 200, description = "Prometheus text format 0.0.4", body = String, content_type = "text/plain")))]
pub async fn metrics(State(deps): State<Dependencies>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        deps.metrics.render(),
    )
        .into_response()
}
