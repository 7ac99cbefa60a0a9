//! The real binary at its open-files limit: it keeps running, warns once (not on every retry),
//! and serves again as soon as descriptors free up. The gateway and the mock upstream share one
//! accept loop; both are run here with a tiny `RLIMIT_NOFILE`.

use std::ffi::OsStr;
use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use crate::common::*;
use tidegate::mock::{MockSettings, MockUpstream};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, Lines as LineReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, ChildStderr, Command};
use tokio_util::sync::CancellationToken;

const BIN: &str = env!("CARGO_BIN_EXE_tidegate");

/// Soft and hard open-files limit of the gateway under test: room for its own descriptors
/// (stdio, epoll, listeners, upstream connections) and a few clients, not for `HELD`.
const NOFILE: u64 = 48;
/// Client connections opened and held to exhaust the gateway's descriptors.
const HELD: usize = 60;
/// How long the gateway is kept at its limit: many accept retries (one every 50 ms).
const AT_LIMIT_FOR: Duration = Duration::from_millis(600);

#[cfg(target_os = "linux")]
#[tokio::test]
async fn at_the_open_files_limit_the_gateway_warns_once_and_recovers() {
    let mock_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mock = mock_listener.local_addr().unwrap();
    let mock_stop = CancellationToken::new();
    tokio::spawn(
        MockUpstream::new(MockSettings::default()).serve(mock_listener, mock_stop.clone()),
    );

    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("fd-limit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:0\"\nworker_threads = 1\n\n[upstream]\n\
             base_url = \"http://{mock}/v1\"\nhttp2 = true\n\n[shutdown]\ndrain_timeout = \"1s\"\n\n\
             [limits]\nmax_connections = 1000\n"
        ),
    )
    .unwrap();

    let mut child = spawn_limited(&["--config".as_ref(), config.as_os_str()], Stdio::null());
    let mut lines = Lines::of(&mut child);
    let mut log = Vec::new();
    let gateway = listening_on(&mut lines, &mut log).await;
    // A cap set above what 48 descriptors allow is taken, with a warning; past the
    // descriptors, accept fails, which this test is about.
    let warning = lines
        .next_matching(&mut log, &|l| {
            l.contains("more than the open-files limit leaves room")
        })
        .await;
    assert!(warning.contains("max_connections=1000"), "{warning}");
    // A stream works before the limit is reached (this also opens the upstream connection).
    streams_all_complete(gateway, 1).await;

    exhaust_descriptors(gateway, &mut lines, &mut log).await;
    tokio::time::timeout(PATIENCE, streams_all_complete(gateway, 1))
        .await
        .expect("served again once descriptors are free");

    // A clean drain and exit; then every log line is in.
    sigterm(&child);
    lines
        .next_matching(&mut log, &|l| l.contains("shutdown complete"))
        .await;
    exits_with_0(&mut child).await;
    assert_one_accept_warning(&log);
    mock_stop.cancel();
}

