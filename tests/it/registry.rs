//! The stream registry never leaks: however a stream ends (completed, client gone, upstream
//! failed, ended by an operator), over HTTP/1.1 keep-alive connections and multiplexed HTTP/2
//! ones, its entry goes, and so does every connection count once clients close. And while a
//! stream runs, its entry follows it: state, counters and time to first event.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use crate::common::*;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;
use tidegate::mock::MockSettings;
use tokio::net::TcpStream;
use tokio::task::{JoinHandle, JoinSet};

/// Streams in the mixed run, how many run at once, and HTTP/2 connections shared by the
/// HTTP/2 workers.
const STREAMS: usize = 1_000;
const WORKERS: usize = 100;
const H2_CONNECTIONS: usize = 5;

/// Long enough to outlive the test (1000 chunks, 50 ms apart); only its first event is read.
const LONG: [(&str, &str); 2] = [("x-mock-chunks", "1000"), ("x-mock-chunk-delay-ms", "50")];
/// Done at once.
const SHORT: [(&str, &str); 2] = [("x-mock-chunks", "3"), ("x-mock-chunk-delay-ms", "0")];

/// One HTTP/1.1 keep-alive connection that waits until it is ready before each request, so it
/// can carry one request after another. Dropping it closes the socket.
struct H1 {
    sender: http1::SendRequest<Full<Bytes>>,
    task: JoinHandle<()>,
}

impl Drop for H1 {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl H1 {
    async fn open(addr: SocketAddr) -> H1 {
        let stream = TcpStream::connect(addr).await.unwrap();
        let (sender, conn) = http1::handshake(TokioIo::new(stream)).await.unwrap();
        let task = tokio::spawn(async move {
            let _ = conn.await;
        });
        H1 { sender, task }
    }

    async fn send(&mut self, request: Request<Full<Bytes>>) -> Response<Incoming> {
        tokio::time::timeout(PATIENCE, async {
            self.sender.ready().await.expect("connection ready");
            self.sender.send_request(request).await.expect("response")
        })
        .await
        .expect("response headers in time")
    }
}

/// A multiplexed HTTP/2 connection; clones of `sender` share it.
async fn open_h2(addr: SocketAddr) -> (http2::SendRequest<Full<Bytes>>, JoinHandle<()>) {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (sender, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
        .await
        .unwrap();
    let task = tokio::spawn(async move {
        let _ = conn.await;
    });
    (sender, task)
}

async fn send_h2(
    sender: &mut http2::SendRequest<Full<Bytes>>,
    request: Request<Full<Bytes>>,
) -> Response<Incoming> {
    tokio::time::timeout(PATIENCE, async {
        sender.ready().await.expect("connection ready");
        sender.send_request(request).await.expect("response")
    })
    .await
    .expect("response headers in time")
}

async fn summary(env: &TestEnv) -> Value {
    let (status, _, json) = fetch_json(get(env.admin, "/admin/summary")).await;
    assert_eq!(status, StatusCode::OK);
    json
}

async fn stream_view(env: &TestEnv, id: &str) -> Option<Value> {
    let (status, _, json) = fetch_json(get(env.admin, &format!("/admin/streams/{id}"))).await;
    match status {
        StatusCode::OK => Some(json),
        StatusCode::NOT_FOUND => None,
        other => panic!("GET stream {id}: {other} {json}"),
    }
}

/// How one stream of the mixed run ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    /// The upstream finishes: the client gets `[DONE]`.
    Completed,
    /// The client leaves after the first event (HTTP/1.1: closes the connection; HTTP/2:
    /// resets the stream).
    ClientGone,
    /// The upstream connection breaks after two chunks: a final `upstream_reset` event.
    Midstream,
    /// The upstream answers 500: relayed as it is, before any event.
    Status500,
    /// The upstream ends without `[DONE]`: a final `upstream_incomplete_stream` event.
    NoDone,
    /// An operator DELETEs it after the first event: a final `terminated_by_admin` event.
    AdminKilled,
}

const KINDS: [Kind; 6] = [
    Kind::Completed,
    Kind::ClientGone,
    Kind::Midstream,
    Kind::Status500,
    Kind::NoDone,
    Kind::AdminKilled,
];

impl Kind {
    fn model(self) -> &'static str {
        match self {
            Kind::Midstream => "fail-midstream",
            Kind::Status500 => "fail-500",
            Kind::NoDone => "fail-no-done",
            _ => "mock-1",
        }
    }

