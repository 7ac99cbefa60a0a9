//! TLS to an `https://` target (`--ca-file PEM`): one rustls client configuration for the whole
//! run, shared by every connection (an `Arc`), trusting only the CA(s) in the file.
//!
//! ALPN offers the one protocol the run speaks (`h2` or `http/1.1`) and a handshake where the
//! server picks another (or none, for `h2`) fails: a target that would fall back to another
//! protocol is not what the run measures. Session resumption is off: every connection makes a
//! full handshake, as thousands of distinct clients would, and the driver keeps no session
//! cache (nor does a small cache shared by all streams decide which of them resume).

use std::fmt;
use std::sync::{Arc, OnceLock};

use rustls::client::Resumption;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use super::Protocol;

/// What every TLS connection of the run shares.
pub struct TlsClient {
    connector: TlsConnector,
    server_name: ServerName<'static>,
    alpn: &'static [u8],
    /// What the first handshake agreed (`TLSv1_3 TLS13_AES_256_GCM_SHA384, ALPN h2`), for the
    /// report.
    negotiated: OnceLock<String>,
}

impl fmt::Debug for TlsClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsClient")
            .field("server_name", &self.server_name)
            .field("alpn", &String::from_utf8_lossy(self.alpn))
            .finish_non_exhaustive()
    }
}

impl TlsClient {
    /// A client trusting the certificates in `ca_file` (PEM), for `host` (the URL's host: an IP
    /// address or `localhost`, checked against the server's certificate), offering `protocol`
    /// by ALPN.
    pub fn new(ca_file: &str, host: &str, protocol: Protocol) -> Result<TlsClient, String> {
        let unreadable = |e: &dyn fmt::Display| format!("--ca-file {ca_file:?}: {e}");
        let mut roots = RootCertStore::empty();
        // Bounded: by the file's size.
        for cert in CertificateDer::pem_file_iter(ca_file).map_err(|e| unreadable(&e))? {
            let cert = cert.map_err(|e| unreadable(&e))?;
            roots.add(cert).map_err(|e| unreadable(&e))?;
        }
        if roots.is_empty() {
            return Err(format!("--ca-file {ca_file:?}: no PEM certificate in it"));
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| format!("cannot set up TLS: {e}"))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let alpn: &'static [u8] = match protocol {
            Protocol::H2 => b"h2",
            Protocol::Http1 => b"http/1.1",
        };
        config.alpn_protocols = vec![alpn.to_vec()];
        config.resumption = Resumption::disabled();
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let server_name = ServerName::try_from(host.to_owned())
            .map_err(|e| format!("{host:?} cannot be a TLS server name: {e}"))?;
        Ok(TlsClient {
            connector: TlsConnector::from(Arc::new(config)),
            server_name,
            alpn,
            negotiated: OnceLock::new(),
        })
    }

    /// The TLS handshake on `tcp`; fails unless the server agreed to this run's protocol.
    pub async fn handshake(&self, tcp: TcpStream) -> Result<TlsStream<TcpStream>, String> {
        let stream = self
            .connector
            .connect(self.server_name.clone(), tcp)
            .await
            .map_err(|e| format!("TLS handshake: {e}"))?;
        let connection = stream.get_ref().1;
        let agreed = connection.alpn_protocol();
        if agreed != Some(self.alpn) {
            return Err(format!(
                "TLS handshake: the server chose ALPN {}, not {}",
                agreed.map_or("none".into(), String::from_utf8_lossy),
                String::from_utf8_lossy(self.alpn)
            ));
        }
        self.negotiated.get_or_init(|| {
            let version = connection
                .protocol_version()
                .map(|v| format!("{v:?}"))
                .unwrap_or_default();
            let suite = connection
                .negotiated_cipher_suite()
                .map(|s| format!("{:?}", s.suite()))
                .unwrap_or_default();
            let group = connection
                .negotiated_key_exchange_group()
                .map(|g| format!("{:?}", g.name()))
                .unwrap_or_default();
            format!(
                "{version} {suite} {group}, ALPN {}",
                String::from_utf8_lossy(self.alpn)
            )
        });
        Ok(stream)
    }

    /// What the first successful handshake agreed, if there was one.
    pub fn negotiated(&self) -> Option<&str> {
        self.negotiated.get().map(String::as_str)
    }
}
