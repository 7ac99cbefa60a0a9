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
name = "local"
base_url = "http://127.0.0.1:8081/v1/"
api_key_env = "TIDEGATE_TEST_KEY"
forward_headers = ["x-stainless-*"]
protocol = "auto"
http2 = true
weight = 7
max_streams = 500
max_streams_per_connection = 250
idle_connection_timeout = "45s"
connect_timeout = "2s"
first_byte_timeout = "3m"
idle_timeout = "4m"

[[routes]]
models = ["llama-70b", "llama-3*"]
upstreams = ["local"]
rename = { local = "meta-llama/Llama-3.1-70B-Instruct" }

[retry]
max_attempts = 4
initial_backoff = "100ms"
max_backoff = "1s"
max_retry_after = "0s"
budget_percent = 0
budget_min_retries = 3
budget_window = "1m"

[breaker]
consecutive_failures = 0
failure_percent = 25
min_requests = 40
window = "1m"
open_for = "5s"

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
max_streams = 5000
max_connections = 9000
listen_backlog = 2048

[limits.per_ip]
requests_per_second = 10
burst = 20
ipv6_prefix = 56
max_streams = 8
max_connections = 16
max_tracked = 5000

[streams]
heartbeat_interval = "250ms"
max_buffered_bytes = 131072
client_stall_timeout = "45s"

[shutdown]
drain_timeout = "0s"

[log]
format = "json"
level = "tidegate=debug,hyper=warn"

[client_ip]
trusted_proxies = ["10.0.0.0/8", "127.0.0.1", "2001:db8::/32"]
forwarded_header = "forwarded"
proxy_protocol = true
proxy_header_timeout = "3s"

[auth]
mode = "keys"
keys_file = "/etc/tidegate/keys.toml"

[metrics]
models = ["gpt-4o", "mock-1"]
per_key_labels = true

[http2]
max_concurrent_streams = 128
keepalive_interval = "30s"
keepalive_timeout = "10s"
max_pending_accept_reset_streams = 50
max_local_error_reset_streams = 500

[tls]
cert_file = "/etc/tidegate/cert.pem"
key_file = "/etc/tidegate/key.pem"
handshake_timeout = "5s"

[cors]
allowed_origins = ["https://chat.example.com", "http://localhost:5173"]
allow_credentials = true
max_age = "1h"

[resume]
enabled = true
instance_id = "eu-1"
detach_grace = "45s"
retain_after_done = "2m"
max_bytes_per_stream = "512 KiB"
memory_budget = "1 GiB"

