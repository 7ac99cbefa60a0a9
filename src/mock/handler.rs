//! Routing, request parsing, pacing and the non-streaming answers.
//!
//! Each `/v1` request is handled in three steps: read the body (capped),
//! decide a [`Plan`] without waiting for anything, then carry the plan out
//! under a [`Tracker`] so every wait is accounted for. A fault scheduled by
//! the test ([`Faults`]) is taken the moment the request arrives, before any
//! of that, and replaces the plan.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{AUTHORIZATION, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE};
use http::request::Parts;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Incoming;
use serde::{Deserialize, Serialize};

use super::faults::{self, ConnState, Faults, InFlight, Scheduled};
use super::responses::{
    self, cut, input_text, parse_response_id, ResponseMeta, ResponsesSpec, Status, MAX_MODEL_BYTES,
    MAX_TEXT_BYTES,
};
use super::sse::{Api, MockBody, StreamPlan, StreamSpec};
use super::stats::{Kind, MockStats, Outcome, Tracker};
use super::store::{Cancel, ResponseStore, Stored};
use super::{
    expected_content, Fault, MockSettings, DEFAULT_MODEL, MAX_BODY_BYTES, MAX_RESPONSE_CHUNKS,
    SYSTEM_FINGERPRINT,
};

/// `created` of every entry in `GET /v1/models` (a fixed, plausible date).
const MODELS_CREATED: u64 = 1_700_000_000;

/// What `fail-429` asks a client to wait: `retry-after: 1`, `retry-after-ms: 1000`.
const FAIL_429_RETRY_AFTER: Duration = Duration::from_secs(1);

/// OpenAI's own cap on inputs per embeddings request.
const MAX_EMBEDDING_INPUTS: usize = 2048;

/// State shared by every connection of one [`super::MockUpstream`].
pub(crate) struct Shared {
    pub(crate) settings: MockSettings,
    pub(crate) stats: Arc<MockStats>,
    /// The schedules set through the handle.
    pub(crate) faults: Arc<Faults>,
    /// Source of `req_mock_<n>`, `chatcmpl-mock<n>` and `resp_mock<n>`.
    next_id: AtomicU64,
    /// `/v1/responses` answers kept for retrieval.
    responses: ResponseStore,
    /// The most recent `/v1` request, kept raw; converted only when asked for.
    last: Mutex<Option<Arc<Captured>>>,
}

impl Shared {
    pub(crate) fn new(settings: MockSettings) -> Shared {
        Shared {
            responses: ResponseStore::new(settings.stored_responses),
            settings,
            stats: Arc::new(MockStats::new()),
            faults: Arc::new(Faults::default()),
            next_id: AtomicU64::new(1),
            last: Mutex::new(None),
        }
    }

    fn capture(&self, parts: &Parts, body: Bytes) {
        let captured = Arc::new(Captured {
            version: parts.version,
            method: parts.method.clone(),
            path: parts.uri.path().to_owned(),
            query: parts.uri.query().map(str::to_owned),
            headers: parts.headers.clone(),
            body,
        });
        let mut slot = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        let previous = slot.replace(captured);
        drop(slot);
        // The previous body (up to 8 MiB) is freed outside the lock.
        drop(previous);
    }

    pub(crate) fn last_request(&self) -> Option<CapturedRequest> {
        let captured = self
            .last
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        captured.map(|c| c.to_public())
    }
}

/// What the mock keeps of the last request.
struct Captured {
    version: Version,
    method: Method,
    path: String,
    query: Option<String>,
    headers: HeaderMap,
    body: Bytes,
}

impl Captured {
    fn to_public(&self) -> CapturedRequest {
        let mut headers: BTreeMap<String, String> = BTreeMap::new();
        for (name, value) in &self.headers {
            let value = String::from_utf8_lossy(value.as_bytes());
            headers
                .entry(name.as_str().to_owned())
                .and_modify(|joined| {
                    joined.push_str(", ");
                    joined.push_str(&value);
                })
                .or_insert_with(|| value.into_owned());
        }
        CapturedRequest {
            version: format!("{:?}", self.version),
            method: self.method.as_str().to_owned(),
            path: self.path.clone(),
            query: self.query.clone(),
            authorization: self
                .headers
                .get(AUTHORIZATION)
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()),
            headers,
            body: String::from_utf8_lossy(&self.body).into_owned(),
        }
    }
}

