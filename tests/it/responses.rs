//! The Responses API through the gateway (issue 16): `POST /v1/responses` streams relayed byte
//! for byte in their own grammar (typed events, a terminal event, no `[DONE]`), the final error
//! event in the Responses shape, the first token at the first output delta, the usage from
//! `response.completed`, and the retrieval and control routes forwarded to the upstream. The
//! official SDKs' view of the same is in `openai_sdk.rs`.

use std::time::Duration;

use crate::common::*;
use http::{Method, Request, StatusCode};
use http_body_util::Full;
use hyper::body::Bytes;
use serde_json::Value;
use tidegate::config::Config;
use tidegate::mock::{expected_content, MockSettings};
use tidegate::sse::parser::Event;

/// A Responses API request body.
fn responses_body(model: &str, stream: bool) -> String {
    format!(r#"{{"model":"{model}","stream":{stream},"input":"Hello"}}"#)
}

/// Opens a Responses stream on its own connection; returns the connection, the answer's
/// headers and its body.
async fn open_responses(
    gateway: std::net::SocketAddr,
    model: &str,
    extra: &[(&str, &str)],
) -> (Conn, http::HeaderMap, hyper::body::Incoming) {
    let mut conn = Conn::open(gateway).await;
    let response = conn
        .send(post(
            gateway,
            "/v1/responses",
            &responses_body(model, true),
            extra,
        ))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let (parts, body) = response.into_parts();
    (conn, parts.headers, body)
}

fn events(bytes: &[u8]) -> Vec<Event> {
    tidegate::sse::parser::parse_all(bytes, 16 << 20).expect("valid SSE")
}

fn data(event: &Event) -> Value {
    serde_json::from_str(&event.data)
        .unwrap_or_else(|e| panic!("event data is JSON ({e}): {}", event.data))
}

/// The events' types, from their `event:` lines.
fn types(events: &[Event]) -> Vec<&str> {
    events.iter().map(|e| e.event_type.as_str()).collect()
}

/// The text of the output deltas.
fn output_text(events: &[Event]) -> String {
    events
        .iter()
        .filter(|e| e.event_type == "response.output_text.delta")
        .map(|e| data(e)["delta"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// Asserts the last event is the only error event, in the Responses API's shape (with the
/// `error` object the SDKs raise on) and numbered after the last relayed event; returns its
/// code.
fn final_responses_error(events: &[Event]) -> String {
    let last = events.last().expect("at least one event");
    assert_eq!(last.event_type, "error", "{events:?}");
    let errors = events.iter().filter(|e| e.event_type == "error").count();
    assert_eq!(errors, 1, "exactly one error event: {:?}", types(events));
    let json = data(last);
    assert_eq!(json["type"], "error");
    assert!(json["message"].is_string(), "{json}");
    assert_eq!(json["code"], json["error"]["code"], "{json}");
    assert_eq!(json["message"], json["error"]["message"], "{json}");
    let before = events[..events.len() - 1]
        .iter()
        .filter_map(|e| data(e)["sequence_number"].as_u64())
        .max();
    let expected = before.map_or(0, |n| n + 1);
    assert_eq!(json["sequence_number"], expected, "{json}");
    assert!(!events.iter().any(|e| e.data == "[DONE]"));
    json["code"].as_str().unwrap_or_default().to_owned()
}

/// The normal sequence the mock sends for `chunks` deltas.
fn normal_types(chunks: usize) -> Vec<&'static str> {
    let mut expected = vec![
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ];
    expected.extend(std::iter::repeat_n("response.output_text.delta", chunks));
    expected.extend([
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]);
    expected
}

const FAST: (&str, &str) = ("x-mock-chunk-delay-ms", "1");

/// Proves requirement 2's relay: every event arrives as the upstream framed it (`event:` line,
/// one `data:` line with `type` and `sequence_number`, blank line), in order, with no `[DONE]`,
/// and the stream is recorded as completed.
#[tokio::test]
async fn a_responses_stream_is_relayed_event_by_event_with_its_event_lines() {
    let env = start().await;
    let (_conn, headers, body) = open_responses(env.gateway, "mock-1", &[FAST]).await;
    assert!(header(&headers, "content-type").starts_with("text/event-stream"));
    assert!(!header(&headers, "x-tidegate-stream-id").is_empty());
    let all = read_to_end(body).await;
    let text = std::str::from_utf8(&all).unwrap();
    // Byte for byte as the mock frames them: each block is exactly `event:` + `data:`.
    let blocks: Vec<&str> = text.trim_end_matches("\n\n").split("\n\n").collect();
    let parsed = events(&all);
    assert_eq!(blocks.len(), parsed.len());
    for (block, event) in blocks.iter().zip(&parsed) {
        assert_eq!(
            *block,
            format!("event: {}\ndata: {}", event.event_type, event.data)
        );
        assert_eq!(data(event)["type"], event.event_type.as_str());
    }
    let chunks = MockSettings::default().chunks as usize;
    assert_eq!(types(&parsed), normal_types(chunks));
    for (i, event) in parsed.iter().enumerate() {
        assert_eq!(data(event)["sequence_number"], i as u64);
    }
    assert_eq!(output_text(&parsed), expected_content(chunks as u32));
    assert!(!text.contains("[DONE]"));

    let metrics = scrape(&env).await;
    assert_eq!(
        value(&metrics, r#"tidegate_streams_total{outcome="completed"}"#),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        value(
            &metrics,
            r#"tidegate_requests_total{route="responses",status="200"}"#
        ),
        Some(1.0)
    );
}

/// Proves requirement 3: the first token is the first output delta, not `response.created`
/// (the stream shows `waiting_for_first_token` between them), and `response.completed`'s usage
/// is counted as tokens.
#[tokio::test]
async fn the_first_token_is_the_first_delta_and_the_usage_comes_from_response_completed() {
    let env = start().await;
    let delay = Duration::from_millis(800);
    let (_conn, headers, mut body) = open_responses(
        env.gateway,
        "mock-1",
        &[
            ("x-mock-chunks", "3"),
            FAST,
            ("x-mock-first-delay-ms", "800"),
        ],
    )
    .await;
    let stream_id = header(&headers, "x-tidegate-stream-id").to_owned();
    let seen = read_until(&mut body, |b| {
        types(&events(b)).contains(&"response.content_part.added")
    })
    .await;
    assert!(!types(&events(&seen)).contains(&"response.output_text.delta"));
    let (status, _, view) =
        fetch_json(get(env.admin, &format!("/admin/streams/{stream_id}"))).await;
    assert_eq!(status, StatusCode::OK, "{view}");
    assert_eq!(view["state"], "waiting_for_first_token", "{view}");
    assert_eq!(view["first_event_after_ms"], Value::Null, "{view}");
    let rest = read_to_end(body).await;
    let all = events(&[seen, rest.to_vec()].concat());
    assert_eq!(all.last().unwrap().event_type, "response.completed");
    let usage = &data(all.last().unwrap())["response"]["usage"];
    let (input, output) = (
        usage["input_tokens"].as_f64(),
        usage["output_tokens"].as_f64(),
    );
    assert_eq!(output, Some(3.0), "{usage}");

    let metrics = wait_for("the stream's end in the metrics", PATIENCE, || async {
        let text = scrape(&env).await;
        value(&text, r#"tidegate_streams_total{outcome="completed"}"#)
            .is_some_and(|n| n == 1.0)
            .then_some(text)
    })
    .await;
    assert_eq!(
        value(&metrics, r#"tidegate_tokens_total{type="completion"}"#),
        output
    );
    assert_eq!(
        value(&metrics, r#"tidegate_tokens_total{type="prompt"}"#),
        input
    );
    let ttft = value(&metrics, "tidegate_time_to_first_token_seconds_sum").unwrap();
    assert!(
        ttft >= delay.as_secs_f64() * 0.9,
        "time to first token {ttft}s counts from the request to the first delta"
    );
    assert_eq!(
        value(&metrics, "tidegate_time_to_first_token_seconds_count"),
        Some(1.0)
    );
}

/// Proves requirement 2's ends: a stream that ends without a terminal event, or is cut mid-way,
/// gets exactly one final `event: error`; the upstream's own error event, or its
/// `response.failed`, ends the stream with nothing added.
#[tokio::test]
async fn failed_responses_streams_end_with_exactly_one_error_event() {
    let env = start().await;
    for (model, code) in [
        ("fail-no-done", "upstream_incomplete_stream"),
        ("fail-midstream", "upstream_reset"),
    ] {
        let (_conn, _, body) = open_responses(env.gateway, model, &[FAST]).await;
        let all = events(&read_to_end(body).await);
        assert_eq!(final_responses_error(&all), code, "{model}");
        assert_eq!(all[0].event_type, "response.created", "{model}");
    }

    let (_conn, _, body) = open_responses(env.gateway, "fail-error-event", &[FAST]).await;
    let all = events(&read_to_end(body).await);
    let code = final_responses_error(&all);
    assert_eq!(
        code, "server_error",
        "the upstream's own error, and none of ours"
    );

    let (_conn, _, body) = open_responses(env.gateway, "fail-response-failed", &[FAST]).await;
    let all = events(&read_to_end(body).await);
    assert_eq!(all.last().unwrap().event_type, "response.failed");
    assert!(!types(&all).contains(&"error"));

    let metrics = scrape(&env).await;
    for (outcome, n) in [
        ("upstream_incomplete_stream", 1.0),
        ("upstream_reset", 1.0),
        ("upstream_error_event", 2.0),
    ] {
        assert_eq!(
            value(
                &metrics,
                &format!(r#"tidegate_streams_total{{outcome="{outcome}"}}"#)
            ),
            Some(n),
            "{outcome}"
        );
    }
}

/// Proves requirement 2's early answer and heartbeats: an upstream slow to answer gets the
/// client an early answer kept alive with `: ping`, and an upstream error after it becomes the
/// final event in the Responses shape, with the upstream's own words.
#[tokio::test]
async fn a_slow_upstream_is_answered_early_and_its_error_becomes_a_responses_error_event() {
    let env = start_with(MockSettings::default(), |config| {
        config.streams.heartbeat_interval = Duration::from_millis(100);
    })
    .await;
    let slow = [
        ("x-mock-headers-delay-ms", "600"),
        ("x-mock-chunks", "2"),
        FAST,
    ];
    let (_conn, _, body) = open_responses(env.gateway, "mock-1", &slow).await;
    let all = read_to_end(body).await;
    assert!(
        all.starts_with(b": ping\n\n"),
        "{}",
        String::from_utf8_lossy(&all)
    );
    let parsed = events(&all);
    assert_eq!(parsed.last().unwrap().event_type, "response.completed");

    let (_conn, _, body) = open_responses(env.gateway, "fail-500", &slow[..1]).await;
    let all = read_to_end(body).await;
    assert!(all.starts_with(b": ping\n\n"));
    let parsed = events(&all);
    assert_eq!(parsed.len(), 1, "{parsed:?}");
    final_responses_error(&parsed);
    assert!(
        data(&parsed[0])["message"]
            .as_str()
            .unwrap()
            .contains("(mock)"),
        "the upstream's own message: {:?}",
        parsed[0]
    );
}

/// Proves requirement 2's admin kill and drain: both end a live Responses stream with one
/// final error event in its own shape, numbered after the last event relayed.
#[tokio::test]
async fn an_admin_kill_and_the_drain_end_a_responses_stream_with_one_error_event() {
    let env = start_with(MockSettings::default(), |config| {
        config.shutdown.drain_timeout = Duration::from_millis(300);
    })
    .await;
    let long = [("x-mock-chunks", "1000"), ("x-mock-chunk-delay-ms", "100")];
    let (_conn, headers, mut body) = open_responses(env.gateway, "mock-1", &long).await;
    let seen = read_until(&mut body, |b| output_text(&events(b)).len() > 3).await;
    let stream_id = header(&headers, "x-tidegate-stream-id");
    let kill = Request::builder()
        .method(Method::DELETE)
        .uri(format!("http://{}/admin/streams/{stream_id}", env.admin))
        .header("host", env.admin.to_string())
        .body(Full::new(Bytes::new()))
        .unwrap();
    let (status, _, _) = fetch(kill).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let rest = read_to_end(body).await;
    let all = events(&[seen, rest.to_vec()].concat());
    assert_eq!(final_responses_error(&all), "terminated_by_admin");

    let (_conn, _, mut body) = open_responses(env.gateway, "mock-1", &long).await;
    let seen = read_until(&mut body, |b| output_text(&events(b)).len() > 3).await;
    env.shutdown.cancel();
    let rest = read_to_end(body).await;
    let all = events(&[seen, rest.to_vec()].concat());
    assert_eq!(final_responses_error(&all), "server_shutdown");
}

/// Proves requirement 5's cancellation: a client that goes away mid-stream cancels the
/// upstream's Responses stream.
#[tokio::test]
async fn a_client_that_goes_away_cancels_the_upstream_response() {
    let env = start().await;
    let long = [("x-mock-chunks", "1000"), ("x-mock-chunk-delay-ms", "100")];
    let (conn, _, mut body) = open_responses(env.gateway, "mock-1", &long).await;
    read_until(&mut body, |b| output_text(&events(b)).len() > 1).await;
    drop(body);
    drop(conn);
    let s = wait_for_mock(
        env.mock,
        "the upstream stream to be cancelled",
        Duration::from_secs(1),
        |s| s.streams_cancelled == 1,
    )
    .await;
    assert_eq!(s.streams_active, 0);
    assert_eq!(s.streams_completed, 0);
}

/// Proves requirement 5's pass-through: a non-streaming response is the upstream's JSON.
#[tokio::test]
async fn a_non_streaming_response_passes_through() {
    let env = start().await;
    let (status, headers, json) = fetch_json(post(
        env.gateway,
        "/v1/responses",
        &responses_body("mock-1", false),
        &[],
    ))
    .await;
    assert_eq!(status, StatusCode::OK, "{json}");
    assert!(header(&headers, "content-type").starts_with("application/json"));
    assert_eq!(json["object"], "response");
    assert_eq!(json["status"], "completed");
    let text = json["output"][0]["content"][0]["text"].as_str().unwrap();
    assert_eq!(text, expected_content(MockSettings::default().chunks));
    assert_eq!(mock_last_request(env.mock).await["path"], "/v1/responses");

    // Checked like every API request: a body without a model is refused before the upstream.
    let (status, _, json) =
        fetch_json(post(env.gateway, "/v1/responses", r#"{"input":"hi"}"#, &[])).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(json["error"]["param"], "model");
}

/// A request to the gateway with any method, a JSON body if given.
fn request(env: &TestEnv, method: Method, path: &str, body: Option<&str>) -> Request<Full<Bytes>> {
    let mut builder = Request::builder()
        .method(method)
        .uri(format!("http://{}{path}", env.gateway))
        .header("host", env.gateway.to_string());
    if body.is_some() {
        builder = builder.header("content-type", "application/json");
    }
    builder
        .body(Full::new(Bytes::from(body.unwrap_or_default().to_owned())))
        .unwrap()
}

/// Proves requirement 1: retrieval (plain, and as a stream from `starting_after`), cancel,
/// input items and delete reach the upstream with their path and query, and their answers come
/// back as the upstream gave them; a path that cannot hold an id, or a wrong method, is refused
/// here.
#[tokio::test]
async fn the_retrieval_and_control_routes_reach_the_upstream() {
    let env = start().await;
    let create = r#"{"model":"mock-1","input":"Hello","background":true}"#;
    let (status, _, created) = fetch_json(post(env.gateway, "/v1/responses", create, &[])).await;
    assert_eq!(status, StatusCode::OK, "{created}");
    let id = created["id"].as_str().unwrap().to_owned();

    let (status, _, got) = fetch_json(request(
        &env,
        Method::GET,
        &format!("/v1/responses/{id}"),
        None,
    ))
    .await;
    assert_eq!(status, StatusCode::OK, "{got}");
    assert_eq!(got["id"], id.as_str());

    // A background response's events, after the third: a stream like any other.
    let path = format!("/v1/responses/{id}?stream=true&starting_after=3");
    let (status, headers, bytes) = fetch(request(&env, Method::GET, &path, None)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        !header(&headers, "x-tidegate-stream-id").is_empty(),
        "registered as a stream"
    );
    let streamed = events(&bytes);
    assert_eq!(data(&streamed[0])["sequence_number"], 4);
    assert_eq!(streamed.last().unwrap().event_type, "response.completed");
    let last = mock_last_request(env.mock).await;
    assert_eq!(last["path"], format!("/v1/responses/{id}"));
    assert_eq!(last["query"], "stream=true&starting_after=3");

    let path = format!("/v1/responses/{id}/input_items?limit=5&order=asc");
    let (status, _, items) = fetch_json(request(&env, Method::GET, &path, None)).await;
    assert_eq!(status, StatusCode::OK, "{items}");
    assert_eq!(items["object"], "list");
    assert_eq!(
        mock_last_request(env.mock).await["query"],
        "limit=5&order=asc"
    );

    let path = format!("/v1/responses/{id}/cancel");
    let (status, _, cancelled) = fetch_json(request(&env, Method::POST, &path, None)).await;
    assert_eq!(status, StatusCode::OK, "{cancelled}");
    assert_eq!(cancelled["status"], "cancelled");

    let path = format!("/v1/responses/{id}");
    let (status, _, deleted) = fetch_json(request(&env, Method::DELETE, &path, None)).await;
    assert_eq!(status, StatusCode::OK, "{deleted}");
    assert_eq!(deleted["deleted"], true);
    let (status, _, gone) = fetch_json(request(&env, Method::GET, &path, None)).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "the upstream's 404: {gone}");
    assert!(gone["error"]["message"].is_string());

    let metrics = scrape(&env).await;
    assert_eq!(
        value(
            &metrics,
            r#"tidegate_requests_total{route="responses_stored",status="200"}"#
        ),
        Some(5.0),
        "{metrics}"
    );

    // Refused here, never upstream.
    let before = mock_stats(env.mock).await.requests_received;
    let (status, headers, json) = fetch_json(request(
        &env,
        Method::PUT,
        &format!("/v1/responses/{id}"),
        None,
    ))
    .await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{json}");
    assert_eq!(header(&headers, "allow"), "GET, DELETE");
    for bad in ["/v1/responses/a.b", "/v1/responses/..%2fmodels"] {
        let (status, _, json) = fetch_json(request(&env, Method::GET, bad, None)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {json}");
        assert_eq!(json["error"]["param"], "response_id");
    }
    assert_eq!(mock_stats(env.mock).await.requests_received, before);
}

/// Proves requirement 2's resume: with `[resume]` on, a Responses stream's events carry ids and
/// a client that reconnects gets the rest exactly once, its `event:` lines intact.
#[tokio::test]
async fn a_responses_stream_resumes_exactly_once() {
    let env = start_with(MockSettings::default(), |config: &mut Config| {
        config.resume.enabled = true;
    })
    .await;
    let pacing = [("x-mock-chunks", "30"), ("x-mock-chunk-delay-ms", "30")];
    let (conn, headers, mut body) = open_responses(env.gateway, "mock-1", &pacing).await;
    let stream_id = header(&headers, "x-tidegate-stream-id").to_owned();
    let token = header(&headers, "x-tidegate-resume-token").to_owned();
    let seen = read_until(&mut body, |b| output_text(&events(b)).len() > 5).await;
    drop(body);
    drop(conn);
    let before = events(&seen);
    let last_id = before.last().unwrap().last_event_id.clone();
    let path = format!("/v1/streams/{stream_id}?token={token}&last_event_id={last_id}");
    let (status, _, rest) = fetch(get(env.gateway, &path)).await;
    assert_eq!(status, StatusCode::OK);
    let after = events(&rest);
    let all: Vec<Event> = before.into_iter().chain(after).collect();
    assert_eq!(types(&all), normal_types(30));
    for (i, event) in all.iter().enumerate() {
        assert_eq!(event.last_event_id, (i + 1).to_string());
        assert_eq!(data(event)["sequence_number"], i as u64);
    }
    assert_eq!(output_text(&all), expected_content(30));
}

/// Several upstreams: a stored response's routes, and a new response that continues it, go to
/// the upstream the client names in `x-tidegate-upstream` (as the answer that created it named
/// it); a name that is not an upstream's is refused.
#[tokio::test]
async fn a_stored_response_can_be_asked_of_the_upstream_that_made_it() {
    let fleet = start_fleet(2, MockSettings::default(), |_| {}).await;
    let (status, headers, created) = fetch_json(post(
        fleet.gateway,
        "/v1/responses",
        &responses_body("mock-1", false),
        &[],
    ))
    .await;
    assert_eq!(status, StatusCode::OK, "{created}");
    let made_by = header(&headers, "x-tidegate-upstream").to_owned();
    let made_by_index = FLEET_NAMES.iter().position(|n| *n == made_by).unwrap();
    let id = created["id"].as_str().unwrap();
    for _ in 0..4 {
        let mut get = get(fleet.gateway, &format!("/v1/responses/{id}"));
        get.headers_mut()
            .insert("x-tidegate-upstream", made_by.parse().unwrap());
        let (status, headers, json) = fetch_json(get).await;
        assert_eq!(status, StatusCode::OK, "{json}");
        assert_eq!(header(&headers, "x-tidegate-upstream"), made_by);
    }
    // A new response that continues it goes there too.
    let next = format!(r#"{{"model":"mock-1","input":"And?","previous_response_id":"{id}"}}"#);
    for _ in 0..4 {
        let (status, headers, json) = fetch_json(post(
            fleet.gateway,
            "/v1/responses",
            &next,
            &[("x-tidegate-upstream", &made_by)],
        ))
        .await;
        assert_eq!(status, StatusCode::OK, "{json}");
        assert_eq!(header(&headers, "x-tidegate-upstream"), made_by);
    }
    assert_eq!(fleet.stats(made_by_index).requests_received, 9);
    assert_eq!(fleet.stats(1 - made_by_index).requests_received, 0);

    let mut get = get(fleet.gateway, &format!("/v1/responses/{id}"));
    get.headers_mut()
        .insert("x-tidegate-upstream", "nope".parse().unwrap());
    let (status, _, json) = fetch_json(get).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{json}");
    assert_eq!(json["error"]["param"], "x-tidegate-upstream");
}

/// A long answer's closing events each carry the whole text (here about 300 KB): with the
/// default `limits.max_event_bytes` they pass, so a long answer does not fail at its very end.
#[tokio::test]
async fn a_long_answers_closing_events_fit_the_default_event_limit() {
    let env = start().await;
    let chunks = 50_000;
    let (_conn, _, body) = open_responses(
        env.gateway,
        "mock-1",
        &[("x-mock-chunks", "50000"), ("x-mock-chunk-delay-ms", "0")],
    )
    .await;
    let all = tokio::time::timeout(
        Duration::from_secs(60),
        http_body_util::BodyExt::collect(body),
    )
    .await
    .expect("the stream ends in time")
    .expect("stream body")
    .to_bytes();
    let parsed = events(&all);
    let completed = parsed.last().unwrap();
    assert_eq!(
        completed.event_type,
        "response.completed",
        "{:?}",
        &completed.data[..200.min(completed.data.len())]
    );
    assert!(
        completed.data.len() > 256 * 1024,
        "{} bytes",
        completed.data.len()
    );
    assert_eq!(output_text(&parsed), expected_content(chunks));
}

/// With routes, a stored response's routes may go to any upstream (they name no model), but a
/// new response may only be pinned to an upstream that serves its model.
#[tokio::test]
async fn a_pin_outside_the_models_route_is_refused() {
    let fleet = start_fleet(2, MockSettings::default(), |config| {
        config.routes = vec![tidegate::config::RouteConfig {
            models: vec!["mock-1".to_owned()],
            upstreams: vec!["a".to_owned()],
            rename: Default::default(),
        }];
    })
    .await;
    let (status, _, json) = fetch_json(post(
        fleet.gateway,
        "/v1/responses",
        &responses_body("mock-1", false),
        &[("x-tidegate-upstream", "b")],
    ))
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{json}");
    assert_eq!(json["error"]["param"], "x-tidegate-upstream");
    assert_eq!(fleet.stats(1).requests_received, 0);

    let mut get = get(fleet.gateway, "/v1/responses/resp_mock1");
    get.headers_mut()
        .insert("x-tidegate-upstream", "b".parse().unwrap());
    let (status, headers, _) = fetch(get).await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "b never made it: its own 404"
    );
    assert_eq!(header(&headers, "x-tidegate-upstream"), "b");
    assert_eq!(fleet.stats(1).requests_received, 1);
}

/// Proves requirement 2's slow-client cut: a client that stops reading a Responses stream is
/// cut after `streams.client_stall_timeout` (outcome `slow_client`) and its upstream cancelled,
/// as for chat.
#[tokio::test]
async fn a_client_that_stops_reading_a_responses_stream_is_cut() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let env = start_with(MockSettings::default(), |config| {
        config.streams.client_stall_timeout = Duration::from_secs(1);
    })
    .await;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut client = socket.connect(env.gateway).await.unwrap();
    let body = responses_body("mock-1", true);
    let request = format!(
        "POST /v1/responses HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nx-mock-chunks: 100000\r\nx-mock-chunk-delay-ms: 0\r\n\r\n{body}",
        env.gateway,
        body.len()
    );
    client.write_all(request.as_bytes()).await.unwrap();
    let mut head = [0u8; 12];
    tokio::time::timeout(PATIENCE, client.read_exact(&mut head))
        .await
        .expect("the answer's head in time")
        .unwrap();
    assert_eq!(&head, b"HTTP/1.1 200");
    // Now it reads nothing more.
    wait_for(
        "the stream to be cut as a slow client",
        PATIENCE,
        || async {
            let text = scrape(&env).await;
            value(&text, r#"tidegate_streams_total{outcome="slow_client"}"#)
                .is_some_and(|n| n == 1.0)
                .then_some(())
        },
    )
    .await;
    let stats = wait_for_mock(env.mock, "the upstream to be cancelled", PATIENCE, |s| {
        s.streams_active == 0
    })
    .await;
    assert_eq!((stats.streams_cancelled, stats.streams_completed), (1, 0));
    drop(client);
}

/// Requirement 1's other POST routes: `/v1/responses/input_tokens` (the model optional) and
/// `/v1/responses/compact` reach the upstream with their body, as JSON requests, never as
/// streams; the upstream's answer (here the mock's own 404: it serves neither) comes back as
/// it is.
#[tokio::test]
async fn the_input_token_count_and_compaction_routes_reach_the_upstream() {
    let env = start().await;
    for (path, body) in [
        ("/v1/responses/input_tokens", r#"{"input":"Hello"}"#),
        (
            "/v1/responses/input_tokens",
            r#"{"model":"mock-1","input":"Hello"}"#,
        ),
        (
            "/v1/responses/compact",
            r#"{"model":"mock-1","input":"Hello","stream":true}"#,
        ),
    ] {
        let (status, headers, json) = fetch_json(post(env.gateway, path, body, &[])).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}: {json}");
        assert!(
            header(&headers, "x-tidegate-stream-id").is_empty(),
            "not a stream"
        );
        assert!(json["error"]["message"].as_str().unwrap().contains(path));
        let last = mock_last_request(env.mock).await;
        assert_eq!(last["method"], "POST");
        assert_eq!(last["path"], path);
        assert_eq!(last["body"], body, "forwarded byte for byte");
    }
    let (status, _, json) = fetch_json(post(
        env.gateway,
        "/v1/responses/compact",
        r#"{"input":"Hello"}"#,
        &[],
    ))
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{json}");
    assert_eq!(json["error"]["param"], "model");
    let metrics = scrape(&env).await;
    assert_eq!(
        value(
            &metrics,
            r#"tidegate_requests_total{route="responses_input_tokens",status="404"}"#
        ),
        Some(2.0)
    );
}
