//! Where the three databases differ, one module each: connecting and migrating, write
//! transactions, row locks, "insert or ignore", the queue's clock, job claims and the bulk
//! scan upsert. Everything else is written once, generically, in [`crate::sql`].

// `Dialect` is the sealed half of the public `Backend` trait: its items are `pub` so they may
// appear in `Backend`'s bounds, yet this module is private, so none of them is reachable.
#![allow(unreachable_pub)]

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use ralph_core::{Job, RecordSummary, StoreError};
use sqlx::QueryBuilder;

use crate::PoolConfig;

#[cfg(feature = "mysql")]
pub(crate) mod mysql;
#[cfg(feature = "postgres")]
pub(crate) mod postgres;
#[cfg(feature = "sqlite")]
pub(crate) mod sqlite;

/// A database the store runs on: [`sqlx::Sqlite`], [`sqlx::Postgres`] or [`sqlx::MySql`]
/// (each behind its cargo feature). Sealed: the store's SQL is only known to work on these.
pub trait Backend: sqlx::Database + sqlx::database::HasStatementCache + Dialect {}

/// What the store learns about its server once per pool (MySQL: which server and version).
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerTraits {
    /// `INSERT ... RETURNING id` (SQLite, PostgreSQL, MariaDB ≥ 10.5).
    pub insert_returning: bool,
    /// `INSERT ... AS new ON DUPLICATE KEY UPDATE c = new.c` (MySQL ≥ 8.0.19).
    pub row_alias: bool,
}

/// A queue time as each database keeps it: a timestamp on PostgreSQL and MySQL (server clock),
/// microseconds since the Unix epoch on SQLite (the one machine's clock). Decoded by name like
/// any other column; each dialect module implements its `Type`/`Decode`.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp(pub DateTime<Utc>);

/// One checked scan observation, ready to bind (see [`crate::sql::scan`]).
#[doc(hidden)]
pub use crate::sql::scan::ObservationRow;

/// What the store holds for an address a round of observations mentions.
#[doc(hidden)]
pub use crate::sql::scan::KnownRow;

/// One change-history row of a stored address, named by its key.
#[doc(hidden)]
pub use crate::sql::history::AddressChange;

/// The per-database half of [`Backend`], implemented once in each dialect module.
#[doc(hidden)]
#[async_trait]
pub trait Dialect: sqlx::Database {
    /// Row lock for a read inside a write transaction; SQLite has one writer already.
    #[doc(hidden)]
    const FOR_UPDATE: &'static str;
    /// Shared row lock for a read inside a write transaction (blocks writers of the row, not
    /// other readers).
    #[doc(hidden)]
    const FOR_SHARE: &'static str;
    /// The most bind parameters one statement may carry.
    #[doc(hidden)]
    const MAX_PARAMETERS: usize;
    /// `INSERT` that silently skips a row whose unique key exists: the statement's head.
    #[doc(hidden)]
    const INSERT_IGNORE: &'static str;
    /// A `serial_number` column as the reconciler compares it with upper-cased serials:
    /// `UPPER(serial_number)`, which an expression index serves; on MySQL the column itself,
    /// whose case-insensitive collation already compares that way (and whose index a function
    /// would defeat).
    #[doc(hidden)]
    const SERIAL_KEY: &'static str;
    /// Whether a statement over a list of keys into a table that grows during the operation is
    /// kept as a prepared statement. Not on PostgreSQL: after five runs it would switch to a
    /// generic plan costed while the table was small (a scan), and keep it as the table grows.
    #[doc(hidden)]
    const PREPARE_KEY_LISTS: bool;
    /// Whether a round's upsert reads the stored rows it counts in the same statement
    /// (PostgreSQL); otherwise the caller may hand it what it read already.
    #[doc(hidden)]
    const COUNTS_IN_UPSERT: bool;
    /// Whether a locking read of a key no row has locks nothing (PostgreSQL; SQLite, with its
    /// one writer, trivially): a recorder may then lock every address it writes up front, in
    /// key order. Not MySQL, where it locks the gap the key would go in.
    #[doc(hidden)]
    const GAPLESS_LOCKS: bool;
    /// Where the database builds JSON faster than the driver hands over rows (SQLite's driver
    /// copies every value of every row to another thread): the aggregate that turns the scan
    /// recording's read of stored facts into one JSON array of arrays, as `(open, close)`
    /// around the column list (`SELECT <open><columns><close> FROM (<the locking read>)`),
    /// which must give `[]` for no rows.
    #[doc(hidden)]
    const FACTS_AS_JSON: Option<(&'static str, &'static str)>;
    /// How many batches of a reconciliation apply run at once, each on its own connection
    /// (SQLite has one writer: one).
    #[doc(hidden)]
    const APPLY_RUNS: usize;

    /// The tail of an insert-or-ignore on the unique key `key` (`ON CONFLICT (key) DO NOTHING`).
    #[doc(hidden)]
    fn ignore_conflict(key: &str) -> String;

    /// Opens a pool with the database's connection settings.
    #[doc(hidden)]
    async fn open(url: &str, config: &PoolConfig) -> Result<sqlx::Pool<Self>, sqlx::Error>;

    /// Applies the migrations that have not run yet.
    #[doc(hidden)]
    async fn migrate(pool: &sqlx::Pool<Self>) -> Result<(), sqlx::migrate::MigrateError>;

