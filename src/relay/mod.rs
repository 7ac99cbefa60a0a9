//! The OpenAI-compatible API routes: validate the request, forward it byte for byte, and relay
//! the answer — as an SSE stream ([`stream::SseRelay`]) or as a plain body ([`body::Passthrough`]).

pub mod attempts;
pub mod body;
pub mod deadline;
pub mod grammar;
pub mod lifetime;
pub mod resume;
pub mod stream;

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Incoming;
use serde::de::{self, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

use self::attempts::{Answered, Outgoing};
use self::body::{Passthrough, ResponseBody};
use self::deadline::Deadlines;
use self::grammar::Grammar;
use self::lifetime::{Outcome, StreamLifetime};
use self::resume::{ResumeRequest, ResumeStore, RESUME_TOKEN_HEADER};
use self::stream::{SseRelay, StreamAnswer, MAX_UPSTREAM_ERROR_BODY};
use crate::admission::Admission;
use crate::client_ip::ClientIp;
use crate::config::Limits;
use crate::connection::ConnectionInfo;
use crate::error::GatewayError;
use crate::metrics::Metrics;
use crate::registry::{EndReason, NewStream, Registry};
use crate::request_id;
use crate::upstream::backends::Backends;
use crate::upstream::body::UpstreamBody;
use crate::upstream::{rejects_our_credentials, scrub_key, Upstream};

/// What one worker thread's API requests need: small handles, each owned by its own concern.
pub struct Relay {
    /// Where every stream is registered (and found by the heartbeat scheduler and admin API).
    pub registry: Arc<Registry>,
    /// Rate limits and stream caps, checked before a request costs anything.
    pub admission: Arc<Admission>,
    /// Which peers' `X-Forwarded-For` is believed.
    pub client_ip: ClientIp,
    /// What all workers share about the upstreams: routes, breakers, in-flight counts, the
    /// retry budget.
    pub backends: Arc<Backends>,
    /// This worker's clients, one per upstream in the order of `backends`: their connections
    /// are driven by this worker's runtime.
    pub upstreams: Vec<Upstream>,
    /// Body, event, time and size limits.
    pub limits: Limits,
    /// What is exported on `/metrics`: each stream's end, each request's answer, each attempt.
    pub metrics: Arc<Metrics>,
    /// With `[resume]` on: the resumable streams, shared by all workers (a client may resume on
    /// any connection).
    pub resume: Option<Arc<ResumeStore>>,
}

/// The upstream API endpoints the gateway relays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    ChatCompletions,
    Completions,
    Embeddings,
    Models,
    /// `POST /v1/responses`: create a response (the Responses API).
    Responses,
    /// `POST /v1/responses/input_tokens`: count a request's input tokens (never a stream).
    ResponsesInputTokens,
    /// `POST /v1/responses/compact`: compact a conversation (never a stream).
    ResponsesCompact,
    /// `/v1/responses/{id}...`: a stored response, retrieved (a stream with `stream=true`) or
    /// controlled.
    StoredResponse(ResponseAction),
}

/// What a request does to a stored response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseAction {
    /// `GET /v1/responses/{id}`: the response, or with `stream=true` (and `starting_after`)
    /// its events, for a background response.
    Retrieve,
    /// `POST /v1/responses/{id}/cancel`.
    Cancel,
    /// `DELETE /v1/responses/{id}`.
    Delete,
    /// `GET /v1/responses/{id}/input_items`.
    InputItems,
}

