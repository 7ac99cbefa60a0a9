//! Shared harness: the real gateway and the built-in mock upstream on `127.0.0.1:0`, a small
//! HTTP client over real sockets, and waiting on conditions with deadlines (never sleeps).
#![allow(dead_code)]

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;
use tidegate::auth::Keys;
use tidegate::config::Config;
use tidegate::mock::{MockSettings, MockUpstream, StatsSnapshot};
use tidegate::{gateway, Listeners};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Generous upper bound for anything that should happen "at once" on loopback, even on a
/// loaded 2-core CI machine. Tests wait on conditions up to this, never for a fixed time.
pub const PATIENCE: Duration = Duration::from_secs(10);

pub struct TestEnv {
    pub gateway: SocketAddr,
    pub admin: SocketAddr,
    pub mock: SocketAddr,
    pub shutdown: CancellationToken,
    mock_stop: CancellationToken,
    pub gateway_task: JoinHandle<Result<(), gateway::RunError>>,
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        self.shutdown.cancel();
        self.mock_stop.cancel();
    }
}

pub async fn start() -> TestEnv {
    start_with(MockSettings::default(), |_| {}).await
}

/// Starts the mock and the gateway in front of it; `configure` adjusts the gateway's config.
pub async fn start_with(
    mock_settings: MockSettings,
    configure: impl FnOnce(&mut Config),
) -> TestEnv {
    start_with_keys(mock_settings, configure).await.0
}

/// [`start_with`], also returning the gateway's API keys (read from `auth.keys_file` as the
/// binary reads them), so a test can reload them as SIGHUP does.
pub async fn start_with_keys(
    mock_settings: MockSettings,
    configure: impl FnOnce(&mut Config),
) -> (TestEnv, Option<Arc<Keys>>) {
    let mock_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mock = mock_listener.local_addr().unwrap();
    let mock_stop = CancellationToken::new();
    tokio::spawn(MockUpstream::new(mock_settings).serve(mock_listener, mock_stop.clone()));

    let mut config = Config::default();
    config.upstream.base_url =
        tidegate::config::UpstreamUrl::parse(&format!("http://{mock}/v1")).unwrap();
    config.shutdown.drain_timeout = Duration::from_secs(2);
    // The mock's per-request overrides, as in demo mode.
    config.upstream.forward_headers = vec!["x-mock-*".to_owned()];
    configure(&mut config);

    let api = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gateway = api.local_addr().unwrap();
    let admin = admin_listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let keys = Keys::from_config(&config.auth).expect("a valid keys file");
    let gateway_task = tokio::spawn(gateway::run_with_keys(
        config,
        Listeners {
            api,
            admin: Some(admin_listener),
        },
        shutdown.clone(),
        keys.clone(),
    ));
    let env = TestEnv {
        gateway,
        admin,
        mock,
        shutdown,
        mock_stop,
        gateway_task,
    };
    (env, keys)
}

