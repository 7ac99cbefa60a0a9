//! An `https://` upstream: `protocol = "auto"` takes HTTP/2 when the upstream offers `h2` by
//! ALPN and HTTP/1.1 when it does not; `protocol = "http2"` refuses an upstream without `h2`;
//! `ca_file` adds a private root. The upstream is the mock behind a TLS front made here with a
//! CA generated at test time (rcgen).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use http::StatusCode;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use tidegate::config::{Config, UpstreamProtocol, UpstreamUrl};
use tidegate::mock::{MockSettings, MockUpstream};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::rustls;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::common::*;

/// A TLS front for `backend` on 127.0.0.1 offering `alpn`; returns its address and the PEM of
/// the CA that signed its certificate. Runs until the test's runtime ends.
async fn tls_front(backend: SocketAddr, alpn: &[&[u8]]) -> (SocketAddr, String) {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .unwrap();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        // Bounded: by the test's life (the runtime ends with it).
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let Ok(mut plain) = TcpStream::connect(backend).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
            });
        }
    });
    (addr, ca.pem())
}

/// A running gateway whose one upstream is a mock behind a TLS front.
struct OverTls {
    gateway: SocketAddr,
    mock: MockUpstream,
    ca_file: std::path::PathBuf,
    stop: CancellationToken,
}

impl Drop for OverTls {
    fn drop(&mut self) {
        self.stop.cancel();
        let _ = std::fs::remove_file(&self.ca_file);
    }
}

/// The mock behind a TLS front offering `alpn`, and the gateway in front with `protocol` and
/// the front's CA as `ca_file`.
async fn gateway_over_tls(alpn: &[&[u8]], protocol: UpstreamProtocol) -> OverTls {
    static FILES: AtomicUsize = AtomicUsize::new(0);
    let stop = CancellationToken::new();
    let mock_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mock_addr = mock_listener.local_addr().unwrap();
    let mock = MockUpstream::new(MockSettings::default());
    tokio::spawn(mock.clone().serve(mock_listener, stop.clone()));
    let (front, ca) = tls_front(mock_addr, alpn).await;
    let ca_file = std::env::temp_dir().join(format!(
        "tidegate-test-ca-{}-{}.pem",
        std::process::id(),
        FILES.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::write(&ca_file, ca).unwrap();

    let mut config = Config::default();
    config.upstream.base_url = UpstreamUrl::parse(&format!("https://{front}/v1")).unwrap();
    config.upstream.protocol = protocol;
    config.upstream.ca_file = Some(ca_file.to_string_lossy().into_owned());
    config.retry.max_attempts = 1;
    config.validate().expect("a valid test config");
    let api = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gateway = api.local_addr().unwrap();
    tokio::spawn(tidegate::gateway::run(
        config,
        tidegate::Listeners { api, admin: None },
        stop.clone(),
    ));
    OverTls {
        gateway,
        mock,
        ca_file,
        stop,
    }
}

async fn stream_through(gateway: SocketAddr) -> (StatusCode, bytes::Bytes) {
    let (status, _, body) = fetch(post(
        gateway,
        "/v1/chat/completions",
        &chat_body("mock-1", true),
        &[],
    ))
    .await;
    (status, body)
}

#[tokio::test]
async fn auto_takes_http2_when_the_upstream_offers_it_by_alpn() {
    let env = gateway_over_tls(&[b"h2", b"http/1.1"], UpstreamProtocol::Auto).await;
    let (status, body) = stream_through(env.gateway).await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    assert_eq!(sse_data(&body).last().map(String::as_str), Some("[DONE]"));
    let seen = env.mock.last_request().expect("the mock saw the request");
    assert_eq!(seen.version, "HTTP/2.0");
}

#[tokio::test]
async fn auto_falls_back_to_http1_when_the_upstream_offers_no_h2() {
    let env = gateway_over_tls(&[b"http/1.1"], UpstreamProtocol::Auto).await;
    for _ in 0..2 {
        let (status, body) = stream_through(env.gateway).await;
        assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
        assert_eq!(sse_data(&body).last().map(String::as_str), Some("[DONE]"));
        let seen = env.mock.last_request().expect("the mock saw the request");
        assert_eq!(seen.version, "HTTP/1.1");
    }
}

#[tokio::test]
async fn http2_refuses_an_upstream_that_offers_no_h2() {
    let env = gateway_over_tls(&[b"http/1.1"], UpstreamProtocol::Http2).await;
    let (status, _, json) = fetch_json(post(
        env.gateway,
        "/v1/chat/completions",
        &chat_body("mock-1", true),
        &[],
    ))
    .await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(json["error"]["code"], "upstream_unreachable");
    // Why (a server that knows ALPN refuses the handshake with rustls' NoApplicationProtocol
    // alert; one that ignores it gets our "did not offer HTTP/2") is for the log: the client
    // is told what happened in our words.
    assert_eq!(
        json["error"]["message"], "The upstream could not be reached.",
        "{json}"
    );
}
