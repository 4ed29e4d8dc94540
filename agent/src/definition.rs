//! What an agent is: its tools, limits, prices and the shape of its answer.
//!
//! The worker builds an [`AgentDefinition`] from its configuration. Everything that can be wrong
//! with a definition (a tool name OpenAI would reject, a schema that does not compile) is caught
//! here, once, so a bad definition fails loudly at startup instead of on every run.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::message::Usage;
use crate::schema::{json_kind, CompiledSchema};

/// A definition that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DefinitionError {
    #[error(
        "invalid tool name {name:?}: it must be 1 to 64 characters, each a letter, a digit, `_` or `-`"
    )]
    InvalidToolName { name: String },
    #[error("tool `{tool}`: `parameters` must be a JSON Schema object, not {found}")]
    ParametersNotAnObject { tool: String, found: &'static str },
    #[error("tool `{tool}`: the parameters schema does not compile: {reason}")]
    InvalidParametersSchema { tool: String, reason: String },
    #[error("tool `{tool}`: max_response_bytes must be greater than 0")]
    ZeroMaxResponseBytes { tool: String },
    #[error("the output schema does not compile: {reason}")]
    InvalidOutputSchema { reason: String },
    #[error("the input schema does not compile: {reason}")]
    InvalidInputSchema { reason: String },
    #[error("tool `{tool}` is defined more than once")]
    DuplicateTool { tool: String },
}

/// What running a tool may do to the world, which decides whether it may be repeated on resume.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SideEffect {
    /// Repeating it is harmless.
    Read,
    /// Repeating it with the same idempotency key is harmless.
    Idempotent,
    /// Must not be repeated blindly: an intent is recorded before it runs.
    Write,
}

/// One tool the model may call.
///
/// Fields are private so the compiled validator can never drift from `parameters`.
#[derive(Debug, Clone)]
pub struct ToolSpec {
    name: String,
    description: String,
    parameters: CompiledSchema,
    side_effect: SideEffect,
    max_response_bytes: usize,
}

impl ToolSpec {
    /// Checks the name against OpenAI's rule, compiles the parameters schema and checks the
    /// response cap.
    pub fn new(
        name: impl Into<String>,
        description: impl Into<String>,
        parameters: Value,
        side_effect: SideEffect,
        max_response_bytes: usize,
    ) -> Result<Self, DefinitionError> {
        let name = name.into();
        if !valid_tool_name(&name) {
            return Err(DefinitionError::InvalidToolName { name });
        }
        if !parameters.is_object() {
            // OpenAI rejects boolean schemas here, and would do so on every single call.
            let found = json_kind(&parameters);
            return Err(DefinitionError::ParametersNotAnObject { tool: name, found });
        }
        if max_response_bytes == 0 {
            return Err(DefinitionError::ZeroMaxResponseBytes { tool: name });
        }
        let parameters = match CompiledSchema::compile(parameters) {
            Ok(compiled) => compiled,
            Err(reason) => {
                return Err(DefinitionError::InvalidParametersSchema { tool: name, reason })
            }
        };
        Ok(Self {
            name,
            description: description.into(),
            parameters,
            side_effect,
            max_response_bytes,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn description(&self) -> &str {
        &self.description
    }

    /// The JSON Schema of the arguments object.
    pub fn parameters(&self) -> &Value {
        self.parameters.schema()
    }

    pub fn side_effect(&self) -> SideEffect {
        self.side_effect
    }

    /// How much of a tool's response is fed back to the model.
    pub fn max_response_bytes(&self) -> usize {
        self.max_response_bytes
    }

    /// The entry of OpenAI's `tools` request array for this tool.
    pub fn openai_tool(&self) -> Value {
        json!({
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": self.parameters.schema(),
            }
        })
    }

    pub(crate) fn compiled_parameters(&self) -> &CompiledSchema {
        &self.parameters
    }
}

/// OpenAI's rule for function names: `^[a-zA-Z0-9_-]{1,64}$`.
fn valid_tool_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// The ceilings of one run. Reaching any of them stops the run with its own reason.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Model calls, including repair calls.
    pub max_turns: u32,
    /// Tool calls, including those refused as invalid: a model stuck calling a tool wrongly is
    /// still looping.
    pub max_tool_calls: u32,
    pub max_total_tokens: u64,
    pub max_cost_usd: f64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_turns: 10,
            max_tool_calls: 50,
            max_total_tokens: 200_000,
            max_cost_usd: 1.0,
        }
    }
}

/// Limits a job asks for. They can only lower the agent's limits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitOverrides {
    pub max_turns: Option<u32>,
    pub max_tool_calls: Option<u32>,
    pub max_total_tokens: Option<u64>,
    pub max_cost_usd: Option<f64>,
}

