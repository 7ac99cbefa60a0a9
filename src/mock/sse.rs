//! Response bodies, including the Server-Sent Events stream.
//!
//! A stream is one [`SseStream`] state machine polled directly by hyper as the
//! response body: no task, no channel. It owns a single [`Sleep`] (the one the
//! handler already used for the headers delay) and resets it before each
//! paced event. Every event is built into one buffer and handed to hyper as
//! its own data frame.

use std::error::Error;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

use super::responses::{ResponsesSpec, ResponsesStream};
use super::stats::{Outcome, Tracker};
use super::{Fault, OVERSIZED_LINE_BYTES, STREAM_ERROR_MESSAGE, SYSTEM_FINGERPRINT};

/// The words that content chunks cycle through, each with its trailing space: one paragraph
/// that ends at a full stop after exactly the default chunk count
/// ([`super::MockSettings::chunks`]), so the demo's answer does not look cut off. A quoted word
/// and an emoji make sure escaping and multi-byte UTF-8 survive the gateway.
pub(crate) const WORDS: [&str; 24] = [
    "Hello ",
    "from ",
    "the ",
    "tidegate ",
    "mock ",
    "upstream! ",
    "Every ",
    "token ",
    "rides ",
    "the ",
    "\"tide\" ",
    "from ",
    "upstream ",
    "to ",
    "you, ",
    "one ",
    "small ",
    "wave ",
    "\u{1f30a} ",
    "at ",
    "a ",
    "time. ",
    "That's ",
    "all. ",
];

const DONE_EVENT: &[u8] = b"data: [DONE]\n\n";
/// The send-time comment of `x-mock-timestamps` events: `: sent_us=<Unix microseconds>`.
pub const SENT_US_COMMENT: &[u8] = b": sent_us=";
const MALFORMED_EVENT: &[u8] = b"data: {this is not json\n\n";

/// `data: ` + 4 MiB of `x` + `\n\n`, built once and shared by every
/// `fail-oversized` stream.
pub(crate) fn oversized_event() -> Bytes {
    static EVENT: OnceLock<Bytes> = OnceLock::new();
    EVENT
        .get_or_init(|| {
            let mut buf = Vec::with_capacity(OVERSIZED_LINE_BYTES + 8);
            buf.extend_from_slice(b"data: ");
            buf.resize(buf.len() + OVERSIZED_LINE_BYTES, b'x');
            buf.extend_from_slice(b"\n\n");
            Bytes::from(buf)
        })
        .clone()
}

/// Appends `s` as a JSON string literal (quotes included). Escapes exactly
/// what JSON requires (`"`, `\` and control characters), so any UTF-8 input,
/// such as a model name from the request, yields valid JSON.
pub(crate) fn push_json_str(buf: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    buf.push(b'"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escape: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x00..=0x1f => b"",
            _ => continue,
        };
        buf.extend_from_slice(&bytes[start..i]);
        if escape.is_empty() {
            buf.extend_from_slice(b"\\u00");
            buf.push(HEX[usize::from(b >> 4)]);
            buf.push(HEX[usize::from(b & 0xf)]);
        } else {
            buf.extend_from_slice(escape);
        }
        start = i + 1;
    }
    buf.extend_from_slice(&bytes[start..]);
    buf.push(b'"');
}

/// Appends the decimal digits of `n` without allocating.
pub(crate) fn push_u64(buf: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    buf.extend_from_slice(&digits[at..]);
}

/// A buffer of `capacity` bytes for one JSON event, starting with the
/// `x-mock-timestamps` send-time comment when `timestamps` is set.
pub(crate) fn start_event(timestamps: bool, capacity: usize) -> Vec<u8> {
    let mut buf = Vec::with_capacity(capacity + 32);
    if timestamps {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        buf.extend_from_slice(SENT_US_COMMENT);
        push_u64(&mut buf, now);
        buf.push(b'\n');
    }
    buf
}

/// Which OpenAI API the stream imitates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Api {
    /// `/v1/chat/completions`: `chat.completion.chunk` with `delta`s.
    Chat,
    /// `/v1/completions`: `text_completion` with `text`.
    Legacy,
}

/// Which event stream to send, decided by the handler.
#[derive(Debug)]
pub(crate) enum StreamPlan {
    Completions(StreamSpec),
    Responses(ResponsesSpec),
}

