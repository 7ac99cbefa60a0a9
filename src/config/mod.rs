//! tidegate's configuration: one TOML document, validated before anything
//! binds a socket.
//!
//! The struct tree below is the schema, written once: serde reads and writes
//! it, each field's doc comment is its reference text (README.md's
//! "Configuration reference" table says the same in short, and a unit test
//! keeps their key lists equal), its `#[default(..)]` is a named constant, and
//! its unit is its serde adapter: durations through [`humantime`]
//! (`"15s"`, `"1h 30m"`), sizes through [`bytesize`] (`65536` or `"64 KiB"`).
//! Adding a key means adding its field and, if it has one, its rule in
//! [`Config::validate`].
//!
//! Every key is optional; an empty document is [`Config::default`].
//! [`Config::from_toml_str`] reports problems with their dotted key paths,
//! as many as it can at once:
//!
//! ```text
//! limits.first_byte_timeout: invalid value: string "sixty", expected a duration
//! limits.bogus: unknown key
//! ```
//!
//! A TOML syntax error is reported alone, located by line and column. Then
//! every value of the wrong type and every unknown key (with a "did you mean"
//! hint, see `load.rs`) are reported together; once every value has its type,
//! [`Config::validate`] checks the ranges and cross-field rules and reports all
//! of its errors. `validate` runs again after command-line overrides.
//!
//! The upstream API key never appears in the file: `upstream.api_key_env`
//! names an environment variable, and [`Config::resolve_secrets`] reads it
//! into a [`Secret`], which prints as `<redacted>` everywhere. The admin
//! bearer token (`admin.token_env`) is handled the same way.
//!
//! One upstream is the `[upstream]` table; several are `[[upstreams]]`
//! elements, each with the keys of `[upstream]` and its own `name`
//! ([`Config::upstream_list`] gives the upstreams in effect either way).
//! `[[routes]]` say which upstreams serve which models, `[retry]` and
//! `[breaker]` how failures are retried and when an upstream is taken out.
//! Keys inside array elements are reported with their index
//! (`upstreams[1].weight`), as serde reports them; the schema and README.md
//! name them without one (`routes[].models`).

mod formats;
mod load;
mod upstream_url;

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::ops::RangeInclusive;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use smart_default::SmartDefault;

pub use self::upstream_url::UpstreamUrl;

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;

// ---- defaults and ranges ----------------------------------------------------

/// Default client-facing listener: loopback only, so a fresh install is not
/// reachable from the network until the operator says so.
pub const DEFAULT_LISTEN: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 8080));
/// Default `worker_threads`: 0, one per CPU the process may use.
pub const DEFAULT_WORKER_THREADS: usize = 0;
/// Allowed `worker_threads`: 0 (one per CPU) to 256.
pub const WORKER_THREADS_RANGE: RangeInclusive<u64> = 0..=256;
/// Default upstream: the public OpenAI API.
pub const DEFAULT_UPSTREAM_BASE_URL: &str = "https://api.openai.com/v1";
/// Default request body cap: 1 MiB, far above any realistic chat request.
pub const DEFAULT_MAX_BODY_BYTES: u64 = MIB;
/// Allowed `limits.max_body_bytes`: 1 byte to 64 MiB.
pub const MAX_BODY_BYTES_RANGE: RangeInclusive<u64> = 1..=64 * MIB;
/// Default request head cap: 8 KiB, as nginx's `large_client_header_buffers` line size. It is
/// also the size of hyper's HTTP/1.1 read buffer, which lives as long as the connection: with a
/// larger cap a request that arrives in two reads (head, then body) grows that buffer to twice
/// the cap for the whole stream (about 4 KiB more RSS per HTTP/1.1 stream, `loadtest/RESULTS.md`).
pub const DEFAULT_MAX_HEADER_BYTES: usize = 8 * 1024;
/// Allowed `limits.max_header_bytes`: 8 KiB (hyper's HTTP/1 read buffer
/// cannot be smaller) to 1 MiB.
pub const MAX_HEADER_BYTES_RANGE: RangeInclusive<u64> = 8 * KIB..=MIB;
/// Default cap on one upstream SSE event: 1 MiB. A Responses stream's closing events
/// (`response.output_text.done`, `response.content_part.done`, `response.output_item.done`,
/// `response.completed`) each carry the whole answer: a 128k-token answer is about 512 KB of
/// text, which must not fail at its very end. Chat chunks stay far below it, and the buffer
/// grows only as far as an event actually is.
pub const DEFAULT_MAX_EVENT_BYTES: usize = 1024 * 1024;
/// Allowed `limits.max_event_bytes`: 1 KiB to 16 MiB.
pub const MAX_EVENT_BYTES_RANGE: RangeInclusive<u64> = KIB..=16 * MIB;
/// Default time a client has to send its request head: 10 s.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Default time a client has to send its whole request body: 30 s.
pub const DEFAULT_BODY_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Default TCP (+TLS) connect timeout towards the upstream: 5 s.
pub const DEFAULT_UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default wait for the upstream's response headers: 60 s.
pub const DEFAULT_FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(60);
/// Default maximum silence between upstream body bytes: 120 s.
pub const DEFAULT_UPSTREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// Default hard cap on one response's total duration: 30 min.
pub const DEFAULT_MAX_STREAM_DURATION: Duration = Duration::from_secs(30 * 60);
/// Default grace period for in-flight streams on shutdown: 30 s.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// Default interval between `: ping` heartbeats on an otherwise silent
/// stream: 15 s, well inside the 60 s idle timeout of nginx
/// (`proxy_read_timeout`) and common cloud load balancers.
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(15);
/// Smallest non-zero `streams.heartbeat_interval`: 10 ms, so a typo such as
/// `"1ms"` cannot turn heartbeats into a flood of pings; `0s` switches
/// heartbeats off.
pub const MIN_HEARTBEAT_INTERVAL: Duration = Duration::from_millis(10);
/// Default cap on unsent response bytes held per stream: 64 KiB.
pub const DEFAULT_MAX_BUFFERED_BYTES: usize = 64 * 1024;
/// Allowed `streams.max_buffered_bytes`: 8 KiB (the smallest buffer hyper's
/// HTTP/1.1 connection accepts) to 16 MiB.
pub const MAX_BUFFERED_BYTES_RANGE: RangeInclusive<u64> = 8 * KIB..=16 * MIB;
/// Default time a client may take none of a stream's pending data before
/// it is cut: 30 s.
pub const DEFAULT_CLIENT_STALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Shortest admin bearer token accepted from `admin.token_env`: 16 bytes,
/// so a token cannot be trivially guessed.
pub const MIN_ADMIN_TOKEN_BYTES: usize = 16;
/// Upper bound for every duration: 365 days. Far beyond any sensible
/// timeout, it exists so a typo such as `"99999999999h"` is caught here
/// instead of overflowing `Instant + duration` (which panics) at run time.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 60 * 60);
/// Default `upstream.name`: what the single `[upstream]` goes by in logs, the admin API, the
/// `x-tidegate-upstream` header, metrics and `[[routes]]`.
pub const DEFAULT_UPSTREAM_NAME: &str = "default";
/// Longest upstream name, in characters: room for any sensible name, while log lines, metric
/// labels and the `x-tidegate-upstream` header stay short.
pub const MAX_UPSTREAM_NAME_CHARS: usize = 64;
/// Default `upstream.protocol`: HTTP/2 where an https server offers it, so nothing has to be
/// known about the server; HTTP/1.1 otherwise.
pub const DEFAULT_UPSTREAM_PROTOCOL: UpstreamProtocol = UpstreamProtocol::Auto;
/// Default `upstream.weight`: 1, so upstreams that set none share a route's traffic equally.
pub const DEFAULT_UPSTREAM_WEIGHT: u32 = 1;
/// Allowed `upstream.weight`: 1 to 1000. An upstream that should get no traffic is left out of
/// the route instead of weighted 0; 1000 steps are finer than any traffic split needs.
pub const UPSTREAM_WEIGHT_RANGE: RangeInclusive<u32> = 1..=1000;
/// Allowed `limits.per_ip.requests_per_second` and `burst`: 0 (off) to 1,000,000.
pub const REQUESTS_PER_SECOND_RANGE: RangeInclusive<u32> = 0..=1_000_000;
/// Default `limits.per_ip.ipv6_prefix`: 64, the prefix one customer or host usually gets.
pub const DEFAULT_IPV6_PREFIX: u8 = 64;
/// Allowed `limits.per_ip.ipv6_prefix`: 16 to 128 bits.
pub const IPV6_PREFIX_RANGE: RangeInclusive<u32> = 16..=128;
/// Default `limits.per_ip.max_tracked`: 100,000 client addresses, 4–7 MiB of rate-limiter state
/// at the 37–73 bytes per address measured (table and RSS, RESULTS.md "Bounded memory under
/// address spraying"): more clients than one gateway serves within a rate period, while a
/// spray of millions of addresses costs no more.
pub const DEFAULT_MAX_TRACKED: u32 = 100_000;
/// Allowed `limits.per_ip.max_tracked`: 1 to 10,000,000 (under 1 GiB): always a cap, since
/// bounding memory is its point.
pub const MAX_TRACKED_RANGE: RangeInclusive<u32> = 1..=10_000_000;
/// Allowed `limits.max_streams` and `limits.per_ip.max_streams`: 0 (no cap) to 10,000,000.
pub const MAX_STREAMS_CAP_RANGE: RangeInclusive<u32> = 0..=10_000_000;
/// Allowed `limits.max_connections` and `limits.per_ip.max_connections`: 0 (derived, or no
/// cap per address) to 10,000,000.
pub const MAX_CONNECTIONS_RANGE: RangeInclusive<u32> = 0..=10_000_000;
/// Default `limits.listen_backlog`: 4096, Linux's default `net.core.somaxconn` since 5.4 (which
/// caps it). The standard library and tokio ask for 128, which a burst of new connections
/// (a reconnect wave after a balancer's restart) overflows: the kernel then drops SYNs, and each
/// dropped client waits a second or more for its retransmission.
pub const DEFAULT_LISTEN_BACKLOG: u32 = 4096;
/// Allowed `limits.listen_backlog`: 1 to 65,535 (the kernel caps it at `net.core.somaxconn`).
pub const LISTEN_BACKLOG_RANGE: RangeInclusive<u32> = 1..=65_535;
/// Default `client_ip.proxy_header_timeout`: 5 s. A load balancer writes the header with the
/// connection's first bytes; anything slower is not one.
pub const DEFAULT_PROXY_HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// Default `upstream.max_streams`: 0, no cap of the gateway's own (the upstream's limits still
/// apply).
pub const DEFAULT_MAX_STREAMS: u32 = 0;
/// Allowed `upstream.max_streams`: 0 (no cap) to 1,000,000, far more than one process carries,
/// so an extra digit is caught rather than read as "no real cap".
pub const MAX_STREAMS_RANGE: RangeInclusive<u32> = 0..=1_000_000;
/// Default `upstream.max_streams_per_connection`: 100, the least SETTINGS_MAX_CONCURRENT_STREAMS
/// RFC 9113 (section 5.1.2) recommends a server allow, so no conforming server makes requests
/// queue behind our own limit; it also bounds how many streams one lost HTTP/2 connection takes
/// down with it.
pub const DEFAULT_MAX_STREAMS_PER_CONNECTION: u32 = 100;
/// Allowed `upstream.max_streams_per_connection`: 1 to 10,000, so that one lost connection (and
/// one connection's flow-control window) is never shared by more streams than that.
pub const MAX_STREAMS_PER_CONNECTION_RANGE: RangeInclusive<u32> = 1..=10_000;
/// Default `upstream.idle_connection_timeout`: 60 s, shorter than the usual 120 s+ keep-alive of
/// LLM API servers, so the gateway closes an idle connection first and never sends a request on
/// one the server is closing.
pub const DEFAULT_IDLE_CONNECTION_TIMEOUT: Duration = Duration::from_secs(60);
/// Default `retry.max_attempts`: 3, the first try and two retries: enough to get past one bad
/// connection or one overloaded upstream; the retry budget keeps an outage from tripling the
/// load.
pub const DEFAULT_RETRY_MAX_ATTEMPTS: u32 = 3;
/// Allowed `retry.max_attempts`: 1 (no retries) to 10; more attempts only multiply the load on
/// upstreams that are already failing.
pub const RETRY_MAX_ATTEMPTS_RANGE: RangeInclusive<u32> = 1..=10;
/// Default `retry.initial_backoff`: 250 ms, enough to get past a momentary failure, short next
/// to a model's time to first token.
pub const DEFAULT_RETRY_INITIAL_BACKOFF: Duration = Duration::from_millis(250);
/// Default `retry.max_backoff`: 2 s, so the waits between a request's attempts stay small next
/// to the default `limits.first_byte_timeout` the client is already prepared to wait.
pub const DEFAULT_RETRY_MAX_BACKOFF: Duration = Duration::from_secs(2);
/// Default `retry.max_retry_after`: 5 s. An upstream asking for a longer wait (`Retry-After`)
/// is not retried: its answer is relayed, so the client's SDK backs off instead of the gateway
/// holding the request.
pub const DEFAULT_RETRY_MAX_RETRY_AFTER: Duration = Duration::from_secs(5);
/// Default `retry.budget_percent`: 20, so retries add at most a fifth to the load on the
/// upstreams (Linkerd's retry budget uses the same ratio).
pub const DEFAULT_RETRY_BUDGET_PERCENT: u32 = 20;
/// Default `retry.budget_min_retries`: 10 per window, so a quiet gateway, whose 20 % may be less
/// than one request, can still retry.
pub const DEFAULT_RETRY_BUDGET_MIN_RETRIES: u32 = 10;
/// Allowed `retry.budget_min_retries`: 0 to 1,000,000 per window; a larger floor is no budget.
pub const RETRY_BUDGET_MIN_RETRIES_RANGE: RangeInclusive<u32> = 0..=1_000_000;
/// Default `retry.budget_window`: 10 s, as Linkerd's retry budget: long enough to hold a
/// meaningful number of requests, short enough to recover soon after an outage.
pub const DEFAULT_RETRY_BUDGET_WINDOW: Duration = Duration::from_secs(10);
/// Allowed percentages (`retry.budget_percent`, `breaker.failure_percent`): 0 to 100.
pub const PERCENT_RANGE: RangeInclusive<u32> = 0..=100;
/// Shortest `retry.budget_window` and `breaker.window`: 1 s. A shorter window holds too few
/// requests for a ratio over it to mean anything.
pub const MIN_WINDOW: Duration = Duration::from_secs(1);
/// Default `breaker.consecutive_failures`: 5 failures in a row open an upstream's breaker: an
/// upstream that is down is noticed within a handful of requests.
pub const DEFAULT_BREAKER_CONSECUTIVE_FAILURES: u32 = 5;
/// Allowed `breaker.consecutive_failures`: 0 (this trigger off) to 1000.
pub const BREAKER_CONSECUTIVE_FAILURES_RANGE: RangeInclusive<u32> = 0..=1000;
/// Default `breaker.failure_percent`: 50, an upstream failing half of its requests is taken out;
/// a few failures among many successes are left to retries.
pub const DEFAULT_BREAKER_FAILURE_PERCENT: u32 = 50;
/// Default `breaker.min_requests`: 20 requests in the window before `failure_percent` is judged,
/// so two failures out of three requests do not open a breaker.
pub const DEFAULT_BREAKER_MIN_REQUESTS: u32 = 20;
/// Allowed `breaker.min_requests`: 1 to 1,000,000 (0 would mean the same as 1: any failure in an
/// empty window is 100 %).
pub const BREAKER_MIN_REQUESTS_RANGE: RangeInclusive<u32> = 1..=1_000_000;
/// Default `breaker.window`: 30 s of requests count towards `failure_percent`, long enough to
/// reach `min_requests` on a modest load.
pub const DEFAULT_BREAKER_WINDOW: Duration = Duration::from_secs(30);
/// Default `breaker.open_for`: 10 s an open breaker keeps its upstream out before one probe
/// request decides whether it closes: short enough that a recovered upstream is back quickly.
pub const DEFAULT_BREAKER_OPEN_FOR: Duration = Duration::from_secs(10);
/// Default `auth.mode`: no keys asked, as before keys existed; a gateway serving anyone but
/// trusted clients sets `"keys"`.
pub const DEFAULT_AUTH_MODE: AuthMode = AuthMode::None;
/// Default log output format.
pub const DEFAULT_LOG_FORMAT: LogFormat = LogFormat::Text;
/// Default log filter directive.
pub const DEFAULT_LOG_LEVEL: &str = "info";
/// Time a client has to complete its TLS handshake (`tls.handshake_timeout`): rustls has no
/// deadline of its own, and a client that stalls mid-handshake would hold its socket forever.
pub const DEFAULT_TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

