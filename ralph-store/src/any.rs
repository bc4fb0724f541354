//! [`AnyStore`]: the backend chosen at run time from the URL scheme.

use std::collections::BTreeMap;
use std::net::IpAddr;

use async_trait::async_trait;
use ipnetwork::IpNetwork;
use std::time::Duration;

use ralph_core::{
    AssetStatus, CappedCount, Component, DataCenter, Device, FailOutcome, Group, Id, InventoryStore, IpAddress, Job,
    JobCursor, JobFilter, JobInfo, JobQueue, JobState, Network, NetworkEnvironment, Observation, Profile, QueueAdmin,
    QueueOverview, QueueStats, Rack, Record, RecordSummary, Repository, RetryPolicy, ScanResultStore, StoreError,
    TransitionGraph, User, UserMirror, UserSource, UserStore, ValidationError, WorkerBeat,
};

use ralph_core::history::{Actor, HistoryEntry, HistoryStore, ObjectState, Retention};
use ralph_core::reconcile::{
    ApplyReport, Checksum, Field, Plan, PlanItem, ReconcileStore, Scan, Snapshot, SnapshotQuery, StoredConflict,
};

use crate::PoolConfig;
use crate::sql::inventory::Table;

/// A store on whichever backend the URL names (`sqlite:`, `postgres:`/`postgresql:`,
/// `mysql:`/`mariadb:`), among those compiled in. It implements the same traits (inventory,
/// users, job queue, scan results, reconciliation, history) by handing each call to the store inside.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum AnyStore {
    /// SQLite.
    #[cfg(feature = "sqlite")]
    Sqlite(crate::SqliteStore),
    /// PostgreSQL.
    #[cfg(feature = "postgres")]
    Postgres(crate::PgStore),
    /// MySQL or MariaDB.
    #[cfg(feature = "mysql")]
    MySql(crate::MySqlStore),
}

/// Calls the same method on whichever store is inside.
macro_rules! dispatch {
    ($self:ident, $store:ident => $call:expr) => {
        match $self {
            #[cfg(feature = "sqlite")]
            AnyStore::Sqlite($store) => $call,
            #[cfg(feature = "postgres")]
            AnyStore::Postgres($store) => $call,
            #[cfg(feature = "mysql")]
            AnyStore::MySql($store) => $call,
        }
    };
}

