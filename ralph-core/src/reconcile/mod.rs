//! Reconciliation, the pure part: what sources learnt about addresses ([`Facts`]) becomes a
//! [`Plan`] of inventory changes, explainably.
//!
//! 1. [`IdentityResolver`] decides which stored device facts are about: inventory id, then
//!    normalised serial, then the MAC set, with placeholder serials ([`SerialBlacklist`]) and
//!    virtual or locally administered MACs ([`MacBlacklist`]) refused as evidence; the
//!    management address is only a hint. Ambiguous evidence is a conflict, never a guess.
//!    The [`Reconciler`] resolves addresses that share evidence (a BMC and its host) as one
//!    machine, so a plan never changes how the next scan of the same facts resolves.
//! 2. [`Reconciler`] merges each device's facts field by field: the highest-ranked source
//!    wins, each value keeps its [`Provenance`], locked fields and higher-priority values are
//!    kept and the losing values recorded as [`Suppressed`]. Components match by key (Ethernet
//!    by MAC, disks by serial then mount point, processors and memory by index), so one that
//!    moved device is moved with its id. Misses are counted per distinct scan, only for the
//!    component classes a source [covers](Facts::covers) and the devices in a [`Scan`]'s
//!    networks; deletion follows only after N in a row ([`MergeConfig`]).
//! 3. The [`Plan`] lists create / update / move / delete / conflict items in dependency
//!    order, each with its own [`ItemStatus`], plus provenance [`Bookkeeping`] and a
//!    [`Checksum`] per address. [`Snapshot::apply`] is the reference semantics a store
//!    follows.
//!
//! Everything here is plain serde data keyed by [`Id`](crate::Id)s, so a store can persist
//! provenance, plans (item by item) and checksums as they are. A store's part, in order:
//! load the devices [`Reconciler::snapshot_query`] names (plus those in the scan's networks)
//! with their provenance into a [`Snapshot`]; [`Reconciler::plan`]; keep the plan's items as
//! rows for review; apply them in `seq` order following [`Snapshot::apply`] (a failed item
//! skips only the items whose `depends_on` names it), then the [`Bookkeeping`]; keep
//! [`Plan::checksums`] to skip unchanged addresses next time.
//!
//! ```
//! use ralph_core::reconcile::{Change, Facts, Field, Provenance, Reconciler, Scan, SequentialIds, Snapshot, Source};
//! use ralph_core::DeviceType;
//!
//! let at = chrono::Utc::now();
//! let mut snmp = Facts::new("10.0.0.5".parse()?, Source::new("snmp", 10)?, at);
//! snmp.serial_number = Some("CZ3123ABC".into());
//! snmp.model = Some("DL360".into());
//! let mut redfish = Facts::new("10.0.0.5".parse()?, Source::new("redfish", 50)?, at);
//! redfish.serial_number = Some("CZ3123ABC".into());
//! redfish.model = Some("ProLiant DL360 Gen10".into());
//! redfish.device_type = Some(DeviceType::RackServer);
//!
//! let reconciler = Reconciler::default();
//! let mut snapshot = Snapshot::default();
//! let mut plan = reconciler.plan(&snapshot, &Scan::new("scan-1"), &[snmp, redfish.clone()]);
//! assert!(matches!(&plan.items[0].change, Change::CreateDevice { fields, .. }
//!     if fields.iter().any(|f| f.field == Field::Model && f.after == "ProLiant DL360 Gen10")));
//! assert_eq!(plan.suppressed.len(), 1); // snmp's model, outranked, kept on record
//! let created = snapshot.apply(&mut plan, &mut SequentialIds { next_device: 1, next_component: 1 });
//!
//! // A person fixes the model and locks it; no scan source overrides it afterwards.
//! let device = snapshot.devices.iter_mut().find(|d| d.id == created[&0]).unwrap();
//! device.set_by_person(Field::Model, "DL360 Gen10 Plus", Provenance::person("alice", 100, at), true);
//! let plan = reconciler.plan(&snapshot, &Scan::new("scan-2"), &[redfish]);
//! assert!(!plan.writes());
//! assert_eq!(plan.suppressed[0].value, "ProLiant DL360 Gen10");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod blacklist;
mod checksum;
mod facts;
mod identity;
mod merge;
mod plan;
mod state;
mod store;
#[cfg(test)]
mod tests;

pub use blacklist::{MacBlacklist, MacPrefix, SerialBlacklist, normalise_serial};
pub use checksum::{Checksum, facts_checksum};
pub use facts::{ComponentClass, Facts, Software, Source};
pub use identity::{Candidate, CandidateIndex, Evidence, IdentityConfig, IdentityResolver, Missing, Resolution};
pub use merge::{MergeConfig, ReconcileConfig, Reconciler, SnapshotQuery};
pub use plan::{
    Bookkeeping, Change, DeviceRef, FieldDiff, IdAllocator, ItemStatus, Plan, PlanCounts, PlanItem, Scan,
    SequentialIds, Suppressed, SuppressedReason, Unresolved, UnresolvedReason,
};
pub use state::{ComponentState, DeviceState, Field, FieldState, Misses, Provenance, ScanId, Snapshot};
pub use store::{ApplyReport, ReconcileStore, StoredConflict, plan_and_store};
