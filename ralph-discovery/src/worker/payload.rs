//! The scan job payload ([`ScanJob`]: target expressions, not addresses) and the functions that
//! split networks, environments and target lists into jobs.

use std::net::IpAddr;

use ipnetwork::IpNetwork;
use ralph_core::{Id, InventoryStore, Job, JobQueue, Network, NetworkEnvironment, Repository, ip_to_u128, u128_to_ip};
use serde::{Deserialize, Serialize};

use crate::{Error, Result, Targets};

/// Jobs per [`JobQueue::enqueue`] call: a /8 in jobs of 256 addresses is 65,536 jobs, written
/// as 66 short transactions instead of one long one.
const ENQUEUE_CHUNK: usize = 1_000;

/// The payload of a scan job: what to scan as target expressions (addresses, CIDRs, `a-b`
/// ranges) minus exclusions, expanded lazily by the worker that runs it, so a job over a /16
/// is a few bytes and nobody builds its 65,536 addresses in memory before they are probed.
///
/// Serialized as JSON: `{"targets":["10.0.0.1-10.0.0.255"],"exclude":["10.0.0.7"]}`. The
/// format before targets existed, `{"addresses":["10.0.0.1", ...]}`, is still read. Unknown
/// fields, text that is no target and sets larger than [`crate::DEFAULT_MAX_ADDRESSES`] are
/// errors ([`ScanJob::parse`], [`ScanJob::resolve`]): a worker dead-letters such a job with
/// the reason and goes on.
///
/// ```
/// use ralph_discovery::ScanJob;
///
/// let job = ScanJob::new(["10.0.0.0/30", "10.0.1.5-10.0.1.6"]).exclude(["10.0.0.1"]);
/// let payload = job.to_payload()?;
/// let back = ScanJob::parse(&payload)?;
/// let all: Vec<String> = back.resolve()?.addresses().map(|a| a.to_string()).collect();
/// assert_eq!(all, ["10.0.0.2", "10.0.1.5", "10.0.1.6"]);
/// assert!(ScanJob::parse(r#"{"targets":["10.0.0.0/8"],"bogus":1}"#).is_err());
/// assert!(ScanJob::new(["10.0.0.300"]).resolve().is_err());
/// # Ok::<(), ralph_discovery::Error>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScanJob {
    /// Addresses, CIDRs and `a-b` ranges to scan, one expression per entry (network and
    /// broadcast addresses of IPv4 CIDRs are skipped, as [`Targets`] does).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub targets: Vec<String>,
    /// Addresses, CIDRs and ranges left out.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude: Vec<String>,
    /// Single addresses: the payload format of earlier versions, still read and scanned.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<IpAddr>,
}

impl ScanJob {
    /// A job over these target expressions.
    #[must_use]
    pub fn new<T: Into<String>>(targets: impl IntoIterator<Item = T>) -> Self {
        Self { targets: targets.into_iter().map(Into::into).collect(), ..Self::default() }
    }

    /// Adds exclusions.
    #[must_use]
    pub fn exclude<T: Into<String>>(mut self, exclude: impl IntoIterator<Item = T>) -> Self {
        self.exclude.extend(exclude.into_iter().map(Into::into));
        self
    }

    /// Reads a job's payload.
    ///
    /// # Errors
    /// [`Error::Payload`] for text that is not a scan job.
    pub fn parse(payload: &str) -> Result<Self> {
        serde_json::from_str(payload).map_err(Error::Payload)
    }

    /// The payload text.
    ///
    /// # Errors
    /// [`Error::Payload`] (serializing strings and addresses does not fail in practice).
    pub fn to_payload(&self) -> Result<String> {
        serde_json::to_string(self).map_err(Error::Payload)
    }

    /// The addresses to scan, validated; expansion is lazy ([`Targets::addresses`]).
    ///
    /// # Errors
    /// [`Error::Target`] for an expression that does not parse, [`Error::TooLarge`] for a set
    /// over [`crate::DEFAULT_MAX_ADDRESSES`].
    pub fn resolve(&self) -> Result<Targets> {
        let mut targets = Targets::new();
        for item in &self.targets {
            targets = targets.include(item.trim())?;
        }
        targets = targets.add_addresses(self.addresses.iter().copied())?;
        for item in &self.exclude {
            targets = targets.exclude(item)?;
        }
        Ok(targets)
    }

