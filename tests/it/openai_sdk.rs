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
    run_sdk_script(script, env.gateway).await;
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
    run_sdk_script(script, env.gateway).await;
}

/// Runs one SDK script against the gateway and checks it ends with OK.
async fn run_sdk_script(script: &str, gateway: std::net::SocketAddr) {
    let output = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::process::Command::new("python3")
            .arg(script)
            .arg(format!("http://{gateway}/v1"))
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
