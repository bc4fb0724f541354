//! [`JobQueue`] once for all backends; the claim itself, which each database does its own way,
//! is the dialect's ([`Dialect::claim`](crate::dialect::Dialect::claim)).

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use ralph_core::history::{Action as HistoryAction, Actor, FieldChange, HistoryRecord, new_correlation};
use ralph_core::queue::{QUEUE_OBJECT_ID, check_admin_state};
use ralph_core::{
    CappedCount, FailOutcome, Id, Job, JobCursor, JobFilter, JobInfo, JobProgress, JobQueue, JobState, QueueAdmin,
    QueueOverview, QueueStats, RetryPolicy, StoreError, ValidationError, WorkerBeat,
};
use sqlx::{ColumnIndex, Decode, Encode, Executor, FromRow, IntoArguments, QueryBuilder, Type};

use super::{err, push_list};
use crate::dialect::{Backend, Stamp};
use crate::queue::{MAX_CLAIM, MAX_DELAY, MAX_QUEUE_NAME};
use crate::store::{SqlStore, TRACE_TARGET, commit};

const JOB: &str = "job";

/// Jobs per enqueue or ack statement: far under every backend's bind-parameter limit (SQLite
/// 32,766, the others 65,535) even at four parameters a row.
pub(crate) const CHUNK: usize = 5_000;

/// The longest error text kept on a failed job, in characters.
const MAX_ERROR_LEN: usize = 4000;

/// A claimed job as the claim statements return it.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
#[derive(FromRow)]
pub(crate) struct JobRow {
    pub(crate) id: i64,
    pub(crate) queue: String,
    pub(crate) payload: String,
    pub(crate) attempts: i32,
    pub(crate) lease_token: Option<String>,
    pub(crate) due_at: Stamp,
    pub(crate) enqueued_at: Stamp,
}

#[cfg(any(feature = "sqlite", feature = "postgres"))]
impl JobRow {
    pub(crate) fn into_job(self) -> Result<Job, StoreError> {
        Ok(Job {
            id: Id::new(self.id),
            queue: self.queue,
            payload: self.payload,
            attempts: u32::try_from(self.attempts)
                .map_err(|_| corrupt(format!("attempts {} out of range", self.attempts)))?,
            lease_token: self.lease_token.ok_or_else(|| corrupt("claimed job without a lease token"))?,
            lease_until: self.due_at.0,
            enqueued_at: self.enqueued_at.0,
        })
    }
}

/// A job as [`QueueAdmin::list_jobs`] shows it.
#[derive(FromRow)]
struct JobInfoRow {
    id: i64,
    queue: String,
    state: String,
    payload: String,
    attempts: i32,
    worker: Option<String>,
    last_error: Option<String>,
    due_at: Stamp,
    enqueued_at: Stamp,
    finished_at: Option<Stamp>,
}

impl JobInfoRow {
    fn into_info(self) -> Result<JobInfo, StoreError> {
        Ok(JobInfo {
            id: Id::new(self.id),
            queue: self.queue,
            state: JobState::parse(&self.state).map_err(|e| corrupt(e.to_string()))?,
            payload: self.payload,
            attempts: u32::try_from(self.attempts)
                .map_err(|_| corrupt(format!("attempts {} out of range", self.attempts)))?,
            worker: self.worker,
            last_error: self.last_error,
            due_at: self.due_at.0,
            enqueued_at: self.enqueued_at.0,
            finished_at: self.finished_at.map(|s| s.0),
        })
    }
}

/// Jobs per transaction of an operator's retry or discard: each job also writes a history
/// row, so chunks stay short enough not to hold the write lock for long.
const ADMIN_CHUNK: usize = 500;

/// An operator's action on named jobs.
#[derive(Debug, Clone, Copy)]
enum AdminAction {
    Retry,
    Discard,
}

impl AdminAction {
    const fn as_str(self) -> &'static str {
        match self {
            Self::Retry => "retry",
            Self::Discard => "discard",
        }
    }

    /// The history record of this action on `job` (as read before it), done by `by`. A retry
    /// records state and attempts (its new due time is the database's "now", not known here);
    /// a discard every value the job had.
    fn record(self, job: &JobInfo, by: &Actor) -> HistoryRecord {
        let attempts = job.attempts.to_string();
        let due = job.due_at.to_rfc3339();
        let message = format!("{} in queue {}", self.as_str(), job.queue);
        match self {
            Self::Retry => HistoryRecord::new(JOB, job.id.get(), HistoryAction::Update, by.clone()).with_changes(vec![
                FieldChange::new("state", Some(job.state.as_str()), Some(JobState::Pending.as_str())),
                FieldChange::new("attempts", Some(&attempts), Some("0")),
            ]),
            Self::Discard => {
                HistoryRecord::new(JOB, job.id.get(), HistoryAction::Delete, by.clone()).with_changes(vec![
                    FieldChange::new("queue", Some(&job.queue), None),
                    FieldChange::new("state", Some(job.state.as_str()), None),
                    FieldChange::new("attempts", Some(&attempts), None),
                    FieldChange::new("payload", Some(&job.payload), None),
                    FieldChange::new("last_error", job.last_error.as_deref(), None),
                    FieldChange::new("due_at", Some(&due), None),
                    FieldChange::new("enqueued_at", Some(&job.enqueued_at.to_rfc3339()), None),
                ])
            }
        }
        .with_message(&message)
    }
}

/// A heartbeat row.
#[derive(FromRow)]
struct WorkerRow {
    name: String,
    host: String,
    pid: i64,
    queues: String,
    current_jobs: String,
    started_at: Stamp,
    last_seen: Stamp,
    progress: Option<String>,
}

impl WorkerRow {
    fn into_beat(self) -> Result<WorkerBeat, StoreError> {
        let json = |what: &str, e: serde_json::Error| corrupt(format!("worker {what}: {e}"));
        Ok(WorkerBeat {
            pid: u32::try_from(self.pid).map_err(|_| corrupt(format!("pid {} out of range", self.pid)))?,
            queues: serde_json::from_str(&self.queues).map_err(|e| json("queues", e))?,
            current_jobs: serde_json::from_str::<Vec<i64>>(&self.current_jobs)
                .map_err(|e| json("jobs", e))?
                .into_iter()
                .map(Id::new)
                .collect(),
            progress: match self.progress.as_deref() {
                None | Some("") => Vec::new(),
                Some(text) => serde_json::from_str::<Vec<JobProgress>>(text).map_err(|e| json("progress", e))?,
            },
            name: self.name,
            host: self.host,
            started_at: self.started_at.0,
            last_seen: self.last_seen.0,
        })
    }
}

