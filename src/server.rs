//! The acceptor: owns sockets and protocols (HTTP/1.1 and HTTP/2, cleartext or over TLS),
//! nothing about LLMs.
//!
//! One accept loop serves every listener: the gateway's API (on each worker thread), its admin
//! listener, and the built-in mock upstream. It is generic over the handler and its response
//! body, so it knows nothing of routes or relays. Each accepted connection gets one task.
//! Shutdown is two-phase: `drain` stops the accept loop and asks every connection to finish
//! gracefully (HTTP/1.1: no new requests, `Connection: close`; HTTP/2: GOAWAY); `force` drops
//! the connections still open at the deadline.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use http::{Request, Response};
use http_body::Body;
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulConnection;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::connection::{
    CapRefusal, ConnectionCaps, ConnectionCounts, ConnectionInfo, ConnectionSlot, Protocol,
};
use crate::proxy_protocol::{self, Source};
use crate::tls::{Handshake, ServerTls, ALPN_H2};

/// Pause after an accept error (e.g. out of file descriptors) so the loop does not spin while
/// the condition lasts.
pub const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(50);

/// At most one "accept failed" warning per accept loop per this long: at the open-files limit
/// every retry fails, and the ramp in `loadtest/RESULTS.md` logged 20 warnings a second.
pub const ACCEPT_WARNING_PERIOD: Duration = Duration::from_secs(10);

