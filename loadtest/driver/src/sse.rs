//! Just enough of an SSE reader for a load driver: splits the body into lines (LF, CRLF or CR,
//! also when a CRLF is split across reads), dispatches an event at each blank line, and reports
//! the comments the driver cares about. Nothing is allocated per event: the current line (when
//! it spans reads) and the current event's data live in two reused buffers, each capped.
//!
//! * `: ping` is a heartbeat ([`Item::Ping`]).
//! * `: sent_us=<Unix microseconds>` (the mock's `x-mock-timestamps: 1`) stamps the event it
//!   belongs to ([`Event::sent_us`]).
//! * Other comments are [`Item::Comment`].
//! * The `event:` field (the SSE event type, as the Responses API names each event) is kept, at
//!   most [`MAX_EVENT_TYPE_BYTES`] of it ([`Event::event_type`]); other fields are ignored.
//! * An event is dispatched only if it had at least one `data` line (WHATWG), and an unfinished
//!   event at the end of the body is not dispatched.

use tidegate::mock::SENT_US_COMMENT;

/// Longest line kept; the rest of a longer line is dropped (its event is still counted).
pub const MAX_LINE_BYTES: usize = 64 * 1024;
/// Most data bytes kept per event (enough to classify any real error event).
pub const MAX_DATA_BYTES: usize = 64 * 1024;
/// Most bytes of an `event:` field kept (the Responses API's longest type is under 64); a longer
/// one is cut there, and so matches none of the types the driver looks for.
pub const MAX_EVENT_TYPE_BYTES: usize = 128;

/// One dispatched event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Event<'a> {
    /// From the event's `: sent_us=` comment, if it had one.
    pub sent_us: Option<u64>,
    /// The value of the event's last `event:` line; empty without one (the default type,
    /// `message`). At most [`MAX_EVENT_TYPE_BYTES`].
    pub event_type: &'a [u8],
    /// The event's data (data lines joined by LF), at most [`MAX_DATA_BYTES`].
    pub data: &'a [u8],
}

/// What the reader reports, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Item<'a> {
    Event(Event<'a>),
    /// A `: ping` heartbeat comment.
    Ping,
    /// Any other comment line except `: sent_us=`.
    Comment,
}

#[derive(Debug, Default)]
pub struct SseReader {
    /// The start of a line that has not ended yet.
    partial: Vec<u8>,
    /// The last read ended with CR: an LF at the start of the next one ends nothing.
    after_cr: bool,
    data: Vec<u8>,
    has_data: bool,
    sent_us: Option<u64>,
    event_type: Vec<u8>,
}

