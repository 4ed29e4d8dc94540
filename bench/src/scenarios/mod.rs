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
use crate::load::Batches;
use crate::procfs::{CpuMeter, CpuUse};
use crate::stats::Percentiles;
use crate::suite::Ctx;

/// Jobs run and delivered before a throughput measurement, so connections, pools and the
/// quorum queues' leaders are warm — and, for the BullMQ peer, which gets as many, so V8 has
/// compiled its hot paths: after 100 jobs it ran 3,000 jobs at about half the rate it ran
/// 20,000, which made the short suite's ratio flatter us (1.5–2.1× where the full size gave
/// 0.8–1.2×). After 2,000 it still sped up: in turns (scenario 1), its first measured batch
/// was the slowest, and our first turn read 0.25 above our second on average over six short
/// runs; after 5,000, 0.00 over three.
pub const WARMUP_JOBS: usize = 5_000;

/// The whole path at saturation: `n` no-op jobs POSTed by `clients` concurrent clients
/// through one dispatcher process and `workers` worker processes, until every webhook has
/// arrived (in one batch or several: [`WholePathFleet`]).
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

/// Calls per job of each Redis command between two [`redis_command_calls`] (see
/// [`command_calls_between`]).
pub fn commands_per_job(
    before: &BTreeMap<String, u64>,
    after: &BTreeMap<String, u64>,
    jobs: usize,
) -> BTreeMap<String, f64> {
    command_calls_between(before, after)
        .into_iter()
        .map(|(cmd, calls)| (cmd, calls as f64 / jobs as f64))
        .collect()
}

