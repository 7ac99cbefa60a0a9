//! A circuit breaker per upstream: stop sending to an upstream that keeps failing, and probe it
//! with one request at a time until it answers again.
//!
//! Closed (normal) → Open after too many failures: attempts are shed for `open_for` instead of
//! waiting on an upstream that is down. Open → HalfOpen once `open_for` has passed: exactly one
//! probe goes through. The probe's success closes the breaker; its failure opens it again.
//!
//! One [`Breaker`] is shared by every worker thread. Its state is small and sits behind a
//! `std::sync::Mutex`: the lock is taken once when an attempt starts and once when it ends,
//! never per streamed event, and is held for a few counter updates, so it costs far less than
//! the upstream round trip it guards, and keeps the state transitions simple and exact (one
//! probe, never two).

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use serde::{Serialize, Serializer};

use super::window::{Ring, MIN_WINDOW};

/// Ring counter: outcomes (successes and failures) recorded while closed.
const OUTCOMES: usize = 0;
/// Ring counter: failures recorded while closed.
const FAILURES: usize = 1;

/// When a breaker opens and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerSettings {
    /// Open after this many failures in a row; 0 turns the rule off.
    pub consecutive_failures: u32,
    /// Open when at least this percentage of the outcomes in `window` failed (values above 100
    /// count as 100); 0 turns the rule off.
    pub failure_percent: u32,
    /// ... but only once `window` holds at least this many outcomes (at least 1), so three
    /// failures out of three requests at night do not open the breaker.
    pub min_requests: u32,
    /// The sliding window of the percentage rule: ten buckets of a tenth each, so an outcome
    /// counts for between 0.9 and 1 times this long. A zero window counts as 10 ms.
    pub window: Duration,
    /// How long an open breaker sheds attempts before it lets one probe through.
    pub open_for: Duration,
}

/// Where a breaker is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Attempts go through; outcomes are counted.
    Closed,
    /// One probe attempt may go through; the others are shed until it has answered.
    HalfOpen,
    /// Attempts are shed.
    Open,
}

impl BreakerState {
    /// The state's name in logs and in the admin API.
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::HalfOpen => "half_open",
            BreakerState::Open => "open",
        }
    }

    /// The state as a number, for a metrics gauge: 0 closed, 1 half-open, 2 open (ordered by
    /// severity, so a dashboard can alert on "> 0").
    pub fn code(self) -> u8 {
        match self {
            BreakerState::Closed => 0,
            BreakerState::HalfOpen => 1,
            BreakerState::Open => 2,
        }
    }
}

/// Serialized by [`BreakerState::as_str`], the name the logs use too.
impl Serialize for BreakerState {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// A breaker as the admin API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BreakerSnapshot {
    pub state: BreakerState,
    /// Failures since the last success (or since the breaker closed).
    pub consecutive_failures: u32,
    /// Failures in the sliding window (recorded while closed).
    pub failures_in_window: u64,
    /// Outcomes in the sliding window (recorded while closed).
    pub requests_in_window: u64,
    /// How many times the breaker has opened since the gateway started.
    pub opened_total: u64,
    /// How long it has been in `state` (serialized as whole milliseconds, `state_since_ms`).
    #[serde(rename = "state_since_ms", serialize_with = "super::serialize_millis")]
    pub state_since: Duration,
}

/// One upstream's circuit breaker. Cheap to clone: clones share the state, and every [`Permit`]
/// holds a share too, so an attempt can report its outcome however long it outlives the caller's
/// reference.
#[derive(Debug, Clone)]
pub struct Breaker {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    /// The upstream's name, for the logs.
    name: Arc<str>,
    settings: BreakerSettings,
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    state: BreakerState,
    /// When `state` was entered.
    since: Instant,
    /// Bumped by every transition. A permit reports only into the generation it was issued in:
    /// an attempt started before the breaker opened that fails afterwards says nothing about the
    /// upstream now, and must not be mistaken for the probe's answer.
    generation: u64,
    consecutive_failures: u32,
    window: Ring<2>,
    opened_total: u64,
    /// Half-open only: the one probe permit is out.
    probe_in_flight: bool,
}

/// A state change, logged once it is made (outside the lock).
struct Transition {
    to: BreakerState,
    reason: String,
}

