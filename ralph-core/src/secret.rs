//! A string secret whose `Debug` and `Display` are redacted and which is zeroized on drop.

use std::fmt;

use serde::{Deserialize, Deserializer};
use zeroize::{Zeroize, ZeroizeOnDrop};

/// A secret string: a password, a bind password, an SNMP community.
///
/// It has no `Display`, its `Debug` prints `Secret([redacted])`, it is not `Serialize` (so it
/// cannot leak through JSON by accident), and its memory is overwritten when dropped. Read it
/// with [`Secret::expose`] at the single place that needs the plain text.
#[derive(Clone, Default, PartialEq, Eq, Zeroize, ZeroizeOnDrop)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    #[must_use]
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The plain text. Call this only where the secret is used, never to log it.
    #[must_use]
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// True for the empty string.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Self(value)
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Self(value.to_owned())
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_is_redacted() {
        let secret = Secret::new("hunter2");
        assert_eq!(format!("{secret:?}"), "Secret([redacted])");
        assert_eq!(format!("{:#?}", Some(&secret)), "Some(\n    Secret([redacted]),\n)");
        assert_eq!(secret.expose(), "hunter2");
    }
}
