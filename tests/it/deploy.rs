//! The deployment files agree with the production config and with each other, without a
//! network or a cluster: `deploy/tidegate.toml` passes `check-config`, the Kubernetes ConfigMap
//! carries it verbatim, the ports and stop timeouts (Kubernetes' grace period, systemd's
//! TimeoutStopSec) leave room for the whole drain, and the HPA asks for the metric the
//! prometheus-adapter rule serves. Each check reads the files as committed, so editing one file
//! without the others fails here.

use std::path::PathBuf;
use std::time::Duration;

use tidegate::config::Config;

use crate::cli::run;

/// What the gateway needs after `shutdown.drain_timeout` to send each remaining stream its
/// `server_shutdown` event and exit (about 2 s, connections still open then are cut), with room
/// for a loaded node. A stop timeout shorter than drain + this cuts streams with a SIGKILL.
const EXIT_MARGIN: Duration = Duration::from_secs(10);

fn repo_path(relative: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(relative)
}

/// A file of the repository, by its path from the root (`deploy/tidegate.toml`).
pub(crate) fn read(relative: &str) -> String {
    std::fs::read_to_string(repo_path(relative))
        .unwrap_or_else(|e| panic!("reading {relative}: {e}"))
}

/// `deploy/tidegate.toml`, parsed and checked (secrets are not read).
pub(crate) fn production_config() -> Config {
    Config::from_toml_str(&read("deploy/tidegate.toml"))
        .unwrap_or_else(|e| panic!("deploy/tidegate.toml: {e:?}"))
}

/// The whole-number value of the first line of `text` that is `key` followed by `separator`
/// (YAML `key: 330`, systemd `Key=330`), ignoring indentation.
fn number_after(text: &str, file: &str, key: &str, separator: &str) -> u64 {
    let prefix = format!("{key}{separator}");
    let value = text
        .lines()
        .find_map(|line| line.trim_start().strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("{file}: no line `{prefix}...`"));
    value
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("{file}: `{prefix}{value}` is not a whole number: {e}"))
}

/// The content of the literal block scalar `key: |` in `yaml`, as YAML reads it: the lines
/// indented deeper than the key, with that indentation removed, blank lines kept, and one final
/// line break (clip chomping). Enough for the ConfigMap; not a YAML parser.
fn block_scalar(yaml: &str, key: &str) -> String {
    let mut lines = yaml.lines();
    let header = format!("{key}: |");
    let key_indent = loop {
        let line = lines
            .next()
            .unwrap_or_else(|| panic!("no line `{header}` (a literal block, clip chomping)"));
        if line.trim_start() == header {
            break line.len() - line.trim_start().len();
        }
    };
    let mut body: Vec<&str> = Vec::new();
    let mut indent = None;
    for line in lines {
        if line.trim().is_empty() {
            body.push("");
            continue;
        }
        let this_indent = line.len() - line.trim_start().len();
        let block_indent = *indent.get_or_insert(this_indent);
        if this_indent <= key_indent || this_indent < block_indent {
            break;
        }
        body.push(&line[block_indent..]);
    }
    while body.last() == Some(&"") {
        body.pop();
    }
    assert!(!body.is_empty(), "`{header}` has no content");
    body.join("\n") + "\n"
}

#[tokio::test]
async fn the_production_config_passes_check_config() {
    let path = repo_path("deploy/tidegate.toml");
    let (code, _, err) = run(
        &["check-config", path.to_str().unwrap()],
        &[
            ("OPENAI_API_KEY", "sk-test-not-a-real-key-0123456789"),
            ("TIDEGATE_ADMIN_TOKEN", "test-admin-token-0123456789abcdef"),
        ],
    )
    .await;
    assert_eq!(code, 0, "check-config deploy/tidegate.toml:\n{err}");
}

#[test]
fn the_configmap_carries_the_production_config_verbatim() {
    let configmap = block_scalar(&read("deploy/k8s/configmap.yaml"), "tidegate.toml");
    let production = read("deploy/tidegate.toml");
    if configmap != production {
        let first_difference = configmap
            .lines()
            .zip(production.lines())
            .position(|(a, b)| a != b)
            .map_or_else(
                || "one is a prefix of the other".to_owned(),
                |i| format!("line {}", i + 1),
            );
        panic!(
            "deploy/k8s/configmap.yaml's tidegate.toml differs from deploy/tidegate.toml \
             ({first_difference}): copy the file into the ConfigMap again, indented by 4 spaces"
        );
    }
}

