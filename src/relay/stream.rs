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

use super::deadline::Deadlines;
use super::lifetime::{Outcome, StreamLifetime};
use super::upstream::error_chain;
use crate::error::GatewayError;
use crate::sse::parser::{ParseError, Parser};

const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";

/// The relay of one upstream event stream to one client. Generic over the upstream body only so
/// that tests can feed it reads split at arbitrary points.
pub struct SseRelay<B = Incoming> {
    /// None once the upstream is finished or cancelled (dropping it closes the upstream request).
    upstream: Option<B>,
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

impl<B> SseRelay<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::error::Error + 'static,
{
    pub fn new(
        upstream: B,
        max_event_bytes: usize,
        deadlines: Deadlines,
        lifetime: StreamLifetime,
    ) -> SseRelay<B> {
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
                Poll::Pending => match this.deadlines.poll_expired(cx) {
                    Poll::Ready(expired) => this.fail(expired.into()),
                    Poll::Pending => return Poll::Pending,
                },
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
    use std::collections::VecDeque;
    use std::time::Duration;

    use http_body_util::BodyExt;
    use proptest::prelude::*;

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

    /// Relays `upstream` to the end; returns the frames sent and the outcome.
    async fn relay(upstream: Scripted, max_event_bytes: usize) -> (Vec<Bytes>, Option<Outcome>) {
        let deadlines = Deadlines::new(Duration::from_secs(60), Duration::from_secs(600));
        let lifetime = StreamLifetime::begin(tracing::Span::none());
        let mut body = SseRelay::new(upstream, max_event_bytes, deadlines, lifetime);
        let mut frames = Vec::new();
        // Bounded: the scripted upstream ends, and every poll consumes from it.
        for _ in 0..10_000 {
            match body.frame().await {
                Some(Ok(frame)) => frames.push(frame.into_data().unwrap()),
                Some(Err(never)) => match never {},
                None => break,
            }
        }
        let outcome = body.lifetime.outcome();
        (frames, outcome)
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

    fn line_end() -> impl Strategy<Value = &'static [u8]> {
        prop_oneof![Just(&b"\n"[..]), Just(&b"\r\n"[..]), Just(&b"\r"[..])]
    }

    /// One upstream block: optional comment, one or two JSON data lines, blank line.
    fn block() -> impl Strategy<Value = Vec<u8>> {
        (any::<bool>(), 0u32..1000, any::<bool>(), line_end()).prop_map(|(comment, n, two, eol)| {
            let mut b = Vec::new();
            if comment {
                b.extend_from_slice(b": c");
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
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

        /// However the upstream splits its bytes, the client gets the same bytes, and every frame
        /// but a CR-ended one ends exactly at a block boundary (nothing can land inside an event).
        #[test]
        fn any_split_relays_the_same_bytes_in_whole_blocks(
            blocks in prop::collection::vec(block(), 1..8),
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..12),
        ) {
            let mut input: Vec<u8> = blocks.concat();
            input.extend_from_slice(DONE);
            let mut points: Vec<usize> = cuts.iter().map(|i| i.index(input.len() + 1)).collect();
            points.sort_unstable();
            let mut parts = Vec::new();
            let mut start = 0;
            for p in points.into_iter().chain([input.len()]) {
                parts.push(&input[start..p]);
                start = p;
            }
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
    }
}
