//! Logins per second through the full chain (LDAP search, user bind, groups, mirror into
//! SQLite) against the test slapd, at concurrency 1 and 32, with p50/p99 latency and the
//! TIME_WAIT sockets the run leaves behind; compared in the same run with a naive login that
//! opens a new connection per attempt.
//!
//! `cargo bench -p ralph-benches --bench ldap_login` (uses RALPH_TEST_LDAP_* when set, else
//! starts a private slapd with scripts/services/slapd/up.sh). `LDAP_BENCH_SECS` sets the
//! measuring time per case (default 5); `LDAP_BENCH_POOL` the pool size (default 8, the config
//! default); `LDAP_BENCH_CASES` / `LDAP_BENCH_CONCURRENCY` pick cases (see `main`).

use std::collections::HashMap;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ldap3::{LdapConnAsync, Scope};
use ralph_core::store::UserMirror;
use ralph_core::{AuthChain, Credentials, Group, LocalBackend, User, UserSource, UserStore};
use ralph_ldap::{LdapBackend, LdapConfig};
use ralph_store::SqliteStore;

const USERS: usize = 1000;

struct Slapd {
    env: HashMap<String, String>,
    private: Option<tempfile::TempDir>,
}

impl Slapd {
    fn get() -> Self {
        let keys = ["URL", "BASE", "BIND_DN", "BIND_PASSWORD"];
        if std::env::var("RALPH_TEST_LDAP_URL").is_ok() {
            let env = keys
                .iter()
                .map(|k| format!("RALPH_TEST_LDAP_{k}"))
                .map(|k| (k.clone(), std::env::var(&k).unwrap_or_default()))
                .collect();
            return Self { env, private: None };
        }
        let dir = tempfile::tempdir().expect("run dir");
        let script = format!("{}/../scripts/services/slapd/up.sh", env!("CARGO_MANIFEST_DIR"));
        let out = Command::new("bash")
            .arg(script)
            .env("RALPH_TEST_RUN_DIR", dir.path())
            .env("RALPH_TEST_LDAP_BULK_USERS", USERS.to_string())
            .output()
            .expect("up.sh");
        assert!(out.status.success(), "up.sh failed: {}", String::from_utf8_lossy(&out.stderr));
        let env = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.strip_prefix("export "))
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.trim_matches('"').to_owned()))
            .collect();
        Self { env, private: Some(dir) }
    }

    fn var(&self, k: &str) -> &str {
        self.env.get(&format!("RALPH_TEST_LDAP_{k}")).map_or("", String::as_str)
    }

    fn port(&self) -> u16 {
        self.var("URL").rsplit(':').next().and_then(|p| p.parse().ok()).unwrap_or(0)
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

fn config(s: &Slapd, pool: usize) -> LdapConfig {
    let b = s.var("BASE");
    let text = format!(
        r#"
server_uris = ["{url}"]
bind_dn = "{dn}"
bind_password = "{pw}"
username_attr = "sAMAccountName"
user_filter = "(memberOf=cn=ralph-users,ou=groups,{b})"
nested_groups = "recursive"
pool_size = {pool}
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
"#,
        url = s.var("URL"),
        dn = s.var("BIND_DN"),
        pw = s.var("BIND_PASSWORD"),
    );
    LdapConfig::from_toml_str(&text).expect("bench config")
}

/// Sockets in TIME_WAIT to or from `port` (IPv4 and IPv6).
fn time_wait(port: u16) -> usize {
    let hex = format!(":{port:04X}");
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .flat_map(|t| t.lines().skip(1).map(str::to_owned).collect::<Vec<_>>())
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 3 && f[3] == "06" && (f[1].ends_with(&hex) || f[2].ends_with(&hex))
        })
        .count()
}

fn user(i: usize) -> (String, String) {
    let u = format!("bulk{i:05}");
    let p = format!("pw-{u}");
    (u, p)
}

struct Figures {
    logins: usize,
    secs: f64,
    p50: Duration,
    p99: Duration,
    time_wait: isize,
    errors: usize,
}

