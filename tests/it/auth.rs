//! Gateway API keys over real sockets: 401 without a good key (health checks stay open), a good
//! key's name in the admin API and never its key upstream, the model allowlist (403, and the
//! model list), each key's rate and stream cap with slots back to zero, every refusal counted,
//! reloads (in process and by a real SIGHUP to the binary, good file and bad), and
//! `tidegate hash-key`.

use std::path::PathBuf;

use http::StatusCode;
use serde_json::Value;
use tidegate::config::{AuthMode, Config, RouteConfig, Secret};
use tidegate::mock::MockSettings;

use crate::cli::{run, run_with_input, temp_file, Running};
use crate::common::*;

const TEAM_A: &str = "sk-team-a-0123456789abcdef";
const LIMITED: &str = "sk-limited-0123456789abcdef";
const ONE_STREAM: &str = "sk-one-stream-0123456789abcdef";
const MOCK_ONLY: &str = "sk-mock-only-0123456789abcdef";

/// One `[[keys]]` entry for `key`, with extra lines.
fn entry(name: &str, key: &str, extra: &str) -> String {
    format!(
        "[[keys]]\nname = \"{name}\"\nsha256 = \"{}\"\n{extra}\n",
        hex::encode(tidegate::auth::hash_key(key.as_bytes()))
    )
}

/// A keys file with the test keys, named per test so tests do not share files.
fn keys_file(test: &str) -> PathBuf {
    let text = entry("team-a", TEAM_A, "")
        + &entry("limited", LIMITED, "requests_per_second = 1\nburst = 2")
        + &entry("one-stream", ONE_STREAM, "max_streams = 1")
        + &entry("mock-only", MOCK_ONLY, "models = [\"mock-*\"]");
    temp_file(&format!("keys-{test}.toml"), &text)
}

fn with_keys(config: &mut Config, file: &std::path::Path) {
    config.auth.mode = AuthMode::Keys;
    config.auth.keys_file = Some(file.to_str().unwrap().to_owned());
}

async fn start_keyed(test: &str, configure: impl FnOnce(&mut Config)) -> TestEnv {
    let file = keys_file(test);
    start_with(MockSettings::default(), |c| {
        with_keys(c, &file);
        configure(c);
    })
    .await
}

fn bearer(key: &str) -> String {
    format!("Bearer {key}")
}

/// A chat request with `authorization: Bearer <key>`, read whole as JSON.
async fn chat_as(
    gateway: std::net::SocketAddr,
    key: &str,
    model: &str,
    stream: bool,
) -> (StatusCode, http::HeaderMap, bytes::Bytes) {
    let auth = bearer(key);
    fetch(post(
        gateway,
        "/v1/chat/completions",
        &chat_body(model, stream),
        &[("authorization", &auth)],
    ))
    .await
}

async fn refusals(env: &TestEnv) -> Value {
    admission_summary(env).await["refusals"].clone()
}

fn error_of(body: &[u8]) -> Value {
    let json: Value = serde_json::from_slice(body).expect("a JSON error");
    json["error"].clone()
}

