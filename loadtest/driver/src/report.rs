//! The end of a run: one [`Report`] with every figure, printed as a table and written as JSON.
//! Latencies are in microseconds in the JSON (`*_us`) and in milliseconds in the table.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use serde::Serialize;

use super::client::WalkAway;
use super::procfs::Watched;
use super::stats::{LatencySummary, Live, SpreadSummary};
use super::{BenchArgs, StopReason, Tally};

/// One point of the timeline: counters at `t_s` seconds after the start (cumulative), rates
/// over the interval since the previous point, and that interval's per-event latency.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    pub t_s: f64,
    /// Seconds since the previous point (the rates' denominator; the last point's is short).
    pub interval_s: f64,
    pub started: u64,
    pub opened: u64,
    pub alive: u64,
    pub completed: u64,
    pub failed: u64,
    pub events: u64,
    pub bytes: u64,
    /// `: ping` heartbeats.
    pub pings: u64,
    /// Hold mode only: streams that opened and ended before the hold did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ended_early: Option<u64>,
    /// With `--drop-after-*` or `--stall-after-headers` only: streams dropped so far.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dropped: Option<u64>,
    pub opened_per_s: f64,
    pub completed_per_s: f64,
    pub failed_per_s: f64,
    pub events_per_s: f64,
    pub bytes_per_s: f64,
    /// Timestamped events received in the interval.
    pub latency_count: u64,
    pub latency_p50_us: Option<u64>,
    pub latency_p99_us: Option<u64>,
    /// RSS and cumulative CPU time of each watched process.
    pub processes: BTreeMap<String, ProcPoint>,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct ProcPoint {
    pub rss_kib: u64,
    pub cpu_s: f64,
}

/// The shortest stretch of the timeline a peak rate is taken over: a shorter interval (the last
/// one, cut short by the end of the run) would make a rate out of a handful of events.
pub const MIN_PEAK_WINDOW_S: f64 = 0.5;

/// `count` per second from the start to the timeline's last point: the same clock and the same
/// span as the timeline's rates, so an average cannot exceed their peak. 0 without a point.
pub fn average_rate(timeline: &[Sample], count: impl Fn(&Sample) -> u64) -> f64 {
    match timeline.last() {
        Some(last) if last.t_s > 0.0 => count(last) as f64 / last.t_s,
        _ => 0.0,
    }
}

/// The highest `count` per second over consecutive windows of the timeline (from the start to
/// its last point) of at least `min_window_s` each: intervals are joined until a window is that
/// long, and a short remainder at the end joins the window before it. The windows cover the
/// whole run, so the peak is at least [`average_rate`]; a run shorter than `min_window_s` is
/// one window, its average.
pub fn peak_rate(timeline: &[Sample], min_window_s: f64, count: impl Fn(&Sample) -> u64) -> f64 {
    // (start t, start count, end t, end count) of each window.
    let mut windows: Vec<(f64, u64, f64, u64)> = Vec::new();
    let (mut from_t, mut from_n) = (0.0, 0);
    let mut open: Option<(f64, u64)> = None;
    for sample in timeline {
        let (t, n) = (sample.t_s, count(sample));
        if t - from_t >= min_window_s {
            windows.push((from_t, from_n, t, n));
            (from_t, from_n) = (t, n);
            open = None;
        } else {
            open = Some((t, n));
        }
    }
    if let Some((t, n)) = open {
        match windows.last_mut() {
            Some(last) => (last.2, last.3) = (t, n),
            None => windows.push((0.0, 0, t, n)),
        }
    }
    windows
        .iter()
        .filter(|(from_t, _, to_t, _)| to_t > from_t)
        .map(|&(from_t, from_n, to_t, to_n)| to_n.saturating_sub(from_n) as f64 / (to_t - from_t))
        .fold(0.0, f64::max)
}

