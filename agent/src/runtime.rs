//! [`decide`]: from the definition, the run's input and its step log, the next action.
//!
//! `decide` is total. Whatever the log holds (tool steps before any model call, results for
//! calls nobody made, steps out of `seq` order) it returns an action and never panics: the log
//! comes from storage and from earlier attempts, and a run that cannot be understood must end
//! with a reason, not take the worker down.

mod output;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::definition::{AgentDefinition, Limits, SideEffect, ToolSpec};
use crate::message::{AssistantMessage, Message, ToolCall};
use crate::schema::{clip, error_list, json_kind};
use crate::step::{conversation, totals, Step, StepKind, Totals};

/// How many schema errors a refused tool call reports to the model: enough to fix the usual
/// mistakes in one go, few enough not to drown the conversation.
const MAX_ARGUMENT_ERRORS: usize = 5;

/// Longest tool name quoted back to the model; the name is the model's and may be anything.
const MAX_QUOTED_NAME: usize = 100;

/// What the run is being asked to do.
#[derive(Debug, Clone, PartialEq)]
pub struct RunInput {
    /// The caller's input, as messages.
    pub messages: Vec<Message>,
    /// The effective limits: the agent's, lowered by the job.
    pub limits: Limits,
}

/// The next thing the worker should do.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    CallModel(ModelRequest),
    /// Run these calls (in parallel if the worker likes) and append one step per call.
    RunTools(Vec<PlannedCall>),
    Finish(FinalOutput),
    Stop(Stop),
}

#[derive(Debug, Clone, PartialEq)]
pub struct ModelRequest {
    /// 0-based: the number of model calls already made. Store it in the model step.
    pub turn: u32,
    /// The full conversation to send.
    pub messages: Vec<Message>,
    /// OpenAI's `tools` array; empty when the agent has none (omit the field then).
    pub tools: Vec<Value>,
    /// A user message already appended to `messages`. Store it in the model step so the
    /// conversation can be rebuilt.
    pub feedback: Option<String>,
    /// The agent's `max_tokens`, lowered to what is left of the token budget, at least 1.
    pub max_tokens: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PlannedCall {
    pub call_id: String,
    pub name: String,
    /// The arguments as the model wrote them, for the tool step.
    pub arguments: String,
    pub plan: CallPlan,
}

#[derive(Debug, Clone, PartialEq)]
pub enum CallPlan {
    /// Run the tool. For `Write`, record a tool-intent step first.
    Execute {
        /// Parsed and validated against the tool's schema.
        arguments: Value,
        side_effect: SideEffect,
        /// Stable for this call across resumes (`t{turn}.c{index}`); prefixed with the job id
        /// it makes the `Idempotency-Key`.
        key: String,
    },
    /// Do not run it: append a tool step with status `invalid` and this text as its content,
    /// so the model learns what was wrong.
    Reject { error: String },
}

#[derive(Debug, Clone, PartialEq)]
pub struct FinalOutput {
    pub text: String,
    /// The parsed answer, when the agent has an output schema and the answer satisfies it.
    pub json: Option<Value>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Stop {
    pub reason: StopReason,
    /// For people: which limit, which tool, what was wrong.
    pub message: String,
    /// For `UncertainSideEffect`: the call whose outcome is unknown. The worker records it as a
    /// tool step with status `uncertain`, so the trace shows which write to check.
    pub unresolved: Option<UnresolvedCall>,
}

impl Stop {
    fn new(reason: StopReason, message: String) -> Self {
        Self {
            reason,
            message,
            unresolved: None,
        }
    }
}

/// A tool call whose intent was recorded but whose result never was.
#[derive(Debug, Clone, PartialEq)]
pub struct UnresolvedCall {
    pub call_id: String,
    pub name: String,
    pub arguments: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    MaxTurns,
    MaxToolCalls,
    /// The token or cost budget is spent.
    BudgetExceeded,
    /// A `write` tool's intent was recorded but its result never was.
    UncertainSideEffect,
    /// The final answer still fails the output schema after the allowed repairs.
    InvalidOutput,
    /// The model's message cannot be acted on (duplicate or empty tool call ids).
    InvalidModelResponse,
}

impl StopReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::MaxTurns => "max_turns",
            Self::MaxToolCalls => "max_tool_calls",
            Self::BudgetExceeded => "budget_exceeded",
            Self::UncertainSideEffect => "uncertain_side_effect",
            Self::InvalidOutput => "invalid_output",
            Self::InvalidModelResponse => "invalid_model_response",
        }
    }
}

impl std::fmt::Display for StopReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

fn stop(reason: StopReason, message: String) -> Action {
    Action::Stop(Stop::new(reason, message))
}

/// The next action of the run.
///
/// Everything turns on the last model step: if it asked for tools, they are run until each has
/// a result; if it answered, the answer is checked and the run finishes (or asks for a repair);
/// otherwise, and when there is no model step yet, the model is called.
pub fn decide(def: &AgentDefinition, run: &RunInput, steps: &[Step]) -> Action {
    let run = Run {
        def,
        run,
        steps,
        totals: totals(steps),
    };
    match last_model_step(steps) {
        None => run.call_model(None),
        Some((_, message, _)) if message.tool_calls.is_empty() => run.final_answer(message),
        Some((turn, message, after)) => run.tool_turn(turn, &message.tool_calls, after),
    }
}