/// Lets one warning through per period and counts the ones held back.
#[derive(Debug)]
struct Throttle {
    period: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl Throttle {
    fn new(period: Duration) -> Throttle {
        Throttle {
            period,
            last: None,
            suppressed: 0,
        }
    }

    /// `Some(held back since the last one)` if a warning may be logged at `now`.
    fn admit(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(last) if now.saturating_duration_since(last) < self.period => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

/// Longest a refused connection is kept waiting for its request, which is answered then: an
/// HTTP/1.1 client reads only after writing (hyper's takes an answer that comes first as a broken
/// connection). On loopback the request follows the accept within a millisecond.
pub const REFUSAL_REQUEST_WAIT: Duration = Duration::from_secs(2);

/// Longest a refused connection is kept after its answer, for the client to read it and close:
/// closing with the client's bytes still arriving would send a reset, which can destroy the
/// answer before the client reads it. Short, so a client that keeps its socket open after the
/// answer (a load driver that holds it until its run ends) holds a refusal's place briefly.
pub const REFUSAL_CLOSE_WAIT: Duration = Duration::from_millis(250);

/// Most refused connections being answered at once per accept loop ([`REFUSAL_REQUEST_WAIT`],
/// [`REFUSAL_CLOSE_WAIT`]); past it a refused connection is answered with whatever its client
/// has sent so far and closed at once. Bounds the descriptors a flood of refusals holds (the
/// derived `limits.max_connections` keeps them in reserve). A flood of 5,000 connections a
/// second from clients that read and close is answered properly with room to spare.
pub const MAX_LINGERING_REFUSALS: usize = 256;

/// Most bytes read (and dropped) from a refused connection while it lingers.
const REFUSAL_DRAIN_BYTES: usize = 64 * 1024;

/// Most bytes the acceptor's first read takes from a new connection (see `sniff_preface`):
/// enough for a typical chat request's head and body.
const FIRST_READ_BYTES: usize = 4096;

/// The HTTP/2 client preface. Reading up to this many bytes tells HTTP/2 from HTTP/1.1.
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// How one listener serves its connections.
#[derive(Debug, Clone)]
pub struct ConnectionSettings {
    /// The request head (and, for a new connection, the protocol preface) must arrive within this.
    pub header_read_timeout: Duration,
    /// Largest request head (HTTP/1.1 buffer; HTTP/2 header list). On HTTP/1.1 hyper uses the
    /// same buffer size to bound the response bytes it holds before it stops polling the body.
    pub max_header_bytes: usize,
    /// Most response bytes hyper holds per HTTP/2 stream before it stops polling the body.
    pub max_buffered_bytes: usize,
    /// Most concurrent HTTP/2 streams per connection.
    pub h2_max_concurrent_streams: u32,
    /// When an HTTP/2 connection is called abusive for the streams reset on it.
    pub h2_reset_limits: H2ResetLimits,
    /// HTTP/2 PINGs that find dead peers on connections that are otherwise silent: sent after
    /// this much silence, and the connection closed if one is not answered within the second
    /// duration. `None`: no PINGs.
    pub h2_keepalive: Option<(Duration, Duration)>,
    /// Caps on open connections, in all and per client address, checked right after accept
    /// before a byte is read; `None`: no caps (the admin listener, the mock).
    pub caps: Option<Arc<ConnectionCaps>>,
    /// Every connection starts with a PROXY header (v1 or v2) from an L4 load balancer, which
    /// must arrive within this long; its source address is then the connection's client.
    /// `None`: no header is expected.
    pub proxy_header_timeout: Option<Duration>,
    /// Terminate TLS (after the caps and the PROXY header, which concern the raw socket); the
    /// negotiated ALPN then picks the protocol. `None`: cleartext.
    pub tls: Option<Arc<ServerTls>>,
}

/// How many reset streams an HTTP/2 connection may pile up before it is closed with GOAWAY: the
/// guard against reset floods (CVE-2023-44487 and RUSTSEC-2024-0003).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct H2ResetLimits {
    /// Streams the peer reset before the server accepted them.
    pub pending_accept: usize,
    /// Streams the server reset because of a protocol error by the peer; `None`: no limit.
    pub local_error: Option<usize>,
}

impl H2ResetLimits {
    /// h2's and hyper's own defaults (20 and 1024), for listeners open to any client.
    pub const PUBLIC: H2ResetLimits = H2ResetLimits {
        pending_accept: 20,
        local_error: Some(1024),
    };
}

/// The protocol settings shared by every connection of one listener. The acceptor reads the
/// preface itself, so each connection is served by the one protocol it speaks (hyper-util's
/// `auto` connection would read the preface a second time).
pub struct Protocols {
    http1: http1::Builder,
    http2: http2::Builder<TokioExecutor>,
}

impl Protocols {
    pub fn new(settings: &ConnectionSettings) -> Protocols {
        let mut http1 = http1::Builder::new();
        http1
            .timer(TokioTimer::new())
            .header_read_timeout(settings.header_read_timeout)
            .max_buf_size(settings.max_header_bytes)
            .keep_alive(true)
            .half_close(false);
        let mut http2 = http2::Builder::new(TokioExecutor::new());
        http2
            .timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(settings.max_header_bytes).unwrap_or(u32::MAX))
            .max_concurrent_streams(settings.h2_max_concurrent_streams)
            .max_send_buf_size(settings.max_buffered_bytes)
            .max_pending_accept_reset_streams(settings.h2_reset_limits.pending_accept)
            .max_local_error_reset_streams(settings.h2_reset_limits.local_error);
        if let Some((interval, timeout)) = settings.h2_keepalive {
            http2
                .keep_alive_interval(interval)
                .keep_alive_timeout(timeout);
        }
        Protocols { http1, http2 }
    }
}

/// A request handler: client address and request in, response out. Errors are responses.
pub trait Handler: Clone + Send + Sync + 'static {
    /// The response body (hyper polls it on the connection's task).
    type Body: Body<Data = Bytes, Error: Into<Box<dyn std::error::Error + Send + Sync>>>
        + Send
        + 'static;

    /// The handler for one new connection (`self` is the listener's, already cloned for it), asked
    /// once its protocol is known; each request on the connection is served by a clone of it. The
    /// default is `self`. A handler that keeps state per connection (the mock upstream counts
    /// streams and resets per connection) creates it here: it then lives exactly as long as the
    /// connection and the requests on it, with no map to clean up.
    fn on_connection(self, _info: &ConnectionInfo) -> Self {
        self
    }

    /// Resolves when the connection served by this handler (one from [`Handler::on_connection`])
    /// is to be shut on the handler's initiative: the acceptor then starts a graceful shutdown
    /// (HTTP/2: GOAWAY), lets hyper write it, and drops the connection at once, so whatever is
    /// still in flight on it fails, as when a server's rapid-reset protection gives up on a
    /// client. (hyper offers no GOAWAY with an error code, nor one that fails the open streams
    /// by itself.) Never, by default.
    fn goaway(&self) -> impl Future<Output = ()> + Send + 'static {
        std::future::pending()
    }

    fn call(
        self,
        peer: SocketAddr,
        request: Request<Incoming>,
    ) -> impl Future<Output = Response<Self::Body>> + Send + 'static;
}

