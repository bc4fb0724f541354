//! Scan results on record under concurrency, on SQLite, PostgreSQL and MariaDB: several tasks
//! and several processes record facts for the same addresses at once (each its own SNMP names
//! and HTTP families, alive and dead answers and bare "alive" answers mixed, new addresses among
//! them). Afterwards each
//! address's history is one unbroken chain (every record starts where the one before it ended,
//! one creation first) that ends at what the store holds. A handle built
//! `without_scan_history` records facts and no history.
//!
//! The processes are this test binary run again with `--ignored --exact recorder_child_process`
//! and the job in `RALPH_SCAN_HISTORY_CHILD` (`url|worker|gate|mode`).
//!
//! Without history, tasks and processes sweep 320 addresses at once, answering alike in runs
//! of 80 addresses but differently from each other (MySQL writes runs of stored addresses
//! answering alive with a join and the rest with the upsert, in key order): none may fail.

mod queue_common;

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader};
use std::net::IpAddr;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use ralph_core::history::{Action, HistoryStore};
use ralph_core::{Entity, InventoryStore, IpAddress, Observation, ScanResultStore, Secret, SnmpVersion};

const CHILD_VAR: &str = "RALPH_SCAN_HISTORY_CHILD";
const ADDRESSES: u32 = 60;
const ROUNDS: u32 = 6;

fn addr(i: u32) -> IpAddr {
    IpAddr::from([10, 77, 0, u8::try_from(i + 1).expect("small")])
}

/// Worker `w`'s observations in round `r`: every address, in an order of its own; a third of
/// them dead, a fifth of the others a bare "alive" (no facts: read, not locked, for history),
/// the rest with this worker's facts.
fn batch(w: u32, r: u32) -> Vec<Observation> {
    (0..ADDRESSES)
        .map(|n| (n * 7 + w * 13 + r * 5) % ADDRESSES)
        .map(|i| {
            let alive = !(i + w + r).is_multiple_of(3);
            let mut o = Observation::new(addr(i), alive, Utc::now());
            if alive && !(i * 3 + w + r).is_multiple_of(5) {
                o.snmp_name = Some(format!("sw-{w}-{r}"));
                o.snmp_community = Some(Secret::new(format!("c{w}")));
                o.snmp_version = Some(SnmpVersion::V2c);
                o.http_family = (i + r).is_multiple_of(2).then(|| format!("httpd-{w}"));
            }
            o
        })
        .collect()
}

async fn record_rounds<S: ScanResultStore>(store: &S, worker: u32) {
    for r in 0..ROUNDS {
        store.record_observations(&batch(worker, r), 2).await.expect("record");
    }
}

/// Addresses of the sweeps without history.
const SWEPT: u32 = 320;

fn swept(i: u32) -> IpAddr {
    IpAddr::from([10, 79, u8::try_from(i / 256).expect("small"), u8::try_from(i % 256).expect("small")])
}

/// Worker `w`'s sweep `r`: every address in order; blocks of 80 answer alike (alive with this
/// worker's HTTP family, or dead), each worker's blocks differently.
fn sweep(w: u32, r: u32) -> Vec<Observation> {
    (0..SWEPT)
        .map(|i| {
            let alive = !(i / 80 + w + r).is_multiple_of(3);
            let mut o = Observation::new(swept(i), alive, Utc::now());
            o.http_family = alive.then(|| format!("httpd-{w}-{r}"));
            o
        })
        .collect()
}

/// Records worker `worker`'s sweeps with a dead-ping limit no run reaches, so facts stay.
async fn record_sweeps<S: ScanResultStore>(store: &S, worker: u32) {
    for r in 0..ROUNDS {
        store.record_observations(&sweep(worker, r), 1_000).await.expect("record");
    }
}

