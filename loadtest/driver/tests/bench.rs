//! `tidegate-bench` as a user runs it: the real binary against the gateway and mock started
//! in-process on 127.0.0.1:0, over HTTP/1.1 and HTTP/2; its exit code, its JSON report, its
//! chart; failures counted by kind; hold mode (`--hold`); clients that go away
//! (`--drop-after-*`, `--stall-after-headers`); TLS (`--ca-file`); and arguments it must refuse.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use serde_json::Value;
use tidegate::mock::MockSettings;
use tokio::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_tidegate-bench");
/// A whole bench run of a few hundred short streams on a loaded 2-core machine, debug build.
const RUN_PATIENCE: Duration = Duration::from_secs(120);

fn out_path(test: &str, file: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("bench-{}-{test}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(file)
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

async fn bench(args: &[&str]) -> Run {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env_remove("TIDEGATE_CONFIG")
        .env_remove("TIDEGATE_BENCH_API_KEY")
        .kill_on_drop(true);
    let out = tokio::time::timeout(RUN_PATIENCE, cmd.output())
        .await
        .expect("bench finished in time")
        .expect("bench ran");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Runs `tidegate-bench --url URL`, then `options` (split on whitespace, so no paths), then
/// each of `files` as an option and its path, kept whole.
async fn bench_at(url: &str, options: &str, files: &[(&str, &Path)]) -> Run {
    let mut args = vec!["--url", url];
    args.extend(options.split_whitespace());
    for (option, path) in files {
        args.push(option);
        args.push(path.to_str().expect("a UTF-8 path"));
    }
    bench(&args).await
}

fn read_json(path: &PathBuf) -> Value {
    let text = std::fs::read_to_string(path).expect("JSON report written");
    serde_json::from_str(&text).expect("JSON report parses")
}

/// The gateway and the mock in this process hold two or three sockets per stream.
fn raise_fd_limit() {
    tidegate::sys::raise_nofile_limit().expect("open-files limit");
}

fn u(v: &Value) -> u64 {
    v.as_u64()
        .unwrap_or_else(|| panic!("not an unsigned number: {v}"))
}

/// Checks the report of a run where every stream should have completed with `chunks` chunks.
fn assert_clean_run(report: &Value, streams: u64, chunks: u64) {
    let s = &report["streams"];
    assert_eq!(u(&s["requested"]), streams, "{s}");
    assert_eq!(u(&s["started"]), streams, "{s}");
    assert_eq!(u(&s["opened"]), streams, "{s}");
    assert_eq!(u(&s["completed"]), streams, "{s}");
    assert_eq!(u(&s["failed"]), 0, "{s}");
    assert_eq!(s["failed_by_kind"], serde_json::json!({}));
    assert_eq!(u(&s["cancelled"]), 0);
    assert_eq!(u(&s["not_started"]), 0);
    let max_alive = u(&s["max_alive"]);
    assert!((1..=streams).contains(&max_alive), "max alive {max_alive}");

    // role chunk + content chunks + stop chunk + [DONE]; all but [DONE] carry a timestamp.
    let t = &report["throughput"];
    assert_eq!(u(&t["events"]), streams * (chunks + 3), "{t}");
    assert_eq!(u(&t["timed_events"]), streams * (chunks + 2), "{t}");
    assert!(u(&t["bytes"]) > u(&t["events"]) * 50, "{t}");
    assert!(t["events_per_s"].as_f64().unwrap() > 0.0);

    let first = &report["time_to_first_event_us"];
    assert_eq!(u(&first["count"]), streams);
    let latency = &report["event_latency_us"];
    assert_eq!(u(&latency["count"]), streams * (chunks + 2));
    for summary in [first, latency] {
        let (p50, p90, p99, max) = (
            u(&summary["p50"]),
            u(&summary["p90"]),
            u(&summary["p99"]),
            u(&summary["max"]),
        );
        assert!(
            p50 > 0 && p50 <= p90 && p90 <= p99 && p99 <= max,
            "{summary}"
        );
        // Loopback: even a loaded debug build adds well under 10 s.
        assert!(max < 10_000_000, "{summary}");
    }
    assert!(report["timeline"].as_array().unwrap().len() >= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_streams_all_complete_and_the_report_adds_up() {
    raise_fd_limit();
    let env = start_with(MockSettings::default(), |_| {}).await;
    let json = out_path("http1", "report.json");
    let url = format!("http://{}", env.gateway);
    let pid = std::process::id().to_string();
    let run = bench_at(
        &url,
        &format!(
            "--streams 200 --ramp 1000 --chunks 3 --chunk-delay-ms 20 \
             --source-addrs 4 --pid gateway={pid}"
        ),
        &[("--json", &json)],
    )
    .await;
    assert_eq!(
        run.code, 0,
        "stdout:\n{}\nstderr:\n{}",
        run.stdout, run.stderr
    );
    let report = read_json(&json);
    assert_clean_run(&report, 200, 3);
    assert_eq!(report["args"]["protocol"], "http1");
    assert_eq!(u(&report["streams"]["connections"]), 200);
    assert_eq!(report["args"]["api_key"], false);
    assert_eq!(report["args"]["api"], "chat");

    // The gateway (this process) and the driver itself were sampled.
    let processes = report["processes"].as_array().unwrap();
    let names: Vec<&str> = processes
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    assert_eq!(names, ["gateway", "bench"]);
    let gateway = &processes[0];
    assert_eq!(gateway["pid"].as_u64(), Some(u64::from(std::process::id())));
    assert!(u(&gateway["rss_start_kib"]) > 0);
    assert!(u(&gateway["rss_peak_kib"]) >= u(&gateway["rss_start_kib"]));
    assert!(gateway["cpu_s"].as_f64().unwrap() >= 0.0);
    assert!(gateway["cpu_s_per_1000_events"].as_f64().is_some());
    assert!(gateway["error"].is_null());

    // The human table.
    assert!(
        run.stdout.contains("200 completed, 0 failed"),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("time to first event"), "{}", run.stdout);
    assert!(run.stdout.contains("per-event added"), "{}", run.stdout);
    // Progress lines on stderr.
    assert!(run.stderr.contains("bench: t="), "{}", run.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_streams_all_complete_over_shared_connections() {
    raise_fd_limit();
    let env = start_with(MockSettings::default(), |_| {}).await;
    let json = out_path("h2", "report.json");
    let url = format!("http://{}", env.gateway);
    let run = bench_at(
        &url,
        "--protocol h2 --per-connection 50 --streams 200 --ramp 1000 --chunks 3 \
         --chunk-delay-ms 20 --threads 2 --quiet",
        &[("--json", &json)],
    )
    .await;
    assert_eq!(
        run.code, 0,
        "stdout:\n{}\nstderr:\n{}",
        run.stdout, run.stderr
    );
    let report = read_json(&json);
    assert_clean_run(&report, 200, 3);
    assert_eq!(report["args"]["protocol"], "h2");
    assert_eq!(report["args"]["per_connection"], 50);
    assert_eq!(u(&report["streams"]["connections"]), 4);
    assert!(run.stderr.is_empty(), "--quiet: {}", run.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mock_alone_works_as_the_reference() {
    raise_fd_limit();
    let env = start_with(MockSettings::default(), |_| {}).await;
    let json = out_path("mock", "report.json");
    let url = format!("http://{}", env.mock);
    let run = bench_at(
        &url,
        "--streams 50 --ramp 1000 --chunks 2 --chunk-delay-ms 10 --quiet",
        &[("--json", &json)],
    )
    .await;
    assert_eq!(
        run.code, 0,
        "stdout:\n{}\nstderr:\n{}",
        run.stdout, run.stderr
    );
    assert_clean_run(&read_json(&json), 50, 2);
}

/// `--api responses`: through the gateway over HTTP/1.1 and h2, and straight at the mock. The
/// mock's Responses stream is chunks + 8 events (created, in_progress, output_item.added,
/// content_part.added, the deltas, output_text.done, content_part.done, output_item.done,
/// completed), each stamped; the first event timed is the first delta.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_streams_complete_through_the_gateway_and_from_the_mock() {
    raise_fd_limit();
    let env = start_with(MockSettings::default(), |_| {}).await;
    let json = out_path("responses", "report.json");
    let (streams, chunks) = (50u64, 3u64);
    for (url, protocol) in [
        (format!("http://{}", env.gateway), "http1"),
        (format!("http://{}", env.gateway), "h2"),
        (format!("http://{}", env.mock), "http1"),
    ] {
        let run = bench_at(
            &url,
            &format!(
                "--api responses --protocol {protocol} --streams {streams} --ramp 1000 \
                 --chunks {chunks} --chunk-delay-ms 10 --quiet"
            ),
            &[("--json", &json)],
        )
        .await;
        assert_eq!(
            run.code, 0,
            "{url} {protocol}: stdout:\n{}\nstderr:\n{}",
            run.stdout, run.stderr
        );
        let report = read_json(&json);
        assert_eq!(report["args"]["api"], "responses");
        let s = &report["streams"];
        assert_eq!(u(&s["completed"]), streams, "{url} {protocol}: {s}");
        assert_eq!(u(&s["failed"]), 0, "{url} {protocol}: {s}");
        let t = &report["throughput"];
        assert_eq!(u(&t["events"]), streams * (chunks + 8), "{t}");
        assert_eq!(u(&t["timed_events"]), streams * (chunks + 8), "{t}");
        assert_eq!(
            u(&report["event_latency_us"]["count"]),
            streams * (chunks + 8)
        );
        assert_eq!(u(&report["time_to_first_event_us"]["count"]), streams);
        assert!(
            run.stdout.contains("streams (Responses API) to"),
            "{}",
            run.stdout
        );
        assert!(run.stdout.contains("time to first delta"), "{}", run.stdout);
    }

    // Without deltas there is no first token to time, and the stream still completes.
    let url = format!("http://{}", env.gateway);
    let run = bench_at(
        &url,
        "--api responses --streams 5 --ramp 1000 --chunks 0 --quiet",
        &[("--json", &json)],
    )
    .await;
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let report = read_json(&json);
    assert_eq!(u(&report["streams"]["completed"]), 5);
    assert_eq!(u(&report["throughput"]["events"]), 5 * 8);
    assert_eq!(u(&report["time_to_first_event_us"]["count"]), 0);
}

/// A Responses stream's failures by kind: `response.failed` and `event: error` from the mock,
/// relayed by the gateway; an upstream abort that the gateway turns into its own `event: error`
/// and the mock alone turns into a broken body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_failures_are_counted_by_kind() {
    raise_fd_limit();
    let env = start_with(MockSettings::default(), |_| {}).await;
    let json = out_path("responses-failures", "report.json");
    let gateway = format!("http://{}", env.gateway);
    let mock = format!("http://{}", env.mock);
    for (url, model, kind) in [
        (
            &gateway,
            "fail-response-failed",
            "response.failed:server_error",
        ),
        (
            &mock,
            "fail-response-failed",
            "response.failed:server_error",
        ),
        (&gateway, "fail-error-event", "error_event:server_error"),
        (&mock, "fail-error-event", "error_event:server_error"),
        (&gateway, "fail-midstream", "error_event:upstream_reset"),
        (&mock, "fail-midstream", "reset"),
    ] {
        let run = bench_at(
            url,
            &format!(
                "--api responses --streams 10 --ramp 1000 --chunks 5 --chunk-delay-ms 10 \
                 --model {model} --quiet"
            ),
            &[("--json", &json)],
        )
        .await;
        assert_eq!(run.code, 1, "{url} {model}: {}\n{}", run.stdout, run.stderr);
        let s = &read_json(&json)["streams"];
        assert_eq!(u(&s["completed"]), 0, "{url} {model}: {s}");
        assert_eq!(
            s["failed_by_kind"],
            serde_json::json!({ kind: 10 }),
            "{url} {model}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_model_is_counted_by_kind_and_exits_non_zero() {
    raise_fd_limit();
    let env = start_with(MockSettings::default(), |_| {}).await;
    let json = out_path("midstream", "report.json");
    for (url, protocol, kind) in [
        // The gateway turns the upstream's abort into a final error event.
        (
            format!("http://{}", env.gateway),
            "http1",
            "error_event:upstream_reset",
        ),
        (
            format!("http://{}", env.gateway),
            "h2",
            "error_event:upstream_reset",
        ),
        // The mock alone just breaks the connection (HTTP/1.1) or resets the stream (h2).
        (format!("http://{}", env.mock), "http1", "reset"),
        (format!("http://{}", env.mock), "h2", "reset"),
    ] {
        let run = bench_at(
            &url,
            &format!(
                "--protocol {protocol} --streams 20 --ramp 1000 --chunks 5 \
             --chunk-delay-ms 10 --model fail-midstream --quiet"
            ),
            &[("--json", &json)],
        )
        .await;
        assert_eq!(
            run.code, 1,
            "{url} {protocol}: {}\n{}",
            run.stdout, run.stderr
        );
        let report = read_json(&json);
        let s = &report["streams"];
        assert_eq!(u(&s["completed"]), 0, "{url} {protocol}: {s}");
        assert_eq!(u(&s["failed"]), 20, "{url} {protocol}: {s}");
        assert_eq!(
            s["failed_by_kind"],
            serde_json::json!({ kind: 20 }),
            "{url} {protocol}"
        );
        assert!(s["failure_examples"][kind].is_string());
        // Role chunk and two content chunks arrived before the failure.
        assert!(u(&report["throughput"]["events"]) >= 20 * 3);
        assert!(
            run.stdout.contains(&format!("failed {kind}")),
            "{}",
            run.stdout
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_statuses_and_timeouts_are_failures_by_kind() {
    raise_fd_limit();
    let env = start_with(MockSettings::default(), |_| {}).await;
    let json = out_path("status", "report.json");
    let url = format!("http://{}", env.gateway);
    let run = bench_at(
        &url,
        "--streams 10 --ramp 1000 --model fail-429 --quiet",
        &[("--json", &json)],
    )
    .await;
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    let report = read_json(&json);
    assert_eq!(
        report["streams"]["failed_by_kind"],
        serde_json::json!({"status_429": 10})
    );
    let example = report["streams"]["failure_examples"]["status_429"]
        .as_str()
        .unwrap();
    assert!(example.contains("429"), "{example}");

    // `hang` never answers: each stream runs into --stream-timeout.
    let run = bench_at(
        &url,
        "--streams 5 --ramp 1000 --model hang --stream-timeout 300ms --quiet",
        &[("--json", &json)],
    )
    .await;
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    let report = read_json(&json);
    assert_eq!(
        report["streams"]["failed_by_kind"],
        serde_json::json!({"timeout": 5})
    );
    assert_eq!(u(&report["streams"]["opened"]), 0);

    // Streams still running at the --duration cap are cancelled, not failed, and the run
    // still exits non-zero: it did not do what was asked.
    let run = bench_at(
        &url,
        "--streams 5 --ramp 1000 --chunks 1000 --chunk-delay-ms 100 --duration 500ms --quiet",
        &[("--json", &json)],
    )
    .await;
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    let report = read_json(&json);
    assert_eq!(report["stopped_early"], "duration_cap");
    assert_eq!(u(&report["streams"]["cancelled"]), 5);
    assert_eq!(u(&report["streams"]["failed"]), 0);
    assert!(
        run.stdout.contains("stopped by --duration"),
        "{}",
        run.stdout
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn svg_chart_is_written() {
    raise_fd_limit();
    let env = start_with(MockSettings::default(), |_| {}).await;
    let svg = out_path("svg", "chart.svg");
    let url = format!("http://{}", env.gateway);
    let run = bench_at(
        &url,
        "--streams 20 --ramp 1000 --chunks 2 --chunk-delay-ms 10 --quiet",
        &[("--svg", &svg)],
    )
    .await;
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let text = std::fs::read_to_string(&svg).expect("SVG written");
    assert!(text.starts_with("<svg"), "{}", &text[..text.len().min(200)]);
    assert!(text.trim_end().ends_with("</svg>"));
    for label in ["alive", "p99", "bench (pid"] {
        assert!(text.contains(label), "the chart shows {label}");
    }
}

/// Clients that go away after their first event, or some time after their headers, over both
/// protocols, through the gateway and straight at the mock: every stream is dropped (not failed),
/// the run exits 0, and the upstream sees every stream cancelled, so the drop reached it (a
/// closed connection on HTTP/1.1, a reset on HTTP/2).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_go_away_are_dropped_not_failed() {
    raise_fd_limit();
    let env = start_with(MockSettings::default(), |_| {}).await;
    let json = out_path("drop", "report.json");
    let gateway = format!("http://{}", env.gateway);
    let mock = format!("http://{}", env.mock);
    let mut cancelled = 0;
    for (url, protocol, walk_away, min_events) in [
        (&gateway, "http1", "--drop-after-events 1", 1),
        (&gateway, "h2", "--drop-after-events 2", 2),
        (&mock, "http1", "--drop-after-events 1", 1),
        // 50 ms between chunks: the role chunk and about 6 content chunks in 300 ms.
        (&gateway, "http1", "--drop-after-ms 300", 3),
        (
            &gateway,
            "h2",
            "--drop-after-ms 300 --drop-after-events 1000",
            3,
        ),
    ] {
        let run = bench_at(
            url,
            &format!(
                "--protocol {protocol} --streams 30 --ramp 1000 --chunks 200 \
                 --chunk-delay-ms 50 {walk_away}"
            ),
            &[("--json", &json)],
        )
        .await;
        let case = format!("{url} {protocol} {walk_away}");
        assert_eq!(run.code, 0, "{case}: {}\n{}", run.stdout, run.stderr);
        let report = read_json(&json);
        let s = &report["streams"];
        assert_eq!(u(&s["dropped"]), 30, "{case}: {s}");
        assert_eq!(u(&s["completed"]), 0, "{case}: {s}");
        assert_eq!(u(&s["failed"]), 0, "{case}: {s}");
        assert_eq!(u(&report["time_to_first_event_us"]["count"]), 30, "{case}");
        let events = u(&report["throughput"]["events"]);
        assert!(events >= 30 * min_events, "{case}: {events} events");
        assert!(
            events < 30 * 20,
            "{case}: {events} events: not read to the end"
        );
        assert!(
            run.stdout
                .contains("0 completed, 30 dropped by the client (as asked), 0 failed"),
            "{case}: {}",
            run.stdout
        );
        assert!(run.stderr.contains(" dropped=30"), "{case}: {}", run.stderr);
        cancelled += 30;
        wait_for_mock(
            &env.mock_stats,
            &format!("{case}: every dropped stream cancelled upstream"),
            PATIENCE,
            |s| s.streams_active == 0 && s.streams_cancelled >= cancelled,
        )
        .await;
    }
    let report = read_json(&json);
    assert_eq!(report["args"]["drop_after_ms"], 300);
    assert_eq!(report["args"]["drop_after_events"], 1000);
    assert_eq!(report["args"]["stall_after_headers"], false);
}

/// Clients that take the headers, read nothing while the mock sends as fast as it can, then go
/// away: every stream is dropped with nothing read, and the upstream sees each cancelled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_clients_read_nothing_and_are_dropped() {
    raise_fd_limit();
    let env = start_with(MockSettings::default(), |_| {}).await;
    let json = out_path("stall", "report.json");
    let url = format!("http://{}", env.gateway);
    let run = bench_at(
        &url,
        "--streams 10 --ramp 1000 --chunks 100000 --chunk-delay-ms 0 --stall-after-headers \
         --drop-after-ms 500 --quiet",
        &[("--json", &json)],
    )
    .await;
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let report = read_json(&json);
    let s = &report["streams"];
    assert_eq!(u(&s["opened"]), 10, "{s}");
    assert_eq!(u(&s["dropped"]), 10, "{s}");
    assert_eq!(u(&s["failed"]), 0, "{s}");
    assert_eq!(u(&report["throughput"]["bytes"]), 0);
    assert_eq!(u(&report["time_to_first_event_us"]["count"]), 0);
    assert_eq!(report["args"]["stall_after_headers"], true);
    assert!(
        run.stdout.contains("each stalled after its headers"),
        "{}",
        run.stdout
    );
    // 100,000 chunks (26 MB) do not fit in the sockets' buffers (a few MB on loopback) and the
    // gateway's: the mock was still sending when the clients went away, so each of its streams
    // ended cancelled.
    wait_for_mock(
        &env.mock_stats,
        "every stalled stream cancelled upstream",
        PATIENCE,
        |s| s.streams_active == 0 && s.streams_cancelled == 10,
    )
    .await;
}

/// The gateway's heartbeat interval in the hold tests: short, so a 1 s hold sees pings.
const HOLD_HEARTBEAT: Duration = Duration::from_millis(100);

/// Streams held for a second, over both protocols: all open, all held to the end, every one
/// pinged by the gateway, exit 0. The mock sends the role chunk at once and the next chunk only
/// after 600 s (`--chunks 1 --chunk-delay-ms 600000`, forwarded as x-mock-* headers), so the
/// streams are idle for the whole hold, as in loadtest/idle-streams.sh.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hold_mode_holds_idle_streams_and_counts_pings() {
    raise_fd_limit();
    let env = start_with(MockSettings::default(), |config| {
        config.streams.heartbeat_interval = HOLD_HEARTBEAT;
    })
    .await;
    let url = format!("http://{}", env.gateway);
    for (protocol, quiet) in [("h2", false), ("http1", true)] {
        let json = out_path(&format!("hold-{protocol}"), "report.json");
        let mut args = vec![
            "--url",
            &url,
            "--protocol",
            protocol,
            "--per-connection",
            "8",
            "--source-addrs",
            "4",
            "--streams",
            "20",
            "--ramp",
            "1000",
            "--chunks",
            "1",
            "--chunk-delay-ms",
            "600000",
            "--hold",
            "1s",
            "--json",
            json.to_str().unwrap(),
        ];
        if quiet {
            args.push("--quiet");
        }
        let run = bench(&args).await;
        assert_eq!(
            run.code, 0,
            "{protocol}: stdout:\n{}\nstderr:\n{}",
            run.stdout, run.stderr
        );
        // The line loadtest/idle-streams.sh waits for, even with --quiet.
        assert!(
            run.stderr.contains("bench: all open: opened=20 failed=0"),
            "{protocol}: {}",
            run.stderr
        );
        assert_eq!(run.stderr.contains("bench: t="), !quiet, "{}", run.stderr);

        let report = read_json(&json);
        let s = &report["streams"];
        assert_eq!(u(&s["opened"]), 20, "{protocol}: {s}");
        assert_eq!(u(&s["failed"]), 0, "{protocol}: {s}");
        assert_eq!(u(&s["completed"]), 0, "{protocol}: {s}");
        assert_eq!(u(&s["cancelled"]), 0, "{protocol}: {s}");
        assert_eq!(u(&s["max_alive"]), 20, "{protocol}: {s}");
        let expected_connections = if protocol == "h2" { 3 } else { 20 };
        assert_eq!(
            u(&s["connections"]),
            expected_connections,
            "{protocol}: {s}"
        );
        assert!(report["stopped_early"].is_null());
        assert_eq!(report["args"]["hold_s"].as_f64(), Some(1.0));

        let h = &report["hold"];
        assert_eq!(u(&h["held"]), 20, "{protocol}: {h}");
        assert_eq!(u(&h["ended_early"]), 0, "{protocol}: {h}");
        assert_eq!(h["ended_early_by_kind"], serde_json::json!({}));
        assert_eq!(h["hold_s"].as_f64(), Some(1.0));
        let held_s = h["held_s"].as_f64().unwrap();
        assert!((1.0..30.0).contains(&held_s), "{protocol}: {h}");
        assert!(h["all_open_after_s"].as_f64().unwrap() > 0.0, "{h}");
        // Every stream was open for at least the hold, with a ping every 75-100 ms of it.
        let pings = &h["pings_per_min"];
        assert_eq!(u(&pings["streams"]), 20, "{protocol}: {h}");
        assert!(pings["min"].as_f64().unwrap() > 0.0, "{protocol}: {h}");
        assert!(pings["mean"].as_f64().unwrap() >= pings["min"].as_f64().unwrap());
        assert!(
            u(&report["throughput"]["pings"]) >= 20,
            "{}",
            report["throughput"]
        );
        // The role chunk, and nothing else, arrived on each stream.
        let events = &h["events_per_stream"];
        assert_eq!(
            (events["min"].as_f64(), events["max"].as_f64()),
            (Some(1.0), Some(1.0)),
            "{protocol}: {h}"
        );
        assert_eq!(u(&report["time_to_headers_us"]["count"]), 20);
        let timeline = report["timeline"].as_array().unwrap();
        assert!(timeline.iter().all(|p| p["ended_early"] == 0), "{protocol}");
        assert!(
            run.stdout
                .contains("20 opened, 20 held, 0 ended early, 0 failed to open"),
            "{protocol}: {}",
            run.stdout
        );
        assert!(run.stdout.contains("pings/stream/min"), "{}", run.stdout);
    }
    // Every held stream was cancelled at the end, and the gateway passed that on to the mock.
    wait_for_mock(
        &env.mock_stats,
        "the held streams cancelled upstream",
        PATIENCE,
        |s| s.streams_active == 0,
    )
    .await;
}

/// Streams that end before the hold is over are reported by how they ended, the hold ends
/// once none is left, and the exit code is 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hold_mode_reports_streams_that_end_early() {
    raise_fd_limit();
    let env = start_with(MockSettings::default(), |_| {}).await;
    let url = format!("http://{}", env.gateway);
    for (protocol, model, kind) in [
        // The gateway turns the upstream's abort into a final error event.
        ("http1", "fail-midstream", "error_event:upstream_reset"),
        ("h2", "fail-midstream", "error_event:upstream_reset"),
        // An ordinary stream, shorter than the hold, ends with [DONE].
        ("h2", "mock-1", "done"),
    ] {
        let json = out_path(&format!("hold-early-{protocol}-{model}"), "report.json");
        let run = bench_at(
            &url,
            &format!(
                "--protocol {protocol} --streams 20 --ramp 1000 --chunks 3 \
             --chunk-delay-ms 10 --model {model} --hold 60s"
            ),
            &[("--json", &json)],
        )
        .await;
        let what = format!("{protocol} {model}");
        assert_eq!(run.code, 1, "{what}: {}\n{}", run.stdout, run.stderr);
        // These mock headers end the streams before the hold: the driver says so at the start.
        assert!(
            run.stderr.contains("warning: with --chunks 3"),
            "{}",
            run.stderr
        );
        assert!(
            run.stderr
                .contains("no stream left open: the hold ends early"),
            "{what}: {}",
            run.stderr
        );
        let report = read_json(&json);
        let s = &report["streams"];
        assert_eq!(u(&s["opened"]), 20, "{what}: {s}");
        assert_eq!(u(&s["failed"]), 0, "{what}: {s}");
        let h = &report["hold"];
        assert_eq!(u(&h["held"]), 0, "{what}: {h}");
        assert_eq!(u(&h["ended_early"]), 20, "{what}: {h}");
        assert_eq!(
            h["ended_early_by_kind"],
            serde_json::json!({ kind: 20 }),
            "{what}"
        );
        assert!(h["end_examples"][kind].is_string(), "{what}: {h}");
        assert!(h["held_s"].as_f64().unwrap() < 60.0, "{what}: {h}");
        assert!(
            run.stdout.contains(&format!("ended early {kind}")),
            "{what}: {}",
            run.stdout
        );
        assert!(
            run.stdout.contains("0 held, 20 ended early"),
            "{what}: {}",
            run.stdout
        );
    }

    // Streams that cannot open are failures to open, not early ends.
    let json = out_path("hold-429", "report.json");
    let run = bench_at(
        &url,
        "--streams 5 --ramp 1000 --model fail-429 --hold 60s --quiet",
        &[("--json", &json)],
    )
    .await;
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    assert!(
        run.stderr.contains("all open: opened=0 failed=5"),
        "{}",
        run.stderr
    );
    let report = read_json(&json);
    assert_eq!(
        report["streams"]["failed_by_kind"],
        serde_json::json!({"status_429": 5})
    );
    assert_eq!(u(&report["hold"]["ended_early"]), 0);
    assert_eq!(u(&report["hold"]["held"]), 0);
}

/// The run cap still applies in hold mode: streams still open when it passes are cancelled,
/// not held, and the run exits 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hold_mode_stops_at_the_run_cap() {
    raise_fd_limit();
    let env = start_with(MockSettings::default(), |_| {}).await;
    let url = format!("http://{}", env.gateway);
    let json = out_path("hold-cap", "report.json");
    // `hang` never answers: the streams wait for headers when the 1 s cap passes.
    let run = bench_at(
        &url,
        "--streams 5 --ramp 1000 --model hang --hold 500ms --duration 1s --quiet",
        &[("--json", &json)],
    )
    .await;
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    assert!(!run.stderr.contains("all open"), "{}", run.stderr);
    let report = read_json(&json);
    assert_eq!(report["stopped_early"], "duration_cap");
    assert_eq!(u(&report["streams"]["cancelled"]), 5);
    let h = &report["hold"];
    assert_eq!(u(&h["held"]), 0, "{h}");
    assert_eq!(h["held_s"].as_f64(), Some(0.0), "{h}");
    assert!(h["all_open_after_s"].is_null(), "{h}");
}

#[tokio::test]
async fn bad_arguments_exit_with_2() {
    // Each case's arguments, after `--url http://127.0.0.1:8080` unless they give a URL.
    for (case, needle) in [
        ("--url http://10.0.0.1:8080", "non-loopback"),
        ("--url http://example.com", "loopback"),
        ("--url ftp://127.0.0.1:8080", "http://"),
        // TLS: https:// and --ca-file go together, and the file must hold a certificate.
        ("--url https://127.0.0.1:8080", "needs --ca-file"),
        ("--ca-file /dev/null", "is for an https:// --url"),
        (
            "--url https://127.0.0.1:8080 --ca-file /nonexistent.pem",
            "--ca-file",
        ),
        (
            "--url https://127.0.0.1:8080 --ca-file /dev/null",
            "no PEM certificate",
        ),
        (
            "--url https://127.0.0.1:8080 --ca-file /dev/null --requests /healthz",
            "no PEM certificate",
        ),
        ("--streams 0", "--streams"),
        ("--protocol h3", "h3"),
        ("--duration 10", "unit"),
        ("--pid nope", "process id"),
        ("--json /nonexistent-dir/r.json", "cannot write"),
        ("--streams 100000", "open-files limit"),
        // --hold: bounded, with a unit, and it must fit in the run cap (10m by default).
        ("--hold 25h", "longer than 24h"),
        ("--hold 90", "unit"),
        ("--hold 10m", "cannot end within --duration 10m"),
        (
            "--hold 30s --duration 30s",
            "cannot end within --duration 30s",
        ),
        (
            "--streams 1000 --ramp 10 --hold 1m --duration 2m",
            "takes 100.0s",
        ),
        // Clients that go away: not in hold mode, after at least one event, stalled only with
        // a time to go away and without counting events.
        ("--drop-after-events 0", "--drop-after-events"),
        ("--drop-after-events 1 --hold 1s", "--hold"),
        ("--drop-after-ms 10 --hold 1s", "--hold"),
        ("--stall-after-headers", "--drop-after-ms"),
        (
            "--stall-after-headers --drop-after-ms 10 --drop-after-events 1",
            "--drop-after-events",
        ),
    ] {
        let mut args: Vec<&str> = case.split_whitespace().collect();
        if !case.starts_with("--url") {
            args.splice(0..0, ["--url", "http://127.0.0.1:8080"]);
        }
        if case.contains("100000") {
            // Only meaningful where the hard limit is below 100,000 sockets (20,000 here).
            let limit = tidegate::sys::raise_nofile_limit().unwrap();
            if limit.hard >= 100_064 {
                continue;
            }
        }
        let run = bench(&args).await;
        assert_eq!(run.code, 2, "{args:?}: {}", run.stderr);
        assert!(run.stderr.contains(needle), "{args:?}: {}", run.stderr);
        assert!(
            run.stdout.is_empty(),
            "{args:?}: nothing ran: {}",
            run.stdout
        );
    }
}

#[tokio::test]
async fn help_lists_the_options() {
    let run = bench(&["--help"]).await;
    assert_eq!(run.code, 0);
    for option in [
        "--url",
        "--streams",
        "--ramp",
        "--protocol",
        "--per-connection",
        "--source-addrs",
        "--chunks",
        "--chunk-delay-ms",
        "--no-mock-headers",
        "--model",
        "--api-key",
        "--duration",
        "--stream-timeout",
        "--threads",
        "--pid",
        "--json",
        "--svg",
        "--ca-file",
        "--hold",
        "--drop-after-events",
        "--drop-after-ms",
        "--stall-after-headers",
    ] {
        assert!(run.stdout.contains(option), "--help mentions {option}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_mode_counts_answers_by_status() {
    // Two requests a second per address: nearly every request of the run is a 429.
    let env = start_with(MockSettings::default(), |c| {
        c.limits.per_ip.requests_per_second = 2;
    })
    .await;
    let url = format!("http://{}", env.gateway);
    let run = bench_at(
        &url,
        "--requests /v1/chat/completions --connections 2 --duration 500ms",
        &[],
    )
    .await;
    assert_eq!(
        run.code, 0,
        "stdout:\n{}\nstderr:\n{}",
        run.stdout, run.stderr
    );
    assert!(
        run.stdout
            .starts_with("POST /v1/chat/completions on 2 keep-alive connections"),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("429="), "{}", run.stdout);
    assert!(
        run.stdout.contains("200="),
        "the burst answered: {}",
        run.stdout
    );

    let run = bench_at(
        &url,
        "--requests /healthz --connections 1 --duration 200ms",
        &[],
    )
    .await;
    assert_eq!(
        run.code, 0,
        "stdout:\n{}\nstderr:\n{}",
        run.stdout, run.stderr
    );
    assert!(run.stdout.starts_with("GET /healthz"), "{}", run.stdout);
    assert!(
        !run.stdout.contains("429"),
        "health checks are not limited: {}",
        run.stdout
    );
}

/// A test CA's PEM and a leaf for 127.0.0.1 and localhost signed by it (rcgen, ECDSA P-256),
/// written to `dir` as `ca.pem`, `cert.pem`, `key.pem`.
fn write_test_pki(dir: &Path) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, "tidegate-bench test CA");
    let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut params =
        CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, "127.0.0.1");
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    let leaf = params.signed_by(&key, &ca).unwrap();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    std::fs::write(dir.join("cert.pem"), leaf.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), key.serialize_pem()).unwrap();
}

/// `--ca-file` against the gateway terminating TLS: streams over HTTP/1.1 and HTTP/2 (ALPN),
/// clients that go away, request mode; a CA that did not sign the certificate fails every
/// stream as `tls`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_ca_file_in_every_mode() {
    raise_fd_limit();
    let json = out_path("tls", "report.json");
    let dir = json.parent().unwrap().to_owned();
    write_test_pki(&dir);
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let env = start_with(MockSettings::default(), |c| {
        c.tls.cert_file = Some(cert.to_string_lossy().into_owned());
        c.tls.key_file = Some(key.to_string_lossy().into_owned());
    })
    .await;
    let ca = dir.join("ca.pem");
    let port = env.gateway.port();

    for (url, options, streams) in [
        (
            format!("https://127.0.0.1:{port}"),
            "--streams 60 --source-addrs 4",
            60,
        ),
        (
            format!("https://localhost:{port}"),
            "--protocol h2 --per-connection 25 --streams 100",
            100,
        ),
    ] {
        let run = bench_at(
            &url,
            &format!("{options} --ramp 1000 --chunks 3 --chunk-delay-ms 20 --quiet"),
            &[("--ca-file", &ca), ("--json", &json)],
        )
        .await;
        assert_eq!(
            run.code, 0,
            "{url} {options}: {}\n{}",
            run.stdout, run.stderr
        );
        let report = read_json(&json);
        assert_clean_run(&report, streams, 3);
        let tls = report["args"]["tls"].as_str().expect("args.tls over TLS");
        let alpn = if options.contains("h2") {
            "ALPN h2"
        } else {
            "ALPN http/1.1"
        };
        assert!(tls.starts_with("TLSv1_3 ") && tls.ends_with(alpn), "{tls}");
        assert!(run.stdout.contains("over TLS (TLSv1_3"), "{}", run.stdout);
    }

    // Clients that go away, over TLS on either protocol.
    for protocol in ["http1", "h2"] {
        let run = bench_at(
            &format!("https://127.0.0.1:{port}"),
            &format!(
                "--protocol {protocol} --streams 20 --ramp 1000 --chunks 200 \
                 --chunk-delay-ms 50 --drop-after-events 2 --quiet"
            ),
            &[("--ca-file", &ca), ("--json", &json)],
        )
        .await;
        assert_eq!(run.code, 0, "{protocol}: {}\n{}", run.stdout, run.stderr);
        assert_eq!(u(&read_json(&json)["streams"]["dropped"]), 20);
    }

    // Request mode over TLS.
    let run = bench_at(
        &format!("https://127.0.0.1:{port}"),
        "--requests /healthz --connections 2 --duration 200ms",
        &[("--ca-file", &ca)],
    )
    .await;
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert!(run.stdout.contains("200="), "{}", run.stdout);

    // A CA that did not sign the gateway's certificate: every handshake fails, kind `tls`.
    let other = dir.join("other");
    std::fs::create_dir_all(&other).unwrap();
    write_test_pki(&other);
    let run = bench_at(
        &format!("https://127.0.0.1:{port}"),
        "--streams 5 --ramp 1000 --chunks 1 --chunk-delay-ms 10 --quiet",
        &[("--ca-file", &other.join("ca.pem")), ("--json", &json)],
    )
    .await;
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    let report = read_json(&json);
    assert_eq!(
        u(&report["streams"]["failed_by_kind"]["tls"]),
        5,
        "{report}"
    );
    assert_eq!(report["args"]["tls"], "no handshake completed");
    assert!(
        report["streams"]["failure_examples"]["tls"]
            .as_str()
            .unwrap()
            .contains("TLS handshake"),
        "{report}"
    );
}
