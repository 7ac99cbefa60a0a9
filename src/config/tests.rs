//! Tests for loading, validating, resolving and printing [`Config`].

use super::*;

const SECRET: &str = "sk-test-0123456789abcdefSECRET";
const ADMIN_TOKEN: &str = "admin-0123456789abcdefTOKEN";

const FULL: &str = r#"
listen = "0.0.0.0:8000"
worker_threads = 3

[admin]
listen = "127.0.0.1:9100"
token_env = "TIDEGATE_TEST_ADMIN_TOKEN"

[upstream]
base_url = "http://127.0.0.1:8081/v1/"
api_key_env = "TIDEGATE_TEST_KEY"
forward_headers = ["x-stainless-*"]
http2 = true

[limits]
max_body_bytes = 2097152
max_header_bytes = 8192
max_event_bytes = 1024
header_read_timeout = "5s"
body_read_timeout = "45s"
upstream_connect_timeout = "1500ms"
first_byte_timeout = "2m"
upstream_idle_timeout = "90s"
max_stream_duration = "1h"

[streams]
heartbeat_interval = "250ms"
max_buffered_bytes = 131072
client_stall_timeout = "45s"

[shutdown]
drain_timeout = "0s"

[log]
format = "json"
level = "tidegate=debug,hyper=warn"
"#;

fn errors_of(text: &str) -> Vec<ConfigError> {
    match Config::from_toml_str(text) {
        Ok(config) => panic!("expected errors, got {config:?}"),
        Err(ConfigErrors(errors)) => errors,
    }
}

fn error(path: &str, message: &str) -> ConfigError {
    ConfigError {
        path: path.to_owned(),
        message: message.to_owned(),
    }
}

/// The single error reported for `text`, as `path: message`.
fn only_error(text: &str) -> String {
    let errors = errors_of(text);
    assert_eq!(errors.len(), 1, "{errors:#?}");
    errors[0].to_string()
}

fn lookup_key(name: &str) -> Option<String> {
    match name {
        "TIDEGATE_TEST_KEY" => Some(SECRET.to_owned()),
        "TIDEGATE_TEST_ADMIN_TOKEN" => Some(ADMIN_TOKEN.to_owned()),
        _ => None,
    }
}

#[test]
fn empty_file_is_the_default_config() {
    for text in ["", "\n\n", "# only a comment\n", "[admin]\n[limits]\n"] {
        assert_eq!(
            Config::from_toml_str(text),
            Ok(Config::default()),
            "{text:?}"
        );
    }
    let c = Config::default();
    assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(c.admin.listen, None);
    assert_eq!(c.admin.token_env, None);
    assert_eq!(c.admin.token, None);
    assert_eq!(c.upstream.base_url.as_str(), "https://api.openai.com/v1");
    assert!(c.upstream.base_url.is_https());
    assert_eq!(c.upstream.api_key_env, None);
    assert_eq!(c.upstream.api_key, None);
    assert_eq!(c.limits.max_body_bytes, 1_048_576);
    assert_eq!(c.limits.max_header_bytes, 8_192);
    assert_eq!(c.limits.max_event_bytes, 262_144);
    assert_eq!(c.limits.header_read_timeout, Duration::from_secs(10));
    assert_eq!(c.limits.body_read_timeout, Duration::from_secs(30));
    assert_eq!(c.limits.upstream_connect_timeout, Duration::from_secs(5));
    assert_eq!(c.limits.first_byte_timeout, Duration::from_secs(60));
    assert_eq!(c.limits.upstream_idle_timeout, Duration::from_secs(120));
    assert_eq!(c.limits.max_stream_duration, Duration::from_secs(1800));
    assert_eq!(c.streams.heartbeat_interval, Duration::from_secs(15));
    assert_eq!(c.streams.heartbeat(), Some(Duration::from_secs(15)));
    assert_eq!(c.streams.max_buffered_bytes, 65_536);
    assert_eq!(c.streams.client_stall_timeout, Duration::from_secs(30));
    assert!(!c.upstream.http2);
    assert_eq!(c.worker_threads, 0);
    assert!(c.worker_count() >= 1);
    assert_eq!(c.shutdown.drain_timeout, Duration::from_secs(30));
    assert_eq!(c.log.format, LogFormat::Text);
    assert_eq!(c.log.level, "info");
    assert_eq!(c.validate(), Ok(()));
}

#[test]
fn full_file_sets_every_key() {
    let c = Config::from_toml_str(FULL).unwrap();
    let expected = Config {
        listen: "0.0.0.0:8000".parse().unwrap(),
        worker_threads: 3,
        admin: AdminConfig {
            listen: Some("127.0.0.1:9100".parse().unwrap()),
            token_env: Some("TIDEGATE_TEST_ADMIN_TOKEN".to_owned()),
            token: None,
        },
        upstream: UpstreamConfig {
            base_url: UpstreamUrl::parse("http://127.0.0.1:8081/v1").unwrap(),
            api_key_env: Some("TIDEGATE_TEST_KEY".to_owned()),
            api_key: None,
            forward_headers: vec!["x-stainless-*".to_owned()],
            http2: true,
        },
        limits: Limits {
            max_body_bytes: 2 * 1024 * 1024,
            max_header_bytes: 8192,
            max_event_bytes: 1024,
            header_read_timeout: Duration::from_secs(5),
            body_read_timeout: Duration::from_secs(45),
            upstream_connect_timeout: Duration::from_millis(1500),
            first_byte_timeout: Duration::from_secs(120),
            upstream_idle_timeout: Duration::from_secs(90),
            max_stream_duration: Duration::from_secs(3600),
        },
        streams: StreamsConfig {
            heartbeat_interval: Duration::from_millis(250),
            max_buffered_bytes: 128 * 1024,
            client_stall_timeout: Duration::from_secs(45),
        },
        shutdown: ShutdownConfig {
            drain_timeout: Duration::ZERO,
        },
        log: LogConfig {
            format: LogFormat::Json,
            level: "tidegate=debug,hyper=warn".to_owned(),
        },
    };
    assert_eq!(c, expected);
    assert_eq!(c.upstream.base_url.as_str(), "http://127.0.0.1:8081/v1");
    assert!(!c.upstream.base_url.is_https());
}

#[test]
fn inline_tables_and_dotted_keys_work_too() {
    let c = Config::from_toml_str(
        "limits = { max_body_bytes = 10 }\nlog.format = \"json\"\nadmin.listen = \"[::1]:9000\"",
    )
    .unwrap();
    assert_eq!(c.limits.max_body_bytes, 10);
    assert_eq!(c.log.format, LogFormat::Json);
    assert_eq!(c.admin.listen, Some("[::1]:9000".parse().unwrap()));
}

