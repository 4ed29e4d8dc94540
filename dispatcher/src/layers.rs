//! What every request goes through besides its handler, as axum middleware:
//! - a **request id** (`X-Request-Id`: the client's if it is sane, else a new UUID v7), in
//!   the request's span (so every log line of the request carries it), on every response, and
//!   handed to the job it creates;
//! - for the API (`/v1/...`) only: **load shedding** (a replica-wide count of requests in
//!   flight; one over it is answered 503 at once, never queued) and a **timeout**. The
//!   operational endpoints stay outside both, so probes and scrapes answer under load;
//! - problem+json for axum's own 404 and 405.
//!
//! Hand-written rather than tower's `ConcurrencyLimitLayer` + `LoadShedLayer` + `TimeoutLayer`
//! or tower-http's request-id layers: the refusals are [`ApiError`]s rendered like every other
//! problem (no `BoxError` to downcast in a `HandleErrorLayer`), the semaphore is visibly one per
//! replica (`ConcurrencyLimitLayer` makes one per `layer()` call, which under `Router::layer` is
//! one per route), tower-http keeps any incoming id unchecked, and no dependency is added.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tokio::sync::Semaphore;
use tracing::Instrument as _;
use uuid::Uuid;

use crate::problem::ApiError;

pub const REQUEST_ID_HEADER: HeaderName = HeaderName::from_static("x-request-id");

/// The longest client-supplied request id kept; a longer one is replaced.
const MAX_REQUEST_ID_LEN: usize = 128;

/// The request's id, in its extensions for handlers that pass it on (to the job).
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// Takes the client's `X-Request-Id` when it is 1–128 visible ASCII characters (no spaces or
/// controls: it goes into log lines and back into a header), else makes one up.
fn request_id(req: &Request) -> String {
    req.headers()
        .get(&REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|id| is_sane(id))
        .map_or_else(|| Uuid::now_v7().to_string(), str::to_owned)
}

fn is_sane(id: &str) -> bool {
    !id.is_empty() && id.len() <= MAX_REQUEST_ID_LEN && id.bytes().all(|b| b.is_ascii_graphic())
}

/// The outermost layer: every response, an error or a fallback too, carries the id.
pub async fn with_request_id(mut req: Request, next: Next) -> Response {
    let id = request_id(&req);
    let span = tracing::info_span!(
        "request",
        request_id = %id,
        method = %req.method(),
        path = %req.uri().path(),
        // Filled in by authentication: which of the tenant's keys (never the key itself).
        key_id = tracing::field::Empty,
    );
    // Sane by construction: visible ASCII, or a UUID.
    let value = HeaderValue::from_str(&id).ok();
    req.extensions_mut().insert(RequestId(id));
    let mut response = next.run(req).instrument(span).await;
    if let Some(value) = value {
        response.headers_mut().insert(REQUEST_ID_HEADER, value);
    }
    response
}

/// Answers at once when the replica already serves `dispatcher.max_concurrent_requests` API
/// requests: queueing would only make every request slower (and the client's retry, told by
/// `Retry-After`, lands on a replica with room or later on this one).
pub async fn shed_load(State(slots): State<Arc<Semaphore>>, req: Request, next: Next) -> Response {
    let Ok(_permit) = slots.try_acquire_owned() else {
        tracing::debug!("request shed: too many in flight");
        return ApiError::Busy.into_response();
    };
    next.run(req).await
}

/// Bounds one API request by `dispatcher.request_timeout_ms`. Dropping the handler's future
/// is safe: a submission's accept runs in its own task once it has claimed or stored
/// anything (see `jobs::submit`).
pub async fn time_out(State(after): State<Duration>, req: Request, next: Next) -> Response {
    match tokio::time::timeout(after, next.run(req)).await {
        Ok(response) => response,
        Err(_) => {
            tracing::warn!(?after, "request timed out");
            ApiError::Timeout { after }.into_response()
        }
    }
}

/// axum's own 404 (no route) as problem+json.
pub async fn not_found() -> ApiError {
    ApiError::NotFound
}

/// axum's own 405 (a route, not this method) as problem+json; axum adds `Allow` after it.
pub async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_header(value: &[u8]) -> Request {
        let mut req = Request::new(axum::body::Body::empty());
        req.headers_mut().insert(
            REQUEST_ID_HEADER,
            HeaderValue::from_bytes(value).expect("header value"),
        );
        req
    }

    #[test]
    fn a_sane_request_id_is_kept_and_others_replaced() {
        assert_eq!(request_id(&with_header(b"req-42_a.b:c")), "req-42_a.b:c");
        let longest = "x".repeat(MAX_REQUEST_ID_LEN);
        assert_eq!(request_id(&with_header(longest.as_bytes())), longest);
        for insane in [
            "x".repeat(MAX_REQUEST_ID_LEN + 1).into_bytes(),
            b"with space".to_vec(),
            b"tab\there".to_vec(),
            "caf\u{e9}".as_bytes().to_vec(),
            Vec::new(),
        ] {
            let replaced = request_id(&with_header(&insane));
            assert!(
                Uuid::parse_str(&replaced).is_ok(),
                "{insane:?} → {replaced}"
            );
        }
        let generated = request_id(&Request::new(axum::body::Body::empty()));
        let uuid = Uuid::parse_str(&generated).expect("a uuid");
        assert_eq!(uuid.get_version_num(), 7);
    }
}
