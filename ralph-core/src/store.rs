//! The storage traits: what a backend (SQLite, PostgreSQL, MySQL, or a host app's own) provides.
//!
//! Every write validates the value first ([`Entity::validate`] plus the rules that need other
//! rows, such as rack overlaps) and either writes everything or nothing.

use std::collections::BTreeSet;
use std::net::IpAddr;

use async_trait::async_trait;
use ipnetwork::IpNetwork;

use crate::{
    AssetStatus, Component, DataCenter, Device, DeviceModel, Entity, Group, Id, IpAddress, Network, NetworkEnvironment,
    Profile, Rack, Record, ServerRoom, StoreError, TransitionGraph, User, UserSource,
};

/// Create, read, update, delete and list one entity type.
///
/// Generic over the entity so a store implements it once per model type and callers write
/// `store.create(&rack)`; where the type cannot be inferred (`list`), name it:
/// `Repository::<Rack>::list(&store)`.
#[async_trait]
pub trait Repository<T: Entity>: Send + Sync {
    /// Validates and inserts `value`, returning its new id.
    async fn create(&self, value: &T) -> Result<Id<T>, StoreError>;
    /// The row with `id`, or [`StoreError::NotFound`].
    async fn get(&self, id: Id<T>) -> Result<Record<T>, StoreError>;
    /// Every row, ordered by id.
    async fn list(&self) -> Result<Vec<Record<T>>, StoreError>;
    /// Validates and replaces the row with `id`.
    async fn update(&self, id: Id<T>, value: &T) -> Result<(), StoreError>;
    /// Deletes the row with `id`; [`StoreError::Reference`] while other rows point at it.
    async fn delete(&self, id: Id<T>) -> Result<(), StoreError>;
}

/// The inventory: every model type plus the queries that span them.
#[async_trait]
pub trait InventoryStore:
    Repository<DataCenter>
    + Repository<ServerRoom>
    + Repository<Rack>
    + Repository<NetworkEnvironment>
    + Repository<Network>
    + Repository<IpAddress>
    + Repository<DeviceModel>
    + Repository<Device>
    + Repository<Component>
{
    /// The data centre named `name`.
    async fn find_data_center(&self, name: &str) -> Result<Option<Record<DataCenter>>, StoreError>;
    /// The devices placed in `rack`, ordered by position.
    async fn rack_devices(&self, rack: Id<Rack>) -> Result<Vec<Record<Device>>, StoreError>;
    /// The device with serial number `serial`.
    async fn find_device_by_serial(&self, serial: &str) -> Result<Option<Record<Device>>, StoreError>;
    /// The components of `device`.
    async fn device_components(&self, device: Id<Device>) -> Result<Vec<Record<Component>>, StoreError>;
    /// Applies transition `name` of `graph` to the device's current status, atomically: two
    /// concurrent transitions cannot both start from the same status.
    async fn transition_device(
        &self,
        id: Id<Device>,
        graph: &TransitionGraph,
        name: &str,
    ) -> Result<AssetStatus, StoreError>;
    /// The smallest network containing `ip`.
    async fn network_containing(&self, ip: IpAddr) -> Result<Option<Record<Network>>, StoreError>;
    /// The networks of an environment.
    async fn environment_networks(
        &self,
        environment: Id<NetworkEnvironment>,
    ) -> Result<Vec<Record<Network>>, StoreError>;
    /// The record of one address.
    async fn find_ip(&self, ip: IpAddr) -> Result<Option<Record<IpAddress>>, StoreError>;
    /// The known addresses inside `range`, in address order; buried ones only when asked.
    async fn ip_addresses_in(
        &self,
        range: IpNetwork,
        include_buried: bool,
    ) -> Result<Vec<Record<IpAddress>>, StoreError>;
}

/// A user with profile and groups, written in one transaction (LDAP mirroring, bulk sync).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserMirror {
    /// The account; matched on username, created when missing.
    pub user: User,
    /// The profile to store; `None` leaves the stored one alone.
    pub profile: Option<Profile>,
    /// The group list to store (within [`UserMirror::group_scope`]); `None` leaves groups alone
    /// (mirroring off).
    pub groups: Option<Vec<Group>>,
    /// Which of the user's groups [`UserMirror::groups`] replaces; the others (roles given by
    /// hand in the inventory) are left as they are.
    pub group_scope: GroupScope,
}

