//! Scenario 4, Dispatcher intake: accepted POSTs per second (each a Redis write and a publish with
//! a confirm) from 64 concurrent clients, with no worker draining, and their p99 latency; against
//! raw lapin publishes with confirms at the same concurrency, same message, same queue type, in the
//! same run.

use serde_json::json;

use agentfleet_tests::AgentSpec;

use crate::baseline;
use crate::bullmq;
use crate::fleet::{Fleet, FleetOptions};
use crate::load::closed_loop;
use crate::procfs::CpuMeter;
use crate::report::{Outcome, Row};
use crate::suite::Ctx;

pub async fn run(ctx: &Ctx) -> anyhow::Result<Outcome> {
    let s = &ctx.settings;
    let fleet = Fleet::start(
        &ctx.bins,
        FleetOptions::new(AgentSpec::new("bench"), std::time::Duration::ZERO, 0),
    )
    .await?;
    let client = fleet.client();
    let post = move |i| {
        let client = client.clone();
        async move { matches!(client.post(i).await, Ok((202, _))) }
    };
    closed_loop(s.clients, s.intake_warmup, post.clone()).await;
    let meter = CpuMeter::start(fleet.cpu_groups());
    let intake = closed_loop(s.clients, s.intake_window, post).await;
    let cpu = meter.finish();
    drop(fleet);

    let payload = baseline::job_payload("bench");
    let raw = baseline::publish_only(s.clients, s.intake_warmup, s.intake_window, &payload).await?;

    let ratio = intake.per_sec / raw.per_sec;
    let mut rows = vec![Row::new("accepted POSTs/s", intake.per_sec, "/s")
        .baseline("raw publish+confirm", raw.per_sec, "/s")
        .goal("≥ 0.60", ratio >= 0.6)];
    if let (Some(p), Some(r)) = (intake.latency, raw.latency) {
        rows.push(
            Row::new("POST→202 p99", p.p99_ms, "ms")
                .display(format!(
                    "POST→202 p50 / p99: {:.1} / {:.1} ms",
                    p.p50_ms, p.p99_ms
                ))
                .baseline("raw confirm p99", r.p99_ms, "ms")
                .info("—"),
        );
    }
    let mut notes = vec![format!(
        "{} clients for {} s after {} s of warm-up; CPU while measured: {}.",
        s.clients,
        s.intake_window.as_secs(),
        s.intake_warmup.as_secs(),
        cpu.summary()
    )];
    if intake.errors > 0 {
        notes.push(format!("{} POSTs were not accepted.", intake.errors));
    }
    let peer = peer_intake(ctx, intake.per_sec, &mut rows, &mut notes).await;
    Ok(Outcome {
        rows,
        notes,
        details: json!({
            "clients": s.clients,
            "window_secs": s.intake_window.as_secs_f64(),
            "dispatcher": intake,
            "raw_publish": raw,
            "cpu": cpu,
            "bullmq": peer,
        }),
    })
}

/// The BullMQ intake's row: ours against it. A peer that cannot run here (no Node) or fails is
/// said loudly; our own rows stand either way.
async fn peer_intake(
    ctx: &Ctx,
    ours: f64,
    rows: &mut Vec<Row>,
    notes: &mut Vec<String>,
) -> Option<bullmq::PeerIntake> {
    let s = &ctx.settings;
    if let Some(reason) = bullmq::unavailable() {
        eprintln!("bench: WARNING: the BullMQ peer is SKIPPED: {reason}");
        notes.push(format!("BullMQ peer SKIPPED: {reason}."));
        return None;
    }
    match bullmq::intake(&ctx.bins, s.clients, s.intake_warmup, s.intake_window).await {
        Ok(peer) => {
            rows.push(
                Row::new("accepted POSTs/s vs BullMQ", ours, "/s")
                    .baseline("BullMQ's Node intake", peer.posts_per_sec, "/s")
                    .goal("≥ 1.0", ours >= peer.posts_per_sec),
            );
            notes.push(format!(
                "BullMQ intake ({} clients, no worker): {:.0} POSTs/s, p99 {:.1} ms; CPU while measured: {}.",
                s.clients,
                peer.posts_per_sec,
                peer.p99_ms.unwrap_or_default(),
                peer.cpu.summary()
            ));
            Some(peer)
        }
        Err(err) => {
            eprintln!("bench: WARNING: the BullMQ intake failed: {err:#}");
            notes.push(format!("BullMQ intake FAILED: {err:#}."));
            None
        }
    }
}
