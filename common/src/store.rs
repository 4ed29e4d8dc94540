//! Redis access: one connection manager (it reconnects by itself), every command bounded by a
//! timeout so an outage fails fast instead of hanging, and the job store built on it.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::FromRedisValue;
use secrecy::ExposeSecret;
use uuid::Uuid;

use crate::config::RedisConfig;
use crate::naming::Names;
use crate::wire::{Completion, JobRecord, JobSpec, JobStatus};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("stored job data is corrupt: {0}")]
    Corrupt(#[from] serde_json::Error),
}

/// A cheap-clone handle to Redis with a per-command timeout.
#[derive(Clone)]
pub struct Redis {
    conn: ConnectionManager,
    timeout: Duration,
}

impl Redis {
    /// Connects lazily: a process starts even while Redis is down, and reports not-ready.
    pub fn connect(config: &RedisConfig) -> Result<Self, StoreError> {
        let client = redis::Client::open(config.url.expose_secret())?;
        let timeout = config.timeout;
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(2));
        let conn = ConnectionManager::new_lazy_with_config(client, manager_config)?;
        Ok(Self { conn, timeout })
    }

    async fn bounded<T, F>(&self, fut: F) -> Result<T, StoreError>
    where
        F: Future<Output = redis::RedisResult<T>>,
    {
        tokio::time::timeout(self.timeout, fut)
            .await
            .map_err(|_| StoreError::Timeout(self.timeout))?
            .map_err(StoreError::from)
    }

    pub async fn cmd<T: FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, StoreError> {
        let mut conn = self.conn.clone();
        self.bounded(cmd.query_async(&mut conn)).await
    }

    pub async fn pipe<T: FromRedisValue>(&self, pipe: &redis::Pipeline) -> Result<T, StoreError> {
        let mut conn = self.conn.clone();
        self.bounded(pipe.query_async(&mut conn)).await
    }

    pub async fn script<T: FromRedisValue>(
        &self,
        invocation: &redis::ScriptInvocation<'_>,
    ) -> Result<T, StoreError> {
        let mut conn = self.conn.clone();
        self.bounded(invocation.invoke_async(&mut conn)).await
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        let _: String = self.cmd(&redis::cmd("PING")).await?;
        Ok(())
    }
}

/// Job records and specs, under the deployment's prefix, with the configured TTL.
#[derive(Clone)]
pub struct JobStore {
    redis: Redis,
    names: Names,
    ttl_secs: u64,
    scripts: Arc<Scripts>,
}

struct Scripts {
    transition: redis::Script,
    begin: redis::Script,
    renew: redis::Script,
    close: redis::Script,
}

/// Every write of a job record goes through this script (or `BEGIN`, which makes the same
/// checks), so the checks and the write are one atomic step: the writer's lease (fencing
/// token) must still be the current one, and a terminal record is final (only `bookkeeping` —
/// webhook delivery state — may touch it). Modes: `run` (a worker holding the lease), `cas`
/// (compare-and-set on the status, for the dispatcher), `bookkeeping` (terminal records only).
/// A provider answer (`ARGV[6]`, for the memo key `KEYS[4]`) is saved first and whatever the
/// checks find: it is the answer for that attempt, and saving it in the same round trip as the
/// result costs nothing extra.
const TRANSITION: &str = r"
if ARGV[6] and ARGV[6] ~= '' then redis.call('SET', KEYS[4], ARGV[6], 'EX', ARGV[2]) end
if ARGV[3] ~= '' and redis.call('GET', KEYS[2]) ~= ARGV[3] then return 'lost' end
local current = redis.call('GET', KEYS[1])
if not current then return 'missing' end
local status = cjson.decode(current)['status']
local terminal = status == 'succeeded' or status == 'failed' or status == 'cancelled'
if ARGV[4] == 'bookkeeping' then
  if not terminal then return 'conflict' end
elseif terminal then
  return 'terminal'
elseif ARGV[4] == 'cas' and status ~= ARGV[5] then
  return 'conflict'
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
redis.call('EXPIRE', KEYS[3], ARGV[2])
return 'ok'
";

