//! A client that stops reading: the gateway stops reading the upstream (backpressure, not
//! buffering), holds a bounded amount, and after `client_stall_timeout` ends the stream as a
//! slow client and cancels the upstream request.

use std::net::SocketAddr;
use std::time::Duration;

use crate::common::*;
use serde_json::Value;
use tidegate::mock::MockSettings;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const STALL_TIMEOUT: Duration = Duration::from_secs(2);

/// Everything the gateway may hold for one stream (hyper's buffer, our partial block) plus the
/// loopback socket buffers between it and a client that reads nothing. The mock would send
/// hundreds of megabytes if the gateway read on.
const BOUND: u64 = 64 << 20;

/// A raw HTTP/1.1 client with a small receive window, so the kernel holds little for it.
async fn raw_stream_request(gateway: SocketAddr, extra: &str) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket.connect(gateway).await.unwrap();
    request_to_first_event(&mut stream, gateway, extra).await;
    stream
}

/// Sends a streaming chat request with `extra` header lines over `stream` by hand, and reads the
/// head and a first bit of the stream; then the caller stops reading.
pub(crate) async fn request_to_first_event<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    gateway: SocketAddr,
    extra: &str,
) {
    let body = chat_body("mock-1", true);
    let request = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: {gateway}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{extra}\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + PATIENCE;
    // Bounded by the deadline.
    while !seen.windows(5).any(|w| w == b"data:") {
        let n = tokio::time::timeout_at(deadline, stream.read(&mut buf))
            .await
            .expect("first event in time")
            .unwrap();
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
    assert!(seen.starts_with(b"HTTP/1.1 200"));
}

async fn only_stream(env: &TestEnv) -> Option<Value> {
    let (_, _, list) = fetch_json(get(env.admin, "/admin/streams")).await;
    list["streams"].as_array().and_then(|s| s.first().cloned())
}

#[tokio::test]
async fn a_client_that_stops_reading_is_cut_after_the_stall_timeout() {
    let env = start_with(MockSettings::default(), |config| {
        config.streams.client_stall_timeout = STALL_TIMEOUT;
        config.streams.heartbeat_interval = Duration::from_millis(100);
    })
    .await;
    // A fast upstream: ten million chunks, no delay.
    let mut client = raw_stream_request(
        env.gateway,
        "x-mock-chunks: 10000000\r\nx-mock-chunk-delay-ms: 0\r\n",
    )
    .await;

    // The gateway soon has a frame the client does not take: it is blocked. (A stream is briefly
    // blocked whenever the socket buffer is full and the kernel has not yet moved bytes on to the
    // client's side, so wait until it has been stuck for a while.)
    let blocked = wait_for(
        "the stream to be blocked on its client",
        PATIENCE,
        || async {
            only_stream(&env)
                .await
                .filter(|s| s["blocked_ms"].as_u64().is_some_and(|ms| ms >= 200))
        },
    )
    .await;
    let bytes_then = blocked["bytes"].as_u64().unwrap();
    eprintln!("blocked after relaying {bytes_then} bytes");
    assert!(
        bytes_then < BOUND,
        "{bytes_then} bytes relayed to a client that reads nothing"
    );

    // Backpressure: while blocked it relays nothing more, and the upstream is not drained
    // (the mock is still streaming, far from done).
    let still = wait_for("a second look while still blocked", PATIENCE, || async {
        only_stream(&env)
            .await
            .filter(|s| s["blocked_ms"].as_u64() > blocked["blocked_ms"].as_u64())
    })
    .await;
    assert_eq!(
        still["bytes"].as_u64(),
        Some(bytes_then),
        "relayed while blocked"
    );
    let stats = mock_stats(env.mock).await;
    assert_eq!((stats.streams_active, stats.streams_completed), (1, 0));
    assert_eq!(still["heartbeats"], 0, "a blocked stream is not idle");

    // After the stall timeout: ended as a slow client, gone from the registry, upstream
    // cancelled.
    wait_for(
        "the stream to leave the registry",
        STALL_TIMEOUT + PATIENCE,
        || async {
            let (_, _, summary) = fetch_json(get(env.admin, "/admin/summary")).await;
            (summary["streams"] == 0).then_some(())
        },
    )
    .await;
    let stats = wait_for_mock(env.mock, "the upstream to be cancelled", PATIENCE, |s| {
        s.streams_active == 0
    })
    .await;
    assert_eq!(stats.streams_cancelled, 1);
    assert_eq!(stats.streams_completed, 0);

    // The client's connection was closed under it: reading on finds the end of what was
    // buffered, then EOF (or a reset), within a bounded number of bytes and no [DONE].
    let mut rest = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        match tokio::time::timeout_at(deadline, client.read(&mut buf))
            .await
            .expect("connection closed in time")
        {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                rest.extend_from_slice(&buf[..n]);
                assert!((rest.len() as u64) < BOUND);
            }
        }
    }
    assert!(!rest.windows(6).any(|w| w == b"[DONE]"));
}

#[tokio::test]
async fn a_slow_but_steady_reader_is_not_cut() {
    let env = start_with(MockSettings::default(), |config| {
        config.streams.client_stall_timeout = Duration::from_millis(1500);
    })
    .await;
    // 400 chunks of ~200 bytes arrive faster than the client reads, but it keeps reading.
    let mut client = raw_stream_request(
        env.gateway,
        "x-mock-chunks: 400\r\nx-mock-chunk-delay-ms: 0\r\n",
    )
    .await;
    let mut all = Vec::new();
    let mut buf = [0u8; 2048];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !all.windows(6).any(|w| w == b"[DONE]") {
        let n = tokio::time::timeout_at(deadline, client.read(&mut buf))
            .await
            .expect("the stream ends in time")
            .unwrap();
        assert!(
            n > 0,
            "cut: {}",
            String::from_utf8_lossy(&all[all.len().saturating_sub(200)..])
        );
        all.extend_from_slice(&buf[..n]);
        // Pacing, not synchronization: a reader slower than the upstream, pausing well under
        // the stall timeout after each read.
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let stats = mock_stats(env.mock).await;
    assert_eq!(stats.streams_completed, 1);
}
