//! Resumable streams (`[resume]`): a client whose connection drops picks its stream back up.
//!
//! With resume on, a stream's [`SseRelay`] tags every event with `id: <n>` and keeps it in the
//! stream's replay log, and the relay itself lives in a [`Resumable`] shared by whoever drives it
//! now, the *holder*:
//! - the client's response body ([`ResumableBody`]) while a client is attached;
//! - a detached task ([`drive_detached`]) once that client has gone: the generation goes on into
//!   the log for `detach_grace`, then the upstream request is cancelled;
//! - the body of a resume (`GET /v1/streams/{id}`), which first replays the logged events after
//!   the client's `Last-Event-ID`, then goes on live.
//!
//! Handing over is one step under the stream's lock: the new holder's number is set, the relay's
//! unsent frame is dropped (it is in the log, which the new holder replays), and the old holder
//! is woken to find it holds nothing. Every event is logged when the relay makes it, under the
//! same lock, so a resume sees each event exactly once: in the replay or live, never both,
//! never neither. A resume may also take a stream from a connection that still looks alive (a
//! phone that changed networks before the old socket timed out).
//!
//! Memory: each log keeps at most `max_bytes_per_stream` (its oldest events go first), and all
//! logs together at most `memory_budget`: past it, events are taken back from the oldest
//! streams first. A resume from before what a log still holds gets `409
//! resume_window_exceeded`. One sweeper task (no timer per stream) cancels detached streams at
//! the end of their grace and forgets finished ones after `retain_after_done`.
//!
//! The rules of live streams hold for resumed ones, since the same relay (with its registry
//! entry) is polled: heartbeats, the idle and duration limits, the admin API's kill, the drain
//! (a detached stream nobody can resume any more is cancelled when the drain starts), and the
//! slow-client cut, which closes the resuming client's connection.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use dashmap::DashMap;
use http_body::{Body, Frame, SizeHint};
use subtle::ConstantTimeEq;
use tokio_util::sync::CancellationToken;

use super::stream::SseRelay;
use crate::config::ResumeConfig;
use crate::connection::ConnectionInfo;
use crate::error::GatewayError;
use crate::metrics::ResumeLive;
use crate::registry::Registry;

/// The response header that carries a resumable stream's token.
pub const RESUME_TOKEN_HEADER: &str = "x-tidegate-resume-token";

/// Random bytes in a resume token (hex-encoded, twice as many characters): 128 bits, not
/// guessable.
const TOKEN_BYTES: usize = 16;

/// What keeping one event costs beyond its bytes: its place in the log (id and handle), counted
/// against the limits with the bytes so that many small events cannot outgrow the budget.
const EVENT_OVERHEAD: usize = std::mem::size_of::<(u64, Bytes)>();

/// Frames a detached stream's task takes in one poll before it lets the worker run others.
const DETACHED_FRAMES_PER_POLL: usize = 64;

/// Sweeps of the store per `detach_grace`: a detached stream is cancelled late by at most this
/// fraction of its grace.
const SWEEPS_PER_GRACE: u32 = 10;

/// Bounds of the sweep period, whatever the configuration.
const MIN_SWEEP_PERIOD: Duration = Duration::from_millis(50);
const MAX_SWEEP_PERIOD: Duration = Duration::from_secs(1);

/// What a resume asks for.
#[derive(Debug, Clone, Copy)]
pub struct ResumeRequest<'a> {
    pub stream_id: &'a str,
    pub token: Option<&'a str>,
    /// The last event id the client received (0 or absent: from the start).
    pub last_event_id: Option<u64>,
    /// The name of the API key the request was made with, when keys are on.
    pub api_key: Option<&'a str>,
}

/// Counts for `/metrics`, read at scrape time.
#[derive(Debug, Default)]
struct Counts {
    resumed: AtomicU64,
    not_found: AtomicU64,
    window_exceeded: AtomicU64,
    detached: AtomicU64,
    expired: AtomicU64,
    /// Streams detached now: up when a client leaves a live stream, down when it is resumed,
    /// ends or is cancelled (`Holding::attach`).
    detached_now: AtomicU64,
}

