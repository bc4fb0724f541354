//! What the pages and the JSON API show, built from the core types: one shape for both, so the
//! HTML, the JSON, the live updates and the metrics cannot disagree.

use std::time::Duration;

use chrono::{DateTime, Utc};
use ralph_core::{CappedCount, JobInfo, JobProgress, QueueOverview, WorkerBeat};
use serde::Serialize;

use crate::format;

/// A capped count with its display text.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct CountView {
    /// The count, or the cap when `capped`.
    pub(crate) count: u64,
    /// There are more than `count`.
    pub(crate) capped: bool,
    /// `"12"`, `"10k+"`.
    pub(crate) display: String,
}

impl From<CappedCount> for CountView {
    fn from(c: CappedCount) -> Self {
        Self { count: c.count, capped: c.capped, display: format::count(c) }
    }
}

/// The counted states of a queue, in the order the pages show them: (JSON and metrics name,
/// column title).
pub(crate) const COUNTS: [(&str, &str); 7] = [
    ("pending", "Pending"),
    ("scheduled", "Scheduled"),
    ("retrying", "Retrying"),
    ("running", "Running"),
    ("expired", "Expired"),
    ("dead", "Dead"),
    ("done_last_hour", "Done (1 h)"),
];

/// One queue of the overview.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct QueueView {
    pub(crate) queue: String,
    pub(crate) pending: CountView,
    pub(crate) scheduled: CountView,
    pub(crate) retrying: CountView,
    pub(crate) running: CountView,
    pub(crate) expired: CountView,
    pub(crate) dead: CountView,
    pub(crate) done_last_hour: CountView,
    /// Seconds the oldest claimable job has waited.
    pub(crate) oldest_pending_age_secs: Option<f64>,
    /// The same, for people: `2 m 5 s`.
    pub(crate) oldest_pending_age: Option<String>,
    pub(crate) paused: bool,
}

impl QueueView {
    /// The counts in [`COUNTS`] order.
    pub(crate) fn counts(&self) -> [&CountView; 7] {
        [&self.pending, &self.scheduled, &self.retrying, &self.running, &self.expired, &self.dead, &self.done_last_hour]
    }
}

impl From<QueueOverview> for QueueView {
    fn from(o: QueueOverview) -> Self {
        Self {
            queue: o.queue,
            pending: o.pending.into(),
            scheduled: o.scheduled.into(),
            retrying: o.retrying.into(),
            running: o.running.into(),
            expired: o.expired.into(),
            dead: o.dead.into(),
            done_last_hour: o.done_last_hour.into(),
            oldest_pending_age_secs: o.oldest_pending_age.map(|d| d.as_secs_f64()),
            oldest_pending_age: o.oldest_pending_age.map(format::duration),
            paused: o.paused,
        }
    }
}

/// `api/queues`, and every live update.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct OverviewView {
    /// The count cap in force.
    pub(crate) cap: u64,
    pub(crate) queues: Vec<QueueView>,
}

/// One worker, from its last heartbeat.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct WorkerView {
    pub(crate) name: String,
    pub(crate) host: String,
    pub(crate) pid: u32,
    pub(crate) queues: Vec<String>,
    pub(crate) current_jobs: Vec<i64>,
    pub(crate) started_at: DateTime<Utc>,
    pub(crate) last_seen: DateTime<Utc>,
    pub(crate) last_seen_age_secs: f64,
    /// Not seen for longer than the page's `stale_after`.
    pub(crate) stale: bool,
}

impl WorkerView {
    pub(crate) fn new(beat: &WorkerBeat, now: DateTime<Utc>, stale_after: Duration) -> Self {
        let age = format::age(beat.last_seen, now);
        Self {
            name: beat.name.clone(),
            host: beat.host.clone(),
            pid: beat.pid,
            queues: beat.queues.clone(),
            current_jobs: beat.current_jobs.iter().map(|id| id.get()).collect(),
            started_at: beat.started_at,
            last_seen: beat.last_seen,
            last_seen_age_secs: age.as_secs_f64(),
            stale: age > stale_after,
        }
    }
}

/// `api/workers`.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct WorkersView {
    pub(crate) stale_after_secs: f64,
    pub(crate) workers: Vec<WorkerView>,
}

/// One running job that reports progress (a scan), as its worker last told.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ScanView {
    pub(crate) worker: String,
    pub(crate) host: String,
    pub(crate) job: i64,
    pub(crate) done: u64,
    pub(crate) total: Option<u64>,
    pub(crate) alive: u64,
    pub(crate) congestion_events: u64,
    pub(crate) elapsed_secs: f64,
    /// Items per second so far.
    pub(crate) per_sec: Option<f64>,
    pub(crate) eta_secs: Option<f64>,
    /// `done / total` in percent.
    pub(crate) percent: Option<f64>,
    /// Its worker's heartbeat is stale: the numbers may be old.
    pub(crate) stale: bool,
}

impl ScanView {
    pub(crate) fn new(worker: &WorkerView, progress: &JobProgress) -> Self {
        #[allow(clippy::cast_precision_loss)] // counts far below 2^52
        let percent = progress.total.filter(|t| *t > 0).map(|t| (progress.done.min(t) as f64) * 100.0 / t as f64);
        Self {
            worker: worker.name.clone(),
            host: worker.host.clone(),
            job: progress.job.get(),
            done: progress.done,
            total: progress.total,
            alive: progress.alive,
            congestion_events: progress.congestion_events,
            elapsed_secs: progress.elapsed.as_secs_f64(),
            per_sec: progress.per_sec().filter(|r| r.is_finite()),
            eta_secs: progress.eta().map(|d| d.as_secs_f64()),
            percent,
            stale: worker.stale,
        }
    }
}

/// Every reported scan of `beats`, worker by worker.
pub(crate) fn scans(beats: &[WorkerBeat], now: DateTime<Utc>, stale_after: Duration) -> Vec<ScanView> {
    beats
        .iter()
        .flat_map(|beat| {
            let worker = WorkerView::new(beat, now, stale_after);
            beat.progress.iter().map(move |p| ScanView::new(&worker, p)).collect::<Vec<_>>()
        })
        .collect()
}

/// `api/queues/{queue}/jobs`.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct JobsView {
    pub(crate) queue: String,
    pub(crate) state: &'static str,
    pub(crate) q: Option<String>,
    pub(crate) jobs: Vec<JobInfo>,
    /// The `after` value of the next page, when there is one.
    pub(crate) next: Option<String>,
}

/// `api/queues/{queue}/count`.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct CountResult {
    pub(crate) queue: String,
    pub(crate) state: &'static str,
    pub(crate) q: Option<String>,
    pub(crate) count: CountView,
}

/// What an action did.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ActionResult {
    pub(crate) action: &'static str,
    pub(crate) queue: String,
    /// Jobs named (or found by the bulk filter).
    pub(crate) requested: u64,
    /// Jobs the store changed.
    pub(crate) changed: u64,
}
