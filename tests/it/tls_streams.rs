//! Streams over TLS behave as cleartext ones do (issue 13, requirement 6): heartbeats reach
//! HTTP/1.1 and HTTP/2 clients while they wait for the first token; a client that resets its
//! stream or goes away cancels the upstream within 1 s; the drain sends HTTP/2 clients a GOAWAY,
//! lets short streams finish and ends long ones with `server_shutdown`; a client that stops
//! reading is cut after the stall timeout, and other clients' streams go on; an HTTP/2 peer
//! that falls silent is found by PING and its streams cancelled. And a connection the caps
//! refuse on a TLS listener is closed without an answer; the TLS metrics count handshakes.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use tidegate::config::Config;
use tidegate::mock::MockSettings;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio_rustls::client::TlsStream;
use tokio_util::sync::CancellationToken;

use crate::common::*;
use crate::heartbeat::{assert_heartbeats_between_events, count_heartbeats};
use crate::tls::{connect_tls, h2_over, http1_over, Pki};

/// The requirement: the upstream sees the cancellation within this long.
const CANCEL_WITHIN: Duration = Duration::from_secs(1);

/// A stream that runs far longer than any test: a chunk every 100 ms for 100 s.
const LONG: [(&str, &str); 2] = [("x-mock-chunks", "1000"), ("x-mock-chunk-delay-ms", "100")];

/// The gateway serving TLS with a certificate of `pki`, and the mock behind it.
pub(crate) async fn start_tls(pki: &Pki, configure: impl FnOnce(&mut Config)) -> TestEnv {
    let (cert_file, key_file) = pki.install(&pki.leaf(None));
    start_with(MockSettings::default(), |config| {
        config.tls.cert_file = Some(cert_file);
        config.tls.key_file = Some(key_file);
        configure(config);
    })
    .await
}

async fn tls(env: &TestEnv, pki: &Pki, alpn: &[u8]) -> TlsStream<TcpStream> {
    let tls = connect_tls(env.gateway, &pki.ca_pem(), &[alpn]).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(alpn));
    tls
}

fn stream_request(env: &TestEnv, extra: &[(&str, &str)]) -> Request<http_body_util::Full<Bytes>> {
    post(
        env.gateway,
        "/v1/chat/completions",
        &chat_body("mock-1", true),
        extra,
    )
}

async fn live_streams(env: &TestEnv) -> u64 {
    let (_, _, summary) = fetch_json(get(env.admin, "/admin/summary")).await;
    summary["streams"].as_u64().unwrap_or(u64::MAX)
}

/// An HTTP/2 client from the `h2` crate over TLS: unlike hyper's, it can reset one stream, hold
/// a stream's flow-control window shut, and tell a GOAWAY from a close. Its connection window is
/// large, so a stalled stream fills only its own (64 KiB) window, not the connection's.
async fn h2_raw(env: &TestEnv, pki: &Pki) -> h2::client::SendRequest<Bytes> {
    let tls = tls(env, pki, b"h2").await;
    let (sender, conn) = h2::client::Builder::new()
        .initial_connection_window_size(16 << 20)
        .handshake(tls)
        .await
        .unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    sender
}

/// Starts a streaming chat request on `sender`; the response and the stream's sending half
/// (which can reset it).
async fn h2_raw_stream(
    sender: &mut h2::client::SendRequest<Bytes>,
    env: &TestEnv,
    extra: &[(&str, &str)],
) -> Result<(h2::RecvStream, h2::SendStream<Bytes>), h2::Error> {
    let mut builder = Request::post(format!("https://{}/v1/chat/completions", env.gateway))
        .header("content-type", "application/json");
    for (name, value) in extra {
        builder = builder.header(*name, *value);
    }
    let mut ready = tokio::time::timeout(PATIENCE, sender.clone().ready())
        .await
        .expect("stream capacity in time")?;
    let (response, mut body) = ready.send_request(builder.body(()).unwrap(), false)?;
    body.send_data(Bytes::from(chat_body("mock-1", true)), true)?;
    *sender = ready;
    let response = tokio::time::timeout(PATIENCE, response)
        .await
        .expect("response headers in time")?;
    assert_eq!(response.status(), StatusCode::OK);
    Ok((response.into_body(), body))
}

