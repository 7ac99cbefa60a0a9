//! The body of one streaming response: upstream SSE in, whole events out.
//!
//! This body is the single place where everything that can happen to a stream meets: upstream
//! bytes, the idle and duration limits, heartbeats requested by the shared scheduler, and an
//! end requested by an operator or the drain. Because only *whole* blocks (everything up to the
//! blank line that ends an event) are handed to the client, anything merged in here lands
//! between events, never inside one, and a stream ends exactly once: after `data: [DONE]`, or
//! with one final `data: {"error":...}` event.
//!
//! Bytes pass through untouched: a chunk that holds whole blocks is forwarded as a zero-copy
//! slice; only a block split across reads is held (bounded by `max_event_bytes`) until it is
//! complete. There is no coalescing timer, and the upstream is read only when the client's
//! connection asks for more: a client that does not read stops the upstream being read
//! (backpressure), and the scheduler ends it as a slow client if that lasts.
//!
//! A stream may start before the upstream has answered ("early commit", so that heartbeats can
//! keep idle proxies from cutting a long wait): then the body first waits for the upstream's
//! response itself, and an upstream error becomes the final event.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use super::deadline::Deadlines;
use super::grammar::{EventKind, Grammar};
use super::lifetime::{Outcome, StreamLifetime};
use super::{has_content_type, log_rejected_credentials, TEXT_EVENT_STREAM};
use crate::error::GatewayError;
use crate::registry::StreamState;
use crate::sse::parser::{ParseError, Parser};
use crate::upstream::body::UpstreamBody;
use crate::upstream::{error_chain, rejects_our_credentials, scrub_key};
use bytes::{Bytes, BytesMut};
use http::{HeaderMap, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};

const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";

/// The heartbeat: an SSE comment, which every SSE client (and the OpenAI SDKs) ignores.
pub const HEARTBEAT: &[u8] = b": ping\n\n";

/// Most bytes of an upstream error body read after an early commit (the rest is ignored).
pub const MAX_UPSTREAM_ERROR_BODY: usize = 64 * 1024;

/// What an upstream's answer to a streaming request is. Decided here, once, for an answer that
/// arrives before the client's response has started (`super::handle`) and for one that arrives
/// after an early answer ([`SseRelay::awaiting`]); each path then does what it can: the first
/// relays a failed answer as it is, the second turns it into the final event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamAnswer {
    /// A 2xx `text/event-stream`: relayed event by event.
    EventStream,
    /// A 401 or 403: the upstream rejected the gateway's own credentials, which is never the
    /// client's to see (`upstream::rejects_our_credentials`).
    CredentialsRejected,
    /// An error status: the stream failed with the upstream's own error.
    ErrorStatus,
    /// A 2xx that is not an event stream (e.g. a JSON completion from an upstream that ignores
    /// `"stream": true`).
    NotEventStream,
}

impl StreamAnswer {
    pub fn of(status: StatusCode, headers: &HeaderMap) -> StreamAnswer {
        if rejects_our_credentials(status) {
            StreamAnswer::CredentialsRejected
        } else if !status.is_success() {
            StreamAnswer::ErrorStatus
        } else if has_content_type(headers, TEXT_EVENT_STREAM) {
            StreamAnswer::EventStream
        } else {
            StreamAnswer::NotEventStream
        }
    }
}

/// The upstream's response, still on its way.
pub type PendingResponse<B> =
    Pin<Box<dyn Future<Output = Result<Response<B>, GatewayError>> + Send>>;

/// Where the relay reads from.
enum Source<B> {
    /// Committed early: the upstream has not sent its response headers yet. `key` is the
    /// gateway's upstream key, scrubbed from an error body that becomes the final event.
    Awaiting {
        pending: PendingResponse<B>,
        key: Option<Arc<str>>,
    },
    /// The upstream's event stream.
    Events(B),
    /// The upstream answered with an error status after the commit. Boxed: rare, and as large
    /// as two of the other states.
    ErrorBody(Box<ErrorAnswer<B>>),
    /// Finished or cancelled (dropping the upstream closes its request).
    Closed,
}

/// An upstream error answer that arrived after the commit: its body (up to
/// [`MAX_UPSTREAM_ERROR_BODY`]), scrubbed of `key`, becomes the final event.
struct ErrorAnswer<B> {
    body: B,
    status: StatusCode,
    collected: BytesMut,
    key: Option<Arc<str>>,
}

/// The relay of one upstream event stream to one client. Generic over the upstream body only so
/// that tests can feed it reads split at arbitrary points.
pub struct SseRelay<B = UpstreamBody> {
    source: Source<B>,
    parser: Parser,
    /// Raw bytes of a block that has started but not ended: at most `max_event_bytes` plus the
    /// few bytes the parser does not count (a leading BOM, the LF of a split CRLF).
    partial: BytesMut,
    /// True until the first block is forwarded: a leading BOM is dropped from it, so that a
    /// heartbeat sent before the first event can never push the BOM into a field name.
    at_stream_start: bool,
    /// Whole blocks ready for the client.
    out: Option<Bytes>,
    /// The final error event, sent after `out`.
    final_event: Option<Bytes>,
    /// Whether the upstream itself sent an error event (then its end needs no error of ours).
    upstream_sent_error: bool,
    /// The API's stream grammar: what ends the stream, what is output, what our errors look
    /// like.
    grammar: Grammar,
    /// The highest `sequence_number` relayed (Responses): our final event gets the next one.
    last_sequence: Option<u64>,
    deadlines: Deadlines,
    lifetime: StreamLifetime,
    /// Upstream reads so far, for sampling the relay delay one read in
    /// [`RELAY_DELAY_SAMPLE_EVERY`].
    reads: u32,
    /// When the sampled read's bytes came from the upstream; observed when the client's
    /// connection next asks for a frame, having taken them.
    sampled_read_at: Option<std::time::Instant>,
    /// With resume on: the `id:` given to each event, and the events for the replay log. Boxed:
    /// one pointer when off.
    ids: Option<Box<EventIds>>,
}

/// A resumable stream's event ids. Every event the relay sends (the final error event and
/// `[DONE]` included) gets an `id: <n>` line first, n = 1, 2, ...; an SSE client returns the
/// last one it saw as `Last-Event-ID`. Comment blocks and heartbeats get none and are not kept.
#[derive(Debug)]
pub struct EventIds {
    /// The id of the next event.
    next: u64,
    /// Blocks completed in the current read: (end offset in the read, dispatched an event).
    ends: Vec<(usize, bool)>,
    /// Where each tagged event lies in the frame being built: (id, start, end).
    spans: Vec<(u64, usize, usize)>,
    /// Events tagged and not yet taken into the replay log ([`SseRelay::drain_fresh_events`]):
    /// (id, the event's bytes with its `id:` line).
    fresh: Vec<(u64, Bytes)>,
}

