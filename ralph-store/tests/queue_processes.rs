//! Queue correctness across separate worker processes on PostgreSQL and MariaDB: every job is
//! processed exactly once when nobody crashes, and the jobs a SIGKILLed worker held are
//! re-delivered after their lease, none lost.
//!
//! The workers are this test binary run again with `--ignored --exact queue_worker_process`
//! and the job described in `RALPH_QUEUE_WORKER`: real processes with their own pools.
#![cfg(any(feature = "postgres", feature = "mysql"))]

mod queue_common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ralph_core::{JobQueue, QueueAdmin};

const SPEC_VAR: &str = "RALPH_QUEUE_WORKER";

/// What a worker process does, passed through the environment as `backend|url|queue|mode|lease_ms|name`.
struct Spec {
    backend: String,
    url: String,
    queue: String,
    mode: String,
    lease: Duration,
    name: String,
}

impl Spec {
    fn encode(&self) -> String {
        format!("{}|{}|{}|{}|{}|{}", self.backend, self.url, self.queue, self.mode, self.lease.as_millis(), self.name)
    }

    fn decode(text: &str) -> Self {
        let parts: Vec<&str> = text.split('|').collect();
        assert_eq!(parts.len(), 6, "bad worker spec {text:?}");
        Self {
            backend: parts[0].to_owned(),
            url: parts[1].to_owned(),
            queue: parts[2].to_owned(),
            mode: parts[3].to_owned(),
            lease: Duration::from_millis(parts[4].parse().expect("lease")),
            name: parts[5].to_owned(),
        }
    }
}

