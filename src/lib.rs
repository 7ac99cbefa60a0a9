//! tidegate: a gateway between many clients and OpenAI-compatible LLM backends that relays
//! streaming chat completions as Server-Sent Events.
//!
//! Data flow: [`server`] accepts connections (HTTP/1.1, HTTP/2), [`router`] maps each request to
//! a handler, [`admission`] decides whether it may cost anything (rates, stream slots, [`auth`]'s API keys), [`relay`] forwards it to an upstream chosen by [`upstream`] (routes, pools,
//! breakers; retrying before the first byte) and relays the answer, [`sse`] finds event
//! boundaries in the upstream bytes, and [`error`] turns every failure into an OpenAI-shaped
//! error ([`response`] builds the JSON responses). [`registry`] knows every live stream,
//! [`connection`] counts connections, [`heartbeat`] keeps idle streams alive and finds slow
//! clients with one task, and [`admin`] lets operators list and end streams. [`gateway`] wires
//! them together; [`gateway::run`] is the seam that the binary, the demo and the tests call.
//! [`resilience`] is the pure policy (balancing, breakers, retry budget, backoff) for relaying to
//! several upstreams.
//! Dependencies point down only (README, "Architecture").

pub mod admin;
pub mod admission;
pub mod auth;
pub mod cli;
pub mod client_ip;
pub mod config;
pub mod connection;
pub mod cors;
pub mod demo_page;
pub mod error;
pub mod gateway;
pub mod heartbeat;
pub mod logging;
pub mod metrics;
pub mod mock;
pub mod proxy_protocol;
pub mod refusal;
pub mod registry;
pub mod relay;
pub mod request_id;
pub mod resilience;
pub mod response;
pub mod router;
pub mod server;
pub mod signals;
pub mod sse;
pub mod sys;
pub mod tls;
pub mod upstream;

pub use gateway::{run, Listeners};