impl EventIds {
    fn new() -> EventIds {
        EventIds {
            next: 1,
            ends: Vec::new(),
            spans: Vec::new(),
            fresh: Vec::new(),
        }
    }

    /// Writes `id: <next>` and `event` into `out`, and remembers where it lies. The event's own
    /// `id` field lines are left out: the upstream's ids would override ours in the client, and
    /// a resume would then ask for an id this gateway never gave.
    fn tag_into(&mut self, out: &mut BytesMut, event: &[u8]) {
        let start = out.len();
        // Writing to a BytesMut cannot fail.
        let _ = writeln!(out, "id: {}", self.next);
        if has_id_field(event) {
            for line in lines_with_ends(event).filter(|line| !is_id_field(line)) {
                out.extend_from_slice(line);
            }
        } else {
            out.extend_from_slice(event);
        }
        self.spans.push((self.next, start, out.len()));
        self.next += 1;
    }

    /// Moves the spans of the frozen frame into `fresh`, as slices of it.
    fn keep(&mut self, frame: &Bytes) {
        for (id, start, end) in self.spans.drain(..) {
            self.fresh.push((id, frame.slice(start..end)));
        }
    }

    /// The whole blocks of one read with an `id:` line before each event. `blocks` holds them
    /// from its start; `self.ends` are their ends counted from `shift` bytes before it.
    fn tag_blocks(&mut self, blocks: &Bytes, shift: isize) -> Bytes {
        let mut out = BytesMut::with_capacity(blocks.len() + self.ends.len() * 16);
        let mut start = 0;
        let ends = std::mem::take(&mut self.ends);
        for &(end, dispatched) in &ends {
            let end = (end as isize + shift).clamp(start as isize, blocks.len() as isize) as usize;
            let block = &blocks[start..end];
            if dispatched {
                // A block that starts with LF carries the second half of the CRLF that ended
                // the one before (split across reads): that CR already ended the line, and the
                // LF after our `id:` line would end the event early.
                let block = block.strip_prefix(b"\n").unwrap_or(block);
                self.tag_into(&mut out, block);
            } else {
                out.extend_from_slice(block);
            }
            start = end;
        }
        self.ends = ends;
        self.ends.clear();
        let frame = out.freeze();
        self.keep(&frame);
        frame
    }
}

/// Whether an event block holds an `id` field line (`id`, or `id:` and a value), at the start
/// of any line. A quick look first: most blocks have no "id" at all.
fn has_id_field(block: &[u8]) -> bool {
    memchr::memmem::find(block, b"id").is_some() && lines_with_ends(block).any(is_id_field)
}

/// Whether `line` (with its line end) is an `id` field: the name `id`, then `:` or the end.
fn is_id_field(line: &[u8]) -> bool {
    let name_end = line
        .iter()
        .position(|&b| b == b':' || b == b'\r' || b == b'\n')
        .unwrap_or(line.len());
    &line[..name_end] == b"id"
}

/// The lines of an SSE block, each with its own end (CRLF, CR or LF; the last may have none).
fn lines_with_ends(block: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = block;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let end = match memchr::memchr2(b'\r', b'\n', rest) {
            None => rest.len(),
            Some(i) if rest[i] == b'\r' && rest.get(i + 1) == Some(&b'\n') => i + 2,
            Some(i) => i + 1,
        };
        let (line, tail) = rest.split_at(end);
        rest = tail;
        Some(line)
    })
}

/// One upstream read in this many has its relay delay observed: the clock and the histogram
/// cost a few hundred instructions, an event about 11,000 (`loadtest/RESULTS.md`).
pub const RELAY_DELAY_SAMPLE_EVERY: u32 = 16;

/// How processing one chunk stopped early.
enum Stop {
    /// The grammar's last event (relayed); `failed`: the upstream says the response failed.
    End {
        failed: bool,
    },
    /// The upstream's end of stream in another API's grammar (not relayed).
    Eof,
    Malformed,
}

impl<B> SseRelay<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::error::Error + 'static,
{
    /// A relay of an upstream event stream whose headers are in.
    pub fn new(
        upstream: B,
        max_event_bytes: usize,
        deadlines: Deadlines,
        lifetime: StreamLifetime,
    ) -> SseRelay<B> {
        lifetime
            .handle()
            .advance_state(StreamState::WaitingForFirstToken);
        SseRelay::with_source(
            Source::Events(upstream),
            max_event_bytes,
            deadlines,
            lifetime,
        )
    }

    /// A relay committed before the upstream answered: it waits for `pending` itself. `key`
    /// is the gateway's upstream key, never to be relayed.
    pub fn awaiting(
        pending: PendingResponse<B>,
        key: Option<Arc<str>>,
        max_event_bytes: usize,
        deadlines: Deadlines,
        lifetime: StreamLifetime,
    ) -> SseRelay<B> {
        SseRelay::with_source(
            Source::Awaiting { pending, key },
            max_event_bytes,
            deadlines,
            lifetime,
        )
    }

    fn with_source(
        source: Source<B>,
        max_event_bytes: usize,
        deadlines: Deadlines,
        lifetime: StreamLifetime,
    ) -> SseRelay<B> {
        SseRelay {
            source,
            parser: Parser::new(max_event_bytes),
            partial: BytesMut::new(),
            at_stream_start: true,
            out: None,
            final_event: None,
            upstream_sent_error: false,
            grammar: Grammar::Chunks,
            last_sequence: None,
            deadlines,
            lifetime,
            reads: 0,
            sampled_read_at: None,
            ids: None,
        }
    }

    /// Reads the stream in `grammar` (chat completions' by default).
    pub fn with_grammar(mut self, grammar: Grammar) -> SseRelay<B> {
        self.grammar = grammar;
        self
    }

    /// Turns on event ids (resume): see [`EventIds`].
    pub fn enable_event_ids(&mut self) {
        self.ids = Some(Box::new(EventIds::new()));
    }

    /// The id the next event will get (1 before the first), with event ids on.
    pub fn next_event_id(&self) -> Option<u64> {
        self.ids.as_ref().map(|ids| ids.next)
    }

    /// Hands every event tagged since the last call to `keep`, in order.
    pub fn drain_fresh_events(&mut self, mut keep: impl FnMut(u64, Bytes)) {
        if let Some(ids) = self.ids.as_deref_mut() {
            for (id, bytes) in ids.fresh.drain(..) {
                keep(id, bytes);
            }
        }
    }

    /// Forgets what is ready to send and not sent: a resumed stream sends it from the replay
    /// log instead, where every tagged event already is.
    pub fn discard_unsent(&mut self) {
        self.out = None;
        self.final_event = None;
    }

    /// The stream's lifetime: its registry handle and how it ended.
    pub fn lifetime(&self) -> &StreamLifetime {
        &self.lifetime
    }

