//! How values are written in the file, where a type's own serde impl is not
//! what the file wants: durations (`"15s"`, `"1h 30m"`), sizes (`65536` or
//! `"64 KiB"`), socket addresses (with hints for the common mistakes), and the
//! string forms of [`LogFormat`], [`UpstreamProtocol`], [`UpstreamUrl`] and [`Secret`].
//!
//! Each reader says what it expected, so serde's message names both sides:
//! `invalid type: integer `5`, expected a size in bytes ...`; the key path is
//! added by the loader.

use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

use super::{LogFormat, Secret, UpstreamProtocol, UpstreamUrl};

/// Durations in [`humantime`]'s syntax (`"500ms"`, `"15s"`, `"1h 30m"`), written
/// back by humantime. A bad value's message keeps humantime's reason
/// (`time unit needed, for example 10sec or 10ms`), which `humantime_serde`
/// drops.
pub(super) mod duration {
    use std::time::Duration;

    use super::*;

    const EXPECTED: &str = r#"a duration such as "500ms", "15s" or "1h 30m""#;

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Duration, D::Error> {
        deserializer.deserialize_str(DurationVisitor)
    }

    pub(crate) fn serialize<S: Serializer>(
        value: &Duration,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&humantime::format_duration(*value))
    }

    /// For `Option<Duration>` fields: an absent key is `None` (by the container's
    /// `#[serde(default)]`), a present one must be a duration; `None` is not written.
    pub(crate) mod option {
        use super::*;

        pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
            deserializer: D,
        ) -> Result<Option<Duration>, D::Error> {
            super::deserialize(deserializer).map(Some)
        }

        pub(crate) fn serialize<S: Serializer>(
            value: &Option<Duration>,
            serializer: S,
        ) -> Result<S::Ok, S::Error> {
            match value {
                Some(duration) => super::serialize(duration, serializer),
                None => serializer.serialize_none(),
            }
        }
    }

    struct DurationVisitor;

    impl Visitor<'_> for DurationVisitor {
        type Value = Duration;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(EXPECTED)
        }

        fn visit_str<E: de::Error>(self, text: &str) -> Result<Duration, E> {
            humantime::parse_duration(text)
                .map_err(|reason| E::custom(format!("expected {EXPECTED}, got {text:?}: {reason}")))
        }
    }
}

/// Sizes in bytes: an integer (`65536`) or a string [`bytesize`] reads
/// (`"64 KiB"`, `"1 MiB"`, `"1.5MB"`; note `"64k"` is 64,000 bytes, SI).
/// Written back as the plain integer, so printing and reading round-trip
/// exactly (bytesize's own `Display` rounds). The field types stay integers.
pub(super) mod size {
    use super::*;

    const EXPECTED: &str =
        r#"a size in bytes: an integer such as 65536, or a string such as "64 KiB""#;

    pub(crate) fn deserialize<'de, D, T>(deserializer: D) -> Result<T, D::Error>
    where
        D: Deserializer<'de>,
        T: TryFrom<u64>,
    {
        let bytes = deserializer.deserialize_any(SizeVisitor)?;
        T::try_from(bytes).map_err(|_| {
            de::Error::invalid_value(de::Unexpected::Unsigned(bytes), &"a smaller size")
        })
    }

    pub(crate) fn serialize<T, S>(value: &T, serializer: S) -> Result<S::Ok, S::Error>
    where
        T: Copy,
        u64: TryFrom<T>,
        S: Serializer,
    {
        let bytes = u64::try_from(*value)
            .map_err(|_| serde::ser::Error::custom("size does not fit in 64 bits"))?;
        serializer.serialize_u64(bytes)
    }

    struct SizeVisitor;

    impl Visitor<'_> for SizeVisitor {
        type Value = u64;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(EXPECTED)
        }

        fn visit_u64<E: de::Error>(self, n: u64) -> Result<u64, E> {
            Ok(n)
        }

        fn visit_i64<E: de::Error>(self, n: i64) -> Result<u64, E> {
            u64::try_from(n).map_err(|_| E::invalid_value(de::Unexpected::Signed(n), &self))
        }

        fn visit_str<E: de::Error>(self, text: &str) -> Result<u64, E> {
            // Surrounding spaces are harmless in a size, but bytesize rejects them.
            text.trim()
                .parse::<bytesize::ByteSize>()
                .map(|size| size.as_u64())
                .map_err(|reason| {
                    E::custom(format!("expected {EXPECTED}, got {text:?} ({reason})"))
                })
        }
    }
}

