//! An OpenAI-compatible `/v1/chat/completions` stub. It answers after a configurable latency
//! with configurable token counts, can inject faults (HTTP errors with `Retry-After`, hangs,
//! malformed bodies), and records per model the calls in flight (and their peak) and, per job
//! id (`x-agentfleet-job-id`), how often it was called — which is how tests check concurrency
//! limits, rate limits and "ran exactly once" from the outside.
//!
//! A model given a [`Scenario`] ([`StubLlm::script_model`]) answers from that script instead:
//! tool calls and final answers over several turns (see [`crate::script`]).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::gate::Gate;
use crate::script::{self, Reply, Scenario};

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
    /// A normal answer that also carries these (rate-limit) headers, as providers send
    /// `x-ratelimit-remaining-requests` and the like.
    WithHeaders(Vec<(String, String)>),
    /// This status with an error message that quotes the request's last message, as
    /// providers' 400s often quote the offending prompt.
    QuotingPrompt { status: u16 },
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
    /// When each fault was answered, in order.
    faults_served: Vec<Instant>,
    /// The last request body per job id, kept for scripted models only: a load benchmark of
    /// plain calls would otherwise hold every job's prompt in memory.
    last_request: HashMap<String, Value>,
}

/// The stub's shared state; clone it to keep a handle after `router()`.
#[derive(Clone, Default)]
pub struct StubLlm {
    behavior: Arc<Mutex<Behavior>>,
    gate: Gate,
    /// Scenarios by model name; other models answer unscripted.
    scenarios: Arc<Mutex<HashMap<String, Scenario>>>,
    recorded: Arc<Mutex<Recorded>>,
}

impl StubLlm {
    pub fn new(behavior: Behavior) -> Self {
        Self {
            behavior: Arc::new(Mutex::new(behavior)),
            gate: Gate::default(),
            scenarios: Arc::default(),
            recorded: Arc::default(),
        }
    }

    /// Calls that arrive from now on wait, after their latency, until [`StubLlm::open_gate`].
    pub fn close_gate(&self) {
        self.gate.close();
    }