/// The most recent `/v1` request as the gateway forwarded it: the JSON of
/// `GET /stats/last-request`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapturedRequest {
    /// `"HTTP/1.1"` or `"HTTP/2.0"`: how the gateway spoke to the mock.
    pub version: String,
    /// e.g. `"POST"`.
    pub method: String,
    /// Path without the query, e.g. `"/v1/chat/completions"`.
    pub path: String,
    /// Raw query string without `?`, or `null` when the URL had none.
    pub query: Option<String>,
    /// The `authorization` header, or `null`: the thing a gateway must get
    /// right (inject, replace or strip).
    pub authorization: Option<String>,
    /// Every header, lowercased name to value; repeated headers are joined
    /// with `", "`, non-UTF-8 bytes replaced.
    pub headers: BTreeMap<String, String>,
    /// The body as UTF-8 (lossy). Empty when it was rejected as too large.
    pub body: String,
}

/// Entry point for every request on every connection. `connection` is the
/// request's connection (always known when served by the acceptor).
pub(crate) async fn handle(
    shared: Arc<Shared>,
    connection: Option<Arc<ConnState>>,
    req: Request<Incoming>,
) -> Response<MockBody> {
    let path = req.uri().path();
    if path == "/v1" || path.starts_with("/v1/") {
        return v1(&shared, connection, req).await;
    }
    match (req.method(), path) {
        (&Method::GET, "/stats") => {
            json_response(StatusCode::OK, to_json(&shared.stats.snapshot()))
        }
        (&Method::GET, "/stats/last-request") => match shared.last_request() {
            Some(captured) => json_response(StatusCode::OK, to_json(&captured)),
            None => error_response(
                StatusCode::NOT_FOUND,
                "The mock upstream has not received any /v1 request yet.",
                "invalid_request_error",
                None,
                None,
            ),
        },
        (method, path) => invalid_url(method, path),
    }
}

async fn v1(
    shared: &Shared,
    connection: Option<Arc<ConnState>>,
    req: Request<Incoming>,
) -> Response<MockBody> {
    // Counted on its connection first, so that the arrival below wakes a
    // waiter that already sees the new per-connection maximum.
    let mut in_flight = connection.as_ref().map(InFlight::start);
    shared.stats.request_received();
    let scheduled = shared.faults.take();
    let started = Instant::now();
    let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
    let (parts, body) = req.into_parts();

    if scheduled == Some(Scheduled::Drop) {
        shared.stats.scheduled_drop();
        shared.capture(&parts, Bytes::new());
        return drop_connection(shared, connection.as_deref(), in_flight).await;
    }
    // Even a scheduled failure reads the body first, as a real upstream
    // does: an HTTP/1.1 connection whose request body was left unread could
    // not be reused, and the test would see a closed connection it did not
    // ask for.
    let body = read_body(&parts.headers, body).await;
    shared.capture(
        &parts,
        body.as_ref().map_or_else(|_| Bytes::new(), Bytes::clone),
    );
    let plan = match (scheduled, body) {
        (
            Some(Scheduled::Fail {
                status,
                retry_after,
            }),
            _,
        ) => {
            shared.stats.scheduled_failure();
            Plan::Reply(scheduled_failure(status, retry_after))
        }
        (_, Ok(body)) => plan(shared, &parts, &body, id),
        (_, Err(reply)) => Plan::Reply(reply),
    };

    match plan {
        Plan::Reply(reply) => {
            let mut tracker =
                Tracker::start(Arc::clone(&shared.stats), Kind::Request, in_flight.take());
            if !reply.delay.is_zero() {
                tokio::time::sleep(reply.delay).await;
            }
            let mut response = json_response(reply.status, reply.body);
            let headers = response.headers_mut();
            if let Some(after) = reply.retry_after {
                add_retry_after(headers, after);
            }
            add_v1_headers(headers, id, started);
            tracker.finish(Outcome::Completed);
            response
        }
        Plan::Stream {
            spec,
            headers_delay,
        } => {
            let tracker = Tracker::start(Arc::clone(&shared.stats), Kind::Stream, in_flight.take());
            // The same timer paces the whole stream afterwards.
            let mut sleep = Box::pin(tokio::time::sleep(headers_delay));
            if !headers_delay.is_zero() {
                sleep.as_mut().await;
            }
            let mut response = Response::new(MockBody::stream(spec, tracker, sleep));
            let headers = response.headers_mut();
            headers.insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/event-stream; charset=utf-8"),
            );
            headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            add_v1_headers(headers, id, started);
            response
        }
    }
}