/// The arguments, as run (the API key only as present or not).
#[derive(Debug, Clone, Serialize)]
pub struct ArgsRecord {
    pub url: String,
    /// `chat` or `responses` (`--api`).
    pub api: super::Api,
    /// Over TLS (`--ca-file`): version, cipher suite, key exchange and ALPN of the first
    /// handshake (every connection made a full one); `None` in cleartext.
    pub tls: Option<String>,
    pub protocol: super::Protocol,
    pub streams: u32,
    pub ramp_per_s: u32,
    pub per_connection: Option<u32>,
    pub source_addrs: Option<u8>,
    pub mock_headers: bool,
    pub chunks: Option<u32>,
    pub chunk_delay_ms: Option<u64>,
    pub model: String,
    pub api_key: bool,
    pub duration_s: f64,
    /// In hold mode, the cap on the wait for response headers.
    pub stream_timeout_s: f64,
    /// `--hold`, if given.
    pub hold_s: Option<f64>,
    /// `--drop-after-events`, `--drop-after-ms`, `--stall-after-headers`.
    pub drop_after_events: Option<u32>,
    pub drop_after_ms: Option<u64>,
    pub stall_after_headers: bool,
    pub threads: u16,
    pub pids: BTreeMap<String, u32>,
}

#[derive(Debug, Clone, Serialize)]
pub struct StreamCounts {
    pub requested: u64,
    pub started: u64,
    /// Got `200` response headers.
    pub opened: u64,
    /// `data: [DONE]` and a clean end of body (0 in hold mode: see `hold`).
    pub completed: u64,
    /// In hold mode only the streams that failed before their response headers (a stream that
    /// opened and then ended is in `hold.ended_early`).
    pub failed: u64,
    pub failed_by_kind: BTreeMap<String, u64>,
    /// The first message seen for each failure kind.
    pub failure_examples: BTreeMap<String, String>,
    /// Stopped by the duration cap or an interrupt (in hold mode, not those held to its end).
    pub cancelled: u64,
    /// Gone away from on purpose (`--drop-after-*`, `--stall-after-headers`) before their end.
    pub dropped: u64,
    /// Never started (the run stopped first).
    pub not_started: u64,
    /// Still running when the collection deadline passed (aborted).
    pub abandoned: u64,
    pub max_alive: u64,
    /// HTTP/1.1: one per stream; h2: connections opened.
    pub connections: u64,
}

/// Hold mode's own figures. With `streams`, every requested stream is exactly one of: `held`,
/// `ended_early`, `streams.failed`, `streams.cancelled`, `streams.not_started`,
/// `streams.abandoned`.
#[derive(Debug, Clone, Serialize)]
pub struct HoldReport {
    /// The hold asked for (`--hold`).
    pub hold_s: f64,
    /// How long the streams were held: `hold_s`, or less if the run stopped or no stream was
    /// left open; 0 if the hold never began.
    pub held_s: f64,
    /// From the start until every stream had its headers or had failed (`all open`); `null`
    /// if the run stopped first.
    pub all_open_after_s: Option<f64>,
    /// Still open when the hold ended (then cancelled): all of them, in a good run.
    pub held: u64,
    /// Opened, then ended before the hold did.
    pub ended_early: u64,
    /// `done` (`data: [DONE]` and the end of the body), `error_event:CODE`, `eof`, `reset`.
    pub ended_early_by_kind: BTreeMap<String, u64>,
    /// The first message seen for each kind.
    pub end_examples: BTreeMap<String, String>,
    /// `: ping` comments per minute of each stream that was open at least a second (from its
    /// headers to its end): over how many streams, mean, min, max.
    pub pings_per_min: SpreadSummary,
    /// Events with data per opened stream.
    pub events_per_stream: SpreadSummary,
}