/// Everything a completions stream needs to know, decided by the handler.
#[derive(Debug)]
pub(crate) struct StreamSpec {
    pub api: Api,
    /// Shared with `x-request-id` so logs and bodies can be matched.
    pub id: u64,
    pub created: u64,
    pub model: String,
    pub chunks: u32,
    pub first_delay: Duration,
    pub chunk_delay: Duration,
    pub fault: Option<Fault>,
    pub include_usage: bool,
    pub prompt_tokens: u64,
    /// Start each JSON event with a `: sent_us=<Unix microseconds>` comment line, so a load
    /// generator on the same machine can compute the delay each event saw on its way. A comment
    /// changes nothing for SSE clients, and the JSON stays exactly OpenAI's.
    pub timestamps: bool,
}

/// The next thing the stream will emit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Role,
    Malformed,
    Oversized,
    /// Content chunk with this zero-based index.
    Content(u32),
    /// fail-midstream: fail the body.
    Abort,
    /// fail-error-event: an error object in the stream, then a clean end.
    Error,
    Finish,
    Usage,
    Done,
    End,
}

/// The event stream of one streaming response.
pub(crate) struct SseStream {
    tracker: Tracker,
    sleep: Pin<Box<Sleep>>,
    /// Whether `sleep` is armed for the next step.
    waiting: bool,
    step: Step,
    abort: Abort,
    api: Api,
    chunks: u32,
    first_delay: Duration,
    chunk_delay: Duration,
    fault: Option<Fault>,
    include_usage: bool,
    prompt_tokens: u64,
    timestamps: bool,
    /// `data: {"id":..,"object":..,"created":..,"model":..,
    /// "system_fingerprint":..,"choices":[` — identical for every event.
    prefix: Box<[u8]>,
}

impl fmt::Debug for SseStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SseStream")
            .field("step", &self.step)
            .field("api", &self.api)
            .field("chunks", &self.chunks)
            .field("fault", &self.fault)
            .finish_non_exhaustive()
    }
}

impl SseStream {
    /// `sleep` is reused for all pacing; its current deadline is ignored.
    pub(crate) fn new(spec: StreamSpec, tracker: Tracker, sleep: Pin<Box<Sleep>>) -> SseStream {
        let (id_prefix, object): (&str, &str) = match spec.api {
            Api::Chat => ("chatcmpl-mock", "chat.completion.chunk"),
            Api::Legacy => ("cmpl-mock", "text_completion"),
        };
        let mut prefix = Vec::with_capacity(160 + spec.model.len());
        prefix.extend_from_slice(b"data: {\"id\":\"");
        prefix.extend_from_slice(id_prefix.as_bytes());
        push_u64(&mut prefix, spec.id);
        prefix.extend_from_slice(b"\",\"object\":\"");
        prefix.extend_from_slice(object.as_bytes());
        prefix.extend_from_slice(b"\",\"created\":");
        push_u64(&mut prefix, spec.created);
        prefix.extend_from_slice(b",\"model\":");
        push_json_str(&mut prefix, &spec.model);
        prefix.extend_from_slice(b",\"system_fingerprint\":");
        push_json_str(&mut prefix, SYSTEM_FINGERPRINT);
        prefix.extend_from_slice(b",\"choices\":[");

        let mut stream = SseStream {
            tracker,
            sleep,
            waiting: false,
            step: Step::Role,
            abort: Abort::default(),
            api: spec.api,
            chunks: spec.chunks,
            first_delay: spec.first_delay,
            chunk_delay: spec.chunk_delay,
            fault: spec.fault,
            include_usage: spec.include_usage,
            prompt_tokens: spec.prompt_tokens,
            timestamps: spec.timestamps,
            prefix: prefix.into_boxed_slice(),
        };
        stream.arm(stream.first_delay);
        stream
    }

    fn arm(&mut self, delay: Duration) {
        self.waiting = !delay.is_zero();
        if self.waiting {
            self.sleep.as_mut().reset(Instant::now() + delay);
        }
    }

    /// How long to wait before emitting `step`.
    fn delay_before(&self, step: Step) -> Duration {
        match step {
            Step::Role => self.first_delay,
            Step::Content(_) | Step::Abort | Step::Error => self.chunk_delay,
            _ => Duration::ZERO,
        }
    }

    /// What follows once `sent` content chunks have gone out.
    fn after_content(&self, sent: u32) -> Step {
        let cut = sent >= 2 || sent >= self.chunks;
        if cut && self.fault == Some(Fault::Midstream) {
            Step::Abort
        } else if cut && self.fault == Some(Fault::ErrorEvent) {
            Step::Error
        } else if sent < self.chunks {
            Step::Content(sent)
        } else {
            Step::Finish
        }
    }

