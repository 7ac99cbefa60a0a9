//! The address a request comes from: the socket's peer, unless the peer is a trusted proxy
//! (`client_ip.trusted_proxies`), in which case the right-most address of `X-Forwarded-For`
//! that is not itself a trusted proxy. Proxies append the address they saw, so everything to the
//! left of the last untrusted hop was written by someone we cannot believe; walking from the
//! right stops there. This address is the one admission control limits, the registry shows and
//! the logs carry.

use std::net::IpAddr;

use http::HeaderMap;
use ipnet::IpNet;

/// The header proxies append the client address to.
const X_FORWARDED_FOR: &str = "x-forwarded-for";

/// Most addresses read from `X-Forwarded-For`, right to left: a longer chain is no client's.
const MAX_HOPS: usize = 32;

/// Which peers are trusted proxies.
#[derive(Debug, Clone, Default)]
pub struct ClientIp {
    trusted: Vec<IpNet>,
}

impl ClientIp {
    pub fn new(trusted_proxies: &[IpNet]) -> ClientIp {
        ClientIp {
            trusted: trusted_proxies.to_vec(),
        }
    }

    fn is_trusted(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.trusted.iter().any(|net| net.contains(&ip))
    }

    /// The client of a request from `peer` with `headers`.
    pub fn resolve(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        if self.trusted.is_empty() || !self.is_trusted(peer) {
            return peer;
        }
        let mut client = peer;
        // Headers in order, each a comma-separated list; the right-most entry is the last hop.
        let hops = headers
            .get_all(X_FORWARDED_FOR)
            .iter()
            .rev()
            .flat_map(|value| {
                let text = value.to_str().unwrap_or("");
                text.rsplit(',')
            })
            .take(MAX_HOPS);
        // Bounded: at most MAX_HOPS entries.
        for hop in hops {
            let Some(ip) = parse_hop(hop.trim()) else {
                // Garbage in the chain: nothing left of it can be believed.
                break;
            };
            client = ip;
            if !self.is_trusted(ip) {
                break;
            }
        }
        client
    }
}

/// An IPv4-mapped IPv6 address as the IPv4 address it is (admission control keys by it too).
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    }
}

/// One `X-Forwarded-For` entry: an address, possibly with a port (`1.2.3.4:5678`,
/// `[2001:db8::1]:443`).
fn parse_hop(hop: &str) -> Option<IpAddr> {
    if let Ok(ip) = hop.parse::<IpAddr>() {
        return Some(canonical(ip));
    }
    hop.parse::<std::net::SocketAddr>()
        .ok()
        .map(|addr| canonical(addr.ip()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(X_FORWARDED_FOR, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_says() {
        let c = ClientIp::new(&["10.0.0.0/8".parse().unwrap()]);
        assert_eq!(
            c.resolve(ip("203.0.113.7"), &headers(&["198.51.100.1"])),
            ip("203.0.113.7")
        );
        let none = ClientIp::default();
        assert_eq!(
            none.resolve(ip("10.0.0.1"), &headers(&["198.51.100.1"])),
            ip("10.0.0.1")
        );
    }

    #[test]
    fn behind_trusted_proxies_the_right_most_untrusted_hop_is_the_client() {
        let c = ClientIp::new(&[
            "10.0.0.0/8".parse().unwrap(),
            "127.0.0.1/32".parse().unwrap(),
        ]);
        // The client forged the first entry; the proxy appended what it saw.
        let h = headers(&["1.1.1.1, 198.51.100.9, 10.0.0.5"]);
        assert_eq!(c.resolve(ip("127.0.0.1"), &h), ip("198.51.100.9"));
        // Split over several header lines, with ports and IPv6.
        let h = headers(&["1.1.1.1", "[2001:db8::9]:443, 10.0.0.5:80"]);
        assert_eq!(c.resolve(ip("10.1.2.3"), &h), ip("2001:db8::9"));
        // Every hop trusted: the left-most one.
        let h = headers(&["10.0.0.7, 10.0.0.5"]);
        assert_eq!(c.resolve(ip("10.1.2.3"), &h), ip("10.0.0.7"));
        // Garbage stops the walk at the last good hop.
        let h = headers(&["198.51.100.9, garbage, 10.0.0.5"]);
        assert_eq!(c.resolve(ip("10.1.2.3"), &h), ip("10.0.0.5"));
        // No header: the proxy itself.
        assert_eq!(c.resolve(ip("10.1.2.3"), &HeaderMap::new()), ip("10.1.2.3"));
        // An IPv4-mapped peer is trusted as its IPv4 address.
        assert_eq!(
            c.resolve(ip("::ffff:10.0.0.1"), &headers(&["198.51.100.9"])),
            ip("198.51.100.9")
        );
    }
}
