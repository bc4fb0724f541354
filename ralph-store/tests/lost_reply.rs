//! A reply lost after the server committed: the connection between the store and a real
//! PostgreSQL or MariaDB server runs through a proxy that, when armed, lets the next request
//! through, swallows the replies and cuts the connection. The statement has committed, the
//! caller sees an error and repeats the call (as the discovery worker does) on a new
//! connection: an `ack`, `ack_batch` or `requeue` repeated so must report what the first one
//! did, not a lost lease.
#![cfg(any(feature = "postgres", feature = "mysql"))]

mod queue_common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use ralph_core::{JobQueue, JobState, QueueAdmin};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const LEASE: Duration = Duration::from_secs(60);

/// A TCP proxy to one server; [`Proxy::arm`] makes it swallow the next reply and cut that
/// connection (both ways), as a connection lost between commit and reply does.
struct Proxy {
    addr: SocketAddr,
    armed: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the proxy");
        let addr = listener.local_addr().expect("proxy address");
        let armed = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn({
            let armed = Arc::clone(&armed);
            async move {
                while let Ok((client, _)) = listener.accept().await {
                    let armed = Arc::clone(&armed);
                    tokio::spawn(async move {
                        let Ok(server) = TcpStream::connect(upstream).await else { return };
                        pump(client, server, &armed).await;
                    });
                }
            }
        });
        Self { addr, armed, task }
    }

    fn arm(&self) {
        self.armed.store(true, Ordering::SeqCst);
    }

    fn armed(&self) -> bool {
        self.armed.load(Ordering::SeqCst)
    }

    /// `url` with its host and port replaced by the proxy's.
    fn url(&self, url: &str) -> String {
        let (scheme, rest) = url.split_once("://").expect("URL scheme");
        let (authority, path) = rest.split_once('/').expect("URL path");
        let userinfo = authority.rsplit_once('@').map(|(u, _)| format!("{u}@")).unwrap_or_default();
        format!("{scheme}://{userinfo}{}/{path}", self.addr)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Copies both ways until either side closes. The first request (other than a ping) the
/// client sends while `armed` (disarming it) goes through; every reply after it is dropped, and 300 ms later (the
/// server has long committed) the connection is cut both ways.
async fn pump(mut client: TcpStream, mut server: TcpStream, armed: &AtomicBool) {
    let (mut client_read, mut client_write) = client.split();
    let (mut server_read, mut server_write) = server.split();
    let cutting = AtomicBool::new(false);
    let cut = tokio::sync::Notify::new();
    let upstream = async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = client_read.read(&mut buf).await?;
            if n == 0 {
                return Ok::<(), std::io::Error>(());
            }
            // A 5-byte request is a driver's ping (MySQL's COM_PING, PostgreSQL's lone Sync),
            // which sqlx sends before reusing a connection: not the statement to cut after.
            if n != 5 && armed.swap(false, Ordering::SeqCst) {
                cutting.store(true, Ordering::SeqCst);
                cut.notify_one();
            }
            server_write.write_all(&buf[..n]).await?;
        }
    };
    let downstream = async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = server_read.read(&mut buf).await?;
            if n == 0 {
                return Ok::<(), std::io::Error>(());
            }
            if !cutting.load(Ordering::SeqCst) {
                client_write.write_all(&buf[..n]).await?;
            }
        }
    };
    tokio::select! {
        _ = upstream => {}
        _ = downstream => {}
        () = async {
            cut.notified().await;
            tokio::time::sleep(Duration::from_millis(300)).await;
        } => {}
    }
}

/// The server's address in `url`.
async fn upstream(url: &str) -> SocketAddr {
    let rest = url.split_once("://").expect("scheme").1;
    let authority = rest.split('/').next().expect("authority");
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    tokio::net::lookup_host(host_port).await.expect("resolve the server").next().expect("an address")
}

/// The scenario, on a store whose one connection runs through `proxy`. Each call is made once
/// on another job first, so the statement is prepared on the connection and the reply the
/// proxy swallows is the one to the statement itself (not to its preparation).
async fn repeated_after_a_lost_reply<Q: JobQueue + QueueAdmin>(q: &Q, proxy: &Proxy) {
    q.enqueue("lost", &(0..6).map(|i| format!("{{\"n\":{i}}}")).collect::<Vec<_>>()).await.expect("enqueue");
    let jobs = q.claim("lost", 6, LEASE, "w").await.expect("claim");
    assert_eq!(jobs.len(), 6);

    // ack
    assert!(q.ack(&jobs[0]).await.expect("ack"));
    proxy.arm();
    assert!(q.ack(&jobs[1]).await.is_err(), "the reply was lost: the caller sees an error");
    assert!(!proxy.armed(), "the proxy swallowed a reply");
    assert!(q.ack(&jobs[1]).await.expect("repeated ack"), "the repeat reports the committed ack");

    // ack_batch (one claim: one statement)
    assert_eq!(q.ack_batch(std::slice::from_ref(&jobs[2])).await.expect("ack_batch"), 1);
    proxy.arm();
    assert!(q.ack_batch(std::slice::from_ref(&jobs[3])).await.is_err(), "the reply was lost");
    assert_eq!(q.ack_batch(std::slice::from_ref(&jobs[3])).await.expect("repeated ack_batch"), 1);

    // requeue
    assert!(q.requeue(&jobs[4], "{\"rest\":4}").await.expect("requeue"));
    proxy.arm();
    assert!(q.requeue(&jobs[5], "{\"rest\":5}").await.is_err(), "the reply was lost");
    assert!(q.requeue(&jobs[5], "{\"rest\":5}").await.expect("repeated requeue"), "the repeat reports it");

    let stats = q.stats("lost").await.expect("stats");
    assert_eq!((stats.done, stats.pending, stats.running), (4, 2, 0), "{stats:?}");
    let pending = q.list_jobs("lost", JobState::Pending, 10).await.expect("list");
    let payloads: Vec<&str> = pending.iter().map(|j| j.payload.as_str()).collect();
    assert_eq!(payloads, ["{\"rest\":4}", "{\"rest\":5}"], "each rest once, as its own job");
}

/// Migrates the database at `url` directly, then runs the scenario on a store whose one
/// connection goes through a proxy, not pinged before use (a ping's reply would be the one
/// swallowed otherwise).
async fn through_a_proxy<DB>(url: &str)
where
    DB: ralph_store::Backend,
    ralph_store::SqlStore<DB>: JobQueue + QueueAdmin,
{
    ralph_store::SqlStore::<DB>::connect(url).await.expect("migrate").pool().close().await;
    let proxy = Proxy::start(upstream(url).await).await;
    let pool = sqlx::pool::PoolOptions::<DB>::new()
        .max_connections(1)
        .test_before_acquire(false)
        .connect(&proxy.url(url))
        .await
        .expect("connect through the proxy");
    let store = ralph_store::SqlStore::<DB>::from_pool(pool);
    repeated_after_a_lost_reply(&store, &proxy).await;
    store.pool().close().await;
}

#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_calls_repeated_after_a_lost_reply() {
    use queue_common::pg;
    let Some(db) = pg::fresh("lostreply").await else { return };
    through_a_proxy::<sqlx::Postgres>(&db.url).await;
    pg::drop_db(db).await;
}

#[cfg(feature = "mysql")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_calls_repeated_after_a_lost_reply() {
    use queue_common::my;
    let Some(db) = my::fresh("lostreply").await else { return };
    through_a_proxy::<sqlx::MySql>(&db.url).await;
    my::drop_db(db).await;
}
