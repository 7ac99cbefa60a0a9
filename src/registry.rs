//! Every live stream: visible, countable and endable.
//!
//! A stream is inserted when its request is accepted (before the upstream is asked) and removed
//! by its [`StreamEntry`] guard when the stream's response body is dropped, whatever the reason,
//! so no path can leak an entry. The registry keeps a small [`StreamHandle`] per stream:
//! identity fixed at the start, counters that the stream's own body writes (atomics, no locks on
//! the hot path), and a way to wake the body with a request: "send a heartbeat" or "end now".
//! The heartbeat scheduler, the admin API and the drain only read and signal; the body itself
//! writes every byte, so a heartbeat or a final error event always lands between two events.
//!
//! Stream ids carry the instance they belong to (`resume.instance_id`) so that a fleet can route
//! a resume to the right instance. A resumable stream's replay buffer is not here but in
//! `relay::resume`: the registry lists live streams, and a stream resumed on a new connection
//! only moves its handle to that connection ([`StreamHandle::move_to_connection`]).

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Context;
use std::time::{SystemTime, UNIX_EPOCH};

use dashmap::DashMap;
use futures_util::task::AtomicWaker;
use serde::Serialize;
use tokio::time::Instant;

use crate::connection::{ConnectionInfo, Protocol};
use crate::error::GatewayError;

/// Longest model name kept in the registry; a longer one is cut at a character boundary so an
/// entry's size stays bounded whatever the client sends.
pub const MAX_MODEL_CHARS: usize = 128;

/// Prefix of every stream id.
const STREAM_ID_PREFIX: &str = "st_";

/// "Never" for the millisecond timestamps kept in atomics.
const NEVER: u64 = u64::MAX;

/// A stream's upstream index before one is chosen.
const NO_UPSTREAM: u16 = u16::MAX;

/// Where a stream is in its life. Only moves forward (`Draining` is last), so concurrent
/// updates from the body and the drain cannot move it back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum StreamState {
    /// The upstream has not sent its response headers yet.
    WaitingForUpstream = 0,
    /// Headers are in; no event yet (a reasoning model may think for minutes here).
    WaitingForFirstToken = 1,
    /// At least one event has been relayed.
    Streaming = 2,
    /// The gateway is shutting down; the stream may finish until the drain deadline.
    Draining = 3,
}

impl StreamState {
    pub const ALL: [StreamState; 4] = [
        StreamState::WaitingForUpstream,
        StreamState::WaitingForFirstToken,
        StreamState::Streaming,
        StreamState::Draining,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            StreamState::WaitingForUpstream => "waiting_for_upstream",
            StreamState::WaitingForFirstToken => "waiting_for_first_token",
            StreamState::Streaming => "streaming",
            StreamState::Draining => "draining",
        }
    }

    pub fn parse(text: &str) -> Option<StreamState> {
        StreamState::ALL.into_iter().find(|s| s.as_str() == text)
    }

    /// Every state's name, comma-separated, for messages that list them.
    pub fn names() -> String {
        StreamState::ALL.map(StreamState::as_str).join(", ")
    }

    fn from_u8(v: u8) -> StreamState {
        match v {
            0 => StreamState::WaitingForUpstream,
            1 => StreamState::WaitingForFirstToken,
            2 => StreamState::Streaming,
            _ => StreamState::Draining,
        }
    }
}

/// Serialized by [`StreamState::as_str`], so the admin API's JSON and its `state` filter use
/// the same names.
impl Serialize for StreamState {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// Why the gateway ended a stream that was otherwise fine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum EndReason {
    /// An operator ended it through the admin API.
    Admin = 1,
    /// The drain deadline passed during shutdown.
    Shutdown = 2,
    /// The client took none of the pending data for `client_stall_timeout`.
    SlowClient = 3,
}

impl EndReason {
    /// The outcome recorded for the stream: its final error event's code.
    pub fn code(self) -> &'static str {
        GatewayError::from(self).code()
    }

    fn from_u8(v: u8) -> Option<EndReason> {
        match v {
            1 => Some(EndReason::Admin),
            2 => Some(EndReason::Shutdown),
            3 => Some(EndReason::SlowClient),
            _ => None,
        }
    }
}

