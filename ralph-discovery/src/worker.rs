//! Scan jobs on the environment queues, and the [`Worker`]: a supervised pool of job slots that
//! claims, runs, records and acks them.

mod payload;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use chrono::{DateTime, Utc};
use ralph_core::{FailOutcome, Id, Job, JobProgress, JobQueue, QueueAdmin, RetryPolicy, ScanResultStore, WorkerBeat};
use serde::Serialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub use self::payload::{ScanJob, enqueue_addresses, enqueue_environment, enqueue_network, enqueue_targets};
use crate::{BatchRecorder, Error, Progress, Result, Scanner};

const TRACE: &str = "ralph::discovery";

/// How a worker runs. Build it by value:
/// How long the keys of recorded scan batches are kept (a retry later than this would record
/// its batch again; retries come within seconds).
const BATCH_KEY_RETENTION: Duration = Duration::from_secs(24 * 3600);
/// How often a worker prunes old batch keys.
const BATCH_KEY_PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// `WorkerConfig::new("scans").queue("scans.lab").concurrency(4).batch(1000)`.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct WorkerConfig {
    /// The queues to take jobs from, served in turn.
    pub queues: Vec<String>,
    /// This worker's name: in the queue's lease records and its heartbeat row (unique per
    /// worker: two workers with one name overwrite each other's heartbeat).
    pub name: String,
    /// Job slots: jobs run at the same time, each on its own clone of the [`Scanner`].
    pub concurrency: usize,
    /// Lease per claim; a lease keeper extends it every third of it while the job runs.
    pub lease: Duration,
    /// Wait between polls that found no job.
    pub poll_interval: Duration,
    /// Observations per store call.
    pub batch: usize,
    /// Ralph's dead-ping limit.
    pub dead_ping_limit: u32,
    /// Retry policy for failing jobs.
    pub retry: RetryPolicy,
    /// How often the worker writes its heartbeat ([`QueueAdmin::heartbeat`]).
    pub heartbeat_interval: Duration,
    /// First wait after a store error (claim, record, extend, ack, fail, heartbeat); doubles,
    /// with jitter, up to [`WorkerConfig::store_retry_max`]. Store errors never end
    /// [`Worker::run`].
    pub store_retry_min: Duration,
    /// Longest wait between store retries.
    pub store_retry_max: Duration,
}

impl WorkerConfig {
    /// Defaults for `queue`: 2 job slots, 60 s lease, 500-row batches, a heartbeat every
    /// 10 s, store retries from 100 ms to 5 s.
    #[must_use]
    pub fn new(queue: impl Into<String>) -> Self {
        Self {
            queues: vec![queue.into()],
            name: format!("discovery-{}", std::process::id()),
            concurrency: 2,
            lease: Duration::from_secs(60),
            poll_interval: Duration::from_millis(500),
            batch: crate::DEFAULT_BATCH,
            dead_ping_limit: ralph_core::scan::DEFAULT_DEAD_PING_LIMIT,
            retry: RetryPolicy::default(),
            heartbeat_interval: Duration::from_secs(10),
            store_retry_min: Duration::from_millis(100),
            store_retry_max: Duration::from_secs(5),
        }
    }

    /// Serves one more queue.
    #[must_use]
    pub fn queue(mut self, queue: impl Into<String>) -> Self {
        self.queues.push(queue.into());
        self
    }

    /// Sets [`WorkerConfig::name`].
    #[must_use]
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Sets [`WorkerConfig::concurrency`] (0 runs one job at a time, as 1 does).
    #[must_use]
    pub fn concurrency(mut self, jobs: usize) -> Self {
        self.concurrency = jobs;
        self
    }

