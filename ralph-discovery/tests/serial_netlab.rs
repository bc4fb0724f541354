//! Sweeps of the network-namespace lab (scripts/services/netlab): 4,094 on-link hosts at the
//! kernel's default neighbour thresholds, with and without deleting the created entries.
//! These touch the host-wide neighbour table, so they run one at a time (`serial_`).

mod common;

use std::net::IpAddr;
use std::time::Duration;

use common::{Lab, lab};

use ralph_discovery::neighbour::{NeighbourLimits, NeighbourStats};
use ralph_discovery::{HostState, NeighbourConfig, ScanConfig, Scanner, Targets};

/// Neighbour entries on the lab interface now.
fn lab_entries(iface: &str) -> usize {
    std::fs::read_to_string("/proc/net/arp")
        .map(|t| t.lines().skip(1).filter(|l| l.split_whitespace().last() == Some(iface)).count())
        .unwrap_or(0)
}

/// Starts each sweep from the same place: the lab interface's neighbour entries (ours only)
/// are flushed, so earlier tests' leftovers do not shrink the budget.
async fn settle(iface: &str) {
    let _ = std::process::Command::new("ip").args(["neigh", "flush", "dev", iface]).status();
    for _ in 0..100 {
        if lab_entries(iface) < 64 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn sweep(lab: &Lab, targets: Vec<IpAddr>, neighbour: NeighbourConfig) {
    let slots_dir = tempfile::tempdir().expect("tempdir");
    let neighbour = NeighbourConfig { slot_file: common::slot_config(&slots_dir).slot_file, ..neighbour };
    settle(&lab.iface).await;
    let limits = NeighbourLimits::read(false);
    lab.check(&targets);
    let total = targets.len() as u128;
    assert!(total > u128::from(limits.gc_thresh3), "the sweep must be larger than the neighbour table");
    let before = NeighbourStats::read(false).expect("arp_cache");
    let config = ScanConfig::default().ports(vec![lab.open, lab.closed]).icmp(false).http(None).neighbour(neighbour);
    let (hosts, summary) = Scanner::new(config).expect("valid scan config").scan(targets).await.expect("scan");
    let after = NeighbourStats::read(false).expect("arp_cache");
    let false_down: Vec<IpAddr> = hosts.iter().filter(|h| h.state != HostState::Up).map(|h| h.address).collect();
    assert_eq!(hosts.len() as u128, total);
    assert!(
        false_down.is_empty(),
        "{} hosts wrongly not up, e.g. {:?}",
        false_down.len(),
        &false_down[..false_down.len().min(5)]
    );
    assert!(
        hosts.iter().all(|h| h.open_ports == [lab.open] && h.closed_ports == [lab.closed]),
        "every host: lab port open, the other closed"
    );
    assert_eq!(after.table_fulls, before.table_fulls, "neighbour table overflowed");
    assert_eq!(summary.table_fulls_delta, 0);
    eprintln!("lab sweep: {summary:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serial_lab_sweep_of_4094_on_link_hosts_deleting_entries() {
    let Some(lab) = lab() else { return };
    assert_eq!(Targets::parse(&lab.cidr).expect("cidr").len(), 4094, "the lab is a /20");
    sweep(&lab, lab.hosts(&lab.cidr, 4094), NeighbourConfig::default()).await;
    // Deleted as hosts finished: the table holds (almost) nothing of the sweep.
    assert!(lab_entries(&lab.iface) < 64, "entries left: {}", lab_entries(&lab.iface));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serial_lab_sweep_paced_by_budget_without_deleting() {
    let Some(lab) = lab() else { return };
    // As a process without CAP_NET_ADMIN would: entries stay, slots are held until the kernel
    // may collect them (~51 s at the default base_reachable_time), so this sweeps 1,500 hosts,
    // still more than gc_thresh3 (1024), in two rounds.
    let first = lab.hosts(&lab.cidr, 1500);
    sweep(&lab, first, NeighbourConfig { delete_entries: false, ..NeighbourConfig::default() }).await;
    // Leave the table as we found it for the next test (our lab interface only).
    let _ = std::process::Command::new("ip").args(["neigh", "flush", "dev", &lab.iface]).status();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serial_lab_hosts_that_do_not_exist_are_down() {
    let Some(lab) = lab() else { return };
    // The lab's dead range is on-link (the host side holds a /19) but blackholed inside the
    // namespace: nothing answers ARP for it, the hosts are down.
    let targets = lab.hosts(&lab.dead, 6);
    let config = ScanConfig::default()
        .ports(vec![lab.open])
        .icmp(false)
        .http(None)
        .timeouts(ralph_discovery::ProbeTimeouts { connect: Duration::from_secs(4), retries: 0, ..Default::default() });
    let (hosts, summary) = Scanner::new(config).expect("valid scan config").scan(targets).await.expect("scan");
    assert_eq!(hosts.len(), 6);
    assert!(hosts.iter().all(|h| h.state == HostState::Down), "{hosts:?}");
    assert_eq!(summary.down, 6);
}

fn ip(args: &[&str]) {
    let status = std::process::Command::new("ip").args(args).status().expect("ip");
    assert!(status.success(), "ip {args:?}");
}

/// The lab interface's neighbour entries of both families, one `ip neigh` line each.
fn neigh_lines(iface: &str) -> Vec<String> {
    let out = std::process::Command::new("ip")
        .args(["neigh", "show", "nud", "all", "dev", iface])
        .output()
        .expect("ip neigh");
    String::from_utf8_lossy(&out.stdout).lines().map(str::to_owned).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serial_release_deletes_only_entries_the_scan_created_of_both_families() {
    use ralph_discovery::neighbour::NeighbourGuard;
    let Some(lab) = lab() else { return };
    // Hosts of the lab's blackholed range (on-link, nothing answers) and of a /64 of the IPv6
    // benchmarking range (2001:2::/48, RFC 5180) added to the lab interface for the test, so
    // IPv6 (NDP) entries are covered too.
    let v4 = lab.hosts(&lab.dead, 8);
    let v6_net = "2001:2:0:52::1/64";
    let _ = std::process::Command::new("ip").args(["-6", "addr", "del", v6_net, "dev", &lab.iface]).status();
    ip(&["-6", "addr", "add", v6_net, "dev", &lab.iface, "nodad"]);
    let v6: Vec<IpAddr> = (2..=5u16).map(|i| IpAddr::from([0x2001, 0x2, 0, 0x52, 0, 0, 0, i])).collect();
    let mac = "02:00:5e:00:53:01";
    let add = |ip: IpAddr, nud: &str| {
        let family = if ip.is_ipv6() { "-6" } else { "-4" };
        let ip = ip.to_string();
        self::ip(&[family, "neigh", "replace", &ip, "lladdr", mac, "nud", nud, "dev", &lab.iface]);
    };
    // Before the scan: a dynamic and a PERMANENT entry of each family.
    let before = [(v4[0], "stale"), (v4[1], "permanent"), (v6[0], "stale"), (v6[1], "permanent")];
    for (ip, nud) in before {
        add(ip, nud);
    }
    let slots_dir = tempfile::tempdir().expect("tempdir");
    let guard = NeighbourGuard::new(&common::slot_config(&slots_dir)).expect("guard");
    assert!(guard.deletes_entries(), "root: entries are deleted");
    let scope = guard.scope();
    let targets = [v4[0], v4[1], v4[2], v4[3], v4[4], v6[0], v6[1], v6[2], v6[3]];
    let mut slots = Vec::new();
    for t in targets {
        slots.push(scope.admit(t).await.expect("on-link through the lab"));
    }
    // During the scan: entries the scan created (v4[2], v6[2]), and ones an administrator
    // made static meanwhile (v4[3] PERMANENT, v4[4] NOARP, v6[3] PERMANENT).
    for (ip, nud) in [(v4[2], "stale"), (v6[2], "stale"), (v4[3], "permanent"), (v4[4], "noarp"), (v6[3], "permanent")]
    {
        add(ip, nud);
    }
    for slot in slots {
        scope.release(slot).await;
    }
    let lines = neigh_lines(&lab.iface);
    let present = |ip: IpAddr| lines.iter().any(|l| l.split_whitespace().next() == Some(&ip.to_string()));
    for kept in [v4[0], v4[1], v4[3], v4[4], v6[0], v6[1], v6[3]] {
        assert!(present(kept), "{kept} must stay: {lines:?}");
    }
    for gone in [v4[2], v6[2]] {
        assert!(!present(gone), "{gone} was created by the scan and must be deleted: {lines:?}");
    }
    assert_eq!(scope.deleted(), 2);
    assert_eq!(guard.in_use(), 0, "every slot given back");
    for t in targets {
        let family = if t.is_ipv6() { "-6" } else { "-4" };
        let _ =
            std::process::Command::new("ip").args([family, "neigh", "del", &t.to_string(), "dev", &lab.iface]).status();
    }
    ip(&["-6", "addr", "del", v6_net, "dev", &lab.iface]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serial_eight_hundred_releases_at_once_all_delete_their_entries() {
    use ralph_discovery::neighbour::NeighbourGuard;
    let Some(lab) = lab() else { return };
    settle(&lab.iface).await;
    let slots_dir = tempfile::tempdir().expect("tempdir");
    let guard = NeighbourGuard::new(&common::slot_config(&slots_dir)).expect("guard");
    assert!(guard.deletes_entries(), "root: entries are deleted");
    let scope = guard.scope();
    // Within the process's budget (the table's size less the reserve: 896 at the defaults).
    let targets = lab.hosts(&lab.cidr, 800);
    let mut slots = Vec::new();
    // The guard's netlink socket opens at the first admission: with the host's default receive
    // buffer at its smallest, as on a host tuned low, unless the guard sizes its own.
    struct Restore(String);
    impl Drop for Restore {
        fn drop(&mut self) {
            let _ = std::fs::write(RMEM_DEFAULT, self.0.trim());
        }
    }
    const RMEM_DEFAULT: &str = "/proc/sys/net/core/rmem_default";
    let restore = Restore(std::fs::read_to_string(RMEM_DEFAULT).expect("rmem_default"));
    std::fs::write(RMEM_DEFAULT, "4096").expect("lower rmem_default");
    let first = tokio::time::timeout(Duration::from_secs(10), scope.admit(targets[0])).await;
    drop(restore);
    slots.push(first.expect("admitted at once").expect("on-link through the lab"));
    for t in &targets[1..] {
        let slot = tokio::time::timeout(Duration::from_secs(10), scope.admit(*t)).await.expect("admitted at once");
        slots.push(slot.expect("on-link through the lab"));
    }
    // The hosts' entries, as their probes would have made them.
    let batch: String = targets
        .iter()
        .map(|t| format!("neigh replace {t} lladdr 02:00:5e:00:53:02 nud stale dev {}\n", lab.iface))
        .collect();
    let mut ip = std::process::Command::new("ip")
        .args(["-batch", "-"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("ip -batch");
    std::io::Write::write_all(&mut ip.stdin.take().expect("stdin"), batch.as_bytes()).expect("write batch");
    assert!(ip.wait().expect("ip").success());
    for slot in &slots {
        slot.sent();
    }
    // Every host done at once, as at the end of a fast sweep's window: before, 800 netlink
    // requests in flight overflowed the socket's receive buffer, the kernel dropped replies
    // and the releases waiting for them never ended.
    let releases = futures::future::join_all(slots.into_iter().map(|slot| scope.release(slot)));
    tokio::time::timeout(Duration::from_secs(60), releases).await.expect("every release ends");
    assert_eq!(scope.deleted(), 800, "every entry the hosts made is deleted");
    assert_eq!(guard.in_use(), 0, "every slot given back at once");
    assert!(lab_entries(&lab.iface) < 64, "entries left: {}", lab_entries(&lab.iface));
}

/// Every host of `hosts` up with the lab's open port open and its closed port closed.
fn wrong_hosts(lab: &Lab, hosts: &[ralph_discovery::HostResult]) -> Vec<IpAddr> {
    hosts
        .iter()
        .filter(|h| h.state != HostState::Up || h.open_ports != [lab.open] || h.closed_ports != [lab.closed])
        .map(|h| h.address)
        .collect()
}

const HALF_CHILD_ENV: &str = "RALPH_LAB_HALF_CHILD";
/// When set, the child builds its scanner, creates `<this>.ready` and waits for this file
/// before it scans.
const HALF_GO_ENV: &str = "RALPH_LAB_HALF_GO";

/// The child's half of the two-process sweeps: `K N DELETE PATH` scans half `K` of the lab's
/// first `N` hosts with the default settings (entries deleted or not) and the slot file given,
/// and prints what it found.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "child process of the serial_two_processes_* tests"]
async fn serial_lab_half_child() {
    let spec = std::env::var(HALF_CHILD_ENV).expect("run by the parent test");
    let f: Vec<&str> = spec.splitn(4, ' ').collect();
    let (k, n, delete, path): (usize, usize, bool, &str) =
        (f[0].parse().expect("half"), f[1].parse().expect("count"), f[2] == "delete", f[3]);
    let lab = lab().expect("the parent saw the lab");
    let all = lab.hosts(&lab.cidr, n);
    let half: Vec<IpAddr> = all.chunks(n.div_ceil(2)).nth(k).expect("half").to_vec();
    let neighbour = NeighbourConfig {
        slot_file: ralph_discovery::SlotFile::Path(path.into()),
        delete_entries: delete,
        ..NeighbourConfig::default()
    };
    let config = ScanConfig::default().ports(vec![lab.open, lab.closed]).icmp(false).http(None).neighbour(neighbour);
    let scanner = Scanner::new(config).expect("valid scan config");
    if let Ok(go) = std::env::var(HALF_GO_ENV) {
        std::fs::write(format!("{go}.ready"), "").expect("ready file");
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        while !std::path::Path::new(&go).exists() {
            assert!(std::time::Instant::now() < deadline, "no go file: the parent gave up");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let (hosts, summary) = scanner.scan(half.clone()).await.expect("scan");
    let wrong = wrong_hosts(&lab, &hosts);
    let examples: Vec<String> =
        hosts.iter().filter(|h| wrong.contains(&h.address)).take(3).map(|h| format!("{h:?}")).collect();
    let out = serde_json::json!({
        "targets": half.len(),
        "hosts": hosts.len(),
        "wrong": wrong.len(),
        "wrong_examples": examples,
        "summary": format!("{summary:?}"),
        "elapsed_secs": summary.elapsed_secs,
        "neighbour_budget": scanner.resources().neighbour().budget(false),
    });
    println!("RESULT {out}");
}

/// How the two children of [`two_processes`] overlap.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Overlap {
    /// Both scan at once.
    Together,
    /// The second builds its scanner (sizing its budget to the empty table), then waits until
    /// the first has scanned and exited, leaving its fresh entries behind and its host-wide
    /// slots free.
    AfterTheFirstExits,
}

/// Runs two child scanner processes, each on one half of the lab's first `n` hosts, sharing
/// only a host-wide slot file; checks every host and that the table never overflowed.
async fn two_processes(lab: &Lab, n: usize, delete: bool, overlap: Overlap) {
    settle(&lab.iface).await;
    let slots = tempfile::tempdir().expect("tempdir");
    let path = slots.path().join("neighbour-slots");
    let go = slots.path().join("go");
    let before = NeighbourStats::read(false).expect("arp_cache");
    let exe = std::env::current_exe().expect("exe");
    let mode = if delete { "delete" } else { "keep" };
    let child = |k: usize| {
        let mut command = tokio::process::Command::new(&exe);
        command
            .args(["serial_lab_half_child", "--exact", "--ignored", "--nocapture", "--test-threads", "1"])
            .env(HALF_CHILD_ENV, format!("{k} {n} {mode} {}", path.display()));
        if overlap == Overlap::AfterTheFirstExits && k == 1 {
            command.env(HALF_GO_ENV, &go);
        }
        // A parent that fails does not leave a child scanning (or waiting) behind.
        command.kill_on_drop(true);
        async move { tokio::time::timeout(Duration::from_secs(300), command.output()).await.expect("child process ends") }
    };
    let outputs = match overlap {
        Overlap::Together => futures::future::join_all((0..2).map(child)).await,
        Overlap::AfterTheFirstExits => {
            let second = tokio::spawn(child(1));
            let ready = go.with_extension("ready");
            for _ in 0..6000 {
                if ready.exists() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            assert!(ready.exists(), "the second child built its scanner");
            let first = child(0).await;
            std::fs::write(&go, "").expect("go file");
            vec![first, second.await.expect("second child")]
        }
    };
    let after = NeighbourStats::read(false).expect("arp_cache");
    let mut covered = 0;
    for output in outputs {
        let output = output.expect("run child");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "child failed: {stdout}\n{}", String::from_utf8_lossy(&output.stderr));
        let line = stdout.lines().find_map(|l| l.split_once("RESULT ").map(|(_, r)| r)).expect("a result");
        let r: serde_json::Value = serde_json::from_str(line).expect("json");
        eprintln!("half ({mode}): {r}");
        assert_eq!(r["hosts"], r["targets"], "{r}");
        assert_eq!(r["wrong"], 0, "{r}");
        covered += r["hosts"].as_u64().expect("count");
    }
    assert_eq!(covered, n as u64, "the two halves cover the range");
    assert_eq!(after.table_fulls, before.table_fulls, "neighbour table overflowed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serial_two_processes_sweep_one_20_together_within_the_neighbour_table() {
    let Some(lab) = lab() else { return };
    // 2,047 hosts each, both more than the table holds: before, two processes overflowed it
    // (table_fulls +765), each sizing itself to the whole free table.
    two_processes(&lab, 4094, true, Overlap::Together).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serial_two_processes_that_keep_their_entries_share_the_host_wide_budget() {
    let Some(lab) = lab() else { return };
    // Without CAP_NET_ADMIN's deletes, two processes of 750 hosts each (each within the free
    // table alone, 1,500 together beyond it). The second sized its budget while the table was
    // empty and starts once the first has exited: the first's slots are free again (the kernel
    // dropped its locks) but its 750 fresh entries fill the table until the kernel collects them
    // (about a minute). Before admission counted its not-yet-sent hosts on top of the live
    // table, the second admitted hundreds faster than their entries appeared and overflowed
    // the table (CI: 129 and 477 of 750 hosts wrong; table_fulls +8 on a loaded machine).
    two_processes(&lab, 1500, false, Overlap::AfterTheFirstExits).await;
    let _ = std::process::Command::new("ip").args(["neigh", "flush", "dev", &lab.iface]).status();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serial_four_concurrent_scans_of_one_process_sweep_one_20_within_the_neighbour_table() {
    let Some(lab) = lab() else { return };
    settle(&lab.iface).await;
    let slots = tempfile::tempdir().expect("tempdir");
    let config = ScanConfig::default()
        .ports(vec![lab.open, lab.closed])
        .icmp(false)
        .http(None)
        .neighbour(common::slot_config(&slots));
    let scanner = Scanner::new(config).expect("valid scan config");
    let all = lab.hosts(&lab.cidr, 4094);
    let before = NeighbourStats::read(false).expect("arp_cache");
    // Four scans at once (as four worker jobs would run), a quarter of the /20 each: every one
    // larger than the free table alone would allow.
    let scans = all.chunks(all.len().div_ceil(4)).map(|quarter| {
        let (scanner, quarter) = (scanner.clone(), quarter.to_vec());
        tokio::spawn(async move { scanner.scan(quarter).await })
    });
    let mut hosts = Vec::new();
    for scan in futures::future::join_all(scans).await {
        hosts.extend(scan.expect("task").expect("scan").0);
    }
    let after = NeighbourStats::read(false).expect("arp_cache");
    assert_eq!(hosts.len(), 4094);
    let wrong = wrong_hosts(&lab, &hosts);
    assert!(wrong.is_empty(), "{} hosts wrong, e.g. {:?}", wrong.len(), &wrong[..wrong.len().min(5)]);
    assert_eq!(after.table_fulls, before.table_fulls, "neighbour table overflowed");
    assert_eq!(scanner.resources().neighbour().in_use(), 0, "every slot given back");
    assert_eq!(scanner.resources().sockets().in_use(), 0);
}

/// A host app's probe that panics on every seventh host.
#[derive(Debug)]
struct PanicsOnSomeHosts;

#[async_trait::async_trait]
impl ralph_discovery::Probe for PanicsOnSomeHosts {
    fn name(&self) -> &str {
        "panicky"
    }
    fn stage(&self) -> ralph_discovery::Stage {
        ralph_discovery::Stage::Alive
    }
    async fn probe(&self, target: IpAddr, _ctx: &ralph_discovery::ProbeContext) -> ralph_discovery::ProbeReport {
        let IpAddr::V4(v4) = target else { return ralph_discovery::ProbeReport::default() };
        assert!(u32::from(v4) % 7 != 0, "host app bug at {target}");
        ralph_discovery::ProbeReport::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serial_a_panicking_probe_gives_its_neighbour_slot_back() {
    let Some(lab) = lab() else { return };
    settle(&lab.iface).await;
    let slots = tempfile::tempdir().expect("tempdir");
    let config = ScanConfig::default()
        .ports(vec![lab.open, lab.closed])
        .icmp(false)
        .http(None)
        .neighbour(common::slot_config(&slots))
        .probe(std::sync::Arc::new(PanicsOnSomeHosts));
    let scanner = Scanner::new(config).expect("valid scan config");
    let targets = lab.hosts(&lab.cidr, 4094);
    let before = NeighbourStats::read(false).expect("arp_cache");
    let (hosts, _) = tokio::time::timeout(Duration::from_secs(120), scanner.scan(targets))
        .await
        .expect("the scan ends")
        .expect("scan");
    let after = NeighbourStats::read(false).expect("arp_cache");
    assert_eq!(hosts.len(), 4094);
    let wrong = wrong_hosts(&lab, &hosts);
    assert!(wrong.is_empty(), "{} hosts wrong, e.g. {:?}", wrong.len(), &wrong[..wrong.len().min(5)]);
    for h in &hosts {
        let IpAddr::V4(v4) = h.address else { unreachable!() };
        assert_eq!(h.errors.iter().any(|e| e.contains("probe panicked")), u32::from(v4) % 7 == 0, "{h:?}");
    }
    assert_eq!(after.table_fulls, before.table_fulls, "neighbour table overflowed");
    let guard = scanner.resources().neighbour();
    assert_eq!(guard.in_use(), 0, "every neighbour slot given back, the panicked hosts' too");
    assert_eq!(guard.host_slots(false).expect("slot file").held(), 0, "and every host-wide slot");
    assert!(lab_entries(&lab.iface) < 64, "the panicked hosts' entries were deleted too: {}", lab_entries(&lab.iface));
}