[demo]
page = true
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
    assert_eq!(c.limits.max_event_bytes, 1_048_576);
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
            name: "local".to_owned(),
            base_url: UpstreamUrl::parse("http://127.0.0.1:8081/v1").unwrap(),
            api_key_env: Some("TIDEGATE_TEST_KEY".to_owned()),
            api_key: None,
            forward_headers: vec!["x-stainless-*".to_owned()],
            ca_file: None,
            protocol: UpstreamProtocol::Auto,
            http2: true,
            weight: 7,
            max_streams: 500,
            max_streams_per_connection: 250,
            idle_connection_timeout: Duration::from_secs(45),
            connect_timeout: Some(Duration::from_secs(2)),
            first_byte_timeout: Some(Duration::from_secs(180)),
            idle_timeout: Some(Duration::from_secs(240)),
        },
        upstreams: Vec::new(),
        routes: vec![RouteConfig {
            models: vec!["llama-70b".to_owned(), "llama-3*".to_owned()],
            upstreams: vec!["local".to_owned()],
            rename: [(
                "local".to_owned(),
                "meta-llama/Llama-3.1-70B-Instruct".to_owned(),
            )]
            .into(),
        }],
        retry: RetryConfig {
            max_attempts: 4,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
            max_retry_after: Duration::ZERO,
            budget_percent: 0,
            budget_min_retries: 3,
            budget_window: Duration::from_secs(60),
        },
        breaker: BreakerConfig {
            consecutive_failures: 0,
            failure_percent: 25,
            min_requests: 40,
            window: Duration::from_secs(60),
            open_for: Duration::from_secs(5),
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
            max_streams: 5000,
            max_connections: 9000,
            listen_backlog: 2048,
            per_ip: PerIpLimits {
                requests_per_second: 10,
                burst: 20,
                ipv6_prefix: 56,
                max_streams: 8,
                max_connections: 16,
                max_tracked: 5000,
            },
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
        client_ip: ClientIpConfig {
            trusted_proxies: vec![
                "10.0.0.0/8".parse().unwrap(),
                "127.0.0.1/32".parse().unwrap(),
                "2001:db8::/32".parse().unwrap(),
            ],
            forwarded_header: ForwardedHeader::Forwarded,
            proxy_protocol: true,
            proxy_header_timeout: Duration::from_secs(3),
        },
        auth: AuthConfig {
            mode: AuthMode::Keys,
            keys_file: Some("/etc/tidegate/keys.toml".to_owned()),
        },
        metrics: MetricsConfig {
            models: vec!["gpt-4o".to_owned(), "mock-1".to_owned()],
            per_key_labels: true,
        },
        http2: Http2Config {
            max_concurrent_streams: 128,
            keepalive_interval: Duration::from_secs(30),
            keepalive_timeout: Duration::from_secs(10),
            max_pending_accept_reset_streams: 50,
            max_local_error_reset_streams: 500,
        },
        tls: TlsConfig {
            cert_file: Some("/etc/tidegate/cert.pem".to_owned()),
            key_file: Some("/etc/tidegate/key.pem".to_owned()),
            handshake_timeout: Duration::from_secs(5),
        },
        cors: CorsConfig {
            allowed_origins: vec![
                "https://chat.example.com".to_owned(),
                "http://localhost:5173".to_owned(),
            ],
            allow_credentials: true,
            max_age: Duration::from_secs(3600),
        },
        resume: ResumeConfig {
            enabled: true,
            instance_id: Some("eu-1".to_owned()),
            detach_grace: Duration::from_secs(45),
            retain_after_done: Duration::from_secs(120),
            max_bytes_per_stream: 512 * 1024,
            memory_budget: 1024 * 1024 * 1024,
        },
        demo: DemoConfig { page: true },
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
        printed.lines().any(|l| l
            == "# not set: admin.listen, admin.token_env, auth.keys_file, resume.instance_id, \
                tls.cert_file, tls.key_file, upstream.api_key_env, upstream.ca_file, upstream.connect_timeout, upstream.first_byte_timeout, \
                upstream.idle_timeout"),
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
///
/// Keys inside arrays of tables are named with `[]` for any element
/// (`routes[].models`), and the array itself has a row too (`routes`). The
/// elements of `upstreams` are the same struct as `upstream`, so their keys are
/// documented once, as the `upstream.*` rows (checked equal here).
#[test]
fn readme_config_table_lists_exactly_the_schema_keys() {
    fn leaves(parent: &str, value: &serde_json::Value, out: &mut Vec<String>) {
        match value {
            // A free-form table such as `routes[].rename` is empty in the sample: one key.
            serde_json::Value::Object(map) if !map.is_empty() => {
                for (key, value) in map {
                    leaves(&load::join_path(parent, key), value, out);
                }
            }
            serde_json::Value::Array(items) => {
                out.push(parent.to_owned());
                if let Some(first @ serde_json::Value::Object(_)) = items.first() {
                    leaves(&format!("{parent}[]"), first, out);
                }
            }
            _ => out.push(parent.to_owned()),
        }
    }
    let mut schema = Vec::new();
    leaves(
        "",
        &serde_json::to_value(load::schema_sample()).unwrap(),
        &mut schema,
    );
    schema.sort();
    let single: Vec<&str> = schema
        .iter()
        .filter_map(|k| k.strip_prefix("upstream."))
        .collect();
    let element: Vec<&str> = schema
        .iter()
        .filter_map(|k| k.strip_prefix("upstreams[]."))
        .collect();
    assert_eq!(element, single);
    assert!(single.contains(&"weight"), "{single:?}");
    schema.retain(|k| !k.starts_with("upstreams[]."));
    for key in ["upstreams", "routes", "routes[].models", "routes[].rename"] {
        assert!(schema.iter().any(|k| k == key), "{key} in {schema:?}");
    }

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

// ---- several upstreams, routes, retries, breakers ------------------------------------

const MULTI: &str = r#"
[[upstreams]]
name = "openai"
base_url = "https://api.openai.com/v1"
api_key_env = "TIDEGATE_TEST_KEY"
weight = 3
max_streams = 200

[[upstreams]]
name = "local"
base_url = "http://127.0.0.1:8000/v1"
api_key_env = "TIDEGATE_TEST_LOCAL_KEY"
protocol = "http2"
max_streams_per_connection = 500
idle_connection_timeout = "30s"
first_byte_timeout = "5m"

[[upstreams]]
name = "openai.eu"
base_url = "https://eu.example.com/v1"
forward_headers = ["x-stainless-*"]

[[routes]]
models = ["llama-70b"]
upstreams = ["local"]
rename = { local = "meta-llama/Llama-3.1-70B-Instruct" }

[[routes]]
models = ["gpt-4o*", "o1"]
upstreams = ["openai", "openai.eu"]
rename = { "openai.eu" = "gpt-4o-eu" }

[[routes]]
models = ["*"]
upstreams = ["openai"]

[retry]
max_attempts = 2

[breaker]
failure_percent = 0
"#;

const LOCAL_KEY: &str = "sk-local-0123456789abcdefLOCAL";

fn lookup_multi(name: &str) -> Option<String> {
    match name {
        "TIDEGATE_TEST_LOCAL_KEY" => Some(LOCAL_KEY.to_owned()),
        _ => lookup_key(name),
    }
}

fn names(config: &Config) -> Vec<&str> {
    config
        .upstream_list()
        .iter()
        .map(|u| u.name.as_str())
        .collect()
}

#[test]
fn several_upstreams_and_routes_parse() {
    let c = Config::from_toml_str(MULTI).unwrap();
    assert_eq!(names(&c), ["openai", "local", "openai.eu"]);
    assert_eq!(
        c.upstream,
        UpstreamConfig::default(),
        "[upstream] is unused"
    );
    let [openai, local, eu] = c.upstream_list() else {
        panic!("three upstreams: {:?}", c.upstreams);
    };
    assert_eq!(openai.base_url.as_str(), "https://api.openai.com/v1");
    assert_eq!(openai.weight, 3);
    assert_eq!(openai.max_streams, 200);
    assert_eq!(openai.effective_protocol(), UpstreamProtocol::Auto);
    assert_eq!(local.protocol, UpstreamProtocol::Http2);
    assert_eq!(local.max_streams_per_connection, 500);
    assert_eq!(local.idle_connection_timeout, Duration::from_secs(30));
    assert_eq!(local.first_byte_timeout, Some(Duration::from_secs(300)));
    assert_eq!(eu.weight, DEFAULT_UPSTREAM_WEIGHT);
    assert_eq!(eu.forward_headers, ["x-stainless-*"]);
    assert_eq!(c.routes.len(), 3);
    assert_eq!(c.routes[0].upstreams, ["local"]);
    assert_eq!(
        c.routes[1].rename.get("openai.eu").map(String::as_str),
        Some("gpt-4o-eu")
    );
    assert_eq!(c.retry.max_attempts, 2);
    assert_eq!(c.retry.initial_backoff, DEFAULT_RETRY_INITIAL_BACKOFF);
    assert_eq!(c.breaker.failure_percent, 0);
    assert_eq!(c.breaker.consecutive_failures, 5);
    assert_eq!(c.validate(), Ok(()));
}

#[test]
fn the_single_form_is_one_upstream_named_default() {
    let c = Config::from_toml_str("[upstream]\nbase_url = \"http://127.0.0.1:8081/v1\"\n").unwrap();
    assert!(c.upstreams.is_empty());
    assert!(c.routes.is_empty());
    assert_eq!(c.upstream_list(), std::slice::from_ref(&c.upstream));
    assert_eq!(names(&c), ["default"]);
    assert_eq!(names(&Config::default()), [DEFAULT_UPSTREAM_NAME]);

    // Routes name it "default", or its own name when it sets one.
    let c = Config::from_toml_str(
        "[[routes]]\nmodels = [\"gpt-4o\"]\nupstreams = [\"default\"]\nrename = { default = \"gpt-4o-2024-08-06\" }\n",
    )
    .unwrap();
    assert_eq!(
        c.route_for("gpt-4o")
            .map(|r| r.upstream_model("default", "gpt-4o")),
        Some("gpt-4o-2024-08-06")
    );
    let c = Config::from_toml_str(
        "[upstream]\nname = \"local\"\n[[routes]]\nmodels = [\"*\"]\nupstreams = [\"local\"]\n",
    )
    .unwrap();
    assert_eq!(names(&c), ["local"]);
    assert_eq!(
        only_error("[upstream]\nname = \"local\"\n[[routes]]\nmodels = [\"*\"]\nupstreams = [\"default\"]\n"),
        r#"routes[0].upstreams[0]: no upstream is named "default"; the upstreams are "local""#
    );
}

#[test]
fn upstream_and_upstreams_together_are_an_error() {
    let text = "[upstream]\nbase_url = \"http://127.0.0.1:8081/v1\"\n[[upstreams]]\nname = \"a\"\n";
    assert_eq!(
        only_error(text),
        "upstream: use either [upstream] for one upstream or [[upstreams]] for several, not \
         both: move these settings into an [[upstreams]] element"
    );
    // Any key of [upstream] counts, even one that only the legacy form has.
    let errors = errors_of("[upstream]\nhttp2 = true\n[[upstreams]]\nname = \"a\"\n");
    assert_eq!(errors[0].path, "upstream");
    // An [upstream] that only restates defaults changes nothing: accepted.
    let c = Config::from_toml_str(
        "[upstream]\nname = \"default\"\nweight = 1\n[[upstreams]]\nname = \"a\"\n",
    )
    .unwrap();
    assert_eq!(names(&c), ["a"]);

    // The rule holds for changes made after loading, which only validate() sees.
    let mut c = Config::from_toml_str(MULTI).unwrap();
    c.upstream.base_url = UpstreamUrl::parse("http://127.0.0.1:9/v1").unwrap();
    let ConfigErrors(errors) = c.validate().unwrap_err();
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert_eq!(errors[0].path, "upstream");
}

#[test]
fn upstream_names_are_checked_and_unique() {
    for good in [
        "a",
        "openai",
        "openai.eu-1_x",
        &"x".repeat(MAX_UPSTREAM_NAME_CHARS),
    ] {
        let text = format!("[[upstreams]]\nname = \"{good}\"\n");
        assert!(Config::from_toml_str(&text).is_ok(), "{text}");
    }
    for (bad, message) in [
        (
            "",
            r#"must not be empty; name the upstream, such as "openai" or "local""#.to_owned(),
        ),
        (
            "OpenAI",
            r#""OpenAI" is not a valid upstream name: use lower-case letters a-z, digits, '_', '.' and '-'"#.to_owned(),
        ),
        (
            "a b",
            r#""a b" is not a valid upstream name: use lower-case letters a-z, digits, '_', '.' and '-'"#.to_owned(),
        ),
        (
            "caf\u{e9}",
            "\"caf\u{e9}\" is not a valid upstream name: use lower-case letters a-z, digits, '_', '.' and '-'".to_owned(),
        ),
        (
            &"x".repeat(MAX_UPSTREAM_NAME_CHARS + 1),
            "must be at most 64 characters, got 65".to_owned(),
        ),
    ] {
        let text = format!("[[upstreams]]\nname = \"{bad}\"\n");
        assert_eq!(only_error(&text), format!("upstreams[0].name: {message}"));
        // The single form's name follows the same rules.
        let text = format!("[upstream]\nname = \"{bad}\"\n");
        assert_eq!(only_error(&text), format!("upstream.name: {message}"));
    }

    let errors = errors_of(
        "[[upstreams]]\nname = \"a\"\n[[upstreams]]\nname = \"b\"\n[[upstreams]]\nname = \"a\"\n",
    );
    assert_eq!(
        errors,
        [error(
            "upstreams[2].name",
            r#""a" is already the name of upstreams[0]; every upstream needs a name of its own"#
        )]
    );
    // Two elements without a name are both "default".
    let errors = errors_of("[[upstreams]]\nweight = 2\n[[upstreams]]\nweight = 3\n");
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert_eq!(errors[0].path, "upstreams[1].name");
    assert!(errors[0].message.starts_with(r#""default" is already"#));
}

#[test]
fn upstream_counts_enforce_their_ranges() {
    for line in [
        "weight = 1",
        "weight = 1000",
        "max_streams = 0",
        "max_streams = 1000000",
        "max_streams_per_connection = 1",
        "max_streams_per_connection = 10000",
    ] {
        let text = format!("[[upstreams]]\nname = \"a\"\n{line}\n");
        assert!(Config::from_toml_str(&text).is_ok(), "{text}");
    }
    for (line, expected) in [
        ("weight = 0", "weight: must be between 1 and 1000, got 0"),
        (
            "weight = 1001",
            "weight: must be between 1 and 1000, got 1001",
        ),
        (
            "max_streams = 1000001",
            "max_streams: must be between 0 and 1000000, got 1000001",
        ),
        (
            "max_streams_per_connection = 0",
            "max_streams_per_connection: must be between 1 and 10000, got 0",
        ),
        (
            "max_streams_per_connection = 10001",
            "max_streams_per_connection: must be between 1 and 10000, got 10001",
        ),
        (
            "weight = -1",
            "weight: invalid value: integer `-1`, expected u32",
        ),
        (
            "idle_connection_timeout = \"0s\"",
            "idle_connection_timeout: must be greater than 0s",
        ),
    ] {
        let text = format!("[[upstreams]]\nname = \"a\"\n[[upstreams]]\nname = \"b\"\n{line}\n");
        assert_eq!(
            only_error(&text),
            format!("upstreams[1].{expected}"),
            "{line}"
        );
        let text = format!("[upstream]\n{line}\n");
        assert_eq!(only_error(&text), format!("upstream.{expected}"), "{line}");
    }
}

#[test]
fn the_legacy_http2_key_means_protocol_http2() {
    for (lines, protocol) in [
        ("", UpstreamProtocol::Auto),
        ("http2 = true", UpstreamProtocol::Http2),
        (
            "http2 = false\nprotocol = \"http1\"",
            UpstreamProtocol::Http1,
        ),
        ("protocol = \"http2\"", UpstreamProtocol::Http2),
        (
            "http2 = true\nprotocol = \"http2\"",
            UpstreamProtocol::Http2,
        ),
        ("http2 = true\nprotocol = \"auto\"", UpstreamProtocol::Http2),
    ] {
        let c = Config::from_toml_str(&format!("[upstream]\n{lines}\n")).unwrap();
        assert_eq!(c.upstream.effective_protocol(), protocol, "{lines}");
    }
    let conflict = r#"http2 = true (the old spelling of protocol = "http2") contradicts protocol = "http1"; remove http2"#;
    assert_eq!(
        only_error("[upstream]\nhttp2 = true\nprotocol = \"http1\"\n"),
        format!("upstream.http2: {conflict}")
    );
    assert_eq!(
        only_error("[[upstreams]]\nname = \"a\"\nprotocol = \"http1\"\nhttp2 = true\n"),
        format!("upstreams[0].http2: {conflict}")
    );
    assert_eq!(
        only_error("[upstream]\nprotocol = \"h2\"\n"),
        r#"upstream.protocol: expected "auto", "http1" or "http2", got "h2""#
    );
    assert_eq!(
        only_error("[upstream]\nprotocol = 2\n"),
        r#"upstream.protocol: invalid type: integer `2`, expected "auto", "http1" or "http2""#
    );
    for protocol in [
        UpstreamProtocol::Auto,
        UpstreamProtocol::Http1,
        UpstreamProtocol::Http2,
    ] {
        assert_eq!(protocol.as_str().parse(), Ok(protocol));
        assert_eq!(protocol.to_string(), protocol.as_str());
    }
    assert_eq!(UpstreamProtocol::default(), UpstreamProtocol::Auto);
}

#[test]
fn per_upstream_timeouts_fall_back_to_limits() {
    let c = Config::from_toml_str(
        "[limits]\nupstream_connect_timeout = \"3s\"\nfirst_byte_timeout = \"90s\"\nupstream_idle_timeout = \"100s\"\n\
         [[upstreams]]\nname = \"plain\"\n\
         [[upstreams]]\nname = \"own\"\nconnect_timeout = \"1s\"\nfirst_byte_timeout = \"10m\"\nidle_timeout = \"20s\"\n",
    )
    .unwrap();
    let [plain, own] = c.upstream_list() else {
        panic!("two upstreams");
    };
    assert_eq!(plain.connect_timeout, None);
    assert_eq!(plain.connect_timeout(&c.limits), Duration::from_secs(3));
    assert_eq!(plain.first_byte_timeout(&c.limits), Duration::from_secs(90));
    assert_eq!(plain.idle_timeout(&c.limits), Duration::from_secs(100));
    assert_eq!(own.connect_timeout(&c.limits), Duration::from_secs(1));
    assert_eq!(own.first_byte_timeout(&c.limits), Duration::from_secs(600));
    assert_eq!(own.idle_timeout(&c.limits), Duration::from_secs(20));
    assert_eq!(
        UpstreamConfig::default().idle_connection_timeout,
        Duration::from_secs(60)
    );

    let errors = errors_of(
        "[upstream]\nconnect_timeout = \"0s\"\nfirst_byte_timeout = \"1500us\"\nidle_timeout = \"8761h\"\n",
    );
    assert_eq!(
        errors,
        [
            error("upstream.connect_timeout", "must be greater than 0s"),
            error(
                "upstream.first_byte_timeout",
                "must be a whole number of milliseconds, got 1.5ms"
            ),
            error(
                "upstream.idle_timeout",
                "must be at most 8760h (365 days), got 31539600s"
            ),
        ]
    );
    assert_eq!(
        only_error("[upstream]\nconnect_timeout = 5\n"),
        r#"upstream.connect_timeout: invalid type: integer `5`, expected a duration such as "500ms", "15s" or "1h 30m""#
    );
}

#[test]
fn routes_name_existing_upstreams_with_hints() {
    let upstreams = "[[upstreams]]\nname = \"openai\"\n[[upstreams]]\nname = \"local\"\n";
    assert_eq!(
        only_error(&format!(
            "{upstreams}[[routes]]\nmodels = [\"*\"]\nupstreams = [\"local\", \"opnai\"]\n"
        )),
        r#"routes[0].upstreams[1]: no upstream is named "opnai" (did you mean "openai"?)"#
    );
    assert_eq!(
        only_error(&format!(
            "{upstreams}[[routes]]\nmodels = [\"*\"]\nupstreams = [\"anthropic\"]\n"
        )),
        r#"routes[0].upstreams[0]: no upstream is named "anthropic"; the upstreams are "openai", "local""#
    );
    assert_eq!(
        only_error(&format!(
            "{upstreams}[[routes]]\nmodels = [\"*\"]\nupstreams = [\"local\", \"openai\", \"local\"]\n"
        )),
        r#"routes[0].upstreams[2]: "local" is listed twice"#
    );
    assert_eq!(
        only_error(&format!("{upstreams}[[routes]]\nmodels = [\"*\"]\n")),
        r#"routes[0].upstreams: must list at least one upstream by name (the upstreams are "openai", "local")"#
    );
}

#[test]
fn routes_need_models_and_rename_only_their_own_upstreams() {
    let upstreams = "[[upstreams]]\nname = \"openai\"\n[[upstreams]]\nname = \"openai.eu\"\n";
    let errors = errors_of(&format!(
        "{upstreams}[[routes]]\nupstreams = [\"openai\"]\n\
         [[routes]]\nmodels = []\nupstreams = [\"openai\"]\n\
         [[routes]]\nmodels = [\"gpt-4o\", \"\"]\nupstreams = [\"openai\"]\n\
         rename = {{ \"openai.eu\" = \"x\", openai = \"\" }}\n"
    ));
    assert_eq!(
        errors,
        [
            error(
                "routes[0].models",
                r#"must list at least one model name or pattern, such as "gpt-4o" or "gpt-4o*""#
            ),
            error(
                "routes[1].models",
                r#"must list at least one model name or pattern, such as "gpt-4o" or "gpt-4o*""#
            ),
            error(
                "routes[2].models[1]",
                r#"must not be empty ("*" matches every model)"#
            ),
            error(
                "routes[2].rename.openai",
                r#"must not be empty: it is the model name sent to upstream "openai""#
            ),
            error(
                r#"routes[2].rename."openai.eu""#,
                r#""openai.eu" is not one of this route's upstreams ("openai"); a rename applies to an upstream of its own route"#
            ),
        ]
    );
    // Routes are optional, and with none every upstream serves every model.
    let c = Config::from_toml_str(upstreams).unwrap();
    assert_eq!(c.route_for("gpt-4o"), None);
    assert_eq!(
        only_error("[[routes]]\nmodels = \"gpt-4o\"\nupstreams = [\"default\"]\n"),
        r#"routes[0].models: invalid type: string "gpt-4o", expected a sequence"#
    );
}

#[test]
fn model_patterns_match_with_stars_and_the_first_route_wins() {
    for (pattern, model, matches) in [
        ("gpt-4o", "gpt-4o", true),
        ("gpt-4o", "gpt-4o-mini", false),
        ("gpt-4o", "GPT-4o", false),
        ("gpt-4o*", "gpt-4o", true),
        ("gpt-4o*", "gpt-4o-mini", true),
        ("gpt-4o*", "gpt-4", false),
        ("*", "", true),
        ("*", "anything at all", true),
        ("*-mini", "gpt-4o-mini", true),
        ("*-mini", "gpt-4o-mini-2024", false),
        ("gpt-*-mini", "gpt-4o-mini", true),
        ("gpt-*-mini", "gpt--mini", true),
        ("gpt-*-mini", "gpt-mini", false),
        ("a*b*c", "aXbYbZc", true),
        ("a*b*c", "aXbYc-", false),
        ("a**c", "ac", true),
        ("*a*a*a*a*b", &"a".repeat(64), false),
        ("llama-?", "llama-3", false),
        ("llama-?", "llama-?", true),
        ("caf\u{e9}*", "caf\u{e9}-1", true),
        ("*\u{e9}", "caf\u{e9}", true),
        ("*\u{e9}", "cafe", false),
    ] {
        assert_eq!(
            wildcard_match(pattern, model),
            matches,
            "{pattern:?} {model:?}"
        );
    }

    let c = Config::from_toml_str(MULTI).unwrap();
    let route_of = |model: &str| {
        c.route_for(model)
            .map(|route| c.routes.iter().position(|r| r == route))
    };
    assert_eq!(route_of("llama-70b"), Some(Some(0)));
    assert_eq!(route_of("gpt-4o-mini"), Some(Some(1)));
    assert_eq!(route_of("o1"), Some(Some(1)));
    assert_eq!(route_of("o1-mini"), Some(Some(2)), "caught by \"*\"");
    assert!(c.routes[0].matches("llama-70b"));
    assert!(!c.routes[0].matches("llama-70b-instruct"));
    assert_eq!(
        c.routes[0].upstream_model("local", "llama-70b"),
        "meta-llama/Llama-3.1-70B-Instruct"
    );
    assert_eq!(c.routes[1].upstream_model("openai", "o1"), "o1");

    // An earlier pattern beats a later exact name: file order decides, not specificity.
    let c = Config::from_toml_str(
        "[[upstreams]]\nname = \"a\"\n[[upstreams]]\nname = \"b\"\n\
         [[routes]]\nmodels = [\"gpt-*\"]\nupstreams = [\"a\"]\n\
         [[routes]]\nmodels = [\"gpt-4o\"]\nupstreams = [\"b\"]\n",
    )
    .unwrap();
    assert_eq!(
        c.route_for("gpt-4o").map(|r| r.upstreams.clone()),
        Some(vec!["a".to_owned()])
    );
    assert_eq!(c.route_for("o1"), None, "no route matches: no upstream");
}

#[test]
fn retry_and_breaker_defaults() {
    let r = RetryConfig::default();
    assert_eq!(r.max_attempts, 3);
    assert_eq!(r.initial_backoff, Duration::from_millis(250));
    assert_eq!(r.max_backoff, Duration::from_secs(2));
    assert_eq!(r.max_retry_after, Duration::from_secs(5));
    assert_eq!(r.budget_percent, 20);
    assert_eq!(r.budget_min_retries, 10);
    assert_eq!(r.budget_window, Duration::from_secs(10));
    let b = BreakerConfig::default();
    assert_eq!(b.consecutive_failures, 5);
    assert_eq!(b.failure_percent, 50);
    assert_eq!(b.min_requests, 20);
    assert_eq!(b.window, Duration::from_secs(30));
    assert_eq!(b.open_for, Duration::from_secs(10));
    let u = UpstreamConfig::default();
    assert_eq!(u.name, "default");
    assert_eq!(u.protocol, UpstreamProtocol::Auto);
    assert_eq!(u.weight, 1);
    assert_eq!(u.max_streams, 0);
    assert_eq!(u.max_streams_per_connection, 100);
    assert_eq!(
        (u.connect_timeout, u.first_byte_timeout, u.idle_timeout),
        (None, None, None)
    );
    let c = Config::from_toml_str("[retry]\n[breaker]\n").unwrap();
    assert_eq!((c.retry, c.breaker), (r, b));
}

#[test]
fn retry_and_breaker_keys_enforce_their_ranges() {
    let accepted = [
        "[retry]\nmax_attempts = 1",
        "[retry]\nmax_attempts = 10",
        "[retry]\ninitial_backoff = \"2s\"\nmax_backoff = \"2s\"",
        "[retry]\nmax_retry_after = \"0s\"",
        "[retry]\nbudget_percent = 0\nbudget_min_retries = 0",
        "[retry]\nbudget_percent = 100",
        "[retry]\nbudget_window = \"1s\"",
        "[breaker]\nconsecutive_failures = 0\nfailure_percent = 0",
        "[breaker]\nconsecutive_failures = 1000\nfailure_percent = 100",
        "[breaker]\nmin_requests = 1\nwindow = \"1s\"\nopen_for = \"1ms\"",
    ];
    for text in accepted {
        assert!(Config::from_toml_str(text).is_ok(), "{text}");
    }
    let rejected = [
        (
            "[retry]\nmax_attempts = 0",
            "retry.max_attempts: must be between 1 and 10, got 0",
        ),
        (
            "[retry]\nmax_attempts = 11",
            "retry.max_attempts: must be between 1 and 10, got 11",
        ),
        (
            "[retry]\ninitial_backoff = \"0s\"",
            "retry.initial_backoff: must be greater than 0s",
        ),
        (
            "[retry]\ninitial_backoff = \"3s\"",
            "retry.max_backoff: must be at least retry.initial_backoff (3s), got 2s",
        ),
        (
            "[retry]\nmax_backoff = \"100ms\"",
            "retry.max_backoff: must be at least retry.initial_backoff (250ms), got 100ms",
        ),
        (
            "[retry]\nmax_retry_after = \"1500us\"",
            "retry.max_retry_after: must be a whole number of milliseconds, got 1.5ms",
        ),
        (
            "[retry]\nbudget_percent = 101",
            "retry.budget_percent: must be between 0 and 100, got 101",
        ),
        (
            "[retry]\nbudget_min_retries = 1000001",
            "retry.budget_min_retries: must be between 0 and 1000000, got 1000001",
        ),
        (
            "[retry]\nbudget_window = \"999ms\"",
            "retry.budget_window: must be at least 1s, got 999ms",
        ),
        (
            "[breaker]\nconsecutive_failures = 1001",
            "breaker.consecutive_failures: must be between 0 and 1000, got 1001",
        ),
        (
            "[breaker]\nfailure_percent = 101",
            "breaker.failure_percent: must be between 0 and 100, got 101",
        ),
        (
            "[breaker]\nmin_requests = 0",
            "breaker.min_requests: must be between 1 and 1000000, got 0",
        ),
        (
            "[breaker]\nwindow = \"0s\"",
            "breaker.window: must be at least 1s, got 0ns",
        ),
        (
            "[breaker]\nwindow = \"8761h\"",
            "breaker.window: must be at most 8760h (365 days), got 31539600s",
        ),
        (
            "[breaker]\nopen_for = \"0s\"",
            "breaker.open_for: must be greater than 0s",
        ),
        (
            "[breaker]\nmin_requests = \"20\"",
            r#"breaker.min_requests: invalid type: string "20", expected u32"#,
        ),
    ];
    for (text, expected) in rejected {
        assert_eq!(only_error(text), expected, "{text}");
    }
    // Both [retry] and [breaker] errors, with every other error, at once.
    let errors =
        errors_of("[retry]\nmax_attempts = 0\n[breaker]\nwindow = \"1ms\"\n[log]\nlevel = \"\"\n");
    let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(paths, ["retry.max_attempts", "breaker.window", "log.level"]);
}

#[test]
fn unknown_keys_in_array_elements_have_indexed_paths_and_hints() {
    let text = r#"
[[upstreams]]
name = "a"
[[upstreams]]
name = "b"
wieght = 2
api_key = "sk-test-0123456789abcdefSECRET"
max_attempts = 3
[upstreams.tls]
x = 1
[[routes]]
modles = ["*"]
upstreams = ["a"]
[retry]
weight = 1
"#;
    let shown = ConfigErrors(errors_of(text)).to_string();
    assert_eq!(
        shown,
        [
            r#"retry.weight: unknown key (did you mean "upstream.weight"?)"#,
            r#"routes[0].modles: unknown key (did you mean "models"?)"#,
            r#"upstreams[1].api_key: unknown key (the key is never read from the file; set api_key_env to the name of an environment variable holding it)"#,
            r#"upstreams[1].max_attempts: unknown key (did you mean "retry.max_attempts"?)"#,
            r#"upstreams[1].tls: unknown section (an upstream's TLS takes ca_file only; the top-level [tls] is the API listener's)"#,
            r#"upstreams[1].wieght: unknown key (did you mean "weight"?)"#,
            // Unknown keys first (ordered by path), then the rules the config breaks.
            r#"routes[0].models: must list at least one model name or pattern, such as "gpt-4o" or "gpt-4o*""#,
        ]
        .join("\n")
    );
    assert!(!shown.contains(SECRET));
}

#[test]
fn type_errors_in_several_array_elements_are_all_reported() {
    let errors = errors_of(
        "[[upstreams]]\nname = \"a\"\nweight = \"3\"\nforward_headers = [\"x-a\", 5]\n\
         [[upstreams]]\nname = \"b\"\n\
         [[upstreams]]\nname = 7\nmax_streams = -1\n\
         [[routes]]\nmodels = [\"*\"]\nupstreams = [\"a\"]\nrename = { a = 5 }\n",
    );
    let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "routes[0].rename.a",
            "upstreams[0].forward_headers[1]",
            "upstreams[0].weight",
            "upstreams[2].max_streams",
            "upstreams[2].name",
        ],
        "{errors:#?}"
    );
    assert_eq!(
        errors[0].message,
        "invalid type: integer `5`, expected a string"
    );
}

#[test]
fn upstream_and_upstreams_given_in_the_wrong_shape_get_hints() {
    assert_eq!(
        only_error("[[upstream]]\nname = \"a\"\n"),
        "upstream: expected a table (a [upstream] section), got an array (for several upstreams, write [[upstreams]])"
    );
    assert_eq!(
        only_error("[upstreams]\nname = \"a\"\n"),
        "upstreams: expected an array of tables ([[upstreams]] sections), got a table (for one upstream, write [upstream])"
    );
    assert_eq!(
        only_error("[routes]\nmodels = [\"*\"]\n"),
        "routes: expected an array of tables ([[routes]] sections), got a table"
    );
    assert_eq!(
        only_error("upstreams = [{ name = \"a\" }, \"b\"]\n"),
        "upstreams[1]: expected a table (a [[upstreams]] element), got string \"b\""
    );
    assert_eq!(
        only_error("routes = [[\"*\"], [\"default\"]]\n"),
        "routes[0]: expected a table (a [[routes]] element), got an array"
    );
}

#[test]
fn resolve_secrets_reads_every_upstreams_key() {
    let mut c = Config::from_toml_str(MULTI).unwrap();
    c.resolve_secrets(lookup_multi).unwrap();
    let keys: Vec<Option<&str>> = c
        .upstream_list()
        .iter()
        .map(|u| u.api_key.as_ref().map(Secret::expose))
        .collect();
    assert_eq!(keys, [Some(SECRET), Some(LOCAL_KEY), None]);
    assert_eq!(c.upstream.api_key, None);

    // Every problem, each at its element's path; nothing stored, stale keys cleared.
    let mut c = Config::from_toml_str(MULTI).unwrap();
    c.upstreams[2].api_key = Some(Secret::new("stale"));
    c.admin.token_env = Some("TIDEGATE_TEST_ADMIN_TOKEN".to_owned());
    let ConfigErrors(errors) = c
        .resolve_secrets(|name| match name {
            "TIDEGATE_TEST_KEY" => Some(SECRET.to_owned()),
            "TIDEGATE_TEST_LOCAL_KEY" => Some(format!("{LOCAL_KEY}\n")),
            _ => None,
        })
        .unwrap_err();
    let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(paths, ["upstreams[1].api_key_env", "admin.token_env"]);
    assert!(errors[0].message.contains("leading or trailing whitespace"));
    assert!(!errors[0].message.contains(LOCAL_KEY));
    assert!(c.upstream_list().iter().all(|u| u.api_key.is_none()));
    assert_eq!(c.admin.token, None);

    // Validation checks every element's api_key_env and forward_headers too.
    let errors = errors_of(
        "[[upstreams]]\nname = \"a\"\n[[upstreams]]\nname = \"b\"\napi_key_env = \"sk-oops\"\nforward_headers = [\"cookie\"]\n",
    );
    let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        ["upstreams[1].api_key_env", "upstreams[1].forward_headers"]
    );
    assert!(!errors[0].message.contains("sk-oops"));
}

#[test]
fn redacted_toml_prints_every_upstream_and_route_and_round_trips() {
    let mut c = Config::from_toml_str(MULTI).unwrap();
    c.resolve_secrets(lookup_multi).unwrap();
    let printed = c.to_redacted_toml().unwrap();
    assert!(!printed.contains(SECRET), "{printed}");
    assert!(!printed.contains(LOCAL_KEY), "{printed}");
    for line in [
        r#"# upstream "openai" key: <redacted> (read from $TIDEGATE_TEST_KEY)"#,
        r#"# upstream "local" key: <redacted> (read from $TIDEGATE_TEST_LOCAL_KEY)"#,
        "name = \"openai.eu\"",
        "protocol = \"http2\"",
        "first_byte_timeout = \"5m\"",
        "rename = { local = \"meta-llama/Llama-3.1-70B-Instruct\" }",
        "rename = { \"openai.eu\" = \"gpt-4o-eu\" }",
        "models = [\"gpt-4o*\", \"o1\"]",
        "[retry]",
        "max_attempts = 2",
        "[breaker]",
    ] {
        assert!(
            printed.lines().any(|l| l == line),
            "{line} missing:\n{printed}"
        );
    }
    let count = |line: &str| printed.lines().filter(|l| *l == line).count();
    assert_eq!(count("[[upstreams]]"), 3, "{printed}");
    assert_eq!(count("[[routes]]"), 3, "{printed}");
    // The unused [upstream] table is left out, and so is every empty rename.
    assert_eq!(count("[upstream]"), 0, "{printed}");
    assert!(!printed.contains("upstream key:"), "{printed}");
    assert!(!printed.contains("[routes.rename]"), "{printed}");
    assert!(
        printed.lines().any(|l| l.starts_with("# not set: ")
            && l.contains("upstreams[2].api_key_env")
            && !l.contains("upstream.")),
        "{printed}"
    );

    let mut reparsed = Config::from_toml_str(&printed).unwrap();
    assert!(reparsed.upstream_list().iter().all(|u| u.api_key.is_none()));
    reparsed.resolve_secrets(lookup_multi).unwrap();
    assert_eq!(reparsed, c);

    // A route without renames, and the single form with routes, round-trip too.
    let c = Config::from_toml_str(
        "[upstream]\nname = \"local\"\nprotocol = \"http1\"\n[[routes]]\nmodels = [\"*\"]\nupstreams = [\"local\"]\n",
    )
    .unwrap();
    let printed = c.to_redacted_toml().unwrap();
    assert_eq!(printed.lines().filter(|l| *l == "[upstream]").count(), 1);
    assert!(!printed.contains("rename"), "{printed}");
    assert_eq!(Config::from_toml_str(&printed), Ok(c));
}

#[test]
fn a_ca_file_is_for_https_upstreams_and_names_a_file() {
    let errors = Config::from_toml_str(
        "[upstream]\nbase_url = \"http://127.0.0.1:8000/v1\"\nca_file = \"ca.pem\"\n",
    )
    .unwrap_err();
    assert_eq!(errors.0.len(), 1, "{errors:?}");
    assert_eq!(errors.0[0].path, "upstream.ca_file");
    assert!(errors.0[0].message.contains("https"), "{errors:?}");
    let errors = Config::from_toml_str(
        "[upstream]\nbase_url = \"https://vllm.internal/v1\"\nca_file = \"\"\n",
    )
    .unwrap_err();
    assert_eq!(errors.0[0].path, "upstream.ca_file");
    let c = Config::from_toml_str(
        "[upstream]\nbase_url = \"https://vllm.internal/v1\"\nca_file = \"/etc/ssl/internal-ca.pem\"\n",
    )
    .unwrap();
    assert_eq!(
        c.upstream.ca_file.as_deref(),
        Some("/etc/ssl/internal-ca.pem")
    );
}

#[test]
fn admission_limits_are_checked_and_off_by_default() {
    let c = Config::default();
    assert_eq!(c.limits.max_streams, 0);
    assert_eq!(c.limits.per_ip.requests_per_second, 0);
    assert_eq!(c.limits.per_ip.ipv6_prefix, DEFAULT_IPV6_PREFIX);
    assert_eq!(c.limits.per_ip.max_tracked, DEFAULT_MAX_TRACKED);
    let errors = Config::from_toml_str(
        "[limits]\nmax_streams = 20000000\n[limits.per_ip]\nipv6_prefix = 8\nrequests_per_second = 2000000\nmax_tracked = 0\n",
    )
    .unwrap_err();
    let paths: Vec<&str> = errors.0.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "limits.max_streams",
            "limits.per_ip.requests_per_second",
            "limits.per_ip.ipv6_prefix",
            "limits.per_ip.max_tracked"
        ]
    );
    let errors = Config::from_toml_str("[limits.per_ip]\nrequests_per_secnd = 5\n").unwrap_err();
    assert_eq!(errors.0[0].path, "limits.per_ip.requests_per_secnd");
    assert!(
        errors.0[0].message.contains("requests_per_second"),
        "{errors:?}"
    );
}

