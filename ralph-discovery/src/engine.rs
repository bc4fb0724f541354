//! The scan engine: expands targets host-major through the neighbour guard, runs the probes
//! within the socket budget at the AIMD rate, and streams results and progress.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use ralph_core::{Observation, Secret};
use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use futures::FutureExt as _;

use crate::budget::DEFAULT_FD_RESERVE;
use crate::neighbour::{NeighbourConfig, NeighbourScope, NeighbourStats};
use crate::pacing::RateConfig;
use crate::probe::{
    Connector, HttpProbe, IcmpProbe, Probe, ProbeContext, ProbeCounters, ProbeReport, ProbeTimeouts, SnmpFacts,
    SnmpProbe, Stage, SystemConnector, TcpConnectProbe,
};
use crate::resources::ScanResources;
use crate::{Error, Result};

/// Parses a port list such as `22,80,8000-8010`.
///
/// # Errors
/// [`Error::Ports`] for anything else, port 0 included.
pub fn parse_ports(input: &str) -> Result<Vec<u16>> {
    let bad = || Error::Ports { input: input.to_owned() };
    let mut ports = Vec::new();
    for item in input.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (a, b) = item.split_once('-').unwrap_or((item, item));
        let a: u16 = a.trim().parse().map_err(|_| bad())?;
        let b: u16 = b.trim().parse().map_err(|_| bad())?;
        if a == 0 || a > b {
            return Err(bad());
        }
        ports.extend(a..=b);
    }
    ports.sort_unstable();
    ports.dedup();
    if ports.is_empty() {
        return Err(bad());
    }
    Ok(ports)
}

/// How a scan runs. Build it by value: `ScanConfig::default().ports(vec![80]).icmp(false)`.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ScanConfig {
    /// TCP ports whose answer (accept or reset) proves a host up.
    pub ports: Vec<u16>,
    /// Whether to ping (ICMP echo).
    pub icmp: bool,
    /// TCP ports the ICMP probe connects to when the process may open no ICMP socket. Empty by
    /// default: then only [`ScanConfig::ports`] decide, and no port is probed that was not
    /// asked for.
    pub icmp_fallback_ports: Vec<u16>,
    /// The HTTP family probe for alive hosts.
    pub http: Option<HttpProbe>,
    /// The SNMP probe for alive hosts.
    pub snmp: Option<SnmpProbe>,
    /// Host-app probes.
    pub extra_probes: Vec<Arc<dyn Probe>>,
    /// Sockets wanted; capped at the soft `RLIMIT_NOFILE` minus `fd_reserve`.
    pub max_sockets: usize,
    /// Descriptors left for the rest of the process.
    pub fd_reserve: usize,
    /// AIMD rate control.
    pub rate: RateConfig,
    /// Timeouts and retries.
    pub timeouts: ProbeTimeouts,
    /// Neighbour-table pacing.
    pub neighbour: NeighbourConfig,
    /// How connections are opened (the real kernel unless a test injects errors).
    pub connector: Arc<dyn Connector>,
    /// How often progress is published.
    pub progress_interval: Duration,
    /// Pace loopback targets too (they cross no wire, so by default only the socket budget
    /// bounds them).
    pub pace_loopback: bool,
}

impl Default for ScanConfig {
    fn default() -> Self {
        Self {
            ports: vec![22, 80, 443],
            icmp: true,
            icmp_fallback_ports: Vec::new(),
            http: Some(HttpProbe::default()),
            snmp: None,
            extra_probes: Vec::new(),
            max_sockets: 4096,
            fd_reserve: DEFAULT_FD_RESERVE,
            rate: RateConfig::default(),
            timeouts: ProbeTimeouts::default(),
            neighbour: NeighbourConfig::default(),
            connector: Arc::new(SystemConnector::default()),
            progress_interval: Duration::from_millis(100),
            pace_loopback: false,
        }
    }
}

