//! Redis access: connections to one server, to the master Sentinel names or to a cluster
//! (`link`, the only code that knows which), every command bounded by a timeout so an outage
//! fails fast instead of hanging, writes that back a promise acknowledged by replicas when
//! asked, and the job store built on it.

mod link;
mod stored_form;

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use redis::{FromRedisValue, Value};
use uuid::Uuid;

use crate::config::{ConfigError, RedisConfig};
use crate::naming::Names;
use chrono::{DateTime, Utc};

use crate::wire::{JobRecord, JobSpec, JobStatus, Step};

use link::{Conn, Link, Master};
use stored_form::StoredForm;

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
    #[error("the job's step log is broken: {0}")]
    BrokenStepLog(String),
    #[error("the job's run mark `{0}` is not `<attempt> <RFC 3339 time>`")]
    BrokenRunMark(String),
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

/// The pauses before sending again a transaction whose slot a cluster moved: a slot with a
/// few keys migrates in about a millisecond (`redis-cli --cluster reshard`); the longer ones
/// are for a busy machine (0.4 s in all).
const SLOT_MOVE_PAUSES: [Duration; 5] = [
    Duration::from_millis(5),
    Duration::from_millis(20),
    Duration::from_millis(50),
    Duration::from_millis(100),
    Duration::from_millis(250),
];

