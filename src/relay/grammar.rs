//! Each API's stream grammar, in one place: what ends a stream cleanly, what an upstream error
//! event looks like, which events are the first token, where the usage is, and what the
//! gateway's own final error event must look like for that API's clients.
//!
//! - **Chat completions and legacy completions**: `data:` chunks, JSON objects; the stream ends
//!   with `data: [DONE]`; an upstream error is a chunk with an `error` key; the usage is a
//!   chunk's `usage` (`prompt_tokens`, `completion_tokens`); every chunk counts as output (the
//!   first one is the first token). Our final error: `data: {"error":{...}}`.
//! - **Responses**: every event has an `event:` line and a `data:` object with `type` and
//!   `sequence_number`; there is no `[DONE]`; the stream ends with one terminal event
//!   (`response.completed`, `response.incomplete`, or `response.failed`); an upstream error is
//!   `event: error`; the first output delta (`response.output_text.delta`, or any other
//!   `*.delta`) is the first token; the usage is the terminal event's `response.usage`
//!   (`input_tokens`, `output_tokens`). Our final error: `event: error` with the documented
//!   `ResponseErrorEvent` fields (`type`, `code`, `message`, `param`, `sequence_number`, the last
//!   one relayed plus one) and the `error` object OpenAI's servers also send, which is what makes
//!   the official SDKs raise.
//!
//! Only the fields named here are parsed; everything else is skipped unparsed, and the event's
//! bytes are relayed as they came.

use std::borrow::Cow;

use bytes::Bytes;
use serde::de::{IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value};

use crate::error::GatewayError;

/// The grammar of one stream: which API it belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grammar {
    /// `/v1/chat/completions` and `/v1/completions`: chunks ending with `data: [DONE]`.
    Chunks,
    /// `/v1/responses`: typed events ending with a terminal event.
    Responses,
}

/// What one upstream event means to the relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// Relayed; the stream goes on. `output`: it carries output (the first such one is the
    /// first token). `error`: the upstream's own error event (then the upstream's end needs no
    /// error of ours).
    Event { output: bool, error: bool },
    /// `data: [DONE]`: relayed, and the end of the stream (a marker, not an event of its own).
    Done,
    /// Relayed, and the last event: the upstream request is finished. `failed`: the upstream
    /// says the response failed (`response.failed`), in its own words.
    End { failed: bool },
    /// Not relayed; the stream ends as if the upstream had closed there (`[DONE]` in a
    /// Responses stream, which has none: only a terminal event ends one cleanly).
    Eof,
    /// Not what the API's upstream sends: not relayed, and the stream fails.
    Malformed,
}

/// One event, classified: what it means, its token usage if it carries one, and its
/// `sequence_number` (Responses).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Classified {
    pub kind: EventKind,
    pub usage: Option<Usage>,
    pub sequence: Option<u64>,
}

/// A stream's token counts, in chat's terms (Responses' `input_tokens` and `output_tokens`
/// are the prompt and completion).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

impl Classified {
    fn of(kind: EventKind) -> Classified {
        Classified {
            kind,
            usage: None,
            sequence: None,
        }
    }
}

impl Grammar {
    /// What a complete stream ends with, for the error that says it never came.
    pub fn end_marker(self) -> &'static str {
        match self {
            Grammar::Chunks => "data: [DONE]",
            Grammar::Responses => {
                "a terminal event (response.completed, response.incomplete or response.failed)"
            }
        }
    }

    /// Classifies one event: `event_type` is its `event:` field ("message" without one),
    /// `data` its data.
    pub fn classify(self, event_type: &str, data: &str) -> Classified {
        match self {
            Grammar::Chunks => classify_chunk(event_type, data),
            Grammar::Responses => classify_response_event(event_type, data),
        }
    }

    /// The gateway's final event for `error`, after the upstream's events whose highest
    /// `sequence_number` was `last_sequence` (Responses).
    pub fn error_event(self, error: &GatewayError, last_sequence: Option<u64>) -> Bytes {
        match self {
            Grammar::Chunks => error.to_sse_event(),
            Grammar::Responses => {
                match serde_json::from_slice::<Envelope>(&error.to_json()) {
                    Ok(envelope) => responses_error_event(envelope.error, last_sequence),
                    // Our own JSON always parses; this keeps the function total.
                    Err(_) => error.to_sse_event(),
                }
            }
        }
    }

    /// The final event for an upstream's error answer (an error status after the stream
    /// started): the upstream's own `error` object when its body has one, so the client sees
    /// the real reason, else our `upstream_error_status` error.
    pub fn upstream_error_event(
        self,
        status: http::StatusCode,
        body: &[u8],
        last_sequence: Option<u64>,
    ) -> Bytes {
        match serde_json::from_slice::<Envelope>(body) {
            Ok(envelope) => match self {
                Grammar::Chunks => {
                    let event = serde_json::json!({ "error": envelope.error });
                    sse_event(None, &event)
                }
                Grammar::Responses => responses_error_event(envelope.error, last_sequence),
            },
            Err(_) => self.error_event(
                &GatewayError::UpstreamStatus(status.as_u16()),
                last_sequence,
            ),
        }
    }
}