/// Starts a run in one step: takes the job's lease if nobody holds it, with a fresh fencing
/// token, and writes the run's record if the stored status is still the one the run read.
/// Answers `{1, token}`, `{0, ms left on someone else's lease}`, or `{2, 0}` missing,
/// `{3, 0}` terminal, `{4, 0}` status changed meanwhile.
const BEGIN: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then return {0, redis.call('PTTL', KEYS[1])} end
local current = redis.call('GET', KEYS[3])
if not current then return {2, 0} end
local status = cjson.decode(current)['status']
if status == 'succeeded' or status == 'failed' or status == 'cancelled' then return {3, 0} end
if status ~= ARGV[5] then return {4, 0} end
local token = redis.call('INCR', KEYS[2])
redis.call('EXPIRE', KEYS[2], ARGV[4])
redis.call('SET', KEYS[1], ARGV[1] .. ':' .. token, 'PX', ARGV[2])
redis.call('SET', KEYS[3], ARGV[3], 'EX', ARGV[4])
redis.call('EXPIRE', KEYS[4], ARGV[4])
return {1, token}
";

/// Extends a lease still held by its owner; answers the job's status (so a run learns of a
/// cancellation even if it missed the broadcast), or 'lost'.
const RENEW: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 'lost' end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
local current = redis.call('GET', KEYS[2])
if not current then return 'missing' end
return cjson.decode(current)['status']
";

/// Ends a run: notes the webhook hand-off when there was one (`ARGV[3]` = '1'), then releases
/// the lease if it is still ours.
const CLOSE: &str = r"
if ARGV[3] == '1' then redis.call('SET', KEYS[2], 1, 'EX', ARGV[2]) end
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 0
";

/// A held lease: the value written under the lease key, which embeds the fencing token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub token: u64,
    value: String,
}

/// The outcome of trying to start a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Begun {
    /// The lease is ours and the record says the run started.
    Held(Lease),
    /// Someone else holds the lease for about this long; nothing was written.
    Busy(Duration),
    /// The record was not written: `Missing`, `Terminal` or `Conflict` (status changed).
    Refused(Written),
}

/// What a guarded write found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    Ok,
    /// The writer's lease is gone or someone else's: it must stop touching the job.
    LeaseLost,
    /// The job already ended; the write was refused.
    Terminal,
    /// The status was not what the writer expected.
    Conflict,
    Missing,
}

/// What a lease renewal found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Renewed {
    Held(Option<JobStatus>),
    Lost,
}

/// What an Idempotency-Key claim found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The key is ours: go on and create the job.
    New,
    /// The key was used before, for this job with this body fingerprint.
    Existing { job_id: Uuid, fingerprint: String },
}

impl JobStore {
    pub fn new(redis: Redis, names: Names, ttl_secs: u64) -> Self {
        Self {
            redis,
            names,
            ttl_secs,
            scripts: Arc::new(Scripts {
                transition: redis::Script::new(TRANSITION),
                begin: redis::Script::new(BEGIN),
                renew: redis::Script::new(RENEW),
                close: redis::Script::new(CLOSE),
            }),
        }
    }

    pub fn names(&self) -> &Names {
        &self.names
    }

    pub fn redis(&self) -> &Redis {
        &self.redis
    }

    /// Writes a new job's record and spec in one transaction: both exist or neither does.
    pub async fn create(&self, record: &JobRecord, spec: &JobSpec) -> Result<(), StoreError> {
        let mut pipe = redis::pipe();
        pipe.atomic()
            .set_ex(
                self.names.job_key(record.id),
                serde_json::to_string(record)?,
                self.ttl_secs,
            )
            .ignore()
            .set_ex(
                self.names.job_spec_key(record.id),
                serde_json::to_string(spec)?,
                self.ttl_secs,
            )
            .ignore();
        self.redis.pipe::<()>(&pipe).await
    }

    /// Removes a job's record and spec (undoing a `create` whose publish failed).
    pub async fn delete(&self, id: Uuid) -> Result<(), StoreError> {
        let mut cmd = redis::cmd("DEL");
        cmd.arg(self.names.job_key(id))
            .arg(self.names.job_spec_key(id));
        self.redis.cmd::<()>(&cmd).await
    }

    pub async fn load(&self, id: Uuid) -> Result<Option<JobRecord>, StoreError> {
        let mut cmd = redis::cmd("GET");
        cmd.arg(self.names.job_key(id));
        let raw: Option<String> = self.redis.cmd(&cmd).await?;
        raw.map(|raw| serde_json::from_str(&raw))
            .transpose()
            .map_err(StoreError::from)
    }

    /// The record and the spec together; `None` if either is gone (expired or never made).
    pub async fn load_with_spec(
        &self,
        id: Uuid,
    ) -> Result<Option<(JobRecord, JobSpec)>, StoreError> {
        let mut cmd = redis::cmd("MGET");
        cmd.arg(self.names.job_key(id))
            .arg(self.names.job_spec_key(id));
        let (record, spec): (Option<String>, Option<String>) = self.redis.cmd(&cmd).await?;
        match (record, spec) {
            (Some(record), Some(spec)) => Ok(Some((
                serde_json::from_str(&record)?,
                serde_json::from_str(&spec)?,
            ))),
            _ => Ok(None),
        }
    }

