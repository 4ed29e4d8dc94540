//! API errors as RFC 9457 problem+json. Every error a client can cause gets a 4xx that names
//! what was wrong; 5xx bodies stay opaque (the cause is logged, never returned).

use std::time::Duration;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

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

/// Every problem the API answers with: its `type` slug, `title` and status. The OpenAPI
/// document lists these as the values of `type`; a test checks each [`ApiError`] is here.
pub const PROBLEM_TYPES: &[(&str, &str, u16)] = &[
    ("unauthorized", "Unauthorized", 401),
    ("not-found", "Not Found", 404),
    ("method-not-allowed", "Method Not Allowed", 405),
    ("invalid-request", "Invalid request", 400),
    ("unsupported-media-type", "Unsupported Media Type", 415),
    ("payload-too-large", "Payload Too Large", 413),
    ("unavailable", "Service Unavailable", 503),
    ("busy", "Service Unavailable", 503),
    ("timeout", "Service Unavailable", 503),
    ("conflict", "Conflict", 409),
    ("idempotency-mismatch", "Unprocessable Content", 422),
    ("overloaded", "Too Many Requests", 429),
    ("rate-limited", "Too Many Requests", 429),
    ("tenant-quota", "Too Many Requests", 429),
    ("budget-exhausted", "Payment Required", 402),
];

/// The URN of a problem type: `urn:agentfleet:problem:{slug}`.
pub fn problem_type(slug: &str) -> String {
    format!("urn:agentfleet:problem:{slug}")
}

/// An RFC 9457 problem, as every error is answered (`application/problem+json`).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Problem {
    /// `urn:agentfleet:problem:{slug}`, one of the types listed in this document.
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    /// What was wrong, for a person; a 5xx never says more than that a dependency failed.
    pub detail: String,
    /// For `invalid-request`: the offending field, as a path (`input.messages[2].role`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// For `tenant-quota` and `rate-limited`: `max_queued_jobs`, `submissions_per_minute` or
    /// `per_key_rate`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<String>,
    /// For `budget-exhausted`: when the spent budget starts again.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resets_at: Option<chrono::DateTime<chrono::Utc>>,
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
        let body = Problem {
            kind: problem_type(slug),
            title: title.to_owned(),
            status: status.as_u16(),
            detail,
            field: match &self {
                Self::InvalidField { field, .. } => Some(field.clone()),
                _ => None,
            },
            limit: match &self {
                Self::Limited { limit, .. } => Some(limit.as_str().to_owned()),
                _ => None,
            },
            resets_at: match &self {
                Self::BudgetSpent { resets_at, .. } => Some(*resets_at),
                _ => None,
            },
        };
        let body = serde_json::to_string(&body).unwrap_or_default();
        let mut response = (status, body).into_response();
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

#[cfg(test)]
mod tests {
    use super::*;

    /// One of each error. The match has no wildcard: a new variant does not compile until it
    /// is added here, and so checked against [`PROBLEM_TYPES`].
    fn one_of_each() -> Vec<ApiError> {
        let all = vec![
            ApiError::Unauthorized,
            ApiError::NotFound,
            ApiError::MethodNotAllowed,
            ApiError::field("f", "d"),
            ApiError::InvalidBody("b".into()),
            ApiError::UnsupportedMediaType,
            ApiError::PayloadTooLarge { limit: 1 },
            ApiError::Unavailable("u".into()),
            ApiError::Busy,
            ApiError::Timeout {
                after: Duration::from_secs(1),
            },
            ApiError::Conflict("c".into()),
            ApiError::IdempotencyMismatch,
            ApiError::Overloaded { agent: "a".into() },
            ApiError::BudgetSpent {
                detail: "d".into(),
                resets_at: chrono::Utc::now(),
            },
            ApiError::Limited {
                limit: Limit::Burst,
                detail: "d".into(),
                retry_after: Duration::from_secs(1),
            },
            ApiError::Limited {
                limit: Limit::QueuedJobs,
                detail: "d".into(),
                retry_after: Duration::from_secs(1),
            },
        ];
        for err in &all {
            match err {
                ApiError::Unauthorized
                | ApiError::NotFound
                | ApiError::MethodNotAllowed
                | ApiError::InvalidField { .. }
                | ApiError::InvalidBody(_)
                | ApiError::UnsupportedMediaType
                | ApiError::PayloadTooLarge { .. }
                | ApiError::Unavailable(_)
                | ApiError::Busy
                | ApiError::Timeout { .. }
                | ApiError::Conflict(_)
                | ApiError::IdempotencyMismatch
                | ApiError::Overloaded { .. }
                | ApiError::BudgetSpent { .. }
                | ApiError::Limited { .. } => {}
            }
        }
        all
    }

    #[test]
    fn every_problem_is_listed_with_its_title_and_status() {
        for err in one_of_each() {
            let (slug, title) = err.kind();
            let status = err.status().as_u16();
            assert!(
                PROBLEM_TYPES.contains(&(slug, title, status)),
                "{slug} ({title}, {status}) is not in PROBLEM_TYPES"
            );
        }
        let answered: std::collections::HashSet<_> =
            one_of_each().iter().map(|e| e.kind().0).collect();
        for (slug, ..) in PROBLEM_TYPES {
            assert!(
                answered.contains(slug),
                "{slug} is listed but never answered"
            );
        }
    }
}
