//! The ordered chain of backends with Django's semantics and an explicit error policy.

use std::sync::Arc;

use tracing::{Instrument, debug, info, info_span, warn};

use super::{AuthBackend, AuthError, AuthOutcome, Credentials, DenyReason, Identity, TRACE_TARGET};

/// What the chain does when a backend returns an error (its server is down, say).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ErrorPolicy {
    /// Go on to the next backend, so a local admin can still log in while LDAP is down. Users
    /// owned by LDAP hold no usable local password, so this cannot let them in by the back door.
    #[default]
    Continue,
    /// Stop and report the error.
    Stop,
}

/// A successful login: which backend accepted it and who it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Login {
    /// The name of the backend that accepted the credentials.
    pub backend: String,
    /// The identity it resolved.
    pub identity: Identity,
}

/// Why the chain refused a login.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoginError {
    /// No backend accepted the username and password.
    #[error("invalid username or password")]
    InvalidCredentials,
    /// A backend recognised the user and refused them.
    #[error("login denied by {backend}: {reason}")]
    Denied {
        /// The backend that refused.
        backend: String,
        /// Why.
        reason: DenyReason,
    },
    /// A backend failed and no later backend accepted the login; the user may exist there.
    #[error("authentication backend {backend} failed")]
    Unavailable {
        /// The first backend that failed.
        backend: String,
        /// Its error.
        #[source]
        source: AuthError,
    },
}

/// Backends tried in order: the first that authenticates wins, a denial stops the chain,
/// "not handled" moves on, and an error follows the [`ErrorPolicy`].
#[derive(Clone, Default)]
pub struct AuthChain {
    backends: Vec<Arc<dyn AuthBackend>>,
    policy: ErrorPolicy,
}

impl std::fmt::Debug for AuthChain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.backends.iter().map(|b| b.name()).collect();
        f.debug_struct("AuthChain").field("backends", &names).field("policy", &self.policy).finish()
    }
}

impl AuthChain {
    /// An empty chain; every login fails until backends are added.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a backend.
    #[must_use]
    pub fn with(mut self, backend: Arc<dyn AuthBackend>) -> Self {
        self.backends.push(backend);
        self
    }

    /// Sets what happens when a backend errors.
    #[must_use]
    pub fn on_error(mut self, policy: ErrorPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// The backends' names, in order.
    #[must_use]
    pub fn backend_names(&self) -> Vec<&str> {
        self.backends.iter().map(|b| b.name()).collect()
    }

    /// Tries the backends in order.
    ///
    /// # Errors
    /// [`LoginError`] saying whether the credentials were wrong, the user was refused, or a
    /// backend that may own the user was unavailable.
    pub async fn authenticate(&self, credentials: &Credentials) -> Result<Login, LoginError> {
        let span = info_span!(target: TRACE_TARGET, "login", username = %credentials.username);
        self.run(credentials).instrument(span).await
    }

    async fn run(&self, credentials: &Credentials) -> Result<Login, LoginError> {
        let mut first_error: Option<(String, AuthError)> = None;
        for backend in &self.backends {
            let name = backend.name();
            match backend.authenticate(credentials).await {
                Ok(AuthOutcome::Authenticated(identity)) => {
                    info!(target: TRACE_TARGET, backend = name, "login succeeded");
                    return Ok(Login { backend: name.to_owned(), identity });
                }
                Ok(AuthOutcome::Denied(reason)) => {
                    info!(target: TRACE_TARGET, backend = name, %reason, "login denied");
                    return Err(LoginError::Denied { backend: name.to_owned(), reason });
                }
                Ok(AuthOutcome::NotHandled) => {
                    debug!(target: TRACE_TARGET, backend = name, "not handled, trying next backend");
                }
                Err(error) => {
                    warn!(target: TRACE_TARGET, backend = name, error = %error, "authentication backend failed");
                    if self.policy == ErrorPolicy::Stop {
                        return Err(LoginError::Unavailable { backend: name.to_owned(), source: error });
                    }
                    first_error.get_or_insert((name.to_owned(), error));
                }
            }
        }
        if let Some((backend, source)) = first_error {
            return Err(LoginError::Unavailable { backend, source });
        }
        info!(target: TRACE_TARGET, "login failed: invalid credentials");
        Err(LoginError::InvalidCredentials)
    }
}
