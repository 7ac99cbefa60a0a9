//! Request mode (`--requests PATH`): short requests back to back instead of streams, for what a
//! request costs the gateway rather than what a stream does: `--connections` keep-alive
//! HTTP/1.1 connections each send a request, read the whole answer and send the next, until
//! `--duration` has passed. `GET PATH`, or for a `/v1/` path a small non-streaming `POST`
//! (JSON, `--model`): a Responses request (`input`) for `/v1/responses`, else a chat completion. Reported: requests per second by status, connections
//! opened, and the CPU seconds per request and RSS of each `--pid` and of the driver.
//!
//! With `--new-address-per-request` every request has a connection of its own, bound to the
//! next source address of 127.10.0.1, 127.10.0.2, … (all of 127.0.0.0/8 is routed to `lo` on
//! Linux): a client spraying addresses, as the per-address rate limiter sees it.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HOST};
use http::{HeaderValue, Method, Request};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use tokio::net::TcpSocket;
use tokio::task::JoinSet;

use super::client::http1_over;
use super::procfs::{self, ProcSample};
use super::tls::TlsClient;

/// The first source address of `--new-address-per-request`; the rest follow it.
const FIRST_SPRAY_SOURCE: Ipv4Addr = Ipv4Addr::new(127, 10, 0, 1);
/// Most source addresses `--new-address-per-request` uses: 127.10.0.1 up to 127.255.255.254.
pub const MAX_SPRAY_SOURCES: u32 = 0x7fff_fffe - 0x7f0a_0001;
/// How long a request may take before it counts as an error and its connection is dropped.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// What to send, built once.
#[derive(Debug, Clone)]
pub struct RequestPlan {
    pub target: SocketAddr,
    /// For an `https://` target (`--ca-file`): TLS with ALPN `http/1.1`.
    pub tls: Option<Arc<TlsClient>>,
    pub path: String,
    pub method: Method,
    pub body: Bytes,
    pub connections: u32,
    pub duration: Duration,
    pub new_address_per_request: bool,
}

impl RequestPlan {
    pub fn new(
        target: SocketAddr,
        tls: Option<Arc<TlsClient>>,
        path: &str,
        model: &str,
        connections: u32,
        duration: Duration,
        new_address_per_request: bool,
    ) -> Result<RequestPlan, String> {
        if !path.starts_with('/') {
            return Err(format!("--requests {path:?}: give a path such as /healthz"));
        }
        let (method, body) = if path.starts_with("/v1/") {
            // The body follows the path, not --api: a Responses body to any other path (or a
            // chat one to /v1/responses) would only measure a 400.
            let body = if path == "/v1/responses" {
                serde_json::json!({"model": model, "input": "Hello"})
            } else {
                serde_json::json!({
                    "model": model,
                    "messages": [{"role": "user", "content": "Hello"}],
                })
            };
            let body = serde_json::to_vec(&body).map_err(|e| format!("request body: {e}"))?;
            (Method::POST, Bytes::from(body))
        } else {
            (Method::GET, Bytes::new())
        };
        Ok(RequestPlan {
            target,
            tls,
            path: path.to_owned(),
            method,
            body,
            connections,
            duration,
            new_address_per_request,
        })
    }

    fn request(&self) -> Result<Request<Full<Bytes>>, String> {
        let mut builder = Request::builder()
            .method(self.method.clone())
            .uri(&self.path)
            .header(
                HOST,
                HeaderValue::from_str(&self.target.to_string()).map_err(|e| e.to_string())?,
            );
        if self.method == Method::POST {
            builder = builder.header(CONTENT_TYPE, "application/json");
        }
        builder
            .body(Full::new(self.body.clone()))
            .map_err(|e| format!("cannot build the request: {e}"))
    }
}

/// One connection's (or all connections') counts.
#[derive(Debug, Default)]
pub struct Counts {
    pub by_status: BTreeMap<u16, u64>,
    pub errors: u64,
    pub connections: u64,
    pub first_error: Option<String>,
}

impl Counts {
    fn add(&mut self, other: Counts) {
        for (status, n) in other.by_status {
            *self.by_status.entry(status).or_default() += n;
        }
        self.errors += other.errors;
        self.connections += other.connections;
        self.first_error = self.first_error.take().or(other.first_error);
    }