/// An OpenAI error body: `{"error": {...}}`.
#[derive(Deserialize)]
struct Envelope {
    error: Map<String, Value>,
}

/// `event: error` in the Responses API's shape, from an OpenAI error object.
fn responses_error_event(error: Map<String, Value>, last_sequence: Option<u64>) -> Bytes {
    let field = |name: &str| error.get(name).cloned().unwrap_or(Value::Null);
    let sequence = last_sequence.map_or(0, |n| n.saturating_add(1));
    let event = serde_json::json!({
        "type": "error",
        "code": field("code"),
        "message": field("message"),
        "param": field("param"),
        "sequence_number": sequence,
        "error": error,
    });
    sse_event(Some("error"), &event)
}

/// One SSE event: an optional `event:` line, one `data:` line, the blank line.
fn sse_event(event_type: Option<&str>, data: &Value) -> Bytes {
    let mut bytes = Vec::with_capacity(256);
    if let Some(name) = event_type {
        bytes.extend_from_slice(b"event: ");
        bytes.extend_from_slice(name.as_bytes());
        bytes.push(b'\n');
    }
    bytes.extend_from_slice(b"data: ");
    // serde_json writes no raw line breaks: a string's are escaped.
    bytes.extend_from_slice(data.to_string().as_bytes());
    bytes.extend_from_slice(b"\n\n");
    Bytes::from(bytes)
}

/// Just enough of a chunk to see whether it is an error, and its token usage if it has any;
/// every other key is skipped unparsed.
#[derive(Deserialize)]
struct ChunkProbe {
    error: Option<IgnoredAny>,
    usage: Option<ChunkUsage>,
}

/// A usage chunk's token counts.
#[derive(Deserialize)]
struct ChunkUsage {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
}

fn classify_chunk(event_type: &str, data: &str) -> Classified {
    let trimmed = data.trim();
    if trimmed == "[DONE]" {
        return Classified::of(EventKind::Done);
    }
    if !trimmed.starts_with('{') {
        return Classified::of(EventKind::Malformed);
    }
    match serde_json::from_str::<ChunkProbe>(trimmed) {
        Ok(probe) => Classified {
            kind: EventKind::Event {
                output: true,
                error: probe.error.is_some() || event_type == "error",
            },
            usage: probe.usage.map(|u| Usage {
                prompt_tokens: u.prompt_tokens,
                completion_tokens: u.completion_tokens,
            }),
            sequence: None,
        },
        Err(_) => Classified::of(EventKind::Malformed),
    }
}

/// The fields of a Responses event the relay reads. `type` borrows unless it has escapes.
#[derive(Deserialize)]
struct ResponseEventProbe<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<Lenient<Cow<'a, str>>>,
    #[serde(default)]
    sequence_number: Option<Lenient<u64>>,
}

/// The usage of a terminal event, read only from terminal events (once per stream), and
/// leniently: a usage that cannot be read is no usage, never a malformed stream.
#[derive(Deserialize)]
struct TerminalProbe {
    response: Option<TerminalResponse>,
}

#[derive(Deserialize)]
struct TerminalResponse {
    usage: Option<ResponsesUsage>,
}

#[derive(Deserialize)]
struct ResponsesUsage {
    #[serde(default)]
    input_tokens: u64,
    #[serde(default)]
    output_tokens: u64,
}

fn classify_response_event(event_type: &str, data: &str) -> Classified {
    let trimmed = data.trim();
    if trimmed == "[DONE]" {
        return Classified::of(EventKind::Eof);
    }
    if !trimmed.starts_with('{') {
        return Classified::of(EventKind::Malformed);
    }
    let Ok(probe) = serde_json::from_str::<ResponseEventProbe>(trimmed) else {
        return Classified::of(EventKind::Malformed);
    };
    let sequence = probe.sequence_number.and_then(|n| n.0);
    // The data's `type` names the event; the `event:` line only when the data has none.
    let name: &str = match probe.kind.as_ref().and_then(|k| k.0.as_deref()) {
        Some(name) => name,
        None => event_type,
    };
    let kind = match name {
        "response.completed" | "response.incomplete" => EventKind::End { failed: false },
        "response.failed" => EventKind::End { failed: true },
        "error" => EventKind::Event {
            output: false,
            error: true,
        },
        _ => EventKind::Event {
            output: name.ends_with(".delta"),
            error: false,
        },
    };
    let usage = match kind {
        EventKind::End { .. } => serde_json::from_str::<TerminalProbe>(trimmed)
            .ok()
            .and_then(|t| t.response?.usage)
            .map(|u| Usage {
                prompt_tokens: u.input_tokens,
                completion_tokens: u.output_tokens,
            }),
        _ => None,
    };
    Classified {
        kind,
        usage,
        sequence,
    }
}