impl UserMirror {
    /// A mirror of `user` alone: profile and groups left as stored.
    #[must_use]
    pub fn new(user: User) -> Self {
        Self { user, profile: None, groups: None, group_scope: GroupScope::All }
    }

    /// The user's groups after this mirror, given the `current` ones: the current groups
    /// outside the scope, plus the mirrored ones inside it. `None` when the mirror leaves
    /// groups alone.
    #[must_use]
    pub fn resulting_groups<'a>(&self, current: impl IntoIterator<Item = &'a str>) -> Option<BTreeSet<String>> {
        let groups = self.groups.as_ref()?;
        let kept = current.into_iter().filter(|g| !self.group_scope.manages(g)).map(str::to_owned);
        let mirrored = groups.iter().map(Group::as_str).filter(|g| self.group_scope.manages(g)).map(str::to_owned);
        Some(kept.chain(mirrored).collect())
    }
}

/// Which of a user's groups a mirror manages: django-auth-ldap's `MIRROR_GROUPS` (a list of
/// names: only those) and `MIRROR_GROUPS_EXCEPT` (all but those). Names compare exactly.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum GroupScope {
    /// Every group: the mirror's list is the user's whole group list.
    #[default]
    All,
    /// Only these groups are mirrored; the user's other groups are kept.
    Only(BTreeSet<String>),
    /// Every group but these; the user's memberships of these are kept.
    Except(BTreeSet<String>),
}

impl GroupScope {
    /// Whether a mirror in this scope adds and removes membership of `group`.
    #[must_use]
    pub fn manages(&self, group: &str) -> bool {
        match self {
            Self::All => true,
            Self::Only(names) => names.contains(group),
            Self::Except(names) => !names.contains(group),
        }
    }
}

/// What [`UserStore::mirror_user`] did to the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum MirrorChange {
    /// The user did not exist and was inserted (with profile and groups).
    Created,
    /// The user existed and something differed: what differed was written.
    Updated,
    /// The store already held exactly this mirror; nothing was written.
    Unchanged,
}

/// The outcome of [`UserStore::mirror_user`]: the user's id and what changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mirrored {
    /// The id of the (new or existing) user row.
    pub id: Id<User>,
    /// Whether the user was created, updated or already as mirrored.
    pub change: MirrorChange,
}

