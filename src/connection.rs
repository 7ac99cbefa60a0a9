//! What the acceptor tells the rest of the gateway about a client connection: its protocol, a
//! handle that closes it, the counts of open connections by protocol, and the caps on open
//! connections (in all and per client address) that the acceptor applies right after accept.
//!
//! Below both the acceptor (which fills these in) and the stream registry (which keeps a
//! stream's connection so that a stalled client can be cut), so neither imports the other.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use dashmap::DashMap;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::client_ip::{limit_key, ClientIp};
use crate::refusal::Refusals;

/// The protocol of a client connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Protocol {
    #[serde(rename = "http1")]
    Http1,
    #[serde(rename = "http2")]
    Http2,
}

impl Protocol {
    /// `"http1"` or `"http2"`, as the admin API and the metrics name it.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Http1 => "http1",
            Protocol::Http2 => "http2",
        }
    }
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
    opened_http1: AtomicU64,
    opened_http2: AtomicU64,
}

impl ConnectionCounts {
    /// Counts a connection until the returned guard is dropped.
    pub fn open(self: &Arc<Self>, protocol: Protocol) -> ConnectionGuard {
        self.counter(protocol).fetch_add(1, Ordering::Relaxed);
        self.opened.fetch_add(1, Ordering::Relaxed);
        match protocol {
            Protocol::Http1 => &self.opened_http1,
            Protocol::Http2 => &self.opened_http2,
        }
        .fetch_add(1, Ordering::Relaxed);
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

    /// Connections of `protocol` opened so far.
    pub fn opened_by(&self, protocol: Protocol) -> u64 {
        match protocol {
            Protocol::Http1 => &self.opened_http1,
            Protocol::Http2 => &self.opened_http2,
        }
        .load(Ordering::Relaxed)
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

/// Caps on a listener's open connections, checked by the acceptor before a byte is read.
pub struct ConnectionCaps {
    /// Most connections open at once in all; 0: no cap.
    max: u64,
    /// Most connections open at once per client address; 0: no cap.
    per_address: u32,
    /// IPv6 clients are counted by this many leading bits, as admission control keys them.
    ipv6_prefix: u8,
    /// Trusted proxies are exempt from the per-address cap: every client behind one shares its
    /// address, and their requests are limited by the forwarded address instead.
    client_ip: ClientIp,
    open: AtomicU64,
    /// Open connections per client key; an entry goes when its count reaches zero, so the map
    /// holds only addresses with connections open (bounded by `max`).
    by_address: DashMap<IpAddr, u32>,
    refusals: Arc<Refusals>,
    /// What a refused connection is told (see [`RefusalAnswers`]).
    answers: RefusalAnswers,
}

/// The bytes written to a refused connection before it is closed: complete HTTP/1.1 responses
/// (built by the wiring from the one error table), so the acceptor knows nothing of their text.
#[derive(Debug, Clone, Default)]
pub struct RefusalAnswers {
    /// The listener is at `max` (`503`).
    pub global: Bytes,
    /// The client's address is at `per_address` (`429`).
    pub per_address: Bytes,
}

/// Why a new connection was refused, and what to tell it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CapRefusal {
    Global(Bytes),
    PerAddress(Bytes),
}

impl CapRefusal {
    /// The response to write before closing.
    pub fn answer(&self) -> &Bytes {
        match self {
            CapRefusal::Global(b) | CapRefusal::PerAddress(b) => b,
        }
    }
}

impl std::fmt::Debug for ConnectionCaps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionCaps")
            .field("max", &self.max)
            .field("per_address", &self.per_address)
            .field("open", &self.open)
            .finish_non_exhaustive()
    }
}

impl ConnectionCaps {
    pub fn new(
        max: u64,
        per_address: u32,
        ipv6_prefix: u8,
        client_ip: ClientIp,
        refusals: Arc<Refusals>,
        answers: RefusalAnswers,
    ) -> ConnectionCaps {
        ConnectionCaps {
            max,
            per_address,
            ipv6_prefix,
            client_ip,
            open: AtomicU64::new(0),
            by_address: DashMap::new(),
            refusals,
            answers,
        }
    }

    /// The global cap (0: none).
    pub fn max(&self) -> u64 {
        self.max
    }

    /// Connections holding a slot now.
    pub fn open(&self) -> u64 {
        self.open.load(Ordering::Acquire)
    }

    /// Client addresses (keys) with a connection open now.
    pub fn addresses(&self) -> usize {
        self.by_address.len()
    }

