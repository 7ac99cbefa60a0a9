//! The exporter against a real Prometheus server (Debian's `prometheus` package; `.ci/run`
//! installs it): the gateway serves traffic of every outcome, Prometheus scrapes its admin
//! listener on loopback every second with `deploy/prometheus/alerts.yml` loaded, and then every
//! PromQL expression of the dashboard is run through Prometheus' HTTP API (each must parse, and
//! the key panels must return data) and every rule must have been evaluated without error.
//! `promtool check metrics` lints a scrape.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use serde_json::Value;
use tidegate::mock::MockSettings;
use tokio::io::AsyncWriteExt;
use tokio::process::{Child, Command};

use crate::common::*;

/// Prometheus' start, its first scrapes and its first rule evaluations, on a loaded CI machine.
const PROMETHEUS_PATIENCE: Duration = Duration::from_secs(60);

fn repo_file(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// A free loopback port for Prometheus' own listener (it cannot be handed a socket).
fn free_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    listener.local_addr().expect("its address")
}

/// Starts Prometheus scraping `admin` every second, with the project's alert rules.
fn start_prometheus(admin: SocketAddr, dir: &Path) -> (Child, SocketAddr) {
    let listen = free_port();
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - {rules}\n\
             scrape_configs:\n  - job_name: tidegate\n    static_configs:\n      - targets: ['{admin}']\n",
            rules = repo_file("deploy/prometheus/alerts.yml").display(),
        ),
    )
    .expect("config written");
    let child = Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address={listen}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("prometheus runs (apt-get install prometheus)");
    (child, listen)
}

/// Runs one instant query through Prometheus' HTTP API; returns its JSON answer (`Null` while
/// Prometheus is not listening yet).
async fn query(prometheus: SocketAddr, promql: &str) -> Value {
    if tokio::net::TcpStream::connect(prometheus).await.is_err() {
        return Value::Null;
    }
    let body: String = form_urlencoded::Serializer::new(String::new())
        .append_pair("query", promql)
        .finish();
    let request = Request::post(format!("http://{prometheus}/api/v1/query"))
        .header("host", prometheus.to_string())
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Full::new(Bytes::from(body)))
        .expect("a request");
    let (_, _, bytes) = fetch(request).await;
    serde_json::from_slice(&bytes).unwrap_or(Value::Null)
}

/// Whether `answer` is a successful query with at least one series or a scalar.
fn has_data(answer: &Value) -> bool {
    answer["status"] == "success"
        && match &answer["data"]["result"] {
            Value::Array(series) => !series.is_empty(),
            Value::Null => false,
            _ => true,
        }
}

/// Every target's expression in the dashboard, with its panel's title, made runnable outside
/// Grafana: `$instance` matches everything, `$__rate_interval` is a minute.
fn dashboard_queries() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(repo_file("dashboards/tidegate.json")).expect("dashboard");
    let dashboard: Value = serde_json::from_str(&text).expect("dashboard JSON");
    let mut queries = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        let title = panel["title"].as_str().unwrap_or_default().to_owned();
        for target in panel["targets"].as_array().into_iter().flatten() {
            if let Some(expr) = target["expr"].as_str() {
                let expr = expr
                    .replace("$instance", ".*")
                    .replace("$__rate_interval", "1m");
                queries.push((title.clone(), expr));
            }
        }
    }
    queries
}

/// Traffic of every outcome the metrics tell apart: completed, failed mid-stream, an upstream
/// error status, a client that goes away, a rejected request, a non-streaming request.
async fn traffic(env: &TestEnv) {
    let (_c, done) = open_stream(env.gateway, "mock-1", &[("x-mock-chunks", "3")]).await;
    read_to_end(done).await;
    let (_c, failed) = open_stream(env.gateway, "fail-midstream", &[]).await;
    read_to_end(failed).await;
    let (status, _, _) = chat(env.gateway, "fail-500", true).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    let gone = open_stream(
        env.gateway,
        "mock-1",
        &[("x-mock-chunks", "1"), ("x-mock-chunk-delay-ms", "5000")],
    )
    .await;
    drop(gone);
    let (status, _, _) = fetch(post(env.gateway, "/v1/chat/completions", "{", &[])).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _, _) = chat(env.gateway, "mock-1", false).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs prometheus and promtool (apt-get install prometheus); .ci/run installs them"]
