//! Tests over real sockets on 127.0.0.1:0. Nothing sleeps to synchronize:
//! waits are on counters ([`MockStats::wait_until`]) or on the socket, each
//! bounded by a deadline.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use super::sse::WORDS;
use super::*;

/// Upper bound for anything that should happen "promptly".
const DEADLINE: Duration = Duration::from_secs(5);
/// What the gateway's tests need: cancellation noticed within a second.
const CANCEL_BOUND: Duration = Duration::from_secs(1);

struct Server {
    addr: SocketAddr,
    upstream: MockUpstream,
    shutdown: CancellationToken,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl Server {
    fn stats(&self) -> Arc<MockStats> {
        self.upstream.stats()
    }

    async fn wait(&self, what: &str, cond: impl FnMut(&StatsSnapshot) -> bool) -> StatsSnapshot {
        match self.stats().wait_until(DEADLINE, cond).await {
            Ok(s) => s,
            Err(s) => panic!("timed out waiting for {what}; stats: {s:?}"),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn start(settings: MockSettings) -> Server {
    let (addr, upstream, shutdown, task) = spawn(settings, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    Server {
        addr,
        upstream,
        shutdown,
        task: Some(task),
    }
}

/// Quick defaults: 5 chunks, 1 ms apart.
fn fast() -> MockSettings {
    MockSettings {
        chunks: 5,
        chunk_delay: Duration::from_millis(1),
        ..MockSettings::default()
    }
}

// ---------------------------------------------------------------------------
// A raw HTTP/1.1 client, so tests see exactly what went on the wire,
// including chunk boundaries (one chunk per body frame).

#[derive(Debug)]
struct Raw {
    status: u16,
    headers: Vec<(String, String)>,
    /// Chunked bodies: each chunk. Otherwise empty.
    chunks: Vec<Vec<u8>>,
    /// The body (chunks concatenated, or the content-length body).
    body: Vec<u8>,
    /// Chunked body ended with the terminating zero-size chunk.
    complete: bool,
}

impl Raw {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }

    fn events(&self) -> Vec<String> {
        self.chunks
            .iter()
            .map(|c| String::from_utf8(c.clone()).unwrap())
            .collect()
    }
}

fn request_bytes(method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Vec<u8> {
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nhost: mock\r\nconnection: close\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        req.push_str(&format!("{name}: {value}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    req.into_bytes()
}

/// Connects and sends a request; the caller reads (or drops) the socket.
async fn send_raw(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(&request_bytes(method, path, headers, body))
        .await
        .unwrap();
    stream
}

/// Sends a request and reads until the server closes the connection (or
/// resets it, as fail-midstream does).
async fn raw(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Raw {
    let mut stream = send_raw(addr, method, path, headers, body).await;
    let mut buf = Vec::new();
    let read_all = async {
        let mut tmp = vec![0u8; 64 * 1024];
        loop {
            match stream.read(&mut tmp).await {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&tmp[..n]),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), read_all)
        .await
        .expect("response did not end");
    parse_raw(&buf)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn parse_raw(buf: &[u8]) -> Raw {
    let head_end = find(buf, b"\r\n\r\n").expect("no response head");
    let head = std::str::from_utf8(&buf[..head_end]).unwrap();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap();
    let status: u16 = status_line.split(' ').nth(1).unwrap().parse().unwrap();
    let headers: Vec<(String, String)> = lines
        .map(|l| {
            let (n, v) = l.split_once(':').unwrap();
            (n.trim().to_ascii_lowercase(), v.trim().to_owned())
        })
        .collect();
    let mut rest = &buf[head_end + 4..];
    let mut raw = Raw {
        status,
        headers,
        chunks: Vec::new(),
        body: Vec::new(),
        complete: false,
    };
    if raw.header("transfer-encoding") == Some("chunked") {
        while let Some(line_end) = find(rest, b"\r\n") {
            let size_text = std::str::from_utf8(&rest[..line_end]).unwrap();
            let size = usize::from_str_radix(size_text.split(';').next().unwrap(), 16).unwrap();
            if size == 0 {
                raw.complete = true;
                break;
            }
            let data = &rest[line_end + 2..];
            if data.len() < size + 2 {
                break; // truncated
            }
            raw.chunks.push(data[..size].to_vec());
            raw.body.extend_from_slice(&data[..size]);
            rest = &data[size + 2..];
        }
    } else {
        raw.body = rest.to_vec();
        raw.complete = true;
    }
    raw
}

// ---------------------------------------------------------------------------
// hyper clients, for timing and HTTP/2.

async fn h1_client(addr: SocketAddr) -> hyper::client::conn::http1::SendRequest<Full<Bytes>> {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender
}

async fn h2_client(addr: SocketAddr) -> hyper::client::conn::http2::SendRequest<Full<Bytes>> {
    h2_client_with_socket(addr).await.0
}

/// Also returns a handle on the same socket: shutting it down closes the
/// TCP connection under hyper's feet, like a crashed or killed client.
async fn h2_client_with_socket(
    addr: SocketAddr,
) -> (
    hyper::client::conn::http2::SendRequest<Full<Bytes>>,
    std::net::TcpStream,
) {
    let stream = TcpStream::connect(addr).await.unwrap();
    // Without this, Nagle holds a small RST_STREAM until the previous write
    // is acknowledged (~40 ms with delayed ACKs). Gateways should set it too.
    stream.set_nodelay(true).unwrap();
    let stream = stream.into_std().unwrap();
    let socket = stream.try_clone().unwrap();
    let stream = TcpStream::from_std(stream).unwrap();
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    (sender, socket)
}

fn post(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Request<Full<Bytes>> {
    let mut builder =
        Request::post(format!("http://{addr}{path}")).header("content-type", "application/json");
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder
        .body(Full::new(Bytes::from(body.to_owned())))
        .unwrap()
}

/// Reads SSE events from a body, timestamping each complete event relative
/// to `t0`, until the body ends.
async fn timed_events(body: &mut Incoming, t0: Instant) -> Vec<(Duration, String)> {
    let mut events = Vec::new();
    let mut pending = Vec::new();
    let read = async {
        while let Some(frame) = body.frame().await {
            let Ok(data) = frame.unwrap().into_data() else {
                continue;
            };
            pending.extend_from_slice(&data);
            while let Some(end) = find(&pending, b"\n\n") {
                let event: Vec<u8> = pending.drain(..end + 2).collect();
                events.push((t0.elapsed(), String::from_utf8(event).unwrap()));
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), read)
        .await
        .expect("stream did not end");
    events
}

fn data_json(event: &str) -> Value {
    let payload = event
        .strip_prefix("data: ")
        .and_then(|e| e.strip_suffix("\n\n"))
        .unwrap_or_else(|| panic!("not an SSE data event: {event:?}"));
    serde_json::from_str(payload).unwrap()
}

fn assert_v1_headers(r: &Raw) {
    assert!(r.header("x-request-id").unwrap().starts_with("req_mock_"));
    assert_eq!(r.header("openai-version"), Some("2020-10-01"));
    r.header("openai-processing-ms")
        .unwrap()
        .parse::<u64>()
        .unwrap();
    assert_eq!(r.header("x-ratelimit-limit-requests"), Some("10000"));
    assert_eq!(r.header("x-ratelimit-remaining-requests"), Some("9999"));
    assert_eq!(r.header("openai-organization"), Some("tidegate-mock"));
}

/// The exact events of a normal chat stream with `n` content chunks.
fn expected_chat_events(
    id: u64,
    created: u64,
    model: &str,
    n: u32,
    usage: Option<u64>,
) -> Vec<String> {
    let head = format!(
        "data: {{\"id\":\"chatcmpl-mock{id}\",\"object\":\"chat.completion.chunk\",\"created\":{created},\"model\":\"{model}\",\"system_fingerprint\":\"fp_tidegate_mock\",\"choices\":["
    );
    let tail = if usage.is_some() {
        "],\"usage\":null}\n\n"
    } else {
        "]}\n\n"
    };
    let mut events = vec![format!(
        "{head}{{\"index\":0,\"delta\":{{\"role\":\"assistant\",\"content\":\"\"}},\"logprobs\":null,\"finish_reason\":null}}{tail}"
    )];
    for i in 0..n as usize {
        let word = serde_json::to_string(WORDS[i % WORDS.len()]).unwrap();
        events.push(format!(
            "{head}{{\"index\":0,\"delta\":{{\"content\":{word}}},\"logprobs\":null,\"finish_reason\":null}}{tail}"
        ));
    }
    events.push(format!(
        "{head}{{\"index\":0,\"delta\":{{}},\"logprobs\":null,\"finish_reason\":\"stop\"}}{tail}"
    ));
    if let Some(prompt) = usage {
        events.push(format!(
            "{head}],\"usage\":{{\"prompt_tokens\":{prompt},\"completion_tokens\":{n},\"total_tokens\":{}}}}}\n\n",
            prompt + u64::from(n)
        ));
    }
    events.push("data: [DONE]\n\n".to_owned());
    events
}

// ---------------------------------------------------------------------------
// Streams

#[tokio::test]
async fn chat_stream_exact_events_with_usage() {
    let server = start(fast()).await;
    let body = r#"{"model":"gpt-4o-mini","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"hi"}]}"#;
    let r = raw(server.addr, "POST", "/v1/chat/completions", &[], body).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-type"),
        Some("text/event-stream; charset=utf-8")
    );
    assert_eq!(r.header("cache-control"), Some("no-cache"));
    assert_eq!(r.header("x-request-id"), Some("req_mock_1"));
    assert_v1_headers(&r);
    assert!(r.complete, "stream must end cleanly");

    let events = r.events();
    let created = data_json(&events[0])["created"].as_u64().unwrap();
    let prompt = (body.len() as u64).div_ceil(4);
    assert_eq!(
        events,
        expected_chat_events(1, created, "gpt-4o-mini", 5, Some(prompt))
    );
    // Every content chunk parses, and the deltas add up to expected_content.
    let content: String = events[1..6]
        .iter()
        .map(|e| {
            data_json(e)["choices"][0]["delta"]["content"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(content, expected_content(5));
    assert_eq!(content, "Hello from the tidegate mock ");

    let s = server
        .wait("stream completion", |s| s.streams_active == 0)
        .await;
    assert_eq!(s.streams_started, 1);
    assert_eq!(s.streams_completed, 1);
    assert_eq!(s.streams_cancelled, 0);
    assert_eq!(s.requests_started, 0);
}

#[tokio::test]
async fn chat_stream_without_usage_and_escaped_words() {
    let server = start(fast()).await;
    // 24 chunks (the whole paragraph) cover the quoted word and the emoji; the model name
    // needs escaping.
    let body = r#"{"model":"we\"ird\\model","stream":true}"#;
    let r = raw(
        server.addr,
        "POST",
        "/v1/chat/completions",
        &[("x-mock-chunks", "24"), ("x-mock-chunk-delay-ms", "0")],
        body,
    )
    .await;
    assert_eq!(r.status, 200);
    let events = r.events();
    let created = data_json(&events[0])["created"].as_u64().unwrap();
    assert_eq!(
        events,
        expected_chat_events(1, created, "we\\\"ird\\\\model", 24, None)
    );
    for event in &events[..events.len() - 1] {
        let v = data_json(event);
        assert_eq!(v["model"], "we\"ird\\model");
        assert!(v.get("usage").is_none());
    }
    let content: String = events[1..25]
        .iter()
        .map(|e| {
            data_json(e)["choices"][0]["delta"]["content"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(content, expected_content(24));
    assert!(content.contains("\"tide\""));
    assert!(content.contains("\u{1f30a}"));
}

#[tokio::test]
async fn legacy_completions_stream_shape() {
    let server = start(fast()).await;
    let r = raw(
        server.addr,
        "POST",
        "/v1/completions",
        &[("x-mock-chunks", "3")],
        r#"{"model":"mock-1","prompt":"Say hi","stream":true}"#,
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(r.complete);
    let events = r.events();
    assert_eq!(events.len(), 1 + 3 + 1 + 1);
    let first = data_json(&events[0]);
    let created = first["created"].as_u64().unwrap();
    let head = format!(
        "data: {{\"id\":\"cmpl-mock1\",\"object\":\"text_completion\",\"created\":{created},\"model\":\"mock-1\",\"system_fingerprint\":\"fp_tidegate_mock\",\"choices\":["
    );
    assert_eq!(
        events[0],
        format!(
            "{head}{{\"text\":\"\",\"index\":0,\"logprobs\":null,\"finish_reason\":null}}]}}\n\n"
        )
    );
    assert_eq!(
        events[1],
        format!("{head}{{\"text\":\"Hello \",\"index\":0,\"logprobs\":null,\"finish_reason\":null}}]}}\n\n")
    );
    assert_eq!(
        events[4],
        format!("{head}{{\"text\":\"\",\"index\":0,\"logprobs\":null,\"finish_reason\":\"stop\"}}]}}\n\n")
    );
    assert_eq!(events[5], "data: [DONE]\n\n");
    let text: String = events[1..4]
        .iter()
        .map(|e| {
            data_json(e)["choices"][0]["text"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(text, expected_content(3));
}

#[tokio::test]
async fn header_overrides_pace_the_stream() {
    let server = start(fast()).await;
    let mut client = h1_client(server.addr).await;
    let t0 = Instant::now();
    let response = client
        .send_request(post(
            server.addr,
            "/v1/chat/completions",
            &[
                ("x-mock-chunks", "3"),
                ("x-mock-headers-delay-ms", "150"),
                ("x-mock-first-delay-ms", "100"),
                ("x-mock-chunk-delay-ms", "50"),
            ],
            r#"{"model":"mock-1","stream":true}"#,
        ))
        .await
        .unwrap();
    let headers_at = t0.elapsed();
    assert_eq!(response.status(), StatusCode::OK);
    let processing: u64 = response.headers()["openai-processing-ms"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(processing >= 150, "processing-ms {processing}");
    let mut body = response.into_body();
    let events = timed_events(&mut body, t0).await;

    assert!(headers_at >= Duration::from_millis(150), "{headers_at:?}");
    assert_eq!(events.len(), 1 + 3 + 1 + 1);
    let (first_at, _) = events[0];
    assert!(first_at >= headers_at + Duration::from_millis(100) - Duration::from_millis(5));
    assert!(first_at >= Duration::from_millis(250), "{first_at:?}");
    // Each content chunk waits 50 ms; the tail follows the last one at once.
    for i in 1..=3 {
        let gap = events[i].0 - events[i - 1].0;
        assert!(
            gap >= Duration::from_millis(45),
            "gap before chunk {i}: {gap:?}"
        );
    }
    let (done_at, ref done) = events[5];
    assert_eq!(done, "data: [DONE]\n\n");
    assert!(done_at >= Duration::from_millis(400), "{done_at:?}");
}

#[tokio::test]
async fn timestamps_header_marks_each_json_event_with_its_send_time() {
    let server = start(fast()).await;
    let mut client = h1_client(server.addr).await;
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64;
    let response = client
        .send_request(post(
            server.addr,
            "/v1/chat/completions",
            &[
                ("x-mock-chunks", "3"),
                ("x-mock-chunk-delay-ms", "20"),
                ("x-mock-timestamps", "1"),
            ],
            r#"{"model":"mock-1","stream":true}"#,
        ))
        .await
        .unwrap();
    let mut body = response.into_body();
    let events = timed_events(&mut body, Instant::now()).await;
    let after = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64;
    assert_eq!(events.len(), 1 + 3 + 1 + 1);
    let mut last = before;
    for (_, event) in &events[..5] {
        // `: sent_us=<micros>` then the unchanged OpenAI data line.
        let (comment, data) = event.split_once('\n').unwrap();
        let sent: u64 = comment.strip_prefix(": sent_us=").unwrap().parse().unwrap();
        assert!(
            (last..=after).contains(&sent),
            "{sent} not in {last}..={after}"
        );
        last = sent;
        assert_eq!(data_json(data)["object"], "chat.completion.chunk");
    }
    assert_eq!(events[5].1, "data: [DONE]\n\n");

    // Off by default: the stream is exactly OpenAI's.
    let response = client
        .send_request(post(
            server.addr,
            "/v1/chat/completions",
            &[("x-mock-chunks", "1")],
            r#"{"model":"mock-1","stream":true}"#,
        ))
        .await
        .unwrap();
    let mut body = response.into_body();
    let events = timed_events(&mut body, Instant::now()).await;
    assert!(events.iter().all(|(_, e)| e.starts_with("data: ")));
}

#[tokio::test]
async fn non_streaming_waits_headers_plus_first_delay() {
    let server = start(fast()).await;
    let t0 = Instant::now();
    let r = raw(
        server.addr,
        "POST",
        "/v1/chat/completions",
        &[
            ("x-mock-headers-delay-ms", "120"),
            ("x-mock-first-delay-ms", "80"),
        ],
        r#"{"model":"mock-1"}"#,
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(t0.elapsed() >= Duration::from_millis(200));
}

#[tokio::test]
async fn waits_are_clamped_to_max_wait() {
    let server = start(MockSettings {
        max_wait: Duration::from_millis(100),
        ..fast()
    })
    .await;
    let t0 = Instant::now();
    let r = raw(
        server.addr,
        "POST",
        "/v1/chat/completions",
        &[("x-mock-headers-delay-ms", "3600000")],
        r#"{"model":"mock-1","stream":true}"#,
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(r.complete);
    assert!(t0.elapsed() < DEADLINE);
}

// ---------------------------------------------------------------------------
// Non-streaming shapes

#[tokio::test]
async fn non_streaming_chat_and_completions_shape() {
    let server = start(fast()).await;
    let body = r#"{"model":"gpt-test","messages":[{"role":"user","content":"hello"}]}"#;
    let r = raw(server.addr, "POST", "/v1/chat/completions", &[], body).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_v1_headers(&r);
    assert!(r
        .body
        .starts_with(b"{\"id\":\"chatcmpl-mock1\",\"object\":\"chat.completion\","));
    let v = r.json();
    let prompt = (body.len() as u64).div_ceil(4);
    assert_eq!(
        v,
        json!({
            "id": "chatcmpl-mock1",
            "object": "chat.completion",
            "created": v["created"],
            "model": "gpt-test",
            "system_fingerprint": "fp_tidegate_mock",
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": expected_content(5), "refusal": null},
                "logprobs": null,
                "finish_reason": "stop"
            }],
            "usage": {"prompt_tokens": prompt, "completion_tokens": 5, "total_tokens": prompt + 5}
        })
    );
    assert!(v["created"].as_u64().unwrap() > 1_600_000_000);

    let body = r#"{"model":"gpt-test","prompt":"hi","stream":false}"#;
    let r = raw(
        server.addr,
        "POST",
        "/v1/completions",
        &[("x-mock-chunks", "2")],
        body,
    )
    .await;
    assert_eq!(r.status, 200);
    let v = r.json();
    let prompt = (body.len() as u64).div_ceil(4);
    assert_eq!(
        v,
        json!({
            "id": "cmpl-mock2",
            "object": "text_completion",
            "created": v["created"],
            "model": "gpt-test",
            "system_fingerprint": "fp_tidegate_mock",
            "choices": [{"text": "Hello from ", "index": 0, "logprobs": null, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": prompt, "completion_tokens": 2, "total_tokens": prompt + 2}
        })
    );
    let s = server.stats().snapshot();
    assert_eq!(
        (s.requests_started, s.requests_completed, s.requests_active),
        (2, 2, 0)
    );
    assert_eq!(s.streams_started, 0);
}

#[tokio::test]
async fn embeddings_and_models_shape() {
    let server = start(fast()).await;
    let body = r#"{"model":"text-embedding-3-small","input":["a","b"]}"#;
    let r = raw(server.addr, "POST", "/v1/embeddings", &[], body).await;
    assert_eq!(r.status, 200);
    assert_v1_headers(&r);
    let v = r.json();
    assert_eq!(v["object"], "list");
    assert_eq!(v["model"], "text-embedding-3-small");
    let prompt = (body.len() as u64).div_ceil(4);
    assert_eq!(
        v["usage"],
        json!({"prompt_tokens": prompt, "total_tokens": prompt})
    );
    let data = v["data"].as_array().unwrap();
    assert_eq!(data.len(), 2);
    for (i, item) in data.iter().enumerate() {
        assert_eq!(item["object"], "embedding");
        assert_eq!(item["index"], i);
        let values = item["embedding"].as_array().unwrap();
        assert_eq!(values.len(), 8);
        assert!(values.iter().all(|x| x.as_f64().unwrap().abs() < 0.1));
    }
    let r = raw(
        server.addr,
        "POST",
        "/v1/embeddings",
        &[],
        r#"{"model":"e","input":"one string"}"#,
    )
    .await;
    assert_eq!(r.json()["data"].as_array().unwrap().len(), 1);

    let r = raw(server.addr, "GET", "/v1/models", &[], "").await;
    assert_eq!(r.status, 200);
    assert_v1_headers(&r);
    let v = r.json();
    assert_eq!(v["object"], "list");
    let ids: Vec<&str> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            assert_eq!(m["object"], "model");
            assert_eq!(m["owned_by"], "tidegate-mock");
            assert!(m["created"].is_u64());
            m["id"].as_str().unwrap()
        })
        .collect();
    assert_eq!(
        ids,
        [
            "mock-1",
            "fail-429",
            "fail-500",
            "fail-midstream",
            "fail-no-done",
            "fail-malformed",
            "fail-oversized",
            "hang",
            "slow-first-token",
            "fail-not-event-stream",
            "fail-401",
            "fail-400-echo-key",
            "fail-error-event",
            "fail-response-failed"
        ]
    );
    let s = server.stats().snapshot();
    assert_eq!((s.requests_started, s.requests_completed), (3, 3));
}

#[tokio::test]
async fn errors_are_openai_shaped() {
    let server = start(fast()).await;

    let r = raw(
        server.addr,
        "POST",
        "/v1/chat/completions",
        &[],
        "{not json",
    )
    .await;
    assert_eq!(r.status, 400);
    assert_v1_headers(&r);
    let v = r.json();
    assert_eq!(v["error"]["type"], "invalid_request_error");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("parse the JSON body"));
    assert_eq!(v["error"]["param"], Value::Null);
    assert_eq!(v["error"]["code"], Value::Null);

    let r = raw(
        server.addr,
        "POST",
        "/v1/chat/completions",
        &[],
        r#"{"stream":true}"#,
    )
    .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["param"], "model");

    let r = raw(
        server.addr,
        "POST",
        "/v1/chat/completions",
        &[("x-mock-chunks", "many")],
        r#"{"model":"mock-1"}"#,
    )
    .await;
    assert_eq!(r.status, 400);
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("x-mock-chunks"));

    let r = raw(server.addr, "GET", "/v1/nope", &[], "").await;
    assert_eq!(r.status, 404);
    assert_v1_headers(&r);
    assert_eq!(
        r.json(),
        json!({"error": {"message": "Invalid URL (GET /v1/nope)", "type": "invalid_request_error", "param": null, "code": null}})
    );
    let r = raw(server.addr, "GET", "/v1/chat/completions", &[], "").await;
    assert_eq!(r.status, 404);

    let r = raw(server.addr, "GET", "/elsewhere", &[], "").await;
    assert_eq!(r.status, 404);
    assert_eq!(r.header("x-request-id"), None, "not a /v1 response");
    assert_eq!(r.json()["error"]["type"], "invalid_request_error");

    // Declared too large: rejected without reading the body.
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream
        .write_all(
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: mock\r\nconnection: close\r\ncontent-length: 9000000\r\n\r\n{",
        )
        .await
        .unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(DEADLINE, stream.read_to_end(&mut buf))
        .await
        .unwrap()
        .ok();
    let r = parse_raw(&buf);
    assert_eq!(r.status, 413);
    assert_eq!(r.json()["error"]["code"], "request_too_large");

    // Actually too large, without a declared length (chunked upload).
    let mut client = h1_client(server.addr).await;
    let big = Full::new(Bytes::from(vec![b' '; MAX_BODY_BYTES + 1]));
    let req = Request::post(format!("http://{}/v1/embeddings", server.addr))
        .header("transfer-encoding", "chunked")
        .body(big)
        .unwrap();
    // The server may answer before the upload ends, or cut it off; either
    // way a 413 must come back if anything does.
    if let Ok(response) = client.send_request(req).await {
        assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    }

    let s = server
        .wait("error requests to finish", |s| s.requests_active == 0)
        .await;
    assert!(s.requests_started >= 7, "{s:?}");
    assert_eq!(s.requests_started, s.requests_completed);
    assert_eq!(s.streams_started, 0);
}

// ---------------------------------------------------------------------------
// Faults

#[tokio::test]
async fn fault_429_and_500() {
    let server = start(fast()).await;
    let r = raw(
        server.addr,
        "POST",
        "/v1/chat/completions",
        &[],
        r#"{"model":"fail-429","stream":true}"#,
    )
    .await;
    assert_eq!(r.status, 429);
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(r.header("retry-after-ms"), Some("1000"));
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_v1_headers(&r);
    assert_eq!(
        std::str::from_utf8(&r.body).unwrap(),
        r#"{"error":{"message":"Rate limit reached (mock)","type":"requests","param":null,"code":"rate_limit_exceeded"}}"#
    );

    let r = raw(
        server.addr,
        "POST",
        "/v1/chat/completions",
        &[],
        r#"{"model":"fail-500","stream":true}"#,
    )
    .await;
    assert_eq!(r.status, 500);
    assert_v1_headers(&r);
    assert_eq!(
        std::str::from_utf8(&r.body).unwrap(),
        r#"{"error":{"message":"The server had an error (mock)","type":"server_error","param":null,"code":null}}"#
    );
    let s = server.stats().snapshot();
    assert_eq!((s.requests_started, s.requests_completed), (2, 2));
    assert_eq!(s.streams_started, 0);
}

#[tokio::test]
async fn fault_midstream_aborts_without_done() {
    let server = start(fast()).await;
    // Zero delay: the body yields once before failing so hyper flushes the
    // chunks it already has; the gateway's tests rely on seeing them.
    let r = raw(
        server.addr,
        "POST",
        "/v1/chat/completions",
        &[("x-mock-chunk-delay-ms", "0"), ("x-mock-chunks", "10")],
        r#"{"model":"fail-midstream","stream":true}"#,
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(!r.complete, "the chunked body must not terminate cleanly");
    let events = r.events();
    assert_eq!(events.len(), 3, "{events:?}");
    assert_eq!(
        data_json(&events[0])["choices"][0]["delta"]["role"],
        "assistant"
    );
    assert_eq!(
        data_json(&events[2])["choices"][0]["delta"]["content"],
        "from "
    );
    assert!(!String::from_utf8_lossy(&r.body).contains("[DONE]"));
    let s = server.wait("abort", |s| s.streams_active == 0).await;
    assert_eq!(s.streams_started, 1);
    assert_eq!(s.streams_completed, 0, "an abort is not a completion");
    assert_eq!(s.streams_cancelled, 0, "an abort is not a cancellation");
}

#[tokio::test]
async fn fault_midstream_over_http2_resets_the_stream() {
    let server = start(fast()).await;
    let mut client = h2_client(server.addr).await;
    let response = client
        .send_request(post(
            server.addr,
            "/v1/chat/completions",
            &[("x-mock-chunk-delay-ms", "20")],
            r#"{"model":"fail-midstream","stream":true}"#,
        ))
        .await
        .unwrap();
    assert_eq!(response.version(), Version::HTTP_2);
    let mut body = response.into_body();
    let mut data = Vec::new();
    let outcome = tokio::time::timeout(DEADLINE, async {
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(frame) => data.extend_from_slice(frame.data_ref().map_or(&[][..], |d| &d[..])),
                Err(err) => return Err(err),
            }
        }
        Ok(())
    })
    .await
    .unwrap();
    assert!(outcome.is_err(), "the body must end in an error");
    let text = String::from_utf8(data).unwrap();
    assert!(!text.contains("[DONE]"));
    assert!(text.contains("\"role\":\"assistant\""));
    let s = server.wait("abort", |s| s.streams_active == 0).await;
    assert_eq!((s.streams_completed, s.streams_cancelled), (0, 0));
}

#[tokio::test]
async fn fault_no_done_ends_cleanly_without_done() {
    let server = start(fast()).await;
    let r = raw(
        server.addr,
        "POST",
        "/v1/chat/completions",
        &[],
        r#"{"model":"fail-no-done","stream":true,"stream_options":{"include_usage":true}}"#,
    )
    .await;
    assert!(r.complete, "clean end");
    let events = r.events();
    assert_eq!(events.len(), 1 + 5 + 1 + 1);
    assert_eq!(data_json(&events[6])["choices"][0]["finish_reason"], "stop");
    assert!(data_json(&events[7])["usage"]["total_tokens"].is_u64());
    assert!(events.iter().all(|e| !e.contains("[DONE]")));
    let s = server.wait("completion", |s| s.streams_active == 0).await;
    assert_eq!((s.streams_completed, s.streams_cancelled), (1, 0));
}

#[tokio::test]
async fn fault_not_event_stream_answers_a_stream_request_with_json() {
    let server = start(fast()).await;
    let r = raw(
        server.addr,
        "POST",
        "/v1/chat/completions",
        &[],
        r#"{"model":"fail-not-event-stream","stream":true}"#,
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(r
        .header("content-type")
        .unwrap()
        .starts_with("application/json"));
    assert_eq!(r.json()["object"], "chat.completion");
    let s = server.stats().snapshot();
    assert_eq!((s.streams_started, s.requests_started), (0, 1));
}

#[tokio::test]
async fn fault_malformed_then_normal() {
    let server = start(fast()).await;
    let r = raw(
        server.addr,
        "POST",
        "/v1/chat/completions",
        &[],
        r#"{"model":"fail-malformed","stream":true}"#,
    )
    .await;
    assert!(r.complete);
    let events = r.events();
    assert_eq!(events.len(), 1 + 1 + 5 + 1 + 1);
    assert_eq!(
        data_json(&events[0])["choices"][0]["delta"]["role"],
        "assistant"
    );
    assert_eq!(events[1], "data: {this is not json\n\n");
    assert_eq!(
        data_json(&events[2])["choices"][0]["delta"]["content"],
        "Hello "
    );
    assert_eq!(events[8], "data: [DONE]\n\n");
}

#[tokio::test]
async fn fault_oversized_line_then_normal() {
    let server = start(fast()).await;
    let r = raw(
        server.addr,
        "POST",
        "/v1/completions",
        &[("x-mock-chunks", "2")],
        r#"{"model":"fail-oversized","stream":true}"#,
    )
    .await;
    assert!(r.complete);
    let events = r.events();
    assert_eq!(events.len(), 1 + 1 + 2 + 1 + 1);
    let big = &events[1];
    assert_eq!(big.len(), "data: ".len() + OVERSIZED_LINE_BYTES + 2);
    assert!(big.starts_with("data: xxxx"));
    assert!(big[6..big.len() - 2].bytes().all(|b| b == b'x'));
    assert!(big.ends_with("x\n\n"));
    assert_eq!(data_json(&events[2])["choices"][0]["text"], "Hello ");
    assert_eq!(events[5], "data: [DONE]\n\n");
}

#[tokio::test]
async fn fault_slow_first_token() {
    let server = start(MockSettings {
        slow_first_token_delay: Duration::from_millis(1000),
        ..fast()
    })
    .await;
    let mut client = h1_client(server.addr).await;
    let t0 = Instant::now();
    let response = client
        .send_request(post(
            server.addr,
            "/v1/chat/completions",
            &[],
            r#"{"model":"slow-first-token","stream":true}"#,
        ))
        .await
        .unwrap();
    let headers_at = t0.elapsed();
    let events = timed_events(&mut response.into_body(), t0).await;
    assert!(
        events[0].0 >= Duration::from_millis(1000),
        "{:?}",
        events[0].0
    );
    assert!(
        headers_at < events[0].0 - Duration::from_millis(500),
        "headers come at once"
    );
    assert_eq!(events.last().unwrap().1, "data: [DONE]\n\n");

    // The header override wins.
    let mut client = h1_client(server.addr).await;
    let t0 = Instant::now();
    let response = client
        .send_request(post(
            server.addr,
            "/v1/chat/completions",
            &[("x-mock-first-delay-ms", "0")],
            r#"{"model":"slow-first-token","stream":true}"#,
        ))
        .await
        .unwrap();
    let events = timed_events(&mut response.into_body(), t0).await;
    assert!(
        events[0].0 < Duration::from_millis(1000),
        "{:?}",
        events[0].0
    );
}

#[tokio::test]
async fn fault_hang_gives_up_after_max_wait() {
    let server = start(MockSettings {
        max_wait: Duration::from_millis(200),
        ..fast()
    })
    .await;
    let t0 = Instant::now();
    let r = raw(
        server.addr,
        "POST",
        "/v1/chat/completions",
        &[],
        r#"{"model":"hang","stream":true}"#,
    )
    .await;
    assert!(t0.elapsed() >= Duration::from_millis(200));
    assert_eq!(r.status, 504);
    assert_v1_headers(&r);
    let s = server.stats().snapshot();
    assert_eq!((s.requests_started, s.requests_completed), (1, 1));
    assert_eq!(s.streams_started, 0);
}

// ---------------------------------------------------------------------------
// Cancellation: the counters the gateway's tests rely on.

/// Asserts (and reports, for `--nocapture`) how long the mock took to
/// notice that the client went away.
fn assert_noticed(what: &str, since: Instant) {
    let took = since.elapsed();
    eprintln!("{what}: noticed after {took:?}");
    assert!(took < CANCEL_BOUND, "{what}: noticed only after {took:?}");
}

/// Reads from `stream` until `needle` has been seen; returns what was read.
async fn read_until(stream: &mut TcpStream, needle: &[u8]) -> Vec<u8> {
    let mut seen = Vec::new();
    let mut tmp = vec![0u8; 16 * 1024];
    tokio::time::timeout(DEADLINE, async {
        while find(&seen, needle).is_none() {
            let n = stream.read(&mut tmp).await.unwrap();
            assert!(n > 0, "closed before {:?}", String::from_utf8_lossy(needle));
            seen.extend_from_slice(&tmp[..n]);
        }
    })
    .await
    .expect("did not see the expected bytes");
    seen
}

#[tokio::test]
async fn client_disconnect_mid_stream_counts_cancelled() {
    let server = start(fast()).await;
    let mut stream = send_raw(
        server.addr,
        "POST",
        "/v1/chat/completions",
        &[("x-mock-chunks", "1000"), ("x-mock-chunk-delay-ms", "50")],
        r#"{"model":"mock-1","stream":true}"#,
    )
    .await;
    read_until(&mut stream, b"\"content\":\"Hello \"").await;
    assert_eq!(server.stats().snapshot().streams_active, 1);

    let t0 = Instant::now();
    drop(stream);
    let s = server
        .wait("cancellation", |s| {
            s.streams_cancelled == 1 && s.streams_active == 0
        })
        .await;
    assert_noticed("h1 close mid-stream", t0);
    assert_eq!((s.streams_started, s.streams_completed), (1, 0));
}

#[tokio::test]
async fn client_disconnect_during_headers_delay_counts_cancelled() {
    let server = start(fast()).await;
    let stream = send_raw(
        server.addr,
        "POST",
        "/v1/chat/completions",
        &[("x-mock-headers-delay-ms", "60000")],
        r#"{"model":"mock-1","stream":true}"#,
    )
    .await;
    server.wait("stream start", |s| s.streams_active == 1).await;
    let t0 = Instant::now();
    drop(stream);
    let s = server
        .wait("cancellation", |s| {
            s.streams_cancelled == 1 && s.streams_active == 0
        })
        .await;
    assert_noticed("h1 close during headers delay", t0);
    assert_eq!(s.streams_completed, 0);
}

#[tokio::test]
async fn client_disconnect_during_hang_counts_cancelled_request() {
    let server = start(fast()).await;
    let stream = send_raw(
        server.addr,
        "POST",
        "/v1/chat/completions",
        &[],
        r#"{"model":"hang","stream":true}"#,
    )
    .await;
    server.wait("hang start", |s| s.requests_active == 1).await;
    let t0 = Instant::now();
    drop(stream);
    let s = server
        .wait("cancellation", |s| {
            s.requests_cancelled == 1 && s.requests_active == 0
        })
        .await;
    assert_noticed("h1 close during hang", t0);
    assert_eq!((s.requests_started, s.requests_completed), (1, 0));
    assert_eq!(s.streams_started, 0);
}

#[tokio::test]
async fn http2_reset_stream_counts_cancelled() {
    let server = start(fast()).await;
    let mut client = h2_client(server.addr).await;
    let response = client
        .send_request(post(
            server.addr,
            "/v1/chat/completions",
            &[("x-mock-chunks", "1000"), ("x-mock-chunk-delay-ms", "50")],
            r#"{"model":"mock-1","stream":true}"#,
        ))
        .await
        .unwrap();
    assert_eq!(response.version(), Version::HTTP_2);
    let mut body = response.into_body();
    // One frame in, then walk away: dropping the body sends RST_STREAM while
    // the connection itself stays open (`client` is still alive).
    let frame = tokio::time::timeout(DEADLINE, body.frame())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(frame.is_data());
    let t0 = Instant::now();
    drop(body);
    let s = server
        .wait("cancellation", |s| {
            s.streams_cancelled == 1 && s.streams_active == 0
        })
        .await;
    assert_noticed("h2 RST_STREAM mid-stream", t0);
    assert_eq!(s.streams_completed, 0);

    // Same for a request still waiting for its headers.
    let pending = client.send_request(post(
        server.addr,
        "/v1/chat/completions",
        &[("x-mock-headers-delay-ms", "60000")],
        r#"{"model":"mock-1","stream":true}"#,
    ));
    let pending = tokio::spawn(pending);
    server
        .wait("second stream", |s| s.streams_active == 1)
        .await;
    pending.abort();
    server
        .wait("second cancellation", |s| {
            s.streams_cancelled == 2 && s.streams_active == 0
        })
        .await;

    // The connection is still usable.
    let response = client
        .send_request(post(
            server.addr,
            "/v1/chat/completions",
            &[],
            r#"{"model":"mock-1","stream":true}"#,
        ))
        .await
        .unwrap();
    let events = timed_events(&mut response.into_body(), Instant::now()).await;
    assert_eq!(events.last().unwrap().1, "data: [DONE]\n\n");
    let s = server
        .wait("completion", |s| s.streams_completed == 1)
        .await;
    assert_eq!(s.streams_active, 0);
}

#[tokio::test]
async fn http2_connection_close_counts_cancelled() {
    let server = start(fast()).await;
    let (mut client, socket) = h2_client_with_socket(server.addr).await;
    let response = client
        .send_request(post(
            server.addr,
            "/v1/chat/completions",
            &[("x-mock-chunks", "1000"), ("x-mock-chunk-delay-ms", "50")],
            r#"{"model":"mock-1","stream":true}"#,
        ))
        .await
        .unwrap();
    let mut body = response.into_body();
    tokio::time::timeout(DEADLINE, body.frame())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    // A second stream on the same connection, still in its headers delay.
    let waiting = tokio::spawn(client.send_request(post(
        server.addr,
        "/v1/chat/completions",
        &[("x-mock-headers-delay-ms", "60000")],
        r#"{"model":"mock-1","stream":true}"#,
    )));
    server.wait("two streams", |s| s.streams_active == 2).await;
    let t0 = Instant::now();
    socket.shutdown(std::net::Shutdown::Both).unwrap(); // no RST_STREAM frames
    let s = server
        .wait("cancellation", |s| {
            s.streams_cancelled == 2 && s.streams_active == 0
        })
        .await;
    assert_noticed("h2 connection close", t0);
    assert_eq!(s.streams_completed, 0);
    drop(body);
    waiting.abort();
}

// ---------------------------------------------------------------------------
// HTTP/2, introspection, shutdown

#[tokio::test]
async fn http2_prior_knowledge_works() {
    let server = start(fast()).await;
    let mut client = h2_client(server.addr).await;
    let response = client
        .send_request(
            Request::get(format!("http://{}/v1/models", server.addr))
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.version(), Version::HTTP_2);
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["openai-organization"], "tidegate-mock");
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["data"][0]["id"], "mock-1");

    let response = client
        .send_request(post(
            server.addr,
            "/v1/chat/completions",
            &[],
            r#"{"model":"mock-1","stream":true,"stream_options":{"include_usage":true}}"#,
        ))
        .await
        .unwrap();
    assert_eq!(
        response.headers()["content-type"],
        "text/event-stream; charset=utf-8"
    );
    let events = timed_events(&mut response.into_body(), Instant::now()).await;
    let texts: Vec<String> = events.into_iter().map(|(_, e)| e).collect();
    let created = data_json(&texts[0])["created"].as_u64().unwrap();
    let id: u64 = data_json(&texts[0])["id"]
        .as_str()
        .unwrap()
        .trim_start_matches("chatcmpl-mock")
        .parse()
        .unwrap();
    let prompt = (r#"{"model":"mock-1","stream":true,"stream_options":{"include_usage":true}}"#
        .len() as u64)
        .div_ceil(4);
    assert_eq!(
        texts,
        expected_chat_events(id, created, "mock-1", 5, Some(prompt))
    );
}

#[tokio::test]
async fn last_request_and_stats_endpoints() {
    let server = start(fast()).await;
    let r = raw(server.addr, "GET", "/stats/last-request", &[], "").await;
    assert_eq!(r.status, 404);
    assert!(server.upstream.last_request().is_none());

    let body = r#"{"model":"mock-1","messages":[{"role":"user","content":"héllo"}]}"#;
    let r = raw(
        server.addr,
        "POST",
        "/v1/chat/completions?api-version=2024&x=1",
        &[
            ("Authorization", "Bearer sk-upstream"),
            ("X-Custom", "a"),
            ("x-custom", "b"),
            ("content-type", "application/json"),
        ],
        body,
    )
    .await;
    assert_eq!(r.status, 200);

    let r = raw(server.addr, "GET", "/stats/last-request", &[], "").await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("x-request-id"),
        None,
        "stats calls are not /v1 calls"
    );
    let captured: CapturedRequest = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(captured.version, "HTTP/1.1");
    assert_eq!(captured.method, "POST");
    assert_eq!(captured.path, "/v1/chat/completions");
    assert_eq!(captured.query.as_deref(), Some("api-version=2024&x=1"));
    assert_eq!(
        captured.authorization.as_deref(),
        Some("Bearer sk-upstream")
    );
    assert_eq!(captured.headers["x-custom"], "a, b");
    assert_eq!(captured.headers["content-type"], "application/json");
    assert_eq!(captured.headers["host"], "mock");
    assert_eq!(captured.headers["authorization"], "Bearer sk-upstream");
    assert_eq!(captured.body, body);
    assert_eq!(server.upstream.last_request(), Some(captured.clone()));
    let v: Value = serde_json::from_slice(&r.body).unwrap();
    let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "authorization",
            "body",
            "headers",
            "method",
            "path",
            "query",
            "version"
        ]
    );

    // Only the last one is kept; no auth means null.
    raw(server.addr, "GET", "/v1/models", &[], "").await;
    let r = raw(server.addr, "GET", "/stats/last-request", &[], "").await;
    let v: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["path"], "/v1/models");
    assert_eq!(v["authorization"], Value::Null);
    assert_eq!(v["query"], Value::Null);
    assert_eq!(v["body"], "");

    let r = raw(server.addr, "GET", "/stats", &[], "").await;
    assert_eq!(r.status, 200);
    let stats: StatsSnapshot = serde_json::from_slice(&r.body).unwrap();
    let now = server
        .wait("every connection closed", |s| s.connections_active == 0)
        .await;
    assert_eq!(
        stats,
        StatsSnapshot {
            connections_active: 1,
            ..now
        },
        "the same counters, but for the /stats call's own connection"
    );
    assert_eq!(
        (stats.requests_started, stats.requests_completed),
        (2, 2),
        "stats endpoints are not counted"
    );
}

#[tokio::test]
async fn shutdown_finishes_short_streams_and_drops_hung_requests() {
    let mut server = start(fast()).await;
    let hung = send_raw(
        server.addr,
        "POST",
        "/v1/chat/completions",
        &[],
        r#"{"model":"hang"}"#,
    )
    .await;
    // A short stream still in flight when shutdown starts: let it finish.
    let addr = server.addr;
    let short = tokio::spawn(async move {
        raw(
            addr,
            "POST",
            "/v1/chat/completions",
            &[("x-mock-chunks", "4"), ("x-mock-chunk-delay-ms", "50")],
            r#"{"model":"mock-1","stream":true}"#,
        )
        .await
    });
    server
        .wait("both in flight", |s| {
            s.requests_active == 1 && s.streams_active == 1
        })
        .await;

    let t0 = Instant::now();
    server.shutdown.cancel();
    let task = server.task.take().unwrap();
    tokio::time::timeout(DEADLINE, task)
        .await
        .expect("serve must return within its grace period")
        .unwrap()
        .unwrap();
    let took = t0.elapsed();
    assert!(took < Duration::from_millis(2500), "shutdown took {took:?}");

    let short = short.await.unwrap();
    assert!(short.complete);
    assert_eq!(short.events().last().unwrap(), "data: [DONE]\n\n");
    let s = server.stats().snapshot();
    assert_eq!((s.streams_completed, s.streams_active), (1, 0));
    assert_eq!(
        (s.requests_cancelled, s.requests_active),
        (1, 0),
        "the hung request is dropped at the end of the grace period"
    );
    drop(hung);
    // The listener is closed.
    assert!(TcpStream::connect(server.addr).await.is_err());
}

// ---------------------------------------------------------------------------
// Per-instance HTTP/2 limit, connection counters and fault schedules.

/// An HTTP/2 client from the `h2` crate: unlike hyper's, it tells a GOAWAY
/// from a bare close (`SendRequest::ready` fails with the GOAWAY's error).
async fn h2_raw_client(addr: SocketAddr) -> h2::client::SendRequest<Bytes> {
    let stream = TcpStream::connect(addr).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let (sender, conn) = h2::client::handshake(stream).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    sender
}

/// Opens a streaming chat request on `sender`; returns the response future and
/// the request stream (which can reset it).
async fn h2_raw_stream(
    sender: &mut h2::client::SendRequest<Bytes>,
    addr: SocketAddr,
    headers: &[(&str, &str)],
) -> (h2::client::ResponseFuture, h2::SendStream<Bytes>) {
    let mut builder = Request::post(format!("http://{addr}/v1/chat/completions"))
        .header("content-type", "application/json");
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let mut ready = tokio::time::timeout(DEADLINE, sender.clone().ready())
        .await
        .unwrap()
        .unwrap();
    let (response, mut body) = ready
        .send_request(builder.body(()).unwrap(), false)
        .unwrap();
    body.send_data(
        Bytes::from_static(br#"{"model":"mock-1","stream":true}"#),
        true,
    )
    .unwrap();
    *sender = ready;
    (response, body)
}

/// Whether `err` (from hyper) is, somewhere down its chain, an I/O or HTTP/2
/// error: what a client sees when its connection goes away.
fn is_connection_loss(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(err);
    // Bounded: error chains are short and finite.
    while let Some(e) = source {
        if e.downcast_ref::<std::io::Error>().is_some() || e.downcast_ref::<h2::Error>().is_some() {
            return true;
        }
        source = e.source();
    }
    false
}

/// Reads `body` until it fails; panics if it ends cleanly or stalls.
async fn expect_body_error(body: &mut Incoming, what: &str) -> hyper::Error {
    tokio::time::timeout(DEADLINE, async {
        // Bounded by the deadline; each pass takes one frame.
        while let Some(frame) = body.frame().await {
            if let Err(err) = frame {
                return err;
            }
        }
        panic!("{what}: the body ended cleanly");
    })
    .await
    .unwrap_or_else(|_| panic!("{what}: the body did not fail"))
}

#[tokio::test]
async fn h2_stream_limit_is_per_instance_and_advertised() {
    let default = start(fast()).await;
    let limited = start(MockSettings {
        h2_max_concurrent_streams: 2,
        ..fast()
    })
    .await;
    for (server, limit) in [(&default, H2_MAX_CONCURRENT_STREAMS), (&limited, 2)] {
        let mut client = h2_raw_client(server.addr).await;
        // One round trip: the mock's SETTINGS (its first frame) have arrived
        // and been applied.
        let (response, _stream) = h2_raw_stream(&mut client, server.addr, &[]).await;
        let response = tokio::time::timeout(DEADLINE, response)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(client.current_max_send_streams(), limit as usize);
    }

    // Four requests at once on one connection, each held 50 ms by the mock:
    // never more than two of them on the mock at a time, yet all answered.
    // First a round trip, for the client to learn the limit: streams it opens
    // beyond it before that are refused (REFUSED_STREAM).
    let mut client = h2_client(limited.addr).await;
    let response = client
        .send_request(post(limited.addr, "/v1/chat/completions", &[], "{}"))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST, "no model");
    let requests: Vec<_> = (0..4)
        .map(|_| {
            let mut client = client.clone();
            let request = post(
                limited.addr,
                "/v1/chat/completions",
                &[("x-mock-headers-delay-ms", "50")],
                r#"{"model":"mock-1"}"#,
            );
            tokio::spawn(async move { client.send_request(request).await })
        })
        .collect();
    for request in requests {
        let response = tokio::time::timeout(DEADLINE, request)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }
    let s = limited.stats().snapshot();
    assert_eq!(s.requests_received, 6, "{s:?}");
    assert_eq!(
        s.max_streams_per_connection, 2,
        "the third stream waited: {s:?}"
    );
    assert_eq!(default.stats().snapshot().max_streams_per_connection, 1);
}

#[tokio::test]
async fn stats_count_open_connections_and_streams_per_connection() {
    let server = start(fast()).await;
    assert_eq!(server.stats().snapshot().connections_active, 0);
    let (client, socket) = h2_client_with_socket(server.addr).await;
    let held: Vec<_> = (0..3)
        .map(|_| {
            let mut client = client.clone();
            tokio::spawn(client.send_request(post(
                server.addr,
                "/v1/chat/completions",
                &[("x-mock-headers-delay-ms", "60000")],
                r#"{"model":"mock-1","stream":true}"#,
            )))
        })
        .collect();
    let s = server
        .wait("three streams on one connection", |s| s.streams_active == 3)
        .await;
    assert_eq!((s.connections_active, s.max_streams_per_connection), (1, 3));

    // A second connection, HTTP/1.1, one request.
    let h1 = send_raw(
        server.addr,
        "POST",
        "/v1/chat/completions",
        &[("x-mock-headers-delay-ms", "60000")],
        r#"{"model":"mock-1","stream":true}"#,
    )
    .await;
    let s = server
        .wait("a second connection", |s| s.streams_active == 4)
        .await;
    assert_eq!((s.connections_active, s.max_streams_per_connection), (2, 3));
    assert_eq!(s.connections_accepted, 2);

    // Both go: the counts come back down; the maximum stays.
    drop(h1);
    socket.shutdown(std::net::Shutdown::Both).unwrap();
    let s = server
        .wait("both connections closed", |s| {
            s.connections_active == 0 && s.streams_active == 0
        })
        .await;
    assert_eq!((s.streams_cancelled, s.max_streams_per_connection), (4, 3));
    for task in held {
        task.abort();
    }
}

#[tokio::test]
async fn fail_next_answers_in_order_with_retry_after() {
    let server = start(fast()).await;
    server
        .upstream
        .fail_next(2, 503, Some(Duration::from_millis(1500)));
    server.upstream.fail_next(1, 429, None);
    server
        .upstream
        .fail_next(1, 500, Some(Duration::from_secs(2)));

    let stream_body = r#"{"model":"mock-1","stream":true}"#;
    let r = raw(
        server.addr,
        "POST",
        "/v1/chat/completions",
        &[],
        stream_body,
    )
    .await;
    assert_eq!(r.status, 503);
    assert_eq!(r.header("retry-after"), Some("2"), "rounded up");
    assert_eq!(r.header("retry-after-ms"), Some("1500"));
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_v1_headers(&r);
    assert_eq!(
        std::str::from_utf8(&r.body).unwrap(),
        r#"{"error":{"message":"Scheduled failure: 503 Service Unavailable (mock upstream, fail_next)","type":"server_error","param":null,"code":null}}"#
    );
    // Any /v1 request counts, whatever its path or model.
    let r = raw(server.addr, "GET", "/v1/models", &[], "").await;
    assert_eq!(r.status, 503);
    let r = raw(
        server.addr,
        "POST",
        "/v1/embeddings",
        &[],
        r#"{"model":"fail-500","input":"x"}"#,
    )
    .await;
    assert_eq!(r.status, 429);
    assert_eq!(r.header("retry-after"), None);
    assert_eq!(r.header("retry-after-ms"), None);
    assert_eq!(r.json()["error"]["type"], "requests");
    assert_eq!(r.json()["error"]["code"], "rate_limit_exceeded");
    let r = raw(
        server.addr,
        "POST",
        "/v1/chat/completions",
        &[],
        stream_body,
    )
    .await;
    assert_eq!(r.status, 500);
    assert_eq!(r.header("retry-after"), Some("2"));
    assert_eq!(r.header("retry-after-ms"), Some("2000"));
    assert_eq!(r.json()["error"]["type"], "server_error");

    // The schedule is used up: normal answers, and the model faults as ever.
    let r = raw(
        server.addr,
        "POST",
        "/v1/chat/completions",
        &[],
        stream_body,
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.events().last().unwrap(), "data: [DONE]\n\n");
    let r = raw(
        server.addr,
        "POST",
        "/v1/chat/completions",
        &[],
        r#"{"model":"fail-429"}"#,
    )
    .await;
    assert_eq!(r.status, 429);
    assert_eq!(r.header("retry-after-ms"), Some("1000"));

    let s = server.wait("all done", |s| s.streams_active == 0).await;
    assert_eq!(s.requests_received, 6);
    assert_eq!(s.scheduled_failures, 4);
    assert_eq!((s.requests_started, s.requests_completed), (5, 5));
    assert_eq!((s.streams_started, s.streams_completed), (1, 1));
    // The failed requests were read and captured like any other.
    assert_eq!(
        server.upstream.last_request().unwrap().body,
        r#"{"model":"fail-429"}"#
    );
}

#[tokio::test]
async fn fail_next_keeps_an_http1_connection_reusable() {
    let server = start(fast()).await;
    server.upstream.fail_next(1, 502, None);
    let mut client = h1_client(server.addr).await;
    let body = r#"{"model":"mock-1","messages":[]}"#;
    let response = client
        .send_request(post(server.addr, "/v1/chat/completions", &[], body))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    response.into_body().collect().await.unwrap();
    let response = client
        .send_request(post(server.addr, "/v1/chat/completions", &[], body))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    response.into_body().collect().await.unwrap();
    let s = server.stats().snapshot();
    assert_eq!((s.requests_received, s.connections_accepted), (2, 1));
}

#[tokio::test]
async fn drop_next_closes_the_http1_connection_without_an_answer() {
    let server = start(fast()).await;
    server.upstream.drop_next(1);
    server.upstream.fail_next(1, 500, None);

    let mut stream = send_raw(
        server.addr,
        "POST",
        "/v1/chat/completions",
        &[],
        r#"{"model":"mock-1","stream":true}"#,
    )
    .await;
    let mut received = Vec::new();
    let read = tokio::time::timeout(DEADLINE, stream.read_to_end(&mut received)).await;
    // A FIN (Ok) or a reset (Err): either way, not a byte of an answer.
    assert!(read.is_ok(), "the connection was not closed");
    assert!(
        received.is_empty(),
        "{:?}",
        String::from_utf8_lossy(&received)
    );
    let s = server
        .wait("the connection gone", |s| s.connections_active == 0)
        .await;
    assert_eq!((s.requests_received, s.scheduled_drops), (1, 1));
    assert_eq!(
        (s.requests_started, s.streams_started, s.streams_cancelled),
        (0, 0, 0),
        "a dropped request is neither started nor cancelled"
    );

    // Through hyper, on a kept-alive connection: the queued 500 comes next,
    // then a drop scheduled after it fails the request.
    let mut client = h1_client(server.addr).await;
    let body = r#"{"model":"mock-1"}"#;
    let response = client
        .send_request(post(server.addr, "/v1/chat/completions", &[], body))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    response.into_body().collect().await.unwrap();
    server.upstream.drop_next(1);
    let err = client
        .send_request(post(server.addr, "/v1/chat/completions", &[], body))
        .await
        .unwrap_err();
    assert!(
        err.is_incomplete_message() || is_connection_loss(&err),
        "{err:?}"
    );
    let r = raw(server.addr, "POST", "/v1/chat/completions", &[], body).await;
    assert_eq!(r.status, 200);
    let s = server.stats().snapshot();
    assert_eq!(
        (s.requests_received, s.scheduled_drops, s.scheduled_failures),
        (4, 2, 1)
    );
}

#[tokio::test]
async fn drop_next_on_http2_fails_every_stream_on_the_connection() {
    let server = start(fast()).await;
    let mut client = h2_client(server.addr).await;
    let response = client
        .send_request(post(
            server.addr,
            "/v1/chat/completions",
            &[("x-mock-chunks", "1000"), ("x-mock-chunk-delay-ms", "50")],
            r#"{"model":"mock-1","stream":true}"#,
        ))
        .await
        .unwrap();
    let mut body = response.into_body();
    tokio::time::timeout(DEADLINE, body.frame())
        .await
        .unwrap()
        .unwrap()
        .unwrap();

    server.upstream.drop_next(1);
    let err = tokio::time::timeout(
        DEADLINE,
        client.send_request(post(
            server.addr,
            "/v1/chat/completions",
            &[],
            r#"{"model":"mock-1","stream":true}"#,
        )),
    )
    .await
    .unwrap()
    .unwrap_err();
    assert!(is_connection_loss(&err), "{err:?}");
    let err = expect_body_error(&mut body, "the stream already in flight").await;
    assert!(is_connection_loss(&err), "{err:?}");
    let s = server
        .wait("the connection gone", |s| {
            s.connections_active == 0 && s.streams_active == 0
        })
        .await;
    assert_eq!((s.requests_received, s.scheduled_drops), (2, 1));
    assert_eq!((s.streams_started, s.streams_cancelled), (1, 1));
    assert_eq!(s.reset_goaways, 0);

    // The mock itself is fine: a new connection gets answers.
    let mut client = h2_client(server.addr).await;
    let response = client
        .send_request(post(
            server.addr,
            "/v1/chat/completions",
            &[],
            r#"{"model":"mock-1"}"#,
        ))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn goaway_after_resets_shuts_the_http2_connection() {
    let server = start(fast()).await;
    server.upstream.goaway_after_resets(Some(2));
    let long = [("x-mock-chunks", "1000"), ("x-mock-chunk-delay-ms", "50")];
    let held = [("x-mock-headers-delay-ms", "60000")];

    let mut client = h2_raw_client(server.addr).await;
    // In flight until the end: the stream that fails with the connection.
    let (survivor, _survivor_stream) = h2_raw_stream(&mut client, server.addr, &long).await;
    let mut survivor = tokio::time::timeout(DEADLINE, survivor)
        .await
        .unwrap()
        .unwrap()
        .into_body();
    let first = tokio::time::timeout(DEADLINE, survivor.data())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(first.starts_with(b"data: "));

    // First reset: a stream mid-body. Below the limit, nothing happens.
    let (a, mut a_stream) = h2_raw_stream(&mut client, server.addr, &long).await;
    let mut a = tokio::time::timeout(DEADLINE, a)
        .await
        .unwrap()
        .unwrap()
        .into_body();
    tokio::time::timeout(DEADLINE, a.data())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    a_stream.send_reset(h2::Reason::CANCEL);
    let s = server
        .wait("first reset", |s| s.streams_cancelled == 1)
        .await;
    assert_eq!((s.reset_goaways, s.connections_active), (0, 1));

    // Second reset: a stream still waiting for its headers. The limit.
    let (_b, mut b_stream) = h2_raw_stream(&mut client, server.addr, &held).await;
    server
        .wait("second stream started", |s| s.streams_active == 2)
        .await;
    b_stream.send_reset(h2::Reason::CANCEL);
    let s = server
        .wait("GOAWAY and close", |s| {
            s.reset_goaways == 1 && s.connections_active == 0 && s.streams_active == 0
        })
        .await;
    assert_eq!(
        s.streams_cancelled, 3,
        "the in-flight stream went with the connection"
    );

    // The client lost the stream it still had in flight, and had seen a
    // GOAWAY before the socket closed (a bare close is an I/O error here).
    let ended = tokio::time::timeout(DEADLINE, async {
        // Bounded by the deadline: the connection is gone, so data runs out.
        loop {
            match survivor.data().await {
                Some(Ok(_)) => {}
                other => return other,
            }
        }
    })
    .await
    .unwrap();
    assert!(matches!(ended, Some(Err(_))), "{ended:?}");
    let err = tokio::time::timeout(DEADLINE, client.ready())
        .await
        .unwrap()
        .unwrap_err();
    assert!(err.is_go_away() && err.is_remote(), "{err:?}");
    assert_eq!(err.reason(), Some(h2::Reason::NO_ERROR));

    // Counted per connection: one reset on a new connection is below the
    // limit; after clear_faults, none shuts it.
    let mut client = h2_raw_client(server.addr).await;
    let (_c, mut c_stream) = h2_raw_stream(&mut client, server.addr, &held).await;
    server.wait("third stream", |s| s.streams_active == 1).await;
    c_stream.send_reset(h2::Reason::CANCEL);
    server
        .wait("third reset", |s| s.streams_cancelled == 4)
        .await;
    server.upstream.clear_faults();
    let (_d, mut d_stream) = h2_raw_stream(&mut client, server.addr, &held).await;
    server
        .wait("fourth stream", |s| s.streams_active == 1)
        .await;
    d_stream.send_reset(h2::Reason::CANCEL);
    let s = server
        .wait("fourth reset", |s| s.streams_cancelled == 5)
        .await;
    assert_eq!((s.reset_goaways, s.connections_active), (1, 1));
    tokio::time::timeout(DEADLINE, client.ready())
        .await
        .unwrap()
        .unwrap();

    // HTTP/1.1 never: a cancel there closes its own connection anyway.
    server.upstream.goaway_after_resets(Some(1));
    let stream = send_raw(
        server.addr,
        "POST",
        "/v1/chat/completions",
        &held,
        r#"{"model":"mock-1","stream":true}"#,
    )
    .await;
    server.wait("h1 stream", |s| s.streams_active == 1).await;
    drop(stream);
    let s = server.wait("h1 cancel", |s| s.streams_cancelled == 6).await;
    assert_eq!(s.reset_goaways, 1);
}

#[tokio::test]
async fn clear_faults_forgets_every_schedule() {
    let server = start(fast()).await;
    server.upstream.fail_next(3, 500, None);
    server.upstream.drop_next(2);
    server.upstream.goaway_after_resets(Some(1));
    server.upstream.clear_faults();
    let r = raw(
        server.addr,
        "POST",
        "/v1/chat/completions",
        &[],
        r#"{"model":"mock-1"}"#,
    )
    .await;
    assert_eq!(r.status, 200);
    let s = server.stats().snapshot();
    assert_eq!(
        (s.requests_received, s.scheduled_failures, s.scheduled_drops),
        (1, 0, 0)
    );
}

/// With the default settings the canned answer is the paragraph once, up to its full stop: an
/// answer that stops mid-sentence looks like a truncation bug.
#[test]
fn the_default_answer_ends_at_a_full_stop() {
    let text = expected_content(MockSettings::default().chunks);
    assert!(text.trim_end().ends_with('.'), "{text}");
    assert_eq!(
        text.matches("Hello").count(),
        1,
        "the paragraph once: {text}"
    );
}

// ---------------------------------------------------------------------------
// Chat's fail-error-event

#[tokio::test]
async fn fault_error_event_ends_a_completion_stream_with_an_error_object() {
    let server = start(fast()).await;
    let error = format!(
        "data: {{\"error\":{{\"message\":\"{STREAM_ERROR_MESSAGE}\",\"type\":\"server_error\",\"param\":null,\"code\":\"server_error\"}}}}\n\n"
    );
    let r = raw(
        server.addr,
        "POST",
        "/v1/chat/completions",
        &[("x-mock-chunks", "10")],
        r#"{"model":"fail-error-event","stream":true,"stream_options":{"include_usage":true}}"#,
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(r.complete, "a clean end");
    let events = r.events();
    assert_eq!(events.len(), 1 + 2 + 1, "{events:?}");
    assert_eq!(
        data_json(&events[0])["choices"][0]["delta"]["role"],
        "assistant"
    );
    assert_eq!(
        data_json(&events[2])["choices"][0]["delta"]["content"],
        "from "
    );
    assert_eq!(events[3], error);

    let r = raw(
        server.addr,
        "POST",
        "/v1/completions",
        &[],
        r#"{"model":"fail-error-event","stream":true}"#,
    )
    .await;
    assert!(r.complete);
    let events = r.events();
    assert_eq!(events.len(), 4, "{events:?}");
    assert_eq!(data_json(&events[1])["choices"][0]["text"], "Hello ");
    assert_eq!(events[3], error);

    // Responses-only: an ordinary model here.
    let r = raw(
        server.addr,
        "POST",
        "/v1/chat/completions",
        &[],
        r#"{"model":"fail-response-failed","stream":true}"#,
    )
    .await;
    assert_eq!(r.events().len(), 1 + 5 + 1 + 1);
    assert_eq!(r.events().last().unwrap(), "data: [DONE]\n\n");

    let s = server.wait("completion", |s| s.streams_active == 0).await;
    assert_eq!((s.streams_completed, s.streams_cancelled), (3, 0));
}

// ---------------------------------------------------------------------------
// The Responses API

const RESPONSES: &str = "/v1/responses";

/// One Responses event: exactly `event: <type>\ndata: <one-line JSON>\n\n`,
/// the JSON's `type` repeating the event's.
fn typed_event(event: &str) -> (String, Value) {
    let (kind, data) = event
        .strip_prefix("event: ")
        .and_then(|e| e.strip_suffix("\n\n"))
        .and_then(|e| e.split_once("\ndata: "))
        .unwrap_or_else(|| panic!("not a typed SSE event: {event:?}"));
    assert!(!data.contains('\n'), "{event:?}");
    let value: Value = serde_json::from_str(data).unwrap();
    assert_eq!(value["type"], kind, "{event:?}");
    (kind.to_owned(), value)
}

fn typed_events(r: &Raw) -> Vec<(String, Value)> {
    r.events().iter().map(|e| typed_event(e)).collect()
}

fn kinds(events: &[(String, Value)]) -> Vec<&str> {
    events.iter().map(|(k, _)| k.as_str()).collect()
}

/// The event types of a normal Responses stream with `n` deltas.
fn normal_kinds(n: usize) -> Vec<&'static str> {
    let mut kinds = vec![
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ];
    kinds.extend(std::iter::repeat_n("response.output_text.delta", n));
    kinds.extend([
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]);
    kinds
}

/// The assistant message `msg_mock<id>`.
fn message_item(id: u64, status: &str, text: Option<&str>) -> Value {
    let content = match text {
        Some(text) => json!([{"type": "output_text", "text": text, "annotations": []}]),
        None => json!([]),
    };
    json!({
        "id": format!("msg_mock{id}"),
        "type": "message",
        "status": status,
        "role": "assistant",
        "content": content
    })
}

fn response_usage(prompt: u64, n: u64) -> Value {
    json!({
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": n,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": prompt + n
    })
}

/// The Response object `resp_mock<id>`, every field spelled out.
fn response_object(
    id: u64,
    created_at: u64,
    model: &str,
    status: &str,
    output: Value,
    usage: Value,
) -> Value {
    json!({
        "id": format!("resp_mock{id}"),
        "object": "response",
        "created_at": created_at,
        "status": status,
        "background": false,
        "completed_at": if status == "completed" { json!(created_at) } else { Value::Null },
        "error": null,
        "incomplete_details": null,
        "instructions": null,
        "max_output_tokens": null,
        "max_tool_calls": null,
        "model": model,
        "output": output,
        "parallel_tool_calls": true,
        "previous_response_id": null,
        "reasoning": {"effort": null, "summary": null},
        "service_tier": "default",
        "temperature": 1.0,
        "text": {"format": {"type": "text"}, "verbosity": "medium"},
        "tool_choice": "auto",
        "tools": [],
        "top_logprobs": 0,
        "top_p": 1.0,
        "truncation": "disabled",
        "usage": usage,
        "user": null,
        "metadata": {}
    })
}

/// The completed `resp_mock<id>` with `n` chunks.
fn completed_response(id: u64, created_at: u64, model: &str, n: u32, prompt: u64) -> Value {
    let text = expected_content(n);
    response_object(
        id,
        created_at,
        model,
        "completed",
        json!([message_item(id, "completed", Some(&text))]),
        response_usage(prompt, u64::from(n)),
    )
}

#[tokio::test]
async fn responses_stream_exact_events_and_usage() {
    let server = start(fast()).await;
    let body = r#"{"model":"gpt-test","input":"hi","stream":true}"#;
    let r = raw(server.addr, "POST", RESPONSES, &[], body).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-type"),
        Some("text/event-stream; charset=utf-8")
    );
    assert_eq!(r.header("x-request-id"), Some("req_mock_1"));
    assert_v1_headers(&r);
    assert!(r.complete, "stream must end cleanly");

    let events = typed_events(&r);
    assert_eq!(kinds(&events), normal_kinds(5));
    for (i, (_, v)) in events.iter().enumerate() {
        assert_eq!(v["sequence_number"], i, "{v}");
    }
    let created_at = events[0].1["response"]["created_at"].as_u64().unwrap();
    assert!(created_at > 1_600_000_000);
    let prompt = (body.len() as u64).div_ceil(4);
    let text = expected_content(5);
    let in_progress = response_object(
        1,
        created_at,
        "gpt-test",
        "in_progress",
        json!([]),
        Value::Null,
    );
    let address = |kind: &str, n: usize| json!({"type": kind, "item_id": "msg_mock1", "output_index": 0, "content_index": 0, "sequence_number": n});
    let with = |mut event: Value, field: &str, value: Value| {
        event[field] = value;
        event
    };

    assert_eq!(
        events[0].1,
        json!({"type": "response.created", "response": in_progress, "sequence_number": 0})
    );
    assert_eq!(
        events[1].1,
        json!({"type": "response.in_progress", "response": in_progress, "sequence_number": 1})
    );
    assert_eq!(
        events[2].1,
        json!({"type": "response.output_item.added", "output_index": 0, "item": message_item(1, "in_progress", None), "sequence_number": 2})
    );
    assert_eq!(
        events[3].1,
        with(
            address("response.content_part.added", 3),
            "part",
            json!({"type": "output_text", "text": "", "annotations": []})
        )
    );
    // The exact bytes of a delta; the rest by value.
    assert_eq!(
        r.events()[4],
        "event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"item_id\":\"msg_mock1\",\"output_index\":0,\"content_index\":0,\"delta\":\"Hello \",\"logprobs\":[],\"sequence_number\":4}\n\n"
    );
    let mut deltas = String::new();
    for (i, (_, v)) in events[4..9].iter().enumerate() {
        let delta = v["delta"].as_str().unwrap();
        let expected = with(
            address("response.output_text.delta", 4 + i),
            "delta",
            json!(delta),
        );
        assert_eq!(*v, with(expected, "logprobs", json!([])));
        deltas.push_str(delta);
    }
    assert_eq!(deltas, text);
    assert_eq!(
        events[9].1,
        with(
            with(address("response.output_text.done", 9), "text", json!(text)),
            "logprobs",
            json!([])
        )
    );
    assert_eq!(
        events[10].1,
        with(
            address("response.content_part.done", 10),
            "part",
            json!({"type": "output_text", "text": text, "annotations": []})
        )
    );
    assert_eq!(
        events[11].1,
        json!({"type": "response.output_item.done", "output_index": 0, "item": message_item(1, "completed", Some(&text)), "sequence_number": 11})
    );
    assert_eq!(
        events[12].1,
        json!({"type": "response.completed", "response": completed_response(1, created_at, "gpt-test", 5, prompt), "sequence_number": 12})
    );
    assert_eq!(
        events[12].1["response"]["usage"],
        json!({"input_tokens": prompt, "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0}, "output_tokens": 5, "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": prompt + 5})
    );

    // The whole paragraph (a quoted word, an emoji) and a model that needs escaping.
    let r = raw(
        server.addr,
        "POST",
        RESPONSES,
        &[("x-mock-chunks", "24")],
        r#"{"model":"m\"q","stream":true}"#,
    )
    .await;
    let events = typed_events(&r);
    assert_eq!(kinds(&events), normal_kinds(24));
    let deltas: String = events[4..28]
        .iter()
        .map(|(_, v)| v["delta"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(deltas, expected_content(24));
    let completed = &events[31].1["response"];
    assert_eq!(completed["id"], "resp_mock2");
    assert_eq!(completed["model"], "m\"q");
    assert_eq!(
        completed["output"][0]["content"][0]["text"],
        expected_content(24)
    );

    let s = server.wait("completion", |s| s.streams_active == 0).await;
    assert_eq!((s.streams_started, s.streams_completed), (2, 2));
    assert_eq!((s.streams_cancelled, s.requests_started), (0, 0));
}

#[tokio::test]
async fn responses_first_delay_comes_before_the_first_delta() {
    let server = start(fast()).await;
    // A first-chunk delay far longer than the test: the opening events must
    // come at once, and the first delta not at all.
    let mut stream = send_raw(
        server.addr,
        "POST",
        RESPONSES,
        &[("x-mock-first-delay-ms", "60000")],
        r#"{"model":"mock-1","stream":true}"#,
    )
    .await;
    let seen = read_until(&mut stream, b"\"sequence_number\":3}\n\n").await;
    let seen = String::from_utf8(seen).unwrap();
    for kind in [
        "event: response.created\n",
        "event: response.in_progress\n",
        "event: response.output_item.added\n",
        "event: response.content_part.added\n",
    ] {
        assert!(seen.contains(kind), "{kind:?} missing from {seen:?}");
    }
    assert!(!seen.contains("output_text.delta"), "{seen:?}");
    assert_eq!(server.stats().snapshot().streams_active, 1);
    // Leaving during the wait for the first token is a cancellation.
    let t0 = Instant::now();
    drop(stream);
    let s = server
        .wait("cancellation", |s| {
            s.streams_cancelled == 1 && s.streams_active == 0
        })
        .await;
    assert_noticed("h1 close before the first delta", t0);
    assert_eq!(s.streams_completed, 0);
}

#[tokio::test]
async fn responses_pacing_matches_chat() {
    let server = start(MockSettings {
        slow_first_token_delay: Duration::from_millis(300),
        ..fast()
    })
    .await;
    let mut client = h1_client(server.addr).await;
    let t0 = Instant::now();
    let response = client
        .send_request(post(
            server.addr,
            RESPONSES,
            &[
                ("x-mock-chunks", "3"),
                ("x-mock-headers-delay-ms", "100"),
                ("x-mock-first-delay-ms", "150"),
                ("x-mock-chunk-delay-ms", "50"),
            ],
            r#"{"model":"mock-1","stream":true}"#,
        ))
        .await
        .unwrap();
    let headers_at = t0.elapsed();
    assert!(headers_at >= Duration::from_millis(100), "{headers_at:?}");
    let events = timed_events(&mut response.into_body(), t0).await;
    assert_eq!(events.len(), 3 + 8);
    // The first-chunk delay sits between content_part.added and the first delta.
    let gap = events[4].0 - events[3].0;
    assert!(
        gap >= Duration::from_millis(145),
        "first delta after {gap:?}"
    );
    assert!(events[4].0 >= headers_at + Duration::from_millis(145));
    for i in 5..7 {
        let gap = events[i].0 - events[i - 1].0;
        assert!(gap >= Duration::from_millis(45), "delta {i} after {gap:?}");
    }
    assert!(events[10].1.starts_with("event: response.completed\n"));

    // slow-first-token: the same place, its own delay.
    let t0 = Instant::now();
    let response = client
        .send_request(post(
            server.addr,
            RESPONSES,
            &[("x-mock-chunks", "1")],
            r#"{"model":"slow-first-token","stream":true}"#,
        ))
        .await
        .unwrap();
    let events = timed_events(&mut response.into_body(), t0).await;
    assert!(events[3]
        .1
        .starts_with("event: response.content_part.added\n"));
    let gap = events[4].0 - events[3].0;
    assert!(
        gap >= Duration::from_millis(295),
        "first delta after {gap:?}"
    );
}

#[tokio::test]
async fn responses_fault_midstream_cuts_after_two_deltas() {
    let server = start(fast()).await;
    let r = raw(
        server.addr,
        "POST",
        RESPONSES,
        &[("x-mock-chunk-delay-ms", "0"), ("x-mock-chunks", "10")],
        r#"{"model":"fail-midstream","stream":true}"#,
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(!r.complete, "the chunked body must not terminate cleanly");
    let events = typed_events(&r);
    assert_eq!(kinds(&events), normal_kinds(2)[..6]);
    assert_eq!(events[5].1["delta"], "from ");
    assert_eq!(events[5].1["sequence_number"], 5);
    let s = server.wait("abort", |s| s.streams_active == 0).await;
    assert_eq!((s.streams_completed, s.streams_cancelled), (0, 0));
}

#[tokio::test]
async fn responses_faults_without_a_terminal_event() {
    let server = start(fast()).await;

    // fail-no-done: everything but response.completed, then a clean end.
    let r = raw(
        server.addr,
        "POST",
        RESPONSES,
        &[],
        r#"{"model":"fail-no-done","stream":true}"#,
    )
    .await;
    assert!(r.complete);
    let events = typed_events(&r);
    assert_eq!(kinds(&events), normal_kinds(5)[..12]);

    // fail-error-event: two deltas, then the error event.
    let r = raw(
        server.addr,
        "POST",
        RESPONSES,
        &[("x-mock-chunks", "10")],
        r#"{"model":"fail-error-event","stream":true}"#,
    )
    .await;
    assert!(r.complete);
    let raw_events = r.events();
    assert_eq!(raw_events.len(), 4 + 2 + 1, "{raw_events:?}");
    assert_eq!(kinds(&typed_events(&r)[..6]), normal_kinds(2)[..6]);
    assert_eq!(
        raw_events[6],
        format!(
            "event: error\ndata: {{\"type\":\"error\",\"code\":\"server_error\",\"message\":\"{STREAM_ERROR_MESSAGE}\",\"param\":null,\"sequence_number\":6,\"error\":{{\"type\":\"server_error\",\"code\":\"server_error\",\"message\":\"{STREAM_ERROR_MESSAGE}\",\"param\":null}}}}\n\n"
        )
    );

    // fail-response-failed: two deltas, then response.failed with the partial message.
    let r = raw(
        server.addr,
        "POST",
        RESPONSES,
        &[("x-mock-chunks", "10")],
        r#"{"model":"fail-response-failed","stream":true}"#,
    )
    .await;
    assert!(r.complete);
    let events = typed_events(&r);
    assert_eq!(events.len(), 4 + 2 + 1);
    let created_at = events[0].1["response"]["created_at"].as_u64().unwrap();
    let mut failed = response_object(
        3,
        created_at,
        "fail-response-failed",
        "failed",
        json!([message_item(3, "incomplete", Some("Hello from "))]),
        Value::Null,
    );
    failed["error"] = json!({"code": "server_error", "message": STREAM_ERROR_MESSAGE});
    assert_eq!(
        events[6].1,
        json!({"type": "response.failed", "response": failed, "sequence_number": 6})
    );

    let s = server.wait("completion", |s| s.streams_active == 0).await;
    assert_eq!((s.streams_completed, s.streams_cancelled), (3, 0));
}

#[tokio::test]
async fn responses_faults_shared_with_chat() {
    let server = start(fast()).await;

    let r = raw(
        server.addr,
        "POST",
        RESPONSES,
        &[],
        r#"{"model":"fail-malformed","stream":true}"#,
    )
    .await;
    assert!(r.complete);
    let events = r.events();
    assert_eq!(events.len(), 1 + normal_kinds(5).len());
    assert_eq!(typed_event(&events[0]).0, "response.created");
    assert_eq!(
        events[1],
        "event: response.in_progress\ndata: {this is not json\n\n"
    );
    let (kind, v) = typed_event(&events[2]);
    assert_eq!(
        (kind.as_str(), &v["sequence_number"]),
        ("response.in_progress", &json!(1))
    );

    let r = raw(
        server.addr,
        "POST",
        RESPONSES,
        &[("x-mock-chunks", "1")],
        r#"{"model":"fail-oversized","stream":true}"#,
    )
    .await;
    assert!(r.complete);
    let events = r.events();
    assert_eq!(events.len(), 1 + normal_kinds(1).len());
    assert_eq!(events[1].len(), "data: ".len() + OVERSIZED_LINE_BYTES + 2);
    assert!(events[1].starts_with("data: xxx"));
    assert_eq!(typed_event(&events[2]).1["sequence_number"], 1);

    let r = raw(
        server.addr,
        "POST",
        RESPONSES,
        &[("x-mock-chunks", "2")],
        r#"{"model":"fail-not-event-stream","stream":true}"#,
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    let v = r.json();
    assert_eq!(v["status"], "completed");
    assert_eq!(v["output"][0]["content"][0]["text"], expected_content(2));

    let r = raw(
        server.addr,
        "POST",
        RESPONSES,
        &[],
        r#"{"model":"fail-429","stream":true}"#,
    )
    .await;
    assert_eq!(r.status, 429);
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(r.json()["error"]["code"], "rate_limit_exceeded");
    let r = raw(
        server.addr,
        "POST",
        RESPONSES,
        &[("authorization", "Bearer sk-echo")],
        r#"{"model":"fail-401","stream":true}"#,
    )
    .await;
    assert_eq!(r.status, 401);
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("sk-echo"));

    // Stream-shaping faults leave a non-streaming answer alone.
    for model in ["fail-midstream", "fail-error-event", "fail-response-failed"] {
        let r = raw(
            server.addr,
            "POST",
            RESPONSES,
            &[],
            &format!(r#"{{"model":"{model}"}}"#),
        )
        .await;
        assert_eq!(r.json()["status"], "completed", "{model}");
    }
}

#[tokio::test]
async fn responses_non_streaming_and_bad_requests() {
    let server = start(fast()).await;
    let body = r#"{"model":"gpt-test","instructions":"Be brief.","background":true,"input":[{"role":"user","content":"hi"}]}"#;
    let r = raw(
        server.addr,
        "POST",
        RESPONSES,
        &[("x-mock-chunks", "3")],
        body,
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_v1_headers(&r);
    let v = r.json();
    let created_at = v["created_at"].as_u64().unwrap();
    let prompt = (body.len() as u64).div_ceil(4);
    let mut expected = completed_response(1, created_at, "gpt-test", 3, prompt);
    expected["instructions"] = json!("Be brief.");
    expected["background"] = json!(true);
    assert_eq!(v, expected);
    let s = server.stats().snapshot();
    assert_eq!((s.requests_completed, s.streams_started), (1, 0));

    let bad = |body: &'static str, headers: &'static [(&'static str, &'static str)]| {
        let addr = server.addr;
        async move {
            let r = raw(addr, "POST", RESPONSES, headers, body).await;
            assert_eq!(r.status, 400, "{body}");
            assert_eq!(r.json()["error"]["type"], "invalid_request_error");
            r.json()["error"].clone()
        }
    };
    assert_eq!(bad(r#"{"input":"hi"}"#, &[]).await["param"], "model");
    assert_eq!(
        bad(r#"{"model":"m","input":5}"#, &[]).await["param"],
        "input"
    );
    assert!(bad("{nope", &[]).await["message"]
        .as_str()
        .unwrap()
        .contains("parse the JSON body"));
    assert!(
        bad(r#"{"model":"m","instructions":7}"#, &[]).await["message"]
            .as_str()
            .unwrap()
            .contains("parse the JSON body")
    );
    assert!(
        bad(r#"{"model":"m"}"#, &[("x-mock-chunks", "100001")]).await["message"]
            .as_str()
            .unwrap()
            .contains("100000")
    );
    // None of them was kept.
    let r = raw(server.addr, "GET", "/v1/responses/resp_mock2", &[], "").await;
    assert_eq!(r.status, 404);
}

#[tokio::test]
async fn responses_retrieval_replays_the_stream() {
    let server = start(fast()).await;
    let r = raw(
        server.addr,
        "POST",
        RESPONSES,
        &[("x-mock-chunks", "3")],
        r#"{"model":"mock-1","input":"hi","stream":true}"#,
    )
    .await;
    let original = r.events();
    assert_eq!(original.len(), 3 + 8);
    let completed = typed_event(original.last().unwrap()).1["response"].clone();

    let r = raw(server.addr, "GET", "/v1/responses/resp_mock1", &[], "").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.header("x-request-id"), Some("req_mock_2"));
    assert_eq!(r.json(), completed);

    // The same stream again, byte for byte (the request's own chunk count is ignored).
    let r = raw(
        server.addr,
        "GET",
        "/v1/responses/resp_mock1?stream=true",
        &[("x-mock-chunks", "7")],
        "",
    )
    .await;
    assert_eq!(
        r.header("content-type"),
        Some("text/event-stream; charset=utf-8")
    );
    assert!(r.complete);
    assert_eq!(r.events(), original);

    let r = raw(
        server.addr,
        "GET",
        "/v1/responses/resp_mock1?stream=true&starting_after=5",
        &[],
        "",
    )
    .await;
    assert!(r.complete);
    assert_eq!(r.events(), original[6..]);
    let captured = server.upstream.last_request().unwrap();
    assert_eq!(
        (captured.method.as_str(), captured.path.as_str()),
        ("GET", "/v1/responses/resp_mock1")
    );
    assert_eq!(
        captured.query.as_deref(),
        Some("stream=true&starting_after=5")
    );

    // Past the end: an empty stream that ends cleanly.
    let r = raw(
        server.addr,
        "GET",
        "/v1/responses/resp_mock1?starting_after=10&stream=true",
        &[],
        "",
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(r.complete);
    assert!(r.events().is_empty());

    let r = raw(
        server.addr,
        "GET",
        "/v1/responses/resp_mock1?stream=true&starting_after=x",
        &[],
        "",
    )
    .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["param"], "starting_after");

    let s = server.wait("replays", |s| s.streams_active == 0).await;
    assert_eq!((s.streams_started, s.streams_completed), (4, 4));
    assert_eq!((s.requests_started, s.requests_completed), (2, 2));
}

#[tokio::test]
async fn responses_cancel_delete_and_input_items() {
    let server = start(fast()).await;
    let background = r#"{"model":"mock-1","background":true,"input":[{"role":"user","content":[{"type":"input_text","text":"first"}]},{"role":"user","content":"second"}]}"#;
    let r = raw(server.addr, "POST", RESPONSES, &[], background).await;
    assert_eq!(r.json()["id"], "resp_mock1");
    let created_at = r.json()["created_at"].as_u64().unwrap();
    let r = raw(
        server.addr,
        "POST",
        RESPONSES,
        &[],
        r#"{"model":"mock-1","input":"just text"}"#,
    )
    .await;
    assert_eq!(r.json()["id"], "resp_mock2");

    // Cancelling a background response: it stays cancelled.
    let prompt = (background.len() as u64).div_ceil(4);
    let mut cancelled = completed_response(1, created_at, "mock-1", 5, prompt);
    cancelled["status"] = json!("cancelled");
    cancelled["completed_at"] = Value::Null;
    cancelled["background"] = json!(true);
    for (method, path) in [
        ("POST", "/v1/responses/resp_mock1/cancel"),
        ("GET", "/v1/responses/resp_mock1"),
        ("POST", "/v1/responses/resp_mock1/cancel"),
    ] {
        let r = raw(server.addr, method, path, &[], "").await;
        assert_eq!(r.status, 200, "{method} {path}");
        assert_v1_headers(&r);
        assert_eq!(r.json(), cancelled, "{method} {path}");
    }
    // Its replay has no terminal event.
    let r = raw(
        server.addr,
        "GET",
        "/v1/responses/resp_mock1?stream=true",
        &[],
        "",
    )
    .await;
    assert!(r.complete);
    assert_eq!(kinds(&typed_events(&r)), normal_kinds(5)[..12]);

    let r = raw(
        server.addr,
        "POST",
        "/v1/responses/resp_mock2/cancel",
        &[],
        "",
    )
    .await;
    assert_eq!(r.status, 400);
    assert_eq!(
        r.json(),
        json!({"error": {"message": "Only responses created with background=true can be cancelled.", "type": "invalid_request_error", "param": null, "code": null}})
    );

    let input_items = |id: u64, text: &str| {
        let item = format!("msg_mock{id}_input");
        json!({
            "object": "list",
            "data": [{"id": item, "type": "message", "role": "user", "status": "completed", "content": [{"type": "input_text", "text": text}]}],
            "first_id": item,
            "last_id": item,
            "has_more": false
        })
    };
    let r = raw(
        server.addr,
        "GET",
        "/v1/responses/resp_mock1/input_items",
        &[],
        "",
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json(), input_items(1, "first\nsecond"));
    let r = raw(
        server.addr,
        "GET",
        "/v1/responses/resp_mock2/input_items?limit=5",
        &[],
        "",
    )
    .await;
    assert_eq!(r.json(), input_items(2, "just text"));

    let r = raw(server.addr, "DELETE", "/v1/responses/resp_mock2", &[], "").await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.json(),
        json!({"id": "resp_mock2", "object": "response.deleted", "deleted": true})
    );
    let not_found = |id: &str| json!({"error": {"message": format!("Response with id '{id}' not found."), "type": "invalid_request_error", "param": null, "code": null}});
    for (method, path) in [
        ("GET", "/v1/responses/resp_mock2"),
        ("GET", "/v1/responses/resp_mock2?stream=true"),
        ("DELETE", "/v1/responses/resp_mock2"),
        ("POST", "/v1/responses/resp_mock2/cancel"),
        ("GET", "/v1/responses/resp_mock2/input_items"),
    ] {
        let r = raw(server.addr, method, path, &[], "").await;
        assert_eq!(r.status, 404, "{method} {path}");
        assert_v1_headers(&r);
        assert_eq!(r.json(), not_found("resp_mock2"), "{method} {path}");
    }
    for id in ["resp_mock999", "nope", "resp_mock01", "resp_mock+1"] {
        let r = raw(server.addr, "GET", &format!("/v1/responses/{id}"), &[], "").await;
        assert_eq!(r.json(), not_found(id));
    }
    let long = "x".repeat(1000);
    let r = raw(
        server.addr,
        "GET",
        &format!("/v1/responses/{long}"),
        &[],
        "",
    )
    .await;
    assert_eq!(r.status, 404);
    assert_eq!(r.json(), not_found(&format!("{}...", &long[..64])));

    // Other methods and paths: the usual unknown-URL answer.
    for (method, path) in [
        ("GET", "/v1/responses"),
        ("PUT", "/v1/responses/resp_mock1"),
        ("POST", "/v1/responses/resp_mock1"),
        ("GET", "/v1/responses/resp_mock1/cancel"),
        ("DELETE", "/v1/responses/resp_mock1/input_items"),
        ("GET", "/v1/responses/"),
        ("GET", "/v1/responses/resp_mock1/other"),
    ] {
        let r = raw(server.addr, method, path, &[], "").await;
        assert_eq!(r.status, 404, "{method} {path}");
        assert_eq!(
            r.json()["error"]["message"],
            format!("Invalid URL ({method} {path})")
        );
    }

    // `store: false` keeps nothing; the schedules apply here too.
    let r = raw(
        server.addr,
        "POST",
        RESPONSES,
        &[],
        r#"{"model":"mock-1","store":false}"#,
    )
    .await;
    let id = r.json()["id"].as_str().unwrap().to_owned();
    let r = raw(server.addr, "GET", &format!("/v1/responses/{id}"), &[], "").await;
    assert_eq!(r.status, 404);
    server.upstream.fail_next(1, 503, None);
    let r = raw(server.addr, "GET", "/v1/responses/resp_mock1", &[], "").await;
    assert_eq!(r.status, 503);
    let r = raw(server.addr, "GET", "/v1/responses/resp_mock1", &[], "").await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn responses_store_is_bounded_and_cuts_what_it_keeps() {
    let server = start(MockSettings {
        stored_responses: 3,
        ..fast()
    })
    .await;
    for _ in 0..4 {
        let r = raw(
            server.addr,
            "POST",
            RESPONSES,
            &[("x-mock-chunks", "1")],
            r#"{"model":"mock-1","input":"hi"}"#,
        )
        .await;
        assert_eq!(r.status, 200);
    }
    let status = |id: u64| {
        let addr = server.addr;
        async move {
            raw(
                addr,
                "GET",
                &format!("/v1/responses/resp_mock{id}"),
                &[],
                "",
            )
            .await
            .status
        }
    };
    // The oldest went first.
    assert_eq!(status(1).await, 404);
    for id in 2..=4 {
        assert_eq!(status(id).await, 200, "resp_mock{id}");
    }

    // Megabytes of input, instructions or model name are kept (and echoed) cut.
    let long = "é".repeat(3000); // 6000 bytes
    let body = json!({"model": long, "instructions": long, "input": long}).to_string();
    let r = raw(server.addr, "POST", RESPONSES, &[], &body).await;
    let v = r.json();
    assert_eq!(v["model"], "é".repeat(128));
    assert_eq!(v["instructions"], "é".repeat(2048));
    let id = v["id"].as_str().unwrap().to_owned();
    let r = raw(
        server.addr,
        "GET",
        &format!("/v1/responses/{id}/input_items"),
        &[],
        "",
    )
    .await;
    assert_eq!(r.json()["data"][0]["content"][0]["text"], "é".repeat(2048));

    let none = start(MockSettings {
        stored_responses: 0,
        ..fast()
    })
    .await;
    raw(none.addr, "POST", RESPONSES, &[], r#"{"model":"mock-1"}"#).await;
    let r = raw(none.addr, "GET", "/v1/responses/resp_mock1", &[], "").await;
    assert_eq!(r.status, 404);
}

#[tokio::test]
async fn responses_client_disconnect_mid_stream_counts_cancelled() {
    let server = start(fast()).await;
    let mut stream = send_raw(
        server.addr,
        "POST",
        RESPONSES,
        &[("x-mock-chunks", "1000"), ("x-mock-chunk-delay-ms", "50")],
        r#"{"model":"mock-1","stream":true}"#,
    )
    .await;
    read_until(&mut stream, b"\"delta\":\"Hello \"").await;
    assert_eq!(server.stats().snapshot().streams_active, 1);

    let t0 = Instant::now();
    drop(stream);
    let s = server
        .wait("cancellation", |s| {
            s.streams_cancelled == 1 && s.streams_active == 0
        })
        .await;
    assert_noticed("h1 close mid-response", t0);
    assert_eq!((s.streams_started, s.streams_completed), (1, 0));

    // The same over HTTP/2: a reset stream.
    let mut client = h2_client(server.addr).await;
    let response = client
        .send_request(post(
            server.addr,
            RESPONSES,
            &[("x-mock-chunks", "1000"), ("x-mock-chunk-delay-ms", "50")],
            r#"{"model":"mock-1","stream":true}"#,
        ))
        .await
        .unwrap();
    let mut body = response.into_body();
    tokio::time::timeout(DEADLINE, body.frame())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    drop(body);
    let s = server
        .wait("h2 cancellation", |s| {
            s.streams_cancelled == 2 && s.streams_active == 0
        })
        .await;
    assert_eq!(s.streams_completed, 0);
}
