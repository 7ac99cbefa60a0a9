//! The client side's HTTP/2 limits, as configured (`[http2]`): the concurrent streams a
//! connection is allowed, and keep-alive PINGs that close a connection whose peer has gone
//! silent.

use std::time::Duration;

use http::{Request, StatusCode};
use tidegate::mock::MockSettings;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::*;

#[tokio::test]
async fn a_client_connection_gets_the_configured_stream_limit() {
    let env = start_with(MockSettings::default(), |c| {
        c.http2.max_concurrent_streams = 7;
    })
    .await;
    let socket = TcpStream::connect(env.gateway).await.unwrap();
    let (mut client, connection) = h2::client::handshake(socket).await.unwrap();
    tokio::spawn(async move {
        let _ = connection.await;
    });
    // One round trip, so the gateway's SETTINGS have arrived and been applied.
    let request = Request::get(format!("http://{}/healthz", env.gateway))
        .body(())
        .unwrap();
    let (response, _) = client.send_request(request, true).unwrap();
    let response = tokio::time::timeout(PATIENCE, response)
        .await
        .expect("an answer")
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(client.current_max_send_streams(), 7);
}

#[tokio::test]
async fn a_peer_that_answers_no_ping_is_disconnected() {
    let env = start_with(MockSettings::default(), |c| {
        c.http2.keepalive_interval = Duration::from_millis(200);
        c.http2.keepalive_timeout = Duration::from_millis(200);
    })
    .await;
    // The client preface and an empty SETTINGS frame, then silence: no PING is ever answered
    // (nor the server's SETTINGS acknowledged).
    let mut socket = TcpStream::connect(env.gateway).await.unwrap();
    let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    hello.extend_from_slice(&[0, 0, 0, 0x4, 0, 0, 0, 0, 0]);
    socket.write_all(&hello).await.unwrap();
    let mut frames = Vec::new();
    // Bounded by PATIENCE: the gateway closes once its PING goes unanswered (0.4 s here).
    let closed = tokio::time::timeout(PATIENCE, socket.read_to_end(&mut frames)).await;
    assert!(closed.is_ok(), "still open after {PATIENCE:?}");
    // It sent a PING (frame type 6) before giving up.
    let mut at = 0;
    let mut saw_ping = false;
    // Bounded: each pass moves past one frame header and its payload.
    while at + 9 <= frames.len() {
        let len = usize::from(frames[at]) << 16
            | usize::from(frames[at + 1]) << 8
            | usize::from(frames[at + 2]);
        saw_ping |= frames[at + 3] == 0x6;
        at += 9 + len;
    }
    assert!(saw_ping, "{frames:?}");
}
