//! MAC addresses: parsing of the common notations and one normalised form.

use std::fmt;
use std::str::FromStr;

use crate::ValidationError;

/// A 48-bit MAC address.
///
/// Accepts `AA:BB:CC:DD:EE:FF`, `aa-bb-cc-dd-ee-ff`, Cisco's `aabb.ccdd.eeff` and bare
/// `aabbccddeeff`, in any case; always shown as upper-case colon-separated pairs, the form Ralph
/// stores, so two notations of one address compare equal.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MacAddress([u8; 6]);

impl MacAddress {
    /// Wraps raw octets.
    #[must_use]
    pub const fn from_octets(octets: [u8; 6]) -> Self {
        Self(octets)
    }

    /// The six octets.
    #[must_use]
    pub const fn octets(&self) -> [u8; 6] {
        self.0
    }

    /// Parses any accepted notation.
    ///
    /// # Errors
    /// [`ValidationError::Mac`] when the text is none of the accepted notations.
    pub fn parse(input: &str) -> Result<Self, ValidationError> {
        let refuse = || ValidationError::Mac { input: input.to_owned() };
        let text = input.trim();
        let digits: String = match text.len() {
            // aa:bb:cc:dd:ee:ff or aa-bb-cc-dd-ee-ff, one separator kind throughout
            17 => {
                let sep = text.as_bytes()[2];
                if sep != b':' && sep != b'-' {
                    return Err(refuse());
                }
                let groups: Vec<&str> = text.split(sep as char).collect();
                if groups.len() != 6 || groups.iter().any(|g| g.len() != 2) {
                    return Err(refuse());
                }
                groups.concat()
            }
            // aabb.ccdd.eeff
            14 => {
                let groups: Vec<&str> = text.split('.').collect();
                if groups.len() != 3 || groups.iter().any(|g| g.len() != 4) {
                    return Err(refuse());
                }
                groups.concat()
            }
            12 => text.to_owned(),
            _ => return Err(refuse()),
        };
        if digits.len() != 12 || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(refuse());
        }
        let mut octets = [0u8; 6];
        for (i, octet) in octets.iter_mut().enumerate() {
            *octet = u8::from_str_radix(&digits[2 * i..2 * i + 2], 16).map_err(|_| refuse())?;
        }
        Ok(Self(octets))
    }
}

impl fmt::Display for MacAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02X}:{b:02X}:{c:02X}:{d:02X}:{e:02X}:{g:02X}")
    }
}

impl fmt::Debug for MacAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MacAddress({self})")
    }
}

impl FromStr for MacAddress {
    type Err = ValidationError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

crate::text::serde_as_validated_str!(MacAddress);

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn notations_normalise_to_one_form() {
        let expected = "AA:BB:CC:0D:0E:FF";
        for input in ["aa:bb:cc:0d:0e:ff", "AA-BB-CC-0D-0E-FF", "aabb.cc0d.0eff", "AABBCC0D0EFF", " aa:bb:cc:0d:0e:ff "]
        {
            assert_eq!(MacAddress::parse(input).expect(input).to_string(), expected);
        }
    }

    #[test]
    fn refuses_malformed() {
        for input in [
            "",
            "aa:bb:cc:dd:ee",
            "aa:bb:cc:dd:ee:fg",
            "aa:bb-cc:dd:ee:ff",
            "aabb.ccdd.eef",
            "a:bb:cc:dd:ee:fff",
            "+a:bb:cc:dd:ee:ff",
            "aa:bb:cc:dd:ee:ff:00",
        ] {
            assert!(MacAddress::parse(input).is_err(), "{input:?} accepted");
        }
    }

    proptest! {
        #[test]
        fn every_notation_round_trips(octets in any::<[u8; 6]>()) {
            let mac = MacAddress::from_octets(octets);
            let colon = mac.to_string();
            let dash = colon.replace(':', "-").to_lowercase();
            let bare = colon.replace(':', "");
            let cisco = format!("{}.{}.{}", &bare[0..4], &bare[4..8], &bare[8..12]).to_lowercase();
            for text in [colon, dash, bare, cisco] {
                prop_assert_eq!(MacAddress::parse(&text).expect("valid"), mac);
            }
        }

        #[test]
        fn parse_never_panics(input in "\\PC{0,20}") {
            let _ = MacAddress::parse(&input);
        }
    }
}
