//! The durable job queue traits: [`JobQueue`] for workers (enqueue, claim, lease, ack, fail)
//! and [`QueueAdmin`] for operators and status pages (per-queue statistics, "how many jobs wait
//! on this queue?", job lists, retry, discard, purge, pause, worker heartbeats).

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::history::Actor;
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
    /// How many times it has been claimed, this claim included (a claim that handed the job
    /// back with [`JobQueue::requeue`] does not count).
    pub attempts: u32,
    /// Identifies this claim; [`JobQueue::ack`] and [`JobQueue::fail`] only act while it
    /// still holds, so a worker whose lease expired cannot ack a job another worker re-took.
    /// The job keeps it after an ack or fail, so that repeating one finds what it did.
    pub lease_token: String,
    /// When the lease runs out and the job becomes claimable again.
    pub lease_until: DateTime<Utc>,
    /// When it was enqueued.
    pub enqueued_at: DateTime<Utc>,
}

/// Retry behaviour of a queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetryPolicy {
    /// Claims after which a failing job is dead-lettered (claims that handed the job back with
    /// [`JobQueue::requeue`] do not count).
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
    /// Dead-lettered after too many failures or expired leases.
    pub dead: u64,
    /// Acknowledged.
    pub done: u64,
    /// Age of the oldest pending job.
    pub oldest_pending_age: Option<Duration>,
    /// Claims are paused ([`QueueAdmin::set_paused`]).
    #[serde(default)]
    pub paused: bool,
}

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum JobState {
    /// Waiting to be claimed (now or after a retry back-off).
    Pending,
    /// Claimed under a lease (which may have expired).
    Running,
    /// Acknowledged.
    Done,
    /// Dead-lettered: used up its attempts, or discarded from further work.
    Dead,
}

impl JobState {
    /// Every state, in life order.
    pub const ALL: [Self; 4] = [Self::Pending, Self::Running, Self::Done, Self::Dead];

    /// `"pending"`, `"running"`, `"done"` or `"dead"`, as stored.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Running => "running",
            Self::Done => "done",
            Self::Dead => "dead",
        }
    }

    /// Parses [`JobState::as_str`]'s names.
    ///
    /// # Errors
    /// [`crate::ValidationError::UnknownName`].
    pub fn parse(input: &str) -> Result<Self, crate::ValidationError> {
        Self::ALL
            .into_iter()
            .find(|s| s.as_str() == input)
            .ok_or_else(|| crate::ValidationError::UnknownName { what: "job state", input: input.to_owned() })
    }
}

impl JobInfo {
    /// The cursor that lists the jobs after this one.
    #[must_use]
    pub const fn cursor(&self) -> JobCursor {
        JobCursor { due_at: self.due_at, id: self.id }
    }
}

/// A job as an operator sees it in a list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobInfo {
    /// The job's id.
    pub id: Id<Job>,
    /// Its queue.
    pub queue: String,
    /// Its state.
    pub state: JobState,
    /// The payload.
    pub payload: String,
    /// Claims so far (not counting those that handed the job back with [`JobQueue::requeue`]).
    pub attempts: u32,
    /// The worker that claimed it last.
    pub worker: Option<String>,
    /// The last failure (or why it was dead-lettered).
    pub last_error: Option<String>,
    /// Pending: claimable from; running: the lease runs out at.
    pub due_at: DateTime<Utc>,
    /// When it was enqueued.
    pub enqueued_at: DateTime<Utc>,
    /// When it was acknowledged or dead-lettered.
    pub finished_at: Option<DateTime<Utc>>,
}

/// A worker's heartbeat: who it is, what it serves, what it holds, when it was last seen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerBeat {
    /// Unique worker name (one row per name).
    pub name: String,
    /// Host name.
    pub host: String,
    /// Process id.
    pub pid: u32,
    /// The queues it serves.
    pub queues: Vec<String>,
    /// The jobs it runs now.
    pub current_jobs: Vec<Id<Job>>,
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// When it last beat, by the store's clock (set by [`QueueAdmin::heartbeat`]; the value
    /// handed in is ignored).
    pub last_seen: DateTime<Utc>,
    /// How far the current jobs have got, for those that report progress (scan jobs do).
    #[serde(default)]
    pub progress: Vec<JobProgress>,
}