/// `drop_next`: closes the request's connection through the acceptor and
/// never answers. On HTTP/1.1 this future runs on the connection's own task,
/// on HTTP/2 on a stream task; either way hyper drops it as soon as the
/// acceptor has dropped the connection.
async fn drop_connection(
    shared: &Shared,
    connection: Option<&ConnState>,
    in_flight: Option<InFlight>,
) -> Response<MockBody> {
    let Some(connection) = connection else {
        // Unreachable when served by the acceptor, which always calls
        // `on_connection`: say so rather than answer as if nothing happened.
        return error_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            "The mock upstream was asked to drop this request's connection but does not know it.",
            "server_error",
            None,
            None,
        );
    };
    // The mock's own doing: not a reset by the client. Kept (in flight on
    // its connection) until hyper drops this future.
    let _in_flight = in_flight.map(|mut in_flight| {
        in_flight.settle();
        in_flight
    });
    connection.close_now();
    // Bounded: the acceptor drops the connection, and this future with it,
    // as soon as its task runs; `max_wait` only guards against a connection
    // that somehow outlives its close.
    tokio::time::sleep(shared.settings.max_wait).await;
    error_response(
        StatusCode::GATEWAY_TIMEOUT,
        "The mock upstream closed this connection (drop_next), yet it is still open.",
        "server_error",
        None,
        Some("mock_drop_failed"),
    )
}

/// The answer to a request failed by a `fail_next` schedule: at once, with an
/// OpenAI error of the type and code that go with `status`.
fn scheduled_failure(status: StatusCode, retry_after: Option<Duration>) -> Reply {
    let (kind, code) = faults::error_kind(status);
    Reply {
        retry_after,
        ..Reply::error(
            status,
            &format!("Scheduled failure: {status} (mock upstream, fail_next)"),
            kind,
            None,
            code,
        )
    }
}

/// `retry-after` in whole seconds and `retry-after-ms` in milliseconds, both
/// rounded up so that a client that honours either never comes back early.
fn add_retry_after(headers: &mut HeaderMap, after: Duration) {
    let secs = after
        .as_secs()
        .saturating_add(u64::from(after.subsec_nanos() > 0));
    let millis = u64::try_from(after.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX);
    headers.insert("retry-after", HeaderValue::from(secs));
    headers.insert("retry-after-ms", HeaderValue::from(millis));
}

/// What to do with a request, decided before any waiting.
enum Plan {
    Reply(Reply),
    Stream {
        spec: StreamPlan,
        headers_delay: Duration,
    },
}

/// A complete JSON answer, sent after `delay`.
struct Reply {
    status: StatusCode,
    body: Bytes,
    delay: Duration,
    /// Adds `retry-after` / `retry-after-ms` (fail-429, scheduled failures).
    retry_after: Option<Duration>,
}

impl Reply {
    fn now(status: StatusCode, body: Bytes) -> Reply {
        Reply {
            status,
            body,
            delay: Duration::ZERO,
            retry_after: None,
        }
    }

    fn after(delay: Duration, status: StatusCode, body: Bytes) -> Reply {
        Reply {
            delay,
            ..Reply::now(status, body)
        }
    }

    fn error(
        status: StatusCode,
        message: &str,
        kind: &'static str,
        param: Option<&'static str>,
        code: Option<&'static str>,
    ) -> Reply {
        Reply::now(status, error_json(message, kind, param, code))
    }

    fn bad_request(message: &str, param: Option<&'static str>) -> Reply {
        Reply::error(
            StatusCode::BAD_REQUEST,
            message,
            "invalid_request_error",
            param,
            None,
        )
    }
}

async fn read_body(headers: &HeaderMap, body: Incoming) -> Result<Bytes, Reply> {
    let too_large = || {
        Reply::error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "Request body too large: the mock upstream accepts at most 8 MiB.",
            "invalid_request_error",
            None,
            Some("request_too_large"),
        )
    };
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|len| len > MAX_BODY_BYTES as u64) {
        return Err(too_large());
    }
    match Limited::new(body, MAX_BODY_BYTES).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(err) if err.downcast_ref::<LengthLimitError>().is_some() => Err(too_large()),
        Err(err) => Err(Reply::bad_request(
            &format!("Could not read the request body: {err}"),
            None,
        )),
    }
}

/// Pacing for one request: the settings, overridden by `x-mock-*` headers,
/// each wait clamped to `max_wait`.
struct Timing {
    chunks: u32,
    chunk_delay: Duration,
    headers_delay: Duration,
    first_delay: Duration,
    /// `x-mock-timestamps: 1`: each event carries its send time (see `SseStream`).
    timestamps: bool,
}

