//! The agent runtime: a pure state machine for a tool-calling LLM run.
//!
//! # Decide, then do
//!
//! A run is driven in a loop by the worker, and this crate is the half of the loop that thinks:
//!
//! 1. The worker calls [`decide`] with the [`AgentDefinition`], the run's input and the run's
//!    step log, and gets an [`Action`]: call the model, run these tools, finish, or stop with a
//!    [`StopReason`].
//! 2. The worker does it (an HTTP call to the provider, tool calls) under the job's lease, and
//!    appends what happened to the step log in Redis as one [`Step`] per model or tool call.
//! 3. Back to 1.
//!
//! Nothing here does I/O or reads a clock: no tokio, no Redis, no HTTP. That split is what makes
//! the run resumable, since a redelivered job replays its log through the same `decide` and
//! continues after the last recorded step, and what makes every turn of the loop testable with
//! plain values.
//!
//! # The step log
//!
//! The log is the run. Messages are stored once, as deltas, and [`conversation`] rebuilds what
//! to send to the model from the input and the log. Side effects follow their tool's
//! [`SideEffect`] class: a `read` call may repeat, an `idempotent` one repeats with the same
//! idempotency key ([`CallPlan::Execute`]'s `key`), and a `write` records a
//! [`StepKind::ToolIntent`] first, so an intent without a result is never blindly repeated.
//!
//! # Module map
//!
//! - [`definition`]: what an agent is (tools, limits, prices, output schema), checked once.
//! - [`message`]: the OpenAI chat format, and parsing of a model's answer.
//! - [`step`]: the step log, conversation rebuild, totals, tool output truncation.
//! - [`runtime`]: [`decide`] and the actions it returns.

pub mod definition;
pub mod message;
pub mod runtime;
mod schema;
pub mod step;
#[cfg(test)]
mod testing;

pub use definition::{
    AgentDefinition, DefinitionError, InputSchema, InputViolation, LimitOverrides, Limits,
    OutputSchema, Price, SideEffect, ToolSpec,
};
pub use message::{
    parse_assistant, AssistantMessage, FunctionCall, Message, ParseError, ToolCall, Usage,
};
pub use runtime::{
    decide, Action, CallPlan, FinalOutput, ModelRequest, PlannedCall, RunInput, Stop, StopReason,
    UnresolvedCall,
};
pub use step::{conversation, totals, truncate_tool_output, Step, StepKind, ToolStatus, Totals};
