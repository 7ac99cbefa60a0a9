//! Every metric the gateway exports, in one place: names, help texts, labels and buckets.
//!
//! `GET /metrics` on the admin listener serves them in Prometheus' text format (the `prometheus`
//! crate, without its protobuf feature). Two kinds:
//! - **observed** where something happens once per request or per stream (a stream's end, an
//!   upstream attempt, a finished request): label handles are resolved then, never per event;
//! - **read at scrape time** from counts the gateway keeps anyway (the registry, the connection
//!   counts, the upstreams' breakers and pools, the refusal counts): exact by construction, and
//!   free on the hot path.
//!
//! Cardinality is bounded: no label carries an address, a stream id or a key; `outcome`, `status`,
//! `reason` and `route` come from fixed sets, `upstream` from the configuration.

/// `tidegate_connections_active{protocol}`: client connections open now.
pub const CONNECTIONS_ACTIVE: &str = "tidegate_connections_active";
/// `tidegate_connections_total{protocol}`: client connections accepted (and served) so far.
pub const CONNECTIONS_TOTAL: &str = "tidegate_connections_total";
/// `tidegate_streams_active`: streams in the registry now.
pub const STREAMS_ACTIVE: &str = "tidegate_streams_active";
/// `tidegate_streams_total{outcome}`: streams ended, by the outcome the log gives them.
pub const STREAMS_TOTAL: &str = "tidegate_streams_total";
/// `tidegate_requests_total{route,status}`: API requests answered, by route and status.
pub const REQUESTS_TOTAL: &str = "tidegate_requests_total";
/// `tidegate_rejections_total{reason}`: requests and connections refused, by reason.
pub const REJECTIONS_TOTAL: &str = "tidegate_rejections_total";
/// `tidegate_time_to_first_token_seconds`: request received to first content event written.
pub const TIME_TO_FIRST_TOKEN: &str = "tidegate_time_to_first_token_seconds";
/// `tidegate_stream_duration_seconds`: request received to the stream's end.
pub const STREAM_DURATION: &str = "tidegate_stream_duration_seconds";
/// `tidegate_request_duration_seconds{route}`: non-streaming requests, received to answered.
pub const REQUEST_DURATION: &str = "tidegate_request_duration_seconds";
/// `tidegate_relay_delay_seconds`: per event (sampled), upstream bytes read to client write.
pub const RELAY_DELAY: &str = "tidegate_relay_delay_seconds";
/// `tidegate_stream_events_total`: events relayed to clients.
pub const STREAM_EVENTS_TOTAL: &str = "tidegate_stream_events_total";
/// `tidegate_stream_bytes_total`: event bytes relayed to clients.
pub const STREAM_BYTES_TOTAL: &str = "tidegate_stream_bytes_total";
/// `tidegate_heartbeats_total`: `: ping` comments written.
pub const HEARTBEATS_TOTAL: &str = "tidegate_heartbeats_total";
/// `tidegate_upstream_requests_total{upstream,status}`: attempts sent upstream, by answer.
pub const UPSTREAM_REQUESTS_TOTAL: &str = "tidegate_upstream_requests_total";
/// `tidegate_upstream_first_byte_seconds{upstream}`: attempt sent to response headers.
pub const UPSTREAM_FIRST_BYTE: &str = "tidegate_upstream_first_byte_seconds";
/// `tidegate_upstream_retries_total`: attempts beyond the first.
pub const UPSTREAM_RETRIES_TOTAL: &str = "tidegate_upstream_retries_total";
/// `tidegate_upstream_circuit_state{upstream}`: 0 closed, 1 half-open, 2 open.
pub const UPSTREAM_CIRCUIT_STATE: &str = "tidegate_upstream_circuit_state";
/// `tidegate_upstream_connections{upstream}`: open connections to the upstream, any protocol.
pub const UPSTREAM_CONNECTIONS: &str = "tidegate_upstream_connections";
/// `tidegate_tokens_total{type}`: tokens from the upstreams' usage chunks (prompt, completion).
pub const TOKENS_TOTAL: &str = "tidegate_tokens_total";
/// `tidegate_build_info{version}`: always 1.
pub const BUILD_INFO: &str = "tidegate_build_info";
/// `tidegate_max_connections`: the client connection cap in force (0: none).
pub const MAX_CONNECTIONS: &str = "tidegate_max_connections";
/// `tidegate_max_streams`: `limits.max_streams` (0: no cap).
pub const MAX_STREAMS: &str = "tidegate_max_streams";
/// `tidegate_tls_handshakes_total{result}`: TLS handshakes on the API listener, by how they
/// ended (`completed`, `failed`, `timeout`). Only with `[tls]`, as are the next two.
pub const TLS_HANDSHAKES_TOTAL: &str = "tidegate_tls_handshakes_total";
/// `tidegate_tls_certificate_reloads_total{result}`: certificate reloads (SIGHUP or changed
/// files), `ok` or `failed` (the old certificate stayed in use).
pub const TLS_RELOADS_TOTAL: &str = "tidegate_tls_certificate_reloads_total";
/// `tidegate_tls_certificate_expiry_timestamp_seconds`: when the certificate new handshakes get
/// stops being valid (Unix seconds), for the expiry alert.
pub const TLS_CERTIFICATE_EXPIRY: &str = "tidegate_tls_certificate_expiry_timestamp_seconds";

