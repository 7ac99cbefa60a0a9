//! [`UpstreamUrl`]: the validated base URL requests are relayed to.
//!
//! Only the small subset of URLs a base URL needs is accepted, so that
//! [`UpstreamUrl::join`] can build request URIs by plain concatenation:
//! `http` or `https`, a host (DNS name, IPv4 address or bracketed IPv6
//! address), an optional non-zero port and an optional path. Credentials,
//! queries and fragments are rejected.

use std::fmt;
use std::net::Ipv6Addr;
use std::str::FromStr;

/// A validated upstream base URL such as `"http://127.0.0.1:8081/v1"`.
///
/// Stored normalised: scheme and host in lower case, port without leading
/// zeros, and no trailing slash (`"HTTPS://API.example.com:0443/v1/"` is
/// stored as `"https://api.example.com:443/v1"`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UpstreamUrl {
    text: String,
    https: bool,
}

impl UpstreamUrl {
    /// Validates and normalises `s`. The error text says what is wrong and
    /// never repeats a URL that contains credentials.
    pub fn parse(s: &str) -> Result<UpstreamUrl, String> {
        if s.is_empty() {
            return Err("expected an http:// or https:// URL, got an empty string".to_owned());
        }
        let Some((scheme, rest)) = s.split_once("://") else {
            return Err(format!(
                "expected an absolute URL starting with http:// or https://, got {s:?}"
            ));
        };
        let https = if scheme.eq_ignore_ascii_case("https") {
            true
        } else if scheme.eq_ignore_ascii_case("http") {
            false
        } else {
            return Err(format!(
                "unsupported scheme {scheme:?} in {s:?}; expected http or https"
            ));
        };

        let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, path_and_more) = rest.split_at(authority_end);
        if authority.contains('@') {
            return Err(
                "must not contain credentials (user:password@); name the environment \
                 variable holding the key in upstream.api_key_env instead"
                    .to_owned(),
            );
        }
        if path_and_more.contains('#') {
            return Err(format!("must not have a fragment (\"#...\"), got {s:?}"));
        }
        if path_and_more.contains('?') {
            return Err(format!(
                "must not have a query (\"?...\"), got {s:?}; a base URL is joined with request paths"
            ));
        }

        let (host, port) = split_host_port(authority).map_err(|e| format!("{e} in {s:?}"))?;
        check_path(path_and_more).map_err(|e| format!("{e} in {s:?}"))?;

        let mut text = String::with_capacity(s.len());
        text.push_str(if https { "https://" } else { "http://" });
        text.push_str(&host.to_ascii_lowercase());
        if let Some(port) = port {
            text.push(':');
            text.push_str(&port.to_string());
        }
        text.push_str(path_and_more.trim_end_matches('/'));
        Ok(UpstreamUrl { text, https })
    }

    /// The normalised URL, without a trailing slash.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// True for `https://` URLs (the upstream connection needs TLS).
    pub fn is_https(&self) -> bool {
        self.https
    }

    /// `base_url + suffix`, plus `?query` when `query` is non-empty:
    /// `join("/chat/completions", Some("a=b"))` on `http://h:1/v1` gives
    /// `"http://h:1/v1/chat/completions?a=b"`.
    ///
    /// A `/` is inserted when a non-empty `suffix` lacks one; a leading `?`
    /// on `query` is tolerated. Neither argument is validated or escaped:
    /// pass a request path and raw query as received (hyper has already
    /// checked them).
    pub fn join(&self, suffix: &str, query: Option<&str>) -> String {
        let query = query.map(|q| q.strip_prefix('?').unwrap_or(q));
        let mut joined =
            String::with_capacity(self.text.len() + suffix.len() + 2 + query.map_or(0, str::len));
        joined.push_str(&self.text);
        if !suffix.is_empty() && !suffix.starts_with('/') {
            joined.push('/');
        }
        joined.push_str(suffix);
        if let Some(query) = query.filter(|q| !q.is_empty()) {
            joined.push('?');
            joined.push_str(query);
        }
        joined
    }

    /// Builds the default without parsing; a unit test checks it equals
    /// `UpstreamUrl::parse(DEFAULT_UPSTREAM_BASE_URL)`.
    pub(super) fn default_openai() -> UpstreamUrl {
        UpstreamUrl {
            text: super::DEFAULT_UPSTREAM_BASE_URL.to_owned(),
            https: true,
        }
    }
}

