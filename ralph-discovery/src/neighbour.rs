//! Neighbour-table safety: admit on-link hosts within what the kernel's ARP/NDP table can hold,
//! and delete the entries the scan created once their hosts are done (with CAP_NET_ADMIN).

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use futures::TryStreamExt;
use ipnetwork::IpNetwork;
use netlink_packet_route::AddressFamily;
use netlink_packet_route::neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState};
use tokio::sync::{OnceCell, OwnedSemaphorePermit, Semaphore};

use crate::slots::{HostSlot, HostSlots};
use crate::{Error, Result};

/// How long a finished host's entry keeps its slot when entries cannot be deleted: the kernel
/// only collects an entry that holds no timer (so not REACHABLE, which lasts up to 1.5 x
/// `base_reachable_time`) and has not been updated for 5 s. Derived from the interfaces'
/// `base_reachable_time_ms`: 1.5 x the largest + 6 s (51 s at the default 30 s).
#[must_use]
pub fn default_hold() -> Duration {
    let base_ms = local_subnets()
        .iter()
        .filter_map(|s| {
            read_u64(&format!(
                "/proc/sys/net/{}/neigh/{}/base_reachable_time_ms",
                family_dir(s.network.is_ipv6()),
                s.interface
            ))
        })
        .chain(read_u64("/proc/sys/net/ipv4/neigh/default/base_reachable_time_ms"))
        .max()
        .unwrap_or(30_000);
    Duration::from_millis(base_ms.saturating_mul(3) / 2) + Duration::from_secs(6)
}

/// The kernel's neighbour-table thresholds for one address family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NeighbourLimits {
    /// `gc_thresh1`: below this the GC leaves entries alone.
    pub gc_thresh1: u64,
    /// `gc_thresh2`: soft maximum.
    pub gc_thresh2: u64,
    /// `gc_thresh3`: hard maximum; beyond it new neighbours fail (`table_fulls`).
    pub gc_thresh3: u64,
}

fn family_dir(v6: bool) -> &'static str {
    if v6 { "ipv6" } else { "ipv4" }
}

fn read_u64(path: &str) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

impl NeighbourLimits {
    /// Reads `/proc/sys/net/<family>/neigh/default/gc_thresh{1,2,3}`; the kernel defaults
    /// (128/512/1024) when unreadable.
    #[must_use]
    pub fn read(v6: bool) -> Self {
        let f = family_dir(v6);
        let get = |n: u8, d: u64| read_u64(&format!("/proc/sys/net/{f}/neigh/default/gc_thresh{n}")).unwrap_or(d);
        Self { gc_thresh1: get(1, 128), gc_thresh2: get(2, 512), gc_thresh3: get(3, 1024) }
    }
}

/// Counters of one neighbour table from `/proc/net/stat/{arp,ndisc}_cache`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NeighbourStats {
    /// Entries in the table now.
    pub entries: u64,
    /// Times a new entry could not be created because the table was full (summed over CPUs).
    pub table_fulls: u64,
    /// Packets dropped while waiting for resolution (summed over CPUs).
    pub unresolved_discards: u64,
}

impl NeighbourStats {
    /// Reads the counters; `None` when the file is missing (no IPv6, say).
    #[must_use]
    pub fn read(v6: bool) -> Option<Self> {
        let name = if v6 { "ndisc_cache" } else { "arp_cache" };
        let text = std::fs::read_to_string(format!("/proc/net/stat/{name}")).ok()?;
        let mut lines = text.lines();
        let header: Vec<&str> = lines.next()?.split_whitespace().collect();
        let col = |n: &str| header.iter().position(|h| *h == n);
        let (e, t, u) = (col("entries")?, col("table_fulls")?, col("unresolved_discards")?);
        let mut stats = Self::default();
        for line in lines {
            let v: Vec<u64> = line.split_whitespace().map(|x| u64::from_str_radix(x, 16).unwrap_or(0)).collect();
            if v.len() < header.len() {
                continue;
            }
            stats.entries = v[e];
            stats.table_fulls += v[t];
            stats.unresolved_discards += v[u];
        }
        Some(stats)
    }
}

/// Whether this process has CAP_NET_ADMIN in its effective set (`capget(2)`); `false` when
/// that cannot be read.
#[must_use]
pub fn has_net_admin() -> bool {
    caps::has_cap(None, caps::CapSet::Effective, caps::Capability::CAP_NET_ADMIN).unwrap_or(false)
}

/// A directly connected subnet of a local interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalSubnet {
    /// The subnet.
    pub network: IpNetwork,
    /// The local address on it.
    pub local: IpAddr,
    /// The interface's index.
    pub ifindex: u32,
    /// The interface's name.
    pub interface: String,
}

