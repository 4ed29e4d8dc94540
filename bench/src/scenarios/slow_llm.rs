//! Scenario 3, Slow-LLM concurrency: N jobs already queued, a stub that takes 1 s, one worker
//! process with agent concurrency C, once over HTTP/2 and once over HTTP/1.1. The makespan (worker started → last job finished, from the job
//! records) against the ideal ⌈N/C⌉ × 1 s, and the worker's peak RSS with C runs in flight.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use serde_json::json;

use agentfleet_common::config::HttpVersion;
use agentfleet_tests::AgentSpec;

use crate::fleet::{finished_at, succeeded, Fleet, FleetOptions};
use crate::procfs::{self, CpuMeter, CpuUse};
use crate::report::{Outcome, Row};
use crate::stats::{ms, Percentiles};
use crate::suite::Ctx;

const MB: f64 = 1e6;

/// What one run of the scenario measured.
struct Measured {
    enqueue: Duration,
    makespan: f64,
    ideal: f64,
    hwm: u64,
    rss_at_peak: u64,
    peak_in_flight: u64,
    calls: Timeline,
    last_webhook: Option<Duration>,
    failed: usize,
    /// First webhook attempts made inline by the run, and handed to the webhook queue.
    webhooks_inline: u64,
    webhooks_queued: u64,
    /// CPU of every process from the worker's spawn to the last webhook.
    cpu: CpuUse,
}

/// The scenario runs once per way of speaking HTTP to the provider: HTTP/2 (what a worker
/// uses with a hosted provider over TLS, which offers it: the stub allows 100 streams per
/// connection as hosted providers do, so the calls ride ⌈C ÷ 100⌉ connections) and HTTP/1.1
/// (one connection per call in flight, e.g. a plain-http local model server).
const TRANSPORTS: [(HttpVersion, &str); 2] = [
    (HttpVersion::Http2, "HTTP/2"),
    (HttpVersion::Http1, "HTTP/1.1"),
];

pub async fn run(ctx: &Ctx) -> anyhow::Result<Outcome> {
    let s = &ctx.settings;
    let (n, c) = (s.slow_jobs, s.slow_concurrency);
    let mut rows = Vec::new();
    let mut notes = Vec::new();
    let mut details = serde_json::Map::new();
    for (version, label) in TRANSPORTS {
        let m = measure(ctx, version).await?;
        rows.extend(m.rows(label, n, c));
        notes.extend(m.notes(label, n, c));
        details.insert(label.to_owned(), m.details());
    }
    details.insert("jobs".into(), json!(n));
    details.insert("concurrency".into(), json!(c));
    details.insert(
        "stub_latency_secs".into(),
        json!(s.slow_latency.as_secs_f64()),
    );
    Ok(Outcome {
        rows,
        notes,
        details: serde_json::Value::Object(details),
    })
}