async fn a_real_prometheus_scrapes_the_gateway_and_runs_every_dashboard_and_alert_query() {
    let env = start_with(MockSettings::default(), |c| {
        c.retry.max_attempts = 1;
        // The resume families are exported, linted and queried too.
        c.resume.enabled = true;
    })
    .await;
    traffic(&env).await;

    // promtool lints a scrape.
    let (status, _, scrape) = fetch(get(env.admin, "/metrics")).await;
    assert_eq!(status, StatusCode::OK);
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("promtool runs");
    let mut stdin = promtool.stdin.take().expect("stdin");
    stdin.write_all(&scrape).await.expect("scrape written");
    drop(stdin);
    let linted = tokio::time::timeout(PATIENCE, promtool.wait_with_output())
        .await
        .expect("promtool in time")
        .expect("promtool ran");
    assert!(
        linted.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&linted.stdout),
        String::from_utf8_lossy(&linted.stderr)
    );

    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("prometheus-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("a folder");
    let (_prometheus, api) = start_prometheus(env.admin, &dir);

    // A few scrapes in, with traffic between them, so rates over a minute have two points.
    wait_for(
        "three scrapes of the gateway",
        PROMETHEUS_PATIENCE,
        || async {
            let answer = query(api, r#"count_over_time(up{job="tidegate"}[1m]) >= 3"#).await;
            has_data(&answer).then_some(())
        },
    )
    .await;
    traffic(&env).await;
    wait_for(
        "a scrape after the traffic",
        PROMETHEUS_PATIENCE,
        || async {
            let answer = query(api, r#"tidegate_streams_total{outcome="completed"} >= 2"#).await;
            has_data(&answer).then_some(())
        },
    )
    .await;

    // Every dashboard query parses and runs; the key panels have data.
    let key_panels = [
        "Active streams",
        "Request rate by status",
        "Streams ended by outcome",
        "Rejections by reason",
        "Upstream answers by status",
        "Resident memory",
        "Open file descriptors",
        "Time to first token p50 / p95 / p99",
    ];
    let queries = dashboard_queries();
    assert!(queries.len() > 20, "{} queries", queries.len());
    let mut empty_key_panels = Vec::new();
    for (title, expr) in &queries {
        let answer = query(api, expr).await;
        assert_eq!(answer["status"], "success", "{title}: {expr}\n{answer}");
        if key_panels.contains(&title.as_str()) && !has_data(&answer) {
            empty_key_panels.push(format!("{title}: {expr}"));
        }
    }
    // A panel with several queries has data if one of them has.
    for panel in key_panels {
        let with_data = queries.iter().filter(|(t, _)| t == panel).count()
            > empty_key_panels
                .iter()
                .filter(|e| e.starts_with(&format!("{panel}: ")))
                .count();
        assert!(with_data, "no data for {panel}: {empty_key_panels:#?}");
    }

    // Every recording and alerting rule has been evaluated, without error.
    let rules = wait_for("every rule evaluated", PROMETHEUS_PATIENCE, || async {
        let (_, _, bytes) = fetch(get(api, "/api/v1/rules")).await;
        let answer: Value = serde_json::from_slice(&bytes).ok()?;
        let rules: Vec<Value> = answer["data"]["groups"]
            .as_array()?
            .iter()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .collect();
        let evaluated = rules.iter().all(|r| {
            r["lastEvaluation"]
                .as_str()
                .is_some_and(|t| !t.starts_with("0001-"))
        });
        (evaluated && !rules.is_empty()).then_some(rules)
    })
    .await;
    for rule in &rules {
        assert_eq!(rule["health"], "ok", "{rule}");
    }
    // The gateway is up, so the alerts about it being down do not fire.
    for rule in rules.iter().filter(|r| r["type"] == "alerting") {
        let name = rule["name"].as_str().unwrap_or_default();
        if name == "TidegateDown" || name == "TidegateAbsent" {
            assert_eq!(rule["state"], "inactive", "{rule}");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
