//! The Grafana dashboard (`dashboards/tidegate.json`) and its provisioning files: well formed,
//! every panel with a data source, a query, a unit, a title and a description, and no query
//! naming a metric the gateway does not export (`tidegate::metrics`). No network, no Grafana:
//! the files are read as they are in the tree.

use std::collections::BTreeSet;

use serde_json::Value;
use tidegate::metrics::{NAMES, PROCESS_NAMES, RESUME_NAMES, TLS_NAMES};

/// The dashboard's uid: links, provisioning and alert annotations find it by this, so a change
/// must be deliberate.
const UID: &str = "tidegate";

/// What every panel and query names as its data source: the `datasource` template variable.
const DATASOURCE_UID: &str = "${datasource}";

/// The filter every metric selector in a panel carries, so the instance picker applies to all.
const INSTANCE_FILTER: &str = r#"instance=~"$instance""#;

/// The dashboard variables a query may use: ours and Grafana's rate window. Keeping to these
/// lets a test outside Grafana substitute them and run the queries against Prometheus.
const QUERY_VARIABLES: [&str; 2] = ["instance", "__rate_interval"];

/// The row titles, in order.
const ROWS: [&str; 6] = [
    "Traffic",
    "Latency",
    "Admission",
    "Upstreams",
    "Resumable streams",
    "Process",
];

/// Grafana unit ids (packages/grafana-data/src/valueFormats/categories.ts) a panel may use: a
/// misspelt unit is shown as a bare number with the text appended, which no one notices.
const UNITS: [&str; 14] = [
    "short",
    "none",
    "percent",
    "percentunit",
    "s",
    "ms",
    "bytes",
    "decbytes",
    "Bps",
    "binBps",
    "reqps",
    "ops",
    "cps",
    "dtdurations",
];

fn read(path: &str) -> String {
    let full = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("read {}: {e}", full.display()))
}

fn dashboard() -> Value {
    serde_json::from_str(&read("dashboards/tidegate.json"))
        .expect("dashboards/tidegate.json is valid JSON")
}

