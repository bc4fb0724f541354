//! The example programs run as their users run them: the binaries cargo built, spawned with
//! real command lines. `--help` of each documents every flag; `scan` on loopback targets (a
//! listener of the test's own, a closed port, and a silent host that answers nothing) gives the
//! right up/down answers as text, JSON lines and CSV, reads targets from a file or stdin (and
//! names the file and line of a bad one), and records what it found in a SQLite, PostgreSQL
//! or MariaDB store, read back here through ralph-store.
//!
//! `cargo test` and `cargo nextest` build the examples with the tests; when one is missing or
//! older than its source (`cargo test --test example_cli` builds no examples), it is built
//! here with `cargo build --example`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use ralph_core::InventoryStore;
use ralph_store::AnyStore;
use tokio::io::AsyncWriteExt;

mod common;
use common::{Backend, FreshDb};

/// How long one run of an example may take (a build on a busy machine included).
const RUN_TIMEOUT: Duration = Duration::from_secs(600);

/// The directory cargo puts example binaries in, beside this test binary's `deps/`.
fn examples_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary");
    let profile_dir = exe.parent().and_then(Path::parent).expect("target/<profile>/deps/<test>");
    profile_dir.join("examples")
}

fn modified(path: &Path) -> Option<std::time::SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// The example binary `name`, built first when it is missing or older than its source.
fn example(name: &str) -> PathBuf {
    let bin = examples_dir().join(name);
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples").join(format!("{name}.rs"));
    let fresh = matches!((modified(&bin), modified(&source)), (Some(b), Some(s)) if b >= s);
    if !fresh {
        let release = examples_dir().parent().and_then(Path::file_name).is_some_and(|p| p == "release");
        let mut cmd = std::process::Command::new(env!("CARGO"));
        cmd.args(["build", "--quiet", "-p", "ralph-examples", "--example", name])
            .current_dir(env!("CARGO_MANIFEST_DIR"));
        if release {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("run cargo build");
        assert!(status.success(), "cargo build --example {name}: {status}");
    }
    assert!(bin.exists(), "{} after the build", bin.display());
    bin
}

/// Runs an example with `args` (and `stdin`), killed after [`RUN_TIMEOUT`].
async fn run(name: &str, args: &[&str], stdin: Option<&str>) -> Output {
    let mut cmd = tokio::process::Command::new(example(name));
    cmd.args(args)
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env_remove("RUST_LOG")
        .env_remove("RALPH_SNMP_COMMUNITIES")
        .env_remove("RALPH_SNMP_COMMUNITY")
        .env_remove("RALPH_STORE_URL")
        .kill_on_drop(true);
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {name}: {e}"));
    if let Some(text) = stdin {
        let mut pipe = child.stdin.take().expect("stdin");
        pipe.write_all(text.as_bytes()).await.expect("write stdin");
        drop(pipe);
    }
    match tokio::time::timeout(RUN_TIMEOUT, child.wait_with_output()).await {
        Ok(out) => out.expect("wait"),
        Err(_) => panic!("{name} {args:?} ran longer than {RUN_TIMEOUT:?}"),
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs `scan` and insists it succeeded; returns stdout.
async fn scan_ok(args: &[&str], stdin: Option<&str>) -> String {
    let out = run("scan", args, stdin).await;
    assert!(out.status.success(), "scan {args:?}: {}\n{}", out.status, text(&out.stderr));
    text(&out.stdout)
}

// ---------------------------------------------------------------------------------------------
// --help

/// Whether a help line starts an option (`-p, --ports <LIST>`, `--all`), not a list item.
fn is_option(line: &str) -> bool {
    let t = line.trim_start();
    t.starts_with("--") || (t.starts_with('-') && t.as_bytes().get(1).is_some_and(u8::is_ascii_alphanumeric))
}

/// The help text of each option: what follows its spec on its line, and the lines under it up
/// to the next option (clap puts it there when some option's help is long).
fn option_help(help: &str) -> Vec<(String, String)> {
    let mut options: Vec<(String, String)> = Vec::new();
    for line in help.lines() {
        if is_option(line) {
            let t = line.trim_start();
            let (spec, text) = t.split_once("  ").unwrap_or((t, ""));
            options.push((spec.to_owned(), text.trim().to_owned()));
        } else if let Some((_, text)) = options.last_mut() {
            if line.starts_with(|c: char| !c.is_whitespace()) {
                break; // the next section (Environment:, ...)
            }
            text.push(' ');
            text.push_str(line.trim());
        }
    }
    options
}

/// `--help` of `name` exits 0, says what the program does, describes every option it lists,
/// and documents each `(flag, words)` with its doc comment (`words` taken from it).
async fn assert_help(name: &str, about: &str, flags: &[(&str, &str)]) {
    let out = run(name, &["--help"], None).await;
    assert!(out.status.success(), "{name} --help: {}\n{}", out.status, text(&out.stderr));
    let help = text(&out.stdout);
    assert!(help.contains(about), "{name} --help has no about ({about:?}):\n{help}");
    let options = option_help(&help);
    for (spec, text) in &options {
        assert!(!text.trim().is_empty(), "{name} --help: {spec} has no description:\n{help}");
    }
    for (flag, words) in flags {
        let (_, text) = options
            .iter()
            .find(|(spec, _)| spec.split([',', ' ']).any(|w| w == *flag))
            .unwrap_or_else(|| panic!("{name} --help does not list {flag}:\n{help}"));
        assert!(text.contains(words), "{name} --help: {flag} is not documented with {words:?}: {text:?}\n{help}");
    }
    // Nothing listed that the test does not know of: a new flag gets a line here.
    for (spec, _) in &options {
        let known = flags.iter().any(|(flag, _)| spec.split([',', ' ']).any(|w| w == *flag));
        assert!(known, "{name} --help lists {spec:?}, which this test does not check");
    }
}

#[tokio::test]
async fn every_example_documents_every_flag_in_help() {
    assert_help("quickstart", "Build a small data centre", &[("--help", "Print help")]).await;
    assert_help(
        "ldap_login",
        "Log a user in through the chain",
        &[("--store", "mirrored into"), ("--help", "Print help")],
    )
    .await;
    assert_help("ldap_sync", "Ralph's ldap_sync", &[("--store", "synced into"), ("--help", "Print help")]).await;
    assert_help(
        "reconcile",
        "Reconcile scan facts with the inventory",
        &[
            ("--snmp", "SNMP v2c agent"),
            ("--community", "SNMP community"),
            ("--facts", "facts from a JSON file"),
            ("--store", "inventory store"),
            ("--apply", "Apply the plan"),
            ("--help", "Print help"),
        ],
    )
    .await;
    assert_help(
        "scan",
        "Scan addresses, ranges and networks",
        &[
            ("--targets-file", "one a line"),
            ("--exclude", "Leave these"),
            ("--ports", "proves a host up"),
            ("-p", "proves a host up"),
            ("--store", "autoscan rules"),
            ("--format", "How to print"),
            ("--json", "--format json"),
            ("--all", "down or unknown"),
            ("--no-icmp", "ICMP"),
            ("--no-http", "HTTP family probe"),
            ("--snmp", "SNMP v2c community"),
            ("--connect-timeout", "milliseconds"),
            ("--progress-interval", "progress lines"),
            ("--help", "Print help"),
        ],
    )
    .await;

    // The positional arguments and the environment are in the help too.
    let help = text(&run("ldap_login", &["--help"], None).await.stdout);
    assert!(help.contains("<CONFIG.toml>") && help.contains("<USERNAME>"), "{help}");
    assert!(help.contains("RALPH_LDAP_PASSWORD") && help.contains("[env: RALPH_STORE_URL"), "{help}");
    let help = text(&run("reconcile", &["--help"], None).await.stdout);
    assert!(help.contains("[env: RALPH_SNMP_COMMUNITY"), "{help}");
    let help = text(&run("scan", &["--help"], None).await.stdout);
    assert!(help.contains("[TARGET]...") && help.contains("RALPH_SNMP_COMMUNITIES"), "{help}");
    assert!(help.contains("text") && help.contains("json") && help.contains("csv"), "the formats: {help}");
}

#[tokio::test]
async fn bad_command_lines_are_usage_errors() {
    for (name, args) in [
        ("scan", &[][..]),
        ("scan", &["127.0.0.1", "--frobnicate"][..]),
        ("scan", &["127.0.0.1", "--ports", "0-x"][..]),
        ("scan", &["127.0.0.1", "--json", "--format", "csv"][..]),
        ("ldap_login", &["only-one-argument"][..]),
        ("ldap_sync", &[][..]),
        ("reconcile", &[][..]),
        ("reconcile", &["--facts", "f.json", "--snmp", "127.0.0.1:161", "--community", "c"][..]),
        ("reconcile", &["--snmp", "127.0.0.1:161"][..]),
    ] {
        let out = run(name, args, None).await;
        assert_eq!(out.status.code(), Some(2), "{name} {args:?}: {}", text(&out.stderr));
        assert!(!out.stderr.is_empty(), "{name} {args:?} says why");
    }
}

// ---------------------------------------------------------------------------------------------
// scan on loopback

/// Loopback targets: 127.0.0.1 with a port the test listens on and a closed one, and a silent
/// host (another loopback address whose listeners on both ports have full accept queues, so
/// the kernel drops the SYNs and every connect times out).
struct Lab {
    open: u16,
    closed: u16,
    silent: IpAddr,
    _listener: TcpListener,
    _silent: Vec<(tokio::net::TcpListener, Vec<TcpStream>)>,
}

static LAB_COUNTER: AtomicU32 = AtomicU32::new(0);

/// A listener on `addr` with a backlog of 0 whose accept queue is full (checked).
fn silent_listener(addr: SocketAddr) -> (tokio::net::TcpListener, Vec<TcpStream>) {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.bind(addr).expect("bind a silent listener");
    let listener = socket.listen(0).expect("listen");
    let target = listener.local_addr().expect("addr");
    let mut fill = Vec::new();
    loop {
        // A connect that completes went into the queue; one that times out proves it full.
        match TcpStream::connect_timeout(&target, Duration::from_millis(100)) {
            Ok(s) => fill.push(s),
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => break,
            Err(e) => panic!("filling the accept queue of {target}: {e}"),
        }
        assert!(fill.len() < 8, "the accept queue of {target} does not fill");
    }
    (listener, fill)
}

impl Lab {
    fn new() -> Self {
        let localhost = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let listener = TcpListener::bind((localhost, 0)).expect("listen on 127.0.0.1");
        let open = listener.local_addr().expect("addr").port();
        // A silent address of this process's own, so parallel test processes do not share one.
        let n = LAB_COUNTER.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let silent = IpAddr::V4(Ipv4Addr::new(127, 121, (pid % 250) as u8 + 1, (pid / 250 % 200) as u8 + 1 + n as u8));
        let first = silent_listener(SocketAddr::new(silent, 0));
        let closed = first.0.local_addr().expect("addr").port();
        let refused = TcpStream::connect_timeout(&SocketAddr::new(localhost, closed), Duration::from_secs(2));
        assert!(
            refused.as_ref().is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionRefused),
            "port {closed} on 127.0.0.1 should be closed: {refused:?}"
        );
        let second = silent_listener(SocketAddr::new(silent, open));
        Self { open, closed, silent, _listener: listener, _silent: vec![first, second] }
    }

    fn ports(&self) -> String {
        format!("{},{}", self.open, self.closed)
    }

    /// `scan` arguments for the lab's ports, fast on silent hosts, down hosts printed too.
    fn args<'a>(&'a self, ports: &'a str, more: &[&'a str]) -> Vec<&'a str> {
        let mut args = vec!["--ports", ports, "--no-icmp", "--no-http", "--connect-timeout", "300", "--all"];
        args.extend_from_slice(more);
        args
    }
}