// ---- types ------------------------------------------------------------------

/// The whole, validated gateway configuration: the root of the TOML document.
///
/// This struct tree is the schema. Each field carries its reference text (doc comment), its
/// default (`#[default(..)]`, a named constant) and its unit (`#[serde(with = ..)]`); the rules
/// beyond its type live in [`Config::validate`].
#[derive(Debug, Clone, PartialEq, Eq, SmartDefault, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    /// Address of the client-facing listener (`listen`). Default
    /// [`DEFAULT_LISTEN`]; set `0.0.0.0:8080` or `[::]:8080` to serve the
    /// network.
    #[default(DEFAULT_LISTEN)]
    #[serde(with = "formats::socket_addr")]
    pub listen: SocketAddr,
    /// Threads that serve client connections (`worker_threads`). Each runs its own event loop,
    /// accepts its own share of connections and keeps its own upstream connections, so a stream
    /// lives on one thread from accept to last byte and threads never wait on each other, as
    /// with nginx's worker processes. 0 means one per CPU the process may use (see
    /// [`Config::worker_count`]). Default [`DEFAULT_WORKER_THREADS`], allowed
    /// [`WORKER_THREADS_RANGE`].
    #[default(DEFAULT_WORKER_THREADS)]
    pub worker_threads: usize,
    /// The optional admin listener (`[admin]`).
    pub admin: AdminConfig,
    /// Where requests are relayed to, when there is one upstream (`[upstream]`).
    pub upstream: UpstreamConfig,
    /// Several named upstreams (`[[upstreams]]`), each a table with the keys of `[upstream]` and
    /// a `name` of its own. Default: none, and `[upstream]` is the one upstream.
    ///
    /// The two forms are exclusive: [`Config::validate`] rejects `[[upstreams]]` together with
    /// an `[upstream]` that differs from [`UpstreamConfig::default`]. Values are compared rather
    /// than whether the table was in the file, so the rule also holds for a config built in code
    /// or changed after loading, and an `[upstream]` that only restates defaults changes nothing
    /// and is accepted. Use [`Config::upstream_list`] for the upstreams in effect.
    pub upstreams: Vec<UpstreamConfig>,
    /// Which upstreams serve which models (`[[routes]]`). A request goes to the FIRST route, in
    /// file order, with an entry in `models` that matches its model (see [`Config::route_for`]),
    /// so specific routes go before broad patterns. Default: none, and every upstream serves every
    /// model. When there are routes, a model no route matches has no upstream (end the list with
    /// a route for `"*"` to catch the rest), and an upstream that is in no route receives nothing.
    pub routes: Vec<RouteConfig>,
    /// How failed upstream attempts are retried (`[retry]`).
    pub retry: RetryConfig,
    /// When an upstream is taken out of rotation after failures (`[breaker]`).
    pub breaker: BreakerConfig,
    /// Size and time limits (`[limits]`).
    pub limits: Limits,
    /// Heartbeats and backpressure for streaming responses (`[streams]`).
    pub streams: StreamsConfig,
    /// Graceful shutdown behaviour (`[shutdown]`).
    pub shutdown: ShutdownConfig,
    /// Logging (`[log]`).
    pub log: LogConfig,
    /// Which address a request comes from (`[client_ip]`).
    pub client_ip: ClientIpConfig,
    /// Who may use the API: gateway API keys (`[auth]`).
    pub auth: AuthConfig,
    /// What `/metrics` labels (`[metrics]`).
    pub metrics: MetricsConfig,
    /// Client-side HTTP/2 limits (`[http2]`).
    pub http2: Http2Config,
    /// TLS termination on the API listener (`[tls]`).
    pub tls: TlsConfig,
    /// Which web pages on other origins may call the API from a browser (`[cors]`).
    pub cors: CorsConfig,
    /// Streams a client can pick back up after its connection dropped (`[resume]`).
    pub resume: ResumeConfig,
    /// The demo chat page (`[demo]`).
    pub demo: DemoConfig,
}

/// Default `resume.detach_grace`: 30 s, long enough for a phone to change networks and
/// reconnect, short enough that an abandoned generation stops costing upstream tokens soon.
pub const DEFAULT_RESUME_DETACH_GRACE: Duration = Duration::from_secs(30);
/// Default `resume.retain_after_done`: 60 s, for a client that lost the last events of a
/// finished stream to come back for them.
pub const DEFAULT_RESUME_RETAIN_AFTER_DONE: Duration = Duration::from_secs(60);
/// Longest `resume.detach_grace` and `resume.retain_after_done`: 1 hour. A detached stream holds
/// its upstream request and stream slot, a retained one its replay buffer.
pub const MAX_RESUME_HOLD: Duration = Duration::from_secs(3600);
/// Default `resume.max_bytes_per_stream`: 1 MiB, a long answer (about 5,000 chat chunks of 200
/// bytes) whole.
pub const DEFAULT_RESUME_MAX_BYTES_PER_STREAM: usize = MIB as usize;
/// Default `resume.memory_budget`: 256 MiB for all replay buffers together, 26 KiB a stream at
/// 10,000 streams.
pub const DEFAULT_RESUME_MEMORY_BUDGET: usize = 256 * MIB as usize;
/// Allowed `resume.memory_budget`: 1 MiB to 64 GiB.
pub const RESUME_MEMORY_BUDGET_RANGE: RangeInclusive<u64> = MIB..=64 * 1024 * MIB;
/// Longest `resume.instance_id`: a DNS label's 63 characters, so a Kubernetes pod's name fits.
pub const MAX_INSTANCE_ID_CHARS: usize = 63;

/// `[resume]`: resumable streams. With it on, every relayed event carries `id: <n>`, a stream's
/// answer carries a resume token, and a client whose connection drops can pick the stream up
/// again with `GET /v1/streams/{id}` while the generation goes on without it. Off by default:
/// the relay is then byte for byte what the upstream sent.
#[derive(Debug, Clone, PartialEq, Eq, SmartDefault, Serialize, Deserialize)]
#[serde(default, expecting = "a table (a [resume] section)")]
pub struct ResumeConfig {
    /// Whether streams can be resumed (`resume.enabled`). Default false.
    pub enabled: bool,
    /// This instance's name in stream ids, `st_<instance_id>_<n>` (`resume.instance_id`), so
    /// that the proxy in front of a fleet can send a resume to the instance that owns the
    /// stream (`deploy/nginx/tidegate.conf`). Letters, digits and `-`, at most
    /// [`MAX_INSTANCE_ID_CHARS`]; unique in the fleet. Default: random per process.
    pub instance_id: Option<String>,
    /// How long a stream whose client went away keeps generating for a resume
    /// (`resume.detach_grace`); then the upstream request is cancelled. Default
    /// [`DEFAULT_RESUME_DETACH_GRACE`], at most [`MAX_RESUME_HOLD`].
    #[default(DEFAULT_RESUME_DETACH_GRACE)]
    #[serde(with = "formats::duration")]
    pub detach_grace: Duration,
    /// How long a finished stream stays resumable (`resume.retain_after_done`). Default
    /// [`DEFAULT_RESUME_RETAIN_AFTER_DONE`], at most [`MAX_RESUME_HOLD`]; `0s` forgets a stream
    /// when it ends.
    #[default(DEFAULT_RESUME_RETAIN_AFTER_DONE)]
    #[serde(with = "formats::duration")]
    pub retain_after_done: Duration,
    /// Most bytes of events one stream keeps for replay (`resume.max_bytes_per_stream`); older
    /// events are dropped first, and a resume from before them gets `409
    /// resume_window_exceeded`. At least `limits.max_event_bytes`. Default
    /// [`DEFAULT_RESUME_MAX_BYTES_PER_STREAM`].
    #[default(DEFAULT_RESUME_MAX_BYTES_PER_STREAM)]
    #[serde(with = "formats::size")]
    pub max_bytes_per_stream: usize,
    /// Most bytes of events all streams together keep for replay (`resume.memory_budget`). Past
    /// it, the oldest streams' oldest events are dropped first (counted in
    /// `tidegate_resume_evicted_bytes_total`). At least `max_bytes_per_stream`. Default
    /// [`DEFAULT_RESUME_MEMORY_BUDGET`], allowed [`RESUME_MEMORY_BUDGET_RANGE`].
    #[default(DEFAULT_RESUME_MEMORY_BUDGET)]
    #[serde(with = "formats::size")]
    pub memory_budget: usize,
}

/// `[demo]`: what the demo (`tidegate` with no arguments) serves besides the API; it turns
/// these on itself.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, expecting = "a table (a [demo] section)")]
pub struct DemoConfig {
    /// Whether `GET /` serves the demo chat page (`demo.page`): one page, embedded in the
    /// binary, that streams a completion in the browser and resumes it when the connection is
    /// cut. Default `false`: `/` is a 404, as any unknown path.
    pub page: bool,
}

/// Default `cors.max_age`: 10 minutes, how long a browser may reuse a preflight's answer
/// (Chromium caps it at 2 hours, Firefox at 24).
pub const DEFAULT_CORS_MAX_AGE: Duration = Duration::from_secs(600);
/// Longest `cors.max_age`: 24 hours, the most any browser honours.
pub const MAX_CORS_MAX_AGE: Duration = Duration::from_secs(24 * 3600);

/// `[cors]`: cross-origin requests from browsers. Off by default (no origin listed): a page
/// on another origin is then blocked by the browser, as before.
#[derive(Debug, Clone, PartialEq, Eq, SmartDefault, Serialize, Deserialize)]
#[serde(default, expecting = "a table (a [cors] section)")]
pub struct CorsConfig {
    /// Origins whose pages may call the API (`cors.allowed_origins`): exact origins as
    /// browsers send them, `scheme://host[:port]` in lower case with no path and no default
    /// port (`"https://chat.example.com"`, `"http://localhost:5173"`), or `["*"]` alone for any
    /// origin (not with `allow_credentials`). Default: none, CORS off.
    pub allowed_origins: Vec<String>,
    /// Whether pages may send credentials (cookies, TLS client certificates) along
    /// (`cors.allow_credentials`: `Access-Control-Allow-Credentials: true`). An
    /// `Authorization` header set by the page's script needs no credentials. Default false.
    pub allow_credentials: bool,
    /// How long a browser may reuse a preflight's answer (`cors.max_age`,
    /// `Access-Control-Max-Age`); at most [`MAX_CORS_MAX_AGE`]. Default
    /// [`DEFAULT_CORS_MAX_AGE`].
    #[default(DEFAULT_CORS_MAX_AGE)]
    #[serde(with = "formats::duration")]
    pub max_age: Duration,
}

