//! A retry budget (as in Finagle and Envoy): retries may add at most a fixed share to the
//! requests the gateway carries, so an upstream outage is not multiplied by our own retries.
//!
//! Per-request retry limits do not do this: with three retries each, a failing upstream sees four
//! times the traffic exactly when it can least take it. The budget allows retries while those in
//! the sliding window stay under `max(min_retries, percent% of the requests in the window)`; the
//! floor lets a quiet gateway still retry its occasional failure.
//!
//! One budget is shared by every worker thread. Its counters sit in a sliding window ring behind
//! a `std::sync::Mutex`: the ring's bucket rotation and the check-then-count of a withdrawal have
//! to happen together, which atomics could only do with compare-and-swap loops over several
//! words. The lock is taken once per client request and once per retry, held for a few additions,
//! so it is cheap next to the request itself.

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::window::Ring;

/// Ring counter: client requests.
const REQUESTS: usize = 0;
/// Ring counter: retries withdrawn.
const RETRIES: usize = 1;

/// How much retrying the budget allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BudgetSettings {
    /// Retries may be this percentage of the requests in the window (values above 100 count as
    /// 100: one retry per request at most, on average).
    pub percent: u32,
    /// Retries allowed in the window however few requests there were.
    pub min_retries: u32,
    /// The sliding window: ten buckets of a tenth each, so an event counts for between 0.9 and 1
    /// times this long. A zero window counts as 10 ms.
    pub window: Duration,
}

/// The budget as the admin API shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct BudgetSnapshot {
    /// Client requests in the window.
    pub requests: u64,
    /// Retries withdrawn in the window.
    pub retries: u64,
    /// Retries the window allows in all (including those already withdrawn).
    pub allowed: u64,
}

/// The gateway's retry budget.
#[derive(Debug)]
pub struct RetryBudget {
    settings: BudgetSettings,
    window: Mutex<Ring<2>>,
}

impl RetryBudget {
    pub fn new(settings: BudgetSettings) -> RetryBudget {
        RetryBudget {
            settings,
            window: Mutex::new(Ring::new(settings.window)),
        }
    }

    /// Counts a client request: once per request, not per attempt, so retries do not earn more
    /// retries.
    pub fn record_request(&self, now: Instant) {
        self.lock().add(now, REQUESTS, 1);
    }

    /// Takes one retry from the budget if it has one left, and counts it; false means do not
    /// retry (relay the failure).
    pub fn try_withdraw(&self, now: Instant) -> bool {
        let mut window = self.lock();
        let sums = window.sums(now);
        if sums[RETRIES] >= self.allowed(sums[REQUESTS]) {
            return false;
        }
        window.add(now, RETRIES, 1);
        true
    }

    /// The budget's counters for the admin API.
    pub fn snapshot(&self, now: Instant) -> BudgetSnapshot {
        let sums = self.lock().sums(now);
        BudgetSnapshot {
            requests: sums[REQUESTS],
            retries: sums[RETRIES],
            allowed: self.allowed(sums[REQUESTS]),
        }
    }

    /// Retries allowed in a window with `requests` requests (the percentage rounds down).
    fn allowed(&self, requests: u64) -> u64 {
        let percent = u128::from(self.settings.percent.min(100));
        let share = u64::try_from(u128::from(requests) * percent / 100).unwrap_or(u64::MAX);
        share.max(u64::from(self.settings.min_retries))
    }

    /// The ring; its critical sections only add to counters, so a lock poisoned by a panic
    /// elsewhere holds consistent state and is used as it is.
    fn lock(&self) -> MutexGuard<'_, Ring<2>> {
        self.window.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(percent: u32, min_retries: u32) -> RetryBudget {
        RetryBudget::new(BudgetSettings {
            percent,
            min_retries,
            window: Duration::from_secs(10),
        })
    }

    #[test]
    fn a_storm_gets_at_most_its_share_of_retries() {
        let budget = budget(20, 3);
        let t0 = Instant::now();
        let mut retries = 0;
        // Bounded: 1,000 failing requests, each trying to retry three times.
        for i in 0..1_000u64 {
            let now = t0 + Duration::from_millis(i * 5);
            budget.record_request(now);
            for _ in 0..3 {
                if budget.try_withdraw(now) {
                    retries += 1;
                }
            }
        }
        // All within one 10 s window (5 s of requests): 20% of 1,000, the floor being lower.
        assert!(retries <= 200 + 3, "{retries} retries");
        assert!(retries >= 200, "{retries} retries");
        let snap = budget.snapshot(t0 + Duration::from_secs(5));
        assert_eq!(
            (snap.requests, snap.retries, snap.allowed),
            (1_000, retries, 200)
        );
    }

    #[test]
    fn a_quiet_gateway_can_still_retry_min_retries() {
        let budget = budget(20, 3);
        let t0 = Instant::now();
        budget.record_request(t0);
        assert!(budget.try_withdraw(t0));
        assert!(budget.try_withdraw(t0));
        assert!(budget.try_withdraw(t0));
        assert!(!budget.try_withdraw(t0));
        assert_eq!(
            budget.snapshot(t0),
            BudgetSnapshot {
                requests: 1,
                retries: 3,
                allowed: 3
            }
        );
    }

    #[test]
    fn the_window_slides() {
        let budget = budget(0, 2);
        let t0 = Instant::now();
        assert!(budget.try_withdraw(t0));
        assert!(budget.try_withdraw(t0 + Duration::from_secs(5)));
        assert!(!budget.try_withdraw(t0 + Duration::from_secs(9)));
        // The first retry's bucket (0 s to 1 s) leaves the window at 10 s; the second stays.
        let later = t0 + Duration::from_secs(10);
        assert_eq!(budget.snapshot(later).retries, 1);
        assert!(budget.try_withdraw(later));
        assert!(!budget.try_withdraw(later));
        assert_eq!(budget.snapshot(t0 + Duration::from_secs(30)).retries, 0);
    }

    #[test]
    fn odd_settings_do_not_panic() {
        let t0 = Instant::now();
        let none = RetryBudget::new(BudgetSettings {
            percent: 0,
            min_retries: 0,
            window: Duration::ZERO,
        });
        none.record_request(t0);
        assert!(!none.try_withdraw(t0));
        let generous = budget(u32::MAX, 0);
        for _ in 0..5 {
            generous.record_request(t0);
        }
        // percent above 100 counts as 100: one retry per request.
        assert_eq!(generous.snapshot(t0).allowed, 5);
    }
}
