//! The shared heartbeat scheduler: one task for all streams, no timer per stream.
//!
//! Every sweep period it walks the registry once and, for each stream, compares two timestamps
//! the stream's body keeps up to date:
//! - **idle**: nothing written for (about) `heartbeat_interval` → ask the stream for a heartbeat.
//!   A stream still waiting for the upstream's headers reacts by starting its response early.
//!   The body writes the `: ping` itself, between two blocks, so it never lands inside an event.
//! - **stalled**: a frame handed to the client's connection and not taken for
//!   `client_stall_timeout` → end it as a slow client (its connection is closed; the upstream
//!   request is cancelled when the body is dropped).
//!
//! Spreading the work: each stream is due a little before the full interval, by an offset in
//! the last quarter of the interval that depends on its id. Streams that started together (a
//! burst of clients) are therefore pinged over a quarter of the interval — eight sweeps — not in
//! one, and they stay spread afterwards. A heartbeat is never later than the interval plus one
//! sweep period.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use crate::config::StreamsConfig;
use crate::registry::{Registry, StreamHandle};

/// Sweeps per heartbeat interval: a heartbeat is late by at most 1/32 of the interval.
pub const SWEEPS_PER_INTERVAL: u32 = 32;

/// Sweeps per stall timeout: a slow client is cut late by at most 1/16 of the timeout.
pub const SWEEPS_PER_STALL_TIMEOUT: u32 = 16;

/// Bounds of the sweep period, whatever the configuration: no busier than 200 sweeps a second,
/// and at least one a second.
pub const MIN_SWEEP_PERIOD: Duration = Duration::from_millis(5);
pub const MAX_SWEEP_PERIOD: Duration = Duration::from_secs(1);

/// The fraction of the interval over which heartbeats are spread (1/4).
const SPREAD_DIVISOR: u64 = 4;

/// What one sweep did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Sweep {
    pub streams: usize,
    pub pinged: usize,
    pub stalled: usize,
}

/// The scheduler's settings, in registry milliseconds.
#[derive(Debug, Clone, Copy)]
pub struct Scheduler {
    /// 0 disables heartbeats (and early commit).
    heartbeat_ms: u64,
    stall_ms: u64,
    period: Duration,
}

impl Scheduler {
    pub fn new(streams: &StreamsConfig) -> Scheduler {
        let heartbeat = streams.heartbeat_interval;
        let stall = streams.client_stall_timeout;
        let mut period = stall / SWEEPS_PER_STALL_TIMEOUT;
        if !heartbeat.is_zero() {
            period = period.min(heartbeat / SWEEPS_PER_INTERVAL);
        }
        Scheduler {
            heartbeat_ms: heartbeat.as_millis() as u64,
            stall_ms: (stall.as_millis() as u64).max(1),
            period: period.clamp(MIN_SWEEP_PERIOD, MAX_SWEEP_PERIOD),
        }
    }

    /// Time between two sweeps.
    pub fn period(&self) -> Duration {
        self.period
    }

    /// How long `stream` may stay silent before it is asked for a heartbeat: the interval,
    /// less an offset up to a quarter of it, fixed per stream.
    fn heartbeat_due_after(&self, stream: &StreamHandle) -> u64 {
        let spread = self.heartbeat_ms / SPREAD_DIVISOR;
        // A multiplicative hash spreads consecutive stream numbers evenly.
        let mixed = stream.seq().wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32;
        self.heartbeat_ms - mixed % (spread + 1)
    }

    /// One pass over the registry at registry time `now_ms`.
    pub fn sweep(&self, registry: &Registry, now_ms: u64) -> Sweep {
        let mut sweep = Sweep::default();
        registry.for_each(|stream| {
            sweep.streams += 1;
            if let Some(since) = stream.blocked_since_ms() {
                // Also for a stream already asked to end (by an operator, say): it cannot write
                // its final event while its client takes nothing.
                if now_ms.saturating_sub(since) >= self.stall_ms && stream.cut_slow_client() {
                    tracing::warn!(
                        stream_id = stream.id(),
                        client = %stream.client_ip(),
                        stalled_ms = now_ms.saturating_sub(since),
                        "client stopped reading: closing its connection (slow client)"
                    );
                    sweep.stalled += 1;
                }
                // A blocked stream is not idle: its client just is not taking what it has.
                return;
            }
            if stream.end_reason().is_some() {
                return;
            }
            if self.heartbeat_ms > 0
                && now_ms.saturating_sub(stream.last_write_ms()) >= self.heartbeat_due_after(stream)
            {
                stream.request_ping();
                sweep.pinged += 1;
            }
        });
        sweep
    }

