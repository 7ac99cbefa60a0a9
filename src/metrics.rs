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
/// `tidegate_upstream_connections{upstream}`: open HTTP/2 connections to the upstream.
pub const UPSTREAM_CONNECTIONS: &str = "tidegate_upstream_connections";
/// `tidegate_tokens_total{type}`: tokens from the upstreams' usage chunks (prompt, completion).
pub const TOKENS_TOTAL: &str = "tidegate_tokens_total";
/// `tidegate_build_info{version}`: always 1.
pub const BUILD_INFO: &str = "tidegate_build_info";
/// `tidegate_max_connections`: the client connection cap in force (0: none).
pub const MAX_CONNECTIONS: &str = "tidegate_max_connections";
/// `tidegate_max_streams`: `limits.max_streams` (0: no cap).
pub const MAX_STREAMS: &str = "tidegate_max_streams";

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