impl Breaker {
    /// A closed breaker for the upstream `name`. Its state counts as entered now (the only clock
    /// this module reads itself, for [`BreakerSnapshot::state_since`]).
    pub fn new(name: impl Into<Arc<str>>, settings: BreakerSettings) -> Breaker {
        Breaker {
            shared: Arc::new(Shared {
                name: name.into(),
                settings,
                inner: Mutex::new(Inner {
                    state: BreakerState::Closed,
                    since: Instant::now(),
                    generation: 0,
                    consecutive_failures: 0,
                    window: Ring::new(settings.window),
                    opened_total: 0,
                    probe_in_flight: false,
                }),
            }),
        }
    }

    /// The upstream's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// Leave to start an attempt: None sheds it. Closed gives a normal permit; Open gives none
    /// until `open_for` has passed, then turns HalfOpen and gives the one probe permit; HalfOpen
    /// gives none while the probe is out.
    pub fn try_acquire(&self, now: Instant) -> Option<Permit> {
        let shared = &self.shared;
        // The permit's generation and whether it is the probe.
        let (permit, transition) = {
            let mut inner = shared.lock();
            let open_for = shared.settings.open_for;
            match inner.state {
                BreakerState::Closed => (Some((inner.generation, false)), None),
                BreakerState::Open if now.saturating_duration_since(inner.since) >= open_for => {
                    let reason = format!("open for {open_for:?}: probing");
                    let transition = inner.enter(BreakerState::HalfOpen, now, reason);
                    inner.probe_in_flight = true;
                    (Some((inner.generation, true)), Some(transition))
                }
                BreakerState::HalfOpen if !inner.probe_in_flight => {
                    inner.probe_in_flight = true;
                    (Some((inner.generation, true)), None)
                }
                BreakerState::Open | BreakerState::HalfOpen => (None, None),
            }
        };
        if let Some(transition) = transition {
            shared.log(&transition);
        }
        let (generation, probe) = permit?;
        Some(Permit {
            shared: Arc::clone(shared),
            generation,
            probe,
            settled: false,
        })
    }

    /// Whether [`Breaker::try_acquire`] would give a permit now, without changing anything: for
    /// leaving shed upstreams out of the balancer's candidates.
    pub fn is_available(&self, now: Instant) -> bool {
        let inner = self.shared.lock();
        match inner.state {
            BreakerState::Closed => true,
            BreakerState::Open => {
                now.saturating_duration_since(inner.since) >= self.shared.settings.open_for
            }
            BreakerState::HalfOpen => !inner.probe_in_flight,
        }
    }

    /// The breaker's state and counters for the admin API. Reads only: an open breaker whose
    /// `open_for` has passed shows as open until an attempt probes it.
    pub fn snapshot(&self, now: Instant) -> BreakerSnapshot {
        let inner = self.shared.lock();
        let sums = inner.window.sums(now);
        BreakerSnapshot {
            state: inner.state,
            consecutive_failures: inner.consecutive_failures,
            failures_in_window: sums[FAILURES],
            requests_in_window: sums[OUTCOMES],
            opened_total: inner.opened_total,
            state_since: now.saturating_duration_since(inner.since),
        }
    }
}

impl Shared {
    /// The state; a panic elsewhere while it was held cannot have left it half-updated (every
    /// critical section only assigns plain values), so a poisoned lock is used as it is.
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn record(&self, generation: u64, probe: bool, success: bool, now: Instant) {
        let transition = {
            let mut inner = self.lock();
            if inner.generation != generation {
                return;
            }
            match (inner.state, probe) {
                (BreakerState::HalfOpen, true) if success => {
                    Some(inner.enter(BreakerState::Closed, now, "the probe succeeded".into()))
                }
                (BreakerState::HalfOpen, true) => {
                    inner.consecutive_failures = inner.consecutive_failures.saturating_add(1);
                    Some(inner.enter(BreakerState::Open, now, "the probe failed".into()))
                }
                (BreakerState::Closed, false) => {
                    inner.window.add(now, OUTCOMES, 1);
                    if success {
                        inner.consecutive_failures = 0;
                        None
                    } else {
                        inner.consecutive_failures = inner.consecutive_failures.saturating_add(1);
                        inner.window.add(now, FAILURES, 1);
                        self.trip_reason(&inner, now)
                            .map(|reason| inner.enter(BreakerState::Open, now, reason))
                    }
                }
                // Unreachable while generations match; nothing to record.
                _ => None,
            }
        };
        if let Some(transition) = transition {
            self.log(&transition);
        }
    }

