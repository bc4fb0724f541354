//! What the pages, the JSON and the metrics show, against real stores: counts equal the
//! store's, capped counts, filter and paging, escaping, bad input, mounting under a prefix,
//! live updates, workers and scans, and a failing store.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Method, StatusCode, header};
use chrono::Utc;
use common::{Seed, TestStore, get, memory, post_form, request, seed};
use http_body_util::BodyExt as _;
use ralph_core::history::Actor;
use ralph_core::{JobProgress, JobQueue, QueueAdmin, StoreError, WorkerBeat};
use tower::ServiceExt as _;

/// The text of the live cell of `queue`'s `field`.
fn cell(html: &str, queue: &str, field: &str) -> String {
    let key = format!("data-queue=\"{queue}\" data-field=\"{field}\"");
    let at = html.find(&key).unwrap_or_else(|| panic!("no cell {key} in {html}"));
    let rest = &html[at..];
    let start = rest.find('>').expect("cell opens") + 1;
    let end = rest[start..].find('<').expect("cell closes");
    rest[start..start + end].to_owned()
}

/// The value of the sample `name{labels}` in an exposition.
fn sample(metrics: &str, series: &str) -> f64 {
    let line = metrics
        .lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .unwrap_or_else(|| panic!("no sample {series} in\n{metrics}"));
    line[series.len() + 1..].parse().expect("a number")
}

const EXPECTED: [(&str, u64); 7] = [
    ("pending", 3),
    ("scheduled", 0),
    ("retrying", 2),
    ("running", 4),
    ("expired", 1),
    ("dead", 5),
    ("done_last_hour", 6),
];

async fn counts_match(store: Arc<dyn common::Store>, name: &str) {
    seed(&*store, "alpha", "n", Seed { pending: 3, retrying: 2, running: 4, expired: 1, dead: 5, done: 6 }).await;
    seed(&*store, "beta", "n", Seed { pending: 1, dead: 2, ..Seed::default() }).await;
    store.set_paused("beta", true, &Actor::system()).await.expect("pause");
    let admin: Arc<dyn QueueAdmin> = store.clone();
    let router: Router = common::page(admin).router();

    let html = get(&router, "/queues", "read").await;
    assert_eq!(html.status, StatusCode::OK, "{name}");
    let json = get(&router, "/api/queues", "read").await.json();
    let metrics = get(&router, "/metrics", "read").await;
    assert!(
        metrics.headers[header::CONTENT_TYPE].to_str().expect("ascii").starts_with("text/plain; version=0.0.4"),
        "{name}"
    );
    let alpha = &json["queues"][0];
    assert_eq!(alpha["queue"], "alpha", "{name}: queues in name order");
    for (field, expected) in EXPECTED {
        assert_eq!(cell(&html.body, "alpha", field), expected.to_string(), "{name}: HTML {field}");
        assert_eq!(alpha[field]["count"], expected, "{name}: JSON {field}");
        assert_eq!(alpha[field]["capped"], false, "{name}: JSON {field}");
        let series = format!("ralph_queue_jobs{{queue=\"alpha\",state=\"{field}\"}}");
        assert!((sample(&metrics.body, &series) - expected as f64).abs() < f64::EPSILON, "{name}: metric {field}");
        let capped = format!("ralph_queue_count_capped{{queue=\"alpha\",state=\"{field}\"}}");
        assert!(sample(&metrics.body, &capped).abs() < f64::EPSILON, "{name}: {capped}");
    }
    assert_eq!(cell(&html.body, "beta", "pending"), "1", "{name}");
    assert_eq!(cell(&html.body, "beta", "dead"), "2", "{name}");
    assert_eq!(cell(&html.body, "beta", "paused"), "paused", "{name}");
    assert_eq!(cell(&html.body, "alpha", "paused"), "active", "{name}");
    assert_eq!((json["queues"][1]["paused"].as_bool(), alpha["paused"].as_bool()), (Some(true), Some(false)), "{name}");
    assert!(alpha["oldest_pending_age_secs"].as_f64().is_some(), "{name}: 3 jobs wait");
    assert_eq!(sample(&metrics.body, "ralph_queue_paused{queue=\"beta\"}"), 1.0, "{name}");
    assert_eq!(sample(&metrics.body, "ralph_queue_paused{queue=\"alpha\"}"), 0.0, "{name}");
    assert!(sample(&metrics.body, "ralph_queue_oldest_pending_age_seconds{queue=\"alpha\"}") >= 0.0, "{name}");

    // One queue's page shows the same counts, and each tab counts its own state.
    let page = get(&router, "/queues/alpha?state=dead", "read").await;
    for (field, expected) in EXPECTED {
        assert_eq!(cell(&page.body, "alpha", field), expected.to_string(), "{name}: queue page {field}");
    }
    assert!(page.body.contains("5 dead jobs"), "{name}: {}", page.body);
    for (state, expected) in [("pending", 5), ("running", 5), ("done", 6), ("dead", 5)] {
        let count = get(&router, &format!("/api/queues/alpha/count?state={state}"), "read").await.json();
        assert_eq!(
            count["count"]["count"], expected,
            "{name}: count {state} (pending = due + retrying; running = live + expired)"
        );
    }
}