/// An expired lease of a job out of attempts.
#[derive(FromRow)]
struct SpentRow {
    id: i64,
    attempts: i32,
}

/// Rows per purge statement: short statements, short locks.
const PURGE_CHUNK: i64 = 10_000;

/// One queue's counters.
#[derive(FromRow)]
struct StatsRow {
    queue: String,
    pending: i64,
    running: i64,
    expired: i64,
    dead: i64,
    done: i64,
    oldest_age: Option<i64>,
}

impl StatsRow {
    fn into_stats(self) -> QueueStats {
        let count = |n: i64| u64::try_from(n).unwrap_or(0);
        QueueStats {
            queue: self.queue,
            pending: count(self.pending),
            running: count(self.running),
            expired: count(self.expired),
            dead: count(self.dead),
            done: count(self.done),
            oldest_pending_age: self.oldest_age.map(|m| Duration::from_micros(u64::try_from(m).unwrap_or(0))),
            paused: false,
        }
    }
}

/// One queue's capped counters ([`QueueAdmin::overview`]), each `cap + 1` at most.
#[derive(FromRow)]
struct OverviewRow {
    pending: i64,
    scheduled: i64,
    retrying: i64,
    running: i64,
    expired: i64,
    dead: i64,
    done_last_hour: i64,
    oldest_age: Option<i64>,
}

/// The `WHERE` conditions of each [`QueueOverview`] count, after `queue = ? AND `, and the
/// order that keeps the read on one index; `{now}` stands for the dialect's current time,
/// `{hour_ago}` for an hour before it. Each condition is a range of the `(queue, state,
/// due_at)` index, except the last, which the `(state, finished_at)` one serves (read newest
/// first: without the order PostgreSQL reads the whole hour into a bitmap before the limit).
const OVERVIEW_COUNTS: [(&str, &str, &str); 7] = [
    ("pending", "state = 'pending' AND due_at <= {now}", ""),
    ("scheduled", "state = 'pending' AND due_at > {now} AND attempts = 0", ""),
    ("retrying", "state = 'pending' AND due_at > {now} AND attempts > 0", ""),
    ("running", "state = 'running' AND due_at > {now}", ""),
    ("expired", "state = 'running' AND due_at <= {now}", ""),
    ("dead", "state = 'dead'", ""),
    (
        "done_last_hour",
        "state = 'done' AND finished_at IS NOT NULL AND finished_at >= {hour_ago}",
        " ORDER BY finished_at DESC",
    ),
];

/// Pushes `condition` with the dialect's clock in place of `{now}` and `{hour_ago}`.
fn push_timed<DB: Backend>(qb: &mut QueryBuilder<DB>, condition: &str) {
    let mut parts = condition.split('{');
    qb.push(parts.next().unwrap_or_default());
    for part in parts {
        if let Some(rest) = part.strip_prefix("now}") {
            DB::push_now(qb);
            qb.push(rest);
        } else if let Some(rest) = part.strip_prefix("hour_ago}") {
            DB::push_now_plus(qb, -3_600_000_000);
            qb.push(rest);
        } else {
            qb.push("{").push(part);
        }
    }
}

/// The pattern `LIKE ... ESCAPE '!'` takes for "contains `needle`", lower-cased.
fn contains_pattern(needle: &str) -> String {
    let mut pattern = String::with_capacity(needle.len() + 2);
    pattern.push('%');
    for c in needle.chars().map(|c| c.to_ascii_lowercase()) {
        if matches!(c, '!' | '%' | '_') {
            pattern.push('!');
        }
        pattern.push(c);
    }
    pattern.push('%');
    pattern
}

/// The cap as a row limit: `cap + 1` rows tell "more than `cap`".
fn cap_limit(cap: u64) -> (u64, i64) {
    let cap = cap.min(ralph_core::queue::MAX_CAP);
    (cap, i64::try_from(cap + 1).unwrap_or(i64::MAX))
}

/// The `LIKE` pattern of `filter`'s payload text, if it has one.
fn filter_pattern(filter: &JobFilter) -> Result<Option<String>, StoreError> {
    Ok(filter.needle().map_err(|e| StoreError::invalid(JOB, e))?.map(contains_pattern))
}

/// Pushes `queue = ? AND state = ?` and, with a pattern ([`filter_pattern`]), the payload
/// condition.
fn push_filter<DB: Backend>(qb: &mut QueryBuilder<DB>, queue: &str, state: JobState, pattern: Option<&str>)
where
    for<'q> Option<&'q str>: Encode<'q, DB> + Type<DB>,
{
    qb.push("queue = ").push_bind(Some(queue)).push(" AND state = ").push_bind(Some(state.as_str()));
    if let Some(pattern) = pattern {
        qb.push(" AND LOWER(payload) LIKE ").push_bind(Some(pattern)).push(" ESCAPE '!'");
    }
}

/// A number read back that does not fit the model.
pub(crate) fn corrupt(detail: impl Into<String>) -> StoreError {
    StoreError::Corrupt { entity: JOB, detail: detail.into() }
}

/// A fresh, unguessable lease token.
pub(crate) fn new_token() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// A delay in microseconds, clamped to [`MAX_DELAY`].
pub(crate) fn micros(delay: Duration) -> i64 {
    i64::try_from(delay.min(MAX_DELAY).as_micros()).unwrap_or(i64::MAX)
}

/// Checks a queue name: not empty, at most [`MAX_QUEUE_NAME`] characters.
fn check_queue(queue: &str) -> Result<(), StoreError> {
    if queue.trim().is_empty() {
        return Err(StoreError::invalid(JOB, ValidationError::Empty { field: "queue" }));
    }
    ralph_core::text::check_len("queue", queue, MAX_QUEUE_NAME).map_err(|e| StoreError::invalid(JOB, e))
}

