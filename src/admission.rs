//! Admission control: whether a request may cost anything, decided before its body is read.
//!
//! - a request rate per client address (a governor keyed limiter; IPv6 clients keyed by their
//!   prefix, `limits.per_ip.ipv6_prefix`, so one host cannot rotate addresses around it);
//! - concurrent streams per client address and in all (`limits.per_ip.max_streams`,
//!   `limits.max_streams`), held by a [`StreamSlot`] guard that gives the slot back when the
//!   stream ends, however it ends;
//! - with `[auth] mode = "keys"`, a gateway API key on every request ([`crate::auth`]): its own
//!   request rate, stream cap (its slot held by the same [`StreamSlot`]) and model allowlist;
//! - every refusal counted by reason, and logged at most once per [`REFUSAL_LOG_EVERY`] per
//!   reason so a flood cannot flood the log.

use std::net::{IpAddr, Ipv6Addr};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};
use http::HeaderMap;
use serde::Serialize;

use crate::auth::{Key, KeySlot, Keys, NoKey};
use crate::client_ip::canonical;
use crate::config::Limits;
use crate::error::{GatewayError, LimitScope};

/// At most one log line per refusal reason this often.
pub const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(10);

/// What a refused client should wait before a stream slot may be free: a guess, since streams
/// last as long as they last; the SDKs back off further on their own.
const STREAM_SLOT_RETRY_AFTER: Duration = Duration::from_secs(1);

type IpRateLimiter =
    RateLimiter<IpAddr, DefaultKeyedStateStore<IpAddr>, DefaultClock, StateInformationMiddleware>;

/// The gateway's admission state, shared by every worker.
pub struct Admission {
    rate: Option<IpRateLimiter>,
    /// `limits.per_ip.requests_per_second`, for the `x-ratelimit-limit-requests` header.
    rate_limit: u32,
    ipv6_prefix: u8,
    per_ip_max_streams: u32,
    max_streams: u64,
    streams: Arc<AtomicU64>,
    streams_by_ip: Arc<DashMap<IpAddr, u32>>,
    /// The gateway API keys, when `[auth] mode = "keys"`.
    keys: Option<Arc<Keys>>,
    refusals: Refusals,
}

/// Refusals so far, by reason.
#[derive(Default)]
struct Refusals {
    ip_rate: Reason,
    ip_streams: Reason,
    global_streams: Reason,
    auth: Reason,
    key_rate: Reason,
    key_streams: Reason,
    model_not_allowed: Reason,
}

#[derive(Default)]
struct Reason {
    count: AtomicU64,
    /// Milliseconds since `Admission`'s creation of the last log line (0: never).
    logged_ms: AtomicU64,
}

/// Refusal counts for the admin summary (and the metrics issue).
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct RefusalCounts {
    pub ip_rate: u64,
    pub ip_streams: u64,
    pub global_streams: u64,
    /// No API key, or an unknown one.
    pub auth: u64,
    pub key_rate: u64,
    pub key_streams: u64,
    pub model_not_allowed: u64,
}

impl Admission {
    pub fn new(limits: &Limits) -> Admission {
        let per_ip = &limits.per_ip;
        let rate = NonZeroU32::new(per_ip.requests_per_second).map(|rps| {
            let burst = NonZeroU32::new(per_ip.burst).unwrap_or(rps);
            RateLimiter::keyed(Quota::per_second(rps).allow_burst(burst))
                .with_middleware::<StateInformationMiddleware>()
        });
        Admission {
            rate,
            rate_limit: per_ip.requests_per_second,
            ipv6_prefix: per_ip.ipv6_prefix,
            per_ip_max_streams: per_ip.max_streams,
            max_streams: u64::from(limits.max_streams),
            streams: Arc::new(AtomicU64::new(0)),
            streams_by_ip: Arc::new(DashMap::new()),
            keys: None,
            refusals: Refusals::default(),
        }
    }

    /// The same, asking every request for one of `keys`.
    pub fn with_keys(self, keys: Option<Arc<Keys>>) -> Admission {
        Admission { keys, ..self }
    }

    /// The request's API key, and one request taken from the key's rate; `Ok(None)` when the
    /// gateway asks for no keys. Decided from the headers alone, before the body is read.
    pub fn authenticate(
        &self,
        headers: &HeaderMap,
        ip: IpAddr,
    ) -> Result<Option<Arc<Key>>, GatewayError> {
        let Some(keys) = &self.keys else {
            return Ok(None);
        };
        let key = keys.authenticate(headers).map_err(|no_key| {
            self.refused(&self.refusals.auth, "auth", ip);
            GatewayError::InvalidApiKey {
                presented: no_key == NoKey::Unknown,
            }
        })?;
        // In the request's span from here: every later line names the key (never the key
        // itself).
        tracing::Span::current().record("api_key", &**key.name());
        key.check_rate().map_err(|wait| {
            self.refused(&self.refusals.key_rate, "key_rate", ip);
            GatewayError::RateLimited {
                retry_after: wait,
                limit: key.rate_limit(),
                scope: LimitScope::ApiKey,
            }
        })?;
        Ok(Some(key))
    }