#[tokio::test]
async fn counts_equal_the_store_in_html_json_and_metrics() {
    counts_match(memory(), "memory").await;
    for db in TestStore::all().await {
        counts_match(db.store.clone(), db.name).await;
        db.drop_db().await;
    }
}

#[tokio::test]
async fn capped_counts_show_short_with_a_plus() {
    for db in [TestStore::sqlite().await] {
        let store = db.store.clone();
        let payloads: Vec<String> = (0..1_200).map(|i| format!("{{\"n\":{i}}}")).collect();
        store.enqueue("big", &payloads).await.expect("enqueue");
        let router: Router = common::page(store.clone()).count_cap(1_000).router();
        let html = get(&router, "/queues", "read").await;
        assert_eq!(cell(&html.body, "big", "pending"), "1k+");
        assert!(html.body.contains("class=\"num capped\""), "capped cells are marked");
        let json = get(&router, "/api/queues", "read").await.json();
        assert_eq!((json["cap"].as_u64(), json["queues"][0]["pending"]["count"].as_u64()), (Some(1_000), Some(1_000)));
        assert_eq!(json["queues"][0]["pending"]["capped"], true);
        assert_eq!(json["queues"][0]["pending"]["display"], "1k+");
        let metrics = get(&router, "/metrics", "read").await.body;
        assert_eq!(sample(&metrics, "ralph_queue_jobs{queue=\"big\",state=\"pending\"}"), 1_000.0);
        assert_eq!(sample(&metrics, "ralph_queue_count_capped{queue=\"big\",state=\"pending\"}"), 1.0);
        assert_eq!(sample(&metrics, "ralph_queue_count_cap"), 1_000.0);
        let count = get(&router, "/api/queues/big/count?state=pending", "read").await.json();
        assert_eq!((count["count"]["count"].as_u64(), count["count"]["display"].as_str()), (Some(1_000), Some("1k+")));

        // A smaller cap, on the queue page.
        let small: Router = common::page(store.clone()).count_cap(5).router();
        let page = get(&small, "/queues/big", "read").await;
        assert_eq!(cell(&page.body, "big", "pending"), "5+");
        assert!(page.body.contains("5+ pending jobs"), "{}", page.body);
        db.drop_db().await;
    }
}

