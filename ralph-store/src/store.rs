//! [`SqlStore`]: one sqlx pool, migrations, the retry policy, and the transactions every
//! statement of [`crate::sql`] runs in.

use std::fmt;
use std::sync::Arc;

use ralph_core::history::Actor;
use ralph_core::{RetryPolicy, StoreError};
use tracing::info;

use tokio::sync::OnceCell;

use crate::dialect::{Backend, ServerTraits};
use crate::error::store_error;
use crate::retry::{Counters, retry_conflicts};
use crate::{ConflictRetry, PoolConfig};

/// The tracing target of every store event.
pub const TRACE_TARGET: &str = "ralph::store";

/// The store: ralph-core's storage traits on one sqlx connection pool.
///
/// Use the alias for your backend: [`SqliteStore`](crate::SqliteStore),
/// [`PgStore`](crate::PgStore) or [`MySqlStore`](crate::MySqlStore). Cloning is cheap and
/// shares the pool.
pub struct SqlStore<DB: Backend> {
    pool: sqlx::Pool<DB>,
    retry: ConflictRetry,
    counters: Arc<Counters>,
    /// What the server supports, asked once and shared by the clones.
    server: Arc<OnceCell<ServerTraits>>,
    /// Test seam: ids of multi-row inserts from the last insert id even where `RETURNING` works.
    last_insert_id: bool,
    /// Test seam: `false` applies reconciliation plans one device per transaction only.
    pub(crate) batched_apply: bool,
    /// Whether recorded scan results write change history (see [`SqlStore::without_scan_history`]).
    pub(crate) scan_history: bool,
    /// The job queues' retry policy for expired leases.
    job_policy: RetryPolicy,
    /// Who the inventory writes of this handle are recorded as, in the change history.
    actor: Actor,
}

impl<DB: Backend> Clone for SqlStore<DB> {
    fn clone(&self) -> Self {
        Self {
            pool: self.pool.clone(),
            retry: self.retry.clone(),
            counters: Arc::clone(&self.counters),
            server: Arc::clone(&self.server),
            last_insert_id: self.last_insert_id,
            batched_apply: self.batched_apply,
            scan_history: self.scan_history,
            job_policy: self.job_policy,
            actor: self.actor.clone(),
        }
    }
}

impl<DB: Backend> fmt::Debug for SqlStore<DB> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqlStore")
            .field("backend", &DB::NAME)
            .field("connections", &self.pool.size())
            .field("idle", &self.pool.num_idle())
            .field("conflict_retries", &self.counters.retries())
            .finish()
    }
}