impl AnyStore {
    /// Connects with the default [`PoolConfig`] and runs the migrations.
    ///
    /// # Errors
    /// [`StoreError::Invalid`] for a scheme that is unknown or whose feature is off;
    /// otherwise as [`SqlStore::connect_with`](crate::SqlStore::connect_with).
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Self::connect_with(url, &PoolConfig::default()).await
    }

    /// Connects with `config` and runs the migrations.
    ///
    /// # Errors
    /// As [`AnyStore::connect`].
    pub async fn connect_with(url: &str, config: &PoolConfig) -> Result<Self, StoreError> {
        // Only the scheme goes into an error: the rest of the URL may hold a password.
        let scheme = url.split(':').next().unwrap_or_default().to_ascii_lowercase();
        match scheme.as_str() {
            #[cfg(feature = "sqlite")]
            "sqlite" => crate::SqliteStore::connect_with(url, config).await.map(Self::Sqlite),
            #[cfg(feature = "postgres")]
            "postgres" | "postgresql" => crate::PgStore::connect_with(url, config).await.map(Self::Postgres),
            #[cfg(feature = "mysql")]
            "mysql" | "mariadb" => {
                let url = url.replacen("mariadb:", "mysql:", 1);
                crate::MySqlStore::connect_with(&url, config).await.map(Self::MySql)
            }
            _ => Err(StoreError::invalid(
                "store",
                ValidationError::UnknownName { what: "database URL scheme (or its feature is off)", input: scheme },
            )),
        }
    }

    /// A handle on the same pool whose writes are recorded in the change history as made by
    /// `actor`; see [`SqlStore::acting_as`](crate::SqlStore::acting_as).
    #[must_use]
    pub fn acting_as(&self, actor: Actor) -> Self {
        match self {
            #[cfg(feature = "sqlite")]
            Self::Sqlite(s) => Self::Sqlite(s.acting_as(actor)),
            #[cfg(feature = "postgres")]
            Self::Postgres(s) => Self::Postgres(s.acting_as(actor)),
            #[cfg(feature = "mysql")]
            Self::MySql(s) => Self::MySql(s.acting_as(actor)),
        }
    }

    /// A handle on the same pool that records scan results without their change history; see
    /// [`SqlStore::without_scan_history`](crate::SqlStore::without_scan_history).
    #[must_use]
    pub fn without_scan_history(&self) -> Self {
        match self {
            #[cfg(feature = "sqlite")]
            Self::Sqlite(s) => Self::Sqlite(s.clone().without_scan_history()),
            #[cfg(feature = "postgres")]
            Self::Postgres(s) => Self::Postgres(s.clone().without_scan_history()),
            #[cfg(feature = "mysql")]
            Self::MySql(s) => Self::MySql(s.clone().without_scan_history()),
        }
    }

    /// Closes every connection; later calls fail.
    pub async fn close(&self) {
        dispatch!(self, s => s.close().await);
    }

    /// The backend's name: `"SQLite"`, `"PostgreSQL"` or `"MySQL"`.
    #[must_use]
    pub fn backend(&self) -> &'static str {
        use sqlx::Database as _;
        match self {
            #[cfg(feature = "sqlite")]
            Self::Sqlite(_) => sqlx::Sqlite::NAME,
            #[cfg(feature = "postgres")]
            Self::Postgres(_) => sqlx::Postgres::NAME,
            #[cfg(feature = "mysql")]
            Self::MySql(_) => sqlx::MySql::NAME,
        }
    }

    /// How many write transactions were retried after a transient conflict; see
    /// [`SqlStore::conflict_retries`](crate::SqlStore::conflict_retries).
    #[must_use]
    pub fn conflict_retries(&self) -> u64 {
        dispatch!(self, s => s.conflict_retries())
    }

    /// How many writes failed with [`StoreError::Contended`]; see
    /// [`SqlStore::conflicts_exhausted`](crate::SqlStore::conflicts_exhausted).
    #[must_use]
    pub fn conflicts_exhausted(&self) -> u64 {
        dispatch!(self, s => s.conflicts_exhausted())
    }
}

#[async_trait]
impl<T: Table> Repository<T> for AnyStore {
    async fn create(&self, value: &T) -> Result<Id<T>, StoreError> {
        dispatch!(self, s => s.create(value).await)
    }
    async fn get(&self, id: Id<T>) -> Result<Record<T>, StoreError> {
        dispatch!(self, s => s.get(id).await)
    }
    async fn list(&self) -> Result<Vec<Record<T>>, StoreError> {
        dispatch!(self, s => Repository::<T>::list(s).await)
    }
    async fn update(&self, id: Id<T>, value: &T) -> Result<(), StoreError> {
        dispatch!(self, s => s.update(id, value).await)
    }
    async fn delete(&self, id: Id<T>) -> Result<(), StoreError> {
        dispatch!(self, s => s.delete(id).await)
    }
}

