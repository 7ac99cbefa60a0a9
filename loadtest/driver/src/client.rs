//! Connections, requests and one stream's life: connect (HTTP/1.1 from a chosen source address,
//! or a stream on a shared HTTP/2 connection), send the streaming request (chat completions or
//! Responses, [`Api`]), check the status, read the body through the
//! [`SseReader`](super::sse::SseReader), classify each event by the API's grammar and record what
//! it saw in [`Live`].
//! Nothing is retried; how a stream ended is its [`Outcome`]. A stream may also be told to go
//! away early ([`WalkAway`]), as a client that loses interest or hangs does.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_TYPE, HOST};
use http::{HeaderMap, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::OnceCell;
use tokio_util::sync::CancellationToken;

use super::sse::{classify, classify_response_event, EventKind, Item, SseReader};
use super::stats::Live;
use super::tls::TlsClient;
use super::{Api, Protocol};

/// Most bytes of a non-200 answer read to describe it.
const ERROR_BODY_BYTES: usize = 4096;

/// Where the streams go: a loopback address.
#[derive(Debug, Clone)]
pub struct Target {
    pub addr: SocketAddr,
    /// The URL's host as written (an IP address or `localhost`): the TLS server name.
    pub host: String,
    /// `https://`: TLS (with `--ca-file`).
    pub https: bool,
    /// `host:port`, for `Host` and `:authority`.
    pub authority: String,
}

impl Target {
    /// Accepts `http://HOST[:PORT][/]` or `https://…` where HOST is a loopback IP address or
    /// `localhost`.
    pub fn parse(url: &str) -> Result<Target, String> {
        let uri: Uri = url
            .parse()
            .map_err(|e| format!("--url {url:?} is not a URL: {e}"))?;
        let https = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => return Err(format!("--url {url:?}: give an http:// or https:// URL")),
        };
        let host = uri
            .host()
            .ok_or_else(|| format!("--url {url:?} has no host"))?;
        let ip: IpAddr = if host.eq_ignore_ascii_case("localhost") {
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        } else {
            host.trim_start_matches('[')
                .trim_end_matches(']')
                .parse()
                .map_err(|_| {
                    format!(
                        "--url {url:?}: refusing a host that is not a loopback IP address or \
                         localhost; this tool only sends load to 127.0.0.0/8 or ::1"
                    )
                })?
        };
        if !ip.is_loopback() {
            return Err(format!(
                "--url {url:?}: refusing a non-loopback address ({ip}); this tool only sends \
                 load to 127.0.0.0/8 or ::1"
            ));
        }
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            return Err(format!(
                "--url {url:?}: give the base URL without a path; the API's path \
                 (/v1/chat/completions or /v1/responses) is appended"
            ));
        }
        let default_port = if https { 443 } else { 80 };
        let addr = SocketAddr::new(ip, uri.port_u16().unwrap_or(default_port));
        let authority = addr.to_string();
        Ok(Target {
            addr,
            host: host.to_owned(),
            https,
            authority,
        })
    }
}

/// What every stream sends; built once.
#[derive(Debug)]
pub struct RequestSpec {
    pub target: Target,
    pub protocol: Protocol,
    /// For an `https://` target: the TLS client every connection shares.
    pub tls: Option<Arc<TlsClient>>,
    /// Which API: the path, the body, and how the stream's events are read.
    pub api: Api,
    /// The API's absolute URI (HTTP/2 needs scheme and authority).
    absolute: Uri,
    body: Bytes,
    headers: HeaderMap,
}

/// The request's knobs.
#[derive(Debug, Clone)]
pub struct RequestOptions {
    pub api: Api,
    pub model: String,
    pub api_key: Option<String>,
    /// `(chunks, chunk delay in ms)` for the mock, or `None` for a real upstream.
    pub mock: Option<(u32, u64)>,
}

