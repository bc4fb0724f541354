//! Shared by the integration tests: stores (in memory, SQLite, fresh PostgreSQL and MariaDB
//! databases), jobs seeded into known states, and requests sent through the router.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, Request, StatusCode, header};
use http_body_util::BodyExt as _;
use ralph_core::testing::MemoryStore;
use ralph_core::{Id, Job, JobQueue, QueueAdmin, RetryPolicy};
use ralph_store::AnyStore;
use ralph_web::{Access, AccessLevel, StatusPage};
use tower::ServiceExt as _;

/// The host every test request names.
pub const HOST: &str = "status.test";

/// A store that implements both queue traits.
pub trait Store: JobQueue + QueueAdmin + 'static {}
impl<T: JobQueue + QueueAdmin + 'static> Store for T {}

/// The test hook: `x-test-access: read|act`, actor from `x-test-actor` (default `tester`).
pub fn hook(request: &Parts) -> Access {
    let actor = request.headers.get("x-test-actor").and_then(|v| v.to_str().ok()).unwrap_or("tester").to_owned();
    let level = match request.headers.get("x-test-access").and_then(|v| v.to_str().ok()) {
        Some("act") => AccessLevel::Act,
        Some("read") => AccessLevel::Read,
        _ => AccessLevel::None,
    };
    Access { level, actor }
}

/// A page over `store` with the test hook.
pub fn page(store: Arc<dyn QueueAdmin>) -> StatusPage {
    StatusPage::new(store).access(hook)
}

/// One answer, body read in full.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

impl Answer {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    pub fn location(&self) -> &str {
        self.headers.get(header::LOCATION).and_then(|v| v.to_str().ok()).unwrap_or_default()
    }
}

/// Sends `request` through `router`.
pub async fn send(router: &Router, request: Request<Body>) -> Answer {
    let response = router.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    Answer { status, headers, body: String::from_utf8_lossy(&bytes).into_owned() }
}

/// A request builder with the test host and `access` (`""`, `"read"` or `"act"`).
pub fn request(method: Method, uri: &str, access: &str) -> axum::http::request::Builder {
    let builder = Request::builder().method(method).uri(uri).header(header::HOST, HOST);
    if access.is_empty() { builder } else { builder.header("x-test-access", access) }
}

/// `GET uri` at `access`.
pub async fn get(router: &Router, uri: &str, access: &str) -> Answer {
    send(router, request(Method::GET, uri, access).body(Body::empty()).unwrap()).await
}

/// A same-origin form post, as the page's own buttons send it.
pub async fn post_form(router: &Router, uri: &str, access: &str, form: &str) -> Answer {
    let req = request(Method::POST, uri, access)
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .header(header::ORIGIN, format!("http://{HOST}"))
        .header("sec-fetch-site", "same-origin")
        .body(Body::from(form.to_owned()))
        .unwrap();
    send(router, req).await
}

/// A script's JSON post (no browser headers).
pub async fn post_json(router: &Router, uri: &str, access: &str, body: serde_json::Value) -> Answer {
    let req = request(Method::POST, uri, access)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_string()))
        .unwrap();
    send(router, req).await
}

/// How many jobs to put in each state.
#[derive(Debug, Clone, Copy, Default)]
pub struct Seed {
    pub pending: usize,
    pub retrying: usize,
    pub running: usize,
    pub expired: usize,
    pub dead: usize,
    pub done: usize,
}

fn payloads(prefix: &str, state: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{{\"{prefix}\":\"{state}-{i}\"}}")).collect()
}

/// Enqueues `n` jobs and claims exactly them (everything enqueued before is no longer due).
async fn enqueue_and_claim(q: &dyn Store, queue: &str, payloads: &[String], lease: Duration) -> Vec<Job> {
    let ids = q.enqueue(queue, payloads).await.unwrap();
    let jobs = q.claim(queue, payloads.len(), lease, "seeder").await.unwrap();
    let mut claimed: Vec<Id<Job>> = jobs.iter().map(|j| j.id).collect();
    claimed.sort_unstable();
    assert_eq!(claimed, ids, "seeding claims exactly the jobs it enqueued");
    jobs
}

