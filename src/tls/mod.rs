//! TLS termination for the API listener (`[tls]`): the certificate and key files, loaded and
//! checked (readable, matching, within their validity), and reloaded without a restart.
//!
//! rustls with the `ring` provider, TLS 1.2 and 1.3, ALPN `h2` and `http/1.1`. The certificate
//! is handed out per handshake by [`CertResolver`], which holds the current pair behind a lock
//! swapped on reload: new handshakes get the new pair, running connections keep theirs (rustls
//! only asks for a certificate while handshaking). A reload that fails keeps the old pair.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::config::TlsConfig;

/// How often the certificate and key files' modification times are checked; a change reloads
/// them (as SIGHUP does). Cheap (two `stat` calls), and ten seconds is well inside any
/// certificate renewal margin (ACME renews 30 days ahead).
pub const CERT_POLL_INTERVAL: Duration = Duration::from_secs(10);

/// `check-config` (and the log at start and reload) warn when the certificate expires within
/// this long: two weeks leaves time to renew by hand when automation failed.
pub const EXPIRY_WARNING: Duration = Duration::from_secs(14 * 24 * 60 * 60);

/// ALPN names offered, in the server's order of preference.
pub const ALPN_H2: &[u8] = b"h2";
pub const ALPN_HTTP1: &[u8] = b"http/1.1";

/// Why a certificate and key pair cannot be served.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TlsError {
    #[error("cannot read the certificate file {path:?}: {message}")]
    CertUnreadable { path: String, message: String },
    #[error("no PEM certificate in {path:?}")]
    NoCertificate { path: String },
    #[error("cannot read a PEM private key from {path:?}: {message}")]
    KeyUnreadable { path: String, message: String },
    #[error("the private key in {path:?} cannot be used: {message}")]
    KeyUnusable { path: String, message: String },
    #[error("the private key in {key:?} does not match the certificate in {cert:?}: {message}")]
    Mismatch {
        cert: String,
        key: String,
        message: String,
    },
    #[error("the certificate in {path:?} cannot be parsed as X.509: {message}")]
    CertInvalid { path: String, message: String },
    #[error("the certificate in {path:?} is not valid yet: its validity starts {not_before}")]
    NotYetValid { path: String, not_before: String },
    #[error("the certificate in {path:?} has expired: its validity ended {not_after}")]
    Expired { path: String, not_after: String },
    #[error("cannot set up TLS: {0}")]
    Setup(String),
}

impl TlsError {
    /// The config key the error is about, for check-config's `path: message` lines.
    pub fn key_path(&self) -> &'static str {
        match self {
            TlsError::KeyUnreadable { .. }
            | TlsError::KeyUnusable { .. }
            | TlsError::Mismatch { .. } => "tls.key_file",
            _ => "tls.cert_file",
        }
    }
}

/// A pair that may be served: how long it has left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Validity {
    /// More than [`EXPIRY_WARNING`] left.
    Valid,
    /// Expires within [`EXPIRY_WARNING`]: `left` to go.
    ExpiresSoon { left: Duration },
}

/// Whether a certificate valid from `not_before` to `not_after` (Unix seconds, inclusive, as
/// X.509 says) may be served at `now`, and whether it expires soon.
pub fn classify(
    path: &str,
    not_before: i64,
    not_after: i64,
    now: i64,
) -> Result<Validity, TlsError> {
    if now < not_before {
        return Err(TlsError::NotYetValid {
            path: path.to_owned(),
            not_before: show_time(not_before),
        });
    }
    if now > not_after {
        return Err(TlsError::Expired {
            path: path.to_owned(),
            not_after: show_time(not_after),
        });
    }
    let left = Duration::from_secs(u64::try_from(not_after - now).unwrap_or(0));
    Ok(if left < EXPIRY_WARNING {
        Validity::ExpiresSoon { left }
    } else {
        Validity::Valid
    })
}