    /// The smallest and largest address the job may scan, per family (IPv4 first): where a
    /// worker looks for buried addresses.
    ///
    /// # Errors
    /// As [`ScanJob::resolve`].
    pub fn bounds(&self) -> Result<Vec<(IpAddr, IpAddr)>> {
        let mut v4: Option<Span> = None;
        let mut v6: Option<Span> = None;
        let spans = self.targets.iter().map(|t| span(t.trim(), true)).chain(self.addresses.iter().map(|a| {
            let v = ip_to_u128(*a);
            Ok(Span { start: v, end: v })
        }));
        for s in spans {
            let s = s?;
            let slot = if u128_to_ip(s.start).is_ipv4() { &mut v4 } else { &mut v6 };
            *slot = Some(slot.map_or(s, |o| Span { start: o.start.min(s.start), end: o.end.max(s.end) }));
        }
        Ok([v4, v6].into_iter().flatten().map(|s| (u128_to_ip(s.start), u128_to_ip(s.end))).collect())
    }
}

/// Both ends of a block of addresses in the `ip_to_u128` space.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Span {
    start: u128,
    end: u128,
}

impl Span {
    fn expression(self) -> String {
        if self.start == self.end {
            u128_to_ip(self.start).to_string()
        } else {
            format!("{}-{}", u128_to_ip(self.start), u128_to_ip(self.end))
        }
    }
}

/// The block one expression covers; `hosts_only` skips the network and broadcast addresses of
/// IPv4 CIDRs shorter than /31, as [`Targets`] does for targets (not for exclusions). Checked
/// by [`Targets::include`] first, so the errors are its errors.
fn span(item: &str, hosts_only: bool) -> Result<Span> {
    let checked = if hosts_only { Targets::new().include(item)? } else { Targets::new().exclude(item)? };
    drop(checked);
    if let Some((a, b)) = item.split_once('-') {
        return Ok(Span { start: ip_to_u128(parse_ip(item, a)?), end: ip_to_u128(parse_ip(item, b)?) });
    }
    if item.contains('/') {
        let net: IpNetwork = item.parse().map_err(|e| Error::target(item, format!("not a CIDR: {e}")))?;
        return Ok(network_span(net, hosts_only));
    }
    let v = ip_to_u128(parse_ip(item, item)?);
    Ok(Span { start: v, end: v })
}

fn parse_ip(item: &str, text: &str) -> Result<IpAddr> {
    text.trim().parse().map_err(|_| Error::target(item, format!("{text:?} is not an IP address")))
}

fn network_span(net: IpNetwork, hosts_only: bool) -> Span {
    let start = ip_to_u128(net.network());
    let end = start + (ralph_core::network_size(&net).max(1) - 1);
    if hosts_only && net.is_ipv4() && net.prefix() < 31 {
        Span { start: start + 1, end: end - 1 }
    } else {
        Span { start, end }
    }
}

/// Sorts and merges blocks of one family each (touching blocks of different families are kept
/// apart, so no range mixes IPv4 and IPv6).
fn merge(mut spans: Vec<Span>) -> Vec<Span> {
    spans.sort_unstable();
    let mut out: Vec<Span> = Vec::with_capacity(spans.len());
    for s in spans {
        match out.last_mut() {
            Some(last)
                if s.start <= last.end.saturating_add(1)
                    && u128_to_ip(last.start).is_ipv4() == u128_to_ip(s.start).is_ipv4() =>
            {
                last.end = last.end.max(s.end);
            }
            _ => out.push(s),
        }
    }
    out
}

/// Jobs of at most `group` addresses over merged blocks, each with the exclusions that touch
/// it (excluded addresses count towards `group`: a job never spans more than `group`).
fn jobs_over(spans: Vec<Span>, exclude: &[(String, Span)], group: usize) -> Vec<ScanJob> {
    let group = u128::try_from(group.max(1)).unwrap_or(u128::MAX);
    let mut jobs = Vec::new();
    for s in merge(spans) {
        let mut start = s.start;
        loop {
            let end = start.saturating_add(group - 1).min(s.end);
            let piece = Span { start, end };
            let touching = exclude.iter().filter(|(_, e)| e.start <= end && e.end >= start).map(|(t, _)| t.clone());
            let job = ScanJob::new([piece.expression()]).exclude(touching);
            // A piece wholly excluded would be an empty job.
            if job.resolve().is_ok_and(|t| !t.is_empty()) {
                jobs.push(job);
            }
            if end >= s.end {
                break;
            }
            start = end + 1;
        }
    }
    jobs
}