/// Reads `body` until `pred` holds for what was read (or the body ends), releasing the
/// flow-control capacity of what it read.
async fn h2_read_until(body: &mut h2::RecvStream, pred: impl Fn(&[u8]) -> bool) -> Vec<u8> {
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    // Bounded by the deadline and the stream's end.
    while !pred(&seen) {
        match tokio::time::timeout_at(deadline, body.data())
            .await
            .expect("data in time")
        {
            Some(Ok(data)) => {
                let _ = body.flow_control().release_capacity(data.len());
                seen.extend_from_slice(&data);
            }
            Some(Err(e)) => panic!("stream error: {e}"),
            None => break,
        }
    }
    seen
}

fn has_events(n: usize) -> impl Fn(&[u8]) -> bool {
    move |b: &[u8]| sse_data(b).len() >= n
}

#[tokio::test]
async fn heartbeats_reach_tls_clients_over_http1_and_http2_before_the_first_token() {
    let pki = Pki::new();
    let env = start_tls(&pki, |config| {
        config.streams.heartbeat_interval = Duration::from_millis(200);
    })
    .await;
    // The upstream answers at once but sends its first token 800 ms later.
    let waiting = [("x-mock-first-delay-ms", "800"), ("x-mock-chunks", "1")];
    let mut http1 = http1_over(tls(&env, &pki, b"http/1.1").await).await;
    let mut h2 = h2_over(tls(&env, &pki, b"h2").await).await;
    for (protocol, response) in [
        (
            "HTTP/1.1",
            http1.send_request(stream_request(&env, &waiting)).await,
        ),
        (
            "HTTP/2",
            h2.send_request(stream_request(&env, &waiting)).await,
        ),
    ] {
        let response = response.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{protocol}");
        let all = read_to_end(response.into_body()).await;
        assert!(
            count_heartbeats(&all) >= 2,
            "{protocol}: {:?}",
            String::from_utf8_lossy(&all)
        );
        assert_heartbeats_between_events(&all);
        assert_eq!(
            sse_data(&all).last().map(String::as_str),
            Some("[DONE]"),
            "{protocol}"
        );
    }
}

#[tokio::test]
async fn a_reset_http2_stream_over_tls_cancels_its_upstream_and_spares_the_connection() {
    let pki = Pki::new();
    let env = start_tls(&pki, |_| {}).await;
    let mut client = h2_raw(&env, &pki).await;
    let (mut bystander, _b) = h2_raw_stream(&mut client, &env, &LONG).await.unwrap();
    let (mut doomed, mut doomed_send) = h2_raw_stream(&mut client, &env, &LONG).await.unwrap();
    h2_read_until(&mut doomed, has_events(1)).await;
    wait_for_mock(env.mock, "both upstream streams", PATIENCE, |s| {
        s.streams_active == 2
    })
    .await;

    doomed_send.send_reset(h2::Reason::CANCEL);
    let s = wait_for_mock(
        env.mock,
        "the reset stream's upstream to be cancelled",
        CANCEL_WITHIN,
        |s| s.streams_cancelled == 1,
    )
    .await;
    assert_eq!(s.streams_active, 1);
    // The other stream of the connection streams on, and the connection takes new streams.
    let seen = h2_read_until(&mut bystander, has_events(3)).await;
    assert!(sse_data(&seen).len() >= 3);
    let (mut third, _t) = h2_raw_stream(&mut client, &env, &[("x-mock-chunks", "2")])
        .await
        .unwrap();
    let all = h2_read_until(&mut third, |_| false).await;
    assert_eq!(sse_data(&all).last().map(String::as_str), Some("[DONE]"));
}

