//! What autoscaling should see: per agent, the queued jobs that the fleet's limits would
//! admit now — not those a provider pause or a tenant's running quota holds back, and no more
//! than a minute of the agent's (and its pool's) requests/min. Adding replicas for jobs that
//! would only wait on a limit buys nothing. (Jobs waiting on a rate limit, a retry or a
//! circuit are in the delay queues already, not in the work queues counted here.)
//!
//! Pure: [`crate::depths`] gathers the inputs each poll.

use std::collections::HashSet;

/// One agent's inputs at one poll.
pub struct AgentBacklog<'a> {
    /// Ready jobs by queue: the tenant whose queue it is (`None` for the shared queue).
    pub ready: Vec<(Option<&'a str>, u64)>,
    /// The agent's (or its pool's) provider asked the fleet to hold its calls.
    pub paused: bool,
    /// The tightest requests/min over the agent and its pool, if any.
    pub per_minute: Option<u64>,
    /// Tenants holding every place of their `max_running_jobs`.
    pub tenants_at_quota: &'a HashSet<String>,
}

impl AgentBacklog<'_> {
    pub fn admissible(&self) -> u64 {
        if self.paused {
            return 0;
        }
        let ready: u64 = self
            .ready
            .iter()
            .filter(|(tenant, _)| tenant.is_none_or(|t| !self.tenants_at_quota.contains(t)))
            .map(|(_, depth)| depth)
            .sum();
        self.per_minute.map_or(ready, |cap| ready.min(cap))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backlog<'a>(
        ready: Vec<(Option<&'a str>, u64)>,
        at_quota: &'a HashSet<String>,
    ) -> AgentBacklog<'a> {
        AgentBacklog {
            ready,
            paused: false,
            per_minute: None,
            tenants_at_quota: at_quota,
        }
    }

    #[test]
    fn everything_ready_counts_when_nothing_limits() {
        let none = HashSet::new();
        let b = backlog(vec![(None, 2), (Some("a"), 5), (Some("b"), 3)], &none);
        assert_eq!(b.admissible(), 10);
    }

    #[test]
    fn a_rate_limit_caps_it_at_a_minute_of_turns() {
        let none = HashSet::new();
        let mut b = backlog(vec![(Some("a"), 500)], &none);
        b.per_minute = Some(60);
        assert_eq!(b.admissible(), 60);
    }

    #[test]
    fn a_pause_admits_nothing_and_a_full_tenant_is_left_out() {
        let at_quota = HashSet::from(["a".to_owned()]);
        let mut b = backlog(vec![(None, 1), (Some("a"), 50), (Some("b"), 4)], &at_quota);
        assert_eq!(b.admissible(), 5);
        b.paused = true;
        assert_eq!(b.admissible(), 0);
    }
}