    /// Sets the final error event (tagged with the next id when ids are on).
    fn set_final_event(&mut self, event: Bytes) {
        self.final_event = Some(match self.ids.as_deref_mut() {
            Some(ids) => {
                let mut out = BytesMut::with_capacity(event.len() + 16);
                ids.tag_into(&mut out, &event);
                let frame = out.freeze();
                ids.keep(&frame);
                frame
            }
            None => event,
        });
    }

    /// The upstream's response arrived after the commit.
    fn on_upstream_response(&mut self, response: Response<B>, key: Option<Arc<str>>) {
        let (parts, body) = response.into_parts();
        // The idle clock starts now: the wait for headers had its own limit.
        self.deadlines.touch();
        match StreamAnswer::of(parts.status, &parts.headers) {
            StreamAnswer::EventStream => {
                self.lifetime
                    .handle()
                    .advance_state(StreamState::WaitingForFirstToken);
                self.source = Source::Events(body);
            }
            StreamAnswer::CredentialsRejected => {
                log_rejected_credentials(
                    parts.status,
                    self.lifetime.handle().upstream().unwrap_or_default(),
                );
                self.fail(GatewayError::UpstreamAuthFailed);
            }
            StreamAnswer::ErrorStatus => {
                self.source = Source::ErrorBody(Box::new(ErrorAnswer {
                    body,
                    status: parts.status,
                    collected: BytesMut::new(),
                    key,
                }))
            }
            // The event-stream headers are out: the answer cannot be relayed as it is.
            StreamAnswer::NotEventStream => self.fail(GatewayError::UpstreamNotEventStream),
        }
    }

    /// The upstream's error body is complete (or cut at the limit): it becomes the final event.
    fn on_error_body_end(&mut self) {
        if let Source::ErrorBody(answer) = &mut self.source {
            let ErrorAnswer {
                status,
                collected,
                key,
                ..
            } = answer.as_mut();
            let body = scrub_key(collected.split().freeze(), key.as_deref());
            let event = self
                .grammar
                .upstream_error_event(*status, &body, self.last_sequence);
            let (stream_id, request_id, client) = self.lifetime.log_fields();
            tracing::warn!(
                stream_id,
                request_id,
                %client,
                status = status.as_u16(),
                "upstream answered with an error status after the stream started"
            );
            self.lifetime.finish(Outcome::Failed(
                GatewayError::UpstreamStatus(status.as_u16()).code(),
            ));
            self.source = Source::Closed;
            self.set_final_event(event);
        }
    }

    /// Splits one upstream read into whole blocks (queued in `out`) and a held remainder.
    fn on_upstream_bytes(&mut self, chunk: Bytes) {
        if self.reads % RELAY_DELAY_SAMPLE_EVERY == 0 && self.lifetime.has_metrics() {
            self.sampled_read_at = Some(std::time::Instant::now());
        }
        self.reads = self.reads.wrapping_add(1);
        let mut complete_end = 0;
        let mut stop = None;
        let mut events = 0;
        let mut output = false;
        let mut saw_error = false;
        let mut usage = None;
        let grammar = self.grammar;
        let mut last_sequence = self.last_sequence;
        let mut ids = self.ids.as_deref_mut();
        let fed = self.parser.feed(&chunk, |end, event| {
            if stop.is_some() {
                return;
            }
            let dispatched = event.is_some();
            if let Some(event) = event {
                let classified = grammar.classify(&event.event_type, &event.data);
                match classified.kind {
                    EventKind::Done => stop = Some(Stop::End { failed: false }),
                    EventKind::End { failed } => {
                        stop = Some(Stop::End { failed });
                        events += 1;
                    }
                    EventKind::Event { output: o, error } => {
                        saw_error |= error;
                        output |= o;
                        events += 1;
                    }
                    // Neither is forwarded: cut before it.
                    EventKind::Eof => {
                        stop = Some(Stop::Eof);
                        return;
                    }
                    EventKind::Malformed => {
                        stop = Some(Stop::Malformed);
                        return;
                    }
                }
                usage = classified.usage.or(usage);
                if classified.sequence > last_sequence {
                    last_sequence = classified.sequence;
                }
            }
            complete_end = end;
            if let Some(ids) = ids.as_deref_mut() {
                ids.ends.push((end, dispatched));
            }
        });
        self.last_sequence = last_sequence;
        if events > 0 {
            let now = self.lifetime.now_ms();
            self.lifetime.handle().record_events(events, output, now);
        }
        self.upstream_sent_error |= saw_error;
        if let Some(usage) = usage {
            self.lifetime
                .count_tokens(usage.prompt_tokens, usage.completion_tokens);
        }

        if complete_end > 0 {
            // Where the read's offsets fall in `blocks`: after the held partial block, less a
            // dropped BOM.
            let mut shift = self.partial.len() as isize;
            let mut blocks = if self.partial.is_empty() {
                chunk.slice(..complete_end)
            } else {
                self.partial.extend_from_slice(&chunk[..complete_end]);
                self.partial.split().freeze()
            };
            if std::mem::take(&mut self.at_stream_start) && blocks.starts_with(UTF8_BOM) {
                blocks = blocks.slice(UTF8_BOM.len()..);
                shift -= UTF8_BOM.len() as isize;
            }
            if let Some(ids) = self.ids.as_deref_mut() {
                blocks = ids.tag_blocks(&blocks, shift);
            }
            self.out = Some(blocks);
        } else if let Some(ids) = self.ids.as_deref_mut() {
            ids.ends.clear();
        }
        match (stop, fed) {
            (Some(Stop::End { failed }), _) => {
                // Anything after the last event is ignored; the upstream request is finished.
                self.source = Source::Closed;
                self.partial = BytesMut::new();
                self.lifetime.finish(if failed {
                    // The upstream told the client why, in its own terminal event.
                    Outcome::Failed("upstream_error_event")
                } else {
                    Outcome::Completed
                });
            }
            (Some(Stop::Eof), _) => {
                self.partial = BytesMut::new();
                self.on_upstream_end();
            }
            (Some(Stop::Malformed), _) => self.fail(GatewayError::UpstreamMalformedEvent),
            (None, Err(ParseError::EventTooLarge { limit })) => {
                self.fail(GatewayError::UpstreamEventTooLarge { limit })
            }
            (None, Ok(())) => self.partial.extend_from_slice(&chunk[complete_end..]),
        }
    }

    /// Ends the stream with one final error event (after any whole blocks already queued) and
    /// cancels the upstream by dropping it. A partial block is discarded, never sent.
    fn fail(&mut self, error: GatewayError) {
        self.source = Source::Closed;
        self.partial = BytesMut::new();
        self.lifetime.finish(Outcome::Failed(error.code()));
        let (stream_id, request_id, client) = self.lifetime.log_fields();
        tracing::warn!(
            stream_id,
            request_id,
            %client,
            code = error.code(),
            "stream failed: {error}"
        );
        let event = self.grammar.error_event(&error, self.last_sequence);
        self.set_final_event(event);
    }

