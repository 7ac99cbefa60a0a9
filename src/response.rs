//! JSON responses: health answers, the admin API's bodies, and every error raised before a
//! response has started (with `Allow` on a 405, `WWW-Authenticate` on a 401). Generic over the
//! body type, so the router, the admin API and the relay share them without importing each
//! other.

use bytes::Bytes;
use http::header::{self, HeaderValue};
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
        | GatewayError::ServerOverloaded { retry_after } => {
            set_retry_after(headers, *retry_after);
        }
        GatewayError::RateLimited {
            retry_after, limit, ..
        } => {
            set_retry_after(headers, *retry_after);
            // The headers the OpenAI SDKs read; `reset` in OpenAI's own "250ms" / "2s" form.
            headers.insert("x-ratelimit-limit-requests", HeaderValue::from(*limit));
            headers.insert("x-ratelimit-remaining-requests", HeaderValue::from(0u32));
            let millis = u64::try_from(retry_after.as_millis())
                .unwrap_or(u64::MAX)
                .max(1);
            if let Ok(reset) = HeaderValue::from_str(&format!("{millis}ms")) {
                headers.insert("x-ratelimit-reset-requests", reset);
            }
        }
        _ => {}
    }
    response
}

/// `retry-after` in whole seconds, rounded up and at least 1 (what every HTTP client reads), and
/// `retry-after-ms` (what the OpenAI SDKs read first).
fn set_retry_after(headers: &mut http::HeaderMap, wait: std::time::Duration) {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    headers.insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
    let millis = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX);
    headers.insert("retry-after-ms", HeaderValue::from(millis.max(1)));
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
}
