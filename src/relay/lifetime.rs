//! The one place where a streaming response's life begins and ends.
//!
//! A [`StreamLifetime`] is created when a streaming request is accepted (before the upstream is
//! asked) and dropped when the response body is dropped, whatever the reason: finished, failed,
//! ended by the gateway, or the client went away (hyper drops the future or the body). It owns
//! the stream's registry entry, so the entry goes when the stream goes, and its `Drop` decides
//! the outcome, so no path can end a stream without it being recorded.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::admission::StreamSlot;
use crate::metrics::{EndedStream, Metrics};
use crate::registry::{StreamEntry, StreamHandle};

/// How a stream ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The upstream sent `[DONE]` and it was handed to the client.
    Completed,
    /// The client went away before the end; the upstream request was cancelled by drop.
    ClientGone,
    /// The stream ended with (or, for a client that stopped reading, for) this error code.
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

/// A live stream: its registry entry and how it ended.
///
/// It does not keep the request's tracing span: a span lives in the subscriber's registry
/// (about 0.8 KiB with its formatted fields) for as long as anyone holds it, and a stream can
/// last for minutes. The span ends with the request handler; log lines about the stream after
/// that carry its identity as fields instead ([`StreamLifetime::log_fields`]).
pub struct StreamLifetime {
    outcome: Option<Outcome>,
    entry: StreamEntry,
    /// The stream's admission slot, given back when the stream ends, however it ends.
    _slot: Option<StreamSlot>,
    /// Where the stream's end is counted (`None` in unit tests of the body alone).
    metrics: Option<Arc<Metrics>>,
    /// The API route (a `route` label of [`crate::metrics::ROUTES`]), for the log line.
    route: &'static str,
    /// The stream's token usage, once the upstream has sent it: (prompt, completion).
    tokens: Option<(u64, u64)>,
}

impl StreamLifetime {
    pub fn begin(entry: StreamEntry) -> StreamLifetime {
        StreamLifetime {
            outcome: None,
            entry,
            _slot: None,
            metrics: None,
            route: "",
            tokens: None,
        }
    }

    /// Like [`StreamLifetime::begin`], holding the stream's admission slot to its end and
    /// counting its end in `metrics`.
    pub fn begin_holding(
        entry: StreamEntry,
        slot: StreamSlot,
        metrics: Arc<Metrics>,
    ) -> StreamLifetime {
        StreamLifetime {
            outcome: None,
            entry,
            _slot: Some(slot),
            metrics: Some(metrics),
            route: "",
            tokens: None,
        }
    }

    /// Names the stream's API route in its log line.
    pub fn with_route(mut self, route: &'static str) -> StreamLifetime {
        self.route = route;
        self
    }

    /// The stream's registry handle: counters, state and signals.
    pub fn handle(&self) -> &Arc<StreamHandle> {
        self.entry.handle()
    }

    /// Milliseconds on the registry's clock.
    pub fn now_ms(&self) -> u64 {
        self.entry.registry().now_ms()
    }

    /// Whether the stream's figures are counted (not in unit tests of the body alone).
    pub fn has_metrics(&self) -> bool {
        self.metrics.is_some()
    }

    /// Tokens from the stream's usage (a chat usage chunk, a Responses terminal event).
    pub fn count_tokens(&mut self, prompt: u64, completion: u64) {
        self.tokens = Some((prompt, completion));
        if let Some(metrics) = &self.metrics {
            let handle = self.entry.handle();
            metrics.tokens(prompt, completion, handle.model(), handle.api_key());
        }
    }

    /// One sampled upstream read's time through the gateway.
    pub fn observe_relay_delay(&self, delay: Duration) {
        if let Some(metrics) = &self.metrics {
            metrics.relay_delay(delay);
        }
    }

    /// Sets how the stream ends; the first call wins.
    pub fn finish(&mut self, outcome: Outcome) {
        self.outcome.get_or_insert(outcome);
    }

    pub fn outcome(&self) -> Option<Outcome> {
        self.outcome
    }

    /// Who the stream belongs to, for log lines about it: stream id, request id, client IP.
    pub fn log_fields(&self) -> (&str, &str, IpAddr) {
        let handle = self.entry.handle();
        (handle.id(), handle.request_id(), handle.client_ip())
    }
}

impl Drop for StreamLifetime {
    fn drop(&mut self) {
        let handle = self.entry.handle();
        // Not finished by the body: either the gateway cut it (a slow client's connection is
        // closed under it) or the client left.
        let outcome = self.outcome.unwrap_or_else(|| match handle.end_reason() {
            Some(reason) => Outcome::Failed(reason.code()),
            None => Outcome::ClientGone,
        });
        let now = self.now_ms();
        let first_token_ms = handle
            .first_event_ms()
            .map(|t| t.saturating_sub(handle.started_ms()));
        let duration_ms = now.saturating_sub(handle.started_ms());
        if let Some(metrics) = &self.metrics {
            metrics.stream_ended(&EndedStream {
                outcome: outcome.as_str(),
                model: handle.model(),
                key: handle.api_key(),
                time_to_first_event: first_token_ms.map(Duration::from_millis),
                duration: Duration::from_millis(duration_ms),
                events: handle.events(),
                bytes: handle.bytes(),
                heartbeats: handle.heartbeats(),
            });
        }
        let (stream_id, request_id, client) = self.log_fields();
        tracing::info!(
            stream_id,
            request_id,
            %client,
            route = self.route,
            model = handle.model(),
            upstream = handle.upstream(),
            attempts = handle.attempts(),
            outcome = outcome.as_str(),
            events = handle.events(),
            bytes = handle.bytes(),
            heartbeats = handle.heartbeats(),
            first_token_ms,
            duration_ms,
            prompt_tokens = self.tokens.map(|t| t.0),
            completion_tokens = self.tokens.map(|t| t.1),
            "stream ended"
        );
    }
}