#[tokio::test]
async fn scan_tells_up_from_down_on_loopback_as_text_json_and_csv() {
    let lab = Lab::new();
    let ports = lab.ports();
    let silent = lab.silent.to_string();

    // Text: one line per host, only those that answered without --all.
    let out =
        scan_ok(&["127.0.0.1", &silent, "--ports", &ports, "--no-icmp", "--no-http", "--connect-timeout", "300"], None)
            .await;
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 1, "only the host that answered: {out}");
    assert!(lines[0].starts_with("127.0.0.1 ") && lines[0].contains(" Up"), "{out}");
    assert!(lines[0].contains(&format!("open [{}]", lab.open)), "{out}");
    let out = scan_ok(&lab.args(&ports, &["127.0.0.1", &silent]), None).await;
    let states: Vec<(&str, &str)> = out
        .lines()
        .map(|l| {
            let mut w = l.split_whitespace();
            (w.next().unwrap_or_default(), w.next().unwrap_or_default())
        })
        .collect();
    assert_eq!(states, [("127.0.0.1", "Up"), (silent.as_str(), "Down")], "{out}");

    // JSON lines, with --format json and with the older --json.
    for flag in [&["--format", "json"][..], &["--json"][..]] {
        let mut args = lab.args(&ports, &["127.0.0.1", &silent]);
        args.extend_from_slice(flag);
        let out = scan_ok(&args, None).await;
        let hosts: Vec<serde_json::Value> =
            out.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}"))).collect();
        assert_eq!(hosts.len(), 2, "{out}");
        let up = &hosts[0];
        assert_eq!(up["address"], "127.0.0.1");
        assert_eq!(up["state"], "up");
        assert_eq!(up["open_ports"], serde_json::json!([lab.open]));
        assert_eq!(up["closed_ports"], serde_json::json!([lab.closed]));
        let down = &hosts[1];
        assert_eq!(down["address"], silent.as_str());
        assert_eq!(down["state"], "down");
        assert_eq!(down["open_ports"], serde_json::json!([]));
        assert_eq!(down["closed_ports"], serde_json::json!([]));
    }

    // CSV with a header row, read back with the csv crate.
    let out = scan_ok(&lab.args(&ports, &["127.0.0.1", &silent, "--format", "csv"]), None).await;
    let mut reader = csv::Reader::from_reader(out.as_bytes());
    let header = reader.headers().expect("header").clone();
    for column in ["address", "state", "open_ports", "closed_ports", "http_family", "seen_at", "errors"] {
        assert!(header.iter().any(|h| h == column), "{column} in {header:?}");
    }
    let col = |name: &str| header.iter().position(|h| h == name).expect("column");
    let rows: Vec<csv::StringRecord> = reader.records().map(|r| r.expect("a CSV row")).collect();
    assert_eq!(rows.len(), 2, "{out}");
    assert_eq!(&rows[0][col("address")], "127.0.0.1");
    assert_eq!(&rows[0][col("state")], "up");
    assert_eq!(&rows[0][col("open_ports")], lab.open.to_string());
    assert_eq!(&rows[0][col("closed_ports")], lab.closed.to_string());
    assert_eq!(&rows[1][col("address")], silent.as_str());
    assert_eq!(&rows[1][col("state")], "down");
    assert_eq!(&rows[1][col("open_ports")], "");
}

