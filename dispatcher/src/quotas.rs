//! How much a tenant may submit, decided before anything is stored:
//! - per API key, per replica, in process (`governor`): a burst limiter that refuses a flood
//!   before the body is read, so one key cannot monopolise a replica;
//! - per tenant, fleet-wide: `max_queued_jobs` (the broker's depths of the tenant's queues,
//!   see [`crate::depths`]) and `submissions_per_minute` (a GCRA in Redis that every
//!   dispatcher shares).
//!
//! - budgets: once a tenant's daily budget (or the agent's monthly one) is spent, a POST is
//!   refused with 402 and when the budget resets; jobs already accepted wait for it instead
//!   (the worker's reservation per model call).
//!
//! Every quota refusal is a 429 problem with `Retry-After` and a `limit` naming which one.

use std::collections::HashMap;
use std::time::Duration;

use agentfleet_common::budget::{Budget, Ledgers, Owner};
use agentfleet_common::config::{Config, TenantConfig};
use agentfleet_common::naming::RateKind;
use agentfleet_common::rate::{Gcra, LocalLimiter, Mode, RateLimiter};
use agentfleet_common::store::Redis;

use crate::depths::QueueDepths;
use crate::problem::{ApiError, Limit};

/// How long a client refused for `max_queued_jobs` is told to wait: the queue must drain,
/// which no one can predict; the depth poll sees a change within a second.
const QUEUED_RETRY_AFTER: Duration = Duration::from_secs(2);

pub struct Quotas {
    per_key: Option<LocalLimiter>,
    /// `submissions_per_minute` by tenant, and its bucket.
    submissions: HashMap<String, (u32, Gcra)>,
    rate: RateLimiter,
    ledgers: Ledgers,
    config: Config,
}

impl Quotas {
    pub fn new(config: &Config, redis: Redis) -> Self {
        let names = config.names();
        let submissions = config
            .tenants
            .iter()
            .filter_map(|t| {
                let per_minute = t.quotas.submissions_per_minute?;
                // A burst of ten seconds' worth: a client that batches is not refused for it.
                let gcra = Gcra::with_burst(
                    names.submissions_key(&t.id),
                    RateKind::Requests,
                    f64::from(per_minute),
                    f64::from(per_minute) / 6.0,
                );
                Some((t.id.clone(), (per_minute, gcra)))
            })
            .collect();
        Self {
            per_key: config.dispatcher.per_key_rate.map(LocalLimiter::new),
            submissions,
            rate: RateLimiter::new(redis.clone()),
            ledgers: Ledgers::new(redis, names),
            config: config.clone(),
        }
    }

    /// This replica's burst limiter for the tenant's key. In process: no I/O.
    pub fn check_burst(&self, tenant: &str) -> Result<(), ApiError> {
        let Some(limiter) = &self.per_key else {
            return Ok(());
        };
        limiter
            .check(tenant)
            .map_err(|retry_after| ApiError::Limited {
                limit: Limit::Burst,
                detail: "too many requests with this API key; slow down".into(),
                retry_after,
            })
    }

    /// The tenant's fleet-wide quotas: queued jobs first (it takes nothing), then a turn of
    /// its submissions/min.
    pub async fn check_tenant(
        &self,
        tenant: &TenantConfig,
        depths: &QueueDepths,
    ) -> Result<(), ApiError> {
        if let Some(max) = depths.tenant_over_quota(&tenant.id) {
            return Err(ApiError::Limited {
                limit: Limit::QueuedJobs,
                detail: format!("tenant `{}` has {max} jobs queued, its quota", tenant.id),
                retry_after: QUEUED_RETRY_AFTER,
            });
        }
        let Some((per_minute, gcra)) = self.submissions.get(&tenant.id) else {
            return Ok(());
        };
        let answer = self
            .rate
            .call(gcra, None, 1.0, Mode::Take)
            .await
            .map_err(|e| ApiError::Unavailable(format!("checking the submission quota: {e}")))?;
        if answer.wait.is_zero() {
            return Ok(());
        }
        Err(ApiError::Limited {
            limit: Limit::Submissions,
            detail: format!(
                "tenant `{}` is over its quota of {per_minute} submissions a minute",
                tenant.id
            ),
            retry_after: answer.wait,
        })
    }
}

impl Quotas {
    /// Refuses a job whose tenant's daily budget, or its agent's monthly one, has no room
    /// left for even the smallest call of the agent (`max_tokens` at the output price): the
    /// workers could not admit it before the budget resets.
    pub async fn check_budgets(&self, tenant: &str, agent: &str) -> Result<(), ApiError> {
        let budgets = Budget::for_call(&self.config, tenant, agent);
        let smallest_call = self.config.agents.get(agent).and_then(|a| {
            let price = self.config.prices.get(&a.model)?;
            Some(f64::from(a.max_tokens) * price.output_usd_per_million / 1_000_000.0)
        });
        let Some(smallest_call) = smallest_call.filter(|_| !budgets.is_empty()) else {
            return Ok(());
        };
        let spent = self
            .ledgers
            .spent(&budgets)
            .await
            .map_err(|e| ApiError::Unavailable(format!("reading the budget ledger: {e}")))?;
        let now = chrono::Utc::now();
        for (budget, spent) in budgets.iter().zip(spent) {
            if spent + smallest_call <= budget.limit_usd {
                continue;
            }
            let whose = match &budget.owner {
                Owner::Tenant(t) => format!("tenant `{t}`'s daily budget"),
                Owner::Agent(a) => format!("agent `{a}`'s monthly budget"),
            };
            return Err(ApiError::BudgetSpent {
                detail: format!(
                    "{whose} of {:.4} USD is spent ({spent:.4} USD, no room for another call)",
                    budget.limit_usd
                ),
                resets_at: budget.period.at(now).1,
            });
        }
        Ok(())
    }
}