    /// Sets [`WorkerConfig::lease`].
    #[must_use]
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    /// Sets [`WorkerConfig::poll_interval`].
    #[must_use]
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self
    }

    /// Sets [`WorkerConfig::batch`].
    #[must_use]
    pub fn batch(mut self, observations: usize) -> Self {
        self.batch = observations;
        self
    }

    /// Sets [`WorkerConfig::dead_ping_limit`].
    #[must_use]
    pub fn dead_ping_limit(mut self, limit: u32) -> Self {
        self.dead_ping_limit = limit;
        self
    }

    /// Sets [`WorkerConfig::retry`].
    #[must_use]
    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// Sets [`WorkerConfig::heartbeat_interval`].
    #[must_use]
    pub fn heartbeat_interval(mut self, interval: Duration) -> Self {
        self.heartbeat_interval = interval;
        self
    }

    /// Sets [`WorkerConfig::store_retry_min`] and [`WorkerConfig::store_retry_max`].
    #[must_use]
    pub fn store_retry(mut self, min: Duration, max: Duration) -> Self {
        self.store_retry_min = min;
        self.store_retry_max = max;
        self
    }

    /// Checks what [`Worker::run`] would refuse before claiming anything: no queue, a lease
    /// under 30 ms, zero intervals, a queue or worker name the heartbeat refuses.
    ///
    /// # Errors
    /// [`Error::Config`] naming the first problem.
    pub fn validate(&self) -> Result<()> {
        if self.queues.is_empty() {
            return Err(Error::Config("a worker needs at least one queue".to_owned()));
        }
        if self.lease < Duration::from_millis(30) {
            return Err(Error::Config(format!("worker lease {:?} is shorter than 30 ms", self.lease)));
        }
        if self.heartbeat_interval.is_zero() || self.poll_interval.is_zero() {
            return Err(Error::Config("worker heartbeat and poll intervals must not be zero".to_owned()));
        }
        let beat = WorkerBeat {
            name: self.name.clone(),
            host: "host".to_owned(),
            pid: 0,
            queues: self.queues.clone(),
            current_jobs: Vec::new(),
            started_at: DateTime::<Utc>::UNIX_EPOCH,
            last_seen: DateTime::<Utc>::UNIX_EPOCH,
            progress: Vec::new(),
        };
        beat.validate().map_err(|e| Error::Config(format!("worker heartbeat: {e}")))
    }

    fn backoff(&self) -> impl Iterator<Item = Duration> + use<> {
        ExponentialBuilder::default()
            .with_min_delay(self.store_retry_min)
            .with_max_delay(self.store_retry_max.max(self.store_retry_min))
            .without_max_times()
            .with_jitter()
            .build()
    }
}

/// Runs a store call (an expression, evaluated afresh per attempt) until it succeeds,
/// retrying errors with back-off while the job's lease lasts; once the lease has run out the
/// job is given up with [`Abort::LeaseLost`] (another worker may hold it). A macro rather than
/// a function over an async closure: such closures' futures are not provably `Send`.
macro_rules! with_store {
    ($shared:expr, $job:expr, $lease:expr, $report:expr, $call:expr) => {{
        let mut backoff = $shared.config.backoff();
        loop {
            if $lease.expired() {
                break Err(Abort::LeaseLost);
            }
            match $call.await {
                Ok(v) => break Ok(v),
                Err(e) => {
                    $report.stats.store_errors += 1;
                    let wait = backoff.next().unwrap_or($shared.config.store_retry_max);
                    tracing::warn!(target: TRACE, job = %$job.id, error = %e, retry_in_ms = wait.as_millis(), "store call failed; retrying");
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }};
}

/// What a worker did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct WorkerStats {
    /// Jobs acknowledged.
    pub jobs_done: u64,
    /// Jobs failed (retried or dead-lettered by the queue).
    pub jobs_failed: u64,
    /// Hosts scanned and recorded.
    pub hosts: u64,
    /// Jobs cut short by shutdown whose unscanned rest was handed back ([`JobQueue::requeue`]).
    pub requeued: u64,
    /// Jobs given up because their lease was lost (taken by another worker, or it ran out
    /// while the store could not be reached); what they found was not recorded.
    pub leases_lost: u64,
    /// Store calls that failed and were retried.
    pub store_errors: u64,
}

impl WorkerStats {
    fn add(&mut self, other: &Self) {
        self.jobs_done += other.jobs_done;
        self.jobs_failed += other.jobs_failed;
        self.hosts += other.hosts;
        self.requeued += other.requeued;
        self.leases_lost += other.leases_lost;
        self.store_errors += other.store_errors;
    }
}

/// A supervised discovery worker: a pool of [`WorkerConfig::concurrency`] job slots over one
/// [`Scanner`], serving one or more queues.
///
/// - A slot takes a new job as soon as its job ends: a slow job does not idle the others.
/// - Jobs carry target expressions ([`ScanJob`]), expanded lazily; buried addresses are left
///   out with one store query per job ([`ScanResultStore::buried_between`]).
/// - Store errors (claim, record, extend, ack, fail, heartbeat) are logged and retried with
///   back-off; they never end [`Worker::run`].
/// - A lease keeper extends each job's lease. When the lease is lost (another worker holds
///   the job, or it ran out while the store was unreachable), the job's scan is cancelled at
///   once and nothing more of it is recorded; each batch is written only after the lease was
///   confirmed, and `ack`/`fail` results are checked.
/// - A job whose payload is bad is dead-lettered with the reason, and the worker goes on.
/// - On shutdown it stops claiming, stops admitting new hosts, lets probes in flight finish,
///   records what they found and hands the unscanned rest of each job back as that job
///   ([`JobQueue::requeue`], one statement): nothing is lost and nothing is queued twice.
/// - Every [`WorkerConfig::heartbeat_interval`] it writes a [`WorkerBeat`] (name, host, pid,
///   queues, current jobs, start, last seen), readable with [`QueueAdmin::workers`].
#[derive(Debug)]
pub struct Worker<Q: ?Sized, S: ?Sized> {
    shared: Arc<Shared<Q, S>>,
}

#[derive(Debug)]
struct Shared<Q: ?Sized, S: ?Sized> {
    jobs: Arc<Q>,
    store: Arc<S>,
    scanner: Scanner,
    config: WorkerConfig,
    host: String,
    /// The jobs running now, each with its scan's progress once the scan started.
    current: Mutex<BTreeMap<Id<Job>, Option<watch::Receiver<Progress>>>>,
}

/// A scan's progress as a heartbeat reports it.
fn job_progress(job: Id<Job>, p: &Progress) -> JobProgress {
    JobProgress {
        job,
        total: p.total,
        done: p.done,
        alive: p.up,
        congestion_events: p.congestion_events,
        elapsed: Duration::try_from_secs_f64(p.elapsed_secs).unwrap_or_default(),
    }
}

/// How one job ended, for the statistics.
#[derive(Debug, Default)]
struct JobReport {
    stats: WorkerStats,
}

/// Removes a job from the worker's current set when its slot ends, however it ends.
struct Running<'a> {
    current: &'a Mutex<BTreeMap<Id<Job>, Option<watch::Receiver<Progress>>>>,
    id: Id<Job>,
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.current.lock().unwrap_or_else(PoisonError::into_inner).remove(&self.id);
    }
}

