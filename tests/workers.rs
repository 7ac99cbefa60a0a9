//! `worker_threads`: client connections are served by that many threads, each with its own
//! event loop and its own upstream connections, and all of them end with the gateway.
//!
//! A test binary of its own, outside `tests/it/`: it counts this process's threads by name, so
//! no other test's gateway may run beside it.

#[path = "it/common/mod.rs"]
mod common;

use common::*;
use tidegate::mock::MockSettings;

/// Threads of this process whose name starts like the gateway's workers (`comm` keeps 15 bytes).
#[cfg(target_os = "linux")]
fn worker_threads_running() -> usize {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    tasks
        .filter_map(Result::ok)
        .filter_map(|task| std::fs::read_to_string(task.path().join("comm")).ok())
        .filter(|name| name.starts_with("tidegate-worke"))
        .count()
}

#[cfg(target_os = "linux")]
#[tokio::test]
async fn worker_threads_serve_streams_with_their_own_upstream_connections_and_end_with_the_gateway()
{
    const WORKERS: usize = 3;
    const STREAMS: usize = 60;
    assert_eq!(worker_threads_running(), 0);
    let env = start_with(MockSettings::default(), |config| {
        config.worker_threads = WORKERS;
        config.upstream.http2 = true;
    })
    .await;
    wait_for("the worker threads to start", PATIENCE, || async {
        (worker_threads_running() == WORKERS).then_some(())
    })
    .await;

    // Streams opened together, each on its own connection, all complete...
    streams_all_complete(env.gateway, STREAMS).await;
    // ...over at most one HTTP/2 upstream connection per worker.
    let stats = mock_stats(env.mock).await;
    assert_eq!(stats.streams_completed, STREAMS as u64);
    // The stats request's own connection is counted too.
    let upstream_connections = stats.connections_accepted - 1;
    assert!(
        (1..=WORKERS as u64).contains(&upstream_connections),
        "{upstream_connections} upstream connections for {WORKERS} workers"
    );

    // Shutdown returns only once the worker threads have ended.
    env.shutdown.cancel();
    let mut env = env;
    let stopped = tokio::time::timeout(PATIENCE, &mut env.gateway_task)
        .await
        .expect("the gateway stopped in time");
    stopped.unwrap().unwrap();
    assert_eq!(worker_threads_running(), 0);
}
