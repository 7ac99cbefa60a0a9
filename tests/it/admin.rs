//! The admin API on the operator listener: list live streams (with filters), look at one, end
//! one (its client gets a final `terminated_by_admin` event and its upstream request is
//! cancelled), the summary, bearer-token auth, and 405 with `Allow` for wrong methods.

use std::time::Duration;

use crate::common::*;
use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tidegate::config::Secret;
use tidegate::mock::MockSettings;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

/// The upstream must see a stream ended by the admin API cancelled within this long.
const CANCEL_WITHIN: Duration = Duration::from_secs(1);

/// Every field of `StreamView`, in the admin API's JSON.
const VIEW_FIELDS: [&str; 19] = [
    "id",
    "state",
    "client_ip",
    "api_key",
    "model",
    "upstream",
    "attempts",
    "request_id",
    "protocol",
    "started_at",
    "age_ms",
    "first_event_after_ms",
    "last_write_ago_ms",
    "events",
    "bytes",
    "heartbeats",
    "blocked_ms",
    "ending",
    "detached",
];

const TOKEN: &str = "test-admin-token-0123456789abcdef";

/// Only a role chunk at once, then a minute of silence: a stream that stays live.
const LONG: [(&str, &str); 2] = [("x-mock-chunks", "10"), ("x-mock-chunk-delay-ms", "60000")];

fn admin_request(
    env: &TestEnv,
    method: Method,
    path: &str,
    authorization: Option<&str>,
) -> Request<Full<Bytes>> {
    let mut builder = Request::builder()
        .method(method)
        .uri(format!("http://{}{path}", env.admin))
        .header("host", env.admin.to_string());
    if let Some(value) = authorization {
        builder = builder.header("authorization", value);
    }
    builder.body(Full::new(Bytes::new())).unwrap()
}

/// An admin request without a token (the harness configures none).
async fn admin(env: &TestEnv, method: Method, path: &str) -> (StatusCode, HeaderMap, Value) {
    fetch_json(admin_request(env, method, path, None)).await
}

async fn admin_get(env: &TestEnv, path: &str) -> Value {
    let (status, headers, json) = admin(env, Method::GET, path).await;
    assert_eq!(status, StatusCode::OK, "GET {path}: {json}");
    assert!(headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/json"));
    json
}

async fn summary(env: &TestEnv) -> Value {
    admin_get(env, "/admin/summary").await
}

/// Asserts an OpenAI-shaped error with this status and code; returns the error object.
fn assert_error(status: StatusCode, json: &Value, want_status: StatusCode, code: &str) -> Value {
    assert_eq!(status, want_status, "{json}");
    assert_eq!(json["error"]["code"], code, "{json}");
    assert!(json["error"]["message"].is_string(), "{json}");
    json["error"].clone()
}

/// A live stream whose first event has arrived, with the ids from its response headers.
struct Live {
    body: Incoming,
    seen: Vec<u8>,
    stream_id: String,
    request_id: String,
}

async fn live_from(response: Response<Incoming>) -> Live {
    assert_eq!(response.status(), StatusCode::OK);
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .unwrap_or_else(|| panic!("response has {name}"))
            .to_str()
            .unwrap()
            .to_owned()
    };
    let stream_id = header("x-tidegate-stream-id");
    let request_id = header("x-request-id");
    let mut body = response.into_body();
    let seen = read_until(&mut body, |b| !sse_data(b).is_empty()).await;
    assert!(!sse_data(&seen).is_empty(), "a first event");
    Live {
        body,
        seen,
        stream_id,
        request_id,
    }
}

/// An HTTP/1.1 stream of `model` with its first event in.
async fn open_live(env: &TestEnv, model: &str, extra: &[(&str, &str)]) -> (Conn, Live) {
    let mut conn = Conn::open(env.gateway).await;
    let response = conn
        .send(post(
            env.gateway,
            "/v1/chat/completions",
            &chat_body(model, true),
            extra,
        ))
        .await;
    (conn, live_from(response).await)
}

