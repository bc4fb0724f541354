//! SNMP v2c probe: GET `sysName.0` and `sysDescr.0`, trying each community in turn; and
//! [`SnmpProbe::read_system`], which also reads `sysObjectID.0` and walks the interface
//! table's `ifPhysAddress` (GETBULK) for reconciliation [`Facts`]. Requests are encoded here;
//! responses are parsed by the `snmp2` crate.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicI32, Ordering};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use ralph_core::reconcile::{ComponentClass, Facts, Source};
use ralph_core::{ComponentKind, Hostname, MacAddress, Secret, SnmpVersion};

use super::{Probe, ProbeContext, ProbeReport, SnmpFacts, Stage};

/// `sysName.0`.
pub const SYS_NAME: &[u64] = &[1, 3, 6, 1, 2, 1, 1, 5, 0];
/// `sysDescr.0`.
pub const SYS_DESCR: &[u64] = &[1, 3, 6, 1, 2, 1, 1, 1, 0];

/// `sysObjectID.0`.
pub const SYS_OBJECT_ID: &[u64] = &[1, 3, 6, 1, 2, 1, 1, 2, 0];
/// The `ifPhysAddress` column of the interface table (`ifTable`), walked per interface.
pub const IF_PHYS_ADDRESS: &[u64] = &[1, 3, 6, 1, 2, 1, 2, 2, 1, 6];

/// Rows asked per GETBULK, and the most interfaces read from one agent (a walk stops there).
const BULK_ROWS: i64 = 24;
const MAX_INTERFACES: usize = 4096;

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
    pdu_request(0xa0, community, request_id, (0, 0), oids)
}

/// Encodes an SNMP v2c GetBulkRequest: `max_repetitions` successors of each of `oids`.
fn bulk_request(community: &[u8], request_id: i32, max_repetitions: i64, oids: &[&[u64]]) -> Vec<u8> {
    // GETBULK reuses error-status and error-index as non-repeaters and max-repetitions.
    pdu_request(0xa5, community, request_id, (0, max_repetitions), oids)
}

fn pdu_request(tag: u8, community: &[u8], request_id: i32, (a, b): (i64, i64), oids: &[&[u64]]) -> Vec<u8> {
    let varbinds: Vec<u8> = oids.iter().flat_map(|o| tlv(0x30, &[oid(o), vec![0x05, 0x00]].concat())).collect();
    let pdu = tlv(tag, &[integer(i64::from(request_id)), integer(a), integer(b), tlv(0x30, &varbinds)].concat());
    tlv(0x30, &[integer(1), tlv(0x04, community), pdu].concat())
}

/// Dotted text (`1.3.6.1`) as arcs; `None` for anything else.
fn parse_oid(text: &str) -> Option<Vec<u64>> {
    text.split('.').map(|a| a.parse().ok()).collect()
}

/// One varbind of a reply, as far as the walk and the system group need it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Reply {
    Text(String),
    Bytes(Vec<u8>),
    Oid(String),
    /// The agent has nothing at or after the name (end of MIB view, no such object).
    Nothing,
    Other,
}

/// A reply's varbinds: name (arcs) and value, in order.
type Varbinds = Vec<(Vec<u64>, Reply)>;

/// Parses a response to request `request_id` into its varbinds, in order; `None` when the
/// datagram is not that response, `Some(Err(status))` when the agent reported an error.
fn parse_varbinds(buf: &[u8], community: &[u8], request_id: i32) -> Option<Result<Varbinds, u32>> {
    let pdu = snmp2::Pdu::from_bytes(buf).ok()?;
    if pdu.req_id != request_id || pdu.community != community || pdu.message_type != snmp2::MessageType::Response {
        return None;
    }
    if pdu.error_status != 0 {
        return Some(Err(pdu.error_status));
    }
    let mut out = Vec::new();
    for (name, value) in pdu.varbinds {
        let arcs = parse_oid(&name.to_string())?;
        let reply = match value {
            snmp2::Value::OctetString(s) => {
                if s.len() == 6 {
                    Reply::Bytes(s.to_vec())
                } else {
                    Reply::Text(String::from_utf8_lossy(s).trim().to_owned())
                }
            }
            snmp2::Value::ObjectIdentifier(o) => Reply::Oid(o.to_string()),
            snmp2::Value::EndOfMibView | snmp2::Value::NoSuchObject | snmp2::Value::NoSuchInstance => Reply::Nothing,
            _ => Reply::Other,
        };
        out.push((arcs, reply));
    }
    Some(Ok(out))
}

