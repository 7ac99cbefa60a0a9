//! Counters, and the RAII guard that keeps them honest.
//!
//! The gateway's tests use these to prove that when *its* client leaves, it
//! cancels the upstream request within a second. That only works if the mock
//! can never mistake a cancellation for a completion or leak an "active"
//! count, so every unit of work is tracked by a [`Tracker`] whose `Drop`
//! decides the outcome: anything dropped before it was marked finished was
//! cancelled.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use super::faults::InFlight;
use crate::connection::ConnectionCounts;

/// Counters, shared by every connection; all atomics.
///
/// *Streams* are responses that are (or were going to be) Server-Sent Event
/// streams. *Requests* are every other `/v1` response: non-streaming answers,
/// embeddings, models, errors, the `fail-429`/`fail-500` faults, `hang` and
/// scheduled failures. `/stats` calls are not counted.
#[derive(Debug, Default)]
pub struct MockStats {
    streams_active: AtomicU64,
    streams_started: AtomicU64,
    streams_completed: AtomicU64,
    streams_cancelled: AtomicU64,
    requests_active: AtomicU64,
    requests_started: AtomicU64,
    requests_completed: AtomicU64,
    requests_cancelled: AtomicU64,
    requests_received: AtomicU64,
    scheduled_failures: AtomicU64,
    scheduled_drops: AtomicU64,
    reset_goaways: AtomicU64,
    connections_active: AtomicU64,
    max_streams_per_connection: AtomicU64,
    /// The mock's connections, counted by the acceptor (`crate::server`) when each opens.
    pub(crate) connections: Arc<ConnectionCounts>,
    /// Woken on every change so that [`MockStats::wait_until`] needs no polling.
    changed: Notify,
}

/// A point-in-time copy of [`MockStats`]; also the JSON of `GET /stats`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatsSnapshot {
    /// Streams started and not yet completed, cancelled or aborted.
    pub streams_active: u64,
    /// Streams whose request was accepted: counted once the request body has
    /// been read, before the headers delay.
    pub streams_started: u64,
    /// Streams whose last event was handed to hyper: `data: [DONE]` or
    /// `response.completed`, or the last event of a fault that ends a stream
    /// cleanly without it (`fail-no-done`, `fail-error-event`,
    /// `fail-response-failed`, a cancelled response's replay).
    pub streams_completed: u64,
    /// Streams whose response future or body was dropped before completing:
    /// the client left, or the server shut down.
    pub streams_cancelled: u64,
    /// Non-streaming requests in progress.
    pub requests_active: u64,
    /// Non-streaming `/v1` requests accepted (body read), errors included.
    pub requests_started: u64,
    /// Non-streaming requests whose response (success, fault or error) was
    /// handed to hyper.
    pub requests_completed: u64,
    /// Non-streaming requests whose response future was dropped first.
    pub requests_cancelled: u64,
    /// Every `/v1` request, counted the moment it arrives (its head parsed, before its body is
    /// read): streams, requests, and the ones a schedule failed or dropped. What a test counts
    /// to see how many attempts reached this upstream.
    #[serde(default)]
    pub requests_received: u64,
    /// Requests answered by a [`fail_next`](super::MockUpstream::fail_next) schedule (also
    /// counted in `requests_started` and the outcome counters).
    #[serde(default)]
    pub scheduled_failures: u64,
    /// Requests whose connection a [`drop_next`](super::MockUpstream::drop_next) schedule
    /// closed. Counted nowhere else but `requests_received`.
    #[serde(default)]
    pub scheduled_drops: u64,
    /// HTTP/2 connections shut (GOAWAY, then closed) because the client reset the number of
    /// streams set by [`goaway_after_resets`](super::MockUpstream::goaway_after_resets).
    #[serde(default)]
    pub reset_goaways: u64,
    /// Connections opened (those that sent at least one byte): shows how many connections a
    /// client spreads its requests over (an HTTP/2 client, a connection pool). Read when the
    /// snapshot is taken; a new connection alone does not wake [`MockStats::wait_until`].
    pub connections_accepted: u64,
    /// Connections open now: from their first byte until the connection and every request on it
    /// are gone. Opening and closing one wakes [`MockStats::wait_until`].
    #[serde(default)]
    pub connections_active: u64,
    /// The most `/v1` requests (streams or not) ever in flight at once on one connection, each
    /// counted from its arrival until hyper drops it: on HTTP/2 how far a client multiplexes
    /// (and whether the mock's stream limit held it back), on HTTP/1.1 at most 1.
    #[serde(default)]
    pub max_streams_per_connection: u64,
}

