//! The reference service (`examples/server`) run as a process, from the outside: HTTP logins
//! against the fixture slapd, the status page behind staff sessions, a discovery worker, and
//! the signals — SIGTERM drains while 32 clients log in and a scan runs (no server error, no
//! target lost), SIGHUP loads a changed LDAP config for the next login while logins go on.
//! On SQLite, PostgreSQL and MariaDB.
//!
//! The server binary is built by cargo with the tests (`target/<profile>/examples/server`);
//! each test writes its config, starts it, waits for its `LISTENING` line and talks HTTP/1.1
//! to it over loopback. Scan targets are loopback addresses (127.77.x.y) whose port 9 resets.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ralph_core::history::HistoryStore;
use ralph_core::{IpAddress, JobQueue, QueueAdmin, Repository, UserStore};
use ralph_discovery::ScanJob;
use ralph_store::AnyStore;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use common::{ADMIN_PASSWORD, Backend, FreshDb, Server, ldap_table, wait_line};

const QUEUE: &str = "server.scan";

// ---------------------------------------------------------------------------------------------
// A small HTTP/1.1 client (one request per connection)

struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// The session cookie it set, as a `Cookie` header value.
    fn session(&self) -> Option<String> {
        let set = self.header("set-cookie")?;
        Some(set.split(';').next()?.to_owned())
    }
}

/// One request; `Err` when the connection is refused or cut (the server is going away).
async fn http(
    address: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> std::io::Result<Reply> {
    let mut stream = tokio::net::TcpStream::connect(address).await?;
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(body);
    stream.write_all(request.as_bytes()).await?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) =
        text.split_once("\r\n\r\n").ok_or_else(|| std::io::Error::other(format!("no header end: {text:?}")))?;
    let mut head = head.lines();
    let status = head
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line: {text:?}")))?;
    let headers =
        head.filter_map(|l| l.split_once(':')).map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned())).collect();
    Ok(Reply { status, headers, body: body.to_owned() })
}

async fn login_json(address: SocketAddr, user: &str, password: &str) -> std::io::Result<Reply> {
    let body = serde_json::json!({ "username": user, "password": password }).to_string();
    http(address, "POST", "/login", &[("Content-Type", "application/json")], &body).await
}

// ---------------------------------------------------------------------------------------------
// Services

// ---------------------------------------------------------------------------------------------
// Tests

/// With an empty config but a listen address, on SQLite: the local staff account logs in
/// through the form, gets the status page; without a session or as a non-staff user, 403.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_is_for_staff_sessions_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = format!("sqlite://{}?mode=rwc", dir.path().join("s.sqlite3").display());
    let server = Server::start(dir.path(), &format!("listen = \"127.0.0.1:0\"\nstore = \"{store}\"\n")).await;
    let a = server.address;

    let anonymous = http(a, "GET", "/admin/queues", &[], "").await.expect("page");
    assert_eq!(anonymous.status, 403, "{}", anonymous.body);
    let wrong = http(
        a,
        "POST",
        "/login",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        "username=admin&password=nope",
    )
    .await
    .expect("login");
    assert_eq!(wrong.status, 401);
    assert!(wrong.session().is_none());
    let form = format!("username=admin&password={ADMIN_PASSWORD}");
    let ok = http(a, "POST", "/login", &[("Content-Type", "application/x-www-form-urlencoded")], &form)
        .await
        .expect("login");
    assert_eq!((ok.status, ok.header("location")), (303, Some("admin/queues")), "{}", ok.body);
    let cookie = ok.session().expect("session cookie");
    assert!(ok.header("set-cookie").is_some_and(|c| c.contains("HttpOnly") && c.contains("SameSite=Strict")));
    let page = http(a, "GET", "/admin/queues", &[("Cookie", &cookie)], "").await.expect("page");
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page.body.contains("<html"), "{}", page.body);

    // A local user who is not staff: logged in, but the page stays closed.
    let s = AnyStore::connect(&store).await.expect("store");
    let user = ralph_core::User::new("viewer").expect("user");
    ralph_core::UserStore::create_user(&s, &user).await.expect("create");
    ralph_core::LocalBackend::new(s.clone())
        .set_password("viewer", &ralph_core::Secret::new("viewer-Pa55-word".to_owned()))
        .await
        .expect("password");
    let viewer = login_json(a, "viewer", "viewer-Pa55-word").await.expect("login");
    assert_eq!(viewer.status, 200, "{}", viewer.body);
    let v: serde_json::Value = serde_json::from_str(&viewer.body).expect("json");
    assert_eq!((v["ok"].as_bool(), v["staff"].as_bool()), (Some(true), Some(false)));
    let closed =
        http(a, "GET", "/admin/queues", &[("Cookie", &viewer.session().expect("cookie"))], "").await.expect("page");
    assert_eq!(closed.status, 403);
    s.close().await;
    server.stop().await;
}