/// The text of a reply: an octet string (six octets are text too when printable).
fn reply_text(reply: &Reply) -> Option<String> {
    match reply {
        Reply::Text(t) => Some(t.clone()),
        Reply::Bytes(b) => std::str::from_utf8(b).ok().map(|t| t.trim().to_owned()),
        _ => None,
    }
}

/// A MAC address from an `ifPhysAddress` value: six octets, not all zero (loopback) or all
/// ones. Other lengths (tunnels, none) are not Ethernet addresses.
fn mac_of(reply: &Reply) -> Option<MacAddress> {
    let Reply::Bytes(b) = reply else { return None };
    if b.iter().all(|o| *o == 0) || b.iter().all(|o| *o == 0xff) {
        return None;
    }
    let text = b.iter().map(|o| format!("{o:02x}")).collect::<Vec<_>>().join(":");
    MacAddress::parse(&text).ok()
}

/// Manufacturers by the enterprise number under `1.3.6.1.4.1` that starts a `sysObjectID`.
const ENTERPRISES: &[(u64, &str)] = &[
    (9, "Cisco"),
    (11, "HP"),
    (311, "Microsoft"),
    (674, "Dell"),
    (1991, "Brocade"),
    (2011, "Huawei"),
    (2636, "Juniper"),
    (6027, "Dell EMC"),
    (6486, "Alcatel-Lucent"),
    (8072, "Net-SNMP"),
    (12356, "Fortinet"),
    (25506, "HPE"),
    (30065, "Arista"),
];

/// What an agent's system group and interface table say.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SnmpSystem {
    /// `sysName.0`.
    pub name: Option<String>,
    /// `sysDescr.0`.
    pub description: Option<String>,
    /// `sysObjectID.0`, dotted.
    pub object_id: Option<String>,
    /// The `ifPhysAddress` values that are Ethernet addresses, in interface order, without
    /// duplicates.
    pub macs: Vec<MacAddress>,
}

impl SnmpSystem {
    /// The manufacturer `sysObjectID` names, for the enterprises known here.
    #[must_use]
    pub fn manufacturer(&self) -> Option<&'static str> {
        let arcs = parse_oid(self.object_id.as_deref()?)?;
        let enterprise = arcs.strip_prefix(&[1, 3, 6, 1, 4, 1][..])?.first()?;
        ENTERPRISES.iter().find(|(n, _)| n == enterprise).map(|(_, name)| *name)
    }

    /// Reconciliation facts about `address`: the system description's first line (at most 255
    /// characters) as the model, the manufacturer from `sysObjectID`, `sysName` as the host
    /// name when it is a valid one, and the MACs as Ethernet ports (the source covers ports,
    /// so a port the agent stops listing counts as missing). The address answered SNMP, so it
    /// is taken as the device's management address.
    #[must_use]
    pub fn to_facts(&self, address: IpAddr, source: Source, observed_at: DateTime<Utc>) -> Facts {
        let mut facts = Facts::new(address, source, observed_at);
        facts.model = self
            .description
            .as_deref()
            .and_then(|d| d.lines().next())
            .map(|line| line.trim().chars().take(255).collect::<String>())
            .filter(|m| !m.is_empty());
        facts.manufacturer = self.manufacturer().map(str::to_owned);
        facts.hostname = self.name.as_deref().and_then(|n| n.parse::<Hostname>().ok());
        facts.macs.clone_from(&self.macs);
        facts.components =
            self.macs.iter().map(|mac| ComponentKind::Ethernet { mac: *mac, label: None, speed_mbps: None }).collect();
        facts.covers.insert(ComponentClass::Ethernet);
        facts.is_management = true;
        facts
    }
}

/// Why [`SnmpProbe::read_system`] read nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SnmpError {
    /// No community got an answer (wrong communities, or no agent listening).
    #[error("no SNMP answer from {0}")]
    NoAnswer(SocketAddr),
    /// The agent answered with an error status.
    #[error("SNMP agent {addr} answered with error status {status}")]
    Agent {
        /// The agent.
        addr: SocketAddr,
        /// The SNMP error status.
        status: u32,
    },
    /// A local failure (socket, send, an oversized reply).
    #[error("SNMP exchange with {addr} failed: {reason}")]
    Io {
        /// The agent.
        addr: SocketAddr,
        /// What failed.
        reason: String,
    },
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

