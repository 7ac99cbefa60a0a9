//! TLS termination on the API listener (`[tls]`): HTTP/1.1 and HTTP/2 chosen by ALPN on one
//! port, the handshake deadline, and certificate reloads (good pairs swapped in for new
//! handshakes, bad ones refused). Certificates are made at test time with rcgen, signed by a
//! test CA the client trusts, and written under `CARGO_TARGET_TMPDIR`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::StatusCode;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{
    date_time_ymd, BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair,
};
use tidegate::config::{Config, UpstreamUrl};
use tidegate::mock::{MockSettings, MockUpstream};
use tidegate::tls::{ServerTls, TlsError};
use tidegate::Listeners;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::TlsConnector;
use tokio_util::sync::CancellationToken;

use crate::common::*;

/// A test CA and the directory its files go to.
pub(crate) struct Pki {
    ca: CertifiedIssuer<'static, KeyPair>,
    pub(crate) dir: PathBuf,
}

/// One leaf certificate and its key, as PEM, and the certificate's DER (what a client sees).
pub(crate) struct Leaf {
    pub(crate) cert_pem: String,
    pub(crate) key_pem: String,
    pub(crate) der: Vec<u8>,
}

impl Pki {
    pub(crate) fn new() -> Pki {
        static DIRS: AtomicUsize = AtomicUsize::new(0);
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
            "tls-{}-{}",
            std::process::id(),
            DIRS.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        // Names of their own: with rcgen's default for both, OpenSSL (curl) takes the leaf
        // for a self-signed certificate.
        params
            .distinguished_name
            .push(DnType::CommonName, "tidegate test CA");
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        Pki { ca, dir }
    }

    pub(crate) fn ca_pem(&self) -> String {
        self.ca.pem()
    }

    /// A leaf for 127.0.0.1 and localhost, valid from 2020 to `not_after` (rcgen's default,
    /// far off, if `None`).
    pub(crate) fn leaf(&self, not_after: Option<time::OffsetDateTime>) -> Leaf {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "127.0.0.1");
        params.not_before = date_time_ymd(2020, 1, 1);
        if let Some(not_after) = not_after {
            params.not_after = not_after;
        }
        let cert = params.signed_by(&key, &self.ca).unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().to_vec(),
        }
    }

    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Writes `leaf` as `cert.pem` and `key.pem`; returns their paths.
    pub(crate) fn install(&self, leaf: &Leaf) -> (String, String) {
        self.write("cert.pem", &leaf.cert_pem);
        self.write("key.pem", &leaf.key_pem);
        (self.file("cert.pem"), self.file("key.pem"))
    }

    pub(crate) fn write(&self, name: &str, text: &str) {
        std::fs::write(self.path(name), text).unwrap();
    }

    pub(crate) fn file(&self, name: &str) -> String {
        self.path(name).to_string_lossy().into_owned()
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `days` from now, for certificates that expire soon.
pub(crate) fn days_from_now(days: i64) -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc() + time::Duration::days(days)
}

/// The mock, and the gateway in front of it serving TLS with `leaf`.
struct TlsEnv {
    gateway: SocketAddr,
    tls: Arc<ServerTls>,
    pki: Pki,
    stop: CancellationToken,
}

impl Drop for TlsEnv {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn start_tls(configure: impl FnOnce(&mut Config)) -> (TlsEnv, Leaf) {
    let pki = Pki::new();
    let leaf = pki.leaf(None);
    let (cert_file, key_file) = pki.install(&leaf);
    let stop = CancellationToken::new();
    let mock_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mock = mock_listener.local_addr().unwrap();
    tokio::spawn(MockUpstream::new(MockSettings::default()).serve(mock_listener, stop.clone()));