    /// Lets every call held at the gate answer, all at once.
    pub fn open_gate(&self) {
        self.gate.open();
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

    /// Answer calls of `model` from `scenario` from now on. Latency and faults still apply,
    /// before the script.
    pub fn script_model(&self, model: &str, scenario: Scenario) {
        lock(&self.scenarios).insert(model.to_owned(), scenario);
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

    /// When each injected fault was answered (after the latency), oldest first.
    pub fn refused_at(&self) -> Vec<Instant> {
        lock(&self.recorded).faults_served.clone()
    }

    pub fn call_count(&self) -> usize {
        lock(&self.recorded).calls.len()
    }

    /// Calls per job id, for "every job ran exactly once".
    pub fn calls_per_job(&self) -> HashMap<String, u32> {
        lock(&self.recorded).per_job.clone()
    }

    /// Calls of one job, across attempts.
    pub fn calls_for_job(&self, job_id: &str) -> u32 {
        lock(&self.recorded)
            .per_job
            .get(job_id)
            .copied()
            .unwrap_or(0)
    }

    /// The last request body a scripted model got for this job: the conversation as sent,
    /// with its `tools` and `tool` messages.
    pub fn last_request(&self, job_id: &str) -> Option<Value> {
        lock(&self.recorded).last_request.get(job_id).cloned()
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
    let meta = CallMeta::new(&request, &headers);
    let behavior = lock(&stub.behavior).clone();
    let scenario = lock(&stub.scenarios).get(&meta.model).cloned();
    let fault = stub.record(
        &meta,
        version,
        &behavior,
        scenario.is_some().then_some(&request),
    );
    let _in_flight = InFlight {
        stub: stub.clone(),
        model: meta.model.clone(),
        job: meta.job_id.clone().map(|id| (id, meta.lease.clone())),
    };
    let held = stub.gate.is_closed();
    if !behavior.latency.is_zero() {
        tokio::time::sleep(behavior.latency).await;
    }
    if held {
        stub.gate.pass().await;
    }
    match fault {
        Some(Fault::WithHeaders(extra)) => {
            lock(&stub.recorded).faults_served.push(Instant::now());
            let mut response = plain_answer(&meta.model, &request, &behavior);
            for (name, value) in extra {
                if let (Ok(name), Ok(value)) = (
                    http::HeaderName::try_from(name.as_str()),
                    http::HeaderValue::try_from(value.as_str()),
                ) {
                    response.headers_mut().insert(name, value);
                }
            }
            response
        }
        Some(Fault::QuotingPrompt { status }) => {
            lock(&stub.recorded).faults_served.push(Instant::now());
            quoting_response(status, &request)
        }
        Some(fault) => {
            lock(&stub.recorded).faults_served.push(Instant::now());
            fault_response(fault).await
        }
        None => match scenario.and_then(|s| s.reply(&request)) {
            Some(reply) => scripted_answer(&meta.model, &request, reply, &behavior),
            None => plain_answer(&meta.model, &request, &behavior),
        },
    }
}

/// Who a call is for, from its body and the worker's headers.
struct CallMeta {
    model: String,
    job_id: Option<String>,
    attempt: String,
    lease: String,
}

impl CallMeta {
    fn new(request: &Value, headers: &HeaderMap) -> Self {
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        Self {
            model: request["model"].as_str().unwrap_or("unknown").to_owned(),
            job_id: header("x-agentfleet-job-id"),
            attempt: header("x-agentfleet-attempt").unwrap_or_default(),
            lease: header("x-agentfleet-lease").unwrap_or_default(),
        }
    }
}

impl StubLlm {
    /// Counts the call (in flight, per job, per attempt, overlapping leases), keeps `request`
    /// as the job's last one when given, and picks the fault the call gets, if any.
    fn record(
        &self,
        meta: &CallMeta,
        version: http::Version,
        behavior: &Behavior,
        request: Option<&Value>,
    ) -> Option<Fault> {
        let mut rec = lock(&self.recorded);
        let stats = rec.models.entry(meta.model.clone()).or_default();
        stats.in_flight += 1;
        stats.peak_in_flight = stats.peak_in_flight.max(stats.in_flight);
        rec.calls.push(Call {
            model: meta.model.clone(),
            job_id: meta.job_id.clone(),
            at: Instant::now(),
            version,
        });
        if let Some(id) = &meta.job_id {
            *rec.per_job.entry(id.clone()).or_default() += 1;
            *rec.per_attempt
                .entry((id.clone(), meta.attempt.clone()))
                .or_default() += 1;
            let leases = rec.job_in_flight.entry(id.clone()).or_default();
            let overlap = leases.iter().any(|l| *l != meta.lease);
            leases.push(meta.lease.clone());
            if overlap {
                rec.double_runs += 1;
            }
            if let Some(request) = request {
                rec.last_request.insert(id.clone(), request.clone());
            }
        }
        rec.scripted.pop_front().or_else(|| random_fault(behavior))
    }
}

fn random_fault(behavior: &Behavior) -> Option<Fault> {
    let faults = &behavior.random_faults;
    (behavior.fault_rate > 0.0 && !faults.is_empty() && rand_unit() < behavior.fault_rate).then(
        || {
            let i = (rand_unit() * faults.len() as f64) as usize;
            faults[i.min(faults.len() - 1)].clone()
        },
    )
}

async fn fault_response(fault: Fault) -> Response {
    match fault {
        Fault::Hang => std::future::pending::<Response>().await,
        Fault::Malformed => (StatusCode::OK, "{\"choices\": \"not a list\"").into_response(),
        // Served by the caller, which has the request.
        Fault::WithHeaders(_) | Fault::QuotingPrompt { .. } => StatusCode::OK.into_response(),
        Fault::Status {
            status,
            retry_after,
        } => {
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
    }
}

/// An error whose message quotes the request's last message.
fn quoting_response(status: u16, request: &Value) -> Response {
    let last = request["messages"]
        .as_array()
        .and_then(|m| m.last())
        .and_then(|m| m["content"].as_str())
        .unwrap_or_default();
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
    let message = format!("Invalid content in messages: '{last}'");
    (status, Json(json!({"error": {"message": message}}))).into_response()
}

/// The unscripted answer: echoes the last message, with the configured token counts.
fn plain_answer(model: &str, request: &Value, behavior: &Behavior) -> Response {
    let last = request["messages"]
        .as_array()
        .and_then(|m| m.last())
        .and_then(|m| m["content"].as_str())
        .unwrap_or_default();
    let echo: String = last.chars().take(200).collect();
    let message = json!({"role": "assistant", "content": format!("stub answer to: {echo}")});
    completion(
        model,
        message,
        "stop",
        behavior.prompt_tokens,
        behavior.completion_tokens,
    )
}

/// A scripted answer. Its prompt tokens grow with the conversation, as a real model's do, so
/// that token budgets over several turns can be tested.
fn scripted_answer(model: &str, request: &Value, reply: Reply, behavior: &Behavior) -> Response {
    let prompt_tokens = script::estimate_prompt_tokens(request);
    completion(
        model,
        reply.message,
        reply.finish_reason,
        prompt_tokens,
        behavior.completion_tokens,
    )
}

fn completion(
    model: &str,
    message: Value,
    finish_reason: &str,
    prompt_tokens: u64,
    completion_tokens: u64,
) -> Response {
    Json(json!({
        "id": "chatcmpl-stub",
        "object": "chat.completion",
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason}],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens.saturating_add(completion_tokens)
        }
    }))
    .into_response()
}

fn rand_unit() -> f64 {
    rand::random::<f64>()
}
