//! Autoscan persistence: host results turned into observations and recorded in batches
//! through [`ScanResultStore`] (one call per batch, all or nothing).

use std::sync::Arc;

use ralph_core::scan::DEFAULT_DEAD_PING_LIMIT;
use ralph_core::{Observation, RecordSummary, ScanResultStore};

use crate::{HostResult, Result};

/// Default observations per store call.
pub const DEFAULT_BATCH: usize = 500;

/// Buffers observations and records them in batches.
///
/// With [`keyed`](Self::keyed), each batch is recorded through
/// [`ScanResultStore::record_batch`] under `<prefix>:<n>`: a batch retried after an error that
/// came after its commit (a connection lost during `COMMIT`) is not recorded twice. A batch
/// that failed is retried as it was; observations added meanwhile wait for the next batch.
#[derive(Debug)]
pub struct BatchRecorder<S: ?Sized> {
    store: Arc<S>,
    batch: usize,
    dead_ping_limit: u32,
    pending: Vec<Observation>,
    /// The batch being recorded (kept as it was until it is).
    inflight: Vec<Observation>,
    /// Key prefix and the next batch's number.
    key: Option<(String, u64)>,
    total: RecordSummary,
    recorded: u64,
}

impl<S: ScanResultStore + ?Sized> BatchRecorder<S> {
    /// A recorder with Ralph's dead-ping limit (2) and [`DEFAULT_BATCH`].
    #[must_use]
    pub fn new(store: Arc<S>) -> Self {
        Self {
            store,
            batch: DEFAULT_BATCH,
            dead_ping_limit: DEFAULT_DEAD_PING_LIMIT,
            pending: Vec::new(),
            inflight: Vec::new(),
            key: None,
            total: RecordSummary::default(),
            recorded: 0,
        }
    }

    /// Records each batch once, under the key `<prefix>:<n>` (`n` counting from 0); the
    /// prefix names the run, for example `job:<id>:claim:<lease token>`.
    #[must_use]
    pub fn keyed(mut self, prefix: impl Into<String>) -> Self {
        self.key = Some((prefix.into(), 0));
        self
    }

    /// Sets the batch size (at least 1).
    #[must_use]
    pub fn batch(mut self, batch: usize) -> Self {
        self.batch = batch.max(1);
        self
    }

    /// Sets the dead-ping limit.
    #[must_use]
    pub fn dead_ping_limit(mut self, limit: u32) -> Self {
        self.dead_ping_limit = limit;
        self
    }

    /// Adds a host's observation (hosts in the unknown state are skipped: a local error is
    /// no dead ping); records a batch when full.
    ///
    /// # Errors
    /// The store's error; the batch stays pending and is retried by the next flush.
    pub async fn push(&mut self, result: &HostResult) -> Result<()> {
        if let Some(o) = result.observation() {
            self.pending.push(o);
        }
        if self.is_full() {
            self.flush().await?;
        }
        Ok(())
    }

    /// Adds a host's observation without recording anything (hosts in the unknown state are
    /// skipped): for callers that check something (a job's lease, say) before each write.
    pub fn add(&mut self, result: &HostResult) {
        if let Some(o) = result.observation() {
            self.pending.push(o);
        }
    }

    /// Observations waiting to be recorded.
    #[must_use]
    pub fn pending(&self) -> usize {
        self.pending.len() + self.inflight.len()
    }

    /// Whether the pending observations fill a batch.
    #[must_use]
    pub fn is_full(&self) -> bool {
        self.pending() >= self.batch
    }

    /// Drops the pending observations unrecorded (a worker whose lease was lost must not
    /// write what it found).
    pub fn discard(&mut self) {
        self.pending.clear();
        self.inflight.clear();
    }

    /// Records whatever is pending: a batch that failed before first, as it was.
    ///
    /// # Errors
    /// The store's error; the failed batch and everything after it stay pending (a keyed
    /// batch may have been written: its retry then writes nothing).
    pub async fn flush(&mut self) -> Result<RecordSummary> {
        let mut flushed = RecordSummary::default();
        loop {
            if self.inflight.is_empty() {
                if self.pending.is_empty() {
                    return Ok(flushed);
                }
                self.inflight = std::mem::take(&mut self.pending);
            }
            let summary = match &self.key {
                Some((prefix, n)) => {
                    let key = format!("{prefix}:{n}");
                    let done = self.store.record_batch(&key, &self.inflight, self.dead_ping_limit).await?;
                    if done.is_none() {
                        tracing::debug!(target: "ralph::discovery", batch = %key, "batch was recorded before");
                    }
                    done.unwrap_or_default()
                }
                None => self.store.record_observations(&self.inflight, self.dead_ping_limit).await?,
            };
            tracing::debug!(target: "ralph::discovery", rows = self.inflight.len(), inserted = summary.inserted,
                updated = summary.updated, changed = summary.changed, "observations recorded");
            self.recorded += self.inflight.len() as u64;
            self.inflight.clear();
            if let Some((_, n)) = &mut self.key {
                *n += 1;
            }
            for total in [&mut self.total, &mut flushed] {
                total.inserted += summary.inserted;
                total.updated += summary.updated;
                total.changed += summary.changed;
            }
        }
    }

    /// Totals so far.
    #[must_use]
    pub fn total(&self) -> RecordSummary {
        self.total
    }

    /// Observations recorded so far.
    #[must_use]
    pub fn recorded(&self) -> u64 {
        self.recorded
    }
}
