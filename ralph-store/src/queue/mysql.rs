//! The job queue on MySQL/MariaDB: `READ COMMITTED` claims with `FOR UPDATE SKIP LOCKED`.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use ralph_core::{FailOutcome, Id, Job, JobQueue, QueueStats, RetryPolicy, StoreError};
use sqlx::Row;
use sqlx::mysql::{MySqlPool, MySqlRow};
use tokio::sync::OnceCell;

use super::{
    DEAD, DONE, PENDING, RUNNING, age, attempts, backend, check_queue, claim_limit, clip_error, corrupt, count, micros,
    new_token,
};
use crate::schema_check::ServerInfo;

/// Rows per enqueue statement: two parameters each, far under the 65,535 limit, and a
/// statement that stays well inside the default `max_allowed_packet` for small payloads.
const ENQUEUE_CHUNK: usize = 5_000;

/// [`JobQueue`] on a MySQL ≥ 8.0 or MariaDB ≥ 10.6 database (both have `SKIP LOCKED`), shared by
/// workers on any number of machines.
#[derive(Debug, Clone)]
pub struct MySqlQueue {
    pool: MySqlPool,
    server: std::sync::Arc<OnceCell<ServerInfo>>,
    /// Take ids from `LAST_INSERT_ID()` even on MariaDB (test seam for the MySQL path).
    last_insert_id: bool,
}

impl MySqlQueue {
    /// A queue over `pool`, whose database must hold the store's migrations (see
    /// [`MySqlQueue::migrate`]).
    #[must_use]
    pub fn new(pool: MySqlPool) -> Self {
        Self { pool, server: std::sync::Arc::new(OnceCell::new()), last_insert_id: false }
    }

    /// Test seam: enqueue takes the ids from `LAST_INSERT_ID()` (the MySQL path) even on MariaDB,
    /// whose `INSERT ... RETURNING` is otherwise used, so that path can be tested on MariaDB.
    #[doc(hidden)]
    #[must_use]
    pub fn with_last_insert_id_ids(mut self) -> Self {
        self.last_insert_id = true;
        self
    }

    /// The pool the queue uses.
    #[must_use]
    pub fn pool(&self) -> &MySqlPool {
        &self.pool
    }

    /// Runs the store's MySQL migrations (the job table among them) under sqlx's `GET_LOCK`
    /// migration lock; a no-op when they ran.
    ///
    /// # Errors
    /// The migration failed.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        crate::SqlStore::<sqlx::MySql>::from_pool(self.pool.clone()).migrate().await
    }

    async fn server(&self) -> Result<&ServerInfo, StoreError> {
        self.server.get_or_try_init(|| ServerInfo::detect(&self.pool)).await
    }
}

fn stats(queue: String, row: &MySqlRow) -> Result<QueueStats, StoreError> {
    let get = |name: &str| row.try_get::<i64, _>(name).map(count).map_err(backend);
    Ok(QueueStats {
        queue,
        pending: get("pending")?,
        running: get("running")?,
        expired: get("expired")?,
        dead: get("dead")?,
        done: get("done")?,
        oldest_pending_age: age(row.try_get("oldest_age").map_err(backend)?),
    })
}

const STATS_COLUMNS: &str = "COUNT(CASE WHEN state = 'pending' THEN 1 END) AS pending, \
     COUNT(CASE WHEN state = 'running' AND due_at > UTC_TIMESTAMP(6) THEN 1 END) AS running, \
     COUNT(CASE WHEN state = 'running' AND due_at <= UTC_TIMESTAMP(6) THEN 1 END) AS expired, \
     COUNT(CASE WHEN state = 'dead' THEN 1 END) AS dead, \
     COUNT(CASE WHEN state = 'done' THEN 1 END) AS done, \
     TIMESTAMPDIFF(MICROSECOND, MIN(CASE WHEN state = 'pending' THEN enqueued_at END), UTC_TIMESTAMP(6)) AS oldest_age";

