//! The reconciler's view of stored devices: field values with provenance, components with
//! miss counters. Plain serde data a store persists beside the inventory.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::{Component, ComponentKind, Device, Id, MacAddress};

/// A device field the reconciler maintains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Field {
    /// Serial number (normalised, case kept).
    SerialNumber,
    /// Model name.
    Model,
    /// Manufacturer.
    Manufacturer,
    /// Device type, as [`crate::DeviceType::as_str`].
    DeviceType,
    /// Host name.
    Hostname,
    /// Management address.
    ManagementIp,
    /// Installed software: one `name version` line per package, sorted.
    Software,
}

impl Field {
    /// Every field, in order.
    pub const ALL: [Self; 7] = [
        Self::SerialNumber,
        Self::Model,
        Self::Manufacturer,
        Self::DeviceType,
        Self::Hostname,
        Self::ManagementIp,
        Self::Software,
    ];

    /// The snake_case name, as serialized and as a history row names the field.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::SerialNumber => "serial_number",
            Self::Model => "model",
            Self::Manufacturer => "manufacturer",
            Self::DeviceType => "device_type",
            Self::Hostname => "hostname",
            Self::ManagementIp => "management_ip",
            Self::Software => "software",
        }
    }
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who set a value, with what priority, when.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Provenance {
    /// The source's name, or the person's (`user:alice`).
    pub source: String,
    /// The priority it was set with; a fact needs a higher rank to replace it.
    pub priority: u32,
    /// When the source observed it (or the person set it).
    pub at: DateTime<Utc>,
    /// Whether a person set it.
    #[serde(default)]
    pub by_person: bool,
}

impl Provenance {
    /// Provenance of a value a person set. Give it a priority above every scan source (the
    /// default [`Provenance::PERSON_PRIORITY`] is above all) so no scan replaces it.
    #[must_use]
    pub fn person(user: &str, priority: u32, at: DateTime<Utc>) -> Self {
        Self { source: format!("user:{user}"), priority, at, by_person: true }
    }

    /// The default priority of a person's edit: above any source.
    pub const PERSON_PRIORITY: u32 = u32::MAX;

    /// The rank of a value with this provenance: priority, then source name, then time.
    /// Total, so the winner among many facts does not depend on their order.
    pub(crate) fn rank(&self) -> (u32, &str, DateTime<Utc>) {
        (self.priority, self.source.as_str(), self.at)
    }
}

/// A field's current value and where it came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldState {
    /// The value, in its text form.
    pub value: String,
    /// Who set it.
    pub provenance: Provenance,
    /// A locked field is never replaced by a fact, whatever its priority; only a person
    /// changes it.
    #[serde(default)]
    pub locked: bool,
}

/// Scan identity: misses are counted once per distinct scan, so replaying a scan's facts
/// does not count them again.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ScanId(pub String);

impl fmt::Display for ScanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Consecutive scans in scope that did not see an object.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Misses {
    /// How many scans in a row missed it; zero once seen again.
    pub count: u32,
    /// The last scan that counted a miss, so the same scan never counts twice.
    pub last_scan: Option<ScanId>,
}

impl Misses {
    /// The counter after `scan` missed the object (unchanged if `scan` already counted).
    #[must_use]
    pub fn missed_by(&self, scan: &ScanId) -> Self {
        if self.last_scan.as_ref() == Some(scan) {
            self.clone()
        } else {
            Self { count: self.count.saturating_add(1), last_scan: Some(scan.clone()) }
        }
    }
}

/// A stored component as the reconciler sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComponentState {
    /// Its id; kept when it moves to another device.
    pub id: Id<Component>,
    /// What it is.
    pub kind: ComponentKind,
    /// Who last set its facts.
    pub provenance: Provenance,
    /// Scans in a row that did not see it on its device.
    #[serde(default)]
    pub misses: Misses,
}

/// A stored device as the reconciler sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceState {
    /// Its id.
    pub id: Id<Device>,
    /// Field values with provenance; a field not here has no value.
    #[serde(default)]
    pub fields: BTreeMap<Field, FieldState>,
    /// Its components.
    #[serde(default)]
    pub components: Vec<ComponentState>,
    /// Scans in a row whose scope held it and that did not see it.
    #[serde(default)]
    pub misses: Misses,
}

impl DeviceState {
    /// A device with no fields and no components.
    #[must_use]
    pub fn new(id: Id<Device>) -> Self {
        Self { id, fields: BTreeMap::new(), components: Vec::new(), misses: Misses::default() }
    }

    /// The value of `field`.
    #[must_use]
    pub fn value(&self, field: Field) -> Option<&str> {
        self.fields.get(&field).map(|f| f.value.as_str())
    }

    /// Records a person's edit, optionally locking the field against every fact.
    pub fn set_by_person(&mut self, field: Field, value: &str, provenance: Provenance, lock: bool) {
        self.fields.insert(field, FieldState { value: value.to_owned(), provenance, locked: lock });
    }

    /// Locks or unlocks a field that has a value; returns whether it had one.
    pub fn lock(&mut self, field: Field, locked: bool) -> bool {
        self.fields.get_mut(&field).map(|f| f.locked = locked).is_some()
    }

    /// MACs of its Ethernet components.
    #[must_use]
    pub fn macs(&self) -> Vec<MacAddress> {
        self.components
            .iter()
            .filter_map(|c| match c.kind {
                ComponentKind::Ethernet { mac, .. } => Some(mac),
                _ => None,
            })
            .collect()
    }

    /// The management address, when the field holds a valid one.
    #[must_use]
    pub fn management_ip(&self) -> Option<IpAddr> {
        self.value(Field::ManagementIp).and_then(|v| v.parse().ok())
    }
}

/// The stored devices a reconciliation runs against: the identity candidates and the devices
/// in the scan's scope.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Snapshot {
    /// The devices, in any order.
    pub devices: Vec<DeviceState>,
}

impl Snapshot {
    /// The device with `id`.
    #[must_use]
    pub fn device(&self, id: Id<Device>) -> Option<&DeviceState> {
        self.devices.iter().find(|d| d.id == id)
    }
}
