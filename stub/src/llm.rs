//! An OpenAI-compatible `/v1/chat/completions` stub. It answers after a configurable latency
//! with configurable token counts, can inject faults (HTTP errors with `Retry-After`, hangs,
//! malformed bodies), and records per model the calls in flight (and their peak) and, per job
//! id (`x-agentfleet-job-id`), how often it was called — which is how tests check concurrency
//! limits, rate limits and "ran exactly once" from the outside.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{json, Value};

/// A fault the stub injects instead of a normal answer.
#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    /// This status with an error body, and `Retry-After` when given.
    Status {
        status: u16,
        retry_after: Option<u64>,
    },
    /// Never answer (until the client gives up).
    Hang,
    /// A 200 whose body is not a chat completion.
    Malformed,
}

#[derive(Debug, Clone)]
pub struct Behavior {
    pub latency: Duration,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// Probability in [0, 1] that a call gets one of `random_faults` (chaos testing).
    pub fault_rate: f64,
    pub random_faults: Vec<Fault>,
}

impl Default for Behavior {
    fn default() -> Self {
        Self {
            latency: Duration::ZERO,
            prompt_tokens: 12,
            completion_tokens: 8,
            fault_rate: 0.0,
            random_faults: Vec::new(),
        }
    }
}

/// One call as the stub saw it.
#[derive(Debug, Clone)]
pub struct Call {
    pub model: String,
    pub job_id: Option<String>,
    pub at: Instant,
    /// The HTTP version the call came over.
    pub version: http::Version,
}

#[derive(Default)]
struct ModelStats {
    in_flight: u64,
    peak_in_flight: u64,
}

#[derive(Default)]
struct Recorded {
    models: HashMap<String, ModelStats>,
    calls: Vec<Call>,
    per_job: HashMap<String, u32>,
    /// Calls per (job id, attempt): more than one is a duplicate call for the same attempt.
    per_attempt: HashMap<(String, String), u32>,
    /// Calls in flight per job id, with the fencing token each came with.
    job_in_flight: HashMap<String, Vec<String>>,
    /// Calls that started while another call of the same job, under another lease, was in
    /// flight: a job running on two workers at once.
    double_runs: u64,
    /// Faults served, in order, before any normal answer (deterministic tests).
    scripted: VecDeque<Fault>,
}

/// The stub's shared state; clone it to keep a handle after `router()`.
#[derive(Clone, Default)]
pub struct StubLlm {
    behavior: Arc<Mutex<Behavior>>,
    recorded: Arc<Mutex<Recorded>>,
}

impl StubLlm {
    pub fn new(behavior: Behavior) -> Self {
        Self {
            behavior: Arc::new(Mutex::new(behavior)),
            recorded: Arc::default(),
        }
    }

    pub fn router(&self) -> Router {
        Router::new()
            .route("/v1/chat/completions", post(chat_completions))
            .route("/chat/completions", post(chat_completions))
            .with_state(self.clone())
    }

    pub fn set_behavior(&self, behavior: Behavior) {
        *lock(&self.behavior) = behavior;
    }

    /// Serve these faults, in order, to the next calls.
    pub fn script_faults(&self, faults: impl IntoIterator<Item = Fault>) {
        lock(&self.recorded).scripted.extend(faults);
    }

    /// The most calls of `model` ever in flight at once.
    pub fn peak_in_flight(&self, model: &str) -> u64 {
        lock(&self.recorded)
            .models
            .get(model)
            .map_or(0, |s| s.peak_in_flight)
    }

    pub fn in_flight(&self, model: &str) -> u64 {
        lock(&self.recorded)
            .models
            .get(model)
            .map_or(0, |s| s.in_flight)
    }

    /// Calls beyond the first for the same job and attempt (paid twice).
    pub fn duplicate_calls(&self) -> u64 {
        lock(&self.recorded)
            .per_attempt
            .values()
            .map(|&n| u64::from(n.saturating_sub(1)))
            .sum()
    }

    /// Calls in flight across all models.
    pub fn total_in_flight(&self) -> u64 {
        lock(&self.recorded)
            .models
            .values()
            .map(|s| s.in_flight)
            .sum()
    }

    /// Times a job was called while another call of it (another lease) was in flight.
    pub fn double_runs(&self) -> u64 {
        lock(&self.recorded).double_runs
    }

    pub fn calls(&self) -> Vec<Call> {
        lock(&self.recorded).calls.clone()
    }