    /// Sweeps every period until `shutdown` is cancelled.
    pub async fn run(self, registry: Arc<Registry>, shutdown: CancellationToken) {
        let mut ticks = tokio::time::interval(self.period);
        // After a stall of the runtime, sweep once and go on; no burst of catch-up sweeps.
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        // Bounded by the shutdown token.
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = ticks.tick() => {
                    self.sweep(&registry, registry.now_ms());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::{EndReason, NewStream, StreamEntry};
    use std::net::{IpAddr, Ipv4Addr};

    fn settings(heartbeat_ms: u64, stall_ms: u64) -> StreamsConfig {
        StreamsConfig {
            heartbeat_interval: Duration::from_millis(heartbeat_ms),
            client_stall_timeout: Duration::from_millis(stall_ms),
            ..StreamsConfig::default()
        }
    }

    fn streams(registry: &Arc<Registry>, n: usize) -> Vec<StreamEntry> {
        (0..n)
            .map(|_| {
                registry.register(NewStream {
                    client_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
                    api_key: None,
                    model: "m",
                    request_id: "r",
                    connection: None,
                })
            })
            .collect()
    }

    #[test]
    fn the_period_follows_the_interval_within_bounds() {
        assert_eq!(
            Scheduler::new(&settings(15_000, 30_000)).period(),
            Duration::from_micros(468_750)
        );
        assert_eq!(
            Scheduler::new(&settings(1_000, 30_000)).period(),
            Duration::from_micros(31_250)
        );
        assert_eq!(
            Scheduler::new(&settings(10, 30_000)).period(),
            MIN_SWEEP_PERIOD
        );
        // Heartbeats off: the stall timeout alone sets the pace.
        assert_eq!(
            Scheduler::new(&settings(0, 30_000)).period(),
            MAX_SWEEP_PERIOD
        );
        assert_eq!(
            Scheduler::new(&settings(0, 1_600)).period(),
            Duration::from_millis(100)
        );
    }

    #[tokio::test]
    async fn streams_started_together_are_pinged_spread_over_a_quarter_interval() {
        let registry = Arc::new(Registry::new(&["u"]));
        let scheduler = Scheduler::new(&settings(1_000, 60_000));
        let entries = streams(&registry, 1_000);
        let start = entries[0].handle().last_write_ms();
        let mut per_sweep = Vec::new();
        let mut now = start;
        // Sweep every 31 ms for one and a quarter intervals.
        while now <= start + 1_250 {
            per_sweep.push((now - start, scheduler.sweep(&registry, now).pinged));
            // The body would write the heartbeat and record it.
            for e in &entries {
                if e.handle().take_signals().ping {
                    e.handle().record_write(8, true, now);
                    e.handle()
                        .on_poll(&std::task::Context::from_waker(std::task::Waker::noop()));
                }
            }
            now += 31;
        }
        let total: usize = per_sweep.iter().map(|(_, n)| n).sum();
        assert_eq!(total, 1_000, "every stream pinged exactly once");
        for (at, n) in &per_sweep {
            if *at < 750 {
                assert_eq!(*n, 0, "nobody is due before 3/4 of the interval ({at} ms)");
            }
            assert!(*n <= 200, "{n} pings in one sweep at {at} ms: not spread");
        }
    }

    #[tokio::test]
    async fn a_stream_that_writes_is_never_pinged() {
        let registry = Arc::new(Registry::new(&["u"]));
        let scheduler = Scheduler::new(&settings(100, 60_000));
        let entries = streams(&registry, 10);
        let noop = std::task::Context::from_waker(std::task::Waker::noop());
        for now in (0..2_000).step_by(10) {
            for e in &entries {
                e.handle().record_write(10, false, now);
                e.handle().on_poll(&noop);
            }
            assert_eq!(scheduler.sweep(&registry, now + 5).pinged, 0);
        }
    }

    #[tokio::test]
    async fn a_stall_past_the_timeout_ends_the_stream_as_a_slow_client() {
        let registry = Arc::new(Registry::new(&["u"]));
        let scheduler = Scheduler::new(&settings(100, 1_000));
        let entries = streams(&registry, 2);
        let (stuck, fine) = (entries[0].handle(), entries[1].handle());
        stuck.record_write(100, false, 0);
        // Stuck, but not for long enough; and not pinged, since it is not idle.
        assert_eq!(
            scheduler.sweep(&registry, 999),
            Sweep {
                streams: 2,
                pinged: 1,
                stalled: 0
            }
        );
        assert_eq!(scheduler.sweep(&registry, 1_000).stalled, 1);
        assert_eq!(stuck.end_reason(), Some(EndReason::SlowClient));
        assert_eq!(fine.end_reason(), None);
        // Cut once, not again at every sweep.
        assert_eq!(scheduler.sweep(&registry, 5_000).stalled, 0);
    }

    #[tokio::test]
    async fn heartbeats_off_means_no_pings() {
        let registry = Arc::new(Registry::new(&["u"]));
        let scheduler = Scheduler::new(&settings(0, 1_000));
        let _entries = streams(&registry, 3);
        assert_eq!(scheduler.sweep(&registry, 1_000_000).pinged, 0);
    }
}
