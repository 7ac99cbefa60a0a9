//! `tidegate bench`: a high-concurrency load driver for streaming chat completions.
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
//! [`client`] has one stream's life; [`sse`] the event parsing.

pub mod chart;
pub mod client;
pub mod procfs;
pub mod report;
pub mod sse;
pub mod stats;

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

use crate::config::parse_duration;
use crate::signals::interrupted;
use client::{H2Slot, Outcome, RequestOptions, RequestSpec, Route, StreamContext, Target};
use procfs::Watched;
use report::{ProcPoint, Report, Sample};
use stats::{Failures, Live};

/// Exit code when a stream failed or the run stopped before every stream completed.
pub const EXIT_FAILED: u8 = 1;
/// Exit code for bad arguments (as clap uses for its own errors).
pub const EXIT_USAGE: u8 = 2;

/// Upper bound on `--streams`, so a typo cannot ask for millions of sockets or tasks.
pub const MAX_STREAMS: u32 = 200_000;
/// The gateway's limit of concurrent streams per HTTP/2 connection.
pub const MAX_PER_CONNECTION: u32 = crate::server::H2_MAX_CONCURRENT_STREAMS;
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

/// Arguments of `tidegate bench`.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Base URL of the gateway, or of the mock as the reference, e.g. http://127.0.0.1:8080
    /// (loopback only, no path: /v1/chat/completions is appended)
    #[arg(long, value_name = "URL")]
    pub url: String,
    /// Streams to run in all (each once, never retried)
    #[arg(long, default_value_t = 1000, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_STREAMS)))]
    pub streams: u32,
    /// New streams per second
    #[arg(long, default_value_t = 500, value_name = "R",
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub ramp: u32,
    /// http1 (one connection per stream) or h2 (cleartext, prior knowledge)
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
    #[arg(long, default_value = crate::mock::DEFAULT_MODEL, value_name = "NAME")]
    pub model: String,
    /// Sent as Authorization: Bearer KEY
    #[arg(
        long,
        env = "TIDEGATE_BENCH_API_KEY",
        hide_env_values = true,
        value_name = "KEY"
    )]
    pub api_key: Option<String>,
    /// Cap on the whole run ("90s", "10m"); streams still running then are cancelled
    #[arg(long, default_value = "10m", value_name = "DURATION", value_parser = parse_duration)]
    pub duration: Duration,
    /// Cap on one stream, from its request to the end of its body
    /// [default: (chunks + 1) × delay + 30s with mock headers, else 300s]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub stream_timeout: Option<Duration>,
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
    /// The per-stream timeout in force.
    pub fn effective_stream_timeout(&self) -> Duration {
        self.stream_timeout.unwrap_or_else(|| {
            if self.no_mock_headers {
                DEFAULT_STREAM_TIMEOUT_REAL
            } else {
                let stream = Duration::from_millis(self.chunk_delay_ms)
                    .saturating_mul(self.chunks.saturating_add(1));
                stream.saturating_add(STREAM_TIMEOUT_MARGIN)
            }
        })
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
    watched: Vec<Watched>,
    nofile_limit: u64,
}

fn prepare(args: &BenchArgs) -> Result<Prepared, String> {
    let target = Target::parse(&args.url)?;
    if args.duration.is_zero() {
        return Err("--duration must be more than 0".into());
    }
    if args.stream_timeout.is_some_and(|t| t.is_zero()) {
        return Err("--stream-timeout must be more than 0".into());
    }
    let options = RequestOptions {
        model: args.model.clone(),
        api_key: args.api_key.clone(),
        mock: (!args.no_mock_headers).then_some((args.chunks, args.chunk_delay_ms)),
    };
    let spec = RequestSpec::new(target, args.protocol, &options)?;

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

    let limit = crate::sys::raise_nofile_limit()
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

/// Runs `tidegate bench`; returns the exit code.
pub fn main(args: BenchArgs) -> ExitCode {
    let prepared = match prepare(&args) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("tidegate bench: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(usize::from(args.threads))
        .thread_name("bench")
        .enable_all()
        .build();
    let runtime = match runtime {
        Ok(r) => r,
        Err(e) => {
            eprintln!("tidegate bench: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_FAILED);
        }
    };
    if !args.quiet {
        eprintln!(
            "tidegate bench: {} streams over {} to {} at {}/s; {} (stream timeout {:?}, run cap \
             {:?}, open-files limit {})",
            args.streams,
            args.protocol.name(),
            prepared.spec.target.addr,
            args.ramp,
            if args.no_mock_headers {
                "no mock headers".to_owned()
            } else {
                format!("{} chunks every {} ms", args.chunks, args.chunk_delay_ms)
            },
            args.effective_stream_timeout(),
            args.duration,
            prepared.nofile_limit
        );
    }
    let report = runtime.block_on(run(&args, prepared));
    // Stream tasks are all joined or aborted; connection tasks may linger on a closing socket.
    runtime.shutdown_timeout(Duration::from_secs(1));

    print!("{}", report.table());
    let mut code = if report.all_completed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_FAILED)
    };
    if let Some(path) = &args.json {
        if let Err(e) = report.write_json(path) {
            eprintln!("tidegate bench: {e}");
            code = ExitCode::from(EXIT_FAILED);
        }
    }
    if let Some(path) = &args.svg {
        if let Err(e) = chart::write_svg(path, &report) {
            eprintln!("tidegate bench: {e}");
            code = ExitCode::from(EXIT_FAILED);
        }
    }
    code
}

/// Why the run stopped before every stream had ended on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    DurationCap,
    Interrupted,
}

