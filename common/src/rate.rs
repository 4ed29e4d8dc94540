//! Fleet-wide rate limits: GCRA state in Redis, one Lua script, Redis' clock, so every replica
//! of every process draws on the same budget. The worker admits provider calls with it
//! (requests/min, tokens/min, per agent and per pool); the dispatcher counts a tenant's
//! submissions/min with it.
//!
//! Why not `governor` here: its state lives in process memory, so N replicas would each allow
//! the full rate — N times the limit for the fleet. (`governor` is the right tool where a
//! per-replica bucket is meant: the dispatcher's per-key burst limiter.)

use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock as _, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};

use crate::config::BurstConfig;
use crate::naming::{LimitScope, Names, RateKind};
use crate::store::{Redis, StoreError};

/// GCRA: the key holds the theoretical arrival time (TAT, µs). `take` admits `cost` units if
/// the bucket of `capacity` units has room and the fleet is not paused (`KEYS[2]`, when
/// given), else answers how long to wait (µs) and why (`{wait, 1}` for a pause), taking
/// nothing. `reserve` takes the next turn even when it is in the future and answers how far
/// off it is (a pause is answered as by `take`, nothing reserved): turns handed out this way
/// are distinct, so callers waiting elsewhere come back one by one rather than as a herd.
/// `adjust` charges (or refunds, when negative) units after the fact without waiting.
/// `tighten` leaves only `capacity - cost` units available now, if fewer were not already:
/// the provider knows of less room than the bucket does.
const GCRA: &str = r"
local mode = ARGV[4]
if (mode == 'take' or mode == 'reserve') and KEYS[2] then
  local paused = redis.call('PTTL', KEYS[2])
  if paused > 0 then return {paused * 1000, 1} end
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local capacity = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
if mode == 'tighten' then
  local floor = now + cost * interval
  if floor > tat then
    redis.call('SET', KEYS[1], string.format('%.0f', floor), 'PX', math.ceil((floor - now) / 1000) + 1000)
  end
  return {0, 0}
end
local new_tat = tat + cost * interval
local wait = 0
if mode == 'adjust' then
  if new_tat < now then new_tat = now end
else
  local allow_at = new_tat - capacity * interval
  if allow_at > now then
    if mode == 'take' then return {math.ceil(allow_at - now), 0} end
    wait = math.ceil(allow_at - now)
  end
end
local ttl_ms = math.ceil((new_tat - now) / 1000) + 1000
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', ttl_ms)
return {wait, 0}
";

/// What a GCRA call does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Take,
    Reserve,
    Adjust,
    Tighten,
}

impl Mode {
    fn as_str(self) -> &'static str {
        match self {
            Self::Take => "take",
            Self::Reserve => "reserve",
            Self::Adjust => "adjust",
            Self::Tighten => "tighten",
        }
    }
}

/// The answer of a GCRA call: how long until the turn (zero: taken now), and whether the wait
/// is a fleet-wide pause rather than the rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Answer {
    pub wait: Duration,
    pub paused: bool,
}

/// One fleet-wide limit of `per_minute` units with a burst of `capacity` units.
#[derive(Debug, Clone)]
pub struct Gcra {
    pub key: String,
    pub kind: RateKind,
    /// The pause key its script checks (`KEYS[2]`), if any: its own scope's, which shares
    /// the bucket's hash tag, so the script stays in one Redis Cluster slot.
    pub pause_key: Option<String>,
    interval_us: f64,
    capacity: f64,
}

impl Gcra {
    /// A limit whose burst is one second's worth (at least one unit): provider limits.
    pub fn per_minute(key: String, kind: RateKind, per_minute: u32) -> Self {
        let per_minute = f64::from(per_minute.max(1));
        Self::with_burst(key, kind, per_minute, per_minute / 60.0)
    }

    /// A limit with an explicit burst (at least one unit).
    pub fn with_burst(key: String, kind: RateKind, per_minute: f64, burst: f64) -> Self {
        let per_minute = per_minute.max(1.0);
        Self {
            key,
            kind,
            pause_key: None,
            interval_us: 60_000_000.0 / per_minute,
            capacity: burst.max(1.0),
        }
    }

    /// Units the bucket holds when full (its burst).
    pub fn capacity(&self) -> f64 {
        self.capacity
    }

