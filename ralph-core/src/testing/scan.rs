//! [`ScanResultStore`] on [`MemoryStore`]: [`apply_observation`] on the stored address rows.

use std::net::IpAddr;

use async_trait::async_trait;

use super::MemoryStore;
use crate::{
    IpAddress, Observation, RecordSummary, ScanResultStore, StoreError, ValidationError, apply_observation,
    check_batch_key, ip_to_u128,
};

const ENTITY: &str = "IP address";

fn check(field: &'static str, value: Option<&str>, max: usize) -> Result<(), StoreError> {
    value.map_or(Ok(()), |v| crate::text::check_len(field, v, max).map_err(|e| StoreError::invalid(ENTITY, e)))
}

/// The column limits the SQL stores enforce on an observation's facts.
fn check_observation(o: &Observation) -> Result<(), StoreError> {
    check("http_family", o.http_family.as_deref(), 64)?;
    check("snmp_name", o.snmp_name.as_deref(), 255)?;
    check("checksum", o.checksum.as_deref(), 128)?;
    if o.snmp_community.as_ref().is_some_and(|c| c.expose().chars().count() > 255) {
        // The community is a secret: the error names the field only.
        return Err(StoreError::invalid(ENTITY, ValidationError::TooLong { field: "snmp_community", max: 255 }));
    }
    Ok(())
}

/// Applies checked observations to the stored rows.
fn record(state: &mut super::State, observations: &[Observation], dead_ping_limit: u32) -> RecordSummary {
    let mut summary = RecordSummary::default();
    for o in observations {
        let key = ip_to_u128(o.address);
        match state.ip_index.get(&key).copied() {
            Some(id) => {
                let Some(record) = state.ips.get_mut(&id) else { continue };
                if record.is_buried {
                    continue;
                }
                summary.updated += 1;
                if apply_observation(record, o, dead_ping_limit) {
                    summary.changed += 1;
                }
            }
            // A dead answer from an address nobody knew: nothing to record.
            None if !o.alive => {}
            None => {
                let mut record = IpAddress::new(o.address);
                apply_observation(&mut record, o, dead_ping_limit);
                let id = state.next_id("ip_addresses");
                state.ips.insert(id, record);
                state.ip_index.insert(key, id);
                summary.inserted += 1;
            }
        }
    }
    summary
}

#[async_trait]
impl ScanResultStore for MemoryStore {
    async fn record_observations(
        &self,
        observations: &[Observation],
        dead_ping_limit: u32,
    ) -> Result<RecordSummary, StoreError> {
        // Everything is checked before anything is written: all or nothing.
        observations.iter().try_for_each(check_observation)?;
        Ok(record(&mut self.lock(), observations, dead_ping_limit))
    }

    async fn record_batch(
        &self,
        key: &str,
        observations: &[Observation],
        dead_ping_limit: u32,
    ) -> Result<Option<RecordSummary>, StoreError> {
        check_batch_key(key)?;
        observations.iter().try_for_each(check_observation)?;
        let mut state = self.lock();
        if state.batches.contains_key(key) {
            return Ok(None);
        }
        state.batches.insert(key.to_owned(), chrono::Utc::now());
        Ok(Some(record(&mut state, observations, dead_ping_limit)))
    }

    async fn prune_batches(&self, older_than: std::time::Duration) -> Result<u64, StoreError> {
        let cutoff = chrono::Utc::now() - chrono::Duration::from_std(older_than).unwrap_or(chrono::Duration::MAX);
        let mut state = self.lock();
        let before = state.batches.len();
        state.batches.retain(|_, at| *at >= cutoff);
        Ok(u64::try_from(before - state.batches.len()).unwrap_or(u64::MAX))
    }

    async fn buried_between(&self, first: IpAddr, last: IpAddr) -> Result<Vec<IpAddr>, StoreError> {
        let (lo, hi) = (ip_to_u128(first), ip_to_u128(last));
        if lo > hi {
            return Ok(Vec::new());
        }
        let state = self.lock();
        // The index is ordered by `ip_to_u128`, as the SQL stores order by `ip_key`.
        Ok(state
            .ip_index
            .range(lo..=hi)
            .filter_map(|(_, id)| state.ips.get(id))
            .filter(|r| r.is_buried && r.address.is_ipv4() == first.is_ipv4())
            .map(|r| r.address)
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use chrono::Utc;

    use super::*;
    use crate::Secret;

    #[tokio::test]
    async fn autoscan_rules_all_or_nothing() {
        let store = MemoryStore::new();
        let ip = |s: &str| s.parse::<std::net::IpAddr>().expect("ip");
        let mut buried = IpAddress::new(ip("10.0.0.9"));
        buried.is_buried = true;
        store.insert_ip_address(&buried).expect("buried");
        assert!(store.insert_ip_address(&buried).expect_err("dup").is_conflict());
        let now = Utc::now();
        let mut alive = Observation::new(ip("10.0.0.1"), true, now);
        alive.http_family = Some("nginx".into());
        alive.checksum = Some("a".into());
        let dead_unknown = Observation::new(ip("10.0.0.2"), false, now);
        let touch_buried = Observation::new(ip("10.0.0.9"), true, now);
        let summary = store.record_observations(&[alive.clone(), dead_unknown, touch_buried], 2).await.expect("record");
        assert_eq!((summary.inserted, summary.updated, summary.changed), (1, 0, 0));
        let changed = Observation { checksum: Some("b".into()), ..alive.clone() };
        let summary = store.record_observations(&[alive.clone(), changed], 2).await.expect("record");
        assert_eq!((summary.inserted, summary.updated, summary.changed), (0, 2, 1));

        let mut bad = Observation::new(ip("10.0.0.3"), true, now);
        bad.snmp_community = Some(Secret::new("c".repeat(256)));
        let dead = Observation::new(ip("10.0.0.1"), false, now);
        assert!(store.record_observations(&[dead.clone(), bad], 2).await.expect_err("bad").is_invalid());
        let records = store.ip_addresses();
        assert_eq!(records.len(), 2);
        assert_eq!(
            (records[0].dead_ping_count, records[0].http_family.as_deref()),
            (0, Some("nginx")),
            "nothing written"
        );
        assert_eq!(records[1].value, buried, "buried addresses are untouched");
        store.record_observations(&[dead.clone(), dead], 2).await.expect("dead twice");
        let records = store.ip_addresses();
        assert_eq!((records[0].dead_ping_count, records[0].http_family.as_deref()), (2, None), "facts cleared");
    }
}