    /// Whether the request's key (if any) may use `model`.
    pub fn check_model(
        &self,
        key: Option<&Key>,
        model: &str,
        ip: IpAddr,
    ) -> Result<(), GatewayError> {
        match key {
            Some(key) if !key.allows(model) => {
                self.refused(&self.refusals.model_not_allowed, "model_not_allowed", ip);
                Err(GatewayError::ModelNotAllowed(model.to_owned()))
            }
            _ => Ok(()),
        }
    }

    /// The key a client address is limited by: IPv4 as it is (an IPv4-mapped IPv6 address as
    /// its IPv4 address), IPv6 cut to its first `ipv6_prefix` bits.
    pub fn client_key(&self, ip: IpAddr) -> IpAddr {
        match canonical(ip) {
            IpAddr::V4(v4) => IpAddr::V4(v4),
            IpAddr::V6(v6) => {
                let prefix = u32::from(self.ipv6_prefix.min(128));
                let mask = u128::MAX.checked_shl(128 - prefix).unwrap_or(0);
                IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask))
            }
        }
    }

    /// Takes one request from the client's rate, before anything else is done for it.
    pub fn check_rate(&self, ip: IpAddr) -> Result<(), GatewayError> {
        let Some(limiter) = &self.rate else {
            return Ok(());
        };
        match limiter.check_key(&self.client_key(ip)) {
            Ok(_) => Ok(()),
            Err(not_until) => {
                let wait = not_until.wait_time_from(limiter.clock().now());
                self.refused(&self.refusals.ip_rate, "ip_rate", ip);
                Err(GatewayError::RateLimited {
                    retry_after: wait,
                    limit: self.rate_limit,
                    scope: LimitScope::Address,
                })
            }
        }
    }

    /// A stream slot for the client, or the refusal: per address first (429), then in all
    /// (503), then per API key (429). The slot is given back when the returned guard is
    /// dropped.
    pub fn take_stream_slot(
        &self,
        ip: IpAddr,
        key: Option<&Key>,
    ) -> Result<StreamSlot, GatewayError> {
        let ip_key = self.client_key(ip);
        if self.per_ip_max_streams > 0 {
            let mut count = self.streams_by_ip.entry(ip_key).or_insert(0);
            if *count >= self.per_ip_max_streams {
                drop(count);
                self.refused(&self.refusals.ip_streams, "ip_streams", ip);
                return Err(GatewayError::TooManyStreams {
                    limit: self.per_ip_max_streams,
                    retry_after: STREAM_SLOT_RETRY_AFTER,
                    scope: LimitScope::Address,
                });
            }
            *count += 1;
        }
        let before = self.streams.fetch_add(1, Ordering::AcqRel);
        let mut slot = StreamSlot {
            streams: self.streams.clone(),
            by_ip: (self.per_ip_max_streams > 0).then(|| (self.streams_by_ip.clone(), ip_key)),
            by_key: None,
        };
        if self.max_streams > 0 && before >= self.max_streams {
            drop(slot); // gives both counts back
            self.refused(&self.refusals.global_streams, "global_streams", ip);
            return Err(GatewayError::ServerOverloaded {
                retry_after: STREAM_SLOT_RETRY_AFTER,
            });
        }
        if let Some(key) = key {
            match key.take_slot() {
                Some(key_slot) => slot.by_key = Some(key_slot),
                None => {
                    drop(slot); // gives the address's and the global count back
                    self.refused(&self.refusals.key_streams, "key_streams", ip);
                    return Err(GatewayError::TooManyStreams {
                        limit: key.max_streams(),
                        retry_after: STREAM_SLOT_RETRY_AFTER,
                        scope: LimitScope::ApiKey,
                    });
                }
            }
        }
        Ok(slot)
    }

    /// Streams holding a slot now.
    pub fn streams(&self) -> u64 {
        self.streams.load(Ordering::Acquire)
    }

    /// Client addresses (keys) holding at least one stream slot now.
    pub fn addresses_with_streams(&self) -> usize {
        self.streams_by_ip.len()
    }

    pub fn refusals(&self) -> RefusalCounts {
        let r = &self.refusals;
        RefusalCounts {
            ip_rate: r.ip_rate.count.load(Ordering::Relaxed),
            ip_streams: r.ip_streams.count.load(Ordering::Relaxed),
            global_streams: r.global_streams.count.load(Ordering::Relaxed),
            auth: r.auth.count.load(Ordering::Relaxed),
            key_rate: r.key_rate.count.load(Ordering::Relaxed),
            key_streams: r.key_streams.count.load(Ordering::Relaxed),
            model_not_allowed: r.model_not_allowed.count.load(Ordering::Relaxed),
        }
    }

    /// Forgets the rate state of addresses that have been quiet long enough to be back at a
    /// full burst, so addresses seen once do not stay in memory (call on a schedule).
    pub fn prune(&self) {
        if let Some(limiter) = &self.rate {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }

    /// Addresses the rate limiter holds state for.
    pub fn tracked_addresses(&self) -> usize {
        self.rate.as_ref().map_or(0, |l| l.len())
    }

    fn refused(&self, reason: &Reason, name: &'static str, ip: IpAddr) {
        let total = reason.count.fetch_add(1, Ordering::Relaxed) + 1;
        let now_ms = u64::try_from(epoch().elapsed().as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        let last = reason.logged_ms.load(Ordering::Relaxed);
        let every = REFUSAL_LOG_EVERY.as_millis() as u64;
        if (last == 0 || now_ms.saturating_sub(last) >= every)
            && reason
                .logged_ms
                .compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(reason = name, client = %ip, total, "request refused by admission control");
        }
    }
}