/// The `[history]` retention: the server queues a prune job and runs it; history older than
/// the retention (here: any) goes, and the job shows as done on its queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_is_pruned_by_a_queued_job() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = format!("sqlite://{}?mode=rwc", dir.path().join("s.sqlite3").display());
    let s = AnyStore::connect(&store).await.expect("store");
    s.create_user(&ralph_core::User::new("old-timer").expect("user")).await.expect("create");
    let id = s.get_user("old-timer").await.expect("user").expect("stored").id;
    assert!(!s.object_history("user", id.get(), 10).await.expect("history").is_empty(), "the creation is on record");
    let mut server = Server::start(
        dir.path(),
        &format!("listen = \"127.0.0.1:0\"\nstore = \"{store}\"\n[history]\nmax_age_days = 0\nprune_every_secs = 1\n"),
    )
    .await;
    let line = wait_line(&mut server.lines, "PRUNED ", Duration::from_secs(60)).await;
    assert!(line.starts_with("PRUNED 1 "), "{line}");
    assert!(s.object_history("user", id.get(), 10).await.expect("history").is_empty(), "{line}");
    let stats = s.stats(ralph_core::history::PRUNE_QUEUE).await.expect("stats");
    assert!(stats.done >= 1 && stats.dead == 0, "{stats:?}");
    s.close().await;
    server.stop().await;
}

/// The recorded addresses of the scan's targets (127.77.0.0/24).
async fn lab_hosts(store: &AnyStore) -> Vec<IpAddr> {
    Repository::<IpAddress>::list(store)
        .await
        .expect("addresses")
        .into_iter()
        .map(|r| r.value.address)
        .filter(|a| matches!(a, IpAddr::V4(v4) if v4.octets()[..3] == [127, 77, 0]))
        .collect()
}

