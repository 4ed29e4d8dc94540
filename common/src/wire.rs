//! Wire types: everything that crosses a process boundary (broker messages, the job record
//! stored in Redis and served by the API, webhook events). Deriving `Serialize` here makes a
//! type a contract with another process; change it only in a backward-compatible way, or bump
//! [`SCHEMA_VERSION`].

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use agentfleet_agent::{LimitOverrides, StopReason};

/// Version of the broker message schema. A worker refuses (dead-letters) other versions.
pub const SCHEMA_VERSION: u16 = 1;

/// Declares [`JobStatus`] from one table: each status, its wire name, and whether it is
/// terminal. Everything else (the API, the webhook events, the terminal set the Redis scripts
/// check, the test harness) derives from it, so a new status is one line here.
macro_rules! job_statuses {
    ($($variant:ident => $name:literal, terminal: $terminal:literal;)+) => {
        /// `queued → running → succeeded | failed | cancelled`, with `running → retrying →
        /// running` between attempts and `running → awaiting_approval → running` while a
        /// human decides on a risky step.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub enum JobStatus {
            $(#[serde(rename = $name)] $variant,)+
        }

        impl JobStatus {
            /// Every status, in lifecycle order.
            pub const ALL: &'static [JobStatus] = &[$(JobStatus::$variant,)+];

            pub fn is_terminal(self) -> bool {
                match self {
                    $(Self::$variant => $terminal,)+
                }
            }

            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $name,)+
                }
            }

            pub fn parse(name: &str) -> Option<Self> {
                match name {
                    $($name => Some(Self::$variant),)+
                    _ => None,
                }
            }
        }
    };
}

job_statuses! {
    Queued => "queued", terminal: false;
    Running => "running", terminal: false;
    Retrying => "retrying", terminal: false;
    AwaitingApproval => "awaiting_approval", terminal: false;
    Succeeded => "succeeded", terminal: true;
    Failed => "failed", terminal: true;
    Cancelled => "cancelled", terminal: true;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    System,
    User,
    Assistant,
}

impl Role {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "system" => Some(Self::System),
            "user" => Some(Self::User),
            "assistant" => Some(Self::Assistant),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ChatMessage {
    pub role: Role,
    pub content: String,
}

/// What the caller asked the agent to work on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum JobInput {
    Text(String),
    Messages {
        messages: Vec<ChatMessage>,
    },
    /// The input of an agent with an `input_schema`: a JSON value that satisfied it when the
    /// job was accepted. The model gets it as one user message holding the JSON.
    Data {
        data: serde_json::Value,
    },
}

impl JobInput {
    /// The conversation sent to the provider, after the agent's system prompt.
    pub fn to_messages(&self) -> Vec<ChatMessage> {
        match self {
            Self::Text(text) => vec![ChatMessage {
                role: Role::User,
                content: text.clone(),
            }],
            Self::Messages { messages } => messages.clone(),
            Self::Data { data } => vec![ChatMessage {
                role: Role::User,
                content: data.to_string(),
            }],
        }
    }

    /// Characters of content, for a token estimate before the provider tells us the truth.
    pub fn content_chars(&self) -> usize {
        match self {
            Self::Text(text) => text.chars().count(),
            Self::Messages { messages } => messages.iter().map(|m| m.content.chars().count()).sum(),
            Self::Data { data } => data.to_string().chars().count(),
        }
    }
}

/// Written by hand from [`JobStatus::ALL`]: the derive does not see the wire names through the
/// declaring macro.
impl utoipa::PartialSchema for JobStatus {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, Type};
        ObjectBuilder::new()
            .schema_type(Type::String)
            .enum_values(Some(Self::ALL.iter().map(|s| s.as_str())))
            .description(Some(
                "`queued → running → succeeded | failed | cancelled`, with `retrying` between attempts and `awaiting_approval` while a human decides",
            ))
            .into()
    }
}

impl utoipa::ToSchema for JobStatus {}

/// Failure classes. Which of them are retried is decided by [`ErrorCategory::is_retryable`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCategory {
    RateLimited,
    ProviderError,
    Timeout,
    Network,
    InvalidResponse,
    BadRequest,
    Auth,
    Cancelled,
    BudgetExceeded,
    /// The run reached its agent's (or job's) `max_turns`.
    MaxTurns,
    /// The run reached its `max_tool_calls`.
    MaxToolCalls,
    /// A `write` tool may have run before a crash, and is not repeated blindly.
    UncertainSideEffect,
    /// The final answer failed the agent's output schema, even after a repair turn.
    InvalidOutput,
    WebhookBlocked,
    Internal,
}