impl Limits {
    /// These limits, lowered where `by` asks for less. A job may lower a limit, never raise it:
    /// the agent's owner sets the ceiling, the caller only picks a lower one.
    pub fn lowered(&self, by: &LimitOverrides) -> Limits {
        Limits {
            max_turns: by
                .max_turns
                .map_or(self.max_turns, |v| v.min(self.max_turns)),
            max_tool_calls: by
                .max_tool_calls
                .map_or(self.max_tool_calls, |v| v.min(self.max_tool_calls)),
            max_total_tokens: by
                .max_total_tokens
                .map_or(self.max_total_tokens, |v| v.min(self.max_total_tokens)),
            // `f64::min` returns the other operand when one is NaN, so a NaN override is ignored
            // rather than disabling the limit.
            max_cost_usd: by
                .max_cost_usd
                .map_or(self.max_cost_usd, |v| v.min(self.max_cost_usd)),
        }
    }
}

/// A model's price, to turn token usage into dollars.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    pub input_usd_per_million: f64,
    pub output_usd_per_million: f64,
}

impl Price {
    /// The cost of one call. Tokens are converted to `f64` first: exact up to 2^53 tokens.
    pub fn cost(&self, usage: &Usage) -> f64 {
        let input = usage.prompt_tokens as f64 * self.input_usd_per_million;
        let output = usage.completion_tokens as f64 * self.output_usd_per_million;
        (input + output) / 1_000_000.0
    }
}

/// A compiled JSON Schema that the final answer must satisfy.
#[derive(Debug, Clone)]
pub struct OutputSchema(CompiledSchema);

impl OutputSchema {
    pub fn new(schema: Value) -> Result<Self, DefinitionError> {
        CompiledSchema::compile(schema)
            .map(Self)
            .map_err(|reason| DefinitionError::InvalidOutputSchema { reason })
    }

    pub fn schema(&self) -> &Value {
        self.0.schema()
    }

    pub(crate) fn compiled(&self) -> &CompiledSchema {
        &self.0
    }
}

/// A compiled JSON Schema that a job's structured `input` must satisfy, checked where the job
/// is submitted (the runtime never sees it: an accepted input is valid by construction).
#[derive(Debug, Clone)]
pub struct InputSchema(CompiledSchema);

/// Why an input does not satisfy an [`InputSchema`]: the first violation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputViolation {
    /// Where, as a JSON pointer into the input (`/items/0/sku`); empty for the input itself.
    pub pointer: String,
    /// The rule it breaks, clipped (the library quotes the offending value).
    pub rule: String,
}

impl InputSchema {
    pub fn new(schema: Value) -> Result<Self, DefinitionError> {
        CompiledSchema::compile(schema)
            .map(Self)
            .map_err(|reason| DefinitionError::InvalidInputSchema { reason })
    }

    pub fn schema(&self) -> &Value {
        self.0.schema()
    }

    /// The first violation of the schema, if any.
    pub fn check(&self, input: &Value) -> Result<(), InputViolation> {
        match self.0.first_error(input) {
            None => Ok(()),
            Some((pointer, rule)) => Err(InputViolation { pointer, rule }),
        }
    }
}

/// Everything `decide` needs to know about the agent. A plain struct: the worker fills it from
/// its configuration, with [`ToolSpec::new`] and [`OutputSchema::new`] doing the checking.
#[derive(Debug, Clone)]
pub struct AgentDefinition {
    pub system_prompt: Option<String>,
    pub tools: Vec<ToolSpec>,
    pub limits: Limits,
    pub output_schema: Option<OutputSchema>,
    /// Without a price, runs cost nothing and only token limits apply.
    pub price: Option<Price>,
    /// How many times an answer that fails the output schema is sent back for correction.
    pub max_repairs: u32,
    /// `max_tokens` of each model call, before the remaining token budget lowers it.
    pub max_tokens: u32,
}

impl Default for AgentDefinition {
    fn default() -> Self {
        Self {
            system_prompt: None,
            tools: Vec::new(),
            limits: Limits::default(),
            output_schema: None,
            price: None,
            max_repairs: 1,
            max_tokens: 4096,
        }
    }
}

impl AgentDefinition {
    /// The tool called `name`.
    pub fn tool(&self, name: &str) -> Option<&ToolSpec> {
        self.tools.iter().find(|t| t.name == name)
    }

