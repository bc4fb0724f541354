//! `JobQueue::requeue` raced from several processes and tasks on SQLite, PostgreSQL and
//! MariaDB: workers take jobs in stages, handing each job back with its rest (as a scan
//! worker does at shutdown) until it is done. Every handed-back rest is taken again by
//! whichever worker claims first, and every hand-back is repeated, as after a lost reply: at
//! once for half the jobs, and for the other half once another worker has claimed the rest.
//! The repeat changes nothing (it says `false` when the job was claimed again since); each
//! stage of each job is processed exactly once, every job ends done with its last payload,
//! and hand-backs did not count as attempts.
//!
//! The other workers are this test binary run again with `--ignored --exact
//! requeue_worker_process`, told what to do through `RALPH_REQUEUE_WORKER` (`url|name`).

mod store_common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use ralph_core::{Id, Job, JobQueue, JobState, QueueAdmin};
use ralph_store::AnyStore;

const SPEC_VAR: &str = "RALPH_REQUEUE_WORKER";
const LEASE: Duration = Duration::from_secs(60);
const QUEUE: &str = "requeue.race";
const JOBS: usize = 24;
/// Each job is handed back this many times before it is done.
const STAGES: u32 = 6;
const PROCESSES: usize = 3;
/// The longest the whole race may take.
const LIMIT: Duration = Duration::from_secs(120);

fn payload(job: usize, left: u32) -> String {
    format!("{{\"job\":{job},\"left\":{left}}}")
}

fn parse(payload: &str) -> (usize, u32) {
    let v: serde_json::Value = serde_json::from_str(payload).expect("payload");
    let n = |k: &str| v[k].as_u64().unwrap_or_else(|| panic!("{k} in {payload}"));
    (usize::try_from(n("job")).expect("job"), u32::try_from(n("left")).expect("left"))
}

/// Whether job `id` has left the pending state within `within` (another worker claimed it).
async fn claimed_again(store: &AnyStore, id: Id<Job>, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        let pending = store.list_jobs(QUEUE, JobState::Pending, JOBS).await.expect("list pending");
        if pending.iter().all(|j| j.id != id) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    false
}

