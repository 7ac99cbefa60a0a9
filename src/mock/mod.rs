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
//! * `POST /v1/embeddings` and `GET /v1/models` answer with small fixed data;
//! * special model names inject faults ([`Fault`]): rate limits, server
//!   errors, streams that break in the middle, never finish, carry garbage or
//!   a giant line, or never answer at all;
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
//! * Non-streaming answers wait headers delay + first-chunk delay. The
//!   stream-shaping faults only affect streams; a non-streaming request for
//!   `fail-midstream` & co. gets a normal answer.
//! * `usage.prompt_tokens` is the request body length / 4 (rounded up, at
//!   least 1); `completion_tokens` is the number of content chunks.
//!
//! # Counters
//!
//! See [`StatsSnapshot`]. A unit of work is counted from the moment its
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
//! // point the gateway at http://{addr}/v1, then:
//! upstream.stats().wait_until(Duration::from_secs(1), |s| s.streams_active == 0).await;
//! shutdown.cancel();
//! task.await??;
//! ```

mod handler;
mod sse;
mod stats;
#[cfg(test)]
mod tests;

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

use crate::server::{self, ConnectionSettings, H2ResetLimits, Handler, Shutdown};
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

/// Per-connection HTTP/2 stream limit. hyper's default (200) would make a
/// gateway that multiplexes a load test over a few HTTP/2 connections queue
/// behind the mock rather than behind itself.
const H2_MAX_CONCURRENT_STREAMS: u32 = 16_384;

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
    /// quick. Override per request with `x-mock-chunks`.
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
}

impl Default for MockSettings {
    fn default() -> Self {
        MockSettings {
            chunks: 24,
            chunk_delay: Duration::from_millis(40),
            headers_delay: Duration::ZERO,
            first_chunk_delay: Duration::ZERO,
            slow_first_token_delay: Duration::from_secs(10),
            max_wait: Duration::from_secs(600),
        }
    }
}

/// Faults injected by choosing a special model name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Fault {
    /// `fail-429`: `429` with `retry-after: 1`, `retry-after-ms: 1000` and an
    /// OpenAI `rate_limit_exceeded` error (after the headers delay).
    RateLimited,
    /// `fail-500`: `500` with an OpenAI `server_error` (after the headers delay).
    ServerError,
    /// `fail-midstream`: the role chunk and 2 content chunks, then (after one
    /// more chunk delay) the body fails, so hyper tears the stream down: on
    /// HTTP/1 the connection closes without the terminating chunk, on HTTP/2
    /// the stream is reset with `INTERNAL_ERROR`. Never `[DONE]`.
    Midstream,
    /// `fail-no-done`: a normal stream that ends cleanly without `data: [DONE]`.
    NoDone,
    /// `fail-malformed`: `data: {this is not json\n\n` right after the role
    /// chunk, then the rest of a normal stream.
    Malformed,
    /// `fail-oversized`: right after the role chunk, one event whose `data:`
    /// line is [`OVERSIZED_LINE_BYTES`] of `x`, then the rest of a normal stream.
    Oversized,
    /// `hang`: never sends response headers; gives up after `max_wait` with
    /// `504`. Counted as a request, never as a stream.
    Hang,
    /// `slow-first-token`: headers at once, first chunk after
    /// `slow_first_token_delay` (`x-mock-first-delay-ms` still overrides).
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
}

impl Fault {
    /// Every fault, in the order `GET /v1/models` lists them.
    pub const ALL: [Fault; 11] = [
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
        }
    }

    /// The fault a model name triggers, if any (exact, case-sensitive match).
    pub fn from_model(model: &str) -> Option<Fault> {
        Fault::ALL.into_iter().find(|f| f.model() == model)
    }
}

/// The text a normal response with `chunks` content chunks carries: what a
/// client gets by concatenating every streamed `delta.content` (or `text`),
/// and exactly the `message.content` of the non-streaming answer. Words cycle
/// through a fixed sentence that contains a quoted word and an emoji, so the
/// gateway's JSON escaping and UTF-8 handling are exercised too.
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
        server::accept_loop(
            listener,
            MockRoutes(self.shared),
            mock_connection_settings(),
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
fn mock_connection_settings() -> ConnectionSettings {
    ConnectionSettings {
        header_read_timeout: HEADER_READ_TIMEOUT,
        max_header_bytes: MAX_HEADER_BYTES,
        max_buffered_bytes: MAX_BUFFERED_BYTES,
        h2_max_concurrent_streams: H2_MAX_CONCURRENT_STREAMS,
        // The gateway legitimately resets many streams when its clients
        // leave; the anti-abuse limits are for the open internet.
        h2_reset_limits: H2ResetLimits {
            pending_accept: 4096,
            local_error: None,
        },
        h2_keepalive: false,
    }
}

/// The mock's request handler for the shared accept loop.
#[derive(Clone)]
struct MockRoutes(Arc<handler::Shared>);

impl Handler for MockRoutes {
    type Body = MockBody;

    fn call(
        self,
        _peer: SocketAddr,
        request: Request<Incoming>,
    ) -> impl Future<Output = Response<MockBody>> + Send + 'static {
        handler::handle(self.0, request)
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