/// Every panel, rows included, and the panels a collapsed row keeps inside it.
fn all_panels(dashboard: &Value) -> Vec<&Value> {
    fn walk<'a>(panels: &'a Value, out: &mut Vec<&'a Value>) {
        for panel in panels.as_array().into_iter().flatten() {
            out.push(panel);
            walk(&panel["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    out
}

fn is_row(panel: &Value) -> bool {
    panel["type"] == "row"
}

/// How a problem names its panel: title and id.
fn panel_name(panel: &Value) -> String {
    format!(
        "panel {} (id {})",
        panel["title"]
            .as_str()
            .map_or("<untitled>".into(), |t| format!("{t:?}")),
        panel["id"]
    )
}

fn non_empty_str(value: &Value) -> Option<&str> {
    value.as_str().map(str::trim).filter(|s| !s.is_empty())
}

/// Panics with every problem found, one a line, if there are any.
fn assert_no_problems(what: &str, problems: &[String]) {
    assert!(
        problems.is_empty(),
        "{what}: {} problem(s):\n  {}",
        problems.len(),
        problems.join("\n  ")
    );
}

/// A metric name as a query uses it, and the selector (`{...}`) right after it, if any.
#[derive(Debug, PartialEq)]
struct MetricRef {
    name: String,
    selector: Option<String>,
}

/// The index just past the string literal that starts at `start` (a `"`, `'` or backquote).
fn skip_string(bytes: &[u8], start: usize) -> usize {
    let quote = bytes[start];
    let mut i = start + 1;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' if quote != b'`' => i += 2,
            c if c == quote => return i + 1,
            _ => i += 1,
        }
    }
    bytes.len()
}

fn is_ident_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b':'
}

/// The `tidegate_*` and `process_*` identifiers of a PromQL expression (outside string
/// literals), each with the label selector that follows it.
fn metric_refs(expr: &str) -> Vec<MetricRef> {
    let bytes = expr.as_bytes();
    let mut refs = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if matches!(b, b'"' | b'\'' | b'`') {
            i = skip_string(bytes, i);
        } else if is_ident_byte(b) {
            let start = i;
            while i < bytes.len() && is_ident_byte(bytes[i]) {
                i += 1;
            }
            let ident = &expr[start..i];
            if !(ident.starts_with("tidegate_") || ident.starts_with("process_")) {
                continue;
            }
            let mut j = i;
            while j < bytes.len() && bytes[j].is_ascii_whitespace() {
                j += 1;
            }
            let selector = (j < bytes.len() && bytes[j] == b'{').then(|| {
                let mut k = j + 1;
                while k < bytes.len() && bytes[k] != b'}' {
                    k = if matches!(bytes[k], b'"' | b'\'' | b'`') {
                        skip_string(bytes, k)
                    } else {
                        k + 1
                    };
                }
                expr[j + 1..k.min(bytes.len())].to_string()
            });
            refs.push(MetricRef {
                name: ident.to_string(),
                selector,
            });
        } else {
            i += 1;
        }
    }
    refs
}

/// Why `name` (as a query writes it) is not something the gateway exports, if it is not.
///
/// A `tidegate_*` family of `NAMES` whose name ends in `_seconds` is a histogram (all five are,
/// and no counter or gauge there ends so): a query reads it as `_bucket`, `_sum` or `_count`,
/// never bare. Every other family, and the TLS and resume ones (counters and gauges), is read
/// by its own name.
fn unexported(name: &str) -> Option<String> {
    if PROCESS_NAMES.contains(&name) || TLS_NAMES.contains(&name) || RESUME_NAMES.contains(&name) {
        return None;
    }
    let is_histogram = |base: &str| NAMES.contains(&base) && base.ends_with("_seconds");
    if let Some(base) = ["_bucket", "_sum", "_count"]
        .iter()
        .find_map(|suffix| name.strip_suffix(suffix))
    {
        if is_histogram(base) {
            return None;
        }
    }
    if is_histogram(name) {
        return Some(format!(
            "{name} is a histogram: read it as {name}_bucket, _sum or _count"
        ));
    }
    if NAMES.contains(&name) {
        return None;
    }
    Some(format!(
        "{name} is not exported (tidegate::metrics::NAMES, PROCESS_NAMES, TLS_NAMES, RESUME_NAMES)"
    ))
}

/// The dashboard variables (`$name`, `${name}`, `${name:format}`, `[[name]]`) a text uses.
fn variables(text: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        rest = &rest[at + 1..];
        let name: String = if let Some(braced) = rest.strip_prefix('{') {
            braced
                .split(['}', ':'])
                .next()
                .unwrap_or_default()
                .to_string()
        } else {
            rest.chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect()
        };
        found.insert(name);
    }
    let mut rest = text;
    while let Some(at) = rest.find("[[") {
        rest = &rest[at + 2..];
        found.insert(rest.split("]]").next().unwrap_or_default().to_string());
    }
    found
}

#[test]
fn the_metric_reference_reader_finds_names_selectors_and_skips_strings() {
    let refs = metric_refs(
        r#"sum by (le) (rate(tidegate_relay_delay_seconds_bucket{instance=~"$instance", x="}"}[5m])) / on (instance) process_max_fds + count(up{job="tidegate_not_a_metric"})"#,
    );
    assert_eq!(
        refs,
        [
            MetricRef {
                name: "tidegate_relay_delay_seconds_bucket".into(),
                selector: Some(r#"instance=~"$instance", x="}""#.into()),
            },
            MetricRef {
                name: "process_max_fds".into(),
                selector: None,
            },
        ]
    );
    assert_eq!(unexported("tidegate_relay_delay_seconds_bucket"), None);
    assert_eq!(unexported("tidegate_streams_total"), None);
    assert_eq!(unexported("process_open_fds"), None);
    assert!(unexported("tidegate_relay_delay_seconds").is_some());
    assert!(unexported("tidegate_streams_total_count").is_some());
    assert!(unexported("tidegate_stream_total").is_some());
    assert_eq!(
        variables("rate(x{a=~\"$instance\"}[$__rate_interval]) ${datasource} [[old]]"),
        ["__rate_interval", "datasource", "instance", "old"]
            .map(String::from)
            .into()
    );
}

#[test]
fn the_dashboard_has_a_stable_uid_and_a_datasource_variable() {
    let dashboard = dashboard();
    let text = read("dashboards/tidegate.json");
    assert_eq!(dashboard["uid"], UID, "the dashboard's uid");
    assert!(
        non_empty_str(&dashboard["title"]).is_some(),
        "the dashboard has a title"
    );
    assert!(
        dashboard["schemaVersion"].as_u64().is_some_and(|v| v >= 36),
        "a modern schemaVersion (36 or later), not {}",
        dashboard["schemaVersion"]
    );
    // An exported-for-sharing dashboard asks for its data source through `__inputs` and
    // `${DS_...}`, which file provisioning cannot fill.
    assert!(
        dashboard.get("__inputs").is_none() && dashboard.get("__requires").is_none(),
        "no __inputs or __requires: file provisioning cannot fill them"
    );
    assert!(!text.contains("${DS_"), "no ${{DS_...}} input placeholders");

    let variables = dashboard["templating"]["list"]
        .as_array()
        .expect("templating.list is an array");
    let named = |name: &str| {
        variables
            .iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("a template variable named {name:?}"))
    };
    let datasource = named("datasource");
    assert_eq!(datasource["type"], "datasource", "$datasource's type");
    assert_eq!(
        datasource["query"], "prometheus",
        "$datasource lists Prometheus"
    );

    let instance = named("instance");
    assert_eq!(instance["type"], "query", "$instance's type");
    assert_eq!(instance["datasource"]["uid"], DATASOURCE_UID);
    assert_eq!(instance["multi"], true, "$instance is multi-value");
    assert_eq!(instance["includeAll"], true, "$instance has All");
    // No custom All value: `.*` would take in other jobs' process_* series on the same Prometheus.
    assert!(
        non_empty_str(&instance["allValue"]).is_none(),
        "$instance has no custom allValue"
    );
}

