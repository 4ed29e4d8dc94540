//! Payload privacy: prompts, model outputs, tool arguments and tool results stay out of the
//! logs unless `privacy.log_payloads` is on, and then they are masked; with `mask_output`
//! the same masking is applied to what a run gives back (the job's output and error, and the
//! steps its webhook carries).
//!
//! A [`Masker`] is built once from the configuration and replaces what its patterns find:
//! built-in shapes (e-mail addresses, card numbers that pass the Luhn check, API keys) and
//! the operator's own regular expressions, each by `[name]`. Masking is best effort by
//! nature — a pattern catches what it describes, not everything private — which is why
//! payloads are not logged at all by default, masked or not.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::LazyLock;

use regex::{Captures, Regex, RegexBuilder};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use agentfleet_agent::{Step, StepKind};

use crate::wire::JobRecord;

/// A pattern that ships with agentfleet, masked as `[<name>]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Builtin {
    /// `name@domain.tld`.
    Email,
    /// 13 to 19 digits, optionally grouped by single spaces or dashes, that pass the Luhn
    /// check; other long numbers (order ids, timestamps) are left alone.
    CardNumber,
    /// Secret-key shapes: `sk-…` (OpenAI, Anthropic's `sk-ant-…`), `sk_live_…`/`rk_live_…`
    /// (Stripe), `ghp_…` and the other GitHub token prefixes, `github_pat_…`, `AKIA…`/`ASIA…`
    /// (AWS), `xoxb-…`/`xoxp-…` (Slack), `whsec_…` (webhook secrets), `AIza…` (Google), JWTs,
    /// and the token of `Bearer <token>`.
    ApiKey,
}

impl Builtin {
    pub const ALL: [Builtin; 3] = [Self::Email, Self::CardNumber, Self::ApiKey];

    /// The name in the configuration, and in the replacement (`[email]`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Email => "email",
            Self::CardNumber => "card_number",
            Self::ApiKey => "api_key",
        }
    }
}

