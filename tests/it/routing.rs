//! Several upstreams: routes by model, balancing, retries before the first byte, the retry
//! budget and the circuit breaker, each shown with the mock's fault schedules.

use std::time::{Duration, Instant};

use http::StatusCode;
use serde_json::Value;
use tidegate::config::RouteConfig;
use tidegate::mock::MockSettings;

use crate::common::*;

fn route(models: &[&str], upstreams: &[&str]) -> RouteConfig {
    RouteConfig {
        models: models.iter().map(|m| (*m).to_owned()).collect(),
        upstreams: upstreams.iter().map(|u| (*u).to_owned()).collect(),
        ..Default::default()
    }
}

async fn admin_upstreams(fleet: &Fleet) -> Value {
    let (status, _, json) = fetch_json(get(fleet.admin, "/admin/upstreams")).await;
    assert_eq!(status, StatusCode::OK);
    json
}

#[tokio::test]
async fn a_500_from_the_first_upstream_is_answered_by_the_second() {
    // `a` weighs far more, so it is always asked first.
    let fleet = start_fleet(2, MockSettings::default(), |c| {
        c.upstreams[0].weight = 1000;
        c.breaker.consecutive_failures = 0;
        c.breaker.failure_percent = 0;
    })
    .await;
    fleet.mock(0).fail_next(1000, 500, None);

    let (status, headers, body) = chat(fleet.gateway, "mock-1", false).await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    assert_eq!(header(&headers, "x-tidegate-upstream"), "b");

    let (_conn, body) = open_stream(fleet.gateway, "mock-1", &[("x-mock-chunks", "2")]).await;
    let all = read_to_end(body).await;
    assert_eq!(sse_data(&all).last().map(String::as_str), Some("[DONE]"));

    assert_eq!(
        fleet.stats(0).requests_received,
        2,
        "each request tried `a` first"
    );
    assert_eq!(
        fleet.stats(1).requests_received,
        2,
        "and was answered by `b`"
    );
}

#[tokio::test]
async fn a_429_is_retried_after_its_retry_after_and_a_long_one_is_relayed() {
    let fleet = start_fleet(1, MockSettings::default(), |_| {}).await;
    fleet
        .mock(0)
        .fail_next(1, 429, Some(Duration::from_millis(300)));
    let started = Instant::now();
    let (_conn, body) = open_stream(fleet.gateway, "mock-1", &[("x-mock-chunks", "1")]).await;
    let all = read_to_end(body).await;
    assert_eq!(sse_data(&all).last().map(String::as_str), Some("[DONE]"));
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "the retry waited for retry-after-ms"
    );
    assert_eq!(fleet.stats(0).requests_received, 2);

    // Longer than retry.max_retry_after (5 s): relayed at once, for the client's SDK to wait.
    fleet
        .mock(0)
        .fail_next(1, 429, Some(Duration::from_secs(30)));
    let (status, headers, _) = chat(fleet.gateway, "mock-1", true).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(header(&headers, "retry-after"), "30");
    assert_eq!(header(&headers, "x-tidegate-upstream"), "a");
    assert_eq!(fleet.stats(0).requests_received, 3, "not retried");
}

#[tokio::test]
async fn other_4xx_and_failures_after_the_first_byte_are_never_retried() {
    let fleet = start_fleet(2, MockSettings::default(), |_| {}).await;
    // A 400 is the client's: relayed as it is, from the one upstream asked.
    fleet.mock(0).fail_next(1, 400, None);
    fleet.mock(1).fail_next(1, 400, None);
    let (status, _, _) = chat(fleet.gateway, "mock-1", false).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let asked = fleet.stats(0).requests_received + fleet.stats(1).requests_received;
    assert_eq!(asked, 1);
    fleet.mock(0).clear_faults();
    fleet.mock(1).clear_faults();

    // Broken mid-stream after bytes were sent: one final error event, no second attempt.
    let (_conn, body) = open_stream(fleet.gateway, "fail-midstream", &[]).await;
    let all = read_to_end(body).await;
    assert_eq!(final_error(&all)["code"], "upstream_reset");
    let asked = fleet.stats(0).requests_received + fleet.stats(1).requests_received;
    assert_eq!(asked, 2);
}