impl From<EndReason> for GatewayError {
    /// The final error of a stream the gateway ends itself. (A slow client's event is rarely
    /// read: its connection is closed; the code still names the outcome.)
    fn from(reason: EndReason) -> GatewayError {
        match reason {
            EndReason::Admin => GatewayError::TerminatedByAdmin,
            EndReason::Shutdown => GatewayError::NotReady,
            EndReason::SlowClient => GatewayError::SlowClient,
        }
    }
}

/// What a stream is, as known when its request is accepted.
#[derive(Debug)]
pub struct NewStream<'a> {
    pub client_ip: IpAddr,
    /// The name of the request's API key (`[auth] mode = "keys"`), never the key.
    pub api_key: Option<Arc<str>>,
    pub model: &'a str,
    pub request_id: &'a str,
    pub connection: Option<ConnectionInfo>,
}

/// The live streams of one gateway.
pub struct Registry {
    streams: DashMap<u64, Arc<StreamHandle>>,
    /// Random per process: stream ids are unique across a fleet and say which instance owns them.
    instance: String,
    next_seq: AtomicU64,
    /// Timestamps in handles are milliseconds since this instant (so they fit in an atomic).
    epoch: Instant,
    epoch_unix_ms: u64,
    /// The configured upstreams' names; a stream records the index of the one serving it.
    upstream_names: Arc<[Arc<str>]>,
    draining: AtomicBool,
}

impl Registry {
    /// `upstream_names` are the configured upstreams, in order: a stream names the one serving
    /// it by index ([`StreamHandle::set_upstream`]).
    pub fn new(upstream_names: &[&str]) -> Registry {
        Registry::with_instance(upstream_names, None)
    }

    /// Like [`Registry::new`], naming this instance `instance` in stream ids (else a random
    /// name, new with every process). The name is checked by the config (`resume.instance_id`).
    pub fn with_instance(upstream_names: &[&str], instance: Option<&str>) -> Registry {
        let instance = match instance {
            Some(name) => name.to_owned(),
            None => {
                let mut hasher = RandomState::new().build_hasher();
                hasher.write_u64(std::process::id().into());
                format!("{:012x}", hasher.finish() & 0xffff_ffff_ffff)
            }
        };
        Registry {
            streams: DashMap::new(),
            instance,
            next_seq: AtomicU64::new(1),
            epoch: Instant::now(),
            epoch_unix_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            upstream_names: upstream_names.iter().map(|n| Arc::from(*n)).collect(),
            draining: AtomicBool::new(false),
        }
    }

    /// Inserts a stream; the returned guard removes it when dropped.
    pub fn register(self: &Arc<Self>, new: NewStream<'_>) -> StreamEntry {
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        let now = self.now_ms();
        let initial = if self.is_draining() {
            StreamState::Draining
        } else {
            StreamState::WaitingForUpstream
        };
        let handle = Arc::new(StreamHandle {
            seq,
            id: format!("{STREAM_ID_PREFIX}{}_{seq}", self.instance).into_boxed_str(),
            client_ip: new.client_ip,
            api_key: new.api_key,
            model: truncate_chars(new.model, MAX_MODEL_CHARS).into(),
            request_id: new.request_id.into(),
            upstream_names: self.upstream_names.clone(),
            upstream: AtomicU16::new(NO_UPSTREAM),
            attempts: AtomicU8::new(0),
            started_ms: now,
            first_event_ms: AtomicU64::new(NEVER),
            last_write_ms: AtomicU64::new(now),
            blocked_since_ms: AtomicU64::new(NEVER),
            events: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            heartbeats: AtomicU64::new(0),
            state: AtomicU8::new(initial as u8),
            signals: AtomicU8::new(0),
            end_reason: AtomicU8::new(0),
            waker: AtomicWaker::new(),
            connection: Mutex::new(new.connection),
            detached: AtomicBool::new(false),
        });
        self.streams.insert(seq, handle.clone());
        StreamEntry {
            registry: self.clone(),
            handle,
        }
    }

    /// The stream with this id, if it is live on this instance.
    pub fn get(&self, id: &str) -> Option<Arc<StreamHandle>> {
        let seq = self.local_seq(id)?;
        self.streams.get(&seq).map(|h| h.value().clone())
    }