    /// What a run needs, in one round trip: the record, the spec, and the provider answer
    /// saved for `attempt` by an earlier delivery, if any. `None` if the record or the spec is
    /// gone (expired or never made).
    pub async fn load_for_run(
        &self,
        id: Uuid,
        attempt: u32,
    ) -> Result<Option<(JobRecord, JobSpec, Option<Completion>)>, StoreError> {
        let mut cmd = redis::cmd("MGET");
        cmd.arg(self.names.job_key(id))
            .arg(self.names.job_spec_key(id))
            .arg(self.names.memo_key(id, attempt));
        let (record, spec, memo): (Option<String>, Option<String>, Option<String>) =
            self.redis.cmd(&cmd).await?;
        let (Some(record), Some(spec)) = (record, spec) else {
            return Ok(None);
        };
        let memo = memo.map(|raw| serde_json::from_str(&raw)).transpose()?;
        Ok(Some((
            serde_json::from_str(&record)?,
            serde_json::from_str(&spec)?,
            memo,
        )))
    }

    async fn transition(
        &self,
        record: &JobRecord,
        lease: Option<&Lease>,
        mode: &str,
        expected: Option<JobStatus>,
        memo: Option<(u32, &Completion)>,
    ) -> Result<Written, StoreError> {
        let mut invocation = self.scripts.transition.prepare_invoke();
        invocation
            .key(self.names.job_key(record.id))
            .key(self.names.lease_key(record.id))
            .key(self.names.job_spec_key(record.id))
            .arg(serde_json::to_string(record)?)
            .arg(self.ttl_secs)
            .arg(lease.map_or("", |l| l.value.as_str()))
            .arg(mode)
            .arg(expected.map_or("", JobStatus::as_str));
        if let Some((attempt, completion)) = memo {
            invocation
                .key(self.names.memo_key(record.id, attempt))
                .arg(serde_json::to_string(completion)?);
        }
        let answer: String = self.redis.script(&invocation).await?;
        Ok(match answer.as_str() {
            "ok" => Written::Ok,
            "lost" => Written::LeaseLost,
            "terminal" => Written::Terminal,
            "conflict" => Written::Conflict,
            _ => Written::Missing,
        })
    }

    /// Writes a record as the holder of `lease`; refused if the lease is lost or the job ended.
    pub async fn save_leased(
        &self,
        record: &JobRecord,
        lease: &Lease,
    ) -> Result<Written, StoreError> {
        self.transition(record, Some(lease), "run", None, None)
            .await
    }

    /// `save_leased`, saving in the same step the provider's answer for `attempt` that the
    /// record was made from, so a redelivery does not pay for the call again.
    pub async fn save_leased_with_memo(
        &self,
        record: &JobRecord,
        lease: &Lease,
        attempt: u32,
        completion: &Completion,
    ) -> Result<Written, StoreError> {
        self.transition(
            record,
            Some(lease),
            "run",
            None,
            Some((attempt, completion)),
        )
        .await
    }

    /// Writes a record if its stored status is still `expected` (and not terminal).
    pub async fn save_if_status(
        &self,
        record: &JobRecord,
        expected: JobStatus,
    ) -> Result<Written, StoreError> {
        self.transition(record, None, "cas", Some(expected), None)
            .await
    }

    /// Updates delivery bookkeeping on a record that already ended.
    pub async fn save_bookkeeping(&self, record: &JobRecord) -> Result<Written, StoreError> {
        self.transition(record, None, "bookkeeping", None, None)
            .await
    }

    /// Starts a run as `owner`: takes the job's lease for `ttl` with a fresh fencing token and
    /// writes `record` (the run's view: running, attempt counted), provided nobody holds the
    /// lease and the stored status is still `expected` (what the run read). One round trip.
    pub async fn begin_run(
        &self,
        record: &JobRecord,
        expected: JobStatus,
        owner: &str,
        ttl: Duration,
    ) -> Result<Begun, StoreError> {
        let id = record.id;
        let mut invocation = self.scripts.begin.prepare_invoke();
        invocation
            .key(self.names.lease_key(id))
            .key(self.names.fence_key(id))
            .key(self.names.job_key(id))
            .key(self.names.job_spec_key(id))
            .arg(owner)
            .arg(ttl.as_millis() as u64)
            .arg(serde_json::to_string(record)?)
            .arg(self.ttl_secs)
            .arg(expected.as_str());
        let (code, value): (i64, i64) = self.redis.script(&invocation).await?;
        Ok(match code {
            1 => {
                let token = value as u64;
                Begun::Held(Lease {
                    token,
                    value: format!("{owner}:{token}"),
                })
            }
            0 => Begun::Busy(Duration::from_millis(value.max(0) as u64)),
            3 => Begun::Refused(Written::Terminal),
            4 => Begun::Refused(Written::Conflict),
            _ => Begun::Refused(Written::Missing),
        })
    }