impl Timing {
    fn from_request(
        settings: &MockSettings,
        headers: &HeaderMap,
        fault: Option<Fault>,
    ) -> Result<Timing, Reply> {
        let ms = |name: &'static str| -> Result<Option<Duration>, Reply> {
            Ok(header_number::<u64>(headers, name)?.map(Duration::from_millis))
        };
        let default_first = if fault == Some(Fault::SlowFirstToken) {
            settings.slow_first_token_delay
        } else {
            settings.first_chunk_delay
        };
        let clamp = |d: Duration| d.min(settings.max_wait);
        Ok(Timing {
            chunks: header_number::<u32>(headers, "x-mock-chunks")?.unwrap_or(settings.chunks),
            chunk_delay: clamp(ms("x-mock-chunk-delay-ms")?.unwrap_or(settings.chunk_delay)),
            headers_delay: clamp(ms("x-mock-headers-delay-ms")?.unwrap_or(settings.headers_delay)),
            first_delay: clamp(ms("x-mock-first-delay-ms")?.unwrap_or(default_first)),
            timestamps: header_number::<u8>(headers, "x-mock-timestamps")?.unwrap_or(0) != 0,
        })
    }

    /// The single wait of a non-streaming answer.
    fn reply_delay(&self, max_wait: Duration) -> Duration {
        self.headers_delay
            .saturating_add(self.first_delay)
            .min(max_wait)
    }
}

fn header_number<T: std::str::FromStr>(
    headers: &HeaderMap,
    name: &'static str,
) -> Result<Option<T>, Reply> {
    let Some(value) = headers.get(name) else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .and_then(|v| v.trim().parse::<T>().ok())
        .map(Some)
        .ok_or_else(|| {
            Reply::bad_request(
                &format!("Invalid {name} header: expected a non-negative integer."),
                None,
            )
        })
}

/// The part of a request body the mock looks at; everything else is ignored.
#[derive(Deserialize)]
struct ApiRequest {
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
    /// Embeddings and responses.
    #[serde(default)]
    input: Option<serde_json::Value>,
}

/// What only `/v1/responses` looks at besides [`ApiRequest`].
#[derive(Deserialize)]
struct ResponsesRequest {
    #[serde(default)]
    background: Option<bool>,
    #[serde(default)]
    store: Option<bool>,
    #[serde(default)]
    instructions: Option<String>,
}

#[derive(Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: Option<bool>,
}

#[derive(Clone, Copy)]
enum Route<'a> {
    Completion(Api),
    Responses,
    /// `/v1/responses/{id}` and below: the id as given, and what to do.
    Stored(&'a str, StoredAction),
    Embeddings,
    Models,
}

#[derive(Clone, Copy)]
enum StoredAction {
    /// `GET /v1/responses/{id}`
    Get,
    /// `POST /v1/responses/{id}/cancel`
    Cancel,
    /// `DELETE /v1/responses/{id}`
    Delete,
    /// `GET /v1/responses/{id}/input_items`
    InputItems,
}

fn route<'a>(method: &Method, path: &'a str) -> Option<Route<'a>> {
    let route = match (method, path) {
        (&Method::POST, "/v1/chat/completions") => Route::Completion(Api::Chat),
        (&Method::POST, "/v1/completions") => Route::Completion(Api::Legacy),
        (&Method::POST, "/v1/responses") => Route::Responses,
        (&Method::POST, "/v1/embeddings") => Route::Embeddings,
        (&Method::GET, "/v1/models") => Route::Models,
        _ => {
            let rest = path.strip_prefix("/v1/responses/")?;
            let (id, below) = match rest.split_once('/') {
                Some((id, below)) => (id, Some(below)),
                None => (rest, None),
            };
            let action = match (method, below) {
                (&Method::GET, None) => StoredAction::Get,
                (&Method::DELETE, None) => StoredAction::Delete,
                (&Method::POST, Some("cancel")) => StoredAction::Cancel,
                (&Method::GET, Some("input_items")) => StoredAction::InputItems,
                _ => return None,
            };
            if id.is_empty() {
                return None;
            }
            Route::Stored(id, action)
        }
    };
    Some(route)
}

fn plan(shared: &Shared, parts: &Parts, body: &Bytes, id: u64) -> Plan {
    match plan_or_error(shared, parts, body, id) {
        Ok(plan) => plan,
        Err(reply) => Plan::Reply(reply),
    }
}

fn parse_error(err: &serde_json::Error) -> Reply {
    Reply::bad_request(
        &format!(
            "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your HTTP library correctly. The OpenAI API expects a JSON payload.) Details: {err}"
        ),
        None,
    )
}

