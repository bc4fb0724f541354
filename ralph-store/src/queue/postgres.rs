//! The job queue on PostgreSQL: claims with `FOR UPDATE SKIP LOCKED`, times from the server clock.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use ralph_core::{FailOutcome, Id, Job, JobQueue, QueueStats, RetryPolicy, StoreError};
use sqlx::Row;
use sqlx::postgres::{PgPool, PgRow};

use super::{
    DEAD, DONE, PENDING, RUNNING, age, attempts, backend, check_queue, claim_limit, clip_error, count, micros,
    new_token,
};

/// [`JobQueue`] on a PostgreSQL database, shared by workers on any number of machines.
#[derive(Debug, Clone)]
pub struct PgQueue {
    pool: PgPool,
}

impl PgQueue {
    /// A queue over `pool`, whose database must hold the store's migrations (see
    /// [`PgQueue::migrate`]).
    #[must_use]
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    /// The pool the queue uses.
    #[must_use]
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Runs the store's PostgreSQL migrations (the job table among them) under sqlx's advisory
    /// migration lock; a no-op when they ran.
    ///
    /// # Errors
    /// The migration failed.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        crate::SqlStore::<sqlx::Postgres>::from_pool(self.pool.clone()).migrate().await
    }
}

fn job(row: &PgRow) -> Result<Job, StoreError> {
    Ok(Job {
        id: Id::new(row.try_get("id").map_err(backend)?),
        queue: row.try_get("queue").map_err(backend)?,
        payload: row.try_get("payload").map_err(backend)?,
        attempts: attempts(i64::from(row.try_get::<i32, _>("attempts").map_err(backend)?))?,
        lease_token: row.try_get("lease_token").map_err(backend)?,
        lease_until: row.try_get("due_at").map_err(backend)?,
        enqueued_at: row.try_get("enqueued_at").map_err(backend)?,
    })
}

