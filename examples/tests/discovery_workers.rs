//! Supervised discovery workers on real stores and loopback targets: a stolen lease stops the
//! first worker's scan and it records nothing; a poison job whose worker process is SIGKILLed
//! on every attempt is dead-lettered after `max_attempts` and the queue goes on; worker
//! processes and tasks on one queue with overlapping targets scan each job exactly once
//! (SQLite, PostgreSQL, MariaDB); a worker whose database connections are killed mid-run keeps
//! running, loses no target and records no host twice (each batch is recorded under a key, so a
//! retry of a batch whose COMMIT outcome the kill hid writes nothing); so does a worker whose
//! database server (a private PostgreSQL or MariaDB) is stopped mid-scan and started again.
//!
//! "Exactly once" is read from the store: the targets are silent hosts with an address row
//! each, and every recording of a silent host adds one to its `dead_ping_count`, so the count
//! is the number of times the host was recorded. A silent host is a loopback address with a
//! listener whose accept queue is full: the kernel drops the SYNs and the connect times out.
//!
//! Worker processes are this test binary run again with `--ignored --exact
//! discovery_worker_child` and their job in `RALPH_DISCOVERY_WORKER`.

use std::net::{IpAddr, SocketAddr};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use ralph_core::{InventoryStore, IpAddress, JobQueue, JobState, QueueAdmin, Repository, RetryPolicy, ScanResultStore};
use ralph_discovery::{
    CancellationToken, ProbeTimeouts, RateConfig, ScanConfig, Scanner, Worker, WorkerConfig, WorkerStats,
    enqueue_targets,
};
use ralph_store::sqlx::{self, Connection as _};
use ralph_store::{MySqlStore, PgStore, SqliteStore};
use ralph_testkit::{PrivateDb, PrivateKind};

const CHILD_VAR: &str = "RALPH_DISCOVERY_WORKER";
const CHILD_REPORT: &str = "DISCOVERY_WORKER_STATS";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    Sqlite,
    Postgres,
    MySql,
}

/// A database made for one test: a SQLite file, or `<base>_<tag>_<pid>_<n>` on the server of
/// `RALPH_TEST_PG_URL` / `RALPH_TEST_MYSQL_URL` (the run's teardown drops `<base>_*`).
struct FreshDb {
    url: String,
    _dir: Option<tempfile::TempDir>,
}

static DB_COUNTER: AtomicU32 = AtomicU32::new(0);

impl FreshDb {
    /// `None` after a printed skip when the server's variable is missing (a panic under CI).
    async fn new(backend: Backend, tag: &str) -> Option<Self> {
        let var = match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("temp dir");
                let url = format!("sqlite://{}?mode=rwc", dir.path().join("ralph.sqlite3").display());
                return Some(Self { url, _dir: Some(dir) });
            }
            Backend::Postgres => "RALPH_TEST_PG_URL",
            Backend::MySql => "RALPH_TEST_MYSQL_URL",
        };
        let base_url = ralph_testkit::service(var)?;
        let (head, query) = base_url.find('?').map_or((base_url.as_str(), ""), |i| base_url.split_at(i));
        let cut = head.rfind('/').map_or(head.len(), |i| i + 1);
        let (prefix, base) = head.split_at(cut);
        let suffix = format!("_{tag}_{}_{}", std::process::id(), DB_COUNTER.fetch_add(1, Ordering::Relaxed));
        let name = format!("{}{suffix}", &base[..base.len().min(63 - suffix.len())]);
        let create = match backend {
            Backend::Postgres => format!("CREATE DATABASE \"{name}\" ENCODING 'UTF8' TEMPLATE template0"),
            _ => format!("CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE {}", ralph_store::MYSQL_COLLATION),
        };
        admin(backend, &base_url, &[create]).await;
        Some(Self { url: format!("{prefix}{name}{query}"), _dir: None })
    }
}

