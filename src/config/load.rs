//! Reading one TOML document into [`Config`], with every problem's key path.
//!
//! serde's derive stops at the first error and, with `deny_unknown_fields`,
//! at the first unknown key, without a hint. So the document is parsed into a
//! [`toml::Table`] first (a syntax error is reported alone), then
//! deserialized through two wrappers: `serde_ignored` reports every key the
//! schema did not take, and `serde_path_to_error` names the key a type error
//! is at. After a type error the offending key is taken out of the table and
//! the rest is read again, so every type error is reported, not just the
//! first.
//!
//! Unknown keys get a "did you mean" hint from the schema's own key list:
//! `Config::default()` serialized to JSON (an absent optional key is `null`
//! there, so it is listed too). Nobody maintains a list of keys by hand.

use toml::{Table, Value};

use super::{Config, ConfigError, ConfigErrors};

/// Extra explanations for keys that look right but are deliberately not
/// read from the file.
const HINTS: [(&str, &str); 2] = [
    (
        "admin.token",
        "the token is never read from the file; set token_env to the name \
         of an environment variable holding it",
    ),
    (
        "upstream.api_key",
        "the key is never read from the file; set api_key_env to the name \
         of an environment variable holding it",
    ),
];

/// What a document read into: the config, and the keys the schema does not
/// know (each an error with its hint), ordered by path.
pub(super) struct Read {
    pub(super) config: Config,
    pub(super) unknown_keys: Vec<ConfigError>,
}

/// Parses and deserializes `text` (no semantic rules: see `Config::validate`).
/// Errors: a syntax error alone, else every type error (with the unknown keys
/// found), ordered by path so a section's errors stay together. Unknown keys
/// alone still give a config, so its semantic rules can be checked too.
pub(super) fn deserialize(text: &str) -> Result<Read, ConfigErrors> {
    let mut table =
        toml::from_str::<Table>(text).map_err(|e| ConfigErrors::from(syntax_error(text, &e)))?;

    let mut errors = sections_that_are_not_tables(&mut table);
    // Each failed pass removes one key, so this ends within (keys + 1) passes.
    loop {
        let mut ignored: Vec<Vec<String>> = Vec::new();
        let mut record = |path: serde_ignored::Path<'_>| ignored.push(ignored_keys(&path));
        let deserializer =
            serde_ignored::Deserializer::new(Value::Table(table.clone()), &mut record);
        match serde_path_to_error::deserialize::<_, Config>(deserializer) {
            Ok(config) => {
                // The schema's key list is built only when there is a key to hint at.
                let known = if ignored.is_empty() {
                    Vec::new()
                } else {
                    known_keys()
                };
                let mut unknown_keys: Vec<_> = ignored
                    .iter()
                    .map(|keys| unknown_key(&table, keys, &known))
                    .collect();
                return if errors.is_empty() {
                    unknown_keys.sort_by(|a, b| a.path.cmp(&b.path));
                    Ok(Read {
                        config,
                        unknown_keys,
                    })
                } else {
                    // A value of the wrong type was replaced by its default: the semantic
                    // rules would judge a config the file does not have.
                    errors.append(&mut unknown_keys);
                    errors.sort_by(|a, b| a.path.cmp(&b.path));
                    Err(ConfigErrors(errors))
                };
            }
            Err(error) => {
                let keys = error_keys(error.path());
                errors.push(ConfigError {
                    path: error_path(error.path()),
                    message: error.inner().message().trim().to_owned(),
                });
                if !remove(&mut table, &keys) {
                    // Nothing to take out (cannot happen for a table's key):
                    // report what is known rather than loop.
                    return Err(ConfigErrors(errors));
                }
            }
        }
    }
}