/// Shutdown signals for one listener and its connections.
#[derive(Clone)]
pub struct Shutdown {
    /// Stop accepting; ask connections to finish.
    pub drain: CancellationToken,
    /// Drop every connection still open.
    pub force: CancellationToken,
}

/// The threads serving one listener, from [`start_workers`].
pub struct Workers {
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Workers {
    /// Waits for every worker thread to end (they end once the tracker given to
    /// [`start_workers`] is closed and empty), so that their runtimes, and the upstream
    /// connections those drive, are gone when this returns.
    pub async fn join(self) {
        let threads = self.threads;
        let joined = tokio::task::spawn_blocking(move || {
            for thread in threads {
                if thread.join().is_err() {
                    tracing::error!("a worker thread panicked");
                }
            }
        });
        let _ = joined.await;
    }
}

/// Serves `listener` on one thread per handler. Each thread runs a single-threaded runtime
/// (its own event loop and timers) and the accept loop of [`accept_loop`] on a duplicate of the
/// listening socket, so a connection, its requests and everything they spawn (the upstream
/// connections of that worker's handler too) stay on the thread that accepted it: no work
/// stealing, no cross-thread wake-ups, no lock shared between threads on the hot path. This is
/// nginx's worker model, in threads. Every connection task is spawned into `tracker`; each worker
/// also holds a token in it while its accept loop runs, so `tracker.wait()` (after
/// `tracker.close()`) returns only once no worker can accept any more.
///
/// On an error (a thread or runtime that cannot be created) the workers already started are
/// stopped through `shutdown`.
pub fn start_workers<H: Handler>(
    listener: std::net::TcpListener,
    handlers: Vec<H>,
    settings: ConnectionSettings,
    connections: Arc<ConnectionCounts>,
    shutdown: Shutdown,
    tracker: TaskTracker,
) -> io::Result<Workers> {
    let mut threads = Vec::with_capacity(handlers.len());
    for (worker, handler) in handlers.into_iter().enumerate() {
        let started = start_worker(
            worker,
            &listener,
            handler,
            settings.clone(),
            connections.clone(),
            shutdown.clone(),
            tracker.clone(),
        );
        match started {
            Ok(thread) => threads.push(thread),
            Err(e) => {
                shutdown.drain.cancel();
                shutdown.force.cancel();
                return Err(e);
            }
        }
    }
    Ok(Workers { threads })
}

fn start_worker<H: Handler>(
    worker: usize,
    listener: &std::net::TcpListener,
    handler: H,
    settings: ConnectionSettings,
    connections: Arc<ConnectionCounts>,
    shutdown: Shutdown,
    tracker: TaskTracker,
) -> io::Result<std::thread::JoinHandle<()>> {
    let listener = listener.try_clone()?;
    listener.set_nonblocking(true)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let accepting = tracker.token();
    std::thread::Builder::new()
        .name(format!("tidegate-worker-{worker}"))
        .spawn(move || {
            runtime.block_on(async move {
                match TcpListener::from_std(listener) {
                    Ok(listener) => {
                        accept_loop(
                            listener,
                            handler,
                            settings,
                            connections,
                            shutdown,
                            tracker.clone(),
                        )
                        .await
                    }
                    Err(e) => tracing::error!(worker, error = %e, "worker cannot accept"),
                }
                drop(accepting);
                // This worker's connections run on this runtime: drive them until every
                // connection of the listener is gone.
                tracker.wait().await;
            });
        })
}

/// Accepts until `shutdown.drain` fires, one tracked task per connection, each counted in
/// `connections` by protocol. Returns once the listener is closed (new connections are refused
/// from then on).
pub async fn accept_loop<H: Handler>(
    listener: TcpListener,
    handler: H,
    settings: ConnectionSettings,
    connections: Arc<ConnectionCounts>,
    shutdown: Shutdown,
    tracker: TaskTracker,
) {
    let protocols = Arc::new(Protocols::new(&settings));
    let settings = Arc::new(settings);
    let lingering = Arc::new(AtomicUsize::new(0));
    // Bounded by the drain token: the loop ends when shutdown starts.
    let mut accept_warnings = Throttle::new(ACCEPT_WARNING_PERIOD);
    loop {
        let accepted = tokio::select! {
            _ = shutdown.drain.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) if is_per_connection_error(&e) => {
                tracing::debug!(error = %e, "accept failed for one connection");
                continue;
            }
            Err(e) => {
                // E.g. out of file descriptors: back off while it lasts. Retried every 50 ms,
                // so the warning is throttled: the first failure, then one line a period.
                if let Some(suppressed) = accept_warnings.admit(Instant::now()) {
                    tracing::warn!(
                        error = %e,
                        failures_not_logged = suppressed,
                        "accept failed; backing off"
                    );
                }
                tokio::select! {
                    _ = shutdown.drain.cancelled() => break,
                    _ = tokio::time::sleep(ACCEPT_ERROR_BACKOFF) => {}
                }
                continue;
            }
        };
        // The caps, before a byte is read: a refused connection costs its answer and a close.
        let slot = match &settings.caps {
            Some(caps) => match caps.admit(peer.ip(), settings.proxy_header_timeout.is_some()) {
                Ok(slot) => Some(slot),
                Err(_) if settings.tls.is_some() => {
                    close_refused_tls(&stream);
                    continue;
                }
                Err(refusal) => {
                    refuse(stream, refusal, &lingering, &tracker);
                    continue;
                }
            },
            None => None,
        };
        // Small SSE events must leave at once, not wait for Nagle.
        let _ = stream.set_nodelay(true);
        tracker.spawn(serve_connection(
            stream,
            peer,
            slot,
            handler.clone(),
            protocols.clone(),
            settings.clone(),
            connections.clone(),
            shutdown.clone(),
        ));
    }
    tracing::debug!("listener closed");
}

