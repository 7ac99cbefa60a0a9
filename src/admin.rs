//! The admin API, on the operator listener: list, inspect and end live streams, and a summary.
//!
//! - `GET /admin/streams?ip=&api_key=&model=&state=&limit=`: live streams, oldest first
//!   (`api_key` is a key's name).
//! - `GET /admin/streams/{id}`: one stream.
//! - `DELETE /admin/streams/{id}`: ends the stream with a final `terminated_by_admin` error
//!   event and cancels its upstream request.
//! - `GET /admin/summary`: streams by state, connections by protocol, the oldest stream's age.
//!
//! When an admin token is configured (required on a non-loopback listener), every admin route
//! needs `Authorization: Bearer <token>`. Health checks stay open: they reveal nothing and
//! probes should not need secrets.

use std::net::IpAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use serde::Serialize;

use crate::admission::Admission;
use crate::auth::bearer_token;
use crate::config::Secret;
use crate::connection::ConnectionCaps;
use crate::connection::{ConnectionCounts, Protocol};
use crate::error::GatewayError;
use crate::metrics::{Live, Metrics, TlsLive};
use crate::refusal::RefusalCounts;
use crate::registry::{EndReason, Registry, StreamHandle, StreamState};
use crate::relay::resume::ResumeStore;
use crate::resilience::breaker::BreakerState;
use crate::resilience::budget::BudgetSnapshot;
use crate::response::{self, method_not_allowed, require_method};
use crate::tls::ServerTls;
use crate::upstream::backends::{BackendView, Backends};

/// Streams listed when the request gives no `limit`.
pub const DEFAULT_LIST_LIMIT: usize = 100;
/// Most streams one list request returns.
pub const MAX_LIST_LIMIT: usize = 10_000;

const STREAMS_PATH: &str = "/admin/streams";
const UPSTREAMS_PATH: &str = "/admin/upstreams";

/// `GET /admin/upstreams`: each upstream's breaker and load, and the retry budget.
#[derive(Serialize)]
struct UpstreamsView<'a> {
    upstreams: Vec<BackendView<'a>>,
    retry_budget: BudgetSnapshot,
}

fn upstreams(backends: &Backends) -> UpstreamsView<'_> {
    let now = std::time::Instant::now();
    UpstreamsView {
        upstreams: backends.snapshot(now),
        retry_budget: backends.budget.snapshot(now),
    }
}

/// Whether `path` belongs to the admin API (anything else on the listener is health or 404).
pub fn is_admin_path(path: &str) -> bool {
    path == "/admin" || path.starts_with("/admin/") || path == METRICS_PATH
}

/// Prometheus' scrape path; behind the admin token like the rest of the admin API (a scrape
/// config sends it with `authorization: { credentials_file: ... }`).
pub const METRICS_PATH: &str = "/metrics";

/// The content type of the Prometheus text format.
const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What the admin API reads and acts on.
pub struct AdminApi {
    /// The live streams it lists and ends.
    pub registry: Arc<Registry>,
    /// The client listener's open connections, for the summary.
    pub connections: Arc<ConnectionCounts>,
    /// When set, every admin request must carry `Authorization: Bearer <token>`.
    pub token: Option<Secret>,
    /// The upstreams: their breakers, in-flight counts and the retry budget.
    pub backends: Arc<Backends>,
    /// Stream slots and refusals, for the summary.
    pub admission: Arc<Admission>,
    /// The API listener's connection caps, for the summary.
    pub connection_caps: Arc<ConnectionCaps>,
    /// The exported metrics, rendered on `GET /metrics`.
    pub metrics: Arc<Metrics>,
    /// `limits.max_streams`, exported for saturation alerts.
    pub max_streams: u64,
    /// The API listener's TLS, for its handshake counts and certificate expiry.
    pub tls: Option<Arc<ServerTls>>,
    /// The resumable streams (`[resume]`), for their metrics.
    pub resume: Option<Arc<ResumeStore>>,
}

