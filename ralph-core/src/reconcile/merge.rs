//! The reconciler: identity, per-field merge with provenance, component matching by key
//! groups, miss counting, and the plan that comes out of them.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::{
    Bookkeeping, Candidate, CandidateIndex, Change, ComponentClass, ComponentState, DeviceRef, DeviceState, Evidence,
    Facts, Field, FieldDiff, FieldState, IdentityConfig, IdentityResolver, ItemStatus, Plan, PlanItem, Provenance,
    Resolution, Scan, Snapshot, Suppressed, SuppressedReason, Unresolved, UnresolvedReason, facts_checksum,
    normalise_serial,
};
use crate::{Component, ComponentKind, Device, Id, MacAddress};

/// How merges treat missing objects.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct MergeConfig {
    /// A component of a class its device's facts cover, missing from this many distinct scans
    /// in a row, is deleted. At least 1 (0 is taken as 1).
    pub component_misses_before_delete: u32,
    /// A device in a scan's networks that this many distinct scans in a row did not see is
    /// deleted; `None` (the default) never deletes devices, only counts their misses.
    pub device_misses_before_delete: Option<u32>,
}

impl Default for MergeConfig {
    fn default() -> Self {
        Self { component_misses_before_delete: 3, device_misses_before_delete: None }
    }
}

impl MergeConfig {
    /// Sets how many misses delete a component.
    #[must_use]
    pub fn with_component_misses_before_delete(mut self, misses: u32) -> Self {
        self.component_misses_before_delete = misses;
        self
    }

    /// Sets how many misses delete a device (`None`: never).
    #[must_use]
    pub fn with_device_misses_before_delete(mut self, misses: Option<u32>) -> Self {
        self.device_misses_before_delete = misses;
        self
    }
}

/// Everything a [`Reconciler`] is configured with.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct ReconcileConfig {
    /// Identity evidence rules.
    pub identity: IdentityConfig,
    /// Merge rules.
    pub merge: MergeConfig,
}

impl ReconcileConfig {
    /// Replaces the identity rules.
    #[must_use]
    pub fn with_identity(mut self, identity: IdentityConfig) -> Self {
        self.identity = identity;
        self
    }

    /// Replaces the merge rules.
    #[must_use]
    pub fn with_merge(mut self, merge: MergeConfig) -> Self {
        self.merge = merge;
        self
    }
}

/// The keys of the stored devices a reconciliation needs; see [`Reconciler::snapshot_query`].
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[non_exhaustive]
pub struct SnapshotQuery {
    /// Inventory ids named by the facts.
    pub inventory_ids: BTreeSet<Id<Device>>,
    /// Device serial comparison keys (normalised, upper case; placeholders left out).
    pub serials: BTreeSet<String>,
    /// MACs of ports, usable or not (an unusable one still conflicts when it exists elsewhere).
    pub macs: BTreeSet<MacAddress>,
    /// Disk serial comparison keys.
    pub disk_serials: BTreeSet<String>,
    /// The facts' addresses, as management addresses.
    pub addresses: BTreeSet<IpAddr>,
}

/// A value some source offers, with its provenance.
#[derive(Debug, Clone)]
struct Offer<T> {
    value: T,
    provenance: Provenance,
}

/// The offer of highest rank (priority, source, time, then value): a total order, so the
/// winner does not depend on the order offers arrive in.
fn best<T: Ord>(offers: &[Offer<T>]) -> Option<&Offer<T>> {
    offers.iter().max_by(|a, b| (a.provenance.rank(), &a.value).cmp(&(b.provenance.rank(), &b.value)))
}

fn outranks<T: Ord>(offer: &Offer<T>, value: &T, provenance: &Provenance) -> bool {
    (offer.provenance.rank(), &offer.value) > (provenance.rank(), value)
}

/// A component's identity within a scan's facts.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Key {
    Mac(MacAddress),
    DiskSerial(String),
    DiskMount(String),
    Processor(u32),
    Memory(u32),
}

/// Where a component of the facts goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Match {
    /// The target device's own component.
    Local(Id<Component>),
    /// Another device's component, moving here.
    Move(Id<Component>, Id<Device>),
    /// A new component.
    New,
    /// Another device holds this key and it cannot move (an unusable MAC): a conflict.
    Clash(Id<Component>, Id<Device>),
    /// Settled as part of a conflict: nothing written.
    Conflicted,
}

struct Group {
    key: Key,
    offers: Vec<Offer<ComponentKind>>,
    matched: Match,
}

struct Target {
    device: DeviceRef,
    addresses: Vec<IpAddr>,
    facts: Vec<Facts>,
    groups: Vec<Group>,
}

fn provenance_of(facts: &Facts) -> Provenance {
    Provenance {
        source: facts.source.name.trim().to_owned(),
        priority: facts.source.priority,
        at: facts.observed_at,
        by_person: false,
    }
}

fn trimmed(value: Option<&String>) -> Option<String> {
    value.map(|v| v.trim()).filter(|v| !v.is_empty()).map(str::to_owned)
}

