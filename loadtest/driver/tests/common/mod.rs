//! The gateway and its built-in mock upstream in this process on `127.0.0.1:0`, for the driver
//! to run against: the few pieces of the gateway's own test harness (`tests/common/mod.rs` in
//! the root) that the driver's tests need.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tidegate::config::{Config, UpstreamUrl};
use tidegate::mock::{MockSettings, MockStats, StatsSnapshot};
use tidegate::{gateway, Listeners};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Generous upper bound for anything that should happen "at once" on loopback, even on a
/// loaded 2-core CI machine. Tests wait on conditions up to this, never for a fixed time.
pub const PATIENCE: Duration = Duration::from_secs(10);

pub struct TestEnv {
    pub gateway: SocketAddr,
    pub mock: SocketAddr,
    pub mock_stats: Arc<MockStats>,
    shutdown: CancellationToken,
    mock_stop: CancellationToken,
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        self.shutdown.cancel();
        self.mock_stop.cancel();
    }
}

/// Starts the mock and the gateway in front of it; `configure` adjusts the gateway's config.
pub async fn start_with(
    mock_settings: MockSettings,
    configure: impl FnOnce(&mut Config),
) -> TestEnv {
    let (mock, upstream, mock_stop, _) =
        tidegate::mock::spawn(mock_settings, ([127, 0, 0, 1], 0).into())
            .await
            .unwrap();

    let mut config = Config::default();
    config.upstream.base_url = UpstreamUrl::parse(&format!("http://{mock}/v1")).unwrap();
    config.shutdown.drain_timeout = Duration::from_secs(2);
    // The mock's per-request overrides, as in demo mode.
    config.upstream.forward_headers = vec!["x-mock-*".to_owned()];
    configure(&mut config);

    let api = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gateway = api.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    tokio::spawn(gateway::run(
        config,
        Listeners { api, admin: None },
        shutdown.clone(),
    ));
    TestEnv {
        gateway,
        mock,
        mock_stats: upstream.stats(),
        shutdown,
        mock_stop,
    }
}

/// Waits (up to `within`) until the mock's counters satisfy `pred`; returns them.
pub async fn wait_for_mock(
    stats: &MockStats,
    what: &str,
    within: Duration,
    pred: impl Fn(&StatsSnapshot) -> bool,
) -> StatsSnapshot {
    stats
        .wait_until(within, pred)
        .await
        .unwrap_or_else(|last| panic!("timed out after {within:?} waiting for {what}: {last:?}"))
}
