use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{date_time_ymd, CertificateParams, KeyPair};

use super::*;

/// 2020-01-01 and 2030-01-01, 00:00 UTC, in Unix seconds.
const NOT_BEFORE: u64 = 1_577_836_800;
const NOT_AFTER: u64 = 1_893_456_000;
const DAY: u64 = 24 * 60 * 60;

fn at(unix: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(unix)
}

/// A self-signed certificate for 127.0.0.1 valid 2020–2030 and its key, as PEM.
fn pair() -> (String, String) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
    params.not_before = date_time_ymd(2020, 1, 1);
    params.not_after = date_time_ymd(2030, 1, 1);
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), key.serialize_pem())
}

/// Writes `text` to a fresh file under the temp dir; removed when the guard drops.
struct TempFile(PathBuf);

impl TempFile {
    fn new(text: &str) -> TempFile {
        static N: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "tidegate-tls-unit-{}-{}.pem",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::write(&path, text).unwrap();
        TempFile(path)
    }

    fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn a_matching_pair_within_its_validity_loads() {
    let (cert, key) = pair();
    let (cert, key) = (TempFile::new(&cert), TempFile::new(&key));
    let (loaded, validity) =
        load_pair(cert.path(), key.path(), at(NOT_BEFORE + 100 * DAY)).unwrap();
    assert_eq!(validity, Validity::Valid);
    assert_eq!(loaded.cert.len(), 1);
    loaded.keys_match().unwrap();
}

#[test]
fn expiry_is_classified_against_the_leafs_dates() {
    let (cert, key) = pair();
    let (cert, key) = (TempFile::new(&cert), TempFile::new(&key));
    let soon = load_pair(cert.path(), key.path(), at(NOT_AFTER - 3 * DAY))
        .unwrap()
        .1;
    assert_eq!(
        soon,
        Validity::ExpiresSoon {
            left: Duration::from_secs(3 * DAY)
        }
    );
    let expired = load_pair(cert.path(), key.path(), at(NOT_AFTER + 1)).unwrap_err();
    assert!(matches!(expired, TlsError::Expired { .. }), "{expired}");
    assert!(expired.to_string().contains("2030"), "{expired}");
    let early = load_pair(cert.path(), key.path(), at(NOT_BEFORE - 1)).unwrap_err();
    assert!(matches!(early, TlsError::NotYetValid { .. }), "{early}");
    assert_eq!(early.key_path(), "tls.cert_file");
}

#[test]
fn classify_edges() {
    let (b, a) = (1_000_i64, 1_000 + 30 * DAY as i64);
    assert_eq!(classify("c", b, a, b), Ok(Validity::Valid));
    assert_eq!(
        classify("c", b, a, a - 14 * DAY as i64),
        Ok(Validity::Valid)
    );
    assert_eq!(
        classify("c", b, a, a),
        Ok(Validity::ExpiresSoon {
            left: Duration::ZERO
        })
    );
    assert!(matches!(
        classify("c", b, a, a + 1),
        Err(TlsError::Expired { .. })
    ));
    assert!(matches!(
        classify("c", b, a, b - 1),
        Err(TlsError::NotYetValid { .. })
    ));
    // Before 1970 (a bogus date) is shown as a number, not a panic.
    assert!(classify("c", -5, a, -10)
        .unwrap_err()
        .to_string()
        .contains("-5"));
}

#[test]
fn a_key_of_another_certificate_is_a_mismatch() {
    let (cert, _) = pair();
    let (_, other_key) = pair();
    let (cert, key) = (TempFile::new(&cert), TempFile::new(&other_key));
    let err = load_pair(cert.path(), key.path(), at(NOT_BEFORE + DAY)).unwrap_err();
    assert!(matches!(err, TlsError::Mismatch { .. }), "{err}");
    assert_eq!(err.key_path(), "tls.key_file");
}

#[test]
fn unreadable_and_empty_files_say_which_file() {
    let (cert, key) = pair();
    let (cert, key) = (TempFile::new(&cert), TempFile::new(&key));
    let now = at(NOT_BEFORE + DAY);
    let missing = "/nonexistent/tidegate/cert.pem";
    let err = load_pair(missing, key.path(), now).unwrap_err();
    assert!(matches!(err, TlsError::CertUnreadable { .. }), "{err}");
    assert!(err.to_string().contains(missing), "{err}");

    let empty = TempFile::new("");
    let err = load_pair(empty.path(), key.path(), now).unwrap_err();
    assert!(matches!(err, TlsError::NoCertificate { .. }), "{err}");

    let err = load_pair(cert.path(), empty.path(), now).unwrap_err();
    assert!(matches!(err, TlsError::KeyUnreadable { .. }), "{err}");

    // A certificate where the key should be: no key in it.
    let err = load_pair(cert.path(), cert.path(), now).unwrap_err();
    assert!(matches!(err, TlsError::KeyUnreadable { .. }), "{err}");

    let garbage = TempFile::new("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n");
    let err = load_pair(garbage.path(), key.path(), now).unwrap_err();
    assert!(matches!(err, TlsError::CertInvalid { .. }), "{err}");
}

#[test]
fn the_resolver_hands_out_the_pair_swapped_in() {
    let now = at(NOT_BEFORE + DAY);
    let (c1, k1) = pair();
    let (c2, k2) = pair();
    let (c1, k1, c2, k2) = (
        TempFile::new(&c1),
        TempFile::new(&k1),
        TempFile::new(&c2),
        TempFile::new(&k2),
    );
    let first = load_pair(c1.path(), k1.path(), now).unwrap().0;
    let second = load_pair(c2.path(), k2.path(), now).unwrap().0;
    let resolver = CertResolver::new(first.clone());
    assert_eq!(resolver.current().cert, first.cert);
    resolver.swap(second.clone());
    assert_eq!(resolver.current().cert, second.cert);
}

#[test]
fn reloads_and_handshakes_are_counted_and_the_expiry_follows_the_served_certificate() {
    let (cert, key) = pair();
    let (cert_file, key_file) = (TempFile::new(&cert), TempFile::new(&key));
    let config = TlsConfig {
        cert_file: Some(cert_file.path().to_owned()),
        key_file: Some(key_file.path().to_owned()),
        ..TlsConfig::default()
    };
    let (tls, _) = ServerTls::from_config(&config).unwrap().unwrap();
    let start = tls.reading();
    assert_eq!(start.not_after, NOT_AFTER as i64);
    assert_eq!((start.reloads_ok, start.reloads_failed), (0, 0));

    // A bad pair: counted as failed, the expiry stays the served certificate's.
    std::fs::write(cert_file.path(), "not PEM").unwrap();
    assert!(tls.reload().is_err());
    let after_bad = tls.reading();
    assert_eq!((after_bad.reloads_ok, after_bad.reloads_failed), (0, 1));
    assert_eq!(after_bad.not_after, NOT_AFTER as i64);

    // A good pair expiring a year earlier: counted, and the expiry is the new one's.
    let key_pair = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
    params.not_before = date_time_ymd(2020, 1, 1);
    params.not_after = date_time_ymd(2029, 1, 1);
    let earlier = params.self_signed(&key_pair).unwrap();
    std::fs::write(cert_file.path(), earlier.pem()).unwrap();
    std::fs::write(key_file.path(), key_pair.serialize_pem()).unwrap();
    tls.reload().unwrap();
    let after_good = tls.reading();
    assert_eq!((after_good.reloads_ok, after_good.reloads_failed), (1, 1));
    assert_eq!(after_good.not_after, (NOT_AFTER - 365 * DAY) as i64);

    tls.handshake(Handshake::Completed);
    tls.handshake(Handshake::Completed);
    tls.handshake(Handshake::TimedOut);
    assert_eq!(
        tls.reading().handshakes,
        [
            (Handshake::Completed, 2),
            (Handshake::Failed, 0),
            (Handshake::TimedOut, 1)
        ]
    );
}
