//! The crate's error type.

use std::io;

use ralph_core::StoreError;

/// `Result` with [`Error`] by default.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong in discovery. Probe failures against a target are results, not errors:
/// these are the failures of the scan itself (bad input, the store, the kernel refusing us).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A target expression that is not an address, a CIDR or a range.
    #[error("invalid target {input:?}: {reason}")]
    Target {
        /// The text given.
        input: String,
        /// Why it was rejected.
        reason: String,
    },
    /// A network or range too large to sweep address by address (an IPv6 /64, say).
    #[error("target {input:?} holds {size} addresses, more than the limit of {limit}")]
    TooLarge {
        /// The text given.
        input: String,
        /// Addresses it holds (saturating).
        size: u128,
        /// The configured limit.
        limit: u128,
    },
    /// A port list that does not parse.
    #[error("invalid port list {input:?}")]
    Ports {
        /// The text given.
        input: String,
    },
    /// Bad configuration.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A configuration value out of its range (a zero rate, `min` above `max`, a zero timeout).
    #[error("invalid setting {setting} = {value}: {reason}")]
    Setting {
        /// The setting, as `rate.min` or `timeouts.connect`.
        setting: &'static str,
        /// The value given.
        value: String,
        /// What it must be.
        reason: &'static str,
    },
    /// A job payload that is not a scan job.
    #[error("invalid job payload")]
    Payload(#[source] serde_json::Error),
    /// The store failed.
    #[error("store error")]
    Store(#[from] StoreError),
    /// A system call failed where the scan cannot continue (reading limits, netlink).
    #[error("{what} failed")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

impl Error {
    pub(crate) fn setting(setting: &'static str, value: impl std::fmt::Debug, reason: &'static str) -> Self {
        Self::Setting { setting, value: format!("{value:?}"), reason }
    }

    pub(crate) fn target(input: &str, reason: impl Into<String>) -> Self {
        Self::Target { input: input.to_owned(), reason: reason.into() }
    }

    /// Whether the error is about bad input (targets, ports, configuration, payload).
    #[must_use]
    pub fn is_input(&self) -> bool {
        matches!(
            self,
            Self::Target { .. }
                | Self::TooLarge { .. }
                | Self::Ports { .. }
                | Self::Config(_)
                | Self::Setting { .. }
                | Self::Payload(_)
        )
    }
}
