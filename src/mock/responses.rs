//! OpenAI's Responses API (`/v1/responses`): the Response object, its event
//! stream, and the small JSON answers of the retrieval routes.
//!
//! Everything is written with the hand-rolled writers of `sse`
//! ([`push_json_str`], [`push_u64`]) from one [`ResponseMeta`], so the
//! streamed objects, the non-streaming answer and every later retrieval are
//! the same bytes, and a stream costs no `serde_json::Value`. Sequence numbers
//! are a function of the step alone, which is what lets a retrieval
//! regenerate a stream and resume it after any event.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::Frame;
use serde_json::Value;
use tokio::time::{Instant, Sleep};

use super::sse::{oversized_event, push_json_str, push_u64, start_event, Abort, MockAbort, WORDS};
use super::stats::{Outcome, Tracker};
use super::{expected_content, Fault, STREAM_ERROR_MESSAGE};

/// The model name is echoed (and stored) cut to this many bytes: a request
/// may carry megabytes of it, and the store keeps a thousand of them.
pub(crate) const MAX_MODEL_BYTES: usize = 256;

/// `instructions` and the input text are echoed (and stored) cut to this
/// many bytes, for the same reason.
pub(crate) const MAX_TEXT_BYTES: usize = 4096;

/// `fail-malformed`'s event: it names a real event type so that a client
/// routing by `event:` gets as far as parsing the data.
const MALFORMED_EVENT: &[u8] = b"event: response.in_progress\ndata: {this is not json\n\n";

