//! ISO 3166-1 alpha-2 country codes, validated against the `celes` country table.

use std::fmt;
use std::str::FromStr;

use crate::ValidationError;

/// An ISO 3166-1 alpha-2 country code such as `PL` or `US`.
///
/// Parsing is case-insensitive and ignores surrounding whitespace; the code is always held and
/// shown in upper case. Only officially assigned codes are accepted (`XX`, `UK` are refused).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CountryCode(&'static str);

impl CountryCode {
    /// Parses a country code, case-insensitively.
    ///
    /// # Errors
    /// [`ValidationError::Country`] when the text is not an assigned alpha-2 code.
    pub fn parse(input: &str) -> Result<Self, ValidationError> {
        let trimmed = input.trim();
        let refuse = || ValidationError::Country { input: input.to_owned() };
        if trimmed.len() != 2 || !trimmed.bytes().all(|b| b.is_ascii_alphabetic()) {
            return Err(refuse());
        }
        let country = celes::Country::from_alpha2(trimmed).map_err(|_| refuse())?;
        Ok(Self(country.alpha2))
    }

    /// Parses a country code the lenient way: empty or invalid input is `None`, logged at debug.
    ///
    /// This is what profile attribute mapping uses: a bad country never blocks a login.
    #[must_use]
    pub fn parse_lenient(input: &str) -> Option<Self> {
        if input.trim().is_empty() {
            return None;
        }
        match Self::parse(input) {
            Ok(code) => Some(code),
            Err(error) => {
                tracing::debug!(target: "ralph::model", %error, "ignoring invalid country code");
                None
            }
        }
    }

    /// The upper-case two-letter code.
    #[must_use]
    pub const fn as_str(&self) -> &'static str {
        self.0
    }

    /// The country's English name, e.g. `Poland`.
    #[must_use]
    pub fn name(&self) -> &'static str {
        celes::Country::from_alpha2(self.0).map_or(self.0, |c| c.long_name)
    }
}

impl fmt::Debug for CountryCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CountryCode({})", self.0)
    }
}

impl fmt::Display for CountryCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl FromStr for CountryCode {
    type Err = ValidationError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

crate::text::serde_as_validated_str!(CountryCode);

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accepts_assigned_codes_in_any_case() {
        for (input, code) in [("pl", "PL"), ("PL", "PL"), (" us ", "US"), ("gB", "GB"), ("de", "DE")] {
            assert_eq!(CountryCode::parse(input).map(|c| c.as_str()), Ok(code));
        }
        assert_eq!(CountryCode::parse("pl").map(|c| c.name()), Ok("Poland"));
    }

    #[test]
    fn refuses_unassigned_and_malformed() {
        for input in ["", "X", "XX", "UK", "POL", "P1", "ąę", "616"] {
            assert!(CountryCode::parse(input).is_err(), "{input:?} accepted");
        }
        assert_eq!(CountryCode::parse_lenient(""), None);
        assert_eq!(CountryCode::parse_lenient("zz"), None);
        assert_eq!(CountryCode::parse_lenient("fr").map(|c| c.as_str()), Some("FR"));
    }

    #[test]
    fn serde_round_trip_and_refusal() {
        let code = CountryCode::parse("nl").expect("valid");
        let json = serde_json::to_string(&code).expect("serialize");
        assert_eq!(json, "\"NL\"");
        assert_eq!(serde_json::from_str::<CountryCode>(&json).expect("deserialize"), code);
        assert!(serde_json::from_str::<CountryCode>("\"QQ\"").is_err());
    }

    proptest! {
        #[test]
        fn parse_is_case_insensitive_and_canonical(a in "[A-Za-z]", b in "[A-Za-z]") {
            let input = format!("{a}{b}");
            let upper = CountryCode::parse(&input.to_uppercase()).ok();
            let lower = CountryCode::parse(&input.to_lowercase()).ok();
            prop_assert_eq!(&upper, &lower);
            if let Some(code) = upper {
                prop_assert_eq!(code.as_str(), input.to_uppercase());
            }
        }

        #[test]
        fn never_accepts_other_shapes(input in "\\PC{0,6}") {
            prop_assume!(input.trim().len() != 2);
            prop_assert!(CountryCode::parse(&input).is_err());
        }
    }
}
