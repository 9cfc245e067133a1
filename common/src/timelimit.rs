//! Parsing of job time limits in SLURM's formats.
//!
//! SLURM accepts "minutes", "minutes:seconds", "hours:minutes:seconds", "days-hours",
//! "days-hours:minutes" and "days-hours:minutes:seconds"; users carry these habits to cm.
//! Zero (or "0") means no limit, as in the original design.

use crate::{Error, Result};
use std::time::Duration;

/// Parses a time limit; `Ok(None)` means no limit.
pub fn parse_time_limit(input: &str) -> Result<Option<Duration>> {
    let s = input.trim();
    let bad = |reason: &str| Error::TimeLimit { input: input.to_string(), reason: reason.to_string() };
    if s.is_empty() {
        return Err(bad("it is empty"));
    }
    if matches!(s, "unlimited" | "infinite" | "UNLIMITED" | "INFINITE") {
        return Ok(None);
    }
    let number = |part: &str| -> Result<u64> {
        if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad(&format!("{part:?} is not a whole number")));
        }
        part.parse::<u64>().map_err(|_| bad("a number is too large"))
    };
    let (days, rest) = match s.split_once('-') {
        Some((d, rest)) => (Some(number(d)?), rest),
        None => (None, s),
    };
    let parts = rest.split(':').map(number).collect::<Result<Vec<u64>>>()?;
    let seconds = match (days, parts.as_slice()) {
        (None, [m]) => m * 60,
        (None, [m, sec]) => m * 60 + sec,
        (None, [h, m, sec]) => h * 3600 + m * 60 + sec,
        (Some(d), [h]) => d * 86400 + h * 3600,
        (Some(d), [h, m]) => d * 86400 + h * 3600 + m * 60,
        (Some(d), [h, m, sec]) => d * 86400 + h * 3600 + m * 60 + sec,
        _ => return Err(bad("it has too many fields")),
    };
    Ok((seconds > 0).then(|| Duration::from_secs(seconds)))
}

/// Formats a limit the way SLURM shows one: `[D-]HH:MM:SS`.
pub fn format_time_limit(limit: Option<Duration>) -> String {
    let Some(limit) = limit else {
        return "UNLIMITED".to_string();
    };
    let s = limit.as_secs();
    let (d, h, m, sec) = (s / 86400, s / 3600 % 24, s / 60 % 60, s % 60);
    if d > 0 {
        format!("{d}-{h:02}:{m:02}:{sec:02}")
    } else {
        format!("{h:02}:{m:02}:{sec:02}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(input: &str) -> Option<u64> {
        parse_time_limit(input).expect(input).map(|d| d.as_secs())
    }

    #[test]
    fn accepts_every_slurm_format() {
        let cases = [
            ("90", Some(5400)),
            ("1", Some(60)),
            ("2:30", Some(150)),
            ("1:30:00", Some(5400)),
            ("00:00:05", Some(5)),
            ("2-12", Some(2 * 86400 + 12 * 3600)),
            ("1-0:30", Some(86400 + 1800)),
            ("1-00:00:10", Some(86410)),
            ("0", None),
            ("00:00:00", None),
            ("unlimited", None),
        ];
        for (input, want) in cases {
            assert_eq!(secs(input), want, "{input}");
        }
    }

    #[test]
    fn rejects_garbage_with_a_helpful_message() {
        for input in ["", "abc", "1:2:3:4", "-5", "1-", "1h", "1-2:3:4:5", " : "] {
            let err = parse_time_limit(input).expect_err(input).to_string();
            assert!(err.contains("HH:MM:SS"), "{input}: {err}");
        }
    }

    #[test]
    fn formats_like_slurm() {
        assert_eq!(format_time_limit(None), "UNLIMITED");
        assert_eq!(format_time_limit(Some(Duration::from_secs(5400))), "01:30:00");
        assert_eq!(format_time_limit(Some(Duration::from_secs(90061))), "1-01:01:01");
    }
}
