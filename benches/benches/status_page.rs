//! What a status page costs with 1,000,000 jobs in PostgreSQL.
//!
//! The queue table is filled (not measured) with 1,000,000 jobs over three queues in every
//! state: 600,000 done (a third of them within the last hour), 200,000 pending and due, 100,000
//! dead, 50,000 scheduled, 30,000 waiting for a retry, 10,000 running and 10,000 with expired
//! leases. Then, each first on a new connection pool (cold: no statement prepared yet), then
//! 100 times more (warm):
//!
//! 1. `QueueAdmin::overview(10_000)` (and with a 1,000 cap): every queue's capped counts, what
//!    the page shows;
//!    baseline in the same run: `QueueAdmin::all_stats`, the exact `COUNT ... GROUP BY queue`
//!    over the whole table (the naive page).
//! 2. The first page (50) of dead jobs whose payload contains a text, and its capped count (the
//!    bulk-action preview).
//! 3. The pages themselves, as `ralph-web` renders them (`GET queues`, and one queue's dead
//!    jobs filtered by payload text), requested through the router in-process: store reads,
//!    rendering and the whole body, without a socket. Cold is the first request after the
//!    store is opened (a service's first page after it starts).
//!
//! `cargo bench -p ralph-benches --bench status_page`; `STATUS_BENCH_JOBS` sets the job count
//! (default 1,000,000). Target: the page's reads answer in <= 200 ms.
#![allow(missing_docs, unreachable_pub, clippy::unwrap_used)]

#[allow(dead_code)] // the MariaDB default is not used here
mod store_common;

use std::time::Instant;

use ralph_core::{JobFilter, JobState, QueueAdmin};
use ralph_store::{PgStore, sqlx};

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Prints the cold (first) time and the warm p50/p99/max; returns the worst of cold and warm p99.
fn report(label: &str, cold: f64, mut warm: Vec<f64>) -> f64 {
    warm.sort_by(f64::total_cmp);
    let (p50, p99) = (percentile(&warm, 0.5), percentile(&warm, 0.99));
    println!(
        "  {label:<46} cold {cold:>8.2} ms   warm p50 {p50:>8.2} ms   p99 {p99:>8.2} ms   max {:>8.2} ms",
        warm[warm.len() - 1]
    );
    cold.max(p99)
}

/// Times `f` once on a new store (cold), then 100 more times on that store (warm).
async fn measure<T>(url: &str, label: &str, f: impl AsyncFn(&PgStore) -> T) -> (f64, T) {
    let store = PgStore::connect(url).await.unwrap();
    let t = Instant::now();
    let first = f(&store).await;
    let cold = t.elapsed().as_secs_f64() * 1e3;
    let mut warm = Vec::with_capacity(100);
    for _ in 0..100 {
        let t = Instant::now();
        f(&store).await;
        warm.push(t.elapsed().as_secs_f64() * 1e3);
    }
    store.pool().close().await;
    (report(label, cold, warm), first)
}

/// `GET path` on a status page over `store` (a new router each time: routers are cheap, the
/// store is what is warm or cold); the body is read to the end.
async fn get_page(store: &PgStore, path: &str) -> usize {
    use http_body_util::BodyExt as _;
    use tower::ServiceExt as _;
    let admin: std::sync::Arc<dyn QueueAdmin> = std::sync::Arc::new(store.clone());
    let router: axum::Router = ralph_web::StatusPage::new(admin)
        .access(|_: &axum::http::request::Parts| ralph_web::Access::read("bench"))
        .router();
    let request = axum::http::Request::get(path).header("host", "bench").body(axum::body::Body::empty()).unwrap();
    let response = router.oneshot(request).await.unwrap();
    assert_eq!(response.status(), axum::http::StatusCode::OK, "{path}");
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert!(body.len() > 1000, "{path}: a whole page");
    body.len()
}

