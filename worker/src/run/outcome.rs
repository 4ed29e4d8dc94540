//! How a run ends: success, a retry through the delay ladder, or failure — each stored under
//! the lease before anything is published — then the terminal event handed to the webhook
//! queue, and the lease released.

use std::time::Duration;

use chrono::Utc;
use tokio::sync::OwnedSemaphorePermit;

use agentfleet_agent::{totals, FinalOutput, Stop};
use agentfleet_common::events;
use agentfleet_common::store::{RunWrite, StoredJob, Written};
use agentfleet_common::wire::{
    AttemptError, ErrorCategory, JobError, JobMessage, JobRecord, JobSpec, JobStatus, WaitReason,
    Waiting, SCHEMA_VERSION,
};
use serde_json::Value;

use super::turns::{Interrupted, LoopEnd};
use super::{Run, Settled};
use crate::delivery::{not_before, Disposition};
use crate::provider::Failure;
use crate::quota::Claim;
use crate::retry::backoff;
use crate::webhook::{self, FirstAttempt};
use crate::Shared;

/// How a run ended: what to do with its delivery, and whether it handed the job's terminal
/// event to the webhook queue (noted in the same write that releases the lease).
pub(super) struct Ending {
    disposition: Disposition,
    handed_off: bool,
}

/// How long a run of a tenant at its running quota waits before it asks again: places free
/// as runs end, which no one can predict.
const QUOTA_RECHECK: Duration = Duration::from_secs(1);

impl From<Disposition> for Ending {
    fn from(disposition: Disposition) -> Self {
        Self {
            disposition,
            handed_off: false,
        }
    }
}

