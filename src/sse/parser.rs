//! Incremental parser for `text/event-stream` bodies, following the WHATWG HTML standard's
//! "Server-sent events" section ("Interpreting an event stream").
//!
//! Upstream bytes arrive in reads of arbitrary size and the relay passes them on to the client
//! unchanged, but only one whole *block* at a time: a block is every byte up to and including
//! the blank line that ends it. Forwarding whole blocks is what lets the relay put a heartbeat
//! comment or a final error event *between* two upstream events without ever landing in the
//! middle of one. So besides the dispatched [`Event`], [`Parser::feed`] reports for each
//! completed block the offset in the current read where that block ends; the relay forwards
//! the bytes up to that offset and holds back the rest.
//!
//! The parser is meant to sit on the hot path. It scans each read for line terminators with a
//! slice search, interprets complete lines straight from the read, and copies bytes only for a
//! line that is split across reads. Memory is bounded: a block may hold at most
//! `max_event_bytes` bytes, so an upstream that never sends a newline, or never a blank line,
//! gets [`ParseError::EventTooLarge`] instead of an ever-growing buffer.
//!
//! Only the standard library is used.

use std::error::Error;
use std::fmt;
use std::mem;

/// U+FEFF encoded as UTF-8; the standard lets one of these open a stream.
const BOM: [u8; 3] = [0xEF, 0xBB, 0xBF];

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Event type; "message" when the block had no (or an empty) `event` field.
    pub event_type: String,
    /// Data buffer with the final LF removed.
    pub data: String,
    /// The last-event-id buffer at dispatch time (persists across events).
    pub last_event_id: String,
}

/// Why the parser gave up on a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseError {
    /// More than `limit` bytes arrived without a blank line ending the block.
    EventTooLarge {
        /// The `max_event_bytes` the parser was built with.
        limit: usize,
    },
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParseError::EventTooLarge { limit } => write!(
                f,
                "event stream block exceeds {limit} bytes without a blank line ending it"
            ),
        }
    }
}

impl Error for ParseError {}

/// What the previous read's last byte means for the first byte of the next read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PendingCr {
    /// The previous read did not end with a CR.
    No,
    /// The previous read ended with a CR that ended a non-blank line. An LF opening the next
    /// read completes that CRLF; it still belongs to the current block and is counted.
    InBlock,
    /// The previous read ended with a CR that ended a blank line, and the block was already
    /// reported. An LF opening the next read completes that CRLF; it is swallowed and not
    /// counted against the next block, so the limit doesn't depend on where reads split.
    AfterBlock,
}

/// Progress through the optional byte-order mark that may open the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BomState {
    /// Still at the start of the stream: this many leading bytes matched the BOM so far. They
    /// are held back because a read may end in the middle of the BOM.
    Matching(usize),
    /// Past the start of the stream; later BOMs are ordinary content.
    Done,
}

/// Incremental event-stream parser. Feed it every read of the response body, in order.
#[derive(Debug, Clone)]
pub struct Parser {
    /// The most bytes one block may hold; see [`Parser::new`].
    max_event_bytes: usize,
    /// Bytes of the current block counted against `max_event_bytes`.
    block_bytes: usize,
    /// Start of a line that a read ended in the middle of. Empty while lines are parsed straight
    /// from the read, which is the common case.
    line: Vec<u8>,
    /// Lets a CRLF split across two reads count as a single line end.
    pending_cr: PendingCr,
    /// Lets a BOM split across reads still be stripped.
    bom: BomState,
    /// The event being built, lent to `on_block` when its block ends, then cleared for the next
    /// one with its buffers kept, so events arriving in one read share one allocation.
    /// - `data`: the standard's data buffer, every `data` value of the block, each followed by LF.
    /// - `event_type`: the standard's event type buffer.
    /// - `last_event_id`: the id as of the last completed block, what a reconnect should send as
    ///   `Last-Event-ID`. Unlike `last_event_id_buffer`, it ignores an `id` field in a block
    ///   that never finished.
    event: Event,
    /// The standard's last event ID buffer, set by `id` fields as they are read.
    last_event_id_buffer: String,
    /// Reconnection time from the last valid `retry` field.
    retry: Option<u64>,
    /// Set on the first error; the stream can't be resynchronised after a dropped block.
    poisoned: Option<ParseError>,
}

impl Parser {
    /// Creates a parser for a new stream.
    ///
    /// `max_event_bytes`: the most bytes one block (all its lines and line ends, comments
    /// included) may hold. A leading BOM is not counted, nor is the LF of a CRLF that
    /// terminates the blank line ending a block (that LF may arrive in the next read, after the
    /// block was already reported, so counting it would make the outcome depend on how the
    /// stream was split into reads). Memory held is a small multiple of this value.
    pub fn new(max_event_bytes: usize) -> Parser {
        Parser {
            max_event_bytes,
            block_bytes: 0,
            line: Vec::new(),
            pending_cr: PendingCr::No,
            bom: BomState::Matching(0),
            event: Event {
                event_type: String::new(),
                data: String::new(),
                last_event_id: String::new(),
            },
            last_event_id_buffer: String::new(),
            retry: None,
            poisoned: None,
        }
    }