/// What the run loop knows about a hold.
#[derive(Debug, Clone, Copy)]
pub struct HoldRun {
    pub hold: Duration,
    pub held: Duration,
    pub all_open_after: Option<Duration>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Throughput {
    /// SSE events with data (`[DONE]` and error events included).
    pub events: u64,
    /// Events that carried a `: sent_us=` stamp (those have a latency).
    pub timed_events: u64,
    pub bytes: u64,
    /// Over the timeline, from the start to its last point: the time base of the peak.
    pub events_per_s: f64,
    pub bytes_per_s: f64,
    /// The most in one window of the timeline of at least [`MIN_PEAK_WINDOW_S`] (a shorter
    /// interval joins its neighbour), so never below `events_per_s`.
    pub peak_events_per_s: f64,
    /// `: ping` heartbeats.
    pub pings: u64,
    pub other_comments: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ProcessReport {
    pub name: String,
    pub pid: u32,
    pub rss_start_kib: Option<u64>,
    pub rss_peak_kib: Option<u64>,
    pub rss_end_kib: Option<u64>,
    /// (peak − start) / max alive streams.
    pub rss_per_stream_kib: Option<f64>,
    /// utime + stime used between the first and the last sample.
    pub cpu_s: Option<f64>,
    pub cpu_s_per_1000_events: Option<f64>,
    /// Why sampling failed, if it did (e.g. the process exited).
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub tool: &'static str,
    pub version: &'static str,
    pub args: ArgsRecord,
    pub started_at_unix_ms: u64,
    pub elapsed_s: f64,
    pub stopped_early: Option<StopReason>,
    pub nofile_limit: u64,
    pub streams: StreamCounts,
    /// Hold mode only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hold: Option<HoldReport>,
    pub throughput: Throughput,
    /// From the start of the request (connect included on HTTP/1.1) to `200` headers.
    pub time_to_headers_us: LatencySummary,
    /// From the start of the request (connect included on HTTP/1.1) to the first event; with
    /// `--api responses`, to the first `*.delta` event (the first token).
    pub time_to_first_event_us: LatencySummary,
    /// Receive time − the event's `sent_us` (same machine): what the path added per event.
    pub event_latency_us: LatencySummary,
    pub processes: Vec<ProcessReport>,
    pub timeline: Vec<Sample>,
}

/// What [`Report::build`] needs from the run.
pub struct RunData<'a> {
    pub args: &'a BenchArgs,
    /// Over TLS: what the first handshake agreed, or that none completed.
    pub tls: Option<String>,
    pub nofile_limit: u64,
    pub started_at_unix_ms: u64,
    pub elapsed: Duration,
    pub started: u32,
    pub connections: u64,
    pub tally: Tally,
    pub abandoned: u64,
    pub stop: Option<StopReason>,
    pub hold: Option<HoldRun>,
    pub live: &'a Live,
    pub watched: Vec<Watched>,
    pub timeline: Vec<Sample>,
}

impl Report {
    pub fn build(run: RunData<'_>) -> Report {
        let a = run.args;
        let mock = !a.no_mock_headers;
        let args = ArgsRecord {
            url: a.url.clone(),
            api: a.api,
            tls: run.tls,
            protocol: a.protocol,
            streams: a.streams,
            ramp_per_s: a.ramp,
            per_connection: (a.protocol == super::Protocol::H2).then_some(a.per_connection),
            source_addrs: (a.protocol == super::Protocol::Http1).then_some(a.source_addrs),
            mock_headers: mock,
            chunks: mock.then_some(a.chunks),
            chunk_delay_ms: mock.then_some(a.chunk_delay_ms),
            model: a.model.clone(),
            api_key: a.api_key.is_some(),
            duration_s: a.duration.as_secs_f64(),
            stream_timeout_s: a.effective_stream_timeout().as_secs_f64(),
            hold_s: a.hold.map(|h| h.as_secs_f64()),
            drop_after_events: a.drop_after_events,
            drop_after_ms: a.drop_after_ms,
            stall_after_headers: a.stall_after_headers,
            threads: a.threads,
            pids: a.pids.iter().cloned().collect(),
        };
        let live = run.live;
        let max_alive = Live::get(&live.max_alive);
        let events = Live::get(&live.events);
        let bytes = Live::get(&live.bytes);
        let streams = StreamCounts {
            requested: u64::from(a.streams),
            started: u64::from(run.started),
            opened: Live::get(&live.opened),
            completed: run.tally.completed,
            failed: run.tally.failures.total(),
            failed_by_kind: run.tally.failures.by_kind.clone(),
            failure_examples: run.tally.failures.examples.clone(),
            cancelled: run.tally.cancelled,
            dropped: run.tally.dropped,
            not_started: u64::from(a.streams - run.started.min(a.streams)),
            abandoned: run.abandoned,
            max_alive,
            connections: run.connections,
        };
        let hold = run.hold.map(|h| HoldReport {
            hold_s: h.hold.as_secs_f64(),
            held_s: h.held.as_secs_f64(),
            all_open_after_s: h.all_open_after.map(|d| d.as_secs_f64()),
            held: run.tally.held,
            ended_early: run.tally.ended_early.total(),
            ended_early_by_kind: run.tally.ended_early.by_kind.clone(),
            end_examples: run.tally.ended_early.examples.clone(),
            pings_per_min: run.tally.pings_per_min.summary(),
            events_per_stream: run.tally.events_per_stream.summary(),
        });
        let throughput = Throughput {
            events,
            timed_events: Live::get(&live.timed_events),
            bytes,
            events_per_s: average_rate(&run.timeline, |s| s.events),
            bytes_per_s: average_rate(&run.timeline, |s| s.bytes),
            peak_events_per_s: peak_rate(&run.timeline, MIN_PEAK_WINDOW_S, |s| s.events),
            pings: Live::get(&live.pings),
            other_comments: Live::get(&live.other_comments),
        };
        let processes = run
            .watched
            .iter()
            .map(|w| {
                let cpu_s = match (w.first, w.last) {
                    (Some(first), Some(last)) => {
                        Some((last.cpu_seconds - first.cpu_seconds).max(0.0))
                    }
                    _ => None,
                };
                ProcessReport {
                    name: w.name.clone(),
                    pid: w.pid,
                    rss_start_kib: w.first.map(|s| s.rss_kib),
                    rss_peak_kib: w.first.map(|_| w.peak_rss_kib),
                    rss_end_kib: w.last.map(|s| s.rss_kib),
                    rss_per_stream_kib: match w.first {
                        Some(first) if max_alive > 0 => Some(
                            w.peak_rss_kib.saturating_sub(first.rss_kib) as f64 / max_alive as f64,
                        ),
                        _ => None,
                    },
                    cpu_s,
                    cpu_s_per_1000_events: cpu_s
                        .filter(|_| events > 0)
                        .map(|cpu| cpu / events as f64 * 1000.0),
                    error: w.error.clone(),
                }
            })
            .collect();
        Report {
            tool: "tidegate bench",
            version: env!("CARGO_PKG_VERSION"),
            args,
            started_at_unix_ms: run.started_at_unix_ms,
            elapsed_s: run.elapsed.as_secs_f64(),
            stopped_early: run.stop,
            nofile_limit: run.nofile_limit,
            streams,
            hold,
            throughput,
            time_to_headers_us: live.headers_us.snapshot().summary(),
            time_to_first_event_us: live.first_event_us.snapshot().summary(),
            event_latency_us: live.latency_us.snapshot().summary(),
            processes,
            timeline: run.timeline,
        }
    }