    fn after_role(&self) -> Step {
        match self.fault {
            Some(Fault::Malformed) => Step::Malformed,
            Some(Fault::Oversized) => Step::Oversized,
            _ => self.after_content(0),
        }
    }

    fn after_finish(&self) -> Step {
        if self.include_usage {
            Step::Usage
        } else {
            self.after_usage()
        }
    }

    fn after_usage(&self) -> Step {
        if self.fault == Some(Fault::NoDone) {
            Step::End
        } else {
            Step::Done
        }
    }

    /// A buffer for one JSON event, holding its send-time comment if timestamps were asked for.
    fn start_event(&self) -> Vec<u8> {
        start_event(self.timestamps, self.prefix.len() + 144)
    }

    /// One `data: {...}\n\n` event whose single choice is written by `choice`.
    fn event(&self, choice: impl FnOnce(&mut Vec<u8>)) -> Bytes {
        let mut buf = self.start_event();
        buf.extend_from_slice(&self.prefix);
        choice(&mut buf);
        if self.include_usage {
            buf.extend_from_slice(b"],\"usage\":null}\n\n");
        } else {
            buf.extend_from_slice(b"]}\n\n");
        }
        Bytes::from(buf)
    }

    /// A choice carrying `text`; `role` makes it the chat role chunk.
    fn text_event(&self, text: &str, role: bool) -> Bytes {
        self.event(|buf| match self.api {
            Api::Chat => {
                if role {
                    buf.extend_from_slice(
                        b"{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":",
                    );
                } else {
                    buf.extend_from_slice(b"{\"index\":0,\"delta\":{\"content\":");
                }
                push_json_str(buf, text);
                buf.extend_from_slice(b"},\"logprobs\":null,\"finish_reason\":null}");
            }
            Api::Legacy => {
                buf.extend_from_slice(b"{\"text\":");
                push_json_str(buf, text);
                buf.extend_from_slice(b",\"index\":0,\"logprobs\":null,\"finish_reason\":null}");
            }
        })
    }

    fn finish_event(&self) -> Bytes {
        self.event(|buf| match self.api {
            Api::Chat => buf.extend_from_slice(
                b"{\"index\":0,\"delta\":{},\"logprobs\":null,\"finish_reason\":\"stop\"}",
            ),
            Api::Legacy => buf.extend_from_slice(
                b"{\"text\":\"\",\"index\":0,\"logprobs\":null,\"finish_reason\":\"stop\"}",
            ),
        })
    }

    /// `data: {"error":{...}}`: what OpenAI sends when a completion fails
    /// after its stream has started.
    fn error_event(&self) -> Bytes {
        let mut buf = self.start_event();
        buf.extend_from_slice(b"data: {\"error\":{\"message\":");
        push_json_str(&mut buf, STREAM_ERROR_MESSAGE);
        buf.extend_from_slice(
            b",\"type\":\"server_error\",\"param\":null,\"code\":\"server_error\"}}\n\n",
        );
        Bytes::from(buf)
    }

    fn usage_event(&self) -> Bytes {
        let completion = u64::from(self.chunks);
        let mut buf = self.start_event();
        buf.extend_from_slice(&self.prefix);
        buf.extend_from_slice(b"],\"usage\":{\"prompt_tokens\":");
        push_u64(&mut buf, self.prompt_tokens);
        buf.extend_from_slice(b",\"completion_tokens\":");
        push_u64(&mut buf, completion);
        buf.extend_from_slice(b",\"total_tokens\":");
        push_u64(&mut buf, self.prompt_tokens.saturating_add(completion));
        buf.extend_from_slice(b"}}\n\n");
        Bytes::from(buf)
    }