/// The subnets of the local non-loopback interfaces (from `getifaddrs`).
#[must_use]
pub fn local_subnets() -> Vec<LocalSubnet> {
    use nix::net::if_::InterfaceFlags;
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else { return Vec::new() };
    let mut out = Vec::new();
    for a in addrs {
        if a.flags.contains(InterfaceFlags::IFF_LOOPBACK) {
            continue;
        }
        let (Some(addr), Some(mask)) = (a.address, a.netmask) else { continue };
        let (ip, prefix) = if let (Some(ip), Some(m)) = (addr.as_sockaddr_in(), mask.as_sockaddr_in()) {
            (IpAddr::V4(ip.ip()), u32::from(m.ip()).count_ones())
        } else if let (Some(ip), Some(m)) = (addr.as_sockaddr_in6(), mask.as_sockaddr_in6()) {
            (IpAddr::V6(ip.ip()), u128::from(m.ip()).count_ones())
        } else {
            continue;
        };
        let Ok(prefix) = u8::try_from(prefix) else { continue };
        let Ok(net) = IpNetwork::new(ip, prefix) else { continue };
        let Ok(network) = IpNetwork::new(net.network(), prefix) else { continue };
        let ifindex = nix::net::if_::if_nametoindex(a.interface_name.as_str()).unwrap_or(0);
        out.push(LocalSubnet { network, local: ip, ifindex, interface: a.interface_name });
    }
    out
}

/// Where the host-wide neighbour slots are kept.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum SlotFile {
    /// [`crate::slots::default_slot_path`]; when it cannot be opened the budget is this
    /// process's only (with a warning).
    #[default]
    Default,
    /// This file; failing to open it is an error.
    Path(std::path::PathBuf),
    /// No host-wide budget: only this process's.
    Off,
}

/// Settings of the neighbour guard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NeighbourConfig {
    /// Entries of headroom left for the rest of the host (default: an eighth of `gc_thresh3`,
    /// at least 32).
    pub reserve: Option<u64>,
    /// Use an explicit budget instead of the one derived from the kernel's thresholds.
    pub budget: Option<usize>,
    /// Delete created entries when CAP_NET_ADMIN is available (default true).
    pub delete_entries: bool,
    /// How long a slot stays taken after its host when entries are not deleted (default:
    /// [`default_hold`]).
    pub hold: Option<Duration>,
    /// The host-wide budget shared by every process on the machine (default:
    /// [`SlotFile::Default`]).
    pub slot_file: SlotFile,
}

impl Default for NeighbourConfig {
    fn default() -> Self {
        Self { reserve: None, budget: None, delete_entries: true, hold: None, slot_file: SlotFile::Default }
    }
}

impl NeighbourConfig {
    /// Checks the ranges: an explicit budget must be at least 1, an explicit slot file a
    /// non-empty path.
    ///
    /// # Errors
    /// [`Error::Setting`] naming the bad value.
    pub fn validate(&self) -> Result<()> {
        if self.budget == Some(0) {
            return Err(Error::setting("neighbour.budget", 0, "must be at least 1"));
        }
        if matches!(&self.slot_file, SlotFile::Path(p) if p.as_os_str().is_empty()) {
            return Err(Error::setting("neighbour.slot_file", "", "must be a path"));
        }
        Ok(())
    }
}

/// Slot numbers of IPv6 neighbours in the slot file start here (IPv4 ones at 0).
const V6_SLOT_BASE: u64 = 1 << 32;

/// How often admission re-reads the live entry count.
const RECHECK_EVERY: Duration = Duration::from_millis(2);

/// The longest admission sleeps between looks at the live table while it has no room.
const MAX_ROOM_WAIT: Duration = Duration::from_millis(4);

/// Releases talking to netlink at once. Replies to more overflowed the socket's receive buffer
/// (the kernel drops them, counted in `/proc/net/netlink`), and a request whose reply was
/// dropped waited forever, its slot with it: a sweep of a /16 hung.
const NETLINK_IN_FLIGHT: usize = 128;

/// Netlink connections for releases. A connection is one task that sends one queued request
/// per poll and routes the replies, so one connection serialised every lookup and delete of
/// the process on one thread (the limit of a /16 sweep once sends ran on every worker); more
/// connections are more tasks the runtime's workers can run at once. Their three extra
/// descriptors come out of the process's reserve ([`crate::budget::DEFAULT_FD_RESERVE`]), not
/// the socket budget.
const NETLINK_SOCKETS: usize = 4;

/// The netlink socket's receive buffer asked for (the kernel caps it at `net.core.rmem_max`).
const NETLINK_RCVBUF: usize = 1 << 20;

/// How long one release may wait for netlink; after it the entry is treated as not deleted
/// (its slot is held until the kernel may collect it).
const NETLINK_TIMEOUT: Duration = Duration::from_secs(2);

/// How long the snapshot of the table before a scan may take; after it nothing is deleted.
const DUMP_TIMEOUT: Duration = Duration::from_secs(10);

