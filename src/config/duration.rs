//! Human-readable durations for the configuration file and the command line.
//!
//! The accepted grammar is deliberately small: one unsigned decimal integer
//! immediately followed by one lower-case unit, with nothing before, between
//! or after them.
//!
//! | unit | meaning      | example   |
//! |------|--------------|-----------|
//! | `ms` | milliseconds | `"500ms"` |
//! | `s`  | seconds      | `"15s"`   |
//! | `m`  | minutes      | `"30m"`   |
//! | `h`  | hours        | `"1h"`    |
//!
//! Rejected on purpose: a bare number (`"10"`, the unit would be a guess),
//! fractions (`"1.5s"`, write `"1500ms"`), signs (`"-1s"`, `"+1s"`), any
//! whitespace (`"5 s"`, `" 5s"`), upper-case units, compound forms (`"1m30s"`)
//! and days (`"10d"`). Zero (`"0s"`, `"0ms"`) parses; whether a field allows
//! it is that field's validation's business.
//!
//! Every duration this module parses is a whole number of milliseconds, and
//! [`format_duration`] prints any whole-millisecond duration in a form that
//! parses back to the same value, using the largest unit that divides it.

use std::time::Duration;

/// The examples quoted in every "expected a duration" message.
pub const DURATION_EXAMPLES: &str = r#""500ms", "15s" or "30m""#;

const MILLIS_PER_SECOND: u128 = 1_000;
const MILLIS_PER_MINUTE: u128 = 60 * MILLIS_PER_SECOND;
const MILLIS_PER_HOUR: u128 = 60 * MILLIS_PER_MINUTE;

/// Parses `"500ms"`, `"15s"`, `"30m"` or `"1h"` (see the module docs for the
/// exact grammar).
///
/// The error text is complete and ready to print after a key path, e.g.
/// `expected a duration such as "500ms", "15s" or "30m", got "sixty"`.
/// Usable directly as a clap `value_parser`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let digits_len = text
        .bytes()
        .position(|b| !b.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(digits_len);

    let invalid =
        |hint: &str| format!("expected a duration such as {DURATION_EXAMPLES}, got {text:?}{hint}");
    if digits.is_empty() {
        return Err(invalid(""));
    }
    let millis_per_unit =
        match unit {
            "ms" => 1,
            "s" => MILLIS_PER_SECOND,
            "m" => MILLIS_PER_MINUTE,
            "h" => MILLIS_PER_HOUR,
            "" => return Err(invalid(" (add a unit: ms, s, m or h)")),
            _ if unit.starts_with(['.', ',']) => return Err(invalid(
                " (fractions are not supported; use a smaller unit, e.g. \"90m\" for 1.5 hours)",
            )),
            _ if unit.starts_with(char::is_whitespace) => {
                return Err(invalid(" (no space is allowed between number and unit)"))
            }
            _ => return Err(invalid(" (the unit must be ms, s, m or h)")),
        };

    let too_large = || format!("duration {text:?} is too large");
    let mut count: u128 = 0;
    for digit in digits.bytes() {
        count = count
            .checked_mul(10)
            .and_then(|c| c.checked_add(u128::from(digit - b'0')))
            .ok_or_else(too_large)?;
    }
    let millis = count.checked_mul(millis_per_unit).ok_or_else(too_large)?;
    let secs = u64::try_from(millis / MILLIS_PER_SECOND).map_err(|_| too_large())?;
    // `millis % 1000` is below 1000, so it always fits.
    let sub_millis = u32::try_from(millis % MILLIS_PER_SECOND).map_err(|_| too_large())?;
    Ok(Duration::new(secs, sub_millis * 1_000_000))
}

/// Prints `duration` in the shortest exact form [`parse_duration`] accepts:
/// the largest unit that divides it (`90s` → `"90s"`, 1800 s → `"30m"`,
/// 1.5 s → `"1500ms"`, zero → `"0s"`).
///
/// Precision below one millisecond cannot be written in the grammar and is
/// truncated; [`super::Config::validate`] rejects such durations, so every
/// validated configuration prints exactly.
pub fn format_duration(duration: Duration) -> String {
    let millis = duration.as_millis();
    if millis == 0 {
        return "0s".to_owned();
    }
    for (per_unit, unit) in [
        (MILLIS_PER_HOUR, "h"),
        (MILLIS_PER_MINUTE, "m"),
        (MILLIS_PER_SECOND, "s"),
    ] {
        let (count, remainder) = (millis / per_unit, millis % per_unit);
        if remainder == 0 {
            return format!("{count}{unit}");
        }
    }
    format!("{millis}ms")
}

