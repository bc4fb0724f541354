//! The ralph-rs examples: see the programs under `examples/examples/`. What several of them
//! share lives here.

use std::fmt::Write as _;

/// An error with its causes, `a: b: c` (each level prints only its own message, as the
/// crates' errors do, so the chain is walked here).
#[must_use]
pub fn causes(error: &dyn std::error::Error) -> String {
    let mut msg = error.to_string();
    let mut source = error.source();
    while let Some(s) = source {
        let _ = write!(msg, ": {s}");
        source = s.source();
    }
    msg
}