tokio::task_local! {
    /// The admitted host whose probes this task runs (set by the engine around each host).
    static SENDING: Unsent;
}

/// Runs `task` (one host's probes) with `slot`'s host counted as not yet in the table until
/// its first paced packet ([`sending`]).
pub(crate) async fn with_host<F: std::future::Future>(slot: Option<&NeighbourSlot>, task: F) -> F::Output {
    in_host(slot.and_then(|s| s.unsent.clone()), task).await
}

/// The host whose probes the current task runs, to hand to a task it spawns ([`in_host`]).
pub(crate) fn current_host() -> Option<Unsent> {
    SENDING.try_with(Clone::clone).ok()
}

/// Runs `task` as part of `host`'s probes (see [`with_host`]).
pub(crate) async fn in_host<F: std::future::Future>(host: Option<Unsent>, task: F) -> F::Output {
    match host {
        Some(unsent) => SENDING.scope(unsent, task).await,
        None => task.await,
    }
}

/// Called as a probe of the current host is let through the pacer, just before it sends:
/// from now on its neighbour entry is in the live count (or about to be).
pub(crate) fn sending() {
    let _ = SENDING.try_with(Unsent::sent);
}

/// An admitted on-link host that has sent nothing yet, so its neighbour entry is not in the
/// live count: admission counts it on top of that count until [`Unsent::sent`] (or until it
/// is dropped, when the host is done).
#[derive(Debug, Clone)]
pub(crate) struct Unsent(Arc<UnsentInner>);

struct UnsentInner {
    guard: Arc<GuardInner>,
    v6: bool,
    done: AtomicBool,
}

impl std::fmt::Debug for UnsentInner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Unsent").field("v6", &self.v6).field("sent", &self.done.load(Ordering::Relaxed)).finish()
    }
}

impl UnsentInner {
    /// From "not sent" to "sent lately", once.
    fn settle(&self) {
        if !self.done.swap(true, Ordering::AcqRel) {
            let c = self.guard.pending(self.v6);
            // Counted as sent lately for the next two reads of the live table, by which time
            // its entry shows there (or never will).
            c.sent_now.fetch_add(1, Ordering::AcqRel);
            let before = c.unsent.fetch_sub(1, Ordering::AcqRel);
            debug_assert!(before > 0, "unsent count underflow");
        }
    }
}

impl Unsent {
    fn sent(&self) {
        self.0.settle();
    }
}

impl Drop for UnsentInner {
    fn drop(&mut self) {
        // A host done without a paced packet may still have made an entry (a host app's probe
        // that does not use the pacer): it is counted as sent lately too.
        self.settle();
    }
}

/// Admitted hosts of one family whose entries the live count may not show yet.
#[derive(Debug, Default)]
struct Pending {
    /// Admitted, nothing sent yet.
    unsent: AtomicU64,
    /// Sent since the live count was last read.
    sent_now: AtomicU64,
    /// Sent in the period before that: a host that sent just before a read may have made its
    /// entry just after it, so each stays counted for a whole period after the read that
    /// could have missed it.
    sent_before: AtomicU64,
}

/// Decides which targets are on-link and paces them through the neighbour table: a budget per
/// process (shared by every scan of a [`crate::ScanResources`]) and, through a slot file, one
/// per host, re-checked against the live entry count.
///
/// Cheap to clone: clones share the budget.
#[derive(Debug, Clone)]
pub struct NeighbourGuard {
    inner: Arc<GuardInner>,
}

#[derive(Debug)]
struct GuardInner {
    subnets: Vec<LocalSubnet>,
    v4: Arc<Semaphore>,
    v6: Arc<Semaphore>,
    budget_v4: usize,
    budget_v6: usize,
    /// The most entries admission lets the table reach, per family.
    ceiling_v4: u64,
    ceiling_v6: u64,
    host_v4: Option<HostSlots>,
    host_v6: Option<HostSlots>,
    hold: Duration,
    delete: bool,
    /// Opened at the first on-link admission (inside the runtime): [`NETLINK_SOCKETS`]
    /// connections, the first also for dumps.
    netlink: OnceCell<Option<Vec<rtnetlink::Handle>>>,
    /// Round-robin over the connections for releases.
    next_socket: AtomicUsize,
    /// The kernel runs one dump at a time per netlink socket (EBUSY otherwise): scopes
    /// starting together take their snapshots in turn.
    dump: tokio::sync::Mutex<()>,
    /// [`NETLINK_IN_FLIGHT`] turns for releases.
    netlink_turns: Semaphore,
    live: std::sync::Mutex<LiveCount>,
    /// Admitted hosts whose entries the live count may not show yet, per family.
    pending_v4: Pending,
    pending_v6: Pending,
    warned: AtomicBool,
    deleted: AtomicU64,
    delete_errors: AtomicU64,
}

