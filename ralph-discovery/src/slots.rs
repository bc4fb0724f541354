//! Host-wide slots: a file with one byte-range lock (`F_OFD_SETLK`) per slot, shared by every
//! process that opens it. The kernel drops a process's locks when it dies, `kill -9` included,
//! so a crashed scanner never keeps its share of the neighbour table.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::fcntl::{FcntlArg, fcntl};
use nix::libc;

/// A pool of `total` slots in a lock file, shared with every process (and every other
/// [`HostSlots`]) that opens the same file at the same base.
///
/// Locks are open-file-description locks, so two opens of the file in one process compete as
/// two processes do. Each slot is the lock on one byte at `base + index`; the file's content is
/// never read or written.
///
/// ```
/// # fn main() -> std::io::Result<()> {
/// use ralph_discovery::slots::HostSlots;
///
/// let dir = std::env::temp_dir().join(format!("ralph-slots-doc-{}", std::process::id()));
/// let path = dir.join("slots");
/// let a = HostSlots::open(&path, 0, 2)?;
/// let b = HostSlots::open(&path, 0, 2)?;
/// let one = a.try_acquire()?.expect("free");
/// let two = b.try_acquire()?.expect("free");
/// assert!(a.try_acquire()?.is_none(), "both slots are taken");
/// drop(one);
/// assert!(b.try_acquire()?.is_some(), "a released slot is free for everyone");
/// # drop(two);
/// # std::fs::remove_dir_all(dir)?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct HostSlots {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    file: File,
    path: PathBuf,
    base: u64,
    total: u64,
    state: Mutex<State>,
    released: tokio::sync::Notify,
}

#[derive(Debug)]
struct State {
    /// Slots this [`HostSlots`] holds (a second lock of the same byte through the same open file
    /// would succeed, so the file cannot tell us).
    held: Vec<bool>,
    count: u64,
    /// Slots released lately: the first candidates, usually free at once.
    recent: Vec<u64>,
    /// Where the next full search starts.
    cursor: u64,
}

/// One held slot; released (unlocked) on drop.
#[derive(Debug)]
pub struct HostSlot {
    inner: Arc<Inner>,
    index: u64,
}

impl HostSlot {
    /// The slot's index in its pool.
    #[must_use]
    pub fn index(&self) -> u64 {
        self.index
    }
}

impl Drop for HostSlot {
    fn drop(&mut self) {
        self.inner.unlock(self.index);
    }
}

/// Slots a waiter tries per wake beyond its own recent releases ([`HostSlots::acquire`]).
const WAIT_PROBES: u64 = 16;

/// The longest wait between two searches when every slot is taken by other processes (their
/// releases cannot wake us).
const MAX_POLL: Duration = Duration::from_millis(10);

fn lock_arg(kind: libc::c_int, start: u64) -> io::Result<libc::flock> {
    let start = libc::off_t::try_from(start).map_err(|_| io::Error::other("slot offset out of range"))?;
    // The cast only narrows the kernel's own small constants (F_WRLCK, F_UNLCK, SEEK_SET).
    #[allow(clippy::cast_possible_truncation)]
    Ok(libc::flock {
        l_type: kind as libc::c_short,
        l_whence: libc::SEEK_SET as libc::c_short,
        l_start: start,
        l_len: 1,
        l_pid: 0,
    })
}

impl HostSlots {
    /// Opens (creating it and its directory when missing) the slot file at `path`, for the
    /// slots `base..base + total`.
    ///
    /// # Errors
    /// Creating the directory or opening the file failed, or `total` is 0.
    pub fn open(path: &Path, base: u64, total: u64) -> io::Result<Self> {
        if total == 0 {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "a slot pool needs at least one slot"));
        }
        if let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path)?;
        let len = usize::try_from(total).map_err(|_| io::Error::other("too many slots"))?;
        Ok(Self {
            inner: Arc::new(Inner {
                file,
                path: path.to_owned(),
                base,
                total,
                state: Mutex::new(State { held: vec![false; len], count: 0, recent: Vec::new(), cursor: 0 }),
                released: tokio::sync::Notify::new(),
            }),
        })
    }

    /// The slot file.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Slots in the pool.
    #[must_use]
    pub fn total(&self) -> u64 {
        self.inner.total
    }

    /// Slots held through this handle (and its clones) now.
    #[must_use]
    pub fn held(&self) -> u64 {
        self.inner.lock_state().count
    }

    /// Takes a free slot if there is one, without waiting.
    ///
    /// # Errors
    /// The lock call failed for another reason than a conflicting lock.
    pub fn try_acquire(&self) -> io::Result<Option<HostSlot>> {
        self.try_acquire_within(self.inner.total)
    }

    /// [`HostSlots::try_acquire`], trying at most `probes` slots beyond the ones this handle
    /// gave back lately. Each failed try is a system call that walks the file's whole lock
    /// list, so a waiter that tried every slot on each wake spent most of two sharing
    /// processes' time on locks held by the other; the search goes on where it stopped.
    fn try_acquire_within(&self, probes: u64) -> io::Result<Option<HostSlot>> {
        let inner = &self.inner;
        let mut state = inner.lock_state();
        if state.count >= inner.total {
            return Ok(None);
        }
        while let Some(index) = state.recent.pop() {
            if inner.try_lock(&mut state, index)? {
                return Ok(Some(HostSlot { inner: Arc::clone(inner), index }));
            }
        }
        for _ in 0..probes.min(inner.total) {
            let index = state.cursor;
            state.cursor = (index + 1) % inner.total;
            if inner.try_lock(&mut state, index)? {
                return Ok(Some(HostSlot { inner: Arc::clone(inner), index }));
            }
        }
        Ok(None)
    }

    /// Waits for a free slot: woken by releases in this process, polling (1 ms doubling to
    /// 10 ms) for releases elsewhere. Each look tries this handle's recent releases and then
    /// the next few slots of the pool in turn, not the whole pool.
    ///
    /// # Errors
    /// As [`HostSlots::try_acquire`].
    pub async fn acquire(&self) -> io::Result<HostSlot> {
        let mut wait = Duration::from_millis(1);
        loop {
            let released = self.inner.released.notified();
            if let Some(slot) = self.try_acquire_within(WAIT_PROBES)? {
                return Ok(slot);
            }
            tokio::select! {
                () = released => {}
                () = tokio::time::sleep(wait) => wait = (wait * 2).min(MAX_POLL),
            }
        }
    }
}

