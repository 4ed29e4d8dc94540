//! The audit trail: who did what through the API. Every authenticated or refused call of a
//! `/v1` route ends in one record — action, path, tenant, key id (never the key), job id, the
//! SHA-256 of a submission's `input` as compact JSON (never the input), client address (and
//! `X-Forwarded-For` as sent), request id, status and time:
//! - as a log line of its own target, `agentfleet::audit` (so it can be routed apart from the
//!   operational logs);
//! - and, unless `dispatcher.audit.redis_stream` is off, in the tenant's Redis stream
//!   `{prefix}:audit:{t:<tenant>}`, trimmed to about `max_entries` (`XADD … MAXLEN ~`).
//!
//! A middleware writes the record once the response is known; the handlers only note what
//! they learned (the caller, the job) in the request's [`AuditNote`]. Stream entries go to one
//! task that adds whatever has queued up in one pipeline (one round trip per batch, not per
//! request), bounded by Redis' timeout, so the trail never slows or fails a request; a batch
//! that fails, or an entry that finds the queue full, is logged (the log line is the trail of
//! record).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};

use axum::extract::{ConnectInfo, FromRequestParts, MatchedPath, Request, State};
use axum::http::request::Parts;
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;
use chrono::Utc;
use tokio::sync::mpsc;
use uuid::Uuid;

use agentfleet_common::config::AuditConfig;
use agentfleet_common::naming::Names;
use agentfleet_common::store::Redis;

use crate::layers::RequestId;

/// What an API call did, named for the trail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Submit,
    Read,
    ReadSteps,
    Cancel,
    ListAgents,
}

impl Action {
    /// The action of a route, by method and matched path; `None` for what is not audited.
    fn of(method: &Method, route: &str) -> Option<Self> {
        Some(match (method.as_str(), route) {
            ("POST", "/v1/jobs") => Self::Submit,
            ("GET", "/v1/jobs/{id}") => Self::Read,
            ("GET", "/v1/jobs/{id}/steps") => Self::ReadSteps,
            ("DELETE", "/v1/jobs/{id}") => Self::Cancel,
            ("GET", "/v1/agents") => Self::ListAgents,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Submit => "submit",
            Self::Read => "read",
            Self::ReadSteps => "read_steps",
            Self::Cancel => "cancel",
            Self::ListAgents => "list_agents",
        }
    }
}

/// What the handler of one request learned, for its audit record: a cheap handle in the
/// request's extensions.
#[derive(Debug, Clone, Default)]
pub struct AuditNote(Arc<Mutex<Facts>>);

#[derive(Debug, Clone, Default)]
struct Facts {
    tenant: Option<String>,
    key_id: Option<String>,
    job_id: Option<Uuid>,
    input_sha256: Option<String>,
}

/// A handler's note: the one the audit middleware gave its request (a fresh one, that nobody
/// reads, where there is none).
impl<S: Send + Sync> FromRequestParts<S> for AuditNote {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Infallible> {
        Ok(parts
            .extensions
            .get::<AuditNote>()
            .cloned()
            .unwrap_or_default())
    }
}

impl AuditNote {
    pub fn caller(&self, tenant: &str, key_id: &str) {
        let mut facts = self.facts();
        facts.tenant = Some(tenant.to_owned());
        facts.key_id = Some(key_id.to_owned());
    }

    pub fn job(&self, id: Uuid) {
        self.facts().job_id = Some(id);
    }

    pub fn input_sha256(&self, digest: String) {
        self.facts().input_sha256 = Some(digest);
    }

    fn facts(&self) -> std::sync::MutexGuard<'_, Facts> {
        // Plain fields: a panic elsewhere cannot leave them half-written.
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Stream entries waiting for the writer task; past this, an entry stays in the log only.
const STREAM_QUEUE: usize = 4096;
/// The most entries the writer adds in one round trip.
const STREAM_BATCH: usize = 256;

/// Where records go: the log target always, the tenant's stream when configured. Shared:
/// the middleware's state is cloned for every request.
#[derive(Clone)]
pub struct AuditTrail(Arc<Trail>);

struct Trail {
    redis: Redis,
    names: Names,
    config: AuditConfig,
    /// The writer task's queue, made with the task at the first entry (inside the runtime).
    /// The task ends once every clone of the trail is gone and the queue is drained.
    stream: OnceLock<mpsc::Sender<redis::Cmd>>,
}

/// One record.
struct Record {
    action: Action,
    /// The request's path (no query): what was asked for even when no job was found.
    path: String,
    facts: Facts,
    client: Option<SocketAddr>,
    forwarded_for: Option<String>,
    request_id: Option<String>,
    status: u16,
}

impl AuditTrail {
    pub fn new(redis: Redis, names: Names, config: AuditConfig) -> Self {
        Self(Arc::new(Trail {
            redis,
            names,
            config,
            stream: OnceLock::new(),
        }))
    }