/// How far a running job has got, as its worker last reported it in a [`WorkerBeat`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobProgress {
    /// The job.
    pub job: Id<Job>,
    /// Items (a scan's targets) in the job, when known.
    pub total: Option<u64>,
    /// Items finished.
    pub done: u64,
    /// Items finished with a positive answer (a scan's hosts that are up).
    pub alive: u64,
    /// Congestion events met so far (a scan's ENOBUFS/EAGAIN and rate halvings).
    pub congestion_events: u64,
    /// Time since the job started.
    pub elapsed: Duration,
}

impl JobProgress {
    /// Items finished per second so far; `None` before the first millisecond.
    #[must_use]
    pub fn per_sec(&self) -> Option<f64> {
        let secs = self.elapsed.as_secs_f64();
        #[allow(clippy::cast_precision_loss)] // counts far below 2^52
        (secs >= 0.001).then(|| self.done as f64 / secs)
    }

    /// Time left at the rate so far; `None` when the total or a rate is unknown.
    #[must_use]
    pub fn eta(&self) -> Option<Duration> {
        let left = self.total?.saturating_sub(self.done);
        if left == 0 {
            return Some(Duration::ZERO);
        }
        let rate = self.per_sec().filter(|r| *r > 0.0)?;
        #[allow(clippy::cast_precision_loss)]
        Duration::try_from_secs_f64(left as f64 / rate).ok()
    }
}

/// A count that stops at a cap, so that counting never scans a huge table: a status page shows
/// `10000+` where there are more.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
pub struct CappedCount {
    /// The count, or the cap when [`CappedCount::capped`].
    pub count: u64,
    /// True when there are more than `count`.
    pub capped: bool,
}

impl CappedCount {
    /// An exact count.
    #[must_use]
    pub const fn exact(count: u64) -> Self {
        Self { count, capped: false }
    }

    /// `seen` rows counted with `cap + 1` as the limit: exact up to `cap`, else `cap` and more.
    #[must_use]
    pub const fn of(seen: u64, cap: u64) -> Self {
        if seen > cap { Self { count: cap, capped: true } } else { Self::exact(seen) }
    }
}

impl std::fmt::Display for CappedCount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}{}", self.count, if self.capped { "+" } else { "" })
    }
}

/// Largest cap [`QueueAdmin::overview`] and [`QueueAdmin::count_jobs`] take; larger ones are
/// clamped.
pub const MAX_CAP: u64 = 1_000_000;

/// Longest text [`JobFilter::payload_contains`] takes, in characters.
pub const MAX_FILTER_TEXT: usize = 255;

/// One queue as a status page shows it. Every count is capped ([`CappedCount`]), so the
/// overview costs the same with a thousand jobs or a hundred million.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct QueueOverview {
    /// The queue's name.
    pub queue: String,
    /// Pending and due: claimable now.
    pub pending: CappedCount,
    /// Pending, due later, never tried (enqueued for later).
    pub scheduled: CappedCount,
    /// Pending, due later after a failure: waiting out a retry back-off.
    pub retrying: CappedCount,
    /// Claimed, lease not expired.
    pub running: CappedCount,
    /// Claimed, lease expired: the worker probably died ([`QueueAdmin::reclaim_expired`]).
    pub expired: CappedCount,
    /// Dead-lettered.
    pub dead: CappedCount,
    /// Acknowledged within the last hour.
    pub done_last_hour: CappedCount,
    /// How long the longest-waiting claimable job has been due: the queue's latency.
    pub oldest_pending_age: Option<Duration>,
    /// Claims are paused ([`QueueAdmin::set_paused`]).
    pub paused: bool,
}

/// Which jobs of a queue [`QueueAdmin::find_jobs`] and [`QueueAdmin::count_jobs`] take.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobFilter {
    /// The state.
    pub state: JobState,
    /// Only jobs whose payload contains this text (case-insensitive for ASCII letters;
    /// `%` and `_` are plain characters). Empty means no filter.
    #[serde(default)]
    pub payload_contains: Option<String>,
}

impl JobFilter {
    /// Every job in `state`.
    #[must_use]
    pub const fn state(state: JobState) -> Self {
        Self { state, payload_contains: None }
    }

