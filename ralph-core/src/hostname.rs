//! RFC 1123 host names.

use std::fmt;
use std::str::FromStr;

use crate::ValidationError;

/// A host name that follows RFC 1123: dot-separated labels of ASCII letters, digits and
/// hyphens, each 1–63 characters, not starting or ending with a hyphen, 253 characters at most.
///
/// A single trailing dot (a fully qualified name) is accepted and dropped. Names are
/// case-insensitive in DNS, so they are held in lower case.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Hostname(String);

impl Hostname {
    /// Longest accepted name, without the trailing dot.
    pub const MAX_LEN: usize = 253;

    /// Validates and normalises a host name.
    ///
    /// # Errors
    /// [`ValidationError::Hostname`] naming the rule that was broken.
    pub fn parse(input: &str) -> Result<Self, ValidationError> {
        let refuse = |reason| ValidationError::Hostname { input: input.to_owned(), reason };
        let name = input.strip_suffix('.').unwrap_or(input);
        if name.is_empty() {
            return Err(refuse("empty"));
        }
        if name.len() > Self::MAX_LEN {
            return Err(refuse("longer than 253 characters"));
        }
        for label in name.split('.') {
            if label.is_empty() {
                return Err(refuse("empty label"));
            }
            if label.len() > 63 {
                return Err(refuse("label longer than 63 characters"));
            }
            if !label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
                return Err(refuse("only letters, digits, hyphens and dots are allowed"));
            }
            if label.starts_with('-') || label.ends_with('-') {
                return Err(refuse("label starts or ends with a hyphen"));
            }
        }
        Ok(Self(name.to_ascii_lowercase()))
    }

    /// The normalised name.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Hostname {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hostname({})", self.0)
    }
}

impl fmt::Display for Hostname {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for Hostname {
    type Err = ValidationError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl AsRef<str> for Hostname {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

crate::text::serde_as_validated_str!(Hostname);

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accepts_rfc1123_names() {
        for name in ["a", "s1000.dc1.local", "3com", "xn--zazl-gra.pl", "web-01.example.com."] {
            assert!(Hostname::parse(name).is_ok(), "{name} refused");
        }
        assert_eq!(Hostname::parse("Web-01.Example.COM.").expect("valid").as_str(), "web-01.example.com");
    }

    #[test]
    fn refuses_broken_names() {
        let long_label = "a".repeat(64);
        let long_name = ["abcdefghi"; 26].join(".");
        for name in ["", ".", "a..b", "-a", "a-", "a_b", "zażółć", "a b", &long_label, &long_name] {
            assert!(Hostname::parse(name).is_err(), "{name:?} accepted");
        }
    }

    fn label() -> impl Strategy<Value = String> {
        "[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
    }

    proptest! {
        #[test]
        fn generated_valid_names_round_trip(labels in prop::collection::vec(label(), 1..5)) {
            let name = labels.join(".");
            prop_assume!(name.len() <= Hostname::MAX_LEN);
            let parsed = Hostname::parse(&name).expect("valid by construction");
            prop_assert_eq!(parsed.as_str(), name.as_str());
            prop_assert_eq!(Hostname::parse(&name.to_uppercase()).expect("valid"), parsed);
        }

        #[test]
        fn any_forbidden_byte_is_refused(prefix in label(), bad in "[^a-zA-Z0-9.\\-]", suffix in label()) {
            let name = format!("{prefix}{bad}{suffix}");
            prop_assert!(Hostname::parse(&name).is_err());
        }

        #[test]
        fn parse_never_panics(input in "\\PC{0,300}") {
            let _ = Hostname::parse(&input);
        }
    }
}