/// Runs statements on a connection of its own (not the store's pool).
async fn admin(backend: Backend, url: &str, statements: &[String]) {
    match backend {
        Backend::Postgres => {
            let mut c = sqlx::PgConnection::connect(url).await.expect("connect to PostgreSQL");
            for s in statements {
                sqlx::raw_sql(sqlx::AssertSqlSafe(s.clone())).execute(&mut c).await.expect("statement");
            }
            let _ = c.close().await;
        }
        Backend::MySql => {
            let mut c = sqlx::MySqlConnection::connect(url).await.expect("connect to MariaDB");
            for s in statements {
                sqlx::raw_sql(sqlx::AssertSqlSafe(s.clone())).execute(&mut c).await.expect("statement");
            }
            let _ = c.close().await;
        }
        Backend::Sqlite => unreachable!("no admin statements on SQLite"),
    }
}

/// Kills the connections to one test database, again and again, from one connection of its
/// own to another database (the server's `postgres` or `mysql`): the killer is never among
/// the connections it kills, and a second killer could not kill it.
///
/// On MariaDB it reads `SHOW PROCESSLIST` (text protocol) instead of a prepared query of
/// `information_schema.processlist`: MariaDB 10.11.19 crashed once (signal 11 in
/// `ha_maria::drop_table`, freeing that query's temporary table, the killer's thread marked
/// killed) while a killer that connected to the test database ran it, which took the shared
/// server down for every other test.
enum Killer {
    Postgres(sqlx::PgConnection, String),
    MySql(sqlx::MySqlConnection, String),
}

impl Killer {
    async fn connect(backend: Backend, url: &str) -> Self {
        use std::str::FromStr as _;
        match backend {
            Backend::Postgres => {
                let options = sqlx::postgres::PgConnectOptions::from_str(url).expect("PostgreSQL URL");
                let victim = options.get_database().expect("database in the URL").to_owned();
                let c = sqlx::PgConnection::connect_with(&options.database("postgres")).await.expect("connect");
                Self::Postgres(c, victim)
            }
            Backend::MySql => {
                let options = sqlx::mysql::MySqlConnectOptions::from_str(url).expect("MariaDB URL");
                let victim = options.get_database().expect("database in the URL").to_owned();
                let c = sqlx::MySqlConnection::connect_with(&options.database("mysql")).await.expect("connect");
                Self::MySql(c, victim)
            }
            Backend::Sqlite => unreachable!("no connections to kill on SQLite"),
        }
    }

    /// Kills every connection to the victim database now; returns how many.
    async fn kill(&mut self) -> usize {
        match self {
            Self::Postgres(c, victim) => {
                let killed: Vec<(bool,)> = sqlx::query_as(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                     WHERE datname = $1 AND pid <> pg_backend_pid()",
                )
                .bind(&*victim)
                .fetch_all(&mut *c)
                .await
                .expect("terminate backends");
                killed.len()
            }
            Self::MySql(c, victim) => {
                use sqlx::Row as _;
                let rows = sqlx::raw_sql("SHOW PROCESSLIST").fetch_all(&mut *c).await.expect("processlist");
                let mut ids = Vec::new();
                for row in &rows {
                    let db: Option<String> = row.try_get("db").expect("processlist db");
                    if db.as_deref() == Some(victim.as_str()) {
                        // Signed on MariaDB, unsigned on MySQL 8.
                        let id = row.try_get::<i64, _>("Id").map(i128::from);
                        ids.push(id.or_else(|_| row.try_get::<u64, _>("Id").map(i128::from)).expect("processlist id"));
                    }
                }
                for id in &ids {
                    // Gone already is fine.
                    let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!("KILL {id}"))).execute(&mut *c).await;
                }
                ids.len()
            }
        }
    }
}

/// Loopback hosts that never answer on one port: per address a listener with a backlog of 0
/// whose accept queue is filled, so further SYNs are dropped (checked before it is used).
struct Silent {
    port: u16,
    _held: Vec<(tokio::net::TcpListener, Vec<std::net::TcpStream>)>,
}

fn silent(addresses: &[IpAddr]) -> Silent {
    let mut port = 0;
    let mut held = Vec::new();
    for ip in addresses {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.bind(SocketAddr::new(*ip, port)).expect("bind a silent listener");
        let listener = socket.listen(0).expect("listen");
        port = listener.local_addr().expect("addr").port();
        let target = SocketAddr::new(*ip, port);
        let mut fill = Vec::new();
        loop {
            // A connect that completes went into the queue; one that times out proves it full.
            match std::net::TcpStream::connect_timeout(&target, Duration::from_millis(100)) {
                Ok(s) => fill.push(s),
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => break,
                Err(e) => panic!("filling the accept queue of {target}: {e}"),
            }
            assert!(fill.len() < 8, "the accept queue of {target} does not fill");
        }
        held.push((listener, fill));
    }
    Silent { port, _held: held }
}