    /// Only jobs whose payload contains `text`.
    #[must_use]
    pub fn containing(mut self, text: impl Into<String>) -> Self {
        self.payload_contains = Some(text.into());
        self
    }

    /// The payload text to look for, if any (empty counts as none).
    ///
    /// # Errors
    /// [`crate::ValidationError::TooLong`] past [`MAX_FILTER_TEXT`] characters.
    pub fn needle(&self) -> Result<Option<&str>, crate::ValidationError> {
        match self.payload_contains.as_deref() {
            None | Some("") => Ok(None),
            Some(text) => crate::text::check_len("payload filter", text, MAX_FILTER_TEXT).map(|()| Some(text)),
        }
    }
}

/// Where a page of [`QueueAdmin::find_jobs`] ended: the next page starts after it. Jobs are
/// listed by `due_at`, then id (the order the queue's index keeps).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct JobCursor {
    /// The last job's `due_at`.
    pub due_at: DateTime<Utc>,
    /// The last job's id.
    pub id: Id<Job>,
}

impl WorkerBeat {
    /// Checks the names: worker and host 1–255 characters, queue names as queues take them.
    ///
    /// # Errors
    /// The first name that breaks a rule.
    pub fn validate(&self) -> Result<(), crate::ValidationError> {
        for (field, value) in [("worker", self.name.as_str()), ("host", self.host.as_str())]
            .into_iter()
            .chain(self.queues.iter().map(|q| ("queue", q.as_str())))
        {
            if value.trim().is_empty() {
                return Err(crate::ValidationError::Empty { field });
            }
            crate::text::check_len(field, value, 255)?;
        }
        Ok(())
    }
}

/// A durable queue shared by workers in one process or many machines.
///
/// Claiming is exclusive (no job is held by two live leases) and jobs are delivered at least
/// once: a job whose lease expires is claimable again, until it has been claimed as often as the
/// queue's retry policy allows: then the claim dead-letters it ("lease expired N times"), so a
/// job that kills its worker every time does not circulate for ever. A paused queue hands out
/// no jobs.
#[async_trait]
pub trait JobQueue: Send + Sync {
    /// Adds jobs to `queue` in one transaction; returns their ids in order.
    async fn enqueue(&self, queue: &str, payloads: &[String]) -> Result<Vec<Id<Job>>, StoreError>;

    /// Claims up to `max` claimable jobs of `queue` (oldest first) for `lease`. Jobs whose
    /// lease expired count as claimable.
    async fn claim(&self, queue: &str, max: usize, lease: Duration, worker: &str) -> Result<Vec<Job>, StoreError>;

    /// Marks a claimed job done. Returns `false` when the lease was lost.
    ///
    /// Repeating an ack with the same [`Job`] returns `true` again and changes nothing (until
    /// [`QueueAdmin::purge`] removes the done job), so a caller may repeat it after the reply
    /// to a committed ack was lost (a killed connection, a failover) without taking the job
    /// for lost.
    async fn ack(&self, job: &Job) -> Result<bool, StoreError>;

    /// Marks several claimed jobs done, in one statement where the backend can (a worker that
    /// claimed a batch acks it at once instead of paying one commit per job). Returns how many
    /// distinct jobs are done under the claims named (a job named twice by the same claim
    /// counts once; jobs this claim acked before count, as a repeated [`JobQueue::ack`] does);
    /// the others' leases were lost. The default acks them one by one.
    async fn ack_batch(&self, jobs: &[Job]) -> Result<u64, StoreError> {
        let mut seen = std::collections::HashSet::new();
        let mut held = 0;
        for job in jobs {
            if seen.insert((job.id, job.lease_token.as_str())) && self.ack(job).await? {
                held += 1;
            }
        }
        Ok(held)
    }

    /// Records a failure: retried after the policy's back-off, or dead-lettered. Returns
    /// [`FailOutcome::LeaseLost`] and changes nothing when the lease was lost.
    ///
    /// Repeating a fail with the same [`Job`] and policy returns what the first one did (while
    /// the job waits for its retry or stays dead, and no operator retried it) and changes
    /// nothing, like a repeated [`JobQueue::ack`].
    async fn fail(&self, job: &Job, error: &str, policy: &RetryPolicy) -> Result<FailOutcome, StoreError>;