/// Every resumable stream of this instance.
pub struct ResumeStore {
    streams: DashMap<u64, Arc<Resumable>>,
    registry: Arc<Registry>,
    budget: Arc<ReplayBudget>,
    max_bytes_per_stream: usize,
    detach_grace_ms: u64,
    retain_ms: u64,
    sweep_period: Duration,
    counts: Counts,
}

/// The replay memory all logs share.
struct ReplayBudget {
    limit: usize,
    used: AtomicUsize,
    /// Streams in the order they started: where the budget takes events back from when it is
    /// exceeded (the oldest streams' oldest events first). Dead entries are dropped as met.
    order: Mutex<VecDeque<Weak<Resumable>>>,
    evicted_bytes: AtomicU64,
}

/// One resumable stream.
pub struct Resumable {
    seq: u64,
    id: Box<str>,
    token: Box<str>,
    /// The API key's name the stream was opened with: only the same key may resume it.
    api_key: Option<Arc<str>>,
    budget: Arc<ReplayBudget>,
    state: Mutex<Holding>,
}

/// A resumable stream's state, under its lock.
struct Holding {
    /// The number of whoever drives the relay now; a holder that finds another number has been
    /// replaced and stops.
    holder: u64,
    /// The relay, until the stream has ended and sent everything (or was cancelled).
    relay: Option<Box<SseRelay>>,
    /// The current holder's task, woken when another takes over.
    waker: Option<Waker>,
    /// Events kept for replay, oldest first, with their ids (consecutive).
    log: VecDeque<(u64, Bytes)>,
    /// What `log` holds: its events' bytes plus [`EVENT_OVERHEAD`] each.
    log_bytes: usize,
    /// The id of the first event not yet made (1 before the first).
    next_id: u64,
    /// The oldest id a resume can still start after: ids after `first_kept - 1` are all in the
    /// log or yet to come.
    first_kept: u64,
    /// Registry clock when the last client left, while no other has come back.
    detached_since_ms: Option<u64>,
    /// Registry clock when the stream ended.
    finished_ms: Option<u64>,
}

impl Holding {
    /// Takes the relay's new events into the log and counts them in `budget` (making room in
    /// it first), then drops this log's oldest past `max_bytes`. Called under the stream's lock,
    /// so every byte in a log is counted by the time the lock is released.
    fn take_fresh(&mut self, max_bytes: usize, budget: &ReplayBudget) {
        let Some(relay) = self.relay.as_mut() else {
            return;
        };
        let counted = self.log_bytes;
        let mut added = 0;
        let log = &mut self.log;
        relay.drain_fresh_events(|id, bytes| {
            added += bytes.len() + EVENT_OVERHEAD;
            log.push_back((id, bytes));
        });
        if let Some(next) = relay.next_event_id() {
            self.next_id = next;
        }
        if added == 0 {
            return;
        }
        self.log_bytes += added;
        budget.reserve(added, self, counted);
        let dropped = self.drop_oldest_until(max_bytes);
        budget.release(dropped);
    }

    /// Drops the oldest events until the log holds at most `max_bytes`; returns bytes dropped.
    fn drop_oldest_until(&mut self, max_bytes: usize) -> usize {
        let mut dropped = 0;
        // Bounded: each pass removes one event.
        while self.log_bytes > max_bytes {
            let Some((id, bytes)) = self.log.pop_front() else {
                break;
            };
            self.log_bytes -= bytes.len() + EVENT_OVERHEAD;
            dropped += bytes.len() + EVENT_OVERHEAD;
            self.first_kept = id + 1;
        }
        dropped
    }

    /// Its client has gone at `now`: counted in `gauge`, and marked on its registry handle.
    fn start_detachment(&mut self, now: u64, gauge: &AtomicU64) {
        self.detached_since_ms = Some(now);
        gauge.fetch_add(1, Ordering::Relaxed);
        if let Some(relay) = &self.relay {
            relay.lifetime().handle().set_detached(true);
        }
    }

