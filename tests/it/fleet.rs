//! A fleet behind the shipped nginx configuration (`deploy/nginx/`), with real processes: two
//! `tidegate` binaries started from the shipped `deploy/tidegate.toml`, the built-in mock as
//! their upstream, and nginx in front, all on loopback. The shipped files are rendered by
//! replacing only what a test on one machine must (ports, file paths); each replaced text must
//! be there exactly once, so a test that passes ran the settings we ship.
//!
//! Clients come from several loopback addresses (127.0.0.x) so that nginx's
//! `hash $remote_addr consistent` spreads them over both instances.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tidegate::mock::{MockSettings, MockUpstream};
use tokio::net::{TcpListener, TcpSocket};
use tokio::process::{Child, Command};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::common::*;
use crate::deploy::{production_config, read};

const BIN: &str = env!("CARGO_BIN_EXE_tidegate");
const ADMIN_TOKEN: &str = "fleet-test-admin-token-0123456789";
/// nginx leaves an instance that failed out for this long (`fail_timeout` in tidegate.conf): a
/// restarted instance gets traffic again within it.
const NGINX_FAIL_TIMEOUT: Duration = Duration::from_secs(5);

/// `text` with every `from` replaced by `to`; `from` must occur exactly `count` times.
fn replace_each(text: &str, from: &str, to: &str, count: usize, file: &str) -> String {
    assert_eq!(
        text.matches(from).count(),
        count,
        "{file} should contain `{from}` {count} times: the test renders the shipped file by \
         replacing it"
    );
    text.replace(from, to)
}

