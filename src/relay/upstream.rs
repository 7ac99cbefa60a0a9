//! The client side: one pooled HTTP client to the configured upstream, with the gateway's key.
//!
//! The client's own `Authorization` is never forwarded; only an allowlist of request headers
//! goes upstream, and the body goes byte for byte. Dropping the future returned by [`Upstream::send`]
//! (or the response body it yields) closes the upstream HTTP/1.1 connection or resets the HTTP/2
//! stream: that is how a client that goes away cancels its upstream request.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::config::{Limits, UpstreamConfig, UpstreamProtocol, UpstreamUrl};
use crate::error::GatewayError;
use crate::request_id;

/// The upstream HTTP/2 connection's flow-control window: wide, since thousands of streams share
/// it; each stream's own window (`max_buffered_bytes`) bounds what one stream can hold.
const UPSTREAM_H2_CONNECTION_WINDOW: u32 = 1 << 30;

/// Interval and timeout of PINGs that find a dead upstream HTTP/2 connection.
const UPSTREAM_H2_KEEPALIVE: Duration = Duration::from_secs(20);

/// The smallest HTTP/1.1 buffer hyper accepts.
const MIN_HTTP1_BUFFER: usize = 8 * 1024;

/// Request headers from the client that are always forwarded upstream; `upstream.forward_headers`
/// adds more. Everything else (including `authorization`, cookies, hop-by-hop headers and
/// `accept-encoding`, so streams are never compressed) stays at the gateway.
const FORWARDED_REQUEST_HEADERS: [HeaderName; 4] = [
    header::CONTENT_TYPE,
    header::ACCEPT,
    header::USER_AGENT,
    HeaderName::from_static("openai-beta"),
];

type HttpsClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// One entry of `upstream.forward_headers`.
#[derive(Debug, Clone)]
enum HeaderPattern {
    Exact(HeaderName),
    Prefix(String),
}

impl HeaderPattern {
    fn parse(pattern: &str) -> Option<HeaderPattern> {
        match pattern.strip_suffix('*') {
            Some(prefix) => Some(HeaderPattern::Prefix(prefix.to_owned())),
            None => HeaderName::from_bytes(pattern.as_bytes())
                .ok()
                .map(HeaderPattern::Exact),
        }
    }

    fn matches(&self, name: &HeaderName) -> bool {
        match self {
            HeaderPattern::Exact(exact) => exact == name,
            HeaderPattern::Prefix(prefix) => name.as_str().starts_with(prefix.as_str()),
        }
    }
}

/// The upstream: where requests go and with which key.
#[derive(Clone)]
pub struct Upstream {
    client: HttpsClient,
    base_url: UpstreamUrl,
    /// `Bearer <key>`, marked sensitive so hyper never logs it; None sends no Authorization.
    authorization: Option<HeaderValue>,
    /// The key itself, to scrub from the error bodies that are relayed (upstreams echo the key
    /// they were given). Shared: a stream answered early keeps it until its upstream answers.
    key: Option<Arc<str>>,
    /// Upstream response headers must arrive within this.
    first_byte_timeout: Duration,
    /// Extra client headers to forward (validated by the config).
    extra_headers: Vec<HeaderPattern>,
}

