//! The actions (`POST api/queues/{queue}/{action}`): retry and discard named jobs, bulk retry
//! and discard by filter with an explicit limit, pause and resume. Each takes a form (the
//! pages' buttons: answered with a 303 back to the page) or JSON (scripts: answered with JSON),
//! needs [`AccessLevel::Act`](crate::AccessLevel::Act) from the page's own origin, and leaves
//! an audit event.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use ralph_core::history::Actor;
use ralph_core::queue::check_admin_state;
use ralph_core::{Id, Job, JobFilter, JobState, StoreError};
use serde::Deserialize;

use crate::access::{Actor as Requester, history_actor};
use crate::error::{WebError, text};
use crate::links::{encode, query};
use crate::page::{MAX_ACTION_JOBS, Shared};
use crate::view::ActionResult;

/// What an action does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    Retry,
    Discard,
    BulkRetry,
    BulkDiscard,
    Pause,
    Resume,
}

impl Action {
    const ALL: [Self; 6] = [Self::Retry, Self::Discard, Self::BulkRetry, Self::BulkDiscard, Self::Pause, Self::Resume];

    /// The route's last segment, and the audit event's `action`.
    pub(crate) const fn as_str(self) -> &'static str {
        match self {
            Self::Retry => "retry",
            Self::Discard => "discard",
            Self::BulkRetry => "bulk-retry",
            Self::BulkDiscard => "bulk-discard",
            Self::Pause => "pause",
            Self::Resume => "resume",
        }
    }

    pub(crate) fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.as_str() == name)
    }
}

/// An action's parameters, as JSON sends them (a form sends the same names, `id` once per job).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Input {
    /// The jobs of `retry` and `discard`.
    #[serde(default)]
    ids: Vec<i64>,
    /// The state the jobs must still be in: `dead` (the default) or `pending`; a bulk action
    /// selects the jobs of this state.
    state: Option<String>,
    /// The bulk actions' payload filter.
    q: Option<String>,
    /// How many jobs a bulk action takes at most (required, 1 to 1000).
    limit: Option<u64>,
}

/// Where a form action sends the browser back to.
#[derive(Debug, Default)]
struct Back {
    overview: bool,
    state: String,
    q: String,
    after: String,
}

/// How the request came, and so how it is answered.
enum Mode {
    Form(Back),
    Json,
}

/// Reads the body: a form, JSON, or nothing (a bare `POST …/pause`).
fn parse_body(headers: &HeaderMap, body: &[u8]) -> Result<(Input, Mode), WebError> {
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default();
    let mime = content_type.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    match mime.as_str() {
        "application/x-www-form-urlencoded" => parse_form(body),
        "application/json" => serde_json::from_slice(body)
            .map(|input| (input, Mode::Json))
            .map_err(|e| WebError::BadRequest(format!("invalid JSON body: {e}"))),
        "" if body.is_empty() => Ok((Input::default(), Mode::Json)),
        _ => Err(WebError::UnsupportedMediaType),
    }
}

fn parse_form(body: &[u8]) -> Result<(Input, Mode), WebError> {
    let mut input = Input::default();
    let mut back = Back::default();
    for (key, value) in form_urlencoded::parse(body) {
        match key.as_ref() {
            "id" => input
                .ids
                .push(value.parse().map_err(|_| WebError::BadRequest(format!("id: {value:?} is not a job id")))?),
            "limit" => {
                input.limit = Some(
                    value.parse().map_err(|_| WebError::Unprocessable(format!("limit: {value:?} is not a number")))?,
                );
            }
            "state" => {
                back.state = value.to_string();
                input.state = Some(value.into_owned());
            }
            "q" => {
                back.q = value.to_string();
                input.q = Some(value.into_owned());
            }
            "after" => back.after = value.into_owned(),
            "return_to" => back.overview = value == "overview",
            // Submit buttons and whatever else a form carries.
            _ => {}
        }
    }
    Ok((input, Mode::Form(back)))
}

/// The jobs named, without repeats, at most [`MAX_ACTION_JOBS`].
fn named_jobs(ids: &[i64]) -> Result<Vec<Id<Job>>, WebError> {
    if ids.is_empty() {
        return Err(WebError::Unprocessable("select at least one job".into()));
    }
    let mut ids: Vec<i64> = ids.to_vec();
    ids.sort_unstable();
    ids.dedup();
    if ids.len() > MAX_ACTION_JOBS {
        return Err(WebError::Unprocessable(format!("at most {MAX_ACTION_JOBS} jobs per action, not {}", ids.len())));
    }
    Ok(ids.into_iter().map(Id::new).collect())
}

/// The state the jobs of an action must still be in: `dead` (the default) or `pending`. A job
/// that left it since the page was read (someone else retried or discarded it, a worker
/// claimed it) is left alone.
fn from_state(input: &Input) -> Result<JobState, WebError> {
    let state = crate::query::state(Some(input.state.as_deref().unwrap_or("dead")))?;
    check_admin_state(state).map_err(|e| WebError::Unprocessable(e.to_string()))?;
    Ok(state)
}