/// A new empty directory for one test's files.
fn scratch_dir(name: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let dir = std::env::temp_dir().join(format!(
        "tidegate-fleet-{name}-{}-{nanos}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The instances' ids (`--instance-id`), as the shipped nginx config maps them to its
/// `tidegate_instance_a` and `tidegate_instance_b` blocks: the first and second server.
const INSTANCE_IDS: [&str; 2] = ["a", "b"];

/// A port free on 127.0.0.1 when asked (nginx is given ports, it cannot report the one it got).
async fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap().port()
}

/// One `tidegate` process; killed if the test ends before it does.
struct Instance {
    child: Child,
    api: SocketAddr,
    admin: SocketAddr,
    log: PathBuf,
}

impl Instance {
    /// Starts the binary with `config`, the API on `listen` (port 0: any), the admin listener on
    /// any loopback port and `mock` as the upstream, and waits until it is ready.
    async fn start(
        config: &Path,
        id: &str,
        listen: SocketAddr,
        mock: SocketAddr,
        log: PathBuf,
    ) -> Instance {
        let stderr = std::fs::File::create(&log).unwrap();
        let child = Command::new(BIN)
            .arg("--config")
            .arg(config)
            .args(["--instance-id", id])
            .args(["--listen", &listen.to_string()])
            .args(["--admin-listen", "127.0.0.1:0"])
            .args(["--upstream", &format!("http://{mock}/v1")])
            .env_remove("TIDEGATE_CONFIG")
            .env_remove("RUST_LOG")
            .env("TIDEGATE_ADMIN_TOKEN", ADMIN_TOKEN)
            // The shipped config names the upstream key's variable; the mock ignores the key.
            .env("OPENAI_API_KEY", "sk-fleet-test-key")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let (api, admin) = wait_for("the instance's listening line", PATIENCE, || {
            let log = log.clone();
            async move { listening_line(&log) }
        })
        .await;
        let instance = Instance {
            child,
            api,
            admin,
            log,
        };
        wait_for("the instance to be ready", PATIENCE, || async {
            (instance.readyz().await == StatusCode::OK).then_some(())
        })
        .await;
        instance
    }

    async fn readyz(&self) -> StatusCode {
        fetch(get(self.admin, "/readyz")).await.0
    }

    /// An admin API answer (the shipped config sets `admin.token_env`).
    async fn admin_json(&self, path: &str) -> Value {
        let mut request = get(self.admin, path);
        request.headers_mut().insert(
            http::header::AUTHORIZATION,
            format!("Bearer {ADMIN_TOKEN}").parse().unwrap(),
        );
        let (status, _, json) = fetch_json(request).await;
        assert_eq!(status, StatusCode::OK, "{path}: {json}");
        json
    }

    /// Live streams of client address `ip` on this instance.
    async fn streams_of(&self, ip: Ipv4Addr) -> u64 {
        self.admin_json(&format!("/admin/streams?ip={ip}")).await["matched"]
            .as_u64()
            .unwrap()
    }

    fn terminate(&self) {
        let pid = self.child.id().expect("running") as i32;
        // SAFETY: kill(2) on a child we spawned and have not reaped.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    }

    async fn exit_code(&mut self, within: Duration) -> i32 {
        tokio::time::timeout(within, self.child.wait())
            .await
            .expect("the instance exited in time")
            .unwrap()
            .code()
            .unwrap_or(-1)
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// The API and admin addresses from the "tidegate listening" log line (JSON logs, as shipped).
fn listening_line(log: &Path) -> Option<(SocketAddr, SocketAddr)> {
    let text = std::fs::read_to_string(log).ok()?;
    let line = text.lines().find(|l| l.contains("tidegate listening"))?;
    let json: Value = serde_json::from_str(line).ok()?;
    let fields = &json["fields"];
    let api = fields["listen"].as_str()?.parse().ok()?;
    // `admin` is logged as an Option: "Some(127.0.0.1:port)".
    let admin = fields["admin"].as_str()?;
    let admin = admin
        .strip_prefix("Some(")?
        .strip_suffix(')')?
        .parse()
        .ok()?;
    Some((api, admin))
}

/// nginx run from the shipped configuration; stopped (SIGTERM to its master) on drop.
struct Nginx {
    child: Child,
    addr: SocketAddr,
    dir: PathBuf,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        if let Some(pid) = self.child.id() {
            // SAFETY: kill(2) on a child we spawned. TERM, not KILL: the master stops its
            // workers, which a KILLed master would leave running.
            unsafe { libc::kill(pid as i32, libc::SIGTERM) };
        }
    }
}

impl Nginx {
    /// Renders deploy/nginx/ into `dir` with `instances` as the upstream servers, checks it with
    /// `nginx -t`, and starts nginx.
    async fn start(dir: &Path, instances: [SocketAddr; 2]) -> Nginx {
        let port = free_port().await;
        let d = dir.display();
        let mut main = read("deploy/nginx/nginx.conf");
        for (from, to) in [
            ("pid /run/nginx.pid;", format!("pid {d}/nginx.pid;")),
            (
                "error_log /var/log/nginx/error.log warn;",
                format!("error_log {d}/error.log info;"),
            ),
            (
                "access_log /var/log/nginx/access.log;",
                format!("access_log {d}/access.log;"),
            ),
            // Everything nginx may write goes under the test's directory.
            (
                "http {",
                format!(
                    "http {{\n    client_body_temp_path {d}/client_body;\n    \
                     proxy_temp_path {d}/proxy;\n    fastcgi_temp_path {d}/fastcgi;\n    \
                     uwsgi_temp_path {d}/uwsgi;\n    scgi_temp_path {d}/scgi;"
                ),
            ),
        ] {
            main = replace_each(&main, from, &to, 1, "deploy/nginx/nginx.conf");
        }
        // SAFETY: geteuid(2) has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            // Only root can switch users; nginx would warn and carry on as this user anyway.
            main = replace_each(&main, "user www-data;", "", 1, "deploy/nginx/nginx.conf");
        }
        let mut site = read("deploy/nginx/tidegate.conf");
        // Each instance is in both upstream blocks (the second without failure accounting),
        // and in its own block for resumes.
        for (i, shipped_addr) in ["127.0.0.1:8081 ", "127.0.0.1:8082 "].iter().enumerate() {
            site = replace_each(
                &site,
                &format!("server {shipped_addr}"),
                &format!("server {} ", instances[i]),
                3,
                "deploy/nginx/tidegate.conf",
            );
        }
        for (from, to) in [
            (
                "listen 8080 backlog=4096;",
                format!("listen 127.0.0.1:{port} backlog=4096;"),
            ),
            (
                "access_log /var/log/nginx/tidegate.access.log tidegate;",
                format!("access_log {d}/tidegate.access.log tidegate;"),
            ),
        ] {
            site = replace_each(&site, from, &to, 1, "deploy/nginx/tidegate.conf");
        }
        let conf = dir.join("nginx.conf");
        std::fs::write(&conf, main).unwrap();
        std::fs::write(dir.join("tidegate.conf"), site).unwrap();

        let error_log = dir.join("startup-error.log");
        let test = Command::new("nginx")
            .arg("-t")
            .arg("-c")
            .arg(&conf)
            .arg("-e")
            .arg(&error_log)
            .output()
            .await
            .expect("nginx on PATH (apt-get install nginx)");
        let said = String::from_utf8_lossy(&test.stderr).into_owned();
        assert!(test.status.success(), "nginx -t failed: {said}");
        assert!(said.contains("test is successful"), "nginx -t: {said}");

        let child = Command::new("nginx")
            .arg("-c")
            .arg(&conf)
            .arg("-e")
            .arg(&error_log)
            .args(["-g", "daemon off;"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nginx starts");
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let nginx = Nginx {
            child,
            addr,
            dir: dir.to_owned(),
        };
        wait_for("nginx to listen", PATIENCE, || async {
            tokio::net::TcpStream::connect(addr).await.ok().map(|_| ())
        })
        .await;
        nginx
    }

    /// The shipped `tidegate` access log's lines: (client address, status, upstream addresses).
    fn access_log(&self) -> Vec<(String, String, String)> {
        let text =
            std::fs::read_to_string(self.dir.join("tidegate.access.log")).unwrap_or_default();
        text.lines()
            .map(|line| {
                let mut words = line.split_whitespace();
                let client = words.next().unwrap_or_default().to_owned();
                let status = line
                    .split('"')
                    .nth(2)
                    .and_then(|after| after.split_whitespace().next())
                    .unwrap_or_default()
                    .to_owned();
                let upstream = line
                    .split(" upstream=")
                    .nth(1)
                    .map(|rest| rest.split(" ust=").next().unwrap_or_default().to_owned())
                    .unwrap_or_default();
                (client, status, upstream)
            })
            .collect()
    }

    fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default()
    }
}

/// The mock upstream, two instances of the shipped tidegate.toml (changed by `adjust`) and
/// nginx from the shipped files.
struct Fleet {
    dir: PathBuf,
    config: PathBuf,
    mock: SocketAddr,
    mock_stop: CancellationToken,
    instances: Vec<Instance>,
    nginx: Nginx,
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.mock_stop.cancel();
    }
}

impl Fleet {
    async fn start(name: &str, mock: MockSettings, adjust: impl FnOnce(String) -> String) -> Fleet {
        let dir = scratch_dir(name);
        let mock_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mock_addr = mock_listener.local_addr().unwrap();
        let mock_stop = CancellationToken::new();
        tokio::spawn(MockUpstream::new(mock).serve(mock_listener, mock_stop.clone()));

        let config = dir.join("tidegate.toml");
        std::fs::write(&config, adjust(read("deploy/tidegate.toml"))).unwrap();
        let mut instances = Vec::new();
        for (i, id) in INSTANCE_IDS.into_iter().enumerate() {
            let log = dir.join(format!("tidegate-{i}-start-0.log"));
            let any_port = SocketAddr::from(([127, 0, 0, 1], 0));
            instances.push(Instance::start(&config, id, any_port, mock_addr, log).await);
        }
        let nginx = Nginx::start(&dir, [instances[0].api, instances[1].api]).await;
        Fleet {
            dir,
            config,
            mock: mock_addr,
            mock_stop,
            instances,
            nginx,
        }
    }

    /// Which instance has a live stream of client address `ip` (None: neither).
    async fn serving(&self, ip: Ipv4Addr) -> Option<usize> {
        for (i, instance) in self.instances.iter().enumerate() {
            if instance.streams_of(ip).await > 0 {
                return Some(i);
            }
        }
        None
    }
}

/// The loopback client address 127.0.0.`n`.
fn client(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, n)
}

/// An HTTP/1.1 connection to `to` from the client address `from`.
async fn connect_from(
    from: Ipv4Addr,
    to: SocketAddr,
) -> hyper::client::conn::http1::SendRequest<Full<Bytes>> {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::from((from, 0))).unwrap();
    let stream = socket.connect(to).await.unwrap();
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    sender
}

/// Sends `request` on a new connection from `from`; the response head and its body.
async fn send_from(
    from: Ipv4Addr,
    to: SocketAddr,
    request: Request<Full<Bytes>>,
) -> http::Response<Incoming> {
    let mut sender = connect_from(from, to).await;
    tokio::time::timeout(PATIENCE, sender.send_request(request))
        .await
        .expect("response headers in time")
        .expect("a response")
}

/// Starts a chat stream from `from` through nginx: its status and body.
async fn stream_from(from: Ipv4Addr, nginx: SocketAddr) -> (StatusCode, Incoming) {
    let response = send_from(
        from,
        nginx,
        post(
            nginx,
            "/v1/chat/completions",
            &chat_body("mock-1", true),
            &[],
        ),
    )
    .await;
    (response.status(), response.into_body())
}

/// Reads a stream to its end and checks that it completed: `[DONE]` last, no error event.
async fn assert_completes(what: &str, body: Incoming) {
    let bytes = read_to_end(body).await;
    let data = sse_data(&bytes);
    assert_eq!(
        data.last().map(String::as_str),
        Some("[DONE]"),
        "{what}: the stream should end with [DONE]: {}",
        String::from_utf8_lossy(&bytes)
    );
    assert!(
        !data.iter().any(|d| d.contains("\"error\"")),
        "{what}: an error event: {}",
        String::from_utf8_lossy(&bytes)
    );
}

/// Requirement 4, first half. Streams flow through nginx to both instances; one instance gets
/// SIGTERM with streams in flight. Its streams finish (the drain); streams and requests from its
/// clients that start meanwhile go to the other instance, every one answered 200 and complete
/// (none lost to the instance's closing listener or to nginx's kept-alive connections to it);
/// it exits 0; restarted on the same port, it takes its clients' traffic again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs nginx (apt-get install nginx); .ci/run installs it"]
async fn a_drained_instance_behind_nginx_finishes_its_streams_while_the_other_takes_new_ones() {
    // Streams of 2 s: long enough to be in flight at the signal, short for the drain.
    let mock = MockSettings {
        chunks: 10,
        chunk_delay: Duration::from_millis(200),
        ..MockSettings::default()
    };
    let mut fleet = Fleet::start("drain", mock, |toml| toml).await;
    let nginx = fleet.nginx.addr;

    // One stream from each of 20 client addresses; nginx's hash spreads them.
    let sources: Vec<Ipv4Addr> = (2..22).map(client).collect();
    let mut in_flight = Vec::new();
    for &source in &sources {
        let (status, body) = stream_from(source, nginx).await;
        assert_eq!(status, StatusCode::OK);
        in_flight.push((source, body));
    }
    let mut home = Vec::new();
    for &source in &sources {
        let at = fleet.serving(source).await;
        home.push((source, at.expect("the stream is live on one instance")));
    }
    let on = |i: usize| -> Vec<Ipv4Addr> {
        home.iter()
            .filter(|(_, at)| *at == i)
            .map(|(s, _)| *s)
            .collect()
    };
    let (drained, other) = (0, 1);
    let drained_clients = on(drained);
    assert!(
        !drained_clients.is_empty() && !on(other).is_empty(),
        "nginx's hash should spread 20 addresses over both instances: {home:?}"
    );

    // Idle kept-alive connections from nginx to the instance about to drain, which it closes
    // when the drain starts: a request nginx sends on one of them must still be answered.
    for &source in &drained_clients {
        let response = send_from(source, nginx, get(nginx, "/v1/models")).await;
        assert_eq!(response.status(), StatusCode::OK);
        let _ = response.into_body().collect().await;
    }

    fleet.instances[drained].terminate();
    wait_for(
        "the drained instance's /readyz to fail",
        PATIENCE,
        || async {
            (fleet.instances[drained].readyz().await == StatusCode::SERVICE_UNAVAILABLE)
                .then_some(())
        },
    )
    .await;

    // New work from the drained instance's clients while its streams run: two streams and a
    // request each, at once. Every one goes to the other instance and completes.
    let mut new_work = JoinSet::new();
    for &source in &drained_clients {
        for _ in 0..2 {
            new_work.spawn(async move {
                let (status, body) = stream_from(source, nginx).await;
                (source, status, Some(body))
            });
        }
        new_work.spawn(async move {
            let response = send_from(source, nginx, get(nginx, "/v1/models")).await;
            let status = response.status();
            let _ = response.into_body().collect().await;
            (source, status, None)
        });
    }
    let mut new_streams = Vec::new();
    while let Some(done) = new_work.join_next().await {
        let (source, status, body) = done.unwrap();
        assert_eq!(
            status,
            StatusCode::OK,
            "new work from {source} during the drain"
        );
        if let Some(body) = body {
            new_streams.push((source, body));
        }
    }
    for &source in &drained_clients {
        assert!(
            fleet.instances[other].streams_of(source).await > 0,
            "{source}'s new stream should run on the other instance"
        );
    }

    // The drained instance's own streams finish, and it exits 0 once they have.
    for (source, body) in in_flight {
        assert_completes(&format!("the stream from {source}"), body).await;
    }
    for (source, body) in new_streams {
        assert_completes(&format!("the new stream from {source}"), body).await;
    }
    assert_eq!(fleet.instances[drained].exit_code(PATIENCE).await, 0);
    let log = fleet.instances[drained].log_text();
    assert!(
        log.contains("\"outcome\":\"completed\"")
            && !log.contains("\"outcome\":\"server_shutdown\""),
        "streams complete; none may reach the drain deadline: {log}"
    );

    // Restarted on the same port, it gets its clients back once nginx tries it again.
    let log = fleet.dir.join(format!("tidegate-{drained}-start-1.log"));
    let port = fleet.instances[drained].api;
    fleet.instances[drained] =
        Instance::start(&fleet.config, INSTANCE_IDS[drained], port, fleet.mock, log).await;
    let restarted = &fleet.instances[drained];
    let source = drained_clients[0];
    let started = Instant::now();
    let tries = std::cell::Cell::new(0);
    wait_for(
        "nginx to send the restarted instance its clients again",
        NGINX_FAIL_TIMEOUT + PATIENCE,
        || async {
            tries.set(tries.get() + 1);
            let (status, body) = stream_from(source, nginx).await;
            assert_eq!(
                status,
                StatusCode::OK,
                "a stream while the instance restarts"
            );
            let here = restarted.streams_of(source).await > 0;
            assert_completes("a stream after the restart", body).await;
            here.then_some(())
        },
    )
    .await;
    eprintln!(
        "the restarted instance took traffic again after {:?} ({} streams)",
        started.elapsed(),
        tries.get()
    );

    // Nothing lost on the way: every request nginx logged was answered 200.
    let log = fleet.nginx.access_log();
    assert!(!log.is_empty());
    let failed: Vec<_> = log
        .iter()
        .filter(|(_, status, _)| status != "200")
        .collect();
    assert!(failed.is_empty(), "answers other than 200: {failed:?}");
    eprintln!(
        "nginx error log (retries show here):\n{}",
        fleet.nginx.error_log()
    );
}

/// Requirement 4, second half: per-address limits stay exact through nginx with two instances,
/// because each address always reaches the same instance (`hash $remote_addr consistent`) and
/// the instances limit the client's address, not nginx's (`client_ip.trusted_proxies`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs nginx (apt-get install nginx); .ci/run installs it"]
async fn per_address_limits_hold_exactly_through_nginx_with_two_instances() {
    const MAX_STREAMS: usize = 2;
    const BURST: usize = 4;
    // Streams of 3 s: all of an address's streams are live together.
    let mock = MockSettings {
        chunks: 10,
        chunk_delay: Duration::from_millis(300),
        ..MockSettings::default()
    };
    let fleet = Fleet::start("limits", mock, |toml| {
        let file = "deploy/tidegate.toml";
        let toml = replace_each(
            &toml,
            "\nmax_streams = 20\n",
            "\nmax_streams = 2\n",
            1,
            file,
        );
        let toml = replace_each(&toml, "\nburst = 20\n", "\nburst = 4\n", 1, file);
        replace_each(
            &toml,
            "\nrequests_per_second = 5\n",
            "\nrequests_per_second = 1\n",
            1,
            file,
        )
    })
    .await;
    let nginx = fleet.nginx.addr;

    // Stream slots: each of 12 addresses asks for one more stream than its cap, all at once.
    let stream_clients: Vec<Ipv4Addr> = (2..14).map(client).collect();
    let mut asks = JoinSet::new();
    for &source in &stream_clients {
        for _ in 0..=MAX_STREAMS {
            asks.spawn(async move {
                let response = send_from(
                    source,
                    nginx,
                    post(
                        nginx,
                        "/v1/chat/completions",
                        &chat_body("mock-1", true),
                        &[],
                    ),
                )
                .await;
                let status = response.status();
                // Held open until every ask is answered, so the admitted ones are all live.
                (source, status, response.into_body())
            });
        }
    }
    let mut answers = Vec::new();
    while let Some(answer) = asks.join_next().await {
        answers.push(answer.unwrap());
    }
    for &source in &stream_clients {
        let mine: Vec<_> = answers.iter().filter(|(s, _, _)| *s == source).collect();
        let admitted = mine
            .iter()
            .filter(|(_, st, _)| *st == StatusCode::OK)
            .count();
        let refused = mine
            .iter()
            .filter(|(_, st, _)| *st == StatusCode::TOO_MANY_REQUESTS)
            .count();
        assert_eq!(
            (admitted, refused),
            (MAX_STREAMS, 1),
            "{source}: exactly limits.per_ip.max_streams streams, one refusal"
        );
    }
    for (source, status, body) in answers {
        if status == StatusCode::TOO_MANY_REQUESTS {
            let bytes = body.collect().await.unwrap().to_bytes();
            let json: Value = serde_json::from_slice(&bytes).unwrap();
            assert_eq!(
                json["error"]["code"], "too_many_streams",
                "{source}: {json}"
            );
        }
    }

    // Request rate: each of 12 other addresses sends twice its burst, back to back on one
    // connection. An address gets its burst and no more (plus one per second the sending
    // took, the refill of requests_per_second = 1).
    let rate_clients: Vec<Ipv4Addr> = (14..26).map(client).collect();
    let mut senders = JoinSet::new();
    for &source in &rate_clients {
        senders.spawn(async move {
            let mut sender = connect_from(source, nginx).await;
            let started = Instant::now();
            let mut admitted = 0;
            for _ in 0..2 * BURST {
                let response =
                    tokio::time::timeout(PATIENCE, sender.send_request(get(nginx, "/v1/models")))
                        .await
                        .expect("an answer in time")
                        .expect("an answer");
                let status = response.status();
                let _ = response.into_body().collect().await;
                match status {
                    StatusCode::OK => admitted += 1,
                    StatusCode::TOO_MANY_REQUESTS => {}
                    other => panic!("{source}: {other}"),
                }
            }
            (source, admitted, started.elapsed())
        });
    }
    while let Some(sent) = senders.join_next().await {
        let (source, admitted, took) = sent.unwrap();
        let refilled = took.as_secs() as usize;
        assert!(
            (BURST..=BURST + refilled).contains(&admitted),
            "{source}: {admitted} requests admitted in {took:?}, burst {BURST}"
        );
    }

    // Each address reached one instance only, and both instances served some.
    let log = fleet.nginx.access_log();
    let mut used = std::collections::BTreeSet::new();
    for source in stream_clients.iter().chain(&rate_clients) {
        let source = source.to_string();
        let upstreams: std::collections::BTreeSet<&str> = log
            .iter()
            .filter(|(client, _, _)| *client == source)
            .map(|(_, _, upstream)| upstream.as_str())
            .collect();
        assert_eq!(upstreams.len(), 1, "{source} reached {upstreams:?}");
        used.extend(upstreams);
    }
    assert_eq!(
        used.len(),
        2,
        "both instances should serve some addresses: {used:?}"
    );
}

/// A stand-in for an instance that closes a kept-alive connection just as nginx sends a request
/// on it (a drain closing idle connections, or an idle timeout): it answers `GET /v1/models`
/// with keep-alive, and once `armed`, closes unanswered any request on a connection that has
/// already served one.
async fn closing_instance(
    listener: TcpListener,
    armed: std::sync::Arc<std::sync::atomic::AtomicBool>,
) {
    use std::sync::atomic::Ordering;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const BODY: &str = r#"{"object":"list","data":[]}"#;
    let answer = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nx-closing-instance: 1\r\n\
         content-length: {}\r\n\r\n{BODY}",
        BODY.len()
    );
    // Bounded: the listener lives as long as the test's runtime.
    while let Ok((mut socket, _)) = listener.accept().await {
        let armed = armed.clone();
        let answer = answer.clone();
        tokio::spawn(async move {
            let mut served = 0;
            let mut buf = Vec::new();
            // Bounded by the peer: every pass reads bytes or ends the connection.
            loop {
                let mut chunk = [0u8; 4096];
                match tokio::time::timeout(PATIENCE, socket.read(&mut chunk)).await {
                    Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                    _ => return,
                }
                let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                    continue;
                };
                if served > 0 && armed.load(Ordering::SeqCst) {
                    // Gone, as a closed connection is: the request is never answered.
                    return;
                }
                buf.drain(..end + 4);
                served += 1;
                if socket.write_all(answer.as_bytes()).await.is_err() {
                    return;
                }
            }
        });
    }
}