    let mut config = Config::default();
    config.upstream.base_url = UpstreamUrl::parse(&format!("http://{mock}/v1")).unwrap();
    config.shutdown.drain_timeout = Duration::from_secs(2);
    config.tls.cert_file = Some(cert_file);
    config.tls.key_file = Some(key_file);
    configure(&mut config);
    config.validate().expect("a valid test config");
    let (tls, _) = ServerTls::from_config(&config.tls)
        .expect("a good pair")
        .expect("TLS configured");
    let api = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gateway = api.local_addr().unwrap();
    tokio::spawn(tidegate::gateway::run_with_keys_and_tls(
        config,
        Listeners { api, admin: None },
        stop.clone(),
        None,
        Some(tls.clone()),
    ));
    (
        TlsEnv {
            gateway,
            tls,
            pki,
            stop,
        },
        leaf,
    )
}

/// A TLS connection to `addr` trusting only `ca_pem`, offering `alpn`.
pub(crate) async fn connect_tls(
    addr: SocketAddr,
    ca_pem: &str,
    alpn: &[&[u8]],
) -> TlsStream<TcpStream> {
    tls_over(TcpStream::connect(addr).await.unwrap(), ca_pem, alpn).await
}

/// A TLS handshake as 127.0.0.1 over `tcp`, trusting only `ca_pem`, offering `alpn`.
pub(crate) async fn tls_over(tcp: TcpStream, ca_pem: &str, alpn: &[&[u8]]) -> TlsStream<TcpStream> {
    tokio::time::timeout(PATIENCE, try_tls_over_with(tcp, ca_pem, alpn))
        .await
        .expect("handshake in time")
        .expect("handshake")
}

/// A TLS handshake as 127.0.0.1 over `tcp` offering `h2` and `http/1.1`, which may fail.
pub(crate) async fn try_tls_over(
    tcp: TcpStream,
    ca_pem: &str,
) -> std::io::Result<TlsStream<TcpStream>> {
    try_tls_over_with(tcp, ca_pem, &[b"h2", b"http/1.1"]).await
}

async fn try_tls_over_with(
    tcp: TcpStream,
    ca_pem: &str,
    alpn: &[&[u8]],
) -> std::io::Result<TlsStream<TcpStream>> {
    let name = ServerName::try_from("127.0.0.1").unwrap();
    TlsConnector::from(client_config(ca_pem, alpn))
        .connect(name, tcp)
        .await
}

/// A client configuration trusting only `ca_pem`, offering `alpn`, with rustls's default
/// in-memory session store (a connector reused across connections resumes when it can).
fn client_config(ca_pem: &str, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

/// The leaf certificate a new handshake gets.
async fn served_cert(env: &TlsEnv) -> Vec<u8> {
    let tls = connect_tls(env.gateway, &env.pki.ca_pem(), &[b"http/1.1"]).await;
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

fn stream_request(gateway: SocketAddr) -> http::Request<Full<Bytes>> {
    post(
        gateway,
        "/v1/chat/completions",
        &chat_body("mock-1", true),
        &[],
    )
}

async fn body_of(response: http::Response<hyper::body::Incoming>) -> Bytes {
    tokio::time::timeout(PATIENCE, response.into_body().collect())
        .await
        .expect("body in time")
        .expect("body")
        .to_bytes()
}

fn ends_with_done(body: &[u8]) -> bool {
    body.ends_with(b"data: [DONE]\n\n")
}

/// An HTTP/1.1 client connection over `tls`.
pub(crate) async fn http1_over(
    tls: TlsStream<TcpStream>,
) -> hyper::client::conn::http1::SendRequest<Full<Bytes>> {
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender
}

/// An HTTP/2 client connection over `tls`.
pub(crate) async fn h2_over(
    tls: TlsStream<TcpStream>,
) -> hyper::client::conn::http2::SendRequest<Full<Bytes>> {
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    sender
}

#[tokio::test]
async fn http1_streams_a_completion_over_tls() {
    let (env, _) = start_tls(|_| {}).await;
    let tls = connect_tls(env.gateway, &env.pki.ca_pem(), &[b"http/1.1"]).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let mut sender = http1_over(tls).await;
    let response = sender
        .send_request(stream_request(env.gateway))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.version(), http::Version::HTTP_11);
    let body = body_of(response).await;
    assert!(ends_with_done(&body), "{}", String::from_utf8_lossy(&body));
}

#[tokio::test]
async fn h2_by_alpn_carries_a_hundred_concurrent_streams_on_one_connection() {
    const STREAMS: usize = 100;
    let (env, _) = start_tls(|_| {}).await;
    // Both offered, h2 first: the server picks h2.
    let tls = connect_tls(env.gateway, &env.pki.ca_pem(), &[b"h2", b"http/1.1"]).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let sender = h2_over(tls).await;
    let mut streams = tokio::task::JoinSet::new();
    for _ in 0..STREAMS {
        let mut sender = sender.clone();
        let gateway = env.gateway;
        streams.spawn(async move {
            let response = sender.send_request(stream_request(gateway)).await.unwrap();
            assert_eq!(response.status(), StatusCode::OK);
            assert_eq!(response.version(), http::Version::HTTP_2);
            ends_with_done(&body_of(response).await)
        });
    }
    let mut done = 0;
    // Bounded: STREAMS results.
    while let Some(ended) = tokio::time::timeout(PATIENCE, streams.join_next())
        .await
        .expect("streams in time")
    {
        assert!(ended.unwrap(), "a stream ended without [DONE]");
        done += 1;
    }
    assert_eq!(done, STREAMS);
}

#[tokio::test]
async fn without_alpn_the_first_bytes_pick_the_protocol() {
    let (env, _) = start_tls(|_| {}).await;
    let ca = env.pki.ca_pem();
    // HTTP/2 with prior knowledge, no ALPN.
    let tls = connect_tls(env.gateway, &ca, &[]).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), None);
    let mut sender = h2_over(tls).await;
    let response = sender
        .send_request(stream_request(env.gateway))
        .await
        .unwrap();
    assert_eq!(response.version(), http::Version::HTTP_2);
    assert!(ends_with_done(&body_of(response).await));
    // HTTP/1.1, no ALPN.
    let mut sender = http1_over(connect_tls(env.gateway, &ca, &[]).await).await;
    let response = sender
        .send_request(stream_request(env.gateway))
        .await
        .unwrap();
    assert_eq!(response.version(), http::Version::HTTP_11);
    assert!(ends_with_done(&body_of(response).await));
}