/// True when `duration` has no precision below one millisecond, i.e. when
/// [`format_duration`] prints it exactly.
pub(super) fn is_whole_millis(duration: Duration) -> bool {
    duration.subsec_nanos() == duration.subsec_millis() * 1_000_000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_unit() {
        let cases = [
            ("0s", Duration::ZERO),
            ("0ms", Duration::ZERO),
            ("0h", Duration::ZERO),
            ("1ms", Duration::from_millis(1)),
            ("500ms", Duration::from_millis(500)),
            ("1500ms", Duration::from_millis(1500)),
            ("15s", Duration::from_secs(15)),
            ("90s", Duration::from_secs(90)),
            ("30m", Duration::from_secs(1800)),
            ("1h", Duration::from_secs(3600)),
            ("007s", Duration::from_secs(7)),
            ("25h", Duration::from_secs(25 * 3600)),
        ];
        for (text, expected) in cases {
            assert_eq!(parse_duration(text), Ok(expected), "{text}");
        }
    }

    #[test]
    fn prints_the_shortest_exact_form() {
        let cases = [
            (Duration::ZERO, "0s"),
            (Duration::from_millis(1), "1ms"),
            (Duration::from_millis(1500), "1500ms"),
            (Duration::from_secs(1), "1s"),
            (Duration::from_secs(90), "90s"),
            (Duration::from_secs(120), "2m"),
            (Duration::from_secs(1800), "30m"),
            (Duration::from_secs(3600), "1h"),
            (Duration::from_secs(5400), "90m"),
            (Duration::from_secs(3601), "3601s"),
            (Duration::from_millis(3_600_001), "3600001ms"),
        ];
        for (duration, expected) in cases {
            assert_eq!(format_duration(duration), expected, "{duration:?}");
        }
    }

    #[test]
    fn formatting_round_trips() {
        let samples = [
            Duration::ZERO,
            Duration::from_millis(1),
            Duration::from_millis(999),
            Duration::from_millis(61_000),
            Duration::from_secs(86_400),
            Duration::from_secs(u64::MAX),
            Duration::new(u64::MAX, 999_000_000),
        ];
        for duration in samples {
            let text = format_duration(duration);
            assert_eq!(parse_duration(&text), Ok(duration), "{text}");
        }
    }

    #[test]
    fn sub_millisecond_precision_is_truncated_when_printing() {
        assert_eq!(format_duration(Duration::from_micros(1500)), "1ms");
        assert_eq!(format_duration(Duration::from_nanos(1)), "0s");
        assert!(!is_whole_millis(Duration::from_micros(1500)));
        assert!(is_whole_millis(Duration::from_millis(1500)));
    }

    #[test]
    fn rejects_malformed_text() {
        let rejects = [
            "", "10", "sixty", "s", "ms", "1.5s", "1,5s", "-1s", "+1s", "5 s", " 5s", "5s ", "5S",
            "5MS", "10d", "1w", "1m30s", "5sec", "5 ", "0x10s", "1_000ms", "١s",
        ];
        for text in rejects {
            let err = parse_duration(text).expect_err(text);
            assert!(
                err.starts_with(&format!(
                    "expected a duration such as {DURATION_EXAMPLES}, got {text:?}"
                )),
                "{text}: {err}"
            );
        }
    }

    #[test]
    fn rejection_messages_carry_hints() {
        assert_eq!(
            parse_duration("sixty").unwrap_err(),
            r#"expected a duration such as "500ms", "15s" or "30m", got "sixty""#
        );
        assert!(parse_duration("10")
            .unwrap_err()
            .ends_with("(add a unit: ms, s, m or h)"));
        assert!(parse_duration("1.5s").unwrap_err().contains("fractions"));
        assert!(parse_duration("5 s").unwrap_err().contains("no space"));
        assert!(parse_duration("10d").unwrap_err().contains("ms, s, m or h"));
    }

    #[test]
    fn rejects_overflow() {
        let too_large = [
            "340282366920938463463374607431768211456ms", // 2^128: overflows the digit counter
            "18446744073709551616s",                     // u64::MAX + 1 seconds
            "5124095576030432h",                         // hours beyond u64 seconds
            "307445734561825861m",                       // minutes beyond u64 seconds
            "18446744073709551616000ms",                 // u64::MAX + 1 seconds in ms
        ];
        for text in too_large {
            assert_eq!(
                parse_duration(text),
                Err(format!("duration {text:?} is too large")),
                "{text}"
            );
        }
        assert_eq!(
            parse_duration("18446744073709551615s"),
            Ok(Duration::from_secs(u64::MAX))
        );
        assert_eq!(
            parse_duration("18446744073709551615999ms"),
            Ok(Duration::new(u64::MAX, 999_000_000))
        );
    }
}
