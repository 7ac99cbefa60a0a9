//! Cross-origin requests from browsers (`[cors]`): a preflight is answered here, before
//! admission control and never upstream, and every API answer to an allowed origin carries the
//! headers that let the page read it. A disallowed origin gets none of them (the browser then
//! blocks the page) and is logged at most once per [`REFUSAL_LOG_EVERY`].
//!
//! A leaf: it knows headers and the configuration, not routes or streams.

use std::net::IpAddr;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};

use crate::config::CorsConfig;
use crate::refusal::{Reason, REFUSAL_LOG_EVERY};

/// The methods the API answers, for `Access-Control-Allow-Methods` (`DELETE`: a stored
/// response's).
const ALLOW_METHODS: HeaderValue = HeaderValue::from_static("GET, POST, DELETE");
/// Request headers a page may send, beyond the CORS-safelisted ones: what the OpenAI SDKs and
/// browsers send, a resume's (`Last-Event-ID`, which an `EventSource` sets itself), and the
/// upstream a stored response's request names. The SDKs' `x-stainless-*` headers are matched
/// by [`STAINLESS_PREFIX`].
const ALLOWED_REQUEST_HEADERS: [&str; 11] = [
    "authorization",
    "last-event-id",
    "x-tidegate-resume-token",
    "x-tidegate-upstream",
    "content-type",
    "openai-beta",
    "openai-organization",
    "openai-project",
    "x-request-id",
    "idempotency-key",
    "accept",
];
const STAINLESS_PREFIX: &str = "x-stainless-";
/// Response headers a page's script may read: the request and stream ids, the resume token,
/// and what the SDKs read to back off.
const EXPOSE_HEADERS: HeaderValue = HeaderValue::from_static(
    "x-request-id, x-tidegate-stream-id, x-tidegate-resume-token, x-tidegate-upstream, \
     retry-after, retry-after-ms, \
     x-ratelimit-limit-requests, x-ratelimit-remaining-requests, x-ratelimit-reset-requests",
);
/// The most request headers a preflight may ask for; more is not a browser.
const MAX_REQUESTED_HEADERS: usize = 64;

/// Which origins are allowed.
enum Origins {
    Any,
    Listed(Vec<HeaderValue>),
}

/// The CORS policy of the API listener, built once from `[cors]`.
pub struct Cors {
    origins: Origins,
    credentials: bool,
    max_age: HeaderValue,
    /// Requests from origins not allowed: counted, and logged at a bounded rate.
    refused: Reason,
}

impl Cors {
    /// The policy for `config`; `None` when no origin is listed (CORS off: no header is added and
    /// `OPTIONS` is answered as before).
    pub fn from_config(config: &CorsConfig) -> Option<Cors> {
        if config.allowed_origins.is_empty() {
            return None;
        }
        let origins = if config.allowed_origins.iter().any(|o| o == "*") {
            Origins::Any
        } else {
            Origins::Listed(
                config
                    .allowed_origins
                    .iter()
                    .filter_map(|o| HeaderValue::from_str(o).ok())
                    .collect(),
            )
        };
        Some(Cors {
            origins,
            credentials: config.allow_credentials,
            max_age: HeaderValue::from(config.max_age.as_secs()),
            refused: Reason::default(),
        })
    }

    /// Whether `request` is a CORS preflight: `OPTIONS` with `Origin` and
    /// `Access-Control-Request-Method`.
    pub fn is_preflight<B>(request: &Request<B>) -> bool {
        request.method() == Method::OPTIONS
            && request.headers().contains_key(header::ORIGIN)
            && request
                .headers()
                .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
    }

