//! Counters shared by every stream, and latency histograms.
//!
//! The histogram is HDR-style: exact below 256, then 128 log-spaced buckets per power of two,
//! so any recorded value is reported within 1/128 (< 0.8 %) of itself, with a fixed size of
//! 4,352 buckets for values up to 2^40 (12 days in microseconds). [`AtomicHistogram`] is the
//! lock-free recording side (one relaxed atomic add per bucket and a few for count, sum, min,
//! max) that every stream task writes to; [`Histogram`] is a plain snapshot to read
//! percentiles from.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

/// Values below `2^(SUB_BITS + 1)` have a bucket of their own.
const SUB_BITS: u32 = 7;
/// Buckets per power of two above the exact range.
const SUB_BUCKETS: usize = 1 << SUB_BITS;
/// Largest value tracked; larger ones are recorded as this.
pub const MAX_VALUE: u64 = (1 << 40) - 1;
/// `bucket_index(MAX_VALUE) + 1`.
const BUCKETS: usize = (39 - SUB_BITS as usize) * SUB_BUCKETS + 2 * SUB_BUCKETS;

fn bucket_index(value: u64) -> usize {
    let value = value.min(MAX_VALUE);
    if value < (2 * SUB_BUCKETS) as u64 {
        return value as usize;
    }
    let msb = 63 - value.leading_zeros();
    let shift = msb - SUB_BITS;
    shift as usize * SUB_BUCKETS + (value >> shift) as usize
}

/// The smallest and largest value that land in bucket `index`.
fn bucket_range(index: usize) -> (u64, u64) {
    if index < 2 * SUB_BUCKETS {
        return (index as u64, index as u64);
    }
    let shift = (index / SUB_BUCKETS - 1) as u32;
    let top = (index % SUB_BUCKETS + SUB_BUCKETS) as u64;
    (top << shift, ((top + 1) << shift) - 1)
}

/// A histogram snapshot.
#[derive(Debug, Clone)]
pub struct Histogram {
    counts: Vec<u64>,
    count: u64,
    sum: u64,
    min: u64,
    max: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: vec![0; BUCKETS],
            count: 0,
            sum: 0,
            min: u64::MAX,
            max: 0,
        }
    }
}

impl Histogram {
    pub fn record(&mut self, value: u64) {
        let value = value.min(MAX_VALUE);
        self.counts[bucket_index(value)] += 1;
        self.count += 1;
        self.sum = self.sum.saturating_add(value);
        self.min = self.min.min(value);
        self.max = self.max.max(value);
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    pub fn max(&self) -> Option<u64> {
        (self.count > 0).then_some(self.max)
    }

    pub fn mean(&self) -> Option<f64> {
        (self.count > 0).then(|| self.sum as f64 / self.count as f64)
    }

    /// The value at percentile `p` (0–100): the highest value of the bucket holding the
    /// `ceil(p / 100 * count)`-th smallest value, clamped to the recorded min and max. `None`
    /// when nothing was recorded.
    pub fn percentile(&self, p: f64) -> Option<u64> {
        if self.count == 0 {
            return None;
        }
        let rank = ((p.clamp(0.0, 100.0) / 100.0) * self.count as f64).ceil() as u64;
        let rank = rank.clamp(1, self.count);
        let mut seen = 0;
        for (index, &n) in self.counts.iter().enumerate() {
            seen += n;
            if seen >= rank {
                let (_, high) = bucket_range(index);
                // min > max only if a value raced a `take`; then the bucket bound must do.
                return Some(if self.min <= self.max {
                    high.clamp(self.min, self.max)
                } else {
                    high
                });
            }
        }
        Some(self.max)
    }

    /// p50, p90, p99, max and mean, for reports.
    pub fn summary(&self) -> LatencySummary {
        LatencySummary {
            count: self.count,
            p50: self.percentile(50.0),
            p90: self.percentile(90.0),
            p99: self.percentile(99.0),
            max: self.max(),
            mean: self.mean().map(|m| m.round() as u64),
        }
    }
}

/// Percentiles of a histogram (in its unit, microseconds here); `None` without samples.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct LatencySummary {
    pub count: u64,
    pub p50: Option<u64>,
    pub p90: Option<u64>,
    pub p99: Option<u64>,
    pub max: Option<u64>,
    pub mean: Option<u64>,
}

