//! The ready depth of every job queue (each agent's shared queue and its per-tenant queues),
//! polled in the background with a passive declare, so a POST checks numbers instead of
//! asking the broker. Two decisions read them:
//! - load shedding: an agent with `max_queue_depth` refuses new jobs once all its queues
//!   together hold that many;
//! - the tenant quota `max_queued_jobs`: a tenant's queues across agents, plus what this
//!   replica accepted for it since the last poll (so one replica cannot overshoot by a poll's
//!   worth; other replicas can, by theirs).
//!
//! Each depth is also exported as `agentfleet_queue_depth{agent, tenant}` (`tenant=""` for an
//! agent's shared queue), and each agent's admissible backlog (see [`crate::backlog`]) as
//! `agentfleet_admissible_backlog{agent}`, from the same poll plus one Redis round trip.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use tokio_util::sync::CancellationToken;

use agentfleet_common::broker::{Broker, BrokerError};
use agentfleet_common::budget::{Budget, Ledgers};
use agentfleet_common::config::Config;
use agentfleet_common::live::Live;
use agentfleet_common::metrics::Metrics;
use agentfleet_common::naming::LimitScope;
use agentfleet_common::store::{Redis, StoreError};

use crate::backlog::AgentBacklog;
use crate::publish::{JobPublisher, JobsPerMessage};

const POLL_EVERY: Duration = Duration::from_millis(250);
const UNKNOWN: u64 = u64::MAX;

struct Watched {
    queue: String,
    agent: String,
    tenant: Option<String>,
    /// In jobs: the messages counted, times the jobs a message carries where the dispatcher
    /// batches this queue's jobs (see [`crate::publish`]).
    depth: AtomicU64,
    per_message: Option<Arc<JobsPerMessage>>,
}

/// What limits an agent's admissions, for its admissible backlog.
struct AgentLimits {
    agent: String,
    /// The pause key a provider's 429 sets: its pool's, else its own.
    pause_key: String,
    /// The tightest requests/min over the agent and its pool.
    per_minute: Option<u64>,
}

/// What the configuration says about these figures; replaced on a reload.
struct Policy {
    agents: Vec<AgentLimits>,
    /// Running-set key and `max_running_jobs` of each tenant that has one.
    running: Vec<(String, String, u64)>,
    /// Tenants' daily budgets, for the spend gauges.
    budgets: Vec<(String, Budget)>,
    /// `max_queue_depth` by agent.
    agent_limits: HashMap<String, u64>,
    /// `max_queued_jobs` by tenant, and what this replica accepted for it since the last poll.
    tenant_limits: HashMap<String, (u64, AtomicU64)>,
}

impl Policy {
    fn new(config: &Config) -> Self {
        let names = config.names();
        let agents = config
            .agents
            .iter()
            .map(|(name, agent)| {
                let pool = agent
                    .pool
                    .as_deref()
                    .and_then(|p| config.pools.get_key_value(p));
                let scope = pool.map_or(LimitScope::Agent(name), |(p, _)| LimitScope::Pool(p));
                let per_minute = [agent.rate_limit.as_ref(), pool.map(|(_, limit)| limit)]
                    .into_iter()
                    .flatten()
                    .map(|limit| u64::from(limit.requests_per_minute))
                    .min();
                AgentLimits {
                    agent: name.clone(),
                    pause_key: names.pause_key(scope),
                    per_minute,
                }
            })
            .collect();
        let running = config
            .tenants
            .iter()
            .filter_map(|t| {
                let max = t.quotas.max_running_jobs?;
                Some((t.id.clone(), names.running_key(&t.id), u64::from(max)))
            })
            .collect();
        let agent_limits = config
            .agents
            .iter()
            .filter_map(|(name, agent)| agent.max_queue_depth.map(|max| (name.clone(), max.into())))
            .collect();
        let tenant_limits = config
            .tenants
            .iter()
            .filter_map(|t| {
                let max = t.quotas.max_queued_jobs?;
                Some((t.id.clone(), (u64::from(max), AtomicU64::new(0))))
            })
            .collect();
        let budgets = config
            .tenants
            .iter()
            .filter_map(|t| Some((t.id.clone(), Budget::tenant_daily(config, &t.id)?)))
            .collect();
        Self {
            agents,
            running,
            budgets,
            agent_limits,
            tenant_limits,
        }
    }
}