impl MockStats {
    /// All counters at zero.
    pub fn new() -> MockStats {
        MockStats::default()
    }

    /// The current values. Each counter is read atomically; the set is not a
    /// transaction, but outcomes are recorded before `*_active` is decremented,
    /// so once `*_active` reads 0 the outcome counters already include every
    /// finished unit of work.
    pub fn snapshot(&self) -> StatsSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::SeqCst);
        StatsSnapshot {
            streams_active: get(&self.streams_active),
            streams_started: get(&self.streams_started),
            streams_completed: get(&self.streams_completed),
            streams_cancelled: get(&self.streams_cancelled),
            requests_active: get(&self.requests_active),
            requests_started: get(&self.requests_started),
            requests_completed: get(&self.requests_completed),
            requests_cancelled: get(&self.requests_cancelled),
            requests_received: get(&self.requests_received),
            scheduled_failures: get(&self.scheduled_failures),
            scheduled_drops: get(&self.scheduled_drops),
            reset_goaways: get(&self.reset_goaways),
            connections_accepted: self.connections.opened(),
            connections_active: get(&self.connections_active),
            max_streams_per_connection: get(&self.max_streams_per_connection),
        }
    }

    /// Adds one to `counter` and wakes the waiters.
    fn bump(&self, counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::SeqCst);
        self.changed.notify_waiters();
    }

    /// A `/v1` request arrived.
    pub(crate) fn request_received(&self) {
        self.bump(&self.requests_received);
    }

    pub(crate) fn scheduled_failure(&self) {
        self.bump(&self.scheduled_failures);
    }

    pub(crate) fn scheduled_drop(&self) {
        self.bump(&self.scheduled_drops);
    }

    pub(crate) fn goaway_sent(&self) {
        self.bump(&self.reset_goaways);
    }

    pub(crate) fn connection_opened(&self) {
        self.bump(&self.connections_active);
    }

    pub(crate) fn connection_closed(&self) {
        self.connections_active.fetch_sub(1, Ordering::SeqCst);
        self.changed.notify_waiters();
    }

    /// `active` requests are in flight on one connection right now. Wakes nobody by itself: it
    /// is always followed by [`MockStats::request_received`].
    pub(crate) fn saw_streams_on_connection(&self, active: u64) {
        self.max_streams_per_connection
            .fetch_max(active, Ordering::SeqCst);
    }

    /// Waits until `condition` holds for a snapshot, or `timeout` passes.
    /// Returns the snapshot that satisfied it, or the last one seen on timeout.
    /// Wakes on every counter change, so tests need neither sleeps nor polling.
    pub async fn wait_until(
        &self,
        timeout: Duration,
        mut condition: impl FnMut(&StatsSnapshot) -> bool,
    ) -> Result<StatsSnapshot, StatsSnapshot> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            // Register before reading, so a change between the read and the
            // await still wakes us.
            notified.as_mut().enable();
            let snapshot = self.snapshot();
            if condition(&snapshot) {
                return Ok(snapshot);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Err(self.snapshot());
            }
        }
    }

    fn counters(&self, kind: Kind) -> [&AtomicU64; 4] {
        match kind {
            Kind::Stream => [
                &self.streams_active,
                &self.streams_started,
                &self.streams_completed,
                &self.streams_cancelled,
            ],
            Kind::Request => [
                &self.requests_active,
                &self.requests_started,
                &self.requests_completed,
                &self.requests_cancelled,
            ],
        }
    }
}

