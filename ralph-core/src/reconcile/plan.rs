//! Plans: the create / update / move / delete / conflict items a reconciliation proposes, in
//! dependency order, each with its own status; and their application to a [`Snapshot`].

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};

use super::{
    Checksum, ComponentState, DeviceState, Evidence, Field, FieldState, Misses, Missing, Provenance, ScanId, Snapshot,
};
use crate::{Component, ComponentKind, Device, Id};

/// The scan whose facts are reconciled: its id (misses count once per id) and its scope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Scan {
    /// The scan's id.
    pub id: ScanId,
    /// The networks it covered. A stored device whose management address is in one of them
    /// and that no facts matched counts one miss; a device outside them is never touched.
    #[serde(default)]
    pub networks: Vec<IpNetwork>,
    /// Addresses whose facts a person chose to ignore while unchanged: when the facts'
    /// checksum equals the one here, the address is left out of the plan.
    #[serde(default)]
    pub ignored: BTreeMap<IpAddr, Checksum>,
}

impl Scan {
    /// A scan with an empty scope (it can count no device as missing).
    #[must_use]
    pub fn new(id: &str) -> Self {
        Self { id: ScanId(id.to_owned()), networks: Vec::new(), ignored: BTreeMap::new() }
    }

    /// Adds a network to the scope.
    #[must_use]
    pub fn with_network(mut self, network: IpNetwork) -> Self {
        self.networks.push(network);
        self
    }

    /// Ignores `address` while its facts keep `checksum`.
    #[must_use]
    pub fn with_ignored(mut self, address: IpAddr, checksum: Checksum) -> Self {
        self.ignored.insert(address, checksum);
        self
    }

    /// Whether `ip` is inside the scan's networks.
    #[must_use]
    pub fn covers(&self, ip: IpAddr) -> bool {
        self.networks.iter().any(|n| n.contains(ip))
    }
}

/// A device in a plan: stored, or created by the plan's `CreateDevice` item with that key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(tag = "ref", content = "id", rename_all = "snake_case")]
pub enum DeviceRef {
    /// A stored device.
    Existing(Id<Device>),
    /// The device the plan creates under this key.
    New(u32),
}

/// One field's change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldDiff {
    /// The field.
    pub field: Field,
    /// Its value before (`None`: no value).
    pub before: Option<String>,
    /// Its value after.
    pub after: String,
    /// Where the new value comes from.
    pub provenance: Provenance,
}

/// What one plan item does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Change {
    /// Create a device (key `device`, referenced as [`DeviceRef::New`]).
    CreateDevice {
        /// The key later items use.
        device: u32,
        /// The address whose facts proposed it.
        address: IpAddr,
        /// Its fields.
        fields: Vec<FieldDiff>,
    },
    /// Change fields of a stored device.
    UpdateDevice {
        /// The device.
        device: Id<Device>,
        /// The changed fields (never an unchanged one).
        fields: Vec<FieldDiff>,
    },
    /// Delete a stored device its scan scope kept missing.
    DeleteDevice {
        /// The device.
        device: Id<Device>,
        /// Consecutive scans that missed it.
        misses: u32,
    },
    /// Create a component.
    CreateComponent {
        /// Its device.
        device: DeviceRef,
        /// What it is.
        kind: ComponentKind,
        /// Where it comes from.
        provenance: Provenance,
    },
    /// Change a stored component's facts.
    UpdateComponent {
        /// The component.
        component: Id<Component>,
        /// Its device.
        device: Id<Device>,
        /// Before.
        before: ComponentKind,
        /// After.
        after: ComponentKind,
        /// Where the new facts come from.
        provenance: Provenance,
    },
    /// Move a stored component to another device, keeping its id (and maybe changing facts).
    MoveComponent {
        /// The component.
        component: Id<Component>,
        /// The device it leaves.
        from: Id<Device>,
        /// The device it joins.
        to: DeviceRef,
        /// Before.
        before: ComponentKind,
        /// After.
        after: ComponentKind,
        /// Where the facts come from.
        provenance: Provenance,
    },
    /// Delete a stored component its device's scans kept missing.
    DeleteComponent {
        /// The component.
        component: Id<Component>,
        /// Its device.
        device: Id<Device>,
        /// Consecutive scans that missed it.
        misses: u32,
    },
    /// Facts whose identity is ambiguous, or that claim a component another device claims:
    /// nothing is written, a person decides.
    Conflict {
        /// The addresses involved.
        addresses: Vec<IpAddr>,
        /// The devices the evidence points at.
        devices: Vec<Id<Device>>,
        /// The evidence.
        evidence: Vec<Evidence>,
    },
}