static EMAIL: LazyLock<Regex> = LazyLock::new(|| {
    builtin_regex(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
});

/// A run of digits with single spaces or dashes between them; which part of it is a card
/// number is decided by [`mask_card_numbers`]. (Leftmost-first matching starts a run at its
/// first digit, so no boundary is needed: `id4111…` is caught too.)
static DIGIT_RUN: LazyLock<Regex> = LazyLock::new(|| builtin_regex(r"[0-9]+(?:[ -][0-9]+)*"));

static API_KEY: LazyLock<Regex> = LazyLock::new(|| {
    builtin_regex(concat!(
        r"\b(?:",
        r"sk-[A-Za-z0-9_-]{16,}",
        r"|(?:sk|rk)_(?:live|test)_[A-Za-z0-9]{16,}",
        r"|gh[pousr]_[A-Za-z0-9]{30,}",
        r"|github_pat_[A-Za-z0-9_]{30,}",
        r"|(?:AKIA|ASIA)[0-9A-Z]{16}\b",
        r"|xox[abposr]-[A-Za-z0-9-]{10,}",
        r"|whsec_[A-Za-z0-9+/=]{16,}",
        r"|AIza[0-9A-Za-z_-]{35}",
        r"|eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}",
        r")",
    ))
});

/// `Bearer <token>`: the word is kept, the token masked.
static BEARER: LazyLock<Regex> =
    LazyLock::new(|| builtin_regex(r"(?i)\b(bearer)\s+[A-Za-z0-9._~+/=-]{8,}"));

fn builtin_regex(pattern: &str) -> Regex {
    // The built-in patterns are constants, covered by the tests below.
    Regex::new(pattern).unwrap_or_else(|e| panic!("built-in privacy pattern: {e}"))
}

/// Largest compiled size of an operator's pattern: a typo like `(a{1000}){1000}` is refused
/// at load time rather than slowing every masked line.
const CUSTOM_SIZE_LIMIT: usize = 1 << 20;

/// Why an operator's pattern cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PatternError {
    #[error("not a usable regular expression: {0}")]
    Syntax(#[from] regex::Error),
    #[error("it matches the empty string, so it would mask between every character")]
    MatchesEmpty,
}

/// One pattern and what replaces its matches.
#[derive(Debug, Clone)]
enum Rule {
    Email,
    CardNumber,
    ApiKey,
    Custom { regex: Regex, replacement: String },
}

/// Masks the configured patterns in text and in JSON values.
#[derive(Debug, Clone)]
pub struct Masker {
    rules: Vec<Rule>,
}

impl Default for Masker {
    /// Every built-in pattern, no custom ones.
    fn default() -> Self {
        Self::new(&Builtin::ALL)
    }
}

impl Masker {
    /// A masker for these built-in patterns. API keys go first, so `Bearer sk-…` loses its
    /// key before anything else looks at it.
    pub fn new(builtins: &[Builtin]) -> Self {
        let mut rules = Vec::new();
        for (builtin, rule) in [
            (Builtin::ApiKey, Rule::ApiKey),
            (Builtin::Email, Rule::Email),
            (Builtin::CardNumber, Rule::CardNumber),
        ] {
            if builtins.contains(&builtin) {
                rules.push(rule);
            }
        }
        Self { rules }
    }

    /// Adds the operator's pattern `regex`, whose matches become `[name]`; custom patterns
    /// apply after the built-in ones, in the order added.
    pub fn with_pattern(mut self, name: &str, regex: &str) -> Result<Self, PatternError> {
        let regex = RegexBuilder::new(regex)
            .size_limit(CUSTOM_SIZE_LIMIT)
            .build()?;
        if regex.is_match("") {
            return Err(PatternError::MatchesEmpty);
        }
        self.rules.push(Rule::Custom {
            regex,
            replacement: format!("[{name}]"),
        });
        Ok(self)
    }

    /// `text` with every match of every pattern replaced (borrowed when nothing matched).
    pub fn mask<'a>(&self, text: &'a str) -> Cow<'a, str> {
        let mut out = Cow::Borrowed(text);
        for rule in &self.rules {
            if let Some(masked) = rule.apply(&out) {
                out = Cow::Owned(masked);
            }
        }
        out
    }

    /// Masks `text` in place.
    pub fn mask_string(&self, text: &mut String) {
        if let Cow::Owned(masked) = self.mask(text) {
            *text = masked;
        }
    }

    /// Masks every string of `value` in place. A number that masking would change (a card
    /// number sent as a JSON number) becomes the masked string. Object keys are left alone.
    pub fn mask_json(&self, value: &mut Value) {
        match value {
            Value::String(text) => self.mask_string(text),
            Value::Number(number) => {
                let text = number.to_string();
                if let Cow::Owned(masked) = self.mask(&text) {
                    *value = Value::String(masked);
                }
            }
            Value::Array(items) => items.iter_mut().for_each(|item| self.mask_json(item)),
            Value::Object(fields) => fields.values_mut().for_each(|item| self.mask_json(item)),
            Value::Null | Value::Bool(_) => {}
        }
    }

    /// Masks what a step says (the model's answer and tool-call arguments, a repair request,
    /// a tool's arguments and result); names, ids, statuses and numbers stay.
    pub fn mask_step(&self, step: &mut Step) {
        let mask = |text: &mut String| self.mask_string(text);
        match &mut step.kind {
            StepKind::Model {
                feedback, message, ..
            } => {
                feedback.iter_mut().for_each(mask);
                message.content.iter_mut().for_each(mask);
                for call in &mut message.tool_calls {
                    mask(&mut call.function.arguments);
                }
            }
            StepKind::Tool {
                arguments, content, ..
            } => {
                mask(arguments);
                mask(content);
            }
            StepKind::ToolIntent { .. } => {}
        }
    }

    /// Masks what a job gives back: its output, its error and each attempt's, and its steps
    /// when the record carries them.
    pub fn mask_result(&self, record: &mut JobRecord) {
        if let Some(output) = &mut record.output {
            self.mask_json(output);
        }
        if let Some(error) = &mut record.error {
            self.mask_string(&mut error.message);
        }
        for attempt in &mut record.attempt_errors {
            self.mask_string(&mut attempt.message);
        }
        for step in record.steps.iter_mut().flatten() {
            self.mask_step(step);
        }
    }
}

impl Rule {
    /// The masked text, or `None` when nothing was masked.
    fn apply(&self, text: &str) -> Option<String> {
        let replaced = match self {
            Self::Email => EMAIL.replace_all(text, "[email]"),
            Self::ApiKey => {
                let keys = API_KEY.replace_all(text, "[api_key]");
                let bearer = BEARER.replace_all(&keys, |caps: &Captures<'_>| {
                    format!("{} [api_key]", &caps[1])
                });
                match bearer {
                    Cow::Owned(masked) => Cow::Owned(masked),
                    Cow::Borrowed(_) => keys,
                }
            }
            Self::CardNumber => return mask_card_numbers(text),
            Self::Custom { regex, replacement } => regex.replace_all(text, replacement.as_str()),
        };
        match replaced {
            Cow::Owned(masked) => Some(masked),
            Cow::Borrowed(_) => None,
        }
    }
}

