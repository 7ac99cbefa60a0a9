//! Routes: path and method to handler, and every error to its OpenAI-shaped JSON response.
//!
//! The table is small on purpose; the gateway has no web framework. Each request gets one span
//! carrying the client address and the request id, and the id is returned on every response.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use http::header::HeaderValue;
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use tokio::time::Instant;
use tracing::Instrument;

use crate::admin::{self, AdminApi};
use crate::cors::Cors;
use crate::demo_page;
use crate::error::GatewayError;
use crate::metrics::{self, Metrics};
use crate::registry::Registry;
use crate::relay::body::ResponseBody;
use crate::relay::{self, Endpoint, Relay, Routed};
use crate::request_id;
use crate::response::{self, method_not_allowed};
use crate::server::Handler;

/// Where resumable streams are picked back up: `GET /v1/streams/{id}`.
pub const STREAMS_PATH: &str = "/v1/streams/";

/// The `route` label of resumes in the metrics (one of [`metrics::ROUTES`]).
const RESUME_ROUTE: &str = "streams";

/// The client-facing listener: the OpenAI-compatible API plus health checks, the CORS policy
/// (`None`: off), and whether `/` serves the demo page (`demo.page`). One per worker thread: it
/// carries that worker's upstream client.
#[derive(Clone)]
pub struct ApiRoutes(pub Arc<Relay>, pub Option<Arc<Cors>>, pub bool);

/// The operator-facing listener: health checks and the admin API.
#[derive(Clone)]
pub struct AdminRoutes(pub Arc<AdminApi>);

impl Handler for ApiRoutes {
    type Body = ResponseBody;

    fn call(
        self,
        peer: SocketAddr,
        request: Request<Incoming>,
    ) -> impl Future<Output = Response<ResponseBody>> + Send + 'static {
        let ApiRoutes(relay, cors, serve_demo_page) = self;
        // The client's address (the peer's, unless the peer is a trusted proxy): the one the
        // span, admission control and the registry use. The peer's port is kept.
        let peer = SocketAddr::new(
            relay.client_ip.resolve(peer.ip(), request.headers()),
            peer.port(),
        );
        // With CORS on: the page's origin, and whether this is a preflight for the API, which
        // costs nothing: answered before admission control, never upstream.
        let origin = cors
            .as_ref()
            .and_then(|_| request.headers().get(http::header::ORIGIN).cloned());
        let preflight = cors
            .clone()
            .filter(|_| Cors::is_preflight(&request) && request.uri().path().starts_with("/v1/"));
        let metrics = Some(relay.metrics.clone());
        let handled = with_request_span(peer, request, metrics, {
            let preflight = preflight.clone();
            move |request, id| async move {
                if let Some(cors) = preflight {
                    return Ok(cors.preflight(request.headers(), peer.ip()));
                }
                if let Some(stream_id) = request.uri().path().strip_prefix(STREAMS_PATH) {
                    if request.method() != Method::GET {
                        return Err(method_not_allowed(&request, "GET"));
                    }
                    let stream_id = stream_id.to_owned();
                    let started = Instant::now();
                    let answer = relay::resume(&stream_id, request, &relay, peer).await;
                    count_answer(&relay.metrics, RESUME_ROUTE, &answer, started);
                    return answer;
                }
                if let Some(answer) = serve_demo_page
                    .then(|| demo_page::serve(&request))
                    .flatten()
                {
                    return answer;
                }
                let path = request.uri().path().to_owned();
                let (endpoint, response_id) = match Endpoint::of(request.method(), &path) {
                    None => return health(&relay.registry, &request),
                    Some(Routed::Endpoint(endpoint, response_id)) => (endpoint, response_id),
                    Some(Routed::WrongMethod { allow }) => {
                        return Err(method_not_allowed(&request, allow))
                    }
                    Some(Routed::BadResponseId) => {
                        return Err(GatewayError::InvalidParameter {
                            param: "response_id",
                            expected: format!(
                                "a response id: letters, digits, '_' and '-', at most {} bytes",
                                relay::MAX_RESPONSE_ID_BYTES
                            )
                            .into(),
                        })
                    }
                };
                let started = Instant::now();
                let answer = relay::handle(endpoint, response_id, request, &relay, peer, &id).await;
                count_answer(&relay.metrics, endpoint.metric_route(), &answer, started);
                answer
            }
        });
        async move {
            let mut response = handled.await;
            if let (Some(cors), None) = (&cors, &preflight) {
                cors.apply(origin.as_ref(), peer.ip(), response.headers_mut());
            }
            response
        }
    }
}

impl Handler for AdminRoutes {
    type Body = ResponseBody;

    fn call(
        self,
        peer: SocketAddr,
        request: Request<Incoming>,
    ) -> impl Future<Output = Response<ResponseBody>> + Send + 'static {
        let admin = self.0;
        with_request_span(peer, request, None, move |request, _id| async move {
            if admin::is_admin_path(request.uri().path()) {
                admin.handle(&request)
            } else {
                health(&admin.registry, &request)
            }
        })
    }
}