/// Normalises what a component's facts say, so notation differences are not changes.
fn normalise_kind(kind: &ComponentKind) -> ComponentKind {
    match kind {
        ComponentKind::Ethernet { mac, label, speed_mbps } => {
            ComponentKind::Ethernet { mac: *mac, label: trimmed(label.as_ref()), speed_mbps: *speed_mbps }
        }
        ComponentKind::Processor { index, model, cores } => {
            ComponentKind::Processor { index: *index, model: trimmed(model.as_ref()), cores: *cores }
        }
        ComponentKind::Memory { .. } => kind.clone(),
        ComponentKind::Disk { mount_point, size_gib, serial_number } => ComponentKind::Disk {
            mount_point: mount_point.trim().to_owned(),
            size_gib: *size_gib,
            serial_number: serial_number.as_deref().and_then(normalise_serial),
        },
    }
}

fn mount_of(kind: &ComponentKind) -> Option<&str> {
    match kind {
        ComponentKind::Disk { mount_point, .. } => Some(mount_point.as_str()),
        _ => None,
    }
}

/// Collects plan parts before they are put in dependency order.
#[derive(Default)]
struct Parts {
    changes: Vec<Change>,
    bookkeeping: Vec<Bookkeeping>,
    suppressed: Vec<Suppressed>,
    unresolved: Vec<Unresolved>,
}

/// Turns a scan's facts into a [`Plan`] against a [`Snapshot`] of stored devices. Pure: it
/// reads the snapshot and returns the plan; [`Snapshot::apply`] (or a store) carries it out.
///
/// ```
/// use ralph_core::reconcile::{Facts, Reconciler, Scan, SequentialIds, Snapshot, Source};
/// use ralph_core::DeviceType;
///
/// let mut facts = Facts::new("10.0.0.5".parse()?, Source::new("redfish", 50)?, chrono::Utc::now());
/// facts.serial_number = Some("CZ3123ABC".into());
/// facts.device_type = Some(DeviceType::RackServer);
///
/// let reconciler = Reconciler::default();
/// let scan = Scan::new("scan-1");
/// let mut snapshot = Snapshot::default();
/// let mut plan = reconciler.plan(&snapshot, &scan, &[facts.clone()]);
/// assert_eq!(plan.counts().create, 1);
/// snapshot.apply(&mut plan, &mut SequentialIds { next_device: 1, next_component: 1 });
///
/// // The same facts again change nothing.
/// assert!(reconciler.plan(&snapshot, &scan, &[facts]).is_noop());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Default)]
pub struct Reconciler {
    config: ReconcileConfig,
    resolver: IdentityResolver,
}

impl Reconciler {
    /// A reconciler with `config`.
    #[must_use]
    pub fn new(config: ReconcileConfig) -> Self {
        Self { resolver: IdentityResolver::new(config.identity.clone()), config }
    }

    /// Its configuration.
    #[must_use]
    pub fn config(&self) -> &ReconcileConfig {
        &self.config
    }

    /// Its identity resolver.
    #[must_use]
    pub fn resolver(&self) -> &IdentityResolver {
        &self.resolver
    }

    /// What a store must load into the [`Snapshot`] for `facts`: every stored device that
    /// has one of these ids, a serial with one of these comparison keys (see
    /// [`SerialBlacklist::key`](super::SerialBlacklist::key)), a port with one of these MACs,
    /// a disk with one of these serial keys, or one of these management addresses; plus every
    /// device whose management address is in the scan's networks (for miss counting).
    /// Devices left out are neither matched nor moved from nor counted as missing.
    #[must_use]
    pub fn snapshot_query(&self, facts: &[Facts]) -> SnapshotQuery {
        let serials = &self.config.identity.serials;
        let mut query = SnapshotQuery::default();
        for f in facts {
            query.inventory_ids.extend(f.inventory_id);
            query.serials.extend(f.serial_number.as_deref().and_then(|s| serials.key(s)));
            query.macs.extend(f.all_macs());
            query.addresses.insert(f.address);
            for c in &f.components {
                if let ComponentKind::Disk { serial_number: Some(s), .. } = c {
                    query.disk_serials.extend(serials.key(s));
                }
            }
        }
        query
    }

