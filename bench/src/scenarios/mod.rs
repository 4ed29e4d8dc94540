//! One module per scenario of the suite; each starts what it measures, measures it within
//! its bounds, tears it down, and returns its rows.

pub mod agent_runs;
pub mod fairness;
pub mod intake;
pub mod latency;
pub mod rate_limit;
pub mod scaling;
pub mod slow_llm;
pub mod soak;
pub mod throughput;
pub mod token_limit;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::Serialize;

use agentfleet_tests::AgentSpec;

use crate::fleet::{succeeded, Fleet, FleetOptions};
use crate::procfs::{CpuMeter, CpuUse};
use crate::stats::Percentiles;
use crate::suite::Ctx;

/// Jobs run and delivered before a throughput measurement, so connections, pools and the
/// quorum queues' leaders are warm — and, for the BullMQ peer, which gets as many, so V8 has
/// compiled its hot paths: after 100 jobs it ran 3,000 jobs at about half the rate it ran
/// 20,000, which made the short suite's ratio flatter us (1.5–2.1× where the full size gave
/// 0.8–1.2×).
pub const WARMUP_JOBS: usize = 2_000;

/// The whole path at saturation: `n` no-op jobs POSTed by `clients` concurrent clients
/// through one dispatcher process and `workers` worker processes, until every webhook has
/// arrived.
#[derive(Debug, Clone, Serialize)]
pub struct WholePath {
    pub workers: usize,
    pub jobs: usize,
    pub clients: usize,
    pub agent_concurrency: u16,
    /// First POST to last webhook.
    pub elapsed_secs: f64,
    pub jobs_per_sec: f64,
    /// While the POSTs were going on (intake under a concurrent drain).
    pub accepted_posts_per_sec: f64,
    pub submit_to_webhook: Option<Percentiles>,
    pub failed_jobs: usize,
    pub cpu: CpuUse,
    /// Redis commands per job while measured, by command (from `INFO commandstats`; counts
    /// every client of the server, so only meaningful on a quiet machine).
    pub redis_commands_per_job: BTreeMap<String, f64>,
    /// Redis round trips per job while measured: (workers, dispatcher), from their metrics.
    pub redis_round_trips_per_job: (Option<f64>, Option<f64>),
    /// Ack frames the workers sent per job (jobs' and webhooks' deliveries), from their
    /// metrics: below 1 where acks were combined.
    pub ack_frames_per_job: Option<f64>,
    /// Jobs' events that took the webhook queue (a second broker round) rather than being
    /// delivered inline by their run, per job.
    pub queued_webhooks_per_job: Option<f64>,
}

impl WholePath {
    /// "9.0 (evalsha 4.0, get 2.0, …)".
    pub fn redis_summary(&self) -> String {
        redis_summary(&self.redis_commands_per_job)
    }
}

/// "9.0 (evalsha 4.0, get 2.0, …)": the total, then each command of at least 0.05 per job.
pub fn redis_summary(per_job: &BTreeMap<String, f64>) -> String {
    let total: f64 = per_job.values().sum();
    let mut by_count: Vec<(&String, &f64)> = per_job.iter().collect();
    by_count.sort_by(|a, b| b.1.total_cmp(a.1));
    let parts: Vec<String> = by_count
        .iter()
        .filter(|(_, &per_job)| per_job >= 0.05)
        .map(|(cmd, per_job)| format!("{cmd} {per_job:.1}"))
        .collect();
    format!("{total:.1} ({})", parts.join(", "))
}

/// Calls per job of each Redis command between two [`redis_command_calls`], less the two
/// `INFO` calls of the measurement itself.
pub fn commands_per_job(
    before: &BTreeMap<String, u64>,
    after: &BTreeMap<String, u64>,
    jobs: usize,
) -> BTreeMap<String, f64> {
    after
        .iter()
        .filter_map(|(cmd, &after)| {
            let before = before.get(cmd).copied().unwrap_or_default();
            let own = u64::from(cmd == "info");
            let calls = after.saturating_sub(before).saturating_sub(own);
            (calls > 0).then(|| (cmd.clone(), calls as f64 / jobs as f64))
        })
        .collect()
}

