//! Keeping a run's lease alive while it works.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use agentfleet_common::store::{JobStore, Lease, Renewed};
use agentfleet_common::wire::JobStatus;

/// Renews the lease every third of its life. Cancels the run if the lease is lost or the job
/// was cancelled (a fallback for a missed broadcast), or if Redis could not be reached for a
/// whole lease period (someone else may have taken the job by then).
pub async fn keep(store: JobStore, id: Uuid, lease: Lease, ttl: Duration, run: CancellationToken) {
    let every = ttl / 3;
    let mut last_ok = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(every).await;
        // Boxed: the task sleeps most of its life, and would otherwise be as large as the
        // renewal's Redis call (a task per run in flight).
        match Box::pin(store.renew_lease(id, &lease, ttl)).await {
            Ok(Renewed::Held(status)) => {
                last_ok = tokio::time::Instant::now();
                if status == Some(JobStatus::Cancelled) {
                    run.cancel();
                }
            }
            Ok(Renewed::Lost) => {
                tracing::warn!("lease lost; aborting the run");
                run.cancel();
                return;
            }
            Err(err) => {
                if last_ok.elapsed() >= ttl {
                    tracing::warn!(error = %err, "lease could not be renewed in time; aborting the run");
                    run.cancel();
                    return;
                }
            }
        }
    }
}
