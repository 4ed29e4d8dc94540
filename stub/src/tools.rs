//! An HTTP tool server for agent runs that counts what it is asked, so that tests can prove from
//! the outside whether a tool was called again after a crash or a retry.
//!
//! Routes, all answering JSON:
//! - `GET /lookup/{id}` — a read: `{"id": id, "value": "value-<id>"}`.
//! - `POST /orders` — a write made idempotent by its `Idempotency-Key` header: a key seen before
//!   gets the first answer again and creates nothing.
//! - `POST /payments` — a write that ignores `Idempotency-Key` on purpose: every call pays.
//! - `GET /big?bytes=N` — a body of N bytes (default 100 000), for truncation.
//! - `GET /slow?ms=N` — answers after N ms (default 1 000, at most 60 000).
//! - `GET /fail` — 500 `{"error": "boom"}`.
//!
//! [`ToolServer::set_latency`] (or `--latency-ms` of the binary) adds a fixed delay to every
//! request, on top of any route's own: the benchmark's stand-in for a real tool's round trip.
//!
//! Counters are kept per path prefix, segment by segment: a call of `/lookup/7` counts under
//! `/`, `/lookup` and `/lookup/7` (but `/look` matches nothing).
//!
//! A request's body is read in full and the request counted before any [`ToolServer::hold`]
//! makes it wait, and its handler then runs in its own task: a held write still takes effect on
//! release after the caller was killed, like a real server that did the work but could not
//! deliver the answer — the case that makes a resumed run's repeat dangerous.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, RawQuery, Request, State};
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use tokio::sync::{watch, Notify};

/// Largest request body read, as axum's default limit.
const MAX_BODY_BYTES: usize = 2 * 1024 * 1024;
/// `/big` default size, and its ceiling so that a typo cannot exhaust memory.
const BIG_DEFAULT_BYTES: usize = 100_000;
const BIG_MAX_BYTES: usize = 64 * 1024 * 1024;
/// `/slow` default delay, and its ceiling.
const SLOW_DEFAULT_MS: u64 = 1_000;
const SLOW_MAX_MS: u64 = 60_000;

/// The tool server's shared state; clone it to keep a handle after `router()`.
#[derive(Clone, Default)]
pub struct ToolServer {
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    counters: Mutex<Counters>,
    /// Held path prefixes; each sender's value turns `false` on release.
    holds: Mutex<HashMap<String, watch::Sender<bool>>>,
    /// Wakes [`ToolServer::wait_requests`] on every request received.
    received: Notify,
    /// Added to every request, after any hold and before the handler.
    latency: Mutex<Duration>,
}

#[derive(Default)]
struct Counters {
    /// By path prefix, see the module documentation.
    paths: HashMap<String, PathStats>,
    /// `(path, Idempotency-Key)` of every request that carried one, in order received.
    keys: Vec<(String, String)>,
    /// The answer given per idempotency key, replayed for a repeat.
    orders: HashMap<String, Value>,
    orders_created: u64,
    payments_made: u64,
}

#[derive(Default, Clone, Copy)]
struct PathStats {
    requests: u64,
    executions: u64,
    in_flight: u64,
    peak_in_flight: u64,
}

impl ToolServer {
    pub fn new() -> Self {
        Self::default()
    }

    /// A server that answers every request `latency` later than it otherwise would.
    pub fn with_latency(latency: Duration) -> Self {
        let server = Self::new();
        server.set_latency(latency);
        server
    }

    /// Every request from now on waits `latency` before its handler runs (counted as in
    /// flight meanwhile); `Duration::ZERO` turns the delay off.
    pub fn set_latency(&self, latency: Duration) {
        *lock(&self.shared.latency) = latency;
    }

    pub fn latency(&self) -> Duration {
        *lock(&self.shared.latency)
    }

    pub fn router(&self) -> Router {
        Router::new()
            .route("/lookup/{id}", get(lookup))
            .route("/orders", post(orders))
            .route("/payments", post(payments))
            .route("/big", get(big))
            .route("/slow", get(slow))
            .route("/fail", get(fail))
            .fallback(not_found)
            .layer(middleware::from_fn_with_state(self.clone(), observe))
            .with_state(self.clone())
    }

    /// Requests under `path_prefix` wait, counted as received, until [`ToolServer::release`].
    pub fn hold(&self, path_prefix: &str) {
        lock(&self.shared.holds)
            .entry(normalize(path_prefix))
            .or_insert_with(|| watch::channel(true).0)
            .send_replace(true);
    }

    /// Lets the requests held under `path_prefix` (and later ones) through.
    pub fn release(&self, path_prefix: &str) {
        if let Some(held) = lock(&self.shared.holds).remove(&normalize(path_prefix)) {
            held.send_replace(false);
        }
    }

    /// Every request received under `path_prefix`, held, repeated and failed ones included.
    pub fn requests(&self, path_prefix: &str) -> u64 {
        self.stats(path_prefix).requests
    }

