//! Device models and devices (data-centre assets) with their rack or blade placement.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::text::{blank_to_none, check_len, deserialize_blank_as_none, required};
use crate::{AssetStatus, Entity, Id, Orientation, Rack, RackSlot, ValidationError};

/// The kind of hardware a model describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceType {
    /// A rack-mounted server.
    RackServer,
    /// A server in a blade system.
    BladeServer,
    /// A blade chassis.
    BladeSystem,
    /// A network switch.
    Switch,
    /// A router.
    Router,
    /// A load balancer.
    LoadBalancer,
    /// A storage array.
    Storage,
    /// A power distribution unit.
    Pdu,
    /// A virtual machine.
    VirtualServer,
    /// A cloud instance.
    CloudServer,
    /// Not known yet.
    Unknown,
}

impl DeviceType {
    /// Every type, in declaration order.
    pub const ALL: [Self; 11] = [
        Self::RackServer,
        Self::BladeServer,
        Self::BladeSystem,
        Self::Switch,
        Self::Router,
        Self::LoadBalancer,
        Self::Storage,
        Self::Pdu,
        Self::VirtualServer,
        Self::CloudServer,
        Self::Unknown,
    ];

    /// The snake_case name, as serialized and stored.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::RackServer => "rack_server",
            Self::BladeServer => "blade_server",
            Self::BladeSystem => "blade_system",
            Self::Switch => "switch",
            Self::Router => "router",
            Self::LoadBalancer => "load_balancer",
            Self::Storage => "storage",
            Self::Pdu => "pdu",
            Self::VirtualServer => "virtual_server",
            Self::CloudServer => "cloud_server",
            Self::Unknown => "unknown",
        }
    }

    /// Parses the snake_case name.
    ///
    /// # Errors
    /// [`ValidationError::UnknownName`].
    pub fn parse(input: &str) -> Result<Self, ValidationError> {
        Self::ALL
            .into_iter()
            .find(|t| t.as_str() == input)
            .ok_or_else(|| ValidationError::UnknownName { what: "device type", input: input.to_owned() })
    }

    /// Whether devices of this type have no rack units of their own.
    #[must_use]
    pub const fn is_unracked(self) -> bool {
        matches!(self, Self::BladeServer | Self::VirtualServer | Self::CloudServer)
    }
}

/// A hardware model, e.g. `Dell PowerEdge R640`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceModel {
    /// Model name; unique together with the manufacturer.
    pub name: String,
    /// Manufacturer.
    pub manufacturer: Option<String>,
    /// What kind of device it is.
    pub kind: DeviceType,
    /// Height in rack units: 0 for blades and virtual devices, 1–100 otherwise.
    pub height_u: u32,
    /// Whether it takes both faces of the rack (most servers do).
    pub full_depth: bool,
}

impl DeviceModel {
    /// A full-depth model.
    ///
    /// # Errors
    /// An empty name, or a height that does not suit the type.
    pub fn new(
        name: &str,
        manufacturer: Option<&str>,
        kind: DeviceType,
        height_u: u32,
    ) -> Result<Self, ValidationError> {
        let model = Self {
            name: required("name", name, 255)?,
            manufacturer: blank_to_none(manufacturer),
            kind,
            height_u,
            full_depth: true,
        };
        model.validate()?;
        Ok(model)
    }
}

impl Entity for DeviceModel {
    const NAME: &'static str = "device model";
    fn validate(&self) -> Result<(), ValidationError> {
        required("name", &self.name, 255)?;
        let (min, max) = if self.kind.is_unracked() { (0, 0) } else { (0, Rack::MAX_HEIGHT) };
        if self.height_u < min || self.height_u > max {
            return Err(ValidationError::Height { height: self.height_u, min, max });
        }
        Ok(())
    }
}

/// Where a device is: nowhere yet, at a position in a rack, or in a slot of a blade system.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(tag = "placement", rename_all = "snake_case")]
pub enum Placement {
    /// Not placed (in stock, virtual, cloud).
    #[default]
    Unplaced,
    /// In a rack; `position` is the lowest unit, 1-based.
    Rack {
        /// The rack.
        rack: Id<Rack>,
        /// Lowest occupied unit; `None` for a device standing in the rack without a position
        /// (a zero-U PDU, say).
        position: Option<u32>,
        /// Face it is mounted on.
        orientation: Orientation,
    },
    /// In a slot of a blade system.
    Blade {
        /// The blade system.
        parent: Id<Device>,
        /// The slot, unique within the parent.
        slot: String,
    },
}

/// A device: a data-centre asset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Device {
    /// Host name; free text (asset names are not always DNS names).
    #[serde(deserialize_with = "deserialize_blank_as_none", default)]
    pub hostname: Option<String>,
    /// Serial number; unique. Blank is stored as none.
    #[serde(deserialize_with = "deserialize_blank_as_none", default)]
    pub serial_number: Option<String>,
    /// Barcode; unique. Blank is stored as none.
    #[serde(deserialize_with = "deserialize_blank_as_none", default)]
    pub barcode: Option<String>,
    /// The hardware model.
    pub model: Id<DeviceModel>,
    /// Rack or blade placement.
    #[serde(default)]
    pub placement: Placement,
    /// Service environment, e.g. `backup/prod`.
    #[serde(deserialize_with = "deserialize_blank_as_none", default)]
    pub service_env: Option<String>,
    /// Lifecycle status.
    pub status: AssetStatus,
    /// The management (BMC) address.
    pub management_ip: Option<IpAddr>,
}

