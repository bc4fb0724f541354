//! A worker on the in-memory reference store (`ralph_core::testing`): graceful shutdown mid-job.
//! A worker process killed mid-job, whose job another process picks up, needs a shared SQL
//! queue and is tested in `examples/tests/discovery_store.rs`.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use ralph_core::testing::MemoryStore;
use ralph_core::{IpAddress, JobQueue, QueueAdmin, ScanResultStore};
use ralph_discovery::{RateConfig, ScanConfig, Scanner, Worker, WorkerConfig, enqueue_addresses};
use tokio::sync::watch;

/// A slow scanner: loopback addresses reset (alive, port closed) at 25 probe starts per second.
fn slow_scanner() -> Scanner {
    let rate = RateConfig::default().initial(25.0).min(1.0).max(25.0).increase_per_sec(0.0);
    Scanner::new(ScanConfig::default().ports(vec![9]).icmp(false).http(None).rate(rate).pace_loopback(true))
        .expect("valid scan config")
}

fn addresses(third: u8, n: u8) -> Vec<IpAddr> {
    (1..=n).map(|i| IpAddr::from([127, 88, third, i])).collect()
}

fn find_ip(store: &MemoryStore, ip: IpAddr) -> Option<IpAddress> {
    store.ip_addresses().into_iter().map(|r| r.value).find(|r| r.address == ip)
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
    let store = Arc::new(MemoryStore::new());
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
        if find_ip(&store, *ip).is_some_and(|r| r.last_seen >= Some(start)) {
            recorded += 1;
        }
    }
    assert_eq!(recorded, stats.hosts, "what was found before shutdown is persisted");
    let s = store.stats(queue).await.expect("stats");
    assert_eq!((s.pending, s.done), (1, 1), "the rest waits as a new job");

    let stats = drain(Arc::clone(&store), Arc::clone(&store), queue, Duration::from_secs(30)).await;
    assert_eq!(stats.hosts, 60 - recorded);
    for ip in &targets {
        let row = find_ip(&store, *ip).expect("every target recorded");
        assert!(row.last_seen >= Some(start));
    }
}
