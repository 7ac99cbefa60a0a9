//! The wiring, at the top: builds the small handles each concern needs (the stream registry,
//! connection counts, one relay per worker thread, the admin API), starts the listeners and the
//! heartbeat scheduler, and drains on shutdown. Nothing but the command line imports it.
//! [`run`] is the seam that `main`, the demo and the tests all call with listeners they bound
//! themselves (tests bind `127.0.0.1:0`).

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin::AdminApi;
use crate::admission::Admission;
use crate::auth::Keys;
use crate::client_ip::ClientIp;
use crate::config::{Config, ConfigErrors, UpstreamProtocol};
use crate::connection::{ConnectionCaps, ConnectionCounts, RefusalAnswers};
use crate::cors::Cors;
use crate::error::GatewayError;
use crate::heartbeat::Scheduler;
use crate::metrics::{Metrics, MetricsError};
use crate::registry::{EndReason, Registry};
use crate::relay::resume::ResumeStore;
use crate::relay::Relay;
use crate::response;
use crate::router::{AdminRoutes, ApiRoutes};
use crate::server::{self, ConnectionSettings, H2ResetLimits, Shutdown};
use crate::sys;
use crate::tls::{self, ServerTls, TlsError};
use crate::upstream::backends::Backends;
use crate::upstream::Upstream;

/// After the drain deadline, how long streams get to deliver their final `server_shutdown`
/// event before their connections are closed regardless.
pub const SHUTDOWN_EVENT_GRACE: Duration = Duration::from_secs(2);

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
    #[error("{0}")]
    Metrics(#[from] MetricsError),
    #[error("TLS: {0}")]
    Tls(#[from] TlsError),
}

/// What a connection refused by the caps is told to wait: connections turn over quickly, and
/// the SDKs back off further on their own.
pub const CONNECTION_RETRY_AFTER: Duration = Duration::from_secs(1);

/// How often the rate limiter forgets addresses that are back at a full burst: memory stays
/// bounded by the addresses seen in about this long, not since start.
pub const ADMISSION_PRUNE_EVERY: Duration = Duration::from_secs(30);

/// Least time between two prunes when the rate limiter keeps filling up (a spray of addresses):
/// a prune walks every tracked address, so it must not run once per new one.
pub const ADMISSION_PRUNE_WHEN_FULL_GAP: Duration = Duration::from_secs(1);

/// Prunes the admission state on a schedule, and when the rate limiter is full (at most once
/// per [`ADMISSION_PRUNE_WHEN_FULL_GAP`]), until `stop`.
async fn prune_admission(admission: Arc<Admission>, stop: CancellationToken) {
    let mut every = tokio::time::interval(ADMISSION_PRUNE_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Bounded: ends with the gateway; each turn waits at least the gap.
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = every.tick() => {}
            _ = admission.rate_limiter_full() => {}
        }
        admission.prune();
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(ADMISSION_PRUNE_WHEN_FULL_GAP) => {}
        }
    }
}

/// Descriptors kept back from the open-files limit when `limits.max_connections` is derived
/// from it, besides what each worker needs ([`fd_reserve_per_worker`]): standard streams, the
/// main runtime, the admin listener and its connections, log, config and keys files, DNS
/// lookups. The gateway uses about 20 at rest with two workers; the rest is headroom.
pub const FD_RESERVE: u64 = 128;

/// Descriptors kept back per worker: its copy of the listening socket, its runtime's epoll and
/// event descriptors, and the refused connections it may keep lingering.
pub fn fd_reserve_per_worker() -> u64 {
    2 + server::MAX_LINGERING_REFUSALS as u64
}

/// The client connections the open-files limit `nofile` leaves room for: what remains after
/// [`FD_RESERVE`] and [`fd_reserve_per_worker`] per worker, shared with the upstream sockets those connections need,
/// `streams_per_upstream_socket` of them to a socket. An upstream spoken to over HTTP/1.1
/// (`http1`, and `auto`, which may end up there) takes a socket per stream (1), so each client
/// connection is given its upstream socket too and gets half; when every upstream speaks HTTP/2
/// only, `max_streams_per_connection` streams share one upstream connection and the client side
/// gets nearly everything. `None` when the limit is too small to leave room for any.
pub fn derived_max_connections(
    nofile: u64,
    workers: usize,
    streams_per_upstream_socket: u64,
) -> Option<u64> {
    let reserve = FD_RESERVE + fd_reserve_per_worker() * workers as u64;
    let available = nofile.checked_sub(reserve)?;
    let per_socket = streams_per_upstream_socket.max(1);
    // clients + ceil(clients / per_socket) <= available
    let clients = available.saturating_mul(per_socket) / (per_socket + 1);
    (clients > 0).then_some(clients)
}

