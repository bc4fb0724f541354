//! The read-only routes: pages, the JSON API and `healthz`.

use std::sync::Arc;

use axum::Json;
use axum::extract::{OriginalUri, Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use chrono::Utc;
use ralph_core::WorkerBeat;

use crate::access::Reader;
use crate::cursor;
use crate::error::{Chain, WebError, text};
use crate::html::{self, PAGE_LIMIT};
use crate::links;
use crate::page::Shared;
use crate::query::{JobsQuery, Selection};
use crate::view::{self, CountResult, JobsView, QueueView, WorkerView, WorkersView};

/// Jobs per page of the JSON list, by default and at most (the store's own maximum).
const API_LIMIT: (usize, usize) = (100, ralph_core::queue::MAX_LIST);

type Result<T, E = WebError> = std::result::Result<T, E>;

/// The mount point itself: to the overview, relative to however the request spelt the mount.
pub(crate) async fn root(_: Reader, OriginalUri(uri): OriginalUri) -> Response {
    let target = links::from_mount_root(uri.path(), "queues");
    (StatusCode::TEMPORARY_REDIRECT, [(header::LOCATION, target)]).into_response()
}

/// 200 `ok` when the store answers an overview; 503 otherwise. No access needed: load
/// balancers and orchestrators call it.
pub(crate) async fn healthz(State(shared): State<Arc<Shared>>) -> Response {
    match shared.admin.overview(1).await {
        Ok(_) => text(StatusCode::OK, "ok\n"),
        Err(error) => {
            tracing::warn!(target: "ralph::web", error = %Chain(&error), "healthz: the job store does not answer");
            text(StatusCode::SERVICE_UNAVAILABLE, "unavailable: the job store does not answer\n")
        }
    }
}

pub(crate) async fn overview_page(
    State(shared): State<Arc<Shared>>,
    Reader(access): Reader,
    Query(query): Query<JobsQuery>,
) -> Result<Html<String>> {
    let overview = shared.overview().await?;
    Ok(Html(html::overview(&overview, &access, shared.refresh, query.notice()).into_string()))
}

/// The jobs of one page of `selection`, and the cursor of the next page if there is one.
async fn page_of(
    shared: &Shared,
    queue: &str,
    selection: &Selection,
) -> Result<(Vec<ralph_core::JobInfo>, Option<String>)> {
    // One more than asked: whether a next page exists, without a count.
    let mut jobs = shared.admin.find_jobs(queue, &selection.filter(), selection.after, selection.limit + 1).await?;
    let next = if jobs.len() > selection.limit {
        jobs.truncate(selection.limit);
        jobs.last().map(|job| cursor::encode(&job.cursor()))
    } else {
        None
    };
    Ok((jobs, next))
}

pub(crate) async fn queue_page(
    State(shared): State<Arc<Shared>>,
    Reader(access): Reader,
    Path(queue): Path<String>,
    Query(query): Query<JobsQuery>,
) -> Result<Html<String>> {
    let selection = query.selection(PAGE_LIMIT.0, PAGE_LIMIT.1)?;
    let filter = selection.filter();
    let (counts, (jobs, next), matching) = futures::try_join!(
        async { shared.admin.queue_overview(&queue, shared.count_cap).await.map_err(WebError::from) },
        page_of(&shared, &queue, &selection),
        async { shared.admin.count_jobs(&queue, &filter, shared.count_cap).await.map_err(WebError::from) },
    )?;
    let counts = QueueView::from(counts);
    let page = html::QueuePage {
        counts: &counts,
        selection: &selection,
        jobs: &jobs,
        next: next.as_deref(),
        matching: matching.into(),
        notice: query.notice(),
    };
    Ok(Html(html::queue(&page, &access, shared.refresh).into_string()))
}

/// The workers' heartbeats, as views.
async fn workers(shared: &Shared) -> Result<(Vec<WorkerBeat>, Vec<WorkerView>)> {
    let beats = shared.admin.workers().await?;
    let now = Utc::now();
    let views = beats.iter().map(|b| WorkerView::new(b, now, shared.stale_after)).collect();
    Ok((beats, views))
}

pub(crate) async fn workers_page(State(shared): State<Arc<Shared>>, Reader(access): Reader) -> Result<Html<String>> {
    let (_, views) = workers(&shared).await?;
    Ok(Html(html::workers(&views, shared.stale_after, &access, shared.refresh).into_string()))
}

pub(crate) async fn scans_page(State(shared): State<Arc<Shared>>, Reader(access): Reader) -> Result<Html<String>> {
    let (beats, _) = workers(&shared).await?;
    let scans = view::scans(&beats, Utc::now(), shared.stale_after);
    Ok(Html(html::scans(&scans, &access, shared.refresh).into_string()))
}

pub(crate) async fn api_queues(State(shared): State<Arc<Shared>>, _: Reader) -> Result<Response> {
    Ok(Json(shared.overview().await?).into_response())
}

pub(crate) async fn api_jobs(
    State(shared): State<Arc<Shared>>,
    _: Reader,
    Path(queue): Path<String>,
    Query(query): Query<JobsQuery>,
) -> Result<Json<JobsView>> {
    let selection = query.selection(API_LIMIT.0, API_LIMIT.1)?;
    let (jobs, next) = page_of(&shared, &queue, &selection).await?;
    Ok(Json(JobsView { queue, state: selection.state.as_str(), q: selection.q, jobs, next }))
}

pub(crate) async fn api_count(
    State(shared): State<Arc<Shared>>,
    _: Reader,
    Path(queue): Path<String>,
    Query(query): Query<JobsQuery>,
) -> Result<Json<CountResult>> {
    let selection = query.selection(1, usize::MAX)?;
    let count = shared.admin.count_jobs(&queue, &selection.filter(), shared.count_cap).await?;
    Ok(Json(CountResult { queue, state: selection.state.as_str(), q: selection.q, count: count.into() }))
}

pub(crate) async fn api_workers(State(shared): State<Arc<Shared>>, _: Reader) -> Result<Json<WorkersView>> {
    let (_, workers) = workers(&shared).await?;
    Ok(Json(WorkersView { stale_after_secs: shared.stale_after.as_secs_f64(), workers }))
}

pub(crate) async fn api_scans(State(shared): State<Arc<Shared>>, _: Reader) -> Result<Response> {
    let (beats, _) = workers(&shared).await?;
    let scans = view::scans(&beats, Utc::now(), shared.stale_after);
    Ok(Json(serde_json::json!({ "scans": scans })).into_response())
}