#[test]
fn trusted_proxies_take_networks_and_addresses_and_name_a_bad_one() {
    let errors =
        Config::from_toml_str("[client_ip]\ntrusted_proxies = [\"10.0.0.0/8\", \"nope\"]\n")
            .unwrap_err();
    assert_eq!(errors.0[0].path, "client_ip.trusted_proxies");
    assert!(errors.0[0].message.contains("\"nope\""), "{errors:?}");
}

#[test]
fn auth_keys_need_a_keys_file_and_a_keys_file_needs_keys_mode() {
    let c = Config::default();
    assert_eq!(c.auth.mode, AuthMode::None);
    assert_eq!(c.auth.keys_file, None);
    assert_eq!(
        only_error("[auth]\nmode = \"keys\"\n"),
        r#"auth.keys_file: required when auth.mode = "keys": name the keys file (see `tidegate hash-key`)"#
    );
    assert_eq!(
        only_error("[auth]\nmode = \"keys\"\nkeys_file = \"\"\n"),
        "auth.keys_file: must name a file"
    );
    assert_eq!(
        only_error("[auth]\nkeys_file = \"keys.toml\"\n"),
        r#"auth.keys_file: is set but auth.mode is "none", so no key would be asked for: set auth.mode = "keys", or remove keys_file"#
    );
    let error = only_error("[auth]\nmode = \"key\"\n");
    assert!(
        error.starts_with("auth.mode: unknown variant `key`, expected `none` or `keys`"),
        "{error}"
    );
    let c = Config::from_toml_str("[auth]\nmode = \"keys\"\nkeys_file = \"k.toml\"\n").unwrap();
    assert_eq!(c.auth.mode, AuthMode::Keys);
}