/// A scanner for silent hosts: one port, a 250 ms connect without retry, 40 probe starts a
/// second (a job of 4 hosts takes about 0.35 s).
fn silent_scanner(port: u16) -> Scanner {
    silent_scanner_at(port, 40.0)
}

/// [`silent_scanner`] at `rate` probe starts a second.
fn silent_scanner_at(port: u16, rate: f64) -> Scanner {
    let rate = RateConfig::default().initial(rate).min(1.0).max(rate).increase_per_sec(0.0);
    let timeouts = ProbeTimeouts { connect: Duration::from_millis(250), retries: 0, ..ProbeTimeouts::default() };
    Scanner::new(
        ScanConfig::default()
            .ports(vec![port])
            .icmp(false)
            .http(None)
            .rate(rate)
            .timeouts(timeouts)
            .pace_loopback(true),
    )
    .expect("valid scan config")
}

/// A slow scanner for answering hosts: loopback addresses reset (alive, port closed) at 25
/// probe starts per second.
fn slow_scanner() -> Scanner {
    let rate = RateConfig::default().initial(25.0).min(1.0).max(25.0).increase_per_sec(0.0);
    Scanner::new(ScanConfig::default().ports(vec![9]).icmp(false).http(None).rate(rate).pace_loopback(true))
        .expect("valid scan config")
}

fn hosts(second: u8, third: u8, range: std::ops::RangeInclusive<u8>) -> Vec<IpAddr> {
    range.map(|i| IpAddr::from([127, second, third, i])).collect()
}

/// Address rows for `ips` with no dead pings yet.
async fn plant<S: InventoryStore>(store: &S, ips: &[IpAddr]) {
    for ip in ips {
        Repository::<IpAddress>::create(store, &IpAddress::new(*ip)).await.expect("plant address");
    }
}

async fn dead_pings<S: InventoryStore>(store: &S, ip: IpAddr) -> u32 {
    store.find_ip(ip).await.expect("find").map_or(0, |r| r.value.dead_ping_count)
}

/// A lease for tests that count lost leases: a 3 s lease can run out on a loaded machine
/// before its keeper (or a store call that a kill made wait) renews it.
const SAFE_LEASE: Duration = Duration::from_secs(15);

fn worker_config(queue: &str, name: &str) -> WorkerConfig {
    WorkerConfig::new(queue)
        .name(name)
        .concurrency(2)
        .lease(Duration::from_secs(3))
        .poll_interval(Duration::from_millis(50))
        .batch(2)
        .dead_ping_limit(1_000)
        .heartbeat_interval(Duration::from_millis(200))
        .store_retry(Duration::from_millis(20), Duration::from_millis(500))
}

