//! Scan targets: CIDRs, ranges and address lists with exclusions, and the store's networks.

use std::collections::BTreeSet;
use std::net::IpAddr;

use ipnetwork::IpNetwork;
use ralph_core::{Id, InventoryStore, Network, NetworkEnvironment, ip_to_u128, u128_to_ip};

use crate::{Error, Result};

/// The default bound on how many addresses one target set may expand to.
pub const DEFAULT_MAX_ADDRESSES: u128 = 1 << 24;

/// One contiguous block of addresses, both ends included, in the `ip_to_u128` space.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Block {
    start: u128,
    end: u128,
}

/// A set of addresses to scan: CIDRs, `a-b` ranges and single addresses (IPv4 and IPv6) minus
/// exclusions. Expansion is lazy and ordered; the size is bounded so a typo such as an IPv6
/// `/64` is a clear error instead of an endless sweep.
///
/// ```
/// use ralph_discovery::Targets;
///
/// let t = Targets::parse("10.0.0.0/30, 10.0.1.5-10.0.1.6, ::1")?.exclude("10.0.0.1")?;
/// let all: Vec<String> = t.addresses().map(|a| a.to_string()).collect();
/// // Network and broadcast addresses of an IPv4 CIDR are skipped, as Ralph did; the order is
/// // numeric with IPv4 mapped into `::ffff:0:0/96`.
/// assert_eq!(all, ["::1", "10.0.0.2", "10.0.1.5", "10.0.1.6"]);
/// assert!(Targets::parse("2001:db8::/64").is_err());
/// # Ok::<(), ralph_discovery::Error>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Targets {
    include: Vec<Block>,
    exclude: Vec<Block>,
    max_addresses: u128,
}

impl Targets {
    /// An empty set with the default size limit.
    #[must_use]
    pub fn new() -> Self {
        Self { include: Vec::new(), exclude: Vec::new(), max_addresses: DEFAULT_MAX_ADDRESSES }
    }

    /// Parses a comma- or whitespace-separated list of addresses, CIDRs and `a-b` ranges.
    ///
    /// # Errors
    /// [`Error::Target`] for text that is none of those, [`Error::TooLarge`] when the set
    /// would exceed [`DEFAULT_MAX_ADDRESSES`].
    pub fn parse(input: &str) -> Result<Self> {
        let mut targets = Self::new();
        for item in split_items(input) {
            targets = targets.include(item)?;
        }
        Ok(targets)
    }

    /// Changes the size limit (checked by later additions and by [`Targets::len`] users).
    #[must_use]
    pub fn with_max_addresses(mut self, max: u128) -> Self {
        self.max_addresses = max;
        self
    }

    /// Adds one address, CIDR or range.
    ///
    /// # Errors
    /// As [`Targets::parse`].
    pub fn include(mut self, item: &str) -> Result<Self> {
        let block = parse_block(item, true)?;
        let size = block.end - block.start;
        let total = self.raw_len().saturating_add(size).saturating_add(1);
        if total > self.max_addresses {
            return Err(Error::TooLarge {
                input: item.to_owned(),
                size: size.saturating_add(1),
                limit: self.max_addresses,
            });
        }
        self.include.push(block);
        Ok(self)
    }

    /// Adds a network from the store (network and broadcast addresses skipped for IPv4).
    ///
    /// # Errors
    /// [`Error::TooLarge`].
    pub fn add_network(self, network: IpNetwork) -> Result<Self> {
        self.include(&network.to_string())
    }

    /// Adds addresses one by one.
    ///
    /// # Errors
    /// [`Error::TooLarge`].
    pub fn add_addresses(mut self, addresses: impl IntoIterator<Item = IpAddr>) -> Result<Self> {
        for ip in addresses {
            let v = ip_to_u128(ip);
            if self.raw_len().saturating_add(1) > self.max_addresses {
                return Err(Error::TooLarge { input: ip.to_string(), size: 1, limit: self.max_addresses });
            }
            self.include.push(Block { start: v, end: v });
        }
        Ok(self)
    }

    /// Excludes addresses, CIDRs or ranges (comma- or whitespace-separated). An excluded CIDR
    /// is excluded whole, network and broadcast addresses included.
    ///
    /// # Errors
    /// [`Error::Target`] for text that does not parse.
    pub fn exclude(mut self, input: &str) -> Result<Self> {
        for item in split_items(input) {
            self.exclude.push(parse_block(item, false)?);
        }
        Ok(self)
    }

