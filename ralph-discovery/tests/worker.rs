//! A worker on the in-memory reference store (`ralph_core::testing`): graceful shutdown
//! mid-job, job slots that do not wait for each other, bad payloads dead-lettered, heartbeats,
//! several queues. Worker processes, stolen leases, poison jobs and killed database
//! connections need a shared SQL store: `examples/tests/discovery_workers.rs` and
//! `examples/tests/discovery_store.rs`.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use ralph_core::testing::MemoryStore;
use ralph_core::{IpAddress, JobQueue, JobState, QueueAdmin, ScanResultStore};
use ralph_discovery::{CancellationToken, RateConfig, ScanConfig, Scanner, Worker, WorkerConfig, enqueue_addresses};

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
    let config = WorkerConfig::new(queue).lease(lease).poll_interval(Duration::from_millis(100)).batch(7);
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_persists_what_was_found_and_requeues_the_rest() {
    let store = Arc::new(MemoryStore::new());
    let queue = "discovery.graceful";
    // One job of 200 hosts: 8 s at 25 probe starts a second, so the shutdown lands mid-job.
    let targets = addresses(1, 200);
    enqueue_addresses(&*store, queue, targets.clone(), 1000).await.expect("enqueue");
    let start = Utc::now();

    let worker = Worker::new(Arc::clone(&store), Arc::clone(&store), slow_scanner(), WorkerConfig::new(queue));
    let token = CancellationToken::new();
    let tx = token.clone();
    let run = tokio::spawn(async move { worker.run(token).await });
    // However slowly the worker starts, it gets a second of scanning once it holds the job.
    let claimed =
        eventually(Duration::from_secs(30), async || store.stats(queue).await.expect("stats").running == 1).await;
    assert!(claimed, "the worker never claimed the job");
    tokio::time::sleep(Duration::from_millis(1000)).await;
    tx.cancel();
    let stats = run.await.expect("join").expect("worker");
    assert_eq!(stats.requeued, 1, "{stats:?}");
    assert!(stats.hosts > 0 && stats.hosts < 200, "stopped mid-job: {stats:?}");
    let mut recorded = 0;
    for ip in &targets {
        if find_ip(&store, *ip).is_some_and(|r| r.last_seen >= Some(start)) {
            recorded += 1;
        }
    }
    assert_eq!(recorded, stats.hosts, "what was found before shutdown is persisted");
    let s = store.stats(queue).await.expect("stats");
    assert_eq!((s.pending, s.done), (1, 0), "the rest waits as the same job");

    let stats = drain(Arc::clone(&store), Arc::clone(&store), queue, Duration::from_secs(30)).await;
    assert_eq!(stats.hosts, 200 - recorded);
    for ip in &targets {
        let row = find_ip(&store, *ip).expect("every target recorded");
        assert!(row.last_seen >= Some(start));
    }
}