#[tokio::test]
async fn without_a_good_key_the_api_is_401_and_health_checks_stay_open() {
    let env = start_keyed("401", |_| {}).await;
    let (status, headers, json) = chat_json(env.gateway, "mock-1", true).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(headers["www-authenticate"], "Bearer");
    assert_eq!(json["error"]["code"], "invalid_api_key");
    assert_eq!(json["error"]["type"], "invalid_request_error");
    assert_eq!(json["error"]["param"], Value::Null);

    for authorization in [
        "Bearer sk-not-a-key-we-issued",
        "Basic c2stdGVhbS1hOng=",
        "sk-team-a-0123456789abcdef",
    ] {
        let (status, headers, body) = fetch(post(
            env.gateway,
            "/v1/chat/completions",
            &chat_body("mock-1", false),
            &[("authorization", authorization)],
        ))
        .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{authorization}");
        assert_eq!(headers["www-authenticate"], "Bearer");
        let error = error_of(&body);
        assert_eq!(error["code"], "invalid_api_key");
        // Not even a masked key comes back.
        let text = String::from_utf8_lossy(&body);
        assert!(!text.contains("sk-") && !text.contains("c2st"), "{text}");
    }
    // The model list needs a key too; the health checks do not.
    let (status, _, _) = fetch(get(env.gateway, "/v1/models")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    for path in ["/healthz", "/readyz"] {
        let (status, _, _) = fetch(get(env.gateway, path)).await;
        assert_eq!(status, StatusCode::OK, "{path}");
    }
    assert_eq!(refusals(&env).await["auth"], 5);
    // Nothing reached the upstream.
    assert_eq!(mock_stats(env.mock).await.requests_received, 0);
}

#[tokio::test]
async fn a_good_key_streams_under_its_name_and_never_reaches_the_upstream() {
    let env = start_keyed("good", |c| {
        c.upstream.api_key = Some(Secret::new("sk-gateway-own-key"));
    })
    .await;
    // The scheme is case-insensitive.
    let auth = format!("bearer {TEAM_A}");
    let held = open_stream(
        env.gateway,
        "mock-1",
        &[
            ("authorization", &auth),
            ("x-mock-chunks", "1"),
            ("x-mock-chunk-delay-ms", "10000"),
        ],
    )
    .await;
    let (_, _, list) = fetch_json(get(env.admin, "/admin/streams?api_key=team-a")).await;
    assert_eq!(list["matched"], 1);
    assert_eq!(list["streams"][0]["api_key"], "team-a");
    let (_, _, list) = fetch_json(get(env.admin, "/admin/streams?api_key=limited")).await;
    assert_eq!(list["matched"], 0);

    // The upstream got the gateway's own key, not the client's.
    let seen = mock_last_request(env.mock).await;
    assert_eq!(seen["authorization"], "Bearer sk-gateway-own-key");
    assert!(!seen.to_string().contains(TEAM_A), "{seen}");
    drop(held);

    // Non-streaming too.
    let (status, _, _) = chat_as(env.gateway, TEAM_A, "mock-1", false).await;
    assert_eq!(status, StatusCode::OK);
    let seen = mock_last_request(env.mock).await;
    assert_eq!(seen["authorization"], "Bearer sk-gateway-own-key");
}

#[tokio::test]
async fn a_model_outside_the_allowlist_is_403_and_the_model_list_shows_only_allowed_ones() {
    let env = start_keyed("models", |c| {
        c.routes = vec![RouteConfig {
            models: vec!["mock-1".into(), "gpt-4o".into(), "*".into()],
            upstreams: vec!["default".into()],
            ..Default::default()
        }];
    })
    .await;
    let (status, _, body) = chat_as(env.gateway, MOCK_ONLY, "gpt-4o", true).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let error = error_of(&body);
    assert_eq!(error["code"], "model_not_allowed");
    assert_eq!(error["param"], "model");
    let (status, _, _) = chat_as(env.gateway, MOCK_ONLY, "mock-1", false).await;
    assert_eq!(status, StatusCode::OK);
    // A key without an allowlist may use any model.
    let (status, _, _) = chat_as(env.gateway, TEAM_A, "gpt-4o", false).await;
    assert_eq!(status, StatusCode::OK);

    let ids = |list: &Value| -> Vec<String> {
        list["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap().to_owned())
            .collect()
    };
    for (key, models) in [
        (MOCK_ONLY, &["mock-1"][..]),
        (TEAM_A, &["mock-1", "gpt-4o"]),
    ] {
        let mut request = get(env.gateway, "/v1/models");
        let auth = bearer(key).parse().unwrap();
        request.headers_mut().insert("authorization", auth);
        let (status, _, list) = fetch_json(request).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(ids(&list), models, "{key}");
    }

    assert_eq!(refusals(&env).await["model_not_allowed"], 1);
    assert_eq!(mock_stats(env.mock).await.requests_received, 2);
}

#[tokio::test]
async fn each_key_has_its_own_rate_and_stream_cap_and_slots_come_back_to_zero() {
    let env = start_keyed("limits", |_| {}).await;
    for _ in 0..2 {
        let (status, _, _) = chat_as(env.gateway, LIMITED, "mock-1", false).await;
        assert_eq!(status, StatusCode::OK);
    }
    let (status, headers, body) = chat_as(env.gateway, LIMITED, "mock-1", false).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    let error = error_of(&body);
    assert_eq!(error["code"], "rate_limit_exceeded");
    assert!(
        error["message"].as_str().unwrap().contains("your API key"),
        "{error}"
    );
    assert_eq!(headers["retry-after"], "1");
    assert!(headers.get("retry-after-ms").is_some());
    assert_eq!(headers["x-ratelimit-limit-requests"], "1");
    assert_eq!(headers["x-ratelimit-remaining-requests"], "0");
    // Another key from the same address has its own budget.
    let (status, _, _) = chat_as(env.gateway, TEAM_A, "mock-1", false).await;
    assert_eq!(status, StatusCode::OK);

    let auth = bearer(ONE_STREAM);
    let held = [
        ("authorization", auth.as_str()),
        ("x-mock-chunks", "1"),
        ("x-mock-chunk-delay-ms", "10000"),
    ];
    let first = open_stream(env.gateway, "mock-1", &held).await;
    let (status, headers, body) = chat_as(env.gateway, ONE_STREAM, "mock-1", true).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(error_of(&body)["code"], "too_many_streams");
    assert!(headers.get("retry-after").is_some());
    // Non-streaming requests take no stream slot; other keys are not capped by this one.
    let (status, _, _) = chat_as(env.gateway, ONE_STREAM, "mock-1", false).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, _) = chat_as(env.gateway, TEAM_A, "mock-1", true).await;
    assert_eq!(status, StatusCode::OK);

    drop(first);
    wait_for("every slot back", PATIENCE, || async {
        (admission_summary(&env).await["streams"] == 0).then_some(())
    })
    .await;
    // The key's own slot came back too: it may stream again.
    let (status, _, _) = chat_as(env.gateway, ONE_STREAM, "mock-1", true).await;
    assert_eq!(status, StatusCode::OK);

    let counted = refusals(&env).await;
    assert_eq!(counted["key_rate"], 1);
    assert_eq!(counted["key_streams"], 1);
    assert_eq!(counted["ip_streams"], 0);
    assert_eq!(counted["auth"], 0);
}

#[tokio::test]
async fn a_reload_takes_a_good_file_whole_and_keeps_the_old_keys_on_a_bad_one() {
    let file = temp_file(
        "keys-reload.toml",
        &entry("old", "sk-old-0123456789abcdef", ""),
    );
    let (env, keys) = start_with_keys(MockSettings::default(), |c| with_keys(c, &file)).await;
    let keys = keys.expect("keys mode");
    let (status, _, _) = chat_as(env.gateway, "sk-old-0123456789abcdef", "mock-1", false).await;
    assert_eq!(status, StatusCode::OK);

    std::fs::write(&file, entry("new", "sk-new-0123456789abcdef", "")).unwrap();
    assert_eq!(keys.reload().unwrap(), 1);
    let (status, _, _) = chat_as(env.gateway, "sk-new-0123456789abcdef", "mock-1", false).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, _) = chat_as(env.gateway, "sk-old-0123456789abcdef", "mock-1", false).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    std::fs::write(&file, "[[keys]]\nname = \"broken\"\nsha256 = \"xyz\"\n").unwrap();
    let errors = keys.reload().unwrap_err().to_string();
    assert!(errors.contains("keys[0].sha256"), "{errors}");
    let (status, _, _) = chat_as(env.gateway, "sk-new-0123456789abcdef", "mock-1", false).await;
    assert_eq!(status, StatusCode::OK);
}