/// `tidegate_resume_streams`: resumable streams held now (live or finished and retained).
pub const RESUME_STREAMS: &str = "tidegate_resume_streams";
/// `tidegate_resume_detached_streams`: resumable streams generating with no client attached.
pub const RESUME_DETACHED_STREAMS: &str = "tidegate_resume_detached_streams";
/// `tidegate_resume_replay_bytes`: event bytes kept for replay, against `resume.memory_budget`.
pub const RESUME_REPLAY_BYTES: &str = "tidegate_resume_replay_bytes";
/// `tidegate_resume_memory_budget_bytes`: `resume.memory_budget`.
pub const RESUME_MEMORY_BUDGET: &str = "tidegate_resume_memory_budget_bytes";
/// `tidegate_resume_requests_total{result}`: resumes, by result (`resumed`, `not_found`,
/// `window_exceeded`).
pub const RESUME_REQUESTS_TOTAL: &str = "tidegate_resume_requests_total";
/// `tidegate_resume_detached_total`: clients that left a live resumable stream (each starts a
/// `detach_grace`).
pub const RESUME_DETACHED_TOTAL: &str = "tidegate_resume_detached_total";
/// `tidegate_resume_expired_total`: detached streams cancelled upstream because nobody resumed
/// them within the grace (or the drain began).
pub const RESUME_EXPIRED_TOTAL: &str = "tidegate_resume_expired_total";
/// `tidegate_resume_evicted_bytes_total`: event bytes dropped from replay buffers to stay within
/// `max_bytes_per_stream` or `memory_budget`.
pub const RESUME_EVICTED_BYTES_TOTAL: &str = "tidegate_resume_evicted_bytes_total";

/// The families exported only with `[resume]` on.
pub const RESUME_NAMES: [&str; 8] = [
    RESUME_STREAMS,
    RESUME_DETACHED_STREAMS,
    RESUME_REPLAY_BYTES,
    RESUME_MEMORY_BUDGET,
    RESUME_REQUESTS_TOTAL,
    RESUME_DETACHED_TOTAL,
    RESUME_EXPIRED_TOTAL,
    RESUME_EVICTED_BYTES_TOTAL,
];

/// The families exported only when the API listener terminates TLS.
pub const TLS_NAMES: [&str; 3] = [
    TLS_HANDSHAKES_TOTAL,
    TLS_RELOADS_TOTAL,
    TLS_CERTIFICATE_EXPIRY,
];

/// The process metrics (the `prometheus` crate's process collector, Linux).
pub const PROCESS_NAMES: [&str; 6] = [
    "process_cpu_seconds_total",
    "process_open_fds",
    "process_max_fds",
    "process_virtual_memory_bytes",
    "process_resident_memory_bytes",
    "process_start_time_seconds",
];

/// Every `tidegate_*` family the gateway exports (histograms as their base name; Prometheus
/// adds `_bucket`, `_sum` and `_count`).
pub const NAMES: [&str; 22] = [
    CONNECTIONS_ACTIVE,
    CONNECTIONS_TOTAL,
    STREAMS_ACTIVE,
    STREAMS_TOTAL,
    REQUESTS_TOTAL,
    REJECTIONS_TOTAL,
    TIME_TO_FIRST_TOKEN,
    STREAM_DURATION,
    REQUEST_DURATION,
    RELAY_DELAY,
    STREAM_EVENTS_TOTAL,
    STREAM_BYTES_TOTAL,
    HEARTBEATS_TOTAL,
    UPSTREAM_REQUESTS_TOTAL,
    UPSTREAM_FIRST_BYTE,
    UPSTREAM_RETRIES_TOTAL,
    UPSTREAM_CIRCUIT_STATE,
    UPSTREAM_CONNECTIONS,
    TOKENS_TOTAL,
    BUILD_INFO,
    MAX_CONNECTIONS,
    MAX_STREAMS,
];

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use http::StatusCode;

use crate::config::MetricsConfig;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Time to first token, in seconds: the OpenTelemetry GenAI semantic conventions' boundaries for
/// `gen_ai.server.time_to_first_token`, so the two can be compared bucket for bucket.
pub const TIME_TO_FIRST_TOKEN_BUCKETS: [f64; 16] = [
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];

/// Request durations, in seconds: the OpenTelemetry GenAI boundaries for
/// `gen_ai.client.operation.duration` (0.01 s doubling to 81.92 s).
pub const REQUEST_DURATION_BUCKETS: [f64; 14] = [
    0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92,
];

/// Stream durations, in seconds: the same doubling boundaries carried on to 43.7 minutes, so a
/// stream near `limits.max_stream_duration`'s default (30 min) still lands in a bucket.
pub const STREAM_DURATION_BUCKETS: [f64; 19] = [
    0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92, 163.84,
    327.68, 655.36, 1310.72, 2621.44,
];

