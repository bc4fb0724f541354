//! # ralph-discovery
//!
//! The network discovery engine of ralph-rs: it sweeps addresses, networks and whole network
//! environments with TCP connect, ICMP echo, HTTP family and SNMP v2c probes (plus any
//! [`Probe`] a host application adds), fast and safe on a default Linux kernel:
//!
//! - one [`ScanResources`] per process (socket budget, pacer, neighbour budget) shared by every
//!   scan, and a host-wide neighbour budget shared by every process on the machine;
//! - a socket budget below the soft `RLIMIT_NOFILE` that shrinks on EMFILE and requeues;
//! - every probe socket closed with `SO_LINGER` 0, so no TIME_WAIT piles up;
//! - on-link targets admitted within the kernel's neighbour-table budget, host-major, with
//!   the created ARP entries deleted via netlink when the process has CAP_NET_ADMIN;
//! - AIMD rate control on ENOBUFS/EAGAIN, rising drop counters and timeout spikes;
//! - a host app's probe that panics is reported as that target's error, and releases
//!   everything it held; bad settings are typed errors ([`Error::Setting`]), never panics;
//! - results recorded in batches through [`ralph_core::ScanResultStore`] with Ralph's
//!   autoscan rules, and jobs taken from [`ralph_core::JobQueue`] by a [`Worker`].
//!
//! ```no_run
//! use ralph_discovery::{ScanConfig, Scanner, Targets};
//!
//! # async fn demo() -> Result<(), ralph_discovery::Error> {
//! let targets = Targets::parse("10.20.0.0/24")?.exclude("10.20.0.1")?;
//! let scanner = Scanner::new(ScanConfig::default().ports(vec![22, 80, 443]))?;
//! let (hosts, summary) = scanner.scan(targets.addresses()).await?;
//! for host in hosts.iter().filter(|h| h.state == ralph_discovery::HostState::Up) {
//!     println!("{} {:?} {:?}", host.address, host.open_ports, host.http_family);
//! }
//! println!("{} up of {}", summary.up, summary.hosts);
//! # Ok(()) }
//! ```
//!
//! Tracing events use the target `ralph::discovery`; the crate never installs a subscriber.

pub mod budget;
mod engine;
mod error;
pub mod neighbour;
pub mod pacing;
mod persist;
mod probe;
mod resources;
pub mod slots;
mod target;
mod worker;

pub use budget::{SocketBudget, SocketPermit};
pub use engine::{HostResult, HostState, Progress, ScanConfig, ScanHandle, ScanSummary, Scanner, parse_ports};
pub use error::{Error, Result};
pub use neighbour::{NeighbourConfig, NeighbourGuard, NeighbourScope, NeighbourSlot, SlotFile};
pub use pacing::{Pacer, RateConfig};
pub use persist::{BatchRecorder, DEFAULT_BATCH};
pub use probe::{
    ConnectOutcome, Connection, Connector, HttpProbe, IF_PHYS_ADDRESS, IcmpProbe, Probe, ProbeContext, ProbeCounters,
    ProbeReport, ProbeTimeouts, SYS_DESCR, SYS_NAME, SYS_OBJECT_ID, Scheme, SnmpError, SnmpFacts, SnmpProbe,
    SnmpSystem, Stage, SystemConnector, TcpConnectProbe, http_family,
};
pub use resources::ScanResources;
pub use target::{Addresses, DEFAULT_MAX_ADDRESSES, Targets, dedup_addresses};
/// The token [`Worker::run`] drains and stops on (re-exported from `tokio-util`).
pub use tokio_util::sync::CancellationToken;
pub use worker::{
    ScanJob, Worker, WorkerConfig, WorkerStats, enqueue_addresses, enqueue_environment, enqueue_network,
    enqueue_targets,
};