/// A stream whose upstream sends no response headers for a minute. Dropping it closes the
/// client's connection.
struct Waiting {
    /// The response, once there is one (the connection stays open).
    response: JoinHandle<Response<Incoming>>,
    connection: JoinHandle<()>,
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.response.abort();
        self.connection.abort();
    }
}

impl Waiting {
    async fn response(&mut self) -> Response<Incoming> {
        tokio::time::timeout(PATIENCE, &mut self.response)
            .await
            .expect("a response in time")
            .expect("the request task")
    }
}

async fn start_waiting(env: &TestEnv, model: &str, extra: &[(&str, &str)]) -> Waiting {
    let mut headers = vec![("x-mock-headers-delay-ms", "60000")];
    headers.extend_from_slice(extra);
    let request = post(
        env.gateway,
        "/v1/chat/completions",
        &chat_body(model, true),
        &headers,
    );
    let stream = TcpStream::connect(env.gateway).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    let connection = tokio::spawn(async move {
        let _ = connection.await;
    });
    // Unlike Conn::send, no time limit: the test decides how long this waits.
    let response = tokio::spawn(async move { sender.send_request(request).await.unwrap() });
    Waiting {
        response,
        connection,
    }
}

/// The streams of a list answer, by id.
fn ids(list: &Value) -> Vec<String> {
    list["streams"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_owned())
        .collect()
}

fn assert_view_fields(view: &Value) {
    let object = view.as_object().expect("a stream is an object");
    for field in VIEW_FIELDS {
        assert!(object.contains_key(field), "field {field} in {view}");
    }
    assert_eq!(object.len(), VIEW_FIELDS.len(), "no unknown fields: {view}");
}

/// `2026-11-21T08:30:00.123Z`
fn looks_like_rfc3339_millis(text: &str) -> bool {
    let b = text.as_bytes();
    b.len() == 24
        && b[4] == b'-'
        && b[7] == b'-'
        && b[10] == b'T'
        && b[13] == b':'
        && b[16] == b':'
        && b[19] == b'.'
        && b[23] == b'Z'
        && b.iter()
            .enumerate()
            .all(|(i, c)| [4, 7, 10, 13, 16, 19, 23].contains(&i) || c.is_ascii_digit())
}

