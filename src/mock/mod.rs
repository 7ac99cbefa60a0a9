//! Built-in mock upstream: a small OpenAI-compatible fake backend.
//!
//! tidegate relays streaming chat completions; to demo it, test it and load
//! test it we need an upstream that behaves like OpenAI on the wire without
//! the network, the cost or the nondeterminism. This module is that upstream:
//!
//! * `POST /v1/chat/completions` and `POST /v1/completions` answer with the
//!   exact OpenAI JSON shapes, streaming (`"stream": true`, Server-Sent Events)
//!   or not, with configurable pacing ([`MockSettings`], overridable per
//!   request with `x-mock-*` headers);
//! * `POST /v1/responses` answers as OpenAI's Responses API: the Response
//!   object, or its typed event stream; the last
//!   [`MockSettings::stored_responses`] of them can be fetched again
//!   (`GET /v1/responses/{id}`, also as the same stream from any
//!   `starting_after`), cancelled (background ones), deleted, and their input
//!   listed (`GET /v1/responses/{id}/input_items`);
//! * `POST /v1/embeddings` and `GET /v1/models` answer with small fixed data;
//! * special model names inject faults ([`Fault`]): rate limits, server
//!   errors, streams that break in the middle, never finish, carry garbage or
//!   a giant line, or never answer at all;
//! * a test schedules faults on one mock instance through its handle, for
//!   whatever requests come next: errors, lost connections, and an HTTP/2
//!   connection shut after too many resets (see "Fault schedules" below), so
//!   several mocks in one process can play upstreams that fail differently;
//! * `GET /stats` exposes counters ([`StatsSnapshot`]) that let the gateway's
//!   tests prove it cancels upstream work when its own client goes away, and
//!   `GET /stats/last-request` shows what the gateway forwarded.
//!
//! It is built to be cheap enough for 10,000 concurrent slow streams on two
//! cores: one task per connection (hyper's), and each stream is a single
//! hand-written [`http_body::Body`] state machine owning one reusable timer.
//! No task, channel or timer is created per stream beyond that, and the only
//! per-chunk allocation is the chunk's own bytes.
//!
//! # Wire details
//!
//! * Every `/v1` response carries `x-request-id: req_mock_<n>` (the same `n`
//!   as in `chatcmpl-mock<n>` / `cmpl-mock<n>`), `openai-version`,
//!   `openai-processing-ms`, `x-ratelimit-limit-requests`,
//!   `x-ratelimit-remaining-requests` and `openai-organization`.
//! * Per-request overrides (non-negative integers; anything else is a 400):
//!   `x-mock-chunks`, `x-mock-chunk-delay-ms`, `x-mock-headers-delay-ms`,
//!   `x-mock-first-delay-ms`, and `x-mock-timestamps: 1`, which starts each
//!   JSON event with a `: sent_us=<Unix microseconds>` comment line (for load
//!   generators measuring per-event delay). Every wait is clamped to
//!   [`MockSettings::max_wait`].
//! * A stream is: the role chunk (after the first-chunk delay), `chunks`
//!   content chunks (each after the chunk delay), then at once the
//!   `finish_reason: "stop"` chunk, the usage chunk if
//!   `stream_options.include_usage`, and `data: [DONE]`. Each event is
//!   exactly one body frame (one HTTP/1 chunk, one HTTP/2 DATA frame).
//!   Legacy completions follow the same flow, starting with an empty `text`.
//! * A Responses stream (`POST /v1/responses` with `"stream": true`) is, at
//!   once, `response.created`, `response.in_progress`,
//!   `response.output_item.added` and `response.content_part.added`; then one
//!   `response.output_text.delta` per content chunk, the first after the
//!   first-chunk delay (the time to first token), each later one after the
//!   chunk delay; then at once `response.output_text.done`,
//!   `response.content_part.done`, `response.output_item.done` and
//!   `response.completed`. Each event is exactly
//!   `event: <type>\ndata: <one-line JSON>\n\n`, the JSON's `type` the same
//!   and its `sequence_number` counting from 0. Ids are `resp_mock<n>` and
//!   `msg_mock<n>`, with the `n` of `x-request-id`. `x-mock-chunks` is at most
//!   [`MAX_RESPONSE_CHUNKS`] there; the model name is echoed cut to 256 bytes
//!   and `instructions` to 4 KiB, so that what is kept stays small.
//! * A response is kept (unless created with `"store": false`) from the
//!   moment it is created, whatever becomes of its stream: a retrieval sees
//!   it completed. The oldest goes first. `GET /v1/responses/{id}` answers
//!   with it; with `?stream=true` it regenerates the same events (the
//!   retrieval's pacing headers apply, its chunk count is the original's),
//!   with `&starting_after=N` only those numbered above `N`.
//!   `POST /v1/responses/{id}/cancel` marks a background response
//!   `cancelled` for good (its replay then has no `response.completed`) and
//!   answers others `400`; `DELETE` forgets it; `/input_items` lists its input
//!   text (the first 4 KiB) as one user message. An unknown id gets `404`.
//! * Non-streaming answers wait headers delay + first-chunk delay. The
//!   stream-shaping faults only affect streams; a non-streaming request for
//!   `fail-midstream` & co. gets a normal answer.
//! * `usage.prompt_tokens` (Responses: `input_tokens`) is the request body
//!   length / 4 (rounded up, at least 1); `completion_tokens`
//!   (`output_tokens`) is the number of content chunks.
//!
//! # Fault schedules
//!
//! Set from a test through the [`MockUpstream`] that [`spawn`] returns; each
//! mock instance has its own. They act on `/v1` requests only (any path,
//! method or model), each request taking its fault the moment it arrives (its
//! head parsed, before its body is read), in arrival order.
//!
//! * [`MockUpstream::fail_next`]`(n, status, retry_after)`: the next `n`
//!   requests are answered at once (no configured or requested delay) with
//!   `status` and `{"error":{"message","type","param","code"}}`: 429 is type
//!   `requests`, code `rate_limit_exceeded`; 401 `invalid_request_error`,
//!   `invalid_api_key`; other 4xx `invalid_request_error`; 5xx (and anything
//!   else) `server_error`, code `null`. With `retry_after`, also
//!   `retry-after` (whole seconds, rounded up) and `retry-after-ms`
//!   (rounded up). The request body is still read (and captured), so an
//!   HTTP/1.1 connection stays reusable. The usual `/v1` headers are set.
//! * [`MockUpstream::drop_next`]`(n)`: the next `n` requests get no answer:
//!   their connection is closed at once through the acceptor's close handle
//!   ([`crate::connection::ConnectionInfo::close`]), without reading the
//!   body. On HTTP/1.1 the client sees the socket close (FIN, or RST if
//!   unread bytes were left) before any response byte; on HTTP/2 the whole
//!   connection goes without a GOAWAY, so every stream on it fails (the
//!   "connection lost" case) and its other streams count as cancelled. A
//!   dropped request itself is counted only in `requests_received` and
//!   `scheduled_drops`.
//! * [`MockUpstream::goaway_after_resets`]`(Some(n))`: once `n` requests on
//!   one HTTP/2 connection have ended without the mock finishing them (the
//!   client reset them: what `*_cancelled` counts, plus resets before the
//!   request body was read), the mock shuts that connection as a server's
//!   rapid-reset protection does: a GOAWAY (hyper's graceful one: `NO_ERROR`,
//!   last stream 2^31-1, which is all hyper can send), written to the socket,
//!   then the connection is closed at once, so the streams still in flight
//!   on it fail and the client has been told not to open more. Resets are
//!   counted per connection from its start. HTTP/1.1 connections are never
//!   shut this way: a client cancels there by closing the connection anyway.
//! * [`MockUpstream::clear_faults`] forgets the queued schedules and turns the
//!   reset limit off; requests already in flight keep their fate.
//!
//! `fail_next` and `drop_next` share one queue: each call queues its `n`
//! requests behind those of the calls before it, so `fail_next(1, 503, ..)`
//! then `drop_next(1)` then `fail_next(2, 429, ..)` fails the next request,
//! drops the one after, then rate-limits two. While a scheduled fault is
//! queued it wins over everything, the model faults included; those work as
//! ever for the other requests. A mock with nothing queued takes no lock per
//! request.
//!
//! # Connections
//!
//! Each mock advertises [`MockSettings::h2_max_concurrent_streams`] on its
//! HTTP/2 connections (`SETTINGS_MAX_CONCURRENT_STREAMS`; default
//! [`H2_MAX_CONCURRENT_STREAMS`]). A client queues the streams beyond it; the
//! streams it opens beyond it before it has the mock's `SETTINGS` are refused
//! (`RST_STREAM` `REFUSED_STREAM`, safe to retry). `connections_active` and
//! `max_streams_per_connection` ([`StatsSnapshot`]) show how a client spreads
//! its requests: a connection is open from its first byte until it and every
//! request on it are gone, and a request counts on its connection from its
//! arrival until hyper drops it.
//!
//! # Counters
//!
//! See [`StatsSnapshot`]. `requests_received` counts every `/v1` request on
//! arrival, whatever becomes of it: the number of attempts that reached this
//! upstream. A unit of work is counted from the moment its
//! request body has been read (the mock cannot know earlier whether it will
//! stream), through every deliberate wait, until its last byte is handed to
//! hyper (completed) or hyper drops it (cancelled). `fail-midstream`'s abort
//! is neither. hyper drops the response future or body as soon as it sees the
//! client go: on HTTP/1 an EOF or reset on the socket (half-close is off), on
//! HTTP/2 an `RST_STREAM` or the connection closing. This is watched while
//! waiting for headers, between chunks and during `hang` alike, so the
//! counters move within a scheduler tick of the FIN/RST arriving. One HTTP/1
//! exception: a client that pipelines a further request behind a streaming
//! one stops hyper from watching for EOF until the stream ends.
//!
//! Quick start (tests and the demo use [`spawn`]):
//!
//! ```text
//! let (addr, upstream, shutdown, task) =
//!     mock::spawn(MockSettings::default(), "127.0.0.1:0".parse()?).await?;
//! // point the gateway at http://{addr}/v1; optionally make it misbehave:
//! upstream.fail_next(2, 503, Some(Duration::from_secs(1)));
//! // then:
//! upstream.stats().wait_until(Duration::from_secs(1), |s| s.streams_active == 0).await;
//! shutdown.cancel();
//! task.await??;
//! ```