/// What a request's path and method route to ([`Endpoint::of`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Routed<'p> {
    /// An endpoint, with a stored response's id.
    Endpoint(Endpoint, Option<&'p str>),
    /// A known path, another method: 405 with these in `Allow`.
    WrongMethod { allow: &'static str },
    /// `/v1/responses/{id}...` with something that cannot be an id: 400.
    BadResponseId,
}

/// Whether `id` can be a response id in an upstream path: 1 to [`MAX_RESPONSE_ID_BYTES`]
/// letters, digits, `_` and `-` (OpenAI's are `resp_` and hex; vLLM's `resp_` and a UUID's
/// hex). Nothing else reaches the upstream's path: no `/`, `.`, `%` or `?`.
fn is_response_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_RESPONSE_ID_BYTES
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Where the Responses API lives.
pub const RESPONSES_PATH: &str = "/v1/responses";

/// Longest response id taken in a path (OpenAI's are about 50 characters).
pub const MAX_RESPONSE_ID_BYTES: usize = 256;

impl Endpoint {
    /// What an API path and method name: `None` for a path that is not the API's (the
    /// caller answers 404).
    pub fn of<'p>(method: &Method, path: &'p str) -> Option<Routed<'p>> {
        let fixed = match path {
            "/v1/chat/completions" => Some(Endpoint::ChatCompletions),
            "/v1/completions" => Some(Endpoint::Completions),
            "/v1/embeddings" => Some(Endpoint::Embeddings),
            "/v1/models" => Some(Endpoint::Models),
            RESPONSES_PATH => Some(Endpoint::Responses),
            _ => None,
        };
        if let Some(endpoint) = fixed {
            if method != endpoint.method() {
                return Some(Routed::WrongMethod {
                    allow: endpoint.method().as_str(),
                });
            }
            return Some(Routed::Endpoint(endpoint, None));
        }
        let rest = path.strip_prefix(RESPONSES_PATH)?.strip_prefix('/')?;
        // Two POST routes sit where an id would: they are theirs for a POST (no response id
        // takes a POST without an action after it), ids otherwise.
        if method == Method::POST {
            match rest {
                "input_tokens" => {
                    return Some(Routed::Endpoint(Endpoint::ResponsesInputTokens, None))
                }
                "compact" => return Some(Routed::Endpoint(Endpoint::ResponsesCompact, None)),
                _ => {}
            }
        }
        let (id, action, allow) = match rest.split_once('/') {
            None => {
                let action = match *method {
                    Method::GET => Some(ResponseAction::Retrieve),
                    Method::DELETE => Some(ResponseAction::Delete),
                    _ => None,
                };
                (rest, action, "GET, DELETE")
            }
            Some((id, "cancel")) => {
                let action = (method == Method::POST).then_some(ResponseAction::Cancel);
                (id, action, "POST")
            }
            Some((id, "input_items")) => {
                let action = (method == Method::GET).then_some(ResponseAction::InputItems);
                (id, action, "GET")
            }
            Some(_) => return None,
        };
        if !is_response_id(id) {
            return Some(Routed::BadResponseId);
        }
        Some(match action {
            Some(action) => Routed::Endpoint(Endpoint::StoredResponse(action), Some(id)),
            None => Routed::WrongMethod { allow },
        })
    }

    /// The endpoint's `route` label in the metrics (one of [`crate::metrics::ROUTES`]).
    pub fn metric_route(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "chat_completions",
            Endpoint::Completions => "completions",
            Endpoint::Embeddings => "embeddings",
            Endpoint::Models => "models",
            Endpoint::Responses => "responses",
            Endpoint::ResponsesInputTokens => "responses_input_tokens",
            Endpoint::ResponsesCompact => "responses_compact",
            Endpoint::StoredResponse(_) => "responses_stored",
        }
    }

    /// Path below the upstream base URL (which ends in `/v1` for OpenAI); `id` is a stored
    /// response's.
    pub fn upstream_suffix(self, id: Option<&str>) -> Cow<'static, str> {
        let id = id.unwrap_or_default();
        match self {
            Endpoint::ChatCompletions => "/chat/completions".into(),
            Endpoint::Completions => "/completions".into(),
            Endpoint::Embeddings => "/embeddings".into(),
            Endpoint::Models => "/models".into(),
            Endpoint::Responses => "/responses".into(),
            Endpoint::ResponsesInputTokens => "/responses/input_tokens".into(),
            Endpoint::ResponsesCompact => "/responses/compact".into(),
            // Only a stored response's path is built (the others borrow a constant).
            Endpoint::StoredResponse(ResponseAction::Retrieve | ResponseAction::Delete) => {
                format!("/responses/{id}").into()
            }
            Endpoint::StoredResponse(ResponseAction::Cancel) => {
                format!("/responses/{id}/cancel").into()
            }
            Endpoint::StoredResponse(ResponseAction::InputItems) => {
                format!("/responses/{id}/input_items").into()
            }
        }
    }

    pub fn method(self) -> &'static Method {
        match self {
            Endpoint::Models
            | Endpoint::StoredResponse(ResponseAction::Retrieve | ResponseAction::InputItems) => {
                &Method::GET
            }
            Endpoint::StoredResponse(ResponseAction::Delete) => &Method::DELETE,
            _ => &Method::POST,
        }
    }

    /// The grammar of the endpoint's streams.
    pub fn grammar(self) -> Grammar {
        match self {
            Endpoint::Responses
            | Endpoint::ResponsesInputTokens
            | Endpoint::ResponsesCompact
            | Endpoint::StoredResponse(_) => Grammar::Responses,
            _ => Grammar::Chunks,
        }
    }

    /// Whether the request body is JSON to check ([`Endpoint::validate`]); the others' bodies
    /// (none, or a cancel's) pass as they are.
    fn has_json_body(self) -> bool {
        matches!(
            self,
            Endpoint::ChatCompletions
                | Endpoint::Completions
                | Endpoint::Embeddings
                | Endpoint::Responses
                | Endpoint::ResponsesInputTokens
                | Endpoint::ResponsesCompact
        )
    }

    /// Checks the body enough to reject what the upstream would reject anyway, cheaply and with
    /// a clear error; returns whether the client asked for a stream, and the model. The body is
    /// not rewritten.
    fn validate(self, body: &[u8]) -> Result<Validated, GatewayError> {
        let required: &[&'static str] = match self {
            Endpoint::ChatCompletions => &["model", "messages"],
            Endpoint::Completions => &["model", "prompt"],
            Endpoint::Embeddings => &["model", "input"],
            // `input` may be absent (a `previous_response_id` or a prompt template instead);
            // the model routes the request.
            Endpoint::Responses | Endpoint::ResponsesCompact => &["model"],
            // The model is optional here (counted against a stored response, say).
            Endpoint::ResponsesInputTokens => &[],
            Endpoint::Models | Endpoint::StoredResponse(_) => return Ok(Validated::default()),
        };
        // serde would happily read a struct from a JSON array; the API takes objects only.
        let first = body.iter().find(|b| !b.is_ascii_whitespace());
        if first != Some(&b'{') {
            return Err(GatewayError::InvalidJson(
                "the body must be a JSON object".into(),
            ));
        }
        let probe: RequestProbe =
            serde_json::from_slice(body).map_err(|e| GatewayError::InvalidJson(e.to_string()))?;
        for &field in required {
            let shape = match field {
                "model" => &probe.model,
                "messages" => &probe.messages,
                "prompt" => &probe.prompt,
                _ => &probe.input,
            };
            match (field, shape) {
                (_, None) => return Err(GatewayError::MissingParameter(field)),
                ("model", Some(Shape::String(s))) if s.is_empty() => {
                    return Err(GatewayError::MissingParameter("model"))
                }
                ("model", Some(Shape::String(_))) => {}
                ("model", Some(_)) => {
                    return Err(GatewayError::InvalidParameter {
                        param: "model",
                        expected: "a string".into(),
                    })
                }
                ("messages", Some(Shape::Array)) => {}
                ("messages", Some(_)) => {
                    return Err(GatewayError::InvalidParameter {
                        param: "messages",
                        expected: "an array".into(),
                    })
                }
                _ => {}
            }
        }
        let stream = match probe.stream {
            None => false,
            Some(Shape::Bool(b)) => b,
            Some(_) => {
                return Err(GatewayError::InvalidParameter {
                    param: "stream",
                    expected: "a boolean".into(),
                })
            }
        };
        let model = match probe.model {
            Some(Shape::String(model)) => model,
            _ => String::new(),
        };
        Ok(Validated { stream, model })
    }
}

