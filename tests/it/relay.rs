//! The relay over real sockets: streaming and non-streaming routes, headers, request ids, the
//! key and body that reach the upstream, HTTP/2.

use crate::common::*;
use http::StatusCode;
use serde_json::Value;
use tidegate::config::Secret;
use tidegate::mock::MockSettings;

fn chunks(bytes: &[u8]) -> Vec<Value> {
    let data = sse_data(bytes);
    assert_eq!(
        data.last().map(String::as_str),
        Some("[DONE]"),
        "stream ends with [DONE]"
    );
    data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).expect("chunk is JSON"))
        .collect()
}

#[tokio::test]
async fn streams_a_chat_completion_with_sse_headers() {
    let env = start().await;
    let mut conn = Conn::open(env.gateway).await;
    let response = conn
        .send(post(
            env.gateway,
            "/v1/chat/completions",
            &chat_body("mock-1", true),
            &[
                ("x-mock-chunks", "5"),
                ("x-mock-chunk-delay-ms", "1"),
                ("accept-encoding", "gzip, br"),
            ],
        ))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let h = response.headers().clone();
    assert_eq!(h["content-type"], "text/event-stream; charset=utf-8");
    assert_eq!(h["cache-control"], "no-cache");
    assert_eq!(h["x-accel-buffering"], "no");
    assert!(h.get("content-length").is_none());
    assert!(
        h.get("content-encoding").is_none(),
        "streams are never compressed"
    );
    let id = h["x-request-id"].to_str().unwrap();
    assert!(id.starts_with("tg-"), "a generated request id: {id}");
    assert!(h["x-upstream-request-id"]
        .to_str()
        .unwrap()
        .starts_with("req_mock_"));
    assert_eq!(h["openai-version"], "2020-10-01");
    assert!(h.get("openai-processing-ms").is_some());
    assert_eq!(h["x-ratelimit-limit-requests"], "10000");

    let body = read_to_end(response.into_body()).await;
    let chunks = chunks(&body);
    assert_eq!(chunks.len(), 1 + 5 + 1, "role, 5 contents, finish");
    assert_eq!(chunks[0]["object"], "chat.completion.chunk");
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    for c in &chunks[1..6] {
        assert!(c["choices"][0]["delta"]["content"].is_string());
    }
    assert_eq!(chunks[6]["choices"][0]["finish_reason"], "stop");
}

#[tokio::test]
async fn usage_chunk_comes_before_done_when_asked_for() {
    let env = start().await;
    let body = r#"{"model":"mock-1","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"Hi"}]}"#;
    let (status, _, bytes) = fetch(post(
        env.gateway,
        "/v1/chat/completions",
        body,
        &[("x-mock-chunks", "3"), ("x-mock-chunk-delay-ms", "0")],
    ))
    .await;
    assert_eq!(status, StatusCode::OK);
    let chunks = chunks(&bytes);
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"], serde_json::json!([]));
    assert_eq!(last["usage"]["completion_tokens"], 3);
    assert!(chunks[..chunks.len() - 1]
        .iter()
        .all(|c| c["usage"].is_null()));
}

#[tokio::test]
async fn each_event_reaches_the_client_while_the_upstream_still_waits() {
    // The mock sends the first event, then waits 60 s: if the gateway buffered or coalesced,
    // the client would see nothing until then.
    let env = start().await;
    let (_conn, mut body) = open_stream(
        env.gateway,
        "mock-1",
        &[("x-mock-chunks", "3"), ("x-mock-chunk-delay-ms", "60000")],
    )
    .await;
    let seen = read_until(&mut body, |b| b.ends_with(b"\n\n")).await;
    let data = sse_data(&seen);
    assert_eq!(data.len(), 1);
    let first: Value = serde_json::from_str(&data[0]).unwrap();
    assert_eq!(first["choices"][0]["delta"]["role"], "assistant");
}

#[tokio::test]
async fn legacy_completions_stream() {
    let env = start().await;
    let (status, headers, bytes) = fetch(post(
        env.gateway,
        "/v1/completions",
        r#"{"model":"mock-1","prompt":"Say hi","stream":true}"#,
        &[("x-mock-chunks", "2"), ("x-mock-chunk-delay-ms", "0")],
    ))
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["content-type"], "text/event-stream; charset=utf-8");
    let chunks = chunks(&bytes);
    assert!(chunks.iter().all(|c| c["object"] == "text_completion"));
    assert_eq!(
        chunks.last().unwrap()["choices"][0]["finish_reason"],
        "stop"
    );
}