/// Proves: the list shows every live stream, oldest first, with the identity the client saw
/// (stream id header, request id, address, model, protocol) and its live state; every filter
/// narrows it (and `matched` counts past `limit`); bad filters are 400 naming the parameter.
/// Without the registry or the admin routes, none of these ids or states could be listed.
#[tokio::test]
async fn the_list_shows_live_streams_with_their_identity_and_filters_them() {
    let env = start().await;
    let (_conn_a, a) = open_live(&env, "model-a", &LONG).await;
    let mut h2 = H2Conn::open(env.gateway).await;
    let response = h2
        .send(post(
            env.gateway,
            "/v1/chat/completions",
            &chat_body("model-b", true),
            &LONG,
        ))
        .await;
    let b = live_from(response).await;
    let waiting = start_waiting(&env, "model-c", &[("x-request-id", "client-req-c")]).await;

    let list = wait_for("three listed streams", PATIENCE, || async {
        let list = admin_get(&env, "/admin/streams").await;
        (list["matched"] == 3).then_some(list)
    })
    .await;
    assert_eq!(list["returned"], 3);
    let streams = list["streams"].as_array().unwrap();
    for view in streams {
        assert_view_fields(view);
    }
    // Oldest first.
    assert_eq!(ids(&list)[..2], [a.stream_id.clone(), b.stream_id.clone()]);
    let c_id = ids(&list)[2].clone();
    assert!(c_id.starts_with("st_"), "{c_id}");

    for (view, live, model, protocol) in [
        (&streams[0], &a, "model-a", "http1"),
        (&streams[1], &b, "model-b", "http2"),
    ] {
        assert_eq!(view["id"], live.stream_id.as_str());
        assert_eq!(view["request_id"], live.request_id.as_str());
        assert_eq!(view["client_ip"], "127.0.0.1");
        assert_eq!(view["model"], model);
        assert_eq!(view["protocol"], protocol);
        assert_eq!(view["state"], "streaming");
        // The single [upstream] form is the upstream named "default", asked once.
        assert_eq!(view["upstream"], "default");
        assert_eq!(view["attempts"], 1);
        assert_eq!(view["api_key"], Value::Null);
        assert_eq!(view["ending"], Value::Null);
        assert!(view["events"].as_u64().unwrap() >= 1, "{view}");
        // The client has read these bytes, so the gateway handed at least as many over.
        assert!(
            view["bytes"].as_u64().unwrap() >= live.seen.len() as u64,
            "{view}"
        );
        assert!(view["first_event_after_ms"].is_u64(), "{view}");
        assert!(view["age_ms"].is_u64() && view["last_write_ago_ms"].is_u64());
        assert!(
            looks_like_rfc3339_millis(view["started_at"].as_str().unwrap()),
            "{view}"
        );
    }
    let c = &streams[2];
    assert_eq!(c["model"], "model-c");
    assert_eq!(c["state"], "waiting_for_upstream");
    assert_eq!(
        c["request_id"], "client-req-c",
        "the client's own id is kept"
    );
    assert_eq!(c["protocol"], "http1");
    assert_eq!(c["client_ip"], "127.0.0.1");
    assert_eq!(c["events"], 0);
    assert_eq!(c["bytes"], 0);
    assert_eq!(c["first_event_after_ms"], Value::Null);

    // Filters, alone and together; `matched` counts every match, `returned` what fits `limit`.
    for (query, want) in [
        ("ip=127.0.0.1", vec![&a.stream_id, &b.stream_id, &c_id]),
        ("ip=10.1.2.3", vec![]),
        ("ip=%3A%3A1", vec![]),
        ("model=model-b", vec![&b.stream_id]),
        ("model=model%2Dc", vec![&c_id]),
        ("model=nope", vec![]),
        ("state=streaming", vec![&a.stream_id, &b.stream_id]),
        ("state=waiting_for_upstream", vec![&c_id]),
        ("state=waiting_for_first_token", vec![]),
        ("state=draining", vec![]),
        (
            "model=model-a&state=streaming&ip=127.0.0.1",
            vec![&a.stream_id],
        ),
        ("model=model-a&state=waiting_for_upstream", vec![]),
    ] {
        let list = admin_get(&env, &format!("/admin/streams?{query}")).await;
        let want: Vec<String> = want.into_iter().cloned().collect();
        assert_eq!(ids(&list), want, "{query}");
        assert_eq!(list["matched"], want.len(), "{query}");
        assert_eq!(list["returned"], want.len(), "{query}");
    }
    let list = admin_get(&env, "/admin/streams?limit=1").await;
    assert_eq!(list["matched"], 3);
    assert_eq!(list["returned"], 1);
    assert_eq!(ids(&list), vec![a.stream_id.clone()], "the oldest one");
    let list = admin_get(&env, "/admin/streams?state=streaming&limit=1").await;
    assert_eq!(
        (list["matched"].clone(), list["returned"].clone()),
        (2.into(), 1.into())
    );

    for (query, param) in [
        ("ip=nope", "ip"),
        ("ip=", "ip"),
        ("state=done", "state"),
        ("state=", "state"),
        ("limit=0", "limit"),
        ("limit=10001", "limit"),
        ("limit=-1", "limit"),
        ("limit=x", "limit"),
        ("colour=red", "query"),
        ("model=%zz", "query"),
    ] {
        let (status, _, json) = admin(&env, Method::GET, &format!("/admin/streams?{query}")).await;
        let error = assert_error(status, &json, StatusCode::BAD_REQUEST, "invalid_type");
        assert_eq!(error["param"], param, "{query}");
        assert_eq!(error["type"], "invalid_request_error");
    }

    // The admin API lives on the admin listener only, never on the client-facing one.
    for path in ["/admin/streams", "/admin/summary"] {
        let (status, _, json) = fetch_json(get(env.gateway, path)).await;
        assert_error(status, &json, StatusCode::NOT_FOUND, "unknown_url");
    }
    drop((a, b, h2, waiting));
}

