//! The bulk sync (`LdapBackend::sync`) against a slapd with 50,000 users whose service account
//! may read 1,000 entries per search (pages of 1,000): a first import into an empty store and
//! a re-sync with nothing changed, per store backend (a SQLite file, PostgreSQL), with the
//! process's peak RSS for each. Targets (issue 13): first import <= 30 s, re-sync <= 10 s,
//! peak RSS <= 64 MB.
//!
//! The configuration is Ralph's documented one as the tests use it: memberOf groups followed
//! recursively (nested groups), a group mapping, a deny group, the `ralph-users` user filter.
//!
//! `cargo bench -p ralph-benches --bench ldap_sync` starts a private slapd with
//! scripts/services/slapd/up.sh and `LDAP_SYNC_USERS` bulk users (default 50,000), unless
//! `RALPH_TEST_LDAP_URL` is set and `RALPH_TEST_LDAP_BULK_USERS` is at least that. Knobs:
//! `LDAP_SYNC_BACKENDS=sqlite,postgres,memory` (default all three, in that order; `memory` is
//! the in-memory reference store, the baseline in the same run: what the directory side and
//! the sync itself cost, with a store that costs next to nothing; it runs last because the
//! 50,000 users it holds stay in the process's heap and would count in the others' peak RSS;
//! PostgreSQL needs
//! `RALPH_TEST_PG_ADMIN_URL` or `RALPH_TEST_PG_URL`, and gets a fresh database, dropped after),
//! `LDAP_SYNC_PAGE` (default 1000).
//!
//! Peak RSS is `VmHWM` from /proc/self/status, reset (`/proc/self/clear_refs`) before each
//! backend's runs; it covers the whole process (runtime, store pool, slapd not included).

// Shared with the store benches, which allow unreachable_pub crate-wide; this one has no
// MariaDB case, so the MariaDB default goes unused here.
#[allow(unreachable_pub, dead_code)]
mod store_common;

use std::collections::HashMap;
use std::process::Command;
use std::time::{Duration, Instant};

use ralph_ldap::{LdapBackend, LdapConfig, SyncReport};
use ralph_store::{AnyStore, PoolConfig};

const FIRST_IMPORT_TARGET: Duration = Duration::from_secs(30);
const RESYNC_TARGET: Duration = Duration::from_secs(10);
const RSS_TARGET_KB: u64 = 64 * 1024;

struct Slapd {
    env: HashMap<String, String>,
    private: Option<tempfile::TempDir>,
}

impl Slapd {
    fn get(users: usize) -> Self {
        let shared = std::env::var("RALPH_TEST_LDAP_BULK_USERS").ok().and_then(|n| n.parse::<usize>().ok());
        if std::env::var("RALPH_TEST_LDAP_URL").is_ok() && shared.is_some_and(|n| n >= users) {
            let env = ["URL", "BASE", "BIND_DN", "BIND_PASSWORD"]
                .iter()
                .map(|k| format!("RALPH_TEST_LDAP_{k}"))
                .map(|k| (k.clone(), std::env::var(&k).unwrap_or_default()))
                .collect();
            return Self { env, private: None };
        }
        println!("starting a private slapd with {users} bulk users (scripts/services/slapd/up.sh)...");
        let started = Instant::now();
        let dir = tempfile::tempdir().expect("run dir");
        let script = format!("{}/../scripts/services/slapd/up.sh", env!("CARGO_MANIFEST_DIR"));
        let out = Command::new("bash")
            .arg(script)
            .env("RALPH_TEST_RUN_DIR", dir.path())
            .env("RALPH_TEST_LDAP_BULK_USERS", users.to_string())
            .output()
            .expect("up.sh");
        // The guard first: a failed start is cleaned up by down.sh in Drop.
        let mut slapd = Self { env: HashMap::new(), private: Some(dir) };
        assert!(out.status.success(), "up.sh failed: {}", String::from_utf8_lossy(&out.stderr));
        slapd.env = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.strip_prefix("export "))
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.trim_matches('"').to_owned()))
            .collect();
        println!("slapd ready in {:.1} s", started.elapsed().as_secs_f64());
        slapd
    }

    fn var(&self, k: &str) -> &str {
        self.env.get(&format!("RALPH_TEST_LDAP_{k}")).map_or("", String::as_str)
    }
}

