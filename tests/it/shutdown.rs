//! Shutdown: readiness fails at once, the API listener closes, a request still running at the
//! drain deadline is cut (and its upstream cancelled), and `run` returns.

use crate::common::*;
use http::StatusCode;
use http_body_util::BodyExt;
use tokio::net::TcpStream;

#[tokio::test]
async fn drain_fails_readiness_refuses_new_connections_and_cuts_stragglers() {
    let mut env = start().await; // drain_timeout is 2 s in the harness
    let (_conn, mut body) = open_stream(
        env.gateway,
        "mock-1",
        &[("x-mock-chunks", "1000"), ("x-mock-chunk-delay-ms", "100")],
    )
    .await;
    read_until(&mut body, |b| !sse_data(b).is_empty()).await;

    env.shutdown.cancel();

    // The admin listener stays up through the drain and reports not ready.
    let (status, _, json) = fetch_json(get(env.admin, "/readyz")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(json["error"]["code"], "server_shutdown");
    let (status, _, _) = fetch_json(get(env.admin, "/healthz")).await;
    assert_eq!(status, StatusCode::OK, "alive while draining");

    wait_for(
        "the API listener to refuse connections",
        PATIENCE,
        || async { TcpStream::connect(env.gateway).await.is_err().then_some(()) },
    )
    .await;

    // The stream outlives the drain deadline, so it is cut (its connection closed) ...
    let cut = tokio::time::timeout(PATIENCE, async {
        // Bounded by the timeout; each frame is one event every 100 ms.
        loop {
            match body.frame().await {
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return,
            }
        }
    })
    .await;
    assert!(cut.is_ok(), "the stream was cut at the drain deadline");
    // ... run() returns ...
    let run = tokio::time::timeout(PATIENCE, &mut env.gateway_task).await;
    assert!(matches!(run, Ok(Ok(Ok(())))), "run returned cleanly");
    // ... and the upstream stream was cancelled, not left running.
    let s = wait_for_mock(
        env.mock,
        "the upstream stream to be cancelled",
        PATIENCE,
        |s| s.streams_active == 0,
    )
    .await;
    assert_eq!(s.streams_cancelled, 1);
}