impl<DB: Backend> SqlStore<DB> {
    /// Connects with the default [`PoolConfig`] and runs the migrations.
    ///
    /// # Errors
    /// [`StoreError::Backend`] when the database cannot be reached or a migration fails.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Self::connect_with(url, &PoolConfig::default()).await
    }

    /// Connects with `config` and runs the migrations (under the database's migration lock on
    /// PostgreSQL and MySQL, so several processes may start at once).
    ///
    /// # Errors
    /// [`StoreError::Backend`] when the database cannot be reached or a migration fails.
    pub async fn connect_with(url: &str, config: &PoolConfig) -> Result<Self, StoreError> {
        let pool = DB::open(url, config).await.map_err(|e| store_error("store", e))?;
        let store = Self::from_pool(pool).with_conflict_retry(config.conflict_retry.clone());
        store.migrate().await?;
        Ok(store)
    }

    /// Wraps an existing pool without touching the schema; call [`SqlStore::migrate`] unless
    /// the schema is known to be current. SQLite pools must enable foreign keys.
    #[must_use]
    pub fn from_pool(pool: sqlx::Pool<DB>) -> Self {
        Self {
            pool,
            retry: ConflictRetry::default(),
            counters: Arc::default(),
            server: Arc::default(),
            last_insert_id: false,
            batched_apply: true,
            scan_history: true,
            job_policy: RetryPolicy::default(),
            actor: Actor::system(),
        }
    }

    /// Sets the job queues' retry policy for expired leases: a job claimed
    /// `policy.max_attempts` times whose lease ran out again (its worker died each time) is
    /// dead-lettered by the next claim, with the reason "lease expired N times" (default:
    /// [`RetryPolicy::default`], 5 attempts).
    #[must_use]
    pub fn with_job_policy(mut self, policy: RetryPolicy) -> Self {
        self.job_policy = policy;
        self
    }

    /// A handle on the same pool whose inventory and user writes are recorded in the change
    /// history as made by `actor` (the default is [`Actor::system`]): one per request of a
    /// person, say. A directory mirror ([`UserStore::mirror_user`](ralph_core::UserStore)) of an
    /// LDAP account is recorded as the source `ldap` whatever the handle's actor.
    #[must_use]
    pub fn acting_as(&self, actor: Actor) -> Self {
        Self { actor, ..self.clone() }
    }

    /// Who this handle's writes are recorded as.
    #[must_use]
    pub fn actor(&self) -> &Actor {
        &self.actor
    }

    /// The job queues' retry policy for expired leases.
    pub(crate) fn job_policy(&self) -> RetryPolicy {
        self.job_policy
    }

    /// The same as [`SqlStore::from_pool`]: a store (and job queue) over `pool`, whose schema
    /// must be current (see [`SqlStore::migrate`]).
    #[must_use]
    pub fn new(pool: sqlx::Pool<DB>) -> Self {
        Self::from_pool(pool)
    }

    /// Test seam: a multi-row insert takes its ids from `LAST_INSERT_ID()` (the MySQL path)
    /// even on MariaDB, whose `INSERT ... RETURNING` is otherwise used, so that path can be
    /// tested on MariaDB. No effect on the other backends.
    #[doc(hidden)]
    #[must_use]
    pub fn with_last_insert_id_ids(mut self) -> Self {
        self.last_insert_id = true;
        self
    }

    /// Scan results recorded through this handle write no change history. By default every
    /// change of an address's followed facts (HTTP family, SNMP name, community, version) that
    /// [`ScanResultStore::record_observations`](ralph_core::ScanResultStore::record_observations)
    /// makes is on record, which costs a locking read of the addresses whose facts may change
    /// (a bare "alive" never does) and the history rows themselves; `BENCHMARKS.md` has both
    /// figures. For a host that keeps fact history elsewhere, or none.
    #[must_use]
    pub fn without_scan_history(mut self) -> Self {
        self.scan_history = false;
        self
    }

    /// Test seam: reconciliation plans are applied one device per transaction only, without
    /// the batched fast path, so a test can hold the two to the same outcome.
    #[doc(hidden)]
    #[must_use]
    pub fn without_batched_apply(mut self) -> Self {
        self.batched_apply = false;
        self
    }

    /// Replaces the retry policy for transient conflicts (from [`PoolConfig::conflict_retry`]
    /// when connecting, the default for [`SqlStore::from_pool`]).
    #[must_use]
    pub fn with_conflict_retry(mut self, retry: ConflictRetry) -> Self {
        self.retry = retry;
        self
    }

    /// How many times a write transaction of this store (and its clones) was retried after a
    /// transient conflict (deadlock, serialization failure, busy database).
    #[must_use]
    pub fn conflict_retries(&self) -> u64 {
        self.counters.retries()
    }

    /// Counts devices a reconciliation apply wrote in a batch.
    pub(crate) fn count_batched(&self, devices: usize) {
        self.counters.batched_devices.fetch_add(devices as u64, std::sync::atomic::Ordering::Relaxed);
    }

    /// Test seam: how many devices reconciliation applies of this store (and its clones) wrote
    /// in batches rather than one per transaction.
    #[doc(hidden)]
    #[must_use]
    pub fn batched_devices(&self) -> u64 {
        self.counters.batched_devices.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// How many writes failed with [`StoreError::Contended`]: their conflicts outlasted the
    /// retry policy.
    #[must_use]
    pub fn conflicts_exhausted(&self) -> u64 {
        self.counters.exhausted()
    }

    /// Applies the migrations that have not run yet; a no-op when the schema is current.
    ///
    /// # Errors
    /// [`StoreError::Backend`] when a migration fails or an applied one was changed.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        DB::migrate(&self.pool).await.map_err(|e| StoreError::Backend(Box::new(e)))?;
        info!(target: TRACE_TARGET, backend = DB::NAME, "schema is current");
        Ok(())
    }

    /// The connection pool, for queries of your own (and for the job queue).
    #[must_use]
    pub fn pool(&self) -> &sqlx::Pool<DB> {
        &self.pool
    }

    /// Closes every connection; later calls fail.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// A pooled connection, for several reads in a row.
    pub(crate) async fn acquire(&self, entity: &'static str) -> Result<sqlx::pool::PoolConnection<DB>, StoreError> {
        self.pool.acquire().await.map_err(|e| store_error(entity, e))
    }

    /// Runs `write`, a whole write transaction or statement, under the store's retry policy for
    /// transient conflicts (see [`ConflictRetry`]).
    pub(crate) async fn retrying<T, F, Fut>(&self, entity: &'static str, write: F) -> Result<T, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, StoreError>>,
    {
        retry_conflicts(&self.retry, &self.counters, entity, write).await
    }

    /// What the server supports, asked on first use.
    pub(crate) async fn server_traits(&self) -> Result<ServerTraits, StoreError> {
        let traits = *self.server.get_or_try_init(|| DB::server_traits(&self.pool)).await?;
        Ok(ServerTraits { insert_returning: traits.insert_returning && !self.last_insert_id, ..traits })
    }

    /// Starts a write transaction (on SQLite, one that holds the write lock from the start).
    pub(crate) async fn begin(&self, entity: &'static str) -> Result<sqlx::Transaction<'static, DB>, StoreError> {
        DB::begin_write(&self.pool).await.map_err(|e| store_error(entity, e))
    }

    /// A write transaction whose every read locks what it returns
    /// ([`Dialect::begin_locking_write`](crate::dialect::Dialect::begin_locking_write)).
    pub(crate) async fn begin_locking(
        &self,
        entity: &'static str,
    ) -> Result<sqlx::Transaction<'static, DB>, StoreError> {
        DB::begin_locking_write(&self.pool).await.map_err(|e| store_error(entity, e))
    }
}

/// Commits, mapping a failure (a deferred constraint, a lost connection) like any other.
pub(crate) async fn commit<DB: Backend>(
    tx: sqlx::Transaction<'static, DB>,
    entity: &'static str,
) -> Result<(), StoreError> {
    tx.commit().await.map_err(|e| store_error(entity, e))
}