/// Each address's history is one chain: a creation first (or, for an address a bare "alive"
/// created, its first update), then updates each starting from the values the previous record
/// left, ending at the stored facts.
async fn check_chains<S: InventoryStore + HistoryStore>(store: &S) {
    let mut total = 0;
    for i in 0..ADDRESSES {
        let Some(stored) = store.find_ip(addr(i)).await.expect("find") else { continue };
        let mut history = store.object_history(IpAddress::NAME, stored.id.get(), 10_000).await.expect("history");
        history.reverse();
        total += history.len();
        let mut state: BTreeMap<String, Option<String>> = BTreeMap::new();
        for (n, e) in history.iter().enumerate() {
            // An address a bare "alive" answer created has no facts and no creation record:
            // its chain starts with the first update, from nothing.
            let allowed: &[Action] = if n == 0 { &[Action::Create, Action::Update] } else { &[Action::Update] };
            assert!(allowed.contains(&e.record.action), "{}: record {n} of {history:#?}", addr(i));
            for c in &e.record.changes {
                // A secret is recorded as "(secret)" or "(secret, changed)": only its presence
                // can be compared.
                let shown = |v: &Option<String>| match c.field.as_str() {
                    "snmp_community" => v.as_ref().map(|_| "(secret)".to_owned()),
                    _ => v.clone(),
                };
                let was = state.get(&c.field).cloned().flatten();
                assert_eq!(shown(&c.before), was, "{}: record {n} starts where the last ended: {history:#?}", addr(i));
                state.insert(c.field.clone(), shown(&c.after));
            }
        }
        let value = |name: &str| state.get(name).cloned().flatten();
        assert_eq!(value("snmp_name"), stored.value.snmp_name, "{}", addr(i));
        assert_eq!(value("http_family"), stored.value.http_family, "{}", addr(i));
        assert_eq!(value("snmp_version").as_deref(), stored.value.snmp_version.map(SnmpVersion::as_str));
        assert_eq!(value("snmp_community").is_some(), stored.value.snmp_community.is_some(), "{}", addr(i));
    }
    assert!(total >= ADDRESSES as usize, "every address has a record: {total}");
}

/// Addresses of [`one_batch_records_every_address`]: more than one history statement's worth.
const BATCH: u32 = 6_001;

fn batched(i: u32) -> IpAddr {
    IpAddr::from([10, 80, u8::try_from(i / 256).expect("small"), u8::try_from(i % 256).expect("small")])
}

