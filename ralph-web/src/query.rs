//! The query string of the job lists (`state`, `q`, `after`, `limit`) and of the notice an
//! action leaves after its redirect, parsed into what the store takes.

use ralph_core::{JobCursor, JobFilter, JobState};
use serde::Deserialize;

use crate::cursor;
use crate::error::WebError;

/// The raw parameters, all text, so a bad one gets our own message.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct JobsQuery {
    state: Option<String>,
    q: Option<String>,
    after: Option<String>,
    limit: Option<String>,
    /// The action that redirected here (pages only).
    done: Option<String>,
    requested: Option<String>,
    changed: Option<String>,
}

/// Which jobs to list or count.
#[derive(Debug, Clone)]
pub(crate) struct Selection {
    pub(crate) state: JobState,
    /// The payload text, if any (never empty).
    pub(crate) q: Option<String>,
    pub(crate) after: Option<JobCursor>,
    pub(crate) limit: usize,
}

impl Selection {
    /// The store's filter.
    pub(crate) fn filter(&self) -> JobFilter {
        let filter = JobFilter::state(self.state);
        match &self.q {
            Some(q) => filter.containing(q.clone()),
            None => filter,
        }
    }
}

/// What an action did, as its redirect reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Notice {
    pub(crate) action: &'static str,
    pub(crate) requested: u64,
    pub(crate) changed: u64,
}

/// `state` of a job list: one of [`JobState`]'s names; pending when absent.
pub(crate) fn state(text: Option<&str>) -> Result<JobState, WebError> {
    match text {
        None | Some("") => Ok(JobState::Pending),
        Some(name) => JobState::parse(name).map_err(|e| WebError::BadRequest(format!("state: {e}"))),
    }
}

/// The payload filter text: empty means none; longer than the store takes is refused.
pub(crate) fn filter_text(text: Option<&str>) -> Result<Option<String>, WebError> {
    let Some(text) = text.filter(|t| !t.is_empty()) else { return Ok(None) };
    JobFilter::state(JobState::Pending)
        .containing(text)
        .needle()
        .map_err(|e| WebError::Unprocessable(format!("q: {e}")))?;
    Ok(Some(text.to_owned()))
}

impl JobsQuery {
    /// The selection, `limit` defaulting to `default_limit` and at most `max_limit`.
    pub(crate) fn selection(&self, default_limit: usize, max_limit: usize) -> Result<Selection, WebError> {
        let state = state(self.state.as_deref())?;
        let q = filter_text(self.q.as_deref())?;
        let after = match self.after.as_deref() {
            None | Some("") => None,
            Some(text) => Some(cursor::parse(text).map_err(|e| WebError::BadRequest(format!("after: {e}")))?),
        };
        let limit = match self.limit.as_deref() {
            None | Some("") => default_limit,
            Some(text) => match text.parse::<usize>() {
                Ok(n) if (1..=max_limit).contains(&n) => n,
                _ => {
                    return Err(WebError::BadRequest(format!("limit: {text:?} is not a number from 1 to {max_limit}")));
                }
            },
        };
        Ok(Selection { state, q, after, limit })
    }

    /// The notice of the action that redirected here, if the parameters name one.
    pub(crate) fn notice(&self) -> Option<Notice> {
        let action = crate::actions::Action::parse(self.done.as_deref()?)?.as_str();
        let requested = self.requested.as_deref()?.parse().ok()?;
        let changed = self.changed.as_deref()?.parse().ok()?;
        Some(Notice { action, requested, changed })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(state: Option<&str>, q: Option<&str>, after: Option<&str>, limit: Option<&str>) -> JobsQuery {
        JobsQuery {
            state: state.map(str::to_owned),
            q: q.map(str::to_owned),
            after: after.map(str::to_owned),
            limit: limit.map(str::to_owned),
            ..JobsQuery::default()
        }
    }

    #[test]
    fn parses_and_refuses() {
        let sel = query(None, Some(""), None, None).selection(50, 500).expect("defaults");
        assert_eq!((sel.state, sel.q, sel.after, sel.limit), (JobState::Pending, None, None, 50));
        let sel = query(Some("dead"), Some("x"), Some("2026-01-01T00:00:00Z_3"), Some("7")).selection(50, 500);
        let sel = sel.expect("all given");
        assert_eq!(
            (sel.state, sel.q.as_deref(), sel.after.map(|c| c.id.get()), sel.limit),
            (JobState::Dead, Some("x"), Some(3), 7)
        );
        assert!(matches!(query(Some("zombie"), None, None, None).selection(50, 500), Err(WebError::BadRequest(_))));
        assert!(matches!(query(None, None, Some("yesterday"), None).selection(50, 500), Err(WebError::BadRequest(_))));
        for limit in ["0", "501", "-1", "ten"] {
            assert!(matches!(query(None, None, None, Some(limit)).selection(50, 500), Err(WebError::BadRequest(_))));
        }
        let long = "x".repeat(256);
        assert!(matches!(query(None, Some(&long), None, None).selection(50, 500), Err(WebError::Unprocessable(_))));
    }
}
