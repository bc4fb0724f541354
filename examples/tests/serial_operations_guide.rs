//! Runs every command of docs/operations.md.
//!
//! Each `$ ` line of a ```` ```console ```` block is run with `bash -c` (under `set -o
//! pipefail`, as root) and must exit 0; when the doc shows output under a command, the command's
//! stdout must have the same shape (the same lines, numbers aside). The commands run against the
//! test services (`RALPH_TEST_*`): a fresh PostgreSQL and a fresh MariaDB database migrated by
//! ralph-store, with a few queue jobs and a legacy MyISAM/latin1 table, and the test directory.
//! Host-wide settings a command changes (`sysctl -w`) are saved first and written back by a
//! guard, even when the test fails.
//!
//! It also checks what the doc states without a command: the LDAP TOML loads with
//! `LdapConfig::from_toml_str`, the pool TOML is `PoolConfig`'s defaults, the schema fix shown is
//! the one `check_schema` returns, and every event of the events table is emitted with that
//! target and level by the crates' source.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use ralph_core::{JobQueue, QueueAdmin, WorkerBeat};
use ralph_store::schema_check::{SchemaIssue, check_schema};
use ralph_store::sqlx::{self, Connection as _};
use ralph_store::{MySqlStore, PgStore, PoolConfig};

const QUEUE: &str = "discovery.dc1";

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf()
}

fn doc() -> String {
    let path = workspace().join("docs/operations.md");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// One `$ ` line of a console block and the output lines shown under it.
#[derive(Debug)]
struct DocCommand {
    line: usize,
    command: String,
    expected: Vec<String>,
}

/// Every command of every ```` ```console ```` block, in order. Lines of a block before its
/// first command, and unterminated blocks, are errors.
fn console_commands(text: &str) -> Vec<DocCommand> {
    let mut out: Vec<DocCommand> = Vec::new();
    let mut in_block = false;
    let mut block_start = 0;
    let mut block_has_command = false;
    for (i, raw) in text.lines().enumerate() {
        let line_no = i + 1;
        let trimmed = raw.trim_start();
        if !in_block {
            if trimmed == "```console" {
                in_block = true;
                block_start = line_no;
                block_has_command = false;
            }
            continue;
        }
        if trimmed == "```" {
            in_block = false;
            continue;
        }
        if let Some(command) = trimmed.strip_prefix("$ ") {
            out.push(DocCommand { line: line_no, command: command.to_owned(), expected: Vec::new() });
            block_has_command = true;
        } else {
            assert!(block_has_command, "line {line_no}: output before any command in the console block");
            // Output keeps its own indentation relative to the block's.
            let indent = raw.len() - trimmed.len();
            let block_indent = text.lines().nth(block_start - 1).map_or(0, |l| l.len() - l.trim_start().len());
            let shown = if indent >= block_indent { &raw[block_indent..] } else { trimmed };
            out.last_mut().expect("a command").expected.push(shown.to_owned());
        }
    }
    assert!(!in_block, "the console block at line {block_start} is not closed");
    out
}

/// A line's shape: numbers replaced by 0, runs of `-` and of whitespace collapsed.
fn shape(line: &str) -> String {
    let mut out = String::new();
    let mut prev: Option<char> = None;
    for c in line.trim().chars() {
        let c = if c.is_ascii_digit() {
            '0'
        } else if c.is_whitespace() {
            ' '
        } else {
            c
        };
        if matches!((prev, c), (Some('0'), '0') | (Some('-'), '-') | (Some(' '), ' ')) {
            continue;
        }
        out.push(c);
        prev = Some(c);
    }
    out
}

/// The contents of every ```` ```lang ```` block.
fn blocks<'a>(text: &'a str, lang: &str) -> Vec<&'a str> {
    let fence = format!("```{lang}\n");
    text.match_indices(&fence)
        .map(|(i, _)| {
            let body = &text[i + fence.len()..];
            &body[..body.find("```").expect("block end")]
        })
        .collect()
}

