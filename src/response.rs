//! JSON responses: health answers, the admin API's bodies, and every error raised before a
//! response has started (with `Allow` on a 405, `WWW-Authenticate` on a 401). Generic over the
//! body type, so the router, the admin API and the relay share them without importing each
//! other.

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};

use crate::error::GatewayError;

/// A `status` response with a JSON `body`.
pub fn json<B: From<Bytes>>(status: StatusCode, body: impl Into<Bytes>) -> Response<B> {
    let mut response = Response::new(B::from(body.into()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// The OpenAI-shaped JSON response for an error raised before any response started.
pub fn error<B: From<Bytes>>(error: &GatewayError) -> Response<B> {
    let mut response = json(error.status(), error.to_json());
    let headers = response.headers_mut();
    match error {
        GatewayError::MethodNotAllowed { allowed, .. } => {
            headers.insert(header::ALLOW, HeaderValue::from_static(allowed));
        }
        GatewayError::AdminUnauthorized | GatewayError::InvalidApiKey { .. } => {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        GatewayError::NoUpstreamAvailable { retry_after }
        | GatewayError::TooManyStreams { retry_after, .. }
        | GatewayError::ServerOverloaded { retry_after }
        | GatewayError::TooManyConnections { retry_after, .. }
        | GatewayError::ConnectionsExhausted { retry_after } => {
            set_retry_after(headers, *retry_after);
        }
        GatewayError::RateLimited {
            retry_after, limit, ..
        } => {
            set_retry_after(headers, *retry_after);
            // The headers the OpenAI SDKs read; `reset` in OpenAI's own "250ms" / "2s" form.
            headers.insert(X_RATELIMIT_LIMIT_REQUESTS, HeaderValue::from(*limit));
            headers.insert(
                X_RATELIMIT_REMAINING_REQUESTS,
                HeaderValue::from_static("0"),
            );
            headers.insert(X_RATELIMIT_RESET_REQUESTS, millis_value(*retry_after));
        }
        _ => {}
    }
    response
}

/// The whole HTTP/1.1 response for `error`, as bytes to write on a connection that is refused
/// before a byte of it is read (the acceptor's connection caps), then closed: the same status,
/// headers and OpenAI-shaped body as [`error`], and `connection: close`.
pub fn http1_bytes(error: &GatewayError) -> Bytes {
    let response: Response<Bytes> = self::error(error);
    let (parts, body) = response.into_parts();
    let mut out = Vec::with_capacity(256 + body.len());
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(parts.status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(
        parts
            .status
            .canonical_reason()
            .unwrap_or_default()
            .as_bytes(),
    );
    out.extend_from_slice(b"\r\n");
    for (name, value) in &parts.headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("content-length: {}\r\n", body.len()).as_bytes());
    out.extend_from_slice(b"connection: close\r\n\r\n");
    out.extend_from_slice(&body);
    Bytes::from(out)
}

/// `retry-after` in whole seconds, rounded up and at least 1 (what every HTTP client reads), and
/// `retry-after-ms` (what the OpenAI SDKs read first).
fn set_retry_after(headers: &mut http::HeaderMap, wait: std::time::Duration) {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    headers.insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
    let millis = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX);
    headers.insert(RETRY_AFTER_MS, HeaderValue::from(millis.max(1)));
}

// The refusal headers' names, made once: a `&str` name is parsed again on every insert, and
// refusals are answered by the thousand.
const RETRY_AFTER_MS: HeaderName = HeaderName::from_static("retry-after-ms");
const X_RATELIMIT_LIMIT_REQUESTS: HeaderName =
    HeaderName::from_static("x-ratelimit-limit-requests");
const X_RATELIMIT_REMAINING_REQUESTS: HeaderName =
    HeaderName::from_static("x-ratelimit-remaining-requests");
const X_RATELIMIT_RESET_REQUESTS: HeaderName =
    HeaderName::from_static("x-ratelimit-reset-requests");

/// `wait` in whole milliseconds, at least 1, as `"250ms"`, without the formatting machinery.
fn millis_value(wait: std::time::Duration) -> HeaderValue {
    let millis = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX).max(1);
    // u64::MAX has 20 digits, then "ms".
    let mut text = Vec::with_capacity(22);
    crate::mock::push_u64(&mut text, millis);
    text.extend_from_slice(b"ms");
    // Digits and "ms" only: always a valid header value.
    HeaderValue::from_maybe_shared(Bytes::from(text))
        .unwrap_or_else(|_| HeaderValue::from_static("1ms"))
}

/// The 405 error for `request`, naming the methods its path allows (`"GET, DELETE"`).
pub fn method_not_allowed<B>(request: &Request<B>, allowed: &'static str) -> GatewayError {
    GatewayError::MethodNotAllowed {
        method: request.method().to_string(),
        path: request.uri().path().to_owned(),
        allowed,
    }
}

/// `Ok` when `request` uses `method`, else the 405 naming `allowed`.
pub fn require_method<B>(
    request: &Request<B>,
    method: &Method,
    allowed: &'static str,
) -> Result<(), GatewayError> {
    if request.method() == method {
        Ok(())
    } else {
        Err(method_not_allowed(request, allowed))
    }
}

/// The 404 for a path nothing serves.
pub fn not_found<B>(request: &Request<B>) -> GatewayError {
    GatewayError::NotFound {
        method: request.method().to_string(),
        path: request.uri().path().to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_405_names_the_allowed_methods_and_a_401_the_scheme() {
        let request = Request::post("/admin/summary").body(()).unwrap();
        let response: Response<Bytes> = error(&method_not_allowed(&request, "GET"));
        assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(response.headers()[header::ALLOW], "GET");
        assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
        let body: serde_json::Value = serde_json::from_slice(response.body()).unwrap();
        assert_eq!(body["error"]["code"], "method_not_allowed");

        let response: Response<Bytes> = error(&GatewayError::AdminUnauthorized);
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(response.headers()[header::WWW_AUTHENTICATE], "Bearer");
        assert!(require_method(&request, &Method::POST, "POST").is_ok());
    }

    #[test]
    fn the_reset_header_is_whole_milliseconds_at_least_one() {
        use std::time::Duration;
        assert_eq!(millis_value(Duration::from_micros(250_400)), "250ms");
        assert_eq!(millis_value(Duration::ZERO), "1ms");
        assert_eq!(millis_value(Duration::from_secs(2)), "2000ms");
        assert_eq!(millis_value(Duration::MAX), "18446744073709551615ms");
    }
}
