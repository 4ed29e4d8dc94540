//! Redis access: connections to one server or to the master Sentinel names (`link`, the only
//! code that knows which), every command bounded by a timeout so an outage fails fast instead
//! of hanging, writes that back a promise acknowledged by replicas when asked, and the job
//! store built on it.

mod link;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::{FromRedisValue, Value};
use uuid::Uuid;

use crate::config::{ConfigError, RedisConfig};
use crate::naming::Names;
use crate::wire::{JobRecord, JobSpec, JobStatus, Step};

use link::{Link, Master};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("stored job data is corrupt: {0}")]
    Corrupt(#[from] serde_json::Error),
    #[error("a redis script answered `{0}`, which this version does not know")]
    UnexpectedAnswer(String),
    /// The write happened on the master, but fewer replicas than `redis.min_replicas_acked`
    /// confirmed it in time: a failover now could forget it, so it is not a promise.
    #[error("the write reached {acked} of the {wanted} replicas it must reach")]
    NotReplicated { acked: u32, wanted: u32 },
    #[error("the sentinels name no reachable redis master (yet)")]
    NoMaster,
    #[error(transparent)]
    Config(#[from] ConfigError),
}

/// How many replicas must acknowledge a write that backs a promise, and for how long to wait.
#[derive(Debug, Clone, Copy)]
struct Durability {
    replicas: u32,
    wait: Duration,
}

/// A cheap-clone handle to Redis with a per-command timeout.
#[derive(Clone)]
pub struct Redis {
    link: Link,
    timeout: Duration,
    durability: Durability,
}

impl Redis {
    /// Connects lazily: a process starts even while Redis (or every sentinel) is down, and
    /// reports not-ready.
    pub fn connect(config: &RedisConfig) -> Result<Self, StoreError> {
        Ok(Self {
            link: Link::connect(config)?,
            timeout: config.timeout,
            durability: Durability {
                replicas: config.min_replicas_acked,
                wait: config.wait_timeout,
            },
        })
    }

    /// Runs `op` on a connection to the master (the shared one, or one for acknowledged
    /// writes), bounded by the timeout; a failure that says the master changed is reported to
    /// the link.
    async fn on_master<T, F, Fut>(&self, acked: bool, op: F) -> Result<T, StoreError>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = Result<T, StoreError>>,
    {
        let master: Arc<Master> = self.link.master().await?;
        let conn = if acked {
            master.acked()
        } else {
            master.shared()
        };
        let result = tokio::time::timeout(self.timeout, op(conn))
            .await
            .unwrap_or(Err(StoreError::Timeout(self.timeout)));
        if let Err(err) = &result {
            self.link.failed(&master, err);
        }
        result
    }

    pub async fn cmd<T: FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, StoreError> {
        self.on_master(false, |mut conn| async move {
            Ok(cmd.query_async(&mut conn).await?)
        })
        .await
    }

    pub async fn pipe<T: FromRedisValue>(&self, pipe: &redis::Pipeline) -> Result<T, StoreError> {
        self.on_master(false, |mut conn| async move {
            Ok(pipe.query_async(&mut conn).await?)
        })
        .await
    }

    pub async fn script<T: FromRedisValue>(
        &self,
        invocation: &redis::ScriptInvocation<'_>,
    ) -> Result<T, StoreError> {
        self.on_master(false, |mut conn| async move {
            Ok(invocation.invoke_async(&mut conn).await?)
        })
        .await
    }

    /// [`Redis::script`] for a write that backs a promise: with `redis.min_replicas_acked`, the
    /// script and `WAIT` go in one round trip, and too few acknowledgements are
    /// [`StoreError::NotReplicated`] (the caller must not promise: 503, or no ack).
    pub async fn script_acked<T: FromRedisValue>(
        &self,
        invocation: &redis::ScriptInvocation<'_>,
    ) -> Result<T, StoreError> {
        let durability = self.durability;
        if durability.replicas == 0 {
            return self.script(invocation).await;
        }
        self.on_master(true, |mut conn| async move {
            let mut pipe = redis::pipe();
            pipe.invoke_script(invocation);
            durability.wait_in(&mut pipe);
            let answer = match pipe.query_async::<(T, i64)>(&mut conn).await {
                Err(err)
                    if err.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) =>
                {
                    // The script cache is per server: a new master does not have it yet.
                    invocation.load_async(&mut conn).await?;
                    pipe.query_async(&mut conn).await?
                }
                answer => answer?,
            };
            let (value, acked) = answer;
            durability.check(acked)?;
            Ok(value)
        })
        .await
    }

    /// [`Redis::pipe`] for a write that backs a promise and whose replies are not needed: a
    /// transaction (`atomic`) stays one, with `WAIT` after its `EXEC` (inside, `WAIT` would
    /// not block), all in one round trip.
    pub async fn pipe_acked(&self, pipe: &redis::Pipeline) -> Result<(), StoreError> {
        let durability = self.durability;
        if durability.replicas == 0 {
            return self.pipe(pipe).await;
        }
        let mut with_wait = redis::pipe();
        if pipe.is_transaction() {
            with_wait.cmd("MULTI");
        }
        for cmd in pipe.cmd_iter() {
            with_wait.add_command(cmd.clone());
        }
        if pipe.is_transaction() {
            with_wait.cmd("EXEC");
        }
        durability.wait_in(&mut with_wait);
        self.on_master(true, |mut conn| async move {
            let mut replies: Vec<Value> = with_wait.query_async(&mut conn).await?;
            let acked = match replies.pop() {
                Some(Value::Int(acked)) => acked,
                other => return Err(StoreError::UnexpectedAnswer(format!("WAIT: {other:?}"))),
            };
            for reply in replies {
                reply.extract_error()?;
            }
            durability.check(acked)
        })
        .await
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        let _: String = self.cmd(&redis::cmd("PING")).await?;
        Ok(())
    }
}

