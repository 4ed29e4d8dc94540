//! The agent loop: the runtime decides (`agentfleet_agent::decide`), this module does. Each
//! model call is admitted on its own (a call slot and the fleet-wide rate limits) and gives
//! its slot back when it ends, so a run that is executing tools holds no provider slot. Each
//! completed model or tool call is appended to the step log under the lease before the loop
//! moves on, which is what lets a redelivered run resume after its last completed step.

use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::stream::{FuturesUnordered, StreamExt as _};
use tokio::sync::OwnedSemaphorePermit;

use agentfleet_agent::{
    decide, Action, CallPlan, FinalOutput, Message, ModelRequest, PlannedCall, RunInput,
    SideEffect, Step, StepKind, Stop, ToolStatus, Usage,
};
use agentfleet_common::budget::{Budget, Reservation};
use agentfleet_common::store::Written;
use agentfleet_common::wire::{ErrorCategory, JobInput, Role, WaitReason, Waiting};

use super::{payloads, Run};
use crate::cache::CachedAnswer;

use crate::circuit::CallResult;
use crate::limits::AdmitError;
use crate::provider::{Failure, ModelAnswer, ModelCall};
use crate::tools::{HttpTool, ToolCall, ToolResult};
use crate::Shared;

/// Why a run stopped before it came to an end of its own.
pub(super) enum Interrupted {
    /// The worker is shutting down past its grace period.
    Shutdown,
    /// Cancelled by the caller, the lease went away, or the step log could not be written:
    /// the message goes back and its redelivery sees which.
    Cancelled,
}

/// How the loop ended, unless it was interrupted: the runtime finished or stopped the run,
/// a model call failed (which the retry policy decides on), or the next model call's turn is
/// too far off to wait for holding a slot and the lease.
pub(super) enum LoopEnd {
    Finished(FinalOutput),
    Stopped(Stop),
    Failed(Failure),
    Wait(Waiting),
}