    /// Plans what `facts` (from one scan, any sources, any order) change in `snapshot`.
    ///
    /// Facts are grouped by address and each address resolved to one device; facts that fail
    /// [`Facts::validate`] or cannot be resolved are listed in [`Plan::unresolved`];
    /// ambiguous ones become [`Change::Conflict`] items and write nothing.
    #[must_use]
    pub fn plan(&self, snapshot: &Snapshot, scan: &Scan, facts: &[Facts]) -> Plan {
        let mut parts = Parts::default();
        let mut by_address: BTreeMap<IpAddr, Vec<Facts>> = BTreeMap::new();
        for f in facts {
            match f.validate() {
                Ok(()) => by_address.entry(f.address).or_default().push(f.clone()),
                Err(e) => parts
                    .unresolved
                    .push(Unresolved { address: f.address, reason: UnresolvedReason::Invalid(e.to_string()) }),
            }
        }
        // Every port and disk the scan saw, at any address: none of them is missing, even when
        // the facts that saw it resolved to nothing or to another device.
        let query = self.snapshot_query(&by_address.values().flatten().cloned().collect::<Vec<_>>());
        let checksums: BTreeMap<IpAddr, _> =
            by_address.iter().map(|(ip, group)| (*ip, facts_checksum(*ip, group))).collect();

        let mut groups: Vec<(IpAddr, Vec<Facts>)> = Vec::with_capacity(by_address.len());
        for (address, group) in by_address {
            if scan.ignored.get(&address).is_some_and(|c| Some(c) == checksums.get(&address)) {
                parts.unresolved.push(Unresolved { address, reason: UnresolvedReason::Ignored });
            } else {
                groups.push((address, group));
            }
        }

        // Addresses that share identity evidence (an inventory id, a serial, a usable MAC) are
        // one machine seen from several addresses (its BMC and its host, say) and are resolved
        // together. Clustering depends on the facts alone, never on stored state, so the next
        // scan of the same facts resolves them the same way: re-applying is a no-op.
        let candidates: Vec<Candidate> = snapshot.devices.iter().map(Candidate::from).collect();
        let index = CandidateIndex::new(&self.resolver, &candidates);
        let mut resolved: Vec<(Vec<IpAddr>, Vec<Facts>, Resolution)> = self
            .clusters(groups, &index)
            .into_iter()
            .map(|(addresses, facts)| {
                let resolution = self.resolver.resolve_indexed(&facts, &index);
                (addresses, facts, resolution)
            })
            .collect();
        // Clusters that resolved to one stored device but report different serials: which one
        // is right is a person's call (otherwise the loser would resolve elsewhere next time).
        let mut serials: BTreeMap<Id<Device>, BTreeSet<String>> = BTreeMap::new();
        for (_, facts, resolution) in &resolved {
            if let Resolution::Unique { device, .. } = resolution {
                serials.entry(*device).or_default().extend(self.resolver.serial_keys(facts));
            }
        }
        for (_, _, resolution) in &mut resolved {
            let Resolution::Unique { device, .. } = *resolution else { continue };
            if let Some(keys) = serials.get(&device).filter(|k| k.len() > 1) {
                *resolution = Resolution::Ambiguous {
                    devices: vec![device],
                    evidence: keys.iter().cloned().map(Evidence::Serial).collect(),
                };
            }
        }

        let mut targets: BTreeMap<DeviceRef, (Vec<IpAddr>, Vec<Facts>)> = BTreeMap::new();
        // Devices no miss is counted on: those in a conflict (they may be the ones seen), and
        // those whose management address answered, even with facts that resolved nothing
        // (invalid, ignored, insufficient): the device is there, only unidentified.
        let answered: BTreeSet<IpAddr> = facts.iter().map(|f| f.address).collect();
        let mut spared: BTreeSet<Id<Device>> = snapshot
            .devices
            .iter()
            .filter(|d| d.management_ip().is_some_and(|ip| answered.contains(&ip)))
            .map(|d| d.id)
            .collect();
        let mut next_new: u32 = 0;
        for (addresses, facts, resolution) in resolved {
            let device = match resolution {
                Resolution::Unique { device, .. } => DeviceRef::Existing(device),
                Resolution::New => {
                    next_new = next_new.saturating_add(1);
                    DeviceRef::New(next_new - 1)
                }
                Resolution::Ambiguous { devices, evidence } => {
                    spared.extend(devices.iter().copied());
                    parts.changes.push(Change::Conflict { addresses, devices, evidence });
                    continue;
                }
                Resolution::Insufficient { missing } => {
                    parts.unresolved.extend(
                        addresses
                            .into_iter()
                            .map(|address| Unresolved { address, reason: UnresolvedReason::Insufficient(missing) }),
                    );
                    continue;
                }
            };
            let slot = targets.entry(device).or_default();
            slot.0.extend(addresses);
            slot.1.extend(facts);
        }

        let lookup = Lookup::new(snapshot, &self.config.identity.serials);
        let mut targets: Vec<Target> = targets
            .into_iter()
            .map(|(device, (addresses, facts))| {
                let current = lookup.existing(device);
                let groups = self
                    .component_groups(&facts)
                    .into_iter()
                    .map(|(key, offers)| {
                        let matched = self.match_component(&key, &offers, current, &lookup);
                        Group { key, offers, matched }
                    })
                    .collect();
                Target { device, addresses, facts, groups }
            })
            .collect();
        let mut claimed = settle_claims(&mut targets, &mut parts);
        // A device holding a port or disk the scan saw was seen, unless that part moves away.
        let seen = lookup.seen(&query);
        spared.extend(
            snapshot
                .devices
                .iter()
                .filter(|d| d.components.iter().any(|c| seen.contains(&c.id) && !claimed.contains(&c.id)))
                .map(|d| d.id),
        );
        claimed.extend(seen);
        // A device whose only identity is in conflict would be created again by every scan,
        // since nothing stored would identify it: it waits for the conflict to be resolved.
        targets.retain(|t| !matches!(t.device, DeviceRef::New(_)) || self.keeps_identity(t));
        for change in &parts.changes {
            if let Change::Conflict { devices, .. } = change {
                spared.extend(devices.iter().copied());
            }
        }

        for target in &targets {
            self.merge_device(&lookup, scan, target, &claimed, &mut parts);
        }
        self.count_device_misses(snapshot, scan, &targets, &spared, &claimed, &mut parts);

        let mut plan = Plan {
            scan: scan.id.clone(),
            items: order(parts.changes),
            bookkeeping: parts.bookkeeping,
            suppressed: parts.suppressed,
            unresolved: parts.unresolved,
            checksums,
        };
        plan.unresolved.sort_by_key(|u| u.address);
        plan
    }

