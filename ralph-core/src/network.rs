//! Network environments, networks (IPv4 and IPv6) and address arithmetic on them.

use std::net::{IpAddr, Ipv6Addr};

use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};

use crate::text::required;
use crate::{DataCenter, Entity, Id, ValidationError};

/// A VLAN id, 1–4094.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "u32", into = "u32")]
pub struct Vlan(u16);

impl Vlan {
    /// A VLAN id.
    ///
    /// # Errors
    /// [`ValidationError::Vlan`] outside 1–4094.
    pub fn new(id: u32) -> Result<Self, ValidationError> {
        match u16::try_from(id) {
            Ok(v) if (1..=4094).contains(&v) => Ok(Self(v)),
            _ => Err(ValidationError::Vlan(id)),
        }
    }

    /// The numeric id.
    #[must_use]
    pub const fn get(self) -> u16 {
        self.0
    }
}

impl TryFrom<u32> for Vlan {
    type Error = ValidationError;
    fn try_from(value: u32) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl From<Vlan> for u32 {
    fn from(value: Vlan) -> Self {
        u32::from(value.0)
    }
}

/// Parses a CIDR network strictly: the address part must be the network address.
///
/// # Errors
/// [`ValidationError::Cidr`] for text that is no CIDR, [`ValidationError::CidrHostBits`] when
/// host bits are set (`10.0.0.1/24`), which is nearly always a typo.
pub fn parse_cidr(input: &str) -> Result<IpNetwork, ValidationError> {
    let text = input.trim();
    if !text.contains('/') {
        return Err(ValidationError::Cidr { input: input.to_owned() });
    }
    let net: IpNetwork = text.parse().map_err(|_| ValidationError::Cidr { input: input.to_owned() })?;
    let canonical =
        IpNetwork::new(net.network(), net.prefix()).map_err(|_| ValidationError::Cidr { input: input.to_owned() })?;
    if canonical.ip() != net.ip() {
        return Err(ValidationError::CidrHostBits { input: input.to_owned(), network: canonical.to_string() });
    }
    Ok(canonical)
}

/// Parses an IPv4 or IPv6 address. An IPv4-mapped IPv6 address (`::ffff:10.0.0.1`) is
/// returned in its IPv4 form, so one host never has two spellings in the inventory.
///
/// # Errors
/// [`ValidationError::IpAddress`].
pub fn parse_ip(input: &str) -> Result<IpAddr, ValidationError> {
    input
        .trim()
        .parse::<IpAddr>()
        .map(|ip| ip.to_canonical())
        .map_err(|_| ValidationError::IpAddress { input: input.to_owned() })
}

/// The number of addresses in `net` (saturating at `u128::MAX` for a `/0` IPv6 network).
#[must_use]
pub fn network_size(net: &IpNetwork) -> u128 {
    match net {
        IpNetwork::V4(n) => 1u128 << (32 - u32::from(n.prefix())),
        IpNetwork::V6(n) => {
            let host_bits = 128 - u32::from(n.prefix());
            if host_bits >= 128 { u128::MAX } else { 1u128 << host_bits }
        }
    }
}

/// An address as a 128-bit number in one space: IPv4 addresses are mapped into
/// `::ffff:0:0/96`, so ranges compare the same way in every database (see [`ip_key`]).
#[must_use]
pub fn ip_to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(v4.to_ipv6_mapped()),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

/// The inverse of [`ip_to_u128`].
#[must_use]
pub fn u128_to_ip(value: u128) -> IpAddr {
    let v6 = Ipv6Addr::from(value);
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    }
}

/// A fixed-width (32 hex digit) sort key for an address: stores index it so "addresses in
/// this range" is a plain string range query on SQLite, PostgreSQL and MySQL alike.
#[must_use]
pub fn ip_key(ip: IpAddr) -> String {
    format!("{:032x}", ip_to_u128(ip))
}

