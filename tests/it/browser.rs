//! In a real browser (issue 15, requirement 4): Debian's chromium, driven by playwright-core
//! from `tests/browser/run.mjs`, against the real gateway and mock on `127.0.0.1:0`. The demo
//! page streams a completion; a page on another origin streams through `fetch()` with CORS (and
//! one on an origin not allowed is blocked); an `EventSource` resumes a cut stream; the
//! assembled text is the upstream's, exactly once.
//!
//! The other origins are a second listener here, `http://127.0.0.1:<port>` (allowed) and
//! `http://localhost:<port>` (the same server under another name: another origin, not allowed),
//! serving an empty page for the script to run in.
//!
//! Without the browser: the demo page's routes over real sockets, on and off.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tidegate::config::Config;
use tidegate::mock::{expected_content, MockSettings};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::common::*;

/// Content tokens per answer, and the mock's pace: slow enough (1.5 s an answer) that a stream
/// is cut mid-way after a few events, quick enough for CI.
const TOKENS: u32 = 30;
const DELAY_MS: u64 = 50;
/// Events a stream is cut after.
const CUT_AFTER: usize = 4;
/// How long one run of the script may take, chromium's start included.
const SCRIPT_DEADLINE: Duration = Duration::from_secs(120);
/// Most connections the other-origin page server answers: a few per test.
const MAX_PAGE_CONNECTIONS: usize = 64;

/// The gateway with the demo page on, CORS for `other_origin`, and the slow mock; `resume`
/// turns resumable streams on.
async fn start_gateway(other_origin: &str, resume: bool) -> TestEnv {
    let settings = MockSettings {
        chunks: TOKENS,
        chunk_delay: Duration::from_millis(DELAY_MS),
        ..MockSettings::default()
    };
    start_with(settings, |config| {
        config.demo.page = true;
        config.cors.allowed_origins = vec![other_origin.to_owned()];
        if resume {
            enable_resume(config);
        }
    })
    .await
}

/// `[resume] enabled = true`: resumable streams, as the demo runs them.
fn enable_resume(config: &mut Config) {
    config.resume.enabled = true;
}

/// Serves an empty HTML page on `127.0.0.1:0`, for pages on other origins; returns its port.
async fn serve_other_origin() -> (u16, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        for _ in 0..MAX_PAGE_CONNECTIONS {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(
                hyper::server::conn::http1::Builder::new().serve_connection(
                    TokioIo::new(stream),
                    hyper::service::service_fn(|request: Request<hyper::body::Incoming>| async move {
                        let (status, body) = if request.uri().path() == "/" {
                            // An empty icon, so the browser asks for no /favicon.ico.
                            (StatusCode::OK, "<!doctype html><title>another origin</title><link rel=\"icon\" href=\"data:,\">")
                        } else {
                            (StatusCode::NOT_FOUND, "")
                        };
                        Response::builder()
                            .status(status)
                            .header("content-type", "text/html; charset=utf-8")
                            .body(Full::new(Bytes::from_static(body.as_bytes())))
                    }),
                ),
            );
        }
    });
    (port, task)
}

/// Runs `tests/browser/run.mjs scenario` against `gateway` and returns its JSON.
async fn run_browser(scenario: &str, gateway: SocketAddr, page_port: u16) -> Value {
    run_browser_with(scenario, gateway, page_port, "chat").await
}

/// [`run_browser`], the demo page set to `api` (`chat` or `responses`).
async fn run_browser_with(scenario: &str, gateway: SocketAddr, page_port: u16, api: &str) -> Value {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    assert!(
        dir.join("node_modules/playwright-core").is_dir(),
        "playwright-core is not installed: run `npm ci` in {}",
        dir.display()
    );
    let output = tokio::time::timeout(
        SCRIPT_DEADLINE,
        tokio::process::Command::new("node")
            .arg(dir.join("run.mjs"))
            .arg(scenario)
            .current_dir(&dir)
            .env("TIDEGATE_URL", format!("http://{gateway}"))
            .env("OTHER_ORIGIN", format!("http://127.0.0.1:{page_port}"))
            .env("REFUSED_ORIGIN", format!("http://localhost:{page_port}"))
            .env("TOKENS", TOKENS.to_string())
            .env("DELAY_MS", DELAY_MS.to_string())
            .env("CUT_AFTER", CUT_AFTER.to_string())
            .env("API", api)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the browser script finished in time")
    .expect("node runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{scenario}: {}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        output.status
    );
    let result: Value = stdout
        .lines()
        .last()
        .and_then(|line| serde_json::from_str(line).ok())
        .unwrap_or_else(|| panic!("{scenario}: no JSON on stdout:\n{stdout}\nstderr:\n{stderr}"));
    assert!(result["error"].is_null(), "{scenario}: {result:#}");
    result
}

fn text<'a>(result: &'a Value, key: &str) -> &'a str {
    result[key]
        .as_str()
        .unwrap_or_else(|| panic!("{key} in {result:#}"))
}