mod faults;
mod handler;
mod responses;
mod sse;
mod stats;
mod store;
#[cfg(test)]
mod tests;

/// Decimal digits without the formatting machinery, also for the gateway's refusal headers.
pub(crate) use sse::push_u64;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::connection::ConnectionInfo;
use crate::server::{self, ConnectionSettings, H2ResetLimits, Handler, Shutdown};
use faults::{ConnState, Scheduled};
use sse::MockBody;

pub use handler::CapturedRequest;
pub use sse::SENT_US_COMMENT;
pub use stats::{MockStats, StatsSnapshot};

/// The model name to use for an ordinary, well-behaved response. Any name
/// that is not a [`Fault`] model behaves the same way; this one is simply the
/// one listed first by `GET /v1/models`.
pub const DEFAULT_MODEL: &str = "mock-1";

/// Largest request body accepted; larger ones get `413`. Big enough for any
/// realistic prompt, small enough that a misbehaving test cannot exhaust
/// memory through the mock.
pub const MAX_BODY_BYTES: usize = 8 * 1024 * 1024;

/// Number of `x` bytes in the single giant `data:` line sent by the
/// `fail-oversized` model (the line is `data: ` + this many `x` + `\n\n`).
pub const OVERSIZED_LINE_BYTES: usize = 4 * 1024 * 1024;