impl Figures {
    fn print(&self, name: &str, concurrency: usize) {
        println!(
            "{name:<28} c={concurrency:<3} {:>9.0} logins/s  p50 {:>8.3} ms  p99 {:>8.3} ms  TIME_WAIT {:<+6} ({} logins, {} errors)",
            self.logins as f64 / self.secs,
            self.p50.as_secs_f64() * 1e3,
            self.p99.as_secs_f64() * 1e3,
            self.time_wait,
            self.logins,
            self.errors,
        );
    }
}

/// Runs `login` from `concurrency` tasks for `secs`, each task cycling through the users.
async fn run<F, Fut>(port: u16, concurrency: usize, secs: f64, login: F) -> Figures
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let login = Arc::new(login);
    let before = time_wait(port);
    let started = Instant::now();
    let until = started + Duration::from_secs_f64(secs);
    let mut tasks = Vec::new();
    for t in 0..concurrency {
        let login = Arc::clone(&login);
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut errors = 0;
            let mut i = t * 7919;
            while Instant::now() < until {
                let s = Instant::now();
                if !login(i % USERS).await {
                    errors += 1;
                }
                lat.push(s.elapsed());
                i += 1;
            }
            (lat, errors)
        }));
    }
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (lat, e) = t.await.expect("task");
        all.extend(lat);
        errors += e;
    }
    let secs = started.elapsed().as_secs_f64();
    let after = time_wait(port);
    all.sort();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1))).copied().unwrap_or_default()
    };
    Figures {
        logins: all.len(),
        secs,
        p50: pct(0.50),
        p99: pct(0.99),
        time_wait: after as isize - before as isize,
        errors,
    }
}

/// The naive way: a new connection per login, service bind, search, user bind on the same
/// connection, groups from memberOf, mirror into the same store.
async fn naive_login(s: Arc<(String, String, String, String)>, store: SqliteStore, i: usize) -> bool {
    let (url, base, bind_dn, bind_pw) = &*s;
    let (name, pw) = user(i);
    let Ok((conn, mut ldap)) = LdapConnAsync::new(url).await else { return false };
    ldap3::drive!(conn);
    let ok = async {
        ldap.simple_bind(bind_dn, bind_pw).await.ok()?.success().ok()?;
        let filter =
            format!("(&(sAMAccountName={})(memberOf=cn=ralph-users,ou=groups,{base}))", ldap3::ldap_escape(&name));
        let (entries, _) = ldap
            .search(base, Scope::Subtree, &filter, vec!["givenName", "sn", "mail", "memberOf"])
            .await
            .ok()?
            .success()
            .ok()?;
        let entry = ldap3::SearchEntry::construct(entries.into_iter().next()?);
        ldap.simple_bind(&entry.dn, &pw).await.ok()?.success().ok()?;
        let active = entry.attrs.get("memberOf")?.iter().any(|g| g.starts_with("cn=_gr_ralph,"));
        let mut u = User::new(&name).ok()?;
        u.source = UserSource::Ldap;
        u.is_active = active;
        let groups: Vec<Group> = if active { vec![Group::new("active").ok()?] } else { Vec::new() };
        store.mirror_user(&UserMirror { user: u, profile: None, groups: Some(groups) }).await.ok()?;
        Some(())
    }
    .await
    .is_some();
    let _ = ldap.unbind().await;
    ok
}