impl SseReader {
    /// Feeds one read of the body. Bounded by the length of `chunk`.
    pub fn feed(&mut self, mut chunk: &[u8], on: &mut impl FnMut(Item<'_>)) {
        if chunk.is_empty() {
            return;
        }
        if std::mem::take(&mut self.after_cr) {
            if let Some(rest) = chunk.strip_prefix(b"\n") {
                chunk = rest;
            }
        }
        while let Some(pos) = chunk.iter().position(|&b| b == b'\n' || b == b'\r') {
            let (head, rest) = chunk.split_at(pos);
            let mut rest = &rest[1..];
            if chunk[pos] == b'\r' {
                match rest.first() {
                    Some(b'\n') => rest = &rest[1..],
                    None => self.after_cr = true,
                    Some(_) => {}
                }
            }
            if self.partial.is_empty() {
                self.line(&head[..head.len().min(MAX_LINE_BYTES)], on);
            } else {
                self.keep(head);
                let line = std::mem::take(&mut self.partial);
                self.line(&line, on);
                self.partial = line;
                self.partial.clear();
            }
            chunk = rest;
        }
        self.keep(chunk);
    }

    fn keep(&mut self, bytes: &[u8]) {
        let room = MAX_LINE_BYTES.saturating_sub(self.partial.len());
        self.partial
            .extend_from_slice(&bytes[..bytes.len().min(room)]);
    }

    fn line(&mut self, line: &[u8], on: &mut impl FnMut(Item<'_>)) {
        if line.is_empty() {
            if self.has_data {
                // The data buffer ends with the LF of its last line, which is not data.
                let end = self.data.len().saturating_sub(1);
                on(Item::Event(Event {
                    sent_us: self.sent_us,
                    event_type: &self.event_type,
                    data: &self.data[..end],
                }));
            }
            self.data.clear();
            self.has_data = false;
            self.sent_us = None;
            self.event_type.clear();
            return;
        }
        if let Some(comment) = line.strip_prefix(b":") {
            let text = comment.strip_prefix(b" ").unwrap_or(comment);
            if text == b"ping" {
                on(Item::Ping);
            } else if let Some(digits) = text.strip_prefix(&SENT_US_COMMENT[2..]) {
                match parse_u64(digits) {
                    Some(us) => self.sent_us = Some(us),
                    None => on(Item::Comment),
                }
            } else {
                on(Item::Comment);
            }
            return;
        }
        let (name, value) = match line.iter().position(|&b| b == b':') {
            Some(colon) => {
                let value = &line[colon + 1..];
                (&line[..colon], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &b""[..]),
        };
        if name == b"data" {
            self.has_data = true;
            let room = MAX_DATA_BYTES.saturating_sub(self.data.len());
            self.data.extend_from_slice(&value[..value.len().min(room)]);
            // Always keep the separator, so the last byte can be dropped at dispatch.
            self.data.push(b'\n');
        } else if name == b"event" {
            self.event_type.clear();
            self.event_type
                .extend_from_slice(&value[..value.len().min(MAX_EVENT_TYPE_BYTES)]);
        }
    }
}

fn parse_u64(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(
        digits
            .iter()
            .fold(0u64, |n, &d| n * 10 + u64::from(d - b'0')),
    )
}

/// What an event means to the driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventKind {
    /// The stream's good end: chat's `[DONE]`; a Responses stream's terminal
    /// `response.completed` or `response.incomplete`.
    Done,
    /// An error event, by its code (sanitized): chat's `data: {"error":{...}}` (the error's
    /// `code`, else its `type`); a Responses stream's `event: error` (its `code`, else its nested
    /// `error`'s `code` or `type`); else `unknown`.
    Error(String),
    /// Responses: the terminal `response.failed`, by its `response.error.code` (else `unknown`).
    Failed(String),
    /// Responses: `data: [DONE]`, which that API never sends (its streams end with a terminal
    /// event): a protocol error.
    UnexpectedDone,
    /// Responses: a `*.delta` event, output; the first one is the stream's first token.
    Delta,
    /// Anything else: a chat chunk, any other Responses event.
    Data,
}

impl EventKind {
    /// The failure this event makes of its stream, as `(kind, message)` of a failed outcome;
    /// `None` for the events that do not fail it.
    pub fn failure(&self) -> Option<(String, &'static str)> {
        match self {
            EventKind::Error(code) => Some((format!("error_event:{code}"), "final error event")),
            EventKind::Failed(code) => Some((
                format!("response.failed:{code}"),
                "a response.failed event ended the stream",
            )),
            EventKind::UnexpectedDone => Some((
                "protocol".to_owned(),
                "data: [DONE] in a Responses stream, which ends with a terminal event instead",
            )),
            EventKind::Done | EventKind::Delta | EventKind::Data => None,
        }
    }
}

/// Classifies a chat completion stream's event by its data. Only data that contains `"error"` is
/// parsed as JSON: an ordinary chunk cannot contain those seven bytes (quotes inside a JSON
/// string are escaped), so the common case costs one substring search.
pub fn classify(data: &[u8]) -> EventKind {
    if data == b"[DONE]" {
        return EventKind::Done;
    }
    let looks_like_error =
        data.trim_ascii_start().starts_with(b"{") && data.windows(7).any(|w| w == b"\"error\"");
    if !looks_like_error {
        return EventKind::Data;
    }
    let Ok(serde_json::Value::Object(object)) = serde_json::from_slice::<serde_json::Value>(data)
    else {
        return EventKind::Data;
    };
    let Some(error) = object.get("error") else {
        return EventKind::Data;
    };
    let code = ["code", "type"]
        .iter()
        .find_map(|key| error.get(key).and_then(|v| v.as_str()))
        .unwrap_or("unknown");
    EventKind::Error(sanitize_kind(code))
}

/// Classifies a Responses stream's event by its type: its `event:` line, or without one the
/// data's top-level `"type"`. An ordinary event costs a comparison of its type, and nothing of
/// its data is parsed but for the rare `error` and `response.failed` (for their code) and an
/// event without an `event:` line whose data does not begin with `{"type":"…"` (a JSON parse
/// that reads only `type`). Without any type, the data is read as chat's (`{"error":{...}}` is
/// still an error event).
pub fn classify_response_event(event_type: &[u8], data: &[u8]) -> EventKind {
    if data == b"[DONE]" {
        return EventKind::UnexpectedDone;
    }
    if !event_type.is_empty() {
        return by_response_type(event_type, data);
    }
    match data_type(data) {
        Some(name) => by_response_type(name, data),
        None => classify(data),
    }
}

fn by_response_type(name: &[u8], data: &[u8]) -> EventKind {
    if name.ends_with(b".delta") {
        return EventKind::Delta;
    }
    match name {
        b"response.completed" | b"response.incomplete" => EventKind::Done,
        b"response.failed" => {
            let value = serde_json::from_slice::<serde_json::Value>(data).ok();
            let code = value
                .as_ref()
                .and_then(|v| v.get("response")?.get("error")?.get("code")?.as_str());
            EventKind::Failed(sanitize_kind(code.unwrap_or("unknown")))
        }
        b"error" => {
            let value = serde_json::from_slice::<serde_json::Value>(data).ok();
            let code = value.as_ref().and_then(|v| {
                let nested = v.get("error");
                v.get("code")
                    .and_then(|c| c.as_str())
                    .or_else(|| nested?.get("code")?.as_str())
                    .or_else(|| nested?.get("type")?.as_str())
            });
            EventKind::Error(sanitize_kind(code.unwrap_or("unknown")))
        }
        _ => EventKind::Data,
    }
}

/// The data's top-level `"type"`: read off its start when the data begins `{"type":"` (as the
/// Responses API's events do), else by a JSON parse that skips every other key. `None` without a
/// string `type`.
fn data_type(data: &[u8]) -> Option<&[u8]> {
    let data = data.trim_ascii();
    if let Some(rest) = data.strip_prefix(b"{\"type\":\"") {
        let end = rest.iter().position(|&b| b == b'"' || b == b'\\')?;
        if rest[end] == b'"' {
            return Some(&rest[..end]);
        }
    }
    if !data.starts_with(b"{") {
        return None;
    }
    #[derive(serde::Deserialize)]
    struct TypeProbe<'a> {
        #[serde(rename = "type", borrow, default)]
        kind: Option<&'a str>,
    }
    serde_json::from_slice::<TypeProbe<'_>>(data)
        .ok()?
        .kind
        .map(str::as_bytes)
}

/// Keeps a code usable as a key in reports: at most 64 of `[A-Za-z0-9_.-]`, others as `_`.
pub fn sanitize_kind(code: &str) -> String {
    let cleaned: String = code
        .chars()
        .take(64)
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if cleaned.is_empty() {
        "unknown".to_owned()
    } else {
        cleaned
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Eq)]
    enum Seen {
        Event(Option<u64>, String),
        Ping,
        Comment,
    }

