//! Resilience policy for relaying to several upstreams: pure decisions, no I/O and no tasks of
//! their own, so each is unit-tested with explicit clocks and seeded randomness.
//!
//! - [`balance`] picks the upstream for an attempt (weighted least-outstanding, two random
//!   choices) among those whose breaker is not shedding.
//! - [`breaker`] is one circuit breaker per upstream: after repeated failures it sheds attempts
//!   to that upstream for a while, then lets a single probe through.
//! - [`budget`] caps the retries of the whole gateway at a share of its requests, so an outage is
//!   not multiplied by retries.
//! - [`backoff`] says whether an answer is worth a retry and how long to wait first (the
//!   upstream's `retry-after`, else exponential backoff with full jitter).
//!
//! The relay, per client request: record it in the budget; pick an upstream among the available
//! breakers and take a permit; send; report the outcome on the permit; on a retryable failure,
//! withdraw from the budget and wait for [`backoff::delay_for`] before the next attempt, or relay
//! the failure when the budget is spent or the advised wait is too long.
//!
//! This module is a leaf: it uses std, `http`, `httpdate`, `serde`, `tracing` and `fastrand`,
//! and nothing from the rest of the crate.

pub mod backoff;
pub mod balance;
pub mod breaker;
pub mod budget;
mod window;

use std::time::Duration;

use serde::Serializer;

/// A duration as whole milliseconds (saturating), the unit of the admin API's `*_ms` fields.
fn serialize_millis<S: Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_u64(u64::try_from(duration.as_millis()).unwrap_or(u64::MAX))
}
