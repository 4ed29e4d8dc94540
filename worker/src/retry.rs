//! When to try again: exponential backoff with full jitter, capped, and never sooner than a
//! provider's `Retry-After`.

use std::time::Duration;

use chrono::{DateTime, Utc};

const BASE: Duration = Duration::from_secs(1);

/// Delay before attempt `next_attempt` (2 for the first retry).
pub fn backoff(next_attempt: u32, max_delay: Duration, retry_after: Option<Duration>) -> Duration {
    let exp = next_attempt.saturating_sub(2).min(20);
    let ceiling = BASE.saturating_mul(1u32 << exp).min(max_delay);
    let jittered = ceiling.mul_f64(rand::random::<f64>());
    match retry_after {
        Some(floor) => jittered.max(floor),
        None => jittered,
    }
}

/// Parses `Retry-After`: delay-seconds or an HTTP date.
pub fn parse_retry_after(value: &str, now: DateTime<Utc>) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = DateTime::parse_from_rfc2822(value)
        .ok()?
        .with_timezone(&Utc);
    Some((at - now).to_std().unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_capped_and_respects_retry_after() {
        for attempt in 2..30 {
            let d = backoff(attempt, Duration::from_secs(30), None);
            assert!(d <= Duration::from_secs(30));
        }
        let first = backoff(2, Duration::from_secs(30), None);
        assert!(first <= Duration::from_secs(1));
        let d = backoff(2, Duration::from_secs(30), Some(Duration::from_secs(45)));
        assert!(d >= Duration::from_secs(45));
    }

    #[test]
    fn parses_both_retry_after_forms() {
        let now = DateTime::parse_from_rfc3339("2015-10-21T07:28:00Z")
            .expect("date")
            .with_timezone(&Utc);
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:30 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:27:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }
}
