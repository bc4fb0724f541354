//! [`JobQueue`] on [`MemoryStore`]: leases, retries, dead letters and statistics.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::MemoryStore;
use crate::history::Actor;
use crate::queue::check_admin_state;
use crate::{
    CappedCount, FailOutcome, Id, Job, JobCursor, JobFilter, JobInfo, JobQueue, JobState, QueueAdmin, QueueOverview,
    QueueStats, RetryPolicy, StoreError, ValidationError, WorkerBeat,
};

const JOB: &str = "job";

/// Longest lease or back-off; longer ones are clamped (as the SQL queues do).
const MAX_DELAY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Longest queue name, in characters.
const MAX_QUEUE_NAME: usize = 255;
/// Jobs one claim takes at most.
const MAX_CLAIM: usize = 10_000;

/// One job, as the SQL stores' `queue_jobs` row holds it.
#[derive(Debug, Clone)]
pub(super) struct JobRow {
    queue: String,
    payload: String,
    state: JobState,
    attempts: u32,
    lease_token: Option<String>,
    /// When a pending job becomes claimable, or when a running job's lease runs out.
    due_at: DateTime<Utc>,
    enqueued_at: DateTime<Utc>,
    worker: Option<String>,
    last_error: Option<String>,
    finished_at: Option<DateTime<Utc>>,
}

impl JobRow {
    fn info(&self, id: i64) -> JobInfo {
        JobInfo {
            id: Id::new(id),
            queue: self.queue.clone(),
            state: self.state,
            payload: self.payload.clone(),
            attempts: self.attempts,
            worker: self.worker.clone(),
            last_error: self.last_error.clone(),
            due_at: self.due_at,
            enqueued_at: self.enqueued_at,
            finished_at: self.finished_at,
        }
    }
}

impl JobRow {
    /// Whether `job`'s claim still holds this row.
    fn held_by(&self, job: &Job) -> bool {
        self.state == JobState::Running && self.left_by(job)
    }

    /// Whether the row still carries `job`'s claim token: ack and fail keep it, as the SQL
    /// stores do, so that repeating them reports what the first one did.
    fn left_by(&self, job: &Job) -> bool {
        self.lease_token.as_deref() == Some(job.lease_token.as_str())
    }
}

/// Now, to the microsecond (the SQL stores' precision).
fn now() -> DateTime<Utc> {
    let now = Utc::now();
    DateTime::from_timestamp_micros(now.timestamp_micros()).unwrap_or(now)
}

/// `at + delay`, the delay clamped to [`MAX_DELAY`].
fn after(at: DateTime<Utc>, delay: Duration) -> DateTime<Utc> {
    let micros = i64::try_from(delay.min(MAX_DELAY).as_micros()).unwrap_or(i64::MAX);
    at.checked_add_signed(chrono::Duration::microseconds(micros)).unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// `at - delay`, the delay clamped to [`MAX_DELAY`].
fn before(at: DateTime<Utc>, delay: Duration) -> DateTime<Utc> {
    let micros = i64::try_from(delay.min(MAX_DELAY).as_micros()).unwrap_or(i64::MAX);
    at.checked_sub_signed(chrono::Duration::microseconds(micros)).unwrap_or(DateTime::<Utc>::MIN_UTC)
}

fn check_queue(queue: &str) -> Result<(), StoreError> {
    if queue.trim().is_empty() {
        return Err(StoreError::invalid(JOB, ValidationError::Empty { field: "queue" }));
    }
    crate::text::check_len("queue", queue, MAX_QUEUE_NAME).map_err(|e| StoreError::invalid(JOB, e))
}

/// A fresh, unguessable lease token.
fn new_token() -> Result<String, StoreError> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|e| StoreError::Backend(Box::new(e)))?;
    Ok(format!("{:032x}", u128::from_be_bytes(bytes)))
}