#[tokio::main]
async fn main() {
    let jobs: i64 = std::env::var("STATUS_BENCH_JOBS").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000_000);
    let Some((url, admin_url, name)) =
        store_common::fresh("RALPH_TEST_PG_URL", store_common::PG_DEFAULT, "status").await
    else {
        return;
    };
    let store = PgStore::connect(&url).await.unwrap();
    let pool = store.pool().clone();

    // Fill. Shares of the jobs per state, per mille; queue by id: 80% discovery.dc1, 15%
    // discovery.dc2, 5% mail.
    let t = Instant::now();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "INSERT INTO queue_jobs (queue, payload, state, attempts, due_at, lease_token, worker, last_error, enqueued_at, finished_at) \
         SELECT CASE WHEN g % 20 < 16 THEN 'discovery.dc1' WHEN g % 20 < 19 THEN 'discovery.dc2' ELSE 'mail' END, \
                '{{\"targets\":[\"198.18.' || (g % 256) || '.0/24\"],\"job\":' || g || '}}', \
                s.state, s.attempts, now() + s.due, \
                CASE WHEN s.state = 'running' THEN md5(g::text) END, \
                CASE WHEN s.attempts > 0 THEN 'worker-' || (g % 7) END, \
                CASE WHEN s.state = 'dead' OR (s.state = 'pending' AND s.attempts > 0) THEN 'timeout on 198.18.' || (g % 256) || '.1' END, \
                now() - interval '2 hours', \
                CASE WHEN s.state IN ('done', 'dead') THEN now() - s.age END \
         FROM generate_series(0, {jobs} - 1) AS g \
         CROSS JOIN LATERAL (SELECT * FROM (VALUES \
             (0, 200, 'done', 1, interval '0', interval '30 minutes'), \
             (200, 600, 'done', 1, interval '0', interval '5 hours'), \
             (600, 800, 'pending', 0, interval '-10 minutes', NULL::interval), \
             (800, 900, 'dead', 5, interval '0', interval '1 day'), \
             (900, 950, 'pending', 0, interval '1 hour', NULL), \
             (950, 980, 'pending', 2, interval '10 minutes', NULL), \
             (980, 990, 'running', 1, interval '10 minutes', NULL), \
             (990, 1000, 'running', 1, interval '-1 minute', NULL)) \
             AS v(lo, hi, state, attempts, due, age) WHERE g * 1000 / {jobs} >= lo AND g * 1000 / {jobs} < hi) AS s"
    )))
    .execute(&pool)
    .await
    .unwrap();
    // What autovacuum does on a live server: statistics and the visibility map (without it an
    // index-only count visits the table for every row).
    sqlx::raw_sql("VACUUM ANALYZE queue_jobs").execute(&pool).await.unwrap();
    let per_state: Vec<(String, i64)> =
        sqlx::query_as("SELECT state, COUNT(*) FROM queue_jobs GROUP BY state ORDER BY state")
            .fetch_all(&pool)
            .await
            .unwrap();
    println!("status page: {jobs} jobs {per_state:?}; filled in {:.0} s (not measured)", t.elapsed().as_secs_f64());
    store.pool().close().await;

    println!("== the queue overview (three queues)");
    let (overview_ms, overview) =
        measure(&url, "overview(cap 10,000)", async |s| s.overview(10_000).await.unwrap()).await;
    measure(&url, "overview(cap 1,000)", async |s| s.overview(1_000).await.unwrap()).await;
    let (_, exact) =
        measure(&url, "baseline: all_stats (exact COUNT ... GROUP BY)", async |s| s.all_stats().await.unwrap()).await;
    // The capped counts agree with the exact ones wherever they are under the cap.
    for (o, e) in overview.iter().zip(&exact) {
        assert_eq!(o.queue, e.queue);
        assert_eq!(o.dead.count, e.dead.min(10_000), "{}", o.queue);
        assert_eq!(o.dead.capped, e.dead > 10_000, "{}", o.queue);
        let claimed = o.running.count + o.expired.count;
        assert!(claimed <= e.running + e.expired, "{}", o.queue);
    }
    println!(
        "  {:?}",
        overview.iter().map(|o| (&o.queue, o.pending.to_string(), o.dead.to_string())).collect::<Vec<_>>()
    );

    println!("== one queue's dead jobs, filtered by payload text");
    let dead = JobFilter::state(JobState::Dead).containing("198.18.7.");
    let (find_ms, page) = measure(&url, "find_jobs: first page of 50", async |s| {
        s.find_jobs("discovery.dc1", &dead, None, 50).await.unwrap()
    })
    .await;
    assert_eq!(page.len(), 50);
    assert!(page.iter().all(|j| j.payload.contains("198.18.7.")));
    let (count_ms, count) = measure(&url, "count_jobs(cap 10,000): bulk-action preview", async |s| {
        s.count_jobs("discovery.dc1", &dead, 10_000).await.unwrap()
    })
    .await;
    println!("  matching dead jobs: {count}");

    println!("== the pages (ralph-web, default cap 10,000)");
    let overview_page = measure(&url, "GET queues", async |s| get_page(s, "/queues").await).await.0;
    let queue_page = measure(&url, "GET queues/discovery.dc1?state=dead&q=198.18.7.", async |s| {
        get_page(s, "/queues/discovery.dc1?state=dead&q=198.18.7.").await
    })
    .await
    .0;

    let worst = overview_ms.max(find_ms).max(count_ms).max(overview_page).max(queue_page);
    println!(
        "  target: the page's reads <= 200 ms (worst {worst:.1} ms): {}",
        if worst <= 200.0 { "met" } else { "MISSED" }
    );
    store_common::drop_db(&admin_url, &name).await;
}
