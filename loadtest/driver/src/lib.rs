//! `tidegate-bench`: a high-concurrency load driver for streaming chat completions.
//!
//! k6 needs 1–5 MB per virtual user; this driver holds a stream in a few kilobytes, so 10,000
//! concurrent streams fit in a single small process. It opens `--streams` streaming chat
//! completions against a loopback `--url` (a gateway, or the mock directly as the reference),
//! `--ramp` new ones per second, over HTTP/1.1 (one connection per stream, spread over source
//! addresses 127.0.0.1 … 127.0.0.`--source-addrs`) or cleartext HTTP/2 (`--per-connection`
//! streams per connection). Each stream asks the mock (by `x-mock-*` headers) for `--chunks`
//! chunks every `--chunk-delay-ms`, each stamped with its send time, and is read to its end:
//!
//! * time to first event (from the start of the request) and, per event, receive time − the
//!   mock's `sent_us` stamp (same machine, same clock): p50/p90/p99/max ([`stats`]);
//! * streams completed, failed by kind (never retried), the most alive at once, events/s and
//!   bytes/s, heartbeats;
//! * once a second, the RSS and CPU time of the processes named by `--pid` ([`procfs`]), and a
//!   progress line on stderr.
//!
//! At the end: a table on stdout, `--json FILE`, `--svg FILE` ([`report`], [`chart`]). Exit
//! code 0 when every stream completed, 1 otherwise, 2 for bad arguments.
//!
//! Hold mode (`--hold D`) measures what idle streams cost instead (`loadtest/idle-streams.sh`):
//! the streams open the same way, and once every one has its response headers or has failed,
//! `all open` goes to stderr and they are held for D, counting heartbeats, comments and events
//! per stream and noting those that end early (`[DONE]`, an error event, end of body, reset);
//! then all are cancelled. Exit code 0 when every stream was held to the end.
//!
//! Clients that go away (`--drop-after-events N`, `--drop-after-ms M`, `--stall-after-headers`)
//! make the trouble one client can cause for others on a shared upstream connection
//! (`loadtest/waves.sh`): each stream is dropped after N events, or M ms after its headers,
//! reading the body meanwhile or, stalled, none of it. They count as `dropped`, not failed; a
//! run of them succeeds when every stream completed or was dropped.
//!
//! `--api responses` runs the same streams against OpenAI's Responses API (`POST /v1/responses`):
//! a stream ends with its terminal event (`response.completed`, `response.incomplete`; a
//! `response.failed` is a failure) instead of `[DONE]`, and its first event is its first
//! `*.delta` (the first token).
//!
//! [`client`] has one stream's life; [`sse`] the event parsing and classification.

pub mod chart;
pub mod client;
pub mod procfs;
pub mod report;
pub mod requests;
pub mod sse;
pub mod stats;
pub mod tls;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::ValueEnum;
use tokio::task::JoinSet;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use client::{
    H2Slot, Outcome, RequestOptions, RequestSpec, Route, StreamContext, StreamRecord, Target,
    WalkAway,
};
use procfs::Watched;
use report::{HoldRun, ProcPoint, Report, Sample};
use stats::{Failures, Live, Spread};
use tidegate::signals::interrupted;

/// Exit code when a stream failed or the run stopped before every stream completed.
pub const EXIT_FAILED: u8 = 1;
/// Exit code for bad arguments (as clap uses for its own errors).
pub const EXIT_USAGE: u8 = 2;

/// Upper bound on `--streams`, so a typo cannot ask for millions of sockets or tasks.
pub const MAX_STREAMS: u32 = 200_000;
/// The gateway's default limit of concurrent streams per HTTP/2 connection (`http2.max_concurrent_streams`), the cap on
/// `--per-connection`.
pub const MAX_PER_CONNECTION: u32 = tidegate::config::DEFAULT_H2_MAX_CONCURRENT_STREAMS;
/// Descriptors kept free for everything that is not a stream socket.
const SPARE_FDS: u64 = 64;
/// How often the ramp starts the streams that are due.
const RAMP_TICK: Duration = Duration::from_millis(10);
/// How long cancelled streams get to finish their tasks once the run stops early.
const COLLECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Default per-stream timeout without mock headers (a real model's answer can be slow).
const DEFAULT_STREAM_TIMEOUT_REAL: Duration = Duration::from_secs(300);
/// Added to chunks × delay for the default per-stream timeout with mock headers.
const STREAM_TIMEOUT_MARGIN: Duration = Duration::from_secs(30);
/// Upper bound on `--hold`, so a typo cannot park thousands of sockets for a year.
pub const MAX_HOLD: Duration = Duration::from_secs(24 * 3600);
/// Default cap, in hold mode, on a stream's wait for its response headers.
const DEFAULT_HOLD_HEADERS_TIMEOUT: Duration = Duration::from_secs(30);
/// How often hold mode checks whether every stream has its headers or has failed.
const SETTLE_POLL: Duration = Duration::from_millis(20);
/// Streams open for less than this say nothing about a per-minute heartbeat rate.
const MIN_RATED_OPEN: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// HTTP/1.1, one connection per stream
    Http1,
    /// Cleartext HTTP/2 with prior knowledge, --per-connection streams per connection
    H2,
}

impl Protocol {
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Http1 => "http1",
            Protocol::H2 => "h2",
        }
    }
}

/// Which OpenAI API the streams use.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Api {
    /// Chat completions: POST /v1/chat/completions, chunks ending with data: [DONE]
    #[default]
    Chat,
    /// The Responses API: POST /v1/responses, typed events ending with a terminal event
    /// (response.completed or response.incomplete; response.failed is a failure)
    Responses,
}

impl Api {
    pub fn name(self) -> &'static str {
        match self {
            Api::Chat => "chat",
            Api::Responses => "responses",
        }
    }

    /// The path every stream posts to.
    pub fn path(self) -> &'static str {
        match self {
            Api::Chat => "/v1/chat/completions",
            Api::Responses => "/v1/responses",
        }
    }

    /// What a complete stream carries before its body ends, for the messages.
    pub fn end_marker(self) -> &'static str {
        match self {
            Api::Chat => "data: [DONE]",
            Api::Responses => "a terminal event (response.completed or response.incomplete)",
        }
    }
}