/// The process's reference instant for refusal log times.
fn epoch() -> Instant {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// A stream's slot in the global, per-address and per-key counts; dropping it gives the slot
/// back.
pub struct StreamSlot {
    streams: Arc<AtomicU64>,
    by_ip: Option<(Arc<DashMap<IpAddr, u32>>, IpAddr)>,
    /// Dropped with the slot: gives the key's count back.
    by_key: Option<KeySlot>,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.streams.fetch_sub(1, Ordering::AcqRel);
        if let Some((map, key)) = &self.by_ip {
            // The entry goes at zero, so the map holds only addresses with live streams.
            map.remove_if_mut(key, |_, count| {
                *count = count.saturating_sub(1);
                *count == 0
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admission(configure: impl FnOnce(&mut Limits)) -> Admission {
        let mut limits = Limits::default();
        configure(&mut limits);
        Admission::new(&limits)
    }

    #[test]
    fn ipv6_clients_are_keyed_by_their_prefix() {
        let a = admission(|l| l.per_ip.ipv6_prefix = 64);
        let one: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let other: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        let elsewhere: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(a.client_key(one), a.client_key(other));
        assert_ne!(a.client_key(one), a.client_key(elsewhere));
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(a.client_key(mapped), "192.0.2.7".parse::<IpAddr>().unwrap());
        let full = admission(|l| l.per_ip.ipv6_prefix = 128);
        assert_ne!(full.client_key(one), full.client_key(other));
    }

    #[test]
    fn the_rate_allows_the_burst_then_refuses_with_the_wait() {
        let a = admission(|l| {
            l.per_ip.requests_per_second = 1;
            l.per_ip.burst = 3;
        });
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        for _ in 0..3 {
            a.check_rate(ip).unwrap();
        }
        match a.check_rate(ip) {
            Err(GatewayError::RateLimited {
                retry_after, limit, ..
            }) => {
                assert_eq!(limit, 1);
                assert!(retry_after > Duration::ZERO && retry_after <= Duration::from_secs(1));
            }
            other => panic!("{other:?}"),
        }
        // Another address has its own budget.
        a.check_rate("192.0.2.2".parse().unwrap()).unwrap();
        assert_eq!(a.refusals().ip_rate, 1);
    }

    #[test]
    fn stream_slots_come_back_exactly() {
        let a = admission(|l| {
            l.per_ip.max_streams = 2;
            l.max_streams = 3;
        });
        let one: IpAddr = "192.0.2.1".parse().unwrap();
        let two: IpAddr = "192.0.2.2".parse().unwrap();
        let s1 = a.take_stream_slot(one, None).unwrap();
        let s2 = a.take_stream_slot(one, None).unwrap();
        assert!(matches!(
            a.take_stream_slot(one, None),
            Err(GatewayError::TooManyStreams { .. })
        ));
        let s3 = a.take_stream_slot(two, None).unwrap();
        assert!(matches!(
            a.take_stream_slot(two, None),
            Err(GatewayError::ServerOverloaded { .. })
        ));
        assert_eq!(a.streams(), 3);
        drop((s1, s2, s3));
        assert_eq!(a.streams(), 0);
        assert_eq!(a.addresses_with_streams(), 0);
        assert_eq!(
            a.refusals(),
            RefusalCounts {
                ip_rate: 0,
                ip_streams: 1,
                global_streams: 1,
                auth: 0,
                key_rate: 0,
                key_streams: 0,
                model_not_allowed: 0,
            }
        );
    }

    #[test]
    fn everything_off_by_default() {
        let a = admission(|_| {});
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let slots: Vec<_> = (0..1000)
            .map(|_| {
                a.check_rate(ip).unwrap();
                a.take_stream_slot(ip, None).unwrap()
            })
            .collect();
        assert_eq!(a.streams(), 1000);
        drop(slots);
        assert_eq!(a.streams(), 0);
        assert_eq!(a.tracked_addresses(), 0);
    }
}