/// Upstream time to response headers, in seconds: from a millisecond (a local model server on
/// loopback) to a minute (`limits.first_byte_timeout` is 60 s by default).
pub const UPSTREAM_FIRST_BYTE_BUCKETS: [f64; 15] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// The gateway's own delay per event, in seconds: tens of microseconds when all is well,
/// milliseconds under load (`loadtest/RESULTS.md`).
pub const RELAY_DELAY_BUCKETS: [f64; 12] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
];

/// The `result` label's values of `tidegate_resume_requests_total`.
pub const RESUME_RESULTS: [&str; 3] = ["resumed", "not_found", "window_exceeded"];

/// The API routes, the `route` label's values.
pub const ROUTES: [&str; 9] = [
    "chat_completions",
    "completions",
    "embeddings",
    "models",
    "responses",
    "responses_stored",
    "responses_input_tokens",
    "responses_compact",
    "streams",
];

/// What the gateway observes as things happen, and renders with what it reads at scrape time.
pub struct Metrics {
    registry: Registry,
    streams_total: IntCounterVec,
    /// `metrics.models` (sorted, for lookup): the models with a `model` label of their own;
    /// empty: no `model` label.
    models: Vec<String>,
    /// `metrics.per_key_labels`: a `key` label with the API key's name.
    key_label: bool,
    requests_total: IntCounterVec,
    rejections_total: IntCounterVec,
    time_to_first_token: HistogramVec,
    stream_duration: Histogram,
    request_duration: HistogramVec,
    relay_delay: Histogram,
    upstream_requests_total: IntCounterVec,
    upstream_first_byte: HistogramVec,
    upstream_retries_total: IntCounter,
    tokens_total: IntCounterVec,
    // Read at scrape time ([`Live`]).
    connections_active: IntGaugeVec,
    connections_total: IntCounterVec,
    streams_active: IntGauge,
    stream_events_total: IntCounter,
    stream_bytes_total: IntCounter,
    heartbeats_total: IntCounter,
    upstream_circuit_state: IntGaugeVec,
    upstream_connections: IntGaugeVec,
    max_connections: IntGauge,
    max_streams: IntGauge,
    /// Events, bytes and heartbeats of the streams that have ended; the live streams' are
    /// added at scrape time.
    ended: EndedStreams,
    /// One scrape at a time: counters read from elsewhere are brought up to date by difference.
    scrape: Mutex<()>,
    /// With `[tls]` ([`Metrics::with_tls`]).
    tls: Option<TlsFamilies>,
    /// With `[resume]` ([`Metrics::with_resume`]).
    resume: Option<ResumeFamilies>,
}

/// The resume families, read at scrape time ([`ResumeLive`]).
struct ResumeFamilies {
    streams: IntGauge,
    detached_streams: IntGauge,
    replay_bytes: IntGauge,
    memory_budget: IntGauge,
    requests_total: IntCounterVec,
    detached_total: IntCounter,
    expired_total: IntCounter,
    evicted_bytes_total: IntCounter,
}

/// The resume store's counts, read at scrape time.
#[derive(Debug, Default, Clone, Copy)]
pub struct ResumeLive {
    /// Resumable streams held: live (attached or detached) and finished ones retained.
    pub streams: u64,
    /// Of those, generating with no client attached.
    pub detached_streams: u64,
    /// Bytes of events kept for replay (with each event's log entry).
    pub replay_bytes: u64,
    /// `resume.memory_budget`.
    pub memory_budget: u64,
    /// Resumes by result.
    pub resumed: u64,
    pub not_found: u64,
    pub window_exceeded: u64,
    /// Clients that went away from a live resumable stream (each start of a grace).
    pub detached: u64,
    /// Detached streams cancelled because nobody resumed them in time (or the drain began).
    pub expired: u64,
    pub evicted_bytes: u64,
}

/// The TLS families, read at scrape time ([`TlsLive`]).
struct TlsFamilies {
    handshakes_total: IntCounterVec,
    reloads_total: IntCounterVec,
    certificate_expiry: IntGauge,
}

/// The TLS listener's counts, read at scrape time.
#[derive(Debug, Default, Clone)]
pub struct TlsLive {
    /// Handshakes by how they ended (`completed`, `failed`, `timeout`).
    pub handshakes: Vec<(&'static str, u64)>,
    pub reloads_ok: u64,
    pub reloads_failed: u64,
    /// The served certificate's end of validity (Unix seconds).
    pub certificate_expiry: i64,
}

#[derive(Default)]
struct EndedStreams {
    events: AtomicU64,
    bytes: AtomicU64,
    heartbeats: AtomicU64,
}

/// What a stream had when it ended, for [`Metrics::stream_ended`].
#[derive(Debug, Clone, Copy)]
pub struct EndedStream<'a> {
    pub outcome: &'static str,
    /// The model the client asked for.
    pub model: &'a str,
    /// The name of the stream's API key, if it had one.
    pub key: Option<&'a str>,
    pub time_to_first_event: Option<Duration>,
    pub duration: Duration,
    pub events: u64,
    pub bytes: u64,
    pub heartbeats: u64,
}