    /// Whether a device created from `target` carries identity once stored: a usable serial,
    /// or a port with a usable MAC that is not in conflict.
    fn keeps_identity(&self, target: &Target) -> bool {
        !self.resolver.serial_keys(&target.facts).is_empty()
            || target.groups.iter().any(|g| {
                matches!(g.key, Key::Mac(m) if self.config.identity.macs.usable(m)) && g.matched != Match::Conflicted
            })
    }

    /// Groups addresses that share an inventory id, a usable serial or a usable MAC, in
    /// address order; each cluster's facts in one list.
    ///
    /// Addresses that reach one stored device with no usable serial (by its id or a MAC) are
    /// linked too: this plan may give that device a serial, which would decide differently
    /// on the next scan which of them it is.
    fn clusters(
        &self,
        groups: Vec<(IpAddr, Vec<Facts>)>,
        index: &CandidateIndex<'_>,
    ) -> Vec<(Vec<IpAddr>, Vec<Facts>)> {
        #[derive(PartialEq, Eq, PartialOrd, Ord)]
        enum Token {
            Id(Id<Device>),
            Serial(String),
            Mac(MacAddress),
            Open(Id<Device>),
        }
        fn root(parent: &mut [usize], mut at: usize) -> usize {
            while parent[at] != at {
                parent[at] = parent[parent[at]];
                at = parent[at];
            }
            at
        }
        let mut parent: Vec<usize> = (0..groups.len()).collect();
        let mut owner: BTreeMap<Token, usize> = BTreeMap::new();
        for (at, (_, facts)) in groups.iter().enumerate() {
            let ids: BTreeSet<Id<Device>> = facts.iter().filter_map(|f| f.inventory_id).collect();
            let macs = self.resolver.usable_macs(facts);
            let open: Vec<Id<Device>> = index.serial_less(&ids, &macs);
            let tokens = ids
                .into_iter()
                .map(Token::Id)
                .chain(self.resolver.serial_keys(facts).into_iter().map(Token::Serial))
                .chain(macs.into_iter().map(Token::Mac))
                .chain(open.into_iter().map(Token::Open));
            for token in tokens {
                let first = *owner.entry(token).or_insert(at);
                let (a, b) = (root(&mut parent, first), root(&mut parent, at));
                // The lower index is the root, so a cluster is keyed by its first address.
                parent[a.max(b)] = a.min(b);
            }
        }
        let mut clusters: BTreeMap<usize, (Vec<IpAddr>, Vec<Facts>)> = BTreeMap::new();
        for (at, (address, facts)) in groups.into_iter().enumerate() {
            let slot = clusters.entry(root(&mut parent, at)).or_default();
            slot.0.push(address);
            slot.1.extend(facts);
        }
        clusters.into_values().collect()
    }

    /// Field values the facts offer, normalised.
    fn field_values(&self, facts: &Facts) -> Vec<(Field, String)> {
        let mut values = Vec::new();
        if let Some(serial) = facts.serial_number.as_deref().and_then(|s| self.config.identity.serials.usable(s)) {
            values.push((Field::SerialNumber, serial));
        }
        if let Some(model) = trimmed(facts.model.as_ref()) {
            values.push((Field::Model, model));
        }
        if let Some(manufacturer) = trimmed(facts.manufacturer.as_ref()) {
            values.push((Field::Manufacturer, manufacturer));
        }
        if let Some(kind) = facts.device_type {
            values.push((Field::DeviceType, kind.as_str().to_owned()));
        }
        if let Some(hostname) = &facts.hostname {
            values.push((Field::Hostname, hostname.as_str().to_owned()));
        }
        if facts.is_management {
            values.push((Field::ManagementIp, facts.address.to_string()));
        }
        if !facts.software.is_empty() {
            let mut lines: Vec<String> = facts
                .software
                .iter()
                .map(|s| match trimmed(s.version.as_ref()) {
                    Some(v) => format!("{} {v}", s.name.trim()),
                    None => s.name.trim().to_owned(),
                })
                .collect();
            lines.sort();
            lines.dedup();
            values.push((Field::Software, lines.join("\n")));
        }
        values
    }