async fn filter_and_paging(store: Arc<dyn common::Store>, name: &str) {
    let mut payloads = Vec::new();
    for i in 0..35 {
        payloads.push(if i % 7 < 5 {
            format!("{{\"host\":\"rack-A-{i}\"}}")
        } else {
            format!("{{\"host\":\"rack-B-{i}\"}}")
        });
    }
    store.enqueue("hosts", &payloads).await.expect("enqueue");
    let router: Router = common::page(store.clone()).router();

    // JSON: pages of 10 over the 25 "rack-a" jobs (case-insensitive), no repeats, none missing.
    let mut seen = BTreeSet::new();
    let mut uri = "/api/queues/hosts/jobs?state=pending&q=RACK-a&limit=10".to_owned();
    let mut sizes = Vec::new();
    loop {
        let page = get(&router, &uri, "read").await;
        assert_eq!(page.status, StatusCode::OK, "{name}: {}", page.body);
        let page = page.json();
        let jobs = page["jobs"].as_array().expect("jobs");
        sizes.push(jobs.len());
        for job in jobs {
            assert!(job["payload"].as_str().expect("payload").contains("rack-A"), "{name}: {job}");
            assert!(seen.insert(job["id"].as_i64().expect("id")), "{name}: a job on two pages");
        }
        match page["next"].as_str() {
            Some(next) => {
                uri = format!("/api/queues/hosts/jobs?state=pending&q=RACK-a&limit=10&after={}", encode(next));
            }
            None => break,
        }
    }
    assert_eq!((sizes, seen.len()), (vec![10, 10, 5], 25), "{name}");
    let count = get(&router, "/api/queues/hosts/count?state=pending&q=rack-b", "read").await.json();
    assert_eq!(count["count"]["count"], 10, "{name}");

    // HTML: the same pages through the "Next page" links.
    let mut path = "/queues/hosts?q=rack-a&limit=10".to_owned();
    let mut html_seen = BTreeSet::new();
    for _ in 0..5 {
        let page = get(&router, &path, "read").await;
        assert_eq!(page.status, StatusCode::OK, "{name}: {}", page.body);
        assert!(page.body.contains("25 pending jobs whose payload contains"), "{name}");
        for row in page.body.split("<code class=\"payload\"").skip(1) {
            let text = &row[row.find('>').expect("code opens") + 1..row.find("</code>").expect("code closes")];
            assert!(text.contains("rack-A"), "{name}: {text}");
            assert!(html_seen.insert(text.to_owned()), "{name}: {text} twice");
        }
        let next = common::attribute_values(&page.body, "href").into_iter().find(|h| h.contains("after="));
        match next {
            Some(next) => path = common::resolve(&path, next),
            None => break,
        }
    }
    assert_eq!(html_seen.len(), 25, "{name}");
}

/// Percent-encodes a query value (the cursor holds `:`).
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[tokio::test]
async fn payload_filter_and_keyset_paging() {
    filter_and_paging(memory(), "memory").await;
    for db in TestStore::all().await {
        filter_and_paging(db.store.clone(), db.name).await;
        db.drop_db().await;
    }
}

#[tokio::test]
async fn bad_input_is_a_clear_400_or_422() {
    let store = memory();
    seed(&*store, "q1", "n", Seed { pending: 1, ..Seed::default() }).await;
    let router: Router = common::page(store).router();
    let long = format!("/api/queues/q1/count?state=dead&q={}", "x".repeat(256));
    for (uri, status, words) in [
        ("/queues/q1?after=yesterday", StatusCode::BAD_REQUEST, "after: cursor \"yesterday\""),
        ("/api/queues/q1/jobs?after=2026-01-01T00:00:00Z_x", StatusCode::BAD_REQUEST, "is not a number"),
        ("/api/queues/q1/jobs?after=2026-13-01T00:00:00Z_1", StatusCode::BAD_REQUEST, "not an RFC 3339 time"),
        ("/queues/q1?state=zombie", StatusCode::BAD_REQUEST, "not a valid job state"),
        ("/api/queues/q1/jobs?limit=0", StatusCode::BAD_REQUEST, "limit"),
        ("/api/queues/q1/jobs?limit=100000", StatusCode::BAD_REQUEST, "limit"),
        (long.as_str(), StatusCode::UNPROCESSABLE_ENTITY, "255"),
    ] {
        let answer = get(&router, uri, "read").await;
        assert_eq!(answer.status, status, "{uri}: {}", answer.body);
        assert!(answer.body.contains(words), "{uri}: {}", answer.body);
    }
}