impl RequestSpec {
    pub fn new(
        target: Target,
        protocol: Protocol,
        tls: Option<Arc<TlsClient>>,
        options: &RequestOptions,
    ) -> Result<RequestSpec, String> {
        let api = options.api;
        let body = match api {
            Api::Chat => serde_json::json!({
                "model": options.model,
                "messages": [{"role": "user", "content": "Hello"}],
                "stream": true,
            }),
            Api::Responses => serde_json::json!({
                "model": options.model,
                "input": "Hello",
                "stream": true,
            }),
        };
        let body = serde_json::to_vec(&body).map_err(|e| format!("request body: {e}"))?;
        let scheme = if target.https { "https" } else { "http" };
        let absolute: Uri = format!("{scheme}://{}{}", target.authority, api.path())
            .parse()
            .map_err(|e| format!("cannot build the request URI: {e}"))?;
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(ACCEPT, HeaderValue::from_static("text/event-stream"));
        if protocol == Protocol::Http1 {
            let host = HeaderValue::from_str(&target.authority)
                .map_err(|e| format!("Host header: {e}"))?;
            headers.insert(HOST, host);
        }
        if let Some(key) = &options.api_key {
            let mut value = HeaderValue::from_str(&format!("Bearer {key}"))
                .map_err(|_| "--api-key: not a valid header value".to_owned())?;
            value.set_sensitive(true);
            headers.insert(AUTHORIZATION, value);
        }
        if let Some((chunks, delay_ms)) = options.mock {
            for (name, value) in [
                ("x-mock-chunks", chunks.to_string()),
                ("x-mock-chunk-delay-ms", delay_ms.to_string()),
                ("x-mock-timestamps", "1".to_owned()),
            ] {
                let value = HeaderValue::from_str(&value).map_err(|e| format!("{name}: {e}"))?;
                headers.insert(HeaderName::from_static(name), value);
            }
        }
        Ok(RequestSpec {
            target,
            protocol,
            tls,
            api,
            absolute,
            body: Bytes::from(body),
            headers,
        })
    }

    fn request(&self) -> Result<Request<Full<Bytes>>, String> {
        let uri = match self.protocol {
            Protocol::H2 => self.absolute.clone(),
            Protocol::Http1 => Uri::from_static(self.api.path()),
        };
        let mut request = Request::post(uri)
            .body(Full::new(self.body.clone()))
            .map_err(|e| format!("cannot build the request: {e}"))?;
        *request.headers_mut() = self.headers.clone();
        Ok(request)
    }
}

/// A failure before the response: `(kind, message)`, kind as in [`Outcome::Failed`].
type SendError = (&'static str, String);

/// One HTTP/2 connection, opened by the first of its streams that needs it and shared by the
/// rest; closed once the last of them drops its handle.
#[derive(Default)]
pub struct H2Slot {
    sender: OnceCell<Result<http2::SendRequest<Full<Bytes>>, SendError>>,
}

/// How one stream reaches the target.
pub enum Route {
    /// Its own HTTP/1.1 connection, from this source address (`None`: the system's choice).
    Http1(Option<IpAddr>),
    /// A stream on this shared HTTP/2 connection.
    H2(Arc<H2Slot>),
}

/// What every stream task shares.
pub struct StreamContext {
    pub spec: Arc<RequestSpec>,
    pub live: Arc<Live>,
    /// Whole-stream timeout, from the start of the request to the end of the body; in hold mode
    /// only to the response headers.
    pub timeout: Duration,
    /// Hold mode (`--hold`): the body is read, without a deadline, until the cancel ends the
    /// hold; nothing it does is expected before that.
    pub hold: bool,
    /// Cancelled when the run stops early (duration cap, Ctrl-C) or, in hold mode, when the hold
    /// ends.
    pub cancel: CancellationToken,
    /// Whether, and when, each stream goes away before its end.
    pub walk_away: WalkAway,
}

/// A client that goes away before its stream ends (`--drop-after-events`, `--drop-after-ms`,
/// `--stall-after-headers`): the trouble one client makes for a gateway that multiplexes many
/// clients onto few upstream connections, where each such stream must be reset upstream (and,
/// stalled, holds its flow-control window until then). Such streams end as
/// [`Outcome::Dropped`], not as failures: going away is what they were asked to do.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum WalkAway {
    /// Read every stream to its end.
    #[default]
    Never,
    /// Read the body, and drop the stream after the read that completed its `after_events`-th
    /// event or `after` its response headers, whichever comes first.
    Reading {
        after_events: Option<u64>,
        after: Option<Duration>,
    },
    /// Read nothing after the response headers, so the body piles up in the socket and behind
    /// it in the target's buffers and windows; drop the stream `after` its headers.
    Stalled { after: Duration },
}