/// Arguments of `tidegate-bench`.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Base URL of the gateway, or of the mock as the reference, e.g. http://127.0.0.1:8080
    /// (loopback only, no path: the --api's path, /v1/chat/completions or /v1/responses, is
    /// appended); https:// needs --ca-file
    #[arg(long, value_name = "URL")]
    pub url: String,
    /// chat (streaming chat completions) or responses (the Responses API, POST /v1/responses
    /// with "input"; a stream ends with its terminal event, and time to first event is to the
    /// first *.delta event, the first token)
    #[arg(long, value_enum, default_value_t = Api::Chat)]
    pub api: Api,
    /// TLS to an https:// --url, trusting only the CA certificate(s) in this PEM file; ALPN
    /// offers the --protocol's name alone (h2 or http/1.1), and every connection makes a full
    /// handshake (no session resumption)
    #[arg(long, value_name = "PEM")]
    pub ca_file: Option<PathBuf>,
    /// Streams to run in all (each once, never retried)
    #[arg(long, default_value_t = 1000, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_STREAMS)))]
    pub streams: u32,
    /// New streams per second
    #[arg(long, default_value_t = 500, value_name = "R",
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub ramp: u32,
    /// http1 (one connection per stream) or h2 (cleartext with prior knowledge, or ALPN over
    /// TLS)
    #[arg(long, value_enum, default_value_t = Protocol::Http1)]
    pub protocol: Protocol,
    /// h2 only: streams per connection (at most the gateway's 256)
    #[arg(long, default_value_t = 100, value_name = "M",
          value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_PER_CONNECTION)))]
    pub per_connection: u32,
    /// http1 only: spread connections over source addresses 127.0.0.1 .. 127.0.0.X
    #[arg(long, default_value_t = 16, value_name = "X",
          value_parser = clap::value_parser!(u8).range(1..=254))]
    pub source_addrs: u8,
    /// Content chunks per stream (sent to the mock as x-mock-chunks)
    #[arg(long, default_value_t = 30, value_name = "N",
          value_parser = clap::value_parser!(u32).range(0..=1_000_000))]
    pub chunks: u32,
    /// Delay between chunks in ms (sent to the mock as x-mock-chunk-delay-ms)
    #[arg(long, default_value_t = 1000, value_name = "MS",
          value_parser = clap::value_parser!(u64).range(0..=600_000))]
    pub chunk_delay_ms: u64,
    /// Send no x-mock-* headers (for a real upstream; no per-event latency then)
    #[arg(long)]
    pub no_mock_headers: bool,
    /// The request's model (the mock's fault models work too, e.g. fail-midstream)
    #[arg(long, default_value = tidegate::mock::DEFAULT_MODEL, value_name = "NAME")]
    pub model: String,
    /// Sent as Authorization: Bearer KEY
    #[arg(
        long,
        env = "TIDEGATE_BENCH_API_KEY",
        hide_env_values = true,
        value_name = "KEY"
    )]
    pub api_key: Option<String>,
    /// Cap on the whole run ("90s", "10m"); streams still running then are cancelled. With
    /// --hold it must exceed the ramp (streams / ramp) plus the hold
    #[arg(long, default_value = "10m", value_name = "DURATION", value_parser = parse_duration)]
    pub duration: Duration,
    /// Cap on one stream, from its request to the end of its body; with --hold, on the wait for
    /// its response headers only [default: (chunks + 1) × delay + 30s with mock headers, else
    /// 300s; 30s with --hold]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub stream_timeout: Option<Duration>,
    /// Hold mode: once every stream has its response headers or has failed, print "all open"
    /// on stderr, hold them all open this long ("90s", at most 24h) counting heartbeats, then
    /// cancel them; a stream that ends before that ended early
    #[arg(long, value_name = "DURATION", value_parser = parse_hold)]
    pub hold: Option<Duration>,
    /// A client that goes away: drop each stream (and over http1 its connection) right after
    /// the read that completed its N-th event, unless `[DONE]` or an error event came first; it
    /// counts as dropped, not failed
    #[arg(long, value_name = "N", conflicts_with_all = ["hold", "stall_after_headers"],
          value_parser = clap::value_parser!(u32).range(1..))]
    pub drop_after_events: Option<u32>,
    /// Drop each stream this many ms after its response headers (with --drop-after-events:
    /// whichever comes first); it counts as dropped, not failed
    #[arg(long, value_name = "MS", conflicts_with = "hold",
          value_parser = clap::value_parser!(u64).range(0..=3_600_000))]
    pub drop_after_ms: Option<u64>,
    /// A client that hangs: read nothing after the response headers, so the body fills the
    /// socket and the target's buffers behind it, then go away after --drop-after-ms (needed).
    /// Use http1: over h2 the stalled streams also fill the driver's own connection windows
    #[arg(long, requires = "drop_after_ms", conflicts_with = "hold")]
    pub stall_after_headers: bool,
    /// Runtime worker threads of the driver
    #[arg(long, default_value_t = 1, value_name = "N",
          value_parser = clap::value_parser!(u16).range(1..=64))]
    pub threads: u16,
    /// A process to sample once a second (RSS, CPU time): PID or NAME=PID; repeatable, e.g.
    /// --pid gateway=123 --pid mock=456 (a bare PID is named "gateway")
    #[arg(long = "pid", value_name = "[NAME=]PID", value_parser = parse_pid)]
    pub pids: Vec<(String, u32)>,
    /// Write the report as JSON to FILE
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Write an SVG chart (alive streams, per-event latency, RSS over time) to FILE
    #[arg(long, value_name = "FILE")]
    pub svg: Option<PathBuf>,
    /// No progress lines on stderr
    #[arg(long)]
    pub quiet: bool,
    /// Request mode: instead of streams, send requests to PATH (/healthz; a /v1/ path gets a
    /// small non-streaming POST, a Responses one for /v1/responses, else chat) back to back on --connections keep-alive HTTP/1.1
    /// connections for --duration; report requests/s by status and each --pid's CPU per request
    #[arg(long, value_name = "PATH",
          conflicts_with_all = ["hold", "drop_after_events", "drop_after_ms", "stall_after_headers"])]
    pub requests: Option<String>,
    /// Request mode: concurrent connections (clients)
    #[arg(long, default_value_t = 32, value_name = "N", requires = "requests",
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub connections: u32,
    /// Request mode: a new connection for every request, bound to the next source address of
    /// 127.10.0.1, 127.10.0.2, ... (a client spraying addresses)
    #[arg(long, requires = "requests")]
    pub new_address_per_request: bool,
}

/// A duration flag: "90s", "10m", "500ms", "1h 30m" (humantime's syntax; a unit is required).
fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|e| e.to_string())
}

/// A duration as the messages print it: in the largest of h, m and s that divides it exactly,
/// else in ms ("10m", "90s", "24h", "1500ms").
fn format_duration(duration: Duration) -> String {
    let millis = duration.as_millis();
    if millis == 0 {
        return "0s".to_owned();
    }
    for (per_unit, unit) in [(3_600_000, "h"), (60_000, "m"), (1_000, "s")] {
        if millis % per_unit == 0 {
            return format!("{}{unit}", millis / per_unit);
        }
    }
    format!("{millis}ms")
}

fn parse_hold(text: &str) -> Result<Duration, String> {
    let hold = parse_duration(text)?;
    if hold > MAX_HOLD {
        return Err(format!(
            "{text:?} is longer than {}, the most a hold may last",
            format_duration(MAX_HOLD)
        ));
    }
    Ok(hold)
}

