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
    first_call: Option<Duration>,
    ramp: Option<f64>,
    /// When each wave of C calls began and when its last call began.
    waves: Vec<(f64, f64)>,
    last_call: Option<f64>,
    last_webhook: Option<Duration>,
    failed: usize,
    /// First webhook attempts made inline by the run, and handed to the webhook queue.
    webhooks_inline: u64,
    webhooks_queued: u64,
    /// CPU of every process from the worker's spawn to the last webhook.
    cpu: CpuUse,
}

/// The scenario runs once per way of speaking HTTP to the provider: HTTP/2 (what a worker
/// uses with a hosted provider over TLS, which offers it: every call on one connection) and
/// HTTP/1.1 (one connection per call in flight, e.g. a plain-http local model server).
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
        let ratio = m.makespan / m.ideal;
        let peak_hwm_mb = m.hwm as f64 / MB;
        rows.push(
            Row::new(&format!("makespan, {label}"), m.makespan, "s")
                .display(format!(
                    "{label}: makespan {:.2} s ({n} jobs, C = {c}, 1 s each)",
                    m.makespan
                ))
                .baseline("ideal ⌈N/C⌉ × 1 s", m.ideal, "s")
                .goal("≤ 1.1", ratio <= 1.1),
        );
        rows.push(
            Row::new(&format!("worker peak RSS, {label}"), peak_hwm_mb, "MB")
                .display(format!(
                    "{label}: worker peak RSS (VmHWM) {peak_hwm_mb:.1} MB; {:.1} MB at {} runs in flight",
                    m.rss_at_peak as f64 / MB,
                    m.peak_in_flight
                ))
                .goal("≤ 100 MB", peak_hwm_mb <= 100.0),
        );
        let waves_text: Vec<String> = m
            .waves
            .iter()
            .map(|(first, last)| format!("{first:.2}–{last:.2}"))
            .collect();
        notes.push(format!(
            "{label}: enqueued in {:.1} s before the worker started. From the worker's spawn: first provider call at {:.0} ms, call #{c} at {:.2} s, waves of {c} calls began (first–last call) at {} s, last call at {:.2} s, last job finished at {:.2} s, last webhook at {:.2} s.",
            m.enqueue.as_secs_f64(),
            m.first_call.map_or(f64::NAN, |d| d.as_secs_f64() * 1e3),
            m.ramp.unwrap_or(f64::NAN),
            waves_text.join(" / "),
            m.last_call.unwrap_or(f64::NAN),
            m.makespan,
            m.last_webhook.map_or(f64::NAN, |d| d.as_secs_f64()),
        ));
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
        details.insert(
            label.to_owned(),
            json!({
                "enqueue_secs": m.enqueue.as_secs_f64(),
                "makespan_secs": m.makespan,
                "ideal_secs": m.ideal,
                "ratio": ratio,
                "first_call_ms": m.first_call.map(|d| d.as_secs_f64() * 1e3),
                "call_c_started_secs": m.ramp,
                "waves_secs": m.waves,
                "last_call_secs": m.last_call,
                "last_webhook_secs": m.last_webhook.map(|d| d.as_secs_f64()),
                "peak_in_flight": m.peak_in_flight,
                "worker_vmhwm_bytes": m.hwm,
                "worker_rss_at_peak_bytes": m.rss_at_peak,
                "failed_jobs": m.failed,
                "cpu": m.cpu,
                "webhooks_inline": m.webhooks_inline,
                "webhooks_queued": m.webhooks_queued,
            }),
        );
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

    // Sample the worker's memory and the runs in flight (as the stub sees them).
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = tokio::spawn({
        let stop = stop.clone();
        let llm = fleet.app.llm.clone();
        let model = fleet.model.clone();
        async move {
            let (mut peak_in_flight, mut rss_at_peak, mut max_rss) = (0u64, 0u64, 0u64);
            while !stop.load(Ordering::Relaxed) {
                let in_flight = llm.in_flight(&model);
                if let Some(mem) = procfs::memory(pid) {
                    max_rss = max_rss.max(mem.rss);
                    if in_flight >= peak_in_flight {
                        peak_in_flight = in_flight;
                        rss_at_peak = rss_at_peak.max(mem.rss);
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (peak_in_flight, rss_at_peak, max_rss)
        }
    });
    let waited = fleet.wait_webhooks_for(0, n, Duration::from_secs(60)).await;
    let hwm = procfs::memory(pid).map(|m| m.hwm).unwrap_or_default();
    let cpu = meter.finish();
    stop.store(true, Ordering::Relaxed);
    let (peak_in_flight, rss_at_peak, _max_rss) = sampler.await?;
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
    let mut call_starts: Vec<Instant> = fleet.app.llm.calls().iter().map(|c| c.at).collect();
    call_starts.sort();
    let since_spawn = |at: &Instant| at.duration_since(spawned).as_secs_f64();
    let first_call = call_starts.first().map(|at| at.duration_since(spawned));
    // Wave k is calls k·C to k·C + C − 1.
    let waves: Vec<(f64, f64)> = call_starts
        .chunks(usize::from(c))
        .filter_map(|wave| Some((since_spawn(wave.first()?), since_spawn(wave.last()?))))
        .collect();
    let ramp = call_starts.get(usize::from(c) - 1).map(since_spawn);
    let last_call = call_starts.last().map(since_spawn);
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
        first_call,
        ramp,
        waves,
        last_call,
        last_webhook,
        failed,
        webhooks_inline,
        webhooks_queued,
        cpu,
    })
}
