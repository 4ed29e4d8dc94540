//! Scenario 7, Soak (`--soak`): a moderate open-loop load for a long time (30 min by default)
//! through one dispatcher and one worker; their resident memory and open sockets, sampled
//! throughout, must stay flat once warm, and every job must be delivered.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::json;

use agentfleet_tests::AgentSpec;

use crate::fleet::{Fleet, FleetOptions};
use crate::load::open_loop;
use crate::procfs;
use crate::report::{Outcome, Row};
use crate::suite::Ctx;

const MB: f64 = 1e6;
/// Growth allowed between the first and the last quarter (after warm-up) of the run.
const RSS_GROWTH_LIMIT: f64 = 1.10;
/// Sockets that may come and go (pool churn) without counting as a leak.
const SOCKET_SLACK: usize = 4;

#[derive(Debug, Clone, Copy, Default, Serialize)]
struct Sample {
    at_secs: f64,
    worker_rss: u64,
    worker_sockets: usize,
    dispatcher_rss: u64,
    dispatcher_sockets: usize,
    webhooks: usize,
}

pub async fn run(ctx: &Ctx) -> anyhow::Result<Outcome> {
    let s = &ctx.settings;
    let duration = s.soak.unwrap_or(Duration::from_secs(1800));
    let n = (duration.as_secs_f64() * s.soak_rate) as usize;
    let mut agent = AgentSpec::new("soak");
    agent.concurrency = 64;
    let mut fleet = Fleet::start(&ctx.bins, FleetOptions::new(agent, s.soak_latency, 1)).await?;
    let worker = fleet.worker_pids()[0];
    let dispatcher = fleet.dispatcher_pid();

    let samples = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let sampler = tokio::spawn({
        let samples = samples.clone();
        let stop = stop.clone();
        let receiver = fleet.app.receiver.clone();
        let every = s.soak_sample_every;
        async move {
            while !stop.load(Ordering::Relaxed) {
                let w = procfs::memory(worker).unwrap_or_default();
                let d = procfs::memory(dispatcher).unwrap_or_default();
                let sample = Sample {
                    at_secs: started.elapsed().as_secs_f64(),
                    worker_rss: w.rss,
                    worker_sockets: procfs::sockets(worker).unwrap_or_default(),
                    dispatcher_rss: d.rss,
                    dispatcher_sockets: procfs::sockets(dispatcher).unwrap_or_default(),
                    webhooks: receiver.count(),
                };
                samples
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .push(sample);
                tokio::time::sleep(every).await;
            }
        }
    });

    let client = fleet.client();
    let results = open_loop(n, s.soak_rate, |i| {
        let client = client.clone();
        async move { client.submit(i).await.is_ok() }
    })
    .await;
    let accepted = results.iter().filter(|&&ok| ok).count();
    let delivered = fleet
        .wait_webhooks_for(0, accepted, Duration::from_secs(120))
        .await;
    stop.store(true, Ordering::Relaxed);
    sampler.await?;
    delivered?;
    fleet.check_alive()?;
    drop(fleet);

    let samples = samples
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    // Warm-up: the first tenth of the run, at most two minutes.
    let warm = (duration.as_secs_f64() / 10.0).min(120.0);
    let steady: Vec<Sample> = samples
        .iter()
        .copied()
        .filter(|x| x.at_secs >= warm && x.at_secs <= duration.as_secs_f64())
        .collect();
    if steady.len() < 4 {
        anyhow::bail!("only {} samples after warm-up", steady.len());
    }
    let quarter = steady.len() / 4;
    let (first, last) = (&steady[..quarter], &steady[steady.len() - quarter..]);
    let mean = |xs: &[Sample], f: fn(&Sample) -> u64| {
        xs.iter().map(f).sum::<u64>() as f64 / xs.len() as f64
    };
    let max = |xs: &[Sample], f: fn(&Sample) -> usize| xs.iter().map(f).max().unwrap_or(0);

    let mut rows = Vec::new();
    for (name, rss) in [
        ("worker", (|x: &Sample| x.worker_rss) as fn(&Sample) -> u64),
        ("dispatcher", |x: &Sample| x.dispatcher_rss),
    ] {
        let (a, b) = (mean(first, rss) / MB, mean(last, rss) / MB);
        rows.push(
            Row::new(&format!("{name} RSS, last quarter"), b, "MB")
                .display(format!("{name} RSS: {a:.1} → {b:.1} MB"))
                .baseline("first quarter", a, "MB")
                .goal(
                    &format!("≤ {RSS_GROWTH_LIMIT:.2} (flat)"),
                    b <= a * RSS_GROWTH_LIMIT,
                ),
        );
    }
    for (name, sockets) in [
        (
            "worker",
            (|x: &Sample| x.worker_sockets) as fn(&Sample) -> usize,
        ),
        ("dispatcher", |x: &Sample| x.dispatcher_sockets),
    ] {
        let (a, b) = (max(first, sockets), max(last, sockets));
        rows.push(
            Row::new(&format!("{name} open sockets, last quarter"), b as f64, "")
                .display(format!("{name} open sockets (max): {a} → {b}"))
                .baseline("first quarter", a as f64, "")
                .goal(
                    &format!("no growth (+{SOCKET_SLACK})"),
                    b <= a + SOCKET_SLACK,
                ),
        );
    }
    rows.push(
        Row::new("jobs delivered", accepted as f64, "")
            .display(format!("{accepted} of {n} jobs accepted and delivered"))
            .goal("all", accepted == n),
    );
    let notes = vec![format!(
        "{:.0} min at {}/s, stub latency {} ms, {} samples; warm-up of {warm:.0} s excluded.",
        duration.as_secs_f64() / 60.0,
        s.soak_rate,
        s.soak_latency.as_millis(),
        samples.len()
    )];
    Ok(Outcome {
        rows,
        notes,
        details: json!({
            "duration_secs": duration.as_secs_f64(),
            "rate_per_sec": s.soak_rate,
            "jobs": n,
            "accepted": accepted,
            "samples": samples,
        }),
    })
}