impl ErrorCategory {
    /// The one place that decides whether a failure is worth another attempt.
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            Self::RateLimited
                | Self::ProviderError
                | Self::Timeout
                | Self::Network
                | Self::InvalidResponse
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::RateLimited => "rate_limited",
            Self::ProviderError => "provider_error",
            Self::Timeout => "timeout",
            Self::Network => "network",
            Self::InvalidResponse => "invalid_response",
            Self::BadRequest => "bad_request",
            Self::Auth => "auth",
            Self::Cancelled => "cancelled",
            Self::BudgetExceeded => "budget_exceeded",
            Self::MaxTurns => "max_turns",
            Self::MaxToolCalls => "max_tool_calls",
            Self::UncertainSideEffect => "uncertain_side_effect",
            Self::InvalidOutput => "invalid_output",
            Self::WebhookBlocked => "webhook_blocked",
            Self::Internal => "internal",
        }
    }
}

impl From<StopReason> for ErrorCategory {
    /// How a run the agent runtime stopped is categorised on the record.
    fn from(reason: StopReason) -> Self {
        match reason {
            StopReason::MaxTurns => Self::MaxTurns,
            StopReason::MaxToolCalls => Self::MaxToolCalls,
            StopReason::BudgetExceeded => Self::BudgetExceeded,
            StopReason::UncertainSideEffect => Self::UncertainSideEffect,
            StopReason::InvalidOutput => Self::InvalidOutput,
            StopReason::InvalidModelResponse => Self::InvalidResponse,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct JobError {
    pub category: ErrorCategory,
    pub message: String,
}

pub use agentfleet_agent::{Step, Usage};

/// Why a job that is not running is waiting, and until when (shown on the record and by the
/// API while it waits).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Waiting {
    pub reason: WaitReason,
    pub until: DateTime<Utc>,
    /// A rate-limit turn at `until` is held for the job: it calls then without queuing again.
    #[serde(default)]
    pub reserved: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum WaitReason {
    /// The agent's (or its pool's) fleet-wide rate limit has no turn for it yet.
    RateLimited,
    /// The provider asked the fleet to hold its calls (a 429 with `Retry-After`).
    PoolPaused,
    TenantQuota,
    Budget,
    CircuitOpen,
}

/// Delivery state of the job's webhook, kept on the record.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WebhookStatus {
    pub attempts: u32,
    pub last_status: Option<u16>,
    pub delivered_at: Option<DateTime<Utc>>,
    /// How delivery ended, once it has: `delivered`, `gone` (410), `exhausted` (every retry
    /// failed) or `webhook_blocked` (the URL resolved to a non-public address when sent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<WebhookOutcome>,
}

/// How a webhook's delivery ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum WebhookOutcome {
    Delivered,
    Gone,
    Exhausted,
    WebhookBlocked,
}

/// One failed attempt, kept on the record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AttemptError {
    pub attempt: u32,
    pub category: ErrorCategory,
    pub message: String,
    pub at: DateTime<Utc>,
}

/// The job record: what `GET /v1/jobs/{id}` returns and what a webhook carries as `data`.
/// Stored as JSON in the job's hash (`Names::job_key`). It holds nothing secret and not the
/// input.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct JobRecord {
    /// Stored without it (the job's key names it): the store fills it in on reading.
    #[serde(default)]
    #[schema(required = true)]
    pub id: Uuid,
    pub tenant: String,
    pub agent: String,
    pub status: JobStatus,
    pub attempts: u32,
    pub created_at: DateTime<Utc>,
    #[serde(default)]
    pub started_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub finished_at: Option<DateTime<Utc>>,
    /// The final answer: text, or JSON when the agent has an output schema.
    #[serde(default)]
    pub output: Option<Value>,
    #[serde(default)]
    pub error: Option<JobError>,
    /// Tokens of every model call of the run.
    #[serde(default)]
    pub usage: Option<Usage>,
    /// What the run's model calls cost, from the price table (0 for an unpriced model).
    #[serde(default)]
    pub cost_usd: Option<f64>,
    /// Model calls and tool calls the run made.
    #[serde(default)]
    pub turns: Option<u32>,
    #[serde(default)]
    pub tool_calls: Option<u32>,
    #[serde(default)]
    pub metadata: Option<Value>,
    /// Every failed attempt's error, oldest first.
    #[serde(default)]
    pub attempt_errors: Vec<AttemptError>,
    #[serde(default)]
    pub webhook: Option<WebhookStatus>,
    /// Set while the job waits outside any worker for a limit; cleared when it runs again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting: Option<Waiting>,
    /// The run's step log. Never stored on the record (it lives in its own list): filled in
    /// for `GET /v1/jobs/{id}?include=steps` and for the webhook.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steps: Option<Vec<Step>>,
    /// The `X-Request-Id` of the POST that created the job (the client's, or one the
    /// dispatcher made up), so an operator can find the submission's log lines.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