#[tokio::test]
async fn payloads_and_names_are_escaped() {
    for db in [TestStore::sqlite().await] {
        let store = db.store.clone();
        let evil = "<script>alert(\"pwned\")</script>";
        store.enqueue("q<i>1", &[format!("{{\"x\":\"{evil}\"}}")]).await.expect("enqueue");
        store
            .heartbeat(&WorkerBeat {
                name: "<img src=x onerror=alert(1)>".into(),
                host: "h\"ost".into(),
                pid: 1,
                queues: vec!["q<i>1".into()],
                current_jobs: vec![],
                started_at: Utc::now(),
                last_seen: Utc::now(),
                progress: vec![],
            })
            .await
            .expect("beat");
        let router: Router = common::page(store.clone()).router();
        for uri in ["/queues", "/queues/q%3Ci%3E1", "/queues/q%3Ci%3E1?q=%3Cscript%3E", "/workers", "/scans"] {
            let page = get(&router, uri, "act").await;
            assert_eq!(page.status, StatusCode::OK, "{uri}");
            assert!(!page.body.contains("<script>alert"), "{uri}: {}", page.body);
            assert!(!page.body.contains("<img"), "{uri}");
            assert!(!page.body.contains("<i>"), "{uri}");
            assert_eq!(page.body.matches("<script").count(), 1, "{uri}: only the page's own script tag");
        }
        let page = get(&router, "/queues/q%3Ci%3E1", "act").await.body;
        assert!(page.contains("&lt;script&gt;alert(&quot;pwned&quot;)&lt;/script&gt;"), "{page}");
        assert!(page.contains("href=\"../queues/q%3Ci%3E1?state=dead\""), "names are percent-encoded in links");
        assert!(get(&router, "/workers", "read").await.body.contains("&lt;img src=x onerror=alert(1)&gt;"));
        db.drop_db().await;
    }
}

#[tokio::test]
async fn nested_under_a_prefix_with_only_relative_links() {
    let db = TestStore::sqlite().await;
    let store = db.store.clone();
    seed(&*store, "dc 1/x", "n", Seed { pending: 2, dead: 2, ..Seed::default() }).await;
    // The host has its own state and routes beside the page.
    #[derive(Clone)]
    struct HostState(&'static str);
    let app: Router = Router::new()
        .route(
            "/",
            axum::routing::get(|axum::extract::State(host): axum::extract::State<HostState>| async move { host.0 }),
        )
        .nest("/admin", common::page(store.clone()).router::<HostState>())
        .with_state(HostState("host home"));
    assert_eq!(get(&app, "/", "").await.body, "host home");

    let root = get(&app, "/admin", "act").await;
    assert_eq!(root.status, StatusCode::TEMPORARY_REDIRECT);
    assert_eq!(root.location(), "./admin/queues");
    assert_eq!(common::resolve("/admin", root.location()), "/admin/queues");

    // Crawl every GET link from the overview; every link and form is relative and stays inside.
    let mut todo = vec!["/admin/queues".to_owned()];
    let mut visited = BTreeSet::new();
    let mut actions = BTreeSet::new();
    while let Some(path) = todo.pop() {
        if !visited.insert(path.clone()) || visited.len() > 40 {
            continue;
        }
        let page = get(&app, &path, "act").await;
        assert_eq!(page.status, StatusCode::OK, "{path}: {}", page.body);
        if !page.headers[header::CONTENT_TYPE].to_str().expect("ascii").starts_with("text/html") {
            continue;
        }
        for attr in ["href", "src", "action", "formaction"] {
            for link in common::attribute_values(&page.body, attr) {
                assert!(
                    !link.starts_with('/') && !link.contains("://") && !link.starts_with("//"),
                    "{path}: {attr}={link} is not relative"
                );
                let target = common::resolve(&path, link);
                assert!(target.starts_with("/admin/"), "{path}: {attr}={link} leaves the mount ({target})");
                if attr == "href" || attr == "src" {
                    todo.push(target);
                } else {
                    actions.insert(target);
                }
            }
        }
    }
    assert!(visited.contains("/admin/queues/dc%201%2Fx"), "{visited:?}");
    assert!(visited.contains("/admin/workers") && visited.contains("/admin/assets/app.js?v=0.1.0"), "{visited:?}");
    assert!(actions.contains("/admin/api/queues/dc%201%2Fx/bulk-retry"), "{actions:?}");

    // A form action answers with a relative redirect back to the page, inside the mount.
    let pause = "/admin/api/queues/dc%201%2Fx/pause";
    let answer = post_form(&app, pause, "act", "return_to=queue&state=dead&q=n").await;
    assert_eq!(answer.status, StatusCode::SEE_OTHER, "{}", answer.body);
    let back = common::resolve(pause, answer.location());
    assert_eq!(back, "/admin/queues/dc%201%2Fx?state=dead&q=n&done=pause&requested=1&changed=1");
    let page = get(&app, &back, "act").await.body;
    assert!(page.contains("pause: 1 of 1 changed."), "{page}");
    assert_eq!(cell(&page, "dc 1/x", "paused"), "paused");
    db.drop_db().await;
}

/// Reads `body` until one whole server-sent event; returns (event name, data).
async fn next_event(body: &mut Body, buffer: &mut String) -> (String, String) {
    loop {
        if let Some(end) = buffer.find("\n\n") {
            let event: String = buffer[..end].to_owned();
            buffer.replace_range(..end + 2, "");
            let name = event.lines().find_map(|l| l.strip_prefix("event: ")).unwrap_or_default().to_owned();
            let data: Vec<&str> = event.lines().filter_map(|l| l.strip_prefix("data: ")).collect();
            return (name, data.join("\n"));
        }
        let frame = tokio::time::timeout(Duration::from_secs(10), body.frame())
            .await
            .expect("an event within 10 s")
            .expect("the stream goes on")
            .expect("a frame");
        if let Ok(data) = frame.into_data() {
            buffer.push_str(&String::from_utf8_lossy(&data));
        }
    }
}

#[tokio::test]
async fn live_events_push_the_overview() {
    let db = TestStore::sqlite().await;
    let store = db.store.clone();
    seed(&*store, "live", "n", Seed { pending: 2, dead: 1, ..Seed::default() }).await;
    let router: Router = common::page(store.clone()).refresh(Duration::from_millis(200)).router();
    let request = request(Method::GET, "/api/events", "read").body(Body::empty()).expect("request");
    let response = router.clone().oneshot(request).await.expect("answer");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()[header::CONTENT_TYPE], "text/event-stream");
    let mut body = response.into_body();
    let mut buffer = String::new();

    let (name, data) = next_event(&mut body, &mut buffer).await;
    assert_eq!(name, "overview");
    let mut pushed: serde_json::Value = serde_json::from_str(&data).expect("JSON");
    let mut polled = get(&router, "/api/queues", "read").await.json();
    // The oldest job's age grows between the two reads; the rest is the same document.
    for doc in [&mut pushed, &mut polled] {
        let queue = doc["queues"][0].as_object_mut().expect("a queue");
        assert!(queue.remove("oldest_pending_age_secs").is_some_and(|a| a.as_f64().is_some()));
        assert!(queue.remove("oldest_pending_age").is_some());
    }
    assert_eq!(pushed, polled, "the event is the overview JSON");
    assert_eq!(pushed["queues"][0]["pending"]["count"], 2);

    // A change shows in a later event.
    store.enqueue("live", &["{}".to_owned()]).await.expect("enqueue");
    let mut later = serde_json::Value::Null;
    for _ in 0..5 {
        let (name, data) = next_event(&mut body, &mut buffer).await;
        assert_eq!(name, "overview");
        later = serde_json::from_str(&data).expect("JSON");
        if later["queues"][0]["pending"]["count"] == 3 {
            break;
        }
    }
    assert_eq!(later["queues"][0]["pending"]["count"], 3, "{later}");
    db.drop_db().await;
}

