//! Scenario 2, Overhead latency: at a light open-loop load, with the stub answering after L, how
//! long agentfleet adds to a job: webhook received − POST sent − L. The job record's timestamps
//! split it into legs (intake, to the run's start, around the provider call, to the webhook).

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::json;

use agentfleet_tests::AgentSpec;

use crate::fleet::{Fleet, FleetOptions, Sent};
use crate::load::open_loop;
use crate::report::{Outcome, Row};
use crate::stats::{ms, Percentiles};
use crate::suite::Ctx;

pub async fn run(ctx: &Ctx) -> anyhow::Result<Outcome> {
    let s = &ctx.settings;
    let latency = s.latency_stub;
    let mut fleet = Fleet::start(
        &ctx.bins,
        FleetOptions::new(AgentSpec::new("bench"), latency, 1),
    )
    .await?;
    let warmup = 20;
    fleet.submit_many(warmup, 4).await?;
    fleet
        .wait_webhooks_for(0, warmup, Duration::from_secs(30))
        .await?;
    let before = fleet.app.receiver.count();

    let client = fleet.client();
    let results = open_loop(s.latency_jobs, s.latency_rate, |i| {
        let client = client.clone();
        async move { client.submit(i).await }
    })
    .await;
    let sent: Vec<Sent> = results.into_iter().collect::<anyhow::Result<_>>()?;
    fleet
        .wait_webhooks_for(before, sent.len(), Duration::from_secs(30))
        .await?;
    let deliveries = fleet.deliveries_by_job();

    let l_ms = ms(&latency);
    let mut overhead = Vec::new();
    let mut post = Vec::new();
    let (mut intake, mut to_start, mut around_call, mut to_webhook) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for job in &sent {
        let d = deliveries
            .get(&job.id)
            .ok_or_else(|| anyhow::anyhow!("no webhook for job {}", job.id))?;
        let total = d.at.duration_since(job.at);
        overhead.push(ms(&total) - l_ms);
        post.push(ms(&job.answered));
        let received = job.wall + chrono::Duration::from_std(total)?;
        let data = d.event.as_ref().map(|e| &e["data"]);
        let stamp =
            |field: &str| -> Option<DateTime<Utc>> { data?.get(field)?.as_str()?.parse().ok() };
        if let (Some(created), Some(started), Some(finished)) = (
            stamp("created_at"),
            stamp("started_at"),
            stamp("finished_at"),
        ) {
            let between = |a: DateTime<Utc>, b: DateTime<Utc>| {
                (b - a).num_microseconds().unwrap_or_default() as f64 / 1e3
            };
            intake.push(between(job.wall, created));
            to_start.push(between(created, started));
            around_call.push(between(started, finished) - l_ms);
            to_webhook.push(between(finished, received));
        }
    }
    let p = Percentiles::of_ms(&overhead).ok_or_else(|| anyhow::anyhow!("no samples"))?;
    let post_p = Percentiles::of_ms(&post);
    let legs = [
        ("POST sent → record created", Percentiles::of_ms(&intake)),
        (
            "created → run started (store, publish+confirm, delivery, load)",
            Percentiles::of_ms(&to_start),
        ),
        (
            "started → finished, less L (mark running, provider call, store)",
            Percentiles::of_ms(&around_call),
        ),
        (
            "finished → webhook received (hand-off+confirm, delivery, sign, POST)",
            Percentiles::of_ms(&to_webhook),
        ),
    ];
    let mut rows = vec![Row::new("overhead p99", p.p99_ms, "ms")
        .display(format!(
            "overhead p50 / p95 / p99: {:.1} / {:.1} / {:.1} ms",
            p.p50_ms, p.p95_ms, p.p99_ms
        ))
        .goal("p99 ≤ 10 ms", p.p99_ms <= 10.0)];
    if let Some(post_p) = post_p {
        rows.push(
            Row::new("POST→202 p99", post_p.p99_ms, "ms")
                .display(format!(
                    "POST→202 p50 / p99: {:.1} / {:.1} ms",
                    post_p.p50_ms, post_p.p99_ms
                ))
                .info("—"),
        );
    }
    let split: Vec<String> = legs
        .iter()
        .filter_map(|(name, p)| p.map(|p| format!("{name} {:.1} / {:.1}", p.p50_ms, p.p99_ms)))
        .collect();
    let notes = vec![format!(
        "{} jobs at {}/s, L = {} ms; legs from the record's timestamps, p50 / p99 ms: {}.",
        sent.len(),
        s.latency_rate,
        l_ms,
        split.join("; ")
    )];
    Ok(Outcome {
        rows,
        notes,
        details: json!({
            "jobs": sent.len(),
            "rate_per_sec": s.latency_rate,
            "stub_latency_ms": l_ms,
            "overhead": p,
            "post_to_202": post_p,
            "legs": legs.iter().map(|(name, p)| json!({"leg": name, "ms": p})).collect::<Vec<_>>(),
        }),
    })
}
