//! Helpers shared by the integration tests: real loopback listeners and kernel counters.
#![allow(dead_code, unreachable_pub)]

use std::net::{IpAddr, SocketAddr};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Raises the soft descriptor limit to the hard one (tests hold thousands of listeners).
pub fn raise_nofile() -> u64 {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
    let want = hard.min(1 << 20);
    setrlimit(Resource::RLIMIT_NOFILE, want, hard).expect("setrlimit");
    want
}

/// Starts an HTTP-ish listener on `addr` answering every connection with `server` as the
/// `Server` header. Returns the bound address.
pub async fn http_listener(addr: SocketAddr, server: &'static str) -> SocketAddr {
    let listener = TcpListener::bind(addr).await.expect("bind");
    let local = listener.local_addr().expect("local addr");
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else { continue };
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                let read = tokio::time::timeout(std::time::Duration::from_secs(20), stream.read(&mut buf)).await;
                if matches!(read, Ok(Ok(n)) if n > 0) {
                    let response = format!("HTTP/1.0 200 OK\r\nServer: {server}\r\nContent-Length: 2\r\n\r\nok");
                    let _ = stream.write_all(response.as_bytes()).await;
                }
            });
        }
    });
    local
}

/// The default neighbour settings with the host-wide slot file in `dir` (tests never touch
/// the machine's own slot file).
pub fn slot_config(dir: &tempfile::TempDir) -> ralph_discovery::NeighbourConfig {
    ralph_discovery::NeighbourConfig {
        slot_file: ralph_discovery::SlotFile::Path(dir.path().join("neighbour-slots")),
        ..ralph_discovery::NeighbourConfig::default()
    }
}

/// A port on 127.0.0.1 with nothing listening (bound, then closed).
pub fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// The namespace lab started by scripts/services/netlab.
pub struct Lab {
    /// The /20 whose 4,094 hosts answer.
    pub cidr: String,
    /// A /24 blackholed inside the namespace: hosts that are down.
    pub dead: String,
    /// Open port on every lab host.
    pub open: u16,
    /// Closed port on every lab host.
    pub closed: u16,
    /// The host side of the veth.
    pub iface: String,
}

/// The lab, or `None` (skip) when it is not running or we are not root.
pub fn lab() -> Option<Lab> {
    let cidr = ralph_testkit::service("RALPH_TEST_NETLAB_CIDR")?;
    if !ralph_testkit::require_root("the namespace lab") {
        return None;
    }
    let port = |v: &str| ralph_testkit::service(v).and_then(|p| p.parse().ok());
    Some(Lab {
        cidr,
        dead: ralph_testkit::service("RALPH_TEST_NETLAB_DEAD_CIDR")?,
        open: port("RALPH_TEST_NETLAB_OPEN_PORT")?,
        closed: port("RALPH_TEST_NETLAB_CLOSED_PORT")?,
        iface: ralph_testkit::service("RALPH_TEST_NETLAB_IFACE")?,
    })
}

impl Lab {
    /// Panics unless every address is on-link through the lab's interface right now: never
    /// let a vanished lab send the probes out of the default route.
    pub fn check(&self, targets: &[IpAddr]) {
        let subnets: Vec<_> =
            ralph_discovery::neighbour::local_subnets().into_iter().filter(|s| s.interface == self.iface).collect();
        for ip in targets {
            assert!(
                subnets.iter().any(|s| s.network.contains(*ip)),
                "{ip} is not on-link through {} (is the lab up?): refusing to probe it",
                self.iface
            );
        }
    }

    /// The first `n` addresses of `cidr`, checked with [`Lab::check`].
    pub fn hosts(&self, cidr: &str, n: usize) -> Vec<IpAddr> {
        let hosts: Vec<IpAddr> = ralph_discovery::Targets::parse(cidr).expect("lab cidr").addresses().take(n).collect();
        self.check(&hosts);
        hosts
    }
}
