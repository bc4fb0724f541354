//! Operators' queue actions on SQLite, PostgreSQL and MariaDB: retry, discard and pause act
//! only on jobs still in the state the caller saw, say whether they changed anything, and are
//! recorded in the change history (who, what, the discarded job's last values) in the same
//! transaction. Then operators race: tasks in this process and separate processes retry and
//! discard overlapping sets of the same dead jobs and pause the same queue at once; each job
//! leaves the dead letters exactly once, with exactly one history record, and exactly one pause
//! is reported as a change.
//!
//! The other operators are this test binary run again with `--ignored --exact
//! admin_operator_process`, told what to do through `RALPH_ADMIN_OPERATOR` (`url|actor|seed`).

mod store_common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use ralph_core::history::{Action, Actor, HistoryStore};
use ralph_core::queue::QUEUE_OBJECT_ID;
use ralph_core::{Id, Job, JobQueue, JobState, QueueAdmin, RetryPolicy};
use ralph_store::AnyStore;

const SPEC_VAR: &str = "RALPH_ADMIN_OPERATOR";
const LEASE: Duration = Duration::from_secs(60);
const QUEUE: &str = "admin.race";
const JOBS: usize = 240;

/// Enqueues `payloads` and dead-letters them all (one failed attempt each).
async fn dead_jobs(store: &AnyStore, queue: &str, payloads: &[String]) -> Vec<Id<Job>> {
    let ids = store.enqueue(queue, payloads).await.expect("enqueue");
    let once = RetryPolicy { max_attempts: 1, ..RetryPolicy::default() };
    loop {
        let jobs = store.claim(queue, 100, LEASE, "doomed").await.expect("claim");
        if jobs.is_empty() {
            break;
        }
        for job in &jobs {
            store.fail(job, "boom", &once).await.expect("fail");
        }
    }
    assert_eq!(store.stats(queue).await.expect("stats").dead, payloads.len() as u64);
    ids
}

/// The single operator: what each action changes and what it records.
async fn actions_are_recorded(store: &AnyStore) {
    let op = Actor::user("ops-jan");
    // One payload past MySQL's TEXT (64 KiB): its discard record must keep all of it.
    let big = format!("{{\"targets\":\"{}\"}}", "198.18.0.0/24,".repeat(6_000));
    let payloads = vec!["{\"n\":1}".to_owned(), "{\"n\":2}".to_owned(), big.clone(), "{\"n\":4}".to_owned()];
    let ids = dead_jobs(store, "rec", &payloads).await;

    // The wrong state, queue or job changes nothing and records nothing.
    assert_eq!(store.retry_jobs("rec", &ids[..2], JobState::Pending, &op).await.expect("retry"), 0);
    assert_eq!(store.discard_jobs("other", &ids[..2], JobState::Dead, &op).await.expect("discard"), 0);
    assert!(store.retry_jobs("rec", &ids, JobState::Done, &op).await.is_err_and(|e| e.is_invalid()));
    assert!(store.object_history("job", ids[0].get(), 10).await.expect("history").is_empty());

    // Retry two in one call: two records under one correlation id.
    assert_eq!(store.retry_jobs("rec", &ids[..2], JobState::Dead, &op).await.expect("retry"), 2);
    assert_eq!(store.retry_jobs("rec", &ids[..2], JobState::Dead, &op).await.expect("again"), 0, "no longer dead");
    let first = store.object_history("job", ids[0].get(), 10).await.expect("history");
    assert_eq!(first.len(), 1, "{first:?}");
    let entry = &first[0];
    assert_eq!((entry.record.action, &entry.record.actor), (Action::Update, &op));
    let change = |field: &str| {
        let c = entry.record.changes.iter().find(|c| c.field == field).unwrap_or_else(|| panic!("{field} recorded"));
        (c.before.clone(), c.after.clone())
    };
    assert_eq!(change("state"), (Some("dead".into()), Some("pending".into())));
    assert_eq!(change("attempts"), (Some("1".into()), Some("0".into())));
    assert_eq!(entry.record.message.as_deref(), Some("retry in queue rec"));
    let together = store.correlated(&entry.correlation).await.expect("correlated");
    let mut objects: Vec<i64> = together.iter().map(|e| e.record.object_id).collect();
    objects.sort_unstable();
    assert_eq!(objects, [ids[0].get(), ids[1].get()], "one operation, one correlation id");

    // Discard the big one: deleted, and its record keeps every value, the payload whole.
    let long_name = "x".repeat(300);
    let bot = Actor::user(&long_name);
    assert_eq!(store.discard_jobs("rec", &ids[2..3], JobState::Dead, &bot).await.expect("discard"), 1);
    assert!(store.list_jobs("rec", JobState::Dead, 10).await.expect("dead").iter().all(|j| j.id != ids[2]));
    let gone = store.deleted_objects("job", 10).await.expect("deleted");
    assert_eq!(gone.len(), 1);
    let record = &gone[0].record;
    assert_eq!((record.object_id, record.action), (ids[2].get(), Action::Delete));
    assert_eq!(record.actor.name, long_name[..255], "a name past the column is cut, not refused");
    let value = |field: &str| record.changes.iter().find(|c| c.field == field).and_then(|c| c.before.clone());
    assert_eq!(value("payload").as_deref(), Some(big.as_str()), "the payload, whole");
    assert_eq!(value("last_error").as_deref(), Some("boom"));
    assert_eq!(value("queue").as_deref(), Some("rec"));
    assert_eq!(value("state").as_deref(), Some("dead"));

    // Pause and resume: only changes are recorded.
    assert!(store.set_paused("rec", true, &op).await.expect("pause"));
    assert!(!store.set_paused("rec", true, &op).await.expect("pause again"));
    assert!(store.set_paused("rec", false, &op).await.expect("resume"));
    assert!(!store.set_paused("never-paused", false, &op).await.expect("resume"));
    let queue = store.object_history("queue", QUEUE_OBJECT_ID, 10).await.expect("queue history");
    let pauses: Vec<(Option<&str>, Option<&str>, Option<&str>)> = queue
        .iter()
        .map(|e| {
            (e.record.message.as_deref(), e.record.changes[0].before.as_deref(), e.record.changes[0].after.as_deref())
        })
        .collect();
    assert_eq!(pauses, [(Some("rec"), Some("true"), Some("false")), (Some("rec"), Some("false"), Some("true"))]);
}