/// Waits until no job of `queue` waits or runs (store errors count as "not yet").
async fn wait_idle<Q: QueueAdmin + ?Sized>(q: &Q, queue: &str, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        if let Ok(s) = q.stats(queue).await
            && s.pending == 0
            && s.running == 0
            && s.expired == 0
        {
            return;
        }
        assert!(Instant::now() < deadline, "queue {queue} not drained in {within:?}: {:?}", q.stats(queue).await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs a worker on `queue` until it is drained, then cancels it.
async fn drain<Q, S>(jobs: Arc<Q>, store: Arc<S>, scanner: Scanner, config: WorkerConfig) -> WorkerStats
where
    Q: JobQueue + QueueAdmin + 'static,
    S: ScanResultStore + 'static,
{
    let queue = config.queues[0].clone();
    let worker = Worker::new(Arc::clone(&jobs), store, scanner, config);
    let token = CancellationToken::new();
    let run = tokio::spawn({
        let token = token.clone();
        async move { worker.run(token).await }
    });
    wait_idle(&*jobs, &queue, Duration::from_secs(90)).await;
    token.cancel();
    run.await.expect("join").expect("worker")
}

// ---------------------------------------------------------------------------------------------
// Worker processes

/// What a worker process does: `backend|url|queue|name|port|max_attempts|lease_ms`.
struct Spec {
    backend: Backend,
    url: String,
    queue: String,
    name: String,
    port: u16,
    max_attempts: u32,
    lease: Duration,
}

impl Spec {
    fn encode(&self) -> String {
        let backend = match self.backend {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
            Backend::MySql => "mysql",
        };
        format!(
            "{backend}|{}|{}|{}|{}|{}|{}",
            self.url,
            self.queue,
            self.name,
            self.port,
            self.max_attempts,
            self.lease.as_millis()
        )
    }

    fn decode(text: &str) -> Self {
        let p: Vec<&str> = text.split('|').collect();
        assert_eq!(p.len(), 7, "bad worker spec {text:?}");
        let backend = match p[0] {
            "sqlite" => Backend::Sqlite,
            "postgres" => Backend::Postgres,
            _ => Backend::MySql,
        };
        Self {
            backend,
            url: p[1].to_owned(),
            queue: p[2].to_owned(),
            name: p[3].to_owned(),
            port: p[4].parse().expect("port"),
            max_attempts: p[5].parse().expect("attempts"),
            lease: Duration::from_millis(p[6].parse().expect("lease")),
        }
    }

    fn spawn(&self) -> tokio::process::Child {
        tokio::process::Command::new(std::env::current_exe().expect("test binary"))
            .args(["--ignored", "--exact", "discovery_worker_child", "--nocapture", "--test-threads=1"])
            .env(CHILD_VAR, self.encode())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn a worker process")
    }
}

fn policy(max_attempts: u32) -> RetryPolicy {
    RetryPolicy { max_attempts, ..RetryPolicy::default() }
}

/// The worker process: drains the queue, prints its statistics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by the multi-process tests as a worker process"]
async fn discovery_worker_child() {
    let spec = Spec::decode(&std::env::var(CHILD_VAR).expect("worker spec"));
    let scanner = silent_scanner(spec.port);
    let config = worker_config(&spec.queue, &spec.name).lease(spec.lease);
    let stats = match spec.backend {
        Backend::Sqlite => {
            let s = Arc::new(
                SqliteStore::connect(&spec.url).await.expect("open").with_job_policy(policy(spec.max_attempts)),
            );
            drain(Arc::clone(&s), s, scanner, config).await
        }
        Backend::Postgres => {
            let s =
                Arc::new(PgStore::connect(&spec.url).await.expect("open").with_job_policy(policy(spec.max_attempts)));
            drain(Arc::clone(&s), s, scanner, config).await
        }
        Backend::MySql => {
            let s = Arc::new(
                MySqlStore::connect(&spec.url).await.expect("open").with_job_policy(policy(spec.max_attempts)),
            );
            drain(Arc::clone(&s), s, scanner, config).await
        }
    };
    println!("\n{CHILD_REPORT} {}", serde_json::to_string(&stats).expect("json"));
}

fn child_stats(stdout: &[u8]) -> WorkerStats {
    let text = String::from_utf8_lossy(stdout);
    let line = text.lines().find_map(|l| l.strip_prefix(CHILD_REPORT)).unwrap_or_else(|| panic!("no report in {text}"));
    let v: serde_json::Value = serde_json::from_str(line.trim()).expect("stats json");
    let n = |k: &str| v[k].as_u64().unwrap_or_else(|| panic!("{k} in {line}"));
    WorkerStats {
        jobs_done: n("jobs_done"),
        jobs_failed: n("jobs_failed"),
        hosts: n("hosts"),
        requeued: n("requeued"),
        leases_lost: n("leases_lost"),
        store_errors: n("store_errors"),
    }
}

// ---------------------------------------------------------------------------------------------
// Exactly once, from processes and tasks

macro_rules! exactly_once {
    ($name:ident, $backend:expr, $store:ty, $second:expr) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            let Some(db) = FreshDb::new($backend, "dwonce").await else { return };
            let store = Arc::new(<$store>::connect(&db.url).await.expect("open"));
            exactly_once(store, $backend, &db.url, $second).await;
        }
    };
}

