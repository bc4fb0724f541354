//! Placeholder serial numbers and MAC addresses that must never serve as identity evidence.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::{MacAddress, ValidationError};

/// Serials firmware writes when the vendor left the field empty. Compared after
/// [`normalise_serial`], so case and surrounding whitespace do not matter.
const DEFAULT_SERIAL_PLACEHOLDERS: &[&str] = &[
    "To Be Filled By O.E.M.",
    "To Be Filled By OEM",
    "0000000000",
    "0123456789",
    "1234567890",
    "Not Specified",
    "Not Available",
    "Not Applicable",
    "N/A",
    "NA",
    "System Serial Number",
    "Chassis Serial Number",
    "Default string",
    "None",
    "Null",
    "Unknown",
    "Invalid",
    "Serial",
    "SerialNumber",
    "OEM",
    "Empty",
];

/// Prefixes of virtual, container and placeholder interfaces: the same prefix shows up on
/// thousands of unrelated machines, so a match proves nothing about identity.
const DEFAULT_MAC_PREFIXES: &[&str] = &[
    "00:05:69", // VMware
    "00:0C:29", // VMware
    "00:1C:14", // VMware
    "00:50:56", // VMware
    "52:54:00", // QEMU / KVM
    "00:16:3E", // Xen
    "00:15:5D", // Hyper-V
    "08:00:27", // VirtualBox
    "00:1C:42", // Parallels
    "02:42",    // Docker bridges and containers
];

/// Trims a serial number and collapses inner runs of whitespace to one space, keeping case.
/// `None` when nothing is left.
#[must_use]
pub fn normalise_serial(input: &str) -> Option<String> {
    let collapsed = input.split_whitespace().collect::<Vec<_>>().join(" ");
    (!collapsed.is_empty()).then_some(collapsed)
}

/// The comparison key of a serial: normalised and upper-cased (vendors and tools disagree on case).
fn serial_key(input: &str) -> Option<String> {
    normalise_serial(input).map(|s| s.to_uppercase())
}

/// Serial numbers that identify nothing: firmware placeholders, and (by default) serials made
/// of one repeated character such as `000000` or `XXXXXXXX`.
///
/// Case-insensitive and whitespace-trimmed. Empty and whitespace-only serials are always
/// refused.
///
/// ```
/// use ralph_core::reconcile::SerialBlacklist;
///
/// let list = SerialBlacklist::default().with_placeholder("CHANGE-ME");
/// assert!(list.is_placeholder("  to be filled by o.e.m. "));
/// assert!(list.is_placeholder("change-me"));
/// assert!(list.is_placeholder("00000000"));
/// assert_eq!(list.usable(" CZ 1234  XYZ "), Some("CZ 1234 XYZ".to_owned()));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct SerialBlacklist {
    /// Placeholder serials, held in comparison form (normalised, upper case).
    pub placeholders: BTreeSet<String>,
    /// Whether a serial of one repeated character (`0000`, `XXXX`, `----`) is a placeholder.
    pub refuse_repeated_char: bool,
}

impl Default for SerialBlacklist {
    fn default() -> Self {
        Self {
            placeholders: DEFAULT_SERIAL_PLACEHOLDERS.iter().filter_map(|s| serial_key(s)).collect(),
            refuse_repeated_char: true,
        }
    }
}

impl SerialBlacklist {
    /// A blacklist with no placeholders and no repeated-character rule; only blank serials
    /// are refused.
    #[must_use]
    pub fn empty() -> Self {
        Self { placeholders: BTreeSet::new(), refuse_repeated_char: false }
    }

    /// Adds a placeholder (any case, any surrounding whitespace).
    #[must_use]
    pub fn with_placeholder(mut self, serial: &str) -> Self {
        if let Some(key) = serial_key(serial) {
            self.placeholders.insert(key);
        }
        self
    }

    /// Turns the repeated-character rule on or off.
    #[must_use]
    pub fn with_repeated_char_rule(mut self, on: bool) -> Self {
        self.refuse_repeated_char = on;
        self
    }

    /// Whether `serial` identifies nothing (blank, a placeholder, or one repeated character).
    #[must_use]
    pub fn is_placeholder(&self, serial: &str) -> bool {
        let Some(key) = serial_key(serial) else { return true };
        if self.placeholders.contains(&key) {
            return true;
        }
        if self.refuse_repeated_char {
            let mut chars = key.chars();
            if let Some(first) = chars.next() {
                return chars.all(|c| c == first);
            }
        }
        false
    }

    /// The normalised serial (case kept) when it is usable as identity evidence.
    #[must_use]
    pub fn usable(&self, serial: &str) -> Option<String> {
        if self.is_placeholder(serial) { None } else { normalise_serial(serial) }
    }