    /// A cost above the capacity could never be admitted: it waits for a full bucket instead.
    pub fn clamp(&self, cost: f64) -> f64 {
        cost.min(self.capacity)
    }

    /// What one call costs in this bucket: one request, or its estimated tokens.
    pub fn cost(&self, estimated_tokens: u64) -> f64 {
        match self.kind {
            RateKind::Requests => 1.0,
            RateKind::Tokens => self.clamp(estimated_tokens as f64),
        }
    }

    /// The buckets of one provider limit under `scope`, each checking the scope's pause key.
    pub fn of(
        names: &Names,
        scope: LimitScope<'_>,
        limit: &crate::config::RateLimitConfig,
    ) -> Vec<Self> {
        let mut buckets = vec![Self::per_minute(
            names.rate_key(scope, RateKind::Requests),
            RateKind::Requests,
            limit.requests_per_minute,
        )];
        if let Some(tpm) = limit.tokens_per_minute {
            buckets.push(Self::per_minute(
                names.rate_key(scope, RateKind::Tokens),
                RateKind::Tokens,
                tpm,
            ));
        }
        for bucket in &mut buckets {
            bucket.pause_key = Some(names.pause_key(scope));
        }
        buckets
    }
}

/// Runs GCRA calls against one Redis.
#[derive(Clone)]
pub struct RateLimiter {
    script: std::sync::Arc<redis::Script>,
    redis: Redis,
}

impl RateLimiter {
    pub fn new(redis: Redis) -> Self {
        Self {
            script: std::sync::Arc::new(redis::Script::new(GCRA)),
            redis,
        }
    }

    /// One call on `gcra` costing `cost` units, checking the pause at `pause_key` if given.
    pub async fn call(
        &self,
        gcra: &Gcra,
        pause_key: Option<&str>,
        cost: f64,
        mode: Mode,
    ) -> Result<Answer, StoreError> {
        let mut invocation = self.script.key(&gcra.key);
        if let Some(pause_key) = pause_key {
            invocation.key(pause_key);
        }
        invocation
            .arg(gcra.interval_us)
            .arg(gcra.capacity)
            .arg(cost)
            .arg(mode.as_str());
        let (wait_us, paused): (i64, i64) = self.redis.script(&invocation).await?;
        Ok(Answer {
            wait: Duration::from_micros(u64::try_from(wait_us).unwrap_or(0)),
            paused: paused == 1,
        })
    }
}

/// Keys tracked before idle ones are dropped: receiver hosts are caller-chosen, so the map
/// must not grow without bound.
const MAX_LOCAL_KEYS: usize = 4096;

/// A per-replica rate by key, in process (`governor`): for limits meant per replica — the
/// dispatcher's per-key burst, webhook deliveries per receiver host.
pub struct LocalLimiter {
    limiter: DefaultKeyedRateLimiter<String>,
    clock: DefaultClock,
}

impl LocalLimiter {
    pub fn new(rate: BurstConfig) -> Self {
        let per_second = NonZeroU32::new(rate.per_second).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(rate.burst).unwrap_or(NonZeroU32::MIN);
        Self {
            limiter: governor::RateLimiter::keyed(Quota::per_second(per_second).allow_burst(burst)),
            clock: DefaultClock::default(),
        }
    }

    /// Takes one cell for `key`, or answers how long until one is free.
    pub fn check(&self, key: &str) -> Result<(), Duration> {
        let result = self
            .limiter
            .check_key(&key.to_owned())
            .map_err(|not_until| not_until.wait_time_from(self.clock.now()));
        if self.limiter.len() > MAX_LOCAL_KEYS {
            self.limiter.retain_recent();
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_local_limiter_allows_the_burst_then_says_how_long_to_wait() {
        let limiter = LocalLimiter::new(BurstConfig {
            per_second: 1,
            burst: 3,
        });
        for _ in 0..3 {
            assert_eq!(limiter.check("a"), Ok(()));
        }
        let wait = limiter.check("a").expect_err("over the burst");
        assert!(
            wait > Duration::from_millis(500) && wait <= Duration::from_secs(1),
            "{wait:?}"
        );
        assert_eq!(limiter.check("b"), Ok(()), "keys are separate");
    }
}
