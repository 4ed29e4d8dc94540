//! `/v1/jobs` and `/v1/agents`.

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Extension, FromRequestParts, Path, RawQuery, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tracing::Instrument as _;
use utoipa::ToSchema;
use uuid::Uuid;

use agentfleet_common::config::{ProviderKind, RateLimitConfig, RetryConfig, TenantConfig};
use agentfleet_common::events;
use agentfleet_common::store::{Claim, StoreError, Written};
use agentfleet_common::wire::{
    ControlMessage, ErrorCategory, JobError, JobInput, JobMessage, JobRecord, JobSpec, JobStatus,
    Step, SCHEMA_VERSION,
};

use crate::audit::AuditNote;
use crate::auth::Caller;
use crate::layers::RequestId;
use crate::problem::{ApiError, Problem};
use crate::request::{job_input, parse_submit, SubmitRequest};
use crate::AppState;

const IDEMPOTENCY_HEADER: &str = "idempotency-key";
const IDEMPOTENCY_TTL: Duration = Duration::from_secs(24 * 3600);
const MAX_IDEMPOTENCY_KEY_LEN: usize = 255;

/// Submit a job: stored and queued before the answer. With an `Idempotency-Key`, the same key
/// and body within 24 hours answer the original job (200) instead of a new one.
#[utoipa::path(
    post,
    path = "/v1/jobs",
    tag = "jobs",
    operation_id = "submitJob",
    params(
        ("Idempotency-Key" = Option<String>, Header, description = "1-255 visible ASCII characters; a repeat with the same body within 24 h answers the original job", min_length = 1, max_length = 255, pattern = r"^[\x21-\x7E]+$"),
    ),
    request_body(content = Object, content_type = "application/json", description = "The job (schema filled in from the configuration)"),
    responses(
        (status = 202, description = "Accepted: stored and queued", body = Accepted, headers(("Location" = String, description = "/v1/jobs/{id}"))),
        (status = 200, description = "The job this Idempotency-Key was first used for", body = Accepted, headers(("Location" = String, description = "/v1/jobs/{id}"))),
        (status = 400, description = "invalid-request: a field breaks a rule (named in `field`), or the body is not a JSON object", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "unauthorized: a missing, unknown or expired key", body = Problem, content_type = "application/problem+json", headers(("WWW-Authenticate" = String, description = "Bearer"))),
        (status = 402, description = "budget-exhausted: the tenant's daily or the agent's monthly budget has no room (`resets_at`)", body = Problem, content_type = "application/problem+json", headers(("Retry-After" = u64, description = "Seconds to wait before trying again"))),
        (status = 409, description = "conflict: the job already ended, or a request with this Idempotency-Key is in progress", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "payload-too-large: the body is over the configured size", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "unsupported-media-type: the body is not application/json", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "idempotency-mismatch: the Idempotency-Key was used with another body", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "overloaded (the agent's queue is full), tenant-quota or rate-limited (`limit` names which)", body = Problem, content_type = "application/problem+json", headers(("Retry-After" = u64, description = "Seconds to wait before trying again"))),
        (status = 503, description = "unavailable (RabbitMQ or Redis), busy (too many requests in flight) or timeout", body = Problem, content_type = "application/problem+json", headers(("Retry-After" = u64, description = "Seconds to wait before trying again"))),
    ),
)]
pub async fn submit(
    State(state): State<AppState>,
    Extension(request_id): Extension<RequestId>,
    note: AuditNote,
    // Taken as a result: a refused key is counted with the other refusals.
    caller: Result<Caller, ApiError>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let request = Request {
        request_id,
        note,
        headers: &headers,
    };
    let result = submit_inner(&state, caller, request, body).await;
    if let Err(err) = &result {
        let reason = match err {
            ApiError::Unauthorized => "unauthorized",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::PayloadTooLarge { .. } => "too_large",
            ApiError::Overloaded { .. } => "overloaded",
            ApiError::Limited { limit, .. } => limit.as_str(),
            ApiError::BudgetSpent { .. } => "budget",
            ApiError::IdempotencyMismatch | ApiError::Conflict(_) => "conflict",
            _ => "invalid",
        };
        state
            .inner
            .metrics
            .jobs_rejected
            .with_label_values(&[reason])
            .inc();
    }
    result
}

