//! The one place where a streaming response's life begins and ends.
//!
//! A [`StreamLifetime`] is created when a streaming request is accepted (before the upstream is
//! asked) and dropped when the response body is dropped, whatever the reason: finished, failed,
//! or the client went away (hyper drops the future or the body). Its `Drop` decides the outcome,
//! so no path can end a stream without it being recorded. The stream registry, metrics and
//! admin kill hang off this guard.

use std::time::Duration;

use tokio::time::Instant;
use tracing::Span;

/// How a stream ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The upstream sent `[DONE]` and it was handed to the client.
    Completed,
    /// The client went away before the end; the upstream request was cancelled by drop.
    ClientGone,
    /// The stream ended with a final error event carrying this code.
    Failed(&'static str),
}

impl Outcome {
    pub fn as_str(&self) -> &'static str {
        match self {
            Outcome::Completed => "completed",
            Outcome::ClientGone => "client_gone",
            Outcome::Failed(code) => code,
        }
    }
}

/// Identity and counters of one stream; logs one line when it ends.
#[derive(Debug)]
pub struct StreamLifetime {
    span: Span,
    started: Instant,
    first_event: Option<Duration>,
    events: u64,
    bytes: u64,
    outcome: Option<Outcome>,
}

impl StreamLifetime {
    /// Starts the clock. `span` is the request's span (client address, request id).
    pub fn begin(span: Span) -> StreamLifetime {
        StreamLifetime {
            span,
            started: Instant::now(),
            first_event: None,
            events: 0,
            bytes: 0,
            outcome: None,
        }
    }

    /// Counts bytes handed to the client and notes the time of the first.
    pub fn record_sent(&mut self, bytes: usize) {
        if self.first_event.is_none() {
            self.first_event = Some(self.started.elapsed());
        }
        self.bytes += bytes as u64;
    }

    /// Counts upstream events relayed.
    pub fn record_events(&mut self, n: u64) {
        self.events += n;
    }

    /// Sets how the stream ends; the first call wins.
    pub fn finish(&mut self, outcome: Outcome) {
        self.outcome.get_or_insert(outcome);
    }

    pub fn outcome(&self) -> Option<Outcome> {
        self.outcome
    }

    /// The request's span, for log lines about this stream.
    pub fn span(&self) -> &Span {
        &self.span
    }
}

impl Drop for StreamLifetime {
    fn drop(&mut self) {
        let outcome = self.outcome.unwrap_or(Outcome::ClientGone);
        let _entered = self.span.enter();
        tracing::info!(
            outcome = outcome.as_str(),
            events = self.events,
            bytes = self.bytes,
            first_event_ms = self.first_event.map(|d| d.as_millis() as u64),
            duration_ms = self.started.elapsed().as_millis() as u64,
            "stream ended"
        );
    }
}