/// The last model step's turn and message, and the steps after it.
fn last_model_step(steps: &[Step]) -> Option<(u32, &AssistantMessage, &[Step])> {
    steps
        .iter()
        .enumerate()
        .rev()
        .find_map(|(index, step)| match &step.kind {
            StepKind::Model { turn, message, .. } => {
                Some((*turn, message, steps.get(index + 1..).unwrap_or_default()))
            }
            _ => None,
        })
}

/// One call of `decide`: its inputs and the totals of the log, computed once.
struct Run<'a> {
    def: &'a AgentDefinition,
    run: &'a RunInput,
    steps: &'a [Step],
    totals: Totals,
}

impl Run<'_> {
    /// Rule 1: the model asked for tools. Run those without a result; once all have one, call
    /// the model again.
    fn tool_turn(&self, turn: u32, calls: &[ToolCall], after: &[Step]) -> Action {
        if let Some(problem) = malformed_calls(calls) {
            return stop(
                StopReason::InvalidModelResponse,
                format!("the model's turn {turn} {problem}"),
            );
        }
        let mut pending = Vec::new();
        for (index, call) in calls.iter().enumerate() {
            match resolution(&call.id, after) {
                Resolution::Done => {}
                Resolution::IntentOnly => return unresolved_intent(call),
                Resolution::Pending => pending.push((index, call)),
            }
        }
        if pending.is_empty() {
            return self.call_model(None);
        }
        let asked = u32::try_from(pending.len()).unwrap_or(u32::MAX);
        let max = self.run.limits.max_tool_calls;
        if self.totals.tool_calls.saturating_add(asked) > max {
            let used = self.totals.tool_calls;
            let message = format!(
                "tool-call limit reached: {used} calls made, the model asks for {asked} more, \
                 the limit is {max}"
            );
            return stop(StopReason::MaxToolCalls, message);
        }
        Action::RunTools(
            pending
                .into_iter()
                .map(|(index, call)| plan_call(self.def, turn, index, call))
                .collect(),
        )
    }

    /// Rule 2: the model answered. Without an output schema any text will do; with one, the
    /// answer must parse and validate, and a failing one is sent back for repair a few times.
    fn final_answer(&self, message: &AssistantMessage) -> Action {
        let text = message.content.clone().unwrap_or_default();
        let Some(schema) = &self.def.output_schema else {
            return Action::Finish(FinalOutput { text, json: None });
        };
        let problem = match output::check(schema, &text) {
            Ok(json) => {
                return Action::Finish(FinalOutput {
                    text,
                    json: Some(json),
                })
            }
            Err(problem) => problem,
        };
        let repairs = self.repairs_made();
        if repairs < self.def.max_repairs {
            return self.call_model(Some(output::repair_request(schema, &problem)));
        }
        let message = format!(
            "the answer does not match the output schema after {repairs} repair request(s): \
             {problem}"
        );
        stop(StopReason::InvalidOutput, message)
    }

    /// Feedback is only ever a repair request, so a model step with feedback is a repair.
    fn repairs_made(&self) -> u32 {
        let repairs = self.steps.iter().filter(|s| {
            matches!(
                &s.kind,
                StepKind::Model {
                    feedback: Some(_),
                    ..
                }
            )
        });
        u32::try_from(repairs.count()).unwrap_or(u32::MAX)
    }

    /// Rule 3: call the model, if the limits allow another call.
    fn call_model(&self, feedback: Option<String>) -> Action {
        if let Some(stopped) = self.over_limit() {
            return Action::Stop(stopped);
        }
        let mut messages = conversation(self.def, &self.run.messages, self.steps);
        if let Some(feedback) = &feedback {
            messages.push(Message::user(feedback.clone()));
        }
        Action::CallModel(ModelRequest {
            turn: self.totals.turns,
            messages,
            tools: self.def.tools.iter().map(ToolSpec::openai_tool).collect(),
            feedback,
            max_tokens: self.max_tokens(),
        })
    }

    fn over_limit(&self) -> Option<Stop> {
        let limits = &self.run.limits;
        let totals = &self.totals;
        if totals.turns >= limits.max_turns {
            let message = format!(
                "turn limit reached: {} model calls made, the limit is {}",
                totals.turns, limits.max_turns
            );
            return Some(Stop::new(StopReason::MaxTurns, message));
        }
        let used = totals.usage.total_tokens;
        if used >= limits.max_total_tokens {
            let message = format!(
                "token limit reached: {used} tokens used, the limit is {}",
                limits.max_total_tokens
            );
            return Some(Stop::new(StopReason::BudgetExceeded, message));
        }
        if totals.cost_usd >= limits.max_cost_usd {
            let message = format!(
                "cost limit reached: {:.4} USD spent, the limit is {:.4} USD",
                totals.cost_usd, limits.max_cost_usd
            );
            return Some(Stop::new(StopReason::BudgetExceeded, message));
        }
        None
    }

    /// Completion tokens can be capped; prompt tokens cannot, so the budget can still be
    /// overshot by one prompt. The next call is then refused by `over_limit`.
    fn max_tokens(&self) -> u32 {
        let remaining = self
            .run
            .limits
            .max_total_tokens
            .saturating_sub(self.totals.usage.total_tokens);
        let capped = u64::from(self.def.max_tokens).min(remaining).max(1);
        u32::try_from(capped).unwrap_or(self.def.max_tokens)
    }
}