/// The claim size as a SQL limit.
fn claim_limit(max: usize) -> i64 {
    i64::try_from(max.min(MAX_CLAIM)).unwrap_or(1)
}

/// Error text cut to [`MAX_ERROR_LEN`] characters.
fn clip_error(error: &str) -> String {
    error.chars().take(MAX_ERROR_LEN).collect()
}

/// `UPDATE` marking `ids`, claimed under `token`, done (only those still held). The token
/// stays on the rows, so that an ack repeated after a lost reply finds them done by its claim.
fn ack_update<'a, DB: Backend>(token: &'a str, ids: &[i64]) -> QueryBuilder<DB>
where
    Option<&'a str>: Encode<'a, DB> + Type<DB>,
    Option<i64>: Encode<'a, DB> + Type<DB>,
{
    let mut qb = QueryBuilder::new("UPDATE queue_jobs SET state = 'done', finished_at = ");
    DB::push_now(&mut qb);
    qb.push(" WHERE lease_token = ").push_bind(Some(token)).push(" AND state = 'running' AND id IN (");
    push_list(&mut qb, ids.iter().map(|id| Some(*id)));
    qb.push(")");
    qb
}

/// `SELECT COUNT(*)` of `ids` that their claim under `token` acked: an ack that changed fewer
/// rows than it named counts these instead, which include the ones an earlier try of the same
/// ack marked done before its reply was lost.
fn acked_count<'a, DB: Backend>(token: &'a str, ids: &[i64]) -> QueryBuilder<DB>
where
    Option<&'a str>: Encode<'a, DB> + Type<DB>,
    Option<i64>: Encode<'a, DB> + Type<DB>,
{
    let mut qb = QueryBuilder::new("SELECT COUNT(*) FROM queue_jobs WHERE lease_token = ");
    qb.push_bind(Some(token)).push(" AND state = 'done' AND id IN (");
    push_list(&mut qb, ids.iter().map(|id| Some(*id)));
    qb.push(")");
    qb
}

/// Jobs grouped by lease token (one group per claim), ids ascending.
fn by_token(jobs: &[Job]) -> BTreeMap<&str, Vec<i64>> {
    let mut groups: BTreeMap<&str, Vec<i64>> = BTreeMap::new();
    for job in jobs {
        groups.entry(job.lease_token.as_str()).or_default().push(job.id.get());
    }
    for ids in groups.values_mut() {
        ids.sort_unstable();
        ids.dedup();
    }
    groups
}

