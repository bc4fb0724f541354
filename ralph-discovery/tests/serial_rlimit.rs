//! Scans under RLIMIT_NOFILE 128, run in a child process (this test binary re-executed):
//! 2,000 loopback ports with descriptors taken away while the scan runs, and 1,000 lab hosts
//! (answers arrive asynchronously, so sockets are in flight) with 60 of the 128 descriptors
//! taken after the budget was set: the engine meets real EMFILE, shrinks its budget, requeues,
//! and still reports every port correctly.

mod common;

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Mutex;

use async_trait::async_trait;
use std::time::Duration;

use ralph_discovery::{HostState, Probe, ProbeContext, ProbeReport, ProbeTimeouts, ScanConfig, Scanner, Stage};

const CHILD_ENV: &str = "RALPH_RLIMIT_CHILD_PORTS";

/// Holds descriptors so the scan runs out of them.
static HOGGED: Mutex<Vec<File>> = Mutex::new(Vec::new());

/// An alive-stage probe that, while the TCP probes run, grabs 60 descriptors as they free up.
#[derive(Debug)]
struct FdHog;

#[async_trait]
impl Probe for FdHog {
    fn name(&self) -> &str {
        "fd-hog"
    }
    fn stage(&self) -> Stage {
        Stage::Alive
    }
    async fn probe(&self, _target: IpAddr, _ctx: &ProbeContext) -> ProbeReport {
        loop {
            let held = HOGGED.lock().map(|h| h.len()).unwrap_or(60);
            if held >= 60 {
                return ProbeReport::default();
            }
            match File::open("/dev/null") {
                Ok(f) => {
                    if let Ok(mut h) = HOGGED.lock() {
                        h.push(f);
                    }
                }
                Err(_) => tokio::time::sleep(std::time::Duration::from_micros(200)).await,
            }
        }
    }
}

/// The child's half: not a test on its own (returns at once unless re-executed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serial_rlimit_child() {
    let Ok(ports) = std::env::var(CHILD_ENV) else { return };
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
    setrlimit(Resource::RLIMIT_NOFILE, 128, hard).expect("setrlimit 128");
    let ports = ralph_discovery::parse_ports(&ports).expect("ports");
    let config = ScanConfig::default().ports(ports).icmp(false).http(None).probe(std::sync::Arc::new(FdHog));
    let (hosts, summary) =
        Scanner::new(config).expect("valid scan config").scan([IpAddr::V4(Ipv4Addr::LOCALHOST)]).await.expect("scan");
    let host = &hosts[0];
    let out = serde_json::json!({
        "state": format!("{:?}", host.state),
        "open": host.open_ports,
        "closed": host.closed_ports,
        "errors": host.errors,
        "fd_errors": summary.fd_errors,
        "budget_start": summary.socket_budget_start,
        "budget_end": summary.socket_budget_end,
    });
    println!("RESULT {out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serial_scan_under_rlimit_nofile_128_is_correct() {
    common::raise_nofile();
    let mut open = Vec::new();
    for _ in 0..1500 {
        open.push(common::http_listener("127.0.0.1:0".parse().expect("addr"), "x").await.port());
    }
    let closed: std::collections::BTreeSet<u16> = (0..500).map(|_| common::closed_port()).collect();
    let closed: Vec<u16> = closed.into_iter().filter(|p| !open.contains(p)).collect();
    let list: Vec<String> = open.iter().chain(&closed).map(u16::to_string).collect();
    let exe = std::env::current_exe().expect("current exe");
    let child = tokio::process::Command::new(exe)
        .args(["serial_rlimit_child", "--exact", "--nocapture", "--test-threads", "1"])
        .env(CHILD_ENV, list.join(","))
        .output()
        .await
        .expect("run child");
    let stdout = String::from_utf8_lossy(&child.stdout);
    assert!(child.status.success(), "child failed: {stdout}\n{}", String::from_utf8_lossy(&child.stderr));
    let line = stdout
        .lines()
        .find_map(|l| l.split_once("RESULT ").map(|(_, r)| r))
        .unwrap_or_else(|| panic!("no result from the child: {stdout}"));
    let r: serde_json::Value = serde_json::from_str(line).expect("json");
    let ports = |k: &str| -> Vec<u16> {
        r[k].as_array().expect("array").iter().filter_map(|v| v.as_u64()).map(|v| v as u16).collect()
    };
    open.sort_unstable();
    let mut closed = closed;
    closed.sort_unstable();
    assert_eq!(r["state"], format!("{:?}", HostState::Up));
    assert_eq!(ports("open"), open, "every open port found under the limit");
    assert_eq!(ports("closed"), closed, "every closed port found under the limit");
    assert_eq!(r["errors"].as_array().map(Vec::len), Some(0), "{r}");
    assert!(r["budget_start"].as_u64().expect("budget") < 128, "budget below the soft limit: {r}");
}