    pub async fn renew_lease(
        &self,
        id: Uuid,
        lease: &Lease,
        ttl: Duration,
    ) -> Result<Renewed, StoreError> {
        let mut invocation = self.scripts.renew.prepare_invoke();
        invocation
            .key(self.names.lease_key(id))
            .key(self.names.job_key(id))
            .arg(&lease.value)
            .arg(ttl.as_millis() as u64);
        let answer: String = self.redis.script(&invocation).await?;
        Ok(match answer.as_str() {
            "lost" => Renewed::Lost,
            status => Renewed::Held(
                serde_json::from_value(serde_json::Value::String(status.to_owned())).ok(),
            ),
        })
    }

    /// Ends a run: releases the lease if it is still ours and, when `handed_off`, notes in
    /// the same step that the job's terminal event is on the webhook queue.
    pub async fn close_run(
        &self,
        id: Uuid,
        lease: &Lease,
        handed_off: bool,
    ) -> Result<(), StoreError> {
        let mut invocation = self.scripts.close.prepare_invoke();
        invocation
            .key(self.names.lease_key(id))
            .key(self.names.handoff_key(id))
            .arg(&lease.value)
            .arg(self.ttl_secs)
            .arg(if handed_off { "1" } else { "" });
        let _: i64 = self.redis.script(&invocation).await?;
        Ok(())
    }

    /// Saves a provider's answer against the job's attempt (the worker saves it together
    /// with the result, `save_leased_with_memo`).
    pub async fn save_memo(
        &self,
        id: Uuid,
        attempt: u32,
        completion: &Completion,
    ) -> Result<(), StoreError> {
        let mut cmd = redis::cmd("SET");
        cmd.arg(self.names.memo_key(id, attempt))
            .arg(serde_json::to_string(completion)?)
            .arg("EX")
            .arg(self.ttl_secs);
        self.redis.cmd::<()>(&cmd).await
    }

    /// Notes that the job's terminal event is on the webhook queue.
    pub async fn mark_handed_off(&self, id: Uuid) -> Result<(), StoreError> {
        let mut cmd = redis::cmd("SET");
        cmd.arg(self.names.handoff_key(id))
            .arg(1)
            .arg("EX")
            .arg(self.ttl_secs);
        self.redis.cmd::<()>(&cmd).await
    }

    pub async fn handed_off(&self, id: Uuid) -> Result<bool, StoreError> {
        let mut cmd = redis::cmd("EXISTS");
        cmd.arg(self.names.handoff_key(id));
        self.redis.cmd(&cmd).await
    }

    /// Claims a tenant's Idempotency-Key for a new job, or finds who had it.
    pub async fn claim_idempotency_key(
        &self,
        tenant: &str,
        key: &str,
        job_id: Uuid,
        fingerprint: &str,
        ttl: Duration,
    ) -> Result<Claim, StoreError> {
        let name = self.names.idempotency_key(tenant, key);
        let value = format!("{job_id} {fingerprint}");
        // Two rounds: the key may expire between a failed SET NX and the GET.
        for _ in 0..2 {
            let mut set = redis::cmd("SET");
            set.arg(&name)
                .arg(&value)
                .arg("NX")
                .arg("EX")
                .arg(ttl.as_secs());
            let created: Option<String> = self.redis.cmd(&set).await?;
            if created.is_some() {
                return Ok(Claim::New);
            }
            let mut get = redis::cmd("GET");
            get.arg(&name);
            let existing: Option<String> = self.redis.cmd(&get).await?;
            let parsed = existing.as_deref().and_then(|v| {
                let (id, fingerprint) = v.split_once(' ')?;
                Some(Claim::Existing {
                    job_id: Uuid::parse_str(id).ok()?,
                    fingerprint: fingerprint.to_owned(),
                })
            });
            if let Some(claim) = parsed {
                return Ok(claim);
            }
        }
        Ok(Claim::New)
    }

    /// Gives an Idempotency-Key back (its job was never accepted).
    pub async fn release_idempotency_key(&self, tenant: &str, key: &str) -> Result<(), StoreError> {
        let mut cmd = redis::cmd("DEL");
        cmd.arg(self.names.idempotency_key(tenant, key));
        self.redis.cmd::<()>(&cmd).await
    }
}
