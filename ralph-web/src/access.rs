//! Who may do what: the host's [`AccessHook`], the [`Access`] it answers, and the checks every
//! request passes (closed by default; actions only at [`AccessLevel::Act`] and only from the
//! page's own origin).

use std::sync::Arc;

use async_trait::async_trait;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};

use crate::error::WebError;
use crate::page::Shared;

/// What a request may do, from least to most.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum AccessLevel {
    /// Nothing: every route but `healthz` answers 403.
    #[default]
    None,
    /// Pages, JSON, live updates and metrics.
    Read,
    /// [`AccessLevel::Read`] plus the actions: retry, discard, bulk retry and discard, pause,
    /// resume.
    Act,
}

/// The answer of an [`AccessHook`] for one request.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Access {
    /// What the request may do.
    pub level: AccessLevel,
    /// Who is asking, as the audit events and the change history name them (`"jan"`,
    /// `"svc:deploy-bot"`; recorded as a user, at most 255 characters).
    pub actor: String,
}

impl Access {
    /// No access.
    #[must_use]
    pub fn none() -> Self {
        Self::default()
    }

    /// Read access for `actor`.
    #[must_use]
    pub fn read(actor: impl Into<String>) -> Self {
        Self { level: AccessLevel::Read, actor: actor.into() }
    }

    /// Read and act access for `actor`.
    #[must_use]
    pub fn act(actor: impl Into<String>) -> Self {
        Self { level: AccessLevel::Act, actor: actor.into() }
    }
}

/// Decides what a request may do. The host application implements it with its own
/// authentication: a session cookie, a header its proxy sets, an extension its middleware put
/// into the request.
///
/// Any `Fn(&Parts) -> Access` closure is a hook; implement the trait for a hook that awaits
/// (a session store lookup, say). A hook that cannot decide (its session store is down)
/// answers [`Access::none`].
///
/// It is asked once per request, and for a live-update stream (`api/events`) again before
/// every event, with the parts of the request that opened the stream: a hook that decides
/// from state looked up by the request (a session store) withdraws access from an open stream;
/// one that trusts something fixed in the request (a header, an extension) cannot.
///
/// ```
/// use async_trait::async_trait;
/// use axum::http::request::Parts;
/// use ralph_web::{Access, AccessHook};
///
/// struct Sessions;
///
/// #[async_trait]
/// impl AccessHook for Sessions {
///     async fn access(&self, request: &Parts) -> Access {
///         // A real hook looks the cookie up in its session store here.
///         match request.headers.get("cookie").and_then(|c| c.to_str().ok()) {
///             Some(c) if c.contains("session=ops") => Access::act("ops"),
///             _ => Access::none(),
///         }
///     }
/// }
/// ```
#[async_trait]
pub trait AccessHook: Send + Sync + 'static {
    /// The access `request` (its method, URI, headers and extensions) is granted.
    async fn access(&self, request: &Parts) -> Access;
}

#[async_trait]
impl<F> AccessHook for F
where
    F: Fn(&Parts) -> Access + Send + Sync + 'static,
{
    async fn access(&self, request: &Parts) -> Access {
        self(request)
    }
}

/// Extractor: the request may read. Carries the hook's answer.
pub(crate) struct Reader(pub(crate) Access);

/// Extractor: the request may act, and it comes from the page's own origin.
pub(crate) struct Actor(pub(crate) Access);

/// The change history's actor for an action: the person the hook named.
pub(crate) fn history_actor(name: &str) -> ralph_core::history::Actor {
    ralph_core::history::Actor::user(name)
}

/// Asks the hook; no hook means no access.
pub(crate) async fn ask(parts: &Parts, shared: &Shared) -> Access {
    match &shared.hook {
        Some(hook) => hook.access(parts).await,
        None => Access::none(),
    }
}

impl FromRequestParts<Arc<Shared>> for Reader {
    type Rejection = WebError;

    async fn from_request_parts(parts: &mut Parts, shared: &Arc<Shared>) -> Result<Self, WebError> {
        let access = ask(parts, shared).await;
        if access.level >= AccessLevel::Read { Ok(Self(access)) } else { Err(WebError::Forbidden("access denied")) }
    }
}