/// A network environment: a set of networks in one data centre scanned through one
/// discovery queue, with a template for new host names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkEnvironment {
    /// Unique name.
    pub name: String,
    /// The data centre it is in.
    pub data_center: Id<DataCenter>,
    /// The job queue discovery uses for this environment's scans.
    pub queue: String,
    /// Template for host names of new devices, e.g. `s1{counter:4}.dc1.local`.
    pub hostname_template: Option<HostnameTemplate>,
}

impl NetworkEnvironment {
    /// An environment whose queue is named after it.
    ///
    /// # Errors
    /// An empty or overlong name.
    pub fn new(name: &str, data_center: Id<DataCenter>) -> Result<Self, ValidationError> {
        let name = required("name", name, 255)?;
        Ok(Self { queue: format!("discovery.{name}"), name, data_center, hostname_template: None })
    }
}

impl Entity for NetworkEnvironment {
    const NAME: &'static str = "network environment";
    fn validate(&self) -> Result<(), ValidationError> {
        required("name", &self.name, 255)?;
        required("queue", &self.queue, 255)?;
        if let Some(template) = &self.hostname_template {
            crate::text::check_len("hostname_template.prefix", &template.prefix, 255)?;
            crate::text::check_len("hostname_template.postfix", &template.postfix, 255)?;
        }
        Ok(())
    }
}

/// Ralph's host name template: a prefix, a zero-padded counter and a postfix.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostnameTemplate {
    /// Text before the counter, e.g. `s1`.
    pub prefix: String,
    /// Digits of the counter, zero-padded.
    pub counter_length: u8,
    /// Text after the counter, e.g. `.dc1.local`.
    pub postfix: String,
}

impl HostnameTemplate {
    /// The host name for counter value `n`, checked against RFC 1123.
    ///
    /// # Errors
    /// [`ValidationError::Hostname`] when prefix and postfix do not make a valid name.
    pub fn render(&self, n: u64) -> Result<crate::Hostname, ValidationError> {
        let width = usize::from(self.counter_length);
        crate::Hostname::parse(&format!("{}{n:0width$}{}", self.prefix, self.postfix))
    }
}

/// A network: a CIDR with an optional gateway, reserved ranges and VLAN.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Network {
    /// Display name.
    pub name: String,
    /// The network, canonical (no host bits set).
    pub cidr: IpNetwork,
    /// The gateway, inside `cidr`.
    pub gateway: Option<IpAddr>,
    /// Addresses reserved at the start (Ralph's default: 10).
    pub reserved_from_beginning: u32,
    /// Addresses reserved at the end (Ralph's default: 0).
    pub reserved_from_end: u32,
    /// VLAN id.
    pub vlan: Option<Vlan>,
    /// The environment it is scanned in.
    pub environment: Option<Id<NetworkEnvironment>>,
}

impl Network {
    /// Ralph's default for `reserved_from_beginning`.
    pub const DEFAULT_RESERVED_FROM_BEGINNING: u32 = 10;

    /// A network from CIDR text, with Ralph's default reservations and no gateway.
    ///
    /// # Errors
    /// A malformed CIDR or one with host bits set.
    pub fn new(name: &str, cidr: &str) -> Result<Self, ValidationError> {
        let net = Self {
            name: required("name", name, 255)?,
            cidr: parse_cidr(cidr)?,
            gateway: None,
            reserved_from_beginning: Self::DEFAULT_RESERVED_FROM_BEGINNING,
            reserved_from_end: 0,
            vlan: None,
            environment: None,
        };
        net.check_reserved()?;
        Ok(net)
    }

    /// Sets the gateway.
    ///
    /// # Errors
    /// [`ValidationError::GatewayOutsideNetwork`].
    pub fn with_gateway(mut self, gateway: &str) -> Result<Self, ValidationError> {
        let gw = parse_ip(gateway)?;
        self.gateway = Some(gw);
        self.check_gateway()?;
        Ok(self)
    }

    /// Sets the VLAN.
    ///
    /// # Errors
    /// [`ValidationError::Vlan`] outside 1–4094.
    pub fn with_vlan(mut self, vlan: u32) -> Result<Self, ValidationError> {
        self.vlan = Some(Vlan::new(vlan)?);
        Ok(self)
    }

