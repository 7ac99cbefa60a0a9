//! The binary as a user runs it: `--help`, `check-config`, exit code 64 on bad config, the demo
//! with no upstream and no key, JSON logs with the request span, and a clean exit on SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::common::*;
use http::StatusCode;
use tidegate::cli::DEMO_DRAIN_TIMEOUT;
use tidegate::gateway::SHUTDOWN_EVENT_GRACE;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStderr, ChildStdout, Command};

pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_tidegate");

pub(crate) fn temp_file(name: &str, contents: &str) -> PathBuf {
    let dir =
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path
}

pub(crate) async fn run(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    run_with_input(args, env, b"").await
}

/// [`run`], with `input` on the command's stdin.
pub(crate) async fn run_with_input(
    args: &[&str],
    env: &[(&str, &str)],
    input: &[u8],
) -> (i32, String, String) {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env_remove("TIDEGATE_CONFIG")
        .env_remove("RUST_LOG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    // A command that does not read its stdin may close it first: that is not a failure.
    let _ = stdin.write_all(input).await;
    drop(stdin);
    let out = tokio::time::timeout(PATIENCE, child.wait_with_output())
        .await
        .expect("command finished in time")
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn help_documents_the_commands_and_flags() {
    let (code, out, _) = run(&["--help"], &[]).await;
    assert_eq!(code, 0);
    for word in [
        "mock-upstream",
        "check-config",
        "--config",
        "--listen",
        "--admin-listen",
        "--admin-token-env",
        "--upstream",
        "--log-format",
        "TIDEGATE_CONFIG",
    ] {
        assert!(out.contains(word), "--help mentions {word}:\n{out}");
    }
    let (code, out, _) = run(&["mock-upstream", "--help"], &[]).await;
    assert_eq!(code, 0);
    assert!(out.contains("--chunks") && out.contains("--chunk-delay-ms"));
    assert!(out.contains("--h2-max-concurrent-streams"), "{out}");
}

#[tokio::test]
async fn check_config_prints_the_effective_config_with_the_key_redacted() {
    let file = temp_file(
        "valid.toml",
        "listen = \"127.0.0.1:8181\"\n[upstream]\nbase_url = \"https://api.openai.com/v1\"\napi_key_env = \"TIDEGATE_TEST_KEY\"\n[limits]\nfirst_byte_timeout = \"90s\"\n",
    );
    let (code, out, err) = run(
        &["check-config", file.to_str().unwrap()],
        &[("TIDEGATE_TEST_KEY", "sk-very-secret-value")],
    )
    .await;
    assert_eq!(code, 0, "stderr: {err}");
    assert!(out.contains("127.0.0.1:8181"));
    // Durations are printed by humantime: "90s" reads back as "1m 30s".
    assert!(out.contains("first_byte_timeout = \"1m 30s\""), "{out}");
    assert!(
        out.contains("max_stream_duration = \"30m\""),
        "defaults are shown:\n{out}"
    );
    assert!(out.contains("redacted"));
    assert!(!out.contains("sk-very-secret-value") && !err.contains("sk-very-secret-value"));
}

#[tokio::test]
async fn an_invalid_config_lists_every_error_and_exits_64() {
    let file = temp_file(
        "invalid.toml",
        "lisen = \"x\"\n[limits]\nfirst_byte_timeout = \"sixty\"\nmax_body_bytes = \"big\"\nbogus = 1\n[upstream]\nbase_url = \"ftp://example\"\n",
    );
    let (code, _, err) = run(&["check-config", file.to_str().unwrap()], &[]).await;
    assert_eq!(code, 64);
    for path in [
        "lisen",
        "limits.first_byte_timeout",
        "limits.max_body_bytes",
        "limits.bogus",
        "upstream.base_url",
    ] {
        assert!(err.contains(path), "error for {path}:\n{err}");
    }

    // Serving from it fails the same way, before anything binds; also through TIDEGATE_CONFIG.
    let (code, _, err) = run(&["--config", file.to_str().unwrap()], &[]).await;
    assert_eq!(code, 64, "{err}");
    let (code, _, err) = run(&[], &[("TIDEGATE_CONFIG", file.to_str().unwrap())]).await;
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("limits.first_byte_timeout"));

    // A key variable that is not set is a config error too, named by its key path.
    let missing = temp_file(
        "missing-key.toml",
        "[upstream]\napi_key_env = \"TIDEGATE_UNSET_KEY_VAR\"\n",
    );
    let (code, _, err) = run(&["check-config", missing.to_str().unwrap()], &[]).await;
    assert_eq!(code, 64);
    assert!(err.contains("upstream.api_key_env"), "{err}");

    let (code, _, err) = run(&["--upstream", "not a url"], &[]).await;
    assert_eq!(code, 64, "{err}");
}

#[tokio::test]
async fn check_config_prints_every_upstream_and_names_each_key() {
    let file = temp_file(
        "multi.toml",
        "[[upstreams]]\nname = \"openai\"\napi_key_env = \"TIDEGATE_TEST_KEY\"\n\
         [[upstreams]]\nname = \"local\"\nbase_url = \"http://127.0.0.1:8000/v1\"\n\
         [[routes]]\nmodels = [\"llama-70b\"]\nupstreams = [\"local\"]\nrename = { local = \"meta-llama/Llama-3.1-70B-Instruct\" }\n",
    );
    let (code, out, err) = run(
        &["check-config", file.to_str().unwrap()],
        &[("TIDEGATE_TEST_KEY", "sk-very-secret-value")],
    )
    .await;
    assert_eq!(code, 0, "stderr: {err}");
    assert!(
        out.contains("# upstream \"openai\" key: <redacted> (read from $TIDEGATE_TEST_KEY)"),
        "{out}"
    );
    assert_eq!(out.matches("[[upstreams]]").count(), 2, "{out}");
    assert!(out.contains("rename = { local = \"meta-llama/Llama-3.1-70B-Instruct\" }"));
    assert!(!out.contains("sk-very-secret-value") && !err.contains("sk-very-secret-value"));

    // A missing key is reported at its element's path.
    let (code, _, err) = run(&["check-config", file.to_str().unwrap()], &[]).await;
    assert_eq!(code, 64);
    assert!(err.contains("upstreams[0].api_key_env"), "{err}");

    // --upstream sets the single [upstream]'s URL: next to [[upstreams]] it is refused.
    let (code, _, err) = run(
        &[
            "--config",
            file.to_str().unwrap(),
            "--upstream",
            "http://127.0.0.1:9/v1",
        ],
        &[("TIDEGATE_TEST_KEY", "sk-very-secret-value")],
    )
    .await;
    assert_eq!(code, 64, "{err}");
    assert!(
        err.contains("--upstream: sets the base URL of the single [upstream]"),
        "{err}"
    );
}

#[tokio::test]
async fn an_admin_listener_off_loopback_without_a_token_exits_64() {
    // The admin API can end streams: off loopback it needs a token, checked after the flags are
    // applied and before anything binds.
    let (code, _, err) = run(
        &[
            "--upstream",
            "http://127.0.0.1:9",
            "--admin-listen",
            "0.0.0.0:0",
        ],
        &[],
    )
    .await;
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("admin.token_env"), "{err}");

    // --admin-token-env is applied too: now the named variable is what is missing.
    let (code, _, err) = run(
        &[
            "--upstream",
            "http://127.0.0.1:9",
            "--admin-listen",
            "0.0.0.0:0",
            "--admin-token-env",
            "TIDEGATE_UNSET_ADMIN_TOKEN_VAR",
        ],
        &[],
    )
    .await;
    assert_eq!(code, 64, "{err}");
    assert!(
        err.contains(
            "admin.token_env: environment variable TIDEGATE_UNSET_ADMIN_TOKEN_VAR is not set"
        ),
        "{err}"
    );
}

