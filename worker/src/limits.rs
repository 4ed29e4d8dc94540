//! The one admission decision before a provider call: the agent's concurrency on this replica
//! (a semaphore of call slots, held from the start of a run to the end of its provider call;
//! the queue prefetch is a little larger, `AgentConfig::delivery_window`) and its fleet-wide rate limits
//! (requests/min and tokens/min), kept as GCRA state in Redis so that every replica draws on
//! the same budget. Nothing else in the worker sleeps on limits.
//!
//! An agent may name a provider pool (`pools:`): the pool's limits are shared by every agent
//! in it (one API key's limits), and the agent's own limits apply beneath them. A 429 with
//! `Retry-After` pauses the pool (or the agent) for the whole fleet, through a key with that
//! expiry that every admission checks: one replica's 429 stops every replica's calls.
//!
//! The buckets are GCRA state in Redis (`agentfleet_common::rate`), shared by every replica.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use agentfleet_common::config::{AgentConfig, RateLimitConfig};
use agentfleet_common::live::Live;
use agentfleet_common::naming::{LimitScope, Names, RateKind};
use agentfleet_common::rate::{Answer, Gcra, Mode, RateLimiter};
use agentfleet_common::store::{Redis, StoreError};
use agentfleet_common::wire::WaitReason;

use crate::provider_limits::ProviderLimits;

/// Pauses the fleet's calls until `ARGV[1]` ms from now, unless a pause already runs longer.
const PAUSE: &str = r"
local left = redis.call('PTTL', KEYS[1])
if left < tonumber(ARGV[1]) then redis.call('SET', KEYS[1], 1, 'PX', ARGV[1]) end
return 0
";

/// The limits of one agent.
pub struct AgentLimits {
    /// Provider calls in flight on this replica (the agent's `concurrency`).
    calls: Arc<Semaphore>,
    /// Rebuilt when the configuration is reloaded.
    buckets: Live<Buckets>,
    /// Runs on this replica wait for their rate-limit turn one behind the other (tokio's
    /// mutex is fair, first come first served), so no run is passed over again and again while
    /// newer ones win the race to Redis, and only the head of the line polls Redis.
    turn: tokio::sync::Mutex<()>,
    rate: RateLimiter,
    pause: Arc<redis::Script>,
    redis: Redis,
}

/// The fleet-wide buckets of one agent's calls.
struct Buckets {
    /// The agent's own buckets, then its pool's: a call takes a turn in each.
    all: Vec<Gcra>,
    /// The buckets of the API key the provider's headers describe: the pool's, else the
    /// agent's own.
    key: Vec<Gcra>,
    /// Set while the provider asked the fleet to hold calls: the pool's, else the agent's.
    pause_key: String,
    /// What this replica last read of the pause key, and when.
    pause_seen: std::sync::Mutex<Option<PauseSeen>>,
}

/// How long a replica takes its last reading of the fleet's pause as current, for an agent
/// without buckets (whose admission is only that reading): one `PTTL` per this much time
/// instead of one per call. A pause another replica sets is seen this late at most; one
/// this replica sets, at once.
const PAUSE_RECHECK: Duration = Duration::from_millis(50);

/// A reading of the pause key: taken at `at`, paused until `until` (not paused if it is
/// not later than `at`).
#[derive(Debug, Clone, Copy)]
struct PauseSeen {
    at: tokio::time::Instant,
    until: tokio::time::Instant,
}

impl Buckets {
    fn new(config: &LimitsConfig<'_>) -> Self {
        let LimitsConfig {
            name,
            agent,
            pool,
            names,
            ..
        } = *config;
        let mut all = Vec::new();
        if let Some(limit) = &agent.rate_limit {
            all.extend(Gcra::of(names, LimitScope::Agent(name), limit));
        }
        let (pause_scope, key) = match pool {
            Some((pool, limit)) => {
                let pool_buckets = Gcra::of(names, LimitScope::Pool(pool), limit);
                all.extend(pool_buckets.iter().cloned());
                (LimitScope::Pool(pool), pool_buckets)
            }
            None => (LimitScope::Agent(name), all.clone()),
        };
        Self {
            all,
            key,
            pause_key: names.pause_key(pause_scope),
            pause_seen: std::sync::Mutex::new(None),
        }
    }
}