#[test]
fn console_blocks_parse_into_commands_and_shapes() {
    let text = "x\n```console\n$ echo 1\n1\n$ true\n```\n  ```console\n  $ echo a  b\n  a  b\n  ```\n";
    let commands = console_commands(text);
    assert_eq!(commands.len(), 3);
    assert_eq!((commands[0].command.as_str(), commands[0].expected.as_slice()), ("echo 1", &["1".to_owned()][..]));
    assert!(commands[1].expected.is_empty());
    assert_eq!(commands[2].expected, ["a  b"]);
    assert_eq!(shape("  thresh1 128 thresh2 512 "), shape("thresh1 1024\tthresh2 4096"));
    assert_ne!(shape("exit status 4"), shape("exit code 4"));
    assert_eq!(shape("---+-----"), shape("-+--"));
}

#[test]
fn toml_blocks_are_what_the_code_reads() {
    let text = doc();
    let tomls = blocks(&text, "toml");
    let ldap = tomls.iter().find(|b| b.contains("server_uris")).expect("the LDAP TOML block");
    let config = ralph_ldap::LdapConfig::from_toml_str(ldap).expect("the doc's LDAP TOML loads");
    assert_eq!(config.group_mapping.len(), 6, "the FAQ's six mapped groups");
    assert_eq!(config.profile_attr_map.attributes().count(), 6, "the FAQ's six profile attributes");
    assert_eq!(config.username_attr.as_deref(), Some("sAMAccountName"));
    // The defaults the doc lists.
    assert_eq!(
        (config.pool_size, config.connect_timeout_ms, config.operation_timeout_ms, config.cache_ttl_secs),
        (8, 2000, 5000, 1200)
    );
    assert_eq!((config.group_check_ttl_secs, config.page_size, config.max_deactivate_percent), (0, 500, 50));
    assert!(config.check_account_state && config.deactivate_missing);
    assert_eq!(config.nested_groups, ralph_ldap::NestedGroups::Auto);
    assert_eq!(config.max_group_depth, 8);

    let pool = tomls.iter().find(|b| b.contains("max_connections")).expect("the PoolConfig TOML block");
    let pool: PoolConfig = toml::from_str(pool).expect("the doc's PoolConfig TOML loads");
    assert_eq!(pool, PoolConfig::default(), "the doc says these are the defaults");
}

/// Every `*.rs` file under the crates' `src/`.
fn sources() -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut dirs: Vec<PathBuf> = ["ralph-core", "ralph-store", "ralph-ldap", "ralph-discovery", "ralph-web"]
        .iter()
        .map(|c| workspace().join(c).join("src"))
        .collect();
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).expect("source");
                out.push((path.strip_prefix(workspace()).expect("inside").display().to_string(), text));
            }
        }
    }
    out
}

/// The value of the crate's `const TRACE_TARGET` / `const TRACE` used in `file`.
fn trace_consts(sources: &[(String, String)], file: &str) -> Vec<String> {
    let krate = file.split('/').next().unwrap_or_default();
    let mut out = Vec::new();
    for (path, text) in sources.iter().filter(|(p, _)| p.starts_with(&format!("{krate}/"))) {
        for prefix in ["const TRACE_TARGET: &str = \"", "const TRACE: &str = \""] {
            for (i, _) in text.match_indices(prefix) {
                let rest = &text[i + prefix.len()..];
                let value = &rest[..rest.find('"').expect("literal end")];
                // `const TRACE` is private to its file; `TRACE_TARGET` is crate-wide.
                if prefix.contains("TRACE_TARGET") || path == file {
                    out.push(value.to_owned());
                }
            }
        }
    }
    out
}

