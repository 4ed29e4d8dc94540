//! The checks every part of the configuration shares, each naming the offending key.

use std::time::Duration;

use url::Url;

use super::ConfigError;

/// The error for a value that parsed but is not acceptable at `key`.
pub(super) fn invalid(key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        reason: reason.into(),
    }
}

/// A value that may be zero: counts, limits and durations.
pub(super) trait Zero {
    fn is_zero(&self) -> bool;
}

macro_rules! zero_for_ints {
    ($($t:ty),*) => {$(
        impl Zero for $t {
            fn is_zero(&self) -> bool {
                *self == 0
            }
        }
    )*};
}
zero_for_ints!(u16, u32, u64);

impl Zero for Duration {
    fn is_zero(&self) -> bool {
        Duration::is_zero(self)
    }
}

pub(super) fn positive(key: &str, value: impl Zero) -> Result<(), ConfigError> {
    if value.is_zero() {
        Err(invalid(key, "must be greater than zero"))
    } else {
        Ok(())
    }
}

pub(super) fn check_url_scheme(key: &str, raw: &str, schemes: &[&str]) -> Result<(), ConfigError> {
    // The error never echoes the URL: it may carry a password.
    let url = Url::parse(raw).map_err(|e| invalid(key, format!("not a URL ({e})")))?;
    if schemes.contains(&url.scheme()) {
        Ok(())
    } else {
        Err(invalid(
            key,
            format!("scheme must be one of {}", schemes.join(", ")),
        ))
    }
}

/// Prefixes become parts of queue and key names: keep them to a safe alphabet.
pub(super) fn check_prefix(key: &str, prefix: &str) -> Result<(), ConfigError> {
    let ok = !prefix.is_empty()
        && prefix.len() <= 64
        && prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(invalid(
            key,
            "must be 1-64 characters of letters, digits, '-', '_' or '.'",
        ))
    }
}

/// Agent and tenant names appear in queue names, keys and metric labels.
pub fn is_identifier(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_'))
        && s.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
}

pub(super) fn check_identifier(key: &str, value: &str) -> Result<(), ConfigError> {
    if is_identifier(value) {
        Ok(())
    } else {
        Err(invalid(
            key,
            "must be 1-63 characters of lowercase letters, digits, '-' or '_', starting with a letter or digit",
        ))
    }
}

pub fn parse_sha256_hex(s: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(s.trim(), &mut out).ok()?;
    Some(out)
}