/// What an agent's limits are built from: its config, its pool's limits if it has one, and
/// where the state lives.
#[derive(Clone, Copy)]
pub struct LimitsConfig<'a> {
    pub name: &'a str,
    pub agent: &'a AgentConfig,
    pub pool: Option<(&'a str, &'a RateLimitConfig)>,
    pub names: &'a Names,
}

#[derive(Debug, thiserror::Error)]
pub enum AdmitError {
    #[error("rate limit state unavailable: {0}")]
    Store(#[from] StoreError),
    #[error("stopped while waiting for the rate limit")]
    Stopped,
    /// The turn is further off than a run may wait holding its slot. With `reserved`, the
    /// turn `wait` from now is the run's (every bucket charged); without, nothing was taken.
    #[error("the next turn is {wait:?} away")]
    WaitLonger {
        wait: Duration,
        reason: WaitReason,
        reserved: bool,
    },
}

impl AgentLimits {
    pub fn new(config: LimitsConfig<'_>, redis: Redis) -> Self {
        Self {
            calls: Arc::new(Semaphore::new(usize::from(config.agent.concurrency))),
            buckets: Live::new(Buckets::new(&config)),
            turn: tokio::sync::Mutex::new(()),
            rate: RateLimiter::new(redis.clone()),
            pause: Arc::new(redis::Script::new(PAUSE)),
            redis,
        }
    }

    /// Takes the agent's (and its pool's) rate limits from a reloaded configuration. The
    /// buckets' state in Redis stays: a changed rate applies from the next turn on. (The
    /// call slots, `concurrency`, change at a restart.)
    pub fn reload(&self, config: LimitsConfig<'_>) {
        self.buckets.set(Buckets::new(&config));
    }

    /// Waits for one of the agent's call slots on this replica. A run takes it before it
    /// starts (so a job waiting for a slot is still `queued`, not leased) and drops it as soon
    /// as its provider call ends: storing the result and handing the webhook off do not hold
    /// the provider's concurrency, so the next run starts while this one finishes.
    pub async fn call_slot(&self) -> OwnedSemaphorePermit {
        // The semaphore is never closed.
        self.calls
            .clone()
            .acquire_owned()
            .await
            .unwrap_or_else(|_| unreachable!("call slots are never closed"))
    }

    /// Waits until one request costing `estimated_tokens` fits the fleet-wide limits (and
    /// the fleet is not paused), and takes it; returns how long it waited. A wait longer than
    /// `max_hold` (the replica's line included) is not waited out here: it answers
    /// `WaitLonger` with nothing taken, so the run can wait without holding anything.
    pub async fn admit(
        &self,
        estimated_tokens: u64,
        stop: &CancellationToken,
        max_hold: Duration,
    ) -> Result<Duration, AdmitError> {
        let started = tokio::time::Instant::now();
        let hold_until = started + max_hold;
        let buckets = self.buckets.get();
        if buckets.all.is_empty() {
            // No bucket's script to check the pause (and no turn to wait for): ask Redis.
            self.wait_out_pause(&buckets, stop, hold_until).await?;
            return Ok(started.elapsed());
        }
        // A line longer than the hold means a long wait: then the buckets say how long.
        let _turn = tokio::select! {
            turn = tokio::time::timeout_at(hold_until, self.turn.lock()) => turn.ok(),
            () = stop.cancelled() => return Err(AdmitError::Stopped),
        };
        let mut taken = Vec::with_capacity(buckets.all.len());
        for (i, bucket) in buckets.all.iter().enumerate() {
            let cost = bucket.cost(estimated_tokens);
            match self.take(bucket, cost, stop, hold_until).await {
                Ok(()) => taken.push((bucket, cost)),
                // Turns are reserved only where a call's cost is known in advance (requests):
                // a token turn reserved at the estimate would pace the agent at its
                // estimates, not its usage, so token-limited runs ask again when they return.
                Err(AdmitError::WaitLonger {
                    reason: WaitReason::RateLimited,
                    ..
                }) if buckets.all.iter().all(|b| b.kind == RateKind::Requests) => {
                    let rest = buckets.all.get(i..).unwrap_or_default();
                    return Err(self.reserve(rest, estimated_tokens, &taken).await);
                }
                Err(err) => {
                    self.give_back(&taken).await;
                    return Err(err);
                }
            }
        }
        Ok(started.elapsed())
    }

