//! `JobQueue::requeue` raced from several processes and tasks on SQLite, PostgreSQL and
//! MariaDB: workers take jobs in stages, handing each job back with its rest (as a scan
//! worker does at shutdown) until it is done. Every handed-back rest is taken again by
//! whichever worker claims first, and every hand-back is repeated at once, as after a lost
//! reply: the repeat changes nothing, even when another worker has already claimed the job
//! again. Each stage of each job is processed exactly once, every job ends done with its last
//! payload, and hand-backs did not count as attempts.
//!
//! The other workers are this test binary run again with `--ignored --exact
//! requeue_worker_process`, told what to do through `RALPH_REQUEUE_WORKER` (`url|name`).

mod store_common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ralph_core::{JobQueue, JobState, QueueAdmin};
use ralph_store::AnyStore;

const SPEC_VAR: &str = "RALPH_REQUEUE_WORKER";
const LEASE: Duration = Duration::from_secs(60);
const QUEUE: &str = "requeue.race";
const JOBS: usize = 24;
/// Each job is handed back this many times before it is done.
const STAGES: u32 = 6;

fn payload(job: usize, left: u32) -> String {
    format!("{{\"job\":{job},\"left\":{left}}}")
}

fn parse(payload: &str) -> (usize, u32) {
    let v: serde_json::Value = serde_json::from_str(payload).expect("payload");
    let n = |k: &str| v[k].as_u64().unwrap_or_else(|| panic!("{k} in {payload}"));
    (usize::try_from(n("job")).expect("job"), u32::try_from(n("left")).expect("left"))
}

/// Works the queue until nothing is left; returns the stages it processed, as payloads.
async fn work(store: &AnyStore, name: &str) -> Vec<String> {
    let mut done = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        assert!(Instant::now() < deadline, "{name}: the queue did not drain");
        let jobs = store.claim(QUEUE, 3, LEASE, name).await.expect("claim");
        if jobs.is_empty() {
            let s = store.stats(QUEUE).await.expect("stats");
            if s.pending + s.running + s.expired == 0 {
                return done;
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
            let rest = payload(n, left - 1);
            assert!(store.requeue(&job, &rest).await.expect("requeue"), "{name}: job {n} lost its lease");
            // The reply lost, the caller repeats: `true` while the job waits, `false` once
            // another worker holds it again; never a change (that worker's own hand-back or
            // ack would then fail, and the stage "left 99" would be processed). For half the
            // jobs the repeat comes late, when another worker has likely claimed the rest.
            if n % 2 == 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            store.requeue(&job, &payload(n, 99)).await.expect("repeated requeue");
            assert!(
                !store.ack(&job).await.expect("ack of a handed-back claim"),
                "{name}: job {n} acked after its hand-back"
            );
        }
    }
}

/// The worker process's entry point; ignored so that only the spawned processes run it.
/// Prints `STAGE <payload>` for each stage it processed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by the multi-process tests as a worker process"]
async fn requeue_worker_process() {
    let spec = std::env::var(SPEC_VAR).expect("spec");
    let [url, name] = spec.split('|').collect::<Vec<_>>()[..] else { panic!("bad spec {spec:?}") };
    let store = AnyStore::connect(url).await.expect("connect");
    for stage in work(&store, name).await {
        println!("STAGE {stage}");
    }
}

/// Three worker processes and three worker tasks race over the same jobs.
async fn race(url: &str, store: &AnyStore) {
    let payloads: Vec<String> = (0..JOBS).map(|i| payload(i, STAGES)).collect();
    store.enqueue(QUEUE, &payloads).await.expect("enqueue");
    let children: Vec<_> = (0..3)
        .map(|k| {
            Command::new(std::env::current_exe().expect("test binary"))
                .args(["--ignored", "--exact", "requeue_worker_process", "--nocapture", "--test-threads=1"])
                .env(SPEC_VAR, format!("{url}|process-{k}"))
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("spawn")
        })
        .collect();
    let tasks: Vec<_> = (0..3)
        .map(|k| {
            let store = store.clone();
            tokio::spawn(async move { work(&store, &format!("task-{k}")).await })
        })
        .collect();
    let mut seen: BTreeMap<String, u32> = BTreeMap::new();
    for task in tasks {
        for stage in task.await.expect("worker task") {
            *seen.entry(stage).or_default() += 1;
        }
    }
    let mut from_processes = 0;
    for mut child in children {
        let out = BufReader::new(child.stdout.take().expect("stdout"));
        for line in out.lines() {
            let line = line.expect("read");
            // libtest may print `test name ... ` before the child's own output on a line.
            if let Some(at) = line.find("STAGE ") {
                *seen.entry(line[at + 6..].to_owned()).or_default() += 1;
                from_processes += 1;
            }
        }
        assert!(child.wait().expect("wait").success(), "a worker process failed");
    }
    let want: BTreeMap<String, u32> =
        (0..JOBS).flat_map(|i| (0..=STAGES).map(move |left| (payload(i, left), 1))).collect();
    assert_eq!(seen, want, "each stage of each job processed exactly once, and no other");
    assert!(from_processes > 0, "the processes took part");
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
