//! Scenario 9, Tenant fairness: what per-tenant queues served in weighted round-robin buy
//! over one shared queue (`fairness: fifo`, the baseline, measured in the same run). Two
//! cases, each run on an agent of each kind, the stub answering after a fixed latency and
//! three worker processes serving it:
//!
//! - [`backlog`]: tenant B's few jobs behind tenant A's backlog; B's queue wait.
//! - [`skewed`]: five tenants' skewed backlogs; Jain's fairness index over what each got done
//!   while all of them still had work.

mod backlog;
mod share;
mod skewed;

use chrono::{DateTime, Utc};
use serde_json::json;

use agentfleet_stub::receiver::Delivery;
use agentfleet_tests::AgentSpec;

use crate::report::{Outcome, Row};
use crate::suite::{Ctx, Settings};
use backlog::Behind;
use skewed::Skewed;

/// An agent's way of sharing its slots between tenants.
#[derive(Debug, Clone, Copy)]
pub struct Mode {
    /// The agent's name, which says its mode.
    pub agent: &'static str,
    /// Its `fairness:`; `None` is the default (per-tenant queues).
    pub fairness: Option<&'static str>,
}

/// With fairness (the default), then the baseline.
pub const MODES: [Mode; 2] = [
    Mode {
        agent: "fair",
        fairness: None,
    },
    Mode {
        agent: "fifo",
        fairness: Some("fifo"),
    },
];

/// The agent of a mode: the concurrency per worker that makes the backlogs take seconds.
fn agent(s: &Settings, mode: Mode) -> AgentSpec {
    AgentSpec {
        concurrency: s.fairness_concurrency,
        fairness: mode.fairness,
        ..AgentSpec::new(mode.agent)
    }
}

/// A finished job as its webhook reports it.
#[derive(Debug, Clone)]
struct Finished {
    tenant: String,
    created: DateTime<Utc>,
    started: DateTime<Utc>,
    finished: DateTime<Utc>,
    succeeded: bool,
}

impl Finished {
    /// `None` when the webhook lacks the record or one of its times.
    fn of(delivery: &Delivery) -> Option<Self> {
        let event = delivery.event.as_ref()?;
        let data = &event["data"];
        let time = |field: &str| data[field].as_str()?.parse::<DateTime<Utc>>().ok();
        Some(Self {
            tenant: data["tenant"].as_str()?.to_owned(),
            created: time("created_at")?,
            started: time("started_at")?,
            finished: time("finished_at")?,
            succeeded: event["type"] == "job.succeeded",
        })
    }

    /// Created → started: the time spent queued.
    fn queue_wait_ms(&self) -> f64 {
        ms_between(self.created, self.started)
    }
}

/// Milliseconds from `from` to `to` (negative when `to` is earlier).
fn ms_between(from: DateTime<Utc>, to: DateTime<Utc>) -> f64 {
    (to - from).num_microseconds().unwrap_or(i64::MAX) as f64 / 1e3
}

pub async fn run(ctx: &Ctx) -> anyhow::Result<Outcome> {
    let s = &ctx.settings;
    let behind = backlog::measure(ctx).await?;
    let mut skewed = Vec::new();
    for mode in MODES {
        skewed.push(skewed::measure(ctx, mode).await?);
    }
    let [fair_behind, fifo_behind] = [&behind[0], &behind[1]];
    let [fair_skewed, fifo_skewed] = [&skewed[0], &skewed[1]];
    let mut rows = behind_rows(fair_behind, fifo_behind);
    rows.push(jain_row(fair_skewed, fifo_skewed));
    let mut notes = vec![method_note(s)];
    let failed: usize = behind.iter().map(|b| b.failed).sum::<usize>()
        + skewed.iter().map(|r| r.failed).sum::<usize>();
    if failed > 0 {
        notes.push(format!("{failed} jobs failed instead of succeeding."));
    }
    Ok(Outcome {
        rows,
        notes,
        details: json!({
            "workers": s.fairness_workers,
            "concurrency_per_worker": s.fairness_concurrency,
            "stub_latency_ms": s.fairness_latency.as_millis() as u64,
            "behind_backlog": behind,
            "skewed": skewed,
        }),
    })
}