fn stats<'a>(queue: &str, rows: impl Iterator<Item = &'a JobRow>, now: DateTime<Utc>) -> QueueStats {
    let mut stats = QueueStats { queue: queue.to_owned(), ..QueueStats::default() };
    let mut oldest: Option<DateTime<Utc>> = None;
    for row in rows {
        match row.state {
            JobState::Pending => {
                stats.pending += 1;
                oldest = Some(oldest.map_or(row.enqueued_at, |o| o.min(row.enqueued_at)));
            }
            JobState::Running if row.due_at > now => stats.running += 1,
            JobState::Running => stats.expired += 1,
            JobState::Done => stats.done += 1,
            JobState::Dead => stats.dead += 1,
        }
    }
    stats.oldest_pending_age = oldest.map(|o| (now - o).to_std().unwrap_or(Duration::ZERO));
    stats
}

/// The rows of every queue that holds jobs or is paused, by queue name.
fn by_queue(state: &super::State) -> BTreeMap<&str, Vec<&JobRow>> {
    let mut by_queue: BTreeMap<&str, Vec<&JobRow>> = BTreeMap::new();
    for row in state.jobs.values() {
        by_queue.entry(row.queue.as_str()).or_default().push(row);
    }
    for queue in &state.paused {
        by_queue.entry(queue.as_str()).or_default();
    }
    by_queue
}

/// Whether `row` of `queue` matches `filter` (`needle` is the filter text, lower-cased).
fn matches(row: &JobRow, queue: &str, filter: &JobFilter, needle: Option<&str>) -> bool {
    row.queue == queue
        && row.state == filter.state
        && needle.is_none_or(|n| row.payload.to_ascii_lowercase().contains(n))
}

/// The filter's text, lower-cased, or an invalid-input error.
fn needle(filter: &JobFilter) -> Result<Option<String>, StoreError> {
    Ok(filter.needle().map_err(|e| StoreError::invalid(JOB, e))?.map(str::to_ascii_lowercase))
}

/// The overview of one queue's rows.
fn overview<'a>(queue: &str, rows: impl Iterator<Item = &'a JobRow>, now: DateTime<Utc>, cap: u64) -> QueueOverview {
    let hour_ago = before(now, Duration::from_secs(3600));
    let mut counts = [0u64; 7];
    let mut oldest: Option<DateTime<Utc>> = None;
    for row in rows {
        let slot = match row.state {
            JobState::Pending if row.due_at <= now => {
                oldest = Some(oldest.map_or(row.due_at, |o| o.min(row.due_at)));
                0
            }
            JobState::Pending if row.attempts == 0 => 1,
            JobState::Pending => 2,
            JobState::Running if row.due_at > now => 3,
            JobState::Running => 4,
            JobState::Dead => 5,
            JobState::Done if row.finished_at.is_some_and(|at| at >= hour_ago) => 6,
            JobState::Done => continue,
        };
        counts[slot] += 1;
    }
    let c = |i: usize| CappedCount::of(counts[i], cap);
    QueueOverview {
        queue: queue.to_owned(),
        pending: c(0),
        scheduled: c(1),
        retrying: c(2),
        running: c(3),
        expired: c(4),
        dead: c(5),
        done_last_hour: c(6),
        oldest_pending_age: oldest.map(|o| (now - o).to_std().unwrap_or(Duration::ZERO)),
        paused: false,
    }
}

/// Dead-letters the jobs of `queue` whose lease expired after their last allowed attempt.
fn dead_letter_spent(state: &mut super::State, queue: &str, now: DateTime<Utc>) {
    let max_attempts = state.job_policy.unwrap_or_default().max_attempts;
    for row in state.jobs.values_mut() {
        if row.queue == queue && row.state == JobState::Running && row.due_at <= now && row.attempts >= max_attempts {
            row.state = JobState::Dead;
            row.lease_token = None;
            row.last_error = Some(format!("lease expired {} times", row.attempts));
            row.finished_at = Some(now);
        }
    }
}