async fn enqueue_jobs<Q: JobQueue + ?Sized>(jobs: &Q, queue: &str, payloads: Vec<ScanJob>) -> Result<Vec<Id<Job>>> {
    let payloads: Vec<String> = payloads.iter().map(ScanJob::to_payload).collect::<Result<_>>()?;
    let mut ids = Vec::with_capacity(payloads.len());
    for chunk in payloads.chunks(ENQUEUE_CHUNK) {
        ids.extend(jobs.enqueue(queue, chunk).await?);
    }
    Ok(ids)
}

/// Enqueues scans of target expressions (addresses, CIDRs, `a-b` ranges) minus `exclude`
/// onto `queue`, in jobs of at most `group` addresses each carrying ranges, not addresses;
/// overlapping targets are merged first, so no address is in two jobs. Returns the ids.
///
/// # Errors
/// [`Error::Target`] / [`Error::TooLarge`] for a bad expression (nothing is enqueued); the
/// queue's error.
pub async fn enqueue_targets<Q, T, U>(
    jobs: &Q,
    queue: &str,
    targets: impl IntoIterator<Item = T>,
    exclude: impl IntoIterator<Item = U>,
    group: usize,
) -> Result<Vec<Id<Job>>>
where
    Q: JobQueue + ?Sized,
    T: AsRef<str>,
    U: AsRef<str>,
{
    let spans: Vec<Span> = targets.into_iter().map(|t| span(t.as_ref().trim(), true)).collect::<Result<_>>()?;
    let exclude: Vec<(String, Span)> = exclude
        .into_iter()
        .flat_map(|e| e.as_ref().split(|c: char| c == ',' || c.is_whitespace()).map(str::to_owned).collect::<Vec<_>>())
        .filter(|e| !e.is_empty())
        .map(|e| span(&e, false).map(|s| (e, s)))
        .collect::<Result<_>>()?;
    enqueue_jobs(jobs, queue, jobs_over(spans, &exclude, group)).await
}

/// Enqueues `addresses` onto `queue` in jobs of at most `group` addresses (consecutive
/// addresses travel as one range); returns the ids.
///
/// # Errors
/// The queue's error.
pub async fn enqueue_addresses<Q: JobQueue + ?Sized>(
    jobs: &Q,
    queue: &str,
    addresses: impl IntoIterator<Item = IpAddr>,
    group: usize,
) -> Result<Vec<Id<Job>>> {
    let spans = addresses
        .into_iter()
        .map(|a| {
            let v = ip_to_u128(a);
            Span { start: v, end: v }
        })
        .collect();
    enqueue_jobs(jobs, queue, jobs_over(spans, &[], group)).await
}

/// Enqueues a scan of one network onto its environment's queue, as ranges of at most `group`
/// addresses. Buried addresses are skipped by the worker when it runs the job (one range
/// query, [`ralph_core::ScanResultStore::buried_between`]), not read here.
///
/// # Errors
/// [`Error::Config`] when the network has no environment; store and queue errors.
pub async fn enqueue_network<S, Q>(store: &S, jobs: &Q, network: Id<Network>, group: usize) -> Result<Vec<Id<Job>>>
where
    S: InventoryStore + ?Sized,
    Q: JobQueue + ?Sized,
{
    let net = Repository::<Network>::get(store, network).await?;
    let env =
        net.value.environment.ok_or_else(|| Error::Config(format!("network {} has no environment", net.value.name)))?;
    let env = Repository::<NetworkEnvironment>::get(store, env).await?;
    let spans = vec![checked_network(net.value.cidr)?];
    enqueue_jobs(jobs, &env.value.queue, jobs_over(spans, &[], group)).await
}

/// Enqueues scans of every network of an environment onto its queue (nested networks merged,
/// so no address is scanned twice).
///
/// # Errors
/// Store and queue errors, [`Error::TooLarge`] for a network over the size limit.
pub async fn enqueue_environment<S, Q>(
    store: &S,
    jobs: &Q,
    environment: Id<NetworkEnvironment>,
    group: usize,
) -> Result<Vec<Id<Job>>>
where
    S: InventoryStore + ?Sized,
    Q: JobQueue + ?Sized,
{
    let env = Repository::<NetworkEnvironment>::get(store, environment).await?;
    let mut spans = Vec::new();
    for network in store.environment_networks(environment).await? {
        spans.push(checked_network(network.value.cidr)?);
    }
    enqueue_jobs(jobs, &env.value.queue, jobs_over(spans, &[], group)).await
}

