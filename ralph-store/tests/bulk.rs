//! Bulk upsert of scan observations on SQLite, PostgreSQL and MariaDB: the SQL agrees with
//! `apply_observation` on random inputs, buried addresses stay untouched, batches larger than
//! one statement's parameter budget work, and a refused batch writes nothing. Every change of
//! an address's followed facts (HTTP family, SNMP name, community, version) is on record, once,
//! and its history replays to what the store holds.

mod queue_common;

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use chrono::{DateTime, Utc};
use ralph_core::history::HistoryStore;
use ralph_core::{
    Entity, InventoryStore, IpAddress, Observation, RecordSummary, Repository, ScanResultStore, Secret, SnmpVersion,
    apply_observation,
};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

trait Store: ScanResultStore + InventoryStore + Repository<IpAddress> + HistoryStore {}
impl<T: ScanResultStore + InventoryStore + Repository<IpAddress> + HistoryStore> Store for T {}

/// The facts of an address its history follows.
type Facts = (Option<String>, Option<String>, Option<String>, Option<&'static str>);

fn facts_of(r: Option<&IpAddress>) -> Option<Facts> {
    r.map(|r| {
        (
            r.http_family.clone(),
            r.snmp_name.clone(),
            r.snmp_community.as_ref().map(|c| c.expose().to_owned()),
            r.snmp_version.map(SnmpVersion::as_str),
        )
    })
}

/// Whether a write from `before` to `after` changes a followed fact (a new address: whether
/// it has any).
fn facts_changed(before: Option<&IpAddress>, after: &IpAddress) -> bool {
    match facts_of(before) {
        Some(b) => Some(b) != facts_of(Some(after)),
        None => facts_of(Some(after)) != Some((None, None, None, None)),
    }
}

fn addr(i: u32) -> IpAddr {
    IpAddr::from([10, 9, (i >> 8) as u8, i as u8])
}

fn time(rng: &mut StdRng) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(1_700_000_000_000_000 + rng.random_range(0..10_000_000_000)).expect("time")
}

fn pick<T: Clone>(rng: &mut StdRng, options: &[T]) -> Option<T> {
    let i = rng.random_range(0..=options.len());
    options.get(i).cloned()
}

fn random_record(rng: &mut StdRng, address: IpAddr) -> IpAddress {
    let mut r = IpAddress::new(address);
    r.last_seen = rng.random_bool(0.5).then(|| time(rng));
    r.dead_ping_count = rng.random_range(0..4);
    r.is_buried = rng.random_bool(0.2);
    r.http_family = pick(rng, &["Apache".to_owned(), "nginx".to_owned()]);
    r.snmp_name = pick(rng, &["sw-1.dc1".to_owned(), "Zażółć-🚀".to_owned()]);
    r.snmp_community = r.snmp_name.as_ref().map(|_| Secret::new("public"));
    r.snmp_version = r.snmp_name.as_ref().map(|_| SnmpVersion::V2c);
    r.scan_checksum = pick(rng, &["c1".to_owned(), "c2".to_owned()]);
    r
}

fn random_observation(rng: &mut StdRng, address: IpAddr) -> Observation {
    let mut o = Observation::new(address, rng.random_bool(0.6), time(rng));
    o.http_family =
        pick(rng, &["Apache".to_owned(), "Cisco".to_owned(), "ünïcode".to_owned(), "quo\"te\\back\tslash".to_owned()]);
    o.snmp_name = pick(rng, &["sw-2.dc1".to_owned(), "東京-router".to_owned()]);
    o.snmp_community = pick(rng, &[Secret::new("private"), Secret::new("s3cr3t")]);
    o.snmp_version = pick(rng, &[SnmpVersion::V1, SnmpVersion::V2c, SnmpVersion::V3]);
    o.checksum = pick(rng, &["c1".to_owned(), "c2".to_owned(), "c3".to_owned()]);
    o
}

/// The rules applied in Rust, one observation after the other.
fn expected(
    mut known: HashMap<IpAddr, IpAddress>,
    observations: &[Observation],
    limit: u32,
) -> (HashMap<IpAddr, IpAddress>, RecordSummary, BTreeMap<IpAddr, usize>) {
    let mut summary = RecordSummary::default();
    let mut records: BTreeMap<IpAddr, usize> = BTreeMap::new();
    for o in observations {
        match known.get_mut(&o.address) {
            Some(r) if r.is_buried => {}
            Some(r) => {
                summary.updated += 1;
                let before = r.clone();
                if apply_observation(r, o, limit) {
                    summary.changed += 1;
                }
                if facts_changed(Some(&before), r) {
                    *records.entry(o.address).or_default() += 1;
                }
            }
            None if o.alive => {
                let mut r = IpAddress::new(o.address);
                apply_observation(&mut r, o, limit);
                summary.inserted += 1;
                if facts_changed(None, &r) {
                    *records.entry(o.address).or_default() += 1;
                }
                known.insert(o.address, r);
            }
            None => {}
        }
    }
    (known, summary, records)
}

