//! Facts: what one source learnt about one address, with the source's name and priority.

use std::collections::BTreeSet;
use std::net::IpAddr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::component::validate_kind;
use crate::text::{check_len, required};
use crate::{ComponentKind, Device, DeviceType, Hostname, Id, MacAddress, ValidationError};

/// Where facts came from, and how much they are trusted: a higher priority wins a field.
///
/// Two sources of one priority are ordered by name, so the outcome never depends on the order
/// facts arrive in; give sources distinct priorities to say which one you trust.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Source {
    /// The source's name (`snmp`, `redfish`, `agent:puppet`).
    pub name: String,
    /// Its priority; higher wins.
    pub priority: u32,
}

impl Source {
    /// A source. The name is trimmed.
    ///
    /// # Errors
    /// An empty name or one longer than 64 characters.
    pub fn new(name: &str, priority: u32) -> Result<Self, ValidationError> {
        Ok(Self { name: required("source", name, 64)?, priority })
    }
}

/// The classes of component, as a set member: which classes a source looks for decides which
/// stored components it can count as missing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ComponentClass {
    /// Network ports.
    Ethernet,
    /// CPUs.
    Processor,
    /// Memory modules.
    Memory,
    /// Disks and volumes.
    Disk,
}

impl ComponentClass {
    /// `"ethernet"`, `"processor"`, `"memory"` or `"disk"`, as serialized.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Ethernet => "ethernet",
            Self::Processor => "processor",
            Self::Memory => "memory",
            Self::Disk => "disk",
        }
    }

    /// The class of a component.
    #[must_use]
    pub const fn of(kind: &ComponentKind) -> Self {
        match kind {
            ComponentKind::Ethernet { .. } => Self::Ethernet,
            ComponentKind::Processor { .. } => Self::Processor,
            ComponentKind::Memory { .. } => Self::Memory,
            ComponentKind::Disk { .. } => Self::Disk,
        }
    }
}

/// One installed software package.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Software {
    /// Package name.
    pub name: String,
    /// Version, when known.
    #[serde(default)]
    pub version: Option<String>,
}

/// What one source learnt about one address at one time.
///
/// Every fact is optional: `None` or an empty list means "not learnt", never "absent", so a
/// source cannot clear a field by not seeing it. Components are the exception, and only for
/// the classes listed in [`Facts::covers`]: a stored component of a covered class that the
/// facts do not mention counts as one miss.
///
/// Build one with [`Facts::new`] and set what was learnt (new kinds of fact may be added, so
/// the struct cannot be written as a literal outside this crate). A facts file is JSON of
/// this shape:
///
/// ```
/// use ralph_core::reconcile::Facts;
///
/// let facts: Facts = serde_json::from_str(r#"{
///     "address": "10.0.0.5",
///     "source": {"name": "redfish", "priority": 50},
///     "observed_at": "2026-11-30T08:00:00Z",
///     "serial_number": "CZ3123ABC",
///     "macs": ["a0:36:9f:12:34:56"],
///     "model": "ProLiant DL360 Gen10",
///     "manufacturer": "HPE",
///     "device_type": "rack_server",
///     "hostname": "s1.dc1.example.com",
///     "is_management": true,
///     "components": [
///         {"type": "disk", "mount_point": "/dev/sda", "size_gib": 480, "serial_number": "S3Z1NX0K"}
///     ],
///     "covers": ["disk"],
///     "software": [{"name": "openssh", "version": "9.2"}]
/// }"#)?;
/// facts.validate()?;
/// assert_eq!(facts.source.priority, 50);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Facts {
    /// The address the facts are about.
    pub address: IpAddr,
    /// Who learnt them.
    pub source: Source,
    /// When.
    pub observed_at: DateTime<Utc>,
    /// The inventory id the source already knows (an agent configured with it, say): the
    /// strongest identity evidence.
    #[serde(default)]
    pub inventory_id: Option<Id<Device>>,
    /// Serial number as reported; placeholders are filtered by the resolver, not here.
    #[serde(default)]
    pub serial_number: Option<String>,
    /// MAC addresses of the device's interfaces.
    #[serde(default)]
    pub macs: Vec<MacAddress>,
    /// Model name.
    #[serde(default)]
    pub model: Option<String>,
    /// Manufacturer.
    #[serde(default)]
    pub manufacturer: Option<String>,
    /// Kind of device.
    #[serde(default)]
    pub device_type: Option<DeviceType>,
    /// Host name.
    #[serde(default)]
    pub hostname: Option<Hostname>,
    /// Whether the address is the device's management (BMC) address.
    #[serde(default)]
    pub is_management: bool,
    /// Components seen.
    #[serde(default)]
    pub components: Vec<ComponentKind>,
    /// Component classes this source looks for; only these can be counted as missing.
    #[serde(default)]
    pub covers: BTreeSet<ComponentClass>,
    /// Installed software.
    #[serde(default)]
    pub software: Vec<Software>,
}