/// One request and its reply on `socket`, with the context's timeout and retries.
async fn exchange(
    ctx: &ProbeContext,
    socket: &tokio::net::UdpSocket,
    addr: SocketAddr,
    community: &Secret,
    build: impl Fn(i32) -> Vec<u8>,
) -> Result<Option<Varbinds>, SnmpError> {
    let io = |reason: String| SnmpError::Io { addr, reason };
    let mut buf = vec![0u8; MAX_BULK_REPLY + 1];
    for _ in 0..=ctx.timeouts.retries {
        let request_id = REQUEST_ID.fetch_add(1, Ordering::Relaxed) & 0x7fff_ffff;
        if let Err(e) = socket.send(&build(request_id)).await {
            if super::is_congestion(&e) {
                ctx.congestion("ENOBUFS on SNMP send");
                continue;
            }
            return Err(io(format!("snmp send: {e}")));
        }
        let wait = async {
            loop {
                let n = socket.recv(&mut buf).await.map_err(|e| e.to_string())?;
                if n > MAX_BULK_REPLY {
                    return Err(format!("reply larger than {MAX_BULK_REPLY} bytes"));
                }
                if let Some(found) = parse_varbinds(&buf[..n], community.expose().as_bytes(), request_id) {
                    return Ok(found);
                }
            }
        };
        match tokio::time::timeout(ctx.timeouts.read, wait).await {
            Ok(Ok(Ok(varbinds))) => return Ok(Some(varbinds)),
            Ok(Ok(Err(status))) => return Err(SnmpError::Agent { addr, status }),
            Ok(Err(reason)) => return Err(io(reason)),
            Err(_) => {}
        }
    }
    Ok(None)
}

/// Largest GETBULK reply read: a full page of interface rows.
const MAX_BULK_REPLY: usize = 65_507;

impl SnmpProbe {
    /// Reads `sysName`, `sysDescr` and `sysObjectID` and walks `ifPhysAddress` at `target`,
    /// with the first community that answers (in order; a wrong one is met with silence).
    /// Turn the result into reconciliation facts with [`SnmpSystem::to_facts`].
    ///
    /// # Errors
    /// [`SnmpError::NoAnswer`] when no community is answered, [`SnmpError::Agent`] for an
    /// error status, [`SnmpError::Io`] for a local failure. The community is never part of an
    /// error.
    #[tracing::instrument(target = "ralph::discovery", level = "debug", skip_all, fields(%target))]
    pub async fn read_system(&self, target: IpAddr, ctx: &ProbeContext) -> Result<SnmpSystem, SnmpError> {
        let addr = SocketAddr::new(target, self.port);
        let (socket, _permit) = ctx.udp(addr).await.map_err(|e| SnmpError::Io { addr, reason: e.to_string() })?;
        for community in &self.communities {
            let c = community.expose().as_bytes();
            let system =
                exchange(ctx, &socket, addr, community, |id| get_request(c, id, &[SYS_NAME, SYS_DESCR, SYS_OBJECT_ID]))
                    .await?;
            let Some(system) = system else { continue };
            let value = |arcs: &[u64]| system.iter().find(|(o, _)| o == arcs).map(|(_, r)| r.clone());
            let mut out = SnmpSystem {
                name: value(SYS_NAME).as_ref().and_then(reply_text),
                description: value(SYS_DESCR).as_ref().and_then(reply_text),
                object_id: match value(SYS_OBJECT_ID) {
                    Some(Reply::Oid(o)) => Some(o),
                    _ => None,
                },
                macs: Vec::new(),
            };
            out.macs = walk_macs(ctx, &socket, addr, community).await?;
            return Ok(out);
        }
        Err(SnmpError::NoAnswer(addr))
    }
}

