//! The [`Probe`] trait, what a probe reports, and the context that gives probes paced,
//! budgeted, RST-closed sockets.

mod http;
mod icmp;
mod snmp;
mod tcp;
mod tls;

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use backon::{BackoffBuilder as _, ExponentialBuilder, Retryable as _};
use ralph_core::{Secret, SnmpVersion};
use tokio::net::{TcpStream, UdpSocket};

pub use http::{HttpProbe, Scheme, http_family};
pub use icmp::IcmpProbe;
pub use snmp::{IF_PHYS_ADDRESS, SYS_DESCR, SYS_NAME, SYS_OBJECT_ID, SnmpError, SnmpProbe, SnmpSystem};
pub use tcp::TcpConnectProbe;

use crate::budget::{SocketBudget, SocketPermit};
use crate::pacing::{Lane, Pacer};

/// When a probe runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stage {
    /// Decides whether the host is alive (ping, TCP connect); runs for every target.
    Alive,
    /// Gathers facts (HTTP family, SNMP, a host app's Redfish probe); runs for alive hosts.
    Facts,
}

/// SNMP facts read from a host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnmpFacts {
    /// `sysName.0`.
    pub name: Option<String>,
    /// `sysDescr.0`.
    pub description: Option<String>,
    /// The community that answered (redacted in `Debug`).
    pub community: Secret,
    /// The version that answered.
    pub version: SnmpVersion,
}

/// What one probe found at one host.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProbeReport {
    /// `Some(true)`: the host answered; `Some(false)`: it was asked and did not; `None`:
    /// this probe cannot tell (a fact probe, or it failed for local reasons).
    pub alive: Option<bool>,
    /// TCP ports that accepted a connection.
    pub open_ports: Vec<u16>,
    /// TCP ports that answered with a reset (the host is up, the port closed).
    pub closed_ports: Vec<u16>,
    /// HTTP server family mapped from the `Server` header.
    pub http_family: Option<String>,
    /// The raw `Server` header.
    pub http_server: Option<String>,
    /// SNMP facts.
    pub snmp: Option<SnmpFacts>,
    /// Free-form facts from host-app probes.
    pub facts: BTreeMap<String, String>,
    /// Local failures (not the host's answers), for the summary.
    pub errors: Vec<String>,
}

/// A probe: one target in, one report out. Host applications implement their own (a Redfish
/// probe, say) and add it to the [`crate::ScanConfig`]; use the [`ProbeContext`] for sockets
/// so the budget, pacing and RST close apply to them too.
///
/// ```
/// use std::net::IpAddr;
/// use ralph_discovery::{Probe, ProbeContext, ProbeReport, Stage};
///
/// #[derive(Debug)]
/// struct Banner;
///
/// #[async_trait::async_trait]
/// impl Probe for Banner {
///     fn name(&self) -> &str { "banner" }
///     fn stage(&self) -> Stage { Stage::Facts }
///     async fn probe(&self, target: IpAddr, ctx: &ProbeContext) -> ProbeReport {
///         let mut report = ProbeReport::default();
///         if let ralph_discovery::ConnectOutcome::Open(_conn) = ctx.connect((target, 22).into()).await {
///             report.facts.insert("ssh".into(), "open".into());
///         }
///         report
///     }
/// }
/// ```
#[async_trait]
pub trait Probe: Send + Sync + fmt::Debug {
    /// A short stable name for logs and reports.
    fn name(&self) -> &str;
    /// When it runs.
    fn stage(&self) -> Stage;
    /// Probes one host.
    async fn probe(&self, target: IpAddr, ctx: &ProbeContext) -> ProbeReport;
}

/// Opens TCP connections. The seam exists so a test can inject rare kernel errors (ENOBUFS)
/// into the real retry path; [`SystemConnector`] is the real thing.
#[async_trait]
pub trait Connector: Send + Sync + fmt::Debug {
    /// Connects to `addr`. The returned stream must have `SO_LINGER` 0.
    async fn connect(&self, addr: SocketAddr) -> io::Result<TcpStream>;
}

