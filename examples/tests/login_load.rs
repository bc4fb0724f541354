//! Logins under load, composed only from the public API, the way a host application composes
//! them: an `AuthChain` with the `LdapBackend` first and the `LocalBackend` second, mirroring
//! into a store chosen by URL (`AnyStore`), on SQLite, PostgreSQL and MariaDB.
//!
//! Why: a user's first login creates their row, and a busy host sees the same new user log in
//! from several requests, and several processes, at the same moment. Every one of those logins
//! must succeed and leave exactly one row per directory entry, spelled as the directory spells
//! it, with the roles the directory grants: no unique violation, no deadlock, no lost groups.
//!
//! The expected roles and spellings are read from the directory here (plain ldap3, the group
//! membership closure and this file's group mapping), never from the code under test.
//!
//! - In-process: 64 tasks, 20,000 logins over 10 hot and 1,000 cold fixture users, with the
//!   group cache off (every login resolves its groups in the directory) and on. All tasks start
//!   behind one barrier on the same hot users; each cold user is visited by four tasks at the
//!   same step, so first logins race all through the run. Some logins use an upper-case
//!   spelling of the name, which must still map to the directory's spelling and the same row.
//! - From processes: this binary run again (`--ignored --exact login_load_child`) four times
//!   against one database (or SQLite file); the parent releases the children together once all
//!   are ready, and they log the same users in.
//!
//! Services come from the `RALPH_TEST_*` variables `scripts/test` exports: a missing one is a
//! printed `SKIPPED` outside CI and a failure under `CI=true`.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError, mpsc};
use std::time::{Duration, Instant};

use ldap3::{LdapConnAsync, Scope, SearchEntry};
use ralph_core::{AuthChain, Credentials, Group, LocalBackend, User, UserSource, UserStore};
use ralph_ldap::{LdapBackend, LdapConfig};
use ralph_store::{AnyStore, PoolConfig};
use tokio::sync::Barrier;

mod common;
use common::{Backend, FreshDb};

/// Hot users: most logins go to them.
const HOT: usize = 10;
/// Steps at the start on which every task logs the same hot user in (hot user 0, 1, 2).
const STAMPEDE: usize = 3;
/// Tasks that visit each cold user together (at the same step of their plans).
const GANG: usize = 4;

/// The in-process load.
const TASKS: usize = 64;
const LOGINS: usize = 20_000;
const COLD: usize = 1_000;
/// Every fourth step after the stampede is a cold user's login.
const COLD_EVERY: usize = 4;

/// The load of each child process; the children share their users.
const CHILDREN: usize = 4;
const CHILD_TASKS: usize = 16;
const CHILD_LOGINS: usize = 2_000;
const CHILD_COLD: usize = 200;
const CHILD_COLD_EVERY: usize = 2;

/// Safety nets, so that a hang fails the test instead of stalling the run (a run takes
/// seconds to tens of seconds, ten times that on a loaded CI machine; nextest kills a test
/// only after 600 s).
const LOGIN_LIMIT: Duration = Duration::from_secs(540);
const CHILD_LIMIT: Duration = Duration::from_secs(540);

/// Which fixture groups (cn under ou=groups) grant which roles. Everyone the user filter lets
/// in (ralph-users) is active, and `_gr_ralph` (the first 1,000 bulk users) adds a role, so the
/// expected roles differ from user to user.
const GROUP_ROLES: [(&str, &str); 4] = [
    ("ralph-users", Group::ACTIVE),
    ("_gr_ralph", Group::ASSETS_STAFF),
    ("_gr_ralph_staff", Group::STAFF),
    ("_gr_ralph_admin", Group::SUPERUSER),
];

const CHILD_URL_VAR: &str = "RALPH_LOGIN_LOAD_STORE_URL";
const CHILD_INDEX_VAR: &str = "RALPH_LOGIN_LOAD_CHILD";
const CHILD_REPORT: &str = "LOGIN_LOAD_CHILD";
const CHILD_READY: &str = "LOGIN_LOAD_READY";

// ---------------------------------------------------------------------------------------------
// The directory

/// Where the fixture slapd is.
#[derive(Debug, Clone)]
struct Directory {
    url: String,
    base: String,
    bind_dn: String,
    bind_password: String,
    bulk_users: usize,
}