#[derive(Debug, Default)]
struct LiveCount {
    read_at: Option<std::time::Instant>,
    v4: u64,
    v6: u64,
}

/// A host's place in the neighbour table; give it back with [`NeighbourScope::release`]. Dropped
/// without that (a cancelled scan), its slots are held as if entries were not deleted.
#[derive(Debug)]
pub struct NeighbourSlot {
    /// Counted on top of the live table until the host's first packet.
    unsent: Option<Unsent>,
    permit: Option<OwnedSemaphorePermit>,
    host: Option<HostSlot>,
    hold: Duration,
    ip: IpAddr,
    ifindex: u32,
}

impl NeighbourSlot {
    /// The address admitted.
    #[must_use]
    pub fn ip(&self) -> IpAddr {
        self.ip
    }

    /// Says that the host's first packet is on its way, so its entry is in the live count
    /// from now on. The scan engine does this itself as each host's first probe passes the
    /// pacer; a caller of [`NeighbourScope::admit`] that sends by other means calls it before
    /// sending. Until then (or until the slot is released) the host is counted on top of the
    /// live table, so slots never marked count twice once their entries exist.
    pub fn sent(&self) {
        if let Some(unsent) = &self.unsent {
            unsent.sent();
        }
    }

    /// Frees the slots now.
    fn free(&mut self) {
        self.unsent.take();
        self.permit.take();
        self.host.take();
    }

    /// Frees the slots once the kernel may have collected the entry.
    fn free_after_hold(&mut self) {
        self.unsent.take();
        let (permit, host, hold) = (self.permit.take(), self.host.take(), self.hold);
        if permit.is_none() && host.is_none() {
            return;
        }
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    tokio::time::sleep(hold).await;
                    drop((permit, host));
                });
            }
            // No runtime left to wait in: the process is ending, its slots go anyway.
            Err(_) => drop((permit, host)),
        }
    }
}

impl Drop for NeighbourSlot {
    fn drop(&mut self) {
        self.free_after_hold();
    }
}

fn budget_for(limits: NeighbourLimits, stats: Option<NeighbourStats>, reserve: Option<u64>) -> usize {
    let reserve = reserve_of(limits, reserve);
    let used = stats.map_or(0, |s| s.entries);
    let free = limits.gc_thresh3.saturating_sub(used).saturating_sub(reserve).max(1);
    usize::try_from(free).unwrap_or(usize::MAX)
}

fn reserve_of(limits: NeighbourLimits, reserve: Option<u64>) -> u64 {
    reserve.unwrap_or_else(|| (limits.gc_thresh3 / 8).max(32))
}

/// The host-wide pool of one family: the table's size less the reserve (what every process
/// sharing the file may hold together, independent of what is in the table now).
fn host_total(limits: NeighbourLimits, reserve: Option<u64>, explicit: Option<usize>) -> u64 {
    explicit.map_or_else(
        || limits.gc_thresh3.saturating_sub(reserve_of(limits, reserve)).max(1),
        |b| u64::try_from(b).unwrap_or(u64::MAX),
    )
}

fn open_host_slots(config: &NeighbourConfig, v4: u64, v6: u64) -> Result<(Option<HostSlots>, Option<HostSlots>)> {
    let (path, required) = match &config.slot_file {
        SlotFile::Off => return Ok((None, None)),
        SlotFile::Default => (crate::slots::default_slot_path(), false),
        SlotFile::Path(p) => (p.clone(), true),
    };
    let opened = HostSlots::open(&path, 0, v4).and_then(|a| Ok((a, HostSlots::open(&path, V6_SLOT_BASE, v6)?)));
    match opened {
        Ok((a, b)) => Ok((Some(a), Some(b))),
        Err(source) if required => Err(Error::Io { what: "opening the neighbour slot file", source }),
        Err(error) => {
            tracing::warn!(target: "ralph::discovery", %error, path = %path.display(),
                "host-wide neighbour slot file unavailable: the neighbour budget is this process's only");
            Ok((None, None))
        }
    }
}

