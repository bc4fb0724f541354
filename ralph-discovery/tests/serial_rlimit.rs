//! A scan under RLIMIT_NOFILE 128, run in a child process (this test binary re-executed),
//! with descriptors taken away mid-scan so the engine meets real EMFILE: it must shrink its
//! budget, requeue, and still report every port correctly.

mod common;

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Mutex;

use async_trait::async_trait;
use ralph_discovery::{HostState, Probe, ProbeContext, ProbeReport, ScanConfig, Scanner, Stage};

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
    let (hosts, summary) = Scanner::new(config).scan([IpAddr::V4(Ipv4Addr::LOCALHOST)]).await.expect("scan");
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
    assert!(r["fd_errors"].as_u64().expect("fd_errors") > 0, "the scan met EMFILE: {r}");
    assert!(r["budget_end"].as_u64() < r["budget_start"].as_u64(), "the budget shrank: {r}");
}