/// Proves: one stream can be looked up by the id the client was given, and ids that are not
/// live (never were, malformed, or already ended) are 404 `stream_not_found`.
#[tokio::test]
async fn one_stream_by_id_and_404_for_unknown_ids() {
    let env = start().await;
    let (conn, live) = open_live(
        &env,
        "model-one",
        &[("x-mock-chunks", "3"), ("x-mock-chunk-delay-ms", "60000")],
    )
    .await;
    let path = format!("/admin/streams/{}", live.stream_id);
    let view = admin_get(&env, &path).await;
    assert_view_fields(&view);
    assert_eq!(view["id"], live.stream_id.as_str());
    assert_eq!(view["model"], "model-one");
    assert_eq!(view["request_id"], live.request_id.as_str());
    assert_eq!(view["state"], "streaming");

    // Same instance prefix and a sequence number that was never used; other instances; junk.
    let (instance_prefix, _) = live.stream_id.rsplit_once('_').unwrap();
    for unknown in [
        format!("{instance_prefix}_999999"),
        "st_000000000000_1".to_owned(),
        "st_nope".to_owned(),
        "nope".to_owned(),
    ] {
        for method in [Method::GET, Method::DELETE] {
            let (status, _, json) =
                admin(&env, method.clone(), &format!("/admin/streams/{unknown}")).await;
            assert_error(status, &json, StatusCode::NOT_FOUND, "stream_not_found");
        }
    }
    for path in [
        "/admin/streams/",
        "/admin/streams/a/b",
        "/admin/nope",
        "/admin",
    ] {
        let (status, _, json) = admin(&env, Method::GET, path).await;
        assert_error(status, &json, StatusCode::NOT_FOUND, "unknown_url");
    }

    // Once the client is gone, so is the stream.
    drop(live);
    drop(conn);
    wait_for("the ended stream to be unknown", PATIENCE, || async {
        let (status, _, json) = admin(&env, Method::GET, &path).await;
        (status == StatusCode::NOT_FOUND && json["error"]["code"] == "stream_not_found")
            .then_some(())
    })
    .await;
}

/// Proves: DELETE ends a live stream: 202, the client gets the events it already had and then
/// exactly one final `terminated_by_admin` event, the upstream request is cancelled within 1 s
/// (the mock saw it dropped, not completed), and the stream leaves the registry.
#[tokio::test]
async fn delete_ends_a_stream_with_a_final_event_and_cancels_its_upstream() {
    let env = start().await;
    let (_conn, mut live) = open_live(
        &env,
        "mock-1",
        &[("x-mock-chunks", "1000"), ("x-mock-chunk-delay-ms", "100")],
    )
    .await;
    let before = read_until(&mut live.body, |b| sse_data(b).len() >= 3).await;
    let mut seen = live.seen.clone();
    seen.extend_from_slice(&before);
    assert!(sse_data(&seen).len() >= 4, "role chunk and some content");

    let path = format!("/admin/streams/{}", live.stream_id);
    let (status, _, json) = admin(&env, Method::DELETE, &path).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{json}");
    assert_eq!(json["id"], live.stream_id.as_str());
    assert_eq!(json["ending"], "terminated_by_admin");
    assert_eq!(json["already_ending"], false);

    let rest = read_to_end(live.body).await;
    let mut all = seen.clone();
    all.extend_from_slice(&rest);
    let error = final_error(&all);
    assert_eq!(error["code"], "terminated_by_admin");
    assert_eq!(error["type"], "server_error");
    // Every event before the final one is an ordinary chunk of this stream.
    let data = sse_data(&all);
    assert!(data.len() >= 5);
    for d in &data[..data.len() - 1] {
        assert!(d.contains("chat.completion.chunk"), "{d}");
    }

    let s = wait_for_mock(
        env.mock,
        "the upstream stream to be cancelled",
        CANCEL_WITHIN,
        |s| s.streams_cancelled == 1,
    )
    .await;
    assert_eq!((s.streams_active, s.streams_completed), (0, 0));

    wait_for("the stream to leave the list", PATIENCE, || async {
        let list = admin_get(&env, "/admin/streams").await;
        (list["matched"] == 0).then_some(())
    })
    .await;
    let (status, _, json) = admin(&env, Method::GET, &path).await;
    assert_error(status, &json, StatusCode::NOT_FOUND, "stream_not_found");
    let (status, _, json) = admin(&env, Method::DELETE, &path).await;
    assert_error(status, &json, StatusCode::NOT_FOUND, "stream_not_found");
}