#[test]
fn every_type_error_and_unknown_key_is_reported_at_once_with_its_path() {
    let text = r#"
listen = 8080
bogus_top = true

[upstream]
base_url = "ftp://example.com/v1"

[limits]
bogus = 1
max_body_bytes = 0
max_header_bytes = "16 Kix"
max_event_bytes = -5
first_byte_timeout = "sixty"
upstream_idle_timeout = 120
max_stream_duration = "0s"

[log]
format = "xml"
level = ""
"#;
    let errors = errors_of(text);
    let size =
        r#"expected a size in bytes: an integer such as 65536, or a string such as "64 KiB""#;
    // Ordered by path; the semantic rules (max_body_bytes = 0, max_stream_duration = "0s",
    // level = "") wait until every value has its type.
    let expected = vec![
        error("bogus_top", "unknown key"),
        error("limits.bogus", "unknown key"),
        error(
            "limits.first_byte_timeout",
            r#"expected a duration such as "500ms", "15s" or "1h 30m", got "sixty": expected number at 0"#,
        ),
        error(
            "limits.max_event_bytes",
            &format!("invalid value: integer `-5`, {size}"),
        ),
        error(
            "limits.max_header_bytes",
            &format!(
                r#"{size}, got "16 Kix" (couldn't parse "Kix" into a known SI unit, Failed to parse unit "Kix")"#
            ),
        ),
        error(
            "limits.upstream_idle_timeout",
            r#"invalid type: integer `120`, expected a duration such as "500ms", "15s" or "1h 30m""#,
        ),
        error(
            "listen",
            r#"invalid type: integer `8080`, expected an IP address and port such as "127.0.0.1:8080" or "[::1]:8080""#,
        ),
        error("log.format", r#"expected "text" or "json", got "xml""#),
        error(
            "upstream.base_url",
            r#"unsupported scheme "ftp" in "ftp://example.com/v1"; expected http or https"#,
        ),
    ];
    assert_eq!(errors, expected);

    let shown = ConfigErrors(errors).to_string();
    assert_eq!(shown.lines().count(), expected.len());
    assert!(shown.contains(
        "limits.first_byte_timeout: expected a duration such as \"500ms\", \"15s\" or \"1h 30m\", got \"sixty\": expected number at 0\n"
    ));
    assert!(shown.contains("\nlimits.bogus: unknown key\n"));
    assert!(!shown.ends_with('\n'));
}

#[test]
fn every_semantic_error_is_reported_at_once_with_its_path() {
    let text = r#"
listen = "127.0.0.1:8080"
worker_threads = 300

[admin]
listen = "0.0.0.0:8080"

[upstream]
api_key_env = "sk-oops"
forward_headers = ["cookie", "x-ok", "Bad"]

[limits]
max_body_bytes = 0
max_header_bytes = "4 KiB"
max_stream_duration = "0s"
first_byte_timeout = "1500us"

[streams]
heartbeat_interval = "5ms"

[shutdown]
drain_timeout = "366days"

[log]
level = ""
"#;
    let errors = errors_of(text);
    let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "worker_threads",
            "admin.listen",
            "admin.token_env",
            "upstream.api_key_env",
            "upstream.forward_headers",
            "upstream.forward_headers",
            "limits.max_body_bytes",
            "limits.max_header_bytes",
            "limits.first_byte_timeout",
            "limits.max_stream_duration",
            "streams.heartbeat_interval",
            "shutdown.drain_timeout",
            "log.level",
        ],
        "{errors:#?}"
    );
    assert_eq!(errors[0].message, "must be between 0 and 256, got 300");
    assert_eq!(
        errors[7].message,
        "must be between 8192 (8 KiB) and 1048576 (1 MiB), got 4096"
    );
    assert_eq!(
        errors[8].message,
        "must be a whole number of milliseconds, got 1.5ms"
    );
    assert_eq!(errors[9].message, "must be greater than 0s");
    assert_eq!(
        errors[12].message,
        r#"must not be empty; use a filter such as "info" or "tidegate=debug,hyper=warn""#
    );
}

#[test]
fn unknown_keys_and_broken_rules_are_reported_together() {
    let errors = errors_of("[limits]\nfirst_byte_timout = \"10s\"\nmax_body_bytes = 0\n");
    assert_eq!(
        errors,
        [
            error(
                "limits.first_byte_timout",
                r#"unknown key (did you mean "first_byte_timeout"?)"#
            ),
            error(
                "limits.max_body_bytes",
                "must be between 1 and 67108864 (64 MiB), got 0"
            ),
        ]
    );
}

#[test]
fn unknown_sections_are_reported_once() {
    assert_eq!(
        only_error("[bogus]\na = 1\nb = 2\n"),
        "bogus: unknown section"
    );
    assert_eq!(
        only_error("[limits.nested]\nx = 1\n"),
        "limits.nested: unknown section"
    );
    assert_eq!(
        only_error("[limit]\nmax_body_bytes = 5\n"),
        r#"limit: unknown section (did you mean "limits"?)"#
    );
}

#[test]
fn unknown_keys_get_hints() {
    assert_eq!(
        only_error("[limits]\nmax_body_byte = 5\n"),
        r#"limits.max_body_byte: unknown key (did you mean "max_body_bytes"?)"#
    );
    // A key written above its section header lands at the top level.
    assert_eq!(
        only_error("drain_timeout = \"5s\"\n"),
        r#"drain_timeout: unknown key (did you mean "shutdown.drain_timeout"?)"#
    );
    assert_eq!(
        only_error("[limits]\nlevel = \"debug\"\n"),
        r#"limits.level: unknown key (did you mean "log.level"?)"#
    );
    assert_eq!(
        only_error("[limits]\n\"a b\" = 1\n"),
        r#"limits."a b": unknown key"#
    );
    let api_key = only_error(&format!("[upstream]\napi_key = \"{SECRET}\"\n"));
    assert!(
        api_key.starts_with("upstream.api_key: unknown key (the key is never read from the file")
    );
    assert!(!api_key.contains(SECRET));
}

#[test]
fn a_section_that_is_not_a_table_is_an_error_at_its_path() {
    assert_eq!(
        only_error("limits = 5\n"),
        "limits: expected a table (a [limits] section), got integer `5`"
    );
    let errors = errors_of("admin = \"x\"\nlog = [1]\n[upstream]\nnope = 1\n");
    let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(paths, ["admin", "log", "upstream.nope"]);
    assert_eq!(
        errors[1].message,
        "expected a table (a [log] section), got an array"
    );
    // serde would take an array for a struct, field by field; a config file may not.
    assert_eq!(
        only_error("log = [\"json\", \"info\"]\n"),
        "log: expected a table (a [log] section), got an array"
    );
}

#[test]
fn syntax_errors_are_one_located_error() {
    let text = "listen = \"127.0.0.1:8080\"\n[limits]\nmax_body_bytes = = 5\n";
    let errors = errors_of(text);
    assert_eq!(errors.len(), 1, "{errors:#?}");
    let toml_error = toml::from_str::<toml::Table>(text).unwrap_err().to_string();
    let location = &errors[0].path;
    assert!(
        toml_error.contains(&format!("at {location}")),
        "{location} vs {toml_error}"
    );
    assert!(location.starts_with("line 3, column "), "{location}");
    assert!(errors[0].message.starts_with("invalid TOML: "));
    assert!(!errors[0].to_string().contains('\n'), "{}", errors[0]);

    for broken in [
        "[limits\n",
        "listen = \"unterminated\n",
        "a = 1\na = 2\n",
        "é = \n",
    ] {
        let errors = errors_of(broken);
        assert_eq!(errors.len(), 1, "{broken:?}: {errors:#?}");
        assert!(
            errors[0].path.starts_with("line "),
            "{broken:?}: {errors:#?}"
        );
    }
}

