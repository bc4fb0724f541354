//! Scans addresses, networks and ranges with ralph-discovery and prints what answered.
//!
//! ```text
//! cargo run --release --example scan -- 127.0.0.1 --ports 1-65535
//! cargo run --release --example scan -- 198.18.0.0/20 --ports 80 --format json > hosts.jsonl
//! cargo run --release --example scan -- --targets-file racks.txt --format csv > hosts.csv
//! cargo run --release --example scan -- 127.0.0.0/24 --exclude 127.0.0.1 --store sqlite://scan.db?mode=rwc
//! ```
//!
//! `--help` lists every option. Results go to stdout (text, JSON lines or CSV); progress (a bar
//! with rate and ETA on a terminal, a plain line every few seconds otherwise) and the summary go
//! to stderr. With `--store URL` (SQLite, PostgreSQL or MySQL/MariaDB) results are recorded with
//! Ralph's autoscan rules. `RUST_LOG=ralph=debug` shows the engine's events.
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

use ralph_examples::causes;
use std::convert::Infallible;
use std::io::{self, BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use ralph_core::Secret;
use ralph_discovery::{
    BatchRecorder, HostResult, HostState, ProbeTimeouts, Progress, ScanConfig, Scanner, SnmpProbe, Targets, parse_ports,
};
use ralph_store::AnyStore;
use tokio::sync::watch;

/// The variable holding SNMP communities, comma-separated (the preferred way to pass them).
const COMMUNITIES_ENV: &str = "RALPH_SNMP_COMMUNITIES";

/// Scan addresses, ranges and networks with ralph-discovery and print the hosts that answered.
#[derive(Parser)]
#[command(
    name = "scan",
    // A repeated option replaces the earlier value, as the hand-written parser did.
    args_override_self = true,
    after_help = "Environment:\n  RALPH_SNMP_COMMUNITIES  SNMP v2c communities to try, comma-separated, before any --snmp \
                  (preferred: the environment is not visible in ps)\n  RUST_LOG                e.g. ralph=debug \
                  for the engine's events\n\nResults go to stdout; progress and the summary go to stderr."
)]
struct Args {
    /// Addresses, CIDRs and a-b ranges to scan, IPv4 or IPv6 (an argument may also hold a
    /// comma-separated list)
    #[arg(value_name = "TARGET", required_unless_present = "targets_file")]
    targets: Vec<String>,

    /// Read more targets from PATH, one a line; `#` starts a comment, blank lines are skipped,
    /// `-` reads stdin
    #[arg(long, value_name = "PATH")]
    targets_file: Option<PathBuf>,

    /// Leave these addresses, CIDRs or ranges out (comma-separated)
    #[arg(long, value_name = "LIST")]
    exclude: Option<String>,

    /// TCP ports whose answer (accept or reset) proves a host up: ports and ranges,
    /// comma-separated (e.g. 22,80,8000-8100)
    #[arg(short, long, value_name = "LIST", default_value = "22,80,443", value_parser = port_list)]
    ports: PortList,

    /// Record the results with Ralph's autoscan rules in this store: sqlite://FILE?mode=rwc,
    /// postgres://USER@HOST/DB or mysql://USER@HOST/DB
    #[arg(long, value_name = "URL")]
    store: Option<String>,

    /// How to print the results on stdout
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,

    /// The same as --format json (one JSON object per host)
    #[arg(long, conflicts_with = "format")]
    json: bool,

    /// Print hosts that are down or unknown too (by default only hosts that answered)
    #[arg(long)]
    all: bool,

    /// Do not ping (ICMP echo); only the TCP ports decide
    #[arg(long)]
    no_icmp: bool,

    /// Skip the HTTP family probe (http://, https://, http://:8006) on hosts that answered
    #[arg(long)]
    no_http: bool,

    /// An SNMP v2c community to try on hosts that answered (repeatable). ps shows it to every
    /// user: prefer RALPH_SNMP_COMMUNITIES
    #[arg(long = "snmp", value_name = "COMMUNITY", value_parser = secret)]
    snmp: Vec<Secret>,

    /// How long one TCP connect attempt may take, in milliseconds
    #[arg(long, value_name = "MS", default_value_t = 1500, value_parser = clap::value_parser!(u64).range(1..))]
    connect_timeout: u64,

    /// Seconds between progress lines when stderr is not a terminal (0: none)
    #[arg(long, value_name = "SECS", default_value_t = 5)]
    progress_interval: u64,
}

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    /// One aligned line per host
    Text,
    /// One JSON object per host (JSON lines)
    Json,
    /// CSV with a header row
    Csv,
}

/// A parsed `--ports` list (one value to clap, many ports).
#[derive(Debug, Clone)]
struct PortList(Vec<u16>);

fn port_list(s: &str) -> Result<PortList, String> {
    parse_ports(s).map(PortList).map_err(|e| e.to_string())
}