#[test]
fn every_panel_has_a_datasource_a_query_a_unit_a_title_and_a_description() {
    let dashboard = dashboard();
    let panels = all_panels(&dashboard);
    let mut problems = Vec::new();
    let mut ids = BTreeSet::new();
    let mut queries = 0;
    for panel in &panels {
        let name = panel_name(panel);
        let Some(id) = panel["id"].as_u64() else {
            problems.push(format!("{name}: no numeric id"));
            continue;
        };
        if !ids.insert(id) {
            problems.push(format!("{name}: id {id} is used twice"));
        }
        for field in ["h", "w", "x", "y"] {
            if panel["gridPos"][field].as_u64().is_none() {
                problems.push(format!("{name}: gridPos.{field} missing"));
            }
        }
        if non_empty_str(&panel["title"]).is_none() {
            problems.push(format!("{name}: no title"));
        }
        if is_row(panel) {
            continue;
        }
        if non_empty_str(&panel["description"]).is_none() {
            problems.push(format!("{name}: no description"));
        }
        let datasource = &panel["datasource"];
        if datasource["type"] != "prometheus" || datasource["uid"] != DATASOURCE_UID {
            problems.push(format!(
                "{name}: datasource is {datasource}, not {{\"type\": \"prometheus\", \"uid\": \"{DATASOURCE_UID}\"}}"
            ));
        }
        match non_empty_str(&panel["fieldConfig"]["defaults"]["unit"]) {
            None => problems.push(format!("{name}: no fieldConfig.defaults.unit")),
            Some(unit) if !UNITS.contains(&unit) => problems.push(format!(
                "{name}: unit {unit:?} is not one of the known Grafana units {UNITS:?}"
            )),
            Some(_) => {}
        }
        let targets = panel["targets"].as_array().map_or(&[][..], Vec::as_slice);
        if targets.is_empty() {
            problems.push(format!("{name}: no targets"));
        }
        let mut ref_ids = BTreeSet::new();
        for target in targets {
            let ref_id = target["refId"].as_str().unwrap_or_default();
            if ref_id.is_empty() || !ref_ids.insert(ref_id) {
                problems.push(format!("{name}: a target without a unique refId"));
            }
            if non_empty_str(&target["expr"]).is_none() {
                problems.push(format!("{name}: target {ref_id:?} has no expr"));
            } else {
                queries += 1;
            }
            // A target's own data source, when it has one, overrides the panel's.
            if let Some(own) = target.get("datasource") {
                if own["uid"] != DATASOURCE_UID {
                    problems.push(format!(
                        "{name}: target {ref_id:?} names datasource {own}, not {DATASOURCE_UID}"
                    ));
                }
            }
        }
    }
    assert_no_problems("dashboards/tidegate.json panels", &problems);
    assert!(
        panels.iter().filter(|p| !is_row(p)).count() >= 20 && queries >= 20,
        "the dashboard has its panels ({} panels, {queries} queries)",
        panels.len()
    );
}

