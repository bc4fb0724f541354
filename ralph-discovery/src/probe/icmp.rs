//! ICMP echo probe: unprivileged datagram ICMP where `ping_group_range` allows it, raw ICMP
//! with CAP_NET_RAW, else a TCP connect to the fallback ports the caller set (none by default:
//! no port is probed that was not asked for).

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};

use async_trait::async_trait;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;

use super::{Probe, ProbeContext, ProbeReport, Stage, TcpConnectProbe};

static SEQUENCE: AtomicU16 = AtomicU16::new(1);
static WARNED: AtomicBool = AtomicBool::new(false);

/// ICMP echo, with an optional TCP fallback.
///
/// When the process may open no ICMP socket (no CAP_NET_RAW and a `ping_group_range` that
/// leaves it out), the probe connects to [`IcmpProbe::fallback_ports`] instead. The list is
/// empty by default, so nothing but what the caller asked for is probed: the probe then reports
/// that it cannot tell (`alive: None`) and the scan's TCP ports decide. In a scan the list is
/// [`crate::ScanConfig::icmp_fallback_ports`].
///
/// ```
/// use ralph_discovery::IcmpProbe;
///
/// assert!(IcmpProbe::default().fallback_ports.is_empty());
/// let probe = IcmpProbe::default().with_fallback_ports(vec![443]);
/// assert_eq!(probe.fallback_ports, [443]);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IcmpProbe {
    /// Ports tried by TCP when no ICMP socket can be opened (default: none).
    pub fallback_ports: Vec<u16>,
}

impl IcmpProbe {
    /// Sets the TCP ports tried when no ICMP socket can be opened.
    #[must_use]
    pub fn with_fallback_ports(mut self, ports: Vec<u16>) -> Self {
        self.fallback_ports = ports;
        self
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Datagram,
    Raw,
}

fn open(target: IpAddr) -> io::Result<(Socket, Kind)> {
    let (domain, proto) =
        if target.is_ipv4() { (Domain::IPV4, Protocol::ICMPV4) } else { (Domain::IPV6, Protocol::ICMPV6) };
    match Socket::new(domain, Type::DGRAM, Some(proto)) {
        Ok(s) => Ok((s, Kind::Datagram)),
        Err(e) if matches!(e.raw_os_error(), Some(nix::libc::EACCES | nix::libc::EPERM)) => {
            Socket::new(domain, Type::RAW, Some(proto)).map(|s| (s, Kind::Raw))
        }
        Err(e) => Err(e),
    }
}

/// RFC 1071 checksum.
fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data.chunks(2).map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]))).sum();
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn echo_request(v6: bool, id: u16, seq: u16) -> Vec<u8> {
    let mut pkt = vec![if v6 { 128 } else { 8 }, 0, 0, 0];
    pkt.extend_from_slice(&id.to_be_bytes());
    pkt.extend_from_slice(&seq.to_be_bytes());
    pkt.extend_from_slice(b"ralph-discovery!");
    if !v6 {
        let sum = checksum(&pkt);
        pkt[2..4].copy_from_slice(&sum.to_be_bytes());
    }
    pkt
}

/// Whether `buf` is our echo reply. Raw IPv4 sockets deliver the IP header too; datagram
/// sockets rewrite the identifier, so only the sequence is compared there.
fn is_reply(buf: &[u8], v6: bool, kind: Kind, id: u16, seq: u16) -> bool {
    let icmp = if !v6 && kind == Kind::Raw {
        let ihl = usize::from(buf.first().map_or(0, |b| b & 0x0f)) * 4;
        buf.get(ihl..).unwrap_or_default()
    } else {
        buf
    };
    if icmp.len() < 8 || icmp[0] != if v6 { 129 } else { 0 } {
        return false;
    }
    let (rid, rseq) = (u16::from_be_bytes([icmp[4], icmp[5]]), u16::from_be_bytes([icmp[6], icmp[7]]));
    rseq == seq && (kind == Kind::Datagram || rid == id)
}

async fn ping(target: IpAddr, ctx: &ProbeContext) -> io::Result<Option<bool>> {
    let v6 = target.is_ipv6();
    // Within the budget; EMFILE/ENFILE shrink it and requeue, as for the other probes.
    let ((socket, kind), _permit) = ctx.open_socket(false, || open(target)).await?;
    socket.set_nonblocking(true)?;
    socket.connect(&SocketAddr::new(target, 0).into())?;
    // A connected raw socket only receives from its peer, so concurrent probes don't see each
    // other's replies.
    let socket = UdpSocket::from_std(std::net::UdpSocket::from(socket))?;
    let id = (std::process::id() & 0xffff) as u16;
    let mut buf = [0u8; 1500];
    for _ in 0..=ctx.timeouts.retries {
        let seq = SEQUENCE.fetch_add(1, Ordering::Relaxed);
        ctx.pacer.ready_in(&ctx.lane).await;
        crate::neighbour::sending();
        if let Err(e) = socket.send(&echo_request(v6, id, seq)).await {
            if super::is_congestion(&e) {
                ctx.congestion("ENOBUFS on ICMP send");
                continue;
            }
            return Err(e);
        }
        let wait = async {
            loop {
                let n = socket.recv(&mut buf).await?;
                if is_reply(&buf[..n], v6, kind, id, seq) {
                    return Ok::<_, io::Error>(true);
                }
            }
        };
        match tokio::time::timeout(ctx.timeouts.connect, wait).await {
            Ok(Ok(true)) => return Ok(Some(true)),
            Ok(Ok(false)) | Err(_) => {}
            Ok(Err(e)) if matches!(e.raw_os_error(), Some(nix::libc::EHOSTUNREACH | nix::libc::ENETUNREACH)) => {
                return Ok(Some(false));
            }
            Ok(Err(e)) => return Err(e),
        }
    }
    Ok(Some(false))
}

#[async_trait]
impl Probe for IcmpProbe {
    fn name(&self) -> &str {
        "icmp"
    }

    fn stage(&self) -> Stage {
        Stage::Alive
    }

    async fn probe(&self, target: IpAddr, ctx: &ProbeContext) -> ProbeReport {
        match ping(target, ctx).await {
            Ok(alive) => ProbeReport { alive, ..ProbeReport::default() },
            Err(e) if matches!(e.raw_os_error(), Some(nix::libc::EACCES | nix::libc::EPERM)) => {
                if !WARNED.swap(true, Ordering::Relaxed) {
                    tracing::warn!(target: "ralph::discovery", fallback_ports = ?self.fallback_ports,
                        "no ICMP socket allowed (grant CAP_NET_RAW or widen net.ipv4.ping_group_range); \
                         ICMP answers only through the fallback ports");
                }
                if self.fallback_ports.is_empty() {
                    // Cannot tell, and no local failure of this target either: other probes decide.
                    return ProbeReport::default();
                }
                TcpConnectProbe::new(self.fallback_ports.clone()).probe(target, ctx).await
            }
            Err(e) => ProbeReport { errors: vec![format!("icmp: {e}")], ..ProbeReport::default() },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_of_an_echo_request_verifies() {
        let pkt = echo_request(false, 0x1234, 7);
        assert_eq!(checksum(&pkt), 0, "a packet with its checksum sums to zero");
        let mut reply = pkt.clone();
        reply[0] = 0;
        assert!(is_reply(&reply, false, Kind::Datagram, 0, 7));
        assert!(!is_reply(&reply, false, Kind::Datagram, 0, 8));
        assert!(!is_reply(&pkt, false, Kind::Datagram, 0, 7), "a request is no reply");
    }
}
