//! Change history at scale on PostgreSQL: reading one object's history among 10 million history
//! rows (each with two changed fields), and pruning 1 million old rows while the longest
//! transaction is watched.
//!
//! 1. **Read** `HistoryStore::object_history` of 1,000 distinct objects never read before
//!    (cold: their pages are not in PostgreSQL's cache unless a neighbour's were), then the
//!    same 1,000 again (warm). Baseline in the same run: the hand-written query (the rows by
//!    the `(object_type, object_id, id)` index, their changes left as text) on a plain
//!    connection, on another 1,000 cold objects.
//! 2. **Prune** the oldest 1,000,000 rows with `prune_history` (chunks of 1,000 rows per
//!    transaction) while a watcher polls `pg_stat_activity` every 5 ms for the oldest open
//!    transaction of the bench database's clients. Baseline: the naive single `DELETE ... WHERE at < $1`
//!    of another 1,000,000 rows, watched the same way.
//!
//! `cargo bench -p ralph-benches --bench history`; `HISTORY_BENCH_ROWS` sets the history rows
//! (default 10,000,000; the prune takes a tenth of them from each end). Filling the table
//! takes a few minutes and is not measured.
#![allow(missing_docs, unreachable_pub, clippy::unwrap_used)]

#[allow(dead_code)] // the MariaDB default is not used here
mod store_common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ralph_core::history::{HistoryStore, Retention};
use ralph_store::{PgStore, sqlx};

/// History rows per object: the table holds `rows / PER_OBJECT` objects.
const PER_OBJECT: i64 = 10;

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn summary(label: &str, mut ms: Vec<f64>) -> f64 {
    ms.sort_by(f64::total_cmp);
    let p50 = percentile(&ms, 0.5);
    let p99 = percentile(&ms, 0.99);
    println!("  {label:<44} p50 {p50:>7.3} ms   p99 {p99:>7.3} ms   max {:>7.3} ms", ms[ms.len() - 1]);
    p99
}

/// The longest transaction a watcher saw: its age in microseconds and the statement it ran.
type Longest = Arc<std::sync::Mutex<(u64, String)>>;

