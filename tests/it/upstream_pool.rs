//! The HTTP/2 upstream pool: it grows past the upstream's per-connection stream limit instead
//! of queueing, closes idle extra connections, and one client's trouble (cancelling, stalling)
//! never fails another client's stream on a shared connection.

use std::time::Duration;

use http::StatusCode;
use http_body_util::BodyExt;
use tidegate::config::UpstreamProtocol;
use tidegate::mock::MockSettings;
use tokio::task::JoinSet;

use crate::common::*;

/// The heavy tests here (thousands of streams each) take turns: run side by side on a 2-core
/// machine with the rest of the suite, they would measure the machine, not the gateway.
static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// One worker (so one pool), an HTTP/2 upstream that allows `per_connection` streams on each
/// connection, and the gateway's own cap set to match.
async fn h2_fleet(
    per_connection: u32,
    configure: impl FnOnce(&mut tidegate::config::Config),
) -> Fleet {
    let settings = MockSettings {
        h2_max_concurrent_streams: per_connection,
        ..MockSettings::default()
    };
    start_fleet(1, settings, |c| {
        c.worker_threads = 1;
        c.upstreams[0].protocol = UpstreamProtocol::Http2;
        c.upstreams[0].max_streams_per_connection = per_connection;
        configure(c);
    })
    .await
}

/// Starts `count` streams over `connections` HTTP/2 client connections; each stream's
/// response headers are awaited. Returns the bodies.
async fn open_h2_streams(
    gateway: std::net::SocketAddr,
    connections: usize,
    count: usize,
    extra: &'static [(&'static str, &'static str)],
) -> (Vec<H2Conn>, Vec<hyper::body::Incoming>) {
    let mut conns = Vec::new();
    for _ in 0..connections {
        conns.push(H2Conn::open(gateway).await);
    }
    let mut opening = JoinSet::new();
    for i in 0..count {
        let mut sender = conns[i % connections].sender();
        opening.spawn(async move {
            let response = tokio::time::timeout(
                PATIENCE,
                sender.send_request(post(
                    gateway,
                    "/v1/chat/completions",
                    &chat_body("mock-1", true),
                    extra,
                )),
            )
            .await
            .expect("headers in time")
            .expect("response");
            assert_eq!(response.status(), StatusCode::OK);
            response.into_body()
        });
    }
    let mut bodies = Vec::new();
    while let Some(body) = opening.join_next().await {
        bodies.push(body.unwrap());
    }
    (conns, bodies)
}

#[tokio::test]
async fn the_pool_grows_past_the_upstreams_stream_limit_instead_of_queueing() {
    let _turn = HEAVY.lock().await;
    let fleet = h2_fleet(100, |c| {
        c.upstreams[0].idle_connection_timeout = Duration::from_millis(300);
    })
    .await;
    // 2,000 streams held open at once: each must have its upstream stream now, not after
    // others end (they last 3 s).
    let (_conns, bodies) = open_h2_streams(
        fleet.gateway,
        10,
        2000,
        &[("x-mock-chunks", "1"), ("x-mock-chunk-delay-ms", "3000")],
    )
    .await;
    let live = wait_for("2,000 upstream streams at once", PATIENCE, || async {
        let s = fleet.stats(0);
        (s.streams_active == 2000).then_some(s)
    })
    .await;
    assert!(
        live.max_streams_per_connection <= 100,
        "{}",
        live.max_streams_per_connection
    );
    assert!(
        (20..=30).contains(&live.connections_accepted),
        "about 20 connections, not {}",
        live.connections_accepted
    );
    // The admin API counts them too.
    let (_, _, view) = fetch_json(get(fleet.admin, "/admin/upstreams")).await;
    let counted = view["upstreams"][0]["h2_connections"].as_u64().unwrap();
    assert!((20..=30).contains(&counted), "{view}");
    for body in bodies {
        let all = read_to_end(body).await;
        assert_eq!(sse_data(&all).last().map(String::as_str), Some("[DONE]"));
    }
    // Idle extra connections close after idle_connection_timeout.
    wait_for("idle connections to close", PATIENCE, || async {
        (fleet.stats(0).connections_active == 0).then_some(())
    })
    .await;
    wait_for("the admin API to count them closed", PATIENCE, || async {
        let (_, _, view) = fetch_json(get(fleet.admin, "/admin/upstreams")).await;
        (view["upstreams"][0]["h2_connections"] == 0).then_some(())
    })
    .await;
}

/// Streams that run to the end while others on the same upstream connections are cancelled or
/// stall: `count` of them, 20 chunks 20 ms apart.
async fn bystanders(gateway: std::net::SocketAddr, count: usize) -> JoinSet<Vec<u8>> {
    let mut set = JoinSet::new();
    for _ in 0..count {
        set.spawn(async move {
            let (_conn, body) = open_stream(
                gateway,
                "mock-1",
                &[("x-mock-chunks", "20"), ("x-mock-chunk-delay-ms", "20")],
            )
            .await;
            read_to_end(body).await.to_vec()
        });
    }
    set
}

async fn all_complete(mut set: JoinSet<Vec<u8>>) -> usize {
    let mut done = 0;
    while let Some(all) = set.join_next().await {
        let all = all.unwrap();
        assert_eq!(
            sse_data(&all).last().map(String::as_str),
            Some("[DONE]"),
            "a bystander failed: {}",
            String::from_utf8_lossy(&all)
        );
        done += 1;
    }
    done
}

