//! `x-request-id`: the client's own id when it is well-formed, otherwise one we generate.
//! The id is logged on the request's span, sent upstream, and always returned to the client.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use http::HeaderValue;

/// The header name, shared by client, gateway and upstream.
pub const HEADER: &str = "x-request-id";

/// Longest client-supplied id we accept; longer ones are replaced, not truncated, so log lines
/// stay bounded and ids stay exact.
pub const MAX_LEN: usize = 128;

/// Returns the client's id if it is 1..=128 characters of `[A-Za-z0-9._:/+=-]`, else a new one.
pub fn from_client(value: Option<&HeaderValue>) -> HeaderValue {
    match value {
        Some(v) if is_well_formed(v.as_bytes()) => v.clone(),
        _ => generate(),
    }
}

fn is_well_formed(id: &[u8]) -> bool {
    !id.is_empty()
        && id.len() <= MAX_LEN
        && id
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"._:/+=-".contains(b))
}

/// A new id: `tg-` and 32 hex digits. A process-wide random key hashes a counter, so ids are
/// unique within the process and unpredictable across processes without a RNG dependency.
pub fn generate() -> HeaderValue {
    static KEY: OnceLock<(RandomState, RandomState)> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let (a, b) = KEY.get_or_init(|| (RandomState::new(), RandomState::new()));
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut ha = a.build_hasher();
    ha.write_u64(n);
    let mut hb = b.build_hasher();
    hb.write_u64(n);
    let text = format!("tg-{:016x}{:016x}", ha.finish(), hb.finish());
    // Only hex digits and "tg-": always a valid header value.
    HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static("tg-invalid"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_a_well_formed_client_id() {
        let v = HeaderValue::from_static("abc-123_x.y:z");
        assert_eq!(from_client(Some(&v)), v);
    }

    #[test]
    fn replaces_malformed_ids() {
        for bad in ["", "has space", "semi;colon", &"x".repeat(MAX_LEN + 1)] {
            let v = HeaderValue::from_str(bad).unwrap();
            let got = from_client(Some(&v));
            assert_ne!(got, v);
            assert!(got.to_str().unwrap().starts_with("tg-"));
        }
        assert!(from_client(None).to_str().unwrap().starts_with("tg-"));
    }

    #[test]
    fn generated_ids_are_unique_and_well_formed() {
        let ids: std::collections::HashSet<_> = (0..1000).map(|_| generate()).collect();
        assert_eq!(ids.len(), 1000);
        assert!(ids.iter().all(|id| is_well_formed(id.as_bytes())));
    }
}
