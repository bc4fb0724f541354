//! Locations: data centres, server rooms, racks, and the rules for placing devices in racks.

use serde::{Deserialize, Serialize};

use crate::text::required;
use crate::{CountryCode, Entity, Id, ValidationError};

/// A data centre. Names are unique.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataCenter {
    /// Unique name, e.g. `dc1`.
    pub name: String,
    /// Country the data centre is in.
    pub country: Option<CountryCode>,
    /// City.
    pub city: Option<String>,
    /// Street address.
    pub address: Option<String>,
}

impl DataCenter {
    /// A data centre with a validated name and country (ISO 3166-1 alpha-2, any case).
    ///
    /// # Errors
    /// An empty or overlong name, or a country that is not an alpha-2 code.
    pub fn new(name: &str, country: Option<&str>) -> Result<Self, ValidationError> {
        Ok(Self {
            name: required("name", name, 255)?,
            country: country.map(CountryCode::parse).transpose()?,
            city: None,
            address: None,
        })
    }

    /// Sets the city and street address.
    #[must_use]
    pub fn with_address(mut self, city: &str, address: &str) -> Self {
        self.city = crate::text::blank_to_none(Some(city));
        self.address = crate::text::blank_to_none(Some(address));
        self
    }
}

impl Entity for DataCenter {
    const NAME: &'static str = "data centre";
    fn validate(&self) -> Result<(), ValidationError> {
        required("name", &self.name, 255)?;
        if let Some(city) = &self.city {
            crate::text::check_len("city", city, 255)?;
        }
        if let Some(address) = &self.address {
            crate::text::check_len("address", address, 255)?;
        }
        Ok(())
    }
}

/// A server room inside a data centre. Names are unique per data centre.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerRoom {
    /// Name, unique in its data centre.
    pub name: String,
    /// The data centre it belongs to.
    pub data_center: Id<DataCenter>,
}

impl ServerRoom {
    /// A server room with a validated name.
    ///
    /// # Errors
    /// An empty or overlong name.
    pub fn new(name: &str, data_center: Id<DataCenter>) -> Result<Self, ValidationError> {
        Ok(Self { name: required("name", name, 255)?, data_center })
    }
}

impl Entity for ServerRoom {
    const NAME: &'static str = "server room";
    fn validate(&self) -> Result<(), ValidationError> {
        required("name", &self.name, 255)?;
        Ok(())
    }
}

/// Which way a rack, or a device in a rack, faces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Orientation {
    /// The front face.
    #[default]
    Front,
    /// The back face.
    Back,
}

impl Orientation {
    /// `"front"` or `"back"`.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Front => "front",
            Self::Back => "back",
        }
    }

    /// Parses `"front"` / `"back"`.
    ///
    /// # Errors
    /// [`ValidationError::UnknownName`] for anything else.
    pub fn parse(input: &str) -> Result<Self, ValidationError> {
        match input {
            "front" => Ok(Self::Front),
            "back" => Ok(Self::Back),
            _ => Err(ValidationError::UnknownName { what: "orientation", input: input.to_owned() }),
        }
    }
}

/// A rack in a server room. Names are unique per server room.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rack {
    /// Name, unique in its server room.
    pub name: String,
    /// The server room it stands in.
    pub server_room: Id<ServerRoom>,
    /// Height in rack units (1–100, default 48).
    pub max_u_height: u32,
    /// Which way the rack faces.
    pub orientation: Orientation,
    /// Units numbered from the top down instead of from the bottom up.
    pub reverse_ordering: bool,
}

impl Rack {
    /// Ralph's default rack height.
    pub const DEFAULT_HEIGHT: u32 = 48;
    /// The tallest rack accepted.
    pub const MAX_HEIGHT: u32 = 100;

    /// A 48U front-facing rack with bottom-up numbering.
    ///
    /// # Errors
    /// An empty or overlong name.
    pub fn new(name: &str, server_room: Id<ServerRoom>) -> Result<Self, ValidationError> {
        Ok(Self {
            name: required("name", name, 255)?,
            server_room,
            max_u_height: Self::DEFAULT_HEIGHT,
            orientation: Orientation::Front,
            reverse_ordering: false,
        })
    }

    /// Sets the height in units.
    ///
    /// # Errors
    /// [`ValidationError::Height`] outside 1–100.
    pub fn with_height(mut self, height: u32) -> Result<Self, ValidationError> {
        check_rack_height(height)?;
        self.max_u_height = height;
        Ok(self)
    }
}

fn check_rack_height(height: u32) -> Result<(), ValidationError> {
    if !(1..=Rack::MAX_HEIGHT).contains(&height) {
        return Err(ValidationError::Height { height, min: 1, max: Rack::MAX_HEIGHT });
    }
    Ok(())
}

impl Entity for Rack {
    const NAME: &'static str = "rack";
    fn validate(&self) -> Result<(), ValidationError> {
        required("name", &self.name, 255)?;
        check_rack_height(self.max_u_height)
    }
}

/// Where a device sits in a rack: the lowest unit it occupies, its height and the faces it
/// covers. A full-depth device covers both faces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RackSlot {
    /// Lowest occupied unit, 1-based.
    pub position: u32,
    /// Height in units (at least 1).
    pub height: u32,
    /// The face it is mounted on.
    pub orientation: Orientation,
    /// Whether it covers both faces.
    pub full_depth: bool,
}

