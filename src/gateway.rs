//! The gateway as a whole: shared state, and [`run`], the seam that `main`, the demo and the
//! tests all call with listeners they bound themselves (tests bind `127.0.0.1:0`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Config, Limits};
use crate::error::GatewayError;
use crate::relay::upstream::Upstream;
use crate::router::{AdminRoutes, ApiRoutes};
use crate::server::{self, ConnectionLimits, Shutdown};

/// State shared by every connection and request.
pub struct App {
    pub upstream: Upstream,
    pub limits: Limits,
    /// False from the moment shutdown starts, so `/readyz` turns load balancers away at once.
    ready: AtomicBool,
}

impl App {
    pub fn new(config: &Config) -> Result<App, GatewayError> {
        Ok(App {
            upstream: Upstream::new(&config.upstream, &config.limits)?,
            limits: config.limits.clone(),
            ready: AtomicBool::new(true),
        })
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }
}

/// The sockets the gateway serves on, bound by the caller.
pub struct Listeners {
    /// Client-facing API.
    pub api: TcpListener,
    /// Operator-facing health (and later admin and metrics) endpoints.
    pub admin: Option<TcpListener>,
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot build the upstream client: {0}")]
    Upstream(#[from] GatewayError),
}

/// Serves until `shutdown` is cancelled, then drains: `/readyz` fails, the API listener closes,
/// connections finish their in-flight requests within `shutdown.drain_timeout`, and whatever is
/// still open at the deadline is closed. Returns once every connection is gone.
pub async fn run(
    config: Config,
    listeners: Listeners,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    let app = Arc::new(App::new(&config)?);
    let limits = ConnectionLimits::from(&config.limits);

    let api = Shutdown {
        drain: CancellationToken::new(),
        force: CancellationToken::new(),
    };
    let api_tasks = TaskTracker::new();
    api_tasks.spawn(server::accept_loop(
        listeners.api,
        ApiRoutes(app.clone()),
        limits.clone(),
        api.clone(),
        api_tasks.clone(),
    ));

    // The admin listener stays up through the drain so operators can watch it.
    let admin = Shutdown {
        drain: CancellationToken::new(),
        force: CancellationToken::new(),
    };
    let admin_tasks = TaskTracker::new();
    if let Some(listener) = listeners.admin {
        admin_tasks.spawn(server::accept_loop(
            listener,
            AdminRoutes(app.clone()),
            limits,
            admin.clone(),
            admin_tasks.clone(),
        ));
    }

    shutdown.cancelled().await;
    app.ready.store(false, Ordering::Relaxed);
    let drain_timeout = config.shutdown.drain_timeout;
    tracing::info!(
        connections = api_tasks.len().saturating_sub(1),
        drain_timeout_ms = drain_timeout.as_millis() as u64,
        "shutting down: draining"
    );
    api.drain.cancel();
    api_tasks.close();
    if tokio::time::timeout(drain_timeout, api_tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            connections = api_tasks.len(),
            "drain deadline passed: closing remaining connections"
        );
        api.force.cancel();
        api_tasks.wait().await;
    }

    admin.drain.cancel();
    admin.force.cancel();
    admin_tasks.close();
    admin_tasks.wait().await;
    tracing::info!("shutdown complete");
    Ok(())
}