#[test]
fn wrong_value_types_name_what_was_given() {
    let size = r#"a size in bytes: an integer such as 65536, or a string such as "64 KiB""#;
    let addr = r#"an IP address and port such as "127.0.0.1:8080" or "[::1]:8080""#;
    let cases = [
        (
            "[upstream]\nbase_url = 5",
            "upstream.base_url: invalid type: integer `5`, expected an http:// or https:// URL string".to_owned(),
        ),
        (
            "[upstream]\napi_key_env = true",
            "upstream.api_key_env: invalid type: boolean `true`, expected a string".to_owned(),
        ),
        (
            "[limits]\nmax_body_bytes = 1.5",
            format!("limits.max_body_bytes: invalid type: floating point `1.5`, expected {size}"),
        ),
        (
            "[limits]\nmax_body_bytes = \"lots\"",
            format!(
                r#"limits.max_body_bytes: expected {size}, got "lots" (couldn't parse "lots" into a ByteSize, cannot parse float from empty string)"#
            ),
        ),
        (
            "[shutdown]\ndrain_timeout = [1]",
            r#"shutdown.drain_timeout: invalid type: sequence, expected a duration such as "500ms", "15s" or "1h 30m""#.to_owned(),
        ),
        (
            "[log]\nformat = { a = 1 }",
            r#"log.format: invalid type: map, expected "text" or "json""#.to_owned(),
        ),
        (
            "[admin]\nlisten = \"localhost\"",
            format!(
                r#"admin.listen: expected {addr}, got "localhost" (the port is required)"#
            ),
        ),
        (
            "listen = \"localhost:8080\"",
            format!(
                r#"listen: expected {addr}, got "localhost:8080" (host names are not resolved; use an IP address)"#
            ),
        ),
        (
            "[upstream]\nforward_headers = [\"x-a\", 5]",
            "upstream.forward_headers[1]: invalid type: integer `5`, expected a string".to_owned(),
        ),
    ];
    for (text, expected) in cases {
        assert_eq!(only_error(text), expected, "{text}");
    }
}

#[test]
fn size_limits_enforce_their_ranges() {
    let accepted = [
        ("max_body_bytes", 1),
        ("max_body_bytes", 64 * 1024 * 1024),
        ("max_header_bytes", 8192),
        ("max_header_bytes", 1024 * 1024),
        ("max_event_bytes", 1024),
        ("max_event_bytes", 16 * 1024 * 1024),
    ];
    for (key, value) in accepted {
        let text = format!("[limits]\n{key} = {value}\n");
        assert!(Config::from_toml_str(&text).is_ok(), "{text}");
    }
    let rejected = [
        (
            "max_body_bytes",
            0,
            "must be between 1 and 67108864 (64 MiB), got 0",
        ),
        (
            "max_body_bytes",
            64 * 1024 * 1024 + 1,
            "must be between 1 and 67108864 (64 MiB), got 67108865",
        ),
        (
            "max_header_bytes",
            8191,
            "must be between 8192 (8 KiB) and 1048576 (1 MiB), got 8191",
        ),
        (
            "max_header_bytes",
            1024 * 1024 + 1,
            "must be between 8192 (8 KiB) and 1048576 (1 MiB), got 1048577",
        ),
        (
            "max_event_bytes",
            1023,
            "must be between 1024 (1 KiB) and 16777216 (16 MiB), got 1023",
        ),
        (
            "max_event_bytes",
            i64::MAX,
            "must be between 1024 (1 KiB) and 16777216 (16 MiB), got 9223372036854775807",
        ),
    ];
    for (key, value, message) in rejected {
        let text = format!("[limits]\n{key} = {value}\n");
        assert_eq!(only_error(&text), format!("limits.{key}: {message}"));
    }
    // Negative sizes cannot be stored at all: a type error, still at its path.
    for (key, value) in [("max_body_bytes", -1), ("max_event_bytes", i64::MIN)] {
        let shown = only_error(&format!("[limits]\n{key} = {value}\n"));
        assert!(
            shown.starts_with(&format!(
                "limits.{key}: invalid value: integer `{value}`, expected a size in bytes"
            )),
            "{shown}"
        );
    }
}

#[test]
fn sizes_are_integers_or_bytesize_strings() {
    let cases = [
        ("65536", 65_536),
        ("\"65536\"", 65_536),
        ("\"64 KiB\"", 65_536),
        ("\"64KiB\"", 65_536),
        ("\"64kib\"", 65_536),
        ("\"64 KB\"", 64_000),
        ("\"64k\"", 64_000),
        ("\"1 MiB\"", 1_048_576),
        ("\"1.5 MiB\"", 1_572_864),
        ("\" 16 MiB \"", 16 * 1_048_576),
    ];
    for (value, bytes) in cases {
        let text = format!("[streams]\nmax_buffered_bytes = {value}\n");
        let c = Config::from_toml_str(&text).unwrap_or_else(|e| panic!("{text}: {e}"));
        assert_eq!(c.streams.max_buffered_bytes, bytes, "{text}");
        // Printed back as the plain integer, which reads back equal.
        let printed = c.to_redacted_toml().unwrap();
        assert!(
            printed.contains(&format!("\nmax_buffered_bytes = {bytes}\n")),
            "{printed}"
        );
        assert_eq!(Config::from_toml_str(&printed), Ok(c));
    }
    for bad in ["\"\"", "\"-5 KiB\"", "\"64 KiBs\"", "\"KiB\"", "true"] {
        let text = format!("[limits]\nmax_body_bytes = {bad}\n");
        let shown = only_error(&text);
        assert!(
            shown.starts_with("limits.max_body_bytes: ") && shown.contains("a size in bytes"),
            "{shown}"
        );
    }
    // A size past the range is a range error, not a parse error, even when it saturates.
    assert_eq!(
        only_error("[limits]\nmax_body_bytes = \"65 MiB\"\n"),
        "limits.max_body_bytes: must be between 1 and 67108864 (64 MiB), got 68157440"
    );
    let shown = only_error("[limits]\nmax_body_bytes = \"99999999 EiB\"\n");
    assert!(
        shown.starts_with("limits.max_body_bytes: must be between"),
        "{shown}"
    );
}

#[test]
fn zero_durations_are_rejected_except_drain() {
    for key in [
        "header_read_timeout",
        "body_read_timeout",
        "upstream_connect_timeout",
        "first_byte_timeout",
        "upstream_idle_timeout",
        "max_stream_duration",
    ] {
        let text = format!("[limits]\n{key} = \"0ms\"\n");
        assert_eq!(
            only_error(&text),
            format!("limits.{key}: must be greater than 0s")
        );
        let text = format!("[limits]\n{key} = \"1ms\"\n");
        assert!(Config::from_toml_str(&text).is_ok(), "{text}");
    }
    let c = Config::from_toml_str("[shutdown]\ndrain_timeout = \"0s\"").unwrap();
    assert_eq!(c.shutdown.drain_timeout, Duration::ZERO);
}

#[test]
fn durations_are_capped_so_deadlines_cannot_overflow() {
    for (text, got) in [
        ("[limits]\nmax_stream_duration = \"8761h\"", "31539600s"),
        (
            "[limits]\nupstream_idle_timeout = \"5124095576030431h\"",
            "18446744073709551600s",
        ),
        (
            "[shutdown]\ndrain_timeout = \"31536000001ms\"",
            "31536000.001s",
        ),
        ("[shutdown]\ndrain_timeout = \"2years\"", "63115200s"),
    ] {
        let shown = only_error(text);
        assert!(
            shown.ends_with(&format!(": must be at most 8760h (365 days), got {got}")),
            "{shown}"
        );
    }
    let c = Config::from_toml_str("[limits]\nmax_stream_duration = \"8760h\"").unwrap();
    assert_eq!(c.limits.max_stream_duration, MAX_DURATION);

    let mut c = Config::default();
    c.limits.first_byte_timeout = Duration::MAX;
    c.shutdown.drain_timeout = MAX_DURATION + Duration::from_millis(1);
    let ConfigErrors(errors) = c.validate().unwrap_err();
    let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        ["limits.first_byte_timeout", "shutdown.drain_timeout"]
    );
}