#[tokio::test]
async fn a_wave_of_cancelled_streams_fails_no_bystander() {
    let _turn = HEAVY.lock().await;
    // Up to 1,000 streams share each upstream connection, so each sees many resets; small
    // stream windows keep the data in flight per stream (and the test's CPU) small.
    let fleet = h2_fleet(1000, |c| {
        c.streams.max_buffered_bytes = 16 * 1024;
    })
    .await;
    let running = bystanders(fleet.gateway, 200).await;
    // 2,000 clients that go away after their first event; the upstream keeps sending to them
    // until it sees the reset, so frames arrive on streams the gateway has already reset.
    let mut wave = JoinSet::new();
    for _ in 0..2000 {
        let gateway = fleet.gateway;
        wave.spawn(async move {
            let (conn, mut body) = open_stream(
                gateway,
                "mock-1",
                &[("x-mock-chunks", "2000"), ("x-mock-chunk-delay-ms", "0")],
            )
            .await;
            let _ = body.frame().await;
            drop(body);
            drop(conn);
        });
    }
    while let Some(r) = wave.join_next().await {
        r.unwrap();
    }
    assert_eq!(all_complete(running).await, 200);
    wait_for_mock_in_process(&fleet, "every cancelled stream to end", |s| {
        s.streams_active == 0
    })
    .await;
    assert!(fleet.stats(0).streams_cancelled >= 1500);
}

#[tokio::test]
async fn a_wave_of_stalled_then_vanished_clients_fails_no_bystander() {
    let _turn = HEAVY.lock().await;
    // Stalled and running streams share connections of up to 1,000 streams.
    let fleet = h2_fleet(1000, |c| {
        c.streams.max_buffered_bytes = 16 * 1024;
    })
    .await;
    let running = bystanders(fleet.gateway, 200).await;
    // 500 clients that take the headers, stop reading while the upstream sends as fast as it
    // can, then vanish: each holds only its own stream's window (16 KiB of its ~50 KB).
    let mut opening = JoinSet::new();
    for _ in 0..500 {
        let gateway = fleet.gateway;
        opening.spawn(async move {
            open_stream(
                gateway,
                "mock-1",
                &[("x-mock-chunks", "500"), ("x-mock-chunk-delay-ms", "0")],
            )
            .await
        });
    }
    let mut stalled = Vec::new();
    while let Some(stream) = opening.join_next().await {
        stalled.push(stream.unwrap());
    }
    assert_eq!(all_complete(running).await, 200);
    drop(stalled);
    wait_for_mock_in_process(&fleet, "every stalled stream to be cancelled", |s| {
        s.streams_active == 0
    })
    .await;
}

#[tokio::test]
async fn an_upstream_goaway_after_resets_costs_only_answered_streams() {
    let _turn = HEAVY.lock().await;
    let fleet = h2_fleet(50, |c| {
        c.retry.max_attempts = 3;
        // Every closed connection may hold up to 50 waiting bystanders; let all of them retry
        // (the budget's own test is in routing.rs).
        c.retry.budget_percent = 100;
    })
    .await;
    // The upstream closes a connection after 20 client resets on it, as rapid-reset
    // protection does.
    fleet.mock(0).goaway_after_resets(Some(20));
    // Bystanders waiting for their headers (the upstream answers after 2 s), started between
    // 200 clients that stream, so that both share every connection. Then the 200 go away at
    // once: the upstream closes the connections they were on, and the bystanders on them,
    // not yet answered, are retried on fresh connections.
    let (opened_tx, mut opened) = tokio::sync::mpsc::channel::<()>(200);
    let (leave_tx, leave) = tokio::sync::watch::channel(false);
    let mut waiting = JoinSet::new();
    let mut wave = JoinSet::new();
    for i in 0..300 {
        let gateway = fleet.gateway;
        if i % 3 == 0 {
            waiting.spawn(async move {
                let (_conn, body) = open_stream(
                    gateway,
                    "mock-1",
                    &[("x-mock-headers-delay-ms", "2000"), ("x-mock-chunks", "2")],
                )
                .await;
                read_to_end(body).await.to_vec()
            });
        } else {
            let opened_tx = opened_tx.clone();
            let mut leave = leave.clone();
            wave.spawn(async move {
                let (conn, mut body) = open_stream(
                    gateway,
                    "mock-1",
                    &[("x-mock-chunks", "100"), ("x-mock-chunk-delay-ms", "50")],
                )
                .await;
                let _ = body.frame().await;
                let _ = opened_tx.send(()).await;
                let _ = leave.wait_for(|go| *go).await;
                drop(body);
                drop(conn);
            });
        }
    }
    for _ in 0..200 {
        tokio::time::timeout(PATIENCE, opened.recv())
            .await
            .expect("the streaming clients start in time");
    }
    leave_tx.send_replace(true);
    while let Some(r) = wave.join_next().await {
        r.unwrap();
    }
    assert_eq!(
        all_complete(waiting).await,
        100,
        "no waiting bystander failed"
    );
    let stats = fleet.stats(0);
    assert!(stats.reset_goaways >= 1, "the upstream closed connections");
    assert!(
        stats.requests_received > 300,
        "bystanders on the closed connections were retried: {stats:?}"
    );
}

async fn wait_for_mock_in_process(
    fleet: &Fleet,
    what: &str,
    pred: impl Fn(&tidegate::mock::StatsSnapshot) -> bool,
) {
    wait_for(what, PATIENCE, || async {
        pred(&fleet.stats(0)).then_some(())
    })
    .await
}
