//! # ralph-ldap
//!
//! An LDAP / Active Directory authentication backend for the `ralph-core` auth chain: the
//! equivalent of the django-auth-ldap setup Ralph documents, with the security details done
//! once, properly.
//!
//! A login goes: empty password refused → a `user@realm` / `REALM\user` qualifier read
//! (with several directories, each with its `realm`: a login naming another one is not
//! handled) → login name normalised ([`Hooks`], `normalize_username`) → user search (RFC 4515-escaped, ANDed with the user filter) on a
//! pooled service-account connection → bind as the user on a bind-only connection (or, with
//! `bind_as_authenticating_user`, bind first and read the entry and groups as the user) →
//! account state (AD `userAccountControl` and friends, ppolicy locks) → `no_new_users` →
//! groups from `memberOf` or a group search, nested groups followed, cached (group checks no
//! older than `group_check_ttl_secs`) → require / deny [`GroupQuery`] → group mapping → flags
//! → populate hook → user, profile and roles mirrored through the core
//! [`UserStore`](ralph_core::UserStore) (even when the login is then refused for not being
//! active). Unknown users and wrong passwords are "not handled" (the chain moves on); a
//! directory that cannot be reached is an [`AuthError::Unavailable`](ralph_core::AuthError);
//! any error while reading groups refuses the login. Referrals are never chased. Passwords
//! never appear in logs, `Debug` output or errors.
//!
//! ```no_run
//! use std::sync::Arc;
//! use ralph_core::{AuthChain, Credentials, LocalBackend, UserStore};
//! use ralph_ldap::{LdapBackend, LdapConfig};
//!
//! async fn login<S: UserStore + Clone + 'static>(store: S) -> Result<(), Box<dyn std::error::Error>> {
//!     let config = LdapConfig::from_toml_file("ldap.toml")?;
//!     let chain = AuthChain::new()
//!         .with(Arc::new(LdapBackend::new(config, store.clone())?))
//!         .with(Arc::new(LocalBackend::new(store)));
//!     let login = chain.authenticate(&Credentials::new("alice", "alice-pw")).await?;
//!     println!("{} via {}", login.identity.user.username, login.backend);
//!     Ok(())
//! }
//! ```
//!
//! The rest of this page is the crate README.
#![doc = include_str!("../README.md")]

mod account;
mod backend;
pub mod config;
mod conn;
pub mod dn;
mod error;
pub mod filter;
pub mod groups;
mod hooks;
mod mapping;
pub mod query;
mod realm;
mod sync;

pub use backend::{LdapBackend, OWNED_BY_ANOTHER_DIRECTORY, Populated};
pub use config::{
    FlagsByGroup, GroupType, LdapConfig, LdapConfigBuilder, MirrorGroups, NestedGroups, ProfileAttrMap, Scope,
    SearchSpec, SearchUnion, TlsConfig, TlsMode, UserAttrMap,
};
pub use conn::Entry;
pub use error::{Error, Result};
pub use hooks::{Hooks, NormalizeUsername, Operation};
pub use query::GroupQuery;
pub use sync::{SyncOptions, SyncReport};

/// The tracing target of every event this crate emits.
pub const TRACE_TARGET: &str = "ralph::ldap";
