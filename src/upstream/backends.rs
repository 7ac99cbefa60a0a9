//! What every worker shares about the configured upstreams: their names and weights, the streams
//! each has in flight, one circuit breaker each, the routes from model names to upstreams, and
//! the retry budget. The HTTP clients are per worker ([`super::Upstream`], same order).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use serde::Serialize;

use super::OpenConnections;
use crate::config::{route_index, Config, RouteConfig};
use crate::resilience::backoff::BackoffSettings;
use crate::resilience::balance::{self, Candidate};
use crate::resilience::breaker::{Breaker, BreakerSettings, BreakerSnapshot};
use crate::resilience::budget::{BudgetSettings, RetryBudget};

/// One upstream as every worker sees it.
pub struct Backend {
    pub name: Arc<str>,
    weight: u32,
    /// `max_streams`; 0 = unlimited.
    max_streams: u64,
    in_flight: Arc<AtomicU64>,
    pub breaker: Breaker,
    /// Requests sent to it (attempts, retries included).
    attempts_total: AtomicU64,
    /// Its open connections, over every worker's HTTP/2 pool and HTTP/1.1 client.
    connections: OpenConnections,
}

impl Backend {
    /// The counters each worker's clients for this upstream keep up to date.
    pub fn connections(&self) -> &OpenConnections {
        &self.connections
    }
}

/// A request's place in its upstream's in-flight count; dropping it gives the place back.
pub struct InFlight {
    counter: Arc<AtomicU64>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.counter.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One upstream a route sends to, and the model name it sends.
#[derive(Debug, Clone)]
pub struct Member {
    pub index: usize,
    /// The model name to send instead of the client's (`routes.rename`).
    pub rename: Option<Arc<str>>,
}

/// Retry rules from `[retry]`.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub backoff: BackoffSettings,
}

/// The configured upstreams, their routes and the retry budget.
pub struct Backends {
    backends: Vec<Backend>,
    /// `[[routes]]` as configured, and the upstreams of each (same order).
    route_configs: Vec<RouteConfig>,
    route_members: Vec<Vec<Member>>,
    /// Every upstream, each sending the client's model name: with no `[[routes]]`, the
    /// members for every model.
    everyone: Vec<Member>,
    pub budget: RetryBudget,
    pub retry: RetryPolicy,
    /// `breaker.open_for`: when no upstream is left, how long a client should wait.
    open_for: std::time::Duration,
}

impl Backends {
    /// From a validated config (route names are known to exist).
    pub fn new(config: &Config) -> Backends {
        let b = &config.breaker;
        let breaker = BreakerSettings {
            consecutive_failures: b.consecutive_failures,
            failure_percent: b.failure_percent,
            min_requests: b.min_requests,
            window: b.window,
            open_for: b.open_for,
        };
        let upstreams = config.upstream_list();
        let backends: Vec<Backend> = upstreams
            .iter()
            .map(|u| Backend {
                name: Arc::from(u.name.as_str()),
                weight: u.weight.max(1),
                max_streams: u64::from(u.max_streams),
                in_flight: Arc::new(AtomicU64::new(0)),
                breaker: Breaker::new(u.name.as_str(), breaker),
                attempts_total: AtomicU64::new(0),
                connections: OpenConnections::default(),
            })
            .collect();
        let index_of = |name: &str| backends.iter().position(|b| &*b.name == name);
        let route_members = config
            .routes
            .iter()
            .map(|route| {
                route
                    .upstreams
                    .iter()
                    .filter_map(|name| {
                        Some(Member {
                            index: index_of(name)?,
                            rename: route.rename.get(name).map(|m| Arc::from(m.as_str())),
                        })
                    })
                    .collect()
            })
            .collect();
        let everyone = (0..backends.len())
            .map(|index| Member {
                index,
                rename: None,
            })
            .collect();
        let r = &config.retry;
        Backends {
            backends,
            route_configs: config.routes.clone(),
            route_members,
            everyone,
            budget: RetryBudget::new(BudgetSettings {
                percent: r.budget_percent,
                min_retries: r.budget_min_retries,
                window: r.budget_window,
            }),
            open_for: b.open_for,
            retry: RetryPolicy {
                max_attempts: r.max_attempts.max(1),
                backoff: BackoffSettings {
                    initial: r.initial_backoff,
                    max: r.max_backoff,
                    max_retry_after: r.max_retry_after,
                },
            },
        }
    }

    /// The `retry-after` for a client when every upstream of its route is unavailable: an
    /// open breaker probes again after `breaker.open_for`.
    pub fn retry_hint(&self) -> std::time::Duration {
        self.open_for
    }

    pub fn get(&self, index: usize) -> Option<&Backend> {
        self.backends.get(index)
    }

    pub fn names(&self) -> Vec<&str> {
        self.backends.iter().map(|b| &*b.name).collect()
    }