/// A running `tidegate` process with its output lines.
pub(crate) struct Running {
    child: Child,
    stdout: Lines<BufReader<ChildStdout>>,
    stderr: Lines<BufReader<ChildStderr>>,
}

impl Running {
    pub(crate) fn spawn(args: &[&str]) -> Running {
        let mut child = Command::new(BIN)
            .args(args)
            .env_remove("TIDEGATE_CONFIG")
            .env_remove("RUST_LOG")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        let stderr = BufReader::new(child.stderr.take().unwrap()).lines();
        Running {
            child,
            stdout,
            stderr,
        }
    }

    /// Reads stdout lines until one contains `needle`.
    pub(crate) async fn stdout_line(&mut self, needle: &str) -> String {
        next_line_matching(&mut self.stdout, "stdout", |l| l.contains(needle)).await
    }

    /// Reads stderr (log) lines until one satisfies `pred`.
    pub(crate) async fn stderr_line(&mut self, pred: impl Fn(&str) -> bool) -> String {
        next_line_matching(&mut self.stderr, "stderr", pred).await
    }

    /// Waits for the "tidegate listening" log line; the API listener's address from it.
    pub(crate) async fn listening_on(&mut self) -> SocketAddr {
        let line = self.stderr_line(|l| l.contains("tidegate listening")).await;
        let listen_at = line.find("listen=").expect("listen field") + "listen=".len();
        line[listen_at..]
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap()
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id().expect("running")
    }