/// The event ids a script saw, as numbers.
fn ids(seen: &Value) -> Vec<u64> {
    seen["ids"]
        .as_array()
        .unwrap_or_else(|| panic!("ids in {seen:#}"))
        .iter()
        .map(|id| {
            id.as_str()
                .and_then(|id| id.parse().ok())
                .unwrap_or_else(|| panic!("a numeric event id, not {id}"))
        })
        .collect()
}

#[tokio::test]
#[ignore = "needs Debian chromium and playwright-core (npm); .ci/run installs them"]
async fn the_demo_page_streams_a_completion_in_chromium() {
    let (page_port, _pages) = serve_other_origin().await;
    let env = start_gateway(&format!("http://127.0.0.1:{page_port}"), false).await;
    let result = run_browser("demo-page", env.gateway, page_port).await;

    assert_eq!(result["http_status"], 200, "{result:#}");
    assert_eq!(
        text(&result, "content_type"),
        "text/html; charset=utf-8",
        "{result:#}"
    );
    assert_eq!(text(&result, "state"), "done", "{result:#}");
    assert_eq!(
        text(&result, "text"),
        expected_content(TOKENS),
        "{result:#}"
    );
    assert_eq!(result["tokens"], TOKENS, "{result:#}");
    assert!(text(&result, "stream_id").starts_with("st_"), "{result:#}");
    assert!(text(&result, "ttft").ends_with(" ms"), "{result:#}");
    let rate: f64 = text(&result, "rate").parse().expect("tokens/s is a number");
    assert!(rate > 0.0, "{result:#}");
    // No CSP violation, no script error, no failed request.
    assert_eq!(result["problems"], serde_json::json!([]), "{result:#}");
}

#[tokio::test]
#[ignore = "needs Debian chromium and playwright-core (npm); .ci/run installs them"]
async fn a_page_on_another_origin_streams_through_fetch_with_cors() {
    let (page_port, _pages) = serve_other_origin().await;
    let env = start_gateway(&format!("http://127.0.0.1:{page_port}"), false).await;
    let result = run_browser("cross-origin", env.gateway, page_port).await;

    assert_eq!(result["status"], 200, "{result:#}");
    // An exposed header: the page's script can read it.
    assert!(text(&result, "stream_id").starts_with("st_"), "{result:#}");
    assert!(text(&result, "request_id").starts_with("tg-"), "{result:#}");
    assert_eq!(result["done"], true, "{result:#}");
    assert_eq!(
        text(&result, "text"),
        expected_content(TOKENS),
        "{result:#}"
    );
    assert_eq!(result["problems"], serde_json::json!([]), "{result:#}");
    // http://localhost:<port> is another origin, not allowed: the browser refuses the answer.
    let refused = &result["refused"];
    assert!(
        refused["rejected"]
            .as_str()
            .is_some_and(|e| e.starts_with("TypeError")),
        "{result:#}"
    );
}

#[tokio::test]
#[ignore = "needs Debian chromium and playwright-core (npm); .ci/run installs them"]
async fn an_event_source_resumes_a_cut_stream_with_the_text_exactly_once() {
    let (page_port, _pages) = serve_other_origin().await;
    let env = start_gateway(&format!("http://127.0.0.1:{page_port}"), true).await;
    let result = run_browser("event-source-resume", env.gateway, page_port).await;

    let before = &result["before"];
    let after = &result["after"];
    assert_eq!(before["cut"], true, "{result:#}");
    assert!(
        before["resume_token"]
            .as_str()
            .is_some_and(|t| !t.is_empty()),
        "the resume token is readable from another origin: {result:#}"
    );
    let before_ids = ids(before);
    assert_eq!(
        before_ids,
        (1..=CUT_AFTER as u64).collect::<Vec<_>>(),
        "{result:#}"
    );
    assert_eq!(after["done"], true, "{result:#}");
    // Every event after the cut once, in order, [DONE] included, nothing before it again.
    let after_ids = ids(after);
    let expected_after: Vec<u64> = (CUT_AFTER as u64 + 1..).take(after_ids.len()).collect();
    assert_eq!(after_ids, expected_after, "{result:#}");
    assert_eq!(
        text(&result, "text"),
        expected_content(TOKENS),
        "{result:#}"
    );
    assert_eq!(result["problems"], serde_json::json!([]), "{result:#}");
}

