//! What the tests of the reference service (`examples/server`) share: starting the binary on a
//! config, reading its stdout lines, stopping it with SIGTERM, and the fixture directory's
//! `[ldap]` table.

// Each test binary includes this module and uses its own part of it.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

/// The password `RALPH_ADMIN_PASSWORD` gives the local staff account `admin`.
pub(crate) const ADMIN_PASSWORD: &str = "server-test-admin-Pa55";

/// The example binary cargo built beside this test.
pub(crate) fn server_exe() -> PathBuf {
    // CARGO_TARGET_TMPDIR is <target>/tmp; the examples are in <target>/<profile>/examples.
    let target = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).parent().expect("target dir").to_path_buf();
    let test_exe = std::env::current_exe().expect("test exe");
    // <target>/<profile>/deps/<test>: the profile directory is two levels up.
    let profile = test_exe.parent().and_then(|d| d.parent()).map_or_else(|| target.join("debug"), PathBuf::from);
    let exe = profile.join("examples").join("server");
    assert!(exe.exists(), "{} is missing: cargo builds the examples with the tests", exe.display());
    exe
}

/// A running `examples/server` process (killed when dropped).
pub(crate) struct Server {
    pub(crate) child: Child,
    pub(crate) address: SocketAddr,
    pub(crate) lines: mpsc::UnboundedReceiver<String>,
    pub(crate) config: PathBuf,
}

impl Server {
    /// Writes `config` and starts the server on it; waits for `LISTENING`.
    pub(crate) async fn start(dir: &Path, config: &str) -> Self {
        let path = dir.join("server.toml");
        std::fs::write(&path, config).expect("write config");
        let mut child = Command::new(server_exe())
            .arg(&path)
            .env("RALPH_ADMIN_PASSWORD", ADMIN_PASSWORD)
            .env("RUST_LOG", "server=info,ralph=warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("start server");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, mut lines) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut reader = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let line = wait_line(&mut lines, "LISTENING ", Duration::from_secs(120)).await;
        let address = line.trim_start_matches("LISTENING ").parse().expect("address");
        Self { child, address, lines, config: path }
    }

    /// Sends signal `name` (`TERM`, `HUP`) to the process.
    pub(crate) fn signal(&self, name: &str) {
        let pid = self.child.id().expect("running").to_string();
        let ok = std::process::Command::new("kill").args([&format!("-{name}"), &pid]).status().expect("kill");
        assert!(ok.success());
    }

    /// Sends SIGTERM and waits for a clean exit after `DRAINED`.
    pub(crate) async fn stop(mut self) {
        self.signal("TERM");
        wait_line(&mut self.lines, "DRAINED", Duration::from_secs(120)).await;
        let status =
            tokio::time::timeout(Duration::from_secs(60), self.child.wait()).await.expect("exits").expect("wait");
        assert!(status.success(), "server exit: {status}");
    }
}

/// The next line of the server's stdout that starts with `prefix`, within `limit`.
pub(crate) async fn wait_line(lines: &mut mpsc::UnboundedReceiver<String>, prefix: &str, limit: Duration) -> String {
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, lines.recv()).await {
            Ok(Some(line)) if line.starts_with(prefix) => return line,
            Ok(Some(_)) => {}
            Ok(None) => panic!("the server exited before printing {prefix:?}"),
            Err(_) => panic!("no {prefix:?} line within {limit:?}"),
        }
    }
}

/// The fixture directory's `[ldap]` table: users of ralph-users, `_gr_ralph_staff` staff;
/// `staff_group` names the group mapped to staff (a reload changes it). `None` (a skip) when
/// scripts/test did not start the fixture slapd.
pub(crate) fn ldap_table(staff_group: &str) -> Option<String> {
    let url = ralph_testkit::service("RALPH_TEST_LDAP_URL")?;
    let base = ralph_testkit::service("RALPH_TEST_LDAP_BASE")?;
    let bind_dn = ralph_testkit::service("RALPH_TEST_LDAP_BIND_DN")?;
    let bind_pw = ralph_testkit::service("RALPH_TEST_LDAP_BIND_PASSWORD")?;
    Some(format!(
        r#"
[ldap]
server_uris = ["{url}"]
bind_dn = "{bind_dn}"
bind_password = "{bind_pw}"
username_attr = "sAMAccountName"
user_filter = "(memberOf=cn=ralph-users,ou=groups,{base})"
group_type = "member_of"
group_name_attr = "cn"
nested_groups = "recursive"
mirror_groups = true
cache_ttl_secs = 0
pool_size = 8
connect_timeout_ms = 5000
operation_timeout_ms = 20000

[ldap.user_search]
base = "{base}"
scope = "subtree"
filter = "(sAMAccountName=%(user)s)"

[ldap.group_mapping]
"cn=ralph-users,ou=groups,{base}" = "active"
"cn={staff_group},ou=groups,{base}" = "staff"
"#
    ))
}