    /// The index of the upstream called `name`.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.backends.iter().position(|b| &*b.name == name)
    }

    /// Every upstream, each sending the client's model name: for requests that name no model
    /// (a stored response's), whatever the routes.
    pub fn all(&self) -> &[Member] {
        &self.everyone
    }

    /// Whether `[[routes]]` decide which upstreams serve a model.
    pub fn has_routes(&self) -> bool {
        !self.route_configs.is_empty()
    }

    /// The upstreams that serve `model`: the first route that matches it, or every upstream
    /// when there are no routes. None: no route serves it (`model_not_found`).
    pub fn members(&self, model: Option<&str>) -> Option<&[Member]> {
        if self.route_configs.is_empty() {
            return Some(&self.everyone);
        }
        let index = route_index(&self.route_configs, model?)?;
        self.route_members.get(index).map(|m| &m[..])
    }

    /// Picks the upstream for the next attempt among `members`: healthy ones (breaker not
    /// open, below `max_streams`), not yet `tried` when there is such a one, by weighted
    /// least-outstanding with two random choices.
    pub fn pick(&self, members: &[Member], tried: &[usize], now: Instant) -> Option<usize> {
        let usable = |m: &&Member| {
            self.backends.get(m.index).is_some_and(|b| {
                (b.max_streams == 0 || b.in_flight.load(Ordering::Acquire) < b.max_streams)
                    && b.breaker.is_available(now)
            })
        };
        let candidates = |fresh_only: bool| -> Vec<Candidate> {
            members
                .iter()
                .filter(usable)
                .filter(|m| !fresh_only || !tried.contains(&m.index))
                .filter_map(|m| {
                    let b = self.backends.get(m.index)?;
                    Some(Candidate {
                        index: m.index,
                        weight: b.weight,
                        outstanding: b.in_flight.load(Ordering::Acquire),
                    })
                })
                .collect()
        };
        let mut fresh = candidates(true);
        if fresh.is_empty() {
            fresh = candidates(false);
        }
        balance::pick(&fresh, &mut fastrand::Rng::new())
    }

    /// Counts one request against upstream `index`, unless it is at its `max_streams`.
    pub fn admit(&self, index: usize) -> Option<InFlight> {
        let backend = self.backends.get(index)?;
        let before = backend.in_flight.fetch_add(1, Ordering::AcqRel);
        backend.attempts_total.fetch_add(1, Ordering::Relaxed);
        let in_flight = InFlight {
            counter: backend.in_flight.clone(),
        };
        if backend.max_streams != 0 && before >= backend.max_streams {
            return None; // `in_flight` drops here and gives the place back.
        }
        Some(in_flight)
    }

    /// `GET /v1/models` from the routes: every exact model name they list (patterns cannot be
    /// listed), in file order, once, those `allowed` (an API key's allowlist) only. None when
    /// there are no routes (the upstream answers).
    pub fn models_json(&self, allowed: impl Fn(&str) -> bool) -> Option<Bytes> {
        #[derive(Serialize)]
        struct Model<'a> {
            id: &'a str,
            object: &'static str,
            created: u64,
            owned_by: &'a str,
        }
        #[derive(Serialize)]
        struct List<'a> {
            object: &'static str,
            data: Vec<Model<'a>>,
        }
        if self.route_configs.is_empty() {
            return None;
        }
        let mut data: Vec<Model> = Vec::new();
        for (route, members) in self.route_configs.iter().zip(&self.route_members) {
            let owner = members
                .first()
                .and_then(|m| self.backends.get(m.index))
                .map_or("tidegate", |b| &*b.name);
            for id in route
                .models
                .iter()
                .filter(|m| !m.contains('*') && allowed(m))
            {
                if !data.iter().any(|d| d.id == id) {
                    data.push(Model {
                        id,
                        object: "model",
                        created: 0,
                        owned_by: owner,
                    });
                }
            }
        }
        serde_json::to_vec(&List {
            object: "list",
            data,
        })
        .ok()
        .map(Bytes::from)
    }

    /// The admin API's view of every upstream.
    pub fn snapshot(&self, now: Instant) -> Vec<BackendView<'_>> {
        self.backends
            .iter()
            .map(|b| BackendView {
                name: &b.name,
                weight: b.weight,
                max_streams: b.max_streams,
                in_flight: b.in_flight.load(Ordering::Relaxed),
                attempts_total: b.attempts_total.load(Ordering::Relaxed),
                h2_connections: b.connections.http2.load(Ordering::Relaxed),
                http1_connections: b.connections.http1.load(Ordering::Relaxed),
                breaker: b.breaker.snapshot(now),
            })
            .collect()
    }
}

/// One upstream in the admin API.
#[derive(Serialize)]
pub struct BackendView<'a> {
    pub name: &'a str,
    pub weight: u32,
    pub max_streams: u64,
    /// Requests in flight now (streams until their last byte).
    pub in_flight: u64,
    /// Requests sent so far, retries included.
    pub attempts_total: u64,
    /// Open HTTP/2 connections.
    pub h2_connections: u64,
    /// Open HTTP/1.1 connections (in use or idle in the pool).
    pub http1_connections: u64,
    pub breaker: BreakerSnapshot,
}