    fn key_of(&self, kind: &ComponentKind) -> Key {
        match kind {
            ComponentKind::Ethernet { mac, .. } => Key::Mac(*mac),
            ComponentKind::Processor { index, .. } => Key::Processor(*index),
            ComponentKind::Memory { index, .. } => Key::Memory(*index),
            ComponentKind::Disk { mount_point, serial_number, .. } => {
                match serial_number.as_deref().and_then(|s| self.config.identity.serials.key(s)) {
                    Some(serial) => Key::DiskSerial(serial),
                    None => Key::DiskMount(mount_point.trim().to_owned()),
                }
            }
        }
    }

    /// The facts' components grouped by key: every source's offer for one component together.
    fn component_groups(&self, facts: &[Facts]) -> BTreeMap<Key, Vec<Offer<ComponentKind>>> {
        let mut groups: BTreeMap<Key, Vec<Offer<ComponentKind>>> = BTreeMap::new();
        for f in facts {
            for kind in &f.components {
                let value = normalise_kind(kind);
                groups.entry(self.key_of(&value)).or_default().push(Offer { value, provenance: provenance_of(f) });
            }
        }
        // A bare MAC (listed, not described as a port by any source) becomes a port with no
        // details, so the device carries its identity evidence.
        let described: BTreeSet<MacAddress> =
            groups.keys().filter_map(|k| if let Key::Mac(m) = k { Some(*m) } else { None }).collect();
        for f in facts {
            for mac in &f.macs {
                if !described.contains(mac) {
                    groups.entry(Key::Mac(*mac)).or_default().push(Offer {
                        value: ComponentKind::Ethernet { mac: *mac, label: None, speed_mbps: None },
                        provenance: provenance_of(f),
                    });
                }
            }
        }
        for offers in groups.values_mut() {
            // The same source reporting the same thing twice is one offer.
            offers.sort_by(|a, b| (a.provenance.rank(), &a.value).cmp(&(b.provenance.rank(), &b.value)));
            offers.dedup_by(|a, b| a.provenance == b.provenance && a.value == b.value);
        }
        // A disk one source knows by serial and another only by mount point is one disk.
        let by_serial_mount: BTreeMap<String, Key> = groups
            .iter()
            .filter(|(k, _)| matches!(k, Key::DiskSerial(_)))
            .flat_map(|(k, offers)| offers.iter().filter_map(|o| mount_of(&o.value)).map(|m| (m.to_owned(), k.clone())))
            .collect();
        let mounts: Vec<Key> = groups.keys().filter(|k| matches!(k, Key::DiskMount(_))).cloned().collect();
        for key in mounts {
            let Key::DiskMount(mount) = &key else { continue };
            let Some(serial_key) = by_serial_mount.get(mount) else { continue };
            if let Some(offers) = groups.remove(&key) {
                groups.entry(serial_key.clone()).or_default().extend(offers);
            }
        }
        groups
    }

    fn match_component(
        &self,
        key: &Key,
        offers: &[Offer<ComponentKind>],
        current: Option<&DeviceState>,
        lookup: &Lookup<'_>,
    ) -> Match {
        let local = |pred: &dyn Fn(&ComponentKind) -> bool| {
            current.and_then(|d| d.components.iter().find(|c| pred(&c.kind))).map(|c| Match::Local(c.id))
        };
        let elsewhere = |key: &Key| lookup.elsewhere(key, current.map(|d| d.id));
        let serials = &self.config.identity.serials;
        match key {
            Key::Mac(mac) => {
                let is_mac = |k: &ComponentKind| matches!(k, ComponentKind::Ethernet { mac: m, .. } if m == mac);
                local(&is_mac).unwrap_or_else(|| match elsewhere(key) {
                    Some((c, d)) if self.config.identity.macs.usable(*mac) => Match::Move(c, d),
                    Some((c, d)) => Match::Clash(c, d),
                    None => Match::New,
                })
            }
            Key::DiskSerial(serial) => {
                let same_serial = |k: &ComponentKind| matches!(k, ComponentKind::Disk { serial_number: Some(s), .. } if serials.key(s).as_ref() == Some(serial));
                let mount = best(offers).and_then(|o| mount_of(&o.value)).unwrap_or_default().to_owned();
                let same_mount = |k: &ComponentKind| mount_of(k) == Some(mount.as_str());
                local(&same_serial)
                    .or_else(|| elsewhere(key).map(|(c, d)| Match::Move(c, d)))
                    .or_else(|| local(&same_mount))
                    .unwrap_or(Match::New)
            }
            Key::DiskMount(mount) => {
                local(&|k: &ComponentKind| mount_of(k) == Some(mount.as_str())).unwrap_or(Match::New)
            }
            Key::Processor(index) => {
                local(&|k: &ComponentKind| matches!(k, ComponentKind::Processor { index: i, .. } if i == index))
                    .unwrap_or(Match::New)
            }
            Key::Memory(index) => {
                local(&|k: &ComponentKind| matches!(k, ComponentKind::Memory { index: i, .. } if i == index))
                    .unwrap_or(Match::New)
            }
        }
    }

