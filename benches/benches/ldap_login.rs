//! Logins per second through the full chain (LDAP search, user bind, nested groups, mirror
//! into the store) against the test slapd, per store backend (a SQLite file, PostgreSQL,
//! MariaDB), with the group cache off (`cache_ttl_secs = 0`: every login a real one) and on,
//! at concurrency 1 and 32; p50/p99 latency, failed logins and the TIME_WAIT sockets each case
//! leaves behind. Compared in the same run with a naive login (a new LDAP connection per
//! attempt) and, when Debian's python3-django-auth-ldap is installed, with django-auth-ldap
//! itself (`benches/peer/django_ldap_login.py`, c=1, the tool Ralph used).
//!
//! No warm-up: each case starts from a fresh, empty store and a new backend (empty group
//! cache, no open connection), and logins cycle over the 1,000 active bulk users. The first
//! pass over them therefore creates every user in the store and, cache on, fills the group
//! cache; later passes find the user unchanged and, cache on, the groups cached. The whole run,
//! the first pass and the later passes are reported apart; targets are judged on the whole
//! run. A case runs until `LDAP_BENCH_SECS` have passed and `LDAP_BENCH_PASSES` passes are done.
//!
//! `cargo bench -p ralph-benches --bench ldap_login` (uses RALPH_TEST_LDAP_* when set, else
//! starts a private slapd with scripts/services/slapd/up.sh). Knobs:
//! - `LDAP_BENCH_SECS` measuring time per case (default 5), `LDAP_BENCH_PASSES` least passes
//!   over the users per case (default 2: the first pass and one more);
//! - `LDAP_BENCH_BACKENDS=sqlite,postgres,mysql` (default all; PostgreSQL and MariaDB need
//!   `RALPH_TEST_PG_ADMIN_URL` or `RALPH_TEST_PG_URL`, `RALPH_TEST_MYSQL_ADMIN_URL` or
//!   `RALPH_TEST_MYSQL_URL`, else they are skipped with the reason; each case gets a fresh
//!   database there, dropped after it);
//! - `LDAP_BENCH_CASES=off,on,store,naive,floor,peer` (default all; `uncached` / `pooled` are
//!   the old names of `off` / `on`), `LDAP_BENCH_CONCURRENCY=1,32`;
//! - `LDAP_BENCH_POOL` LDAP pool size per pool (default 8, the config default),
//!   `LDAP_BENCH_STORE_POOL` store pool size (default 32, enough for c=32);
//! - `LDAP_BENCH_PYTHON` the interpreter for the peer (default /usr/bin/python3).

#[allow(unreachable_pub)] // shared with the store benches, which allow it crate-wide
mod store_common;

use std::collections::HashMap;
use std::future::Future;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use ldap3::{LdapConnAsync, Scope};
use ralph_core::store::UserMirror;
use ralph_core::{AuthBackend, AuthChain, Credentials, Group, LocalBackend, User, UserSource, UserStore};
use ralph_ldap::{LdapBackend, LdapConfig};
use ralph_store::{AnyStore, PoolConfig};

/// The bulk users in `_gr_ralph` (active): `bulk00000` .. `bulk00999`.
const USERS: usize = 1000;
/// Error messages kept per case.
const KEEP_ERRORS: usize = 5;

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

fn config(s: &Slapd, pool: usize, cache_ttl_secs: u64) -> LdapConfig {
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
cache_ttl_secs = {cache_ttl_secs}
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

fn user(i: usize) -> (String, String) {
    let u = format!("bulk{i:05}");
    let p = format!("pw-{u}");
    (u, p)
}

/// An error with its causes, one level after another.
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

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok()).unwrap_or(default)
}

struct Knobs {
    secs: f64,
    passes: usize,
    ldap_pool: usize,
    store_pool: u32,
    cases: String,
    levels: Vec<usize>,
    backends: Vec<Backend>,
    python: String,
}