/// The gateway's address, from its "listening" line.
async fn listening_on(lines: &mut Lines, log: &mut Vec<String>) -> SocketAddr {
    let listening = lines
        .next_matching(log, &|l| l.contains("tidegate listening"))
        .await;
    let at = listening.find("listen=").expect("listen field") + "listen=".len();
    listening[at..]
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

/// Open-files limit of the gateway in the derived-cap test: 600 − (128 + 258 for its one worker)
/// leaves 214, half of it for upstream sockets: a cap of 107 client connections.
const NOFILE_FOR_DERIVED_CAP: u64 = 600;
const DERIVED_CAP: usize = 107;

#[cfg(target_os = "linux")]
#[tokio::test]
async fn past_the_cap_derived_from_the_open_files_limit_clients_get_503_instead_of_waiting() {
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("fd-derived-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("gateway.toml");
    std::fs::write(
        &config,
        "listen = \"127.0.0.1:0\"\nworker_threads = 1\n\n[upstream]\n\
         base_url = \"http://127.0.0.1:9/v1\"\n",
    )
    .unwrap();
    let mut child = spawn_with_nofile(
        &["--config".as_ref(), config.as_os_str()],
        Stdio::null(),
        NOFILE_FOR_DERIVED_CAP,
    );
    let mut lines = Lines::of(&mut child);
    let mut log = Vec::new();
    let gateway = listening_on(&mut lines, &mut log).await;
    let derived = lines
        .next_matching(&mut log, &|l| l.contains("client connection cap derived"))
        .await;
    assert!(
        derived.contains(&format!("max_connections={DERIVED_CAP}")),
        "{derived}"
    );
    let request = format!("GET /healthz HTTP/1.1\r\nhost: {gateway}\r\n\r\n");
    let mut held = Vec::with_capacity(DERIVED_CAP);
    for _ in 0..DERIVED_CAP {
        let mut socket = TcpStream::connect(gateway).await.unwrap();
        socket.write_all(request.as_bytes()).await.unwrap();
        let mut buf = [0u8; 512];
        let n = tokio::time::timeout(PATIENCE, socket.read(&mut buf))
            .await
            .expect("served below the cap")
            .unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
        held.push(socket);
    }
    // Past the cap: an answer at once, not a wait in the backlog.
    for _ in 0..10 {
        let mut socket = TcpStream::connect(gateway).await.unwrap();
        socket.write_all(request.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        tokio::time::timeout(PATIENCE, socket.read_to_end(&mut answer))
            .await
            .expect("refused at once")
            .unwrap();
        assert!(
            answer.starts_with(b"HTTP/1.1 503"),
            "{}",
            String::from_utf8_lossy(&answer)
        );
    }
    drop(held);
    sigterm(&child);
    exits_with_0(&mut child).await;
}

/// Holds `HELD` connections to `addr`, so the child runs out of descriptors (the kernel
/// completes the handshakes, the child cannot accept); checks its warning; keeps it at its
/// limit for a dozen accept retries; then lets the connections go.
async fn exhaust_descriptors(addr: SocketAddr, lines: &mut Lines, log: &mut Vec<String>) {
    let mut held = Vec::with_capacity(HELD);
    for _ in 0..HELD {
        held.push(TcpStream::connect(addr).await.unwrap());
    }
    let warning = lines
        .next_matching(log, &|l| l.contains("accept failed"))
        .await;
    assert!(warning.contains("Too many open files"), "{warning}");
    tokio::time::sleep(AT_LIMIT_FOR).await;
    drop(held);
}

/// One "accept failed" warning for the whole episode, not one per retry.
fn assert_one_accept_warning(log: &[String]) {
    let warnings = log.iter().filter(|l| l.contains("accept failed")).count();
    assert_eq!(
        warnings,
        1,
        "one warning for the whole episode:\n{}",
        log.join("\n")
    );
}

/// The binary with `args`, its stdout to `stdout`, stderr piped, under `NOFILE` open files.
fn spawn_limited(args: &[&OsStr], stdout: Stdio) -> Child {
    spawn_with_nofile(args, stdout, NOFILE)
}

/// The binary with `args`, its stdout to `stdout`, stderr piped, under `nofile` open files.
fn spawn_with_nofile(args: &[&OsStr], stdout: Stdio, nofile: u64) -> Child {
    let mut command = Command::new(BIN);
    command
        .args(args)
        .env_remove("RUST_LOG")
        .stdout(stdout)
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    // SAFETY: setrlimit is async-signal-safe and touches only the struct we pass.
    unsafe {
        command.pre_exec(move || {
            let limit = libc::rlimit {
                rlim_cur: nofile,
                rlim_max: nofile,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    command.spawn().unwrap()
}

/// A child's log lines, read with a deadline.
struct Lines(LineReader<BufReader<ChildStderr>>);

impl Lines {
    fn of(child: &mut Child) -> Lines {
        Lines(BufReader::new(child.stderr.take().unwrap()).lines())
    }

    /// Reads lines into `log` until one matches `pred`; panics after `PATIENCE`.
    async fn next_matching(
        &mut self,
        log: &mut Vec<String>,
        pred: &dyn Fn(&str) -> bool,
    ) -> String {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        // Bounded by the deadline.
        loop {
            let line = tokio::time::timeout_at(deadline, self.0.next_line())
                .await
                .expect("the line in time")
                .unwrap()
                .expect("stderr still open");
            log.push(line.clone());
            if pred(&line) {
                return line;
            }
        }
    }
}

fn sigterm(child: &Child) {
    // SAFETY: kill(2) on the child we spawned.
    assert_eq!(
        unsafe { libc::kill(child.id().expect("running") as i32, libc::SIGTERM) },
        0
    );
}

async fn exits_with_0(child: &mut Child) {
    let status = tokio::time::timeout(PATIENCE, child.wait())
        .await
        .expect("exited in time")
        .unwrap();
    assert_eq!(status.code(), Some(0));
}

#[cfg(target_os = "linux")]
#[tokio::test]
async fn at_the_open_files_limit_the_mock_upstream_warns_once_and_recovers() {
    let mut child = spawn_limited(
        &[
            "mock-upstream".as_ref(),
            "--listen".as_ref(),
            "127.0.0.1:0".as_ref(),
        ],
        Stdio::piped(),
    );
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    let banner = tokio::time::timeout(PATIENCE, stdout.next_line())
        .await
        .expect("the banner in time")
        .unwrap()
        .expect("stdout open");
    let mock: SocketAddr = banner
        .split("http://")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .expect("the address in the banner")
        .parse()
        .unwrap();
    let mut lines = Lines::of(&mut child);
    let mut log = Vec::new();
    assert_eq!(mock_stats(mock).await.connections_accepted, 1);

    exhaust_descriptors(mock, &mut lines, &mut log).await;
    tokio::time::timeout(PATIENCE, mock_stats(mock))
        .await
        .expect("served again once descriptors are free");
    sigterm(&child);
    exits_with_0(&mut child).await;
    // Every line the mock wrote is in once it has exited.
    let _ = tokio::time::timeout(PATIENCE, async {
        while let Ok(Some(line)) = lines.0.next_line().await {
            log.push(line);
        }
    })
    .await;
    assert_one_accept_warning(&log);
}
