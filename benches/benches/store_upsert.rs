//! Bulk upsert of 100,000 scan observations per backend against the naive loop done well (one
//! `INSERT ... ON CONFLICT/DUPLICATE KEY UPDATE` statement per row, every row in one
//! transaction), measured in the same run. Every observation carries an HTTP family, so the
//! first recording writes a change-history row per address (the default); the same is then
//! measured in a database of its own through a handle built `without_scan_history`.
//! `cargo bench -p ralph-benches --bench store_upsert`
#![allow(missing_docs, unreachable_pub, clippy::unwrap_used)]

mod store_common;

use std::net::IpAddr;
use std::time::Instant;

use chrono::Utc;
use ralph_core::{Observation, ScanResultStore, ip_key};
use ralph_store::{MySqlStore, PgStore, SqliteStore, sqlx};

const ROWS: u32 = 100_000;

fn observations(offset: u32, n: u32) -> Vec<Observation> {
    let now = Utc::now();
    (offset..offset + n)
        .map(|i| {
            let mut o = Observation::new(IpAddr::from((0x0a00_0000 + i).to_be_bytes()), true, now);
            o.http_family = Some("Apache".into());
            o.checksum = Some(format!("{i:08x}"));
            o
        })
        .collect()
}

struct Line {
    backend: &'static str,
    bulk_insert: f64,
    bulk_update: f64,
    plain: (f64, f64),
    naive: f64,
    naive_rows: u32,
}

async fn bulk<S: ScanResultStore>(store: &S, offset: u32) -> (f64, f64) {
    let obs = observations(offset, ROWS);
    let t = Instant::now();
    let s = store.record_observations(&obs, 2).await.unwrap();
    let insert = f64::from(ROWS) / t.elapsed().as_secs_f64();
    assert_eq!(s.inserted, u64::from(ROWS));
    let t = Instant::now();
    let s = store.record_observations(&obs, 2).await.unwrap();
    let update = f64::from(ROWS) / t.elapsed().as_secs_f64();
    assert_eq!(s.updated, u64::from(ROWS));
    (insert, update)
}

/// The naive way done well: one statement per row (a prepared, cached upsert), all rows in
/// one transaction.
macro_rules! naive {
    ($pool:expr, $sql:expr, $n:expr) => {{
        let obs = observations(1_000_000, $n);
        let t = Instant::now();
        let mut tx = $pool.begin().await.unwrap();
        for o in &obs {
            sqlx::query($sql)
                .bind(o.address.to_string())
                .bind(ip_key(o.address))
                .bind(o.seen_at)
                .bind(o.http_family.as_deref())
                .bind(o.checksum.as_deref())
                .execute(&mut *tx)
                .await
                .unwrap();
        }
        tx.commit().await.unwrap();
        f64::from($n) / t.elapsed().as_secs_f64()
    }};
}

const NAIVE_SQLITE_PG: &str = "INSERT INTO ip_addresses (address, ip_key, last_seen, dead_ping_count, http_family, \
     scan_checksum) VALUES ($1, $2, $3, 0, $4, $5) ON CONFLICT (ip_key) DO UPDATE SET last_seen = excluded.last_seen, \
     dead_ping_count = 0, http_family = excluded.http_family, scan_checksum = excluded.scan_checksum";
const NAIVE_MYSQL: &str = "INSERT INTO ip_addresses (address, ip_key, last_seen, dead_ping_count, http_family, \
     scan_checksum) VALUES (?, ?, ?, 0, ?, ?) ON DUPLICATE KEY UPDATE last_seen = VALUES(last_seen), \
     dead_ping_count = 0, http_family = VALUES(http_family), scan_checksum = VALUES(scan_checksum)";

#[tokio::main]
async fn main() {
    let mut lines = Vec::new();

    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("bench.sqlite3").display());
    let plain_url = format!("sqlite://{}", dir.path().join("plain.sqlite3").display());
    let plain_store = SqliteStore::connect(&plain_url).await.unwrap().without_scan_history();
    let plain = bulk(&plain_store, 0).await;
    plain_store.close().await;
    let store = SqliteStore::connect(&url).await.unwrap();
    let (bulk_insert, bulk_update) = bulk(&store, 0).await;
    let naive = naive!(store.pool(), NAIVE_SQLITE_PG, 20_000);
    lines.push(Line { backend: "SQLite (file, WAL)", bulk_insert, bulk_update, plain, naive, naive_rows: 20_000 });
    store.close().await;

    if let Some((url, admin, name)) = store_common::fresh("RALPH_TEST_PG_URL", store_common::PG_DEFAULT, "upsert").await
    {
        let plain = match store_common::fresh("RALPH_TEST_PG_URL", store_common::PG_DEFAULT, "upsert_plain").await {
            Some((url, admin, name)) => {
                let store = PgStore::connect(&url).await.unwrap().without_scan_history();
                let plain = bulk(&store, 0).await;
                store.close().await;
                store_common::drop_db(&admin, &name).await;
                plain
            }
            None => (f64::NAN, f64::NAN),
        };
        let store = PgStore::connect(&url).await.unwrap();
        let (bulk_insert, bulk_update) = bulk(&store, 0).await;
        let naive = naive!(store.pool(), NAIVE_SQLITE_PG, 10_000);
        lines.push(Line { backend: "PostgreSQL", bulk_insert, bulk_update, plain, naive, naive_rows: 10_000 });
        store.close().await;
        store_common::drop_db(&admin, &name).await;
    }

    if let Some((url, admin, name)) =
        store_common::fresh("RALPH_TEST_MYSQL_URL", store_common::MYSQL_DEFAULT, "upsert").await
    {
        let plain = match store_common::fresh("RALPH_TEST_MYSQL_URL", store_common::MYSQL_DEFAULT, "upsert_plain").await
        {
            Some((url, admin, name)) => {
                let store = MySqlStore::connect(&url).await.unwrap().without_scan_history();
                let plain = bulk(&store, 0).await;
                store.close().await;
                store_common::drop_db(&admin, &name).await;
                plain
            }
            None => (f64::NAN, f64::NAN),
        };
        let store = MySqlStore::connect(&url).await.unwrap();
        let (bulk_insert, bulk_update) = bulk(&store, 0).await;
        let naive = naive!(store.pool(), NAIVE_MYSQL, 10_000);
        lines.push(Line { backend: "MariaDB/MySQL", bulk_insert, bulk_update, plain, naive, naive_rows: 10_000 });
        store.close().await;
        store_common::drop_db(&admin, &name).await;
    }

    println!();
    println!("upsert of {ROWS} IP address observations per backend (record_observations, one call)");
    println!(
        "{:<20} {:>16} {:>16} {:>16} {:>16} {:>22} {:>10}",
        "backend",
        "insert rows/s",
        "update rows/s",
        "no-hist insert",
        "no-hist update",
        "naive, one tx rows/s",
        "speed-up"
    );
    for l in &lines {
        println!(
            "{:<20} {:>16.0} {:>16.0} {:>16.0} {:>16.0} {:>14.0} ({:>5}) {:>9.0}x",
            l.backend,
            l.bulk_insert,
            l.bulk_update,
            l.plain.0,
            l.plain.1,
            l.naive,
            l.naive_rows,
            l.bulk_insert.min(l.bulk_update) / l.naive
        );
    }
    println!("(insert/update: with the change history of the addresses' facts, the default; no-hist: a handle");
    println!(" built without_scan_history. speed-up: the slower of insert/update against the naive loop,");
    println!(" which writes no history, on the same server, same run)");
}