impl AdminApi {
    /// Serves one admin request.
    pub fn handle<A, B: From<Bytes>>(
        &self,
        request: &Request<A>,
    ) -> Result<Response<B>, GatewayError> {
        authorize(self.token.as_ref(), request)?;
        if request.uri().path() == UPSTREAMS_PATH {
            require_method(request, &Method::GET, "GET")?;
            return Ok(json(StatusCode::OK, &upstreams(&self.backends)));
        }
        if request.uri().path() == METRICS_PATH {
            require_method(request, &Method::GET, "GET")?;
            let text = self.metrics.render(&self.live());
            let mut response = response::json::<B>(StatusCode::OK, text);
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(METRICS_CONTENT_TYPE),
            );
            return Ok(response);
        }
        route(self, request)
    }

    /// What the gateway counts anyway, read for a scrape.
    fn live(&self) -> Live {
        let (mut events, mut bytes, mut heartbeats) = (0, 0, 0);
        let mut streams = 0;
        // Bounded: one pass over the live streams.
        self.registry.for_each(|s| {
            streams += 1;
            events += s.events();
            bytes += s.bytes();
            heartbeats += s.heartbeats();
        });
        let upstreams = self
            .backends
            .snapshot(std::time::Instant::now())
            .into_iter()
            .map(|b| {
                let state = match b.breaker.state {
                    BreakerState::Closed => 0,
                    BreakerState::HalfOpen => 1,
                    BreakerState::Open => 2,
                };
                (
                    b.name.to_owned(),
                    state,
                    i64::try_from(b.h2_connections + b.http1_connections).unwrap_or(i64::MAX),
                )
            })
            .collect();
        let r = self.admission.refusals();
        Live {
            connections: [Protocol::Http1, Protocol::Http2]
                .into_iter()
                .map(|p| {
                    (
                        p.as_str(),
                        self.connections.get(p),
                        self.connections.opened_by(p),
                    )
                })
                .collect(),
            streams_active: streams,
            live_events: events,
            live_bytes: bytes,
            live_heartbeats: heartbeats,
            upstreams,
            refusals: vec![
                ("ip_rate", r.ip_rate),
                ("ip_streams", r.ip_streams),
                ("ip_connections", r.ip_connections),
                ("global_streams", r.global_streams),
                ("global_connections", r.global_connections),
                ("key_rate", r.key_rate),
                ("key_streams", r.key_streams),
                ("auth", r.auth),
                ("model_not_allowed", r.model_not_allowed),
            ],
            max_connections: self.connection_caps.max(),
            max_streams: self.max_streams,
            tls: self.tls.as_ref().map(|tls| {
                let r = tls.reading();
                TlsLive {
                    handshakes: r.handshakes.map(|(h, n)| (h.as_str(), n)).to_vec(),
                    reloads_ok: r.reloads_ok,
                    reloads_failed: r.reloads_failed,
                    certificate_expiry: r.not_after,
                }
            }),
            resume: self.resume.as_ref().map(|store| store.stats()),
        }
    }
}

