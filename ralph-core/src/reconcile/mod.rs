//! Reconciliation, the pure part: what sources learnt about addresses ([`Facts`]) becomes a
//! [`Plan`] of inventory changes, explainably.

mod blacklist;
mod facts;
mod identity;
mod state;

pub use blacklist::{MacBlacklist, MacPrefix, SerialBlacklist, normalise_serial};
pub use facts::{ComponentClass, Facts, Software, Source};
pub use identity::{Candidate, Evidence, IdentityConfig, IdentityResolver, Missing, Resolution};
pub use state::{ComponentState, DeviceState, Field, FieldState, Misses, Provenance, ScanId, Snapshot};
