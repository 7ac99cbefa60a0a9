//! The client side: one worker's connections to one configured upstream, with the gateway's
//! key. [`backends`] holds what all workers share (breakers, in-flight counts, routes),
//! [`pool`] the HTTP/2 connections that grow with demand, [`body`] the response body that
//! holds a stream's claims until it ends.
//!
//! The client's own `Authorization` is never forwarded; only an allowlist of request headers
//! goes upstream, and the body goes byte for byte. Dropping the future returned by [`Upstream::send`]
//! (or the response body it yields) closes the upstream HTTP/1.1 connection or resets the HTTP/2
//! stream: that is how a client that goes away cancels its upstream request.

pub mod backends;
pub mod body;
mod counted;
pub mod pool;

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri};
use http_body_util::Full;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;

use self::counted::CountingConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use self::body::UpstreamBody;
use self::pool::{BoxingExecutor, H2Pool, PoolError, PoolSettings};
use crate::config::{Limits, UpstreamConfig, UpstreamProtocol, UpstreamUrl};
use crate::error::GatewayError;
use crate::request_id;

/// The least flow-control window of an upstream HTTP/2 connection: 1 GiB (see
/// [`connection_window`]).
const UPSTREAM_H2_CONNECTION_WINDOW: u32 = 1 << 30;

/// The largest window HTTP/2 allows (RFC 9113, 6.9.1).
const H2_MAX_WINDOW: u32 = (1 << 31) - 1;

/// An upstream HTTP/2 connection's window. Each stream's own window
/// (`streams.max_buffered_bytes`) bounds what it may hold unread; the connection's is at least
/// all its streams' windows together, so streams whose clients stopped reading can never use up
/// the connection's window and stall the other streams on it. (Only past HTTP/2's 2 GiB
/// maximum, e.g. 10,000 streams of 16 MiB, can they; the default is 100 × 64 KiB.)
fn connection_window(streams_per_connection: u32, stream_window: u32) -> u32 {
    let all_streams = u64::from(streams_per_connection) * u64::from(stream_window);
    let window = all_streams.max(u64::from(UPSTREAM_H2_CONNECTION_WINDOW));
    u32::try_from(window)
        .unwrap_or(H2_MAX_WINDOW)
        .min(H2_MAX_WINDOW)
}

/// Interval and timeout of PINGs that find a dead upstream HTTP/2 connection.
const UPSTREAM_H2_KEEPALIVE: Duration = Duration::from_secs(20);

/// Streams our HTTP/2 client remembers after resetting them, per connection, so that frames
/// the upstream had already sent for them are ignored instead of being treated as protocol
/// errors. h2's default (10) is sized for a client that rarely cancels; a gateway cancels a
/// stream every time a client goes away, in waves of thousands (issue 10, requirement 3).
const UPSTREAM_H2_RESET_STREAMS_REMEMBERED: usize = 8192;

/// How long a reset stream is remembered: frames in flight when we reset arrive within a round
/// trip; h2's default (1 s) is short for a far upstream under load.
const UPSTREAM_H2_RESET_REMEMBERED_FOR: Duration = Duration::from_secs(10);

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

type HttpsClient = Client<CountingConnector<HttpsConnector<HttpConnector>>, Full<Bytes>>;

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

/// How one worker reaches one upstream.
enum Transport {
    /// HTTP/1.1 through hyper-util's pool (one connection per stream).
    Http1(HttpsClient),
    /// HTTP/2 through our growing pool. With `protocol = "auto"`, an `https://` upstream that
    /// does not offer h2 switches `use_http1` on and the requests go to `http1` instead.
    Http2 {
        pool: H2Pool,
        http1: HttpsClient,
        use_http1: Arc<AtomicBool>,
    },
}

/// One configured upstream, as one worker thread reaches it: where requests go, with which key.
pub struct Upstream {
    name: Arc<str>,
    /// `name` as a header value, made once (`x-tidegate-upstream` on every response); None if
    /// the name cannot be one (the config's name rules make that impossible).
    name_header: Option<HeaderValue>,
    transport: Transport,
    base_url: UpstreamUrl,
    /// `Bearer <key>`, marked sensitive so hyper never logs it; None sends no Authorization.
    authorization: Option<HeaderValue>,
    /// The key itself, to scrub from the error bodies that are relayed (upstreams echo the key
    /// they were given). Shared: a stream answered early keeps it until its upstream answers.
    key: Option<Arc<str>>,
    /// Upstream response headers must arrive within this.
    first_byte_timeout: Duration,
    /// Longest silence between body bytes.
    idle_timeout: Duration,
    /// Extra client headers to forward (validated by the config).
    extra_headers: Vec<HeaderPattern>,
}

/// The open connections to one upstream, over every worker, by protocol: each worker's HTTP/2
/// pool and HTTP/1.1 client count theirs here.
#[derive(Debug, Clone, Default)]
pub struct OpenConnections {
    pub http1: Arc<AtomicU64>,
    pub http2: Arc<AtomicU64>,
}