fn route<A, B: From<Bytes>>(
    api: &AdminApi,
    request: &Request<A>,
) -> Result<Response<B>, GatewayError> {
    let registry = &api.registry;
    let path = request.uri().path();
    let method = request.method();
    if path == "/admin/summary" {
        require_method(request, &Method::GET, "GET")?;
        return Ok(json(
            StatusCode::OK,
            &summary(
                registry,
                &api.connections,
                &api.admission,
                &api.connection_caps,
            ),
        ));
    }
    if path == STREAMS_PATH {
        require_method(request, &Method::GET, "GET")?;
        let filter = Filter::parse(request.uri().query().unwrap_or(""))?;
        return Ok(json(StatusCode::OK, &list(registry, &filter)));
    }
    if let Some(id) = path
        .strip_prefix(STREAMS_PATH)
        .and_then(|rest| rest.strip_prefix('/'))
        .filter(|id| !id.is_empty() && !id.contains('/'))
    {
        let stream = registry
            .get(id)
            .ok_or_else(|| GatewayError::StreamNotFound(id.to_owned()))?;
        return match *method {
            Method::GET => Ok(json(StatusCode::OK, &view(registry, &stream))),
            Method::DELETE => {
                let first = stream.end(EndReason::Admin);
                tracing::info!(
                    stream_id = stream.id(),
                    client = %stream.client_ip(),
                    "stream ended by the admin API"
                );
                Ok(json(
                    StatusCode::ACCEPTED,
                    &Ended {
                        id: stream.id(),
                        ending: EndReason::Admin.code(),
                        already_ending: !first,
                    },
                ))
            }
            _ => Err(method_not_allowed(request, "GET, DELETE")),
        };
    }
    Err(response::not_found(request))
}

/// Checks the bearer token, if one is configured, in time independent of where it differs.
fn authorize<B>(token: Option<&Secret>, request: &Request<B>) -> Result<(), GatewayError> {
    let Some(token) = token else {
        return Ok(());
    };
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| bearer_token(v.as_bytes()))
        .unwrap_or_default();
    if constant_time_eq(presented, token.expose().as_bytes()) {
        Ok(())
    } else {
        Err(GatewayError::AdminUnauthorized)
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    // The length is not secret (the token's length is fixed by the operator); the content is.
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The list filters.
#[derive(Debug, Default, PartialEq)]
struct Filter {
    ip: Option<IpAddr>,
    api_key: Option<String>,
    model: Option<String>,
    state: Option<StreamState>,
    limit: Option<usize>,
}

impl Filter {
    fn parse(query: &str) -> Result<Filter, GatewayError> {
        let mut filter = Filter::default();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let value = percent_decode(value).ok_or(GatewayError::InvalidParameter {
                param: "query",
                expected: "valid percent-encoding".into(),
            })?;
            match key {
                "ip" => {
                    filter.ip = Some(value.parse().map_err(|_| GatewayError::InvalidParameter {
                        param: "ip",
                        expected: "an IPv4 or IPv6 address".into(),
                    })?)
                }
                "api_key" => filter.api_key = Some(value),
                "model" => filter.model = Some(value),
                "state" => {
                    filter.state = Some(StreamState::parse(&value).ok_or_else(|| {
                        GatewayError::InvalidParameter {
                            param: "state",
                            expected: format!("one of {}", StreamState::names()).into(),
                        }
                    })?)
                }
                "limit" => {
                    filter.limit = Some(
                        value
                            .parse::<usize>()
                            .ok()
                            .filter(|n| (1..=MAX_LIST_LIMIT).contains(n))
                            .ok_or_else(|| GatewayError::InvalidParameter {
                                param: "limit",
                                expected: format!("an integer from 1 to {MAX_LIST_LIMIT}").into(),
                            })?,
                    )
                }
                _ => {
                    return Err(GatewayError::InvalidParameter {
                        param: "query",
                        expected: "only the parameters ip, api_key, model, state and limit".into(),
                    })
                }
            }
        }
        Ok(filter)
    }

    fn matches(&self, stream: &StreamHandle) -> bool {
        self.ip.is_none_or(|ip| stream.client_ip() == ip)
            && self
                .api_key
                .as_deref()
                .is_none_or(|k| stream.api_key() == Some(k))
            && self.model.as_deref().is_none_or(|m| stream.model() == m)
            && self.state.is_none_or(|s| stream.state() == s)
    }
}

/// `%XX` and `+` decoding of one query value; None if it is not valid UTF-8 afterwards.
fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3)?;
                let hex = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// One stream as the admin API shows it.
