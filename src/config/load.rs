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
//! [`schema_sample`] serialized to JSON (an absent optional key is `null`
//! there, so it is listed too; each array of tables holds one element, so the
//! keys of its elements are listed too). Nobody maintains a list of keys by
//! hand.
//!
//! Paths into arrays of tables carry the element's index, as
//! serde_path_to_error reports it: `upstreams[1].weight`, whether the problem
//! is a type error or an unknown key. Hints look keys up by the schema path,
//! where any element reads `[]`: `upstreams[].weight`.

use toml::{Table, Value};

use super::{Config, ConfigError, ConfigErrors, RouteConfig, UpstreamConfig};

/// The key the upstream key's hint is about, in the schema.
const API_KEY_HINT: &str = "the key is never read from the file; set api_key_env to the name \
                            of an environment variable holding it";

/// Extra explanations for keys that look right but are deliberately not
/// read from the file, by schema path.
const HINTS: [(&str, &str); 5] = [
    (
        "admin.token",
        "the token is never read from the file; set token_env to the name \
         of an environment variable holding it",
    ),
    ("upstream.api_key", API_KEY_HINT),
    ("upstreams[].api_key", API_KEY_HINT),
    // The closest schema key would be the top-level [tls], which is the API listener's.
    ("upstream.tls", UPSTREAM_TLS_HINT),
    ("upstreams[].tls", UPSTREAM_TLS_HINT),
];

/// The hint for a `tls` table inside an upstream.
const UPSTREAM_TLS_HINT: &str = "an upstream's TLS takes ca_file only; the top-level [tls] is \
                                 the API listener's";

/// A config with one element in every array of tables, so that serialized it shows every key
/// of the schema, the elements' keys included (`Config::default()` has empty arrays). A new
/// array of tables in [`Config`] gets an element here; a unit test fails until it does.
pub(super) fn schema_sample() -> Config {
    Config {
        upstreams: vec![UpstreamConfig::default()],
        routes: vec![RouteConfig::default()],
        ..Config::default()
    }
}

/// One step of a path into the document: a table's key, or an array's index.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    Key(String),
    Index(usize),
}

/// `upstreams[1].weight`: a path as the file's reader sees it.
fn show(steps: &[Step]) -> String {
    let mut out = String::new();
    for step in steps {
        match step {
            Step::Key(key) => out = join_path(&out, key),
            Step::Index(index) => out.push_str(&format!("[{index}]")),
        }
    }
    out
}

