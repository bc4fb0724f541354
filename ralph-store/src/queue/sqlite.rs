//! The job queue on SQLite: single-statement claims under SQLite's one writer.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use ralph_core::{FailOutcome, Id, Job, JobQueue, QueueStats, RetryPolicy, StoreError};
use sqlx::Row;
use sqlx::sqlite::{SqlitePool, SqliteRow};

use super::{
    DEAD, DONE, PENDING, RUNNING, age, attempts, backend, check_queue, claim_limit, clip_error, corrupt, count, micros,
    new_token,
};

/// Bind parameters per statement SQLite allows (`SQLITE_MAX_VARIABLE_NUMBER` since 3.32).
const MAX_PARAMS: usize = 32_766;

/// [`JobQueue`] on a SQLite database.
///
/// Times are kept as microseconds since the Unix epoch from this process's clock: a SQLite file
/// is only shared by processes on one machine, which share that clock.
#[derive(Debug, Clone)]
pub struct SqliteQueue {
    pool: SqlitePool,
}

impl SqliteQueue {
    /// A queue over `pool`, whose database must hold the store's migrations (see
    /// [`SqliteQueue::migrate`]).
    #[must_use]
    pub fn new(pool: SqlitePool) -> Self {
        Self { pool }
    }

    /// The pool the queue uses.
    #[must_use]
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// Runs the store's SQLite migrations (the job table among them); a no-op when they ran.
    ///
    /// # Errors
    /// The migration failed.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        crate::SqlStore::<sqlx::Sqlite>::from_pool(self.pool.clone()).migrate().await
    }
}

fn now_micros() -> i64 {
    Utc::now().timestamp_micros()
}

fn time(micros: i64) -> Result<DateTime<Utc>, StoreError> {
    DateTime::from_timestamp_micros(micros).ok_or_else(|| corrupt(format!("time {micros} out of range")))
}

fn job(row: &SqliteRow) -> Result<Job, StoreError> {
    Ok(Job {
        id: Id::new(row.try_get("id").map_err(backend)?),
        queue: row.try_get("queue").map_err(backend)?,
        payload: row.try_get("payload").map_err(backend)?,
        attempts: attempts(row.try_get("attempts").map_err(backend)?)?,
        lease_token: row.try_get("lease_token").map_err(backend)?,
        lease_until: time(row.try_get("due_at").map_err(backend)?)?,
        enqueued_at: time(row.try_get("enqueued_at").map_err(backend)?)?,
    })
}

