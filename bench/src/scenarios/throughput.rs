//! Scenario 1, Throughput, whole path: no-op jobs through one dispatcher and one worker until every
//! webhook has arrived, against the broker's own ceiling measured in the same run (lapin publishing
//! with confirms and consuming with manual acks, the same message size, a quorum queue, the same
//! prefetch), and against the queue a team would pick instead: BullMQ behind a Node intake
//! (`crate::bullmq`), the same jobs, clients, stub and receiver.
//!
//! Ours as shipped has group commit (`dispatcher.batch_jobs`); a second fleet without it (one
//! message per job) runs beside it.
//!
//! The sides take turns: all are up and warm, and the jobs go in batches in the order ours,
//! one message per job, peer, peer, one message per job, ours, … Measured one after the other, the VM's drift landed
//! on whichever side went last: consecutive runs of one build read 1.38× and 1.03× the peer.

use std::time::Duration;

use serde_json::json;

use crate::baseline;
use crate::bullmq::{self, PeerRun, ThroughputPeer};
use crate::report::{Outcome, Row};
use crate::scenarios::{WholePath, WholePathFleet};
use crate::suite::{Ctx, Settings};

/// The peer's worker concurrency: BullMQ's own knob, at the clients' count.
const PEER_CONCURRENCY: u16 = 64;

pub async fn run(ctx: &Ctx) -> anyhow::Result<Outcome> {
    let s = &ctx.settings;
    let mut peer_notes = Vec::new();
    let mut ours = WholePathFleet::start(ctx, 1, true).await?;
    let mut single = WholePathFleet::start(ctx, 1, false).await?;
    let mut peer = start_peer(ctx, &mut peer_notes).await;
    let sides = (&mut ours, &mut single);
    let turns = take_turns(s, sides, &mut peer, &mut peer_notes).await?;
    let whole = ours.finish();
    let unbatched = single.finish();
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

    let mut rows = whole_path_rows(&whole, ceiling);
    let mut notes = whole_path_notes(s, &whole, payload.len());
    notes.push(single_note(&unbatched));
    notes.append(&mut peer_notes);
    let peer = peer.and_then(|peer| {
        let ours = [whole.jobs_per_sec, unbatched.jobs_per_sec];
        peer_rows(ours, peer, &turns, (&mut rows, &mut notes))
    });
    for (side, run) in [("ours", &whole), ("the unbatched fleet", &unbatched)] {
        if run.failed_jobs > 0 {
            notes.push(format!(
                "{} jobs of {side} failed instead of succeeding.",
                run.failed_jobs
            ));
        }
    }
    Ok(Outcome {
        rows,
        notes,
        details: json!({
            "whole_path": whole,
            "one_message_per_job": unbatched,
            "ceiling_msgs_per_sec": ceiling,
            "bullmq": peer,
            "turns": turns,
            "message_bytes": payload.len(),
        }),
    })
}

/// Our rows: jobs/s against the broker's ceiling, and the latency at saturation.
fn whole_path_rows(whole: &WholePath, ceiling: f64) -> Vec<Row> {
    let ratio = whole.jobs_per_sec / ceiling;
    let mut rows = vec![Row::new("whole-path jobs/s", whole.jobs_per_sec, "jobs/s")
        .baseline("lapin confirm+ack pipeline", ceiling, "msg/s")
        .goal("≥ 0.50", ratio >= 0.5)];
    if let Some(p) = &whole.submit_to_webhook {
        rows.push(
            Row::new("submit→webhook p99 at saturation", p.p99_ms, "ms")
                .display(format!(
                    "submit→webhook at saturation p50 / p99: {:.0} / {:.0} ms",
                    p.p50_ms, p.p99_ms
                ))
                .info("—"),
        );
    }
    rows
}

/// What our whole path did per job: CPU, Redis commands and round trips, acks, hand-offs.
fn whole_path_notes(s: &Settings, whole: &WholePath, message_bytes: usize) -> Vec<String> {
    let counted = |figure: Option<f64>, missing: &str| {
        figure.map_or_else(|| missing.to_owned(), |f| format!("{f:.2}"))
    };
    vec![
        format!(
            "{} jobs in {} batches, {} clients, agent concurrency {}, {message_bytes} B job message; CPU while measured: {}.",
            whole.jobs,
            s.throughput_turns,
            whole.clients,
            whole.agent_concurrency,
            whole.cpu.summary()
        ),
        format!("Redis commands per job: {}.", whole.redis_summary()),
        format!(
            "Redis round trips per job: worker {}, dispatcher {}.",
            counted(whole.redis_round_trips_per_job.0, "not exported"),
            counted(whole.redis_round_trips_per_job.1, "not exported")
        ),
        format!("CPU ms per job: {}.", whole.cpu.per_job_ms(whole.jobs)),
        format!(
            "Ack frames per job (workers, jobs' and webhooks' deliveries): {}.",
            counted(whole.ack_frames_per_job, "not counted by this worker")
        ),
        format!(
            "Events handed to the webhook queue rather than delivered inline, per job: {}.",
            counted(whole.queued_webhooks_per_job, "not counted")
        ),
    ]
}