#[async_trait]
impl JobQueue for MemoryStore {
    async fn enqueue(&self, queue: &str, payloads: &[String]) -> Result<Vec<Id<Job>>, StoreError> {
        check_queue(queue)?;
        let now = now();
        let mut state = self.lock();
        let mut ids = Vec::with_capacity(payloads.len());
        for payload in payloads {
            let id = state.next_id("queue_jobs");
            let row = JobRow {
                queue: queue.to_owned(),
                payload: payload.clone(),
                state: JobState::Pending,
                attempts: 0,
                lease_token: None,
                due_at: now,
                enqueued_at: now,
                worker: None,
                last_error: None,
                finished_at: None,
            };
            state.jobs.insert(id, row);
            ids.push(Id::new(id));
        }
        Ok(ids)
    }

    async fn claim(&self, queue: &str, max: usize, lease: Duration, worker: &str) -> Result<Vec<Job>, StoreError> {
        if max == 0 {
            return Ok(Vec::new());
        }
        check_queue(queue)?;
        let token = new_token()?;
        let now = now();
        let lease_until = after(now, lease);
        let mut state = self.lock();
        if state.paused.contains(queue) {
            return Ok(Vec::new());
        }
        dead_letter_spent(&mut state, queue, now);
        // Pending jobs that are due and running jobs whose lease ran out, in `due_at` order.
        let mut due: Vec<(DateTime<Utc>, i64)> = state
            .jobs
            .iter()
            .filter(|(_, r)| {
                r.queue == queue && matches!(r.state, JobState::Pending | JobState::Running) && r.due_at <= now
            })
            .map(|(id, r)| (r.due_at, *id))
            .collect();
        due.sort_unstable();
        due.truncate(max.min(MAX_CLAIM));
        let mut jobs = Vec::with_capacity(due.len());
        for (_, id) in due {
            let Some(row) = state.jobs.get_mut(&id) else { continue };
            row.state = JobState::Running;
            row.attempts = row.attempts.saturating_add(1);
            row.lease_token = Some(token.clone());
            row.due_at = lease_until;
            row.worker = Some(worker.to_owned());
            jobs.push(Job {
                id: Id::new(id),
                queue: row.queue.clone(),
                payload: row.payload.clone(),
                attempts: row.attempts,
                lease_token: token.clone(),
                lease_until,
                enqueued_at: row.enqueued_at,
            });
        }
        jobs.sort_unstable_by_key(|j| j.id);
        Ok(jobs)
    }

    async fn ack(&self, job: &Job) -> Result<bool, StoreError> {
        Ok(self.ack_batch(std::slice::from_ref(job)).await? == 1)
    }

    async fn ack_batch(&self, jobs: &[Job]) -> Result<u64, StoreError> {
        let now = now();
        let mut state = self.lock();
        let mut held = 0;
        let mut seen = std::collections::HashSet::new();
        for job in jobs {
            if !seen.insert((job.id, job.lease_token.as_str())) {
                continue;
            }
            let Some(row) = state.jobs.get_mut(&job.id.get()) else { continue };
            if row.held_by(job) {
                row.state = JobState::Done;
                row.finished_at = Some(now);
                held += 1;
            } else if row.state == JobState::Done && row.left_by(job) {
                held += 1;
            }
        }
        Ok(held)
    }

    async fn fail(&self, job: &Job, error: &str, policy: &RetryPolicy) -> Result<FailOutcome, StoreError> {
        let now = now();
        let dead = job.attempts >= policy.max_attempts;
        let mut state = self.lock();
        let Some(row) = state.jobs.get_mut(&job.id.get()) else {
            return Ok(FailOutcome::LeaseLost);
        };
        if !row.held_by(job) {
            // The same fail may have landed already.
            return Ok(match row.state {
                JobState::Dead if dead && row.left_by(job) => FailOutcome::Dead,
                JobState::Pending if !dead && row.left_by(job) => FailOutcome::Retry { at: row.due_at },
                _ => FailOutcome::LeaseLost,
            });
        }
        row.last_error = Some(error.chars().take(4000).collect());
        if dead {
            row.state = JobState::Dead;
            row.due_at = now;
            row.finished_at = Some(now);
            return Ok(FailOutcome::Dead);
        }
        let at = after(now, policy.backoff(job.attempts));
        row.state = JobState::Pending;
        row.due_at = at;
        Ok(FailOutcome::Retry { at })
    }

