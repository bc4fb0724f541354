//! SNMP v2c against the real snmpd started by scripts/services/snmpd.

use std::net::SocketAddr;
use std::time::Duration;

use ralph_core::Secret;
use ralph_discovery::Probe;
use ralph_discovery::{ProbeContext, ProbeTimeouts, SnmpProbe};

fn ctx() -> ProbeContext {
    let mut ctx = ProbeContext::standalone(16);
    ctx.timeouts = ProbeTimeouts { read: Duration::from_millis(400), retries: 0, ..ProbeTimeouts::default() };
    ctx
}

#[tokio::test]
async fn sysname_and_sysdescr_are_read_trying_communities_in_order() {
    let addr: SocketAddr = ralph_testkit::require!("RALPH_TEST_SNMP_ADDR").parse().expect("addr");
    let community = ralph_testkit::require!("RALPH_TEST_SNMP_COMMUNITY");
    let name = ralph_testkit::require!("RALPH_TEST_SNMP_SYSNAME");
    let descr = ralph_testkit::require!("RALPH_TEST_SNMP_SYSDESCR");
    let probe =
        SnmpProbe { communities: vec![Secret::new("not-this-one"), Secret::new(community.clone())], port: addr.port() };
    let report = probe.probe(addr.ip(), &ctx()).await;
    let facts = report.snmp.expect("snmp answered");
    assert_eq!(facts.name.as_deref(), Some(name.as_str()));
    assert_eq!(facts.description.as_deref(), Some(descr.as_str()));
    assert_eq!(facts.community.expose(), community, "the community that answered");
    assert_eq!(facts.version, ralph_core::SnmpVersion::V2c);
    assert_eq!(report.alive, Some(true));
    assert!(!format!("{facts:?}").contains(&community), "the community never shows in Debug");
}

#[tokio::test]
async fn wrong_communities_get_no_answer() {
    let addr: SocketAddr = ralph_testkit::require!("RALPH_TEST_SNMP_ADDR").parse().expect("addr");
    let probe = SnmpProbe { communities: vec![Secret::new("public"), Secret::new("private")], port: addr.port() };
    let report = probe.probe(addr.ip(), &ctx()).await;
    assert!(report.snmp.is_none());
    assert!(report.errors.is_empty(), "{:?}", report.errors);
}

#[tokio::test]
async fn a_port_without_agent_is_refused_fast() {
    let _ = ralph_testkit::require!("RALPH_TEST_SNMP_ADDR");
    let free = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    let port = free.local_addr().expect("addr").port();
    drop(free);
    let probe = SnmpProbe { communities: vec![Secret::new("a"), Secret::new("b"), Secret::new("c")], port };
    let start = std::time::Instant::now();
    let report = probe.probe("127.0.0.1".parse().expect("ip"), &ctx()).await;
    assert!(report.snmp.is_none());
    // IP_RECVERR: the ICMP port-unreachable ends the probe instead of three timeouts.
    assert!(start.elapsed() < Duration::from_millis(400), "{:?}", start.elapsed());
}
