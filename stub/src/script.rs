//! Scripted multi-turn conversations for the LLM stub: a [`Scenario`] says, turn by turn, which
//! tool calls or final answer the "model" gives, in OpenAI's `tools` / `tool_calls` format.
//!
//! The position in the script comes from the request alone — the number of `assistant`
//! messages already in the conversation — and never from state kept by the stub. A run resumed
//! on another worker after a crash sends the same conversation and so gets the same next answer,
//! which is what lets tests prove that a resumed run does not repeat model or tool calls.

use std::str::FromStr;

use serde_json::{json, Value};

/// One function call the scripted model asks for.
#[derive(Debug, Clone, PartialEq)]
pub struct ScriptedCall {
    pub name: String,
    /// Sent as JSON *text* in `function.arguments`, as OpenAI does.
    pub arguments: Value,
}

impl ScriptedCall {
    pub fn new(name: impl Into<String>, arguments: Value) -> Self {
        Self {
            name: name.into(),
            arguments,
        }
    }
}

/// What the scripted model answers at one turn.
#[derive(Debug, Clone, PartialEq)]
pub enum Turn {
    /// These calls, in one assistant message (several = parallel tool calls).
    ToolCalls(Vec<ScriptedCall>),
    /// One call whose `arguments` text is sent verbatim, so that it can be invalid JSON.
    RawArguments { name: String, arguments: String },
    /// A final answer with this content.
    Final(String),
    /// A final answer `"results: <c1> | <c2> …"` made of the contents of every `tool` message in
    /// the request, in order: proves the tool results reached the model.
    EchoToolResults,
    /// `repaired` when the request's last message is a `tool` message whose content mentions
    /// "invalid" or "error" (any case) — the runtime told the model its call failed — and
    /// `first` otherwise.
    RepairOnError {
        first: ScriptedCall,
        repaired: ScriptedCall,
    },
}

/// The turns of a scripted conversation; past the end, the last turn repeats.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Scenario {
    turns: Vec<Turn>,
}

/// The assistant message of a scripted answer, and why the model stopped.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    /// `choices[0].message` of the response.
    pub message: Value,
    /// `"tool_calls"` or `"stop"`.
    pub finish_reason: &'static str,
}

impl Scenario {
    /// The built-in scenarios, by the names [`Scenario::named`] accepts.
    pub const NAMES: [&'static str; 4] = [
        "tool-then-answer",
        "parallel-tools",
        "five-turns",
        "loop-forever",
    ];

    pub fn new(turns: Vec<Turn>) -> Self {
        Self { turns }
    }

    pub fn turns(&self) -> &[Turn] {
        &self.turns
    }

    /// A built-in scenario; every one calls the tool `lookup` with `{"id": "<text>"}`, which
    /// the tool server answers at `GET /lookup/{id}`.
    pub fn named(name: &str) -> Option<Self> {
        let lookup = |id: &str| ScriptedCall::new("lookup", json!({ "id": id }));
        let turns = match name {
            "tool-then-answer" => vec![Turn::ToolCalls(vec![lookup("42")]), Turn::EchoToolResults],
            "parallel-tools" => vec![
                Turn::ToolCalls(vec![lookup("1"), lookup("2")]),
                Turn::EchoToolResults,
            ],
            // The benchmark's shape: five model calls and four tool calls per run.
            "five-turns" => (0..4)
                .map(|turn| Turn::ToolCalls(vec![lookup(&turn.to_string())]))
                .chain([Turn::Final("done".to_owned())])
                .collect(),
            "loop-forever" => vec![Turn::ToolCalls(vec![lookup("x")])],
            _ => return None,
        };
        Some(Self::new(turns))
    }

