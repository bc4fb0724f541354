//! Queue throughput (enqueue + claim + ack, jobs/s) per backend with 1 and 8 workers and batch
//! claims, against the naive one-job-at-a-time loop in the same run.
//! `cargo bench -p ralph-benches --bench store_queue`
#![allow(missing_docs, unreachable_pub, clippy::unwrap_used)]

mod store_common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use ralph_core::JobQueue;
use ralph_store::{MySqlStore, PgStore, SqliteStore};

const JOBS: usize = 20_000;
const NAIVE_JOBS: usize = 1_000;
const BATCH: usize = 100;
const LEASE: Duration = Duration::from_secs(60);

/// Enqueues `jobs` in batches of 1,000, then `workers` tasks claim `batch` at a time and ack
/// each job; returns jobs/s over the whole thing.
async fn run<Q: JobQueue + 'static>(
    q: Arc<Q>,
    queue: &str,
    jobs: usize,
    workers: usize,
    batch: usize,
    batch_ack: bool,
) -> f64 {
    let payloads: Vec<String> = (0..jobs).map(|i| format!("{{\"scan\":{i}}}")).collect();
    let t = Instant::now();
    for chunk in payloads.chunks(1_000) {
        q.enqueue(queue, chunk).await.unwrap();
    }
    let mut handles = Vec::new();
    for w in 0..workers {
        let q = Arc::clone(&q);
        let queue = queue.to_owned();
        handles.push(tokio::spawn(async move {
            let mut n = 0;
            loop {
                let claimed = q.claim(&queue, batch, LEASE, &format!("w{w}")).await.unwrap();
                if claimed.is_empty() {
                    break n;
                }
                if batch_ack {
                    assert_eq!(q.ack_batch(&claimed).await.unwrap(), claimed.len() as u64);
                } else {
                    for job in &claimed {
                        assert!(q.ack(job).await.unwrap());
                    }
                }
                n += claimed.len();
            }
        }));
    }
    let mut done = 0;
    for h in handles {
        done += h.await.unwrap();
    }
    assert_eq!(done, jobs);
    jobs as f64 / t.elapsed().as_secs_f64()
}

struct Line {
    backend: &'static str,
    naive: f64,
    one: f64,
    eight: f64,
    one_batch_ack: f64,
    eight_batch_ack: f64,
}

async fn measure<Q: JobQueue + 'static>(backend: &'static str, q: Arc<Q>) -> Line {
    let naive = run(Arc::clone(&q), "bench.naive", NAIVE_JOBS, 1, 1, false).await;
    let one = run(Arc::clone(&q), "bench.one", JOBS, 1, BATCH, false).await;
    let eight = run(Arc::clone(&q), "bench.eight", JOBS, 8, BATCH, false).await;
    let one_batch_ack = run(Arc::clone(&q), "bench.one.acks", JOBS, 1, BATCH, true).await;
    let eight_batch_ack = run(Arc::clone(&q), "bench.eight.acks", JOBS, 8, BATCH, true).await;
    Line { backend, naive, one, eight, one_batch_ack, eight_batch_ack }
}

#[tokio::main]
async fn main() {
    let mut lines = Vec::new();

    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("queue.sqlite3").display());
    let store = Arc::new(SqliteStore::connect(&url).await.unwrap());
    lines.push(measure("SQLite (file, WAL)", Arc::clone(&store)).await);
    store.close().await;

    if let Some((url, admin, name)) = store_common::fresh("RALPH_TEST_PG_URL", store_common::PG_DEFAULT, "queue").await
    {
        let store = Arc::new(PgStore::connect(&url).await.unwrap());
        lines.push(measure("PostgreSQL", Arc::clone(&store)).await);
        store.close().await;
        store_common::drop_db(&admin, &name).await;
    }
    if let Some((url, admin, name)) =
        store_common::fresh("RALPH_TEST_MYSQL_URL", store_common::MYSQL_DEFAULT, "queue").await
    {
        let store = Arc::new(MySqlStore::connect(&url).await.unwrap());
        lines.push(measure("MariaDB/MySQL", Arc::clone(&store)).await);
        store.close().await;
        store_common::drop_db(&admin, &name).await;
    }

    println!();
    println!("queue throughput: enqueue (batches of 1,000) + claim + ack, {JOBS} jobs, jobs/s");
    println!(
        "{:<20} {:>14} {:>14} {:>14} {:>16} {:>16}",
        "backend", "naive 1w", "claim100 1w", "claim100 8w", "+ack_batch 1w", "+ack_batch 8w"
    );
    for l in &lines {
        println!(
            "{:<20} {:>14.0} {:>14.0} {:>14.0} {:>16.0} {:>16.0}",
            l.backend, l.naive, l.one, l.eight, l.one_batch_ack, l.eight_batch_ack
        );
    }
    println!(
        "(naive: {NAIVE_JOBS} jobs claimed and acked one at a time by one worker; claim100: batch claim of {BATCH}, \
         one ack per job; +ack_batch: the batch acked in one statement; all in the same run)"
    );
}