    /// Feeds one read. For every block completed inside `chunk`, in order, calls
    /// `on_block(end, event)`: `end` is the offset in `chunk` just past the line terminator of
    /// the blank line that ends the block; `event` is `Some` if the block dispatched an event
    /// (non-empty data buffer). Blocks that dispatch nothing (comments only, empty data, only
    /// id/retry) are still reported, with `None`.
    ///
    /// When that blank line ends with a CR that is the last byte of `chunk`, the block is
    /// reported at once with `end == chunk.len()`; if the next read then starts with LF, that
    /// LF completes the CRLF and is skipped, but it lies before the next block's `end`, so it
    /// is forwarded with the next block.
    ///
    /// Blocks completed before an error in the same read are still reported. After an error
    /// the parser is poisoned: further feeds return the same error and report nothing.
    pub fn feed(
        &mut self,
        chunk: &[u8],
        mut on_block: impl FnMut(usize, Option<&Event>),
    ) -> Result<(), ParseError> {
        if let Some(err) = &self.poisoned {
            return Err(err.clone());
        }
        let len = chunk.len();
        let mut pos = self.skip_bom(chunk)?;

        // Checked only on a non-empty read: an empty read must not forget the CR.
        if pos < len {
            let pending = mem::replace(&mut self.pending_cr, PendingCr::No);
            if pending != PendingCr::No && chunk[pos] == b'\n' {
                pos += 1;
                if pending == PendingCr::InBlock {
                    self.charge(1)?;
                }
            }
        }

        while pos < len {
            let rest = &chunk[pos..];
            let Some(line_len) = memchr::memchr2(b'\n', b'\r', rest) else {
                // Charge before buffering, so the buffer never outgrows the limit.
                self.charge(rest.len())?;
                self.line.extend_from_slice(rest);
                break;
            };
            let eol = pos + line_len;
            let is_cr = chunk[eol] == b'\r';
            let crlf = is_cr && chunk.get(eol + 1) == Some(&b'\n');
            let cr_at_end = is_cr && eol + 1 == len;
            let next = eol + 1 + usize::from(crlf);

            if line_len == 0 && self.line.is_empty() {
                // Blank line. Only its first terminator byte is charged: see `Parser::new`.
                self.charge(1)?;
                self.block_bytes = 0;
                if cr_at_end {
                    self.pending_cr = PendingCr::AfterBlock;
                }
                let dispatched = self.dispatch();
                on_block(next, dispatched.then_some(&self.event));
                self.reset_event();
            } else {
                // A CR alone ends a line, so the line is charged and read up to its first
                // terminator byte, and an LF completing a CRLF is charged after it: that LF may
                // come in the next read, and the outcome must not depend on where reads split.
                self.charge(eol + 1 - pos)?;
                if self.line.is_empty() {
                    self.process_line(&chunk[pos..eol]);
                } else {
                    // Taken out and put back so its capacity is reused for the next split line.
                    let mut line = mem::take(&mut self.line);
                    line.extend_from_slice(&chunk[pos..eol]);
                    self.process_line(&line);
                    line.clear();
                    self.line = line;
                }
                if crlf {
                    self.charge(1)?;
                }
                if cr_at_end {
                    self.pending_cr = PendingCr::InBlock;
                }
            }
            pos = next;
        }
        if self.block_bytes == 0 && self.event.data.capacity() > 0 {
            // Between blocks: give the data buffer back. Events that arrive together share it;
            // a stream waiting for its next token holds none (0.5 KiB a stream, by heaptrack).
            self.event.data = String::new();
        }
        Ok(())
    }

    /// Reconnection time in ms from the last valid `retry` field, if any.
    pub fn retry(&self) -> Option<u64> {
        self.retry
    }

    /// Bytes received since the end of the last block (the partial block being held), as
    /// counted against the limit. This can be less than the raw bytes the relay is holding
    /// by a leading BOM (or the part of one seen so far) and by an LF skipped as the second
    /// half of a CRLF split across reads.
    pub fn pending_bytes(&self) -> usize {
        self.block_bytes
    }

    /// Whether bytes of an unfinished block are held. At the end of the stream such a block
    /// is dropped, as the standard requires; this lets the caller notice and log it.
    pub fn has_partial_block(&self) -> bool {
        self.block_bytes > 0 || matches!(self.bom, BomState::Matching(n) if n > 0)
    }

    /// The last event ID as of the last completed block, for a `Last-Event-ID` header on
    /// reconnection. An `id` field in a block that never finished doesn't count.
    pub fn last_event_id(&self) -> &str {
        &self.event.last_event_id
    }

    /// Strips one BOM at the start of the stream, even when it is split across reads, and
    /// returns where parsing of `chunk` should start.
    fn skip_bom(&mut self, chunk: &[u8]) -> Result<usize, ParseError> {
        let BomState::Matching(mut matched) = self.bom else {
            return Ok(0);
        };
        let mut pos = 0;
        while matched < BOM.len() {
            match chunk.get(pos) {
                None => {
                    self.bom = BomState::Matching(matched);
                    return Ok(pos);
                }
                Some(&b) if b == BOM[matched] => {
                    matched += 1;
                    pos += 1;
                }
                Some(_) => {
                    // Not a BOM after all: the bytes held back start the first line.
                    self.bom = BomState::Done;
                    self.charge(matched)?;
                    self.line.extend_from_slice(&BOM[..matched]);
                    return Ok(pos);
                }
            }
        }
        self.bom = BomState::Done;
        Ok(pos)
    }