impl Default for UpstreamUrl {
    /// [`super::DEFAULT_UPSTREAM_BASE_URL`].
    fn default() -> Self {
        UpstreamUrl::default_openai()
    }
}

impl fmt::Display for UpstreamUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl FromStr for UpstreamUrl {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        UpstreamUrl::parse(s)
    }
}

/// Splits `host[:port]` / `[v6]:port`, validating both parts.
fn split_host_port(authority: &str) -> Result<(&str, Option<u16>), String> {
    let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
        let Some((inner, after)) = bracketed.split_once(']') else {
            return Err("unterminated IPv6 address (missing \"]\")".to_owned());
        };
        if inner.parse::<Ipv6Addr>().is_err() {
            return Err(format!("invalid IPv6 address [{inner}]"));
        }
        let port = match after {
            "" => None,
            _ => match after.strip_prefix(':') {
                Some(port) => Some(port),
                None => return Err(format!("unexpected {after:?} after the IPv6 address")),
            },
        };
        (&authority[..authority.len() - after.len()], port)
    } else {
        match authority.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };

    if host.is_empty() {
        return Err("has no host".to_owned());
    }
    if !host.starts_with('[') {
        if let Some(bad) = host
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_')))
        {
            return Err(format!("invalid character {bad:?} in host {host:?}"));
        }
        if host.starts_with(['.', '-']) || host.contains("..") {
            return Err(format!("invalid host {host:?}"));
        }
    }

    let port = match port {
        None => None,
        Some(digits) => {
            let valid = !digits.is_empty()
                && digits.len() <= 5
                && digits.bytes().all(|b| b.is_ascii_digit());
            match digits.parse::<u16>() {
                Ok(port) if valid && port != 0 => Some(port),
                _ => return Err(format!("invalid port {digits:?} (expected 1 to 65535)")),
            }
        }
    };
    Ok((host, port))
}