/// The history records of the address with id `id` that scan results wrote.
async fn scan_records<S: Store>(store: &S, id: i64) -> usize {
    let history = store.object_history(IpAddress::NAME, id, 1000).await.expect("history");
    for e in &history {
        assert!(!e.record.changes.is_empty(), "no empty history rows: {e:?}");
        assert!(
            e.record.changes.iter().all(|c| c.field != "last_seen" && c.field != "dead_ping_count"),
            "noise is not history: {e:?}"
        );
    }
    history.iter().filter(|e| e.record.message.as_deref().is_some_and(|m| m.starts_with("scan results"))).count()
}

/// Random existing rows, random batches with repeated addresses, random dead-ping limits: the
/// store must end where `apply_observation` ends, and report the same counts. `history`: the
/// store records the change history of facts (the default), or none (`without_scan_history`,
/// whose writes take other statements).
async fn rules_match_apply_observation<S: Store>(store: &S, cases: u32, seed: u64, history: bool) {
    let mut rng = StdRng::seed_from_u64(seed);
    for case in 0..cases {
        let base = case * 40;
        let mut known = HashMap::new();
        for i in 0..20 {
            if rng.random_bool(0.6) {
                let r = random_record(&mut rng, addr(base + i));
                store.create(&r).await.expect("seed row");
                known.insert(r.address, r);
            }
        }
        let limit = rng.random_range(0..4);
        for _batch in 0..3 {
            let observations: Vec<Observation> = (0..30)
                .map(|_| {
                    let a = addr(base + rng.random_range(0..25));
                    random_observation(&mut rng, a)
                })
                .collect();
            let (want, want_summary, want_records) = expected(known.clone(), &observations, limit);
            let mut records_before = BTreeMap::new();
            for i in 0..25 {
                if let Some(r) = store.find_ip(addr(base + i)).await.expect("find") {
                    records_before.insert(r.value.address, scan_records(store, r.id.get()).await);
                }
            }
            let got_summary = store.record_observations(&observations, limit).await.expect("record");
            assert_eq!(got_summary, want_summary, "seed {seed} case {case}: summary");
            for i in 0..25 {
                let a = addr(base + i);
                let got = store.find_ip(a).await.expect("find");
                assert_eq!(
                    got.as_ref().map(|r| &r.value),
                    want.get(&a),
                    "seed {seed} case {case}: address {a} (limit {limit})"
                );
                let Some(got) = got else { continue };
                // One record per observation that changed a followed fact, and the history
                // replays to the stored facts (the community as a secret).
                let written = scan_records(store, got.id.get()).await - records_before.get(&a).copied().unwrap_or(0);
                if !history {
                    assert_eq!(written, 0, "seed {seed} case {case}: {a} has no history");
                    continue;
                }
                assert_eq!(written, want_records.get(&a).copied().unwrap_or(0), "seed {seed} case {case}: {a} history");
                let state = store.object_at(IpAddress::NAME, got.id.get(), Utc::now()).await.expect("state");
                let field = |name: &str| state.fields.get(name).cloned();
                assert_eq!(field("http_family"), got.value.http_family, "seed {seed} case {case}: {a}");
                assert_eq!(field("snmp_name"), got.value.snmp_name, "seed {seed} case {case}: {a}");
                assert_eq!(
                    field("snmp_version").as_deref(),
                    got.value.snmp_version.map(SnmpVersion::as_str),
                    "seed {seed} case {case}: {a}"
                );
                assert_eq!(field("snmp_community").is_some(), got.value.snmp_community.is_some());
                assert!(!field("snmp_community").is_some_and(|c| c.contains("public") || c.contains("private")));
            }
            known = want;
        }
    }
}