impl ScanConfig {
    /// Sets the alive-check TCP ports.
    #[must_use]
    pub fn ports(mut self, ports: Vec<u16>) -> Self {
        self.ports = ports;
        self
    }
    /// Turns ICMP echo on or off.
    #[must_use]
    pub fn icmp(mut self, on: bool) -> Self {
        self.icmp = on;
        self
    }
    /// Sets the ports the ICMP probe falls back to without ICMP permission (default none).
    #[must_use]
    pub fn icmp_fallback_ports(mut self, ports: Vec<u16>) -> Self {
        self.icmp_fallback_ports = ports;
        self
    }
    /// Sets (or with `None` disables) the HTTP family probe.
    #[must_use]
    pub fn http(mut self, probe: Option<HttpProbe>) -> Self {
        self.http = probe;
        self
    }
    /// Enables SNMP with these communities (port 161).
    #[must_use]
    pub fn snmp(mut self, probe: Option<SnmpProbe>) -> Self {
        self.snmp = probe;
        self
    }
    /// Adds a host-app probe.
    #[must_use]
    pub fn probe(mut self, probe: Arc<dyn Probe>) -> Self {
        self.extra_probes.push(probe);
        self
    }
    /// Sets the wanted socket budget.
    #[must_use]
    pub fn max_sockets(mut self, n: usize) -> Self {
        self.max_sockets = n;
        self
    }
    /// Sets the rate control.
    #[must_use]
    pub fn rate(mut self, rate: RateConfig) -> Self {
        self.rate = rate;
        self
    }
    /// Sets timeouts and retries.
    #[must_use]
    pub fn timeouts(mut self, timeouts: ProbeTimeouts) -> Self {
        self.timeouts = timeouts;
        self
    }
    /// Sets the neighbour-table pacing.
    #[must_use]
    pub fn neighbour(mut self, neighbour: NeighbourConfig) -> Self {
        self.neighbour = neighbour;
        self
    }
    /// Paces loopback targets too.
    #[must_use]
    pub fn pace_loopback(mut self, on: bool) -> Self {
        self.pace_loopback = on;
        self
    }
    /// Sets the descriptors left for the rest of the process.
    #[must_use]
    pub fn fd_reserve(mut self, n: usize) -> Self {
        self.fd_reserve = n;
        self
    }
    /// Sets how often progress is published.
    #[must_use]
    pub fn progress_interval(mut self, interval: Duration) -> Self {
        self.progress_interval = interval;
        self
    }
    /// Replaces the connector (tests inject kernel errors with it).
    #[must_use]
    pub fn connector(mut self, connector: Arc<dyn Connector>) -> Self {
        self.connector = connector;
        self
    }

    /// Checks every setting: no port 0, at least one socket, and the rate, timeouts and
    /// neighbour settings ([`RateConfig::validate`], [`ProbeTimeouts::validate`],
    /// [`NeighbourConfig::validate`]).
    ///
    /// # Errors
    /// [`Error::Setting`] naming the first bad value.
    pub fn validate(&self) -> Result<()> {
        if self.ports.contains(&0) {
            return Err(Error::setting("ports", &self.ports, "port 0 cannot be probed"));
        }
        if self.icmp_fallback_ports.contains(&0) {
            return Err(Error::setting("icmp_fallback_ports", &self.icmp_fallback_ports, "port 0 cannot be probed"));
        }
        if self.max_sockets == 0 {
            return Err(Error::setting("max_sockets", 0, "must be at least 1"));
        }
        self.rate.validate()?;
        self.timeouts.validate()?;
        self.neighbour.validate()
    }

    fn probes(&self) -> Vec<Arc<dyn Probe>> {
        let mut probes: Vec<Arc<dyn Probe>> = Vec::new();
        if !self.ports.is_empty() {
            probes.push(Arc::new(TcpConnectProbe::new(self.ports.clone())));
        }
        if self.icmp {
            probes.push(Arc::new(IcmpProbe::default().with_fallback_ports(self.icmp_fallback_ports.clone())));
        }
        if let Some(http) = &self.http {
            probes.push(Arc::new(http.clone()));
        }
        if let Some(snmp) = &self.snmp {
            probes.push(Arc::new(snmp.clone()));
        }
        probes.extend(self.extra_probes.iter().cloned());
        probes
    }
}

/// Whether a host answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HostState {
    /// It answered a probe.
    Up,
    /// It was asked and did not answer.
    Down,
    /// Local errors kept the scan from telling.
    Unknown,
}