/// What a submission comes with besides its body.
struct Request<'a> {
    request_id: RequestId,
    note: AuditNote,
    headers: &'a HeaderMap,
}

/// A valid submission on its way to being accepted.
struct Submission {
    id: Uuid,
    tenant: Arc<TenantConfig>,
    request: SubmitRequest,
    /// The request's input, read as its agent takes it.
    input: JobInput,
    request_id: RequestId,
    note: AuditNote,
    /// The Idempotency-Key and the body's fingerprint.
    idempotency: Option<(String, String)>,
}

async fn submit_inner(
    state: &AppState,
    caller: Result<Caller, ApiError>,
    Request {
        request_id,
        note,
        headers,
    }: Request<'_>,
    body: Body,
) -> Result<Response, ApiError> {
    let inner = &state.inner;
    let tenant = caller?.tenant;
    // Before the body is read and before the Idempotency-Key is looked up: this limit protects
    // the replica, so a flood of replays is refused like any other flood from the key.
    inner.quotas.get().check_burst(&tenant.id)?;
    require_json(headers)?;
    let idempotency_key = idempotency_key(headers)?;
    let limit = inner.config.dispatcher.max_body_bytes;
    let bytes: Bytes = axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| ApiError::PayloadTooLarge { limit })?;
    let mut request = parse_submit(&bytes)?;
    note.input_sha256(hex::encode(Sha256::digest(request.input.to_string())));
    let input = validate(state, &tenant, &mut request)?;

    let submission = Submission {
        id: Uuid::now_v7(),
        input,
        idempotency: idempotency_key.map(|key| (key, fingerprint(&bytes))),
        tenant,
        request,
        request_id,
        note,
    };
    let span = tracing::info_span!(
        "submit",
        job_id = %submission.id,
        agent = %submission.request.agent,
        tenant = %submission.tenant.id
    );
    // From here on a key gets claimed and a record stored: the accept runs to its end in a
    // task of its own, so a request that times out (or a client that goes away) cannot leave
    // a claimed key naming a job that was never published. A retry with the key finds the
    // job, or the key free again.
    tokio::spawn(accept(state.clone(), submission).instrument(span))
        .await
        .unwrap_or_else(|err| Err(ApiError::Unavailable(format!("accepting the job: {err}"))))
}

/// The Idempotency-Key first: a job accepted before is answered with its replay whatever the
/// load, quotas and budgets are now (the client is told again what it was told). Only a new
/// job is shed or counted against quotas; if it is refused, its key is released, so a retry
/// with it can be accepted later. Its steps are boxed: a task's future is copied whole when
/// it is spawned and as it finishes, and inline they made this one 9.4 KB.
async fn accept(state: AppState, submission: Submission) -> Result<Response, ApiError> {
    let inner = &state.inner;
    let tenant = submission.tenant.id.clone();
    if let Some((key, fingerprint)) = &submission.idempotency {
        let claim = Box::pin(inner.store.claim_idempotency_key(
            &tenant,
            key,
            submission.id,
            fingerprint,
            IDEMPOTENCY_TTL,
        ))
        .await
        .map_err(|e| ApiError::Unavailable(format!("claiming the idempotency key: {e}")))?;
        if let Claim::Existing {
            job_id,
            fingerprint: theirs,
        } = claim
        {
            if &theirs != fingerprint {
                submission.note.job(job_id);
                return Err(ApiError::IdempotencyMismatch);
            }
            match Box::pin(replay(&state, &tenant, job_id)).await? {
                Replayed::Answered(response) => {
                    submission.note.job(job_id);
                    return Ok(response);
                }
                Replayed::NoRecord if abandoned(job_id, &inner.config) => {
                    Box::pin(take_over(&state, &submission, (key, fingerprint), job_id)).await?;
                }
                Replayed::NoRecord => {
                    submission.note.job(job_id);
                    return Err(ApiError::Conflict(
                        "a request with this Idempotency-Key is in progress; retry shortly".into(),
                    ));
                }
            }
        }
    }
    let key = submission.idempotency.as_ref().map(|(key, _)| key.clone());
    submission.note.job(submission.id);
    let accepted = Box::pin(enqueue(&state, submission)).await;
    if accepted.is_err() {
        if let Some(key) = &key {
            // The job was never accepted: a retry with the same key must be able to.
            if let Err(err) = Box::pin(inner.store.release_idempotency_key(&tenant, key)).await {
                tracing::warn!(error = %err, "could not release an idempotency key");
            }
        }
    }
    accepted
}