impl WalkAway {
    /// From the flags: `stall` needs `after_ms` (a stalled stream that never goes away would
    /// only measure `--stream-timeout`), and cannot count events it does not read.
    pub fn from_flags(
        after_events: Option<u32>,
        after_ms: Option<u64>,
        stall: bool,
    ) -> Result<WalkAway, String> {
        let after = after_ms.map(Duration::from_millis);
        match (stall, after_events, after) {
            (true, Some(_), _) => Err(
                "--stall-after-headers reads no event, so it cannot go with --drop-after-events"
                    .into(),
            ),
            (true, None, Some(after)) => Ok(WalkAway::Stalled { after }),
            (true, None, None) => Err("--stall-after-headers needs --drop-after-ms".into()),
            (false, None, None) => Ok(WalkAway::Never),
            (false, after_events, after) => Ok(WalkAway::Reading {
                after_events: after_events.map(u64::from),
                after,
            }),
        }
    }

    /// Whether a reading stream that has seen `events` events goes away now. Never once the
    /// body has carried its end (`[DONE]` or a Responses terminal event, an error event, a
    /// Responses stream's `[DONE]`): that end is what it reports, so an error event is still a
    /// failure.
    fn due_after(self, events: u64, ended: bool) -> bool {
        match self {
            WalkAway::Reading {
                after_events: Some(n),
                ..
            } => !ended && events >= n,
            _ => false,
        }
    }

    /// What the clients do, for the start line and the report ("" for [`WalkAway::Never`]).
    pub fn describe(self) -> String {
        let ms = |d: Duration| d.as_millis();
        match self {
            WalkAway::Never => String::new(),
            WalkAway::Reading {
                after_events,
                after,
            } => {
                let events = after_events.map(|n| {
                    let s = if n == 1 { "" } else { "s" };
                    format!("after {n} event{s}")
                });
                let time = after.map(|d| format!("{} ms after its headers", ms(d)));
                let when = match (events, time) {
                    (Some(e), Some(t)) => format!("{e} or {t}, whichever first"),
                    (Some(w), None) | (None, Some(w)) => w,
                    (None, None) => "never".to_owned(),
                };
                format!("each dropped {when}")
            }
            WalkAway::Stalled { after } => format!(
                "each stalled after its headers (nothing read), dropped {} ms after them",
                ms(after)
            ),
        }
    }

    /// How long after its response headers a stream goes away whatever it has read.
    fn after(self) -> Option<Duration> {
        match self {
            WalkAway::Never => None,
            WalkAway::Reading { after, .. } => after,
            WalkAway::Stalled { after } => Some(after),
        }
    }
}

/// How one stream ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// `data: [DONE]` (Responses: `response.completed` or `response.incomplete`), then a clean
    /// end of body.
    Completed,
    /// `kind` is one of `connect`, `tls` (the handshake), `request`, `status_NNN`, `timeout`, `reset`, `eof`,
    /// `error_event:CODE`; Responses also `response.failed:CODE` and `protocol` (`[DONE]`).
    Failed { kind: String, message: String },
    /// Stopped by the run (duration cap, interrupt, the end of a hold), not by anything the
    /// target did.
    Cancelled,
    /// The client went away on purpose ([`WalkAway`]) before the stream ended.
    Dropped,
}

/// What one stream's body carried.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BodyCounts {
    /// `: ping` heartbeat comments.
    pub pings: u64,
    /// Other comment lines (not `ping`, not `sent_us=`).
    pub other_comments: u64,
    /// Dispatched events with data.
    pub events: u64,
}