/// One batch of new addresses, more than one history statement's worth, then a second batch
/// over them: every address gets its creation record (under its own id, all in its batch's
/// one correlation), an address named twice in a batch gets both records in order, a buried
/// address and an unknown address's dead answer get none, and an SNMP community shows as set,
/// never as its value.
async fn one_batch_records_every_address<S: ScanResultStore + InventoryStore + HistoryStore>(store: &S) {
    let fact = |i: u32, family: &str| {
        let mut o = Observation::new(batched(i), true, Utc::now());
        o.http_family = Some(format!("{family}{i} \\ \"q\" \u{e9}\t"));
        o
    };
    let mut obs: Vec<Observation> = (0..BATCH).map(|i| fact(i, "f")).collect();
    obs.push(fact(0, "second-"));
    let summary = store.record_observations(&obs, 2).await.expect("record");
    assert_eq!((summary.inserted, summary.updated), (u64::from(BATCH), 1));
    let first = store.find_ip(batched(0)).await.expect("find").expect("stored");
    let mut history = store.object_history(IpAddress::NAME, first.id.get(), 10).await.expect("history");
    history.reverse();
    let shown: Vec<(Action, Option<String>, Option<String>)> = history
        .iter()
        .flat_map(|e| e.record.changes.iter().map(|c| (e.record.action, c.before.clone(), c.after.clone())))
        .collect();
    let (f0, second) = (fact(0, "f").http_family, fact(0, "second-").http_family);
    assert_eq!(shown, [(Action::Create, None, f0.clone()), (Action::Update, f0, second)], "{history:#?}");
    let correlation = &history[0].correlation;
    assert_eq!(&history[1].correlation, correlation, "one batch, one correlation");
    let batch = store.correlated(correlation).await.expect("correlated");
    assert_eq!(batch.len(), BATCH as usize + 1, "every address of the batch has its record");
    for i in [1, 4_999, 5_000, 5_001, BATCH - 1] {
        let stored = store.find_ip(batched(i)).await.expect("find").expect("stored");
        let history = store.object_history(IpAddress::NAME, stored.id.get(), 10).await.expect("history");
        assert_eq!(history.len(), 1, "{}: {history:#?}", batched(i));
        let record = &history[0].record;
        assert_eq!((record.action, record.object_id), (Action::Create, stored.id.get()), "{}", batched(i));
        assert_eq!(record.changes[0].after, fact(i, "f").http_family, "{}", batched(i));
    }

    // The second batch: every address updated (updates across the statement split), one of
    // them buried first, one unknown address answering dead, one with an SNMP community.
    let buried = store.find_ip(batched(7)).await.expect("find").expect("stored");
    let mut value = buried.value.clone();
    value.is_buried = true;
    store.update(buried.id, &value).await.expect("bury");
    let mut obs: Vec<Observation> = (0..BATCH).map(|i| fact(i, "g")).collect();
    obs.push(Observation::new(batched(BATCH + 10), false, Utc::now()));
    let snmp = &mut obs[3];
    snmp.snmp_name = Some("sw-3".into());
    snmp.snmp_community = Some(Secret::new("s3cret-community"));
    snmp.snmp_version = Some(SnmpVersion::V2c);
    store.record_observations(&obs, 2).await.expect("record");
    let third = store.find_ip(batched(3)).await.expect("find").expect("stored");
    let history = store.object_history(IpAddress::NAME, third.id.get(), 10).await.expect("history");
    let batch = store.correlated(&history[0].correlation).await.expect("correlated");
    assert_eq!(batch.len(), BATCH as usize - 1, "every stored, unburied address updated once: {}", batch.len());
    assert!(batch.iter().all(|e| e.record.action == Action::Update));
    assert!(store.find_ip(batched(BATCH + 10)).await.expect("find").is_none());
    assert!(batch.iter().all(|e| e.record.object_id != buried.id.get()), "nothing recorded for the buried address");
    let shown = format!("{:?}", history[0].record.changes);
    assert!(shown.contains("snmp_community") && !shown.contains("s3cret"), "{shown}");
    for i in [4_999, 5_000, 5_001] {
        let stored = store.find_ip(batched(i)).await.expect("find").expect("stored");
        let history = store.object_history(IpAddress::NAME, stored.id.get(), 10).await.expect("history");
        assert_eq!(history[0].record.changes[0].before, fact(i, "f").http_family, "{}", batched(i));
        assert_eq!(history[0].record.changes[0].after, fact(i, "g").http_family, "{}", batched(i));
    }
}

/// A handle built `without_scan_history` records the facts and no history.
async fn opted_out_records_no_history<S: ScanResultStore + InventoryStore + HistoryStore>(store: &S) {
    let ip = IpAddr::from([10, 78, 0, 1]);
    let mut o = Observation::new(ip, true, Utc::now());
    o.snmp_name = Some("quiet".into());
    store.record_observations(&[o], 2).await.expect("record");
    let stored = store.find_ip(ip).await.expect("find").expect("stored");
    assert_eq!(stored.value.snmp_name.as_deref(), Some("quiet"));
    let history = store.object_history(IpAddress::NAME, stored.id.get(), 10).await.expect("history");
    assert!(history.is_empty(), "{history:?}");
}

/// Child process: waits for the gate, then records its rounds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a child process of the racing_recorders tests"]
async fn recorder_child_process() {
    let spec = std::env::var(CHILD_VAR).expect("child spec");
    let parts: Vec<&str> = spec.split('|').collect();
    let store = ralph_store::AnyStore::connect(parts[0]).await.expect("connect");
    println!("READY");
    let gate = std::path::PathBuf::from(parts[2]);
    while gate.exists() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let worker = parts[1].parse().expect("worker");
    match parts[3] {
        "chain" => record_rounds(&store, worker).await,
        _ => record_sweeps(&store.without_scan_history(), worker).await,
    }
    println!("DONE");
}

