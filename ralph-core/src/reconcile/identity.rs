//! The identity resolver: which stored device, if any, a set of facts is about.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::{DeviceState, Facts, MacBlacklist, SerialBlacklist};
use crate::{Device, Id, MacAddress};

/// What the resolver may trust as identity evidence.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct IdentityConfig {
    /// Serials that identify nothing.
    pub serials: SerialBlacklist,
    /// MACs that identify nothing.
    pub macs: MacBlacklist,
}

impl IdentityConfig {
    /// Replaces the serial blacklist.
    #[must_use]
    pub fn with_serials(mut self, serials: SerialBlacklist) -> Self {
        self.serials = serials;
        self
    }

    /// Replaces the MAC blacklist.
    #[must_use]
    pub fn with_macs(mut self, macs: MacBlacklist) -> Self {
        self.macs = macs;
        self
    }
}

/// A stored device as identity candidate: only what identity is decided on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Candidate {
    /// The device.
    pub id: Id<Device>,
    /// Its serial number as stored.
    pub serial_number: Option<String>,
    /// MACs of its Ethernet components.
    pub macs: Vec<MacAddress>,
    /// Its management address.
    pub management_ip: Option<IpAddr>,
}

impl From<&DeviceState> for Candidate {
    fn from(device: &DeviceState) -> Self {
        Self {
            id: device.id,
            serial_number: device.value(super::Field::SerialNumber).map(str::to_owned),
            macs: device.macs(),
            management_ip: device.management_ip(),
        }
    }
}

/// One piece of evidence, strongest first.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(tag = "kind", content = "value", rename_all = "snake_case")]
pub enum Evidence {
    /// The facts named this inventory id.
    InventoryId(Id<Device>),
    /// The facts' normalised serial (comparison form).
    Serial(String),
    /// The usable MACs the facts share with a device.
    Macs(Vec<MacAddress>),
    /// The device's management address is the facts' address: a weak hint only.
    ManagementIp(IpAddr),
}

/// What is missing for the facts to make a new device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Missing {
    /// No usable serial and no usable MAC.
    Identity,
    /// Neither a model nor a device type.
    Model,
}

/// The resolver's verdict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "resolution", rename_all = "snake_case")]
pub enum Resolution {
    /// Exactly one device matches and no evidence points elsewhere.
    Unique {
        /// The device.
        device: Id<Device>,
        /// The strongest evidence that matched.
        evidence: Evidence,
    },
    /// No device matches; the facts are enough to propose one.
    New,
    /// Evidence points at several devices, disagrees with itself, names a device that does
    /// not exist, or only a management address matches. Nothing is written: a person decides.
    Ambiguous {
        /// The devices the evidence points at (may be empty for a stale inventory id).
        devices: Vec<Id<Device>>,
        /// The evidence involved.
        evidence: Vec<Evidence>,
    },
    /// No device matches and the facts cannot propose one.
    Insufficient {
        /// What is missing.
        missing: Missing,
    },
}

/// Ranks identity evidence: inventory id, then normalised serial, then the MAC set; the
/// management address is only a hint. Pure; holds only its configuration.
///
/// ```
/// use ralph_core::{Id, MacAddress};
/// use ralph_core::reconcile::{Candidate, Facts, IdentityConfig, IdentityResolver, Resolution, Source};
///
/// let resolver = IdentityResolver::new(IdentityConfig::default());
/// let stored = [Candidate {
///     id: Id::new(7),
///     serial_number: Some("CZ3123ABC".into()),
///     macs: vec![],
///     management_ip: None,
/// }];
/// let mut facts = Facts::new("10.0.0.5".parse()?, Source::new("snmp", 10)?, chrono::Utc::now());
/// facts.serial_number = Some(" cz3123abc ".into());
/// assert!(matches!(resolver.resolve(&[facts.clone()], &stored), Resolution::Unique { device, .. } if device == Id::new(7)));
///
/// facts.serial_number = Some("To Be Filled By O.E.M.".into()); // a placeholder proves nothing
/// assert!(matches!(resolver.resolve(&[facts], &stored), Resolution::Insufficient { .. }));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Default)]
pub struct IdentityResolver {
    config: IdentityConfig,
}