#[test]
fn duration_rejects_reach_the_file_with_their_path() {
    assert_eq!(
        only_error("[limits]\nfirst_byte_timeout = \"10\""),
        r#"limits.first_byte_timeout: expected a duration such as "500ms", "15s" or "1h 30m", got "10": time unit needed, for example 10sec or 10ms"#
    );
    assert_eq!(
        only_error("[shutdown]\ndrain_timeout = \"99999999999999999999999h\""),
        r#"shutdown.drain_timeout: expected a duration such as "500ms", "15s" or "1h 30m", got "99999999999999999999999h": number is too large or cannot be represented without a lack of precision (values below 1ns are not supported)"#
    );
}

#[test]
fn upstream_url_errors_carry_the_path() {
    let cases = [
        ("http://", "has no host"),
        ("https://h/v1?x=1", "must not have a query"),
        ("https://h/v1#top", "must not have a fragment"),
        ("garbage", "absolute URL"),
    ];
    for (url, needle) in cases {
        let shown = only_error(&format!("[upstream]\nbase_url = \"{url}\""));
        assert!(shown.starts_with("upstream.base_url: "), "{shown}");
        assert!(shown.contains(needle), "{shown}");
    }
}

#[test]
fn api_key_env_must_be_a_variable_name_and_is_never_echoed() {
    for bad in [SECRET, "", "1ABC", "MY-KEY", "A=B", "KEY "] {
        let shown = only_error(&format!("[upstream]\napi_key_env = \"{bad}\""));
        assert!(
            shown.starts_with("upstream.api_key_env: must be the name of an environment variable"),
            "{shown}"
        );
        if !bad.is_empty() {
            assert!(!shown.contains(bad), "{shown}");
        }
    }
    for good in ["OPENAI_API_KEY", "_K", "key2"] {
        let text = format!("[upstream]\napi_key_env = \"{good}\"");
        assert!(Config::from_toml_str(&text).is_ok(), "{text}");
    }
}

#[test]
fn admin_listener_must_not_overlap_the_client_listener() {
    let overlapping = [
        ("127.0.0.1:8080", "127.0.0.1:8080"),
        ("0.0.0.0:8080", "127.0.0.1:8080"),
        ("127.0.0.1:8080", "0.0.0.0:8080"),
        ("[::]:8080", "127.0.0.1:8080"),
        ("[::1]:8080", "[::]:8080"),
    ];
    for (listen, admin) in overlapping {
        // A token variable, since some of these admin addresses are wildcards.
        let text =
            format!("listen = \"{listen}\"\n[admin]\nlisten = \"{admin}\"\ntoken_env = \"T\"\n");
        let shown = only_error(&text);
        assert!(
            shown.starts_with(&format!("admin.listen: {admin} overlaps listen ({listen})")),
            "{shown}"
        );
    }
    let apart = [
        ("127.0.0.1:8080", "127.0.0.1:9090"),
        ("10.0.0.1:8080", "127.0.0.1:8080"),
        ("0.0.0.0:8080", "[::1]:8080"),
        ("127.0.0.1:0", "127.0.0.1:0"),
    ];
    for (listen, admin) in apart {
        // A token variable, since some of these admin addresses are wildcards.
        let text =
            format!("listen = \"{listen}\"\n[admin]\nlisten = \"{admin}\"\ntoken_env = \"T\"\n");
        assert!(Config::from_toml_str(&text).is_ok(), "{text}");
    }
}

#[test]
fn validate_checks_overrides_applied_after_loading() {
    let mut c = Config::from_toml_str(FULL).unwrap();
    assert_eq!(c.validate(), Ok(()));

    c.limits.max_header_bytes = 4096;
    c.limits.first_byte_timeout = Duration::ZERO;
    c.limits.upstream_idle_timeout = Duration::from_micros(1500);
    c.shutdown.drain_timeout = Duration::from_nanos(1);
    c.log.level = "  ".to_owned();
    c.admin.listen = Some(c.listen);
    c.upstream.api_key_env = Some("not a name".to_owned());

    let ConfigErrors(errors) = c.validate().unwrap_err();
    let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "admin.listen",
            "upstream.api_key_env",
            "limits.max_header_bytes",
            "limits.first_byte_timeout",
            "limits.upstream_idle_timeout",
            "shutdown.drain_timeout",
            "log.level",
        ]
    );
    assert_eq!(
        errors[4].message,
        "must be a whole number of milliseconds, got 1.5ms"
    );
}

#[test]
fn resolve_secrets_reads_the_named_variable() {
    let mut c = Config::from_toml_str(FULL).unwrap();
    c.resolve_secrets(lookup_key).unwrap();
    assert_eq!(
        c.upstream.api_key.as_ref().map(Secret::expose),
        Some(SECRET)
    );
    assert_eq!(
        c.admin.token.as_ref().map(Secret::expose),
        Some(ADMIN_TOKEN)
    );

    // Without api_key_env nothing is looked up and any old key is cleared.
    let mut c = Config::default();
    c.upstream.api_key = Some(Secret::new("stale"));
    c.admin.token = Some(Secret::new("stale"));
    c.resolve_secrets(|name| panic!("looked up {name}"))
        .unwrap();
    assert_eq!(c.upstream.api_key, None);
    assert_eq!(c.admin.token, None);
}

#[test]
fn resolve_secrets_reports_missing_or_unusable_values() {
    let cases: [(Option<&str>, &str); 6] = [
        (None, "environment variable TIDEGATE_TEST_KEY is not set"),
        (Some(""), "environment variable TIDEGATE_TEST_KEY is empty"),
        (
            Some(" \n"),
            "environment variable TIDEGATE_TEST_KEY is empty",
        ),
        (Some("sk-abc\n"), "leading or trailing whitespace"),
        (Some("sk-a bc"), "cannot be sent in an Authorization header"),
        (
            Some("sk-\u{e9}"),
            "cannot be sent in an Authorization header",
        ),
    ];
    for (value, needle) in cases {
        let mut c = Config::from_toml_str(FULL).unwrap();
        c.upstream.api_key = Some(Secret::new("stale"));
        let ConfigErrors(errors) = c
            .resolve_secrets(|name| match name {
                "TIDEGATE_TEST_KEY" => value.map(str::to_owned),
                _ => lookup_key(name),
            })
            .unwrap_err();
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].path, "upstream.api_key_env");
        assert!(
            errors[0].message.contains(needle),
            "{:?}: {}",
            value,
            errors[0]
        );
        if let Some(v) = value.filter(|v| !v.trim().is_empty()) {
            assert!(!errors[0].message.contains(v.trim()), "{}", errors[0]);
        }
        assert_eq!(c.upstream.api_key, None);
        assert_eq!(c.admin.token, None, "nothing is stored on error");
    }
}