/// Serves one connection whose protocol is known, until it ends (see [`drive_connection`]):
/// `serve_protocol!(io, protocol, peer, handler, protocols, connections, &shutdown)`.
///
/// A macro, not an async function, so that the cleartext path stays one frame: a call keeps
/// the connection's state in the caller's frame and again in the callee's (with one, the API
/// listener's cleartext task grew from 2,232 to 2,464 bytes; with the macro it is 2,224), and
/// every HTTP/1.1 stream is a connection.
macro_rules! serve_protocol {
    ($io:expr, $protocol:expr, $peer:expr, $handler:expr, $protocols:expr, $connections:expr, $shutdown:expr) => {{
        let (io, protocol, peer, handler, protocols, connections, shutdown) = (
            $io,
            $protocol,
            $peer,
            $handler,
            $protocols,
            $connections,
            $shutdown,
        );
        let _counted = connections.open(protocol);
        let close = CancellationToken::new();
        let info = ConnectionInfo {
            protocol,
            close: close.clone(),
        };
        let handler = handler.on_connection(&info);
        let goaway = handler.goaway();
        let io = TokioIo::new(io);
        let service = service_fn(move |mut request: Request<Incoming>| {
            request.extensions_mut().insert(info.clone());
            // Boxed so the future hyper keeps is small: hyper's HTTP/1.1 dispatcher allocates room
            // for the service future once per connection and keeps it for the connection's life,
            // long after the response head is sent. Unboxed, that was 4.3 KiB per stream; boxed,
            // the handler's state is freed as soon as the response is ready.
            let response = Box::pin(handler.clone().call(peer, request));
            async move { Ok::<_, std::convert::Infallible>(response.await) }
        });
        match protocol {
            Protocol::Http1 => {
                let conn = protocols.http1.serve_connection(io, service);
                drive_connection(conn, peer, &close, goaway, shutdown).await;
            }
            // Boxed: hyper's HTTP/2 connection state is large, and a task is as large as its
            // largest arm. HTTP/1.1 needs one connection per stream, HTTP/2 few.
            Protocol::Http2 => {
                let conn = protocols.http2.serve_connection(io, service);
                Box::pin(drive_connection(conn, peer, &close, goaway, shutdown)).await;
            }
        }
    }};
}

