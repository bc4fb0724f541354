//! Actions against real stores: bulk retry and discard with a preview count and an exact
//! limit, selected jobs by form and JSON, pause and resume, input checks, and the audit trail.

mod common;

use std::io::Write as _;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::http::StatusCode;
use common::{Seed, TestStore, get, memory, post_form, post_json, seed};
use ralph_core::queue::MAX_CAP;
use ralph_core::{JobFilter, JobState, QueueAdmin};
use serde_json::json;

/// Captures what the fmt subscriber writes.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().map_err(|_| std::io::Error::other("poisoned"))?.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Capture {
    type Writer = Self;
    fn make_writer(&'a self) -> Self {
        self.clone()
    }
}

impl Capture {
    fn lines(&self) -> Vec<String> {
        let bytes = self.0.lock().map(|b| b.clone()).unwrap_or_default();
        String::from_utf8_lossy(&bytes).lines().map(str::to_owned).collect()
    }
}

async fn count(store: &dyn QueueAdmin, state: JobState, q: &str) -> u64 {
    let filter = if q.is_empty() { JobFilter::state(state) } else { JobFilter::state(state).containing(q) };
    let count = store.count_jobs("q1", &filter, MAX_CAP).await.expect("count");
    assert!(!count.capped);
    count.count
}

async fn ids(store: &dyn QueueAdmin, state: JobState, q: &str) -> Vec<i64> {
    let filter = JobFilter::state(state).containing(q);
    store.find_jobs("q1", &filter, None, 1_000).await.expect("find").iter().map(|j| j.id.get()).collect()
}

async fn bulk_and_selected(store: Arc<dyn common::Store>, name: &str) {
    seed(&*store, "q1", "x", Seed { dead: 30, ..Seed::default() }).await;
    seed(&*store, "q1", "y", Seed { dead: 5, done: 1, ..Seed::default() }).await;
    let admin: Arc<dyn QueueAdmin> = store.clone();
    let router: Router = common::page(admin).router();
    let x = "\"x\"";

    // The preview the page and the API show is the store's count.
    let preview = get(&router, "/api/queues/q1/count?state=dead&q=%22x%22", "act").await.json();
    assert_eq!(preview["count"]["count"], 30, "{name}");
    let page = get(&router, "/queues/q1?state=dead&q=%22x%22", "act").await.body;
    assert!(page.contains("30 dead jobs match “&quot;x&quot;”"), "{name}: {page}");
    assert!(page.contains("name=\"limit\" min=\"1\" max=\"1000\" value=\"30\""), "{name}: {page}");

    // Bulk retry with a limit changes exactly that many: the oldest matching.
    let oldest: Vec<i64> = ids(&*store, JobState::Dead, x).await.into_iter().take(12).collect();
    let answer =
        post_json(&router, "/api/queues/q1/bulk-retry", "act", json!({"state": "dead", "q": x, "limit": 12})).await;
    assert_eq!(answer.status, StatusCode::OK, "{name}: {}", answer.body);
    assert_eq!(answer.json(), json!({"action": "bulk-retry", "queue": "q1", "requested": 12, "changed": 12}), "{name}");
    assert_eq!(count(&*store, JobState::Dead, x).await, 18, "{name}");
    assert_eq!(count(&*store, JobState::Dead, "\"y\"").await, 5, "{name}: the filter held");
    assert_eq!(ids(&*store, JobState::Pending, x).await, oldest, "{name}");
    let preview = get(&router, "/api/queues/q1/count?state=dead&q=%22x%22", "act").await.json();
    assert_eq!(preview["count"]["count"], 18, "{name}");

    // Bulk discard from the page's form: a 303 back to the page, with what it did.
    let answer = post_form(&router, "/api/queues/q1/bulk-discard", "act", "state=dead&q=%22x%22&limit=5").await;
    assert_eq!(answer.status, StatusCode::SEE_OTHER, "{name}: {}", answer.body);
    assert_eq!(
        answer.location(),
        "../../../queues/q1?state=dead&q=%22x%22&done=bulk-discard&requested=5&changed=5",
        "{name}"
    );
    assert_eq!(count(&*store, JobState::Dead, x).await, 13, "{name}");
    // A limit above what matches takes what there is.
    let answer = post_json(&router, "/api/queues/q1/bulk-discard", "act", json!({"q": "\"y\"", "limit": 1000})).await;
    assert_eq!((answer.json()["requested"].as_u64(), answer.json()["changed"].as_u64()), (Some(5), Some(5)), "{name}");

    // Selected jobs, by form (`id` repeated) and by JSON; done jobs are left alone.
    let dead = ids(&*store, JobState::Dead, x).await;
    let form = format!("state=dead&id={}&id={}&id={}", dead[0], dead[1], dead[0]);
    let answer = post_form(&router, "/api/queues/q1/retry", "act", &form).await;
    assert_eq!(answer.status, StatusCode::SEE_OTHER, "{name}: {}", answer.body);
    assert!(answer.location().ends_with("done=retry&requested=2&changed=2"), "{name}: {}", answer.location());
    let done = ids(&*store, JobState::Done, "").await;
    let answer = post_json(&router, "/api/queues/q1/discard", "act", json!({"ids": [dead[2], done[0]]})).await;
    assert_eq!((answer.json()["requested"].as_u64(), answer.json()["changed"].as_u64()), (Some(2), Some(1)), "{name}");
    assert_eq!(count(&*store, JobState::Dead, x).await, 10, "{name}");
    assert_eq!(count(&*store, JobState::Pending, x).await, 14, "{name}");
    assert_eq!(count(&*store, JobState::Done, "").await, 1, "{name}");

    // Pause and resume.
    assert_eq!(post_json(&router, "/api/queues/q1/pause", "act", json!({})).await.status, StatusCode::OK);
    assert!(store.overview(10).await.expect("overview")[0].paused, "{name}");
    let answer = post_form(&router, "/api/queues/q1/resume", "act", "return_to=overview").await;
    assert_eq!(answer.location(), "../../../queues?done=resume&requested=1&changed=1", "{name}");
    assert!(!store.overview(10).await.expect("overview")[0].paused, "{name}");
}