impl Change {
    /// Whether applying it writes to the inventory (everything but a conflict).
    #[must_use]
    pub const fn writes(&self) -> bool {
        !matches!(self, Self::Conflict { .. })
    }

    /// The dependency phase: conflicts, device creates, device updates, component creates /
    /// moves / updates, component deletes, device deletes. Parents are created before their
    /// children and deleted after them.
    #[must_use]
    pub const fn phase(&self) -> u8 {
        match self {
            Self::Conflict { .. } => 0,
            Self::CreateDevice { .. } => 1,
            Self::UpdateDevice { .. } => 2,
            Self::CreateComponent { .. } | Self::MoveComponent { .. } | Self::UpdateComponent { .. } => 3,
            Self::DeleteComponent { .. } => 4,
            Self::DeleteDevice { .. } => 5,
        }
    }
}

/// Where an item stands. Items are independent: one failing skips only the items that
/// depend on it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(tag = "status", content = "reason", rename_all = "snake_case")]
pub enum ItemStatus {
    /// Not applied yet.
    #[default]
    Pending,
    /// Applied.
    Applied,
    /// Applying it failed; the reason.
    Failed(String),
    /// Not applied because an item it depends on was not.
    Skipped(String),
}

/// One plan item.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanItem {
    /// Its position in the plan, from 0; items are in dependency order.
    pub seq: u32,
    /// What it does.
    pub change: Change,
    /// Items (by `seq`) that must be applied first.
    #[serde(default)]
    pub depends_on: Vec<u32>,
    /// Where it stands.
    #[serde(default)]
    pub status: ItemStatus,
}

/// Provenance and miss-counter updates that change no inventory value (so they make no
/// history rows), applied with the plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "update", rename_all = "snake_case")]
pub enum Bookkeeping {
    /// A field keeps its value, now credited to another source or a newer observation.
    FieldProvenance {
        /// The device.
        device: Id<Device>,
        /// The field.
        field: Field,
        /// The new provenance.
        provenance: Provenance,
    },
    /// A component keeps its facts, now credited to another source or a newer observation.
    ComponentProvenance {
        /// The component.
        component: Id<Component>,
        /// The new provenance.
        provenance: Provenance,
    },
    /// A device's miss counter changes.
    DeviceMisses {
        /// The device.
        device: Id<Device>,
        /// The new counter.
        misses: Misses,
    },
    /// A component's miss counter changes.
    ComponentMisses {
        /// The component.
        component: Id<Component>,
        /// The new counter.
        misses: Misses,
    },
}

/// Why a fact's value was not applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SuppressedReason {
    /// The field is locked.
    Locked,
    /// A value of higher rank (priority, then source name, then time) holds the field.
    Outranked,
}

/// A fact's value that lost to the stored or another fact's value: recorded, not dropped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Suppressed {
    /// The device.
    pub device: DeviceRef,
    /// The field.
    pub field: Field,
    /// The value that was not applied.
    pub value: String,
    /// Where it came from.
    pub offered_by: Provenance,
    /// Who holds the field.
    pub held_by: Provenance,
    /// Why it lost.
    pub reason: SuppressedReason,
}

/// Why an address's facts made no item.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reason", content = "detail", rename_all = "snake_case")]
pub enum UnresolvedReason {
    /// No device matches and the facts cannot propose one.
    Insufficient(Missing),
    /// The facts broke a validation rule (the error's text).
    Invalid(String),
    /// The facts are unchanged since a person chose to ignore them.
    Ignored,
}

/// An address whose facts made no item.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unresolved {
    /// The address.
    pub address: IpAddr,
    /// Why.
    pub reason: UnresolvedReason,
}

/// How many items of each kind a plan holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[non_exhaustive]
pub struct PlanCounts {
    /// Devices and components created.
    pub create: usize,
    /// Devices and components updated (moves excluded).
    pub update: usize,
    /// Components moved.
    pub moved: usize,
    /// Devices and components deleted.
    pub delete: usize,
    /// Conflicts.
    pub conflict: usize,
    /// Addresses left unresolved.
    pub unresolved: usize,
    /// Suppressed values.
    pub suppressed: usize,
}

/// Everything a reconciliation proposes for one scan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// The scan.
    pub scan: ScanId,
    /// The items, in dependency order.
    pub items: Vec<PlanItem>,
    /// Provenance and miss-counter updates.
    pub bookkeeping: Vec<Bookkeeping>,
    /// Values that were not applied, and why.
    pub suppressed: Vec<Suppressed>,
    /// Addresses whose facts made no item.
    pub unresolved: Vec<Unresolved>,
    /// The checksum of each address's normalised facts.
    pub checksums: BTreeMap<IpAddr, Checksum>,
}

