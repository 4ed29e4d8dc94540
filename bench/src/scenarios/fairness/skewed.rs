//! Scenario 9, second case: five tenants with skewed loads queue their backlogs on one agent
//! before any worker runs, then the workers start and run everything. Jain's index over the
//! jobs each tenant got done in the contended window, once with per-tenant queues and once
//! with `fairness: fifo`, each on a fleet of its own (so that the backlog is all queued when
//! the workers start).

use std::time::Duration;

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use futures_util::StreamExt as _;
use serde::Serialize;

use super::share::{contended, interleaved, jain_of_counts};
use super::{agent, Finished, Mode};
use crate::fleet::{Fleet, FleetOptions, Sent};
use crate::stats::round3;
use crate::suite::{Ctx, Settings};

/// The tenants, heaviest load first (`acme` and `globex` are every fleet's).
pub const TENANTS: [&str; 5] = ["acme", "globex", "initech", "umbrella", "hooli"];

/// How long the whole run may take to be delivered: the full backlogs run in about four
/// seconds.
const WITHIN: Duration = Duration::from_secs(60);

/// One run of the skewed loads.
#[derive(Debug, Clone, Serialize)]
pub struct Skewed {
    pub agent: &'static str,
    /// Jobs queued per tenant, in the order of [`TENANTS`].
    pub backlogs: Vec<usize>,
    /// Jobs finished per tenant in the contended window.
    pub completions: Vec<usize>,
    /// The tenant whose last job ended the window.
    pub first_out: &'static str,
    /// First job started → the window's end.
    pub window_secs: f64,
    /// First job started → last job finished.
    pub elapsed_secs: f64,
    pub jain: f64,
    pub failed: usize,
}

pub async fn measure(ctx: &Ctx, mode: Mode) -> anyhow::Result<Skewed> {
    let s = &ctx.settings;
    let options =
        FleetOptions::new(agent(s, mode), s.fairness_latency, 0).with_tenants(&TENANTS[2..]);
    let mut fleet = Fleet::start(&ctx.bins, options).await?;
    let sent = submit(&fleet, s, mode.agent).await?;
    for _ in 0..s.fairness_workers {
        fleet.spawn_worker()?;
    }
    for index in 0..s.fairness_workers {
        fleet.wait_worker_ready(index).await?;
    }
    fleet.wait_webhooks_for(0, sent.len(), WITHIN).await?;
    let deliveries = fleet.deliveries_by_job();
    let jobs = sent
        .iter()
        .map(|job| {
            deliveries
                .get(&job.id)
                .and_then(Finished::of)
                .with_context(|| format!("no finished webhook for job {}", job.id))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    Skewed::of(mode.agent, &s.fairness_skewed, &jobs)
}

/// Every tenant's backlog, POSTed in the order [`interleaved`] gives: as if each tenant
/// submitted at its own steady pace over the same stretch, which is the order a shared
/// queue serves them in.
async fn submit(fleet: &Fleet, s: &Settings, agent: &str) -> anyhow::Result<Vec<Sent>> {
    let clients = TENANTS
        .iter()
        .map(|tenant| fleet.client_as(tenant, agent))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let arrivals = interleaved(&s.fairness_skewed);
    futures_util::stream::iter(arrivals.into_iter().enumerate())
        .map(|(i, tenant)| {
            let client = clients[tenant].clone();
            let input = format!("{} job {i}", TENANTS[tenant]);
            async move { client.submit_input(i, &input).await }
        })
        .buffer_unordered(s.clients)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect()
}

impl Skewed {
    fn of(agent: &'static str, backlogs: &[usize], jobs: &[Finished]) -> anyhow::Result<Self> {
        let mut finishes: Vec<Vec<DateTime<Utc>>> = vec![Vec::new(); TENANTS.len()];
        for job in jobs {
            let tenant = TENANTS
                .iter()
                .position(|t| *t == job.tenant)
                .with_context(|| format!("a job of an unknown tenant {}", job.tenant))?;
            finishes[tenant].push(job.finished);
        }
        let window = contended(&finishes).context("a tenant finished no job")?;
        let first_start = jobs.iter().map(|j| j.started).min().context("no jobs")?;
        let last_finish = jobs.iter().map(|j| j.finished).max().context("no jobs")?;
        Ok(Self {
            agent,
            backlogs: backlogs.to_vec(),
            jain: jain_of_counts(&window.completions).context("no completions")?,
            first_out: TENANTS[window.first_out],
            completions: window.completions,
            window_secs: round3(super::ms_between(first_start, window.end) / 1e3),
            elapsed_secs: round3(super::ms_between(first_start, last_finish) / 1e3),
            failed: jobs.iter().filter(|j| !j.succeeded).count(),
        })
    }
}