/// Card numbers in `text`, masked: in each run of digit groups, the leftmost, longest span
/// of whole groups holding 13 to 19 digits that passes the Luhn check (so `4111 1111 1111
/// 1111 1234` loses the card and keeps `1234`). `None` when there is none.
fn mask_card_numbers(text: &str) -> Option<String> {
    let mut out = String::new();
    let mut copied = 0;
    let mut found = false;
    for run in DIGIT_RUN.find_iter(text) {
        let groups: Vec<(usize, usize)> = run_groups(run.as_str())
            .map(|(start, end)| (run.start() + start, run.start() + end))
            .collect();
        let mut i = 0;
        while i < groups.len() {
            match card_at(text, &groups[i..]) {
                Some(len) => {
                    let (start, end) = (groups[i].0, groups[i + len - 1].1);
                    out.push_str(&text[copied..start]);
                    out.push_str("[card_number]");
                    copied = end;
                    found = true;
                    i += len;
                }
                None => i += 1,
            }
        }
    }
    if !found {
        return None;
    }
    out.push_str(&text[copied..]);
    Some(out)
}

/// The byte ranges of the digit groups of a run (`4111 1111` → `0..4`, `5..9`).
fn run_groups(run: &str) -> impl Iterator<Item = (usize, usize)> + '_ {
    let mut start = 0;
    run.split([' ', '-']).map(move |group| {
        let range = (start, start + group.len());
        start += group.len() + 1;
        range
    })
}

/// How many of `groups` (from the first) make the longest card number starting there.
fn card_at(text: &str, groups: &[(usize, usize)]) -> Option<usize> {
    let mut digits = String::new();
    let mut candidates = Vec::new();
    for (count, &(start, end)) in groups.iter().enumerate() {
        digits.push_str(&text[start..end]);
        if digits.len() > 19 {
            break;
        }
        if digits.len() >= 13 {
            candidates.push((count + 1, digits.clone()));
        }
    }
    candidates
        .into_iter()
        .rev()
        .find(|(_, digits)| luhn(digits))
        .map(|(count, _)| count)
}

