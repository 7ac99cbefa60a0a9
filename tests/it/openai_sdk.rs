//! The official OpenAI SDKs as clients, unchanged except for `base_url`: Python's for chat
//! completions and the Responses API, Node's for the Responses API.

use std::path::Path;
use std::time::Duration;

use tidegate::mock::{expected_content, MockSettings};

use crate::common::*;

#[tokio::test]
#[ignore = "needs python3 with the openai package (pip install openai); .ci/run installs it"]
async fn the_openai_python_sdk_works_through_the_gateway() {
    // Heartbeats well above the mock's immediate answers (so a 429 stays a 429), well below
    // the slow scenarios' waits (so those are answered early and kept alive).
    let env = start_with(tidegate::mock::MockSettings::default(), |config| {
        config.streams.heartbeat_interval = Duration::from_millis(500);
    })
    .await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sdk/openai_client.py");
    run_sdk_script("python3", script, &[&format!("http://{}/v1", env.gateway)]).await;
}

/// The same script over TLS: the SDK's own HTTP client, trusting the test CA, against the
/// gateway's `[tls]` listener (issue 13, requirement 7).
#[tokio::test]
#[ignore = "needs python3 with the openai package (pip install openai); .ci/run installs it"]
async fn the_openai_python_sdk_works_through_the_gateway_over_tls() {
    let pki = crate::tls::Pki::new();
    let env = crate::tls_streams::start_tls(&pki, |config| {
        config.streams.heartbeat_interval = Duration::from_millis(500);
    })
    .await;
    let ca = pki.path("ca.pem");
    pki.write("ca.pem", &pki.ca_pem());
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sdk/openai_client.py");
    // By name, as a client would, not by address: the certificate is for both.
    let base_url = format!("https://localhost:{}/v1", env.gateway.port());
    run_sdk_script("python3", script, &[&base_url, &ca.to_string_lossy()]).await;
}

#[tokio::test]
#[ignore = "needs python3 with the openai package (pip install openai); .ci/run installs it"]
async fn the_openai_python_sdk_waits_out_the_gateways_rate_limit_and_retries() {
    let env = start_with(tidegate::mock::MockSettings::default(), |config| {
        config.limits.per_ip.requests_per_second = 1;
        config.limits.per_ip.burst = 1;
    })
    .await;
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/sdk/openai_rate_limit.py"
    );
    run_sdk_script("python3", script, &[&format!("http://{}/v1", env.gateway)]).await;
}

/// Text deltas per Responses stream in the Responses tests (the `x-mock-chunks` their scripts
/// send): fewer than the canned paragraph, so the expected text is a cut of it, not the default.
const RESPONSES_CHUNKS: u32 = 7;

/// The gateway and mock for the Responses tests: heartbeats as for the chat test above (well
/// above the mock's immediate answers, so a 429 stays a 429).
async fn start_for_responses() -> TestEnv {
    start_with(MockSettings::default(), |config| {
        config.streams.heartbeat_interval = Duration::from_millis(500);
    })
    .await
}

/// The Responses API through the Python SDK: `responses.create(stream=True)`, the
/// `responses.stream()` helper, a non-streaming create, the gateway's final error event on a
/// stream without a terminal event and on a cut one (raised as `APIError` with its code, and
/// exactly one), the upstream's own error event, `response.failed`, and retrieve (also as a
/// stream after a sequence number), input items, cancel and delete, and a client that goes
/// away mid-stream (its upstream request cancelled).
#[tokio::test]
#[ignore = "needs python3 with the openai package (pip install openai); .ci/run installs it"]
async fn the_openai_python_sdk_drives_the_responses_api_through_the_gateway() {
    let env = start_for_responses().await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sdk/openai_responses.py");
    run_sdk_script(
        "python3",
        script,
        &[
            &format!("http://{}/v1", env.gateway),
            &RESPONSES_CHUNKS.to_string(),
            &expected_content(RESPONSES_CHUNKS),
        ],
    )
    .await;
    the_client_that_went_away_was_cancelled(&env).await;
}

/// The core of the same through the Node SDK (`tests/sdk/node/responses.mjs`): a streamed and
/// a non-streamed response, `responses.stream()` and `finalResponse()`, the gateway's final
/// error events as `APIError`, `response.failed`, retrieve (and replay) and delete.
#[tokio::test]
#[ignore = "needs node and the openai package in tests/sdk/node (npm ci there); .ci/run installs it"]
async fn the_openai_node_sdk_drives_the_responses_api_through_the_gateway() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sdk/node");
    assert!(
        dir.join("node_modules/openai").is_dir(),
        "the OpenAI Node SDK is not installed: run `npm ci` in {}",
        dir.display()
    );
    let env = start_for_responses().await;
    let script = dir.join("responses.mjs");
    run_sdk_script(
        "node",
        &script.to_string_lossy(),
        &[
            &format!("http://{}/v1", env.gateway),
            &RESPONSES_CHUNKS.to_string(),
            &expected_content(RESPONSES_CHUNKS),
        ],
    )
    .await;
    the_client_that_went_away_was_cancelled(&env).await;
}

/// Each Responses script ends by leaving a long stream after its first delta: the mock must
/// see that stream cancelled (the only one cancelled; the scripts' other streams end), and
/// none left running.
async fn the_client_that_went_away_was_cancelled(env: &TestEnv) {
    let stats = wait_for_mock(
        env.mock,
        "the stream the SDK left to be cancelled upstream",
        PATIENCE,
        |s| s.streams_cancelled >= 1 && s.streams_active == 0,
    )
    .await;
    assert_eq!(stats.streams_cancelled, 1, "{stats:?}");
}

/// Runs one SDK script with `program` (python3 or node) and `args` (the base URL first) and
/// checks it ends with OK.
async fn run_sdk_script(program: &str, script: &str, args: &[&str]) {
    let output = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::process::Command::new(program)
            .arg(script)
            .args(args)
            .env_remove("OPENAI_BASE_URL")
            .env_remove("OPENAI_API_KEY")
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the SDK script finished in time")
    .unwrap_or_else(|e| panic!("{program} runs: {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(stdout.trim_end().ends_with("OK"), "{stdout}");
}