    fn poll_event(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, MockAbort>>> {
        if self.waiting {
            std::task::ready!(self.sleep.as_mut().poll(cx));
            self.waiting = false;
        }
        let (event, next) = match self.step {
            Step::Role => (self.text_event("", true), self.after_role()),
            Step::Malformed => (Bytes::from_static(MALFORMED_EVENT), self.after_content(0)),
            Step::Oversized => (oversized_event(), self.after_content(0)),
            Step::Content(i) => {
                let word = WORDS[i as usize % WORDS.len()];
                (self.text_event(word, false), self.after_content(i + 1))
            }
            Step::Abort => {
                let abort = std::task::ready!(self.abort.poll(&mut self.tracker, cx));
                self.step = Step::End;
                return Poll::Ready(Some(Err(abort)));
            }
            Step::Error => (self.error_event(), Step::End),
            Step::Finish => (self.finish_event(), self.after_finish()),
            Step::Usage => (self.usage_event(), self.after_usage()),
            Step::Done => (Bytes::from_static(DONE_EVENT), Step::End),
            Step::End => return Poll::Ready(None),
        };
        if next == Step::End {
            // This is the last event: once hyper has it, the stream is done.
            // `is_end_stream` now reports true, so hyper may never poll again.
            self.tracker.finish(Outcome::Completed);
        }
        self.step = next;
        self.arm(self.delay_before(next));
        Poll::Ready(Some(Ok(Frame::data(event))))
    }
}

/// How a `fail-midstream` body fails, in either API: it yields once first, so hyper flushes
/// the chunks already written even when the chunk delay is zero; then the stream is counted
/// aborted and the body fails.
#[derive(Debug, Default)]
pub(crate) struct Abort {
    yielded: bool,
}

impl Abort {
    pub(crate) fn poll(&mut self, tracker: &mut Tracker, cx: &mut Context<'_>) -> Poll<MockAbort> {
        if !std::mem::replace(&mut self.yielded, true) {
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        tracker.finish(Outcome::Aborted);
        Poll::Ready(MockAbort)
    }
}

/// The error a `fail-midstream` body yields to make hyper abort the response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MockAbort;

impl fmt::Display for MockAbort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("mock upstream aborted the stream on purpose (fail-midstream)")
    }
}

impl Error for MockAbort {}

/// Every response body the mock sends: a complete buffer or an event stream.
#[derive(Debug)]
pub(crate) struct MockBody(BodyKind);

#[derive(Debug)]
enum BodyKind {
    Full(Option<Bytes>),
    Sse(SseStream),
    Responses(ResponsesStream),
}

impl MockBody {
    pub(crate) fn full(bytes: impl Into<Bytes>) -> MockBody {
        let bytes = bytes.into();
        MockBody(BodyKind::Full((!bytes.is_empty()).then_some(bytes)))
    }

    /// The event stream `plan` asks for; `sleep` paces it (see [`SseStream::new`]).
    pub(crate) fn stream(plan: StreamPlan, tracker: Tracker, sleep: Pin<Box<Sleep>>) -> MockBody {
        MockBody(match plan {
            StreamPlan::Completions(spec) => BodyKind::Sse(SseStream::new(spec, tracker, sleep)),
            StreamPlan::Responses(spec) => {
                BodyKind::Responses(ResponsesStream::new(spec, tracker, sleep))
            }
        })
    }
}

impl Body for MockBody {
    type Data = Bytes;
    type Error = MockAbort;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, MockAbort>>> {
        match &mut self.get_mut().0 {
            BodyKind::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            BodyKind::Sse(stream) => stream.poll_event(cx),
            BodyKind::Responses(stream) => stream.poll_event(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.0 {
            BodyKind::Full(bytes) => bytes.is_none(),
            BodyKind::Sse(stream) => stream.step == Step::End,
            BodyKind::Responses(stream) => stream.is_end(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.0 {
            BodyKind::Full(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
            BodyKind::Sse(_) | BodyKind::Responses(_) => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn json_strings_round_trip() {
        let mut all_controls = String::new();
        for c in 0u8..0x20 {
            all_controls.push(char::from(c));
        }
        for s in [
            "",
            "plain",
            "quote \" backslash \\ slash /",
            "tab\tnewline\nreturn\r",
            &all_controls,
            "\u{7f} é \u{1f30a} \u{2028}",
        ] {
            let mut buf = Vec::new();
            push_json_str(&mut buf, s);
            let back: String = serde_json::from_slice(&buf).unwrap();
            assert_eq!(back, s);
        }
        for w in WORDS {
            let mut buf = Vec::new();
            push_json_str(&mut buf, w);
            assert_eq!(buf, serde_json::to_vec(w).unwrap());
        }
    }

    #[test]
    fn numbers() {
        for n in [0, 7, 10, 1_700_000_000, u64::MAX] {
            let mut buf = Vec::new();
            push_u64(&mut buf, n);
            assert_eq!(buf, n.to_string().into_bytes());
        }
    }

    #[test]
    fn oversized_event_shape() {
        let e = oversized_event();
        assert_eq!(e.len(), 6 + OVERSIZED_LINE_BYTES + 2);
        assert!(e.starts_with(b"data: xxx"));
        assert!(e.ends_with(b"x\n\n"));
        assert_eq!(e.iter().filter(|&&b| b == b'\n').count(), 2);
    }
}
