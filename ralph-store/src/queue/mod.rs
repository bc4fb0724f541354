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
//! Each claim gets a fresh random lease token; [`JobQueue::ack`], [`JobQueue::fail`] and
//! [`JobQueue::extend_lease`] act only while the row still carries that token, so a worker whose
//! lease expired and whose job was re-taken cannot ack it. On PostgreSQL and MySQL, lease and
//! back-off times are measured by the database server's clock, so workers on machines whose
//! clocks disagree still agree on when a lease ran out.
//!
//! # Reading queue statistics
//!
//! Every store ([`SqliteStore`](crate::SqliteStore), [`PgStore`](crate::PgStore),
//! [`MySqlStore`](crate::MySqlStore)) is a [`JobQueue`] over its own pool; [`SqliteQueue`],
//! [`PgQueue`] and [`MySqlQueue`] are the same queues over a pool you bring.
//!
//! "How many tasks are waiting?" is one call, [`JobQueue::stats`] (or [`JobQueue::all_stats`]
//! for every queue), which a host application can poll for a dashboard or a metrics exporter:
//!
//! ```
//! # #[cfg(feature = "sqlite")]
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use ralph_core::JobQueue;
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
use ralph_core::{StoreError, ValidationError};

#[cfg(feature = "mysql")]
mod mysql;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "sqlite")]
mod sqlite;

#[cfg(feature = "mysql")]
pub use mysql::MySqlQueue;

/// `impl JobQueue for SqlStore<DB>`: the store's own pool serves the queue too (one pool per
/// store, so workers never open connections of their own).
macro_rules! store_queue {
    ($feature:literal, $db:ty, $queue:ident) => {
        #[cfg(feature = $feature)]
        #[async_trait::async_trait]
        impl ralph_core::JobQueue for crate::SqlStore<$db> {
            async fn enqueue(
                &self,
                queue: &str,
                payloads: &[String],
            ) -> Result<Vec<ralph_core::Id<ralph_core::Job>>, StoreError> {
                let q = $queue::new(self.pool().clone());
                self.retrying("job", || q.enqueue(queue, payloads)).await
            }
            async fn claim(
                &self,
                queue: &str,
                max: usize,
                lease: Duration,
                worker: &str,
            ) -> Result<Vec<ralph_core::Job>, StoreError> {
                let q = $queue::new(self.pool().clone());
                self.retrying("job", || q.claim(queue, max, lease, worker)).await
            }
            async fn ack(&self, job: &ralph_core::Job) -> Result<bool, StoreError> {
                let q = $queue::new(self.pool().clone());
                self.retrying("job", || q.ack(job)).await
            }
            async fn ack_batch(&self, jobs: &[ralph_core::Job]) -> Result<u64, StoreError> {
                let q = $queue::new(self.pool().clone());
                self.retrying("job", || q.ack_batch(jobs)).await
            }
            async fn fail(
                &self,
                job: &ralph_core::Job,
                error: &str,
                policy: &ralph_core::RetryPolicy,
            ) -> Result<ralph_core::FailOutcome, StoreError> {
                let q = $queue::new(self.pool().clone());
                self.retrying("job", || q.fail(job, error, policy)).await
            }
            async fn extend_lease(&self, job: &ralph_core::Job, lease: Duration) -> Result<bool, StoreError> {
                let q = $queue::new(self.pool().clone());
                self.retrying("job", || q.extend_lease(job, lease)).await
            }
            async fn reclaim_expired(&self, queue: &str) -> Result<u64, StoreError> {
                let q = $queue::new(self.pool().clone());
                self.retrying("job", || q.reclaim_expired(queue)).await
            }
            async fn stats(&self, queue: &str) -> Result<ralph_core::QueueStats, StoreError> {
                $queue::new(self.pool().clone()).stats(queue).await
            }
            async fn all_stats(&self) -> Result<Vec<ralph_core::QueueStats>, StoreError> {
                $queue::new(self.pool().clone()).all_stats().await
            }
        }
    };
}

store_queue!("sqlite", sqlx::Sqlite, SqliteQueue);
store_queue!("postgres", sqlx::Postgres, PgQueue);
store_queue!("mysql", sqlx::MySql, MySqlQueue);
#[cfg(feature = "postgres")]
pub use postgres::PgQueue;
#[cfg(feature = "sqlite")]
pub use sqlite::SqliteQueue;