impl NeighbourGuard {
    /// Reads the local subnets, thresholds and entry counts and opens the slot file. Netlink
    /// (for deleting entries) is opened at the first on-link admission, so this needs no runtime.
    ///
    /// # Errors
    /// [`Error::Setting`] for a bad configuration; [`Error::Io`] when an explicit slot file
    /// cannot be opened.
    pub fn new(config: &NeighbourConfig) -> Result<Self> {
        config.validate()?;
        let (limits_v4, limits_v6) = (NeighbourLimits::read(false), NeighbourLimits::read(true));
        let host_v4 = host_total(limits_v4, config.reserve, config.budget);
        let host_v6 = host_total(limits_v6, config.reserve, config.budget);
        let (host_slots_v4, host_slots_v6) = open_host_slots(config, host_v4, host_v6)?;
        let delete = config.delete_entries && has_net_admin();
        // With the host-wide pool and entries deleted after use (so the live count can be
        // re-checked at each admission), the process may use the whole pool. Otherwise its budget
        // is what is free now, as the entries it leaves behind are only collected later.
        let local = |limits, v6, host: u64, shared: bool| {
            if config.budget.is_some() || (shared && delete) {
                usize::try_from(host).unwrap_or(usize::MAX)
            } else {
                budget_for(limits, NeighbourStats::read(v6), config.reserve)
            }
        };
        let budget_v4 = local(limits_v4, false, host_v4, host_slots_v4.is_some());
        let budget_v6 = local(limits_v6, true, host_v6, host_slots_v6.is_some());
        // Half the reserve stays free whoever else fills the table.
        let ceiling =
            |limits: NeighbourLimits| limits.gc_thresh3.saturating_sub(reserve_of(limits, config.reserve) / 2);
        tracing::debug!(target: "ralph::discovery", budget_v4, budget_v6, delete,
            host_wide = host_slots_v4.is_some(), "neighbour guard");
        Ok(Self {
            inner: Arc::new(GuardInner {
                subnets: local_subnets(),
                v4: Arc::new(Semaphore::new(budget_v4)),
                v6: Arc::new(Semaphore::new(budget_v6)),
                budget_v4,
                budget_v6,
                ceiling_v4: ceiling(limits_v4),
                ceiling_v6: ceiling(limits_v6),
                host_v4: host_slots_v4,
                host_v6: host_slots_v6,
                hold: config.hold.unwrap_or_else(default_hold),
                delete,
                netlink: OnceCell::new(),
                next_socket: AtomicUsize::new(0),
                dump: tokio::sync::Mutex::new(()),
                netlink_turns: Semaphore::new(NETLINK_IN_FLIGHT),
                live: std::sync::Mutex::new(LiveCount::default()),
                pending_v4: Pending::default(),
                pending_v6: Pending::default(),
                warned: AtomicBool::new(false),
                deleted: AtomicU64::new(0),
                delete_errors: AtomicU64::new(0),
            }),
        })
    }

    /// A scope for one scan: it remembers which entries existed before the scan's first
    /// on-link host, so it never deletes an entry it did not create.
    #[must_use]
    pub fn scope(&self) -> NeighbourScope {
        NeighbourScope { guard: self.clone(), preexisting: OnceCell::new(), deleted: AtomicU64::new(0) }
    }

    /// The interface through which `ip` is on-link, or `None` for loopback, local and
    /// routed (off-link) addresses, which cost no neighbour entry.
    #[must_use]
    pub fn on_link(&self, ip: IpAddr) -> Option<u32> {
        if ip.is_loopback() {
            return None;
        }
        let subnets = &self.inner.subnets;
        if subnets.iter().any(|s| s.local == ip) {
            return None;
        }
        subnets.iter().filter(|s| s.network.contains(ip)).max_by_key(|s| s.network.prefix()).map(|s| s.ifindex)
    }

    /// This process's budget of concurrently held on-link hosts for one family.
    #[must_use]
    pub fn budget(&self, v6: bool) -> usize {
        if v6 { self.inner.budget_v6 } else { self.inner.budget_v4 }
    }

    /// On-link hosts admitted now by this process (IPv4 + IPv6).
    #[must_use]
    pub fn in_use(&self) -> usize {
        let i = &self.inner;
        (i.budget_v4 - i.v4.available_permits()) + (i.budget_v6 - i.v6.available_permits())
    }

    /// The host-wide pool of one family, when the slot file is in use.
    #[must_use]
    pub fn host_slots(&self, v6: bool) -> Option<&HostSlots> {
        if v6 { self.inner.host_v6.as_ref() } else { self.inner.host_v4.as_ref() }
    }

    /// Whether entries are deleted after use (asked for, and CAP_NET_ADMIN held).
    #[must_use]
    pub fn deletes_entries(&self) -> bool {
        self.inner.delete
    }

    /// Entries deleted so far, by every scope.
    #[must_use]
    pub fn deleted(&self) -> u64 {
        self.inner.deleted.load(Ordering::Relaxed)
    }