impl<DB> SqlStore<DB>
where
    DB: Backend,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    for<'r> &'r str: ColumnIndex<DB::Row>,
    usize: ColumnIndex<DB::Row>,
    for<'q> Option<i64>: Encode<'q, DB> + Type<DB>,
    for<'q> Option<&'q str>: Encode<'q, DB> + Type<DB>,
    for<'q> bool: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> i64: Decode<'q, DB> + Type<DB>,
    for<'q> i32: Decode<'q, DB> + Type<DB>,
    for<'q> String: Decode<'q, DB> + Type<DB>,
    for<'q> Stamp: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
{
    /// `UPDATE queue_jobs SET <set> WHERE id = ? AND lease_token = ? AND state = 'running'`:
    /// acts only while `job`'s claim still holds. Returns whether it did.
    async fn while_leased(&self, job: &Job, set: impl FnOnce(&mut QueryBuilder<DB>)) -> Result<bool, StoreError> {
        let mut qb = QueryBuilder::new("UPDATE queue_jobs SET ");
        set(&mut qb);
        qb.push(" WHERE id = ")
            .push_bind(Some(job.id.get()))
            .push(" AND lease_token = ")
            .push_bind(Some(job.lease_token.as_str()))
            .push(" AND state = 'running'");
        let done = qb.build().execute(self.pool()).await.map_err(err(JOB))?;
        Ok(DB::rows_affected(&done) == 1)
    }

    /// The state (and due time) of job `id` if its row carries `token`: ack and fail keep the
    /// claim's token (requeue its [`requeue_mark`](ralph_core::queue::requeue_mark)), so that
    /// repeating them (a retry after the reply to a committed statement was lost) reports what
    /// the first one did instead of a lost lease.
    async fn left_by(&self, id: Id<Job>, token: &str) -> Result<Option<(JobState, Stamp)>, StoreError> {
        let mut qb = QueryBuilder::new("SELECT state, due_at FROM queue_jobs WHERE id = ");
        qb.push_bind(Some(id.get())).push(" AND lease_token = ").push_bind(Some(token));
        let row = qb.build_query_as::<(String, Stamp)>().fetch_optional(self.pool()).await.map_err(err(JOB))?;
        row.map(|(state, due)| Ok((JobState::parse(&state).map_err(|e| corrupt(e.to_string()))?, due))).transpose()
    }

    /// Dead-letters the jobs of `queue` whose lease expired after their last allowed attempt
    /// (their worker died every time), so they are not claimed again.
    async fn dead_letter_spent(&self, queue: &str) -> Result<(), StoreError> {
        let max_attempts = i64::from(self.job_policy().max_attempts);
        let mut qb = QueryBuilder::new("SELECT id, attempts FROM queue_jobs WHERE queue = ");
        qb.push_bind(Some(queue)).push(" AND state = 'running' AND due_at <= ");
        DB::push_now(&mut qb);
        qb.push(" AND attempts >= ").push_bind(Some(max_attempts)).push(" LIMIT 1000");
        let spent = qb.build_query_as::<SpentRow>().fetch_all(self.pool()).await.map_err(err(JOB))?;
        for job in spent {
            let reason = format!("lease expired {} times", job.attempts);
            let mut qb = QueryBuilder::new("UPDATE queue_jobs SET state = 'dead', lease_token = NULL, last_error = ");
            qb.push_bind(Some(reason.as_str())).push(", finished_at = ");
            DB::push_now(&mut qb);
            qb.push(" WHERE id = ").push_bind(Some(job.id)).push(" AND state = 'running' AND due_at <= ");
            DB::push_now(&mut qb);
            qb.build().execute(self.pool()).await.map_err(err(JOB))?;
            tracing::warn!(target: TRACE_TARGET, queue, job = job.id, attempts = job.attempts, "job dead-lettered: lease expired on every attempt");
        }
        Ok(())
    }

    /// The names of the paused queues.
    async fn paused_queues(&self) -> Result<Vec<String>, StoreError> {
        sqlx::query_scalar::<DB, String>("SELECT queue FROM queue_settings WHERE paused = TRUE ORDER BY queue")
            .fetch_all(self.pool())
            .await
            .map_err(err(JOB))
    }

    /// One queue's overview: one statement, each count a `LIMIT cap + 1` range of an index.
    async fn count_queue(
        &self,
        queue: String,
        cap: u64,
        limit: i64,
        paused: bool,
    ) -> Result<QueueOverview, StoreError> {
        let count = |n: i64| CappedCount::of(u64::try_from(n).unwrap_or(0), cap);
        let mut qb = QueryBuilder::new("SELECT ");
        for (name, condition, order) in OVERVIEW_COUNTS {
            qb.push("(SELECT COUNT(*) FROM (SELECT 1 AS one FROM queue_jobs WHERE queue = ")
                .push_bind(Some(queue.as_str()))
                .push(" AND ");
            push_timed(&mut qb, condition);
            qb.push(order).push(" LIMIT ").push_bind(Some(limit)).push(") capped) AS ").push(name).push(", ");
        }
        qb.push("(SELECT ");
        DB::push_age_micros(&mut qb, "MIN(due_at)");
        qb.push(" FROM queue_jobs WHERE queue = ").push_bind(Some(queue.as_str())).push(" AND ");
        push_timed(&mut qb, OVERVIEW_COUNTS[0].1);
        qb.push(") AS oldest_age");
        // Not prepared once for all (here and in `find_jobs`, `count_jobs`): PostgreSQL would
        // switch a named statement to a generic plan after five runs, one that cannot see
        // which state or how small a limit is and reads whole ranges (1.3 s instead of
        // milliseconds at a million jobs).
        let row =
            qb.build_query_as::<OverviewRow>().persistent(false).fetch_one(self.pool()).await.map_err(err(JOB))?;
        Ok(QueueOverview {
            pending: count(row.pending),
            scheduled: count(row.scheduled),
            retrying: count(row.retrying),
            running: count(row.running),
            expired: count(row.expired),
            dead: count(row.dead),
            done_last_hour: count(row.done_last_hour),
            oldest_pending_age: row.oldest_age.map(|m| Duration::from_micros(u64::try_from(m).unwrap_or(0))),
            paused,
            queue,
        })
    }

    /// The names of the queues that hold jobs, walking the `(queue, ...)` index one name at a
    /// time (a skip scan: a `DISTINCT` would read every row).
    async fn queue_names(&self) -> Result<Vec<String>, StoreError> {
        /// Queues an overview lists at most.
        const MAX_QUEUES: usize = 1_000;
        let mut names: Vec<String> = Vec::new();
        while names.len() < MAX_QUEUES {
            let mut qb = QueryBuilder::new("SELECT MIN(queue) FROM queue_jobs");
            if let Some(last) = names.last() {
                qb.push(" WHERE queue > ").push_bind(Some(last.as_str()));
            }
            let next = qb.build_query_scalar::<Option<String>>().fetch_one(self.pool()).await.map_err(err(JOB))?;
            let Some(next) = next else { break };
            names.push(next);
        }
        Ok(names)
    }

    /// The counters of one queue (`Some`) or of every queue.
    async fn queue_stats(&self, queue: Option<&str>) -> Result<Vec<QueueStats>, StoreError> {
        let mut qb = QueryBuilder::new(
            "SELECT queue, COUNT(CASE WHEN state = 'pending' THEN 1 END) AS pending, \
             COUNT(CASE WHEN state = 'running' AND due_at > ",
        );
        DB::push_now(&mut qb);
        qb.push(" THEN 1 END) AS running, COUNT(CASE WHEN state = 'running' AND due_at <= ");
        DB::push_now(&mut qb);
        qb.push(
            " THEN 1 END) AS expired, COUNT(CASE WHEN state = 'dead' THEN 1 END) AS dead, \
             COUNT(CASE WHEN state = 'done' THEN 1 END) AS done, ",
        );
        DB::push_age_micros(&mut qb, "MIN(CASE WHEN state = 'pending' THEN enqueued_at END)");
        qb.push(" AS oldest_age FROM queue_jobs");
        if let Some(queue) = queue {
            qb.push(" WHERE queue = ").push_bind(Some(queue));
        }
        qb.push(" GROUP BY queue ORDER BY queue");
        let rows = qb.build_query_as::<StatsRow>().fetch_all(self.pool()).await.map_err(err(JOB))?;
        let paused = self.paused_queues().await?;
        let mut stats: Vec<QueueStats> = rows.into_iter().map(StatsRow::into_stats).collect();
        for name in paused.iter().filter(|p| queue.is_none_or(|q| q == p.as_str())) {
            match stats.iter_mut().find(|s| &s.queue == name) {
                Some(s) => s.paused = true,
                None => stats.push(QueueStats { queue: name.clone(), paused: true, ..QueueStats::default() }),
            }
        }
        stats.sort_by(|a, b| a.queue.cmp(&b.queue));
        Ok(stats)
    }
}

