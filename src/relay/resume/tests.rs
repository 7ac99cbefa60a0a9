use super::*;

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr};

use http_body_util::BodyExt;

use crate::registry::NewStream;
use crate::relay::deadline::Deadlines;
use crate::relay::lifetime::StreamLifetime;
use crate::upstream::body::UpstreamBody;

/// `n` events of about `size` bytes each, then `[DONE]`, as a real upstream body: served by
/// hyper over an in-memory pipe, one frame per event.
async fn upstream(n: usize, size: usize) -> UpstreamBody {
    let mut reads: VecDeque<Bytes> = (0..n)
        .map(|i| {
            Bytes::from(format!(
                "data: {{\"n\":{i},\"pad\":\"{}\"}}\n\n",
                "x".repeat(size)
            ))
        })
        .collect();
    reads.push_back(Bytes::from_static(b"data: [DONE]\n\n"));
    let (client, server) = tokio::io::duplex(64 * 1024);
    tokio::spawn(async move {
        let service = hyper::service::service_fn(move |_request| {
            let frames = reads
                .clone()
                .into_iter()
                .map(|b| Ok::<_, std::convert::Infallible>(Frame::data(b)));
            let body = http_body_util::StreamBody::new(futures_util::stream::iter(frames));
            async move { Ok::<_, std::convert::Infallible>(http::Response::new(body)) }
        });
        let io = hyper_util::rt::TokioIo::new(server);
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(io, service)
            .await;
    });
    let io = hyper_util::rt::TokioIo::new(client);
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io).await.unwrap();
    tokio::spawn(connection);
    let request = http::Request::get("/")
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    UpstreamBody::bare(response.into_body())
}

fn relay(registry: &Arc<Registry>, body: UpstreamBody) -> SseRelay {
    let entry = registry.register(NewStream {
        client_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
        api_key: None,
        model: "m",
        request_id: "r",
        connection: None,
    });
    SseRelay::new(
        body,
        1 << 20,
        Deadlines::new(Duration::from_secs(60), Duration::from_secs(600)),
        StreamLifetime::begin(entry),
    )
}

fn config(per_stream: usize, budget: usize) -> ResumeConfig {
    ResumeConfig {
        enabled: true,
        max_bytes_per_stream: per_stream,
        memory_budget: budget,
        ..ResumeConfig::default()
    }
}

async fn read_all(body: &mut ResumableBody) -> Vec<u8> {
    let mut out = Vec::new();
    // Bounded: the scripted upstream ends.
    for _ in 0..100_000 {
        match body.frame().await {
            Some(Ok(frame)) => out.extend_from_slice(&frame.into_data().unwrap_or_default()),
            Some(Err(never)) => match never {},
            None => break,
        }
    }
    out
}

/// Each log keeps at most `max_bytes_per_stream`, all logs together at most the budget, and
/// the budget takes from the oldest streams first; what is dropped is counted.
#[tokio::test]
async fn replay_memory_stays_within_the_per_stream_limit_and_the_budget() {
    let registry = Arc::new(Registry::new(&["u"]));
    let store = Arc::new(ResumeStore::new(
        &config(64 * 1024, 256 * 1024),
        registry.clone(),
    ));
    let mut streams = Vec::new();
    // 10 streams of about 100 KiB each: 1 MiB of events against a 256 KiB budget.
    for _ in 0..10 {
        let (stream, mut body) =
            match store.begin(Box::new(relay(&registry, upstream(100, 1000).await))) {
                Ok(begun) => begun,
                Err(_) => panic!("no token"),
            };
        // Bounded: the scripted upstream ends. The count never passes the budget, not even
        // between two frames.
        for _ in 0..100_000 {
            let frame = body.frame().await;
            let stats = store.stats();
            assert!(
                stats.replay_bytes <= 256 * 1024,
                "over the budget: {stats:?}"
            );
            if frame.is_none() {
                break;
            }
        }
        assert!(stream.lock().log_bytes <= 64 * 1024);
        streams.push(stream);
    }
    let stats = store.stats();
    assert!(stats.evicted_bytes > 700 * 1024, "{stats:?}");
    // The oldest streams gave their events back first; the newest keeps its last 64 KiB.
    assert_eq!(streams[0].lock().log_bytes, 0);
    assert!(streams[9].lock().log_bytes > 60 * 1024);
    // All ten ended: their registry entries are gone, their logs retained for resumes.
    assert!(registry.is_empty());
    assert_eq!(stats.streams, 10);
    // Forgetting them gives the memory back.
    drop(streams);
    store.streams.clear();
    assert_eq!(store.stats().replay_bytes, 0);
}

/// A body dropped mid-stream detaches: the generation goes on into the log, and a resume from
/// any id the log holds gets every later event once, then `[DONE]`.
#[tokio::test]
async fn a_detached_stream_finishes_into_its_log_and_resumes_from_any_id() {
    let registry = Arc::new(Registry::new(&["u"]));
    let store = Arc::new(ResumeStore::new(
        &config(1 << 20, 1 << 24),
        registry.clone(),
    ));
    let Ok((stream, mut body)) = store.begin(Box::new(relay(&registry, upstream(20, 10).await)))
    else {
        panic!("no token");
    };
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert!(first.starts_with(b"id: 1\n"));
    drop(body);
    // The detached task runs the stream to its end.
    for _ in 0..1000 {
        if stream.lock().finished_ms.is_some() {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert!(stream.lock().finished_ms.is_some());
    assert!(registry.is_empty(), "the finished stream left the registry");
    let stats = store.stats();
    assert_eq!(
        (stats.detached, stats.detached_streams),
        (1, 0),
        "{stats:?}"
    );
    for last in [0u64, 1, 7, 20] {
        let request = ResumeRequest {
            stream_id: stream.id(),
            token: Some(stream.token()),
            last_event_id: Some(last),
            api_key: None,
        };
        let Ok((_, mut resumed)) = store.resume(request, None) else {
            panic!("resume from {last}");
        };
        let bytes = read_all(&mut resumed).await;
        let events = crate::sse::parser::parse_all(&bytes, 1 << 20).unwrap();
        // 20 events and [DONE]: ids 1..=21.
        let ids: Vec<u64> = events
            .iter()
            .map(|e| e.last_event_id.parse().unwrap())
            .collect();
        assert_eq!(ids, (last + 1..=21).collect::<Vec<_>>());
        assert_eq!(events.last().unwrap().data, "[DONE]");
    }
    // Past retain_after_done (60 s by default) the sweeper forgets it; not yet.
    assert_eq!(store.sweep(), 0);
    assert_eq!(store.stats().streams, 1);
}
