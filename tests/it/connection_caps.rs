//! The acceptor's connection caps over real sockets (in all and per client address, answered at
//! once with a minimal HTTP/1.1 refusal instead of a wait in the backlog), and the client address
//! taken from PROXY protocol v1 and v2 headers.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use serde_json::Value;
use tidegate::mock::MockSettings;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::common::*;

/// A connection from `source` (any 127.x.y.z: all of 127/8 is loopback).
async fn connect_from(source: IpAddr, to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(source, 0)).unwrap();
    socket.connect(to).await.unwrap()
}

fn health_request(to: SocketAddr) -> String {
    format!("GET /healthz HTTP/1.1\r\nhost: {to}\r\n\r\n")
}

/// Sends a request on `socket` and reads until the gateway closes it; returns what it said.
/// Bounded by PATIENCE: a refused connection is answered and closed at once.
async fn answer_then_close(mut socket: TcpStream, request: &str) -> String {
    socket.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(PATIENCE, socket.read_to_end(&mut answer))
        .await
        .expect("the refused connection is closed at once")
        .unwrap();
    String::from_utf8_lossy(&answer).into_owned()
}

/// Sends a health check on `socket` and reads its answer, leaving the connection open.
async fn healthy(socket: &mut TcpStream, to: SocketAddr) -> bool {
    socket
        .write_all(health_request(to).as_bytes())
        .await
        .unwrap();
    let mut buf = vec![0u8; 1024];
    let n = tokio::time::timeout(PATIENCE, socket.read(&mut buf))
        .await
        .expect("an answer")
        .unwrap();
    buf[..n].starts_with(b"HTTP/1.1 200")
}

#[tokio::test]
async fn past_the_global_cap_a_connection_gets_503_at_once_and_a_slot_frees_on_close() {
    let env = start_with(MockSettings::default(), |c| {
        c.limits.max_connections = 3;
    })
    .await;
    let local: IpAddr = "127.0.0.1".parse().unwrap();
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut socket = connect_from(local, env.gateway).await;
        assert!(healthy(&mut socket, env.gateway).await);
        held.push(socket);
    }
    let refused = connect_from(local, env.gateway).await;
    let answer = answer_then_close(refused, &health_request(env.gateway)).await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    let lower = answer.to_ascii_lowercase();
    assert!(lower.contains("retry-after: 1\r\n"), "{answer}");
    assert!(lower.contains("connection: close\r\n"), "{answer}");
    let body = &answer[answer.find("\r\n\r\n").unwrap() + 4..];
    let json: Value = serde_json::from_str(body).unwrap();
    assert_eq!(json["error"]["code"], "server_overloaded");

    let admission = admission_summary(&env).await;
    assert_eq!(admission["refusals"]["global_connections"], 1);
    assert_eq!(admission["max_connections"], 3);
    assert_eq!(admission["connections"], 3);

    // A connection that closes gives its place back.
    held.pop();
    wait_for("the closed connection's slot", PATIENCE, || async {
        (admission_summary(&env).await["connections"] == 2).then_some(())
    })
    .await;
    let mut socket = connect_from(local, env.gateway).await;
    assert!(healthy(&mut socket, env.gateway).await);
    drop((held, socket));
    wait_for("every slot back", PATIENCE, || async {
        (admission_summary(&env).await["connections"] == 0).then_some(())
    })
    .await;
}

