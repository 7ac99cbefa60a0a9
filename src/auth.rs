//! Gateway API keys (`[auth] mode = "keys"`): the keys file, the key set, finding a client's key
//! and each key's own limits.
//!
//! The file holds each key's SHA-256, never the key: a client's `Authorization: Bearer <key>`
//! is hashed, looked up by the first [`LOOKUP_PREFIX_BYTES`] of its hash, and the whole hash
//! compared in constant time. Keys never appear in logs or errors; a key's `name` does (logs,
//! the registry, the admin API).
//!
//! Each key may have a request rate (a governor limiter of its own), a cap on concurrent streams
//! (a counter held by [`KeySlot`] guards) and a model allowlist (`*` patterns, as
//! `[[routes]]`). [`Keys::reload`] (SIGHUP) reads the file again into a new set off to the side
//! and swaps it in only if the whole file is valid; each key's counter and limiter carry over by
//! name, so a reload neither resets a key's caps nor lets it exceed them. Running streams are
//! untouched: their guards hold their own counters.
//!
//! Admission control ([`crate::admission`]) calls into this module and counts the refusals.

use std::collections::HashMap;
use std::io::Read;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use http::header::{HeaderMap, AUTHORIZATION};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::{
    check_count, check_name, toml_syntax_error, wildcard_match, AuthConfig, AuthMode, ConfigError,
    ConfigErrors, MAX_STREAMS_CAP_RANGE, REQUESTS_PER_SECOND_RANGE,
};

/// Bytes of a SHA-256.
pub const KEY_HASH_BYTES: usize = 32;
/// Bytes of a key's hash the set is indexed by: enough that two keys practically never share a
/// bucket; the whole hash is then compared in constant time.
pub const LOOKUP_PREFIX_BYTES: usize = 8;
/// Largest keys file read: far above any real key list (a key is about 150 bytes), so a wrong
/// path (a log, a device) is refused instead of read into memory.
pub const MAX_KEYS_FILE_BYTES: u64 = 16 * 1024 * 1024;
/// Most keys in one file: bounds the set's memory and each key's limiter.
pub const MAX_KEYS: usize = 100_000;

type HashBytes = [u8; KEY_HASH_BYTES];
type DirectLimiter = RateLimiter<NotKeyed, InMemoryState, DefaultClock, StateInformationMiddleware>;

/// The credentials of a `Bearer` authorization (the scheme is case-insensitive, RFC 9110).
pub fn bearer_token(value: &[u8]) -> Option<&[u8]> {
    let space = value.iter().position(|b| *b == b' ')?;
    let (scheme, rest) = value.split_at(space);
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return None;
    }
    let start = rest.iter().position(|b| *b != b' ')?;
    Some(&rest[start..])
}

/// The SHA-256 of a key, as the keys file stores it.
pub fn hash_key(key: &[u8]) -> HashBytes {
    Sha256::digest(key).into()
}

/// The keys file as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a keys file: [[keys]] tables")]
struct KeysFile {
    #[serde(default)]
    keys: Vec<KeyEntry>,
}

/// One `[[keys]]` entry as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a [[keys]] table")]
struct KeyEntry {
    name: String,
    sha256: String,
    #[serde(default)]
    requests_per_second: u32,
    #[serde(default)]
    burst: u32,
    #[serde(default)]
    max_streams: u32,
    models: Option<Vec<String>>,
}

/// A key's request rate: its limiter and the quota it was built with (a reload keeps the
/// limiter only when the quota is unchanged).
struct KeyRate {
    limiter: DirectLimiter,
    per_second: u32,
    burst: u32,
}

/// One API key: its name, hash and limits, and the state shared across reloads.
pub struct Key {
    name: Arc<str>,
    hash: HashBytes,
    rate: Option<Arc<KeyRate>>,
    max_streams: u32,
    /// Streams holding a slot of this key: counted even without a cap, so a cap set by a reload
    /// starts from the true count.
    streams: Arc<AtomicU32>,
    models: Option<Box<[String]>>,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The hash is left out: it is not the key, but nothing about a key needs printing.
        f.debug_struct("Key").field("name", &self.name).finish()
    }
}