/// What one model turn came to, short of an interruption.
enum Turned {
    Step(Step),
    Failed(Failure),
    Wait(Waiting),
}

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

    /// Decide, do, append — until the runtime finishes or stops the run, or a model call
    /// fails. `slot` is the call slot taken at intake, for the first model call.
    pub(super) async fn drive(
        &mut self,
        mut slot: Option<OwnedSemaphorePermit>,
    ) -> Result<LoopEnd, Interrupted> {
        let input = RunInput {
            messages: input_messages(&self.spec.input),
            limits: self
                .agent
                .definition
                .limits
                .lowered(&self.spec.limits.unwrap_or_default()),
        };
        if self.steps.is_empty() {
            payloads::input(&self.shared.privacy.get(), &self.spec.input);
        }
        loop {
            if self.remaining(Utc::now()).is_none() {
                return Ok(LoopEnd::Failed(deadline_exceeded()));
            }
            let action = decide(&self.agent.definition, &input, &self.steps);
            if !matches!(action, Action::CallModel(_)) {
                // Tools and endings hold no provider slot.
                slot = None;
            }
            if matches!(action, Action::CallModel(_) | Action::RunTools(_)) {
                // A staged model call is stored before anything else is paid for or done.
                // (Boxed, like the other states a run passes through briefly: a run's task is
                // as large as its largest state, and it spends its life in the model call.)
                Box::pin(self.append(Vec::new())).await?;
            }
            match action {
                Action::CallModel(request) => {
                    let permit = match slot.take() {
                        Some(permit) => permit,
                        None => self.call_slot().await?,
                    };
                    match self.model_turn(permit, &request).await? {
                        Turned::Step(step) => self.stage(step),
                        Turned::Failed(failure) => return Ok(LoopEnd::Failed(failure)),
                        Turned::Wait(waiting) => return Ok(LoopEnd::Wait(waiting)),
                    }
                }
                Action::RunTools(calls) => Box::pin(self.run_tools(calls)).await?,
                Action::Finish(output) => return Ok(LoopEnd::Finished(output)),
                Action::Stop(stop) => {
                    Box::pin(self.record_unresolved(&stop)).await?;
                    return Ok(LoopEnd::Stopped(stop));
                }
            }
        }
    }

    /// A call slot for a model call after the first, given up for shutdown or cancellation.
    async fn call_slot(&self) -> Result<OwnedSemaphorePermit, Interrupted> {
        tokio::select! {
            slot = self.agent.limits.call_slot() => Ok(slot),
            () = self.cancel.cancelled() => Err(Interrupted::Cancelled),
            () = self.shared.hard_stop.cancelled() => Err(Interrupted::Shutdown),
        }
    }

    /// Adds a step to the in-memory log without storing it yet: the run's next write stores
    /// it — the append before the next model call or tools, or the record write that ends
    /// the run, so a one-call run stores its step and its end in one round trip. Nothing
    /// between the step's end and that write waits on anything, so a crash repeats the call
    /// exactly when it would have if the step had been appended at once.
    pub(super) fn stage(&mut self, mut step: Step) {
        step.seq = u32::try_from(self.steps.len()).unwrap_or(u32::MAX);
        self.steps.push(step);
    }

    /// The steps not stored yet.
    pub(super) fn unstored_steps(&self) -> &[Step] {
        self.steps.get(self.stored_steps..).unwrap_or_default()
    }

    /// The staged steps are stored now: counted in the metrics, and logged if allowed.
    pub(super) fn steps_stored(&mut self) {
        let privacy = self.shared.privacy.get();
        for step in self.unstored_steps() {
            payloads::step(&privacy, step);
        }
        self.count_steps(self.unstored_steps());
        self.stored_steps = self.steps.len();
    }

    /// Appends `steps` (after any staged ones) to the log under the lease, numbering them;
    /// the in-memory log follows only once Redis has them.
    async fn append(&mut self, steps: Vec<Step>) -> Result<(), Interrupted> {
        for step in steps {
            self.stage(step);
        }
        let base = self.stored_steps;
        if base == self.steps.len() {
            return Ok(());
        }
        let written = self
            .shared
            .store
            .append_steps(self.msg.job_id, &self.lease, base, self.unstored_steps())
            .await;
        match written {
            Ok(Written::Ok) => {
                self.steps_stored();
                Ok(())
            }
            Ok(other) => {
                tracing::warn!(?other, "step log refused the append; giving the job back");
                Err(Interrupted::Cancelled)
            }
            Err(err) => {
                tracing::warn!(error = %err, "cannot append to the step log; giving the job back");
                Err(Interrupted::Cancelled)
            }
        }
    }

    fn count_steps(&self, steps: &[Step]) {
        let metrics = &self.shared.metrics;
        for step in steps {
            match &step.kind {
                StepKind::Tool { name, status, .. } => metrics
                    .tool_calls
                    .with_label_values(&[name, status.as_str()])
                    .inc(),
                StepKind::Model { cost_usd, .. } => metrics
                    .llm_cost_usd
                    .with_label_values(&[&self.agent.name])
                    .inc_by(cost_usd.max(0.0)),
                StepKind::ToolIntent { .. } => {}
            }
        }
    }

    /// A stop over a write that may have run: the call is recorded as `uncertain`, so the
    /// trace says which write to check.
    async fn record_unresolved(&mut self, stop: &Stop) -> Result<(), Interrupted> {
        let Some(call) = &stop.unresolved else {
            return Ok(());
        };
        let now = Utc::now();
        let step = self.step(
            now,
            StepKind::Tool {
                call_id: call.call_id.clone(),
                name: call.name.clone(),
                arguments: call.arguments.clone(),
                status: ToolStatus::Uncertain,
                content: stop.message.clone(),
                http_status: None,
            },
        );
        self.append(vec![step]).await
    }

    fn step(&self, started_at: DateTime<Utc>, kind: StepKind) -> Step {
        let finished_at = Utc::now();
        Step {
            seq: 0,
            attempt: self.msg.attempt,
            started_at,
            finished_at,
            duration_ms: u64::try_from((finished_at - started_at).num_milliseconds()).unwrap_or(0),
            kind,
        }
    }
}