    /// Checks what the individual constructors cannot: tool names are unique, since the model
    /// calls tools by name and a second definition would never be reached.
    pub fn check(&self) -> Result<(), DefinitionError> {
        let mut seen = std::collections::HashSet::new();
        for tool in &self.tools {
            if !seen.insert(tool.name.as_str()) {
                return Err(DefinitionError::DuplicateTool {
                    tool: tool.name.clone(),
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tool(name: &str, parameters: Value) -> Result<ToolSpec, DefinitionError> {
        ToolSpec::new(name, "does things", parameters, SideEffect::Read, 1024)
    }

    #[test]
    fn tool_names_follow_openai_rule() {
        assert!(tool("get_weather-2", json!({"type": "object"})).is_ok());
        assert!(tool(&"a".repeat(64), json!({})).is_ok());
        for bad in ["", "has space", "dot.ted", "ünï", &"a".repeat(65)] {
            let err = tool(bad, json!({})).expect_err(bad);
            assert!(
                matches!(err, DefinitionError::InvalidToolName { .. }),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn a_schema_that_does_not_compile_names_the_tool() {
        let err = tool(
            "search",
            json!({"type": "object", "properties": {"q": {"type": "strin"}}}),
        )
        .expect_err("bad type keyword");
        let text = err.to_string();
        assert!(
            text.starts_with("tool `search`: the parameters schema does not compile:"),
            "{text}"
        );
        assert!(text.contains("/properties/q/type"), "{text}");
    }

    #[test]
    fn parameters_must_be_an_object_and_responses_capped() {
        let err = tool("t", json!(true)).expect_err("boolean schema");
        assert_eq!(
            err.to_string(),
            "tool `t`: `parameters` must be a JSON Schema object, not a boolean"
        );
        let err = ToolSpec::new("t", "", json!({}), SideEffect::Read, 0).expect_err("zero cap");
        assert_eq!(
            err,
            DefinitionError::ZeroMaxResponseBytes { tool: "t".into() }
        );
    }

    #[test]
    fn openai_tool_shape() {
        let spec = tool("lookup", json!({"type": "object"})).expect("valid");
        assert_eq!(
            spec.openai_tool(),
            json!({"type": "function", "function": {
                "name": "lookup", "description": "does things", "parameters": {"type": "object"}
            }})
        );
    }

    #[test]
    fn limits_are_lowered_never_raised() {
        let base = Limits {
            max_turns: 10,
            max_tool_calls: 50,
            max_total_tokens: 1000,
            max_cost_usd: 1.0,
        };
        let by = LimitOverrides {
            max_turns: Some(3),
            max_tool_calls: Some(500),
            max_total_tokens: None,
            max_cost_usd: Some(f64::NAN),
        };
        let lowered = base.lowered(&by);
        assert_eq!(lowered.max_turns, 3);
        assert_eq!(lowered.max_tool_calls, 50);
        assert_eq!(lowered.max_total_tokens, 1000);
        assert_eq!(lowered.max_cost_usd, 1.0);
        let by = LimitOverrides {
            max_cost_usd: Some(0.25),
            ..LimitOverrides::default()
        };
        assert_eq!(base.lowered(&by).max_cost_usd, 0.25);
        assert_eq!(base.lowered(&LimitOverrides::default()), base);
    }

    #[test]
    fn limits_serde_fills_defaults_and_refuses_unknown_fields() {
        let limits: Limits =
            serde_json::from_value(json!({"max_turns": 3})).expect("partial limits");
        assert_eq!(
            limits,
            Limits {
                max_turns: 3,
                ..Limits::default()
            }
        );
        assert!(serde_json::from_value::<Limits>(json!({"max_turn": 3})).is_err());
        assert!(serde_json::from_value::<LimitOverrides>(json!({"max_cost": 1.0})).is_err());
    }

    #[test]
    fn price_cost() {
        let price = Price {
            input_usd_per_million: 2.0,
            output_usd_per_million: 8.0,
        };
        let usage = Usage {
            prompt_tokens: 1_000_000,
            completion_tokens: 500_000,
            total_tokens: 1_500_000,
        };
        assert!((price.cost(&usage) - 6.0).abs() < 1e-9);
    }

    #[test]
    fn output_schema_must_compile_and_tools_be_unique() {
        assert!(OutputSchema::new(json!({"type": "object"})).is_ok());
        let err = OutputSchema::new(json!({"minimum": "zero"})).expect_err("bad schema");
        assert!(
            matches!(err, DefinitionError::InvalidOutputSchema { .. }),
            "{err}"
        );
        let spec = tool("a", json!({})).expect("valid");
        let def = AgentDefinition {
            tools: vec![spec.clone(), spec],
            ..AgentDefinition::default()
        };
        assert_eq!(
            def.check(),
            Err(DefinitionError::DuplicateTool { tool: "a".into() })
        );
    }

    #[test]
    fn definitions_can_be_shared_across_threads() {
        fn shared<T: Send + Sync>() {}
        shared::<AgentDefinition>();
    }
}
