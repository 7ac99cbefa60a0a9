//! A small reader over a parsed [`toml::Table`] that collects every error.
//!
//! serde's derive stops at the first problem; an operator fixing a config
//! file wants all of them at once. The reader *takes* known keys out of each
//! table, converts them with a typed converter, records a [`ConfigError`]
//! with the dotted key path for every failure and keeps going. Whatever is
//! left in a table once its section is finished is reported as an unknown
//! key, with a "did you mean" hint when a known key is close or the key
//! belongs to another section.

use std::net::SocketAddr;
use std::time::Duration;

use toml::{Table, Value};

use super::duration::{parse_duration, DURATION_EXAMPLES};
use super::{ConfigError, LogFormat, UpstreamUrl};

/// One table of the document and the dotted path that leads to it
/// (empty for the root).
pub(super) struct Section {
    path: String,
    table: Table,
}

impl Section {
    pub(super) fn root(table: Table) -> Section {
        Section {
            path: String::new(),
            table,
        }
    }
}

struct Unknown {
    error_index: usize,
    parent: String,
    key: String,
}

/// Collects errors and remembers every key path the schema asked for, so
/// unknown keys can be matched against them.
#[derive(Default)]
pub(super) struct Reader {
    errors: Vec<ConfigError>,
    /// `(parent path, key)` for every key the schema knows, in schema order.
    known: Vec<(String, String)>,
    unknown: Vec<Unknown>,
    /// Extra explanations for specific unknown paths.
    hints: Vec<(&'static str, &'static str)>,
}

impl Reader {
    /// Takes `key` from `section`; if present, converts it and stores it in
    /// `out`, or records the converter's message at the key's path. An absent
    /// key leaves `out` (the default) untouched.
    pub(super) fn read<T>(
        &mut self,
        section: &mut Section,
        key: &str,
        out: &mut T,
        convert: impl FnOnce(&Value) -> Result<T, String>,
    ) {
        self.known.push((section.path.clone(), key.to_owned()));
        if let Some(value) = section.table.remove(key) {
            match convert(&value) {
                Ok(converted) => *out = converted,
                Err(message) => self.errors.push(ConfigError {
                    path: join_path(&section.path, key),
                    message,
                }),
            }
        }
    }

    /// Takes the sub-table `key` from `parent`. An absent key gives an empty
    /// section (so its keys are still known for hints); a value that is not a
    /// table is an error at `key`'s path and also gives an empty section.
    pub(super) fn section(&mut self, parent: &mut Section, key: &str) -> Section {
        self.known.push((parent.path.clone(), key.to_owned()));
        let path = join_path(&parent.path, key);
        let table = match parent.table.remove(key) {
            None => Table::new(),
            Some(Value::Table(table)) => table,
            Some(other) => {
                self.errors.push(ConfigError {
                    message: format!(
                        "expected a table (a [{path}] section), got {}",
                        describe(&other)
                    ),
                    path: path.clone(),
                });
                Table::new()
            }
        };
        Section { path, table }
    }

    /// Adds an explanation to the "unknown key" error for `path`, if any.
    pub(super) fn hint(&mut self, path: &'static str, hint: &'static str) {
        self.hints.push((path, hint));
    }

    /// Reports every key still left in `section` as unknown.
    pub(super) fn finish_section(&mut self, section: Section) {
        for (key, value) in section.table {
            let message = if value.is_table() {
                "unknown section"
            } else {
                "unknown key"
            };
            self.unknown.push(Unknown {
                error_index: self.errors.len(),
                parent: section.path.clone(),
                key: key.clone(),
            });
            self.errors.push(ConfigError {
                path: join_path(&section.path, &key),
                message: message.to_owned(),
            });
        }
    }

    /// All errors, in reading order, with hints attached to unknown keys.
    pub(super) fn finish(mut self) -> Vec<ConfigError> {
        for unknown in &self.unknown {
            let Some(error) = self.errors.get_mut(unknown.error_index) else {
                continue;
            };
            let hint = self
                .hints
                .iter()
                .find(|(path, _)| *path == error.path)
                .map(|(_, hint)| (*hint).to_owned())
                .or_else(|| {
                    suggest(&self.known, &unknown.parent, &unknown.key)
                        .map(|s| format!("did you mean {s:?}?"))
                });
            if let Some(hint) = hint {
                error.message = format!("{} ({hint})", error.message);
            }
        }
        self.errors
    }
}

/// `parent.key`, quoting `key` when it is not a bare TOML key.
pub(super) fn join_path(parent: &str, key: &str) -> String {
    let bare = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    let key = if bare {
        key.to_owned()
    } else {
        format!("{key:?}")
    };
    if parent.is_empty() {
        key
    } else {
        format!("{parent}.{key}")
    }
}