/// Counts an API request's answer: by route and status, its duration unless it is a stream
/// (whose end is counted when it ends), and, for a refusal admission control does not count
/// itself, its reason.
fn count_answer(
    metrics: &Metrics,
    route: &'static str,
    answer: &Result<Response<ResponseBody>, GatewayError>,
    started: Instant,
) {
    match answer {
        Ok(response) => {
            let streaming = response.headers().contains_key(relay::STREAM_ID_HEADER);
            let took = (!streaming).then(|| started.elapsed());
            metrics.request_answered(route, response.status(), took);
        }
        Err(error) => {
            metrics.request_answered(route, error.status(), Some(started.elapsed()));
            if let Some(reason) = metrics::rejection_reason(error.code()) {
                metrics.rejected(reason);
            }
        }
    }
}

/// The HTTP/1.1 framing rules nginx applies, which hyper leaves to the application: a request
/// with both `Content-Length` and `Transfer-Encoding`, with more than one `Content-Length`, or with
/// a `Transfer-Encoding` other than `chunked` is refused. Each lets two parsers on the way
/// (a proxy in front and this one) disagree on where the body ends: request smuggling. (hyper
/// itself refuses differing `Content-Length` lines and lists, and folds identical lines into one
/// before we see them, which RFC 9112 allows: every parser agrees on that length.)
fn check_framing(headers: &http::HeaderMap) -> Result<(), GatewayError> {
    use http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
    let lengths = headers.get_all(CONTENT_LENGTH).iter().count();
    let encodings: Vec<&HeaderValue> = headers.get_all(TRANSFER_ENCODING).iter().collect();
    if lengths > 0 && !encodings.is_empty() {
        return Err(GatewayError::AmbiguousFraming(
            "both Content-Length and Transfer-Encoding",
        ));
    }
    if lengths > 1
        || headers
            .get(CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes().contains(&b','))
    {
        return Err(GatewayError::AmbiguousFraming(
            "more than one Content-Length",
        ));
    }
    match encodings.as_slice() {
        [] => Ok(()),
        [one] if one.as_bytes().trim_ascii().eq_ignore_ascii_case(b"chunked") => Ok(()),
        _ => Err(GatewayError::AmbiguousFraming(
            "a Transfer-Encoding other than chunked",
        )),
    }
}

/// `/healthz` (the process is up) and `/readyz` (it takes new work: not once the drain has
/// begun); anything else is a 404.
fn health(
    registry: &Registry,
    request: &Request<Incoming>,
) -> Result<Response<ResponseBody>, GatewayError> {
    let path = request.uri().path();
    if path != "/healthz" && path != "/readyz" {
        return Err(response::not_found(request));
    }
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return Err(method_not_allowed(request, "GET"));
    }
    if path == "/readyz" && registry.is_draining() {
        return Err(GatewayError::NotReady);
    }
    Ok(response::json(StatusCode::OK, r#"{"status":"ok"}"#))
}

/// Runs `handle` inside the request's span, turns its error into a response, stamps the
/// request id on the response and logs one line with status and latency. A request refused for
/// its framing never reaches `handle`; it is counted in `metrics` (the API's) if given.
fn with_request_span<F, Fut>(
    peer: SocketAddr,
    request: Request<Incoming>,
    metrics: Option<Arc<Metrics>>,
    handle: F,
) -> impl Future<Output = Response<ResponseBody>> + Send + 'static
where
    F: FnOnce(Request<Incoming>, HeaderValue) -> Fut + Send + 'static,
    Fut: Future<Output = Result<Response<ResponseBody>, GatewayError>> + Send + 'static,
{
    let id = request_id::from_client(request.headers().get(request_id::HEADER));
    let span = tracing::info_span!(
        "request",
        client = %peer,
        request_id = %id.to_str().unwrap_or_default(),
        method = %request.method(),
        path = %request.uri().path(),
        stream_id = tracing::field::Empty,
        // The name of the request's API key, once known (never the key).
        api_key = tracing::field::Empty,
    );
    async move {
        let started = Instant::now();
        // Before anything reads the body: a request whose length is ambiguous is answered and
        // its connection closed, as nginx does.
        let framing = check_framing(request.headers());
        let ambiguous = framing.is_err();
        if let (Err(error), Some(metrics)) = (&framing, &metrics) {
            if let Some(reason) = metrics::rejection_reason(error.code()) {
                metrics.rejected(reason);
            }
        }
        let handled = match framing {
            Ok(()) => handle(request, id.clone()).await,
            Err(error) => Err(error),
        };
        let mut response = match handled {
            Ok(response) => response,
            Err(error) => {
                let status = error.status();
                if status.is_server_error() {
                    tracing::warn!(code = error.code(), "{error}");
                } else {
                    tracing::debug!(code = error.code(), "{error}");
                }
                response::error(&error)
            }
        };
        response.headers_mut().insert(request_id::HEADER, id);
        if ambiguous {
            // hyper ends the connection after a response that says so.
            response
                .headers_mut()
                .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
        }
        let status = response.status().as_u16();
        let latency_ms = started.elapsed().as_millis() as u64;
        // One info line per request, as an access log has: a stream gets its own line when it
        // ends ("stream ended": outcome, events, first event and duration), so its response
        // head is only a debug line.
        if response.headers().contains_key(relay::STREAM_ID_HEADER) {
            tracing::debug!(status, latency_ms, "response");
        } else {
            tracing::info!(status, latency_ms, "response");
        }
        response
    }
    .instrument(span)
}