    pub fn call_count(&self) -> usize {
        lock(&self.recorded).calls.len()
    }

    /// Calls per job id, for "every job ran exactly once".
    pub fn calls_per_job(&self) -> HashMap<String, u32> {
        lock(&self.recorded).per_job.clone()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding the lock leaves plain counters behind; keep serving.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Decrements the in-flight count however the handler ends (including a client hang-up).
struct InFlight {
    stub: StubLlm,
    model: String,
    job: Option<(String, String)>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut rec = lock(&self.stub.recorded);
        if let Some(stats) = rec.models.get_mut(&self.model) {
            stats.in_flight = stats.in_flight.saturating_sub(1);
        }
        if let Some((job, lease)) = &self.job {
            if let Some(leases) = rec.job_in_flight.get_mut(job) {
                if let Some(i) = leases.iter().position(|l| l == lease) {
                    leases.swap_remove(i);
                }
                if leases.is_empty() {
                    rec.job_in_flight.remove(job);
                }
            }
        }
    }
}

async fn chat_completions(
    State(stub): State<StubLlm>,
    version: http::Version,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let Ok(request) = serde_json::from_slice::<Value>(&body) else {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": {"message": "invalid JSON"}})),
        )
            .into_response();
    };
    let model = request["model"].as_str().unwrap_or("unknown").to_owned();
    let job_id = headers
        .get("x-agentfleet-job-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let attempt = headers
        .get("x-agentfleet-attempt")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let lease = headers
        .get("x-agentfleet-lease")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let behavior = lock(&stub.behavior).clone();
    let fault = {
        let mut rec = lock(&stub.recorded);
        let stats = rec.models.entry(model.clone()).or_default();
        stats.in_flight += 1;
        stats.peak_in_flight = stats.peak_in_flight.max(stats.in_flight);
        rec.calls.push(Call {
            model: model.clone(),
            job_id: job_id.clone(),
            at: Instant::now(),
            version,
        });
        if let Some(id) = &job_id {
            *rec.per_job.entry(id.clone()).or_default() += 1;
            *rec.per_attempt
                .entry((id.clone(), attempt.clone()))
                .or_default() += 1;
            let leases = rec.job_in_flight.entry(id.clone()).or_default();
            let overlap = leases.iter().any(|l| *l != lease);
            leases.push(lease.clone());
            if overlap {
                rec.double_runs += 1;
            }
        }
        rec.scripted.pop_front().or_else(|| {
            (behavior.fault_rate > 0.0
                && !behavior.random_faults.is_empty()
                && rand_unit() < behavior.fault_rate)
                .then(|| {
                    let i = (rand_unit() * behavior.random_faults.len() as f64) as usize;
                    behavior.random_faults[i.min(behavior.random_faults.len() - 1)].clone()
                })
        })
    };
    let _in_flight = InFlight {
        stub: stub.clone(),
        model: model.clone(),
        job: job_id.clone().map(|id| (id, lease.clone())),
    };
    if !behavior.latency.is_zero() {
        tokio::time::sleep(behavior.latency).await;
    }
    match fault {
        Some(Fault::Hang) => std::future::pending::<Response>().await,
        Some(Fault::Malformed) => (StatusCode::OK, "{\"choices\": \"not a list\"").into_response(),
        Some(Fault::Status {
            status,
            retry_after,
        }) => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let mut response = (
                status,
                Json(json!({"error": {"message": "injected fault"}})),
            )
                .into_response();
            if let Some(secs) = retry_after {
                if let Ok(value) = secs.to_string().parse() {
                    response.headers_mut().insert("retry-after", value);
                }
            }
            response
        }
        None => {
            let last = request["messages"]
                .as_array()
                .and_then(|m| m.last())
                .and_then(|m| m["content"].as_str())
                .unwrap_or_default();
            let echo: String = last.chars().take(200).collect();
            Json(json!({
                "id": "chatcmpl-stub",
                "object": "chat.completion",
                "model": model,
                "choices": [{
                    "index": 0,
                    "message": {"role": "assistant", "content": format!("stub answer to: {echo}")},
                    "finish_reason": "stop"
                }],
                "usage": {
                    "prompt_tokens": behavior.prompt_tokens,
                    "completion_tokens": behavior.completion_tokens,
                    "total_tokens": behavior.prompt_tokens + behavior.completion_tokens
                }
            }))
            .into_response()
        }
    }
}

fn rand_unit() -> f64 {
    rand::random::<f64>()
}