#[tokio::test]
#[ignore = "needs Debian chromium and playwright-core (npm); .ci/run installs them"]
async fn the_demo_page_resumes_by_itself_after_the_connection_is_cut() {
    let (page_port, _pages) = serve_other_origin().await;
    let env = start_gateway(&format!("http://127.0.0.1:{page_port}"), true).await;
    let result = run_browser("demo-page-resume", env.gateway, page_port).await;
    assert_resumed_once_whole(&result);
}

/// The demo page's answer after one cut: done, the whole text and every token, one note
/// "Resumed after event n" with n past the CUT_AFTER tokens shown at the cut (the events
/// before the first token had arrived too: the role chunk, or a response's lifecycle events),
/// and nothing wrong in the page.
fn assert_resumed_once_whole(result: &Value) {
    assert_eq!(result["cut"], true, "{result:#}");
    assert_eq!(text(result, "state"), "done", "{result:#}");
    assert_eq!(text(result, "text"), expected_content(TOKENS), "{result:#}");
    assert_eq!(result["tokens"], TOKENS, "{result:#}");
    let notes = result["notes"].as_array().expect("notes");
    assert_eq!(notes.len(), 1, "one cut, one resume: {result:#}");
    let note = notes[0].as_str().unwrap_or_default();
    let after: usize = note
        .strip_prefix("Resumed after event ")
        .and_then(|rest| rest.strip_suffix('.'))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("a resume note, not {note:?}"));
    assert!(after > CUT_AFTER, "{result:#}");
    assert_eq!(result["problems"], serde_json::json!([]), "{result:#}");
}

/// The demo page with the Responses API: the answer streams from `response.output_text.delta`
/// events, survives a cut by resuming, and ends at `response.completed`.
#[tokio::test]
#[ignore = "needs Debian chromium and playwright-core (npm); .ci/run installs them"]
async fn the_demo_page_streams_and_resumes_a_response_with_the_responses_api() {
    let (page_port, _pages) = serve_other_origin().await;
    let env = start_gateway(&format!("http://127.0.0.1:{page_port}"), true).await;
    let result = run_browser_with("demo-page-resume", env.gateway, page_port, "responses").await;
    assert_resumed_once_whole(&result);
}

// ---- without the browser ------------------------------------------------------------

#[tokio::test]
async fn the_demo_page_is_served_only_when_turned_on() {
    let env = start_with(MockSettings::default(), |config| config.demo.page = true).await;
    for (path, content_type) in [
        ("/", "text/html; charset=utf-8"),
        ("/demo.js", "text/javascript; charset=utf-8"),
        ("/demo.css", "text/css; charset=utf-8"),
    ] {
        let (status, headers, body) = fetch(get(env.gateway, path)).await;
        assert_eq!(status, StatusCode::OK, "{path}");
        assert_eq!(header(&headers, "content-type"), content_type);
        assert_eq!(header(&headers, "cache-control"), "no-store");
        assert_eq!(header(&headers, "x-content-type-options"), "nosniff");
        assert!(header(&headers, "content-security-policy").starts_with("default-src 'self'"));
        assert_eq!(header(&headers, "content-length"), body.len().to_string());
        // Every answer carries its request id, the page's too.
        assert!(header(&headers, "x-request-id").starts_with("tg-"));
    }
    let mut head = get(env.gateway, "/");
    *head.method_mut() = Method::HEAD;
    let (status, headers, body) = fetch(head).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.is_empty());
    assert_ne!(header(&headers, "content-length"), "0");
    let (status, headers, _) = fetch(post(env.gateway, "/", "{}", &[])).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(header(&headers, "allow"), "GET, HEAD");
    // The API is unchanged around it.
    let (status, _, _) = fetch(get(env.gateway, "/healthz")).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, _) = fetch(get(env.gateway, "/index.html")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Off (the default outside the demo): `/` is a 404 as before, and so are the files.
    let env = start().await;
    for path in ["/", "/demo.js", "/demo.css"] {
        let (status, headers, _) = fetch(get(env.gateway, path)).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(header(&headers, "content-type"), "application/json");
    }
}