    /// The comparison key (normalised, upper case) of a usable serial: two serials are the
    /// same device's when their keys are equal.
    #[must_use]
    pub fn key(&self, serial: &str) -> Option<String> {
        if self.is_placeholder(serial) { None } else { serial_key(serial) }
    }
}

/// The leading octets of a MAC address (1 to 6 of them), written like a MAC address:
/// `00:50:56`, `02-42`, `0050.56` is not accepted (Cisco dots need whole groups).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MacPrefix(Vec<u8>);

impl MacPrefix {
    /// Parses `aa:bb:cc` or `aa-bb-cc` with 1 to 6 octets.
    ///
    /// # Errors
    /// [`ValidationError::Mac`] when the text is not such a prefix.
    pub fn parse(input: &str) -> Result<Self, ValidationError> {
        let refuse = || ValidationError::Mac { input: input.to_owned() };
        let text = input.trim();
        let sep = if text.contains('-') { '-' } else { ':' };
        let octets = text
            .split(sep)
            .map(|g| {
                if g.len() == 2 && g.bytes().all(|b| b.is_ascii_hexdigit()) {
                    u8::from_str_radix(g, 16).map_err(|_| refuse())
                } else {
                    Err(refuse())
                }
            })
            .collect::<Result<Vec<u8>, _>>()?;
        if octets.is_empty() || octets.len() > 6 {
            return Err(refuse());
        }
        Ok(Self(octets))
    }

    /// Whether `mac` starts with this prefix.
    #[must_use]
    pub fn matches(&self, mac: MacAddress) -> bool {
        mac.octets().starts_with(&self.0)
    }
}

impl fmt::Display for MacPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.iter().map(|o| format!("{o:02X}")).collect();
        f.write_str(&parts.join(":"))
    }
}

impl fmt::Debug for MacPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MacPrefix({self})")
    }
}

impl FromStr for MacPrefix {
    type Err = ValidationError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

crate::text::serde_as_validated_str!(MacPrefix);

/// MAC addresses that identify nothing: the all-zero and broadcast addresses, virtual and
/// container prefixes, and (by default) locally administered and multicast addresses.
///
/// ```
/// use ralph_core::MacAddress;
/// use ralph_core::reconcile::MacBlacklist;
///
/// let list = MacBlacklist::default();
/// let mac = |s: &str| MacAddress::parse(s).unwrap();
/// assert!(list.usable(mac("a0:36:9f:12:34:56")));
/// assert!(!list.usable(mac("00:50:56:12:34:56"))); // VMware
/// assert!(!list.usable(mac("02:42:ac:11:00:02"))); // docker, locally administered too
/// assert!(!list.usable(mac("01:00:5e:00:00:01"))); // multicast
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct MacBlacklist {
    /// Whole addresses refused.
    pub addresses: BTreeSet<MacAddress>,
    /// Prefixes refused.
    pub prefixes: BTreeSet<MacPrefix>,
    /// Refuse addresses with the locally administered bit (0x02 of the first octet) set:
    /// software picks those, so they move between machines.
    pub ignore_locally_administered: bool,
    /// Refuse group (multicast and broadcast) addresses: bit 0x01 of the first octet.
    pub ignore_multicast: bool,
}

impl Default for MacBlacklist {
    fn default() -> Self {
        Self {
            addresses: [MacAddress::from_octets([0; 6]), MacAddress::from_octets([0xff; 6])].into_iter().collect(),
            prefixes: DEFAULT_MAC_PREFIXES.iter().filter_map(|p| MacPrefix::parse(p).ok()).collect(),
            ignore_locally_administered: true,
            ignore_multicast: true,
        }
    }
}

impl MacBlacklist {
    /// A blacklist refusing only the all-zero and broadcast addresses.
    #[must_use]
    pub fn minimal() -> Self {
        Self {
            prefixes: BTreeSet::new(),
            ignore_locally_administered: false,
            ignore_multicast: false,
            ..Self::default()
        }
    }

    /// Adds a refused address.
    #[must_use]
    pub fn with_address(mut self, mac: MacAddress) -> Self {
        self.addresses.insert(mac);
        self
    }

    /// Adds a refused prefix.
    #[must_use]
    pub fn with_prefix(mut self, prefix: MacPrefix) -> Self {
        self.prefixes.insert(prefix);
        self
    }

    /// Turns the locally-administered rule on or off.
    #[must_use]
    pub fn with_locally_administered_ignored(mut self, on: bool) -> Self {
        self.ignore_locally_administered = on;
        self
    }

    /// Turns the multicast rule on or off.
    #[must_use]
    pub fn with_multicast_ignored(mut self, on: bool) -> Self {
        self.ignore_multicast = on;
        self
    }

