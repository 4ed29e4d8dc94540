//! A tenant's runs at once, fleet-wide (`tenants[].quotas.max_running_jobs`): a sorted set in
//! Redis per tenant, of the job ids holding a run, each scored by when its hold expires. A run
//! claims a place after it takes the job's lease, renews it as it renews the lease, and gives
//! it back when it ends; a crashed worker's places expire with its leases. A run that finds
//! no place waits outside (the delay ladder) with `waiting.reason = tenant_quota`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use uuid::Uuid;

use agentfleet_common::config::Config;
use agentfleet_common::live::Live;
use agentfleet_common::naming::Names;
use agentfleet_common::store::{Redis, StoreError};

/// Takes a place for `ARGV[1]` until `ARGV[2]` ms from now if fewer than `ARGV[3]` are held
/// (a job holding one already keeps it: a redelivery is the same run). Answers 1 or 0.
const CLAIM: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local held = redis.call('ZSCORE', KEYS[1], ARGV[1])
if (not held) and redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then return 0 end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]) * 2)
return 1
";

/// How long a claimed place lasts without renewal: as long as a lease.
#[derive(Clone)]
pub struct RunningQuota {
    max: Arc<Live<HashMap<String, u32>>>,
    names: Names,
    redis: Redis,
    claim: Arc<redis::Script>,
    hold: Duration,
}

/// Whether a run may go on.
pub enum Claim {
    /// It may; the place (if the tenant has a quota) is kept until [`Place::release`].
    Held(Option<Place>),
    /// Every place is taken.
    Full,
}

/// A claimed place, renewed in the background.
pub struct Place {
    quota: RunningQuota,
    key: String,
    job: Uuid,
    renewal: JoinHandle<()>,
}

impl RunningQuota {
    pub fn new(config: &Config, redis: Redis) -> Self {
        Self {
            max: Arc::new(Live::new(Self::quotas(config))),
            names: config.names(),
            redis,
            claim: Arc::new(redis::Script::new(CLAIM)),
            hold: config.worker.lease,
        }
    }

    fn quotas(config: &Config) -> HashMap<String, u32> {
        config
            .tenants
            .iter()
            .filter_map(|t| Some((t.id.clone(), t.quotas.max_running_jobs?)))
            .collect()
    }

    /// Takes the tenants' `max_running_jobs` from a reloaded configuration.
    pub fn reload(&self, config: &Config) {
        self.max.set(Self::quotas(config));
    }

    /// Claims a place for `job` of `tenant`; a tenant without the quota always may.
    pub async fn claim(&self, tenant: &str, job: Uuid) -> Result<Claim, StoreError> {
        let Some(&max) = self.max.get().get(tenant) else {
            return Ok(Claim::Held(None));
        };
        let key = self.names.running_key(tenant);
        if !self.take(&key, job, max).await? {
            return Ok(Claim::Full);
        }
        let renewal = tokio::spawn({
            let (quota, key) = (self.clone(), key.clone());
            async move {
                loop {
                    tokio::time::sleep(quota.hold / 3).await;
                    if let Err(err) = quota.take(&key, job, u32::MAX).await {
                        tracing::debug!(error = %err, "could not renew a running place");
                    }
                }
            }
        });
        Ok(Claim::Held(Some(Place {
            quota: self.clone(),
            key,
            job,
            renewal,
        })))
    }

    async fn take(&self, key: &str, job: Uuid, max: u32) -> Result<bool, StoreError> {
        let mut invocation = self.claim.key(key);
        invocation
            .arg(job.to_string())
            .arg(self.hold.as_millis() as u64)
            .arg(max);
        let taken: i64 = self.redis.script(&invocation).await?;
        Ok(taken == 1)
    }
}

impl Place {
    /// Gives the place back (it would expire by itself within a lease if this fails).
    pub async fn release(self) {
        // Stop renewing first, so the renewal cannot put the place back after the ZREM.
        self.renewal.abort();
        let mut cmd = redis::cmd("ZREM");
        cmd.arg(&self.key).arg(self.job.to_string());
        if let Err(err) = self.quota.redis.cmd::<i64>(&cmd).await {
            tracing::debug!(error = %err, "could not give a running place back");
        }
    }
}

/// A place dropped without `release` (its run's task panicked) stops being renewed and
/// expires within a lease, instead of holding the tenant's quota for ever.
impl Drop for Place {
    fn drop(&mut self) {
        self.renewal.abort();
    }
}
