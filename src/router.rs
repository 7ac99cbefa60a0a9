//! Routes: path and method to handler, and every error to its OpenAI-shaped JSON response.
//!
//! The table is small on purpose; the gateway has no web framework. Each request gets one span
//! carrying the client address and the request id, and the id is returned on every response.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use tokio::time::Instant;
use tracing::Instrument;

use crate::admin;
use crate::error::GatewayError;
use crate::gateway::App;
use crate::relay::body::ResponseBody;
use crate::relay::upstream::Upstream;
use crate::relay::{self, Endpoint};
use crate::request_id;
use crate::server::Handler;

/// The client-facing listener: the OpenAI-compatible API plus health checks. One per worker
/// thread: it carries that worker's upstream client.
#[derive(Clone)]
pub struct ApiRoutes {
    app: Arc<App>,
    upstream: Arc<Upstream>,
}

impl ApiRoutes {
    /// The routes of worker `worker` (`0..app.workers()`).
    pub fn for_worker(app: Arc<App>, worker: usize) -> ApiRoutes {
        let upstream = app.upstream(worker).clone();
        ApiRoutes { app, upstream }
    }
}

/// The operator-facing listener: health checks and the admin API (later metrics).
#[derive(Clone)]
pub struct AdminRoutes(pub Arc<App>);

impl Handler for ApiRoutes {
    fn call(
        self,
        peer: SocketAddr,
        request: Request<Incoming>,
    ) -> impl Future<Output = Response<ResponseBody>> + Send + 'static {
        let ApiRoutes { app, upstream } = self;
        with_request_span(peer, request, move |request, id| async move {
            let path = request.uri().path();
            let endpoint = match path {
                "/v1/chat/completions" => Endpoint::ChatCompletions,
                "/v1/completions" => Endpoint::Completions,
                "/v1/embeddings" => Endpoint::Embeddings,
                "/v1/models" => Endpoint::Models,
                _ => return health(&app, &request),
            };
            if request.method() != endpoint.method() {
                return Err(method_not_allowed(&request, endpoint.method().as_str()));
            }
            relay::handle(endpoint, request, &app, &upstream, peer, &id).await
        })
    }
}

impl Handler for AdminRoutes {
    fn call(
        self,
        peer: SocketAddr,
        request: Request<Incoming>,
    ) -> impl Future<Output = Response<ResponseBody>> + Send + 'static {
        let app = self.0;
        with_request_span(peer, request, move |request, _id| async move {
            if admin::is_admin_path(request.uri().path()) {
                admin::handle(&app, &request)
            } else {
                health(&app, &request)
            }
        })
    }
}

/// `/healthz` (the process is up) and `/readyz` (it takes new work); anything else is a 404.
fn health(app: &App, request: &Request<Incoming>) -> Result<Response<ResponseBody>, GatewayError> {
    let path = request.uri().path();
    if path != "/healthz" && path != "/readyz" {
        return Err(GatewayError::NotFound {
            method: request.method().to_string(),
            path: path.to_owned(),
        });
    }
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return Err(method_not_allowed(request, "GET"));
    }
    if path == "/readyz" && !app.is_ready() {
        return Err(GatewayError::NotReady);
    }
    Ok(json_response(StatusCode::OK, r#"{"status":"ok"}"#))
}

/// The 405 error for `request`, naming the methods its path allows.
pub(crate) fn method_not_allowed<B>(request: &Request<B>, allowed: &'static str) -> GatewayError {
    GatewayError::MethodNotAllowed {
        method: request.method().to_string(),
        path: request.uri().path().to_owned(),
        allowed,
    }
}

fn json_response(status: StatusCode, body: &'static str) -> Response<ResponseBody> {
    let mut response = Response::new(ResponseBody::full(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// The JSON response for an error raised before any response started.
pub fn error_response(error: &GatewayError) -> Response<ResponseBody> {
    let mut response = Response::new(ResponseBody::full(error.to_json()));
    *response.status_mut() = error.status();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    match error {
        GatewayError::MethodNotAllowed { allowed, .. } => {
            headers.insert(header::ALLOW, HeaderValue::from_static(allowed));
        }
        GatewayError::AdminUnauthorized => {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        _ => {}
    }
    response
}

/// Runs `handle` inside the request's span, turns its error into a response, stamps the
/// request id on the response and logs one line with status and latency.
fn with_request_span<F, Fut>(
    peer: SocketAddr,
    request: Request<Incoming>,
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
    );
    async move {
        let started = Instant::now();
        let mut response = match handle(request, id.clone()).await {
            Ok(response) => response,
            Err(error) => {
                let status = error.status();
                if status.is_server_error() {
                    tracing::warn!(code = error.code(), "{error}");
                } else {
                    tracing::debug!(code = error.code(), "{error}");
                }
                error_response(&error)
            }
        };
        response.headers_mut().insert(request_id::HEADER, id);
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