/// `system_fingerprint` on every completion object.
pub const SYSTEM_FINGERPRINT: &str = "fp_tidegate_mock";

/// The message of the errors that `fail-error-event` and
/// `fail-response-failed` put in a stream.
pub const STREAM_ERROR_MESSAGE: &str =
    "The server had an error while processing your request. (mock)";

/// Default [`MockSettings::stored_responses`]: how many `/v1/responses`
/// answers the mock keeps for retrieval.
pub const STORED_RESPONSES: usize = 1024;

/// Most content chunks of one `/v1/responses` answer (a larger
/// `x-mock-chunks` is a `400`): its closing events each carry the whole text,
/// so this bounds them (about 600 KiB).
pub const MAX_RESPONSE_CHUNKS: u32 = 100_000;

/// Default per-connection HTTP/2 stream limit
/// ([`MockSettings::h2_max_concurrent_streams`]). hyper's default (200) would
/// make a gateway that multiplexes a load test over a few HTTP/2 connections
/// queue behind the mock rather than behind itself.
pub const H2_MAX_CONCURRENT_STREAMS: u32 = 16_384;

/// A client must send its request head within this. hyper's HTTP/1.1 timer also runs while a
/// keep-alive connection waits for its next request, so this is far above the gateway's
/// upstream pool idle timeout (60 s): the mock never closes a pooled connection the gateway may
/// be about to reuse.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(300);