#[tokio::test]
async fn scan_reads_targets_from_a_file_and_from_stdin() {
    let lab = Lab::new();
    let ports = lab.ports();
    let silent = lab.silent.to_string();
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("targets.txt");
    let list =
        format!("# the lab\n\n127.0.0.1   # the test's listener\n   \n# {silent} is the silent one:\n{silent}\n");
    std::fs::write(&file, &list).expect("write the targets");
    let file_arg = file.display().to_string();

    let addresses = |out: &str| -> Vec<(String, String)> {
        out.lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).expect("a JSON line");
                (
                    v["address"].as_str().unwrap_or_default().to_owned(),
                    v["state"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect()
    };
    let expected = [("127.0.0.1".to_owned(), "up".to_owned()), (silent.clone(), "down".to_owned())];

    let out = scan_ok(&lab.args(&ports, &["--targets-file", &file_arg, "--format", "json"]), None).await;
    assert_eq!(addresses(&out), expected, "{out}");
    let out = scan_ok(&lab.args(&ports, &["--targets-file", "-", "--format", "json"]), Some(&list)).await;
    assert_eq!(addresses(&out), expected, "from stdin: {out}");
    // Arguments and a file together: the union, each address once.
    let only_silent = dir.path().join("silent.txt");
    std::fs::write(&only_silent, format!("{silent}\n")).expect("write");
    let out = scan_ok(
        &lab.args(&ports, &["127.0.0.1", "--targets-file", &only_silent.display().to_string(), "--format", "json"]),
        None,
    )
    .await;
    assert_eq!(addresses(&out), expected, "arguments and a file: {out}");
}

#[tokio::test]
async fn a_bad_line_in_the_targets_file_is_named_with_its_file_and_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("broken.txt");
    std::fs::write(&file, "# fine so far\n127.0.0.1\nnot-an-address\n127.0.0.2\n").expect("write");
    let out = run("scan", &["--targets-file", &file.display().to_string(), "--no-icmp", "--no-http"], None).await;
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "a bad target must fail: {stderr}");
    assert!(stderr.contains(&format!("{}:3:", file.display())), "the file and line are named: {stderr}");
    assert!(stderr.contains("not-an-address"), "the bad text is quoted: {stderr}");
    assert!(out.stdout.is_empty(), "nothing was scanned: {}", text(&out.stdout));

    let out = run("scan", &["--targets-file", "-"], Some("127.0.0.1\n\n10.0.0.1-x\n")).await;
    let stderr = text(&out.stderr);
    assert!(!out.status.success() && stderr.contains("<stdin>:3:"), "{stderr}");

    let missing = dir.path().join("missing.txt");
    let out = run("scan", &["--targets-file", &missing.display().to_string()], None).await;
    let stderr = text(&out.stderr);
    assert!(!out.status.success() && stderr.contains(&missing.display().to_string()), "{stderr}");
}