#[test]
fn every_query_names_only_metrics_the_gateway_exports() {
    let dashboard = dashboard();
    let mut problems = Vec::new();
    let mut used = BTreeSet::new();
    for panel in all_panels(&dashboard).into_iter().filter(|p| !is_row(p)) {
        let name = panel_name(panel);
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap_or_default();
            let refs = metric_refs(expr);
            if refs.is_empty() {
                problems.push(format!(
                    "{name}: {expr:?} reads no tidegate_ or process_ metric"
                ));
            }
            for r in refs {
                if let Some(why) = unexported(&r.name) {
                    problems.push(format!("{name}: {why}"));
                }
                if !r
                    .selector
                    .as_deref()
                    .is_some_and(|s| s.contains(INSTANCE_FILTER))
                {
                    problems.push(format!(
                        "{name}: {} is not filtered by {INSTANCE_FILTER}",
                        r.name
                    ));
                }
                used.insert(r.name);
            }
            for variable in variables(expr) {
                if !QUERY_VARIABLES.contains(&variable.as_str()) {
                    problems.push(format!(
                        "{name}: {expr:?} uses ${variable}; queries keep to {QUERY_VARIABLES:?}"
                    ));
                }
            }
        }
    }
    // The template variables' queries too (`label_values(tidegate_build_info, instance)`).
    for variable in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let query = match &variable["query"] {
            Value::String(query) if variable["type"] == "query" => query.as_str(),
            Value::Object(query) => query
                .get("query")
                .and_then(Value::as_str)
                .unwrap_or_default(),
            _ => continue,
        };
        for r in metric_refs(query) {
            if let Some(why) = unexported(&r.name) {
                problems.push(format!("variable {}: {why}", variable["name"]));
            }
        }
    }
    assert_no_problems("dashboards/tidegate.json queries", &problems);
    // Not every family needs a panel, but these are the ones the issue asks for.
    for wanted in [
        "tidegate_streams_active",
        "tidegate_connections_active",
        "tidegate_requests_total",
        "tidegate_rejections_total",
        "tidegate_time_to_first_token_seconds_bucket",
        "tidegate_relay_delay_seconds_bucket",
        "tidegate_stream_duration_seconds_bucket",
        "tidegate_heartbeats_total",
        "tidegate_upstream_requests_total",
        "tidegate_upstream_first_byte_seconds_bucket",
        "tidegate_tokens_total",
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
        "process_open_fds",
    ] {
        assert!(used.contains(wanted), "a panel reads {wanted}");
    }
}

#[test]
fn rows_group_the_panels_traffic_latency_admission_upstreams_resume_process() {
    let dashboard = dashboard();
    let top = dashboard["panels"].as_array().expect("panels is an array");
    // An expanded row owns the panels after it up to the next row; a collapsed one keeps its
    // panels inside it.
    let mut rows: Vec<(&str, usize)> = Vec::new();
    for panel in top {
        if is_row(panel) {
            let title = panel["title"].as_str().unwrap_or_default();
            let inside = panel["panels"].as_array().map_or(0, Vec::len);
            rows.push((title, inside));
        } else {
            let (_, count) = rows
                .last_mut()
                .unwrap_or_else(|| panic!("{} comes before the first row", panel_name(panel)));
            *count += 1;
        }
    }
    let titles: Vec<&str> = rows.iter().map(|(title, _)| *title).collect();
    assert_eq!(titles, ROWS, "the rows, in order");
    for (title, count) in rows {
        assert!(count > 0, "row {title:?} has panels");
    }
}

#[test]
fn the_provisioning_files_name_the_dashboard_folder_and_a_prometheus_datasource() {
    // No YAML parser among the dev-dependencies: the keys are checked as text, a line each.
    let files: [(&str, &[&str]); 2] = [
        (
            "dashboards/provisioning/dashboards.yaml",
            &[
                "apiVersion: 1",
                "providers:",
                "type: file",
                "options:",
                "path: /var/lib/grafana/dashboards/tidegate",
            ],
        ),
        (
            "dashboards/provisioning/datasources.yaml",
            &[
                "apiVersion: 1",
                "datasources:",
                "- name:",
                "type: prometheus",
                "uid: tidegate-prometheus",
                "url: http://prometheus:9090",
            ],
        ),
    ];
    for (path, expected_lines) in files {
        let text = read(path);
        for expected in expected_lines {
            assert!(
                text.lines().any(|l| l.trim_start().starts_with(expected)),
                "{path} has a line {expected:?}"
            );
        }
        assert!(
            !text.contains('\t'),
            "{path} indents with spaces (YAML forbids tabs)"
        );
    }
}