/// Two worker processes and two worker tasks (two slots each) on one queue whose jobs
/// overlap: addresses 21–40 are in two jobs, the rest in one. Each job is scanned exactly
/// once, so each host is recorded as often as jobs hold it.
async fn exactly_once<S>(store: Arc<S>, backend: Backend, url: &str, second: u8)
where
    S: JobQueue + QueueAdmin + ScanResultStore + InventoryStore + 'static,
{
    let ips = hosts(second, 1, 1..=60);
    let silent = silent(&ips);
    plant(&*store, &ips).await;
    let queue = "discovery.once";
    let a = enqueue_targets(&*store, queue, [format!("{}-{}", ips[0], ips[39])], [] as [&str; 0], 4).await.expect("a");
    let b = enqueue_targets(&*store, queue, [format!("{}-{}", ips[20], ips[59])], [] as [&str; 0], 4).await.expect("b");
    assert_eq!(a.len() + b.len(), 20);

    let children: Vec<_> = (0..2)
        .map(|i| {
            Spec {
                backend,
                url: url.to_owned(),
                queue: queue.to_owned(),
                name: format!("once-process-{i}"),
                port: silent.port,
                max_attempts: 5,
                lease: SAFE_LEASE,
            }
            .spawn()
        })
        .collect();
    let tasks: Vec<_> = (0..2)
        .map(|i| {
            let store = Arc::clone(&store);
            let scanner = silent_scanner(silent.port);
            tokio::spawn(async move {
                let config = worker_config(queue, &format!("once-task-{i}")).lease(SAFE_LEASE);
                drain(Arc::clone(&store), store, scanner, config).await
            })
        })
        .collect();
    let mut total = WorkerStats::default();
    let mut by_worker = Vec::new();
    for t in tasks {
        let s = t.await.expect("task");
        by_worker.push(s.jobs_done);
        total.jobs_done += s.jobs_done;
        total.leases_lost += s.leases_lost;
    }
    for c in children {
        let out = tokio::time::timeout(Duration::from_secs(120), c.wait_with_output())
            .await
            .expect("worker process ends")
            .expect("worker process");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
        let s = child_stats(&out.stdout);
        by_worker.push(s.jobs_done);
        total.jobs_done += s.jobs_done;
        total.leases_lost += s.leases_lost;
    }
    let s = store.stats(queue).await.expect("stats");
    assert_eq!((s.done, s.dead, s.pending, s.running), (20, 0, 0, 0), "{s:?}");
    assert_eq!((total.jobs_done, total.leases_lost), (20, 0), "each job acked once: {by_worker:?}");
    let mut wrong = Vec::new();
    for (i, ip) in ips.iter().enumerate() {
        let expected = if (20..40).contains(&i) { 2 } else { 1 };
        let got = dead_pings(&*store, *ip).await;
        if got != expected {
            wrong.push(format!("{ip}: {got} (expected {expected})"));
        }
    }
    assert!(wrong.is_empty(), "hosts recorded a wrong number of times: {wrong:?}");
    let workers: Vec<String> = store.workers().await.expect("workers").into_iter().map(|w| w.name).collect();
    for name in ["once-process-0", "once-process-1", "once-task-0", "once-task-1"] {
        assert!(workers.iter().any(|w| w == name), "{name} left no heartbeat: {workers:?}");
    }
}

exactly_once!(sqlite_processes_and_tasks_scan_each_job_once, Backend::Sqlite, SqliteStore, 61);
exactly_once!(pg_processes_and_tasks_scan_each_job_once, Backend::Postgres, PgStore, 62);
exactly_once!(mysql_processes_and_tasks_scan_each_job_once, Backend::MySql, MySqlStore, 63);

