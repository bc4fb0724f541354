//! Relative links: the router does not know where the host mounts it, so every link is written
//! relative to the page it is on (`./`, `../`), with names percent-encoded.

use std::fmt::Write as _;

/// Percent-encodes everything but RFC 3986's unreserved characters: safe in a path segment and
/// in a query value (a space is `%20`, a `+` is `%2B`, a `/` is `%2F`).
pub(crate) fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            let _ = write!(out, "%{byte:02X}");
        }
    }
    out
}

/// `?k=v&…` of the pairs whose value is not empty; empty when none is.
pub(crate) fn query(pairs: &[(&str, &str)]) -> String {
    let mut out = String::new();
    for (key, value) in pairs.iter().filter(|(_, v)| !v.is_empty()) {
        out.push(if out.is_empty() { '?' } else { '&' });
        out.push_str(&encode(key));
        out.push('=');
        out.push_str(&encode(value));
    }
    out
}

/// The link from the mount point itself (`/admin` or `/admin/`, as the request spelt it) to
/// `target` inside it: a path without a trailing slash resolves relative links against its
/// parent, so the mount's own last segment has to be named.
pub(crate) fn from_mount_root(original_path: &str, target: &str) -> String {
    if original_path.ends_with('/') {
        return format!("./{target}");
    }
    let last = original_path.rsplit('/').next().unwrap_or_default();
    format!("./{last}/{target}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_and_builds() {
        assert_eq!(encode("dc1/a b+ż"), "dc1%2Fa%20b%2B%C5%BC");
        assert_eq!(
            query(&[("state", "dead"), ("q", ""), ("after", "2026-01-01T00:00:00Z_5")]),
            "?state=dead&after=2026-01-01T00%3A00%3A00Z_5"
        );
        assert_eq!(query(&[("q", "")]), "");
        assert_eq!(from_mount_root("/", "queues"), "./queues");
        assert_eq!(from_mount_root("/ops/admin", "queues"), "./admin/queues");
        assert_eq!(from_mount_root("/ops/admin/", "queues"), "./queues");
    }
}
