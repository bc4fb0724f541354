//! Durable job queues ([`ralph_core::JobQueue`]) on SQLite, PostgreSQL and MySQL/MariaDB.
//!
//! All three keep jobs in one table, `queue_jobs` (migration `0100_job_queue.sql` of each
//! backend), one row per job with a `state` (`pending`, `running`, `done`, `dead`) and a
//! `due_at` time: when a pending job becomes claimable (now, or after a retry back-off) and when
//! a running job's lease runs out. Claiming takes pending jobs first, then jobs whose lease ran
//! out, each in `due_at` order (for a fresh job, its enqueue time), along the
//! `(queue, state, due_at, id)` index:
//!
//! - **PostgreSQL**: one `WITH picked AS (SELECT ... FOR UPDATE SKIP LOCKED) UPDATE ... RETURNING`
//!   statement, so concurrent workers on any number of machines never wait on each other's rows;
//! - **MariaDB ≥ 10.6 / MySQL ≥ 8.0**: a `READ COMMITTED` transaction doing
//!   `SELECT ... FOR UPDATE SKIP LOCKED`, then the `UPDATE` (MariaDB has no `UPDATE ... RETURNING`);
//! - **SQLite**: a single `UPDATE ... WHERE id IN (SELECT ... LIMIT n) RETURNING` statement; SQLite
//!   runs one writer at a time, so the statement is the lock.
//!
//! A worker that claimed a batch should acknowledge it with [`JobQueue::ack_batch`]: one
//! statement and one commit for the batch instead of one per job (on PostgreSQL this is the
//! difference between about 2,000 and over 25,000 jobs/s on a 2-core machine; see
//! `benches/benches/store_queue.rs`).
//!
//! The queue's statements are written once (`src/sql/queue.rs`); the claim, which each
//! database does its own way, lives in its dialect module.
//!
//! Each claim gets a fresh random lease token; [`JobQueue::ack`], [`JobQueue::fail`] and
//! [`JobQueue::extend_lease`] act only while the row still carries that token, so a worker whose
//! lease expired and whose job was re-taken cannot ack it. On PostgreSQL and MySQL, lease and
//! back-off times are measured by the database server's clock, so workers on machines whose
//! clocks disagree still agree on when a lease ran out.
//!
//! # Reading queue statistics
//!
//! Every store ([`SqliteStore`](crate::SqliteStore), [`PgStore`](crate::PgStore),
//! [`MySqlStore`](crate::MySqlStore)) is a [`JobQueue`] over its own pool, with the store's retry
//! policy for transient conflicts; [`SqliteQueue`], [`PgQueue`] and [`MySqlQueue`] name the same
//! type for a queue over a pool you bring (`SqliteQueue::new(pool)`).
//!
//! "How many tasks are waiting?" is one call, [`JobQueue::stats`] (or [`JobQueue::all_stats`]
//! for every queue), which a host application can poll for a dashboard or a metrics exporter:
//!
//! ```
//! # #[cfg(feature = "sqlite")]
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use ralph_core::{JobQueue, QueueAdmin};
//! use ralph_store::queue::SqliteQueue;
//!
//! let pool = sqlx::sqlite::SqlitePoolOptions::new().max_connections(1).connect("sqlite::memory:").await?;
//! let queue = SqliteQueue::new(pool);
//! queue.migrate().await?;
//! queue.enqueue("discovery.dc1", &["{\"network\":\"10.0.0.0/24\"}".to_owned()]).await?;
//!
//! let stats = queue.stats("discovery.dc1").await?;
//! assert_eq!((stats.pending, stats.running, stats.dead), (1, 0, 0));
//! println!("{} waiting, oldest for {:?}", stats.pending, stats.oldest_pending_age);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # }).unwrap();
//! ```
//!
//! `pending` counts jobs waiting to be claimed, including those waiting out a retry back-off;
//! `running` jobs hold a live lease; `expired` jobs hold a lease that ran out (their worker
//! probably died: [`JobQueue::reclaim_expired`] returns them to `pending`, and [`JobQueue::claim`]
//! takes them anyway); `dead` jobs used up their attempts; `done` jobs were acknowledged.
//!
//! A job that keeps killing its worker is claimed again after every lease and its `attempts`
//! grows; [`JobQueue::fail`] dead-letters it once a worker survives long enough to report it.

use std::time::Duration;

#[cfg(doc)]
use ralph_core::JobQueue;

/// A job queue over a SQLite pool: the store itself ([`SqlStore`](crate::SqlStore)).
#[cfg(feature = "sqlite")]
pub type SqliteQueue = crate::SqlStore<sqlx::Sqlite>;
/// A job queue over a PostgreSQL pool: the store itself ([`SqlStore`](crate::SqlStore)).
#[cfg(feature = "postgres")]
pub type PgQueue = crate::SqlStore<sqlx::Postgres>;
/// A job queue over a MySQL/MariaDB pool (MySQL ≥ 8.0 or MariaDB ≥ 10.6, both have `SKIP
/// LOCKED`): the store itself ([`SqlStore`](crate::SqlStore)).
#[cfg(feature = "mysql")]
pub type MySqlQueue = crate::SqlStore<sqlx::MySql>;

/// Longest lease or back-off the queues accept; longer ones are clamped to it (keeps date
/// arithmetic inside every backend's range).
pub const MAX_DELAY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// Longest queue name, in characters.
pub const MAX_QUEUE_NAME: usize = 255;

/// Jobs one claim call can take at most; larger requests are clamped.
pub const MAX_CLAIM: usize = 10_000;
