//! Discovery results and Ralph's autoscan rules, and the store trait that records them in bulk.

use std::net::IpAddr;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::{IpAddress, Secret, SnmpVersion, StoreError};

/// Ralph's default: after this many scans without an answer, an address's discovery facts are
/// cleared.
pub const DEFAULT_DEAD_PING_LIMIT: u32 = 2;

/// What one scan found at one address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Observation {
    /// The address probed.
    pub address: IpAddr,
    /// Whether it answered any probe.
    pub alive: bool,
    /// When it was probed.
    pub seen_at: DateTime<Utc>,
    /// HTTP server family, when an HTTP probe answered.
    pub http_family: Option<String>,
    /// SNMP `sysName`, when SNMP answered.
    pub snmp_name: Option<String>,
    /// The community that answered; never serialized.
    #[serde(skip)]
    pub snmp_community: Option<Secret>,
    /// The SNMP version that answered.
    pub snmp_version: Option<SnmpVersion>,
    /// Checksum of the normalised results, to flag change between scans.
    pub checksum: Option<String>,
}

impl Observation {
    /// An observation with no facts.
    #[must_use]
    pub fn new(address: IpAddr, alive: bool, seen_at: DateTime<Utc>) -> Self {
        Self {
            address,
            alive,
            seen_at,
            http_family: None,
            snmp_name: None,
            snmp_community: None,
            snmp_version: None,
            checksum: None,
        }
    }
}

/// Applies Ralph's autoscan rules to one address record (pure; stores do the same in SQL):
///
/// - alive: `last_seen = seen_at`, `dead_ping_count = 0`, the HTTP and SNMP facts replaced by
///   what was observed (a fact not observed this time is kept);
/// - not alive: `dead_ping_count + 1`; once it reaches `dead_ping_limit` the HTTP and SNMP
///   facts are cleared.
///
/// Returns whether the stored checksum changed.
pub fn apply_observation(record: &mut IpAddress, observation: &Observation, dead_ping_limit: u32) -> bool {
    if observation.alive {
        record.last_seen = Some(observation.seen_at);
        record.dead_ping_count = 0;
        if observation.http_family.is_some() {
            record.http_family.clone_from(&observation.http_family);
        }
        if observation.snmp_name.is_some() {
            record.snmp_name.clone_from(&observation.snmp_name);
            record.snmp_community.clone_from(&observation.snmp_community);
            record.snmp_version = observation.snmp_version;
        }
    } else {
        record.dead_ping_count = record.dead_ping_count.saturating_add(1);
        if record.dead_ping_count >= dead_ping_limit {
            record.http_family = None;
            record.snmp_name = None;
            record.snmp_community = None;
            record.snmp_version = None;
        }
    }
    let changed = observation.checksum.is_some() && record.scan_checksum != observation.checksum;
    if observation.checksum.is_some() {
        record.scan_checksum.clone_from(&observation.checksum);
    }
    changed
}

/// Counts from one [`ScanResultStore::record_observations`] call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct RecordSummary {
    /// Addresses seen for the first time (inserted).
    pub inserted: u64,
    /// Addresses already known (updated).
    pub updated: u64,
    /// Known addresses whose checksum changed.
    pub changed: u64,
}

/// The longest key [`ScanResultStore::record_batch`] takes.
pub const MAX_BATCH_KEY: usize = 128;

/// Checks a batch key: 1 to [`MAX_BATCH_KEY`] characters, no control characters.
///
/// # Errors
///
/// [`StoreError::Invalid`] naming the field `batch_key`.
pub fn check_batch_key(key: &str) -> Result<(), StoreError> {
    let bad = |e| StoreError::invalid("scan batch", e);
    if key.is_empty() || key.chars().any(char::is_control) {
        return Err(bad(crate::ValidationError::Invalid {
            field: "batch_key",
            reason: "must be non-empty text without control characters".into(),
        }));
    }
    crate::text::check_len("batch_key", key, MAX_BATCH_KEY).map_err(bad)
}

/// Bulk recording of scan observations.
#[async_trait]
pub trait ScanResultStore: Send + Sync {
    /// Upserts the observations with [`apply_observation`]'s rules, all or nothing: either
    /// every observation is recorded or none is. Buried addresses are left untouched. Unknown
    /// addresses are inserted only when alive.
    async fn record_observations(
        &self,
        observations: &[Observation],
        dead_ping_limit: u32,
    ) -> Result<RecordSummary, StoreError>;

    /// [`record_observations`](Self::record_observations) at most once per `key`: the key is
    /// stored in the same transaction, and a batch whose key is already stored writes nothing
    /// and returns `None`. For a caller that retries a batch after an error that may have come
    /// after the commit (a connection lost during `COMMIT`): the retry cannot record the
    /// batch twice (no second dead ping for a silent host). Keys are up to [`MAX_BATCH_KEY`]
    /// characters, for example `job:<id>:claim:<lease token>:<seq>`; they are kept until
    /// [`prune_batches`](Self::prune_batches) removes them.
    async fn record_batch(
        &self,
        key: &str,
        observations: &[Observation],
        dead_ping_limit: u32,
    ) -> Result<Option<RecordSummary>, StoreError>;

    /// Forgets the batch keys recorded more than `older_than` ago; returns how many. A batch
    /// retried after its key was pruned is recorded again.
    async fn prune_batches(&self, older_than: std::time::Duration) -> Result<u64, StoreError>;

    /// The buried addresses from `first` to `last` (both included), ascending: what a scan of
    /// that range skips. Only addresses of `first`'s family are returned; an empty range
    /// (`last` before `first`) holds none. The SQL stores answer with one indexed range query,
    /// so a worker about to sweep a /8 reads its few buried rows, not every row of the network.
    async fn buried_between(&self, first: IpAddr, last: IpAddr) -> Result<Vec<IpAddr>, StoreError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn autoscan_rules() {
        let ip: IpAddr = "10.0.0.5".parse().expect("ip");
        let now = Utc::now();
        let mut rec = IpAddress::new(ip);
        let mut alive = Observation::new(ip, true, now);
        alive.http_family = Some("Apache".into());
        alive.checksum = Some("a".into());
        assert!(apply_observation(&mut rec, &alive, 2));
        assert_eq!((rec.last_seen, rec.dead_ping_count, rec.http_family.as_deref()), (Some(now), 0, Some("Apache")));
        assert!(!apply_observation(&mut rec, &alive, 2), "same checksum is no change");
        let dead = Observation::new(ip, false, now);
        apply_observation(&mut rec, &dead, 2);
        assert_eq!((rec.dead_ping_count, rec.http_family.as_deref()), (1, Some("Apache")));
        apply_observation(&mut rec, &dead, 2);
        assert_eq!((rec.dead_ping_count, rec.http_family.as_deref()), (2, None));
        assert_eq!(rec.last_seen, Some(now), "last_seen is kept");
    }
}