async fn measure(ctx: &Ctx, http_version: HttpVersion) -> anyhow::Result<Measured> {
    let s = &ctx.settings;
    let n = s.slow_jobs;
    let c = s.slow_concurrency;
    let mut agent = AgentSpec::new("slow");
    agent.concurrency = c;
    agent.timeout_secs = 30;
    agent.http_version = http_version;
    let mut fleet = Fleet::start(&ctx.bins, FleetOptions::new(agent, s.slow_latency, 0)).await?;

    let enqueue_started = Instant::now();
    fleet.submit_many(n, s.clients).await?;
    let enqueue = enqueue_started.elapsed();

    let spawned = Instant::now();
    let spawned_wall = Utc::now();
    let pid = fleet.spawn_worker()?;
    let meter = CpuMeter::start(fleet.cpu_groups());

    let stop = Arc::new(AtomicBool::new(false));
    let (llm, model) = (fleet.app.llm.clone(), fleet.model.clone());
    let sampler = tokio::spawn(procfs::rss_at_peak(pid, stop.clone(), move || {
        llm.in_flight(&model)
    }));

    let waited = fleet.wait_webhooks_for(0, n, Duration::from_secs(60)).await;
    let hwm = procfs::memory(pid).map(|m| m.hwm).unwrap_or_default();
    let cpu = meter.finish();
    stop.store(true, Ordering::Relaxed);
    let (peak_in_flight, rss_at_peak) = sampler.await?;
    waited?;
    let first_attempts =
        |path: &str| format!("agentfleet_webhook_first_attempts_total{{path=\"{path}\"}}");
    let webhooks_inline = fleet
        .worker_counter(&first_attempts("inline"))
        .await?
        .unwrap_or(0);
    let webhooks_queued = fleet
        .worker_counter(&first_attempts("queued"))
        .await?
        .unwrap_or(0);

    let deliveries = fleet.deliveries_by_job();
    let last_finished = deliveries
        .values()
        .filter_map(finished_at)
        .max()
        .ok_or_else(|| anyhow::anyhow!("no finished jobs"))?;
    let failed = deliveries.values().filter(|d| !succeeded(d)).count();
    let last_webhook = deliveries
        .values()
        .map(|d| d.at)
        .max()
        .map(|at| at.duration_since(spawned));
    let calls = Timeline::of(&fleet, spawned, usize::from(c), s.slow_latency);
    let makespan = (last_finished - spawned_wall)
        .to_std()
        .unwrap_or_default()
        .as_secs_f64();
    let ideal = n.div_ceil(usize::from(c)) as f64 * s.slow_latency.as_secs_f64();
    drop(fleet);
    Ok(Measured {
        enqueue,
        makespan,
        ideal,
        hwm,
        rss_at_peak,
        peak_in_flight,
        calls,
        last_webhook,
        failed,
        webhooks_inline,
        webhooks_queued,
        cpu,
    })
}

impl Measured {
    /// The table's rows for one transport (`n` jobs at concurrency `c`).
    fn rows(&self, label: &str, n: usize, c: u16) -> Vec<Row> {
        let m = self;
        let ratio = m.makespan / m.ideal;
        let peak_hwm_mb = m.hwm as f64 / MB;
        vec![
        Row::new(&format!("makespan, {label}"), m.makespan, "s")
            .display(format!(
                "{label}: makespan {:.2} s ({n} jobs, C = {c}, 1 s each)",
                m.makespan
            ))
            .baseline("ideal ⌈N/C⌉ × 1 s", m.ideal, "s")
            .goal("≤ 1.1", ratio <= 1.1),
        Row::new(&format!("worker peak RSS, {label}"), peak_hwm_mb, "MB")
            .display(format!(
                "{label}: worker peak RSS (VmHWM) {peak_hwm_mb:.1} MB; {:.1} MB at {} runs in flight",
                m.rss_at_peak as f64 / MB,
                m.peak_in_flight
            ))
            .goal("≤ 100 MB", peak_hwm_mb <= 100.0),
        ]
    }

