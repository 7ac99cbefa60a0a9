//! Every error a client can see, and the one table that maps each to an HTTP status and an
//! OpenAI-shaped body: `{"error":{"message","type","param","code"}}`.
//!
//! Before a response has started, an error is a JSON response with its status. Once an SSE
//! stream has started, the same error becomes one final `data: {"error":{...}}` event: that is the
//! form the OpenAI SDKs raise on mid-stream, so a client sees the failure instead of a silent end.

use std::borrow::Cow;

use bytes::Bytes;
use http::StatusCode;
use serde::Serialize;

/// An error that ends a request or a stream. `code` strings are part of our API: never rename one.
///
/// `Display` is the log line's text. The client's `message` is the same, except for the
/// variants whose detail is another library's error text (hyper, io, rustls): the client gets
/// our sentence alone ([`GatewayError::client_message`]), and the detail stays in the log.
#[derive(Debug, Clone, thiserror::Error)]
pub enum GatewayError {
    #[error("We could not parse the JSON body of your request: {0}")]
    InvalidJson(String),
    #[error("You must provide the '{0}' parameter.")]
    MissingParameter(&'static str),
    #[error("Invalid type for '{param}': expected {expected}.")]
    InvalidParameter {
        param: &'static str,
        expected: Cow<'static, str>,
    },
    #[error("Content-Type must be application/json.")]
    UnsupportedMediaType,
    /// A request whose body length is ambiguous (the ground of request smuggling): answered,
    /// and its connection closed.
    #[error("The request's body framing is ambiguous: {0}.")]
    AmbiguousFraming(&'static str),
    #[error("The request body is larger than the limit of {limit} bytes.")]
    BodyTooLarge { limit: u64 },
    #[error("The request body did not arrive within {0:?}.")]
    BodyReadTimeout(std::time::Duration),
    /// The detail: hyper's error reading the client's body.
    #[error("The request body could not be read: {0}")]
    BodyRead(String),
    #[error("Invalid URL ({method} {path})")]
    NotFound { method: String, path: String },
    #[error("Method {method} is not allowed for {path}; use {allowed}.")]
    MethodNotAllowed {
        method: String,
        path: String,
        allowed: &'static str,
    },
    #[error("The gateway is shutting down.")]
    NotReady,
    #[error("Rate limit reached for requests from {} ({limit} per second); retry in {} ms.", .scope.whose(), .retry_after.as_millis().max(1))]
    RateLimited {
        retry_after: std::time::Duration,
        limit: u32,
        scope: LimitScope,
    },
    #[error("Too many streams: {} already has {limit} streams open; wait for one to end.", .scope.whose())]
    TooManyStreams {
        limit: u32,
        retry_after: std::time::Duration,
        scope: LimitScope,
    },
    /// No key, or one this gateway did not issue. The key is never repeated, not even masked.
    #[error("{}", if *.presented { "Incorrect API key provided. Use a key issued for this gateway." } else { "You didn't provide an API key. Send it as 'Authorization: Bearer <key>'." })]
    InvalidApiKey { presented: bool },
    #[error("Your API key may not use the model '{0}'.")]
    ModelNotAllowed(String),
    #[error("The gateway is at its limit of concurrent streams; retry shortly.")]
    ServerOverloaded { retry_after: std::time::Duration },
    #[error("Your address already has {limit} connections open; reuse one or wait.")]
    TooManyConnections {
        limit: u32,
        retry_after: std::time::Duration,
    },
    #[error("The gateway is at its limit of open connections; retry shortly.")]
    ConnectionsExhausted { retry_after: std::time::Duration },
    #[error("No upstream serves the model '{0}'.")]
    ModelNotFound(String),
    #[error("Every upstream that serves this model is unavailable; retry in {}s.", .retry_after.as_secs().max(1))]
    NoUpstreamAvailable { retry_after: std::time::Duration },
    /// The detail: the connect, DNS or TLS error (io, hyper, rustls).
    #[error("The upstream could not be reached: {0}")]
    UpstreamUnreachable(String),
    /// The detail: hyper's error, or what in our setup failed.
    #[error("The upstream failed before responding: {0}")]
    UpstreamFailed(String),
    #[error("The upstream did not respond within {0:?}.")]
    UpstreamTimeout(std::time::Duration),
    #[error(
        "The upstream rejected the gateway's credentials; the gateway's operator has been told."
    )]
    UpstreamAuthFailed,
    #[error("The upstream sent nothing for {0:?}.")]
    UpstreamIdleTimeout(std::time::Duration),
    /// The detail: hyper's error (e.g. "unexpected EOF during chunk size line", an HTTP/2
    /// stream reset).
    #[error("The upstream connection was lost in the middle of the response: {0}")]
    UpstreamReset(String),
    #[error("The upstream sent an event larger than {limit} bytes.")]
    UpstreamEventTooLarge { limit: usize },
    #[error("The upstream sent an event that is not valid JSON.")]
    UpstreamMalformedEvent,
    #[error("The upstream answered a streaming request without an event stream.")]
    UpstreamNotEventStream,
    /// The stream ended without its API's last event (the grammar's `end_marker`).
    #[error("The upstream stream ended without {0}.")]
    UpstreamIncomplete(&'static str),
    #[error("The stream exceeded the maximum duration of {0:?}.")]
    StreamDurationExceeded(std::time::Duration),
    #[error("The upstream answered with HTTP status {0}.")]
    UpstreamStatus(u16),
    #[error("The stream was ended by the gateway's operator.")]
    TerminatedByAdmin,
    #[error("The client stopped reading the stream.")]
    SlowClient,
    #[error("No live stream has the id '{0}'.")]
    StreamNotFound(String),
    /// A resume of a stream this instance does not have: unknown, expired, on another instance,
    /// or the token (or API key) does not match; which of them is not said. Shares its code
    /// with [`GatewayError::StreamNotFound`].
    #[error("No resumable stream has the id '{0}' with this token: it is unknown, it has expired, or the token does not match. Start a new request.")]
    ResumeNotFound(String),
    #[error("The events after id {last_event_id} are no longer kept for this stream (the oldest kept is {oldest}); start a new request.")]
    ResumeWindowExceeded { last_event_id: u64, oldest: u64 },
    #[error("The admin API needs 'Authorization: Bearer <admin token>'.")]
    AdminUnauthorized,
}

/// Whose limit a request went over: its client address's or its API key's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitScope {
    Address,
    ApiKey,
}

