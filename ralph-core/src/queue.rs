//! The durable job queue trait: named queues, leases, retries with back-off, dead letters and
//! per-queue statistics ("how many jobs wait on this queue?").

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::{Id, StoreError};

/// A job as a worker sees it after claiming it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    /// The job's id.
    pub id: Id<Job>,
    /// The queue it was taken from.
    pub queue: String,
    /// The payload, JSON text by convention.
    pub payload: String,
    /// How many times it has been claimed, this claim included.
    pub attempts: u32,
    /// Identifies this claim; [`JobQueue::ack`] and [`JobQueue::fail`] only act while it
    /// still holds, so a worker whose lease expired cannot ack a job another worker re-took.
    pub lease_token: String,
    /// When the lease runs out and the job becomes claimable again.
    pub lease_until: DateTime<Utc>,
    /// When it was enqueued.
    pub enqueued_at: DateTime<Utc>,
}

/// Retry behaviour of a queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetryPolicy {
    /// Claims after which a failing job is dead-lettered.
    pub max_attempts: u32,
    /// Back-off after the first failure; doubles with each further attempt.
    pub base_backoff: Duration,
    /// Upper bound of the back-off.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self { max_attempts: 5, base_backoff: Duration::from_secs(5), max_backoff: Duration::from_secs(600) }
    }
}

impl RetryPolicy {
    /// The back-off before attempt `attempts + 1`: `base * 2^(attempts-1)`, capped.
    #[must_use]
    pub fn backoff(&self, attempts: u32) -> Duration {
        let exp = attempts.saturating_sub(1).min(31);
        self.base_backoff.saturating_mul(1u32 << exp).min(self.max_backoff)
    }
}

/// What [`JobQueue::fail`] did with the job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FailOutcome {
    /// It will be claimable again at this time.
    Retry {
        /// When it becomes claimable.
        at: DateTime<Utc>,
    },
    /// It used up its attempts and was dead-lettered.
    Dead,
    /// The lease had already been lost (expired and re-taken); nothing changed.
    LeaseLost,
}

/// Counts for one queue: the answer to "how many tasks are waiting".
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct QueueStats {
    /// The queue's name.
    pub queue: String,
    /// Waiting to be claimed (including ones waiting for a retry).
    pub pending: u64,
    /// Claimed, lease not expired.
    pub running: u64,
    /// Claimed, lease expired: the worker probably died; [`JobQueue::reclaim_expired`] frees them.
    pub expired: u64,
    /// Dead-lettered after too many failures.
    pub dead: u64,
    /// Acknowledged.
    pub done: u64,
    /// Age of the oldest pending job.
    pub oldest_pending_age: Option<Duration>,
}

/// A durable queue shared by workers in one process or many machines.
///
/// Claiming is exclusive (no job is held by two live leases) and jobs are delivered at least
/// once: a job whose lease expires is claimable again.
#[async_trait]
pub trait JobQueue: Send + Sync {
    /// Adds jobs to `queue` in one transaction; returns their ids in order.
    async fn enqueue(&self, queue: &str, payloads: &[String]) -> Result<Vec<Id<Job>>, StoreError>;

    /// Claims up to `max` claimable jobs of `queue` (oldest first) for `lease`. Jobs whose
    /// lease expired count as claimable.
    async fn claim(&self, queue: &str, max: usize, lease: Duration, worker: &str) -> Result<Vec<Job>, StoreError>;

    /// Marks a claimed job done. Returns `false` when the lease was lost.
    async fn ack(&self, job: &Job) -> Result<bool, StoreError>;

    /// Marks several claimed jobs done, in one statement where the backend can (a worker that
    /// claimed a batch acks it at once instead of paying one commit per job). Returns how many
    /// were still held; the others' leases were lost. The default acks them one by one.
    async fn ack_batch(&self, jobs: &[Job]) -> Result<u64, StoreError> {
        let mut held = 0;
        for job in jobs {
            if self.ack(job).await? {
                held += 1;
            }
        }
        Ok(held)
    }

    /// Records a failure: retried after the policy's back-off, or dead-lettered.
    async fn fail(&self, job: &Job, error: &str, policy: &RetryPolicy) -> Result<FailOutcome, StoreError>;

    /// Extends a claimed job's lease. Returns `false` when the lease was lost.
    async fn extend_lease(&self, job: &Job, lease: Duration) -> Result<bool, StoreError>;

    /// Returns jobs of `queue` whose lease expired to the pending state; returns how many.
    async fn reclaim_expired(&self, queue: &str) -> Result<u64, StoreError>;

    /// Counts for one queue.
    async fn stats(&self, queue: &str) -> Result<QueueStats, StoreError>;

    /// Counts for every queue that holds jobs.
    async fn all_stats(&self) -> Result<Vec<QueueStats>, StoreError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let p = RetryPolicy {
            max_attempts: 10,
            base_backoff: Duration::from_secs(2),
            max_backoff: Duration::from_secs(60),
        };
        assert_eq!(p.backoff(1), Duration::from_secs(2));
        assert_eq!(p.backoff(2), Duration::from_secs(4));
        assert_eq!(p.backoff(5), Duration::from_secs(32));
        assert_eq!(p.backoff(6), Duration::from_secs(60));
        assert_eq!(p.backoff(u32::MAX), Duration::from_secs(60));
    }
}