/// A known key close to `key` in the same section (by key name), or the
/// full path of an identically named key in another section.
fn suggest(known: &[(String, String)], parent: &str, key: &str) -> Option<String> {
    let max_distance = match key.chars().count() {
        0..=3 => 1,
        _ => 2,
    };
    let nearby = known
        .iter()
        .filter(|(p, _)| p == parent)
        .map(|(_, k)| {
            (
                edit_distance(&k.to_ascii_lowercase(), &key.to_ascii_lowercase()),
                k,
            )
        })
        .filter(|(d, _)| *d <= max_distance)
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k.clone());
    nearby.or_else(|| {
        known
            .iter()
            .find(|(p, k)| p != parent && k == key)
            .map(|(p, k)| join_path(p, k))
    })
}

/// Levenshtein distance over chars; keys are short, so O(n·m) is fine.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    let mut current = vec![0; b.len() + 1];
    for (i, ca) in a.chars().enumerate() {
        current[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous[j] + usize::from(ca != *cb);
            current[j + 1] = substitution.min(previous[j + 1] + 1).min(current[j] + 1);
        }
        std::mem::swap(&mut previous, &mut current);
    }
    previous[b.len()]
}

/// How a wrong value is quoted back in messages: strings (shortened) in
/// quotes, other types named with their value.
pub(super) fn describe(value: &Value) -> String {
    const MAX_CHARS: usize = 60;
    match value {
        Value::String(s) if s.chars().count() > MAX_CHARS => {
            let head: String = s.chars().take(MAX_CHARS).collect();
            format!("{head:?}...")
        }
        Value::String(s) => format!("{s:?}"),
        Value::Integer(i) => format!("integer {i}"),
        Value::Float(f) => format!("float {f}"),
        Value::Boolean(b) => format!("boolean {b}"),
        Value::Datetime(d) => format!("datetime {d}"),
        Value::Array(_) => "an array".to_owned(),
        Value::Table(_) => "a table".to_owned(),
    }
}

// ---- typed converters -------------------------------------------------------

pub(super) fn string(value: &Value) -> Result<String, String> {
    match value {
        Value::String(s) => Ok(s.clone()),
        other => Err(format!("expected a string, got {}", describe(other))),
    }
}

pub(super) fn boolean(value: &Value) -> Result<bool, String> {
    match value {
        Value::Boolean(b) => Ok(*b),
        other => Err(format!("expected true or false, got {}", describe(other))),
    }
}

pub(super) fn integer(value: &Value) -> Result<i64, String> {
    match value {
        Value::Integer(i) => Ok(*i),
        other => Err(format!("expected an integer, got {}", describe(other))),
    }
}

pub(super) fn duration(value: &Value) -> Result<Duration, String> {
    match value {
        Value::String(s) => parse_duration(s),
        other => Err(format!(
            "expected a duration such as {DURATION_EXAMPLES}, got {}",
            describe(other)
        )),
    }
}

pub(super) fn socket_addr(value: &Value) -> Result<SocketAddr, String> {
    let expected = r#"expected an IP address and port such as "127.0.0.1:8080" or "[::1]:8080""#;
    match value {
        Value::String(s) => s.parse().map_err(|_| {
            let host = s.rsplit_once(':').map(|(host, _)| host);
            let hint = match host {
                None => " (the port is required)",
                Some(host) if !host.starts_with('[') && host.contains(char::is_alphabetic) => {
                    " (host names are not resolved; use an IP address)"
                }
                Some(_) => "",
            };
            format!("{expected}, got {s:?}{hint}")
        }),
        other => Err(format!("{expected}, got {}", describe(other))),
    }
}

pub(super) fn upstream_url(value: &Value) -> Result<UpstreamUrl, String> {
    UpstreamUrl::parse(&string(value)?)
}

pub(super) fn log_format(value: &Value) -> Result<LogFormat, String> {
    string(value)?.parse()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edit_distance_basics() {
        assert_eq!(edit_distance("", ""), 0);
        assert_eq!(edit_distance("abc", ""), 3);
        assert_eq!(edit_distance("max_body_byte", "max_body_bytes"), 1);
        assert_eq!(edit_distance("lmiits", "limits"), 2);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }

    #[test]
    fn paths_quote_non_bare_keys() {
        assert_eq!(join_path("", "limits"), "limits");
        assert_eq!(
            join_path("limits", "max_body_bytes"),
            "limits.max_body_bytes"
        );
        assert_eq!(join_path("limits", "a b"), r#"limits."a b""#);
        assert_eq!(join_path("", ""), r#""""#);
    }

    #[test]
    fn describe_shortens_long_strings() {
        let long = Value::String("x".repeat(100));
        assert_eq!(describe(&long), format!("{:?}...", "x".repeat(60)));
        assert_eq!(describe(&Value::Integer(5)), "integer 5");
        assert_eq!(describe(&Value::Array(Vec::new())), "an array");
    }
}