/// SIGTERM while 32 clients log in through LDAP and a scan job runs: every login answered
/// is a success (none a server error), the process exits cleanly, and the scan's unscanned
/// rest is handed back to the queue: a second run finishes it, and every target is recorded.
async fn drain_during_logins_and_a_scan(backend: Backend) {
    let Some(ldap) = ldap_table("_gr_ralph_staff") else { return };
    let bulk: usize = std::env::var("RALPH_TEST_LDAP_BULK_USERS").ok().and_then(|n| n.parse().ok()).unwrap_or(0);
    assert!(bulk >= 64, "the fixture's bulk users are needed (RALPH_TEST_LDAP_BULK_USERS={bulk})");
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(db) = FreshDb::new(backend, "drain").await else { return };
    let store_url = db.url.clone();
    let kind = format!("{backend:?}").to_lowercase();
    // 200 loopback hosts at 25 probe starts a second: about 8 s of scanning, a heartbeat with
    // its progress every 200 ms.
    let config = format!(
        "listen = \"127.0.0.1:0\"\nstore = \"{store_url}\"\ndrain_timeout_secs = 5\n\n\
         [[workers]]\nname = \"drain-{kind}\"\nqueues = [\"{QUEUE}\"]\nconcurrency = 1\nports = [9]\n\
         rate = 25.0\npace_loopback = true\nheartbeat_ms = 200\n{ldap}"
    );
    let store = AnyStore::connect(&store_url).await.expect("store");
    let server = Server::start(dir.path(), &config).await;
    let job = ScanJob::new(["127.77.0.1-127.77.0.200"]).to_payload().expect("payload");
    store.enqueue(QUEUE, &[job]).await.expect("enqueue");

    // The scan is under way: the worker's heartbeat shows hosts done.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let beats = store.workers().await.expect("workers");
        if beats.iter().flat_map(|w| &w.progress).any(|p| p.done >= 10) {
            break;
        }
        if Instant::now() >= deadline {
            let overview = store.overview(100).await.expect("overview");
            let dead = store.list_jobs(QUEUE, ralph_core::JobState::Dead, 5).await.expect("dead");
            panic!("the scan did not start: {beats:?}\n{overview:?}\n{dead:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // 32 clients log in in a loop until the server stops answering.
    let address = server.address;
    let ok = Arc::new(AtomicU64::new(0));
    let stopping = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for c in 0..32 {
        let (ok, stopping) = (Arc::clone(&ok), Arc::clone(&stopping));
        clients.push(tokio::spawn(async move {
            let mut statuses = Vec::new();
            for i in 0.. {
                let user = format!("bulk{:05}", (c * 2 + i) % 64);
                match login_json(address, &user, &format!("pw-{user}")).await {
                    Ok(reply) => {
                        if reply.status == 200 {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        statuses.push((reply.status, reply.body));
                    }
                    // Refused or cut: the server has stopped accepting.
                    Err(_) if stopping.load(Ordering::Relaxed) => break,
                    Err(e) => panic!("client {c}: {e} before the server was told to stop"),
                }
            }
            statuses
        }));
    }
    while ok.load(Ordering::Relaxed) < 64 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stopping.store(true, Ordering::Relaxed);
    server.stop().await;
    let mut answered = 0;
    for client in clients {
        for (status, body) in client.await.expect("client") {
            answered += 1;
            assert_eq!(status, 200, "a login failed during the drain: {body}");
        }
    }
    assert!(answered >= 64);

    // Nothing lost: the drained job's rest is pending again (the drain came mid-scan: some
    // hosts recorded, not all); a second run scans it.
    let overview = store.overview(1_000).await.expect("overview");
    let q = overview.iter().find(|o| o.queue == QUEUE).expect("queue");
    assert_eq!((q.running.count, q.expired.count, q.dead.count), (0, 0, 0), "{q:?}");
    assert!(q.pending.count >= 1, "the unscanned rest is pending: {q:?}");
    let first_run = lab_hosts(&store).await.len();
    assert!((10..200).contains(&first_run), "the drain came mid-scan: {first_run} of 200 recorded");
    let server = Server::start(dir.path(), &config).await;
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let q = store.stats(QUEUE).await.expect("stats");
        if q.pending == 0 && q.running == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "the rest was not scanned: {q:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    server.stop().await;
    let recorded = lab_hosts(&store).await;
    let unique: std::collections::BTreeSet<IpAddr> = recorded.iter().copied().collect();
    assert_eq!((recorded.len(), unique.len()), (200, 200), "every target recorded once");
    store.close().await;
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_drain_during_logins_and_a_scan() {
    drain_during_logins_and_a_scan(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pg_drain_during_logins_and_a_scan() {
    drain_during_logins_and_a_scan(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mysql_drain_during_logins_and_a_scan() {
    drain_during_logins_and_a_scan(Backend::MySql).await;
}

/// SIGHUP with a changed `[ldap]` table: the next login uses it (bulk00000 becomes staff once
/// `_gr_ralph`, a group of the first bulk users, maps to staff), and logins running through the
/// reload all succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sighup_loads_a_changed_ldap_config_for_the_next_login() {
    let (Some(before), Some(after)) = (ldap_table("_gr_ralph_staff"), ldap_table("_gr_ralph")) else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let store = format!("sqlite://{}?mode=rwc", dir.path().join("s.sqlite3").display());
    let head = format!("listen = \"127.0.0.1:0\"\nstore = \"{store}\"\n");
    let mut server = Server::start(dir.path(), &format!("{head}{before}")).await;
    let a = server.address;
    let staff = async |user: &str| {
        let reply = login_json(a, user, &format!("pw-{user}")).await.expect("login");
        assert_eq!(reply.status, 200, "{}", reply.body);
        serde_json::from_str::<serde_json::Value>(&reply.body).expect("json")["staff"].as_bool()
    };
    assert_eq!(staff("bulk00000").await, Some(false));

    // Logins keep going through the reload.
    let done = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for c in 0..8 {
        let done = Arc::clone(&done);
        clients.push(tokio::spawn(async move {
            let mut n = 0;
            while !done.load(Ordering::Relaxed) {
                let user = format!("bulk{:05}", 10 + c);
                let reply = login_json(a, &user, &format!("pw-{user}")).await.expect("login during reload");
                assert_eq!(reply.status, 200, "{}", reply.body);
                n += 1;
            }
            n
        }));
    }
    std::fs::write(&server.config, format!("{head}{after}")).expect("rewrite config");
    server.signal("HUP");
    wait_line(&mut server.lines, "RELOADED", Duration::from_secs(60)).await;
    assert_eq!(staff("bulk00000").await, Some(true), "the next login uses the new mapping");
    done.store(true, Ordering::Relaxed);
    for client in clients {
        assert!(client.await.expect("client") > 0);
    }

    // A config that does not load is refused; the running one stays.
    std::fs::write(&server.config, format!("{head}[ldap]\nserver_uris = []\n")).expect("rewrite config");
    server.signal("HUP");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(staff("bulk00001").await, Some(true), "still the reloaded config");
    server.stop().await;
}

/// Two server processes started at once on one database (both bootstrap the `admin` account):
/// both come up; the operator, logged in on each, retries and discards overlapping sets of the
/// same dead jobs through both at once, and pauses the queue through both. Each job leaves the
/// dead letters exactly once, with one history record naming `admin`; one pause is a change.
async fn two_servers_share_one_database(backend: Backend) {
    use ralph_core::history::{Action, HistoryStore};
    const JOBS: usize = 60;
    let Some(db) = FreshDb::new(backend, "two").await else { return };
    let (dir_a, dir_b) = (tempfile::tempdir().expect("tempdir"), tempfile::tempdir().expect("tempdir"));
    let config = format!("listen = \"127.0.0.1:0\"\nstore = \"{}\"\n", db.url);
    let store = AnyStore::connect(&db.url).await.expect("store");
    let (a, b) = tokio::join!(Server::start(dir_a.path(), &config), Server::start(dir_b.path(), &config));

    let ids = store
        .enqueue("multi", &(0..JOBS).map(|i| format!("{{\"n\":{i}}}")).collect::<Vec<_>>())
        .await
        .expect("enqueue");
    let once = ralph_core::RetryPolicy { max_attempts: 1, ..ralph_core::RetryPolicy::default() };
    for job in store.claim("multi", JOBS, Duration::from_secs(60), "doomed").await.expect("claim") {
        store.fail(&job, "boom", &once).await.expect("fail");
    }
    let mut cookies = Vec::new();
    for address in [a.address, b.address] {
        let form = format!("username=admin&password={ADMIN_PASSWORD}");
        let ok = http(address, "POST", "/login", &[("Content-Type", "application/x-www-form-urlencoded")], &form)
            .await
            .expect("login");
        assert_eq!(ok.status, 303, "{}", ok.body);
        cookies.push((address, ok.session().expect("cookie")));
    }

    // Six operators, three on each server, each through every job from its own place, in runs
    // of ten: alternately retried and discarded.
    let mut operators = Vec::new();
    for k in 0..6usize {
        let (address, cookie) = cookies[k % 2].clone();
        let ids: Vec<i64> = ids.iter().map(|id| id.get()).collect();
        operators.push(tokio::spawn(async move {
            let post = async |path: &str, form: &str| {
                let headers = [("Cookie", cookie.as_str()), ("Content-Type", "application/x-www-form-urlencoded")];
                let reply = http(address, "POST", path, &headers, form).await.expect("action");
                assert_eq!(reply.status, 303, "{path}: {}", reply.body);
                let location = reply.header("location").unwrap_or_default().to_owned();
                location
                    .split("changed=")
                    .nth(1)
                    .and_then(|n| n.split('&').next()?.parse::<u64>().ok())
                    .expect("changed=")
            };
            let paused = post("/admin/api/queues/multi/pause", "").await;
            let start = k * 7 % ids.len();
            let order: Vec<i64> = ids[start..].iter().chain(&ids[..start]).copied().collect();
            let mut changed = 0;
            for (n, run) in order.chunks(10).enumerate() {
                let action = if (n + k).is_multiple_of(2) { "retry" } else { "discard" };
                let form =
                    format!("state=dead&{}", run.iter().map(|id| format!("id={id}")).collect::<Vec<_>>().join("&"));
                changed += post(&format!("/admin/api/queues/multi/{action}"), &form).await;
            }
            (changed, paused)
        }));
    }
    let (mut changed, mut paused) = (0, 0);
    for operator in operators {
        let (c, p) = operator.await.expect("operator");
        changed += c;
        paused += p;
    }
    assert_eq!(changed, JOBS as u64, "each dead job retried or discarded exactly once");
    assert_eq!(paused, 1, "one of the pauses changed something");
    let stats = store.stats("multi").await.expect("stats");
    assert_eq!((stats.dead, stats.paused), (0, true));
    for id in &ids {
        let history = store.object_history("job", id.get(), 10).await.expect("history");
        assert_eq!(history.len(), 1, "job {id}: {history:?}");
        assert!(matches!(history[0].record.action, Action::Update | Action::Delete));
        assert_eq!(history[0].record.actor.name, "admin");
    }
    a.stop().await;
    b.stop().await;
    store.close().await;
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_two_servers_share_one_database_from_processes() {
    two_servers_share_one_database(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pg_two_servers_share_one_database_from_processes() {
    two_servers_share_one_database(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mysql_two_servers_share_one_database_from_processes() {
    two_servers_share_one_database(Backend::MySql).await;
}