    /// Effects: handlers that did their work. A repeated `/orders` key is not one; every
    /// `/payments` call is.
    pub fn executions(&self, path_prefix: &str) -> u64 {
        self.stats(path_prefix).executions
    }

    /// Requests under `path_prefix` in flight now (received, not yet answered).
    pub fn in_flight(&self, path_prefix: &str) -> u64 {
        self.stats(path_prefix).in_flight
    }

    /// The most requests under `path_prefix` in flight at once.
    pub fn in_flight_peak(&self, path_prefix: &str) -> u64 {
        self.stats(path_prefix).peak_in_flight
    }

    /// The `Idempotency-Key` of every request under `path_prefix` that had one, in order
    /// received, repeats included.
    pub fn idempotency_keys(&self, path_prefix: &str) -> Vec<String> {
        let prefix = normalize(path_prefix);
        lock(&self.shared.counters)
            .keys
            .iter()
            .filter(|(path, _)| within(&prefix, path))
            .map(|(_, key)| key.clone())
            .collect()
    }

    /// Resolves once at least `n` requests under `path_prefix` were received (wrap it in a
    /// timeout).
    pub async fn wait_requests(&self, path_prefix: &str, n: u64) {
        loop {
            let mut received = std::pin::pin!(self.shared.received.notified());
            // Registered before the check, so a request arriving in between still wakes us.
            received.as_mut().enable();
            if self.requests(path_prefix) >= n {
                return;
            }
            received.await;
        }
    }

    fn stats(&self, path_prefix: &str) -> PathStats {
        lock(&self.shared.counters)
            .paths
            .get(&normalize(path_prefix))
            .copied()
            .unwrap_or_default()
    }

    fn received(&self, path: &str, key: Option<String>) {
        let mut counters = lock(&self.shared.counters);
        for prefix in prefixes(path) {
            let stats = counters.paths.entry(prefix).or_default();
            stats.requests += 1;
            stats.in_flight += 1;
            stats.peak_in_flight = stats.peak_in_flight.max(stats.in_flight);
        }
        if let Some(key) = key {
            counters.keys.push((path.to_owned(), key));
        }
        drop(counters);
        self.shared.received.notify_waiters();
    }

    /// Resolves when no hold covers `path`. The holds are looked up now, so a release that
    /// comes before the wait starts is not missed.
    fn released(&self, path: &str) -> impl std::future::Future<Output = ()> + Send + 'static {
        let waits: Vec<watch::Receiver<bool>> = lock(&self.shared.holds)
            .iter()
            .filter(|(prefix, _)| within(prefix, path))
            .map(|(_, held)| held.subscribe())
            .collect();
        async move {
            for mut held in waits {
                // An error means the hold is gone, which is a release too.
                let _ = held.wait_for(|held| !held).await;
            }
        }
    }
}

/// Counts a request as done however its handler ends.
struct InFlight {
    server: ToolServer,
    path: String,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut counters = lock(&self.server.shared.counters);
        for prefix in prefixes(&self.path) {
            if let Some(stats) = counters.paths.get_mut(&prefix) {
                stats.in_flight = stats.in_flight.saturating_sub(1);
            }
        }
    }
}