    /// Sets the reserved counts at the start and the end.
    ///
    /// # Errors
    /// [`ValidationError::ReservedTooMany`] when they exceed the network's size.
    pub fn with_reserved(mut self, from_beginning: u32, from_end: u32) -> Result<Self, ValidationError> {
        self.reserved_from_beginning = from_beginning;
        self.reserved_from_end = from_end;
        self.check_reserved()?;
        Ok(self)
    }

    /// Puts the network in an environment.
    #[must_use]
    pub fn in_environment(mut self, environment: Id<NetworkEnvironment>) -> Self {
        self.environment = Some(environment);
        self
    }

    /// Number of addresses in the network.
    #[must_use]
    pub fn size(&self) -> u128 {
        network_size(&self.cidr)
    }

    /// Whether `ip` is inside the network.
    #[must_use]
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.cidr.contains(ip)
    }

    /// The first and last address that are not reserved, or `None` when everything is.
    #[must_use]
    pub fn usable_range(&self) -> Option<(IpAddr, IpAddr)> {
        let first = ip_to_u128(self.cidr.network());
        let last = first + (self.size() - 1);
        let lo = first.checked_add(u128::from(self.reserved_from_beginning))?;
        let hi = last.checked_sub(u128::from(self.reserved_from_end))?;
        (lo <= hi).then(|| (u128_to_ip(lo), u128_to_ip(hi)))
    }

    fn check_gateway(&self) -> Result<(), ValidationError> {
        match self.gateway {
            Some(gw) if !self.cidr.contains(gw) => {
                Err(ValidationError::GatewayOutsideNetwork { gateway: gw, network: self.cidr.to_string() })
            }
            _ => Ok(()),
        }
    }

    fn check_reserved(&self) -> Result<(), ValidationError> {
        let reserved = u128::from(self.reserved_from_beginning) + u128::from(self.reserved_from_end);
        let size = self.size();
        if reserved > size {
            return Err(ValidationError::ReservedTooMany { network: self.cidr.to_string(), size, reserved });
        }
        Ok(())
    }
}

impl Entity for Network {
    const NAME: &'static str = "network";
    fn validate(&self) -> Result<(), ValidationError> {
        required("name", &self.name, 255)?;
        if IpNetwork::new(self.cidr.network(), self.cidr.prefix()).map(|n| n.ip()) != Ok(self.cidr.ip()) {
            return Err(ValidationError::CidrHostBits {
                input: self.cidr.to_string(),
                network: format!("{}/{}", self.cidr.network(), self.cidr.prefix()),
            });
        }
        self.check_gateway()?;
        self.check_reserved()
    }
}

/// The smallest (longest-prefix) network of `networks` that contains `ip`.
pub fn smallest_containing<'a, T: AsRef<Network> + 'a>(
    networks: impl IntoIterator<Item = &'a T>,
    ip: IpAddr,
) -> Option<&'a T> {
    networks.into_iter().filter(|n| n.as_ref().contains(ip)).max_by_key(|n| n.as_ref().cidr.prefix())
}

impl AsRef<Network> for Network {
    fn as_ref(&self) -> &Network {
        self
    }
}