/// Largest request head: room for every header a gateway may forward.
const MAX_HEADER_BYTES: usize = 64 * 1024;

/// Most unsent bytes held per HTTP/2 stream (hyper's own default, 400 KiB).
const MAX_BUFFERED_BYTES: usize = 400 * 1024;

/// How long [`MockUpstream::serve`] lets in-flight connections finish after
/// shutdown is requested before dropping them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);

/// Defaults for every response; each can be overridden per request by header.
#[derive(Debug, Clone)]
pub struct MockSettings {
    /// Content chunks per stream (and words in a non-streaming answer). The
    /// default of 24 is long enough to observe relaying, short enough to be
    /// quick, and the canned paragraph exactly, so the default answer ends at
    /// its full stop. Override per request with `x-mock-chunks` (other counts
    /// cut the paragraph, or repeat it, word by word).
    pub chunks: u32,
    /// Pause before each content chunk. 40 ms resembles a real model's token
    /// rate, so the demo looks like streaming and load tests hold many streams
    /// open at once. Override with `x-mock-chunk-delay-ms`.
    pub chunk_delay: Duration,
    /// Pause before sending the response headers, to exercise the gateway's
    /// connect/header timeouts and cancellation before the response starts.
    /// Override with `x-mock-headers-delay-ms`.
    pub headers_delay: Duration,
    /// Pause after the headers and before the first chunk (time to first
    /// token). Override with `x-mock-first-delay-ms`.
    pub first_chunk_delay: Duration,
    /// First-chunk delay for the `slow-first-token` model, so first-token
    /// timeouts can be tested without headers of any kind. The default of
    /// 10 s is longer than any sane first-token timeout in a test.
    pub slow_first_token_delay: Duration,
    /// Cap on any single wait, including `hang`, so that nothing the mock does
    /// can keep a test or a socket alive forever.
    pub max_wait: Duration,
    /// `SETTINGS_MAX_CONCURRENT_STREAMS` this mock advertises on each of its
    /// HTTP/2 connections: a client must queue (or open another connection
    /// for) any stream beyond it, and a stream it opens anyway is refused
    /// (`RST_STREAM` `REFUSED_STREAM`). Lower it to test a gateway's HTTP/2
    /// pool against a busy upstream. Default [`H2_MAX_CONCURRENT_STREAMS`].
    /// 0 refuses every stream.
    pub h2_max_concurrent_streams: u32,
    /// How many `/v1/responses` answers (those created with `store` true, the
    /// default) this mock keeps for `GET /v1/responses/{id}` and the other
    /// retrieval routes; the oldest goes first. Default [`STORED_RESPONSES`];
    /// 0 keeps none.
    pub stored_responses: usize,
}

impl Default for MockSettings {
    fn default() -> Self {
        MockSettings {
            chunks: sse::WORDS.len() as u32,
            chunk_delay: Duration::from_millis(40),
            headers_delay: Duration::ZERO,
            first_chunk_delay: Duration::ZERO,
            slow_first_token_delay: Duration::from_secs(10),
            max_wait: Duration::from_secs(600),
            h2_max_concurrent_streams: H2_MAX_CONCURRENT_STREAMS,
            stored_responses: STORED_RESPONSES,
        }
    }
}