    /// The answer to `request` (an OpenAI chat completions body), or `None` for a scenario
    /// without turns.
    pub fn reply(&self, request: &Value) -> Option<Reply> {
        let turn = turn_index(request);
        let scripted = self.turns.get(turn).or_else(|| self.turns.last())?;
        Some(match scripted {
            Turn::ToolCalls(calls) => tool_calls_reply(
                turn,
                calls
                    .iter()
                    .map(|call| (call.name.as_str(), call.arguments.to_string())),
            ),
            Turn::RawArguments { name, arguments } => {
                tool_calls_reply(turn, [(name.as_str(), arguments.clone())])
            }
            Turn::Final(content) => final_reply(content),
            Turn::EchoToolResults => final_reply(&echo_tool_results(request)),
            Turn::RepairOnError { first, repaired } => {
                let call = if last_tool_failed(request) {
                    repaired
                } else {
                    first
                };
                tool_calls_reply(turn, [(call.name.as_str(), call.arguments.to_string())])
            }
        })
    }
}

/// The scripted turn a request is at: the number of `assistant` messages it carries.
pub fn turn_index(request: &Value) -> usize {
    messages(request)
        .filter(|m| m["role"].as_str() == Some("assistant"))
        .count()
}

/// A deterministic prompt-token estimate: the characters of every message's text content,
/// divided by four (roughly a token's length in English), at least 1.
pub fn estimate_prompt_tokens(request: &Value) -> u64 {
    let chars: usize = messages(request)
        .filter_map(|m| m["content"].as_str())
        .map(|c| c.chars().count())
        .sum();
    u64::try_from(chars / 4).unwrap_or(u64::MAX).max(1)
}

fn messages(request: &Value) -> impl Iterator<Item = &Value> {
    request["messages"].as_array().into_iter().flatten()
}

fn tool_calls_reply<'a>(turn: usize, calls: impl IntoIterator<Item = (&'a str, String)>) -> Reply {
    let tool_calls: Vec<Value> = calls
        .into_iter()
        .enumerate()
        .map(|(i, (name, arguments))| {
            json!({
                // The turn in the id keeps ids unique across the whole run, as providers do.
                "id": format!("call_{turn}_{i}"),
                "type": "function",
                "function": {"name": name, "arguments": arguments},
            })
        })
        .collect();
    Reply {
        message: json!({"role": "assistant", "content": null, "tool_calls": tool_calls}),
        finish_reason: "tool_calls",
    }
}

fn final_reply(content: &str) -> Reply {
    Reply {
        message: json!({"role": "assistant", "content": content}),
        finish_reason: "stop",
    }
}

fn echo_tool_results(request: &Value) -> String {
    let results: Vec<&str> = messages(request)
        .filter(|m| m["role"].as_str() == Some("tool"))
        .map(|m| m["content"].as_str().unwrap_or_default())
        .collect();
    format!("results: {}", results.join(" | "))
}

fn last_tool_failed(request: &Value) -> bool {
    let Some(last) = messages(request).last() else {
        return false;
    };
    let content = last["content"].as_str().unwrap_or_default().to_lowercase();
    last["role"].as_str() == Some("tool")
        && (content.contains("invalid") || content.contains("error"))
}

/// A `MODEL=NAME` assignment of a built-in scenario to a model, as the binary takes it.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelScenario {
    pub model: String,
    pub scenario: Scenario,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModelScenarioError {
    #[error("`{0}` is not MODEL=SCENARIO")]
    NotAnAssignment(String),
    #[error("unknown scenario `{0}` (known: {known})", known = Scenario::NAMES.join(", "))]
    UnknownScenario(String),
}

impl FromStr for ModelScenario {
    type Err = ModelScenarioError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (model, name) = s
            .rsplit_once('=')
            .filter(|(model, name)| !model.is_empty() && !name.is_empty())
            .ok_or_else(|| ModelScenarioError::NotAnAssignment(s.to_owned()))?;
        let scenario = Scenario::named(name)
            .ok_or_else(|| ModelScenarioError::UnknownScenario(name.to_owned()))?;
        Ok(Self {
            model: model.to_owned(),
            scenario,
        })
    }
}

#[cfg(test)]
mod tests;
