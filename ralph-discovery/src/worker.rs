//! Scan jobs on the environment queues, and the [`Worker`] that claims, runs and acks them.

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use ralph_core::{
    Id, InventoryStore, Job, JobQueue, Network, NetworkEnvironment, Repository, RetryPolicy, ScanResultStore,
};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::{BatchRecorder, Error, Result, Scanner, Targets};

/// The payload of a scan job: a group of addresses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScanJob {
    /// The addresses to scan.
    pub addresses: Vec<IpAddr>,
}

/// Enqueues `addresses` onto `queue` in jobs of at most `group` addresses; returns the ids.
///
/// # Errors
/// The queue's error.
pub async fn enqueue_addresses<Q: JobQueue + ?Sized>(
    jobs: &Q,
    queue: &str,
    addresses: impl IntoIterator<Item = IpAddr>,
    group: usize,
) -> Result<Vec<Id<Job>>> {
    let addresses: Vec<IpAddr> = addresses.into_iter().collect();
    let payloads: Vec<String> = addresses
        .chunks(group.max(1))
        .map(|c| serde_json::to_string(&ScanJob { addresses: c.to_vec() }).map_err(Error::Payload))
        .collect::<Result<_>>()?;
    if payloads.is_empty() {
        return Ok(Vec::new());
    }
    Ok(jobs.enqueue(queue, &payloads).await?)
}

/// Enqueues a scan of one network (buried addresses skipped) onto its environment's queue.
///
/// # Errors
/// [`Error::Config`] when the network has no environment; store and queue errors.
pub async fn enqueue_network<S, Q>(store: &S, jobs: &Q, network: Id<Network>, group: usize) -> Result<Vec<Id<Job>>>
where
    S: InventoryStore + ?Sized,
    Q: JobQueue + ?Sized,
{
    let net = Repository::<Network>::get(store, network).await?;
    let env =
        net.value.environment.ok_or_else(|| Error::Config(format!("network {} has no environment", net.value.name)))?;
    let env = Repository::<NetworkEnvironment>::get(store, env).await?;
    let targets = Targets::new().with_network_of(store, &net.value).await?;
    enqueue_addresses(jobs, &env.value.queue, targets.addresses(), group).await
}

/// Enqueues scans of every network of an environment onto its queue.
///
/// # Errors
/// Store and queue errors.
pub async fn enqueue_environment<S, Q>(
    store: &S,
    jobs: &Q,
    environment: Id<NetworkEnvironment>,
    group: usize,
) -> Result<Vec<Id<Job>>>
where
    S: InventoryStore + ?Sized,
    Q: JobQueue + ?Sized,
{
    let env = Repository::<NetworkEnvironment>::get(store, environment).await?;
    let targets = Targets::from_environment(store, environment).await?;
    enqueue_addresses(jobs, &env.value.queue, targets.addresses(), group).await
}

/// How a worker runs. Build it by value: `WorkerConfig::new("scans").concurrency(4).batch(1000)`.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct WorkerConfig {
    /// The queue to take jobs from.
    pub queue: String,
    /// This worker's name (in the queue's lease records).
    pub name: String,
    /// Jobs run at the same time.
    pub concurrency: usize,
    /// Lease per claim; extended while a job runs.
    pub lease: Duration,
    /// Wait between empty polls.
    pub poll_interval: Duration,
    /// Observations per store call.
    pub batch: usize,
    /// Ralph's dead-ping limit.
    pub dead_ping_limit: u32,
    /// Retry policy for failing jobs.
    pub retry: RetryPolicy,
}