/// What the fleet without group commit did per job.
fn single_note(whole: &WholePath) -> String {
    let ack_frames = whole
        .ack_frames_per_job
        .map_or_else(|| "not counted".to_owned(), |f| format!("{f:.2}"));
    format!(
        "With one message per job (`dispatcher.batch_jobs: false`): {:.0} jobs/s; CPU ms per job: {}; ack frames per job: {ack_frames}.",
        whole.jobs_per_sec,
        whole.cpu.per_job_ms(whole.jobs)
    )
}

/// The BullMQ peer, warmed up, or why it does not run (said loudly, in the notes and on
/// stderr; our own rows stand either way).
async fn start_peer(ctx: &Ctx, notes: &mut Vec<String>) -> Option<ThroughputPeer> {
    if let Some(reason) = bullmq::unavailable() {
        eprintln!("bench: WARNING: the BullMQ peer is SKIPPED: {reason}");
        notes.push(format!("BullMQ peer SKIPPED: {reason}."));
        return None;
    }
    let s = &ctx.settings;
    let started =
        ThroughputPeer::start(&ctx.bins, s.clients, super::WARMUP_JOBS, PEER_CONCURRENCY).await;
    started.map_err(|err| peer_failed(&err, notes)).ok()
}

fn peer_failed(err: &anyhow::Error, notes: &mut Vec<String>) {
    eprintln!("bench: WARNING: the BullMQ peer failed: {err:#}");
    notes.push(format!("BullMQ peer FAILED: {err:#}."));
}

/// Each turn's jobs/s: ours, one message per job and the peer's (0 where it does not run), the
/// sides in that order, then backwards; a peer that fails takes no more turns.
async fn take_turns(
    s: &Settings,
    (ours, single): (&mut WholePathFleet, &mut WholePathFleet),
    peer: &mut Option<ThroughputPeer>,
    notes: &mut Vec<String>,
) -> anyhow::Result<Vec<[f64; 3]>> {
    let batch = s.throughput_jobs / s.throughput_turns.max(1);
    let mut turns = Vec::new();
    for turn in 0..s.throughput_turns.max(1) {
        let backwards = turn % 2 == 1;
        let mut per_sec = [0.0; 3];
        if backwards {
            per_sec[2] = peer_batch(peer, batch, notes).await;
            per_sec[1] = single.batch(batch).await?;
            per_sec[0] = ours.batch(batch).await?;
        } else {
            per_sec[0] = ours.batch(batch).await?;
            per_sec[1] = single.batch(batch).await?;
            per_sec[2] = peer_batch(peer, batch, notes).await;
        }
        turns.push(per_sec);
    }
    Ok(turns)
}

/// One batch through the peer, if it still runs; its jobs/s.
async fn peer_batch(peer: &mut Option<ThroughputPeer>, n: usize, notes: &mut Vec<String>) -> f64 {
    let Some(running) = peer.as_mut() else {
        return 0.0;
    };
    match running.batch(n).await {
        Ok(jobs_per_sec) => jobs_per_sec,
        Err(err) => {
            peer_failed(&err, notes);
            *peer = None;
            0.0
        }
    }
}

/// The BullMQ peer's rows: ours (as shipped, then with one message per job) against it, and
/// CPU per job of each; none if it failed.
fn peer_rows(
    [ours, single]: [f64; 2],
    peer: ThroughputPeer,
    turns: &[[f64; 3]],
    (rows, notes): (&mut Vec<Row>, &mut Vec<String>),
) -> Option<PeerRun> {
    let peer = peer.finish().map_err(|err| peer_failed(&err, notes)).ok()?;
    rows.push(
        Row::new("whole-path jobs/s vs BullMQ", ours, "jobs/s")
            .baseline("BullMQ + Node intake", peer.jobs_per_sec, "jobs/s")
            .goal("≥ 1.0", ours >= peer.jobs_per_sec),
    );
    rows.push(
        Row::new(
            "one message per job: whole-path jobs/s vs BullMQ",
            single,
            "jobs/s",
        )
        .baseline("BullMQ + Node intake", peer.jobs_per_sec, "jobs/s")
        .info("—"),
    );
    notes.push(format!(
        "BullMQ peer ({} jobs, {} clients, worker concurrency {}): {:.0} jobs/s, intake {:.0} POSTs/s while draining; CPU while measured: {}; CPU ms per job: {}. \
         In turns (ours, one message per job, BullMQ, then backwards, …); ÷ BullMQ per turn: ours {}; one message per job {}.",
        peer.jobs,
        peer.clients,
        peer.concurrency,
        peer.jobs_per_sec,
        peer.accepted_posts_per_sec,
        peer.cpu.summary(),
        peer.cpu.per_job_ms(peer.jobs),
        super::ratios_per_turn(turns, 0, 2),
        super::ratios_per_turn(turns, 1, 2)
    ));
    Some(peer)
}