/// Whether a claim naming `job_id`, a job that has no record, is older than any accept can
/// take: every step of an accept is bounded (each Redis call by `redis.timeout_ms`, the
/// publish by the broker's connect and confirm timeouts), so its claim was abandoned — the
/// dispatcher died mid-accept, or a Redis failover kept the claim and forgot the record.
/// (A job id is a UUID v7: it says when its accept began. Twice the bound, for clock skew
/// between replicas and a starved task. A batched job may wait for the publish before its own:
/// two publishes.)
fn abandoned(job_id: Uuid, config: &agentfleet_common::config::Config) -> bool {
    const REDIS_CALLS_PER_ACCEPT: u32 = 8;
    let bound = config.redis.timeout * REDIS_CALLS_PER_ACCEPT
        + config.amqp.connect_timeout
        + config.amqp.publish_timeout * 2;
    let Some((secs, nanos)) = job_id.get_timestamp().map(|t| t.to_unix()) else {
        return false;
    };
    let began = std::time::UNIX_EPOCH + Duration::new(secs, nanos);
    std::time::SystemTime::now()
        .duration_since(began)
        .is_ok_and(|age| age > bound * 2)
}

/// Claims an abandoned Idempotency-Key for the submission's new job; a conflict if another
/// request took it over first.
async fn take_over(
    state: &AppState,
    submission: &Submission,
    (key, fingerprint): (&str, &str),
    abandoned: Uuid,
) -> Result<(), ApiError> {
    let taken = state
        .inner
        .store
        .take_over_idempotency_key(
            &submission.tenant.id,
            key,
            (abandoned, submission.id),
            fingerprint,
            IDEMPOTENCY_TTL,
        )
        .await
        .map_err(|e| ApiError::Unavailable(format!("claiming the idempotency key: {e}")))?;
    if !taken {
        return Err(ApiError::Conflict(
            "a request with this Idempotency-Key is in progress; retry shortly".into(),
        ));
    }
    tracing::warn!(
        %abandoned,
        "an Idempotency-Key named a job that was never stored; claimed for a new one"
    );
    Ok(())
}

/// What the request's fields mean for this tenant and agent; takes the input out of the
/// request, read as the agent takes it.
fn validate(
    state: &AppState,
    tenant: &TenantConfig,
    request: &mut SubmitRequest,
) -> Result<JobInput, ApiError> {
    if !state.inner.config.agents.contains_key(&request.agent) {
        return Err(ApiError::field(
            "agent",
            format!("unknown agent `{}`", request.agent),
        ));
    }
    let schema = state.inner.input_schemas.get(&request.agent);
    let input = job_input(std::mem::take(&mut request.input), schema)?;
    if let Some(url) = &request.webhook_url {
        if tenant.webhook_secret_env.is_none() {
            return Err(ApiError::field(
                "webhook_url",
                "this tenant has no webhook signing secret configured",
            ));
        }
        state
            .inner
            .outbound
            .check_webhook_url(url)
            .map_err(|e| ApiError::field("webhook_url", e.to_string()))?;
    }
    Ok(input)
}