/// The recording side, shared by every stream task.
#[derive(Debug)]
pub struct AtomicHistogram {
    counts: Box<[AtomicU64]>,
    sum: AtomicU64,
    min: AtomicU64,
    max: AtomicU64,
}

impl Default for AtomicHistogram {
    fn default() -> Self {
        AtomicHistogram {
            counts: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0),
            min: AtomicU64::new(u64::MAX),
            max: AtomicU64::new(0),
        }
    }
}

impl AtomicHistogram {
    pub fn record(&self, value: u64) {
        let value = value.min(MAX_VALUE);
        self.counts[bucket_index(value)].fetch_add(1, Ordering::Relaxed);
        self.sum.fetch_add(value, Ordering::Relaxed);
        self.min.fetch_min(value, Ordering::Relaxed);
        self.max.fetch_max(value, Ordering::Relaxed);
    }

    /// A copy of everything recorded so far.
    pub fn snapshot(&self) -> Histogram {
        self.read(
            |a| a.load(Ordering::Relaxed),
            |a, _| a.load(Ordering::Relaxed),
        )
    }

    /// Everything recorded since the last `take`, resetting it (for per-second figures). A value
    /// recorded while this runs lands in this interval or the next, never in neither.
    pub fn take(&self) -> Histogram {
        self.read(
            |a| a.swap(0, Ordering::Relaxed),
            |a, v| a.swap(v, Ordering::Relaxed),
        )
    }

    fn read(
        &self,
        get: impl Fn(&AtomicU64) -> u64,
        get_or_reset: impl Fn(&AtomicU64, u64) -> u64,
    ) -> Histogram {
        let counts: Vec<u64> = self.counts.iter().map(&get).collect();
        // The count is derived from the buckets so that percentiles stay consistent with them.
        let count = counts.iter().sum();
        let sum = get(&self.sum);
        let min = get_or_reset(&self.min, u64::MAX);
        let max = get_or_reset(&self.max, 0);
        Histogram {
            counts,
            count,
            sum,
            min,
            max,
        }
    }
}

/// Live counters of the run, updated by the stream tasks and read by the progress ticker.
#[derive(Debug, Default)]
pub struct Live {
    /// Streams that got `200` response headers.
    pub opened: AtomicU64,
    /// Streams with `200` headers that have not ended yet.
    pub alive: AtomicU64,
    pub max_alive: AtomicU64,
    /// Dispatched SSE events with data (`[DONE]` and error events included).
    pub events: AtomicU64,
    /// Events that carried a `: sent_us=` comment.
    pub timed_events: AtomicU64,
    /// Response body bytes.
    pub bytes: AtomicU64,
    /// `: ping` heartbeat comments.
    pub pings: AtomicU64,
    /// Other comment lines (not `ping`, not `sent_us=`).
    pub other_comments: AtomicU64,
    /// Time to `200` response headers, microseconds from the start of the request.
    pub headers_us: AtomicHistogram,
    /// Time to first event, microseconds from the start of the request.
    pub first_event_us: AtomicHistogram,
    /// Receive time − `sent_us`, microseconds, the whole run.
    pub latency_us: AtomicHistogram,
    /// The same, since the last progress tick.
    pub latency_us_interval: AtomicHistogram,
}

impl Live {
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts a stream opened and alive; it stays alive until the guard is dropped, however
    /// its task ends (the end of its body, a timeout, a cancel, or an abort mid-body).
    pub fn stream_opened(&self) -> AliveGuard<'_> {
        Live::add(&self.opened, 1);
        let alive = self.alive.fetch_add(1, Ordering::Relaxed) + 1;
        self.max_alive.fetch_max(alive, Ordering::Relaxed);
        AliveGuard { live: self }
    }

    pub fn record_latency(&self, micros: u64) {
        Live::add(&self.timed_events, 1);
        self.latency_us.record(micros);
        self.latency_us_interval.record(micros);
    }
}