/// Calls of each Redis command between two [`redis_command_calls`], less the `INFO` that read
/// `before` (counted once it had run).
fn command_calls_between(
    before: &BTreeMap<String, u64>,
    after: &BTreeMap<String, u64>,
) -> BTreeMap<String, u64> {
    after
        .iter()
        .filter_map(|(cmd, &after)| {
            let before = before.get(cmd).copied().unwrap_or_default();
            let own = u64::from(cmd == "info");
            let calls = after.saturating_sub(before).saturating_sub(own);
            (calls > 0).then(|| (cmd.clone(), calls))
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

/// `n` jobs through a fleet of `workers` worker processes, in one batch.
pub async fn whole_path(ctx: &Ctx, workers: usize, n: usize) -> anyhow::Result<WholePath> {
    let mut fleet = WholePathFleet::start(ctx, workers, true).await?;
    fleet.batch(n).await?;
    Ok(fleet.finish())
}

/// A fleet warmed up for the whole path, measured in batches that add up: `n` jobs POSTed,
/// then every webhook awaited, each batch from its first POST to its last webhook.
/// Scenario 1 takes turns of such batches with the BullMQ peer.
pub struct WholePathFleet {
    fleet: Fleet,
    workers: usize,
    clients: usize,
    agent_concurrency: u16,
    batches: Batches,
    latencies: Vec<Duration>,
    failed: usize,
    counted: Counters,
}

impl WholePathFleet {
    /// The fleet, after [`WARMUP_JOBS`] jobs have been run and delivered; its dispatcher with
    /// group commit if `batch_jobs` (as shipped), else one message per job.
    pub async fn start(ctx: &Ctx, workers: usize, batch_jobs: bool) -> anyhow::Result<Self> {
        let s = &ctx.settings;
        let mut agent = AgentSpec::new("bench");
        agent.concurrency = s.throughput_concurrency;
        let mut options = FleetOptions::new(agent, Duration::ZERO, workers);
        options.batch_jobs = batch_jobs;
        let mut fleet = Fleet::start(&ctx.bins, options).await?;
        fleet.submit_many(WARMUP_JOBS, s.clients).await?;
        fleet
            .wait_webhooks_for(0, WARMUP_JOBS, Duration::from_secs(30))
            .await?;
        Ok(Self {
            fleet,
            workers,
            clients: s.clients,
            agent_concurrency: s.throughput_concurrency,
            batches: Batches::default(),
            latencies: Vec::new(),
            failed: 0,
            counted: Counters::zero(),
        })
    }

    /// One measured batch of `n` jobs; its jobs/s.
    pub async fn batch(&mut self, n: usize) -> anyhow::Result<f64> {
        let before = self.fleet.app.receiver.count();
        let counters = Counters::read(&self.fleet).await?;
        let meter = CpuMeter::start(self.fleet.cpu_groups());
        let started = Instant::now();
        let sent = self.fleet.submit_many(n, self.clients).await?;
        let submitted = started.elapsed();
        self.fleet
            .wait_webhooks_for(before, n, Duration::from_secs(120))
            .await?;
        let cpu = meter.finish();
        let counted = Counters::read(&self.fleet).await?.since(&counters);
        self.counted.add(counted);

        let deliveries = self.fleet.deliveries_by_job();
        let mut last = started;
        for job in &sent {
            let Some(d) = deliveries.get(&job.id) else {
                anyhow::bail!("no webhook for job {}", job.id);
            };
            self.latencies.push(d.at.duration_since(job.at));
            last = last.max(d.at);
            self.failed += usize::from(!succeeded(d));
        }
        let elapsed = last.duration_since(started);
        Ok(self.batches.add(n, elapsed, submitted, cpu))
    }

    /// Every batch as one measurement.
    pub fn finish(self) -> WholePath {
        let n = self.batches.jobs().max(1);
        let per_job = |count: Option<u64>| count.map(|c| c as f64 / n as f64);
        WholePath {
            workers: self.workers,
            jobs: self.batches.jobs(),
            clients: self.clients,
            agent_concurrency: self.agent_concurrency,
            elapsed_secs: crate::report::secs(self.batches.elapsed()),
            jobs_per_sec: self.batches.jobs_per_sec(),
            accepted_posts_per_sec: self.batches.posts_per_sec(),
            submit_to_webhook: Percentiles::of(&self.latencies),
            failed_jobs: self.failed,
            cpu: self.batches.cpu(),
            redis_commands_per_job: self
                .counted
                .redis_calls
                .iter()
                .map(|(cmd, &calls)| (cmd.clone(), calls as f64 / n as f64))
                .collect(),
            redis_round_trips_per_job: (
                per_job(self.counted.worker_round_trips),
                per_job(self.counted.dispatcher_round_trips),
            ),
            ack_frames_per_job: per_job(self.counted.ack_frames),
            queued_webhooks_per_job: per_job(self.counted.queued_webhooks),
        }
    }
}

/// The counters a whole-path batch reads before and after itself (`None` where a binary does
/// not export one: one built before it existed, measured for a before/after).
struct Counters {
    redis_calls: BTreeMap<String, u64>,
    worker_round_trips: Option<u64>,
    dispatcher_round_trips: Option<u64>,
    ack_frames: Option<u64>,
    queued_webhooks: Option<u64>,
}

impl Counters {
    fn zero() -> Self {
        Self {
            redis_calls: BTreeMap::new(),
            worker_round_trips: Some(0),
            dispatcher_round_trips: Some(0),
            ack_frames: Some(0),
            queued_webhooks: Some(0),
        }
    }

    async fn read(fleet: &Fleet) -> anyhow::Result<Self> {
        let round_trips = fleet.redis_round_trips().await?;
        Ok(Self {
            redis_calls: redis_command_calls().await?,
            worker_round_trips: round_trips.workers,
            dispatcher_round_trips: round_trips.dispatcher,
            ack_frames: fleet.worker_counter(ACK_FRAMES).await?,
            queued_webhooks: fleet.worker_counter(QUEUED_WEBHOOKS).await?,
        })
    }

    /// What was counted from `before` to `self`.
    fn since(&self, before: &Self) -> Self {
        let delta = |after: Option<u64>, before: Option<u64>| Some(after?.saturating_sub(before?));
        Self {
            redis_calls: command_calls_between(&before.redis_calls, &self.redis_calls),
            worker_round_trips: delta(self.worker_round_trips, before.worker_round_trips),
            dispatcher_round_trips: delta(
                self.dispatcher_round_trips,
                before.dispatcher_round_trips,
            ),
            ack_frames: delta(self.ack_frames, before.ack_frames),
            queued_webhooks: delta(self.queued_webhooks, before.queued_webhooks),
        }
    }

    /// Adds what `other` counted (a count one side does not know stays unknown).
    fn add(&mut self, other: Self) {
        for (cmd, calls) in other.redis_calls {
            *self.redis_calls.entry(cmd).or_default() += calls;
        }
        let sum = |a: &mut Option<u64>, b: Option<u64>| *a = a.zip(b).map(|(a, b)| a + b);
        sum(&mut self.worker_round_trips, other.worker_round_trips);
        sum(
            &mut self.dispatcher_round_trips,
            other.dispatcher_round_trips,
        );
        sum(&mut self.ack_frames, other.ack_frames);
        sum(&mut self.queued_webhooks, other.queued_webhooks);
    }
}

/// The workers' ack frames counter (every kind).
const ACK_FRAMES: &str = "agentfleet_ack_frames_total";

/// The workers' count of events handed to the webhook queue by the run that ended the job.
const QUEUED_WEBHOOKS: &str = "agentfleet_webhook_first_attempts_total{path=\"queued\"}";

/// One side's ratio to another in each turn of a run taken in turns, as "1.02, 0.97, …":
/// `turns` holds each turn's figures by side.
pub fn ratios_per_turn<T: AsRef<[f64]>>(turns: &[T], side: usize, to: usize) -> String {
    let ratios: Vec<String> = turns
        .iter()
        .map(|turn| {
            let turn = turn.as_ref();
            format!("{:.2}", turn[side] / turn[to])
        })
        .collect();
    ratios.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_turn_reads_as_one_sides_ratio_to_another() {
        let turns = vec![[2.0, 3.0, 1.0], [1.0, 1.5, 2.0]];
        assert_eq!(ratios_per_turn(&turns, 0, 2), "2.00, 0.50");
        assert_eq!(ratios_per_turn(&turns, 1, 2), "3.00, 0.75");
        let rounds = vec![vec![4.0, 2.0]];
        assert_eq!(ratios_per_turn(&rounds, 0, 1), "2.00");
    }

    fn counters(redis: &[(&str, u64)], round_trips: Option<u64>) -> Counters {
        Counters {
            redis_calls: redis.iter().map(|(c, n)| ((*c).to_owned(), *n)).collect(),
            worker_round_trips: round_trips,
            dispatcher_round_trips: Some(10),
            ack_frames: Some(5),
            queued_webhooks: Some(0),
        }
    }

    #[test]
    fn batches_counts_add_up_and_an_unknown_count_stays_unknown() {
        let mut total = Counters::zero();
        // Two batches: counters read before and after each; `info` counts the read itself.
        let first = counters(&[("evalsha", 30), ("info", 3)], Some(40))
            .since(&counters(&[("evalsha", 10), ("info", 2)], Some(20)));
        total.add(first);
        let second = counters(&[("evalsha", 50), ("get", 4)], Some(70))
            .since(&counters(&[("evalsha", 30)], Some(40)));
        total.add(second);
        assert_eq!(total.redis_calls.get("evalsha"), Some(&40));
        assert_eq!(total.redis_calls.get("get"), Some(&4));
        assert_eq!(total.redis_calls.get("info"), None);
        assert_eq!(total.worker_round_trips, Some(50));
        assert_eq!(total.dispatcher_round_trips, Some(0));

        total.add(counters(&[], None).since(&counters(&[], Some(1))));
        assert_eq!(
            total.worker_round_trips, None,
            "one batch without it: unknown"
        );
    }
}
