//! Pruning the change history as a queued job, on SQLite, PostgreSQL and MariaDB: prune jobs
//! enqueued with a retention are run by several runners at once (tasks in this process and
//! separate processes); each job runs once, a payload that is not a prune job is dead-lettered,
//! and exactly what the retention drops is gone.
//!
//! The other runners are this test binary run again with `--ignored --exact
//! prune_runner_process`, told the store's URL through `RALPH_PRUNE_RUNNER`.

mod store_common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use ralph_core::history::{HistoryStore, PRUNE_QUEUE, PruneJob, PruneRun, Retention, enqueue_prune, run_prune_jobs};
use ralph_core::{Group, JobQueue, JobState, QueueAdmin, User, UserMirror, UserSource, UserStore};
use ralph_store::AnyStore;

const SPEC_VAR: &str = "RALPH_PRUNE_RUNNER";
const USERS: usize = 120;
const LEASE: Duration = Duration::from_secs(120);

fn mirror(i: usize, last: &str) -> UserMirror {
    let user =
        User { source: UserSource::Ldap, last_name: last.into(), ..User::new(&format!("pr-{i:03}")).expect("user") };
    UserMirror {
        user,
        profile: None,
        groups: Some(vec![Group::new("staff").expect("group")]),
        group_scope: Default::default(),
    }
}

/// The runner process's entry point; ignored so that only the spawned processes run it.
/// Prints `RAN jobs rows rejected lease_lost`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by the multi-process tests as a prune runner"]
async fn prune_runner_process() {
    let url = std::env::var(SPEC_VAR).expect("store URL");
    let store = AnyStore::connect(&url).await.expect("connect");
    let run = run_prune_jobs(&store, PRUNE_QUEUE, &format!("runner-{}", std::process::id()), LEASE).await.expect("run");
    println!("RAN {} {} {} {}", run.jobs, run.rows, run.rejected, run.lease_lost);
}

async fn prune_jobs_from_processes(url: &str, store: &AnyStore) {
    // Every user twice on record: created, then renamed.
    let page: Vec<UserMirror> = (0..USERS).map(|i| mirror(i, "First")).collect();
    assert!(store.mirror_users(&page).await.expect("import").iter().all(Result::is_ok));
    for i in 0..USERS {
        store.mirror_user(&mirror(i, "Second")).await.expect("rename");
    }
    let ids: Vec<i64> =
        store.list_users(Some(UserSource::Ldap)).await.expect("users").into_iter().map(|r| r.id.get()).collect();
    assert_eq!(ids.len(), USERS);

    // Three jobs keeping the newest row of each object (the same work: only one deletes each
    // row), and one job that is not a prune job.
    let keep_one = Retention::default().with_max_per_object(1).with_chunk(25);
    for _ in 0..3 {
        enqueue_prune(store, PRUNE_QUEUE, &keep_one).await.expect("enqueue");
    }
    store.enqueue(PRUNE_QUEUE, &["{\"max_age\":\"forever\"}".to_owned()]).await.expect("enqueue a bad one");
    assert_eq!(
        PruneJob::from_payload(&PruneJob::from(&keep_one).to_payload()).expect("round trip").retention(),
        keep_one
    );
    // An age past what the clock can subtract keeps everything (no panic in the runner).
    let forever =
        PruneJob::from_payload("{\"max_age_secs\":18446744073709551615,\"max_per_object\":null,\"chunk\":10}");
    assert_eq!(store.prune_history(&forever.expect("a prune job").retention()).await.expect("prune"), 0);

    let children: Vec<_> = (0..2)
        .map(|_| {
            Command::new(std::env::current_exe().expect("test binary"))
                .args(["--ignored", "--exact", "prune_runner_process", "--nocapture", "--test-threads=1"])
                .env(SPEC_VAR, url)
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("spawn")
        })
        .collect();
    let tasks: Vec<_> = (0..3)
        .map(|k| {
            let store = store.clone();
            tokio::spawn(async move { run_prune_jobs(&store, PRUNE_QUEUE, &format!("task-{k}"), LEASE).await })
        })
        .collect();
    let mut total = PruneRun::default();
    let mut add = |run: PruneRun| {
        total.jobs += run.jobs;
        total.rows += run.rows;
        total.rejected += run.rejected;
        total.lease_lost += run.lease_lost;
    };
    for task in tasks {
        add(task.await.expect("task").expect("prune run"));
    }
    for mut child in children {
        let out = BufReader::new(child.stdout.take().expect("stdout"));
        let mut reported = false;
        for line in out.lines() {
            let line = line.expect("read");
            if let Some(at) = line.find("RAN ") {
                let n: Vec<u64> = line[at + 4..].split_whitespace().map(|x| x.parse().expect("count")).collect();
                add(PruneRun { jobs: n[0], rows: n[1], rejected: n[2], lease_lost: n[3] });
                reported = true;
            }
        }
        assert!(child.wait().expect("wait").success() && reported, "a runner process failed");
    }
    assert_eq!((total.jobs, total.rejected, total.lease_lost), (3, 1, 0), "each job run once: {total:?}");
    assert_eq!(total.rows, USERS as u64, "the older row of each user, each deleted once");
    for id in &ids {
        let left = store.object_history("user", *id, 10).await.expect("history");
        assert_eq!(left.len(), 1, "user {id}: {left:?}");
        assert!(left[0].record.changes.iter().any(|c| c.field == "last_name"), "the newest row is kept");
    }
    let stats = store.stats(PRUNE_QUEUE).await.expect("stats");
    assert_eq!((stats.done, stats.dead, stats.pending, stats.running), (3, 1, 0, 0));
    let dead = store.list_jobs(PRUNE_QUEUE, JobState::Dead, 5).await.expect("dead");
    assert!(dead[0].last_error.as_deref().is_some_and(|e| e.contains("prune job")), "{dead:?}");
}

#[cfg(feature = "sqlite")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_prune_jobs_from_processes() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("prune.sqlite3").display());
    let store = AnyStore::connect(&url).await.expect("connect");
    prune_jobs_from_processes(&url, &store).await;
}

#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_prune_jobs_from_processes() {
    let base = ralph_testkit::require!("RALPH_TEST_PG_URL");
    let url = store_common::fresh_postgres(&base, "history_prune").await;
    let store = AnyStore::connect(&url).await.expect("connect");
    prune_jobs_from_processes(&url, &store).await;
}

#[cfg(feature = "mysql")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_prune_jobs_from_processes() {
    let base = ralph_testkit::require!("RALPH_TEST_MYSQL_URL");
    let url = store_common::fresh_mysql(&base, "history_prune").await;
    let store = AnyStore::connect(&url).await.expect("connect");
    prune_jobs_from_processes(&url, &store).await;
}