    /// Excludes single addresses (buried ones, say).
    #[must_use]
    pub fn exclude_addresses(mut self, addresses: impl IntoIterator<Item = IpAddr>) -> Self {
        self.exclude.extend(addresses.into_iter().map(|ip| {
            let v = ip_to_u128(ip);
            Block { start: v, end: v }
        }));
        self
    }

    fn raw_len(&self) -> u128 {
        self.include.iter().fold(0u128, |acc, b| acc.saturating_add(b.end - b.start + 1))
    }

    /// The normalised blocks: included minus excluded, sorted, merged.
    fn blocks(&self) -> Vec<Block> {
        let mut inc = merge(self.include.clone());
        let exc = merge(self.exclude.clone());
        for e in exc {
            let mut next = Vec::with_capacity(inc.len() + 1);
            for b in inc {
                if e.end < b.start || e.start > b.end {
                    next.push(b);
                    continue;
                }
                if e.start > b.start {
                    next.push(Block { start: b.start, end: e.start - 1 });
                }
                if e.end < b.end {
                    next.push(Block { start: e.end + 1, end: b.end });
                }
            }
            inc = next;
        }
        inc
    }

    /// How many distinct addresses the set holds.
    #[must_use]
    pub fn len(&self) -> u128 {
        self.blocks().iter().fold(0u128, |acc, b| acc.saturating_add(b.end - b.start + 1))
    }

    /// True when no address is left.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The addresses, ascending, each once (the iterator knows its exact length).
    #[must_use]
    pub fn addresses(&self) -> Addresses {
        let blocks = self.blocks();
        let remaining = blocks.iter().fold(0u128, |acc, b| acc.saturating_add(b.end - b.start + 1));
        Addresses { next: blocks.first().map_or(0, |b| b.start), blocks, index: 0, remaining }
    }

    /// The networks of an environment with the store's buried addresses excluded.
    ///
    /// # Errors
    /// The store's errors, [`Error::TooLarge`].
    pub async fn from_environment<S: InventoryStore + ?Sized>(
        store: &S,
        environment: Id<NetworkEnvironment>,
    ) -> Result<Self> {
        let mut targets = Self::new();
        for network in store.environment_networks(environment).await? {
            targets = targets.with_network_of(store, &network.value).await?;
        }
        Ok(targets)
    }

    /// One network from the store with its buried addresses excluded.
    ///
    /// # Errors
    /// The store's errors, [`Error::TooLarge`].
    pub async fn with_network_of<S: InventoryStore + ?Sized>(self, store: &S, network: &Network) -> Result<Self> {
        let buried: Vec<IpAddr> = store
            .ip_addresses_in(network.cidr, true)
            .await?
            .into_iter()
            .filter(|r| r.value.is_buried)
            .map(|r| r.value.address)
            .collect();
        Ok(self.add_network(network.cidr)?.exclude_addresses(buried))
    }
}

/// The addresses of a [`Targets`], ascending.
#[derive(Debug, Clone)]
pub struct Addresses {
    blocks: Vec<Block>,
    index: usize,
    next: u128,
    remaining: u128,
}

impl Iterator for Addresses {
    type Item = IpAddr;

    fn next(&mut self) -> Option<IpAddr> {
        let block = *self.blocks.get(self.index)?;
        let ip = u128_to_ip(self.next);
        self.remaining -= 1;
        if self.next == block.end {
            self.index += 1;
            self.next = self.blocks.get(self.index).map_or(0, |b| b.start);
        } else {
            self.next += 1;
        }
        Some(ip)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        match usize::try_from(self.remaining) {
            Ok(n) => (n, Some(n)),
            Err(_) => (usize::MAX, None),
        }
    }
}

fn split_items(input: &str) -> impl Iterator<Item = &str> {
    input.split(|c: char| c == ',' || c.is_whitespace()).filter(|s| !s.is_empty())
}

fn merge(mut blocks: Vec<Block>) -> Vec<Block> {
    blocks.sort();
    let mut out: Vec<Block> = Vec::with_capacity(blocks.len());
    for b in blocks {
        match out.last_mut() {
            Some(last) if b.start <= last.end.saturating_add(1) => last.end = last.end.max(b.end),
            _ => out.push(b),
        }
    }
    out
}

fn parse_ip(item: &str, text: &str) -> Result<IpAddr> {
    text.trim().parse().map_err(|_| Error::target(item, format!("{text:?} is not an IP address")))
}