    fn merge_device(
        &self,
        lookup: &Lookup<'_>,
        scan: &Scan,
        target: &Target,
        claimed: &BTreeSet<Id<Component>>,
        parts: &mut Parts,
    ) {
        let current = lookup.existing(target.device);
        let mut offered: BTreeMap<Field, Vec<Offer<String>>> = BTreeMap::new();
        for f in &target.facts {
            for (field, value) in self.field_values(f) {
                offered.entry(field).or_default().push(Offer { value, provenance: provenance_of(f) });
            }
        }
        let mut diffs = Vec::new();
        for (field, offers) in offered {
            let held = current.and_then(|d| d.fields.get(&field));
            if let Some(diff) = merge_field(target.device, field, held, &offers, parts) {
                diffs.push(diff);
            }
        }
        match (target.device, current) {
            (DeviceRef::New(key), _) => parts.changes.push(Change::CreateDevice {
                device: key,
                address: target.addresses.first().copied().unwrap_or(IpAddr::from([0, 0, 0, 0])),
                fields: diffs,
            }),
            (DeviceRef::Existing(id), Some(state)) => {
                if !diffs.is_empty() {
                    parts.changes.push(Change::UpdateDevice { device: id, fields: diffs });
                }
                if state.misses != super::Misses::default() {
                    parts.bookkeeping.push(Bookkeeping::DeviceMisses { device: id, misses: super::Misses::default() });
                }
            }
            (DeviceRef::Existing(_), None) => {}
        }

        let mut seen: BTreeSet<Id<Component>> = BTreeSet::new();
        for group in &target.groups {
            let Some(winner) = best(&group.offers) else { continue };
            match group.matched {
                Match::New => parts.changes.push(Change::CreateComponent {
                    device: target.device,
                    kind: winner.value.clone(),
                    provenance: winner.provenance.clone(),
                }),
                Match::Local(id) => {
                    seen.insert(id);
                    let Some(stored) = current.and_then(|d| d.components.iter().find(|c| c.id == id)) else { continue };
                    let DeviceRef::Existing(device) = target.device else { continue };
                    if outranks(winner, &stored.kind, &stored.provenance) {
                        if winner.value != stored.kind {
                            parts.changes.push(Change::UpdateComponent {
                                component: id,
                                device,
                                before: stored.kind.clone(),
                                after: winner.value.clone(),
                                provenance: winner.provenance.clone(),
                            });
                        } else if winner.provenance != stored.provenance {
                            parts.bookkeeping.push(Bookkeeping::ComponentProvenance {
                                component: id,
                                provenance: winner.provenance.clone(),
                            });
                        }
                    }
                    if stored.misses != super::Misses::default() {
                        parts
                            .bookkeeping
                            .push(Bookkeeping::ComponentMisses { component: id, misses: super::Misses::default() });
                    }
                }
                Match::Move(id, from) => {
                    let Some(stored) = lookup.component(from, id) else { continue };
                    let (after, provenance) = if outranks(winner, &stored.kind, &stored.provenance) {
                        (winner.value.clone(), winner.provenance.clone())
                    } else {
                        (stored.kind.clone(), stored.provenance.clone())
                    };
                    parts.changes.push(Change::MoveComponent {
                        component: id,
                        from,
                        to: target.device,
                        before: stored.kind.clone(),
                        after,
                        provenance,
                    });
                }
                Match::Clash(..) | Match::Conflicted => {}
            }
        }

        // Misses: only classes these facts look for, only components not seen and not
        // claimed by another device in this scan.
        let Some(state) = current else { return };
        let covered: BTreeSet<ComponentClass> = target.facts.iter().flat_map(|f| f.covers.iter().copied()).collect();
        let limit = self.config.merge.component_misses_before_delete.max(1);
        for stored in &state.components {
            if seen.contains(&stored.id)
                || claimed.contains(&stored.id)
                || !covered.contains(&ComponentClass::of(&stored.kind))
            {
                continue;
            }
            let misses = stored.misses.missed_by(&scan.id);
            if misses.count >= limit {
                parts.changes.push(Change::DeleteComponent {
                    component: stored.id,
                    device: state.id,
                    misses: misses.count,
                });
            } else if misses != stored.misses {
                parts.bookkeeping.push(Bookkeeping::ComponentMisses { component: stored.id, misses });
            }
        }
    }

    fn count_device_misses(
        &self,
        snapshot: &Snapshot,
        scan: &Scan,
        targets: &[Target],
        spared: &BTreeSet<Id<Device>>,
        claimed: &BTreeSet<Id<Component>>,
        parts: &mut Parts,
    ) {
        let seen: BTreeSet<DeviceRef> = targets.iter().map(|t| t.device).collect();
        for device in &snapshot.devices {
            if seen.contains(&DeviceRef::Existing(device.id))
                || spared.contains(&device.id)
                || !device.management_ip().is_some_and(|ip| scan.covers(ip))
            {
                continue;
            }
            let misses = device.misses.missed_by(&scan.id);
            let delete = self.config.merge.device_misses_before_delete.is_some_and(|n| misses.count >= n.max(1));
            if delete {
                // Children first; a component another device claimed moves out instead.
                for c in device.components.iter().filter(|c| !claimed.contains(&c.id)) {
                    parts.changes.push(Change::DeleteComponent {
                        component: c.id,
                        device: device.id,
                        misses: misses.count,
                    });
                }
                parts.changes.push(Change::DeleteDevice { device: device.id, misses: misses.count });
            } else if misses != device.misses {
                parts.bookkeeping.push(Bookkeeping::DeviceMisses { device: device.id, misses });
            }
        }
    }
}