#[tokio::test]
async fn a_proxy_header_comes_before_the_handshake() {
    let (env, _) = start_tls(|c| c.client_ip.proxy_protocol = true).await;
    let mut tcp = TcpStream::connect(env.gateway).await.unwrap();
    // The header and the ClientHello may arrive in one read: what follows the header is the
    // handshake's.
    tcp.write_all(b"PROXY TCP4 198.51.100.7 127.0.0.1 40000 443\r\n")
        .await
        .unwrap();
    let tls = tls_over(tcp, &env.pki.ca_pem(), &[b"h2"]).await;
    let mut sender = h2_over(tls).await;
    let response = sender
        .send_request(stream_request(env.gateway))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(ends_with_done(&body_of(response).await));
}

/// Waits for the server to close `tcp` (EOF or reset); returns how long that took.
async fn closed_after(mut tcp: TcpStream, since: Instant) -> Duration {
    let mut buf = [0u8; 1024];
    // Bounded: by PATIENCE; a TLS alert may come before the close.
    tokio::time::timeout(PATIENCE, async {
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    })
    .await
    .expect("the gateway closes a stalled handshake");
    since.elapsed()
}

#[tokio::test]
async fn a_handshake_that_never_completes_is_cut_at_the_deadline() {
    const DEADLINE: Duration = Duration::from_millis(300);
    let (env, _) = start_tls(|c| c.tls.handshake_timeout = DEADLINE).await;

    // Connects and sends nothing.
    let start = Instant::now();
    let silent = TcpStream::connect(env.gateway).await.unwrap();
    assert!(closed_after(silent, start).await >= DEADLINE);

    // Half a ClientHello: a handshake record that announces 512 bytes, and 6 of them.
    let start = Instant::now();
    let mut half = TcpStream::connect(env.gateway).await.unwrap();
    half.write_all(&[
        0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
    ])
    .await
    .unwrap();
    assert!(closed_after(half, start).await >= DEADLINE);

    // The listener still serves.
    let mut sender = http1_over(connect_tls(env.gateway, &env.pki.ca_pem(), &[]).await).await;
    let response = sender
        .send_request(stream_request(env.gateway))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_reload_serves_a_good_new_certificate_and_refuses_a_bad_one() {
    let (env, first) = start_tls(|_| {}).await;
    assert_eq!(served_cert(&env).await, first.der);
    // A connection opened before the reload keeps working after it.
    let tls = connect_tls(env.gateway, &env.pki.ca_pem(), &[b"http/1.1"]).await;
    let mut before = http1_over(tls).await;

    let second = env.pki.leaf(None);
    env.pki.install(&second);
    env.tls.reload().expect("a good pair reloads");
    assert_eq!(served_cert(&env).await, second.der);
    let response = before
        .send_request(stream_request(env.gateway))
        .await
        .unwrap();
    assert!(ends_with_done(&body_of(response).await));

    // A certificate with another certificate's key: refused, the current one stays.
    let third = env.pki.leaf(None);
    env.pki.write("cert.pem", &third.cert_pem);
    let err = env.tls.reload().unwrap_err();
    assert!(matches!(err, TlsError::Mismatch { .. }), "{err}");
    assert_eq!(served_cert(&env).await, second.der);

    // Not PEM at all, then an expired certificate: refused too.
    env.pki.write("cert.pem", "not a certificate\n");
    assert!(matches!(
        env.tls.reload(),
        Err(TlsError::NoCertificate { .. })
    ));
    let expired = env.pki.leaf(Some(date_time_ymd(2021, 1, 1)));
    env.pki.install(&expired);
    assert!(matches!(env.tls.reload(), Err(TlsError::Expired { .. })));
    assert_eq!(served_cert(&env).await, second.der);
}

#[tokio::test]
async fn changed_files_are_reloaded_when_their_stamps_change() {
    let (env, first) = start_tls(|_| {}).await;
    // Nothing changed since the load.
    assert!(env.tls.reload_if_changed().is_none());
    let second = env.pki.leaf(None);
    // The file system's clock is coarse: the new size tells the change too, but make the
    // time differ as a renewal a while later would.
    env.pki.install(&second);
    let later = SystemTime::now() + Duration::from_secs(60);
    for name in ["cert.pem", "key.pem"] {
        std::fs::File::options()
            .write(true)
            .open(env.pki.path(name))
            .unwrap()
            .set_modified(later)
            .unwrap();
    }
    assert!(matches!(env.tls.reload_if_changed(), Some(Ok(_))));
    assert!(env.tls.reload_if_changed().is_none());
    assert_ne!(first.der, second.der);
    assert_eq!(served_cert(&env).await, second.der);
}

/// A config file serving TLS on an ephemeral port, for the binary.
fn tls_config_file(pki: &Pki, upstream: &str) -> PathBuf {
    let text = format!(
        "listen = \"127.0.0.1:0\"\n[upstream]\nbase_url = \"{upstream}\"\n\
         [tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
        pki.file("cert.pem"),
        pki.file("key.pem"),
    );
    pki.write("tidegate.toml", &text);
    pki.path("tidegate.toml")
}

fn path_str(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[tokio::test]
async fn check_config_and_serve_reject_certificates_they_cannot_serve() {
    use crate::cli::run;
    let pki = Pki::new();
    let config = tls_config_file(&pki, "http://127.0.0.1:9/v1");
    let config = path_str(&config);

    // Missing files.
    let (code, _, err) = run(&["check-config", config], &[]).await;
    assert_eq!(code, 64, "{err}");
    assert!(
        err.contains("tls.cert_file") && err.contains("cannot read"),
        "{err}"
    );

    // Good.
    pki.install(&pki.leaf(None));
    let (code, out, err) = run(&["check-config", config], &[]).await;
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("# tls.cert_file: certificate and key valid"),
        "{out}"
    );
    assert!(!err.contains("warning"), "{err}");

    // Expiring in 5 days: valid, with a warning.
    pki.install(&pki.leaf(Some(days_from_now(5))));
    let (code, _, err) = run(&["check-config", config], &[]).await;
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("warning") && err.contains("expires in"),
        "{err}"
    );

    // Mismatched key.
    let other = pki.leaf(None);
    pki.write("key.pem", &other.key_pem);
    let (code, _, err) = run(&["check-config", config], &[]).await;
    assert_eq!(code, 64, "{err}");
    assert!(
        err.contains("tls.key_file") && err.contains("does not match"),
        "{err}"
    );

    // Expired: check-config and serve both refuse it.
    pki.install(&pki.leaf(Some(date_time_ymd(2021, 6, 1))));
    let (code, _, err) = run(&["check-config", config], &[]).await;
    assert_eq!(code, 64, "{err}");
    assert!(
        err.contains("tls.cert_file") && err.contains("has expired"),
        "{err}"
    );
    let (code, _, err) = run(&["--config", config], &[]).await;
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("has expired"), "{err}");
}

