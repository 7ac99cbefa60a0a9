//! A sliding time window of counters: the one technique the breaker and the retry budget share.
//!
//! The window is a fixed ring of [`BUCKETS`] buckets, each `window / BUCKETS` wide. A bucket
//! belongs to one slice of time (its epoch, counted from the first event seen); when the clock
//! reaches a slice whose slot still holds an older one, the slot is cleared and reused. So the
//! memory is fixed and every operation is O([`BUCKETS`]) whatever the traffic, at the price of
//! granularity: an event ages out between `window * (BUCKETS - 1) / BUCKETS` and `window` after
//! it was counted, never later.

use std::time::{Duration, Instant};

/// Buckets per window: ten, so the window slides in steps of a tenth of its length.
pub(super) const BUCKETS: usize = 10;

/// The shortest window used: a zero (or tiny) window from the settings becomes this, so each
/// bucket is at least 1 ms wide and the epoch arithmetic never divides by zero.
pub(super) const MIN_WINDOW: Duration = Duration::from_millis(10);

/// One time slice's counters.
#[derive(Debug, Clone, Copy)]
struct Bucket<const K: usize> {
    epoch: u64,
    counts: [u64; K],
}

/// `K` counters (e.g. requests and failures) summed over the last `window`.
#[derive(Debug)]
pub(super) struct Ring<const K: usize> {
    /// The width of one bucket, in nanoseconds (at least 1 ms, see [`MIN_WINDOW`]).
    width_nanos: u128,
    /// The instant epoch 0 starts at: the first event's, so no clock is read here.
    origin: Option<Instant>,
    buckets: [Bucket<K>; BUCKETS],
}

impl<const K: usize> Ring<K> {
    pub(super) fn new(window: Duration) -> Ring<K> {
        let window = window.max(MIN_WINDOW);
        Ring {
            width_nanos: (window.as_nanos() / BUCKETS as u128).max(1),
            origin: None,
            buckets: [Bucket {
                epoch: 0,
                counts: [0; K],
            }; BUCKETS],
        }
    }

    /// The time slice `now` falls in. An instant before the origin (callers' clocks are read on
    /// different threads) counts as the origin's slice.
    fn epoch_at(&self, origin: Instant, now: Instant) -> u64 {
        let nanos = now.saturating_duration_since(origin).as_nanos();
        u64::try_from(nanos / self.width_nanos).unwrap_or(u64::MAX)
    }

    /// Adds `n` to counter `counter` (ignored if out of range) in the bucket of `now`.
    pub(super) fn add(&mut self, now: Instant, counter: usize, n: u64) {
        let origin = *self.origin.get_or_insert(now);
        let epoch = self.epoch_at(origin, now);
        let slot = (epoch % BUCKETS as u64) as usize;
        let Some(bucket) = self.buckets.get_mut(slot) else {
            return;
        };
        if bucket.epoch != epoch {
            *bucket = Bucket {
                epoch,
                counts: [0; K],
            };
        }
        if let Some(count) = bucket.counts.get_mut(counter) {
            *count = count.saturating_add(n);
        }
    }

    /// Each counter summed over the buckets still inside the window at `now`. Reads only: the
    /// stale buckets are skipped here and cleared by the next [`Ring::add`] that needs them.
    pub(super) fn sums(&self, now: Instant) -> [u64; K] {
        let mut sums = [0; K];
        let Some(origin) = self.origin else {
            return sums;
        };
        let current = self.epoch_at(origin, now);
        let oldest = current.saturating_sub(BUCKETS as u64 - 1);
        // Bounded: BUCKETS buckets of K counters.
        for bucket in &self.buckets {
            if (oldest..=current).contains(&bucket.epoch) {
                for (sum, count) in sums.iter_mut().zip(bucket.counts) {
                    *sum = sum.saturating_add(count);
                }
            }
        }
        sums
    }

    /// Forgets every event (the breaker does this when it closes).
    pub(super) fn clear(&mut self) {
        // Bounded: BUCKETS buckets.
        for bucket in &mut self.buckets {
            bucket.counts = [0; K];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_age_out_after_the_window() {
        let t0 = Instant::now();
        let mut ring = Ring::<2>::new(Duration::from_secs(10));
        ring.add(t0, 0, 3);
        ring.add(t0 + Duration::from_secs(5), 1, 2);
        assert_eq!(ring.sums(t0 + Duration::from_secs(5)), [3, 2]);
        // The first bucket (0 s to 1 s) is still inside at 9.5 s and gone at 10 s.
        assert_eq!(ring.sums(t0 + Duration::from_millis(9_500)), [3, 2]);
        assert_eq!(ring.sums(t0 + Duration::from_secs(10)), [0, 2]);
        assert_eq!(ring.sums(t0 + Duration::from_secs(20)), [0, 0]);
        // A reused slot starts from zero.
        ring.add(t0 + Duration::from_secs(20), 0, 1);
        assert_eq!(ring.sums(t0 + Duration::from_secs(20)), [1, 0]);
    }

    #[test]
    fn zero_window_and_odd_inputs_do_not_panic() {
        let t0 = Instant::now();
        let mut ring = Ring::<1>::new(Duration::ZERO);
        ring.add(t0 + Duration::from_secs(1), 0, u64::MAX);
        ring.add(t0 + Duration::from_secs(1), 0, u64::MAX);
        ring.add(t0 + Duration::from_secs(1), 7, 1);
        // An instant before the origin counts in the origin's bucket.
        assert_eq!(ring.sums(t0), [u64::MAX]);
        assert_eq!(ring.sums(t0 + Duration::from_secs(1) + MIN_WINDOW), [0]);
        let mut ring = Ring::<1>::new(Duration::MAX);
        ring.add(t0, 0, 1);
        assert_eq!(ring.sums(t0 + Duration::from_secs(1_000_000)), [1]);
    }
}