/// Sweeps over 400 addresses, most of them stored: long runs of alive answers (MySQL writes
/// runs of stored addresses answering alive with a join instead of the upsert) broken by dead
/// answers and by buried and unknown addresses. The store ends where `apply_observation`
/// ends and reports the same counts.
async fn sweeps_match_apply_observation<S: Store>(store: &S, seed: u64) {
    const SPAN: u32 = 400;
    let mut rng = StdRng::seed_from_u64(seed);
    let base = 500_000 + u32::try_from(seed & 0xff).expect("small") * 1000;
    let mut known = HashMap::new();
    for i in 0..SPAN {
        if i % 97 != 5 {
            let mut r = random_record(&mut rng, addr(base + i));
            r.is_buried = i % 89 == 3;
            store.create(&r).await.expect("seed row");
            known.insert(r.address, r);
        }
    }
    for sweep in 0..2 {
        let observations: Vec<Observation> = (0..SPAN)
            .map(|i| {
                let mut o = random_observation(&mut rng, addr(base + i));
                o.alive = i % 71 != 7;
                o
            })
            .collect();
        let (want, want_summary, _) = expected(known.clone(), &observations, 2);
        let got_summary = store.record_observations(&observations, 2).await.expect("record");
        assert_eq!(got_summary, want_summary, "seed {seed} sweep {sweep}: summary");
        for i in 0..SPAN {
            let a = addr(base + i);
            let got = store.find_ip(a).await.expect("find");
            assert_eq!(got.as_ref().map(|r| &r.value), want.get(&a), "seed {seed} sweep {sweep}: address {a}");
        }
        known = want;
    }
}

async fn large_batches_cross_chunks<S: Store>(store: &S) {
    let now = Utc::now();
    let alive: Vec<Observation> = (0..40_000).map(|i| Observation::new(addr(100_000 + i), true, now)).collect();
    let s = store.record_observations(&alive, 2).await.expect("record alive");
    assert_eq!((s.inserted, s.updated), (40_000, 0));
    let dead: Vec<Observation> = alive.iter().map(|o| Observation::new(o.address, false, now)).collect();
    let s = store.record_observations(&dead, 2).await.expect("record dead");
    assert_eq!((s.inserted, s.updated), (0, 40_000));
    let last = store.find_ip(addr(100_000 + 39_999)).await.expect("find").expect("exists");
    assert_eq!(last.dead_ping_count, 1);
}

async fn refused_batch_writes_nothing<S: Store>(store: &S) {
    let now = Utc::now();
    let mut batch: Vec<Observation> = (0..5000).map(|i| Observation::new(addr(200_000 + i), true, now)).collect();
    batch[4999].http_family = Some("x".repeat(65));
    let err = store.record_observations(&batch, 2).await.expect_err("overlong fact");
    assert!(err.is_invalid(), "{err:?}");
    assert!(store.find_ip(addr(200_000)).await.expect("find").is_none(), "nothing of the batch was written");
}

/// An address buried by another transaction while a recording of it waits on its row ends as
/// the burial left it: `$pool` holds the burial open (an `UPDATE`, not yet committed) while
/// `$store` records a new fact for it and its neighbours, then commits. With and without
/// history.
macro_rules! burial_during_recording_wins {
    ($store:expr, $pool:expr, $n:expr) => {{
        for (round, history) in [(0_u32, true), (1, false)] {
            let store = if history { $store.clone() } else { $store.clone().without_scan_history() };
            // A run of 100 stored addresses answering alive (MySQL writes such runs with a
            // join); the one in the middle is buried meanwhile.
            let first = 300_000 + ($n * 2 + round) * 1000;
            let mut seen: Vec<Observation> = (first..first + 100)
                .map(|i| {
                    let mut o = Observation::new(addr(i), true, Utc::now());
                    o.http_family = Some("Apache".into());
                    o
                })
                .collect();
            store.record_observations(&seen, 2).await.expect("first record");
            let ip = addr(first + 50);
            let mut burial = $pool.begin().await.expect("begin");
            let sql = format!(
                "UPDATE ip_addresses SET is_buried = TRUE, http_family = 'kept' WHERE ip_key = '{}'",
                ralph_core::ip_key(ip)
            );
            sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&mut *burial).await.expect("bury");
            for o in &mut seen {
                o.http_family = Some("nginx".into());
            }
            let recorder = store.clone();
            let recording = tokio::spawn(async move { recorder.record_observations(&seen, 2).await });
            // Long enough for the recording to read the rows and wait on the buried one's lock.
            tokio::time::sleep(std::time::Duration::from_millis(400)).await;
            assert!(!recording.is_finished(), "history {history}: the recording waits on the burial");
            burial.commit().await.expect("commit burial");
            recording.await.expect("join").expect("recording");
            let got = store.find_ip(ip).await.expect("find").expect("stored");
            assert!(got.value.is_buried, "history {history}");
            assert_eq!(
                got.value.http_family.as_deref(),
                Some("kept"),
                "history {history}: the buried row is untouched"
            );
            let next = store.find_ip(addr(first + 51)).await.expect("find").expect("stored");
            assert_eq!(next.value.http_family.as_deref(), Some("nginx"), "history {history}: the others are written");
        }
    }};
}

#[cfg(feature = "sqlite")]
mod sqlite {
    use super::*;
    use ralph_store::SqliteStore;