/// The snapshot indexed by device id and by the component keys that are global (MAC, disk
/// serial), so matching costs hash look-ups, not scans of every device.
struct Lookup<'a> {
    snapshot: &'a Snapshot,
    devices: HashMap<Id<Device>, usize>,
    global: HashMap<Key, Vec<(usize, usize)>>,
}

impl<'a> Lookup<'a> {
    fn new(snapshot: &'a Snapshot, serials: &super::SerialBlacklist) -> Self {
        let mut devices = HashMap::with_capacity(snapshot.devices.len());
        let mut global: HashMap<Key, Vec<(usize, usize)>> = HashMap::new();
        for (d, device) in snapshot.devices.iter().enumerate() {
            devices.insert(device.id, d);
            for (c, component) in device.components.iter().enumerate() {
                let key = match &component.kind {
                    ComponentKind::Ethernet { mac, .. } => Some(Key::Mac(*mac)),
                    ComponentKind::Disk { serial_number: Some(s), .. } => serials.key(s).map(Key::DiskSerial),
                    _ => None,
                };
                if let Some(key) = key {
                    global.entry(key).or_default().push((d, c));
                }
            }
        }
        Self { snapshot, devices, global }
    }

    fn device(&self, id: Id<Device>) -> Option<&'a DeviceState> {
        self.devices.get(&id).map(|&d| &self.snapshot.devices[d])
    }

    fn existing(&self, device: DeviceRef) -> Option<&'a DeviceState> {
        match device {
            DeviceRef::Existing(id) => self.device(id),
            DeviceRef::New(_) => None,
        }
    }

    fn component(&self, device: Id<Device>, id: Id<Component>) -> Option<&'a ComponentState> {
        self.device(device).and_then(|d| d.components.iter().find(|c| c.id == id))
    }

    /// The stored ports and disks with a MAC or disk serial key in `query`.
    fn seen(&self, query: &SnapshotQuery) -> BTreeSet<Id<Component>> {
        let keys =
            query.macs.iter().map(|m| Key::Mac(*m)).chain(query.disk_serials.iter().cloned().map(Key::DiskSerial));
        keys.filter_map(|k| self.global.get(&k))
            .flatten()
            .map(|&(d, c)| self.snapshot.devices[d].components[c].id)
            .collect()
    }

    /// The first component with a global `key` on a device other than `not`.
    fn elsewhere(&self, key: &Key, not: Option<Id<Device>>) -> Option<(Id<Component>, Id<Device>)> {
        self.global.get(key)?.iter().find_map(|&(d, c)| {
            let device = &self.snapshot.devices[d];
            (Some(device.id) != not).then(|| (device.components[c].id, device.id))
        })
    }
}

/// One field: the best offer replaces the held value when it outranks it and the field is
/// not locked; every offer whose value loses is recorded as suppressed.
fn merge_field(
    device: DeviceRef,
    field: Field,
    held: Option<&FieldState>,
    offers: &[Offer<String>],
    parts: &mut Parts,
) -> Option<FieldDiff> {
    let winner = best(offers)?;
    let (value, provenance, reason, diff) = match held {
        Some(h) if h.locked => (&h.value, &h.provenance, SuppressedReason::Locked, None),
        Some(h) if !outranks(winner, &h.value, &h.provenance) => {
            (&h.value, &h.provenance, SuppressedReason::Outranked, None)
        }
        Some(h) if winner.value == h.value => {
            if let (true, DeviceRef::Existing(id)) = (winner.provenance != h.provenance, device) {
                parts.bookkeeping.push(Bookkeeping::FieldProvenance {
                    device: id,
                    field,
                    provenance: winner.provenance.clone(),
                });
            }
            (&winner.value, &winner.provenance, SuppressedReason::Outranked, None)
        }
        _ => {
            let diff = FieldDiff {
                field,
                before: held.map(|h| h.value.clone()),
                after: winner.value.clone(),
                provenance: winner.provenance.clone(),
            };
            (&winner.value, &winner.provenance, SuppressedReason::Outranked, Some(diff))
        }
    };
    let mut losers: Vec<&Offer<String>> = offers.iter().filter(|o| &o.value != value).collect();
    losers.sort_by(|a, b| (a.provenance.rank(), &a.value).cmp(&(b.provenance.rank(), &b.value)));
    losers.dedup_by(|a, b| a.provenance == b.provenance && a.value == b.value);
    for loser in losers {
        parts.suppressed.push(Suppressed {
            device,
            field,
            value: loser.value.clone(),
            offered_by: loser.provenance.clone(),
            held_by: provenance.clone(),
            reason,
        });
    }
    diff
}