impl Drop for Slapd {
    fn drop(&mut self) {
        if let Some(dir) = &self.private {
            let script = format!("{}/../scripts/services/slapd/down.sh", env!("CARGO_MANIFEST_DIR"));
            let _ = Command::new("bash").arg(script).env("RALPH_TEST_RUN_DIR", dir.path()).status();
        }
    }
}

fn config(s: &Slapd, page_size: u32) -> LdapConfig {
    let b = s.var("BASE");
    let text = format!(
        r#"
server_uris = ["{url}"]
bind_dn = "{dn}"
bind_password = "{pw}"
username_attr = "sAMAccountName"
user_filter = "(memberOf=cn=ralph-users,ou=groups,{b})"
group_type = "member_of"
nested_groups = "recursive"
deny_group = "cn=_gr_ralph_banned,ou=groups,{b}"
page_size = {page_size}
operation_timeout_ms = 30000
[user_search]
base = "{b}"
filter = "(&(objectClass=*)(sAMAccountName=%(user)s))"
[profile_attr_map]
company = "company"
department = "department"
employee_id = "employeeID"
country = "ISO-country-code"
[group_mapping]
"cn=_gr_ralph,ou=groups,{b}" = "active"
"cn=_gr_ralph_staff,ou=groups,{b}" = "staff"
"cn=_gr_ralph_admin,ou=groups,{b}" = "superuser"
"cn=_gr_ralph_assets_staff,ou=groups,{b}" = "assets-staff"
"#,
        url = s.var("URL"),
        dn = s.var("BIND_DN"),
        pw = s.var("BIND_PASSWORD"),
    );
    LdapConfig::from_toml_str(&text).expect("bench config")
}

/// The process's peak resident set since the last reset, in kB.
fn peak_rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).map(str::to_owned))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

/// Resets the peak resident set to the current one (Linux `clear_refs` 5).
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

/// A fresh store: a SQLite file, or a new PostgreSQL database (dropped by `close`).
async fn fresh(backend: &str) -> Result<(AnyStore, Option<tempfile::TempDir>, Option<(String, String)>), String> {
    let pool = PoolConfig::default().max_connections(4);
    if backend == "sqlite" {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let url = format!("sqlite://{}", dir.path().join("sync.sqlite3").display());
        let store = AnyStore::connect_with(&url, &pool).await.map_err(|e| error_chain(&e))?;
        return Ok((store, Some(dir), None));
    }
    let var = ["RALPH_TEST_PG_ADMIN_URL", "RALPH_TEST_PG_URL"]
        .into_iter()
        .find(|v| std::env::var(v).is_ok())
        .ok_or("neither RALPH_TEST_PG_ADMIN_URL nor RALPH_TEST_PG_URL is set")?;
    let (url, admin, name) = store_common::fresh(var, store_common::PG_DEFAULT, "ldap_sync")
        .await
        .ok_or_else(|| format!("cannot create a database ({var})"))?;
    match AnyStore::connect_with(&url, &pool).await {
        Ok(store) => Ok((store, None, Some((admin, name)))),
        Err(e) => {
            store_common::drop_db(&admin, &name).await;
            Err(error_chain(&e))
        }
    }
}

struct Run {
    secs: f64,
    report: SyncReport,
}

async fn timed<S: ralph_core::UserStore>(backend: &LdapBackend<S>) -> Result<Run, String> {
    let started = Instant::now();
    let report = backend.sync().await.map_err(|e| error_chain(&e))?;
    Ok(Run { secs: started.elapsed().as_secs_f64(), report })
}