/// Accepts an empty path or an RFC 3986 absolute path: `/` followed by
/// unreserved characters, sub-delimiters, `:`, `@`, `/` and `%XX` escapes.
fn check_path(path: &str) -> Result<(), String> {
    let bytes = path.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        let allowed = b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
                    | b':'
                    | b'@'
                    | b'/'
            );
        if b == b'%' {
            let escape_ok = bytes
                .get(i + 1..i + 3)
                .is_some_and(|hex| hex.iter().all(u8::is_ascii_hexdigit));
            if !escape_ok {
                return Err("invalid percent-escape in the path".to_owned());
            }
            i += 3;
            continue;
        }
        if !allowed {
            let bad = path[i..].chars().next().unwrap_or('?');
            return Err(format!(
                "character {bad:?} is not allowed in a URL path (percent-encode it)"
            ));
        }
        i += 1;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> String {
        UpstreamUrl::parse(s)
            .unwrap_or_else(|e| panic!("{s}: {e}"))
            .as_str()
            .to_owned()
    }

    #[test]
    fn accepts_and_normalises() {
        let cases = [
            ("https://api.openai.com/v1", "https://api.openai.com/v1"),
            ("https://api.openai.com/v1/", "https://api.openai.com/v1"),
            ("https://api.openai.com/v1//", "https://api.openai.com/v1"),
            ("http://127.0.0.1:8081/v1", "http://127.0.0.1:8081/v1"),
            ("http://localhost:8081", "http://localhost:8081"),
            ("http://localhost:8081/", "http://localhost:8081"),
            (
                "HTTPS://API.Example.COM:0443/V1/",
                "https://api.example.com:443/V1",
            ),
            ("http://[::1]:8081/v1", "http://[::1]:8081/v1"),
            ("http://[::1]/v1", "http://[::1]/v1"),
            (
                "http://my_host.internal/a/b%20c/",
                "http://my_host.internal/a/b%20c",
            ),
            (
                "http://h/openai/deployments/x:y",
                "http://h/openai/deployments/x:y",
            ),
        ];
        for (input, expected) in cases {
            assert_eq!(ok(input), expected, "{input}");
        }
        assert!(UpstreamUrl::parse("https://h").unwrap().is_https());
        assert!(!UpstreamUrl::parse("http://h").unwrap().is_https());
    }

    #[test]
    fn default_matches_the_parsed_constant() {
        assert_eq!(
            UpstreamUrl::parse(super::super::DEFAULT_UPSTREAM_BASE_URL),
            Ok(UpstreamUrl::default())
        );
    }

    #[test]
    fn rejects_bad_urls_with_a_reason() {
        let cases = [
            ("", "empty"),
            ("ftp://example.com/v1", "unsupported scheme \"ftp\""),
            ("ws://example.com", "unsupported scheme"),
            ("api.openai.com/v1", "absolute URL"),
            ("not a url", "absolute URL"),
            ("http://", "has no host"),
            ("http:///v1", "has no host"),
            ("http://:8080/v1", "has no host"),
            ("https://h/v1?api-version=1", "must not have a query"),
            ("https://h?x", "must not have a query"),
            ("https://h/v1#frag", "must not have a fragment"),
            ("http://h:0/v1", "invalid port"),
            ("http://h:65536/v1", "invalid port"),
            ("http://h:/v1", "invalid port"),
            ("http://h:80:80/v1", "invalid port"),
            ("http://h:-1", "invalid port"),
            ("http://::1:80/", "has no host"),
            ("http://[::1/v1", "unterminated IPv6"),
            ("http://[zz::1]/v1", "invalid IPv6"),
            ("http://[::1]x/v1", "after the IPv6"),
            ("http://bad host/v1", "invalid character ' '"),
            ("http://h\u{e9}/v1", "invalid character"),
            ("http://.h/v1", "invalid host"),
            ("http://a..b/v1", "invalid host"),
            ("http://h/v 1", "not allowed in a URL path"),
            ("http://h/v1%zz", "percent-escape"),
            ("http://h/v1%2", "percent-escape"),
            (" http://h/v1", "unsupported scheme"),
            ("http:/h/v1", "absolute URL"),
        ];
        for (input, needle) in cases {
            let err = UpstreamUrl::parse(input).expect_err(input);
            assert!(err.contains(needle), "{input:?}: {err}");
        }
    }

    #[test]
    fn credentials_are_rejected_without_echoing_them() {
        let err = UpstreamUrl::parse("https://user:hunter2@h/v1").unwrap_err();
        assert!(err.contains("credentials"), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
    }

    #[test]
    fn join_builds_request_urls() {
        let base = UpstreamUrl::parse("http://h:1/v1/").unwrap();
        assert_eq!(
            base.join("/chat/completions", Some("a=b")),
            "http://h:1/v1/chat/completions?a=b"
        );
        assert_eq!(
            base.join("/chat/completions", None),
            "http://h:1/v1/chat/completions"
        );
        assert_eq!(base.join("/models", Some("")), "http://h:1/v1/models");
        assert_eq!(
            base.join("/models", Some("?x=1")),
            "http://h:1/v1/models?x=1"
        );
        assert_eq!(base.join("models", None), "http://h:1/v1/models");
        assert_eq!(base.join("", None), "http://h:1/v1");
        assert_eq!(base.join("", Some("q")), "http://h:1/v1?q");

        let root = UpstreamUrl::parse("https://h/").unwrap();
        assert_eq!(root.join("/v1/models", None), "https://h/v1/models");
        assert_eq!(root.to_string(), "https://h");
        assert_eq!("https://h/".parse::<UpstreamUrl>(), Ok(root));
    }
}