/// Polls the oldest open transaction of the clients of `database` every 5 ms until stopped
/// (autovacuum's work is the server's, not a client's lock, and is left out).
fn watch_transactions(admin: sqlx::PgPool, database: String, stop: Arc<AtomicBool>) -> Longest {
    let longest: Longest = Arc::default();
    let seen = Arc::clone(&longest);
    tokio::spawn(async move {
        while !stop.load(Ordering::Relaxed) {
            let oldest: Option<(f64, String)> = sqlx::query_as(
                "SELECT EXTRACT(EPOCH FROM clock_timestamp() - xact_start)::float8, left(query, 120) \
                 FROM pg_stat_activity WHERE datname = $1 AND backend_type = 'client backend' \
                 AND xact_start IS NOT NULL AND pid <> pg_backend_pid() ORDER BY xact_start LIMIT 1",
            )
            .bind(&database)
            .fetch_optional(&admin)
            .await
            .unwrap_or(None);
            if let Some((age, query)) = oldest {
                let mut seen = seen.lock().unwrap();
                if (age * 1e6) as u64 > seen.0 {
                    *seen = ((age * 1e6) as u64, query);
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    longest
}

/// Stops a watcher and returns the longest transaction it saw, in milliseconds, with its
/// statement.
async fn stop_watching(stop: &AtomicBool, longest: &Longest) -> (f64, String) {
    stop.store(true, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(20)).await;
    let seen = longest.lock().unwrap();
    (seen.0 as f64 / 1e3, seen.1.clone())
}

#[tokio::main]
async fn main() {
    let rows: i64 = std::env::var("HISTORY_BENCH_ROWS").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000_000);
    let objects = rows / PER_OBJECT;
    let Some((url, admin_url, name)) =
        store_common::fresh("RALPH_TEST_PG_URL", store_common::PG_DEFAULT, "history").await
    else {
        return;
    };
    let store = PgStore::connect(&url).await.unwrap();
    let pool = store.pool().clone();

    // Fill: object k has PER_OBJECT rows, interleaved over time as a live system writes them;
    // the oldest tenth is a year old (pruned below).
    let t = Instant::now();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "INSERT INTO change_history (object_type, object_id, action, actor_kind, actor, at, correlation, message, \
                                     changes) \
         SELECT 'device', g % {objects}, CASE WHEN g < {objects} THEN 'create' ELSE 'update' END, 'source', 'snmp', \
                now() - make_interval(secs => ({rows} - g) * 3.0), md5(g::text), NULL, \
                json_build_array(json_build_array('hostname', 'old-' || g, 'new-' || g), \
                                 json_build_array('status', 'old-' || g, 'new-' || g))::TEXT \
         FROM generate_series(0, {rows} - 1) AS g; \
         ANALYZE change_history"
    )))
    .execute(&pool)
    .await
    .unwrap();
    println!(
        "history: {rows} rows ({objects} objects x {PER_OBJECT}), two fields each; filled in {:.0} s (not measured)",
        t.elapsed().as_secs_f64()
    );

    // 1. Reads: distinct objects spread over the id range, so each read starts cold.
    println!("== reading one object's history (limit 100) among {rows} rows");
    let stride = (objects / 3_000).max(1);
    let pick = |n: i64, offset: i64| (n * stride + offset) % objects;
    let mut cold = Vec::new();
    for n in 0..1_000 {
        let t = Instant::now();
        let h = store.object_history("device", pick(n, 0), 100).await.unwrap();
        cold.push(t.elapsed().as_secs_f64() * 1e3);
        assert_eq!(h.len() as i64, PER_OBJECT, "object {} history", pick(n, 0));
        assert!(h.iter().all(|e| e.record.changes.len() == 2));
    }
    let mut warm = Vec::new();
    for n in 0..1_000 {
        let t = Instant::now();
        let h = store.object_history("device", pick(n, 0), 100).await.unwrap();
        warm.push(t.elapsed().as_secs_f64() * 1e3);
        assert_eq!(h.len() as i64, PER_OBJECT);
    }
    let mut naive = Vec::new();
    let mut conn = pool.acquire().await.unwrap();
    for n in 0..1_000 {
        let t = Instant::now();
        let rows: Vec<(i64, String, String)> = sqlx::query_as(
            "SELECT id, actor, changes FROM change_history WHERE object_type = $1 AND object_id = $2 \
             ORDER BY id DESC LIMIT 100",
        )
        .bind("device")
        .bind(pick(n, 1))
        .fetch_all(&mut *conn)
        .await
        .unwrap();
        naive.push(t.elapsed().as_secs_f64() * 1e3);
        assert_eq!(rows.len() as i64, PER_OBJECT);
    }
    drop(conn);
    let cold_p99 = summary("object_history, cold (1,000 objects)", cold);
    summary("object_history, warm (the same 1,000)", warm);
    summary("baseline: one hand-written query, cold", naive);
    println!("  target: <= 5 ms (cold p99 {cold_p99:.3} ms): {}", if cold_p99 <= 5.0 { "met" } else { "MISSED" });

    // 2. Prune: the oldest tenth with the store, another tenth with one DELETE.
    let admin = sqlx::postgres::PgPoolOptions::new().max_connections(1).connect(&admin_url).await.unwrap();
    let tenth = rows / 10;
    let age_of = |row: i64| Duration::from_secs_f64(((rows - row) * 3) as f64);
    println!("== pruning {tenth} rows while {rows} are stored");
    let stop = Arc::new(AtomicBool::new(false));
    let longest = watch_transactions(admin.clone(), name.clone(), Arc::clone(&stop));
    let t = Instant::now();
    let pruned = store.prune_history(&Retention::default().with_max_age(age_of(tenth))).await.unwrap();
    let secs = t.elapsed().as_secs_f64();
    let (store_longest, statement) = stop_watching(&stop, &longest).await;
    println!(
        "  prune_history (chunks of 1,000): {pruned} rows in {secs:.1} s ({:.0} rows/s), longest transaction seen \
         {store_longest:.1} ms ({statement})",
        pruned as f64 / secs
    );
    // The cutoff moved on with the clock since the fill (a row every 3 s): a few rows more.
    assert!(pruned.abs_diff(tenth as u64) <= tenth as u64 / 100, "pruned {pruned} of about {tenth}");
    let stop = Arc::new(AtomicBool::new(false));
    let longest = watch_transactions(admin.clone(), name.clone(), Arc::clone(&stop));
    let cutoff = chrono::Utc::now() - chrono::Duration::from_std(age_of(2 * tenth)).unwrap();
    let t = Instant::now();
    let done = sqlx::query("DELETE FROM change_history WHERE at < $1").bind(cutoff).execute(&pool).await.unwrap();
    let secs = t.elapsed().as_secs_f64();
    let (naive_longest, _) = stop_watching(&stop, &longest).await;
    println!(
        "  baseline: one DELETE: {} rows in {secs:.1} s, longest transaction seen {naive_longest:.1} ms",
        done.rows_affected()
    );
    println!(
        "  target: no lock held over 100 ms ({store_longest:.1} ms): {}",
        if store_longest <= 100.0 { "met" } else { "MISSED" }
    );
    admin.close().await;
    store.close().await;
    store_common::drop_db(&admin_url, &name).await;
}
