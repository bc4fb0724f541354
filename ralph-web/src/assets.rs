//! The stylesheet and the one script, compiled into the binary, and the security headers every
//! answer carries (a strict CSP works: the pages have no inline script or style).

use axum::http::{HeaderName, HeaderValue, header};
use axum::response::{IntoResponse, Response};

use crate::access::Reader;

const CSS: &str = include_str!("../assets/app.css");
const JS: &str = include_str!("../assets/app.js");

/// Asset URLs carry the crate version, so they may be cached for a day.
pub(crate) const VERSION: &str = env!("CARGO_PKG_VERSION");

fn asset(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type), (header::CACHE_CONTROL, "private, max-age=86400")], body).into_response()
}

pub(crate) async fn css(_: Reader) -> Response {
    asset("text/css; charset=utf-8", CSS)
}

pub(crate) async fn js(_: Reader) -> Response {
    asset("text/javascript; charset=utf-8", JS)
}

/// Adds what is missing of: no MIME sniffing, no framing, no referrer to other sites, a CSP
/// that allows only this origin, and no caching (queue state is never fresh for long).
pub(crate) async fn security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    let defaults: [(HeaderName, &'static str); 5] = [
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "same-origin"),
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
        ),
        (header::CACHE_CONTROL, "no-store"),
    ];
    for (name, value) in defaults {
        if !headers.contains_key(&name) {
            headers.insert(name, HeaderValue::from_static(value));
        }
    }
    response
}
