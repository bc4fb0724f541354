//! Discovery workers over the network-namespace lab (scripts/services/netlab): queue worker
//! processes, composed as a host app would (a SQLite store, `enqueue_targets`, `Worker`),
//! sweep the lab's /20 of on-link hosts — two worker processes at once, and one process running
//! four jobs at once — and every host ends up recorded alive while the kernel's neighbour table
//! never overflows (`table_fulls` +0 at the default `gc_thresh3`, 1,024 entries against 4,094
//! hosts). They touch the host-wide neighbour table, so this binary runs one test at a time
//! with the other `serial_` tests.
//!
//! Worker processes are this test binary run again with `--ignored --exact lab_worker_child`
//! and their settings in `RALPH_LAB_WORKER`.

use std::net::IpAddr;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ralph_core::{InventoryStore, QueueAdmin};
use ralph_discovery::neighbour::{NeighbourStats, local_subnets};
use ralph_discovery::{
    CancellationToken, NeighbourConfig, ScanConfig, Scanner, SlotFile, Targets, Worker, WorkerConfig, enqueue_targets,
};
use ralph_store::SqliteStore;

const CHILD_VAR: &str = "RALPH_LAB_WORKER";
const CHILD_REPORT: &str = "LAB_WORKER_HOSTS";
const QUEUE: &str = "discovery.lab";

/// The lab's /20, its open and closed port and its interface; `None` after a printed skip
/// (a failure under `CI=true`).
struct Lab {
    cidr: String,
    open: u16,
    closed: u16,
    iface: String,
}

fn lab() -> Option<Lab> {
    let cidr = ralph_testkit::service("RALPH_TEST_NETLAB_CIDR")?;
    if !ralph_testkit::require_root("the namespace lab") {
        return None;
    }
    let port = |v: &str| ralph_testkit::service(v).and_then(|p| p.parse().ok());
    let lab = Lab {
        cidr,
        open: port("RALPH_TEST_NETLAB_OPEN_PORT")?,
        closed: port("RALPH_TEST_NETLAB_CLOSED_PORT")?,
        iface: ralph_testkit::service("RALPH_TEST_NETLAB_IFACE")?,
    };
    // Never let a vanished lab send the probes out of the default route.
    let subnets: Vec<_> = local_subnets().into_iter().filter(|s| s.interface == lab.iface).collect();
    assert!(
        Targets::parse(&lab.cidr)
            .expect("lab cidr")
            .addresses()
            .all(|ip| subnets.iter().any(|s| s.network.contains(ip))),
        "{} is not on-link through {} (is the lab up?): refusing to probe it",
        lab.cidr,
        lab.iface
    );
    Some(lab)
}

/// The lab scanner as a host app would configure it: both lab ports, no ICMP or HTTP, the
/// neighbour slots in `slots` (shared by every worker process of the test).
fn lab_scanner(lab: &Lab, slots: &str) -> Scanner {
    let neighbour = NeighbourConfig { slot_file: SlotFile::Path(slots.into()), ..NeighbourConfig::default() };
    let config = ScanConfig::default().ports(vec![lab.open, lab.closed]).icmp(false).http(None).neighbour(neighbour);
    Scanner::new(config).expect("valid scan config")
}

/// A worker process: `url|slots|name|concurrency` — drains the lab queue with `concurrency`
/// job slots, prints the hosts it scanned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by the serial_*_lab tests as a worker process"]
async fn lab_worker_child() {
    let spec = std::env::var(CHILD_VAR).expect("worker spec");
    let p: Vec<&str> = spec.split('|').collect();
    let (url, slots, name, concurrency) = (p[0], p[1], p[2], p[3].parse().expect("concurrency"));
    let lab = lab().expect("the parent saw the lab");
    let store = Arc::new(SqliteStore::connect(url).await.expect("open"));
    let config = WorkerConfig::new(QUEUE)
        .name(name)
        .concurrency(concurrency)
        .lease(Duration::from_secs(30))
        .poll_interval(Duration::from_millis(50));
    let worker = Worker::new(Arc::clone(&store), Arc::clone(&store), lab_scanner(&lab, slots), config);
    let token = CancellationToken::new();
    let run = tokio::spawn({
        let token = token.clone();
        async move { worker.run(token).await }
    });
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        let s = store.stats(QUEUE).await.expect("stats");
        if s.pending == 0 && s.running == 0 && s.expired == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "the lab queue did not drain: {s:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    token.cancel();
    let stats = run.await.expect("join").expect("worker");
    assert_eq!((stats.jobs_failed, stats.leases_lost), (0, 0), "{stats:?}");
    println!("\n{CHILD_REPORT} {}", stats.hosts);
}