/// nginx sends a request on a kept-alive connection that the instance has just closed (the
/// instance never saw it). The shipped `proxy_next_upstream ... non_idempotent` sends it to
/// another instance, so the client gets its stream instead of a 502, even for a POST; nginx's
/// default retries only requests that are not POSTs. The race is rare and timing-bound in a real
/// drain; the stand-in makes it certain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs nginx (apt-get install nginx); .ci/run installs it"]
async fn a_request_on_a_connection_an_instance_just_closed_goes_to_another_instance() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let dir = scratch_dir("reuse");
    let mock_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mock = mock_listener.local_addr().unwrap();
    let mock_stop = CancellationToken::new();
    tokio::spawn(
        MockUpstream::new(MockSettings::default()).serve(mock_listener, mock_stop.clone()),
    );
    let config = dir.join("tidegate.toml");
    std::fs::write(&config, read("deploy/tidegate.toml")).unwrap();
    let instance = Instance::start(
        &config,
        INSTANCE_IDS[0],
        SocketAddr::from(([127, 0, 0, 1], 0)),
        mock,
        dir.join("tidegate.log"),
    )
    .await;
    let closing = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let closing_addr = closing.local_addr().unwrap();
    let armed = std::sync::Arc::new(AtomicBool::new(false));
    tokio::spawn(closing_instance(closing, armed.clone()));
    let nginx = Nginx::start(&dir, [closing_addr, instance.api]).await;

    // A client address nginx sends to the stand-in; its answer leaves an idle kept-alive
    // connection to the stand-in in the nginx worker that serves this client connection.
    let mut found = None;
    for n in 2..60 {
        let mut sender = connect_from(client(n), nginx.addr).await;
        let response =
            tokio::time::timeout(PATIENCE, sender.send_request(get(nginx.addr, "/v1/models")))
                .await
                .expect("an answer in time")
                .expect("an answer");
        assert_eq!(response.status(), StatusCode::OK);
        let from_stand_in = response.headers().contains_key("x-closing-instance");
        let _ = response.into_body().collect().await;
        if from_stand_in {
            found = Some((n, sender));
            break;
        }
    }
    let (n, mut sender) = found.expect("an address that nginx hashes to the stand-in");

    // The same client connection, so the same nginx worker, which reuses its idle connection to
    // the stand-in, and the stand-in closes it unanswered.
    armed.store(true, Ordering::SeqCst);
    tokio::time::timeout(PATIENCE, sender.ready())
        .await
        .expect("the client connection ready in time")
        .expect("the client connection still open");
    let response = tokio::time::timeout(
        PATIENCE,
        sender.send_request(post(
            nginx.addr,
            "/v1/chat/completions",
            &chat_body("mock-1", true),
            &[],
        )),
    )
    .await
    .expect("an answer in time")
    .expect("an answer");
    assert_eq!(
        response.status(),
        StatusCode::OK,
        "the stream from 127.0.0.{n} should be sent on to the real instance: {}",
        nginx.error_log()
    );
    assert!(!response.headers().contains_key("x-closing-instance"));
    assert_completes("the retried stream", response.into_body()).await;
    assert!(
        nginx
            .error_log()
            .contains("upstream prematurely closed connection"),
        "nginx should have met the closed connection: {}",
        nginx.error_log()
    );
    mock_stop.cancel();
}