#[test]
fn debug_output_never_contains_the_secret() {
    let mut c = Config::from_toml_str(FULL).unwrap();
    c.resolve_secrets(lookup_key).unwrap();
    for shown in [format!("{c:?}"), format!("{c:#?}")] {
        assert!(!shown.contains(SECRET), "{shown}");
        assert!(!shown.contains(ADMIN_TOKEN), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
    }
    let secret = Secret::new(SECRET);
    assert_eq!(format!("{secret:?}"), "<redacted>");
    assert_eq!(format!("{secret}"), "<redacted>");
    assert_eq!(secret.expose(), SECRET);
}

#[test]
fn redacted_toml_hides_the_key_and_round_trips() {
    let mut c = Config::from_toml_str(FULL).unwrap();
    c.resolve_secrets(lookup_key).unwrap();
    let printed = c.to_redacted_toml().unwrap();
    assert!(!printed.contains(SECRET), "{printed}");
    assert!(!printed.contains(ADMIN_TOKEN), "{printed}");
    assert!(
        printed.contains("\n# upstream key: <redacted> (read from $TIDEGATE_TEST_KEY)\n"),
        "{printed}"
    );
    assert!(
        printed.contains("\n# admin token: <redacted> (read from $TIDEGATE_TEST_ADMIN_TOKEN)\n"),
        "{printed}"
    );
    for line in [
        "listen = \"0.0.0.0:8000\"",
        "token_env = \"TIDEGATE_TEST_ADMIN_TOKEN\"",
        "[streams]",
        "heartbeat_interval = \"250ms\"",
        "max_buffered_bytes = 131072",
        "client_stall_timeout = \"45s\"",
        "base_url = \"http://127.0.0.1:8081/v1\"",
        "upstream_connect_timeout = \"1s 500ms\"",
        "first_byte_timeout = \"2m\"",
        "max_stream_duration = \"1h\"",
        "drain_timeout = \"0s\"",
        "format = \"json\"",
    ] {
        assert!(
            printed.lines().any(|l| l == line),
            "{line} missing:\n{printed}"
        );
    }

    let mut reparsed = Config::from_toml_str(&printed).unwrap();
    assert_eq!(
        reparsed.upstream.api_key, None,
        "the key is not in the TOML"
    );
    assert_eq!(reparsed.admin.token, None, "the token is not in the TOML");
    reparsed.resolve_secrets(lookup_key).unwrap();
    assert_eq!(reparsed, c);
}

#[test]
fn default_config_prints_every_key_and_round_trips() {
    let c = Config::default();
    let printed = c.to_redacted_toml().unwrap();
    for key in [
        "listen",
        "base_url",
        "max_body_bytes",
        "max_header_bytes",
        "max_event_bytes",
        "header_read_timeout",
        "body_read_timeout",
        "upstream_connect_timeout",
        "first_byte_timeout",
        "upstream_idle_timeout",
        "max_stream_duration",
        "heartbeat_interval",
        "max_buffered_bytes",
        "client_stall_timeout",
        "drain_timeout",
        "format",
        "level",
    ] {
        assert!(
            printed.lines().any(|l| l.starts_with(&format!("{key} = "))),
            "{key} missing:\n{printed}"
        );
    }
    assert!(
        printed.contains("max_stream_duration = \"30m\""),
        "{printed}"
    );
    assert!(
        printed.contains("upstream_idle_timeout = \"2m\""),
        "{printed}"
    );
    // Absent optional keys are named in a comment, straight from the schema.
    assert!(
        printed
            .lines()
            .any(|l| l == "# not set: admin.listen, admin.token_env, upstream.api_key_env"),
        "{printed}"
    );
    assert!(
        printed.contains("heartbeat_interval = \"15s\""),
        "{printed}"
    );
    assert!(printed.contains("max_buffered_bytes = 65536"), "{printed}");
    assert!(
        printed.contains("client_stall_timeout = \"30s\""),
        "{printed}"
    );
    assert!(!printed.contains("upstream key"), "{printed}");
    assert!(!printed.contains("admin token"), "{printed}");
    assert_eq!(Config::from_toml_str(&printed), Ok(c));
}

#[test]
fn printing_escapes_strings() {
    let mut c = Config::default();
    c.log.level = "tidegate=\"debug\"\\x,\u{1F30A}".to_owned();
    c.admin.listen = Some("[::1]:9090".parse().unwrap());
    c.upstream.api_key = Some(Secret::new(SECRET));
    let printed = c.to_redacted_toml().unwrap();
    assert!(!printed.contains(SECRET));
    assert!(printed.contains("# upstream key: <redacted> (not from the environment)"));
    let mut reparsed = Config::from_toml_str(&printed).unwrap();
    reparsed.upstream.api_key = c.upstream.api_key.clone();
    assert_eq!(reparsed, c);
}

#[test]
fn log_format_parses_and_prints() {
    assert_eq!("text".parse::<LogFormat>(), Ok(LogFormat::Text));
    assert_eq!("json".parse::<LogFormat>(), Ok(LogFormat::Json));
    assert_eq!(
        "JSON".parse::<LogFormat>(),
        Err(r#"expected "text" or "json", got "JSON""#.to_owned())
    );
    assert_eq!(LogFormat::Json.to_string(), "json");
    assert_eq!(LogFormat::Text.to_string(), "text");
    assert_eq!(LogFormat::default(), LogFormat::Text);
}

#[test]
fn config_errors_display_one_per_line() {
    let errors = ConfigErrors(vec![
        error("limits.bogus", "unknown key"),
        error("log.level", "must not be empty"),
    ]);
    assert_eq!(
        errors.to_string(),
        "limits.bogus: unknown key\nlog.level: must not be empty"
    );
    let boxed: Box<dyn std::error::Error> = Box::new(errors);
    assert!(boxed.to_string().contains("log.level"));
}

#[test]
fn forward_headers_accepts_names_and_prefixes_and_refuses_credentials() {
    let ok = Config::from_toml_str(
        "[upstream]\nforward_headers = [\"x-stainless-*\", \"openai-organization\"]\n",
    )
    .unwrap();
    assert_eq!(
        ok.upstream.forward_headers,
        vec!["x-stainless-*".to_owned(), "openai-organization".to_owned()]
    );
    let printed = ok.to_redacted_toml().unwrap();
    assert!(printed.contains("forward_headers = [\"x-stainless-*\", \"openai-organization\"]"));
    assert_eq!(Config::from_toml_str(&printed).unwrap(), ok);

    for bad in [
        "authorization",
        "Cookie",
        "x-*-y",
        "",
        "*",
        "a*",
        "proxy-*",
        "x-request-id",
        "transfer-*",
    ] {
        let text = format!("[upstream]\nforward_headers = [\"{bad}\"]\n");
        let err = Config::from_toml_str(&text).unwrap_err();
        assert!(
            err.0.iter().any(|e| e.path == "upstream.forward_headers"),
            "{bad:?} refused: {err}"
        );
    }
    let err = Config::from_toml_str("[upstream]\nforward_headers = \"x-a\"\n").unwrap_err();
    assert_eq!(
        err.to_string(),
        r#"upstream.forward_headers: invalid type: string "x-a", expected a sequence"#
    );
}

// ---- [streams] ----------------------------------------------------------------

#[test]
fn streams_defaults() {
    let s = StreamsConfig::default();
    assert_eq!(s.heartbeat_interval, DEFAULT_HEARTBEAT_INTERVAL);
    assert_eq!(s.heartbeat_interval, Duration::from_secs(15));
    assert_eq!(s.max_buffered_bytes, DEFAULT_MAX_BUFFERED_BYTES);
    assert_eq!(s.max_buffered_bytes, 64 * 1024);
    assert_eq!(s.client_stall_timeout, DEFAULT_CLIENT_STALL_TIMEOUT);
    assert_eq!(s.client_stall_timeout, Duration::from_secs(30));
    assert_eq!(MIN_HEARTBEAT_INTERVAL, Duration::from_millis(10));
    assert_eq!(MAX_BUFFERED_BYTES_RANGE, 8192..=16 * 1024 * 1024);
    assert_eq!(
        Config::from_toml_str("[streams]\n").unwrap().streams,
        StreamsConfig::default()
    );
}

#[test]
fn streams_keys_parse() {
    let c = Config::from_toml_str(
        "[streams]\nheartbeat_interval = \"250ms\"\nmax_buffered_bytes = 65536\nclient_stall_timeout = \"2m\"\n",
    )
    .unwrap();
    assert_eq!(c.streams.heartbeat_interval, Duration::from_millis(250));
    assert_eq!(c.streams.heartbeat(), Some(Duration::from_millis(250)));
    assert_eq!(c.streams.max_buffered_bytes, 64 * 1024);
    assert_eq!(c.streams.client_stall_timeout, Duration::from_secs(120));

    // "0s" (or "0ms") switches heartbeats and early commit off.
    for off in ["0s", "0ms"] {
        let c =
            Config::from_toml_str(&format!("[streams]\nheartbeat_interval = \"{off}\"\n")).unwrap();
        assert_eq!(c.streams.heartbeat_interval, Duration::ZERO);
        assert_eq!(c.streams.heartbeat(), None);
    }

    // Inline and dotted forms work as for every section.
    let c = Config::from_toml_str("streams = { max_buffered_bytes = 8192 }").unwrap();
    assert_eq!(c.streams.max_buffered_bytes, 8192);
    let c = Config::from_toml_str("streams.client_stall_timeout = \"1ms\"").unwrap();
    assert_eq!(c.streams.client_stall_timeout, Duration::from_millis(1));

    // Sizes read like every other size key: bytes, or a bytesize string.
    let c = Config::from_toml_str("[streams]\nmax_buffered_bytes = \"64KiB\"\n").unwrap();
    assert_eq!(c.streams.max_buffered_bytes, 65_536);
    assert_eq!(
        only_error("[streams]\nheartbeat_interval = 15\n"),
        r#"streams.heartbeat_interval: invalid type: integer `15`, expected a duration such as "500ms", "15s" or "1h 30m""#
    );
    assert_eq!(
        only_error("[streams]\nclient_stall_timeout = \"30\"\n"),
        r#"streams.client_stall_timeout: expected a duration such as "500ms", "15s" or "1h 30m", got "30": time unit needed, for example 30sec or 30ms"#
    );
}

#[test]
fn streams_keys_enforce_their_ranges() {
    let accepted = [
        "heartbeat_interval = \"10ms\"",
        "heartbeat_interval = \"8760h\"",
        "max_buffered_bytes = 8192",
        "max_buffered_bytes = 16777216",
        "client_stall_timeout = \"1ms\"",
        "client_stall_timeout = \"8760h\"",
    ];
    for line in accepted {
        let text = format!("[streams]\n{line}\n");
        assert!(Config::from_toml_str(&text).is_ok(), "{text}");
    }
    let rejected = [
        (
            "heartbeat_interval = \"1ms\"",
            "streams.heartbeat_interval: must be 0s (heartbeats off) or at least 10ms, got 1ms",
        ),
        (
            "heartbeat_interval = \"9ms\"",
            "streams.heartbeat_interval: must be 0s (heartbeats off) or at least 10ms, got 9ms",
        ),
        (
            "heartbeat_interval = \"8761h\"",
            "streams.heartbeat_interval: must be at most 8760h (365 days), got 31539600s",
        ),
        (
            "max_buffered_bytes = 8191",
            "streams.max_buffered_bytes: must be between 8192 (8 KiB) and 16777216 (16 MiB), got 8191",
        ),
        (
            "max_buffered_bytes = 16777217",
            "streams.max_buffered_bytes: must be between 8192 (8 KiB) and 16777216 (16 MiB), got 16777217",
        ),
        (
            "max_buffered_bytes = 0",
            "streams.max_buffered_bytes: must be between 8192 (8 KiB) and 16777216 (16 MiB), got 0",
        ),
        (
            "max_buffered_bytes = -1",
            r#"streams.max_buffered_bytes: invalid value: integer `-1`, expected a size in bytes: an integer such as 65536, or a string such as "64 KiB""#,
        ),
        (
            "client_stall_timeout = \"0s\"",
            "streams.client_stall_timeout: must be greater than 0s",
        ),
        (
            "client_stall_timeout = \"8761h\"",
            "streams.client_stall_timeout: must be at most 8760h (365 days), got 31539600s",
        ),
    ];
    for (line, expected) in rejected {
        assert_eq!(
            only_error(&format!("[streams]\n{line}\n")),
            expected,
            "{line}"
        );
    }
}

#[test]
fn validate_checks_streams_overrides() {
    let mut c = Config::default();
    c.streams.heartbeat_interval = Duration::ZERO;
    assert_eq!(c.validate(), Ok(()));

    for (heartbeat, message) in [
        (
            Duration::from_micros(1),
            "must be 0s (heartbeats off) or at least 10ms, got 1µs",
        ),
        (
            Duration::from_micros(10_500),
            "must be a whole number of milliseconds, got 10.5ms",
        ),
        (
            Duration::MAX,
            "must be at most 8760h (365 days), got 18446744073709551615.999999999s",
        ),
    ] {
        let mut c = Config::default();
        c.streams.heartbeat_interval = heartbeat;
        let ConfigErrors(errors) = c.validate().unwrap_err();
        assert_eq!(errors, [error("streams.heartbeat_interval", message)]);
    }

    let mut c = Config::default();
    c.streams.max_buffered_bytes = 4096;
    c.streams.client_stall_timeout = Duration::ZERO;
    let ConfigErrors(errors) = c.validate().unwrap_err();
    assert_eq!(
        errors,
        [
            error(
                "streams.max_buffered_bytes",
                "must be between 8192 (8 KiB) and 16777216 (16 MiB), got 4096"
            ),
            error("streams.client_stall_timeout", "must be greater than 0s"),
        ]
    );
    c.streams.max_buffered_bytes = usize::MAX;
    c.streams.client_stall_timeout = MAX_DURATION + Duration::from_millis(1);
    let ConfigErrors(errors) = c.validate().unwrap_err();
    let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        ["streams.max_buffered_bytes", "streams.client_stall_timeout"]
    );
}

#[test]
fn unknown_keys_in_streams_are_rejected() {
    assert_eq!(
        only_error("[streams]\nbogus = 1\n"),
        "streams.bogus: unknown key"
    );
    assert_eq!(
        only_error("[streams]\nheartbeat_intervl = \"5s\"\n"),
        r#"streams.heartbeat_intervl: unknown key (did you mean "heartbeat_interval"?)"#
    );
    assert_eq!(
        only_error("[limits]\nmax_buffered_bytes = 8192\n"),
        r#"limits.max_buffered_bytes: unknown key (did you mean "streams.max_buffered_bytes"?)"#
    );
    assert_eq!(
        only_error("[stream]\nheartbeat_interval = \"5s\"\n"),
        r#"stream: unknown section (did you mean "streams"?)"#
    );
    assert_eq!(
        only_error("[streams.x]\na = 1\n"),
        "streams.x: unknown section"
    );
}

// ---- admin token ----------------------------------------------------------------

const ADMIN_TOKEN_REQUIRED: &str = "admin.token_env: required when admin.listen is not a loopback address (the admin API can end streams)";

#[test]
fn admin_listen_off_loopback_requires_a_token_env() {
    for addr in [
        "0.0.0.0:9090",
        "[::]:9090",
        "10.0.0.1:9090",
        "[2001:db8::1]:9090",
    ] {
        let text = format!("[admin]\nlisten = \"{addr}\"\n");
        let shown = only_error(&text);
        assert!(shown.starts_with(ADMIN_TOKEN_REQUIRED), "{shown}");
        assert!(
            shown.contains(&format!("admin.listen is {addr}")),
            "{shown}"
        );

        let text = format!("[admin]\nlisten = \"{addr}\"\ntoken_env = \"TIDEGATE_ADMIN_TOKEN\"\n");
        let c = Config::from_toml_str(&text).unwrap();
        assert_eq!(c.admin.token_env.as_deref(), Some("TIDEGATE_ADMIN_TOKEN"));
    }
    for addr in [
        "127.0.0.1:9090",
        "[::1]:9090",
        "127.0.0.2:9090",
        "[::ffff:127.0.0.1]:9090",
    ] {
        let text = format!("[admin]\nlisten = \"{addr}\"\n");
        assert!(Config::from_toml_str(&text).is_ok(), "{text}");
    }
    // No admin listener, no token needed; a token_env alone is fine too.
    assert!(Config::from_toml_str("").is_ok());
    assert!(Config::from_toml_str("[admin]\ntoken_env = \"T\"\n").is_ok());
}

#[test]
fn validate_requires_a_token_env_after_overrides() {
    // `--admin-listen` is applied after loading; validate() must catch it.
    let mut c = Config::default();
    c.admin.listen = Some("0.0.0.0:9090".parse().unwrap());
    let ConfigErrors(errors) = c.validate().unwrap_err();
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert!(
        errors[0].to_string().starts_with(ADMIN_TOKEN_REQUIRED),
        "{}",
        errors[0]
    );
    c.admin.token_env = Some("TIDEGATE_ADMIN_TOKEN".to_owned());
    assert_eq!(c.validate(), Ok(()));
    c.admin.token_env = Some("not a name".to_owned());
    let ConfigErrors(errors) = c.validate().unwrap_err();
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert_eq!(errors[0].path, "admin.token_env");
    assert!(errors[0]
        .message
        .starts_with("must be the name of an environment variable"));
}

#[test]
fn admin_token_env_must_be_a_variable_name_and_is_never_echoed() {
    for bad in [ADMIN_TOKEN, "", "1ABC", "MY-TOKEN", "A=B", "TOKEN "] {
        // Off loopback, a rejected name is reported once, not also as missing.
        let text = format!("[admin]\nlisten = \"0.0.0.0:9090\"\ntoken_env = \"{bad}\"");
        let shown = only_error(&text);
        assert!(
            shown.starts_with("admin.token_env: must be the name of an environment variable"),
            "{shown}"
        );
        assert!(shown.contains("TIDEGATE_ADMIN_TOKEN"), "{shown}");
        assert!(shown.contains("the token itself"), "{shown}");
        if !bad.is_empty() {
            assert!(!shown.contains(bad), "{shown}");
        }
    }
    assert_eq!(
        only_error("[admin]\ntoken_env = 5"),
        "admin.token_env: invalid type: integer `5`, expected a string"
    );
    let token = only_error(&format!("[admin]\ntoken = \"{ADMIN_TOKEN}\"\n"));
    assert!(
        token.starts_with("admin.token: unknown key (the token is never read from the file"),
        "{token}"
    );
    assert!(!token.contains(ADMIN_TOKEN), "{token}");
}

fn admin_with_token_env() -> Config {
    Config::from_toml_str(
        "[admin]\nlisten = \"0.0.0.0:9090\"\ntoken_env = \"TIDEGATE_TEST_ADMIN_TOKEN\"\n",
    )
    .unwrap()
}

#[test]
fn resolve_secrets_reads_the_admin_token() {
    let mut c = admin_with_token_env();
    c.resolve_secrets(lookup_key).unwrap();
    assert_eq!(
        c.admin.token.as_ref().map(Secret::expose),
        Some(ADMIN_TOKEN)
    );
    assert_eq!(c.upstream.api_key, None);

    // Exactly MIN_ADMIN_TOKEN_BYTES of visible ASCII is enough.
    let sixteen = "!0123456789abc~Z";
    assert_eq!(sixteen.len(), MIN_ADMIN_TOKEN_BYTES);
    c.resolve_secrets(|_| Some(sixteen.to_owned())).unwrap();
    assert_eq!(c.admin.token.as_ref().map(Secret::expose), Some(sixteen));
}

#[test]
fn resolve_secrets_reports_unusable_admin_tokens() {
    let cases: [(Option<&str>, &str); 8] = [
        (
            None,
            "environment variable TIDEGATE_TEST_ADMIN_TOKEN is not set",
        ),
        (
            Some(""),
            "environment variable TIDEGATE_TEST_ADMIN_TOKEN is empty",
        ),
        (
            Some("  \t"),
            "environment variable TIDEGATE_TEST_ADMIN_TOKEN is empty",
        ),
        (Some("shorttoken"), "is shorter than 16 bytes"),
        (Some("0123456789abcde"), "is shorter than 16 bytes"),
        (Some("0123456789abcdef\n"), "leading or trailing whitespace"),
        (
            Some("01234567\u{7}89abcdef"),
            "cannot be sent in an Authorization header",
        ),
        (
            Some("0123456789 abcdef\u{e9}"),
            "cannot be sent in an Authorization header",
        ),
    ];
    for (value, needle) in cases {
        let mut c = admin_with_token_env();
        c.admin.token = Some(Secret::new("stale"));
        let ConfigErrors(errors) = c.resolve_secrets(|_| value.map(str::to_owned)).unwrap_err();
        assert_eq!(errors.len(), 1, "{errors:#?}");
        assert_eq!(errors[0].path, "admin.token_env");
        assert!(
            errors[0].message.contains(needle),
            "{value:?}: {}",
            errors[0]
        );
        if let Some(v) = value.filter(|v| !v.trim().is_empty()) {
            assert!(!errors[0].message.contains(v.trim()), "{}", errors[0]);
        }
        assert_eq!(c.admin.token, None);
    }
}

#[test]
fn resolve_secrets_reports_both_secrets_at_once() {
    let mut c = Config::from_toml_str(FULL).unwrap();
    let ConfigErrors(errors) = c.resolve_secrets(|_| None).unwrap_err();
    let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(paths, ["upstream.api_key_env", "admin.token_env"]);

    // A good key is not stored when the token fails.
    let ConfigErrors(errors) = c
        .resolve_secrets(|name| (name == "TIDEGATE_TEST_KEY").then(|| SECRET.to_owned()))
        .unwrap_err();
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].path, "admin.token_env");
    assert_eq!(c.upstream.api_key, None);
    assert_eq!(c.admin.token, None);
}

