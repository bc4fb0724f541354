//! Test-only helpers: where the services a test needs are, read from the `RALPH_TEST_*`
//! variables that `scripts/test` exports after starting them.
//!
//! A test asks with [`service`]. When the variable is missing it is a failure under `CI=true`
//! (a missing service must never pass silently in CI) and a skip with a printed reason
//! elsewhere. [`time_wait`] counts the sockets a test or bench left in TIME_WAIT.
//! [`PrivateDb`] is a database server of the test's own, to stop and start again.

mod private_db;
mod time_wait;

pub use private_db::{PrivateDb, PrivateKind};
pub use time_wait::{time_wait, time_wait_on_port};

/// Whether the run is CI (`CI=true` or `CI=1`).
#[must_use]
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// The value of `var`, the address of a service the test needs.
///
/// Returns `None` (after printing why, so the skip is visible) when the variable is missing
/// and this is not CI; the caller then returns early.
///
/// # Panics
/// When the variable is missing and `CI=true`: in CI a missing service is a failure.
#[must_use]
pub fn service(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(value) if !value.is_empty() => Some(value),
        _ if in_ci() => {
            panic!("{var} is not set but CI=true: the service this test needs was not started by scripts/test")
        }
        _ => {
            eprintln!("SKIPPED: {var} is not set; run the tests through scripts/test to start the service");
            None
        }
    }
}

/// Like [`service`], for tests that need to run as root (network namespaces, neighbour table).
///
/// # Panics
/// When not root and `CI=true`.
#[must_use]
pub fn require_root(what: &str) -> bool {
    let uid = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Uid:")).map(str::to_owned))
        .and_then(|l| l.split_whitespace().nth(1).map(str::to_owned));
    if uid.as_deref() == Some("0") {
        return true;
    }
    assert!(!in_ci(), "{what} needs root but CI=true");
    eprintln!("SKIPPED: {what} needs root");
    false
}

/// Skips (outside CI) or fails (in CI) early from a test when a service is missing:
/// `let url = ralph_testkit::require!("RALPH_TEST_PG_URL");`
#[macro_export]
macro_rules! require {
    ($var:expr) => {
        match $crate::service($var) {
            Some(value) => value,
            None => return,
        }
    };
}