/// Socket addresses as `"IP:port"` strings. std's own impl says only
/// "invalid socket address syntax"; this one quotes the value and names
/// the usual mistakes (no port, a host name).
pub(super) mod socket_addr {
    use std::net::SocketAddr;

    use super::*;

    const EXPECTED: &str = r#"an IP address and port such as "127.0.0.1:8080" or "[::1]:8080""#;

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<SocketAddr, D::Error> {
        deserializer.deserialize_str(AddrVisitor)
    }

    pub(crate) fn serialize<S: Serializer>(
        addr: &SocketAddr,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.collect_str(addr)
    }

    /// For `Option<SocketAddr>` fields: an absent key is `None` (by the
    /// container's `#[serde(default)]`), a present one must be an address.
    pub(crate) mod option {
        use super::*;

        pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
            deserializer: D,
        ) -> Result<Option<SocketAddr>, D::Error> {
            super::deserialize(deserializer).map(Some)
        }

        pub(crate) fn serialize<S: Serializer>(
            addr: &Option<SocketAddr>,
            serializer: S,
        ) -> Result<S::Ok, S::Error> {
            match addr {
                Some(addr) => serializer.collect_str(addr),
                None => serializer.serialize_none(),
            }
        }
    }

    struct AddrVisitor;

    impl Visitor<'_> for AddrVisitor {
        type Value = SocketAddr;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(EXPECTED)
        }

        fn visit_str<E: de::Error>(self, s: &str) -> Result<SocketAddr, E> {
            s.parse().map_err(|_| {
                let host = s.rsplit_once(':').map(|(host, _)| host);
                let hint = match host {
                    None => " (the port is required)",
                    Some(host) if !host.starts_with('[') && host.contains(char::is_alphabetic) => {
                        " (host names are not resolved; use an IP address)"
                    }
                    Some(_) => "",
                };
                E::custom(format!("expected {EXPECTED}, got {s:?}{hint}"))
            })
        }
    }
}

/// A string type read through its `FromStr`, whose message is complete.
struct ParseVisitor<T>(&'static str, std::marker::PhantomData<T>);

impl<T> Visitor<'_> for ParseVisitor<T>
where
    T: std::str::FromStr<Err = String>,
{
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<T, E> {
        s.parse().map_err(E::custom)
    }
}

impl<'de> Deserialize<'de> for LogFormat {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_str(ParseVisitor(
            r#""text" or "json""#,
            std::marker::PhantomData,
        ))
    }
}

impl Serialize for LogFormat {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for UpstreamProtocol {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_str(ParseVisitor(
            r#""auto", "http1" or "http2""#,
            std::marker::PhantomData,
        ))
    }
}

impl Serialize for UpstreamProtocol {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// Read through [`UpstreamUrl::parse`], so the file gets the same checks and
/// normalisation as `--upstream`.
impl<'de> Deserialize<'de> for UpstreamUrl {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_str(ParseVisitor(
            "an http:// or https:// URL string",
            std::marker::PhantomData,
        ))
    }
}

impl Serialize for UpstreamUrl {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// Never the value: should a secret ever be serialized (the config's secret
/// fields are skipped), it reads `<redacted>`.
impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str("<redacted>")
    }
}

/// A list of networks: CIDR blocks (`"10.0.0.0/8"`, `"2001:db8::/32"`) or single addresses
/// (`"127.0.0.1"`, a /32 or /128), parsed by `ipnet`.
pub(super) mod ip_nets {
    use ipnet::IpNet;

    use super::*;

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Vec<IpNet>, D::Error> {
        let texts = Vec::<String>::deserialize(deserializer)?;
        texts
            .iter()
            .map(|text| {
                text.parse::<IpNet>()
                    .or_else(|_| text.parse::<std::net::IpAddr>().map(IpNet::from))
                    .map_err(|_| {
                        de::Error::custom(format!(
                            "expected a network such as \"10.0.0.0/8\" or an address such as \
                             \"127.0.0.1\", got {text:?}"
                        ))
                    })
            })
            .collect()
    }

    pub(crate) fn serialize<S: Serializer>(
        nets: &[IpNet],
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(nets.iter().map(|n| n.to_string()))
    }
}