/// Sheds a new job when its agent's queues are full and checks its tenant's quotas and
/// budgets, then stores the record and spec and publishes the work token; undoes the store if
/// the publish fails, so nothing half-written stays behind.
async fn enqueue(state: &AppState, submission: Submission) -> Result<Response, ApiError> {
    let inner = &state.inner;
    let Submission {
        id,
        tenant,
        request,
        input,
        request_id,
        ..
    } = submission;
    if inner.queue_depths.over_limit(&request.agent) {
        return Err(ApiError::Overloaded {
            agent: request.agent,
        });
    }
    let quotas = inner.quotas.get();
    quotas.check_budgets(&tenant.id, &request.agent).await?;
    quotas.check_tenant(&tenant, &inner.queue_depths).await?;
    let tenant = tenant.id.as_str();
    let mut record =
        JobRecord::new_queued(id, tenant, &request.agent, request.metadata, Utc::now());
    record.request_id = Some(request_id.0);
    let spec = JobSpec {
        input,
        webhook_url: request.webhook_url.map(String::from),
        timeout_secs: request.timeout_secs,
        limits: request.limits,
    };
    inner
        .store
        .create(&record, &spec)
        .await
        .map_err(|e| ApiError::Unavailable(format!("storing the job: {e}")))?;
    let message = JobMessage {
        v: SCHEMA_VERSION,
        job_id: id,
        tenant: tenant.to_owned(),
        agent: record.agent.clone(),
        attempt: 1,
        not_before: None,
        request_id: record.request_id.clone(),
    };
    if let Err(err) = inner.jobs.publish(message).await {
        // If Redis is gone too, the orphan record expires with its TTL; no worker will see it.
        if let Err(undo) = inner.store.delete(id).await {
            tracing::error!(error = %undo, "could not remove the record of an unpublished job");
        }
        return Err(ApiError::Unavailable(format!("publishing the job: {err}")));
    }
    inner.queue_depths.note_accepted(tenant);
    inner
        .metrics
        .jobs_submitted
        .with_label_values(&[&record.agent])
        .inc();
    tracing::info!("job accepted");
    Ok(accepted_response(StatusCode::ACCEPTED, &record))
}

/// What a repeated Idempotency-Key (with the same body) finds.
enum Replayed {
    /// The original job.
    Answered(Response),
    /// No record of the job the key names: its accept is in progress, or was abandoned.
    NoRecord,
}

/// The answer to a repeated Idempotency-Key with the same body: the original job, if stored.
async fn replay(state: &AppState, tenant: &str, job_id: Uuid) -> Result<Replayed, ApiError> {
    let record = state
        .inner
        .store
        .load(job_id)
        .await
        .map_err(loading_failed)?;
    match record {
        Some(record) if record.tenant == tenant => Ok(Replayed::Answered(accepted_response(
            StatusCode::OK,
            &record,
        ))),
        // Keys are per tenant: another tenant's job under this one's key is not this
        // request's to answer or to take over.
        Some(_) => Err(ApiError::Conflict(
            "a request with this Idempotency-Key is in progress; retry shortly".into(),
        )),
        None => Ok(Replayed::NoRecord),
    }
}

/// The answer to a submission: the job, as accepted.
#[derive(Debug, Serialize, ToSchema)]
pub struct Accepted {
    pub id: Uuid,
    pub status: JobStatus,
    pub agent: String,
    pub created_at: DateTime<Utc>,
}

fn accepted_response(status: StatusCode, record: &JobRecord) -> Response {
    let body = Accepted {
        id: record.id,
        status: record.status,
        agent: record.agent.clone(),
        created_at: record.created_at,
    };
    let mut response = (status, Json(body)).into_response();
    if let Ok(value) = HeaderValue::from_str(&format!("/v1/jobs/{}", record.id)) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    response
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get(IDEMPOTENCY_HEADER) else {
        return Ok(None);
    };
    let key = value
        .to_str()
        .ok()
        .filter(|k| {
            !k.is_empty()
                && k.len() <= MAX_IDEMPOTENCY_KEY_LEN
                && k.bytes().all(|b| b.is_ascii_graphic())
        })
        .ok_or_else(|| {
            ApiError::field(
                "Idempotency-Key",
                format!("must be 1-{MAX_IDEMPOTENCY_KEY_LEN} visible ASCII characters"),
            )
        })?;
    Ok(Some(key.to_owned()))
}