struct Inner {
    queues: Vec<Watched>,
    policy: Live<Policy>,
    ledgers: Ledgers,
    redis: Redis,
    metrics: Arc<Metrics>,
}

/// Last seen depths (`UNKNOWN` until seen, or while the broker is unreachable).
#[derive(Clone)]
pub struct QueueDepths {
    inner: Arc<Inner>,
}

impl QueueDepths {
    pub fn new(
        config: &Config,
        publisher: &JobPublisher,
        redis: Redis,
        metrics: Arc<Metrics>,
    ) -> Self {
        let queues = config
            .agents
            .keys()
            .flat_map(|agent| {
                config.job_queues(agent).into_iter().map(|q| Watched {
                    per_message: q
                        .tenant
                        .as_deref()
                        .and_then(|tenant| publisher.jobs_per_message(agent, tenant)),
                    queue: q.queue,
                    agent: agent.clone(),
                    tenant: q.tenant,
                    depth: AtomicU64::new(UNKNOWN),
                })
            })
            .collect();
        let depths = Self {
            inner: Arc::new(Inner {
                queues,
                policy: Live::new(Policy::new(config)),
                ledgers: Ledgers::new(redis.clone(), config.names()),
                redis,
                metrics,
            }),
        };
        depths.export_budgets();
        depths
    }

    /// Takes the limits, quotas and budgets of a reloaded configuration (the set of queues
    /// stays: a reload cannot add agents or tenants).
    pub fn reload(&self, config: &Config) {
        self.inner.policy.set(Policy::new(config));
        self.export_budgets();
    }

    fn export_budgets(&self) {
        for (tenant, budget) in &self.inner.policy.get().budgets {
            self.inner
                .metrics
                .tenant_budget
                .with_label_values(&[tenant])
                .set(budget.limit_usd);
        }
    }

    /// The sum of the depths of the queues `pick` selects; `None` while any is unknown.
    fn total(&self, pick: impl Fn(&Watched) -> bool) -> Option<u64> {
        let mut total = 0u64;
        for watched in self.inner.queues.iter().filter(|w| pick(w)) {
            match watched.depth.load(Ordering::Relaxed) {
                UNKNOWN => return None,
                depth => total = total.saturating_add(depth),
            }
        }
        Some(total)
    }

    /// True when `agent` has a limit and its queues are known to be over it. An unknown depth
    /// (broker unreachable) does not shed: publishing will fail on its own.
    pub fn over_limit(&self, agent: &str) -> bool {
        self.inner
            .policy
            .get()
            .agent_limits
            .get(agent)
            .is_some_and(|&max| {
                self.total(|w| w.agent == agent)
                    .is_some_and(|depth| depth >= max)
            })
    }

    /// The tenant's `max_queued_jobs` when its queued jobs have reached it. Before the first
    /// poll (or while the broker is unreachable) only this replica's own accepts count.
    pub fn tenant_over_quota(&self, tenant: &str) -> Option<u64> {
        let policy = self.inner.policy.get();
        let (max, accepted) = policy.tenant_limits.get(tenant)?;
        let queued = self
            .total(|w| w.tenant.as_deref() == Some(tenant))
            .unwrap_or(0);
        (queued + accepted.load(Ordering::Relaxed) >= *max).then_some(*max)
    }