    /// Why a closed breaker must open now, if it must.
    fn trip_reason(&self, inner: &Inner, now: Instant) -> Option<String> {
        let settings = &self.settings;
        if settings.consecutive_failures > 0
            && inner.consecutive_failures >= settings.consecutive_failures
        {
            return Some(format!(
                "{} consecutive failures",
                inner.consecutive_failures
            ));
        }
        let percent = u128::from(settings.failure_percent.min(100));
        if percent == 0 {
            return None;
        }
        let sums = inner.window.sums(now);
        let (requests, failures) = (sums[OUTCOMES], sums[FAILURES]);
        let enough = requests >= u64::from(settings.min_requests.max(1));
        (enough && u128::from(failures) * 100 >= percent * u128::from(requests)).then(|| {
            let window = settings.window.max(MIN_WINDOW);
            format!("{failures} of {requests} failed in {window:?}")
        })
    }

    /// A dropped probe permit: the probe slot is free again, and the breaker stays half-open so
    /// the next attempt probes.
    fn release_probe(&self, generation: u64) {
        let mut inner = self.lock();
        if inner.generation == generation && inner.state == BreakerState::HalfOpen {
            inner.probe_in_flight = false;
        }
    }

    fn log(&self, transition: &Transition) {
        let upstream = &*self.name;
        let reason = transition.reason.as_str();
        match transition.to {
            BreakerState::Open => tracing::warn!(
                upstream,
                reason,
                open_for = ?self.settings.open_for,
                "circuit breaker opened: attempts to this upstream are shed"
            ),
            BreakerState::HalfOpen => {
                tracing::info!(upstream, reason, "circuit breaker half-open")
            }
            BreakerState::Closed => tracing::info!(upstream, reason, "circuit breaker closed"),
        }
    }
}

impl Inner {
    /// Moves to `to` as of `now`; opening counts, closing forgets the failures.
    fn enter(&mut self, to: BreakerState, now: Instant, reason: String) -> Transition {
        self.state = to;
        self.since = now;
        self.generation = self.generation.wrapping_add(1);
        self.probe_in_flight = false;
        match to {
            BreakerState::Open => self.opened_total = self.opened_total.saturating_add(1),
            BreakerState::Closed => {
                self.consecutive_failures = 0;
                self.window.clear();
            }
            BreakerState::HalfOpen => {}
        }
        Transition { to, reason }
    }
}

/// Leave for one attempt, from [`Breaker::try_acquire`]. Report how the attempt ended with
/// [`Permit::success`] or [`Permit::failure`]. Dropping it without either (the client went away
/// before the upstream answered) records nothing: that says nothing about the upstream. A dropped
/// probe permit frees the probe slot, so the next attempt probes instead of the breaker staying
/// half-open with no probe forever.
#[must_use = "report the attempt's outcome with success() or failure()"]
#[derive(Debug)]
pub struct Permit {
    shared: Arc<Shared>,
    generation: u64,
    probe: bool,
    settled: bool,
}

impl Permit {
    /// Whether this is the half-open probe (for logs).
    pub fn is_probe(&self) -> bool {
        self.probe
    }

    /// The upstream answered usably.
    pub fn success(mut self, now: Instant) {
        self.settled = true;
        self.shared.record(self.generation, self.probe, true, now);
    }