#[tokio::test]
async fn tls_clients_that_go_away_cancel_their_upstreams_within_a_second() {
    let pki = Pki::new();
    let env = start_tls(&pki, |_| {}).await;
    // HTTP/1.1: one stream, its connection closed mid-stream.
    let mut http1 = http1_over(tls(&env, &pki, b"http/1.1").await).await;
    let response = http1
        .send_request(stream_request(&env, &LONG))
        .await
        .unwrap();
    let mut body = response.into_body();
    read_until(&mut body, has_events(1)).await;
    drop((body, http1));
    let s = wait_for_mock(
        env.mock,
        "the HTTP/1.1 client's upstream to be cancelled",
        CANCEL_WITHIN,
        |s| s.streams_cancelled == 1,
    )
    .await;
    assert_eq!(s.streams_active, 0);

    // HTTP/2: ten streams on one connection, the TCP connection closed under them (no reset,
    // no GOAWAY: as a phone losing its network).
    let tcp = TcpStream::connect(env.gateway).await.unwrap();
    let local = tcp.local_addr().unwrap();
    let tls_stream = crate::tls::tls_over(tcp, &pki.ca_pem(), &[b"h2"]).await;
    let (mut sender, conn) = h2::client::handshake(tls_stream).await.unwrap();
    let driver = tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut bodies = Vec::new();
    for _ in 0..10 {
        bodies.push(h2_raw_stream(&mut sender, &env, &LONG).await.unwrap());
    }
    wait_for_mock(env.mock, "ten upstream streams", PATIENCE, |s| {
        s.streams_active == 10
    })
    .await;
    // Dropping the task that owns the connection closes the socket (the streams' handles only
    // refer to it).
    driver.abort();
    let _ = driver.await;
    let s = wait_for_mock(
        env.mock,
        "the HTTP/2 client's upstreams to be cancelled",
        CANCEL_WITHIN,
        |s| s.streams_active == 0,
    )
    .await;
    assert_eq!(s.streams_cancelled, 11, "client at {local}");
    drop(bodies);
    wait_for("the registry to empty", PATIENCE, || async {
        (live_streams(&env).await == 0).then_some(())
    })
    .await;
}

#[tokio::test]
async fn the_drain_sends_goaway_over_tls_finishes_short_streams_and_ends_long_ones() {
    let pki = Pki::new();
    let env = start_tls(&pki, |config| {
        config.shutdown.drain_timeout = Duration::from_secs(2);
    })
    .await;
    let mut client = h2_raw(&env, &pki).await;
    // Short: done 1 s after the drain starts, within the 2 s drain. Long: a hundred seconds.
    let short = [("x-mock-chunks", "5"), ("x-mock-chunk-delay-ms", "250")];
    let (mut short_body, _s) = h2_raw_stream(&mut client, &env, &short).await.unwrap();
    let (mut long_body, _l) = h2_raw_stream(&mut client, &env, &LONG).await.unwrap();
    let mut short_seen = h2_read_until(&mut short_body, has_events(1)).await;
    let mut long_seen = h2_read_until(&mut long_body, has_events(1)).await;

    env.shutdown.cancel();
    // The GOAWAY: the connection takes no new stream. (hyper first sends a GOAWAY naming the
    // highest stream id, then, a ping later, the last stream it took: until that second one a
    // new stream may still be accepted, so ask until one is refused.)
    let refused = wait_for("a GOAWAY from the gateway", PATIENCE, || {
        let mut client = client.clone();
        let env = &env;
        async move {
            match h2_raw_stream(&mut client, env, &[("x-mock-chunks", "1")]).await {
                Err(e) => Some(e),
                // Taken before the final GOAWAY: read to its end (dropped unread, it would be
                // reset and its upstream cancelled).
                Ok((mut body, _send)) => {
                    h2_read_until(&mut body, |_| false).await;
                    None
                }
            }
        }
    })
    .await;
    assert!(
        refused.is_go_away() || refused.reason() == Some(h2::Reason::REFUSED_STREAM),
        "{refused:?}"
    );

    // Both running streams go on streaming after the GOAWAY.
    long_seen
        .extend(h2_read_until(&mut long_body, has_events(sse_data(&long_seen).len() + 3)).await);
    short_seen.extend(h2_read_until(&mut short_body, |_| false).await);
    assert_eq!(
        sse_data(&short_seen).last().map(String::as_str),
        Some("[DONE]")
    );
    // The long one ends at the deadline with one final server_shutdown event.
    long_seen.extend(h2_read_until(&mut long_body, |_| false).await);
    assert_eq!(final_error(&long_seen)["code"], "server_shutdown");
    let s = wait_for_mock(
        env.mock,
        "the long upstream to be cancelled",
        PATIENCE,
        |s| s.streams_active == 0,
    )
    .await;
    assert_eq!(s.streams_cancelled, 1);
    assert!(s.streams_completed >= 1);
}

/// A raw HTTP/1.1 request over TLS from a socket with a small receive buffer, read up to its
/// first event; then the caller stops reading.
async fn stalled_http1(env: &TestEnv, pki: &Pki) -> TlsStream<TcpStream> {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let tcp = socket.connect(env.gateway).await.unwrap();
    let mut tls = crate::tls::tls_over(tcp, &pki.ca_pem(), &[b"http/1.1"]).await;
    let fast = "x-mock-chunks: 10000000\r\nx-mock-chunk-delay-ms: 0\r\n";
    crate::backpressure::request_to_first_event(&mut tls, env.gateway, fast).await;
    tls
}

