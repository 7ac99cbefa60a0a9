//! A client that goes away cancels its upstream request: before the first byte, mid-stream, and
//! while a non-streaming request waits; over HTTP/1.1 and HTTP/2. The mock's counters show the
//! upstream saw its request end within 1 s of the client leaving.

use std::time::Duration;

use crate::common::*;
use http::StatusCode;
use tidegate::mock::MockSettings;

/// The requirement: the upstream sees the cancellation within this long.
const CANCEL_WITHIN: Duration = Duration::from_secs(1);

#[tokio::test]
async fn leaving_before_the_first_byte_cancels_the_upstream_stream() {
    let env = start().await;
    let mut conn = Conn::open(env.gateway).await;
    // The upstream sends no headers for 60 s; the client gives up first.
    let request = post(
        env.gateway,
        "/v1/chat/completions",
        &chat_body("mock-1", true),
        &[("x-mock-headers-delay-ms", "60000")],
    );
    let pending = tokio::spawn(async move {
        let _ = conn.send(request).await;
    });
    wait_for_mock(env.mock, "the upstream stream to start", PATIENCE, |s| {
        s.streams_active == 1
    })
    .await;
    pending.abort(); // drops the client connection
    let _ = pending.await;
    let s = wait_for_mock(
        env.mock,
        "the upstream stream to be cancelled",
        CANCEL_WITHIN,
        |s| s.streams_cancelled == 1,
    )
    .await;
    assert_eq!(s.streams_active, 0);
    assert_eq!(s.streams_completed, 0);
}

#[tokio::test]
async fn leaving_mid_stream_cancels_the_upstream_stream() {
    let env = start().await;
    let (conn, mut body) = open_stream(
        env.gateway,
        "mock-1",
        &[("x-mock-chunks", "100"), ("x-mock-chunk-delay-ms", "200")],
    )
    .await;
    let seen = read_until(&mut body, |b| sse_data(b).len() >= 2).await;
    assert!(sse_data(&seen).len() >= 2);
    drop(body);
    drop(conn);
    let s = wait_for_mock(
        env.mock,
        "the upstream stream to be cancelled",
        CANCEL_WITHIN,
        |s| s.streams_cancelled == 1,
    )
    .await;
    assert_eq!(s.streams_active, 0);
}

#[tokio::test]
async fn leaving_while_a_non_streaming_request_waits_cancels_it() {
    let env = start().await;
    let mut conn = Conn::open(env.gateway).await;
    let request = post(
        env.gateway,
        "/v1/chat/completions",
        &chat_body("mock-1", false),
        &[("x-mock-headers-delay-ms", "60000")],
    );
    let pending = tokio::spawn(async move {
        let _ = conn.send(request).await;
    });
    wait_for_mock(env.mock, "the upstream request to start", PATIENCE, |s| {
        s.requests_active == 1
    })
    .await;
    pending.abort();
    let _ = pending.await;
    let s = wait_for_mock(
        env.mock,
        "the upstream request to be cancelled",
        CANCEL_WITHIN,
        |s| s.requests_cancelled == 1,
    )
    .await;
    assert_eq!(s.requests_active, 0);
}

#[tokio::test]
async fn an_http2_stream_reset_cancels_the_upstream_stream() {
    let env = start().await;
    let mut conn = H2Conn::open(env.gateway).await;
    let response = conn
        .send(post(
            env.gateway,
            "/v1/chat/completions",
            &chat_body("mock-1", true),
            &[("x-mock-chunks", "100"), ("x-mock-chunk-delay-ms", "200")],
        ))
        .await;
    let mut body = response.into_body();
    read_until(&mut body, |b| !sse_data(b).is_empty()).await;
    // Dropping the body resets this one HTTP/2 stream; the connection itself stays open.
    drop(body);
    let s = wait_for_mock(
        env.mock,
        "the upstream stream to be cancelled",
        CANCEL_WITHIN,
        |s| s.streams_cancelled == 1,
    )
    .await;
    assert_eq!(s.streams_active, 0);
    // The same connection still works.
    let response = conn.send(get(env.gateway, "/healthz")).await;
    assert_eq!(response.status(), StatusCode::OK);
    drop(conn);
}

#[tokio::test]
async fn many_clients_leaving_at_once_leave_no_upstream_stream_behind() {
    let env = start_with(MockSettings::default(), |_| {}).await;
    let mut bodies = Vec::new();
    let mut conns = Vec::new();
    for _ in 0..50 {
        let (conn, body) = open_stream(
            env.gateway,
            "mock-1",
            &[("x-mock-chunks", "1000"), ("x-mock-chunk-delay-ms", "100")],
        )
        .await;
        bodies.push(body);
        conns.push(conn);
    }
    wait_for_mock(env.mock, "50 live upstream streams", PATIENCE, |s| {
        s.streams_active == 50
    })
    .await;
    drop(bodies);
    drop(conns);
    let s = wait_for_mock(
        env.mock,
        "every upstream stream to be cancelled",
        PATIENCE,
        |s| s.streams_active == 0,
    )
    .await;
    assert_eq!(s.streams_cancelled, 50);
}
