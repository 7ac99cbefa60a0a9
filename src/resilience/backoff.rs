//! When to retry an upstream attempt, and how long to wait first.
//!
//! The rules follow the OpenAI SDKs, which the gateway's clients run and which will retry on their
//! own once the gateway gives up: the same transient statuses, the same precedence of
//! `retry-after-ms` over `retry-after`, and exponential backoff with full jitter otherwise.

use std::time::{Duration, SystemTime};

use http::{HeaderMap, StatusCode};

/// `retry-after-ms`: the OpenAI-specific, millisecond-precise form of `retry-after`.
const RETRY_AFTER_MS: &str = "retry-after-ms";

/// Nanoseconds per second, for turning a jittered nanosecond count back into a [`Duration`].
const NANOS_PER_SEC: u128 = 1_000_000_000;

/// Whether an upstream status is worth another attempt: 408 (request timeout), 429 (rate
/// limited), 500, 502, 503 and 504 (the upstream or something in front of it failed or is
/// overloaded). Every other status is the answer itself: retrying a 400 or a 401 gives the same
/// answer, and 501 or 505 will not change either.
pub fn is_retryable_status(status: StatusCode) -> bool {
    matches!(status.as_u16(), 408 | 429 | 500 | 502 | 503 | 504)
}

/// Exponential backoff with full jitter (AWS Architecture Blog, "Exponential Backoff And
/// Jitter"): a uniform draw from `[0, min(max, initial * 2^retry)]`, where `retry` is 0 before the
/// first retry. The randomness spreads the retries of many requests that failed together, so they
/// do not hit a recovering upstream in synchronized waves. Saturates: a large `retry` gives the
/// `max` range, never an overflow.
pub fn full_jitter(
    retry: u32,
    initial: Duration,
    max: Duration,
    rng: &mut fastrand::Rng,
) -> Duration {
    let ceiling = 2u32
        .checked_pow(retry)
        .and_then(|factor| initial.checked_mul(factor))
        .map_or(max, |grown| grown.min(max));
    let nanos = rng.u128(0..=ceiling.as_nanos());
    // The draw is at most `ceiling`, so its whole seconds fit in u64.
    let secs = u64::try_from(nanos / NANOS_PER_SEC).unwrap_or(u64::MAX);
    let subsec = u32::try_from(nanos % NANOS_PER_SEC).unwrap_or(0);
    Duration::new(secs, subsec)
}

/// How long the upstream asked us to wait, read as the OpenAI SDKs read it: `retry-after-ms` (a
/// non-negative number of milliseconds, possibly fractional) first; if it is absent or invalid,
/// `retry-after` as non-negative whole seconds or as an HTTP-date (a date already past gives
/// zero). None when neither says anything usable. Absurdly large values saturate (up to
/// [`Duration::MAX`]) rather than being dropped, so the caller's cap turns them down: an upstream
/// that asks for a long wait must not get a quick retry because the number was too big.
pub fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let header = |name| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    if let Some(ms) = header(RETRY_AFTER_MS).and_then(parse_millis) {
        return Some(ms);
    }
    let value = header(http::header::RETRY_AFTER.as_str())?;
    if let Some(secs) = parse_digits(value) {
        return Some(Duration::from_secs(secs));
    }
    let date = httpdate::parse_http_date(value).ok()?;
    Some(date.duration_since(now).unwrap_or(Duration::ZERO))
}

/// ASCII digits as a u64, saturating; None for anything else (signs, spaces, the empty string).
fn parse_digits(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(text.parse().unwrap_or(u64::MAX))
}

/// `digits[.digits]` milliseconds. Stricter than a float parse on purpose: no sign, exponent,
/// `inf` or `NaN`, so the value is always finite and non-negative.
fn parse_millis(text: &str) -> Option<Duration> {
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty() && fraction.is_empty() || !digits(whole) || !digits(fraction) {
        return None;
    }
    // Finite by construction (a very long digit string parses as infinity, caught below).
    let ms: f64 = text.parse().ok()?;
    Some(Duration::try_from_secs_f64(ms / 1000.0).unwrap_or(Duration::MAX))
}

/// The backoff knobs, from the retry configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackoffSettings {
    /// The full-jitter range before the first retry; it doubles with each retry.
    pub initial: Duration,
    /// The largest full-jitter range.
    pub max: Duration,
    /// The longest `retry-after` the gateway waits out itself; a longer one is the client's to
    /// wait (see [`RetryDelay::TooLong`]).
    pub max_retry_after: Duration,
}

/// What to do before retry number `retry`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryDelay {
    /// Wait this long, then retry.
    After(Duration),
    /// The upstream asked for this wait, longer than `max_retry_after`: do not retry, relay the
    /// upstream's answer (with its retry headers) so the client's SDK waits instead of holding a
    /// gateway stream open that long.
    TooLong(Duration),
}