/// `s` cut to at most `max` bytes, on a character boundary.
pub(crate) fn cut(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// `resp_mock<n>` back to `n`; only the exact spelling the mock hands out.
pub(crate) fn parse_response_id(id: &str) -> Option<u64> {
    let digits = id.strip_prefix("resp_mock")?;
    let n: u64 = digits.parse().ok()?;
    // "+1" and "01" parse too but name no response.
    (digits.bytes().all(|b| b.is_ascii_digit()) && !digits.starts_with('0')).then_some(n)
}

/// The text of a request's `input`, as the input message the mock keeps:
/// the string itself, or the text of every item of an array (string
/// `content`, or the `text` of each content part), one item per line; cut to
/// [`MAX_TEXT_BYTES`]. `Err` for an `input` that is neither.
pub(crate) fn input_text(input: Option<&Value>) -> Result<String, ()> {
    fn push(text: &mut String, s: &str) {
        if !text.is_empty() && text.len() < MAX_TEXT_BYTES {
            text.push('\n');
        }
        let room = MAX_TEXT_BYTES.saturating_sub(text.len());
        text.push_str(cut(s, room));
    }
    let mut text = String::new();
    match input {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => push(&mut text, s),
        Some(Value::Array(items)) => {
            for item in items {
                if text.len() >= MAX_TEXT_BYTES {
                    break;
                }
                match item.get("content") {
                    Some(Value::String(s)) => push(&mut text, s),
                    Some(Value::Array(parts)) => {
                        for part in parts {
                            if let Some(Value::String(s)) = part.get("text") {
                                push(&mut text, s);
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
        Some(_) => return Err(()),
    }
    Ok(text)
}

/// Everything a Response object is made from: decided when the response is
/// created, shared by its stream and the store.
#[derive(Debug)]
pub(crate) struct ResponseMeta {
    /// `resp_mock<id>`, `msg_mock<id>`: the `n` of the creating request's
    /// `x-request-id`.
    pub id: u64,
    pub created_at: u64,
    /// Cut to [`MAX_MODEL_BYTES`].
    pub model: Box<str>,
    /// Cut to [`MAX_TEXT_BYTES`].
    pub instructions: Option<Box<str>>,
    pub chunks: u32,
    pub prompt_tokens: u64,
    pub background: bool,
}

/// A Response object's `status`, and what goes with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Status {
    /// No output, no usage: the lifecycle events before the terminal one.
    InProgress,
    /// The whole message and the usage.
    Completed,
    /// As completed, but `cancelled` (a cancelled background response).
    Cancelled,
    /// `fail-response-failed` after this many deltas: the partial message
    /// (`incomplete`), an error, no usage.
    Failed(u32),
}

impl Status {
    fn name(self) -> &'static [u8] {
        match self {
            Status::InProgress => b"in_progress",
            Status::Completed => b"completed",
            Status::Cancelled => b"cancelled",
            Status::Failed(_) => b"failed",
        }
    }
}

/// `"msg_mock<id>"`: the id of the one output message.
fn push_item_id(buf: &mut Vec<u8>, id: u64) {
    buf.extend_from_slice(b"\"msg_mock");
    push_u64(buf, id);
    buf.push(b'"');
}

/// `{"type":"output_text","text":..,"annotations":[]}`
fn push_text_part(buf: &mut Vec<u8>, text: &str) {
    buf.extend_from_slice(b"{\"type\":\"output_text\",\"text\":");
    push_json_str(buf, text);
    buf.extend_from_slice(b",\"annotations\":[]}");
}

/// The assistant message: `status` with no content part, or one holding `text`.
fn push_message(buf: &mut Vec<u8>, id: u64, status: &[u8], text: Option<&str>) {
    buf.extend_from_slice(b"{\"id\":");
    push_item_id(buf, id);
    buf.extend_from_slice(b",\"type\":\"message\",\"status\":\"");
    buf.extend_from_slice(status);
    buf.extend_from_slice(b"\",\"role\":\"assistant\",\"content\":[");
    if let Some(text) = text {
        push_text_part(buf, text);
    }
    buf.extend_from_slice(b"]}");
}

/// The Response object. Besides what the mock varies, it carries the fields
/// OpenAI's SDK models require (`parallel_tool_calls`, `tool_choice`,
/// `tools`) and the defaults OpenAI reports for a plain text request.
fn push_response(buf: &mut Vec<u8>, meta: &ResponseMeta, status: Status) {
    buf.extend_from_slice(b"{\"id\":\"resp_mock");
    push_u64(buf, meta.id);
    buf.extend_from_slice(b"\",\"object\":\"response\",\"created_at\":");
    push_u64(buf, meta.created_at);
    buf.extend_from_slice(b",\"status\":\"");
    buf.extend_from_slice(status.name());
    buf.extend_from_slice(b"\",\"background\":");
    let background: &[u8] = if meta.background { b"true" } else { b"false" };
    buf.extend_from_slice(background);
    buf.extend_from_slice(b",\"completed_at\":");
    if status == Status::Completed {
        // Generated in no time: the mock's answer exists once created.
        push_u64(buf, meta.created_at);
    } else {
        buf.extend_from_slice(b"null");
    }
    buf.extend_from_slice(b",\"error\":");
    if let Status::Failed(_) = status {
        buf.extend_from_slice(b"{\"code\":\"server_error\",\"message\":");
        push_json_str(buf, STREAM_ERROR_MESSAGE);
        buf.push(b'}');
    } else {
        buf.extend_from_slice(b"null");
    }
    buf.extend_from_slice(b",\"incomplete_details\":null,\"instructions\":");
    match &meta.instructions {
        Some(instructions) => push_json_str(buf, instructions),
        None => buf.extend_from_slice(b"null"),
    }
    buf.extend_from_slice(b",\"max_output_tokens\":null,\"max_tool_calls\":null,\"model\":");
    push_json_str(buf, &meta.model);
    buf.extend_from_slice(b",\"output\":[");
    match status {
        Status::InProgress => {}
        Status::Completed | Status::Cancelled => push_message(
            buf,
            meta.id,
            b"completed",
            Some(&expected_content(meta.chunks)),
        ),
        Status::Failed(sent) => {
            push_message(buf, meta.id, b"incomplete", Some(&expected_content(sent)));
        }
    }
    buf.extend_from_slice(
        b"],\"parallel_tool_calls\":true,\"previous_response_id\":null,\
          \"reasoning\":{\"effort\":null,\"summary\":null},\"service_tier\":\"default\",\
          \"temperature\":1.0,\"text\":{\"format\":{\"type\":\"text\"},\"verbosity\":\"medium\"},\
          \"tool_choice\":\"auto\",\"tools\":[],\"top_logprobs\":0,\"top_p\":1.0,\
          \"truncation\":\"disabled\",\"usage\":",
    );
    match status {
        Status::Completed | Status::Cancelled => {
            let output = u64::from(meta.chunks);
            buf.extend_from_slice(b"{\"input_tokens\":");
            push_u64(buf, meta.prompt_tokens);
            buf.extend_from_slice(
                b",\"input_tokens_details\":{\"cached_tokens\":0,\"cache_write_tokens\":0},\
                  \"output_tokens\":",
            );
            push_u64(buf, output);
            buf.extend_from_slice(
                b",\"output_tokens_details\":{\"reasoning_tokens\":0},\"total_tokens\":",
            );
            push_u64(buf, meta.prompt_tokens.saturating_add(output));
            buf.push(b'}');
        }
        Status::InProgress | Status::Failed(_) => buf.extend_from_slice(b"null"),
    }
    buf.extend_from_slice(b",\"user\":null,\"metadata\":{}}");
}

/// Room for a Response object's fixed fields.
const RESPONSE_FIXED_BYTES: usize = 900;

/// Room for one Response object of `meta` with `text_len` bytes of output.
fn response_capacity(meta: &ResponseMeta, text_len: usize) -> usize {
    RESPONSE_FIXED_BYTES
        + meta.model.len()
        + meta.instructions.as_ref().map_or(0, |i| i.len())
        // Escapes make a few words longer; this is only a first guess.
        + text_len * 9 / 8
}

/// The Response object as a JSON body.
pub(crate) fn response_json(meta: &ResponseMeta, status: Status) -> Bytes {
    let text_len = 8 * meta.chunks as usize;
    let mut buf = Vec::with_capacity(response_capacity(meta, text_len));
    push_response(&mut buf, meta, status);
    Bytes::from(buf)
}

/// `GET /v1/responses/{id}/input_items`: the request's input as one user message.
pub(crate) fn input_items_json(meta: &ResponseMeta, input: &str) -> Bytes {
    let mut id = Vec::with_capacity(32);
    id.extend_from_slice(b"\"msg_mock");
    push_u64(&mut id, meta.id);
    id.extend_from_slice(b"_input\"");
    let mut buf = Vec::with_capacity(256 + input.len() * 9 / 8);
    buf.extend_from_slice(b"{\"object\":\"list\",\"data\":[{\"id\":");
    buf.extend_from_slice(&id);
    buf.extend_from_slice(
        b",\"type\":\"message\",\"role\":\"user\",\"status\":\"completed\",\
          \"content\":[{\"type\":\"input_text\",\"text\":",
    );
    push_json_str(&mut buf, input);
    buf.extend_from_slice(b"}]}],\"first_id\":");
    buf.extend_from_slice(&id);
    buf.extend_from_slice(b",\"last_id\":");
    buf.extend_from_slice(&id);
    buf.extend_from_slice(b",\"has_more\":false}");
    Bytes::from(buf)
}

/// `DELETE /v1/responses/{id}`.
pub(crate) fn deleted_json(id: u64) -> Bytes {
    let mut buf = Vec::with_capacity(80);
    buf.extend_from_slice(b"{\"id\":\"resp_mock");
    push_u64(&mut buf, id);
    buf.extend_from_slice(b"\",\"object\":\"response.deleted\",\"deleted\":true}");
    Bytes::from(buf)
}

/// Everything a Responses stream needs to know, decided by the handler.
#[derive(Debug)]
pub(crate) struct ResponsesSpec {
    pub meta: Arc<ResponseMeta>,
    pub first_delay: Duration,
    pub chunk_delay: Duration,
    /// Stream-shaping faults; `None` for a retrieval, which replays the
    /// response as completed.
    pub fault: Option<Fault>,
    pub timestamps: bool,
    /// Send only the events whose `sequence_number` is greater.
    pub starting_after: Option<u64>,
    /// Whether the stream ends with `response.completed`: not for a
    /// cancelled response, which never completed.
    pub completes: bool,
}

/// The next thing the stream will emit, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Created,
    Malformed,
    Oversized,
    InProgress,
    ItemAdded,
    PartAdded,
    /// The delta with this zero-based index.
    Delta(u32),
    TextDone,
    PartDone,
    ItemDone,
    Completed,
    /// fail-midstream: fail the body.
    Abort,
    /// fail-error-event after this many deltas.
    Error(u32),
    /// fail-response-failed after this many deltas.
    Failed(u32),
    End,
}

/// The event stream of one Response.
pub(crate) struct ResponsesStream {
    tracker: Tracker,
    sleep: Pin<Box<Sleep>>,
    /// Whether `sleep` is armed for the next step.
    waiting: bool,
    step: Step,
    abort: Abort,
    meta: Arc<ResponseMeta>,
    first_delay: Duration,
    chunk_delay: Duration,
    fault: Option<Fault>,
    timestamps: bool,
    completes: bool,
}

impl fmt::Debug for ResponsesStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponsesStream")
            .field("id", &self.meta.id)
            .field("step", &self.step)
            .field("chunks", &self.meta.chunks)
            .field("fault", &self.fault)
            .finish_non_exhaustive()
    }
}

impl ResponsesStream {
    /// `sleep` is reused for all pacing; its current deadline is ignored.
    pub(crate) fn new(
        spec: ResponsesSpec,
        tracker: Tracker,
        sleep: Pin<Box<Sleep>>,
    ) -> ResponsesStream {
        let mut stream = ResponsesStream {
            tracker,
            sleep,
            waiting: false,
            step: Step::Created,
            abort: Abort::default(),
            meta: spec.meta,
            first_delay: spec.first_delay,
            chunk_delay: spec.chunk_delay,
            fault: spec.fault,
            timestamps: spec.timestamps,
            completes: spec.completes,
        };
        // Skipped events cost no time; the first one sent waits as it would
        // have after the one before it.
        let mut before = None;
        if let Some(after) = spec.starting_after {
            while stream.skipped(stream.step, after) {
                before = Some(stream.step);
                stream.step = stream.next(stream.step);
            }
        }
        if stream.step == Step::End {
            // Nothing left to send: done already.
            stream.tracker.finish(Outcome::Completed);
        }
        if let Some(before) = before {
            stream.arm(stream.delay(before, stream.step));
        }
        stream
    }

    pub(crate) fn is_end(&self) -> bool {
        self.step == Step::End
    }

    fn skipped(&self, step: Step, after: u64) -> bool {
        match self.sequence_number(step) {
            Some(n) => n <= after,
            // A fault's extra event goes with the one before it.
            None => matches!(step, Step::Malformed | Step::Oversized),
        }
    }

    fn arm(&mut self, delay: Duration) {
        self.waiting = !delay.is_zero();
        if self.waiting {
            self.sleep.as_mut().reset(Instant::now() + delay);
        }
    }

    /// The `sequence_number` of the event `step` sends, if it sends one.
    fn sequence_number(&self, step: Step) -> Option<u64> {
        let n = u64::from(self.meta.chunks);
        Some(match step {
            Step::Created => 0,
            Step::InProgress => 1,
            Step::ItemAdded => 2,
            Step::PartAdded => 3,
            Step::Delta(i) | Step::Error(i) | Step::Failed(i) => 4 + u64::from(i),
            Step::TextDone => n + 4,
            Step::PartDone => n + 5,
            Step::ItemDone => n + 6,
            Step::Completed => n + 7,
            Step::Malformed | Step::Oversized | Step::Abort | Step::End => return None,
        })
    }

    fn next(&self, step: Step) -> Step {
        match step {
            Step::Created => match self.fault {
                Some(Fault::Malformed) => Step::Malformed,
                Some(Fault::Oversized) => Step::Oversized,
                _ => Step::InProgress,
            },
            Step::Malformed | Step::Oversized => Step::InProgress,
            Step::InProgress => Step::ItemAdded,
            Step::ItemAdded => Step::PartAdded,
            Step::PartAdded => self.after_deltas(0),
            Step::Delta(i) => self.after_deltas(i + 1),
            Step::TextDone => Step::PartDone,
            Step::PartDone => Step::ItemDone,
            Step::ItemDone if self.completes && self.fault != Some(Fault::NoDone) => {
                Step::Completed
            }
            Step::ItemDone
            | Step::Completed
            | Step::Abort
            | Step::Error(_)
            | Step::Failed(_)
            | Step::End => Step::End,
        }
    }

    /// What follows once `sent` deltas have gone out.
    fn after_deltas(&self, sent: u32) -> Step {
        let chunks = self.meta.chunks;
        let cut = sent >= 2 || sent >= chunks;
        match self.fault {
            Some(Fault::Midstream) if cut => Step::Abort,
            Some(Fault::ErrorEvent) if cut => Step::Error(sent),
            Some(Fault::ResponseFailed) if cut => Step::Failed(sent),
            _ if sent < chunks => Step::Delta(sent),
            _ => Step::TextDone,
        }
    }

    /// The wait between sending `from` and sending `to`: the first-chunk
    /// delay before whatever follows the opening events (the first delta,
    /// the time to first token), the chunk delay before each later delta and
    /// before a fault's cut, nothing otherwise.
    fn delay(&self, from: Step, to: Step) -> Duration {
        if from == Step::PartAdded {
            return self.first_delay;
        }
        match to {
            Step::Delta(_) | Step::Abort | Step::Error(_) | Step::Failed(_) => self.chunk_delay,
            _ => Duration::ZERO,
        }
    }

    /// `event: <kind>\ndata: {"type":"<kind>",` + `fields` +
    /// `,"sequence_number":<n>}\n\n`.
    fn event(
        &self,
        kind: &str,
        n: u64,
        capacity: usize,
        fields: impl FnOnce(&mut Vec<u8>),
    ) -> Bytes {
        let mut buf = start_event(self.timestamps, capacity + 2 * kind.len() + 64);
        buf.extend_from_slice(b"event: ");
        buf.extend_from_slice(kind.as_bytes());
        buf.extend_from_slice(b"\ndata: {\"type\":\"");
        buf.extend_from_slice(kind.as_bytes());
        buf.extend_from_slice(b"\",");
        fields(&mut buf);
        buf.extend_from_slice(b",\"sequence_number\":");
        push_u64(&mut buf, n);
        buf.extend_from_slice(b"}\n\n");
        Bytes::from(buf)
    }

    /// `"item_id":"msg_mock<n>","output_index":0,"content_index":0`
    fn push_part_address(&self, buf: &mut Vec<u8>) {
        buf.extend_from_slice(b"\"item_id\":");
        push_item_id(buf, self.meta.id);
        buf.extend_from_slice(b",\"output_index\":0,\"content_index\":0");
    }

    /// An event carrying the whole Response object.
    fn lifecycle_event(&self, kind: &str, n: u64, status: Status) -> Bytes {
        let text_len = match status {
            Status::InProgress => 0,
            _ => 8 * self.meta.chunks as usize,
        };
        self.event(kind, n, response_capacity(&self.meta, text_len), |buf| {
            buf.extend_from_slice(b"\"response\":");
            push_response(buf, &self.meta, status);
        })
    }

    /// The JSON event `step` sends.
    fn json_event(&self, step: Step) -> Bytes {
        let id = self.meta.id;
        let n = self.sequence_number(step).unwrap_or(0);
        match step {
            Step::Created => self.lifecycle_event("response.created", n, Status::InProgress),
            Step::InProgress => self.lifecycle_event("response.in_progress", n, Status::InProgress),
            Step::ItemAdded => self.event("response.output_item.added", n, 160, |buf| {
                buf.extend_from_slice(b"\"output_index\":0,\"item\":");
                push_message(buf, id, b"in_progress", None);
            }),
            Step::PartAdded => self.event("response.content_part.added", n, 160, |buf| {
                self.push_part_address(buf);
                buf.extend_from_slice(b",\"part\":");
                push_text_part(buf, "");
            }),
            Step::Delta(i) => self.event("response.output_text.delta", n, 128, |buf| {
                self.push_part_address(buf);
                buf.extend_from_slice(b",\"delta\":");
                push_json_str(buf, WORDS[i as usize % WORDS.len()]);
                buf.extend_from_slice(b",\"logprobs\":[]");
            }),
            Step::TextDone => {
                let text = expected_content(self.meta.chunks);
                self.event("response.output_text.done", n, 128 + text.len(), |buf| {
                    self.push_part_address(buf);
                    buf.extend_from_slice(b",\"text\":");
                    push_json_str(buf, &text);
                    buf.extend_from_slice(b",\"logprobs\":[]");
                })
            }
            Step::PartDone => {
                let text = expected_content(self.meta.chunks);
                self.event("response.content_part.done", n, 160 + text.len(), |buf| {
                    self.push_part_address(buf);
                    buf.extend_from_slice(b",\"part\":");
                    push_text_part(buf, &text);
                })
            }
            Step::ItemDone => {
                let text = expected_content(self.meta.chunks);
                self.event("response.output_item.done", n, 200 + text.len(), |buf| {
                    buf.extend_from_slice(b"\"output_index\":0,\"item\":");
                    push_message(buf, id, b"completed", Some(&text));
                })
            }
            Step::Completed => self.lifecycle_event("response.completed", n, Status::Completed),
            Step::Failed(sent) => self.lifecycle_event("response.failed", n, Status::Failed(sent)),
            Step::Error(_) => self.error_event(n),
            // Not JSON events: sent by the caller.
            Step::Malformed | Step::Oversized | Step::Abort | Step::End => Bytes::new(),
        }
    }

    /// The error event's nested `error` object goes after its
    /// `sequence_number`, as OpenAI sends it; `event` puts the number last.
    fn error_event(&self, n: u64) -> Bytes {
        let mut buf = start_event(self.timestamps, 400);
        buf.extend_from_slice(
            b"event: error\ndata: {\"type\":\"error\",\"code\":\"server_error\",\"message\":",
        );
        push_json_str(&mut buf, STREAM_ERROR_MESSAGE);
        buf.extend_from_slice(b",\"param\":null,\"sequence_number\":");
        push_u64(&mut buf, n);
        buf.extend_from_slice(
            b",\"error\":{\"type\":\"server_error\",\"code\":\"server_error\",\"message\":",
        );
        push_json_str(&mut buf, STREAM_ERROR_MESSAGE);
        buf.extend_from_slice(b",\"param\":null}}\n\n");
        Bytes::from(buf)
    }

    pub(crate) fn poll_event(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, MockAbort>>> {
        if self.waiting {
            std::task::ready!(self.sleep.as_mut().poll(cx));
            self.waiting = false;
        }
        let step = self.step;
        let event = match step {
            Step::End => return Poll::Ready(None),
            Step::Abort => {
                let abort = std::task::ready!(self.abort.poll(&mut self.tracker, cx));
                self.step = Step::End;
                return Poll::Ready(Some(Err(abort)));
            }
            Step::Malformed => Bytes::from_static(MALFORMED_EVENT),
            Step::Oversized => oversized_event(),
            _ => self.json_event(step),
        };
        let next = self.next(step);
        if next == Step::End {
            // The last event: once hyper has it, the stream is done.
            self.tracker.finish(Outcome::Completed);
        }
        self.step = next;
        self.arm(self.delay(step, next));
        Poll::Ready(Some(Ok(Frame::data(event))))
    }
}

#[cfg(test)]
mod unit {
    use super::*;
    use serde_json::json;

    #[test]
    fn cuts_on_character_boundaries() {
        assert_eq!(cut("abc", 5), "abc");
        assert_eq!(cut("abc", 2), "ab");
        assert_eq!(cut("aé", 2), "a");
        assert_eq!(cut("\u{1f30a}", 3), "");
    }

    #[test]
    fn only_the_ids_the_mock_hands_out_parse() {
        assert_eq!(parse_response_id("resp_mock1"), Some(1));
        assert_eq!(parse_response_id("resp_mock123"), Some(123));
        for id in [
            "resp_mock",
            "resp_mock0",
            "resp_mock01",
            "resp_mock+1",
            "resp_1",
            "x",
        ] {
            assert_eq!(parse_response_id(id), None, "{id}");
        }
    }

    #[test]
    fn input_text_of_every_shape() {
        assert_eq!(input_text(None), Ok(String::new()));
        assert_eq!(input_text(Some(&json!(null))), Ok(String::new()));
        assert_eq!(input_text(Some(&json!("hi"))), Ok("hi".to_owned()));
        let items = json!([
            {"role": "user", "content": "one"},
            {"type": "function_call_output", "output": "ignored"},
            {"role": "user", "content": [{"type": "input_text", "text": "two"}, {"type": "input_image"}]},
        ]);
        assert_eq!(input_text(Some(&items)), Ok("one\ntwo".to_owned()));
        assert_eq!(input_text(Some(&json!(5))), Err(()));
        assert_eq!(input_text(Some(&json!({"a": 1}))), Err(()));
        let long = json!(["x".repeat(3000), "y".repeat(3000)].map(|t| json!({"content": t})));
        let text = input_text(Some(&long)).unwrap();
        assert_eq!(text.len(), MAX_TEXT_BYTES);
        assert_eq!(text, format!("{}\n{}", "x".repeat(3000), "y".repeat(1095)));
    }
}