/// Plain non-blocking connect with `SO_LINGER` 0 set before a connected socket can be
/// dropped, so it is reset, never left in TIME_WAIT.
///
/// Sockets whose connect was refused are kept (a few per address family) and reused for the
/// next attempt: Linux returns a TCP socket to the unconnected state after a failed connect,
/// so a port sweep makes two `connect` calls per closed port instead of four system calls.
#[derive(Debug, Default)]
pub struct SystemConnector {
    spare_v4: std::sync::Mutex<Vec<socket2::Socket>>,
    spare_v6: std::sync::Mutex<Vec<socket2::Socket>>,
}

/// Refused sockets kept for reuse per family (idle descriptors outside the budget: keep few).
const SPARE_SOCKETS: usize = 8;

impl SystemConnector {
    fn spares(&self, addr: SocketAddr) -> &std::sync::Mutex<Vec<socket2::Socket>> {
        if addr.is_ipv4() { &self.spare_v4 } else { &self.spare_v6 }
    }

    fn take(&self, addr: SocketAddr) -> io::Result<socket2::Socket> {
        use socket2::{Domain, Protocol, Socket, Type};
        if let Some(s) = self.spares(addr).lock().ok().and_then(|mut v| v.pop()) {
            return Ok(s);
        }
        // Non-blocking from the start (SOCK_NONBLOCK): no fcntl round trips per probe.
        Socket::new(Domain::for_address(addr), Type::STREAM.nonblocking(), Some(Protocol::TCP))
    }

    fn give_back(&self, addr: SocketAddr, socket: socket2::Socket) {
        if let Ok(mut v) = self.spares(addr).lock()
            && v.len() < SPARE_SOCKETS
        {
            v.push(socket);
        }
    }
}

#[async_trait]
impl Connector for SystemConnector {
    async fn connect(&self, addr: SocketAddr) -> io::Result<TcpStream> {
        let socket = self.take(addr)?;
        let target = addr.into();
        match socket.connect(&target) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(nix::libc::EINPROGRESS) => {
                // Same-host peers (loopback, a local namespace) answer inside the first call;
                // asking again returns the outcome without registering with the reactor.
                match socket.connect(&target) {
                    Ok(()) => {}
                    Err(e) if e.raw_os_error() == Some(nix::libc::EISCONN) => {}
                    Err(e) if e.raw_os_error() == Some(nix::libc::EALREADY) => {
                        // Still in flight: wait for it with the reactor.
                        socket.set_linger(Some(std::time::Duration::ZERO))?;
                        let stream = TcpStream::from_std(socket.into())?;
                        stream.writable().await?;
                        if let Some(e) = stream.take_error()? {
                            return Err(e);
                        }
                        stream.peer_addr()?;
                        return Ok(stream);
                    }
                    Err(e) => {
                        // The failed socket is unconnected again: keep it for the next probe.
                        if e.raw_os_error() == Some(nix::libc::ECONNREFUSED) {
                            self.give_back(addr, socket);
                        }
                        return Err(e);
                    }
                }
            }
            Err(e) => return Err(e),
        }
        // Connected. SO_LINGER 0 before it can be dropped: closing resets, no TIME_WAIT.
        socket.set_linger(Some(std::time::Duration::ZERO))?;
        TcpStream::from_std(socket.into())
    }
}

/// How a connection attempt ended.
#[derive(Debug)]
pub enum ConnectOutcome {
    /// Connected; dropping it resets the connection and frees its budget.
    Open(Connection),
    /// The host answered with a reset: up, port closed.
    Refused,
    /// No answer within the timeout, after the retries.
    Timeout,
    /// The kernel reports the host or network unreachable (ARP failed, ICMP unreachable).
    Unreachable,
    /// A local failure that retries did not cure.
    Failed(io::Error),
}

/// An open probe connection holding one unit of the socket budget.
#[derive(Debug)]
pub struct Connection {
    /// The stream (`SO_LINGER` 0).
    pub stream: TcpStream,
    _permit: SocketPermit,
}

