//! Admission control: whether a request may cost anything, decided before its body is read.
//!
//! - a request rate per client address (a governor keyed limiter; IPv6 clients keyed by their
//!   prefix, `limits.per_ip.ipv6_prefix`, so one host cannot rotate addresses around it);
//! - concurrent streams per client address and in all (`limits.per_ip.max_streams`,
//!   `limits.max_streams`), held by a [`StreamSlot`] guard that gives the slot back when the
//!   stream ends, however it ends;
//! - every refusal counted by reason in the [`Refusals`] it shares with the acceptor's
//!   connection caps, and logged at a rate that cannot flood the log.
//! - bounded memory however many addresses come: the rate limiter holds at most
//!   `limits.per_ip.max_tracked` addresses ([`capped`]) and forgets quiet ones when pruned (on a
//!   schedule, and sooner when it is full); the per-address stream counts hold only addresses
//!   with a live stream, so they are bounded by the stream caps.
//! - with `[auth] mode = "keys"`, a gateway API key on every request ([`crate::auth`]): its own
//!   request rate, stream cap (its slot held by the same [`StreamSlot`]) and model allowlist.

mod capped;

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::{Quota, RateLimiter};
use http::HeaderMap;

use self::capped::{CappedStore, Tracked};
use crate::auth::{Key, KeySlot, Keys, NoKey};
use crate::client_ip::limit_key;
use crate::config::Limits;
use crate::error::{GatewayError, LimitScope};
use crate::refusal::{Reason, RefusalCounts, Refusals};

/// What a refused client should wait before a stream slot may be free: a guess, since streams
/// last as long as they last; the SDKs back off further on their own.
const STREAM_SLOT_RETRY_AFTER: Duration = Duration::from_secs(1);

type IpRateLimiter = RateLimiter<IpAddr, CappedStore, DefaultClock, StateInformationMiddleware>;

/// The gateway's admission state, shared by every worker.
pub struct Admission {
    rate: Option<IpRateLimiter>,
    /// `limits.per_ip.requests_per_second`, for the `x-ratelimit-limit-requests` header.
    rate_limit: u32,
    ipv6_prefix: u8,
    per_ip_max_streams: u32,
    max_streams: u64,
    streams: Arc<AtomicU64>,
    /// Stream counts by client key; an entry goes when its count reaches zero, so this holds
    /// only addresses with a live stream (at most `limits.max_streams` when that is set).
    streams_by_ip: Arc<DashMap<IpAddr, u32>>,
    refusals: Arc<Refusals>,
    /// The addresses the rate limiter holds (also when it is off: then none).
    tracked: Arc<Tracked>,
    /// The gateway API keys, when `[auth] mode = "keys"`.
    keys: Option<Arc<Keys>>,
}