/// Puts jobs into `queue` in the states `seed` names; payloads are `{"<prefix>":"<state>-<i>"}`.
pub async fn seed(q: &dyn Store, queue: &str, prefix: &str, seed: Seed) {
    let hour = Duration::from_secs(3600);
    if seed.dead > 0 {
        let policy = RetryPolicy { max_attempts: 1, ..RetryPolicy::default() };
        for job in enqueue_and_claim(q, queue, &payloads(prefix, "dead", seed.dead), hour).await {
            assert_eq!(q.fail(&job, "boom", &policy).await.unwrap(), ralph_core::FailOutcome::Dead);
        }
    }
    if seed.done > 0 {
        let jobs = enqueue_and_claim(q, queue, &payloads(prefix, "done", seed.done), hour).await;
        assert_eq!(q.ack_batch(&jobs).await.unwrap(), seed.done as u64);
    }
    if seed.retrying > 0 {
        let policy = RetryPolicy { max_attempts: 5, base_backoff: hour, max_backoff: hour };
        for job in enqueue_and_claim(q, queue, &payloads(prefix, "retrying", seed.retrying), hour).await {
            assert!(matches!(q.fail(&job, "later", &policy).await.unwrap(), ralph_core::FailOutcome::Retry { .. }));
        }
    }
    if seed.running > 0 {
        enqueue_and_claim(q, queue, &payloads(prefix, "running", seed.running), hour).await;
    }
    if seed.expired > 0 {
        enqueue_and_claim(q, queue, &payloads(prefix, "expired", seed.expired), Duration::from_millis(1)).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if seed.pending > 0 {
        q.enqueue(queue, &payloads(prefix, "pending", seed.pending)).await.unwrap();
    }
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A store of one backend, with what it takes to clean up after it.
pub struct TestStore {
    pub store: Arc<AnyStore>,
    pub name: &'static str,
    cleanup: Cleanup,
}

enum Cleanup {
    Dir(#[allow(dead_code)] tempfile::TempDir),
    Pg { admin_url: String, db: String },
    My { admin_url: String, db: String },
}

/// `scheme://host/db?x` with `db` replaced.
fn with_database(url: &str, db: &str) -> String {
    let (head, query) = url.split_once('?').map_or((url, String::new()), |(h, q)| (h, format!("?{q}")));
    let cut = head.rfind('/').map_or(head.len(), |i| i + 1);
    format!("{}{db}{query}", &head[..cut])
}

/// A database name that `scripts/test`'s teardown also removes if a test dies before dropping
/// it (it drops everything starting with the name of the database it made).
fn fresh_name(base_var: &str) -> String {
    let base = std::env::var(base_var)
        .ok()
        .and_then(|u| u.split('?').next().and_then(|h| h.rsplit('/').next()).map(str::to_owned))
        .filter(|b| !b.is_empty())
        .unwrap_or_else(|| "ralph_web_test".to_owned());
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let suffix = format!("_web_{}_{n}", std::process::id());
    let keep = 63usize.saturating_sub(suffix.len()).min(base.len());
    format!("{}{suffix}", &base[..keep])
}

impl TestStore {
    pub async fn sqlite() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("web.sqlite3").display());
        let store = AnyStore::connect(&url).await.unwrap();
        Self { store: Arc::new(store), name: "sqlite", cleanup: Cleanup::Dir(dir) }
    }

    /// A fresh PostgreSQL database, or `None` (skipped) outside CI without the service.
    pub async fn postgres() -> Option<Self> {
        use ralph_store::sqlx::postgres::PgPoolOptions;
        let admin_url = ralph_testkit::service("RALPH_TEST_PG_ADMIN_URL")?;
        let db = fresh_name("RALPH_TEST_PG_URL");
        let admin = PgPoolOptions::new().max_connections(1).connect(&admin_url).await.unwrap();
        ralph_store::sqlx::query(ralph_store::sqlx::AssertSqlSafe(format!(
            "CREATE DATABASE \"{db}\" ENCODING 'UTF8' TEMPLATE template0"
        )))
        .execute(&admin)
        .await
        .unwrap();
        admin.close().await;
        let store = AnyStore::connect(&with_database(&admin_url, &db)).await.unwrap();
        Some(Self { store: Arc::new(store), name: "postgres", cleanup: Cleanup::Pg { admin_url, db } })
    }

    /// A fresh MariaDB/MySQL database, or `None` (skipped) outside CI without the service.
    pub async fn mysql() -> Option<Self> {
        use ralph_store::sqlx::mysql::MySqlPoolOptions;
        let admin_url = ralph_testkit::service("RALPH_TEST_MYSQL_ADMIN_URL")?;
        let db = fresh_name("RALPH_TEST_MYSQL_URL");
        let admin = MySqlPoolOptions::new().max_connections(1).connect(&admin_url).await.unwrap();
        ralph_store::sqlx::raw_sql(ralph_store::sqlx::AssertSqlSafe(format!(
            "CREATE DATABASE `{db}` CHARACTER SET utf8mb4 COLLATE {}",
            ralph_store::MYSQL_COLLATION
        )))
        .execute(&admin)
        .await
        .unwrap();
        admin.close().await;
        let store = AnyStore::connect(&with_database(&admin_url, &db)).await.unwrap();
        Some(Self { store: Arc::new(store), name: "mysql", cleanup: Cleanup::My { admin_url, db } })
    }

    /// Every backend available: SQLite always, PostgreSQL and MariaDB when their services are.
    pub async fn all() -> Vec<Self> {
        let mut stores = vec![Self::sqlite().await];
        stores.extend(Self::postgres().await);
        stores.extend(Self::mysql().await);
        stores
    }

    /// Drops the database (the SQLite directory goes with the value).
    pub async fn drop_db(self) {
        let Self { store, cleanup, .. } = self;
        store.close().await;
        drop(store);
        match cleanup {
            Cleanup::Dir(_) => {}
            Cleanup::Pg { admin_url, db } => {
                let admin = ralph_store::sqlx::postgres::PgPoolOptions::new()
                    .max_connections(1)
                    .connect(&admin_url)
                    .await
                    .unwrap();
                let _ = ralph_store::sqlx::query(ralph_store::sqlx::AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS \"{db}\" WITH (FORCE)"
                )))
                .execute(&admin)
                .await;
                admin.close().await;
            }
            Cleanup::My { admin_url, db } => {
                let admin = ralph_store::sqlx::mysql::MySqlPoolOptions::new()
                    .max_connections(1)
                    .connect(&admin_url)
                    .await
                    .unwrap();
                let _ = ralph_store::sqlx::raw_sql(ralph_store::sqlx::AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS `{db}`"
                )))
                .execute(&admin)
                .await;
                admin.close().await;
            }
        }
    }
}