impl Plan {
    /// How many items of each kind it holds.
    #[must_use]
    pub fn counts(&self) -> PlanCounts {
        let mut counts = PlanCounts {
            unresolved: self.unresolved.len(),
            suppressed: self.suppressed.len(),
            ..PlanCounts::default()
        };
        for item in &self.items {
            match item.change {
                Change::CreateDevice { .. } | Change::CreateComponent { .. } => counts.create += 1,
                Change::UpdateDevice { .. } | Change::UpdateComponent { .. } => counts.update += 1,
                Change::MoveComponent { .. } => counts.moved += 1,
                Change::DeleteDevice { .. } | Change::DeleteComponent { .. } => counts.delete += 1,
                Change::Conflict { .. } => counts.conflict += 1,
            }
        }
        counts
    }

    /// Whether applying it would write to the inventory.
    #[must_use]
    pub fn writes(&self) -> bool {
        self.items.iter().any(|i| i.change.writes())
    }

    /// Whether applying it would change nothing at all: no writes and no bookkeeping.
    #[must_use]
    pub fn is_noop(&self) -> bool {
        !self.writes() && self.bookkeeping.is_empty()
    }
}

/// Hands out ids for the devices and components a plan creates (a store's inserts do this).
pub trait IdAllocator {
    /// A fresh device id.
    fn device(&mut self) -> Id<Device>;
    /// A fresh component id.
    fn component(&mut self) -> Id<Component>;
}

/// An [`IdAllocator`] counting up from given ids; for tests and in-memory use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SequentialIds {
    /// The next device id.
    pub next_device: i64,
    /// The next component id.
    pub next_component: i64,
}

impl IdAllocator for SequentialIds {
    fn device(&mut self) -> Id<Device> {
        self.next_device += 1;
        Id::new(self.next_device - 1)
    }
    fn component(&mut self) -> Id<Component> {
        self.next_component += 1;
        Id::new(self.next_component - 1)
    }
}

impl Snapshot {
    /// Applies `plan` in memory, the reference semantics a store follows: items in order,
    /// each marked applied, failed or skipped (when an item it depends on was not applied),
    /// then the bookkeeping. Returns the ids given to the devices the plan created.
    pub fn apply(&mut self, plan: &mut Plan, ids: &mut impl IdAllocator) -> BTreeMap<u32, Id<Device>> {
        let mut work = Working::new(std::mem::take(&mut self.devices));
        let mut created: BTreeMap<u32, Id<Device>> = BTreeMap::new();
        let mut statuses: BTreeMap<u32, bool> = BTreeMap::new();
        for item in &mut plan.items {
            if item.status != ItemStatus::Pending {
                statuses.insert(item.seq, item.status == ItemStatus::Applied);
                continue;
            }
            if let Some(dep) = item.depends_on.iter().find(|d| statuses.get(d) != Some(&true)) {
                item.status = ItemStatus::Skipped(format!("item {dep} was not applied"));
                statuses.insert(item.seq, false);
                continue;
            }
            item.status = match work.change(&item.change, &mut created, ids) {
                Ok(()) => ItemStatus::Applied,
                Err(reason) => ItemStatus::Failed(reason),
            };
            statuses.insert(item.seq, item.status == ItemStatus::Applied);
        }
        for update in &plan.bookkeeping {
            work.bookkeeping(update);
        }
        self.devices = work.into_devices();
        created
    }
}

/// Devices by id, and which device holds each component, while a plan is applied.
struct Working {
    order: Vec<Id<Device>>,
    devices: HashMap<Id<Device>, DeviceState>,
    owner: HashMap<Id<Component>, Id<Device>>,
}

impl Working {
    fn new(devices: Vec<DeviceState>) -> Self {
        let order = devices.iter().map(|d| d.id).collect();
        let owner = devices.iter().flat_map(|d| d.components.iter().map(|c| (c.id, d.id))).collect();
        Self { order, devices: devices.into_iter().map(|d| (d.id, d)).collect(), owner }
    }

    fn into_devices(mut self) -> Vec<DeviceState> {
        self.order.iter().filter_map(|id| self.devices.remove(id)).collect()
    }

    fn device(&mut self, id: Id<Device>) -> Result<&mut DeviceState, String> {
        self.devices.get_mut(&id).ok_or_else(|| format!("device {id} not found"))
    }