/// One finished stream: how it ended, how long it was open, what it saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamRecord {
    pub outcome: Outcome,
    /// From its `200` response headers to its end; `None` if it never got them.
    pub open_for: Option<Duration>,
    pub counts: BodyCounts,
}

impl StreamRecord {
    fn unopened(outcome: Outcome) -> StreamRecord {
        StreamRecord {
            outcome,
            open_for: None,
            counts: BodyCounts::default(),
        }
    }
}

fn failed(kind: impl Into<String>, message: impl Into<String>) -> Outcome {
    Outcome::Failed {
        kind: kind.into(),
        message: message.into(),
    }
}

/// Microseconds since the Unix epoch, the clock of the mock's `sent_us`.
pub fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// A TCP connection to `target`, from `source` if given (to spread ephemeral ports), no Nagle.
async fn connect(target: SocketAddr, source: Option<IpAddr>) -> std::io::Result<TcpStream> {
    let socket = match target {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    if let Some(ip) = source {
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    let stream = socket.connect(target).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// An HTTP/2 connection to the target, driven by a task of its own: cleartext with prior
/// knowledge, or TLS with ALPN `h2`.
async fn open_h2(spec: &RequestSpec) -> Result<http2::SendRequest<Full<Bytes>>, SendError> {
    let tcp = connect(spec.target.addr, None)
        .await
        .map_err(|e| ("connect", format!("connect: {e}")))?;
    let connection = match &spec.tls {
        None => h2_over(tcp).await,
        Some(tls) => h2_over(tls.handshake(tcp).await.map_err(|e| ("tls", e))?).await,
    };
    connection.map_err(|e| ("connect", e))
}

async fn h2_over<IO>(io: IO) -> Result<http2::SendRequest<Full<Bytes>>, String>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sender, connection) = http2::Builder::new(TokioExecutor::new())
        .handshake(TokioIo::new(io))
        .await
        .map_err(|e| format!("HTTP/2 handshake: {e}"))?;
    tokio::spawn(async move {
        // A connection error also fails every stream on it, which records it.
        let _ = connection.await;
    });
    Ok(sender)
}

/// An HTTP/1.1 connection over `io`, driven by a task of its own (aborted by the handle).
pub(crate) async fn http1_over<IO>(
    io: IO,
) -> hyper::Result<(http1::SendRequest<Full<Bytes>>, tokio::task::AbortHandle)>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sender, connection) = http1::handshake(TokioIo::new(io)).await?;
    let task = tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok((sender, task.abort_handle()))
}

/// The task driving a stream's own HTTP/1.1 connection, aborted when the stream ends, which
/// closes the socket. A client that goes away must close its connection at once, whatever hyper
/// does with a body dropped unread; a stream that ended cleanly has nothing left on it.
/// (`None` on HTTP/2: the connection is shared, and dropping the body resets only the stream.)
struct ConnectionTask(Option<tokio::task::AbortHandle>);

impl Drop for ConnectionTask {
    fn drop(&mut self) {
        if let Some(task) = &self.0 {
            task.abort();
        }
    }
}

/// Sends the request; errors are `(kind, message)`.
async fn send(
    route: Route,
    spec: &RequestSpec,
) -> Result<(http::Response<Incoming>, ConnectionTask), SendError> {
    let request = spec.request().map_err(|e| ("request", e))?;
    match route {
        Route::H2(slot) => {
            let sender = slot.sender.get_or_init(|| open_h2(spec)).await.clone();
            let mut sender = sender?;
            // Waits while the connection is at its concurrent-stream limit.
            sender
                .ready()
                .await
                .map_err(|e| ("request", format!("HTTP/2 connection: {e}")))?;
            let response = sender
                .send_request(request)
                .await
                .map_err(|e| ("request", e.to_string()))?;
            Ok((response, ConnectionTask(None)))
        }
        Route::Http1(source) => {
            let tcp = connect(spec.target.addr, source).await.map_err(|e| {
                let from = source.map(|ip| format!(" from {ip}")).unwrap_or_default();
                ("connect", format!("connect{from}: {e}"))
            })?;
            let connection = match &spec.tls {
                None => http1_over(tcp).await,
                Some(tls) => http1_over(tls.handshake(tcp).await.map_err(|e| ("tls", e))?).await,
            };
            let (mut sender, task) =
                connection.map_err(|e| ("connect", format!("HTTP/1.1 handshake: {e}")))?;
            let task = ConnectionTask(Some(task));
            let response = sender
                .send_request(request)
                .await
                .map_err(|e| ("request", e.to_string()))?;
            Ok((response, task))
        }
    }
}

