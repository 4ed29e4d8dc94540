//! A webhook receiver that verifies each delivery's Standard Webhooks signature and records
//! it. It can be told to fail its first deliveries, to exercise retries.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use serde_json::Value;

use agentfleet_common::signing::{self, WebhookSecret};

use crate::gate::Gate;

/// One delivery as received.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub webhook_id: String,
    pub timestamp: String,
    pub signature: String,
    pub body: Vec<u8>,
    pub event: Option<Value>,
    pub verified: bool,
    pub at: Instant,
}

#[derive(Clone)]
pub struct Receiver {
    secret: Option<WebhookSecret>,
    deliveries: Arc<Mutex<Vec<Delivery>>>,
    fail_first: Arc<AtomicU32>,
    gone: Arc<std::sync::atomic::AtomicBool>,
    requests: Arc<AtomicU32>,
    notify: Arc<tokio::sync::Notify>,
    gate: Gate,
}

impl Receiver {
    /// With a secret, deliveries whose signature does not verify are answered 401.
    pub fn new(secret: Option<WebhookSecret>) -> Self {
        Self {
            secret,
            deliveries: Arc::default(),
            fail_first: Arc::default(),
            gone: Arc::default(),
            requests: Arc::default(),
            notify: Arc::default(),
            gate: Gate::default(),
        }
    }

    pub fn router(&self) -> Router {
        Router::new()
            .route("/", post(receive))
            .route("/{*path}", post(receive))
            .with_state(self.clone())
    }

    /// Answer 500 to the next `n` deliveries.
    pub fn fail_next(&self, n: u32) {
        self.fail_first.store(n, Ordering::SeqCst);
    }

    /// Answer 410 Gone to every delivery from now on (the endpoint was removed).
    pub fn set_gone(&self) {
        self.gone.store(true, Ordering::SeqCst);
    }

    /// Requests that arrive from now on wait, unanswered, until [`Receiver::open_gate`].
    pub fn close_gate(&self) {
        self.gate.close();
    }

    /// Answers every request held at the gate, all at once.
    pub fn open_gate(&self) {
        self.gate.open();
    }

    /// Every request received, failed ones included.
    pub fn requests(&self) -> u32 {
        self.requests.load(Ordering::SeqCst)
    }

    pub fn deliveries(&self) -> Vec<Delivery> {
        lock(&self.deliveries).clone()
    }

    pub fn count(&self) -> usize {
        lock(&self.deliveries).len()
    }

    /// Resolves on the next recorded delivery.
    pub async fn changed(&self) {
        self.notify.notified().await;
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

async fn receive(
    State(receiver): State<Receiver>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> StatusCode {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    receiver.requests.fetch_add(1, Ordering::SeqCst);
    receiver.gate.pass().await;
    if receiver.gone.load(Ordering::SeqCst) {
        return StatusCode::GONE;
    }
    let webhook_id = header(signing::HEADER_ID);
    let timestamp = header(signing::HEADER_TIMESTAMP);
    let signature = header(signing::HEADER_SIGNATURE);
    let verified = receiver.secret.as_ref().is_some_and(|secret| {
        secret
            .verify(
                &webhook_id,
                &timestamp,
                &signature,
                &body,
                chrono_now(),
                300,
            )
            .is_ok()
    });
    let failing = receiver
        .fail_first
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok();
    let event: Option<Value> = serde_json::from_slice(&body).ok();
    let (event_type, job_id, status) = event.as_ref().map_or(Default::default(), |e| {
        let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
        (
            text(&e["type"]),
            text(&e["data"]["id"]),
            text(&e["data"]["status"]),
        )
    });
    if !failing {
        lock(&receiver.deliveries).push(Delivery {
            webhook_id: webhook_id.clone(),
            timestamp,
            signature,
            body: body.to_vec(),
            event,
            verified,
            at: Instant::now(),
        });
        receiver.notify.notify_waiters();
    }
    tracing::info!(%webhook_id, verified, failing, %event_type, %job_id, %status, "webhook received");
    if failing {
        StatusCode::INTERNAL_SERVER_ERROR
    } else if receiver.secret.is_some() && !verified {
        StatusCode::UNAUTHORIZED
    } else {
        StatusCode::NO_CONTENT
    }
}

fn chrono_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}