    fn resolve(created: &BTreeMap<u32, Id<Device>>, device: DeviceRef) -> Result<Id<Device>, String> {
        match device {
            DeviceRef::Existing(id) => Ok(id),
            DeviceRef::New(key) => {
                created.get(&key).copied().ok_or_else(|| format!("new device {key} was not created"))
            }
        }
    }

    fn component(&mut self, id: Id<Component>) -> Option<&mut ComponentState> {
        let device = *self.owner.get(&id)?;
        self.devices.get_mut(&device)?.components.iter_mut().find(|c| c.id == id)
    }

    fn take_component(&mut self, from: Id<Device>, id: Id<Component>) -> Result<ComponentState, String> {
        let device = self.device(from)?;
        let at = device
            .components
            .iter()
            .position(|c| c.id == id)
            .ok_or_else(|| format!("component {id} not on device {from}"))?;
        let component = device.components.remove(at);
        self.owner.remove(&id);
        Ok(component)
    }

    fn put_component(&mut self, to: Id<Device>, component: ComponentState) -> Result<(), String> {
        let id = component.id;
        self.device(to)?.components.push(component);
        self.owner.insert(id, to);
        Ok(())
    }

    fn change(
        &mut self,
        change: &Change,
        created: &mut BTreeMap<u32, Id<Device>>,
        ids: &mut impl IdAllocator,
    ) -> Result<(), String> {
        match change {
            Change::CreateDevice { device, fields, .. } => {
                let mut state = DeviceState::new(ids.device());
                for diff in fields {
                    state.fields.insert(
                        diff.field,
                        FieldState { value: diff.after.clone(), provenance: diff.provenance.clone(), locked: false },
                    );
                }
                created.insert(*device, state.id);
                self.order.push(state.id);
                self.devices.insert(state.id, state);
            }
            Change::UpdateDevice { device, fields } => {
                let state = self.device(*device)?;
                if let Some(diff) = fields.iter().find(|d| state.fields.get(&d.field).is_some_and(|f| f.locked)) {
                    return Err(format!("field {} is locked", diff.field));
                }
                for diff in fields {
                    state.fields.insert(
                        diff.field,
                        FieldState { value: diff.after.clone(), provenance: diff.provenance.clone(), locked: false },
                    );
                }
            }
            Change::DeleteDevice { device, .. } => {
                if !self.device(*device)?.components.is_empty() {
                    return Err(format!("device {device} still has components"));
                }
                self.devices.remove(device);
            }
            Change::CreateComponent { device, kind, provenance } => {
                let to = Self::resolve(created, *device)?;
                self.device(to)?;
                let component = ComponentState {
                    id: ids.component(),
                    kind: kind.clone(),
                    provenance: provenance.clone(),
                    misses: Misses::default(),
                };
                self.put_component(to, component)?;
            }
            Change::UpdateComponent { component, device, after, provenance, .. } => {
                if self.owner.get(component) != Some(device) {
                    return Err(format!("component {component} not on device {device}"));
                }
                let c = self.component(*component).ok_or_else(|| format!("component {component} not found"))?;
                c.kind = after.clone();
                c.provenance = provenance.clone();
            }
            Change::MoveComponent { component, from, to, after, provenance, .. } => {
                let to = Self::resolve(created, *to)?;
                self.device(to)?;
                let mut c = self.take_component(*from, *component)?;
                c.kind = after.clone();
                c.provenance = provenance.clone();
                c.misses = Misses::default();
                self.put_component(to, c)?;
            }
            Change::DeleteComponent { component, device, .. } => {
                self.take_component(*device, *component)?;
            }
            Change::Conflict { .. } => {}
        }
        Ok(())
    }

    fn bookkeeping(&mut self, update: &Bookkeeping) {
        match update {
            Bookkeeping::FieldProvenance { device, field, provenance } => {
                if let Some(f) = self.devices.get_mut(device).and_then(|d| d.fields.get_mut(field)) {
                    f.provenance = provenance.clone();
                }
            }
            Bookkeeping::ComponentProvenance { component, provenance } => {
                if let Some(c) = self.component(*component) {
                    c.provenance = provenance.clone();
                }
            }
            Bookkeeping::DeviceMisses { device, misses } => {
                if let Some(d) = self.devices.get_mut(device) {
                    d.misses = misses.clone();
                }
            }
            Bookkeeping::ComponentMisses { component, misses } => {
                if let Some(c) = self.component(*component) {
                    c.misses = misses.clone();
                }
            }
        }
    }
}
