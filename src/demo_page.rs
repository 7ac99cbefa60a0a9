//! The demo chat page (`demo.page`, on in the demo): `GET /` serves one small page that streams
//! a chat completion through the gateway in the browser, shows time to first token and
//! tokens/s, and resumes the stream by itself when the connection is cut (README, "The demo
//! page").
//!
//! The page, its script and its stylesheet are embedded in the binary: no build step, no
//! external asset. Script and style are routes of their own, so the Content-Security-Policy can
//! forbid every inline script and style (`'self'` only) without a nonce or a hash to keep in
//! step with the files.
//!
//! A leaf: it knows paths and bytes, not streams.

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Request, Response};

use crate::error::GatewayError;
use crate::response::method_not_allowed;

/// The page; it loads [`SCRIPT_PATH`] and [`STYLE_PATH`].
pub const PAGE_PATH: &str = "/";
/// The page's script.
pub const SCRIPT_PATH: &str = "/demo.js";
/// The page's stylesheet.
pub const STYLE_PATH: &str = "/demo.css";

const PAGE_HTML: &str = include_str!("demo_page/index.html");
const SCRIPT_JS: &str = include_str!("demo_page/demo.js");
const STYLE_CSS: &str = include_str!("demo_page/demo.css");

/// Everything from this origin only, nothing inline, no plugins, no `<base>`, no framing: the
/// page renders model output, which must never become code. `data:` images only for the page's
/// empty icon (`href="data:,"`), which spares the browser a request for `/favicon.ico`.
const CONTENT_SECURITY_POLICY: HeaderValue = HeaderValue::from_static(
    "default-src 'self'; script-src 'self'; style-src 'self'; connect-src 'self'; \
     img-src 'self' data:; object-src 'none'; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'",
);

/// The answer when `request` is for one of the page's paths (`None`: it is not, and goes on to
/// the API's routes): the file for `GET` and `HEAD`, a 405 for any other method.
pub fn serve<B, R: From<Bytes>>(request: &Request<B>) -> Option<Result<Response<R>, GatewayError>> {
    let (text, content_type) = match request.uri().path() {
        PAGE_PATH => (PAGE_HTML, "text/html; charset=utf-8"),
        SCRIPT_PATH => (SCRIPT_JS, "text/javascript; charset=utf-8"),
        STYLE_PATH => (STYLE_CSS, "text/css; charset=utf-8"),
        _ => return None,
    };
    let method = request.method();
    if method != Method::GET && method != Method::HEAD {
        return Some(Err(method_not_allowed(request, "GET, HEAD")));
    }
    // HEAD: the same headers, the length said explicitly, no body (on HTTP/1.1 and HTTP/2 alike).
    let body = if method == Method::HEAD {
        Bytes::new()
    } else {
        Bytes::from_static(text.as_bytes())
    };
    let mut response = Response::new(R::from(body));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(text.len()));
    headers.insert(header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY);
    // Always the files of the binary that answers: a cached page would outlive an upgrade.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(
        CROSS_ORIGIN_OPENER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    Some(Ok(response))
}

/// Keeps other origins' windows from holding a reference to the page.
const CROSS_ORIGIN_OPENER_POLICY: HeaderName =
    HeaderName::from_static("cross-origin-opener-policy");

#[cfg(test)]
mod tests {
    use super::*;
    use http::StatusCode;

    fn answer(method: Method, path: &str) -> Option<Result<Response<Bytes>, GatewayError>> {
        serve(
            &Request::builder()
                .method(method)
                .uri(path)
                .body(())
                .unwrap(),
        )
    }

    #[test]
    fn the_page_and_its_files_are_served_with_a_strict_policy() {
        for (path, content_type) in [
            ("/", "text/html; charset=utf-8"),
            ("/demo.js", "text/javascript; charset=utf-8"),
            ("/demo.css", "text/css; charset=utf-8"),
        ] {
            let response = answer(Method::GET, path).unwrap().unwrap();
            assert_eq!(response.status(), StatusCode::OK);
            let headers = response.headers();
            assert_eq!(headers[header::CONTENT_TYPE], content_type);
            assert_eq!(headers[header::CACHE_CONTROL], "no-store");
            assert_eq!(headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
            let policy = headers[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
            assert!(policy.starts_with("default-src 'self'; "), "{policy}");
            assert!(!policy.contains("unsafe"), "{policy}");
            assert_eq!(
                headers[header::CONTENT_LENGTH],
                response.body().len().to_string()
            );
        }
    }

    #[test]
    fn head_has_the_length_and_no_body_and_other_methods_are_refused() {
        let head = answer(Method::HEAD, "/").unwrap().unwrap();
        assert!(head.body().is_empty());
        assert_eq!(
            head.headers()[header::CONTENT_LENGTH],
            PAGE_HTML.len().to_string()
        );
        let refused = answer(Method::POST, "/demo.js").unwrap().unwrap_err();
        assert_eq!(refused.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert!(answer(Method::GET, "/v1/models").is_none());
        assert!(answer(Method::GET, "/index.html").is_none());
    }

    #[test]
    fn the_page_loads_only_its_own_files_and_has_no_inline_code() {
        assert!(PAGE_HTML.contains(r#"<script src="/demo.js" defer></script>"#));
        assert!(PAGE_HTML.contains(r#"<link rel="stylesheet" href="/demo.css">"#));
        // Inline code would be refused by the policy: one <script> (the file), no style.
        assert_eq!(PAGE_HTML.matches("<script").count(), 1);
        assert!(!PAGE_HTML.contains("<style") && !PAGE_HTML.contains("style="));
        let inline_handler = |w: &str| w.starts_with("on") && w.contains('=');
        assert!(!PAGE_HTML.split_whitespace().any(inline_handler));
        assert!(!PAGE_HTML.contains("javascript:"));
        for file in [PAGE_HTML, SCRIPT_JS, STYLE_CSS] {
            assert!(!file.contains("http://") && !file.contains("https://"));
        }
        // Model text is only ever put in the page as text.
        assert!(!SCRIPT_JS.contains("innerHTML") && !SCRIPT_JS.contains("insertAdjacentHTML"));
    }
}
