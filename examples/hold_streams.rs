//! hold_streams: opens N concurrent streaming chat completions to a tidegate gateway and holds
//! them open, idle, to measure what idle streams cost the gateway (heartbeat CPU, RSS per stream).
//! `loadtest/idle-streams.sh` drives it; see `loadtest/README-idle.md`.
//!
//! ```text
//! cargo run --release --example hold_streams -- --url http://127.0.0.1:8080 \
//!     [--streams 10000] [--per-connection 200] [--ramp 2000] [--hold 90] \
//!     [--protocol h2|http1] [--source-addrs 16] [--open-timeout 30] [--threads 1] [--json]
//! ```
//!
//! * Only loopback targets are accepted (`127.0.0.0/8`, `::1`, `localhost`).
//! * `h2` (default): cleartext HTTP/2 with prior knowledge, `--per-connection` streams on each
//!   connection (at most 256, the gateway's limit), so 10,000 streams take 50 sockets.
//!   `http1`: one connection per stream, bound to source addresses 127.0.0.1 ..
//!   127.0.0.`--source-addrs` in turn so the ephemeral ports of one source are not exhausted.
//!   The gateway holds two sockets per HTTP/1.1 stream: keep `--streams` below half its
//!   open-files limit.
//! * Streams are opened at `--ramp` per second. Once every stream has its response headers (or
//!   has failed), `all open` is printed on stderr and the streams are held for `--hold` seconds,
//!   then dropped (each is cancelled: `RST_STREAM` on HTTP/2, a closed socket on HTTP/1.1).
//! * Each stream counts its `: ping` comment lines, other comment lines and `data:` lines, and
//!   notes how it ended if it ended before the hold was over (`[DONE]`, an error event, end of
//!   body without either, or a reset).
//! * Once a second a progress line goes to stderr; at the end a report goes to stdout (one JSON
//!   object with `--json`). Exit code 1 if any stream failed to open, 2 for bad arguments.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::{Parser, ValueEnum};
use http::header::{ACCEPT, CONTENT_TYPE, HOST};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::TokioIo;
use tidegate::bench::client::{connect, open_h2, Target};
use tidegate::signals::interrupted;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::MissedTickBehavior;

/// The request every stream sends.
const REQUEST_BODY: &str =
    r#"{"model":"mock","messages":[{"role":"user","content":"hi"}],"stream":true}"#;
const REQUEST_PATH: &str = "/v1/chat/completions";

/// The gateway allows this many concurrent HTTP/2 streams per connection.
const MAX_PER_CONNECTION: u32 = 256;
/// Upper bound on `--streams`, so a typo cannot ask for millions of sockets or tasks.
const MAX_STREAMS: u32 = 200_000;
/// Upper bound on `--hold`.
const MAX_HOLD_SECS: u64 = 24 * 3600;
/// Longest line prefix kept by the line splitter; the rest of a longer line is skipped.
const MAX_LINE_BYTES: usize = 64 * 1024;
/// Frames one stream reads at most (an idle stream gets a few per second at most).
const MAX_FRAMES_PER_STREAM: u64 = 10_000_000;
/// How often the ramp loop opens the streams that are due.
const RAMP_TICK: Duration = Duration::from_millis(10);
/// How long the dropped streams get to finish their tasks at the end.
const COLLECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Extra time, beyond the ramp and `--open-timeout`, before waiting for "all open" gives up.
const OPEN_MARGIN: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Protocol {
    /// Cleartext HTTP/2 with prior knowledge, many streams per connection
    H2,
    /// HTTP/1.1, one connection per stream
    Http1,
}

impl Protocol {
    fn name(self) -> &'static str {
        match self {
            Protocol::H2 => "h2",
            Protocol::Http1 => "http1",
        }
    }
}