/// Proves: a stream still waiting for the upstream's headers can be ended too: the client gets
/// `200` event-stream headers (with the stream's id) and the one `terminated_by_admin` event,
/// instead of waiting a minute, and the upstream request is cancelled within 1 s.
#[tokio::test]
async fn delete_ends_a_stream_still_waiting_for_the_upstream() {
    let env = start().await;
    let mut waiting = start_waiting(&env, "model-wait", &[]).await;
    let view = wait_for("the waiting stream to be listed", PATIENCE, || async {
        let list = admin_get(&env, "/admin/streams?state=waiting_for_upstream").await;
        list["streams"].as_array().unwrap().first().cloned()
    })
    .await;
    assert_eq!(view["model"], "model-wait");
    wait_for_mock(env.mock, "the upstream request to start", PATIENCE, |s| {
        s.streams_active == 1
    })
    .await;
    assert!(
        !waiting.response.is_finished(),
        "no response before the upstream answers"
    );

    let id = view["id"].as_str().unwrap();
    let (status, _, json) = admin(&env, Method::DELETE, &format!("/admin/streams/{id}")).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{json}");
    assert_eq!(json["already_ending"], false);

    let response = waiting.response().await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    assert_eq!(response.headers()["x-tidegate-stream-id"], id);
    let body = read_to_end(response.into_body()).await;
    let error = final_error(&body);
    assert_eq!(error["code"], "terminated_by_admin");
    assert_eq!(sse_data(&body).len(), 1, "nothing but the final event");

    let s = wait_for_mock(
        env.mock,
        "the upstream request to be cancelled",
        CANCEL_WITHIN,
        |s| s.streams_cancelled == 1,
    )
    .await;
    assert_eq!(s.streams_active, 0);
    wait_for("the stream to leave the list", PATIENCE, || async {
        (summary(&env).await["streams"] == 0).then_some(())
    })
    .await;
}