/// A short description of a non-200 answer: its status and the error code of an OpenAI-style
/// body, or the start of the body. Reads at most [`ERROR_BODY_BYTES`] before `deadline`.
async fn describe_status(
    status: StatusCode,
    mut body: Incoming,
    deadline: tokio::time::Instant,
) -> String {
    let mut bytes = Vec::new();
    while bytes.len() < ERROR_BODY_BYTES {
        match tokio::time::timeout_at(deadline, body.frame()).await {
            Ok(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    bytes.extend_from_slice(&data);
                }
            }
            _ => break,
        }
    }
    bytes.truncate(ERROR_BODY_BYTES);
    let code = serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()
        .and_then(|v| {
            let error = v.get("error")?;
            let code = error.get("code").and_then(|c| c.as_str());
            code.or_else(|| error.get("type").and_then(|t| t.as_str()))
                .map(str::to_owned)
        });
    match code {
        Some(code) => format!("HTTP {status}: {code}"),
        None => {
            let text = String::from_utf8_lossy(&bytes);
            let text: String = text.chars().take(200).collect();
            format!("HTTP {status}: {text}")
        }
    }
}

/// One stream, from connecting to the end of its body (or the timeout, or a cancel).
pub async fn run_stream(ctx: Arc<StreamContext>, route: Route) -> StreamRecord {
    let live = &ctx.live;
    let start = Instant::now();
    let deadline = tokio::time::Instant::from_std(start + ctx.timeout);
    let response = tokio::select! {
        biased;
        () = ctx.cancel.cancelled() => return StreamRecord::unopened(Outcome::Cancelled),
        r = tokio::time::timeout_at(deadline, send(route, &ctx.spec)) => r,
    };
    // Held to the end of the stream: dropping it closes an HTTP/1.1 stream's connection.
    let (response, _connection) = match response {
        Err(_) => {
            return StreamRecord::unopened(failed(
                "timeout",
                format!("no response headers within {:?}", ctx.timeout),
            ))
        }
        Ok(Err((kind, message))) => return StreamRecord::unopened(failed(kind, message)),
        Ok(Ok(r)) => r,
    };
    let status = response.status();
    if status != StatusCode::OK {
        let message = describe_status(status, response.into_body(), deadline).await;
        return StreamRecord::unopened(failed(format!("status_{}", status.as_u16()), message));
    }
    let opened_at = Instant::now();
    live.headers_us.record(micros(opened_at - start));
    let alive = live.stream_opened();
    // A held stream is bounded by the cancel at the end of the hold (or the run cap) instead.
    let body_deadline = (!ctx.hold).then_some(deadline);
    let mut counts = BodyCounts::default();
    let drop_at = ctx
        .walk_away
        .after()
        .map(|after| tokio::time::Instant::from_std(opened_at + after));
    let outcome = match ctx.walk_away {
        WalkAway::Stalled { .. } => stall(&ctx, response.into_body(), body_deadline, drop_at).await,
        WalkAway::Never | WalkAway::Reading { .. } => {
            read_body(
                &ctx,
                response.into_body(),
                start,
                (body_deadline, drop_at),
                &mut counts,
            )
            .await
        }
    };
    drop(alive);
    StreamRecord {
        outcome,
        open_for: Some(opened_at.elapsed()),
        counts,
    }
}