/// Default `http2.max_concurrent_streams`: 256, what browsers expect (about 100) with headroom;
/// admission control caps streams per client separately.
pub const DEFAULT_H2_MAX_CONCURRENT_STREAMS: u32 = 256;
/// Allowed `http2.max_concurrent_streams`: 1 to 10,000.
pub const H2_MAX_CONCURRENT_STREAMS_RANGE: RangeInclusive<u32> = 1..=10_000;
/// Default `http2.keepalive_interval` and `http2.keepalive_timeout`: 20 s each, so a peer that
/// vanished without a word (a laptop closed mid-stream) is found within 40 s, well before the
/// 60 s idle timeouts of the proxies in front; an SSE stream can sit silent for minutes.
pub const DEFAULT_H2_KEEPALIVE: Duration = Duration::from_secs(20);
/// Default `http2.max_pending_accept_reset_streams`: h2's and hyper's own 20, the guard against
/// rapid-reset floods (CVE-2023-44487).
pub const DEFAULT_H2_PENDING_ACCEPT_RESETS: u32 = 20;
/// Default `http2.max_local_error_reset_streams`: hyper's 1024 (RUSTSEC-2024-0003).
pub const DEFAULT_H2_LOCAL_ERROR_RESETS: u32 = 1024;
/// Allowed for both reset limits: 1 to 100,000.
pub const H2_RESET_LIMIT_RANGE: RangeInclusive<u32> = 1..=100_000;

/// `[http2]`: what one client HTTP/2 connection may hold and how dead peers are found. The
/// header list size is `limits.max_header_bytes`.
#[derive(Debug, Clone, PartialEq, Eq, SmartDefault, Serialize, Deserialize)]
#[serde(default, expecting = "a table (an [http2] section)")]
pub struct Http2Config {
    /// Most concurrent streams per client connection (`http2.max_concurrent_streams`,
    /// SETTINGS_MAX_CONCURRENT_STREAMS). Default [`DEFAULT_H2_MAX_CONCURRENT_STREAMS`], allowed
    /// [`H2_MAX_CONCURRENT_STREAMS_RANGE`].
    #[default(DEFAULT_H2_MAX_CONCURRENT_STREAMS)]
    pub max_concurrent_streams: u32,
    /// A PING goes to a connection silent this long (`http2.keepalive_interval`); `"0s"` sends
    /// none. Without it a dead peer's streams (and their upstream requests) live until TCP gives
    /// up, minutes later. Default [`DEFAULT_H2_KEEPALIVE`], at most [`MAX_DURATION`].
    #[default(DEFAULT_H2_KEEPALIVE)]
    #[serde(with = "formats::duration")]
    pub keepalive_interval: Duration,
    /// A PING unanswered this long closes the connection, ending its streams and cancelling
    /// their upstream requests (`http2.keepalive_timeout`). Must be > 0. Default
    /// [`DEFAULT_H2_KEEPALIVE`].
    #[default(DEFAULT_H2_KEEPALIVE)]
    #[serde(with = "formats::duration")]
    pub keepalive_timeout: Duration,
    /// Streams a client may reset before the gateway accepted them, per connection, before the
    /// connection is closed with GOAWAY (`http2.max_pending_accept_reset_streams`): the
    /// rapid-reset guard. Default [`DEFAULT_H2_PENDING_ACCEPT_RESETS`], allowed
    /// [`H2_RESET_LIMIT_RANGE`].
    #[default(DEFAULT_H2_PENDING_ACCEPT_RESETS)]
    pub max_pending_accept_reset_streams: u32,
    /// Streams the gateway may reset for a client's protocol errors, per connection, before the
    /// connection is closed (`http2.max_local_error_reset_streams`). Default
    /// [`DEFAULT_H2_LOCAL_ERROR_RESETS`], allowed [`H2_RESET_LIMIT_RANGE`].
    #[default(DEFAULT_H2_LOCAL_ERROR_RESETS)]
    pub max_local_error_reset_streams: u32,
}

/// `[tls]`: serve the API listener over TLS (HTTP/2 and HTTP/1.1, chosen by ALPN).
#[derive(Debug, Clone, PartialEq, Eq, SmartDefault, Serialize, Deserialize)]
#[serde(default, expecting = "a table (a [tls] section)")]
pub struct TlsConfig {
    /// The certificate chain, PEM, leaf first (`tls.cert_file`). Read at start (an unreadable,
    /// expired or not-yet-valid certificate stops the gateway), and again on SIGHUP and when
    /// its modification time changes (a bad pair keeps the one in use). Set with `key_file`;
    /// absent by default: the listener speaks cleartext.
    pub cert_file: Option<String>,
    /// The certificate's private key, PEM: PKCS#8, PKCS#1 or SEC1 (`tls.key_file`). Must match
    /// the certificate. Set with `cert_file`.
    pub key_file: Option<String>,
    /// Time a client has to complete the TLS handshake after its connection (and PROXY header)
    /// (`tls.handshake_timeout`). Must be > 0 and at most [`MAX_DURATION`]. Default
    /// [`DEFAULT_TLS_HANDSHAKE_TIMEOUT`].
    #[default(DEFAULT_TLS_HANDSHAKE_TIMEOUT)]
    #[serde(with = "formats::duration")]
    pub handshake_timeout: Duration,
}

/// Most entries of `metrics.models`: each is a label value on a few families, and a
/// Prometheus series per value and outcome; a few dozen models is already a large fleet.
pub const MAX_METRIC_MODELS: usize = 64;

/// `[metrics]`: the labels `/metrics` may add, kept bounded.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, expecting = "a table (a [metrics] section)")]
pub struct MetricsConfig {
    /// Models that get a `model` label of their own on `tidegate_streams_total`,
    /// `tidegate_time_to_first_token_seconds` and `tidegate_tokens_total`
    /// (`metrics.models`); every other model is counted as `other`. Names as clients send them,
    /// at most [`MAX_METRIC_MODELS`]. Default: none, and no `model` label: a label taken from
    /// what clients send would let them grow the series without bound.
    pub models: Vec<String>,
    /// Label `tidegate_streams_total` and `tidegate_tokens_total` with the gateway API key's
    /// name (`metrics.per_key_labels`; never the key). One series per key and outcome: for a
    /// fleet with tens of keys, not thousands. Default `false`.
    pub per_key_labels: bool,
}

/// `[auth]`: whether clients must present a gateway API key, and where the keys are.
#[derive(Debug, Clone, PartialEq, Eq, SmartDefault, Serialize, Deserialize)]
#[serde(default, expecting = "a table (an [auth] section)")]
pub struct AuthConfig {
    /// `"none"`: anyone who reaches the listener may use the API. `"keys"`: every API request
    /// (`/v1/...`; not the health checks) needs `Authorization: Bearer <key>` with a key of
    /// `keys_file`, else `401 invalid_api_key`; each key has its own rate, stream cap and model
    /// allowlist (`auth.mode`). Default [`DEFAULT_AUTH_MODE`].
    #[default(DEFAULT_AUTH_MODE)]
    pub mode: AuthMode,
    /// The keys file (`auth.keys_file`): TOML `[[keys]]` entries, each a `name`, the key's
    /// `sha256` (from `tidegate hash-key`; the keys themselves are never stored), and optional
    /// `requests_per_second`, `burst`, `max_streams` and `models`. Kept apart from this file so
    /// the config can be committed and printed while the keys stay with the secrets. Read at
    /// start (a bad file stops the gateway) and again on SIGHUP (a bad file keeps the keys in
    /// use). A relative path is from the working directory. Required when `mode = "keys"`, and
    /// only then.
    pub keys_file: Option<String>,
}

/// Whether the API asks for gateway API keys (`auth.mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// `"none"`: no key asked.
    None,
    /// `"keys"`: a key of `auth.keys_file` on every API request.
    Keys,
}

impl Default for AuthMode {
    fn default() -> Self {
        DEFAULT_AUTH_MODE
    }
}

/// `[client_ip]`: the address a request is counted, limited and logged under.
#[derive(Debug, Clone, PartialEq, Eq, SmartDefault, Serialize, Deserialize)]
#[serde(default, expecting = "a table (a [client_ip] section)")]
pub struct ClientIpConfig {
    /// Proxies whose `X-Forwarded-For` is believed (`client_ip.trusted_proxies`): networks
    /// (`"10.0.0.0/8"`) or addresses (`"127.0.0.1"`). A request from one of them is from the
    /// right-most address of its `X-Forwarded-For` that is not itself a trusted proxy; from
    /// anyone else the header is ignored, so a client cannot pick its own address. Default:
    /// none, the socket's peer is the client.
    #[serde(with = "formats::ip_nets")]
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// The header trusted proxies name the client in (`client_ip.forwarded_header`):
    /// `"x-forwarded-for"` (the default; what nginx, HAProxy and cloud balancers append) or
    /// `"forwarded"` (RFC 7239, its `for=` parameters). Only the one named is read: a proxy passes
    /// the other through untouched, so a client could write it.
    pub forwarded_header: ForwardedHeader,
    /// Every connection to the API listener starts with a PROXY protocol header, v1 or v2
    /// (`client_ip.proxy_protocol`), as L4 load balancers (AWS NLB, HAProxy `send-proxy`) write
    /// it; the client is the address in it. A connection without a valid header is closed. Only
    /// for a listener that nothing but such balancers can reach: anyone who can connect could
    /// name any address. Default `false`.
    pub proxy_protocol: bool,
    /// Time a connection has to deliver its PROXY header (`client_ip.proxy_header_timeout`).
    /// Must be > 0 and at most [`MAX_DURATION`]. Default [`DEFAULT_PROXY_HEADER_TIMEOUT`].
    #[default(DEFAULT_PROXY_HEADER_TIMEOUT)]
    #[serde(with = "formats::duration")]
    pub proxy_header_timeout: Duration,
}

/// Which header trusted proxies name the client in (`client_ip.forwarded_header`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum ForwardedHeader {
    /// `X-Forwarded-For: client, proxy1, proxy2`.
    #[default]
    #[serde(rename = "x-forwarded-for")]
    XForwardedFor,
    /// `Forwarded: for=client, for=proxy1` (RFC 7239).
    #[serde(rename = "forwarded")]
    Forwarded,
}

/// `[admin]`: a separate listener for health checks and the admin API.
#[derive(Debug, Clone, PartialEq, Eq, SmartDefault, Serialize, Deserialize)]
#[serde(default, expecting = "a table (an [admin] section)")]
pub struct AdminConfig {
    /// Address of the admin listener (`admin.listen`). Absent by default:
    /// no admin listener is started. Kept separate from the client listener
    /// so operational endpoints can stay on loopback or a private network
    /// while clients are served publicly; it must not overlap `listen`.
    #[serde(with = "formats::socket_addr::option")]
    pub listen: Option<SocketAddr>,
    /// Name of the environment variable holding the admin bearer token
    /// (`admin.token_env`). The admin API can end streams, so it must not be
    /// open to the network: this is required when `admin.listen` is not a
    /// loopback address. Like `upstream.api_key_env`, only the variable's
    /// name is in the file, so the file can be committed and printed safely.
    /// Absent by default: the admin API takes no token (loopback only).
    pub token_env: Option<String>,
    /// The token read from `token_env` by [`Config::resolve_secrets`]: at
    /// least [`MIN_ADMIN_TOKEN_BYTES`] of visible ASCII, so it is a valid
    /// header value. Never read from or written to TOML (skipped by serde, so `admin.token`
    /// in a file is an unknown key with a hint).
    #[serde(skip)]
    pub token: Option<Secret>,
}