impl RackSlot {
    /// The faces this slot covers.
    #[must_use]
    pub fn faces(&self) -> &'static [Orientation] {
        match (self.full_depth, self.orientation) {
            (true, _) => &[Orientation::Front, Orientation::Back],
            (false, Orientation::Front) => &[Orientation::Front],
            (false, Orientation::Back) => &[Orientation::Back],
        }
    }

    /// The units this slot covers, lowest first.
    #[must_use]
    pub fn units(&self) -> std::ops::RangeInclusive<u32> {
        self.position..=self.position.saturating_add(self.height.saturating_sub(1))
    }

    /// Every (face, unit) cell the slot covers; stores keep these as rows under a unique key
    /// so the database itself refuses an overlap.
    pub fn cells(&self) -> impl Iterator<Item = (Orientation, u32)> + '_ {
        self.faces().iter().flat_map(move |face| self.units().map(move |u| (*face, u)))
    }
}

/// Checks that `slot` fits in a rack of `rack_height` units and overlaps none of `others`
/// (the slots of the other devices in that rack, with their ids).
///
/// # Errors
/// [`ValidationError::OutOfRack`] or [`ValidationError::RackOverlap`] naming the first device
/// in the way.
pub fn check_rack_slot(rack_height: u32, slot: &RackSlot, others: &[(i64, RackSlot)]) -> Result<(), ValidationError> {
    let top = u64::from(slot.position) + u64::from(slot.height);
    if slot.position == 0 || slot.height == 0 || top - 1 > u64::from(rack_height) {
        return Err(ValidationError::OutOfRack { position: slot.position, height: slot.height, rack_height });
    }
    for (other_id, other) in others {
        for face in slot.faces() {
            if !other.faces().contains(face) {
                continue;
            }
            let from = slot.position.max(other.position);
            let to = (*slot.units().end()).min(*other.units().end());
            if from <= to {
                return Err(ValidationError::RackOverlap { from, to, face: face.as_str(), other: *other_id });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn slot(position: u32, height: u32, orientation: Orientation, full_depth: bool) -> RackSlot {
        RackSlot { position, height, orientation, full_depth }
    }

    #[test]
    fn fits_and_overlaps() {
        let server = slot(10, 2, Orientation::Front, true);
        assert_eq!(check_rack_slot(48, &server, &[]), Ok(()));
        assert_eq!(check_rack_slot(48, &slot(47, 2, Orientation::Front, true), &[]), Ok(()));
        assert!(matches!(
            check_rack_slot(48, &slot(48, 2, Orientation::Front, true), &[]),
            Err(ValidationError::OutOfRack { .. })
        ));
        assert!(check_rack_slot(48, &slot(0, 1, Orientation::Front, true), &[]).is_err());
        assert_eq!(
            check_rack_slot(48, &slot(11, 1, Orientation::Back, false), &[(7, server)]),
            Err(ValidationError::RackOverlap { from: 11, to: 11, face: "back", other: 7 })
        );
        // Half-depth devices on opposite faces share units.
        let front = slot(20, 1, Orientation::Front, false);
        assert_eq!(check_rack_slot(48, &slot(20, 1, Orientation::Back, false), &[(1, front)]), Ok(()));
        assert!(check_rack_slot(u32::MAX, &slot(u32::MAX, u32::MAX, Orientation::Front, true), &[]).is_err());
    }

    #[test]
    fn rack_builder_checks_height() {
        let rack = Rack::new("r1", Id::new(1)).expect("valid");
        assert_eq!(rack.max_u_height, 48);
        assert!(rack.clone().with_height(0).is_err());
        assert!(rack.clone().with_height(101).is_err());
        assert_eq!(rack.with_height(42).map(|r| r.max_u_height), Ok(42));
        assert!(DataCenter::new("  ", None).is_err());
        assert!(DataCenter::new("dc", Some("XX")).is_err());
    }

    fn any_slot(rack: u32) -> impl Strategy<Value = RackSlot> {
        (1..=rack, 1..=4u32, prop_oneof![Just(Orientation::Front), Just(Orientation::Back)], any::<bool>())
            .prop_map(|(position, height, orientation, full_depth)| slot(position, height, orientation, full_depth))
    }

    proptest! {
        /// The fast interval check agrees with the cell model the database enforces.
        #[test]
        fn overlap_check_agrees_with_cells(rack in 1..=48u32, a in any_slot(48), b in any_slot(48)) {
            let cells_a: std::collections::HashSet<_> = a.cells().collect();
            let fits = u64::from(b.position) + u64::from(b.height) - 1 <= u64::from(rack);
            let shares = b.cells().any(|c| cells_a.contains(&c));
            let placed_a = check_rack_slot(rack, &a, &[]).is_ok();
            let others = if placed_a { vec![(1, a)] } else { Vec::new() };
            let result = check_rack_slot(rack, &b, &others);
            prop_assert_eq!(result.is_ok(), fits && !(placed_a && shares));
        }

        #[test]
        fn accepted_slots_stay_inside(rack in 1..=100u32, s in any_slot(100)) {
            if check_rack_slot(rack, &s, &[]).is_ok() {
                prop_assert!(s.position >= 1 && *s.units().end() <= rack);
            }
        }
    }
}