    /// The run did what was asked: every requested stream completed (or was dropped, as asked)
    /// or, in hold mode, was held to the end of the hold.
    pub fn succeeded(&self) -> bool {
        match &self.hold {
            None => self.streams.completed + self.streams.dropped == self.streams.requested,
            Some(hold) => hold.held == self.streams.requested && self.stopped_early.is_none(),
        }
    }

    /// What the clients were asked to do, from the arguments as run.
    fn walk_away(&self) -> WalkAway {
        let a = &self.args;
        // The arguments were checked before the run; a combination that does not parse can
        // only mean "never".
        WalkAway::from_flags(a.drop_after_events, a.drop_after_ms, a.stall_after_headers)
            .unwrap_or_default()
    }

    pub fn write_json(&self, path: &Path) -> Result<(), String> {
        let mut text = serde_json::to_string_pretty(self)
            .map_err(|e| format!("cannot encode the JSON report: {e}"))?;
        text.push('\n');
        std::fs::write(path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))
    }

    /// The human summary.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let a = &self.args;
        let s = &self.streams;
        let t = &self.throughput;
        let load = match (a.chunks, a.chunk_delay_ms) {
            (Some(chunks), Some(delay)) => format!("{chunks} chunks every {delay} ms"),
            _ => "no mock headers".to_owned(),
        };
        let mut shape = match a.per_connection {
            Some(m) => format!("h2, {m} streams/connection"),
            None => "http1".to_owned(),
        };
        if let Some(tls) = &a.tls {
            shape = format!("{shape} over TLS ({tls})");
        }
        let hold = a
            .hold_s
            .map(|h| format!(", hold {h} s"))
            .unwrap_or_default();
        let walk_away = self.walk_away();
        let walk_away_text = super::walk_away_text(walk_away);
        let _ = writeln!(
            out,
            "tidegate bench: {} streams{} to {} over {shape}, {}/s, {load}, model {}{hold}\
             {walk_away_text}",
            a.streams,
            super::api_text(a.api),
            a.url,
            a.ramp_per_s,
            a.model
        );
        let stopped = match self.stopped_early {
            Some(StopReason::DurationCap) => " (stopped by --duration)",
            Some(StopReason::Interrupted) => " (interrupted)",
            None => "",
        };
        let _ = writeln!(out, "run time            {:.1} s{stopped}", self.elapsed_s);
        match &self.hold {
            None => {
                let dropped = match walk_away {
                    WalkAway::Never => String::new(),
                    _ => format!(", {} dropped by the client (as asked)", s.dropped),
                };
                let _ = writeln!(
                    out,
                    "streams             {} completed{dropped}, {} failed, {} cancelled, {} not \
                     started of {}; max alive {}; {} connections",
                    s.completed,
                    s.failed,
                    s.cancelled,
                    s.not_started,
                    s.requested,
                    s.max_alive,
                    s.connections
                );
            }
            Some(h) => {
                let _ = writeln!(
                    out,
                    "streams             {} opened, {} held, {} ended early, {} failed to open, \
                     {} cancelled, {} not started of {}; max alive {}; {} connections",
                    s.opened,
                    h.held,
                    h.ended_early,
                    s.failed,
                    s.cancelled,
                    s.not_started,
                    s.requested,
                    s.max_alive,
                    s.connections
                );
            }
        }
        for (kind, n) in &s.failed_by_kind {
            let example = s.failure_examples.get(kind).map_or("", String::as_str);
            let _ = writeln!(out, "  failed {kind:<24} {n:>7}   e.g. {example}");
        }
        if let Some(h) = &self.hold {
            let all_open = h.all_open_after_s.map_or("never all open".to_owned(), |t| {
                format!("all open after {t:.1} s")
            });
            let _ = writeln!(
                out,
                "hold                {:.1} s of {:.1} s ({all_open})",
                h.held_s, h.hold_s
            );
            for (kind, n) in &h.ended_early_by_kind {
                let example = h.end_examples.get(kind).map_or("", String::as_str);
                let _ = writeln!(out, "  ended early {kind:<19} {n:>7}   e.g. {example}");
            }
            let p = &h.pings_per_min;
            let num = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.2}"));
            let _ = writeln!(
                out,
                "pings/stream/min    mean {}, min {}, max {} (over {} streams open at least 1 s)",
                num(p.mean),
                num(p.min),
                num(p.max),
                p.streams
            );
        }
        let _ = writeln!(
            out,
            "events              {} ({} timed) in {:.1} s: {:.0} events/s (peak {:.0}/s), {} / s; \
             {} pings, {} other comments",
            t.events,
            t.timed_events,
            self.elapsed_s,
            t.events_per_s,
            t.peak_events_per_s,
            human_bytes(t.bytes_per_s),
            t.pings,
            t.other_comments
        );
        let _ = writeln!(
            out,
            "\n{:<22}{:>10}{:>10}{:>10}{:>10}{:>10}{:>10}",
            "latency (ms)", "count", "p50", "p90", "p99", "max", "mean"
        );
        for (name, l) in [
            ("time to headers", &self.time_to_headers_us),
            (
                match a.api {
                    super::Api::Chat => "time to first event",
                    super::Api::Responses => "time to first delta",
                },
                &self.time_to_first_event_us,
            ),
            ("per-event added", &self.event_latency_us),
        ] {
            let _ = writeln!(
                out,
                "{name:<22}{:>10}{:>10}{:>10}{:>10}{:>10}{:>10}",
                l.count,
                ms(l.p50),
                ms(l.p90),
                ms(l.p99),
                ms(l.max),
                ms(l.mean)
            );
        }
        if !self.processes.is_empty() {
            let _ = writeln!(
                out,
                "\n{:<10}{:>8}{:>13}{:>13}{:>13}{:>13}{:>9}{:>15}",
                "process",
                "pid",
                "RSS start",
                "RSS peak",
                "RSS end",
                "KiB/stream",
                "CPU s",
                "CPU s/1k ev"
            );
            for p in &self.processes {
                let mib = |k: Option<u64>| {
                    k.map_or("-".to_owned(), |k| format!("{:.1} MiB", k as f64 / 1024.0))
                };
                let num = |v: Option<f64>, digits: usize| {
                    v.map_or("-".to_owned(), |v| format!("{v:.digits$}"))
                };
                let _ = writeln!(
                    out,
                    "{:<10}{:>8}{:>13}{:>13}{:>13}{:>13}{:>9}{:>15}",
                    p.name,
                    p.pid,
                    mib(p.rss_start_kib),
                    mib(p.rss_peak_kib),
                    mib(p.rss_end_kib),
                    num(p.rss_per_stream_kib, 1),
                    num(p.cpu_s, 2),
                    num(p.cpu_s_per_1000_events, 4)
                );
                if let Some(e) = &p.error {
                    let _ = writeln!(out, "  {}: sampling stopped: {e}", p.name);
                }
            }
        }
        out
    }
}