/// Resolves at `deadline`, or never without one.
async fn until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// A stalled client ([`WalkAway::Stalled`]): holds the body without reading any of it until
/// `drop_at`, then drops it (a reset on HTTP/2, a closed socket on HTTP/1.1). What the target
/// does meanwhile, even ending the stream, is not seen: the stream counts as dropped.
async fn stall(
    ctx: &StreamContext,
    body: Incoming,
    deadline: Option<tokio::time::Instant>,
    drop_at: Option<tokio::time::Instant>,
) -> Outcome {
    let outcome = tokio::select! {
        biased;
        () = ctx.cancel.cancelled() => Outcome::Cancelled,
        () = until(deadline) => failed(
            "timeout",
            format!("stalled past the stream timeout {:?}", ctx.timeout),
        ),
        () = until(drop_at) => Outcome::Dropped,
    };
    drop(body);
    outcome
}

/// Reads the body to its end, adding what it carries to `counts`; bounded by `deadline` (if
/// any) and the cancel token. With [`WalkAway::Reading`] it drops the stream early: at
/// `drop_at`, or once it has seen enough events.
async fn read_body(
    ctx: &StreamContext,
    mut body: Incoming,
    start: Instant,
    (deadline, drop_at): (Option<tokio::time::Instant>, Option<tokio::time::Instant>),
    counts: &mut BodyCounts,
) -> Outcome {
    let live = &ctx.live;
    let api = ctx.spec.api;
    let mut reader = SseReader::default();
    // The good end ([DONE], or a Responses stream's completed or incomplete) has been seen.
    let mut done = false;
    // The first event that fails the stream, as `(kind, message)`: it decides the outcome.
    let mut failure: Option<(String, &'static str)> = None;
    let mut first_event_seen = false;
    // Bounded: every pass awaits a frame, and the deadline, the cancel or the end of the body
    // ends the loop (without a deadline, in hold mode, the cancel at the hold's end does).
    loop {
        let ended = done || failure.is_some();
        let frame = tokio::select! {
            biased;
            () = ctx.cancel.cancelled() => return Outcome::Cancelled,
            // Once the body has carried its end, the stream is left to finish on its own.
            () = until(drop_at), if !ended => return Outcome::Dropped,
            frame = body.frame() => frame,
            () = until(deadline) => {
                let what = match (done, api) {
                    (true, Api::Chat) => "the body did not end after [DONE]",
                    (true, Api::Responses) => "the body did not end after its terminal event",
                    (false, _) => "the stream did not finish",
                };
                return failed("timeout", format!("{what} within {:?}", ctx.timeout));
            }
        };
        let data = match frame {
            None => {
                return match (failure, done) {
                    (Some((kind, message)), _) => failed(kind, message),
                    (None, true) => Outcome::Completed,
                    (None, false) => failed(
                        "eof",
                        format!("the body ended without {}", api.end_marker()),
                    ),
                };
            }
            Some(Err(e)) => {
                return match failure {
                    Some((kind, _)) => failed(kind, e.to_string()),
                    None if done => failed("reset", format!("after {}: {e}", end_name(api))),
                    None => failed("reset", e.to_string()),
                };
            }
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => data,
                Err(_) => continue, // trailers
            },
        };
        Live::add(&live.bytes, data.len() as u64);
        let now_us = unix_micros();
        let since_start = start.elapsed();
        let (mut events, mut pings, mut comments) = (0u64, 0u64, 0u64);
        // Chat: any event is the first; Responses: the first *.delta (the first token).
        let mut first_token = false;
        reader.feed(&data, &mut |item| match item {
            Item::Event(event) => {
                events += 1;
                if let Some(sent_us) = event.sent_us {
                    live.record_latency(now_us.saturating_sub(sent_us));
                }
                let kind = match api {
                    Api::Chat => {
                        first_token = true;
                        classify(event.data)
                    }
                    Api::Responses => classify_response_event(event.event_type, event.data),
                };
                match kind {
                    EventKind::Done => done = true,
                    EventKind::Delta => first_token = true,
                    EventKind::Data => {}
                    other => {
                        if failure.is_none() {
                            failure = other.failure();
                        }
                    }
                }
            }
            Item::Ping => pings += 1,
            Item::Comment => comments += 1,
        });
        if events > 0 {
            Live::add(&live.events, events);
            counts.events += events;
        }
        if first_token && !first_event_seen {
            first_event_seen = true;
            live.first_event_us.record(micros(since_start));
        }
        if pings > 0 {
            Live::add(&live.pings, pings);
            counts.pings += pings;
        }
        if comments > 0 {
            Live::add(&live.other_comments, comments);
            counts.other_comments += comments;
        }
        if ctx
            .walk_away
            .due_after(counts.events, done || failure.is_some())
        {
            return Outcome::Dropped;
        }
    }
}