/// Opens N concurrent streaming chat completions to a gateway on loopback and holds them idle.
#[derive(Debug, Parser)]
#[command(name = "hold_streams")]
struct Args {
    /// Gateway base URL, e.g. http://127.0.0.1:8080 (loopback only, no path)
    #[arg(long, value_name = "URL")]
    url: String,
    /// Concurrent streams to open
    #[arg(long, default_value_t = 10_000, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_STREAMS)))]
    streams: u32,
    /// Streams per HTTP/2 connection (at most 256)
    #[arg(long, default_value_t = 200, value_name = "M",
          value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_PER_CONNECTION)))]
    per_connection: u32,
    /// New streams per second
    #[arg(long, default_value_t = 2000, value_name = "R",
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    ramp: u32,
    /// Seconds to hold the streams once all are open
    #[arg(long, default_value_t = 90, value_name = "SECS",
          value_parser = clap::value_parser!(u64).range(0..=MAX_HOLD_SECS))]
    hold: u64,
    /// h2 (cleartext, prior knowledge) or http1 (one connection per stream)
    #[arg(long, value_enum, default_value_t = Protocol::H2)]
    protocol: Protocol,
    /// http1 only: spread connections over source addresses 127.0.0.1 .. 127.0.0.X
    #[arg(long, default_value_t = 16, value_name = "X",
          value_parser = clap::value_parser!(u8).range(1..=254))]
    source_addrs: u8,
    /// Seconds one stream may take to connect and get its response headers
    #[arg(long, default_value_t = 30, value_name = "SECS",
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    open_timeout: u64,
    /// Runtime worker threads (1 = a single-threaded runtime)
    #[arg(long, default_value_t = 1, value_name = "N",
          value_parser = clap::value_parser!(u16).range(1..=64))]
    threads: u16,
    /// Print the final report as one JSON object
    #[arg(long)]
    json: bool,
}

/// The chat request every stream sends.
fn request(target: &Target, protocol: Protocol) -> Result<Request<Full<Bytes>>, String> {
    let builder = match protocol {
        Protocol::H2 => Request::post(target.absolute.clone()),
        Protocol::Http1 => Request::post(REQUEST_PATH).header(HOST, target.authority.as_str()),
    };
    builder
        .header(CONTENT_TYPE, "application/json")
        .header(ACCEPT, "text/event-stream")
        .body(Full::new(Bytes::from_static(REQUEST_BODY.as_bytes())))
        .map_err(|e| format!("cannot build the request: {e}"))
}

/// Counters shared by every stream, for the progress line.
#[derive(Debug, Default)]
struct Live {
    opened: AtomicU64,
    failed: AtomicU64,
    alive: AtomicU64,
    max_alive: AtomicU64,
    ended: AtomicU64,
    pings: AtomicU64,
    other_comments: AtomicU64,
    events: AtomicU64,
}

impl Live {
    fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    fn progress_line(&self, elapsed: Duration, started: u32, streams: u32) -> String {
        format!(
            "hold_streams: t={:.0}s started={started}/{streams} opened={} alive={} failed={} \
             ended={} pings={} events={}",
            elapsed.as_secs_f64(),
            Live::get(&self.opened),
            Live::get(&self.alive),
            Live::get(&self.failed),
            Live::get(&self.ended),
            Live::get(&self.pings),
            Live::get(&self.events),
        )
    }
}

/// How a stream that had opened stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
enum End {
    /// Still open when the hold ended (what every stream should do).
    Held,
    /// Ended after `data: [DONE]`.
    Done,
    /// Ended after a `data: {"error":...}` event.
    ErrorEvent,
    /// The body ended without `[DONE]` or an error event.
    Eof,
    /// The body failed (HTTP/2 reset, connection closed mid-body).
    Reset(String),
    /// [`MAX_FRAMES_PER_STREAM`] reached.
    FrameCap,
}

impl End {
    fn kind(&self) -> &'static str {
        match self {
            End::Held => "held",
            End::Done => "done",
            End::ErrorEvent => "error_event",
            End::Eof => "eof",
            End::Reset(_) => "reset",
            End::FrameCap => "frame_cap",
        }
    }
}

#[derive(Debug)]
struct Opened {
    headers_latency: Duration,
    open_for: Duration,
    pings: u64,
    other_comments: u64,
    events: u64,
    end: End,
}

#[derive(Debug)]
enum Record {
    Opened(Opened),
    Failed {
        kind: String,
        message: String,
    },
    /// The tool stopped before this stream got its response headers.
    Stopped,
}

fn failed(live: &Live, kind: impl Into<String>, message: impl Into<String>) -> Record {
    live.failed.fetch_add(1, Ordering::Relaxed);
    Record::Failed {
        kind: kind.into(),
        message: message.into(),
    }
}