impl Durability {
    fn wait_in(self, pipe: &mut redis::Pipeline) {
        pipe.cmd("WAIT")
            .arg(self.replicas)
            .arg(u64::try_from(self.wait.as_millis()).unwrap_or(u64::MAX));
    }

    fn check(self, acked: i64) -> Result<(), StoreError> {
        let acked = u32::try_from(acked).unwrap_or(0);
        if acked >= self.replicas {
            Ok(())
        } else {
            Err(StoreError::NotReplicated {
                acked,
                wanted: self.replicas,
            })
        }
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
    append_steps: redis::Script,
}

impl Scripts {
    fn new() -> Self {
        let prelude = lua_prelude();
        let script = |body: &str| redis::Script::new(&format!("{prelude}{body}"));
        Self {
            transition: script(TRANSITION),
            begin: script(BEGIN),
            renew: script(RENEW),
            close: script(CLOSE),
            append_steps: script(APPEND_STEPS),
        }
    }
}

/// Every job script starts with this, generated from [`JobStatus`] at startup: the terminal
/// statuses as a Lua set, so no script spells them. (`TERMINAL[status]` is `true` or `nil`.)
fn lua_prelude() -> String {
    let terminal: Vec<String> = JobStatus::ALL
        .iter()
        .filter(|s| s.is_terminal())
        .map(|s| format!("['{}'] = true", s.as_str()))
        .collect();
    format!("local TERMINAL = {{{}}}\n", terminal.join(", "))
}

/// Every write of a job record goes through this script (or `BEGIN`, which makes the same
/// checks), so the checks and the write are one atomic step: the writer's lease (fencing
/// token) must still be the current one, and a terminal record is final (only bookkeeping —
/// webhook delivery state — may touch it). `ARGV[4]` is a [`WriteMode`]; it answers a
/// [`Written`] by name. The spec and the step log (`KEYS[3]`, `KEYS[4]`) expire with the record.
const TRANSITION: &str = r"
if ARGV[3] ~= '' and redis.call('GET', KEYS[2]) ~= ARGV[3] then return 'lease_lost' end
local current = redis.call('GET', KEYS[1])
if not current then return 'missing' end
local status = cjson.decode(current)['status']
if ARGV[4] == 'bookkeeping' then
  if not TERMINAL[status] then return 'conflict' end
elseif TERMINAL[status] then
  return 'terminal'
elseif ARGV[4] == 'cas' and status ~= ARGV[5] then
  return 'conflict'
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
redis.call('EXPIRE', KEYS[3], ARGV[2])
redis.call('EXPIRE', KEYS[4], ARGV[2])
return 'ok'
";

/// Starts a run in one step: takes the job's lease if nobody holds it, with a fresh fencing
/// token, and writes the run's record if the stored status is still the one the run read.
/// Answers `{'ok', token}`, `{'busy', ms left on someone else's lease}`, or a refusal
/// (`missing`, `terminal`, `conflict`: status changed meanwhile) with 0.
const BEGIN: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then return {'busy', redis.call('PTTL', KEYS[1])} end
local current = redis.call('GET', KEYS[3])
if not current then return {'missing', 0} end
local status = cjson.decode(current)['status']
if TERMINAL[status] then return {'terminal', 0} end
if status ~= ARGV[5] then return {'conflict', 0} end
local token = redis.call('INCR', KEYS[2])
redis.call('EXPIRE', KEYS[2], ARGV[4])
redis.call('SET', KEYS[1], ARGV[1] .. ':' .. token, 'PX', ARGV[2])
redis.call('SET', KEYS[3], ARGV[3], 'EX', ARGV[4])
redis.call('EXPIRE', KEYS[4], ARGV[4])
return {'ok', token}
";

/// Extends a lease still held by its owner; answers the job's status (so a run learns of a
/// cancellation even if it missed the broadcast), or 'lease_lost'.
const RENEW: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 'lease_lost' end
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

/// Appends steps to a run's log (`KEYS[2]`) as the holder of the lease (`KEYS[1]`), if the
/// log is as long as the writer believes (`ARGV[2]`): a step is never appended twice, nor
/// after someone else's. Answers a [`Written`] by name.
const APPEND_STEPS: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 'lease_lost' end
if redis.call('LLEN', KEYS[2]) ~= tonumber(ARGV[2]) then return 'conflict' end
for i = 4, #ARGV do redis.call('RPUSH', KEYS[2], ARGV[i]) end
redis.call('EXPIRE', KEYS[2], ARGV[3])
return 'ok'
";

fn parse_steps(raw: &[String]) -> Result<Vec<Step>, StoreError> {
    raw.iter()
        .map(|step| serde_json::from_str(step).map_err(StoreError::from))
        .collect()
}

/// Who writes a record, and so which checks the write must pass.
#[derive(Debug, Clone, Copy)]
enum WriteMode<'a> {
    /// A worker holding the job's lease.
    Leased(&'a Lease),
    /// Compare-and-set on the status (the dispatcher, which holds no lease).
    IfStatus(JobStatus),
    /// Delivery bookkeeping on a record that already ended.
    Bookkeeping,
}

impl WriteMode<'_> {
    fn script_name(self) -> &'static str {
        match self {
            Self::Leased(_) => "run",
            Self::IfStatus(_) => "cas",
            Self::Bookkeeping => "bookkeeping",
        }
    }
}

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