/// Users, profiles, groups and local password hashes.
///
/// A store that keeps a change history ([`crate::history`]) records every write here that
/// changed something, in its transaction, as object `user` with the user's id: its columns,
/// `profile.*` fields, `groups` (one field, comma-separated) and `password_hash` only as set,
/// changed or removed, never a hash. Mirrors of LDAP accounts are recorded as the source
/// `ldap` (with the directory in the message), the other writes as the store handle's actor
/// (a sync's deactivations too: give the sync a handle acting as the directory); a deleted
/// user's record keeps its last values.
#[async_trait]
pub trait UserStore: Send + Sync {
    /// Inserts a user; [`StoreError::Conflict`] when the username is taken.
    async fn create_user(&self, user: &User) -> Result<Id<User>, StoreError>;
    /// The user named `username`.
    async fn get_user(&self, username: &str) -> Result<Option<Record<User>>, StoreError>;
    /// Replaces the user with the same username; [`StoreError::NotFound`] when there is none.
    async fn update_user(&self, user: &User) -> Result<(), StoreError>;
    /// Deletes a user with profile and memberships.
    async fn delete_user(&self, username: &str) -> Result<(), StoreError>;
    /// Users, optionally only those from one source, ordered by username.
    async fn list_users(&self, source: Option<UserSource>) -> Result<Vec<Record<User>>, StoreError>;
    /// The stored PHC password hash, if the user has a usable local password.
    async fn password_hash(&self, username: &str) -> Result<Option<String>, StoreError>;
    /// Stores (or with `None`, removes) the user's password hash.
    async fn set_password_hash(&self, username: &str, hash: Option<&str>) -> Result<(), StoreError>;
    /// The user's profile.
    async fn get_profile(&self, username: &str) -> Result<Option<Profile>, StoreError>;
    /// Stores the user's profile.
    async fn set_profile(&self, username: &str, profile: &Profile) -> Result<(), StoreError>;
    /// The user's groups, sorted by name.
    async fn user_groups(&self, username: &str) -> Result<Vec<Group>, StoreError>;
    /// Replaces all of the user's groups with `groups` in one transaction, creating groups
    /// that do not exist yet.
    async fn set_user_groups(&self, username: &str, groups: &[Group]) -> Result<(), StoreError>;
    /// Creates or updates the user, profile and (when given) groups in one transaction. An
    /// LDAP-owned user's local password hash is removed.
    ///
    /// Idempotent and safe to call concurrently, from many tasks and processes, for the same
    /// user: exactly one call creates the user, the others see it. A mirror equal to what is
    /// stored writes nothing ([`MirrorChange::Unchanged`]); otherwise only what differs is
    /// written (group memberships are diffed, not replaced).
    ///
    /// # Errors
    /// [`StoreError::Conflict`] when an LDAP mirror meets a local account of the same name, or
    /// an account another directory owns (the account is left as it is); [`StoreError::Invalid`] for an invalid user or
    /// profile; nothing is written in either case.
    async fn mirror_user(&self, mirror: &UserMirror) -> Result<Mirrored, StoreError>;
    /// Mirrors a page of users (a bulk sync): one result per mirror, in order, each as
    /// [`UserStore::mirror_user`] would give it (a refused user does not stop the others).
    /// Stores override it to find the unchanged users of the page with one read and write
    /// only the others.
    ///
    /// # Errors
    /// A failure that concerns the whole page (the database is unreachable).
    async fn mirror_users(&self, mirrors: &[UserMirror]) -> Result<Vec<Result<Mirrored, StoreError>>, StoreError> {
        let mut results = Vec::with_capacity(mirrors.len());
        for mirror in mirrors {
            results.push(self.mirror_user(mirror).await);
        }
        Ok(results)
    }
    /// Sets `is_active = false` on the named users; returns how many changed.
    async fn deactivate_users(&self, usernames: &[String]) -> Result<u64, StoreError>;
}

#[async_trait]
impl<S: UserStore + ?Sized> UserStore for std::sync::Arc<S> {
    async fn create_user(&self, user: &User) -> Result<Id<User>, StoreError> {
        (**self).create_user(user).await
    }
    async fn get_user(&self, username: &str) -> Result<Option<Record<User>>, StoreError> {
        (**self).get_user(username).await
    }
    async fn update_user(&self, user: &User) -> Result<(), StoreError> {
        (**self).update_user(user).await
    }
    async fn delete_user(&self, username: &str) -> Result<(), StoreError> {
        (**self).delete_user(username).await
    }
    async fn list_users(&self, source: Option<UserSource>) -> Result<Vec<Record<User>>, StoreError> {
        (**self).list_users(source).await
    }
    async fn password_hash(&self, username: &str) -> Result<Option<String>, StoreError> {
        (**self).password_hash(username).await
    }
    async fn set_password_hash(&self, username: &str, hash: Option<&str>) -> Result<(), StoreError> {
        (**self).set_password_hash(username, hash).await
    }
    async fn get_profile(&self, username: &str) -> Result<Option<Profile>, StoreError> {
        (**self).get_profile(username).await
    }
    async fn set_profile(&self, username: &str, profile: &Profile) -> Result<(), StoreError> {
        (**self).set_profile(username, profile).await
    }
    async fn user_groups(&self, username: &str) -> Result<Vec<Group>, StoreError> {
        (**self).user_groups(username).await
    }
    async fn set_user_groups(&self, username: &str, groups: &[Group]) -> Result<(), StoreError> {
        (**self).set_user_groups(username, groups).await
    }
    async fn mirror_user(&self, mirror: &UserMirror) -> Result<Mirrored, StoreError> {
        (**self).mirror_user(mirror).await
    }
    async fn mirror_users(&self, mirrors: &[UserMirror]) -> Result<Vec<Result<Mirrored, StoreError>>, StoreError> {
        (**self).mirror_users(mirrors).await
    }
    async fn deactivate_users(&self, usernames: &[String]) -> Result<u64, StoreError> {
        (**self).deactivate_users(usernames).await
    }
}