/// `?, ?, ...` with `n` placeholders.
fn placeholders(n: usize) -> String {
    let mut s = "?, ".repeat(n);
    s.truncate(s.len().saturating_sub(2));
    s
}

#[async_trait]
impl JobQueue for MySqlQueue {
    async fn enqueue(&self, queue: &str, payloads: &[String]) -> Result<Vec<Id<Job>>, StoreError> {
        check_queue(queue)?;
        let returning = self.server().await?.is_mariadb() && !self.last_insert_id;
        let mut ids = Vec::with_capacity(payloads.len());
        let mut tx = self.pool.begin().await.map_err(backend)?;
        // Consecutive auto-increment ids are `auto_increment_increment` apart (more than 1 on
        // Galera and other multi-primary setups); read on this connection, as it is per session.
        let step = if returning {
            1
        } else {
            sqlx::query_scalar::<_, i64>("SELECT CAST(@@SESSION.auto_increment_increment AS SIGNED)")
                .fetch_one(&mut *tx)
                .await
                .map_err(backend)?
        };
        if step < 1 {
            return Err(corrupt("auto_increment_increment below 1"));
        }
        for chunk in payloads.chunks(ENQUEUE_CHUNK) {
            let mut sql =
                String::from("INSERT INTO queue_jobs (queue, payload, state, attempts, due_at, enqueued_at) VALUES ");
            let row = "(?, ?, 'pending', 0, UTC_TIMESTAMP(6), UTC_TIMESTAMP(6)), ";
            sql.push_str(&row.repeat(chunk.len()));
            sql.truncate(sql.len() - 2);
            if returning {
                sql.push_str(" RETURNING id");
            }
            let mut query = sqlx::query(&sql);
            for payload in chunk {
                query = query.bind(queue).bind(payload.as_str());
            }
            if returning {
                // MariaDB ≥ 10.5: the ids themselves.
                let rows = query.fetch_all(&mut *tx).await.map_err(backend)?;
                let mut chunk_ids =
                    rows.iter().map(|r| r.try_get::<i64, _>(0)).collect::<Result<Vec<_>, _>>().map_err(backend)?;
                chunk_ids.sort_unstable();
                ids.extend(chunk_ids.into_iter().map(Id::new));
            } else {
                // MySQL: a multi-row VALUES insert is a "simple insert", whose auto-increment ids
                // are allocated in one block in every `innodb_autoinc_lock_mode` (concurrent
                // inserts cannot interleave into it): `LAST_INSERT_ID()` is the first, and the
                // others follow `step` apart.
                let result = query.execute(&mut *tx).await.map_err(backend)?;
                if usize::try_from(result.rows_affected()).ok() != Some(chunk.len()) {
                    return Err(corrupt("enqueue inserted an unexpected number of rows"));
                }
                let first = i64::try_from(result.last_insert_id()).map_err(|_| corrupt("insert id out of range"))?;
                for n in 0..chunk.len() {
                    let id = i64::try_from(n)
                        .ok()
                        .and_then(|n| n.checked_mul(step))
                        .and_then(|offset| first.checked_add(offset))
                        .ok_or_else(|| corrupt("insert id out of range"))?;
                    ids.push(Id::new(id));
                }
            }
        }
        tx.commit().await.map_err(backend)?;
        tracing::debug!(target: "ralph::store", queue, jobs = ids.len(), "enqueued");
        Ok(ids)
    }