    fn headers(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Kind::ClientGone | Kind::AdminKilled => &LONG,
            _ => &SHORT,
        }
    }
}

/// What the client of one stream did with its connection afterwards.
enum After {
    Keep,
    Close,
}

/// Runs one stream of `kind` on the response to its request and checks what the client saw.
async fn check_stream(env: &TestEnv, kind: Kind, response: Response<Incoming>) -> After {
    if kind == Kind::Status500 {
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let body = read_to_end(response.into_body()).await;
        let json: Value = serde_json::from_slice(&body).expect("the upstream's JSON error");
        assert_eq!(json["error"]["type"], "server_error", "{json}");
        return After::Keep;
    }
    assert_eq!(response.status(), StatusCode::OK, "{kind:?}");
    let id = response.headers()["x-tidegate-stream-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let mut body = response.into_body();
    match kind {
        Kind::Completed => {
            let all = read_to_end(body).await;
            let data = sse_data(&all);
            assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "{data:?}");
            assert!(!data.iter().any(|d| d.contains("\"error\"")));
            After::Keep
        }
        Kind::ClientGone => {
            read_until(&mut body, |b| !sse_data(b).is_empty()).await;
            drop(body);
            After::Close
        }
        Kind::Midstream | Kind::NoDone => {
            let all = read_to_end(body).await;
            let code = if kind == Kind::Midstream {
                "upstream_reset"
            } else {
                "upstream_incomplete_stream"
            };
            assert_eq!(final_error(&all)["code"], code);
            After::Keep
        }
        Kind::AdminKilled => {
            let mut seen = read_until(&mut body, |b| !sse_data(b).is_empty()).await;
            let request = Request::builder()
                .method(Method::DELETE)
                .uri(format!("http://{}/admin/streams/{id}", env.admin))
                .header("host", env.admin.to_string())
                .body(Full::new(Bytes::new()))
                .unwrap();
            let (status, _, json) = fetch_json(request).await;
            assert_eq!(status, StatusCode::ACCEPTED, "{json}");
            seen.extend_from_slice(&read_to_end(body).await);
            assert_eq!(final_error(&seen)["code"], "terminated_by_admin");
            After::Keep
        }
        Kind::Status500 => unreachable!(),
    }
}