/// Walks `ifPhysAddress` with GETBULK until the agent leaves the column (or stops making
/// progress, or [`MAX_INTERFACES`] rows were read).
async fn walk_macs(
    ctx: &ProbeContext,
    socket: &tokio::net::UdpSocket,
    addr: SocketAddr,
    community: &Secret,
) -> Result<Vec<MacAddress>, SnmpError> {
    let c = community.expose().as_bytes();
    let mut macs: Vec<MacAddress> = Vec::new();
    let mut cursor = IF_PHYS_ADDRESS.to_vec();
    let mut rows = 0;
    while rows < MAX_INTERFACES {
        let page = exchange(ctx, socket, addr, community, |id| bulk_request(c, id, BULK_ROWS, &[&cursor])).await?;
        let Some(page) = page else {
            return Err(SnmpError::Io { addr, reason: "the interface walk timed out".into() });
        };
        let mut advanced = false;
        for (oid, reply) in page {
            if !oid.starts_with(IF_PHYS_ADDRESS) || reply == Reply::Nothing {
                return Ok(macs);
            }
            // An agent that does not move forward would loop forever.
            if oid <= cursor {
                return Ok(macs);
            }
            rows += 1;
            if let Some(mac) = mac_of(&reply).filter(|m| !macs.contains(m)) {
                macs.push(mac);
            }
            cursor = oid;
            advanced = true;
        }
        if !advanced {
            break;
        }
    }
    Ok(macs)
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
    fn bulk_requests_round_trip_and_walk_replies_parse() {
        let req = bulk_request(b"c", 99, BULK_ROWS, &[IF_PHYS_ADDRESS]);
        let pdu = snmp2::Pdu::from_bytes(&req).expect("parse");
        assert_eq!(pdu.message_type, snmp2::MessageType::GetBulkRequest);
        assert_eq!(pdu.req_id, 99);
        // A reply: two interfaces (a loopback with no address, one Ethernet port), then the
        // next column, which ends the walk.
        let row = |index: u64, value: &[u8]| {
            let mut o = IF_PHYS_ADDRESS.to_vec();
            o.push(index);
            tlv(0x30, &[oid(&o), tlv(0x04, value)].concat())
        };
        let varbinds = [
            row(1, &[]),
            row(2, &[0xa0, 0x36, 0x9f, 1, 2, 3]),
            tlv(0x30, &[oid(&[1, 3, 6, 1, 2, 1, 2, 2, 1, 7, 1]), integer(1)].concat()),
        ]
        .concat();
        let pdu = tlv(0xa2, &[integer(99), integer(0), integer(0), tlv(0x30, &varbinds)].concat());
        let reply = tlv(0x30, &[integer(1), tlv(0x04, b"c"), pdu].concat());
        let parsed = parse_varbinds(&reply, b"c", 99).expect("ours").expect("no error");
        assert_eq!(parsed.len(), 3);
        assert_eq!(mac_of(&parsed[1].1).map(|m| m.to_string()), Some("A0:36:9F:01:02:03".to_owned()));
        assert_eq!(mac_of(&parsed[0].1), None, "no address");
        assert_eq!(mac_of(&Reply::Bytes(vec![0; 6])), None, "all zero is not a MAC");
        assert!(parse_varbinds(&reply, b"other", 99).is_none());
        for cut in 0..reply.len() {
            assert!(parse_varbinds(&reply[..cut], b"c", 99).is_none(), "cut at {cut}");
        }
    }

    #[test]
    fn facts_from_the_system_group() {
        let system = SnmpSystem {
            name: Some("sw1.dc1.example.com".into()),
            description: Some("Cisco IOS Software, C2960\nTechnical Support".into()),
            object_id: Some("1.3.6.1.4.1.9.1.1208".into()),
            macs: vec![MacAddress::parse("a0:36:9f:01:02:03").expect("mac")],
        };
        assert_eq!(system.manufacturer(), Some("Cisco"));
        let at = DateTime::from_timestamp(0, 0).expect("time");
        let facts = system.to_facts("10.0.0.1".parse().expect("ip"), Source::new("snmp", 10).expect("source"), at);
        assert_eq!(facts.model.as_deref(), Some("Cisco IOS Software, C2960"));
        assert_eq!(facts.hostname.as_ref().map(Hostname::as_str), Some("sw1.dc1.example.com"));
        assert_eq!(facts.components.len(), 1);
        assert!(facts.covers.contains(&ComponentClass::Ethernet));
        facts.validate().expect("valid facts");
        let odd = SnmpSystem { name: Some("not a hostname!".into()), object_id: Some("garbage".into()), ..system };
        assert_eq!(odd.manufacturer(), None);
        assert!(odd.to_facts("10.0.0.1".parse().expect("ip"), Source::new("s", 1).expect("s"), at).hostname.is_none());
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