/// What the gateway needs to know of a valid request body.
#[derive(Debug, Default)]
struct Validated {
    /// The client asked for an event stream.
    stream: bool,
    model: String,
}

/// The few request fields the gateway looks at; all others are skipped without being parsed
/// into values. JSON `null` reads as absent, as the OpenAI API treats it.
#[derive(Deserialize)]
struct RequestProbe {
    model: Option<Shape>,
    messages: Option<Shape>,
    prompt: Option<Shape>,
    input: Option<Shape>,
    stream: Option<Shape>,
}

/// The type of a JSON value, keeping only what validation needs (a string's text, a bool).
#[derive(Debug)]
enum Shape {
    Bool(bool),
    String(String),
    Array,
    Other,
}

impl<'de> Deserialize<'de> for Shape {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Shape, D::Error> {
        struct ShapeVisitor;
        impl<'de> Visitor<'de> for ShapeVisitor {
            type Value = Shape;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_bool<E>(self, v: bool) -> Result<Shape, E> {
                Ok(Shape::Bool(v))
            }
            fn visit_i64<E>(self, _: i64) -> Result<Shape, E> {
                Ok(Shape::Other)
            }
            fn visit_u64<E>(self, _: u64) -> Result<Shape, E> {
                Ok(Shape::Other)
            }
            fn visit_f64<E>(self, _: f64) -> Result<Shape, E> {
                Ok(Shape::Other)
            }
            fn visit_str<E>(self, v: &str) -> Result<Shape, E> {
                Ok(Shape::String(v.to_owned()))
            }
            fn visit_unit<E>(self) -> Result<Shape, E> {
                Ok(Shape::Other)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Shape, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Shape::Array)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Shape, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Shape::Other)
            }
        }
        d.deserialize_any(ShapeVisitor)
    }
}

/// Reads the whole request body under the size and time limits. A declared Content-Length
/// over the limit is refused before reading a byte; otherwise reading stops at the limit.
async fn read_body(
    body: Incoming,
    headers: &HeaderMap,
    limits: &Limits,
) -> Result<Bytes, GatewayError> {
    let limit = limits.max_body_bytes;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit) {
        return Err(GatewayError::BodyTooLarge { limit });
    }
    let limited = Limited::new(body, usize::try_from(limit).unwrap_or(usize::MAX));
    match tokio::time::timeout(limits.body_read_timeout, limited.collect()).await {
        Err(_) => Err(GatewayError::BodyReadTimeout(limits.body_read_timeout)),
        Ok(Err(e)) if e.is::<LengthLimitError>() => Err(GatewayError::BodyTooLarge { limit }),
        Ok(Err(e)) => Err(GatewayError::BodyRead(e.to_string())),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
    }
}

/// Whether the Content-Type's media type is `mime` (parameters such as `charset` and letter
/// case ignored).
pub(crate) fn has_content_type(headers: &HeaderMap, mime: &str) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|found| found.trim().eq_ignore_ascii_case(mime))
}

const APPLICATION_JSON: &str = "application/json";
const TEXT_EVENT_STREAM: &str = "text/event-stream";

/// Upstream response headers that clients and SDKs read (request ids, rate limits, retry
/// advice), copied to the client. Nothing else crosses, so hop-by-hop and upstream-internal
/// headers stay behind.
fn copy_upstream_headers(from: &HeaderMap, to: &mut HeaderMap, our_request_id: &HeaderValue) {
    static UPSTREAM_REQUEST_ID: HeaderName = HeaderName::from_static("x-upstream-request-id");
    for (name, value) in from {
        let n = name.as_str();
        if n == request_id::HEADER {
            if value != our_request_id {
                to.append(UPSTREAM_REQUEST_ID.clone(), value.clone());
            }
        } else if n.starts_with("openai-")
            || n.starts_with("x-ratelimit-")
            || n == "retry-after"
            || n == "retry-after-ms"
            || n == "x-should-retry"
        {
            to.append(name.clone(), value.clone());
        }
    }
}