impl LimitScope {
    /// For messages: "your address", "your API key".
    pub fn whose(self) -> &'static str {
        match self {
            LimitScope::Address => "your address",
            LimitScope::ApiKey => "your API key",
        }
    }
}

/// What the table says about one error: status, OpenAI `type`, stable `code`, `param`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorClass {
    pub status: StatusCode,
    pub kind: &'static str,
    pub code: &'static str,
    pub param: Option<&'static str>,
}

const INVALID_REQUEST: &str = "invalid_request_error";
const SERVER_ERROR: &str = "server_error";
/// OpenAI's type for a rate limit (`"requests"`, as its 429s say).
const RATE_LIMIT: &str = "requests";

impl GatewayError {
    /// The one table of statuses, types and codes.
    pub fn class(&self) -> ErrorClass {
        use GatewayError::*;
        let (status, kind, code, param) = match self {
            InvalidJson(_) => (
                StatusCode::BAD_REQUEST,
                INVALID_REQUEST,
                "invalid_json",
                None,
            ),
            MissingParameter(p) => (
                StatusCode::BAD_REQUEST,
                INVALID_REQUEST,
                "missing_required_parameter",
                Some(*p),
            ),
            InvalidParameter { param, .. } => (
                StatusCode::BAD_REQUEST,
                INVALID_REQUEST,
                "invalid_type",
                Some(*param),
            ),
            UnsupportedMediaType => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                INVALID_REQUEST,
                "unsupported_media_type",
                None,
            ),
            AmbiguousFraming(_) => (
                StatusCode::BAD_REQUEST,
                INVALID_REQUEST,
                "ambiguous_request_framing",
                None,
            ),
            BodyTooLarge { .. } => (
                StatusCode::PAYLOAD_TOO_LARGE,
                INVALID_REQUEST,
                "request_too_large",
                None,
            ),
            BodyReadTimeout(_) => (
                StatusCode::REQUEST_TIMEOUT,
                INVALID_REQUEST,
                "request_body_timeout",
                None,
            ),
            BodyRead(_) => (
                StatusCode::BAD_REQUEST,
                INVALID_REQUEST,
                "request_body_unreadable",
                None,
            ),
            NotFound { .. } => (StatusCode::NOT_FOUND, INVALID_REQUEST, "unknown_url", None),
            MethodNotAllowed { .. } => (
                StatusCode::METHOD_NOT_ALLOWED,
                INVALID_REQUEST,
                "method_not_allowed",
                None,
            ),
            NotReady => (
                StatusCode::SERVICE_UNAVAILABLE,
                SERVER_ERROR,
                "server_shutdown",
                None,
            ),
            RateLimited { .. } => (
                StatusCode::TOO_MANY_REQUESTS,
                RATE_LIMIT,
                "rate_limit_exceeded",
                None,
            ),
            TooManyStreams { .. } => (
                StatusCode::TOO_MANY_REQUESTS,
                RATE_LIMIT,
                "too_many_streams",
                None,
            ),
            ServerOverloaded { .. } => (
                StatusCode::SERVICE_UNAVAILABLE,
                SERVER_ERROR,
                "server_overloaded",
                None,
            ),
            TooManyConnections { .. } => (
                StatusCode::TOO_MANY_REQUESTS,
                RATE_LIMIT,
                "too_many_connections",
                None,
            ),
            // The same code as a full stream table: for the client it is the same condition.
            ConnectionsExhausted { .. } => (
                StatusCode::SERVICE_UNAVAILABLE,
                SERVER_ERROR,
                "server_overloaded",
                None,
            ),
            InvalidApiKey { .. } => (
                StatusCode::UNAUTHORIZED,
                INVALID_REQUEST,
                "invalid_api_key",
                None,
            ),
            ModelNotAllowed(_) => (
                StatusCode::FORBIDDEN,
                INVALID_REQUEST,
                "model_not_allowed",
                Some("model"),
            ),
            ModelNotFound(_) => (
                StatusCode::NOT_FOUND,
                INVALID_REQUEST,
                "model_not_found",
                Some("model"),
            ),
            NoUpstreamAvailable { .. } => (
                StatusCode::SERVICE_UNAVAILABLE,
                SERVER_ERROR,
                "upstream_unavailable",
                None,
            ),
            UpstreamUnreachable(_) => (
                StatusCode::BAD_GATEWAY,
                SERVER_ERROR,
                "upstream_unreachable",
                None,
            ),
            UpstreamFailed(_) => (
                StatusCode::BAD_GATEWAY,
                SERVER_ERROR,
                "upstream_failed",
                None,
            ),
            UpstreamTimeout(_) => (
                StatusCode::GATEWAY_TIMEOUT,
                SERVER_ERROR,
                "upstream_timeout",
                None,
            ),
            UpstreamAuthFailed => (
                StatusCode::BAD_GATEWAY,
                SERVER_ERROR,
                "upstream_auth_failed",
                None,
            ),
            UpstreamIdleTimeout(_) => (
                StatusCode::GATEWAY_TIMEOUT,
                SERVER_ERROR,
                "upstream_idle_timeout",
                None,
            ),
            UpstreamReset(_) => (
                StatusCode::BAD_GATEWAY,
                SERVER_ERROR,
                "upstream_reset",
                None,
            ),
            UpstreamEventTooLarge { .. } => (
                StatusCode::BAD_GATEWAY,
                SERVER_ERROR,
                "upstream_event_too_large",
                None,
            ),
            UpstreamMalformedEvent => (
                StatusCode::BAD_GATEWAY,
                SERVER_ERROR,
                "upstream_malformed_event",
                None,
            ),
            UpstreamNotEventStream => (
                StatusCode::BAD_GATEWAY,
                SERVER_ERROR,
                "upstream_not_event_stream",
                None,
            ),
            UpstreamIncomplete(_) => (
                StatusCode::BAD_GATEWAY,
                SERVER_ERROR,
                "upstream_incomplete_stream",
                None,
            ),
            StreamDurationExceeded(_) => (
                StatusCode::GATEWAY_TIMEOUT,
                SERVER_ERROR,
                "stream_duration_exceeded",
                None,
            ),
            UpstreamStatus(_) => (
                StatusCode::BAD_GATEWAY,
                SERVER_ERROR,
                "upstream_error_status",
                None,
            ),
            TerminatedByAdmin => (
                StatusCode::SERVICE_UNAVAILABLE,
                SERVER_ERROR,
                "terminated_by_admin",
                None,
            ),
            SlowClient => (
                StatusCode::REQUEST_TIMEOUT,
                INVALID_REQUEST,
                "slow_client",
                None,
            ),
            StreamNotFound(_) | ResumeNotFound(_) => (
                StatusCode::NOT_FOUND,
                INVALID_REQUEST,
                "stream_not_found",
                None,
            ),
            ResumeWindowExceeded { .. } => (
                StatusCode::CONFLICT,
                INVALID_REQUEST,
                "resume_window_exceeded",
                Some("last_event_id"),
            ),
            AdminUnauthorized => (
                StatusCode::UNAUTHORIZED,
                INVALID_REQUEST,
                "invalid_admin_token",
                None,
            ),
        };
        ErrorClass {
            status,
            kind,
            code,
            param,
        }
    }

    pub fn status(&self) -> StatusCode {
        self.class().status
    }

    pub fn code(&self) -> &'static str {
        self.class().code
    }

    /// The `message` the client gets, when it is not `Display`'s: for the variants whose detail
    /// is another library's words, which say nothing to a client (and may name our upstream's
    /// address), our sentence without it.
    pub fn client_message(&self) -> Option<&'static str> {
        use GatewayError::*;
        match self {
            BodyRead(_) => Some("The request body could not be read."),
            UpstreamUnreachable(_) => Some("The upstream could not be reached."),
            UpstreamFailed(_) => Some("The upstream failed before responding."),
            UpstreamReset(_) => {
                Some("The upstream connection was lost in the middle of the response.")
            }
            _ => None,
        }
    }

    /// The OpenAI-shaped JSON body.
    pub fn to_json(&self) -> Bytes {
        let class = self.class();
        let body = ErrorBody {
            error: ErrorObject {
                message: Message(self),
                kind: class.kind,
                param: class.param,
                code: class.code,
            },
        };
        // One allocation that fits every body (refusals answered by the thousand go through
        // here). Serializing plain strings into a Vec cannot fail; the fallback keeps the type
        // total.
        let mut json = Vec::with_capacity(ERROR_JSON_CAPACITY);
        serde_json::to_writer(&mut json, &body)
            .map(|()| Bytes::from(json))
            .unwrap_or_else(|_| Bytes::from_static(br#"{"error":{"message":"internal error","type":"server_error","param":null,"code":"internal"}}"#))
    }

    /// The same body as one final SSE event, for errors after a stream has started.
    pub fn to_sse_event(&self) -> Bytes {
        let json = self.to_json();
        let mut event = Vec::with_capacity(json.len() + 8);
        event.extend_from_slice(b"data: ");
        event.extend_from_slice(&json);
        event.extend_from_slice(b"\n\n");
        Bytes::from(event)
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: ErrorObject<'a>,
}

/// Bytes reserved for an error's JSON body: the longest fixed parts and a long message.
const ERROR_JSON_CAPACITY: usize = 256;

/// The error's client-facing message, written straight into the JSON (escaped) without a
/// `String` of its own.
struct Message<'a>(&'a GatewayError);

impl Serialize for Message<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.0.client_message() {
            Some(ours) => serializer.serialize_str(ours),
            None => serializer.collect_str(self.0),
        }
    }
}