    /// The number of the stream this id names, if the id is one of this instance's (whether or
    /// not the stream is still live).
    pub fn local_seq(&self, id: &str) -> Option<u64> {
        let rest = id.strip_prefix(STREAM_ID_PREFIX)?;
        let (instance, seq) = rest.rsplit_once('_')?;
        if instance != self.instance {
            return None;
        }
        seq.parse().ok()
    }

    pub fn len(&self) -> usize {
        self.streams.len()
    }

    pub fn is_empty(&self) -> bool {
        self.streams.is_empty()
    }

    /// Visits every live stream. Each shard is read-locked while it is visited, so `f` must be
    /// quick and must not touch the registry.
    pub fn for_each(&self, mut f: impl FnMut(&StreamHandle)) {
        for entry in self.streams.iter() {
            f(entry.value());
        }
    }

    /// Handles of every live stream, oldest first.
    pub fn snapshot(&self) -> Vec<Arc<StreamHandle>> {
        let mut all: Vec<_> = self.streams.iter().map(|e| e.value().clone()).collect();
        all.sort_unstable_by_key(|h| h.seq);
        all
    }

    /// Milliseconds since the registry was created: the clock of every handle timestamp.
    pub fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Wall-clock time (Unix milliseconds) of a handle timestamp.
    pub fn unix_ms(&self, ms: u64) -> u64 {
        self.epoch_unix_ms + ms
    }

    /// Marks every stream (and every stream registered from now on) as draining.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
        self.for_each(|h| h.advance_state(StreamState::Draining));
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Asks every live stream to end for `reason`; returns how many were asked.
    pub fn end_all(&self, reason: EndReason) -> usize {
        let mut n = 0;
        self.for_each(|h| {
            h.end(reason);
            n += 1;
        });
        n
    }
}

fn truncate_chars(text: &str, max: usize) -> &str {
    match text.char_indices().nth(max) {
        Some((cut, _)) => &text[..cut],
        None => text,
    }
}

/// The signal bits a body is woken for.
const SIGNAL_PING: u8 = 1;
const SIGNAL_END: u8 = 2;
/// Not a request to the body: marks that the connection was closed under a stalled stream.
const SIGNAL_CUT: u8 = 4;

/// What a stream's body was asked to do since it last looked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Signals {
    /// Write a heartbeat if nothing else is ready to write.
    pub ping: bool,
    /// End the stream now with a final error event.
    pub end: Option<EndReason>,
}

/// One live stream as the registry sees it.
#[derive(Debug)]
pub struct StreamHandle {
    seq: u64,
    id: Box<str>,
    client_ip: IpAddr,
    /// Shared with the key set, so a stream costs a pointer, not a copy of the name.
    api_key: Option<Arc<str>>,
    model: Box<str>,
    request_id: Box<str>,
    upstream_names: Arc<[Arc<str>]>,
    /// Index in `upstream_names` of the upstream asked last, or [`NO_UPSTREAM`].
    upstream: AtomicU16,
    /// Upstream requests made for this stream so far (retries included).
    attempts: AtomicU8,
    /// Registry clock (ms) at registration.
    started_ms: u64,
    /// Registry clock (ms) of the first token: the first event that carries output.
    first_event_ms: AtomicU64,
    /// When the body last handed bytes to the client's connection: the heartbeat clock.
    last_write_ms: AtomicU64,
    /// Set when the body hands out a frame, cleared when it is polled again. A frame handed out
    /// and not followed by a poll means the connection cannot take more: the client is not
    /// reading. Kept this long, that is a stall.
    blocked_since_ms: AtomicU64,
    events: AtomicU64,
    bytes: AtomicU64,
    heartbeats: AtomicU64,
    state: AtomicU8,
    signals: AtomicU8,
    end_reason: AtomicU8,
    /// Wakes whatever currently drives the stream: the request handler while it waits for the
    /// upstream's headers, then the connection task polling the response body.
    waker: AtomicWaker,
    /// The client connection the stream is sent on: a resumed stream moves to the resuming
    /// client's connection ([`StreamHandle::move_to_connection`]).
    connection: Mutex<Option<ConnectionInfo>>,
    /// Its client has gone and it generates for a resume (`[resume]`).
    detached: AtomicBool,
}