impl WorkerConfig {
    /// Defaults for `queue`: 2 jobs at a time, 60 s lease, 500-row batches.
    #[must_use]
    pub fn new(queue: impl Into<String>) -> Self {
        Self {
            queue: queue.into(),
            name: format!("discovery-{}", std::process::id()),
            concurrency: 2,
            lease: Duration::from_secs(60),
            poll_interval: Duration::from_millis(500),
            batch: crate::DEFAULT_BATCH,
            dead_ping_limit: ralph_core::scan::DEFAULT_DEAD_PING_LIMIT,
            retry: RetryPolicy::default(),
        }
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
    /// Jobs cut short by shutdown whose unscanned rest was enqueued again.
    pub requeued: u64,
}

/// Claims scan jobs, runs them with bounded concurrency, records results in batches and acks.
/// On shutdown it stops claiming, stops admitting new hosts, lets probes in flight finish,
/// records what they found, and re-enqueues the unscanned rest of each job before acking it.
#[derive(Debug)]
pub struct Worker<Q: ?Sized, S: ?Sized> {
    jobs: Arc<Q>,
    store: Arc<S>,
    scanner: Scanner,
    config: WorkerConfig,
}

enum JobEnd {
    Done(u64),
    Requeued(u64),
}

impl<Q, S> Worker<Q, S>
where
    Q: JobQueue + ?Sized + 'static,
    S: ScanResultStore + ?Sized + 'static,
{
    /// A worker.
    #[must_use]
    pub fn new(jobs: Arc<Q>, store: Arc<S>, scanner: Scanner, config: WorkerConfig) -> Self {
        Self { jobs, store, scanner, config }
    }

    /// Runs until `shutdown` turns true, then drains and returns.
    ///
    /// # Errors
    /// Queue errors while claiming (job-level failures are reported to the queue instead).
    pub async fn run(&self, mut shutdown: watch::Receiver<bool>) -> Result<WorkerStats> {
        let mut stats = WorkerStats::default();
        loop {
            if *shutdown.borrow() {
                break;
            }
            let claimed = self
                .jobs
                .claim(&self.config.queue, self.config.concurrency.max(1), self.config.lease, &self.config.name)
                .await?;
            if claimed.is_empty() {
                tokio::select! {
                    () = tokio::time::sleep(self.config.poll_interval) => {}
                    _ = shutdown.changed() => {}
                }
                continue;
            }
            let outcomes =
                futures::future::join_all(claimed.iter().map(|job| self.run_job(job, shutdown.clone()))).await;
            for (job, outcome) in claimed.iter().zip(outcomes) {
                match outcome {
                    Ok(JobEnd::Done(hosts)) => {
                        stats.jobs_done += 1;
                        stats.hosts += hosts;
                    }
                    Ok(JobEnd::Requeued(hosts)) => {
                        stats.requeued += 1;
                        stats.hosts += hosts;
                    }
                    Err(e) => {
                        stats.jobs_failed += 1;
                        tracing::warn!(target: "ralph::discovery", job = %job.id, error = %e, "scan job failed");
                        let policy = if e.is_input() {
                            RetryPolicy { max_attempts: 1, ..self.config.retry }
                        } else {
                            self.config.retry
                        };
                        self.jobs.fail(job, &e.to_string(), &policy).await?;
                    }
                }
            }
        }
        tracing::info!(target: "ralph::discovery", ?stats, "worker stopped");
        Ok(stats)
    }

    async fn run_job(&self, job: &Job, mut shutdown: watch::Receiver<bool>) -> Result<JobEnd> {
        let payload: ScanJob = serde_json::from_str(&job.payload).map_err(Error::Payload)?;
        tracing::debug!(target: "ralph::discovery", job = %job.id, addresses = payload.addresses.len(), "job started");
        let mut handle = self.scanner.start(payload.addresses.clone());
        let mut recorder = BatchRecorder::new(Arc::clone(&self.store))
            .batch(self.config.batch)
            .dead_ping_limit(self.config.dead_ping_limit);
        let mut done = HashSet::new();
        let mut lease = tokio::time::interval((self.config.lease / 3).max(crate::engine::MIN_TICK));
        lease.tick().await;
        let mut stopping = *shutdown.borrow();
        if stopping {
            handle.stop();
        }
        loop {
            tokio::select! {
                r = handle.results.recv() => match r {
                    Some(result) => {
                        done.insert(result.address);
                        recorder.push(&result).await?;
                    }
                    None => break,
                },
                _ = lease.tick() => {
                    if !self.jobs.extend_lease(job, self.config.lease).await? {
                        tracing::warn!(target: "ralph::discovery", job = %job.id, "lease lost; another worker owns the job");
                    }
                }
                changed = shutdown.changed(), if !stopping => {
                    if changed.is_err() || *shutdown.borrow() {
                        stopping = true;
                        handle.stop();
                    }
                }
            }
        }
        let summary = handle.finish().await?;
        recorder.flush().await?;
        let hosts = done.len() as u64;
        if summary.stopped {
            let rest: Vec<IpAddr> = payload.addresses.into_iter().filter(|a| !done.contains(a)).collect();
            if !rest.is_empty() {
                enqueue_addresses(&*self.jobs, &job.queue, rest, usize::MAX).await?;
            }
            self.jobs.ack(job).await?;
            return Ok(JobEnd::Requeued(hosts));
        }
        self.jobs.ack(job).await?;
        Ok(JobEnd::Done(hosts))
    }
}