/// A Unix time as an HTTP date (`Sun, 06 Nov 1994 08:49:37 GMT`), or the number for one before
/// 1970.
fn show_time(unix: i64) -> String {
    match u64::try_from(unix) {
        Ok(secs) => httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(secs)),
        Err(_) => format!("{unix} (Unix time)"),
    }
}

fn unix_now(now: SystemTime) -> i64 {
    match now.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(_) => 0,
    }
}

/// Reads and checks a pair: the chain (leaf first) and key parse, the key matches the leaf
/// ([`CertifiedKey::keys_match`]), and the leaf is within its validity at `now`.
pub fn load_pair(
    cert_file: &str,
    key_file: &str,
    now: SystemTime,
) -> Result<(Arc<CertifiedKey>, Validity), TlsError> {
    let cert_unreadable = |e: &dyn std::fmt::Display| TlsError::CertUnreadable {
        path: cert_file.to_owned(),
        message: e.to_string(),
    };
    let chain = CertificateDer::pem_file_iter(cert_file)
        .map_err(|e| cert_unreadable(&e))?
        // Bounded: by the file's size.
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| cert_unreadable(&e))?;
    let Some(leaf) = chain.first() else {
        return Err(TlsError::NoCertificate {
            path: cert_file.to_owned(),
        });
    };
    let (_, parsed) =
        x509_parser::parse_x509_certificate(leaf).map_err(|e| TlsError::CertInvalid {
            path: cert_file.to_owned(),
            message: e.to_string(),
        })?;
    let validity = parsed.validity();
    let (not_before, not_after) = (
        validity.not_before.timestamp(),
        validity.not_after.timestamp(),
    );
    let key = PrivateKeyDer::from_pem_file(key_file).map_err(|e| TlsError::KeyUnreadable {
        path: key_file.to_owned(),
        message: e.to_string(),
    })?;
    let provider = rustls::crypto::ring::default_provider();
    let signing_key =
        provider
            .key_provider
            .load_private_key(key)
            .map_err(|e| TlsError::KeyUnusable {
                path: key_file.to_owned(),
                message: e.to_string(),
            })?;
    let certified = CertifiedKey::new(chain, signing_key);
    certified.keys_match().map_err(|e| TlsError::Mismatch {
        cert: cert_file.to_owned(),
        key: key_file.to_owned(),
        message: e.to_string(),
    })?;
    let validity = classify(cert_file, not_before, not_after, unix_now(now))?;
    Ok((Arc::new(certified), validity))
}

/// When a pair's leaf certificate stops being valid (Unix seconds), for the expiry metric; `None`
/// for a leaf that does not parse (load_pair has parsed it already).
fn not_after(key: &CertifiedKey) -> Option<i64> {
    let leaf = key.cert.first()?;
    let (_, parsed) = x509_parser::parse_x509_certificate(leaf).ok()?;
    Some(parsed.validity().not_after.timestamp())
}

/// How a TLS handshake ended, for `tidegate_tls_handshakes_total`. The discriminants index
/// [`TlsCounts::handshakes`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handshake {
    Completed = 0,
    /// The client sent something rustls refused (or went away): scanners, a client that does
    /// not trust the certificate, a protocol it does not speak.
    Failed = 1,
    /// Not done within `tls.handshake_timeout`.
    TimedOut = 2,
}

impl Handshake {
    pub const ALL: [Handshake; 3] = [Handshake::Completed, Handshake::Failed, Handshake::TimedOut];

    pub fn as_str(self) -> &'static str {
        match self {
            Handshake::Completed => "completed",
            Handshake::Failed => "failed",
            Handshake::TimedOut => "timeout",
        }
    }
}

/// What the TLS listener has done, for the metrics: counted as it happens, read at scrape time.
#[derive(Debug, Default)]
struct TlsCounts {
    /// By [`Handshake`] (its discriminant).
    handshakes: [AtomicU64; 3],
    reloads_ok: AtomicU64,
    reloads_failed: AtomicU64,
    /// The served certificate's end of validity (Unix seconds).
    not_after: AtomicI64,
}