/// `limits.max_connections` in effect: the configured value, or the derived one (logged).
fn effective_max_connections(config: &Config, workers: usize) -> u64 {
    // Streams per upstream socket: 1 if any upstream may speak HTTP/1.1, else the smallest
    // `max_streams_per_connection`.
    let streams_per_upstream_socket = config
        .upstream_list()
        .iter()
        .map(|u| {
            if u.effective_protocol() == UpstreamProtocol::Http2 {
                u64::from(u.max_streams_per_connection)
            } else {
                1
            }
        })
        .min()
        .unwrap_or(1);
    let nofile = sys::open_files_limit();
    let derived = nofile
        .as_ref()
        .ok()
        .map(|&n| derived_max_connections(n, workers, streams_per_upstream_socket));
    let configured = u64::from(config.limits.max_connections);
    if configured > 0 {
        tracing::info!(
            max_connections = configured,
            "client connection cap from limits.max_connections"
        );
        // More than the descriptors allow: past the room, clients wait in the backlog again.
        if let (Ok(nofile), Some(room)) = (&nofile, derived) {
            if configured > room.unwrap_or(0) {
                tracing::warn!(
                    max_connections = configured,
                    room = room.unwrap_or(0),
                    open_files_limit = nofile,
                    "limits.max_connections is more than the open-files limit leaves room for \
                     (with upstream sockets and the reserve): raise the limit or lower the cap"
                );
            }
        }
        return configured;
    }
    match (nofile, derived.flatten()) {
        (Err(e), _) => {
            tracing::warn!(error = %e, "cannot read the open-files limit: no client connection cap");
            0
        }
        (Ok(nofile), Some(max)) => {
            tracing::info!(
                max_connections = max,
                open_files_limit = nofile,
                reserve = FD_RESERVE + fd_reserve_per_worker() * workers as u64,
                streams_per_upstream_socket,
                "client connection cap derived from the open-files limit (limits.max_connections = 0)"
            );
            max
        }
        (Ok(nofile), None) => {
            tracing::warn!(
                open_files_limit = nofile,
                "the open-files limit leaves no room for a client connection cap; none is set"
            );
            0
        }
    }
}

