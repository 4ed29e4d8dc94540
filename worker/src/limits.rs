//! The one admission decision before a provider call: the agent's concurrency on this replica
//! (a semaphore of call slots, held from the start of a run to the end of its provider call;
//! the queue prefetch is a little larger, `AgentConfig::delivery_window`) and its fleet-wide rate limits
//! (requests/min and tokens/min), kept as GCRA state in Redis so that every replica draws on
//! the same budget. Nothing else in the worker sleeps on limits.
//!
//! Why not `governor`: its state lives in process memory (its `StateStore` is synchronous), so
//! N replicas would each allow the full rate — N times the limit for the fleet. The same GCRA
//! runs here as one Lua script against Redis, using Redis' clock so replicas agree on time.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use agentfleet_common::config::AgentConfig;
use agentfleet_common::naming::{Names, RateKind};
use agentfleet_common::store::{Redis, StoreError};

/// GCRA: the key holds the theoretical arrival time (TAT, µs). `take` admits `cost` units if
/// the bucket of `capacity` units has room, else returns how long to wait (µs). `adjust`
/// charges (or refunds, when negative) units after the fact without waiting.
const GCRA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local capacity = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local new_tat = tat + cost * interval
if ARGV[4] == 'take' then
  local allow_at = new_tat - capacity * interval
  if allow_at > now then return math.ceil(allow_at - now) end
elseif new_tat < now then
  new_tat = now
end
local ttl_ms = math.ceil((new_tat - now) / 1000) + 1000
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', ttl_ms)
return 0
";

/// One fleet-wide limit: `per_minute` units, with a burst of one second's worth (at least
/// one unit).
#[derive(Debug, Clone)]
struct Gcra {
    key: String,
    interval_us: f64,
    capacity: f64,
}

impl Gcra {
    fn new(key: String, per_minute: u32) -> Self {
        let per_minute = f64::from(per_minute.max(1));
        Self {
            key,
            interval_us: 60_000_000.0 / per_minute,
            capacity: (per_minute / 60.0).max(1.0),
        }
    }

    /// A cost above the capacity could never be admitted: it waits for a full bucket instead.
    fn clamp(&self, cost: f64) -> f64 {
        cost.min(self.capacity)
    }
}

/// The limits of one agent.
pub struct AgentLimits {
    /// Provider calls in flight on this replica (the agent's `concurrency`).
    calls: Arc<Semaphore>,
    requests: Option<Gcra>,
    tokens: Option<Gcra>,
    /// Runs on this replica wait for their rate-limit turn one behind the other (tokio's
    /// mutex is fair, first come first served), so no run is passed over again and again while
    /// newer ones win the race to Redis, and only the head of the line polls Redis.
    turn: tokio::sync::Mutex<()>,
    script: Arc<redis::Script>,
    redis: Redis,
}

#[derive(Debug, thiserror::Error)]
pub enum AdmitError {
    #[error("rate limit state unavailable: {0}")]
    Store(#[from] StoreError),
    #[error("stopped while waiting for the rate limit")]
    Stopped,
}

impl AgentLimits {
    pub fn new(name: &str, agent: &AgentConfig, names: &Names, redis: Redis) -> Self {
        let limit = agent.rate_limit.as_ref();
        Self {
            calls: Arc::new(Semaphore::new(usize::from(agent.concurrency))),
            requests: limit.map(|l| {
                Gcra::new(
                    names.rate_key(name, RateKind::Requests),
                    l.requests_per_minute,
                )
            }),
            tokens: limit
                .and_then(|l| l.tokens_per_minute)
                .map(|tpm| Gcra::new(names.rate_key(name, RateKind::Tokens), tpm)),
            turn: tokio::sync::Mutex::new(()),
            script: Arc::new(redis::Script::new(GCRA)),
            redis,
        }
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

    /// Waits until one request costing `estimated_tokens` fits the fleet-wide limits, and
    /// takes it. Returns how long it waited.
    pub async fn admit(
        &self,
        estimated_tokens: u64,
        stop: &CancellationToken,
    ) -> Result<Duration, AdmitError> {
        let started = tokio::time::Instant::now();
        if self.requests.is_none() && self.tokens.is_none() {
            return Ok(started.elapsed());
        }
        let _turn = tokio::select! {
            turn = self.turn.lock() => turn,
            () = stop.cancelled() => return Err(AdmitError::Stopped),
        };
        if let Some(requests) = &self.requests {
            self.take(requests, 1.0, stop).await?;
        }
        if let Some(tokens) = &self.tokens {
            self.take(tokens, tokens.clamp(estimated_tokens as f64), stop)
                .await?;
        }
        Ok(started.elapsed())
    }

    /// Gives back what `admit` took for a call that was not made after all (the job's
    /// deadline passed while it waited), so the fleet's budget is not spent on nothing.
    pub async fn refund(&self, estimated_tokens: u64) -> Result<(), StoreError> {
        if let Some(requests) = &self.requests {
            self.call(requests, -1.0, "adjust").await?;
        }
        if let Some(tokens) = &self.tokens {
            self.call(tokens, -tokens.clamp(estimated_tokens as f64), "adjust")
                .await?;
        }
        Ok(())
    }

    /// Corrects the token budget once the provider reported real usage.
    pub async fn settle_tokens(&self, estimated: u64, actual: u64) -> Result<(), StoreError> {
        let Some(tokens) = &self.tokens else {
            return Ok(());
        };
        let charged = tokens.clamp(estimated as f64);
        let delta = actual as f64 - charged;
        if delta.abs() < 1.0 {
            return Ok(());
        }
        self.call(tokens, delta, "adjust").await.map(|_| ())
    }

    async fn take(
        &self,
        gcra: &Gcra,
        cost: f64,
        stop: &CancellationToken,
    ) -> Result<(), AdmitError> {
        loop {
            let wait_us = self.call(gcra, cost, "take").await?;
            if wait_us <= 0 {
                return Ok(());
            }
            let wait = Duration::from_micros(wait_us as u64);
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = stop.cancelled() => return Err(AdmitError::Stopped),
            }
        }
    }

    async fn call(&self, gcra: &Gcra, cost: f64, mode: &str) -> Result<i64, StoreError> {
        let mut invocation = self.script.key(&gcra.key);
        invocation
            .arg(gcra.interval_us)
            .arg(gcra.capacity)
            .arg(cost)
            .arg(mode);
        self.redis.script(&invocation).await
    }
}