    /// The stream is no longer detached (resumed, ended or cancelled): counted out of `gauge`,
    /// and unmarked.
    fn end_detachment(&mut self, gauge: &AtomicU64) {
        if self.detached_since_ms.take().is_some() {
            gauge.fetch_sub(1, Ordering::Relaxed);
            if let Some(relay) = &self.relay {
                relay.lifetime().handle().set_detached(false);
            }
        }
    }

    /// Becomes held by a new holder; wakes the old one, which finds it holds nothing.
    fn hand_over(&mut self) -> u64 {
        self.holder += 1;
        if let Some(waker) = self.waker.take() {
            waker.wake();
        }
        self.holder
    }

    /// One poll of the relay by the current holder: the events it makes go into the log, and
    /// once it has ended it is marked finished and taken out, handed back in
    /// [`Polled::Ended`] to be dropped after the lock (dropping it ends its registry entry).
    fn poll_relay(
        &mut self,
        cx: &mut Context<'_>,
        store: &ResumeStore,
        budget: &ReplayBudget,
    ) -> Polled {
        let Some(relay) = self.relay.as_mut() else {
            return Polled::Ended(None);
        };
        let polled = Pin::new(relay.as_mut()).poll_frame(cx);
        self.take_fresh(store.max_bytes_per_stream, budget);
        match polled {
            Poll::Ready(Some(Ok(frame))) => Polled::Frame(frame),
            Poll::Ready(Some(Err(never))) => match never {},
            Poll::Ready(None) => {
                self.finished_ms = Some(store.registry.now_ms());
                self.end_detachment(&store.counts.detached_now);
                Polled::Ended(self.relay.take())
            }
            Poll::Pending => Polled::Pending,
        }
    }

    /// Registers the current holder's task.
    fn register(&mut self, cx: &Context<'_>) {
        if !self.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            self.waker = Some(cx.waker().clone());
        }
    }
}

/// What one poll of a resumable stream's relay gave.
enum Polled {
    Frame(Frame<Bytes>),
    Pending,
    /// The stream has ended (or was already): the relay, if it was still there, to drop once the
    /// lock is released.
    Ended(Option<Box<SseRelay>>),
}

impl Resumable {
    fn lock(&self) -> MutexGuard<'_, Holding> {
        // A panic while holding the lock leaves the state as consistent as any poll does.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The stream's id (`x-tidegate-stream-id`).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The token a resume must show (`x-tidegate-resume-token`).
    pub fn token(&self) -> &str {
        &self.token
    }
}

impl Drop for Resumable {
    fn drop(&mut self) {
        let state = self
            .state
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        self.budget
            .used
            .fetch_sub(state.log_bytes, Ordering::Relaxed);
    }
}

impl ReplayBudget {
    /// Counts `added` bytes in for `own`, a stream whose lock the caller holds and whose first
    /// `own_counted` log bytes are counted already. The count never passes the limit: room is
    /// reserved before it is counted. When there is none, events are first taken back from the
    /// other streams, oldest first, until a sixteenth of the budget is free again (so that a
    /// full budget is not swept at every event); then, if that is not enough, from `own`'s
    /// counted events.
    fn reserve(&self, added: usize, own: &mut Holding, own_counted: usize) {
        let limit = self.limit;
        let try_reserve = || {
            self.used
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
                    (used + added <= limit).then_some(used + added)
                })
                .is_ok()
        };
        // Bounded: a few evictions, each one pass over the streams.
        for _ in 0..3 {
            if try_reserve() {
                return;
            }
            self.evict_down_to((limit - limit / 16).saturating_sub(added));
        }
        if try_reserve() {
            return;
        }
        // The others are empty or busy this instant: this stream's own oldest events go.
        let shortfall = (self.used.load(Ordering::Relaxed) + added).saturating_sub(limit);
        let keep = own.log_bytes - shortfall.min(own_counted);
        let dropped = own.drop_oldest_until(keep);
        self.release(dropped);
        if !try_reserve() {
            // Only if other streams filled the room meanwhile: counted anyway, taken back by
            // the next reservation.
            self.used.fetch_add(added, Ordering::Relaxed);
        }
    }

    /// Counts `dropped` bytes out: events a log no longer keeps.
    fn release(&self, dropped: usize) {
        if dropped > 0 {
            self.used.fetch_sub(dropped, Ordering::Relaxed);
            self.evicted_bytes
                .fetch_add(dropped as u64, Ordering::Relaxed);
        }
    }

    /// Takes events back from the oldest streams (their oldest first) until at most `target`
    /// bytes are counted, or nothing more can be taken now.
    fn evict_down_to(&self, target: usize) {
        let mut order = self
            .order
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Bounded: each pass drops a dead entry, empties a log (then moves on), or stops.
        let mut index = 0;
        while self.used.load(Ordering::Relaxed) > target && index < order.len() {
            let Some(stream) = order[index].upgrade() else {
                order.remove(index);
                continue;
            };
            // A stream being polled right now is skipped.
            let Ok(mut state) = stream.state.try_lock() else {
                index += 1;
                continue;
            };
            let excess = self.used.load(Ordering::Relaxed).saturating_sub(target);
            let keep = state.log_bytes.saturating_sub(excess);
            let dropped = state.drop_oldest_until(keep);
            let finished_and_empty = state.relay.is_none() && state.log.is_empty();
            drop(state);
            self.used.fetch_sub(dropped, Ordering::Relaxed);
            self.evicted_bytes
                .fetch_add(dropped as u64, Ordering::Relaxed);
            if finished_and_empty {
                order.remove(index);
            } else {
                index += 1;
            }
        }
    }
}