/// The rows of the first case. Their ratios read as what fairness gains, fifo ÷ fair (a wait
/// and a count where less is better), where the table's other ratios are value ÷ baseline.
fn behind_rows(fair: &Behind, fifo: &Behind) -> Vec<Row> {
    let (fair_p95, fifo_p95) = (fair.queue_wait.p95_ms, fifo.queue_wait.p95_ms);
    let wait_gain = fifo_p95 / fair_p95.max(1e-3);
    let ahead_gain = fifo.backlog_finished_first as f64 / fair.backlog_finished_first.max(1) as f64;
    vec![
        Row::new("B's queue wait p95, fair", fair_p95, "ms")
            .display(format!(
                "B's queue wait (created → started), {} jobs behind A's {}: p95 {:.0} ms (p50 {:.0} ms) with per-tenant queues",
                fair.few, fair.backlog, fair_p95, fair.queue_wait.p50_ms
            ))
            .baseline(
                &format!("fifo p95 (p50 {:.0} ms)", fifo.queue_wait.p50_ms),
                fifo_p95,
                "ms",
            )
            .ratio(wait_gain)
            .goal("fifo ÷ fair ≥ 5", wait_gain >= 5.0),
        Row::new(
            "A's jobs finished before B's last, fair",
            fair.backlog_finished_first as f64,
            "jobs",
        )
        .display(format!(
            "A's jobs finished before B's last: {} of {} with per-tenant queues ({} of A's were waiting when B's arrived)",
            fair.backlog_finished_first, fair.backlog, fair.backlog_ahead
        ))
        .baseline("fifo", fifo.backlog_finished_first as f64, "jobs")
        .ratio(ahead_gain)
        .info("— (ratio fifo ÷ fair)"),
    ]
}

fn jain_row(fair: &Skewed, fifo: &Skewed) -> Row {
    let counts = |r: &Skewed| {
        r.completions
            .iter()
            .map(usize::to_string)
            .collect::<Vec<_>>()
            .join("/")
    };
    let queued = fair
        .backlogs
        .iter()
        .map(usize::to_string)
        .collect::<Vec<_>>()
        .join("/");
    Row::new("Jain's index, 5 tenants, fair", fair.jain, "")
        .display(format!(
            "Jain's index over 5 tenants ({queued} queued), contended window: {:.3} with per-tenant queues (done {} in {:.2} s)",
            fair.jain,
            counts(fair),
            fair.window_secs
        ))
        .baseline(
            &format!("fifo (done {} in {:.2} s)", counts(fifo), fifo.window_secs),
            fifo.jain,
            "",
        )
        .goal("fair ≥ 0.95", fair.jain >= 0.95)
}

fn method_note(s: &Settings) -> String {
    let loads = s
        .fairness_skewed
        .iter()
        .map(usize::to_string)
        .collect::<Vec<_>>()
        .join("/");
    let proportional = share::jain_of_counts(&s.fairness_skewed).unwrap_or(f64::NAN);
    format!(
        "Tenant fairness method: {} worker processes, agent concurrency {} each ({} slots), stub latency {} ms; each case runs on an agent with per-tenant queues (`fair`) and on one with `fairness: fifo` (`fifo`), one after the other. Behind a backlog: workers running, tenant A POSTs {} jobs, then tenant B {} at once; B's queue wait is its records' `created_at` → `started_at` (nearest rank, so p95 of 10 is the worst). Skewed loads: 5 tenants queue {loads} jobs with no worker running, POSTed interleaved in proportion to their loads (each at its own steady pace over the same stretch), then the workers start; the contended window runs from the first job's start until the first tenant to run out has its last job finished, and Jain's index J = (Σx)² / (n·Σx²) is taken over the 5 tenants' jobs finished in it (1 = equal shares, 0.2 = one tenant gets all). A shared queue serves arrivals in order, so its shares follow the loads: J ≈ {proportional:.3} for {loads}. The ratios read as what fairness gains: fifo ÷ fair for the wait and the count, fair ÷ fifo for J.",
        s.fairness_workers,
        s.fairness_concurrency,
        s.fairness_workers * usize::from(s.fairness_concurrency),
        s.fairness_latency.as_millis(),
        s.fairness_backlog,
        s.fairness_few,
    )
}
