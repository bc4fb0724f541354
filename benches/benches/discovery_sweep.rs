//! ralph-discovery against nmap, measured in the same run:
//!
//! 1. TCP connect sweep of 127.0.0.1 ports 1-65535 vs `nmap -sT -p- -T5` (open ports must
//!    agree; TIME_WAIT left on 127.0.0.1 counted after ours);
//! 2. the 4,094-host on-link namespace lab (scripts/services/netlab, started here when not
//!    running; needs root) vs `nmap -sT -Pn -p80 -T4`, with correctness of both;
//! 3. the lab's wide /16 (198.19.0.0/16, 65,534 on-link hosts, port 80) at the kernel's
//!    neighbour thresholds, swept by one process and, separately, split over two processes
//!    sharing the host-wide neighbour budget (this binary re-executed), with correctness and
//!    `table_fulls`, next to `nmap -sT -Pn -p80 -T4` on a /20 of it (per-host ratio);
//! 4. a 127.0.0.0/16 single-port host sweep vs a naive concurrent connect loop.
//!
//! `cargo bench -p ralph-benches --bench discovery_sweep`; `RALPH_BENCH_ONLY=wide` runs only
//! part 3 (`ports`: only part 1). nmap is installed from Debian's packages when missing.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use ralph_discovery::{HostState, ScanConfig, Scanner, Targets};

fn ensure_nmap() -> bool {
    if Command::new("nmap").arg("--version").output().is_ok_and(|o| o.status.success()) {
        return true;
    }
    eprintln!("installing nmap from Debian's packages");
    // dpkg's progress goes to stderr: the bench's standard output holds only its figures.
    let ok = Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends", "nmap"])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdout(std::io::stderr())
        .status()
        .is_ok_and(|s| s.success());
    ok || Command::new("sh")
        .args(["-c", "apt-get update -qq && apt-get install -y -qq nmap"])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdout(std::io::stderr())
        .status()
        .is_ok_and(|s| s.success())
}

/// Runs nmap with greppable output; returns (seconds, open "host:port" set).
fn nmap(args: &[&str]) -> (f64, BTreeSet<String>) {
    let start = Instant::now();
    let out = Command::new("nmap").args(args).args(["-n", "-oG", "-"]).output().expect("run nmap");
    let secs = start.elapsed().as_secs_f64();
    let text = String::from_utf8_lossy(&out.stdout);
    let mut open = BTreeSet::new();
    for line in text.lines().filter(|l| l.starts_with("Host:") && l.contains("Ports:")) {
        let host = line.split_whitespace().nth(1).unwrap_or("").to_owned();
        let ports = line.split("Ports:").nth(1).unwrap_or("");
        for p in ports.split(',') {
            let f: Vec<&str> = p.trim().split('/').collect();
            if f.len() > 1 && f[1] == "open" {
                open.insert(format!("{host}:{}", f[0]));
            }
        }
    }
    (secs, open)
}

/// Sockets in TIME_WAIT between two 127.0.0.1 endpoints.
fn time_wait_loopback() -> usize {
    let localhost = |a: std::net::SocketAddr| a.ip() == std::net::Ipv4Addr::LOCALHOST;
    ralph_testkit::time_wait(|local, remote| localhost(local) && localhost(remote))
}

fn table_fulls() -> u64 {
    ralph_discovery::neighbour::NeighbourStats::read(false).map_or(0, |s| s.table_fulls)
}

async fn port_sweep() {
    println!("== TCP connect sweep of 127.0.0.1 ports 1-65535");
    let scanner = Scanner::new(ScanConfig::default().ports((1..=65535).collect()).icmp(false).http(None))
        .expect("valid scan config");
    let mut ours = Vec::new();
    let mut open = BTreeSet::new();
    let tw_before = time_wait_loopback();
    for _ in 0..3 {
        let (hosts, summary) = scanner.scan([IpAddr::V4(Ipv4Addr::LOCALHOST)]).await.expect("scan");
        ours.push(summary.elapsed_secs);
        open = hosts[0].open_ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        assert_eq!(hosts[0].open_ports.len() + hosts[0].closed_ports.len(), 65535, "every port answered");
    }
    let tw_after = time_wait_loopback();
    let mut theirs = Vec::new();
    let mut nmap_open = BTreeSet::new();
    for _ in 0..3 {
        let (secs, o) = nmap(&["-sT", "-p-", "-T5", "127.0.0.1"]);
        theirs.push(secs);
        nmap_open = o;
    }
    ours.sort_by(f64::total_cmp);
    theirs.sort_by(f64::total_cmp);
    let (o, t) = (ours[1], theirs[1]);
    println!("ralph-discovery: median {o:.3} s ({:.0} ports/s), runs {ours:.3?}", 65535.0 / o);
    println!("nmap -sT -p- -T5: median {t:.3} s, runs {theirs:.3?}");
    println!("speed-up: {:.1}x (goal >= 5x)", t / o);
    println!("open ports: ours {} nmap {} agree: {}", open.len(), nmap_open.len(), open == nmap_open);
    if open != nmap_open {
        println!(
            "  only ours: {:?}  only nmap: {:?}",
            open.difference(&nmap_open).collect::<Vec<_>>(),
            nmap_open.difference(&open).collect::<Vec<_>>()
        );
    }
    println!("TIME_WAIT on 127.0.0.1 before/after our 3 sweeps (196,605 connects): {tw_before} / {tw_after}");
}