    async fn netlink(&self) -> Option<&rtnetlink::Handle> {
        if !self.inner.delete {
            return None;
        }
        self.inner
            .netlink
            .get_or_init(|| async {
                let mut handles = Vec::with_capacity(NETLINK_SOCKETS);
                for _ in 0..NETLINK_SOCKETS {
                    match rtnetlink::new_connection() {
                        Ok((mut conn, handle, _)) => {
                            use rtnetlink::sys::AsyncSocket;
                            // Room for the replies of every release in flight; a smaller buffer
                            // only means fewer at once would fit (the turns and timeout still hold).
                            if let Err(error) = conn.socket_mut().socket_ref().set_rx_buf_sz(NETLINK_RCVBUF) {
                                tracing::debug!(target: "ralph::discovery", %error, "netlink receive buffer unchanged");
                            }
                            tokio::spawn(conn);
                            handles.push(handle);
                        }
                        Err(error) if handles.is_empty() => {
                            tracing::warn!(target: "ralph::discovery", %error, "netlink unavailable; neighbour entries will not be deleted");
                            return None;
                        }
                        // Fewer connections only means less parallel releasing.
                        Err(error) => {
                            tracing::debug!(target: "ralph::discovery", %error, opened = handles.len(), "fewer netlink connections");
                            break;
                        }
                    }
                }
                Some(handles)
            })
            .await
            .as_ref()
            .and_then(|h| h.first())
    }

    /// A connection for one release (round-robin), once `netlink()` has opened them.
    fn release_handle(&self) -> Option<&rtnetlink::Handle> {
        let handles = self.inner.netlink.get().and_then(Option::as_ref)?;
        let i = self.inner.next_socket.fetch_add(1, Ordering::Relaxed);
        handles.get(i % handles.len())
    }

    /// Takes room in the table for one more entry of the family when there is some: the live
    /// count (re-read every few ms) plus this process's admitted hosts whose entries it may not
    /// show yet (not sent, or sent lately) stays below the ceiling. The host is counted as not
    /// sent under the same lock, so admissions of concurrent scans cannot all take the last
    /// place. Without the second part, hosts admitted faster than they send (waiting for the
    /// pacer, or on a loaded machine) overshot the ceiling into a table still full of another
    /// process's fresh entries.
    fn take_room(&self, v6: bool) -> bool {
        let i = &self.inner;
        let mut live = i.live.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = std::time::Instant::now();
        if live.read_at.is_none_or(|t| now.duration_since(t) >= RECHECK_EVERY) {
            // Shift the generations before reading: a host that sends after this is counted
            // until the read after next.
            for c in [&i.pending_v4, &i.pending_v6] {
                c.sent_before.store(c.sent_now.swap(0, Ordering::AcqRel), Ordering::Release);
            }
            live.v4 = NeighbourStats::read(false).map_or(0, |s| s.entries);
            live.v6 = NeighbourStats::read(true).map_or(0, |s| s.entries);
            live.read_at = Some(now);
        }
        let c = i.pending(v6);
        let (entries, ceiling) = if v6 { (live.v6, i.ceiling_v6) } else { (live.v4, i.ceiling_v4) };
        let used = entries
            + c.unsent.load(Ordering::Acquire)
            + c.sent_now.load(Ordering::Acquire)
            + c.sent_before.load(Ordering::Acquire);
        if used >= ceiling {
            return false;
        }
        c.unsent.fetch_add(1, Ordering::AcqRel);
        true
    }
}

impl GuardInner {
    fn pending(&self, v6: bool) -> &Pending {
        if v6 { &self.pending_v6 } else { &self.pending_v4 }
    }
}

/// The neighbour guard as one scan uses it: admission, release and the entries it deleted.
#[derive(Debug)]
pub struct NeighbourScope {
    guard: NeighbourGuard,
    /// Entries (interface, address) present before the first on-link host was admitted, of both
    /// families; `None` when the table could not be read, in which case nothing is deleted.
    preexisting: OnceCell<Option<HashSet<(u32, IpAddr)>>>,
    deleted: AtomicU64,
}

impl NeighbourScope {
    /// The guard.
    #[must_use]
    pub fn guard(&self) -> &NeighbourGuard {
        &self.guard
    }

    /// Entries this scope deleted.
    #[must_use]
    pub fn deleted(&self) -> u64 {
        self.deleted.load(Ordering::Relaxed)
    }

