//! The store's part of reconciliation: load a [`Snapshot`], keep plans as item rows for review,
//! apply them with a history row per change, keep conflicts and facts checksums.

use std::collections::BTreeMap;
use std::net::IpAddr;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{Change, Checksum, Facts, Field, Plan, PlanItem, Reconciler, Scan, Snapshot, SnapshotQuery};
use crate::history::Actor;
use crate::{Device, Id, StoreError};

/// What [`ReconcileStore::apply_plan`] did.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ApplyReport {
    /// Items applied by this call.
    pub applied: usize,
    /// Items that failed.
    pub failed: usize,
    /// Items skipped because an item they depend on was not applied.
    pub skipped: usize,
    /// The devices the plan created, by their plan key.
    pub created: BTreeMap<u32, Id<Device>>,
    /// The correlation id every history row of this apply carries.
    pub correlation: String,
}

/// A stored conflict: facts whose identity a person has to decide.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredConflict {
    /// Its id.
    pub id: Id<StoredConflict>,
    /// The plan that found it.
    pub plan: Id<Plan>,
    /// The plan item.
    pub seq: u32,
    /// The conflict ([`Change::Conflict`]).
    pub change: Change,
    /// When it was stored.
    pub created_at: DateTime<Utc>,
    /// Who resolved it, and the note left, once resolved.
    pub resolution: Option<(String, Option<String>)>,
}

/// Persistence of reconciliation: provenance beside the inventory, plans as rows, conflicts,
/// checksums; applying a plan in dependency order, one transaction per device, a history row
/// per changed object in the same transaction.
#[async_trait]
pub trait ReconcileStore: Send + Sync {
    /// The stored devices `query` names, plus those whose management address (as set by
    /// reconciliation) is in the scan's networks, with provenance and miss counters.
    async fn load_snapshot(&self, query: &SnapshotQuery, scan: &Scan) -> Result<Snapshot, StoreError>;
    /// Stores a plan: one row per item (status included), one per bookkeeping update,
    /// suppressed value, unresolved address and checksum; conflicts are also stored for a
    /// person to resolve.
    async fn save_plan(&self, plan: &Plan) -> Result<Id<Plan>, StoreError>;
    /// Items of a stored plan with `seq` after `after` (from the start for `None`), at most
    /// `limit`, in order: a page for review.
    async fn plan_items(&self, plan: Id<Plan>, after: Option<u32>, limit: u32) -> Result<Vec<PlanItem>, StoreError>;
    /// A whole stored plan, with each item's current status.
    async fn load_plan(&self, plan: Id<Plan>) -> Result<Plan, StoreError>;
    /// Applies a stored plan's pending items in dependency order: one transaction per device
    /// (its items, their provenance and history rows), each item with its own status, so one
    /// failure does not stop the rest. A new device is created whole (with its components) or
    /// not at all. An item whose `before` values no longer hold fails as stale. Then the
    /// bookkeeping and the checksums. Safe to run concurrently with itself and other plans.
    async fn apply_plan(&self, plan: Id<Plan>, actor: &Actor) -> Result<ApplyReport, StoreError>;
    /// Conflicts not resolved yet, oldest first.
    async fn open_conflicts(&self, limit: u32) -> Result<Vec<StoredConflict>, StoreError>;
    /// Marks a conflict resolved; false when it was not open.
    async fn resolve_conflict(
        &self,
        conflict: Id<StoredConflict>,
        actor: &Actor,
        note: Option<&str>,
    ) -> Result<bool, StoreError>;
    /// Of `checksums` (address → checksum of its current facts), the addresses whose stored
    /// checksum differs or is missing: what changed since the last applied scan. One query.
    async fn changed_addresses(&self, checksums: &BTreeMap<IpAddr, Checksum>) -> Result<Vec<IpAddr>, StoreError>;
    /// A person's edit of a device field: sets (or with `None` clears) the value with the
    /// person's priority and optionally locks it against every fact; recorded in history.
    async fn set_field(
        &self,
        device: Id<Device>,
        field: Field,
        value: Option<&str>,
        actor: &Actor,
        lock: bool,
    ) -> Result<(), StoreError>;
}

/// Loads the snapshot `facts` need, plans, and stores the plan: the dry run. Apply the returned
/// id with [`ReconcileStore::apply_plan`].
///
/// # Errors
/// The store's.
pub async fn plan_and_store<S: ReconcileStore + ?Sized>(
    store: &S,
    reconciler: &Reconciler,
    scan: &Scan,
    facts: &[Facts],
) -> Result<(Id<Plan>, Plan), StoreError> {
    let snapshot = store.load_snapshot(&reconciler.snapshot_query(facts), scan).await?;
    let plan = reconciler.plan(&snapshot, scan, facts);
    let id = store.save_plan(&plan).await?;
    Ok((id, plan))
}