/// Enqueues the lab's /20 in jobs of 256 hosts, runs one worker process per entry of
/// `concurrency` (its job slots), all at once, and checks that every lab host was scanned once
/// and stored alive, and that the neighbour table never overflowed.
async fn sweep_with_workers(concurrency: &[usize]) {
    let Some(lab) = lab() else { return };
    let _ = std::process::Command::new("ip").args(["neigh", "flush", "dev", &lab.iface]).status();
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("ralph.sqlite3").display());
    let slots = dir.path().join("neighbour-slots").display().to_string();
    let store = SqliteStore::connect(&url).await.expect("open");
    let jobs = enqueue_targets(&store, QUEUE, [lab.cidr.as_str()], [] as [&str; 0], 256).await.expect("enqueue");
    assert_eq!(jobs.len(), 16, "4,094 hosts in jobs of 256");
    let before = NeighbourStats::read(false).expect("arp_cache");
    let children: Vec<_> = concurrency
        .iter()
        .enumerate()
        .map(|(i, slots_per_worker)| {
            tokio::process::Command::new(std::env::current_exe().expect("test binary"))
                .args(["--ignored", "--exact", "lab_worker_child", "--nocapture", "--test-threads=1"])
                .env(CHILD_VAR, format!("{url}|{slots}|lab-worker-{i}|{slots_per_worker}"))
                .stdout(Stdio::piped())
                .kill_on_drop(true)
                .spawn()
                .expect("spawn a worker process")
        })
        .collect();
    let mut scanned = 0u64;
    for child in children {
        let out = tokio::time::timeout(Duration::from_secs(300), child.wait_with_output())
            .await
            .expect("worker process ends")
            .expect("worker process");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "worker process failed: {text}");
        let hosts =
            text.lines().find_map(|l| l.strip_prefix(CHILD_REPORT)).unwrap_or_else(|| panic!("no report: {text}"));
        scanned += hosts.trim().parse::<u64>().expect("hosts");
    }
    let after = NeighbourStats::read(false).expect("arp_cache");
    assert_eq!(after.table_fulls, before.table_fulls, "neighbour table overflowed");
    let s = store.stats(QUEUE).await.expect("stats");
    assert_eq!((s.done, s.dead, s.pending, s.running), (16, 0, 0, 0), "{s:?}");
    assert_eq!(scanned, 4094, "every host scanned once");
    let targets: Vec<IpAddr> = Targets::parse(&lab.cidr).expect("cidr").addresses().collect();
    let mut wrong = Vec::new();
    for ip in &targets {
        match store.find_ip(*ip).await.expect("find") {
            Some(row) if row.value.dead_ping_count == 0 && row.value.last_seen.is_some() => {}
            other => wrong.push(format!("{ip}: {:?}", other.map(|r| (r.value.dead_ping_count, r.value.last_seen)))),
        }
    }
    assert!(wrong.is_empty(), "{} lab hosts not stored alive, e.g. {:?}", wrong.len(), &wrong[..wrong.len().min(5)]);
    let _ = std::process::Command::new("ip").args(["neigh", "flush", "dev", &lab.iface]).status();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serial_two_worker_processes_sweep_the_lab() {
    sweep_with_workers(&[2, 2]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serial_one_worker_process_with_four_jobs_at_once_sweeps_the_lab() {
    sweep_with_workers(&[4]).await;
}