impl Key {
    /// The key's name: what logs, the registry and the admin API show.
    pub fn name(&self) -> &Arc<str> {
        &self.name
    }

    /// Takes one request from the key's rate; when over it, the wait until one is allowed.
    pub fn check_rate(&self) -> Result<(), Duration> {
        let Some(rate) = &self.rate else {
            return Ok(());
        };
        rate.limiter
            .check()
            .map(|_| ())
            .map_err(|not_until| not_until.wait_time_from(rate.limiter.clock().now()))
    }

    /// `requests_per_second` (0: no limit).
    pub fn rate_limit(&self) -> u32 {
        self.rate.as_ref().map_or(0, |r| r.per_second)
    }

    /// `max_streams` (0: no cap).
    pub fn max_streams(&self) -> u32 {
        self.max_streams
    }

    /// Streams holding a slot of this key now.
    pub fn streams(&self) -> u32 {
        self.streams.load(Ordering::Acquire)
    }

    /// A stream slot of this key, or `None` when it has `max_streams` already. The slot is
    /// given back when the guard is dropped.
    pub fn take_slot(&self) -> Option<KeySlot> {
        let max = self.max_streams;
        self.streams
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (max == 0 || n < max).then_some(n.saturating_add(1))
            })
            .ok()
            .map(|_| KeySlot {
                streams: self.streams.clone(),
            })
    }

    /// Whether the key may use `model`: no allowlist, or a pattern of it matches.
    pub fn allows(&self, model: &str) -> bool {
        self.models
            .as_ref()
            .is_none_or(|models| models.iter().any(|p| wildcard_match(p, model)))
    }
}

/// A stream's slot in its key's count; dropping it gives the slot back.
pub struct KeySlot {
    streams: Arc<AtomicU32>,
}