/// Everything a scan found about one host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HostResult {
    /// The address.
    pub address: IpAddr,
    /// Up, down or unknown.
    pub state: HostState,
    /// When its probes finished.
    pub seen_at: DateTime<Utc>,
    /// Open TCP ports.
    pub open_ports: Vec<u16>,
    /// Closed (reset) TCP ports.
    pub closed_ports: Vec<u16>,
    /// HTTP family.
    pub http_family: Option<String>,
    /// Raw `Server` header.
    pub http_server: Option<String>,
    /// SNMP `sysName`.
    pub snmp_name: Option<String>,
    /// SNMP `sysDescr`.
    pub snmp_description: Option<String>,
    /// The community that answered; never serialized.
    #[serde(skip)]
    pub snmp_community: Option<Secret>,
    /// Facts from host-app probes.
    pub facts: BTreeMap<String, String>,
    /// Local errors.
    pub errors: Vec<String>,
}

impl HostResult {
    fn new(address: IpAddr) -> Self {
        Self {
            address,
            state: HostState::Unknown,
            seen_at: Utc::now(),
            open_ports: Vec::new(),
            closed_ports: Vec::new(),
            http_family: None,
            http_server: None,
            snmp_name: None,
            snmp_description: None,
            snmp_community: None,
            facts: BTreeMap::new(),
            errors: Vec::new(),
        }
    }

    fn merge(&mut self, report: ProbeReport) {
        self.open_ports.extend(report.open_ports);
        self.closed_ports.extend(report.closed_ports);
        if report.http_family.is_some() {
            self.http_family = report.http_family;
            self.http_server = report.http_server;
        }
        if let Some(SnmpFacts { name, description, community, .. }) = report.snmp {
            self.snmp_name = name;
            self.snmp_description = description;
            self.snmp_community = Some(community);
        }
        self.facts.extend(report.facts);
        self.errors.extend(report.errors);
    }

    /// The normalised facts as one line: what the checksum covers.
    #[must_use]
    pub fn normalised(&self) -> String {
        let mut open = self.open_ports.clone();
        open.sort_unstable();
        let ports: Vec<String> = open.iter().map(u16::to_string).collect();
        let facts: Vec<String> = self.facts.iter().map(|(k, v)| format!("{k}={v}")).collect();
        format!(
            "alive={}|ports={}|http={}|snmp={}|descr={}|facts={}",
            self.state == HostState::Up,
            ports.join(","),
            self.http_family.as_deref().unwrap_or(""),
            self.snmp_name.as_deref().unwrap_or(""),
            self.snmp_description.as_deref().unwrap_or(""),
            facts.join(";"),
        )
    }

    /// A stable checksum (FNV-1a 64, hex) of [`HostResult::normalised`].
    #[must_use]
    pub fn checksum(&self) -> String {
        use std::hash::Hasher as _;
        // Stored and compared across runs and releases, so not std's `DefaultHasher` (its
        // algorithm is unspecified and may change between Rust releases). `write` on the bytes, not
        // `str::hash`, which would append a 0xff terminator.
        let mut hasher = fnv::FnvHasher::default();
        hasher.write(self.normalised().as_bytes());
        format!("{:016x}", hasher.finish())
    }

    /// The observation recorded in the store, or `None` for an unknown state (local errors
    /// must not count as a dead ping).
    #[must_use]
    pub fn observation(&self) -> Option<Observation> {
        if self.state == HostState::Unknown {
            return None;
        }
        let mut o = Observation::new(self.address, self.state == HostState::Up, self.seen_at);
        o.http_family.clone_from(&self.http_family);
        o.snmp_name.clone_from(&self.snmp_name);
        o.snmp_community.clone_from(&self.snmp_community);
        if self.snmp_name.is_some() {
            o.snmp_version = Some(ralph_core::SnmpVersion::V2c);
        }
        o.checksum = Some(self.checksum());
        Some(o)
    }
}