impl Knobs {
    fn from_env() -> Self {
        let list = |name: &str, default: &str| std::env::var(name).unwrap_or_else(|_| default.to_owned());
        let backends = list("LDAP_BENCH_BACKENDS", "sqlite,postgres,mysql");
        Self {
            secs: env_or("LDAP_BENCH_SECS", 5.0),
            passes: env_or("LDAP_BENCH_PASSES", 2usize).max(1),
            ldap_pool: env_or("LDAP_BENCH_POOL", 8),
            store_pool: env_or("LDAP_BENCH_STORE_POOL", 32),
            cases: list("LDAP_BENCH_CASES", "off,on,store,naive,floor,peer"),
            levels: list("LDAP_BENCH_CONCURRENCY", "1,32").split(',').filter_map(|c| c.trim().parse().ok()).collect(),
            backends: Backend::ALL
                .into_iter()
                .filter(|b| backends.split(',').any(|n| b.names().contains(&n.trim())))
                .collect(),
            python: list("LDAP_BENCH_PYTHON", "/usr/bin/python3"),
        }
    }

    fn wanted(&self, case: &str, old_name: &str) -> bool {
        self.cases.split(',').map(str::trim).any(|c| c == case || c == old_name)
    }

    fn min_logins(&self) -> usize {
        self.passes * USERS
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    Sqlite,
    Postgres,
    MySql,
}

impl Backend {
    const ALL: [Self; 3] = [Self::Sqlite, Self::Postgres, Self::MySql];

    fn names(self) -> &'static [&'static str] {
        match self {
            Self::Sqlite => &["sqlite"],
            Self::Postgres => &["postgres", "pg", "postgresql"],
            Self::MySql => &["mysql", "mariadb"],
        }
    }

    fn label(self) -> &'static str {
        match self {
            Self::Sqlite => "SQLite file",
            Self::Postgres => "PostgreSQL",
            Self::MySql => "MariaDB",
        }
    }

    /// The variables naming a server to create databases on, the admin URL first.
    fn vars(self) -> &'static [&'static str] {
        match self {
            Self::Sqlite => &[],
            Self::Postgres => &["RALPH_TEST_PG_ADMIN_URL", "RALPH_TEST_PG_URL"],
            Self::MySql => &["RALPH_TEST_MYSQL_ADMIN_URL", "RALPH_TEST_MYSQL_URL"],
        }
    }

    /// Why this backend cannot run here, if it cannot.
    fn missing(self) -> Option<String> {
        let vars = self.vars();
        let absent = !vars.is_empty() && !vars.iter().any(|v| std::env::var(v).is_ok());
        absent.then(|| format!("neither {} is set", vars.join(" nor ")))
    }
}

/// A fresh, empty store for one case, and what to remove after it.
struct Fresh {
    store: AnyStore,
    _dir: Option<tempfile::TempDir>,
    db: Option<(String, String)>,
}

impl Fresh {
    async fn new(backend: Backend, tag: &str, pool: u32) -> Result<Self, String> {
        let config = PoolConfig::default().max_connections(pool);
        if backend == Backend::Sqlite {
            // A real file (WAL, synchronous=NORMAL as the store sets them), not :memory:.
            let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
            let url = format!("sqlite://{}", dir.path().join("bench.sqlite3").display());
            let store = AnyStore::connect_with(&url, &config).await.map_err(|e| error_chain(&e))?;
            return Ok(Self { store, _dir: Some(dir), db: None });
        }
        let var = backend.vars().iter().find(|v| std::env::var(v).is_ok()).ok_or("no server URL")?;
        let default = if backend == Backend::Postgres { store_common::PG_DEFAULT } else { store_common::MYSQL_DEFAULT };
        let (url, admin, name) =
            store_common::fresh(var, default, tag).await.ok_or_else(|| format!("cannot create a database ({var})"))?;
        match AnyStore::connect_with(&url, &config).await {
            Ok(store) => Ok(Self { store, _dir: None, db: Some((admin, name)) }),
            Err(e) => {
                store_common::drop_db(&admin, &name).await;
                Err(error_chain(&e))
            }
        }
    }

    async fn close(self) {
        match &self.store {
            AnyStore::Sqlite(s) => s.pool().close().await,
            AnyStore::Postgres(s) => s.pool().close().await,
            AnyStore::MySql(s) => s.pool().close().await,
            _ => {}
        }
        if let Some((admin, name)) = &self.db {
            store_common::drop_db(admin, name).await;
        }
    }

    /// LDAP-owned users in the store: after a case, every user the run reached.
    async fn ldap_users(&self) -> String {
        match self.store.list_users(Some(UserSource::Ldap)).await {
            Ok(users) => users.len().to_string(),
            Err(e) => format!("? ({})", error_chain(&e)),
        }
    }
}