/// Why a resume is refused.
fn not_found(store: &ResumeStore, id: &str) -> GatewayError {
    store.counts.not_found.fetch_add(1, Ordering::Relaxed);
    GatewayError::ResumeNotFound(id.chars().take(100).collect())
}

impl ResumeStore {
    pub fn new(config: &ResumeConfig, registry: Arc<Registry>) -> ResumeStore {
        let grace = config.detach_grace;
        ResumeStore {
            streams: DashMap::new(),
            registry,
            budget: Arc::new(ReplayBudget {
                limit: config.memory_budget,
                used: AtomicUsize::new(0),
                order: Mutex::new(VecDeque::new()),
                evicted_bytes: AtomicU64::new(0),
            }),
            max_bytes_per_stream: config.max_bytes_per_stream,
            detach_grace_ms: grace.as_millis() as u64,
            retain_ms: config.retain_after_done.as_millis() as u64,
            sweep_period: (grace / SWEEPS_PER_GRACE).clamp(MIN_SWEEP_PERIOD, MAX_SWEEP_PERIOD),
            counts: Counts::default(),
        }
    }

    /// Makes `relay` resumable: tags its events and keeps them. Returns the stream (for its
    /// token) and the first client's body; `None` (the relay is given back) only if the system
    /// has no randomness for a token.
    pub fn begin(
        self: &Arc<Self>,
        mut relay: Box<SseRelay>,
    ) -> Result<(Arc<Resumable>, ResumableBody), Box<SseRelay>> {
        let mut random = [0u8; TOKEN_BYTES];
        if let Err(e) = getrandom::fill(&mut random) {
            tracing::error!(error = %e, "no randomness for a resume token: stream not resumable");
            return Err(relay);
        }
        relay.enable_event_ids();
        let handle = relay.lifetime().handle().clone();
        let stream = Arc::new(Resumable {
            seq: handle.seq(),
            id: handle.id().into(),
            token: hex::encode(random).into_boxed_str(),
            api_key: handle.api_key().map(Arc::from),
            budget: self.budget.clone(),
            state: Mutex::new(Holding {
                holder: 1,
                relay: Some(relay),
                waker: None,
                log: VecDeque::new(),
                log_bytes: 0,
                next_id: 1,
                first_kept: 1,
                detached_since_ms: None,
                finished_ms: None,
            }),
        });
        self.streams.insert(stream.seq, stream.clone());
        self.budget
            .order
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push_back(Arc::downgrade(&stream));
        let body = ResumableBody {
            store: self.clone(),
            stream: stream.clone(),
            holder: 1,
            replay: VecDeque::new(),
        };
        Ok((stream, body))
    }