/// The response header that names a stream in the registry (and in the admin API).
pub const STREAM_ID_HEADER: &str = "x-tidegate-stream-id";

/// The response header that names the upstream that answered (or was asked last).
pub const UPSTREAM_HEADER: &str = "x-tidegate-upstream";

/// Handles one API request end to end; the caller turns an error into its JSON response.
pub async fn handle(
    endpoint: Endpoint,
    response_id: Option<&str>,
    request: Request<Incoming>,
    relay: &Relay,
    peer: SocketAddr,
    request_id: &HeaderValue,
) -> Result<Response<ResponseBody>, GatewayError> {
    let Relay {
        registry,
        admission,
        client_ip: _,
        backends,
        upstreams,
        limits,
        metrics,
        resume,
    } = relay;
    // Before the body is read: a refused request costs a lookup and its answer. The address's
    // rate first (cheapest), then the API key (a hash and a lookup) and its rate.
    admission.check_rate(peer.ip())?;
    let key = admission.authenticate(request.headers(), peer.ip())?;
    let (parts, body) = request.into_parts();
    let (payload, validated) = if endpoint.has_json_body() {
        if !has_content_type(&parts.headers, APPLICATION_JSON) {
            return Err(GatewayError::UnsupportedMediaType);
        }
        let payload = read_body(body, &parts.headers, limits).await?;
        let mut validated = endpoint.validate(&payload)?;
        // These answer with JSON, whatever the body says.
        validated.stream &= !matches!(
            endpoint,
            Endpoint::ResponsesInputTokens | Endpoint::ResponsesCompact
        );
        admission.check_model(key.as_deref(), &validated.model, peer.ip())?;
        (payload, validated)
    } else if endpoint.method() == Method::POST {
        // A cancel: its body (none, or `{}`) passes as it is, under the same limits.
        (
            read_body(body, &parts.headers, limits).await?,
            Validated::default(),
        )
    } else {
        let stream = endpoint == Endpoint::StoredResponse(ResponseAction::Retrieve)
            && query_asks_for_stream(parts.uri.query());
        let validated = Validated {
            stream,
            ..Validated::default()
        };
        (Bytes::new(), validated)
    };
    // With routes, the model list is theirs; without, the upstream's. A key with a model
    // allowlist sees only the models it may use.
    let allowed = |model: &str| key.as_deref().is_none_or(|k| k.allows(model));
    if endpoint == Endpoint::Models {
        if let Some(list) = backends.models_json(allowed) {
            return Ok(crate::response::json(StatusCode::OK, list));
        }
    }
    // A stored response lives on the upstream that made it: a request for one, or a new
    // response that continues one (`previous_response_id`), goes to the upstream the client
    // names, as `x-tidegate-upstream` named it on the answer that made it.
    let pin = match endpoint {
        Endpoint::Responses
        | Endpoint::ResponsesInputTokens
        | Endpoint::ResponsesCompact
        | Endpoint::StoredResponse(_) => pinned_upstream(&parts.headers, backends)?,
        _ => None,
    };
    let names_no_model = matches!(endpoint, Endpoint::StoredResponse(_))
        || (endpoint == Endpoint::ResponsesInputTokens && validated.model.is_empty());
    let members = if names_no_model {
        backends.all()
    } else {
        let model = (endpoint != Endpoint::Models).then_some(validated.model.as_str());
        match backends.members(model) {
            Some(members) => members,
            None => return Err(GatewayError::ModelNotFound(validated.model)),
        }
    };
    let members = match pin {
        None => members,
        Some(index) => match members.iter().position(|m| m.index == index) {
            Some(at) => &members[at..=at],
            None => {
                return Err(GatewayError::InvalidParameter {
                    param: UPSTREAM_HEADER,
                    expected: "an upstream that serves the request's model".into(),
                })
            }
        },
    };
    let suffix = endpoint.upstream_suffix(response_id);
    let outgoing = Outgoing {
        method: endpoint.method(),
        suffix: &suffix,
        query: parts.uri.query(),
        headers: &parts.headers,
        request_id,
        body: payload,
    };
    if !validated.stream {
        return match attempts::send(relay, outgoing, members, None).await {
            Answered::Response { response, upstream } => {
                relay_plain(response, &upstreams[upstream], limits, request_id).await
            }
            Answered::Failed { error, .. } => Err(error),
            // Only a stream is answered early.
            Answered::Early { .. } => Err(GatewayError::UpstreamFailed("no answer".into())),
        };
    }

    // The stream's slot, before the upstream is asked.
    let slot = admission.take_stream_slot(peer.ip(), key.as_deref())?;
    // Registered before the upstream is asked, so a client that leaves while we wait is
    // recorded, and the stream is visible (and endable) from the start.
    let entry = registry.register(NewStream {
        client_ip: peer.ip(),
        api_key: key.as_ref().map(|k| k.name().clone()),
        model: &validated.model,
        request_id: request_id.to_str().unwrap_or_default(),
        connection: parts.extensions.get::<ConnectionInfo>().cloned(),
    });
    tracing::Span::current().record("stream_id", entry.handle().id());
    let mut lifetime = StreamLifetime::begin_holding(entry, slot, metrics.clone())
        .with_route(endpoint.metric_route());
    let stream_id = HeaderValue::from_str(lifetime.handle().id()).ok();

    // Wait for an upstream's headers (retrying while nothing was sent), unless the stream is
    // signalled first: a heartbeat due (the wait has outlasted the heartbeat interval: commit
    // early so idle proxies see bytes) or an end request. No timer of our own: the shared
    // scheduler does the waking.
    let handle = lifetime.handle().clone();
    let answered = attempts::send(relay, outgoing, members, Some(&handle)).await;
    let (response, upstream) = match answered {
        Answered::Response { response, upstream } => (response, &upstreams[upstream]),
        Answered::Failed { error, .. } => {
            lifetime.finish(Outcome::Failed(error.code()));
            return Err(error);
        }
        Answered::Early { .. } if handle.end_reason() == Some(EndReason::Shutdown) => {
            // Nothing sent yet: a 503 lets the client's SDK retry on another instance.
            lifetime.finish(Outcome::Failed(GatewayError::NotReady.code()));
            return Err(GatewayError::NotReady);
        }
        Answered::Early { pending, upstream } => {
            tracing::debug!("upstream has not answered yet: starting the stream early");
            let upstream = &upstreams[upstream];
            let deadlines = Deadlines::new(upstream.idle_timeout(), limits.max_stream_duration);
            let relay = SseRelay::awaiting(
                pending,
                upstream.key().cloned(),
                limits.max_event_bytes,
                deadlines,
                lifetime,
            )
            .with_grammar(endpoint.grammar());
            let mut response = sse_response(resume.as_ref(), relay, stream_id);
            set_upstream_header(response.headers_mut(), upstream);
            return Ok(response);
        }
    };

    let (up_parts, up_body) = response.into_parts();
    let failed = match StreamAnswer::of(up_parts.status, &up_parts.headers) {
        StreamAnswer::EventStream => None,
        StreamAnswer::CredentialsRejected => Some(GatewayError::UpstreamAuthFailed),
        StreamAnswer::ErrorStatus => Some(GatewayError::UpstreamStatus(up_parts.status.as_u16())),
        StreamAnswer::NotEventStream => Some(GatewayError::UpstreamNotEventStream),
    };
    if let Some(error) = failed {
        // Nothing has been sent yet, so the answer is relayed as it is (scrubbed): an SDK
        // raises on an error status, and reads a JSON completion from an upstream that does not
        // stream. The stream's life ends here.
        lifetime.finish(Outcome::Failed(error.code()));
        return relay_plain(
            Response::from_parts(up_parts, up_body),
            upstream,
            limits,
            request_id,
        )
        .await;
    }
    let deadlines = Deadlines::new(upstream.idle_timeout(), limits.max_stream_duration);
    let relay = SseRelay::new(up_body, limits.max_event_bytes, deadlines, lifetime)
        .with_grammar(endpoint.grammar());
    let mut response = sse_response(resume.as_ref(), relay, stream_id);
    *response.status_mut() = up_parts.status;
    copy_upstream_headers(&up_parts.headers, response.headers_mut(), request_id);
    set_upstream_header(response.headers_mut(), upstream);
    Ok(response)
}