#[derive(Debug, Serialize)]
pub struct StreamView<'a> {
    pub id: &'a str,
    pub state: StreamState,
    pub client_ip: IpAddr,
    /// The name of the stream's API key (`[auth] mode = "keys"`), never the key.
    pub api_key: Option<&'a str>,
    pub model: &'a str,
    /// The upstream asked last (none before the first attempt).
    pub upstream: Option<&'a str>,
    /// Upstream requests made for the stream (more than 1 after retries).
    pub attempts: u32,
    pub request_id: &'a str,
    pub protocol: Option<Protocol>,
    pub started_at: String,
    pub age_ms: u64,
    /// Time from the start to the first event relayed.
    pub first_event_after_ms: Option<u64>,
    pub last_write_ago_ms: u64,
    pub events: u64,
    pub bytes: u64,
    pub heartbeats: u64,
    /// How long the client has not taken the last frame, if it has not.
    pub blocked_ms: Option<u64>,
    /// Why the gateway is ending it, if it is.
    pub ending: Option<&'static str>,
    /// Its client has gone and it generates for a resume (`[resume]`), until `detach_grace`.
    pub detached: bool,
}

fn view<'a>(registry: &Registry, stream: &'a StreamHandle) -> StreamView<'a> {
    let now = registry.now_ms();
    StreamView {
        id: stream.id(),
        state: stream.state(),
        client_ip: stream.client_ip(),
        api_key: stream.api_key(),
        model: stream.model(),
        upstream: stream.upstream(),
        attempts: stream.attempts(),
        request_id: stream.request_id(),
        protocol: stream.protocol(),
        started_at: rfc3339_millis(registry.unix_ms(stream.started_ms())),
        age_ms: now.saturating_sub(stream.started_ms()),
        first_event_after_ms: stream
            .first_event_ms()
            .map(|t| t.saturating_sub(stream.started_ms())),
        last_write_ago_ms: now.saturating_sub(stream.last_write_ms()),
        events: stream.events(),
        bytes: stream.bytes(),
        heartbeats: stream.heartbeats(),
        blocked_ms: stream.blocked_since_ms().map(|t| now.saturating_sub(t)),
        ending: stream.end_reason().map(EndReason::code),
        detached: stream.is_detached(),
    }
}

#[derive(Serialize)]
struct StreamList<'a> {
    /// Streams matching the filters (all of them, not only those returned).
    matched: usize,
    returned: usize,
    streams: Vec<StreamView<'a>>,
}

fn list(registry: &Registry, filter: &Filter) -> serde_json::Value {
    let all = registry.snapshot();
    let matching: Vec<_> = all.iter().filter(|s| filter.matches(s)).collect();
    let limit = filter.limit.unwrap_or(DEFAULT_LIST_LIMIT);
    let streams: Vec<_> = matching
        .iter()
        .take(limit)
        .map(|s| view(registry, s))
        .collect();
    serde_json::to_value(StreamList {
        matched: matching.len(),
        returned: streams.len(),
        streams,
    })
    .unwrap_or_default()
}

#[derive(Serialize)]
struct Ended<'a> {
    id: &'a str,
    ending: &'static str,
    /// The stream was already being ended (by an earlier request or the gateway).
    already_ending: bool,
}

#[derive(Serialize)]
struct Summary {
    streams: usize,
    by_state: serde_json::Map<String, serde_json::Value>,
    connections: Connections,
    oldest_stream_age_ms: Option<u64>,
    draining: bool,
    admission: AdmissionView,
}

/// Admission control now: streams holding a slot, and refusals so far by reason.
#[derive(Serialize)]
struct AdmissionView {
    streams: u64,
    addresses_with_streams: usize,
    rate_limited_addresses: usize,
    /// Client connections holding a place in the caps, the global cap (0: none), and the
    /// addresses counted against the per-address cap.
    connections: u64,
    max_connections: u64,
    addresses_with_connections: usize,
    /// New addresses not tracked because the rate limiter held `limits.per_ip.max_tracked`.
    untracked_addresses: u64,
    refusals: RefusalCounts,
}