    fn read(chunks: &[&[u8]]) -> Vec<Seen> {
        let mut reader = SseReader::default();
        let mut seen = Vec::new();
        for chunk in chunks {
            reader.feed(chunk, &mut |item| {
                seen.push(match item {
                    Item::Event(e) => {
                        Seen::Event(e.sent_us, String::from_utf8_lossy(e.data).into_owned())
                    }
                    Item::Ping => Seen::Ping,
                    Item::Comment => Seen::Comment,
                })
            });
        }
        seen
    }

    fn event(sent_us: Option<u64>, data: &str) -> Seen {
        Seen::Event(sent_us, data.to_owned())
    }

    #[test]
    fn mock_events_with_timestamps() {
        let got = read(&[
            b": sent_us=1700000000000001\ndata: {\"a\":1}\n\n",
            b": sent_us=1700000000000002\ndata: {\"a\":2}\n\ndata: [DONE]\n\n",
        ]);
        assert_eq!(
            got,
            vec![
                event(Some(1_700_000_000_000_001), "{\"a\":1}"),
                event(Some(1_700_000_000_000_002), "{\"a\":2}"),
                event(None, "[DONE]"),
            ]
        );
    }

    #[test]
    fn lines_and_events_split_anywhere() {
        let whole: &[u8] =
            b": sent_us=42\r\ndata: one\r\n\r\n: ping\r\n\r\ndata:two\rdata: three\r\r: hi\n\n";
        let want = vec![
            event(Some(42), "one"),
            Seen::Ping,
            event(None, "two\nthree"),
            Seen::Comment,
        ];
        assert_eq!(read(&[whole]), want);
        // Every split into two reads, including between the CR and LF of a CRLF.
        for cut in 0..=whole.len() {
            assert_eq!(read(&[&whole[..cut], &whole[cut..]]), want, "cut at {cut}");
        }
        // One byte at a time, with empty reads between.
        let bytes: Vec<&[u8]> = whole.chunks(1).flat_map(|b| [b, &b""[..]]).collect();
        assert_eq!(read(&bytes), want);
    }