    /// Adds `n` bytes to the current block, failing once it holds more than the limit.
    fn charge(&mut self, n: usize) -> Result<(), ParseError> {
        self.block_bytes = self.block_bytes.saturating_add(n);
        if self.block_bytes <= self.max_event_bytes {
            return Ok(());
        }
        let err = ParseError::EventTooLarge {
            limit: self.max_event_bytes,
        };
        // Nothing more will be parsed, so give the memory back now.
        self.line = Vec::new();
        self.event.data = String::new();
        self.event.event_type = String::new();
        self.poisoned = Some(err.clone());
        Err(err)
    }

    /// Interprets one non-blank line (without its terminator).
    fn process_line(&mut self, line: &[u8]) {
        if line.first() == Some(&b':') {
            return;
        }
        // Splitting on bytes before decoding gives the same result as decoding first: ':' and
        // ' ' are ASCII, and lossy UTF-8 decoding never merges an ASCII byte into a U+FFFD.
        let (name, value) = match line.iter().position(|&b| b == b':') {
            Some(colon) => {
                let value = &line[colon + 1..];
                (&line[..colon], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &[][..]),
        };
        match name {
            b"event" => {
                self.event.event_type.clear();
                push_utf8_lossy(&mut self.event.event_type, value);
            }
            b"data" => {
                // One allocation for the value and its LF: the buffer starts empty for most
                // events, because it is given back between blocks.
                self.event.data.reserve(value.len() + 1);
                push_utf8_lossy(&mut self.event.data, value);
                self.event.data.push('\n');
            }
            // Lossy decoding keeps 0x00 as U+0000, so checking the bytes is enough.
            b"id" if !value.contains(&0) => {
                self.last_event_id_buffer.clear();
                push_utf8_lossy(&mut self.last_event_id_buffer, value);
            }
            b"retry" => {
                if let Some(ms) = parse_retry(value) {
                    self.retry = Some(ms);
                }
            }
            _ => {}
        }
    }

    /// Runs the standard's dispatch steps for a blank line; true if `self.event` now holds an
    /// event to report.
    fn dispatch(&mut self) -> bool {
        // `clone_from` reuses the allocation, so an unchanged id costs no allocation.
        self.event
            .last_event_id
            .clone_from(&self.last_event_id_buffer);
        if self.event.data.is_empty() {
            self.event.event_type.clear();
            return false;
        }
        if self.event.data.ends_with('\n') {
            self.event.data.pop();
        }
        if self.event.event_type.is_empty() {
            self.event.event_type.push_str("message");
        }
        true
    }

    /// Empties the data and event type buffers for the next block. Their capacity is kept for
    /// the next event of the same read; one unusually large event does not pin its buffer.
    fn reset_event(&mut self) {
        for buffer in [&mut self.event.data, &mut self.event.event_type] {
            if buffer.capacity() > RETAINED_BUFFER_BYTES {
                *buffer = String::new();
            } else {
                buffer.clear();
            }
        }
    }
}

/// Largest data or event type buffer kept between events (see [`Parser::reset_event`]).
const RETAINED_BUFFER_BYTES: usize = 4096;

/// Appends `bytes` decoded as UTF-8, with invalid sequences replaced by U+FFFD as the standard
/// says. Valid input, the common case, is appended without an intermediate copy.
fn push_utf8_lossy(dst: &mut String, bytes: &[u8]) {
    match std::str::from_utf8(bytes) {
        Ok(text) => dst.push_str(text),
        Err(_) => dst.push_str(&String::from_utf8_lossy(bytes)),
    }
}

/// Parses a `retry` value: one or more ASCII digits, base ten. Anything else, including a
/// value too large for `u64`, is ignored as the standard says.
fn parse_retry(value: &[u8]) -> Option<u64> {
    if value.is_empty() {
        return None;
    }
    value.iter().try_fold(0u64, |acc, &b| {
        if b.is_ascii_digit() {
            acc.checked_mul(10)?.checked_add(u64::from(b - b'0'))
        } else {
            None
        }
    })
}

/// Parses a whole stream given in one piece and returns its events. A trailing block without
/// its blank line is not dispatched.
pub fn parse_all(input: &[u8], max_event_bytes: usize) -> Result<Vec<Event>, ParseError> {
    let mut parser = Parser::new(max_event_bytes);
    let mut events = Vec::new();
    parser.feed(input, |_, event| events.extend(event.cloned()))?;
    Ok(events)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BIG: usize = 1 << 20;

    fn ev(event_type: &str, data: &str, last_event_id: &str) -> Event {
        Event {
            event_type: event_type.to_owned(),
            data: data.to_owned(),
            last_event_id: last_event_id.to_owned(),
        }
    }

    fn msg(data: &str) -> Event {
        ev("message", data, "")
    }

    /// Feeds `pieces` in order and returns (absolute block end, event) pairs.
    fn feed_pieces(parser: &mut Parser, pieces: &[&[u8]]) -> Vec<(usize, Option<Event>)> {
        let mut blocks = Vec::new();
        let mut base = 0;
        for piece in pieces {
            parser
                .feed(piece, |end, event| {
                    blocks.push((base + end, event.cloned()))
                })
                .expect("feed");
            base += piece.len();
        }
        blocks
    }

    /// Parses `input` whole, then one byte per read with an empty read before each byte, and
    /// checks both give `expected` events and `retry`.
    fn check(input: &[u8], expected: &[Event], retry: Option<u64>) {
        let mut whole = Parser::new(BIG);
        let whole_blocks = feed_pieces(&mut whole, &[input]);
        let whole_events: Vec<Event> = whole_blocks.iter().filter_map(|b| b.1.clone()).collect();
        assert_eq!(whole_events, expected, "whole input");
        assert_eq!(whole.retry(), retry, "retry, whole input");
        assert_eq!(parse_all(input, BIG).expect("parse_all"), expected);

        let mut pieces: Vec<&[u8]> = Vec::new();
        for i in 0..input.len() {
            pieces.push(&[]);
            pieces.push(&input[i..i + 1]);
        }
        let mut split = Parser::new(BIG);
        let split_events: Vec<Event> = feed_pieces(&mut split, &pieces)
            .into_iter()
            .filter_map(|b| b.1)
            .collect();
        assert_eq!(split_events, expected, "one byte per read");
        assert_eq!(split.retry(), retry, "retry, one byte per read");
    }

    // ---- Cases modelled on web-platform-tests eventsource/format-* ----

    #[test]
    fn format_bom() {
        // The first BOM is stripped; the second one is content, so "\u{FEFF}data" is an
        // unknown field and its block dispatches nothing.
        check(
            "\u{FEFF}data:1\n\n\u{FEFF}data:2\n\ndata:3\n\n".as_bytes(),
            &[msg("1"), msg("3")],
            None,
        );
    }

    #[test]
    fn format_bom_2() {
        check(
            "\u{FEFF}\u{FEFF}data:1\n\ndata:2\n\ndata:3\n\n".as_bytes(),
            &[msg("2"), msg("3")],
            None,
        );
    }

    #[test]
    fn format_bom_split_across_reads() {
        let input = "\u{FEFF}data:1\n\n".as_bytes();
        let mut parser = Parser::new(BIG);
        let blocks = feed_pieces(&mut parser, &[&input[..1], &[], &input[1..]]);
        assert_eq!(blocks, vec![(input.len(), Some(msg("1")))]);

        // The BOM's first two bytes, then something else: the held bytes become content.
        let mut parser = Parser::new(BIG);
        let blocks = feed_pieces(&mut parser, &[&[0xEF, 0xBB], b"data:1\n\ndata:2\n\n"]);
        assert_eq!(blocks, vec![(10, None), (18, Some(msg("2")))]);
    }

    #[test]
    fn format_comments() {
        let long_a = "a".repeat(3000);
        let long_b = "b".repeat(5000);
        let input = format!(
            ":\ndata:1\r:\0\n:\r\ndata:2\n:{long_a}\rdata:3\n:data:fail\r:{long_b}\ndata:4\n\n\
             ::only a comment\n\n"
        );
        let mut parser = Parser::new(BIG);
        let blocks = feed_pieces(&mut parser, &[input.as_bytes()]);
        assert_eq!(blocks.len(), 2);
        assert_eq!(blocks[0].1, Some(msg("1\n2\n3\n4")));
        assert_eq!(blocks[1].1, None);
        check(input.as_bytes(), &[msg("1\n2\n3\n4")], None);
    }

    #[test]
    fn format_data_before_final_empty_line() {
        let input = b"retry:1000\ndata:test1\n\nid:test\ndata:test2";
        check(input, &[msg("test1")], Some(1000));
        let mut parser = Parser::new(BIG);
        feed_pieces(&mut parser, &[input]);
        assert!(parser.has_partial_block());
        assert_eq!(parser.pending_bytes(), b"id:test\ndata:test2".len());
        // The id of the unfinished block never took effect.
        assert_eq!(parser.last_event_id(), "");
    }

    #[test]
    fn format_field_data() {
        // "data:" alone appends an empty line, so the block still dispatches (empty data);
        // two bare "data" lines dispatch a single LF.
        check(
            b"data:\n\ndata\ndata\n\ndata:test\n\n",
            &[msg(""), msg("\n"), msg("test")],
            None,
        );
    }

    #[test]
    fn format_field_event() {
        check(
            b"event:test\ndata:x\n\ndata:x\n\n",
            &[ev("test", "x", ""), ev("message", "x", "")],
            None,
        );
    }

    #[test]
    fn format_field_event_empty() {
        check(
            b"event: \ndata:data\n\nevent\ndata:data\n\nevent:a\nevent:\ndata:data\n\n",
            &[msg("data"), msg("data"), msg("data")],
            None,
        );
    }

    #[test]
    fn format_field_id() {
        check(
            b"id: 1\ndata: a\n\ndata: b\n\n",
            &[ev("message", "a", "1"), ev("message", "b", "1")],
            None,
        );
    }

    #[test]
    fn format_field_id_2() {
        // An id field with no value (with or without a colon) resets the id to empty.
        check(
            b"id:1\ndata:a\n\nid\ndata:b\n\nid:2\ndata:c\n\nid:\ndata:d\n\n",
            &[
                ev("message", "a", "1"),
                ev("message", "b", ""),
                ev("message", "c", "2"),
                ev("message", "d", ""),
            ],
            None,
        );
    }

    #[test]
    fn format_field_id_3() {
        // A block that dispatches nothing still sets the id for later events, and the last
        // id field of a block wins.
        let input = b"id:1\n\ndata:a\n\nid:2\nid:3\n:note\n\ndata:b\n\n";
        check(
            input,
            &[ev("message", "a", "1"), ev("message", "b", "3")],
            None,
        );
        let mut parser = Parser::new(BIG);
        feed_pieces(&mut parser, &[b"id:1\n\n"]);
        assert_eq!(parser.last_event_id(), "1");
    }

    #[test]
    fn format_field_id_null() {
        check(
            b"id:1\ndata:a\n\nid: a\0b\ndata:b\n\nid:\0\ndata:c\n\n",
            &[
                ev("message", "a", "1"),
                ev("message", "b", "1"),
                ev("message", "c", "1"),
            ],
            None,
        );
    }

    #[test]
    fn format_field_parsing() {
        // Field names are case-sensitive and must match exactly; only the first colon splits,
        // and only one leading space of the value is dropped.
        let input = b"data:\0\ndata:  two\rDATA:x\ndata\0:x\ndata:one\r\0data:x\n\
                      da-ta:x\rdata_x\ndata:three\rdata:\r\n data:x\ndata::four\ndata: \n\n";
        check(input, &[msg("\0\n two\none\nthree\n\n:four\n")], None);
    }

    #[test]
    fn format_field_retry() {
        check(b"retry:03\ndata:x\n\n", &[msg("x")], Some(3));
        check(b"retry: 1000\n\nretry:250\n\n", &[], Some(250));
        check(b"retry:18446744073709551615\n\n", &[], Some(u64::MAX));
    }

    #[test]
    fn format_field_retry_bogus() {
        for bogus in [
            "retry:3000xyz\n",
            "retry:1 0\n",
            "retry:-1\n",
            "retry:+1\n",
            "retry:1.5\n",
            "retry:  7\n",
            "retry:\u{FF11}\n",
            "retry:18446744073709551616\n",
            "Retry:7\n",
        ] {
            let input = format!("{bogus}data:x\n\n");
            check(input.as_bytes(), &[msg("x")], None);
        }
        // A bogus value leaves an earlier valid one in place.
        check(b"retry:5\n\nretry:x\ndata:y\n\n", &[msg("y")], Some(5));
    }

    #[test]
    fn format_field_retry_empty() {
        check(b"retry\ndata:x\n\n", &[msg("x")], None);
        check(b"retry:\ndata:x\n\nretry: \n\n", &[msg("x")], None);
        check(b"retry:9\n\nretry\n\n", &[], Some(9));
    }

    #[test]
    fn format_field_unknown() {
        check(
            b"data:a\n data\ndata\nunknown:zzz\nplain words here\n:note\nDATA:no\ndata:b\n\n",
            &[msg("a\n\nb")],
            None,
        );
    }

    #[test]
    fn format_leading_space() {
        check(
            b"data:\tone\rdata: \ndata:  two\ndata:three\n\n",
            &[msg("\tone\n\n two\nthree")],
            None,
        );
    }

    #[test]
    fn format_newlines() {
        let input = b"data:a\r\ndata\rdata:b\n\r\ndata:c\r\rdata:d\n\ndata:e\r\n\r";
        check(input, &[msg("a\n\nb"), msg("c"), msg("d"), msg("e")], None);
        let mut parser = Parser::new(BIG);
        let ends: Vec<usize> = feed_pieces(&mut parser, &[input])
            .into_iter()
            .map(|b| b.0)
            .collect();
        assert_eq!(ends, vec![22, 30, 38, input.len()]);
    }

    #[test]
    fn format_null_character() {
        let input = b"data:\0\n\n\n\n";
        check(input, &[msg("\0")], None);
        let mut parser = Parser::new(BIG);
        let blocks = feed_pieces(&mut parser, &[input]);
        assert_eq!(blocks, vec![(8, Some(msg("\0"))), (9, None), (10, None)]);
    }

    #[test]
    fn format_utf_8() {
        check(
            "event:caf\u{e9}\nid:\u{65e5}\ndata:ok \u{e9}\u{65e5}\u{672c}\u{1F642}\n\n".as_bytes(),
            &[ev(
                "caf\u{e9}",
                "ok \u{e9}\u{65e5}\u{672c}\u{1F642}",
                "\u{65e5}",
            )],
            None,
        );
        // A lone continuation byte, an invalid byte and a truncated sequence each become one
        // U+FFFD; a truncated sequence at the end of a line is cut by the terminator.
        check(
            b"data:a\x80b\xFFc\xE6\x97d\xC3\n\n",
            &[msg("a\u{FFFD}b\u{FFFD}c\u{FFFD}d\u{FFFD}")],
            None,
        );
    }

    // ---- Block end offsets ----

    #[test]
    fn block_offsets_within_one_read() {
        let chunk = b"data:a\n\n: ping\n\nevent:e\ndata:b\n\ndata:partial";
        let mut parser = Parser::new(BIG);
        let blocks = feed_pieces(&mut parser, &[chunk]);
        assert_eq!(
            blocks,
            vec![
                (8, Some(msg("a"))),
                (16, None),
                (32, Some(ev("e", "b", "")))
            ]
        );
        assert_eq!(&chunk[16..32], b"event:e\ndata:b\n\n");
        assert_eq!(parser.pending_bytes(), b"data:partial".len());
        assert!(parser.has_partial_block());

        // `end` is relative to the read it was reported for.
        let mut ends = Vec::new();
        parser
            .feed(b"\n\nid:1\n\n", |end, event| {
                ends.push((end, event.cloned()))
            })
            .expect("feed");
        assert_eq!(ends, vec![(2, Some(msg("partial"))), (8, None)]);
        assert_eq!(parser.pending_bytes(), 0);
        assert!(!parser.has_partial_block());
    }

    #[test]
    fn block_offset_includes_crlf() {
        let mut parser = Parser::new(BIG);
        let blocks = feed_pieces(&mut parser, &[b"data:a\r\n\r\ndata:b\r\n\r\n"]);
        assert_eq!(blocks, vec![(10, Some(msg("a"))), (20, Some(msg("b")))]);
    }

    #[test]
    fn block_ending_in_cr_reports_at_once_and_swallows_lf() {
        let mut parser = Parser::new(BIG);
        let mut first = Vec::new();
        parser
            .feed(b"data:a\r\r", |end, event| {
                first.push((end, event.cloned()))
            })
            .expect("feed");
        assert_eq!(first, vec![(8, Some(msg("a")))]);
        assert!(!parser.has_partial_block());

        // An empty read in between must not make the parser forget the CR.
        let mut second = Vec::new();
        parser
            .feed(b"", |end, event| second.push((end, event.cloned())))
            .expect("feed");
        // The LF completes the CRLF; treated as a blank line it would add a block at 1.
        parser
            .feed(b"\ndata:b\n\n", |end, event| {
                second.push((end, event.cloned()))
            })
            .expect("feed");
        assert_eq!(second, vec![(9, Some(msg("b")))]);
    }

    #[test]
    fn swallowed_lf_is_not_counted() {
        let mut parser = Parser::new(BIG);
        feed_pieces(&mut parser, &[b"data:a\r\r", b"\n"]);
        assert_eq!(parser.pending_bytes(), 0);
        assert!(!parser.has_partial_block());
        // A second LF is a real blank line.
        let blocks = feed_pieces(&mut parser, &[b"\n"]);
        assert_eq!(blocks, vec![(1, None)]);
    }

    #[test]
    fn crlf_split_inside_a_block() {
        let mut parser = Parser::new(BIG);
        let blocks = feed_pieces(&mut parser, &[b"data:a\r", b"\ndata:b\r", b"\n\r", b"\n"]);
        assert_eq!(blocks, vec![(17, Some(msg("a\nb")))]);
        assert_eq!(parser.pending_bytes(), 0);
    }

    #[test]
    fn lone_cr_followed_by_other_bytes() {
        let mut parser = Parser::new(BIG);
        let blocks = feed_pieces(&mut parser, &[b"data:a\r", b"data:b\r", b"\r", b"x"]);
        assert_eq!(blocks, vec![(15, Some(msg("a\nb")))]);
        assert_eq!(parser.pending_bytes(), 1);
    }

    // ---- Size limit ----

    #[test]
    fn never_ending_line_is_rejected() {
        let mut parser = Parser::new(64);
        let mut fed = 0;
        let err = loop {
            match parser.feed(b"data:xxxxx", |_, _| panic!("no block expected")) {
                Ok(()) => {
                    fed += 10;
                    assert_eq!(parser.pending_bytes(), fed);
                    assert!(parser.pending_bytes() <= 64);
                    assert!(parser.line.len() <= 64);
                }
                Err(err) => break err,
            }
        };
        assert_eq!(fed, 60);
        assert_eq!(err, ParseError::EventTooLarge { limit: 64 });
        assert_eq!(parser.line.capacity(), 0, "buffers released on error");
    }

    #[test]
    fn never_ending_comments_are_rejected() {
        let mut parser = Parser::new(100);
        let mut reads = 0;
        let err = loop {
            match parser.feed(b": keep-alive\n", |_, _| panic!("no block expected")) {
                Ok(()) => reads += 1,
                Err(err) => break err,
            }
            assert!(reads < 100, "limit never hit");
        };
        // Seven 13-byte lines fit in 100 bytes; the eighth does not.
        assert_eq!(reads, 7);
        assert_eq!(err, ParseError::EventTooLarge { limit: 100 });
    }

    #[test]
    fn block_exactly_at_limit_passes() {
        let block = b"data:abc\n\n";
        assert_eq!(
            parse_all(block, block.len()),
            Ok(vec![msg("abc")]),
            "exactly at the limit"
        );
        assert_eq!(
            parse_all(block, block.len() - 1),
            Err(ParseError::EventTooLarge {
                limit: block.len() - 1
            })
        );
        // The limit is per block: it resets after each one.
        let two = b"data:abc\n\ndata:xyz\n\n";
        assert_eq!(parse_all(two, 10), Ok(vec![msg("abc"), msg("xyz")]));
        // Split one byte at a time, the same block still fits.
        let mut parser = Parser::new(block.len());
        let pieces: Vec<&[u8]> = block.chunks(1).collect();
        assert_eq!(feed_pieces(&mut parser, &pieces).len(), 1);
        // A leading BOM is not counted.
        assert!(parse_all("\u{FEFF}data:abc\n\n".as_bytes(), 10).is_ok());
        // The LF of the CRLF ending the blank line is not counted, however the reads split.
        let crlf = b"data:abc\r\n\r\n";
        assert!(parse_all(crlf, crlf.len() - 1).is_ok());
        assert!(parse_all(crlf, crlf.len() - 2).is_err());
    }

    #[test]
    fn crlf_line_that_overflows_on_its_lf_is_read_however_reads_split() {
        // Found by `limit_outcome_does_not_depend_on_reads`: the line fits up to its CR, and
        // only the LF goes over. Whether the LF arrives in the same read or the next, the line
        // is complete at its CR and its retry applies before the error.
        let input = b"retry: 10\r\ndata: x\r\r";
        for cut in [None, Some(10)] {
            let mut parser = Parser::new(10);
            let mut result = Ok(());
            let reads: Vec<&[u8]> = match cut {
                None => vec![&input[..]],
                Some(at) => vec![&input[..at], &input[at..]],
            };
            for read in reads {
                result = parser.feed(read, |_, _| panic!("no block expected"));
                if result.is_err() {
                    break;
                }
            }
            assert_eq!(
                result,
                Err(ParseError::EventTooLarge { limit: 10 }),
                "{cut:?}"
            );
            assert_eq!(parser.retry(), Some(10), "cut at {cut:?}");
        }
    }

    #[test]
    fn error_is_sticky_and_earlier_blocks_are_reported() {
        let mut parser = Parser::new(16);
        let mut blocks = Vec::new();
        let result = parser.feed(b"data:a\n\ndata:0123456789abcdef\n\n", |end, event| {
            blocks.push((end, event.cloned()))
        });
        assert_eq!(result, Err(ParseError::EventTooLarge { limit: 16 }));
        assert_eq!(blocks, vec![(8, Some(msg("a")))]);
        for _ in 0..2 {
            let again = parser.feed(b"data:b\n\n", |_, _| panic!("poisoned parser reported"));
            assert_eq!(again, Err(ParseError::EventTooLarge { limit: 16 }));
        }
    }

    #[test]
    fn error_displays() {
        let err = ParseError::EventTooLarge { limit: 42 };
        assert!(err.to_string().contains("42"));
        let _: &dyn Error = &err;
    }

    // ---- Property tests ----

    mod props {
        use super::super::*;
        use super::BIG;
        use proptest::prelude::*;

        /// Everything observable after feeding a stream.
        #[derive(Debug, PartialEq)]
        struct Outcome {
            /// Absolute block ends and their events.
            blocks: Vec<(usize, Option<Event>)>,
            result: Result<(), ParseError>,
            retry: Option<u64>,
            last_event_id: String,
            pending_bytes: usize,
            partial: bool,
            /// Whether `pending_bytes` stayed within the limit after every successful read.
            within_limit: bool,
        }

        fn run(input: &[u8], cuts: &[usize], max: usize) -> Outcome {
            let mut parser = Parser::new(max);
            let mut blocks = Vec::new();
            let mut result = Ok(());
            let mut within_limit = true;
            let mut start = 0;
            for &cut in cuts.iter().chain(std::iter::once(&input.len())) {
                let base = start;
                result = parser.feed(&input[start..cut], |end, event| {
                    blocks.push((base + end, event.cloned()))
                });
                start = cut;
                if result.is_err() {
                    break;
                }
                within_limit &= parser.pending_bytes() <= max;
            }
            Outcome {
                blocks,
                result,
                retry: parser.retry(),
                last_event_id: parser.last_event_id().to_owned(),
                pending_bytes: parser.pending_bytes(),
                partial: parser.has_partial_block(),
                within_limit,
            }
        }

        /// A deliberately plain reading of the standard over the whole input, for comparison:
        /// returns block ends with events, the final retry and the committed id.
        #[allow(clippy::type_complexity)]
        fn reference(input: &[u8]) -> (Vec<(usize, Option<Event>)>, Option<u64>, String) {
            let mut i = if input.starts_with(&BOM) { 3 } else { 0 };
            let (mut data, mut kind, mut id_buf, mut id) =
                (String::new(), String::new(), String::new(), String::new());
            let mut retry = None;
            let mut blocks = Vec::new();
            while let Some(k) = input[i..].iter().position(|&b| b == b'\r' || b == b'\n') {
                let line = String::from_utf8_lossy(&input[i..i + k]).into_owned();
                let mut next = i + k + 1;
                if input[i + k] == b'\r' && input.get(next) == Some(&b'\n') {
                    next += 1;
                }
                i = next;
                if line.is_empty() {
                    id = id_buf.clone();
                    if data.is_empty() {
                        kind.clear();
                        blocks.push((next, None));
                        continue;
                    }
                    let event = Event {
                        event_type: if kind.is_empty() {
                            "message".into()
                        } else {
                            kind.clone()
                        },
                        data: data[..data.len() - 1].to_owned(),
                        last_event_id: id.clone(),
                    };
                    blocks.push((next, Some(event)));
                    data.clear();
                    kind.clear();
                } else if !line.starts_with(':') {
                    let (name, value) = match line.split_once(':') {
                        Some((n, v)) => (n, v.strip_prefix(' ').unwrap_or(v)),
                        None => (line.as_str(), ""),
                    };
                    match name {
                        "event" => kind = value.to_owned(),
                        "data" => {
                            data.push_str(value);
                            data.push('\n');
                        }
                        "id" if !value.contains('\0') => id_buf = value.to_owned(),
                        "retry"
                            if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) =>
                        {
                            if let Ok(ms) = value.parse() {
                                retry = Some(ms);
                            }
                        }
                        _ => {}
                    }
                }
            }
            (blocks, retry, id)
        }

        /// Stream fragments; repeats weight the line ends so that blocks actually end. An
        /// empty entry stands for one arbitrary byte.
        const VOCABULARY: &[&[u8]] = &[
            b"data: x",
            b"data: x",
            b"data:",
            b"event: e",
            b"id: 1",
            b"id: a\0b",
            b"retry: 10",
            b"retry: x",
            b": comment",
            b"\r",
            b"\r",
            b"\r",
            b"\n",
            b"\n",
            b"\n",
            b"\n",
            b"\r\n",
            b"\r\n",
            b"\r\n",
            b"\xEF\xBB\xBF",
            b"\xEF\xBB",
            "\u{e9}".as_bytes(),
            "\u{65e5}\u{672c}".as_bytes(),
            b"",
            b"",
        ];

        /// A stream and sorted cut points (repeats and ends give empty reads). Built from
        /// plain indices rather than nested strategies: that keeps generation cheap in an
        /// unoptimised test build.
        fn stream_and_cuts() -> impl Strategy<Value = (Vec<u8>, Vec<usize>)> {
            (
                prop::collection::vec((0..VOCABULARY.len(), any::<u8>()), 0..48),
                prop::collection::vec(any::<prop::sample::Index>(), 0..24),
            )
                .prop_map(|(parts, cut_indices)| {
                    let mut input = Vec::new();
                    for (i, raw) in parts {
                        match VOCABULARY[i] {
                            b"" => input.push(raw),
                            fragment => input.extend_from_slice(fragment),
                        }
                    }
                    let mut cuts: Vec<usize> = cut_indices
                        .iter()
                        .map(|index| index.index(input.len() + 1))
                        .collect();
                    cuts.sort_unstable();
                    (input, cuts)
                })
        }

        /// Whole-input and split ends agree, except that a block whose blank line ended in a
        /// CR at the end of a read is reported before the LF that completes the CRLF.
        fn ends_match(input: &[u8], cuts: &[usize], whole: usize, split: usize) -> bool {
            whole == split
                || (whole == split + 1
                    && input[split - 1] == b'\r'
                    && input[split] == b'\n'
                    && cuts.contains(&split))
        }

        fn check_split(input: &[u8], cuts: &[usize], max: usize) -> Result<(), TestCaseError> {
            let whole = run(input, &[], max);
            let split = run(input, cuts, max);
            prop_assert!(whole.within_limit && split.within_limit);
            prop_assert_eq!(&split.result, &whole.result);
            prop_assert_eq!(split.blocks.len(), whole.blocks.len());
            for (w, s) in whole.blocks.iter().zip(&split.blocks) {
                prop_assert_eq!(&w.1, &s.1);
                prop_assert!(
                    ends_match(input, cuts, w.0, s.0),
                    "ends differ: whole {} split {}",
                    w.0,
                    s.0
                );
            }
            prop_assert_eq!(split.retry, whole.retry);
            prop_assert_eq!(&split.last_event_id, &whole.last_event_id);
            if whole.result.is_ok() {
                prop_assert_eq!(split.pending_bytes, whole.pending_bytes);
                prop_assert_eq!(split.partial, whole.partial);
            }
            Ok(())
        }

        proptest! {
            #![proptest_config(ProptestConfig {
                cases: 512,
                // Don't write regression files into the source tree.
                failure_persistence: None,
                ..ProptestConfig::default()
            })]

            #[test]
            fn split_reads_match_one_read((input, cuts) in stream_and_cuts()) {
                check_split(&input, &cuts, BIG)?;
                let every_byte: Vec<usize> = (0..=input.len()).collect();
                check_split(&input, &every_byte, BIG)?;
            }

            #[test]
            fn one_read_matches_reference(input in stream_and_cuts().prop_map(|s| s.0)) {
                let outcome = run(&input, &[], BIG);
                let (blocks, retry, id) = reference(&input);
                prop_assert_eq!(outcome.result, Ok(()));
                prop_assert_eq!(outcome.blocks, blocks);
                prop_assert_eq!(outcome.retry, retry);
                prop_assert_eq!(outcome.last_event_id, id);
            }

            #[test]
            fn limit_outcome_does_not_depend_on_reads(
                (input, cuts) in stream_and_cuts(),
                max in 0usize..48,
            ) {
                check_split(&input, &cuts, max)?;
                // Whatever is reported before an error is what an unlimited parser reports.
                let limited = run(&input, &[], max);
                let unlimited = run(&input, &[], BIG);
                prop_assert!(unlimited.blocks.starts_with(&limited.blocks));
                if limited.result.is_ok() {
                    prop_assert_eq!(limited.blocks, unlimited.blocks);
                }
            }
        }
    }
}