/// 3 tasks here and 2 processes record rounds over the same addresses at once; with
/// `history` off, they sweep instead (see [`sweep`]).
async fn racing_recorders<S>(store: Arc<S>, url: &str, history: bool)
where
    S: ScanResultStore + InventoryStore + HistoryStore + 'static,
{
    let dir = tempfile::tempdir().expect("tempdir");
    let gate = dir.path().join("gate");
    std::fs::write(&gate, b"wait").expect("gate");
    let mut children: Vec<(Child, BufReader<ChildStdout>)> = (0..2)
        .map(|w| {
            let mut child = Command::new(std::env::current_exe().expect("test binary"))
                .args(["--ignored", "--exact", "recorder_child_process", "--nocapture", "--test-threads=1"])
                .env(
                    CHILD_VAR,
                    format!("{url}|{}|{}|{}", 10 + w, gate.display(), if history { "chain" } else { "sweep" }),
                )
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("spawn child");
            let out = BufReader::new(child.stdout.take().expect("stdout"));
            (child, out)
        })
        .collect();
    for (_, out) in &mut children {
        let mut line = String::new();
        loop {
            line.clear();
            assert!(out.read_line(&mut line).expect("read child output") > 0, "a child exited early");
            if line.contains("READY") {
                break;
            }
        }
    }
    std::fs::remove_file(&gate).expect("open the gate");
    let tasks: Vec<_> = (0..3)
        .map(|w| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                if history {
                    record_rounds(&*store, w).await;
                } else {
                    record_sweeps(&*store, w).await;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("task");
    }
    for (mut child, _) in children {
        assert!(child.wait().expect("child").success(), "a child failed");
    }
    if history {
        check_chains(&*store).await;
    } else {
        // Every address answered alive in some sweep and no fact is ever cleared: each holds
        // one worker's family.
        for i in 0..SWEPT {
            let stored = store.find_ip(swept(i)).await.expect("find").expect("stored");
            assert!(stored.value.http_family.as_deref().is_some_and(|f| f.starts_with("httpd-")), "{}", swept(i));
        }
    }
}

#[cfg(feature = "sqlite")]
mod sqlite {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn sqlite_racing_recorders_keep_one_history_chain_from_processes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}", dir.path().join("ralph.sqlite3").display());
        let store = ralph_store::SqliteStore::connect(&url).await.expect("store");
        racing_recorders(Arc::new(store.clone()), &url, true).await;
        racing_recorders(Arc::new(store.clone().without_scan_history()), &url, false).await;
        one_batch_records_every_address(&store).await;
        opted_out_records_no_history(&store.without_scan_history()).await;
    }
}

#[cfg(feature = "postgres")]
mod postgres {
    use super::*;
    use queue_common::pg;

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn pg_racing_recorders_keep_one_history_chain_from_processes() {
        let Some(db) = pg::fresh("shist").await else { return };
        let store = ralph_store::PgStore::connect(&db.url).await.expect("store");
        racing_recorders(Arc::new(store.clone()), &db.url, true).await;
        racing_recorders(Arc::new(store.clone().without_scan_history()), &db.url, false).await;
        one_batch_records_every_address(&store).await;
        opted_out_records_no_history(&store.clone().without_scan_history()).await;
        store.close().await;
        pg::drop_db(db).await;
    }
}

#[cfg(feature = "mysql")]
mod mysql {
    use super::*;
    use queue_common::my;

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn my_racing_recorders_keep_one_history_chain_from_processes() {
        let Some(db) = my::fresh("shist").await else { return };
        let store = ralph_store::MySqlStore::connect(&db.url).await.expect("store");
        racing_recorders(Arc::new(store.clone()), &db.url, true).await;
        racing_recorders(Arc::new(store.clone().without_scan_history()), &db.url, false).await;
        one_batch_records_every_address(&store).await;
        opted_out_records_no_history(&store.clone().without_scan_history()).await;
        store.close().await;
        my::drop_db(db).await;
    }
}