/// Polls `check` every 20 ms until it holds or `within` passes; returns whether it held.
async fn eventually(within: Duration, mut check: impl AsyncFnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    while tokio::time::Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_job_does_not_idle_the_other_slots() {
    let store = Arc::new(MemoryStore::new());
    let queue = "discovery.slots";
    // One job of 200 hosts (8 s at 25 probe starts a second), then five of one host each;
    // the slots share the scanner's pacer, which gives each scan its turn.
    enqueue_addresses(&*store, queue, addresses(3, 200), 1000).await.expect("slow job");
    for i in 1..=5u8 {
        enqueue_addresses(&*store, queue, [IpAddr::from([127, 88, 4, i])], 1).await.expect("quick job");
    }
    let config = WorkerConfig::new(queue).concurrency(2).poll_interval(Duration::from_millis(20));
    let worker = Worker::new(Arc::clone(&store), Arc::clone(&store), slow_scanner(), config);
    let token = CancellationToken::new();
    let run = tokio::spawn({
        let token = token.clone();
        async move { worker.run(token).await }
    });
    // The second slot works through the quick jobs while the first still scans the slow one.
    let quick_done = eventually(Duration::from_secs(6), async || {
        let s = store.stats(queue).await.expect("stats");
        s.done == 5 && s.running == 1
    })
    .await;
    token.cancel();
    let stats = run.await.expect("join").expect("worker");
    assert!(quick_done, "quick jobs waited for the slow one: {:?}", store.stats(queue).await);
    assert_eq!((stats.jobs_done, stats.requeued), (5, 1), "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_payloads_are_dead_lettered_with_the_reason_and_the_worker_goes_on() {
    let store = Arc::new(MemoryStore::new());
    let queue = "discovery.bad";
    let bad = ["{not json".to_owned(), r#"{"targets":["127.0.0.300"]}"#.to_owned(), r#"{"shards":[1]}"#.to_owned()];
    store.enqueue(queue, &bad).await.expect("bad jobs");
    enqueue_addresses(&*store, queue, addresses(5, 3), 10).await.expect("good job");
    let stats = drain(Arc::clone(&store), Arc::clone(&store), queue, Duration::from_secs(30)).await;
    assert_eq!((stats.jobs_failed, stats.jobs_done, stats.hosts), (3, 1, 3), "{stats:?}");
    let dead = store.list_jobs(queue, JobState::Dead, 10).await.expect("dead");
    assert_eq!(dead.len(), 3, "dead-lettered at the first attempt");
    let reasons: Vec<String> = dead.iter().map(|j| j.last_error.clone().unwrap_or_default()).collect();
    for expected in ["invalid job payload: key must be a string", "127.0.0.300", "unknown field `shards`"] {
        assert!(reasons.iter().any(|r| r.contains(expected)), "{expected:?} in {reasons:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_name_the_worker_and_its_current_jobs() {
    let store = Arc::new(MemoryStore::new());
    let queue = "discovery.beat";
    // One job of 200 hosts (8 s at 25 probe starts a second): it is still running when a slow
    // machine gets to the first heartbeats.
    let ids = enqueue_addresses(&*store, queue, addresses(6, 200), 1000).await.expect("enqueue");
    let config = WorkerConfig::new(queue)
        .queue("discovery.beat.other")
        .name("beating-worker")
        .heartbeat_interval(Duration::from_millis(50));
    let worker = Worker::new(Arc::clone(&store), Arc::clone(&store), slow_scanner(), config);
    let token = CancellationToken::new();
    let run = tokio::spawn({
        let token = token.clone();
        async move { worker.run(token).await }
    });
    // A beat that names the job and shows its scan under way (some hosts done, not all).
    let seen = eventually(Duration::from_secs(30), async || {
        store.workers().await.expect("workers").iter().any(|w| {
            w.name == "beating-worker"
                && w.current_jobs == ids
                && w.progress.iter().any(|p| p.job == ids[0] && p.done > 0 && p.done < 200)
        })
    })
    .await;
    let beat = store.workers().await.expect("workers").into_iter().find(|w| w.name == "beating-worker");
    token.cancel();
    run.await.expect("join").expect("worker");
    assert!(seen, "no heartbeat with the running job: {beat:?}");
    let beat = beat.expect("beat");
    assert_eq!(beat.pid, std::process::id());
    let progress = &beat.progress[0];
    assert_eq!(progress.total, Some(200), "{progress:?}");
    assert!(progress.per_sec().is_some_and(|r| r > 0.0) && progress.eta().is_some(), "{progress:?}");
    assert_eq!(beat.queues, [queue, "discovery.beat.other"]);
    assert!(!beat.host.is_empty());
    let last = store.workers().await.expect("workers").into_iter().find(|w| w.name == "beating-worker").expect("beat");
    assert!(last.current_jobs.is_empty(), "the last beat after the drain holds no job: {last:?}");
    assert!(last.progress.is_empty(), "{last:?}");
    assert!(last.last_seen >= beat.last_seen);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_worker_serves_several_queues() {
    let store = Arc::new(MemoryStore::new());
    let (first, second) = ("discovery.first", "discovery.second");
    enqueue_addresses(&*store, first, addresses(7, 4), 2).await.expect("first");
    enqueue_addresses(&*store, second, addresses(8, 4), 2).await.expect("second");
    let config = WorkerConfig::new(first).queue(second).poll_interval(Duration::from_millis(20));
    let worker = Worker::new(Arc::clone(&store), Arc::clone(&store), slow_scanner(), config);
    let token = CancellationToken::new();
    let run = tokio::spawn({
        let token = token.clone();
        async move { worker.run(token).await }
    });
    let drained =
        eventually(Duration::from_secs(5), async || idle(&*store, first).await && idle(&*store, second).await).await;
    token.cancel();
    let stats = run.await.expect("join").expect("worker");
    assert!(drained, "{:?} {:?}", store.stats(first).await, store.stats(second).await);
    assert_eq!((stats.jobs_done, stats.hosts), (4, 8), "{stats:?}");
    for queue in [first, second] {
        assert_eq!(store.stats(queue).await.expect("stats").done, 2, "{queue}");
    }
}