#[test]
fn redacted_toml_prints_the_token_env_but_never_the_token() {
    let mut c = admin_with_token_env();
    c.streams.heartbeat_interval = Duration::ZERO;
    c.resolve_secrets(lookup_key).unwrap();
    let printed = c.to_redacted_toml().unwrap();
    assert!(!printed.contains(ADMIN_TOKEN), "{printed}");
    for line in [
        "listen = \"0.0.0.0:9090\"",
        "token_env = \"TIDEGATE_TEST_ADMIN_TOKEN\"",
        "# admin token: <redacted> (read from $TIDEGATE_TEST_ADMIN_TOKEN)",
        "heartbeat_interval = \"0s\"",
    ] {
        assert!(
            printed.lines().any(|l| l == line),
            "{line} missing:\n{printed}"
        );
    }
    let mut reparsed = Config::from_toml_str(&printed).unwrap();
    assert_eq!(reparsed.admin.token, None);
    reparsed.resolve_secrets(lookup_key).unwrap();
    assert_eq!(reparsed, c);

    // A token set in code (not from the environment) is not printed either.
    let mut c = Config::default();
    c.admin.token = Some(Secret::new(ADMIN_TOKEN));
    let printed = c.to_redacted_toml().unwrap();
    assert!(!printed.contains(ADMIN_TOKEN), "{printed}");
    assert!(
        printed.contains("# admin token: <redacted> (not from the environment)"),
        "{printed}"
    );
    let mut reparsed = Config::from_toml_str(&printed).unwrap();
    reparsed.admin.token = c.admin.token.clone();
    assert_eq!(reparsed, c);
}