impl Upstream {
    /// `read_buffer` bounds what one read from an HTTP/1.1 upstream holds (at least 8 KiB, the
    /// least hyper accepts): with backpressure it is part of a stream's memory.
    pub fn new(
        config: &UpstreamConfig,
        limits: &Limits,
        read_buffer: usize,
    ) -> Result<Upstream, GatewayError> {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(config.connect_timeout(limits)));
        let protocol = config.effective_protocol();
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_webpki_roots()
            .https_or_http()
            .enable_http1();
        // ALPN offers h2 too unless the upstream is to get HTTP/1.1 only.
        let https = if protocol == UpstreamProtocol::Http1 {
            https.wrap_connector(http)
        } else {
            https.enable_http2().wrap_connector(http)
        };
        let mut builder = Client::builder(TokioExecutor::new());
        builder
            .pool_timer(TokioTimer::new())
            // Shorter than the server's keep-alive: we close first (`idle_connection_timeout`).
            .pool_idle_timeout(config.idle_connection_timeout)
            .timer(TokioTimer::new())
            .http1_max_buf_size(read_buffer.max(MIN_HTTP1_BUFFER))
            // Each stream may hold at most one read buffer's worth unread (backpressure); the
            // connection's window is wide so that streams whose clients are slow do not stall
            // the streams of others sharing the connection.
            .http2_initial_stream_window_size(u32::try_from(read_buffer).unwrap_or(u32::MAX))
            .http2_initial_connection_window_size(UPSTREAM_H2_CONNECTION_WINDOW)
            .http2_keep_alive_interval(UPSTREAM_H2_KEEPALIVE)
            .http2_keep_alive_timeout(UPSTREAM_H2_KEEPALIVE);
        if protocol == UpstreamProtocol::Http2 {
            builder.http2_only(true);
        }
        let client = builder.build(https);
        let authorization = match &config.api_key {
            Some(key) => {
                let mut value = HeaderValue::from_str(&format!("Bearer {}", key.expose()))
                    .map_err(|_| {
                        GatewayError::UpstreamFailed(
                            "the upstream key contains characters not allowed in a header".into(),
                        )
                    })?;
                value.set_sensitive(true);
                Some(value)
            }
            None => None,
        };
        Ok(Upstream {
            client,
            base_url: config.base_url.clone(),
            authorization,
            key: config.api_key.as_ref().map(|key| Arc::from(key.expose())),
            first_byte_timeout: config.first_byte_timeout(limits),
            extra_headers: config
                .forward_headers
                .iter()
                .filter_map(|p| HeaderPattern::parse(p))
                .collect(),
        })
    }

    /// Sends one request; the future resolves with the upstream's response headers. It owns
    /// everything it needs (so a stream can keep waiting on it after its response has started),
    /// and dropping it cancels the request. `suffix` is the path below the base URL, e.g.
    /// "/chat/completions".
    pub fn send(
        &self,
        method: Method,
        suffix: &str,
        query: Option<&str>,
        client_headers: &HeaderMap,
        request_id: &HeaderValue,
        body: Bytes,
    ) -> impl Future<Output = Result<Response<Incoming>, GatewayError>> + Send + 'static {
        let request = self.build_request(method, suffix, query, client_headers, request_id, body);
        let client = self.client.clone();
        let first_byte_timeout = self.first_byte_timeout;
        async move {
            let request = request?;
            match tokio::time::timeout(first_byte_timeout, client.request(request)).await {
                Err(_) => Err(GatewayError::UpstreamTimeout(first_byte_timeout)),
                Ok(Ok(response)) => Ok(response),
                Ok(Err(e)) if e.is_connect() => {
                    Err(GatewayError::UpstreamUnreachable(error_chain(&e)))
                }
                Ok(Err(e)) => Err(GatewayError::UpstreamFailed(error_chain(&e))),
            }
        }
    }

    fn build_request(
        &self,
        method: Method,
        suffix: &str,
        query: Option<&str>,
        client_headers: &HeaderMap,
        request_id: &HeaderValue,
        body: Bytes,
    ) -> Result<Request<Full<Bytes>>, GatewayError> {
        let uri = self.base_url.join(suffix, query);
        let mut builder = Request::builder().method(method).uri(uri.as_str());
        if let Some(headers) = builder.headers_mut() {
            for (name, value) in client_headers {
                if FORWARDED_REQUEST_HEADERS.contains(name)
                    || self.extra_headers.iter().any(|p| p.matches(name))
                {
                    headers.append(name.clone(), value.clone());
                }
            }
            headers.insert(request_id::HEADER, request_id.clone());
            if let Some(auth) = &self.authorization {
                headers.insert(header::AUTHORIZATION, auth.clone());
            }
        }
        builder
            .body(Full::new(body))
            .map_err(|e| GatewayError::UpstreamFailed(format!("invalid upstream request: {e}")))
    }

    /// The base URL, for display (it holds no secret: the key travels in a header).
    pub fn base_url(&self) -> &str {
        self.base_url.as_str()
    }

    /// The gateway's key for this upstream, if it sends one: what [`scrub_key`] removes.
    pub fn key(&self) -> Option<&Arc<str>> {
        self.key.as_ref()
    }
}

/// Whether an upstream's error status is about the credentials the gateway sent (or failed to
/// send): a client's own `Authorization` never goes upstream, so a 401 or 403 is never the
/// client's to see. Its body may echo the key, and its status would make an SDK report a bad
/// key that is not the client's.
pub fn rejects_our_credentials(status: StatusCode) -> bool {
    status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN
}

/// What replaces the key in a relayed body.
const REDACTED: &[u8] = b"<redacted>";

/// `body` with every occurrence of `key` replaced by `<redacted>`; the same bytes when there is
/// none. Only the whole key is found: a body that echoes part of it (`sk-ab...xyz`) reveals no
/// more than that part.
pub fn scrub_key(body: Bytes, key: Option<&str>) -> Bytes {
    let Some(key) = key.filter(|k| !k.is_empty()) else {
        return body;
    };
    let finder = memchr::memmem::Finder::new(key.as_bytes());
    let mut found = finder.find_iter(&body).peekable();
    if found.peek().is_none() {
        return body;
    }
    let mut scrubbed = Vec::with_capacity(body.len());
    let mut copied = 0;
    // Bounded: find_iter yields non-overlapping matches in order, each past the previous one.
    for start in found {
        scrubbed.extend_from_slice(&body[copied..start]);
        scrubbed.extend_from_slice(REDACTED);
        copied = start + key.len();
    }
    scrubbed.extend_from_slice(&body[copied..]);
    Bytes::from(scrubbed)
}

/// "a: b: c" from an error and its sources, for messages that say what actually failed.
pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    // Bounded: error chains are short, but never trust a cycle.
    for _ in 0..8 {
        let Some(s) = source else { break };
        let part = s.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_copy_of_the_key_is_scrubbed() {
        let key = "sk-test-0123456789";
        let body = Bytes::from(format!(
            r#"{{"error":{{"message":"Incorrect API key provided: {key}. Key {key}{key}."}}}}"#
        ));
        let scrubbed = scrub_key(body, Some(key));
        let text = std::str::from_utf8(&scrubbed).unwrap();
        assert!(!text.contains(key), "{text}");
        assert_eq!(
            text,
            r#"{"error":{"message":"Incorrect API key provided: <redacted>. Key <redacted><redacted>."}}"#
        );
        // Nothing to scrub: the same bytes, not a copy.
        let body = Bytes::from_static(b"{\"error\":{}}");
        let same = scrub_key(body.clone(), Some(key));
        assert_eq!(same.as_ptr(), body.as_ptr());
        assert_eq!(scrub_key(body.clone(), None), body);
        assert_eq!(scrub_key(body.clone(), Some("")), body);
    }

    #[test]
    fn only_401_and_403_are_about_our_credentials() {
        assert!(rejects_our_credentials(StatusCode::UNAUTHORIZED));
        assert!(rejects_our_credentials(StatusCode::FORBIDDEN));
        for status in [400, 404, 408, 429, 500, 502, 503] {
            assert!(!rejects_our_credentials(
                StatusCode::from_u16(status).unwrap()
            ));
        }
    }
}