    /// Resumes a stream for a client on `connection`: its body replays the events after
    /// `last_event_id`, then goes on live.
    pub fn resume(
        self: &Arc<Self>,
        request: ResumeRequest<'_>,
        connection: Option<ConnectionInfo>,
    ) -> Result<(Arc<Resumable>, ResumableBody), GatewayError> {
        let id = request.stream_id;
        let stream = match self
            .registry
            .local_seq(id)
            .and_then(|seq| self.streams.get(&seq))
        {
            Some(entry) => entry.value().clone(),
            None => return Err(not_found(self, id)),
        };
        let token_matches = request
            .token
            .is_some_and(|t| bool::from(t.as_bytes().ct_eq(stream.token.as_bytes())));
        if !token_matches
            || stream.id.as_ref() != id
            || stream.api_key.as_deref() != request.api_key
        {
            return Err(not_found(self, id));
        }
        let last = request.last_event_id.unwrap_or(0);
        let mut state = stream.lock();
        if last >= state.next_id {
            return Err(GatewayError::InvalidParameter {
                param: "last_event_id",
                expected: format!(
                    "the id of an event this stream has sent (the last so far is {})",
                    state.next_id - 1
                )
                .into(),
            });
        }
        if last + 1 < state.first_kept {
            self.counts.window_exceeded.fetch_add(1, Ordering::Relaxed);
            return Err(GatewayError::ResumeWindowExceeded {
                last_event_id: last,
                oldest: state.first_kept,
            });
        }
        let from = state.log.partition_point(|(event_id, _)| *event_id <= last);
        let replay: VecDeque<Bytes> = state.log.range(from..).map(|(_, b)| b.clone()).collect();
        if let Some(relay) = state.relay.as_mut() {
            relay.discard_unsent();
            relay.lifetime().handle().move_to_connection(connection);
        }
        state.end_detachment(&self.counts.detached_now);
        let holder = state.hand_over();
        drop(state);
        self.counts.resumed.fetch_add(1, Ordering::Relaxed);
        let body = ResumableBody {
            store: self.clone(),
            stream: stream.clone(),
            holder,
            replay,
        };
        Ok((stream, body))
    }

    /// Cancels detached streams past their grace (all of them once the drain has begun: nobody
    /// can resume on an instance that is going away) and forgets finished streams past
    /// `retain_after_done`. Returns how many streams it cancelled.
    pub fn sweep(&self) -> usize {
        let now = self.registry.now_ms();
        let draining = self.registry.is_draining();
        let mut cancelled = Vec::new();
        // Bounded: one pass over the store.
        self.streams.retain(|_, stream| {
            let mut state = stream.lock();
            if let Some(since) = state.detached_since_ms {
                if draining || now.saturating_sub(since) >= self.detach_grace_ms {
                    state.end_detachment(&self.counts.detached_now);
                    state.finished_ms = Some(now);
                    state.hand_over();
                    if let Some(relay) = state.relay.take() {
                        cancelled.push(relay);
                    }
                    return false;
                }
            }
            match state.finished_ms {
                Some(at) => now.saturating_sub(at) < self.retain_ms && !draining,
                None => true,
            }
        });
        let n = cancelled.len();
        if n > 0 {
            self.counts.expired.fetch_add(n as u64, Ordering::Relaxed);
            for relay in &cancelled {
                let (stream_id, request_id, client) = relay.lifetime().log_fields();
                tracing::info!(
                    stream_id,
                    request_id,
                    %client,
                    "nobody resumed the stream in time: cancelling its upstream request"
                );
            }
        }
        // Dropping a relay cancels its upstream request and ends its registry entry.
        drop(cancelled);
        n
    }