    /// The upstream body ended (cleanly or not).
    fn on_upstream_end(&mut self) {
        if self.upstream_sent_error {
            // The upstream already told the client what went wrong in its own error event.
            self.source = Source::Closed;
            self.lifetime
                .finish(Outcome::Failed("upstream_error_event"));
        } else {
            self.fail(GatewayError::UpstreamIncomplete(self.grammar.end_marker()));
        }
    }

    /// Advances the source by one step: `Ready` when something changed (a read, a state
    /// change, an end), `Pending` when the upstream has nothing now.
    fn poll_source(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        match &mut self.source {
            Source::Closed => Poll::Ready(()),
            Source::Awaiting { pending, key } => match pending.as_mut().poll(cx) {
                Poll::Ready(Ok(response)) => {
                    let key = key.take();
                    self.on_upstream_response(response, key);
                    Poll::Ready(())
                }
                Poll::Ready(Err(error)) => {
                    self.fail(error);
                    Poll::Ready(())
                }
                Poll::Pending => Poll::Pending,
            },
            Source::Events(upstream) => match Pin::new(upstream).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        self.deadlines.touch();
                        if !data.is_empty() {
                            self.on_upstream_bytes(data);
                        }
                    }
                    Poll::Ready(())
                }
                Poll::Ready(Some(Err(e))) => {
                    self.fail(GatewayError::UpstreamReset(error_chain(&e)));
                    Poll::Ready(())
                }
                Poll::Ready(None) => {
                    self.on_upstream_end();
                    Poll::Ready(())
                }
                Poll::Pending => Poll::Pending,
            },
            Source::ErrorBody(answer) => match Pin::new(&mut answer.body).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    self.deadlines.touch();
                    if let Ok(data) = frame.into_data() {
                        let collected = &mut answer.collected;
                        let room = MAX_UPSTREAM_ERROR_BODY.saturating_sub(collected.len());
                        collected.extend_from_slice(&data[..data.len().min(room)]);
                        if data.len() > room {
                            self.on_error_body_end();
                        }
                    }
                    Poll::Ready(())
                }
                Poll::Ready(Some(Err(_)) | None) => {
                    self.on_error_body_end();
                    Poll::Ready(())
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn emit(
        &mut self,
        bytes: Bytes,
        heartbeat: bool,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let now = self.lifetime.now_ms();
        self.lifetime
            .handle()
            .record_write(bytes.len(), heartbeat, now);
        Poll::Ready(Some(Ok(Frame::data(bytes))))
    }
}

impl<B> Body for SseRelay<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::error::Error + 'static,
{
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        // Registers this task to be woken for heartbeats and end requests, and tells the
        // scheduler the client's connection took the last frame.
        this.lifetime.handle().on_poll(cx);
        // Asked again: the frame made of the sampled read has been taken by the connection.
        if this.out.is_none() {
            if let Some(read_at) = this.sampled_read_at.take() {
                this.lifetime.observe_relay_delay(read_at.elapsed());
            }
        }
        // Bounded: every pass returns, or consumes one upstream frame, or moves the source on.
        loop {
            if let Some(bytes) = this.out.take() {
                return this.emit(bytes, false);
            }
            if let Some(bytes) = this.final_event.take() {
                return this.emit(bytes, false);
            }
            if matches!(this.source, Source::Closed) {
                return Poll::Ready(None);
            }
            let signals = this.lifetime.handle().take_signals();
            if let Some(reason) = signals.end {
                this.fail(reason.into());
                continue;
            }
            if this.poll_source(cx).is_ready() {
                continue;
            }
            // The upstream has nothing now: the moment for a heartbeat, between two blocks.
            if signals.ping {
                return this.emit(Bytes::from_static(HEARTBEAT), true);
            }
            // The idle and duration limits run once the upstream has answered; the wait for its
            // headers has its own (first_byte_timeout).
            if !matches!(this.source, Source::Awaiting { .. }) {
                if let Poll::Ready(expired) = this.deadlines.poll_expired(cx) {
                    this.fail(expired.into());
                    continue;
                }
            }
            return Poll::Pending;
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.source, Source::Closed) && self.out.is_none() && self.final_event.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        // Unknown length: never let anything compute a Content-Length for a stream.
        SizeHint::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;
    use std::net::{IpAddr, Ipv4Addr};
    use std::sync::Arc;
    use std::time::Duration;

    use crate::registry::{NewStream, Registry};

    use http_body_util::BodyExt;
    use proptest::prelude::*;

    /// An upstream body that yields scripted reads, then ends.
    struct Scripted(VecDeque<Result<Bytes, std::io::Error>>);

    impl Body for Scripted {
        type Data = Bytes;
        type Error = std::io::Error;
        fn poll_frame(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
            Poll::Ready(self.get_mut().0.pop_front().map(|r| r.map(Frame::data)))
        }
    }

    fn reads(parts: &[&[u8]]) -> Scripted {
        Scripted(
            parts
                .iter()
                .map(|p| Ok(Bytes::copy_from_slice(p)))
                .collect(),
        )
    }

    fn lifetime(registry: &Arc<Registry>) -> StreamLifetime {
        let entry = registry.register(NewStream {
            client_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            api_key: None,
            model: "m",
            request_id: "r",
            connection: None,
        });
        StreamLifetime::begin(entry)
    }

    fn deadlines() -> Deadlines {
        Deadlines::new(Duration::from_secs(60), Duration::from_secs(600))
    }

    /// Polls `body` to its end; returns the frames sent.
    async fn drain<B>(body: &mut SseRelay<B>) -> Vec<Bytes>
    where
        B: Body<Data = Bytes> + Unpin,
        B::Error: std::error::Error + 'static,
    {
        let mut frames = Vec::new();
        // Bounded: the scripted upstream ends, and every poll consumes from it.
        for _ in 0..10_000 {
            match body.frame().await {
                Some(Ok(frame)) => frames.push(frame.into_data().unwrap()),
                Some(Err(never)) => match never {},
                None => break,
            }
        }
        frames
    }

    /// Relays `upstream` to the end; returns the frames sent and the outcome.
    async fn relay(upstream: Scripted, max_event_bytes: usize) -> (Vec<Bytes>, Option<Outcome>) {
        let (frames, outcome, _, _) = relay_in(Grammar::Chunks, upstream, max_event_bytes).await;
        (frames, outcome)
    }

    /// Relays `upstream` in `grammar` to its end: the frames, the outcome, and the stream's
    /// (events, first token seen) as the registry counted them.
    async fn relay_in(
        grammar: Grammar,
        upstream: Scripted,
        max_event_bytes: usize,
    ) -> (Vec<Bytes>, Option<Outcome>, u64, bool) {
        let registry = Arc::new(Registry::new(&["u"]));
        let mut body = SseRelay::new(upstream, max_event_bytes, deadlines(), lifetime(&registry))
            .with_grammar(grammar);
        let frames = drain(&mut body).await;
        let outcome = body.lifetime.outcome();
        let handle = body.lifetime.handle().clone();
        drop(body);
        assert!(registry.is_empty(), "the entry goes with the body");
        (
            frames,
            outcome,
            handle.events(),
            handle.first_event_ms().is_some(),
        )
    }