/// The hook is asked again before every live event: withdrawn access ends the stream.
#[tokio::test]
async fn live_events_end_when_access_is_withdrawn() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let store = memory();
    seed(&*store, "live", "n", Seed { pending: 1, ..Seed::default() }).await;
    let allowed = Arc::new(AtomicBool::new(true));
    let flag = Arc::clone(&allowed);
    let hook = move |_: &axum::http::request::Parts| {
        if flag.load(Ordering::SeqCst) { ralph_web::Access::read("jan") } else { ralph_web::Access::none() }
    };
    let router: Router = ralph_web::StatusPage::new(store).access(hook).refresh(Duration::from_millis(100)).router();
    let response = router.oneshot(request(Method::GET, "/api/events", "").body(Body::empty()).expect("request")).await;
    let mut body = response.expect("answer").into_body();
    let mut buffer = String::new();
    assert_eq!(next_event(&mut body, &mut buffer).await.0, "overview");
    assert_eq!(next_event(&mut body, &mut buffer).await.0, "overview", "events go on while access holds");
    allowed.store(false, Ordering::SeqCst);
    let end = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(frame) = body.frame().await {
            frame.expect("a frame");
        }
    })
    .await;
    assert!(end.is_ok(), "the stream ended after access was withdrawn");
}

async fn workers_and_scans(store: Arc<dyn common::Store>, name: &str) {
    let progress = JobProgress {
        job: ralph_core::Id::new(7),
        total: Some(1_000),
        done: 250,
        alive: 40,
        congestion_events: 3,
        elapsed: Duration::from_secs(10),
    };
    for (worker, progress) in [("w-scan", vec![progress]), ("w-idle", vec![])] {
        let beat = WorkerBeat {
            name: worker.into(),
            host: "node-1".into(),
            pid: 4242,
            queues: vec!["scans".into()],
            current_jobs: progress.iter().map(|p| p.job).collect(),
            started_at: Utc::now(),
            last_seen: Utc::now(),
            progress,
        };
        store.heartbeat(&beat).await.expect("beat");
    }
    let fresh: Router = common::page(store.clone()).router();
    let workers = get(&fresh, "/api/workers", "read").await.json();
    let list = workers["workers"].as_array().expect("workers");
    assert_eq!(list.len(), 2, "{name}");
    assert!(list.iter().all(|w| w["stale"] == false && w["pid"] == 4242), "{name}: {workers}");
    let html = get(&fresh, "/workers", "read").await.body;
    assert!(html.contains("w-scan") && html.contains("node-1") && !html.contains("badge stale"), "{name}: {html}");

    let scans = get(&fresh, "/api/scans", "read").await.json();
    let scan = &scans["scans"][0];
    assert_eq!(
        (scan["worker"].as_str(), scan["job"].as_i64(), scan["done"].as_u64()),
        (Some("w-scan"), Some(7), Some(250)),
        "{name}"
    );
    assert_eq!(
        (scan["per_sec"].as_f64(), scan["eta_secs"].as_f64(), scan["percent"].as_f64()),
        (Some(25.0), Some(30.0), Some(25.0)),
        "{name}"
    );
    let html = get(&fresh, "/scans", "read").await.body;
    assert!(
        html.contains("<progress value=\"250\" max=\"1000\">") && html.contains("25.0/s") && html.contains("30 s"),
        "{name}: {html}"
    );
    let metrics = get(&fresh, "/metrics", "read").await.body;
    assert_eq!(sample(&metrics, "ralph_workers"), 2.0, "{name}");
    assert_eq!(sample(&metrics, "ralph_workers_stale"), 0.0, "{name}");
    assert_eq!(sample(&metrics, "ralph_scan_done{worker=\"w-scan\",job=\"7\"}"), 250.0, "{name}");
    assert_eq!(sample(&metrics, "ralph_scan_total{worker=\"w-scan\",job=\"7\"}"), 1_000.0, "{name}");
    assert_eq!(sample(&metrics, "ralph_scan_rate_per_second{worker=\"w-scan\",job=\"7\"}"), 25.0, "{name}");

    // The same heartbeats, judged by a page that calls anything older than 1 ms stale.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let strict: Router = common::page(store.clone()).stale_after(Duration::from_millis(1)).router();
    let html = get(&strict, "/workers", "read").await.body;
    assert_eq!(html.matches("badge stale").count(), 2, "{name}: {html}");
    assert_eq!(sample(&get(&strict, "/metrics", "read").await.body, "ralph_workers_stale"), 2.0, "{name}");
}

