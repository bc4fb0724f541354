//! Scans addresses, networks and ranges with ralph-discovery and prints what answered.
//!
//! ```text
//! cargo run --release --example scan -- 127.0.0.1 --ports 1-65535
//! cargo run --release --example scan -- 198.18.0.0/20 --ports 80 --json > hosts.jsonl
//! cargo run --release --example scan -- 127.0.0.0/24 --exclude 127.0.0.1 --store sqlite://scan.db?mode=rwc
//! ```
//!
//! Options: `--ports LIST` (default 22,80,443), `--exclude LIST`, `--store URL` (SQLite: results
//! are recorded with Ralph's autoscan rules), `--json` (one JSON object per host on stdout),
//! `--no-icmp`, `--no-http`, `--all` (print down hosts too).
//! A progress bar and the summary go to stderr. `RUST_LOG=ralph=debug` shows the engine's events.
//!
//! SNMP communities are secrets: pass them in the environment, comma-separated, which other
//! users cannot read (unlike the command line, which `ps` shows to everyone):
//!
//! ```text
//! RALPH_SNMP_COMMUNITIES='first,second' cargo run --release --example scan -- 198.18.0.0/20
//! ```
//!
//! `--snmp COMMUNITY` (repeatable) still works but puts the community on the command line;
//! communities from the environment are tried first.

use std::process::ExitCode;
use std::sync::Arc;

use indicatif::{ProgressBar, ProgressStyle};
use ralph_core::Secret;
use ralph_discovery::{BatchRecorder, HostState, ScanConfig, Scanner, SnmpProbe, Targets, parse_ports};
use ralph_store::SqliteStore;

struct Args {
    targets: String,
    exclude: Option<String>,
    ports: Vec<u16>,
    store: Option<String>,
    json: bool,
    icmp: bool,
    http: bool,
    all: bool,
    communities: Vec<Secret>,
}

/// The variable holding SNMP communities, comma-separated (the preferred way to pass them).
const COMMUNITIES_ENV: &str = "RALPH_SNMP_COMMUNITIES";

/// Communities from a comma-separated list; blanks around them and empty entries ignored.
fn communities_from(list: &str) -> Vec<Secret> {
    list.split(',').map(str::trim).filter(|c| !c.is_empty()).map(Secret::new).collect()
}

fn usage(msg: &str) -> ExitCode {
    eprintln!(
        "{msg}\nusage: scan TARGETS [--ports LIST] [--exclude LIST] [--store URL] [--json] [--snmp COMMUNITY] \
         [--no-icmp] [--no-http] [--all]\n\
         SNMP communities: prefer {COMMUNITIES_ENV}=a,b in the environment (--snmp shows them in ps)"
    );
    ExitCode::from(2)
}