    pub(crate) fn signal(&self, signal: i32) {
        let pid = self.child.id().expect("running") as i32;
        // SAFETY: kill(2) with a pid we spawned and own.
        assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
    }

    pub(crate) async fn exit_code(mut self) -> i32 {
        tokio::time::timeout(PATIENCE, self.child.wait())
            .await
            .expect("exited in time")
            .unwrap()
            .code()
            .unwrap_or(-1)
    }
}

/// The first line from `lines` that satisfies `pred`, within PATIENCE; panics if the stream
/// ends first.
async fn next_line_matching<R: tokio::io::AsyncRead + Unpin>(
    lines: &mut Lines<BufReader<R>>,
    stream: &str,
    pred: impl Fn(&str) -> bool,
) -> String {
    tokio::time::timeout(PATIENCE, async {
        // Bounded by the timeout and by the child's output ending.
        loop {
            match lines.next_line().await.unwrap() {
                Some(line) if pred(&line) => return line,
                Some(_) => continue,
                None => panic!("{stream} closed before the line we wait for"),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("a matching {stream} line within {PATIENCE:?}"))
}

pub(crate) fn addr_in(line: &str) -> SocketAddr {
    let start = line.find("http://").expect("a URL") + "http://".len();
    let rest = &line[start..];
    let end = rest
        .find(|c: char| c == '/' || c.is_whitespace())
        .unwrap_or(rest.len());
    rest[..end].parse().expect("an address")
}

#[tokio::test]
async fn the_demo_streams_from_its_own_mock_and_exits_0_on_sigterm() {
    let mut demo = Running::spawn(&["--listen", "127.0.0.1:0", "--log-format", "json"]);
    let curl = demo.stdout_line("curl -N").await;
    let gateway = addr_in(&curl);

    let mut conn = Conn::open(gateway).await;
    let response = conn
        .send(post(
            gateway,
            "/v1/chat/completions",
            &chat_body("mock-1", true),
            &[
                ("x-request-id", "demo-test-1"),
                ("x-mock-chunk-delay-ms", "0"),
            ],
        ))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["x-request-id"], "demo-test-1");
    let body = read_to_end(response.into_body()).await;
    assert_eq!(sse_data(&body).last().map(String::as_str), Some("[DONE]"));
    drop(conn);

    // One JSON log line per stream, carrying who it was for: stream id, request id, client.
    let line = demo
        .stderr_line(|l| l.contains("stream ended") && l.contains("demo-test-1"))
        .await;
    let json: serde_json::Value = serde_json::from_str(&line).expect("a JSON log line");
    assert_eq!(json["fields"]["request_id"], "demo-test-1");
    assert_eq!(json["fields"]["client"], "127.0.0.1");
    assert!(json["fields"]["stream_id"]
        .as_str()
        .unwrap()
        .starts_with("st_"));
    assert_eq!(json["fields"]["outcome"], "completed");
    assert_eq!(json["fields"]["route"], "chat_completions");

    // A Responses stream's line: its first token is its first delta (after the mock's 300 ms),
    // and its tokens come from response.completed.
    let mut conn = Conn::open(gateway).await;
    let response = conn
        .send(post(
            gateway,
            "/v1/responses",
            r#"{"model":"mock-1","stream":true,"input":"Hello"}"#,
            &[
                ("x-request-id", "demo-test-2"),
                ("x-mock-chunks", "4"),
                ("x-mock-chunk-delay-ms", "0"),
                ("x-mock-first-delay-ms", "300"),
            ],
        ))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    read_to_end(response.into_body()).await;
    drop(conn);
    let line = demo
        .stderr_line(|l| l.contains("stream ended") && l.contains("demo-test-2"))
        .await;
    let json: serde_json::Value = serde_json::from_str(&line).expect("a JSON log line");
    let fields = &json["fields"];
    assert_eq!(fields["route"], "responses", "{line}");
    assert_eq!(fields["outcome"], "completed", "{line}");
    assert!(fields["first_token_ms"].as_u64().unwrap() >= 300, "{line}");
    assert_eq!(fields["completion_tokens"], 4, "{line}");
    assert!(fields["prompt_tokens"].as_u64().unwrap() > 0, "{line}");

    demo.signal(libc::SIGTERM);
    assert_eq!(demo.exit_code().await, 0);
}

#[tokio::test]
async fn serves_an_upstream_given_by_flag_with_text_logs() {
    let env = start().await; // only its mock is used here
    let upstream = format!("http://{}/v1", env.mock);
    let mut gw = Running::spawn(&[
        "--upstream",
        &upstream,
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
    ]);
    let gateway = gw.listening_on().await;
    let (status, _, _) = fetch(post(
        gateway,
        "/v1/chat/completions",
        &chat_body("mock-1", false),
        &[],
    ))
    .await;
    assert_eq!(status, StatusCode::OK);
    gw.signal(libc::SIGINT);
    assert_eq!(gw.exit_code().await, 0);
}

#[tokio::test]
async fn the_mock_upstream_runs_on_its_own_with_its_flags() {
    let mut mock = Running::spawn(&[
        "mock-upstream",
        "--listen",
        "127.0.0.1:0",
        "--chunks",
        "3",
        "--chunk-delay-ms",
        "0",
        "--h2-max-concurrent-streams",
        "8",
    ]);
    let line = mock.stdout_line("mock upstream on").await;
    let addr = addr_in(&line);
    let (status, headers, body) = fetch(post(
        addr,
        "/v1/chat/completions",
        &chat_body("mock-1", true),
        &[],
    ))
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let data = sse_data(&body);
    // role, 3 contents, finish, [DONE]
    assert_eq!(data.len(), 6, "{data:?}");
    assert_eq!(mock_stats(addr).await.streams_completed, 1);
    mock.signal(libc::SIGTERM);
    assert_eq!(mock.exit_code().await, 0);
}

#[tokio::test]
async fn the_binary_allocates_with_mimalloc() {
    // mimalloc reports its own start-up when asked; the system allocator says nothing.
    let (code, _, err) = run(&["--version"], &[("MIMALLOC_VERBOSE", "1")]).await;
    assert_eq!(code, 0);
    assert!(err.contains("mimalloc: process init"), "stderr: {err}");
}

/// The listen backlog of a listening socket on 127.0.0.1:`port`, as `ss` reports it (Send-Q).
async fn listen_backlog_of(port: u16) -> u32 {
    let out = Command::new("ss")
        .args(["-ltnH", &format!("sport = :{port}")])
        .output()
        .await
        .expect("ss on PATH (apt-get install iproute2)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    // State Recv-Q Send-Q Local Peer: for a listener, Send-Q is the backlog.
    let line = text
        .lines()
        .find(|l| l.contains(&format!("127.0.0.1:{port} ")))
        .unwrap_or_else(|| panic!("a listener on port {port}: {text}"));
    line.split_whitespace().nth(2).unwrap().parse().unwrap()
}

#[tokio::test]
#[ignore = "needs ss (apt-get install iproute2); .ci/run installs it"]
async fn both_listeners_get_the_configured_backlog() {
    let env = start().await; // only its mock is used here
    let upstream = format!("http://{}/v1", env.mock);
    let config = temp_file("backlog.toml", "[limits]\nlisten_backlog = 333\n");
    let mut gw = Running::spawn(&[
        "--config",
        config.to_str().unwrap(),
        "--upstream",
        &upstream,
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
    ]);
    let line = gw.stderr_line(|l| l.contains("tidegate listening")).await;
    let port_after = |field: &str| -> u16 {
        let at = line.find(field).expect("the field") + field.len();
        line[at..]
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    let api = port_after("listen=127.0.0.1:");
    let admin = port_after("admin=Some(127.0.0.1:");
    // The standard library's and tokio's 128 unless the configuration's value is used.
    assert_eq!(listen_backlog_of(api).await, 333);
    assert_eq!(listen_backlog_of(admin).await, 333);
    gw.signal(libc::SIGTERM);
    assert_eq!(gw.exit_code().await, 0);
}

/// A missing environment variable is reported in the same pass as the file's other problems
/// (unknown keys, bad values), not only once they are fixed; by check-config and by serving.
#[tokio::test]
async fn a_missing_variable_is_reported_with_every_other_error() {
    let file = temp_file(
        "missing-and-bad.toml",
        "bogus = 1\n[upstream]\napi_key_env = \"TIDEGATE_UNSET_KEY_VAR\"\n\
         [limits]\nmax_body_bytes = 0\n[admin]\ntoken_env = \"TIDEGATE_UNSET_TOKEN_VAR\"\n",
    );
    for args in [
        vec!["check-config", file.to_str().unwrap()],
        vec!["--config", file.to_str().unwrap()],
    ] {
        let (code, _, err) = run(&args, &[]).await;
        assert_eq!(code, 64, "{args:?}: {err}");
        for path in [
            "bogus",
            "limits.max_body_bytes",
            "upstream.api_key_env",
            "admin.token_env",
        ] {
            assert!(err.contains(path), "{args:?}: an error for {path}:\n{err}");
        }
    }
}

/// `--forward-headers` lets the mock's per-request settings through with `--upstream`, no
/// config file needed; names are checked as `upstream.forward_headers` is.
#[tokio::test]
async fn forward_headers_by_flag_reach_the_upstream() {
    let env = start().await; // only its mock is used here
    let upstream = format!("http://{}/v1", env.mock);
    let mut gw = Running::spawn(&[
        "--upstream",
        &upstream,
        "--forward-headers",
        "x-mock-chunks, x-mock-chunk-delay-ms",
        "--listen",
        "127.0.0.1:0",
    ]);
    let gateway = gw.listening_on().await;
    let (_conn, body) = open_stream(
        gateway,
        "mock-1",
        &[("x-mock-chunks", "2"), ("x-mock-chunk-delay-ms", "1")],
    )
    .await;
    let data = sse_data(&read_to_end(body).await);
    let content = data
        .iter()
        .filter(|d| d.contains("\"content\":\"") && !d.contains("\"content\":\"\""))
        .count();
    // The mock's default is 24 chunks: only the forwarded header makes it 2.
    assert_eq!(content, 2, "{data:?}");
    gw.signal(libc::SIGTERM);
    assert_eq!(gw.exit_code().await, 0);

    let (code, _, err) = run(
        &[
            "--upstream",
            &upstream,
            "--forward-headers",
            "authorization",
        ],
        &[],
    )
    .await;
    assert_eq!(code, 64);
    assert!(err.contains("upstream.forward_headers"), "{err}");
}

/// The banner gives what the load driver's `--pid` wants and an admin URL that answers: the
/// demo has an admin listener of its own, on a free loopback port.
#[tokio::test]
async fn the_demo_banner_prints_the_pid_and_a_working_admin_url() {
    let mut demo = Running::spawn(&["--listen", "127.0.0.1:0"]);
    let pid = demo.pid();
    let pid_line = demo.stdout_line("Process id:").await;
    assert!(
        pid_line.contains(&format!("Process id: {pid} ")),
        "{pid_line}"
    );
    assert!(
        pid_line.contains(&format!("--pid tidegate={pid}")),
        "{pid_line}"
    );
    let admin_line = demo.stdout_line("Admin API:").await;
    let admin = addr_in(&admin_line);
    assert!(
        admin.ip().is_loopback() && admin.port() != 0,
        "{admin_line}"
    );
    let (status, _, summary) = fetch(get(admin, "/admin/summary")).await;
    assert_eq!(status, StatusCode::OK);
    // JSON and a final newline: `curl -s` leaves the shell prompt on a line of its own.
    assert!(summary.ends_with(b"}\n"), "{summary:?}");
    serde_json::from_slice::<serde_json::Value>(&summary).expect("JSON");
    let stop_line = demo.stdout_line("Ctrl-C").await;
    assert!(
        stop_line.contains(&format!("up to {}s", DEMO_DRAIN_TIMEOUT.as_secs())),
        "{stop_line}"
    );
    demo.signal(libc::SIGTERM);
    assert_eq!(demo.exit_code().await, 0);
}

/// The drain notice: the terminal's one plain line among the JSON logs on the first Ctrl-C.
fn is_drain_notice(line: &str) -> bool {
    line.starts_with("tidegate: shutting down:")
}

/// Ctrl-C in the demo says on stderr how many streams drain, for how long at most and how to
/// quit at once (also with JSON logs), and the demo exits within its short drain: a stream far
/// longer than it gets its final `server_shutdown` event instead of a 30 s wait.
#[tokio::test]
async fn ctrl_c_in_the_demo_says_what_drains_and_exits_within_the_short_drain() {
    let mut demo = Running::spawn(&["--listen", "127.0.0.1:0", "--log-format", "json"]);
    let gateway = addr_in(&demo.stdout_line("curl -N").await);
    // 24 chunks a second apart: longer than the demo's drain.
    let (conn, mut body) =
        open_stream(gateway, "mock-1", &[("x-mock-chunk-delay-ms", "1000")]).await;
    read_until(&mut body, |b| !sse_data(b).is_empty()).await;
    let reader = tokio::spawn(async move {
        let _conn = conn;
        read_to_end(body).await
    });

    let signalled = Instant::now();
    demo.signal(libc::SIGINT);
    let notice = demo.stderr_line(is_drain_notice).await;
    assert!(notice.contains("1 stream draining"), "{notice}");
    assert!(
        notice.contains(&format!("at most {}s", DEMO_DRAIN_TIMEOUT.as_secs())),
        "{notice}"
    );
    assert!(notice.contains("Ctrl-C again to quit at once"), "{notice}");

    assert_eq!(demo.exit_code().await, 0);
    let took = signalled.elapsed();
    // The drain, the final events' grace, and room for a loaded machine.
    let bound = DEMO_DRAIN_TIMEOUT + SHUTDOWN_EVENT_GRACE + Duration::from_secs(2);
    assert!(
        took < bound,
        "exited {took:?} after the signal, not within {bound:?}"
    );
    let rest = reader.await.unwrap();
    assert_eq!(final_error(&rest)["code"], "server_shutdown");
}

/// A second Ctrl-C during the demo's drain quits at once with 130, saying so.
#[tokio::test]
async fn a_second_ctrl_c_in_the_demo_quits_at_once() {
    let mut demo = Running::spawn(&["--listen", "127.0.0.1:0"]);
    let gateway = addr_in(&demo.stdout_line("curl -N").await);
    let (_conn, mut body) =
        open_stream(gateway, "mock-1", &[("x-mock-chunk-delay-ms", "1000")]).await;
    read_until(&mut body, |b| !sse_data(b).is_empty()).await;

    demo.signal(libc::SIGINT);
    demo.stderr_line(is_drain_notice).await;
    let second = Instant::now();
    // The listener was installed at start and stays: this signal cannot be lost.
    demo.signal(libc::SIGINT);
    demo.stderr_line(|l| l.starts_with("tidegate: second signal"))
        .await;
    assert_eq!(demo.exit_code().await, 130);
    let took = second.elapsed();
    assert!(
        took < DEMO_DRAIN_TIMEOUT,
        "at once, not at the end of the drain ({took:?})"
    );
}