impl Device {
    /// A new, unplaced device of `model`. Blank serial numbers and barcodes become none.
    #[must_use]
    pub fn new(
        model: Id<DeviceModel>,
        hostname: Option<&str>,
        serial_number: Option<&str>,
        barcode: Option<&str>,
    ) -> Self {
        Self {
            hostname: blank_to_none(hostname),
            serial_number: blank_to_none(serial_number),
            barcode: blank_to_none(barcode),
            model,
            placement: Placement::Unplaced,
            service_env: None,
            status: AssetStatus::New,
            management_ip: None,
        }
    }

    /// Places the device in a rack at `position` (lowest unit, 1-based).
    #[must_use]
    pub fn in_rack(mut self, rack: Id<Rack>, position: u32, orientation: Orientation) -> Self {
        self.placement = Placement::Rack { rack, position: Some(position), orientation };
        self
    }

    /// Places the device in a blade system's slot.
    #[must_use]
    pub fn in_blade_slot(mut self, parent: Id<Device>, slot: &str) -> Self {
        self.placement = Placement::Blade { parent, slot: slot.trim().to_owned() };
        self
    }

    /// The rack cells this device takes, given its model, or `None` when it takes none.
    #[must_use]
    pub fn rack_slot(&self, model: &DeviceModel) -> Option<RackSlot> {
        match &self.placement {
            Placement::Rack { position: Some(position), orientation, .. } if model.height_u > 0 => Some(RackSlot {
                position: *position,
                height: model.height_u,
                orientation: *orientation,
                full_depth: model.full_depth,
            }),
            _ => None,
        }
    }

    /// Checks the rules that need the model: blades go in slots, racked devices in racks.
    ///
    /// # Errors
    /// [`ValidationError::Placement`].
    pub fn validate_with_model(&self, model: &DeviceModel) -> Result<(), ValidationError> {
        self.validate()?;
        match (&self.placement, model.kind) {
            (Placement::Blade { .. }, DeviceType::BladeServer) | (Placement::Unplaced, _) => Ok(()),
            (_, DeviceType::BladeServer) => {
                Err(ValidationError::Placement("a blade server goes in a blade system slot"))
            }
            (Placement::Blade { .. }, _) => Err(ValidationError::Placement("only blade servers go in blade slots")),
            (Placement::Rack { position: Some(_), .. }, kind) if kind.is_unracked() => {
                Err(ValidationError::Placement("this device type takes no rack units"))
            }
            (Placement::Rack { .. }, _) => Ok(()),
        }
    }
}

impl Entity for Device {
    const NAME: &'static str = "device";
    fn validate(&self) -> Result<(), ValidationError> {
        for (field, value) in [
            ("hostname", &self.hostname),
            ("serial_number", &self.serial_number),
            ("barcode", &self.barcode),
            ("service_env", &self.service_env),
        ] {
            if let Some(v) = value {
                if v.trim().is_empty() {
                    return Err(ValidationError::Invalid { field, reason: "blank values must be none".into() });
                }
                check_len(field, v, 255)?;
            }
        }
        match &self.placement {
            Placement::Rack { position: Some(0), .. } => Err(ValidationError::Placement("rack positions start at 1")),
            Placement::Blade { slot, .. } if slot.trim().is_empty() => {
                Err(ValidationError::Placement("a blade needs a slot"))
            }
            Placement::Blade { slot, .. } => check_len("slot", slot, 32),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blank_serials_become_none() {
        let d = Device::new(Id::new(1), Some("srv"), Some("  "), Some(""));
        assert_eq!((d.serial_number, d.barcode), (None, None));
        let json = r#"{"hostname":"","serial_number":"","barcode":"B1","model":1,"status":"new","management_ip":null}"#;
        let d: Device = serde_json::from_str(json).expect("valid json");
        assert_eq!((d.hostname, d.serial_number, d.barcode.as_deref()), (None, None, Some("B1")));
    }

    #[test]
    fn placement_rules() {
        let blade = DeviceModel::new("BL460c", Some("HP"), DeviceType::BladeServer, 0).expect("valid");
        let server = DeviceModel::new("R640", Some("Dell"), DeviceType::RackServer, 1).expect("valid");
        assert!(DeviceModel::new("BL460c", None, DeviceType::BladeServer, 2).is_err());
        assert!(DeviceModel::new("huge", None, DeviceType::Storage, 101).is_err());
        let in_rack = Device::new(Id::new(1), None, None, None).in_rack(Id::new(1), 3, Orientation::Front);
        assert!(in_rack.validate_with_model(&server).is_ok());
        assert!(in_rack.validate_with_model(&blade).is_err());
        let in_slot = Device::new(Id::new(1), None, None, None).in_blade_slot(Id::new(9), "3");
        assert!(in_slot.validate_with_model(&blade).is_ok());
        assert!(in_slot.validate_with_model(&server).is_err());
        assert!(Device::new(Id::new(1), None, None, None).in_blade_slot(Id::new(9), " ").validate().is_err());
        assert!(
            Device::new(Id::new(1), None, None, None).in_rack(Id::new(1), 0, Orientation::Front).validate().is_err()
        );
    }
}