#[tokio::test]
async fn sighup_reloads_the_certificate_of_the_running_binary() {
    use crate::cli::Running;
    let env = start().await; // only its mock is used here
    let pki = Pki::new();
    let first = pki.leaf(None);
    pki.install(&first);
    let config = tls_config_file(&pki, &format!("http://{}/v1", env.mock));
    let mut gw = Running::spawn(&["--config", path_str(&config)]);
    let gateway = gw.listening_on().await;
    let seen =
        |tls: &TlsStream<TcpStream>| tls.get_ref().1.peer_certificates().unwrap()[0].to_vec();
    assert_eq!(
        seen(&connect_tls(gateway, &pki.ca_pem(), &[]).await),
        first.der
    );

    let second = pki.leaf(None);
    pki.install(&second);
    gw.signal(libc::SIGHUP);
    gw.stderr_line(|l| l.contains("TLS certificate reloaded"))
        .await;
    assert_eq!(
        seen(&connect_tls(gateway, &pki.ca_pem(), &[]).await),
        second.der
    );

    gw.signal(libc::SIGINT);
    assert_eq!(gw.exit_code().await, 0);
}

/// curl, if installed, streams a completion over TLS with HTTP/2 and HTTP/1.1
/// (`cargo test -- --ignored curl_`).
#[tokio::test]
#[ignore = "needs curl on PATH"]
async fn curl_streams_over_tls_with_http2_and_http1() {
    let (env, _) = start_tls(|_| {}).await;
    env.pki.write("ca.pem", &env.pki.ca_pem());
    let url = format!(
        "https://127.0.0.1:{}/v1/chat/completions",
        env.gateway.port()
    );
    for (flag, version) in [("--http2", "2"), ("--http1.1", "1.1")] {
        let out = tokio::time::timeout(
            PATIENCE,
            tokio::process::Command::new("curl")
                .args([
                    "-sS",
                    "-N",
                    flag,
                    "--cacert",
                    &env.pki.file("ca.pem"),
                    "-H",
                    "content-type: application/json",
                    "-w",
                    "\nhttp_version=%{http_version}\n",
                    "-d",
                    &chat_body("mock-1", true),
                    &url,
                ])
                .output(),
        )
        .await
        .expect("curl in time")
        .expect("curl runs");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{flag}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains("data: [DONE]"), "{flag}: {stdout}");
        assert!(
            stdout.contains(&format!("http_version={version}")),
            "{flag}: {stdout}"
        );
    }
}