impl Admission {
    pub fn new(limits: &Limits) -> Admission {
        let per_ip = &limits.per_ip;
        let tracked = Arc::new(Tracked::new(
            usize::try_from(per_ip.max_tracked).unwrap_or(usize::MAX),
        ));
        let rate = NonZeroU32::new(per_ip.requests_per_second).map(|rps| {
            let burst = NonZeroU32::new(per_ip.burst).unwrap_or(rps);
            IpRateLimiter::new(
                Quota::per_second(rps).allow_burst(burst),
                CappedStore(tracked.clone()),
                DefaultClock::default(),
            )
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
            refusals: Arc::new(Refusals::default()),
            tracked,
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

    /// The key a client address is limited by (see [`limit_key`]).
    pub fn client_key(&self, ip: IpAddr) -> IpAddr {
        limit_key(ip, self.ipv6_prefix)
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
        self.refusals.counts()
    }

    /// The refusal counts, for the acceptor's connection caps to count into.
    pub fn shared_refusals(&self) -> Arc<Refusals> {
        self.refusals.clone()
    }

    /// Forgets the rate state of addresses that have been quiet long enough to be back at a
    /// full burst, so addresses seen once do not stay in memory (call on a schedule).
    pub fn prune(&self) {
        if let Some(limiter) = &self.rate {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }

    /// Returns when a new address has found the rate limiter full since the last call (at once
    /// if one did before): the pruner then need not wait for its schedule.
    pub async fn rate_limiter_full(&self) {
        self.tracked.full().await;
    }

    /// Addresses the rate limiter holds state for (at most `limits.per_ip.max_tracked`).
    pub fn tracked_addresses(&self) -> usize {
        self.tracked.len()
    }

    /// Bytes of the rate limiter's table: its capacity times the size of an entry.
    pub fn tracked_table_bytes(&self) -> usize {
        self.tracked.table_bytes()
    }

    /// New addresses decided without being tracked because the rate limiter was full.
    pub fn untracked_addresses(&self) -> u64 {
        self.tracked.untracked()
    }

    fn refused(&self, reason: &Reason, name: &'static str, ip: IpAddr) {
        reason.record(name, ip);
    }
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
    use std::net::Ipv6Addr;
    use std::time::Instant;

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
                ip_streams: 1,
                global_streams: 1,
                ..RefusalCounts::default()
            }
        );
    }

    #[test]
    fn a_full_rate_limiter_decides_new_addresses_as_fresh_without_tracking_them() {
        let a = admission(|l| {
            l.per_ip.requests_per_second = 1;
            l.per_ip.burst = 1;
            l.per_ip.max_tracked = 2;
        });
        let ip = |last: u8| IpAddr::from([192, 0, 2, last]);
        a.check_rate(ip(1)).unwrap();
        a.check_rate(ip(2)).unwrap();
        // Tracked addresses keep their state: the second request within the second is refused.
        assert!(a.check_rate(ip(1)).is_err());
        // A third address finds the limiter full: every request of it is a first one.
        for _ in 0..3 {
            a.check_rate(ip(3)).unwrap();
        }
        assert_eq!(a.tracked_addresses(), 2);
        assert_eq!(a.untracked_addresses(), 3);
        assert_eq!(a.refusals().ip_rate, 1);
    }

    /// The resident set of this process, in bytes (Linux; 0 elsewhere).
    fn rss_bytes() -> usize {
        std::fs::read_to_string("/proc/self/statm")
            .ok()
            .and_then(|s| s.split_whitespace().nth(1)?.parse::<usize>().ok())
            .map_or(0, |pages| pages * 4096)
    }

    /// Sends one request from each of `count` distinct client keys (half IPv4, half IPv6 /64s)
    /// through `check_rate`, checking that the tracked count never exceeds `max_tracked`, then
    /// prunes once the states are stale; returns the figures.
    fn spray(count: u32, max_tracked: u32) -> String {
        // 1,000 requests/s, burst 1: a state is stale (indistinguishable from a fresh one) 2 ms
        // after its request, so the prune below need not wait long.
        let a = admission(|l| {
            l.per_ip.requests_per_second = 1000;
            l.per_ip.burst = 1;
            l.per_ip.max_tracked = max_tracked;
        });
        let rss_before = rss_bytes();
        let started = Instant::now();
        // Bounded: `count` requests.
        for i in 0..count {
            let ip = if i % 2 == 0 {
                IpAddr::from(i.to_be_bytes())
            } else {
                // One per /64: the prefix is what is keyed.
                IpAddr::V6(Ipv6Addr::from(
                    0x2001_0db8_u128 << 96 | u128::from(i) << 64 | 1,
                ))
            };
            a.check_rate(ip).unwrap();
            if i % 1024 == 0 {
                assert!(a.tracked_addresses() <= max_tracked as usize);
            }
        }
        let inserted = started.elapsed();
        let tracked = a.tracked_addresses();
        assert_eq!(tracked, count.min(max_tracked) as usize);
        assert_eq!(
            a.untracked_addresses(),
            u64::from(count.saturating_sub(max_tracked))
        );
        let (full_bytes, full_rss) = (a.tracked_table_bytes(), rss_bytes());
        let deadline = Instant::now() + Duration::from_secs(10);
        // Bounded: until the deadline.
        while a.tracked_addresses() > 0 && Instant::now() < deadline {
            a.prune();
            std::thread::yield_now();
        }
        assert_eq!(a.tracked_addresses(), 0);
        format!(
            "{count} keys, max_tracked {max_tracked}: {tracked} tracked, table {full_bytes} B \
             ({} B per tracked key), RSS +{} KiB; after prune: table {} B, RSS +{} KiB; \
             inserting took {inserted:?}",
            full_bytes / tracked.max(1),
            full_rss.saturating_sub(rss_before) / 1024,
            a.tracked_table_bytes(),
            rss_bytes().saturating_sub(rss_before) / 1024,
        )
    }

    /// A million addresses against the default cap (about 1.5 s in a debug build): figures in
    /// RESULTS.md, "Bounded memory under address spraying".
    #[test]
    fn a_million_addresses_are_capped_and_pruned() {
        println!("{}", spray(1_000_000, crate::config::DEFAULT_MAX_TRACKED));
    }

    /// The reference for the figures: a million addresses with a cap that holds them all, for
    /// the bytes each tracked address costs. Ignored: it allocates some 70 MB and takes several
    /// seconds in a debug build; CI runs it with `--release`.
    #[test]
    #[ignore = "allocates ~70 MB: run with --release (CI does)"]
    fn a_million_addresses_tracked_cost_bytes_each() {
        println!("{}", spray(1_000_000, 1_000_000));
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