/// Keeps at most [`MAX_LINE_BYTES`] of each line; splits on LF and drops a CR before it.
#[derive(Debug, Default)]
struct LineSplitter {
    partial: Vec<u8>,
}

impl LineSplitter {
    fn feed(&mut self, mut data: &[u8], mut on_line: impl FnMut(&[u8])) {
        // Bounded by the length of `data`: each turn consumes at least one byte.
        while let Some(pos) = data.iter().position(|&b| b == b'\n') {
            let (head, rest) = data.split_at(pos);
            if self.partial.is_empty() {
                on_line(strip_cr(&head[..head.len().min(MAX_LINE_BYTES)]));
            } else {
                self.keep(head);
                on_line(strip_cr(&self.partial));
                self.partial.clear();
            }
            data = &rest[1..];
        }
        self.keep(data);
    }

    fn keep(&mut self, data: &[u8]) {
        let room = MAX_LINE_BYTES.saturating_sub(self.partial.len());
        self.partial
            .extend_from_slice(&data[..data.len().min(room)]);
    }
}

fn strip_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// What a stream has seen in its body so far.
#[derive(Debug, Default)]
struct BodyCounts {
    pings: u64,
    other_comments: u64,
    events: u64,
    done: bool,
    error_event: bool,
}

impl BodyCounts {
    fn line(&mut self, line: &[u8], live: &Live) {
        if let Some(comment) = line.strip_prefix(b":") {
            let text = comment.strip_prefix(b" ").unwrap_or(comment);
            if text == b"ping" {
                self.pings += 1;
                live.pings.fetch_add(1, Ordering::Relaxed);
            } else {
                self.other_comments += 1;
                live.other_comments.fetch_add(1, Ordering::Relaxed);
            }
        } else if let Some(value) = line.strip_prefix(b"data:") {
            let value = value.strip_prefix(b" ").unwrap_or(value);
            self.events += 1;
            live.events.fetch_add(1, Ordering::Relaxed);
            if value == b"[DONE]" {
                self.done = true;
            } else if value.starts_with(b"{") {
                if let Ok(serde_json::Value::Object(object)) =
                    serde_json::from_slice::<serde_json::Value>(value)
                {
                    if object.contains_key("error") {
                        self.error_event = true;
                    }
                }
            }
        }
    }
}

/// How a stream task reaches the gateway.
enum Route {
    /// A clone of the connection's handle.
    H2(http2::SendRequest<Full<Bytes>>),
    /// Its own connection from this source address.
    Http1(IpAddr),
}

async fn send(
    route: Route,
    target: &Target,
    request: Request<Full<Bytes>>,
) -> Result<http::Response<Incoming>, (&'static str, String)> {
    match route {
        Route::H2(mut sender) => {
            sender
                .ready()
                .await
                .map_err(|e| ("connection", e.to_string()))?;
            sender
                .send_request(request)
                .await
                .map_err(|e| ("request", e.to_string()))
        }
        Route::Http1(source) => {
            let tcp = connect(target.addr, Some(source))
                .await
                .map_err(|e| ("connect", e.to_string()))?;
            let (mut sender, connection) = http1::handshake(TokioIo::new(tcp))
                .await
                .map_err(|e| ("connect", e.to_string()))?;
            tokio::spawn(async move {
                let _ = connection.await;
            });
            sender
                .send_request(request)
                .await
                .map_err(|e| ("request", e.to_string()))
        }
    }
}