fn stats(queue: String, row: &SqliteRow) -> Result<QueueStats, StoreError> {
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
     COUNT(CASE WHEN state = 'running' AND due_at > ?1 THEN 1 END) AS running, \
     COUNT(CASE WHEN state = 'running' AND due_at <= ?1 THEN 1 END) AS expired, \
     COUNT(CASE WHEN state = 'dead' THEN 1 END) AS dead, \
     COUNT(CASE WHEN state = 'done' THEN 1 END) AS done, \
     ?1 - MIN(CASE WHEN state = 'pending' THEN enqueued_at END) AS oldest_age";

#[async_trait]
impl JobQueue for SqliteQueue {
    async fn enqueue(&self, queue: &str, payloads: &[String]) -> Result<Vec<Id<Job>>, StoreError> {
        check_queue(queue)?;
        let now = now_micros();
        let mut ids = Vec::with_capacity(payloads.len());
        let mut tx = self.pool.begin().await.map_err(backend)?;
        for chunk in payloads.chunks(MAX_PARAMS - 2) {
            // `?1` is the queue, `?2` the time, `?3...` the payloads.
            let mut sql =
                String::from("INSERT INTO queue_jobs (queue, payload, state, attempts, due_at, enqueued_at) VALUES ");
            for n in 0..chunk.len() {
                if n > 0 {
                    sql.push_str(", ");
                }
                sql.push_str(&format!("(?1, ?{}, 'pending', 0, ?2, ?2)", n + 3));
            }
            sql.push_str(" RETURNING id");
            let mut query = sqlx::query(&sql).bind(queue).bind(now);
            for payload in chunk {
                query = query.bind(payload.as_str());
            }
            let rows = query.fetch_all(&mut *tx).await.map_err(backend)?;
            let mut chunk_ids =
                rows.iter().map(|r| r.try_get::<i64, _>(0)).collect::<Result<Vec<_>, _>>().map_err(backend)?;
            chunk_ids.sort_unstable();
            ids.extend(chunk_ids.into_iter().map(Id::new));
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
        let now = now_micros();
        let token = new_token();
        let rows = sqlx::query(
            "UPDATE queue_jobs SET state = 'running', attempts = attempts + 1, lease_token = ?1, due_at = ?2, \
             worker = ?3 WHERE id IN (SELECT id FROM queue_jobs WHERE queue = ?4 AND state IN ('pending', 'running') \
             AND due_at <= ?5 ORDER BY due_at, id LIMIT ?6) \
             RETURNING id, queue, payload, attempts, lease_token, due_at, enqueued_at",
        )
        .bind(&token)
        .bind(now.saturating_add(micros(lease)))
        .bind(worker)
        .bind(queue)
        .bind(now)
        .bind(claim_limit(max))
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        let mut jobs = rows.iter().map(job).collect::<Result<Vec<_>, _>>()?;
        jobs.sort_unstable_by_key(|j| j.id);
        tracing::debug!(target: "ralph::store", queue, worker, jobs = jobs.len(), "claimed");
        Ok(jobs)
    }

    async fn ack(&self, job: &Job) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE queue_jobs SET state = ?1, lease_token = NULL, finished_at = ?2 \
             WHERE id = ?3 AND lease_token = ?4 AND state = ?5",
        )
        .bind(DONE)
        .bind(now_micros())
        .bind(job.id.get())
        .bind(&job.lease_token)
        .bind(RUNNING)
        .execute(&self.pool)
        .await
        .map_err(backend)?;
        Ok(done.rows_affected() == 1)
    }

    async fn ack_batch(&self, jobs: &[Job]) -> Result<u64, StoreError> {
        let now = now_micros();
        let mut held = 0;
        let mut tx = self.pool.begin().await.map_err(backend)?;
        for (token, ids) in super::by_token(jobs) {
            for chunk in ids.chunks(super::ACK_CHUNK) {
                let sql = format!(
                    "UPDATE queue_jobs SET state = 'done', lease_token = NULL, finished_at = ? \
                     WHERE lease_token = ? AND state = 'running' AND id IN ({})",
                    vec!["?"; chunk.len()].join(", ")
                );
                let mut query = sqlx::query(&sql).bind(now).bind(token);
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
        let now = now_micros();
        let dead = job.attempts >= policy.max_attempts;
        let (state, due) =
            if dead { (DEAD, now) } else { (PENDING, now.saturating_add(micros(policy.backoff(job.attempts)))) };
        let result = sqlx::query(
            "UPDATE queue_jobs SET state = ?1, due_at = ?2, lease_token = NULL, last_error = ?3, \
             finished_at = CASE WHEN ?1 = 'dead' THEN ?4 END \
             WHERE id = ?5 AND lease_token = ?6 AND state = 'running'",
        )
        .bind(state)
        .bind(due)
        .bind(clip_error(error))
        .bind(now)
        .bind(job.id.get())
        .bind(&job.lease_token)
        .execute(&self.pool)
        .await
        .map_err(backend)?;
        Ok(match (result.rows_affected(), dead) {
            (0, _) => FailOutcome::LeaseLost,
            (_, true) => FailOutcome::Dead,
            (_, false) => FailOutcome::Retry { at: time(due)? },
        })
    }

    async fn extend_lease(&self, job: &Job, lease: Duration) -> Result<bool, StoreError> {
        let result =
            sqlx::query("UPDATE queue_jobs SET due_at = ?1 WHERE id = ?2 AND lease_token = ?3 AND state = 'running'")
                .bind(now_micros().saturating_add(micros(lease)))
                .bind(job.id.get())
                .bind(&job.lease_token)
                .execute(&self.pool)
                .await
                .map_err(backend)?;
        Ok(result.rows_affected() == 1)
    }

    async fn reclaim_expired(&self, queue: &str) -> Result<u64, StoreError> {
        let now = now_micros();
        let result = sqlx::query(
            "UPDATE queue_jobs SET state = 'pending', lease_token = NULL, due_at = ?1 \
             WHERE queue = ?2 AND state = 'running' AND due_at <= ?1",
        )
        .bind(now)
        .bind(queue)
        .execute(&self.pool)
        .await
        .map_err(backend)?;
        Ok(result.rows_affected())
    }

    async fn stats(&self, queue: &str) -> Result<QueueStats, StoreError> {
        let row = sqlx::query(&format!("SELECT {STATS_COLUMNS} FROM queue_jobs WHERE queue = ?2"))
            .bind(now_micros())
            .bind(queue)
            .fetch_one(&self.pool)
            .await
            .map_err(backend)?;
        stats(queue.to_owned(), &row)
    }

    async fn all_stats(&self) -> Result<Vec<QueueStats>, StoreError> {
        let rows = sqlx::query(&format!("SELECT queue, {STATS_COLUMNS} FROM queue_jobs GROUP BY queue ORDER BY queue"))
            .bind(now_micros())
            .fetch_all(&self.pool)
            .await
            .map_err(backend)?;
        rows.iter().map(|row| stats(row.try_get("queue").map_err(backend)?, row)).collect()
    }
}