/// Rate and latency of a part of a run.
#[derive(Default)]
struct Part {
    logins: usize,
    rate: f64,
    p50: Duration,
    p99: Duration,
}

impl Part {
    /// Latencies of the part's logins; its rate is `done` logins completed in `secs`.
    fn new(mut lat: Vec<Duration>, done: usize, secs: f64) -> Self {
        lat.sort_unstable();
        let pct = |p: f64| {
            #[allow(clippy::cast_precision_loss, clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let i = (lat.len() as f64 * p) as usize;
            lat.get(i.min(lat.len().saturating_sub(1))).copied().unwrap_or_default()
        };
        #[allow(clippy::cast_precision_loss)]
        let rate = if secs > 0.0 { done as f64 / secs } else { 0.0 };
        Self { logins: lat.len(), rate, p50: pct(0.50), p99: pct(0.99) }
    }

    fn cells(&self) -> String {
        if self.logins == 0 {
            return format!("{:>9} {:>7} {:>7}", "-", "-", "-");
        }
        format!("{:>9.0} {:>7.2} {:>7.2}", self.rate, ms(self.p50), ms(self.p99))
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

struct Figures {
    whole: Part,
    /// Latency: logins 0..USERS, each user's first of the case (creates it in the store).
    /// Rate: logins completed until the last of those was started, over that time.
    first: Part,
    /// Latency: every later login. Rate: logins completed after that moment, over the rest
    /// of the run (a straggler of the first pass counts here; at most c-1 of them).
    later: Part,
    failed: usize,
    errors: Vec<String>,
    time_wait: isize,
}

struct Sample {
    n: usize,
    start: Duration,
    end: Duration,
    lat: Duration,
}

/// Runs `login` from `concurrency` tasks sharing one counter, so login `n` is user
/// `n % USERS` and logins `0..USERS` are each user's first; stops claiming once `secs` have
/// passed and `min_logins` were claimed.
async fn run<F, Fut>(port: u16, concurrency: usize, secs: f64, min_logins: usize, login: F) -> Figures
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), String>> + Send,
{
    let login = Arc::new(login);
    let next = Arc::new(AtomicUsize::new(0));
    let before = ralph_testkit::time_wait_on_port(port);
    let started = Instant::now();
    let until = started + Duration::from_secs_f64(secs);
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let login = Arc::clone(&login);
        let next = Arc::clone(&next);
        tasks.push(tokio::spawn(async move {
            let mut samples = Vec::new();
            let (mut failed, mut errors) = (0, Vec::new());
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= min_logins && Instant::now() >= until {
                    break;
                }
                let s = Instant::now();
                let result = login(n % USERS).await;
                let end = Instant::now();
                if let Err(e) = result {
                    failed += 1;
                    if errors.len() < KEEP_ERRORS {
                        errors.push(format!("{}: {e}", user(n % USERS).0));
                    }
                }
                samples.push(Sample { n, start: s - started, end: end - started, lat: end - s });
            }
            (samples, failed, errors)
        }));
    }
    let (mut samples, mut failed, mut errors) = (Vec::new(), 0, Vec::new());
    for t in tasks {
        let (s, f, e) = t.await.expect("login task");
        samples.extend(s);
        failed += f;
        errors.extend(e);
    }
    let after = ralph_testkit::time_wait_on_port(port);
    errors.truncate(KEEP_ERRORS);
    let end = samples.iter().map(|s| s.end).max().unwrap_or_default();
    // The first pass ends, for rates, when the last first login was started: from then on
    // every task is on a later pass. Ending it at the last first login's completion instead
    // lets one slow straggler swallow the later passes.
    let split = samples.iter().filter(|s| s.n >= USERS).map(|s| s.start).min().unwrap_or(end);
    let lat = |keep: &dyn Fn(&Sample) -> bool| samples.iter().filter(|s| keep(s)).map(|s| s.lat).collect::<Vec<_>>();
    let done_by_split = samples.iter().filter(|s| s.end <= split).count();
    Figures {
        whole: Part::new(lat(&|_| true), samples.len(), end.as_secs_f64()),
        first: Part::new(lat(&|s| s.n < USERS), done_by_split, split.as_secs_f64()),
        later: Part::new(lat(&|s| s.n >= USERS), samples.len() - done_by_split, (end - split).as_secs_f64()),
        failed,
        errors,
        #[allow(clippy::cast_possible_wrap)]
        time_wait: after as isize - before as isize,
    }
}