#[allow(clippy::too_many_arguments)]
async fn serve_connection<H: Handler>(
    mut stream: TcpStream,
    mut peer: SocketAddr,
    mut slot: Option<ConnectionSlot>,
    handler: H,
    protocols: Arc<Protocols>,
    settings: Arc<ConnectionSettings>,
    connections: Arc<ConnectionCounts>,
    shutdown: Shutdown,
) {
    let mut first_bytes = Vec::new();
    if let Some(timeout) = settings.proxy_header_timeout {
        let read = tokio::select! {
            _ = shutdown.drain.cancelled() => return,
            r = tokio::time::timeout(timeout, proxy_protocol::read_header(&mut stream)) => r,
        };
        match read {
            Ok(Ok((source, rest))) => {
                if let Source::Client(client) = source {
                    peer = client;
                }
                first_bytes = rest;
            }
            Ok(Err(e)) => {
                tracing::debug!(peer = %peer, error = %e, "connection without a valid PROXY header");
                return;
            }
            Err(_) => {
                tracing::debug!(peer = %peer, "no PROXY header within its timeout");
                return;
            }
        }
        // The per-address cap, now that the client is known.
        if let (Some(caps), Some(slot)) = (&settings.caps, slot.as_mut()) {
            if let Err(refusal) = caps.admit_client(slot, peer.ip()) {
                if settings.tls.is_some() {
                    close_refused_tls(&stream);
                } else {
                    // The request may have come with the header: then it is answered at once.
                    answer_and_close(stream, refusal, !first_bytes.is_empty()).await;
                }
                return;
            }
        }
    }
    if let Some(tls) = &settings.tls {
        // Boxed: the handshake's and the TLS stream's state stay out of cleartext tasks.
        let stream = Rewound::new(Bytes::from(first_bytes), stream);
        let serving = (handler, protocols, connections, shutdown);
        Box::pin(serve_tls(tls.clone(), stream, peer, &settings, serving)).await;
        return;
    }
    let sniffed = sniff_protocol(&mut stream, first_bytes, peer, &settings, &shutdown).await;
    let Some((protocol, prefix)) = sniffed else {
        return;
    };
    let io = Rewound::new(prefix, stream);
    serve_protocol!(
        io,
        protocol,
        peer,
        handler,
        protocols,
        connections,
        &shutdown
    );
}

/// The TLS handshake (within `tls.handshake_timeout`), then the protocol ALPN chose; without
/// ALPN, the one the first bytes speak.
async fn serve_tls<H: Handler>(
    tls: Arc<ServerTls>,
    stream: Rewound<TcpStream>,
    peer: SocketAddr,
    settings: &ConnectionSettings,
    (handler, protocols, connections, shutdown): (
        H,
        Arc<Protocols>,
        Arc<ConnectionCounts>,
        Shutdown,
    ),
) {
    // rustls has no deadline of its own: a client that stalls mid-handshake would hold the
    // socket forever.
    let handshake = tokio::select! {
        _ = shutdown.drain.cancelled() => return,
        r = tokio::time::timeout(tls.handshake_timeout, tls.acceptor().accept(stream)) => r,
    };
    let mut stream = match handshake {
        Ok(Ok(stream)) => {
            tls.handshake(Handshake::Completed);
            stream
        }
        Ok(Err(e)) => {
            tls.handshake(Handshake::Failed);
            tracing::debug!(client = %peer, error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => {
            tls.handshake(Handshake::TimedOut);
            tracing::debug!(client = %peer, "no TLS handshake within tls.handshake_timeout");
            return;
        }
    };
    let (protocol, prefix) = match stream.get_ref().1.alpn_protocol() {
        Some(alpn) if alpn == ALPN_H2 => (Protocol::Http2, Bytes::new()),
        // The only other name offered is http/1.1.
        Some(_) => (Protocol::Http1, Bytes::new()),
        None => match sniff_protocol(&mut stream, Vec::new(), peer, settings, &shutdown).await {
            Some(sniffed) => sniffed,
            None => return,
        },
    };
    let io = Rewound::new(prefix, stream);
    serve_protocol!(
        io,
        protocol,
        peer,
        handler,
        protocols,
        connections,
        &shutdown
    );
}

/// Reads the first bytes (within the header read timeout) to tell HTTP/2 from HTTP/1.1: the
/// protocol and the bytes read, or `None` when the connection is to be closed.
async fn sniff_protocol<S: AsyncRead + Unpin>(
    stream: &mut S,
    first_bytes: Vec<u8>,
    peer: SocketAddr,
    settings: &ConnectionSettings,
    shutdown: &Shutdown,
) -> Option<(Protocol, Bytes)> {
    // hyper's protocol detection has no deadline of its own: a client that connects and sends
    // nothing (or one byte) would hold the socket forever. Read the preface ourselves.
    let header_read_timeout = settings.header_read_timeout;
    let sniffed = tokio::select! {
        _ = shutdown.drain.cancelled() => return None,
        r = tokio::time::timeout(header_read_timeout, sniff_preface(stream, first_bytes)) => r,
    };
    let prefix = match sniffed {
        Ok(Ok(prefix)) if !prefix.is_empty() => prefix,
        Ok(Ok(_)) => return None, // closed without a byte
        Ok(Err(e)) => {
            tracing::debug!(client = %peer, error = %e, "read failed before the first request");
            return None;
        }
        Err(_) => {
            tracing::debug!(client = %peer, "no request within the header read timeout");
            return None;
        }
    };
    let protocol = if prefix.starts_with(H2_PREFACE) {
        Protocol::Http2
    } else {
        Protocol::Http1
    };
    Some((protocol, prefix))
}

/// Runs one connection until it ends, the gateway closes it, its handler shuts it (`goaway`, see
/// [`Handler::goaway`]), or shutdown: on `drain` it is asked to finish gracefully, on `force` it
/// is dropped.
async fn drive_connection<C>(
    conn: C,
    peer: SocketAddr,
    close: &CancellationToken,
    goaway: impl Future<Output = ()>,
    shutdown: &Shutdown,
) where
    C: GracefulConnection,
    C::Error: std::fmt::Display,
{
    tokio::pin!(conn);
    tokio::pin!(goaway);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        _ = close.cancelled() => {
            tracing::debug!(client = %peer, "connection closed by the gateway");
            return;
        }
        _ = goaway.as_mut() => {
            conn.as_mut().graceful_shutdown();
            // One more poll: hyper (h2) writes the GOAWAY and flushes it before it reports that
            // it waits for the client again, unless the socket's send buffer is full (a client
            // that reads nothing). Dropping the connection then closes the socket behind it.
            match std::future::poll_fn(|cx| Poll::Ready(conn.as_mut().poll(cx))).await {
                Poll::Ready(r) => r,
                Poll::Pending => {
                    tracing::debug!(client = %peer, "connection shut by its handler after GOAWAY");
                    return;
                }
            }
        }
        _ = shutdown.drain.cancelled() => {
            conn.as_mut().graceful_shutdown();
            tokio::select! {
                r = conn.as_mut() => r,
                _ = close.cancelled() => {
                    tracing::debug!(client = %peer, "connection closed by the gateway");
                    return;
                }
                _ = shutdown.force.cancelled() => {
                    tracing::debug!(client = %peer, "connection force-closed at the drain deadline");
                    return;
                }
            }
        }
    };
    if let Err(e) = result {
        tracing::debug!(client = %peer, error = %e, "connection ended with an error");
    }
}

/// Accept errors that concern one connection only (it was reset or aborted before we took it);
/// the listener is fine and the next accept can go ahead at once.
fn is_per_connection_error(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    )
}