fn parse_pid(text: &str) -> Result<(String, u32), String> {
    let (name, pid) = match text.split_once('=') {
        Some((name, pid)) => (name, pid),
        None => ("gateway", text),
    };
    let valid_name = !name.is_empty()
        && name.len() <= 32
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if !valid_name {
        return Err(format!(
            "{name:?}: a name is 1-32 of [A-Za-z0-9_.-] (as in gateway=123)"
        ));
    }
    let pid: u32 = pid
        .parse()
        .map_err(|_| format!("{pid:?} is not a process id"))?;
    if pid == 0 {
        return Err("0 is not a process id".into());
    }
    Ok((name.to_owned(), pid))
}

impl BenchArgs {
    /// The per-stream timeout in force (in hold mode, on the wait for response headers).
    pub fn effective_stream_timeout(&self) -> Duration {
        self.stream_timeout.unwrap_or_else(|| {
            if self.hold.is_some() {
                DEFAULT_HOLD_HEADERS_TIMEOUT
            } else if self.no_mock_headers {
                DEFAULT_STREAM_TIMEOUT_REAL
            } else {
                let stream = Duration::from_millis(self.chunk_delay_ms)
                    .saturating_mul(self.chunks.saturating_add(1));
                stream.saturating_add(STREAM_TIMEOUT_MARGIN)
            }
        })
    }

    /// Whether, and when, each stream goes away before its end.
    pub fn walk_away(&self) -> Result<WalkAway, String> {
        WalkAway::from_flags(
            self.drop_after_events,
            self.drop_after_ms,
            self.stall_after_headers,
        )
    }

    /// How long the ramp takes to start every stream.
    pub fn ramp_time(&self) -> Duration {
        Duration::from_secs_f64(f64::from(self.streams) / f64::from(self.ramp))
    }

    /// Sockets the driver needs at most: one per stream on HTTP/1.1, one per connection on h2.
    pub fn sockets_needed(&self) -> u64 {
        match self.protocol {
            Protocol::Http1 => u64::from(self.streams),
            Protocol::H2 => u64::from(self.streams.div_ceil(self.per_connection)),
        }
    }
}

/// Everything checked before the run: the target, the processes, the output files, the limit.
#[derive(Debug)]
struct Prepared {
    spec: RequestSpec,
    walk_away: WalkAway,
    watched: Vec<Watched>,
    nofile_limit: u64,
}

/// The TLS client for an `https://` target, which needs `--ca-file` (and a cleartext one
/// refuses it); `protocol` is offered by ALPN.
fn tls_for(
    args: &BenchArgs,
    target: &Target,
    protocol: Protocol,
) -> Result<Option<Arc<tls::TlsClient>>, String> {
    match (&args.ca_file, target.https) {
        (None, false) => Ok(None),
        (Some(ca_file), true) => {
            let ca_file = ca_file
                .to_str()
                .ok_or_else(|| format!("--ca-file {}: not UTF-8", ca_file.display()))?;
            tls::TlsClient::new(ca_file, &target.host, protocol).map(|c| Some(Arc::new(c)))
        }
        (None, true) => Err(format!(
            "--url {:?}: https:// needs --ca-file (the PEM of the CA to trust)",
            args.url
        )),
        (Some(_), false) => Err(format!(
            "--ca-file is for an https:// --url, not {:?}",
            args.url
        )),
    }
}

fn prepare(args: &BenchArgs) -> Result<Prepared, String> {
    let target = Target::parse(&args.url)?;
    let tls = tls_for(args, &target, args.protocol)?;
    if args.duration.is_zero() {
        return Err("--duration must be more than 0".into());
    }
    if args.stream_timeout.is_some_and(|t| t.is_zero()) {
        return Err("--stream-timeout must be more than 0".into());
    }
    if let Some(hold) = args.hold {
        // The last stream starts after the ramp and the hold begins after it: a cap that does
        // not leave room for both would cut every hold short.
        let ramp = args.ramp_time();
        let needed = ramp.saturating_add(hold);
        if args.duration <= needed {
            return Err(format!(
                "--hold {} cannot end within --duration {}: starting {} streams at {}/s takes \
                 {:.1}s, so --duration must be more than {:.1}s, plus time for the last \
                 headers (at most --stream-timeout, {})",
                format_duration(hold),
                format_duration(args.duration),
                args.streams,
                args.ramp,
                ramp.as_secs_f64(),
                needed.as_secs_f64(),
                format_duration(args.effective_stream_timeout()),
            ));
        }
    }
    let options = RequestOptions {
        api: args.api,
        model: args.model.clone(),
        api_key: args.api_key.clone(),
        mock: (!args.no_mock_headers).then_some((args.chunks, args.chunk_delay_ms)),
    };
    let spec = RequestSpec::new(target, args.protocol, tls, &options)?;
    // clap already refuses the bad combinations; this is the one place that builds the value.
    let walk_away = args.walk_away()?;

    let ticks = procfs::clock_ticks();
    let mut watched = Vec::new();
    for (name, pid) in &args.pids {
        if watched.iter().any(|w: &Watched| &w.name == name) {
            return Err(format!("--pid: the name {name:?} is given twice"));
        }
        procfs::sample(*pid, ticks).map_err(|e| format!("--pid {name}={pid}: {e}"))?;
        watched.push(Watched::new(name.clone(), *pid));
    }
    // The driver itself, always: its own CPU says whether it kept up.
    if !watched.iter().any(|w| w.name == "bench") {
        watched.push(Watched::new("bench".into(), std::process::id()));
    }

    for path in [&args.json, &args.svg].into_iter().flatten() {
        check_writable(path)?;
    }

    let limit = tidegate::sys::raise_nofile_limit()
        .map_err(|e| format!("cannot raise the open-files limit: {e}"))?;
    let needed = args.sockets_needed();
    if needed + SPARE_FDS > limit.after {
        return Err(format!(
            "{needed} streams over {} need {needed} sockets, but the open-files limit is {} \
             (hard limit {}); use fewer streams, or --protocol h2",
            args.protocol.name(),
            limit.after,
            limit.hard
        ));
    }
    Ok(Prepared {
        spec,
        walk_away,
        watched,
        nofile_limit: limit.after,
    })
}