#[test]
fn events_named_in_the_doc_exist_with_their_target_and_level() {
    let text = doc();
    let sources = sources();
    let mut rows = 0;
    let mut failures = Vec::new();
    for line in text.lines().filter(|l| l.starts_with("| `ralph::")) {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let (target, event, level) = (cells[1].trim_matches('`'), cells[2].trim_matches('`'), cells[3]);
        rows += 1;
        let literal = format!("\"{event}\"");
        let found = sources.iter().any(|(file, src)| {
            src.match_indices(&literal).any(|(at, _)| {
                // The macro call this literal belongs to: the last one opened before it.
                let before = &src[..at];
                let Some((start, macro_level)) = ["trace", "debug", "info", "warn", "error"]
                    .iter()
                    .filter_map(|l| before.rfind(&format!("{l}!(")).map(|i| (i, *l)))
                    .max_by_key(|(i, _)| *i)
                else {
                    return false;
                };
                let call = &src[start..at];
                let by_literal = call.contains(&format!("target: \"{target}\""));
                let by_const = ["target: TRACE_TARGET,", "target: TRACE,"].iter().any(|t| call.contains(t))
                    && trace_consts(&sources, file).iter().any(|v| v == target);
                macro_level == level && (by_literal || by_const) && !call.contains(';')
            })
        });
        if !found {
            failures.push(format!("{target} {level} {event:?}"));
        }
    }
    assert!(rows >= 30, "the events table has {rows} rows");
    assert!(failures.is_empty(), "events not emitted as the doc says:\n{}", failures.join("\n"));
}

/// Writes the saved sysctl values back when dropped, however the test ends.
struct SysctlGuard {
    saved: BTreeMap<String, String>,
}

fn sysctl_path(name: &str) -> PathBuf {
    Path::new("/proc/sys").join(name.replace('.', "/"))
}

impl SysctlGuard {
    /// Saves every setting a `sysctl -w NAME=VALUE` of `commands` changes.
    fn save(commands: &[DocCommand]) -> Self {
        let mut saved = BTreeMap::new();
        for c in commands {
            let words: Vec<&str> = c.command.split_whitespace().collect();
            for pair in words.windows(2).filter(|w| w[0] == "-w") {
                let name = pair[1].split('=').next().expect("name");
                assert!(words.contains(&"sysctl"), "line {}: -w outside a sysctl command", c.line);
                let value = std::fs::read_to_string(sysctl_path(name))
                    .unwrap_or_else(|e| panic!("line {}: saving {name}: {e}", c.line));
                saved.insert(name.to_owned(), value.trim().to_owned());
            }
        }
        Self { saved }
    }
}

impl Drop for SysctlGuard {
    fn drop(&mut self) {
        for (name, value) in &self.saved {
            if let Err(e) = std::fs::write(sysctl_path(name), value) {
                eprintln!("RESTORING {name}={value} FAILED: {e}");
            }
        }
    }
}

/// `<base>_opsguide_<pid>` on the server of `base_url`, dropped (with the CLI, from `Drop`).
struct FreshDb {
    kind: &'static str,
    url: String,
    name: String,
    base_url: String,
    home: PathBuf,
}

impl FreshDb {
    async fn create(kind: &'static str, base_url: &str, home: &Path) -> Self {
        let (head, query) = base_url.find('?').map_or((base_url, ""), |i| base_url.split_at(i));
        let cut = head.rfind('/').map_or(head.len(), |i| i + 1);
        let (prefix, base) = head.split_at(cut);
        let suffix = format!("_opsguide_{}", std::process::id());
        let name = format!("{}{suffix}", &base[..base.len().min(63 - suffix.len())]);
        if kind == "postgres" {
            let mut c = sqlx::PgConnection::connect(base_url).await.expect("connect to PostgreSQL");
            for s in [
                format!("DROP DATABASE IF EXISTS \"{name}\""),
                format!("CREATE DATABASE \"{name}\" ENCODING 'UTF8' TEMPLATE template0"),
            ] {
                sqlx::raw_sql(sqlx::AssertSqlSafe(s)).execute(&mut c).await.expect("create database");
            }
            let _ = c.close().await;
        } else {
            let mut c = sqlx::MySqlConnection::connect(base_url).await.expect("connect to MariaDB");
            for s in [
                format!("DROP DATABASE IF EXISTS `{name}`"),
                format!("CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE {}", ralph_store::MYSQL_COLLATION),
            ] {
                sqlx::raw_sql(sqlx::AssertSqlSafe(s)).execute(&mut c).await.expect("create database");
            }
            let _ = c.close().await;
        }
        Self {
            kind,
            url: format!("{prefix}{name}{query}"),
            name,
            base_url: base_url.to_owned(),
            home: home.to_path_buf(),
        }
    }
}