fn secret(s: &str) -> Result<Secret, Infallible> {
    Ok(Secret::new(s))
}

/// Communities from a comma-separated list; blanks around them and empty entries ignored.
fn communities_from(list: &str) -> Vec<Secret> {
    list.split(',').map(str::trim).filter(|c| !c.is_empty()).map(Secret::new).collect()
}

/// The items of one argument or file line: addresses, CIDRs and ranges separated by commas or
/// blanks.
fn items(text: &str) -> impl Iterator<Item = &str> {
    text.split(|c: char| c == ',' || c.is_whitespace()).filter(|i| !i.is_empty())
}

/// Adds the targets listed in `reader`, one a line, naming `name` and the line in any error.
fn read_targets(mut targets: Targets, reader: impl BufRead, name: &str) -> Result<Targets, String> {
    for (index, line) in reader.lines().enumerate() {
        let at = index + 1;
        let line = line.map_err(|e| format!("{name}:{at}: {e}"))?;
        let text = line.split('#').next().unwrap_or_default();
        for item in items(text) {
            targets = targets.include(item).map_err(|e| format!("{name}:{at}: {e}"))?;
        }
    }
    Ok(targets)
}

/// The targets of the command line and of `--targets-file`, minus `--exclude`.
fn targets(args: &Args) -> Result<Targets, String> {
    let mut targets = Targets::new();
    for item in args.targets.iter().flat_map(|a| items(a)) {
        targets = targets.include(item).map_err(|e| e.to_string())?;
    }
    if let Some(path) = &args.targets_file {
        targets = if path == Path::new("-") {
            read_targets(targets, io::stdin().lock(), "<stdin>")?
        } else {
            let name = path.display().to_string();
            let file = std::fs::File::open(path).map_err(|e| format!("{name}: {e}"))?;
            read_targets(targets, io::BufReader::new(file), &name)?
        };
    }
    if let Some(ex) = &args.exclude {
        targets = targets.exclude(ex).map_err(|e| e.to_string())?;
    }
    if targets.is_empty() {
        return Err("no targets".into());
    }
    Ok(targets)
}

/// Where results are written.
enum Output {
    Text,
    Json,
    // Boxed: the writer holds its buffer inline.
    Csv(Box<csv::Writer<io::Stdout>>),
}

impl Output {
    fn new(format: Format) -> io::Result<Self> {
        Ok(match format {
            Format::Text => Self::Text,
            Format::Json => Self::Json,
            Format::Csv => {
                let mut w = csv::Writer::from_writer(io::stdout());
                w.write_record([
                    "address",
                    "state",
                    "open_ports",
                    "closed_ports",
                    "http_family",
                    "http_server",
                    "snmp_name",
                    "snmp_description",
                    "seen_at",
                    "errors",
                ])?;
                w.flush()?;
                Self::Csv(Box::new(w))
            }
        })
    }

    fn write(&mut self, host: &HostResult) -> io::Result<()> {
        match self {
            Self::Text => {
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
                writeln!(io::stdout().lock(), "{line}")
            }
            Self::Json => {
                let line = serde_json::to_string(host)?;
                writeln!(io::stdout().lock(), "{line}")
            }
            Self::Csv(w) => {
                let ports = |p: &[u16]| p.iter().map(u16::to_string).collect::<Vec<_>>().join(" ");
                let state = match host.state {
                    HostState::Up => "up",
                    HostState::Down => "down",
                    HostState::Unknown => "unknown",
                };
                w.write_record([
                    host.address.to_string().as_str(),
                    state,
                    &ports(&host.open_ports),
                    &ports(&host.closed_ports),
                    host.http_family.as_deref().unwrap_or_default(),
                    host.http_server.as_deref().unwrap_or_default(),
                    host.snmp_name.as_deref().unwrap_or_default(),
                    host.snmp_description.as_deref().unwrap_or_default(),
                    &host.seen_at.to_rfc3339(),
                    &host.errors.join("; "),
                ])?;
                // Each host as it finishes, not in 8 KiB chunks (someone may be watching).
                w.flush()
            }
        }
    }
}

/// Progress on stderr: a bar on a terminal, plain periodic lines otherwise.
struct Reporter {
    bar: Option<ProgressBar>,
    task: tokio::task::JoinHandle<()>,
}

