//! Neighbour-table safety: admit on-link hosts within what the kernel's ARP/NDP table can hold,
//! and delete the entries the scan created once their hosts are done (with CAP_NET_ADMIN).

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use futures::TryStreamExt;
use ipnetwork::IpNetwork;
use netlink_packet_route::AddressFamily;
use netlink_packet_route::neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState};
use tokio::sync::{OnceCell, OwnedSemaphorePermit, Semaphore};

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

/// Decides which targets are on-link and paces them through the neighbour table.
#[derive(Debug)]
pub struct NeighbourGuard {
    subnets: Vec<LocalSubnet>,
    v4: Arc<Semaphore>,
    v6: Arc<Semaphore>,
    budget_v4: usize,
    budget_v6: usize,
    hold: Duration,
    netlink: Option<rtnetlink::Handle>,
    /// Entries (interface, address) present before the first on-link host was admitted, of both
    /// families; `None` when the table could not be read, in which case nothing is deleted.
    preexisting: OnceCell<Option<HashSet<(u32, IpAddr)>>>,
    warned: AtomicBool,
    deleted: AtomicU64,
    delete_errors: AtomicU64,
}

/// Settings of the neighbour guard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
}

impl Default for NeighbourConfig {
    fn default() -> Self {
        Self { reserve: None, budget: None, delete_entries: true, hold: None }
    }
}

/// A host's place in the neighbour table; give it back with [`NeighbourGuard::release`].
#[derive(Debug)]
pub struct NeighbourSlot {
    permit: OwnedSemaphorePermit,
    ip: IpAddr,
    ifindex: u32,
}

fn budget_for(limits: NeighbourLimits, stats: Option<NeighbourStats>, reserve: Option<u64>) -> usize {
    let reserve = reserve.unwrap_or_else(|| (limits.gc_thresh3 / 8).max(32));
    let used = stats.map_or(0, |s| s.entries);
    let free = limits.gc_thresh3.saturating_sub(used).saturating_sub(reserve).max(1);
    usize::try_from(free).unwrap_or(usize::MAX)
}

impl NeighbourGuard {
    /// Reads the local subnets, thresholds and entry counts; opens a netlink socket when
    /// entries can be deleted. Call inside a tokio runtime.
    #[must_use]
    pub fn new(config: NeighbourConfig) -> Self {
        let budget_v4 = config
            .budget
            .unwrap_or_else(|| budget_for(NeighbourLimits::read(false), NeighbourStats::read(false), config.reserve));
        let budget_v6 = config
            .budget
            .unwrap_or_else(|| budget_for(NeighbourLimits::read(true), NeighbourStats::read(true), config.reserve));
        let netlink = if config.delete_entries && has_net_admin() {
            match rtnetlink::new_connection() {
                Ok((conn, handle, _)) => {
                    tokio::spawn(conn);
                    Some(handle)
                }
                Err(error) => {
                    tracing::warn!(target: "ralph::discovery", %error, "netlink unavailable; neighbour entries will not be deleted");
                    None
                }
            }
        } else {
            None
        };
        tracing::debug!(target: "ralph::discovery", budget_v4, budget_v6, delete = netlink.is_some(), "neighbour guard");
        Self {
            subnets: local_subnets(),
            v4: Arc::new(Semaphore::new(budget_v4)),
            v6: Arc::new(Semaphore::new(budget_v6)),
            budget_v4,
            budget_v6,
            hold: config.hold.unwrap_or_else(default_hold),
            netlink,
            preexisting: OnceCell::new(),
            warned: AtomicBool::new(false),
            deleted: AtomicU64::new(0),
            delete_errors: AtomicU64::new(0),
        }
    }

    /// The interface through which `ip` is on-link, or `None` for loopback, local and
    /// routed (off-link) addresses, which cost no neighbour entry.
    #[must_use]
    pub fn on_link(&self, ip: IpAddr) -> Option<u32> {
        if ip.is_loopback() {
            return None;
        }
        if self.subnets.iter().any(|s| s.local == ip) {
            return None;
        }
        self.subnets.iter().filter(|s| s.network.contains(ip)).max_by_key(|s| s.network.prefix()).map(|s| s.ifindex)
    }

