//! Scans of real loopback listeners: TCP states, HTTP family, ICMP, progress, host-app
//! probes, and the ENOBUFS storm through the injection seam.

mod common;

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use ralph_discovery::{
    Connector, HostState, HttpProbe, IcmpProbe, Probe, ProbeContext, ProbeReport, ProbeTimeouts, RateConfig,
    ScanConfig, Scanner, Stage, SystemConnector, Targets,
};
use tokio::net::TcpStream;

const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_sweep_reports_open_and_closed_ports_of_real_listeners() {
    let mut open = Vec::new();
    for _ in 0..50 {
        open.push(common::http_listener("127.0.0.1:0".parse().expect("addr"), "nginx/1.25").await.port());
    }
    let closed: Vec<u16> = (0..20).map(|_| common::closed_port()).collect();
    let mut ports: Vec<u16> = open.iter().chain(&closed).copied().collect();
    ports.sort_unstable();
    let scanner = Scanner::new(ScanConfig::default().ports(ports).icmp(false).http(None)).expect("valid scan config");
    let (hosts, summary) = scanner.scan([LOCALHOST]).await.expect("scan");
    assert_eq!(hosts.len(), 1);
    let host = &hosts[0];
    assert_eq!(host.state, HostState::Up);
    open.sort_unstable();
    let mut closed = closed;
    closed.sort_unstable();
    assert_eq!(host.open_ports, open);
    assert_eq!(host.closed_ports, closed);
    assert_eq!((summary.up, summary.down, summary.unknown), (1, 0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_family_is_read_from_the_server_header() {
    let a = common::http_listener("127.0.0.1:0".parse().expect("addr"), "GoAhead-Webs").await;
    let b = common::http_listener("127.0.0.2:0".parse().expect("addr"), "Sun-ILOM-Web-Server/1.0").await;
    let c = common::http_listener("127.0.0.3:0".parse().expect("addr"), "Apache/2.4.57 (Debian)").await;
    for (addr, family) in [(a, "Thomas-Krenn"), (b, "Sun"), (c, "Apache")] {
        // A generous read: on a loaded machine the local server can take seconds to answer.
        let timeouts = ProbeTimeouts { read: Duration::from_secs(20), ..ProbeTimeouts::default() };
        let config = ScanConfig::default()
            .ports(vec![addr.port()])
            .icmp(false)
            .http(Some(HttpProbe::http([common::closed_port(), addr.port()])))
            .timeouts(timeouts);
        let (hosts, _) = Scanner::new(config).expect("valid scan config").scan([addr.ip()]).await.expect("scan");
        assert_eq!(hosts[0].http_family.as_deref(), Some(family), "{addr}");
        assert!(hosts[0].observation().expect("observation").http_family.is_some());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn icmp_echo_answers_on_loopback() {
    // Datagram ICMP when ping_group_range allows, raw as root, else the TCP fallback to a
    // real listener: in every case 127.0.0.1 must come out alive.
    let l = common::http_listener("127.0.0.1:0".parse().expect("addr"), "x").await;
    let probe = IcmpProbe { fallback_ports: vec![l.port()] };
    let report = probe.probe(LOCALHOST, &ProbeContext::standalone(16)).await;
    assert_eq!(report.alive, Some(true), "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loopback_sweep_tells_open_from_closed_and_progress_reaches_the_end() {
    // 127.0.0.0/8 is all local: addresses with no listener reset, so they are up with the
    // port closed. A port that is open on one address only tells them apart.
    let open = common::http_listener("127.0.0.5:0".parse().expect("addr"), "x").await;
    let targets = Targets::parse("127.0.0.1-127.0.0.40").expect("targets");
    let config = ScanConfig::default().ports(vec![open.port()]).icmp(false).http(None);
    let handle = Scanner::new(config).expect("valid scan config").start(targets.addresses());
    let progress = handle.progress.clone();
    let (hosts, summary) = handle.collect().await.expect("scan");
    assert_eq!(hosts.len(), 40);
    let with_open: Vec<IpAddr> = hosts.iter().filter(|h| !h.open_ports.is_empty()).map(|h| h.address).collect();
    assert_eq!(with_open, [open.ip()]);
    assert!(hosts.iter().all(|h| h.state == HostState::Up), "loopback addresses reset: up, port closed");
    let last = progress.borrow().clone();
    assert!(last.finished);
    assert_eq!((last.done, last.in_flight, last.queued, last.total), (40, 0, 0, Some(40)));
    assert_eq!(summary.hosts, 40);
}

#[derive(Debug)]
struct PortFact(u16);

#[async_trait]
impl Probe for PortFact {
    fn name(&self) -> &str {
        "port-fact"
    }
    fn stage(&self) -> Stage {
        Stage::Facts
    }
    async fn probe(&self, target: IpAddr, ctx: &ProbeContext) -> ProbeReport {
        let mut report = ProbeReport::default();
        if let ralph_discovery::ConnectOutcome::Open(_c) = ctx.connect(SocketAddr::new(target, self.0)).await {
            report.facts.insert("custom".into(), format!("port {} open", self.0));
        }
        report
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_app_probes_add_facts_to_alive_hosts() {
    let l = common::http_listener("127.0.0.1:0".parse().expect("addr"), "x").await;
    let config = ScanConfig::default().ports(vec![l.port()]).icmp(false).http(None).probe(Arc::new(PortFact(l.port())));
    let (hosts, _) = Scanner::new(config).expect("valid scan config").scan([LOCALHOST]).await.expect("scan");
    assert_eq!(hosts[0].facts.get("custom").map(String::as_str), Some(format!("port {} open", l.port()).as_str()));
    let before = hosts[0].checksum();
    let mut changed = hosts[0].clone();
    changed.facts.clear();
    assert_ne!(before, changed.checksum(), "facts are part of the checksum");
}

/// The seam: the first `storm` connects fail with ENOBUFS, then the real kernel connects.
#[derive(Debug)]
struct EnobufsStorm {
    inner: SystemConnector,
    storm: u64,
    calls: AtomicU64,
    injected: AtomicU64,
}

#[async_trait]
impl Connector for EnobufsStorm {
    async fn connect(&self, addr: SocketAddr) -> io::Result<TcpStream> {
        if self.calls.fetch_add(1, Ordering::SeqCst) < self.storm {
            self.injected.fetch_add(1, Ordering::SeqCst);
            return Err(io::Error::from_raw_os_error(nix::libc::ENOBUFS));
        }
        self.inner.connect(addr).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enobufs_storm_halves_the_rate_and_every_target_is_still_probed() {
    let mut open = Vec::new();
    for i in 1..=100u8 {
        open.push(common::http_listener(SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 9, 0, i)), 0), "x").await);
    }
    // One port for all: bind the rest on the first one's port.
    let port = open[0].port();
    let mut targets = vec![open[0].ip()];
    for i in 101..=200u8 {
        let a = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 9, 0, i)), port);
        targets.push(common::http_listener(a, "x").await.ip());
    }
    let storm = Arc::new(EnobufsStorm {
        inner: SystemConnector::default(),
        storm: 400,
        calls: AtomicU64::new(0),
        injected: AtomicU64::new(0),
    });
    let rate = RateConfig::default().initial(4000.0).min(100.0).cooldown(Duration::from_millis(20));
    let config = ScanConfig::default()
        .ports(vec![port])
        .icmp(false)
        .http(None)
        .rate(rate)
        .pace_loopback(true)
        .connector(storm.clone());
    let (hosts, summary) = Scanner::new(config).expect("valid scan config").scan(targets.clone()).await.expect("scan");
    assert_eq!(storm.injected.load(Ordering::SeqCst), 400);
    assert_eq!(hosts.len(), targets.len(), "no target dropped");
    assert!(hosts.iter().all(|h| h.state == HostState::Up && h.open_ports == [port]), "every target probed correctly");
    assert_eq!(summary.congestion_errors, 400);
    assert!(summary.rate_halvings >= 1);
    assert!(summary.min_rate <= summary.initial_rate / 2.0, "{} vs {}", summary.min_rate, summary.initial_rate);
}

/// A TLS server (rustls) with a fresh self-signed certificate (made with the openssl CLI),
/// answering with `server` as the `Server` header, on a blocking thread.
fn https_listener(ip: &str, server: &'static str) -> (SocketAddr, tempfile::TempDir) {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let status = std::process::Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=bmc.lab"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("openssl CLI");
    assert!(status.success());
    let config = {
        use rustls::pki_types::pem::PemObject as _;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let certs = CertificateDer::pem_file_iter(&cert).expect("cert").collect::<Result<Vec<_>, _>>().expect("cert");
        let key = PrivateKeyDer::from_pem_file(&key).expect("key");
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .expect("server config")
    };
    let config = std::sync::Arc::new(config);
    let listener = std::net::TcpListener::bind(format!("{ip}:0")).expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let Ok(conn) = rustls::ServerConnection::new(config.clone()) else { continue };
            let mut tls = rustls::StreamOwned::new(conn, stream);
            let mut buf = [0u8; 1024];
            if tls.read(&mut buf).is_ok_and(|n| n > 0) {
                let response = format!("HTTP/1.1 200 OK\r\nServer: {server}\r\nContent-Length: 2\r\n\r\nok");
                let _ = tls.write_all(response.as_bytes());
            }
        }
    });
    (addr, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_family_is_read_through_tls_after_plain_http_fails() {
    let (tls, _dir) = https_listener("127.0.0.4", "Sun-ILOM-Web-Server/1.0");
    let probe = HttpProbe {
        endpoints: vec![
            (ralph_discovery::Scheme::Http, common::closed_port()),
            (ralph_discovery::Scheme::Https, tls.port()),
            (ralph_discovery::Scheme::Http, 8006),
        ],
    };
    let report = probe.probe(tls.ip(), &ProbeContext::standalone(16)).await;
    assert_eq!(report.http_family.as_deref(), Some("Sun"), "{report:?}");
    assert_eq!(report.http_server.as_deref(), Some("Sun-ILOM-Web-Server/1.0"));
    // Plain HTTP spoken to the TLS port gets no family.
    let plain = HttpProbe::http([tls.port()]).probe(tls.ip(), &ProbeContext::standalone(16)).await;
    assert_eq!(plain.http_family, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_handle_stops_the_scan() {
    // 65,536 loopback hosts at 200 probe starts a second would take over five minutes; once
    // the handle is dropped the scan must wind down within seconds.
    let targets = Targets::parse("127.77.0.0/16").expect("targets");
    let total = u64::try_from(targets.len()).expect("fits");
    let rate = RateConfig::default().initial(200.0).min(1.0).max(200.0).increase_per_sec(0.0);
    let mut config =
        ScanConfig::default().ports(vec![common::closed_port()]).icmp(false).http(None).rate(rate).pace_loopback(true);
    // A zero period must not panic (the timer is clamped to 1 ms).
    config.progress_interval = Duration::ZERO;
    let handle = Scanner::new(config).expect("valid scan config").start(targets.addresses());
    let mut progress = handle.progress.clone();
    // Some hosts are done before the handle goes, however slowly the scan gets going.
    tokio::time::timeout(Duration::from_secs(30), progress.wait_for(|p| p.done > 0))
        .await
        .expect("the scan made no progress")
        .expect("progress");
    drop(handle);
    let last = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            if progress.borrow_and_update().finished {
                return progress.borrow().clone();
            }
            if progress.changed().await.is_err() {
                // The scan task ended and dropped its sender: the last snapshot is final.
                return progress.borrow().clone();
            }
        }
    })
    .await
    .expect("the scan kept running after its handle was dropped");
    assert!(last.finished, "{last:?}");
    assert!(last.done > 0 && last.done < total / 10, "stopped early: {} of {total} hosts", last.done);
    assert_eq!(last.in_flight, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_peer_trickling_bytes_is_cut_off_at_the_deadline() {
    use std::io::Write;
    // A "TLS server" announcing a 16 KiB handshake record, then sending one byte every 50 ms:
    // every single read succeeds well within the read timeout, so only an overall deadline
    // ends the exchange (this peer would take over 13 minutes).
    let listener = std::net::TcpListener::bind("127.0.0.6:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                if stream.write_all(&[0x16, 0x03, 0x03, 0x40, 0x00]).is_err() {
                    return;
                }
                for _ in 0..16_384 {
                    std::thread::sleep(Duration::from_millis(50));
                    if stream.write_all(&[0]).is_err() {
                        return;
                    }
                }
            });
        }
    });
    let mut ctx = ProbeContext::standalone(16);
    ctx.timeouts.connect = Duration::from_millis(300);
    ctx.timeouts.read = Duration::from_millis(700);
    let probe = HttpProbe { endpoints: vec![(ralph_discovery::Scheme::Https, addr.port())] };
    let report = tokio::time::timeout(Duration::from_secs(10), probe.probe(addr.ip(), &ctx))
        .await
        .expect("the HTTPS exchange outlived its deadline");
    assert_eq!(report.http_family, None, "{report:?}");
    assert!(report.errors.is_empty(), "a slow peer is no error: {report:?}");
    assert_eq!(ctx.budget().in_use(), 0, "the socket is given back");
}