#[tokio::test]
async fn past_its_cap_an_address_gets_429_while_others_connect() {
    let env = start_with(MockSettings::default(), |c| {
        c.limits.per_ip.max_connections = 2;
    })
    .await;
    let one: IpAddr = "127.0.0.1".parse().unwrap();
    let two: IpAddr = "127.0.0.2".parse().unwrap();
    let mut a = connect_from(one, env.gateway).await;
    let mut b = connect_from(one, env.gateway).await;
    assert!(healthy(&mut a, env.gateway).await && healthy(&mut b, env.gateway).await);
    let answer = answer_then_close(
        connect_from(one, env.gateway).await,
        &health_request(env.gateway),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 429"), "{answer}");
    assert!(answer.contains("too_many_connections"), "{answer}");
    // Another address has places of its own.
    let mut c = connect_from(two, env.gateway).await;
    assert!(healthy(&mut c, env.gateway).await);
    let admission = admission_summary(&env).await;
    assert_eq!(admission["refusals"]["ip_connections"], 1);
    assert_eq!(admission["addresses_with_connections"], 2);
}

/// A PROXY protocol v2 header for a TCP/IPv4 connection from `client`.
fn proxy_v2(client: SocketAddr) -> Vec<u8> {
    let SocketAddr::V4(client) = client else {
        panic!("IPv4 only here")
    };
    let mut header = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    header.extend_from_slice(&[0x21, 0x11, 0, 12]); // v2 PROXY, TCP over IPv4, 12 bytes
    header.extend_from_slice(&client.ip().octets());
    header.extend_from_slice(&[127, 0, 0, 1]);
    header.extend_from_slice(&client.port().to_be_bytes());
    header.extend_from_slice(&443u16.to_be_bytes());
    header
}

/// Opens a stream on a new connection that starts with `preamble` and returns the client
/// address the admin API shows for it, and the socket (held: the stream lives as long).
async fn stream_behind(env: &TestEnv, preamble: &[u8]) -> (Value, TcpStream) {
    let mut socket = TcpStream::connect(env.gateway).await.unwrap();
    let body = chat_body("mock-1", true);
    let request = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\n\
         x-mock-chunks: 1\r\nx-mock-chunk-delay-ms: 10000\r\ncontent-length: {}\r\n\r\n{body}",
        env.gateway,
        body.len()
    );
    let mut bytes = preamble.to_vec();
    bytes.extend_from_slice(request.as_bytes());
    socket.write_all(&bytes).await.unwrap();
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    // Bounded: until the head is complete, within PATIENCE.
    tokio::time::timeout(PATIENCE, async {
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = socket.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed: {}", String::from_utf8_lossy(&head));
            head.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .expect("response head");
    let head = String::from_utf8_lossy(&head).to_string();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let id = head
        .lines()
        .find_map(|l| l.strip_prefix("x-tidegate-stream-id: "))
        .expect("stream id")
        .trim()
        .to_owned();
    let (_, _, view) = fetch_json(get(env.admin, &format!("/admin/streams/{id}"))).await;
    (view["client_ip"].clone(), socket)
}

#[tokio::test]
async fn proxy_protocol_v1_and_v2_name_the_client_and_a_missing_header_closes() {
    let env = start_with(MockSettings::default(), |c| {
        c.client_ip.proxy_protocol = true;
        c.limits.per_ip.max_connections = 1;
    })
    .await;
    let (seen, _v1) = stream_behind(&env, b"PROXY TCP4 198.51.100.7 127.0.0.1 40000 443\r\n").await;
    assert_eq!(seen, "198.51.100.7");
    let (seen, _v2) = stream_behind(&env, &proxy_v2("203.0.113.9:40001".parse().unwrap())).await;
    assert_eq!(seen, "203.0.113.9");
    let (seen, _v6) = stream_behind(&env, b"PROXY TCP6 2001:db8::7 ::1 40002 443\r\n").await;
    assert_eq!(seen, "2001:db8::7");

    // The per-address cap counts the address in the header (the balancer's own is 127.0.0.1
    // for all three above): a second connection for 198.51.100.7 is refused.
    let mut second = TcpStream::connect(env.gateway).await.unwrap();
    second
        .write_all(b"PROXY TCP4 198.51.100.7 127.0.0.1 40003 443\r\n")
        .await
        .unwrap();
    let answer = answer_then_close(second, &health_request(env.gateway)).await;
    assert!(answer.starts_with("HTTP/1.1 429"), "{answer}");
    // The same with the request in the header's own packet.
    let third = TcpStream::connect(env.gateway).await.unwrap();
    let both = format!(
        "PROXY TCP4 198.51.100.7 127.0.0.1 40004 443\r\n{}",
        health_request(env.gateway)
    );
    let answer = answer_then_close(third, &both).await;
    assert!(answer.starts_with("HTTP/1.1 429"), "{answer}");

    // No header, or a bad one: closed without an answer (a FIN, or a reset when the request
    // was still unread: no client of a balancer's listener is owed better).
    for preamble in [&b""[..], b"PROXY TCP4 not-an-address 127.0.0.1 1 2\r\n"] {
        let mut socket = TcpStream::connect(env.gateway).await.unwrap();
        let mut bytes = preamble.to_vec();
        bytes.extend_from_slice(health_request(env.gateway).as_bytes());
        // The write may already meet the close.
        let _ = socket.write_all(&bytes).await;
        let mut answer = Vec::new();
        let read = tokio::time::timeout(PATIENCE, socket.read_to_end(&mut answer))
            .await
            .expect("closed at once");
        assert!(
            answer.is_empty()
                && read.as_ref().map_or_else(
                    |e| e.kind() == std::io::ErrorKind::ConnectionReset,
                    |_| true
                ),
            "{preamble:?}: {read:?} {}",
            String::from_utf8_lossy(&answer)
        );
    }
    assert_eq!(
        admission_summary(&env).await["refusals"]["ip_connections"],
        2
    );
}

#[tokio::test]
async fn a_proxy_header_that_never_comes_is_given_up_on_at_its_deadline() {
    let env = start_with(MockSettings::default(), |c| {
        c.client_ip.proxy_protocol = true;
        c.client_ip.proxy_header_timeout = Duration::from_millis(200);
    })
    .await;
    let mut socket = TcpStream::connect(env.gateway).await.unwrap();
    socket.write_all(b"PROXY TCP4 ").await.unwrap();
    let mut rest = Vec::new();
    let read = tokio::time::timeout(PATIENCE, socket.read_to_end(&mut rest)).await;
    assert!(matches!(read, Ok(Ok(0))), "closed by the gateway: {read:?}");
}