fn plan_or_error(shared: &Shared, parts: &Parts, body: &Bytes, id: u64) -> Result<Plan, Reply> {
    let settings = &shared.settings;
    let Some(route) = route(&parts.method, parts.uri.path()) else {
        return Err(invalid_url_reply(&parts.method, parts.uri.path()));
    };
    if let Route::Stored(response_id, action) = route {
        return plan_stored(shared, parts, response_id, action);
    }

    if let Route::Models = route {
        let timing = Timing::from_request(settings, &parts.headers, None)?;
        return Ok(Plan::Reply(Reply::after(
            timing.reply_delay(settings.max_wait),
            StatusCode::OK,
            models_json(),
        )));
    }

    let mut request: ApiRequest = serde_json::from_slice(body).map_err(|err| parse_error(&err))?;
    let Some(model) = request.model.take() else {
        return Err(Reply::bad_request(
            "you must provide a model parameter",
            Some("model"),
        ));
    };
    let fault = Fault::from_model(&model);
    let timing = Timing::from_request(settings, &parts.headers, fault)?;
    let prompt_tokens = prompt_tokens(body.len());
    let created = unix_now();

    match fault {
        Some(Fault::RateLimited) => {
            let mut reply = Reply::after(
                timing.headers_delay,
                StatusCode::TOO_MANY_REQUESTS,
                error_json(
                    "Rate limit reached (mock)",
                    "requests",
                    None,
                    Some("rate_limit_exceeded"),
                ),
            );
            reply.retry_after = Some(FAIL_429_RETRY_AFTER);
            return Ok(Plan::Reply(reply));
        }
        Some(Fault::ServerError) => {
            return Ok(Plan::Reply(Reply::after(
                timing.headers_delay,
                StatusCode::INTERNAL_SERVER_ERROR,
                error_json("The server had an error (mock)", "server_error", None, None),
            )));
        }
        Some(fault @ (Fault::AuthRejected | Fault::EchoKey)) => {
            let key = parts
                .headers
                .get(AUTHORIZATION)
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                .unwrap_or_default();
            let key = key.strip_prefix("Bearer ").unwrap_or(&key);
            let (status, body) = if fault == Fault::AuthRejected {
                (
                    StatusCode::UNAUTHORIZED,
                    error_json(
                        &format!("Incorrect API key provided: {key}. (mock)"),
                        "invalid_request_error",
                        None,
                        Some("invalid_api_key"),
                    ),
                )
            } else {
                (
                    StatusCode::BAD_REQUEST,
                    error_json(
                        &format!("The request was rejected; it carried the key {key}. (mock)"),
                        "invalid_request_error",
                        None,
                        None,
                    ),
                )
            };
            return Ok(Plan::Reply(Reply::after(
                timing.headers_delay,
                status,
                body,
            )));
        }
        Some(Fault::Hang) => {
            return Ok(Plan::Reply(Reply::after(
                settings.max_wait,
                StatusCode::GATEWAY_TIMEOUT,
                error_json(
                    "The mock upstream hung until max_wait (model \"hang\").",
                    "server_error",
                    None,
                    Some("mock_hang_elapsed"),
                ),
            )));
        }
        _ => {}
    }

    let api = match route {
        Route::Completion(api) => api,
        Route::Responses => {
            return plan_response(shared, body, request, &model, fault, &timing, id);
        }
        Route::Embeddings => {
            let count = embedding_inputs(request.input.as_ref())?;
            return Ok(Plan::Reply(Reply::after(
                timing.reply_delay(settings.max_wait),
                StatusCode::OK,
                embeddings_json(&model, count, prompt_tokens),
            )));
        }
        Route::Models | Route::Stored(..) => {
            return Err(invalid_url_reply(&parts.method, parts.uri.path()))
        }
    };

    if request.stream.unwrap_or(false) && fault != Some(Fault::NotEventStream) {
        let include_usage = request
            .stream_options
            .and_then(|o| o.include_usage)
            .unwrap_or(false);
        return Ok(Plan::Stream {
            spec: StreamPlan::Completions(StreamSpec {
                api,
                id,
                created,
                model,
                chunks: timing.chunks,
                first_delay: timing.first_delay,
                chunk_delay: timing.chunk_delay,
                fault,
                include_usage,
                prompt_tokens,
                timestamps: timing.timestamps,
            }),
            headers_delay: timing.headers_delay,
        });
    }

    // Stream-shaping faults (midstream, no-done, malformed, oversized) only
    // affect streams; a non-streaming request for them gets a normal answer.
    let content = expected_content(timing.chunks);
    let usage = Usage::new(prompt_tokens, u64::from(timing.chunks));
    let body = match api {
        Api::Chat => to_json(&ChatCompletion {
            id: format!("chatcmpl-mock{id}"),
            object: "chat.completion",
            created,
            model: &model,
            system_fingerprint: SYSTEM_FINGERPRINT,
            choices: [ChatChoice {
                index: 0,
                message: ChatMessage {
                    role: "assistant",
                    content,
                    refusal: None,
                },
                logprobs: None,
                finish_reason: "stop",
            }],
            usage,
        }),
        Api::Legacy => to_json(&TextCompletion {
            id: format!("cmpl-mock{id}"),
            object: "text_completion",
            created,
            model: &model,
            system_fingerprint: SYSTEM_FINGERPRINT,
            choices: [TextChoice {
                text: content,
                index: 0,
                logprobs: None,
                finish_reason: "stop",
            }],
            usage,
        }),
    };
    Ok(Plan::Reply(Reply::after(
        timing.reply_delay(settings.max_wait),
        StatusCode::OK,
        body,
    )))
}