#[test]
fn metric_models_are_few_distinct_and_never_other() {
    for (models, message) in [
        (r#"["a", "a"]"#, "lists a model twice"),
        (r#"["other"]"#, "must not be empty or \"other\""),
        (r#"[""]"#, "must not be empty or \"other\""),
    ] {
        let errors = errors_of(&format!("[metrics]\nmodels = {models}\n"));
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].path, "metrics.models");
        assert!(errors[0].message.contains(message), "{errors:?}");
    }
    let many: Vec<String> = (0..=MAX_METRIC_MODELS)
        .map(|i| format!("\"m{i}\""))
        .collect();
    let errors = errors_of(&format!("[metrics]\nmodels = [{}]\n", many.join(", ")));
    assert!(errors[0].message.contains("at most 64"), "{errors:?}");
    let ok = Config::from_toml_str("[metrics]\nmodels = [\"gpt-4o\"]\nper_key_labels = true\n");
    assert!(ok.is_ok(), "{ok:?}");
}

#[test]
fn http2_limits_are_checked() {
    let errors = errors_of(
        "[http2]\nmax_concurrent_streams = 0\nkeepalive_timeout = \"0s\"\n\
         max_pending_accept_reset_streams = 0\n",
    );
    let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "http2.max_concurrent_streams",
            "http2.max_pending_accept_reset_streams",
            "http2.keepalive_timeout"
        ],
        "{errors:?}"
    );
    // No PINGs at all is allowed.
    let c = Config::from_toml_str("[http2]\nkeepalive_interval = \"0s\"\n").unwrap();
    assert!(c.http2.keepalive_interval.is_zero());
}