// ---------------------------------------------------------------------------------------------
// Fresh stores

/// The store backends the tests run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Backend {
    Sqlite,
    Postgres,
    MySql,
}

/// A store database made for one test: a SQLite file in a temporary directory, or a database
/// `<base>_<tag>_<pid>_<n>` on the server of `RALPH_TEST_PG_URL` / `RALPH_TEST_MYSQL_URL`
/// (the run's teardown drops every `<base>_*` database, so one left by a failed test goes too).
pub(crate) struct FreshDb {
    pub(crate) backend: Backend,
    pub(crate) url: String,
    /// For a server database: the URL it was made from, and its name.
    made_from: Option<(String, String)>,
    _dir: Option<tempfile::TempDir>,
}

static DB_COUNTER: AtomicU32 = AtomicU32::new(0);

/// Splits `scheme://host/db?x` into (`scheme://host/`, `db`, `?x`).
fn split_url(url: &str) -> (&str, &str, &str) {
    let (head, query) = url.find('?').map_or((url, ""), |i| url.split_at(i));
    let cut = head.rfind('/').map_or(head.len(), |i| i + 1);
    (&head[..cut], &head[cut..], query)
}

impl FreshDb {
    /// `None` after a printed skip when the server's variable is missing (a panic under CI).
    pub(crate) async fn new(backend: Backend, tag: &str) -> Option<Self> {
        use ralph_store::sqlx::{self, Connection as _};
        let var = match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("temp dir");
                let url = format!("sqlite://{}", dir.path().join("ralph.sqlite3").display());
                return Some(Self { backend, url, made_from: None, _dir: Some(dir) });
            }
            Backend::Postgres => "RALPH_TEST_PG_URL",
            Backend::MySql => "RALPH_TEST_MYSQL_URL",
        };
        let base_url = ralph_testkit::service(var)?;
        let (prefix, base, query) = split_url(&base_url);
        let n = DB_COUNTER.fetch_add(1, Ordering::Relaxed);
        let suffix = format!("_{tag}_{}_{n}", std::process::id());
        // PostgreSQL names stop at 63 bytes.
        let name = format!("{}{suffix}", &base[..base.len().min(63 - suffix.len())]);
        let url = format!("{prefix}{name}{query}");
        match backend {
            Backend::Postgres => {
                let mut admin = sqlx::PgConnection::connect(&base_url).await.expect("connect to PostgreSQL");
                sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                    "CREATE DATABASE \"{name}\" ENCODING 'UTF8' TEMPLATE template0"
                )))
                .execute(&mut admin)
                .await
                .expect("create a PostgreSQL database");
                let _ = admin.close().await;
            }
            Backend::MySql => {
                let mut admin = sqlx::MySqlConnection::connect(&base_url).await.expect("connect to MariaDB");
                let collation = ralph_store::MYSQL_COLLATION;
                sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                    "CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE {collation}"
                )))
                .execute(&mut admin)
                .await
                .expect("create a MariaDB database");
                let _ = admin.close().await;
            }
            Backend::Sqlite => unreachable!("handled above"),
        }
        Some(Self { backend, url, made_from: Some((base_url, name)), _dir: None })
    }

    /// Drops the database (only after a passing test: a failed one keeps its data to look at
    /// until the run's teardown).
    pub(crate) async fn drop_db(self) {
        use ralph_store::sqlx::{self, Connection as _};
        let Some((base_url, name)) = &self.made_from else { return };
        match self.backend {
            Backend::Postgres => {
                if let Ok(mut admin) = sqlx::PgConnection::connect(base_url).await {
                    let _ =
                        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)")))
                            .execute(&mut admin)
                            .await;
                }
            }
            Backend::MySql => {
                if let Ok(mut admin) = sqlx::MySqlConnection::connect(base_url).await {
                    let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS `{name}`")))
                        .execute(&mut admin)
                        .await;
                }
            }
            Backend::Sqlite => {}
        }
    }
}