/// serde's derived structs also accept an array (`log = ["json", "info"]`
/// would fill the fields in order), which no one means in a config file: a
/// schema section given as anything but a table is an error, and is taken
/// out so the rest can still be read.
fn sections_that_are_not_tables(table: &mut Table) -> Vec<ConfigError> {
    let mut errors = Vec::new();
    let Ok(schema) = serde_json::to_value(Config::default()) else {
        return errors;
    };
    for (key, value) in schema.as_object().into_iter().flatten() {
        if !value.is_object() {
            continue;
        }
        if let Some(given) = table.get(key).filter(|v| !v.is_table()) {
            errors.push(ConfigError {
                path: join_path("", key),
                message: format!(
                    "expected a table (a [{key}] section), got {}",
                    describe(given)
                ),
            });
            table.remove(key);
        }
    }
    errors
}

/// How a wrong value is named in messages, as serde names it.
fn describe(value: &Value) -> String {
    match value {
        Value::String(s) => format!("string {s:?}"),
        Value::Integer(i) => format!("integer `{i}`"),
        Value::Float(f) => format!("floating point `{f}`"),
        Value::Boolean(b) => format!("boolean `{b}`"),
        Value::Datetime(d) => format!("datetime `{d}`"),
        Value::Array(_) => "an array".to_owned(),
        Value::Table(_) => "a table".to_owned(),
    }
}

/// The keys leading to an ignored value (serde_ignored also records
/// `Option`/newtype steps, which are not keys).
fn ignored_keys(path: &serde_ignored::Path<'_>) -> Vec<String> {
    use serde_ignored::Path;
    match path {
        Path::Root => Vec::new(),
        Path::Map { parent, key } => {
            let mut keys = ignored_keys(parent);
            keys.push(key.clone());
            keys
        }
        Path::Seq { parent, .. }
        | Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => ignored_keys(parent),
    }
}

/// The table keys leading to a type error, up to the last key (an array
/// element's error removes the whole array).
fn error_keys(path: &serde_path_to_error::Path) -> Vec<String> {
    use serde_path_to_error::Segment;
    let mut keys = Vec::new();
    for segment in path {
        match segment {
            Segment::Map { key } => keys.push(key.clone()),
            Segment::Seq { .. } | Segment::Enum { .. } | Segment::Unknown => break,
        }
    }
    keys
}

/// `upstream.forward_headers[0]`: the dotted key path, with an array index
/// when the error is in an element.
fn error_path(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut out = String::new();
    for segment in path {
        match segment {
            Segment::Map { key } => out = join_path(&out, key),
            Segment::Seq { index } => out.push_str(&format!("[{index}]")),
            Segment::Enum { .. } | Segment::Unknown => {}
        }
    }
    out
}

/// Removes the value at `keys`; false when there is none.
fn remove(table: &mut Table, keys: &[String]) -> bool {
    let Some((last, parents)) = keys.split_last() else {
        return false;
    };
    let mut current = table;
    for key in parents {
        match current.get_mut(key) {
            Some(Value::Table(inner)) => current = inner,
            _ => return false,
        }
    }
    current.remove(last).is_some()
}

/// The error for an unknown key: "unknown section" when its value is a
/// table, with a hint when one applies.
fn unknown_key(table: &Table, keys: &[String], known: &[(String, String)]) -> ConfigError {
    let path = keys
        .iter()
        .fold(String::new(), |path, key| join_path(&path, key));
    let is_table = value_at(table, keys).is_some_and(Value::is_table);
    let mut message = if is_table {
        "unknown section"
    } else {
        "unknown key"
    }
    .to_owned();
    let hint = HINTS
        .iter()
        .find(|(hinted, _)| *hinted == path)
        .map(|(_, hint)| (*hint).to_owned())
        .or_else(|| {
            let (key, parents) = keys.split_last()?;
            let parent = parents
                .iter()
                .fold(String::new(), |path, key| join_path(&path, key));
            suggest(known, &parent, key).map(|s| format!("did you mean {s:?}?"))
        });
    if let Some(hint) = hint {
        message = format!("{message} ({hint})");
    }
    ConfigError { path, message }
}

