//! A pool of HTTP/2 connections to one upstream, for one worker thread, that grows instead of
//! queueing.
//!
//! hyper-util's pooled client keeps exactly one HTTP/2 connection per host, so past the peer's
//! `SETTINGS_MAX_CONCURRENT_STREAMS` requests wait inside h2 for a free stream (up to the first
//! byte timeout, measured in `loadtest/RESULTS.md`). Here each connection takes at most
//! `min(max_streams_per_connection, the peer's limit)` streams; a request that finds every
//! connection full opens another one. The cap also bounds what a lost connection costs: at
//! most that many streams fail with it, and those not yet answered are retried by the caller.
//!
//! Requests arriving while a connection is being opened wait for it (up to its capacity) rather
//! than each opening their own: a burst of 2,000 requests opens about 2,000 / cap connections.
//! Extra connections with no stream for `idle_timeout` are closed by a sweeper task (one per
//! pool, started with the first connection).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Uri;
use http_body_util::Full;
use hyper::client::conn::http2;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::{Connection, HttpConnector};
use tokio::sync::watch;
use tower_service::Service;

/// The sender half of one HTTP/2 connection.
pub type H2Sender = http2::SendRequest<Full<Bytes>>;

/// The executor of the upstream HTTP/2 connections' tasks: tokio's, with each future boxed.
///
/// hyper spawns tasks per request (one sends the request body, one waits for the response
/// head), all of one future type: an enum with the connection's own task as a variant, so a
/// task is about 2.7 KiB. The body task ends once the body is sent, but h2 keeps the waker of
/// its last poll in the stream's state (`poll_reset`), and tokio frees a task's memory only
/// with its last waker: unboxed, those 2.7 KiB stayed allocated for the stream's whole life
/// (RSS per stream 15.2 -> 18.9 KiB in the stream benchmark). Boxed, the future is freed when
/// it ends and the waker keeps only tokio's task cell (128 bytes), as with hyper-util's client.
#[derive(Clone, Copy, Debug, Default)]
pub struct BoxingExecutor;

impl<F> hyper::rt::Executor<F> for BoxingExecutor
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, future: F) {
        tokio::spawn(Box::pin(future));
    }
}

/// Why the pool could not hand out a stream.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PoolError {
    /// TCP, TLS or the HTTP/2 handshake failed (or took longer than the connect timeout).
    #[error("{0}")]
    Connect(Arc<str>),
    /// `protocol = "auto"` and the upstream did not offer `h2` by ALPN: use HTTP/1.1.
    #[error("the upstream does not offer HTTP/2")]
    NotHttp2,
}

/// How the pool behaves; from the upstream's configuration.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    /// Most streams on one connection (`max_streams_per_connection`); the peer's own
    /// `SETTINGS_MAX_CONCURRENT_STREAMS` applies too when lower.
    pub max_streams_per_connection: usize,
    /// A connection with no stream for this long is closed (`idle_connection_timeout`).
    pub idle_timeout: Duration,
    /// TCP + TLS + HTTP/2 handshake must finish within this (`connect_timeout`).
    pub connect_timeout: Duration,
    /// An `https://` upstream must negotiate `h2` (`protocol = "http2"`); otherwise one that
    /// does not is reported as [`PoolError::NotHttp2`] (`protocol = "auto"`).
    pub require_h2: bool,
    /// Open connections to this upstream, counted across every worker's pool (the admin API
    /// shows it): one more when a handshake completes, one less when its connection task ends.
    pub open_connections: Arc<AtomicU64>,
}

/// One open connection in [`PoolSettings::open_connections`], for as long as its task runs.
struct OpenConnection(Arc<AtomicU64>);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The HTTP/2 connections of one worker to one upstream.
#[derive(Clone)]
pub struct H2Pool {
    inner: Arc<PoolInner>,
}

struct PoolInner {
    connector: HttpsConnector<HttpConnector>,
    builder: http2::Builder<BoxingExecutor>,
    /// `scheme://authority/` of the upstream: what the connector dials.
    target: Uri,
    settings: PoolSettings,
    connections: Mutex<Vec<Arc<PooledConnection>>>,
    sweeper_started: AtomicBool,
}