/// The lease as the worker knows it: when it runs out at the latest (measured from before
/// the claim or the last successful extension, so never later than the store's).
struct Lease {
    until: Instant,
    length: Duration,
}

impl Lease {
    fn renewed(&mut self, asked_at: Instant) {
        self.until = asked_at + self.length;
    }

    fn expired(&self) -> bool {
        Instant::now() >= self.until
    }
}

/// Why a job stopped early.
enum Abort {
    /// The lease is gone: stop, record nothing, do not ack.
    LeaseLost,
}

impl<Q, S> Worker<Q, S>
where
    Q: JobQueue + QueueAdmin + ?Sized + 'static,
    S: ScanResultStore + ?Sized + 'static,
{
    /// A worker: `jobs` is the queue, `store` records results, `scanner` is cloned per slot
    /// (its clones share one configuration and, with it, the process's scan resources).
    #[must_use]
    pub fn new(jobs: Arc<Q>, store: Arc<S>, scanner: Scanner, config: WorkerConfig) -> Self {
        let host = nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "unknown".to_owned());
        Self { shared: Arc::new(Shared { jobs, store, scanner, config, host, current: Mutex::new(BTreeMap::new()) }) }
    }

    /// The configuration.
    #[must_use]
    pub fn config(&self) -> &WorkerConfig {
        &self.shared.config
    }

    /// Runs until `shutdown` is cancelled, then drains (jobs in flight are stopped, what they
    /// found is recorded, their unscanned rest handed back) and returns.
    ///
    /// # Errors
    /// [`Error::Config`] for a configuration that cannot run (no queue, a lease under 30 ms,
    /// zero intervals, a name or host the heartbeat refuses), before anything is claimed.
    /// Store errors are retried, never returned.
    pub async fn run(&self, shutdown: CancellationToken) -> Result<WorkerStats> {
        let shared = &self.shared;
        let config = &shared.config;
        config.validate()?;
        let started_at = Utc::now();
        shared.beat(started_at).validate().map_err(|e| Error::Config(format!("worker heartbeat: {e}")))?;
        let slots = Arc::new(Semaphore::new(config.concurrency.max(1)));
        let mut tasks: JoinSet<JobReport> = JoinSet::new();
        let mut stats = WorkerStats::default();
        let beats_done = CancellationToken::new();
        let beats = tokio::spawn(Arc::clone(shared).heartbeats(started_at, beats_done.clone()));
        let mut backoff = config.backoff();
        let mut next_queue = 0usize;
        tracing::info!(target: TRACE, worker = %config.name, queues = ?config.queues, slots = config.concurrency.max(1), "worker started");
        loop {
            while let Some(done) = tasks.try_join_next() {
                fold(&mut stats, done);
            }
            if shutdown.is_cancelled() {
                break;
            }
            let free = slots.available_permits();
            if free == 0 {
                tokio::select! {
                    Some(done) = tasks.join_next() => fold(&mut stats, done),
                    () = shutdown.cancelled() => {}
                }
                continue;
            }
            let (claimed, failed) = shared.claim(free, next_queue, &mut stats).await;
            next_queue = next_queue.wrapping_add(1);
            let got = !claimed.is_empty();
            for (job, asked_at) in claimed {
                let Ok(permit) = Arc::clone(&slots).try_acquire_owned() else {
                    // Cannot happen: at most `free` jobs were claimed. Leave it to its lease.
                    tracing::error!(target: TRACE, job = %job.id, "no free slot for a claimed job");
                    continue;
                };
                shared.current.lock().unwrap_or_else(PoisonError::into_inner).insert(job.id, None);
                let lease = Lease { until: asked_at + config.lease, length: config.lease };
                tasks.spawn(Arc::clone(shared).run_job(job, lease, permit, shutdown.clone()));
            }
            if failed && !got {
                let wait = backoff.next().unwrap_or(config.store_retry_max);
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    () = shutdown.cancelled() => {}
                }
                continue;
            }
            if !failed {
                backoff = config.backoff();
            }
            if !got {
                tokio::select! {
                    () = tokio::time::sleep(config.poll_interval) => {}
                    () = shutdown.cancelled() => {}
                }
            }
        }
        // Drain: every job sees the cancelled token, stops admitting hosts, records and hands
        // back its rest.
        while let Some(done) = tasks.join_next().await {
            fold(&mut stats, done);
        }
        beats_done.cancel();
        if let Ok(errors) = beats.await {
            stats.store_errors += errors;
        }
        tracing::info!(target: TRACE, worker = %config.name, ?stats, "worker stopped");
        Ok(stats)
    }
}