    /// Reserves the next turn in each of `rest` (those before were taken at once): the run
    /// waits outside the worker until the furthest of them, then calls without admission.
    async fn reserve(
        &self,
        rest: &[Gcra],
        estimated_tokens: u64,
        taken: &[(&Gcra, f64)],
    ) -> AdmitError {
        let mut reserved: Vec<(&Gcra, f64)> = taken.to_vec();
        let mut furthest = Duration::ZERO;
        for bucket in rest {
            let cost = bucket.cost(estimated_tokens);
            match self.call(bucket, cost, Mode::Reserve).await {
                Ok(Answer {
                    wait,
                    paused: false,
                }) => {
                    reserved.push((bucket, cost));
                    furthest = furthest.max(wait);
                }
                // Paused meanwhile, or Redis failed: nothing stays reserved.
                Ok(Answer { wait, paused: true }) => {
                    self.give_back(&reserved).await;
                    return AdmitError::WaitLonger {
                        wait,
                        reason: WaitReason::PoolPaused,
                        reserved: false,
                    };
                }
                Err(err) => {
                    self.give_back(&reserved).await;
                    return AdmitError::Store(err);
                }
            }
        }
        AdmitError::WaitLonger {
            wait: furthest,
            reason: WaitReason::RateLimited,
            reserved: true,
        }
    }

    /// Returns what an admission took before it gave up.
    async fn give_back(&self, taken: &[(&Gcra, f64)]) {
        for (bucket, cost) in taken {
            if let Err(err) = self.call(bucket, -cost, Mode::Adjust).await {
                tracing::warn!(error = %err, "could not give back a rate-limit turn");
            }
        }
    }

    async fn wait_out_pause(
        &self,
        buckets: &Buckets,
        stop: &CancellationToken,
        hold_until: tokio::time::Instant,
    ) -> Result<(), AdmitError> {
        loop {
            let left = self.pause_left(buckets).await?;
            if left.is_zero() {
                return Ok(());
            }
            if tokio::time::Instant::now() + left > hold_until {
                return Err(AdmitError::WaitLonger {
                    wait: left,
                    reason: WaitReason::PoolPaused,
                    reserved: false,
                });
            }
            tokio::select! {
                () = tokio::time::sleep(left) => {}
                () = stop.cancelled() => return Err(AdmitError::Stopped),
            }
        }
    }

    /// How long the fleet's calls are paused from now: the last reading if it is recent
    /// (`PAUSE_RECHECK`), else the pause key's `PTTL`.
    async fn pause_left(&self, buckets: &Buckets) -> Result<Duration, StoreError> {
        let now = tokio::time::Instant::now();
        let seen = *lock(&buckets.pause_seen);
        if let Some(seen) = seen.filter(|seen| now.duration_since(seen.at) < PAUSE_RECHECK) {
            return Ok(seen.until.saturating_duration_since(now));
        }
        let mut cmd = redis::cmd("PTTL");
        cmd.arg(&buckets.pause_key);
        let left_ms: i64 = self.redis.cmd(&cmd).await?;
        let left = Duration::from_millis(u64::try_from(left_ms).unwrap_or(0));
        *lock(&buckets.pause_seen) = Some(PauseSeen {
            at: now,
            until: now + left,
        });
        Ok(left)
    }

