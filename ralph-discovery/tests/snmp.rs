//! SNMP v2c against the real snmpd started by scripts/services/snmpd.

use std::net::SocketAddr;
use std::time::Duration;

use ralph_core::Secret;
use ralph_discovery::Probe;
use ralph_discovery::{ProbeContext, ProbeTimeouts, SnmpProbe};

/// A probe context waiting `read` for each answer.
fn ctx(read: Duration) -> ProbeContext {
    let mut ctx = ProbeContext::standalone(16);
    ctx.timeouts = ProbeTimeouts { read, retries: 0, ..ProbeTimeouts::default() };
    ctx
}

/// Long enough for an answer that must come, even on a loaded machine.
const ANSWER: Duration = Duration::from_secs(5);

#[tokio::test]
async fn sysname_and_sysdescr_are_read_trying_communities_in_order() {
    let addr: SocketAddr = ralph_testkit::require!("RALPH_TEST_SNMP_ADDR").parse().expect("addr");
    let community = ralph_testkit::require!("RALPH_TEST_SNMP_COMMUNITY");
    let name = ralph_testkit::require!("RALPH_TEST_SNMP_SYSNAME");
    let descr = ralph_testkit::require!("RALPH_TEST_SNMP_SYSDESCR");
    let probe =
        SnmpProbe { communities: vec![Secret::new("not-this-one"), Secret::new(community.clone())], port: addr.port() };
    let report = probe.probe(addr.ip(), &ctx(ANSWER)).await;
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
    // No answer is expected, so a short wait cannot fail this test.
    let report = probe.probe(addr.ip(), &ctx(Duration::from_millis(400))).await;
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
    let report = probe.probe("127.0.0.1".parse().expect("ip"), &ctx(Duration::from_secs(10))).await;
    assert!(report.snmp.is_none());
    // IP_RECVERR: the ICMP port-unreachable ends the probe instead of three 10 s timeouts.
    assert!(start.elapsed() < Duration::from_secs(5), "{:?}", start.elapsed());
}

#[tokio::test]
async fn an_oversized_reply_is_an_error_without_the_community() {
    // A UDP peer on loopback answering every datagram with 5,000 bytes: more than the 4 KiB
    // read, so the reply would be truncated.
    let peer = tokio::net::UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let addr = peer.local_addr().expect("addr");
    tokio::spawn(async move {
        let mut buf = [0u8; 1500];
        while let Ok((_, from)) = peer.recv_from(&mut buf).await {
            let _ = peer.send_to(&[0x30; 5000], from).await;
        }
    });
    let probe = SnmpProbe { communities: vec![Secret::new("s3cret-community")], port: addr.port() };
    let report = probe.probe(addr.ip(), &ctx(ANSWER)).await;
    assert!(report.snmp.is_none());
    assert_eq!(report.errors.len(), 1, "{:?}", report.errors);
    assert!(report.errors[0].contains("larger than 4096 bytes"), "{:?}", report.errors);
    assert!(!report.errors[0].contains("s3cret"), "the community never shows in errors");
}
