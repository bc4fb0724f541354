//! Hardware components of a device: Ethernet ports, processors, memory and disks.

use serde::{Deserialize, Serialize};

use crate::text::{check_len, required};
use crate::{Device, Entity, Id, MacAddress, ValidationError};

/// One component of a device.
///
/// Uniqueness: an Ethernet MAC address is unique across all devices; processors and memory
/// are unique per device by index; disks are unique per device by mount point.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Component {
    /// The device it is part of.
    pub device: Id<Device>,
    /// What it is.
    pub kind: ComponentKind,
}

/// The kinds of component and their facts.
///
/// Ordered (field by field) only so that reconciliation can break ties deterministically.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ComponentKind {
    /// A network port.
    Ethernet {
        /// Its MAC address, globally unique.
        mac: MacAddress,
        /// Port label, e.g. `eth0`.
        label: Option<String>,
        /// Speed in Mbit/s.
        speed_mbps: Option<u32>,
    },
    /// A CPU.
    Processor {
        /// Socket index, unique per device.
        index: u32,
        /// Model name.
        model: Option<String>,
        /// Core count.
        cores: Option<u32>,
    },
    /// A memory module.
    Memory {
        /// Slot index, unique per device.
        index: u32,
        /// Size in MiB.
        size_mib: u64,
    },
    /// A disk or volume.
    Disk {
        /// Mount point or device path, unique per device.
        mount_point: String,
        /// Size in GiB.
        size_gib: u64,
        /// Serial number.
        serial_number: Option<String>,
    },
}

impl ComponentKind {
    /// `"ethernet"`, `"processor"`, `"memory"` or `"disk"`.
    #[must_use]
    pub const fn as_str(&self) -> &'static str {
        match self {
            Self::Ethernet { .. } => "ethernet",
            Self::Processor { .. } => "processor",
            Self::Memory { .. } => "memory",
            Self::Disk { .. } => "disk",
        }
    }
}

impl Entity for Component {
    const NAME: &'static str = "component";
    fn validate(&self) -> Result<(), ValidationError> {
        validate_kind(&self.kind)
    }
}

/// The rules of a component that do not involve its device (shared with reconciliation facts).
pub(crate) fn validate_kind(kind: &ComponentKind) -> Result<(), ValidationError> {
    match kind {
        ComponentKind::Ethernet { label, .. } => label.as_deref().map_or(Ok(()), |l| check_len("label", l, 64)),
        ComponentKind::Processor { model, .. } => model.as_deref().map_or(Ok(()), |m| check_len("model", m, 255)),
        ComponentKind::Memory { .. } => Ok(()),
        ComponentKind::Disk { mount_point, serial_number, .. } => {
            required("mount_point", mount_point, 255)?;
            serial_number.as_deref().map_or(Ok(()), |s| check_len("serial_number", s, 255))
        }
    }
}