    /// Whether `mac` may serve as identity evidence.
    #[must_use]
    pub fn usable(&self, mac: MacAddress) -> bool {
        let first = mac.octets()[0];
        !(self.addresses.contains(&mac)
            || (self.ignore_locally_administered && first & 0x02 != 0)
            || (self.ignore_multicast && first & 0x01 != 0)
            || self.prefixes.iter().any(|p| p.matches(mac)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mac(s: &str) -> MacAddress {
        MacAddress::parse(s).expect("test MAC")
    }

    #[test]
    fn placeholder_serials_are_refused_in_any_case_and_spacing() {
        let list = SerialBlacklist::default();
        for s in [
            "To Be Filled By O.E.M.",
            "  to be filled by o.e.m.  ",
            "TO BE FILLED BY O.E.M.",
            "0000000000",
            "000000",
            "XXXXXXXX",
            "Not Specified",
            "not  specified",
            "System Serial Number",
            "Default string",
            "default STRING",
            "None",
            "",
            "   ",
            "\t\n",
        ] {
            assert!(list.is_placeholder(s), "{s:?} accepted");
            assert_eq!(list.usable(s), None, "{s:?}");
            assert_eq!(list.key(s), None, "{s:?}");
        }
    }

    #[test]
    fn real_serials_are_normalised_not_refused() {
        let list = SerialBlacklist::default();
        assert_eq!(list.usable("  CZ3  1234\tXYZ "), Some("CZ3 1234 XYZ".to_owned()));
        assert_eq!(list.key("cz3 1234 xyz"), Some("CZ3 1234 XYZ".to_owned()));
        assert_eq!(list.key("CZ3 1234 XYZ"), list.key(" cz3 1234  XYZ"));
        assert!(!list.is_placeholder("0000000001"));
    }

    #[test]
    fn serial_blacklist_is_configurable() {
        let list = SerialBlacklist::empty().with_placeholder(" chassis-x ");
        assert!(list.is_placeholder("CHASSIS-X"));
        assert!(!list.is_placeholder("0000000000"), "the empty list has no defaults");
        assert!(list.is_placeholder(" "), "blank is always refused");
        let list = SerialBlacklist::default().with_repeated_char_rule(false);
        assert!(!list.is_placeholder("XXXXXXX"));
        assert!(list.is_placeholder("0000000000"), "still listed");
    }

    #[test]
    fn placeholder_and_virtual_macs_are_refused() {
        let list = MacBlacklist::default();
        for m in [
            "00:00:00:00:00:00",
            "ff:ff:ff:ff:ff:ff",
            "00:05:69:00:00:01",
            "00:0c:29:ab:cd:ef",
            "00:50:56:ab:cd:ef",
            "52:54:00:12:34:56",
            "02:42:ac:11:00:02",
            "06:00:00:00:00:01", // locally administered
            "01:00:5e:7f:00:01", // IPv4 multicast
            "33:33:00:00:00:01", // IPv6 multicast
        ] {
            assert!(!list.usable(mac(m)), "{m} accepted");
        }
        for m in ["a0:36:9f:12:34:56", "3c:ec:ef:00:11:22", "00:25:90:aa:bb:cc"] {
            assert!(list.usable(mac(m)), "{m} refused");
        }
    }

    #[test]
    fn mac_blacklist_is_configurable() {
        let list = MacBlacklist::minimal();
        assert!(list.usable(mac("00:50:56:ab:cd:ef")));
        assert!(list.usable(mac("02:00:00:00:00:01")));
        assert!(!list.usable(mac("00:00:00:00:00:00")));
        let list =
            list.with_prefix(MacPrefix::parse("a0-36-9f").expect("prefix")).with_address(mac("3c:ec:ef:00:11:22"));
        assert!(!list.usable(mac("a0:36:9f:12:34:56")));
        assert!(!list.usable(mac("3c:ec:ef:00:11:22")));
        let list = MacBlacklist::minimal().with_locally_administered_ignored(true).with_multicast_ignored(true);
        assert!(!list.usable(mac("02:00:00:00:00:01")));
        assert!(!list.usable(mac("01:00:00:00:00:01")));
    }

    #[test]
    fn mac_prefixes_parse_and_refuse_garbage() {
        assert_eq!(MacPrefix::parse("02:42").expect("prefix").to_string(), "02:42");
        assert_eq!(MacPrefix::parse(" 00-0c-29 ").expect("prefix").to_string(), "00:0C:29");
        for bad in ["", "0", "00:0c:2", "00:0c:29:00:00:00:00", "zz", "00::0c", "0:0c"] {
            assert!(MacPrefix::parse(bad).is_err(), "{bad:?} accepted");
        }
    }
}