    async fn claim(&self, queue: &str, max: usize, lease: Duration, worker: &str) -> Result<Vec<Job>, StoreError> {
        if max == 0 {
            return Ok(Vec::new());
        }
        check_queue(queue)?;
        let limit = claim_limit(max);
        // READ COMMITTED: no gap locks, so claims neither block enqueues nor each other.
        let mut tx = self
            .pool
            .begin_with("SET TRANSACTION ISOLATION LEVEL READ COMMITTED; START TRANSACTION")
            .await
            .map_err(backend)?;
        // Pending jobs first, then expired leases, each in due order along the
        // (queue, state, due_at) index so that only the rows taken are locked.
        let pick = "SELECT id, payload, attempts, enqueued_at, UTC_TIMESTAMP(6) + INTERVAL ? MICROSECOND AS lease_until \
                    FROM queue_jobs WHERE queue = ? AND state = ? AND due_at <= UTC_TIMESTAMP(6) \
                    ORDER BY due_at, id LIMIT ? FOR UPDATE SKIP LOCKED";
        let mut rows = sqlx::query(pick)
            .bind(micros(lease))
            .bind(queue)
            .bind(PENDING)
            .bind(limit)
            .fetch_all(&mut *tx)
            .await
            .map_err(backend)?;
        let taken = i64::try_from(rows.len()).unwrap_or(limit);
        if taken < limit {
            let expired = sqlx::query(pick)
                .bind(micros(lease))
                .bind(queue)
                .bind(RUNNING)
                .bind(limit - taken)
                .fetch_all(&mut *tx)
                .await
                .map_err(backend)?;
            rows.extend(expired);
        }
        if rows.is_empty() {
            tx.commit().await.map_err(backend)?;
            return Ok(Vec::new());
        }
        let token = new_token();
        let mut jobs = Vec::with_capacity(rows.len());
        for row in &rows {
            jobs.push(Job {
                id: Id::new(row.try_get("id").map_err(backend)?),
                queue: queue.to_owned(),
                payload: row.try_get("payload").map_err(backend)?,
                attempts: attempts(i64::from(row.try_get::<i32, _>("attempts").map_err(backend)?) + 1)?,
                lease_token: token.clone(),
                lease_until: row.try_get::<DateTime<Utc>, _>("lease_until").map_err(backend)?,
                enqueued_at: row.try_get("enqueued_at").map_err(backend)?,
            });
        }
        let Some(lease_until) = jobs.first().map(|j| j.lease_until) else {
            return Ok(Vec::new());
        };
        let sql = format!(
            "UPDATE queue_jobs SET state = 'running', attempts = attempts + 1, lease_token = ?, due_at = ?, worker = ? \
             WHERE id IN ({})",
            placeholders(jobs.len())
        );
        let mut update = sqlx::query(&sql).bind(&token).bind(lease_until).bind(worker);
        for job in &jobs {
            update = update.bind(job.id.get());
        }
        update.execute(&mut *tx).await.map_err(backend)?;
        tx.commit().await.map_err(backend)?;
        for job in &mut jobs {
            job.lease_until = lease_until;
        }
        jobs.sort_unstable_by_key(|j| j.id);
        tracing::debug!(target: "ralph::store", queue, worker, jobs = jobs.len(), "claimed");
        Ok(jobs)
    }