/// One stream: request, response headers, then read until the hold ends or the body does.
async fn run_stream(
    route: Route,
    target: Arc<Target>,
    protocol: Protocol,
    open_timeout: Duration,
    live: Arc<Live>,
    mut stop: watch::Receiver<bool>,
) -> Record {
    let started = Instant::now();
    let request = match request(&target, protocol) {
        Ok(r) => r,
        Err(e) => return failed(&live, "request", e),
    };
    let response = tokio::select! {
        _ = stop.wait_for(|s| *s) => return Record::Stopped,
        r = tokio::time::timeout(open_timeout, send(route, &target, request)) => r,
    };
    let response = match response {
        Err(_) => {
            return failed(
                &live,
                "timeout",
                format!("no response headers within {open_timeout:?}"),
            )
        }
        Ok(Err((kind, message))) => return failed(&live, kind, message),
        Ok(Ok(r)) => r,
    };
    let headers_latency = started.elapsed();
    let status = response.status();
    if status != StatusCode::OK {
        return failed(
            &live,
            format!("status_{}", status.as_u16()),
            format!("HTTP {status}"),
        );
    }
    let opened_at = Instant::now();
    live.opened.fetch_add(1, Ordering::Relaxed);
    let alive = live.alive.fetch_add(1, Ordering::Relaxed) + 1;
    live.max_alive.fetch_max(alive, Ordering::Relaxed);

    let mut body = response.into_body();
    let mut lines = LineSplitter::default();
    let mut counts = BodyCounts::default();
    let mut frames: u64 = 0;
    // Bounded in time by the stop signal and in count by MAX_FRAMES_PER_STREAM.
    let end = loop {
        if frames >= MAX_FRAMES_PER_STREAM {
            break End::FrameCap;
        }
        tokio::select! {
            biased;
            _ = stop.wait_for(|s| *s) => break End::Held,
            frame = body.frame() => match frame {
                None if counts.done => break End::Done,
                None if counts.error_event => break End::ErrorEvent,
                None => break End::Eof,
                Some(Err(e)) => break End::Reset(e.to_string()),
                Some(Ok(frame)) => {
                    frames += 1;
                    if let Ok(data) = frame.into_data() {
                        lines.feed(&data, |line| counts.line(line, &live));
                    }
                }
            },
        }
    };
    // Dropping the body cancels the stream (RST_STREAM on HTTP/2, socket closed on HTTP/1.1).
    drop(body);
    live.alive.fetch_sub(1, Ordering::Relaxed);
    if end != End::Held {
        live.ended.fetch_add(1, Ordering::Relaxed);
    }
    Record::Opened(Opened {
        headers_latency,
        open_for: opened_at.elapsed(),
        pings: counts.pings,
        other_comments: counts.other_comments,
        events: counts.events,
        end,
    })
}

/// Everything the report needs.
#[derive(Debug, Default)]
struct Summary {
    started: u32,
    opened: u64,
    failed: BTreeMap<String, u64>,
    failure_examples: BTreeMap<String, String>,
    stopped_before_open: u64,
    ended_early: BTreeMap<&'static str, u64>,
    end_examples: BTreeMap<&'static str, String>,
    held_to_the_end: u64,
    uncollected: u64,
    headers_ms: Vec<f64>,
    pings_per_min: Vec<f64>,
    pings: u64,
    other_comments: u64,
    events: u64,
}

impl Summary {
    fn add(&mut self, record: Record) {
        match record {
            Record::Opened(o) => {
                self.opened += 1;
                self.headers_ms.push(o.headers_latency.as_secs_f64() * 1e3);
                // Streams open for under a second say nothing about a per-minute rate.
                if o.open_for >= Duration::from_secs(1) {
                    self.pings_per_min
                        .push(o.pings as f64 * 60.0 / o.open_for.as_secs_f64());
                }
                self.pings += o.pings;
                self.other_comments += o.other_comments;
                self.events += o.events;
                if o.end == End::Held {
                    self.held_to_the_end += 1;
                } else {
                    *self.ended_early.entry(o.end.kind()).or_default() += 1;
                    if let End::Reset(message) = &o.end {
                        self.end_examples
                            .entry(o.end.kind())
                            .or_insert_with(|| message.clone());
                    }
                }
            }
            Record::Failed { kind, message } => {
                *self.failed.entry(kind.clone()).or_default() += 1;
                self.failure_examples.entry(kind).or_insert(message);
            }
            Record::Stopped => self.stopped_before_open += 1,
        }
    }