impl JobRecord {
    pub fn new_queued(
        id: Uuid,
        tenant: &str,
        agent: &str,
        metadata: Option<Value>,
        now: DateTime<Utc>,
    ) -> Self {
        Self {
            id,
            tenant: tenant.to_owned(),
            agent: agent.to_owned(),
            status: JobStatus::Queued,
            attempts: 0,
            created_at: now,
            started_at: None,
            finished_at: None,
            output: None,
            error: None,
            usage: None,
            cost_usd: None,
            turns: None,
            tool_calls: None,
            metadata,
            attempt_errors: Vec::new(),
            webhook: None,
            waiting: None,
            steps: None,
            request_id: None,
        }
    }
}

/// What the job asked for, stored beside the record in the job's hash (`Names::job_key`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobSpec {
    pub input: JobInput,
    #[serde(default)]
    pub webhook_url: Option<String>,
    /// The caller's deadline for the whole run, when lower than the agent's.
    #[serde(default)]
    pub timeout_secs: Option<u64>,
    /// The caller's limits for the run, where lower than the agent's.
    #[serde(default)]
    pub limits: Option<LimitOverrides>,
}

/// The work token on an agent queue: "this job needs work". Carries ids, never content or
/// secrets; the record in Redis is the truth.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobMessage {
    pub v: u16,
    pub job_id: Uuid,
    pub tenant: String,
    pub agent: String,
    pub attempt: u32,
    /// Set when the message went through a delay queue: not to be worked before this instant.
    #[serde(default)]
    pub not_before: Option<DateTime<Utc>>,
    /// The request id of the submission, carried through retries and delays so the run's log
    /// lines can be joined to the dispatcher's. Absent from messages of older dispatchers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub enum EventType {
    #[serde(rename = "job.succeeded")]
    JobSucceeded,
    #[serde(rename = "job.failed")]
    JobFailed,
    #[serde(rename = "job.cancelled")]
    JobCancelled,
}

impl EventType {
    /// The event a terminal status produces; `None` for a status that is not terminal.
    pub fn for_status(status: JobStatus) -> Option<Self> {
        match status {
            JobStatus::Succeeded => Some(Self::JobSucceeded),
            JobStatus::Failed => Some(Self::JobFailed),
            JobStatus::Cancelled => Some(Self::JobCancelled),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::JobSucceeded => "job.succeeded",
            Self::JobFailed => "job.failed",
            Self::JobCancelled => "job.cancelled",
        }
    }
}

/// A webhook delivery token on the webhook queue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WebhookMessage {
    pub v: u16,
    pub job_id: Uuid,
    pub tenant: String,
    pub event: EventType,
    /// Delivery attempts made before this one.
    pub attempt: u32,
    #[serde(default)]
    pub not_before: Option<DateTime<Utc>>,
}

/// The webhook body: `{"type", "timestamp", "data"}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WebhookEvent {
    #[serde(rename = "type")]
    pub event_type: EventType,
    pub timestamp: DateTime<Utc>,
    pub data: JobRecord,
}

impl WebhookEvent {
    /// The `webhook-id`: one terminal event per job, so it is derived from the job and stable
    /// across every retry and every worker.
    pub fn id(&self) -> String {
        event_id(self.data.id, self.event_type)
    }
}

pub fn event_id(job_id: Uuid, event: EventType) -> String {
    let kind = match event {
        EventType::JobSucceeded => "succeeded",
        EventType::JobFailed => "failed",
        EventType::JobCancelled => "cancelled",
    };
    format!("msg_{}_{kind}", job_id.simple())
}