/// The fixture, or `None` after a printed skip (a panic under CI=true).
fn directory() -> Option<Directory> {
    Some(Directory {
        url: ralph_testkit::service("RALPH_TEST_LDAP_URL")?,
        base: ralph_testkit::service("RALPH_TEST_LDAP_BASE")?,
        bind_dn: ralph_testkit::service("RALPH_TEST_LDAP_BIND_DN")?,
        bind_password: ralph_testkit::service("RALPH_TEST_LDAP_BIND_PASSWORD")?,
        bulk_users: std::env::var("RALPH_TEST_LDAP_BULK_USERS").ok().and_then(|n| n.parse().ok()).unwrap_or(5000),
    })
}

/// The host application's LDAP settings: users found by sAMAccountName under the base, let in
/// by membership of ralph-users, groups from memberOf with nesting followed, roles mirrored.
fn ldap_config(dir: &Directory, cache_ttl_secs: u64, pool_size: usize) -> LdapConfig {
    let b = &dir.base;
    let mapping: String =
        GROUP_ROLES.iter().map(|(cn, role)| format!("\"cn={cn},ou=groups,{b}\" = \"{role}\"\n")).collect();
    let text = format!(
        r#"
server_uris = ["{url}"]
bind_dn = "{bind_dn}"
bind_password = "{bind_pw}"
username_attr = "sAMAccountName"
user_filter = "(memberOf=cn=ralph-users,ou=groups,{b})"
group_type = "member_of"
group_name_attr = "cn"
nested_groups = "recursive"
mirror_groups = true
cache_ttl_secs = {cache_ttl_secs}
pool_size = {pool_size}
connect_timeout_ms = 5000
operation_timeout_ms = 20000

[user_search]
base = "{b}"
scope = "subtree"
filter = "(sAMAccountName=%(user)s)"

[user_attr_map]
first_name = "givenName"
last_name = "sn"
email = "mail"

[profile_attr_map]
company = "company"
department = "department"
employee_id = "employeeID"
country = "ISO-country-code"

[group_mapping]
{mapping}"#,
        url = dir.url,
        bind_dn = dir.bind_dn,
        bind_pw = dir.bind_password,
    );
    LdapConfig::from_toml_str(&text).expect("the test's LDAP config is valid")
}

/// The users of a run, as the fixture names them (`bulkNNNNN`, password `pw-bulkNNNNN`, see
/// scripts/services/slapd/up.sh): `HOT` hot users (five of the first 1,000 bulk users, five of
/// the last), then `cold` cold ones straddling bulk01000, so half of them are in `_gr_ralph`.
fn users(dir: &Directory, cold: usize) -> Vec<String> {
    let first_cold = 1000 - cold / 2;
    assert!(
        dir.bulk_users >= first_cold + cold + HOT,
        "the fixture has {} bulk users; this test needs at least {}",
        dir.bulk_users,
        first_cold + cold + HOT
    );
    let hot = (0..HOT / 2).chain(dir.bulk_users - (HOT - HOT / 2)..dir.bulk_users);
    hot.chain(first_cold..first_cold + cold).map(|i| format!("bulk{i:05}")).collect()
}

/// The password the fixture gives a bulk user (written as a rule in up.sh, not a secret).
fn password(login: &str) -> String {
    format!("pw-{}", login.to_lowercase())
}

/// What the directory says one user must end up as.
#[derive(Debug, Clone)]
struct Expected {
    /// The username as the directory spells it.
    spelling: String,
    /// The roles, sorted.
    roles: Vec<String>,
}

/// Lower-cases a DN and drops the blanks around separators, for comparing DNs written
/// differently (the fixture's DNs have no escaped characters).
fn norm_dn(dn: &str) -> String {
    dn.split(',')
        .map(|rdn| rdn.split('=').map(str::trim).collect::<Vec<_>>().join("="))
        .collect::<Vec<_>>()
        .join(",")
        .to_lowercase()
}