/// The work: record the job in `processed`, whose primary key makes a second delivery of the
/// same job fail loudly, then ack.
async fn work<Q: JobQueue + QueueAdmin>(q: &Q, spec: &Spec, record: impl AsyncFn(&str, u32) -> Result<(), String>) {
    if spec.mode == "hold" {
        let jobs = q.claim(&spec.queue, 20, spec.lease, &spec.name).await.expect("claim");
        let ids: Vec<String> = jobs.iter().map(|j| j.id.get().to_string()).collect();
        println!("HELD {}", ids.join(","));
        // Hold the leases until the parent kills this process.
        tokio::time::sleep(Duration::from_secs(600)).await;
        return;
    }
    loop {
        let jobs = q.claim(&spec.queue, 5, spec.lease, &spec.name).await.expect("claim");
        if jobs.is_empty() {
            let s = q.stats(&spec.queue).await.expect("stats");
            if s.pending + s.running + s.expired == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        for job in jobs {
            if let Err(e) = record(&job.payload, job.attempts).await {
                panic!("job {} ({}) processed twice: {e}", job.id, job.payload);
            }
            assert!(q.ack(&job).await.expect("ack"), "lease of job {} lost", job.id);
        }
    }
}

/// The worker process's entry point; ignored so that only the spawned processes run it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by the multi-process tests as a worker process"]
async fn queue_worker_process() {
    let spec = Spec::decode(&std::env::var(SPEC_VAR).expect("worker spec"));
    match spec.backend.as_str() {
        #[cfg(feature = "postgres")]
        "postgres" => {
            let pool =
                sqlx::postgres::PgPoolOptions::new().max_connections(2).connect(&spec.url).await.expect("connect");
            let q = ralph_store::queue::PgQueue::new(pool.clone());
            let worker = spec.name.clone();
            work(&q, &spec, async |payload, attempts| {
                sqlx::query("INSERT INTO processed (payload, worker, attempts) VALUES ($1, $2, $3)")
                    .bind(payload)
                    .bind(&worker)
                    .bind(i64::from(attempts))
                    .execute(&pool)
                    .await
                    .map(drop)
                    .map_err(|e| e.to_string())
            })
            .await;
        }
        #[cfg(feature = "mysql")]
        "mysql" => {
            let pool =
                sqlx::mysql::MySqlPoolOptions::new().max_connections(2).connect(&spec.url).await.expect("connect");
            let q = ralph_store::queue::MySqlQueue::new(pool.clone());
            let worker = spec.name.clone();
            work(&q, &spec, async |payload, attempts| {
                sqlx::query("INSERT INTO processed (payload, worker, attempts) VALUES (?, ?, ?)")
                    .bind(payload)
                    .bind(&worker)
                    .bind(i64::from(attempts))
                    .execute(&pool)
                    .await
                    .map(drop)
                    .map_err(|e| e.to_string())
            })
            .await;
        }
        other => panic!("backend {other} not compiled in"),
    }
}

fn spawn(spec: &Spec, stdout: Stdio) -> Child {
    Command::new(std::env::current_exe().expect("test binary"))
        .args(["--ignored", "--exact", "queue_worker_process", "--nocapture", "--test-threads=1"])
        .env(SPEC_VAR, spec.encode())
        .stdout(stdout)
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn worker process")
}

fn wait_all(children: Vec<Child>, limit: Duration) {
    let deadline = Instant::now() + limit;
    for mut child in children {
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                assert!(status.success(), "a worker process failed: {status}");
                break;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("worker processes did not finish in {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn spec(backend: &str, url: &str, mode: &str, lease: Duration, name: &str) -> Spec {
    Spec {
        backend: backend.into(),
        url: url.into(),
        queue: "discovery.multi".into(),
        mode: mode.into(),
        lease,
        name: name.into(),
    }
}

fn payloads(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("job-{i:05}")).collect()
}

/// Several processes drain the queue: each job processed exactly once.
async fn exactly_once<Q: JobQueue + QueueAdmin>(
    q: &Q,
    backend: &str,
    url: &str,
    processed: impl AsyncFn() -> (i64, i64),
) {
    const JOBS: usize = 1500;
    q.enqueue("discovery.multi", &payloads(JOBS)).await.expect("enqueue");
    let workers: Vec<Child> = (0..4)
        .map(|i| spawn(&spec(backend, url, "work", Duration::from_secs(60), &format!("w{i}")), Stdio::null()))
        .collect();
    wait_all(workers, Duration::from_secs(240));
    let (rows, distinct) = processed().await;
    assert_eq!((rows, distinct), (JOBS as i64, JOBS as i64), "every job processed exactly once");
    let stats = q.stats("discovery.multi").await.expect("stats");
    assert_eq!((stats.done, stats.pending, stats.running, stats.expired), (JOBS as u64, 0, 0, 0));
}

/// A worker holding leases is SIGKILLed; the others get its jobs after the lease.
async fn killed_worker<Q: JobQueue + QueueAdmin>(
    q: &Q,
    backend: &str,
    url: &str,
    attempts_of: impl AsyncFn(&[i64]) -> Vec<i64>,
    processed: impl AsyncFn() -> (i64, i64),
) {
    const JOBS: usize = 300;
    let ids = q.enqueue("discovery.multi", &payloads(JOBS)).await.expect("enqueue");
    let lease = Duration::from_secs(2);
    let mut holder = spawn(&spec(backend, url, "hold", lease, "doomed"), Stdio::piped());
    // libtest prints its own lines first; keep the reader open so the worker never writes
    // into a closed pipe.
    let mut out = BufReader::new(holder.stdout.take().expect("stdout"));
    let mut line = String::new();
    let list = loop {
        line.clear();
        assert!(out.read_line(&mut line).expect("read worker output") > 0, "worker exited before claiming");
        // libtest may have printed `test name ... ` on the same line.
        if let Some(at) = line.find("HELD ") {
            break line[at + 5..].trim().to_owned();
        }
    };
    let held: Vec<i64> = list.split(',').map(|s| s.parse().expect("id")).collect();
    assert_eq!(held.len(), 20);
    assert_eq!(held, ids[..20].iter().map(|i| i.get()).collect::<Vec<_>>());
    holder.kill().expect("SIGKILL the worker");
    let status = holder.wait().expect("reap");
    assert!(!status.success(), "killed worker must not exit cleanly");
    let stats = q.stats("discovery.multi").await.expect("stats");
    assert_eq!(stats.running + stats.expired, 20, "the dead worker's jobs stay leased until the lease ends");
    drop(out);

    let workers: Vec<Child> = (0..3)
        .map(|i| spawn(&spec(backend, url, "work", Duration::from_secs(60), &format!("w{i}")), Stdio::null()))
        .collect();
    wait_all(workers, Duration::from_secs(240));
    let (rows, distinct) = processed().await;
    assert_eq!((rows, distinct), (JOBS as i64, JOBS as i64), "no job lost, none twice");
    assert!(attempts_of(&held).await.iter().all(|&a| a == 2), "held jobs were re-delivered (second attempt)");
    let stats = q.stats("discovery.multi").await.expect("stats");
    assert_eq!((stats.done, stats.pending, stats.running, stats.expired), (JOBS as u64, 0, 0, 0));
}

#[cfg(feature = "postgres")]
mod postgres {
    use super::*;
    use queue_common::pg;
    use ralph_store::queue::PgQueue;
    use sqlx::PgPool;

    async fn setup(tag: &str) -> Option<(queue_common::FreshDb, PgQueue, PgPool)> {
        let db = pg::fresh(tag).await?;
        let pool = pg::pool(&db, 4).await;
        let q = PgQueue::new(pool.clone());
        q.migrate().await.expect("migrate");
        sqlx::query(
            "CREATE TABLE processed (payload TEXT PRIMARY KEY, worker TEXT NOT NULL, attempts BIGINT NOT NULL)",
        )
        .execute(&pool)
        .await
        .expect("processed table");
        Some((db, q, pool))
    }

    async fn processed(pool: &PgPool) -> (i64, i64) {
        sqlx::query_as("SELECT COUNT(*), COUNT(DISTINCT payload) FROM processed").fetch_one(pool).await.expect("count")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pg_processes_exactly_once() {
        let Some((db, q, pool)) = setup("mpx").await else { return };
        exactly_once(&q, "postgres", &db.url, async || processed(&pool).await).await;
        pool.close().await;
        pg::drop_db(db).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pg_killed_worker_jobs_are_redelivered() {
        let Some((db, q, pool)) = setup("mpk").await else { return };
        let attempts = async |ids: &[i64]| -> Vec<i64> {
            sqlx::query_scalar(
                "SELECT p.attempts FROM processed p JOIN queue_jobs j ON j.payload = p.payload WHERE j.id = ANY($1)",
            )
            .bind(ids)
            .fetch_all(&pool)
            .await
            .expect("attempts")
        };
        killed_worker(&q, "postgres", &db.url, attempts, async || processed(&pool).await).await;
        pool.close().await;
        pg::drop_db(db).await;
    }
}

#[cfg(feature = "mysql")]
mod mysql {
    use super::*;
    use queue_common::my;
    use ralph_store::queue::MySqlQueue;
    use sqlx::MySqlPool;

    async fn setup(tag: &str) -> Option<(queue_common::FreshDb, MySqlQueue, MySqlPool)> {
        let db = my::fresh(tag).await?;
        let pool = my::pool(&db, 4).await;
        let q = MySqlQueue::new(pool.clone());
        q.migrate().await.expect("migrate");
        sqlx::query(
            "CREATE TABLE processed (payload VARCHAR(100) PRIMARY KEY, worker VARCHAR(100) NOT NULL, \
             attempts BIGINT NOT NULL) ENGINE = InnoDB",
        )
        .execute(&pool)
        .await
        .expect("processed table");
        Some((db, q, pool))
    }

    async fn processed(pool: &MySqlPool) -> (i64, i64) {
        sqlx::query_as("SELECT COUNT(*), COUNT(DISTINCT payload) FROM processed").fetch_one(pool).await.expect("count")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn mysql_processes_exactly_once() {
        let Some((db, q, pool)) = setup("mpx").await else { return };
        exactly_once(&q, "mysql", &db.url, async || processed(&pool).await).await;
        pool.close().await;
        my::drop_db(db).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn mysql_killed_worker_jobs_are_redelivered() {
        let Some((db, q, pool)) = setup("mpk").await else { return };
        let attempts = async |ids: &[i64]| -> Vec<i64> {
            let list = ids.iter().map(i64::to_string).collect::<Vec<_>>().join(",");
            sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                "SELECT p.attempts FROM processed p JOIN queue_jobs j ON j.payload = p.payload WHERE j.id IN ({list})"
            )))
            .fetch_all(&pool)
            .await
            .expect("attempts")
        };
        killed_worker(&q, "mysql", &db.url, attempts, async || processed(&pool).await).await;
        pool.close().await;
        my::drop_db(db).await;
    }
}