/// `[upstream]`, or one `[[upstreams]]` element: an OpenAI-compatible server requests are
/// relayed to. Key paths below are written for `[upstream]`; in `[[upstreams]]` they read
/// `upstreams[1].weight`.
#[derive(Debug, Clone, PartialEq, Eq, SmartDefault, Serialize, Deserialize)]
#[serde(
    default,
    expecting = "a table (an [upstream] section or an [[upstreams]] element)"
)]
pub struct UpstreamConfig {
    /// What the upstream is called (`upstream.name`) in logs, the admin API, the
    /// `x-tidegate-upstream` response header, metrics labels and `[[routes]]`: 1 to
    /// [`MAX_UPSTREAM_NAME_CHARS`] characters of `a-z`, `0-9`, `_`, `.` and `-` (lower case, so
    /// a label or header never differs from the file by case alone), unique among
    /// `[[upstreams]]`. Default [`DEFAULT_UPSTREAM_NAME`].
    #[default(DEFAULT_UPSTREAM_NAME.to_owned())]
    pub name: String,
    /// Base URL request paths are appended to (`upstream.base_url`), e.g.
    /// `/chat/completions`. Default [`DEFAULT_UPSTREAM_BASE_URL`]. Must be
    /// http or https with a host and without query or fragment, so joining
    /// is plain concatenation; stored without a trailing slash.
    #[default(UpstreamUrl::default_openai())]
    pub base_url: UpstreamUrl,
    /// Name of the environment variable holding the upstream API key
    /// (`upstream.api_key_env`). The key itself is never accepted in the
    /// file, so config files can be committed and printed safely. Absent by
    /// default: no `Authorization` header is sent upstream (for local model
    /// servers, or when clients send their own).
    pub api_key_env: Option<String>,
    /// The key read from `api_key_env` by [`Config::resolve_secrets`]; never
    /// read from or written to TOML (skipped by serde, so `upstream.api_key` in
    /// a file is an unknown key with a hint).
    #[serde(skip)]
    pub api_key: Option<Secret>,
    /// Extra client request headers forwarded upstream
    /// (`upstream.forward_headers`), as lower-case names; a trailing `*`
    /// matches a prefix (`"x-stainless-*"`). Only an allowlist crosses by
    /// default (content-type, accept, user-agent, openai-beta), so a client
    /// can't steer the upstream with headers the operator did not choose.
    /// Credentials, cookies, hop-by-hop headers and the headers the gateway
    /// sets itself are refused. Default: none. The demo sets `["x-mock-*"]`
    /// so the mock's per-request overrides reach it.
    pub forward_headers: Vec<String>,
    /// A PEM file of extra root certificates to trust for this `https://` upstream
    /// (`upstream.ca_file`), e.g. the internal CA of a vLLM fleet. The public web roots stay
    /// trusted. Absent by default. Read when the gateway starts; an unreadable file, or one
    /// with no certificate, stops it with the reason.
    pub ca_file: Option<String>,
    /// Which HTTP version to speak to the upstream (`upstream.protocol`); see
    /// [`UpstreamProtocol`]. With HTTP/2 all streams share a few connections instead of holding
    /// one each, which is most of a stream's memory and half of its sockets at 10,000 streams.
    /// Default [`DEFAULT_UPSTREAM_PROTOCOL`]. Use [`UpstreamConfig::effective_protocol`], which
    /// also reads the legacy `http2`.
    #[default(DEFAULT_UPSTREAM_PROTOCOL)]
    pub protocol: UpstreamProtocol,
    /// Legacy spelling of `protocol = "http2"` (`upstream.http2`), still accepted so existing
    /// files keep working: `true` means HTTP/2 only, prior knowledge for `http://`, ALPN `h2` for
    /// `https://`. Default `false` (then `protocol` decides). `true` together with
    /// `protocol = "http1"` is an error.
    pub http2: bool,
    /// This upstream's share of a route's traffic, relative to the other upstreams of the route
    /// (`upstream.weight`): weights 3 and 1 send three quarters to the first. Default
    /// [`DEFAULT_UPSTREAM_WEIGHT`], allowed [`UPSTREAM_WEIGHT_RANGE`].
    #[default(DEFAULT_UPSTREAM_WEIGHT)]
    pub weight: u32,
    /// The most concurrent requests this gateway sends this upstream, over the whole process
    /// (`upstream.max_streams`), for an upstream that can only serve so many at once (a local
    /// model server) or whose account limits concurrency. While it is reached the upstream counts
    /// as full. 0 means no cap. Default [`DEFAULT_MAX_STREAMS`], allowed [`MAX_STREAMS_RANGE`].
    #[default(DEFAULT_MAX_STREAMS)]
    pub max_streams: u32,
    /// The most concurrent streams the gateway opens on one HTTP/2 connection to this upstream
    /// (`upstream.max_streams_per_connection`); more streams open more connections. The peer's
    /// own SETTINGS_MAX_CONCURRENT_STREAMS is respected when it is lower. It also bounds how many
    /// streams one lost connection takes down. Default [`DEFAULT_MAX_STREAMS_PER_CONNECTION`],
    /// allowed [`MAX_STREAMS_PER_CONNECTION_RANGE`]. Not used over HTTP/1.1 (one stream per
    /// connection).
    #[default(DEFAULT_MAX_STREAMS_PER_CONNECTION)]
    pub max_streams_per_connection: u32,
    /// How long a connection to this upstream may carry no stream before it is closed
    /// (`upstream.idle_connection_timeout`). Kept shorter than the server's own keep-alive, so
    /// the gateway never sends a request on a connection the server is closing. Must be > 0 and
    /// at most [`MAX_DURATION`]. Default [`DEFAULT_IDLE_CONNECTION_TIMEOUT`].
    #[default(DEFAULT_IDLE_CONNECTION_TIMEOUT)]
    #[serde(with = "formats::duration")]
    pub idle_connection_timeout: Duration,
    /// This upstream's own `limits.upstream_connect_timeout` (`upstream.connect_timeout`), for
    /// an upstream nearer or farther than the rest. Absent by default: the `[limits]` value
    /// applies. Use [`UpstreamConfig::connect_timeout`]. Rules as for the `[limits]` key.
    #[serde(with = "formats::duration::option")]
    pub connect_timeout: Option<Duration>,
    /// This upstream's own `limits.first_byte_timeout` (`upstream.first_byte_timeout`), for a
    /// model that is slower (or faster) to start than the rest. Absent by default: the `[limits]`
    /// value applies. Use [`UpstreamConfig::first_byte_timeout`].
    #[serde(with = "formats::duration::option")]
    pub first_byte_timeout: Option<Duration>,
    /// This upstream's own `limits.upstream_idle_timeout` (`upstream.idle_timeout`): the longest
    /// silence between its body bytes mid-response. Absent by default: the `[limits]` value
    /// applies. Use [`UpstreamConfig::idle_timeout`].
    #[serde(with = "formats::duration::option")]
    pub idle_timeout: Option<Duration>,
}

impl UpstreamConfig {
    /// The protocol in effect: `protocol`, except that the legacy `http2 = true` turns `auto`
    /// into `http2`. (`http2 = true` with `protocol = "http1"` is rejected by
    /// [`Config::validate`]; should it get here, `protocol` wins.)
    pub fn effective_protocol(&self) -> UpstreamProtocol {
        match (self.protocol, self.http2) {
            (UpstreamProtocol::Auto, true) => UpstreamProtocol::Http2,
            (protocol, _) => protocol,
        }
    }

    /// TCP (+TLS) connect timeout towards this upstream: its `connect_timeout`, else
    /// `limits.upstream_connect_timeout`.
    pub fn connect_timeout(&self, limits: &Limits) -> Duration {
        self.connect_timeout
            .unwrap_or(limits.upstream_connect_timeout)
    }

    /// How long this upstream's response headers may take: its `first_byte_timeout`, else
    /// `limits.first_byte_timeout`.
    pub fn first_byte_timeout(&self, limits: &Limits) -> Duration {
        self.first_byte_timeout.unwrap_or(limits.first_byte_timeout)
    }

    /// Longest silence between this upstream's body bytes: its `idle_timeout`, else
    /// `limits.upstream_idle_timeout`.
    pub fn idle_timeout(&self, limits: &Limits) -> Duration {
        self.idle_timeout.unwrap_or(limits.upstream_idle_timeout)
    }
}

/// Which HTTP version the gateway speaks to an upstream (`upstream.protocol`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UpstreamProtocol {
    /// `"auto"`: on `https://`, HTTP/2 when the server offers `h2` by ALPN, else HTTP/1.1; on
    /// `http://`, HTTP/1.1 (nothing negotiates there, and HTTP/2 without TLS needs prior
    /// knowledge).
    Auto,
    /// `"http1"`: HTTP/1.1 only, one stream per connection.
    Http1,
    /// `"http2"`: HTTP/2 only: prior knowledge on `http://`, ALPN `h2` required on `https://`.
    /// The server must allow enough concurrent streams per connection
    /// (`max_streams_per_connection`).
    Http2,
}

impl UpstreamProtocol {
    /// `"auto"`, `"http1"` or `"http2"`, as written in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamProtocol::Auto => "auto",
            UpstreamProtocol::Http1 => "http1",
            UpstreamProtocol::Http2 => "http2",
        }
    }
}

impl Default for UpstreamProtocol {
    fn default() -> Self {
        DEFAULT_UPSTREAM_PROTOCOL
    }
}

impl fmt::Display for UpstreamProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for UpstreamProtocol {
    type Err = String;

    /// Accepts exactly `"auto"`, `"http1"` or `"http2"`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(UpstreamProtocol::Auto),
            "http1" => Ok(UpstreamProtocol::Http1),
            "http2" => Ok(UpstreamProtocol::Http2),
            _ => Err(format!(r#"expected "auto", "http1" or "http2", got {s:?}"#)),
        }
    }
}

/// One `[[routes]]` element: the models it serves and the upstreams that serve them.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, expecting = "a table (a [[routes]] element)")]
pub struct RouteConfig {
    /// The models this route serves (`routes[].models`): exact names (`"gpt-4o"`) or patterns
    /// where `*` matches any run of characters, none included (`"gpt-4o*"`, `"*"`). Matching is
    /// case-sensitive, as model names are. At least one entry, none empty. See
    /// [`RouteConfig::matches`].
    pub models: Vec<String>,
    /// The upstreams that serve them (`routes[].upstreams`), by `name` (`"default"` for a
    /// single `[upstream]`), sharing the traffic by their `weight`. At least one, each at most
    /// once, each the name of an upstream.
    pub upstreams: Vec<String>,
    /// The model name sent to some of the route's upstreams instead of the requested one
    /// (`routes[].rename`), keyed by upstream name: with `rename = { local =
    /// "meta-llama/Llama-3.1-70B-Instruct" }` a request for `"llama-70b"` reaches upstream
    /// `local` under that name. Keys must be upstreams of this route, values non-empty. Default:
    /// none, every upstream gets the model as requested. See [`RouteConfig::upstream_model`].
    pub rename: BTreeMap<String, String>,
}

impl RouteConfig {
    /// Whether this route serves `model`: any entry of `models` matches it, exactly or as a
    /// `*` pattern. Which route wins when several match is [`Config::route_for`]'s rule: the
    /// first in file order.
    pub fn matches(&self, model: &str) -> bool {
        self.models
            .iter()
            .any(|pattern| wildcard_match(pattern, model))
    }

    /// The model name to send to `upstream` for a request for `model`: its `rename` entry, else
    /// `model` itself.
    pub fn upstream_model<'a>(&'a self, upstream: &str, model: &'a str) -> &'a str {
        self.rename.get(upstream).map_or(model, String::as_str)
    }
}

/// Which of `routes` serves `model`: the first, in file order, with a matching entry. The one
/// rule for [`Config::route_for`] and the runtime's routing table.
pub fn route_index(routes: &[RouteConfig], model: &str) -> Option<usize> {
    routes.iter().position(|route| route.matches(model))
}

