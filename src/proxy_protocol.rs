//! The PROXY protocol (HAProxy's, versions 1 and 2): the header an L4 load balancer writes at the
//! start of each connection to say whom it is relaying. Parsing is the `ppp` crate's; this module
//! reads the header off a new connection with a size limit, and keeps the bytes that follow it.
//! A leaf of the acceptor: sockets and bytes, nothing else.

use std::io;
use std::net::{IpAddr, SocketAddr};

use ppp::{v1, v2, HeaderResult, PartialResult};
use tokio::io::{AsyncRead, AsyncReadExt};

/// Most bytes read while looking for the end of a PROXY header, and so its largest size: a v1
/// header is at most 107 bytes, and a v2 header with the TLVs cloud load balancers add (endpoint
/// ids, TLS details) a few hundred. The bytes read past the header (the start of the request)
/// are kept.
pub const PROXY_HEADER_MAX_BYTES: usize = 4096;

/// What a PROXY header said about the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The client's address and port, as the load balancer saw them.
    Client(SocketAddr),
    /// A connection of the balancer's own (v2 `LOCAL`, e.g. a health check) or one whose source
    /// it cannot tell (v1 `UNKNOWN`, v2 `UNSPEC` or a UNIX socket): the socket's peer stands.
    Local,
}

#[derive(Debug, thiserror::Error)]
pub enum ProxyHeaderError {
    #[error("no PROXY header: {0}")]
    Invalid(String),
    #[error("the PROXY header is longer than {PROXY_HEADER_MAX_BYTES} bytes")]
    TooLong,
    #[error("the connection closed before its PROXY header ended")]
    Closed,
    #[error("reading the PROXY header: {0}")]
    Io(#[from] io::Error),
}

/// Reads a PROXY header (v1 or v2) from the start of `stream`. Returns what it says and the bytes
/// read after it. The caller puts a deadline on this.
pub async fn read_header<S: AsyncRead + Unpin>(
    stream: &mut S,
) -> Result<(Source, Vec<u8>), ProxyHeaderError> {
    // On the heap: a buffer held across the await would live in every connection's task.
    let mut buf = Vec::with_capacity(PROXY_HEADER_MAX_BYTES);
    // Bounded: every pass reads at least one byte into spare capacity or returns, and the
    // capacity is PROXY_HEADER_MAX_BYTES.
    loop {
        if !buf.is_empty() {
            if let Some(parsed) = parse(&buf)? {
                return Ok(parsed);
            }
        }
        if buf.len() == buf.capacity() {
            return Err(ProxyHeaderError::TooLong);
        }
        if stream.read_buf(&mut buf).await? == 0 {
            return Err(ProxyHeaderError::Closed);
        }
    }
}

/// `Some` once `buf` holds a whole header; `None` while it may still become one.
fn parse(buf: &[u8]) -> Result<Option<(Source, Vec<u8>)>, ProxyHeaderError> {
    let result = HeaderResult::parse(buf);
    if result.is_incomplete() {
        return Ok(None);
    }
    let (source, length) = match result {
        HeaderResult::V1(Ok(header)) => {
            let source = match header.addresses {
                v1::Addresses::Tcp4(a) => {
                    Source::Client(SocketAddr::new(IpAddr::V4(a.source_address), a.source_port))
                }
                v1::Addresses::Tcp6(a) => {
                    Source::Client(SocketAddr::new(IpAddr::V6(a.source_address), a.source_port))
                }
                v1::Addresses::Unknown => Source::Local,
            };
            (source, header.header.len())
        }
        HeaderResult::V2(Ok(header)) => {
            let source = match (header.command, header.addresses) {
                (v2::Command::Proxy, v2::Addresses::IPv4(a)) => {
                    Source::Client(SocketAddr::new(IpAddr::V4(a.source_address), a.source_port))
                }
                (v2::Command::Proxy, v2::Addresses::IPv6(a)) => {
                    Source::Client(SocketAddr::new(IpAddr::V6(a.source_address), a.source_port))
                }
                _ => Source::Local,
            };
            (source, header.len())
        }
        HeaderResult::V1(Err(e)) => return Err(ProxyHeaderError::Invalid(e.to_string())),
        HeaderResult::V2(Err(e)) => return Err(ProxyHeaderError::Invalid(e.to_string())),
    };
    let rest = buf.get(length..).unwrap_or_default().to_vec();
    Ok(Some((source, rest)))
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn read(bytes: &[u8]) -> Result<(Source, Vec<u8>), ProxyHeaderError> {
        let mut reader = bytes;
        read_header(&mut reader).await
    }

    fn v2_tcp4(command: u8, tail: &[u8]) -> Vec<u8> {
        let mut header = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
        header.extend_from_slice(&[0x20 | command, 0x11, 0, 12]);
        header.extend_from_slice(&[192, 0, 2, 7, 10, 0, 0, 1]);
        header.extend_from_slice(&[0x30, 0x39, 0x01, 0xbb]); // ports 12345 -> 443
        header.extend_from_slice(tail);
        header
    }

    #[tokio::test]
    async fn v1_and_v2_headers_name_the_client_and_keep_the_request_after_them() {
        let (source, rest) = read(b"PROXY TCP4 192.0.2.7 10.0.0.1 12345 443\r\nGET / HTTP/1.1\r\n")
            .await
            .unwrap();
        assert_eq!(source, Source::Client("192.0.2.7:12345".parse().unwrap()));
        assert_eq!(rest, b"GET / HTTP/1.1\r\n");
        let (source, _) = read(b"PROXY TCP6 2001:db8::7 2001:db8::1 12345 443\r\n")
            .await
            .unwrap();
        assert_eq!(
            source,
            Source::Client("[2001:db8::7]:12345".parse().unwrap())
        );
        let (source, rest) = read(&v2_tcp4(1, b"PRI")).await.unwrap();
        assert_eq!(source, Source::Client("192.0.2.7:12345".parse().unwrap()));
        assert_eq!(rest, b"PRI");
        // LOCAL (a balancer's health check) and UNKNOWN leave the peer as it is.
        assert_eq!(read(&v2_tcp4(0, b"")).await.unwrap().0, Source::Local);
        assert_eq!(read(b"PROXY UNKNOWN\r\n").await.unwrap().0, Source::Local);
    }

    #[tokio::test]
    async fn anything_else_is_refused() {
        for bad in [
            &b"GET / HTTP/1.1\r\nhost: x\r\n\r\n"[..],
            b"PROXY TCP4 not-an-address 10.0.0.1 1 2\r\n",
            b"PROXY TCP4 192.0.2.7", // closed before the end
        ] {
            assert!(
                read(bad).await.is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        // A v2 header that announces 60,000 bytes: refused at the size limit, not read on.
        let mut long = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
        long.extend_from_slice(&[0x21, 0x11, 0xea, 0x60]);
        long.resize(PROXY_HEADER_MAX_BYTES * 2, 0);
        assert!(matches!(read(&long).await, Err(ProxyHeaderError::TooLong)));
    }
}