/// The caller's input as the runtime's messages.
fn input_messages(input: &JobInput) -> Vec<Message> {
    input
        .to_messages()
        .into_iter()
        .map(|m| match m.role {
            Role::System => Message::system(m.content),
            Role::User => Message::user(m.content),
            Role::Assistant => Message::Assistant {
                content: Some(m.content),
                tool_calls: Vec::new(),
            },
        })
        .collect()
}

// === model calls ===

impl Run<'_> {
    /// One model call: admission, the call bounded by the deadline, and its step.
    /// One model call: its budget reserved, its rate-limit turn admitted, then the call; the
    /// reservation is settled to what the call cost (nothing, if it failed or was not made).
    async fn model_turn(
        &self,
        slot: OwnedSemaphorePermit,
        request: &ModelRequest,
    ) -> Result<Turned, Interrupted> {
        let body = match self.agent.provider.encode(request) {
            Ok(body) => body,
            Err(failure) => return Ok(Turned::Failed(failure)),
        };
        let cache = self
            .agent
            .cache
            .as_ref()
            .map(|c| (c, c.key(&self.msg.tenant, &body)));
        if let Some((cache, key)) = &cache {
            if let Some(answer) = Box::pin(cache.get(key)).await {
                self.count_cache("hit");
                return Ok(Turned::Step(self.cached_step(request, answer)));
            }
            self.count_cache("miss");
        }
        let reservation =
            match Box::pin(self.reserve_budget(body.len(), request.max_tokens)).await? {
                Ok(reservation) => reservation,
                Err(turned) => return Ok(turned),
            };
        let turned = self.admitted_call(slot, request, body).await;
        let cost = match &turned {
            Ok(Turned::Step(Step {
                kind: StepKind::Model { cost_usd, .. },
                ..
            })) => *cost_usd,
            _ => 0.0,
        };
        Box::pin(self.shared.ledgers.settle(reservation, cost)).await;
        if let (Some((cache, key)), Ok(Turned::Step(step))) = (&cache, &turned) {
            if let StepKind::Model { message, usage, .. } = &step.kind {
                let answer = CachedAnswer {
                    message: message.clone(),
                    usage: *usage,
                };
                Box::pin(cache.put(key, &answer)).await;
            }
        }
        turned
    }

    /// A model step served from the response cache: no provider call, so no cost and no
    /// tokens in the run's totals.
    fn cached_step(&self, request: &ModelRequest, answer: CachedAnswer) -> Step {
        self.step(
            Utc::now(),
            StepKind::Model {
                turn: request.turn,
                feedback: request.feedback.clone(),
                message: answer.message,
                usage: Usage::default(),
                cost_usd: 0.0,
                cached: true,
            },
        )
    }

    fn count_cache(&self, result: &str) {
        self.shared
            .metrics
            .llm_cache
            .with_label_values(&[&self.agent.name, result])
            .inc();
    }

    async fn admitted_call(
        &self,
        slot: OwnedSemaphorePermit,
        request: &ModelRequest,
        body: Vec<u8>,
    ) -> Result<Turned, Interrupted> {
        let estimate = estimate_tokens(&body, request.max_tokens);
        // A turn reserved before the run waited outside is this call's: no admission again.
        let reserved = self
            .reserved_turn
            .swap(false, std::sync::atomic::Ordering::Relaxed);
        if !reserved {
            if let Err(turned) = Box::pin(self.admit(estimate)).await? {
                return Ok(turned);
            }
        }
        let Some(left) = self.remaining(Utc::now()) else {
            // Boxed: a refund's state is larger than the model call's, which a run spends
            // its life in (see `run_loop`).
            Box::pin(self.agent.limits.refund(estimate)).await;
            return Ok(Turned::Failed(deadline_exceeded()));
        };
        let started_at = Utc::now();
        let started = tokio::time::Instant::now();
        let result = self.call_provider(slot, body, left).await?;
        Box::pin(self.observe(&result, started.elapsed(), estimate)).await;
        let answer = match result {
            Ok(answer) => answer,
            Err(failure) => return Ok(Turned::Failed(failure)),
        };
        let cost_usd = self
            .agent
            .definition
            .price
            .map_or(0.0, |price| price.cost(&answer.usage));
        Ok(Turned::Step(self.step(
            started_at,
            StepKind::Model {
                turn: request.turn,
                feedback: request.feedback.clone(),
                message: answer.message,
                usage: answer.usage,
                cost_usd,
                cached: false,
            },
        )))
    }

    /// Reserves the call's worst case (the prompt estimate at the input price, `max_tokens`
    /// at the output price) on the tenant's and the agent's budgets. One that has no room
    /// makes the run wait outside, re-checked every `worker.budget_recheck_secs` so a raised
    /// budget resumes it soon, and at the latest when the period resets.
    async fn reserve_budget(
        &self,
        body_bytes: usize,
        max_tokens: u32,
    ) -> Result<Result<Reservation, Turned>, Interrupted> {
        let config = &self.shared.config;
        let policy = self.shared.policy.get();
        let budgets = Budget::for_call(&policy, &self.msg.tenant, &self.agent.name);
        let Some(price) = self.agent.definition.price.filter(|_| !budgets.is_empty()) else {
            return Ok(Ok(Reservation::default()));
        };
        let worst = price.cost(&Usage {
            prompt_tokens: body_bytes as u64 / 4,
            completion_tokens: u64::from(max_tokens),
            total_tokens: 0,
        });
        match self.shared.ledgers.reserve(&budgets, worst).await {
            Ok(Ok(reservation)) => Ok(Ok(reservation)),
            Ok(Err(exhausted)) => {
                tracing::info!(budget = ?exhausted.budget.owner, resets_at = %exhausted.resets_at, "budget spent; the run waits");
                let recheck = Utc::now()
                    + chrono::Duration::from_std(config.worker.budget_recheck).unwrap_or_default();
                Ok(Err(Turned::Wait(Waiting {
                    reason: WaitReason::Budget,
                    until: recheck.min(exhausted.resets_at),
                    reserved: false,
                })))
            }
            // Redis is unreachable: give the job back rather than fail it for the outage.
            Err(err) => {
                tracing::warn!(error = %err, "budget ledger unavailable; giving the job back");
                Err(Interrupted::Cancelled)
            }
        }
    }

    async fn turn_too_far(
        &self,
        wait: Duration,
        reason: WaitReason,
        reserved: bool,
        estimate: u64,
    ) -> Turned {
        let until = Utc::now() + chrono::Duration::from_std(wait).unwrap_or(chrono::TimeDelta::MAX);
        if !self.not_started() && until >= self.deadline {
            if reserved {
                Box::pin(self.agent.limits.refund(estimate)).await;
            }
            return Turned::Failed(Failure::new(
                ErrorCategory::Timeout,
                format!("the job's deadline comes before its next rate-limit turn ({wait:?})"),
            ));
        }
        Turned::Wait(Waiting {
            reason,
            until,
            reserved,
        })
    }

    /// A first attempt that has not made a model call: waiting, it is still only queued.
    pub(super) fn not_started(&self) -> bool {
        self.msg.attempt <= 1 && self.steps.is_empty()
    }

    /// Waits for the fleet-wide rate limits to admit one call — up to `worker.max_limit_hold`;
    /// a longer wait is answered as `Turned::Wait`, to be spent outside the worker.
    async fn admit(&self, estimate: u64) -> Result<Result<(), Turned>, Interrupted> {
        let shared = self.shared;
        let max_hold = shared.config.worker.max_limit_hold;
        let admitted = tokio::select! {
            admitted = self.agent.limits.admit(estimate, &self.cancel, max_hold) => admitted,
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
            Err(AdmitError::WaitLonger {
                wait,
                reason,
                reserved,
            }) => Ok(Err(self
                .turn_too_far(wait, reason, reserved, estimate)
                .await)),
            // Redis is unreachable: give the job back rather than fail it for the outage.
            Err(AdmitError::Store(err)) => {
                tracing::warn!(error = %err, "rate-limit state unavailable; giving the job back");
                Err(Interrupted::Cancelled)
            }
        }
    }

    /// The provider call, bounded by the per-call timeout and what is left of the deadline.
    async fn call_provider(
        &self,
        slot: OwnedSemaphorePermit,
        body: Vec<u8>,
        left: Duration,
    ) -> Result<Result<ModelAnswer, Failure>, Interrupted> {
        let timeout = self.agent.config.request_timeout().min(left);
        let job_id = self.record.id.to_string();
        let fencing_token = self.lease.token.to_string();
        let attempt = self.msg.attempt.to_string();
        let call = ModelCall {
            body,
            job_id: &job_id,
            attempt: &attempt,
            fencing_token: &fencing_token,
            timeout,
        };
        let result = tokio::select! {
            result = self.agent.provider.complete(&self.shared.outbound, call) => result,
            () = self.cancel.cancelled() => return Err(Interrupted::Cancelled),
            () = self.shared.hard_stop.cancelled() => return Err(Interrupted::Shutdown),
        };
        // The provider is done with this run: the next one may call while this one goes on.
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
    async fn observe(&self, result: &Result<ModelAnswer, Failure>, took: Duration, estimate: u64) {
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
        let answer = match result {
            Ok(answer) => answer,
            Err(failure) => return self.after_failed_call(failure, estimate).await,
        };
        let usage = answer.usage;
        metrics
            .llm_tokens
            .with_label_values(&[agent, "prompt"])
            .inc_by(usage.prompt_tokens);
        metrics
            .llm_tokens
            .with_label_values(&[agent, "completion"])
            .inc_by(usage.completion_tokens);
        if let Err(err) = self
            .agent
            .limits
            .settle_tokens(estimate, usage.total_tokens)
            .await
        {
            tracing::warn!(error = %err, "could not settle the token budget");
        }
        if let Err(err) = self.agent.limits.correct(&answer.limits).await {
            tracing::warn!(error = %err, "could not apply the provider's rate-limit headers");
        }
    }
}