/// Proves: the summary counts live streams by state and open API connections by protocol,
/// reports the oldest stream's age, goes back to zero when clients leave, and says `draining`
/// (with every stream in the `draining` state) once shutdown starts.
#[tokio::test]
async fn the_summary_counts_streams_by_state_and_connections_by_protocol() {
    let env = start().await;
    let s = summary(&env).await;
    assert_eq!(s["streams"], 0);
    for state in [
        "waiting_for_upstream",
        "waiting_for_first_token",
        "streaming",
        "draining",
    ] {
        assert_eq!(s["by_state"][state], 0, "{s}");
    }
    assert_eq!(s["by_state"].as_object().unwrap().len(), 4);
    assert_eq!(
        s["connections"]["http1"], 0,
        "admin connections are not counted"
    );
    assert_eq!(s["connections"]["http2"], 0);
    assert_eq!(s["oldest_stream_age_ms"], Value::Null);
    assert_eq!(s["draining"], false);

    // Two HTTP/1.1 streams, two on one HTTP/2 connection, one waiting for its first token, one
    // waiting for the upstream's headers.
    let (c1, l1) = open_live(&env, "mock-1", &LONG).await;
    let (c2, l2) = open_live(&env, "mock-1", &LONG).await;
    let mut h2 = H2Conn::open(env.gateway).await;
    let mut h2_bodies = Vec::new();
    for _ in 0..2 {
        let response = h2
            .send(post(
                env.gateway,
                "/v1/chat/completions",
                &chat_body("mock-1", true),
                &LONG,
            ))
            .await;
        h2_bodies.push(live_from(response).await);
    }
    let mut c3 = Conn::open(env.gateway).await;
    let first_token = c3
        .send(post(
            env.gateway,
            "/v1/chat/completions",
            &chat_body("mock-1", true),
            &[("x-mock-first-delay-ms", "60000")],
        ))
        .await;
    assert_eq!(first_token.status(), StatusCode::OK);
    let waiting = start_waiting(&env, "mock-1", &[]).await;

    let s = wait_for("six streams in the summary", PATIENCE, || async {
        let s = summary(&env).await;
        (s["streams"] == 6 && s["by_state"]["waiting_for_upstream"] == 1).then_some(s)
    })
    .await;
    assert_eq!(s["by_state"]["streaming"], 4, "{s}");
    assert_eq!(s["by_state"]["waiting_for_first_token"], 1, "{s}");
    assert_eq!(s["by_state"]["draining"], 0, "{s}");
    assert_eq!(s["connections"]["http1"], 4, "{s}");
    assert_eq!(s["connections"]["http2"], 1, "{s}");
    assert_eq!(s["draining"], false);
    let age = s["oldest_stream_age_ms"].as_u64().expect("an age");
    wait_for("the oldest stream to age", PATIENCE, || async {
        let later = summary(&env).await["oldest_stream_age_ms"].as_u64()?;
        (later > age).then_some(())
    })
    .await;

    // Everyone leaves: no stream and no connection is left counted.
    drop((c1, l1, c2, l2, h2_bodies, h2, first_token, c3, waiting));
    let s = wait_for("an empty summary", PATIENCE, || async {
        let s = summary(&env).await;
        (s["streams"] == 0 && s["connections"]["http1"] == 0 && s["connections"]["http2"] == 0)
            .then_some(s)
    })
    .await;
    assert_eq!(s["oldest_stream_age_ms"], Value::Null);

    // Shutdown: the admin listener stays up and reports the drain.
    let (_conn, live) = open_live(&env, "mock-1", &LONG).await;
    env.shutdown.cancel();
    let s = wait_for("the summary to report draining", PATIENCE, || async {
        let s = summary(&env).await;
        (s["draining"] == true).then_some(s)
    })
    .await;
    assert_eq!(s["streams"], 1, "{s}");
    assert_eq!(s["by_state"]["draining"], 1, "{s}");
    assert_eq!(s["by_state"]["streaming"], 0, "{s}");
    drop(live);
}

