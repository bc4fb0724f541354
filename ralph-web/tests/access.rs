//! Access: closed by default, read versus act, cross-site actions refused, POST only.

mod common;

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{Method, StatusCode, header};
use common::{HOST, Seed, get, memory, post_form, post_json, request, seed, send};
use ralph_core::QueueAdmin;
use ralph_web::StatusPage;

/// Every GET route, with a queue that exists.
const READ_ROUTES: [&str; 13] = [
    "/",
    "/queues",
    "/queues/q1",
    "/workers",
    "/scans",
    "/assets/app.css",
    "/assets/app.js",
    "/metrics",
    "/api/queues",
    "/api/queues/q1/jobs",
    "/api/queues/q1/count",
    "/api/workers",
    "/api/scans",
];

#[tokio::test]
async fn closed_by_default_but_healthz() {
    let store = memory();
    seed(&*store, "q1", "n", Seed { pending: 2, ..Seed::default() }).await;
    let router: Router = StatusPage::new(store.clone()).router();
    for route in READ_ROUTES.iter().chain(&["/api/events"]) {
        // Even a request that claims the act level: there is no hook to believe it.
        let answer = get(&router, route, "act").await;
        assert_eq!(answer.status, StatusCode::FORBIDDEN, "{route}: {}", answer.body);
    }
    let answer = post_form(&router, "/api/queues/q1/pause", "act", "").await;
    assert_eq!(answer.status, StatusCode::FORBIDDEN);
    assert!(!store.overview(10).await.expect("overview")[0].paused, "nothing was done");
    let health = get(&router, "/healthz", "").await;
    assert_eq!((health.status, health.body.as_str()), (StatusCode::OK, "ok\n"));
}

#[tokio::test]
async fn hook_levels_read_and_act() {
    let store = memory();
    seed(&*store, "q1", "n", Seed { pending: 2, dead: 1, ..Seed::default() }).await;
    let router: Router = common::page(store.clone()).router();

    for route in READ_ROUTES {
        assert_eq!(get(&router, route, "").await.status, StatusCode::FORBIDDEN, "{route} without access");
        let answer = get(&router, route, "read").await;
        let expected = if route == "/" { StatusCode::TEMPORARY_REDIRECT } else { StatusCode::OK };
        assert_eq!(answer.status, expected, "{route} at read: {}", answer.body);
    }

    // Read may not act, by form or JSON, and the page offers no buttons.
    let page = get(&router, "/queues/q1?state=dead", "read").await;
    assert!(!page.body.contains("method=\"post\""), "a reader sees no action forms");
    assert!(page.body.contains("(read only)"));
    for action in ["pause", "retry", "bulk-retry"] {
        let form = post_form(&router, &format!("/api/queues/q1/{action}"), "read", "id=1&limit=1").await;
        assert_eq!(form.status, StatusCode::FORBIDDEN, "{action}: {}", form.body);
        let json = post_json(&router, &format!("/api/queues/q1/{action}"), "read", serde_json::json!({})).await;
        assert_eq!(json.status, StatusCode::FORBIDDEN, "{action}");
    }
    assert!(!store.overview(10).await.expect("overview")[0].paused);

    // Act may.
    let page = get(&router, "/queues/q1?state=dead", "act").await;
    assert!(page.body.contains("Retry selected") && page.body.contains("bulk-retry"), "{}", page.body);
    let answer = post_json(&router, "/api/queues/q1/pause", "act", serde_json::json!({})).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    assert_eq!(answer.json()["changed"], 1);
    assert!(store.overview(10).await.expect("overview")[0].paused);
}

#[tokio::test]
async fn cross_site_actions_are_refused() {
    let store = memory();
    seed(&*store, "q1", "n", Seed { pending: 1, ..Seed::default() }).await;
    let router: Router = common::page(store.clone()).router();
    let forged = [
        ("origin", "http://evil.example", None),
        ("origin", "null", None),
        ("origin", "https://status.test.evil.example", None),
        ("sec-fetch-site", "cross-site", None),
        ("sec-fetch-site", "same-site", None),
        // A correct Origin does not excuse a cross-site fetch mark.
        ("sec-fetch-site", "cross-site", Some(format!("http://{HOST}"))),
    ];
    for (name, value, origin) in forged {
        let mut req = request(Method::POST, "/api/queues/q1/pause", "act")
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(name, value);
        if let Some(origin) = origin {
            req = req.header(header::ORIGIN, origin);
        }
        let answer = send(&router, req.body(Body::from("return_to=overview")).expect("request")).await;
        assert_eq!(answer.status, StatusCode::FORBIDDEN, "{name}: {value}");
        assert!(answer.body.contains("cross-site"), "{}", answer.body);
    }
    assert!(!store.overview(10).await.expect("overview")[0].paused, "no forged request paused the queue");

    // The page's own form (same origin) works, and so does a typed-in request (`none`).
    let answer = post_form(&router, "/api/queues/q1/pause", "act", "return_to=overview").await;
    assert_eq!(answer.status, StatusCode::SEE_OTHER, "{}", answer.body);
    let req = request(Method::POST, "/api/queues/q1/resume", "act").header("sec-fetch-site", "none");
    assert_eq!(send(&router, req.body(Body::empty()).expect("request")).await.status, StatusCode::OK);

    // Actions are POST only; a text/plain "simple" cross-site body is not accepted either.
    assert_eq!(get(&router, "/api/queues/q1/pause", "act").await.status, StatusCode::METHOD_NOT_ALLOWED);
    let req = request(Method::POST, "/api/queues/q1/pause", "act").header(header::CONTENT_TYPE, "text/plain");
    assert_eq!(
        send(&router, req.body(Body::from("x")).expect("request")).await.status,
        StatusCode::UNSUPPORTED_MEDIA_TYPE
    );
    assert_eq!(
        post_json(&router, "/api/queues/q1/explode", "act", serde_json::json!({})).await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn async_hooks_see_the_request() {
    struct Bearer;
    #[async_trait::async_trait]
    impl ralph_web::AccessHook for Bearer {
        async fn access(&self, request: &axum::http::request::Parts) -> ralph_web::Access {
            tokio::task::yield_now().await;
            match request.headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) {
                Some("Bearer ops") => ralph_web::Access::act("ops"),
                Some("Bearer viewer") => ralph_web::Access::read("viewer"),
                _ => ralph_web::Access::none(),
            }
        }
    }
    let store: Arc<dyn QueueAdmin> = memory();
    let router: Router = StatusPage::new(store).access(Bearer).router();
    let with = |token: &str| {
        request(Method::GET, "/api/queues", "")
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .body(Body::empty())
            .expect("request")
    };
    assert_eq!(send(&router, with("viewer")).await.status, StatusCode::OK);
    assert_eq!(send(&router, with("intruder")).await.status, StatusCode::FORBIDDEN);
}