fn value_at<'a>(table: &'a Table, keys: &[String]) -> Option<&'a Value> {
    let (first, rest) = keys.split_first()?;
    rest.iter().try_fold(table.get(first)?, |value, key| {
        value.as_table().and_then(|t| t.get(key))
    })
}

/// `(parent path, key)` for every key and section of the schema, in schema
/// order, from the serialized default config.
pub(super) fn known_keys() -> Vec<(String, String)> {
    fn walk(parent: &str, value: &serde_json::Value, out: &mut Vec<(String, String)>) {
        if let serde_json::Value::Object(map) = value {
            for (key, value) in map {
                out.push((parent.to_owned(), key.clone()));
                walk(&join_path(parent, key), value, out);
            }
        }
    }
    let mut out = Vec::new();
    // Serializing the default cannot fail; were it to, hints are just left out.
    if let Ok(value) = serde_json::to_value(Config::default()) {
        walk("", &value, &mut out);
    }
    out
}

/// The dotted paths of the optional keys `config` leaves unset (`null` when
/// serialized to JSON; TOML has no null, so they are simply absent there).
pub(super) fn unset_keys(config: &Config) -> Vec<String> {
    fn walk(parent: &str, value: &serde_json::Value, out: &mut Vec<String>) {
        match value {
            serde_json::Value::Object(map) => {
                for (key, value) in map {
                    walk(&join_path(parent, key), value, out);
                }
            }
            serde_json::Value::Null => out.push(parent.to_owned()),
            _ => {}
        }
    }
    let mut out = Vec::new();
    if let Ok(value) = serde_json::to_value(config) {
        walk("", &value, &mut out);
    }
    out
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

/// A known key close to `key` in the same section (Levenshtein distance,
/// case-insensitive: at most 1 for keys of up to 3 characters, else 2), or
/// the full path of an identically named key in another section.
fn suggest(known: &[(String, String)], parent: &str, key: &str) -> Option<String> {
    let max_distance = match key.chars().count() {
        0..=3 => 1,
        _ => 2,
    };
    let lower = key.to_lowercase();
    let nearby = known
        .iter()
        .filter(|(p, _)| p == parent)
        .map(|(_, k)| (strsim::levenshtein(&k.to_lowercase(), &lower), k))
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

/// Turns toml's error into one located `ConfigError`.
fn syntax_error(text: &str, error: &toml::de::Error) -> ConfigError {
    let message = error
        .message()
        .trim()
        .lines()
        .collect::<Vec<_>>()
        .join("; ");
    let offset = error.span().map_or(0, |span| span.start.min(text.len()));
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    ConfigError {
        path: format!("line {line}, column {column}"),
        message: format!("invalid TOML: {message}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn known_keys_come_from_the_schema() {
        let known = known_keys();
        for (parent, key) in [
            ("", "listen"),
            ("", "limits"),
            ("admin", "listen"),
            ("admin", "token_env"),
            ("limits", "max_body_bytes"),
            ("log", "level"),
        ] {
            assert!(
                known.iter().any(|(p, k)| p == parent && k == key),
                "{parent}.{key} missing from {known:?}"
            );
        }
        // Secrets are not file keys.
        assert!(!known.iter().any(|(_, k)| k == "token" || k == "api_key"));
    }

    #[test]
    fn suggestions_use_the_same_thresholds_as_before() {
        let known = known_keys();
        assert_eq!(
            suggest(&known, "limits", "MAX_BODY_BYTE").as_deref(),
            Some("max_body_bytes")
        );
        assert_eq!(suggest(&known, "", "lmiits").as_deref(), Some("limits"));
        assert_eq!(suggest(&known, "", "lg").as_deref(), Some("log"));
        assert_eq!(suggest(&known, "", "lxx"), None);
        assert_eq!(
            suggest(&known, "", "drain_timeout").as_deref(),
            Some("shutdown.drain_timeout")
        );
    }
}