#[test]
fn upstream_http2_must_be_a_boolean() {
    assert!(
        Config::from_toml_str("[upstream]\nhttp2 = true\n")
            .unwrap()
            .upstream
            .http2
    );
    let errors = Config::from_toml_str("[upstream]\nhttp2 = \"yes\"\n").unwrap_err();
    assert_eq!(errors.0.len(), 1);
    assert_eq!(errors.0[0].path, "upstream.http2");
    assert!(
        errors.0[0].message == r#"invalid type: string "yes", expected a boolean"#,
        "{}",
        errors.0[0].message
    );
}

#[test]
fn worker_threads_is_a_count_where_zero_means_one_per_cpu() {
    for (text, threads) in [("worker_threads = 0", 0), ("worker_threads = 256", 256)] {
        let c = Config::from_toml_str(text).unwrap();
        assert_eq!(c.worker_threads, threads, "{text}");
    }
    let c = Config::from_toml_str("worker_threads = 2").unwrap();
    assert_eq!(c.worker_count(), 2);
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert_eq!(Config::default().worker_count(), cpus);
    for (text, message) in [
        ("worker_threads = 257", "must be between 0 and 256, got 257"),
        (
            "worker_threads = -1",
            "invalid value: integer `-1`, expected usize",
        ),
        (
            "worker_threads = \"2\"",
            "invalid type: string \"2\", expected usize",
        ),
    ] {
        let errors = Config::from_toml_str(text).unwrap_err();
        assert_eq!(errors.0.len(), 1, "{text}: {errors}");
        assert_eq!(errors.0[0].path, "worker_threads", "{text}");
        assert_eq!(errors.0[0].message, message, "{text}");
    }
}