    async fn extend_lease(&self, job: &Job, lease: Duration) -> Result<bool, StoreError> {
        let until = after(now(), lease);
        let mut state = self.lock();
        match state.jobs.get_mut(&job.id.get()).filter(|r| r.held_by(job)) {
            Some(row) => {
                row.due_at = until;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    async fn requeue(&self, job: &Job, payload: &str) -> Result<bool, StoreError> {
        let now = now();
        let mut state = self.lock();
        let Some(row) = state.jobs.get_mut(&job.id.get()) else { return Ok(false) };
        if !row.held_by(job) {
            // The same requeue may have landed already (the row carries its mark, as in SQL).
            let mark = crate::queue::requeue_mark(&job.lease_token);
            return Ok(row.state == JobState::Pending && row.lease_token.as_deref() == Some(mark.as_str()));
        }
        row.lease_token = Some(crate::queue::requeue_mark(&job.lease_token));
        row.state = JobState::Pending;
        row.payload = payload.to_owned();
        row.attempts = row.attempts.saturating_sub(1);
        row.due_at = now;
        row.finished_at = None;
        Ok(true)
    }
}

#[async_trait]
impl QueueAdmin for MemoryStore {
    async fn reclaim_expired(&self, queue: &str) -> Result<u64, StoreError> {
        let now = now();
        let mut state = self.lock();
        dead_letter_spent(&mut state, queue, now);
        let mut reclaimed = 0;
        for row in state.jobs.values_mut() {
            if row.queue == queue && row.state == JobState::Running && row.due_at <= now {
                row.state = JobState::Pending;
                row.lease_token = None;
                row.due_at = now;
                reclaimed += 1;
            }
        }
        Ok(reclaimed)
    }

    async fn stats(&self, queue: &str) -> Result<QueueStats, StoreError> {
        let state = self.lock();
        let mut stats = stats(queue, state.jobs.values().filter(|r| r.queue == queue), now());
        stats.paused = state.paused.contains(queue);
        Ok(stats)
    }

    async fn all_stats(&self) -> Result<Vec<QueueStats>, StoreError> {
        let now = now();
        let state = self.lock();
        Ok(by_queue(&state)
            .into_iter()
            .map(|(queue, rows)| QueueStats {
                paused: state.paused.contains(queue),
                ..stats(queue, rows.into_iter(), now)
            })
            .collect())
    }

    async fn list_jobs(&self, queue: &str, state: JobState, limit: usize) -> Result<Vec<JobInfo>, StoreError> {
        let jobs = self.lock();
        let limit = limit.min(crate::queue::MAX_LIST);
        Ok(jobs
            .jobs
            .iter()
            .filter(|(_, r)| r.queue == queue && r.state == state)
            .take(limit)
            .map(|(id, r)| r.info(*id))
            .collect())
    }

    async fn overview(&self, cap: u64) -> Result<Vec<QueueOverview>, StoreError> {
        let (now, cap) = (now(), cap.min(crate::queue::MAX_CAP));
        let state = self.lock();
        Ok(by_queue(&state)
            .into_iter()
            .map(|(queue, rows)| QueueOverview {
                paused: state.paused.contains(queue),
                ..overview(queue, rows.into_iter(), now, cap)
            })
            .collect())
    }

    async fn find_jobs(
        &self,
        queue: &str,
        filter: &JobFilter,
        after: Option<JobCursor>,
        limit: usize,
    ) -> Result<Vec<JobInfo>, StoreError> {
        let needle = needle(filter)?;
        let state = self.lock();
        let mut found: Vec<(DateTime<Utc>, i64)> = state
            .jobs
            .iter()
            .filter(|(id, r)| {
                matches(r, queue, filter, needle.as_deref())
                    && after.is_none_or(|c| (r.due_at, **id) > (c.due_at, c.id.get()))
            })
            .map(|(id, r)| (r.due_at, *id))
            .collect();
        found.sort_unstable();
        found.truncate(limit.min(crate::queue::MAX_LIST));
        Ok(found.into_iter().filter_map(|(_, id)| state.jobs.get(&id).map(|r| r.info(id))).collect())
    }

    async fn count_jobs(&self, queue: &str, filter: &JobFilter, cap: u64) -> Result<CappedCount, StoreError> {
        let needle = needle(filter)?;
        let state = self.lock();
        let seen = state.jobs.values().filter(|r| matches(r, queue, filter, needle.as_deref())).count();
        Ok(CappedCount::of(u64::try_from(seen).unwrap_or(u64::MAX), cap.min(crate::queue::MAX_CAP)))
    }

    async fn retry_jobs(&self, queue: &str, ids: &[Id<Job>], from: JobState, _by: &Actor) -> Result<u64, StoreError> {
        check_admin_state(from).map_err(|e| StoreError::invalid(JOB, e))?;
        let now = now();
        let mut state = self.lock();
        let mut changed = 0;
        for id in ids.iter().collect::<std::collections::BTreeSet<_>>() {
            if let Some(row) = state.jobs.get_mut(&id.get()).filter(|r| r.queue == queue && r.state == from) {
                row.state = JobState::Pending;
                row.attempts = 0;
                row.lease_token = None;
                row.due_at = now;
                row.finished_at = None;
                changed += 1;
            }
        }
        Ok(changed)
    }

    async fn discard_jobs(&self, queue: &str, ids: &[Id<Job>], from: JobState, _by: &Actor) -> Result<u64, StoreError> {
        check_admin_state(from).map_err(|e| StoreError::invalid(JOB, e))?;
        let mut state = self.lock();
        let mut removed = 0;
        for id in ids {
            let discardable = state.jobs.get(&id.get()).is_some_and(|r| r.queue == queue && r.state == from);
            if discardable && state.jobs.remove(&id.get()).is_some() {
                removed += 1;
            }
        }
        Ok(removed)
    }

    async fn purge(&self, done_older_than: Duration, dead_older_than: Duration) -> Result<u64, StoreError> {
        let now = now();
        let (done_before, dead_before) = (before(now, done_older_than), before(now, dead_older_than));
        let mut state = self.lock();
        let before_count = state.jobs.len();
        state.jobs.retain(|_, r| match (r.state, r.finished_at) {
            (JobState::Done, Some(at)) => at >= done_before,
            (JobState::Dead, Some(at)) => at >= dead_before,
            _ => true,
        });
        Ok(u64::try_from(before_count - state.jobs.len()).unwrap_or(u64::MAX))
    }

    async fn set_paused(&self, queue: &str, paused: bool, _by: &Actor) -> Result<bool, StoreError> {
        check_queue(queue)?;
        let mut state = self.lock();
        Ok(if paused { state.paused.insert(queue.to_owned()) } else { state.paused.remove(queue) })
    }

    async fn heartbeat(&self, beat: &WorkerBeat) -> Result<(), StoreError> {
        beat.validate().map_err(|e| StoreError::invalid(JOB, e))?;
        let beat = WorkerBeat { last_seen: now(), ..beat.clone() };
        self.lock().workers.insert(beat.name.clone(), beat);
        Ok(())
    }

    async fn workers(&self) -> Result<Vec<WorkerBeat>, StoreError> {
        Ok(self.lock().workers.values().cloned().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEASE: Duration = Duration::from_secs(30);

    fn payloads(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("{{\"n\":{i}}}")).collect()
    }

    #[tokio::test]
    async fn claim_ack_fail_and_stats() {
        let q = MemoryStore::new();
        let ids = q.enqueue("dc1", &payloads(3)).await.expect("enqueue");
        q.enqueue("dc2", &payloads(1)).await.expect("enqueue");
        let jobs = q.claim("dc1", 2, LEASE, "w").await.expect("claim");
        assert_eq!(jobs.iter().map(|j| j.id).collect::<Vec<_>>(), ids[..2].to_vec(), "oldest first");
        assert!(jobs.iter().all(|j| j.attempts == 1 && j.lease_until > Utc::now()));
        assert!(q.ack(&jobs[0]).await.expect("ack"));
        assert!(q.ack(&jobs[0]).await.expect("ack again"), "a repeated ack by the same claim reports it done");
        let s = q.stats("dc1").await.expect("stats");
        assert_eq!((s.pending, s.running, s.done), (1, 1, 1));
        assert!(s.oldest_pending_age.is_some());

        let policy = RetryPolicy { max_attempts: 2, ..RetryPolicy::default() };
        // Read the clock (as the store rounds it) before the failure: a check after it would
        // race a slow machine.
        let before = now();
        let FailOutcome::Retry { at } = q.fail(&jobs[1], "boom", &policy).await.expect("fail") else {
            panic!("first failure is retried");
        };
        assert!(at >= before + chrono::Duration::from_std(policy.backoff(1)).expect("backoff"), "{at} {before}");
        assert_eq!(q.fail(&jobs[1], "again", &policy).await.expect("fail"), FailOutcome::Retry { at }, "repeated");
        assert!(!q.ack(&jobs[1]).await.expect("ack"), "a failed job is not acked by the claim that failed it");
        let next = q.claim("dc1", 5, LEASE, "w").await.expect("claim");
        assert_eq!(next.iter().map(|j| j.id).collect::<Vec<_>>(), [ids[2]], "back-off is honoured");
        let dying = Job { attempts: 2, ..next[0].clone() };
        assert_eq!(q.fail(&dying, "boom", &policy).await.expect("fail"), FailOutcome::Dead);
        let all = q.all_stats().await.expect("all");
        let counts: Vec<_> = all.iter().map(|s| (s.queue.as_str(), s.pending, s.dead, s.done)).collect();
        assert_eq!(counts, [("dc1", 1, 1, 1), ("dc2", 1, 0, 0)]);
        assert_eq!(
            q.stats("nobody").await.expect("stats"),
            QueueStats { queue: "nobody".into(), ..QueueStats::default() }
        );
    }

    #[tokio::test]
    async fn leases_expire_and_are_reclaimed() {
        let q = MemoryStore::new();
        q.enqueue("lease", &payloads(2)).await.expect("enqueue");
        let first = q.claim("lease", 2, Duration::from_millis(50), "dies").await.expect("claim");
        std::thread::sleep(Duration::from_millis(100));
        let s = q.stats("lease").await.expect("stats");
        assert_eq!((s.running, s.expired), (0, 2));
        let retaken = q.claim("lease", 1, LEASE, "lives").await.expect("claim");
        assert_eq!((retaken.len(), retaken[0].attempts), (1, 2));
        assert_ne!(retaken[0].lease_token, first[0].lease_token);
        assert_eq!(q.reclaim_expired("lease").await.expect("reclaim"), 1);
        assert_eq!(q.reclaim_expired("lease").await.expect("reclaim"), 0);
        let stale = first.iter().find(|j| j.id == retaken[0].id).expect("same job");
        assert!(!q.extend_lease(stale, LEASE).await.expect("stale extend"));
        assert!(q.extend_lease(&retaken[0], LEASE).await.expect("extend"));
        let rest = q.claim("lease", 5, Duration::MAX, "lives").await.expect("huge lease is clamped");
        let both: Vec<Job> = first.iter().chain(&retaken).chain(&rest).cloned().collect();
        assert_eq!(q.ack_batch(&both).await.expect("batch"), 2, "only live leases are acked");
        assert_eq!(q.stats("lease").await.expect("stats").done, 2);
    }

    #[tokio::test]
    async fn bad_input() {
        let q = MemoryStore::new();
        assert!(q.enqueue("", &payloads(1)).await.is_err_and(|e| e.is_invalid()));
        assert!(q.enqueue(&"q".repeat(256), &payloads(1)).await.is_err_and(|e| e.is_invalid()));
        assert!(q.claim(" ", 1, LEASE, "w").await.is_err_and(|e| e.is_invalid()));
        assert!(q.claim("q", 0, LEASE, "w").await.expect("max 0").is_empty());
        assert!(q.enqueue("q", &[]).await.expect("nothing").is_empty());
    }
}