impl Written {
    /// The verdict a script answered, by the name the scripts use.
    fn from_answer(answer: &str) -> Result<Self, StoreError> {
        Ok(match answer {
            "ok" => Self::Ok,
            "lease_lost" => Self::LeaseLost,
            "terminal" => Self::Terminal,
            "conflict" => Self::Conflict,
            "missing" => Self::Missing,
            other => return Err(StoreError::UnexpectedAnswer(other.to_owned())),
        })
    }
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
            scripts: Arc::new(Scripts::new()),
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
        self.redis.pipe_acked(&pipe).await
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

    /// What a run needs, in one round trip: the record, the spec, and the run's step log so
    /// far. `None` if the record or the spec is gone (expired or never made).
    pub async fn load_for_run(
        &self,
        id: Uuid,
    ) -> Result<Option<(JobRecord, JobSpec, Vec<Step>)>, StoreError> {
        let mut pipe = redis::pipe();
        pipe.cmd("MGET")
            .arg(self.names.job_key(id))
            .arg(self.names.job_spec_key(id))
            .cmd("LRANGE")
            .arg(self.names.steps_key(id))
            .arg(0)
            .arg(-1);
        let ((record, spec), steps): ((Option<String>, Option<String>), Vec<String>) =
            self.redis.pipe(&pipe).await?;
        let (Some(record), Some(spec)) = (record, spec) else {
            return Ok(None);
        };
        Ok(Some((
            serde_json::from_str(&record)?,
            serde_json::from_str(&spec)?,
            parse_steps(&steps)?,
        )))
    }