#[async_trait]
impl InventoryStore for AnyStore {
    async fn find_data_center(&self, name: &str) -> Result<Option<Record<DataCenter>>, StoreError> {
        dispatch!(self, s => s.find_data_center(name).await)
    }
    async fn rack_devices(&self, rack: Id<Rack>) -> Result<Vec<Record<Device>>, StoreError> {
        dispatch!(self, s => s.rack_devices(rack).await)
    }
    async fn find_device_by_serial(&self, serial: &str) -> Result<Option<Record<Device>>, StoreError> {
        dispatch!(self, s => s.find_device_by_serial(serial).await)
    }
    async fn device_components(&self, device: Id<Device>) -> Result<Vec<Record<Component>>, StoreError> {
        dispatch!(self, s => s.device_components(device).await)
    }
    async fn transition_device(
        &self,
        id: Id<Device>,
        graph: &TransitionGraph,
        name: &str,
    ) -> Result<AssetStatus, StoreError> {
        dispatch!(self, s => s.transition_device(id, graph, name).await)
    }
    async fn network_containing(&self, ip: IpAddr) -> Result<Option<Record<Network>>, StoreError> {
        dispatch!(self, s => s.network_containing(ip).await)
    }
    async fn environment_networks(
        &self,
        environment: Id<NetworkEnvironment>,
    ) -> Result<Vec<Record<Network>>, StoreError> {
        dispatch!(self, s => s.environment_networks(environment).await)
    }
    async fn find_ip(&self, ip: IpAddr) -> Result<Option<Record<IpAddress>>, StoreError> {
        dispatch!(self, s => s.find_ip(ip).await)
    }
    async fn ip_addresses_in(
        &self,
        range: IpNetwork,
        include_buried: bool,
    ) -> Result<Vec<Record<IpAddress>>, StoreError> {
        dispatch!(self, s => s.ip_addresses_in(range, include_buried).await)
    }
}

#[async_trait]
impl UserStore for AnyStore {
    async fn create_user(&self, user: &User) -> Result<Id<User>, StoreError> {
        dispatch!(self, s => s.create_user(user).await)
    }
    async fn get_user(&self, username: &str) -> Result<Option<Record<User>>, StoreError> {
        dispatch!(self, s => s.get_user(username).await)
    }
    async fn update_user(&self, user: &User) -> Result<(), StoreError> {
        dispatch!(self, s => s.update_user(user).await)
    }
    async fn delete_user(&self, username: &str) -> Result<(), StoreError> {
        dispatch!(self, s => s.delete_user(username).await)
    }
    async fn list_users(&self, source: Option<UserSource>) -> Result<Vec<Record<User>>, StoreError> {
        dispatch!(self, s => s.list_users(source).await)
    }
    async fn password_hash(&self, username: &str) -> Result<Option<String>, StoreError> {
        dispatch!(self, s => s.password_hash(username).await)
    }
    async fn set_password_hash(&self, username: &str, hash: Option<&str>) -> Result<(), StoreError> {
        dispatch!(self, s => s.set_password_hash(username, hash).await)
    }
    async fn get_profile(&self, username: &str) -> Result<Option<Profile>, StoreError> {
        dispatch!(self, s => s.get_profile(username).await)
    }
    async fn set_profile(&self, username: &str, profile: &Profile) -> Result<(), StoreError> {
        dispatch!(self, s => s.set_profile(username, profile).await)
    }
    async fn user_groups(&self, username: &str) -> Result<Vec<Group>, StoreError> {
        dispatch!(self, s => s.user_groups(username).await)
    }
    async fn set_user_groups(&self, username: &str, groups: &[Group]) -> Result<(), StoreError> {
        dispatch!(self, s => s.set_user_groups(username, groups).await)
    }
    async fn mirror_user(&self, mirror: &UserMirror) -> Result<ralph_core::Mirrored, StoreError> {
        dispatch!(self, s => s.mirror_user(mirror).await)
    }
    async fn mirror_users(
        &self,
        mirrors: &[UserMirror],
    ) -> Result<Vec<Result<ralph_core::Mirrored, StoreError>>, StoreError> {
        dispatch!(self, s => s.mirror_users(mirrors).await)
    }
    async fn deactivate_users(&self, usernames: &[String]) -> Result<u64, StoreError> {
        dispatch!(self, s => s.deactivate_users(usernames).await)
    }
}