    /// The answer to a preflight from `client`: `204`, with the grant when the origin, the
    /// method and every requested header are allowed, else with none (the browser then refuses
    /// the request itself).
    pub fn preflight<B: From<Bytes>>(&self, headers: &HeaderMap, client: IpAddr) -> Response<B> {
        let mut response = Response::new(B::from(Bytes::new()));
        *response.status_mut() = StatusCode::NO_CONTENT;
        let out = response.headers_mut();
        out.insert(
            header::VARY,
            HeaderValue::from_static(
                "origin, access-control-request-method, access-control-request-headers",
            ),
        );
        let Some(origin) = headers.get(header::ORIGIN) else {
            return response;
        };
        if !self.allows(origin) {
            self.log_refused(origin, client);
            return response;
        }
        let method = headers
            .get(header::ACCESS_CONTROL_REQUEST_METHOD)
            .map(HeaderValue::as_bytes);
        if !matches!(method, Some(b"GET" | b"POST" | b"DELETE")) {
            return response;
        }
        let Some(requested) = requested_headers(headers) else {
            return response;
        };
        self.grant(origin, out);
        out.insert(header::ACCESS_CONTROL_ALLOW_METHODS, ALLOW_METHODS);
        if let Some(requested) = requested {
            out.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, requested);
        }
        out.insert(header::ACCESS_CONTROL_MAX_AGE, self.max_age.clone());
        response
    }

    /// Adds the CORS headers to an API answer for a request with `origin` from `client`:
    /// the grant and the readable headers when the origin is allowed; `Vary: Origin` whenever
    /// the answer depends on it.
    pub fn apply(&self, origin: Option<&HeaderValue>, client: IpAddr, out: &mut HeaderMap) {
        if matches!(self.origins, Origins::Listed(_)) {
            out.append(header::VARY, HeaderValue::from_static("origin"));
        }
        let Some(origin) = origin else {
            return;
        };
        if !self.allows(origin) {
            self.log_refused(origin, client);
            return;
        }
        self.grant(origin, out);
        out.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, EXPOSE_HEADERS);
    }

    /// Requests refused for their origin so far.
    pub fn refused(&self) -> u64 {
        self.refused.count()
    }

    fn allows(&self, origin: &HeaderValue) -> bool {
        match &self.origins {
            Origins::Any => true,
            Origins::Listed(listed) => listed.iter().any(|o| o == origin),
        }
    }

    fn grant(&self, origin: &HeaderValue, out: &mut HeaderMap) {
        let allowed = match self.origins {
            Origins::Any => HeaderValue::from_static("*"),
            Origins::Listed(_) => origin.clone(),
        };
        out.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, allowed);
        if self.credentials {
            out.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
    }

    fn log_refused(&self, origin: &HeaderValue, client: IpAddr) {
        if let Some(total) = self.refused.tick() {
            tracing::warn!(
                origin = %String::from_utf8_lossy(origin.as_bytes()),
                client = %client,
                total,
                every_s = REFUSAL_LOG_EVERY.as_secs(),
                "a request from an origin not in cors.allowed_origins: no CORS headers, the browser blocks it"
            );
        }
    }
}