    fn sse_response(status: u16, content_type: &str, body: Scripted) -> Response<Scripted> {
        Response::builder()
            .status(status)
            .header("content-type", content_type)
            .body(body)
            .unwrap()
    }

    #[tokio::test]
    async fn an_early_committed_stream_relays_once_the_upstream_answers() {
        let registry = Arc::new(Registry::new(&["u"]));
        let (tx, rx) = tokio::sync::oneshot::channel::<Response<Scripted>>();
        let pending: PendingResponse<Scripted> = Box::pin(async move {
            rx.await
                .map_err(|_| GatewayError::UpstreamIncomplete("[DONE]"))
        });
        let lifetime = lifetime(&registry);
        let handle = lifetime.handle().clone();
        let mut body = SseRelay::awaiting(pending, None, 1024, deadlines(), lifetime);
        // Nothing to send yet; a requested heartbeat goes out.
        handle.request_ping();
        let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(first, HEARTBEAT);
        assert_eq!(handle.heartbeats(), 1);
        assert_eq!(handle.state(), StreamState::WaitingForUpstream);
        tx.send(sse_response(200, "text/event-stream", reads(&[A, DONE])))
            .ok()
            .unwrap();
        let rest = drain(&mut body).await;
        assert_eq!(concat(&rest), [A, DONE].concat());
        assert_eq!(handle.state(), StreamState::Streaming);
        assert_eq!(body.lifetime.outcome(), Some(Outcome::Completed));
    }