/// A broadcast to every worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ControlMessage {
    pub v: u16,
    /// Abort this job's run wherever it is running.
    pub cancel: Uuid,
}

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("message is not valid JSON for its schema: {0}")]
    Malformed(#[from] serde_json::Error),
    #[error("message schema version {found} is not supported (expected {SCHEMA_VERSION})")]
    Version { found: u16 },
    #[error("job batch: {0}")]
    Batch(&'static str),
}

/// A broker message with a schema version.
pub trait Versioned: Serialize + for<'de> Deserialize<'de> {
    fn version(&self) -> u16;

    fn encode(&self) -> Vec<u8> {
        // Serializing these plain structs cannot fail: no maps with non-string keys.
        serde_json::to_vec(self).unwrap_or_default()
    }

    fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        let msg: Self = serde_json::from_slice(bytes)?;
        match msg.version() {
            SCHEMA_VERSION => Ok(msg),
            found => Err(WireError::Version { found }),
        }
    }
}

impl Versioned for JobMessage {
    fn version(&self) -> u16 {
        self.v
    }
}

/// Several work tokens of one queue in one broker message: what a dispatcher publishes when
/// several jobs of one agent and tenant are accepted while its previous publish awaits its
/// confirm (the broker's cost is per message, not per byte). Marked by the AMQP `type`
/// property [`JobBatch::KIND`]. A worker runs the jobs under its own slots and acks the
/// message once every job is settled; a batch delivered again is split into single messages,
/// so a job that keeps failing is counted (and dead-lettered) on its own.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobBatch {
    pub v: u16,
    pub jobs: Vec<JobMessage>,
}

impl JobBatch {
    /// The AMQP `type` of a batch message.
    pub const KIND: &'static str = "agentfleet.job-batch";
    /// The most jobs one message carries.
    pub const MAX_JOBS: usize = 64;

    /// A batch of `jobs`, checked as [`JobBatch::decode`] checks one.
    pub fn new(jobs: Vec<JobMessage>) -> Result<Self, WireError> {
        let batch = Self {
            v: SCHEMA_VERSION,
            jobs,
        };
        batch.check()?;
        Ok(batch)
    }

    /// Reads a batch and checks it is one: 1 to [`JobBatch::MAX_JOBS`] jobs, all of one agent
    /// and tenant (so all of one queue), each of the supported version.
    pub fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        let batch: Self = <Self as Versioned>::decode(bytes)?;
        batch.check()?;
        Ok(batch)
    }

    fn check(&self) -> Result<(), WireError> {
        let Some(first) = self.jobs.first() else {
            return Err(WireError::Batch("no jobs"));
        };
        if self.jobs.len() > Self::MAX_JOBS {
            return Err(WireError::Batch("more jobs than a batch may carry"));
        }
        if let Some(job) = self.jobs.iter().find(|j| j.v != SCHEMA_VERSION) {
            return Err(WireError::Version { found: job.v });
        }
        if self
            .jobs
            .iter()
            .any(|j| j.agent != first.agent || j.tenant != first.tenant)
        {
            return Err(WireError::Batch("jobs of more than one agent or tenant"));
        }
        Ok(())
    }
}

impl Versioned for JobBatch {
    fn version(&self) -> u16 {
        self.v
    }
}

impl Versioned for ControlMessage {
    fn version(&self) -> u16 {
        self.v
    }
}

