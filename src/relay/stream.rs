//! The body of one streaming response: upstream SSE in, whole events out.
//!
//! This body is the single place where everything that can happen to a stream meets: upstream
//! bytes, the idle and duration limits, and (later) heartbeats, an admin kill and a drain
//! deadline. Because only *whole* blocks (everything up to the blank line that ends an event) are
//! handed to the client, anything merged in here lands between events, never inside one, and a
//! stream ends exactly once: after `data: [DONE]`, or with one final `data: {"error":...}` event.
//!
//! Bytes pass through untouched: a chunk that holds whole blocks is forwarded as a zero-copy
//! slice; only a block split across reads is held (bounded by `max_event_bytes`) until it is
//! complete. There is no coalescing timer and no buffer beyond that partial block.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use serde::de::IgnoredAny;
use serde::Deserialize;

use super::deadline::{Deadlines, Expired};
use super::lifetime::{Outcome, StreamLifetime};
use super::upstream::error_chain;
use crate::error::GatewayError;
use crate::sse::parser::{ParseError, Parser};

const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";

/// The relay of one upstream event stream to one client.
pub struct SseRelay {
    /// None once the upstream is finished or cancelled (dropping it closes the upstream request).
    upstream: Option<Incoming>,
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
    deadlines: Deadlines,
    lifetime: StreamLifetime,
}

/// What one upstream event's data is, as far as the relay cares.
enum EventKind {
    /// `[DONE]`: the end of the stream.
    Done,
    /// A JSON object; `error` says whether it carries an `error` key.
    Json { error: bool },
    /// Anything else: not what an OpenAI-compatible upstream sends.
    Malformed,
}

/// Just enough of a chunk to see whether it is an error; every other key is skipped unparsed.
#[derive(Deserialize)]
struct ErrorProbe {
    error: Option<IgnoredAny>,
}

fn classify(data: &str) -> EventKind {
    let trimmed = data.trim();
    if trimmed == "[DONE]" {
        return EventKind::Done;
    }
    if !trimmed.starts_with('{') {
        return EventKind::Malformed;
    }
    match serde_json::from_str::<ErrorProbe>(trimmed) {
        Ok(probe) => EventKind::Json {
            error: probe.error.is_some(),
        },
        Err(_) => EventKind::Malformed,
    }
}

/// How processing one chunk stopped early.
enum Stop {
    Done,
    Malformed,
}

impl SseRelay {
    pub fn new(
        upstream: Incoming,
        max_event_bytes: usize,
        deadlines: Deadlines,
        lifetime: StreamLifetime,
    ) -> SseRelay {
        SseRelay {
            upstream: Some(upstream),
            parser: Parser::new(max_event_bytes),
            partial: BytesMut::new(),
            at_stream_start: true,
            out: None,
            final_event: None,
            upstream_sent_error: false,
            deadlines,
            lifetime,
        }
    }

    /// Splits one upstream read into whole blocks (queued in `out`) and a held remainder.
    fn on_upstream_bytes(&mut self, chunk: Bytes) {
        let mut complete_end = 0;
        let mut stop = None;
        let mut events = 0;
        let mut saw_error = false;
        let fed = self.parser.feed(&chunk, |end, event| {
            if stop.is_some() {
                return;
            }
            if let Some(event) = event {
                match classify(&event.data) {
                    EventKind::Done => stop = Some(Stop::Done),
                    EventKind::Json { error } => {
                        saw_error |= error || event.event_type == "error";
                        events += 1;
                    }
                    EventKind::Malformed => {
                        // The malformed block is not forwarded: cut before it.
                        stop = Some(Stop::Malformed);
                        return;
                    }
                }
            }
            complete_end = end;
        });
        self.lifetime.record_events(events);
        self.upstream_sent_error |= saw_error;

        if complete_end > 0 {
            let mut blocks = if self.partial.is_empty() {
                chunk.slice(..complete_end)
            } else {
                self.partial.extend_from_slice(&chunk[..complete_end]);
                self.partial.split().freeze()
            };
            if std::mem::take(&mut self.at_stream_start) && blocks.starts_with(UTF8_BOM) {
                blocks = blocks.slice(UTF8_BOM.len()..);
            }
            self.out = Some(blocks);
        }
        match (stop, fed) {
            (Some(Stop::Done), _) => {
                // Anything after [DONE] is ignored; the upstream request is finished.
                self.upstream = None;
                self.partial = BytesMut::new();
                self.lifetime.finish(Outcome::Completed);
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
        self.upstream = None;
        self.partial = BytesMut::new();
        self.lifetime.finish(Outcome::Failed(error.code()));
        tracing::warn!(parent: self.lifetime.span(), code = error.code(), "stream failed: {error}");
        self.final_event = Some(error.to_sse_event());
    }

    /// The upstream body ended (cleanly or not).
    fn on_upstream_end(&mut self) {
        if self.upstream_sent_error {
            // The upstream already told the client what went wrong in its own error event.
            self.upstream = None;
            self.lifetime
                .finish(Outcome::Failed("upstream_error_event"));
        } else {
            self.fail(GatewayError::UpstreamIncomplete);
        }
    }

    fn emit(&mut self, bytes: Bytes) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.lifetime.record_sent(bytes.len());
        Poll::Ready(Some(Ok(Frame::data(bytes))))
    }
}

impl Body for SseRelay {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        // Bounded: every pass either returns or consumes one upstream frame.
        loop {
            if let Some(bytes) = this.out.take() {
                return this.emit(bytes);
            }
            if let Some(bytes) = this.final_event.take() {
                return this.emit(bytes);
            }
            let Some(upstream) = this.upstream.as_mut() else {
                return Poll::Ready(None);
            };
            match Pin::new(upstream).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        this.deadlines.touch();
                        if !data.is_empty() {
                            this.on_upstream_bytes(data);
                        }
                    }
                }
                Poll::Ready(Some(Err(e))) => {
                    this.fail(GatewayError::UpstreamReset(error_chain(&e)));
                }
                Poll::Ready(None) => this.on_upstream_end(),
                Poll::Pending => {
                    return match this.deadlines.poll_expired(cx) {
                        Poll::Ready(Expired::Idle(d)) => {
                            this.fail(GatewayError::UpstreamIdleTimeout(d));
                            continue;
                        }
                        Poll::Ready(Expired::Duration(d)) => {
                            this.fail(GatewayError::StreamDurationExceeded(d));
                            continue;
                        }
                        Poll::Pending => Poll::Pending,
                    };
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.upstream.is_none() && self.out.is_none() && self.final_event.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        // Unknown length: never let anything compute a Content-Length for a stream.
        SizeHint::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classify_recognises_done_json_errors_and_garbage() {
        assert!(matches!(classify("[DONE]"), EventKind::Done));
        assert!(matches!(
            classify(r#"{"id":"x","choices":[]}"#),
            EventKind::Json { error: false }
        ));
        assert!(matches!(
            classify(r#"{"error":{"message":"boom"}}"#),
            EventKind::Json { error: true }
        ));
        assert!(matches!(classify("{not json"), EventKind::Malformed));
        assert!(matches!(classify("[1,2]"), EventKind::Malformed));
        assert!(matches!(classify("hello"), EventKind::Malformed));
    }
}
