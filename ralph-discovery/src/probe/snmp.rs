//! SNMP v2c probe: GET `sysName.0` and `sysDescr.0`, trying each community in turn. Requests
//! are encoded here; responses are parsed by the `snmp2` crate.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicI32, Ordering};

use async_trait::async_trait;
use ralph_core::{Secret, SnmpVersion};

use super::{Probe, ProbeContext, ProbeReport, SnmpFacts, Stage};

/// `sysName.0`.
pub const SYS_NAME: &[u64] = &[1, 3, 6, 1, 2, 1, 1, 5, 0];
/// `sysDescr.0`.
pub const SYS_DESCR: &[u64] = &[1, 3, 6, 1, 2, 1, 1, 1, 0];

/// Largest reply read. `sysName` and `sysDescr` are at most 255 octets each, so a reply to
/// our GET fits many times over; a bigger datagram is reported as an error, not parsed.
const MAX_REPLY: usize = 4096;

static REQUEST_ID: AtomicI32 = AtomicI32::new(0x5a17);

/// Reads `sysName` and `sysDescr` with SNMP v2c, trying the communities in order.
#[derive(Debug, Clone)]
pub struct SnmpProbe {
    /// Communities to try (secrets: never logged).
    pub communities: Vec<Secret>,
    /// UDP port (161).
    pub port: u16,
}

impl SnmpProbe {
    /// A probe of port 161 with these communities.
    #[must_use]
    pub fn new(communities: Vec<Secret>) -> Self {
        Self { communities, port: 161 }
    }
}

fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else if len <= 0xff {
        out.extend_from_slice(&[0x81, len as u8]);
    } else {
        out.push(0x82);
        out.extend_from_slice(&(len.min(0xffff) as u16).to_be_bytes());
    }
    out.extend_from_slice(content);
    out
}

fn integer(v: i64) -> Vec<u8> {
    let bytes = v.to_be_bytes();
    let mut start = 0;
    while start < 7 {
        let (b, next) = (bytes[start], bytes[start + 1]);
        if (b == 0 && next & 0x80 == 0) || (b == 0xff && next & 0x80 != 0) {
            start += 1;
        } else {
            break;
        }
    }
    tlv(0x02, &bytes[start..])
}

fn oid(arcs: &[u64]) -> Vec<u8> {
    let mut body = Vec::new();
    let first = arcs.first().copied().unwrap_or(0) * 40 + arcs.get(1).copied().unwrap_or(0);
    for &arc in std::iter::once(&first).chain(arcs.iter().skip(2)) {
        let mut groups = vec![(arc & 0x7f) as u8];
        let mut rest = arc >> 7;
        while rest > 0 {
            groups.push(((rest & 0x7f) as u8) | 0x80);
            rest >>= 7;
        }
        body.extend(groups.iter().rev());
    }
    tlv(0x06, &body)
}

/// Encodes an SNMP v2c GetRequest for `oids`.
fn get_request(community: &[u8], request_id: i32, oids: &[&[u64]]) -> Vec<u8> {
    let varbinds: Vec<u8> = oids.iter().flat_map(|o| tlv(0x30, &[oid(o), vec![0x05, 0x00]].concat())).collect();
    let pdu = tlv(0xa0, &[integer(i64::from(request_id)), integer(0), integer(0), tlv(0x30, &varbinds)].concat());
    tlv(0x30, &[integer(1), tlv(0x04, community), pdu].concat())
}

fn oid_text(arcs: &[u64]) -> String {
    arcs.iter().map(u64::to_string).collect::<Vec<_>>().join(".")
}

/// Parses a response: `Ok(Some((name, descr)))` when it answers our request.
fn parse_response(buf: &[u8], community: &[u8], request_id: i32) -> Option<(Option<String>, Option<String>)> {
    let pdu = snmp2::Pdu::from_bytes(buf).ok()?;
    if pdu.req_id != request_id || pdu.community != community || pdu.message_type != snmp2::MessageType::Response {
        return None;
    }
    if pdu.error_status != 0 {
        return Some((None, None));
    }
    let (name_oid, descr_oid) = (oid_text(SYS_NAME), oid_text(SYS_DESCR));
    let mut out = (None, None);
    for (name, value) in pdu.varbinds {
        let text = match value {
            snmp2::Value::OctetString(s) => String::from_utf8_lossy(s).trim().to_owned(),
            _ => continue,
        };
        let key = name.to_string();
        if key == name_oid {
            out.0 = Some(text);
        } else if key == descr_oid {
            out.1 = Some(text);
        }
    }
    Some(out)
}

enum Attempt {
    Answer(Option<String>, Option<String>),
    Silent,
    NoAgent,
    Error(String),
}