/// One alive stream in [`Live::alive`], from [`Live::stream_opened`] until it is dropped.
#[must_use = "the stream counts as alive only while the guard lives"]
#[derive(Debug)]
pub struct AliveGuard<'a> {
    live: &'a Live,
}

impl Drop for AliveGuard<'_> {
    fn drop(&mut self) {
        self.live.alive.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Count, mean, min and max of a per-stream figure, kept as running totals (no per-stream
/// storage, whatever the stream count).
#[derive(Debug, Clone, Copy, Default)]
pub struct Spread {
    count: u64,
    sum: f64,
    min: f64,
    max: f64,
}

impl Spread {
    pub fn record(&mut self, value: f64) {
        if self.count == 0 {
            (self.min, self.max) = (value, value);
        } else {
            self.min = self.min.min(value);
            self.max = self.max.max(value);
        }
        self.count += 1;
        self.sum += value;
    }

    pub fn summary(&self) -> SpreadSummary {
        let some = |v: f64| (self.count > 0).then_some(v);
        SpreadSummary {
            streams: self.count,
            mean: some(self.sum / self.count.max(1) as f64),
            min: some(self.min),
            max: some(self.max),
        }
    }
}

/// A [`Spread`] for reports: over how many streams, and `None` for each figure without any.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct SpreadSummary {
    pub streams: u64,
    pub mean: Option<f64>,
    pub min: Option<f64>,
    pub max: Option<f64>,
}

/// Failures by kind, with the first message seen for each.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Failures {
    pub by_kind: BTreeMap<String, u64>,
    pub examples: BTreeMap<String, String>,
}

impl Failures {
    pub fn add(&mut self, kind: String, message: String) {
        *self.by_kind.entry(kind.clone()).or_default() += 1;
        self.examples.entry(kind).or_insert(message);
    }