/// Faults injected by choosing a special model name. Each works the same way
/// on every completion route (`/v1/chat/completions`, `/v1/completions`) and
/// on `/v1/responses`; where the two differ, both are given. "The two
/// content chunks" of a Responses stream are its first two
/// `response.output_text.delta` events, after `response.created`,
/// `response.in_progress`, `response.output_item.added` and
/// `response.content_part.added`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Fault {
    /// `fail-429`: `429` with `retry-after: 1`, `retry-after-ms: 1000` and an
    /// OpenAI `rate_limit_exceeded` error (after the headers delay).
    RateLimited,
    /// `fail-500`: `500` with an OpenAI `server_error` (after the headers delay).
    ServerError,
    /// `fail-midstream`: the role chunk (Responses: the four opening events)
    /// and 2 content chunks, then (after one more chunk delay) the body
    /// fails, so hyper tears the stream down: on HTTP/1 the connection closes
    /// without the terminating chunk, on HTTP/2 the stream is reset with
    /// `INTERNAL_ERROR`. Never `[DONE]` (Responses: no terminal event).
    Midstream,
    /// `fail-no-done`: a normal stream that ends cleanly without `data: [DONE]`
    /// (Responses: without its terminal `response.completed`).
    NoDone,
    /// `fail-malformed`: `data: {this is not json\n\n` right after the role
    /// chunk, then the rest of a normal stream. Responses: right after
    /// `response.created`, with an `event: response.in_progress` line; it
    /// takes no sequence number.
    Malformed,
    /// `fail-oversized`: right after the role chunk (Responses: after
    /// `response.created`), one event whose `data:` line is
    /// [`OVERSIZED_LINE_BYTES`] of `x`, then the rest of a normal stream.
    Oversized,
    /// `hang`: never sends response headers; gives up after `max_wait` with
    /// `504`. Counted as a request, never as a stream.
    Hang,
    /// `slow-first-token`: headers at once, first chunk (Responses: first
    /// `response.output_text.delta`) after `slow_first_token_delay`
    /// (`x-mock-first-delay-ms` still overrides).
    SlowFirstToken,
    /// `fail-not-event-stream`: a streaming request gets the non-streaming
    /// JSON answer (`200 application/json`), as from an upstream that ignores
    /// `"stream": true`.
    NotEventStream,
    /// `fail-401`: `401` with an OpenAI `invalid_api_key` error whose message
    /// quotes the whole key of the request's `Authorization` header, as an
    /// upstream that echoes the key it was given.
    AuthRejected,
    /// `fail-400-echo-key`: `400` with an `invalid_request_error` whose
    /// message quotes the key likewise: an error a gateway relays, scrubbed.
    EchoKey,
    /// `fail-error-event`: the role chunk and 2 content chunks, then (after
    /// one more chunk delay) an error in the stream and a clean end, without
    /// `[DONE]`: chat and completions send
    /// `data: {"error":{"message":STREAM_ERROR_MESSAGE,"type":"server_error","param":null,"code":"server_error"}}`;
    /// Responses sends `event: error` with
    /// `{"type":"error","code":"server_error","message":..,"param":null,"sequence_number":..,"error":{"type":"server_error","code":"server_error","message":..,"param":null}}`
    /// (the flat fields are the documented `ResponseErrorEvent`, the nested
    /// object what OpenAI's servers send and what makes the SDKs raise) and
    /// no terminal event. See [`STREAM_ERROR_MESSAGE`].
    ErrorEvent,
    /// `fail-response-failed`, Responses only: the four opening events and 2
    /// deltas, then (after one more chunk delay) the terminal
    /// `response.failed`, whose response has status `failed`, error
    /// `{"code":"server_error","message":STREAM_ERROR_MESSAGE}`, the partial
    /// message (status `incomplete`) as output and `usage: null`; then a
    /// clean end. Chat and completions treat it as an ordinary model.
    ResponseFailed,
}

impl Fault {
    /// Every fault, in the order `GET /v1/models` lists them.
    pub const ALL: [Fault; 13] = [
        Fault::RateLimited,
        Fault::ServerError,
        Fault::Midstream,
        Fault::NoDone,
        Fault::Malformed,
        Fault::Oversized,
        Fault::Hang,
        Fault::SlowFirstToken,
        Fault::NotEventStream,
        Fault::AuthRejected,
        Fault::EchoKey,
        Fault::ErrorEvent,
        Fault::ResponseFailed,
    ];