impl Connection {
    /// The blocking std stream (for libraries with a blocking API, run on a blocking thread)
    /// and the budget unit to keep alive as long as the stream.
    ///
    /// # Errors
    /// Deregistering from the reactor or switching to blocking mode failed.
    pub fn into_std(self) -> io::Result<(std::net::TcpStream, SocketPermit)> {
        let std = self.stream.into_std()?;
        std.set_nonblocking(false)?;
        Ok((std, self._permit))
    }
}

/// Counters shared by every probe of a scan.
#[derive(Debug, Default)]
pub struct ProbeCounters {
    /// Connection attempts started.
    pub attempts: AtomicU64,
    /// Attempts that timed out.
    pub timeouts: AtomicU64,
    /// ENOBUFS/EAGAIN/EADDRNOTAVAIL seen (each retried).
    pub congestion_errors: AtomicU64,
    /// EMFILE/ENFILE seen (each requeued after shrinking the budget).
    pub fd_errors: AtomicU64,
}

/// Per-probe timeouts and retry policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeTimeouts {
    /// TCP connect timeout per attempt.
    pub connect: Duration,
    /// Retries after a timeout.
    pub retries: u32,
    /// Reading an HTTP response or an SNMP answer.
    pub read: Duration,
    /// Retries of a transient local error (ENOBUFS, EAGAIN) before giving up on the probe.
    pub transient_retries: u32,
    /// First back-off after a transient error; doubles, jittered.
    pub backoff: Duration,
}

impl ProbeTimeouts {
    /// Checks the ranges: the connect and read timeouts must be non-zero (a zero timeout would
    /// call every host down without asking it).
    ///
    /// # Errors
    /// [`crate::Error::Setting`] naming the bad value.
    pub fn validate(&self) -> crate::Result<()> {
        if self.connect.is_zero() {
            return Err(crate::Error::setting("timeouts.connect", self.connect, "must be above zero"));
        }
        if self.read.is_zero() {
            return Err(crate::Error::setting("timeouts.read", self.read, "must be above zero"));
        }
        Ok(())
    }
}

impl Default for ProbeTimeouts {
    fn default() -> Self {
        Self {
            connect: Duration::from_millis(1500),
            retries: 1,
            read: Duration::from_secs(2),
            transient_retries: 30,
            backoff: Duration::from_millis(5),
        }
    }
}

/// What probes get from the engine: sockets within the budget, at the paced rate, closed
/// with RST, with EMFILE/ENOBUFS handled.
#[derive(Debug, Clone)]
pub struct ProbeContext {
    pub(crate) budget: SocketBudget,
    pub(crate) pacer: Arc<Pacer>,
    /// This scan's lane in the (possibly shared) pacer.
    pub(crate) lane: Arc<Lane>,
    pub(crate) connector: Arc<dyn Connector>,
    pub(crate) counters: Arc<ProbeCounters>,
    /// Timeouts and retries.
    pub timeouts: ProbeTimeouts,
    /// Whether loopback targets are paced too (they cross no wire: by default they are not).
    pub pace_loopback: bool,
}

enum Classified {
    Refused,
    Unreachable,
    Fd,
    Congestion,
    Other,
}

fn classify(e: &io::Error) -> Classified {
    match e.raw_os_error() {
        Some(nix::libc::ECONNREFUSED) => Classified::Refused,
        Some(nix::libc::EHOSTUNREACH | nix::libc::ENETUNREACH | nix::libc::EHOSTDOWN) => Classified::Unreachable,
        Some(nix::libc::EMFILE | nix::libc::ENFILE) => Classified::Fd,
        Some(nix::libc::ENOBUFS | nix::libc::EAGAIN | nix::libc::EADDRNOTAVAIL | nix::libc::ENOMEM) => {
            Classified::Congestion
        }
        _ if e.kind() == io::ErrorKind::ConnectionRefused => Classified::Refused,
        _ => Classified::Other,
    }
}