    /// Extends a claimed job's lease. Returns `false` when the lease was lost.
    async fn extend_lease(&self, job: &Job, lease: Duration) -> Result<bool, StoreError>;

    /// Hands a claimed job back with what is left of it: the job becomes pending again, now,
    /// with `payload` in place of its own, and this claim does not count as an attempt (a
    /// worker that stops mid-job at shutdown gives the rest back this way). Returns `false`
    /// and changes nothing when the lease was lost.
    ///
    /// Repeating it with the same [`Job`] returns `true` again and changes nothing (while the
    /// job waits to be claimed), like a repeated [`JobQueue::ack`]: a caller that lost the
    /// reply repeats it without the rest being queued twice.
    ///
    /// The default extends the lease, enqueues the rest as a new job and acks this one: steps
    /// that are not one transaction, so it is neither safe to repeat (a repeat after it
    /// succeeded returns `false`; one after a lost reply can queue the rest twice) nor all or
    /// nothing (an ack that finds the lease lost leaves the rest queued). The stores of
    /// `ralph-store` and the in-memory store override it with one statement.
    async fn requeue(&self, job: &Job, payload: &str) -> Result<bool, StoreError> {
        if !self.extend_lease(job, Duration::from_secs(60)).await? {
            return Ok(false);
        }
        self.enqueue(&job.queue, &[payload.to_owned()]).await?;
        self.ack(job).await
    }
}

/// What a job handed back by [`JobQueue::requeue`] keeps in place of its claim's lease token
/// (for store implementations): a repeat of the same requeue recognises it, and nothing else
/// of that claim (a repeated ack or fail) matches it.
#[must_use]
pub fn requeue_mark(lease_token: &str) -> String {
    format!("{lease_token}:requeued")
}

/// The object id under which a queue's pause and resume are recorded in the change history
/// (queues have names, not ids; the record's message names the queue). Every queue shares
/// it: `object_history("queue", QUEUE_OBJECT_ID, n)` lists all queues' pauses, and
/// [`Retention::max_per_object`](crate::history::Retention::max_per_object) keeps that many
/// pause records across all queues together.
pub const QUEUE_OBJECT_ID: i64 = 0;

/// Checks the `from` state of [`QueueAdmin::retry_jobs`] and [`QueueAdmin::discard_jobs`]:
/// only dead or pending jobs are retried or discarded.
///
/// # Errors
/// [`crate::ValidationError::Invalid`] for another state.
pub fn check_admin_state(from: JobState) -> Result<(), crate::ValidationError> {
    if matches!(from, JobState::Dead | JobState::Pending) {
        Ok(())
    } else {
        Err(crate::ValidationError::Invalid {
            field: "state",
            reason: format!("only dead or pending jobs can be retried or discarded, not {}", from.as_str()),
        })
    }
}

/// Longest job list one [`QueueAdmin::list_jobs`] call returns; larger limits are clamped.
pub const MAX_LIST: usize = 1_000;

/// What an operator (or a status page) reads and does with the queues.
#[async_trait]
pub trait QueueAdmin: Send + Sync {
    /// Counts for one queue.
    async fn stats(&self, queue: &str) -> Result<QueueStats, StoreError>;

    /// Counts for every queue that holds jobs or is paused.
    async fn all_stats(&self) -> Result<Vec<QueueStats>, StoreError>;

    /// Returns jobs of `queue` whose lease expired to the pending state; returns how many.
    /// Those out of attempts (see [`RetryPolicy::max_attempts`]) are dead-lettered instead.
    async fn reclaim_expired(&self, queue: &str) -> Result<u64, StoreError>;

    /// Up to `limit` (at most [`MAX_LIST`]) jobs of `queue` in `state`, oldest first.
    async fn list_jobs(&self, queue: &str, state: JobState, limit: usize) -> Result<Vec<JobInfo>, StoreError>;

    /// Every queue that holds jobs or is paused, each count capped at `cap` (at most
    /// [`MAX_CAP`]): what a status page shows. Each count reads at most `cap + 1` index entries.
    async fn overview(&self, cap: u64) -> Result<Vec<QueueOverview>, StoreError>;