/// Reads, as the service account, every groupOfNames with its members and each user's entry,
/// and computes each user's roles from the transitive membership and [`GROUP_ROLES`]. Keyed by
/// the lower-cased login name.
async fn expected(dir: &Directory, users: &[String]) -> HashMap<String, Expected> {
    let (conn, mut ldap) = LdapConnAsync::new(&dir.url).await.expect("connect to the directory");
    ldap3::drive!(conn);
    ldap.simple_bind(&dir.bind_dn, &dir.bind_password)
        .await
        .and_then(ldap3::LdapResult::success)
        .expect("service bind");

    // member → the groups it is directly in.
    let (groups, _) = ldap
        .search(&dir.base, Scope::Subtree, "(objectClass=groupOfNames)", vec!["member"])
        .await
        .and_then(ldap3::SearchResult::success)
        .expect("list groups");
    let mut parents: HashMap<String, Vec<String>> = HashMap::new();
    for group in groups {
        let group = SearchEntry::construct(group);
        for member in group.attrs.get("member").into_iter().flatten() {
            parents.entry(norm_dn(member)).or_default().push(norm_dn(&group.dn));
        }
    }
    let role_of: HashMap<String, &str> =
        GROUP_ROLES.iter().map(|(cn, role)| (norm_dn(&format!("cn={cn},ou=groups,{}", dir.base)), *role)).collect();

    let mut out = HashMap::new();
    // Chunks keep each search below the server's size limit for the service account.
    for chunk in users.chunks(200) {
        let terms: String =
            chunk.iter().map(|u| format!("(sAMAccountName={})", ldap3::ldap_escape(u.as_str()))).collect();
        let (entries, _) = ldap
            .search(&dir.base, Scope::Subtree, &format!("(|{terms})"), vec!["sAMAccountName"])
            .await
            .and_then(ldap3::SearchResult::success)
            .expect("look the users up");
        for entry in entries {
            let entry = SearchEntry::construct(entry);
            let spelling = entry.attrs.get("sAMAccountName").and_then(|v| v.first()).cloned().expect("sAMAccountName");
            // Every group reachable through membership, cycles guarded.
            let mut seen = HashSet::new();
            let mut queue = VecDeque::from([norm_dn(&entry.dn)]);
            while let Some(dn) = queue.pop_front() {
                for parent in parents.get(&dn).into_iter().flatten() {
                    if seen.insert(parent.clone()) {
                        queue.push_back(parent.clone());
                    }
                }
            }
            let mut roles: Vec<String> = seen.iter().filter_map(|g| role_of.get(g)).map(|r| (*r).to_owned()).collect();
            roles.sort();
            roles.dedup();
            let previous = out.insert(spelling.to_lowercase(), Expected { spelling, roles });
            assert!(previous.is_none(), "two directory entries for one login name: {}", entry.dn);
        }
    }
    let _ = ldap.unbind().await;
    let missing: Vec<&String> = users.iter().filter(|u| !out.contains_key(&u.to_lowercase())).collect();
    assert!(missing.is_empty(), "users not in the directory: {missing:?}");
    // Users with different roles make the roles check mean something: a mix-up between two
    // users' groups would go unseen if all had the same.
    let kinds: HashSet<&Vec<String>> = out.values().map(|e| &e.roles).collect();
    assert!(kinds.len() > 1, "every user has the roles {kinds:?}; the fixture's groups changed?");
    out
}

// ---------------------------------------------------------------------------------------------
// The host application

/// The store's pool, sized for the load: a connection per few tasks, and waits long enough that
/// contention is not mistaken for failure.
fn pool_config(max_connections: u32) -> PoolConfig {
    PoolConfig::default()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(60))
        .busy_timeout(Duration::from_secs(30))
}

/// The chain a host application builds: directory first, local accounts second.
fn chain(dir: &Directory, cache_ttl_secs: u64, ldap_pool: usize, store: &AnyStore) -> Arc<AuthChain> {
    let ldap = LdapBackend::new(ldap_config(dir, cache_ttl_secs, ldap_pool), store.clone()).expect("LDAP backend");
    Arc::new(AuthChain::new().with(Arc::new(ldap)).with(Arc::new(LocalBackend::new(store.clone()))))
}

// ---------------------------------------------------------------------------------------------
// The load

/// One planned login: an index into the run's users, and whether to type the name upper-case.
#[derive(Debug, Clone, Copy)]
struct Attempt {
    user: usize,
    upper: bool,
}