/// One operator's share of the race: pause the queue once, then walk every job from a place
/// of its own, retrying or discarding each run of 20 (overlapping with the others). Returns
/// (retried, discarded, pauses that changed something).
async fn operate(store: &AnyStore, actor: &str, seed: usize, ids: &[Id<Job>]) -> (u64, u64, u64) {
    let by = Actor::user(actor);
    let paused = u64::from(store.set_paused(QUEUE, true, &by).await.expect("pause"));
    let start = (seed * 37) % ids.len();
    let order: Vec<Id<Job>> = ids[start..].iter().chain(&ids[..start]).copied().collect();
    let (mut retried, mut discarded) = (0, 0);
    for (n, run) in order.chunks(20).enumerate() {
        if (n + seed).is_multiple_of(2) {
            retried += store.retry_jobs(QUEUE, run, JobState::Dead, &by).await.expect("retry");
        } else {
            discarded += store.discard_jobs(QUEUE, run, JobState::Dead, &by).await.expect("discard");
        }
    }
    (retried, discarded, paused)
}

/// The operator process's entry point; ignored so that only the spawned processes run it.
/// Prints `RESULT retried discarded paused`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by the multi-process tests as an operator process"]
async fn admin_operator_process() {
    let spec = std::env::var(SPEC_VAR).expect("spec");
    let parts: Vec<&str> = spec.split('|').collect();
    let [url, actor, seed] = parts[..] else { panic!("bad spec {spec:?}") };
    let store = AnyStore::connect(url).await.expect("connect");
    let ids: Vec<Id<Job>> = (1..=JOBS as i64).map(Id::new).collect();
    let (r, d, p) = operate(&store, actor, seed.parse().expect("seed"), &ids).await;
    println!("RESULT {r} {d} {p}");
}