    fn error(&mut self, message: String) {
        self.errors += 1;
        self.first_error.get_or_insert(message);
    }

    pub fn requests(&self) -> u64 {
        self.by_status.values().sum()
    }
}

/// An open HTTP/1.1 connection; its driving task ends when this is dropped.
struct Connection {
    sender: http1::SendRequest<Full<Bytes>>,
    task: tokio::task::AbortHandle,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn open(plan: &RequestPlan, source: Option<IpAddr>) -> Result<Connection, String> {
    let target = plan.target;
    let socket = TcpSocket::new_v4().map_err(|e| format!("socket: {e}"))?;
    if let Some(ip) = source {
        socket
            .bind(SocketAddr::new(ip, 0))
            .map_err(|e| format!("bind {ip}: {e}"))?;
    }
    let stream = socket
        .connect(target)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    let connection = match &plan.tls {
        None => http1_over(stream).await,
        Some(tls) => http1_over(tls.handshake(stream).await?).await,
    };
    let (sender, task) = connection.map_err(|e| format!("HTTP/1.1 handshake: {e}"))?;
    Ok(Connection { sender, task })
}

/// One request on `connection`, its answer read whole; the status.
async fn exchange(connection: &mut Connection, plan: &RequestPlan) -> Result<u16, String> {
    let request = plan.request()?;
    connection
        .sender
        .ready()
        .await
        .map_err(|e| format!("connection: {e}"))?;
    let answer = async {
        let response = connection
            .sender
            .send_request(request)
            .await
            .map_err(|e| format!("request: {e}"))?;
        let status = response.status().as_u16();
        response
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("body: {e}"))?;
        Ok(status)
    };
    tokio::time::timeout(REQUEST_TIMEOUT, answer)
        .await
        .map_err(|_| format!("no answer within {REQUEST_TIMEOUT:?}"))?
}

/// One client: requests back to back until `until`. Bounded: by the deadline.
async fn client(plan: Arc<RequestPlan>, until: Instant, sources: Arc<AtomicU32>) -> Counts {
    let mut counts = Counts::default();
    let mut connection: Option<Connection> = None;
    while Instant::now() < until {
        let mut open_now = match connection.take() {
            Some(c) if !c.sender.is_closed() => c,
            _ => {
                let source = if plan.new_address_per_request {
                    let n = sources.fetch_add(1, Ordering::Relaxed);
                    if n >= MAX_SPRAY_SOURCES {
                        counts.error("out of source addresses".into());
                        break;
                    }
                    Some(IpAddr::V4(Ipv4Addr::from(
                        u32::from(FIRST_SPRAY_SOURCE) + n,
                    )))
                } else {
                    None
                };
                counts.connections += 1;
                match open(&plan, source).await {
                    Ok(c) => c,
                    Err(e) => {
                        counts.error(e);
                        continue;
                    }
                }
            }
        };
        match exchange(&mut open_now, &plan).await {
            Ok(status) => {
                *counts.by_status.entry(status).or_default() += 1;
                if !plan.new_address_per_request {
                    connection = Some(open_now);
                }
            }
            Err(e) => counts.error(e),
        }
    }
    counts
}

/// A watched process's samples at the start and the end of the run, or why there are none.
pub type StartAndEnd = Result<(ProcSample, ProcSample), String>;

/// What the run measured.
pub struct RequestReport {
    pub plan: RequestPlan,
    pub elapsed: Duration,
    pub counts: Counts,
    /// Each watched process: name, sample at the start and at the end.
    pub processes: Vec<(String, StartAndEnd)>,
}