// ---------------------------------------------------------------------------------------------
// Stolen lease

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stolen_lease_stops_the_scan_and_records_nothing() {
    let Some(db) = FreshDb::new(Backend::Sqlite, "dwsteal").await else { return };
    let store = Arc::new(SqliteStore::connect(&db.url).await.expect("open"));
    let queue = "discovery.steal";
    let first = u32::from(std::net::Ipv4Addr::new(127, 64, 1, 1));
    let ips: Vec<IpAddr> = (0..500).map(|i| IpAddr::from(std::net::Ipv4Addr::from(first + i))).collect();
    enqueue_targets(&*store, queue, [format!("{}-{}", ips[0], ips[499])], [] as [&str; 0], 1_000).await.expect("job");
    // 500 answering hosts at 25 a second: at least 20 s, however fast the machine; one batch
    // for the whole job.
    // One slot: a second, idle slot could claim the job itself in the moment the lease is made
    // to run out below, and lose it a second time.
    let config = worker_config(queue, "robbed").concurrency(1).batch(1_000).lease(Duration::from_millis(600));
    let worker = Worker::new(Arc::clone(&store), Arc::clone(&store), slow_scanner(), config);
    let token = CancellationToken::new();
    let started = Instant::now();
    let run = tokio::spawn({
        let token = token.clone();
        async move { worker.run(token).await }
    });
    let job = async || {
        let beats = store.workers().await.expect("workers");
        beats.into_iter().find(|w| w.name == "robbed").map(|w| w.current_jobs)
    };
    // The worker's heartbeat names the job: it is scanning.
    wait_until(Duration::from_secs(30), async || job().await.is_some_and(|jobs| jobs.len() == 1)).await;
    // Another worker takes the job: its lease is made to run out and the job claimed anew.
    // (Again if the robbed worker's lease keeper extended the lease in between.)
    let mut stolen = Vec::new();
    for _ in 0..10 {
        sqlx::query("UPDATE queue_jobs SET due_at = 0 WHERE queue = ?")
            .bind(queue)
            .execute(store.pool())
            .await
            .expect("expire the lease");
        stolen = store.claim(queue, 1, Duration::from_secs(60), "thief").await.expect("claim");
        if !stolen.is_empty() {
            break;
        }
    }
    assert_eq!(stolen.len(), 1, "the thief holds the job");
    // Within a lease-keeper period (200 ms) the first worker learns and drops the scan: its
    // heartbeat no longer names the job. A worker that went on scanning would hold it for the
    // scan's 20 s, so the bound below (well under them) still catches one.
    wait_until(Duration::from_secs(30), async || job().await.is_some_and(|jobs| jobs.is_empty())).await;
    assert!(started.elapsed() < Duration::from_secs(15), "the worker stopped promptly: {:?}", started.elapsed());
    token.cancel();
    let stats = run.await.expect("join").expect("worker");
    assert_eq!((stats.leases_lost, stats.jobs_done, stats.requeued, stats.hosts), (1, 0, 0, 0), "{stats:?}");
    for ip in &ips {
        assert!(store.find_ip(*ip).await.expect("find").is_none(), "{ip} recorded by the robbed worker");
    }
    let s = store.stats(queue).await.expect("stats");
    assert_eq!((s.running, s.pending, s.done), (1, 0, 0), "only the thief's claim remains: {s:?}");
}

