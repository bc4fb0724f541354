//! The store-wide retry of write transactions that hit a transient conflict.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Instant;

use backon::{ExponentialBuilder, Retryable};
use ralph_core::StoreError;
use tracing::{debug, warn};

use crate::config::ConflictRetry;
use crate::error::transient_conflict;
use crate::store::TRACE_TARGET;

/// How often a store retried, shared by its clones.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    retries: AtomicU64,
    exhausted: AtomicU64,
    /// Devices a reconciliation apply wrote in batches (the rest went one per transaction).
    pub(crate) batched_devices: AtomicU64,
}

impl Counters {
    pub(crate) fn retries(&self) -> u64 {
        self.retries.load(Ordering::Relaxed)
    }

    pub(crate) fn exhausted(&self) -> u64 {
        self.exhausted.load(Ordering::Relaxed)
    }
}

/// Runs `write` (a whole transaction: begin, statements, commit) until it succeeds, fails
/// with an error that is not a transient conflict, or used up the policy's attempts or time. Each
/// attempt starts afresh: the failed transaction was rolled back when it was dropped.
pub(crate) async fn retry_conflicts<T, F, Fut>(
    policy: &ConflictRetry,
    counters: &Arc<Counters>,
    entity: &'static str,
    mut write: F,
) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, StoreError>>,
{
    let attempts = AtomicU32::new(0);
    let started = Instant::now();
    let backoff = ExponentialBuilder::default()
        .with_min_delay(policy.min_delay)
        .with_max_delay(policy.max_delay.max(policy.min_delay))
        .with_max_times(usize::try_from(policy.max_attempts.saturating_sub(1)).unwrap_or(usize::MAX))
        .with_jitter();
    let result = (|| {
        attempts.fetch_add(1, Ordering::Relaxed);
        write()
    })
    .retry(backoff)
    .when(|e| transient_conflict(e).is_some() && started.elapsed() < policy.max_elapsed)
    .notify(|e, delay| {
        counters.retries.fetch_add(1, Ordering::Relaxed);
        debug!(
            target: TRACE_TARGET,
            entity,
            conflict = transient_conflict(e).unwrap_or_default(),
            attempt = attempts.load(Ordering::Relaxed),
            delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
            "transient conflict, transaction retried"
        );
    })
    .await;
    match result {
        Err(e) if transient_conflict(&e).is_some() => {
            counters.exhausted.fetch_add(1, Ordering::Relaxed);
            let attempts = attempts.load(Ordering::Relaxed);
            warn!(
                target: TRACE_TARGET,
                entity,
                conflict = transient_conflict(&e).unwrap_or_default(),
                attempts,
                "transient conflict outlasted the retry policy"
            );
            let source = match e {
                StoreError::Backend(source) => source,
                other => Box::new(other),
            };
            Err(StoreError::Contended { entity, attempts, source })
        }
        other => other,
    }
}