    fn failed_total(&self) -> u64 {
        self.failed.values().sum()
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (p / 100.0 * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn mean_min_max(values: &[f64]) -> (f64, f64, f64) {
    if values.is_empty() {
        return (0.0, 0.0, 0.0);
    }
    let mean = values.iter().sum::<f64>() / values.len() as f64;
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (mean, min, max)
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

struct RunInfo {
    protocol: Protocol,
    url: String,
    streams: u32,
    per_connection: u32,
    connections: u64,
    open_seconds: f64,
    hold_seconds: f64,
    max_alive: u64,
    alive_at_end: u64,
    interrupted: bool,
    nofile_limit: u64,
}

fn report(info: &RunInfo, summary: &mut Summary, json: bool) {
    summary.headers_ms.sort_by(f64::total_cmp);
    let (p50, p99, max) = (
        percentile(&summary.headers_ms, 50.0),
        percentile(&summary.headers_ms, 99.0),
        summary.headers_ms.last().copied().unwrap_or(0.0),
    );
    let (ping_mean, ping_min, ping_max) = mean_min_max(&summary.pings_per_min);
    let ended_early: u64 = summary.ended_early.values().sum();
    if json {
        let value = serde_json::json!({
            "protocol": info.protocol.name(),
            "url": info.url,
            "streams": info.streams,
            "per_connection": info.per_connection,
            "connections": info.connections,
            "started": summary.started,
            "opened": summary.opened,
            "failed": summary.failed_total(),
            "failed_by_kind": summary.failed,
            "failure_examples": summary.failure_examples,
            "stopped_before_open": summary.stopped_before_open,
            "uncollected": summary.uncollected,
            "max_alive": info.max_alive,
            "alive_at_end": info.alive_at_end,
            "held_to_the_end": summary.held_to_the_end,
            "ended_early": ended_early,
            "ended_early_by_kind": summary.ended_early,
            "end_examples": summary.end_examples,
            "open_seconds": round2(info.open_seconds),
            "hold_seconds": round2(info.hold_seconds),
            "interrupted": info.interrupted,
            "headers_ms_p50": round2(p50),
            "headers_ms_p99": round2(p99),
            "headers_ms_max": round2(max),
            "pings_total": summary.pings,
            "pings_per_min_mean": round2(ping_mean),
            "pings_per_min_min": round2(ping_min),
            "pings_per_min_max": round2(ping_max),
            "other_comments_total": summary.other_comments,
            "events_total": summary.events,
            "nofile_limit": info.nofile_limit,
        });
        println!("{value}");
        return;
    }
    println!(
        "hold_streams report: {} streams requested over {} to {}",
        info.streams,
        info.protocol.name(),
        info.url
    );
    if info.protocol == Protocol::H2 {
        println!(
            "  connections:        {} ({} streams each)",
            info.connections, info.per_connection
        );
    }
    println!(
        "  opened:             {} of {} started, in {:.1} s (headers p50 {p50:.1} ms, p99 {p99:.1} ms, max {max:.1} ms)",
        summary.opened, summary.started, info.open_seconds
    );
    println!(
        "  failed to open:     {} {:?}",
        summary.failed_total(),
        summary.failed
    );
    for (kind, message) in &summary.failure_examples {
        println!("    e.g. {kind}: {message}");
    }
    if summary.stopped_before_open > 0 || summary.uncollected > 0 {
        println!(
            "  stopped before open: {}, not collected: {}",
            summary.stopped_before_open, summary.uncollected
        );
    }
    println!(
        "  max alive:          {} (alive when the hold ended: {})",
        info.max_alive, info.alive_at_end
    );
    println!(
        "  ended early:        {ended_early} {:?}",
        summary.ended_early
    );
    for (kind, message) in &summary.end_examples {
        println!("    e.g. {kind}: {message}");
    }
    println!(
        "  held:               {:.1} s{}",
        info.hold_seconds,
        if info.interrupted {
            " (interrupted)"
        } else {
            ""
        }
    );
    println!(
        "  pings/stream/min:   mean {ping_mean:.2}, min {ping_min:.2}, max {ping_max:.2} ({} pings in all)",
        summary.pings
    );
    println!("  other comments:     {}", summary.other_comments);
    println!("  data events:        {}", summary.events);
}

async fn run(args: Args, target: Target, nofile_limit: u64) -> ExitCode {
    let target = Arc::new(target);
    let live = Arc::new(Live::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let open_timeout = Duration::from_secs(args.open_timeout);
    let mut tasks: JoinSet<Record> = JoinSet::new();
    let mut summary = Summary::default();
    let mut connections: u64 = 0;

    let start = Instant::now();
    let ramp_time = Duration::from_secs_f64(f64::from(args.streams) / f64::from(args.ramp));
    let open_deadline = start + ramp_time + open_timeout + OPEN_MARGIN;
    let mut progress = tokio::time::interval(Duration::from_secs(1));
    progress.set_missed_tick_behavior(MissedTickBehavior::Skip);
    progress.tick().await;
    let mut ramp_tick = tokio::time::interval(RAMP_TICK);
    ramp_tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let interrupt = interrupted();
    tokio::pin!(interrupt);
    let mut was_interrupted = false;

    // Ramp: bounded by the stream count and the open deadline.
    let mut started: u32 = 0;
    let mut connection: Result<http2::SendRequest<Full<Bytes>>, String> =
        Err("no connection yet".into());
    while started < args.streams && Instant::now() < open_deadline {
        tokio::select! {
            _ = &mut interrupt => { was_interrupted = true; break; }
            _ = progress.tick() => {
                eprintln!("{}", live.progress_line(start.elapsed(), started, args.streams));
                continue;
            }
            _ = ramp_tick.tick() => {}
        }
        let due = (start.elapsed().as_secs_f64() * f64::from(args.ramp)).ceil();
        let due = if due >= f64::from(args.streams) {
            args.streams
        } else {
            due as u32
        };
        while started < due {
            let route = match args.protocol {
                Protocol::Http1 => {
                    let last = u32::from(args.source_addrs);
                    match target.addr.ip() {
                        IpAddr::V4(_) => {
                            let host = 1 + (started % last) as u8;
                            Route::Http1(IpAddr::V4(Ipv4Addr::new(127, 0, 0, host)))
                        }
                        IpAddr::V6(_) => Route::Http1(IpAddr::V6(Ipv6Addr::LOCALHOST)),
                    }
                }
                Protocol::H2 => {
                    if started % args.per_connection == 0 {
                        connections += 1;
                        connection =
                            match tokio::time::timeout(open_timeout, open_h2(target.addr)).await {
                                Ok(result) => result,
                                Err(_) => {
                                    Err(format!("connect: no connection within {open_timeout:?}"))
                                }
                            };
                    }
                    match &connection {
                        Ok(sender) => Route::H2(sender.clone()),
                        Err(e) => {
                            summary.add(failed(&live, "connect", e.clone()));
                            started += 1;
                            continue;
                        }
                    }
                }
            };
            tasks.spawn(run_stream(
                route,
                Arc::clone(&target),
                args.protocol,
                open_timeout,
                Arc::clone(&live),
                stop_rx.clone(),
            ));
            started += 1;
        }
    }
    // The streams keep their own handles; the connection lives as long as they do.
    drop(connection);
    summary.started = started;

    // Wait until every started stream has its headers or has failed.
    let settled =
        |live: &Live| Live::get(&live.opened) + Live::get(&live.failed) >= u64::from(started);
    let mut poll = tokio::time::interval(Duration::from_millis(20));
    while !was_interrupted && !settled(&live) && Instant::now() < open_deadline {
        tokio::select! {
            _ = &mut interrupt => was_interrupted = true,
            _ = progress.tick() => {
                eprintln!("{}", live.progress_line(start.elapsed(), started, args.streams));
            }
            _ = poll.tick() => {}
        }
    }
    let open_seconds = start.elapsed().as_secs_f64();
    if settled(&live) {
        eprintln!(
            "hold_streams: all open: opened={} failed={} alive={} in {open_seconds:.1}s; holding {}s",
            Live::get(&live.opened),
            Live::get(&live.failed),
            Live::get(&live.alive),
            args.hold
        );
    } else if !was_interrupted {
        eprintln!(
            "hold_streams: not all open by the deadline: started={started} opened={} failed={}; \
             holding the open ones for {}s",
            Live::get(&live.opened),
            Live::get(&live.failed),
            args.hold
        );
    }

    // Hold: bounded by --hold; ends early if interrupted or nothing is left alive.
    let hold_start = Instant::now();
    let hold_end = hold_start + Duration::from_secs(args.hold);
    while !was_interrupted && Instant::now() < hold_end {
        tokio::select! {
            _ = &mut interrupt => was_interrupted = true,
            _ = tokio::time::sleep_until(hold_end.into()) => {}
            _ = progress.tick() => {
                eprintln!("{}", live.progress_line(start.elapsed(), started, args.streams));
                if Live::get(&live.alive) == 0 && settled(&live) {
                    eprintln!("hold_streams: no stream left alive; ending the hold early");
                    break;
                }
            }
        }
    }
    let hold_seconds = hold_start.elapsed().as_secs_f64();
    let alive_at_end = Live::get(&live.alive);

    // Drop every stream and collect the records: bounded by the task count and COLLECT_TIMEOUT.
    let _ = stop_tx.send(true);
    let collect_deadline = tokio::time::Instant::now() + COLLECT_TIMEOUT;
    while !tasks.is_empty() {
        match tokio::time::timeout_at(collect_deadline, tasks.join_next()).await {
            Ok(Some(Ok(record))) => summary.add(record),
            Ok(Some(Err(e))) => summary.add(Record::Failed {
                kind: "task".into(),
                message: e.to_string(),
            }),
            Ok(None) => break,
            Err(_) => {
                summary.uncollected = tasks.len() as u64;
                tasks.abort_all();
                break;
            }
        }
    }

    let info = RunInfo {
        protocol: args.protocol,
        url: args.url.clone(),
        streams: args.streams,
        per_connection: args.per_connection,
        connections,
        open_seconds,
        hold_seconds,
        max_alive: Live::get(&live.max_alive),
        alive_at_end,
        interrupted: was_interrupted,
        nofile_limit,
    };
    report(&info, &mut summary, args.json);
    if summary.failed_total() > 0 || summary.opened < u64::from(args.streams) {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

/// Raises `RLIMIT_NOFILE`'s soft limit to its hard limit, as the gateway does; returns the soft
/// limit in force afterwards.
fn raise_nofile_limit() -> std::io::Result<u64> {
    tidegate::sys::raise_nofile_limit().map(|limit| limit.after)
}

fn main() -> ExitCode {
    let args = Args::parse();
    let target = match Target::parse(&args.url) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("hold_streams: {e}");
            return ExitCode::from(2);
        }
    };
    let nofile_limit = match raise_nofile_limit() {
        Ok(n) => n,
        Err(e) => {
            eprintln!("hold_streams: cannot raise the open-files limit: {e}");
            return ExitCode::from(2);
        }
    };
    let sockets_needed = match args.protocol {
        Protocol::H2 => u64::from(args.streams.div_ceil(args.per_connection)),
        Protocol::Http1 => u64::from(args.streams),
    };
    if sockets_needed + 64 > nofile_limit {
        eprintln!(
            "hold_streams: {sockets_needed} sockets needed but the open-files limit is \
             {nofile_limit}; use fewer streams (or h2 with more per connection)"
        );
        return ExitCode::from(2);
    }
    eprintln!(
        "hold_streams: {} streams over {} to {} (open-files limit {nofile_limit})",
        args.streams,
        args.protocol.name(),
        target.addr
    );
    let runtime = if args.threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(usize::from(args.threads))
            .enable_all()
            .build()
    };
    match runtime {
        Ok(runtime) => runtime.block_on(run(args, target, nofile_limit)),
        Err(e) => {
            eprintln!("hold_streams: cannot start the async runtime: {e}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_urls() {
        assert!(Target::parse("http://127.0.0.1:8080").is_ok());
        assert!(Target::parse("http://127.0.0.5:8080/").is_ok());
        assert!(Target::parse("http://[::1]:8080").is_ok());
        assert!(Target::parse("http://localhost:8080").is_ok());
        assert!(Target::parse("http://10.0.0.1:8080").is_err());
        assert!(Target::parse("http://example.com").is_err());
        assert!(Target::parse("https://127.0.0.1:8080").is_err());
        assert!(Target::parse("http://127.0.0.1:8080/v1").is_err());
    }

    #[test]
    fn lines_across_frames() {
        let live = Live::default();
        let mut counts = BodyCounts::default();
        let mut lines = LineSplitter::default();
        for chunk in [
            &b": pi"[..],
            b"ng\n\ndata: {\"a\":1}\r\n\r\n:ping\n",
            b": keep\n",
            b"data: {\"error\":{}}\n\ndata: [DO",
            b"NE]\n\n",
        ] {
            lines.feed(chunk, |line| counts.line(line, &live));
        }
        assert_eq!(counts.pings, 2);
        assert_eq!(counts.other_comments, 1);
        assert_eq!(counts.events, 3);
        assert!(counts.done);
        assert!(counts.error_event);
        assert_eq!(Live::get(&live.pings), 2);
    }
}
