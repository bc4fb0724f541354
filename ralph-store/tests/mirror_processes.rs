//! A directory's first import racing logins, across processes: two sync processes mirror
//! overlapping pages of new users (`UserStore::mirror_users`, the bulk creation path) while two
//! login processes mirror some of the same users one by one (`mirror_user`), on SQLite (one
//! file), PostgreSQL and MariaDB. Every mirror succeeds, each user is created exactly once, and
//! each ends with its profile and exactly its groups.
//!
//! The processes are this test binary run again with `--ignored --exact mirror_process`, told
//! what to do through `RALPH_MIRROR_PROCESS` (`url|mode|from|to|step`).

mod store_common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use ralph_core::history::HistoryStore;
use ralph_core::{Group, MirrorChange, Profile, User, UserMirror, UserSource, UserStore};
use ralph_store::AnyStore;

const SPEC_VAR: &str = "RALPH_MIRROR_PROCESS";
const USERS: usize = 240;
const PAGE: usize = 40;

/// User `i` as the directory has it: a profile and two groups, one shared by all.
fn mirror(i: usize) -> UserMirror {
    let user = User {
        source: UserSource::Ldap,
        last_name: format!("Imported {i}"),
        ..User::new(&format!("mp-{i:03}")).expect("user")
    };
    let groups = ["active".to_owned(), format!("team-{}", i % 9)];
    UserMirror {
        user,
        profile: Some(Profile { department: Some(format!("dept {}", i % 5)), ..Profile::default() }),
        groups: Some(groups.iter().map(|g| Group::new(g).expect("group")).collect()),
        group_scope: Default::default(),
    }
}

/// The child's entry point; ignored so that only the spawned processes run it. Prints one
/// `CREATED <username>` line per creation it made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by the multi-process tests as a child process"]
async fn mirror_process() {
    let spec = std::env::var(SPEC_VAR).expect("spec");
    let parts: Vec<&str> = spec.split('|').collect();
    let [url, mode, from, to, step] = parts[..] else { panic!("bad spec {spec:?}") };
    let (from, to, step): (usize, usize, usize) =
        (from.parse().expect("from"), to.parse().expect("to"), step.parse().expect("step"));
    let store = AnyStore::connect(url).await.expect("connect");
    let mirrors: Vec<UserMirror> = (from..to).step_by(step).map(mirror).collect();
    let results = match mode {
        "sync" => {
            let mut all = Vec::new();
            for page in mirrors.chunks(PAGE) {
                all.extend(store.mirror_users(page).await.expect("page"));
            }
            all
        }
        "login" => {
            let mut all = Vec::new();
            for m in mirrors.iter().rev() {
                all.push(store.mirror_user(m).await);
            }
            all.reverse();
            all
        }
        other => panic!("mode {other}"),
    };
    for (m, result) in mirrors.iter().zip(results) {
        let done = result.unwrap_or_else(|e| panic!("mirror of {} failed: {e:?}", m.user.username));
        assert_ne!(done.change, MirrorChange::Updated, "{}: nothing differs between the racers", m.user.username);
        if done.change == MirrorChange::Created {
            println!("CREATED {}", m.user.username);
        }
    }
}

/// Runs the four processes against `url` and checks the result through `store`.
async fn race(url: &str, store: &AnyStore) {
    let specs = [
        format!("{url}|sync|0|{}|1", USERS * 2 / 3),
        format!("{url}|sync|{}|{USERS}|1", USERS / 3),
        format!("{url}|login|0|{USERS}|3"),
        format!("{url}|login|1|{USERS}|4"),
    ];
    let children: Vec<_> = specs
        .iter()
        .map(|spec| {
            Command::new(std::env::current_exe().expect("test binary"))
                .args(["--ignored", "--exact", "mirror_process", "--nocapture", "--test-threads=1"])
                .env(SPEC_VAR, spec)
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("spawn")
        })
        .collect();
    let mut created: BTreeMap<String, usize> = BTreeMap::new();
    for mut child in children {
        let out = BufReader::new(child.stdout.take().expect("stdout"));
        for line in out.lines() {
            let line = line.expect("read");
            // libtest may print `test name ... ` before the child's own output on a line.
            if let Some(at) = line.find("CREATED ") {
                *created.entry(line[at + 8..].trim().to_owned()).or_default() += 1;
            }
        }
        assert!(child.wait().expect("wait").success(), "a mirror process failed");
    }
    assert_eq!(created.len(), USERS, "every user created by some process");
    assert!(created.values().all(|n| *n == 1), "each user created exactly once: {created:?}");
    for i in 0..USERS {
        let m = mirror(i);
        let name = &m.user.username;
        assert_eq!(store.get_user(name).await.expect("read").expect("stored").value, m.user, "{name}");
        assert_eq!(store.get_profile(name).await.expect("profile"), m.profile, "{name}");
        let mut want = m.groups.clone().expect("groups");
        want.sort();
        assert_eq!(store.user_groups(name).await.expect("groups"), want, "{name}");
    }
    assert_eq!(store.list_users(Some(UserSource::Ldap)).await.expect("list").len(), USERS, "no duplicate account");
    // On record exactly once each: one create, by the directory, and no update (nothing
    // differed between the racers).
    for i in 0..USERS {
        let id = store.get_user(&mirror(i).user.username).await.expect("read").expect("stored").id.get();
        let history = store.object_history("user", id, 10).await.expect("history");
        assert_eq!(history.len(), 1, "user {i}: {history:?}");
        assert_eq!(history[0].record.action, ralph_core::history::Action::Create, "user {i}");
        assert_eq!(history[0].record.actor, ralph_core::history::Actor::source("ldap"), "user {i}");
    }
}

#[cfg(feature = "sqlite")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_first_import_races_logins_across_processes() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("mirror.sqlite3").display());
    let store = AnyStore::connect(&url).await.expect("create the file and migrate");
    race(&url, &store).await;
}

#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_first_import_races_logins_across_processes() {
    let base = ralph_testkit::require!("RALPH_TEST_PG_URL");
    let url = store_common::fresh_postgres(&base, "mirror_processes").await;
    let store = AnyStore::connect(&url).await.expect("connect and migrate");
    race(&url, &store).await;
}

#[cfg(feature = "mysql")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_first_import_races_logins_across_processes() {
    let base = ralph_testkit::require!("RALPH_TEST_MYSQL_URL");
    let url = store_common::fresh_mysql(&base, "mirror_processes").await;
    let store = AnyStore::connect(&url).await.expect("connect and migrate");
    race(&url, &store).await;
}