    #[tokio::test]
    async fn an_upstream_error_after_an_early_commit_becomes_the_final_event() {
        let registry = Arc::new(Registry::new(&["u"]));
        // The upstream's own error object is forwarded.
        let upstream_error = br#"{"error":{"message":"Rate limit reached","type":"requests","param":null,"code":"rate_limit_exceeded"}}"#;
        let response = sse_response(
            429,
            "application/json",
            reads(&[&upstream_error[..20], &upstream_error[20..]]),
        );
        let pending: PendingResponse<Scripted> = Box::pin(async move { Ok(response) });
        let mut body = SseRelay::awaiting(pending, None, 1024, deadlines(), lifetime(&registry));
        let frames = drain(&mut body).await;
        assert_eq!(last_error_code(&frames), "rate_limit_exceeded");
        assert_eq!(
            body.lifetime.outcome(),
            Some(Outcome::Failed("upstream_error_status"))
        );

        // A body that is not an error object gets our own error, naming the status.
        let response = sse_response(502, "text/html", reads(&[b"<html>bad gateway</html>"]));
        let pending: PendingResponse<Scripted> = Box::pin(async move { Ok(response) });
        let mut body = SseRelay::awaiting(pending, None, 1024, deadlines(), lifetime(&registry));
        let frames = drain(&mut body).await;
        assert_eq!(last_error_code(&frames), "upstream_error_status");
        assert!(String::from_utf8_lossy(&concat(&frames)).contains("502"));

        // A 2xx that is not an event stream cannot be relayed once event-stream headers are out.
        let response = sse_response(200, "application/json", reads(&[br#"{"id":"c1"}"#]));
        let pending: PendingResponse<Scripted> = Box::pin(async move { Ok(response) });
        let mut body = SseRelay::awaiting(pending, None, 1024, deadlines(), lifetime(&registry));
        let frames = drain(&mut body).await;
        assert_eq!(frames.len(), 1, "one final event, nothing of the JSON body");
        assert_eq!(last_error_code(&frames), "upstream_not_event_stream");
        assert_eq!(
            body.lifetime.outcome(),
            Some(Outcome::Failed("upstream_not_event_stream"))
        );

        // A failure to connect, after the commit.
        let pending: PendingResponse<Scripted> =
            Box::pin(async move { Err(GatewayError::UpstreamTimeout(Duration::from_secs(1))) });
        let mut body = SseRelay::awaiting(pending, None, 1024, deadlines(), lifetime(&registry));
        let frames = drain(&mut body).await;
        assert_eq!(last_error_code(&frames), "upstream_timeout");
    }

    #[test]
    fn one_decision_says_what_an_answer_to_a_stream_request_is() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "content-type",
            "Text/Event-Stream; charset=utf-8".parse().unwrap(),
        );
        assert_eq!(
            StreamAnswer::of(StatusCode::OK, &headers),
            StreamAnswer::EventStream
        );
        assert_eq!(
            StreamAnswer::of(StatusCode::TOO_MANY_REQUESTS, &headers),
            StreamAnswer::ErrorStatus
        );
        headers.insert("content-type", "application/json".parse().unwrap());
        assert_eq!(
            StreamAnswer::of(StatusCode::OK, &headers),
            StreamAnswer::NotEventStream
        );
        for status in [StatusCode::UNAUTHORIZED, StatusCode::FORBIDDEN] {
            assert_eq!(
                StreamAnswer::of(status, &headers),
                StreamAnswer::CredentialsRejected
            );
        }
        assert_eq!(
            StreamAnswer::of(StatusCode::OK, &HeaderMap::new()),
            StreamAnswer::NotEventStream
        );
        assert_eq!(
            StreamAnswer::of(StatusCode::INTERNAL_SERVER_ERROR, &HeaderMap::new()),
            StreamAnswer::ErrorStatus
        );
    }

    #[tokio::test]
    async fn after_an_early_commit_the_key_never_reaches_the_client() {
        let registry = Arc::new(Registry::new(&["u"]));
        let key: Arc<str> = Arc::from("sk-test-0123456789");
        let echo = format!(
            r#"{{"error":{{"message":"Incorrect API key provided: {key}.","code":"invalid_api_key"}}}}"#
        );

        // A 401 is the gateway's credentials: our own error, nothing of the upstream's body.
        let response = sse_response(401, "application/json", reads(&[echo.as_bytes()]));
        let pending: PendingResponse<Scripted> = Box::pin(async move { Ok(response) });
        let mut body = SseRelay::awaiting(
            pending,
            Some(key.clone()),
            1024,
            deadlines(),
            lifetime(&registry),
        );
        let frames = drain(&mut body).await;
        assert_eq!(last_error_code(&frames), "upstream_auth_failed");
        assert!(!String::from_utf8_lossy(&concat(&frames)).contains("Incorrect API key"));
        assert_eq!(
            body.lifetime.outcome(),
            Some(Outcome::Failed("upstream_auth_failed"))
        );

        // Any other error body that is relayed is scrubbed of the key, split across reads or not.
        let bytes = echo.as_bytes();
        let response = sse_response(
            400,
            "application/json",
            reads(&[&bytes[..40], &bytes[40..]]),
        );
        let pending: PendingResponse<Scripted> = Box::pin(async move { Ok(response) });
        let mut body = SseRelay::awaiting(
            pending,
            Some(key.clone()),
            1024,
            deadlines(),
            lifetime(&registry),
        );
        let all = String::from_utf8(concat(&drain(&mut body).await)).unwrap();
        assert!(!all.contains(&*key), "{all}");
        assert!(
            all.contains("Incorrect API key provided: <redacted>."),
            "{all}"
        );
    }

    /// An upstream that sends `A`, then waits forever.
    struct OneThenSilent(bool);

    impl Body for OneThenSilent {
        type Data = Bytes;
        type Error = std::io::Error;
        fn poll_frame(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
            if std::mem::replace(&mut self.get_mut().0, true) {
                Poll::Pending
            } else {
                Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(A)))))
            }
        }
    }

    #[tokio::test]
    async fn heartbeats_go_between_events_and_an_end_request_sends_one_final_event() {
        let registry = Arc::new(Registry::new(&["u"]));
        let lifetime = lifetime(&registry);
        let handle = lifetime.handle().clone();
        // Asked for a heartbeat while an event is ready: the event goes first.
        handle.request_ping();
        let mut body = SseRelay::new(OneThenSilent(false), 1024, deadlines(), lifetime);
        let frame = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(frame, A);
        // Now the upstream is silent: a heartbeat when asked, and nothing otherwise.
        handle.request_ping();
        let frame = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(frame, HEARTBEAT);
        let waker = std::task::Waker::noop();
        assert!(Pin::new(&mut body)
            .poll_frame(&mut Context::from_waker(waker))
            .is_pending());
        // An operator ends it: one final event, then the end; the upstream is dropped.
        handle.end(crate::registry::EndReason::Admin);
        let frames = drain(&mut body).await;
        assert_eq!(frames.len(), 1);
        assert_eq!(last_error_code(&frames), "terminated_by_admin");
        assert!(matches!(body.source, Source::Closed));
        assert_eq!(
            body.lifetime.outcome(),
            Some(Outcome::Failed("terminated_by_admin"))
        );
        assert_eq!(handle.events(), 1);
        assert_eq!(handle.heartbeats(), 1);
    }

    fn concat(frames: &[Bytes]) -> Vec<u8> {
        frames.iter().flat_map(|f| f.iter().copied()).collect()
    }

    fn last_error_code(frames: &[Bytes]) -> String {
        let all = concat(frames);
        let events = crate::sse::parser::parse_all(&all, 1 << 20).unwrap();
        let last: serde_json::Value = serde_json::from_str(&events.last().unwrap().data).unwrap();
        last["error"]["code"].as_str().unwrap().to_owned()
    }

    const A: &[u8] = b"data: {\"a\":1}\n\n";
    const B: &[u8] = b": keep-alive comment\ndata: {\"b\":2}\n\n";
    const DONE: &[u8] = b"data: [DONE]\n\n";

    #[tokio::test]
    async fn whole_blocks_in_one_read_pass_through_as_one_slice() {
        let input = [A, B, DONE].concat();
        let (frames, outcome) = relay(reads(&[&input]), 1024).await;
        assert_eq!(frames, vec![Bytes::from(input)]);
        assert_eq!(outcome, Some(Outcome::Completed));
    }

    #[tokio::test]
    async fn a_block_split_across_reads_is_held_until_complete() {
        let (frames, outcome) = relay(
            reads(&[b"data: {\"a\"", b":1}\n", b"\ndata: [DO", b"NE]\n\n"]),
            1024,
        )
        .await;
        assert_eq!(frames.len(), 2);
        assert_eq!(frames[0], A);
        assert_eq!(frames[1], DONE);
        assert_eq!(outcome, Some(Outcome::Completed));
    }

    #[tokio::test]
    async fn nothing_after_done_is_relayed() {
        let input = [A, DONE, b"data: {\"late\":1}\n\n"].concat();
        let (frames, outcome) = relay(reads(&[&input, b"more"]), 1024).await;
        assert_eq!(concat(&frames), [A, DONE].concat());
        assert_eq!(outcome, Some(Outcome::Completed));
    }

    #[tokio::test]
    async fn a_malformed_event_is_cut_and_replaced_by_one_error() {
        let input = [A, b"data: {oops\n\n", B, DONE].concat();
        let (frames, outcome) = relay(reads(&[&input]), 1024).await;
        assert!(concat(&frames).starts_with(A));
        assert!(!String::from_utf8_lossy(&concat(&frames)).contains("oops"));
        assert_eq!(last_error_code(&frames), "upstream_malformed_event");
        assert_eq!(outcome, Some(Outcome::Failed("upstream_malformed_event")));
    }

    #[tokio::test]
    async fn an_oversized_block_is_dropped_not_relayed() {
        let big = [b"data: {\"x\":\"".as_slice(), &[b'x'; 300], b"\"}\n\n"].concat();
        let (frames, _) = relay(reads(&[A, &big[..100], &big[100..]]), 256).await;
        let all = concat(&frames);
        assert!(all.starts_with(A));
        assert!(
            !all.contains(&b'x'),
            "no byte of the oversized event was sent"
        );
        assert_eq!(last_error_code(&frames), "upstream_event_too_large");
    }

    #[tokio::test]
    async fn a_reset_mid_block_discards_the_partial_block() {
        let upstream = Scripted(VecDeque::from([
            Ok(Bytes::from_static(A)),
            Ok(Bytes::from_static(b"data: {\"half")),
            Err(std::io::Error::other("connection reset")),
        ]));
        let (frames, _) = relay(upstream, 1024).await;
        assert_eq!(frames[0], A);
        assert!(!String::from_utf8_lossy(&concat(&frames)).contains("half"));
        assert_eq!(last_error_code(&frames), "upstream_reset");
    }

    #[tokio::test]
    async fn an_end_without_done_is_an_error_unless_the_upstream_sent_one() {
        let (frames, _) = relay(reads(&[A, B]), 1024).await;
        assert_eq!(last_error_code(&frames), "upstream_incomplete_stream");

        let upstream_error = b"data: {\"error\":{\"message\":\"overloaded\"}}\n\n";
        let (frames, outcome) = relay(reads(&[A, upstream_error]), 1024).await;
        assert_eq!(
            concat(&frames),
            [A, upstream_error].concat(),
            "no second error"
        );
        assert_eq!(outcome, Some(Outcome::Failed("upstream_error_event")));
    }

    #[tokio::test]
    async fn a_leading_bom_is_not_forwarded() {
        let (frames, _) = relay(
            reads(&[b"\xEF\xBB", b"\xBFdata: {\"a\":1}\n\n", DONE]),
            1024,
        )
        .await;
        assert_eq!(concat(&frames), [A, DONE].concat());
    }

    /// A Responses event as an upstream sends it.
    fn response_event(kind: &str, seq: u64, rest: &str) -> Vec<u8> {
        format!("event: {kind}\ndata: {{\"type\":\"{kind}\",\"sequence_number\":{seq}{rest}}}\n\n")
            .into_bytes()
    }

    /// The first events of a Responses stream, before any output.
    fn response_preamble() -> Vec<u8> {
        [
            response_event(
                "response.created",
                0,
                r#","response":{"id":"resp_1","usage":null}"#,
            ),
            response_event("response.in_progress", 1, r#","response":{"id":"resp_1"}"#),
        ]
        .concat()
    }

    /// [`relay_in`] for a Responses stream.
    async fn relay_responses(upstream: Scripted) -> (Vec<Bytes>, Option<Outcome>, u64, bool) {
        relay_in(Grammar::Responses, upstream, 4096).await
    }

    fn parsed(frames: &[Bytes]) -> Vec<crate::sse::parser::Event> {
        crate::sse::parser::parse_all(&concat(frames), 1 << 20).unwrap()
    }

    #[tokio::test]
    async fn a_responses_stream_is_relayed_byte_for_byte_to_its_terminal_event() {
        let delta = response_event("response.output_text.delta", 2, r#","delta":"Hi""#);
        let completed = response_event(
            "response.completed",
            3,
            r#","response":{"id":"resp_1","usage":{"input_tokens":4,"output_tokens":1}}"#,
        );
        let input = [response_preamble(), delta, completed.clone()].concat();
        // Anything after the terminal event (a stray [DONE] included) is not relayed.
        let after = b"data: [DONE]\n\n";
        let (frames, outcome, events, first_token) =
            relay_responses(reads(&[&input[..30], &input[30..], after])).await;
        assert_eq!(concat(&frames), input, "the event: lines and all");
        assert_eq!(outcome, Some(Outcome::Completed));
        assert_eq!(
            events, 4,
            "the terminal event is an event (as [DONE] is not)"
        );
        assert!(first_token);
    }

    #[tokio::test]
    async fn lifecycle_events_are_not_the_first_token() {
        let (_, _, events, first_token) = relay_responses(reads(&[&response_preamble()])).await;
        assert_eq!(events, 2);
        assert!(!first_token, "response.created is not output");
    }

    #[tokio::test]
    async fn a_responses_stream_without_a_terminal_event_gets_one_error_event() {
        let delta = response_event("response.output_text.delta", 2, r#","delta":"Hi""#);
        let input = [response_preamble(), delta].concat();
        // A clean end, and a [DONE] (which no Responses stream has) instead of a terminal event.
        for tail in [&b""[..], b"data: [DONE]\n\n"] {
            let (frames, outcome, _, _) = relay_responses(reads(&[&input, tail])).await;
            let all = concat(&frames);
            assert!(all.starts_with(&input));
            assert!(!String::from_utf8_lossy(&all).contains("[DONE]"));
            let events = parsed(&frames);
            assert_eq!(events.len(), 4);
            let last = events.last().unwrap();
            assert_eq!(last.event_type, "error");
            let data: serde_json::Value = serde_json::from_str(&last.data).unwrap();
            assert_eq!(data["type"], "error");
            assert_eq!(data["code"], "upstream_incomplete_stream");
            assert_eq!(data["sequence_number"], 3, "after the last one relayed");
            assert_eq!(data["error"]["code"], "upstream_incomplete_stream");
            assert_eq!(outcome, Some(Outcome::Failed("upstream_incomplete_stream")));
        }
    }

    #[tokio::test]
    async fn a_responses_upstream_error_or_failure_gets_no_second_error() {
        let error = response_event("error", 2, r#","code":"server_error","message":"boom""#);
        let input = [response_preamble(), error].concat();
        let (frames, outcome, _, _) = relay_responses(reads(&[&input])).await;
        assert_eq!(concat(&frames), input);
        assert_eq!(outcome, Some(Outcome::Failed("upstream_error_event")));

        let failed = response_event(
            "response.failed",
            2,
            r#","response":{"id":"resp_1","status":"failed","error":{"code":"server_error"}}"#,
        );
        let input = [response_preamble(), failed].concat();
        let (frames, outcome, _, _) = relay_responses(reads(&[&input, b"late bytes"])).await;
        assert_eq!(concat(&frames), input);
        assert_eq!(outcome, Some(Outcome::Failed("upstream_error_event")));
    }

    #[tokio::test]
    async fn a_responses_stream_cut_mid_event_ends_with_one_error_event() {
        let preamble = response_preamble();
        let upstream = Scripted(VecDeque::from([
            Ok(Bytes::from(preamble.clone())),
            Ok(Bytes::from_static(
                b"event: response.output_text.delta\ndata: {\"ha",
            )),
            Err(std::io::Error::other("connection reset")),
        ]));
        let (frames, _, _, _) = relay_responses(upstream).await;
        let all = concat(&frames);
        assert!(all.starts_with(&preamble));
        assert!(!String::from_utf8_lossy(&all).contains("\"ha"));
        let events = parsed(&frames);
        let last = events.last().unwrap();
        assert_eq!(last.event_type, "error");
        let data: serde_json::Value = serde_json::from_str(&last.data).unwrap();
        assert_eq!(data["code"], "upstream_reset");
        assert_eq!(data["sequence_number"], 2);
    }

    fn line_end() -> impl Strategy<Value = &'static [u8]> {
        prop_oneof![Just(&b"\n"[..]), Just(&b"\r\n"[..]), Just(&b"\r"[..])]
    }

    /// One upstream block: optional comment, one or two JSON data lines, blank line.
    fn block() -> impl Strategy<Value = Vec<u8>> {
        (any::<bool>(), 0u32..1000, any::<bool>(), line_end(), 0u8..4).prop_map(
            |(comment, n, two, eol, id)| {
                let mut b = Vec::new();
                if comment {
                    b.extend_from_slice(b": c");
                    b.extend_from_slice(eol);
                }
                // Sometimes the upstream's own id field (with a value, or bare).
                match id {
                    0 => b.extend_from_slice(format!("id: up-{n}").as_bytes()),
                    1 => b.extend_from_slice(b"id"),
                    _ => {}
                }
                if id < 2 {
                    b.extend_from_slice(eol);
                }
                if two {
                    b.extend_from_slice(format!("data: {{\"n\":{n},").as_bytes());
                    b.extend_from_slice(eol);
                    b.extend_from_slice(b"data: \"m\":1}");
                } else {
                    b.extend_from_slice(format!("data: {{\"n\":{n}}}").as_bytes());
                }
                b.extend_from_slice(eol);
                b.extend_from_slice(eol);
                b
            },
        )
    }

    /// `input` cut at the points `cuts` pick: the reads an upstream might make of it.
    fn split_at<'a>(input: &'a [u8], cuts: &[prop::sample::Index]) -> Vec<&'a [u8]> {
        let mut points: Vec<usize> = cuts.iter().map(|i| i.index(input.len() + 1)).collect();
        points.sort_unstable();
        let mut parts = Vec::new();
        let mut start = 0;
        for p in points.into_iter().chain([input.len()]) {
            parts.push(&input[start..p]);
            start = p;
        }
        parts
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

        /// A Responses stream, however split (with CRLF, CR or LF line ends, comments, and
        /// with or without the `event:` lines): the client gets the same bytes up to and
        /// including the terminal event and nothing after it, the stream completes, and the
        /// first token is the first delta. Without the terminal event it ends with one
        /// `event: error` numbered after the last event.
        #[test]
        fn any_split_of_a_responses_stream_relays_it_to_its_terminal_event(
            deltas in 0usize..6,
            eol in line_end(),
            event_lines in any::<bool>(),
            comment in any::<bool>(),
            terminal in any::<bool>(),
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..12),
        ) {
            let mut kinds = vec!["response.created", "response.in_progress"];
            kinds.extend(std::iter::repeat_n("response.output_text.delta", deltas));
            kinds.push("response.output_text.done");
            if terminal {
                kinds.push("response.completed");
            }
            let eol = std::str::from_utf8(eol).unwrap();
            let mut input = String::new();
            for (seq, kind) in kinds.iter().enumerate() {
                if comment {
                    input.push_str(&format!(": c{eol}"));
                }
                if event_lines {
                    input.push_str(&format!("event: {kind}{eol}"));
                }
                input.push_str(&format!(
                    "data: {{\"type\":\"{kind}\",\"sequence_number\":{seq}}}{eol}{eol}"
                ));
            }
            let after = format!("event: late{eol}data: {{\"type\":\"late\"}}{eol}{eol}");
            let all = [input.as_bytes(), after.as_bytes()].concat();
            let parts = split_at(&all, &cuts);
            let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
            let (frames, outcome, events, first_token) =
                runtime.block_on(relay_responses(reads(&parts)));
            let sent = concat(&frames);
            if terminal {
                // All of it, but for the LF of a final CRLF split off into a read of its own,
                // which is never read: the stream is over at the CR, which ended the line.
                let whole = sent == input.as_bytes();
                let but_lf = eol == "\r\n" && sent == input.as_bytes()[..input.len() - 1];
                prop_assert!(whole || but_lf, "{:?}", String::from_utf8_lossy(&sent));
                prop_assert_eq!(outcome, Some(Outcome::Completed));
            } else {
                // The "late" event is relayed (nothing ended the stream before it); then ours.
                // (Bytes compared up to the last line end: the LF of a CRLF split off into a
                // read of its own at the very end is not relayed, the CR having ended the line.)
                prop_assert!(sent.starts_with(&all[..all.len() - 1]));
                let parsed = parsed(&frames);
                let upstream = crate::sse::parser::parse_all(&all, 4096).unwrap();
                prop_assert_eq!(&parsed[..parsed.len() - 1], &upstream[..]);
                let last = parsed.last().unwrap();
                prop_assert_eq!(&last.event_type, "error");
                let data: serde_json::Value = serde_json::from_str(&last.data).unwrap();
                prop_assert_eq!(&data["sequence_number"], &serde_json::json!(kinds.len()));
                prop_assert_eq!(outcome, Some(Outcome::Failed("upstream_incomplete_stream")));
            }
            // Every event, the terminal one included; without it, the late one too.
            let relayed = kinds.len() as u64 + u64::from(!terminal);
            prop_assert_eq!(events, relayed);
            prop_assert_eq!(first_token, deltas > 0);
        }

        /// However the upstream splits its bytes, the client gets the same bytes, and every frame
        /// but a CR-ended one ends exactly at a block boundary (nothing can land inside an event).
        #[test]
        fn any_split_relays_the_same_bytes_in_whole_blocks(
            blocks in prop::collection::vec(block(), 1..8),
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..12),
        ) {
            let mut input: Vec<u8> = blocks.concat();
            input.extend_from_slice(DONE);
            let parts = split_at(&input, &cuts);
            let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
            let (frames, outcome) = runtime.block_on(relay(reads(&parts), 4096));
            prop_assert_eq!(concat(&frames), input.clone());
            prop_assert_eq!(outcome, Some(Outcome::Completed));
            for frame in &frames {
                let mut parser = Parser::new(4096);
                // A frame that opens with the LF of a CRLF split at a block end is fine too.
                let body = frame.strip_prefix(b"\n").unwrap_or(frame);
                parser.feed(body, |_, _| {}).unwrap();
                prop_assert!(!parser.has_partial_block(), "frame {:?} ends inside a block", frame);
            }
        }

        /// With event ids on (resume), however the upstream splits its bytes (CRLF and CR line
        /// ends, a leading BOM, comment-only blocks, the upstream's own id fields included): the
        /// client gets the upstream's events, numbered 1, 2, ... in order (ours, never the
        /// upstream's), and the replay log holds each of them, as sent.
        #[test]
        fn any_split_with_event_ids_numbers_every_event_once(
            blocks in prop::collection::vec((block(), any::<bool>()), 1..8),
            bom in any::<bool>(),
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..12),
        ) {
            let mut input: Vec<u8> = if bom { UTF8_BOM.to_vec() } else { Vec::new() };
            for (block, keepalive) in &blocks {
                input.extend_from_slice(block);
                if *keepalive {
                    input.extend_from_slice(b": keepalive\r\n\r\n");
                }
            }
            input.extend_from_slice(DONE);
            let parts = split_at(&input, &cuts);
            let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
            let (frames, logged) = runtime.block_on(async {
                let registry = Arc::new(Registry::new(&["u"]));
                let mut body = SseRelay::new(reads(&parts), 4096, deadlines(), lifetime(&registry));
                body.enable_event_ids();
                let frames = drain(&mut body).await;
                let mut logged = Vec::new();
                body.drain_fresh_events(|id, bytes| logged.push((id, bytes)));
                (frames, logged)
            });
            let expected = crate::sse::parser::parse_all(&input, 4096).unwrap();
            let sent = crate::sse::parser::parse_all(&concat(&frames), 4096).unwrap();
            prop_assert_eq!(sent.len(), expected.len());
            for (i, (got, want)) in sent.iter().zip(&expected).enumerate() {
                prop_assert_eq!(&got.data, &want.data);
                prop_assert_eq!(&got.event_type, &want.event_type);
                prop_assert_eq!(got.last_event_id.clone(), (i + 1).to_string());
            }
            let ids: Vec<u64> = logged.iter().map(|(id, _)| *id).collect();
            prop_assert_eq!(ids, (1..=expected.len() as u64).collect::<Vec<_>>());
            let replayed: Vec<u8> = logged.iter().flat_map(|(_, b)| b.to_vec()).collect();
            let replayed = crate::sse::parser::parse_all(&replayed, 4096).unwrap();
            prop_assert_eq!(replayed, sent);
        }
    }
}
