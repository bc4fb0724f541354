//! Autoscan persistence through a real store (SQLite file): Ralph's rules on the rows, batches,
//! buried addresses skipped, jobs enqueued per environment queue.

mod common;

use std::net::IpAddr;
use std::sync::Arc;

use ralph_core::{DataCenter, InventoryStore, IpAddress, JobQueue, Network, NetworkEnvironment, Repository};
use ralph_discovery::{BatchRecorder, HostState, HttpProbe, ScanConfig, ScanJob, Scanner, enqueue_network};
use ralph_store::SqliteStore;

async fn store() -> (tempfile::TempDir, Arc<SqliteStore>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("ralph.db").display());
    let store = SqliteStore::connect(&url).await.expect("connect");
    store.migrate().await.expect("migrate");
    (dir, Arc::new(store))
}

async fn row(store: &SqliteStore, ip: &str) -> Option<IpAddress> {
    store.find_ip(ip.parse().expect("ip")).await.expect("find_ip").map(|r| r.value)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn autoscan_rules_produce_the_right_rows() {
    // Dead hosts come from the namespace lab (blackholed, nothing answers).
    let Some(lab) = common::lab() else { return };
    let dead_hosts = lab.hosts(&lab.dead, 3);
    let (dead_new, dead_known) = (dead_hosts[0].to_string(), dead_hosts[2].to_string());
    let (_dir, store) = store().await;
    let web = common::http_listener("127.0.0.1:0".parse().expect("addr"), "GoAhead-Webs").await;
    let port = web.port();
    // Known and dead, with facts from an earlier scan.
    let mut known = IpAddress::parse(&dead_known, None).expect("ip");
    known.http_family = Some("Apache".into());
    known.snmp_name = Some("old-name".into());
    Repository::<IpAddress>::create(&*store, &known).await.expect("create");

    let targets: Vec<IpAddr> = ["127.0.0.1", "127.0.0.2", dead_new.as_str(), dead_known.as_str()]
        .iter()
        .map(|s| s.parse().expect("ip"))
        .collect();
    let config = ScanConfig::default().ports(vec![port]).icmp(false).http(Some(HttpProbe::http([port]))).timeouts(
        ralph_discovery::ProbeTimeouts { connect: std::time::Duration::from_secs(4), retries: 0, ..Default::default() },
    );
    let scanner = Scanner::new(config);

    for round in 1..=2u32 {
        let (hosts, _) = scanner.scan(targets.clone()).await.expect("scan");
        let state = |ip: &str| hosts.iter().find(|h| h.address.to_string() == ip).map(|h| h.state);
        assert_eq!(state("127.0.0.1"), Some(HostState::Up));
        assert_eq!(state(&dead_known), Some(HostState::Down));
        let mut recorder = BatchRecorder::new(Arc::clone(&store)).batch(3);
        for h in &hosts {
            recorder.push(h).await.expect("push");
        }
        recorder.flush().await.expect("flush");
        assert_eq!(recorder.recorded(), 4);

        let alive = row(&store, "127.0.0.1").await.expect("alive host inserted");
        assert!(alive.last_seen.is_some());
        assert_eq!(alive.dead_ping_count, 0);
        assert_eq!(alive.http_family.as_deref(), Some("Thomas-Krenn"));
        let checksum = alive.scan_checksum.clone().expect("checksum stored");
        assert_eq!(checksum, hosts.iter().find(|h| h.address == web.ip()).expect("host").checksum());
        assert!(row(&store, "127.0.0.2").await.expect("alive, port closed").last_seen.is_some());
        assert!(row(&store, &dead_new).await.is_none(), "unknown dead addresses are not inserted");

        let dead = row(&store, &dead_known).await.expect("known dead host");
        assert_eq!(dead.dead_ping_count, round);
        assert!(dead.last_seen.is_none());
        if round == 1 {
            assert_eq!(dead.http_family.as_deref(), Some("Apache"), "facts kept below the dead-ping limit");
            assert_eq!(dead.snmp_name.as_deref(), Some("old-name"));
        } else {
            assert_eq!((dead.http_family, dead.snmp_name), (None, None), "facts cleared at the limit (2)");
        }
    }
}

#[tokio::test]
async fn network_scans_are_enqueued_on_the_environment_queue_without_buried_addresses() {
    let (_dir, store) = store().await;
    let dc = Repository::<DataCenter>::create(&*store, &DataCenter::new("dc1", None).expect("dc")).await.expect("dc");
    let env = NetworkEnvironment::new("lab", dc).expect("env");
    let queue_name = env.queue.clone();
    let env = Repository::<NetworkEnvironment>::create(&*store, &env).await.expect("env");
    let mut net = Network::new("loop", "127.0.5.0/28").expect("net");
    net.environment = Some(env);
    let net = Repository::<Network>::create(&*store, &net).await.expect("net");
    let mut buried = IpAddress::parse("127.0.5.7", None).expect("ip");
    buried.is_buried = true;
    Repository::<IpAddress>::create(&*store, &buried).await.expect("buried");

    let ids = enqueue_network(&*store, &*store, net, 5).await.expect("enqueue");
    assert_eq!(ids.len(), 3, "13 addresses in groups of 5");
    let jobs = store.claim(&queue_name, 10, std::time::Duration::from_secs(30), "t").await.expect("claim");
    let mut all: Vec<IpAddr> = Vec::new();
    for job in &jobs {
        let payload: ScanJob = serde_json::from_str(&job.payload).expect("payload");
        assert!(payload.addresses.len() <= 5);
        all.extend(payload.addresses);
    }
    all.sort();
    let expected: Vec<IpAddr> = (1..=14u8).filter(|i| *i != 7).map(|i| IpAddr::from([127, 0, 5, i])).collect();
    assert_eq!(all, expected, "every host of the /28 but the buried one");
    let env_ids = ralph_discovery::enqueue_environment(&*store, &*store, env, 100).await.expect("env enqueue");
    assert_eq!(env_ids.len(), 1);
}
