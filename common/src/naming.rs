//! The one naming scheme: every exchange, queue, routing key and Redis key is derived here
//! from the configured prefixes, never spelled out at a call site.

use uuid::Uuid;

/// Derives broker and store names from the deployment's prefixes.
#[derive(Debug, Clone)]
pub struct Names {
    amqp: String,
    redis: String,
}

/// Whose fleet-wide limits a key holds: one agent's, or a provider pool's that several agents
/// share (one API key's limits). Agent names cannot contain `:`, so the two never collide.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitScope<'a> {
    Agent(&'a str),
    Pool(&'a str),
}

impl LimitScope<'_> {
    /// The scope's Redis Cluster hash tag: a limiter's buckets and its pause key carry it, so
    /// the GCRA script, which reads a bucket and the pause key together, stays in one slot.
    fn tag(self) -> String {
        match self {
            Self::Agent(agent) => format!("{{l:agent:{agent}}}"),
            Self::Pool(pool) => format!("{{l:pool:{pool}}}"),
        }
    }
}

/// A tenant's hash tag: every key a tenant owns lands in one slot (so its reads go to one
/// node), while its jobs, tagged by id, spread over all of them.
fn tenant_tag(tenant: &str) -> String {
    format!("{{t:{tenant}}}")
}

/// One work queue of an agent: its shared queue, or one tenant's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobQueue {
    pub queue: String,
    pub routing_key: String,
    /// The tenant whose jobs it holds; `None` for the shared queue.
    pub tenant: Option<String>,
    /// The tenant's share when the worker picks the next job (1 for the shared queue).
    pub weight: u32,
}

impl JobQueue {
    pub fn shared(names: &Names, agent: &str) -> Self {
        Self {
            queue: names.agent_queue(agent),
            routing_key: names.agent_routing_key(agent),
            tenant: None,
            weight: 1,
        }
    }

    pub fn tenant(names: &Names, agent: &str, tenant: &str, weight: u32) -> Self {
        Self {
            queue: names.tenant_queue(agent, tenant),
            routing_key: names.tenant_routing_key(agent, tenant),
            tenant: Some(tenant.to_owned()),
            weight,
        }
    }
}

/// Whose spending a budget ledger tracks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpendOwner<'a> {
    Tenant(&'a str),
    Agent(&'a str),
}

/// The kind of fleet-wide rate limit a GCRA key tracks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateKind {
    Requests,
    Tokens,
}

impl Names {
    pub fn new(amqp_prefix: &str, redis_prefix: &str) -> Self {
        Self {
            amqp: amqp_prefix.to_owned(),
            redis: redis_prefix.to_owned(),
        }
    }

    pub fn amqp_prefix(&self) -> &str {
        &self.amqp
    }

    pub fn redis_prefix(&self) -> &str {
        &self.redis
    }

    /// Direct exchange that routes work: agent jobs and webhook deliveries.
    pub fn work_exchange(&self) -> String {
        format!("{}.work", self.amqp)
    }

    /// Headers exchange in front of the delay queues.
    pub fn delay_exchange(&self) -> String {
        format!("{}.delay", self.amqp)
    }

    /// Fanout exchange that feeds the dead-letter queue.
    pub fn dead_exchange(&self) -> String {
        format!("{}.dead", self.amqp)
    }

    pub fn agent_queue(&self, agent: &str) -> String {
        format!("{}.jobs.{agent}", self.amqp)
    }

    /// Routing key of an agent's jobs on the work exchange. Distinct from
    /// [`Names::webhook_routing_key`] whatever the agent is called.
    pub fn agent_routing_key(&self, agent: &str) -> String {
        format!("jobs.{agent}")
    }

    /// One tenant's jobs for `agent`. Agent and tenant names cannot contain `.`, so this never
    /// collides with another agent's queue.
    pub fn tenant_queue(&self, agent: &str, tenant: &str) -> String {
        format!("{}.jobs.{agent}.{tenant}", self.amqp)
    }

    pub fn tenant_routing_key(&self, agent: &str, tenant: &str) -> String {
        format!("jobs.{agent}.{tenant}")
    }

    pub fn webhook_queue(&self) -> String {
        format!("{}.webhooks", self.amqp)
    }

