//! Shared helpers for the ralph-rs benchmark harnesses.