impl AsRef<Network> for crate::Record<Network> {
    fn as_ref(&self) -> &Network {
        &self.value
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::net::Ipv4Addr;

    #[test]
    fn cidr_parsing() {
        assert_eq!(parse_cidr("10.0.0.0/24").map(|n| n.to_string()), Ok("10.0.0.0/24".into()));
        assert_eq!(parse_cidr("2001:db8::/64").map(|n| n.prefix()), Ok(64));
        assert!(matches!(parse_cidr("10.0.0.1/24"), Err(ValidationError::CidrHostBits { .. })));
        for bad in ["", "10.0.0.0", "10.0.0.0/33", "10.0.0/24", "banana/8", "::/129"] {
            assert!(parse_cidr(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn gateway_reserved_vlan() {
        let net = Network::new("dc1-servers", "10.20.0.0/24").expect("valid");
        assert_eq!(net.reserved_from_beginning, 10);
        assert!(net.clone().with_gateway("10.20.0.1").is_ok());
        assert!(matches!(net.clone().with_gateway("10.20.1.1"), Err(ValidationError::GatewayOutsideNetwork { .. })));
        assert!(net.clone().with_gateway("fe80::1").is_err());
        assert!(net.clone().with_vlan(0).is_err());
        assert!(net.clone().with_vlan(4095).is_err());
        assert!(net.clone().with_vlan(4094).is_ok());
        assert!(Network::new("tiny", "10.0.0.0/30").is_err(), "10 reserved in a /30");
        let range = net.usable_range().expect("has usable addresses");
        assert_eq!(range, ("10.20.0.10".parse().expect("ip"), "10.20.0.255".parse().expect("ip")));
        let v6 = Network::new("v6", "2001:db8::/32").expect("valid").with_gateway("2001:db8::1").expect("inside");
        assert_eq!(v6.size(), 1u128 << 96);
        assert_eq!(network_size(&parse_cidr("::/0").expect("valid")), u128::MAX);
    }

    #[test]
    fn smallest_network_wins() {
        let nets = [
            Network::new("all", "10.0.0.0/8").expect("valid"),
            Network::new("dc", "10.1.0.0/16").expect("valid"),
            Network::new("rack", "10.1.2.0/24").expect("valid"),
            Network::new("v6", "2001:db8::/48").expect("valid"),
        ];
        let find = |ip: &str| smallest_containing(&nets, ip.parse().expect("ip")).map(|n| n.name.as_str());
        assert_eq!(find("10.1.2.3"), Some("rack"));
        assert_eq!(find("10.1.3.3"), Some("dc"));
        assert_eq!(find("10.9.0.1"), Some("all"));
        assert_eq!(find("192.0.2.1"), None);
        assert_eq!(find("2001:db8::5"), Some("v6"));
    }

    #[test]
    fn mapped_addresses_are_canonical() {
        assert_eq!(parse_ip("::ffff:10.0.0.1"), parse_ip("10.0.0.1"));
        assert!(parse_ip("10.0.0.256").is_err());
    }

    #[test]
    fn hostname_template_renders() {
        let t = HostnameTemplate { prefix: "s1".into(), counter_length: 4, postfix: ".dc1.local".into() };
        assert_eq!(t.render(42).map(|h| h.to_string()), Ok("s10042.dc1.local".into()));
    }

    proptest! {
        #[test]
        fn gateway_accepted_iff_inside(net in any::<u32>(), prefix in 8u8..=28, gw in any::<u32>()) {
            let cidr = IpNetwork::new(IpAddr::V4(Ipv4Addr::from(net)), prefix).expect("prefix ok");
            let canonical = format!("{}/{}", cidr.network(), prefix);
            let network = Network::new("n", &canonical).expect("canonical").with_reserved(0, 0).expect("fits");
            let gw_ip = IpAddr::V4(Ipv4Addr::from(gw));
            let result = network.with_gateway(&gw_ip.to_string());
            prop_assert_eq!(result.is_ok(), cidr.contains(gw_ip));
        }

        #[test]
        fn host_bits_are_refused(addr in any::<u32>(), prefix in 0u8..=32) {
            let text = format!("{}/{prefix}", Ipv4Addr::from(addr));
            let net = IpNetwork::new(IpAddr::V4(Ipv4Addr::from(addr)), prefix).expect("prefix ok");
            prop_assert_eq!(parse_cidr(&text).is_ok(), net.network() == net.ip());
        }

        #[test]
        fn ip_key_orders_like_addresses(a in any::<u128>(), b in any::<u128>()) {
            let (ia, ib) = (u128_to_ip(a), u128_to_ip(b));
            prop_assert_eq!(ip_to_u128(ia), a);
            prop_assert_eq!(ip_key(ia).cmp(&ip_key(ib)), a.cmp(&b));
        }

        #[test]
        fn cidr_parse_never_panics(input in "\\PC{0,50}") {
            let _ = parse_cidr(&input);
        }
    }
}