    /// Starts a write transaction (on SQLite, one that holds the write lock from the start).
    #[doc(hidden)]
    async fn begin_write(pool: &sqlx::Pool<Self>) -> Result<sqlx::Transaction<'static, Self>, sqlx::Error>;

    /// Starts a write transaction whose reads lock what they return (`FOR UPDATE`): on MySQL at
    /// `READ COMMITTED`, so a locking read of an index range locks the rows it returns and not
    /// the gaps it walks (workers moving other jobs in and out of that range do not wait, and
    /// two such transactions do not deadlock on gaps); elsewhere [`Dialect::begin_write`].
    #[doc(hidden)]
    async fn begin_locking_write(pool: &sqlx::Pool<Self>) -> Result<sqlx::Transaction<'static, Self>, sqlx::Error> {
        Self::begin_write(pool).await
    }

    /// Rows an `INSERT`/`UPDATE`/`DELETE` touched.
    #[doc(hidden)]
    fn rows_affected(result: &Self::QueryResult) -> u64;

    /// Runs the `INSERT` in `qb` and returns the generated id (`RETURNING id`, or the driver's
    /// last insert id where the database has no `RETURNING`).
    #[doc(hidden)]
    async fn insert_id(conn: &mut Self::Connection, mut qb: QueryBuilder<Self>) -> Result<i64, sqlx::Error>;

    /// Runs the multi-row `INSERT` in `qb` (`rows` rows) and returns the generated ids in
    /// ascending order.
    #[doc(hidden)]
    async fn insert_ids(
        conn: &mut Self::Connection,
        mut qb: QueryBuilder<Self>,
        rows: usize,
        server: ServerTraits,
    ) -> Result<Vec<i64>, StoreError>;

    /// Asks the server what it supports (once per store).
    #[doc(hidden)]
    async fn server_traits(pool: &sqlx::Pool<Self>) -> Result<ServerTraits, StoreError>;

    /// Pushes "now" on the queue's clock.
    #[doc(hidden)]
    fn push_now(qb: &mut QueryBuilder<Self>);

    /// Pushes "now + `micros`" on the queue's clock.
    #[doc(hidden)]
    fn push_now_plus(qb: &mut QueryBuilder<Self>, micros: i64);

    /// Pushes the age of `column` (a queue time) in microseconds, as a 64-bit integer.
    #[doc(hidden)]
    fn push_age_micros(qb: &mut QueryBuilder<Self>, column: &str);

    /// Claims up to `limit` due jobs of `queue` for `lease` (pending first, then expired
    /// leases with attempts left), marking them running under a fresh token; returns them
    /// unsorted. Nothing while the queue is paused. One round trip where the database allows
    /// (the filter is [`claimable`]).
    #[doc(hidden)]
    async fn claim(
        pool: &sqlx::Pool<Self>,
        queue: &str,
        limit: i64,
        lease: Duration,
        worker: &str,
        max_attempts: u32,
    ) -> Result<Vec<Job>, StoreError>;

    /// Serialises, until `tx` ends, the writers of addresses `keys` that do not exist yet, so
    /// that of two transactions inserting the same address the second reads the first's row
    /// once it is committed (and records an update, not a second creation). Returns whether
    /// the caller must read those keys again (it waited on locks a plain read did not take).
    /// PostgreSQL: transaction-level advisory locks, in key order; MySQL's locking reads
    /// already lock the gap a missing key would go in, and SQLite has one writer.
    #[doc(hidden)]
    async fn lock_new_keys(_tx: &mut sqlx::Transaction<'static, Self>, _keys: &[&str]) -> Result<bool, StoreError> {
        Ok(false)
    }

    /// Pushes `rows` as a relation `v (ip_key, action, changes)` joined to the stored
    /// addresses, `... AS v JOIN ip_addresses AS a ON a.ip_key = v.ip_key`: the `FROM` of
    /// [`crate::sql::history`]'s insert of address history. The join probes the `ip_key`
    /// index once per row.
    #[doc(hidden)]
    fn push_address_changes(qb: &mut QueryBuilder<Self>, rows: &[AddressChange]);

    /// Records one round of observations (every address at most once) in `tx`. `known`: what
    /// the store holds for every address of the round, when the caller read it already in this
    /// transaction under the locks the round needs (an address missing from it is new).
    #[doc(hidden)]
    async fn record_round(
        tx: &mut sqlx::Transaction<'static, Self>,
        rows: &[ObservationRow<'_>],
        known: Option<&HashMap<String, KnownRow>>,
        dead_ping_limit: u32,
        server: ServerTraits,
    ) -> Result<RecordSummary, StoreError>;
}

/// The part of a job claim's `WHERE` every dialect shares, on an unaliased `queue_jobs`: the
/// queue is not paused, and an expired lease is claimed again only while it has attempts left
/// (a spent one is dead-lettered instead, see `sql::queue`). The subquery is a plain read even
/// under `FOR UPDATE`: it locks no `queue_settings` row (checked on MariaDB; MySQL documents
/// the same), so pausing never waits for a claim.
pub(crate) fn claimable(max_attempts: u32) -> String {
    format!(
        "NOT EXISTS (SELECT 1 FROM queue_settings s WHERE s.queue = queue_jobs.queue AND s.paused = TRUE) \
         AND (queue_jobs.state = 'pending' OR queue_jobs.attempts < {max_attempts})"
    )
}
