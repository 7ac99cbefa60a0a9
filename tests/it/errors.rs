//! Every error a client can see, over real sockets: the status, the OpenAI-shaped body and its
//! stable code; and mid-stream failures as exactly one final `data: {"error":...}` event.

use std::time::Duration;

use crate::cli::{addr_in, Running};
use crate::common::*;
use bytes::Bytes;
use http::StatusCode;
use http_body_util::Full;
use serde_json::Value;
use tidegate::mock::MockSettings;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn assert_openai_error(json: &Value, code: &str) {
    let error = &json["error"];
    assert_eq!(error["code"], code, "{json}");
    assert!(
        error["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{json}"
    );
    assert!(error["type"].is_string(), "{json}");
    assert!(
        error.get("param").is_some(),
        "param is always present: {json}"
    );
}

#[tokio::test]
async fn bad_requests_get_400_with_a_code_and_param() {
    let env = start().await;
    let cases = [
        ("{not json", "invalid_json", Value::Null),
        (
            r#"{"messages":[]}"#,
            "missing_required_parameter",
            "model".into(),
        ),
        (
            r#"{"model":"m"}"#,
            "missing_required_parameter",
            "messages".into(),
        ),
        (
            r#"{"model":"m","messages":{}}"#,
            "invalid_type",
            "messages".into(),
        ),
        (
            r#"{"model":"m","messages":[],"stream":"yes"}"#,
            "invalid_type",
            "stream".into(),
        ),
    ];
    for (body, code, param) in cases {
        let (status, headers, json) =
            fetch_json(post(env.gateway, "/v1/chat/completions", body, &[])).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(headers["content-type"], "application/json");
        assert_openai_error(&json, code);
        assert_eq!(json["error"]["param"], param, "{body}");
    }
    assert_eq!(
        mock_stats(env.mock).await.requests_started,
        0,
        "nothing reached the upstream"
    );
}

#[tokio::test]
async fn wrong_content_type_is_415() {
    let env = start().await;
    let request = http::Request::post(format!("http://{}/v1/chat/completions", env.gateway))
        .header("host", "x")
        .header("content-type", "text/plain")
        .body(Full::new(Bytes::from(chat_body("mock-1", true))))
        .unwrap();
    let (status, _, json) = fetch_json(request).await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_openai_error(&json, "unsupported_media_type");
}

#[tokio::test]
async fn oversized_bodies_are_413_declared_or_not() {
    let env = start_with(MockSettings::default(), |c| c.limits.max_body_bytes = 1024).await;
    let big = format!(
        r#"{{"model":"m","messages":[],"pad":"{}"}}"#,
        "x".repeat(4096)
    );
    let (status, _, json) = fetch_json(post(env.gateway, "/v1/chat/completions", &big, &[])).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_openai_error(&json, "request_too_large");

    // Chunked, with no Content-Length, and far more than the limit: the gateway answers at the
    // limit instead of reading everything.
    let mut stream = TcpStream::connect(env.gateway).await.unwrap();
    stream
        .write_all(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n")
        .await
        .unwrap();
    // 16 KiB, sixteen times the limit, written in one go, then the answer is read.
    let chunk = format!("{:x}\r\n{}\r\n", 2048, "x".repeat(2048));
    let _ = stream.write_all(chunk.repeat(8).as_bytes()).await;
    let mut response = Vec::new();
    let mut buf = [0u8; 4096];
    let _ = tokio::time::timeout(PATIENCE, async {
        while !response.windows(4).any(|w| w == b"\r\n\r\n") {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => response.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    let text = String::from_utf8_lossy(&response);
    assert!(text.starts_with("HTTP/1.1 413"), "got: {text}");
}

#[tokio::test]
async fn unknown_paths_are_404_and_wrong_methods_405() {
    let env = start().await;
    let (status, _, json) = fetch_json(post(env.gateway, "/v1/nope", "{}", &[])).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_openai_error(&json, "unknown_url");

    let (status, headers, json) = fetch_json(get(env.gateway, "/v1/chat/completions")).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(headers["allow"], "POST");
    assert_openai_error(&json, "method_not_allowed");

    let (status, headers, json) = fetch_json(post(env.gateway, "/v1/models", "{}", &[])).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(headers["allow"], "GET");
    assert_openai_error(&json, "method_not_allowed");
}

#[tokio::test]
async fn unreachable_upstream_is_502() {
    // A port that was just free: nothing listens there.
    let closed = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let env = start_with(MockSettings::default(), |c| {
        c.upstream.base_url =
            tidegate::config::UpstreamUrl::parse(&format!("http://{closed}/v1")).unwrap();
    })
    .await;
    for stream in [false, true] {
        let (status, _, json) = fetch_json(post(
            env.gateway,
            "/v1/chat/completions",
            &chat_body("m", stream),
            &[],
        ))
        .await;
        assert_eq!(status, StatusCode::BAD_GATEWAY);
        assert_openai_error(&json, "upstream_unreachable");
    }
}

#[tokio::test]
async fn no_upstream_headers_within_first_byte_timeout_is_504() {
    let env = start_with(MockSettings::default(), |c| {
        c.limits.first_byte_timeout = Duration::from_millis(300);
    })
    .await;
    let (status, _, json) = fetch_json(post(
        env.gateway,
        "/v1/chat/completions",
        &chat_body("hang", true),
        &[],
    ))
    .await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    assert_openai_error(&json, "upstream_timeout");
    // A first-byte timeout is retried (retry.max_attempts = 3), and each abandoned upstream
    // request is cancelled.
    wait_for_mock(
        env.mock,
        "the hung upstream requests to be cancelled",
        PATIENCE,
        |s| s.requests_cancelled == 3 && s.requests_active == 0,
    )
    .await;
}

#[tokio::test]
async fn upstream_error_statuses_pass_through_with_their_body_and_retry_headers() {
    let env = start().await;
    let (status, headers, json) = fetch_json(post(
        env.gateway,
        "/v1/chat/completions",
        &chat_body("fail-429", true),
        &[],
    ))
    .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(headers["retry-after"], "1");
    assert_eq!(headers["retry-after-ms"], "1000");
    assert!(headers.get("x-request-id").is_some());
    assert_eq!(json["error"]["code"], "rate_limit_exceeded");
    assert_eq!(json["error"]["message"], "Rate limit reached (mock)");

    let (status, _, json) = fetch_json(post(
        env.gateway,
        "/v1/chat/completions",
        &chat_body("fail-500", false),
        &[],
    ))
    .await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(json["error"]["message"], "The server had an error (mock)");
}

/// The gateway's own upstream key in the credential tests: the mock's `fail-401` and
/// `fail-400-echo-key` quote it back.
const UPSTREAM_KEY: &str = "sk-gateway-0123456789abcdef";

#[tokio::test]
async fn the_gateways_upstream_key_never_reaches_a_client() {
    let env = start_with(MockSettings::default(), |config| {
        config.upstream.api_key = Some(tidegate::config::Secret::new(UPSTREAM_KEY));
        config.streams.heartbeat_interval = Duration::from_millis(100);
    })
    .await;
    // A 401 or 403 concerns the gateway's credentials: 502 upstream_auth_failed, streaming or
    // not, and nothing of the upstream's body.
    for stream in [false, true] {
        let (status, headers, body) = fetch(post(
            env.gateway,
            "/v1/chat/completions",
            &chat_body("fail-401", stream),
            &[],
        ))
        .await;
        assert_eq!(status, StatusCode::BAD_GATEWAY, "stream: {stream}");
        assert!(headers.get("x-request-id").is_some());
        let json: Value = serde_json::from_slice(&body).unwrap();
        assert_openai_error(&json, "upstream_auth_failed");
        let text = String::from_utf8_lossy(&body);
        assert!(
            !text.contains(UPSTREAM_KEY) && !text.contains("Incorrect API key"),
            "{text}"
        );
    }
    // After an early answer (the upstream answers later than a heartbeat): the final event.
    let body = stream_body(&env, "fail-401", &[("x-mock-headers-delay-ms", "400")]).await;
    assert_eq!(final_error(&body)["code"], "upstream_auth_failed");
    assert!(!String::from_utf8_lossy(&body).contains(UPSTREAM_KEY));

    // Any other error body is relayed with the key scrubbed, its status kept.
    let (status, _, json) = fetch_json(post(
        env.gateway,
        "/v1/chat/completions",
        &chat_body("fail-400-echo-key", false),
        &[],
    ))
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let message = json["error"]["message"].as_str().unwrap();
    assert!(message.contains("carried the key <redacted>."), "{message}");
    assert!(!message.contains(UPSTREAM_KEY));
    let body = stream_body(
        &env,
        "fail-400-echo-key",
        &[("x-mock-headers-delay-ms", "400")],
    )
    .await;
    let text = String::from_utf8_lossy(&body);
    assert!(text.contains("carried the key <redacted>."), "{text}");
    assert!(!text.contains(UPSTREAM_KEY), "{text}");
}

/// Streams `model` (with extra mock headers) and returns the raw SSE body.
async fn stream_body(env: &TestEnv, model: &str, extra: &[(&str, &str)]) -> Vec<u8> {
    let (_conn, body) = open_stream(env.gateway, model, extra).await;
    read_to_end(body).await.to_vec()
}

#[tokio::test]
async fn upstream_reset_mid_stream_becomes_a_final_error_event() {
    let env = start().await;
    let body = stream_body(&env, "fail-midstream", &[("x-mock-chunk-delay-ms", "0")]).await;
    let events = sse_data(&body);
    assert!(
        events.len() >= 2,
        "the chunks before the failure were relayed: {events:?}"
    );
    let error = final_error(&body);
    assert_eq!(error["code"], "upstream_reset");
    assert_eq!(
        error["message"],
        "The upstream connection was lost in the middle of the response."
    );
}

/// The client is told a reset in our words; hyper's words ("unexpected EOF during chunk size
/// line" and the like) go to the log line only. The real binary, so its log can be read.
#[tokio::test]
async fn hyper_words_reach_the_log_but_never_the_client() {
    let mut demo = Running::spawn(&["--listen", "127.0.0.1:0", "--log-format", "json"]);
    let gateway = addr_in(&demo.stdout_line("curl -N").await);
    let (_conn, body) = open_stream(
        gateway,
        "fail-midstream",
        &[
            ("x-mock-chunk-delay-ms", "0"),
            ("x-request-id", "reset-words"),
        ],
    )
    .await;
    let body = read_to_end(body).await;
    let error = final_error(&body);
    assert_eq!(error["code"], "upstream_reset");

    let line = demo
        .stderr_line(|l| l.contains("stream failed") && l.contains("reset-words"))
        .await;
    let log: Value = serde_json::from_str(&line).expect("a JSON log line");
    let logged = log["fields"]["message"].as_str().unwrap_or_default();
    let ours = "The upstream connection was lost in the middle of the response";
    let detail = logged
        .split_once(&format!("{ours}: "))
        .map(|(_, detail)| detail)
        .unwrap_or_else(|| panic!("the log line carries the detail: {logged}"));
    assert!(!detail.trim().is_empty(), "{logged}");
    let client_text = String::from_utf8_lossy(&body);
    assert!(
        !client_text.contains(detail),
        "the client saw {detail:?}: {client_text}"
    );
    assert_eq!(error["message"], format!("{ours}."));
    demo.signal(libc::SIGTERM);
    assert_eq!(demo.exit_code().await, 0);
}

#[tokio::test]
async fn upstream_idle_timeout_mid_stream_becomes_a_final_error_event() {
    let env = start_with(MockSettings::default(), |c| {
        c.limits.upstream_idle_timeout = Duration::from_millis(300);
    })
    .await;
    let body = stream_body(&env, "mock-1", &[("x-mock-chunk-delay-ms", "30000")]).await;
    assert_eq!(final_error(&body)["code"], "upstream_idle_timeout");
    wait_for_mock(
        env.mock,
        "the idle upstream to be cancelled",
        PATIENCE,
        |s| s.streams_active == 0 && s.streams_cancelled == 1,
    )
    .await;
}

#[tokio::test]
async fn oversized_upstream_event_becomes_a_final_error_event() {
    let env = start_with(MockSettings::default(), |c| {
        c.limits.max_event_bytes = 64 * 1024
    })
    .await;
    let body = stream_body(&env, "fail-oversized", &[("x-mock-chunk-delay-ms", "0")]).await;
    assert!(
        body.len() < 64 * 1024,
        "the oversized event was not relayed"
    );
    assert_eq!(final_error(&body)["code"], "upstream_event_too_large");
}

#[tokio::test]
async fn malformed_upstream_event_becomes_a_final_error_event() {
    let env = start().await;
    let body = stream_body(&env, "fail-malformed", &[("x-mock-chunk-delay-ms", "0")]).await;
    assert!(!String::from_utf8_lossy(&body).contains("this is not json"));
    assert_eq!(final_error(&body)["code"], "upstream_malformed_event");
}

#[tokio::test]
async fn stream_ending_without_done_becomes_a_final_error_event() {
    let env = start().await;
    let body = stream_body(&env, "fail-no-done", &[("x-mock-chunk-delay-ms", "0")]).await;
    let events = sse_data(&body);
    assert!(events
        .iter()
        .any(|e| e.contains("\"finish_reason\":\"stop\"")));
    assert_eq!(final_error(&body)["code"], "upstream_incomplete_stream");
}

#[tokio::test]
async fn stream_longer_than_max_duration_is_cut_with_an_error_event() {
    let env = start_with(MockSettings::default(), |c| {
        c.limits.max_stream_duration = Duration::from_millis(500);
    })
    .await;
    // Events keep flowing every 50 ms, so only the duration cap can end it.
    let body = stream_body(
        &env,
        "mock-1",
        &[("x-mock-chunks", "1000"), ("x-mock-chunk-delay-ms", "50")],
    )
    .await;
    assert!(sse_data(&body).len() > 1);
    assert_eq!(final_error(&body)["code"], "stream_duration_exceeded");
}

/// Writes a request whose head carries `header_bytes` of one header and returns the status line.
async fn status_line_for_head_of(gateway: std::net::SocketAddr, header_bytes: usize) -> String {
    let body = r#"{"model":"m","messages":[]}"#;
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nx-padding: {}\r\n\r\n",
        body.len(),
        "p".repeat(header_bytes)
    );
    let mut stream = TcpStream::connect(gateway).await.unwrap();
    // Head and body in two writes, as many clients send them. An oversized head may be answered
    // and the connection closed before the writes finish, so their errors are not the test's.
    let _ = stream.write_all(head.as_bytes()).await;
    let _ = stream.write_all(body.as_bytes()).await;
    let mut response = Vec::new();
    let mut buf = [0u8; 1024];
    let _ = tokio::time::timeout(PATIENCE, async {
        while !response.windows(2).any(|w| w == b"\r\n") {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => response.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    let text = String::from_utf8_lossy(&response);
    text.lines().next().unwrap_or_default().to_string()
}

#[tokio::test]
async fn request_heads_over_max_header_bytes_get_431() {
    let env = start().await;
    // The default cap is 8 KiB: a 6 KiB header passes, a 9 KiB one does not.
    let fits = status_line_for_head_of(env.gateway, 6 * 1024).await;
    assert!(fits.starts_with("HTTP/1.1 200"), "{fits}");
    let too_big = status_line_for_head_of(env.gateway, 9 * 1024).await;
    assert!(too_big.starts_with("HTTP/1.1 431"), "{too_big}");

    let env = start_with(MockSettings::default(), |c| {
        c.limits.max_header_bytes = 32 * 1024;
    })
    .await;
    let raised = status_line_for_head_of(env.gateway, 20 * 1024).await;
    assert!(raised.starts_with("HTTP/1.1 200"), "{raised}");
}

#[tokio::test]
async fn a_client_that_never_sends_its_request_is_disconnected() {
    let env = start_with(MockSettings::default(), |c| {
        c.limits.header_read_timeout = Duration::from_millis(300);
    })
    .await;
    // Nothing at all, and a single byte that could start either protocol: both are cut.
    for prefix in [&b""[..], b"P"] {
        let mut stream = TcpStream::connect(env.gateway).await.unwrap();
        stream.write_all(prefix).await.unwrap();
        let mut buf = [0u8; 256];
        let read = tokio::time::timeout(PATIENCE, async {
            loop {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await;
        assert!(
            read.is_ok(),
            "the connection was closed (prefix {prefix:?})"
        );
    }
}

#[tokio::test]
async fn a_body_that_never_arrives_is_408() {
    let env = start_with(MockSettings::default(), |c| {
        c.limits.body_read_timeout = Duration::from_millis(300);
    })
    .await;
    let mut stream = TcpStream::connect(env.gateway).await.unwrap();
    stream
        .write_all(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"model\"")
        .await
        .unwrap();
    let mut response = Vec::new();
    let _ = tokio::time::timeout(PATIENCE, stream.read_to_end(&mut response)).await;
    let text = String::from_utf8_lossy(&response);
    assert!(text.starts_with("HTTP/1.1 408"), "got: {text}");
    assert!(text.contains("request_body_timeout"));
}

/// Sends `request` on a new connection; returns everything the gateway wrote before closing it
/// (panics if it keeps the connection open).
async fn answer_and_close(gateway: std::net::SocketAddr, request: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut socket = tokio::net::TcpStream::connect(gateway).await.unwrap();
    socket.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(PATIENCE, socket.read_to_end(&mut answer))
        .await
        .unwrap_or_else(|_| panic!("the connection stays open after: {request:?}"))
        .unwrap();
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn ambiguous_body_framing_is_400_and_the_connection_is_closed() {
    let env = start().await;
    let head =
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n";
    for (framing, body) in [
        (
            "content-length: 5\r\ntransfer-encoding: chunked\r\n",
            "0\r\n\r\n",
        ),
        // (Two identical Content-Length lines hyper folds into one before we see them: every
        // parser agrees on that length, which RFC 9112 allows; they are let through.)
        ("content-length: 2, 2\r\n", "{}"),
        (
            "transfer-encoding: gzip, chunked\r\n",
            "2\r\n{}\r\n0\r\n\r\n",
        ),
        (
            "transfer-encoding: chunked\r\ntransfer-encoding: chunked\r\n",
            "2\r\n{}\r\n0\r\n\r\n",
        ),
        ("transfer-encoding: gzip\r\n", "{}"),
        ("content-length: 2\r\ncontent-length: 3\r\n", "{}"),
    ] {
        let answer = answer_and_close(env.gateway, &format!("{head}{framing}\r\n{body}")).await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{framing:?}: {answer}");
    }
    // Where hyper lets the request through, the refusal is ours, OpenAI-shaped.
    let answer = answer_and_close(
        env.gateway,
        &format!("{head}transfer-encoding: gzip, chunked\r\n\r\n2\r\n{{}}\r\n0\r\n\r\n"),
    )
    .await;
    assert!(answer.contains("ambiguous_request_framing"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("connection: close"),
        "{answer}"
    );
    // The upstream was never asked.
    assert_eq!(mock_stats(env.mock).await.requests_received, 0);
}