#[tokio::test]
async fn bulk_retry_takes_exactly_the_limit_and_matches_the_preview() {
    bulk_and_selected(memory(), "memory").await;
    for db in TestStore::all().await {
        bulk_and_selected(db.store.clone(), db.name).await;
        db.drop_db().await;
    }
}

#[tokio::test]
async fn action_input_is_checked_before_the_store() {
    let store = memory();
    seed(&*store, "q1", "x", Seed { dead: 3, ..Seed::default() }).await;
    let router: Router = common::page(store.clone()).router();
    let too_many: Vec<i64> = (1..=1_001).collect();
    let cases = [
        ("bulk-retry", json!({"state": "dead"}), StatusCode::UNPROCESSABLE_ENTITY, "explicit limit"),
        ("bulk-retry", json!({"limit": 1001}), StatusCode::UNPROCESSABLE_ENTITY, "not from 1 to 1000"),
        ("bulk-discard", json!({"limit": 0}), StatusCode::UNPROCESSABLE_ENTITY, "not from 1 to 1000"),
        (
            "bulk-retry",
            json!({"state": "running", "limit": 5}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "only dead or pending",
        ),
        ("bulk-retry", json!({"state": "zombie", "limit": 5}), StatusCode::BAD_REQUEST, "not a valid job state"),
        ("bulk-retry", json!({"q": "x".repeat(300), "limit": 5}), StatusCode::UNPROCESSABLE_ENTITY, "255"),
        ("retry", json!({"ids": []}), StatusCode::UNPROCESSABLE_ENTITY, "at least one"),
        ("discard", json!({"ids": too_many}), StatusCode::UNPROCESSABLE_ENTITY, "at most 1000"),
        ("retry", json!({"ids": ["one"]}), StatusCode::BAD_REQUEST, "invalid JSON"),
        ("retry", json!({"ids": [1], "everything": true}), StatusCode::BAD_REQUEST, "unknown field"),
    ];
    for (action, body, status, words) in cases {
        let answer = post_json(&router, &format!("/api/queues/q1/{action}"), "act", body.clone()).await;
        assert_eq!(answer.status, status, "{action} {body}: {}", answer.body);
        assert!(answer.body.contains(words), "{action} {body}: {}", answer.body);
    }
    let answer = post_form(&router, "/api/queues/q1/retry", "act", "id=abc").await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{}", answer.body);
    let answer = post_form(&router, "/api/queues/q1/bulk-retry", "act", "limit=lots").await;
    assert_eq!(answer.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", answer.body);
    assert_eq!(count(&*store, JobState::Dead, "").await, 3, "nothing changed");
}

#[tokio::test]
async fn every_action_leaves_an_audit_event() {
    let capture = Capture::default();
    let subscriber =
        tracing_subscriber::fmt().with_writer(capture.clone()).with_max_level(tracing::Level::INFO).finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let store = memory();
    seed(&*store, "q1", "x", Seed { dead: 4, ..Seed::default() }).await;
    let router: Router = common::page(store.clone()).router();
    let request = common::request(axum::http::Method::POST, "/api/queues/q1/bulk-retry", "act")
        .header("x-test-actor", "alice")
        .header(axum::http::header::CONTENT_TYPE, "application/json")
        .body(axum::body::Body::from(json!({"limit": 3}).to_string()))
        .expect("request");
    assert_eq!(common::send(&router, request).await.status, StatusCode::OK);
    assert_eq!(post_json(&router, "/api/queues/q1/pause", "act", json!({})).await.status, StatusCode::OK);
    assert_eq!(
        post_json(&router, "/api/queues/q1/retry", "act", json!({"ids": []})).await.status,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    let _ = std::io::stdout().flush();

    let audit: Vec<String> = capture.lines().into_iter().filter(|l| l.contains("ralph::web::audit")).collect();
    assert_eq!(audit.len(), 3, "{audit:#?}");
    for (line, words) in audit.iter().zip([
        ["actor=alice", "action=\"bulk-retry\"", "queue=q1", "requested=3", "changed=3", "outcome=\"ok\""],
        ["actor=tester", "action=\"pause\"", "queue=q1", "requested=1", "changed=1", "outcome=\"ok\""],
        ["actor=tester", "action=\"retry\"", "queue=q1", "requested=0", "changed=0", "outcome=\"failed\""],
    ]) {
        for word in words {
            assert!(line.contains(word), "{word} missing from {line}");
        }
    }
}

/// On every store: what an action changed is in the store's change history under the hook's
/// actor, and an action on jobs that left the state the page showed leaves those jobs alone
/// (a discard of a "dead" selection never takes a job someone retried in the meantime).
#[tokio::test]
async fn actions_are_recorded_and_act_only_on_jobs_still_in_the_shown_state() {
    use ralph_core::history::{Action, ActorKind, HistoryStore};
    for backend in TestStore::all().await {
        let store = backend.store.clone();
        seed(&*store, "h1", "x", Seed { dead: 4, ..Seed::default() }).await;
        let router: Router = common::page(store.clone()).router();
        let dead = store.list_jobs("h1", JobState::Dead, 10).await.expect("dead");
        let ids: Vec<i64> = dead.iter().map(|j| j.id.get()).collect();

        // Another operator retries the first job after this page was read.
        let other = ralph_core::history::Actor::user("bob");
        assert_eq!(store.retry_jobs("h1", &[dead[0].id], JobState::Dead, &other).await.expect("retry"), 1);
        // The page's form still shows all four as dead and discards them.
        let form = format!("state=dead&{}", ids.iter().map(|id| format!("id={id}")).collect::<Vec<_>>().join("&"));
        let request = common::request(axum::http::Method::POST, "/api/queues/h1/discard", "act")
            .header("x-test-actor", "alice")
            .header(axum::http::header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(axum::body::Body::from(form))
            .expect("request");
        let answer = common::send(&router, request).await;
        assert_eq!(answer.status, StatusCode::SEE_OTHER, "{}", backend.name);
        assert!(answer.location().contains("requested=4&changed=3"), "{}: {}", backend.name, answer.location());
        let left = store.list_jobs("h1", JobState::Pending, 10).await.expect("pending");
        assert_eq!(left.iter().map(|j| j.id).collect::<Vec<_>>(), [dead[0].id], "{}: bob's retry stands", backend.name);

        // Pausing twice changes once.
        for _ in 0..2 {
            let answer = post_json(&router, "/api/queues/h1/pause", "act", json!({})).await;
            assert_eq!(answer.status, StatusCode::OK, "{}", backend.name);
        }

        let history = |id: i64| {
            let store = store.clone();
            async move { store.object_history("job", id, 10).await.expect("history") }
        };
        let retried = history(ids[0]).await;
        assert_eq!(retried.len(), 1, "{}", backend.name);
        assert_eq!((retried[0].record.action, retried[0].record.actor.name.as_str()), (Action::Update, "bob"));
        for id in &ids[1..] {
            let entries = history(*id).await;
            assert_eq!(entries.len(), 1, "{}: job {id}", backend.name);
            let record = &entries[0].record;
            assert_eq!(
                (record.action, record.actor.kind, record.actor.name.as_str()),
                (Action::Delete, ActorKind::User, "alice")
            );
        }
        let pauses = store.object_history("queue", ralph_core::queue::QUEUE_OBJECT_ID, 10).await.expect("queue");
        assert_eq!(pauses.len(), 1, "{}: one change, one record", backend.name);
        assert_eq!((pauses[0].record.actor.name.as_str(), pauses[0].record.message.as_deref()), ("tester", Some("h1")));
        backend.drop_db().await;
    }
}