// ---------------------------------------------------------------------------------------------
// scan --store

/// `scan --store URL` records the host that answered (alive: a row with `last_seen`) and not
/// the silent one (an unknown address is inserted only when alive); read back through
/// ralph-store on the same URL. A second run updates the row instead of adding one.
async fn scan_records_to(db: FreshDb) {
    let lab = Lab::new();
    let ports = lab.ports();
    let silent = lab.silent.to_string();
    let before = chrono::Utc::now() - chrono::Duration::seconds(1);
    let out = run("scan", &lab.args(&ports, &["127.0.0.1", &silent, "--store", &db.url]), None).await;
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "scan --store: {}\n{stderr}", out.status);
    assert!(stderr.contains("store: 2 recorded"), "both hosts went to the store: {stderr}");
    // The URL (it may hold a password) is never printed.
    assert!(!stderr.contains(&db.url), "{stderr}");

    let store = AnyStore::connect(&db.url).await.expect("open the store the scan wrote");
    let row = store.find_ip(IpAddr::V4(Ipv4Addr::LOCALHOST)).await.expect("find").expect("127.0.0.1 was recorded");
    assert!(row.value.last_seen.is_some_and(|t| t >= before), "{:?}", row.value);
    assert_eq!(row.value.dead_ping_count, 0);
    assert!(store.find_ip(lab.silent).await.expect("find").is_none(), "a silent unknown address is not inserted");

    let out = run("scan", &lab.args(&ports, &["127.0.0.1", "--store", &db.url]), None).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let again = store.find_ip(IpAddr::V4(Ipv4Addr::LOCALHOST)).await.expect("find").expect("still there");
    assert_eq!(again.id, row.id, "the second run updated the same row");
    assert!(again.value.last_seen >= row.value.last_seen);
    drop(store);
    db.drop_db().await;
}