/// What the gateway counts anyway, read at scrape time by the admin API.
#[derive(Debug, Default)]
pub struct Live {
    /// Per protocol name: open now, and opened so far.
    pub connections: Vec<(&'static str, u64, u64)>,
    pub streams_active: u64,
    /// Events, bytes and heartbeats of the streams live now.
    pub live_events: u64,
    pub live_bytes: u64,
    pub live_heartbeats: u64,
    /// Per upstream name: circuit state (0 closed, 1 half-open, 2 open), open connections.
    pub upstreams: Vec<(String, i64, i64)>,
    /// Refusals by reason, as admission control and the connection caps count them.
    pub refusals: Vec<(&'static str, u64)>,
    pub max_connections: u64,
    pub max_streams: u64,
    /// With `[tls]`.
    pub tls: Option<TlsLive>,
    /// With `[resume]`.
    pub resume: Option<ResumeLive>,
}

/// A metric definition the crate refused: only a programming error (a bad name or label) can
/// cause one, and the unit tests build every metric.
#[derive(Debug, thiserror::Error)]
#[error("cannot define the metrics: {0}")]
pub struct MetricsError(#[from] prometheus::Error);

fn histogram(name: &str, help: &str, buckets: &[f64]) -> Result<Histogram, prometheus::Error> {
    Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets.to_vec()))
}

impl Metrics {
    /// The metrics, with the labels `config` allows.
    pub fn new(config: &MetricsConfig) -> Result<Metrics, MetricsError> {
        let registry = Registry::new();
        let mut models = config.models.clone();
        models.sort();
        let model_label = !models.is_empty();
        let key_label = config.per_key_labels;
        // The optional labels, in order, after the families' own.
        let with = |own: &[&'static str], model: bool, key: bool| {
            let mut labels = own.to_vec();
            if model {
                labels.push("model");
            }
            if key {
                labels.push("key");
            }
            labels
        };
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            IntCounterVec::new(Opts::new(name, help), labels)
        };
        let gauge_vec = |name: &str, help: &str, labels: &[&str]| {
            IntGaugeVec::new(Opts::new(name, help), labels)
        };
        let metrics = Metrics {
            streams_total: counter_vec(
                STREAMS_TOTAL,
                "Streams ended, by outcome (completed, client_gone, or the error code).",
                &with(&["outcome"], model_label, key_label),
            )?,
            models,
            key_label,
            requests_total: counter_vec(
                REQUESTS_TOTAL,
                "API requests answered, by route and HTTP status.",
                &["route", "status"],
            )?,
            rejections_total: counter_vec(
                REJECTIONS_TOTAL,
                "Requests and connections refused, by reason.",
                &["reason"],
            )?,
            time_to_first_token: HistogramVec::new(
                HistogramOpts::new(
                    TIME_TO_FIRST_TOKEN,
                    "Streams: request received to the first content event written to the client.",
                )
                .buckets(TIME_TO_FIRST_TOKEN_BUCKETS.to_vec()),
                &with(&[], model_label, false),
            )?,
            stream_duration: histogram(
                STREAM_DURATION,
                "Streams: request received to the stream's end.",
                &STREAM_DURATION_BUCKETS,
            )?,
            request_duration: HistogramVec::new(
                HistogramOpts::new(
                    REQUEST_DURATION,
                    "Non-streaming API requests: received to answered.",
                )
                .buckets(REQUEST_DURATION_BUCKETS.to_vec()),
                &["route"],
            )?,
            relay_delay: histogram(
                RELAY_DELAY,
                "Per relayed event (sampled): upstream bytes read to the client write.",
                &RELAY_DELAY_BUCKETS,
            )?,
            upstream_requests_total: counter_vec(
                UPSTREAM_REQUESTS_TOTAL,
                "Attempts sent to upstreams, by upstream and answer (HTTP status, or error).",
                &["upstream", "status"],
            )?,
            upstream_first_byte: HistogramVec::new(
                HistogramOpts::new(
                    UPSTREAM_FIRST_BYTE,
                    "Attempt sent to the upstream's response headers.",
                )
                .buckets(UPSTREAM_FIRST_BYTE_BUCKETS.to_vec()),
                &["upstream"],
            )?,
            upstream_retries_total: IntCounter::new(
                UPSTREAM_RETRIES_TOTAL,
                "Attempts beyond the first.",
            )?,
            tokens_total: counter_vec(
                TOKENS_TOTAL,
                "Tokens reported by the upstreams' usage chunks, by type.",
                &with(&["type"], model_label, key_label),
            )?,
            connections_active: gauge_vec(
                CONNECTIONS_ACTIVE,
                "Client connections open now, by protocol.",
                &["protocol"],
            )?,
            connections_total: counter_vec(
                CONNECTIONS_TOTAL,
                "Client connections served, by protocol.",
                &["protocol"],
            )?,
            streams_active: IntGauge::new(STREAMS_ACTIVE, "Streams live now.")?,
            stream_events_total: IntCounter::new(
                STREAM_EVENTS_TOTAL,
                "Events relayed to clients.",
            )?,
            stream_bytes_total: IntCounter::new(
                STREAM_BYTES_TOTAL,
                "Event bytes relayed to clients.",
            )?,
            heartbeats_total: IntCounter::new(
                HEARTBEATS_TOTAL,
                "Heartbeat comments written to streams.",
            )?,
            upstream_circuit_state: gauge_vec(
                UPSTREAM_CIRCUIT_STATE,
                "Circuit breaker state: 0 closed, 1 half-open, 2 open.",
                &["upstream"],
            )?,
            upstream_connections: gauge_vec(
                UPSTREAM_CONNECTIONS,
                "Connections open to the upstream (HTTP/1.1 and HTTP/2, in use or idle), all workers.",
                &["upstream"],
            )?,
            max_connections: IntGauge::new(
                MAX_CONNECTIONS,
                "The client connection cap in force (0: none).",
            )?,
            max_streams: IntGauge::new(MAX_STREAMS, "limits.max_streams (0: no cap).")?,
            registry,
            ended: EndedStreams::default(),
            scrape: Mutex::new(()),
            tls: None,
            resume: None,
        };
        let build_info = gauge_vec(BUILD_INFO, "The gateway's version; always 1.", &["version"])?;
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        let r = &metrics.registry;
        r.register(Box::new(build_info))?;
        r.register(Box::new(metrics.streams_total.clone()))?;
        r.register(Box::new(metrics.requests_total.clone()))?;
        r.register(Box::new(metrics.rejections_total.clone()))?;
        r.register(Box::new(metrics.time_to_first_token.clone()))?;
        r.register(Box::new(metrics.stream_duration.clone()))?;
        r.register(Box::new(metrics.request_duration.clone()))?;
        r.register(Box::new(metrics.relay_delay.clone()))?;
        r.register(Box::new(metrics.upstream_requests_total.clone()))?;
        r.register(Box::new(metrics.upstream_first_byte.clone()))?;
        r.register(Box::new(metrics.upstream_retries_total.clone()))?;
        r.register(Box::new(metrics.tokens_total.clone()))?;
        r.register(Box::new(metrics.connections_active.clone()))?;
        r.register(Box::new(metrics.connections_total.clone()))?;
        r.register(Box::new(metrics.streams_active.clone()))?;
        r.register(Box::new(metrics.stream_events_total.clone()))?;
        r.register(Box::new(metrics.stream_bytes_total.clone()))?;
        r.register(Box::new(metrics.heartbeats_total.clone()))?;
        r.register(Box::new(metrics.upstream_circuit_state.clone()))?;
        r.register(Box::new(metrics.upstream_connections.clone()))?;
        r.register(Box::new(metrics.max_connections.clone()))?;
        r.register(Box::new(metrics.max_streams.clone()))?;
        #[cfg(target_os = "linux")]
        r.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        // Families with labels show nothing until a child exists: create the usual ones at zero,
        // so every family is there from the first scrape (and a rate over it starts at 0).
        if !model_label && !key_label {
            for kind in ["prompt", "completion"] {
                metrics.tokens_total.with_label_values(&[kind]);
            }
            for outcome in ["completed", "client_gone"] {
                metrics.streams_total.with_label_values(&[outcome]);
            }
            metrics
                .time_to_first_token
                .with_label_values(&[] as &[&str]);
        }
        for route in ROUTES {
            metrics.requests_total.with_label_values(&[route, "200"]);
            metrics.request_duration.with_label_values(&[route]);
        }
        Ok(metrics)
    }