#[tokio::test]
async fn tls_clients_that_stop_reading_are_cut_after_the_stall_timeout() {
    const STALL: Duration = Duration::from_secs(2);
    let pki = Pki::new();
    let env = start_tls(&pki, |config| {
        config.streams.client_stall_timeout = STALL;
    })
    .await;
    // HTTP/1.1 over TLS: the whole connection stalls.
    let _stalled_http1 = stalled_http1(&env, &pki).await;
    // HTTP/2 over TLS: a stream whose window is never released. Cutting it closes its
    // connection (hyper cannot reset a stream it is waiting to send on; see
    // `StreamHandle::cut_slow_client`), so the bystander is another client's connection.
    let mut client = h2_raw(&env, &pki).await;
    let fast = [
        ("x-mock-chunks", "10000000"),
        ("x-mock-chunk-delay-ms", "0"),
    ];
    let (_stalled_h2, _s) = h2_raw_stream(&mut client, &env, &fast).await.unwrap();
    let mut other = h2_raw(&env, &pki).await;
    let (mut bystander, _b) = h2_raw_stream(&mut other, &env, &LONG).await.unwrap();
    wait_for_mock(env.mock, "three upstream streams", PATIENCE, |s| {
        s.streams_active == 3
    })
    .await;

    // Both stalled streams are cut (the bystander stays), and their upstreams cancelled.
    wait_for(
        "the stalled streams to be cut",
        STALL + PATIENCE,
        || async { (live_streams(&env).await == 1).then_some(()) },
    )
    .await;
    let s = wait_for_mock(env.mock, "two upstreams cancelled", PATIENCE, |s| {
        s.streams_cancelled == 2
    })
    .await;
    assert_eq!(s.streams_active, 1);
    let (_, _, list) = fetch_json(get(env.admin, "/admin/streams")).await;
    assert_eq!(list["streams"].as_array().map(Vec::len), Some(1));
    // The bystander kept streaming through it.
    let seen = h2_read_until(&mut bystander, has_events(25)).await;
    assert!(sse_data(&seen).len() >= 25);
}

#[tokio::test]
async fn a_connection_refused_on_a_tls_listener_is_closed_without_an_answer() {
    let pki = Pki::new();
    let env = start_tls(&pki, |config| {
        config.limits.per_ip.max_connections = 1;
    })
    .await;
    let mut held = h2_over(tls(&env, &pki, b"h2").await).await;

    // The second connection's ClientHello gets no ServerHello and no cleartext HTTP answer
    // (which rustls would report as a corrupt message): the connection just ends.
    let tcp = TcpStream::connect(env.gateway).await.unwrap();
    let refused = tokio::time::timeout(PATIENCE, crate::tls::try_tls_over(tcp, &pki.ca_pem()))
        .await
        .expect("the handshake ended in time");
    let error = refused.expect_err("no handshake");
    assert!(
        matches!(
            error.kind(),
            std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset
        ),
        "{error:?}"
    );
    let admission = admission_summary(&env).await;
    assert_eq!(admission["refusals"]["ip_connections"], 1, "{admission}");

    // The held connection is unaffected.
    let response = held
        .send_request(stream_request(&env, &[("x-mock-chunks", "2")]))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let all = read_to_end(response.into_body()).await;
    assert_eq!(sse_data(&all).last().map(String::as_str), Some("[DONE]"));
}