    async fn store() -> (SqliteStore, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}", dir.path().join("bulk.sqlite3").display());
        (SqliteStore::connect(&url).await.expect("connect"), dir)
    }

    #[tokio::test]
    async fn sqlite_rules_match_apply_observation() {
        let (s, _dir) = store().await;
        rules_match_apply_observation(&s, 40, 0x5eed_0001, true).await;
    }
    #[tokio::test]
    async fn sqlite_rules_match_apply_observation_without_history() {
        let (s, _dir) = store().await;
        rules_match_apply_observation(&s.without_scan_history(), 40, 0x5eed_0011, false).await;
    }
    #[tokio::test]
    async fn sqlite_large_batches_cross_chunks_without_history() {
        let (s, _dir) = store().await;
        large_batches_cross_chunks(&s.without_scan_history()).await;
    }
    #[tokio::test]
    async fn sqlite_large_batches_cross_chunks() {
        let (s, _dir) = store().await;
        large_batches_cross_chunks(&s).await;
    }
    #[tokio::test]
    async fn sqlite_sweeps_match_apply_observation() {
        let (s, _dir) = store().await;
        sweeps_match_apply_observation(&s, 0x5eed_0021).await;
        sweeps_match_apply_observation(&s.without_scan_history(), 0x5eed_0031).await;
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite_burial_during_recording_wins() {
        let (s, _dir) = store().await;
        burial_during_recording_wins!(s, s.pool(), 0);
    }
    #[tokio::test]
    async fn sqlite_refused_batch_writes_nothing() {
        let (s, _dir) = store().await;
        refused_batch_writes_nothing(&s).await;
    }
}

#[cfg(feature = "postgres")]
mod postgres {
    use super::*;
    use queue_common::pg;
    use ralph_store::PgStore;

    macro_rules! pg_test {
        ($name:ident, $tag:literal, |$s:ident| $body:expr) => {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let Some(db) = pg::fresh($tag).await else { return };
                let $s = PgStore::connect(&db.url).await.expect("connect");
                $body.await;
                $s.close().await;
                pg::drop_db(db).await;
            }
        };
    }
    pg_test!(pg_rules_match_apply_observation, "brules", |s| rules_match_apply_observation(&s, 15, 0x5eed_0002, true));
    pg_test!(pg_rules_match_apply_observation_without_history, "brulesnh", |s| rules_match_apply_observation(
        &s.clone().without_scan_history(),
        15,
        0x5eed_0012,
        false
    ));
    pg_test!(pg_large_batches_cross_chunks, "blarge", |s| large_batches_cross_chunks(&s));
    pg_test!(pg_sweeps_match_apply_observation, "bsweep", |s| async {
        sweeps_match_apply_observation(&s, 0x5eed_0022).await;
        sweeps_match_apply_observation(&s.clone().without_scan_history(), 0x5eed_0032).await;
    });
    pg_test!(pg_burial_during_recording_wins, "bbury", |s| async { burial_during_recording_wins!(s, s.pool(), 1) });
    pg_test!(pg_refused_batch_writes_nothing, "brefuse", |s| refused_batch_writes_nothing(&s));
}

#[cfg(feature = "mysql")]
mod mysql {
    use super::*;
    use queue_common::my;
    use ralph_store::MySqlStore;

    macro_rules! my_test {
        ($name:ident, $tag:literal, |$s:ident| $body:expr) => {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let Some(db) = my::fresh($tag).await else { return };
                let $s = MySqlStore::connect(&db.url).await.expect("connect");
                $body.await;
                $s.close().await;
                my::drop_db(db).await;
            }
        };
    }
    my_test!(mysql_rules_match_apply_observation, "brules", |s| rules_match_apply_observation(
        &s,
        15,
        0x5eed_0003,
        true
    ));
    my_test!(mysql_rules_match_apply_observation_without_history, "brulesnh", |s| rules_match_apply_observation(
        &s.clone().without_scan_history(),
        15,
        0x5eed_0013,
        false
    ));
    my_test!(mysql_large_batches_cross_chunks_without_history, "blargenh", |s| large_batches_cross_chunks(
        &s.clone().without_scan_history()
    ));
    my_test!(mysql_large_batches_cross_chunks, "blarge", |s| large_batches_cross_chunks(&s));
    my_test!(mysql_sweeps_match_apply_observation, "bsweep", |s| async {
        sweeps_match_apply_observation(&s, 0x5eed_0023).await;
        sweeps_match_apply_observation(&s.clone().without_scan_history(), 0x5eed_0033).await;
    });
    my_test!(mysql_burial_during_recording_wins, "bbury", |s| async { burial_during_recording_wins!(s, s.pool(), 2) });
    my_test!(mysql_refused_batch_writes_nothing, "brefuse", |s| refused_batch_writes_nothing(&s));
}