/// The Luhn checksum of a string of ASCII digits.
fn luhn(digits: &str) -> bool {
    let sum: u32 = digits
        .bytes()
        .rev()
        .enumerate()
        .map(|(i, b)| {
            let d = u32::from(b - b'0');
            if i % 2 == 1 {
                let doubled = d * 2;
                if doubled > 9 {
                    doubled - 9
                } else {
                    doubled
                }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// What a process needs to keep payloads private: whether payloads may be logged, the
/// masker, and which agents' results are masked.
#[derive(Debug, Clone, Default)]
pub struct Privacy {
    log_payloads: bool,
    mask_output: bool,
    /// Agents whose `mask_output` differs from the default above.
    agents: BTreeMap<String, bool>,
    masker: Masker,
}

impl Privacy {
    pub fn new(
        log_payloads: bool,
        mask_output: bool,
        agents: BTreeMap<String, bool>,
        masker: Masker,
    ) -> Self {
        Self {
            log_payloads,
            mask_output,
            agents,
            masker,
        }
    }

    /// Whether payload log lines are written at all.
    pub fn log_payloads(&self) -> bool {
        self.log_payloads
    }

    pub fn masker(&self) -> &Masker {
        &self.masker
    }

    /// `text` as a payload log line may show it: masked, or `None` when payloads are not
    /// logged.
    pub fn loggable(&self, text: &str) -> Option<String> {
        self.log_payloads
            .then(|| self.masker.mask(text).into_owned())
    }

    /// Whether what `agent`'s runs give back is masked.
    pub fn masks_output(&self, agent: &str) -> bool {
        self.agents.get(agent).copied().unwrap_or(self.mask_output)
    }
}

#[cfg(test)]
mod tests {
    use agentfleet_agent::{AssistantMessage, ToolCall, ToolStatus};
    use chrono::Utc;
    use serde_json::json;

    use super::*;

    fn masked(text: &str) -> String {
        Masker::default().mask(text).into_owned()
    }

    #[test]
    fn emails_are_masked() {
        assert_eq!(
            masked("write to alice.smith+tag@mail.example.co.uk today"),
            "write to [email] today"
        );
        assert_eq!(masked("mailto:bob@example.com."), "mailto:[email].");
        assert_eq!(
            masked("a @ b, x@y, me@localhost"),
            "a @ b, x@y, me@localhost"
        );
    }

    #[test]
    fn only_luhn_valid_card_numbers_are_masked() {
        assert_eq!(
            masked("card 4111 1111 1111 1111 exp 12/29"),
            "card [card_number] exp 12/29"
        );
        assert_eq!(masked("4111-1111-1111-1111"), "[card_number]");
        assert_eq!(masked("amex 378282246310005."), "amex [card_number].");
        assert_eq!(masked("id4012888888881881x"), "id[card_number]x");
        // One digit off: the checksum fails, the number stays.
        assert_eq!(
            masked("card 4111 1111 1111 1112"),
            "card 4111 1111 1111 1112"
        );
        // Too short, too long, and a timestamp that fails Luhn.
        assert_eq!(masked("411111111111"), "411111111111");
        assert_eq!(masked("41111111111111111111"), "41111111111111111111");
        assert_eq!(masked("at 1718000000001"), "at 1718000000001");
        // A card followed by more digits: the card goes, the rest stays.
        assert_eq!(masked("4111 1111 1111 1111 1234"), "[card_number] 1234");
        // Two separators in a row end the run.
        assert_eq!(masked("4111  1111 1111 1111"), "4111  1111 1111 1111");
    }

    #[test]
    fn api_key_shapes_are_masked() {
        for key in [
            "sk-proj-4f9Qm2Zt8Lw1Xv7Rb3Nc",
            "sk-ant-api03-AbCdEfGhIjKlMnOpQrSt",
            "sk_live_51HxYzAbCdEfGhIjKl",
            "ghp_aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789",
            "github_pat_11ABCDEFG0123456789_abcdefghijklmnop",
            "AKIAIOSFODNN7EXAMPLE",
            "xoxb-123456789012-abcdefghij",
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "AIzaSyA1234567890abcdefghijklmnopqrstuv",
            "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.c2lnbmF0dXJlLXBhcnQ",
        ] {
            assert_eq!(masked(&format!("key={key};")), "key=[api_key];", "{key}");
        }
        assert_eq!(
            masked("Authorization: Bearer abc.DEF-123_456"),
            "Authorization: Bearer [api_key]"
        );
        assert_eq!(
            masked("bearer  sk-proj-4f9Qm2Zt8Lw1Xv7Rb3Nc"),
            "bearer  [api_key]"
        );
        // Words that merely start like a key.
        assert_eq!(
            masked("task-force sk-learn AKIA short, the bearer of news"),
            "task-force sk-learn AKIA short, the bearer of news"
        );
    }

    #[test]
    fn only_the_configured_patterns_apply() {
        let emails_only = Masker::new(&[Builtin::Email]);
        let text = "a@b.io 4111111111111111 sk-proj-4f9Qm2Zt8Lw1Xv7Rb3Nc";
        assert_eq!(
            emails_only.mask(text),
            "[email] 4111111111111111 sk-proj-4f9Qm2Zt8Lw1Xv7Rb3Nc"
        );
        assert_eq!(Masker::new(&[]).mask(text), text);
    }

    #[test]
    fn custom_patterns_become_their_name() {
        let masker = Masker::new(&[Builtin::Email])
            .with_pattern("employee_id", r"EMP-[0-9]{6}")
            .expect("valid");
        assert_eq!(
            masker.mask("EMP-204816 (emp-204816, EMP-20481) mailed x@y.org"),
            "[employee_id] (emp-204816, EMP-20481) mailed [email]"
        );
        let err = Masker::default()
            .with_pattern("bad", "EMP-(")
            .expect_err("syntax");
        assert!(matches!(err, PatternError::Syntax(_)), "{err}");
        let err = Masker::default()
            .with_pattern("empty", "x*")
            .expect_err("empty");
        assert!(matches!(err, PatternError::MatchesEmpty), "{err}");
    }

    #[test]
    fn unmatched_text_is_borrowed() {
        assert!(matches!(
            Masker::default().mask("nothing to see, 12 3456"),
            Cow::Borrowed(_)
        ));
    }

    #[test]
    fn json_strings_and_card_numbers_are_masked_keys_kept() {
        let mut value = json!({
            "to": "alice@example.com",
            "card": 4111111111111111_u64,
            "count": 12,
            "nested": [{"note": "call with Bearer tok_0123456789"}, true, null],
            "bob@example.com": "key",
        });
        Masker::default().mask_json(&mut value);
        assert_eq!(
            value,
            json!({
                "to": "[email]",
                "card": "[card_number]",
                "count": 12,
                "nested": [{"note": "call with Bearer [api_key]"}, true, null],
                "bob@example.com": "key",
            })
        );
    }

    #[test]
    fn steps_lose_their_payloads_but_keep_their_shape() {
        let now = Utc::now();
        let step = |kind| Step {
            seq: 0,
            attempt: 1,
            started_at: now,
            finished_at: now,
            duration_ms: 0,
            kind,
        };
        let mut model = step(StepKind::Model {
            turn: 0,
            feedback: Some("fix it, alice@example.com".into()),
            message: AssistantMessage {
                content: Some("card 4111 1111 1111 1111".into()),
                tool_calls: vec![ToolCall::function(
                    "call_a@b.io",
                    "lookup",
                    r#"{"email":"alice@example.com"}"#,
                )],
            },
            usage: Default::default(),
            cost_usd: 0.0,
            cached: false,
        });
        Masker::default().mask_step(&mut model);
        let StepKind::Model {
            feedback, message, ..
        } = &model.kind
        else {
            unreachable!()
        };
        assert_eq!(feedback.as_deref(), Some("fix it, [email]"));
        assert_eq!(message.content.as_deref(), Some("card [card_number]"));
        assert_eq!(message.tool_calls[0].id, "call_a@b.io");
        assert_eq!(
            message.tool_calls[0].function.arguments,
            r#"{"email":"[email]"}"#
        );

        let mut tool = step(StepKind::Tool {
            call_id: "c1".into(),
            name: "lookup".into(),
            arguments: r#"{"key":"sk-proj-4f9Qm2Zt8Lw1Xv7Rb3Nc"}"#.into(),
            status: ToolStatus::Ok,
            content: "owner: bob@example.com".into(),
            http_status: Some(200),
        });
        Masker::default().mask_step(&mut tool);
        assert_eq!(
            tool.kind,
            StepKind::Tool {
                call_id: "c1".into(),
                name: "lookup".into(),
                arguments: r#"{"key":"[api_key]"}"#.into(),
                status: ToolStatus::Ok,
                content: "owner: [email]".into(),
                http_status: Some(200),
            }
        );
    }

    #[test]
    fn a_result_is_masked_output_errors_and_steps() {
        use crate::wire::{AttemptError, ErrorCategory, JobError};
        let now = Utc::now();
        let mut record = JobRecord::new_queued(uuid::Uuid::nil(), "acme", "summarize", None, now);
        record.output = Some(json!({"reply": "mail alice@example.com", "n": 3}));
        record.error = Some(JobError {
            category: ErrorCategory::BadRequest,
            message: "provider answered HTTP 400: bad sk-proj-4f9Qm2Zt8Lw1Xv7Rb3Nc".into(),
        });
        record.attempt_errors.push(AttemptError {
            attempt: 1,
            category: ErrorCategory::ProviderError,
            message: "card 4111 1111 1111 1111".into(),
            at: now,
        });
        record.steps = Some(vec![Step {
            seq: 0,
            attempt: 1,
            started_at: now,
            finished_at: now,
            duration_ms: 0,
            kind: StepKind::Tool {
                call_id: "c1".into(),
                name: "lookup".into(),
                arguments: "{}".into(),
                status: ToolStatus::Ok,
                content: "bob@example.com".into(),
                http_status: None,
            },
        }]);
        Masker::default().mask_result(&mut record);
        assert_eq!(
            record.output,
            Some(json!({"reply": "mail [email]", "n": 3}))
        );
        assert_eq!(
            record.error.map(|e| e.message).as_deref(),
            Some("provider answered HTTP 400: bad [api_key]")
        );
        assert_eq!(record.attempt_errors[0].message, "card [card_number]");
        let steps = record.steps.unwrap_or_default();
        assert!(
            matches!(&steps[0].kind, StepKind::Tool { content, .. } if content == "[email]"),
            "{steps:?}"
        );
    }

    #[test]
    fn privacy_says_what_may_be_logged_and_whose_output_is_masked() {
        let quiet = Privacy::default();
        assert!(!quiet.log_payloads());
        assert_eq!(quiet.loggable("alice@example.com"), None);
        assert!(!quiet.masks_output("any"));

        let agents = BTreeMap::from([("raw".to_owned(), false)]);
        let loud = Privacy::new(true, true, agents, Masker::default());
        assert_eq!(
            loud.loggable("to alice@example.com").as_deref(),
            Some("to [email]")
        );
        assert!(loud.masks_output("summarize"));
        assert!(!loud.masks_output("raw"));
    }
}