async fn wait_until(within: Duration, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !check().await {
        assert!(Instant::now() < deadline, "condition not reached in {within:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Poison job

/// A job whose worker process dies (SIGKILL) on every attempt is dead-lettered by the claim
/// after `max_attempts` ("lease expired 3 times"), and the next job is done.
async fn poison_job_is_dead_lettered<S>(store: Arc<S>, backend: Backend, url: &str, second: u8)
where
    S: JobQueue + QueueAdmin + ScanResultStore + 'static,
{
    let ips = hosts(second, 1, 1..=200);
    let silent = silent(&ips[..1]);
    let queue = "discovery.poison";
    // 200 hosts at 40 a second: a job no worker finishes before it is killed.
    let poison = enqueue_targets(&*store, queue, [format!("{}-{}", ips[0], ips[199])], [] as [&str; 0], 1_000)
        .await
        .expect("poison");
    for attempt in 1..=3u32 {
        let name = format!("poisoned-{attempt}");
        let mut child = Spec {
            backend,
            url: url.to_owned(),
            queue: queue.to_owned(),
            name: name.clone(),
            port: silent.port,
            max_attempts: 3,
            lease: Duration::from_secs(3),
        }
        .spawn();
        wait_until(Duration::from_secs(30), async || {
            store.list_jobs(queue, JobState::Running, 10).await.is_ok_and(|jobs| {
                jobs.iter().any(|j| j.id == poison[0] && j.worker.as_deref() == Some(&name) && j.attempts == attempt)
            })
        })
        .await;
        child.start_kill().expect("SIGKILL the worker");
        child.wait().await.expect("reap");
    }
    // The next claim (the killed workers' lease is 3 s) dead-letters the job; then the queue goes on.
    tokio::time::sleep(Duration::from_secs(3)).await;
    enqueue_targets(&*store, queue, [ips[0].to_string()], [] as [&str; 0], 10).await.expect("next job");
    let stats =
        drain(Arc::clone(&store), Arc::clone(&store), silent_scanner(silent.port), worker_config(queue, "healthy"))
            .await;
    assert_eq!((stats.jobs_done, stats.hosts), (1, 1), "{stats:?}");
    let dead = store.list_jobs(queue, JobState::Dead, 10).await.expect("dead");
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].id, poison[0]);
    assert_eq!(dead[0].last_error.as_deref(), Some("lease expired 3 times"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_poison_job_is_dead_lettered_after_max_attempts() {
    let Some(db) = FreshDb::new(Backend::Postgres, "dwpoison").await else { return };
    let store = Arc::new(PgStore::connect(&db.url).await.expect("open").with_job_policy(policy(3)));
    poison_job_is_dead_lettered(store, Backend::Postgres, &db.url, 65).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_poison_job_is_dead_lettered_after_max_attempts() {
    let Some(db) = FreshDb::new(Backend::MySql, "dwpoison").await else { return };
    let store = Arc::new(MySqlStore::connect(&db.url).await.expect("open").with_job_policy(policy(3)));
    poison_job_is_dead_lettered(store, Backend::MySql, &db.url, 66).await;
}

// ---------------------------------------------------------------------------------------------
// Connections killed mid-run

/// A worker whose every database connection is killed again and again mid-run keeps running, loses
/// no target and records no host twice. A connection killed while the server runs a batch's
/// COMMIT leaves the outcome unknown to the worker, which records the batch again: the batch
/// key ([`ScanResultStore::record_batch`]) makes that retry write nothing (without it MariaDB
/// recorded a batch twice about every other run).
async fn survives_killed_connections<S>(store: Arc<S>, backend: Backend, url: &str, second: u8)
where
    S: JobQueue + QueueAdmin + ScanResultStore + InventoryStore + 'static,
{
    let queue = "discovery.blip";
    let blip = Blip::start(Arc::clone(&store), second, queue, "blipped", 40.0).await;
    // Kills every 30 ms for 1.5 s: on a quiet machine the worker's connections are mostly idle
    // in the pool (a dead idle one is replaced unseen), so the kills must be many to land
    // inside statements and commits.
    let mut killer = Killer::connect(backend, url).await;
    let mut killed = 0;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(30)).await;
        killed += killer.kill().await;
    }
    assert!(killed > 0, "no connection was killed");
    // Whether a kill lands inside one of the worker's statements (a store error it sees and
    // retries) or on an idle pooled connection (replaced unseen) is timing: on MariaDB the
    // second happened every time in one CI run. What must hold either way is in `finish`.
    println!("killed {killed} connections");
    blip.finish(&*store, queue).await;
}

/// A worker scanning 60 silent hosts (planted address rows) in 12 jobs of 5, while the test
/// does something to its database.
struct Blip {
    ips: Vec<IpAddr>,
    _silent: Silent,
    token: CancellationToken,
    run: tokio::task::JoinHandle<ralph_discovery::Result<WorkerStats>>,
}

impl Blip {
    /// Plants and enqueues the hosts and starts the worker at `rate` probe starts a second.
    async fn start<S>(store: Arc<S>, second: u8, queue: &str, name: &str, rate: f64) -> Self
    where
        S: JobQueue + QueueAdmin + ScanResultStore + InventoryStore + 'static,
    {
        let ips = hosts(second, 1, 1..=60);
        let silent = silent(&ips);
        plant(&*store, &ips).await;
        enqueue_targets(&*store, queue, [format!("{}-{}", ips[0], ips[59])], [] as [&str; 0], 5).await.expect("jobs");
        let worker = Worker::new(
            Arc::clone(&store),
            Arc::clone(&store),
            silent_scanner_at(silent.port, rate),
            worker_config(queue, name).lease(SAFE_LEASE),
        );
        let token = CancellationToken::new();
        let run = tokio::spawn({
            let token = token.clone();
            async move { worker.run(token).await }
        });
        Self { ips, _silent: silent, token, run }
    }

    /// Waits for the queue to drain, stops the worker, and checks that it kept running and
    /// recorded every host exactly once.
    async fn finish<S>(self, store: &S, queue: &str)
    where
        S: QueueAdmin + InventoryStore,
    {
        wait_idle(store, queue, Duration::from_secs(120)).await;
        self.token.cancel();
        let stats = self.run.await.expect("join").expect("worker keeps running");
        println!("worker stats {stats:?}");
        assert_eq!((stats.jobs_done, stats.leases_lost, stats.hosts), (12, 0, 60), "{stats:?}");
        let (mut lost, mut twice) = (Vec::new(), Vec::new());
        for ip in &self.ips {
            match dead_pings(store, *ip).await {
                1 => {}
                2 => twice.push(ip.to_string()),
                got => lost.push(format!("{ip}: {got}")),
            }
        }
        assert!(lost.is_empty(), "hosts lost or recorded more than twice: {lost:?}");
        assert!(twice.is_empty(), "hosts recorded twice: {twice:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_worker_survives_killed_connections() {
    let Some(db) = FreshDb::new(Backend::Postgres, "dwblip").await else { return };
    let store = Arc::new(PgStore::connect(&db.url).await.expect("open"));
    survives_killed_connections(store, Backend::Postgres, &db.url, 67).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_worker_survives_killed_connections() {
    let Some(db) = FreshDb::new(Backend::MySql, "dwblip").await else { return };
    let store = Arc::new(MySqlStore::connect(&db.url).await.expect("open"));
    survives_killed_connections(store, Backend::MySql, &db.url, 68).await;
}

// ---------------------------------------------------------------------------------------------
// A database server stopped and started again mid-scan

/// A worker whose database server is stopped mid-scan (as an operator does: a fast shutdown
/// that closes every connection), kept down for two seconds and started again, keeps running,
/// loses no target and records no host twice. The server is the test's own ([`PrivateDb`]):
/// the shared ones serve every other test at once.
async fn survives_a_database_restart<S>(store: Arc<S>, db: PrivateDb, second: u8)
where
    S: JobQueue + QueueAdmin + ScanResultStore + InventoryStore + 'static,
{
    let queue = "discovery.restart";
    // 60 hosts at 10 probe starts a second: about 6 s of scanning, so the outage lands mid-scan.
    let blip = Blip::start(Arc::clone(&store), second, queue, "restarted", 10.0).await;
    wait_until(Duration::from_secs(60), async || store.stats(queue).await.is_ok_and(|s| s.done >= 1)).await;
    let before = store.stats(queue).await.expect("stats before the outage");
    assert!(before.done < 12, "the scan ended before the outage: {before:?}");
    let restart = tokio::task::spawn_blocking(move || {
        let mut db = db;
        db.stop()?;
        std::thread::sleep(Duration::from_secs(2));
        db.start()?;
        Ok::<_, String>(db)
    });
    // Dropped (stopped, its data removed) at the end of the test.
    let _db = restart.await.expect("join").expect("stop and start the database server");
    assert!(!blip.run.is_finished(), "the worker ended while its database was down");
    // Whether the outage shows as store errors or as store calls that wait for a connection
    // (the pool retries connecting until its acquire timeout) is timing; what must hold is in
    // `finish`.
    println!("jobs done before the outage: {}", before.done);
    blip.finish(&*store, queue).await;
}

/// A private server of `kind`, or `None` after a printed skip (not root; a failure under CI).
fn private_db(kind: PrivateKind) -> Option<PrivateDb> {
    if !ralph_testkit::require_root("a private database server") {
        return None;
    }
    Some(PrivateDb::start_new(kind).expect("start a private database server"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_worker_survives_a_database_restart() {
    let Some(db) = private_db(PrivateKind::Postgres) else { return };
    let store = Arc::new(PgStore::connect(&db.url()).await.expect("open"));
    survives_a_database_restart(store, db, 69).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_worker_survives_a_database_restart() {
    let Some(db) = private_db(PrivateKind::MariaDb) else { return };
    let store = Arc::new(MySqlStore::connect(&db.url()).await.expect("open"));
    survives_a_database_restart(store, db, 70).await;
}
