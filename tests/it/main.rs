//! The integration tests, one test binary with a module per area, so `cargo test` builds and
//! links the gateway's tests once. Each test starts the real gateway and the built-in mock on
//! `127.0.0.1:0` and talks to them over real sockets (`common`). Only `tests/workers.rs` has a
//! binary of its own: it counts the threads of its process.

mod common;

mod admin;
mod admission;
mod auth;
mod backpressure;
mod browser;
mod cancellation;
mod cli;
mod connection_caps;
mod cors;
mod dashboard;
mod deploy;
mod drain;
mod errors;
mod fd_limit;
mod fleet;
mod heartbeat;
mod http2;
mod k6;
mod metrics;
mod openai_sdk;
mod prometheus;
mod registry;
mod relay;
mod responses;
mod resume;
mod routing;
mod shutdown;
mod tls;
mod tls_streams;
mod upstream_h2;
mod upstream_pool;
mod upstream_tls;
