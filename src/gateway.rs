//! The wiring, at the top: builds the small handles each concern needs (the stream registry,
//! connection counts, one relay per worker thread, the admin API), starts the listeners and the
//! heartbeat scheduler, and drains on shutdown. Nothing but the command line imports it.
//! [`run`] is the seam that `main`, the demo and the tests all call with listeners they bound
//! themselves (tests bind `127.0.0.1:0`).

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin::AdminApi;
use crate::admission::Admission;
use crate::auth::Keys;
use crate::client_ip::ClientIp;
use crate::config::{Config, ConfigErrors};
use crate::connection::ConnectionCounts;
use crate::error::GatewayError;
use crate::heartbeat::Scheduler;
use crate::registry::{EndReason, Registry};
use crate::relay::Relay;
use crate::router::{AdminRoutes, ApiRoutes};
use crate::server::{self, ConnectionSettings, H2ResetLimits, Shutdown};
use crate::upstream::backends::Backends;
use crate::upstream::Upstream;

/// After the drain deadline, how long streams get to deliver their final `server_shutdown`
/// event before their connections are closed regardless.
pub const SHUTDOWN_EVENT_GRACE: Duration = Duration::from_secs(2);

/// Most concurrent HTTP/2 streams per client connection (what browsers expect, about 100,
/// with headroom); admission control caps streams per client separately.
pub const H2_MAX_CONCURRENT_STREAMS: u32 = 256;

/// The sockets the gateway serves on, bound by the caller.
pub struct Listeners {
    /// Client-facing API.
    pub api: TcpListener,
    /// Operator-facing health checks and admin API.
    pub admin: Option<TcpListener>,
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot build the upstream client: {0}")]
    Upstream(#[from] GatewayError),
    #[error("cannot start the worker threads: {0}")]
    Workers(#[from] std::io::Error),
    #[error("invalid keys file: {0}")]
    Keys(#[from] ConfigErrors),
}

/// How often the rate limiter forgets addresses that are back at a full burst: memory stays
/// bounded by the addresses seen in about this long, not since start.
pub const ADMISSION_PRUNE_EVERY: Duration = Duration::from_secs(30);

/// Prunes the admission state on a schedule until `stop`.
async fn prune_admission(admission: Arc<Admission>, stop: CancellationToken) {
    let mut every = tokio::time::interval(ADMISSION_PRUNE_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Bounded: ends with the gateway.
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = every.tick() => admission.prune(),
        }
    }
}

/// How both listeners serve connections, from the configuration.
fn connection_settings(config: &Config) -> ConnectionSettings {
    ConnectionSettings {
        header_read_timeout: config.limits.header_read_timeout,
        max_header_bytes: config.limits.max_header_bytes,
        max_buffered_bytes: config.streams.max_buffered_bytes,
        h2_max_concurrent_streams: H2_MAX_CONCURRENT_STREAMS,
        h2_reset_limits: H2ResetLimits::PUBLIC,
        h2_keepalive: true,
    }
}

/// Serves until `shutdown` is cancelled, then drains: `/readyz` fails, the API listener closes,
/// keep-alive connections take no new requests, and streams in flight may finish within
/// `shutdown.drain_timeout`. At the deadline every remaining stream ends with a final
/// `server_shutdown` error event; connections still open [`SHUTDOWN_EVENT_GRACE`] later are
/// closed. Returns once every connection is gone.
///
/// The API keys (`[auth]`) are read from `auth.keys_file` here; [`run_with_keys`] takes keys
/// read by the caller, who can then reload them.
pub async fn run(
    config: Config,
    listeners: Listeners,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    let keys = Keys::from_config(&config.auth)?;
    run_with_keys(config, listeners, shutdown, keys).await
}

/// [`run`], with the API keys the caller read from `config.auth` ([`Keys::from_config`]) and
/// reloads (the command line does on SIGHUP); `None` asks for no keys.
pub async fn run_with_keys(
    config: Config,
    listeners: Listeners,
    shutdown: CancellationToken,
    keys: Option<Arc<Keys>>,
) -> Result<(), RunError> {
    let backends = Arc::new(Backends::new(&config));
    let admission = Arc::new(Admission::new(&config.limits).with_keys(keys));
    let registry = Arc::new(Registry::new(&backends.names()));
    let api_connections = Arc::new(ConnectionCounts::default());
    // One upstream client per worker thread, each with its own connection pool: a worker's
    // streams only ever use connections driven by that worker.
    let workers = config.worker_count();
    let handlers = (0..workers)
        .map(|_| {
            let upstreams = config
                .upstream_list()
                .iter()
                .enumerate()
                .map(|(i, u)| {
                    let h2_connections = backends
                        .get(i)
                        .map(|b| b.h2_connections())
                        .unwrap_or_default();
                    Upstream::new(
                        u,
                        &config.limits,
                        config.streams.max_buffered_bytes,
                        h2_connections,
                    )
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok(ApiRoutes(Arc::new(Relay {
                registry: registry.clone(),
                admission: admission.clone(),
                client_ip: ClientIp::new(&config.client_ip.trusted_proxies),
                backends: backends.clone(),
                upstreams,
                limits: config.limits.clone(),
            })))
        })
        .collect::<Result<Vec<_>, GatewayError>>()?;
    let settings = connection_settings(&config);
    // The workers accept on copies of this socket, each in its own runtime.
    let api_listener = listeners.api.into_std()?;

    let scheduler_stop = CancellationToken::new();
    let scheduler =
        tokio::spawn(Scheduler::new(&config.streams).run(registry.clone(), scheduler_stop.clone()));
    tokio::spawn(prune_admission(admission.clone(), scheduler_stop.clone()));

    let api = Shutdown {
        drain: CancellationToken::new(),
        force: CancellationToken::new(),
    };
    let api_tasks = TaskTracker::new();
    let api_workers = match server::start_workers(
        api_listener,
        handlers,
        settings.clone(),
        api_connections.clone(),
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
        let routes = AdminRoutes(Arc::new(AdminApi {
            registry: registry.clone(),
            connections: api_connections,
            token: config.admin.token.clone(),
            backends: backends.clone(),
            admission: admission.clone(),
        }));
        admin_tasks.spawn(server::accept_loop(
            listener,
            routes,
            settings,
            Arc::new(ConnectionCounts::default()),
            admin.clone(),
            admin_tasks.clone(),
        ));
    }

    shutdown.cancelled().await;
    // From here `/readyz` answers 503: load balancers stop sending new work.
    registry.start_draining();
    let drain_timeout = config.shutdown.drain_timeout;
    tracing::info!(
        connections = api_tasks.len().saturating_sub(workers),
        streams = registry.len(),
        drain_timeout_ms = drain_timeout.as_millis() as u64,
        "shutting down: draining"
    );
    api.drain.cancel();
    api_tasks.close();
    if tokio::time::timeout(drain_timeout, api_tasks.wait())
        .await
        .is_err()
    {
        let ended = registry.end_all(EndReason::Shutdown);
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