/// Runs the plan; `pids` are sampled at the start and the end.
pub async fn run(plan: RequestPlan, pids: &[(String, u32)]) -> RequestReport {
    let ticks = procfs::clock_ticks();
    let watched: Vec<(String, u32)> = pids
        .iter()
        .cloned()
        .chain([("bench".to_owned(), std::process::id())])
        .collect();
    let before: Vec<_> = watched
        .iter()
        .map(|(_, pid)| procfs::sample(*pid, ticks))
        .collect();
    let plan = Arc::new(plan);
    let started = Instant::now();
    let until = started + plan.duration;
    let sources = Arc::new(AtomicU32::new(0));
    let mut clients = JoinSet::new();
    for _ in 0..plan.connections {
        clients.spawn(client(plan.clone(), until, sources.clone()));
    }
    let mut counts = Counts::default();
    while let Some(done) = clients.join_next().await {
        match done {
            Ok(c) => counts.add(c),
            Err(e) => counts.error(format!("client task: {e}")),
        }
    }
    let elapsed = started.elapsed();
    let processes = watched
        .into_iter()
        .zip(before)
        .map(|((name, pid), before)| {
            let both = before.and_then(|b| procfs::sample(pid, ticks).map(|a| (b, a)));
            (name, both)
        })
        .collect();
    RequestReport {
        plan: Arc::unwrap_or_clone(plan),
        elapsed,
        counts,
        processes,
    }
}

impl RequestReport {
    pub fn requests_per_second(&self) -> f64 {
        self.counts.requests() as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    pub fn table(&self) -> String {
        let p = &self.plan;
        let c = &self.counts;
        let mut out = String::new();
        let statuses: Vec<String> = c
            .by_status
            .iter()
            .map(|(status, n)| format!("{status}={n}"))
            .collect();
        let _ = writeln!(
            out,
            "{} {} on {} {} for {:.2}s: {} requests, {:.0} requests/s; by status: {}; errors {}; \
             connections opened {}",
            p.method,
            p.path,
            p.connections,
            if p.new_address_per_request {
                "clients (a new connection and source address per request)"
            } else {
                "keep-alive connections"
            },
            self.elapsed.as_secs_f64(),
            c.requests(),
            self.requests_per_second(),
            if statuses.is_empty() {
                "none".to_owned()
            } else {
                statuses.join(" ")
            },
            c.errors,
            c.connections,
        );
        if let Some(e) = &c.first_error {
            let _ = writeln!(out, "first error: {e}");
        }
        let _ = writeln!(
            out,
            "{:<10} {:>8} {:>8} {:>16} {:>12} {:>12}",
            "process", "cpu s", "cpu %", "cpu us/request", "rss start", "rss end"
        );
        for (name, sampled) in &self.processes {
            match sampled {
                Ok((before, after)) => {
                    let cpu = after.cpu_seconds - before.cpu_seconds;
                    let _ = writeln!(
                        out,
                        "{:<10} {:>8.2} {:>8.1} {:>16.2} {:>8} KiB {:>8} KiB",
                        name,
                        cpu,
                        100.0 * cpu / self.elapsed.as_secs_f64().max(1e-9),
                        1e6 * cpu / (c.requests().max(1) as f64),
                        before.rss_kib,
                        after.rss_kib,
                    );
                }
                Err(e) => {
                    let _ = writeln!(out, "{name:<10} {e}");
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(path: &str) -> RequestPlan {
        let target = SocketAddr::from((Ipv4Addr::LOCALHOST, 8080));
        RequestPlan::new(target, None, path, "m", 1, Duration::from_secs(1), false).unwrap()
    }

    #[test]
    fn the_body_follows_the_path() {
        let p = plan("/healthz");
        assert_eq!((p.method.clone(), p.body.len()), (Method::GET, 0));
        let body = |p: &RequestPlan| serde_json::from_slice::<serde_json::Value>(&p.body).unwrap();
        let p = plan("/v1/chat/completions");
        assert_eq!(p.method, Method::POST);
        assert_eq!(body(&p)["messages"][0]["content"], "Hello");
        assert!(body(&p).get("stream").is_none());
        let p = plan("/v1/responses");
        assert_eq!(p.method, Method::POST);
        assert_eq!(
            body(&p),
            serde_json::json!({"model": "m", "input": "Hello"})
        );
        assert_eq!(
            p.request().unwrap().headers()["content-type"],
            "application/json"
        );
        let target = SocketAddr::from((Ipv4Addr::LOCALHOST, 8080));
        assert!(RequestPlan::new(target, None, "healthz", "m", 1, Duration::ZERO, false).is_err());
    }
}