#[tokio::test]
async fn the_breaker_opens_sheds_probes_and_recovers() {
    let fleet = start_fleet(1, MockSettings::default(), |c| {
        c.retry.max_attempts = 1;
        c.breaker.consecutive_failures = 3;
        c.breaker.open_for = Duration::from_millis(300);
    })
    .await;
    fleet.mock(0).fail_next(3, 503, None);
    for _ in 0..3 {
        let (status, _, _) = chat(fleet.gateway, "mock-1", false).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    }
    assert_eq!(
        admin_upstreams(&fleet).await["upstreams"][0]["breaker"]["state"],
        "open"
    );

    // Open: shed at once, without asking the upstream.
    let (status, headers, json) = chat_json(fleet.gateway, "mock-1", false).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(json["error"]["code"], "upstream_unavailable");
    assert!(headers.get("retry-after").is_some());
    assert_eq!(fleet.stats(0).requests_received, 3);

    // After open_for, one probe; it succeeds and the breaker closes.
    wait_for("the probe to succeed", PATIENCE, || async {
        let (status, _, _) = chat(fleet.gateway, "mock-1", false).await;
        (status == StatusCode::OK).then_some(())
    })
    .await;
    assert_eq!(fleet.stats(0).requests_received, 4, "exactly one probe");
    let view = admin_upstreams(&fleet).await;
    assert_eq!(view["upstreams"][0]["breaker"]["state"], "closed");
    assert_eq!(view["upstreams"][0]["breaker"]["opened_total"], 1);
}

#[tokio::test]
async fn the_retry_budget_stops_a_retry_storm() {
    let fleet = start_fleet(1, MockSettings::default(), |c| {
        c.retry.max_attempts = 3;
        c.retry.budget_percent = 10;
        c.retry.budget_min_retries = 2;
        c.retry.budget_window = Duration::from_secs(60);
        c.breaker.consecutive_failures = 0;
        c.breaker.failure_percent = 0;
    })
    .await;
    fleet.mock(0).fail_next(10_000, 503, None);
    let requests = 40;
    for _ in 0..requests {
        let (status, _, _) = chat(fleet.gateway, "mock-1", false).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    }
    // Without a budget: 3 attempts each, 120. With it: 40 + at most max(2, 10% of 40).
    let asked = fleet.stats(0).requests_received;
    assert!(
        (requests + 1..=requests + 4).contains(&asked),
        "{asked} upstream requests for {requests} client requests"
    );
    let budget = &admin_upstreams(&fleet).await["retry_budget"];
    assert_eq!(budget["requests"], requests);
}