/// One connection, from the moment it is being opened.
struct PooledConnection {
    /// Streams in flight on it plus requests waiting for it to be ready.
    streams: AtomicUsize,
    /// The peer's `SETTINGS_MAX_CONCURRENT_STREAMS` as last seen by the task driving the
    /// connection (hyper exposes it only there); our own cap until the peer's settings arrive.
    peer_limit: Arc<AtomicUsize>,
    state: watch::Receiver<ConnectionState>,
    /// When `streams` last dropped to zero.
    idle_since: Mutex<Instant>,
    /// When it started to be opened.
    opened_at: Instant,
    /// A request on it failed before its answer (the upstream sent GOAWAY, or the connection
    /// broke): no new stream goes to it, so a retry gets a fresh connection.
    broken: AtomicBool,
}

#[derive(Clone)]
enum ConnectionState {
    Connecting,
    Ready(H2Sender),
    Failed(PoolError),
}

/// One stream's claim on a connection: dropping it gives the slot back. Held by the upstream
/// response body, so a slot is busy exactly as long as its stream.
pub struct Lease {
    connection: Arc<PooledConnection>,
}

impl Lease {
    /// Marks the connection as not to be used for new streams: a request on it failed.
    pub fn connection_failed(&self) {
        self.connection.broken.store(true, Ordering::Relaxed);
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if self.connection.streams.fetch_sub(1, Ordering::AcqRel) == 1 {
            *lock(&self.connection.idle_since) = Instant::now();
        }
    }
}

/// A poisoned lock only means another thread panicked while holding it; the data (counters
/// and a list) stays consistent, so go on rather than spread the panic.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl H2Pool {
    pub fn new(
        connector: HttpsConnector<HttpConnector>,
        builder: http2::Builder<BoxingExecutor>,
        target: Uri,
        settings: PoolSettings,
    ) -> H2Pool {
        H2Pool {
            inner: Arc::new(PoolInner {
                connector,
                builder,
                target,
                settings,
                connections: Mutex::new(Vec::new()),
                sweeper_started: AtomicBool::new(false),
            }),
        }
    }

    /// A sender with a free stream slot, opening a connection if every one is full. With
    /// `opened_after`, only a connection opened after that instant will do: a request whose
    /// connection was lost is retried on a fresh one, not on another that may be going the same
    /// way (an upstream closing connections after a burst of resets closes all of them). Must
    /// be called on the worker's runtime (connections are driven by tasks spawned there).
    pub async fn acquire(
        &self,
        opened_after: Option<Instant>,
    ) -> Result<(H2Sender, Lease), PoolError> {
        // Bounded: a connection can close between being picked and being used; after three
        // such races the error goes to the caller, which may retry the request.
        let mut last = PoolError::Connect(Arc::from("the upstream connection closed"));
        for _ in 0..3 {
            let lease = self.reserve(opened_after);
            let mut state = lease.connection.state.clone();
            let ready = state
                .wait_for(|s| !matches!(s, ConnectionState::Connecting))
                .await
                .map(|s| s.clone());
            match ready {
                Ok(ConnectionState::Ready(sender))
                    if !sender.is_closed() && !lease.connection.broken.load(Ordering::Relaxed) =>
                {
                    return Ok((sender, lease))
                }
                Ok(ConnectionState::Failed(e)) => return Err(e),
                // Closed before we could use it, or its connect task vanished.
                _ => {
                    last = PoolError::Connect(Arc::from("the upstream connection closed"));
                }
            }
        }
        Err(last)
    }

    /// Takes a slot on the first connection with room (packing streams onto the oldest
    /// connections lets the extra ones go idle and close), or starts a new connection.
    fn reserve(&self, opened_after: Option<Instant>) -> Lease {
        let inner = &self.inner;
        let cap = inner.settings.max_streams_per_connection.max(1);
        let mut connections = lock(&inner.connections);
        retain_usable(
            &mut connections,
            inner.settings.idle_timeout,
            Instant::now(),
        );
        let with_room = connections.iter().find(|c| {
            if c.broken.load(Ordering::Relaxed)
                || opened_after.is_some_and(|after| c.opened_at < after)
            {
                return false;
            }
            let limit = match &*c.state.borrow() {
                ConnectionState::Ready(_) | ConnectionState::Connecting => {
                    cap.min(c.peer_limit.load(Ordering::Relaxed))
                }
                ConnectionState::Failed(_) => 0,
            };
            c.streams.load(Ordering::Acquire) < limit
        });
        let connection = match with_room {
            Some(c) => c.clone(),
            None => {
                let (tx, rx) = watch::channel(ConnectionState::Connecting);
                let peer_limit = Arc::new(AtomicUsize::new(cap));
                let c = Arc::new(PooledConnection {
                    streams: AtomicUsize::new(0),
                    peer_limit: peer_limit.clone(),
                    state: rx,
                    idle_since: Mutex::new(Instant::now()),
                    opened_at: Instant::now(),
                    broken: AtomicBool::new(false),
                });
                connections.push(c.clone());
                tokio::spawn(connect(inner.clone(), tx, peer_limit));
                self.start_sweeper();
                c
            }
        };
        connection.streams.fetch_add(1, Ordering::AcqRel);
        Lease { connection }
    }

    fn start_sweeper(&self) {
        if self.inner.sweeper_started.swap(true, Ordering::AcqRel) {
            return;
        }
        let weak = Arc::downgrade(&self.inner);
        let every = (self.inner.settings.idle_timeout / 2).max(Duration::from_millis(100));
        tokio::spawn(sweep(weak, every));
    }
}

