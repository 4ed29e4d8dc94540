//! Scenario 3, Slow-LLM concurrency: N jobs already queued, a stub that takes 1 s, one worker
//! process with agent concurrency C. The makespan (worker started → last job finished, from the job
//! records) against the ideal ⌈N/C⌉ × 1 s, and the worker's peak RSS with C runs in flight.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use serde_json::json;

use agentfleet_tests::AgentSpec;

use crate::fleet::{finished_at, succeeded, Fleet, FleetOptions};
use crate::procfs;
use crate::report::{Outcome, Row};
use crate::suite::Ctx;

const MB: f64 = 1e6;

pub async fn run(ctx: &Ctx) -> anyhow::Result<Outcome> {
    let s = &ctx.settings;
    let n = s.slow_jobs;
    let c = s.slow_concurrency;
    let mut agent = AgentSpec::new("slow");
    agent.concurrency = c;
    agent.timeout_secs = 30;
    let mut fleet = Fleet::start(&ctx.bins, FleetOptions::new(agent, s.slow_latency, 0)).await?;

    let enqueue_started = Instant::now();
    fleet.submit_many(n, s.clients).await?;
    let enqueue = enqueue_started.elapsed();

    let spawned = Instant::now();
    let spawned_wall = Utc::now();
    let pid = fleet.spawn_worker()?;

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
    stop.store(true, Ordering::Relaxed);
    let (peak_in_flight, rss_at_peak, _max_rss) = sampler.await?;
    waited?;

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
    let first_call = call_starts.first().map(|at| at.duration_since(spawned));
    // When each wave of C calls began: wave k starts with call k·C.
    let wave_starts: Vec<f64> = call_starts
        .iter()
        .step_by(usize::from(c))
        .map(|at| at.duration_since(spawned).as_secs_f64())
        .collect();
    let ramp = call_starts
        .get(usize::from(c) - 1)
        .map(|at| at.duration_since(spawned).as_secs_f64());
    let makespan = (last_finished - spawned_wall)
        .to_std()
        .unwrap_or_default()
        .as_secs_f64();
    let waves = n.div_ceil(usize::from(c));
    let ideal = waves as f64 * s.slow_latency.as_secs_f64();
    let ratio = makespan / ideal;
    let peak_hwm_mb = hwm as f64 / MB;
    drop(fleet);

    let rows = vec![
        Row::new("makespan", makespan, "s")
            .display(format!(
                "makespan {makespan:.2} s ({n} jobs, C = {c}, 1 s each)"
            ))
            .baseline("ideal ⌈N/C⌉ × 1 s", ideal, "s")
            .goal("≤ 1.1", ratio <= 1.1),
        Row::new("worker peak RSS", peak_hwm_mb, "MB")
            .display(format!(
                "worker peak RSS (VmHWM): {peak_hwm_mb:.1} MB; {:.1} MB at {peak_in_flight} runs in flight",
                rss_at_peak as f64 / MB
            ))
            .goal("≤ 100 MB", peak_hwm_mb <= 100.0),
    ];
    let waves_text: Vec<String> = wave_starts.iter().map(|t| format!("{t:.2}")).collect();
    let mut notes = vec![format!(
        "Enqueued in {:.1} s before the worker started. From the worker's spawn: first provider call at {:.0} ms, call #{c} at {:.2} s, waves of {c} calls began at {} s, last job finished at {makespan:.2} s, last webhook at {:.2} s.",
        enqueue.as_secs_f64(),
        first_call.map_or(f64::NAN, |d| d.as_secs_f64() * 1e3),
        ramp.unwrap_or(f64::NAN),
        waves_text.join(" / "),
        last_webhook.map_or(f64::NAN, |d| d.as_secs_f64()),
    )];
    if peak_in_flight < u64::from(c) {
        notes.push(format!(
            "Only {peak_in_flight} runs were seen in flight at once, not {c}."
        ));
    }
    if failed > 0 {
        notes.push(format!("{failed} jobs failed instead of succeeding."));
    }
    Ok(Outcome {
        rows,
        notes,
        details: json!({
            "jobs": n,
            "concurrency": c,
            "stub_latency_secs": s.slow_latency.as_secs_f64(),
            "enqueue_secs": enqueue.as_secs_f64(),
            "makespan_secs": makespan,
            "ideal_secs": ideal,
            "ratio": ratio,
            "first_call_ms": first_call.map(|d| d.as_secs_f64() * 1e3),
            "call_c_started_secs": ramp,
            "wave_starts_secs": wave_starts,
            "last_webhook_secs": last_webhook.map(|d| d.as_secs_f64()),
            "peak_in_flight": peak_in_flight,
            "worker_vmhwm_bytes": hwm,
            "worker_rss_at_peak_bytes": rss_at_peak,
            "failed_jobs": failed,
        }),
    })
}
