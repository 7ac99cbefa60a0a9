//! The official OpenAI Python SDK as a client, unchanged except for `base_url`.

use std::time::Duration;

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
    run_sdk_script(script, &[&format!("http://{}/v1", env.gateway)]).await;
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
    run_sdk_script(script, &[&base_url, &ca.to_string_lossy()]).await;
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
    run_sdk_script(script, &[&format!("http://{}/v1", env.gateway)]).await;
}

/// Runs one SDK script with `args` (the base URL first) and checks it ends with OK.
async fn run_sdk_script(script: &str, args: &[&str]) {
    let output = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::process::Command::new("python3")
            .arg(script)
            .args(args)
            .env_remove("OPENAI_BASE_URL")
            .env_remove("OPENAI_API_KEY")
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the SDK script finished in time")
    .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(stdout.trim_end().ends_with("OK"), "{stdout}");
}