impl Run<'_> {
    /// The agent loop, then its end. A run of a tenant at its `max_running_jobs` waits
    /// outside instead.
    pub(super) async fn execute(&mut self, slot: OwnedSemaphorePermit) -> Ending {
        let quota = &self.shared.running_quota;
        // The claim and the release are boxed, like the endings (see `run_loop`).
        let place = match Box::pin(quota.claim(&self.msg.tenant, self.msg.job_id)).await {
            Ok(Claim::Held(place)) => place,
            Ok(Claim::Full) => {
                drop(slot);
                let waiting = Waiting {
                    reason: WaitReason::TenantQuota,
                    until: Utc::now()
                        + chrono::Duration::from_std(QUOTA_RECHECK).unwrap_or_default(),
                    reserved: false,
                };
                return Box::pin(self.wait_outside(waiting)).await.into();
            }
            Err(err) => {
                tracing::warn!(error = %err, "cannot check the tenant's running quota; job given back");
                return Disposition::Requeue.into();
            }
        };
        let ending = self.run_loop(slot).await;
        if let Some(place) = place {
            Box::pin(place.release()).await;
        }
        ending
    }

    async fn run_loop(&mut self, slot: OwnedSemaphorePermit) -> Ending {
        let in_flight = self
            .shared
            .metrics
            .jobs_in_flight
            .with_label_values(&[&self.agent.name]);
        in_flight.inc();
        let ended = self.drive(Some(slot)).await;
        in_flight.dec();
        // The endings are boxed: a task is as large as its largest state, and a run spends
        // its life in the loop, so the ending's state (a store, a webhook attempt, a
        // publish) is allocated only while it runs, not with every run for its whole life.
        match ended {
            Ok(LoopEnd::Finished(output)) => Box::pin(self.succeed(output)).await,
            Ok(LoopEnd::Stopped(stop)) => Box::pin(self.stopped(&stop)).await,
            Ok(LoopEnd::Failed(failure)) => Box::pin(self.fail_or_retry(&failure)).await,
            Ok(LoopEnd::Wait(waiting)) => Box::pin(self.wait_outside(waiting)).await.into(),
            Err(Interrupted::Shutdown) => Disposition::Abandon.into(),
            Err(Interrupted::Cancelled) => Box::pin(self.interrupted()).await.into(),
        }
    }

    /// A message that keeps coming back (workers crash on it): the job fails as `internal`.
    pub(super) async fn give_up(&mut self, deliveries: u32) -> Ending {
        tracing::error!(
            deliveries,
            "message keeps coming back (workers crash on it); failing the job"
        );
        let failure = Failure::new(
            ErrorCategory::Internal,
            format!(
                "delivered {} times without finishing; given up",
                deliveries + 1
            ),
        );
        self.record.error = Some(failure.to_job_error());
        self.shared
            .metrics
            .dead_letters
            .with_label_values(&["delivery_limit"])
            .inc();
        self.finish(JobStatus::Failed).await
    }

    /// Notes a webhook hand-off, releases the lease if no write let it go, and answers the
    /// disposition.
    pub(super) async fn close(&self, ending: Ending) -> Disposition {
        let store = &self.shared.store;
        let closed = match (self.released, ending.handed_off) {
            (true, true) => store.mark_handed_off(self.msg.job_id).await,
            (true, false) => Ok(()),
            (false, handed_off) => {
                store
                    .close_run(self.msg.job_id, &self.lease, handed_off)
                    .await
            }
        };
        if let Err(err) = closed {
            // The lease expires by itself; a missing hand-off note only matters to a
            // redelivery, and this delivery is acked.
            tracing::debug!(error = %err, "run not closed");
        }
        ending.disposition
    }

    /// Either the caller cancelled (the record says so, and the dispatcher handed the event
    /// off) or the lease is gone (someone else may run it): give the message back unless the
    /// job ended; its redelivery sees which.
    async fn interrupted(&self) -> Disposition {
        match self.shared.store.load(self.msg.job_id).await {
            Ok(Some(current)) if current.status.is_terminal() => {
                ensure_handoff(self.shared, &current, &self.spec).await
            }
            _ => Disposition::Requeue,
        }
    }

    async fn succeed(&mut self, output: FinalOutput) -> Ending {
        self.record.output = Some(output.json.unwrap_or(Value::String(output.text)));
        self.record.error = None;
        self.finish(JobStatus::Succeeded).await
    }

    /// The runtime ended the run at a limit (or over an uncertain write): a failure of its
    /// own category, never retried — a retry would replay the same log to the same stop.
    async fn stopped(&mut self, stop: &Stop) -> Ending {
        // A stop's message may quote the answer (an output that failed its schema).
        let message = self.shared.privacy.get().loggable(&stop.message);
        tracing::info!(
            reason = stop.reason.as_str(),
            error = message.as_deref(),
            "run stopped by its limits"
        );
        self.record.error = Some(JobError {
            category: ErrorCategory::from(stop.reason),
            message: stop.message.clone(),
        });
        self.finish(JobStatus::Failed).await
    }

    async fn fail_or_retry(&mut self, failure: &Failure) -> Ending {
        let record = &mut self.record;
        record.error = Some(failure.to_job_error());
        record.attempt_errors.push(AttemptError {
            attempt: record.attempts,
            category: failure.category,
            message: failure.full_message(),
            at: Utc::now(),
        });
        let retry = &self.agent.config.retry;
        let wait = backoff(record.attempts + 1, retry.max_delay, failure.retry_after);
        let in_time =
            chrono::Duration::from_std(wait).is_ok_and(|w| Utc::now() + w < self.deadline);
        if failure.category.is_retryable() && record.attempts < retry.attempts && in_time {
            return self.schedule_retry(failure, wait).await.into();
        }
        tracing::info!(
            category = failure.category.as_str(),
            error = %failure.message,
            detail = self.logged_detail(failure).as_deref(),
            "job failed"
        );
        self.finish(JobStatus::Failed).await
    }

    /// Waits for a limit outside the worker: the record goes back to `queued` with why and
    /// until when, the same attempt goes round the delay ladder, and the lease and call slot
    /// are let go. Its next delivery resumes from the step log.
    async fn wait_outside(&mut self, waiting: Waiting) -> Disposition {
        let wait = (waiting.until - Utc::now()).to_std().unwrap_or_default();
        self.record.status = JobStatus::Queued;
        self.record.waiting = Some(waiting.clone());
        if self.not_started() {
            // Only queued, never started: its deadline runs from when it does.
            self.record.started_at = None;
        }
        if let Err(disposition) = self.store(true).await {
            return disposition;
        }
        let later = JobMessage {
            not_before: Some(waiting.until),
            ..self.msg.clone()
        };
        if let Err(err) = self.shared.broker.publish_job_delayed(&later, wait).await {
            tracing::warn!(error = %err, "cannot put the waiting job on the delay ladder");
            return Disposition::Requeue;
        }
        tracing::info!(reason = ?waiting.reason, ?wait, "waiting for a limit outside the worker");
        Disposition::Ack
    }

    async fn schedule_retry(&mut self, failure: &Failure, wait: Duration) -> Disposition {
        let next_attempt = self.record.attempts + 1;
        self.record.status = JobStatus::Retrying;
        if let Err(disposition) = self.store(true).await {
            return disposition;
        }
        let retry = JobMessage {
            v: SCHEMA_VERSION,
            attempt: next_attempt,
            not_before: not_before(wait),
            ..self.msg.clone()
        };
        if let Err(err) = self.shared.broker.publish_job_delayed(&retry, wait).await {
            tracing::warn!(error = %err, "cannot schedule the retry");
            return Disposition::Requeue;
        }
        self.shared
            .metrics
            .job_retries
            .with_label_values(&[&self.agent.name, failure.category.as_str()])
            .inc();
        tracing::info!(
            category = failure.category.as_str(),
            error = %failure.message,
            detail = self.logged_detail(failure).as_deref(),
            ?wait,
            next_attempt,
            "retry scheduled"
        );
        Disposition::Ack
    }

    /// What the provider said about a failure, for a log line: only with
    /// `privacy.log_payloads`, masked.
    fn logged_detail(&self, failure: &Failure) -> Option<String> {
        let detail = failure.detail.as_deref()?;
        self.shared.privacy.get().loggable(detail)
    }

    /// Writes the run's record under the lease, with the run's totals from its step log (and
    /// its output and errors masked when the agent's results are) and the steps not stored
    /// yet, and with `release`, lets the lease go in the same step (the run's last write);
    /// a refusal says how to settle the delivery.
    async fn store(&mut self, release: bool) -> Settled<()> {
        let totals = totals(&self.steps);
        let privacy = self.shared.privacy.get();
        if privacy.masks_output(&self.agent.name) {
            // Stored masked: the API and the webhook give back only what is stored.
            privacy.masker().mask_result(&mut self.record);
        }
        let record = &mut self.record;
        record.usage = Some(totals.usage);
        record.cost_usd = Some(totals.cost_usd);
        record.turns = Some(totals.turns);
        record.tool_calls = Some(totals.tool_calls);
        if release {
            // Renewing a lease this write lets go would only find it lost.
            self.stop_renewal();
        }
        let written = self
            .shared
            .store
            .save_run(RunWrite {
                record: &self.record,
                lease: &self.lease,
                steps: self.unstored_steps(),
                base: self.stored_steps,
                release,
                webhook: self.spec.webhook_url.is_some(),
            })
            .await;
        match written {
            Ok(Written::Ok) => {
                self.steps_stored();
                self.released = release;
                Ok(())
            }
            // Cancelled meanwhile: the canceller handed its event off.
            Ok(Written::Terminal | Written::Missing) => Err(Disposition::Ack),
            Ok(Written::LeaseLost | Written::Conflict) => {
                tracing::warn!("lease lost before the run's state was stored; giving the job back");
                Err(Disposition::Requeue)
            }
            Err(err) => {
                tracing::warn!(error = %err, "cannot store the run's state");
                Err(Disposition::Requeue)
            }
        }
    }

    /// Stores the job's end, keeps a copy of a failed job's message, and hands the terminal
    /// event off.
    async fn finish(&mut self, status: JobStatus) -> Ending {
        self.record.status = status;
        self.record.finished_at = Some(Utc::now());
        if let Err(disposition) = self.store(true).await {
            return disposition.into();
        }
        self.count_end(status);
        if status == JobStatus::Failed {
            // Boxed: a publish with its confirm is the largest state of an ending, and most
            // jobs succeed.
            Box::pin(self.keep_failed_copy()).await;
        }
        // Its end is stored: the runs taking call slots go first (see `starts_first`).
        self.shared.starts_first.ending_turn().await;
        // This run just ended the job, so nobody handed its event off before: attempt it
        // (inline, or on the queue) without looking for the note, and let `close` write the
        // note if it went to the queue.
        let job = StoredJob {
            record: self.record.clone(),
            spec: self.spec.clone(),
            // The run is over: nothing reads its steps after this.
            steps: std::mem::take(&mut self.steps),
        };
        match webhook::first_attempt(self.shared, &self.agent.inline_room, job).await {
            Ok(first) => Ending {
                disposition: Disposition::Ack,
                handed_off: matches!(first, FirstAttempt::HandedOff),
            },
            Err(err) => {
                // Not acked: the redelivery finds the job terminal and hands off then.
                tracing::warn!(error = %err, "cannot hand off the webhook");
                Disposition::Requeue.into()
            }
        }
    }

    fn count_end(&self, status: JobStatus) {
        let metrics = &self.shared.metrics;
        metrics
            .jobs_completed
            .with_label_values(&[&self.agent.name, status.as_str()])
            .inc();
        let elapsed = (Utc::now() - self.record.created_at)
            .to_std()
            .unwrap_or_default();
        metrics
            .job_duration
            .with_label_values(&[&self.agent.name])
            .observe(elapsed.as_secs_f64());
        tracing::info!(status = status.as_str(), "job finished");
    }

    /// Keeps the work token of a failed job for inspection, beside the poison messages.
    async fn keep_failed_copy(&self) {
        let reason = self
            .record
            .error
            .as_ref()
            .map_or("failed", |e| e.category.as_str());
        let msg = &self.msg;
        let kept = self
            .shared
            .broker
            .publish_dead(
                &agentfleet_common::wire::Versioned::encode(msg),
                reason,
                &msg.job_id.to_string(),
            )
            .await;
        match kept {
            Ok(()) => self
                .shared
                .metrics
                .dead_letters
                .with_label_values(&["failed"])
                .inc(),
            Err(err) => {
                tracing::warn!(error = %err, "could not keep a copy in the dead-letter queue")
            }
        }
    }
}

/// Puts the job's terminal event on the webhook queue once (if it has a webhook URL).
pub async fn ensure_handoff(shared: &Shared, record: &JobRecord, spec: &JobSpec) -> Disposition {
    match events::hand_off(&shared.store, &shared.broker, record, spec).await {
        Ok(()) => Disposition::Ack,
        Err(err) => {
            // Not acked: the redelivery finds the job terminal and hands off again.
            tracing::warn!(error = %err, "cannot hand off the webhook");
            Disposition::Requeue
        }
    }
}