impl Run<'_> {
    /// A failed call releases its token reservation; a 429 that says how long to wait holds
    /// every replica's calls of the agent (or its pool) that long.
    async fn after_failed_call(&self, failure: &Failure, estimate: u64) {
        let limits = &self.agent.limits;
        if let Err(err) = limits.settle_tokens(estimate, 0).await {
            tracing::warn!(error = %err, "could not release the token reservation");
        }
        if let (ErrorCategory::RateLimited, Some(wait)) = (failure.category, failure.retry_after) {
            tracing::info!(?wait, "provider asked to wait; pausing the fleet's calls");
            if let Err(err) = limits.pause(wait).await {
                tracing::warn!(error = %err, "could not pause the fleet's calls");
            }
        }
    }
}

/// Tokens a call may use before the provider reports: ~4 bytes a token for the request as
/// sent (conversation and tool definitions), plus the most it may generate.
fn estimate_tokens(body: &[u8], max_tokens: u32) -> u64 {
    (body.len() as u64).div_ceil(4) + u64::from(max_tokens)
}

// === tool calls ===

impl Run<'_> {
    /// Runs one turn's tool calls: refusals and write intents are appended first (an intent
    /// must be durable before its write can happen), then the calls run in parallel, each
    /// bounded by its tool's timeout, and each result is appended as it arrives.
    async fn run_tools(&mut self, calls: Vec<PlannedCall>) -> Result<(), Interrupted> {
        let (decided, to_run) = self.sort_calls(calls);
        if !decided.is_empty() {
            self.append(decided).await?;
        }
        let job = self.msg.job_id.simple().to_string();
        let shared = self.shared;
        // The job's deadline bounds tools too: the loop sees it passed and fails the run.
        let left = self.remaining(Utc::now()).unwrap_or_default();
        let deadline = tokio::time::sleep(left);
        tokio::pin!(deadline);
        let mut running: FuturesUnordered<_> = to_run
            .into_iter()
            .map(|call| execute(shared, &job, call))
            .collect();
        loop {
            let next = tokio::select! {
                next = running.next() => next,
                () = &mut deadline => return Ok(()),
                () = self.cancel.cancelled() => return Err(Interrupted::Cancelled),
                () = shared.hard_stop.cancelled() => return Err(Interrupted::Shutdown),
            };
            let Some((call, started_at, result)) = next else {
                return Ok(());
            };
            let step = self.step(
                started_at,
                StepKind::Tool {
                    call_id: call.call_id,
                    name: call.name,
                    arguments: call.arguments,
                    status: result.status,
                    content: result.content,
                    http_status: result.http_status,
                },
            );
            self.append(vec![step]).await?;
        }
    }

    /// Splits a turn's calls into the steps decided without running anything (refusals, and
    /// the intent of every write) and the calls to run.
    fn sort_calls(&self, calls: Vec<PlannedCall>) -> (Vec<Step>, Vec<PlannedCall>) {
        let now = Utc::now();
        let mut decided = Vec::new();
        let mut to_run = Vec::new();
        for call in calls {
            match &call.plan {
                CallPlan::Reject { error } => decided.push(self.step(
                    now,
                    StepKind::Tool {
                        call_id: call.call_id.clone(),
                        name: call.name.clone(),
                        arguments: call.arguments.clone(),
                        status: ToolStatus::Invalid,
                        content: error.clone(),
                        http_status: None,
                    },
                )),
                CallPlan::Execute { side_effect, .. } => {
                    if *side_effect == SideEffect::Write {
                        let intent = StepKind::ToolIntent {
                            call_id: call.call_id.clone(),
                            name: call.name.clone(),
                        };
                        decided.push(self.step(now, intent));
                    }
                    to_run.push(call);
                }
            }
        }
        (decided, to_run)
    }
}

/// Executes one planned call; answers the call, when it started, and its result.
async fn execute(
    shared: &Shared,
    job: &str,
    call: PlannedCall,
) -> (PlannedCall, DateTime<Utc>, ToolResult) {
    let started_at = Utc::now();
    let started = tokio::time::Instant::now();
    let result = match (&call.plan, shared.tools.get(&call.name)) {
        (
            CallPlan::Execute {
                arguments,
                side_effect,
                key,
            },
            Some(tool),
        ) => {
            // Sent on every attempt of this step, so the tool can tell a repeat.
            let idempotency_key = format!("{job}.{key}");
            let idempotency_key = (*side_effect != SideEffect::Read).then_some(idempotency_key);
            let request = ToolCall {
                arguments,
                idempotency_key: idempotency_key.as_deref(),
            };
            HttpTool::call(tool, &shared.outbound, request).await
        }
        _ => ToolResult {
            status: ToolStatus::Error,
            content: format!("tool `{}` is not available on this worker", call.name),
            http_status: None,
        },
    };
    shared
        .metrics
        .tool_call_duration
        .with_label_values(&[&call.name])
        .observe(started.elapsed().as_secs_f64());
    (call, started_at, result)
}