    /// One queue's overview, as [`QueueAdmin::overview`] counts it (a queue without jobs has
    /// zero counts). The default filters the whole overview; a store overrides it to read only
    /// this queue, which is what a queue's own page needs.
    async fn queue_overview(&self, queue: &str, cap: u64) -> Result<QueueOverview, StoreError> {
        let all = self.overview(cap).await?;
        Ok(all
            .into_iter()
            .find(|o| o.queue == queue)
            .unwrap_or_else(|| QueueOverview { queue: queue.to_owned(), ..QueueOverview::default() }))
    }

    /// Up to `limit` (at most [`MAX_LIST`]) jobs of `queue` that match `filter`, by `due_at`
    /// then id, starting after `after` (keyset paging: no page costs more than the first).
    ///
    /// # Errors
    /// [`StoreError::Invalid`] for a filter text past [`MAX_FILTER_TEXT`] characters.
    async fn find_jobs(
        &self,
        queue: &str,
        filter: &JobFilter,
        after: Option<JobCursor>,
        limit: usize,
    ) -> Result<Vec<JobInfo>, StoreError>;

    /// How many jobs of `queue` match `filter`, capped at `cap` (at most [`MAX_CAP`]): the
    /// preview count of a bulk action.
    ///
    /// # Errors
    /// As [`QueueAdmin::find_jobs`].
    async fn count_jobs(&self, queue: &str, filter: &JobFilter, cap: u64) -> Result<CappedCount, StoreError>;

    /// Makes the named jobs of `queue` that are still in state `from` (dead or pending)
    /// claimable now with a fresh attempt count; returns how many changed. A job that left
    /// `from` since the caller read it (retried, discarded or claimed by someone else) is left
    /// alone, so a bulk action never acts on a job it did not select. A store that keeps a
    /// change history records each changed job (`job`, its id, `state` and `attempts` before
    /// and after) as done by `by`, in the same transaction.
    ///
    /// # Errors
    /// [`StoreError::Invalid`] when `from` is not [`JobState::Dead`] or [`JobState::Pending`].
    async fn retry_jobs(&self, queue: &str, ids: &[Id<Job>], from: JobState, by: &Actor) -> Result<u64, StoreError>;

    /// Deletes the named jobs of `queue` that are still in state `from` (dead or pending);
    /// returns how many (running jobs are left to their worker). A store that keeps a change
    /// history records each deleted job with its last values (queue, state, attempts, payload,
    /// last error, times) as deleted by `by`, so nothing discarded is lost to the record. Those
    /// copies stay until the history is pruned ([`crate::history::Retention`]), after
    /// [`QueueAdmin::purge`] has removed the job's row: payloads are not a place for secrets.
    ///
    /// Ids are handled in chunks of a few hundred, each its own transaction: an error
    /// returned for a later chunk leaves the earlier chunks' changes (and records) committed.
    ///
    /// # Errors
    /// As [`QueueAdmin::retry_jobs`].
    async fn discard_jobs(&self, queue: &str, ids: &[Id<Job>], from: JobState, by: &Actor) -> Result<u64, StoreError>;

    /// Deletes done jobs finished longer than `done_older_than` ago and dead ones longer than
    /// `dead_older_than` ago, in short chunks (no long lock); returns how many.
    async fn purge(&self, done_older_than: Duration, dead_older_than: Duration) -> Result<u64, StoreError>;

    /// Pauses (no claims hand out jobs) or resumes `queue`; returns whether that changed
    /// anything (`false`: it already was). A store that keeps a change history records a change
    /// as object `queue`, id [`QUEUE_OBJECT_ID`], field `paused`, with the queue's name as the
    /// message, done by `by`.
    async fn set_paused(&self, queue: &str, paused: bool, by: &Actor) -> Result<bool, StoreError>;

    /// Records a worker's heartbeat (inserted, or updated by name).
    async fn heartbeat(&self, beat: &WorkerBeat) -> Result<(), StoreError>;

    /// The workers' last heartbeats, by name.
    async fn workers(&self) -> Result<Vec<WorkerBeat>, StoreError>;
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