fn main() {
    let secs: f64 = std::env::var("LDAP_BENCH_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(5.0);
    // LDAP_BENCH_CASES=store,pooled,uncached,floor,naive and LDAP_BENCH_CONCURRENCY=1,32 pick cases.
    let cases = std::env::var("LDAP_BENCH_CASES").unwrap_or_else(|_| "store,pooled,uncached,floor,naive".into());
    let wanted = |case: &str| cases.split(',').any(|c| c.trim() == case);
    let levels: Vec<usize> = std::env::var("LDAP_BENCH_CONCURRENCY")
        .unwrap_or_else(|_| "1,32".into())
        .split(',')
        .filter_map(|c| c.trim().parse().ok())
        .collect();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    let slapd = Slapd::get();
    let port = slapd.port();
    rt.block_on(async {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}", dir.path().join("bench.sqlite3").display());
        let store = SqliteStore::connect(&url).await.expect("sqlite");
        println!("ldap_login: slapd on port {port}, {USERS} users, {secs} s per case, store {url}");
        println!("targets: pooled >= 4000 logins/s at c=1, >= 8000 at c=32, p99 < 5 ms, TIME_WAIT growth <= pool size");
        println!("(TIME_WAIT counts sockets to/from slapd's port at the end minus at the start of a case; negative:");
        println!(" sockets left by an earlier case expired meanwhile)");

        // The store's share: the same mirror write alone, as a ceiling for the chain.
        for concurrency in levels.iter().copied().filter(|_| wanted("store")) {
            let st = store.clone();
            let figures = run(port, concurrency, secs.min(2.0), move |i| {
                let st = st.clone();
                async move {
                    let (name, _) = user(i);
                    let Ok(mut u) = User::new(&name) else { return false };
                    u.source = UserSource::Ldap;
                    let groups = Group::new("active").ok().into_iter().collect();
                    st.mirror_user(&UserMirror { user: u, profile: None, groups: Some(groups) }).await.is_ok()
                }
            })
            .await;
            figures.print("store mirror_user alone", concurrency);
        }

        for concurrency in levels.iter().copied() {
            let pool = std::env::var("LDAP_BENCH_POOL").ok().and_then(|p| p.parse().ok()).unwrap_or(8);
            let backend = LdapBackend::new(config(&slapd, pool), store.clone()).expect("backend");
            let chain =
                Arc::new(AuthChain::new().with(Arc::new(backend)).with(Arc::new(LocalBackend::new(store.clone()))));
            // Warm-up: fill the pools and the group cache, mirror every user once.
            for i in 0..USERS {
                let (u, p) = user(i);
                chain.authenticate(&Credentials::new(u, p)).await.expect("warm-up login");
            }
            let c = Arc::clone(&chain);
            if wanted("pooled") {
                let figures = run(port, concurrency, secs, move |i| {
                    let c = Arc::clone(&c);
                    async move {
                        let (u, p) = user(i);
                        c.authenticate(&Credentials::new(u, p)).await.is_ok()
                    }
                })
                .await;
                figures.print(&format!("pooled chain (pool {pool})"), concurrency);
            }
            if wanted("uncached") {
                // The same with the cache off (TTL 0): every login resolves nested groups in the
                // directory and writes the store.
                let mut uncached = config(&slapd, pool);
                uncached.cache_ttl_secs = 0;
                let backend = LdapBackend::new(uncached, store.clone()).expect("backend");
                let c =
                    Arc::new(AuthChain::new().with(Arc::new(backend)).with(Arc::new(LocalBackend::new(store.clone()))));
                let figures = run(port, concurrency, secs, move |i| {
                    let c = Arc::clone(&c);
                    async move {
                        let (u, p) = user(i);
                        c.authenticate(&Credentials::new(u, p)).await.is_ok()
                    }
                })
                .await;
                figures.print("pooled chain, cache off", concurrency);
            }
            if wanted("floor") && concurrency == 1 {
                // The floor of a login: one LDAP round trip (a bind on an open connection); a
                // login needs two (search, then bind as the user).
                let (conn, ldap) = LdapConnAsync::new(slapd.var("URL")).await.expect("connect");
                ldap3::drive!(conn);
                let creds = Arc::new((slapd.var("BIND_DN").to_owned(), slapd.var("BIND_PASSWORD").to_owned()));
                let figures = run(port, 1, secs, move |_| {
                    let mut ldap = ldap.clone();
                    let creds = Arc::clone(&creds);
                    async move { ldap.simple_bind(&creds.0, &creds.1).await.is_ok_and(|r| r.rc == 0) }
                })
                .await;
                figures.print("floor: one bind round trip", 1);
            }
            if !wanted("naive") {
                continue;
            }

            let shared = Arc::new((
                slapd.var("URL").to_owned(),
                slapd.var("BASE").to_owned(),
                slapd.var("BIND_DN").to_owned(),
                slapd.var("BIND_PASSWORD").to_owned(),
            ));
            let st = store.clone();
            let figures = run(port, concurrency, secs, move |i| naive_login(Arc::clone(&shared), st.clone(), i)).await;
            figures.print("naive (connection per login)", concurrency);
            // Let TIME_WAIT from the naive run not count against the next pooled run.
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
}
