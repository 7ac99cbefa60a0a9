//! Cross-origin requests from browsers (`[cors]`), over real sockets: preflights answered
//! before admission control and never upstream, the grant on every answer to an allowed origin
//! (streams and errors alike), nothing for other origins, and nothing at all when CORS is off.

use http::{Request, StatusCode};
use http_body_util::Full;

use crate::common::*;
use tidegate::mock::MockSettings;

const PAGE: &str = "https://chat.example.com";

fn preflight(gateway: std::net::SocketAddr, origin: &str) -> Request<Full<bytes::Bytes>> {
    Request::options(format!("http://{gateway}/v1/chat/completions"))
        .header("host", gateway.to_string())
        .header("origin", origin)
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization, content-type, x-stainless-os, x-stainless-retry-count",
        )
        .body(Full::default())
        .unwrap()
}

/// A non-streaming chat request from a page on `origin`, read whole.
async fn chat_from(
    gateway: std::net::SocketAddr,
    origin: &str,
) -> (StatusCode, http::HeaderMap, bytes::Bytes) {
    fetch(post(
        gateway,
        "/v1/chat/completions",
        &chat_body("mock-1", false),
        &[("origin", origin)],
    ))
    .await
}

async fn with_cors(configure: impl FnOnce(&mut tidegate::config::Config)) -> TestEnv {
    start_with(MockSettings::default(), |c| {
        c.cors.allowed_origins = vec![PAGE.to_owned()];
        configure(c);
    })
    .await
}

#[tokio::test]
async fn a_preflight_is_answered_without_reaching_admission_or_the_upstream() {
    // One request a second, no burst beyond it: a preflight that counted would use it up.
    let env = with_cors(|c| {
        c.limits.per_ip.requests_per_second = 1;
        c.limits.per_ip.burst = 1;
    })
    .await;
    for _ in 0..5 {
        let (status, headers, body) = fetch(preflight(env.gateway, PAGE)).await;
        assert_eq!(status, StatusCode::NO_CONTENT);
        assert!(body.is_empty());
        assert_eq!(header(&headers, "access-control-allow-origin"), PAGE);
        assert_eq!(
            header(&headers, "access-control-allow-methods"),
            "GET, POST, DELETE"
        );
        assert_eq!(
            header(&headers, "access-control-allow-headers"),
            "authorization, content-type, x-stainless-os, x-stainless-retry-count"
        );
        assert_eq!(header(&headers, "access-control-max-age"), "600");
    }
    let stats = mock_stats(env.mock).await;
    assert_eq!(stats.streams_started + stats.requests_started, 0);

    // The stream the preflights were for: admitted (the rate was not spent), readable by the
    // page, and complete.
    let mut conn = Conn::open(env.gateway).await;
    let response = conn
        .send(post(
            env.gateway,
            "/v1/chat/completions",
            &chat_body("mock-1", true),
            &[("origin", PAGE)],
        ))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let headers = response.headers().clone();
    assert_eq!(header(&headers, "access-control-allow-origin"), PAGE);
    let exposed = header(&headers, "access-control-expose-headers");
    for name in [
        "x-request-id",
        "x-tidegate-stream-id",
        "retry-after",
        "x-ratelimit-reset-requests",
    ] {
        assert!(exposed.contains(name), "{name} in {exposed}");
    }
    assert!(header(&headers, "vary").contains("origin"));

    // An error answer is readable too: the page's SDK sees the 429 and its retry-after (the
    // stream above took the second's one request).
    let (status, headers, _) = chat_from(env.gateway, PAGE).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(header(&headers, "access-control-allow-origin"), PAGE);
    assert!(!header(&headers, "retry-after").is_empty());

    let all = read_to_end(response.into_body()).await;
    assert_eq!(sse_data(&all).last().map(String::as_str), Some("[DONE]"));
}

#[tokio::test]
async fn another_origin_gets_no_grant_and_the_browser_blocks_it() {
    let env = with_cors(|_| {}).await;
    let (status, headers, _) = fetch(preflight(env.gateway, "https://evil.example")).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(header(&headers, "access-control-allow-origin"), "");
    assert_eq!(header(&headers, "access-control-allow-methods"), "");

    let (status, headers, _) = chat_from(env.gateway, "https://evil.example").await;
    // Served (a server cannot tell a browser from anything else), but not readable by the page.
    assert_eq!(status, StatusCode::OK);
    assert_eq!(header(&headers, "access-control-allow-origin"), "");
    assert_eq!(header(&headers, "access-control-expose-headers"), "");
    assert!(header(&headers, "vary").contains("origin"));
}

#[tokio::test]
async fn without_cors_nothing_changes() {
    let env = start().await;
    let (status, headers, _) = fetch(preflight(env.gateway, PAGE)).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(header(&headers, "access-control-allow-origin"), "");
    let (status, headers, _) = chat_from(env.gateway, PAGE).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(header(&headers, "access-control-allow-origin"), "");
    assert_eq!(header(&headers, "vary"), "");
}