impl Counters {
    fn executed(&mut self, path: &str) {
        for prefix in prefixes(path) {
            self.paths.entry(prefix).or_default().executions += 1;
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding the lock leaves plain counters behind; keep serving.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// `path` and each of its parents, segment by segment: `/a/b` gives `/`, `/a`, `/a/b`.
fn prefixes(path: &str) -> Vec<String> {
    let mut all = vec!["/".to_owned()];
    let mut current = String::new();
    for segment in path.split('/').filter(|s| !s.is_empty()) {
        current.push('/');
        current.push_str(segment);
        all.push(current.clone());
    }
    all
}

/// The form counters are kept under: leading slash, no trailing or doubled ones.
fn normalize(path: &str) -> String {
    prefixes(path).pop().unwrap_or_else(|| "/".to_owned())
}

/// Whether normalized `prefix` covers normalized `path`, segment by segment.
fn within(prefix: &str, path: &str) -> bool {
    prefix == "/"
        || path == prefix
        || path
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// Reads the body, counts the request, waits out any hold and the server's latency, then runs
/// the handler in a task of its own so that a caller hanging up cannot cancel an effect (see
/// the module documentation).
async fn observe(State(server): State<ToolServer>, request: Request, next: Next) -> Response {
    let path = normalize(request.uri().path());
    let (parts, body) = request.into_parts();
    let key = idempotency_key(&parts.headers);
    let body = axum::body::to_bytes(body, MAX_BODY_BYTES).await;
    server.received(&path, key);
    let in_flight = InFlight {
        server: server.clone(),
        path: path.clone(),
    };
    let Ok(body) = body else {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body unreadable or too large",
        );
    };
    let released = server.released(&path);
    let latency = server.latency();
    let request = Request::from_parts(parts, Body::from(body));
    let handler = tokio::spawn(async move {
        let _in_flight = in_flight;
        released.await;
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        next.run(request).await
    });
    handler
        .await
        .unwrap_or_else(|_| error(StatusCode::INTERNAL_SERVER_ERROR, "handler failed"))
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

fn idempotency_key(headers: &HeaderMap) -> Option<String> {
    headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// A `name=<unsigned integer>` query parameter; absent or unparsable gives `None`.
fn query_number(query: Option<&str>, name: &str) -> Option<u64> {
    query?
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(key, _)| *key == name)
        .and_then(|(_, value)| value.parse().ok())
}

async fn lookup(State(server): State<ToolServer>, uri: Uri, Path(id): Path<String>) -> Response {
    lock(&server.shared.counters).executed(uri.path());
    Json(json!({"id": id, "value": format!("value-{id}")})).into_response()
}

async fn orders(
    State(server): State<ToolServer>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        return error(StatusCode::BAD_REQUEST, "invalid JSON");
    };
    let key = idempotency_key(&headers);
    let mut counters = lock(&server.shared.counters);
    if let Some(first) = key.as_ref().and_then(|key| counters.orders.get(key)) {
        return Json(first.clone()).into_response();
    }
    counters.orders_created += 1;
    let answer = json!({"order": counters.orders_created, "body": body});
    if let Some(key) = key {
        counters.orders.insert(key, answer.clone());
    }
    counters.executed(uri.path());
    Json(answer).into_response()
}

async fn payments(State(server): State<ToolServer>, uri: Uri, body: Bytes) -> Response {
    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        return error(StatusCode::BAD_REQUEST, "invalid JSON");
    };
    let mut counters = lock(&server.shared.counters);
    counters.payments_made += 1;
    counters.executed(uri.path());
    Json(json!({"payment": counters.payments_made, "body": body})).into_response()
}

/// Exactly `bytes` bytes of JSON, `{"data":"xxx…"}`, or the 11-byte `{"data":""}` when fewer
/// are asked for.
async fn big(State(server): State<ToolServer>, uri: Uri, RawQuery(query): RawQuery) -> Response {
    lock(&server.shared.counters).executed(uri.path());
    let bytes = query_number(query.as_deref(), "bytes")
        .map_or(BIG_DEFAULT_BYTES, |n| {
            usize::try_from(n).unwrap_or(BIG_MAX_BYTES)
        })
        .min(BIG_MAX_BYTES);
    const FRAME: &str = "{\"data\":\"\"}";
    let mut body = String::with_capacity(bytes.max(FRAME.len()));
    body.push_str("{\"data\":\"");
    body.extend(std::iter::repeat_n('x', bytes.saturating_sub(FRAME.len())));
    body.push_str("\"}");
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

async fn slow(State(server): State<ToolServer>, uri: Uri, RawQuery(query): RawQuery) -> Response {
    let ms = query_number(query.as_deref(), "ms")
        .unwrap_or(SLOW_DEFAULT_MS)
        .min(SLOW_MAX_MS);
    tokio::time::sleep(Duration::from_millis(ms)).await;
    lock(&server.shared.counters).executed(uri.path());
    Json(json!({ "slept_ms": ms })).into_response()
}

async fn fail(State(server): State<ToolServer>, uri: Uri) -> Response {
    lock(&server.shared.counters).executed(uri.path());
    error(StatusCode::INTERNAL_SERVER_ERROR, "boom")
}

async fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, "no such tool")
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    /// The latency applies to every route, the fallback included, and can be turned off.
    #[tokio::test]
    async fn a_set_latency_delays_every_route() {
        let server = ToolServer::with_latency(Duration::from_millis(150));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a local port");
        let addr = crate::spawn_router(listener, server.router());
        let client = reqwest::Client::new();
        let get = |path: &str| {
            let request = client.get(format!("http://{addr}{path}")).send();
            async move {
                let started = Instant::now();
                let status = request.await.expect("the tool server answers").status();
                (status.as_u16(), started.elapsed())
            }
        };
        for (path, status) in [("/lookup/1", 200), ("/fail", 500), ("/nowhere", 404)] {
            let (answered, took) = get(path).await;
            assert_eq!(answered, status, "{path}");
            assert!(took >= Duration::from_millis(150), "{path} took {took:?}");
        }
        let (_, took) = get("/slow?ms=100").await;
        assert!(
            took >= Duration::from_millis(250),
            "latency adds to /slow: {took:?}"
        );
        assert_eq!(server.in_flight("/"), 0);

        server.set_latency(Duration::ZERO);
        let (_, took) = get("/lookup/2").await;
        assert!(took < Duration::from_millis(150), "turned off: {took:?}");
    }
}