    pub fn total(&self) -> u64 {
        self.by_kind.values().sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_stream_is_alive_until_its_guard_drops() {
        let live = Live::default();
        let first = live.stream_opened();
        let second = live.stream_opened();
        assert_eq!(Live::get(&live.alive), 2);
        drop(first);
        let third = live.stream_opened();
        assert_eq!(Live::get(&live.alive), 2);
        drop((second, third));
        assert_eq!(Live::get(&live.alive), 0);
        assert_eq!(Live::get(&live.opened), 3);
        assert_eq!(Live::get(&live.max_alive), 2);
    }

    /// The run aborts the tasks of streams still reading their body when the collect deadline
    /// passes: a count decremented after the body's `.await` would never come down for them.
    #[tokio::test]
    async fn an_aborted_stream_task_is_no_longer_alive() {
        let live = Arc::new(Live::default());
        let (opened_tx, opened_rx) = tokio::sync::oneshot::channel();
        let task_live = Arc::clone(&live);
        let task = tokio::spawn(async move {
            let _alive = task_live.stream_opened();
            let _ = opened_tx.send(());
            // A body that never ends.
            std::future::pending::<()>().await;
        });
        opened_rx.await.expect("the stream opened");
        assert_eq!(Live::get(&live.alive), 1);
        task.abort();
        assert!(task.await.unwrap_err().is_cancelled());
        assert_eq!(Live::get(&live.alive), 0);
        assert_eq!(Live::get(&live.opened), 1);
    }

    #[test]
    fn buckets_are_contiguous_and_cover_their_values() {
        let mut expected_next = 0u64;
        for index in 0..BUCKETS {
            let (low, high) = bucket_range(index);
            assert_eq!(
                low,
                expected_next,
                "bucket {index} starts where {} ended",
                index - 1
            );
            assert!(high >= low);
            assert_eq!(bucket_index(low), index);
            assert_eq!(bucket_index(high), index);
            expected_next = high + 1;
        }
        assert_eq!(expected_next - 1, MAX_VALUE);
        assert_eq!(bucket_index(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn relative_error_is_below_one_percent() {
        for value in [255u64, 256, 257, 1000, 12_345, 999_999, 1 << 33, MAX_VALUE] {
            let (low, high) = bucket_range(bucket_index(value));
            assert!(
                (high - low) as f64 / low as f64 <= 1.0 / 128.0,
                "{value}: {low}..{high}"
            );
        }
    }

    #[test]
    fn percentiles_of_a_uniform_range() {
        let mut h = Histogram::default();
        for v in 1..=10_000u64 {
            h.record(v);
        }
        assert_eq!(h.count(), 10_000);
        let close = |got: Option<u64>, want: u64| {
            let got = got.unwrap() as f64;
            assert!(
                (got - want as f64).abs() / want as f64 <= 0.01,
                "{got} vs {want}"
            );
        };
        close(h.percentile(50.0), 5_000);
        close(h.percentile(90.0), 9_000);
        close(h.percentile(99.0), 9_900);
        assert_eq!(h.percentile(100.0), Some(10_000));
        assert_eq!(h.percentile(0.0), Some(1));
        assert_eq!(h.max(), Some(10_000));
        assert_eq!(h.mean(), Some(5_000.5));
    }

    #[test]
    fn exact_for_small_values_and_a_single_sample() {
        let mut h = Histogram::default();
        assert_eq!(h.percentile(50.0), None);
        assert_eq!(h.summary(), LatencySummary::default());
        h.record(123_456);
        // One sample: every percentile is that sample (clamped to min and max).
        assert_eq!(h.percentile(1.0), Some(123_456));
        assert_eq!(h.percentile(99.9), Some(123_456));
        let mut h = Histogram::default();
        for v in [3, 1, 2, 2, 200] {
            h.record(v);
        }
        assert_eq!(h.percentile(20.0), Some(1));
        assert_eq!(h.percentile(50.0), Some(2));
        assert_eq!(h.percentile(80.0), Some(3));
        assert_eq!(h.percentile(99.0), Some(200));
    }

    #[test]
    fn a_tail_shows_in_p99_not_p50() {
        let mut h = Histogram::default();
        for _ in 0..985 {
            h.record(100);
        }
        for _ in 0..15 {
            h.record(50_000);
        }
        assert_eq!(h.percentile(50.0), Some(100));
        assert_eq!(h.percentile(90.0), Some(100));
        let p99 = h.percentile(99.0).unwrap();
        assert!((49_800..=50_000).contains(&p99), "{p99}");
        assert_eq!(h.max(), Some(50_000));
    }

    #[test]
    fn huge_values_are_clamped() {
        let mut h = Histogram::default();
        h.record(u64::MAX);
        assert_eq!(h.max(), Some(MAX_VALUE));
        assert_eq!(h.percentile(50.0), Some(MAX_VALUE));
    }

    #[test]
    fn atomic_take_resets_and_snapshot_does_not() {
        let h = AtomicHistogram::default();
        for v in [10, 20, 30, 40] {
            h.record(v);
        }
        let snap = h.snapshot();
        assert_eq!(snap.count(), 4);
        assert_eq!(snap.percentile(50.0), Some(20));
        let taken = h.take();
        assert_eq!(taken.count(), 4);
        assert_eq!(taken.max(), Some(40));
        assert_eq!(taken.mean(), Some(25.0));
        let empty = h.take();
        assert_eq!(empty.count(), 0);
        assert_eq!(empty.percentile(99.0), None);
        h.record(7);
        let next = h.take();
        assert_eq!(
            (next.count(), next.max(), next.percentile(1.0)),
            (1, Some(7), Some(7))
        );
    }

    #[test]
    fn spread_keeps_mean_min_and_max() {
        let mut s = Spread::default();
        assert_eq!(s.summary(), SpreadSummary::default());
        for v in [4.0, 1.0, 7.0] {
            s.record(v);
        }
        let summary = s.summary();
        assert_eq!(summary.streams, 3);
        assert_eq!(summary.mean, Some(4.0));
        assert_eq!(summary.min, Some(1.0));
        assert_eq!(summary.max, Some(7.0));
    }

    #[test]
    fn failures_count_by_kind_and_keep_the_first_message() {
        let mut f = Failures::default();
        f.add("reset".into(), "first".into());
        f.add("reset".into(), "second".into());
        f.add("status_429".into(), "HTTP 429".into());
        assert_eq!(f.total(), 3);
        assert_eq!(f.by_kind["reset"], 2);
        assert_eq!(f.examples["reset"], "first");
    }
}