/// `upstreams[].weight`: the same path in the schema, for any element of an array.
fn schema_path(steps: &[Step]) -> String {
    let mut out = String::new();
    for step in steps {
        match step {
            Step::Key(key) => out = join_path(&out, key),
            Step::Index(_) => out.push_str("[]"),
        }
    }
    out
}

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

    let mut errors = sections_of_the_wrong_shape(&mut table);
    // Bounded: each failed pass removes one key, so this ends within (keys + 1) passes.
    loop {
        let mut ignored: Vec<Vec<Step>> = Vec::new();
        let mut record = |path: serde_ignored::Path<'_>| ignored.push(ignored_steps(&path));
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
                errors.push(ConfigError {
                    path: show(&error_steps(error.path())),
                    message: error.inner().message().trim().to_owned(),
                });
                if !remove(&mut table, &removal_steps(error.path())) {
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
/// schema section given as anything but a table is an error, and so is an
/// array of tables (`[[upstreams]]`, `[[routes]]`) given as anything but an
/// array of tables. Each is taken out so the rest can still be read. The
/// usual slip between `[upstream]` and `[[upstreams]]` gets a hint.
fn sections_of_the_wrong_shape(table: &mut Table) -> Vec<ConfigError> {
    let mut errors = Vec::new();
    let Ok(serde_json::Value::Object(schema)) = serde_json::to_value(schema_sample()) else {
        return errors;
    };
    let is_table_section = |key: &str| schema.get(key).is_some_and(serde_json::Value::is_object);
    let is_array_of_tables = |key: &str| {
        schema
            .get(key)
            .and_then(serde_json::Value::as_array)
            .and_then(|items| items.first())
            .is_some_and(serde_json::Value::is_object)
    };
    for key in schema.keys() {
        let Some(given) = table.get(key) else {
            continue;
        };
        let error = if is_table_section(key) {
            (!given.is_table()).then(|| {
                let plural = format!("{key}s");
                let hint = if given.is_array() && is_array_of_tables(&plural) {
                    format!(" (for several {plural}, write [[{plural}]])")
                } else {
                    String::new()
                };
                (
                    join_path("", key),
                    format!(
                        "expected a table (a [{key}] section), got {}{hint}",
                        describe(given)
                    ),
                )
            })
        } else if is_array_of_tables(key) {
            match given.as_array() {
                None => {
                    let hint = match key.strip_suffix('s') {
                        Some(singular) if is_table_section(singular) => {
                            format!(" (for one {singular}, write [{singular}])")
                        }
                        _ => String::new(),
                    };
                    Some((
                        join_path("", key),
                        format!(
                            "expected an array of tables ([[{key}]] sections), got {}{hint}",
                            describe(given)
                        ),
                    ))
                }
                Some(items) => items
                    .iter()
                    .enumerate()
                    .find(|(_, item)| !item.is_table())
                    .map(|(index, item)| {
                        (
                            format!("{}[{index}]", join_path("", key)),
                            format!(
                                "expected a table (a [[{key}]] element), got {}",
                                describe(item)
                            ),
                        )
                    }),
            }
        } else {
            None
        };
        if let Some((path, message)) = error {
            errors.push(ConfigError { path, message });
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

/// The steps leading to an ignored value (serde_ignored also records
/// `Option`/newtype steps, which are not in the file).
fn ignored_steps(path: &serde_ignored::Path<'_>) -> Vec<Step> {
    use serde_ignored::Path;
    match path {
        Path::Root => Vec::new(),
        Path::Map { parent, key } => {
            let mut steps = ignored_steps(parent);
            steps.push(Step::Key(key.clone()));
            steps
        }
        Path::Seq { parent, index } => {
            let mut steps = ignored_steps(parent);
            steps.push(Step::Index(*index));
            steps
        }
        Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => ignored_steps(parent),
    }
}

/// `upstreams[1].weight`, `upstream.forward_headers[0]`: the steps to a type error, with an
/// array index when the error is in an element.
fn error_steps(path: &serde_path_to_error::Path) -> Vec<Step> {
    use serde_path_to_error::Segment;
    path.iter()
        .filter_map(|segment| match segment {
            Segment::Map { key } => Some(Step::Key(key.clone())),
            Segment::Seq { index } => Some(Step::Index(*index)),
            Segment::Enum { .. } | Segment::Unknown => None,
        })
        .collect()
}

/// What to take out of the table after a type error, so the next pass can go on: the value at
/// the error's last table key. A key inside an array of tables goes alone (`upstreams[1].weight`,
/// so errors in other elements are still found); an array element's own error takes out the
/// whole array (`upstream.forward_headers`), since removing one element would shift the indices
/// of the errors after it.
fn removal_steps(path: &serde_path_to_error::Path) -> Vec<Step> {
    use serde_path_to_error::Segment;
    let mut steps = Vec::new();
    for segment in path {
        match segment {
            Segment::Map { key } => steps.push(Step::Key(key.clone())),
            Segment::Seq { index } => steps.push(Step::Index(*index)),
            Segment::Enum { .. } | Segment::Unknown => break,
        }
    }
    while matches!(steps.last(), Some(Step::Index(_))) {
        steps.pop();
    }
    steps
}

/// Removes the value at `steps`, which end with a key; false when there is none.
fn remove(table: &mut Table, steps: &[Step]) -> bool {
    let Some((Step::Key(last), parents)) = steps.split_last() else {
        return false;
    };
    let parent = if parents.is_empty() {
        Some(table)
    } else {
        value_at_mut(table, parents).and_then(Value::as_table_mut)
    };
    parent.is_some_and(|parent| parent.remove(last).is_some())
}

fn value_at<'a>(table: &'a Table, steps: &[Step]) -> Option<&'a Value> {
    let (Step::Key(first), rest) = steps.split_first()? else {
        return None;
    };
    rest.iter()
        .try_fold(table.get(first)?, |value, step| match step {
            Step::Key(key) => value.as_table()?.get(key),
            Step::Index(index) => value.as_array()?.get(*index),
        })
}

fn value_at_mut<'a>(table: &'a mut Table, steps: &[Step]) -> Option<&'a mut Value> {
    let (Step::Key(first), rest) = steps.split_first()? else {
        return None;
    };
    rest.iter()
        .try_fold(table.get_mut(first)?, |value, step| match step {
            Step::Key(key) => value.as_table_mut()?.get_mut(key),
            Step::Index(index) => value.as_array_mut()?.get_mut(*index),
        })
}

/// The error for an unknown key: "unknown section" when its value is a
/// table, with a hint when one applies.
fn unknown_key(table: &Table, steps: &[Step], known: &[(String, String)]) -> ConfigError {
    let path = show(steps);
    let is_table = value_at(table, steps).is_some_and(Value::is_table);
    let mut message = if is_table {
        "unknown section"
    } else {
        "unknown key"
    }
    .to_owned();
    let in_schema = schema_path(steps);
    let hint = HINTS
        .iter()
        .find(|(hinted, _)| *hinted == in_schema)
        .map(|(_, hint)| (*hint).to_owned())
        .or_else(|| {
            let Some((Step::Key(key), parents)) = steps.split_last() else {
                return None;
            };
            suggest(known, &schema_path(parents), key).map(|s| format!("did you mean {s:?}?"))
        });
    if let Some(hint) = hint {
        message = format!("{message} ({hint})");
    }
    ConfigError { path, message }
}

/// `(parent path, key)` for every key and section of the schema, in schema
/// order, from the serialized [`schema_sample`]; the keys of an array's
/// elements have the parent `upstreams[]`.
pub(super) fn known_keys() -> Vec<(String, String)> {
    fn walk(parent: &str, value: &serde_json::Value, out: &mut Vec<(String, String)>) {
        match value {
            serde_json::Value::Object(map) => {
                for (key, value) in map {
                    out.push((parent.to_owned(), key.clone()));
                    walk(&join_path(parent, key), value, out);
                }
            }
            // The sample's arrays of tables hold one element; arrays of values hold none.
            serde_json::Value::Array(items) => {
                if let Some(first) = items.first() {
                    walk(&format!("{parent}[]"), first, out);
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    // Serializing the sample cannot fail; were it to, hints are just left out.
    if let Ok(value) = serde_json::to_value(schema_sample()) {
        walk("", &value, &mut out);
    }
    out
}

/// The paths of the optional keys `config` leaves unset (`null` when
/// serialized to JSON; TOML has no null, so they are simply absent there),
/// with the element's index inside arrays (`upstreams[1].api_key_env`).
pub(super) fn unset_keys(config: &Config) -> Vec<String> {
    fn walk(parent: &str, value: &serde_json::Value, out: &mut Vec<String>) {
        match value {
            serde_json::Value::Object(map) => {
                for (key, value) in map {
                    walk(&join_path(parent, key), value, out);
                }
            }
            serde_json::Value::Array(items) => {
                for (index, item) in items.iter().enumerate() {
                    walk(&format!("{parent}[{index}]"), item, out);
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

/// The candidate closest to `name` (Levenshtein distance, case-insensitive:
/// at most 1 for names of up to 3 characters, else 2), the first of equals.
pub(super) fn closest<'a>(
    candidates: impl IntoIterator<Item = &'a str>,
    name: &str,
) -> Option<&'a str> {
    let max_distance = match name.chars().count() {
        0..=3 => 1,
        _ => 2,
    };
    let lower = name.to_lowercase();
    candidates
        .into_iter()
        .map(|candidate| {
            (
                strsim::levenshtein(&candidate.to_lowercase(), &lower),
                candidate,
            )
        })
        .filter(|(d, _)| *d <= max_distance)
        .min_by_key(|(d, _)| *d)
        .map(|(_, candidate)| candidate)
}

/// A known key close to `key` in the same section (see [`closest`]), or
/// the full path of an identically named key in another section.
fn suggest(known: &[(String, String)], parent: &str, key: &str) -> Option<String> {
    let nearby = closest(
        known
            .iter()
            .filter(|(p, _)| p == parent)
            .map(|(_, k)| k.as_str()),
        key,
    )
    .map(str::to_owned);
    nearby.or_else(|| {
        known
            .iter()
            .find(|(p, k)| p != parent && k == key)
            .map(|(p, k)| join_path(p, k))
    })
}

/// Turns toml's error into one located `ConfigError`.
pub(super) fn syntax_error(text: &str, error: &toml::de::Error) -> ConfigError {
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
    fn the_schema_sample_has_an_element_in_every_array_of_tables() {
        // An array of tables left empty in the sample would hide its elements' keys from the
        // hints and from the README test: only arrays of plain values may be empty.
        fn empty_arrays(parent: &str, value: &serde_json::Value, out: &mut Vec<String>) {
            match value {
                serde_json::Value::Object(map) => {
                    for (key, value) in map {
                        empty_arrays(&join_path(parent, key), value, out);
                    }
                }
                serde_json::Value::Array(items) if items.is_empty() => out.push(parent.to_owned()),
                serde_json::Value::Array(items) => {
                    for item in items {
                        empty_arrays(&format!("{parent}[]"), item, out);
                    }
                }
                _ => {}
            }
        }
        let mut empty = Vec::new();
        empty_arrays(
            "",
            &serde_json::to_value(schema_sample()).unwrap(),
            &mut empty,
        );
        empty.sort();
        assert_eq!(
            empty,
            [
                "client_ip.trusted_proxies",
                "cors.allowed_origins",
                "metrics.models",
                "routes[].models",
                "routes[].upstreams",
                "upstream.forward_headers",
                "upstreams[].forward_headers",
            ]
        );
        let known = known_keys();
        for (parent, key) in [
            ("", "upstreams"),
            ("upstreams[]", "weight"),
            ("upstreams[]", "connect_timeout"),
            ("routes[]", "models"),
            ("routes[]", "rename"),
            ("retry", "max_attempts"),
            ("breaker", "open_for"),
        ] {
            assert!(
                known.iter().any(|(p, k)| p == parent && k == key),
                "{parent}.{key} missing from {known:?}"
            );
        }
    }

    #[test]
    fn paths_show_indices_and_the_schema_path_erases_them() {
        let steps = [
            Step::Key("routes".to_owned()),
            Step::Index(12),
            Step::Key("rename".to_owned()),
            Step::Key("openai.eu".to_owned()),
        ];
        assert_eq!(show(&steps), r#"routes[12].rename."openai.eu""#);
        assert_eq!(schema_path(&steps), r#"routes[].rename."openai.eu""#);
    }

    #[test]
    fn closest_names_allow_small_typos_only() {
        let names = ["openai", "local", "azure-eu"];
        assert_eq!(closest(names, "opnai"), Some("openai"));
        assert_eq!(closest(names, "OpenAI"), Some("openai"));
        assert_eq!(closest(names, "azure_eu"), Some("azure-eu"));
        assert_eq!(closest(names, "anthropic"), None);
        assert_eq!(closest(names, "lcl"), None);
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