#[async_trait]
impl JobQueue for AnyStore {
    async fn enqueue(&self, queue: &str, payloads: &[String]) -> Result<Vec<Id<Job>>, StoreError> {
        dispatch!(self, s => s.enqueue(queue, payloads).await)
    }
    async fn claim(&self, queue: &str, max: usize, lease: Duration, worker: &str) -> Result<Vec<Job>, StoreError> {
        dispatch!(self, s => s.claim(queue, max, lease, worker).await)
    }
    async fn ack(&self, job: &Job) -> Result<bool, StoreError> {
        dispatch!(self, s => s.ack(job).await)
    }
    async fn ack_batch(&self, jobs: &[Job]) -> Result<u64, StoreError> {
        dispatch!(self, s => s.ack_batch(jobs).await)
    }
    async fn fail(&self, job: &Job, error: &str, policy: &RetryPolicy) -> Result<FailOutcome, StoreError> {
        dispatch!(self, s => s.fail(job, error, policy).await)
    }
    async fn extend_lease(&self, job: &Job, lease: Duration) -> Result<bool, StoreError> {
        dispatch!(self, s => s.extend_lease(job, lease).await)
    }
    async fn requeue(&self, job: &Job, payload: &str) -> Result<bool, StoreError> {
        dispatch!(self, s => s.requeue(job, payload).await)
    }
}

#[async_trait]
impl QueueAdmin for AnyStore {
    async fn reclaim_expired(&self, queue: &str) -> Result<u64, StoreError> {
        dispatch!(self, s => s.reclaim_expired(queue).await)
    }
    async fn stats(&self, queue: &str) -> Result<QueueStats, StoreError> {
        dispatch!(self, s => s.stats(queue).await)
    }
    async fn all_stats(&self) -> Result<Vec<QueueStats>, StoreError> {
        dispatch!(self, s => s.all_stats().await)
    }
    async fn list_jobs(&self, queue: &str, state: JobState, limit: usize) -> Result<Vec<JobInfo>, StoreError> {
        dispatch!(self, s => s.list_jobs(queue, state, limit).await)
    }
    async fn overview(&self, cap: u64) -> Result<Vec<QueueOverview>, StoreError> {
        dispatch!(self, s => s.overview(cap).await)
    }
    async fn queue_overview(&self, queue: &str, cap: u64) -> Result<QueueOverview, StoreError> {
        dispatch!(self, s => s.queue_overview(queue, cap).await)
    }
    async fn find_jobs(
        &self,
        queue: &str,
        filter: &JobFilter,
        after: Option<JobCursor>,
        limit: usize,
    ) -> Result<Vec<JobInfo>, StoreError> {
        dispatch!(self, s => s.find_jobs(queue, filter, after, limit).await)
    }
    async fn count_jobs(&self, queue: &str, filter: &JobFilter, cap: u64) -> Result<CappedCount, StoreError> {
        dispatch!(self, s => s.count_jobs(queue, filter, cap).await)
    }
    async fn retry_jobs(&self, queue: &str, ids: &[Id<Job>], from: JobState, by: &Actor) -> Result<u64, StoreError> {
        dispatch!(self, s => s.retry_jobs(queue, ids, from, by).await)
    }
    async fn discard_jobs(&self, queue: &str, ids: &[Id<Job>], from: JobState, by: &Actor) -> Result<u64, StoreError> {
        dispatch!(self, s => s.discard_jobs(queue, ids, from, by).await)
    }
    async fn purge(&self, done_older_than: Duration, dead_older_than: Duration) -> Result<u64, StoreError> {
        dispatch!(self, s => s.purge(done_older_than, dead_older_than).await)
    }
    async fn set_paused(&self, queue: &str, paused: bool, by: &Actor) -> Result<bool, StoreError> {
        dispatch!(self, s => s.set_paused(queue, paused, by).await)
    }
    async fn heartbeat(&self, beat: &WorkerBeat) -> Result<(), StoreError> {
        dispatch!(self, s => s.heartbeat(beat).await)
    }
    async fn workers(&self) -> Result<Vec<WorkerBeat>, StoreError> {
        dispatch!(self, s => s.workers().await)
    }
}