/// The lab's CIDR, host-side interface, wide /16 (when this lab has it), and whether this run
/// started it.
fn lab_up() -> Option<(String, String, Option<String>, bool)> {
    if let (Ok(cidr), Ok(iface)) = (std::env::var("RALPH_TEST_NETLAB_CIDR"), std::env::var("RALPH_TEST_NETLAB_IFACE")) {
        return Some((cidr, iface, std::env::var("RALPH_TEST_NETLAB_WIDE_CIDR").ok(), false));
    }
    // up.sh takes a free lab slot, so a lab another run uses is left alone.
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/services/netlab/up.sh");
    let out = Command::new("bash").arg(&root).env("RALPH_TEST_RUN_DIR", "/tmp/ralph-bench-netlab").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let var = |name: &str| text.lines().find_map(|l| l.strip_prefix(&format!("export {name}=")).map(str::to_owned));
    Some((var("RALPH_TEST_NETLAB_CIDR")?, var("RALPH_TEST_NETLAB_IFACE")?, var("RALPH_TEST_NETLAB_WIDE_CIDR"), true))
}

fn lab_down() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/services/netlab/down.sh");
    let _ = Command::new("bash").arg(root).env("RALPH_TEST_RUN_DIR", "/tmp/ralph-bench-netlab").status();
}

fn flush_lab_neighbours(iface: &str) {
    let _ = Command::new("ip").args(["neigh", "flush", "dev", iface]).status();
}

async fn lab_sweep() {
    println!(
        "== 4,094-host on-link lab sweep (port 80), gc_thresh3 = {}",
        ralph_discovery::neighbour::NeighbourLimits::read(false).gc_thresh3
    );
    let Some((cidr, iface, _, started)) = lab_up() else {
        println!("skipped: the namespace lab needs root (scripts/services/netlab/up.sh)");
        return;
    };
    let targets = Targets::parse(&cidr).expect("cidr");
    let total = targets.len() as usize;
    let scanner =
        Scanner::new(ScanConfig::default().ports(vec![80]).icmp(false).http(None)).expect("valid scan config");
    let mut ours = Vec::new();
    for _ in 0..3 {
        flush_lab_neighbours(&iface);
        let fulls = table_fulls();
        let (hosts, summary) = scanner.scan(targets.addresses()).await.expect("scan");
        let up = hosts.iter().filter(|h| h.state == HostState::Up && h.open_ports == [80]).count();
        println!("  ours: {:.3} s, {up}/{total} correct, table_fulls +{}", summary.elapsed_secs, table_fulls() - fulls);
        ours.push((summary.elapsed_secs, up));
    }
    let mut theirs = Vec::new();
    for _ in 0..2 {
        flush_lab_neighbours(&iface);
        let fulls = table_fulls();
        let (secs, open) = nmap(&["-sT", "-Pn", "-p80", "-T4", &cidr]);
        println!("  nmap: {secs:.3} s, {}/{total} reported open, table_fulls +{}", open.len(), table_fulls() - fulls);
        theirs.push((secs, open.len()));
    }
    flush_lab_neighbours(&iface);
    // The naive way: every host at once, no neighbour budget.
    let fulls = table_fulls();
    let start = Instant::now();
    let sem = Arc::new(tokio::sync::Semaphore::new(4096));
    let tasks: Vec<_> = targets
        .addresses()
        .map(|ip| {
            let sem = Arc::clone(&sem);
            tokio::spawn(async move {
                let _p = sem.acquire().await;
                let c = tokio::time::timeout(
                    std::time::Duration::from_millis(1500),
                    tokio::net::TcpStream::connect(SocketAddr::new(ip, 80)),
                )
                .await;
                matches!(c, Ok(Ok(_)))
            })
        })
        .collect();
    let mut naive_up = 0;
    for t in tasks {
        naive_up += usize::from(t.await.unwrap_or(false));
    }
    println!(
        "  naive concurrent connect: {:.3} s, {naive_up}/{total} up, table_fulls +{}",
        start.elapsed().as_secs_f64(),
        table_fulls() - fulls
    );
    ours.sort_by(|a, b| a.0.total_cmp(&b.0));
    theirs.sort_by(|a, b| a.0.total_cmp(&b.0));
    let o = ours[ours.len() / 2];
    let t = theirs[0];
    println!("ralph-discovery median {:.3} s ({:.0} hosts/s), {}/{total} correct", o.0, total as f64 / o.0, o.1);
    println!("nmap -sT -Pn -p80 -T4 best {:.3} s, {}/{total} correct", t.0, t.1);
    println!("speed-up vs nmap's best run: {:.1}x (goal >= 10x)", t.0 / o.0);
    flush_lab_neighbours(&iface);
    if started {
        lab_down();
    }
}