impl Inner {
    fn lock_state(&self) -> std::sync::MutexGuard<'_, State> {
        // Plain bookkeeping: a panic elsewhere leaves it consistent enough to go on.
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Locks `index` unless this handle holds it already or another holder has it.
    fn try_lock(&self, state: &mut State, index: u64) -> io::Result<bool> {
        let Some(held) = usize::try_from(index).ok().and_then(|i| state.held.get_mut(i)) else { return Ok(false) };
        if *held {
            return Ok(false);
        }
        match fcntl(&self.file, FcntlArg::F_OFD_SETLK(&lock_arg(libc::F_WRLCK, self.base + index)?)) {
            Ok(_) => {
                *held = true;
                state.count += 1;
                Ok(true)
            }
            Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EACCES) => Ok(false),
            Err(e) => Err(io::Error::from(e)),
        }
    }

    fn unlock(&self, index: u64) {
        let unlocked = lock_arg(libc::F_UNLCK, self.base + index)
            .and_then(|arg| fcntl(&self.file, FcntlArg::F_OFD_SETLK(&arg)).map_err(io::Error::from));
        if let Err(error) = unlocked {
            // Should never happen; the lock then goes with the file when the process ends.
            tracing::warn!(target: "ralph::discovery", %error, index, "unlocking a host-wide slot failed");
            return;
        }
        let mut state = self.lock_state();
        if let Some(held) = usize::try_from(index).ok().and_then(|i| state.held.get_mut(i))
            && *held
        {
            *held = false;
            state.count -= 1;
            state.recent.push(index);
        }
        drop(state);
        self.released.notify_waiters();
    }
}

/// Where the host-wide neighbour slots live unless configured: `/run/ralph-discovery/` for
/// root, else `$XDG_RUNTIME_DIR/ralph-discovery/`, else a per-user directory under the
/// temporary directory. Processes share the budget when they use the same file.
#[must_use]
pub fn default_slot_path() -> PathBuf {
    const FILE: &str = "neighbour-slots";
    let uid = nix::unistd::geteuid();
    if uid.is_root() {
        return PathBuf::from("/run/ralph-discovery").join(FILE);
    }
    if let Some(dir) = std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("ralph-discovery").join(FILE);
    }
    std::env::temp_dir().join(format!("ralph-discovery-{uid}")).join(FILE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn two_opens_in_one_process_share_the_slots() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sub").join("slots");
        let a = HostSlots::open(&path, 0, 3).expect("open a");
        let b = HostSlots::open(&path, 0, 3).expect("open b");
        let held_a: Vec<HostSlot> = (0..3).map(|_| a.try_acquire().expect("lock").expect("free")).collect();
        assert_eq!(a.held(), 3);
        assert!(a.try_acquire().expect("lock").is_none());
        assert!(b.try_acquire().expect("lock").is_none(), "a's locks keep b out");
        // Another base is another pool.
        let c = HostSlots::open(&path, 1 << 20, 3).expect("open c");
        assert!(c.try_acquire().expect("lock").is_some());
        let waiter = tokio::spawn({
            let b = b.clone();
            async move { b.acquire().await.expect("acquire").index() }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished(), "waits while every slot is taken");
        let freed = held_a[1].index();
        drop(held_a);
        let got = tokio::time::timeout(Duration::from_secs(2), waiter).await.expect("in time").expect("task");
        assert!(got < 3, "slot {got} (freed {freed})");
        assert_eq!(a.held(), 0);
        assert!(HostSlots::open(&path, 0, 0).is_err(), "no empty pools");
    }

    /// A waiter tries a few slots per look, but goes on where it stopped: the one free slot
    /// of a large pool, far from where it started, is found.
    #[tokio::test]
    async fn a_waiter_finds_the_last_free_slot_of_a_large_pool() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("slots");
        let total = 20 * WAIT_PROBES;
        let other = HostSlots::open(&path, 0, total).expect("open other");
        let held: Vec<HostSlot> = (0..total).map(|_| other.try_acquire().expect("lock").expect("free")).collect();
        let ours = HostSlots::open(&path, 0, total).expect("open ours");
        // Our cursor walks a while over slots the other holds.
        assert!(ours.try_acquire_within(3 * WAIT_PROBES).expect("lock").is_none());
        let last = total - 1;
        let (freed, kept): (Vec<HostSlot>, Vec<HostSlot>) = held.into_iter().partition(|s| s.index() == last);
        drop(freed);
        let got = tokio::time::timeout(Duration::from_secs(5), ours.acquire()).await.expect("found in time");
        assert_eq!(got.expect("acquire").index(), last);
        assert_eq!(other.held(), total - 1, "the other still holds the rest");
        drop(kept);
    }
}
