//! What a host app can plug into a login: a username normaliser, a "populate user" callback
//! that fills extra fields from the directory entry, and an error callback (django-auth-ldap's
//! `ldap_to_django_username` overrides, `populate_user` signal and `ldap_error` signal).

use std::fmt;
use std::sync::Arc;

use ralph_core::{Profile, User};
use serde::Deserialize;

use crate::Error;
use crate::conn::Entry;

/// The built-in login-name normalisation, from the TOML table `[normalize_username]`. Applied
/// in this order, before the name is looked up; a name left empty is not looked up at all.
/// The stored username stays the directory's spelling whatever is typed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct NormalizeUsername {
    /// Strip leading and trailing whitespace (`" alice "` → `alice`).
    #[serde(default)]
    pub trim: bool,
    /// Drop a Windows domain prefix (`CORP\alice` → `alice`).
    #[serde(default)]
    pub strip_domain: bool,
    /// Lower-case the name (`Alice` → `alice`).
    #[serde(default)]
    pub lowercase: bool,
}

impl NormalizeUsername {
    /// Every normalisation on: trim, strip the domain, lower-case.
    #[must_use]
    pub fn all() -> Self {
        Self { trim: true, strip_domain: true, lowercase: true }
    }

    /// Whether nothing is done.
    #[must_use]
    pub fn is_off(&self) -> bool {
        *self == Self::default()
    }

    /// Applies the normalisations to a typed login name.
    #[must_use]
    pub fn apply(&self, login: &str) -> String {
        let mut name = if self.trim { login.trim() } else { login };
        if self.strip_domain
            && let Some((_, user)) = name.rsplit_once('\\')
        {
            name = user;
        }
        if self.lowercase { name.to_lowercase() } else { name.to_owned() }
    }
}

/// Where an error reported to [`Hooks::on_error`] happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Operation {
    /// A login ([`AuthBackend::authenticate`](ralph_core::AuthBackend::authenticate)).
    Authenticate,
    /// [`LdapBackend::populate_user`](crate::LdapBackend::populate_user).
    PopulateUser,
}

type NormalizeFn = dyn Fn(&str) -> String + Send + Sync;
type PopulateFn = dyn Fn(&Entry, &mut User, &mut Option<Profile>) + Send + Sync;
type ErrorFn = dyn Fn(Operation, &Error) + Send + Sync;

/// Callbacks a host app plugs into the backend with
/// [`LdapBackend::with_hooks`](crate::LdapBackend::with_hooks). Each is optional.
///
/// ```
/// use ralph_ldap::Hooks;
/// let hooks = Hooks::new()
///     .normalize_username(|login| login.trim_start_matches("corp-").to_owned())
///     .populate(["title"], |entry, user, _profile| {
///         if entry.first("title") == Some("Contractor") {
///             user.is_staff = false;
///         }
///     })
///     .on_error(|op, error| eprintln!("LDAP {op:?} failed: {error}"));
/// ```
#[derive(Clone, Default)]
#[must_use]
pub struct Hooks {
    pub(crate) normalize: Option<Arc<NormalizeFn>>,
    pub(crate) populate: Option<Arc<PopulateFn>>,
    pub(crate) populate_attrs: Vec<String>,
    pub(crate) on_error: Option<Arc<ErrorFn>>,
}

impl fmt::Debug for Hooks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hooks")
            .field("normalize", &self.normalize.is_some())
            .field("populate", &self.populate.is_some())
            .field("populate_attrs", &self.populate_attrs)
            .field("on_error", &self.on_error.is_some())
            .finish()
    }
}

impl Hooks {
    /// No hooks.
    pub fn new() -> Self {
        Self::default()
    }

    /// Rewrites the typed login name before it is looked up, after the configured
    /// [`NormalizeUsername`]. An empty result is not looked up (the chain moves on).
    pub fn normalize_username(mut self, f: impl Fn(&str) -> String + Send + Sync + 'static) -> Self {
        self.normalize = Some(Arc::new(f));
        self
    }

    /// Called with the user's entry, after the user and profile are mapped and before they are
    /// mirrored, on every login and [`LdapBackend::populate_user`](crate::LdapBackend::populate_user)
    /// (django-auth-ldap's `populate_user` signal). `attrs` are read from the entry on top of
    /// the mapped ones. The username cannot be changed here (it is set back).
    pub fn populate<I, A>(
        mut self,
        attrs: I,
        f: impl Fn(&Entry, &mut User, &mut Option<Profile>) + Send + Sync + 'static,
    ) -> Self
    where
        I: IntoIterator<Item = A>,
        A: Into<String>,
    {
        self.populate_attrs = attrs.into_iter().map(Into::into).collect();
        self.populate = Some(Arc::new(f));
        self
    }

    /// Called with every error a login or a populate call returns (django-auth-ldap's
    /// `ldap_error` signal). Errors never carry a password.
    pub fn on_error(mut self, f: impl Fn(Operation, &Error) + Send + Sync + 'static) -> Self {
        self.on_error = Some(Arc::new(f));
        self
    }

    /// The typed login with the configured normalisation and the hook applied.
    pub(crate) fn login_name(&self, config: NormalizeUsername, login: &str) -> String {
        let name = config.apply(login);
        match &self.normalize {
            Some(f) => f(&name),
            None => name,
        }
    }

    pub(crate) fn report(&self, op: Operation, error: &Error) {
        if let Some(f) = &self.on_error {
            f(op, error);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalisation_steps() {
        assert_eq!(NormalizeUsername::all().apply("  CORP\\Alice "), "alice");
        assert_eq!(NormalizeUsername::default().apply(" CORP\\Alice"), " CORP\\Alice");
        let trim = NormalizeUsername { trim: true, ..NormalizeUsername::default() };
        assert_eq!(trim.apply(" A\\B "), "A\\B");
        let hooks = Hooks::new().normalize_username(|n| n.replace('.', ""));
        assert_eq!(hooks.login_name(NormalizeUsername::all(), " CORP\\A.lice"), "alice");
    }
}