/// Proves: with a token configured, every admin route (whatever the method or path) answers 401
/// `invalid_admin_token` with `WWW-Authenticate: Bearer` to a missing or wrong token, and a
/// refused DELETE does not end the stream; the right token works; health checks stay open.
#[tokio::test]
async fn admin_routes_need_the_token_when_one_is_configured() {
    let env = start_with(MockSettings::default(), |config| {
        config.admin.token = Some(Secret::new(TOKEN));
    })
    .await;
    let (_conn, live) = open_live(&env, "mock-1", &LONG).await;
    let stream_path = format!("/admin/streams/{}", live.stream_id);
    let right = format!("Bearer {TOKEN}");
    let mut wrong_last = TOKEN.to_owned();
    wrong_last.pop();
    wrong_last.push('X');
    let wrong = [
        None,
        Some(format!("Bearer {wrong_last}")),
        Some(format!("Bearer {TOKEN}x")),
        Some(format!("Bearer {}", &TOKEN[1..])),
        Some("Bearer ".to_owned()),
        Some(TOKEN.to_owned()),
        Some(format!("Basic {TOKEN}")),
        Some(format!("Bearer:{TOKEN}")),
    ];
    let routes = [
        (Method::GET, "/admin/summary".to_owned()),
        (Method::GET, "/admin/streams".to_owned()),
        (Method::GET, "/admin/streams?limit=1".to_owned()),
        (Method::GET, stream_path.clone()),
        (Method::DELETE, stream_path.clone()),
        (Method::GET, "/admin/streams/st_x_1".to_owned()),
        (Method::POST, "/admin/summary".to_owned()),
        (Method::GET, "/admin/nope".to_owned()),
    ];
    for (method, path) in &routes {
        for authorization in &wrong {
            let (status, headers, json) = fetch_json(admin_request(
                &env,
                method.clone(),
                path,
                authorization.as_deref(),
            ))
            .await;
            assert_error(
                status,
                &json,
                StatusCode::UNAUTHORIZED,
                "invalid_admin_token",
            );
            assert_eq!(
                headers.get("www-authenticate").map(|v| v.to_str().unwrap()),
                Some("Bearer"),
                "{method} {path} with {authorization:?}"
            );
        }
    }

    // The refused DELETEs did nothing: the stream is live and not ending, its client got
    // nothing more.
    let (status, _, view) =
        fetch_json(admin_request(&env, Method::GET, &stream_path, Some(&right))).await;
    assert_eq!(status, StatusCode::OK, "{view}");
    assert_eq!(view["id"], live.stream_id.as_str());
    assert_eq!(view["ending"], Value::Null);
    let (status, _, s) = fetch_json(admin_request(
        &env,
        Method::GET,
        "/admin/summary",
        Some(&right),
    ))
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(s["streams"], 1);
    let (status, _, list) = fetch_json(admin_request(
        &env,
        Method::GET,
        "/admin/streams",
        Some(&right),
    ))
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(ids(&list), vec![live.stream_id.clone()]);

    // Health checks need no token.
    for path in ["/healthz", "/readyz"] {
        let (status, _, _) = fetch_json(get(env.admin, path)).await;
        assert_eq!(status, StatusCode::OK, "{path}");
    }

    // With the right token, the DELETE ends the stream.
    let (status, _, json) = fetch_json(admin_request(
        &env,
        Method::DELETE,
        &stream_path,
        Some(&right),
    ))
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{json}");
    let Live { body, seen, .. } = live;
    let rest = read_to_end(body).await;
    let mut all = seen;
    all.extend_from_slice(&rest);
    assert_eq!(final_error(&all)["code"], "terminated_by_admin");
}

/// Proves: a wrong method on an admin route is 405 `method_not_allowed` with an `Allow` header
/// naming what the route takes (and does not act: the stream survives a POST to its id).
#[tokio::test]
async fn wrong_methods_are_405_with_allow() {
    let env = start().await;
    let (_conn, live) = open_live(&env, "mock-1", &LONG).await;
    let stream_path = format!("/admin/streams/{}", live.stream_id);
    for (method, path, allow) in [
        (Method::POST, "/admin/summary", "GET"),
        (Method::DELETE, "/admin/summary", "GET"),
        (Method::POST, "/admin/streams", "GET"),
        (Method::DELETE, "/admin/streams", "GET"),
        (Method::PUT, "/admin/streams", "GET"),
        (Method::POST, stream_path.as_str(), "GET, DELETE"),
        (Method::PUT, stream_path.as_str(), "GET, DELETE"),
        (Method::PATCH, stream_path.as_str(), "GET, DELETE"),
        (Method::POST, "/healthz", "GET"),
        (Method::DELETE, "/readyz", "GET"),
    ] {
        let (status, headers, json) = admin(&env, method.clone(), path).await;
        assert_error(
            status,
            &json,
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
        );
        assert_eq!(
            headers.get("allow").map(|v| v.to_str().unwrap()),
            Some(allow),
            "{method} {path}"
        );
    }
    let view = admin_get(&env, &stream_path).await;
    assert_eq!(view["ending"], Value::Null, "the POST did not end it");
    assert_eq!(summary(&env).await["streams"], 1);
}