/// Longest lease or back-off the queues accept; longer ones are clamped to it (keeps date
/// arithmetic inside every backend's range).
pub const MAX_DELAY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// Longest queue name, in characters.
pub const MAX_QUEUE_NAME: usize = 255;

/// Jobs one claim call can take at most; larger requests are clamped.
pub const MAX_CLAIM: usize = 10_000;

pub(crate) const PENDING: &str = "pending";
pub(crate) const RUNNING: &str = "running";
pub(crate) const DONE: &str = "done";
pub(crate) const DEAD: &str = "dead";

/// Job ids per statement in `ack_batch` (under SQLite's 32,766 parameters).
#[cfg(any(feature = "sqlite", feature = "mysql"))]
pub(crate) const ACK_CHUNK: usize = 10_000;

/// Jobs grouped by lease token (one group per claim), ids ascending.
pub(crate) fn by_token(jobs: &[ralph_core::Job]) -> std::collections::BTreeMap<&str, Vec<i64>> {
    let mut groups: std::collections::BTreeMap<&str, Vec<i64>> = std::collections::BTreeMap::new();
    for job in jobs {
        groups.entry(job.lease_token.as_str()).or_default().push(job.id.get());
    }
    for ids in groups.values_mut() {
        ids.sort_unstable();
        ids.dedup();
    }
    groups
}

/// The longest error text kept on a failed job, in characters.
pub(crate) const MAX_ERROR_LEN: usize = 4000;

/// A fresh, unguessable lease token.
pub(crate) fn new_token() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// A delay in microseconds, clamped to [`MAX_DELAY`].
pub(crate) fn micros(delay: Duration) -> i64 {
    i64::try_from(delay.min(MAX_DELAY).as_micros()).unwrap_or(i64::MAX)
}

/// Checks a queue name: not empty, at most [`MAX_QUEUE_NAME`] characters.
pub(crate) fn check_queue(queue: &str) -> Result<(), StoreError> {
    if queue.trim().is_empty() {
        return Err(StoreError::invalid("job", ValidationError::Empty { field: "queue" }));
    }
    ralph_core::text::check_len("queue", queue, MAX_QUEUE_NAME).map_err(|e| StoreError::invalid("job", e))
}

/// The claim size as a SQL limit.
pub(crate) fn claim_limit(max: usize) -> i64 {
    i64::try_from(max.min(MAX_CLAIM)).unwrap_or(1)
}

/// Error text cut to [`MAX_ERROR_LEN`] characters.
pub(crate) fn clip_error(error: &str) -> String {
    error.chars().take(MAX_ERROR_LEN).collect()
}

/// A driver error as a [`StoreError`]: constraint violations and undecodable rows get their own
/// classes, everything else is [`StoreError::Backend`].
pub(crate) fn backend(error: sqlx::Error) -> StoreError {
    crate::driver::store_error("job", error)
}

/// A count read from the database (never negative) as `u64`.
pub(crate) fn count(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

/// A number read back that does not fit the model.
pub(crate) fn corrupt(detail: impl Into<String>) -> StoreError {
    StoreError::Corrupt { entity: "job", detail: detail.into() }
}

/// `attempts` read from the database as `u32`.
pub(crate) fn attempts(value: i64) -> Result<u32, StoreError> {
    u32::try_from(value).map_err(|_| corrupt(format!("attempts {value} out of range")))
}

/// A non-negative age in microseconds as a `Duration`.
pub(crate) fn age(micros: Option<i64>) -> Option<Duration> {
    micros.map(|m| Duration::from_micros(u64::try_from(m).unwrap_or(0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_limits() {
        assert!(check_queue("discovery.dc1").is_ok());
        assert!(check_queue("  ").is_err_and(|e| e.is_invalid()));
        assert!(check_queue(&"q".repeat(256)).is_err_and(|e| e.is_invalid()));
        assert_eq!(claim_limit(usize::MAX), 10_000);
        assert_eq!(micros(Duration::MAX), micros(MAX_DELAY));
        assert_eq!(micros(Duration::from_millis(1500)), 1_500_000);
        assert_ne!(new_token(), new_token());
        assert_eq!(clip_error(&"é".repeat(5000)).chars().count(), MAX_ERROR_LEN);
    }
}