#[async_trait]
impl<DB> JobQueue for SqlStore<DB>
where
    DB: Backend,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    for<'r> &'r str: ColumnIndex<DB::Row>,
    usize: ColumnIndex<DB::Row>,
    for<'q> Option<i64>: Encode<'q, DB> + Type<DB>,
    for<'q> Option<&'q str>: Encode<'q, DB> + Type<DB>,
    for<'q> bool: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> i64: Decode<'q, DB> + Type<DB>,
    for<'q> i32: Decode<'q, DB> + Type<DB>,
    for<'q> String: Decode<'q, DB> + Type<DB>,
    for<'q> Stamp: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
{
    async fn enqueue(&self, queue: &str, payloads: &[String]) -> Result<Vec<Id<Job>>, StoreError> {
        check_queue(queue)?;
        if payloads.is_empty() {
            return Ok(Vec::new());
        }
        let server = self.server_traits().await?;
        let ids = self
            .retrying(JOB, || async {
                let mut ids = Vec::with_capacity(payloads.len());
                let mut tx = self.begin(JOB).await?;
                for chunk in payloads.chunks(CHUNK) {
                    let mut qb = QueryBuilder::new(
                        "INSERT INTO queue_jobs (queue, payload, state, attempts, due_at, enqueued_at) VALUES ",
                    );
                    for (n, payload) in chunk.iter().enumerate() {
                        qb.push(if n == 0 { "(" } else { ", (" });
                        qb.push_bind(Some(queue)).push(", ").push_bind(Some(payload.as_str())).push(", 'pending', 0, ");
                        DB::push_now(&mut qb);
                        qb.push(", ");
                        DB::push_now(&mut qb);
                        qb.push(")");
                    }
                    ids.extend(DB::insert_ids(&mut tx, qb, chunk.len(), server).await?);
                }
                commit(tx, JOB).await?;
                Ok(ids)
            })
            .await?;
        tracing::debug!(target: TRACE_TARGET, queue, jobs = ids.len(), "enqueued");
        Ok(ids.into_iter().map(Id::new).collect())
    }

    async fn claim(&self, queue: &str, max: usize, lease: Duration, worker: &str) -> Result<Vec<Job>, StoreError> {
        if max == 0 {
            return Ok(Vec::new());
        }
        check_queue(queue)?;
        let limit = claim_limit(max);
        let max_attempts = self.job_policy().max_attempts;
        let mut jobs = self.retrying(JOB, || DB::claim(self.pool(), queue, limit, lease, worker, max_attempts)).await?;
        if jobs.len() < max {
            // The claim passes over spent leases; with the due jobs drained (the only time a
            // spent one would have been next), dead-letter them so they show as dead, not
            // running. A busy queue pays nothing for it.
            self.retrying(JOB, || self.dead_letter_spent(queue)).await?;
        }
        jobs.sort_unstable_by_key(|j| j.id);
        tracing::debug!(target: TRACE_TARGET, queue, worker, jobs = jobs.len(), "claimed");
        Ok(jobs)
    }

    async fn ack(&self, job: &Job) -> Result<bool, StoreError> {
        self.retrying(JOB, || async {
            let acked = self
                .while_leased(job, |qb| {
                    qb.push("state = 'done', finished_at = ");
                    DB::push_now(qb);
                })
                .await?;
            Ok(acked || matches!(self.left_by(job.id, &job.lease_token).await?, Some((JobState::Done, _))))
        })
        .await
    }

    async fn ack_batch(&self, jobs: &[Job]) -> Result<u64, StoreError> {
        let groups = &by_token(jobs);
        // One UPDATE per claim (lease token) and chunk of ids.
        let statements: usize = groups.values().map(|ids| ids.len().div_ceil(CHUNK)).sum();
        self.retrying(JOB, || async {
            if let (1, Some((token, ids))) = (statements, groups.iter().next()) {
                // The usual case, one claim's batch: one statement needs no transaction.
                let done = ack_update::<DB>(token, ids).build().execute(self.pool()).await.map_err(err(JOB))?;
                if DB::rows_affected(&done) == ids.len() as u64 {
                    return Ok(DB::rows_affected(&done));
                }
                let mut count = acked_count::<DB>(token, ids);
                let acked = count.build_query_scalar::<i64>().fetch_one(self.pool()).await.map_err(err(JOB))?;
                return Ok(u64::try_from(acked).unwrap_or(0));
            }
            let mut held = 0;
            let mut tx = self.begin(JOB).await?;
            for (token, ids) in groups {
                for chunk in ids.chunks(CHUNK) {
                    let done = ack_update::<DB>(token, chunk).build().execute(&mut *tx).await.map_err(err(JOB))?;
                    held += if DB::rows_affected(&done) == chunk.len() as u64 {
                        DB::rows_affected(&done)
                    } else {
                        let mut count = acked_count::<DB>(token, chunk);
                        let acked = count.build_query_scalar::<i64>().fetch_one(&mut *tx).await.map_err(err(JOB))?;
                        u64::try_from(acked).unwrap_or(0)
                    };
                }
            }
            commit(tx, JOB).await?;
            Ok(held)
        })
        .await
    }

    async fn fail(&self, job: &Job, error: &str, policy: &RetryPolicy) -> Result<FailOutcome, StoreError> {
        let dead = job.attempts >= policy.max_attempts;
        let delay = if dead { 0 } else { micros(policy.backoff(job.attempts)) };
        let error = &clip_error(error);
        self.retrying(JOB, || async {
            // The new due time is read first so that the time reported is the time stored.
            let mut qb = QueryBuilder::new("SELECT ");
            DB::push_now_plus(&mut qb, delay);
            qb.push(" AS due");
            let due = qb.build_query_scalar::<Stamp>().fetch_one(self.pool()).await.map_err(err(JOB))?;
            let held = self
                .while_leased(job, |qb| {
                    qb.push(if dead {
                        "state = 'dead', finished_at = "
                    } else {
                        "state = 'pending', finished_at = NULL"
                    });
                    if dead {
                        DB::push_now(qb);
                    }
                    qb.push(", due_at = ").push_bind(due).push(", last_error = ").push_bind(Some(error.as_str()));
                })
                .await?;
            Ok(match (held, dead) {
                (true, true) => FailOutcome::Dead,
                (true, false) => FailOutcome::Retry { at: due.0 },
                // Not running under this claim: the same fail may have landed already.
                (false, _) => match self.left_by(job.id, &job.lease_token).await? {
                    Some((JobState::Dead, _)) if dead => FailOutcome::Dead,
                    Some((JobState::Pending, at)) if !dead => FailOutcome::Retry { at: at.0 },
                    _ => FailOutcome::LeaseLost,
                },
            })
        })
        .await
    }

    async fn extend_lease(&self, job: &Job, lease: Duration) -> Result<bool, StoreError> {
        let lease = micros(lease);
        self.retrying(JOB, || {
            self.while_leased(job, |qb| {
                qb.push("due_at = ");
                DB::push_now_plus(qb, lease);
            })
        })
        .await
    }

    async fn requeue(&self, job: &Job, payload: &str) -> Result<bool, StoreError> {
        // The row keeps a mark of the claim that handed it back, not the claim's token: an
        // ack or fail of that claim repeated later finds nothing of its own, and a pending row
        // the claim left by failing is not taken for a hand-back.
        let mark = &ralph_core::queue::requeue_mark(&job.lease_token);
        self.retrying(JOB, || async {
            let requeued = self
                .while_leased(job, |qb| {
                    qb.push("state = 'pending', finished_at = NULL, lease_token = ")
                        .push_bind(Some(mark.as_str()))
                        .push(", payload = ")
                        .push_bind(Some(payload))
                        .push(", attempts = CASE WHEN attempts > 0 THEN attempts - 1 ELSE 0 END, due_at = ");
                    DB::push_now(qb);
                })
                .await?;
            // Not running under this claim: the same requeue may have landed already.
            Ok(requeued || matches!(self.left_by(job.id, mark).await?, Some((JobState::Pending, _))))
        })
        .await
    }
}