/// After this many EMFILE requeues of one probe (the process is out of descriptors for
/// reasons outside the scan), it is reported as failed rather than retried forever.
const MAX_FD_REQUEUES: usize = 10_000;

/// A jittered exponential back-off from `first`, doubling up to `cap`, for `times` retries.
/// backon's jitter adds up to one more delay on top, so the schedule starts from 2/3 of the
/// nominal delays: each wait is in [2/3, 4/3) of `first * 2^n` (capped), with that as its mean.
fn backoff(first: Duration, cap: Duration, times: usize) -> ExponentialBuilder {
    ExponentialBuilder::new()
        .with_min_delay(first * 2 / 3)
        .with_max_delay(cap * 2 / 3)
        .with_factor(2.0)
        .with_jitter()
        .with_max_times(times)
}

/// Waits between EMFILE/ENFILE requeues: from twice the configured back-off, up to 200 ms.
fn fd_backoff(timeouts: &ProbeTimeouts) -> ExponentialBuilder {
    backoff(timeouts.backoff * 2, Duration::from_millis(200), MAX_FD_REQUEUES)
}

impl ProbeContext {
    /// A context with its own budget and pacer, for running probes outside a scan.
    #[must_use]
    pub fn standalone(budget: usize) -> Self {
        Self {
            budget: SocketBudget::new(budget),
            pacer: Arc::new(Pacer::from_valid(crate::RateConfig::default())),
            lane: Arc::default(),
            connector: Arc::new(SystemConnector::default()),
            counters: Arc::new(ProbeCounters::default()),
            timeouts: ProbeTimeouts::default(),
            pace_loopback: false,
        }
    }

    /// The socket budget.
    #[must_use]
    pub fn budget(&self) -> &SocketBudget {
        &self.budget
    }

    /// The pacer.
    #[must_use]
    pub fn pacer(&self) -> &Pacer {
        &self.pacer
    }

    /// Connects to `addr` within the budget and rate, retrying timeouts per
    /// [`ProbeTimeouts::retries`], backing off on ENOBUFS/EAGAIN (which also halves the rate)
    /// and shrinking the budget and requeueing on EMFILE/ENFILE.
    pub async fn connect(&self, addr: SocketAddr) -> ConnectOutcome {
        // A hand-written loop over backon's schedules, not `Retryable`: each attempt re-enters the
        // budget and the pacer, and timeouts, EMFILE and ENOBUFS each have their own retry budget.
        let mut timeouts = 0u32;
        let mut fd_delays = fd_backoff(&self.timeouts).build();
        let mut congestion_delays = backoff(
            self.timeouts.backoff,
            Duration::from_secs(1),
            usize::try_from(self.timeouts.transient_retries).unwrap_or(usize::MAX),
        )
        .build();
        loop {
            let permit = self.budget.acquire().await;
            if self.pace_loopback || !addr.ip().is_loopback() {
                self.pacer.ready_in(&self.lane).await;
                crate::neighbour::sending();
            }
            self.counters.attempts.fetch_add(1, Ordering::Relaxed);
            let result = tokio::time::timeout(self.timeouts.connect, self.connector.connect(addr)).await;
            if !matches!(&result, Ok(Err(e)) if matches!(classify(e), Classified::Fd)) {
                self.budget.opened();
            }
            let error = match result {
                Ok(Ok(stream)) => {
                    // Belt and braces for host-app connectors: RST on close, always.
                    if let Err(error) = stream.set_zero_linger() {
                        tracing::warn!(target: "ralph::discovery", %error, "SO_LINGER 0 failed");
                    }
                    return ConnectOutcome::Open(Connection { stream, _permit: permit });
                }
                Ok(Err(e)) => e,
                Err(_) => {
                    self.counters.timeouts.fetch_add(1, Ordering::Relaxed);
                    timeouts += 1;
                    if timeouts > self.timeouts.retries {
                        return ConnectOutcome::Timeout;
                    }
                    continue;
                }
            };
            drop(permit);
            match classify(&error) {
                Classified::Refused => return ConnectOutcome::Refused,
                Classified::Unreachable => return ConnectOutcome::Unreachable,
                Classified::Fd => {
                    self.counters.fd_errors.fetch_add(1, Ordering::Relaxed);
                    self.budget.shrink();
                    let Some(delay) = fd_delays.next() else { return ConnectOutcome::Failed(error) };
                    tokio::time::sleep(delay).await;
                }
                Classified::Congestion => {
                    self.counters.congestion_errors.fetch_add(1, Ordering::Relaxed);
                    self.pacer.congestion("ENOBUFS/EAGAIN on connect");
                    let Some(delay) = congestion_delays.next() else { return ConnectOutcome::Failed(error) };
                    tokio::time::sleep(delay).await;
                }
                Classified::Other => return ConnectOutcome::Failed(error),
            }
        }
    }