/// Tallies of finished streams.
#[derive(Debug, Default, Clone)]
pub struct Tally {
    pub completed: u64,
    pub cancelled: u64,
    pub failures: Failures,
}

impl Tally {
    fn add(&mut self, outcome: Outcome) {
        match outcome {
            Outcome::Completed => self.completed += 1,
            Outcome::Cancelled => self.cancelled += 1,
            Outcome::Failed { kind, message } => self.failures.add(kind, message),
        }
    }
}

/// The per-second sampler: turns the live counters into [`Sample`]s and progress lines.
struct Sampler {
    start: Instant,
    ticks_per_second: u64,
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

fn progress_line(sample: &Sample, streams: u32, previous: Option<&Sample>) -> String {
    let ms = |us: Option<u64>| match us {
        Some(us) => format!("{:.2}ms", us as f64 / 1e3),
        None => "-".to_owned(),
    };
    let mut line = format!(
        "bench: t={:.0}s started={}/{streams} alive={} opened/s={:.0} done/s={:.0} failed/s={:.0} \
         (failed={}) events/s={:.0} latency p50={} p99={}",
        sample.t_s,
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

async fn run(args: &BenchArgs, prepared: Prepared) -> Report {
    let Prepared {
        spec,
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
        cancel: cancel.clone(),
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
        last_t: 0.0,
        last: (0, 0, 0, 0, 0),
    };
    let cap = tokio::time::Instant::from_std(start) + args.duration;
    let mut collect_deadline = cap;
    let mut tasks: JoinSet<Outcome> = JoinSet::new();
    let mut tally = Tally::default();
    // The first point: nothing started yet, and each process's idle RSS and CPU time.
    let mut timeline: Vec<Sample> = vec![sampler.sample(&live, &Tally::default(), &mut watched, 0)];
    let mut started: u32 = 0;
    let mut slot: Option<Arc<H2Slot>> = None;
    let mut connections: u64 = 0;
    let mut stop: Option<StopReason> = None;
    let mut abandoned: u64 = 0;

    let mut ticker = tokio::time::interval_at(
        tokio::time::Instant::from_std(start) + Duration::from_secs(1),
        Duration::from_secs(1),
    );
    ticker.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let mut ramp = tokio::time::interval(RAMP_TICK);
    ramp.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let interrupt = interrupted();
    tokio::pin!(interrupt);

    // Bounded: the ramp stops at --streams or at the stop, every task ends by its own timeout,
    // the cancel, or the abort at `collect_deadline`.
    loop {
        let ramping = stop.is_none() && started < args.streams;
        if !ramping {
            // The last connection closes once its streams are done.
            slot = None;
            if tasks.is_empty() {
                break;
            }
        }
        tokio::select! {
            () = &mut interrupt, if stop.is_none() => {
                stop = Some(StopReason::Interrupted);
                cancel.cancel();
                collect_deadline = tokio::time::Instant::now() + COLLECT_TIMEOUT;
            }
            () = tokio::time::sleep_until(cap), if stop.is_none() => {
                stop = Some(StopReason::DurationCap);
                cancel.cancel();
                collect_deadline = tokio::time::Instant::now() + COLLECT_TIMEOUT;
            }
            () = tokio::time::sleep_until(collect_deadline), if stop.is_some() => {
                abandoned = tasks.len() as u64;
                tasks.abort_all();
                break;
            }
            joined = tasks.join_next(), if !tasks.is_empty() => match joined {
                Some(Ok(outcome)) => tally.add(outcome),
                Some(Err(e)) => tally.failures.add("task".into(), e.to_string()),
                None => {}
            },
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

    Report::build(report::RunData {
        args,
        nofile_limit,
        started_at_unix_ms,
        elapsed,
        started,
        connections,
        tally,
        abandoned,
        stop,
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
        let limit = crate::sys::raise_nofile_limit().unwrap();
        if limit.after < u64::from(MAX_STREAMS) + SPARE_FDS {
            let args = parse(&["--streams", &MAX_STREAMS.to_string()]).unwrap();
            assert!(prepare(&args).unwrap_err().contains("open-files limit"));
        }
        let args = parse(&["--json", "/nonexistent-dir/x.json"]).unwrap();
        assert!(prepare(&args).unwrap_err().contains("cannot write"));
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