/// The port in the binary's "tidegate listening" log line.
fn listen_addr(line: &str) -> std::net::SocketAddr {
    let at = line.find("listen=").expect("listen field") + "listen=".len();
    line[at..]
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn sighup_reloads_the_keys_file_of_the_running_binary() {
    let env = start().await; // only its mock is used here
    let keys = temp_file(
        "keys-sighup.toml",
        &entry("old", "sk-old-sighup-0123456789", ""),
    );
    let config = temp_file(
        "sighup.toml",
        &format!(
            "[upstream]\nbase_url = \"http://{}/v1\"\n[auth]\nmode = \"keys\"\nkeys_file = \"{}\"\n",
            env.mock,
            keys.display()
        ),
    );
    let mut gw = Running::spawn(&[
        "--config",
        config.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
    ]);
    let line = gw.stderr_line(|l| l.contains("tidegate listening")).await;
    let gateway = listen_addr(&line);
    let status = |key: &'static str| async move { chat_as(gateway, key, "mock-1", false).await.0 };
    assert_eq!(status("sk-old-sighup-0123456789").await, StatusCode::OK);
    assert_eq!(
        status("sk-new-sighup-0123456789").await,
        StatusCode::UNAUTHORIZED
    );

    std::fs::write(&keys, entry("new", "sk-new-sighup-0123456789", "")).unwrap();
    gw.signal(libc::SIGHUP);
    let line = gw.stderr_line(|l| l.contains("API keys reloaded")).await;
    assert!(line.contains("keys=1"), "{line}");
    assert_eq!(status("sk-new-sighup-0123456789").await, StatusCode::OK);
    assert_eq!(
        status("sk-old-sighup-0123456789").await,
        StatusCode::UNAUTHORIZED
    );

    // A bad file: the keys in use stay, and the log says why without key material.
    std::fs::write(
        &keys,
        "[[keys]]\nname = \"new\"\nsha256 = \"sk-pasted-the-key\"\n",
    )
    .unwrap();
    gw.signal(libc::SIGHUP);
    let line = gw
        .stderr_line(|l| l.contains("keys file not reloaded"))
        .await;
    assert!(line.contains("keys[0].sha256"), "{line}");
    assert!(!line.contains("sk-pasted-the-key"), "{line}");
    assert_eq!(status("sk-new-sighup-0123456789").await, StatusCode::OK);

    gw.signal(libc::SIGTERM);
    assert_eq!(gw.exit_code().await, 0);
}

#[tokio::test]
async fn hash_key_prints_the_sha256_of_stdin_and_refuses_an_empty_key() {
    // `printf abc | sha256sum`
    const ABC: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad\n";
    for input in [&b"abc"[..], b"abc\n", b"abc\r\n"] {
        let (code, out, _) = run_with_input(&["hash-key"], &[], input).await;
        assert_eq!((code, out.as_str()), (0, ABC), "{input:?}");
    }
    for input in [&b""[..], b"\n", b"two words\n"] {
        let (code, out, err) = run_with_input(&["hash-key"], &[], input).await;
        assert_eq!(code, 64, "{input:?}");
        assert!(
            out.is_empty() && err.contains("tidegate hash-key:"),
            "{err}"
        );
    }
}

#[tokio::test]
async fn a_bad_keys_file_is_a_config_error_for_check_config_and_serve() {
    let good = temp_file("keys-check.toml", &entry("a", "sk-a-0123456789abcdef", ""));
    let config = temp_file(
        "check-keys.toml",
        &format!(
            "[auth]\nmode = \"keys\"\nkeys_file = \"{}\"\n",
            good.display()
        ),
    );
    let (code, out, err) = run(&["check-config", config.to_str().unwrap()], &[]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("# auth.keys_file: 1 keys, valid"), "{out}");

    std::fs::write(
        &good,
        entry("a", "k1", "") + &entry("a", "k2", "") + "[[keys]]\nname = \"b\"\nsha256 = \"00\"\n",
    )
    .unwrap();
    let (code, _, err) = run(&["check-config", config.to_str().unwrap()], &[]).await;
    assert_eq!(code, 64);
    assert!(
        err.contains("keys[1].name") && err.contains("keys[2].sha256"),
        "{err}"
    );
    let (code, _, err) = run(
        &[
            "--config",
            config.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ],
        &[],
    )
    .await;
    assert_eq!(code, 64, "{err}");

    std::fs::remove_file(&good).unwrap();
    let (code, _, err) = run(&["check-config", config.to_str().unwrap()], &[]).await;
    assert_eq!(code, 64);
    assert!(
        err.contains("auth.keys_file") && err.contains("cannot read"),
        "{err}"
    );
}
