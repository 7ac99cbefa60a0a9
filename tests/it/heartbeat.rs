//! Heartbeats on the wire: `: ping` comments while the upstream is silent (before its headers,
//! before the first token, between chunks), never while events flow and never inside an event;
//! and early commit, so a client behind an idle-cutting proxy survives a long wait.

use std::time::Duration;

use crate::common::*;
use http::StatusCode;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tidegate::mock::MockSettings;

const HEARTBEAT: &[u8] = b": ping\n\n";

/// Fast heartbeats so the tests see several in well under a second.
const INTERVAL: Duration = Duration::from_millis(100);

async fn start_with_heartbeat(interval: Duration) -> TestEnv {
    start_with(MockSettings::default(), |config| {
        config.streams.heartbeat_interval = interval;
    })
    .await
}

/// Reads a whole stream, keeping each frame: the gateway hands out whole blocks or a heartbeat
/// per frame (HTTP/1.1 chunk), so frames show where heartbeats landed.
async fn frames(mut body: Incoming) -> Vec<Vec<u8>> {
    let mut frames = Vec::new();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    // Bounded by the deadline and the stream's end.
    loop {
        let frame = tokio::time::timeout_at(deadline, body.frame())
            .await
            .expect("stream ended in time");
        match frame {
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    frames.push(data.to_vec());
                }
            }
            Some(Err(e)) => panic!("body error: {e}"),
            None => return frames,
        }
    }
}

pub(crate) fn count_heartbeats(bytes: &[u8]) -> usize {
    bytes
        .windows(HEARTBEAT.len())
        .filter(|w| *w == HEARTBEAT)
        .count()
}

/// Every heartbeat is at a block boundary: the bytes before it end with a blank line (or it is
/// the first thing sent), so it can never be inside an event.
pub(crate) fn assert_heartbeats_between_events(all: &[u8]) {
    let mut at = 0;
    while let Some(pos) = all[at..]
        .windows(HEARTBEAT.len())
        .position(|w| w == HEARTBEAT)
    {
        let start = at + pos;
        assert!(
            start == 0 || all[..start].ends_with(b"\n\n"),
            "heartbeat inside an event at byte {start}: {:?}",
            String::from_utf8_lossy(&all[start.saturating_sub(40)..start])
        );
        at = start + HEARTBEAT.len();
    }
}

#[tokio::test]
async fn heartbeats_keep_a_stream_alive_until_a_slow_first_token() {
    let env = start_with_heartbeat(INTERVAL).await;
    // Headers at once, first event after 1 s: ~10 heartbeat intervals of silence.
    let (_conn, body) = open_stream(
        env.gateway,
        "mock-1",
        &[("x-mock-first-delay-ms", "1000"), ("x-mock-chunks", "3")],
    )
    .await;
    let frames = frames(body).await;
    let all = frames.concat();
    let first_event = frames.iter().position(|f| f.starts_with(b"data:")).unwrap();
    let before = count_heartbeats(&frames[..first_event].concat());
    assert!(
        before >= 3,
        "expected heartbeats before the first token, got {before}: {:?}",
        String::from_utf8_lossy(&all)
    );
    assert!(frames[..first_event].iter().all(|f| f == HEARTBEAT));
    // The events are exactly those of a stream without heartbeats.
    let data = sse_data(&all);
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    assert_eq!(data.len(), 1 + 3 + 1 + 1, "role, 3 chunks, stop, [DONE]");
    assert_heartbeats_between_events(&all);
}

#[tokio::test]
async fn heartbeats_fill_pauses_between_chunks_and_land_between_events() {
    let env = start_with_heartbeat(INTERVAL).await;
    let (_conn, body) = open_stream(
        env.gateway,
        "mock-1",
        &[("x-mock-chunks", "3"), ("x-mock-chunk-delay-ms", "600")],
    )
    .await;
    let frames = frames(body).await;
    let all = frames.concat();
    // Heartbeats in each pause after the first event.
    let event_frames: Vec<usize> = frames
        .iter()
        .enumerate()
        .filter(|(_, f)| f.starts_with(b"data:"))
        .map(|(i, _)| i)
        .collect();
    for pair in event_frames.windows(2).take(3) {
        let between = count_heartbeats(&frames[pair[0] + 1..pair[1]].concat());
        assert!(
            between >= 2,
            "expected heartbeats in a 600 ms pause, got {between}: {:?}",
            String::from_utf8_lossy(&all)
        );
    }
    assert_heartbeats_between_events(&all);
    assert_eq!(sse_data(&all).last().map(String::as_str), Some("[DONE]"));
}

#[tokio::test]
async fn no_heartbeats_while_events_flow() {
    let env = start_with_heartbeat(Duration::from_millis(500)).await;
    // An event every 20 ms for about a second and a half: never 3/8 s of silence.
    let (_conn, body) = open_stream(
        env.gateway,
        "mock-1",
        &[("x-mock-chunks", "75"), ("x-mock-chunk-delay-ms", "20")],
    )
    .await;
    let all = frames(body).await.concat();
    assert_eq!(
        count_heartbeats(&all),
        0,
        "{:?}",
        String::from_utf8_lossy(&all)
    );
    assert_eq!(sse_data(&all).last().map(String::as_str), Some("[DONE]"));
}