#[test]
fn tls_needs_both_files_and_a_handshake_deadline() {
    assert!(Config::from_toml_str("[tls]\nhandshake_timeout = \"3s\"\n").is_ok());
    assert!(Config::from_toml_str("[tls]\ncert_file = \"c.pem\"\nkey_file = \"k.pem\"\n").is_ok());
    let only_cert = errors_of("[tls]\ncert_file = \"c.pem\"\n");
    assert_eq!(only_cert.len(), 1, "{only_cert:?}");
    assert_eq!(only_cert[0].path, "tls.key_file");
    assert!(only_cert[0].message.contains("needs both"), "{only_cert:?}");
    let only_key = errors_of("[tls]\nkey_file = \"k.pem\"\n");
    assert_eq!(only_key[0].path, "tls.cert_file");
    let empty = errors_of("[tls]\ncert_file = \"\"\nkey_file = \"k.pem\"\n");
    assert_eq!(empty[0].path, "tls.cert_file");
    assert!(empty[0].message.contains("must name a file"), "{empty:?}");
    let zero = errors_of("[tls]\nhandshake_timeout = \"0s\"\n");
    assert_eq!(zero[0].path, "tls.handshake_timeout");
}

#[test]
fn the_listen_backlog_is_checked_against_its_range() {
    assert_eq!(Config::default().limits.listen_backlog, 4096);
    for value in [1, 65_535] {
        let text = format!("[limits]\nlisten_backlog = {value}\n");
        let c = Config::from_toml_str(&text).unwrap_or_else(|e| panic!("{text}: {e}"));
        assert_eq!(c.limits.listen_backlog, value);
    }
    for value in [0, 65_536] {
        assert_eq!(
            only_error(&format!("[limits]\nlisten_backlog = {value}\n")),
            format!("limits.listen_backlog: must be between 1 and 65535, got {value}")
        );
    }
}

