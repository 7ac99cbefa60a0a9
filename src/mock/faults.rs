//! Faults a test schedules through the handle ([`super::MockUpstream::fail_next`] & co.), and
//! the per-connection state that the connection faults and counters need.
//!
//! Schedules are per mock instance: a test that runs several mocks as different upstreams makes
//! each misbehave on its own. The per-connection state ([`ConnState`]) is created by the acceptor
//! through [`crate::server::Handler::on_connection`] and is shared by the connection's requests
//! only, so it lives exactly as long as the connection and needs no map keyed by connection.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use http::StatusCode;
use tokio_util::sync::CancellationToken;

use super::stats::MockStats;
use crate::connection::{ConnectionInfo, Protocol};

/// What a scheduled fault does to one `/v1` request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scheduled {
    /// Answer at once with this status and an OpenAI error body.
    Fail {
        status: StatusCode,
        retry_after: Option<Duration>,
    },
    /// Close the request's connection without an answer.
    Drop,
}

/// `n` requests still to be given `action`. Never 0 while queued.
#[derive(Debug)]
struct Batch {
    remaining: u32,
    action: Scheduled,
}

/// The fault schedules of one mock instance.
#[derive(Debug, Default)]
pub(crate) struct Faults {
    /// Whether `queue` may hold a batch. Every `/v1` request reads this; only when it is set does
    /// a request take the lock, so a mock with nothing scheduled (load tests) shares no lock
    /// between its requests. Written only under the lock.
    armed: AtomicBool,
    /// Batches in the order they were scheduled.
    queue: Mutex<VecDeque<Batch>>,
    /// [`super::MockUpstream::goaway_after_resets`]; 0: off.
    goaway_after_resets: AtomicU32,
}

impl Faults {
    /// Queues `action` for the next `n` requests, after every batch already queued.
    pub(crate) fn push(&self, n: u32, action: Scheduled) {
        if n == 0 {
            return;
        }
        let mut queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        queue.push_back(Batch {
            remaining: n,
            action,
        });
        self.armed.store(true, Ordering::Release);
    }

    /// The fault for the request that just arrived, if one is scheduled (and uses it up).
    pub(crate) fn take(&self) -> Option<Scheduled> {
        if !self.armed.load(Ordering::Acquire) {
            return None;
        }
        let mut queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        let action = match queue.front_mut() {
            Some(batch) => {
                batch.remaining = batch.remaining.saturating_sub(1);
                let action = batch.action;
                if batch.remaining == 0 {
                    queue.pop_front();
                }
                Some(action)
            }
            None => None,
        };
        if queue.is_empty() {
            self.armed.store(false, Ordering::Release);
        }
        action
    }

    /// Forgets every queued batch and turns the reset limit off.
    pub(crate) fn clear(&self) {
        let mut queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        queue.clear();
        self.armed.store(false, Ordering::Release);
        drop(queue);
        self.goaway_after_resets.store(0, Ordering::Relaxed);
    }

    /// `Some(0)` is taken as `Some(1)`: a limit is only checked when a reset happens.
    pub(crate) fn set_goaway_after_resets(&self, n: Option<u32>) {
        self.goaway_after_resets
            .store(n.map_or(0, |n| n.max(1)), Ordering::Relaxed);
    }

    fn goaway_after_resets(&self) -> Option<u32> {
        match self.goaway_after_resets.load(Ordering::Relaxed) {
            0 => None,
            n => Some(n),
        }
    }
}

/// The status a scheduled failure answers with: `status` if it is a final HTTP status
/// (200–599), otherwise 500, so that no call from a test can make hyper write something that is
/// not a response.
pub(crate) fn failure_status(status: u16) -> StatusCode {
    match StatusCode::from_u16(status) {
        Ok(s) if (200..=599).contains(&status) => s,
        _ => {
            tracing::warn!(
                status,
                "mock upstream: fail_next with a status that is not 200-599; answering 500"
            );
            StatusCode::INTERNAL_SERVER_ERROR
        }
    }
}

/// The OpenAI error `type` and `code` that go with a status: what OpenAI sends for it, as far as
/// a client could tell them apart.
pub(crate) fn error_kind(status: StatusCode) -> (&'static str, Option<&'static str>) {
    match status.as_u16() {
        401 => ("invalid_request_error", Some("invalid_api_key")),
        429 => ("requests", Some("rate_limit_exceeded")),
        400..=499 => ("invalid_request_error", None),
        _ => ("server_error", None),
    }
}

/// One client connection as the mock sees it: how many of its `/v1` requests are in flight, how
/// many the client cancelled, and the handles that close it.
#[derive(Debug)]
pub(crate) struct ConnState {
    protocol: Protocol,
    /// The acceptor's hard close ([`ConnectionInfo::close`]).
    close: CancellationToken,
    /// Cancelled when the reset limit is reached; the acceptor then sends GOAWAY and closes the
    /// connection (see [`ConnState::goaway_signal`]).
    goaway: CancellationToken,
    /// `/v1` requests in flight on this connection.
    active: AtomicU64,
    /// Requests on this connection that ended without the mock finishing them: reset by the
    /// client (or lost with the connection).
    resets: AtomicU32,
    stats: Arc<MockStats>,
    faults: Arc<Faults>,
}