    /// The model name that triggers this fault.
    pub fn model(self) -> &'static str {
        match self {
            Fault::RateLimited => "fail-429",
            Fault::ServerError => "fail-500",
            Fault::Midstream => "fail-midstream",
            Fault::NoDone => "fail-no-done",
            Fault::Malformed => "fail-malformed",
            Fault::Oversized => "fail-oversized",
            Fault::Hang => "hang",
            Fault::SlowFirstToken => "slow-first-token",
            Fault::NotEventStream => "fail-not-event-stream",
            Fault::AuthRejected => "fail-401",
            Fault::EchoKey => "fail-400-echo-key",
            Fault::ErrorEvent => "fail-error-event",
            Fault::ResponseFailed => "fail-response-failed",
        }
    }

    /// The fault a model name triggers, if any (exact, case-sensitive match).
    pub fn from_model(model: &str) -> Option<Fault> {
        Fault::ALL.into_iter().find(|f| f.model() == model)
    }
}

/// The text a normal response with `chunks` content chunks carries: what a
/// client gets by concatenating every streamed `delta.content` (or `text`, or
/// Responses `response.output_text.delta` `delta`), and exactly the
/// `message.content` (or `output_text`) of the non-streaming answer. Words cycle
/// through a fixed paragraph that contains a quoted word and an emoji, so the
/// gateway's JSON escaping and UTF-8 handling are exercised too; the default
/// chunk count is the whole paragraph, up to its last full stop.
pub fn expected_content(chunks: u32) -> String {
    sse::WORDS
        .iter()
        .cycle()
        .take(chunks as usize)
        .copied()
        .collect()
}

/// The mock server. Cheap to clone: clones share settings, counters and the
/// last captured request.
#[derive(Clone)]
pub struct MockUpstream {
    shared: Arc<handler::Shared>,
}

impl std::fmt::Debug for MockUpstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MockUpstream")
            .field("settings", &self.shared.settings)
            .field("stats", &self.shared.stats.snapshot())
            .finish()
    }
}

impl MockUpstream {
    /// A mock that answers with `settings` unless a request overrides them.
    pub fn new(settings: MockSettings) -> MockUpstream {
        MockUpstream {
            shared: Arc::new(handler::Shared::new(settings)),
        }
    }

    /// The live counters (the same ones `GET /stats` reports).
    pub fn stats(&self) -> Arc<MockStats> {
        Arc::clone(&self.shared.stats)
    }

    /// The defaults this mock was built with.
    pub fn settings(&self) -> &MockSettings {
        &self.shared.settings
    }

    /// The most recent `/v1` request (what `GET /stats/last-request` returns),
    /// for in-process tests that would rather not make an HTTP call.
    pub fn last_request(&self) -> Option<CapturedRequest> {
        self.shared.last_request()
    }

    /// The next `n` `/v1` requests, whatever their model or path, are
    /// answered at once with `status` and an OpenAI error body (type and code
    /// to match: 429 `rate_limit_exceeded`, 5xx `server_error`, ...), plus
    /// `retry-after` (whole seconds, rounded up) and `retry-after-ms` when
    /// `retry_after` is given. Queued behind the schedules already set
    /// (see the module doc, "Fault schedules"). Meant for 4xx and 5xx; a
    /// status outside 200–599 is answered as 500.
    pub fn fail_next(&self, n: u32, status: u16, retry_after: Option<Duration>) {
        let status = faults::failure_status(status);
        self.shared.faults.push(
            n,
            Scheduled::Fail {
                status,
                retry_after,
            },
        );
    }

    /// The next `n` `/v1` requests get no answer: the connection each came
    /// on is closed at once, on HTTP/2 with every other stream on it. Queued
    /// behind the schedules already set.
    pub fn drop_next(&self, n: u32) {
        self.shared.faults.push(n, Scheduled::Drop);
    }

    /// From now on, an HTTP/2 connection on which `n` requests have ended
    /// without the mock finishing them (the client reset them) is shut: GOAWAY,
    /// then closed, so the streams still in flight on it fail. `None` turns
    /// this off; `Some(0)` acts as `Some(1)`. Resets are counted per
    /// connection from its start, whatever the setting was then.
    pub fn goaway_after_resets(&self, n: Option<u32>) {
        self.shared.faults.set_goaway_after_resets(n);
    }

    /// Forgets every queued `fail_next`/`drop_next` and turns
    /// `goaway_after_resets` off. Requests already in flight keep their fate.
    pub fn clear_faults(&self) {
        self.shared.faults.clear();
    }