/// Which family of counters a [`Tracker`] feeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Stream,
    Request,
}

/// How a unit of work ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// The full response was handed to hyper.
    Completed,
    /// Dropped before completion (counted by `Drop`, never passed explicitly).
    Cancelled,
    /// A deliberate `fail-midstream` abort: neither completed nor cancelled,
    /// so tests of cancellation are not confused by it.
    Aborted,
}

/// Counts one stream or request: started and active from creation until it
/// is finished or dropped. `Drop` records a cancellation unless
/// [`Tracker::finish`] was called first, so no path can leak `*_active`.
///
/// It also carries the request's place on its connection ([`InFlight`]), so
/// that a cancellation counts as a reset there too, and the request stays in
/// its connection's count for as long as hyper holds its body.
#[derive(Debug)]
pub(crate) struct Tracker {
    stats: Arc<MockStats>,
    kind: Kind,
    finished: bool,
    in_flight: Option<InFlight>,
}

impl Tracker {
    pub(crate) fn start(stats: Arc<MockStats>, kind: Kind, in_flight: Option<InFlight>) -> Tracker {
        let [active, started, _, _] = stats.counters(kind);
        started.fetch_add(1, Ordering::SeqCst);
        active.fetch_add(1, Ordering::SeqCst);
        stats.changed.notify_waiters();
        Tracker {
            stats,
            kind,
            finished: false,
            in_flight,
        }
    }

    /// Records the outcome now (idempotent: only the first call counts).
    pub(crate) fn finish(&mut self, outcome: Outcome) {
        if std::mem::replace(&mut self.finished, true) {
            return;
        }
        if outcome != Outcome::Cancelled {
            if let Some(in_flight) = &mut self.in_flight {
                in_flight.settle();
            }
        }
        let [active, _, completed, cancelled] = self.stats.counters(self.kind);
        match outcome {
            Outcome::Completed => {
                completed.fetch_add(1, Ordering::SeqCst);
            }
            Outcome::Cancelled => {
                cancelled.fetch_add(1, Ordering::SeqCst);
            }
            Outcome::Aborted => {}
        }
        // After the outcome, so "active == 0" implies the outcome is visible.
        active.fetch_sub(1, Ordering::SeqCst);
        self.stats.changed.notify_waiters();
    }
}

impl Drop for Tracker {
    fn drop(&mut self) {
        self.finish(Outcome::Cancelled);
    }
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn tracker_outcomes() {
        let stats = Arc::new(MockStats::new());
        let mut done = Tracker::start(Arc::clone(&stats), Kind::Stream, None);
        let dropped = Tracker::start(Arc::clone(&stats), Kind::Stream, None);
        let mut aborted = Tracker::start(Arc::clone(&stats), Kind::Stream, None);
        let req = Tracker::start(Arc::clone(&stats), Kind::Request, None);
        assert_eq!(stats.snapshot().streams_active, 3);
        done.finish(Outcome::Completed);
        done.finish(Outcome::Aborted); // ignored: already finished
        drop(done);
        drop(dropped);
        aborted.finish(Outcome::Aborted);
        drop(aborted);
        drop(req);
        let s = stats.snapshot();
        assert_eq!(
            s,
            StatsSnapshot {
                streams_active: 0,
                streams_started: 3,
                streams_completed: 1,
                streams_cancelled: 1,
                requests_active: 0,
                requests_started: 1,
                requests_completed: 0,
                requests_cancelled: 1,
                requests_received: 0,
                scheduled_failures: 0,
                scheduled_drops: 0,
                reset_goaways: 0,
                connections_accepted: 0,
                connections_active: 0,
                max_streams_per_connection: 0,
            }
        );
    }
}
