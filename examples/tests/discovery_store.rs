//! Discovery on SQL stores, composed from the public API as a host application composes it:
//! network scans enqueued on their environment's queue from the inventory (SQLite), and a
//! worker process killed mid-job whose job another process picks up (PostgreSQL, shared by
//! processes). The rest of ralph-discovery's persistence tests run on ralph-core's in-memory
//! store in `ralph-discovery/tests/`.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use ralph_core::{
    DataCenter, InventoryStore, IpAddress, JobQueue, Network, NetworkEnvironment, QueueAdmin, Repository,
    ScanResultStore,
};
use ralph_discovery::{
    CancellationToken, RateConfig, ScanConfig, ScanJob, Scanner, Worker, WorkerConfig, enqueue_addresses,
    enqueue_network,
};
use ralph_store::{PgStore, SqliteStore};

const CHILD_QUEUE: &str = "RALPH_WORKER_CHILD_QUEUE";

async fn sqlite() -> (tempfile::TempDir, Arc<SqliteStore>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("ralph.db").display());
    let store = SqliteStore::connect(&url).await.expect("connect");
    store.migrate().await.expect("migrate");
    (dir, Arc::new(store))
}

#[tokio::test]
async fn network_scans_are_enqueued_on_the_environment_queue_without_buried_addresses() {
    let (_dir, store) = sqlite().await;
    let dc = Repository::<DataCenter>::create(&*store, &DataCenter::new("dc1", None).expect("dc")).await.expect("dc");
    let env = NetworkEnvironment::new("lab", dc).expect("env");
    let queue_name = env.queue.clone();
    let env = Repository::<NetworkEnvironment>::create(&*store, &env).await.expect("env");
    let mut net = Network::new("loop", "127.0.5.0/28").expect("net");
    net.environment = Some(env);
    let net = Repository::<Network>::create(&*store, &net).await.expect("net");
    let mut buried = IpAddress::parse("127.0.5.7", None).expect("ip");
    buried.is_buried = true;
    Repository::<IpAddress>::create(&*store, &buried).await.expect("buried");

    let ids = enqueue_network(&*store, &*store, net, 5).await.expect("enqueue");
    assert_eq!(ids.len(), 3, "14 hosts in groups of 5, as ranges");
    let jobs = store.claim(&queue_name, 10, std::time::Duration::from_secs(30), "t").await.expect("claim");
    let mut ranges: Vec<String> = Vec::new();
    for job in &jobs {
        let payload = ScanJob::parse(&job.payload).expect("payload");
        assert!(payload.addresses.is_empty(), "ranges, not addresses: {payload:?}");
        ranges.extend(payload.targets);
        assert!(store.ack(job).await.expect("ack"));
    }
    assert_eq!(ranges, ["127.0.5.1-127.0.5.5", "127.0.5.6-127.0.5.10", "127.0.5.11-127.0.5.14"]);

    // The worker leaves the buried address out with one range query when it runs the jobs.
    enqueue_network(&*store, &*store, net, 5).await.expect("enqueue again");
    let stats = drain(Arc::clone(&store), Arc::clone(&store), &queue_name, Duration::from_secs(30)).await;
    assert_eq!((stats.jobs_done, stats.hosts), (3, 13), "every host of the /28 but the buried one: {stats:?}");
    let env_ids = ralph_discovery::enqueue_environment(&*store, &*store, env, 100).await.expect("env enqueue");
    assert_eq!(env_ids.len(), 1);
}

/// A slow scanner: loopback addresses reset (alive, port closed) at 25 probe starts per second.
fn slow_scanner() -> Scanner {
    let rate = RateConfig::default().initial(25.0).min(1.0).max(25.0).increase_per_sec(0.0);
    Scanner::new(ScanConfig::default().ports(vec![9]).icmp(false).http(None).rate(rate).pace_loopback(true))
        .expect("valid scan config")
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
    let token = CancellationToken::new();
    let tx = token.clone();
    let watcher = {
        let (jobs, queue) = (Arc::clone(&jobs), queue.to_owned());
        tokio::spawn(async move {
            while !idle(&*jobs, &queue).await {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            tx.cancel();
        })
    };
    let stats = worker.run(token).await.expect("worker");
    watcher.await.expect("watcher");
    stats
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
    // 240 hosts at 25 a second: the first two jobs alone take about 5 s, so the kill below
    // lands mid-work even when the checks before it run slowly.
    let targets = addresses(2, 240);
    let jobs = enqueue_addresses(&*store, &queue, targets.clone(), 60).await.expect("enqueue");
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
