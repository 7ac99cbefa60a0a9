//! `GET /metrics` on the admin listener over real sockets: every family exported, and the
//! active-stream and active-connection gauges exact (equal to the registry, back to zero after
//! any mix of outcomes, connections back to zero when clients leave).

use http::StatusCode;
use tidegate::metrics::{NAMES, PROCESS_NAMES};
use tidegate::mock::MockSettings;

use crate::common::*;

async fn streams_in_registry(env: &TestEnv) -> u64 {
    let (_, _, json) = fetch_json(get(env.admin, "/admin/summary")).await;
    json["streams"].as_u64().expect("streams")
}

#[tokio::test]
async fn every_family_is_exported_and_the_gauges_are_exact() {
    let env = start_with(MockSettings::default(), |c| {
        c.retry.max_attempts = 1;
    })
    .await;
    let text = scrape(&env).await;
    for name in NAMES.iter().chain(PROCESS_NAMES.iter()) {
        assert!(
            text.contains(&format!("# TYPE {name} ")),
            "{name} missing:\n{text}"
        );
    }
    assert_eq!(value(&text, "tidegate_streams_active"), Some(0.0));

    // A mix of outcomes: completed, failed mid-stream, an upstream error status, a client that
    // goes away, and two held open (one of them ended through the admin API).
    let (_c1, done) = open_stream(env.gateway, "mock-1", &[("x-mock-chunks", "2")]).await;
    read_to_end(done).await;
    // One with the usage chunk (stream_options.include_usage): its tokens are counted.
    let body = r#"{"model":"mock-1","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"hi"}]}"#;
    let (status, _, bytes) = fetch(post(
        env.gateway,
        "/v1/chat/completions",
        body,
        &[("x-mock-chunks", "3")],
    ))
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(String::from_utf8_lossy(&bytes).contains("\"usage\""));
    let (_c2, failed) = open_stream(env.gateway, "fail-midstream", &[]).await;
    read_to_end(failed).await;
    let (status, _, _) = chat(env.gateway, "fail-500", true).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    let held = [("x-mock-chunks", "1"), ("x-mock-chunk-delay-ms", "10000")];
    let gone = open_stream(env.gateway, "mock-1", &held).await;
    let (_c3, kept) = open_stream(env.gateway, "mock-1", &held).await;

    // While they run, the gauge is the registry's size.
    let text = scrape(&env).await;
    let live = streams_in_registry(&env).await;
    assert_eq!(live, 2);
    assert_eq!(value(&text, "tidegate_streams_active"), Some(live as f64));
    assert!(value(&text, r#"tidegate_connections_active{protocol="http1"}"#) >= Some(2.0));

    drop(gone);
    drop(kept);
    wait_for("every stream gone", PATIENCE, || async {
        let text = scrape(&env).await;
        (value(&text, "tidegate_streams_active") == Some(0.0)).then_some(())
    })
    .await;
    assert_eq!(streams_in_registry(&env).await, 0);
    drop((_c1, _c2, _c3));
    // The scrapes' own connections are the admin listener's, not counted here.
    let text = wait_for("the last connections closed", PATIENCE, || async {
        let text = scrape(&env).await;
        (value(&text, r#"tidegate_connections_active{protocol="http1"}"#) == Some(0.0))
            .then_some(text)
    })
    .await;
    assert_eq!(
        value(&text, r#"tidegate_streams_total{outcome="completed"}"#),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        value(&text, r#"tidegate_streams_total{outcome="client_gone"}"#),
        Some(2.0),
        "{text}"
    );
    assert!(
        value(
            &text,
            r#"tidegate_requests_total{route="chat_completions",status="200"}"#
        ) >= Some(4.0),
        "{text}"
    );
    assert_eq!(
        value(
            &text,
            r#"tidegate_requests_total{route="chat_completions",status="500"}"#
        ),
        Some(1.0),
        "{text}"
    );
    assert!(value(&text, "tidegate_stream_events_total") > Some(0.0));
    assert!(
        value(&text, r#"tidegate_tokens_total{type="completion"}"#) > Some(0.0),
        "{text}"
    );
    assert!(
        value(&text, r#"tidegate_tokens_total{type="prompt"}"#) > Some(0.0),
        "{text}"
    );
    // The first read of every stream is sampled.
    assert!(
        value(&text, "tidegate_relay_delay_seconds_count") >= Some(3.0),
        "{text}"
    );
    assert!(value(&text, "tidegate_time_to_first_token_seconds_count") >= Some(2.0));
    assert_eq!(
        value(
            &text,
            r#"tidegate_upstream_requests_total{status="500",upstream="default"}"#
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        value(&text, "tidegate_build_info{version=\"0.1.0\"}"),
        Some(1.0)
    );
}

#[tokio::test]
async fn upstream_connections_are_counted_while_open_and_not_after() {
    let env = start_with(MockSettings::default(), |c| {
        c.upstream.idle_connection_timeout = std::time::Duration::from_millis(300);
    })
    .await;
    let series = r#"tidegate_upstream_connections{upstream="default"}"#;
    let held = [("x-mock-chunks", "1"), ("x-mock-chunk-delay-ms", "10000")];
    let (_a, a) = open_stream(env.gateway, "mock-1", &held).await;
    let (_b, b) = open_stream(env.gateway, "mock-1", &held).await;
    // Two streams over HTTP/1.1: two upstream connections.
    assert_eq!(value(&scrape(&env).await, series), Some(2.0));
    drop((a, b));
    // Cancelled, then idle past upstream.idle_connection_timeout: none left.
    wait_for("the upstream connections closed", PATIENCE, || async {
        (value(&scrape(&env).await, series) == Some(0.0)).then_some(())
    })
    .await;
}
