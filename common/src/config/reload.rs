//! What a running process takes from a reloaded configuration (SIGHUP), and what waits for a
//! restart. Reloaded: every limit, quota and budget — agents' `rate_limit`, `pools`,
//! `max_queue_depth` and `monthly_budget_usd`, tenants' `quotas` and `budget`,
//! `dispatcher.per_key_rate` and `webhooks.per_host_rate` — and `privacy` with agents'
//! `mask_output` (payload logging switched off needs no restart). Everything else (prefixes,
//! endpoints, agents' concurrency and tools, tenants' weights) is read at start only; a
//! reload that adds or removes agents or tenants (or changes a tenant's keys), or moves the
//! prefixes, is refused whole,
//! since queues and keys are derived from them.

use super::{invalid, Config, ConfigError};

/// Checks that `new` can replace `old` in a running process.
pub fn check_reloadable(old: &Config, new: &Config) -> Result<(), ConfigError> {
    let restart = |key: &str| {
        Err(invalid(
            key,
            "changed; this change needs a restart (a reload only changes limits, quotas and budgets)",
        ))
    };
    if old.amqp.prefix != new.amqp.prefix {
        return restart("amqp.prefix");
    }
    if old.redis.prefix != new.redis.prefix {
        return restart("redis.prefix");
    }
    if !old.agents.keys().eq(new.agents.keys()) {
        return restart("agents");
    }
    let ids = |c: &Config| {
        c.tenants
            .iter()
            .map(|t| (t.id.clone(), t.api_keys()))
            .collect::<Vec<_>>()
    };
    if ids(old) != ids(new) {
        return restart("tenants");
    }
    Ok(())
}
