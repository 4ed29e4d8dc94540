//! Checking a final answer against the output schema, and asking for a repair.

use serde_json::Value;

use crate::definition::OutputSchema;
use crate::schema::error_list;

/// How many schema errors a repair request quotes.
const MAX_OUTPUT_ERRORS: usize = 5;

/// The answer's JSON, if it satisfies the schema, or what is wrong with it.
///
/// The JSON is the whole text or, failing that, the content of a Markdown code fence: models
/// wrap JSON in ```` ```json ```` fences even when told not to, and that is not worth a repair.
/// The first candidate that validates wins; if none does, the first that parsed is reported.
pub(super) fn check(schema: &OutputSchema, text: &str) -> Result<Value, String> {
    if text.trim().is_empty() {
        return Err("the answer is empty; it must be JSON".to_owned());
    }
    let mut first_failure: Option<String> = None;
    let mut parse_error = None;
    for candidate in candidates(text) {
        match serde_json::from_str::<Value>(candidate.trim()) {
            Ok(value) => {
                let (errors, total) = schema.compiled().errors(&value, MAX_OUTPUT_ERRORS);
                if total == 0 {
                    return Ok(value);
                }
                first_failure.get_or_insert_with(|| {
                    format!(
                        "the JSON does not match the schema:\n{}",
                        error_list(&errors, total)
                    )
                });
            }
            // The last error is the most specific: that of the fence, if there is one.
            Err(err) => parse_error = Some(err),
        }
    }
    Err(first_failure.unwrap_or_else(|| match parse_error {
        Some(err) => format!("the answer is not valid JSON: {err}"),
        None => "the answer is not valid JSON".to_owned(),
    }))
}

/// The whole text, then the content of each fenced block.
fn candidates(text: &str) -> impl Iterator<Item = &str> {
    // After splitting on fences, the odd pieces are inside one. An unclosed last fence still
    // counts: a model cut off by `max_tokens` leaves one, and the JSON will just fail to parse.
    std::iter::once(text).chain(text.split("```").skip(1).step_by(2).map(strip_info_string))
}

/// Drops a fence's info string (`json`, `JSON`, …) from the first line of its content.
fn strip_info_string(block: &str) -> &str {
    match block.split_once('\n') {
        Some((info, body))
            if info
                .trim()
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') =>
        {
            body
        }
        _ => block,
    }
}

/// The user message that asks the model to fix its answer. It carries the schema, because the
/// system prompt may not.
pub(super) fn repair_request(schema: &OutputSchema, problem: &str) -> String {
    format!(
        "Your answer does not have the required format: {problem}\n\n\
         Reply with only the corrected JSON and no other text. \
         It must validate against this JSON Schema:\n{}",
        schema.schema()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema() -> OutputSchema {
        OutputSchema::new(json!({
            "type": "object",
            "properties": {"city": {"type": "string"}, "temp": {"type": "number"}},
            "required": ["city", "temp"]
        }))
        .expect("valid schema")
    }

    #[test]
    fn whole_text_or_fenced() {
        let expected = json!({"city": "Oslo", "temp": 3});
        let texts = [
            r#"{"city": "Oslo", "temp": 3}"#,
            "  {\"city\": \"Oslo\", \"temp\": 3}\n",
            "Here you go:\n```json\n{\"city\": \"Oslo\", \"temp\": 3}\n```\nAnything else?",
            "```\n{\"city\": \"Oslo\", \"temp\": 3}\n```",
            "```JSON\n{\"city\": \"Oslo\", \"temp\": 3}",
            "```{\"city\": \"Oslo\", \"temp\": 3}```",
            "Example: ```json\n{\"city\": 1}\n``` Answer: ```json\n{\"city\": \"Oslo\", \"temp\": 3}\n```",
        ];
        for text in texts {
            assert_eq!(check(&schema(), text), Ok(expected.clone()), "{text}");
        }
    }

    #[test]
    fn explains_what_failed() {
        let err = check(&schema(), "```json\n{\"city\": \n```").expect_err("bad JSON");
        assert!(err.starts_with("the answer is not valid JSON: "), "{err}");
        let err = check(&schema(), r#"{"city": 5}"#).expect_err("invalid");
        assert!(err.contains("at `/city`:"), "{err}");
        assert!(err.contains("\"temp\" is a required property"), "{err}");
        assert_eq!(
            check(&schema(), " \n"),
            Err("the answer is empty; it must be JSON".to_owned())
        );
    }

    #[test]
    fn repair_request_carries_problem_and_schema() {
        let text = repair_request(&schema(), "the answer is empty");
        assert!(text.contains("the answer is empty"));
        assert!(text.contains("only the corrected JSON"));
        assert!(text.contains(r#""required":["city","temp"]"#), "{text}");
    }
}
