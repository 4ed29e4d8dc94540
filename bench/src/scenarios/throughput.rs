//! Scenario 1, Throughput, whole path: no-op jobs through one dispatcher and one worker until every
//! webhook has arrived, against the broker's own ceiling measured in the same run (lapin publishing
//! with confirms and consuming with manual acks, the same message size, a quorum queue, the same
//! prefetch).

use std::time::Duration;

use serde_json::json;

use crate::baseline;
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
    ];
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
            "message_bytes": payload.len(),
        }),
    })
}
