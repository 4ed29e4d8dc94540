//! What a provider's rate-limit headers say about the API key's limits: how many requests and
//! tokens are left in its window and when the window resets. OpenAI-compatible servers send
//! `x-ratelimit-remaining-requests` / `x-ratelimit-reset-requests` (a duration such as
//! `6m0s` or `120ms`) and the same for tokens; Anthropic sends
//! `anthropic-ratelimit-requests-remaining` / `-reset` (an RFC 3339 instant) and the same for
//! tokens. The provider counts every caller of the key, so when it knows of less room than
//! the fleet's own buckets do, the buckets are corrected ([`crate::limits`]).
//!
//! Pure; nonsense in any header is ignored, never an error.

use std::time::Duration;

use chrono::{DateTime, Utc};

/// The longest reset believed: beyond it a header is taken for nonsense.
const MAX_RESET: Duration = Duration::from_secs(3600);

/// What is left of one kind of limit until its window resets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub remaining: u64,
    pub resets_in: Duration,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProviderLimits {
    pub requests: Option<Window>,
    pub tokens: Option<Window>,
}

impl ProviderLimits {
    /// Reads `headers` (names lowercase) as of `now`.
    pub fn parse(headers: &[(String, String)], now: DateTime<Utc>) -> Self {
        let get = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.trim())
        };
        let window = |remaining: &str, reset: &str| {
            Some(Window {
                remaining: get(remaining)?.parse().ok()?,
                resets_in: parse_reset(get(reset)?, now)?,
            })
        };
        let openai = |kind: &str| {
            window(
                &format!("x-ratelimit-remaining-{kind}"),
                &format!("x-ratelimit-reset-{kind}"),
            )
        };
        let anthropic = |kind: &str| {
            window(
                &format!("anthropic-ratelimit-{kind}-remaining"),
                &format!("anthropic-ratelimit-{kind}-reset"),
            )
        };
        Self {
            requests: openai("requests").or_else(|| anthropic("requests")),
            tokens: openai("tokens")
                .or_else(|| anthropic("tokens"))
                .or_else(|| anthropic("input-tokens")),
        }
    }

    /// When the provider says a limit is used up: how long until the last of those resets.
    pub fn exhausted_for(&self) -> Option<Duration> {
        [self.requests, self.tokens]
            .into_iter()
            .flatten()
            .filter(|w| w.remaining == 0 && !w.resets_in.is_zero())
            .map(|w| w.resets_in)
            .max()
    }
}

/// A reset as a duration from now: Go-style (`1s`, `6m0s`, `1h2m3.5s`, `120ms`), plain
/// seconds (`2`, `0.5`), or an RFC 3339 instant.
fn parse_reset(value: &str, now: DateTime<Utc>) -> Option<Duration> {
    let duration = if let Ok(at) = DateTime::parse_from_rfc3339(value) {
        (at.with_timezone(&Utc) - now).to_std().unwrap_or_default()
    } else if let Ok(secs) = value.parse::<f64>() {
        seconds(secs)?
    } else {
        go_duration(value)?
    };
    (duration <= MAX_RESET).then_some(duration)
}

fn seconds(secs: f64) -> Option<Duration> {
    (secs.is_finite() && secs >= 0.0 && secs <= MAX_RESET.as_secs_f64())
        .then(|| Duration::from_secs_f64(secs))
}

/// `1h2m3.5s`, `6m0s`, `120ms`: numbers each followed by a unit.
fn go_duration(value: &str) -> Option<Duration> {
    let mut total = 0.0;
    let mut rest = value;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .filter(|&end| end > 0)?;
        let number: f64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 0.001,
            _ => return None,
        };
        total += number * scale;
        rest = &rest[unit_len..];
    }
    seconds(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn reads_openai_headers() {
        let now = Utc::now();
        let limits = ProviderLimits::parse(
            &headers(&[
                ("x-ratelimit-remaining-requests", "0"),
                ("x-ratelimit-reset-requests", "1m30.5s"),
                ("x-ratelimit-remaining-tokens", "1500"),
                ("x-ratelimit-reset-tokens", "120ms"),
            ]),
            now,
        );
        assert_eq!(
            limits.requests,
            Some(Window {
                remaining: 0,
                resets_in: Duration::from_secs_f64(90.5)
            })
        );
        assert_eq!(
            limits.tokens.map(|w| (w.remaining, w.resets_in)),
            Some((1500, Duration::from_millis(120)))
        );
        assert_eq!(limits.exhausted_for(), Some(Duration::from_secs_f64(90.5)));
    }

    #[test]
    fn reads_anthropic_headers() {
        let now = DateTime::parse_from_rfc3339("2026-11-22T10:00:00Z")
            .expect("valid")
            .with_timezone(&Utc);
        let limits = ProviderLimits::parse(
            &headers(&[
                ("anthropic-ratelimit-requests-remaining", "3"),
                ("anthropic-ratelimit-requests-reset", "2026-11-22T10:00:02Z"),
                ("anthropic-ratelimit-input-tokens-remaining", "0"),
                (
                    "anthropic-ratelimit-input-tokens-reset",
                    "2026-11-22T10:00:05Z",
                ),
            ]),
            now,
        );
        assert_eq!(limits.requests.map(|w| w.remaining), Some(3));
        assert_eq!(limits.exhausted_for(), Some(Duration::from_secs(5)));
    }

    #[test]
    fn nonsense_is_ignored() {
        let now = Utc::now();
        for (remaining, reset) in [
            ("-1", "1s"),
            ("lots", "1s"),
            ("5", "soon"),
            ("5", "1x"),
            ("5", "s"),
            ("5", ""),
            ("5", "99999h"),
            ("5", "NaN"),
        ] {
            let limits = ProviderLimits::parse(
                &headers(&[
                    ("x-ratelimit-remaining-requests", remaining),
                    ("x-ratelimit-reset-requests", reset),
                ]),
                now,
            );
            assert_eq!(limits.requests, None, "{remaining} / {reset}");
        }
        assert_eq!(ProviderLimits::parse(&[], now), ProviderLimits::default());
    }

    #[test]
    fn a_reset_in_the_past_is_now() {
        let now = Utc::now();
        let limits = ProviderLimits::parse(
            &headers(&[
                ("anthropic-ratelimit-requests-remaining", "0"),
                ("anthropic-ratelimit-requests-reset", "2000-01-01T00:00:00Z"),
            ]),
            now,
        );
        assert_eq!(limits.requests.map(|w| w.resets_in), Some(Duration::ZERO));
        assert_eq!(limits.exhausted_for(), None, "nothing to wait for");
    }
}