/// The first import and the re-sync into `store`, printed.
async fn measure<S: ralph_core::UserStore>(backend: &str, slapd: &Slapd, page: u32, users: usize, store: S) {
    reset_peak_rss();
    let ldap = LdapBackend::new(config(slapd, page), store).expect("backend");
    let mut runs = Vec::new();
    for (label, target) in [("first import", FIRST_IMPORT_TARGET), ("re-sync", RESYNC_TARGET)] {
        match timed(&ldap).await {
            Ok(run) => {
                row(backend, label, &run, Some(target));
                runs.push(run);
            }
            Err(e) => {
                println!("{backend:<12} {label:<12} FAILED: {e}");
                break;
            }
        }
    }
    if let [first, again] = &runs[..] {
        assert!(first.report.seen >= users, "the listing was cut short: {:?}", first.report);
        assert_eq!(again.report.created + again.report.updated, 0, "a re-sync wrote users: {:?}", again.report);
    }
}

/// Prints one run; `target` is the time to judge it by (none for the baseline).
fn row(backend: &str, label: &str, run: &Run, target: Option<Duration>) {
    let rss = peak_rss_kb();
    let r = &run.report;
    let verdict = match target {
        None => "baseline",
        Some(t) if run.secs <= t.as_secs_f64() && rss <= RSS_TARGET_KB => "ok",
        Some(_) => "OVER TARGET",
    };
    println!(
        "{:<12} {:<12} {:>8.2} {:>7} {:>8} {:>8} {:>9} {:>7} {:>10} {:>10.1}  {}",
        backend,
        label,
        run.secs,
        r.pages,
        r.seen,
        r.created,
        r.unchanged,
        r.active,
        r.users_per_sec,
        // kB to MB for the table.
        f64::from(u32::try_from(rss).unwrap_or(u32::MAX)) / 1024.0,
        verdict,
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let users: usize = std::env::var("LDAP_SYNC_USERS").ok().and_then(|v| v.parse().ok()).unwrap_or(50_000);
    let page: u32 = std::env::var("LDAP_SYNC_PAGE").ok().and_then(|v| v.parse().ok()).unwrap_or(1000);
    let backends: Vec<String> = std::env::var("LDAP_SYNC_BACKENDS")
        .unwrap_or_else(|_| "sqlite,postgres,memory".into())
        .split(',')
        .map(|s| s.trim().to_lowercase())
        .filter(|s| !s.is_empty())
        .collect();
    let slapd = Slapd::get(users);
    println!("\nldap_sync: {users} bulk users, page size {page}, service size limit 1,000");
    println!(
        "{:<12} {:<12} {:>8} {:>7} {:>8} {:>8} {:>9} {:>7} {:>10} {:>10}  verdict",
        "store", "run", "secs", "pages", "seen", "created", "unchanged", "active", "users/s", "peak MB"
    );
    for backend in &backends {
        if backend == "memory" {
            reset_peak_rss();
            let ldap =
                LdapBackend::new(config(&slapd, page), ralph_core::testing::MemoryStore::new()).expect("backend");
            for label in ["first import", "re-sync"] {
                match timed(&ldap).await {
                    Ok(run) => row(backend, label, &run, None),
                    Err(e) => println!("{backend:<12} {label:<12} FAILED: {e}"),
                }
            }
            continue;
        }
        let (store, dir, db) = match fresh(backend).await {
            Ok(fresh) => fresh,
            Err(e) => {
                println!("SKIPPED {backend}: {e}");
                continue;
            }
        };
        // The concrete store, not AnyStore: AnyStore does not forward UserStore::mirror_users
        // (yet), so through it every page would go through the trait's default, a mirror_user
        // per user.
        match &store {
            AnyStore::Sqlite(s) => measure(backend, &slapd, page, users, s.clone()).await,
            AnyStore::Postgres(s) => measure(backend, &slapd, page, users, s.clone()).await,
            _ => println!("SKIPPED {backend}: not a SQLite or PostgreSQL store"),
        }
        match &store {
            AnyStore::Sqlite(s) => s.pool().close().await,
            AnyStore::Postgres(s) => s.pool().close().await,
            _ => {}
        }
        if let Some((admin, name)) = &db {
            store_common::drop_db(admin, name).await;
        }
        drop(dir);
    }
    println!(
        "targets: first import <= {} s, re-sync <= {} s, peak RSS <= {} MB",
        FIRST_IMPORT_TARGET.as_secs(),
        RESYNC_TARGET.as_secs(),
        RSS_TARGET_KB / 1024
    );
}