    #[test]
    fn spec_details() {
        // Only one leading space is stripped; a line without a colon is a field with no value;
        // other fields are ignored; a block without data dispatches nothing; data: with no
        // value still dispatches an (empty) event.
        let got = read(&[b"data:  two spaces\n\nid: 7\nevent: x\nretry: 5\n\ndata\n\ndata:\n\n"]);
        assert_eq!(
            got,
            vec![event(None, " two spaces"), event(None, ""), event(None, "")]
        );
        // The stamp belongs to its block only.
        let got = read(&[b": sent_us=5\n\ndata: x\n\n"]);
        assert_eq!(got, vec![event(None, "x")]);
        // A bad stamp is just a comment.
        let got = read(&[b": sent_us=12a\ndata: x\n\n"]);
        assert_eq!(got, vec![Seen::Comment, event(None, "x")]);
        // An unfinished event at the end is not dispatched.
        assert_eq!(read(&[b"data: [DONE]\n"]), vec![]);
        assert_eq!(read(&[b":ping\n"]), vec![Seen::Ping]);
    }

    #[test]
    fn long_lines_are_capped_but_still_events() {
        let mut long = b"data: ".to_vec();
        long.resize(long.len() + 3 * MAX_LINE_BYTES, b'x');
        long.extend_from_slice(b"\n\ndata: after\n\n");
        let mut reader = SseReader::default();
        let mut sizes = Vec::new();
        for chunk in long.chunks(1000) {
            reader.feed(chunk, &mut |item| {
                if let Item::Event(e) = item {
                    sizes.push(e.data.len());
                }
            });
        }
        assert_eq!(sizes.len(), 2);
        assert!(sizes[0] <= MAX_DATA_BYTES && sizes[0] > 60_000, "{sizes:?}");
        assert_eq!(sizes[1], 5);
    }