/// Drops connections that failed, closed, or sat without a stream for `idle_timeout`.
/// Dropping the last sender of an idle connection ends its task, which closes the socket.
fn retain_usable(
    connections: &mut Vec<Arc<PooledConnection>>,
    idle_timeout: Duration,
    now: Instant,
) {
    connections.retain(|c| match &*c.state.borrow() {
        ConnectionState::Connecting => true,
        ConnectionState::Failed(_) => false,
        ConnectionState::Ready(sender) => {
            !sender.is_closed()
                && !c.broken.load(Ordering::Relaxed)
                && (c.streams.load(Ordering::Acquire) > 0
                    || now.duration_since(*lock(&c.idle_since)) < idle_timeout)
        }
    });
}

/// The pool's sweeper: ends with the pool (it holds only a weak reference).
async fn sweep(pool: Weak<PoolInner>, every: Duration) {
    // Bounded: exits once the pool is dropped.
    loop {
        tokio::time::sleep(every).await;
        let Some(inner) = pool.upgrade() else { return };
        let mut connections = lock(&inner.connections);
        retain_usable(
            &mut connections,
            inner.settings.idle_timeout,
            Instant::now(),
        );
    }
}

/// Opens one connection and publishes the outcome to the requests waiting for it.
async fn connect(
    inner: Arc<PoolInner>,
    state: watch::Sender<ConnectionState>,
    peer_limit: Arc<AtomicUsize>,
) {
    let opening = open(&inner, peer_limit);
    let outcome = match tokio::time::timeout(inner.settings.connect_timeout, opening).await {
        Ok(Ok(sender)) => ConnectionState::Ready(sender),
        Ok(Err(e)) => ConnectionState::Failed(e),
        Err(_) => ConnectionState::Failed(PoolError::Connect(Arc::from(format!(
            "connecting took longer than {:?}",
            inner.settings.connect_timeout
        )))),
    };
    if let ConnectionState::Failed(e) = &outcome {
        tracing::debug!(upstream = %inner.target, error = %e, "upstream HTTP/2 connection failed");
    }
    state.send_replace(outcome);
}

async fn open(inner: &PoolInner, peer_limit: Arc<AtomicUsize>) -> Result<H2Sender, PoolError> {
    let mut connector = inner.connector.clone();
    let io = connector
        .call(inner.target.clone())
        .await
        .map_err(|e| PoolError::Connect(Arc::from(super::error_chain(&*e))))?;
    let https = inner.target.scheme() == Some(&http::uri::Scheme::HTTPS);
    if https && !io.connected().is_negotiated_h2() {
        return Err(if inner.settings.require_h2 {
            PoolError::Connect(Arc::from(
                "the upstream did not offer HTTP/2 (ALPN h2); set protocol = \"auto\" or \"http1\"",
            ))
        } else {
            PoolError::NotHttp2
        });
    }
    let (sender, mut connection) = inner
        .builder
        .handshake(io)
        .await
        .map_err(|e| PoolError::Connect(Arc::from(super::error_chain(&e))))?;
    inner
        .settings
        .open_connections
        .fetch_add(1, Ordering::Relaxed);
    let open = OpenConnection(inner.settings.open_connections.clone());
    tokio::spawn(async move {
        let _open = open;
        // Drives the connection, and after every step publishes the peer's stream limit (its
        // SETTINGS may lower or raise it at any time).
        let ended = std::future::poll_fn(|cx| {
            let step = Pin::new(&mut connection).poll(cx);
            // At least 1: a peer that allows 0 streams for now would otherwise make every
            // request open another connection.
            let limit = connection.current_max_send_streams().max(1);
            peer_limit.store(limit, Ordering::Relaxed);
            step
        })
        .await;
        if let Err(e) = ended {
            tracing::debug!(error = %super::error_chain(&e), "upstream HTTP/2 connection ended");
        }
    });
    Ok(sender)
}