    /// The notes under the table: the waves' timeline, where first webhook attempts went,
    /// CPU per job, and what did not go as set up.
    fn notes(&self, label: &str, n: usize, c: u16) -> Vec<String> {
        let m = self;
        let mut notes = Vec::new();
        let waves_text: Vec<String> = m
            .calls
            .waves
            .iter()
            .map(|(first, last)| format!("{first:.2}–{last:.2}"))
            .collect();
        notes.push(format!(
            "{label}: enqueued in {:.1} s before the worker started. From the worker's spawn: first provider call at {:.0} ms, call #{c} at {:.2} s, waves of {c} calls began (first–last call) at {} s, last call at {:.2} s, last job finished at {:.2} s, last webhook at {:.2} s.",
            m.enqueue.as_secs_f64(),
            m.calls.first_call.map_or(f64::NAN, |d| d.as_secs_f64() * 1e3),
            m.calls.ramp.unwrap_or(f64::NAN),
            waves_text.join(" / "),
            m.calls.last_call.unwrap_or(f64::NAN),
            m.makespan,
            m.last_webhook.map_or(f64::NAN, |d| d.as_secs_f64()),
        ));
        if let Some(idle) = &m.calls.slot_idle {
            notes.push(format!(
                "{label}: a call slot stood empty between one call's end and the next call's start (call i + {c} against call i): p50 {:.0} ms, p95 {:.0} ms, max {:.0} ms.",
                idle.p50_ms, idle.p95_ms, idle.max_ms
            ));
        }
        notes.push(format!(
            "{label}: first webhook attempts: {} inline, {} handed to the webhook queue.",
            m.webhooks_inline, m.webhooks_queued
        ));
        notes.push(format!(
            "{label}: CPU ms per job from the worker's spawn to the last webhook: {} (while it ran: {}).",
            m.cpu.per_job_ms(n),
            m.cpu.summary()
        ));
        if m.peak_in_flight < u64::from(c) {
            notes.push(format!(
                "{label}: only {} runs were seen in flight at once, not {c}.",
                m.peak_in_flight
            ));
        }
        if m.failed > 0 {
            notes.push(format!(
                "{label}: {} jobs failed instead of succeeding.",
                m.failed
            ));
        }
        notes
    }

    /// The JSON report's figures for one transport.
    fn details(&self) -> serde_json::Value {
        let m = self;
        let ratio = m.makespan / m.ideal;
        json!({
            "enqueue_secs": m.enqueue.as_secs_f64(),
            "makespan_secs": m.makespan,
            "ideal_secs": m.ideal,
            "ratio": ratio,
            "first_call_ms": m.calls.first_call.map(|d| d.as_secs_f64() * 1e3),
            "call_c_started_secs": m.calls.ramp,
            "waves_secs": m.calls.waves,
            "last_call_secs": m.calls.last_call,
            "slot_idle": m.calls.slot_idle,
            "last_webhook_secs": m.last_webhook.map(|d| d.as_secs_f64()),
            "peak_in_flight": m.peak_in_flight,
            "worker_vmhwm_bytes": m.hwm,
            "worker_rss_at_peak_bytes": m.rss_at_peak,
            "failed_jobs": m.failed,
            "cpu": m.cpu,
            "webhooks_inline": m.webhooks_inline,
            "webhooks_queued": m.webhooks_queued,
        })
    }
}

/// When the provider calls began, from the worker's spawn.
struct Timeline {
    first_call: Option<Duration>,
    /// Seconds to the C-th call: the first wave's ramp.
    ramp: Option<f64>,
    /// Each wave of C calls (calls k·C to k·C + C − 1): when its first and its last call
    /// began, in seconds.
    waves: Vec<(f64, f64)>,
    last_call: Option<f64>,
    /// How long a call slot stood empty between waves: the (i + C)-th call's start less the
    /// i-th call's end (its start plus the stub's latency). What the turnover of a wave costs
    /// each slot; near 0 where the next run starts as soon as one ends.
    slot_idle: Option<Percentiles>,
}

impl Timeline {
    fn of(fleet: &Fleet, spawned: Instant, c: usize, latency: Duration) -> Self {
        let mut starts: Vec<Instant> = fleet.app.llm.calls().iter().map(|c| c.at).collect();
        starts.sort();
        let since_spawn = |at: &Instant| at.duration_since(spawned).as_secs_f64();
        Self {
            first_call: starts.first().map(|at| at.duration_since(spawned)),
            ramp: starts.get(c.saturating_sub(1)).map(since_spawn),
            waves: starts
                .chunks(c.max(1))
                .filter_map(|wave| Some((since_spawn(wave.first()?), since_spawn(wave.last()?))))
                .collect(),
            last_call: starts.last().map(since_spawn),
            slot_idle: Percentiles::of_ms(
                &starts
                    .iter()
                    .zip(starts.iter().skip(c.max(1)))
                    .map(|(ended, next)| ms(&next.duration_since(*ended)) - ms(&latency))
                    .collect::<Vec<_>>(),
            ),
        }
    }
}
