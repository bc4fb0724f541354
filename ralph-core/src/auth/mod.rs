//! Authentication: the [`AuthBackend`] trait, the [`AuthChain`] that tries backends in order,
//! and the [`LocalBackend`] for accounts with a local password.
//!
//! Events are emitted under the stable target `ralph::auth`; usernames appear in them,
//! passwords never do (they live in [`Secret`], whose `Debug` is redacted).

mod chain;
mod local;

use async_trait::async_trait;
use serde::Serialize;

use crate::{Group, Profile, Secret, StoreError, User};

pub use chain::{AuthChain, ErrorPolicy, Login, LoginError};
pub use local::{LocalBackend, hash_password, verify_password};

/// The tracing target of every auth event.
pub const TRACE_TARGET: &str = "ralph::auth";

/// A username and password to check. `Debug` shows the username only.
#[derive(Clone, Debug)]
pub struct Credentials {
    /// The login name as typed.
    pub username: String,
    /// The password; redacted in `Debug`, zeroized on drop.
    pub password: Secret,
}

impl Credentials {
    /// Bundles a username and a password.
    #[must_use]
    pub fn new(username: impl Into<String>, password: impl Into<Secret>) -> Self {
        Self { username: username.into(), password: password.into() }
    }
}

/// Who logged in: the account, its profile and groups as the backend resolved them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Identity {
    /// The account, with its flags.
    pub user: User,
    /// The profile, when the backend knows one.
    pub profile: Option<Profile>,
    /// The groups (roles).
    pub groups: Vec<Group>,
}

/// Why a backend refused a login that it recognised. Stops the chain.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize)]
#[non_exhaustive]
#[serde(tag = "reason", content = "detail", rename_all = "snake_case")]
pub enum DenyReason {
    /// The account is not active (for LDAP users: not in the `active` group).
    #[error("account is inactive")]
    Inactive,
    /// The user lacks a required group.
    #[error("not a member of the required group")]
    MissingRequiredGroup,
    /// The user is in a group that is refused.
    #[error("member of a denied group")]
    DeniedGroup,
    /// The account is not in the local store, and the backend may not create accounts
    /// (django-auth-ldap's `NO_NEW_USERS`).
    #[error("no local account for this user, and new accounts are not created")]
    NotProvisioned,
    /// The directory account is disabled (Active Directory `userAccountControl` 0x2).
    #[error("account is disabled")]
    AccountDisabled,
    /// The directory account is locked out (AD `lockoutTime`, `userAccountControl` 0x10;
    /// OpenLDAP `pwdAccountLockedTime`).
    #[error("account is locked out")]
    AccountLocked,
    /// The directory account has expired (AD `accountExpires`).
    #[error("account has expired")]
    AccountExpired,
    /// The password has expired or must be changed (AD `userAccountControl` 0x800000,
    /// `pwdLastSet` = 0).
    #[error("password has expired")]
    PasswordExpired,
    /// Any other policy, in words.
    #[error("{0}")]
    Policy(String),
}

/// What one backend made of a login attempt.
// Returned once per login and moved straight into the result: boxing would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthOutcome {
    /// Password checked; here is who it is.
    Authenticated(Identity),
    /// Not this backend's user, or a wrong password: let the next backend try.
    NotHandled,
    /// This backend's user, refused by policy: stop the chain.
    Denied(DenyReason),
}

/// A backend that could not decide: its server is down, its configuration is wrong, its store
/// failed. Never carries a password.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// The directory or service behind the backend could not be reached in time.
    #[error("authentication service unavailable")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync + 'static>),
    /// The backend's configuration is unusable.
    #[error("authentication backend misconfigured: {0}")]
    Config(String),
    /// Reading or writing the user store failed.
    #[error("user store failed")]
    Store(#[from] StoreError),
    /// The backend got an answer it cannot use (a protocol error, a malformed entry).
    #[error("authentication backend failed: {0}")]
    Backend(String),
}

impl AuthError {
    /// True when retrying later may work (the service was unreachable).
    #[must_use]
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Self::Unavailable(_))
    }
}

/// A source of truth for logins. Object safe, so chains hold `Arc<dyn AuthBackend>`.
///
/// Return [`AuthOutcome::NotHandled`] for users you do not know and for wrong passwords, so
/// the chain can try the next backend; [`AuthOutcome::Denied`] only when your policy refuses a
/// user whose password was right; `Err` when you could not decide.
#[async_trait]
pub trait AuthBackend: Send + Sync {
    /// A short, stable name for logs and results (`"ldap"`, `"local"`).
    fn name(&self) -> &str;

    /// Checks the credentials.
    async fn authenticate(&self, credentials: &Credentials) -> Result<AuthOutcome, AuthError>;
}