/// `*` matches any run of characters (none included), every other character itself. Bytes are
/// compared, which is exact for UTF-8: a literal character matches only its own bytes. The one
/// pattern rule for `[[routes]]` models and API keys' model allowlists.
pub fn wildcard_match(pattern: &str, text: &str) -> bool {
    let (pattern, text) = (pattern.as_bytes(), text.as_bytes());
    let (mut p, mut t) = (0, 0);
    // Where the last `*` was (pattern index after it) and the text index it has swallowed up to.
    let mut star: Option<(usize, usize)> = None;
    // Bounded: each pass advances `t`, or advances `p` with `t` unchanged (at most
    // pattern.len() times in a row), or moves the last star's text index one further, so the
    // loop ends within (pattern.len() + 1) * (text.len() + 1) passes.
    while t < text.len() {
        match pattern.get(p) {
            Some(b'*') => {
                p += 1;
                star = Some((p, t));
            }
            Some(&c) if c == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match star {
                Some((after_star, swallowed)) => {
                    p = after_star;
                    t = swallowed + 1;
                    star = Some((after_star, swallowed + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// `[retry]`: how a failed upstream attempt is retried, on the same or another upstream of the
/// route, before the client sees the failure. (A response the client has already received part
/// of cannot be retried.)
#[derive(Debug, Clone, PartialEq, Eq, SmartDefault, Serialize, Deserialize)]
#[serde(default, expecting = "a table (a [retry] section)")]
pub struct RetryConfig {
    /// Attempts per request, the first included (`retry.max_attempts`); 1 turns retries off.
    /// Default [`DEFAULT_RETRY_MAX_ATTEMPTS`], allowed [`RETRY_MAX_ATTEMPTS_RANGE`].
    #[default(DEFAULT_RETRY_MAX_ATTEMPTS)]
    pub max_attempts: u32,
    /// Wait before the first retry (`retry.initial_backoff`); later retries back off further,
    /// up to `max_backoff`. Must be > 0 (retrying at once only hits a failing upstream again)
    /// and at most [`MAX_DURATION`]. Default [`DEFAULT_RETRY_INITIAL_BACKOFF`].
    #[default(DEFAULT_RETRY_INITIAL_BACKOFF)]
    #[serde(with = "formats::duration")]
    pub initial_backoff: Duration,
    /// Longest wait between attempts (`retry.max_backoff`); at least `initial_backoff`.
    /// Default [`DEFAULT_RETRY_MAX_BACKOFF`].
    #[default(DEFAULT_RETRY_MAX_BACKOFF)]
    #[serde(with = "formats::duration")]
    pub max_backoff: Duration,
    /// Longest `Retry-After` the gateway waits out (`retry.max_retry_after`). An upstream asking
    /// for a longer wait is not retried: its answer is relayed, so the client's SDK backs off
    /// rather than the gateway holding the request. `0s` waits out none. At most
    /// [`MAX_DURATION`]. Default [`DEFAULT_RETRY_MAX_RETRY_AFTER`].
    #[default(DEFAULT_RETRY_MAX_RETRY_AFTER)]
    #[serde(with = "formats::duration")]
    pub max_retry_after: Duration,
    /// Retries may add at most this percentage of the requests in `budget_window`
    /// (`retry.budget_percent`), so that retries cannot turn an outage into a flood. Default
    /// [`DEFAULT_RETRY_BUDGET_PERCENT`], allowed [`PERCENT_RANGE`].
    #[default(DEFAULT_RETRY_BUDGET_PERCENT)]
    pub budget_percent: u32,
    /// Retries allowed per `budget_window` whatever the percentage
    /// (`retry.budget_min_retries`), so a quiet gateway can still retry. Default
    /// [`DEFAULT_RETRY_BUDGET_MIN_RETRIES`], allowed [`RETRY_BUDGET_MIN_RETRIES_RANGE`].
    #[default(DEFAULT_RETRY_BUDGET_MIN_RETRIES)]
    pub budget_min_retries: u32,
    /// The window the budget counts requests and retries over (`retry.budget_window`). At
    /// least [`MIN_WINDOW`], at most [`MAX_DURATION`]. Default [`DEFAULT_RETRY_BUDGET_WINDOW`].
    #[default(DEFAULT_RETRY_BUDGET_WINDOW)]
    #[serde(with = "formats::duration")]
    pub budget_window: Duration,
}

/// `[breaker]`: each upstream's circuit breaker. An open breaker keeps its upstream out of
/// rotation for `open_for`; then one probe request decides whether it closes or stays open. The
/// settings apply to every upstream, each with its own counts.
#[derive(Debug, Clone, PartialEq, Eq, SmartDefault, Serialize, Deserialize)]
#[serde(default, expecting = "a table (a [breaker] section)")]
pub struct BreakerConfig {
    /// Failures in a row that open the breaker (`breaker.consecutive_failures`); 0 turns this
    /// trigger off. Default [`DEFAULT_BREAKER_CONSECUTIVE_FAILURES`], allowed
    /// [`BREAKER_CONSECUTIVE_FAILURES_RANGE`].
    #[default(DEFAULT_BREAKER_CONSECUTIVE_FAILURES)]
    pub consecutive_failures: u32,
    /// Percentage of failed requests in `window` that opens the breaker, once the window holds
    /// `min_requests` (`breaker.failure_percent`); 0 turns this trigger off. Default
    /// [`DEFAULT_BREAKER_FAILURE_PERCENT`], allowed [`PERCENT_RANGE`]. With both triggers off the
    /// breaker never opens.
    #[default(DEFAULT_BREAKER_FAILURE_PERCENT)]
    pub failure_percent: u32,
    /// Requests `window` must hold before `failure_percent` is judged (`breaker.min_requests`).
    /// Default [`DEFAULT_BREAKER_MIN_REQUESTS`], allowed [`BREAKER_MIN_REQUESTS_RANGE`].
    #[default(DEFAULT_BREAKER_MIN_REQUESTS)]
    pub min_requests: u32,
    /// The window `failure_percent` is computed over (`breaker.window`). At least
    /// [`MIN_WINDOW`], at most [`MAX_DURATION`]. Default [`DEFAULT_BREAKER_WINDOW`].
    #[default(DEFAULT_BREAKER_WINDOW)]
    #[serde(with = "formats::duration")]
    pub window: Duration,
    /// How long an open breaker keeps its upstream out before one probe request decides
    /// (`breaker.open_for`). Must be > 0 and at most [`MAX_DURATION`]. Default
    /// [`DEFAULT_BREAKER_OPEN_FOR`].
    #[default(DEFAULT_BREAKER_OPEN_FOR)]
    #[serde(with = "formats::duration")]
    pub open_for: Duration,
}

/// `[limits]`: every bound that protects the gateway from slow, large or
/// never-ending clients and upstreams.
#[derive(Debug, Clone, PartialEq, Eq, SmartDefault, Serialize, Deserialize)]
#[serde(default, expecting = "a table (a [limits] section)")]
pub struct Limits {
    /// Largest client request body accepted, in bytes
    /// (`limits.max_body_bytes`); larger requests get 413. Bounds the memory
    /// one request can pin, since bodies are buffered before relaying.
    /// Default [`DEFAULT_MAX_BODY_BYTES`], allowed [`MAX_BODY_BYTES_RANGE`].
    #[default(DEFAULT_MAX_BODY_BYTES)]
    #[serde(with = "formats::size")]
    pub max_body_bytes: u64,
    /// Largest client request head (request line plus headers), in bytes
    /// (`limits.max_header_bytes`). Bounds per-connection buffer memory and
    /// header-flood abuse. Default [`DEFAULT_MAX_HEADER_BYTES`], allowed
    /// [`MAX_HEADER_BYTES_RANGE`]: hyper's HTTP/1 read buffer cannot be
    /// smaller than 8192 bytes.
    #[default(DEFAULT_MAX_HEADER_BYTES)]
    #[serde(with = "formats::size")]
    pub max_header_bytes: usize,
    /// Largest single upstream SSE event (one blank-line-terminated block),
    /// in bytes (`limits.max_event_bytes`). Events are assembled in memory
    /// before being forwarded, so an upstream that never ends an event must
    /// not grow a buffer without bound. Default [`DEFAULT_MAX_EVENT_BYTES`],
    /// allowed [`MAX_EVENT_BYTES_RANGE`].
    #[default(DEFAULT_MAX_EVENT_BYTES)]
    #[serde(with = "formats::size")]
    pub max_event_bytes: usize,
    /// Time a client has to send its complete request head
    /// (`limits.header_read_timeout`). Stops slowloris-style clients from
    /// holding connections open by trickling headers. Must be > 0 and at most [`MAX_DURATION`]. Default
    /// [`DEFAULT_HEADER_READ_TIMEOUT`].
    #[default(DEFAULT_HEADER_READ_TIMEOUT)]
    #[serde(with = "formats::duration")]
    pub header_read_timeout: Duration,
    /// Time a client has to send its whole request body
    /// (`limits.body_read_timeout`), for the same reason as
    /// `header_read_timeout`. Must be > 0 and at most [`MAX_DURATION`]. Default
    /// [`DEFAULT_BODY_READ_TIMEOUT`].
    #[default(DEFAULT_BODY_READ_TIMEOUT)]
    #[serde(with = "formats::duration")]
    pub body_read_timeout: Duration,
    /// Time allowed to establish the TCP connection (and TLS session) to
    /// the upstream (`limits.upstream_connect_timeout`). A dead or
    /// blackholed upstream should fail fast instead of holding the client.
    /// Must be > 0 and at most [`MAX_DURATION`]. Default [`DEFAULT_UPSTREAM_CONNECT_TIMEOUT`].
    #[default(DEFAULT_UPSTREAM_CONNECT_TIMEOUT)]
    #[serde(with = "formats::duration")]
    pub upstream_connect_timeout: Duration,
    /// Time allowed from sending the request until the upstream's response
    /// headers arrive (`limits.first_byte_timeout`). Models can take a while
    /// to start, but an upstream that never answers must not hold the
    /// client forever. Must be > 0 and at most [`MAX_DURATION`]. Default [`DEFAULT_FIRST_BYTE_TIMEOUT`].
    #[default(DEFAULT_FIRST_BYTE_TIMEOUT)]
    #[serde(with = "formats::duration")]
    pub first_byte_timeout: Duration,
    /// Longest silence allowed between upstream body bytes
    /// (`limits.upstream_idle_timeout`). Detects stalled streams that keep
    /// the connection open but stop producing tokens. Must be > 0 and at most [`MAX_DURATION`]. Default
    /// [`DEFAULT_UPSTREAM_IDLE_TIMEOUT`].
    #[default(DEFAULT_UPSTREAM_IDLE_TIMEOUT)]
    #[serde(with = "formats::duration")]
    pub upstream_idle_timeout: Duration,
    /// Hard cap on the total time of one response, however lively it is
    /// (`limits.max_stream_duration`). Bounds the cost and resource hold of a
    /// runaway generation. Must be > 0 and at most [`MAX_DURATION`]. Default
    /// [`DEFAULT_MAX_STREAM_DURATION`].
    #[default(DEFAULT_MAX_STREAM_DURATION)]
    #[serde(with = "formats::duration")]
    pub max_stream_duration: Duration,
    /// Most concurrent streams in all (`limits.max_streams`); past it a new stream gets `503
    /// server_overloaded` with `retry-after`, before the upstream is asked. 0 (the default) is
    /// no cap. Allowed [`MAX_STREAMS_CAP_RANGE`].
    pub max_streams: u32,
    /// Most client connections open at once (`limits.max_connections`), checked right after
    /// accept before a byte is read; past it a new connection gets a minimal `503` with
    /// `retry-after` and is closed, instead of waiting in the kernel's backlog until descriptors
    /// free up. 0 (the default) derives it from the open-files limit the process got at start,
    /// keeping a reserve for upstream connections, the listeners and files; the start-up log
    /// says what it chose. Allowed [`MAX_CONNECTIONS_RANGE`].
    pub max_connections: u32,
    /// Connections the kernel may hold completed but not yet accepted on the API and admin
    /// listeners (`limits.listen_backlog`, the `listen(2)` backlog). The kernel caps it at
    /// `net.core.somaxconn`. Allowed [`LISTEN_BACKLOG_RANGE`]. Default
    /// [`DEFAULT_LISTEN_BACKLOG`].
    #[default(DEFAULT_LISTEN_BACKLOG)]
    pub listen_backlog: u32,
    /// Limits per client address (`[limits.per_ip]`).
    pub per_ip: PerIpLimits,
}

/// `[limits.per_ip]`: what one client address may cost. All off by default: behind a load
/// balancer every client has the balancer's address until trusted proxies are configured.
#[derive(Debug, Clone, PartialEq, Eq, SmartDefault, Serialize, Deserialize)]
#[serde(default, expecting = "a table (a [limits.per_ip] section)")]
pub struct PerIpLimits {
    /// Requests per second per client address (`limits.per_ip.requests_per_second`), refilled
    /// evenly (GCRA, governor); over it: `429 rate_limit_exceeded` with `retry-after`,
    /// `retry-after-ms` and the `x-ratelimit-*-requests` headers the OpenAI SDKs read, before the
    /// body is read. 0 (the default) is no limit. Allowed [`REQUESTS_PER_SECOND_RANGE`].
    pub requests_per_second: u32,
    /// Requests an address may make at once after being quiet (`limits.per_ip.burst`); 0 (the
    /// default) means `requests_per_second`. Allowed [`REQUESTS_PER_SECOND_RANGE`].
    pub burst: u32,
    /// IPv6 clients are limited by this many leading bits of their address
    /// (`limits.per_ip.ipv6_prefix`), so one host cannot rotate addresses around its limits.
    /// Default [`DEFAULT_IPV6_PREFIX`] (a customer's /64), allowed [`IPV6_PREFIX_RANGE`].
    #[default(DEFAULT_IPV6_PREFIX)]
    pub ipv6_prefix: u8,
    /// Most concurrent streams per client address (`limits.per_ip.max_streams`); over it: `429
    /// too_many_streams`. 0 (the default) is no cap. Allowed [`MAX_STREAMS_CAP_RANGE`].
    pub max_streams: u32,
    /// Most client connections open at once per client address
    /// (`limits.per_ip.max_connections`), checked right after accept (with the PROXY protocol,
    /// once its header names the client); over it: a minimal `429 too_many_connections`, then
    /// close. Trusted proxies are exempt. 0 (the default) is no cap. Allowed
    /// [`MAX_CONNECTIONS_RANGE`].
    pub max_connections: u32,
    /// Most client addresses the request rate is tracked for at once
    /// (`limits.per_ip.max_tracked`), so clients spraying source addresses cannot grow memory
    /// without bound. Quiet addresses are forgotten every 30 s, and sooner when it is full;
    /// while it is full a new address is not tracked and gets a fresh burst, as any address seen
    /// for the first time (counted as `admission.untracked_addresses` in `/admin/summary`).
    /// Default [`DEFAULT_MAX_TRACKED`], allowed [`MAX_TRACKED_RANGE`].
    #[default(DEFAULT_MAX_TRACKED)]
    pub max_tracked: u32,
}

/// `[streams]`: keeping long-lived streaming responses alive through idle
/// proxies, and bounding what a slow client can pin.
#[derive(Debug, Clone, PartialEq, Eq, SmartDefault, Serialize, Deserialize)]
#[serde(default, expecting = "a table (a [streams] section)")]
pub struct StreamsConfig {
    /// Interval of the heartbeat (`streams.heartbeat_interval`): a `: ping`
    /// SSE comment is sent to every stream that has written nothing for this
    /// long, and if the upstream has not answered within it, the client gets
    /// 200 event-stream headers early (early commit). Both keep idle proxies
    /// (nginx `proxy_read_timeout`, cloud load balancers, typically 60 s)
    /// from cutting a stream while a model thinks. `0s` disables heartbeats
    /// and early commit; otherwise between [`MIN_HEARTBEAT_INTERVAL`] and
    /// [`MAX_DURATION`]. Default [`DEFAULT_HEARTBEAT_INTERVAL`]. Use
    /// [`StreamsConfig::heartbeat`], which says "off" as `None`.
    #[default(DEFAULT_HEARTBEAT_INTERVAL)]
    #[serde(with = "formats::duration")]
    pub heartbeat_interval: Duration,
    /// Most unsent response bytes the gateway holds per stream
    /// (`streams.max_buffered_bytes`): hyper's per-stream send buffer on
    /// HTTP/2 and the bound on one upstream read. (On HTTP/1.1 hyper holds
    /// unsent bytes in the connection buffer, sized by
    /// `limits.max_header_bytes`.) While it is full the gateway stops reading
    /// the upstream (backpressure), so a client that reads slower than the
    /// model writes costs bounded memory instead of growing a queue. Default [`DEFAULT_MAX_BUFFERED_BYTES`], allowed
    /// [`MAX_BUFFERED_BYTES_RANGE`].
    #[default(DEFAULT_MAX_BUFFERED_BYTES)]
    #[serde(with = "formats::size")]
    pub max_buffered_bytes: usize,
    /// Longest time a client may take none of a stream's pending data
    /// (`streams.client_stall_timeout`). Such a client is cut, its upstream
    /// request cancelled, and the stream's outcome is `slow_client`, so a
    /// stalled reader cannot hold an upstream generation (and its cost)
    /// open forever. Must be > 0 and at most [`MAX_DURATION`]. Default
    /// [`DEFAULT_CLIENT_STALL_TIMEOUT`].
    #[default(DEFAULT_CLIENT_STALL_TIMEOUT)]
    #[serde(with = "formats::duration")]
    pub client_stall_timeout: Duration,
}

impl StreamsConfig {
    /// The heartbeat interval, or `None` when `heartbeat_interval` is zero
    /// (heartbeats and early commit off). A zero period must never reach a
    /// timer: `tokio::time::interval` panics on it.
    pub fn heartbeat(&self) -> Option<Duration> {
        (!self.heartbeat_interval.is_zero()).then_some(self.heartbeat_interval)
    }
}

/// `[shutdown]`: what happens on SIGTERM / Ctrl-C.
#[derive(Debug, Clone, PartialEq, Eq, SmartDefault, Serialize, Deserialize)]
#[serde(default, expecting = "a table (a [shutdown] section)")]
pub struct ShutdownConfig {
    /// How long in-flight streams may continue after a shutdown signal
    /// before they are cut (`shutdown.drain_timeout`). New connections are
    /// refused at once; this bounds how long a deploy waits for running
    /// generations. `0s` cuts immediately; at most [`MAX_DURATION`]. Default [`DEFAULT_DRAIN_TIMEOUT`].
    #[default(DEFAULT_DRAIN_TIMEOUT)]
    #[serde(with = "formats::duration")]
    pub drain_timeout: Duration,
}

/// `[log]`: log output.
#[derive(Debug, Clone, PartialEq, Eq, SmartDefault, Serialize, Deserialize)]
#[serde(default, expecting = "a table (a [log] section)")]
pub struct LogConfig {
    /// Output format (`log.format`): human-readable text or one JSON object
    /// per line for log shippers. Default [`DEFAULT_LOG_FORMAT`].
    #[default(DEFAULT_LOG_FORMAT)]
    pub format: LogFormat,
    /// A `tracing` `EnvFilter` directive string such as `"info"` or
    /// `"tidegate=debug,hyper=warn"` (`log.level`). `RUST_LOG` overrides it
    /// at run time. Must be non-empty; its syntax is checked when the
    /// subscriber is built, not here. Default [`DEFAULT_LOG_LEVEL`].
    #[default(DEFAULT_LOG_LEVEL.to_owned())]
    pub level: String,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

impl LogFormat {
    /// `"text"` or `"json"`, as written in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

impl Default for LogFormat {
    fn default() -> Self {
        DEFAULT_LOG_FORMAT
    }
}

impl fmt::Display for LogFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for LogFormat {
    type Err = String;

    /// Accepts exactly `"text"` or `"json"` (usable as a clap value parser).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            _ => Err(format!(r#"expected "text" or "json", got {s:?}"#)),
        }
    }
}

/// Holds a secret: the upstream API key or the admin token. `Debug`,
/// `Display` and `Serialize` give `<redacted>` (the config's secret fields
/// are skipped by serde altogether); call
/// [`Secret::expose`] only where the value is actually sent or compared.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The secret value itself.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// One configuration problem: `path` is the dotted key path (e.g.
/// `limits.first_byte_timeout`; for a TOML syntax error, the location
/// `line L, column C`), `message` says what is wrong. Displays as
/// `path: message`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct ConfigError {
    /// Dotted key path, or `line L, column C` for syntax errors.
    pub path: String,
    /// What is wrong, without the path.
    pub message: String,
}

/// Every problem found in one configuration; never empty when returned as
/// an error. Displays one [`ConfigError`] per line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl From<ConfigError> for ConfigErrors {
    fn from(error: ConfigError) -> Self {
        ConfigErrors(vec![error])
    }
}

// ---- loading, validation, secrets, printing ---------------------------------

const API_KEY_ENV_PATH: &str = "upstream.api_key_env";
const ADMIN_TOKEN_ENV_PATH: &str = "admin.token_env";

impl Config {
    /// How many worker threads serve clients: `worker_threads`, or when that is 0 the CPUs this
    /// process may use (its affinity mask and cgroup quota), at least 1.
    pub fn worker_count(&self) -> usize {
        if self.worker_threads > 0 {
            return self.worker_threads;
        }
        std::thread::available_parallelism().map_or(1, |n| n.get())
    }

    /// The upstreams in effect, never empty: the `[[upstreams]]` when there are any, else the
    /// one `[upstream]` (named [`DEFAULT_UPSTREAM_NAME`] unless it sets `name`).
    pub fn upstream_list(&self) -> &[UpstreamConfig] {
        if self.upstreams.is_empty() {
            std::slice::from_ref(&self.upstream)
        } else {
            &self.upstreams
        }
    }

    /// The route that serves `model`: the FIRST of `[[routes]]`, in file order, with a `models`
    /// entry that matches it ([`RouteConfig::matches`]); an exact entry in a later route does
    /// not beat a pattern in an earlier one. `None` when no route matches: with no routes at all
    /// every upstream serves every model, otherwise no upstream serves this one.
    pub fn route_for(&self, model: &str) -> Option<&RouteConfig> {
        route_index(&self.routes, model).map(|i| &self.routes[i])
    }

    /// Whether `[upstream]` sets anything: it differs from [`UpstreamConfig::default`] in a
    /// value a file can hold (a resolved key is not one).
    fn upstream_table_used(&self) -> bool {
        let defaults = UpstreamConfig {
            api_key: self.upstream.api_key.clone(),
            ..UpstreamConfig::default()
        };
        self.upstream != defaults
    }

    /// Parses and validates one TOML document (does not read the
    /// environment). On failure, returns every problem found, each with its
    /// key path: a TOML syntax error alone; else every type error and
    /// unknown key; else every unknown key and every error of
    /// [`Config::validate`].
    pub fn from_toml_str(text: &str) -> Result<Config, ConfigErrors> {
        let load::Read {
            config,
            mut unknown_keys,
        } = load::deserialize(text)?;
        if let Err(ConfigErrors(mut broken_rules)) = config.validate() {
            unknown_keys.append(&mut broken_rules);
        }
        if unknown_keys.is_empty() {
            Ok(config)
        } else {
            Err(ConfigErrors(unknown_keys))
        }
    }

    /// Parses one TOML document without judging it yet: the config as read and the keys the
    /// schema does not know (each an error with its hint). For a caller that adds overrides
    /// and then reports every problem in one pass, the environment's among them (the command
    /// line: [`Config::validate`] and [`Config::resolve_secrets`] after its overrides).
    /// Errors: only those that leave no config (a syntax error, type errors).
    pub fn read_toml(text: &str) -> Result<(Config, Vec<ConfigError>), ConfigErrors> {
        let load::Read {
            config,
            unknown_keys,
        } = load::deserialize(text)?;
        Ok((config, unknown_keys))
    }

    /// Every semantic rule of the schema (ranges, cross-field rules), on the
    /// final config: [`Config::from_toml_str`] runs it after deserializing,
    /// and the command line again after its overrides. Reports every problem
    /// with its dotted key path, in schema order.
    pub fn validate(&self) -> Result<(), ConfigErrors> {
        let mut c = Checks::default();

        c.check(
            "worker_threads",
            check_size(usize_to_u64(self.worker_threads), &WORKER_THREADS_RANGE),
        );
        if let Some(admin) = self.admin.listen {
            c.check("admin.listen", check_listeners_apart(self.listen, admin));
        }
        match &self.admin.token_env {
            Some(name) => c.check(
                ADMIN_TOKEN_ENV_PATH,
                check_env_name(name, EnvVar::AdminToken),
            ),
            None => c.check(
                ADMIN_TOKEN_ENV_PATH,
                check_admin_needs_no_token(self.admin.listen),
            ),
        }

        // `[upstream]` is checked even next to `[[upstreams]]`: that is an error too, but what
        // else is wrong with it is worth knowing at the same time.
        validate_upstream(&mut c, "upstream", &self.upstream);
        if !self.upstreams.is_empty() && self.upstream_table_used() {
            c.check(
                "upstream",
                Err(
                    "use either [upstream] for one upstream or [[upstreams]] for several, \
                     not both: move these settings into an [[upstreams]] element"
                        .to_owned(),
                ),
            );
        }
        for (i, upstream) in self.upstreams.iter().enumerate() {
            let path = format!("upstreams[{i}]");
            validate_upstream(&mut c, &path, upstream);
            if let Some(first) = self.upstreams[..i]
                .iter()
                .position(|other| other.name == upstream.name)
            {
                c.check(
                    format!("{path}.name"),
                    Err(format!(
                        "{:?} is already the name of upstreams[{first}]; every upstream needs a \
                         name of its own",
                        upstream.name
                    )),
                );
            }
        }
        self.validate_routes(&mut c);

        let r = &self.retry;
        c.check(
            "retry.max_attempts",
            check_count(r.max_attempts, &RETRY_MAX_ATTEMPTS_RANGE),
        );
        c.check("retry.initial_backoff", check_timeout(r.initial_backoff));
        c.check(
            "retry.max_backoff",
            check_timeout(r.max_backoff).and_then(|()| {
                if r.max_backoff >= r.initial_backoff {
                    Ok(())
                } else {
                    Err(format!(
                        "must be at least retry.initial_backoff ({:?}), got {:?}",
                        r.initial_backoff, r.max_backoff
                    ))
                }
            }),
        );
        c.check(
            "retry.max_retry_after",
            check_at_most_max(r.max_retry_after)
                .and_then(|()| check_whole_millis(r.max_retry_after)),
        );
        c.check(
            "retry.budget_percent",
            check_count(r.budget_percent, &PERCENT_RANGE),
        );
        c.check(
            "retry.budget_min_retries",
            check_count(r.budget_min_retries, &RETRY_BUDGET_MIN_RETRIES_RANGE),
        );
        c.check("retry.budget_window", check_window(r.budget_window));

        let b = &self.breaker;
        c.check(
            "breaker.consecutive_failures",
            check_count(b.consecutive_failures, &BREAKER_CONSECUTIVE_FAILURES_RANGE),
        );
        c.check(
            "breaker.failure_percent",
            check_count(b.failure_percent, &PERCENT_RANGE),
        );
        c.check(
            "breaker.min_requests",
            check_count(b.min_requests, &BREAKER_MIN_REQUESTS_RANGE),
        );
        c.check("breaker.window", check_window(b.window));
        c.check("breaker.open_for", check_timeout(b.open_for));

        let l = &self.limits;
        c.check(
            "limits.max_body_bytes",
            check_size(l.max_body_bytes, &MAX_BODY_BYTES_RANGE),
        );
        c.check(
            "limits.max_header_bytes",
            check_size(usize_to_u64(l.max_header_bytes), &MAX_HEADER_BYTES_RANGE),
        );
        c.check(
            "limits.max_event_bytes",
            check_size(usize_to_u64(l.max_event_bytes), &MAX_EVENT_BYTES_RANGE),
        );
        for (path, timeout) in [
            ("limits.header_read_timeout", l.header_read_timeout),
            ("limits.body_read_timeout", l.body_read_timeout),
            (
                "limits.upstream_connect_timeout",
                l.upstream_connect_timeout,
            ),
            ("limits.first_byte_timeout", l.first_byte_timeout),
            ("limits.upstream_idle_timeout", l.upstream_idle_timeout),
            ("limits.max_stream_duration", l.max_stream_duration),
        ] {
            c.check(path, check_timeout(timeout));
        }
        let p = &l.per_ip;
        for (path, value, range) in [
            ("limits.max_streams", l.max_streams, &MAX_STREAMS_CAP_RANGE),
            (
                "limits.max_connections",
                l.max_connections,
                &MAX_CONNECTIONS_RANGE,
            ),
            (
                "limits.listen_backlog",
                l.listen_backlog,
                &LISTEN_BACKLOG_RANGE,
            ),
            (
                "limits.per_ip.requests_per_second",
                p.requests_per_second,
                &REQUESTS_PER_SECOND_RANGE,
            ),
            ("limits.per_ip.burst", p.burst, &REQUESTS_PER_SECOND_RANGE),
            (
                "limits.per_ip.ipv6_prefix",
                u32::from(p.ipv6_prefix),
                &IPV6_PREFIX_RANGE,
            ),
            (
                "limits.per_ip.max_streams",
                p.max_streams,
                &MAX_STREAMS_CAP_RANGE,
            ),
            (
                "limits.per_ip.max_connections",
                p.max_connections,
                &MAX_CONNECTIONS_RANGE,
            ),
            (
                "limits.per_ip.max_tracked",
                p.max_tracked,
                &MAX_TRACKED_RANGE,
            ),
        ] {
            c.check(path, check_count(value, range));
        }
        c.check(
            "client_ip.proxy_header_timeout",
            check_timeout(self.client_ip.proxy_header_timeout),
        );
        let s = &self.streams;
        c.check(
            "streams.heartbeat_interval",
            check_heartbeat_interval(s.heartbeat_interval)
                .and_then(|()| check_whole_millis(s.heartbeat_interval)),
        );
        c.check(
            "streams.max_buffered_bytes",
            check_size(
                usize_to_u64(s.max_buffered_bytes),
                &MAX_BUFFERED_BYTES_RANGE,
            ),
        );
        c.check(
            "streams.client_stall_timeout",
            check_timeout(s.client_stall_timeout),
        );
        let drain = self.shutdown.drain_timeout;
        c.check(
            "shutdown.drain_timeout",
            check_at_most_max(drain).and_then(|()| check_whole_millis(drain)),
        );
        c.check("log.level", check_log_level(&self.log.level));
        let a = &self.auth;
        c.check(
            "auth.keys_file",
            match (a.mode, a.keys_file.as_deref()) {
                (AuthMode::Keys, None) => Err(
                    r#"required when auth.mode = "keys": name the keys file (see `tidegate hash-key`)"#
                        .to_owned(),
                ),
                (AuthMode::Keys, Some("")) => Err("must name a file".to_owned()),
                // A keys file that is never read would look like protection and be none.
                (AuthMode::None, Some(_)) => Err(
                    r#"is set but auth.mode is "none", so no key would be asked for: set auth.mode = "keys", or remove keys_file"#
                        .to_owned(),
                ),
                _ => Ok(()),
            },
        );

        let h2 = &self.http2;
        for (path, value, range) in [
            (
                "http2.max_concurrent_streams",
                h2.max_concurrent_streams,
                &H2_MAX_CONCURRENT_STREAMS_RANGE,
            ),
            (
                "http2.max_pending_accept_reset_streams",
                h2.max_pending_accept_reset_streams,
                &H2_RESET_LIMIT_RANGE,
            ),
            (
                "http2.max_local_error_reset_streams",
                h2.max_local_error_reset_streams,
                &H2_RESET_LIMIT_RANGE,
            ),
        ] {
            c.check(path, check_count(value, range));
        }
        c.check(
            "http2.keepalive_interval",
            check_at_most_max(h2.keepalive_interval),
        );
        c.check(
            "http2.keepalive_timeout",
            check_timeout(h2.keepalive_timeout),
        );
        let t = &self.tls;
        for (path, file, other) in [
            ("tls.cert_file", &t.cert_file, &t.key_file),
            ("tls.key_file", &t.key_file, &t.cert_file),
        ] {
            c.check(
                path,
                match (file.as_deref(), other) {
                    (Some(""), _) => Err("must name a file".to_owned()),
                    (None, Some(_)) => Err(
                        "required with the other of tls.cert_file and tls.key_file: TLS needs both"
                            .to_owned(),
                    ),
                    _ => Ok(()),
                },
            );
        }
        c.check("tls.handshake_timeout", check_timeout(t.handshake_timeout));

        let cors = &self.cors;
        for (i, origin) in cors.allowed_origins.iter().enumerate() {
            c.check(
                format!("cors.allowed_origins[{i}]"),
                check_origin(origin, cors.allowed_origins.len(), cors.allow_credentials).and_then(
                    |()| {
                        if cors.allowed_origins[..i].contains(origin) {
                            Err("listed twice".to_owned())
                        } else {
                            Ok(())
                        }
                    },
                ),
            );
        }
        c.check(
            "cors.max_age",
            if cors.max_age > MAX_CORS_MAX_AGE {
                Err("must be at most 24h, the most any browser honours".to_owned())
            } else if cors.max_age.subsec_nanos() != 0 {
                Err("must be a whole number of seconds (Access-Control-Max-Age)".to_owned())
            } else {
                Ok(())
            },
        );

        let resume = &self.resume;
        if let Some(id) = &resume.instance_id {
            c.check("resume.instance_id", check_instance_id(id));
        }
        for (key, hold) in [
            ("resume.detach_grace", resume.detach_grace),
            ("resume.retain_after_done", resume.retain_after_done),
        ] {
            c.check(
                key,
                if hold > MAX_RESUME_HOLD {
                    Err("must be at most 1h".to_owned())
                } else if key == "resume.detach_grace" && hold.is_zero() {
                    Err("must be greater than 0s (turn resume off with resume.enabled)".to_owned())
                } else {
                    check_whole_millis(hold)
                },
            );
        }
        // The sizes only matter with resume on (a larger max_event_bytes alone is fine).
        if resume.enabled {
            c.check(
                "resume.max_bytes_per_stream",
                if resume.max_bytes_per_stream < self.limits.max_event_bytes {
                    Err(format!(
                        "must be at least limits.max_event_bytes ({}), or the largest events \
                         could never be replayed",
                        self.limits.max_event_bytes
                    ))
                } else {
                    Ok(())
                },
            );
            c.check(
                "resume.memory_budget",
                check_size(
                    usize_to_u64(resume.memory_budget),
                    &RESUME_MEMORY_BUDGET_RANGE,
                )
                .and_then(|()| {
                    if resume.memory_budget < resume.max_bytes_per_stream {
                        Err("must be at least resume.max_bytes_per_stream".to_owned())
                    } else {
                        Ok(())
                    }
                }),
            );
        }

        let models = &self.metrics.models;
        c.check(
            "metrics.models",
            if models.len() > MAX_METRIC_MODELS {
                Err(format!(
                    "lists {} models; at most {MAX_METRIC_MODELS} get a label of their own",
                    models.len()
                ))
            } else if models.iter().any(|m| m.is_empty() || m == "other") {
                Err(
                    r#"entries must not be empty or "other" (the label of every unlisted model)"#
                        .to_owned(),
                )
            } else if (1..models.len()).any(|i| models[..i].contains(&models[i])) {
                Err("lists a model twice".to_owned())
            } else {
                Ok(())
            },
        );

        if c.0.is_empty() {
            Ok(())
        } else {
            Err(ConfigErrors(c.0))
        }
    }

    /// The rules of `[[routes]]`: each lists models (none empty) and upstreams (each an
    /// upstream's name, none twice), and renames only for its own upstreams.
    fn validate_routes(&self, c: &mut Checks) {
        let mut names: Vec<&str> = Vec::new();
        for upstream in self.upstream_list() {
            // Duplicates are reported at their own path; listed once here.
            if !names.contains(&upstream.name.as_str()) {
                names.push(&upstream.name);
            }
        }
        for (i, route) in self.routes.iter().enumerate() {
            let path = format!("routes[{i}]");
            if route.models.is_empty() {
                c.check(
                    format!("{path}.models"),
                    Err(r#"must list at least one model name or pattern, such as "gpt-4o" or "gpt-4o*""#
                        .to_owned()),
                );
            }
            for (j, model) in route.models.iter().enumerate() {
                if model.is_empty() {
                    c.check(
                        format!("{path}.models[{j}]"),
                        Err(r#"must not be empty ("*" matches every model)"#.to_owned()),
                    );
                }
            }
            if route.upstreams.is_empty() {
                c.check(
                    format!("{path}.upstreams"),
                    Err(format!(
                        "must list at least one upstream by name (the upstreams are {})",
                        quoted_list(&names)
                    )),
                );
            }
            for (j, name) in route.upstreams.iter().enumerate() {
                let result = if route.upstreams[..j].contains(name) {
                    Err(format!("{name:?} is listed twice"))
                } else {
                    check_upstream_known(name, &names)
                };
                c.check(format!("{path}.upstreams[{j}]"), result);
            }
            for (upstream, model) in &route.rename {
                let at = load::join_path(&format!("{path}.rename"), upstream);
                if !route.upstreams.contains(upstream) {
                    c.check(
                        at.clone(),
                        Err(format!(
                            "{upstream:?} is not one of this route's upstreams ({}); a rename \
                             applies to an upstream of its own route",
                            quoted_list(&route.upstreams)
                        )),
                    );
                }
                if model.is_empty() {
                    c.check(
                        at,
                        Err(format!(
                            "must not be empty: it is the model name sent to upstream {upstream:?}"
                        )),
                    );
                }
            }
        }
    }

    /// Reads the secrets the file names through `lookup`
    /// (`|name| std::env::var(name).ok()` in production, a closure in tests):
    /// the key named by each upstream's `api_key_env` (`[upstream]` and every
    /// `[[upstreams]]` element) into its `api_key`, and the token named by
    /// `admin.token_env` into `admin.token`. A secret whose `*_env` key is
    /// absent is cleared and nothing is looked up for it; on any error no
    /// secret is stored.
    ///
    /// Errors (at the `*_env` key's path, such as `upstream.api_key_env`,
    /// `upstreams[1].api_key_env` or `admin.token_env`, never containing the
    /// value; all are checked, so every problem is reported at once): the
    /// variable is unset or empty, or the value cannot be sent in an HTTP
    /// header (surrounding whitespace, control or non-ASCII characters), or an
    /// admin token is shorter than [`MIN_ADMIN_TOKEN_BYTES`].
    pub fn resolve_secrets(
        &mut self,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<(), ConfigErrors> {
        self.upstream.api_key = None;
        for upstream in &mut self.upstreams {
            upstream.api_key = None;
        }
        self.admin.token = None;
        let mut errors = Vec::new();
        let mut resolve = |path: &str, name: Option<&String>, var: EnvVar| {
            let name = name?;
            read_secret(name, var, &lookup)
                .map_err(|message| {
                    errors.push(ConfigError {
                        path: path.to_owned(),
                        message,
                    })
                })
                .ok()
        };
        let api_key = resolve(
            API_KEY_ENV_PATH,
            self.upstream.api_key_env.as_ref(),
            EnvVar::ApiKey,
        );
        let api_keys: Vec<Option<Secret>> = self
            .upstreams
            .iter()
            .enumerate()
            .map(|(i, upstream)| {
                resolve(
                    &format!("upstreams[{i}].api_key_env"),
                    upstream.api_key_env.as_ref(),
                    EnvVar::ApiKey,
                )
            })
            .collect();
        let token = resolve(
            ADMIN_TOKEN_ENV_PATH,
            self.admin.token_env.as_ref(),
            EnvVar::AdminToken,
        );
        if errors.is_empty() {
            self.upstream.api_key = api_key;
            for (upstream, key) in self.upstreams.iter_mut().zip(api_keys) {
                upstream.api_key = key;
            }
            self.admin.token = token;
            Ok(())
        } else {
            Err(ConfigErrors(errors))
        }
    }

    /// The effective configuration as TOML, by serializing the structs: every
    /// key with a value is present (defaults included; absent optional keys
    /// such as `admin.listen` are named in a `# not set:` comment), durations
    /// as humantime strings (`"1m 30s"`), sizes as integers in bytes. With
    /// `[[upstreams]]`, the unused default `[upstream]` table is left out, and
    /// a route's `rename` is written inline in its `[[routes]]` element.
    ///
    /// Secrets are never printed: the secret fields are skipped by serde, and
    /// a header comment says when one was resolved,
    /// `# upstream key: <redacted> (read from $NAME)` (for `[upstream]`),
    /// `# upstream "openai" key: <redacted> (read from $NAME)` (for an
    /// `[[upstreams]]` element) or `# admin token: <redacted> (read from $NAME)`.
    /// So for a valid config the output parses back with
    /// [`Config::from_toml_str`] into an equal config, except that the
    /// upstream keys and `admin.token` must be resolved again.
    ///
    /// Fails only for a config [`Config::validate`] rejects (e.g. a size
    /// beyond what TOML's signed integers hold).
    pub fn to_redacted_toml(&self) -> Result<String, ConfigError> {
        let cannot_print = |e: &dyn fmt::Display| ConfigError {
            path: "(config)".to_owned(),
            message: format!("cannot print as TOML: {e}"),
        };
        let drop_upstream = !self.upstreams.is_empty() && !self.upstream_table_used();
        let body = toml::to_string(self).map_err(|e| cannot_print(&e))?;
        let body = tidy_printed_toml(&body, drop_upstream).map_err(|e| cannot_print(&e))?;
        let mut out =
            String::from("# Effective tidegate configuration. Secrets are never printed.\n");
        out.push_str(&format!(
            "# worker_threads = {}: {} in use\n",
            self.worker_threads,
            self.worker_count()
        ));
        let unset: Vec<String> = load::unset_keys(self)
            .into_iter()
            .filter(|path| !(drop_upstream && path.starts_with("upstream.")))
            .collect();
        if !unset.is_empty() {
            out.push_str(&format!("# not set: {}\n", unset.join(", ")));
        }
        let upstream_keys = std::iter::once(("upstream key".to_owned(), &self.upstream)).chain(
            self.upstreams
                .iter()
                .map(|u| (format!("upstream {:?} key", u.name), u)),
        );
        let mut comments: Vec<String> = upstream_keys
            .filter_map(|(what, u)| {
                secret_comment(&what, u.api_key.as_ref(), u.api_key_env.as_deref())
            })
            .collect();
        comments.extend(secret_comment(
            "admin token",
            self.admin.token.as_ref(),
            self.admin.token_env.as_deref(),
        ));
        for comment in comments {
            out.push_str(&comment);
            out.push('\n');
        }
        out.push('\n');
        out.push_str(&body);
        Ok(out)
    }
}

/// A TOML syntax error in `text` as one [`ConfigError`] at `line L, column C`, with toml's
/// message but not the text around it (for files that hold secrets or their hashes).
pub fn toml_syntax_error(text: &str, error: &toml::de::Error) -> ConfigError {
    load::syntax_error(text, error)
}

// ---- the rules validate applies ----------------------------------------------

/// The errors [`Config::validate`] collects, each at its key path, in the order found.
#[derive(Default)]
struct Checks(Vec<ConfigError>);

impl Checks {
    fn check(&mut self, path: impl Into<String>, result: Result<(), String>) {
        if let Err(message) = result {
            self.0.push(ConfigError {
                path: path.into(),
                message,
            });
        }
    }
}

/// The rules of one upstream, `[upstream]` or an `[[upstreams]]` element at `path`, in field
/// order. (Unique names and route references need the whole config: see [`Config::validate`].)
fn validate_upstream(c: &mut Checks, path: &str, u: &UpstreamConfig) {
    let at = |key: &str| format!("{path}.{key}");
    c.check(
        at("name"),
        check_name(&u.name, "upstream", r#""openai" or "local""#),
    );
    if let Some(name) = &u.api_key_env {
        c.check(at("api_key_env"), check_env_name(name, EnvVar::ApiKey));
    }
    for name in &u.forward_headers {
        c.check(at("forward_headers"), check_forward_header(name));
    }
    if let Some(file) = &u.ca_file {
        let rule = if file.is_empty() {
            Err("must name a PEM file".to_owned())
        } else if !u.base_url.is_https() {
            Err("applies to https:// upstreams only".to_owned())
        } else {
            Ok(())
        };
        c.check(at("ca_file"), rule);
    }
    if u.http2 && u.protocol == UpstreamProtocol::Http1 {
        c.check(
            at("http2"),
            Err(r#"http2 = true (the old spelling of protocol = "http2") contradicts protocol = "http1"; remove http2"#
                .to_owned()),
        );
    }
    c.check(at("weight"), check_count(u.weight, &UPSTREAM_WEIGHT_RANGE));
    c.check(
        at("max_streams"),
        check_count(u.max_streams, &MAX_STREAMS_RANGE),
    );
    c.check(
        at("max_streams_per_connection"),
        check_count(
            u.max_streams_per_connection,
            &MAX_STREAMS_PER_CONNECTION_RANGE,
        ),
    );
    c.check(
        at("idle_connection_timeout"),
        check_timeout(u.idle_connection_timeout),
    );
    for (key, timeout) in [
        ("connect_timeout", u.connect_timeout),
        ("first_byte_timeout", u.first_byte_timeout),
        ("idle_timeout", u.idle_timeout),
    ] {
        if let Some(timeout) = timeout {
            c.check(at(key), check_timeout(timeout));
        }
    }
}

/// The name of an upstream or an API key (`what`): 1 to [`MAX_UPSTREAM_NAME_CHARS`] of `a-z`,
/// `0-9`, `_`, `.`, `-`. It goes as is into log fields, metric labels, the admin API and a
/// response header, where nothing must need quoting.
/// `examples` are quoted names that fit, for the message about an empty one.
pub fn check_name(name: &str, what: &str, examples: &str) -> Result<(), String> {
    let allowed = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.-".contains(&b);
    if name.is_empty() {
        return Err(format!(
            "must not be empty; name the {what}, such as {examples}"
        ));
    }
    if !name.bytes().all(allowed) {
        return Err(format!(
            "{name:?} is not a valid {what} name: use lower-case letters a-z, digits, '_', '.' \
             and '-'"
        ));
    }
    if name.len() > MAX_UPSTREAM_NAME_CHARS {
        return Err(format!(
            "must be at most {MAX_UPSTREAM_NAME_CHARS} characters, got {}",
            name.len()
        ));
    }
    Ok(())
}

/// A route's upstream must be one of `names`; the error suggests a close name, or lists them.
fn check_upstream_known(name: &str, names: &[&str]) -> Result<(), String> {
    if names.contains(&name) {
        return Ok(());
    }
    let hint = match load::closest(names.iter().copied(), name) {
        Some(close) => format!(" (did you mean {close:?}?)"),
        None => format!("; the upstreams are {}", quoted_list(names)),
    };
    Err(format!("no upstream is named {name:?}{hint}"))
}

/// `"a", "b"`: names as they are written in the file.
fn quoted_list(names: &[impl AsRef<str>]) -> String {
    names
        .iter()
        .map(|name| format!("{:?}", name.as_ref()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A count against its allowed range.
pub fn check_count(value: u32, range: &RangeInclusive<u32>) -> Result<(), String> {
    if range.contains(&value) {
        Ok(())
    } else {
        Err(format!(
            "must be between {} and {}, got {value}",
            range.start(),
            range.end()
        ))
    }
}

/// A window that rates are computed over: at least [`MIN_WINDOW`], at most [`MAX_DURATION`],
/// whole milliseconds.
fn check_window(window: Duration) -> Result<(), String> {
    if window < MIN_WINDOW {
        return Err(format!(
            "must be at least {}, got {window:?}",
            humantime::format_duration(MIN_WINDOW)
        ));
    }
    check_at_most_max(window).and_then(|()| check_whole_millis(window))
}

/// Two touches to serde's TOML that the structs cannot express, made with toml_edit, which
/// keeps the rest of the text byte for byte: the `[upstream]` table is left out when
/// `drop_upstream` (`[[upstreams]]` replace it, and its defaults would read as if they were
/// used), and each route's `rename` is written inline in its `[[routes]]` element
/// (`rename = { local = "..." }`) or, when empty, not at all, instead of as a
/// `[routes.rename]` table after it.
fn tidy_printed_toml(body: &str, drop_upstream: bool) -> Result<String, String> {
    use toml_edit::{DocumentMut, Item};
    let mut doc: DocumentMut = body.parse().map_err(|e| format!("{e}"))?;
    if drop_upstream {
        doc.remove("upstream");
    }
    if let Some(routes) = doc.get_mut("routes").and_then(Item::as_array_of_tables_mut) {
        for route in routes.iter_mut() {
            match route.remove("rename") {
                Some(Item::Table(rename)) if rename.is_empty() => {}
                Some(Item::Table(rename)) => {
                    let mut inline = rename.into_inline_table();
                    inline.fmt();
                    route.insert("rename", toml_edit::value(inline));
                }
                Some(other) => {
                    route.insert("rename", other);
                }
                None => {}
            }
        }
    }
    Ok(doc.to_string())
}

/// The comment `to_redacted_toml` prints for a resolved secret (never its
/// value), or `None` when there is none.
fn secret_comment(what: &str, secret: Option<&Secret>, env: Option<&str>) -> Option<String> {
    secret?;
    Some(match env {
        Some(name) => format!(
            "# {what}: <redacted> (read from ${})",
            name.replace(['\n', '\r'], " ")
        ),
        None => format!("# {what}: <redacted> (not from the environment)"),
    })
}

fn usize_to_u64(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

/// `1048576` → `"1 MiB"`, `8192` → `"8 KiB"`, else the plain number.
fn human_size(n: u64) -> String {
    for (unit, name) in [(MIB, "MiB"), (KIB, "KiB")] {
        let (count, remainder) = (n / unit, n % unit);
        if count > 0 && remainder == 0 {
            return format!("{count} {name}");
        }
    }
    n.to_string()
}

fn range_message(range: &RangeInclusive<u64>, got: impl fmt::Display) -> String {
    let bound = |n: u64| {
        let human = human_size(n);
        if human == n.to_string() {
            human
        } else {
            format!("{n} ({human})")
        }
    };
    format!(
        "must be between {} and {}, got {got}",
        bound(*range.start()),
        bound(*range.end())
    )
}

fn check_size(value: u64, range: &RangeInclusive<u64>) -> Result<(), String> {
    if range.contains(&value) {
        Ok(())
    } else {
        Err(range_message(range, value))
    }
}

/// A timeout: > 0, at most [`MAX_DURATION`], whole milliseconds.
/// One `cors.allowed_origins` entry (of `count`): an origin exactly as a browser's `Origin`
/// header gives it, or `*` alone and without credentials.
fn check_origin(origin: &str, count: usize, credentials: bool) -> Result<(), String> {
    if origin == "*" {
        return if credentials {
            Err(r#""*" cannot be used with cors.allow_credentials = true (browsers refuse it): list the origins"#.to_owned())
        } else if count > 1 {
            Err(r#""*" allows every origin: list it alone"#.to_owned())
        } else {
            Ok(())
        };
    }
    let example = r#"an origin such as "https://chat.example.com" or "http://localhost:5173""#;
    let Some((scheme, authority)) = origin.split_once("://") else {
        return Err(format!("expected {example}, got {origin:?}"));
    };
    if scheme != "http" && scheme != "https" {
        return Err(format!("the scheme must be http or https, got {origin:?}"));
    }
    if authority.is_empty() || authority.contains(['/', '?', '#', '@', ' ']) {
        return Err(format!(
            "expected {example} (no path, query or user), got {origin:?}"
        ));
    }
    if origin != origin.to_ascii_lowercase() {
        return Err(format!(
            "browsers send origins in lower case: {:?}",
            origin.to_ascii_lowercase()
        ));
    }
    let default_port = if scheme == "https" { ":443" } else { ":80" };
    if authority.ends_with(default_port) {
        return Err(format!(
            "browsers leave the default port out: {:?}",
            origin.trim_end_matches(default_port)
        ));
    }
    if http::uri::Authority::try_from(authority).is_err() {
        return Err(format!("expected {example}, got {origin:?}"));
    }
    Ok(())
}

fn check_timeout(timeout: Duration) -> Result<(), String> {
    check_positive(timeout)
        .and_then(|()| check_at_most_max(timeout))
        .and_then(|()| check_whole_millis(timeout))
}

fn check_positive(duration: Duration) -> Result<(), String> {
    if duration.is_zero() {
        Err("must be greater than 0s".to_owned())
    } else {
        Ok(())
    }
}

/// Durations in messages: `Debug` is exact and short (`1.5ms`, `31539600s`),
/// where humantime's calendar form would say `11months 30days 4h 50m 24s`.
fn check_at_most_max(duration: Duration) -> Result<(), String> {
    if duration <= MAX_DURATION {
        Ok(())
    } else {
        Err(format!(
            "must be at most {}h (365 days), got {duration:?}",
            MAX_DURATION.as_secs() / 3600
        ))
    }
}

/// `streams.heartbeat_interval`: `0s` (off), or between
/// [`MIN_HEARTBEAT_INTERVAL`] and [`MAX_DURATION`].
fn check_heartbeat_interval(interval: Duration) -> Result<(), String> {
    if interval.is_zero() {
        return Ok(());
    }
    if interval < MIN_HEARTBEAT_INTERVAL {
        return Err(format!(
            "must be 0s (heartbeats off) or at least {}, got {interval:?}",
            humantime::format_duration(MIN_HEARTBEAT_INTERVAL)
        ));
    }
    check_at_most_max(interval)
}

/// `admin.token_env` is required when the admin listener is reachable from
/// the network. `to_canonical` makes `[::ffff:127.0.0.1]` count as loopback;
/// the wildcards `0.0.0.0` and `[::]` are not.
fn check_admin_needs_no_token(admin: Option<SocketAddr>) -> Result<(), String> {
    match admin {
        Some(addr) if !addr.ip().to_canonical().is_loopback() => Err(format!(
            "required when admin.listen is not a loopback address (the admin API can end \
             streams); admin.listen is {addr}: set token_env to the name of an environment \
             variable holding a token of at least {MIN_ADMIN_TOKEN_BYTES} bytes, or listen on \
             127.0.0.1 or [::1]"
        )),
        _ => Ok(()),
    }
}

/// `resume.instance_id`: it goes into stream ids (`st_<instance>_<n>`) and URLs, and the
/// proxy's routing splits on `_`.
fn check_instance_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.chars().count() > MAX_INSTANCE_ID_CHARS {
        Err(format!("must be 1 to {MAX_INSTANCE_ID_CHARS} characters"))
    } else if !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
        Err("may hold only letters, digits and '-' (it is part of stream ids and URLs)".to_owned())
    } else {
        Ok(())
    }
}

/// The gateway's timers work in milliseconds; humantime also reads `"1500us"`
/// or `"1ns"`, and code (the command line, tests) can set any `Duration`.
fn check_whole_millis(duration: Duration) -> Result<(), String> {
    if duration.subsec_nanos() % 1_000_000 == 0 {
        Ok(())
    } else {
        Err(format!(
            "must be a whole number of milliseconds, got {duration:?}"
        ))
    }
}

/// Headers a client may never push upstream through `forward_headers`: credentials, hop-by-hop
/// and framing headers, and those the gateway sets itself.
const NEVER_FORWARDED: [&str; 14] = [
    "authorization",
    "proxy-authorization",
    "cookie",
    "host",
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
    "accept-encoding",
    "x-request-id",
    "forwarded",
];

/// A lower-case header name, or a prefix of one followed by `*`, that is not refused.
fn check_forward_header(pattern: &str) -> Result<(), String> {
    let name = pattern.strip_suffix('*').unwrap_or(pattern);
    let token = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b);
    if name.is_empty() || !name.bytes().all(token) {
        return Err(format!(
            "{pattern:?} is not a lower-case header name (optionally ending in * for a prefix)"
        ));
    }
    let refused = |h: &&&str| {
        if pattern.ends_with('*') {
            h.starts_with(name)
        } else {
            **h == name
        }
    };
    if let Some(h) = NEVER_FORWARDED.iter().find(refused) {
        return Err(format!(
            "{pattern:?} would forward {h:?}, which never goes upstream"
        ));
    }
    if name.starts_with("proxy-") || (pattern.ends_with('*') && "proxy-".starts_with(name)) {
        return Err(format!(
            "{pattern:?} would forward proxy-* headers, which never go upstream"
        ));
    }
    Ok(())
}

/// Which secret an `*_env` key names; only changes the wording of messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EnvVar {
    /// `upstream.api_key_env`.
    ApiKey,
    /// `admin.token_env`.
    AdminToken,
}

impl EnvVar {
    fn example(self) -> &'static str {
        match self {
            EnvVar::ApiKey => "OPENAI_API_KEY",
            EnvVar::AdminToken => "TIDEGATE_ADMIN_TOKEN",
        }
    }

    fn secret(self) -> &'static str {
        match self {
            EnvVar::ApiKey => "key",
            EnvVar::AdminToken => "token",
        }
    }
}

/// A portable environment variable name. Deliberately strict, and the
/// value is never echoed: a common mistake is pasting the secret itself here.
fn check_env_name(name: &str, var: EnvVar) -> Result<(), String> {
    let valid = name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if valid {
        Ok(())
    } else {
        Err(format!(
            "must be the name of an environment variable (letters, digits and _, \
             not starting with a digit), such as \"{}\"; the {} itself \
             belongs in that variable, not in the file",
            var.example(),
            var.secret()
        ))
    }
}

/// Reads the secret in the environment variable `name`. Messages name the
/// variable but never contain its value.
fn read_secret(
    name: &str,
    var: EnvVar,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<Secret, String> {
    check_env_name(name, var)?;
    let value = lookup(name).ok_or_else(|| format!("environment variable {name} is not set"))?;
    if value.trim().is_empty() {
        return Err(format!("environment variable {name} is empty"));
    }
    if value.trim() != value {
        return Err(format!(
            "the value of {name} has leading or trailing whitespace (often a stray newline); \
             remove it"
        ));
    }
    if !value.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "the value of {name} contains spaces, control or non-ASCII characters, \
             which cannot be sent in an Authorization header"
        ));
    }
    if var == EnvVar::AdminToken && value.len() < MIN_ADMIN_TOKEN_BYTES {
        return Err(format!(
            "the value of {name} is shorter than {MIN_ADMIN_TOKEN_BYTES} bytes; use a long \
             random token (e.g. from `openssl rand -hex 32`)"
        ));
    }
    Ok(Secret(value))
}

fn check_log_level(level: &str) -> Result<(), String> {
    if level.trim().is_empty() {
        Err(
            r#"must not be empty; use a filter such as "info" or "tidegate=debug,hyper=warn""#
                .to_owned(),
        )
    } else {
        Ok(())
    }
}

/// The admin listener must not try to bind the client listener's socket:
/// same non-zero port, and the same address or a wildcard covering it (an
/// IPv6 wildcard also covers IPv4 on dual-stack hosts).
fn check_listeners_apart(listen: SocketAddr, admin: SocketAddr) -> Result<(), String> {
    fn covers(a: IpAddr, b: IpAddr) -> bool {
        a == b || (a.is_unspecified() && (a.is_ipv6() || b.is_ipv4()))
    }
    let same_port = admin.port() != 0 && admin.port() == listen.port();
    if same_port && (covers(listen.ip(), admin.ip()) || covers(admin.ip(), listen.ip())) {
        Err(format!(
            "{admin} overlaps listen ({listen}); the admin listener needs its own port or address"
        ))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests;
