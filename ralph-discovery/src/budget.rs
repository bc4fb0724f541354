//! The socket budget: a bound on open probe sockets below the soft `RLIMIT_NOFILE`, which
//! shrinks when the kernel says EMFILE/ENFILE.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// File descriptors left for the rest of the process (store pool, logs, the runtime).
pub const DEFAULT_FD_RESERVE: usize = 32;

/// The soft and hard `RLIMIT_NOFILE` of this process.
///
/// # Errors
/// The `getrlimit` error.
pub fn nofile_limits() -> std::io::Result<(u64, u64)> {
    nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).map_err(std::io::Error::from)
}

/// How many descriptors this process has open now (entries of `/proc/self/fd`).
#[must_use]
pub fn open_fds() -> Option<usize> {
    std::fs::read_dir("/proc/self/fd").ok().map(Iterator::count)
}

/// The budget a scan may use: `wanted`, capped at the soft `RLIMIT_NOFILE` minus what is open
/// already minus `reserve`, and at least 1.
#[must_use]
pub fn socket_budget(wanted: usize, reserve: usize) -> usize {
    let soft = nofile_limits().map_or(1024, |(soft, _)| usize::try_from(soft).unwrap_or(usize::MAX));
    let open = open_fds().unwrap_or(16);
    wanted.min(soft.saturating_sub(open).saturating_sub(reserve)).max(1)
}

/// A shrinkable counting bound on open sockets. Permits are handed out fairly (first come,
/// first served), which keeps the probe order host-major.
#[derive(Debug, Clone)]
pub struct SocketBudget {
    inner: Arc<BudgetInner>,
}

#[derive(Debug)]
struct BudgetInner {
    semaphore: Arc<Semaphore>,
    /// The current bound.
    capacity: AtomicUsize,
    /// Permits still to be destroyed on release after a shrink.
    debt: AtomicUsize,
    in_use: AtomicUsize,
    shrinks: AtomicUsize,
    /// The bound it started with: regrowth stops there.
    max: usize,
    /// Sockets opened since the last change of the bound.
    opened: AtomicUsize,
}

/// Sockets opened without EMFILE before the bound grows back by one.
const REGROW_AFTER: usize = 32;

/// One socket's worth of budget; released on drop.
#[derive(Debug)]
pub struct SocketPermit {
    permit: Option<OwnedSemaphorePermit>,
    inner: Arc<BudgetInner>,
}

impl Drop for SocketPermit {
    fn drop(&mut self) {
        self.inner.in_use.fetch_sub(1, Ordering::Relaxed);
        if let Some(permit) = self.permit.take() {
            let paid = self.inner.debt.fetch_update(Ordering::AcqRel, Ordering::Acquire, |d| d.checked_sub(1)).is_ok();
            if paid {
                permit.forget();
            }
        }
    }
}