    /// The metrics with the TLS families ([`TLS_NAMES`]) too, for an API listener with `[tls]`.
    pub fn with_tls(mut self) -> Result<Metrics, MetricsError> {
        let families = TlsFamilies {
            handshakes_total: IntCounterVec::new(
                Opts::new(
                    TLS_HANDSHAKES_TOTAL,
                    "TLS handshakes on the API listener, by how they ended.",
                ),
                &["result"],
            )?,
            reloads_total: IntCounterVec::new(
                Opts::new(
                    TLS_RELOADS_TOTAL,
                    "Certificate reloads: ok, or failed (the current certificate stays).",
                ),
                &["result"],
            )?,
            certificate_expiry: IntGauge::new(
                TLS_CERTIFICATE_EXPIRY,
                "When the served certificate stops being valid, in Unix seconds.",
            )?,
        };
        self.registry
            .register(Box::new(families.handshakes_total.clone()))?;
        self.registry
            .register(Box::new(families.reloads_total.clone()))?;
        self.registry
            .register(Box::new(families.certificate_expiry.clone()))?;
        for result in ["ok", "failed"] {
            families.reloads_total.with_label_values(&[result]);
        }
        self.tls = Some(families);
        Ok(self)
    }

    /// The metrics with the resume families ([`RESUME_NAMES`]) too, for `[resume]` on.
    pub fn with_resume(mut self) -> Result<Metrics, MetricsError> {
        let families = ResumeFamilies {
            streams: IntGauge::new(
                RESUME_STREAMS,
                "Resumable streams held: live, or finished and retained.",
            )?,
            detached_streams: IntGauge::new(
                RESUME_DETACHED_STREAMS,
                "Resumable streams generating with no client attached.",
            )?,
            replay_bytes: IntGauge::new(RESUME_REPLAY_BYTES, "Event bytes kept for replay.")?,
            memory_budget: IntGauge::new(RESUME_MEMORY_BUDGET, "resume.memory_budget.")?,
            requests_total: IntCounterVec::new(
                Opts::new(RESUME_REQUESTS_TOTAL, "Resume requests, by result."),
                &["result"],
            )?,
            detached_total: IntCounter::new(
                RESUME_DETACHED_TOTAL,
                "Clients that left a live resumable stream.",
            )?,
            expired_total: IntCounter::new(
                RESUME_EXPIRED_TOTAL,
                "Detached streams cancelled: nobody resumed them within resume.detach_grace.",
            )?,
            evicted_bytes_total: IntCounter::new(
                RESUME_EVICTED_BYTES_TOTAL,
                "Event bytes dropped from replay buffers to stay within their limits.",
            )?,
        };
        self.registry.register(Box::new(families.streams.clone()))?;
        self.registry
            .register(Box::new(families.detached_streams.clone()))?;
        self.registry
            .register(Box::new(families.replay_bytes.clone()))?;
        self.registry
            .register(Box::new(families.memory_budget.clone()))?;
        self.registry
            .register(Box::new(families.requests_total.clone()))?;
        self.registry
            .register(Box::new(families.detached_total.clone()))?;
        self.registry
            .register(Box::new(families.expired_total.clone()))?;
        self.registry
            .register(Box::new(families.evicted_bytes_total.clone()))?;
        for result in RESUME_RESULTS {
            families.requests_total.with_label_values(&[result]);
        }
        self.resume = Some(families);
        Ok(self)
    }