/// The body's fingerprint: its JSON value re-serialized (object keys sorted), so whitespace
/// and key order do not make two equal requests differ.
fn fingerprint(body: &[u8]) -> String {
    let canonical = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| serde_json::to_vec(&v).ok())
        .unwrap_or_else(|| body.to_vec());
    hex::encode(Sha256::digest(&canonical))
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

/// The `{id}` of a job route. One that is not a UUID names no job: 404, like an unknown one
/// (and like a path axum cannot decode, rather than its plain-text 400). Noted for the audit.
pub struct JobPath(Uuid);

impl<S: Send + Sync> FromRequestParts<S> for JobPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path(raw) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|_| ApiError::NotFound)?;
        let id = Uuid::parse_str(&raw).map_err(|_| ApiError::NotFound)?;
        if let Some(note) = parts.extensions.get::<AuditNote>() {
            note.job(id);
        }
        Ok(Self(id))
    }
}

/// [`load_own`] with what the job asked for, while the job still holds it (`None` once it
/// concluded: its spec is gone).
async fn load_own_with_spec(
    state: &AppState,
    tenant: &str,
    id: Uuid,
) -> Result<(JobRecord, Option<JobSpec>), ApiError> {
    let loaded = state
        .inner
        .store
        .load_with_spec(id)
        .await
        .map_err(loading_failed)?;
    match loaded {
        Some((record, spec)) if record.tenant == tenant => Ok((record, Some(spec))),
        Some(_) => Err(ApiError::NotFound),
        None => Ok((load_own(state, tenant, id).await?, None)),
    }
}

/// A job that could not be read: Redis is unavailable (or answered nonsense).
fn loading_failed(err: StoreError) -> ApiError {
    ApiError::Unavailable(format!("loading the job: {err}"))
}

/// Loads a job the tenant may see; another tenant's job is answered like an unknown one.
async fn load_own(state: &AppState, tenant: &str, id: Uuid) -> Result<JobRecord, ApiError> {
    let record = state
        .inner
        .store
        .load(id)
        .await
        .map_err(loading_failed)?
        .ok_or(ApiError::NotFound)?;
    if record.tenant != tenant {
        return Err(ApiError::NotFound);
    }
    Ok(record)
}

/// `GET /v1/jobs/{id}`, with the run's steps when asked for (`?include=steps`): prompts, tool
/// arguments and results are the owning tenant's to read.
#[utoipa::path(
    get,
    path = "/v1/jobs/{id}",
    tag = "jobs",
    operation_id = "getJob",
    params(
        ("id" = Uuid, Path, description = "The job's id; another tenant's job is not found"),
        ("include" = Option<Include>, Query, description = "`steps`: the run's step log too"),
    ),
    responses(
        (status = 200, description = "The job record", body = JobRecord),
        (status = 400, description = "invalid-request: a field breaks a rule (named in `field`), or the body is not a JSON object", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "unauthorized: a missing, unknown or expired key", body = Problem, content_type = "application/problem+json", headers(("WWW-Authenticate" = String, description = "Bearer"))),
        (status = 404, description = "not-found: no such job for this tenant", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "unavailable (RabbitMQ or Redis), busy (too many requests in flight) or timeout", body = Problem, content_type = "application/problem+json", headers(("Retry-After" = u64, description = "Seconds to wait before trying again"))),
    ),
)]
pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    JobPath(id): JobPath,
    RawQuery(query): RawQuery,
) -> Result<Json<JobRecord>, ApiError> {
    let with_steps = wants_steps(query.as_deref())?;
    let mut record = load_own(&state, &caller.tenant.id, id).await?;
    if with_steps {
        record.steps = Some(load_steps(&state, &record).await?);
    }
    Ok(Json(record))
}

