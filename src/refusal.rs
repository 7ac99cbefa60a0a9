//! Refusals by reason: what admission control and the acceptor's connection caps turned away,
//! counted for the admin summary (and the metrics issue), and logged at most once per
//! [`REFUSAL_LOG_EVERY`] per reason so a flood cannot flood the log.
//!
//! A leaf: the acceptor (connection caps) and admission control (rates, stream slots) both count
//! into one [`Refusals`], so neither imports the other.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

/// At most one log line per refusal reason this often.
pub const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(10);

/// Refusals so far, by reason.
#[derive(Default)]
pub struct Refusals {
    pub ip_rate: Reason,
    pub ip_streams: Reason,
    pub ip_connections: Reason,
    pub global_streams: Reason,
    pub global_connections: Reason,
    /// No API key, or an unknown one.
    pub auth: Reason,
    pub key_rate: Reason,
    pub key_streams: Reason,
    pub model_not_allowed: Reason,
}

/// One reason's count, and when it was last logged (also used for other events logged at a
/// bounded rate, such as addresses the rate limiter could not track).
#[derive(Default)]
pub struct Reason {
    count: AtomicU64,
    /// Milliseconds since the process's reference instant of the last log line (0: never).
    logged_ms: AtomicU64,
}

impl Reason {
    /// Counts one refusal of `client` and logs it unless this reason was logged within
    /// [`REFUSAL_LOG_EVERY`]; the line carries the total so far.
    pub fn record(&self, name: &'static str, client: IpAddr) {
        if let Some(total) = self.tick() {
            tracing::warn!(reason = name, client = %client, total, "refused by admission control");
        }
    }

    /// Counts one; `Some(total)` when a log line is due (at most one per [`REFUSAL_LOG_EVERY`]),
    /// for events that write their own line.
    pub fn tick(&self) -> Option<u64> {
        let total = self.count.fetch_add(1, Ordering::Relaxed) + 1;
        let now_ms = u64::try_from(epoch().elapsed().as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        let last = self.logged_ms.load(Ordering::Relaxed);
        let every = REFUSAL_LOG_EVERY.as_millis() as u64;
        ((last == 0 || now_ms.saturating_sub(last) >= every)
            && self
                .logged_ms
                .compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok())
        .then_some(total)
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
}

/// The process's reference instant for refusal log times.
fn epoch() -> Instant {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Refusal counts for the admin summary (and the metrics issue).
#[derive(Debug, Serialize, PartialEq, Eq, Default)]
pub struct RefusalCounts {
    pub ip_rate: u64,
    pub ip_streams: u64,
    pub ip_connections: u64,
    pub global_streams: u64,
    pub global_connections: u64,
    /// No API key, or an unknown one.
    pub auth: u64,
    pub key_rate: u64,
    pub key_streams: u64,
    pub model_not_allowed: u64,
}

impl Refusals {
    pub fn counts(&self) -> RefusalCounts {
        RefusalCounts {
            ip_rate: self.ip_rate.count(),
            ip_streams: self.ip_streams.count(),
            ip_connections: self.ip_connections.count(),
            global_streams: self.global_streams.count(),
            global_connections: self.global_connections.count(),
            auth: self.auth.count(),
            key_rate: self.key_rate.count(),
            key_streams: self.key_streams.count(),
            model_not_allowed: self.model_not_allowed.count(),
        }
    }
}