/// An in-memory store.
pub fn memory() -> Arc<MemoryStore> {
    Arc::new(MemoryStore::new())
}

/// Every attribute value of `attr="…"` in `html` (maud writes double quotes).
pub fn attribute_values<'a>(html: &'a str, attr: &str) -> Vec<&'a str> {
    let needle = format!(" {attr}=\"");
    let mut out = Vec::new();
    let mut rest = html;
    while let Some(at) = rest.find(&needle) {
        rest = &rest[at + needle.len()..];
        if let Some(end) = rest.find('"') {
            out.push(&rest[..end]);
            rest = &rest[end..];
        }
    }
    out
}

/// Resolves a relative reference (`./x`, `../x`, `?q`) against a path, as a browser does.
pub fn resolve(from: &str, reference: &str) -> String {
    let reference = reference.replace("&amp;", "&");
    let from_path = from.split('?').next().unwrap_or(from);
    if let Some(query) = reference.strip_prefix('?') {
        return format!("{from_path}?{query}");
    }
    let (ref_path, query) = reference.split_once('?').map_or((reference.as_str(), None), |(p, q)| (p, Some(q)));
    let dir = &from_path[..from_path.rfind('/').map_or(0, |i| i + 1)];
    let mut segments: Vec<&str> = dir.split('/').collect();
    segments.pop(); // the empty piece after the last slash
    let parts: Vec<&str> = ref_path.split('/').collect();
    for (i, part) in parts.iter().enumerate() {
        let last = i + 1 == parts.len();
        match *part {
            "." => {
                if last {
                    segments.push("");
                }
            }
            ".." => {
                if segments.len() > 1 {
                    segments.pop();
                }
                if last {
                    segments.push("");
                }
            }
            p => segments.push(p),
        }
    }
    let path = segments.join("/");
    match query {
        Some(q) => format!("{path}?{q}"),
        None => path,
    }
}