/// Parses one item. `hosts_only` skips the network and broadcast addresses of IPv4 CIDRs
/// shorter than /31 (targets), exclusions keep the whole block.
fn parse_block(item: &str, hosts_only: bool) -> Result<Block> {
    if let Some((a, b)) = item.split_once('-') {
        let (a, b) = (parse_ip(item, a)?, parse_ip(item, b)?);
        if a.is_ipv4() != b.is_ipv4() {
            return Err(Error::target(item, "a range must not mix IPv4 and IPv6"));
        }
        let (start, end) = (ip_to_u128(a), ip_to_u128(b));
        if start > end {
            return Err(Error::target(item, "the range ends before it starts"));
        }
        return Ok(Block { start, end });
    }
    if item.contains('/') {
        let net: IpNetwork = item.parse().map_err(|e| Error::target(item, format!("not a CIDR: {e}")))?;
        let canonical = IpNetwork::new(net.network(), net.prefix()).map_err(|e| Error::target(item, e.to_string()))?;
        if canonical.ip() != net.ip() {
            return Err(Error::target(item, format!("host bits set; did you mean {canonical}?")));
        }
        let start = ip_to_u128(net.network());
        let size = ralph_core::network_size(&net);
        if size > DEFAULT_MAX_ADDRESSES {
            return Err(Error::TooLarge { input: item.to_owned(), size, limit: DEFAULT_MAX_ADDRESSES });
        }
        let end = start + (size - 1);
        if hosts_only && net.is_ipv4() && net.prefix() < 31 {
            return Ok(Block { start: start + 1, end: end - 1 });
        }
        return Ok(Block { start, end });
    }
    let v = ip_to_u128(parse_ip(item, item)?);
    Ok(Block { start: v, end: v })
}

/// The distinct addresses of a list, for callers that hold addresses already.
#[must_use]
pub fn dedup_addresses(addresses: impl IntoIterator<Item = IpAddr>) -> Vec<IpAddr> {
    addresses.into_iter().collect::<BTreeSet<_>>().into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn list(t: &Targets) -> Vec<String> {
        t.addresses().map(|a| a.to_string()).collect()
    }

    #[test]
    fn cidr_ranges_lists_and_exclusions() {
        let t = Targets::parse("192.168.1.0/29 192.168.1.6-192.168.1.9,fe80::1").expect("parse");
        assert_eq!(
            list(&t),
            [
                "192.168.1.1",
                "192.168.1.2",
                "192.168.1.3",
                "192.168.1.4",
                "192.168.1.5",
                "192.168.1.6",
                "192.168.1.7",
                "192.168.1.8",
                "192.168.1.9",
                "fe80::1"
            ]
        );
        let t = t.exclude("192.168.1.0/30,fe80::1").expect("exclude");
        assert_eq!(list(&t)[0], "192.168.1.4");
        assert_eq!(t.len(), 6);
        let t = Targets::parse("10.0.0.0/31 2001:db8::/126").expect("parse");
        assert_eq!(t.len(), 6, "a /31 and IPv6 prefixes keep every address");
    }

    #[test]
    fn bad_input_is_a_typed_error() {
        for bad in ["10.0.0.1/24", "10.0.0.300", "10.0.0.5-10.0.0.1", "10.0.0.1-::1", "x/8", "10.0.0.0/33"] {
            assert!(matches!(Targets::parse(bad), Err(Error::Target { .. })), "{bad}");
        }
        match Targets::parse("2001:db8::/64") {
            Err(Error::TooLarge { size, .. }) => assert_eq!(size, 1u128 << 64),
            other => panic!("expected TooLarge, got {other:?}"),
        }
        assert!(matches!(Targets::parse("::/0"), Err(Error::TooLarge { .. })));
        let small = Targets::new().with_max_addresses(10);
        assert!(matches!(small.include("10.0.0.0/24"), Err(Error::TooLarge { .. })));
    }

    proptest! {
        #[test]
        fn expansion_matches_a_naive_set(a in 0u32..512, b in 0u32..512, x in 0u32..512, y in 0u32..512) {
            let base = u32::from(std::net::Ipv4Addr::new(10, 9, 0, 0));
            let ip = |v: u32| std::net::Ipv4Addr::from(base + v);
            let (a, b) = (a.min(b), a.max(b));
            let (x, y) = (x.min(y), x.max(y));
            let t = Targets::parse(&format!("{}-{}", ip(a), ip(b))).expect("range")
                .exclude(&format!("{}-{}", ip(x), ip(y))).expect("exclusion");
            let naive: Vec<IpAddr> = (a..=b).filter(|v| !(x..=y).contains(v)).map(|v| IpAddr::V4(ip(v))).collect();
            let got: Vec<IpAddr> = t.addresses().collect();
            prop_assert_eq!(t.len() as usize, naive.len());
            prop_assert_eq!(got, naive);
        }
    }
}