/// `GET /v1/jobs/{id}/steps`: the run's step log alone.
#[utoipa::path(
    get,
    path = "/v1/jobs/{id}/steps",
    tag = "jobs",
    operation_id = "getJobSteps",
    params(("id" = Uuid, Path, description = "The job's id")),
    responses(
        (status = 200, description = "The run's steps, oldest first", body = Vec<Step>),
        (status = 401, description = "unauthorized: a missing, unknown or expired key", body = Problem, content_type = "application/problem+json", headers(("WWW-Authenticate" = String, description = "Bearer"))),
        (status = 404, description = "not-found: no such job for this tenant", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "unavailable (RabbitMQ or Redis), busy (too many requests in flight) or timeout", body = Problem, content_type = "application/problem+json", headers(("Retry-After" = u64, description = "Seconds to wait before trying again"))),
    ),
)]
pub async fn steps(
    State(state): State<AppState>,
    caller: Caller,
    JobPath(id): JobPath,
) -> Result<Json<Vec<Step>>, ApiError> {
    let record = load_own(&state, &caller.tenant.id, id).await?;
    load_steps(&state, &record).await.map(Json)
}

/// The run's steps, masked like its result when its agent's output is masked (the stored log
/// is not: the run is rebuilt from it).
async fn load_steps(state: &AppState, record: &JobRecord) -> Result<Vec<Step>, ApiError> {
    let mut steps = state
        .inner
        .store
        .load_steps(record.id)
        .await
        .map_err(|e| ApiError::Unavailable(format!("loading the steps: {e}")))?;
    let privacy = state.inner.privacy.get();
    if privacy.masks_output(&record.agent) {
        steps
            .iter_mut()
            .for_each(|step| privacy.masker().mask_step(step));
    }
    Ok(steps)
}

/// `include=steps` (the only thing that can be included); anything else is a 400.
fn wants_steps(query: Option<&str>) -> Result<bool, ApiError> {
    let mut steps = false;
    for (key, value) in url::form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        match (key.as_ref(), value.as_ref()) {
            ("include", "steps") => steps = true,
            ("include", _) => return Err(ApiError::field("include", "the only value is `steps`")),
            (other, _) => {
                return Err(ApiError::field(
                    other.to_owned(),
                    "unknown query parameter; expected `include`",
                ))
            }
        }
    }
    Ok(steps)
}

/// `DELETE /v1/jobs/{id}`: a queued or retrying job is cancelled at once; a running one is
/// marked cancelled and its run aborted (by broadcast, and by its lease renewal as a
/// fallback). Either way the job gets its `job.cancelled` webhook. A finished job is 409.
#[utoipa::path(
    delete,
    path = "/v1/jobs/{id}",
    tag = "jobs",
    operation_id = "cancelJob",
    params(("id" = Uuid, Path, description = "The job's id")),
    responses(
        (status = 200, description = "The cancelled job's record", body = JobRecord),
        (status = 401, description = "unauthorized: a missing, unknown or expired key", body = Problem, content_type = "application/problem+json", headers(("WWW-Authenticate" = String, description = "Bearer"))),
        (status = 404, description = "not-found: no such job for this tenant", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "conflict: the job already ended, or a request with this Idempotency-Key is in progress", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "unavailable (RabbitMQ or Redis), busy (too many requests in flight) or timeout", body = Problem, content_type = "application/problem+json", headers(("Retry-After" = u64, description = "Seconds to wait before trying again"))),
    ),
)]
pub async fn cancel(
    State(state): State<AppState>,
    caller: Caller,
    JobPath(id): JobPath,
) -> Result<Json<JobRecord>, ApiError> {
    let inner = &state.inner;
    // The status may change under us (a worker starts or finishes the run): compare-and-set.
    for _ in 0..8 {
        let (current, spec) = load_own_with_spec(&state, &caller.tenant.id, id).await?;
        if current.status.is_terminal() {
            return Err(ApiError::Conflict(format!(
                "job already {}",
                current.status.as_str()
            )));
        }
        let mut cancelled = current.clone();
        cancelled.status = JobStatus::Cancelled;
        cancelled.finished_at = Some(Utc::now());
        cancelled.error = Some(JobError {
            category: ErrorCategory::Cancelled,
            message: "cancelled by the caller".into(),
        });
        let webhook = spec.as_ref().is_none_or(|spec| spec.webhook_url.is_some());
        let written = inner
            .store
            .save_end_if_status(&cancelled, current.status, webhook)
            .await
            .map_err(|e| ApiError::Unavailable(format!("cancelling the job: {e}")))?;
        match written {
            Written::Ok => {
                after_cancel(&state, &cancelled, current.status, spec.as_ref()).await;
                return Ok(Json(cancelled));
            }
            Written::Conflict => continue,
            Written::Missing => return Err(ApiError::NotFound),
            Written::Terminal | Written::LeaseLost => {
                return Err(ApiError::Conflict("job already ended".into()))
            }
        }
    }
    Err(ApiError::Conflict(
        "the job kept changing; retry the cancellation".into(),
    ))
}

