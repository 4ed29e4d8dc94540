//! Scenario 1, Throughput, whole path: no-op jobs through one dispatcher and one worker until every
//! webhook has arrived, against the broker's own ceiling measured in the same run (lapin publishing
//! with confirms and consuming with manual acks, the same message size, a quorum queue, the same
//! prefetch), and against the queue a team would pick instead: BullMQ behind a Node intake
//! (`crate::bullmq`), the same jobs, clients, stub and receiver.

use std::time::Duration;

use serde_json::json;

use crate::baseline;
use crate::bullmq;
use crate::report::{Outcome, Row};
use crate::suite::Ctx;

pub async fn run(ctx: &Ctx) -> anyhow::Result<Outcome> {
    let s = &ctx.settings;
    let whole = super::whole_path(ctx, 1).await?;
    let payload = baseline::job_payload("bench");
    let ceiling = baseline::pipeline(
        s.throughput_jobs,
        s.clients,
        // The worker's prefetch for this agent.
        agentfleet_common::config::delivery_window(s.throughput_concurrency),
        &payload,
        Duration::from_secs(60),
    )
    .await?;

    let ratio = whole.jobs_per_sec / ceiling;
    let mut rows = vec![Row::new("whole-path jobs/s", whole.jobs_per_sec, "jobs/s")
        .baseline("lapin confirm+ack pipeline", ceiling, "msg/s")
        .goal("≥ 0.50", ratio >= 0.5)];
    if let Some(p) = whole.submit_to_webhook {
        rows.push(
            Row::new("submit→webhook p99 at saturation", p.p99_ms, "ms")
                .display(format!(
                    "submit→webhook at saturation p50 / p99: {:.0} / {:.0} ms",
                    p.p50_ms, p.p99_ms
                ))
                .info("—"),
        );
    }
    let mut notes = vec![
        format!(
            "{} jobs, {} clients, agent concurrency {}, {} B job message; CPU while measured: {}.",
            whole.jobs,
            whole.clients,
            whole.agent_concurrency,
            payload.len(),
            whole.cpu.summary()
        ),
        format!("Redis commands per job: {}.", whole.redis_summary()),
        format!(
            "Redis round trips per job: worker {}, dispatcher {}.",
            per_job(whole.redis_round_trips_per_job.0),
            per_job(whole.redis_round_trips_per_job.1)
        ),
        format!("CPU ms per job: {}.", whole.cpu.per_job_ms(whole.jobs)),
        format!(
            "Ack frames per job (workers, jobs' and webhooks' deliveries): {}.",
            whole
                .ack_frames_per_job
                .map_or("not counted by this worker".to_owned(), |f| format!(
                    "{f:.2}"
                ))
        ),
        format!(
            "Events handed to the webhook queue rather than delivered inline, per job: {}.",
            whole
                .queued_webhooks_per_job
                .map_or("not counted".to_owned(), |f| format!("{f:.2}"))
        ),
    ];
    let peer = peer_rows(ctx, whole.jobs_per_sec, &mut rows, &mut notes).await;
    if whole.failed_jobs > 0 {
        notes.push(format!(
            "{} jobs failed instead of succeeding.",
            whole.failed_jobs
        ));
    }
    Ok(Outcome {
        rows,
        notes,
        details: json!({
            "whole_path": whole,
            "ceiling_msgs_per_sec": ceiling,
            "bullmq": peer,
            "message_bytes": payload.len(),
        }),
    })
}

/// The BullMQ peer's rows: its jobs/s, ours against it, and CPU per job of each. A peer that
/// cannot run here (no Node) or fails is said loudly, in the notes and on stderr; our own rows
/// stand either way.
async fn peer_rows(
    ctx: &Ctx,
    ours: f64,
    rows: &mut Vec<Row>,
    notes: &mut Vec<String>,
) -> Option<bullmq::PeerRun> {
    let s = &ctx.settings;
    if let Some(reason) = bullmq::unavailable() {
        eprintln!("bench: WARNING: the BullMQ peer is SKIPPED: {reason}");
        notes.push(format!("BullMQ peer SKIPPED: {reason}."));
        return None;
    }
    let concurrency = 64;
    let run = bullmq::throughput(
        &ctx.bins,
        s.throughput_jobs,
        s.clients,
        super::WARMUP_JOBS,
        concurrency,
    )
    .await;
    match run {
        Ok(peer) => {
            let ratio = ours / peer.jobs_per_sec;
            rows.push(
                Row::new("whole-path jobs/s vs BullMQ", ours, "jobs/s")
                    .baseline("BullMQ + Node intake", peer.jobs_per_sec, "jobs/s")
                    .goal("≥ 1.0", ratio >= 1.0),
            );
            notes.push(format!(
                "BullMQ peer ({} jobs, {} clients, worker concurrency {concurrency}): {:.0} jobs/s, intake {:.0} POSTs/s while draining; CPU while measured: {}; CPU ms per job: {}.",
                peer.jobs,
                peer.clients,
                peer.jobs_per_sec,
                peer.accepted_posts_per_sec,
                peer.cpu.summary(),
                peer.cpu.per_job_ms(peer.jobs)
            ));
            Some(peer)
        }
        Err(err) => {
            eprintln!("bench: WARNING: the BullMQ peer failed: {err:#}");
            notes.push(format!("BullMQ peer FAILED: {err:#}."));
            None
        }
    }
}

/// A per-job figure, or why there is none.
fn per_job(figure: Option<f64>) -> String {
    figure.map_or_else(|| "not exported".to_owned(), |f| format!("{f:.2}"))
}