/// Why the calls of one assistant message cannot be tracked, if they cannot: results are
/// matched to calls by id, so an id must exist and be unique within the message.
fn malformed_calls(calls: &[ToolCall]) -> Option<String> {
    let mut seen = std::collections::HashSet::new();
    for call in calls {
        if call.id.is_empty() {
            let name = clip(&call.function.name, MAX_QUOTED_NAME);
            return Some(format!("has a call of `{name}` with an empty id"));
        }
        if !seen.insert(call.id.as_str()) {
            return Some(format!(
                "uses the tool call id `{}` more than once",
                clip(&call.id, MAX_QUOTED_NAME)
            ));
        }
    }
    None
}

enum Resolution {
    /// A tool step holds its result (of any status).
    Done,
    /// An intent was recorded and nothing after it.
    IntentOnly,
    Pending,
}

fn resolution(call_id: &str, after: &[Step]) -> Resolution {
    let mut intent = false;
    for step in after {
        match &step.kind {
            StepKind::Tool { call_id: id, .. } if id == call_id => return Resolution::Done,
            StepKind::ToolIntent { call_id: id, .. } if id == call_id => intent = true,
            _ => {}
        }
    }
    if intent {
        Resolution::IntentOnly
    } else {
        Resolution::Pending
    }
}

/// A `write` call whose intent was recorded but whose result never was: the write may or may
/// not have happened, so it is never repeated blindly. Today the run stops; this is the one
/// place to change when such calls become a pause for a person to settle (by appending a tool
/// step with status `uncertain` or with the real result, which resolves the call).
fn unresolved_intent(call: &ToolCall) -> Action {
    let name = clip(&call.function.name, MAX_QUOTED_NAME);
    let id = clip(&call.id, MAX_QUOTED_NAME);
    let message = format!(
        "tool `{name}` (call `{id}`) may have run: its intent was recorded but its result \
         never was, and a write is not repeated blindly"
    );
    Action::Stop(Stop {
        reason: StopReason::UncertainSideEffect,
        message,
        unresolved: Some(UnresolvedCall {
            call_id: call.id.clone(),
            name: call.function.name.clone(),
            arguments: call.function.arguments.clone(),
        }),
    })
}

fn plan_call(def: &AgentDefinition, turn: u32, index: usize, call: &ToolCall) -> PlannedCall {
    let plan = match check_call(def, call) {
        Ok((arguments, side_effect)) => CallPlan::Execute {
            arguments,
            side_effect,
            key: format!("t{turn}.c{index}"),
        },
        // Said as an error, so the model knows the call did not run and what to change.
        Err(error) => CallPlan::Reject {
            error: format!("error: invalid call, not executed: {error}"),
        },
    };
    PlannedCall {
        call_id: call.id.clone(),
        name: call.function.name.clone(),
        arguments: call.function.arguments.clone(),
        plan,
    }
}

/// The call's parsed arguments and its tool's side effect, or why it cannot run, worded for
/// the model.
fn check_call(def: &AgentDefinition, call: &ToolCall) -> Result<(Value, SideEffect), String> {
    let name = &call.function.name;
    let Some(tool) = def.tool(name) else {
        return Err(unknown_tool(def, name));
    };
    let arguments = parse_arguments(&call.function.arguments)?;
    let (errors, total) = tool
        .compiled_parameters()
        .errors(&arguments, MAX_ARGUMENT_ERRORS);
    if total > 0 {
        return Err(format!(
            "the arguments do not match the parameters schema of `{name}`:\n{}",
            error_list(&errors, total)
        ));
    }
    Ok((arguments, tool.side_effect()))
}

fn unknown_tool(def: &AgentDefinition, name: &str) -> String {
    let name = clip(name, MAX_QUOTED_NAME);
    if def.tools.is_empty() {
        return format!("unknown tool `{name}`; this agent has no tools");
    }
    let available: Vec<&str> = def.tools.iter().map(ToolSpec::name).collect();
    format!(
        "unknown tool `{name}`; available tools: {}",
        available.join(", ")
    )
}

fn parse_arguments(raw: &str) -> Result<Value, String> {
    // Some OpenAI-compatible servers send "" for a call without arguments.
    if raw.trim().is_empty() {
        return Ok(json!({}));
    }
    match serde_json::from_str::<Value>(raw) {
        Ok(value @ Value::Object(_)) => Ok(value),
        Ok(other) => Err(format!(
            "the arguments must be a JSON object, not {}",
            json_kind(&other)
        )),
        Err(err) => Err(format!("the arguments are not valid JSON: {err}")),
    }
}

#[cfg(test)]
mod garbled;
#[cfg(test)]
mod tests;