    #[test]
    fn classify_events() {
        assert_eq!(classify(b"[DONE]"), EventKind::Done);
        assert_eq!(
            classify(br#"{"id":"c1","choices":[{"delta":{"content":"say \"error\" now"}}]}"#),
            EventKind::Data
        );
        assert_eq!(
            classify(br#"{"error":{"message":"m","type":"server_error","param":null,"code":"upstream_reset"}}"#),
            EventKind::Error("upstream_reset".into())
        );
        assert_eq!(
            classify(br#"{"error":{"message":"m","type":"server_error","code":null}}"#),
            EventKind::Error("server_error".into())
        );
        assert_eq!(
            classify(br#" {"error":"text"}"#),
            EventKind::Error("unknown".into())
        );
        assert_eq!(
            classify(br#"{"error":{"code":"a b/c"}}"#),
            EventKind::Error("a_b_c".into())
        );
        assert_eq!(classify(b"{\"error\": not json"), EventKind::Data);
        assert_eq!(classify(b""), EventKind::Data);
    }

    /// Each event's type and data, as the reader dispatches them.
    fn typed(chunks: &[&[u8]]) -> Vec<(String, String)> {
        let mut reader = SseReader::default();
        let mut seen = Vec::new();
        for chunk in chunks {
            reader.feed(chunk, &mut |item| {
                if let Item::Event(e) = item {
                    seen.push((
                        String::from_utf8_lossy(e.event_type).into_owned(),
                        String::from_utf8_lossy(e.data).into_owned(),
                    ));
                }
            });
        }
        seen
    }

    #[test]
    fn event_types_belong_to_their_event() {
        let whole: &[u8] = b": sent_us=7\nevent: response.created\ndata: {\"a\":1}\n\n\
            data: untyped\n\nevent: x\n\nevent:error\r\nevent: last wins\r\ndata: e\r\n\r\n";
        let want = vec![
            ("response.created".to_owned(), "{\"a\":1}".to_owned()),
            (String::new(), "untyped".to_owned()),
            // A block without data dispatches nothing, and its type goes with it.
            ("last wins".to_owned(), "e".to_owned()),
        ];
        assert_eq!(typed(&[whole]), want);
        for cut in 0..=whole.len() {
            assert_eq!(typed(&[&whole[..cut], &whole[cut..]]), want, "cut at {cut}");
        }
        // The stamp is still read with an event line before or after it.
        assert_eq!(
            read(&[b"event: response.output_text.delta\n: sent_us=9\ndata: {}\n\n"]),
            vec![event(Some(9), "{}")]
        );
        // A long type is cut, so it matches nothing.
        let mut long = b"event: ".to_vec();
        long.resize(long.len() + 1000, b'a');
        long.extend_from_slice(b".delta\ndata: {}\n\n");
        let got = typed(&[&long]);
        assert_eq!(got[0].0.len(), MAX_EVENT_TYPE_BYTES);
        assert_eq!(
            classify_response_event(got[0].0.as_bytes(), b"{}"),
            EventKind::Data
        );
    }

    #[test]
    fn classify_response_events() {
        let c = |event_type: &str, data: &str| {
            classify_response_event(event_type.as_bytes(), data.as_bytes())
        };
        // By the event line; the data is not looked at (it may say anything).
        assert_eq!(
            c(
                "response.output_text.delta",
                r#"{"type":"response.output_text.delta","sequence_number":4,"delta":"Hi"}"#
            ),
            EventKind::Delta
        );
        assert_eq!(
            c("response.reasoning_summary_text.delta", "{}"),
            EventKind::Delta
        );
        assert_eq!(c("response.output_text.done", "{}"), EventKind::Data);
        assert_eq!(
            c("response.created", r#"{"error":{"code":"x"}}"#),
            EventKind::Data
        );
        assert_eq!(c("response.completed", "{}"), EventKind::Done);
        assert_eq!(c("response.incomplete", "{}"), EventKind::Done);
        assert_eq!(
            c(
                "response.failed",
                r#"{"type":"response.failed","response":{"status":"failed","error":{"code":"server_error","message":"m"}}}"#
            ),
            EventKind::Failed("server_error".into())
        );
        assert_eq!(
            c("response.failed", "{}"),
            EventKind::Failed("unknown".into())
        );
        // The gateway's own error event (the documented fields and the nested error object).
        assert_eq!(
            c(
                "error",
                r#"{"type":"error","code":"upstream_reset","message":"m","param":null,"sequence_number":9,"error":{"type":"server_error","code":"upstream_reset","message":"m"}}"#
            ),
            EventKind::Error("upstream_reset".into())
        );
        assert_eq!(
            c(
                "error",
                r#"{"type":"error","code":null,"message":"m","error":{"type":"server_error","code":null}}"#
            ),
            EventKind::Error("server_error".into())
        );
        assert_eq!(
            c("error", r#"{"type":"error","code":"a b","message":"m"}"#),
            EventKind::Error("a_b".into())
        );
        assert_eq!(c("error", "not json"), EventKind::Error("unknown".into()));
        // No event line: the data's top-level type, read off its start or parsed.
        assert_eq!(
            c("", r#"{"type":"response.output_text.delta","delta":"x"}"#),
            EventKind::Delta
        );
        assert_eq!(
            c(
                "",
                r#" {"sequence_number":1,"type":"response.completed","response":{"type":"x"}}"#
            ),
            EventKind::Done
        );
        assert_eq!(
            c(
                "",
                r#"{"type":"error","code":"rate_limit_exceeded","message":"m"}"#
            ),
            EventKind::Error("rate_limit_exceeded".into())
        );
        assert_eq!(
            c("", r#"{"response":{"type":"response.completed"}}"#),
            EventKind::Data
        );
        assert_eq!(c("", r#"{"type":"a\"b"}"#), EventKind::Data);
        assert_eq!(c("", r#"{"type":7}"#), EventKind::Data);
        // No type at all: read as chat's, so a chat-style error event still counts.
        assert_eq!(
            c("", r#"{"error":{"message":"m","code":"upstream_reset"}}"#),
            EventKind::Error("upstream_reset".into())
        );
        assert_eq!(c("", "hello"), EventKind::Data);
        // A Responses stream has no [DONE], whatever its event line says.
        assert_eq!(c("", "[DONE]"), EventKind::UnexpectedDone);
        assert_eq!(c("message", "[DONE]"), EventKind::UnexpectedDone);
    }

    #[test]
    fn what_fails_a_stream() {
        assert_eq!(EventKind::Done.failure(), None);
        assert_eq!(EventKind::Delta.failure(), None);
        assert_eq!(EventKind::Data.failure(), None);
        let kind = |k: EventKind| k.failure().unwrap().0;
        assert_eq!(kind(EventKind::Error("x".into())), "error_event:x");
        assert_eq!(
            kind(EventKind::Failed("server_error".into())),
            "response.failed:server_error"
        );
        assert_eq!(kind(EventKind::UnexpectedDone), "protocol");
    }
}