fn checked_network(net: IpNetwork) -> Result<Span> {
    Targets::new().add_network(net)?;
    Ok(network_span(net, true))
}

/// What is left of `job` once `done` was scanned: its targets minus the done addresses
/// (consecutive ones excluded as ranges).
pub(crate) fn remainder(job: &ScanJob, mut done: Vec<IpAddr>) -> ScanJob {
    done.sort_unstable_by_key(|a| ip_to_u128(*a));
    let spans: Vec<Span> = done
        .iter()
        .map(|a| {
            let v = ip_to_u128(*a);
            Span { start: v, end: v }
        })
        .collect();
    let mut rest = job.clone();
    rest.targets.extend(rest.addresses.drain(..).map(|a| a.to_string()));
    rest.exclude.extend(merge(spans).into_iter().map(Span::expression));
    rest
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(job: &ScanJob) -> Vec<String> {
        job.resolve().expect("resolve").addresses().map(|a| a.to_string()).collect()
    }

    #[test]
    fn a_slash_eight_is_split_into_ranges_without_expanding_it() {
        let spans = vec![span("10.0.0.0/8", true).expect("span")];
        let jobs = jobs_over(spans, &[], 1 << 16);
        assert_eq!(jobs.len(), 256);
        assert_eq!(jobs[0].targets, ["10.0.0.1-10.1.0.0"]);
        assert_eq!(jobs[255].targets, ["10.255.0.1-10.255.255.254"]);
        let total: u128 = jobs.iter().map(|j| j.resolve().expect("resolve").len()).sum();
        assert_eq!(total, (1 << 24) - 2);
        assert!(jobs.iter().all(|j| j.to_payload().expect("payload").len() < 64), "ranges, not addresses");
    }

    #[test]
    fn overlaps_are_merged_and_exclusions_follow_their_jobs() {
        let spans = ["10.0.0.0/29", "10.0.0.4-10.0.0.9", "::1"].map(|t| span(t, true).expect("span")).to_vec();
        let excl = vec![("10.0.0.8".to_owned(), span("10.0.0.8", false).expect("span"))];
        let jobs = jobs_over(spans, &excl, 4);
        let all: Vec<String> = jobs.iter().flat_map(list).collect();
        // Numeric order with IPv4 mapped into ::ffff:0:0/96: ::1 first.
        assert_eq!(
            all,
            ["::1", "10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5", "10.0.0.6", "10.0.0.7", "10.0.0.9"]
        );
        assert_eq!(jobs.len(), 4);
        assert_eq!(jobs[1].exclude, Vec::<String>::new());
        assert_eq!(jobs[2].exclude, ["10.0.0.8"]);
    }

    #[test]
    fn old_payloads_are_read_and_bad_ones_are_typed_errors() {
        let old = ScanJob::parse(r#"{"addresses":["127.0.0.1","127.0.0.2"]}"#).expect("old format");
        assert_eq!(list(&old), ["127.0.0.1", "127.0.0.2"]);
        assert_eq!(
            old.bounds().expect("bounds"),
            [("127.0.0.1".parse().expect("ip"), "127.0.0.2".parse().expect("ip"))]
        );
        assert!(matches!(ScanJob::parse("[1,2]"), Err(Error::Payload(_))));
        assert!(matches!(ScanJob::parse(r#"{"targets":"10.0.0.1"}"#), Err(Error::Payload(_))));
        assert!(matches!(ScanJob::new(["10.0.0.1/24"]).resolve(), Err(Error::Target { .. })));
        assert!(matches!(ScanJob::new(["2001:db8::/64"]).resolve(), Err(Error::TooLarge { .. })));
        assert!(matches!(ScanJob::new(["10.0.0.1"]).exclude(["nope"]).resolve(), Err(Error::Target { .. })));
    }

    #[test]
    fn the_remainder_excludes_what_was_done() {
        let job = ScanJob::new(["10.0.0.1-10.0.0.6"]);
        let done = ["10.0.0.2", "10.0.0.1", "10.0.0.5"].map(|a| a.parse().expect("ip")).to_vec();
        let rest = remainder(&job, done);
        assert_eq!(rest.exclude, ["10.0.0.1-10.0.0.2", "10.0.0.5"]);
        assert_eq!(list(&rest), ["10.0.0.3", "10.0.0.4", "10.0.0.6"]);
    }
}
