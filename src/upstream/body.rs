//! The upstream response body as the relay reads it: hyper's body plus the claims the stream
//! holds while it lives (its HTTP/2 connection slot, its place in the upstream's in-flight
//! count). Dropping the body (stream ended, client gone, stream cancelled) releases them all.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use super::backends::InFlight;
use super::pool::Lease;

/// An upstream response body and what its stream holds.
pub struct UpstreamBody {
    inner: Incoming,
    /// The HTTP/2 connection slot (none over HTTP/1.1, whose pool hyper-util keeps).
    _lease: Option<Lease>,
    /// The stream's place in its upstream's in-flight count (balancing, `max_streams`).
    in_flight: Option<InFlight>,
}

impl UpstreamBody {
    pub(super) fn new(inner: Incoming, lease: Option<Lease>) -> UpstreamBody {
        UpstreamBody {
            inner,
            _lease: lease,
            in_flight: None,
        }
    }

    /// A body that holds nothing, for tests of what reads it.
    #[cfg(test)]
    pub fn bare(inner: Incoming) -> UpstreamBody {
        UpstreamBody::new(inner, None)
    }

    /// Counts this body against its upstream until it is dropped.
    pub fn hold(&mut self, in_flight: InFlight) {
        self.in_flight = Some(in_flight);
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