/// Calls per Redis command since the server started.
pub async fn redis_command_calls() -> anyhow::Result<BTreeMap<String, u64>> {
    let client = redis::Client::open(agentfleet_tests::REDIS_URL)?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut conn)
        .await?;
    Ok(info
        .lines()
        .filter_map(|line| {
            let (name, stats) = line.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = stats
                .split(',')
                .find_map(|kv| kv.strip_prefix("calls="))?
                .parse()
                .ok()?;
            Some((name.to_owned(), calls))
        })
        .collect())
}

pub async fn whole_path(ctx: &Ctx, workers: usize) -> anyhow::Result<WholePath> {
    let s = &ctx.settings;
    let n = s.throughput_jobs;
    let mut agent = AgentSpec::new("bench");
    agent.concurrency = s.throughput_concurrency;
    let mut fleet =
        Fleet::start(&ctx.bins, FleetOptions::new(agent, Duration::ZERO, workers)).await?;

    fleet.submit_many(WARMUP_JOBS, s.clients).await?;
    fleet
        .wait_webhooks_for(0, WARMUP_JOBS, Duration::from_secs(30))
        .await?;
    let before = fleet.app.receiver.count();

    let redis_before = redis_command_calls().await?;
    let round_trips_before = fleet.redis_round_trips().await?;
    let frames_before = fleet.worker_counter(ACK_FRAMES).await?;
    let queued_before = fleet.worker_counter(QUEUED_WEBHOOKS).await?;
    let meter = CpuMeter::start(fleet.cpu_groups());
    let started = Instant::now();
    let sent = fleet.submit_many(n, s.clients).await?;
    let submitted = started.elapsed();
    fleet
        .wait_webhooks_for(before, n, Duration::from_secs(120))
        .await?;
    let cpu = meter.finish();
    let redis_after = redis_command_calls().await?;
    let redis_commands_per_job = commands_per_job(&redis_before, &redis_after, n);
    let redis_round_trips_per_job = fleet
        .redis_round_trips()
        .await?
        .per_job_since(round_trips_before, n);
    let per_job_since = |before: Option<u64>, after: Option<u64>| {
        before
            .zip(after)
            .map(|(before, after)| after.saturating_sub(before) as f64 / n as f64)
    };
    let ack_frames_per_job = per_job_since(frames_before, fleet.worker_counter(ACK_FRAMES).await?);
    let queued_webhooks_per_job =
        per_job_since(queued_before, fleet.worker_counter(QUEUED_WEBHOOKS).await?);

    let deliveries = fleet.deliveries_by_job();
    let mut latencies = Vec::with_capacity(n);
    let mut last = started;
    let mut failed = 0;
    for job in &sent {
        let Some(d) = deliveries.get(&job.id) else {
            anyhow::bail!("no webhook for job {}", job.id);
        };
        latencies.push(d.at.duration_since(job.at));
        last = last.max(d.at);
        failed += usize::from(!succeeded(d));
    }
    let elapsed = last.duration_since(started);
    Ok(WholePath {
        workers,
        jobs: n,
        clients: s.clients,
        agent_concurrency: s.throughput_concurrency,
        elapsed_secs: crate::report::secs(elapsed),
        jobs_per_sec: n as f64 / elapsed.as_secs_f64(),
        accepted_posts_per_sec: n as f64 / submitted.as_secs_f64(),
        submit_to_webhook: Percentiles::of(&latencies),
        failed_jobs: failed,
        cpu,
        redis_commands_per_job,
        redis_round_trips_per_job,
        ack_frames_per_job,
        queued_webhooks_per_job,
    })
}

/// The workers' ack frames counter (every kind).
const ACK_FRAMES: &str = "agentfleet_ack_frames_total";

/// The workers' count of events handed to the webhook queue by the run that ended the job.
const QUEUED_WEBHOOKS: &str = "agentfleet_webhook_first_attempts_total{path=\"queued\"}";