/// The filter and limit of a bulk action.
fn bulk_selection(input: &Input) -> Result<(JobFilter, usize), WebError> {
    let state = from_state(input)?;
    let limit = match input.limit {
        Some(n) if (1..=MAX_ACTION_JOBS as u64).contains(&n) => usize::try_from(n).unwrap_or(MAX_ACTION_JOBS),
        Some(n) => return Err(WebError::Unprocessable(format!("limit: {n} is not from 1 to {MAX_ACTION_JOBS}"))),
        None => {
            return Err(WebError::Unprocessable(format!(
                "limit: a bulk action needs an explicit limit (1 to {MAX_ACTION_JOBS})"
            )));
        }
    };
    let filter = JobFilter::state(state);
    let filter = match crate::query::filter_text(input.q.as_deref())? {
        Some(q) => filter.containing(q),
        None => filter,
    };
    Ok((filter, limit))
}

/// Checks the input, then does the action as `by`: the jobs requested, and how many changed.
/// Input errors come back before the store is touched.
async fn run(shared: &Shared, action: Action, queue: &str, input: &Input, by: &Actor) -> (u64, Result<u64, WebError>) {
    let admin = &shared.admin;
    let count = |n: usize| u64::try_from(n).unwrap_or(u64::MAX);
    let store = |r: Result<u64, StoreError>| r.map_err(WebError::from);
    match action {
        Action::Retry | Action::Discard => {
            let (ids, from) = match named_jobs(&input.ids).and_then(|ids| Ok((ids, from_state(input)?))) {
                Ok(selection) => selection,
                Err(e) => return (0, Err(e)),
            };
            let done = if action == Action::Retry {
                admin.retry_jobs(queue, &ids, from, by).await
            } else {
                admin.discard_jobs(queue, &ids, from, by).await
            };
            (count(ids.len()), store(done))
        }
        Action::BulkRetry | Action::BulkDiscard => {
            let (filter, limit) = match bulk_selection(input) {
                Ok(selection) => selection,
                Err(e) => return (0, Err(e)),
            };
            let ids: Vec<Id<Job>> = match admin.find_jobs(queue, &filter, None, limit).await {
                Ok(found) => found.into_iter().map(|j| j.id).collect(),
                Err(e) => return (0, Err(e.into())),
            };
            // The store acts only on those still in the filter's state: a job another operator
            // retried between the find and here is not discarded.
            let done = match (ids.is_empty(), action) {
                (true, _) => Ok(0),
                (false, Action::BulkRetry) => admin.retry_jobs(queue, &ids, filter.state, by).await,
                (false, _) => admin.discard_jobs(queue, &ids, filter.state, by).await,
            };
            (count(ids.len()), store(done))
        }
        Action::Pause | Action::Resume => {
            (1, store(admin.set_paused(queue, action == Action::Pause, by).await.map(u64::from)))
        }
    }
}

/// `POST api/queues/{queue}/{action}`.
pub(crate) async fn act(
    State(shared): State<Arc<Shared>>,
    Requester(access): Requester,
    Path((queue, action)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, WebError> {
    let Some(action) = Action::parse(&action) else {
        return Ok(text(StatusCode::NOT_FOUND, format!("no action {action:?}\n")));
    };
    // Malformed requests are audited too: someone with the act level tried something.
    let outcome = match parse_body(&headers, &body) {
        Ok((input, mode)) => match run(&shared, action, &queue, &input, &history_actor(&access.actor)).await {
            (requested, Ok(changed)) => Ok((mode, requested, changed)),
            (requested, Err(error)) => Err((requested, error)),
        },
        Err(error) => Err((0, error)),
    };
    let (requested, changed) = match &outcome {
        Ok((_, requested, changed)) => (*requested, *changed),
        Err((requested, _)) => (*requested, 0),
    };
    tracing::info!(
        target: "ralph::web::audit",
        actor = %access.actor,
        action = action.as_str(),
        queue = %queue,
        requested,
        changed,
        outcome = if outcome.is_ok() { "ok" } else { "failed" },
        "queue action"
    );
    let (mode, requested, changed) = outcome.map_err(|(_, error)| error)?;
    shared.live.invalidate();
    Ok(match mode {
        Mode::Json => Json(ActionResult { action: action.as_str(), queue, requested, changed }).into_response(),
        Mode::Form(back) => {
            let (requested, changed) = (requested.to_string(), changed.to_string());
            let notice = [("done", action.as_str()), ("requested", requested.as_str()), ("changed", changed.as_str())];
            // Relative to `…/api/queues/{queue}/{action}`: three levels up is the mount.
            let location = if back.overview {
                format!("../../../queues{}", query(&notice))
            } else {
                let page = [("state", back.state.as_str()), ("q", back.q.as_str()), ("after", back.after.as_str())];
                let pairs: Vec<(&str, &str)> = page.into_iter().chain(notice).collect();
                format!("../../../queues/{}{}", encode(&queue), query(&pairs))
            };
            (StatusCode::SEE_OTHER, [(header::LOCATION, location)]).into_response()
        }
    })
}