    /// The attempt failed in a way that counts against the upstream (no connection, timeout, a
    /// retryable status).
    pub fn failure(mut self, now: Instant) {
        self.settled = true;
        self.shared.record(self.generation, self.probe, false, now);
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if self.probe && !self.settled {
            self.shared.release_probe(self.generation);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPEN_FOR: Duration = Duration::from_secs(30);

    fn settings() -> BreakerSettings {
        BreakerSettings {
            consecutive_failures: 5,
            failure_percent: 0,
            min_requests: 0,
            window: Duration::from_secs(10),
            open_for: OPEN_FOR,
        }
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    fn fail(breaker: &Breaker, now: Instant, times: u32) {
        for _ in 0..times {
            breaker.try_acquire(now).unwrap().failure(now);
        }
    }

    /// Opens `breaker` with consecutive failures at `t0`.
    fn open(breaker: &Breaker, t0: Instant) {
        fail(breaker, t0, breaker.shared.settings.consecutive_failures);
        assert_eq!(breaker.snapshot(t0).state, BreakerState::Open);
    }

    #[test]
    fn breaker_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Breaker>();
        assert_send_sync::<Permit>();
    }

    #[test]
    fn opens_after_n_consecutive_failures() {
        let breaker = Breaker::new("a", settings());
        let t0 = Instant::now();
        fail(&breaker, t0, 4);
        assert_eq!(breaker.snapshot(t0).state, BreakerState::Closed);
        fail(&breaker, t0, 1);
        let snap = breaker.snapshot(t0 + secs(1));
        assert_eq!(snap.state, BreakerState::Open);
        assert_eq!(snap.consecutive_failures, 5);
        assert_eq!(snap.opened_total, 1);
        assert_eq!(snap.state_since, secs(1));
    }

    #[test]
    fn a_success_resets_the_consecutive_count() {
        let breaker = Breaker::new("a", settings());
        let t0 = Instant::now();
        fail(&breaker, t0, 4);
        breaker.try_acquire(t0).unwrap().success(t0);
        assert_eq!(breaker.snapshot(t0).consecutive_failures, 0);
        fail(&breaker, t0, 4);
        assert_eq!(breaker.snapshot(t0).state, BreakerState::Closed);
    }

    #[test]
    fn the_ratio_rule_waits_for_min_requests() {
        let breaker = Breaker::new(
            "a",
            BreakerSettings {
                consecutive_failures: 0,
                failure_percent: 50,
                min_requests: 10,
                ..settings()
            },
        );
        let t0 = Instant::now();
        // Alternate so the consecutive count never matters: 4 of 8 failed is 50%, but too few.
        for _ in 0..4 {
            breaker.try_acquire(t0).unwrap().success(t0);
            fail(&breaker, t0, 1);
        }
        assert_eq!(breaker.snapshot(t0).state, BreakerState::Closed);
        breaker.try_acquire(t0).unwrap().success(t0);
        // 5 of 10: at the threshold, with enough requests.
        fail(&breaker, t0, 1);
        let snap = breaker.snapshot(t0);
        assert_eq!(snap.state, BreakerState::Open);
        assert_eq!((snap.failures_in_window, snap.requests_in_window), (5, 10));
    }

    #[test]
    fn the_ratio_rule_stays_closed_below_the_percentage() {
        let breaker = Breaker::new(
            "a",
            BreakerSettings {
                consecutive_failures: 0,
                failure_percent: 150, // counts as 100
                min_requests: 1,
                ..settings()
            },
        );
        let t0 = Instant::now();
        breaker.try_acquire(t0).unwrap().success(t0);
        fail(&breaker, t0, 50);
        assert_eq!(breaker.snapshot(t0).state, BreakerState::Closed);
    }

    #[test]
    fn sheds_while_open() {
        let breaker = Breaker::new("a", settings());
        let t0 = Instant::now();
        open(&breaker, t0);
        let almost = t0 + OPEN_FOR - Duration::from_millis(1);
        assert!(!breaker.is_available(almost));
        assert!(breaker.try_acquire(almost).is_none());
        assert_eq!(breaker.snapshot(almost).state, BreakerState::Open);
    }

    #[test]
    fn exactly_one_probe_after_open_for() {
        let breaker = Breaker::new("a", settings());
        let t0 = Instant::now();
        open(&breaker, t0);
        let later = t0 + OPEN_FOR;
        assert!(breaker.is_available(later));
        // is_available changed nothing.
        assert_eq!(breaker.snapshot(later).state, BreakerState::Open);
        let probe = breaker.try_acquire(later).unwrap();
        assert!(probe.is_probe());
        assert_eq!(breaker.snapshot(later).state, BreakerState::HalfOpen);
        assert!(!breaker.is_available(later));
        assert!(breaker.try_acquire(later).is_none());
        assert!(breaker.try_acquire(later + secs(100)).is_none());
        probe.success(later);
    }

    #[test]
    fn probe_success_closes() {
        let breaker = Breaker::new("a", settings());
        let t0 = Instant::now();
        open(&breaker, t0);
        let later = t0 + OPEN_FOR;
        breaker.try_acquire(later).unwrap().success(later);
        let snap = breaker.snapshot(later);
        assert_eq!(snap.state, BreakerState::Closed);
        assert_eq!(snap.consecutive_failures, 0);
        assert_eq!(snap.requests_in_window, 0);
        assert_eq!(snap.opened_total, 1);
        let permit = breaker.try_acquire(later).unwrap();
        assert!(!permit.is_probe());
        permit.success(later);
        // The counters start over: it takes a full run of failures to open again.
        fail(&breaker, later, 4);
        assert_eq!(breaker.snapshot(later).state, BreakerState::Closed);
    }

    #[test]
    fn probe_failure_reopens() {
        let breaker = Breaker::new("a", settings());
        let t0 = Instant::now();
        open(&breaker, t0);
        let later = t0 + OPEN_FOR;
        breaker.try_acquire(later).unwrap().failure(later);
        let snap = breaker.snapshot(later);
        assert_eq!(snap.state, BreakerState::Open);
        assert_eq!(snap.opened_total, 2);
        // Open for a whole `open_for` again, counted from the probe's failure.
        assert!(breaker.try_acquire(later + OPEN_FOR - secs(1)).is_none());
        assert!(breaker.try_acquire(later + OPEN_FOR).is_some());
    }

    #[test]
    fn a_dropped_probe_frees_the_slot() {
        let breaker = Breaker::new("a", settings());
        let t0 = Instant::now();
        open(&breaker, t0);
        let later = t0 + OPEN_FOR;
        drop(breaker.try_acquire(later).unwrap());
        assert_eq!(breaker.snapshot(later).state, BreakerState::HalfOpen);
        assert!(breaker.is_available(later));
        let probe = breaker.try_acquire(later).unwrap();
        assert!(probe.is_probe());
        probe.success(later);
        assert_eq!(breaker.snapshot(later).state, BreakerState::Closed);
    }

    #[test]
    fn a_dropped_normal_permit_records_nothing() {
        let breaker = Breaker::new("a", settings());
        let t0 = Instant::now();
        fail(&breaker, t0, 4);
        drop(breaker.try_acquire(t0).unwrap());
        let snap = breaker.snapshot(t0);
        assert_eq!((snap.consecutive_failures, snap.requests_in_window), (4, 4));
    }

    #[test]
    fn outcomes_from_before_a_transition_are_ignored() {
        let breaker = Breaker::new("a", settings());
        let t0 = Instant::now();
        let late = breaker.try_acquire(t0).unwrap();
        open(&breaker, t0);
        let later = t0 + OPEN_FOR;
        let probe = breaker.try_acquire(later).unwrap();
        // An attempt from before the breaker opened answers now: it is not the probe's answer.
        late.success(later);
        assert_eq!(breaker.snapshot(later).state, BreakerState::HalfOpen);
        probe.failure(later);
        assert_eq!(breaker.snapshot(later).state, BreakerState::Open);
    }

    #[test]
    fn old_window_buckets_age_out() {
        let breaker = Breaker::new(
            "a",
            BreakerSettings {
                consecutive_failures: 0,
                failure_percent: 50,
                min_requests: 4,
                ..settings()
            },
        );
        let t0 = Instant::now();
        fail(&breaker, t0, 3);
        assert_eq!(breaker.snapshot(t0 + secs(5)).requests_in_window, 3);
        // Ten seconds on, those three have left the window: one more failure is 1 of 1.
        let later = t0 + secs(10);
        assert_eq!(breaker.snapshot(later).requests_in_window, 0);
        fail(&breaker, later, 1);
        let snap = breaker.snapshot(later);
        assert_eq!(snap.state, BreakerState::Closed);
        assert_eq!((snap.failures_in_window, snap.requests_in_window), (1, 1));
    }

    #[test]
    fn zero_settings_do_not_panic() {
        let breaker = Breaker::new(
            String::from("a"),
            BreakerSettings {
                consecutive_failures: 1,
                failure_percent: 0,
                min_requests: 0,
                window: Duration::ZERO,
                open_for: Duration::ZERO,
            },
        );
        let t0 = Instant::now();
        fail(&breaker, t0, 1);
        assert_eq!(breaker.snapshot(t0).state, BreakerState::Open);
        // open_for zero: the next attempt is the probe.
        let probe = breaker.try_acquire(t0).unwrap();
        assert!(probe.is_probe());
        probe.success(t0);
        // An instant from before the breaker's own clock reading is clamped, not a panic.
        let early = t0.checked_sub(secs(1)).unwrap_or(t0);
        assert_eq!(breaker.snapshot(early).state_since, Duration::ZERO);
    }

    #[test]
    fn state_names_codes_and_json() {
        let states = [
            BreakerState::Closed,
            BreakerState::HalfOpen,
            BreakerState::Open,
        ];
        let names: Vec<_> = states.iter().map(|s| s.as_str()).collect();
        assert_eq!(names, ["closed", "half_open", "open"]);
        let codes: Vec<_> = states.iter().map(|s| s.code()).collect();
        assert_eq!(codes, [0, 1, 2]);
        let snap = BreakerSnapshot {
            state: BreakerState::HalfOpen,
            consecutive_failures: 1,
            failures_in_window: 2,
            requests_in_window: 3,
            opened_total: 4,
            state_since: Duration::from_millis(1500),
        };
        assert_eq!(
            serde_json::to_string(&snap).unwrap(),
            r#"{"state":"half_open","consecutive_failures":1,"failures_in_window":2,"requests_in_window":3,"opened_total":4,"state_since_ms":1500}"#
        );
    }
}
