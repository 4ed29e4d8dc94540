//! A compiled JSON Schema, shared by tool parameters and the output schema.
//!
//! Both are compiled once, when the definition is built, so `decide` only validates and a schema
//! that cannot compile is reported to whoever wrote the definition rather than to the model.

use jsonschema::Validator;
use serde_json::Value;

/// How much of one validation error's text is kept. The library's messages quote the offending
/// value, which can be as large as the model cares to make it; the model only needs the gist.
const MAX_ERROR_CHARS: usize = 300;

/// A schema together with its compiled validator.
#[derive(Debug, Clone)]
pub(crate) struct CompiledSchema {
    schema: Value,
    validator: Validator,
}

impl CompiledSchema {
    /// Compiles `schema`, refusing every external `$ref`.
    ///
    /// `offline()` rather than relying on the crate's disabled `resolve-http` feature: features
    /// are unified across the workspace, so another crate enabling the defaults would otherwise
    /// quietly give agent definitions the power to make HTTP requests at compile time.
    pub(crate) fn compile(schema: Value) -> Result<Self, String> {
        match jsonschema::options().offline().build(&schema) {
            Ok(validator) => Ok(Self { schema, validator }),
            Err(err) => Err(describe(err.instance_path().as_str(), &err.to_string())),
        }
    }

    pub(crate) fn schema(&self) -> &Value {
        &self.schema
    }

    /// The first `max` validation errors, each prefixed by the JSON pointer of the offending
    /// value, and how many errors there were in all.
    pub(crate) fn errors(&self, instance: &Value, max: usize) -> (Vec<String>, usize) {
        let mut shown = Vec::new();
        let mut total = 0usize;
        for err in self.validator.iter_errors(instance) {
            total = total.saturating_add(1);
            if shown.len() < max {
                shown.push(describe(err.instance_path().as_str(), &err.to_string()));
            }
        }
        (shown, total)
    }

    /// The first validation error: the JSON pointer of the offending value and the message,
    /// clipped.
    pub(crate) fn first_error(&self, instance: &Value) -> Option<(String, String)> {
        self.validator.iter_errors(instance).next().map(|err| {
            (
                err.instance_path().as_str().to_owned(),
                clip(&err.to_string(), MAX_ERROR_CHARS),
            )
        })
    }
}

/// `at `/a/b`: message`, with the root spelled out because an empty pointer reads as nothing.
fn describe(pointer: &str, message: &str) -> String {
    let place = if pointer.is_empty() {
        "(root)"
    } else {
        pointer
    };
    format!("at `{place}`: {}", clip(message, MAX_ERROR_CHARS))
}

/// The longest prefix of `text` of at most `max` bytes that ends on a char boundary, with an
/// ellipsis when something was cut.
pub(crate) fn clip(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut cut = max;
    while cut > 0 && !text.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}…", text.get(..cut).unwrap_or_default())
}

/// How a JSON value is named in error messages.
pub(crate) fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Formats the result of [`CompiledSchema::errors`] as one list, saying how many were left out.
pub(crate) fn error_list(shown: &[String], total: usize) -> String {
    let mut out = shown.join("\n- ");
    out.insert_str(0, "- ");
    let hidden = total.saturating_sub(shown.len());
    if hidden > 0 {
        out.push_str(&format!("\n- … and {hidden} more"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn remote_refs_are_refused() {
        let err = CompiledSchema::compile(json!({"$ref": "https://example.com/s.json"}))
            .expect_err("remote refs must not be fetched");
        assert!(err.contains("https://example.com/s.json"), "{err}");
    }

    #[test]
    fn local_refs_work() {
        let schema = json!({
            "$defs": {"n": {"type": "integer"}},
            "type": "object",
            "properties": {"x": {"$ref": "#/$defs/n"}}
        });
        let compiled = CompiledSchema::compile(schema).expect("local refs compile");
        let (errors, total) = compiled.errors(&json!({"x": "one"}), 5);
        assert_eq!(total, 1);
        assert!(errors[0].starts_with("at `/x`:"), "{errors:?}");
    }

    #[test]
    fn clip_respects_char_boundaries() {
        assert_eq!(clip("héllo", 2), "h…");
        assert_eq!(clip("héllo", 3), "hé…");
        assert_eq!(clip("abc", 3), "abc");
    }

    #[test]
    fn error_list_counts_the_rest() {
        let list = error_list(&["a".into(), "b".into()], 4);
        assert_eq!(list, "- a\n- b\n- … and 2 more");
    }
}