impl Drop for FreshDb {
    fn drop(&mut self) {
        let status = if self.kind == "postgres" {
            Command::new("psql")
                .args([&self.base_url, "-q", "-c", &format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.name)])
                .status()
        } else {
            Command::new("mysql")
                .env("HOME", &self.home)
                .args(["-e", &format!("DROP DATABASE IF EXISTS `{}`", self.name)])
                .status()
        };
        if !status.is_ok_and(|s| s.success()) {
            eprintln!("dropping the {} database {} failed (the test run's teardown drops it)", self.kind, self.name);
        }
    }
}

/// `[client]` settings for the mysql CLI from a `mysql://user:password@host:port/db` URL.
fn my_cnf(url: &str) -> String {
    let rest = url.strip_prefix("mysql://").expect("a mysql:// URL");
    let authority = rest.split('/').next().expect("authority");
    let (userinfo, hostport) = authority.rsplit_once('@').unwrap_or(("root", authority));
    let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
    let (host, port) = hostport.rsplit_once(':').unwrap_or((hostport, "3306"));
    let mut cnf = format!("[client]\nhost={host}\nport={port}\nuser={user}\nprotocol=TCP\n");
    if !password.is_empty() {
        cnf.push_str(&format!("password={password}\n"));
    }
    cnf
}

/// The queue and worker rows the doc's queue commands show, and the legacy table its schema
/// commands find; returns the fixes `check_schema` reports for it.
async fn fill(pg: &FreshDb, mysql: &FreshDb) -> Vec<String> {
    let store = PgStore::connect(&pg.url).await.expect("PostgreSQL store");
    let payloads: Vec<String> = (1..=3).map(|i| format!("{{\"targets\":[\"192.0.2.{i}\"]}}")).collect();
    store.enqueue(QUEUE, &payloads).await.expect("enqueue");
    let claimed = store.claim(QUEUE, 1, Duration::from_secs(600), "discovery-opsguide").await.expect("claim");
    assert_eq!(claimed.len(), 1);
    let now = chrono::Utc::now();
    let beat = WorkerBeat {
        name: "discovery-opsguide".to_owned(),
        host: "opsguide-host".to_owned(),
        pid: std::process::id(),
        queues: vec![QUEUE.to_owned()],
        current_jobs: vec![claimed[0].id],
        started_at: now,
        last_seen: now,
        progress: Vec::new(),
    };
    store.heartbeat(&beat).await.expect("heartbeat");
    let stats = store.stats(QUEUE).await.expect("stats");
    assert_eq!((stats.pending, stats.running), (2, 1));
    store.close().await;

    let store = MySqlStore::connect(&mysql.url).await.expect("MariaDB store");
    sqlx::raw_sql(
        "CREATE TABLE legacy_notes (id INT PRIMARY KEY, note VARCHAR(200)) ENGINE=MyISAM DEFAULT CHARSET=latin1",
    )
    .execute(store.pool())
    .await
    .expect("legacy table");
    let report = check_schema(store.pool()).await.expect("check_schema");
    let issues = report.issues();
    assert!(issues.iter().any(|i| matches!(i, SchemaIssue::Engine { table, .. } if table == "legacy_notes")));
    assert!(issues.iter().any(|i| matches!(i, SchemaIssue::TableCharset { table, .. } if table == "legacy_notes")));
    assert!(
        issues.iter().any(
            |i| matches!(i, SchemaIssue::ColumnCharset { table, column, .. } if table == "legacy_notes" && column == "note")
        ),
        "{issues:?}"
    );
    assert_eq!(issues.len(), 3, "only the legacy table is not InnoDB/utf8mb4: {issues:?}");
    let fixes = report.fixes().to_vec();
    store.close().await;
    fixes
}