/// Creates (or truncates) an output file now, so a bad path is an argument error, not a lost
/// report at the end.
fn check_writable(path: &Path) -> Result<(), String> {
    std::fs::File::create(path)
        .map(drop)
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// Runs `tidegate-bench`; returns the exit code.
pub fn main(args: BenchArgs) -> ExitCode {
    if let Some(path) = &args.requests {
        return requests_main(&args, path);
    }
    let (prepared, runtime) = match start(prepare(&args), args.threads) {
        Ok(both) => both,
        Err(code) => return code,
    };
    if !args.quiet {
        eprintln!(
            "tidegate-bench: {} streams{} over {}{} to {} at {}/s; {}{} (stream timeout {:?}, run \
             cap {:?}, open-files limit {})",
            args.streams,
            api_text(args.api),
            args.protocol.name(),
            if prepared.spec.tls.is_some() {
                " over TLS"
            } else {
                ""
            },
            prepared.spec.target.addr,
            args.ramp,
            if args.no_mock_headers {
                "no mock headers".to_owned()
            } else {
                format!("{} chunks every {} ms", args.chunks, args.chunk_delay_ms)
            },
            args.hold
                .map(|hold| format!("; hold {}", format_duration(hold)))
                .unwrap_or_default()
                + &walk_away_text(prepared.walk_away),
            args.effective_stream_timeout(),
            args.duration,
            prepared.nofile_limit
        );
        if let Some(warning) = hold_warning(&args) {
            eprintln!("tidegate-bench: warning: {warning}");
        }
    }
    let report = runtime.block_on(run(&args, prepared));
    // Stream tasks are all joined or aborted; connection tasks may linger on a closing socket.
    runtime.shutdown_timeout(Duration::from_secs(1));

    print!("{}", report.table());
    let mut code = if report.succeeded() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_FAILED)
    };
    if let Some(path) = &args.json {
        if let Err(e) = report.write_json(path) {
            eprintln!("tidegate-bench: {e}");
            code = ExitCode::from(EXIT_FAILED);
        }
    }
    if let Some(path) = &args.svg {
        if let Err(e) = chart::write_svg(path, &report) {
            eprintln!("tidegate-bench: {e}");
            code = ExitCode::from(EXIT_FAILED);
        }
    }
    code
}

/// What was prepared and the driver's runtime with `threads` workers, or the exit code: bad
/// arguments (`prepared` is an error, printed) or a runtime that cannot start.
fn start<T>(
    prepared: Result<T, String>,
    threads: u16,
) -> Result<(T, tokio::runtime::Runtime), ExitCode> {
    let prepared = prepared.map_err(|e| {
        eprintln!("tidegate-bench: {e}");
        ExitCode::from(EXIT_USAGE)
    })?;
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(usize::from(threads))
        .thread_name("bench")
        .enable_all()
        .build()
        .map(|runtime| (prepared, runtime))
        .map_err(|e| {
            eprintln!("tidegate-bench: cannot start the async runtime: {e}");
            ExitCode::from(EXIT_FAILED)
        })
}

/// Request mode ([`requests`]): the run and its table.
fn requests_main(args: &BenchArgs, path: &str) -> ExitCode {
    let plan = Target::parse(&args.url).and_then(|target| {
        if args.duration.is_zero() {
            return Err("--duration must be more than 0".into());
        }
        let limit = tidegate::sys::raise_nofile_limit()
            .map_err(|e| format!("cannot raise the open-files limit: {e}"))?;
        if u64::from(args.connections) + SPARE_FDS > limit.after {
            return Err(format!(
                "{} connections do not fit the open-files limit {}",
                args.connections, limit.after
            ));
        }
        let tls = tls_for(args, &target, Protocol::Http1)?;
        requests::RequestPlan::new(
            target.addr,
            tls,
            path,
            &args.model,
            args.connections,
            args.duration,
            args.new_address_per_request,
        )
    });
    let (plan, runtime) = match start(plan, args.threads) {
        Ok(both) => both,
        Err(code) => return code,
    };
    let report = runtime.block_on(requests::run(plan, &args.pids));
    runtime.shutdown_timeout(Duration::from_secs(1));
    print!("{}", report.table());
    if report.counts.errors == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_FAILED)
    }
}

/// `" (Responses API)"` after the stream count on the start line and the report's first line;
/// nothing for chat completions, the default.
pub(crate) fn api_text(api: Api) -> &'static str {
    match api {
        Api::Chat => "",
        Api::Responses => " (Responses API)",
    }
}

/// `"; each dropped after 1 event"` for the start line and the report's first line, or nothing.
pub(crate) fn walk_away_text(walk_away: WalkAway) -> String {
    match walk_away {
        WalkAway::Never => String::new(),
        other => format!("; {}", other.describe()),
    }
}

/// A hold whose streams the mock, if it gets the mock headers, ends before the hold does. Only
/// a warning: a gateway that does not forward `x-mock-*` leaves the mock's own pacing.
fn hold_warning(args: &BenchArgs) -> Option<String> {
    let hold = args.hold?;
    if args.no_mock_headers {
        return None;
    }
    let stream =
        Duration::from_millis(args.chunk_delay_ms).saturating_mul(args.chunks.saturating_add(1));
    (stream < args.ramp_time().saturating_add(hold)).then(|| {
        format!(
            "with --chunks {} --chunk-delay-ms {}, a mock upstream ends each stream after about \
             {:.1}s, before the hold ends; for idle streams use e.g. --chunks 1 \
             --chunk-delay-ms 600000, or --no-mock-headers",
            args.chunks,
            args.chunk_delay_ms,
            stream.as_secs_f64()
        )
    })
}

/// Why the run stopped before every stream had ended on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    DurationCap,
    Interrupted,
}

/// Tallies of finished streams. Every stream lands in exactly one of `completed`, `cancelled`,
/// `dropped`, `failures`, `held` and `ended_early`.
#[derive(Debug, Default, Clone)]
pub struct Tally {
    pub completed: u64,
    pub cancelled: u64,
    /// Streams the client went away from on purpose (`--drop-after-*`, `--stall-after-headers`).
    pub dropped: u64,
    /// Every failure; in hold mode only those before the response headers.
    pub failures: Failures,
    /// Hold mode: streams still open when the hold ended.
    pub held: u64,
    /// Hold mode: streams that opened and ended before the hold did, by how (`done` for
    /// `[DONE]`, else as in `failures`).
    pub ended_early: Failures,
    /// `: ping` comments per minute of each stream that was open at least [`MIN_RATED_OPEN`].
    pub pings_per_min: Spread,
    /// Events with data per opened stream.
    pub events_per_stream: Spread,
    /// The streams' API, for what a `done` end was.
    pub api: Api,
}

/// How a finished stream counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Counting {
    /// Streams run to their end.
    Run,
    /// Hold mode; `over` once the hold has run its full length (so the cancel was its end).
    Hold { over: bool },
}