    /// Waits for room for `ip` when it is on-link (this process's budget, the host-wide slot,
    /// and the live table below its ceiling); `None` (immediately) otherwise. The host counts
    /// as not sent yet, on top of the live table, until [`NeighbourSlot::sent`] or release.
    pub async fn admit(&self, ip: IpAddr) -> Option<NeighbourSlot> {
        let g = &self.guard;
        let ifindex = g.on_link(ip)?;
        let v6 = ip.is_ipv6();
        if !g.inner.delete && !g.inner.warned.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                target: "ralph::discovery",
                budget = g.budget(v6),
                "on-link targets are paced by the neighbour-table budget; grant CAP_NET_ADMIN so entries are \
                 deleted after use, or raise net.ipv4.neigh.default.gc_thresh3 (and gc_thresh2) to scan faster"
            );
        }
        if let Some(handle) = g.netlink().await {
            // Before the first on-link probe: remember what the table holds, so that no entry the
            // scan did not create is ever deleted.
            self.preexisting
                .get_or_init(|| async {
                    let _turn = g.inner.dump.lock().await;
                    existing_neighbours(handle).await
                })
                .await;
        }
        let sem = if v6 { &g.inner.v6 } else { &g.inner.v4 };
        let permit = Arc::clone(sem).acquire_owned().await.ok()?;
        let host = match g.host_slots(v6) {
            Some(slots) => match slots.acquire().await {
                Ok(slot) => Some(slot),
                Err(error) => {
                    tracing::warn!(target: "ralph::discovery", %error, "host-wide neighbour slot unavailable");
                    None
                }
            },
            None => None,
        };
        // Entries left by others (or not yet collected) count too: the table stays below its
        // ceiling whoever filled it. Also when entries are kept: a process that kept its entries
        // and exited has given its host-wide slots back (the kernel drops a dead process's
        // locks) while its entries still fill the table until the kernel collects them.
        let mut wait = Duration::from_millis(1);
        while !g.take_room(v6) {
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(MAX_ROOM_WAIT);
        }
        // Counted as not sent by take_room; nothing awaits between it and the guard below.
        let unsent = Unsent(Arc::new(UnsentInner { guard: Arc::clone(&g.inner), v6, done: AtomicBool::new(false) }));
        Some(NeighbourSlot { unsent: Some(unsent), permit: Some(permit), host, hold: g.inner.hold, ip, ifindex })
    }

    /// Gives a slot back once all probes of its host are done: deletes the entry (when the scan
    /// created it, it is neither PERMANENT nor NOARP, and deleting is possible) and frees the
    /// slot, or else keeps the slot taken until the kernel may collect the entry.
    pub async fn release(&self, mut slot: NeighbourSlot) {
        let g = &self.guard;
        let preexisting = self.preexisting.get().and_then(Option::as_ref);
        let handle = if g.inner.delete { g.release_handle() } else { None };
        if let (Some(handle), Some(preexisting)) = (handle, preexisting) {
            if preexisting.contains(&(slot.ifindex, slot.ip)) {
                slot.free();
                return;
            }
            let deleted = {
                let _turn = g.inner.netlink_turns.acquire().await;
                tokio::time::timeout(NETLINK_TIMEOUT, delete_created_neighbour(handle, slot.ip, slot.ifindex)).await
            };
            let deleted = deleted.unwrap_or(Err(rtnetlink::Error::RequestFailed));
            match deleted {
                Ok(deleted) => {
                    if deleted {
                        self.deleted.fetch_add(1, Ordering::Relaxed);
                        g.inner.deleted.fetch_add(1, Ordering::Relaxed);
                    }
                    slot.free();
                    return;
                }
                Err(error) => {
                    let n = g.inner.delete_errors.fetch_add(1, Ordering::Relaxed);
                    if n == 0 {
                        tracing::debug!(target: "ralph::discovery", %error, "neighbour delete failed");
                    }
                    // The entry may still be there: hold its slot as if deleting were off.
                }
            }
        }
        slot.free_after_hold();
    }
}

fn neighbour_message(ip: IpAddr, ifindex: u32) -> NeighbourMessage {
    let mut msg = NeighbourMessage::default();
    msg.header.ifindex = ifindex;
    let (family, address) = match ip {
        IpAddr::V4(v4) => (AddressFamily::Inet, NeighbourAddress::Inet(v4)),
        IpAddr::V6(v6) => (AddressFamily::Inet6, NeighbourAddress::Inet6(v6)),
    };
    msg.header.family = family;
    msg.attributes.push(NeighbourAttribute::Destination(address));
    msg
}

fn is_enoent(error: &rtnetlink::Error) -> bool {
    matches!(error, rtnetlink::Error::NetlinkError(e) if e.raw_code() == -libc_enoent())
}

/// Whether an entry in `state` belongs to the administrator (static or no-ARP) and must stay.
fn is_static(state: NeighbourState) -> bool {
    let bits = u16::from(state);
    bits & (u16::from(NeighbourState::Permanent) | u16::from(NeighbourState::Noarp)) != 0
}

/// The state of one entry (`RTM_GETNEIGH` without dump, Linux 5.0+); `None` when there is none.
async fn neighbour_state(
    handle: &rtnetlink::Handle,
    ip: IpAddr,
    ifindex: u32,
) -> Result<Option<NeighbourState>, rtnetlink::Error> {
    use futures::StreamExt;
    use netlink_packet_core::{NLM_F_REQUEST, NetlinkMessage, NetlinkPayload};
    use netlink_packet_route::RouteNetlinkMessage;
    let mut req = NetlinkMessage::from(RouteNetlinkMessage::GetNeighbour(neighbour_message(ip, ifindex)));
    req.header.flags = NLM_F_REQUEST;
    let mut responses = handle.clone().request(req)?;
    let mut state = None;
    while let Some(msg) = responses.next().await {
        match msg.payload {
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewNeighbour(m)) => state = Some(m.header.state),
            NetlinkPayload::Error(e) => {
                let e = rtnetlink::Error::NetlinkError(e);
                return if is_enoent(&e) { Ok(None) } else { Err(e) };
            }
            _ => {}
        }
    }
    Ok(state)
}