/// Proves: after 1,000 streams that end in every way there is, over HTTP/1.1 keep-alive and
/// shared HTTP/2 connections, 100 at a time, the registry is empty, the connection counts go
/// to zero once the clients close, and the mock has no upstream stream left open; each client
/// saw the ending its kind calls for, and the mock's counters match them one for one. A leaked
/// registry entry, a leaked connection count or an upstream request left running would fail it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_streams_ending_every_way_leave_nothing_behind() {
    // The upstream's deliberate 500s must not open its breaker and shed the other kinds, nor
    // be retried: the mock's counters are checked one for one against the kinds.
    let env = std::sync::Arc::new(
        start_with(MockSettings::default(), |c| {
            c.retry.max_attempts = 1;
            c.breaker.consecutive_failures = 0;
            c.breaker.failure_percent = 0;
        })
        .await,
    );
    let mut h2_senders = Vec::new();
    let mut h2_tasks = Vec::new();
    for _ in 0..H2_CONNECTIONS {
        let (sender, task) = open_h2(env.gateway).await;
        h2_senders.push(sender);
        h2_tasks.push(task);
    }

    let mut workers = JoinSet::new();
    for worker in 0..WORKERS {
        let env = env.clone();
        // One worker in four multiplexes on a shared HTTP/2 connection.
        let mut h2 = (worker % 4 == 0).then(|| h2_senders[worker / 4 % H2_CONNECTIONS].clone());
        workers.spawn(async move {
            let mut kinds = Vec::new();
            let mut h1: Option<H1> = None;
            for job in (worker..STREAMS).step_by(WORKERS) {
                let kind = KINDS[job % KINDS.len()];
                let request = post(
                    env.gateway,
                    "/v1/chat/completions",
                    &chat_body(kind.model(), true),
                    kind.headers(),
                );
                let response = match &mut h2 {
                    Some(sender) => send_h2(sender, request).await,
                    None => {
                        if h1.is_none() {
                            h1 = Some(H1::open(env.gateway).await);
                        }
                        h1.as_mut().unwrap().send(request).await
                    }
                };
                if let After::Close = check_stream(&env, kind, response).await {
                    // On HTTP/1.1 leaving means closing the connection; on HTTP/2 the dropped
                    // body reset the one stream and the connection stays.
                    h1 = None;
                }
                kinds.push(kind);
            }
            // Keep-alive connections stay open until the end of the test.
            (kinds, h1)
        });
    }
    let mut counts: BTreeMap<Kind, u64> = BTreeMap::new();
    let mut idle_connections = Vec::new();
    let run = tokio::time::timeout(Duration::from_secs(120), async {
        while let Some(result) = workers.join_next().await {
            let (kinds, h1) = result.expect("a worker panicked");
            for kind in kinds {
                *counts.entry(kind).or_default() += 1;
            }
            idle_connections.push(h1);
        }
    })
    .await;
    assert!(run.is_ok(), "1,000 streams within 2 minutes");
    assert_eq!(counts.values().sum::<u64>(), STREAMS as u64);

    // Every stream has ended; the registry is empty even while the connections stay open.
    let s = wait_for("an empty registry", PATIENCE, || async {
        let s = summary(&env).await;
        (s["streams"] == 0).then_some(s)
    })
    .await;
    assert_eq!(s["oldest_stream_age_ms"], Value::Null);
    let (_, _, list) = fetch_json(get(env.admin, "/admin/streams")).await;
    assert_eq!(list["matched"], 0, "{list}");
    assert!(
        s["connections"]["http2"] == H2_CONNECTIONS,
        "the HTTP/2 connections are still open: {s}"
    );

    // The clients close: no connection is left counted.
    drop(idle_connections);
    drop(h2_senders);
    for task in &h2_tasks {
        task.abort();
    }
    wait_for("no open API connection", PATIENCE, || async {
        let s = summary(&env).await;
        (s["connections"]["http1"] == 0 && s["connections"]["http2"] == 0).then_some(())
    })
    .await;

    // And no upstream request is left running; each ending shows in the mock's counters.
    let m = wait_for_mock(env.mock, "no active upstream stream", PATIENCE, |s| {
        s.streams_active == 0 && s.requests_active == 0
    })
    .await;
    let n = |k: Kind| counts.get(&k).copied().unwrap_or(0);
    assert_eq!(m.streams_started, STREAMS as u64 - n(Kind::Status500));
    assert_eq!(
        m.streams_completed,
        n(Kind::Completed) + n(Kind::NoDone),
        "{m:?}"
    );
    assert_eq!(
        m.streams_cancelled,
        n(Kind::ClientGone) + n(Kind::AdminKilled),
        "{m:?}"
    );
    assert_eq!(m.requests_completed, n(Kind::Status500), "{m:?}");
    assert_eq!(summary(&env).await["streams"], 0);
}

/// The waits the mock makes in the life-cycle test: long enough to be seen by polling, even on
/// a loaded machine.
const HEADERS_DELAY_MS: u64 = 2_000;
const FIRST_DELAY_MS: u64 = 2_000;
const CHUNKS: u64 = 20;