/// Each task's logins. Steps `0..STAMPEDE`: every task logs hot user `step` in (the first
/// logins of those users race across all tasks). After that, every `cold_every`-th step is a
/// cold user shared by a gang of `GANG` tasks (so each cold user's first login races too), and
/// the other steps go round the hot users. About a third of the logins type the name
/// upper-case.
fn plan(tasks: usize, total: usize, cold: usize, cold_every: usize) -> Vec<Vec<Attempt>> {
    let gangs = tasks.div_ceil(GANG);
    let plans: Vec<Vec<Attempt>> = (0..tasks)
        .map(|t| {
            let steps = total / tasks + usize::from(t < total % tasks);
            (0..steps)
                .map(|j| {
                    let user = if j < STAMPEDE {
                        j % HOT
                    } else if (j - STAMPEDE).is_multiple_of(cold_every) {
                        let round = (j - STAMPEDE) / cold_every;
                        HOT + (round * gangs + t / GANG) % cold
                    } else {
                        (t + j) % HOT
                    };
                    Attempt { user, upper: (t + j) % 3 == 0 }
                })
                .collect()
        })
        .collect();
    assert_eq!(plans.iter().map(Vec::len).sum::<usize>(), total);
    let visited: HashSet<usize> = plans.iter().flatten().map(|a| a.user).collect();
    assert_eq!(visited.len(), HOT + cold, "the plan visits every hot and cold user");
    plans
}

/// Logins that went right and wrong, with the errors counted by kind.
#[derive(Debug, Default)]
struct Tally {
    ok: usize,
    failed: usize,
    first: Vec<String>,
    by_kind: BTreeMap<String, usize>,
}

impl Tally {
    fn fail(&mut self, login: &str, message: &str) {
        self.failed += 1;
        if self.first.len() < 8 {
            self.first.push(format!("{login}: {message}"));
        }
        // The same error for different users counts as one kind.
        let kind = message.replace(login, "<user>").replace(&login.to_lowercase(), "<user>");
        if self.by_kind.len() < 20 || self.by_kind.contains_key(&kind) {
            *self.by_kind.entry(kind).or_default() += 1;
        }
    }

    /// The counts, the first errors and the errors by kind.
    fn report(&self, what: &str, planned: usize) -> String {
        let mut report = format!(
            "{what}: {} of {planned} logins failed, {} succeeded, {} not done\nfirst errors:\n",
            self.failed,
            self.ok,
            planned.saturating_sub(self.ok + self.failed)
        );
        for line in &self.first {
            report.push_str(&format!("  {line}\n"));
        }
        report.push_str("by error:\n");
        for (kind, n) in &self.by_kind {
            report.push_str(&format!("  {n:>6} × {kind}\n"));
        }
        report
    }

    /// Panics with the report unless every planned login succeeded.
    fn assert_clean(&self, what: &str, planned: usize) {
        assert!(self.failed == 0 && self.ok == planned, "{}", self.report(what, planned));
    }
}

