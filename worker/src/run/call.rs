//! One attempt's provider call: the answer saved by an earlier delivery of this attempt, or
//! admission (fleet-wide rate limits) and then the call, all bounded by the job's deadline.
//! The call slot taken at intake is given back as soon as the call ends.

use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::OwnedSemaphorePermit;

use agentfleet_common::wire::{Completion, ErrorCategory, JobSpec};

use super::Run;
use crate::circuit::CallResult;
use crate::limits::AdmitError;
use crate::provider::Failure;

/// Why a run stopped before its provider call ended.
pub(super) enum Interrupted {
    /// The worker is shutting down past its grace period.
    Shutdown,
    /// Cancelled by the caller, or the lease went away.
    Cancelled,
}

/// What an attempt came to, unless it was interrupted.
pub(super) type Attempted = Result<Result<Completion, Failure>, Interrupted>;

fn deadline_exceeded() -> Failure {
    Failure::new(
        ErrorCategory::Timeout,
        "the job's deadline passed before it finished",
    )
}

impl Run<'_> {
    /// Time left before the job's deadline, if any.
    fn remaining(&self, now: DateTime<Utc>) -> Option<Duration> {
        (self.deadline - now).to_std().ok().filter(|d| !d.is_zero())
    }

    pub(super) async fn attempt(
        &self,
        slot: OwnedSemaphorePermit,
        memo: Option<Completion>,
    ) -> Attempted {
        if self.remaining(Utc::now()).is_none() {
            return Ok(Err(deadline_exceeded()));
        }
        if let Some(completion) = memo {
            tracing::info!("provider answer for this attempt was saved; not calling again");
            return Ok(Ok(completion));
        }
        let estimate = estimate_tokens(&self.spec, self.agent.provider.max_tokens());
        if let Err(failure) = self.admit(estimate).await? {
            return Ok(Err(failure));
        }
        let Some(left) = self.remaining(Utc::now()) else {
            if let Err(err) = self.agent.limits.refund(estimate).await {
                tracing::warn!(error = %err, "could not give back an unused rate-limit turn");
            }
            return Ok(Err(deadline_exceeded()));
        };
        let started = tokio::time::Instant::now();
        let result = self.call_provider(slot, left).await?;
        self.observe(&result, started.elapsed(), estimate).await;
        Ok(result)
    }

    /// Waits for the fleet-wide rate limits to admit one call.
    async fn admit(&self, estimate: u64) -> Result<Result<(), Failure>, Interrupted> {
        let shared = self.shared;
        let admitted = tokio::select! {
            admitted = self.agent.limits.admit(estimate, &self.cancel) => admitted,
            () = shared.hard_stop.cancelled() => return Err(Interrupted::Shutdown),
        };
        match admitted {
            Ok(waited) => {
                shared
                    .metrics
                    .rate_limit_wait
                    .with_label_values(&[&self.agent.name])
                    .observe(waited.as_secs_f64());
                Ok(Ok(()))
            }
            Err(AdmitError::Stopped) => Err(if shared.hard_stop.is_cancelled() {
                Interrupted::Shutdown
            } else {
                Interrupted::Cancelled
            }),
            Err(err) => Ok(Err(Failure::new(ErrorCategory::Internal, err.to_string()))),
        }
    }

    /// The provider call, bounded by the per-call timeout and what is left of the deadline.
    async fn call_provider(&self, slot: OwnedSemaphorePermit, left: Duration) -> Attempted {
        let timeout = self.agent.config.request_timeout().min(left);
        let messages = self.spec.input.to_messages();
        let job_id = self.record.id.to_string();
        let fencing_token = self.lease.token.to_string();
        let attempt_number = self.msg.attempt.to_string();
        let call = self.agent.provider.complete(
            &self.shared.outbound,
            &messages,
            &job_id,
            &attempt_number,
            &fencing_token,
            timeout,
        );
        let result = tokio::select! {
            result = call => result,
            () = self.cancel.cancelled() => return Err(Interrupted::Cancelled),
            () = self.shared.hard_stop.cancelled() => return Err(Interrupted::Shutdown),
        };
        // The provider is done with this run: the next one may call while this one finishes.
        drop(slot);
        Ok(match result {
            // The request timed out because the job's deadline did, not the per-call bound.
            Err(f) if f.category == ErrorCategory::Timeout && timeout == left => {
                Err(deadline_exceeded())
            }
            other => other,
        })
    }

    /// Metrics, the circuit breaker, and the token budget settled to the real usage.
    async fn observe(&self, result: &Result<Completion, Failure>, took: Duration, estimate: u64) {
        let metrics = &self.shared.metrics;
        let agent = &self.agent.name;
        metrics
            .llm_request_duration
            .with_label_values(&[agent])
            .observe(took.as_secs_f64());
        let outcome = match result {
            Ok(_) => "ok",
            Err(f) => f.category.as_str(),
        };
        metrics
            .llm_requests
            .with_label_values(&[agent, outcome])
            .inc();
        self.agent.circuit.record(match result {
            Err(f) if f.category.is_retryable() => CallResult::Unhealthy,
            _ => CallResult::Healthy,
        });
        let Ok(completion) = result else { return };
        let usage = completion.usage;
        metrics
            .llm_tokens
            .with_label_values(&[agent, "prompt"])
            .inc_by(usage.prompt_tokens);
        metrics
            .llm_tokens
            .with_label_values(&[agent, "completion"])
            .inc_by(usage.completion_tokens);
        // The answer itself is saved with the result (`finish`), in the same round trip.
        if let Err(err) = self
            .agent
            .limits
            .settle_tokens(estimate, usage.total_tokens)
            .await
        {
            tracing::warn!(error = %err, "could not settle the token budget");
        }
    }
}

/// Tokens a call may use before the provider reports: ~4 characters a token for the prompt,
/// plus the most it may generate.
fn estimate_tokens(spec: &JobSpec, max_tokens: u32) -> u64 {
    (spec.input.content_chars() as u64).div_ceil(4) + u64::from(max_tokens)
}