fn ms(us: Option<u64>) -> String {
    us.map_or("-".to_owned(), |us| format!("{:.2}", us as f64 / 1e3))
}

fn human_bytes(per_s: f64) -> String {
    if per_s >= 1024.0 * 1024.0 {
        format!("{:.2} MiB", per_s / (1024.0 * 1024.0))
    } else {
        format!("{:.1} KiB", per_s / 1024.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A point at `t_s` with `events` so far (cumulative); rates as the sampler makes them.
    fn point(t_s: f64, previous: Option<&Sample>, events: u64) -> Sample {
        let (last_t, last_events) = previous.map_or((0.0, 0), |p| (p.t_s, p.events));
        let interval_s = t_s - last_t;
        Sample {
            t_s,
            interval_s,
            started: 0,
            opened: 0,
            alive: 0,
            completed: 0,
            failed: 0,
            events,
            bytes: events * 100,
            pings: 0,
            ended_early: None,
            dropped: None,
            opened_per_s: 0.0,
            completed_per_s: 0.0,
            failed_per_s: 0.0,
            events_per_s: (events - last_events) as f64 / interval_s.max(1e-3),
            bytes_per_s: 0.0,
            latency_count: 0,
            latency_p50_us: None,
            latency_p99_us: None,
            processes: BTreeMap::new(),
        }
    }

    /// A timeline from (t, cumulative events) pairs.
    fn timeline(points: &[(f64, u64)]) -> Vec<Sample> {
        let mut samples: Vec<Sample> = Vec::new();
        for &(t, events) in points {
            let next = point(t, samples.last(), events);
            samples.push(next);
        }
        samples
    }

    /// What the old summary did: most events came in the last, partial interval, which the
    /// peak left out but the average (over the whole run) did not: an average above the peak.
    #[test]
    fn the_average_never_exceeds_the_peak_when_the_last_interval_is_short() {
        let run = timeline(&[(0.0001, 0), (1.0, 100), (2.0, 200), (2.3, 800)]);
        let average = average_rate(&run, |s| s.events);
        let peak = peak_rate(&run, MIN_PEAK_WINDOW_S, |s| s.events);
        assert!((average - 800.0 / 2.3).abs() < 1e-9, "{average}");
        // The last 0.3 s join the second before them: 700 events in 1.3 s.
        assert!((peak - 700.0 / 1.3).abs() < 1e-9, "{peak}");
        assert!(average <= peak, "average {average} above peak {peak}");
        // Not a rate made of the 0.3 s alone (2,000/s).
        assert!(peak < 1000.0, "{peak}");
    }

    #[test]
    fn full_intervals_keep_their_own_rates() {
        let run = timeline(&[(0.0001, 0), (1.0, 100), (2.0, 400), (3.0, 500)]);
        assert!((peak_rate(&run, MIN_PEAK_WINDOW_S, |s| s.events) - 300.0).abs() < 1e-6);
        assert!((average_rate(&run, |s| s.events) - 500.0 / 3.0).abs() < 1e-9);
        assert!((average_rate(&run, |s| s.bytes) - 50_000.0 / 3.0).abs() < 1e-6);
    }

    #[test]
    fn a_run_shorter_than_a_window_peaks_at_its_average() {
        let run = timeline(&[(0.0001, 0), (0.3, 90)]);
        let average = average_rate(&run, |s| s.events);
        assert!((average - 300.0).abs() < 1e-9);
        assert!((peak_rate(&run, MIN_PEAK_WINDOW_S, |s| s.events) - average).abs() < 1e-9);
        assert_eq!(average_rate(&[], |s| s.events), 0.0);
        assert_eq!(peak_rate(&[], MIN_PEAK_WINDOW_S, |s| s.events), 0.0);
    }
}