#[derive(Serialize)]
struct ErrorObject<'a> {
    message: Message<'a>,
    #[serde(rename = "type")]
    kind: &'a str,
    param: Option<&'a str>,
    code: &'a str,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_body_has_the_openai_shape() {
        let err = GatewayError::MissingParameter("model");
        let v: serde_json::Value = serde_json::from_slice(&err.to_json()).unwrap();
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert_eq!(v["error"]["code"], "missing_required_parameter");
        assert_eq!(v["error"]["param"], "model");
        assert!(v["error"]["message"].as_str().unwrap().contains("model"));
        assert_eq!(err.status(), StatusCode::BAD_REQUEST);
    }

    #[test]
    fn sse_event_is_one_data_line_and_a_blank_line() {
        let ev = GatewayError::UpstreamIncomplete("[DONE]").to_sse_event();
        let text = std::str::from_utf8(&ev).unwrap();
        assert!(text.starts_with("data: {\"error\":"));
        assert!(text.ends_with("}\n\n"));
        assert_eq!(text.matches('\n').count(), 2);
        let json: serde_json::Value = serde_json::from_str(&text[6..text.len() - 2]).unwrap();
        assert_eq!(json["error"]["code"], "upstream_incomplete_stream");
        assert_eq!(json["error"]["param"], serde_json::Value::Null);
    }

    /// hyper's, io's and rustls' words go to the log (`Display`), never to the client.
    #[test]
    fn foreign_error_text_stays_out_of_the_client_message() {
        let detail = "error reading a body from connection: unexpected EOF during chunk size line";
        for err in [
            GatewayError::BodyRead(detail.into()),
            GatewayError::UpstreamUnreachable(detail.into()),
            GatewayError::UpstreamFailed(detail.into()),
            GatewayError::UpstreamReset(detail.into()),
        ] {
            let json: serde_json::Value = serde_json::from_slice(&err.to_json()).unwrap();
            let message = json["error"]["message"].as_str().unwrap();
            assert!(!message.contains("EOF"), "{}: {message}", err.code());
            assert!(message.ends_with('.'), "a sentence: {message}");
            assert_eq!(Some(message), err.client_message());
            assert!(err.to_string().contains(detail), "the log keeps it: {err}");
        }
        let reset = GatewayError::UpstreamReset(detail.into()).to_sse_event();
        assert!(std::str::from_utf8(&reset)
            .unwrap()
            .contains("The upstream connection was lost in the middle of the response."));
        // Our own words, with what the client sent or may do, are the message as they are.
        let not_found = GatewayError::ModelNotFound("gpt-9".into());
        assert_eq!(not_found.client_message(), None);
        let json: serde_json::Value = serde_json::from_slice(&not_found.to_json()).unwrap();
        assert_eq!(
            json["error"]["message"],
            "No upstream serves the model 'gpt-9'."
        );
    }

    #[test]
    fn codes_are_distinct() {
        use std::time::Duration;
        let all = [
            GatewayError::InvalidJson(String::new()),
            GatewayError::MissingParameter("model"),
            GatewayError::InvalidParameter {
                param: "stream",
                expected: "a boolean".into(),
            },
            GatewayError::UnsupportedMediaType,
            GatewayError::AmbiguousFraming(""),
            GatewayError::BodyTooLarge { limit: 1 },
            GatewayError::BodyReadTimeout(Duration::ZERO),
            GatewayError::BodyRead(String::new()),
            GatewayError::NotFound {
                method: "GET".into(),
                path: "/".into(),
            },
            GatewayError::MethodNotAllowed {
                method: "GET".into(),
                path: "/".into(),
                allowed: "POST",
            },
            GatewayError::NotReady,
            GatewayError::RateLimited {
                retry_after: Duration::ZERO,
                limit: 0,
                scope: LimitScope::Address,
            },
            GatewayError::TooManyStreams {
                limit: 0,
                retry_after: Duration::ZERO,
                scope: LimitScope::ApiKey,
            },
            GatewayError::InvalidApiKey { presented: true },
            GatewayError::ModelNotAllowed(String::new()),
            GatewayError::ServerOverloaded {
                retry_after: Duration::ZERO,
            },
            GatewayError::TooManyConnections {
                limit: 0,
                retry_after: Duration::ZERO,
            },
            GatewayError::ModelNotFound(String::new()),
            GatewayError::NoUpstreamAvailable {
                retry_after: Duration::ZERO,
            },
            GatewayError::UpstreamUnreachable(String::new()),
            GatewayError::UpstreamFailed(String::new()),
            GatewayError::UpstreamTimeout(Duration::ZERO),
            GatewayError::UpstreamAuthFailed,
            GatewayError::UpstreamIdleTimeout(Duration::ZERO),
            GatewayError::UpstreamReset(String::new()),
            GatewayError::UpstreamEventTooLarge { limit: 1 },
            GatewayError::UpstreamMalformedEvent,
            GatewayError::UpstreamNotEventStream,
            GatewayError::UpstreamIncomplete("[DONE]"),
            GatewayError::StreamDurationExceeded(Duration::ZERO),
            GatewayError::UpstreamStatus(500),
            GatewayError::TerminatedByAdmin,
            GatewayError::SlowClient,
            GatewayError::StreamNotFound(String::new()),
            GatewayError::ResumeWindowExceeded {
                last_event_id: 0,
                oldest: 0,
            },
            GatewayError::AdminUnauthorized,
        ];
        // The one shared code: a resume and the admin API both say the stream is not here.
        assert_eq!(
            GatewayError::ResumeNotFound(String::new()).code(),
            GatewayError::StreamNotFound(String::new()).code()
        );
        let mut codes: Vec<_> = all.iter().map(|e| e.code()).collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), all.len());
    }
}