    /// The budget of concurrently held on-link hosts for the family of `ip`.
    #[must_use]
    pub fn budget(&self, v6: bool) -> usize {
        if v6 { self.budget_v6 } else { self.budget_v4 }
    }

    /// On-link hosts admitted now (IPv4 + IPv6).
    #[must_use]
    pub fn in_use(&self) -> usize {
        (self.budget_v4 - self.v4.available_permits()) + (self.budget_v6 - self.v6.available_permits())
    }

    /// Whether entries are deleted after use (CAP_NET_ADMIN and netlink available).
    #[must_use]
    pub fn deletes_entries(&self) -> bool {
        self.netlink.is_some()
    }

    /// Entries deleted so far.
    #[must_use]
    pub fn deleted(&self) -> u64 {
        self.deleted.load(Ordering::Relaxed)
    }

    /// Waits for room for `ip` when it is on-link; `None` (immediately) otherwise.
    pub async fn admit(&self, ip: IpAddr) -> Option<NeighbourSlot> {
        let ifindex = self.on_link(ip)?;
        if self.netlink.is_none() && !self.warned.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                target: "ralph::discovery",
                budget = self.budget(ip.is_ipv6()),
                "on-link targets are paced by the neighbour-table budget; grant CAP_NET_ADMIN so entries are \
                 deleted after use, or raise net.ipv4.neigh.default.gc_thresh3 (and gc_thresh2) to scan faster"
            );
        }
        if let Some(handle) = &self.netlink {
            // Before the first on-link probe: remember what the table holds, so that no entry the
            // scan did not create is ever deleted.
            self.preexisting.get_or_init(|| existing_neighbours(handle)).await;
        }
        let sem = if ip.is_ipv6() { &self.v6 } else { &self.v4 };
        let permit = Arc::clone(sem).acquire_owned().await.ok()?;
        Some(NeighbourSlot { permit, ip, ifindex })
    }

    /// Gives a slot back once all probes of its host are done: deletes the entry (when the scan
    /// created it, it is neither PERMANENT nor NOARP, and deleting is possible) and frees the
    /// slot, or else keeps the slot taken until the kernel may collect the entry.
    pub async fn release(&self, slot: NeighbourSlot) {
        let preexisting = self.preexisting.get().and_then(Option::as_ref);
        if let (Some(handle), Some(preexisting)) = (&self.netlink, preexisting) {
            if preexisting.contains(&(slot.ifindex, slot.ip)) {
                drop(slot.permit);
                return;
            }
            match delete_created_neighbour(handle, slot.ip, slot.ifindex).await {
                Ok(deleted) => {
                    if deleted {
                        self.deleted.fetch_add(1, Ordering::Relaxed);
                    }
                    drop(slot.permit);
                    return;
                }
                Err(error) => {
                    let n = self.delete_errors.fetch_add(1, Ordering::Relaxed);
                    if n == 0 {
                        tracing::debug!(target: "ralph::discovery", %error, "neighbour delete failed");
                    }
                    // The entry may still be there: hold its slot as if deleting were off.
                }
            }
        }
        let hold = self.hold;
        tokio::spawn(async move {
            tokio::time::sleep(hold).await;
            drop(slot.permit);
        });
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
    let dump = handle.neighbours().get().execute().try_collect::<Vec<_>>().await;
    match dump {
        Ok(entries) => Some(
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
        Err(error) => {
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

    #[tokio::test]
    async fn loopback_and_local_addresses_cost_nothing() {
        let g = NeighbourGuard::new(NeighbourConfig::default());
        assert!(g.on_link("127.0.0.1".parse().expect("ip")).is_none());
        assert!(g.on_link("::1".parse().expect("ip")).is_none());
        for s in local_subnets() {
            assert!(g.on_link(s.local).is_none());
        }
        assert!(g.admit("127.0.0.9".parse().expect("ip")).await.is_none());
    }
}