impl ConnState {
    /// A new connection, counted in `connections_active` until the last of its requests is gone.
    pub(crate) fn open(
        info: &ConnectionInfo,
        stats: Arc<MockStats>,
        faults: Arc<Faults>,
    ) -> Arc<ConnState> {
        stats.connection_opened();
        Arc::new(ConnState {
            protocol: info.protocol,
            close: info.close.clone(),
            goaway: CancellationToken::new(),
            active: AtomicU64::new(0),
            resets: AtomicU32::new(0),
            stats,
            faults,
        })
    }

    /// Closes the connection now, without a word to the client (`drop_next`).
    pub(crate) fn close_now(&self) {
        self.close.cancel();
    }

    /// Resolves once the reset limit is reached on this connection. The acceptor polls it for as
    /// long as the connection runs and acts on it at once, so this is also where a GOAWAY is
    /// counted: a limit reached on a connection that is already gone counts nothing.
    pub(crate) fn goaway_signal(&self) -> impl Future<Output = ()> + Send + 'static {
        let goaway = self.goaway.clone();
        let stats = Arc::clone(&self.stats);
        async move {
            goaway.cancelled_owned().await;
            stats.goaway_sent();
        }
    }

    /// A request on this connection ended without the mock finishing it.
    fn client_cancelled(&self) {
        // On HTTP/1.1 a client cancels by closing the connection: nothing is left to shut.
        if self.protocol != Protocol::Http2 {
            return;
        }
        let resets = self
            .resets
            .fetch_add(1, Ordering::Relaxed)
            .saturating_add(1);
        if self
            .faults
            .goaway_after_resets()
            .is_some_and(|limit| resets >= limit)
        {
            self.goaway.cancel();
        }
    }
}

impl Drop for ConnState {
    fn drop(&mut self) {
        self.stats.connection_closed();
    }
}

/// One `/v1` request in flight on its connection, from its arrival until hyper drops it. Dropped
/// without [`InFlight::settle`], it counts as a reset on its connection.
#[derive(Debug)]
pub(crate) struct InFlight {
    conn: Arc<ConnState>,
    settled: bool,
}

impl InFlight {
    pub(crate) fn start(conn: &Arc<ConnState>) -> InFlight {
        let now = conn
            .active
            .fetch_add(1, Ordering::Relaxed)
            .saturating_add(1);
        conn.stats.saw_streams_on_connection(now);
        InFlight {
            conn: Arc::clone(conn),
            settled: false,
        }
    }

    /// The mock is done with the request (answered it, finished or aborted its stream, or dropped
    /// its connection on purpose): whatever happens to it from now on is not the client's cancel.
    pub(crate) fn settle(&mut self) {
        self.settled = true;
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.conn.active.fetch_sub(1, Ordering::Relaxed);
        if !self.settled {
            self.conn.client_cancelled();
        }
    }
}

#[cfg(test)]
mod unit {
    use super::*;

    fn fail(status: u16) -> Scheduled {
        Scheduled::Fail {
            status: failure_status(status),
            retry_after: None,
        }
    }

    #[test]
    fn batches_are_used_up_in_order() {
        let faults = Faults::default();
        assert_eq!(faults.take(), None);
        faults.push(2, fail(503));
        faults.push(0, fail(400)); // nothing
        faults.push(1, Scheduled::Drop);
        faults.push(1, fail(429));
        assert_eq!(faults.take(), Some(fail(503)));
        assert_eq!(faults.take(), Some(fail(503)));
        assert_eq!(faults.take(), Some(Scheduled::Drop));
        assert_eq!(faults.take(), Some(fail(429)));
        assert_eq!(faults.take(), None);
        assert!(!faults.armed.load(Ordering::Relaxed));

        faults.push(5, Scheduled::Drop);
        faults.set_goaway_after_resets(Some(3));
        faults.clear();
        assert_eq!(faults.take(), None);
        assert_eq!(faults.goaway_after_resets(), None);
        faults.set_goaway_after_resets(Some(0));
        assert_eq!(faults.goaway_after_resets(), Some(1));
    }

    #[test]
    fn statuses_and_error_kinds() {
        assert_eq!(failure_status(503), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(failure_status(42), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(failure_status(101), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(failure_status(600), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(
            error_kind(StatusCode::TOO_MANY_REQUESTS),
            ("requests", Some("rate_limit_exceeded"))
        );
        assert_eq!(error_kind(StatusCode::BAD_GATEWAY), ("server_error", None));
        assert_eq!(
            error_kind(StatusCode::UNAUTHORIZED),
            ("invalid_request_error", Some("invalid_api_key"))
        );
        assert_eq!(
            error_kind(StatusCode::NOT_FOUND),
            ("invalid_request_error", None)
        );
    }
}