    /// The `model` label's value for `model`: its own when `metrics.models` lists it, else
    /// `other`.
    fn model_value<'m>(&'m self, model: &'m str) -> &'m str {
        match self.models.binary_search_by(|m| m.as_str().cmp(model)) {
            Ok(_) => model,
            Err(_) => "other",
        }
    }

    /// `own` followed by the optional labels' values, as the family was defined.
    fn label_values<'v>(
        &'v self,
        own: &'v str,
        model: &'v str,
        key: Option<&'v str>,
        with_key: bool,
    ) -> ([&'v str; 3], usize) {
        let mut values = [own, "", ""];
        let mut n = usize::from(!own.is_empty());
        if !self.models.is_empty() {
            values[n] = self.model_value(model);
            n += 1;
        }
        if with_key && self.key_label {
            values[n] = key.unwrap_or("");
            n += 1;
        }
        (values, n)
    }

    /// A stream has ended: its outcome, durations and totals (once per stream).
    pub fn stream_ended(&self, stream: &EndedStream) {
        let (values, n) = self.label_values(stream.outcome, stream.model, stream.key, true);
        self.streams_total.with_label_values(&values[..n]).inc();
        if let Some(first) = stream.time_to_first_event {
            let (values, n) = self.label_values("", stream.model, None, false);
            self.time_to_first_token
                .with_label_values(&values[..n])
                .observe(first.as_secs_f64());
        }
        self.stream_duration.observe(stream.duration.as_secs_f64());
        self.ended
            .events
            .fetch_add(stream.events, Ordering::Relaxed);
        self.ended.bytes.fetch_add(stream.bytes, Ordering::Relaxed);
        self.ended
            .heartbeats
            .fetch_add(stream.heartbeats, Ordering::Relaxed);
    }

    /// An API request has been answered (a stream: its response head).
    pub fn request_answered(
        &self,
        route: &'static str,
        status: StatusCode,
        took: Option<Duration>,
    ) {
        self.requests_total
            .with_label_values(&[route, status.as_str()])
            .inc();
        if let Some(took) = took {
            self.request_duration
                .with_label_values(&[route])
                .observe(took.as_secs_f64());
        }
    }

    /// A request refused for a reason that is not admission control's (those are counted by
    /// admission control and read at scrape time).
    pub fn rejected(&self, reason: &'static str) {
        self.rejections_total.with_label_values(&[reason]).inc();
    }

    /// One attempt to an upstream has its answer (`None`: none came) after `took` (observed as
    /// time to first byte when an answer came); `retry` when it was not the request's first.
    pub fn upstream_attempt(
        &self,
        upstream: &str,
        status: Option<StatusCode>,
        took: Duration,
        retry: bool,
    ) {
        let label = status.as_ref().map_or("error", StatusCode::as_str);
        self.upstream_requests_total
            .with_label_values(&[upstream, label])
            .inc();
        if status.is_some() {
            self.upstream_first_byte
                .with_label_values(&[upstream])
                .observe(took.as_secs_f64());
        }
        if retry {
            self.upstream_retries_total.inc();
        }
    }

    /// One sampled event's delay through the gateway.
    pub fn relay_delay(&self, delay: Duration) {
        self.relay_delay.observe(delay.as_secs_f64());
    }

    /// Tokens from a usage chunk of a stream of `model` under `key`.
    pub fn tokens(&self, prompt: u64, completion: u64, model: &str, key: Option<&str>) {
        for (kind, count) in [("prompt", prompt), ("completion", completion)] {
            let (values, n) = self.label_values(kind, model, key, true);
            self.tokens_total
                .with_label_values(&values[..n])
                .inc_by(count);
        }
    }

    /// The Prometheus text exposition of every metric, with `live` read just before.
    pub fn render(&self, live: &Live) -> String {
        let _one_scrape = self
            .scrape
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for (protocol, open, opened) in &live.connections {
            self.connections_active
                .with_label_values(&[protocol])
                .set(saturating_i64(*open));
            catch_up(
                &self.connections_total.with_label_values(&[protocol]),
                *opened,
            );
        }
        self.streams_active.set(saturating_i64(live.streams_active));
        catch_up(
            &self.stream_events_total,
            self.ended.events.load(Ordering::Relaxed) + live.live_events,
        );
        catch_up(
            &self.stream_bytes_total,
            self.ended.bytes.load(Ordering::Relaxed) + live.live_bytes,
        );
        catch_up(
            &self.heartbeats_total,
            self.ended.heartbeats.load(Ordering::Relaxed) + live.live_heartbeats,
        );
        for (name, state, connections) in &live.upstreams {
            // At zero until the first attempt, as above.
            self.upstream_requests_total
                .with_label_values(&[name, "200"]);
            self.upstream_first_byte.with_label_values(&[name]);
            self.upstream_circuit_state
                .with_label_values(&[name])
                .set(*state);
            self.upstream_connections
                .with_label_values(&[name])
                .set(*connections);
        }
        for (reason, count) in &live.refusals {
            catch_up(&self.rejections_total.with_label_values(&[reason]), *count);
        }
        self.max_connections
            .set(saturating_i64(live.max_connections));
        self.max_streams.set(saturating_i64(live.max_streams));
        if let (Some(families), Some(tls)) = (&self.tls, &live.tls) {
            for (result, count) in &tls.handshakes {
                catch_up(
                    &families.handshakes_total.with_label_values(&[result]),
                    *count,
                );
            }
            let reloads = [("ok", tls.reloads_ok), ("failed", tls.reloads_failed)];
            for (result, count) in reloads {
                catch_up(&families.reloads_total.with_label_values(&[result]), count);
            }
            families.certificate_expiry.set(tls.certificate_expiry);
        }
        if let (Some(families), Some(resume)) = (&self.resume, &live.resume) {
            families.streams.set(saturating_i64(resume.streams));
            families
                .detached_streams
                .set(saturating_i64(resume.detached_streams));
            families
                .replay_bytes
                .set(saturating_i64(resume.replay_bytes));
            families
                .memory_budget
                .set(saturating_i64(resume.memory_budget));
            let results = [resume.resumed, resume.not_found, resume.window_exceeded];
            for (result, count) in RESUME_RESULTS.into_iter().zip(results) {
                catch_up(&families.requests_total.with_label_values(&[result]), count);
            }
            catch_up(&families.detached_total, resume.detached);
            catch_up(&families.expired_total, resume.expired);
            catch_up(&families.evicted_bytes_total, resume.evicted_bytes);
        }
        let mut out = Vec::with_capacity(16 * 1024);
        // Text encoding into a Vec fails only on a metric the crate itself built wrongly.
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::warn!(error = %e, "metrics encoding failed");
        }
        String::from_utf8_lossy(&out).into_owned()
    }
}