    /// A slot for a connection just accepted from `peer`: the global cap, then the per-address
    /// cap on `peer` unless `client_known_later` (a PROXY header will name the client; see
    /// [`ConnectionCaps::admit_client`]). The slot is given back when the guard is dropped.
    pub fn admit(
        self: &Arc<Self>,
        peer: IpAddr,
        client_known_later: bool,
    ) -> Result<ConnectionSlot, CapRefusal> {
        let before = self.open.fetch_add(1, Ordering::AcqRel);
        let mut slot = ConnectionSlot {
            caps: self.clone(),
            address: None,
        };
        if self.max > 0 && before >= self.max {
            drop(slot);
            self.refusals
                .global_connections
                .record("global_connections", peer);
            return Err(CapRefusal::Global(self.answers.global.clone()));
        }
        if !client_known_later {
            self.admit_client(&mut slot, peer)?;
        }
        Ok(slot)
    }

    /// Counts `slot`'s connection under `client` against the per-address cap (once per slot).
    pub fn admit_client(
        &self,
        slot: &mut ConnectionSlot,
        client: IpAddr,
    ) -> Result<(), CapRefusal> {
        if self.per_address == 0 || slot.address.is_some() || self.client_ip.is_trusted(client) {
            return Ok(());
        }
        let key = limit_key(client, self.ipv6_prefix);
        let mut count = self.by_address.entry(key).or_insert(0);
        if *count >= self.per_address {
            // Never a fresh entry: per_address > 0, and a fresh one (0) is below it.
            drop(count);
            self.refusals
                .ip_connections
                .record("ip_connections", client);
            return Err(CapRefusal::PerAddress(self.answers.per_address.clone()));
        }
        *count += 1;
        slot.address = Some(key);
        Ok(())
    }
}

/// A connection's place in its listener's caps; dropping it gives the place back.
pub struct ConnectionSlot {
    caps: Arc<ConnectionCaps>,
    /// The client key counted against the per-address cap, if it was.
    address: Option<IpAddr>,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.caps.open.fetch_sub(1, Ordering::AcqRel);
        if let Some(key) = &self.address {
            // The entry goes at zero, so the map holds only addresses with connections open.
            self.caps.by_address.remove_if_mut(key, |_, count| {
                *count = count.saturating_sub(1);
                *count == 0
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps(max: u64, per_address: u32, trusted: &[&str]) -> Arc<ConnectionCaps> {
        let trusted: Vec<ipnet::IpNet> = trusted.iter().map(|t| t.parse().unwrap()).collect();
        Arc::new(ConnectionCaps::new(
            max,
            per_address,
            64,
            ClientIp::new(&trusted),
            Arc::new(Refusals::default()),
            RefusalAnswers {
                global: Bytes::from_static(b"503"),
                per_address: Bytes::from_static(b"429"),
            },
        ))
    }

    #[test]
    fn connection_slots_are_capped_in_all_and_per_address_and_come_back() {
        let caps = caps(3, 2, &["10.0.0.0/8"]);
        let one: IpAddr = "192.0.2.1".parse().unwrap();
        let two: IpAddr = "2001:db8::1".parse().unwrap();
        let two_again: IpAddr = "2001:db8::2".parse().unwrap(); // the same /64
        let a = caps.admit(one, false).unwrap();
        let b = caps.admit(one, false).unwrap();
        assert_eq!(
            caps.admit(one, false).err().map(|r| r.answer().clone()),
            Some(Bytes::from_static(b"429"))
        );
        let c = caps.admit(two, false).unwrap();
        assert!(matches!(
            caps.admit(two_again, false),
            Err(CapRefusal::Global(_))
        ));
        assert_eq!((caps.open(), caps.addresses()), (3, 2));
        drop((a, b, c));
        assert_eq!((caps.open(), caps.addresses()), (0, 0));
        let counts = caps.refusals.counts();
        assert_eq!((counts.ip_connections, counts.global_connections), (1, 1));
    }

    #[test]
    fn trusted_proxies_and_later_clients_skip_the_per_address_cap_at_accept() {
        let caps = caps(0, 1, &["10.0.0.0/8"]);
        let proxy: IpAddr = "10.1.2.3".parse().unwrap();
        let held: Vec<_> = (0..5).map(|_| caps.admit(proxy, false).unwrap()).collect();
        assert_eq!(caps.addresses(), 0);
        // A PROXY header names the client after accept: counted then.
        let mut first = caps.admit(proxy, true).unwrap();
        let client: IpAddr = "192.0.2.9".parse().unwrap();
        caps.admit_client(&mut first, client).unwrap();
        let mut second = caps.admit(proxy, true).unwrap();
        assert!(caps.admit_client(&mut second, client).is_err());
        drop((held, first, second));
        assert_eq!((caps.open(), caps.addresses()), (0, 0));
    }

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