/// An issue target for the whole run: logins/s at least, p99 at most.
#[derive(Clone, Copy)]
struct Target {
    rate: f64,
    p99_ms: Option<f64>,
}

fn target(backend: Backend, cache_on: bool, concurrency: usize) -> Option<Target> {
    match (cache_on, concurrency, backend) {
        (false, 1, Backend::Sqlite) => Some(Target { rate: 1500.0, p99_ms: None }),
        (false, 32, _) => Some(Target { rate: 2500.0, p99_ms: Some(40.0) }),
        (true, 1, _) => Some(Target { rate: 3000.0, p99_ms: None }),
        (true, 32, _) => Some(Target { rate: 6000.0, p99_ms: None }),
        _ => None,
    }
}

/// The table, printed a row at a time, and the verdicts for the closing summary.
#[derive(Default)]
struct Table {
    missed: Vec<String>,
    met: usize,
}

impl Table {
    fn header(title: &str) {
        println!();
        println!("{title}");
        println!(
            "{:<22} {:<5} {:>3} | {:^25} | {:^25} | {:^25} | {:>6} {:>6} {:>5} {:>6} | target (whole run)",
            "backend",
            "cache",
            "c",
            "whole run",
            "first pass (creates)",
            "later passes",
            "logins",
            "failed",
            "users",
            "TIME_W",
        );
        let sub = format!("{:>9} {:>7} {:>7}", "logins/s", "p50 ms", "p99 ms");
        println!("{:<22} {:<5} {:>3} | {sub} | {sub} | {sub} |", "", "", "");
    }

    fn row(&mut self, name: &str, cache: &str, concurrency: usize, f: &Figures, users: &str, target: Option<Target>) {
        let verdict = target.map_or_else(|| "-".to_owned(), |t| self.judge(name, cache, concurrency, f, t));
        println!(
            "{name:<22} {cache:<5} {concurrency:>3} | {} | {} | {} | {:>6} {:>6} {users:>5} {:>+6} | {verdict}",
            f.whole.cells(),
            f.first.cells(),
            f.later.cells(),
            f.whole.logins,
            f.failed,
            f.time_wait,
        );
        for e in &f.errors {
            println!("    error: {e}");
        }
    }

    fn judge(&mut self, name: &str, cache: &str, concurrency: usize, f: &Figures, t: Target) -> String {
        let mut parts = Vec::new();
        let mut ok = f.failed == 0;
        let rate_ok = f.whole.rate >= t.rate;
        ok &= rate_ok;
        parts.push(format!(">= {:.0}/s {}", t.rate, if rate_ok { "met" } else { "MISSED" }));
        if let Some(p99) = t.p99_ms {
            let p99_ok = ms(f.whole.p99) <= p99;
            ok &= p99_ok;
            parts.push(format!("p99 <= {p99:.0} ms {}", if p99_ok { "met" } else { "MISSED" }));
        }
        if f.failed > 0 {
            parts.push("failed logins MISSED".to_owned());
        }
        if ok {
            self.met += 1;
        } else {
            self.missed.push(format!("{name} cache {cache} c={concurrency}: {}", parts.join(", ")));
        }
        parts.join(", ")
    }
}

type Login = std::pin::Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;

/// One login through the chain (LDAP, then local); only an LDAP login counts as a success.
fn chain_login(chain: Arc<AuthChain>, ldap: Arc<str>) -> impl Fn(usize) -> Login + Send + Sync + 'static {
    move |i| {
        let (chain, ldap) = (Arc::clone(&chain), Arc::clone(&ldap));
        Box::pin(async move {
            let (u, p) = user(i);
            match chain.authenticate(&Credentials::new(u, p)).await {
                Ok(login) if *login.backend == *ldap => Ok(()),
                Ok(login) => Err(format!("accepted by {}, not by LDAP", login.backend)),
                Err(e) => Err(error_chain(&e)),
            }
        })
    }
}

struct Directory {
    url: String,
    base: String,
    bind_dn: String,
    bind_pw: String,
}

