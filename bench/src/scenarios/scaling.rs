//! Scenario 6, Scaling: the whole-path throughput of scenario 1 with 1, 2 and 4 worker processes.
//! On two cores shared with the broker, Redis, the dispatcher and the load generator, the machine
//! caps it; the CPU split of each run says where.

use serde_json::json;

use crate::report::{Outcome, Row};
use crate::suite::Ctx;

pub async fn run(ctx: &Ctx) -> anyhow::Result<Outcome> {
    let mut rows = Vec::new();
    let mut notes = Vec::new();
    let mut runs = Vec::new();
    let mut single = None;
    for &workers in &ctx.settings.scaling_workers {
        let whole = super::whole_path(ctx, workers, ctx.settings.scaling_jobs).await?;
        let base = *single.get_or_insert(whole.jobs_per_sec);
        let mut row = Row::new(
            &format!("{workers} worker process(es)"),
            whole.jobs_per_sec,
            "jobs/s",
        )
        .info("— (2 cores)");
        if workers != ctx.settings.scaling_workers[0] {
            row = row.baseline("1 worker", base, "jobs/s");
        }
        rows.push(row);
        notes.push(format!(
            "{workers} worker(s): {:.0} jobs/s; CPU {}.",
            whole.jobs_per_sec,
            whole.cpu.summary()
        ));
        runs.push(whole);
    }
    Ok(Outcome {
        rows,
        notes,
        details: json!({ "runs": runs }),
    })
}