#[tokio::test]
async fn routes_pick_upstreams_by_model_and_rename_it() {
    let fleet = start_fleet(2, MockSettings::default(), |c| {
        c.routes = vec![route(&["gpt-4o*"], &["a"]), route(&["llama"], &["b"])];
        c.routes[1]
            .rename
            .insert("b".to_owned(), "meta/Llama-3.1-8B".to_owned());
    })
    .await;
    let (status, headers, _) = chat(fleet.gateway, "gpt-4o-mini", false).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(header(&headers, "x-tidegate-upstream"), "a");

    let (status, headers, json) = chat_json(fleet.gateway, "llama", false).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(header(&headers, "x-tidegate-upstream"), "b");
    assert_eq!(
        json["model"], "meta/Llama-3.1-8B",
        "b saw the renamed model"
    );
    assert_eq!(fleet.stats(0).requests_received, 1);
    assert_eq!(fleet.stats(1).requests_received, 1);

    let (status, _, json) = chat_json(fleet.gateway, "claude", true).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(json["error"]["code"], "model_not_found");
    assert_eq!(json["error"]["param"], "model");

    // The model list comes from the routes: exact names only.
    let (status, _, json) = fetch_json(get(fleet.gateway, "/v1/models")).await;
    assert_eq!(status, StatusCode::OK);
    let ids: Vec<&str> = json["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["id"].as_str())
        .collect();
    assert_eq!(ids, ["llama"]);
}

#[tokio::test]
async fn streams_spread_over_upstreams_by_weight() {
    let fleet = start_fleet(2, MockSettings::default(), |c| {
        c.upstreams[0].weight = 3;
        c.upstreams[1].weight = 1;
    })
    .await;
    // Streams held open at once, so in-flight counts steer the choice.
    let mut held = Vec::new();
    for _ in 0..80 {
        held.push(
            open_stream(
                fleet.gateway,
                "mock-1",
                &[("x-mock-chunks", "1"), ("x-mock-chunk-delay-ms", "5000")],
            )
            .await,
        );
    }
    let (a, b) = (
        fleet.stats(0).requests_received,
        fleet.stats(1).requests_received,
    );
    assert_eq!(a + b, 80);
    assert!((50..=70).contains(&a), "a {a}, b {b}: about 3:1");
}

#[tokio::test]
async fn the_admin_api_and_the_response_name_the_upstream_and_attempts() {
    let fleet = start_fleet(1, MockSettings::default(), |_| {}).await;
    fleet.mock(0).fail_next(1, 502, None);
    let mut conn = Conn::open(fleet.gateway).await;
    let response = conn
        .send(post(
            fleet.gateway,
            "/v1/chat/completions",
            &chat_body("mock-1", true),
            &[("x-mock-chunks", "1"), ("x-mock-chunk-delay-ms", "5000")],
        ))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(header(response.headers(), "x-tidegate-upstream"), "a");
    let id = header(response.headers(), "x-tidegate-stream-id").to_owned();
    let (status, _, json) = fetch_json(get(fleet.admin, &format!("/admin/streams/{id}"))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(json["upstream"], "a");
    assert_eq!(json["attempts"], 2);
}

#[tokio::test]
async fn an_open_breaker_sends_the_traffic_to_the_other_upstream() {
    let fleet = start_fleet(2, MockSettings::default(), |c| {
        c.upstreams[0].weight = 1000;
        c.breaker.consecutive_failures = 3;
        c.breaker.open_for = Duration::from_secs(60);
    })
    .await;
    fleet.mock(0).fail_next(10_000, 500, None);
    for _ in 0..20 {
        let (status, headers, _) = chat(fleet.gateway, "mock-1", false).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(header(&headers, "x-tidegate-upstream"), "b");
    }
    // `a` was asked until its breaker opened, then never again.
    assert_eq!(fleet.stats(0).requests_received, 3);
    assert_eq!(fleet.stats(1).requests_received, 20);
    assert_eq!(
        admin_upstreams(&fleet).await["upstreams"][0]["breaker"]["state"],
        "open"
    );
}

#[tokio::test]
async fn once_an_early_answer_has_started_the_stream_nothing_is_retried() {
    let fleet = start_fleet(2, MockSettings::default(), |c| {
        c.upstreams[0].weight = 1000;
        c.streams.heartbeat_interval = Duration::from_millis(100);
    })
    .await;
    // `a` answers 503 only after 600 ms: by then the client has its headers and a heartbeat.
    let mut conn = Conn::open(fleet.gateway).await;
    let response = conn
        .send(post(
            fleet.gateway,
            "/v1/chat/completions",
            &chat_body("fail-500", true),
            &[("x-mock-headers-delay-ms", "600")],
        ))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(header(response.headers(), "x-tidegate-upstream"), "a");
    let all = read_to_end(response.into_body()).await;
    assert!(all.starts_with(b": ping"), "a heartbeat came first");
    let error = final_error(&all);
    assert_eq!(error["type"], "server_error", "{error}");
    assert_eq!(fleet.stats(0).requests_received, 1);
    assert_eq!(fleet.stats(1).requests_received, 0, "no retry after bytes");
}

#[tokio::test]
async fn an_upstream_that_drops_every_connection_opens_its_breaker() {
    // A lost connection counts against the breaker only when the retry's fresh connection is
    // lost too: one burst of lost connections (a GOAWAY) does not open it, an upstream that
    // drops everything does.
    let fleet = start_fleet(1, MockSettings::default(), |c| {
        c.breaker.consecutive_failures = 4;
        c.breaker.open_for = Duration::from_secs(60);
    })
    .await;
    fleet.mock(0).drop_next(10_000);
    for _ in 0..2 {
        let (status, _, json) = chat_json(fleet.gateway, "mock-1", false).await;
        assert_eq!(status, StatusCode::BAD_GATEWAY);
        assert_eq!(json["error"]["code"], "upstream_failed");
    }
    // 3 attempts each, the last 2 of each counted: 4 in a row.
    assert_eq!(fleet.stats(0).requests_received, 6);
    assert_eq!(
        admin_upstreams(&fleet).await["upstreams"][0]["breaker"]["state"],
        "open"
    );
    let (status, _, json) = chat_json(fleet.gateway, "mock-1", false).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(json["error"]["code"], "upstream_unavailable");
    assert_eq!(fleet.stats(0).requests_received, 6);
}
