//! The local backend: argon2id password hashes kept through a [`UserStore`].

use std::sync::OnceLock;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use async_trait::async_trait;
use rand_core::OsRng;
use tracing::debug;

use super::{AuthBackend, AuthError, AuthOutcome, Credentials, DenyReason, Identity, TRACE_TARGET};
use crate::{Secret, StoreError, UserSource, UserStore, ValidationError};

fn hasher() -> Argon2<'static> {
    // OWASP's argon2id baseline (19 MiB, 2 passes, 1 lane): the argon2 crate's defaults.
    Argon2::new(Algorithm::Argon2id, Version::V0x13, Params::default())
}

/// Hashes a password with argon2id and a random salt into a PHC string.
///
/// # Errors
/// [`AuthError::Backend`] when the hasher fails (it does not for passwords of sane length).
pub fn hash_password(password: &Secret) -> Result<String, AuthError> {
    let salt = SaltString::generate(&mut OsRng);
    hasher()
        .hash_password(password.expose().as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|e| AuthError::Backend(format!("password hashing failed: {e}")))
}

/// Checks a password against a PHC hash in constant time. A malformed hash never matches.
#[must_use]
pub fn verify_password(phc: &str, password: &Secret) -> bool {
    PasswordHash::new(phc).is_ok_and(|hash| hasher().verify_password(password.expose().as_bytes(), &hash).is_ok())
}

/// A hash of a random password, verified against for unknown users so that the time a
/// login takes does not tell whether the account exists.
fn dummy_hash() -> &'static str {
    static DUMMY: OnceLock<String> = OnceLock::new();
    DUMMY.get_or_init(|| {
        let salt = SaltString::generate(&mut OsRng);
        let secret = Secret::new(salt.as_str().to_owned());
        hash_password(&secret).unwrap_or_default()
    })
}

/// Authenticates accounts whose password is stored locally.
///
/// Unknown users, users without a local password (LDAP-owned ones) and wrong passwords are
/// all [`AuthOutcome::NotHandled`], after the same amount of hashing work. A right password on
/// an inactive account is [`DenyReason::Inactive`].
///
/// Argon2 verification takes tens of milliseconds of CPU and runs on the calling task.
#[derive(Debug, Clone)]
pub struct LocalBackend<S> {
    store: S,
}

impl<S: UserStore> LocalBackend<S> {
    /// A backend over `store`.
    pub fn new(store: S) -> Self {
        Self { store }
    }

    /// The store this backend reads.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// Sets a local user's password.
    ///
    /// # Errors
    /// [`AuthError::Store`] wrapping [`StoreError::Invalid`] for an empty password or
    /// [`StoreError::NotFound`] for a missing user; [`AuthError::Config`] for an LDAP-owned user
    /// (their password lives in the directory).
    pub async fn set_password(&self, username: &str, password: &Secret) -> Result<(), AuthError> {
        if password.is_empty() {
            return Err(AuthError::Store(StoreError::invalid("user", ValidationError::Empty { field: "password" })));
        }
        let user = self
            .store
            .get_user(username)
            .await?
            .ok_or_else(|| StoreError::NotFound { entity: "user", key: username.to_owned() })?;
        if user.source == UserSource::Ldap {
            return Err(AuthError::Config(format!("user {username} is owned by LDAP and has no local password")));
        }
        let hash = hash_password(password)?;
        self.store.set_password_hash(username, Some(&hash)).await?;
        Ok(())
    }
}

#[async_trait]
impl<S: UserStore> AuthBackend for LocalBackend<S> {
    fn name(&self) -> &str {
        "local"
    }

    async fn authenticate(&self, credentials: &Credentials) -> Result<AuthOutcome, AuthError> {
        let username = credentials.username.as_str();
        let user = self.store.get_user(username).await?;
        let hash = match &user {
            Some(u) if u.source == UserSource::Local => self.store.password_hash(username).await?,
            _ => None,
        };
        let (Some(user), Some(hash)) = (user, hash) else {
            let _ = verify_password(dummy_hash(), &credentials.password);
            debug!(target: TRACE_TARGET, backend = "local", "no local password for this user");
            return Ok(AuthOutcome::NotHandled);
        };
        // Verify even an empty password so the time taken does not depend on it.
        let matches = verify_password(&hash, &credentials.password);
        if credentials.password.is_empty() || !matches {
            debug!(target: TRACE_TARGET, backend = "local", "wrong password");
            return Ok(AuthOutcome::NotHandled);
        }
        if !user.is_active {
            return Ok(AuthOutcome::Denied(DenyReason::Inactive));
        }
        let groups = self.store.user_groups(username).await?;
        let profile = self.store.get_profile(username).await?;
        Ok(AuthOutcome::Authenticated(Identity { user: user.value, profile, groups }))
    }
}