    pub fn webhook_routing_key(&self) -> &'static str {
        "webhooks"
    }

    pub fn delay_queue(&self, delay_ms: u64) -> String {
        format!("{}.delay.{delay_ms}ms", self.amqp)
    }

    pub fn dead_queue(&self) -> String {
        format!("{}.dead", self.amqp)
    }

    /// Everything a job keeps, in one hash (fields named by `store::field`): its record (the
    /// public view), its spec (input, webhook URL: read by workers, never returned whole), its
    /// step log, its fencing-token counter and its hand-off note. One key, one expiry, and a
    /// terminal job pays one key's overhead instead of five. The id is the key's hash tag, so
    /// the job's hash and its lease ([`Self::lease_key`]) share a Redis Cluster slot.
    pub fn job_key(&self, id: Uuid) -> String {
        format!("{}:job:{{{id}}}", self.redis)
    }

    /// GCRA state of an agent's or a pool's fleet-wide rate limit. Tagged by the scope, like
    /// its pause key ([`Self::pause_key`]).
    pub fn rate_key(&self, scope: LimitScope<'_>, kind: RateKind) -> String {
        let kind = match kind {
            RateKind::Requests => "requests",
            RateKind::Tokens => "tokens",
        };
        format!("{}:rl:{}:{kind}", self.redis, scope.tag())
    }

    /// Set (with an expiry) while the provider asked the whole fleet to hold its calls
    /// (a 429 with `Retry-After`): every replica's admissions wait it out.
    pub fn pause_key(&self, scope: LimitScope<'_>) -> String {
        format!("{}:pause:{}", self.redis, scope.tag())
    }

    /// GCRA state of a tenant's submissions/min, shared by every dispatcher.
    pub fn submissions_key(&self, tenant: &str) -> String {
        format!("{}:tenant:{}:submissions", self.redis, tenant_tag(tenant))
    }

    /// A tenant's runs holding a lease, fleet-wide: a sorted set of job ids scored by when
    /// their hold expires, so a crashed worker's runs stop counting on their own.
    pub fn running_key(&self, tenant: &str) -> String {
        format!("{}:tenant:{}:running", self.redis, tenant_tag(tenant))
    }

    /// A cached model answer of `agent` for `tenant`, by the digest of the request it
    /// answered. Per tenant: one tenant's answers are never served to another.
    pub fn cache_key(&self, agent: &str, tenant: &str, digest: &str) -> String {
        format!("{}:cache:{agent}:{tenant}:{digest}", self.redis)
    }

    /// What a ledger has spent in one period (micro-USD): a tenant's day (`2026-11-22`) or an
    /// agent's month (`2026-11`). An agent's ledgers are tagged by the agent (`{a:<name>}`).
    pub fn spend_key(&self, owner: SpendOwner<'_>, period: &str) -> String {
        match owner {
            SpendOwner::Tenant(tenant) => {
                format!(
                    "{}:tenant:{}:spend:{period}",
                    self.redis,
                    tenant_tag(tenant)
                )
            }
            SpendOwner::Agent(agent) => {
                format!("{}:agent:{{a:{agent}}}:spend:{period}", self.redis)
            }
        }
    }

    /// Fanout exchange for control broadcasts to every worker (cancellations).
    pub fn control_exchange(&self) -> String {
        format!("{}.control", self.amqp)
    }

    /// The lease on a job: `{owner}:{fencing token}`, with an expiry of its own (so it is not
    /// a field of the job's hash). Tagged like [`Self::job_key`].
    pub fn lease_key(&self, id: Uuid) -> String {
        format!("{}:lease:{{{id}}}", self.redis)
    }

    /// A tenant's Idempotency-Key. The tenant's tag comes first, so braces in the client's
    /// key cannot make a tag of their own.
    pub fn idempotency_key(&self, tenant: &str, key: &str) -> String {
        format!("{}:idem:{}:{key}", self.redis, tenant_tag(tenant))
    }

    /// A tenant's audit trail: a Redis stream, trimmed to a configured length.
    pub fn audit_stream(&self, tenant: &str) -> String {
        format!("{}:audit:{}", self.redis, tenant_tag(tenant))
    }

    /// Pattern matching every key of this deployment (used by tests to clean up; on a cluster,
    /// `SCAN` it on every master).
    pub fn redis_pattern(&self) -> String {
        format!("{}:*", self.redis)
    }
}

#[cfg(test)]
mod slots;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_namespaced_by_prefix() {
        let names = Names::new("af1", "af2");
        let id = Uuid::nil();
        assert_eq!(names.agent_queue("sum"), "af1.jobs.sum");
        assert_eq!(names.work_exchange(), "af1.work");
        assert_eq!(names.delay_queue(1000), "af1.delay.1000ms");
        assert_eq!(names.job_key(id), format!("af2:job:{{{id}}}"));
        assert_eq!(names.lease_key(id), format!("af2:lease:{{{id}}}"));
        assert_eq!(
            names.rate_key(LimitScope::Agent("sum"), RateKind::Tokens),
            "af2:rl:{l:agent:sum}:tokens"
        );
        assert_eq!(
            names.rate_key(LimitScope::Pool("openai"), RateKind::Requests),
            "af2:rl:{l:pool:openai}:requests"
        );
        assert_eq!(
            names.pause_key(LimitScope::Pool("openai")),
            "af2:pause:{l:pool:openai}"
        );
        assert_eq!(names.running_key("acme"), "af2:tenant:{t:acme}:running");
        assert_eq!(
            names.idempotency_key("acme", "k{x}"),
            "af2:idem:{t:acme}:k{x}"
        );
        assert_eq!(
            names.spend_key(SpendOwner::Agent("sum"), "2026-11"),
            "af2:agent:{a:sum}:spend:2026-11"
        );
    }

    #[test]
    fn agent_routing_keys_never_collide_with_webhooks() {
        let names = Names::new("p", "p");
        assert_ne!(
            names.agent_routing_key("webhooks"),
            names.webhook_routing_key()
        );
    }
}