/// Deletes the entry unless it is gone already or is PERMANENT/NOARP; `Ok(true)` when deleted.
async fn delete_created_neighbour(
    handle: &rtnetlink::Handle,
    ip: IpAddr,
    ifindex: u32,
) -> Result<bool, rtnetlink::Error> {
    match neighbour_state(handle, ip, ifindex).await? {
        None => return Ok(false),
        Some(state) if is_static(state) => return Ok(false),
        Some(_) => {}
    }
    match handle.neighbours().del(neighbour_message(ip, ifindex)).execute().await {
        Ok(()) => Ok(true),
        // ENOENT: the kernel already dropped it.
        Err(e) if is_enoent(&e) => Ok(false),
        Err(e) => Err(e),
    }
}

const fn libc_enoent() -> i32 {
    2
}

/// Every neighbour entry (interface, address) of both families, from a netlink dump; `None`
/// when the dump fails (then the guard deletes nothing).
async fn existing_neighbours(handle: &rtnetlink::Handle) -> Option<HashSet<(u32, IpAddr)>> {
    let dump = tokio::time::timeout(DUMP_TIMEOUT, handle.neighbours().get().execute().try_collect::<Vec<_>>()).await;
    match dump {
        Err(_) => {
            tracing::warn!(target: "ralph::discovery", "neighbour table dump timed out; no entry will be deleted");
            None
        }
        Ok(Ok(entries)) => Some(
            entries
                .iter()
                .filter_map(|m| {
                    m.attributes.iter().find_map(|a| match a {
                        NeighbourAttribute::Destination(NeighbourAddress::Inet(v4)) => {
                            Some((m.header.ifindex, IpAddr::V4(*v4)))
                        }
                        NeighbourAttribute::Destination(NeighbourAddress::Inet6(v6)) => {
                            Some((m.header.ifindex, IpAddr::V6(*v6)))
                        }
                        _ => None,
                    })
                })
                .collect(),
        ),
        Ok(Err(error)) => {
            tracing::warn!(target: "ralph::discovery", %error, "neighbour table unreadable; no entry will be deleted");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_kernel_state() {
        let l = NeighbourLimits::read(false);
        assert!(l.gc_thresh1 <= l.gc_thresh3 && l.gc_thresh2 <= l.gc_thresh3);
        let s = NeighbourStats::read(false).expect("arp_cache");
        assert!(s.entries < 1 << 32);
    }

    #[test]
    fn budget_leaves_headroom() {
        let l = NeighbourLimits { gc_thresh1: 128, gc_thresh2: 512, gc_thresh3: 1024 };
        let s = NeighbourStats { entries: 100, ..NeighbourStats::default() };
        assert_eq!(budget_for(l, Some(s), None), 1024 - 100 - 128);
        let full = NeighbourStats { entries: 5000, ..NeighbourStats::default() };
        assert_eq!(budget_for(l, Some(full), None), 1);
    }

    #[test]
    fn bad_neighbour_configs_are_typed_errors() {
        let zero = NeighbourConfig { budget: Some(0), ..NeighbourConfig::default() };
        assert!(matches!(NeighbourGuard::new(&zero), Err(Error::Setting { setting: "neighbour.budget", .. })));
        let empty = NeighbourConfig { slot_file: SlotFile::Path("".into()), ..NeighbourConfig::default() };
        assert!(matches!(NeighbourGuard::new(&empty), Err(Error::Setting { setting: "neighbour.slot_file", .. })));
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("f");
        std::fs::write(&file, "").expect("file");
        let unopenable =
            NeighbourConfig { slot_file: SlotFile::Path(file.join("below-a-file")), ..NeighbourConfig::default() };
        assert!(matches!(NeighbourGuard::new(&unopenable), Err(Error::Io { .. })), "an explicit slot file must open");
    }

    #[tokio::test]
    async fn loopback_and_local_addresses_cost_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config =
            NeighbourConfig { slot_file: SlotFile::Path(dir.path().join("slots")), ..NeighbourConfig::default() };
        let g = NeighbourGuard::new(&config).expect("guard");
        assert!(g.on_link("127.0.0.1".parse().expect("ip")).is_none());
        assert!(g.on_link("::1".parse().expect("ip")).is_none());
        for s in local_subnets() {
            assert!(g.on_link(s.local).is_none());
        }
        assert!(g.scope().admit("127.0.0.9".parse().expect("ip")).await.is_none());
        assert_eq!(g.in_use(), 0);
    }
}