#[derive(Serialize)]
struct Connections {
    http1: u64,
    http2: u64,
}

fn summary(
    registry: &Registry,
    connections: &ConnectionCounts,
    admission: &Admission,
    caps: &ConnectionCaps,
) -> Summary {
    let mut counts = [0usize; StreamState::ALL.len()];
    let mut oldest = None::<u64>;
    let mut total = 0;
    registry.for_each(|s| {
        total += 1;
        counts[s.state() as usize] += 1;
        oldest = Some(oldest.map_or(s.started_ms(), |o| o.min(s.started_ms())));
    });
    let now = registry.now_ms();
    Summary {
        streams: total,
        by_state: StreamState::ALL
            .iter()
            .map(|s| (s.as_str().to_owned(), counts[*s as usize].into()))
            .collect(),
        connections: Connections {
            http1: connections.get(Protocol::Http1),
            http2: connections.get(Protocol::Http2),
        },
        oldest_stream_age_ms: oldest.map(|t| now.saturating_sub(t)),
        draining: registry.is_draining(),
        admission: AdmissionView {
            streams: admission.streams(),
            addresses_with_streams: admission.addresses_with_streams(),
            rate_limited_addresses: admission.tracked_addresses(),
            connections: caps.open(),
            max_connections: caps.max(),
            addresses_with_connections: caps.addresses(),
            untracked_addresses: admission.untracked_addresses(),
            refusals: admission.refusals(),
        },
    }
}

/// A JSON answer that no cache may keep: it describes live streams.
fn json<B: From<Bytes>>(status: StatusCode, value: &impl Serialize) -> Response<B> {
    // Serializing plain data cannot fail; an empty object keeps the type total.
    let mut body = serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec());
    // Ends with a newline, as a terminal expects: `curl -s .../admin/summary` then leaves the
    // shell prompt on a line of its own.
    body.push(b'\n');
    let mut response = response::json(status, body);
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// `2026-11-21T08:30:00.123Z` from Unix milliseconds (proleptic Gregorian, UTC).
fn rfc3339_millis(unix_ms: u64) -> String {
    let secs = unix_ms / 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        unix_ms % 1000
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339_utc() {
        assert_eq!(rfc3339_millis(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_millis(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(
            rfc3339_millis(1_795_257_000_000),
            "2026-11-21T10:30:00.000Z"
        );
    }

    #[test]
    fn filters_parse_and_reject_what_they_do_not_know() {
        assert_eq!(Filter::parse("").unwrap(), Filter::default());
        let f =
            Filter::parse("ip=%3A%3A1&model=gpt-4o+mini&state=streaming&limit=5&api_key=team-a")
                .unwrap();
        assert_eq!(f.ip, Some("::1".parse().unwrap()));
        assert_eq!(f.api_key.as_deref(), Some("team-a"));
        assert_eq!(f.model.as_deref(), Some("gpt-4o mini"));
        assert_eq!(f.state, Some(StreamState::Streaming));
        assert_eq!(f.limit, Some(5));
        for (query, param) in [
            ("ip=nope", "ip"),
            ("state=done", "state"),
            ("limit=0", "limit"),
            ("limit=10001", "limit"),
            ("limit=x", "limit"),
            ("colour=red", "query"),
            ("model=%zz", "query"),
        ] {
            let err = Filter::parse(query).unwrap_err();
            assert_eq!(err.class().param, Some(param), "{query}");
            assert_eq!(err.status(), StatusCode::BAD_REQUEST);
        }
    }

    #[test]
    fn tokens_compare_whole() {
        assert!(constant_time_eq(b"abcdef", b"abcdef"));
        assert!(!constant_time_eq(b"abcdef", b"abcdeg"));
        assert!(!constant_time_eq(b"abc", b"abcdef"));
        assert!(!constant_time_eq(b"", b"abcdef"));
    }
}
