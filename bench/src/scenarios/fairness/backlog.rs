//! Scenario 9, first case: tenant B's few jobs queued behind tenant A's backlog on an agent
//! whose workers are already running, once with per-tenant queues (the default) and once on
//! an agent with `fairness: fifo`, one after the other on the same fleet (each agent has its
//! own slots; only one of them has work at a time).

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Context as _;
use serde::Serialize;

use agentfleet_stub::receiver::Delivery;

use super::{agent, Finished, Mode, MODES};
use crate::fleet::{Fleet, FleetOptions, OtherAgent, Sent};
use crate::stats::{round3, Percentiles};
use crate::suite::{Ctx, Settings};

/// The tenant with the backlog and the tenant with a few jobs.
const TENANT_A: &str = "acme";
const TENANT_B: &str = "globex";

/// How long the backlog and B's jobs may take to be delivered: the full backlog runs in about
/// five seconds.
const WITHIN: Duration = Duration::from_secs(60);

/// B's few jobs behind A's backlog on one agent.
#[derive(Debug, Clone, Serialize)]
pub struct Behind {
    pub agent: &'static str,
    pub backlog: usize,
    pub few: usize,
    /// A's jobs not yet started when B's first job was created: the queue B joined.
    pub backlog_ahead: usize,
    /// B's jobs, `created_at` → `started_at`.
    pub queue_wait: Percentiles,
    /// B's jobs, POST sent → `finished_at`.
    pub submit_to_finish: Percentiles,
    /// A's jobs that finished before B's last one did.
    pub backlog_finished_first: usize,
    /// A's first job created → the last job of either tenant finished.
    pub elapsed_secs: f64,
    pub failed: usize,
}

/// Runs the case on the fair agent, then on the fifo one.
pub async fn measure(ctx: &Ctx) -> anyhow::Result<Vec<Behind>> {
    let s = &ctx.settings;
    let [fair, fifo] = MODES;
    let options = FleetOptions::new(agent(s, fair), s.fairness_latency, s.fairness_workers)
        .with_agent(OtherAgent {
            spec: agent(s, fifo),
            own_llm: None,
        });
    let mut fleet = Fleet::start(&ctx.bins, options).await?;
    let mut cases = Vec::new();
    for mode in MODES {
        cases.push(behind(&mut fleet, s, mode).await?);
    }
    Ok(cases)
}

/// A submits its backlog, then B its few jobs at once; every job runs to its webhook.
async fn behind(fleet: &mut Fleet, s: &Settings, mode: Mode) -> anyhow::Result<Behind> {
    let before = fleet.webhook_count();
    let a = fleet.client_as(TENANT_A, mode.agent)?;
    let b = fleet.client_as(TENANT_B, mode.agent)?;
    let backlog = a
        .submit_many(s.fairness_backlog, s.clients, |i| format!("a{i}"))
        .await?;
    let few = b
        .submit_many(s.fairness_few, s.fairness_few, |i| format!("b{i}"))
        .await?;
    fleet
        .wait_webhooks_for(before, backlog.len() + few.len(), WITHIN)
        .await?;
    let deliveries = fleet.deliveries_by_job();
    let a_jobs = finished(&deliveries, &backlog)?;
    let b_jobs = finished(&deliveries, &few)?;
    Behind::of(mode.agent, &a_jobs, &b_jobs, &few)
}

/// The records of the jobs `sent`, from their webhooks.
fn finished(
    deliveries: &HashMap<String, Delivery>,
    sent: &[Sent],
) -> anyhow::Result<Vec<Finished>> {
    sent.iter()
        .map(|job| {
            let delivery = deliveries
                .get(&job.id)
                .with_context(|| format!("no webhook for job {}", job.id))?;
            Finished::of(delivery).with_context(|| format!("job {} has no times", job.id))
        })
        .collect()
}

impl Behind {
    fn of(
        agent: &'static str,
        a_jobs: &[Finished],
        b_jobs: &[Finished],
        b_sent: &[Sent],
    ) -> anyhow::Result<Self> {
        let b_created = b_jobs.iter().map(|j| j.created).min().context("no B job")?;
        let b_last = b_jobs
            .iter()
            .map(|j| j.finished)
            .max()
            .context("no B job")?;
        let a_created = a_jobs.iter().map(|j| j.created).min().context("no A job")?;
        let waits: Vec<f64> = b_jobs.iter().map(Finished::queue_wait_ms).collect();
        let turnarounds: Vec<f64> = b_jobs
            .iter()
            .zip(b_sent)
            .map(|(job, sent)| super::ms_between(sent.wall, job.finished))
            .collect();
        let all = a_jobs.iter().chain(b_jobs);
        Ok(Self {
            agent,
            backlog: a_jobs.len(),
            few: b_jobs.len(),
            backlog_ahead: a_jobs.iter().filter(|j| j.started > b_created).count(),
            queue_wait: Percentiles::of_ms(&waits).context("no B job")?,
            submit_to_finish: Percentiles::of_ms(&turnarounds).context("no B job")?,
            backlog_finished_first: a_jobs.iter().filter(|j| j.finished < b_last).count(),
            elapsed_secs: round3(
                all.clone()
                    .map(|j| super::ms_between(a_created, j.finished) / 1e3)
                    .fold(0.0, f64::max),
            ),
            failed: all.filter(|j| !j.succeeded).count(),
        })
    }
}