/// A field read if it has the expected type, and skipped (None) otherwise: the relay does not
/// fail a stream over a field it only looks at.
struct Lenient<T>(Option<T>);

/// The values a [`Lenient`] field takes; every other JSON value reads as none.
trait LenientValue<'de>: Sized {
    fn from_str(_: Cow<'de, str>) -> Option<Self> {
        None
    }
    fn from_u64(_: u64) -> Option<Self> {
        None
    }
}

impl<'de: 'a, 'a> LenientValue<'de> for Cow<'a, str> {
    fn from_str(s: Cow<'de, str>) -> Option<Self> {
        Some(s)
    }
}

impl LenientValue<'_> for u64 {
    fn from_u64(n: u64) -> Option<Self> {
        Some(n)
    }
}

impl<'de, T: LenientValue<'de>> Deserialize<'de> for Lenient<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(std::marker::PhantomData<T>);
        impl<'de, T: LenientValue<'de>> Visitor<'de> for V<T> {
            type Value = Lenient<T>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Lenient(T::from_str(Cow::Borrowed(v))))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Lenient(T::from_str(Cow::Owned(v.to_owned()))))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
                Ok(Lenient(T::from_u64(v)))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
                Ok(Lenient(u64::try_from(v).ok().and_then(T::from_u64)))
            }
            fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
                Ok(Lenient(None))
            }
            fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
                Ok(Lenient(None))
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(Lenient(None))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Lenient(None))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Lenient(None))
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(grammar: Grammar, event_type: &str, data: &str) -> EventKind {
        grammar.classify(event_type, data).kind
    }

    #[test]
    fn chunks_end_with_done_and_report_errors_and_usage() {
        let g = Grammar::Chunks;
        assert_eq!(kind(g, "message", "[DONE]"), EventKind::Done);
        assert_eq!(
            kind(g, "message", r#"{"id":"x","choices":[]}"#),
            EventKind::Event {
                output: true,
                error: false
            }
        );
        assert_eq!(
            kind(g, "message", r#"{"error":{"message":"boom"}}"#),
            EventKind::Event {
                output: true,
                error: true
            }
        );
        let usage = g.classify(
            "message",
            r#"{"choices":[],"usage":{"prompt_tokens":7,"completion_tokens":3,"total_tokens":10}}"#,
        );
        assert_eq!(
            usage.usage,
            Some(Usage {
                prompt_tokens: 7,
                completion_tokens: 3
            })
        );
        assert_eq!(
            g.classify("message", r#"{"id":"x","choices":[],"usage":null}"#)
                .usage,
            None
        );
        for garbage in ["{not json", "[1,2]", "hello"] {
            assert_eq!(
                kind(g, "message", garbage),
                EventKind::Malformed,
                "{garbage}"
            );
        }
    }

    #[test]
    fn responses_end_with_a_terminal_event_and_count_deltas_as_output() {
        let g = Grammar::Responses;
        let created = r#"{"type":"response.created","sequence_number":0,"response":{"id":"resp_1","status":"in_progress","usage":null}}"#;
        let c = g.classify("response.created", created);
        assert_eq!(
            c.kind,
            EventKind::Event {
                output: false,
                error: false
            }
        );
        assert_eq!(c.sequence, Some(0));
        for delta in [
            "response.output_text.delta",
            "response.function_call_arguments.delta",
            "response.refusal.delta",
        ] {
            let data = format!(r#"{{"type":"{delta}","sequence_number":4,"delta":"hi"}}"#);
            let c = g.classify(delta, &data);
            assert_eq!(
                c.kind,
                EventKind::Event {
                    output: true,
                    error: false
                },
                "{delta}"
            );
            assert_eq!(c.sequence, Some(4));
        }
        let completed = r#"{"type":"response.completed","sequence_number":9,"response":{"id":"resp_1","status":"completed","usage":{"input_tokens":5,"output_tokens":24,"total_tokens":29}}}"#;
        let c = g.classify("response.completed", completed);
        assert_eq!(c.kind, EventKind::End { failed: false });
        assert_eq!(
            c.usage,
            Some(Usage {
                prompt_tokens: 5,
                completion_tokens: 24
            })
        );
        assert_eq!(
            kind(
                g,
                "response.incomplete",
                r#"{"type":"response.incomplete","response":{}}"#
            ),
            EventKind::End { failed: false }
        );
        assert_eq!(
            kind(
                g,
                "response.failed",
                r#"{"type":"response.failed","response":{"usage":null}}"#
            ),
            EventKind::End { failed: true }
        );
        assert_eq!(
            kind(
                g,
                "error",
                r#"{"type":"error","code":"server_error","message":"x"}"#
            ),
            EventKind::Event {
                output: false,
                error: true
            }
        );
        // [DONE] is not a Responses terminal event: the stream ends there, unrelayed.
        assert_eq!(kind(g, "message", "[DONE]"), EventKind::Eof);
        for garbage in ["{not json", "[1,2]", "hello"] {
            assert_eq!(
                kind(g, "message", garbage),
                EventKind::Malformed,
                "{garbage}"
            );
        }
    }

    #[test]
    fn responses_fields_of_the_wrong_type_are_skipped_not_fatal() {
        let g = Grammar::Responses;
        // No type in the data: the event: line names it.
        assert_eq!(
            kind(g, "response.completed", r#"{"sequence_number":3}"#),
            EventKind::End { failed: false }
        );
        // A type or sequence number of another type, an escaped type, a usage of the wrong shape.
        let c = g.classify("x", r#"{"type":5,"sequence_number":"7"}"#);
        assert_eq!(c.sequence, None);
        assert_eq!(
            c.kind,
            EventKind::Event {
                output: false,
                error: false
            }
        );
        assert_eq!(
            kind(g, "x", r#"{"type":"response.output_text\u002edelta"}"#),
            EventKind::Event {
                output: true,
                error: false
            }
        );
        let c = g.classify(
            "response.completed",
            r#"{"type":"response.completed","response":{"usage":{"input_tokens":"many"}}}"#,
        );
        assert_eq!(c.kind, EventKind::End { failed: false });
        assert_eq!(c.usage, None);
        assert_eq!(g.classify("x", r#"{"sequence_number":-1}"#).sequence, None);
    }

    fn data_of(event: &[u8]) -> (Option<String>, Value) {
        let events = crate::sse::parser::parse_all(event, 1 << 20).unwrap();
        assert_eq!(events.len(), 1, "{}", String::from_utf8_lossy(event));
        let e = &events[0];
        let name = (e.event_type != "message").then(|| e.event_type.clone());
        (name, serde_json::from_str(&e.data).unwrap())
    }

    #[test]
    fn final_error_events_take_each_apis_shape() {
        let error = GatewayError::UpstreamIncomplete("[DONE]");
        let (name, data) = data_of(&Grammar::Chunks.error_event(&error, None));
        assert_eq!(name, None);
        assert_eq!(data["error"]["code"], "upstream_incomplete_stream");

        let (name, data) = data_of(&Grammar::Responses.error_event(&error, Some(41)));
        assert_eq!(name.as_deref(), Some("error"));
        assert_eq!(data["type"], "error");
        assert_eq!(data["sequence_number"], 42);
        assert_eq!(data["code"], "upstream_incomplete_stream");
        assert_eq!(data["param"], Value::Null);
        assert_eq!(data["message"], data["error"]["message"]);
        assert_eq!(data["error"]["code"], "upstream_incomplete_stream");
        assert_eq!(data["error"]["type"], "server_error");
        // Before any upstream event: 0, as OpenAI's first event.
        let (_, data) = data_of(&Grammar::Responses.error_event(&error, None));
        assert_eq!(data["sequence_number"], 0);
    }

    #[test]
    fn an_upstream_error_answer_keeps_its_own_words() {
        let body = br#"{"error":{"message":"overloaded","type":"server_error","param":null,"code":"overloaded"}}"#;
        let status = http::StatusCode::SERVICE_UNAVAILABLE;
        let (_, data) = data_of(&Grammar::Chunks.upstream_error_event(status, body, None));
        assert_eq!(data["error"]["message"], "overloaded");
        let (name, data) = data_of(&Grammar::Responses.upstream_error_event(status, body, Some(2)));
        assert_eq!(name.as_deref(), Some("error"));
        assert_eq!(data["code"], "overloaded");
        assert_eq!(data["message"], "overloaded");
        assert_eq!(data["sequence_number"], 3);
        // A body that is not an OpenAI error: ours, with the status.
        let (_, data) = data_of(&Grammar::Responses.upstream_error_event(status, b"<html>", None));
        assert_eq!(data["code"], "upstream_error_status");
    }
}
