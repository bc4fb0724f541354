//! # ralph-core
//!
//! The domain model of [Ralph](https://github.com/allegro/ralph) — data centres, server rooms,
//! racks, network environments, networks, IP addresses, device models, devices, components,
//! users, profiles and groups — with validating constructors and typed errors, the asset status
//! lifecycle, and the traits the other ralph-rs crates plug into: [`AuthBackend`] and
//! [`AuthChain`], the storage traits ([`Repository`], [`InventoryStore`], [`UserStore`]).
//! [`reconcile`] turns what scans learnt about addresses into a plan of inventory changes:
//! identity by inventory id, serial and MACs, per-field provenance, component moves.
//!
//! This crate has no database driver, no sockets and no async runtime of its own: it is pure
//! and fast to test. Its default `tokio` feature only moves [`LocalBackend`]'s password hashing
//! onto the host's blocking pool; without it the crate uses no runtime at all. `ralph-store` implements the storage traits on SQLite, PostgreSQL and MySQL;
//! `ralph-ldap` is an [`AuthBackend`]; `ralph-discovery` records scan results through the
//! storage traits.
//!
//! ```
//! use ralph_core::{DataCenter, Network, ValidationError};
//!
//! let dc = DataCenter::new("dc1", Some("pl"))?;
//! assert_eq!(dc.country.map(|c| c.as_str()), Some("PL"));
//!
//! let net = Network::new("servers", "10.20.0.0/24")?.with_gateway("10.20.0.1")?.with_vlan(120)?;
//! assert!(net.contains("10.20.0.77".parse().unwrap()));
//!
//! // Bad input is a typed error, never a panic.
//! assert!(matches!(Network::new("x", "10.20.0.1/24"), Err(ValidationError::CidrHostBits { .. })));
//! assert!(matches!(DataCenter::new("dc2", Some("XX")), Err(ValidationError::Country { .. })));
//! # Ok::<(), ValidationError>(())
//! ```

pub mod auth;
mod component;
mod country;
mod device;
mod error;
pub mod history;
mod hostname;
mod id;
mod ip;
mod location;
mod mac;
mod network;
pub mod queue;
pub mod reconcile;
pub mod scan;
mod secret;
mod status;
pub mod store;
#[cfg(feature = "testing")]
pub mod testing;
pub mod text;
mod user;

pub use auth::{AuthBackend, AuthChain, AuthError, AuthOutcome, Credentials, DenyReason, Identity, LocalBackend};
pub use component::{Component, ComponentKind};
pub use country::CountryCode;
pub use device::{Device, DeviceModel, DeviceType, Placement};
pub use error::{StoreError, ValidationError};
pub use hostname::Hostname;
pub use id::{Entity, Id, Record};
pub use ip::{IpAddress, IpStatus, SnmpVersion};
pub use location::{DataCenter, Orientation, Rack, RackSlot, ServerRoom, check_rack_slot};
pub use mac::MacAddress;
pub use network::{
    HostnameTemplate, Network, NetworkEnvironment, Vlan, ip_key, ip_to_u128, network_size, parse_cidr, parse_ip,
    smallest_containing, u128_to_ip,
};
pub use queue::{
    CappedCount, FailOutcome, Job, JobCursor, JobFilter, JobInfo, JobProgress, JobQueue, JobState, QueueAdmin,
    QueueOverview, QueueStats, RetryPolicy, WorkerBeat,
};
pub use scan::{MAX_BATCH_KEY, Observation, RecordSummary, ScanResultStore, apply_observation, check_batch_key};
pub use secret::Secret;
pub use status::{AssetStatus, Transition, TransitionGraph};
pub use store::{GroupScope, InventoryStore, MirrorChange, Mirrored, Repository, UserMirror, UserStore};
pub use user::{Group, Profile, User, UserSource, apply_role_flags, check_username};

/// `Result` with a [`ValidationError`] by default.
pub type Result<T, E = ValidationError> = std::result::Result<T, E>;