impl StreamHandle {
    /// URL-safe and unique across instances: `st_<instance>_<n>`.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Stable small number (unique within the instance), e.g. for spreading work.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    pub fn client_ip(&self) -> IpAddr {
        self.client_ip
    }

    /// The name of the API key the stream was opened with, if the gateway asks for keys.
    pub fn api_key(&self) -> Option<&str> {
        self.api_key.as_deref()
    }

    pub fn model(&self) -> &str {
        &self.model
    }

    pub fn request_id(&self) -> &str {
        &self.request_id
    }

    /// The upstream asked last (the one serving the stream once it has answered).
    pub fn upstream(&self) -> Option<&str> {
        let index = usize::from(self.upstream.load(Ordering::Relaxed));
        self.upstream_names.get(index).map(|name| &**name)
    }

    /// Upstream requests made so far (1 unless retried).
    pub fn attempts(&self) -> u32 {
        u32::from(self.attempts.load(Ordering::Relaxed))
    }

    /// Records that attempt number `attempt` (1-based) goes to upstream `index`.
    pub fn set_upstream(&self, index: usize, attempt: u32) {
        let index = u16::try_from(index).unwrap_or(NO_UPSTREAM);
        self.upstream.store(index, Ordering::Relaxed);
        self.attempts
            .store(u8::try_from(attempt).unwrap_or(u8::MAX), Ordering::Relaxed);
    }

    pub fn protocol(&self) -> Option<Protocol> {
        self.connection
            .lock()
            .ok()
            .and_then(|c| c.as_ref().map(|c| c.protocol))
    }

    pub fn state(&self) -> StreamState {
        StreamState::from_u8(self.state.load(Ordering::Relaxed))
    }

    pub fn started_ms(&self) -> u64 {
        self.started_ms
    }

    /// Registry clock of the first event relayed, if any.
    pub fn first_event_ms(&self) -> Option<u64> {
        let v = self.first_event_ms.load(Ordering::Relaxed);
        (v != NEVER).then_some(v)
    }

    pub fn last_write_ms(&self) -> u64 {
        self.last_write_ms.load(Ordering::Relaxed)
    }

    /// Registry clock since which the connection has not taken the last frame, if it has not.
    pub fn blocked_since_ms(&self) -> Option<u64> {
        let v = self.blocked_since_ms.load(Ordering::Relaxed);
        (v != NEVER).then_some(v)
    }

    pub fn events(&self) -> u64 {
        self.events.load(Ordering::Relaxed)
    }

    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    pub fn heartbeats(&self) -> u64 {
        self.heartbeats.load(Ordering::Relaxed)
    }

    /// Why the gateway is ending this stream, if it is.
    pub fn end_reason(&self) -> Option<EndReason> {
        EndReason::from_u8(self.end_reason.load(Ordering::Relaxed))
    }

    // ---- written by the stream itself ----

    /// Moves the state forward (never back).
    pub fn advance_state(&self, state: StreamState) {
        self.state.fetch_max(state as u8, Ordering::Relaxed);
    }

    /// Counts upstream events relayed. The first batch with `output` (for chat completions
    /// any chunk, for the Responses API an output delta, not its lifecycle events) marks the
    /// time of the first token, and the stream as streaming.
    pub fn record_events(&self, n: u64, output: bool, now_ms: u64) {
        self.events.fetch_add(n, Ordering::Relaxed);
        // One writer (the stream's body): a load and a store, no race to lose.
        if output && self.first_event_ms.load(Ordering::Relaxed) == NEVER {
            self.first_event_ms.store(now_ms, Ordering::Relaxed);
            self.advance_state(StreamState::Streaming);
        }
    }

    /// A frame of `bytes` was handed to the connection. Until the body is polled again, the
    /// stream counts as blocked on its client.
    pub fn record_write(&self, bytes: usize, heartbeat: bool, now_ms: u64) {
        self.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
        if heartbeat {
            self.heartbeats.fetch_add(1, Ordering::Relaxed);
        }
        self.last_write_ms.store(now_ms, Ordering::Relaxed);
        self.blocked_since_ms.store(now_ms, Ordering::Relaxed);
    }

    /// Called at the start of every poll by whatever drives the stream: registers its waker
    /// (before the signals are read, so no signal is missed) and clears the blocked mark.
    pub fn on_poll(&self, cx: &Context<'_>) {
        self.waker.register(cx.waker());
        if self.blocked_since_ms.load(Ordering::Relaxed) != NEVER {
            self.blocked_since_ms.store(NEVER, Ordering::Relaxed);
        }
    }

    /// Takes the pending ping request and reads the end request (which stays set).
    pub fn take_signals(&self) -> Signals {
        if self.signals.load(Ordering::Acquire) & (SIGNAL_PING | SIGNAL_END) == 0 {
            return Signals::default();
        }
        let bits = self.signals.fetch_and(!SIGNAL_PING, Ordering::AcqRel);
        Signals {
            ping: bits & SIGNAL_PING != 0,
            end: if bits & SIGNAL_END != 0 {
                self.end_reason()
            } else {
                None
            },
        }
    }

    /// Whether a ping or end request is pending (without taking it).
    pub fn has_signal(&self) -> bool {
        self.signals.load(Ordering::Acquire) & (SIGNAL_PING | SIGNAL_END) != 0
    }

    // ---- written by the scheduler, the admin API and the drain ----

    /// Asks the stream to write a heartbeat. Wakes it only if no request was pending, so a
    /// stream that is not being polled is not woken again and again.
    pub fn request_ping(&self) {
        if self.signals.fetch_or(SIGNAL_PING, Ordering::AcqRel) & SIGNAL_PING == 0 {
            self.waker.wake();
        }
    }

    /// Asks the stream to end with a final error event. The first reason wins; returns whether
    /// this call set it. The body writes that event itself on its next poll.
    pub fn end(&self, reason: EndReason) -> bool {
        let first = self
            .end_reason
            .compare_exchange(0, reason as u8, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        self.signals.fetch_or(SIGNAL_END, Ordering::AcqRel);
        self.waker.wake();
        first
    }

    /// Ends a stream whose client is not taking data (its body is not even polled, so it cannot
    /// end itself) by closing its connection; returns false if that was already done. On HTTP/2
    /// this ends the connection's other streams too, since hyper cannot reset one stream whose
    /// body it is not polling. The outcome is `slow_client` unless another end was asked first.
    pub fn cut_slow_client(&self) -> bool {
        self.end(EndReason::SlowClient);
        if self.signals.fetch_or(SIGNAL_CUT, Ordering::AcqRel) & SIGNAL_CUT != 0 {
            return false;
        }
        if let Ok(connection) = self.connection.lock() {
            if let Some(connection) = connection.as_ref() {
                connection.close.cancel();
            }
        }
        true
    }

    /// Whether its client has gone and it generates for a resume.
    pub fn is_detached(&self) -> bool {
        self.detached.load(Ordering::Relaxed)
    }

    /// Marks the stream detached (its client gone, generating for a resume) or attached again.
    pub fn set_detached(&self, detached: bool) {
        self.detached.store(detached, Ordering::Relaxed);
    }

    /// A resumed stream is now sent on `connection`: the one a slow-client cut closes. The
    /// stall clock starts afresh, and a cut of the old connection no longer counts.
    pub fn move_to_connection(&self, connection: Option<ConnectionInfo>) {
        if let Ok(mut current) = self.connection.lock() {
            *current = connection;
        }
        self.blocked_since_ms.store(NEVER, Ordering::Relaxed);
        self.signals.fetch_and(!SIGNAL_CUT, Ordering::AcqRel);
    }
}