/// Whether a retrieval's query asks for the response's events: `stream=true`.
fn query_asks_for_stream(query: Option<&str>) -> bool {
    // Bounded: the query is part of the request head, itself limited.
    form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .any(|(name, value)| name == "stream" && value.eq_ignore_ascii_case("true"))
}

/// The index of the upstream a request names in `x-tidegate-upstream`, if it names one. A name
/// that is not one of ours is the client's mistake, told as such.
fn pinned_upstream(
    headers: &HeaderMap,
    backends: &Backends,
) -> Result<Option<usize>, GatewayError> {
    let Some(name) = headers.get(UPSTREAM_HEADER) else {
        return Ok(None);
    };
    let index = name
        .to_str()
        .ok()
        .and_then(|name| backends.index_of(name.trim()));
    match index {
        Some(index) => Ok(Some(index)),
        None => Err(GatewayError::InvalidParameter {
            param: UPSTREAM_HEADER,
            expected: "the name of one of the gateway's upstreams, as the x-tidegate-upstream \
                       response header gave it"
                .into(),
        }),
    }
}

/// A stream's answer with its event-stream headers: resumable when `[resume]` is on (with its
/// token), else the relay itself, byte for byte.
fn sse_response(
    resume: Option<&Arc<ResumeStore>>,
    relay: SseRelay,
    stream_id: Option<HeaderValue>,
) -> Response<ResponseBody> {
    let begun = match resume {
        Some(store) => store.begin(Box::new(relay)),
        None => Err(Box::new(relay)),
    };
    let (body, resumable) = match begun {
        Ok((stream, body)) => (ResponseBody::Resumable(Box::new(body)), Some(stream)),
        Err(relay) => (ResponseBody::Sse(relay), None),
    };
    let mut response = Response::new(body);
    let token = resumable.as_ref().map(|stream| stream.token());
    set_sse_headers(response.headers_mut(), stream_id, token);
    response
}