async fn ask(ctx: &ProbeContext, addr: SocketAddr, community: &Secret) -> Attempt {
    let (socket, _permit) = match ctx.udp(addr).await {
        Ok(s) => s,
        Err(e) => return Attempt::Error(format!("snmp socket: {e}")),
    };
    // One byte more than accepted, to tell a reply of exactly MAX_REPLY from a truncated one.
    let mut buf = vec![0u8; MAX_REPLY + 1];
    for _ in 0..=ctx.timeouts.retries {
        let request_id = REQUEST_ID.fetch_add(1, Ordering::Relaxed) & 0x7fff_ffff;
        let request = get_request(community.expose().as_bytes(), request_id, &[SYS_NAME, SYS_DESCR]);
        if let Err(e) = socket.send(&request).await {
            if super::is_congestion(&e) {
                ctx.congestion("ENOBUFS on SNMP send");
                continue;
            }
            return Attempt::Error(format!("snmp send: {e}"));
        }
        let wait = async {
            loop {
                let n = socket.recv(&mut buf).await?;
                if n > MAX_REPLY {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!("reply from {addr} larger than {MAX_REPLY} bytes"),
                    ));
                }
                if let Some(found) = parse_response(&buf[..n], community.expose().as_bytes(), request_id) {
                    return Ok::<_, std::io::Error>(found);
                }
            }
        };
        match tokio::time::timeout(ctx.timeouts.read, wait).await {
            Ok(Ok((name, descr))) => return Attempt::Answer(name, descr),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => return Attempt::NoAgent,
            Ok(Err(e)) => return Attempt::Error(format!("snmp recv: {e}")),
            Err(_) => {}
        }
    }
    Attempt::Silent
}

#[async_trait]
impl Probe for SnmpProbe {
    fn name(&self) -> &str {
        "snmp"
    }

    fn stage(&self) -> Stage {
        Stage::Facts
    }

    #[tracing::instrument(target = "ralph::discovery", level = "debug", skip_all, fields(%target))]
    async fn probe(&self, target: IpAddr, ctx: &ProbeContext) -> ProbeReport {
        let addr = SocketAddr::new(target, self.port);
        let mut report = ProbeReport::default();
        for community in &self.communities {
            match ask(ctx, addr, community).await {
                Attempt::Answer(name, description) => {
                    report.alive = Some(true);
                    report.snmp =
                        Some(SnmpFacts { name, description, community: community.clone(), version: SnmpVersion::V2c });
                    break;
                }
                // A wrong community is silently dropped by the agent: try the next one.
                Attempt::Silent => {}
                Attempt::NoAgent => break,
                Attempt::Error(e) => {
                    report.errors.push(e);
                    break;
                }
            }
        }
        report
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_round_trips_through_snmp2() {
        let req = get_request(b"public", 0x1234_5678, &[SYS_NAME, SYS_DESCR]);
        let pdu = snmp2::Pdu::from_bytes(&req).expect("parse");
        assert_eq!(pdu.req_id, 0x1234_5678);
        assert_eq!(pdu.community, b"public");
        assert_eq!(pdu.message_type, snmp2::MessageType::GetRequest);
        let names: Vec<String> = pdu.varbinds.map(|(o, _)| o.to_string()).collect();
        assert_eq!(names, [oid_text(SYS_NAME), oid_text(SYS_DESCR)]);
        assert!(parse_response(&req, b"public", 0x1234_5678).is_none(), "a request is no response");
    }

    fn response(community: &[u8], request_id: i32, name: &str, descr: &str) -> Vec<u8> {
        let varbind = |o: &[u64], v: &str| tlv(0x30, &[oid(o), tlv(0x04, v.as_bytes())].concat());
        let varbinds = [varbind(SYS_NAME, name), varbind(SYS_DESCR, descr)].concat();
        let pdu = tlv(0xa2, &[integer(i64::from(request_id)), integer(0), integer(0), tlv(0x30, &varbinds)].concat());
        tlv(0x30, &[integer(1), tlv(0x04, community), pdu].concat())
    }

    #[test]
    fn truncated_replies_are_rejected_without_panicking() {
        let full = response(b"c", 7, "lab", &"d".repeat(255));
        assert!(full.len() <= MAX_REPLY, "the largest sysName + sysDescr reply fits");
        assert_eq!(parse_response(&full, b"c", 7), Some((Some("lab".to_owned()), Some("d".repeat(255)))));
        for cut in 0..full.len() {
            assert_eq!(parse_response(&full[..cut], b"c", 7), None, "cut at {cut}");
        }
    }

    #[test]
    fn integers_are_minimal_twos_complement() {
        assert_eq!(integer(0), [2, 1, 0]);
        assert_eq!(integer(127), [2, 1, 127]);
        assert_eq!(integer(128), [2, 2, 0, 128]);
        assert_eq!(integer(-1), [2, 1, 0xff]);
        assert_eq!(oid(&[1, 3, 6, 1, 4, 1, 311]), [6, 7, 0x2b, 6, 1, 4, 1, 0x82, 0x37]);
    }
}