/// Reads until the bytes either start with the full HTTP/2 preface or cannot, or EOF. Each read
/// takes whatever the client has sent, up to [`FIRST_READ_BYTES`]: usually the whole request,
/// which hyper then parses from memory instead of reading the socket a second time.
async fn sniff_preface<S: AsyncRead + Unpin>(
    stream: &mut S,
    already: Vec<u8>,
) -> io::Result<Bytes> {
    // On the heap: a buffer held across the await would live in every connection's task.
    let mut buf = already;
    buf.reserve(FIRST_READ_BYTES.saturating_sub(buf.len()));
    // Bounded: every pass reads at least one byte into spare capacity, or returns; the preface
    // is decided within its 24 bytes, far below the capacity.
    while buf.len() < buf.capacity() {
        let seen = buf.len().min(H2_PREFACE.len());
        if seen > 0 && (buf[..seen] != H2_PREFACE[..seen] || seen == H2_PREFACE.len()) {
            break;
        }
        if stream.read_buf(&mut buf).await? == 0 {
            break;
        }
    }
    Ok(Bytes::copy_from_slice(&buf))
}

/// Reads off (and drops) what the client has sent so far, without waiting: `Some(bytes read)`,
/// or `None` once the client has closed or the socket failed.
fn drain_waiting(stream: &TcpStream) -> Option<usize> {
    let mut scratch = [0u8; 2048];
    let mut drained = 0;
    // Bounded: at most REFUSAL_DRAIN_BYTES, stopping as soon as nothing is waiting.
    while drained < REFUSAL_DRAIN_BYTES {
        match stream.try_read(&mut scratch) {
            Ok(0) => return None,
            Ok(n) => drained += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(_) => return None,
        }
    }
    Some(drained)
}