/// How both listeners serve connections, from the configuration (no caps, no PROXY header:
/// the API listener adds its own).
fn connection_settings(config: &Config) -> ConnectionSettings {
    ConnectionSettings {
        header_read_timeout: config.limits.header_read_timeout,
        max_header_bytes: config.limits.max_header_bytes,
        max_buffered_bytes: config.streams.max_buffered_bytes,
        h2_max_concurrent_streams: config.http2.max_concurrent_streams,
        h2_reset_limits: H2ResetLimits {
            pending_accept: config.http2.max_pending_accept_reset_streams as usize,
            local_error: Some(config.http2.max_local_error_reset_streams as usize),
        },
        h2_keepalive: (!config.http2.keepalive_interval.is_zero()).then_some((
            config.http2.keepalive_interval,
            config.http2.keepalive_timeout,
        )),
        caps: None,
        proxy_header_timeout: None,
        tls: None,
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
    let tls = ServerTls::from_config(&config.tls)?.map(|(tls, validity)| {
        if let Some(file) = &config.tls.cert_file {
            tls::log_validity(file, validity, "TLS certificate loaded");
        }
        tls
    });
    run_with_keys_and_tls(config, listeners, shutdown, keys, tls).await
}

/// How many streams are live, read from outside the gateway (the command line's drain notice
/// says how many it waits for). Counts 0 until [`run_counting_streams`] has started.
#[derive(Clone, Default)]
pub struct LiveStreams(Arc<OnceLock<Arc<Registry>>>);

impl LiveStreams {
    pub fn count(&self) -> usize {
        self.0.get().map_or(0, |registry| registry.len())
    }
}

/// [`run_with_keys`], with the TLS of `[tls]` loaded by the caller ([`ServerTls::from_config`];
/// `None`: cleartext), who can then reload it (the command line does on SIGHUP). The gateway
/// reloads it by itself when the files change ([`tls::CERT_POLL_INTERVAL`]).
pub async fn run_with_keys_and_tls(
    config: Config,
    listeners: Listeners,
    shutdown: CancellationToken,
    keys: Option<Arc<Keys>>,
    tls: Option<Arc<ServerTls>>,
) -> Result<(), RunError> {
    run_counting_streams(
        config,
        listeners,
        shutdown,
        keys,
        tls,
        LiveStreams::default(),
    )
    .await
}

/// [`run_with_keys_and_tls`], with `live_streams` counting this gateway's streams.
pub async fn run_counting_streams(
    config: Config,
    listeners: Listeners,
    shutdown: CancellationToken,
    keys: Option<Arc<Keys>>,
    tls: Option<Arc<ServerTls>>,
    live_streams: LiveStreams,
) -> Result<(), RunError> {
    let metrics = Metrics::new(&config.metrics)?;
    let metrics = match tls {
        Some(_) => metrics.with_tls()?,
        None => metrics,
    };
    let metrics = Arc::new(match config.resume.enabled {
        true => metrics.with_resume()?,
        false => metrics,
    });
    let backends = Arc::new(Backends::new(&config));
    let cors = Cors::from_config(&config.cors).map(Arc::new);
    let admission = Arc::new(Admission::new(&config.limits).with_keys(keys));
    let registry = Arc::new(Registry::with_instance(
        &backends.names(),
        config.resume.instance_id.as_deref(),
    ));
    // A LiveStreams serves one gateway: a second run keeps counting the first's registry.
    let _ = live_streams.0.set(registry.clone());
    let resume = config
        .resume
        .enabled
        .then(|| Arc::new(ResumeStore::new(&config.resume, registry.clone())));
    let api_connections = Arc::new(ConnectionCounts::default());
    let client_ip = ClientIp::with_header(
        &config.client_ip.trusted_proxies,
        config.client_ip.forwarded_header,
    );
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
                    let connections = backends
                        .get(i)
                        .map(|b| b.connections().clone())
                        .unwrap_or_default();
                    Upstream::new(
                        u,
                        &config.limits,
                        config.streams.max_buffered_bytes,
                        &connections,
                    )
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok(ApiRoutes(
                Arc::new(Relay {
                    registry: registry.clone(),
                    admission: admission.clone(),
                    client_ip: client_ip.clone(),
                    backends: backends.clone(),
                    upstreams,
                    limits: config.limits.clone(),
                    metrics: metrics.clone(),
                    resume: resume.clone(),
                }),
                cors.clone(),
                config.demo.page,
            ))
        })
        .collect::<Result<Vec<_>, GatewayError>>()?;
    let settings = connection_settings(&config);
    let caps = Arc::new(ConnectionCaps::new(
        effective_max_connections(&config, workers),
        config.limits.per_ip.max_connections,
        config.limits.per_ip.ipv6_prefix,
        client_ip,
        admission.shared_refusals(),
        RefusalAnswers {
            global: response::http1_bytes(&GatewayError::ConnectionsExhausted {
                retry_after: CONNECTION_RETRY_AFTER,
            }),
            per_address: response::http1_bytes(&GatewayError::TooManyConnections {
                limit: config.limits.per_ip.max_connections,
                retry_after: CONNECTION_RETRY_AFTER,
            }),
        },
    ));
    let api_settings = ConnectionSettings {
        caps: Some(caps.clone()),
        proxy_header_timeout: config
            .client_ip
            .proxy_protocol
            .then_some(config.client_ip.proxy_header_timeout),
        tls: tls.clone(),
        ..settings.clone()
    };
    // The workers accept on copies of this socket, each in its own runtime.
    let api_listener = listeners.api.into_std()?;

    let scheduler_stop = CancellationToken::new();
    let scheduler =
        tokio::spawn(Scheduler::new(&config.streams).run(registry.clone(), scheduler_stop.clone()));
    tokio::spawn(prune_admission(admission.clone(), scheduler_stop.clone()));
    if let Some(resume) = &resume {
        tokio::spawn(resume.clone().run_sweeper(scheduler_stop.clone()));
    }
    if let Some(tls) = &tls {
        tokio::spawn(
            tls.clone()
                .watch(tls::CERT_POLL_INTERVAL, scheduler_stop.clone()),
        );
    }

    let api = Shutdown {
        drain: CancellationToken::new(),
        force: CancellationToken::new(),
    };
    let api_tasks = TaskTracker::new();
    let api_workers = match server::start_workers(
        api_listener,
        handlers,
        api_settings,
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
            connection_caps: caps,
            metrics,
            max_streams: u64::from(config.limits.max_streams),
            tls: tls.clone(),
            resume: resume.clone(),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_derived_connection_cap_leaves_room_for_upstream_sockets_and_the_reserve() {
        // This machine's 20,000 with two workers: 128 + 2 × 258 kept back, and HTTP/1.1
        // upstreams take half of the rest.
        assert_eq!(derived_max_connections(20_000, 2, 1), Some(9_678));
        // HTTP/2 upstreams, 100 streams a connection: 1 % for them.
        assert_eq!(derived_max_connections(20_000, 2, 100), Some(19_164));
        // The usual soft limit, and ones too small for anything.
        assert_eq!(derived_max_connections(1024, 2, 1), Some(190));
        assert_eq!(derived_max_connections(48, 1, 1), None);
        assert_eq!(derived_max_connections(387, 1, 1), None);
    }
}
