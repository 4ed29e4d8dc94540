use serde_json::json;

use super::*;

/// The field and rule of a rejected body, the input read as for an agent without a schema.
fn rejection(body: &str) -> (String, String) {
    let parsed = parse_submit(body.as_bytes()).and_then(|req| job_input(req.input, None));
    match parsed {
        Err(ApiError::InvalidField { field, detail }) => (field, detail),
        Err(other) => (format!("<{other}>"), String::new()),
        Ok(_) => ("<ok>".into(), String::new()),
    }
}

fn field_of(body: &str) -> String {
    rejection(body).0
}

#[test]
fn accepts_text_and_messages() {
    let req = parse_submit(br#"{"agent":"a","input":"hi","metadata":{"k":1}}"#).expect("ok");
    assert_eq!(
        job_input(req.input, None).expect("text"),
        JobInput::Text("hi".into())
    );
    let req = parse_submit(
        br#"{"agent":"a","input":{"messages":[{"role":"user","content":"x"}]},"webhook_url":"https://example.com/h"}"#,
    )
    .expect("ok");
    assert_eq!(
        req.webhook_url.expect("url").host_str(),
        Some("example.com")
    );
    assert!(matches!(
        job_input(req.input, None),
        Ok(JobInput::Messages { .. })
    ));
}

#[test]
fn names_the_bad_field() {
    for (body, field) in [
        (r#"{"input":"x"}"#, "agent"),
        (r#"{"agent":7,"input":"x"}"#, "agent"),
        (r#"{"agent":"","input":"x"}"#, "agent"),
        (r#"{"agent":"a"}"#, "input"),
        (r#"{"agent":"a","input":null}"#, "input"),
        (r#"{"agent":"a","input":""}"#, "input"),
        (r#"{"agent":"a","input":5}"#, "input"),
        (r#"{"agent":"a","input":{"messages":[]}}"#, "input.messages"),
        (r#"{"agent":"a","input":{"messages":{}}}"#, "input.messages"),
        (r#"{"agent":"a","input":{"msgs":[]}}"#, "input.msgs"),
        (
            r#"{"agent":"a","input":{"messages":[{"role":"user","content":"x"},{"role":"robot","content":"x"}]}}"#,
            "input.messages[1].role",
        ),
        (
            r#"{"agent":"a","input":{"messages":[{"role":"user"}]}}"#,
            "input.messages[0].content",
        ),
        (
            r#"{"agent":"a","input":{"messages":[{"role":"user","content":"x","name":"n"}]}}"#,
            "input.messages[0].name",
        ),
        (
            r#"{"agent":"a","input":"x","webhook_url":"nope"}"#,
            "webhook_url",
        ),
        (
            r#"{"agent":"a","input":"x","webhook_url":5}"#,
            "webhook_url",
        ),
        (r#"{"agent":"a","input":"x","metadata":[1]}"#, "metadata"),
        (r#"{"agent":"a","input":"x","agnet":"b"}"#, "agnet"),
        (
            r#"{"agent":"a","input":"x","timeout_secs":0}"#,
            "timeout_secs",
        ),
        (
            r#"{"agent":"a","input":"x","timeout_secs":1.5}"#,
            "timeout_secs",
        ),
        (
            r#"{"agent":"a","input":"x","timeout_secs":"9"}"#,
            "timeout_secs",
        ),
        (
            r#"{"agent":"a","input":"x","limits":{"max_turns":0}}"#,
            "limits.max_turns",
        ),
        (
            r#"{"agent":"a","input":"x","limits":{"max_cost_usd":"1"}}"#,
            "limits.max_cost_usd",
        ),
        (
            r#"{"agent":"a","input":"x","limits":{"max_turnz":3}}"#,
            "limits.max_turnz",
        ),
        (r#"{"agent":"a","input":"x","limits":[1]}"#, "limits"),
    ] {
        assert_eq!(field_of(body), field, "{body}");
    }
}

#[test]
fn rules_are_stated() {
    assert_eq!(
        rejection(r#"{"input":"x"}"#),
        ("agent".into(), "is required".into())
    );
    assert_eq!(
        rejection(r#"{"agent":"a","input":"x","agnet":"b"}"#),
        (
            "agnet".into(),
            "unknown field; expected one of agent, input, webhook_url, metadata, timeout_secs, limits"
                .into()
        )
    );
    let (field, rule) =
        rejection(r#"{"agent":"a","input":{"messages":[{"role":"robot","content":"x"}]}}"#);
    assert_eq!(field, "input.messages[0].role");
    assert!(
        rule.contains("system") && rule.contains("assistant"),
        "{rule}"
    );
    assert!(!rule.contains("line 1"), "no parser positions: {rule}");
}

#[test]
fn limits_are_read() {
    let req =
        parse_submit(br#"{"agent":"a","input":"x","limits":{"max_turns":3,"max_cost_usd":0.5}}"#)
            .expect("ok");
    let limits = req.limits.expect("limits");
    assert_eq!(limits.max_turns, Some(3));
    assert_eq!(limits.max_cost_usd, Some(0.5));
    assert_eq!(limits.max_tool_calls, None);
    let req = parse_submit(br#"{"agent":"a","input":"x","limits":{"max_turns":99999999999}}"#)
        .expect("ok");
    assert_eq!(req.limits.expect("limits").max_turns, Some(u32::MAX));
    // JSON Schema's integers include 27.0.
    let req = parse_submit(
        br#"{"agent":"a","input":"x","timeout_secs":27.0,"limits":{"max_turns":2.0}}"#,
    )
    .expect("ok");
    assert_eq!(req.timeout_secs, Some(27));
    assert_eq!(req.limits.expect("limits").max_turns, Some(2));
    let req = parse_submit(br#"{"agent":"a","input":"x","limits":{"max_total_tokens":123456789012345678901234567890}}"#)
        .expect("ok");
    assert_eq!(req.limits.expect("limits").max_total_tokens, Some(u64::MAX));
}

#[test]
fn sizes_are_bounded() {
    let long = |n: usize| "x".repeat(n);
    let messages = |n: usize| {
        let one = json!({"role": "user", "content": "x"});
        json!({"agent": "a", "input": {"messages": vec![one; n]}}).to_string()
    };
    assert_eq!(field_of(&messages(MAX_MESSAGES)), "<ok>");
    assert_eq!(field_of(&messages(MAX_MESSAGES + 1)), "input.messages");

    let text = |n: usize| json!({"agent": "a", "input": long(n)}).to_string();
    assert_eq!(field_of(&text(MAX_CONTENT_BYTES)), "<ok>");
    assert_eq!(field_of(&text(MAX_CONTENT_BYTES + 1)), "input");
    let content = json!({"agent": "a", "input": {"messages": [{"role": "user", "content": long(MAX_CONTENT_BYTES + 1)}]}});
    assert_eq!(field_of(&content.to_string()), "input.messages[0].content");

    let agent = json!({"agent": long(MAX_AGENT_CHARS + 1), "input": "x"});
    assert_eq!(field_of(&agent.to_string()), "agent");

    let url = |n: usize| format!("https://example.com/{}", long(n - 20));
    let with_url = |u: String| json!({"agent": "a", "input": "x", "webhook_url": u}).to_string();
    assert_eq!(field_of(&with_url(url(MAX_URL_CHARS))), "<ok>");
    assert_eq!(field_of(&with_url(url(MAX_URL_CHARS + 1))), "webhook_url");

    let keys: Map<String, Value> = (0..=MAX_METADATA_KEYS)
        .map(|i| (format!("k{i}"), json!(1)))
        .collect();
    let with_meta = |m: Value| json!({"agent": "a", "input": "x", "metadata": m}).to_string();
    assert_eq!(field_of(&with_meta(Value::Object(keys))), "metadata");
    assert_eq!(
        field_of(&with_meta(json!({"k": long(MAX_METADATA_BYTES)}))),
        "metadata"
    );
}

#[test]
fn nesting_is_bounded() {
    let nested = |levels: usize| {
        let mut value = json!(1);
        for _ in 0..levels {
            value = json!([value]);
        }
        value
    };
    let meta = |levels: usize| {
        json!({"agent": "a", "input": "x", "metadata": {"k": nested(levels)}}).to_string()
    };
    assert_eq!(field_of(&meta(MAX_JSON_DEPTH - 1)), "<ok>");
    assert_eq!(field_of(&meta(MAX_JSON_DEPTH)), "metadata");
    let input = |levels: usize| json!({"agent": "a", "input": nested(levels)}).to_string();
    let parsed = parse_submit(input(MAX_JSON_DEPTH).as_bytes());
    assert!(parsed.is_ok(), "{parsed:?}");
    assert!(matches!(
        parse_submit(input(MAX_JSON_DEPTH + 1).as_bytes()),
        Err(ApiError::InvalidField { field, .. }) if field == "input"
    ));
    // Deeper than serde_json reads at all: a body error, not a stack overflow.
    let deep = format!(
        r#"{{"agent":"a","input":{}1{}}}"#,
        "[".repeat(10_000),
        "]".repeat(10_000)
    );
    assert!(matches!(
        parse_submit(deep.as_bytes()),
        Err(ApiError::InvalidBody(_))
    ));
}

#[test]
fn webhook_urls_are_http_without_credentials() {
    for (url, ok) in [
        ("https://example.com/h", true),
        ("http://example.com:8080/h?x=1", true),
        ("ftp://example.com/h", false),
        ("file:///etc/passwd", false),
        ("https://user:pw@example.com/h", false),
        ("https://user@example.com/h", false),
    ] {
        let body = json!({"agent": "a", "input": "x", "webhook_url": url}).to_string();
        let field = field_of(&body);
        assert_eq!(field == "<ok>", ok, "{url}: {field}");
    }
}

#[test]
fn structured_input_is_checked_against_the_agent_schema() {
    let schema = InputSchema::new(json!({
        "type": "object",
        "required": ["invoice"],
        "properties": {
            "invoice": {"type": "object", "properties": {"lines": {"type": "array", "items": {"type": "object", "required": ["sku"]}}}},
        },
    }))
    .expect("schema");
    let ok = json!({"invoice": {"lines": [{"sku": "A1"}]}});
    assert_eq!(
        job_input(ok.clone(), Some(&schema)).expect("valid"),
        JobInput::Data { data: ok }
    );
    let bad = json!({"invoice": {"lines": [{"sku": "A1"}, {"qty": 2}]}});
    match job_input(bad, Some(&schema)) {
        Err(ApiError::InvalidField { field, detail }) => {
            assert_eq!(field, "input.invoice.lines[1]");
            assert!(detail.contains("sku"), "{detail}");
        }
        other => panic!("expected a field error, got {other:?}"),
    }
    match job_input(json!("text"), Some(&schema)) {
        Err(ApiError::InvalidField { field, .. }) => assert_eq!(field, "input"),
        other => panic!("expected a field error, got {other:?}"),
    }
    assert_eq!(pointer_path("input", "/a~1b/0/c~0d"), "input.a/b[0].c~d");
}

#[test]
fn rejects_non_objects_and_bad_json() {
    for body in [
        &b"[1]"[..],
        b"{\"agent\":",
        b"\xff\xfe",
        b"{\"agent\":\"a\",\"input\":\"x\"} x",
    ] {
        assert!(
            matches!(parse_submit(body), Err(ApiError::InvalidBody(_))),
            "{}",
            String::from_utf8_lossy(body)
        );
    }
}

#[test]
fn blank_means_what_the_documents_pattern_means() {
    for blank in ["", " ", "\t\n", "\u{a0}\u{3000}", "\u{feff}"] {
        assert!(is_blank(blank), "{blank:?}");
    }
    // ECMA-262's `\S` matches NEL, so the document calls it not blank; so do we.
    for not_blank in ["a", " x ", "\u{85}", "\u{200b}"] {
        assert!(!is_blank(not_blank), "{not_blank:?}");
    }
}