const LAB_CHILD_ENV: &str = "RALPH_RLIMIT_LAB_CHILD";

/// Opens the real connection after, on the first call, taking every free descriptor but 16:
/// the sockets in flight to the lab then meet real EMFILE from `socket()`.
#[derive(Debug)]
struct HogThenConnect {
    inner: ralph_discovery::SystemConnector,
}

#[async_trait]
impl ralph_discovery::Connector for HogThenConnect {
    async fn connect(&self, addr: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpStream> {
        if let Ok(mut held) = HOGGED.lock()
            && held.is_empty()
        {
            while let Ok(f) = File::open("/dev/null") {
                held.push(f);
            }
            let keep = held.len().saturating_sub(16);
            held.truncate(keep);
        }
        self.inner.connect(addr).await
    }
}

/// The child's half of the lab variant (returns at once unless re-executed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serial_rlimit_lab_child() {
    let Ok(spec) = std::env::var(LAB_CHILD_ENV) else { return };
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
    setrlimit(Resource::RLIMIT_NOFILE, 128, hard).expect("setrlimit 128");
    let v: serde_json::Value = serde_json::from_str(&spec).expect("spec");
    let hosts: Vec<IpAddr> =
        v["hosts"].as_array().expect("hosts").iter().filter_map(|h| h.as_str()?.parse().ok()).collect();
    let ports: Vec<u16> =
        v["ports"].as_array().expect("ports").iter().filter_map(|p| p.as_u64()).map(|p| p as u16).collect();
    let timeouts = ProbeTimeouts { connect: Duration::from_secs(1), retries: 0, ..ProbeTimeouts::default() };
    let config = ScanConfig::default()
        .ports(ports)
        .icmp(false)
        .http(None)
        .timeouts(timeouts)
        .connector(std::sync::Arc::new(HogThenConnect { inner: ralph_discovery::SystemConnector::default() }));
    let (results, summary) = Scanner::new(config).expect("valid scan config").scan(hosts).await.expect("scan");
    let out = serde_json::json!({
        "hosts": results.len(),
        "up": results.iter().filter(|h| h.state == HostState::Up).count(),
        "down": results.iter().filter(|h| h.state == HostState::Down).map(|h| h.address.to_string()).collect::<Vec<_>>(),
        "ports": results
            .iter()
            .filter(|h| h.state == HostState::Up)
            .map(|h| (h.open_ports.clone(), h.closed_ports.clone()))
            .collect::<std::collections::BTreeSet<_>>(),
        "errors": results.iter().map(|h| h.errors.len()).sum::<usize>(),
        "fd_errors": summary.fd_errors,
        "budget_start": summary.socket_budget_start,
        "budget_end": summary.socket_budget_end,
        "halvings": summary.rate_halvings,
        "min_rate": summary.min_rate,
        "elapsed": summary.elapsed_secs,
        "timeouts": summary.timeouts,
    });
    println!("RESULT {out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serial_lab_scan_under_rlimit_nofile_128_meets_emfile_and_is_correct() {
    let Some(lab) = common::lab() else { return };
    // Down hosts first: their sockets stay in flight until the timeout, so the budget fills.
    let dead = lab.hosts(&lab.dead, 40);
    let hosts: Vec<IpAddr> = dead.iter().copied().chain(lab.hosts(&lab.cidr, 1000)).collect();
    let spec = serde_json::json!({
        "hosts": hosts.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "ports": [lab.open, lab.closed],
    });
    let child = tokio::process::Command::new(std::env::current_exe().expect("exe"))
        .args(["serial_rlimit_lab_child", "--exact", "--nocapture", "--test-threads", "1"])
        .env(LAB_CHILD_ENV, spec.to_string())
        .output()
        .await
        .expect("run child");
    let stdout = String::from_utf8_lossy(&child.stdout);
    assert!(child.status.success(), "child failed: {stdout}\n{}", String::from_utf8_lossy(&child.stderr));
    let line = stdout
        .lines()
        .find_map(|l| l.split_once("RESULT ").map(|(_, r)| r))
        .unwrap_or_else(|| panic!("no result from the child: {stdout}"));
    let r: serde_json::Value = serde_json::from_str(line).expect("json");
    assert_eq!((r["hosts"].as_u64(), r["up"].as_u64()), (Some(1040), Some(1000)), "every lab host up: {r}");
    let mut down: Vec<String> =
        r["down"].as_array().expect("down").iter().filter_map(|d| d.as_str().map(str::to_owned)).collect();
    down.sort();
    let mut want: Vec<String> = dead.iter().map(ToString::to_string).collect();
    want.sort();
    assert_eq!(down, want, "exactly the blackholed hosts are down");
    assert_eq!(r["ports"], serde_json::json!([[[lab.open], [lab.closed]]]), "every host: open and closed port right");
    assert_eq!(r["errors"].as_u64(), Some(0), "{r}");
    assert!(r["fd_errors"].as_u64().expect("fd_errors") > 0, "the scan met EMFILE: {r}");
    assert!(r["budget_end"].as_u64() < r["budget_start"].as_u64(), "the budget shrank: {r}");
}

const ICMP_CHILD_ENV: &str = "RALPH_RLIMIT_ICMP_CHILD";

/// The child's half of the ICMP variant (returns at once unless re-executed): every free
/// descriptor is taken before the ping opens its socket and given back 300 ms later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serial_rlimit_icmp_child() {
    if std::env::var(ICMP_CHILD_ENV).is_err() {
        return;
    }
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
    setrlimit(Resource::RLIMIT_NOFILE, 128, hard).expect("setrlimit 128");
    let ctx = ProbeContext::standalone(8);
    {
        let mut held = HOGGED.lock().expect("lock");
        while let Ok(f) = File::open("/dev/null") {
            held.push(f);
        }
    }
    std::thread::spawn(|| {
        std::thread::sleep(Duration::from_millis(300));
        HOGGED.lock().expect("lock").clear();
    });
    let report = ralph_discovery::IcmpProbe::default().probe(IpAddr::V4(Ipv4Addr::LOCALHOST), &ctx).await;
    let out = serde_json::json!({
        "alive": report.alive,
        "errors": report.errors,
        "shrinks": ctx.budget().shrinks(),
    });
    println!("RESULT {out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serial_icmp_meets_emfile_shrinks_the_budget_and_retries() {
    let child = tokio::process::Command::new(std::env::current_exe().expect("exe"))
        .args(["serial_rlimit_icmp_child", "--exact", "--nocapture", "--test-threads", "1"])
        .env(ICMP_CHILD_ENV, "1")
        .output()
        .await
        .expect("run child");
    let stdout = String::from_utf8_lossy(&child.stdout);
    assert!(child.status.success(), "child failed: {stdout}\n{}", String::from_utf8_lossy(&child.stderr));
    let line = stdout
        .lines()
        .find_map(|l| l.split_once("RESULT ").map(|(_, r)| r))
        .unwrap_or_else(|| panic!("no result from the child: {stdout}"));
    let r: serde_json::Value = serde_json::from_str(line).expect("json");
    assert_eq!(r["errors"], serde_json::json!([]), "EMFILE is retried, not reported: {r}");
    assert_eq!(r["alive"], serde_json::json!(true), "loopback answers the echo once descriptors are back: {r}");
    assert!(r["shrinks"].as_u64().expect("shrinks") > 0, "the budget shrank on EMFILE: {r}");
}
