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

mod formats;
mod load;
mod upstream_url;

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
/// Default cap on one upstream SSE event: 256 KiB.
pub const DEFAULT_MAX_EVENT_BYTES: usize = 256 * 1024;
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
/// Default log output format.
pub const DEFAULT_LOG_FORMAT: LogFormat = LogFormat::Text;
/// Default log filter directive.
pub const DEFAULT_LOG_LEVEL: &str = "info";

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
    /// Where requests are relayed to (`[upstream]`).
    pub upstream: UpstreamConfig,
    /// Size and time limits (`[limits]`).
    pub limits: Limits,
    /// Heartbeats and backpressure for streaming responses (`[streams]`).
    pub streams: StreamsConfig,
    /// Graceful shutdown behaviour (`[shutdown]`).
    pub shutdown: ShutdownConfig,
    /// Logging (`[log]`).
    pub log: LogConfig,
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

/// `[upstream]`: the OpenAI-compatible server requests are relayed to.
#[derive(Debug, Clone, PartialEq, Eq, SmartDefault, Serialize, Deserialize)]
#[serde(default, expecting = "a table (an [upstream] section)")]
pub struct UpstreamConfig {
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
    /// Speak only HTTP/2 to the upstream (`upstream.http2`): prior knowledge
    /// for `http://`, ALPN `h2` for `https://`. All streams then share one
    /// connection instead of holding one each, which is most of a stream's
    /// memory and half of its sockets at 10,000 streams. The upstream must
    /// allow that many concurrent streams (SETTINGS_MAX_CONCURRENT_STREAMS);
    /// requests beyond its limit wait for a free stream. Default `false`:
    /// HTTP/1.1 for `http://`, either by ALPN for `https://`.
    pub http2: bool,
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

    /// Every semantic rule of the schema (ranges, cross-field rules), on the
    /// final config: [`Config::from_toml_str`] runs it after deserializing,
    /// and the command line again after its overrides. Reports every problem
    /// with its dotted key path.
    pub fn validate(&self) -> Result<(), ConfigErrors> {
        let mut errors = Vec::new();
        let mut check = |path: &str, result: Result<(), String>| {
            if let Err(message) = result {
                errors.push(ConfigError {
                    path: path.to_owned(),
                    message,
                });
            }
        };

        check(
            "worker_threads",
            check_size(usize_to_u64(self.worker_threads), &WORKER_THREADS_RANGE),
        );
        if let Some(admin) = self.admin.listen {
            check("admin.listen", check_listeners_apart(self.listen, admin));
        }
        match &self.admin.token_env {
            Some(name) => check(
                ADMIN_TOKEN_ENV_PATH,
                check_env_name(name, EnvVar::AdminToken),
            ),
            None => check(
                ADMIN_TOKEN_ENV_PATH,
                check_admin_needs_no_token(self.admin.listen),
            ),
        }
        if let Some(name) = &self.upstream.api_key_env {
            check(API_KEY_ENV_PATH, check_env_name(name, EnvVar::ApiKey));
        }
        for name in &self.upstream.forward_headers {
            check("upstream.forward_headers", check_forward_header(name));
        }

        let l = &self.limits;
        check(
            "limits.max_body_bytes",
            check_size(l.max_body_bytes, &MAX_BODY_BYTES_RANGE),
        );
        check(
            "limits.max_header_bytes",
            check_size(usize_to_u64(l.max_header_bytes), &MAX_HEADER_BYTES_RANGE),
        );
        check(
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
            check(path, check_timeout(timeout));
        }
        let s = &self.streams;
        check(
            "streams.heartbeat_interval",
            check_heartbeat_interval(s.heartbeat_interval)
                .and_then(|()| check_whole_millis(s.heartbeat_interval)),
        );
        check(
            "streams.max_buffered_bytes",
            check_size(
                usize_to_u64(s.max_buffered_bytes),
                &MAX_BUFFERED_BYTES_RANGE,
            ),
        );
        check(
            "streams.client_stall_timeout",
            check_timeout(s.client_stall_timeout),
        );
        let drain = self.shutdown.drain_timeout;
        check(
            "shutdown.drain_timeout",
            check_at_most_max(drain).and_then(|()| check_whole_millis(drain)),
        );
        check("log.level", check_log_level(&self.log.level));

        if errors.is_empty() {
            Ok(())
        } else {
            Err(ConfigErrors(errors))
        }
    }

    /// Reads the secrets the file names through `lookup`
    /// (`|name| std::env::var(name).ok()` in production, a closure in tests):
    /// the key named by `upstream.api_key_env` into `upstream.api_key`, and
    /// the token named by `admin.token_env` into `admin.token`. A secret
    /// whose `*_env` key is absent is cleared and nothing is looked up for
    /// it; on any error neither secret is stored.
    ///
    /// Errors (at path `upstream.api_key_env` or `admin.token_env`, never
    /// containing the value; both are checked, so every problem is reported
    /// at once): the variable is unset or empty, or the value cannot be sent
    /// in an HTTP header (surrounding whitespace, control or non-ASCII
    /// characters), or an admin token is shorter than
    /// [`MIN_ADMIN_TOKEN_BYTES`].
    pub fn resolve_secrets(
        &mut self,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<(), ConfigErrors> {
        self.upstream.api_key = None;
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
        let token = resolve(
            ADMIN_TOKEN_ENV_PATH,
            self.admin.token_env.as_ref(),
            EnvVar::AdminToken,
        );
        if errors.is_empty() {
            self.upstream.api_key = api_key;
            self.admin.token = token;
            Ok(())
        } else {
            Err(ConfigErrors(errors))
        }
    }

    /// The effective configuration as TOML, by serializing the structs: every
    /// key with a value is present (defaults included; absent optional keys
    /// such as `admin.listen` are named in a `# not set:` comment), durations
    /// as humantime strings (`"1m 30s"`), sizes as integers in bytes.
    ///
    /// Secrets are never printed: the secret fields are skipped by serde, and
    /// a header comment says when one was resolved,
    /// `# upstream key: <redacted> (read from $NAME)` or
    /// `# admin token: <redacted> (read from $NAME)`. So for a valid config
    /// the output parses back with [`Config::from_toml_str`] into an equal
    /// config, except that `upstream.api_key` and `admin.token` must be
    /// resolved again.
    ///
    /// Fails only for a config [`Config::validate`] rejects (e.g. a size
    /// beyond what TOML's signed integers hold).
    pub fn to_redacted_toml(&self) -> Result<String, ConfigError> {
        let body = toml::to_string(self).map_err(|e| ConfigError {
            path: "(config)".to_owned(),
            message: format!("cannot print as TOML: {e}"),
        })?;
        let mut out =
            String::from("# Effective tidegate configuration. Secrets are never printed.\n");
        out.push_str(&format!(
            "# worker_threads = {}: {} in use\n",
            self.worker_threads,
            self.worker_count()
        ));
        let unset = load::unset_keys(self);
        if !unset.is_empty() {
            out.push_str(&format!("# not set: {}\n", unset.join(", ")));
        }
        for comment in [
            secret_comment(
                "upstream key",
                self.upstream.api_key.as_ref(),
                self.upstream.api_key_env.as_deref(),
            ),
            secret_comment(
                "admin token",
                self.admin.token.as_ref(),
                self.admin.token_env.as_deref(),
            ),
        ]
        .into_iter()
        .flatten()
        {
            out.push_str(&comment);
            out.push('\n');
        }
        out.push('\n');
        out.push_str(&body);
        Ok(out)
    }
}

// ---- the rules validate applies ----------------------------------------------

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