/// A cheap-clone handle to Redis with a per-command timeout.
#[derive(Clone)]
pub struct Redis {
    link: Link,
    timeout: Duration,
    durability: Durability,
    /// Counts every round trip, when the process exports it.
    round_trips: Option<prometheus::IntCounter>,
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
            round_trips: None,
        })
    }

    /// Counts this handle's (and its clones') round trips in `counter`.
    pub fn counting_round_trips(mut self, counter: prometheus::IntCounter) -> Self {
        self.round_trips = Some(counter);
        self
    }

    /// Runs `op` on a connection to the master (the shared one, or one for acknowledged
    /// writes), bounded by the timeout; a failure that says the master changed is reported to
    /// the link.
    async fn on_master<T, F, Fut>(&self, acked: bool, op: F) -> Result<T, StoreError>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: Future<Output = Result<T, StoreError>>,
    {
        let master: Arc<Master> = self.link.master().await?;
        if let Some(round_trips) = &self.round_trips {
            round_trips.inc();
        }
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

    /// Runs a pipeline; one that is not a transaction may span hash slots (`Conn::query_pipe`).
    pub async fn pipe<T: FromRedisValue>(&self, pipe: &redis::Pipeline) -> Result<T, StoreError> {
        self.following_slots(pipe, || {
            self.on_master(
                false,
                |mut conn| async move { Ok(conn.query_pipe(pipe).await?) },
            )
        })
        .await
    }

    /// Runs `attempt`, and again where a cluster aborted the transaction `pipe` because its
    /// slot moved to another master (see [`link::slot_moved_under`]): after a pause that lets a
    /// migrating slot finish moving, and a read of the transaction's key that follows the
    /// redirection, so the client learns the slot's new owner. Without it, a reshard answered
    /// a few submissions 503 (their `MULTI` sent to the slot's old owner).
    async fn following_slots<T, F, Fut>(
        &self,
        pipe: &redis::Pipeline,
        attempt: F,
    ) -> Result<T, StoreError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, StoreError>>,
    {
        let mut result = attempt().await;
        for pause in SLOT_MOVE_PAUSES {
            match &result {
                Err(err) if pipe.is_transaction() && link::slot_moved_under(err) => {}
                _ => return result,
            }
            tokio::time::sleep(pause).await;
            if let Some(key) = link::first_key(pipe) {
                // Its answer does not matter: following it is the point.
                let _: Result<i64, _> = self.cmd(redis::cmd("EXISTS").arg(key)).await;
            }
            result = attempt().await;
        }
        result
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
    /// not block), all in one round trip. On a cluster its keys must share a slot: the
    /// pipeline goes whole to their master, `WAIT` with it.
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
        self.following_slots(pipe, || {
            let with_wait = &with_wait;
            self.on_master(true, move |mut conn| async move {
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

/// The fields of a job's hash (`Names::job_key`). The scripts get the same names from
/// [`lua_prelude`], so neither side spells them twice.
mod field {
    pub const RECORD: &str = "record";
    pub const SPEC: &str = "spec";
    /// The counter that issues the job's fencing tokens; dropped once the job is terminal
    /// (nothing begins a terminal job, so no token is issued again).
    pub const FENCE: &str = "fence";
    /// Set once the job's terminal event is on the webhook queue.
    pub const HANDOFF: &str = "handoff";
    /// How many steps the log holds; step `i` is the field `STEP` + `i`.
    pub const STEPS: &str = "steps";
    pub const STEP: &str = "step:";
    /// A begun run's mark ([`super::RunMark`]): while it is there, the job is running,
    /// whatever the record says. Removed by every write of the record.
    pub const RUN: &str = "run";

    pub fn step(index: usize) -> String {
        format!("{STEP}{index}")
    }

    /// Not a field: what [`super::JobStore`]'s reads answer for a sealed job, whose key holds
    /// one string instead of a hash (the `seal` of [`Afterwards`]).
    pub const SEALED: &str = "sealed";

    /// What a write of `record` leaves of the job (`webhook`: its end goes to a webhook). A
    /// terminal job is never begun again, so its fence counter goes. Once its event's delivery
    /// has concluded (delivered, gone, blocked or given up), or at once for a job without a
    /// webhook, only readers of the record and the steps remain: the job is
    /// sealed into one string, the record and then each step on a line of its own (compact
    /// JSON has no raw newline). A string of ~750 B costs Redis a third less than the hash
    /// holding the same: a hash with a value over `hash-max-listpack-value` (64 B by default)
    /// is a table, with a header, buckets and an entry per field.
    pub fn afterwards(record: &crate::wire::JobRecord, webhook: bool) -> &'static str {
        let concluded = !webhook || record.webhook.as_ref().is_some_and(|w| w.outcome.is_some());
        match (record.status.is_terminal(), concluded) {
            (false, _) => "",
            (true, false) => FENCE,
            (true, true) => SEAL,
        }
    }

    /// [`afterwards`]' word for sealing the job.
    pub const SEAL: &str = "seal";
}

struct Scripts {
    transition: redis::Script,
    begin: redis::Script,
    renew: redis::Script,
    close: redis::Script,
    append_steps: redis::Script,
    mark_handed_off: redis::Script,
    read: redis::Script,
    take_over_key: redis::Script,
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
            mark_handed_off: script(MARK_HANDED_OFF),
            read: script(READ),
            take_over_key: redis::Script::new(TAKE_OVER_KEY),
        }
    }
}

/// Every job script starts with this, generated at startup: the terminal statuses of
/// [`JobStatus`] as a Lua set (`TERMINAL[status]` is `true` or `nil`), the names of the job
/// hash's fields from [`field`], so no script spells either; `kind_of`, whether the job's key
/// holds a live job's hash, a sealed job's string or nothing; `record_of`, the record's JSON
/// in either form; `status_in`, a stored record's status (see [`STATUS_KEY`]); and
/// `status_of`, a live job's status with a begun run's mark ([`RunMark`]) taken into account.
fn lua_prelude() -> String {
    let terminal: Vec<String> = JobStatus::ALL
        .iter()
        .filter(|s| s.is_terminal())
        .map(|s| format!("['{}'] = true", s.as_str()))
        .collect();
    format!(
        "local TERMINAL = {{{}}}\n\
         local RECORD, SPEC, FENCE, HANDOFF, STEPS, STEP, RUN = '{}', '{}', '{}', '{}', '{}', '{}', '{}'\n\
         local SEALED, SEAL = '{}', '{}'\n\
         local function kind_of(key) return redis.call('TYPE', key)['ok'] end\n\
         local function record_of(key, kind)\n\
           if kind == 'string' then\n\
             local sealed = redis.call('GET', key)\n\
             local stop = string.find(sealed, '\\n', 1, true)\n\
             return stop and string.sub(sealed, 1, stop - 1) or sealed\n\
           end\n\
           return redis.call('HGET', key, RECORD)\n\
         end\n\
         local function status_in(record)\n\
           return string.match(record, '{}([^\"]*)\"') or cjson.decode(record)['status']\n\
         end\n\
         local function status_of(key, record)\n\
           if redis.call('HEXISTS', key, RUN) == 1 then return '{}' end\n\
           return status_in(record)\n\
         end\n",
        terminal.join(", "),
        field::RECORD,
        field::SPEC,
        field::FENCE,
        field::HANDOFF,
        field::STEPS,
        field::STEP,
        field::RUN,
        field::SEALED,
        field::SEAL,
        STATUS_KEY,
        JobStatus::Running.as_str(),
    )
}

/// How a stored record's status starts, for the scripts to read it by `string.match` instead
/// of decoding the whole record with `cjson` (6.6 µs for a 550-byte record on Redis 7, 0.9 µs
/// for the match; every begin, end and webhook note of a job reads it). The first occurrence
/// is the record's own status: the stored form writes the record's fields in their declared
/// order, `status` after `tenant` and `agent` and before any field that can hold an object,
/// and a JSON string never holds an unescaped quote. A record where the match fails is
/// decoded instead.
const STATUS_KEY: &str = "\"status\":\"";

/// Every write of a job record goes through this script (or `BEGIN`, which makes the same
/// checks), so the checks and the write are one atomic step: the writer's lease (fencing
/// token, `KEYS[2]`) must still be the current one, and a terminal record is final (only
/// bookkeeping — webhook delivery state — may touch it, until the job is sealed). `ARGV[4]`
/// is a [`WriteMode`]; it answers a [`Written`] by name. `ARGV[6]` is what the job keeps
/// after this write ([`field::afterwards`]): everything (''), all but a field, or only the
/// record and the steps, sealed into one string. A run's write may carry the steps it has
/// not stored yet (`ARGV[9..]`, where the log holds `ARGV[8]` steps: `conflict` otherwise)
/// and let its lease go (`ARGV[7]`), so a one-call run ends in one round trip. The record
/// replaces a begun run's mark. Everything of the job (`KEYS[1]`) expires together.
const TRANSITION: &str = r"
if ARGV[3] ~= '' and redis.call('GET', KEYS[2]) ~= ARGV[3] then return 'lease_lost' end
local kind = kind_of(KEYS[1])
if kind == 'string' then return 'terminal' end
local current = record_of(KEYS[1], kind)
if not current then return 'missing' end
local status = status_of(KEYS[1], current)
if ARGV[4] == 'bookkeeping' then
  if not TERMINAL[status] then return 'conflict' end
elseif TERMINAL[status] then
  return 'terminal'
elseif ARGV[4] == 'cas' and status ~= ARGV[5] then
  return 'conflict'
end
if ARGV[8] ~= '' then
  local len = tonumber(redis.call('HGET', KEYS[1], STEPS) or '0')
  if len ~= tonumber(ARGV[8]) then return 'conflict' end
  for i = 9, #ARGV do redis.call('HSET', KEYS[1], STEP .. (len + i - 9), ARGV[i]) end
  redis.call('HSET', KEYS[1], STEPS, len + #ARGV - 8)
end
if ARGV[6] == SEAL then
  local lines = {ARGV[1]}
  local len = tonumber(redis.call('HGET', KEYS[1], STEPS) or '0')
  for i = 0, len - 1 do lines[i + 2] = redis.call('HGET', KEYS[1], STEP .. i) end
  redis.call('SET', KEYS[1], table.concat(lines, '\n'), 'EX', ARGV[2])
else
  redis.call('HSET', KEYS[1], RECORD, ARGV[1])
  redis.call('HDEL', KEYS[1], RUN)
  if ARGV[6] ~= '' then redis.call('HDEL', KEYS[1], ARGV[6]) end
  redis.call('EXPIRE', KEYS[1], ARGV[2])
end
if ARGV[7] == '1' and ARGV[3] ~= '' then redis.call('DEL', KEYS[2]) end
return 'ok'
";

/// Starts a run in one round trip: reads the job's hash (`KEYS[2]`) and, unless the job
/// ended, takes its lease (`KEYS[1]`) if nobody holds it, with a fresh fencing token from the
/// hash, and marks it running (`ARGV[3]`, a [`RunMark`]; empty keeps the status). The mark
/// stands for the record the run would write: rewriting the record's JSON here is not safe
/// (cjson turns an empty list inside the caller's metadata into an object). Answers
/// `{verdict, n, fields}`: `{'ok', token, the hash as it was}`, `{'busy', ms left on someone
/// else's lease, {}}`, `{'terminal', 0, the hash (or SEALED and the sealed string)}` or
/// `{'missing', 0, {}}`.
const BEGIN: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then return {'busy', redis.call('PTTL', KEYS[1]), {}} end
local kind = kind_of(KEYS[2])
if kind == 'string' then return {'terminal', 0, {SEALED, redis.call('GET', KEYS[2])}} end
local current = record_of(KEYS[2], kind)
if not current then return {'missing', 0, {}} end
local fields = redis.call('HGETALL', KEYS[2])
if TERMINAL[status_of(KEYS[2], current)] then return {'terminal', 0, fields} end
local token = redis.call('HINCRBY', KEYS[2], FENCE, 1)
redis.call('SET', KEYS[1], ARGV[1] .. ':' .. token, 'PX', ARGV[2])
if ARGV[3] ~= '' then redis.call('HSET', KEYS[2], RUN, ARGV[3]) end
redis.call('EXPIRE', KEYS[2], ARGV[4])
return {'ok', token, fields}
";

/// Extends a lease still held by its owner; answers the job's status (so a run learns of a
/// cancellation even if it missed the broadcast), or 'lease_lost'.
const RENEW: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 'lease_lost' end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
local kind = kind_of(KEYS[2])
local current = record_of(KEYS[2], kind)
if not current then return 'missing' end
if kind == 'string' then return status_in(current) end
return status_of(KEYS[2], current)
";

/// Ends a run: notes the webhook hand-off on the job when there was one (`ARGV[2]` = '1'),
/// then releases the lease if it is still ours. A job that expired meanwhile is not made
/// again by the note, nor is a sealed one touched.
const CLOSE: &str = r"
if ARGV[2] == '1' and kind_of(KEYS[2]) == 'hash' then redis.call('HSET', KEYS[2], HANDOFF, 1) end
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 0
";

/// Notes a hand-off made outside a run (a cancellation, a redelivery's re-hand-off).
const MARK_HANDED_OFF: &str = r"
if kind_of(KEYS[1]) == 'hash' then redis.call('HSET', KEYS[1], HANDOFF, 1) end
return 0
";

/// Appends steps to a run's log in the job's hash (`KEYS[2]`) as the holder of the lease
/// (`KEYS[1]`), if the log is as long as the writer believes (`ARGV[2]`): a step is never
/// appended twice, nor after someone else's. Answers a [`Written`] by name.
const APPEND_STEPS: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 'lease_lost' end
local kind = kind_of(KEYS[2])
if kind == 'string' then return 'terminal' end
if kind ~= 'hash' then return 'missing' end
local len = tonumber(redis.call('HGET', KEYS[2], STEPS) or '0')
if len ~= tonumber(ARGV[2]) then return 'conflict' end
for i = 4, #ARGV do redis.call('HSET', KEYS[2], STEP .. (len + i - 4), ARGV[i]) end
redis.call('HSET', KEYS[2], STEPS, len + #ARGV - 3)
redis.call('EXPIRE', KEYS[2], ARGV[3])
return 'ok'
";

/// Reads a job (`KEYS[1]`) in either form: the fields named in `ARGV` (all of them when none
/// is) of a live job's hash, as a flat name/value list without the missing ones, or
/// `{SEALED, the string}` for a sealed job ([`unseal`] makes it the same list).
const READ: &str = r"
local kind = kind_of(KEYS[1])
if kind == 'string' then return {SEALED, redis.call('GET', KEYS[1])} end
if #ARGV == 0 then return redis.call('HGETALL', KEYS[1]) end
local values, fields = redis.call('HMGET', KEYS[1], unpack(ARGV)), {}
for i, name in ipairs(ARGV) do
  if values[i] then
    fields[#fields + 1] = name
    fields[#fields + 1] = values[i]
  end
end
return fields
";

/// Gives an Idempotency-Key (`KEYS[1]`) a new claim (`ARGV[2]`, for `ARGV[3]` seconds) if it
/// still holds the abandoned one (`ARGV[1]`); answers 1 if it did.
const TAKE_OVER_KEY: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
return 1
";

const RECORD_FORM: StoredForm = StoredForm {
    derived: &["id"],
    unless_true: &[],
};
const SPEC_FORM: StoredForm = StoredForm {
    derived: &[],
    unless_true: &[],
};
const STEP_FORM: StoredForm = StoredForm {
    derived: &["seq"],
    unless_true: &["cached"],
};

/// A job's hash, as `HGETALL` answers it.
type JobFields = HashMap<String, String>;

/// A sealed job's fields as its hash held them: the record, and the steps with their count.
fn unseal(mut fields: JobFields) -> JobFields {
    let Some(sealed) = fields.remove(field::SEALED) else {
        return fields;
    };
    let mut lines = sealed.split('\n');
    let record = lines.next().unwrap_or_default().to_owned();
    let mut len = 0;
    for (index, step) in lines.enumerate() {
        fields.insert(field::step(index), step.to_owned());
        len = index + 1;
    }
    fields.insert(field::STEPS.to_owned(), len.to_string());
    fields.insert(field::RECORD.to_owned(), record);
    fields
}

/// The step log held in a job's hash, oldest first.
fn steps_of(fields: &JobFields) -> Result<Vec<Step>, StoreError> {
    let len = match fields.get(field::STEPS) {
        None => 0,
        Some(len) => len
            .parse::<usize>()
            .map_err(|_| StoreError::BrokenStepLog(format!("a length of `{len}`")))?,
    };
    (0..len)
        .map(|index| {
            let raw = fields
                .get(&field::step(index))
                .ok_or_else(|| StoreError::BrokenStepLog(format!("step {index} is missing")))?;
            let mut step: Step = serde_json::from_str(raw)?;
            step.seq = u32::try_from(index).unwrap_or(u32::MAX);
            Ok(step)
        })
        .collect()
}

/// A job as a run or a webhook delivery needs it: the record, what it asked for, and the
/// run's step log so far.
#[derive(Debug)]
pub struct StoredJob {
    pub record: JobRecord,
    pub spec: JobSpec,
    pub steps: Vec<Step>,
}

/// What job `id`'s fields say, with a begun run's mark applied to the record.
fn loaded_from(id: Uuid, fields: &JobFields) -> Result<Loaded, StoreError> {
    let Some(raw) = fields.get(field::RECORD) else {
        return Ok(Loaded::Gone);
    };
    let record = record_view(id, raw, fields.get(field::RUN).map(String::as_str))?;
    let Some(spec) = fields.get(field::SPEC) else {
        return Ok(Loaded::Concluded(record));
    };
    Ok(Loaded::Ready(StoredJob {
        record,
        spec: serde_json::from_str(spec)?,
        steps: steps_of(fields)?,
    }))
}

/// Job `id`'s record as readers must see it: the stored JSON, and over it the mark of a run
/// that began since the record was last written.
fn record_view(id: Uuid, raw: &str, mark: Option<&str>) -> Result<JobRecord, StoreError> {
    let mut record: JobRecord = serde_json::from_str(raw)?;
    record.id = id;
    if let Some(mark) = mark {
        RunMark::parse(mark)?.apply(&mut record);
    }
    Ok(record)
}

/// What beginning a run changes on a job, stored beside the record (field `run`) instead of
/// rewriting it, so that loading a job, taking its lease and marking it running are one
/// script: the job is `running`, as attempt `attempt` (or the one it had, if higher), since
/// its first start or else `started_at`, and no longer waiting. The run's next write of the
/// record (a step's end, a retry, the job's end) carries the same and removes the mark.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunMark {
    pub attempt: u32,
    pub started_at: DateTime<Utc>,
}

impl RunMark {
    fn encode(self) -> String {
        format!(
            "{} {}",
            self.attempt,
            self.started_at
                .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
        )
    }

    fn parse(raw: &str) -> Result<Self, StoreError> {
        let broken = || StoreError::BrokenRunMark(raw.to_owned());
        let (attempt, started_at) = raw.split_once(' ').ok_or_else(broken)?;
        Ok(Self {
            attempt: attempt.parse().map_err(|_| broken())?,
            started_at: DateTime::parse_from_rfc3339(started_at)
                .map_err(|_| broken())?
                .with_timezone(&Utc),
        })
    }

    /// The record as the run that made this mark sees it.
    pub fn apply(self, record: &mut JobRecord) {
        record.status = JobStatus::Running;
        // Attempts count messages, not deliveries: a redelivery after a crash is the same
        // attempt.
        record.attempts = record.attempts.max(self.attempt);
        record.started_at.get_or_insert(self.started_at);
        record.waiting = None;
    }
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
#[derive(Debug)]
pub enum Begun {
    /// The lease is ours, and the job is as it was just before (the run's own changes are
    /// the [`RunMark`] it asked for).
    Held(Lease, StoredJob),
    /// Someone else holds the lease for about this long; nothing was written.
    Busy(Duration),
    /// The job ended (`Ready` with a terminal record, or `Concluded`) or is `Gone`; nothing
    /// was written.
    NotRunnable(Loaded),
}

/// How to start a run: who asks, for how long, and what it marks.
#[derive(Debug, Clone, Copy)]
pub struct BeginRun<'a> {
    pub id: Uuid,
    pub owner: &'a str,
    pub ttl: Duration,
    /// `None` takes the lease and leaves the status as it is (a message that keeps coming
    /// back: it is about to be failed, not run).
    pub mark: Option<RunMark>,
}

/// A run's write of its record under its lease.
#[derive(Debug, Clone, Copy)]
pub struct RunWrite<'a> {
    pub record: &'a JobRecord,
    pub lease: &'a Lease,
    /// Steps the log does not hold yet, appended in the same step, where it holds `base`.
    pub steps: &'a [Step],
    pub base: usize,
    /// Lets the lease go in the same step: the run writes nothing after this.
    pub release: bool,
    /// The job's end goes to a webhook (its spec has a URL). Without one, a terminal write
    /// seals the job at once ([`field::afterwards`]).
    pub webhook: bool,
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

/// What [`JobStore::load_for_run`] found.
#[derive(Debug)]
pub enum Loaded {
    /// The job, what it asked for, and its step log so far.
    Ready(StoredJob),
    /// A job whose event's delivery concluded: it keeps its record and step log for readers,
    /// and no longer what it asked for. Nothing is left to do for it.
    Concluded(JobRecord),
    /// Expired, or never stored.
    Gone,
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
        let key = self.names.job_key(record.id);
        let mut pipe = redis::pipe();
        pipe.atomic()
            .hset_multiple(
                &key,
                &[
                    (field::RECORD, RECORD_FORM.json(record)?),
                    (field::SPEC, SPEC_FORM.json(spec)?),
                ],
            )
            .ignore()
            .expire(&key, self.ttl_secs as i64)
            .ignore();
        self.redis.pipe_acked(&pipe).await
    }

    /// Removes a job (undoing a `create` whose publish failed).
    pub async fn delete(&self, id: Uuid) -> Result<(), StoreError> {
        let mut cmd = redis::cmd("DEL");
        cmd.arg(self.names.job_key(id));
        self.redis.cmd::<()>(&cmd).await
    }

    pub async fn load(&self, id: Uuid) -> Result<Option<JobRecord>, StoreError> {
        let fields = self.read(id, &[field::RECORD, field::RUN]).await?;
        fields
            .get(field::RECORD)
            .map(|raw| record_view(id, raw, fields.get(field::RUN).map(String::as_str)))
            .transpose()
    }

    /// The record and the spec together; `None` if the job is gone (expired or never made).
    pub async fn load_with_spec(
        &self,
        id: Uuid,
    ) -> Result<Option<(JobRecord, JobSpec)>, StoreError> {
        let fields = self
            .read(id, &[field::RECORD, field::SPEC, field::RUN])
            .await?;
        match (fields.get(field::RECORD), fields.get(field::SPEC)) {
            (Some(record), Some(spec)) => Ok(Some((
                record_view(id, record, fields.get(field::RUN).map(String::as_str))?,
                serde_json::from_str(spec)?,
            ))),
            _ => Ok(None),
        }
    }

    /// What a webhook delivery needs, in one round trip: the record, the spec, and the run's
    /// step log.
    pub async fn load_for_run(&self, id: Uuid) -> Result<Loaded, StoreError> {
        loaded_from(id, &self.read(id, &[]).await?)
    }

    /// The fields `names` (all, when empty) of a job in either form ([`field::afterwards`]),
    /// a sealed one unsealed.
    async fn read(&self, id: Uuid, names: &[&str]) -> Result<JobFields, StoreError> {
        Ok(unseal(self.read_as_stored(id, names).await?))
    }

    async fn read_as_stored(&self, id: Uuid, names: &[&str]) -> Result<JobFields, StoreError> {
        let mut invocation = self.scripts.read.prepare_invoke();
        invocation.key(self.names.job_key(id));
        for name in names {
            invocation.arg(*name);
        }
        self.redis.script(&invocation).await
    }

    async fn transition(
        &self,
        record: &JobRecord,
        mode: WriteMode<'_>,
        steps: Option<(usize, &[Step])>,
        (release, webhook): (bool, bool),
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
            .arg(RECORD_FORM.json(record)?)
            .arg(self.ttl_secs)
            .arg(lease)
            .arg(mode.script_name())
            .arg(expected)
            .arg(field::afterwards(record, webhook))
            .arg(if release { "1" } else { "" });
        match steps {
            Some((base, steps)) => {
                invocation.arg(base);
                for step in steps {
                    invocation.arg(STEP_FORM.json(step)?);
                }
            }
            None => {
                invocation.arg("");
            }
        }
        let answer: String = self.redis.script_acked(&invocation).await?;
        Written::from_answer(&answer)
    }

    /// Writes a record as the holder of `lease`; refused if the lease is lost or the job ended.
    pub async fn save_leased(
        &self,
        record: &JobRecord,
        lease: &Lease,
    ) -> Result<Written, StoreError> {
        self.transition(record, WriteMode::Leased(lease), None, (false, true))
            .await
    }

    /// A run's write: its record, the steps it has not stored yet, and (at its end) the
    /// release of its lease, in one round trip. Refused if the lease is lost, the job ended,
    /// or the log is not `base` steps long (`Conflict`); a refusal writes nothing.
    pub async fn save_run(&self, write: RunWrite<'_>) -> Result<Written, StoreError> {
        let steps = (!write.steps.is_empty()).then_some((write.base, write.steps));
        self.transition(
            write.record,
            WriteMode::Leased(write.lease),
            steps,
            (write.release, write.webhook),
        )
        .await
    }

    /// Writes a record if its stored status is still `expected` (and not terminal).
    pub async fn save_if_status(
        &self,
        record: &JobRecord,
        expected: JobStatus,
    ) -> Result<Written, StoreError> {
        self.transition(record, WriteMode::IfStatus(expected), None, (false, true))
            .await
    }

    /// Writes a job's end (a cancellation) if its stored status is still `expected`; `webhook`
    /// says whether the end goes to a webhook: without one the job is sealed at once.
    pub async fn save_end_if_status(
        &self,
        record: &JobRecord,
        expected: JobStatus,
        webhook: bool,
    ) -> Result<Written, StoreError> {
        self.transition(
            record,
            WriteMode::IfStatus(expected),
            None,
            (false, webhook),
        )
        .await
    }

    /// Updates delivery bookkeeping on a record that already ended.
    pub async fn save_bookkeeping(&self, record: &JobRecord) -> Result<Written, StoreError> {
        self.transition(record, WriteMode::Bookkeeping, None, (false, true))
            .await
    }

    /// Starts a run, in one round trip: loads the job and, unless it ended or someone holds
    /// its lease, takes the lease for `ttl` with a fresh fencing token and marks the job
    /// running ([`RunMark`]).
    pub async fn begin_run(&self, begin: BeginRun<'_>) -> Result<Begun, StoreError> {
        let mut invocation = self.scripts.begin.prepare_invoke();
        invocation
            .key(self.names.lease_key(begin.id))
            .key(self.names.job_key(begin.id))
            .arg(begin.owner)
            .arg(begin.ttl.as_millis() as u64)
            .arg(begin.mark.map(RunMark::encode).unwrap_or_default())
            .arg(self.ttl_secs);
        let (verdict, value, fields): (String, i64, JobFields) =
            self.redis.script(&invocation).await?;
        let value = u64::try_from(value).unwrap_or(0);
        Ok(match verdict.as_str() {
            "busy" => Begun::Busy(Duration::from_millis(value)),
            "ok" => match loaded_from(begin.id, &fields)? {
                Loaded::Ready(job) => Begun::Held(
                    Lease {
                        token: value,
                        value: format!("{}:{value}", begin.owner),
                    },
                    job,
                ),
                // A job without a spec has ended, so the script could not have begun it.
                _ => return Err(StoreError::UnexpectedAnswer("ok without a spec".into())),
            },
            "terminal" | "missing" => Begun::NotRunnable(loaded_from(begin.id, &unseal(fields))?),
            other => return Err(StoreError::UnexpectedAnswer(other.to_owned())),
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
            .key(self.names.job_key(id))
            .arg(&lease.value)
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
            .key(self.names.job_key(id))
            .arg(&lease.value)
            .arg(expected_len)
            .arg(self.ttl_secs);
        for step in steps {
            invocation.arg(STEP_FORM.json(step)?);
        }
        let answer: String = self.redis.script_acked(&invocation).await?;
        Written::from_answer(&answer)
    }

    /// The job's step log, oldest first (empty for a job that is gone).
    pub async fn load_steps(&self, id: Uuid) -> Result<Vec<Step>, StoreError> {
        steps_of(&self.read(id, &[]).await?)
    }

    /// Notes that the job's terminal event is on the webhook queue.
    pub async fn mark_handed_off(&self, id: Uuid) -> Result<(), StoreError> {
        let mut invocation = self.scripts.mark_handed_off.prepare_invoke();
        invocation.key(self.names.job_key(id));
        let _: i64 = self.redis.script(&invocation).await?;
        Ok(())
    }

    /// Whether the job's terminal event was handed off: noted so, or the job is sealed (its
    /// delivery concluded).
    pub async fn handed_off(&self, id: Uuid) -> Result<bool, StoreError> {
        let fields = self.read_as_stored(id, &[field::HANDOFF]).await?;
        Ok(fields.contains_key(field::HANDOFF) || fields.contains_key(field::SEALED))
    }

    /// What a job takes in Redis, by `MEMORY USAGE` (bytes, with Redis' own overhead), for
    /// the benchmark's storage figures; 0 for a job that is gone.
    pub async fn memory_usage(&self, id: Uuid) -> Result<u64, StoreError> {
        let mut cmd = redis::cmd("MEMORY");
        cmd.arg("USAGE")
            .arg(self.names.job_key(id))
            .arg("SAMPLES")
            .arg(0);
        let bytes: Option<u64> = self.redis.cmd(&cmd).await?;
        Ok(bytes.unwrap_or(0))
    }

    /// The length of a sealed job's string ([`field::afterwards`]), for the benchmark's
    /// storage figures; `None` for a job that is not sealed (or gone).
    pub async fn sealed_len(&self, id: Uuid) -> Result<Option<u64>, StoreError> {
        let fields = self.read_as_stored(id, &[field::RECORD]).await?;
        Ok(fields.get(field::SEALED).map(|sealed| sealed.len() as u64))
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

    /// Claims a tenant's Idempotency-Key for `job_id` in place of `abandoned`, the job an
    /// earlier claim named that was never stored (its accept died, or a failover forgot the
    /// record and kept the claim); false if the key no longer names `abandoned` (someone
    /// else took it over, or it expired).
    pub async fn take_over_idempotency_key(
        &self,
        tenant: &str,
        key: &str,
        (abandoned, job_id): (Uuid, Uuid),
        fingerprint: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let mut invocation = self.scripts.take_over_key.prepare_invoke();
        invocation
            .key(self.names.idempotency_key(tenant, key))
            .arg(format!("{abandoned} {fingerprint}"))
            .arg(format!("{job_id} {fingerprint}"))
            .arg(ttl.as_secs());
        let taken: i64 = self.redis.script(&invocation).await?;
        Ok(taken == 1)
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

    /// What the scripts' `status_in` reads: the text between the first [`STATUS_KEY`] and the
    /// next quote.
    fn status_as_the_scripts_read_it(stored: &str) -> Option<&str> {
        let (_, rest) = stored.split_once(STATUS_KEY)?;
        rest.split_once('"').map(|(status, _)| status)
    }

    #[test]
    fn the_first_status_key_of_a_stored_record_is_its_own_status() {
        let now = chrono::Utc::now();
        let lure = serde_json::json!({"status": "queued", "\"status\":\"queued\"": "x"});
        for &status in JobStatus::ALL {
            let mut record = JobRecord::new_queued(
                Uuid::now_v7(),
                r#"acme","status":"queued"#,
                r#"{"status":"queued"}"#,
                Some(lure.clone()),
                now,
            );
            record.status = status;
            record.output = Some(lure.clone());
            record.error = Some(crate::wire::JobError {
                category: crate::wire::ErrorCategory::ProviderError,
                message: r#""status":"queued""#.into(),
            });
            let stored = RECORD_FORM.json(&record).unwrap();
            assert_eq!(
                status_as_the_scripts_read_it(&stored),
                Some(status.as_str()),
                "{stored}"
            );
        }
    }

    #[test]
    fn the_stored_forms_read_back_as_the_same_record_spec_and_steps() {
        let id = Uuid::now_v7();
        let mut record = JobRecord::new_queued(id, "acme", "summarize", None, chrono::Utc::now());
        let stored = RECORD_FORM.json(&record).unwrap();
        assert!(
            !stored.contains("null") && !stored.contains("[]") && !stored.contains(&id.to_string()),
            "{stored}"
        );
        assert_eq!(record_view(id, &stored, None).unwrap(), record);
        record.metadata = Some(serde_json::json!({"kept": null, "list": [], "flag": false}));
        record.output = Some(serde_json::json!("done"));
        let stored = RECORD_FORM.json(&record).unwrap();
        assert_eq!(record_view(id, &stored, None).unwrap(), record);

        let spec = JobSpec {
            input: crate::wire::JobInput::Text("hi".into()),
            webhook_url: None,
            timeout_secs: None,
            limits: None,
        };
        let stored = SPEC_FORM.json(&spec).unwrap();
        assert_eq!(stored, r#"{"input":"hi"}"#);
        assert_eq!(serde_json::from_str::<JobSpec>(&stored).unwrap(), spec);

        let steps: Vec<Step> = (0..2)
            .map(|seq| Step {
                seq,
                attempt: 1,
                started_at: chrono::Utc::now(),
                finished_at: chrono::Utc::now(),
                duration_ms: 3,
                kind: agentfleet_agent::StepKind::Model {
                    turn: seq,
                    feedback: None,
                    message: Default::default(),
                    usage: Default::default(),
                    cost_usd: 0.5,
                    cached: seq == 1,
                },
            })
            .collect();
        let stored: Vec<String> = steps.iter().map(|s| STEP_FORM.json(s).unwrap()).collect();
        assert!(
            !stored[0].contains("seq") && !stored[0].contains("cached"),
            "{}",
            stored[0]
        );
        assert!(stored[1].contains(r#""cached":true"#), "{}", stored[1]);
        let fields: JobFields = [
            (field::STEPS.to_owned(), "2".to_owned()),
            (field::step(0), stored[0].clone()),
            (field::step(1), stored[1].clone()),
        ]
        .into();
        assert_eq!(steps_of(&fields).unwrap(), steps);
    }

    #[test]
    fn a_sealed_job_reads_as_the_fields_it_was_sealed_from() {
        let sealed = |value: &str| -> JobFields {
            unseal([(field::SEALED.to_owned(), value.to_owned())].into())
        };
        let fields = sealed("{\"status\":\"succeeded\"}\n{\"a\":1}\n{\"b\":2}");
        let expected: JobFields = [
            (
                field::RECORD.to_owned(),
                r#"{"status":"succeeded"}"#.to_owned(),
            ),
            (field::STEPS.to_owned(), "2".to_owned()),
            (field::step(0), r#"{"a":1}"#.to_owned()),
            (field::step(1), r#"{"b":2}"#.to_owned()),
        ]
        .into();
        assert_eq!(fields, expected);
        let fields = sealed("{}");
        assert_eq!(fields.get(field::STEPS).map(String::as_str), Some("0"));
        assert_eq!(fields.get(field::RECORD).map(String::as_str), Some("{}"));
        let live: JobFields = [(field::RECORD.to_owned(), "{}".to_owned())].into();
        assert_eq!(
            unseal(live.clone()),
            live,
            "a live job's fields stay as they are"
        );
    }

    #[test]
    fn a_run_mark_reads_back_and_makes_the_record_running() {
        let started_at = chrono::Utc::now();
        let mark = RunMark {
            attempt: 2,
            started_at,
        };
        assert_eq!(RunMark::parse(&mark.encode()).unwrap(), mark);
        let mut record =
            JobRecord::new_queued(Uuid::now_v7(), "acme", "summarize", None, started_at);
        record.attempts = 3;
        record.waiting = Some(crate::wire::Waiting {
            reason: crate::wire::WaitReason::RateLimited,
            until: started_at,
            reserved: true,
        });
        let raw = RECORD_FORM.json(&record).unwrap();
        let seen = record_view(record.id, &raw, Some(&mark.encode())).unwrap();
        assert_eq!(seen.status, JobStatus::Running);
        assert_eq!(seen.attempts, 3, "never lowered");
        assert_eq!(seen.started_at, Some(started_at));
        assert_eq!(seen.waiting, None);
        assert_eq!(record_view(record.id, &raw, None).unwrap(), record);
        for broken in ["", "2", "x 2026-11-23T00:00:00Z", "2 yesterday"] {
            assert!(
                matches!(
                    record_view(record.id, &raw, Some(broken)),
                    Err(StoreError::BrokenRunMark(_))
                ),
                "{broken:?}"
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