/// A progress snapshot.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Progress {
    /// Targets in the set, when known.
    pub total: Option<u64>,
    /// Targets not started yet (when the total is known).
    pub queued: u64,
    /// Hosts being probed.
    pub in_flight: u64,
    /// Hosts finished.
    pub done: u64,
    /// Finished and up.
    pub up: u64,
    /// Finished and down.
    pub down: u64,
    /// Finished with local errors.
    pub errors: u64,
    /// The paced rate now, probe starts per second.
    pub rate_limit: f64,
    /// Hosts finished per second, so far.
    pub hosts_per_sec: f64,
    /// Socket budget now.
    pub socket_budget: usize,
    /// Sockets open now.
    pub sockets_in_use: usize,
    /// Neighbour budget (IPv4).
    pub neighbour_budget: usize,
    /// On-link hosts admitted now.
    pub neighbour_in_use: usize,
    /// Congestion met so far: ENOBUFS/EAGAIN seen (all retried) and halvings of the shared
    /// rate while this scan ran.
    pub congestion_events: u64,
    /// Seconds since the start.
    pub elapsed_secs: f64,
    /// True once the scan ended.
    pub finished: bool,
}

/// What a whole scan did.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ScanSummary {
    /// Hosts finished.
    pub hosts: u64,
    /// Up.
    pub up: u64,
    /// Down.
    pub down: u64,
    /// Unknown (local errors).
    pub unknown: u64,
    /// Wall time.
    pub elapsed_secs: f64,
    /// Connection attempts.
    pub attempts: u64,
    /// Attempts that timed out.
    pub timeouts: u64,
    /// ENOBUFS/EAGAIN seen (all retried).
    pub congestion_errors: u64,
    /// EMFILE/ENFILE seen (all requeued).
    pub fd_errors: u64,
    /// Socket budget at the start (shared with the other scans of the [`ScanResources`]).
    pub socket_budget_start: usize,
    /// Socket budget at the end.
    pub socket_budget_end: usize,
    /// Times the shared rate was halved while the scan ran (by any scan sharing the pacer).
    pub rate_halvings: u64,
    /// The rate at the start.
    pub initial_rate: f64,
    /// The lowest rate seen while the scan ran.
    pub min_rate: f64,
    /// Neighbour entries the scan deleted.
    pub neighbour_entries_deleted: u64,
    /// Change of the kernel's ARP `table_fulls` during the scan (host-wide).
    pub table_fulls_delta: u64,
    /// True when stopped early by [`ScanHandle::stop`].
    pub stopped: bool,
}

/// A running scan. Dropping the handle stops it as [`ScanHandle::stop`] does: no new host is
/// admitted, hosts in flight finish (their neighbour entries are cleaned up) and are discarded.
#[derive(Debug)]
pub struct ScanHandle {
    /// Results, one per host, as hosts finish.
    pub results: mpsc::Receiver<HostResult>,
    /// Progress snapshots.
    pub progress: watch::Receiver<Progress>,
    stop: watch::Sender<bool>,
    /// `None` once [`ScanHandle::finish`] has taken it.
    task: Option<tokio::task::JoinHandle<ScanSummary>>,
}

impl Drop for ScanHandle {
    fn drop(&mut self) {
        // Harmless after the end; otherwise the scan would keep probing with nobody listening.
        self.stop.send_replace(true);
    }
}

impl ScanHandle {
    /// Stops admitting new hosts; hosts in flight finish and are reported.
    pub fn stop(&self) {
        self.stop.send_replace(true);
    }

    /// Waits for the end (drain [`ScanHandle::results`] concurrently, or it fills up).
    ///
    /// # Errors
    /// [`Error::Config`] if the scan task panicked.
    pub async fn finish(mut self) -> Result<ScanSummary> {
        let task = self.task.take().ok_or_else(|| Error::Config("scan already finished".to_owned()))?;
        task.await.map_err(|e| Error::Config(format!("scan task failed: {e}")))
    }

    /// Collects every result and the summary.
    ///
    /// The results are gathered by a task of the runtime, so a caller blocked outside it (the
    /// main thread of `#[tokio::main]` or `Runtime::block_on`) is woken once at the end, not
    /// once per host. Dropping the returned future stops the scan shortly after (the gathering
    /// task is aborted and drops the handle).
    ///
    /// # Errors
    /// As [`ScanHandle::finish`].
    ///
    /// # Panics
    /// When polled outside a tokio runtime (as [`Scanner::start`] does).
    pub async fn collect(self) -> Result<(Vec<HostResult>, ScanSummary)> {
        let gather = tokio_util::task::AbortOnDropHandle::new(tokio::spawn(self.gather()));
        gather.await.map_err(|e| Error::Config(format!("scan task failed: {e}")))?
    }