    /// Counts a job this replica accepted for `tenant`, until the next poll sees it.
    pub fn note_accepted(&self, tenant: &str) {
        if let Some((_, accepted)) = self.inner.policy.get().tenant_limits.get(tenant) {
            accepted.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Polls until `stop`, the first time at once.
    pub async fn poll(self, broker: Broker, stop: CancellationToken) {
        let mut first = true;
        loop {
            if !first {
                tokio::select! {
                    () = tokio::time::sleep(POLL_EVERY) => {}
                    () = stop.cancelled() => return,
                }
            }
            first = false;
            if let Err(err) = self.poll_once(&broker).await {
                tracing::debug!(error = %err, "queue depth poll failed");
                for watched in &self.inner.queues {
                    watched.depth.store(UNKNOWN, Ordering::Relaxed);
                }
                continue;
            }
            if let Err(err) = self.export_admissible().await {
                tracing::debug!(error = %err, "admissible backlog not computed");
            }
            if let Err(err) = self.export_spend().await {
                tracing::debug!(error = %err, "tenant spend not read");
            }
        }
    }

    async fn poll_once(&self, broker: &Broker) -> Result<(), BrokerError> {
        let conn = broker.connection().await?;
        let channel = conn.create_channel().await?;
        // Accepted before this poll started are in the depths it reads.
        for (_, accepted) in self.inner.policy.get().tenant_limits.values() {
            accepted.store(0, Ordering::Relaxed);
        }
        for watched in &self.inner.queues {
            let queue = channel
                .queue_declare(
                    watched.queue.as_str().into(),
                    QueueDeclareOptions {
                        passive: true,
                        ..QueueDeclareOptions::default()
                    },
                    FieldTable::default(),
                )
                .await?;
            let messages = u64::from(queue.message_count());
            let depth = watched
                .per_message
                .as_ref()
                .map_or(messages, |per_message| per_message.jobs_in(messages));
            watched.depth.store(depth, Ordering::Relaxed);
            self.inner
                .metrics
                .queue_depth
                .with_label_values(&[&watched.agent, watched.tenant.as_deref().unwrap_or("")])
                .set(i64::try_from(depth).unwrap_or(i64::MAX));
        }
        let _ = channel.close(200, "polled".into()).await;
        Ok(())
    }

    /// Sets each agent's `agentfleet_admissible_backlog` from the depths just polled, the
    /// pauses and the tenants at their running quota.
    async fn export_admissible(&self) -> Result<(), StoreError> {
        let inner = &self.inner;
        let policy = inner.policy.get();
        let now_ms = chrono::Utc::now().timestamp_millis();
        let mut pipe = redis::pipe();
        for agent in &policy.agents {
            pipe.cmd("PTTL").arg(&agent.pause_key);
        }
        for (_, key, _) in &policy.running {
            pipe.cmd("ZCOUNT")
                .arg(key)
                .arg(format!("({now_ms}"))
                .arg("+inf");
        }
        let answers: Vec<i64> = inner.redis.pipe(&pipe).await?;
        let (pauses, running) = answers.split_at(policy.agents.len().min(answers.len()));
        let at_quota: HashSet<String> = policy
            .running
            .iter()
            .zip(running)
            .filter(|((_, _, max), &held)| u64::try_from(held).is_ok_and(|held| held >= *max))
            .map(|((tenant, _, _), _)| tenant.clone())
            .collect();
        for (agent, &pause_ms) in policy.agents.iter().zip(pauses) {
            let backlog = AgentBacklog {
                ready: inner
                    .queues
                    .iter()
                    .filter(|w| w.agent == agent.agent)
                    .map(|w| (w.tenant.as_deref(), w.depth.load(Ordering::Relaxed)))
                    .filter(|(_, depth)| *depth != UNKNOWN)
                    .collect(),
                paused: pause_ms > 0,
                per_minute: agent.per_minute,
                tenants_at_quota: &at_quota,
            };
            let admissible = i64::try_from(backlog.admissible()).unwrap_or(i64::MAX);
            inner
                .metrics
                .admissible_backlog
                .with_label_values(&[&agent.agent])
                .set(admissible);
        }
        Ok(())
    }

    /// Sets `agentfleet_tenant_spend_usd` from the tenants' ledgers for today.
    async fn export_spend(&self) -> Result<(), StoreError> {
        let inner = &self.inner;
        let policy = inner.policy.get();
        if policy.budgets.is_empty() {
            return Ok(());
        }
        let budgets: Vec<Budget> = policy.budgets.iter().map(|(_, b)| b.clone()).collect();
        let spent = inner.ledgers.spent(&budgets).await?;
        for ((tenant, _), usd) in policy.budgets.iter().zip(spent) {
            inner
                .metrics
                .tenant_spend
                .with_label_values(&[tenant])
                .set(usd);
        }
        Ok(())
    }
}