    async fn ack(&self, job: &Job) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE queue_jobs SET state = ?, lease_token = NULL, finished_at = UTC_TIMESTAMP(6) \
             WHERE id = ? AND lease_token = ? AND state = ?",
        )
        .bind(DONE)
        .bind(job.id.get())
        .bind(&job.lease_token)
        .bind(RUNNING)
        .execute(&self.pool)
        .await
        .map_err(backend)?;
        Ok(done.rows_affected() == 1)
    }

    async fn ack_batch(&self, jobs: &[Job]) -> Result<u64, StoreError> {
        let mut held = 0;
        let mut tx = self.pool.begin().await.map_err(backend)?;
        for (token, ids) in super::by_token(jobs) {
            for chunk in ids.chunks(super::ACK_CHUNK) {
                let sql = format!(
                    "UPDATE queue_jobs SET state = 'done', lease_token = NULL, finished_at = UTC_TIMESTAMP(6) \
                     WHERE lease_token = ? AND state = 'running' AND id IN ({})",
                    placeholders(chunk.len())
                );
                let mut query = sqlx::query(&sql).bind(token);
                for id in chunk {
                    query = query.bind(id);
                }
                held += query.execute(&mut *tx).await.map_err(backend)?.rows_affected();
            }
        }
        tx.commit().await.map_err(backend)?;
        Ok(held)
    }

    async fn fail(&self, job: &Job, error: &str, policy: &RetryPolicy) -> Result<FailOutcome, StoreError> {
        let dead = job.attempts >= policy.max_attempts;
        let (state, delay) = if dead { (DEAD, 0) } else { (PENDING, micros(policy.backoff(job.attempts))) };
        // The new due time is computed once so the value reported is the value stored.
        let mut tx = self.pool.begin().await.map_err(backend)?;
        let due: DateTime<Utc> = sqlx::query_scalar("SELECT UTC_TIMESTAMP(6) + INTERVAL ? MICROSECOND")
            .bind(delay)
            .fetch_one(&mut *tx)
            .await
            .map_err(backend)?;
        let result = sqlx::query(
            "UPDATE queue_jobs SET state = ?, due_at = ?, lease_token = NULL, last_error = ?, \
             finished_at = CASE WHEN ? THEN UTC_TIMESTAMP(6) END \
             WHERE id = ? AND lease_token = ? AND state = 'running'",
        )
        .bind(state)
        .bind(due)
        .bind(clip_error(error))
        .bind(dead)
        .bind(job.id.get())
        .bind(&job.lease_token)
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
        tx.commit().await.map_err(backend)?;
        Ok(match (result.rows_affected(), dead) {
            (0, _) => FailOutcome::LeaseLost,
            (_, true) => FailOutcome::Dead,
            (_, false) => FailOutcome::Retry { at: due },
        })
    }

    async fn extend_lease(&self, job: &Job, lease: Duration) -> Result<bool, StoreError> {
        let result = sqlx::query(
            "UPDATE queue_jobs SET due_at = UTC_TIMESTAMP(6) + INTERVAL ? MICROSECOND \
             WHERE id = ? AND lease_token = ? AND state = 'running'",
        )
        .bind(micros(lease))
        .bind(job.id.get())
        .bind(&job.lease_token)
        .execute(&self.pool)
        .await
        .map_err(backend)?;
        Ok(result.rows_affected() == 1)
    }

    async fn reclaim_expired(&self, queue: &str) -> Result<u64, StoreError> {
        let result = sqlx::query(
            "UPDATE queue_jobs SET state = 'pending', lease_token = NULL, due_at = UTC_TIMESTAMP(6) \
             WHERE queue = ? AND state = 'running' AND due_at <= UTC_TIMESTAMP(6)",
        )
        .bind(queue)
        .execute(&self.pool)
        .await
        .map_err(backend)?;
        Ok(result.rows_affected())
    }

    async fn stats(&self, queue: &str) -> Result<QueueStats, StoreError> {
        let row = sqlx::query(&format!("SELECT {STATS_COLUMNS} FROM queue_jobs WHERE queue = ?"))
            .bind(queue)
            .fetch_one(&self.pool)
            .await
            .map_err(backend)?;
        stats(queue.to_owned(), &row)
    }

    async fn all_stats(&self) -> Result<Vec<QueueStats>, StoreError> {
        let rows = sqlx::query(&format!("SELECT queue, {STATS_COLUMNS} FROM queue_jobs GROUP BY queue ORDER BY queue"))
            .fetch_all(&self.pool)
            .await
            .map_err(backend)?;
        rows.iter()
            .map(|row| {
                // `utf8mb4_bin` columns come back flagged binary; the bytes are UTF-8 all the same.
                let name: Vec<u8> = row.try_get("queue").map_err(backend)?;
                let name = String::from_utf8(name).map_err(|_| corrupt("queue name is not UTF-8"))?;
                stats(name, row)
            })
            .collect()
    }
}