/// The naive way: a new connection per login, service bind, search, user bind on the same
/// connection, groups from memberOf (not nested), mirror into the same store.
async fn naive_login(d: Arc<Directory>, store: AnyStore, i: usize) -> Result<(), String> {
    let (name, pw) = user(i);
    let (conn, mut ldap) = LdapConnAsync::new(&d.url).await.map_err(|e| format!("connect: {e}"))?;
    ldap3::drive!(conn);
    let result = async {
        ldap.simple_bind(&d.bind_dn, &d.bind_pw).await.and_then(|r| r.success()).map_err(|e| format!("bind: {e}"))?;
        let filter =
            format!("(&(sAMAccountName={})(memberOf=cn=ralph-users,ou=groups,{}))", ldap3::ldap_escape(&name), d.base);
        let (entries, _) = ldap
            .search(&d.base, Scope::Subtree, &filter, vec!["givenName", "sn", "mail", "memberOf"])
            .await
            .and_then(|r| r.success())
            .map_err(|e| format!("search: {e}"))?;
        let entry = ldap3::SearchEntry::construct(entries.into_iter().next().ok_or("not found")?);
        ldap.simple_bind(&entry.dn, &pw).await.and_then(|r| r.success()).map_err(|e| format!("user bind: {e}"))?;
        let active = entry.attrs.get("memberOf").is_some_and(|g| g.iter().any(|g| g.starts_with("cn=_gr_ralph,")));
        let mut u = User::new(&name).map_err(|e| e.to_string())?;
        u.source = UserSource::Ldap;
        u.is_active = active;
        let groups = if active { vec![Group::new("active").map_err(|e| e.to_string())?] } else { Vec::new() };
        store
            .mirror_user(&UserMirror { user: u, profile: None, groups: Some(groups), group_scope: Default::default() })
            .await
            .map_err(|e| error_chain(&e))?;
        if active { Ok(()) } else { Err("not in the active group".to_owned()) }
    }
    .await;
    let _ = ldap.unbind().await;
    result
}

/// The store's share of a login: the same kind of mirror write alone.
async fn mirror_alone(store: AnyStore, i: usize) -> Result<(), String> {
    let (name, _) = user(i);
    let mut u = User::new(&name).map_err(|e| e.to_string())?;
    u.source = UserSource::Ldap;
    let groups = vec![Group::new("active").map_err(|e| e.to_string())?];
    store
        .mirror_user(&UserMirror { user: u, profile: None, groups: Some(groups), group_scope: Default::default() })
        .await
        .map(drop)
        .map_err(|e| error_chain(&e))
}

/// django-auth-ldap at c=1 in a child process, figures read from its one JSON line.
/// Returns the figures, the users stored and a note on versions and what was stored.
fn peer(slapd: &Slapd, knobs: &Knobs, cache_ttl_secs: u64) -> Result<(Figures, String, String), String> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/peer/django_ldap_login.py");
    let before = ralph_testkit::time_wait_on_port(slapd.port());
    let out = Command::new(&knobs.python)
        .arg(script)
        .envs(&slapd.env)
        .env("PEER_USERS", USERS.to_string())
        .env("PEER_SECS", knobs.secs.to_string())
        .env("PEER_MIN_LOGINS", knobs.min_logins().to_string())
        .env("PEER_CACHE_TTL", cache_ttl_secs.to_string())
        .output()
        .map_err(|e| format!("{}: {e}", knobs.python))?;
    let after = ralph_testkit::time_wait_on_port(slapd.port());
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).lines().last().unwrap_or("failed").to_owned());
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let v: serde_json::Value =
        serde_json::from_str(stdout.lines().last().unwrap_or_default()).map_err(|e| format!("peer output: {e}"))?;
    let f = |k: &str| v[k].as_f64().unwrap_or_default();
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let n = |k: &str| v[k].as_u64().unwrap_or_default() as usize;
    let part = |logins: usize, secs: f64, p50: &str, p99: &str| Part {
        logins,
        #[allow(clippy::cast_precision_loss)]
        rate: if secs > 0.0 { logins as f64 / secs } else { 0.0 },
        p50: Duration::from_secs_f64(f(p50)),
        p99: Duration::from_secs_f64(f(p99)),
    };
    let figures = Figures {
        whole: part(n("logins"), f("secs"), "p50", "p99"),
        first: part(n("cold"), f("cold_secs"), "cold_p50", "cold_p99"),
        later: part(n("warm"), f("warm_secs"), "warm_p50", "warm_p99"),
        failed: n("failed"),
        errors: v["errors"].as_array().into_iter().flatten().filter_map(|e| e.as_str().map(str::to_owned)).collect(),
        #[allow(clippy::cast_possible_wrap)]
        time_wait: after as isize - before as isize,
    };
    let note = format!(
        "{}; {} users, {} groups, {} memberships stored",
        v["versions"].as_str().unwrap_or("?"),
        n("stored_users"),
        n("stored_groups"),
        n("memberships")
    );
    Ok((figures, n("stored_users").to_string(), note))
}