    /// Sweeps every period until `shutdown` is cancelled.
    pub async fn run_sweeper(self: Arc<Self>, shutdown: CancellationToken) {
        let mut ticks = tokio::time::interval(self.sweep_period);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Bounded by the shutdown token.
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = ticks.tick() => { self.sweep(); }
            }
        }
    }

    /// What the store holds now and has done, for `/metrics`.
    pub fn stats(&self) -> ResumeLive {
        let c = &self.counts;
        ResumeLive {
            streams: self.streams.len() as u64,
            detached_streams: c.detached_now.load(Ordering::Relaxed),
            replay_bytes: self.budget.used.load(Ordering::Relaxed) as u64,
            memory_budget: self.budget.limit as u64,
            resumed: c.resumed.load(Ordering::Relaxed),
            not_found: c.not_found.load(Ordering::Relaxed),
            window_exceeded: c.window_exceeded.load(Ordering::Relaxed),
            detached: c.detached.load(Ordering::Relaxed),
            expired: c.expired.load(Ordering::Relaxed),
            evicted_bytes: self.budget.evicted_bytes.load(Ordering::Relaxed),
        }
    }
}

/// A resumable stream's response body: a resume's replay first, then the live relay, as long as
/// this body is the stream's holder.
pub struct ResumableBody {
    store: Arc<ResumeStore>,
    stream: Arc<Resumable>,
    holder: u64,
    /// Logged events to send before going live (a resume's replay).
    replay: VecDeque<Bytes>,
}

impl Body for ResumableBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        if let Some(bytes) = this.replay.pop_front() {
            return Poll::Ready(Some(Ok(Frame::data(bytes))));
        }
        let mut state = this.stream.lock();
        if state.holder != this.holder {
            // Another client resumed the stream: this response ends here.
            return Poll::Ready(None);
        }
        state.register(cx);
        match state.poll_relay(cx, &this.store, &this.stream.budget) {
            Polled::Frame(frame) => Poll::Ready(Some(Ok(frame))),
            Polled::Pending => Poll::Pending,
            Polled::Ended(relay) => {
                drop(state);
                drop(relay);
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        if !self.replay.is_empty() {
            return false;
        }
        match self.stream.state.try_lock() {
            Ok(state) => {
                state.holder != self.holder
                    || state.relay.as_ref().is_none_or(|r| r.is_end_stream())
            }
            Err(_) => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

impl Drop for ResumableBody {
    /// The client went away (or the stream ended): a live stream it held goes on detached.
    fn drop(&mut self) {
        let mut state = self.stream.lock();
        if state.holder != self.holder || state.relay.is_none() {
            return;
        }
        let now = self.store.registry.now_ms();
        if state.relay.as_ref().is_some_and(|r| r.is_end_stream()) {
            state.finished_ms = Some(now);
            let ended = state.relay.take();
            drop(state);
            drop(ended);
            return;
        }
        let holder = state.hand_over();
        let runtime = tokio::runtime::Handle::try_current();
        if runtime.is_err() || self.store.registry.is_draining() {
            // Nobody could drive it (or resume it here): cancel now.
            state.finished_ms = Some(now);
            let cancelled = state.relay.take();
            drop(state);
            drop(cancelled);
            return;
        }
        let counts = &self.store.counts;
        state.start_detachment(now, &counts.detached_now);
        drop(state);
        counts.detached.fetch_add(1, Ordering::Relaxed);
        if let Ok(runtime) = runtime {
            runtime.spawn(drive_detached(
                self.store.clone(),
                self.stream.clone(),
                holder,
            ));
        }
    }
}

/// Drives a stream nobody is attached to: its events go into the log (frames are dropped: there
/// is no client), until it ends, another holder takes it, or the sweeper cancels it.
async fn drive_detached(store: Arc<ResumeStore>, stream: Arc<Resumable>, holder: u64) {
    std::future::poll_fn(|cx| {
        let mut state = stream.lock();
        if state.holder != holder {
            return Poll::Ready(());
        }
        state.register(cx);
        for _ in 0..DETACHED_FRAMES_PER_POLL {
            match state.poll_relay(cx, &store, &stream.budget) {
                Polled::Frame(_) => continue,
                Polled::Pending => return Poll::Pending,
                Polled::Ended(relay) => {
                    drop(state);
                    drop(relay);
                    return Poll::Ready(());
                }
            }
        }
        // Still more to read: let the worker's other tasks run first.
        cx.waker().wake_by_ref();
        Poll::Pending
    })
    .await
}

#[cfg(test)]
mod tests;