#[test]
fn the_deployment_waits_for_the_whole_drain() {
    let drain = production_config().shutdown.drain_timeout;
    let file = "deploy/k8s/deployment.yaml";
    let deployment = read(file);
    let grace = number_after(&deployment, file, "terminationGracePeriodSeconds", ": ");
    // The grace period counts from before the preStop hook: SIGTERM, and the drain, start
    // only after the sleep.
    let after_sleep = deployment
        .split_once("preStop:")
        .unwrap_or_else(|| panic!("{file}: no preStop hook"))
        .1;
    let sleep = after_sleep
        .split_once("sleep:")
        .unwrap_or_else(|| panic!("{file}: the preStop hook is not a sleep"))
        .1;
    let pre_stop = number_after(sleep, file, "seconds", ": ");
    assert!(
        pre_stop > 0,
        "{file}: a preStop sleep of 0 lets SIGTERM close the listener while endpoints still route to it"
    );
    let needed = Duration::from_secs(pre_stop) + drain + EXIT_MARGIN;
    assert!(
        Duration::from_secs(grace) >= needed,
        "{file}: terminationGracePeriodSeconds {grace} < preStop sleep {pre_stop} s + \
         drain_timeout {drain:?} + {EXIT_MARGIN:?}: the kubelet would SIGKILL mid-drain"
    );
}

#[test]
fn the_deployment_exposes_and_probes_the_configured_ports() {
    let config = production_config();
    let api = config.listen.port();
    let admin = config
        .admin
        .listen
        .expect("deploy/tidegate.toml has an admin listener (the probes and /metrics)")
        .port();
    let file = "deploy/k8s/deployment.yaml";
    let deployment = read(file);
    for (name, port) in [("http", api), ("admin", admin)] {
        let declared = format!("- name: {name}\n              containerPort: {port}\n");
        assert!(
            deployment.contains(&declared),
            "{file}: container port {name} should be {port}, as in deploy/tidegate.toml"
        );
    }
    // The probes use the admin port: the API listener closes at SIGTERM, so a liveness probe
    // there would restart a draining pod.
    for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")] {
        let expected = format!("{probe}:");
        let body = deployment
            .split_once(&expected)
            .unwrap_or_else(|| panic!("{file}: no {probe}"))
            .1;
        let http_get = body.split("Probe:").next().unwrap_or(body);
        assert!(
            http_get.contains(&format!("path: {path}")) && http_get.contains("port: admin"),
            "{file}: the {probe} should GET {path} on port admin"
        );
    }
}

#[test]
fn systemd_waits_for_the_whole_drain() {
    let drain = production_config().shutdown.drain_timeout;
    for file in [
        "deploy/systemd/tidegate.service",
        "deploy/systemd/tidegate@.service",
    ] {
        let unit = read(file);
        let timeout = number_after(&unit, file, "TimeoutStopSec", "=");
        assert!(
            Duration::from_secs(timeout) >= drain + EXIT_MARGIN,
            "{file}: TimeoutStopSec={timeout} < drain_timeout {drain:?} + {EXIT_MARGIN:?}: \
             systemd would SIGKILL mid-drain"
        );
        assert!(
            unit.lines().any(|l| l.trim() == "KillSignal=SIGTERM"),
            "{file}: tidegate drains on SIGTERM"
        );
    }
}

#[test]
fn the_hpa_asks_for_the_metric_prometheus_adapter_serves() {
    // The name the gateway exports (src/metrics.rs defines every name once).
    let metric = tidegate::metrics::STREAMS_ACTIVE;
    let hpa = read("deploy/k8s/hpa.yaml");
    assert!(
        hpa.contains(&format!("metric:\n          name: {metric}\n")),
        "deploy/k8s/hpa.yaml: the Pods metric should be {metric}"
    );
    let adapter = read("deploy/k8s/prometheus-adapter-values.yaml");
    assert!(
        adapter.contains(&format!("as: \"{metric}\"")),
        "deploy/k8s/prometheus-adapter-values.yaml should serve {metric}"
    );
}
