//! The gateway as a whole: shared state, and [`run`], the seam that `main`, the demo and the
//! tests all call with listeners they bound themselves (tests bind `127.0.0.1:0`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Config, Limits, Secret, StreamsConfig};
use crate::error::GatewayError;
use crate::heartbeat::Scheduler;
use crate::registry::{ConnectionCounts, EndReason, Registry};
use crate::relay::upstream::Upstream;
use crate::router::{AdminRoutes, ApiRoutes};
use crate::server::{self, ConnectionLimits, Shutdown};

/// After the drain deadline, how long streams get to deliver their final `server_shutdown`
/// event before their connections are closed regardless.
pub const SHUTDOWN_EVENT_GRACE: Duration = Duration::from_secs(2);

/// State shared by every connection and request.
pub struct App {
    /// One upstream client per worker thread, each with its own connection pool: a worker's
    /// streams only ever use connections driven by that worker.
    upstreams: Vec<Arc<Upstream>>,
    pub limits: Limits,
    pub streams: StreamsConfig,
    /// Every live stream and the open connection counts.
    pub registry: Arc<Registry>,
    /// When set, every admin request must carry `Authorization: Bearer <token>`.
    pub admin_token: Option<Secret>,
    /// False from the moment shutdown starts, so `/readyz` turns load balancers away at once.
    ready: AtomicBool,
}

impl App {
    pub fn new(config: &Config) -> Result<App, GatewayError> {
        let upstreams = (0..config.worker_count())
            .map(|_| {
                Upstream::new(
                    &config.upstream,
                    &config.limits,
                    config.streams.max_buffered_bytes,
                )
                .map(Arc::new)
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(App {
            registry: Arc::new(Registry::new(config.upstream.base_url.as_str())),
            upstreams,
            limits: config.limits.clone(),
            streams: config.streams.clone(),
            admin_token: config.admin.token.clone(),
            ready: AtomicBool::new(true),
        })
    }

    /// How many worker threads serve clients (at least 1).
    pub fn workers(&self) -> usize {
        self.upstreams.len()
    }

    /// Worker `worker`'s upstream client; out-of-range indexes wrap around.
    pub fn upstream(&self, worker: usize) -> &Arc<Upstream> {
        &self.upstreams[worker % self.upstreams.len()]
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
    #[error("cannot start the worker threads: {0}")]
    Workers(#[from] std::io::Error),
}

/// Serves until `shutdown` is cancelled, then drains: `/readyz` fails, the API listener closes,
/// keep-alive connections take no new requests, and streams in flight may finish within
/// `shutdown.drain_timeout`. At the deadline every remaining stream ends with a final
/// `server_shutdown` error event; connections still open [`SHUTDOWN_EVENT_GRACE`] later are
/// closed. Returns once every connection is gone.
pub async fn run(
    config: Config,
    listeners: Listeners,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    let app = Arc::new(App::new(&config)?);
    run_app(app, &config, listeners, shutdown).await
}

/// [`run`] with the shared state built by the caller (tests look into the registry).
pub async fn run_app(
    app: Arc<App>,
    config: &Config,
    listeners: Listeners,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    let limits = ConnectionLimits::new(&config.limits, &config.streams);
    // The workers accept on copies of this socket, each in its own runtime.
    let api_listener = listeners.api.into_std()?;

    let scheduler_stop = CancellationToken::new();
    let scheduler = tokio::spawn(
        Scheduler::new(&config.streams).run(app.registry.clone(), scheduler_stop.clone()),
    );

    let api = Shutdown {
        drain: CancellationToken::new(),
        force: CancellationToken::new(),
    };
    let api_tasks = TaskTracker::new();
    let workers = app.workers();
    let handlers = (0..workers)
        .map(|worker| ApiRoutes::for_worker(app.clone(), worker))
        .collect();
    let api_workers = match server::start_workers(
        api_listener,
        handlers,
        limits.clone(),
        app.registry.connections().clone(),
        api.clone(),
        api_tasks.clone(),
    ) {
        Ok(started) => started,
        Err(e) => {
            scheduler_stop.cancel();
            return Err(e.into());
        }
    };
    tracing::debug!(workers, "worker threads started");

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
            Arc::new(ConnectionCounts::default()),
            admin.clone(),
            admin_tasks.clone(),
        ));
    }

    shutdown.cancelled().await;
    app.ready.store(false, Ordering::Relaxed);
    app.registry.start_draining();
    let drain_timeout = config.shutdown.drain_timeout;
    tracing::info!(
        connections = api_tasks.len().saturating_sub(workers),
        streams = app.registry.len(),
        drain_timeout_ms = drain_timeout.as_millis() as u64,
        "shutting down: draining"
    );
    api.drain.cancel();
    api_tasks.close();
    if tokio::time::timeout(drain_timeout, api_tasks.wait())
        .await
        .is_err()
    {
        let ended = app.registry.end_all(EndReason::Shutdown);
        tracing::warn!(
            streams = ended,
            connections = api_tasks.len(),
            "drain deadline passed: ending the remaining streams with server_shutdown"
        );
        if tokio::time::timeout(SHUTDOWN_EVENT_GRACE, api_tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                connections = api_tasks.len(),
                "closing the connections still open"
            );
            api.force.cancel();
            api_tasks.wait().await;
        }
    }

    api_workers.join().await;
    scheduler_stop.cancel();
    let _ = scheduler.await;
    admin.drain.cancel();
    admin.force.cancel();
    admin_tasks.close();
    admin_tasks.wait().await;
    tracing::info!("shutdown complete");
    Ok(())
}