/// Proves: a stream is listed from the moment its request is accepted, and its entry follows
/// it: `waiting_for_upstream` until the upstream's headers, `waiting_for_first_token` until the
/// first event, then `streaming` with `first_event_after_ms` set (at least the two upstream
/// waits) and `events` and `bytes` growing with what the client receives; it leaves the list
/// when it completes.
#[tokio::test]
async fn a_stream_is_listed_while_it_runs_and_its_entry_follows_it() {
    let env = start().await;
    let gateway = env.gateway;
    let headers_delay = HEADERS_DELAY_MS.to_string();
    let first_delay = FIRST_DELAY_MS.to_string();
    let request = post(
        gateway,
        "/v1/chat/completions",
        &chat_body("model-life", true),
        &[
            ("x-request-id", "life-1"),
            ("x-mock-headers-delay-ms", &headers_delay),
            ("x-mock-first-delay-ms", &first_delay),
            ("x-mock-chunks", &CHUNKS.to_string()),
            ("x-mock-chunk-delay-ms", "100"),
        ],
    );
    let mut conn = H1::open(gateway).await;
    let pending = tokio::spawn(async move {
        let response = conn.send(request).await;
        (conn, response)
    });

    // Waiting for the upstream's headers: listed at once, nothing relayed yet.
    let first = wait_for("the stream to be listed", PATIENCE, || async {
        let (_, _, list) = fetch_json(get(env.admin, "/admin/streams?model=model-life")).await;
        list["streams"].as_array().unwrap().first().cloned()
    })
    .await;
    assert_eq!(first["state"], "waiting_for_upstream", "{first}");
    assert_eq!(first["request_id"], "life-1");
    assert_eq!(first["events"], 0);
    assert_eq!(first["bytes"], 0);
    assert_eq!(first["first_event_after_ms"], Value::Null);
    let id = first["id"].as_str().unwrap().to_owned();

    // Headers in, no event yet.
    let view = wait_for("waiting_for_first_token", PATIENCE, || async {
        let view = stream_view(&env, &id).await.expect("still listed");
        (view["state"] != "waiting_for_upstream").then_some(view)
    })
    .await;
    assert_eq!(view["state"], "waiting_for_first_token", "{view}");
    assert_eq!(view["events"], 0);
    assert_eq!(view["first_event_after_ms"], Value::Null);
    assert!(
        view["age_ms"].as_u64().unwrap() >= HEADERS_DELAY_MS,
        "{view}"
    );
    let (conn, response) = tokio::time::timeout(PATIENCE, pending)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["x-tidegate-stream-id"], id.as_str());
    let mut body = response.into_body();

    // Events flow: the state, the time to first event and the counters follow.
    let mut received = Vec::new();
    let mut last_events = 0;
    let mut last_bytes = 0;
    let mut increases = 0;
    // Bounded by the stream's own length (CHUNKS + 3 events) and read_until's deadline.
    for want in 1..=4usize {
        // read_until returns only what it read this time: keep the whole stream.
        received.extend(read_until(&mut body, |b| sse_data(b).len() >= 3).await);
        assert!(sse_data(&received).len() >= want * 3);
        let view = stream_view(&env, &id).await.expect("still listed");
        assert_eq!(view["state"], "streaming", "{view}");
        let after = view["first_event_after_ms"].as_u64().expect("set");
        assert!(
            after >= HEADERS_DELAY_MS + FIRST_DELAY_MS - 5,
            "first event after both upstream waits: {view}"
        );
        let events = view["events"].as_u64().unwrap();
        let bytes = view["bytes"].as_u64().unwrap();
        // Counted as relayed, so never behind what the client has read.
        assert!(events >= sse_data(&received).len() as u64, "{view}");
        assert!(bytes >= received.len() as u64, "{view}");
        assert!(events >= last_events && bytes >= last_bytes);
        increases += usize::from(events > last_events && bytes > last_bytes);
        (last_events, last_bytes) = (events, bytes);
    }
    assert!(increases >= 3, "the counters grew as the stream went on");

    let rest = read_to_end(body).await;
    received.extend_from_slice(&rest);
    let data = sse_data(&received);
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    // Role, content chunks, finish.
    assert_eq!(data.len() as u64, CHUNKS + 3);
    wait_for(
        "the finished stream to leave the list",
        PATIENCE,
        || async { stream_view(&env, &id).await.is_none().then_some(()) },
    )
    .await;
    drop(conn);
}