#[tokio::test]
async fn scan_records_to_a_sqlite_store() {
    let db = FreshDb::new(Backend::Sqlite, "cli").await.expect("a SQLite file needs no service");
    scan_records_to(db).await;
}

#[tokio::test]
async fn scan_records_to_postgres() {
    let Some(db) = FreshDb::new(Backend::Postgres, "cli").await else { return };
    scan_records_to(db).await;
}

#[tokio::test]
async fn scan_records_to_mariadb() {
    let Some(db) = FreshDb::new(Backend::MySql, "cli").await else { return };
    scan_records_to(db).await;
}

#[tokio::test]
async fn scan_prints_plain_progress_lines_when_stderr_is_not_a_terminal() {
    let lab = Lab::new();
    let ports = lab.ports();
    let silent = lab.silent.to_string();
    // The silent host takes two 1.5 s connects (a later --connect-timeout replaces the
    // earlier one): longer than the 1 s interval.
    let out = run(
        "scan",
        &lab.args(&ports, &[&silent, "127.0.0.1", "--progress-interval", "1", "--connect-timeout", "1500"]),
        None,
    )
    .await;
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.lines().any(|l| l.starts_with("progress: ") && l.contains("hosts/s") && l.contains("eta")),
        "{stderr}"
    );
    assert!(!text(&out.stdout).contains("progress"), "progress stays off stdout");
    assert!(stderr.contains("2 hosts in"), "the summary: {stderr}");
}
