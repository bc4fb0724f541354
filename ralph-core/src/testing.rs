//! An in-memory reference store for tests (feature `testing`): [`MemoryStore`].
//!
//! [`MemoryStore`] implements [`UserStore`](crate::UserStore), [`JobQueue`](crate::JobQueue)
//! and [`ScanResultStore`](crate::ScanResultStore) with the semantics the SQL stores of
//! `ralph-store` have (and that its conformance suite checks): the same validation, the same
//! error classes, the same `mirror_user` outcomes, the same lease rules. It keeps everything in
//! one `Mutex`-protected state, so it is fast, needs no database and no runtime, and each call
//! is atomic: a host application or a crate such as `ralph-ldap` can test against it without
//! a database server. Clones share the state.
//!
//! The inventory traits ([`Repository`](crate::Repository),
//! [`InventoryStore`](crate::InventoryStore)) are not implemented here: use a SQLite store from
//! `ralph-store` for those.
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! use ralph_core::testing::MemoryStore;
//! use ralph_core::{MirrorChange, User, UserMirror, UserSource, UserStore};
//!
//! let store = MemoryStore::new();
//! let user = User { source: UserSource::Ldap, ..User::new("jan")? };
//! let mirror = UserMirror { user, profile: None, groups: None, group_scope: Default::default() };
//! assert_eq!(store.mirror_user(&mirror).await?.change, MirrorChange::Created);
//! assert_eq!(store.clone().mirror_user(&mirror).await?.change, MirrorChange::Unchanged);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # }).unwrap();
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::{Group, Id, IpAddress, Profile, Record, StoreError, User, ip_to_u128};

mod queue;
mod scan;
mod users;

/// An in-memory implementation of the core storage and queue traits, for tests.
///
/// Cheap to clone: clones share one state behind a `Mutex`, so a clone handed to a spawned
/// task sees and makes the same changes. Every trait call takes the lock once and either
/// writes everything or nothing.
#[derive(Debug, Clone, Default)]
pub struct MemoryStore {
    state: Arc<Mutex<State>>,
}

impl MemoryStore {
    /// An empty store.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the queues' retry policy: a job claimed `max_attempts` times whose lease expired
    /// again is dead-lettered by the next claim (the default: [`crate::RetryPolicy::default`]).
    #[must_use]
    pub fn with_job_policy(self, policy: crate::RetryPolicy) -> Self {
        self.lock().job_policy = Some(policy);
        self
    }

    /// Stores an address record directly (what the inventory's `Repository<IpAddress>` does
    /// in a SQL store), for instance a buried address a scan must leave alone.
    ///
    /// # Errors
    /// [`StoreError::Invalid`] when the record breaks its invariants, [`StoreError::Conflict`]
    /// when the address is already stored, [`StoreError::Reference`] when it names a device
    /// (this store holds no devices).
    pub fn insert_ip_address(&self, record: &IpAddress) -> Result<Id<IpAddress>, StoreError> {
        use crate::Entity as _;
        record.validate().map_err(|e| StoreError::invalid(IpAddress::NAME, e))?;
        if let Some(device) = record.device {
            return Err(StoreError::Reference {
                entity: IpAddress::NAME,
                detail: format!("device {device} not found"),
            });
        }
        let mut state = self.lock();
        let key = ip_to_u128(record.address);
        if state.ip_index.contains_key(&key) {
            return Err(StoreError::Conflict { entity: IpAddress::NAME, constraint: "address".into() });
        }
        let id = state.next_id("ip_addresses");
        state.ips.insert(id, record.clone());
        state.ip_index.insert(key, id);
        Ok(Id::new(id))
    }

    /// Every stored address record, in address order (what scans recorded included).
    #[must_use]
    pub fn ip_addresses(&self) -> Vec<Record<IpAddress>> {
        let state = self.lock();
        state
            .ip_index
            .values()
            .filter_map(|id| state.ips.get(id).map(|ip| Record { id: Id::new(*id), value: ip.clone() }))
            .collect()
    }

    /// The state, locked. A panic in another holder cannot leave it half-written (every
    /// method checks first and writes last), so a poisoned lock is taken over.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Everything the store holds: the tables of the SQL schema, as maps.
#[derive(Debug, Default)]
struct State {
    /// Last id handed out per table.
    ids: BTreeMap<&'static str, i64>,
    /// Users by username (compared byte for byte, like the SQL stores' binary collations).
    users: BTreeMap<String, UserRow>,
    /// Every group ever created (groups outlive their members, as rows do).
    groups: BTreeSet<Group>,
    /// Jobs by id.
    jobs: BTreeMap<i64, queue::JobRow>,
    /// Paused queues.
    paused: BTreeSet<String>,
    /// Worker heartbeats by name.
    workers: BTreeMap<String, crate::WorkerBeat>,
    /// The queues' retry policy for expired leases (`None`: the default policy).
    job_policy: Option<crate::RetryPolicy>,
    /// IP address rows by id.
    ips: BTreeMap<i64, IpAddress>,
    /// IP address ids by [`crate::ip_to_u128`] of the address (the SQL stores' unique `ip_key`).
    ip_index: BTreeMap<u128, i64>,
    /// Recorded scan batch keys and when.
    batches: BTreeMap<String, chrono::DateTime<chrono::Utc>>,
}

impl State {
    /// The next id of `table`, starting at 1.
    fn next_id(&mut self, table: &'static str) -> i64 {
        let id = self.ids.entry(table).or_insert(0);
        *id += 1;
        *id
    }
}

/// One user's rows: account, password hash, profile and memberships.
#[derive(Debug, Clone)]
struct UserRow {
    id: i64,
    user: User,
    password_hash: Option<String>,
    profile: Option<Profile>,
    groups: BTreeSet<Group>,
}
