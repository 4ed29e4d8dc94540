//! A provider's rate-limit headers (OpenAI's and Anthropic's) and `Retry-After`. The input is
//! text, one `name: value` header a line, so seeds can be written by hand.
#![no_main]

use chrono::{DateTime, Utc};
use libfuzzer_sys::fuzz_target;

use agentfleet_worker::fuzzing::{parse_retry_after, ProviderLimits};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let headers: Vec<(String, String)> = text
        .lines()
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.to_owned()))
        .collect();
    // A fixed instant, so a crash reproduces.
    let now = DateTime::<Utc>::from_timestamp(1_700_000_000, 0).unwrap_or_default();
    let limits = ProviderLimits::parse(&headers, now);
    let _ = limits.exhausted_for();
    for (name, value) in &headers {
        if name == "retry-after" {
            let _ = parse_retry_after(value, now);
        }
    }
});