impl<DB> SqlStore<DB>
where
    DB: Backend,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    for<'r> &'r str: ColumnIndex<DB::Row>,
    usize: ColumnIndex<DB::Row>,
    for<'q> Option<i64>: Encode<'q, DB> + Type<DB>,
    for<'q> Option<&'q str>: Encode<'q, DB> + Type<DB>,
    for<'q> Option<DateTime<Utc>>: Encode<'q, DB> + Type<DB>,
    for<'q> bool: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> i64: Decode<'q, DB> + Type<DB>,
    for<'q> i32: Decode<'q, DB> + Type<DB>,
    for<'q> String: Decode<'q, DB> + Type<DB>,
    for<'q> DateTime<Utc>: Decode<'q, DB> + Type<DB>,
    for<'q> Stamp: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
{
    /// Retries or discards (`action`) the named jobs of `queue` still in state `from`; returns
    /// how many changed. Each chunk of ids is one transaction: the jobs are read and locked,
    /// changed, and recorded in the change history as done by `by`, under one correlation id
    /// for the whole call.
    async fn admin_jobs(
        &self,
        queue: &str,
        ids: &[Id<Job>],
        from: JobState,
        by: &Actor,
        action: AdminAction,
    ) -> Result<u64, StoreError> {
        check_admin_state(from).map_err(|e| StoreError::invalid(JOB, e))?;
        let correlation = new_correlation();
        let mut touched = 0;
        for chunk in ids.chunks(ADMIN_CHUNK) {
            touched += self
                .retrying(JOB, || async {
                    let mut tx = self.begin_locking(JOB).await?;
                    let mut qb = QueryBuilder::new(
                        "SELECT id, queue, state, payload, attempts, worker, last_error, due_at, enqueued_at, \
                         finished_at FROM queue_jobs WHERE queue = ",
                    );
                    qb.push_bind(Some(queue)).push(" AND state = ").push_bind(Some(from.as_str())).push(" AND id IN (");
                    push_list(&mut qb, chunk.iter().map(|id| Some(id.get())));
                    qb.push(")").push(DB::FOR_UPDATE);
                    let rows = qb.build_query_as::<JobInfoRow>().fetch_all(&mut *tx).await.map_err(err(JOB))?;
                    if rows.is_empty() {
                        tx.rollback().await.map_err(err(JOB))?;
                        return Ok(0);
                    }
                    let jobs = rows.into_iter().map(JobInfoRow::into_info).collect::<Result<Vec<_>, _>>()?;
                    let mut qb = QueryBuilder::new("");
                    match action {
                        AdminAction::Retry => {
                            qb.push(
                                "UPDATE queue_jobs SET state = 'pending', attempts = 0, lease_token = NULL, \
                                 finished_at = NULL, due_at = ",
                            );
                            DB::push_now(&mut qb);
                        }
                        AdminAction::Discard => {
                            qb.push("DELETE FROM queue_jobs");
                        }
                    }
                    qb.push(" WHERE state = ").push_bind(Some(from.as_str())).push(" AND id IN (");
                    push_list(&mut qb, jobs.iter().map(|job| Some(job.id.get())));
                    qb.push(")");
                    let done = qb.build().execute(&mut *tx).await.map_err(err(JOB))?;
                    let records: Vec<HistoryRecord> = jobs.iter().map(|job| action.record(job, by)).collect();
                    Self::write_history(&mut tx, &records, &correlation, Utc::now()).await?;
                    commit(tx, JOB).await?;
                    Ok(DB::rows_affected(&done))
                })
                .await?;
        }
        if touched > 0 {
            tracing::info!(
                target: TRACE_TARGET,
                queue,
                action = action.as_str(),
                from = from.as_str(),
                requested = ids.len(),
                changed = touched,
                actor = %by,
                correlation,
                "queue jobs changed by an operator"
            );
        }
        Ok(touched)
    }
}