impl Upstream {
    /// `read_buffer` bounds what one read from an HTTP/1.1 upstream holds (at least 8 KiB, the
    /// least hyper accepts) and is each HTTP/2 stream's window: with backpressure it is part of
    /// a stream's memory.
    /// `connections` counts this upstream's open connections over all workers.
    pub fn new(
        config: &UpstreamConfig,
        limits: &Limits,
        read_buffer: usize,
        connections: &OpenConnections,
    ) -> Result<Upstream, GatewayError> {
        let protocol = config.effective_protocol();
        let connect_timeout = config.connect_timeout(limits);
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(connect_timeout));
        let tls = tls_config(config.ca_file.as_deref())?;
        // ALPN offers what the protocol allows: h2 and http/1.1 for auto, one of them otherwise.
        let alpn = || {
            hyper_rustls::HttpsConnectorBuilder::new()
                .with_tls_config(tls.clone())
                .https_or_http()
        };
        let h1_connector = CountingConnector::new(
            alpn().enable_http1().wrap_connector(http.clone()),
            connections.http1.clone(),
        );
        let stream_window = u32::try_from(read_buffer).unwrap_or(u32::MAX);
        let mut h1 = Client::builder(TokioExecutor::new());
        h1.pool_timer(TokioTimer::new())
            .pool_idle_timeout(config.idle_connection_timeout)
            .timer(TokioTimer::new())
            .http1_max_buf_size(read_buffer.max(MIN_HTTP1_BUFFER));
        let http1 = h1.build(h1_connector);
        let h2_wanted = match protocol {
            UpstreamProtocol::Http1 => false,
            UpstreamProtocol::Http2 => true,
            // Plain http:// has no ALPN to ask with; prior knowledge must be configured.
            UpstreamProtocol::Auto => config.base_url.is_https(),
        };
        let transport = if h2_wanted {
            let connector = match protocol {
                UpstreamProtocol::Http2 => alpn().enable_http2().wrap_connector(http),
                _ => alpn().enable_all_versions().wrap_connector(http),
            };
            let per_connection = config.max_streams_per_connection.max(1);
            let connection_window = connection_window(per_connection, stream_window);
            let mut h2 = hyper::client::conn::http2::Builder::new(BoxingExecutor);
            h2.timer(TokioTimer::new())
                .initial_stream_window_size(stream_window)
                .initial_connection_window_size(connection_window)
                .keep_alive_interval(UPSTREAM_H2_KEEPALIVE)
                .keep_alive_timeout(UPSTREAM_H2_KEEPALIVE)
                .max_concurrent_reset_streams(UPSTREAM_H2_RESET_STREAMS_REMEMBERED)
                .reset_stream_duration(UPSTREAM_H2_RESET_REMEMBERED_FOR)
                // Our peer is an upstream the operator configured, not an unknown client: its
                // protocol slips must not make us drop the connection and every stream on it.
                .max_local_error_reset_streams(None);
            let target = origin(&config.base_url)?;
            let pool = H2Pool::new(
                connector,
                h2,
                target,
                PoolSettings {
                    max_streams_per_connection: per_connection as usize,
                    idle_timeout: config.idle_connection_timeout,
                    connect_timeout,
                    require_h2: protocol == UpstreamProtocol::Http2,
                    open_connections: connections.http2.clone(),
                },
            );
            Transport::Http2 {
                pool,
                http1,
                use_http1: Arc::new(AtomicBool::new(false)),
            }
        } else {
            Transport::Http1(http1)
        };
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
            name: Arc::from(config.name.as_str()),
            name_header: HeaderValue::from_str(&config.name).ok(),
            transport,
            base_url: config.base_url.clone(),
            authorization,
            key: config.api_key.as_ref().map(|key| Arc::from(key.expose())),
            first_byte_timeout: config.first_byte_timeout(limits),
            idle_timeout: config.idle_timeout(limits),
            extra_headers: config
                .forward_headers
                .iter()
                .filter_map(|p| HeaderPattern::parse(p))
                .collect(),
        })
    }

    /// Sends one request; the future resolves with the upstream's response headers (within the
    /// first byte timeout, which includes waiting for a connection). It owns everything it
    /// needs (so a stream can keep waiting on it after its response has started), and dropping
    /// it cancels the request. `suffix` is the path below the base URL, e.g.
    /// "/chat/completions". `fresh_after`: a previous attempt lost its connection at that
    /// instant, so over HTTP/2 only a connection opened since will do.
    #[allow(clippy::too_many_arguments)]
    pub fn send(
        &self,
        fresh_after: Option<Instant>,
        method: Method,
        suffix: &str,
        query: Option<&str>,
        client_headers: &HeaderMap,
        request_id: &HeaderValue,
        body: Bytes,
    ) -> impl Future<Output = Result<Response<UpstreamBody>, GatewayError>> + Send + 'static {
        let request = self.build_request(method, suffix, query, client_headers, request_id, body);
        let first_byte_timeout = self.first_byte_timeout;
        let route = match &self.transport {
            Transport::Http1(client) => Route::Http1(client.clone()),
            Transport::Http2 {
                http1, use_http1, ..
            } if use_http1.load(Ordering::Relaxed) => Route::Http1(http1.clone()),
            Transport::Http2 {
                pool,
                http1,
                use_http1,
            } => Route::Http2(pool.clone(), http1.clone(), use_http1.clone()),
        };
        async move {
            let request = request?;
            let exchange = async move {
                match route {
                    Route::Http1(client) => send_http1(&client, request).await,
                    Route::Http2(pool, http1, use_http1) => match pool.acquire(fresh_after).await {
                        Ok((mut sender, lease)) => match sender.send_request(request).await {
                            Ok(response) => Ok(response.map(|b| UpstreamBody::new(b, Some(lease)))),
                            Err(e) => {
                                // GOAWAY or a broken connection: retries go elsewhere.
                                lease.connection_failed();
                                Err(GatewayError::UpstreamFailed(error_chain(&e)))
                            }
                        },
                        Err(PoolError::NotHttp2) => {
                            use_http1.store(true, Ordering::Relaxed);
                            send_http1(&http1, request).await
                        }
                        Err(PoolError::Connect(e)) => {
                            Err(GatewayError::UpstreamUnreachable(e.to_string()))
                        }
                    },
                }
            };
            match tokio::time::timeout(first_byte_timeout, exchange).await {
                Err(_) => Err(GatewayError::UpstreamTimeout(first_byte_timeout)),
                Ok(result) => result,
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

    /// The configured name (`upstreams.name`).
    pub fn name(&self) -> &Arc<str> {
        &self.name
    }

    /// The name as a response header value.
    pub fn name_header(&self) -> Option<&HeaderValue> {
        self.name_header.as_ref()
    }

    /// Longest silence allowed between body bytes from this upstream.
    pub fn idle_timeout(&self) -> Duration {
        self.idle_timeout
    }

    /// The gateway's key for this upstream, if it sends one: what [`scrub_key`] removes.
    pub fn key(&self) -> Option<&Arc<str>> {
        self.key.as_ref()
    }
}

/// TLS towards upstreams: TLS 1.2 and 1.3 with the `ring` provider, the public web roots, and
/// the certificates of `ca_file` when set (PEM, read with rustls' own PEM support).
fn tls_config(ca_file: Option<&str>) -> Result<rustls::ClientConfig, GatewayError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;

    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(file) = ca_file {
        let unreadable = |e: &dyn std::fmt::Display| {
            GatewayError::UpstreamFailed(format!("upstream ca_file {file:?}: {e}"))
        };
        let mut added = 0;
        // Bounded: by the file's size.
        for cert in CertificateDer::pem_file_iter(file).map_err(|e| unreadable(&e))? {
            let cert = cert.map_err(|e| unreadable(&e))?;
            roots.add(cert).map_err(|e| unreadable(&e))?;
            added += 1;
        }
        if added == 0 {
            return Err(unreadable(&"no certificate in the file"));
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| GatewayError::UpstreamFailed(format!("TLS setup: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(config)
}

/// Where one request goes (chosen before the future is built, so it is `'static`).
enum Route {
    Http1(HttpsClient),
    Http2(H2Pool, HttpsClient, Arc<AtomicBool>),
}

/// One request through hyper-util's HTTP/1.1 pool; its error as ours (a failed connect is
/// `upstream_unreachable`).
async fn send_http1(
    client: &HttpsClient,
    request: Request<Full<Bytes>>,
) -> Result<Response<UpstreamBody>, GatewayError> {
    match client.request(request).await {
        Ok(response) => Ok(response.map(|b| UpstreamBody::new(b, None))),
        Err(e) if e.is_connect() => Err(GatewayError::UpstreamUnreachable(error_chain(&e))),
        Err(e) => Err(GatewayError::UpstreamFailed(error_chain(&e))),
    }
}

/// `scheme://authority/` of a base URL: what the HTTP/2 pool dials.
fn origin(base_url: &UpstreamUrl) -> Result<Uri, GatewayError> {
    let uri: Uri = base_url
        .as_str()
        .parse()
        .map_err(|e| GatewayError::UpstreamFailed(format!("invalid upstream URL: {e}")))?;
    let mut parts = uri.into_parts();
    parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
    Uri::from_parts(parts)
        .map_err(|e| GatewayError::UpstreamFailed(format!("invalid upstream URL: {e}")))
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
    fn an_unreadable_or_empty_ca_file_is_refused_with_its_name() {
        let missing = tls_config(Some("/nonexistent/ca.pem"))
            .unwrap_err()
            .to_string();
        assert!(missing.contains("/nonexistent/ca.pem"), "{missing}");
        let empty =
            std::env::temp_dir().join(format!("tidegate-empty-ca-{}.pem", std::process::id()));
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let path = empty.to_string_lossy().into_owned();
        let none = tls_config(Some(&path)).unwrap_err().to_string();
        let _ = std::fs::remove_file(&empty);
        assert!(none.contains("no certificate"), "{none}");
        assert!(tls_config(None).is_ok());
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
