//! API errors as RFC 9457 problem+json. Every error a client can cause gets a 4xx that names
//! what was wrong; 5xx bodies stay opaque (the cause is logged, never returned).

use std::time::Duration;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("missing or invalid bearer token")]
    Unauthorized,
    #[error("not found")]
    NotFound,
    #[error("method not allowed on this resource")]
    MethodNotAllowed,
    #[error("invalid request at `{field}`: {detail}")]
    InvalidField { field: String, detail: String },
    #[error("invalid request: {0}")]
    InvalidBody(String),
    #[error("content type must be application/json")]
    UnsupportedMediaType,
    #[error("request body larger than {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("dependency unavailable: {0}")]
    Unavailable(String),
    #[error("this dispatcher has too many requests in flight; retry shortly")]
    Busy,
    #[error(
        "the request took longer than {} ms; retry shortly (a POST with an Idempotency-Key is safe to repeat)",
        after.as_millis()
    )]
    Timeout { after: Duration },
    #[error("{0}")]
    Conflict(String),
    #[error("this Idempotency-Key was used with a different request body")]
    IdempotencyMismatch,
    #[error("agent `{agent}` has too many jobs waiting; retry later")]
    Overloaded { agent: String },
    #[error("{detail}")]
    BudgetSpent {
        detail: String,
        resets_at: chrono::DateTime<chrono::Utc>,
    },
    #[error("{detail}")]
    Limited {
        limit: Limit,
        detail: String,
        retry_after: Duration,
    },
}

/// Which limit refused a submission.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// This replica's per-key burst limiter.
    Burst,
    /// The tenant's `max_queued_jobs`.
    QueuedJobs,
    /// The tenant's `submissions_per_minute`.
    Submissions,
}

impl ApiError {
    pub fn field(field: impl Into<String>, detail: impl Into<String>) -> Self {
        Self::InvalidField {
            field: field.into(),
            detail: detail.into(),
        }
    }

    fn status(&self) -> StatusCode {
        match self {
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::InvalidField { .. } | Self::InvalidBody(_) => StatusCode::BAD_REQUEST,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            // A timeout is the server's, not the client's (408 would blame the client's
            // slowness in sending), and is retried like an outage.
            Self::Unavailable(_) | Self::Busy | Self::Timeout { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::IdempotencyMismatch => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Overloaded { .. } | Self::Limited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::BudgetSpent { .. } => StatusCode::PAYMENT_REQUIRED,
        }
    }

    fn kind(&self) -> (&'static str, &'static str) {
        match self {
            Self::Unauthorized => ("unauthorized", "Unauthorized"),
            Self::NotFound => ("not-found", "Not Found"),
            Self::MethodNotAllowed => ("method-not-allowed", "Method Not Allowed"),
            Self::InvalidField { .. } | Self::InvalidBody(_) => {
                ("invalid-request", "Invalid request")
            }
            Self::UnsupportedMediaType => ("unsupported-media-type", "Unsupported Media Type"),
            Self::PayloadTooLarge { .. } => ("payload-too-large", "Payload Too Large"),
            Self::Unavailable(_) => ("unavailable", "Service Unavailable"),
            Self::Busy => ("busy", "Service Unavailable"),
            Self::Timeout { .. } => ("timeout", "Service Unavailable"),
            Self::Conflict(_) => ("conflict", "Conflict"),
            Self::IdempotencyMismatch => ("idempotency-mismatch", "Unprocessable Content"),
            Self::Overloaded { .. } => ("overloaded", "Too Many Requests"),
            Self::Limited {
                limit: Limit::Burst,
                ..
            } => ("rate-limited", "Too Many Requests"),
            Self::Limited { .. } => ("tenant-quota", "Too Many Requests"),
            Self::BudgetSpent { .. } => ("budget-exhausted", "Payment Required"),
        }
    }
}

impl Limit {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Burst => "per_key_rate",
            Self::QueuedJobs => "max_queued_jobs",
            Self::Submissions => "submissions_per_minute",
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let (slug, title) = self.kind();
        let detail = match &self {
            // The cause of an outage is for the operator's logs, not for the client.
            Self::Unavailable(cause) => {
                tracing::warn!(%cause, "request refused: dependency unavailable");
                "a dependency is unavailable; retry shortly".to_owned()
            }
            other => other.to_string(),
        };
        let mut body = json!({
            "type": format!("urn:agentfleet:problem:{slug}"),
            "title": title,
            "status": status.as_u16(),
            "detail": detail,
        });
        if let Self::InvalidField { field, .. } = &self {
            body["field"] = json!(field);
        }
        if let Self::Limited { limit, .. } = &self {
            body["limit"] = json!(limit.as_str());
        }
        if let Self::BudgetSpent { resets_at, .. } = &self {
            body["resets_at"] = json!(resets_at);
        }
        let mut response = (status, body.to_string()).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        match self {
            Self::Unauthorized => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            Self::Unavailable(_) | Self::Busy | Self::Timeout { .. } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            Self::Overloaded { .. } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("2"));
            }
            Self::BudgetSpent { resets_at, .. } => {
                let secs = (resets_at - chrono::Utc::now()).num_seconds().max(1);
                headers.insert(header::RETRY_AFTER, HeaderValue::from(secs as u64));
            }
            Self::Limited { retry_after, .. } => {
                // Whole seconds, rounded up: a client that waits that long is let in.
                let secs = retry_after.as_millis().div_ceil(1000).max(1);
                headers.insert(header::RETRY_AFTER, HeaderValue::from(secs as u64));
            }
            _ => {}
        }
        response
    }
}