#[async_trait]
impl<DB> QueueAdmin for SqlStore<DB>
where
    DB: Backend,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    for<'r> &'r str: ColumnIndex<DB::Row>,
    usize: ColumnIndex<DB::Row>,
    for<'q> Option<i64>: Encode<'q, DB> + Type<DB>,
    for<'q> Option<&'q str>: Encode<'q, DB> + Type<DB>,
    for<'q> Option<DateTime<Utc>>: Encode<'q, DB> + Type<DB>,
    for<'q> DateTime<Utc>: Decode<'q, DB> + Type<DB>,
    for<'q> bool: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> i64: Decode<'q, DB> + Type<DB>,
    for<'q> i32: Decode<'q, DB> + Type<DB>,
    for<'q> String: Decode<'q, DB> + Type<DB>,
    for<'q> Stamp: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
{
    async fn reclaim_expired(&self, queue: &str) -> Result<u64, StoreError> {
        // Spent leases go to the dead letters, not back to pending for one attempt too many.
        self.retrying(JOB, || self.dead_letter_spent(queue)).await?;
        self.retrying(JOB, || async {
            let mut qb = QueryBuilder::new("UPDATE queue_jobs SET state = 'pending', lease_token = NULL, due_at = ");
            DB::push_now(&mut qb);
            qb.push(" WHERE queue = ").push_bind(Some(queue)).push(" AND state = 'running' AND due_at <= ");
            DB::push_now(&mut qb);
            let done = qb.build().execute(self.pool()).await.map_err(err(JOB))?;
            Ok(DB::rows_affected(&done))
        })
        .await
    }

    async fn stats(&self, queue: &str) -> Result<QueueStats, StoreError> {
        let stats = self.queue_stats(Some(queue)).await?.into_iter().next();
        Ok(stats.unwrap_or_else(|| QueueStats { queue: queue.to_owned(), ..QueueStats::default() }))
    }

    async fn all_stats(&self) -> Result<Vec<QueueStats>, StoreError> {
        self.queue_stats(None).await
    }

    async fn list_jobs(&self, queue: &str, state: JobState, limit: usize) -> Result<Vec<JobInfo>, StoreError> {
        let limit = i64::try_from(limit.min(ralph_core::queue::MAX_LIST)).unwrap_or(1);
        let mut qb = QueryBuilder::new(
            "SELECT id, queue, state, payload, attempts, worker, last_error, due_at, enqueued_at, finished_at \
             FROM queue_jobs WHERE queue = ",
        );
        qb.push_bind(Some(queue))
            .push(" AND state = ")
            .push_bind(Some(state.as_str()))
            .push(" ORDER BY id LIMIT ")
            .push_bind(Some(limit));
        let rows = qb.build_query_as::<JobInfoRow>().fetch_all(self.pool()).await.map_err(err(JOB))?;
        rows.into_iter().map(JobInfoRow::into_info).collect()
    }

    async fn overview(&self, cap: u64) -> Result<Vec<QueueOverview>, StoreError> {
        use futures::{StreamExt, TryStreamExt};
        /// Queues counted at once, each on its own connection (the counts are index reads
        /// of up to `cap + 1` entries each: the server's cores share them).
        const PARALLEL: usize = 4;
        let (cap, limit) = cap_limit(cap);
        let paused = self.paused_queues().await?;
        let mut names = self.queue_names().await?;
        names.extend(paused.iter().cloned());
        names.sort_unstable();
        names.dedup();
        futures::stream::iter(names)
            .map(|queue| {
                let paused = paused.contains(&queue);
                self.count_queue(queue, cap, limit, paused)
            })
            .buffered(PARALLEL)
            .try_collect()
            .await
    }

    async fn queue_overview(&self, queue: &str, cap: u64) -> Result<QueueOverview, StoreError> {
        let (cap, limit) = cap_limit(cap);
        let mut qb = QueryBuilder::new("SELECT paused FROM queue_settings WHERE queue = ");
        qb.push_bind(Some(queue));
        let paused = qb.build_query_scalar::<bool>().fetch_optional(self.pool()).await.map_err(err(JOB))?;
        self.count_queue(queue.to_owned(), cap, limit, paused.unwrap_or(false)).await
    }

    async fn find_jobs(
        &self,
        queue: &str,
        filter: &JobFilter,
        after: Option<JobCursor>,
        limit: usize,
    ) -> Result<Vec<JobInfo>, StoreError> {
        let limit = i64::try_from(limit.min(ralph_core::queue::MAX_LIST)).unwrap_or(1);
        let pattern = filter_pattern(filter)?;
        let mut qb = QueryBuilder::new(
            "SELECT id, queue, state, payload, attempts, worker, last_error, due_at, enqueued_at, finished_at \
             FROM queue_jobs WHERE ",
        );
        push_filter(&mut qb, queue, filter.state, pattern.as_deref());
        if let Some(after) = after {
            qb.push(" AND (due_at > ")
                .push_bind(Stamp(after.due_at))
                .push(" OR (due_at = ")
                .push_bind(Stamp(after.due_at))
                .push(" AND id > ")
                .push_bind(Some(after.id.get()))
                .push("))");
        }
        qb.push(" ORDER BY due_at, id LIMIT ").push_bind(Some(limit));
        let rows =
            qb.build_query_as::<JobInfoRow>().persistent(false).fetch_all(self.pool()).await.map_err(err(JOB))?;
        rows.into_iter().map(JobInfoRow::into_info).collect()
    }

    async fn count_jobs(&self, queue: &str, filter: &JobFilter, cap: u64) -> Result<CappedCount, StoreError> {
        let (cap, limit) = cap_limit(cap);
        let pattern = filter_pattern(filter)?;
        let mut qb = QueryBuilder::new("SELECT COUNT(*) FROM (SELECT 1 AS one FROM queue_jobs WHERE ");
        push_filter(&mut qb, queue, filter.state, pattern.as_deref());
        qb.push(" LIMIT ").push_bind(Some(limit)).push(") capped");
        let seen = qb.build_query_scalar::<i64>().persistent(false).fetch_one(self.pool()).await.map_err(err(JOB))?;
        Ok(CappedCount::of(u64::try_from(seen).unwrap_or(0), cap))
    }

    async fn retry_jobs(&self, queue: &str, ids: &[Id<Job>], from: JobState, by: &Actor) -> Result<u64, StoreError> {
        self.admin_jobs(queue, ids, from, by, AdminAction::Retry).await
    }

    async fn discard_jobs(&self, queue: &str, ids: &[Id<Job>], from: JobState, by: &Actor) -> Result<u64, StoreError> {
        self.admin_jobs(queue, ids, from, by, AdminAction::Discard).await
    }

    async fn purge(&self, done_older_than: Duration, dead_older_than: Duration) -> Result<u64, StoreError> {
        let mut purged = 0;
        for (state, age) in [("done", done_older_than), ("dead", dead_older_than)] {
            loop {
                // Ids first, then a short delete of those: one statement form every backend
                // takes (MySQL refuses LIMIT in an IN subquery, PostgreSQL a LIMIT on DELETE).
                let mut qb = QueryBuilder::new("SELECT id FROM queue_jobs WHERE state = ");
                qb.push_bind(Some(state)).push(" AND finished_at < ");
                DB::push_now_plus(&mut qb, -micros(age));
                qb.push(" ORDER BY finished_at LIMIT ").push_bind(Some(PURGE_CHUNK));
                let ids = qb.build_query_scalar::<i64>().fetch_all(self.pool()).await.map_err(err(JOB))?;
                if ids.is_empty() {
                    break;
                }
                let chunk = &ids;
                purged += self
                    .retrying(JOB, || async move {
                        let mut qb = QueryBuilder::new("DELETE FROM queue_jobs WHERE state = ");
                        qb.push_bind(Some(state)).push(" AND id IN (");
                        push_list(&mut qb, chunk.iter().map(|id| Some(*id)));
                        qb.push(")");
                        let done = qb.build().execute(self.pool()).await.map_err(err(JOB))?;
                        Ok(DB::rows_affected(&done))
                    })
                    .await?;
                if i64::try_from(ids.len()).unwrap_or(0) < PURGE_CHUNK {
                    break;
                }
            }
        }
        tracing::debug!(target: TRACE_TARGET, purged, "purged finished jobs");
        Ok(purged)
    }

    async fn set_paused(&self, queue: &str, paused: bool, by: &Actor) -> Result<bool, StoreError> {
        check_queue(queue)?;
        let changed = self
            .retrying(JOB, || async {
                // At READ COMMITTED on MySQL: an UPDATE that matches no row (a queue's first
                // pause) takes no gap lock there, so first pauses of two queues do not deadlock.
                let mut tx = self.begin_locking(JOB).await?;
                let mut qb = QueryBuilder::new("UPDATE queue_settings SET paused = ");
                qb.push_bind(paused)
                    .push(" WHERE queue = ")
                    .push_bind(Some(queue))
                    .push(" AND paused <> ")
                    .push_bind(paused);
                let mut done = qb.build().execute(&mut *tx).await.map_err(err(JOB))?;
                if DB::rows_affected(&done) == 0 && paused {
                    // No row, or one already paused: only a missing row is a change (a racing
                    // pauser's insert wins the key, and this one is ignored).
                    let mut qb = QueryBuilder::new(DB::INSERT_IGNORE);
                    qb.push(" queue_settings (queue, paused) VALUES (")
                        .push_bind(Some(queue))
                        .push(", ")
                        .push_bind(true)
                        .push(")");
                    qb.push(DB::ignore_conflict("queue"));
                    done = qb.build().execute(&mut *tx).await.map_err(err(JOB))?;
                }
                let changed = DB::rows_affected(&done) > 0;
                if changed {
                    let (before, after) = if paused { ("false", "true") } else { ("true", "false") };
                    let record = HistoryRecord::new("queue", QUEUE_OBJECT_ID, HistoryAction::Update, by.clone())
                        .with_changes(vec![FieldChange::new("paused", Some(before), Some(after))])
                        .with_message(queue);
                    Self::write_history(&mut tx, &[record], &new_correlation(), Utc::now()).await?;
                }
                commit(tx, JOB).await?;
                Ok(changed)
            })
            .await?;
        tracing::info!(target: TRACE_TARGET, queue, paused, changed, actor = %by, "queue pause set");
        Ok(changed)
    }

    async fn heartbeat(&self, beat: &WorkerBeat) -> Result<(), StoreError> {
        beat.validate().map_err(|e| StoreError::invalid(JOB, e))?;
        let queues = serde_json::to_string(&beat.queues).map_err(|e| StoreError::Backend(Box::new(e)))?;
        let jobs: Vec<i64> = beat.current_jobs.iter().map(|id| id.get()).collect();
        let jobs = serde_json::to_string(&jobs).map_err(|e| StoreError::Backend(Box::new(e)))?;
        let progress = serde_json::to_string(&beat.progress).map_err(|e| StoreError::Backend(Box::new(e)))?;
        let pid = Some(i64::from(beat.pid));
        let started = Stamp(beat.started_at);
        self.retrying(JOB, || async {
            let mut tx = self.begin(JOB).await?;
            let mut qb = QueryBuilder::new("UPDATE queue_workers SET host = ");
            qb.push_bind(Some(beat.host.as_str()))
                .push(", pid = ")
                .push_bind(pid)
                .push(", queues = ")
                .push_bind(Some(queues.as_str()))
                .push(", current_jobs = ")
                .push_bind(Some(jobs.as_str()))
                .push(", progress = ")
                .push_bind(Some(progress.as_str()))
                .push(", started_at = ")
                .push_bind(started)
                .push(", last_seen = ");
            DB::push_now(&mut qb);
            qb.push(" WHERE name = ").push_bind(Some(beat.name.as_str()));
            let done = qb.build().execute(&mut *tx).await.map_err(err(JOB))?;
            if DB::rows_affected(&done) == 0 {
                let mut qb = QueryBuilder::new(DB::INSERT_IGNORE);
                qb.push(
                    " queue_workers (name, host, pid, queues, current_jobs, progress, started_at, last_seen) VALUES (",
                );
                qb.push_bind(Some(beat.name.as_str()))
                    .push(", ")
                    .push_bind(Some(beat.host.as_str()))
                    .push(", ")
                    .push_bind(pid)
                    .push(", ")
                    .push_bind(Some(queues.as_str()))
                    .push(", ")
                    .push_bind(Some(jobs.as_str()))
                    .push(", ")
                    .push_bind(Some(progress.as_str()))
                    .push(", ")
                    .push_bind(started)
                    .push(", ");
                DB::push_now(&mut qb);
                qb.push(")").push(DB::ignore_conflict("name"));
                qb.build().execute(&mut *tx).await.map_err(err(JOB))?;
            }
            commit(tx, JOB).await
        })
        .await
    }

    async fn workers(&self) -> Result<Vec<WorkerBeat>, StoreError> {
        let rows = sqlx::query_as::<DB, WorkerRow>(
            "SELECT name, host, pid, queues, current_jobs, progress, started_at, last_seen FROM queue_workers \
             ORDER BY name",
        )
        .fetch_all(self.pool())
        .await
        .map_err(err(JOB))?;
        rows.into_iter().map(WorkerRow::into_beat).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_patterns_and_clock_placeholders() {
        assert_eq!(contains_pattern("50%_a!B"), "%50!%!_a!!b%");
        assert_eq!(cap_limit(u64::MAX), (ralph_core::queue::MAX_CAP, 1_000_001));
        assert_eq!(cap_limit(0), (0, 1));
    }

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