/// The preflight's `Access-Control-Request-Headers`, lower-cased, when every one is allowed:
/// `Some(None)` when it asks for none, `None` when it asks for one we do not allow (or too many,
/// or names that are not header names).
fn requested_headers(headers: &HeaderMap) -> Option<Option<HeaderValue>> {
    let mut names: Vec<HeaderName> = Vec::new();
    for value in headers.get_all(header::ACCESS_CONTROL_REQUEST_HEADERS) {
        let text = value.to_str().ok()?;
        // Bounded: by the header's size (limits.max_header_bytes) and MAX_REQUESTED_HEADERS.
        for name in text.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            let name = HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes()).ok()?;
            let allowed = ALLOWED_REQUEST_HEADERS.contains(&name.as_str())
                || name.as_str().starts_with(STAINLESS_PREFIX);
            if !allowed || names.len() >= MAX_REQUESTED_HEADERS {
                return None;
            }
            names.push(name);
        }
    }
    if names.is_empty() {
        return Some(None);
    }
    let joined = names
        .iter()
        .map(HeaderName::as_str)
        .collect::<Vec<_>>()
        .join(", ");
    HeaderValue::from_str(&joined).ok().map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn cors(origins: &[&str], credentials: bool) -> Cors {
        Cors::from_config(&CorsConfig {
            allowed_origins: origins.iter().map(|o| (*o).to_owned()).collect(),
            allow_credentials: credentials,
            max_age: Duration::from_secs(600),
        })
        .expect("origins listed")
    }

    fn preflight(cors: &Cors, origin: &str, method: &str, asked: Option<&str>) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::ORIGIN, HeaderValue::from_str(origin).unwrap());
        headers.insert(
            header::ACCESS_CONTROL_REQUEST_METHOD,
            HeaderValue::from_str(method).unwrap(),
        );
        if let Some(asked) = asked {
            headers.insert(
                header::ACCESS_CONTROL_REQUEST_HEADERS,
                HeaderValue::from_str(asked).unwrap(),
            );
        }
        let response: Response<Bytes> = cors.preflight(&headers, [127, 0, 0, 1].into());
        assert_eq!(response.status(), StatusCode::NO_CONTENT);
        response.headers().clone()
    }

    #[test]
    fn off_without_origins() {
        assert!(Cors::from_config(&CorsConfig::default()).is_none());
    }

    #[test]
    fn a_preflight_from_a_listed_origin_is_granted_what_the_sdks_send() {
        let c = cors(&["https://chat.example.com"], false);
        let got = preflight(
            &c,
            "https://chat.example.com",
            "POST",
            Some("Authorization, content-type, x-stainless-lang, X-Stainless-Retry-Count, openai-beta"),
        );
        assert_eq!(
            got[header::ACCESS_CONTROL_ALLOW_ORIGIN],
            "https://chat.example.com"
        );
        assert_eq!(
            got[header::ACCESS_CONTROL_ALLOW_METHODS],
            "GET, POST, DELETE"
        );
        assert_eq!(
            got[header::ACCESS_CONTROL_ALLOW_HEADERS],
            "authorization, content-type, x-stainless-lang, x-stainless-retry-count, openai-beta"
        );
        assert_eq!(got[header::ACCESS_CONTROL_MAX_AGE], "600");
        assert!(got[header::VARY].to_str().unwrap().contains("origin"));
        assert!(!got.contains_key(header::ACCESS_CONTROL_ALLOW_CREDENTIALS));
    }

    #[test]
    fn a_preflight_is_not_granted_an_unlisted_origin_method_or_header() {
        let c = cors(&["https://chat.example.com"], false);
        for (origin, method, asked) in [
            ("https://evil.example", "POST", None),
            ("https://chat.example.com.evil.example", "POST", None),
            ("http://chat.example.com", "POST", None),
            ("https://chat.example.com", "PUT", None),
            (
                "https://chat.example.com",
                "POST",
                Some("content-type, cookie"),
            ),
            ("https://chat.example.com", "POST", Some("x-custom")),
        ] {
            let got = preflight(&c, origin, method, asked);
            assert!(
                !got.contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN),
                "{origin} {method} {asked:?}"
            );
            assert!(!got.contains_key(header::ACCESS_CONTROL_ALLOW_METHODS));
        }
        assert_eq!(c.refused(), 3);
    }

    #[test]
    fn any_origin_answers_star_and_credentials_echo_the_origin() {
        let any = cors(&["*"], false);
        let got = preflight(&any, "https://x.example", "GET", None);
        assert_eq!(got[header::ACCESS_CONTROL_ALLOW_ORIGIN], "*");
        assert!(!got.contains_key(header::ACCESS_CONTROL_ALLOW_HEADERS));

        let with = cors(&["https://a.example"], true);
        let got = preflight(&with, "https://a.example", "POST", None);
        assert_eq!(
            got[header::ACCESS_CONTROL_ALLOW_ORIGIN],
            "https://a.example"
        );
        assert_eq!(got[header::ACCESS_CONTROL_ALLOW_CREDENTIALS], "true");
    }

    #[test]
    fn answers_carry_the_grant_and_the_readable_headers_only_for_allowed_origins() {
        let c = cors(&["https://a.example"], false);
        let client: IpAddr = [127, 0, 0, 1].into();
        let allowed = HeaderValue::from_static("https://a.example");
        let mut out = HeaderMap::new();
        c.apply(Some(&allowed), client, &mut out);
        assert_eq!(
            out[header::ACCESS_CONTROL_ALLOW_ORIGIN],
            "https://a.example"
        );
        let exposed = out[header::ACCESS_CONTROL_EXPOSE_HEADERS].to_str().unwrap();
        for name in [
            "x-request-id",
            "x-tidegate-stream-id",
            "retry-after",
            "x-ratelimit-reset-requests",
        ] {
            assert!(exposed.contains(name), "{name}");
        }
        assert_eq!(out[header::VARY], "origin");

        let mut out = HeaderMap::new();
        c.apply(
            Some(&HeaderValue::from_static("https://b.example")),
            client,
            &mut out,
        );
        assert!(!out.contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN));
        assert_eq!(out[header::VARY], "origin");

        let mut out = HeaderMap::new();
        c.apply(None, client, &mut out);
        assert_eq!(out.len(), 1, "only Vary without an Origin");
    }
}