/// `GET /v1/streams/{id}`: picks a resumable stream back up. The token and the last event id
/// the client received come as headers (`x-tidegate-resume-token`, `Last-Event-ID`) or, since
/// `EventSource` can set no headers, as query parameters (`token`, `last_event_id`); the
/// `Last-Event-ID` header wins, as an `EventSource` reconnecting to the same URL sends the
/// newer id there. With API keys on, only the key that opened the stream may resume it.
pub async fn resume(
    stream_id: &str,
    request: Request<Incoming>,
    relay: &Relay,
    peer: SocketAddr,
) -> Result<Response<ResponseBody>, GatewayError> {
    relay.admission.check_rate(peer.ip())?;
    let key = relay.admission.authenticate(request.headers(), peer.ip())?;
    let Some(store) = &relay.resume else {
        return Err(GatewayError::ResumeNotFound(
            stream_id.chars().take(100).collect(),
        ));
    };
    let headers = request.headers();
    let mut token = headers
        .get(RESUME_TOKEN_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let mut last_event_id = headers
        .get(LAST_EVENT_ID)
        .map(|v| v.to_str().map(str::to_owned).unwrap_or_default());
    // Bounded: the query is part of the request head, itself limited.
    for (name, value) in form_urlencoded::parse(request.uri().query().unwrap_or("").as_bytes()) {
        match &*name {
            "token" if token.is_none() => token = Some(value.into_owned()),
            "last_event_id" if last_event_id.is_none() => last_event_id = Some(value.into_owned()),
            _ => {}
        }
    }
    let last_event_id = match last_event_id.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(text) => Some(
            text.parse::<u64>()
                .map_err(|_| GatewayError::InvalidParameter {
                    param: "last_event_id",
                    expected: "a whole number: the id of the last event received".into(),
                })?,
        ),
    };
    let (stream, body) = store.resume(
        ResumeRequest {
            stream_id,
            token: token.as_deref(),
            last_event_id,
            api_key: key.as_ref().map(|k| &**k.name()),
        },
        request.extensions().get::<ConnectionInfo>().cloned(),
    )?;
    tracing::Span::current().record("stream_id", stream.id());
    tracing::info!(last_event_id, "stream resumed");
    let mut response = Response::new(ResponseBody::Resumable(Box::new(body)));
    set_sse_headers(
        response.headers_mut(),
        HeaderValue::from_str(stream.id()).ok(),
        Some(stream.token()),
    );
    Ok(response)
}

/// The header an `EventSource` sends when it reconnects: the last event id it received.
const LAST_EVENT_ID: &str = "last-event-id";

/// Names the upstream in the response (`x-tidegate-upstream`).
fn set_upstream_header(headers: &mut HeaderMap, upstream: &Upstream) {
    if let Some(name) = upstream.name_header() {
        headers.insert(UPSTREAM_HEADER, name.clone());
    }
}

/// The headers of every event stream we send, with a resumable stream's token.
fn set_sse_headers(
    headers: &mut HeaderMap,
    stream_id: Option<HeaderValue>,
    resume_token: Option<&str>,
) {
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream; charset=utf-8"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    if let Some(id) = stream_id {
        headers.insert(STREAM_ID_HEADER, id);
    }
    if let Some(token) = resume_token.and_then(|t| HeaderValue::from_str(t).ok()) {
        headers.insert(RESUME_TOKEN_HEADER, token);
    }
}

/// A non-streaming upstream answer (or a failed answer to a stream request), relayed with its
/// status and client-facing headers. A 2xx body passes through as it arrives, under the idle
/// and duration limits. An error body is read first (at most [`MAX_UPSTREAM_ERROR_BODY`],
/// within the idle timeout) and scrubbed of the gateway's key, which upstreams echo; one that
/// cannot be read that way is replaced by our own error with the same status. A 401 or 403
/// concerns the gateway's own credentials and is not relayed at all: `upstream_auth_failed`.
async fn relay_plain(
    response: Response<UpstreamBody>,
    upstream: &Upstream,
    limits: &Limits,
    request_id: &HeaderValue,
) -> Result<Response<ResponseBody>, GatewayError> {
    let (up_parts, up_body) = response.into_parts();
    let status = up_parts.status;
    if rejects_our_credentials(status) {
        log_rejected_credentials(status, upstream.name());
        return Err(GatewayError::UpstreamAuthFailed);
    }
    // The upstream's content headers that describe the body sent: all of them for a body passed
    // through, only its type for a body read and scrubbed, none for our own.
    const PASSED_THROUGH: &[HeaderName] = &[
        header::CONTENT_TYPE,
        header::CONTENT_LENGTH,
        header::CONTENT_ENCODING,
    ];
    let (body, content_headers) = if status.is_success() {
        let deadlines = Deadlines::new(upstream.idle_timeout(), limits.max_stream_duration);
        let body = ResponseBody::Passthrough(Passthrough::new(up_body, deadlines));
        (body, PASSED_THROUGH)
    } else {
        match read_error_body(up_body, &up_parts.headers, limits).await {
            Some(body) => {
                let scrubbed = scrub_key(body, upstream.key().map(|k| &**k));
                (ResponseBody::from(scrubbed), &PASSED_THROUGH[..1])
            }
            None => {
                let ours = GatewayError::UpstreamStatus(status.as_u16()).to_json();
                (ResponseBody::from(ours), &[][..])
            }
        }
    };
    let mut response = Response::new(body);
    *response.status_mut() = status;
    let headers = response.headers_mut();
    copy_upstream_headers(&up_parts.headers, headers, request_id);
    set_upstream_header(headers, upstream);
    for name in content_headers {
        if let Some(v) = up_parts.headers.get(name) {
            headers.insert(name, v.clone());
        }
    }
    if !headers.contains_key(header::CONTENT_TYPE) {
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(APPLICATION_JSON),
        );
    }
    Ok(response)
}