    async fn transition(
        &self,
        record: &JobRecord,
        mode: WriteMode<'_>,
    ) -> Result<Written, StoreError> {
        let (lease, expected) = match mode {
            WriteMode::Leased(lease) => (lease.value.as_str(), ""),
            WriteMode::IfStatus(status) => ("", status.as_str()),
            WriteMode::Bookkeeping => ("", ""),
        };
        let mut invocation = self.scripts.transition.prepare_invoke();
        invocation
            .key(self.names.job_key(record.id))
            .key(self.names.lease_key(record.id))
            .key(self.names.job_spec_key(record.id))
            .key(self.names.steps_key(record.id))
            .arg(serde_json::to_string(record)?)
            .arg(self.ttl_secs)
            .arg(lease)
            .arg(mode.script_name())
            .arg(expected);
        let answer: String = self.redis.script_acked(&invocation).await?;
        Written::from_answer(&answer)
    }

    /// Writes a record as the holder of `lease`; refused if the lease is lost or the job ended.
    pub async fn save_leased(
        &self,
        record: &JobRecord,
        lease: &Lease,
    ) -> Result<Written, StoreError> {
        self.transition(record, WriteMode::Leased(lease)).await
    }

    /// Writes a record if its stored status is still `expected` (and not terminal).
    pub async fn save_if_status(
        &self,
        record: &JobRecord,
        expected: JobStatus,
    ) -> Result<Written, StoreError> {
        self.transition(record, WriteMode::IfStatus(expected)).await
    }

    /// Updates delivery bookkeeping on a record that already ended.
    pub async fn save_bookkeeping(&self, record: &JobRecord) -> Result<Written, StoreError> {
        self.transition(record, WriteMode::Bookkeeping).await
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
        let (answer, value): (String, i64) = self.redis.script(&invocation).await?;
        let value = u64::try_from(value).unwrap_or(0);
        Ok(match answer.as_str() {
            "busy" => Begun::Busy(Duration::from_millis(value)),
            verdict => match Written::from_answer(verdict)? {
                Written::Ok => Begun::Held(Lease {
                    token: value,
                    value: format!("{owner}:{value}"),
                }),
                refused => Begun::Refused(refused),
            },
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
            "lease_lost" => Renewed::Lost,
            status => Renewed::Held(JobStatus::parse(status)),
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

    /// Appends `steps` (JSON, in order) to the job's step log as the holder of `lease`, where
    /// the log holds `expected_len` steps so far. `Conflict` means the log is not what the
    /// writer thinks: another run wrote to it.
    pub async fn append_steps(
        &self,
        id: Uuid,
        lease: &Lease,
        expected_len: usize,
        steps: &[Step],
    ) -> Result<Written, StoreError> {
        let mut invocation = self.scripts.append_steps.prepare_invoke();
        invocation
            .key(self.names.lease_key(id))
            .key(self.names.steps_key(id))
            .arg(&lease.value)
            .arg(expected_len)
            .arg(self.ttl_secs);
        for step in steps {
            invocation.arg(serde_json::to_string(step)?);
        }
        let answer: String = self.redis.script_acked(&invocation).await?;
        Written::from_answer(&answer)
    }

    /// The job's step log, oldest first.
    pub async fn load_steps(&self, id: Uuid) -> Result<Vec<Step>, StoreError> {
        let mut cmd = redis::cmd("LRANGE");
        cmd.arg(self.names.steps_key(id)).arg(0).arg(-1);
        let raw: Vec<String> = self.redis.cmd(&cmd).await?;
        parse_steps(&raw)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_prelude_names_exactly_the_terminal_statuses() {
        let prelude = lua_prelude();
        for &status in JobStatus::ALL {
            assert_eq!(
                prelude.contains(&format!("['{}']", status.as_str())),
                status.is_terminal(),
                "{status:?} in {prelude}"
            );
        }
    }

    #[test]
    fn script_answers_are_typed() {
        assert_eq!(Written::from_answer("ok").ok(), Some(Written::Ok));
        assert_eq!(
            Written::from_answer("lease_lost").ok(),
            Some(Written::LeaseLost)
        );
        assert!(matches!(
            Written::from_answer("lost"),
            Err(StoreError::UnexpectedAnswer(_))
        ));
    }
}