impl FromRequestParts<Arc<Shared>> for Actor {
    type Rejection = WebError;

    async fn from_request_parts(parts: &mut Parts, shared: &Arc<Shared>) -> Result<Self, WebError> {
        // Cross-site first: a forged request learns nothing about the hook's answer.
        if let Err(why) = same_origin(&parts.headers, parts.uri.authority().map(|a| a.as_str())) {
            tracing::warn!(target: "ralph::web", reason = why, "cross-site action refused");
            return Err(WebError::Forbidden(why));
        }
        let access = ask(parts, shared).await;
        match access.level {
            AccessLevel::Act => Ok(Self(access)),
            AccessLevel::Read => Err(WebError::Forbidden("this access level may read but not act")),
            AccessLevel::None => Err(WebError::Forbidden("access denied")),
        }
    }
}

/// Refuses requests a browser marks as coming from another site: `Sec-Fetch-Site`, when
/// present, must be `same-origin` or `none` (typed by the user); `Origin`, when present, must
/// name the host the request was sent to. Requests without either header (scripts, curl) pass:
/// browsers send at least one of them on every cross-site POST.
pub(crate) fn same_origin(headers: &HeaderMap, uri_authority: Option<&str>) -> Result<(), &'static str> {
    if let Some(site) = headers.get("sec-fetch-site") {
        match site.to_str() {
            Ok("same-origin" | "none") => {}
            _ => return Err("cross-site request refused (Sec-Fetch-Site)"),
        }
    }
    let Some(origin) = headers.get(header::ORIGIN) else { return Ok(()) };
    let origin = origin.to_str().map_err(|_| "cross-site request refused (Origin)")?;
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).or(uri_authority);
    let (Some((scheme, authority)), Some(host)) = (origin.split_once("://"), host) else {
        return Err("cross-site request refused (Origin)");
    };
    if strip_default_port(scheme, authority).eq_ignore_ascii_case(strip_default_port(scheme, host)) {
        Ok(())
    } else {
        Err("cross-site request refused (Origin does not match Host)")
    }
}

/// `host:80` as `host` for http, `host:443` as `host` for https: browsers leave the default
/// port out of `Origin`, clients may put it into `Host`.
fn strip_default_port<'a>(scheme: &str, authority: &'a str) -> &'a str {
    let default = match scheme.to_ascii_lowercase().as_str() {
        "http" => ":80",
        "https" => ":443",
        _ => return authority,
    };
    authority.strip_suffix(default).unwrap_or(authority)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.insert(*k, HeaderValue::from_static(v));
        }
        map
    }

    #[test]
    fn origin_rules() {
        assert!(same_origin(&headers(&[]), None).is_ok(), "scripts send neither header");
        assert!(
            same_origin(&headers(&[("host", "ops.example:8080"), ("origin", "http://ops.example:8080")]), None).is_ok()
        );
        assert!(same_origin(&headers(&[("host", "ops.example:443"), ("origin", "https://OPS.example")]), None).is_ok());
        assert!(same_origin(&headers(&[("host", "ops.example"), ("origin", "https://evil.example")]), None).is_err());
        assert!(same_origin(&headers(&[("host", "ops.example"), ("origin", "null")]), None).is_err());
        assert!(same_origin(&headers(&[("origin", "http://ops.example")]), Some("ops.example")).is_ok(), "HTTP/2");
        assert!(same_origin(&headers(&[("origin", "http://ops.example")]), None).is_err(), "no host to compare");
        assert!(same_origin(&headers(&[("sec-fetch-site", "same-origin")]), None).is_ok());
        assert!(same_origin(&headers(&[("sec-fetch-site", "none")]), None).is_ok());
        assert!(same_origin(&headers(&[("sec-fetch-site", "same-site")]), None).is_err());
        assert!(same_origin(&headers(&[("sec-fetch-site", "cross-site")]), None).is_err());
    }

    #[test]
    fn levels_are_ordered() {
        assert!(AccessLevel::None < AccessLevel::Read && AccessLevel::Read < AccessLevel::Act);
        assert_eq!(Access::none().level, AccessLevel::None);
        assert_eq!(Access::act("jan"), Access { level: AccessLevel::Act, actor: "jan".into() });
    }
}
