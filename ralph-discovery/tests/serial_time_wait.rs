//! At least 5,000 open loopback endpoints swept with TCP and HTTP probes leave no socket in
//! TIME_WAIT: every probe socket is closed with SO_LINGER 0. Host-wide counter: `serial_`.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use std::time::Duration;

use ralph_discovery::{HostState, HttpProbe, ProbeTimeouts, ScanConfig, Scanner};
use tokio::io::AsyncWriteExt;

const ENDPOINTS: u16 = 5_000;

fn endpoint(i: u16) -> IpAddr {
    // 127.77.0.1 .. 127.77.19.250: the whole of 127/8 is local, each address its own endpoint.
    IpAddr::V4(Ipv4Addr::new(127, 77, (i / 250) as u8, (i % 250 + 1) as u8))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serial_sweep_of_5000_loopback_endpoints_leaves_no_time_wait() {
    let limit = common::raise_nofile();
    assert!(limit >= 12_000, "RLIMIT_NOFILE hard limit {limit} is too low for 5,000 listeners plus probes");
    let first = common::http_listener(SocketAddr::new(endpoint(0), 0), "Apache/2.4 (lab)").await;
    let port = first.port();
    let mut targets = vec![first.ip()];
    for i in 1..ENDPOINTS {
        targets.push(common::http_listener(SocketAddr::new(endpoint(i), port), "Apache/2.4 (lab)").await.ip());
    }
    let ours = |local: SocketAddr, remote: SocketAddr| {
        [local, remote]
            .iter()
            .any(|a| a.port() == port && matches!(a.ip(), IpAddr::V4(v) if v.octets()[..2] == [127, 77]))
    };
    let before = ralph_testkit::time_wait(ours);

    // Generous timeouts: this test counts TIME_WAIT, and the suite runs it beside CPU-heavy
    // tests (argon2 logins) on two cores, where a 2 s HTTP read once ran out.
    let timeouts =
        ProbeTimeouts { connect: Duration::from_secs(10), read: Duration::from_secs(20), ..Default::default() };
    let config = ScanConfig::default()
        .ports(vec![port])
        .icmp(false)
        .http(Some(HttpProbe::http([port])))
        .max_sockets(2048)
        .timeouts(timeouts);
    let (hosts, summary) = Scanner::new(config).scan(targets.clone()).await.expect("scan");
    assert_eq!(hosts.len(), usize::from(ENDPOINTS));
    let down: Vec<_> = hosts.iter().filter(|h| !(h.state == HostState::Up && h.open_ports == [port])).collect();
    assert!(down.is_empty(), "{} endpoints not up with the port open, first: {:?}", down.len(), down.first());
    let mute = hosts.iter().filter(|h| h.http_family.as_deref() != Some("Apache")).count();
    assert_eq!(mute, 0, "HTTP answered by every endpoint ({mute} did not; summary {summary:?})");
    assert!(summary.attempts >= 2 * u64::from(ENDPOINTS), "a TCP and an HTTP connection per endpoint");
    assert_eq!(ralph_testkit::time_wait(ours), before, "the engine left sockets in TIME_WAIT");

    // Control, so the count above can fail: an ordinary client close of 20 connections does
    // leave TIME_WAIT behind.
    let control = common::http_listener("127.78.0.1:0".parse().expect("addr"), "x").await;
    for _ in 0..20 {
        let mut s = tokio::net::TcpStream::connect(control).await.expect("connect");
        s.shutdown().await.expect("shutdown");
        drop(s);
    }
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let control_tw = ralph_testkit::time_wait(|local, remote| local == control || remote == control);
    assert!(control_tw > 0, "control: a normal close should leave TIME_WAIT");
}
