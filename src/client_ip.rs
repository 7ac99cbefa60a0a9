//! The address a request comes from: the socket's peer (or the address a PROXY protocol header
//! named, which the acceptor passes as the peer), unless the peer is a trusted proxy
//! (`client_ip.trusted_proxies`), in which case the right-most address of `X-Forwarded-For` (or
//! of RFC 7239 `Forwarded`'s `for=`, `client_ip.forwarded_header`) that is not itself a trusted
//! proxy. Proxies append the address they saw, so everything to the
//! left of the last untrusted hop was written by someone we cannot believe; walking from the
//! right stops there. This address is the one admission control limits, the registry shows and
//! the logs carry.

use std::net::{IpAddr, Ipv6Addr};

use http::HeaderMap;
use ipnet::IpNet;

use crate::config::ForwardedHeader;

/// The header proxies append the client address to.
const X_FORWARDED_FOR: &str = "x-forwarded-for";
/// RFC 7239's header: `for=` parameters, one element per hop.
const FORWARDED: &str = "forwarded";

/// Most addresses read from `X-Forwarded-For`, right to left: a longer chain is no client's.
const MAX_HOPS: usize = 32;

/// Which peers are trusted proxies.
#[derive(Debug, Clone, Default)]
pub struct ClientIp {
    trusted: Vec<IpNet>,
    header: ForwardedHeader,
}

impl ClientIp {
    pub fn new(trusted_proxies: &[IpNet]) -> ClientIp {
        ClientIp::with_header(trusted_proxies, ForwardedHeader::default())
    }

    pub fn with_header(trusted_proxies: &[IpNet], header: ForwardedHeader) -> ClientIp {
        ClientIp {
            trusted: trusted_proxies.to_vec(),
            header,
        }
    }

    /// Whether `ip` is one of the trusted proxies.
    pub fn is_trusted(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.trusted.iter().any(|net| net.contains(&ip))
    }

    /// The client of a request from `peer` with `headers`.
    pub fn resolve(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        if self.trusted.is_empty() || !self.is_trusted(peer) {
            return peer;
        }
        let mut client = peer;
        let name = match self.header {
            ForwardedHeader::XForwardedFor => X_FORWARDED_FOR,
            ForwardedHeader::Forwarded => FORWARDED,
        };
        // Headers in order, each a comma-separated list; the right-most entry is the last hop.
        let hops = headers
            .get_all(name)
            .iter()
            .rev()
            .flat_map(|value| {
                let text = value.to_str().unwrap_or("");
                text.rsplit(',')
            })
            .take(MAX_HOPS);
        // Bounded: at most MAX_HOPS entries.
        for hop in hops {
            let hop = match self.header {
                ForwardedHeader::XForwardedFor => Some(hop.trim()),
                ForwardedHeader::Forwarded => forwarded_for(hop),
            };
            let Some(ip) = hop.and_then(parse_hop) else {
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

/// The key a client address is limited and counted by: IPv4 as it is (an IPv4-mapped IPv6
/// address as its IPv4 address), IPv6 cut to its first `ipv6_prefix` bits, so one host cannot
/// rotate addresses within its prefix around a per-address limit.
pub fn limit_key(ip: IpAddr, ipv6_prefix: u8) -> IpAddr {
    match canonical(ip) {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => {
            let prefix = u32::from(ipv6_prefix.min(128));
            let mask = u128::MAX.checked_shl(128 - prefix).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask))
        }
    }
}

/// The `for=` value of one `Forwarded` element (`for=192.0.2.1;proto=https`,
/// `For="[2001:db8::1]:443"`), unquoted; `None` if it has none. Obfuscated (`_hidden`) and
/// `unknown` values are returned as they are and fail to parse as an address, which stops the
/// walk as garbage does.
fn forwarded_for(element: &str) -> Option<&str> {
    element.split(';').find_map(|pair| {
        let (name, value) = pair.split_once('=')?;
        name.trim().eq_ignore_ascii_case("for").then(|| {
            let value = value.trim();
            value
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(value)
        })
    })
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
        // Forwarded is not read unless it is the configured header.
        let mut h = HeaderMap::new();
        h.append(FORWARDED, HeaderValue::from_static("for=1.1.1.1"));
        assert_eq!(c.resolve(ip("10.1.2.3"), &h), ip("10.1.2.3"));
    }

    #[test]
    fn with_forwarded_the_right_most_untrusted_for_is_the_client() {
        let c = ClientIp::with_header(&["10.0.0.0/8".parse().unwrap()], ForwardedHeader::Forwarded);
        let mut h = HeaderMap::new();
        h.append(
            FORWARDED,
            HeaderValue::from_static("for=1.1.1.1, for=198.51.100.9;proto=https"),
        );
        h.append(
            FORWARDED,
            HeaderValue::from_static(r#"For="10.0.0.5:8080";by=10.0.0.1"#),
        );
        assert_eq!(c.resolve(ip("10.1.2.3"), &h), ip("198.51.100.9"));
        let mut h = HeaderMap::new();
        h.append(
            FORWARDED,
            HeaderValue::from_static(r#"for="[2001:db8::9]:443""#),
        );
        assert_eq!(c.resolve(ip("10.1.2.3"), &h), ip("2001:db8::9"));
        // An obfuscated or unknown hop stops the walk; X-Forwarded-For is not read at all.
        let mut h = HeaderMap::new();
        h.append(
            FORWARDED,
            HeaderValue::from_static("for=198.51.100.9, for=_hidden"),
        );
        h.append(X_FORWARDED_FOR, HeaderValue::from_static("1.1.1.1"));
        assert_eq!(c.resolve(ip("10.1.2.3"), &h), ip("10.1.2.3"));
        // From an untrusted peer it is ignored.
        let mut h = HeaderMap::new();
        h.append(FORWARDED, HeaderValue::from_static("for=198.51.100.9"));
        assert_eq!(c.resolve(ip("203.0.113.1"), &h), ip("203.0.113.1"));
    }
}