#[test]
fn serial_every_console_command_runs() {
    if !ralph_testkit::require_root("the operations guide's sysctl -w commands") {
        return;
    }
    let pg_url = ralph_testkit::require!("RALPH_TEST_PG_URL");
    let mysql_url = ralph_testkit::require!("RALPH_TEST_MYSQL_URL");
    let ldap_url = ralph_testkit::require!("RALPH_TEST_LDAP_URL");
    let ldap_base = ralph_testkit::require!("RALPH_TEST_LDAP_BASE");
    let bind_dn = ralph_testkit::require!("RALPH_TEST_LDAP_BIND_DN");
    let bind_pw = ralph_testkit::require!("RALPH_TEST_LDAP_BIND_PASSWORD");

    let text = doc();
    let commands = console_commands(&text);
    assert!(commands.len() >= 20, "only {} commands found in docs/operations.md", commands.len());

    // The mysql CLI's settings and the service account's password file, in a home of our own.
    let home = tempfile::tempdir().expect("temp home");
    std::fs::write(home.path().join(".my.cnf"), my_cnf(&mysql_url)).expect(".my.cnf");
    let pw_file = home.path().join("ldap-bind-password");
    std::fs::write(&pw_file, &bind_pw).expect("password file");
    {
        use std::os::unix::fs::PermissionsExt;
        for f in [home.path().join(".my.cnf"), pw_file.clone()] {
            std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        }
    }

    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let (pg, mysql) = runtime.block_on(async {
        (
            FreshDb::create("postgres", &pg_url, home.path()).await,
            FreshDb::create("mysql", &mysql_url, home.path()).await,
        )
    });
    let fixes = runtime.block_on(fill(&pg, &mysql));
    for fix in &fixes {
        assert!(text.contains(fix.as_str()), "check_schema's fix is not in the doc: {fix}");
    }

    // The host-wide slot file the doc's /proc/locks command reads, with one slot held meanwhile
    // (as a scanning process holds them).
    let slots = ralph_discovery::slots::HostSlots::open(&ralph_discovery::slots::default_slot_path(), 0, 1024)
        .expect("the host-wide slot file");
    let _held = slots.try_acquire().expect("lock");

    let guard = SysctlGuard::save(&commands);
    let mut failures = Vec::new();
    for c in &commands {
        let output = Command::new("timeout")
            .arg("60")
            .args(["bash", "-c", &format!("set -o pipefail\n{}", c.command)])
            .env("HOME", home.path())
            .env("LDAP_URI", &ldap_url)
            .env("LDAP_BASE", &ldap_base)
            .env("LDAP_BIND_DN", &bind_dn)
            .env("LDAP_PW_FILE", &pw_file)
            .env("RALPH_PG_URL", &pg.url)
            .env("RALPH_MYSQL_DB", &mysql.name)
            .output()
            .expect("bash");
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        if !output.status.success() {
            failures.push(format!("line {}: `{}` exited with {}\n{stdout}{stderr}", c.line, c.command, output.status));
            continue;
        }
        if !c.expected.is_empty() {
            let got: Vec<String> = stdout.lines().map(shape).collect();
            let want: Vec<String> = c.expected.iter().map(|l| shape(l)).collect();
            if got != want {
                failures.push(format!(
                    "line {}: `{}` printed\n{stdout}which does not have the shape of\n{}",
                    c.line,
                    c.command,
                    c.expected.join("\n")
                ));
            }
        }
        eprintln!("ok  line {}: {}", c.line, c.command);
    }
    let saved = guard.saved.clone();
    drop(guard);
    for (name, value) in &saved {
        let now = std::fs::read_to_string(sysctl_path(name)).expect("sysctl");
        assert_eq!(now.trim(), value, "{name} was not restored");
    }
    assert!(!saved.is_empty(), "the doc's sysctl -w commands were not seen");
    assert!(
        failures.is_empty(),
        "{} of {} commands failed:\n\n{}",
        failures.len(),
        commands.len(),
        failures.join("\n\n")
    );
}