    /// Holds every replica's calls for `pause` (the provider's `Retry-After` on a 429).
    pub async fn pause(&self, pause: Duration) -> Result<(), StoreError> {
        let buckets = self.buckets.get();
        let now = tokio::time::Instant::now();
        {
            // This replica holds its calls at once, whatever it read before.
            let mut seen = lock(&buckets.pause_seen);
            let until = seen.map_or(now, |seen| seen.until).max(now + pause);
            *seen = Some(PauseSeen { at: now, until });
        }
        let mut invocation = self.pause.key(&buckets.pause_key);
        invocation.arg(pause.as_millis().max(1) as u64);
        self.redis.script::<i64>(&invocation).await.map(|_| ())
    }

    /// Takes the provider's word for the key's limits where it knows of less room than the
    /// fleet's buckets: a window it says is used up pauses the fleet until it resets; one
    /// with fewer requests (or tokens) left than a bucket would allow at once tightens that
    /// bucket to them. Never loosens anything.
    pub async fn correct(&self, limits: &ProviderLimits) -> Result<(), StoreError> {
        if let Some(wait) = limits.exhausted_for() {
            tracing::info!(
                ?wait,
                "provider reports its limit used up; pausing the fleet's calls"
            );
            return self.pause(wait).await;
        }
        let buckets = self.buckets.get();
        for bucket in &buckets.key {
            let window = match bucket.kind {
                RateKind::Requests => limits.requests,
                RateKind::Tokens => limits.tokens,
            };
            let Some(window) = window else { continue };
            let used = bucket.capacity() - window.remaining as f64;
            if used > 0.0 {
                self.call(bucket, used, Mode::Tighten).await?;
            }
        }
        Ok(())
    }

    /// Gives back what `admit` took for a call that was not made after all (the job's
    /// deadline passed while it waited), so the fleet's budget is not spent on nothing.
    pub async fn refund(&self, estimated_tokens: u64) {
        let buckets = self.buckets.get();
        let taken: Vec<(&Gcra, f64)> = buckets
            .all
            .iter()
            .map(|bucket| (bucket, bucket.cost(estimated_tokens)))
            .collect();
        self.give_back(&taken).await;
    }

    /// Settles the token buckets once the call is over: to the usage the provider reported,
    /// or to nothing for a call that failed (its reservation is released).
    pub async fn settle_tokens(&self, estimated: u64, actual: u64) -> Result<(), StoreError> {
        let buckets = self.buckets.get();
        for bucket in buckets.all.iter().filter(|b| b.kind == RateKind::Tokens) {
            let delta = actual as f64 - bucket.cost(estimated);
            if delta.abs() >= 1.0 {
                self.call(bucket, delta, Mode::Adjust).await?;
            }
        }
        Ok(())
    }

    async fn take(
        &self,
        gcra: &Gcra,
        cost: f64,
        stop: &CancellationToken,
        hold_until: tokio::time::Instant,
    ) -> Result<(), AdmitError> {
        loop {
            let Answer { wait, paused } = self.call(gcra, cost, Mode::Take).await?;
            if wait.is_zero() {
                return Ok(());
            }
            if tokio::time::Instant::now() + wait > hold_until {
                let reason = if paused {
                    WaitReason::PoolPaused
                } else {
                    WaitReason::RateLimited
                };
                return Err(AdmitError::WaitLonger {
                    wait,
                    reason,
                    reserved: false,
                });
            }
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = stop.cancelled() => return Err(AdmitError::Stopped),
            }
        }
    }

    /// A bucket checks its own scope's pause key (the two share a Redis Cluster slot): an
    /// agent in a pool finds the pool's pause when it reaches the pool's bucket, and gives
    /// its own turn back if it will not wait that long.
    async fn call(&self, gcra: &Gcra, cost: f64, mode: Mode) -> Result<Answer, StoreError> {
        self.rate
            .call(gcra, gcra.pause_key.as_deref(), cost, mode)
            .await
    }
}

/// The lock of a pause reading (a writer cannot panic while holding it, so a poisoned lock
/// still holds a whole value).
fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