#[allow(clippy::too_many_lines)]
fn main() {
    let knobs = Knobs::from_env();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    let slapd = Slapd::get();
    let port = slapd.port();
    let mut table = Table::default();
    println!(
        "ldap_login: slapd on port {port}; users cycle over {USERS} (bulk00000..bulk00999); each case: a fresh empty \
         store, a new backend, no warm-up; at least {} s and {} passes ({} logins) per case",
        knobs.secs,
        knobs.passes,
        knobs.min_logins()
    );
    println!(
        "pools: LDAP {} connections per pool (service searches; user binds), store {} connections (LDAP_BENCH_POOL, \
         LDAP_BENCH_STORE_POOL); concurrency {:?} = tasks on a {}-thread runtime",
        knobs.ldap_pool,
        knobs.store_pool,
        knobs.levels,
        std::thread::available_parallelism().map_or(0, usize::from),
    );
    println!(
        "first pass: each user's first login of the case (creates the user; cache on: fills the group cache); later \
         passes: user unchanged in the store (cache on: groups from the cache). users = LDAP users in the store after \
         the case. TIME_WAIT: sockets to/from slapd at the end minus the start of a case (negative: an earlier case's \
         expired)."
    );
    let mut backends = Vec::new();
    for b in &knobs.backends {
        match b.missing() {
            Some(why) => println!("SKIPPED {}: {why}", b.label()),
            None => backends.push(*b),
        }
    }

    rt.block_on(async {
        for (cache_on, key, old, title) in [
            (false, "off", "uncached", "Full chain, group cache OFF (cache_ttl_secs = 0: every login searches, binds, resolves nested groups, mirrors)"),
            (true, "on", "pooled", "Full chain, group cache ON (cache_ttl_secs = 1200, empty at the start: the first pass fills it)"),
        ] {
            if !knobs.wanted(key, old) {
                continue;
            }
            Table::header(title);
            for backend in &backends {
                for &c in &knobs.levels {
                    let tag = format!("login_{}_{key}_c{c}", backend.names()[0]);
                    let fresh = match Fresh::new(*backend, &tag, knobs.store_pool).await {
                        Ok(f) => f,
                        Err(e) => {
                            println!("SKIPPED {} cache {key} c={c}: {e}", backend.label());
                            continue;
                        }
                    };
                    let config = config(&slapd, knobs.ldap_pool, if cache_on { 1200 } else { 0 });
                    let ldap = LdapBackend::new(config, fresh.store.clone()).expect("backend");
                    let name: Arc<str> = Arc::from(ldap.name());
                    let chain = Arc::new(
                        AuthChain::new().with(Arc::new(ldap)).with(Arc::new(LocalBackend::new(fresh.store.clone()))),
                    );
                    let figures =
                        run(port, c, knobs.secs, knobs.min_logins(), chain_login(Arc::clone(&chain), name)).await;
                    drop(chain);
                    let users = fresh.ldap_users().await;
                    table.row(backend.label(), key, c, &figures, &users, target(*backend, cache_on, c));
                    fresh.close().await;
                }
            }
        }

        if knobs.wanted("store", "store") {
            Table::header("The store's share: mirror_user alone (same user cycle, fresh store; no LDAP)");
            for backend in &backends {
                for &c in &knobs.levels {
                    let tag = format!("login_{}_store_c{c}", backend.names()[0]);
                    let fresh = match Fresh::new(*backend, &tag, knobs.store_pool).await {
                        Ok(f) => f,
                        Err(e) => {
                            println!("SKIPPED {} store c={c}: {e}", backend.label());
                            continue;
                        }
                    };
                    let st = fresh.store.clone();
                    let figures = run(port, c, knobs.secs.min(2.0), knobs.min_logins(), move |i| {
                        mirror_alone(st.clone(), i)
                    })
                    .await;
                    let users = fresh.ldap_users().await;
                    table.row(backend.label(), "-", c, &figures, &users, None);
                    fresh.close().await;
                }
            }
        }

        if knobs.wanted("naive", "naive") {
            Table::header("Baseline: naive login (new LDAP connection per login, memberOf only, mirror into the store)");
            let directory = Arc::new(Directory {
                url: slapd.var("URL").to_owned(),
                base: slapd.var("BASE").to_owned(),
                bind_dn: slapd.var("BIND_DN").to_owned(),
                bind_pw: slapd.var("BIND_PASSWORD").to_owned(),
            });
            for backend in &backends {
                for &c in &knobs.levels {
                    let tag = format!("login_{}_naive_c{c}", backend.names()[0]);
                    let fresh = match Fresh::new(*backend, &tag, knobs.store_pool).await {
                        Ok(f) => f,
                        Err(e) => {
                            println!("SKIPPED {} naive c={c}: {e}", backend.label());
                            continue;
                        }
                    };
                    let (d, st) = (Arc::clone(&directory), fresh.store.clone());
                    let figures = run(port, c, knobs.secs, knobs.min_logins(), move |i| {
                        naive_login(Arc::clone(&d), st.clone(), i)
                    })
                    .await;
                    let users = fresh.ldap_users().await;
                    table.row(&format!("naive, {}", backend.label()), "-", c, &figures, &users, None);
                    fresh.close().await;
                    // Let TIME_WAIT from the naive run not count against the next run.
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }

        if knobs.wanted("floor", "floor") {
            // The floor of a login: one LDAP round trip (a bind on an open connection); a
            // login needs at least two (search, then bind as the user).
            Table::header("Floor: one bind round trip on one open connection (c=1)");
            let (conn, ldap) = LdapConnAsync::new(slapd.var("URL")).await.expect("connect");
            ldap3::drive!(conn);
            let creds = Arc::new((slapd.var("BIND_DN").to_owned(), slapd.var("BIND_PASSWORD").to_owned()));
            let mut figures = run(port, 1, knobs.secs.min(2.0), 0, move |_| {
                let mut ldap = ldap.clone();
                let creds = Arc::clone(&creds);
                async move {
                    let r = ldap.simple_bind(&creds.0, &creds.1).await.map_err(|e| e.to_string())?;
                    if r.rc == 0 { Ok(()) } else { Err(format!("rc {}", r.rc)) }
                }
            })
            .await;
            // Nothing here depends on the user: no passes to tell apart.
            (figures.first, figures.later) = (Part::default(), Part::default());
            table.row("floor: one bind", "-", 1, &figures, "-", None);
        }
    });

    if knobs.wanted("peer", "peer") {
        Table::header(
            "Peer: django-auth-ldap (benches/peer/django_ldap_login.py; same directory, filter, nested group search, \
             flags; mirrors into a fresh SQLite file through Django's ORM; c=1)",
        );
        let probe = Command::new(&knobs.python).args(["-c", "import django, django_auth_ldap, ldap"]).output();
        match probe {
            Ok(o) if o.status.success() => {
                for (cache_on, key) in [(false, "off"), (true, "on")] {
                    match peer(&slapd, &knobs, if cache_on { 1200 } else { 0 }) {
                        Ok((figures, users, note)) => {
                            table.row("django-auth-ldap", key, 1, &figures, &users, None);
                            println!("    {note}");
                        }
                        Err(e) => println!("SKIPPED django-auth-ldap cache {key}: {e}"),
                    }
                }
            }
            other => {
                let why = other.map_or_else(
                    |e| e.to_string(),
                    |o| String::from_utf8_lossy(&o.stderr).lines().last().unwrap_or("").to_owned(),
                );
                println!(
                    "SKIPPED django-auth-ldap: {why} (apt-get install python3-django-auth-ldap python3-django \
                     python3-ldap, or set LDAP_BENCH_PYTHON)"
                );
            }
        }
    }

    println!();
    println!(
        "targets (issue; judged on the whole run, failed logins must be 0): {} met, {} missed",
        table.met,
        table.missed.len()
    );
    for m in &table.missed {
        println!("  missed: {m}");
    }
}