    async fn gather(mut self) -> Result<(Vec<HostResult>, ScanSummary)> {
        let mut out = Vec::new();
        while let Some(r) = self.results.recv().await {
            out.push(r);
        }
        Ok((out, self.finish().await?))
    }
}

#[derive(Debug, Default)]
struct HostCounters {
    in_flight: AtomicU64,
    started: AtomicU64,
    done: AtomicU64,
    up: AtomicU64,
    down: AtomicU64,
    unknown: AtomicU64,
}

/// The scan engine. Cheap to clone; one instance can run many scans, one after another or at
/// once, and all of them (and its clones, and every worker job run with it) share one
/// [`ScanResources`]: one socket budget, one pacer, one neighbour budget.
#[derive(Debug, Clone)]
pub struct Scanner {
    config: Arc<ScanConfig>,
    resources: Arc<ScanResources>,
}

impl Scanner {
    /// A scanner with this configuration and its own [`ScanResources`] (sized by it).
    ///
    /// # Errors
    /// [`Error::Setting`] for a bad configuration ([`ScanConfig::validate`]); [`Error::Io`]
    /// when an explicit neighbour slot file cannot be opened.
    pub fn new(config: ScanConfig) -> Result<Self> {
        let resources = Arc::new(ScanResources::new(&config)?);
        Ok(Self { config: Arc::new(config), resources })
    }

    /// A scanner with this configuration drawing from `resources` shared with other scanners
    /// (the budget, rate and neighbour settings of `config` are then those of `resources`).
    ///
    /// # Errors
    /// [`Error::Setting`] for a bad configuration.
    pub fn with_resources(config: ScanConfig, resources: Arc<ScanResources>) -> Result<Self> {
        config.validate()?;
        Ok(Self { config: Arc::new(config), resources })
    }

    /// The configuration.
    #[must_use]
    pub fn config(&self) -> &ScanConfig {
        &self.config
    }

    /// The shared budgets.
    #[must_use]
    pub fn resources(&self) -> &Arc<ScanResources> {
        &self.resources
    }

    /// Starts scanning `targets` (in order; host-major).
    ///
    /// # Panics
    /// When called outside a tokio runtime.
    pub fn start<I>(&self, targets: I) -> ScanHandle
    where
        I: IntoIterator<Item = IpAddr>,
        I::IntoIter: Send + 'static,
    {
        let targets = targets.into_iter();
        let total = match targets.size_hint() {
            (lo, Some(hi)) if lo == hi => Some(lo as u64),
            _ => None,
        };
        let (tx, rx) = mpsc::channel(1024);
        let (stop_tx, stop_rx) = watch::channel(false);
        let (progress_tx, progress_rx) =
            watch::channel(Progress { total, queued: total.unwrap_or(0), ..Progress::default() });
        let (config, resources) = (Arc::clone(&self.config), Arc::clone(&self.resources));
        let task = tokio::spawn(run(config, resources, targets, total, tx, stop_rx, progress_tx));
        ScanHandle { results: rx, progress: progress_rx, stop: stop_tx, task: Some(task) }
    }

    /// Scans and collects ([`ScanHandle::collect`]).
    ///
    /// # Errors
    /// As [`ScanHandle::finish`].
    ///
    /// # Panics
    /// When polled outside a tokio runtime.
    pub async fn scan<I>(&self, targets: I) -> Result<(Vec<HostResult>, ScanSummary)>
    where
        I: IntoIterator<Item = IpAddr>,
        I::IntoIter: Send + 'static,
    {
        self.start(targets).collect().await
    }
}

struct Shared {
    probes: Vec<Arc<dyn Probe>>,
    ctx: ProbeContext,
    neighbour: NeighbourScope,
    hosts: HostCounters,
    host_done: tokio::sync::Notify,
    /// The lowest rate seen during this scan, as `f64` bits (positive floats order as their bits).
    min_rate: AtomicU64,
    /// The shared pacer's halvings before this scan started.
    halvings_before: u64,
}

/// A host in flight: counted until dropped, however its task ends (a panic included).
struct InFlight(Arc<Shared>);