/// `POST /v1/responses`, its model faults already handled: keeps the new
/// response (unless `store` is false), then streams it or answers with it.
fn plan_response(
    shared: &Shared,
    body: &Bytes,
    request: ApiRequest,
    model: &str,
    fault: Option<Fault>,
    timing: &Timing,
    id: u64,
) -> Result<Plan, Reply> {
    let extra: ResponsesRequest = serde_json::from_slice(body).map_err(|err| parse_error(&err))?;
    if timing.chunks > MAX_RESPONSE_CHUNKS {
        return Err(Reply::bad_request(
            "x-mock-chunks (or the mock's chunks setting) is over 100000, the most a /v1/responses answer may have.",
            None,
        ));
    }
    let input = input_text(request.input.as_ref()).map_err(|()| {
        Reply::bad_request(
            "Invalid type for 'input': expected a string or an array of input items.",
            Some("input"),
        )
    })?;
    let meta = Arc::new(ResponseMeta {
        id,
        created_at: unix_now(),
        model: cut(model, MAX_MODEL_BYTES).into(),
        instructions: extra
            .instructions
            .map(|text| cut(&text, MAX_TEXT_BYTES).into()),
        chunks: timing.chunks,
        prompt_tokens: prompt_tokens(body.len()),
        background: extra.background.unwrap_or(false),
    });
    if extra.store.unwrap_or(true) {
        shared.responses.insert(Stored {
            meta: Arc::clone(&meta),
            input: input.into(),
            cancelled: false,
        });
    }
    if request.stream.unwrap_or(false) && fault != Some(Fault::NotEventStream) {
        return Ok(Plan::Stream {
            spec: StreamPlan::Responses(ResponsesSpec {
                meta,
                first_delay: timing.first_delay,
                chunk_delay: timing.chunk_delay,
                fault,
                timestamps: timing.timestamps,
                starting_after: None,
                completes: true,
            }),
            headers_delay: timing.headers_delay,
        });
    }
    // As for chat, the stream-shaping faults leave a non-streaming answer alone.
    Ok(Plan::Reply(Reply::after(
        timing.reply_delay(shared.settings.max_wait),
        StatusCode::OK,
        responses::response_json(&meta, Status::Completed),
    )))
}

/// The routes under `/v1/responses/{id}`.
fn plan_stored(
    shared: &Shared,
    parts: &Parts,
    response_id: &str,
    action: StoredAction,
) -> Result<Plan, Reply> {
    let settings = &shared.settings;
    let not_found = || {
        // The id comes from the URL: quote a sane amount of it.
        let shown = cut(response_id, 64);
        let ellipsis = if shown.len() < response_id.len() {
            "..."
        } else {
            ""
        };
        Reply::error(
            StatusCode::NOT_FOUND,
            &format!("Response with id '{shown}{ellipsis}' not found."),
            "invalid_request_error",
            None,
            None,
        )
    };
    let key = parse_response_id(response_id).ok_or_else(not_found)?;
    let reply = |timing: &Timing, body: Bytes| {
        Ok(Plan::Reply(Reply::after(
            timing.reply_delay(settings.max_wait),
            StatusCode::OK,
            body,
        )))
    };
    match action {
        StoredAction::Get => {
            let (stream, starting_after) = retrieve_query(parts.uri.query())?;
            let stored = shared.responses.get(key).ok_or_else(not_found)?;
            // A `slow-first-token` response is as slow again.
            let fault = Fault::from_model(&stored.meta.model);
            let timing = Timing::from_request(settings, &parts.headers, fault)?;
            if stream {
                return Ok(Plan::Stream {
                    spec: StreamPlan::Responses(ResponsesSpec {
                        meta: stored.meta,
                        first_delay: timing.first_delay,
                        chunk_delay: timing.chunk_delay,
                        fault: None,
                        timestamps: timing.timestamps,
                        starting_after,
                        completes: !stored.cancelled,
                    }),
                    headers_delay: timing.headers_delay,
                });
            }
            let status = if stored.cancelled {
                Status::Cancelled
            } else {
                Status::Completed
            };
            reply(&timing, responses::response_json(&stored.meta, status))
        }
        StoredAction::InputItems => {
            let timing = Timing::from_request(settings, &parts.headers, None)?;
            let stored = shared.responses.get(key).ok_or_else(not_found)?;
            reply(
                &timing,
                responses::input_items_json(&stored.meta, &stored.input),
            )
        }
        StoredAction::Cancel => {
            let timing = Timing::from_request(settings, &parts.headers, None)?;
            match shared.responses.cancel(key) {
                Cancel::Cancelled(stored) => reply(
                    &timing,
                    responses::response_json(&stored.meta, Status::Cancelled),
                ),
                Cancel::NotBackground => Err(Reply::bad_request(
                    "Only responses created with background=true can be cancelled.",
                    None,
                )),
                Cancel::Unknown => Err(not_found()),
            }
        }
        StoredAction::Delete => {
            let timing = Timing::from_request(settings, &parts.headers, None)?;
            if !shared.responses.remove(key) {
                return Err(not_found());
            }
            reply(&timing, responses::deleted_json(key))
        }
    }
}

