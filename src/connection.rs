//! What the acceptor tells the rest of the gateway about a client connection: its protocol, a
//! handle that closes it, and the counts of open connections by protocol.
//!
//! Below both the acceptor (which fills these in) and the stream registry (which keeps a
//! stream's connection so that a stalled client can be cut), so neither imports the other.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde::Serialize;
use tokio_util::sync::CancellationToken;

/// The protocol of a client connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Protocol {
    #[serde(rename = "http1")]
    Http1,
    #[serde(rename = "http2")]
    Http2,
}

/// What a request knows about its connection; the acceptor puts it in the request's extensions.
#[derive(Debug, Clone)]
pub struct ConnectionInfo {
    pub protocol: Protocol,
    /// Cancelling this closes the connection at once. The last resort for a client that reads
    /// nothing: its stream's body is not even polled, so it cannot end itself.
    pub close: CancellationToken,
}

/// Open connections of one listener by protocol, and how many were ever opened.
#[derive(Debug, Default)]
pub struct ConnectionCounts {
    http1: AtomicU64,
    http2: AtomicU64,
    opened: AtomicU64,
}

impl ConnectionCounts {
    /// Counts a connection until the returned guard is dropped.
    pub fn open(self: &Arc<Self>, protocol: Protocol) -> ConnectionGuard {
        self.counter(protocol).fetch_add(1, Ordering::Relaxed);
        self.opened.fetch_add(1, Ordering::Relaxed);
        ConnectionGuard {
            counts: self.clone(),
            protocol,
        }
    }

    /// Connections of `protocol` open now.
    pub fn get(&self, protocol: Protocol) -> u64 {
        self.counter(protocol).load(Ordering::Relaxed)
    }

    /// Connections opened since the counts were created, open or not: shows how many
    /// connections a client spreads its requests over (an HTTP/2 client, a connection pool).
    pub fn opened(&self) -> u64 {
        self.opened.load(Ordering::Relaxed)
    }

    fn counter(&self, protocol: Protocol) -> &AtomicU64 {
        match protocol {
            Protocol::Http1 => &self.http1,
            Protocol::Http2 => &self.http2,
        }
    }
}

/// One open connection, counted until dropped.
#[derive(Debug)]
pub struct ConnectionGuard {
    counts: Arc<ConnectionCounts>,
    protocol: Protocol,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.counts
            .counter(self.protocol)
            .fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_are_counted_by_protocol_until_dropped() {
        let counts = Arc::new(ConnectionCounts::default());
        let a = counts.open(Protocol::Http1);
        let b = counts.open(Protocol::Http2);
        let c = counts.open(Protocol::Http2);
        assert_eq!(
            (counts.get(Protocol::Http1), counts.get(Protocol::Http2)),
            (1, 2)
        );
        drop((a, b, c));
        assert_eq!(
            (counts.get(Protocol::Http1), counts.get(Protocol::Http2)),
            (0, 0)
        );
        assert_eq!(counts.opened(), 3, "opened connections stay counted");
    }
}