// ---- durations (humantime) -----------------------------------------------------

/// What the duration syntax accepts: humantime's grammar, checked here so a
/// change in the crate shows up as a failing test, not a surprise in a file.
#[test]
fn durations_are_humantime_strings() {
    let accepted = [
        ("500ms", Duration::from_millis(500)),
        ("15s", Duration::from_secs(15)),
        ("30m", Duration::from_secs(1800)),
        ("1h", Duration::from_secs(3600)),
        ("1h 30m", Duration::from_secs(5400)),
        ("1h30m", Duration::from_secs(5400)),
        ("1m 30s", Duration::from_secs(90)),
        ("1.5s", Duration::from_millis(1500)),
        ("2 min", Duration::from_secs(120)),
        ("15sec", Duration::from_secs(15)),
        ("2days", Duration::from_secs(2 * 86_400)),
        ("1d", Duration::from_secs(86_400)),
        ("1w", Duration::from_secs(7 * 86_400)),
        ("007s", Duration::from_secs(7)),
        ("0s", Duration::ZERO),
        ("0", Duration::ZERO),
    ];
    for (text, expected) in accepted {
        let c = Config::from_toml_str(&format!("[shutdown]\ndrain_timeout = \"{text}\"\n"))
            .unwrap_or_else(|e| panic!("{text}: {e}"));
        assert_eq!(c.shutdown.drain_timeout, expected, "{text}");
    }
    let rejected = [
        "", "10", "sixty", "s", "-1s", "+1s", "5S", "5MS", "1s ago", "0x10s", "1_000ms",
    ];
    for text in rejected {
        let message = only_error(&format!("[shutdown]\ndrain_timeout = \"{text}\"\n"));
        let expected = format!(
            r#"shutdown.drain_timeout: expected a duration such as "500ms", "15s" or "1h 30m", got {text:?}: "#
        );
        // humantime's own reason follows, e.g. "time unit needed, for example 10sec or 10ms".
        assert!(
            message.starts_with(&expected) && message.len() > expected.len(),
            "{message}"
        );
    }
}

#[test]
fn durations_print_in_a_form_that_reads_back() {
    let mut c = Config::default();
    for (duration, printed) in [
        (Duration::from_millis(1500), "1s 500ms"),
        (Duration::from_secs(90), "1m 30s"),
        (Duration::from_secs(3600), "1h"),
        (Duration::from_secs(5400), "1h 30m"),
        (Duration::from_secs(86_400), "1day"),
        (MAX_DURATION, "11months 30days 3h 50m 24s"),
        (Duration::ZERO, "0s"),
    ] {
        c.shutdown.drain_timeout = duration;
        let text = c.to_redacted_toml().unwrap();
        assert!(
            text.contains(&format!("\ndrain_timeout = \"{printed}\"\n")),
            "{text}"
        );
        assert_eq!(Config::from_toml_str(&text), Ok(c.clone()), "{text}");
    }
}

// ---- the README's reference table ------------------------------------------------

/// Every key of the schema has a row in README.md's configuration table and
/// every row names a key of the schema, so the reference cannot drift.
#[test]
fn readme_config_table_lists_exactly_the_schema_keys() {
    fn leaves(parent: &str, value: &serde_json::Value, out: &mut Vec<String>) {
        match value {
            serde_json::Value::Object(map) => {
                for (key, value) in map {
                    leaves(&load::join_path(parent, key), value, out);
                }
            }
            _ => out.push(parent.to_owned()),
        }
    }
    let mut schema = Vec::new();
    leaves(
        "",
        &serde_json::to_value(Config::default()).unwrap(),
        &mut schema,
    );
    schema.sort();

    let readme = include_str!("../../README.md");
    let section = readme
        .split("\n## Configuration reference\n")
        .nth(1)
        .and_then(|rest| rest.split("\n## ").next())
        .expect("README.md has a \"Configuration reference\" section");
    let mut documented: Vec<String> = section
        .lines()
        .filter_map(|line| line.strip_prefix("| `"))
        .filter_map(|rest| rest.split_once('`'))
        .map(|(key, _)| key.to_owned())
        .collect();
    documented.sort();
    assert_eq!(documented, schema);
}

#[test]
fn every_unknown_key_is_reported_at_once_with_its_hint() {
    let text = r#"
drain_timeout = "5s"
[limit]
x = 1
[limits]
max_body_byte = 5
level = "debug"
[admin]
token = "admin-0123456789abcdefTOKEN"
[streams]
heartbeat_intervl = "5s"
"#;
    let shown = ConfigErrors(errors_of(text)).to_string();
    assert_eq!(
        shown,
        [
            r#"admin.token: unknown key (the token is never read from the file; set token_env to the name of an environment variable holding it)"#,
            r#"drain_timeout: unknown key (did you mean "shutdown.drain_timeout"?)"#,
            r#"limit: unknown section (did you mean "limits"?)"#,
            r#"limits.level: unknown key (did you mean "log.level"?)"#,
            r#"limits.max_body_byte: unknown key (did you mean "max_body_bytes"?)"#,
            r#"streams.heartbeat_intervl: unknown key (did you mean "heartbeat_interval"?)"#,
        ]
        .join("\n")
    );
    assert!(!shown.contains(ADMIN_TOKEN));
}