/// `stream` and `starting_after` of `GET /v1/responses/{id}`; the rest
/// (`include[]`, ...) is ignored.
fn retrieve_query(query: Option<&str>) -> Result<(bool, Option<u64>), Reply> {
    let mut stream = false;
    let mut starting_after = None;
    for pair in query.unwrap_or("").split('&') {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        match name {
            "stream" => stream = value == "true" || value == "1",
            "starting_after" => {
                let n = value.parse::<u64>().map_err(|_| {
                    Reply::bad_request(
                        "Invalid 'starting_after': expected a non-negative integer.",
                        Some("starting_after"),
                    )
                })?;
                starting_after = Some(n);
            }
            _ => {}
        }
    }
    Ok((stream, starting_after))
}

/// A stand-in for tokenization: one token per 4 bytes of request body, at
/// least 1. Deterministic, so tests can predict it.
fn prompt_tokens(body_len: usize) -> u64 {
    (body_len as u64).div_ceil(4).max(1)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// How many embeddings to return: one per string (or token array) in an
/// array `input`, otherwise one.
fn embedding_inputs(input: Option<&serde_json::Value>) -> Result<usize, Reply> {
    use serde_json::Value;
    match input {
        None | Some(Value::Null) => Err(Reply::bad_request(
            "you must provide an input parameter",
            Some("input"),
        )),
        Some(Value::Array(items)) => match items.first() {
            None => Err(Reply::bad_request(
                "'input' must not be empty",
                Some("input"),
            )),
            Some(Value::String(_) | Value::Array(_)) if items.len() > MAX_EMBEDDING_INPUTS => Err(
                Reply::bad_request("'input' has too many items (at most 2048)", Some("input")),
            ),
            Some(Value::String(_) | Value::Array(_)) => Ok(items.len()),
            // An array of numbers is a single tokenized input.
            Some(_) => Ok(1),
        },
        Some(_) => Ok(1),
    }
}

#[derive(Serialize)]
struct Usage {
    prompt_tokens: u64,
    completion_tokens: u64,
    total_tokens: u64,
}

impl Usage {
    fn new(prompt_tokens: u64, completion_tokens: u64) -> Usage {
        Usage {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens.saturating_add(completion_tokens),
        }
    }
}

#[derive(Serialize)]
struct ChatCompletion<'a> {
    id: String,
    object: &'static str,
    created: u64,
    model: &'a str,
    system_fingerprint: &'static str,
    choices: [ChatChoice; 1],
    usage: Usage,
}

#[derive(Serialize)]
struct ChatChoice {
    index: u32,
    message: ChatMessage,
    logprobs: Option<()>,
    finish_reason: &'static str,
}

#[derive(Serialize)]
struct ChatMessage {
    role: &'static str,
    content: String,
    refusal: Option<()>,
}

#[derive(Serialize)]
struct TextCompletion<'a> {
    id: String,
    object: &'static str,
    created: u64,
    model: &'a str,
    system_fingerprint: &'static str,
    choices: [TextChoice; 1],
    usage: Usage,
}

#[derive(Serialize)]
struct TextChoice {
    text: String,
    index: u32,
    logprobs: Option<()>,
    finish_reason: &'static str,
}