/// Works the queue until nothing is left; returns the stages it processed (as payloads) and
/// how many repeated hand-backs found the job claimed again.
async fn work(store: &AnyStore, name: &str) -> (Vec<String>, u32) {
    let (mut done, mut raced) = (Vec::new(), 0);
    let deadline = Instant::now() + LIMIT;
    loop {
        assert!(Instant::now() < deadline, "{name}: the queue did not drain");
        let jobs = store.claim(QUEUE, 3, LEASE, name).await.expect("claim");
        if jobs.is_empty() {
            let s = store.stats(QUEUE).await.expect("stats");
            if s.pending + s.running + s.expired == 0 {
                return (done, raced);
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
            continue;
        }
        for job in jobs {
            let (n, left) = parse(&job.payload);
            assert_eq!(job.attempts, 1, "{name}: job {n} claimed as attempt {}: a hand-back counted", job.attempts);
            done.push(job.payload.clone());
            if left == 0 {
                assert!(store.ack(&job).await.expect("ack"), "{name}: job {n} lost its lease at the ack");
                continue;
            }
            assert!(
                store.requeue(&job, &payload(n, left - 1)).await.expect("requeue"),
                "{name}: job {n} lost its lease"
            );
            // The reply lost, the caller repeats, with another payload that must not land (the
            // stage "left 99" would be processed, and the new holder's hand-back or ack
            // would fail). Half the repeats wait until another worker holds the job again.
            let taken = n % 2 == 0 && claimed_again(store, job.id, Duration::from_millis(300)).await;
            let repeated = store.requeue(&job, &payload(n, 99)).await.expect("repeated requeue");
            assert!(!(taken && repeated), "{name}: job {n}: a repeated hand-back of a job claimed again said true");
            raced += u32::from(!repeated);
            assert!(
                !store.ack(&job).await.expect("ack of a handed-back claim"),
                "{name}: job {n} acked after its hand-back"
            );
        }
    }
}

/// The worker process's entry point; ignored so that only the spawned processes run it.
/// Prints `READY` once connected, then (after the parent has queued the jobs) `STAGE
/// <payload>` for each stage it processed and `RACED <n>`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by the multi-process tests as a worker process"]
async fn requeue_worker_process() {
    let spec = std::env::var(SPEC_VAR).expect("spec");
    let [url, name] = spec.split('|').collect::<Vec<_>>()[..] else { panic!("bad spec {spec:?}") };
    let store = AnyStore::connect(url).await.expect("connect");
    println!("READY");
    let deadline = Instant::now() + LIMIT;
    loop {
        let s = store.stats(QUEUE).await.expect("stats");
        if s.pending + s.running + s.done > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "{name}: no jobs were queued");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let (stages, raced) = work(&store, name).await;
    for stage in stages {
        println!("STAGE {stage}");
    }
    println!("RACED {raced}");
}

/// The worker processes, killed and reaped however the test ends.
struct Workers(Vec<Child>);

impl Drop for Workers {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Three worker processes and three worker tasks race over the same jobs.
async fn race(url: &str, store: &AnyStore) {
    let (lines_tx, lines) = mpsc::channel::<String>();
    let mut workers = Workers(Vec::new());
    let mut readers = Vec::new();
    for k in 0..PROCESSES {
        let mut child = Command::new(std::env::current_exe().expect("test binary"))
            .args(["--ignored", "--exact", "requeue_worker_process", "--nocapture", "--test-threads=1"])
            .env(SPEC_VAR, format!("{url}|process-{k}"))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn");
        let out = BufReader::new(child.stdout.take().expect("stdout"));
        let tx = lines_tx.clone();
        readers.push(std::thread::spawn(move || {
            for line in out.lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        }));
        workers.0.push(child);
    }
    drop(lines_tx);
    // Every process connected before there is work: each takes part from the start.
    let deadline = Instant::now() + LIMIT;
    let mut later = Vec::new();
    let mut ready = 0;
    while ready < PROCESSES {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = lines.recv_timeout(left).expect("every worker process reports READY");
        // libtest may print `test name ... ` before the child's own output on a line.
        if line.contains("READY") {
            ready += 1;
        } else {
            later.push(line);
        }
    }
    let payloads: Vec<String> = (0..JOBS).map(|i| payload(i, STAGES)).collect();
    store.enqueue(QUEUE, &payloads).await.expect("enqueue");
    let tasks: Vec<_> = (0..3)
        .map(|k| {
            let store = store.clone();
            tokio::spawn(async move { work(&store, &format!("task-{k}")).await })
        })
        .collect();
    let mut seen: BTreeMap<String, u32> = BTreeMap::new();
    let mut raced = 0;
    for task in tasks {
        let (stages, r) = task.await.expect("worker task");
        raced += r;
        for stage in stages {
            *seen.entry(stage).or_default() += 1;
        }
    }
    for child in &mut workers.0 {
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                assert!(status.success(), "a worker process failed: {status}");
                break;
            }
            assert!(Instant::now() < deadline, "the worker processes did not finish in {LIMIT:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    for reader in readers {
        reader.join().expect("reader thread");
    }
    let mut from_processes = 0;
    for line in later.into_iter().chain(lines.try_iter()) {
        if let Some(at) = line.find("STAGE ") {
            *seen.entry(line[at + 6..].to_owned()).or_default() += 1;
            from_processes += 1;
        } else if let Some(at) = line.find("RACED ") {
            raced += line[at + 6..].trim().parse::<u32>().expect("raced count");
        }
    }
    let want: BTreeMap<String, u32> =
        (0..JOBS).flat_map(|i| (0..=STAGES).map(move |left| (payload(i, left), 1))).collect();
    assert_eq!(seen, want, "each stage of each job processed exactly once, and no other");
    assert!(from_processes > 0, "the processes took part");
    assert!(raced > 0, "no repeated hand-back met a job claimed again");
    let stats = store.stats(QUEUE).await.expect("stats");
    assert_eq!((stats.done, stats.pending, stats.running, stats.expired, stats.dead), (JOBS as u64, 0, 0, 0, 0));
    let done = store.list_jobs(QUEUE, JobState::Done, JOBS).await.expect("list");
    assert_eq!(done.len(), JOBS);
    for job in done {
        let (_, left) = parse(&job.payload);
        assert_eq!((left, job.attempts), (0, 1), "job {}: ends with its last rest, one counted attempt", job.id);
    }
}

#[cfg(feature = "sqlite")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_requeues_race_from_processes() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("requeue.sqlite3").display());
    let store = AnyStore::connect(&url).await.expect("create the file and migrate");
    race(&url, &store).await;
}

#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_requeues_race_from_processes() {
    let Some(base) = ralph_testkit::service("RALPH_TEST_PG_URL") else { return };
    let url = store_common::fresh_postgres(&base, "requeue_race").await;
    let store = AnyStore::connect(&url).await.expect("connect and migrate");
    race(&url, &store).await;
}

#[cfg(feature = "mysql")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_requeues_race_from_processes() {
    let Some(base) = ralph_testkit::service("RALPH_TEST_MYSQL_URL") else { return };
    let url = store_common::fresh_mysql(&base, "requeue_race").await;
    let store = AnyStore::connect(&url).await.expect("connect and migrate");
    race(&url, &store).await;
}