impl Tally {
    fn add(&mut self, record: StreamRecord, counting: Counting) {
        let StreamRecord {
            outcome,
            open_for,
            counts,
        } = record;
        if let Some(open_for) = open_for {
            self.events_per_stream.record(counts.events as f64);
            if open_for >= MIN_RATED_OPEN {
                self.pings_per_min
                    .record(counts.pings as f64 * 60.0 / open_for.as_secs_f64());
            }
        }
        let opened = open_for.is_some();
        match (counting, outcome) {
            (Counting::Hold { over: true }, Outcome::Cancelled) if opened => self.held += 1,
            (_, Outcome::Cancelled) => self.cancelled += 1,
            // Not in hold mode (the flags exclude it), but counted the same way if it were.
            (_, Outcome::Dropped) => self.dropped += 1,
            (Counting::Run, Outcome::Completed) => self.completed += 1,
            (Counting::Hold { .. }, Outcome::Completed) => self.ended_early.add(
                "done".into(),
                format!(
                    "{} and the end of the body before the hold ended",
                    self.api.end_marker()
                ),
            ),
            (Counting::Hold { .. }, Outcome::Failed { kind, message }) if opened => {
                self.ended_early.add(kind, message)
            }
            (_, Outcome::Failed { kind, message }) => self.failures.add(kind, message),
        }
    }
}

/// The per-second sampler: turns the live counters into [`Sample`]s and progress lines.
struct Sampler {
    start: Instant,
    ticks_per_second: u64,
    /// Hold mode: samples carry the streams that ended early.
    hold: bool,
    /// Clients that go away: samples carry the streams dropped.
    dropping: bool,
    last_t: f64,
    last: (u64, u64, u64, u64, u64),
}

impl Sampler {
    fn sample(
        &mut self,
        live: &Live,
        tally: &Tally,
        watched: &mut [Watched],
        started: u32,
    ) -> Sample {
        let t = self.start.elapsed().as_secs_f64();
        let span = (t - self.last_t).max(1e-3);
        let now = (
            Live::get(&live.opened),
            tally.completed,
            tally.failures.total(),
            Live::get(&live.events),
            Live::get(&live.bytes),
        );
        let rate = |now: u64, then: u64| now.saturating_sub(then) as f64 / span;
        let interval = live.latency_us_interval.take();
        let mut processes = BTreeMap::new();
        for w in watched.iter_mut() {
            if let Some(s) = w.sample(self.ticks_per_second) {
                processes.insert(
                    w.name.clone(),
                    ProcPoint {
                        rss_kib: s.rss_kib,
                        cpu_s: s.cpu_seconds,
                    },
                );
            }
        }
        let sample = Sample {
            t_s: t,
            interval_s: t - self.last_t,
            started: u64::from(started),
            opened: now.0,
            alive: Live::get(&live.alive),
            completed: now.1,
            failed: now.2,
            events: now.3,
            bytes: now.4,
            pings: Live::get(&live.pings),
            ended_early: self.hold.then(|| tally.ended_early.total()),
            dropped: self.dropping.then_some(tally.dropped),
            opened_per_s: rate(now.0, self.last.0),
            completed_per_s: rate(now.1, self.last.1),
            failed_per_s: rate(now.2, self.last.2),
            events_per_s: rate(now.3, self.last.3),
            bytes_per_s: rate(now.4, self.last.4),
            latency_count: interval.count(),
            latency_p50_us: interval.percentile(50.0),
            latency_p99_us: interval.percentile(99.0),
            processes,
        };
        self.last_t = t;
        self.last = now;
        sample
    }
}

/// A progress interval shorter than this (the last one, cut by the end of the run) is labelled
/// partial: its per-second rates are scaled from its real length, but from few events.
const PARTIAL_INTERVAL_S: f64 = 0.95;

fn progress_line(sample: &Sample, streams: u32, previous: Option<&Sample>) -> String {
    let ms = |us: Option<u64>| match us {
        Some(us) => format!("{:.2}ms", us as f64 / 1e3),
        None => "-".to_owned(),
    };
    let when = if sample.interval_s < PARTIAL_INTERVAL_S {
        format!(
            "t={:.1}s (partial: rates over the last {:.2}s)",
            sample.t_s, sample.interval_s
        )
    } else {
        format!("t={:.0}s", sample.t_s)
    };
    let mut line = format!(
        "bench: {when} started={}/{streams} alive={} opened/s={:.0} done/s={:.0} failed/s={:.0} \
         (failed={}) events/s={:.0} latency p50={} p99={}",
        sample.started,
        sample.alive,
        sample.opened_per_s,
        sample.completed_per_s,
        sample.failed_per_s,
        sample.failed,
        sample.events_per_s,
        ms(sample.latency_p50_us),
        ms(sample.latency_p99_us),
    );
    if let Some(dropped) = sample.dropped {
        line.push_str(&format!(" dropped={dropped}"));
    }
    if let Some(ended_early) = sample.ended_early {
        line.push_str(&format!(
            " ended_early={ended_early} pings={}",
            sample.pings
        ));
    }
    for (name, point) in &sample.processes {
        line.push_str(&format!(
            " | {name} {:.1}MiB",
            point.rss_kib as f64 / 1024.0
        ));
        if let Some(prev) = previous.and_then(|p| p.processes.get(name)) {
            let span = (sample.t_s - previous.map_or(0.0, |p| p.t_s)).max(1e-3);
            line.push_str(&format!(
                " cpu {:.0}%",
                (point.cpu_s - prev.cpu_s).max(0.0) / span * 100.0
            ));
        }
    }
    line
}

/// The source address of HTTP/1.1 stream number `index`.
fn source_address(target: IpAddr, index: u32, spread: u8) -> Option<IpAddr> {
    match target {
        IpAddr::V4(_) => {
            let host = 1 + (index % u32::from(spread)) as u8;
            Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, host)))
        }
        // ::1 is a single address; let the system choose the port.
        IpAddr::V6(_) => None,
    }
}

/// Where a hold-mode run is.
#[derive(Debug, Clone, Copy)]
enum HoldPhase {
    /// Streams are still starting, or some have neither headers nor a failure yet.
    Opening,
    /// Every stream has its headers or has failed; they are held until `until`.
    Holding {
        since: Instant,
        until: tokio::time::Instant,
    },
    /// The hold lasted `held` (shorter than asked if the run stopped or no stream was left).
    Over { held: Duration },
}

impl HoldPhase {
    /// Ends a hold in progress now.
    fn end(&mut self) {
        if let HoldPhase::Holding { since, .. } = *self {
            *self = HoldPhase::Over {
                held: since.elapsed(),
            };
        }
    }
}