impl IdentityResolver {
    /// A resolver with `config`.
    #[must_use]
    pub fn new(config: IdentityConfig) -> Self {
        Self { config }
    }

    /// Its configuration.
    #[must_use]
    pub fn config(&self) -> &IdentityConfig {
        &self.config
    }

    /// Usable serial keys in `facts`.
    pub(crate) fn serial_keys(&self, facts: &[Facts]) -> BTreeSet<String> {
        facts.iter().filter_map(|f| f.serial_number.as_deref()).filter_map(|s| self.config.serials.key(s)).collect()
    }

    /// Usable MACs in `facts`.
    pub(crate) fn usable_macs(&self, facts: &[Facts]) -> BTreeSet<MacAddress> {
        facts.iter().flat_map(Facts::all_macs).filter(|m| self.config.macs.usable(*m)).collect()
    }

    /// Resolves the facts one address produced (from one or several sources) against the
    /// candidates.
    ///
    /// A candidate that only shares MACs with the facts but holds a different usable serial
    /// is not a match: the serial ranks higher and says it is another device (the port moved).
    #[must_use]
    pub fn resolve(&self, facts: &[Facts], candidates: &[Candidate]) -> Resolution {
        self.resolve_indexed(facts, &CandidateIndex::new(self, candidates))
    }

    /// [`IdentityResolver::resolve`] against an index built once for many resolutions.
    #[must_use]
    pub fn resolve_indexed(&self, facts: &[Facts], index: &CandidateIndex<'_>) -> Resolution {
        let ids: BTreeSet<Id<Device>> = facts.iter().filter_map(|f| f.inventory_id).collect();
        let serials = self.serial_keys(facts);
        let macs = self.usable_macs(facts);

        let mut matched: BTreeMap<Id<Device>, Vec<Evidence>> = BTreeMap::new();
        let mut stale = Vec::new();
        for id in &ids {
            if index.by_id.contains_key(id) {
                matched.entry(*id).or_default().push(Evidence::InventoryId(*id));
            } else {
                stale.push(Evidence::InventoryId(*id));
            }
        }
        for serial in &serials {
            for &at in index.by_serial.get(serial).into_iter().flatten() {
                matched.entry(index.candidates[at].id).or_default().push(Evidence::Serial(serial.clone()));
            }
        }
        let mut shared: BTreeMap<usize, Vec<MacAddress>> = BTreeMap::new();
        for mac in &macs {
            for &at in index.by_mac.get(mac).into_iter().flatten() {
                shared.entry(at).or_default().push(*mac);
            }
        }
        for (at, mut macs) in shared {
            macs.dedup();
            let serial_disagrees =
                index.serial_keys[at].as_ref().is_some_and(|s| !serials.is_empty() && !serials.contains(s));
            if !serial_disagrees {
                matched.entry(index.candidates[at].id).or_default().push(Evidence::Macs(macs));
            }
        }

        if !stale.is_empty() || serials.len() > 1 || matched.len() > 1 {
            let mut evidence: Vec<Evidence> = stale;
            evidence.extend(matched.values().flatten().cloned());
            if serials.len() > 1 {
                evidence.extend(serials.iter().cloned().map(Evidence::Serial));
            }
            evidence.sort();
            evidence.dedup();
            return Resolution::Ambiguous { devices: matched.into_keys().collect(), evidence };
        }
        if let Some((device, mut evidence)) = matched.into_iter().next() {
            evidence.sort();
            let strongest = evidence.swap_remove(0);
            return Resolution::Unique { device, evidence: strongest };
        }

        if serials.is_empty() && macs.is_empty() {
            return Resolution::Insufficient { missing: Missing::Identity };
        }
        // A device known only by its management address may be this one or may not: the
        // address could have been reassigned. Only a device with no identity of its own is
        // in doubt; one with a serial or MACs that did not match is another device.
        let addresses: BTreeSet<IpAddr> = facts.iter().map(|f| f.address).collect();
        let mut hinted: Vec<(Id<Device>, IpAddr)> = addresses
            .iter()
            .flat_map(|ip| index.by_ip.get(ip).into_iter().flatten().map(move |&at| (at, *ip)))
            .filter(|&(at, _)| {
                index.serial_keys[at].is_none()
                    && !index.candidates[at].macs.iter().any(|m| self.config.macs.usable(*m))
            })
            .map(|(at, ip)| (index.candidates[at].id, ip))
            .collect();
        if !hinted.is_empty() {
            hinted.sort();
            hinted.dedup();
            let evidence = hinted.iter().map(|(_, ip)| Evidence::ManagementIp(*ip)).collect();
            return Resolution::Ambiguous { devices: hinted.into_iter().map(|(id, _)| id).collect(), evidence };
        }
        if facts.iter().all(|f| f.model.as_deref().is_none_or(|m| m.trim().is_empty()) && f.device_type.is_none()) {
            return Resolution::Insufficient { missing: Missing::Model };
        }
        Resolution::New
    }
}