#[async_trait]
impl ScanResultStore for AnyStore {
    async fn record_observations(
        &self,
        observations: &[Observation],
        dead_ping_limit: u32,
    ) -> Result<RecordSummary, StoreError> {
        dispatch!(self, s => s.record_observations(observations, dead_ping_limit).await)
    }
    async fn record_batch(
        &self,
        key: &str,
        observations: &[Observation],
        dead_ping_limit: u32,
    ) -> Result<Option<RecordSummary>, StoreError> {
        dispatch!(self, s => s.record_batch(key, observations, dead_ping_limit).await)
    }
    async fn prune_batches(&self, older_than: std::time::Duration) -> Result<u64, StoreError> {
        dispatch!(self, s => s.prune_batches(older_than).await)
    }
    async fn buried_between(&self, first: IpAddr, last: IpAddr) -> Result<Vec<IpAddr>, StoreError> {
        dispatch!(self, s => s.buried_between(first, last).await)
    }
}

#[async_trait]
impl ReconcileStore for AnyStore {
    async fn load_snapshot(&self, query: &SnapshotQuery, scan: &Scan) -> Result<Snapshot, StoreError> {
        dispatch!(self, s => s.load_snapshot(query, scan).await)
    }
    async fn save_plan(&self, plan: &Plan) -> Result<Id<Plan>, StoreError> {
        dispatch!(self, s => s.save_plan(plan).await)
    }
    async fn plan_items(&self, plan: Id<Plan>, after: Option<u32>, limit: u32) -> Result<Vec<PlanItem>, StoreError> {
        dispatch!(self, s => s.plan_items(plan, after, limit).await)
    }
    async fn load_plan(&self, plan: Id<Plan>) -> Result<Plan, StoreError> {
        dispatch!(self, s => s.load_plan(plan).await)
    }
    async fn apply_plan(&self, plan: Id<Plan>, actor: &Actor) -> Result<ApplyReport, StoreError> {
        dispatch!(self, s => s.apply_plan(plan, actor).await)
    }
    async fn open_conflicts(&self, limit: u32) -> Result<Vec<StoredConflict>, StoreError> {
        dispatch!(self, s => s.open_conflicts(limit).await)
    }
    async fn resolve_conflict(
        &self,
        conflict: Id<StoredConflict>,
        actor: &Actor,
        note: Option<&str>,
    ) -> Result<bool, StoreError> {
        dispatch!(self, s => s.resolve_conflict(conflict, actor, note).await)
    }
    async fn changed_addresses(&self, checksums: &BTreeMap<IpAddr, Checksum>) -> Result<Vec<IpAddr>, StoreError> {
        dispatch!(self, s => s.changed_addresses(checksums).await)
    }
    async fn set_field(
        &self,
        device: Id<Device>,
        field: Field,
        value: Option<&str>,
        actor: &Actor,
        lock: bool,
    ) -> Result<(), StoreError> {
        dispatch!(self, s => s.set_field(device, field, value, actor, lock).await)
    }
}

#[async_trait]
impl HistoryStore for AnyStore {
    async fn object_history(
        &self,
        object_type: &str,
        object_id: i64,
        limit: u32,
    ) -> Result<Vec<HistoryEntry>, StoreError> {
        dispatch!(self, s => s.object_history(object_type, object_id, limit).await)
    }
    async fn object_at(
        &self,
        object_type: &str,
        object_id: i64,
        at: chrono::DateTime<chrono::Utc>,
    ) -> Result<ObjectState, StoreError> {
        dispatch!(self, s => s.object_at(object_type, object_id, at).await)
    }
    async fn field_history(
        &self,
        object_type: &str,
        object_id: i64,
        field: &str,
        limit: u32,
    ) -> Result<Vec<HistoryEntry>, StoreError> {
        dispatch!(self, s => s.field_history(object_type, object_id, field, limit).await)
    }
    async fn deleted_objects(&self, object_type: &str, limit: u32) -> Result<Vec<HistoryEntry>, StoreError> {
        dispatch!(self, s => s.deleted_objects(object_type, limit).await)
    }
    async fn correlated(&self, correlation: &str) -> Result<Vec<HistoryEntry>, StoreError> {
        dispatch!(self, s => s.correlated(correlation).await)
    }
    async fn prune_history(&self, retention: &Retention) -> Result<u64, StoreError> {
        dispatch!(self, s => s.prune_history(retention).await)
    }
}