/// Three operator processes and four operator tasks race over the same dead jobs.
async fn race(url: &str, store: &AnyStore) {
    let payloads: Vec<String> =
        (0..JOBS).map(|i| format!("{{\"target\":\"198.18.{}.{}\"}}", i / 256, i % 256)).collect();
    let ids = dead_jobs(store, QUEUE, &payloads).await;
    assert_eq!(ids, (1..=JOBS as i64).map(Id::new).collect::<Vec<_>>(), "a fresh database numbers jobs from 1");

    let children: Vec<_> = (0..3)
        .map(|k| {
            Command::new(std::env::current_exe().expect("test binary"))
                .args(["--ignored", "--exact", "admin_operator_process", "--nocapture", "--test-threads=1"])
                .env(SPEC_VAR, format!("{url}|process-{k}|{k}"))
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("spawn")
        })
        .collect();
    let tasks: Vec<_> = (3..7)
        .map(|k| {
            let (store, ids) = (store.clone(), ids.clone());
            tokio::spawn(async move { operate(&store, &format!("task-{k}"), k, &ids).await })
        })
        .collect();
    let mut totals = (0, 0, 0);
    let mut add = |(r, d, p): (u64, u64, u64)| {
        totals = (totals.0 + r, totals.1 + d, totals.2 + p);
    };
    for task in tasks {
        add(task.await.expect("operator task"));
    }
    for mut child in children {
        let out = BufReader::new(child.stdout.take().expect("stdout"));
        let mut reported = false;
        for line in out.lines() {
            let line = line.expect("read");
            // libtest may print `test name ... ` before the child's own output on a line.
            if let Some(at) = line.find("RESULT ") {
                let n: Vec<u64> = line[at + 7..].split_whitespace().map(|x| x.parse().expect("count")).collect();
                add((n[0], n[1], n[2]));
                reported = true;
            }
        }
        assert!(child.wait().expect("wait").success() && reported, "an operator process failed");
    }
    let (retried, discarded, paused) = totals;
    assert_eq!(retried + discarded, JOBS as u64, "each dead job left the dead letters exactly once");
    assert_eq!(paused, 1, "exactly one pause changed something");
    let stats = store.stats(QUEUE).await.expect("stats");
    assert_eq!((stats.dead, stats.pending, stats.paused), (0, retried, true));

    let mut updates = 0;
    for (id, payload) in ids.iter().zip(&payloads) {
        let history = store.object_history("job", id.get(), 10).await.expect("history");
        assert_eq!(history.len(), 1, "job {id}: one record per change: {history:?}");
        let record = &history[0].record;
        match record.action {
            Action::Update => updates += 1,
            Action::Delete => {
                let kept = record.changes.iter().find(|c| c.field == "payload").and_then(|c| c.before.as_deref());
                assert_eq!(kept, Some(payload.as_str()), "job {id}: the discarded payload is on record");
            }
            other => panic!("job {id}: unexpected {other:?}"),
        }
    }
    assert_eq!(updates, retried, "a retry record for every retried job");
    let pauses = store.object_history("queue", QUEUE_OBJECT_ID, 10).await.expect("queue history");
    assert_eq!(pauses.len(), 1, "one pause recorded: {pauses:?}");
}

#[cfg(feature = "sqlite")]
mod sqlite {
    use super::*;

    async fn store() -> (AnyStore, String, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}", dir.path().join("admin.sqlite3").display());
        (AnyStore::connect(&url).await.expect("create the file and migrate"), url, dir)
    }

    #[tokio::test]
    async fn sqlite_admin_actions_are_recorded() {
        let (store, _url, _dir) = store().await;
        actions_are_recorded(&store).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite_overlapping_admin_actions_from_processes() {
        let (store, url, _dir) = store().await;
        race(&url, &store).await;
    }
}

#[cfg(feature = "postgres")]
mod postgres {
    use super::*;

    async fn store(tag: &str) -> Option<(AnyStore, String)> {
        let base = ralph_testkit::service("RALPH_TEST_PG_URL")?;
        let url = store_common::fresh_postgres(&base, tag).await;
        Some((AnyStore::connect(&url).await.expect("connect and migrate"), url))
    }

    #[tokio::test]
    async fn pg_admin_actions_are_recorded() {
        let Some((store, _)) = store("admin_rec").await else { return };
        actions_are_recorded(&store).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pg_overlapping_admin_actions_from_processes() {
        let Some((store, url)) = store("admin_race").await else { return };
        race(&url, &store).await;
    }
}

#[cfg(feature = "mysql")]
mod mysql {
    use super::*;

    async fn store(tag: &str) -> Option<(AnyStore, String)> {
        let base = ralph_testkit::service("RALPH_TEST_MYSQL_URL")?;
        let url = store_common::fresh_mysql(&base, tag).await;
        Some((AnyStore::connect(&url).await.expect("connect and migrate"), url))
    }

    #[tokio::test]
    async fn mysql_admin_actions_are_recorded() {
        let Some((store, _)) = store("admin_rec").await else { return };
        actions_are_recorded(&store).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn mysql_overlapping_admin_actions_from_processes() {
        let Some((store, url)) = store("admin_race").await else { return };
        race(&url, &store).await;
    }
}