    fn stream_writer(&self) -> &mpsc::Sender<redis::Cmd> {
        self.0.stream.get_or_init(|| {
            let (sender, entries) = mpsc::channel(STREAM_QUEUE);
            tokio::spawn(add_entries(self.0.redis.clone(), entries));
            sender
        })
    }

    fn write(&self, record: Record) {
        let facts = &record.facts;
        tracing::info!(
            target: "agentfleet::audit",
            action = record.action.as_str(),
            path = record.path.as_str(),
            tenant = facts.tenant.as_deref(),
            key_id = facts.key_id.as_deref(),
            job_id = facts.job_id.map(tracing::field::display),
            input_sha256 = facts.input_sha256.as_deref(),
            client = record.client.map(tracing::field::display),
            forwarded_for = record.forwarded_for.as_deref(),
            request_id = record.request_id.as_deref(),
            status = record.status,
            "audit"
        );
        let Some(tenant) = facts.tenant.clone() else {
            // Nobody to attribute it to: the log line is the whole record.
            return;
        };
        if !self.0.config.redis_stream {
            return;
        }
        let mut cmd = redis::cmd("XADD");
        cmd.arg(self.0.names.audit_stream(&tenant))
            .arg("MAXLEN")
            .arg("~")
            .arg(self.0.config.max_entries)
            .arg("*");
        for (field, value) in record.fields() {
            cmd.arg(field).arg(value);
        }
        if self.stream_writer().try_send(cmd).is_err() {
            tracing::warn!("audit stream writer is behind; record kept in the log only");
        }
    }
}

/// The writer task: adds the queued entries in batches, one pipeline each.
async fn add_entries(redis: Redis, mut entries: mpsc::Receiver<redis::Cmd>) {
    let mut batch = Vec::with_capacity(STREAM_BATCH);
    while entries.recv_many(&mut batch, STREAM_BATCH).await > 0 {
        let mut pipe = redis::pipe();
        let count = batch.len();
        for cmd in batch.drain(..) {
            pipe.add_command(cmd).ignore();
        }
        if let Err(err) = redis.pipe::<()>(&pipe).await {
            tracing::warn!(error = %err, count, "audit records not added to the Redis stream");
        }
    }
}

impl Record {
    /// The stream entry's fields; absent facts are left out.
    fn fields(&self) -> Vec<(&'static str, String)> {
        let facts = &self.facts;
        let mut fields = vec![
            ("at", Utc::now().to_rfc3339()),
            ("action", self.action.as_str().to_owned()),
            ("path", self.path.clone()),
            ("status", self.status.to_string()),
        ];
        let optional = [
            ("tenant", facts.tenant.clone()),
            ("key_id", facts.key_id.clone()),
            ("job_id", facts.job_id.map(|id| id.to_string())),
            ("input_sha256", facts.input_sha256.clone()),
            ("client", self.client.map(|addr| addr.to_string())),
            ("forwarded_for", self.forwarded_for.clone()),
            ("request_id", self.request_id.clone()),
        ];
        fields.extend(
            optional
                .into_iter()
                .filter_map(|(name, value)| value.map(|v| (name, v))),
        );
        fields
    }
}

/// The middleware: gives the handler a note, and records the call once it is answered.
pub async fn record(State(trail): State<AuditTrail>, mut req: Request, next: Next) -> Response {
    let action = req
        .extensions()
        .get::<MatchedPath>()
        .and_then(|route| Action::of(req.method(), route.as_str()));
    let Some(action) = action else {
        return next.run(req).await;
    };
    let note = AuditNote::default();
    req.extensions_mut().insert(note.clone());
    let client = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|info| info.0);
    // As the client (or a proxy) said: recorded beside the address, never instead of it.
    let forwarded_for = req
        .headers()
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok())
        .map(|v| v.chars().take(256).collect());
    let request_id = req.extensions().get::<RequestId>().map(|id| id.0.clone());
    let path = req.uri().path().chars().take(256).collect();
    let response = next.run(req).await;
    let facts = note.facts().clone();
    trail.write(Record {
        action,
        path,
        facts,
        client,
        forwarded_for,
        request_id,
        status: response.status().as_u16(),
    });
    response
}
