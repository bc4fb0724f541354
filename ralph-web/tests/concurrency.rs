//! Many requests at once against SQLite, PostgreSQL and MariaDB: reads and bulk and selected
//! actions on overlapping jobs. No request fails with a 5xx, and afterwards every job is in
//! exactly one state.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;

use axum::Router;
use axum::http::StatusCode;
use common::{Seed, TestStore, get, post_form, post_json, seed};
use ralph_core::queue::MAX_CAP;
use ralph_core::{JobFilter, JobState, QueueAdmin};
use serde_json::json;

const JOBS: u64 = 300;
const TASKS: usize = 32;
const ROUNDS: usize = 3;

/// Fails the test on a 5xx (and on anything but what an action or read may answer).
fn check(what: &str, status: StatusCode, body: &str) {
    assert!(!status.is_server_error(), "{what}: {status} {body}");
    assert!(matches!(status, StatusCode::OK | StatusCode::SEE_OTHER), "{what}: {status} {body}");
}

/// One task's mix; returns how many jobs its discards removed.
async fn task(router: Router, i: usize) -> u64 {
    let filters = ["", "dead-1", "dead-2", "dead-"];
    let mut discarded = 0;
    for round in 0..ROUNDS {
        let q = filters[(i + round) % filters.len()];
        match (i + round) % 4 {
            0 => {
                let a = post_json(&router, "/api/queues/race/bulk-retry", "act", json!({"q": q, "limit": 20})).await;
                check("bulk-retry", a.status, &a.body);
            }
            1 => {
                let state = if round % 2 == 0 { "dead" } else { "pending" };
                let a = post_json(
                    &router,
                    "/api/queues/race/bulk-discard",
                    "act",
                    json!({"state": state, "q": q, "limit": 7}),
                )
                .await;
                check("bulk-discard", a.status, &a.body);
                discarded += a.json()["changed"].as_u64().expect("changed");
            }
            2 => {
                for uri in [
                    "/queues",
                    "/queues/race?state=dead&q=dead-1",
                    "/api/queues/race/jobs?state=pending&limit=50",
                    "/metrics",
                ] {
                    let a = get(&router, uri, "read").await;
                    check(uri, a.status, &a.body);
                }
            }
            _ => {
                // Select from a listing, then act on those: others may act on them meanwhile.
                let listing = get(&router, "/api/queues/race/jobs?state=dead&limit=15", "read").await;
                check("listing", listing.status, &listing.body);
                let ids: Vec<i64> =
                    listing.json()["jobs"].as_array().expect("jobs").iter().filter_map(|j| j["id"].as_i64()).collect();
                if ids.is_empty() {
                    continue;
                }
                let form: Vec<String> = ids.iter().map(|id| format!("id={id}")).collect();
                let action = if round % 2 == 0 { "retry" } else { "discard" };
                let a = post_form(&router, &format!("/api/queues/race/{action}"), "act", &form.join("&")).await;
                check(action, a.status, &a.body);
                if action == "discard" {
                    let changed = a.location().rsplit("changed=").next().and_then(|n| n.parse::<u64>().ok());
                    discarded += changed.expect("the redirect says how many changed");
                }
            }
        }
    }
    discarded
}

async fn race(store: Arc<dyn common::Store>, name: &str) {
    seed(&*store, "race", "n", Seed { dead: JOBS as usize, ..Seed::default() }).await;
    let admin: Arc<dyn QueueAdmin> = store.clone();
    let router: Router = common::page(admin).router();
    let handles: Vec<_> = (0..TASKS).map(|i| tokio::spawn(task(router.clone(), i))).collect();
    let mut discarded = 0;
    for handle in handles {
        discarded += handle.await.unwrap_or_else(|e| panic!("{name}: a task failed: {e}"));
    }

    // Every job is in exactly one state; the discarded ones are gone.
    let mut all = BTreeSet::new();
    let mut total = 0;
    for state in JobState::ALL {
        let count = store.count_jobs("race", &JobFilter::state(state), MAX_CAP).await.expect("count");
        total += count.count;
        let mut after = None;
        loop {
            let page = store.find_jobs("race", &JobFilter::state(state), after, 100).await.expect("find");
            let Some(last) = page.last() else { break };
            after = Some(last.cursor());
            for job in &page {
                assert_eq!(job.state, state, "{name}");
                assert!(all.insert(job.id), "{name}: job {} listed in two states", job.id);
            }
        }
    }
    assert!(discarded > 0, "{name}: the discards did something");
    assert_eq!(total + discarded, JOBS, "{name}: {total} left + {discarded} discarded");
    assert_eq!(all.len() as u64, total, "{name}");
    // The page agrees with the store.
    let json = get(&router, "/api/queues", "read").await.json();
    let q = &json["queues"][0];
    let shown: u64 = ["pending", "scheduled", "retrying", "running", "expired", "dead"]
        .iter()
        .map(|f| q[f]["count"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(shown, total, "{name}: {json}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_reads_and_actions_leave_consistent_counts() {
    for db in TestStore::all().await {
        race(db.store.clone(), db.name).await;
        db.drop_db().await;
    }
}