fn fold(stats: &mut WorkerStats, done: std::result::Result<JobReport, tokio::task::JoinError>) {
    match done {
        Ok(report) => stats.add(&report.stats),
        // The job's lease runs out and the queue hands it out again (or dead-letters it).
        Err(e) => tracing::error!(target: TRACE, error = %e, "a job task panicked"),
    }
}

impl<Q, S> Shared<Q, S>
where
    Q: JobQueue + QueueAdmin + ?Sized + 'static,
    S: ScanResultStore + ?Sized + 'static,
{
    fn beat(&self, started_at: DateTime<Utc>) -> WorkerBeat {
        let current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        WorkerBeat {
            name: self.config.name.clone(),
            host: self.host.clone(),
            pid: std::process::id(),
            queues: self.config.queues.clone(),
            current_jobs: current.keys().copied().collect(),
            progress: current
                .iter()
                .filter_map(|(job, progress)| Some(job_progress(*job, &progress.as_ref()?.borrow())))
                .collect(),
            started_at,
            last_seen: Utc::now(),
        }
    }

    /// Writes a heartbeat every interval until `done`, then a last one (no current jobs);
    /// returns how many failed.
    async fn heartbeats(self: Arc<Self>, started_at: DateTime<Utc>, done: CancellationToken) -> u64 {
        let mut errors = 0;
        let mut pruned_at: Option<Instant> = None;
        loop {
            if let Err(e) = self.jobs.heartbeat(&self.beat(started_at)).await {
                errors += 1;
                tracing::warn!(target: TRACE, worker = %self.config.name, error = %e, "heartbeat failed; retrying");
            }
            // The batch keys recorded jobs leave behind, forgotten after a day (hourly).
            if pruned_at.is_none_or(|at| at.elapsed() >= BATCH_KEY_PRUNE_EVERY) {
                match self.store.prune_batches(BATCH_KEY_RETENTION).await {
                    Ok(n) => {
                        pruned_at = Some(Instant::now());
                        tracing::debug!(target: TRACE, pruned = n, "old scan batch keys pruned");
                    }
                    Err(e) => tracing::warn!(target: TRACE, error = %e, "pruning scan batch keys failed; retrying"),
                }
            }
            if done.is_cancelled() {
                return errors;
            }
            tokio::select! {
                () = tokio::time::sleep(self.config.heartbeat_interval) => {}
                () = done.cancelled() => {}
            }
        }
    }

    /// Claims up to `free` jobs from the queues in turn, starting at `first`. Returns the jobs
    /// with the instant before their claim, and whether a claim failed.
    async fn claim(&self, free: usize, first: usize, stats: &mut WorkerStats) -> (Vec<(Job, Instant)>, bool) {
        let queues = &self.config.queues;
        let mut claimed = Vec::new();
        for i in 0..queues.len() {
            let want = free - claimed.len();
            if want == 0 {
                break;
            }
            let queue = &queues[(first + i) % queues.len()];
            let asked_at = Instant::now();
            match self.jobs.claim(queue, want, self.config.lease, &self.config.name).await {
                Ok(jobs) => claimed.extend(jobs.into_iter().map(|j| (j, asked_at))),
                Err(e) => {
                    stats.store_errors += 1;
                    tracing::warn!(target: TRACE, queue, error = %e, "claim failed; retrying after a back-off");
                    return (claimed, true);
                }
            }
        }
        (claimed, false)
    }

    async fn run_job(
        self: Arc<Self>,
        job: Job,
        mut lease: Lease,
        _slot: OwnedSemaphorePermit,
        shutdown: CancellationToken,
    ) -> JobReport {
        let _running = Running { current: &self.current, id: job.id };
        let mut report = JobReport::default();
        tracing::debug!(target: TRACE, job = %job.id, queue = %job.queue, attempt = job.attempts, "job started");
        match self.scan_job(&job, &mut lease, &shutdown, &mut report).await {
            Ok(()) => {}
            Err(JobError::Abort(Abort::LeaseLost)) => {
                report.stats.leases_lost += 1;
                tracing::warn!(target: TRACE, job = %job.id, "lease lost: the job's scan was cancelled and its results not recorded");
            }
            Err(JobError::Failed(e)) => {
                report.stats.jobs_failed += 1;
                tracing::warn!(target: TRACE, job = %job.id, error = %e, "scan job failed");
                // Bad input fails the same way every time: dead-letter it at once.
                let policy =
                    if e.is_input() { RetryPolicy { max_attempts: 1, ..self.config.retry } } else { self.config.retry };
                let reason = error_chain(&e);
                let outcome: std::result::Result<FailOutcome, Abort> =
                    with_store!(self, job, lease, report, self.jobs.fail(&job, &reason, &policy));
                match outcome {
                    Ok(FailOutcome::Dead) => {
                        tracing::warn!(target: TRACE, job = %job.id, reason, "job dead-lettered");
                    }
                    Ok(FailOutcome::Retry { at }) => {
                        tracing::debug!(target: TRACE, job = %job.id, %at, "job will be retried");
                    }
                    Ok(FailOutcome::LeaseLost) | Err(Abort::LeaseLost) => {
                        report.stats.leases_lost += 1;
                        tracing::warn!(target: TRACE, job = %job.id, "lease lost before the failure was recorded");
                    }
                }
            }
        }
        report
    }

    /// Extends the lease (retrying store errors while it lasts).
    async fn keep_lease(&self, job: &Job, lease: &mut Lease, report: &mut JobReport) -> std::result::Result<(), Abort> {
        let length = self.config.lease;
        let mut asked_at = Instant::now();
        let held: bool = with_store!(self, job, lease, report, {
            asked_at = Instant::now();
            self.jobs.extend_lease(job, length)
        })?;
        if !held {
            return Err(Abort::LeaseLost);
        }
        lease.renewed(asked_at);
        Ok(())
    }

    /// Records the pending observations, after confirming the lease.
    async fn record(
        &self,
        job: &Job,
        lease: &mut Lease,
        recorder: &mut BatchRecorder<S>,
        report: &mut JobReport,
    ) -> std::result::Result<(), JobError> {
        if recorder.pending() == 0 {
            return Ok(());
        }
        loop {
            self.keep_lease(job, lease, report).await?;
            match recorder.flush().await {
                Ok(_) => return Ok(()),
                // A bad observation is refused whole, every time: fail the job.
                Err(Error::Store(e)) if e.is_invalid() => {
                    recorder.discard();
                    return Err(JobError::Failed(Error::Store(e)));
                }
                Err(e) => {
                    report.stats.store_errors += 1;
                    let wait = self.config.store_retry_min.max(Duration::from_millis(10));
                    tracing::warn!(target: TRACE, job = %job.id, error = %e, "recording failed; retrying");
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    async fn scan_job(
        &self,
        job: &Job,
        lease: &mut Lease,
        shutdown: &CancellationToken,
        report: &mut JobReport,
    ) -> std::result::Result<(), JobError> {
        let payload = ScanJob::parse(&job.payload).map_err(JobError::Failed)?;
        let mut targets = payload.resolve().map_err(JobError::Failed)?;
        for (first, last) in payload.bounds().map_err(JobError::Failed)? {
            let buried: Vec<IpAddr> = with_store!(self, job, lease, report, self.store.buried_between(first, last))?;
            targets = targets.exclude_addresses(buried);
        }
        let mut handle = self.scanner.start(targets.addresses());
        if let Some(slot) = self.current.lock().unwrap_or_else(PoisonError::into_inner).get_mut(&job.id) {
            *slot = Some(handle.progress.clone());
        }
        // Keyed by the claim (its lease token; up to 64 characters of it, so the key and the
        // recorder's batch suffix stay within MAX_BATCH_KEY): a batch retried after a lost
        // commit outcome is not recorded twice, and a later claim of the same job records
        // anew. Not keyed by the attempt number: a job handed back at shutdown, or retried by
        // an operator, is claimed again under an attempt number it had before.
        let claim: String = job.lease_token.chars().take(64).collect();
        let mut recorder = BatchRecorder::new(Arc::clone(&self.store))
            .batch(self.config.batch)
            .dead_ping_limit(self.config.dead_ping_limit)
            .keyed(format!("job:{}:claim:{claim}", job.id));
        let mut done: Vec<IpAddr> = Vec::new();
        let mut keeper = tokio::time::interval((self.config.lease / 3).max(Duration::from_millis(10)));
        keeper.tick().await;
        let mut stopping = false;
        loop {
            tokio::select! {
                r = handle.results.recv() => match r {
                    Some(result) => {
                        done.push(result.address);
                        recorder.add(&result);
                        if recorder.is_full() {
                            self.record(job, lease, &mut recorder, report).await?;
                        }
                    }
                    None => break,
                },
                _ = keeper.tick() => self.keep_lease(job, lease, report).await?,
                () = shutdown.cancelled(), if !stopping => {
                    stopping = true;
                    handle.stop();
                }
            }
        }
        // Dropping the handle on an early return (`?` above) stops the scan at once; hosts in
        // flight are discarded with the recorder's pending observations.
        let summary = handle.finish().await.map_err(JobError::Failed)?;
        self.record(job, lease, &mut recorder, report).await?;
        report.stats.hosts += done.len() as u64;
        let rest = if summary.stopped {
            let rest = payload::remainder(&payload, done);
            // A rest that does not resolve fails the job (retried whole) instead of being
            // dropped with the hosts it names.
            if rest.resolve().map_err(JobError::Failed)?.is_empty() {
                None
            } else {
                Some(rest.to_payload().map_err(JobError::Failed)?)
            }
        } else {
            None
        };
        // A stopped job with nothing left is done.
        if rest.is_some() {
            report.stats.requeued += 1;
        } else {
            report.stats.jobs_done += 1;
        }
        // The rest goes back as this job, in one statement: a repeat after a lost reply
        // finds it done and does not queue the rest twice (as an enqueue would).
        let held: bool = match &rest {
            Some(text) => with_store!(self, job, lease, report, self.jobs.requeue(job, text))?,
            None => with_store!(self, job, lease, report, self.jobs.ack(job))?,
        };
        if !held {
            // Recorded while the lease held (each batch checked it); another worker took the
            // job since and will scan it again.
            tracing::warn!(target: TRACE, job = %job.id, "lease lost at ack");
            report.stats.jobs_done = 0;
            report.stats.requeued = 0;
            return Err(JobError::Abort(Abort::LeaseLost));
        }
        tracing::debug!(target: TRACE, job = %job.id, hosts = report.stats.hosts, stopped = summary.stopped, "job done");
        Ok(())
    }
}

/// Why a job did not end normally.
enum JobError {
    /// The lease is gone.
    Abort(Abort),
    /// The job failed: reported to the queue.
    Failed(Error),
}

impl From<Abort> for JobError {
    fn from(a: Abort) -> Self {
        Self::Abort(a)
    }
}

/// An error and its sources on one line, for the job's `last_error`.
fn error_chain(e: &Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