#[tokio::test]
async fn tls_handshakes_and_the_certificate_expiry_are_exported() {
    let pki = Pki::new();
    let not_after = crate::tls::days_from_now(30).replace_nanosecond(0).unwrap();
    let (cert_file, key_file) = pki.install(&pki.leaf(Some(not_after)));
    let env = start_with(MockSettings::default(), |config| {
        config.tls.cert_file = Some(cert_file);
        config.tls.key_file = Some(key_file);
        config.tls.handshake_timeout = Duration::from_millis(300);
    })
    .await;
    // Completed: a client that trusts the CA.
    drop(tls(&env, &pki, b"h2").await);
    // Failed: cleartext HTTP to the TLS port.
    let mut plain = TcpStream::connect(env.gateway).await.unwrap();
    plain
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    // Timed out: a connection that sends nothing.
    let mut silent = TcpStream::connect(env.gateway).await.unwrap();
    for conn in [&mut plain, &mut silent] {
        let mut rest = Vec::new();
        // Closed by the gateway (or reset): either way, done with.
        let _ = tokio::time::timeout(PATIENCE, conn.read_to_end(&mut rest))
            .await
            .expect("closed in time");
    }
    let text = wait_for("three handshakes counted", PATIENCE, || async {
        let (_, _, body) = fetch(get(env.admin, "/metrics")).await;
        let text = String::from_utf8_lossy(&body).into_owned();
        text.contains(r#"tidegate_tls_handshakes_total{result="timeout"} 1"#)
            .then_some(text)
    })
    .await;
    for line in [
        r#"tidegate_tls_handshakes_total{result="completed"} 1"#,
        r#"tidegate_tls_handshakes_total{result="failed"} 1"#,
        r#"tidegate_tls_certificate_reloads_total{result="failed"} 0"#,
        &format!(
            "tidegate_tls_certificate_expiry_timestamp_seconds {}",
            not_after.unix_timestamp()
        ),
    ] {
        assert!(text.contains(line), "{line} missing:\n{text}");
    }
}

/// A TCP relay in front of the gateway for one connection, which can be frozen: from then on it
/// forwards nothing either way but keeps both sockets open, as a peer whose network vanished
/// (no FIN, no reset) looks to the gateway.
struct FreezableRelay {
    addr: SocketAddr,
    freeze: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FreezableRelay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FreezableRelay {
    async fn start(target: SocketAddr) -> FreezableRelay {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let freeze = CancellationToken::new();
        let frozen = freeze.clone();
        let task = tokio::spawn(async move {
            let (client, _) = listener.accept().await.unwrap();
            let gateway = TcpStream::connect(target).await.unwrap();
            let (mut client_read, mut client_write) = client.into_split();
            let (mut gateway_read, mut gateway_write) = gateway.into_split();
            let up = relay(&mut client_read, &mut gateway_write, &frozen);
            let down = relay(&mut gateway_read, &mut client_write, &frozen);
            tokio::join!(up, down);
            // Frozen (or closed): hold the sockets until the test drops the relay.
            std::future::pending::<()>().await;
        });
        FreezableRelay { addr, freeze, task }
    }
}

/// Copies `from` to `to` until either ends or `frozen` fires.
async fn relay(
    from: &mut tokio::net::tcp::OwnedReadHalf,
    to: &mut tokio::net::tcp::OwnedWriteHalf,
    frozen: &CancellationToken,
) {
    let mut buf = vec![0u8; 16 * 1024];
    // Bounded: ends when frozen, or when either side closes or fails.
    loop {
        let n = tokio::select! {
            _ = frozen.cancelled() => return,
            read = from.read(&mut buf) => match read {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            },
        };
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

#[tokio::test]
async fn a_silent_http2_peer_over_tls_is_disconnected_and_its_upstreams_cancelled() {
    let pki = Pki::new();
    let env = start_tls(&pki, |config| {
        config.http2.keepalive_interval = Duration::from_millis(300);
        config.http2.keepalive_timeout = Duration::from_millis(300);
    })
    .await;
    let relay = FreezableRelay::start(env.gateway).await;
    let tls_stream = connect_tls(relay.addr, &pki.ca_pem(), &[b"h2"]).await;
    let mut sender = h2_over(tls_stream).await;
    let mut bodies = Vec::new();
    for _ in 0..3 {
        let response = sender
            .send_request(stream_request(&env, &LONG))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let mut body = response.into_body();
        read_until(&mut body, has_events(1)).await;
        bodies.push(body);
    }
    wait_for_mock(env.mock, "three upstream streams", PATIENCE, |s| {
        s.streams_active == 3
    })
    .await;

    // The network vanishes: the gateway's PING goes unanswered, it drops the connection after
    // keepalive_interval + keepalive_timeout, and every stream of it is cancelled upstream.
    relay.freeze.cancel();
    let s = wait_for_mock(
        env.mock,
        "the silent peer's upstreams to be cancelled",
        // 0.6 s here; PATIENCE for a loaded machine, still far below the 30 s stall timeout
        // (the only other way the streams could end) and the 20 s default PING interval.
        PATIENCE,
        |s| s.streams_active == 0,
    )
    .await;
    assert_eq!(s.streams_cancelled, 3);
    wait_for("the registry to empty", PATIENCE, || async {
        (live_streams(&env).await == 0).then_some(())
    })
    .await;
    drop(bodies);
}