const WIDE_CHILD_ENV: &str = "RALPH_BENCH_WIDE_CHILD";

/// One process's share of the wide sweep: `K N CIDR SLOTS` scans part K of N of CIDR.
/// Returns (seconds, hosts, correct).
async fn wide_part(k: usize, n: usize, cidr: &str, slots: &str) -> (f64, usize, usize) {
    let all: Vec<IpAddr> = Targets::parse(cidr).expect("cidr").addresses().collect();
    let part: Vec<IpAddr> = all.chunks(all.len().div_ceil(n)).nth(k).expect("part").to_vec();
    let neighbour = ralph_discovery::NeighbourConfig {
        slot_file: ralph_discovery::SlotFile::Path(slots.into()),
        ..ralph_discovery::NeighbourConfig::default()
    };
    let config = ScanConfig::default().ports(vec![80]).icmp(false).http(None).neighbour(neighbour);
    let scanner = Scanner::new(config).expect("valid scan config");
    let (hosts, summary) = scanner.scan(part).await.expect("scan");
    // The host's own address in the range answers too (port 80 closed there): up either way.
    let correct = hosts.iter().filter(|h| h.state == HostState::Up).count();
    (summary.elapsed_secs, hosts.len(), correct)
}

async fn wide_sweep() {
    let gc3 = ralph_discovery::neighbour::NeighbourLimits::read(false).gc_thresh3;
    println!("== wide lab: /16 of on-link hosts (port 80), gc_thresh3 = {gc3}");
    let Some((_, iface, wide, started)) = lab_up() else {
        println!("skipped: the namespace lab needs root (scripts/services/netlab/up.sh)");
        return;
    };
    let Some(wide) = wide.filter(|w| !w.is_empty()) else {
        println!("skipped: no wide lab (RALPH_TEST_NETLAB_WIDE_CIDR; another lab holds 198.19.0.0/16?)");
        if started {
            lab_down();
        }
        return;
    };
    let total = Targets::parse(&wide).expect("cidr").len() as usize;
    let slots = tempfile::tempdir().expect("tempdir");
    let slot_path = slots.path().join("neighbour-slots");
    let slot_path = slot_path.to_str().expect("utf-8 path");
    let mut one_warm = f64::NAN;
    for run in ["cold", "warm"] {
        flush_lab_neighbours(&iface);
        let fulls = table_fulls();
        let (secs, hosts, correct) = wide_part(0, 1, &wide, slot_path).await;
        one_warm = secs;
        println!(
            "  one process ({run}): {secs:.3} s, {:.0} hosts/s, {correct}/{hosts} of {total} correct, table_fulls +{}",
            total as f64 / secs,
            table_fulls() - fulls
        );
    }
    for run in ["cold", "warm"] {
        flush_lab_neighbours(&iface);
        let fulls = table_fulls();
        let exe = std::env::current_exe().expect("exe");
        let start = Instant::now();
        let children: Vec<_> = (0..2)
            .map(|k| {
                Command::new(&exe)
                    .env(WIDE_CHILD_ENV, format!("{k} 2 {wide} {slot_path}"))
                    .stdout(std::process::Stdio::piped())
                    .spawn()
                    .expect("spawn")
            })
            .collect();
        let mut parts = Vec::new();
        for child in children {
            let out = child.wait_with_output().expect("child");
            parts.push(String::from_utf8_lossy(&out.stdout).trim().to_owned());
        }
        let wall = start.elapsed().as_secs_f64();
        let correct: usize = parts.iter().filter_map(|p| p.split_whitespace().nth(2)?.parse::<usize>().ok()).sum();
        println!(
            "  two processes ({run}): {wall:.3} s wall (process start included), parts [secs hosts correct] {parts:?}, \
             {correct}/{total} correct, table_fulls +{}",
            table_fulls() - fulls
        );
    }
    // nmap on a /20 of it (a /16 takes nmap too long), per host.
    let first20 = format!("{}/20", wide.split('/').next().expect("address"));
    flush_lab_neighbours(&iface);
    let fulls = table_fulls();
    let (secs, open) = nmap(&["-sT", "-Pn", "-p80", "-T4", &first20]);
    let nmap_us = secs / 4096.0 * 1e6;
    let ours_us = one_warm / total as f64 * 1e6;
    println!(
        "  nmap -sT -Pn -p80 -T4 on {first20}: {secs:.3} s, {}/4096 reported open, table_fulls +{}, {nmap_us:.1} us/host",
        open.len(),
        table_fulls() - fulls
    );
    println!(
        "  per host: ours {ours_us:.2} us (one process, /16, warm) vs nmap {nmap_us:.1} us: {:.0}x",
        nmap_us / ours_us
    );
    flush_lab_neighbours(&iface);
    if started {
        lab_down();
    }
}