impl SocketBudget {
    /// A budget of `capacity` sockets (at least 1).
    #[must_use]
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        Self {
            inner: Arc::new(BudgetInner {
                semaphore: Arc::new(Semaphore::new(capacity)),
                capacity: AtomicUsize::new(capacity),
                debt: AtomicUsize::new(0),
                in_use: AtomicUsize::new(0),
                shrinks: AtomicUsize::new(0),
                max: capacity,
                opened: AtomicUsize::new(0),
            }),
        }
    }

    /// Waits for a permit.
    pub async fn acquire(&self) -> SocketPermit {
        // The semaphore is never closed, so acquiring cannot fail; fall back to an unbounded
        // permit rather than panic if that ever changes.
        let permit = Arc::clone(&self.inner.semaphore).acquire_owned().await.ok();
        self.inner.in_use.fetch_add(1, Ordering::Relaxed);
        SocketPermit { permit, inner: Arc::clone(&self.inner) }
    }

    /// The current bound.
    #[must_use]
    pub fn capacity(&self) -> usize {
        self.inner.capacity.load(Ordering::Relaxed)
    }

    /// Permits free now (the bound less what is held, once a shrink has been paid off).
    #[must_use]
    pub fn available(&self) -> usize {
        self.inner.semaphore.available_permits()
    }

    /// Sockets open now.
    #[must_use]
    pub fn in_use(&self) -> usize {
        self.inner.in_use.load(Ordering::Relaxed)
    }

    /// How many times the budget shrank.
    #[must_use]
    pub fn shrinks(&self) -> usize {
        self.inner.shrinks.load(Ordering::Relaxed)
    }

    /// Records a socket opened without EMFILE; after a run of them a shrunk bound grows back
    /// by one (additive increase, as the rate does), up to where it started.
    pub fn opened(&self) {
        let n = self.inner.opened.fetch_add(1, Ordering::Relaxed) + 1;
        if n < REGROW_AFTER || self.capacity() >= self.inner.max || self.inner.debt.load(Ordering::Acquire) > 0 {
            return;
        }
        self.inner.opened.store(0, Ordering::Relaxed);
        if self
            .inner
            .capacity
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |c| (c < self.inner.max).then_some(c + 1))
            .is_ok()
        {
            self.inner.semaphore.add_permits(1);
        }
    }

    /// Shrinks the bound after EMFILE/ENFILE (called by the probe that met it, while it
    /// still holds its permit): to what was demonstrably open at that moment, the other
    /// holders, and always by at least one, keeping at least 1. Returns the new capacity.
    pub fn shrink(&self) -> usize {
        let mut removed = 0;
        let others = self.in_use().saturating_sub(1);
        let result = self.inner.capacity.fetch_update(Ordering::AcqRel, Ordering::Acquire, |cap| {
            if cap <= 1 {
                return None;
            }
            let new = (cap - 1).min(others).max(1);
            removed = cap - new;
            Some(new)
        });
        let Ok(old) = result else { return self.capacity() };
        self.inner.shrinks.fetch_add(1, Ordering::Relaxed);
        self.inner.opened.store(0, Ordering::Relaxed);
        let forgotten = self.inner.semaphore.forget_permits(removed);
        if forgotten < removed {
            self.inner.debt.fetch_add(removed - forgotten, Ordering::AcqRel);
        }
        tracing::warn!(target: "ralph::discovery", old, new = old - removed, "socket budget shrunk after EMFILE/ENFILE");
        old - removed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn shrink_takes_effect_as_permits_return() {
        let budget = SocketBudget::new(8);
        let mut held: Vec<_> = futures::future::join_all((0..8).map(|_| budget.acquire())).await;
        assert_eq!(budget.in_use(), 8);
        assert_eq!(budget.shrink(), 7, "all 8 were open: one less");
        held.truncate(4);
        assert_eq!(budget.shrink(), 3, "only 4 open when EMFILE came: the 3 others");
        drop(held);
        assert_eq!(budget.in_use(), 0);
        assert_eq!(budget.inner.semaphore.available_permits(), 3);
        for _ in 0..10 {
            budget.shrink();
        }
        assert_eq!(budget.capacity(), 1, "never below one");
        assert_eq!(budget.inner.semaphore.available_permits(), 1);
        for _ in 0..REGROW_AFTER * 3 {
            budget.opened();
        }
        assert_eq!(budget.capacity(), 4, "grows back by one per run of successful opens");
        assert_eq!(budget.inner.semaphore.available_permits(), 4);
        for _ in 0..REGROW_AFTER * 100 {
            budget.opened();
        }
        assert_eq!(budget.capacity(), 8, "never above where it started");
    }

    #[test]
    fn budget_stays_under_the_soft_limit() {
        let (soft, _) = nofile_limits().expect("getrlimit");
        let b = socket_budget(usize::MAX, DEFAULT_FD_RESERVE);
        assert!((b as u64) < soft);
        assert_eq!(socket_budget(3, DEFAULT_FD_RESERVE), 3);
    }
}