/// A stream's place in the registry, removed when this guard is dropped.
pub struct StreamEntry {
    registry: Arc<Registry>,
    handle: Arc<StreamHandle>,
}

impl StreamEntry {
    pub fn handle(&self) -> &Arc<StreamHandle> {
        &self.handle
    }

    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }
}

impl Drop for StreamEntry {
    fn drop(&mut self) {
        self.registry.streams.remove(&self.handle.seq);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;
    use tokio_util::sync::CancellationToken;

    fn new_stream(model: &str) -> NewStream<'_> {
        NewStream {
            client_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            api_key: None,
            model,
            request_id: "req-1",
            connection: None,
        }
    }

    #[tokio::test]
    async fn entries_live_exactly_as_long_as_their_guard() {
        let registry = Arc::new(Registry::new(&["default"]));
        let a = registry.register(new_stream("m"));
        let b = registry.register(new_stream("m"));
        assert_eq!(registry.len(), 2);
        assert_ne!(a.handle().id(), b.handle().id());
        let id = a.handle().id().to_owned();
        assert!(registry.get(&id).is_some());
        drop(a);
        assert!(registry.get(&id).is_none());
        assert_eq!(registry.len(), 1);
        drop(b);
        assert!(registry.is_empty());
    }

    #[tokio::test]
    async fn ids_are_url_safe_and_name_their_instance() {
        let registry = Arc::new(Registry::new(&["u"]));
        let other = Arc::new(Registry::new(&["u"]));
        let entry = registry.register(new_stream("m"));
        let id = entry.handle().id();
        assert!(id.starts_with("st_"));
        assert!(id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'));
        // The same number on another instance is another stream.
        let _theirs = other.register(new_stream("m"));
        assert!(other.get(id).is_none() || registry.instance == other.instance);
        for bad in [
            "",
            "st_",
            "st_x",
            "nope_1",
            &format!("st_{}_x", registry.instance),
        ] {
            assert!(registry.get(bad).is_none(), "{bad}");
        }
    }

    #[tokio::test]
    async fn state_only_moves_forward_and_drain_marks_new_streams() {
        let registry = Arc::new(Registry::new(&["u"]));
        let entry = registry.register(new_stream("m"));
        let h = entry.handle();
        assert_eq!(h.state(), StreamState::WaitingForUpstream);
        h.advance_state(StreamState::WaitingForFirstToken);
        h.record_events(2, true, 5);
        assert_eq!(h.state(), StreamState::Streaming);
        assert_eq!(h.first_event_ms(), Some(5));
        h.advance_state(StreamState::WaitingForFirstToken);
        assert_eq!(h.state(), StreamState::Streaming);
        registry.start_draining();
        assert_eq!(h.state(), StreamState::Draining);
        let late = registry.register(new_stream("m"));
        assert_eq!(late.handle().state(), StreamState::Draining);
    }

    #[tokio::test]
    async fn signals_ping_once_and_end_sticks_with_the_first_reason() {
        let registry = Arc::new(Registry::new(&["u"]));
        let entry = registry.register(new_stream("m"));
        let h = entry.handle();
        assert_eq!(h.take_signals(), Signals::default());
        h.request_ping();
        h.request_ping();
        assert_eq!(
            h.take_signals(),
            Signals {
                ping: true,
                end: None
            }
        );
        assert_eq!(h.take_signals(), Signals::default());
        assert!(h.end(EndReason::Admin));
        assert!(!h.end(EndReason::Shutdown));
        assert_eq!(h.take_signals().end, Some(EndReason::Admin));
        assert_eq!(h.take_signals().end, Some(EndReason::Admin));
    }

    #[tokio::test]
    async fn only_a_slow_client_has_its_connection_closed() {
        let registry = Arc::new(Registry::new(&["u"]));
        let close = CancellationToken::new();
        let entry = registry.register(NewStream {
            connection: Some(ConnectionInfo {
                protocol: Protocol::Http2,
                close: close.clone(),
            }),
            ..new_stream("m")
        });
        let h = entry.handle();
        h.record_write(10, false, 1);
        assert_eq!(h.blocked_since_ms(), Some(1));
        // The body writes the final event itself.
        h.end(EndReason::Admin);
        assert!(!close.is_cancelled());
        // A stalled stream, even one already asked to end, has its connection closed, once.
        assert!(h.cut_slow_client());
        assert!(close.is_cancelled());
        assert!(!h.cut_slow_client());
        assert_eq!(h.end_reason(), Some(EndReason::Admin));
    }

    #[test]
    fn long_models_are_cut_at_a_char_boundary() {
        let long = "é".repeat(MAX_MODEL_CHARS + 10);
        assert_eq!(
            truncate_chars(&long, MAX_MODEL_CHARS).chars().count(),
            MAX_MODEL_CHARS
        );
        assert_eq!(truncate_chars("gpt", MAX_MODEL_CHARS), "gpt");
    }
}