impl Versioned for WebhookMessage {
    fn version(&self) -> u16 {
        self.v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(agent: &str, tenant: &str) -> JobMessage {
        JobMessage {
            v: SCHEMA_VERSION,
            job_id: Uuid::now_v7(),
            tenant: tenant.into(),
            agent: agent.into(),
            attempt: 1,
            not_before: None,
            request_id: None,
        }
    }

    #[test]
    fn a_batch_round_trips_and_holds_one_queue_only() {
        let batch = JobBatch::new(vec![job("a", "t"), job("a", "t")]).expect("one queue");
        assert_eq!(JobBatch::decode(&batch.encode()).expect("decodes"), batch);

        let refused = |jobs: Vec<JobMessage>| {
            let bytes = serde_json::to_vec(&JobBatch {
                v: SCHEMA_VERSION,
                jobs,
            })
            .expect("encodes");
            JobBatch::decode(&bytes).expect_err("refused").to_string()
        };
        assert_eq!(refused(vec![]), "job batch: no jobs");
        assert!(refused(vec![job("a", "t"), job("b", "t")]).contains("more than one agent"));
        assert!(refused(vec![job("a", "t"), job("a", "u")]).contains("more than one agent"));
        let too_many = (0..=JobBatch::MAX_JOBS).map(|_| job("a", "t")).collect();
        assert!(refused(too_many).contains("more jobs than"));
        let mut old = job("a", "t");
        old.v = SCHEMA_VERSION + 1;
        assert!(refused(vec![job("a", "t"), old]).contains("version"));
        assert!(JobBatch::decode(br#"{"v":1,"jobs":"x"}"#).is_err());
        assert!(JobBatch::new(vec![]).is_err());
    }

    #[test]
    fn job_input_accepts_text_and_messages() {
        let text: JobInput = serde_json::from_str(r#""hello""#).expect("text");
        assert_eq!(text.to_messages()[0].role, Role::User);
        let msgs: JobInput =
            serde_json::from_str(r#"{"messages":[{"role":"system","content":"x"}]}"#)
                .expect("messages");
        assert_eq!(msgs.content_chars(), 1);
    }

    #[test]
    fn structured_input_round_trips_and_is_one_user_message() {
        let data = JobInput::Data {
            data: serde_json::json!({"messages": "not a conversation", "n": 1}),
        };
        let stored = serde_json::to_string(&data).expect("serialize");
        let read: JobInput = serde_json::from_str(&stored).expect("deserialize");
        assert_eq!(
            read, data,
            "the data wrapper keeps it apart from `{{messages}}`"
        );
        let messages = read.to_messages();
        assert_eq!(messages.len(), 1);
        assert_eq!(messages[0].role, Role::User);
        assert_eq!(
            messages[0].content,
            r#"{"messages":"not a conversation","n":1}"#
        );
    }

    #[test]
    fn messages_round_trip_and_reject_other_versions() {
        let msg = JobMessage {
            v: SCHEMA_VERSION,
            job_id: Uuid::now_v7(),
            tenant: "t".into(),
            agent: "a".into(),
            attempt: 1,
            not_before: None,
            request_id: Some("req-1".into()),
        };
        assert_eq!(JobMessage::decode(&msg.encode()).expect("decode"), msg);
        // A message of a dispatcher that did not send request ids still decodes.
        let older = format!(
            r#"{{"v":{SCHEMA_VERSION},"job_id":"{}","tenant":"t","agent":"a","attempt":1}}"#,
            msg.job_id
        );
        let decoded = JobMessage::decode(older.as_bytes()).expect("older message");
        assert_eq!(decoded.request_id, None);
        let mut other = msg.clone();
        other.v = 99;
        assert!(matches!(
            JobMessage::decode(&other.encode()),
            Err(WireError::Version { found: 99 })
        ));
        assert!(matches!(
            JobMessage::decode(b"{not json"),
            Err(WireError::Malformed(_))
        ));
    }

    #[test]
    fn statuses_have_one_spelling() {
        for &status in JobStatus::ALL {
            let json = serde_json::to_string(&status).expect("ser");
            assert_eq!(json, format!("\"{}\"", status.as_str()));
            assert_eq!(JobStatus::parse(status.as_str()), Some(status));
        }
        let terminal: Vec<_> = JobStatus::ALL.iter().filter(|s| s.is_terminal()).collect();
        assert_eq!(
            terminal,
            [
                &JobStatus::Succeeded,
                &JobStatus::Failed,
                &JobStatus::Cancelled
            ]
        );
        assert!(!JobStatus::AwaitingApproval.is_terminal());
    }

    #[test]
    fn status_serializes_snake_case() {
        assert_eq!(
            serde_json::to_string(&JobStatus::Succeeded).expect("ser"),
            r#""succeeded""#
        );
        assert_eq!(
            serde_json::to_string(&EventType::JobFailed).expect("ser"),
            r#""job.failed""#
        );
    }

    #[test]
    fn event_id_is_stable_per_job_and_event() {
        let id = Uuid::now_v7();
        assert_eq!(
            event_id(id, EventType::JobSucceeded),
            event_id(id, EventType::JobSucceeded)
        );
        assert_ne!(
            event_id(id, EventType::JobSucceeded),
            event_id(id, EventType::JobFailed)
        );
    }

    #[test]
    fn retryable_categories_are_the_transient_ones() {
        assert!(ErrorCategory::RateLimited.is_retryable());
        assert!(ErrorCategory::InvalidResponse.is_retryable());
        assert!(!ErrorCategory::Auth.is_retryable());
        assert!(!ErrorCategory::BadRequest.is_retryable());
    }
}