/// An error with its causes, one level each (the crates print their own level only).
fn describe(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

/// Runs the plans, one task each, all released by one barrier; every login must be
/// authenticated by the directory as the user it expects, with the expected roles. The tally
/// is shared so that a run stopped by [`LOGIN_LIMIT`] still reports what went wrong.
async fn run(
    chain: Arc<AuthChain>,
    users: Arc<Vec<String>>,
    expected: Arc<HashMap<String, Expected>>,
    plans: Vec<Vec<Attempt>>,
) -> Tally {
    let planned = plans.iter().map(Vec::len).sum();
    let tally = Arc::new(Mutex::new(Tally::default()));
    let barrier = Arc::new(Barrier::new(plans.len()));
    let handles: Vec<_> = plans
        .into_iter()
        .map(|attempts| {
            let (chain, users, expected, barrier, tally) = (
                Arc::clone(&chain),
                Arc::clone(&users),
                Arc::clone(&expected),
                Arc::clone(&barrier),
                Arc::clone(&tally),
            );
            tokio::spawn(async move {
                barrier.wait().await;
                for attempt in attempts {
                    let name = &users[attempt.user];
                    let login = if attempt.upper { name.to_uppercase() } else { name.clone() };
                    let want = &expected[name];
                    let wrong = match chain.authenticate(&Credentials::new(login.as_str(), password(name))).await {
                        Ok(got) => {
                            let mut roles: Vec<String> = got.identity.groups.iter().map(Group::to_string).collect();
                            roles.sort();
                            (got.backend != "ldap"
                                || got.identity.user.username != want.spelling
                                || roles != want.roles)
                                .then(|| {
                                    format!(
                                        "authenticated wrongly: backend {}, user {:?}, roles {roles:?} \
                                         (expected ldap, {:?}, {:?})",
                                        got.backend, got.identity.user.username, want.spelling, want.roles
                                    )
                                })
                        }
                        Err(e) => Some(describe(&e)),
                    };
                    let mut tally = tally.lock().unwrap_or_else(PoisonError::into_inner);
                    match wrong {
                        None => tally.ok += 1,
                        Some(message) => tally.fail(&login, &message),
                    }
                }
            })
        })
        .collect();
    let finished = tokio::time::timeout(LOGIN_LIMIT, async {
        for handle in handles {
            handle.await.expect("a login task panicked");
        }
    })
    .await;
    let tally = std::mem::take(&mut *tally.lock().unwrap_or_else(PoisonError::into_inner));
    assert!(finished.is_ok(), "the logins did not finish within {LOGIN_LIMIT:?}\n{}", tally.report("so far", planned));
    tally
}

/// Afterwards, the store holds exactly one row per user logged in, spelled as the directory
/// spells it, owned by LDAP, with the flags and the mirrored roles the directory implies.
async fn check_store(store: &AnyStore, users: &[String], expected: &HashMap<String, Expected>) {
    let rows: Vec<User> = store.list_users(None).await.expect("list users").into_iter().map(|r| r.value).collect();
    let mut problems = Vec::new();
    let mut seen: HashMap<String, usize> = HashMap::new();
    for user in &rows {
        *seen.entry(user.username.to_lowercase()).or_default() += 1;
        let Some(want) = expected.get(&user.username.to_lowercase()) else {
            problems.push(format!("{:?}: a row for nobody logged in", user.username));
            continue;
        };
        if user.username != want.spelling {
            problems.push(format!("{:?}: stored spelling, the directory says {:?}", user.username, want.spelling));
        }
        if user.source != UserSource::Ldap {
            problems.push(format!("{:?}: source {:?}, expected LDAP", user.username, user.source));
        }
        let has = |role: &str| want.roles.iter().any(|r| r == role);
        let flags = (user.is_active, user.is_staff, user.is_superuser);
        let want_flags = (has(Group::ACTIVE), has(Group::STAFF), has(Group::SUPERUSER));
        if flags != want_flags {
            problems.push(format!("{:?}: flags {flags:?}, expected {want_flags:?}", user.username));
        }
        let mut roles: Vec<String> =
            store.user_groups(&user.username).await.expect("user groups").iter().map(Group::to_string).collect();
        roles.sort();
        if roles != want.roles {
            problems.push(format!("{:?}: stored roles {roles:?}, expected {:?}", user.username, want.roles));
        }
    }
    for (name, n) in &seen {
        if *n > 1 {
            problems.push(format!("{name}: {n} rows for one directory entry"));
        }
    }
    let logged_in: HashSet<String> = users.iter().map(|u| u.to_lowercase()).collect();
    for name in &logged_in {
        if !seen.contains_key(name) {
            problems.push(format!("{name}: logged in but no row"));
        }
    }
    let shown: Vec<&String> = problems.iter().take(20).collect();
    assert!(
        problems.is_empty() && rows.len() == logged_in.len(),
        "{} rows for {} users logged in; {} problems, the first: {shown:#?}",
        rows.len(),
        logged_in.len(),
        problems.len()
    );
}

// ---------------------------------------------------------------------------------------------
// Fresh stores

// ---------------------------------------------------------------------------------------------
// In-process

/// 64 tasks, 20,000 logins, 10 hot and 1,000 cold users, one process, one store.
async fn in_process(backend: Backend, cache_ttl_secs: u64) {
    let Some(dir) = directory() else { return };
    let tag = if cache_ttl_secs == 0 { "llnc" } else { "llc" };
    let Some(db) = FreshDb::new(backend, tag).await else { return };
    let users = Arc::new(users(&dir, COLD));
    let expected = Arc::new(expected(&dir, &users).await);
    let store = AnyStore::connect_with(&db.url, &pool_config(24)).await.expect("open the store");
    let chain = chain(&dir, cache_ttl_secs, 16, &store);

    let started = Instant::now();
    let tally = run(chain, Arc::clone(&users), Arc::clone(&expected), plan(TASKS, LOGINS, COLD, COLD_EVERY)).await;
    eprintln!(
        "{backend:?}, group cache {}: {} logins ({} failed) from {TASKS} tasks in {:.1} s",
        if cache_ttl_secs == 0 { "off" } else { "on" },
        tally.ok + tally.failed,
        tally.failed,
        started.elapsed().as_secs_f64()
    );
    tally.assert_clean(&format!("{backend:?} in process"), LOGINS);
    check_store(&store, &users, &expected).await;
    drop(store);
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sqlite_racing_logins_in_process_cache_off() {
    in_process(Backend::Sqlite, 0).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sqlite_racing_logins_in_process_cache_on() {
    in_process(Backend::Sqlite, 600).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn pg_racing_logins_in_process_cache_off() {
    in_process(Backend::Postgres, 0).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn pg_racing_logins_in_process_cache_on() {
    in_process(Backend::Postgres, 600).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn mysql_racing_logins_in_process_cache_off() {
    in_process(Backend::MySql, 0).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn mysql_racing_logins_in_process_cache_on() {
    in_process(Backend::MySql, 600).await;
}

// ---------------------------------------------------------------------------------------------
// From processes

/// A child process's entry point; ignored so that only the spawned processes run it. It gets
/// ready (store open, directory read), says `LOGIN_LOAD_READY`, waits for the parent's `go` on
/// stdin so that all children start together, logs the shared users in from `CHILD_TASKS`
/// tasks, prints `LOGIN_LOAD_CHILD <i> ok=<n> failed=<m>` and fails (exits non-zero) on any
/// failed login.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "run by the multi-process tests as a child process"]
async fn login_load_child() {
    use std::io::{BufRead as _, Write as _};
    let url = std::env::var(CHILD_URL_VAR).expect("store URL (this test runs as a child of the multi-process tests)");
    let index = std::env::var(CHILD_INDEX_VAR).unwrap_or_default();
    let dir = directory().expect("the parent passes the directory variables down");
    let users = Arc::new(users(&dir, CHILD_COLD));
    let expected = Arc::new(expected(&dir, &users).await);
    let store = AnyStore::connect_with(&url, &pool_config(8)).await.expect("open the store");
    let chain = chain(&dir, 0, 8, &store);
    let plans = plan(CHILD_TASKS, CHILD_LOGINS, CHILD_COLD, CHILD_COLD_EVERY);

    // libtest may have printed `test login_load_child ... ` without a newline: start a line.
    println!("\n{CHILD_READY}");
    std::io::stdout().flush().expect("flush stdout");
    let go = tokio::task::spawn_blocking(|| {
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line).map(|_| line)
    })
    .await
    .expect("stdin reader");
    // End of input means the parent is gone (it failed): no logins then.
    assert_eq!(go.ok().as_deref().map(str::trim), Some("go"), "child {index}: no go from the parent");

    let tally = run(chain, users, expected, plans).await;
    println!("{CHILD_REPORT} {index} ok={} failed={}", tally.ok, tally.failed);
    tally.assert_clean(&format!("child process {index}"), CHILD_LOGINS);
}

/// A child process and the lines of its stdout (read by a thread, so that every wait on it
/// can have a deadline).
struct Running {
    child: Child,
    lines: mpsc::Receiver<String>,
}

/// Starts one child process on the store at `url`.
fn spawn_child(url: &str, index: usize) -> Running {
    use std::io::BufRead as _;
    let mut child = Command::new(std::env::current_exe().expect("test binary"))
        .args(["--ignored", "--exact", "login_load_child", "--nocapture", "--test-threads=1"])
        .env(CHILD_URL_VAR, url)
        .env(CHILD_INDEX_VAR, index.to_string())
        // The child's report says what failed; a backtrace of its final panic adds nothing.
        .env("RUST_BACKTRACE", "0")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn a child process");
    let stdout = child.stdout.take().expect("child stdout");
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    Running { child, lines }
}

/// Kills the children (all of them were started by this test) and panics with `why`.
fn give_up(children: &mut [Running], why: &str) -> ! {
    for running in children.iter_mut() {
        let _ = running.child.kill();
        let _ = running.child.wait();
    }
    panic!("{why}");
}

/// Waits until every child has said it is ready, then tells them all to go at once.
fn start_together(children: &mut [Running], deadline: Instant) {
    use std::io::Write as _;
    for i in 0..children.len() {
        loop {
            match children[i].lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) if line.trim() == CHILD_READY => break,
                Ok(_) => {}
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    give_up(children, &format!("child {i} was not ready within {CHILD_LIMIT:?}"));
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = children[i].child.wait().map(|s| s.to_string()).unwrap_or_default();
                    give_up(children, &format!("child {i} exited before it was ready ({status}); see its stderr"));
                }
            }
        }
    }
    for running in children.iter_mut() {
        let mut stdin = running.child.stdin.take().expect("child stdin");
        stdin.write_all(b"go\n").and_then(|()| stdin.flush()).expect("tell a child to go");
    }
}

/// Waits for every child (killing them all past the deadline); returns each one's exit status
/// and the (ok, failed) counts it reported, if it got that far.
async fn wait_children(
    mut children: Vec<Running>,
    deadline: Instant,
) -> Vec<(std::process::ExitStatus, Option<(usize, usize)>)> {
    let mut results = Vec::new();
    for i in 0..children.len() {
        let status = loop {
            if let Some(status) = children[i].child.try_wait().expect("wait for a child") {
                break status;
            }
            if Instant::now() > deadline {
                give_up(&mut children, &format!("the child processes did not finish within {CHILD_LIMIT:?}"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        // The reader thread ends at the child's end of output, so this ends too.
        let counts = children[i].lines.iter().find_map(|line| {
            let at = line.find(CHILD_REPORT)?;
            let mut ok = None;
            let mut failed = None;
            for word in line[at..].split_whitespace() {
                if let Some(n) = word.strip_prefix("ok=") {
                    ok = n.parse().ok();
                } else if let Some(n) = word.strip_prefix("failed=") {
                    failed = n.parse().ok();
                }
            }
            Some((ok?, failed?))
        });
        results.push((status, counts));
    }
    results
}

/// `CHILDREN` processes log the same users in at once into one store.
async fn from_processes(backend: Backend) {
    let Some(dir) = directory() else { return };
    let Some(db) = FreshDb::new(backend, "llmp").await else { return };
    // The schema is made here, before the children start, so that they race on logins only.
    let store = AnyStore::connect_with(&db.url, &pool_config(4)).await.expect("open the store");
    let users = users(&dir, CHILD_COLD);
    let expected = expected(&dir, &users).await;

    let deadline = Instant::now() + CHILD_LIMIT;
    let mut children: Vec<Running> = (0..CHILDREN).map(|i| spawn_child(&db.url, i)).collect();
    start_together(&mut children, deadline);
    let started = Instant::now();
    let results = wait_children(children, deadline).await;
    eprintln!("{backend:?}: {CHILDREN} processes × {CHILD_LOGINS} logins in {:.1} s", started.elapsed().as_secs_f64());
    let bad: Vec<String> = results
        .iter()
        .enumerate()
        .filter(|(_, (status, counts))| !status.success() || *counts != Some((CHILD_LOGINS, 0)))
        .map(|(i, (status, counts))| format!("child {i}: {status}, (ok, failed) = {counts:?}"))
        .collect();
    assert!(
        bad.is_empty(),
        "{backend:?}: child processes had failed logins (their reports are printed above):\n{}",
        bad.join("\n")
    );
    check_store(&store, &users, &expected).await;
    drop(store);
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sqlite_racing_logins_from_processes() {
    from_processes(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn pg_racing_logins_from_processes() {
    from_processes(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn mysql_racing_logins_from_processes() {
    from_processes(Backend::MySql).await;
}