fn parse_args() -> Result<Args, String> {
    let mut args = std::env::args().skip(1);
    let mut out = Args {
        targets: String::new(),
        exclude: None,
        ports: vec![22, 80, 443],
        store: None,
        json: false,
        icmp: true,
        http: true,
        all: false,
        communities: std::env::var(COMMUNITIES_ENV).map(|v| communities_from(&v)).unwrap_or_default(),
    };
    let mut targets = Vec::new();
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or_else(|| format!("{name} needs a value"));
        match arg.as_str() {
            "--ports" | "-p" => out.ports = parse_ports(&value("--ports")?).map_err(|e| e.to_string())?,
            "--exclude" => out.exclude = Some(value("--exclude")?),
            "--store" => out.store = Some(value("--store")?),
            "--snmp" => {
                eprintln!(
                    "warning: --snmp puts the community on the command line (visible in ps); prefer {COMMUNITIES_ENV}"
                );
                out.communities.push(Secret::new(value("--snmp")?));
            }
            "--json" => out.json = true,
            "--no-icmp" => out.icmp = false,
            "--no-http" => out.http = false,
            "--all" => out.all = true,
            "-h" | "--help" => return Err(String::new()),
            other if other.starts_with('-') => return Err(format!("unknown option {other}")),
            other => targets.push(other.to_owned()),
        }
    }
    if targets.is_empty() {
        return Err("no targets".into());
    }
    out.targets = targets.join(",");
    Ok(out)
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => return usage(&e),
    };
    let mut targets = match Targets::parse(&args.targets) {
        Ok(t) => t,
        Err(e) => return usage(&e.to_string()),
    };
    if let Some(ex) = &args.exclude {
        targets = match targets.exclude(ex) {
            Ok(t) => t,
            Err(e) => return usage(&e.to_string()),
        };
    }
    let store = match &args.store {
        Some(url) if url.starts_with("sqlite:") => match SqliteStore::connect(url).await {
            Ok(s) => match s.migrate().await {
                Ok(()) => Some(Arc::new(s)),
                Err(e) => return usage(&format!("store migration failed: {e}")),
            },
            Err(e) => return usage(&format!("store: {e}")),
        },
        Some(_) => return usage("this example records to SQLite URLs (sqlite://FILE?mode=rwc)"),
        None => None,
    };

    let mut config = ScanConfig::default().ports(args.ports.clone()).icmp(args.icmp);
    if !args.http {
        config = config.http(None);
    }
    if !args.communities.is_empty() {
        config = config.snmp(Some(SnmpProbe::new(args.communities.clone())));
    }
    let total = targets.len() as u64;
    let scanner = match Scanner::new(config) {
        Ok(scanner) => scanner,
        Err(e) => return usage(&format!("{e}")),
    };
    let mut handle = scanner.start(targets.addresses());
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} hosts {msg} [{elapsed_precise}, eta {eta}]")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut progress = handle.progress.clone();
    let ticker = {
        let bar = bar.clone();
        tokio::spawn(async move {
            while progress.changed().await.is_ok() {
                let p = progress.borrow().clone();
                bar.set_position(p.done);
                bar.set_message(format!(
                    "up {} down {} err {} | in flight {} | rate {:.0}/s | sockets {}/{} | neighbours {}/{}",
                    p.up,
                    p.down,
                    p.errors,
                    p.in_flight,
                    p.rate_limit,
                    p.sockets_in_use,
                    p.socket_budget,
                    p.neighbour_in_use,
                    p.neighbour_budget
                ));
            }
        })
    };
    let mut recorder = store.map(BatchRecorder::new);
    let mut failed_store = None;
    while let Some(host) = handle.results.recv().await {
        if let Some(rec) = recorder.as_mut()
            && let Err(e) = rec.push(&host).await
        {
            failed_store.get_or_insert(e);
        }
        if !args.all && host.state != HostState::Up {
            continue;
        }
        if args.json {
            match serde_json::to_string(&host) {
                Ok(line) => bar.suspend(|| println!("{line}")),
                Err(e) => eprintln!("json: {e}"),
            }
        } else {
            let mut line = format!("{:<39} {:?}", host.address, host.state);
            if !host.open_ports.is_empty() {
                line.push_str(&format!(" open {:?}", host.open_ports));
            }
            if let Some(f) = &host.http_family {
                line.push_str(&format!(" http {f}"));
            }
            if let Some(n) = &host.snmp_name {
                line.push_str(&format!(" snmp {n}"));
            }
            bar.suspend(|| println!("{line}"));
        }
    }
    let summary = match handle.finish().await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("scan failed: {e}");
            return ExitCode::FAILURE;
        }
    };
    ticker.abort();
    bar.finish_and_clear();
    if let Some(rec) = recorder.as_mut() {
        match rec.flush().await {
            Ok(_) => {
                let t = rec.total();
                eprintln!(
                    "store: {} recorded ({} inserted, {} updated, {} changed)",
                    rec.recorded(),
                    t.inserted,
                    t.updated,
                    t.changed
                );
            }
            Err(e) => {
                failed_store.get_or_insert(e);
            }
        }
    }
    eprintln!(
        "{} hosts in {:.2} s: {} up, {} down, {} unknown | {} connects, {} timeouts, {} ENOBUFS/EAGAIN, {} EMFILE | \
         sockets {}→{} | rate halvings {} | neighbour entries deleted {} | table_fulls +{}",
        summary.hosts,
        summary.elapsed_secs,
        summary.up,
        summary.down,
        summary.unknown,
        summary.attempts,
        summary.timeouts,
        summary.congestion_errors,
        summary.fd_errors,
        summary.socket_budget_start,
        summary.socket_budget_end,
        summary.rate_halvings,
        summary.neighbour_entries_deleted,
        summary.table_fulls_delta,
    );
    if let Some(e) = failed_store {
        eprintln!("store error: {e}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