/// The wait before retry number `retry` (0 for the first retry). An `advised` delay (from
/// [`retry_after`]) is used exactly, never jittered below what the upstream asked, unless it is
/// above `max_retry_after`; without advice, [`full_jitter`].
pub fn delay_for(
    retry: u32,
    advised: Option<Duration>,
    settings: &BackoffSettings,
    rng: &mut fastrand::Rng,
) -> RetryDelay {
    match advised {
        Some(wait) if wait > settings.max_retry_after => RetryDelay::TooLong(wait),
        Some(wait) => RetryDelay::After(wait),
        None => RetryDelay::After(full_jitter(retry, settings.initial, settings.max, rng)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    #[test]
    fn exactly_the_transient_statuses_are_retryable() {
        let retryable: Vec<u16> = (100..=599)
            .filter(|&s| is_retryable_status(StatusCode::from_u16(s).unwrap()))
            .collect();
        assert_eq!(retryable, [408, 429, 500, 502, 503, 504]);
    }

    #[test]
    fn full_jitter_stays_in_its_doubling_range() {
        let mut rng = fastrand::Rng::with_seed(7);
        let initial = Duration::from_millis(100);
        let max = Duration::from_secs(2);
        for retry in 0..8 {
            let ceiling = (initial * 2u32.pow(retry)).min(max);
            let mut largest = Duration::ZERO;
            for _ in 0..1_000 {
                let d = full_jitter(retry, initial, max, &mut rng);
                assert!(d <= ceiling, "retry {retry}: {d:?} > {ceiling:?}");
                largest = largest.max(d);
            }
            // Full jitter uses the whole range, not just its bottom.
            assert!(largest > ceiling / 2, "retry {retry}: largest {largest:?}");
        }
    }

    #[test]
    fn full_jitter_saturates() {
        let mut rng = fastrand::Rng::with_seed(1);
        let max = Duration::from_secs(30);
        for retry in [31, 32, 64, u32::MAX] {
            assert!(full_jitter(retry, Duration::from_secs(1), max, &mut rng) <= max);
        }
        assert!(full_jitter(3, Duration::MAX, Duration::MAX, &mut rng) <= Duration::MAX);
        assert_eq!(
            full_jitter(5, Duration::ZERO, max, &mut rng),
            Duration::ZERO
        );
        assert_eq!(
            full_jitter(0, Duration::from_secs(1), Duration::ZERO, &mut rng),
            Duration::ZERO
        );
    }

    #[test]
    fn retry_after_ms_wins_over_retry_after() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let h = headers(&[("retry-after-ms", "1500"), ("retry-after", "9")]);
        assert_eq!(retry_after(&h, now), Some(Duration::from_millis(1500)));
        let h = headers(&[("retry-after-ms", "0.5")]);
        assert_eq!(retry_after(&h, now), Some(Duration::from_micros(500)));
        let h = headers(&[("retry-after-ms", "250.")]);
        assert_eq!(retry_after(&h, now), Some(Duration::from_millis(250)));
        // An invalid retry-after-ms falls back to retry-after, as the SDKs do.
        let h = headers(&[("retry-after-ms", "soon"), ("retry-after", "3")]);
        assert_eq!(retry_after(&h, now), Some(Duration::from_secs(3)));
    }

    #[test]
    fn retry_after_seconds_and_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_445_412_470);
        let h = headers(&[("retry-after", "120")]);
        assert_eq!(retry_after(&h, now), Some(Duration::from_secs(120)));
        // Wed, 21 Oct 2015 07:28:00 GMT is 1445412480: ten seconds after `now`.
        let h = headers(&[("retry-after", "Wed, 21 Oct 2015 07:28:00 GMT")]);
        assert_eq!(retry_after(&h, now), Some(Duration::from_secs(10)));
        let later = now + Duration::from_secs(3600);
        assert_eq!(retry_after(&h, later), Some(Duration::ZERO));
        assert_eq!(retry_after(&HeaderMap::new(), now), None);
    }

    #[test]
    fn garbage_and_negative_retry_after_is_ignored() {
        let now = SystemTime::UNIX_EPOCH;
        for bad in [
            "-1",
            "1.5",
            "+3",
            "",
            " ",
            "soon",
            "1e3",
            "0x10",
            "Wed, 99 Foo 2015",
        ] {
            let h = headers(&[("retry-after", bad)]);
            assert_eq!(retry_after(&h, now), None, "retry-after: {bad:?}");
        }
        for bad in ["-1", "", ".", "1e3", "inf", "NaN", "1.2.3", "+5", "1_000"] {
            let h = headers(&[("retry-after-ms", bad)]);
            assert_eq!(retry_after(&h, now), None, "retry-after-ms: {bad:?}");
        }
        let mut h = HeaderMap::new();
        h.insert("retry-after", HeaderValue::from_bytes(b"\xff1").unwrap());
        assert_eq!(retry_after(&h, now), None);
    }

    #[test]
    fn absurd_retry_after_saturates_instead_of_overflowing() {
        let now = SystemTime::UNIX_EPOCH;
        let huge = "9".repeat(400);
        let h = headers(&[("retry-after", &huge)]);
        assert_eq!(retry_after(&h, now), Some(Duration::from_secs(u64::MAX)));
        let h = headers(&[("retry-after-ms", &huge)]);
        assert_eq!(retry_after(&h, now), Some(Duration::MAX));
        let h = headers(&[("retry-after-ms", "18446744073709551615000.5")]);
        assert!(retry_after(&h, now).is_some());
    }

    #[test]
    fn advice_is_used_as_is_up_to_the_cap() {
        let settings = BackoffSettings {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(5),
            max_retry_after: Duration::from_secs(10),
        };
        let mut rng = fastrand::Rng::with_seed(3);
        let ten = Duration::from_secs(10);
        assert_eq!(
            delay_for(0, Some(ten), &settings, &mut rng),
            RetryDelay::After(ten)
        );
        let tiny = Duration::from_millis(1);
        assert_eq!(
            delay_for(4, Some(tiny), &settings, &mut rng),
            RetryDelay::After(tiny)
        );
        let long = Duration::from_secs(11);
        assert_eq!(
            delay_for(0, Some(long), &settings, &mut rng),
            RetryDelay::TooLong(long)
        );
        match delay_for(2, None, &settings, &mut rng) {
            RetryDelay::After(d) => assert!(d <= Duration::from_millis(400)),
            other => panic!("{other:?}"),
        }
    }
}
