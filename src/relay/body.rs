//! The gateway's response body: one enum instead of a boxed trait object per response.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use super::deadline::Deadlines;
use super::resume::ResumableBody;
use super::stream::SseRelay;
use crate::error::GatewayError;
use crate::upstream::body::UpstreamBody;
use crate::upstream::error_chain;

/// Every body the gateway sends.
pub enum ResponseBody {
    /// A body known in full: errors, health checks. `None` once sent.
    Full(Option<Bytes>),
    /// A relayed event stream (boxed: it is several hundred bytes, and most responses are small).
    Sse(Box<SseRelay>),
    /// A resumable event stream (`[resume]`): a resume's replay, then the relay while this
    /// response holds it.
    Resumable(Box<ResumableBody>),
    /// A non-streaming upstream body, relayed as it arrives.
    Passthrough(Passthrough),
}

/// A body known in full: how the shared JSON responses (`crate::response`) build this type.
impl From<Bytes> for ResponseBody {
    fn from(bytes: Bytes) -> ResponseBody {
        ResponseBody::Full((!bytes.is_empty()).then_some(bytes))
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    /// A body error makes hyper abort the connection: the only honest signal left once a
    /// non-streaming response's headers (and maybe its Content-Length) are out.
    type Error = GatewayError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, GatewayError>>> {
        match self.get_mut() {
            ResponseBody::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            ResponseBody::Sse(relay) => match Pin::new(relay.as_mut()).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => Poll::Ready(Some(Ok(frame))),
                Poll::Ready(Some(Err(never))) => match never {},
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            },
            ResponseBody::Resumable(body) => match Pin::new(body.as_mut()).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => Poll::Ready(Some(Ok(frame))),
                Poll::Ready(Some(Err(never))) => match never {},
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            },
            ResponseBody::Passthrough(body) => Pin::new(body).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ResponseBody::Full(bytes) => bytes.is_none(),
            ResponseBody::Sse(relay) => relay.is_end_stream(),
            ResponseBody::Resumable(body) => body.is_end_stream(),
            ResponseBody::Passthrough(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ResponseBody::Full(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
            ResponseBody::Sse(relay) => relay.size_hint(),
            ResponseBody::Resumable(body) => body.size_hint(),
            ResponseBody::Passthrough(body) => body.size_hint(),
        }
    }
}

/// A non-streaming upstream body relayed frame by frame, under the same idle and duration
/// limits as a stream. Dropping it (client gone) closes the upstream request.
pub struct Passthrough {
    upstream: UpstreamBody,
    deadlines: Deadlines,
}

impl Passthrough {
    pub fn new(upstream: UpstreamBody, deadlines: Deadlines) -> Passthrough {
        Passthrough {
            upstream,
            deadlines,
        }
    }
}

impl Body for Passthrough {
    type Data = Bytes;
    type Error = GatewayError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, GatewayError>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.upstream).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                this.deadlines.touch();
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                Poll::Ready(Some(Err(GatewayError::UpstreamReset(error_chain(&e)))))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => match this.deadlines.poll_expired(cx) {
                Poll::Ready(expired) => Poll::Ready(Some(Err(expired.into()))),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.upstream.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.upstream.size_hint()
    }
}
