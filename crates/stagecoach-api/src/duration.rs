//! Durations as users write them in manifests: `30s`, `10m`, `48h`, `1h30m`, `500ms`.
//!
//! The grammar is the one Kubernetes CEL's `duration()` accepts (Go's
//! `time.ParseDuration` without signs), so what admission accepts the operator can
//! always parse. [`DURATION_PATTERN`] is the same grammar as a regular expression for
//! the CRD schema.

use std::time::Duration;

/// Regular expression (RE2 and Rust `regex` compatible) for a positive duration.
pub const DURATION_PATTERN: &str = r"^([0-9]+(\.[0-9]+)?(ns|us|ms|s|m|h))+$";

/// The CEL rule that admits exactly the durations [`parse_duration`] accepts, with a
/// message naming the field. Regex first: `&&` stops there for malformed input, so
/// `duration()` never sees a string it cannot parse.
pub fn cel_rule(field: &str) -> serde_json::Value {
    serde_json::json!({
        "rule": "self.matches('^([0-9]+([.][0-9]+)?(ns|us|ms|s|m|h))+$') && duration(self) > duration('0s')",
        "message": format!("{field} must be a positive duration such as 30s, 10m, 48h or 1h30m"),
    })
}

/// Why a duration string was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DurationError {
    /// The string is empty.
    Empty,
    /// The string does not follow `<number><unit>...`.
    Malformed(String),
    /// The duration is zero; Stagecoach durations are always positive.
    Zero,
}

impl std::fmt::Display for DurationError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Empty => write!(f, "duration is empty"),
            Self::Malformed(s) => write!(
                f,
                "{s:?} is not a duration; write a number and a unit, such as 30s, 10m, 48h or 1h30m"
            ),
            Self::Zero => write!(f, "duration must be greater than zero"),
        }
    }
}

impl std::error::Error for DurationError {}

/// Parses a positive duration such as `10m` or `1h30m`.
pub fn parse_duration(input: &str) -> Result<Duration, DurationError> {
    if input.is_empty() {
        return Err(DurationError::Empty);
    }
    let malformed = || DurationError::Malformed(input.to_owned());
    let mut rest = input;
    let mut total = Duration::ZERO;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(malformed)?;
        if number_len == 0 {
            return Err(malformed());
        }
        let (number, tail) = rest.split_at(number_len);
        if number.starts_with('.') || number.ends_with('.') || number.matches('.').count() > 1 {
            return Err(malformed());
        }
        let value: f64 = number.parse().map_err(|_| malformed())?;
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(tail.len());
        let (unit, next) = tail.split_at(unit_len);
        let unit_seconds = match unit {
            "ns" => 1e-9,
            "us" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(malformed()),
        };
        total += Duration::try_from_secs_f64(value * unit_seconds).map_err(|_| malformed())?;
        rest = next;
    }
    if total.is_zero() {
        return Err(DurationError::Zero);
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_common_forms() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("48h"), Ok(Duration::from_secs(48 * 3600)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1.5h"), Ok(Duration::from_secs(5400)));
    }

    #[test]
    fn refuses_bad_forms() {
        for bad in [
            "", "10", "m", "-5m", "10 m", "10d", "1..5s", ".5s", "5.s", "abc",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should be refused");
        }
        assert_eq!(parse_duration("0s"), Err(DurationError::Zero));
        assert_eq!(parse_duration("0h0m"), Err(DurationError::Zero));
    }

    proptest! {
        #[test]
        fn whole_units_round_trip(h in 0u64..100, m in 0u64..60, s in 1u64..60) {
            let text = format!("{h}h{m}m{s}s");
            prop_assert_eq!(parse_duration(&text), Ok(Duration::from_secs(h * 3600 + m * 60 + s)));
        }

        #[test]
        fn never_panics(text in ".{0,20}") {
            let _ = parse_duration(&text);
        }
    }
}