async fn slash16_sweep() {
    println!("== 127.0.0.0/16 single-port host sweep");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let targets = Targets::parse("127.0.0.0/16").expect("cidr");
    let total = targets.len() as f64;
    let scanner =
        Scanner::new(ScanConfig::default().ports(vec![port]).icmp(false).http(None)).expect("valid scan config");
    let (hosts, summary) = scanner.scan(targets.addresses()).await.expect("scan");
    let answered = hosts.iter().filter(|h| h.state == HostState::Up).count();
    println!(
        "ralph-discovery: {:.3} s, {:.0} hosts/s, {answered} answered",
        summary.elapsed_secs,
        total / summary.elapsed_secs
    );
    // Baseline: the naive way, a tokio connect per host with at most 4,096 at once.
    let tw_before = time_wait_loopback();
    let start = Instant::now();
    let sem = Arc::new(tokio::sync::Semaphore::new(4096));
    let tasks: Vec<_> = targets
        .addresses()
        .map(|ip| {
            let sem = Arc::clone(&sem);
            tokio::spawn(async move {
                let _p = sem.acquire().await;
                tokio::net::TcpStream::connect(SocketAddr::new(ip, port)).await.is_err()
            })
        })
        .collect();
    let mut refused = 0;
    for t in tasks {
        refused += usize::from(t.await.unwrap_or(false));
    }
    let secs = start.elapsed().as_secs_f64();
    println!("naive tokio connect loop: {secs:.3} s, {:.0} hosts/s ({refused} refused)", total / secs);
    println!(
        "speed-up: {:.1}x; TIME_WAIT left by the naive loop on 127.0.0.1: {}",
        secs / summary.elapsed_secs,
        time_wait_loopback().saturating_sub(tw_before)
    );
    drop(listener);
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    if let Ok(spec) = std::env::var(WIDE_CHILD_ENV) {
        let f: Vec<&str> = spec.split_whitespace().collect();
        let (k, n) = (f[0].parse().expect("k"), f[1].parse().expect("n"));
        let (secs, hosts, correct) = rt.block_on(wide_part(k, n, f[2], f[3]));
        println!("{secs:.3} {hosts} {correct}");
        return;
    }
    let have_nmap = ensure_nmap();
    let only = std::env::var("RALPH_BENCH_ONLY").unwrap_or_default();
    let only_wide = only == "wide";
    rt.block_on(async {
        if !have_nmap {
            println!("nmap missing and could not be installed: nmap comparisons skipped");
        } else if only == "ports" {
            port_sweep().await;
            return;
        } else if only_wide {
            wide_sweep().await;
        } else {
            port_sweep().await;
            lab_sweep().await;
            wide_sweep().await;
        }
        if !only_wide {
            slash16_sweep().await;
        }
    });
}