/// Writes a refused connection's answer without waiting: what the client has sent so far is
/// read off first (so that the close is a FIN, not a reset that could destroy the answer before
/// the client reads it), then the answer (a few hundred bytes) goes into the empty send buffer.
fn answer_refusal(stream: &TcpStream, refusal: &CapRefusal) {
    let _ = drain_waiting(stream);
    let _ = stream.try_write(refusal.answer());
}

/// Answers a refused connection once its client has sent something (`already_asked`: bytes of
/// its request were read already; else within [`REFUSAL_REQUEST_WAIT`]), shuts the sending side, and drops what the client sends until it
/// closes (within [`REFUSAL_CLOSE_WAIT`]).
async fn answer_and_close(mut stream: TcpStream, refusal: CapRefusal, already_asked: bool) {
    let asked = async {
        if already_asked {
            let _ = drain_waiting(&stream);
            return Some(());
        }
        // Bounded: by REFUSAL_REQUEST_WAIT; a pass ends on bytes, a close, or a false wake-up.
        loop {
            stream.readable().await.ok()?;
            match drain_waiting(&stream) {
                Some(0) => continue,
                Some(_) => return Some(()),
                None => return None,
            }
        }
    };
    if !matches!(
        tokio::time::timeout(REFUSAL_REQUEST_WAIT, asked).await,
        Ok(Some(()))
    ) {
        return;
    }
    let _ = stream.try_write(refusal.answer());
    // The answer is all there is: a FIN says so at once (the request was read off, so the close
    // does not cut it short), and the client closes its side in turn.
    let _ = stream.shutdown().await;
    let closed = async {
        // Bounded: by REFUSAL_CLOSE_WAIT; each pass waits for readiness, the close ends it.
        loop {
            if stream.readable().await.is_err() || drain_waiting(&stream).is_none() {
                return;
            }
        }
    };
    let _ = tokio::time::timeout(REFUSAL_CLOSE_WAIT, closed).await;
}

/// Closes a connection the caps refused on a TLS listener, without an answer: the answer would
/// need a handshake first, the very work a refusal exists to save (a cleartext one is garbage to
/// a TLS client). What the client has sent (its ClientHello) is read off, so the close is
/// usually a FIN. The client's TLS library reports the connection closed before the handshake,
/// which the OpenAI SDKs retry and a load balancer answers by trying another instance: no
/// request was sent, so a retry is always safe. The refusal is counted all the same.
fn close_refused_tls(stream: &TcpStream) {
    let _ = drain_waiting(stream);
}

/// Answers a connection the caps refused at accept and closes it, in a task of its own
/// ([`answer_and_close`]) if fewer than [`MAX_LINGERING_REFUSALS`] are open, else at once with
/// whatever the client has sent so far. The accept loop never waits on it.
fn refuse(
    stream: TcpStream,
    refusal: CapRefusal,
    lingering: &Arc<AtomicUsize>,
    tracker: &TaskTracker,
) {
    if lingering.fetch_add(1, Ordering::AcqRel) >= MAX_LINGERING_REFUSALS {
        lingering.fetch_sub(1, Ordering::AcqRel);
        answer_refusal(&stream, &refusal);
        return;
    }
    let lingering = lingering.clone();
    tracker.spawn(async move {
        answer_and_close(stream, refusal, false).await;
        lingering.fetch_sub(1, Ordering::AcqRel);
    });
}

/// A stream with bytes already read from it put back in front.
struct Rewound<S> {
    prefix: Bytes,
    inner: S,
}

impl<S> Rewound<S> {
    fn new(prefix: Bytes, inner: S) -> Rewound<S> {
        Rewound { prefix, inner }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewound<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix[..n]);
            this.prefix.advance(n);
            if this.prefix.is_empty() {
                // Let the read's allocation go now, not with the connection.
                this.prefix = Bytes::new();
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewound<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::Throttle;

    #[test]
    fn throttle_admits_one_warning_a_period_and_counts_the_rest() {
        let mut throttle = Throttle::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(throttle.admit(t0), Some(0));
        for ms in (50..10_000).step_by(50) {
            assert_eq!(
                throttle.admit(t0 + Duration::from_millis(ms)),
                None,
                "{ms} ms"
            );
        }
        assert_eq!(throttle.admit(t0 + Duration::from_secs(10)), Some(199));
        assert_eq!(throttle.admit(t0 + Duration::from_secs(11)), None);
        assert_eq!(throttle.admit(t0 + Duration::from_secs(25)), Some(1));
    }
}