#[test]
fn cors_origins_are_exact_browser_origins() {
    for ok in [
        r#"allowed_origins = ["https://chat.example.com"]"#,
        r#"allowed_origins = ["http://localhost:5173", "http://127.0.0.1:8000", "https://[::1]:8443"]"#,
        r#"allowed_origins = ["*"]"#,
    ] {
        let text = format!("[cors]\n{ok}\n");
        assert!(Config::from_toml_str(&text).is_ok(), "{text}");
    }
    let cases = [
        (r#"["https://chat.example.com/"]"#, "no path"),
        (r#"["chat.example.com"]"#, "expected an origin"),
        (r#"["ftp://chat.example.com"]"#, "http or https"),
        (r#"["https://Chat.Example.com"]"#, "lower case"),
        (r#"["https://chat.example.com:443"]"#, "default port"),
        (r#"["http://localhost:80"]"#, "default port"),
        (
            r#"["https://a.example", "https://a.example"]"#,
            "listed twice",
        ),
        (r#"["*", "https://a.example"]"#, "list it alone"),
    ];
    for (origins, expected) in cases {
        let text = format!("[cors]\nallowed_origins = {origins}\n");
        let shown = only_error(&text);
        assert!(
            shown.starts_with("cors.allowed_origins[") && shown.contains(expected),
            "{text}: {shown}"
        );
    }
    let star_with_credentials =
        only_error("[cors]\nallowed_origins = [\"*\"]\nallow_credentials = true\n");
    assert!(
        star_with_credentials.contains("allow_credentials"),
        "{star_with_credentials}"
    );
    assert!(
        only_error("[cors]\nmax_age = \"25h\"\n").starts_with("cors.max_age: must be at most 24h")
    );
    assert!(only_error("[cors]\nmax_age = \"1500ms\"\n").contains("whole number of seconds"));
}

#[test]
fn resume_settings_are_checked() {
    let c = Config::default();
    assert!(!c.resume.enabled);
    assert_eq!(c.resume.detach_grace, Duration::from_secs(30));
    assert_eq!(c.resume.retain_after_done, Duration::from_secs(60));
    assert_eq!(c.resume.instance_id, None);
    let cases = [
        (
            "[resume]\ninstance_id = \"a_b\"",
            "resume.instance_id",
            "letters, digits",
        ),
        (
            "[resume]\ninstance_id = \"\"",
            "resume.instance_id",
            "1 to 63",
        ),
        (
            "[resume]\ndetach_grace = \"0s\"",
            "resume.detach_grace",
            "greater than 0s",
        ),
        (
            "[resume]\ndetach_grace = \"2h\"",
            "resume.detach_grace",
            "at most 1h",
        ),
        (
            "[resume]\nretain_after_done = \"2h\"",
            "resume.retain_after_done",
            "at most 1h",
        ),
        (
            "[resume]\nenabled = true\nmax_bytes_per_stream = \"1 KiB\"",
            "resume.max_bytes_per_stream",
            "limits.max_event_bytes",
        ),
        (
            "[resume]\nenabled = true\nmax_bytes_per_stream = \"4 MiB\"\nmemory_budget = \"2 MiB\"",
            "resume.memory_budget",
            "at least resume.max_bytes_per_stream",
        ),
    ];
    for (text, key, words) in cases {
        let errors = Config::from_toml_str(text).expect_err(text);
        let shown = errors.to_string();
        assert!(
            shown.contains(key) && shown.contains(words),
            "{text}: {shown}"
        );
    }
    let ok = "[resume]\nretain_after_done = \"0s\"\ninstance_id = \"pod-7\"";
    assert!(Config::from_toml_str(ok).is_ok());
}
