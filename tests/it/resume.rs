//! Resumable streams (`[resume]`): a client cut mid-stream picks the stream back up with
//! `GET /v1/streams/{id}`, and what it assembles is the upstream's answer exactly once, over
//! HTTP/1.1 and HTTP/2; a resume from before what the buffer holds is `409`; a stream nobody
//! resumes is cancelled upstream after its grace; wrong tokens, ids and keys are `404`.

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use serde_json::Value;
use tidegate::config::{AuthMode, Config};
use tidegate::mock::MockSettings;

use crate::cli::temp_file;
use crate::common::*;

const TOKEN_HEADER: &str = "x-tidegate-resume-token";
const STREAM_ID_HEADER: &str = "x-tidegate-stream-id";

fn resumable(config: &mut Config) {
    config.resume.enabled = true;
}

/// One parsed event: its id (the last-event-id buffer when it was dispatched) and data.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Event {
    id: String,
    data: String,
}

fn events(bytes: &[u8]) -> Vec<Event> {
    tidegate::sse::parser::parse_all(bytes, 16 << 20)
        .expect("valid SSE")
        .into_iter()
        .map(|e| Event {
            id: e.last_event_id,
            data: e.data,
        })
        .collect()
}

/// The text the events carry (each chunk's `choices[0].delta.content`).
fn content(events: &[Event]) -> String {
    events
        .iter()
        .filter(|e| e.data != "[DONE]")
        .filter_map(|e| serde_json::from_str::<Value>(&e.data).ok())
        .filter_map(|v| {
            v["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect()
}

/// Asserts the events carry ids `first`, `first + 1`, ... in order.
fn assert_ids_from(events: &[Event], first: u64) {
    for (i, event) in events.iter().enumerate() {
        assert_eq!(
            event.id,
            (first + i as u64).to_string(),
            "event {i}: {event:?}"
        );
    }
}

/// The whole answer for `chunks` chunks, read without a cut.
async fn reference(env: &TestEnv, chunks: &str) -> Vec<Event> {
    let (_conn, body) = open_stream(env.gateway, "mock-1", &[("x-mock-chunks", chunks)]).await;
    let all = events(&read_to_end(body).await);
    assert_eq!(all.last().map(|e| e.data.as_str()), Some("[DONE]"));
    all
}

fn resume_request(
    env: &TestEnv,
    stream_id: &str,
    token: &str,
    last_event_id: Option<&str>,
) -> Request<Full<Bytes>> {
    let mut path = format!("/v1/streams/{stream_id}?token={token}");
    if let Some(id) = last_event_id {
        path.push_str(&format!("&last_event_id={id}"));
    }
    get(env.gateway, &path)
}

/// Starts a stream on a new connection with `extra` headers (x-mock-* pacing, a key); returns
/// the connection, the body, the stream id and the resume token.
async fn open_resumable(env: &TestEnv, extra: &[(&str, &str)]) -> (Conn, Incoming, String, String) {
    let mut conn = Conn::open(env.gateway).await;
    let response = conn
        .send(post(
            env.gateway,
            "/v1/chat/completions",
            &chat_body("mock-1", true),
            extra,
        ))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let id = header(response.headers(), STREAM_ID_HEADER).to_owned();
    let token = header(response.headers(), TOKEN_HEADER).to_owned();
    assert_eq!(token.len(), 32, "128 random bits, hex: {token}");
    (conn, response.into_body(), id, token)
}

/// Opens a slow stream, reads at least `at_least` events, and returns the connection, the rest
/// of the body, the stream id, the token and the events read.
async fn start_and_read(
    env: &TestEnv,
    chunks: &str,
    at_least: usize,
) -> (Conn, Incoming, String, String, Vec<Event>) {
    let pacing = [("x-mock-chunks", chunks), ("x-mock-chunk-delay-ms", "40")];
    let (conn, mut body, id, token) = open_resumable(env, &pacing).await;
    let seen = read_until(&mut body, |b| events(b).len() >= at_least).await;
    (conn, body, id, token, events(&seen))
}

/// Opens a long slow stream, reads two events and goes away; returns the stream id, the token
/// and the events read, once the stream generates detached.
async fn start_and_detach(env: &TestEnv) -> (String, String, Vec<Event>) {
    let (conn, body, id, token, before) = start_and_read(env, "1000", 2).await;
    drop(body);
    drop(conn);
    wait_detached(env, 1).await;
    (id, token, before)
}

/// Waits until `n` streams generate with no client attached.
async fn wait_detached(env: &TestEnv, n: u32) {
    wait_for("the stream to detach", PATIENCE, || async {
        let text = scrape(env).await;
        (value(&text, "tidegate_resume_detached_streams") == Some(f64::from(n))).then_some(())
    })
    .await;
}

async fn resume_and_check(env: &TestEnv, over_http2: bool) {
    let full = reference(env, "30").await;
    let (conn, body, id, token, before) = start_and_read(env, "30", 5).await;
    assert_ids_from(&before, 1);
    let last = before.last().unwrap().id.clone();
    drop(body);
    drop(conn);
    let request = resume_request(env, &id, &token, Some(&last));
    let response = if over_http2 {
        let mut h2 = H2Conn::open(env.gateway).await;
        let response = h2.send(request).await;
        let (parts, body) = response.into_parts();
        let bytes = read_to_end(body).await;
        (parts, bytes, Some(h2))
    } else {
        let mut h1 = Conn::open(env.gateway).await;
        let response = h1.send(request).await;
        let (parts, body) = response.into_parts();
        (parts, read_to_end(body).await, None)
    };
    let (parts, bytes, _h2) = response;
    assert_eq!(
        parts.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&bytes)
    );
    assert_eq!(
        header(&parts.headers, "content-type"),
        "text/event-stream; charset=utf-8"
    );
    assert_eq!(header(&parts.headers, STREAM_ID_HEADER), id);
    let after = events(&bytes);
    assert_ids_from(&after, before.len() as u64 + 1);
    assert_eq!(after.last().map(|e| e.data.as_str()), Some("[DONE]"));
    let assembled: Vec<Event> = before.into_iter().chain(after).collect();
    assert_eq!(content(&assembled), content(&full), "no gap, no duplicate");
    assert_eq!(assembled.len(), full.len());
}

/// Proves requirement 5's first case over HTTP/1.1: cut after a few events, resume with the
/// last id seen, and the assembled text is the upstream's exactly once.
#[tokio::test]
async fn a_cut_stream_resumes_exactly_once_over_http1() {
    let env = start_with(MockSettings::default(), resumable).await;
    resume_and_check(&env, false).await;
}

/// The same over HTTP/2 (the resume on an h2 connection).
#[tokio::test]
async fn a_cut_stream_resumes_exactly_once_over_http2() {
    let env = start_with(MockSettings::default(), resumable).await;
    resume_and_check(&env, true).await;
}

/// A stream cut on HTTP/2 (its stream reset, the connection kept) resumes on the same
/// connection: the body's drop is the detach, whatever the protocol.
#[tokio::test]
async fn a_stream_reset_on_http2_resumes_on_the_same_connection() {
    let env = start_with(MockSettings::default(), resumable).await;
    let full = reference(&env, "20").await;
    let mut h2 = H2Conn::open(env.gateway).await;
    let response = h2
        .send(post(
            env.gateway,
            "/v1/chat/completions",
            &chat_body("mock-1", true),
            &[("x-mock-chunks", "20"), ("x-mock-chunk-delay-ms", "40")],
        ))
        .await;
    let id = header(response.headers(), STREAM_ID_HEADER).to_owned();
    let token = header(response.headers(), TOKEN_HEADER).to_owned();
    let mut body = response.into_body();
    let before = events(&read_until(&mut body, |b| events(b).len() >= 3).await);
    drop(body); // resets the h2 stream
    let last = before.last().unwrap().id.clone();
    let response = h2
        .send(resume_request(&env, &id, &token, Some(&last)))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let after = events(&read_to_end(response.into_body()).await);
    let assembled: Vec<Event> = before.into_iter().chain(after).collect();
    assert_eq!(content(&assembled), content(&full));
}

/// Requirement 2: the `Last-Event-ID` header (what an `EventSource` sends on its own) and the
/// token header work as well as the query; the header wins over the query's id.
#[tokio::test]
async fn the_last_event_id_header_and_token_header_work_and_the_header_wins() {
    let env = start_with(MockSettings::default(), resumable).await;
    let (conn, body, id, token, before) = start_and_read(&env, "12", 4).await;
    drop(body);
    drop(conn);
    let last = before.last().unwrap().id.clone();
    // The query says 1; the header says the real last id.
    let request = Request::get(format!(
        "http://{}/v1/streams/{id}?last_event_id=1",
        env.gateway
    ))
    .header("host", env.gateway.to_string())
    .header(TOKEN_HEADER, &token)
    .header("last-event-id", &last)
    .body(Full::new(Bytes::new()))
    .unwrap();
    let (status, _, bytes) = fetch(request).await;
    assert_eq!(status, StatusCode::OK);
    let after = events(&bytes);
    assert_ids_from(&after, before.len() as u64 + 1);
}

/// A resume may take a stream from a connection that still looks alive (a phone that changed
/// networks before its old socket timed out): the old response ends, the new one goes on, and
/// nothing is lost or doubled.
#[tokio::test]
async fn a_resume_takes_over_from_a_connection_still_open() {
    let env = start_with(MockSettings::default(), resumable).await;
    let full = reference(&env, "20").await;
    let (_conn, mut old_body, id, token, before) = start_and_read(&env, "20", 3).await;
    let last = before.last().unwrap().id.clone();
    let (status, _, bytes) = fetch(resume_request(&env, &id, &token, Some(&last))).await;
    assert_eq!(status, StatusCode::OK);
    let after = events(&bytes);
    let assembled: Vec<Event> = before.into_iter().chain(after).collect();
    assert_eq!(content(&assembled), content(&full));
    // The old response has ended (whatever it still had in flight is a prefix of the rest).
    let rest = tokio::time::timeout(PATIENCE, async {
        let mut rest = Vec::new();
        while let Some(Ok(frame)) = old_body.frame().await {
            if let Ok(data) = frame.into_data() {
                rest.extend_from_slice(&data);
            }
        }
        rest
    })
    .await
    .expect("the old response ends");
    assert!(events(&rest).iter().all(|e| e.data != "[DONE]"));
}

/// Requirement 5: a resume from before what the replay buffer still holds is `409
/// resume_window_exceeded`; one from inside it still works.
#[tokio::test]
async fn a_resume_from_before_the_buffer_is_409() {
    let env = start_with(MockSettings::default(), |c| {
        resumable(c);
        c.limits.max_event_bytes = 1024;
        c.resume.max_bytes_per_stream = 1024;
    })
    .await;
    let (_conn, body, id, token, _) = start_and_read(&env, "40", 1).await;
    let rest = events(&read_to_end(body).await);
    let last: u64 = rest.last().unwrap().id.parse().unwrap();
    assert!(last > 30);
    let (status, _, json) = fetch_json(resume_request(&env, &id, &token, Some("1"))).await;
    assert_eq!(status, StatusCode::CONFLICT, "{json}");
    assert_eq!(json["error"]["code"], "resume_window_exceeded");
    assert_eq!(json["error"]["param"], "last_event_id");
    // The last few events are still there (a finished stream stays resumable).
    let last_but_two = (last - 2).to_string();
    let (status, _, bytes) = fetch(resume_request(&env, &id, &token, Some(&last_but_two))).await;
    assert_eq!(status, StatusCode::OK);
    let tail = events(&bytes);
    assert_eq!(tail.len(), 2, "{tail:?}");
    assert_eq!(tail.last().unwrap().data, "[DONE]");
}

/// Requirement 5: a stream nobody resumes is cancelled upstream when its grace ends, not
/// before; then it cannot be resumed.
#[tokio::test]
async fn grace_expiry_cancels_the_upstream() {
    let env = start_with(MockSettings::default(), |c| {
        resumable(c);
        c.resume.detach_grace = Duration::from_secs(2);
    })
    .await;
    // Detached: the generation goes on (the mock keeps sending), the client is gone.
    let (id, token, before) = start_and_detach(&env).await;
    let s = mock_stats(env.mock).await;
    assert_eq!(s.streams_active, 1, "still generating during the grace");
    // The admin API shows it, detached.
    let (status, _, view) = fetch_json(get(env.admin, &format!("/admin/streams/{id}"))).await;
    assert_eq!(status, StatusCode::OK, "{view}");
    assert_eq!(view["detached"], true, "{view}");
    assert_eq!(s.streams_cancelled, 0);
    let s = wait_for_mock(env.mock, "the upstream to be cancelled", PATIENCE, |s| {
        s.streams_cancelled == 1
    })
    .await;
    assert_eq!(s.streams_active, 0);
    let last = before.last().unwrap().id.clone();
    let (status, _, json) = fetch_json(resume_request(&env, &id, &token, Some(&last))).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{json}");
    assert_eq!(json["error"]["code"], "stream_not_found");
    let text = scrape(&env).await;
    assert_eq!(value(&text, "tidegate_resume_expired_total"), Some(1.0));
    assert_eq!(value(&text, "tidegate_streams_active"), Some(0.0));
}

/// Requirement 2: an unknown id, a wrong or missing token, and a malformed id are all `404
/// stream_not_found`, saying nothing about which; a non-numeric id is a `400`.
#[tokio::test]
async fn unknown_ids_and_wrong_tokens_are_404() {
    let env = start_with(MockSettings::default(), resumable).await;
    let (_conn, _body, id, token, _) = start_and_read(&env, "100", 1).await;
    let (prefix, _) = id.rsplit_once('_').unwrap();
    let wrong_token = "0".repeat(32);
    let cases = [
        resume_request(&env, &id, &wrong_token, None),
        get(env.gateway, &format!("/v1/streams/{id}")),
        resume_request(&env, &format!("{prefix}_999999"), &token, None),
        resume_request(&env, "st_000000000000_1", &token, None),
        resume_request(&env, "junk", &token, None),
    ];
    for request in cases {
        let uri = request.uri().clone();
        let (status, _, json) = fetch_json(request).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{uri}: {json}");
        assert_eq!(json["error"]["code"], "stream_not_found", "{uri}");
        assert_eq!(json["error"]["type"], "invalid_request_error");
    }
    let (status, _, json) = fetch_json(resume_request(&env, &id, &token, Some("abc"))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{json}");
    assert_eq!(json["error"]["param"], "last_event_id");
    let (status, _, _) = fetch_json(resume_request(&env, &id, &token, Some("999999"))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // POST is not how a stream is resumed.
    let request = Request::builder()
        .method(Method::POST)
        .uri(format!("http://{}/v1/streams/{id}", env.gateway))
        .header("host", env.gateway.to_string())
        .body(Full::new(Bytes::new()))
        .unwrap();
    let (status, headers, _) = fetch(request).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(header(&headers, "allow"), "GET");
    let text = scrape(&env).await;
    let not_found = value(
        &text,
        "tidegate_resume_requests_total{result=\"not_found\"}",
    );
    assert!(not_found.is_some_and(|n| n >= 5.0), "{not_found:?}");
}

/// Requirement 2: with API keys on, only the key that opened a stream may resume it; another
/// valid key gets `404` like a wrong token.
#[tokio::test]
async fn only_the_same_key_may_resume() {
    let hash = |key: &str| hex::encode(tidegate::auth::hash_key(key.as_bytes()));
    let (a, b) = ("sk-resume-key-a-0123456789", "sk-resume-key-b-0123456789");
    let file = temp_file(
        "keys-resume.toml",
        &format!(
            "[[keys]]\nname = \"a\"\nsha256 = \"{}\"\n[[keys]]\nname = \"b\"\nsha256 = \"{}\"\n",
            hash(a),
            hash(b)
        ),
    );
    let env = start_with(MockSettings::default(), |c| {
        resumable(c);
        c.auth.mode = AuthMode::Keys;
        c.auth.keys_file = Some(file.to_str().unwrap().to_owned());
    })
    .await;
    let bearer = format!("Bearer {a}");
    let extra = [
        ("authorization", bearer.as_str()),
        ("x-mock-chunks", "100"),
        ("x-mock-chunk-delay-ms", "40"),
    ];
    // The first client stays attached: a resume may take the stream over from it.
    let (conn, _first, id, token) = open_resumable(&env, &extra).await;
    let with_key = |key: Option<&str>| {
        let mut request = resume_request(&env, &id, &token, None);
        if let Some(key) = key {
            request
                .headers_mut()
                .insert("authorization", format!("Bearer {key}").parse().unwrap());
        }
        request
    };
    let (status, _, _) = fetch_json(with_key(None)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "no key: like any request");
    let (status, _, json) = fetch_json(with_key(Some(b))).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "another key: {json}");
    let mut other = Conn::open(env.gateway).await;
    let response = other.send(with_key(Some(a))).await;
    assert_eq!(response.status(), StatusCode::OK, "the same key");
    drop(response);
    drop(conn);
}

/// Requirement 2: the admin API's kill ends a resumed stream with its final event, and the
/// resumed stream is the one listed.
#[tokio::test]
async fn the_admin_kill_ends_a_resumed_stream() {
    let env = start_with(MockSettings::default(), resumable).await;
    let (id, token, before) = start_and_detach(&env).await;
    let last = before.last().unwrap().id.clone();
    let mut resumed = Conn::open(env.gateway).await;
    let response = resumed
        .send(resume_request(&env, &id, &token, Some(&last)))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    let _ = read_until(&mut body, |b| !events(b).is_empty()).await;
    let (_, _, view) = fetch_json(get(env.admin, &format!("/admin/streams/{id}"))).await;
    assert_eq!(view["detached"], false, "attached again: {view}");
    let kill = Request::delete(format!("http://{}/admin/streams/{id}", env.admin))
        .header("host", env.admin.to_string())
        .body(Full::new(Bytes::new()))
        .unwrap();
    let (status, _, _) = fetch(kill).await;
    assert!(status.is_success(), "{status}");
    let rest = read_to_end(body).await;
    assert_eq!(final_error(&rest)["code"], "terminated_by_admin");
    wait_for_mock(env.mock, "the upstream to be cancelled", PATIENCE, |s| {
        s.streams_cancelled == 1
    })
    .await;
}

/// Requirement 2: with resume off (the default) the relay is as before: no ids, no token.
#[tokio::test]
async fn with_resume_off_events_carry_no_ids_and_no_token() {
    let env = start().await;
    let (_conn, body) = open_stream(env.gateway, "mock-1", &[("x-mock-chunks", "3")]).await;
    let bytes = read_to_end(body).await;
    assert!(!String::from_utf8_lossy(&bytes).contains("id:"));
    let (status, headers, _) = chat(env.gateway, "mock-1", true).await;
    assert_eq!(status, StatusCode::OK);
    assert!(headers.get(TOKEN_HEADER).is_none());
    let (status, _, json) = fetch_json(get(env.gateway, "/v1/streams/st_x_1?token=t")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(json["error"]["code"], "stream_not_found");
}

/// Requirement 2: the drain applies. A stream nobody is attached to cannot be resumed on an
/// instance that is going away: the drain cancels it at once (the upstream sees it go) instead
/// of waiting `shutdown.drain_timeout` for a generation no client will read.
#[tokio::test]
async fn the_drain_cancels_detached_streams_at_once() {
    let env = start_with(MockSettings::default(), |c| {
        resumable(c);
        c.shutdown.drain_timeout = Duration::from_secs(60);
    })
    .await;
    start_and_detach(&env).await;
    let started = tokio::time::Instant::now();
    env.shutdown.cancel();
    wait_for_mock(env.mock, "the upstream to be cancelled", PATIENCE, |s| {
        s.streams_cancelled == 1
    })
    .await;
    let mut env = env;
    tokio::time::timeout(PATIENCE, &mut env.gateway_task)
        .await
        .expect("the gateway exits without waiting out the drain")
        .unwrap()
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(30));
}

/// Requirement 2: heartbeats keep a resumed stream alive while the upstream is silent, as on a
/// first connection.
#[tokio::test]
async fn a_resumed_stream_gets_heartbeats() {
    let env = start_with(MockSettings::default(), |c| {
        resumable(c);
        c.streams.heartbeat_interval = Duration::from_millis(200);
    })
    .await;
    let pacing = [("x-mock-chunks", "3"), ("x-mock-chunk-delay-ms", "60000")];
    let (conn, mut body, id, token) = open_resumable(&env, &pacing).await;
    let before = events(&read_until(&mut body, |b| !events(b).is_empty()).await);
    drop(body);
    drop(conn);
    let mut resumed = Conn::open(env.gateway).await;
    let last = before.last().unwrap().id.clone();
    let response = resumed
        .send(resume_request(&env, &id, &token, Some(&last)))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    let seen = read_until(&mut body, |b| {
        String::from_utf8_lossy(b).matches(": ping").count() >= 2
    })
    .await;
    assert!(events(&seen).is_empty(), "no event, only heartbeats");
}

/// Requirement 2: the slow-client rule applies to a resumed stream, and it closes the resuming
/// client's connection (the one that stopped reading), not the first one's.
#[tokio::test]
async fn a_resumed_client_that_stops_reading_is_cut() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let stall = Duration::from_millis(500);
    let env = start_with(MockSettings::default(), |c| {
        resumable(c);
        c.streams.client_stall_timeout = stall;
    })
    .await;
    // A firehose: ten million chunks, no delay.
    let mut conn = Conn::open(env.gateway).await;
    let response = conn
        .send(post(
            env.gateway,
            "/v1/chat/completions",
            &chat_body("mock-1", true),
            &[
                ("x-mock-chunks", "10000000"),
                ("x-mock-chunk-delay-ms", "0"),
            ],
        ))
        .await;
    let id = header(response.headers(), STREAM_ID_HEADER).to_owned();
    let token = header(response.headers(), TOKEN_HEADER).to_owned();
    let mut body = response.into_body();
    let before = events(&read_until(&mut body, |b| events(b).len() >= 2).await);
    drop(body);
    drop(conn);
    // The resuming client: a small receive window, and it stops reading after the first event.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut client = socket.connect(env.gateway).await.unwrap();
    let last = before.last().unwrap().id.clone();
    let request = format!(
        "GET /v1/streams/{id}?token={token}&last_event_id={last} HTTP/1.1\r\nhost: {}\r\n\r\n",
        env.gateway
    );
    client.write_all(request.as_bytes()).await.unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + PATIENCE;
    // Bounded by the deadline.
    while !seen.windows(5).any(|w| w == b"data:") {
        let n = tokio::time::timeout_at(deadline, client.read(&mut buf))
            .await
            .expect("the first resumed event in time")
            .unwrap();
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
    assert!(seen.starts_with(b"HTTP/1.1 200"));
    // Now it reads nothing: the socket buffers fill, and the stall timeout runs.
    let text = wait_for(
        "the stream to be cut as a slow client",
        PATIENCE * 3,
        || async {
            let text = scrape(&env).await;
            text.contains("tidegate_streams_total{outcome=\"slow_client\"} 1")
                .then_some(text)
        },
    )
    .await;
    assert!(text.contains("tidegate_streams_active 0"), "{text}");
    // The resuming client's connection was closed under it.
    let mut rest = vec![0u8; 64 * 1024];
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        match tokio::time::timeout_at(deadline, client.read(&mut rest))
            .await
            .expect("the resumed connection closed in time")
        {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
}