/// One handshake with `config` and a `/healthz` request on it (TLS 1.3 tickets come after the
/// handshake: the answer has brought them in); how the handshake went.
async fn handshake_and_ask(
    gateway: SocketAddr,
    config: &Arc<rustls::ClientConfig>,
) -> Option<rustls::HandshakeKind> {
    let tcp = TcpStream::connect(gateway).await.unwrap();
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let tls = tokio::time::timeout(
        PATIENCE,
        TlsConnector::from(config.clone()).connect(name, tcp),
    )
    .await
    .expect("handshake in time")
    .expect("handshake");
    let kind = tls.get_ref().1.handshake_kind();
    let mut sender = http1_over(tls).await;
    let response = sender.send_request(get(gateway, "/healthz")).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    body_of(response).await;
    kind
}

#[tokio::test]
async fn a_returning_client_resumes_after_many_others_came_between() {
    // More clients in between than a server-side session cache holds (rustls's default: 256
    // sessions, two per handshake): only stateless tickets let the first one resume.
    const OTHERS: usize = 150;
    let (env, _) = start_tls(|_| {}).await;
    let ca = env.pki.ca_pem();
    let returning = client_config(&ca, &[b"http/1.1"]);
    assert_eq!(
        handshake_and_ask(env.gateway, &returning).await,
        Some(rustls::HandshakeKind::Full)
    );
    // Bounded: OTHERS handshakes, each a fresh client.
    for _ in 0..OTHERS {
        handshake_and_ask(env.gateway, &client_config(&ca, &[b"http/1.1"])).await;
    }
    assert_eq!(
        handshake_and_ask(env.gateway, &returning).await,
        Some(rustls::HandshakeKind::Resumed)
    );
}
