//! Autoscan persistence through the in-memory reference store (`ralph_core::testing`): Ralph's
//! rules on the rows, in batches. Enqueueing network scans needs the inventory and is tested
//! with a SQL store in `examples/tests/discovery_store.rs`.

mod common;

use std::net::IpAddr;
use std::sync::Arc;

use ralph_core::IpAddress;
use ralph_core::testing::MemoryStore;
use ralph_discovery::{BatchRecorder, HostState, HttpProbe, ScanConfig, Scanner};

async fn row(store: &MemoryStore, ip: &str) -> Option<IpAddress> {
    let ip: IpAddr = ip.parse().expect("ip");
    store.ip_addresses().into_iter().map(|r| r.value).find(|r| r.address == ip)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn autoscan_rules_produce_the_right_rows() {
    // Dead hosts come from the namespace lab (blackholed, nothing answers).
    let Some(lab) = common::lab() else { return };
    let dead_hosts = lab.hosts(&lab.dead, 3);
    let (dead_new, dead_known) = (dead_hosts[0].to_string(), dead_hosts[2].to_string());
    let store = Arc::new(MemoryStore::new());
    let web = common::http_listener("127.0.0.1:0".parse().expect("addr"), "GoAhead-Webs").await;
    let port = web.port();
    // Known and dead, with facts from an earlier scan.
    let mut known = IpAddress::parse(&dead_known, None).expect("ip");
    known.http_family = Some("Apache".into());
    known.snmp_name = Some("old-name".into());
    store.insert_ip_address(&known).expect("create");

    let targets: Vec<IpAddr> = ["127.0.0.1", "127.0.0.2", dead_new.as_str(), dead_known.as_str()]
        .iter()
        .map(|s| s.parse().expect("ip"))
        .collect();
    // A generous read: on a loaded machine the local web server can take seconds to answer,
    // and a missed answer would lose the host's HTTP family.
    let config = ScanConfig::default().ports(vec![port]).icmp(false).http(Some(HttpProbe::http([port]))).timeouts(
        ralph_discovery::ProbeTimeouts {
            connect: std::time::Duration::from_secs(4),
            read: std::time::Duration::from_secs(20),
            retries: 0,
            ..Default::default()
        },
    );
    let scanner = Scanner::new(config).expect("valid scan config");

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