impl Facts {
    /// Facts with nothing learnt yet.
    #[must_use]
    pub fn new(address: IpAddr, source: Source, observed_at: DateTime<Utc>) -> Self {
        Self {
            address,
            source,
            observed_at,
            inventory_id: None,
            serial_number: None,
            macs: Vec::new(),
            model: None,
            manufacturer: None,
            device_type: None,
            hostname: None,
            is_management: false,
            components: Vec::new(),
            covers: BTreeSet::new(),
            software: Vec::new(),
        }
    }

    /// Checks the rules a facts file can break: a named source, text lengths, valid
    /// components, and no two components with one key (two ports with one MAC, two disks at
    /// one mount point or with one serial, two processors or memory modules at one index).
    ///
    /// # Errors
    /// The first rule broken.
    pub fn validate(&self) -> Result<(), ValidationError> {
        required("source", &self.source.name, 64)?;
        for (field, value) in
            [("serial_number", &self.serial_number), ("model", &self.model), ("manufacturer", &self.manufacturer)]
        {
            if let Some(v) = value {
                check_len(field, v, 255)?;
            }
        }
        let mut keys = BTreeSet::new();
        for kind in &self.components {
            validate_kind(kind)?;
            let mut claim = |key: String| {
                if keys.insert(key.clone()) {
                    Ok(())
                } else {
                    Err(ValidationError::Invalid { field: "components", reason: format!("two components with {key}") })
                }
            };
            match kind {
                ComponentKind::Ethernet { mac, .. } => claim(format!("MAC {mac}"))?,
                ComponentKind::Processor { index, .. } => claim(format!("processor index {index}"))?,
                ComponentKind::Memory { index, .. } => claim(format!("memory index {index}"))?,
                ComponentKind::Disk { mount_point, serial_number, .. } => {
                    claim(format!("disk mount point {}", mount_point.trim()))?;
                    if let Some(serial) = serial_number.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
                        claim(format!("disk serial {}", serial.to_uppercase()))?;
                    }
                }
            }
        }
        for sw in &self.software {
            required("software name", &sw.name, 255)?;
            if let Some(v) = &sw.version {
                check_len("software version", v, 255)?;
            }
        }
        Ok(())
    }

    /// The MACs the facts carry: the listed ones and those of Ethernet components, sorted and
    /// without duplicates.
    #[must_use]
    pub fn all_macs(&self) -> BTreeSet<MacAddress> {
        let from_components = self.components.iter().filter_map(|c| match c {
            ComponentKind::Ethernet { mac, .. } => Some(*mac),
            _ => None,
        });
        self.macs.iter().copied().chain(from_components).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> Facts {
        let at = DateTime::from_timestamp(1_700_000_000, 0).expect("time");
        Facts::new("10.0.0.1".parse().expect("ip"), Source::new("snmp", 10).expect("source"), at)
    }

    #[test]
    fn duplicate_component_keys_are_refused() {
        let mac = MacAddress::parse("a0:36:9f:12:34:56").expect("mac");
        let eth = ComponentKind::Ethernet { mac, label: None, speed_mbps: None };
        let mut f = facts();
        f.components = vec![eth.clone(), eth];
        assert!(matches!(f.validate(), Err(ValidationError::Invalid { field: "components", .. })));

        let disk = |mount: &str, serial: &str| ComponentKind::Disk {
            mount_point: mount.into(),
            size_gib: 1,
            serial_number: Some(serial.into()),
        };
        let mut f = facts();
        f.components = vec![disk("/dev/sda", "S1"), disk("/dev/sdb", "s1")];
        assert!(f.validate().is_err(), "one serial on two disks");
        f.components = vec![disk("/dev/sda", "S1"), disk("/dev/sdb", "S2")];
        assert!(f.validate().is_ok());
    }

    #[test]
    fn bad_text_is_a_typed_error() {
        let mut f = facts();
        f.source.name = "  ".into();
        assert!(matches!(f.validate(), Err(ValidationError::Empty { field: "source" })));
        let mut f = facts();
        f.model = Some("m".repeat(300));
        assert!(matches!(f.validate(), Err(ValidationError::TooLong { field: "model", .. })));
        let mut f = facts();
        f.components = vec![ComponentKind::Disk { mount_point: " ".into(), size_gib: 1, serial_number: None }];
        assert!(f.validate().is_err());
    }

    #[test]
    fn json_with_a_bad_mac_or_hostname_is_refused_not_panicking() {
        let base = r#"{"address":"10.0.0.1","source":{"name":"s","priority":1},"observed_at":"2026-01-01T00:00:00Z""#;
        assert!(serde_json::from_str::<Facts>(&format!("{base}}}")).is_ok());
        assert!(serde_json::from_str::<Facts>(&format!(r#"{base},"macs":["zz"]}}"#)).is_err());
        assert!(serde_json::from_str::<Facts>(&format!(r#"{base},"hostname":"a_b"}}"#)).is_err());
        assert!(serde_json::from_str::<Facts>(&format!(r#"{base},"device_type":"toaster"}}"#)).is_err());
    }
}
