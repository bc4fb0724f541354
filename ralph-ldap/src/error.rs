//! The crate's error type and how it maps onto the auth chain's [`AuthError`].

use ralph_core::{AuthError, StoreError};

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong talking to the directory. Never holds a password: bind errors carry the
/// server's result code and text only.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration is unusable.
    #[error("LDAP configuration: {0}")]
    Config(String),
    /// No server URI could be connected to (and bound, for the service account).
    #[error("no LDAP server reachable (tried {tried})")]
    Unreachable {
        /// The URIs tried, in order.
        tried: String,
        /// The last failure.
        #[source]
        source: Box<Error>,
    },
    /// Connecting to one server failed (TCP, TLS or StartTLS).
    #[error("connecting to {uri} failed")]
    Connect {
        /// The URI.
        uri: String,
        /// What failed.
        #[source]
        source: Box<ldap3::LdapError>,
    },
    /// An operation did not finish within the operation timeout.
    #[error("LDAP {op} timed out")]
    Timeout {
        /// The operation.
        op: &'static str,
    },
    /// The connection broke during an operation.
    #[error("LDAP connection lost during {op}")]
    ConnectionLost {
        /// The operation.
        op: &'static str,
        /// The transport error.
        #[source]
        source: Box<ldap3::LdapError>,
    },
    /// The server answered an operation with an error result.
    #[error("LDAP {op} failed: result code {rc} ({text})")]
    Result {
        /// The operation.
        op: &'static str,
        /// The LDAP result code.
        rc: u32,
        /// The server's diagnostic text.
        text: String,
    },
    /// The service account's bind was refused.
    #[error("service account bind refused: result code {rc}")]
    ServiceBind {
        /// The LDAP result code (49: wrong DN or password).
        rc: u32,
    },
    /// The server sent something this crate cannot use (a malformed entry, a bad DN).
    #[error("malformed LDAP response: {0}")]
    Protocol(String),
    /// Reading or writing the user store failed.
    #[error("user store failed")]
    Store(#[from] StoreError),
}

impl Error {
    /// True when the directory could not be reached or did not answer in time, so retrying
    /// later (or another backend) may work.
    #[must_use]
    pub fn is_unavailable(&self) -> bool {
        match self {
            Self::Unreachable { .. } | Self::Connect { .. } | Self::Timeout { .. } | Self::ConnectionLost { .. } => {
                true
            }
            Self::Result { rc, .. } => matches!(rc, 51 | 52),
            _ => false,
        }
    }

    /// Classifies a transport-level ldap3 error from operation `op`.
    pub(crate) fn from_ldap(op: &'static str, error: ldap3::LdapError) -> Self {
        match error {
            ldap3::LdapError::Timeout { .. } => Self::Timeout { op },
            ldap3::LdapError::LdapResult { result } => Self::Result { op, rc: result.rc, text: result.text },
            other => Self::ConnectionLost { op, source: Box::new(other) },
        }
    }
}

impl From<Error> for AuthError {
    fn from(error: Error) -> Self {
        match error {
            Error::Config(msg) => Self::Config(msg),
            Error::Store(e) => Self::Store(e),
            e if e.is_unavailable() => Self::Unavailable(Box::new(e)),
            e => Self::Backend(e.to_string()),
        }
    }
}