impl InFlight {
    fn new(shared: &Arc<Shared>) -> Self {
        shared.hosts.in_flight.fetch_add(1, Ordering::AcqRel);
        Self(Arc::clone(shared))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.hosts.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.0.host_done.notify_one();
    }
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> &str {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("a non-text panic")
}

/// Runs one probe; a panic is caught and becomes this target's error (whatever the probe held,
/// sockets included, is released as the unwinding drops it).
async fn run_probe(probe: &Arc<dyn Probe>, ip: IpAddr, ctx: &ProbeContext) -> ProbeReport {
    match std::panic::AssertUnwindSafe(probe.probe(ip, ctx)).catch_unwind().await {
        Ok(report) => report,
        Err(payload) => {
            let message = panic_message(payload.as_ref());
            tracing::warn!(target: "ralph::discovery", probe = probe.name(), address = %ip, panic = message, "probe panicked");
            ProbeReport {
                errors: vec![format!("{}: probe panicked: {message}", probe.name())],
                ..ProbeReport::default()
            }
        }
    }
}

/// Hosts allowed in flight however low the rate.
const MIN_HOST_WINDOW: usize = 16;

async fn probe_host(ip: IpAddr, shared: &Shared) -> HostResult {
    let mut result = HostResult::new(ip);
    let alive_probes: Vec<&Arc<dyn Probe>> = shared.probes.iter().filter(|p| p.stage() == Stage::Alive).collect();
    let fact_probes: Vec<&Arc<dyn Probe>> = shared.probes.iter().filter(|p| p.stage() == Stage::Facts).collect();
    let reports = futures::future::join_all(alive_probes.iter().map(|p| run_probe(p, ip, &shared.ctx))).await;
    let mut up = false;
    let mut asked = alive_probes.is_empty();
    let mut errors = false;
    for report in reports {
        match report.alive {
            Some(true) => up = true,
            Some(false) => asked = true,
            None => errors |= !report.errors.is_empty(),
        }
        result.merge(report);
    }
    if up || alive_probes.is_empty() {
        for probe in fact_probes {
            let report = run_probe(probe, ip, &shared.ctx).await;
            up |= report.alive == Some(true);
            result.merge(report);
        }
    }
    result.state = if up {
        HostState::Up
    } else if asked && !errors {
        HostState::Down
    } else {
        if !errors && result.errors.is_empty() {
            result
                .errors
                .push("no probe could tell whether the host is up (no ICMP permission and no TCP ports?)".into());
        }
        HostState::Unknown
    };
    result.open_ports.sort_unstable();
    result.closed_ports.sort_unstable();
    result.seen_at = Utc::now();
    result
}

/// Resolves once `stop` is true (or its sender is gone).
async fn wait_stop(mut stop: watch::Receiver<bool>) {
    if stop.wait_for(|s| *s).await.is_err() {
        // The handle is gone without saying stop (it always does): nothing to wait for.
        std::future::pending::<()>().await;
    }
}

/// Kernel counters whose rise means packets are being dropped locally: a full neighbour
/// table and UDP sends dropped for lack of buffer space. (`unresolved_discards` is left out:
/// it rises whenever a down on-link host fails ARP, which is no congestion.)
fn kernel_drops() -> u64 {
    let neigh = NeighbourStats::read(false).map_or(0, |s| s.table_fulls);
    let udp = std::fs::read_to_string("/proc/net/snmp").ok().and_then(|t| {
        let mut lines = t.lines().filter(|l| l.starts_with("Udp:"));
        let (head, vals) = (lines.next()?, lines.next()?);
        let i = head.split_whitespace().position(|h| h == "SndbufErrors")?;
        vals.split_whitespace().nth(i)?.parse::<u64>().ok()
    });
    neigh + udp.unwrap_or(0)
}

fn snapshot(shared: &Shared, total: Option<u64>, start: Instant, finished: bool) -> Progress {
    let h = &shared.hosts;
    let done = h.done.load(Ordering::Relaxed);
    let elapsed = start.elapsed().as_secs_f64();
    let rate = shared.ctx.pacer.rate();
    shared.min_rate.fetch_min(rate.to_bits(), Ordering::Relaxed);
    Progress {
        total,
        queued: total.map_or(0, |t| t.saturating_sub(h.started.load(Ordering::Relaxed))),
        in_flight: h.in_flight.load(Ordering::Relaxed),
        done,
        up: h.up.load(Ordering::Relaxed),
        down: h.down.load(Ordering::Relaxed),
        errors: h.unknown.load(Ordering::Relaxed),
        rate_limit: rate,
        hosts_per_sec: if elapsed > 0.0 { done as f64 / elapsed } else { 0.0 },
        socket_budget: shared.ctx.budget.capacity(),
        sockets_in_use: shared.ctx.budget.in_use(),
        neighbour_budget: shared.neighbour.guard().budget(false),
        neighbour_in_use: shared.neighbour.guard().in_use(),
        congestion_events: shared.ctx.counters.congestion_errors.load(Ordering::Relaxed)
            + shared.ctx.pacer.decreases().saturating_sub(shared.halvings_before),
        elapsed_secs: elapsed,
        finished,
    }
}

/// The shortest period of the progress and lease timers.
pub(crate) const MIN_TICK: Duration = Duration::from_millis(1);

async fn control_loop(
    shared: Arc<Shared>,
    total: Option<u64>,
    start: Instant,
    progress: watch::Sender<Progress>,
    interval: Duration,
) {
    let mut drops = kernel_drops();
    let (mut attempts, mut timeouts) = (0u64, 0u64);
    let mut prev_ratio = 0.0f64;
    // A zero period would panic; a configured 0 means "as often as is sane".
    let mut tick = tokio::time::interval(interval.max(MIN_TICK));
    loop {
        tick.tick().await;
        let now_drops = kernel_drops();
        if now_drops > drops {
            shared.ctx.pacer.congestion("kernel drop counters rose");
        }
        drops = now_drops;
        let c = &shared.ctx.counters;
        let (a, t) = (c.attempts.load(Ordering::Relaxed), c.timeouts.load(Ordering::Relaxed));
        let (da, dt) = (a - attempts, t - timeouts);
        (attempts, timeouts) = (a, t);
        if da >= 50 {
            let ratio = dt as f64 / da as f64;
            if ratio > 0.5 && ratio > prev_ratio * 2.0 + 0.1 {
                shared.ctx.pacer.congestion("timeout spike");
            }
            prev_ratio = ratio;
        }
        progress.send_replace(snapshot(&shared, total, start, false));
    }
}

async fn run<I>(
    config: Arc<ScanConfig>,
    resources: Arc<ScanResources>,
    targets: I,
    total: Option<u64>,
    tx: mpsc::Sender<HostResult>,
    stop: watch::Receiver<bool>,
    progress: watch::Sender<Progress>,
) -> ScanSummary
where
    I: Iterator<Item = IpAddr> + Send + 'static,
{
    let start = Instant::now();
    let budget = resources.sockets().capacity();
    let fulls_before = NeighbourStats::read(false).map_or(0, |s| s.table_fulls);
    let pacer = resources.pacer_arc();
    let (initial_rate, halvings_before) = (pacer.rate(), pacer.decreases());
    let shared = Arc::new(Shared {
        probes: config.probes(),
        ctx: ProbeContext {
            budget: resources.sockets().clone(),
            pacer,
            lane: Arc::default(),
            connector: Arc::clone(&config.connector),
            counters: Arc::new(ProbeCounters::default()),
            timeouts: config.timeouts,
            pace_loopback: config.pace_loopback,
        },
        neighbour: resources.neighbour().scope(),
        hosts: HostCounters::default(),
        host_done: tokio::sync::Notify::new(),
        min_rate: AtomicU64::new(initial_rate.to_bits()),
        halvings_before,
    });
    let guard = shared.neighbour.guard();
    tracing::info!(target: "ralph::discovery", total, socket_budget = budget, neighbour_budget = guard.budget(false),
        deletes_neighbours = guard.deletes_entries(), host_wide_neighbours = guard.host_slots(false).is_some(), "scan started");
    let control =
        tokio::spawn(control_loop(Arc::clone(&shared), total, start, progress.clone(), config.progress_interval));
    let mut tasks = JoinSet::new();
    let mut stopped = false;
    for ip in targets {
        // Hosts in flight are bounded by the socket budget and by about half a second's worth
        // of probe starts at the current rate, so a stop leaves little to drain.
        loop {
            if *stop.borrow() {
                stopped = true;
                break;
            }
            let window = ((shared.ctx.pacer.rate() / 2.0) as usize)
                .max(MIN_HOST_WINDOW)
                .min(shared.ctx.budget.capacity().max(1));
            if shared.hosts.in_flight.load(Ordering::Acquire) < window as u64 {
                break;
            }
            tokio::select! {
                () = shared.host_done.notified() => {}
                () = tokio::time::sleep(Duration::from_millis(20)) => {}
            }
        }
        if stopped {
            break;
        }
        // Stop waiting for a neighbour slot too, or a stop would wait for the table to drain.
        let slot = tokio::select! {
            slot = shared.neighbour.admit(ip) => slot,
            () = wait_stop(stop.clone()) => { stopped = true; break; }
        };
        shared.hosts.started.fetch_add(1, Ordering::Relaxed);
        // Both are released however the task ends: the slot (held for the kernel's hold time when
        // not given back) and the in-flight count are guards.
        let in_flight = InFlight::new(&shared);
        let (shared, tx) = (Arc::clone(&shared), tx.clone());
        tasks.spawn(async move {
            let result = crate::neighbour::with_host(slot.as_ref(), probe_host(ip, &shared)).await;
            if let Some(slot) = slot {
                shared.neighbour.release(slot).await;
            }
            let h = &shared.hosts;
            match result.state {
                HostState::Up => h.up.fetch_add(1, Ordering::Relaxed),
                HostState::Down => h.down.fetch_add(1, Ordering::Relaxed),
                HostState::Unknown => h.unknown.fetch_add(1, Ordering::Relaxed),
            };
            h.done.fetch_add(1, Ordering::Relaxed);
            drop(in_flight);
            tracing::trace!(target: "ralph::discovery", address = %result.address, state = ?result.state, "host done");
            // A dropped receiver only means nobody wants the result any more.
            let _ = tx.send(result).await;
        });
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    drop(tx);
    control.abort();
    // Wait for the abort to land, so no late snapshot overwrites the final one.
    let _ = control.await;
    let last = snapshot(&shared, total, start, true);
    progress.send_replace(last.clone());
    let c = &shared.ctx.counters;
    let summary = ScanSummary {
        hosts: last.done,
        up: last.up,
        down: last.down,
        unknown: last.errors,
        elapsed_secs: start.elapsed().as_secs_f64(),
        attempts: c.attempts.load(Ordering::Relaxed),
        timeouts: c.timeouts.load(Ordering::Relaxed),
        congestion_errors: c.congestion_errors.load(Ordering::Relaxed),
        fd_errors: c.fd_errors.load(Ordering::Relaxed),
        socket_budget_start: budget,
        socket_budget_end: shared.ctx.budget.capacity(),
        rate_halvings: shared.ctx.pacer.decreases().saturating_sub(halvings_before),
        initial_rate,
        min_rate: f64::from_bits(shared.min_rate.load(Ordering::Relaxed)),
        neighbour_entries_deleted: shared.neighbour.deleted(),
        table_fulls_delta: NeighbourStats::read(false).map_or(0, |s| s.table_fulls).saturating_sub(fulls_before),
        stopped,
    };
    tracing::info!(target: "ralph::discovery", hosts = summary.hosts, up = summary.up, down = summary.down,
        unknown = summary.unknown, elapsed_secs = summary.elapsed_secs, "scan finished");
    summary
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_lists() {
        assert_eq!(parse_ports("80, 22,8000-8002,80").expect("ports"), [22, 80, 8000, 8001, 8002]);
        for bad in ["", "0", "80-79", "x", "70000", "1-"] {
            assert!(matches!(parse_ports(bad), Err(Error::Ports { .. })), "{bad}");
        }
    }

    #[test]
    fn checksum_covers_the_normalised_facts() {
        let mut a = HostResult::new("10.0.0.1".parse().expect("ip"));
        a.state = HostState::Up;
        a.open_ports = vec![443, 80];
        let mut b = a.clone();
        b.open_ports = vec![80, 443];
        b.errors.push("noise".into());
        assert_eq!(a.checksum(), b.checksum(), "order and errors do not matter");
        // Pinned: checksums already stored must still match.
        assert_eq!(a.checksum(), "dfe78c558b1b8a87", "FNV-1a 64 of {:?}", a.normalised());
        b.http_family = Some("Apache".into());
        assert_ne!(a.checksum(), b.checksum());
        assert_eq!(a.checksum().len(), 16);
        a.state = HostState::Unknown;
        assert!(a.observation().is_none(), "local errors are no dead ping");
    }
}
