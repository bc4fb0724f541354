//! A stable checksum of an address's normalised facts, so "changed since the last scan" is one
//! comparison.

use std::fmt;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{Facts, normalise_serial};
use crate::ComponentKind;

/// SHA-256 of a canonical encoding of normalised facts, as 64 lower-case hex digits.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Checksum(pub String);

impl fmt::Display for Checksum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Length-prefixed `tag:len:value` lines: no value can forge a field boundary, and the
/// encoding is ours (not a serde format's), so the checksum survives serializer upgrades.
#[derive(Default)]
struct Canon(String);

impl Canon {
    fn push(&mut self, tag: &str, value: &str) {
        self.0.push_str(tag);
        self.0.push(':');
        self.0.push_str(&value.len().to_string());
        self.0.push(':');
        self.0.push_str(value);
        self.0.push('\n');
    }

    fn opt(&mut self, tag: &str, value: Option<&str>) {
        if let Some(v) = value {
            self.push(tag, v);
        }
    }
}

fn trimmed(value: Option<&str>) -> Option<&str> {
    value.map(str::trim).filter(|v| !v.is_empty())
}

fn component_line(kind: &ComponentKind) -> String {
    let mut c = Canon::default();
    match kind {
        ComponentKind::Ethernet { mac, label, speed_mbps } => {
            c.push("eth", &mac.to_string());
            c.opt("label", trimmed(label.as_deref()));
            c.opt("speed", speed_mbps.map(|s| s.to_string()).as_deref());
        }
        ComponentKind::Processor { index, model, cores } => {
            c.push("cpu", &index.to_string());
            c.opt("model", trimmed(model.as_deref()));
            c.opt("cores", cores.map(|s| s.to_string()).as_deref());
        }
        ComponentKind::Memory { index, size_mib } => {
            c.push("mem", &index.to_string());
            c.push("mib", &size_mib.to_string());
        }
        ComponentKind::Disk { mount_point, size_gib, serial_number } => {
            c.push("disk", mount_point.trim());
            c.push("gib", &size_gib.to_string());
            c.opt("serial", serial_number.as_deref().and_then(normalise_serial).as_deref());
        }
    }
    c.0
}

/// The canonical text of one source's facts, without the volatile observation time.
fn canonical(facts: &Facts) -> String {
    let mut c = Canon::default();
    c.push("source", facts.source.name.trim());
    c.push("priority", &facts.source.priority.to_string());
    c.opt("inventory_id", facts.inventory_id.map(|i| i.to_string()).as_deref());
    c.opt("serial", facts.serial_number.as_deref().and_then(normalise_serial).as_deref());
    let mut macs: Vec<String> = facts.all_macs().iter().map(ToString::to_string).collect();
    macs.sort();
    for mac in &macs {
        c.push("mac", mac);
    }
    c.opt("model", trimmed(facts.model.as_deref()));
    c.opt("manufacturer", trimmed(facts.manufacturer.as_deref()));
    c.opt("type", facts.device_type.map(crate::DeviceType::as_str));
    c.opt("hostname", facts.hostname.as_ref().map(crate::Hostname::as_str));
    c.push("management", if facts.is_management { "1" } else { "0" });
    let mut components: Vec<String> = facts.components.iter().map(component_line).collect();
    components.sort();
    components.dedup();
    for line in &components {
        c.push("component", line);
    }
    for class in &facts.covers {
        c.push("covers", class.as_str());
    }
    let mut software: Vec<String> = facts
        .software
        .iter()
        .map(|s| format!("{}\u{0}{}", s.name.trim(), s.version.as_deref().map_or("", str::trim)))
        .collect();
    software.sort();
    software.dedup();
    for sw in &software {
        c.push("software", sw);
    }
    c.0
}

/// The checksum of everything the sources learnt about `address`, normalised: list order,
/// duplicates, surrounding whitespace, MAC notation and the facts' order do not matter, and
/// the volatile observation time is left out. Facts about other addresses are ignored.
///
/// ```
/// use ralph_core::reconcile::{Facts, Source, facts_checksum};
///
/// let ip = "10.0.0.5".parse()?;
/// let mut a = Facts::new(ip, Source::new("snmp", 10)?, chrono::Utc::now());
/// a.serial_number = Some("CZ3123ABC ".into());
/// let mut b = a.clone();
/// b.observed_at += chrono::Duration::hours(1);
/// b.serial_number = Some(" CZ3123ABC".into());
/// assert_eq!(facts_checksum(ip, &[a.clone()]), facts_checksum(ip, &[b]));
/// let mut c = a.clone();
/// c.serial_number = Some("CZ3123ABD".into());
/// assert_ne!(facts_checksum(ip, &[a]), facts_checksum(ip, &[c]));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[must_use]
pub fn facts_checksum(address: IpAddr, facts: &[Facts]) -> Checksum {
    let mut parts: Vec<String> = facts.iter().filter(|f| f.address == address).map(canonical).collect();
    parts.sort();
    parts.dedup();
    let mut hasher = Sha256::new();
    hasher.update(b"ralph-facts-v1\n");
    hasher.update(address.to_string().as_bytes());
    hasher.update(b"\n");
    for part in &parts {
        hasher.update(part.len().to_string().as_bytes());
        hasher.update(b":");
        hasher.update(part.as_bytes());
    }
    let digest = hasher.finalize();
    Checksum(digest.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MacAddress;
    use crate::reconcile::Source;

    #[test]
    fn the_encoding_is_pinned() {
        // Changing the canonical encoding changes every stored checksum: bump the version tag.
        let ip: IpAddr = "10.0.0.1".parse().expect("ip");
        let at = chrono::DateTime::from_timestamp(0, 0).expect("time");
        let f = Facts::new(ip, Source::new("s", 1).expect("source"), at);
        assert_eq!(facts_checksum(ip, &[f]).0, "1204e464581fba72c4b7128f5c21acdde83b37599f33f3b6db0ec285d1a1df5f");
        assert_eq!(facts_checksum(ip, &[]), facts_checksum(ip, &[]));
    }

    #[test]
    fn order_and_notation_do_not_matter() {
        let ip: IpAddr = "10.0.0.1".parse().expect("ip");
        let at = chrono::DateTime::from_timestamp(0, 0).expect("time");
        let mut a = Facts::new(ip, Source::new("a", 1).expect("source"), at);
        a.macs =
            vec![MacAddress::parse("a0:36:9f:00:00:01").expect("mac"), MacAddress::parse("a0369f000002").expect("mac")];
        let mut b = Facts::new(ip, Source::new("b", 2).expect("source"), at);
        b.model = Some("R640".into());
        let mut a2 = a.clone();
        a2.macs.reverse();
        assert_eq!(facts_checksum(ip, &[a.clone(), b.clone()]), facts_checksum(ip, &[b.clone(), a2]));
        let mut b2 = b.clone();
        b2.source.priority = 3;
        assert_ne!(facts_checksum(ip, &[a.clone(), b]), facts_checksum(ip, &[a, b2]), "a source's priority counts");
    }
}