#[tokio::test]
async fn non_streaming_routes_pass_the_upstream_answer_through() {
    let env = start().await;
    let (status, headers, json) = fetch_json(post(
        env.gateway,
        "/v1/chat/completions",
        &chat_body("mock-1", false),
        &[("x-mock-chunks", "4")],
    ))
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/json"));
    assert!(headers.get("x-request-id").is_some());
    assert_eq!(json["object"], "chat.completion");
    assert_eq!(json["choices"][0]["message"]["role"], "assistant");

    let (status, _, json) = fetch_json(post(
        env.gateway,
        "/v1/completions",
        r#"{"model":"mock-1","prompt":"x"}"#,
        &[],
    ))
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(json["object"], "text_completion");

    let (status, _, json) = fetch_json(post(
        env.gateway,
        "/v1/embeddings",
        r#"{"model":"mock-embed","input":"hello"}"#,
        &[],
    ))
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(json["object"], "list");
    assert!(json["data"][0]["embedding"].is_array());

    let (status, _, json) = fetch_json(get(env.gateway, "/v1/models")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(json["object"], "list");
    assert!(json["data"]
        .as_array()
        .unwrap()
        .iter()
        .any(|m| m["id"] == "mock-1"));
}

#[tokio::test]
async fn the_upstream_gets_our_key_the_exact_body_and_the_request_id() {
    let env = start_with(MockSettings::default(), |c| {
        c.upstream.api_key = Some(Secret::new("sk-gateway-key".to_owned()));
    })
    .await;
    // Odd spacing, key order, escapes and unicode: re-serializing would change these bytes.
    let body = "{ \"messages\" : [ {\"role\":\"user\",\"content\":\"caf\\u00e9 \u{1F30A}\"} ],\n  \"model\":\"mock-1\", \"stream\": false, \"temperature\": 1.50 }";
    let (status, headers, _) = fetch(post(
        env.gateway,
        "/v1/chat/completions?api-version=2024-01-01",
        body,
        &[
            ("authorization", "Bearer sk-client-key-must-not-leak"),
            ("x-request-id", "client-req-42"),
            ("cookie", "session=secret"),
        ],
    ))
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        headers["x-request-id"], "client-req-42",
        "the client's id is kept"
    );

    let seen = mock_last_request(env.mock).await;
    assert_eq!(seen["authorization"], "Bearer sk-gateway-key");
    assert_eq!(seen["body"], body, "body forwarded byte for byte");
    assert_eq!(seen["path"], "/v1/chat/completions");
    assert_eq!(seen["query"], "api-version=2024-01-01");
    assert_eq!(seen["headers"]["x-request-id"], "client-req-42");
    assert!(seen["headers"].get("cookie").is_none());
    assert!(seen["headers"].get("accept-encoding").is_none());
}

#[tokio::test]
async fn without_a_configured_key_no_authorization_goes_upstream() {
    let env = start().await;
    let (status, _, _) = fetch(post(
        env.gateway,
        "/v1/chat/completions",
        &chat_body("mock-1", false),
        &[("authorization", "Bearer sk-client-key-must-not-leak")],
    ))
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(mock_last_request(env.mock).await["authorization"].is_null());
}

#[tokio::test]
async fn a_malformed_client_request_id_is_replaced() {
    let env = start().await;
    let (_, headers, _) = fetch(post(
        env.gateway,
        "/v1/chat/completions",
        &chat_body("mock-1", false),
        &[("x-request-id", "bad id with spaces")],
    ))
    .await;
    let id = headers["x-request-id"].to_str().unwrap();
    assert!(id.starts_with("tg-"));
    assert_eq!(
        mock_last_request(env.mock).await["headers"]["x-request-id"],
        id
    );
}

#[tokio::test]
async fn streams_over_http2() {
    let env = start().await;
    let mut conn = H2Conn::open(env.gateway).await;
    let response = conn
        .send(post(
            env.gateway,
            "/v1/chat/completions",
            &chat_body("mock-1", true),
            &[("x-mock-chunks", "3"), ("x-mock-chunk-delay-ms", "0")],
        ))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.version(), http::Version::HTTP_2);
    let body = read_to_end(response.into_body()).await;
    assert_eq!(chunks(&body).len(), 5);
}

#[tokio::test]
async fn health_endpoints_answer_on_both_listeners() {
    let env = start().await;
    for addr in [env.gateway, env.admin] {
        for path in ["/healthz", "/readyz"] {
            let (status, headers, json) = fetch_json(get(addr, path)).await;
            assert_eq!(status, StatusCode::OK, "{addr}{path}");
            assert_eq!(json["status"], "ok");
            assert!(headers.get("x-request-id").is_some());
        }
    }
    let (status, _, json) = fetch_json(get(env.admin, "/v1/models")).await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "the API is not on the admin listener"
    );
    assert_eq!(json["error"]["code"], "unknown_url");
}

#[tokio::test]
async fn the_mocks_send_time_comments_pass_through_for_latency_measurement() {
    // Load generators ask the mock for `: sent_us=` comments and read them at the client end.
    let env = start().await;
    let (_conn, body) = open_stream(
        env.gateway,
        "mock-1",
        &[("x-mock-chunks", "3"), ("x-mock-timestamps", "1")],
    )
    .await;
    let all = read_to_end(body).await;
    let text = String::from_utf8_lossy(&all);
    let stamps = text.lines().filter(|l| l.starts_with(": sent_us=")).count();
    assert_eq!(stamps, 1 + 3 + 1, "one per JSON event: {text}");
    assert_eq!(sse_data(&all).len(), 1 + 3 + 1 + 1);
}