/// A client that sends a streaming request and then reads nothing: once the socket buffers
/// are full the gateway cannot hand it anything more.
async fn stalled_client(env: &TestEnv, model: &str) -> TcpStream {
    let body = chat_body(model, true);
    let request = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nx-mock-chunks: 1000000\r\nx-mock-chunk-delay-ms: 0\r\n\r\n{body}",
        env.gateway,
        body.len()
    );
    let mut socket = TcpStream::connect(env.gateway).await.unwrap();
    socket.write_all(request.as_bytes()).await.unwrap();
    socket
}

/// The stream of `model`, once the gateway has been unable to hand its client anything for a
/// while (the client's connection is full).
async fn wait_blocked(env: &TestEnv, model: &str) -> String {
    wait_for(
        "the stream to be blocked on its client",
        PATIENCE,
        || async {
            let list = admin_get(env, &format!("/admin/streams?model={model}")).await;
            let view = list["streams"].as_array().unwrap().first()?.clone();
            (view["blocked_ms"].as_u64()? >= 200).then(|| view["id"].as_str().unwrap().to_owned())
        },
    )
    .await
}

/// Proves: DELETE ends a stream even when its client has stopped reading (its body is not
/// polled, so it cannot write a final event): at the latest when the slow-client cut would
/// have ended it anyway, the stream leaves the registry and its upstream request is cancelled.
/// The control stream, not DELETEd, shows the stall cut works in this setup.
#[tokio::test]
async fn delete_ends_a_stream_whose_client_stopped_reading() {
    const STALL: Duration = Duration::from_secs(3);
    let env = start_with(MockSettings::default(), |config| {
        config.streams.client_stall_timeout = STALL;
    })
    .await;
    let _control = stalled_client(&env, "stall-control").await;
    let _deleted = stalled_client(&env, "stall-deleted").await;
    let control = wait_blocked(&env, "stall-control").await;
    let deleted = wait_blocked(&env, "stall-deleted").await;

    let (status, _, json) = admin(&env, Method::DELETE, &format!("/admin/streams/{deleted}")).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{json}");

    // The control stream is cut as a slow client after STALL.
    wait_for("the control stream to be cut", STALL + PATIENCE, || async {
        let (status, _, _) = admin(&env, Method::GET, &format!("/admin/streams/{control}")).await;
        (status == StatusCode::NOT_FOUND).then_some(())
    })
    .await;
    // The DELETEd one must not outlive it by much.
    wait_for(
        "the DELETEd stream to end",
        Duration::from_secs(2),
        || async {
            let (status, _, _) =
                admin(&env, Method::GET, &format!("/admin/streams/{deleted}")).await;
            (status == StatusCode::NOT_FOUND).then_some(())
        },
    )
    .await;
    wait_for_mock(env.mock, "both upstream streams cancelled", PATIENCE, |s| {
        s.streams_active == 0 && s.streams_cancelled == 2
    })
    .await;
}

/// Proves: the bearer scheme is matched case-insensitively, as HTTP auth schemes are
/// (RFC 9110 §11.1): `bearer <token>` is accepted like `Bearer <token>`.
#[tokio::test]
async fn the_bearer_scheme_is_case_insensitive() {
    let env = start_with(MockSettings::default(), |config| {
        config.admin.token = Some(Secret::new(TOKEN));
    })
    .await;
    // RFC 9110: the scheme is case-insensitive and followed by one or more spaces.
    for (scheme, gap) in [
        ("Bearer", " "),
        ("bearer", " "),
        ("BEARER", " "),
        ("Bearer", "  "),
    ] {
        let authorization = format!("{scheme}{gap}{TOKEN}");
        let (status, _, json) = fetch_json(admin_request(
            &env,
            Method::GET,
            "/admin/summary",
            Some(&authorization),
        ))
        .await;
        assert_eq!(status, StatusCode::OK, "{scheme}: {json}");
    }
}