/// Finds components claimed by more than one device in this scan, or held by a device they
/// cannot move from: each becomes one conflict and none of the claims writes. Returns every
/// stored component some target claims from another device (moved or in conflict), which its
/// old device must not count as missing.
fn settle_claims(targets: &mut [Target], parts: &mut Parts) -> BTreeSet<Id<Component>> {
    let mut claims: BTreeMap<Id<Component>, Vec<(usize, usize)>> = BTreeMap::new();
    for (t, target) in targets.iter().enumerate() {
        for (g, group) in target.groups.iter().enumerate() {
            if let Match::Local(c) | Match::Move(c, _) | Match::Clash(c, _) = group.matched {
                claims.entry(c).or_default().push((t, g));
            }
        }
    }
    // Two devices creating a port with one MAC, or a disk with one serial, in one plan.
    let mut creates: BTreeMap<Key, Vec<(usize, usize)>> = BTreeMap::new();
    for (t, target) in targets.iter().enumerate() {
        for (g, group) in target.groups.iter().enumerate() {
            if group.matched == Match::New && matches!(group.key, Key::Mac(_) | Key::DiskSerial(_)) {
                creates.entry(group.key.clone()).or_default().push((t, g));
            }
        }
    }
    for (key, claimants) in creates.into_iter().filter(|(_, c)| c.len() > 1) {
        let mut addresses = Vec::new();
        let mut devices = Vec::new();
        for &(t, g) in &claimants {
            addresses.extend(targets[t].addresses.iter().copied());
            if let DeviceRef::Existing(d) = targets[t].device {
                devices.push(d);
            }
            targets[t].groups[g].matched = Match::Conflicted;
        }
        let evidence = match key {
            Key::Mac(m) => Evidence::Macs(vec![m]),
            Key::DiskSerial(s) => Evidence::Serial(s),
            Key::DiskMount(_) | Key::Processor(_) | Key::Memory(_) => continue,
        };
        addresses.sort();
        addresses.dedup();
        parts.changes.push(Change::Conflict { addresses, devices, evidence: vec![evidence] });
    }

    let mut claimed = BTreeSet::new();
    for (component, claimants) in claims {
        let owner = claimants.iter().find_map(|&(t, g)| match targets[t].groups[g].matched {
            Match::Move(_, d) | Match::Clash(_, d) => Some(d),
            _ => None,
        });
        let clash = claimants.len() > 1
            || claimants.iter().any(|&(t, g)| matches!(targets[t].groups[g].matched, Match::Clash(..)));
        if owner.is_some() {
            claimed.insert(component);
        }
        if !clash {
            continue;
        }
        let mut addresses = Vec::new();
        let mut devices: Vec<Id<Device>> = owner.into_iter().collect();
        let mut evidence = Vec::new();
        for &(t, g) in &claimants {
            addresses.extend(targets[t].addresses.iter().copied());
            if let DeviceRef::Existing(d) = targets[t].device {
                devices.push(d);
            }
            match &targets[t].groups[g].key {
                Key::Mac(m) => evidence.push(Evidence::Macs(vec![*m])),
                Key::DiskSerial(s) => evidence.push(Evidence::Serial(s.clone())),
                Key::DiskMount(_) | Key::Processor(_) | Key::Memory(_) => {}
            }
            targets[t].groups[g].matched = Match::Conflicted;
        }
        claimed.insert(component);
        addresses.sort();
        addresses.dedup();
        devices.sort();
        devices.dedup();
        evidence.sort();
        evidence.dedup();
        parts.changes.push(Change::Conflict { addresses, devices, evidence });
    }
    claimed
}

/// Puts changes in dependency order and links each to the items it needs.
fn order(mut changes: Vec<Change>) -> Vec<PlanItem> {
    changes.sort_by_key(Change::phase);
    let mut created: BTreeMap<u32, u32> = BTreeMap::new();
    let mut child_deletes: BTreeMap<Id<Device>, Vec<u32>> = BTreeMap::new();
    let mut items = Vec::with_capacity(changes.len());
    for (seq, change) in (0u32..).zip(changes) {
        let depends_on = match &change {
            Change::CreateDevice { device, .. } => {
                created.insert(*device, seq);
                Vec::new()
            }
            Change::CreateComponent { device: DeviceRef::New(key), .. }
            | Change::MoveComponent { to: DeviceRef::New(key), .. } => created.get(key).copied().into_iter().collect(),
            Change::DeleteComponent { device, .. } => {
                child_deletes.entry(*device).or_default().push(seq);
                Vec::new()
            }
            Change::DeleteDevice { device, .. } => child_deletes.get(device).cloned().unwrap_or_default(),
            _ => Vec::new(),
        };
        items.push(PlanItem { seq, change, depends_on, status: ItemStatus::Pending });
    }
    items
}