/// Brings a counter up to `value` (never down: a stream that ends between reading the live
/// streams and the ended totals is briefly missed, and comes in with the next scrape).
fn catch_up(counter: &IntCounter, value: u64) {
    let now = counter.get();
    if value > now {
        counter.inc_by(value - now);
    }
}

fn saturating_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// The reason under which an error that ends a request before any upstream work is counted in
/// `tidegate_rejections_total`, for errors admission control does not count itself.
pub fn rejection_reason(code: &str) -> Option<&'static str> {
    Some(match code {
        "request_too_large" => "body_too_large",
        "request_body_timeout" => "body_timeout",
        "invalid_json"
        | "missing_required_parameter"
        | "invalid_type"
        | "unsupported_media_type"
        | "ambiguous_request_framing" => "bad_request",
        "model_not_found" => "model_not_found",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_is_defined_and_rendered_under_its_name() {
        let m = Metrics::new(&MetricsConfig::default()).unwrap();
        m.stream_ended(&EndedStream {
            outcome: "completed",
            model: "gpt-4o",
            key: None,
            time_to_first_event: Some(Duration::from_millis(120)),
            duration: Duration::from_secs(3),
            events: 10,
            bytes: 1000,
            heartbeats: 1,
        });
        m.request_answered("chat_completions", StatusCode::OK, None);
        m.request_answered(
            "embeddings",
            StatusCode::OK,
            Some(Duration::from_millis(30)),
        );
        m.rejected("bad_request");
        m.upstream_attempt(
            "default",
            Some(StatusCode::OK),
            Duration::from_millis(5),
            false,
        );
        m.relay_delay(Duration::from_micros(80));
        let text = m.render(&Live {
            connections: vec![("http1", 2, 5), ("http2", 0, 1)],
            streams_active: 1,
            live_events: 4,
            upstreams: vec![("default".into(), 0, 1)],
            refusals: vec![("ip_rate", 3)],
            ..Live::default()
        });
        for name in NAMES {
            assert!(
                text.contains(&format!("# TYPE {name} ")),
                "{name} missing:\n{text}"
            );
        }
        #[cfg(target_os = "linux")]
        for name in PROCESS_NAMES {
            assert!(text.contains(&format!("# TYPE {name} ")), "{name} missing");
        }
        assert!(text.contains("tidegate_stream_events_total 14\n"), "{text}");
        assert!(text.contains(r#"tidegate_rejections_total{reason="ip_rate"} 3"#));
        assert!(text.contains(r#"tidegate_connections_total{protocol="http1"} 5"#));
        // Counters read from elsewhere never go down, even if the source reads lower once.
        let text = m.render(&Live::default());
        assert!(text.contains("tidegate_stream_events_total 14\n"), "{text}");
        // Without [tls], no TLS family.
        for name in TLS_NAMES {
            assert!(!text.contains(name), "{name} without TLS");
        }
    }

    #[test]
    fn the_tls_families_come_with_tls() {
        let m = Metrics::new(&MetricsConfig::default())
            .unwrap()
            .with_tls()
            .unwrap();
        let text = m.render(&Live {
            tls: Some(TlsLive {
                handshakes: vec![("completed", 7), ("failed", 2), ("timeout", 1)],
                reloads_ok: 3,
                reloads_failed: 1,
                certificate_expiry: 1_900_000_000,
            }),
            ..Live::default()
        });
        for name in TLS_NAMES {
            assert!(text.contains(&format!("# TYPE {name} ")), "{name} missing");
        }
        for line in [
            r#"tidegate_tls_handshakes_total{result="completed"} 7"#,
            r#"tidegate_tls_handshakes_total{result="timeout"} 1"#,
            r#"tidegate_tls_certificate_reloads_total{result="failed"} 1"#,
            "tidegate_tls_certificate_expiry_timestamp_seconds 1900000000",
        ] {
            assert!(text.contains(line), "{line} missing:\n{text}");
        }
    }
}

#[cfg(test)]
mod label_tests {
    use super::*;

    #[test]
    fn model_and_key_labels_only_as_configured() {
        let m = Metrics::new(&MetricsConfig {
            models: vec!["gpt-4o".into(), "mock-1".into()],
            per_key_labels: true,
        })
        .unwrap();
        for (model, key) in [("gpt-4o", Some("team-a")), ("made-up-by-a-client", None)] {
            m.stream_ended(&EndedStream {
                outcome: "completed",
                model,
                key,
                time_to_first_event: Some(Duration::from_millis(5)),
                duration: Duration::from_secs(1),
                events: 1,
                bytes: 1,
                heartbeats: 0,
            });
        }
        m.tokens(3, 4, "mock-1", Some("team-a"));
        let text = m.render(&Live::default());
        assert!(
            text.contains(
                r#"tidegate_streams_total{key="team-a",model="gpt-4o",outcome="completed"} 1"#
            ),
            "{text}"
        );
        // A model not listed is "other", whatever the client sent.
        assert!(
            text.contains(r#"model="other",outcome="completed"} 1"#),
            "{text}"
        );
        assert!(!text.contains("made-up"), "{text}");
        assert!(
            text.contains(
                r#"tidegate_tokens_total{key="team-a",model="mock-1",type="completion"} 4"#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#"tidegate_time_to_first_token_seconds_count{model="other"} 1"#),
            "{text}"
        );

        // Off (the default): no model or key label at all.
        let m = Metrics::new(&MetricsConfig::default()).unwrap();
        m.stream_ended(&EndedStream {
            outcome: "completed",
            model: "gpt-4o",
            key: Some("team-a"),
            time_to_first_event: None,
            duration: Duration::from_secs(1),
            events: 1,
            bytes: 1,
            heartbeats: 0,
        });
        let text = m.render(&Live::default());
        assert!(
            text.contains(r#"tidegate_streams_total{outcome="completed"} 1"#),
            "{text}"
        );
        assert!(
            !text.contains("team-a") && !text.contains("gpt-4o"),
            "{text}"
        );
    }
}
