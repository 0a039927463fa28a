//! Durations written as `30s`, `10m`, `1h30m`, in the config and on the command line.

use std::time::Duration;

use serde::{Deserialize, Deserializer, de};

/// A duration that could not be read; says how to write one.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("invalid duration {input:?} ({source}); write e.g. 30s, 10m or 1h")]
pub struct DurationError {
    input: String,
    source: humantime::DurationError,
}

pub fn parse(s: &str) -> Result<Duration, DurationError> {
    humantime::parse_duration(s.trim()).map_err(|source| DurationError {
        input: s.to_string(),
        source,
    })
}

/// For `#[serde(default, deserialize_with = "duration::option")]` fields.
pub fn option<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let s = String::deserialize(d)?;
    parse(&s).map(Some).map_err(de::Error::custom)
}