fn embeddings_json(model: &str, count: usize, prompt_tokens: u64) -> Bytes {
    #[derive(Serialize)]
    struct Embeddings<'a> {
        object: &'static str,
        data: Vec<Embedding>,
        model: &'a str,
        usage: EmbeddingUsage,
    }
    #[derive(Serialize)]
    struct Embedding {
        object: &'static str,
        index: usize,
        embedding: [f32; 8],
    }
    #[derive(Serialize)]
    struct EmbeddingUsage {
        prompt_tokens: u64,
        total_tokens: u64,
    }
    let data = (0..count)
        .map(|index| Embedding {
            object: "embedding",
            index,
            // Small, fixed, distinct per position: in [-0.05, 0.049].
            embedding: std::array::from_fn(|i| {
                let step = (index * 8 + i) * 37 % 100;
                step as f32 / 1000.0 - 0.05
            }),
        })
        .collect();
    to_json(&Embeddings {
        object: "list",
        data,
        model,
        usage: EmbeddingUsage {
            prompt_tokens,
            total_tokens: prompt_tokens,
        },
    })
}

fn models_json() -> Bytes {
    #[derive(Serialize)]
    struct Models {
        object: &'static str,
        data: Vec<Model>,
    }
    #[derive(Serialize)]
    struct Model {
        id: &'static str,
        object: &'static str,
        created: u64,
        owned_by: &'static str,
    }
    let ids = std::iter::once(DEFAULT_MODEL).chain(Fault::ALL.into_iter().map(Fault::model));
    to_json(&Models {
        object: "list",
        data: ids
            .map(|id| Model {
                id,
                object: "model",
                created: MODELS_CREATED,
                owned_by: "tidegate-mock",
            })
            .collect(),
    })
}

fn error_json(
    message: &str,
    kind: &'static str,
    param: Option<&'static str>,
    code: Option<&'static str>,
) -> Bytes {
    #[derive(Serialize)]
    struct ErrorBody<'a> {
        error: ErrorDetail<'a>,
    }
    #[derive(Serialize)]
    struct ErrorDetail<'a> {
        message: &'a str,
        #[serde(rename = "type")]
        kind: &'static str,
        param: Option<&'static str>,
        code: Option<&'static str>,
    }
    to_json(&ErrorBody {
        error: ErrorDetail {
            message,
            kind,
            param,
            code,
        },
    })
}

fn to_json<T: Serialize>(value: &T) -> Bytes {
    match serde_json::to_vec(value) {
        Ok(json) => Bytes::from(json),
        Err(err) => {
            // Unreachable for the plain structs above; degrade, don't panic.
            tracing::error!(error = %err, "mock upstream: failed to serialize a response");
            Bytes::from_static(
                br#"{"error":{"message":"mock upstream failed to serialize its response","type":"server_error","param":null,"code":null}}"#,
            )
        }
    }
}

fn json_response(status: StatusCode, body: Bytes) -> Response<MockBody> {
    let mut response = Response::new(MockBody::full(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn error_response(
    status: StatusCode,
    message: &str,
    kind: &'static str,
    param: Option<&'static str>,
    code: Option<&'static str>,
) -> Response<MockBody> {
    json_response(status, error_json(message, kind, param, code))
}

fn invalid_url_message(method: &Method, path: &str) -> String {
    format!("Invalid URL ({method} {path})")
}

fn invalid_url(method: &Method, path: &str) -> Response<MockBody> {
    error_response(
        StatusCode::NOT_FOUND,
        &invalid_url_message(method, path),
        "invalid_request_error",
        None,
        None,
    )
}

fn invalid_url_reply(method: &Method, path: &str) -> Reply {
    Reply::error(
        StatusCode::NOT_FOUND,
        &invalid_url_message(method, path),
        "invalid_request_error",
        None,
        None,
    )
}

/// The headers OpenAI puts on every API response.
fn add_v1_headers(headers: &mut HeaderMap, id: u64, started: Instant) {
    const fn name(n: &'static str) -> HeaderName {
        HeaderName::from_static(n)
    }
    if let Ok(value) = HeaderValue::try_from(format!("req_mock_{id}")) {
        headers.insert(name("x-request-id"), value);
    }
    headers.insert(
        name("openai-version"),
        HeaderValue::from_static("2020-10-01"),
    );
    let elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    headers.insert(name("openai-processing-ms"), HeaderValue::from(elapsed_ms));
    headers.insert(
        name("x-ratelimit-limit-requests"),
        HeaderValue::from_static("10000"),
    );
    headers.insert(
        name("x-ratelimit-remaining-requests"),
        HeaderValue::from_static("9999"),
    );
    headers.insert(
        name("openai-organization"),
        HeaderValue::from_static("tidegate-mock"),
    );
}