/// A reading of [`ServerTls`]'s counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TlsReading {
    /// Handshakes so far, by [`Handshake`] (in the order of [`Handshake::ALL`]).
    pub handshakes: [(Handshake, u64); 3],
    pub reloads_ok: u64,
    pub reloads_failed: u64,
    /// When the certificate new handshakes get stops being valid (Unix seconds).
    pub not_after: i64,
}

/// Hands every handshake the current pair; [`CertResolver::swap`] replaces it for the
/// handshakes that follow.
#[derive(Debug)]
pub struct CertResolver {
    current: RwLock<Arc<CertifiedKey>>,
}

impl CertResolver {
    pub fn new(key: Arc<CertifiedKey>) -> CertResolver {
        CertResolver {
            current: RwLock::new(key),
        }
    }

    pub fn current(&self) -> Arc<CertifiedKey> {
        // A panic while the lock was held cannot leave a half-written Arc: take it anyway.
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub fn swap(&self, key: Arc<CertifiedKey>) {
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = key;
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

/// What tells a file changed: its modification time, and its size and inode, since a file
/// rewritten within one tick of the file system's coarse clock keeps its time. `None` for a
/// file that cannot be read.
type Stamp = Option<(SystemTime, u64, u64)>;

/// The stamps of the certificate and key files.
type Mtimes = (Stamp, Stamp);

/// The API listener's TLS: the acceptor (with its handshake deadline) and the files it reloads.
pub struct ServerTls {
    acceptor: TlsAcceptor,
    resolver: Arc<CertResolver>,
    cert_file: String,
    key_file: String,
    /// A handshake must complete within this (`tls.handshake_timeout`).
    pub handshake_timeout: Duration,
    /// The files' modification times when last loaded, for [`ServerTls::watch`].
    seen: Mutex<Mtimes>,
    counts: TlsCounts,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("cert_file", &self.cert_file)
            .field("key_file", &self.key_file)
            .field("handshake_timeout", &self.handshake_timeout)
            .finish_non_exhaustive()
    }
}

impl ServerTls {
    /// The TLS of `[tls]`, loaded and checked, and how long its certificate has left; `None`
    /// when `[tls]` names no files (cleartext). `Config::validate` has made sure both or
    /// neither are set.
    pub fn from_config(config: &TlsConfig) -> Result<Option<(Arc<ServerTls>, Validity)>, TlsError> {
        let (Some(cert_file), Some(key_file)) = (&config.cert_file, &config.key_file) else {
            return Ok(None);
        };
        let seen = mtimes(cert_file, key_file);
        let (key, validity) = load_pair(cert_file, key_file, SystemTime::now())?;
        let resolver = Arc::new(CertResolver::new(key));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut server = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| TlsError::Setup(e.to_string()))?
            .with_no_client_auth()
            .with_cert_resolver(resolver.clone());
        server.alpn_protocols = vec![ALPN_H2.to_vec(), ALPN_HTTP1.to_vec()];
        // Stateless session tickets (rustls's recommended ticketer: keys made at start, rotated
        // every 6 hours, never leaving the process), as nginx sends by default: a client that
        // reconnects resumes, skipping the certificate and its signature. Without them, rustls
        // keeps resumable sessions in a 256-entry cache, which at thousands of clients has
        // evicted a session long before its client is back.
        server.ticketer =
            rustls::crypto::ring::Ticketer::new().map_err(|e| TlsError::Setup(e.to_string()))?;
        let counts = TlsCounts::default();
        counts.not_after.store(
            not_after(&resolver.current()).unwrap_or(0),
            Ordering::Relaxed,
        );
        let tls = ServerTls {
            acceptor: TlsAcceptor::from(Arc::new(server)),
            resolver,
            cert_file: cert_file.clone(),
            key_file: key_file.clone(),
            handshake_timeout: config.handshake_timeout,
            seen: Mutex::new(seen),
            counts,
        };
        Ok(Some((Arc::new(tls), validity)))
    }

    /// Counts a handshake's end.
    pub fn handshake(&self, how: Handshake) {
        self.counts.handshakes[how as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// The counts so far, and the served certificate's end of validity.
    pub fn reading(&self) -> TlsReading {
        let c = &self.counts;
        TlsReading {
            handshakes: Handshake::ALL
                .map(|h| (h, c.handshakes[h as usize].load(Ordering::Relaxed))),
            reloads_ok: c.reloads_ok.load(Ordering::Relaxed),
            reloads_failed: c.reloads_failed.load(Ordering::Relaxed),
            not_after: c.not_after.load(Ordering::Relaxed),
        }
    }

    pub fn acceptor(&self) -> &TlsAcceptor {
        &self.acceptor
    }

    /// The pair new handshakes get.
    pub fn current(&self) -> Arc<CertifiedKey> {
        self.resolver.current()
    }

    /// Reads the files again; a good pair replaces the current one for new handshakes, a bad
    /// one is logged and the current one kept. Blocking (reads files).
    pub fn reload(&self) -> Result<Validity, TlsError> {
        let seen = mtimes(&self.cert_file, &self.key_file);
        *self.seen.lock().unwrap_or_else(PoisonError::into_inner) = seen;
        match load_pair(&self.cert_file, &self.key_file, SystemTime::now()) {
            Ok((key, validity)) => {
                if let Some(end) = not_after(&key) {
                    self.counts.not_after.store(end, Ordering::Relaxed);
                }
                self.counts.reloads_ok.fetch_add(1, Ordering::Relaxed);
                self.resolver.swap(key);
                log_validity(&self.cert_file, validity, "TLS certificate reloaded");
                Ok(validity)
            }
            Err(e) => {
                self.counts.reloads_failed.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, "TLS certificate not reloaded; the current one stays in use");
                Err(e)
            }
        }
    }

    /// Reloads when either file's modification time changed since the last load (a failed
    /// reload is not retried until the files change again). Blocking.
    pub fn reload_if_changed(&self) -> Option<Result<Validity, TlsError>> {
        let now = mtimes(&self.cert_file, &self.key_file);
        let changed = *self.seen.lock().unwrap_or_else(PoisonError::into_inner) != now;
        changed.then(|| self.reload())
    }

    /// Checks the files every `every` and reloads them when they changed, until `stop`.
    pub async fn watch(self: Arc<Self>, every: Duration, stop: CancellationToken) {
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.tick().await; // the first tick is immediate: the files were just loaded
                            // Bounded: ends with `stop`; one check per tick.
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = ticks.tick() => {}
            }
            let tls = self.clone();
            // `stat` and file reads: off the async workers.
            let _ = tokio::task::spawn_blocking(move || tls.reload_if_changed()).await;
        }
    }
}

fn mtimes(cert_file: &str, key_file: &str) -> Mtimes {
    (stamp(cert_file), stamp(key_file))
}

fn stamp(path: &str) -> Stamp {
    let meta = std::fs::metadata(path).ok()?;
    #[cfg(unix)]
    let inode = std::os::unix::fs::MetadataExt::ino(&meta);
    #[cfg(not(unix))]
    let inode = 0;
    Some((meta.modified().ok()?, meta.len(), inode))
}

/// Logs a loaded certificate's state: a warning when it expires within [`EXPIRY_WARNING`].
pub fn log_validity(cert_file: &str, validity: Validity, what: &str) {
    match validity {
        Validity::Valid => tracing::info!(cert_file, "{what}"),
        Validity::ExpiresSoon { left } => tracing::warn!(
            cert_file,
            expires_in = %humantime::format_duration(left),
            "{what}; it expires soon: renew it"
        ),
    }
}

#[cfg(test)]
mod tests;