    /// Serves HTTP/1.1 and HTTP/2 (cleartext, prior knowledge) on `listener`
    /// until `shutdown` is cancelled, then stops accepting, asks every
    /// connection to finish gracefully, waits up to 1 s for them and drops
    /// whatever is still open (which counts its in-flight work as cancelled).
    ///
    /// The gateway's own accept loop ([`server::accept_loop`]) does the
    /// accepting: accept errors never end it, and resource exhaustion (e.g.
    /// `EMFILE`) pauses it briefly with a throttled warning.
    pub async fn serve(self, listener: TcpListener, shutdown: CancellationToken) -> io::Result<()> {
        let tracker = TaskTracker::new();
        let stop = Shutdown {
            drain: shutdown,
            // Cancelled only if the grace period runs out: connections still
            // open then are dropped.
            force: CancellationToken::new(),
        };
        let connections = self.shared.stats.connections.clone();
        let settings = mock_connection_settings(&self.shared.settings);
        server::accept_loop(
            listener,
            MockRoutes {
                shared: self.shared,
                connection: None,
            },
            settings,
            connections,
            stop.clone(),
            tracker.clone(),
        )
        .await;

        tracker.close();
        if tokio::time::timeout(SHUTDOWN_GRACE, tracker.wait())
            .await
            .is_err()
        {
            tracing::debug!(
                open = tracker.len(),
                "mock upstream: grace period over; dropping connections"
            );
            stop.force.cancel();
            // Dropping a connection is synchronous once its task runs; the
            // bound only guards against a wedged runtime.
            let _ = tokio::time::timeout(SHUTDOWN_GRACE, tracker.wait()).await;
        }
        Ok(())
    }
}

/// How the mock serves its connections: generous, since its client is a
/// gateway under load test, not the open internet.
fn mock_connection_settings(settings: &MockSettings) -> ConnectionSettings {
    ConnectionSettings {
        header_read_timeout: HEADER_READ_TIMEOUT,
        max_header_bytes: MAX_HEADER_BYTES,
        max_buffered_bytes: MAX_BUFFERED_BYTES,
        h2_max_concurrent_streams: settings.h2_max_concurrent_streams,
        // The gateway legitimately resets many streams when its clients
        // leave; the anti-abuse limits are for the open internet.
        h2_reset_limits: H2ResetLimits {
            pending_accept: 4096,
            local_error: None,
        },
        h2_keepalive: None,
        caps: None,
        proxy_header_timeout: None,
        tls: None,
    }
}

/// The mock's request handler for the shared accept loop.
#[derive(Clone)]
struct MockRoutes {
    shared: Arc<handler::Shared>,
    /// The connection served; `None` only in the listener's own copy, from
    /// which the acceptor makes one per connection ([`Handler::on_connection`]).
    connection: Option<Arc<ConnState>>,
}

impl Handler for MockRoutes {
    type Body = MockBody;

    fn on_connection(self, info: &ConnectionInfo) -> Self {
        let connection = ConnState::open(
            info,
            Arc::clone(&self.shared.stats),
            Arc::clone(&self.shared.faults),
        );
        MockRoutes {
            shared: self.shared,
            connection: Some(connection),
        }
    }

    fn goaway(&self) -> impl Future<Output = ()> + Send + 'static {
        let signal = self.connection.as_ref().map(|c| c.goaway_signal());
        async move {
            match signal {
                Some(signal) => signal.await,
                None => std::future::pending().await,
            }
        }
    }

    fn call(
        self,
        _peer: SocketAddr,
        request: Request<Incoming>,
    ) -> impl Future<Output = Response<MockBody>> + Send + 'static {
        handler::handle(self.shared, self.connection, request)
    }
}

/// Binds `addr` (use port 0 for an ephemeral port), spawns
/// [`MockUpstream::serve`] on the current runtime and returns the bound
/// address, the upstream (for its stats), the token that stops it, and the
/// serve task.
pub async fn spawn(
    settings: MockSettings,
    addr: SocketAddr,
) -> io::Result<(
    SocketAddr,
    MockUpstream,
    CancellationToken,
    JoinHandle<io::Result<()>>,
)> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let upstream = MockUpstream::new(settings);
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(upstream.clone().serve(listener, shutdown.clone()));
    Ok((bound, upstream, shutdown, task))
}
