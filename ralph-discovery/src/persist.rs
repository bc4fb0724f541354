//! Autoscan persistence: host results turned into observations and recorded in batches
//! through [`ScanResultStore`] (one call per batch, all or nothing).

use std::sync::Arc;

use ralph_core::scan::DEFAULT_DEAD_PING_LIMIT;
use ralph_core::{Observation, RecordSummary, ScanResultStore};

use crate::{HostResult, Result};

/// Default observations per store call.
pub const DEFAULT_BATCH: usize = 500;

/// Buffers observations and records them in batches.
#[derive(Debug)]
pub struct BatchRecorder<S: ?Sized> {
    store: Arc<S>,
    batch: usize,
    dead_ping_limit: u32,
    pending: Vec<Observation>,
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
            total: RecordSummary::default(),
            recorded: 0,
        }
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
        if self.pending.len() >= self.batch {
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
        self.pending.len()
    }

    /// Whether the pending observations fill a batch.
    #[must_use]
    pub fn is_full(&self) -> bool {
        self.pending.len() >= self.batch
    }

    /// Drops the pending observations unrecorded (a worker whose lease was lost must not
    /// write what it found).
    pub fn discard(&mut self) {
        self.pending.clear();
    }

    /// Records whatever is pending.
    ///
    /// # Errors
    /// The store's error; nothing of the batch was written and it stays pending.
    pub async fn flush(&mut self) -> Result<RecordSummary> {
        if self.pending.is_empty() {
            return Ok(RecordSummary::default());
        }
        let summary = self.store.record_observations(&self.pending, self.dead_ping_limit).await?;
        tracing::debug!(target: "ralph::discovery", rows = self.pending.len(), inserted = summary.inserted,
            updated = summary.updated, changed = summary.changed, "observations recorded");
        self.recorded += self.pending.len() as u64;
        self.pending.clear();
        self.total.inserted += summary.inserted;
        self.total.updated += summary.updated;
        self.total.changed += summary.changed;
        Ok(summary)
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