/// An upstream error body, whole, if it can be scrubbed: not compressed (the gateway never asks
/// for compression, but an upstream may send it anyway), at most [`MAX_UPSTREAM_ERROR_BODY`]
/// bytes, and complete within the upstream idle timeout.
async fn read_error_body(
    body: UpstreamBody,
    headers: &HeaderMap,
    limits: &Limits,
) -> Option<Bytes> {
    let encoded = headers
        .get(header::CONTENT_ENCODING)
        .is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"));
    if encoded {
        return None;
    }
    let limited = Limited::new(body, MAX_UPSTREAM_ERROR_BODY);
    match tokio::time::timeout(limits.upstream_idle_timeout, limited.collect()).await {
        Ok(Ok(collected)) => Some(collected.to_bytes()),
        _ => None,
    }
}

/// The operator's line for an upstream that rejected the gateway's key; the client only learns
/// that the gateway's credentials failed.
pub(crate) fn log_rejected_credentials(status: StatusCode, upstream: &str) {
    tracing::warn!(
        status = status.as_u16(),
        upstream,
        "the upstream rejected the gateway's credentials (upstream.api_key_env); clients get \
         upstream_auth_failed"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(endpoint: Endpoint, body: &str) -> Result<bool, &'static str> {
        endpoint
            .validate(body.as_bytes())
            .map(|v| v.stream)
            .map_err(|e| e.code())
    }

    #[test]
    fn chat_validation() {
        let ok = r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#;
        assert_eq!(check(Endpoint::ChatCompletions, ok), Ok(false));
        let streaming = r#"{"model":"m","messages":[],"stream":true}"#;
        assert_eq!(check(Endpoint::ChatCompletions, streaming), Ok(true));
        assert_eq!(
            check(Endpoint::ChatCompletions, r#"{"messages":[]}"#),
            Err("missing_required_parameter")
        );
        assert_eq!(
            check(Endpoint::ChatCompletions, r#"{"model":"m"}"#),
            Err("missing_required_parameter")
        );
        assert_eq!(
            check(Endpoint::ChatCompletions, r#"{"model":null,"messages":[]}"#),
            Err("missing_required_parameter")
        );
        assert_eq!(
            check(Endpoint::ChatCompletions, r#"{"model":"","messages":[]}"#),
            Err("missing_required_parameter")
        );
        assert_eq!(
            check(Endpoint::ChatCompletions, r#"{"model":5,"messages":[]}"#),
            Err("invalid_type")
        );
        assert_eq!(
            check(
                Endpoint::ChatCompletions,
                r#"{"model":"m","messages":"hi"}"#
            ),
            Err("invalid_type")
        );
        assert_eq!(
            check(
                Endpoint::ChatCompletions,
                r#"{"model":"m","messages":[],"stream":"yes"}"#
            ),
            Err("invalid_type")
        );
        assert_eq!(
            check(Endpoint::ChatCompletions, r#"{"model":"m","messages":[]"#),
            Err("invalid_json")
        );
        assert_eq!(
            check(Endpoint::ChatCompletions, r#"["model","messages"]"#),
            Err("invalid_json")
        );
        assert_eq!(check(Endpoint::ChatCompletions, ""), Err("invalid_json"));
        assert_eq!(
            check(
                Endpoint::ChatCompletions,
                r#"{"model":"a","model":"b","messages":[]}"#
            ),
            Err("invalid_json")
        );
    }

    #[test]
    fn other_endpoints_require_their_fields() {
        assert_eq!(
            check(
                Endpoint::Completions,
                r#"{"model":"m","prompt":"x","stream":true}"#
            ),
            Ok(true)
        );
        assert_eq!(
            check(Endpoint::Completions, r#"{"model":"m"}"#),
            Err("missing_required_parameter")
        );
        assert_eq!(
            check(Endpoint::Embeddings, r#"{"model":"m","input":["a"]}"#),
            Ok(false)
        );
        assert_eq!(
            check(Endpoint::Embeddings, r#"{"model":"m"}"#),
            Err("missing_required_parameter")
        );
    }

    #[test]
    fn responses_routes_and_their_ids() {
        use ResponseAction::*;
        let of = |method: Method, path: &'static str| Endpoint::of(&method, path);
        assert_eq!(
            of(Method::POST, "/v1/responses"),
            Some(Routed::Endpoint(Endpoint::Responses, None))
        );
        assert_eq!(
            of(Method::GET, "/v1/responses"),
            Some(Routed::WrongMethod { allow: "POST" })
        );
        let id = Some("resp_68af4030592c81938ec0a5fbab4a3e9f");
        for (method, path, action) in [
            (
                Method::GET,
                "/v1/responses/resp_68af4030592c81938ec0a5fbab4a3e9f",
                Retrieve,
            ),
            (
                Method::DELETE,
                "/v1/responses/resp_68af4030592c81938ec0a5fbab4a3e9f",
                Delete,
            ),
            (
                Method::POST,
                "/v1/responses/resp_68af4030592c81938ec0a5fbab4a3e9f/cancel",
                Cancel,
            ),
            (
                Method::GET,
                "/v1/responses/resp_68af4030592c81938ec0a5fbab4a3e9f/input_items",
                InputItems,
            ),
        ] {
            let endpoint = Endpoint::StoredResponse(action);
            assert_eq!(
                of(method.clone(), path),
                Some(Routed::Endpoint(endpoint, id))
            );
            assert_eq!(endpoint.method(), &method);
            assert_eq!(format!("/v1{}", endpoint.upstream_suffix(id)), path);
            assert_eq!(endpoint.grammar(), Grammar::Responses);
        }
        assert_eq!(
            of(Method::POST, "/v1/responses/resp_1"),
            Some(Routed::WrongMethod {
                allow: "GET, DELETE"
            })
        );
        assert_eq!(
            of(Method::GET, "/v1/responses/resp_1/cancel"),
            Some(Routed::WrongMethod { allow: "POST" })
        );
        // Nothing but an id reaches the upstream's path.
        for bad in [
            "/v1/responses/",
            "/v1/responses/..",
            "/v1/responses/a.b",
            "/v1/responses/%2e%2e",
            "/v1/responses//cancel",
        ] {
            assert_eq!(of(Method::GET, bad), Some(Routed::BadResponseId), "{bad}");
        }
        let long = format!("/v1/responses/{}", "a".repeat(MAX_RESPONSE_ID_BYTES + 1));
        assert_eq!(
            Endpoint::of(&Method::GET, &long),
            Some(Routed::BadResponseId)
        );
        assert_eq!(of(Method::GET, "/v1/responses/resp_1/other"), None);
        // Two POST routes where an id would be; for other methods they are ids.
        for (path, endpoint) in [
            ("/v1/responses/input_tokens", Endpoint::ResponsesInputTokens),
            ("/v1/responses/compact", Endpoint::ResponsesCompact),
        ] {
            assert_eq!(
                of(Method::POST, path),
                Some(Routed::Endpoint(endpoint, None))
            );
            assert_eq!(format!("/v1{}", endpoint.upstream_suffix(None)), path);
            assert_eq!(endpoint.method(), &Method::POST);
        }
        assert_eq!(
            of(Method::GET, "/v1/responses/compact"),
            Some(Routed::Endpoint(
                Endpoint::StoredResponse(Retrieve),
                Some("compact")
            ))
        );
        assert_eq!(of(Method::GET, "/v1/responsesX"), None);
        assert_eq!(Endpoint::ChatCompletions.grammar(), Grammar::Chunks);
    }

    #[test]
    fn a_responses_request_needs_a_model_only() {
        assert_eq!(
            check(
                Endpoint::Responses,
                r#"{"model":"m","input":"hi","stream":true}"#
            ),
            Ok(true)
        );
        assert_eq!(
            check(
                Endpoint::Responses,
                r#"{"model":"m","previous_response_id":"resp_1"}"#
            ),
            Ok(false)
        );
        assert_eq!(
            check(Endpoint::Responses, r#"{"input":"hi"}"#),
            Err("missing_required_parameter")
        );
        assert!(query_asks_for_stream(Some("stream=true&starting_after=3")));
        assert!(!query_asks_for_stream(Some("stream=false")));
        assert!(!query_asks_for_stream(None));
    }

    #[test]
    fn only_client_facing_upstream_headers_cross() {
        let mut from = HeaderMap::new();
        from.insert("x-request-id", HeaderValue::from_static("up-1"));
        from.insert("openai-processing-ms", HeaderValue::from_static("12"));
        from.insert(
            "x-ratelimit-remaining-requests",
            HeaderValue::from_static("9"),
        );
        from.insert("retry-after", HeaderValue::from_static("1"));
        from.insert("retry-after-ms", HeaderValue::from_static("1000"));
        from.insert("set-cookie", HeaderValue::from_static("a=b"));
        from.insert("connection", HeaderValue::from_static("keep-alive"));
        let mut to = HeaderMap::new();
        copy_upstream_headers(&from, &mut to, &HeaderValue::from_static("ours"));
        assert_eq!(to["x-upstream-request-id"], "up-1");
        assert!(to.get("x-request-id").is_none());
        assert_eq!(to["openai-processing-ms"], "12");
        assert_eq!(to["x-ratelimit-remaining-requests"], "9");
        assert_eq!(to["retry-after"], "1");
        assert_eq!(to["retry-after-ms"], "1000");
        assert!(to.get("set-cookie").is_none());
        assert!(to.get("connection").is_none());

        let mut same = HeaderMap::new();
        copy_upstream_headers(&from, &mut same, &HeaderValue::from_static("up-1"));
        assert!(same.get("x-upstream-request-id").is_none());
    }

    #[test]
    fn content_type_checks_ignore_parameters_and_case() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("Application/JSON; charset=utf-8"),
        );
        assert!(has_content_type(&h, APPLICATION_JSON));
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        assert!(!has_content_type(&h, APPLICATION_JSON));
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream; charset=utf-8"),
        );
        assert!(has_content_type(&h, TEXT_EVENT_STREAM));
    }
}
