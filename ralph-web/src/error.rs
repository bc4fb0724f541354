//! How a failed request answers: [`WebError`] and its status codes. Store failures are logged in
//! full and answered with a generic text, so no SQL, URL or secret reaches the client.

use std::error::Error as StdError;
use std::fmt;

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use ralph_core::StoreError;

/// Why a request failed.
#[derive(Debug)]
pub(crate) enum WebError {
    /// 403: no access, or a cross-site action.
    Forbidden(&'static str),
    /// 400: a parameter that does not parse (a cursor, a limit, a state name).
    BadRequest(String),
    /// 422: a well-formed request the rules refuse (too many ids, a limit past the maximum).
    Unprocessable(String),
    /// 415: an action body that is neither a form nor JSON.
    UnsupportedMediaType,
    /// The job store failed.
    Store(StoreError),
}

impl From<StoreError> for WebError {
    fn from(error: StoreError) -> Self {
        Self::Store(error)
    }
}

/// The error and its causes on one line, for the log.
pub(crate) struct Chain<'a>(pub(crate) &'a (dyn StdError + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(cause) = source {
            write!(f, ": {cause}")?;
            source = cause.source();
        }
        Ok(())
    }
}

/// A plain-text answer.
pub(crate) fn text(status: StatusCode, body: impl Into<String>) -> Response {
    (status, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body.into()).into_response()
}

impl IntoResponse for WebError {
    fn into_response(self) -> Response {
        match self {
            Self::Forbidden(why) => text(StatusCode::FORBIDDEN, format!("forbidden: {why}\n")),
            Self::BadRequest(why) => text(StatusCode::BAD_REQUEST, format!("bad request: {why}\n")),
            Self::Unprocessable(why) => text(StatusCode::UNPROCESSABLE_ENTITY, format!("{why}\n")),
            Self::UnsupportedMediaType => text(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "send actions as application/x-www-form-urlencoded or application/json\n",
            ),
            Self::Store(error) => store_error(&error),
        }
    }
}

/// The answer to a store failure: the rule an input broke (it only echoes the caller's own
/// input), or a generic text with the detail in the log.
fn store_error(error: &StoreError) -> Response {
    if let Some(rule) = error.validation() {
        return text(StatusCode::UNPROCESSABLE_ENTITY, format!("{rule}\n"));
    }
    tracing::error!(target: "ralph::web", error = %Chain(error), "job store request failed");
    if error.is_contended() {
        text(StatusCode::SERVICE_UNAVAILABLE, "the job store is busy; try again\n")
    } else {
        text(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal error: the job store failed (details are in the server log)\n",
        )
    }
}
