//! `upstream.http2 = true` (the old spelling of `protocol = "http2"`): the gateway speaks HTTP/2
//! (prior knowledge) to the upstream, and the streams of each worker thread share its pool's
//! connections (`upstream_pool.rs` tests the pool). Streams relay as over HTTP/1.1, an error
//! status keeps its status, heartbeats still flow, and a client that leaves resets its upstream
//! stream.

use std::time::Duration;

use crate::common::*;
use http::StatusCode;
use tidegate::mock::MockSettings;

async fn start_h2() -> TestEnv {
    start_with(MockSettings::default(), |config| {
        config.upstream.http2 = true;
        config.streams.heartbeat_interval = Duration::from_millis(100);
    })
    .await
}

#[tokio::test]
async fn streams_relay_over_an_http2_upstream() {
    let env = start_h2().await;
    let (_conn, body) = open_stream(
        env.gateway,
        "mock-1",
        &[("x-mock-chunks", "3"), ("x-mock-chunk-delay-ms", "1")],
    )
    .await;
    let all = read_to_end(body).await;
    assert_eq!(sse_data(&all).len(), 1 + 3 + 1 + 1);
    assert_eq!(sse_data(&all).last().map(String::as_str), Some("[DONE]"));
    // Proof that the upstream saw HTTP/2, not HTTP/1.1.
    assert_eq!(mock_last_request(env.mock).await["version"], "HTTP/2.0");

    // Many at once share the connection and all complete.
    streams_all_complete(env.gateway, 100).await;
    let stats = mock_stats(env.mock).await;
    assert_eq!(stats.streams_completed, 101);
}

#[tokio::test]
async fn an_error_status_and_heartbeats_work_over_an_http2_upstream() {
    let env = start_h2().await;
    let (status, headers, body) = fetch(post(
        env.gateway,
        "/v1/chat/completions",
        &chat_body("fail-429", true),
        &[],
    ))
    .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert!(headers.get("retry-after").is_some());
    assert!(String::from_utf8_lossy(&body).contains("rate_limit_exceeded"));

    let (_conn, body) = open_stream(
        env.gateway,
        "mock-1",
        &[("x-mock-first-delay-ms", "500"), ("x-mock-chunks", "1")],
    )
    .await;
    let all = read_to_end(body).await;
    assert!(String::from_utf8_lossy(&all).contains(": ping\n\n"));
    assert_eq!(sse_data(&all).last().map(String::as_str), Some("[DONE]"));
}

#[tokio::test]
async fn a_client_that_leaves_resets_its_http2_upstream_stream() {
    let env = start_h2().await;
    // Another stream keeps the shared upstream connection busy meanwhile.
    let (_other_conn, other) = open_stream(
        env.gateway,
        "mock-1",
        &[("x-mock-chunks", "3"), ("x-mock-chunk-delay-ms", "300")],
    )
    .await;
    let (conn, mut body) = open_stream(
        env.gateway,
        "mock-1",
        &[("x-mock-chunks", "1000"), ("x-mock-chunk-delay-ms", "50")],
    )
    .await;
    read_until(&mut body, |seen| seen.windows(5).any(|w| w == b"data:")).await;
    drop(body);
    drop(conn);
    let stats = wait_for_mock(
        env.mock,
        "the upstream stream to be reset",
        Duration::from_secs(1),
        |s| s.streams_cancelled == 1,
    )
    .await;
    assert_eq!(stats.streams_completed, 0);
    // The connection it shared is fine: the other stream completes.
    let all = read_to_end(other).await;
    assert_eq!(sse_data(&all).last().map(String::as_str), Some("[DONE]"));
}
