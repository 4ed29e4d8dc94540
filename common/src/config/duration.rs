//! Durations as the YAML spells them: whole numbers, with the unit in the key (`lease_secs: 15`,
//! `timeout_ms: 800`), turned into [`Duration`]s once, at load time, so no caller converts.
//!
//! Used through `#[serde(with = "…")]`. A negative, fractional or non-numeric value is refused
//! with a serde error, which the `config` crate reports with the key it was found at. Numeric
//! strings are accepted, as they were when these fields were integers: an environment override
//! may arrive as one.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserialize, Deserializer, Unexpected, Visitor};
use serde::Serializer;

#[derive(Debug, Clone, Copy)]
enum Unit {
    Secs,
    Millis,
}

/// Visits a whole, non-negative number of `Unit`s.
struct Whole(Unit);

impl Whole {
    fn duration(&self, n: u64) -> Duration {
        match self.0 {
            Unit::Secs => Duration::from_secs(n),
            Unit::Millis => Duration::from_millis(n),
        }
    }
}

impl Visitor<'_> for Whole {
    type Value = Duration;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Unit::Secs => f.write_str("a non-negative whole number of seconds"),
            Unit::Millis => f.write_str("a non-negative whole number of milliseconds"),
        }
    }

    fn visit_u64<E: de::Error>(self, n: u64) -> Result<Duration, E> {
        Ok(self.duration(n))
    }

    fn visit_i64<E: de::Error>(self, n: i64) -> Result<Duration, E> {
        let n = u64::try_from(n).map_err(|_| E::invalid_value(Unexpected::Signed(n), &self))?;
        Ok(self.duration(n))
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<Duration, E> {
        let n = s
            .trim()
            .parse::<u64>()
            .map_err(|_| E::invalid_value(Unexpected::Str(s), &self))?;
        Ok(self.duration(n))
    }
}

/// `Duration` ⇄ whole seconds.
pub(super) mod secs {
    use super::*;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        d.deserialize_any(Whole(Unit::Secs))
    }

    /// Written back as whole seconds, so a serialized config section (the agent listing of the
    /// API) keeps the shape and the key of the file.
    pub fn serialize<S: Serializer>(value: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(value.as_secs())
    }
}

/// `Duration` ← whole milliseconds.
pub(super) mod millis {
    use super::*;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        d.deserialize_any(Whole(Unit::Millis))
    }
}

/// `Option<Duration>` ← whole seconds or nothing; pair it with `#[serde(default)]`.
pub(super) mod secs_opt {
    use super::*;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        Ok(Option::<Secs>::deserialize(d)?.map(|Secs(value)| value))
    }
}

/// `Vec<Duration>` ← a list of whole seconds.
pub(super) mod secs_list {
    use super::*;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Duration>, D::Error> {
        let list = Vec::<Secs>::deserialize(d)?;
        Ok(list.into_iter().map(|Secs(value)| value).collect())
    }
}

/// One element of the option and list forms.
struct Secs(Duration);

impl<'de> Deserialize<'de> for Secs {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        secs::deserialize(d).map(Secs)
    }
}