async fn after_cancel(
    state: &AppState,
    record: &JobRecord,
    was: JobStatus,
    spec: Option<&JobSpec>,
) {
    let inner = &state.inner;
    inner
        .metrics
        .jobs_cancelled
        .with_label_values(&[was.as_str()])
        .inc();
    inner
        .metrics
        .jobs_completed
        .with_label_values(&[&record.agent, JobStatus::Cancelled.as_str()])
        .inc();
    tracing::info!(job_id = %record.id, from = was.as_str(), "job cancelled");
    if was == JobStatus::Running {
        let msg = ControlMessage {
            v: SCHEMA_VERSION,
            cancel: record.id,
        };
        if let Err(err) = inner.broker.publish_control(&msg).await {
            // The run notices at its next lease renewal instead.
            tracing::warn!(error = %err, "cancellation broadcast failed");
        }
    }
    // The event: if this fails, the job's work token (queued, retrying or running) finds the
    // job cancelled when a worker sees it, and hands the event off then.
    if let Some(spec) = spec {
        if let Err(err) = events::hand_off(&inner.store, &inner.broker, record, spec).await {
            tracing::warn!(error = %err, "cancellation event not handed off; a worker will");
        }
    }
}

/// What a caller may know of an agent: never base URLs, key names or prompts.
#[derive(Debug, Serialize, ToSchema)]
pub struct AgentSummary {
    pub name: String,
    pub provider: ProviderKind,
    pub model: String,
    pub max_tokens: u32,
    pub concurrency: u16,
    pub rate_limit: Option<RateLimitConfig>,
    pub timeout_secs: u64,
    pub retry: RetryConfig,
    pub max_queue_depth: Option<u32>,
    /// The JSON Schema `input` must satisfy, for an agent that takes structured input.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub input_schema: Option<Value>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AgentList {
    pub agents: Vec<AgentSummary>,
}

/// The agents jobs may be submitted to, and their limits.
#[utoipa::path(
    get,
    path = "/v1/agents",
    tag = "agents",
    operation_id = "listAgents",
    responses(
        (status = 200, description = "The configured agents", body = AgentList),
        (status = 401, description = "unauthorized: a missing, unknown or expired key", body = Problem, content_type = "application/problem+json", headers(("WWW-Authenticate" = String, description = "Bearer"))),
        (status = 503, description = "unavailable (RabbitMQ or Redis), busy (too many requests in flight) or timeout", body = Problem, content_type = "application/problem+json", headers(("Retry-After" = u64, description = "Seconds to wait before trying again"))),
    ),
)]
pub async fn agents(
    State(state): State<AppState>,
    _caller: Caller,
) -> Result<Json<AgentList>, ApiError> {
    let agents = state
        .inner
        .config
        .agents
        .iter()
        .map(|(name, agent)| AgentSummary {
            name: name.clone(),
            provider: agent.provider,
            model: agent.model.clone(),
            max_tokens: agent.max_tokens,
            concurrency: agent.concurrency,
            rate_limit: agent.rate_limit.clone(),
            timeout_secs: agent.timeout.as_secs(),
            retry: agent.retry.clone(),
            max_queue_depth: agent.max_queue_depth,
            input_schema: agent.input_schema.clone(),
        })
        .collect();
    Ok(Json(AgentList { agents }))
}

/// What `GET /v1/jobs/{id}` can include.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Include {
    Steps,
}