/// Candidates indexed by id, serial key, usable MAC and management address, so resolving
/// many addresses against many devices costs a few hash look-ups each.
#[derive(Debug)]
pub struct CandidateIndex<'a> {
    candidates: &'a [Candidate],
    serial_keys: Vec<Option<String>>,
    by_id: HashMap<Id<Device>, usize>,
    by_serial: HashMap<String, Vec<usize>>,
    by_mac: HashMap<MacAddress, Vec<usize>>,
    by_ip: HashMap<IpAddr, Vec<usize>>,
}

impl<'a> CandidateIndex<'a> {
    /// Candidates without a usable serial reached by one of `ids` or `macs`.
    pub(crate) fn serial_less(&self, ids: &BTreeSet<Id<Device>>, macs: &BTreeSet<MacAddress>) -> Vec<Id<Device>> {
        let by_id = ids.iter().filter_map(|id| self.by_id.get(id).copied());
        let by_mac = macs.iter().filter_map(|m| self.by_mac.get(m)).flatten().copied();
        by_id.chain(by_mac).filter(|&at| self.serial_keys[at].is_none()).map(|at| self.candidates[at].id).collect()
    }

    /// Indexes `candidates` under `resolver`'s blacklists.
    #[must_use]
    pub fn new(resolver: &IdentityResolver, candidates: &'a [Candidate]) -> Self {
        let mut index = Self {
            candidates,
            serial_keys: Vec::with_capacity(candidates.len()),
            by_id: HashMap::with_capacity(candidates.len()),
            by_serial: HashMap::new(),
            by_mac: HashMap::new(),
            by_ip: HashMap::new(),
        };
        for (at, c) in candidates.iter().enumerate() {
            index.by_id.insert(c.id, at);
            let key = c.serial_number.as_deref().and_then(|s| resolver.config.serials.key(s));
            if let Some(key) = &key {
                index.by_serial.entry(key.clone()).or_default().push(at);
            }
            index.serial_keys.push(key);
            for mac in c.macs.iter().filter(|m| resolver.config.macs.usable(**m)) {
                index.by_mac.entry(*mac).or_default().push(at);
            }
            if let Some(ip) = c.management_ip {
                index.by_ip.entry(ip).or_default().push(at);
            }
        }
        index
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DeviceType;
    use crate::reconcile::Source;

    fn mac(s: &str) -> MacAddress {
        MacAddress::parse(s).expect("mac")
    }

    fn facts() -> Facts {
        let at = chrono::DateTime::from_timestamp(1_700_000_000, 0).expect("time");
        Facts::new("10.0.0.5".parse().expect("ip"), Source::new("snmp", 10).expect("source"), at)
    }

    fn candidate(id: i64, serial: Option<&str>, macs: &[&str]) -> Candidate {
        Candidate {
            id: Id::new(id),
            serial_number: serial.map(str::to_owned),
            macs: macs.iter().map(|m| mac(m)).collect(),
            management_ip: None,
        }
    }

    #[test]
    fn evidence_is_ranked_id_then_serial_then_macs() {
        let r = IdentityResolver::default();
        let stored =
            [candidate(1, Some("S1"), &["a0:36:9f:00:00:01"]), candidate(2, Some("S2"), &["a0:36:9f:00:00:02"])];
        let mut f = facts();
        f.macs = vec![mac("a0:36:9f:00:00:02")];
        assert_eq!(
            r.resolve(&[f.clone()], &stored),
            Resolution::Unique { device: Id::new(2), evidence: Evidence::Macs(vec![mac("a0:36:9f:00:00:02")]) }
        );
        f.serial_number = Some("s2".into());
        assert_eq!(
            r.resolve(&[f.clone()], &stored),
            Resolution::Unique { device: Id::new(2), evidence: Evidence::Serial("S2".into()) }
        );
        f.inventory_id = Some(Id::new(2));
        assert_eq!(
            r.resolve(&[f], &stored),
            Resolution::Unique { device: Id::new(2), evidence: Evidence::InventoryId(Id::new(2)) }
        );
    }

    #[test]
    fn disagreeing_evidence_is_ambiguous() {
        let r = IdentityResolver::default();
        let stored = [candidate(1, Some("S1"), &[]), candidate(2, None, &["a0:36:9f:00:00:02"])];
        let mut f = facts();
        f.serial_number = Some("S1".into());
        f.macs = vec![mac("a0:36:9f:00:00:02")];
        assert!(matches!(r.resolve(&[f], &stored), Resolution::Ambiguous { devices, .. } if devices.len() == 2));

        let mut f = facts();
        f.inventory_id = Some(Id::new(99));
        assert!(matches!(r.resolve(&[f], &stored), Resolution::Ambiguous { devices, .. } if devices.is_empty()));

        let (mut a, mut b) = (facts(), facts());
        a.serial_number = Some("X1".into());
        b.serial_number = Some("X2".into());
        assert!(matches!(r.resolve(&[a, b], &stored), Resolution::Ambiguous { .. }));
    }

    #[test]
    fn a_port_on_a_device_with_another_serial_is_not_identity() {
        let r = IdentityResolver::default();
        let stored = [candidate(1, Some("S1"), &["a0:36:9f:00:00:01"])];
        let mut f = facts();
        f.serial_number = Some("S9".into());
        f.macs = vec![mac("a0:36:9f:00:00:01")];
        f.device_type = Some(DeviceType::RackServer);
        assert_eq!(r.resolve(&[f], &stored), Resolution::New);
    }

    #[test]
    fn placeholders_and_virtual_macs_are_no_evidence() {
        let r = IdentityResolver::default();
        let stored = [candidate(1, Some("To Be Filled By O.E.M."), &["00:50:56:00:00:01"])];
        let mut f = facts();
        f.serial_number = Some("to be filled by o.e.m.".into());
        f.macs = vec![mac("00:50:56:00:00:01"), mac("02:42:ac:11:00:02")];
        f.model = Some("VMware Virtual Platform".into());
        assert_eq!(r.resolve(&[f], &stored), Resolution::Insufficient { missing: Missing::Identity });
    }

    #[test]
    fn new_needs_identity_and_model_or_type() {
        let r = IdentityResolver::default();
        let mut f = facts();
        f.serial_number = Some("S1".into());
        assert_eq!(r.resolve(&[f.clone()], &[]), Resolution::Insufficient { missing: Missing::Model });
        f.model = Some("  ".into());
        assert_eq!(r.resolve(&[f.clone()], &[]), Resolution::Insufficient { missing: Missing::Model });
        f.model = Some("R640".into());
        assert_eq!(r.resolve(&[f.clone()], &[]), Resolution::New);
        f.model = None;
        f.device_type = Some(DeviceType::Switch);
        assert_eq!(r.resolve(&[f], &[]), Resolution::New);
    }

    #[test]
    fn management_ip_alone_is_only_a_hint() {
        let r = IdentityResolver::default();
        let mut bare = candidate(1, None, &[]);
        bare.management_ip = Some("10.0.0.5".parse().expect("ip"));
        let mut other = candidate(2, Some("S2"), &[]);
        other.management_ip = Some("10.0.0.5".parse().expect("ip"));
        let mut f = facts();
        f.serial_number = Some("S1".into());
        f.model = Some("R640".into());
        assert!(matches!(
            r.resolve(&[f.clone()], &[bare]),
            Resolution::Ambiguous { devices, evidence } if devices == vec![Id::new(1)] && matches!(evidence[0], Evidence::ManagementIp(_))
        ));
        assert_eq!(r.resolve(&[f], &[other]), Resolution::New, "a device with another serial is another device");
    }
}