async fn run(args: &BenchArgs, prepared: Prepared) -> Report {
    let Prepared {
        spec,
        walk_away,
        mut watched,
        nofile_limit,
    } = prepared;
    let target_ip = spec.target.addr.ip();
    let live = Arc::new(Live::default());
    let cancel = CancellationToken::new();
    let ctx = Arc::new(StreamContext {
        spec: Arc::new(spec),
        live: Arc::clone(&live),
        timeout: args.effective_stream_timeout(),
        hold: args.hold.is_some(),
        cancel: cancel.clone(),
        walk_away,
    });
    let ticks_per_second = procfs::clock_ticks();
    let started_at_unix_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0);
    let start = Instant::now();
    let mut sampler = Sampler {
        start,
        ticks_per_second,
        hold: args.hold.is_some(),
        dropping: walk_away != WalkAway::Never,
        last_t: 0.0,
        last: (0, 0, 0, 0, 0),
    };
    let cap = tokio::time::Instant::from_std(start) + args.duration;
    // Set when every stream is cancelled (stop or end of the hold); tasks left then are aborted.
    let mut collect_deadline: Option<tokio::time::Instant> = None;
    let mut tasks: JoinSet<StreamRecord> = JoinSet::new();
    let mut tally = Tally {
        api: args.api,
        ..Tally::default()
    };
    // The first point: nothing started yet, and each process's idle RSS and CPU time.
    let mut timeline: Vec<Sample> = vec![sampler.sample(&live, &Tally::default(), &mut watched, 0)];
    let mut started: u32 = 0;
    let mut slot: Option<Arc<H2Slot>> = None;
    let mut connections: u64 = 0;
    let mut stop: Option<StopReason> = None;
    let mut abandoned: u64 = 0;
    let mut hold_phase = args.hold.map(|_| HoldPhase::Opening);
    let mut all_open_after: Option<Duration> = None;
    // The hold ran its full length: streams cancelled after that were held, not cut short.
    let mut hold_over = false;

    let mut ticker = tokio::time::interval_at(
        tokio::time::Instant::from_std(start) + Duration::from_secs(1),
        Duration::from_secs(1),
    );
    ticker.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let mut ramp = tokio::time::interval(RAMP_TICK);
    ramp.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let mut settle_poll = tokio::time::interval(SETTLE_POLL);
    settle_poll.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let interrupt = interrupted();
    tokio::pin!(interrupt);

    // Bounded: the ramp stops at --streams or at the stop, the hold at its end, every task ends
    // by its own timeout, the cancel, or the abort at `collect_deadline`; the cap bounds all.
    loop {
        let opening = matches!(hold_phase, Some(HoldPhase::Opening)) && collect_deadline.is_none();
        // In hold mode a failure is counted only if it came before the headers.
        if opening
            && started == args.streams
            && Live::get(&live.opened) + tally.failures.total() >= u64::from(started)
        {
            let now = Instant::now();
            let hold = args.hold.unwrap_or_default();
            all_open_after = Some(now - start);
            hold_phase = Some(HoldPhase::Holding {
                since: now,
                until: tokio::time::Instant::from_std(now + hold),
            });
            // Not a progress line: scripts wait for it (loadtest/idle-streams.sh), even --quiet.
            eprintln!(
                "bench: all open: opened={} failed={} alive={} in {:.1}s; holding {}",
                Live::get(&live.opened),
                tally.failures.total(),
                Live::get(&live.alive),
                (now - start).as_secs_f64(),
                format_duration(hold)
            );
        }
        let opening = matches!(hold_phase, Some(HoldPhase::Opening)) && collect_deadline.is_none();
        let ramping = stop.is_none() && started < args.streams;
        if !ramping {
            // The last connection closes once its streams are done.
            slot = None;
            if tasks.is_empty() {
                break;
            }
        }
        let hold_until = match hold_phase {
            Some(HoldPhase::Holding { until, .. }) if collect_deadline.is_none() => Some(until),
            _ => None,
        };
        let counting = match hold_phase {
            None => Counting::Run,
            Some(_) => Counting::Hold { over: hold_over },
        };
        tokio::select! {
            () = &mut interrupt, if collect_deadline.is_none() => {
                stop = Some(StopReason::Interrupted);
                cancel.cancel();
                collect_deadline = Some(tokio::time::Instant::now() + COLLECT_TIMEOUT);
                if let Some(phase) = hold_phase.as_mut() {
                    phase.end();
                }
            }
            () = tokio::time::sleep_until(cap), if collect_deadline.is_none() => {
                stop = Some(StopReason::DurationCap);
                cancel.cancel();
                collect_deadline = Some(tokio::time::Instant::now() + COLLECT_TIMEOUT);
                if let Some(phase) = hold_phase.as_mut() {
                    phase.end();
                }
            }
            () = tokio::time::sleep_until(hold_until.unwrap_or(cap)), if hold_until.is_some() => {
                hold_over = true;
                if let Some(phase) = hold_phase.as_mut() {
                    phase.end();
                }
                if !args.quiet {
                    eprintln!(
                        "bench: hold over: cancelling {} streams",
                        Live::get(&live.alive)
                    );
                }
                cancel.cancel();
                collect_deadline = Some(tokio::time::Instant::now() + COLLECT_TIMEOUT);
            }
            () = tokio::time::sleep_until(collect_deadline.unwrap_or(cap)),
                if collect_deadline.is_some() => {
                abandoned = tasks.len() as u64;
                // Aborts them all and waits until each has been dropped, so that their alive
                // guards are released before the last sample.
                tasks.shutdown().await;
                break;
            }
            joined = tasks.join_next(), if !tasks.is_empty() => match joined {
                Some(Ok(record)) => tally.add(record, counting),
                Some(Err(e)) => tally.failures.add("task".into(), e.to_string()),
                None => {}
            },
            _ = settle_poll.tick(), if opening => {}
            _ = ticker.tick() => {
                let sample = sampler.sample(&live, &tally, &mut watched, started);
                if !args.quiet {
                    eprintln!("{}", progress_line(&sample, args.streams, timeline.last()));
                }
                timeline.push(sample);
            }
            _ = ramp.tick(), if ramping => {
                let due = (start.elapsed().as_secs_f64() * f64::from(args.ramp)).ceil();
                let due = if due >= f64::from(args.streams) { args.streams } else { due as u32 };
                while started < due {
                    let route = match args.protocol {
                        Protocol::Http1 => {
                            Route::Http1(source_address(target_ip, started, args.source_addrs))
                        }
                        Protocol::H2 => {
                            if started % args.per_connection == 0 {
                                slot = Some(Arc::new(H2Slot::default()));
                                connections += 1;
                            }
                            Route::H2(Arc::clone(slot.get_or_insert_with(Default::default)))
                        }
                    };
                    tasks.spawn(client::run_stream(Arc::clone(&ctx), route));
                    started += 1;
                }
            }
        }
    }
    drop(slot);
    if let Some(phase) = hold_phase.as_mut() {
        if matches!(phase, HoldPhase::Holding { .. }) && !args.quiet {
            eprintln!("bench: no stream left open: the hold ends early");
        }
        phase.end();
    }
    // A last, partial interval, so the timeline and the processes' end figures cover the end.
    let last_sample = sampler.sample(&live, &tally, &mut watched, started);
    if !args.quiet {
        eprintln!(
            "{}",
            progress_line(&last_sample, args.streams, timeline.last())
        );
    }
    timeline.push(last_sample);
    let elapsed = start.elapsed();
    if args.protocol == Protocol::Http1 {
        connections = u64::from(started);
    }
    let hold = args.hold.map(|hold| HoldRun {
        hold,
        held: match hold_phase {
            Some(HoldPhase::Over { held }) => held,
            _ => Duration::ZERO,
        },
        all_open_after,
    });

    let tls = ctx.spec.tls.as_ref().map(|tls| {
        tls.negotiated()
            .unwrap_or("no handshake completed")
            .to_owned()
    });
    Report::build(report::RunData {
        args,
        tls,
        nofile_limit,
        started_at_unix_ms,
        elapsed,
        started,
        connections,
        tally,
        abandoned,
        stop,
        hold,
        live: &live,
        watched,
        timeline,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Wrapper {
        #[command(flatten)]
        args: BenchArgs,
    }

    fn parse(extra: &[&str]) -> Result<BenchArgs, clap::Error> {
        let mut argv = vec!["bench", "--url", "http://127.0.0.1:8080"];
        argv.extend_from_slice(extra);
        Wrapper::try_parse_from(argv).map(|w| w.args)
    }

    #[test]
    fn defaults_and_the_stream_timeout() {
        let args = parse(&[]).unwrap();
        assert_eq!(args.protocol, Protocol::Http1);
        assert_eq!(args.api, Api::Chat);
        assert_eq!(args.duration, Duration::from_secs(600));
        // 31 × 1 s + 30 s
        assert_eq!(args.effective_stream_timeout(), Duration::from_secs(61));
        assert_eq!(args.sockets_needed(), 1000);
        let args = parse(&["--no-mock-headers"]).unwrap();
        assert_eq!(args.effective_stream_timeout(), DEFAULT_STREAM_TIMEOUT_REAL);
        let args = parse(&[
            "--stream-timeout",
            "5s",
            "--protocol",
            "h2",
            "--streams",
            "1001",
        ])
        .unwrap();
        assert_eq!(args.effective_stream_timeout(), Duration::from_secs(5));
        assert_eq!(args.sockets_needed(), 11);
    }

    #[test]
    fn pids_with_and_without_names() {
        let args = parse(&["--pid", "123", "--pid", "mock=456"]).unwrap();
        assert_eq!(
            args.pids,
            vec![("gateway".to_owned(), 123), ("mock".to_owned(), 456)]
        );
        assert!(parse(&["--pid", "x"]).is_err());
        assert!(parse(&["--pid", "=5"]).is_err());
        assert!(parse(&["--pid", "a b=5"]).is_err());
        assert!(parse(&["--pid", "0"]).is_err());
    }

    #[test]
    fn bad_values_are_refused_by_the_parser() {
        assert!(parse(&["--streams", "0"]).is_err());
        assert!(parse(&["--per-connection", "257"]).is_err());
        assert!(parse(&["--duration", "10"]).is_err());
        assert!(parse(&["--protocol", "h3"]).is_err());
        assert!(parse(&["--api", "completions"]).is_err());
    }

    #[test]
    fn the_api_picks_the_path_and_the_end() {
        let args = parse(&["--api", "responses"]).unwrap();
        assert_eq!(args.api, Api::Responses);
        assert_eq!(args.api.path(), "/v1/responses");
        assert_eq!(Api::Chat.path(), "/v1/chat/completions");
        let prepared = prepare(&args).unwrap();
        assert_eq!(prepared.spec.api, Api::Responses);
        assert_eq!(api_text(Api::Chat), "");
        assert_eq!(api_text(Api::Responses), " (Responses API)");
        // A Responses stream that ends in a hold ended with its terminal event.
        let mut t = Tally {
            api: Api::Responses,
            ..Tally::default()
        };
        t.add(
            StreamRecord {
                outcome: Outcome::Completed,
                open_for: Some(Duration::from_secs(2)),
                counts: client::BodyCounts::default(),
            },
            Counting::Hold { over: false },
        );
        assert!(t.ended_early.examples["done"].starts_with("a terminal event"));
    }

    #[test]
    fn prepare_refuses_what_it_cannot_run() {
        let args = parse(&["--duration", "0s"]).unwrap();
        assert!(prepare(&args).is_err());
        let mut args = parse(&[]).unwrap();
        args.url = "http://10.1.2.3:8080".into();
        assert!(prepare(&args).unwrap_err().contains("non-loopback"));
        let args = parse(&["--pid", "a=1", "--pid", "a=1"]).unwrap();
        assert!(prepare(&args).unwrap_err().contains("twice"));
        let args = parse(&["--pid", &format!("ghost={}", u32::MAX)]).unwrap();
        assert!(prepare(&args).is_err());
        let limit = tidegate::sys::raise_nofile_limit().unwrap();
        if limit.after < u64::from(MAX_STREAMS) + SPARE_FDS {
            let args = parse(&["--streams", &MAX_STREAMS.to_string()]).unwrap();
            assert!(prepare(&args).unwrap_err().contains("open-files limit"));
        }
        let args = parse(&["--json", "/nonexistent-dir/x.json"]).unwrap();
        assert!(prepare(&args).unwrap_err().contains("cannot write"));
    }

    #[test]
    fn hold_is_bounded_and_must_fit_in_the_run_cap() {
        let args = parse(&["--hold", "90s"]).unwrap();
        assert_eq!(args.hold, Some(Duration::from_secs(90)));
        // In hold mode the stream timeout caps only the wait for headers.
        assert_eq!(
            args.effective_stream_timeout(),
            DEFAULT_HOLD_HEADERS_TIMEOUT
        );
        let args = parse(&["--hold", "90s", "--stream-timeout", "5s"]).unwrap();
        assert_eq!(args.effective_stream_timeout(), Duration::from_secs(5));
        assert_eq!(parse(&["--hold", "0s"]).unwrap().hold, Some(Duration::ZERO));
        assert_eq!(parse(&["--hold", "24h"]).unwrap().hold, Some(MAX_HOLD));
        assert!(parse(&["--hold", "1441m"]).is_err());
        assert!(parse(&["--hold", "90"]).is_err());

        // 1000 streams at 500/s take 2 s to start: the default 10 m cap has no room for a
        // 10 m hold, a 9 m one fits.
        let args = parse(&["--hold", "10m"]).unwrap();
        let err = prepare(&args).unwrap_err();
        assert!(err.contains("cannot end within --duration 10m"), "{err}");
        assert!(err.contains("more than 602.0s"), "{err}");
        let args = parse(&["--hold", "59s", "--duration", "1m"]).unwrap();
        assert!(prepare(&args).is_err());
        let args = parse(&["--hold", "57s", "--duration", "1m", "--streams", "10"]).unwrap();
        assert!(prepare(&args).is_ok());
    }

    #[test]
    fn walking_away_flags_parse_and_combine() {
        let args = parse(&[]).unwrap();
        assert_eq!(args.walk_away(), Ok(WalkAway::Never));
        let args = parse(&["--drop-after-events", "1"]).unwrap();
        assert_eq!(
            args.walk_away(),
            Ok(WalkAway::Reading {
                after_events: Some(1),
                after: None
            })
        );
        let args = parse(&["--stall-after-headers", "--drop-after-ms", "2000"]).unwrap();
        assert_eq!(
            args.walk_away(),
            Ok(WalkAway::Stalled {
                after: Duration::from_secs(2)
            })
        );
        assert!(prepare(&args).is_ok());
        for bad in [
            &["--drop-after-events", "0"][..],
            &["--drop-after-events", "-1"],
            &["--drop-after-ms", "3600001"],
            &["--stall-after-headers"],
            &[
                "--stall-after-headers",
                "--drop-after-ms",
                "1",
                "--drop-after-events",
                "1",
            ],
            &["--hold", "1s", "--drop-after-events", "1"],
            &["--hold", "1s", "--drop-after-ms", "1"],
            &[
                "--hold",
                "1s",
                "--stall-after-headers",
                "--drop-after-ms",
                "1",
            ],
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn dropped_streams_are_neither_completed_nor_failed() {
        use client::BodyCounts;
        let record = |outcome: Outcome| StreamRecord {
            outcome,
            open_for: Some(Duration::from_millis(5)),
            counts: BodyCounts {
                pings: 0,
                other_comments: 0,
                events: 1,
            },
        };
        let mut t = Tally::default();
        t.add(record(Outcome::Dropped), Counting::Run);
        t.add(record(Outcome::Dropped), Counting::Run);
        t.add(record(Outcome::Completed), Counting::Run);
        assert_eq!((t.dropped, t.completed, t.cancelled), (2, 1, 0));
        assert_eq!(t.failures.total(), 0);
    }

    #[test]
    fn a_hold_longer_than_the_mock_stream_is_warned_about() {
        assert!(hold_warning(&parse(&[]).unwrap()).is_none());
        // 30 chunks a second apart end after 31 s, before a 90 s hold.
        let warning = hold_warning(&parse(&["--hold", "90s"]).unwrap()).unwrap();
        assert!(warning.contains("31.0s"), "{warning}");
        let idle = [
            "--hold",
            "90s",
            "--chunks",
            "1",
            "--chunk-delay-ms",
            "600000",
        ];
        assert!(hold_warning(&parse(&idle).unwrap()).is_none());
        let real = ["--hold", "90s", "--no-mock-headers"];
        assert!(hold_warning(&parse(&real).unwrap()).is_none());
    }

    #[test]
    fn hold_mode_counts_each_stream_once() {
        use client::BodyCounts;
        let record = |outcome: Outcome, open_for_s: Option<u64>, pings: u64| StreamRecord {
            outcome,
            open_for: open_for_s.map(Duration::from_secs),
            counts: BodyCounts {
                pings,
                other_comments: 0,
                events: 1,
            },
        };
        let failure = |kind: &str| Outcome::Failed {
            kind: kind.into(),
            message: "m".into(),
        };
        let mut t = Tally::default();
        let holding = Counting::Hold { over: false };
        t.add(
            record(Outcome::Cancelled, Some(60), 4),
            Counting::Hold { over: true },
        );
        t.add(record(Outcome::Cancelled, Some(30), 2), holding);
        t.add(record(Outcome::Completed, Some(2), 0), holding);
        t.add(record(failure("reset"), Some(1), 0), holding);
        t.add(record(failure("connect"), None, 0), holding);
        assert_eq!((t.held, t.cancelled, t.completed), (1, 1, 0));
        assert_eq!(
            t.ended_early.by_kind,
            BTreeMap::from([("done".to_owned(), 1), ("reset".to_owned(), 1)])
        );
        assert_eq!(
            t.failures.by_kind,
            BTreeMap::from([("connect".to_owned(), 1)])
        );
        // 4 and 4 pings a minute, then two with none; the stream that never opened has no rate.
        let pings = t.pings_per_min.summary();
        assert_eq!(pings.streams, 4);
        assert_eq!(
            (pings.mean, pings.min, pings.max),
            (Some(2.0), Some(0.0), Some(4.0))
        );
        assert_eq!(t.events_per_stream.summary().streams, 4);

        // Outside hold mode, the same ends are completions and failures.
        let mut t = Tally::default();
        t.add(record(Outcome::Completed, Some(2), 0), Counting::Run);
        t.add(record(failure("reset"), Some(1), 0), Counting::Run);
        t.add(record(Outcome::Cancelled, Some(1), 0), Counting::Run);
        assert_eq!((t.completed, t.cancelled, t.held), (1, 1, 0));
        assert_eq!(t.failures.total(), 1);
        assert_eq!(t.ended_early.total(), 0);
    }

    /// A sample `interval_s` long ending at `t_s`, with `events` in it, rated as the sampler
    /// rates it: over its real length.
    fn sample_over(t_s: f64, interval_s: f64, events: u64) -> Sample {
        Sample {
            t_s,
            interval_s,
            started: 10,
            opened: 10,
            alive: 10,
            completed: 0,
            failed: 0,
            events,
            bytes: 0,
            pings: 0,
            ended_early: None,
            dropped: None,
            opened_per_s: 0.0,
            completed_per_s: 0.0,
            failed_per_s: 0.0,
            events_per_s: events as f64 / interval_s,
            bytes_per_s: 0.0,
            latency_count: 0,
            latency_p50_us: None,
            latency_p99_us: None,
            processes: BTreeMap::new(),
        }
    }

    /// The last progress line covers what is left of the last second: labelled partial, with
    /// its length, its rate scaled from that length (30 events in 0.3 s: 100/s, not 30/s).
    #[test]
    fn the_last_progress_line_says_it_is_partial() {
        let full = progress_line(&sample_over(12.0, 1.0, 100), 10, None);
        assert!(full.starts_with("bench: t=12s started="), "{full}");
        assert!(!full.contains("partial"), "{full}");
        assert!(full.contains("events/s=100 "), "{full}");

        let last = progress_line(&sample_over(12.3, 0.3, 30), 10, None);
        assert!(
            last.starts_with("bench: t=12.3s (partial: rates over the last 0.30s) started="),
            "{last}"
        );
        assert!(last.contains("events/s=100 "), "{last}");
    }

    #[test]
    fn source_addresses_rotate() {
        let v4: IpAddr = Ipv4Addr::LOCALHOST.into();
        assert_eq!(source_address(v4, 0, 3), Some("127.0.0.1".parse().unwrap()));
        assert_eq!(source_address(v4, 2, 3), Some("127.0.0.3".parse().unwrap()));
        assert_eq!(source_address(v4, 3, 3), Some("127.0.0.1".parse().unwrap()));
        assert_eq!(source_address("::1".parse().unwrap(), 5, 3), None);
    }
}