/// Polls `check` until it returns Some, or panics after `within`. Bounded in time and count.
pub async fn wait_for<T, F, Fut>(what: &str, within: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + within;
    for _ in 0..100_000 {
        if let Some(v) = check().await {
            return v;
        }
        if tokio::time::Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("timed out after {within:?} waiting for {what}");
}

/// One HTTP/1.1 connection; dropping it (or calling `close`) closes the socket.
pub struct Conn {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    task: JoinHandle<()>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Conn {
    pub async fn open(addr: SocketAddr) -> Conn {
        let stream = TcpStream::connect(addr).await.unwrap();
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        let task = tokio::spawn(async move {
            let _ = conn.await;
        });
        Conn { sender, task }
    }

    pub async fn send(&mut self, request: Request<Full<Bytes>>) -> Response<Incoming> {
        tokio::time::timeout(PATIENCE, self.sender.send_request(request))
            .await
            .expect("response headers in time")
            .expect("response")
    }
}

/// An HTTP/2 (prior knowledge) connection.
pub struct H2Conn {
    sender: hyper::client::conn::http2::SendRequest<Full<Bytes>>,
    task: JoinHandle<()>,
}

impl Drop for H2Conn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl H2Conn {
    pub async fn open(addr: SocketAddr) -> H2Conn {
        let stream = TcpStream::connect(addr).await.unwrap();
        let (sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .unwrap();
        let task = tokio::spawn(async move {
            let _ = conn.await;
        });
        H2Conn { sender, task }
    }

    pub async fn send(&mut self, request: Request<Full<Bytes>>) -> Response<Incoming> {
        tokio::time::timeout(PATIENCE, self.sender.send_request(request))
            .await
            .expect("response headers in time")
            .expect("response")
    }

    /// Another handle on the connection, for streams sent concurrently.
    pub fn sender(&self) -> hyper::client::conn::http2::SendRequest<Full<Bytes>> {
        self.sender.clone()
    }
}

pub fn chat_body(model: &str, stream: bool) -> String {
    format!(
        r#"{{"model":"{model}","stream":{stream},"messages":[{{"role":"user","content":"Hello"}}]}}"#
    )
}

/// A JSON POST to the gateway's API; `extra` headers are added as given.
pub fn post(
    addr: SocketAddr,
    path: &str,
    body: &str,
    extra: &[(&str, &str)],
) -> Request<Full<Bytes>> {
    let mut builder = Request::post(format!("http://{addr}{path}"))
        .header("host", addr.to_string())
        .header("content-type", "application/json");
    for (name, value) in extra {
        builder = builder.header(*name, *value);
    }
    builder
        .body(Full::new(Bytes::from(body.to_owned())))
        .unwrap()
}

pub fn get(addr: SocketAddr, path: &str) -> Request<Full<Bytes>> {
    Request::get(format!("http://{addr}{path}"))
        .header("host", addr.to_string())
        .body(Full::new(Bytes::new()))
        .unwrap()
}

/// Sends one request on a fresh connection and reads the whole body.
pub async fn fetch(request: Request<Full<Bytes>>) -> (StatusCode, HeaderMap, Bytes) {
    let authority = request.uri().authority().unwrap().to_string();
    let mut conn = Conn::open(authority.parse().unwrap()).await;
    let response = conn.send(request).await;
    let (parts, body) = response.into_parts();
    let bytes = tokio::time::timeout(PATIENCE, body.collect())
        .await
        .expect("body in time")
        .expect("body")
        .to_bytes();
    (parts.status, parts.headers, bytes)
}

/// A chat completion request for `model` with no extra headers, on a fresh connection, read whole.
pub async fn chat(
    gateway: SocketAddr,
    model: &str,
    stream: bool,
) -> (StatusCode, HeaderMap, Bytes) {
    fetch(post(
        gateway,
        "/v1/chat/completions",
        &chat_body(model, stream),
        &[],
    ))
    .await
}

/// [`chat`], with a JSON answer.
pub async fn chat_json(
    gateway: SocketAddr,
    model: &str,
    stream: bool,
) -> (StatusCode, HeaderMap, Value) {
    fetch_json(post(
        gateway,
        "/v1/chat/completions",
        &chat_body(model, stream),
        &[],
    ))
    .await
}

pub async fn fetch_json(request: Request<Full<Bytes>>) -> (StatusCode, HeaderMap, Value) {
    let (status, headers, body) = fetch(request).await;
    let json = serde_json::from_slice(&body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&body)));
    (status, headers, json)
}

/// A response header's value as text ("" when absent or not text).
pub fn header<'a>(headers: &'a HeaderMap, name: &str) -> &'a str {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

/// The admin summary's `admission` part: slots, connections and refusals by reason.
pub async fn admission_summary(env: &TestEnv) -> Value {
    let (status, _, json) = fetch_json(get(env.admin, "/admin/summary")).await;
    assert_eq!(status, StatusCode::OK);
    json["admission"].clone()
}

pub async fn mock_stats(mock: SocketAddr) -> StatsSnapshot {
    let (status, _, body) = fetch(get(mock, "/stats")).await;
    assert_eq!(status, StatusCode::OK);
    serde_json::from_slice(&body).unwrap()
}

/// Waits (up to `within`) until the mock's counters satisfy `pred`; returns them.
pub async fn wait_for_mock(
    mock: SocketAddr,
    what: &str,
    within: Duration,
    pred: impl Fn(&StatsSnapshot) -> bool,
) -> StatsSnapshot {
    wait_for(what, within, || async {
        let s = mock_stats(mock).await;
        pred(&s).then_some(s)
    })
    .await
}

pub async fn mock_last_request(mock: SocketAddr) -> Value {
    let (status, _, body) = fetch(get(mock, "/stats/last-request")).await;
    assert_eq!(status, StatusCode::OK);
    serde_json::from_slice(&body).unwrap()
}

/// Opens a connection and starts a chat stream of `model` with extra (e.g. `x-mock-*`) headers;
/// returns the connection (dropping it closes the socket) and the response body.
pub async fn open_stream(
    gateway: SocketAddr,
    model: &str,
    extra: &[(&str, &str)],
) -> (Conn, Incoming) {
    let mut conn = Conn::open(gateway).await;
    let response = conn
        .send(post(
            gateway,
            "/v1/chat/completions",
            &chat_body(model, true),
            extra,
        ))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    (conn, response.into_body())
}

/// Opens `count` streams at once, each on its own connection (5 chunks 20 ms apart), and checks
/// that every one ends with `[DONE]`.
pub async fn streams_all_complete(gateway: SocketAddr, count: usize) {
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..count {
        clients.spawn(async move {
            let (_conn, body) = open_stream(
                gateway,
                "mock-1",
                &[("x-mock-chunks", "5"), ("x-mock-chunk-delay-ms", "20")],
            )
            .await;
            read_to_end(body).await
        });
    }
    while let Some(all) = clients.join_next().await {
        let all = all.unwrap();
        assert_eq!(sse_data(&all).last().map(String::as_str), Some("[DONE]"));
    }
}