    /// A UDP socket connected to `addr` with `IP_RECVERR`/`IPV6_RECVERR` set (so ICMP
    /// errors and dropped sends surface as errors), holding one unit of the budget.
    /// EMFILE shrinks the budget and retries.
    ///
    /// # Errors
    /// Socket errors other than EMFILE/ENFILE.
    pub async fn udp(&self, addr: SocketAddr) -> io::Result<(UdpSocket, SocketPermit)> {
        self.open_socket(true, || open_udp(addr)).await
    }

    /// Opens a socket with `open` holding one unit of the budget (returned with it), after
    /// the pacer when `pace`. EMFILE/ENFILE shrink the budget and requeue, as for connects.
    pub(crate) async fn open_socket<T>(
        &self,
        pace: bool,
        open: impl Fn() -> io::Result<T>,
    ) -> io::Result<(T, SocketPermit)> {
        let attempt = || async {
            let permit = self.budget.acquire().await;
            if pace {
                self.pacer.ready_in(&self.lane).await;
                crate::neighbour::sending();
            }
            match open() {
                Ok(sock) => {
                    self.budget.opened();
                    Ok((sock, permit))
                }
                Err(e) => {
                    if matches!(classify(&e), Classified::Fd) {
                        self.counters.fd_errors.fetch_add(1, Ordering::Relaxed);
                        // While the permit is still held, as `shrink` expects.
                        self.budget.shrink();
                    }
                    Err(e)
                }
            }
        };
        attempt.retry(fd_backoff(&self.timeouts)).when(|e| matches!(classify(e), Classified::Fd)).await
    }

    /// Records a congestion signal seen by a probe (ENOBUFS on a send, say).
    pub fn congestion(&self, reason: &'static str) {
        self.counters.congestion_errors.fetch_add(1, Ordering::Relaxed);
        self.pacer.congestion(reason);
    }
}

fn open_udp(addr: SocketAddr) -> io::Result<UdpSocket> {
    use nix::sys::socket::{setsockopt, sockopt};
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM.nonblocking(), Some(Protocol::UDP))?;
    if addr.is_ipv4() {
        setsockopt(&socket, sockopt::Ipv4RecvErr, &true).map_err(io::Error::from)?;
    } else {
        setsockopt(&socket, sockopt::Ipv6RecvErr, &true).map_err(io::Error::from)?;
    }
    socket.connect(&addr.into())?;
    UdpSocket::from_std(socket.into())
}

/// True for the errors that mean "the local side is congested".
pub(crate) fn is_congestion(e: &io::Error) -> bool {
    matches!(classify(e), Classified::Congestion)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_is_jittered_around_the_nominal_and_capped() {
        let (first, cap) = (Duration::from_millis(6), Duration::from_millis(600));
        let delays: Vec<Duration> = backoff(first, cap, 20).build().collect();
        assert_eq!(delays.len(), 20, "as many waits as retries, then give up");
        for (n, d) in delays.iter().enumerate() {
            let nominal = first.saturating_mul(1u32 << n.min(16)).min(cap);
            assert!(*d >= nominal / 2 && *d <= nominal * 3 / 2, "wait {n}: {d:?} vs nominal {nominal:?}");
        }
    }
}