impl Reporter {
    fn start(mut progress: watch::Receiver<Progress>, total: u64, interval: Duration) -> Self {
        if io::stderr().is_terminal() {
            let bar = ProgressBar::new(total);
            bar.set_style(
                ProgressStyle::with_template(
                    "{bar:40} {pos}/{len} hosts {per_sec} eta {eta} [{elapsed_precise}] {msg}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            let shown = bar.clone();
            let task = tokio::spawn(async move {
                while progress.changed().await.is_ok() {
                    let p = progress.borrow_and_update().clone();
                    shown.set_position(p.done);
                    shown.set_message(format!(
                        "up {} down {} err {} | in flight {} | probe rate {:.0}/s | sockets {}/{} | neighbours {}/{}",
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
            });
            return Self { bar: Some(bar), task };
        }
        let task = tokio::spawn(async move {
            if interval.is_zero() {
                return;
            }
            let mut tick = tokio::time::interval(interval);
            tick.tick().await; // the first tick is immediate: nothing to say yet
            loop {
                tick.tick().await;
                let p = progress.borrow().clone();
                if p.finished {
                    return;
                }
                eprintln!("{}", progress_line(&p, total));
            }
        });
        Self { bar: None, task }
    }

    /// Runs `f` (which writes to stdout) with the bar out of the way.
    fn suspend<R>(&self, f: impl FnOnce() -> R) -> R {
        match &self.bar {
            Some(bar) => bar.suspend(f),
            None => f(),
        }
    }

    fn finish(self) {
        self.task.abort();
        if let Some(bar) = self.bar {
            bar.finish_and_clear();
        }
    }
}

/// One plain progress line: done of total, counts, rate and ETA.
fn progress_line(p: &Progress, total: u64) -> String {
    let (percent, eta) = {
        let percent = if total == 0 { 100.0 } else { p.done as f64 * 100.0 / total as f64 };
        let left = total.saturating_sub(p.done) as f64;
        let eta = if p.hosts_per_sec > 0.0 { format!("{:.0} s", left / p.hosts_per_sec) } else { "?".to_owned() };
        (percent, eta)
    };
    format!(
        "progress: {}/{total} hosts ({percent:.1}%), up {}, down {}, errors {}, {:.0} hosts/s, eta {eta}, \
         elapsed {:.0} s",
        p.done, p.up, p.down, p.errors, p.hosts_per_sec, p.elapsed_secs
    )
}

fn usage(msg: &str) -> ExitCode {
    eprintln!("scan: {msg}\n(scan --help lists the options)");
    ExitCode::from(2)
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let mut communities = std::env::var(COMMUNITIES_ENV).map(|v| communities_from(&v)).unwrap_or_default();
    if !args.snmp.is_empty() {
        eprintln!("warning: --snmp puts the community on the command line (visible in ps); prefer {COMMUNITIES_ENV}");
        communities.extend(args.snmp.iter().cloned());
    }
    let format = if args.json { Format::Json } else { args.format };
    let targets = match targets(&args) {
        Ok(t) => t,
        Err(e) => return usage(&e),
    };
    let store = match &args.store {
        Some(url) => match AnyStore::connect(url).await {
            Ok(s) => Some(Arc::new(s)),
            // The error never holds the URL (it may hold a password).
            Err(e) => return usage(&format!("store: {}", causes(&e))),
        },
        None => None,
    };

    let timeouts = ProbeTimeouts { connect: Duration::from_millis(args.connect_timeout), ..ProbeTimeouts::default() };
    let mut config = ScanConfig::default().ports(args.ports.0.clone()).icmp(!args.no_icmp).timeouts(timeouts);
    if args.no_http {
        config = config.http(None);
    }
    if !communities.is_empty() {
        config = config.snmp(Some(SnmpProbe::new(communities)));
    }
    let total = u64::try_from(targets.len()).unwrap_or(u64::MAX);
    let scanner = match Scanner::new(config) {
        Ok(scanner) => scanner,
        Err(e) => return usage(&format!("{e}")),
    };
    let mut output = match Output::new(format) {
        Ok(o) => Some(o),
        Err(e) => {
            eprintln!("stdout: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut handle = scanner.start(targets.addresses());
    let reporter = Reporter::start(handle.progress.clone(), total, Duration::from_secs(args.progress_interval));
    let mut recorder = store.map(BatchRecorder::new);
    let mut failed_store = None;
    let mut failed_output = None;
    while let Some(host) = handle.results.recv().await {
        if let Some(rec) = recorder.as_mut()
            && let Err(e) = rec.push(&host).await
        {
            failed_store.get_or_insert(e);
        }
        if !args.all && host.state != HostState::Up {
            continue;
        }
        // A closed stdout (`scan ... | head`) ends the printing, not the scan or its recording.
        if let Some(out) = output.as_mut()
            && let Err(e) = reporter.suspend(|| out.write(&host))
        {
            output = None;
            failed_output = Some(e);
        }
    }
    let summary = match handle.finish().await {
        Ok(s) => s,
        Err(e) => {
            reporter.finish();
            eprintln!("scan failed: {}", causes(&e));
            return ExitCode::FAILURE;
        }
    };
    reporter.finish();
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
    let mut code = ExitCode::SUCCESS;
    if let Some(e) = failed_output
        && e.kind() != io::ErrorKind::BrokenPipe
    {
        eprintln!("stdout: {e}");
        code = ExitCode::FAILURE;
    }
    if let Some(e) = failed_store {
        eprintln!("store error: {}", causes(&e));
        code = ExitCode::FAILURE;
    }
    code
}