/// Reads a streaming body to its end, returning the raw bytes.
pub async fn read_to_end(body: Incoming) -> Bytes {
    tokio::time::timeout(PATIENCE, body.collect())
        .await
        .expect("stream ended in time")
        .expect("stream body")
        .to_bytes()
}

/// Reads frames until `pred` holds for the bytes so far (or the body ends); returns them.
pub async fn read_until(body: &mut Incoming, pred: impl Fn(&[u8]) -> bool) -> Vec<u8> {
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !pred(&seen) {
        let frame = tokio::time::timeout_at(deadline, body.frame())
            .await
            .expect("frame in time");
        match frame {
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    seen.extend_from_slice(&data);
                }
            }
            Some(Err(e)) => panic!("body error: {e}"),
            None => break,
        }
    }
    seen
}

/// The `data` of every event in an SSE byte stream, parsed with our WHATWG parser.
pub fn sse_data(bytes: &[u8]) -> Vec<String> {
    tidegate::sse::parser::parse_all(bytes, 16 << 20)
        .expect("valid SSE")
        .into_iter()
        .map(|e| e.data)
        .collect()
}

/// The error object of the final event, asserting it is the last event and the only error.
pub fn final_error(bytes: &[u8]) -> Value {
    let data = sse_data(bytes);
    let last = data.last().expect("at least one event");
    let json: Value = serde_json::from_str(last).expect("final event is JSON");
    assert!(
        json.get("error").is_some(),
        "final event is an error: {last}"
    );
    let errors = data.iter().filter(|d| d.contains("\"error\"")).count();
    assert_eq!(errors, 1, "exactly one error event in {data:?}");
    assert!(
        !data.iter().any(|d| d == "[DONE]"),
        "no [DONE] after a failure"
    );
    assert!(bytes.ends_with(b"\n\n"), "the error event is complete");
    json["error"].clone()
}

/// Several mock upstreams (named `a`, `b`, ... in `[[upstreams]]`) behind one gateway.
pub struct Fleet {
    pub gateway: SocketAddr,
    pub admin: SocketAddr,
    /// Each mock's address and handle (for its fault schedules), in `[[upstreams]]` order.
    pub mocks: Vec<(SocketAddr, MockUpstream)>,
    pub shutdown: CancellationToken,
    mock_stop: CancellationToken,
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.shutdown.cancel();
        self.mock_stop.cancel();
    }
}

/// Names of the fleet's upstreams, in order.
pub const FLEET_NAMES: [&str; 4] = ["a", "b", "c", "d"];

/// Starts `count` (at most 4) mocks and a gateway with one `[[upstreams]]` entry per mock
/// (retry backoff shortened to 1–20 ms so tests run fast); `configure` adjusts the config.
pub async fn start_fleet(
    count: usize,
    mock_settings: MockSettings,
    configure: impl FnOnce(&mut Config),
) -> Fleet {
    let mock_stop = CancellationToken::new();
    let mut config = Config::default();
    let mut mocks = Vec::new();
    for name in FLEET_NAMES.iter().take(count) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mock = MockUpstream::new(mock_settings.clone());
        tokio::spawn(mock.clone().serve(listener, mock_stop.clone()));
        mocks.push((addr, mock));
        let mut upstream = tidegate::config::UpstreamConfig {
            name: (*name).to_owned(),
            ..Default::default()
        };
        upstream.base_url =
            tidegate::config::UpstreamUrl::parse(&format!("http://{addr}/v1")).unwrap();
        upstream.forward_headers = vec!["x-mock-*".to_owned()];
        config.upstreams.push(upstream);
    }
    config.shutdown.drain_timeout = Duration::from_secs(2);
    config.retry.initial_backoff = Duration::from_millis(1);
    config.retry.max_backoff = Duration::from_millis(20);
    configure(&mut config);
    config.validate().expect("a valid test config");

    let api = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gateway = api.local_addr().unwrap();
    let admin = admin_listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    tokio::spawn(gateway::run(
        config,
        Listeners {
            api,
            admin: Some(admin_listener),
        },
        shutdown.clone(),
    ));
    Fleet {
        gateway,
        admin,
        mocks,
        shutdown,
        mock_stop,
    }
}

impl Fleet {
    /// Mock `i`'s counters, read in-process.
    pub fn stats(&self, i: usize) -> StatsSnapshot {
        self.mocks[i].1.stats().snapshot()
    }

    pub fn mock(&self, i: usize) -> &MockUpstream {
        &self.mocks[i].1
    }
}

/// The admin listener's `/metrics` text.
pub async fn scrape(env: &TestEnv) -> String {
    let (status, headers, body) = fetch(get(env.admin, "/metrics")).await;
    assert_eq!(status, StatusCode::OK);
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    String::from_utf8(body.to_vec()).expect("UTF-8")
}

/// The value of the series `series` (its name and labels exactly as exported), if present.
pub fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}