#[tokio::test]
async fn workers_and_live_scans() {
    workers_and_scans(memory(), "memory").await;
    for db in TestStore::all().await {
        workers_and_scans(db.store.clone(), db.name).await;
        db.drop_db().await;
    }
}

/// A store that fails every call with an error whose text must never reach a client.
struct Broken;

fn broken() -> StoreError {
    StoreError::Backend(Box::new(std::io::Error::other(
        "connection to postgres://ralph:hunter2@db.internal failed during SELECT * FROM queue_jobs",
    )))
}

#[async_trait::async_trait]
impl QueueAdmin for Broken {
    async fn stats(&self, _: &str) -> Result<ralph_core::QueueStats, StoreError> {
        Err(broken())
    }
    async fn all_stats(&self) -> Result<Vec<ralph_core::QueueStats>, StoreError> {
        Err(broken())
    }
    async fn reclaim_expired(&self, _: &str) -> Result<u64, StoreError> {
        Err(broken())
    }
    async fn list_jobs(
        &self,
        _: &str,
        _: ralph_core::JobState,
        _: usize,
    ) -> Result<Vec<ralph_core::JobInfo>, StoreError> {
        Err(broken())
    }
    async fn overview(&self, _: u64) -> Result<Vec<ralph_core::QueueOverview>, StoreError> {
        Err(broken())
    }
    async fn find_jobs(
        &self,
        _: &str,
        _: &ralph_core::JobFilter,
        _: Option<ralph_core::JobCursor>,
        _: usize,
    ) -> Result<Vec<ralph_core::JobInfo>, StoreError> {
        Err(broken())
    }
    async fn count_jobs(
        &self,
        _: &str,
        _: &ralph_core::JobFilter,
        _: u64,
    ) -> Result<ralph_core::CappedCount, StoreError> {
        Err(broken())
    }
    async fn retry_jobs(
        &self,
        _: &str,
        _: &[ralph_core::Id<ralph_core::Job>],
        _: ralph_core::JobState,
        _: &Actor,
    ) -> Result<u64, StoreError> {
        Err(broken())
    }
    async fn discard_jobs(
        &self,
        _: &str,
        _: &[ralph_core::Id<ralph_core::Job>],
        _: ralph_core::JobState,
        _: &Actor,
    ) -> Result<u64, StoreError> {
        Err(broken())
    }
    async fn purge(&self, _: Duration, _: Duration) -> Result<u64, StoreError> {
        Err(broken())
    }
    async fn set_paused(&self, _: &str, _: bool, _: &Actor) -> Result<bool, StoreError> {
        Err(broken())
    }
    async fn heartbeat(&self, _: &WorkerBeat) -> Result<(), StoreError> {
        Err(broken())
    }
    async fn workers(&self) -> Result<Vec<WorkerBeat>, StoreError> {
        Err(broken())
    }
}