fn stats(queue: String, row: &PgRow) -> Result<QueueStats, StoreError> {
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

const STATS_COLUMNS: &str = "COUNT(*) FILTER (WHERE state = 'pending') AS pending, \
     COUNT(*) FILTER (WHERE state = 'running' AND due_at > now()) AS running, \
     COUNT(*) FILTER (WHERE state = 'running' AND due_at <= now()) AS expired, \
     COUNT(*) FILTER (WHERE state = 'dead') AS dead, \
     COUNT(*) FILTER (WHERE state = 'done') AS done, \
     (EXTRACT(EPOCH FROM now() - MIN(enqueued_at) FILTER (WHERE state = 'pending')) * 1000000)::BIGINT AS oldest_age";

#[async_trait]
impl JobQueue for PgQueue {
    async fn enqueue(&self, queue: &str, payloads: &[String]) -> Result<Vec<Id<Job>>, StoreError> {
        check_queue(queue)?;
        if payloads.is_empty() {
            return Ok(Vec::new());
        }
        // One array parameter however many jobs: no bind-parameter limit to chunk under.
        let rows = sqlx::query(
            "INSERT INTO queue_jobs (queue, payload, state, attempts, due_at, enqueued_at) \
             SELECT $1, p, 'pending', 0, now(), now() FROM UNNEST($2::TEXT[]) WITH ORDINALITY AS t(p, n) ORDER BY n \
             RETURNING id",
        )
        .bind(queue)
        .bind(payloads)
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        let mut ids = rows.iter().map(|r| r.try_get::<i64, _>(0)).collect::<Result<Vec<_>, _>>().map_err(backend)?;
        // Ids come from the sequence in insertion order, which follows `n`.
        ids.sort_unstable();
        tracing::debug!(target: "ralph::store", queue, jobs = ids.len(), "enqueued");
        Ok(ids.into_iter().map(Id::new).collect())
    }

    async fn claim(&self, queue: &str, max: usize, lease: Duration, worker: &str) -> Result<Vec<Job>, StoreError> {
        if max == 0 {
            return Ok(Vec::new());
        }
        check_queue(queue)?;
        let rows = sqlx::query(
            "WITH picked AS MATERIALIZED ( \
               (SELECT id FROM (SELECT id FROM queue_jobs WHERE queue = $4 AND state = 'pending' \
                AND due_at <= now() ORDER BY due_at, id LIMIT $5 FOR UPDATE SKIP LOCKED) fresh) \
               UNION ALL \
               (SELECT id FROM (SELECT id FROM queue_jobs WHERE queue = $4 AND state = 'running' \
                AND due_at <= now() ORDER BY due_at, id LIMIT $5 FOR UPDATE SKIP LOCKED) expired) \
               LIMIT $5) \
             UPDATE queue_jobs j SET state = 'running', attempts = j.attempts + 1, lease_token = $1, \
             due_at = now() + $2 * INTERVAL '1 microsecond', worker = $3 \
             FROM picked WHERE j.id = picked.id \
             RETURNING j.id, j.queue, j.payload, j.attempts, j.lease_token, j.due_at, j.enqueued_at",
        )
        .bind(new_token())
        .bind(micros(lease))
        .bind(worker)
        .bind(queue)
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
            "UPDATE queue_jobs SET state = $1, lease_token = NULL, finished_at = now() \
             WHERE id = $2 AND lease_token = $3 AND state = $4",
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
            held += sqlx::query(
                "UPDATE queue_jobs SET state = 'done', lease_token = NULL, finished_at = now() \
                 WHERE lease_token = $1 AND state = 'running' AND id = ANY($2)",
            )
            .bind(token)
            .bind(&ids)
            .execute(&mut *tx)
            .await
            .map_err(backend)?
            .rows_affected();
        }
        tx.commit().await.map_err(backend)?;
        Ok(held)
    }

    async fn fail(&self, job: &Job, error: &str, policy: &RetryPolicy) -> Result<FailOutcome, StoreError> {
        let dead = job.attempts >= policy.max_attempts;
        let (state, delay) = if dead { (DEAD, 0) } else { (PENDING, micros(policy.backoff(job.attempts))) };
        let row = sqlx::query(
            "UPDATE queue_jobs SET state = $1, due_at = now() + $2 * INTERVAL '1 microsecond', lease_token = NULL, \
             last_error = $3, finished_at = CASE WHEN $1 = 'dead' THEN now() END \
             WHERE id = $4 AND lease_token = $5 AND state = 'running' RETURNING due_at",
        )
        .bind(state)
        .bind(delay)
        .bind(clip_error(error))
        .bind(job.id.get())
        .bind(&job.lease_token)
        .fetch_optional(&self.pool)
        .await
        .map_err(backend)?;
        Ok(match (row, dead) {
            (None, _) => FailOutcome::LeaseLost,
            (Some(_), true) => FailOutcome::Dead,
            (Some(row), false) => FailOutcome::Retry { at: row.try_get::<DateTime<Utc>, _>(0).map_err(backend)? },
        })
    }

    async fn extend_lease(&self, job: &Job, lease: Duration) -> Result<bool, StoreError> {
        let result = sqlx::query(
            "UPDATE queue_jobs SET due_at = now() + $1 * INTERVAL '1 microsecond' \
             WHERE id = $2 AND lease_token = $3 AND state = 'running'",
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
            "UPDATE queue_jobs SET state = 'pending', lease_token = NULL, due_at = now() \
             WHERE queue = $1 AND state = 'running' AND due_at <= now()",
        )
        .bind(queue)
        .execute(&self.pool)
        .await
        .map_err(backend)?;
        Ok(result.rows_affected())
    }

    async fn stats(&self, queue: &str) -> Result<QueueStats, StoreError> {
        let row = sqlx::query(&format!("SELECT {STATS_COLUMNS} FROM queue_jobs WHERE queue = $1"))
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
        rows.iter().map(|row| stats(row.try_get("queue").map_err(backend)?, row)).collect()
    }
}