#[tokio::test]
async fn a_slow_upstream_is_answered_early_and_kept_alive() {
    let env = start_with_heartbeat(INTERVAL).await;
    // The upstream sends no headers for 1.2 s.
    let mut conn = Conn::open(env.gateway).await;
    let response = conn
        .send(post(
            env.gateway,
            "/v1/chat/completions",
            &chat_body("mock-1", true),
            &[("x-mock-headers-delay-ms", "1200"), ("x-mock-chunks", "2")],
        ))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    // Committed before the upstream answered: the upstream's headers could not be copied.
    assert!(response.headers().get("x-upstream-request-id").is_none());
    assert!(response.headers().get("x-tidegate-stream-id").is_some());
    let frames = frames(response.into_body()).await;
    assert_eq!(frames[0], HEARTBEAT, "the first bytes are a heartbeat");
    let all = frames.concat();
    assert!(count_heartbeats(&all) >= 3);
    let data = sse_data(&all);
    assert_eq!(data.len(), 1 + 2 + 1 + 1);
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
}

#[tokio::test]
async fn an_upstream_error_after_an_early_answer_is_the_final_event() {
    let env = start_with_heartbeat(INTERVAL).await;
    // 429 from the upstream, but only after 600 ms: the client already has a 200 stream.
    let (_conn, body) = open_stream(
        env.gateway,
        "fail-429",
        &[("x-mock-headers-delay-ms", "600")],
    )
    .await;
    let all = read_to_end(body).await;
    assert!(count_heartbeats(&all) >= 1);
    let error = final_error(&all);
    // The upstream's own error object, so the client sees the real reason.
    assert_eq!(error["code"], "rate_limit_exceeded");
    assert_eq!(error["message"], "Rate limit reached (mock)");

    // An upstream that never answers within first_byte_timeout.
    let env = start_with(MockSettings::default(), |config| {
        config.streams.heartbeat_interval = INTERVAL;
        config.limits.first_byte_timeout = Duration::from_millis(500);
    })
    .await;
    let (_conn, body) = open_stream(
        env.gateway,
        "mock-1",
        &[("x-mock-headers-delay-ms", "60000")],
    )
    .await;
    let all = read_to_end(body).await;
    assert_eq!(final_error(&all)["code"], "upstream_timeout");
    let stats = wait_for_mock(
        env.mock,
        "the upstream request to be cancelled",
        PATIENCE,
        |s| s.streams_active == 0,
    )
    .await;
    assert_eq!(stats.streams_cancelled, 1);
}

/// One decision, two paths: an upstream that answers a stream request with a 2xx that is not an
/// event stream. Before any response has started it is relayed as it is; after an early answer
/// it can no longer be, and becomes the final event.
#[tokio::test]
async fn a_2xx_that_is_not_an_event_stream_is_relayed_before_an_early_answer_and_an_error_after() {
    let env = start_with_heartbeat(INTERVAL).await;
    let (status, headers, body) = fetch(post(
        env.gateway,
        "/v1/chat/completions",
        &chat_body("fail-not-event-stream", true),
        &[],
    ))
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/json"));
    let completion: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(completion["object"], "chat.completion");

    let (_conn, body) = open_stream(
        env.gateway,
        "fail-not-event-stream",
        &[("x-mock-headers-delay-ms", "600")],
    )
    .await;
    let all = read_to_end(body).await;
    assert!(count_heartbeats(&all) >= 1);
    assert_eq!(final_error(&all)["code"], "upstream_not_event_stream");
    assert!(
        !String::from_utf8_lossy(&all).contains("chat.completion"),
        "nothing of the JSON answer is relayed into the event stream"
    );
    let admin = env.admin;
    wait_for(
        "the stream to leave the registry",
        PATIENCE,
        || async move {
            let (_, _, summary) = fetch_json(get(admin, "/admin/summary")).await;
            (summary["streams"] == 0).then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn with_heartbeats_off_a_slow_upstream_is_awaited_as_before() {
    let env = start_with_heartbeat(Duration::ZERO).await;
    let (status, headers, body) = fetch(post(
        env.gateway,
        "/v1/chat/completions",
        &chat_body("mock-1", true),
        &[
            ("x-mock-headers-delay-ms", "400"),
            ("x-mock-first-delay-ms", "400"),
            ("x-mock-chunks", "1"),
        ],
    ))
    .await;
    assert_eq!(status, StatusCode::OK);
    // The response started only once the upstream's headers were in.
    assert!(headers.get("x-upstream-request-id").is_some());
    assert_eq!(count_heartbeats(&body), 0);
    assert_eq!(sse_data(&body).last().map(String::as_str), Some("[DONE]"));
}

#[tokio::test]
async fn heartbeats_reach_http2_clients_too() {
    let env = start_with_heartbeat(INTERVAL).await;
    let mut conn = H2Conn::open(env.gateway).await;
    let response = conn
        .send(post(
            env.gateway,
            "/v1/chat/completions",
            &chat_body("mock-1", true),
            &[("x-mock-first-delay-ms", "600"), ("x-mock-chunks", "1")],
        ))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let all = read_to_end(response.into_body()).await;
    assert!(
        count_heartbeats(&all) >= 2,
        "{:?}",
        String::from_utf8_lossy(&all)
    );
    assert_heartbeats_between_events(&all);
    assert_eq!(sse_data(&all).last().map(String::as_str), Some("[DONE]"));
}