impl Drop for KeySlot {
    fn drop(&mut self) {
        self.streams.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Every key of one keys file, indexed by hash prefix.
#[derive(Default)]
pub struct KeySet {
    keys: Vec<Arc<Key>>,
    by_prefix: HashMap<[u8; LOOKUP_PREFIX_BYTES], Vec<usize>>,
}

impl KeySet {
    /// Parses a keys file's text. `previous` is the set in use: each key whose name it has keeps
    /// that key's stream counter, and its limiter when the quota is unchanged. Every problem is
    /// reported, each at its path in the file (`keys[1].sha256`), never with key material.
    pub fn parse(text: &str, previous: Option<&KeySet>) -> Result<KeySet, ConfigErrors> {
        let table: toml::Table =
            toml::from_str(text).map_err(|e| ConfigErrors::from(toml_syntax_error(text, &e)))?;
        let file: KeysFile =
            serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
                ConfigErrors::from(ConfigError {
                    path: e.path().to_string(),
                    message: e.inner().message().to_owned(),
                })
            })?;
        if file.keys.len() > MAX_KEYS {
            return Err(ConfigErrors::from(ConfigError {
                path: "keys".into(),
                message: format!("at most {MAX_KEYS} keys, got {}", file.keys.len()),
            }));
        }
        let mut errors = Vec::new();
        let mut set = KeySet::default();
        let mut by_name: HashMap<&str, usize> = HashMap::new();
        let mut by_hash: HashMap<HashBytes, usize> = HashMap::new();
        for (i, entry) in file.keys.iter().enumerate() {
            let mut fail = |field: &str, message: String| {
                errors.push(ConfigError {
                    path: format!("keys[{i}].{field}"),
                    message,
                })
            };
            let mut ok = true;
            let mut check = |field: &str, result: Result<(), String>| {
                if let Err(message) = result {
                    ok = false;
                    fail(field, message);
                }
            };
            check("name", check_name(&entry.name, "API key", r#""team-a""#));
            if let Some(first) = by_name.insert(&entry.name, i) {
                check(
                    "name",
                    Err(format!(
                        "{:?} is already the name of keys[{first}]; every key needs a name of \
                         its own",
                        entry.name
                    )),
                );
            }
            let hash = parse_hash(&entry.sha256);
            if let Err(message) = &hash {
                check("sha256", Err(message.clone()));
            }
            if let Ok(hash) = hash {
                if let Some(first) = by_hash.insert(hash, i) {
                    check(
                        "sha256",
                        Err(format!(
                            "the same key as keys[{first}] ({:?}): one key cannot have two names",
                            file.keys[first].name
                        )),
                    );
                }
            }
            for (field, value) in [
                ("requests_per_second", entry.requests_per_second),
                ("burst", entry.burst),
            ] {
                check(field, check_count(value, &REQUESTS_PER_SECOND_RANGE));
            }
            if entry.burst > 0 && entry.requests_per_second == 0 {
                check(
                    "burst",
                    Err("has no effect without requests_per_second".to_owned()),
                );
            }
            check(
                "max_streams",
                check_count(entry.max_streams, &MAX_STREAMS_CAP_RANGE),
            );
            if let Some(models) = &entry.models {
                if models.is_empty() {
                    check(
                        "models",
                        Err(
                            "must list at least one model or pattern; leave models out to allow \
                             every model"
                                .to_owned(),
                        ),
                    );
                }
                if models.iter().any(String::is_empty) {
                    check(
                        "models",
                        Err(r#"must not hold an empty entry ("*" matches every model)"#.to_owned()),
                    );
                }
            }
            if let (true, Ok(hash)) = (ok, hash) {
                set.insert(entry, hash, previous);
            }
        }
        if errors.is_empty() {
            Ok(set)
        } else {
            Err(ConfigErrors(errors))
        }
    }

    fn insert(&mut self, entry: &KeyEntry, hash: HashBytes, previous: Option<&KeySet>) {
        let old = previous.and_then(|p| p.by_name(&entry.name));
        let rate = NonZeroU32::new(entry.requests_per_second).map(|rps| {
            let burst = entry.burst;
            match old.and_then(|k| k.rate.as_ref()) {
                Some(rate) if rate.per_second == rps.get() && rate.burst == burst => rate.clone(),
                _ => {
                    let allowed = NonZeroU32::new(burst).unwrap_or(rps);
                    Arc::new(KeyRate {
                        limiter: RateLimiter::direct(Quota::per_second(rps).allow_burst(allowed))
                            .with_middleware::<StateInformationMiddleware>(),
                        per_second: rps.get(),
                        burst,
                    })
                }
            }
        });
        let key = Key {
            name: old.map_or_else(|| Arc::from(entry.name.as_str()), |k| k.name.clone()),
            hash,
            rate,
            max_streams: entry.max_streams,
            streams: old.map_or_else(Arc::default, |k| k.streams.clone()),
            models: entry.models.clone().map(Vec::into_boxed_slice),
        };
        self.by_prefix
            .entry(prefix(&hash))
            .or_default()
            .push(self.keys.len());
        self.keys.push(Arc::new(key));
    }

    fn by_name(&self, name: &str) -> Option<&Arc<Key>> {
        self.keys.iter().find(|k| &*k.name == name)
    }

    /// The key whose SHA-256 is that of `presented`, if any.
    pub fn find(&self, presented: &[u8]) -> Option<&Arc<Key>> {
        let hash = hash_key(presented);
        let candidates = self.by_prefix.get(&prefix(&hash))?;
        candidates
            .iter()
            .filter_map(|&i| self.keys.get(i))
            .find(|key| bool::from(key.hash.ct_eq(&hash)))
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

fn prefix(hash: &HashBytes) -> [u8; LOOKUP_PREFIX_BYTES] {
    let mut out = [0u8; LOOKUP_PREFIX_BYTES];
    out.copy_from_slice(&hash[..LOOKUP_PREFIX_BYTES]);
    out
}

/// A `sha256` value: 64 hex digits. The message never repeats the value: someone may have
/// pasted the key itself.
fn parse_hash(text: &str) -> Result<HashBytes, String> {
    let mut hash = [0u8; KEY_HASH_BYTES];
    match hex::decode_to_slice(text, &mut hash) {
        Ok(()) => Ok(hash),
        Err(_) => Err(format!(
            "must be the key's SHA-256 as {} hex digits (what `tidegate hash-key` prints), not \
             the key itself; got {} characters{}",
            KEY_HASH_BYTES * 2,
            text.chars().count(),
            if text.len() == KEY_HASH_BYTES * 2 {
                " that are not all hex digits"
            } else {
                ""
            }
        )),
    }
}

/// Why a request has no key of ours.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoKey {
    /// No `Authorization: Bearer` header.
    Missing,
    /// A key that is not in the keys file.
    Unknown,
}

/// The gateway's keys: the file they come from and the set in use, swapped whole on reload.
pub struct Keys {
    path: PathBuf,
    current: RwLock<Arc<KeySet>>,
    /// Held through a reload, so two reloads never build from the same old set.
    reloading: Mutex<()>,
}

impl Keys {
    /// The keys `[auth]` asks for: `None` when `mode = "none"`, else the keys file, read and
    /// checked whole (errors at paths such as `auth.keys_file: keys[1].sha256`).
    pub fn from_config(auth: &AuthConfig) -> Result<Option<Arc<Keys>>, ConfigErrors> {
        match (auth.mode, auth.keys_file.as_deref()) {
            (AuthMode::None, _) => Ok(None),
            (AuthMode::Keys, Some(path)) => {
                Keys::load(path)
                    .map(|k| Some(Arc::new(k)))
                    .map_err(|ConfigErrors(errors)| {
                        ConfigErrors(
                            errors
                                .into_iter()
                                .map(|e| ConfigError {
                                    path: format!("auth.keys_file ({path}): {}", e.path),
                                    message: e.message,
                                })
                                .collect(),
                        )
                    })
            }
            // Config::validate requires the file with mode = "keys".
            (AuthMode::Keys, None) => Err(ConfigErrors::from(ConfigError {
                path: "auth.keys_file".into(),
                message: r#"required when auth.mode = "keys""#.into(),
            })),
        }
    }

    /// Reads and checks the keys file at `path`.
    pub fn load(path: impl Into<PathBuf>) -> Result<Keys, ConfigErrors> {
        let path = path.into();
        let set = KeySet::parse(&read_keys_file(&path)?, None)?;
        Ok(Keys {
            path,
            current: RwLock::new(Arc::new(set)),
            reloading: Mutex::new(()),
        })
    }

    /// The set in use.
    pub fn current(&self) -> Arc<KeySet> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The key a request presents in `Authorization: Bearer <key>`, or why there is none.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Arc<Key>, NoKey> {
        let presented = headers
            .get(AUTHORIZATION)
            .and_then(|v| bearer_token(v.as_bytes()))
            .ok_or(NoKey::Missing)?;
        self.current()
            .find(presented)
            .cloned()
            .ok_or(NoKey::Unknown)
    }

    /// Reads the keys file again and, if it is valid, puts its keys in use (counters and
    /// limiters carried over by name); otherwise the keys in use stay. Logs either way (the
    /// number of keys, or why the file was refused; never key material) and returns the number
    /// of keys now in use, or the file's problems.
    pub fn reload(&self) -> Result<usize, ConfigErrors> {
        let _one_at_a_time = self
            .reloading
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let old = self.current();
        let result = read_keys_file(&self.path).and_then(|text| KeySet::parse(&text, Some(&old)));
        match result {
            Ok(set) => {
                let keys = set.len();
                *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(set);
                tracing::info!(keys, file = %self.path.display(), "API keys reloaded");
                if keys == 0 {
                    tracing::warn!("the keys file lists no keys: every API request is refused");
                }
                Ok(keys)
            }
            Err(errors) => {
                tracing::warn!(
                    file = %self.path.display(),
                    keys = old.len(),
                    reason = %errors.to_string().replace('\n', "; "),
                    "keys file not reloaded: keeping the keys in use"
                );
                Err(errors)
            }
        }
    }
}

/// The keys file's text, at most [`MAX_KEYS_FILE_BYTES`].
fn read_keys_file(path: &Path) -> Result<String, ConfigErrors> {
    let cannot = |message: String| {
        ConfigErrors::from(ConfigError {
            path: "(file)".into(),
            message,
        })
    };
    let file = std::fs::File::open(path)
        .map_err(|e| cannot(format!("cannot read {}: {e}", path.display())))?;
    let mut text = String::new();
    file.take(MAX_KEYS_FILE_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|e| cannot(format!("cannot read {}: {e}", path.display())))?;
    if text.len() as u64 > MAX_KEYS_FILE_BYTES {
        return Err(cannot(format!(
            "{} is larger than {MAX_KEYS_FILE_BYTES} bytes: not a keys file",
            path.display()
        )));
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex_of(key: &str) -> String {
        hex::encode(hash_key(key.as_bytes()))
    }

    fn entry(name: &str, key: &str, extra: &str) -> String {
        format!(
            "[[keys]]\nname = \"{name}\"\nsha256 = \"{}\"\n{extra}\n",
            hex_of(key)
        )
    }

    fn problems(text: &str) -> Vec<String> {
        match KeySet::parse(text, None) {
            Ok(_) => panic!("accepted:\n{text}"),
            Err(ConfigErrors(errors)) => errors.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        assert_eq!(bearer_token(b"Bearer abc"), Some(&b"abc"[..]));
        assert_eq!(bearer_token(b"bearer  abc"), Some(&b"abc"[..]));
        assert_eq!(bearer_token(b"BEARER abc"), Some(&b"abc"[..]));
        assert_eq!(bearer_token(b"Basic abc"), None);
        assert_eq!(bearer_token(b"Bearer"), None);
        assert_eq!(bearer_token(b"Bearer "), None);
    }

    #[test]
    fn hashes_are_sha256() {
        // `printf abc | sha256sum`
        assert_eq!(
            hex_of("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn keys_are_found_by_hash_and_only_whole() {
        let text = entry("team-a", "sk-alpha-0123456789", "")
            + &entry("team-b", "sk-bravo-0123456789", "models = [\"gpt-4o*\"]");
        let set = KeySet::parse(&text, None).unwrap();
        assert_eq!(set.len(), 2);
        let a = set.find(b"sk-alpha-0123456789").unwrap();
        assert_eq!(&**a.name(), "team-a");
        assert!(a.allows("anything"));
        let b = set.find(b"sk-bravo-0123456789").unwrap();
        assert!(b.allows("gpt-4o-mini") && !b.allows("o1"));
        assert!(set.find(b"sk-alpha-012345678").is_none());
        assert!(set.find(b"").is_none());
        // The hash (upper-case hex too) is not a key.
        assert!(set.find(hex_of("sk-alpha-0123456789").as_bytes()).is_none());
        let upper = entry("c", "k", "").replace(&hex_of("k"), &hex_of("k").to_uppercase());
        assert!(KeySet::parse(&upper, None).unwrap().find(b"k").is_some());
    }

    #[test]
    fn every_problem_is_reported_with_its_entry_and_no_key_material() {
        let text = entry("team-a", "one", "")
            + &entry("team-a", "two", "")
            + &entry("team-c", "one", "")
            + "[[keys]]\nname = \"Bad Name\"\nsha256 = \"sk-live-secret\"\nburst = 5\nmodels = []\n";
        let found = problems(&text);
        assert_eq!(
            found,
            [
                r#"keys[1].name: "team-a" is already the name of keys[0]; every key needs a name of its own"#,
                r#"keys[2].sha256: the same key as keys[0] ("team-a"): one key cannot have two names"#,
                r#"keys[3].name: "Bad Name" is not a valid API key name: use lower-case letters a-z, digits, '_', '.' and '-'"#,
                "keys[3].sha256: must be the key's SHA-256 as 64 hex digits (what `tidegate hash-key` prints), not the key itself; got 14 characters",
                "keys[3].burst: has no effect without requests_per_second",
                "keys[3].models: must list at least one model or pattern; leave models out to allow every model",
            ]
        );
        assert!(!found.concat().contains("sk-live-secret"));

        let unknown = problems(&(entry("a", "k", "") + "rate = 5\n"));
        assert_eq!(unknown.len(), 1);
        assert!(
            unknown[0].starts_with("keys[0]") && unknown[0].contains("unknown field `rate`"),
            "{unknown:?}"
        );
        let syntax = problems("[[keys]]\nname = \"a\"\nsha256 = sk-live-secret\n");
        assert!(syntax[0].starts_with("line 3, column"), "{syntax:?}");
        assert!(!syntax[0].contains("sk-live-secret"), "{syntax:?}");
        let missing = problems("[[keys]]\nname = \"a\"\n");
        assert!(missing[0].contains("sha256"), "{missing:?}");
        let range = problems(&entry("a", "k", "max_streams = 10000001"));
        assert_eq!(
            range,
            ["keys[0].max_streams: must be between 0 and 10000000, got 10000001"]
        );
        assert!(KeySet::parse("", None).unwrap().is_empty());
    }

    #[test]
    fn per_key_rate_and_stream_slots() {
        let text = entry(
            "a",
            "k",
            "requests_per_second = 1\nburst = 2\nmax_streams = 2",
        );
        let set = KeySet::parse(&text, None).unwrap();
        let key = set.find(b"k").unwrap();
        assert_eq!((key.rate_limit(), key.max_streams()), (1, 2));
        key.check_rate().unwrap();
        key.check_rate().unwrap();
        let wait = key.check_rate().unwrap_err();
        assert!(wait > Duration::ZERO && wait <= Duration::from_secs(1));
        let one = key.take_slot().unwrap();
        let two = key.take_slot().unwrap();
        assert!(key.take_slot().is_none());
        assert_eq!(key.streams(), 2);
        drop(one);
        let three = key.take_slot().unwrap();
        drop((two, three));
        assert_eq!(key.streams(), 0);
    }

    #[test]
    fn a_reload_carries_counts_and_limiters_over_by_name() {
        let dir = std::env::temp_dir().join(format!("tidegate-keys-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("keys.toml");
        let limits = "requests_per_second = 1\nburst = 1\nmax_streams = 1";
        std::fs::write(&path, entry("a", "ka", limits) + &entry("b", "kb", "")).unwrap();
        let keys = Keys::load(&path).unwrap();
        let mut headers = HeaderMap::new();
        headers.insert(AUTHORIZATION, "Bearer ka".parse().unwrap());
        let a = keys.authenticate(&headers).unwrap();
        a.check_rate().unwrap();
        let slot = a.take_slot().unwrap();

        // "a" keeps its name and limits under a new key; "b" goes; "c" comes.
        std::fs::write(&path, entry("a", "ka2", limits) + &entry("c", "kc", "")).unwrap();
        assert_eq!(keys.reload().unwrap(), 2);
        let set = keys.current();
        assert!(set.find(b"ka").is_none() && set.find(b"kb").is_none());
        let a2 = set.find(b"ka2").unwrap();
        assert!(a2.take_slot().is_none(), "the running stream still counts");
        assert!(a2.check_rate().is_err(), "the rate was not reset");
        assert!(set.find(b"kc").is_some());
        drop(slot);
        assert_eq!(a2.streams(), 0);
        assert!(a2.take_slot().is_some());

        // A bad file keeps the keys in use.
        std::fs::write(&path, entry("a", "ka3", "") + "[[keys]]\nname = \"x\"\n").unwrap();
        assert!(keys.reload().is_err());
        assert!(keys.current().find(b"ka2").is_some());
        std::fs::remove_file(&path).unwrap();
        assert!(keys.reload().is_err());
        assert_eq!(keys.current().len(), 2);

        let mut none = HeaderMap::new();
        assert_eq!(keys.authenticate(&none).unwrap_err(), NoKey::Missing);
        none.insert(AUTHORIZATION, "Bearer nope".parse().unwrap());
        assert_eq!(keys.authenticate(&none).unwrap_err(), NoKey::Unknown);
    }
}
