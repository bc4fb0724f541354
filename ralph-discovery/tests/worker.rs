//! Workers against real stores: graceful shutdown mid-job (SQLite), and a worker process
//! killed mid-job whose job is re-delivered to another process (PostgreSQL).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use ralph_core::{InventoryStore, JobQueue, QueueAdmin, ScanResultStore};
use ralph_discovery::{RateConfig, ScanConfig, Scanner, Worker, WorkerConfig, enqueue_addresses};
use ralph_store::{PgStore, SqliteStore};
use tokio::sync::watch;

const CHILD_QUEUE: &str = "RALPH_WORKER_CHILD_QUEUE";

/// A slow scanner: loopback addresses reset (alive, port closed) at 25 probe starts per second.
fn slow_scanner() -> Scanner {
    let rate = RateConfig::default().initial(25.0).min(1.0).max(25.0).increase_per_sec(0.0);
    Scanner::new(ScanConfig::default().ports(vec![9]).icmp(false).http(None).rate(rate).pace_loopback(true))
}

fn addresses(third: u8, n: u8) -> Vec<IpAddr> {
    (1..=n).map(|i| IpAddr::from([127, 88, third, i])).collect()
}

async fn idle<Q: QueueAdmin + ?Sized>(q: &Q, queue: &str) -> bool {
    let s = q.stats(queue).await.expect("stats");
    s.pending == 0 && s.running == 0 && s.expired == 0
}

/// Runs a worker until the queue is drained, then shuts it down gracefully.
async fn drain<Q, S>(jobs: Arc<Q>, store: Arc<S>, queue: &str, lease: Duration) -> ralph_discovery::WorkerStats
where
    Q: JobQueue + QueueAdmin + 'static,
    S: ScanResultStore + 'static,
{
    let mut config = WorkerConfig::new(queue);
    config.lease = lease;
    config.poll_interval = Duration::from_millis(100);
    config.batch = 7;
    let worker = Worker::new(Arc::clone(&jobs), store, slow_scanner(), config);
    let (tx, rx) = watch::channel(false);
    let watcher = {
        let (jobs, queue) = (Arc::clone(&jobs), queue.to_owned());
        tokio::spawn(async move {
            while !idle(&*jobs, &queue).await {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            tx.send_replace(true);
        })
    };
    let stats = worker.run(rx).await.expect("worker");
    watcher.await.expect("watcher");
    stats
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_persists_what_was_found_and_requeues_the_rest() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("w.db").display());
    let store = Arc::new(SqliteStore::connect(&url).await.expect("connect"));
    store.migrate().await.expect("migrate");
    let queue = "discovery.graceful";
    let targets = addresses(1, 60);
    enqueue_addresses(&*store, queue, targets.clone(), 100).await.expect("enqueue");
    let start = Utc::now();

    let worker = Worker::new(Arc::clone(&store), Arc::clone(&store), slow_scanner(), WorkerConfig::new(queue));
    let (tx, rx) = watch::channel(false);
    let run = tokio::spawn(async move { worker.run(rx).await });
    tokio::time::sleep(Duration::from_millis(1000)).await;
    tx.send_replace(true);
    let stats = run.await.expect("join").expect("worker");
    assert_eq!(stats.requeued, 1, "{stats:?}");
    assert!(stats.hosts > 0 && stats.hosts < 60, "stopped mid-job: {stats:?}");
    let mut recorded = 0;
    for ip in &targets {
        if store.find_ip(*ip).await.expect("find").is_some_and(|r| r.value.last_seen >= Some(start)) {
            recorded += 1;
        }
    }
    assert_eq!(recorded, stats.hosts, "what was found before shutdown is persisted");
    let s = store.stats(queue).await.expect("stats");
    assert_eq!((s.pending, s.done), (1, 1), "the rest waits as a new job");

    let stats = drain(Arc::clone(&store), Arc::clone(&store), queue, Duration::from_secs(30)).await;
    assert_eq!(stats.hosts, 60 - recorded);
    for ip in &targets {
        let row = store.find_ip(*ip).await.expect("find").expect("every target recorded");
        assert!(row.value.last_seen >= Some(start));
    }
}

/// The child's half of the kill test: not a test on its own (returns unless re-executed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serial_worker_child() {
    let Ok(queue) = std::env::var(CHILD_QUEUE) else { return };
    let url = std::env::var("RALPH_TEST_PG_URL").expect("pg url");
    let store = Arc::new(PgStore::connect(&url).await.expect("connect"));
    let stats = drain(Arc::clone(&store), store, &queue, Duration::from_secs(2)).await;
    println!("WORKER {}", serde_json::to_string(&stats).expect("json"));
}

fn spawn_worker(queue: &str) -> tokio::process::Child {
    tokio::process::Command::new(std::env::current_exe().expect("exe"))
        .args(["serial_worker_child", "--exact", "--nocapture", "--test-threads", "1"])
        .env(CHILD_QUEUE, queue)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn worker")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serial_killed_worker_process_loses_no_target() {
    let url = ralph_testkit::require!("RALPH_TEST_PG_URL");
    let store = Arc::new(PgStore::connect(&url).await.expect("connect"));
    store.migrate().await.expect("migrate");
    let queue = format!("discovery.kill-{}-{}", std::process::id(), Utc::now().timestamp_micros());
    let targets = addresses(2, 80);
    let jobs = enqueue_addresses(&*store, &queue, targets.clone(), 20).await.expect("enqueue");
    assert_eq!(jobs.len(), 4);
    let start = Utc::now();

    // Worker A claims (2 jobs at a time) and is killed mid-job.
    let mut a = spawn_worker(&queue);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = store.stats(&queue).await.expect("stats");
        let mut seen = 0;
        for ip in &targets {
            if store.find_ip(*ip).await.expect("find").is_some_and(|r| r.value.last_seen >= Some(start)) {
                seen += 1;
            }
        }
        if s.running > 0 && seen >= 5 {
            break;
        }
        assert!(Instant::now() < deadline, "worker A never started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    a.kill().await.expect("kill worker A");
    let s = store.stats(&queue).await.expect("stats");
    assert!(s.running + s.expired > 0, "A died holding a job: {s:?}");

    // Worker B takes the rest, including A's job once its lease runs out.
    let b = spawn_worker(&queue);
    let out =
        tokio::time::timeout(Duration::from_secs(120), b.wait_with_output()).await.expect("B finishes").expect("B");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    let s = store.stats(&queue).await.expect("stats");
    assert_eq!((s.done, s.dead, s.pending, s.running, s.expired), (4, 0, 0, 0, 0), "{s:?}");
    for ip in &targets {
        let row = store.find_ip(*ip).await.expect("find").expect("no target lost");
        assert!(row.value.last_seen >= Some(start), "{ip} scanned after the start");
    }
}