/// The good end a stream had, for a reset after it.
fn end_name(api: Api) -> &'static str {
    match api {
        Api::Chat => "[DONE]",
        Api::Responses => "its terminal event",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_urls() {
        for ok in [
            "http://127.0.0.1:8080",
            "http://127.0.0.5:8080/",
            "http://[::1]:8080",
            "http://localhost:8080",
            "https://127.0.0.1:8443",
            "https://localhost",
        ] {
            assert!(Target::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "http://10.0.0.1:8080",
            "http://192.168.1.1",
            "http://example.com",
            "ftp://127.0.0.1:8080",
            "https://10.0.0.1:8443",
            "http://127.0.0.1:8080/v1",
            "http://127.0.0.1:8080/?x=1",
            "not a url",
        ] {
            assert!(Target::parse(bad).is_err(), "{bad}");
        }
        let t = Target::parse("http://localhost:9").unwrap();
        assert_eq!(t.authority, "127.0.0.1:9");
        assert!(!t.https);
        let t = Target::parse("https://localhost").unwrap();
        assert!(t.https);
        assert_eq!(t.host, "localhost");
        assert_eq!(t.addr.port(), 443);
        let options = RequestOptions {
            api: Api::Chat,
            model: "m".into(),
            api_key: None,
            mock: None,
        };
        let spec = RequestSpec::new(t, Protocol::H2, None, &options).unwrap();
        assert_eq!(spec.absolute, "https://127.0.0.1:443/v1/chat/completions");
    }

    #[test]
    fn walking_away_from_the_flags() {
        assert_eq!(WalkAway::from_flags(None, None, false), Ok(WalkAway::Never));
        assert_eq!(
            WalkAway::from_flags(Some(1), None, false),
            Ok(WalkAway::Reading {
                after_events: Some(1),
                after: None
            })
        );
        assert_eq!(
            WalkAway::from_flags(Some(3), Some(250), false),
            Ok(WalkAway::Reading {
                after_events: Some(3),
                after: Some(Duration::from_millis(250))
            })
        );
        let stalled = WalkAway::from_flags(None, Some(2000), true).unwrap();
        assert_eq!(
            stalled,
            WalkAway::Stalled {
                after: Duration::from_secs(2)
            }
        );
        assert_eq!(stalled.after(), Some(Duration::from_secs(2)));
        assert!(WalkAway::from_flags(None, None, true)
            .unwrap_err()
            .contains("needs --drop-after-ms"));
        assert!(WalkAway::from_flags(Some(1), Some(5), true)
            .unwrap_err()
            .contains("cannot go with --drop-after-events"));
    }

    #[test]
    fn a_reading_client_goes_away_after_its_events_unless_the_stream_has_ended() {
        let after_two = WalkAway::Reading {
            after_events: Some(2),
            after: None,
        };
        assert!(!after_two.due_after(0, false));
        assert!(!after_two.due_after(1, false));
        assert!(after_two.due_after(2, false));
        // One read may complete several events at once.
        assert!(after_two.due_after(5, false));
        // [DONE] or an error event seen: the stream ends as it ends, not dropped.
        assert!(!after_two.due_after(2, true));
        let timed_only = WalkAway::Reading {
            after_events: None,
            after: Some(Duration::from_millis(10)),
        };
        assert!(!timed_only.due_after(1_000, false));
        assert_eq!(timed_only.after(), Some(Duration::from_millis(10)));
        assert!(!WalkAway::Never.due_after(1_000, false));
        assert_eq!(WalkAway::Never.after(), None);
        // A stalled client reads no event to count.
        let stalled = WalkAway::Stalled {
            after: Duration::ZERO,
        };
        assert!(!stalled.due_after(1_000, false));
    }

    #[test]
    fn walking_away_is_described() {
        assert_eq!(WalkAway::Never.describe(), "");
        let describe = |e, ms, stall| WalkAway::from_flags(e, ms, stall).unwrap().describe();
        assert_eq!(describe(Some(1), None, false), "each dropped after 1 event");
        assert_eq!(
            describe(Some(3), Some(250), false),
            "each dropped after 3 events or 250 ms after its headers, whichever first"
        );
        assert_eq!(
            describe(None, Some(2000), true),
            "each stalled after its headers (nothing read), dropped 2000 ms after them"
        );
    }

    #[test]
    fn requests_carry_the_mock_headers_and_the_key() {
        let target = Target::parse("http://127.0.0.1:8080").unwrap();
        let options = RequestOptions {
            api: Api::Chat,
            model: "fail-\"midstream\"".into(),
            api_key: Some("sk-test".into()),
            mock: Some((5, 20)),
        };
        let spec = RequestSpec::new(target.clone(), Protocol::Http1, None, &options).unwrap();
        let request = spec.request().unwrap();
        assert_eq!(request.uri(), "/v1/chat/completions");
        let h = request.headers();
        assert_eq!(h["host"], "127.0.0.1:8080");
        assert_eq!(h["x-mock-chunks"], "5");
        assert_eq!(h["x-mock-chunk-delay-ms"], "20");
        assert_eq!(h["x-mock-timestamps"], "1");
        assert_eq!(h["authorization"], "Bearer sk-test");
        let body: serde_json::Value = serde_json::from_slice(&spec.body).unwrap();
        assert_eq!(body["model"], "fail-\"midstream\"");
        assert_eq!(body["stream"], true);
        assert_eq!(body["messages"][0]["content"], "Hello");

        let options = RequestOptions {
            api: Api::Chat,
            model: "m".into(),
            api_key: None,
            mock: None,
        };
        let spec = RequestSpec::new(target, Protocol::H2, None, &options).unwrap();
        let request = spec.request().unwrap();
        assert_eq!(request.uri(), "http://127.0.0.1:8080/v1/chat/completions");
        assert!(request.headers().get("host").is_none());
        assert!(request.headers().get("x-mock-chunks").is_none());
        assert!(request.headers().get("authorization").is_none());
    }

    #[test]
    fn responses_requests_post_input_to_their_path_with_the_same_headers() {
        let target = Target::parse("http://127.0.0.1:8080").unwrap();
        let options = RequestOptions {
            api: Api::Responses,
            model: "mock-1".into(),
            api_key: Some("sk-test".into()),
            mock: Some((5, 20)),
        };
        let spec = RequestSpec::new(target.clone(), Protocol::Http1, None, &options).unwrap();
        let request = spec.request().unwrap();
        assert_eq!(request.method(), http::Method::POST);
        assert_eq!(request.uri(), "/v1/responses");
        let h = request.headers();
        assert_eq!(h["host"], "127.0.0.1:8080");
        assert_eq!(h["content-type"], "application/json");
        assert_eq!(h["accept"], "text/event-stream");
        assert_eq!(h["x-mock-chunks"], "5");
        assert_eq!(h["x-mock-chunk-delay-ms"], "20");
        assert_eq!(h["x-mock-timestamps"], "1");
        assert_eq!(h["authorization"], "Bearer sk-test");
        let body: serde_json::Value = serde_json::from_slice(&spec.body).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"model": "mock-1", "input": "Hello", "stream": true})
        );

        let spec = RequestSpec::new(target, Protocol::H2, None, &options).unwrap();
        assert_eq!(
            spec.request().unwrap().uri(),
            "http://127.0.0.1:8080/v1/responses"
        );
    }
}