#[tokio::test]
async fn a_failing_store_is_a_generic_503_or_500() {
    let router: Router = common::page(Arc::new(Broken)).router();
    let health = get(&router, "/healthz", "").await;
    assert_eq!(health.status, StatusCode::SERVICE_UNAVAILABLE);
    let mut answers = vec![("/healthz".to_owned(), health)];
    for uri in [
        "/queues",
        "/queues/q1",
        "/workers",
        "/scans",
        "/metrics",
        "/api/queues",
        "/api/queues/q1/jobs",
        "/api/workers",
    ] {
        let answer = get(&router, uri, "read").await;
        assert_eq!(answer.status, StatusCode::INTERNAL_SERVER_ERROR, "{uri}");
        answers.push((uri.to_owned(), answer));
    }
    for action in ["pause", "bulk-retry"] {
        let uri = format!("/api/queues/q1/{action}");
        let answer = post_form(&router, &uri, "act", "limit=5").await;
        assert_eq!(answer.status, StatusCode::INTERNAL_SERVER_ERROR, "{uri}");
        answers.push((uri, answer));
    }
    for (uri, answer) in answers {
        for secret in ["hunter2", "SELECT", "postgres://", "db.internal", "queue_jobs"] {
            assert!(!answer.body.contains(secret), "{uri} leaks {secret}: {}", answer.body);
        }
    }

    // The live stream says so, without detail, and keeps going.
    let request = request(Method::GET, "/api/events", "read").body(Body::empty()).expect("request");
    let mut body = router.clone().oneshot(request).await.expect("answer").into_body();
    let (name, data) = next_event(&mut body, &mut String::new()).await;
    assert_eq!((name.as_str(), data.as_str()), ("store-error", "the job store is unavailable"));
}

#[test]
fn resolve_works_like_a_browser() {
    assert_eq!(common::resolve("/admin", "./admin/queues"), "/admin/queues");
    assert_eq!(common::resolve("/admin/queues/dc1", "../workers"), "/admin/workers");
    assert_eq!(common::resolve("/admin/queues/dc1", "../queues/dc1?state=dead"), "/admin/queues/dc1?state=dead");
    assert_eq!(common::resolve("/admin/api/queues/dc1/retry", "../../../queues/dc1?x=1"), "/admin/queues/dc1?x=1");
    assert_eq!(common::resolve("/admin/queues", "./assets/app.css?v=1"), "/admin/assets/app.css?v=1");
    assert_eq!(common::resolve("/queues", "./"), "/");
}