/// Issue 15, requirement 6: a resume through the shipped nginx config reaches the instance that
/// owns the stream, named in the stream's id, from whatever address the client now has (the
/// address hash would send about half of these to the other instance, which has no such stream);
/// the text assembled across the cut is the upstream's exactly once. An id naming no instance,
/// and an owner that is gone, are 404 `stream_not_found` from nginx itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs nginx (apt-get install nginx); .ci/run installs it"]
async fn a_resume_through_nginx_reaches_the_owning_instance_from_any_address() {
    let mock = MockSettings {
        chunks: 60,
        chunk_delay: Duration::from_millis(40),
        ..MockSettings::default()
    };
    let mut fleet = Fleet::start("resume", mock, |toml| toml).await;
    let nginx = fleet.nginx.addr;
    let response = send_from(
        client(1),
        nginx,
        post(
            nginx,
            "/v1/chat/completions",
            &chat_body("mock-1", true),
            &[],
        ),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    let id = header(response.headers(), "x-tidegate-stream-id").to_owned();
    let token = header(response.headers(), "x-tidegate-resume-token").to_owned();
    let owner = fleet
        .serving(client(1))
        .await
        .expect("an instance serves client 1");
    assert!(
        id.starts_with(&format!("st_{}_", INSTANCE_IDS[owner])),
        "the id names its instance: {id}"
    );
    let mut body = response.into_body();
    let mut seen = read_until(&mut body, |b| sse_data(b).len() >= 3).await;
    drop(body); // the cut: nginx closes its connection to the instance, which detaches
    let last_id = |bytes: &[u8]| {
        tidegate::sse::parser::parse_all(bytes, 1 << 20)
            .unwrap()
            .last()
            .map(|e| e.last_event_id.clone())
            .unwrap_or_default()
    };
    // Eight new addresses, each resuming where the last left off and taking a few events.
    for n in 2..=9u8 {
        let path = format!(
            "/v1/streams/{id}?token={token}&last_event_id={}",
            last_id(&seen)
        );
        let response = send_from(client(n), nginx, get(nginx, &path)).await;
        assert_eq!(
            response.status(),
            StatusCode::OK,
            "resume from {}",
            client(n)
        );
        let mut body = response.into_body();
        let more = if n < 9 {
            let before = sse_data(&seen).len();
            read_until(&mut body, |b| {
                sse_data(b).len() >= 2 || sse_data(b).len() + before > 61
            })
            .await
        } else {
            read_to_end(body).await.to_vec()
        };
        seen.extend_from_slice(&more);
    }
    let data = sse_data(&seen);
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    let text: String = data
        .iter()
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter_map(|v| {
            v["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect();
    let (_, _, whole) = fetch(post(
        fleet.instances[1 - owner].api,
        "/v1/chat/completions",
        &chat_body("mock-1", true),
        &[],
    ))
    .await;
    let expected: String = sse_data(&whole)
        .iter()
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter_map(|v| {
            v["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect();
    assert_eq!(
        text, expected,
        "no gap, no duplicate across nine connections"
    );
    // Every resume went to the owner.
    let owner_addr = fleet.instances[owner].api.to_string();
    let resumes: Vec<_> = fleet
        .nginx
        .access_log()
        .into_iter()
        .filter(|(_, status, upstream)| status == "200" && upstream.contains(&owner_addr))
        .collect();
    assert!(resumes.len() >= 9, "{resumes:?}");

    let check_404 = |status: StatusCode, body: &Bytes| {
        assert_eq!(status, StatusCode::NOT_FOUND, "{body:?}");
        let json: Value = serde_json::from_slice(body).unwrap();
        assert_eq!(json["error"]["code"], "stream_not_found", "{json}");
    };
    let (status, _, body) = fetch(get(nginx, "/v1/streams/st_nosuch_1?token=x")).await;
    check_404(status, &body);
    fleet.instances[owner].terminate();
    assert_eq!(fleet.instances[owner].exit_code(PATIENCE).await, 0);
    let (status, _, body) = fetch(get(nginx, &format!("/v1/streams/{id}?token={token}"))).await;
    check_404(status, &body);
}

/// nginx's own errors reach clients in the OpenAI shape, as tidegate's do: a body over the
/// limit (413, before any instance sees it), and no instance left to answer (502, with
/// `retry-after`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs nginx (apt-get install nginx); .ci/run installs it"]
async fn nginx_answers_its_own_errors_in_the_openai_shape() {
    let mut fleet = Fleet::start("errors", MockSettings::default(), |toml| toml).await;
    let nginx = fleet.nginx.addr;
    let check = |status: StatusCode, headers: &http::HeaderMap, body: &Bytes, code: &str| {
        assert_eq!(header(headers, "content-type"), "application/json");
        let json: Value = serde_json::from_slice(body)
            .unwrap_or_else(|e| panic!("{status}: not JSON ({e}): {body:?}"));
        assert_eq!(json["error"]["code"], code, "{json}");
        assert!(json["error"]["message"].is_string(), "{json}");
        assert!(json["error"]["type"].is_string(), "{json}");
        assert!(json["error"]["param"].is_null(), "{json}");
    };

    let too_large = format!(
        r#"{{"model":"mock-1","messages":[{{"role":"user","content":"{}"}}]}}"#,
        "a".repeat(1024 * 1024 + 1)
    );
    let (status, headers, body) = fetch(post(nginx, "/v1/chat/completions", &too_large, &[])).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    check(status, &headers, &body, "request_too_large");

    for instance in &mut fleet.instances {
        instance.terminate();
        assert_eq!(instance.exit_code(PATIENCE).await, 0);
    }
    let (status, headers, body) = fetch(post(
        nginx,
        "/v1/chat/completions",
        &chat_body("mock-1", true),
        &[],
    ))
    .await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    check(status, &headers, &body, "gateway_unavailable");
    assert_eq!(header(&headers, "retry-after"), "1");
}

/// The value of the nginx directive `name` in `text`: its first use outside comments.
fn nginx_directive<'a>(text: &'a str, name: &str) -> &'a str {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            line.strip_prefix(name)
                .and_then(|rest| rest.strip_prefix(' '))
                .map(|value| value.trim().trim_end_matches(';').trim())
        })
        .unwrap_or_else(|| panic!("the directive {name}"))
}

/// An nginx size ("1m", "16k", "512").
fn nginx_bytes(value: &str) -> u64 {
    let (digits, unit) = match value.strip_suffix(['k', 'K']) {
        Some(d) => (d, 1024),
        None => match value.strip_suffix(['m', 'M']) {
            Some(d) => (d, 1024 * 1024),
            None => (value, 1),
        },
    };
    digits.parse::<u64>().unwrap() * unit
}

/// The shipped nginx files and the shipped tidegate.toml agree wherever one depends on the
/// other (no nginx needed): a change to either that breaks the pair fails here first.
#[test]
fn the_shipped_nginx_and_tidegate_settings_agree() {
    let config = production_config();
    let main = read("deploy/nginx/nginx.conf");
    let site = read("deploy/nginx/tidegate.conf");
    let seconds = |v: &str| humantime::parse_duration(v).unwrap_or_else(|e| panic!("{v}: {e}"));

    // nginx closes an idle connection to an instance before the instance does (tidegate closes
    // one after limits.header_read_timeout), else it may send a request on a closing one.
    let keepalive = seconds(nginx_directive(&site, "keepalive_timeout"));
    assert!(
        keepalive < config.limits.header_read_timeout,
        "nginx keepalive_timeout {keepalive:?} must be below limits.header_read_timeout {:?}",
        config.limits.header_read_timeout
    );
    // A silent stream gets a heartbeat well before nginx gives up reading it.
    let read = seconds(nginx_directive(&site, "proxy_read_timeout"));
    assert!(
        read >= 2 * config.streams.heartbeat_interval,
        "proxy_read_timeout {read:?} must allow a missed heartbeat ({:?})",
        config.streams.heartbeat_interval
    );
    // One body limit for both, held in memory, and the 413's message says it.
    let max_body = nginx_bytes(nginx_directive(&site, "client_max_body_size"));
    assert_eq!(max_body, config.limits.max_body_bytes);
    assert!(nginx_bytes(nginx_directive(&site, "client_body_buffer_size")) >= max_body);
    assert!(site.contains(&format!("the limit of {max_body} bytes")));
    // Per-address limits are exact only if every address meets one instance, and the instances
    // see the address nginx hashes on: nginx (here on the same host) is a trusted proxy.
    assert_eq!(
        nginx_directive(&site, "hash"),
        "$remote_addr consistent",
        "the upstream block pins client addresses"
    );
    let nginx_addr: std::net::IpAddr = "127.0.0.1".parse().unwrap();
    assert!(
        config
            .client_ip
            .trusted_proxies
            .iter()
            .any(|net| net.contains(&nginx_addr)),
        "client_ip.trusted_proxies must hold nginx's address"
    );
    assert_eq!(
        nginx_directive(&site, "proxy_set_header X-Forwarded-For"),
        "$proxy_add_x_forwarded_for"
    );
    // The fallback upstream lists the same instances, pinned the same way.
    let servers = |block: &str| -> Vec<String> {
        let start = site.find(&format!("upstream {block} {{")).unwrap();
        let end = start + site[start..].find("\n}").unwrap();
        site[start..end]
            .lines()
            .map(str::trim)
            .filter_map(|l| l.strip_prefix("server "))
            .map(|l| l.split_whitespace().next().unwrap().to_owned())
            .collect()
    };
    assert_eq!(servers("tidegate"), servers("tidegate_every_instance"));
    assert_eq!(
        site.matches("hash $remote_addr consistent;").count(),
        2,
        "both upstream blocks pin client addresses"
    );
    // Requests that never reached an instance go to another, POSTs included.
    assert!(nginx_directive(&site, "proxy_next_upstream").contains("non_idempotent"));
    assert_eq!(nginx_directive(&site, "proxy_buffering"), "off");
    // A worker can hold one instance's streams at its cap: two connections each.
    let connections: u64 = nginx_directive(&main, "worker_connections")
        .parse()
        .unwrap();
    assert!(connections >= 2 * u64::from(config.limits.max_streams));
    let nofile: u64 = nginx_directive(&main, "worker_rlimit_nofile")
        .parse()
        .unwrap();
    assert!(nofile >= connections);
}

/// Right after instances come back, nginx's passive checks may still hold every one of them
/// out: after `max_fails` failures an instance is left out for `fail_timeout`, and taken back
/// only once a trial request has completed (for a stream, its whole length), so a quick rolling
/// restart can leave an nginx worker with none. A request must still reach a running instance,
/// not get 502 "no live upstreams".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs nginx (apt-get install nginx); .ci/run installs it"]
async fn requests_reach_running_instances_that_nginx_still_holds_out() {
    let mock = MockSettings {
        chunks: 3,
        chunk_delay: Duration::from_millis(20),
        ..MockSettings::default()
    };
    let mut fleet = Fleet::start("held-out", mock, |toml| toml).await;
    let nginx = fleet.nginx.addr;

    // Both instances stop. Requests meanwhile find both refusing, which counts a failure for
    // each in every nginx worker that serves one (connections spread over the workers).
    for instance in &mut fleet.instances {
        instance.terminate();
        assert_eq!(instance.exit_code(PATIENCE).await, 0);
    }
    for n in 2..18 {
        let response = send_from(client(n), nginx, get(nginx, "/v1/models")).await;
        assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
        let _ = response.into_body().collect().await;
    }
    let failures_end = Instant::now();

    // Both back on their ports, ready, well within fail_timeout of those failures.
    for (i, id) in INSTANCE_IDS.into_iter().enumerate() {
        let log = fleet.dir.join(format!("tidegate-{i}-start-1.log"));
        let port = fleet.instances[i].api;
        fleet.instances[i] = Instance::start(&fleet.config, id, port, fleet.mock, log).await;
    }
    let mut streams = JoinSet::new();
    for n in 2..18 {
        streams.spawn(async move {
            let (status, body) = stream_from(client(n), nginx).await;
            (n, status, body)
        });
    }
    while let Some(done) = streams.join_next().await {
        let (n, status, body) = done.unwrap();
        assert_eq!(
            status,
            StatusCode::OK,
            "a stream from 127.0.0.{n} with both instances running: {}",
            fleet.nginx.error_log()
        );
        assert_completes("a stream after the restart", body).await;
    }
    assert!(
        failures_end.elapsed() < NGINX_FAIL_TIMEOUT,
        "the streams must start while nginx still holds the instances out"
    );
}

/// The Responses API through the shipped nginx config: a stream arrives whole, its `event:`
/// lines intact and its terminal event last (nginx passes it unbuffered like any stream), and
/// the stored response is retrieved through nginx too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs nginx (apt-get install nginx); .ci/run installs it"]
async fn the_responses_api_through_nginx() {
    let fleet = Fleet::start("responses", MockSettings::default(), |toml| toml).await;
    let nginx = fleet.nginx.addr;
    let body = r#"{"model":"mock-1","stream":true,"input":"Hello"}"#;
    let response = send_from(client(30), nginx, post(nginx, "/v1/responses", body, &[])).await;
    assert_eq!(response.status(), StatusCode::OK);
    let bytes = read_to_end(response.into_body()).await;
    let events = tidegate::sse::parser::parse_all(&bytes, 16 << 20).unwrap();
    assert_eq!(events[0].event_type, "response.created");
    let last = events.last().unwrap();
    assert_eq!(
        last.event_type,
        "response.completed",
        "{}",
        String::from_utf8_lossy(&bytes)
    );
    assert!(String::from_utf8_lossy(&bytes).contains("\nevent: response.output_text.delta\n"));
    let completed: Value = serde_json::from_str(&last.data).unwrap();
    let id = completed["response"]["id"].as_str().unwrap();

    let (status, _, json) = fetch_json(get(nginx, &format!("/v1/responses/{id}"))).await;
    assert_eq!(status, StatusCode::OK, "{json}");
    assert_eq!(json["id"], id);
    assert_eq!(json["status"], "completed");
}
