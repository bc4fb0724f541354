//! [`UserStore`] on [`MemoryStore`]: users, profiles, groups and password hashes.

use std::collections::BTreeSet;

use async_trait::async_trait;

use super::{MemoryStore, UserRow};
use crate::{
    Group, Id, MirrorChange, Mirrored, Profile, Record, StoreError, User, UserMirror, UserSource, UserStore,
    ValidationError,
};

const USER: &str = "user";

fn not_found(username: &str) -> StoreError {
    StoreError::NotFound { entity: USER, key: username.to_owned() }
}

fn record(row: &UserRow) -> Record<User> {
    Record { id: Id::new(row.id), value: row.user.clone() }
}

fn normalised(profile: &Profile) -> Result<Profile, StoreError> {
    profile.clone().normalised().map_err(|e| StoreError::invalid("profile", e))
}

/// The refusal of an LDAP mirror that meets a local account.
fn local_account() -> StoreError {
    StoreError::Conflict { entity: USER, constraint: "local account".into() }
}

/// The refusal of an LDAP mirror that meets an account another directory owns.
fn other_directory() -> StoreError {
    StoreError::Conflict { entity: USER, constraint: "account of another directory".into() }
}

/// The groups `mirror` leaves the user with, given the `current` ones (`None`: unchanged).
fn mirrored_groups(mirror: &UserMirror, current: &BTreeSet<Group>) -> Result<Option<BTreeSet<Group>>, StoreError> {
    let Some(names) = mirror.resulting_groups(current.iter().map(Group::as_str)) else { return Ok(None) };
    names.iter().map(|n| Group::new(n).map_err(|e| StoreError::invalid("group", e))).collect::<Result<_, _>>().map(Some)
}

#[async_trait]
impl UserStore for MemoryStore {
    async fn create_user(&self, user: &User) -> Result<Id<User>, StoreError> {
        user.validate().map_err(|e| StoreError::invalid(USER, e))?;
        let mut state = self.lock();
        if state.users.contains_key(&user.username) {
            return Err(StoreError::Conflict { entity: USER, constraint: "username".into() });
        }
        let id = state.next_id("users");
        let row = UserRow { id, user: user.clone(), password_hash: None, profile: None, groups: BTreeSet::new() };
        state.users.insert(user.username.clone(), row);
        Ok(Id::new(id))
    }

    async fn get_user(&self, username: &str) -> Result<Option<Record<User>>, StoreError> {
        Ok(self.lock().users.get(username).map(record))
    }

    async fn update_user(&self, user: &User) -> Result<(), StoreError> {
        user.validate().map_err(|e| StoreError::invalid(USER, e))?;
        let mut state = self.lock();
        let row = state.users.get_mut(&user.username).ok_or_else(|| not_found(&user.username))?;
        row.user = user.clone();
        if user.source == UserSource::Ldap {
            row.password_hash = None;
        }
        Ok(())
    }

    async fn delete_user(&self, username: &str) -> Result<(), StoreError> {
        self.lock().users.remove(username).map(drop).ok_or_else(|| not_found(username))
    }

    async fn list_users(&self, source: Option<UserSource>) -> Result<Vec<Record<User>>, StoreError> {
        // The map is ordered by username already.
        let state = self.lock();
        Ok(state.users.values().filter(|r| source.is_none_or(|s| r.user.source == s)).map(record).collect())
    }

    async fn password_hash(&self, username: &str) -> Result<Option<String>, StoreError> {
        let state = self.lock();
        Ok(state
            .users
            .get(username)
            .filter(|r| r.user.source == UserSource::Local)
            .and_then(|r| r.password_hash.clone()))
    }

    async fn set_password_hash(&self, username: &str, hash: Option<&str>) -> Result<(), StoreError> {
        let mut state = self.lock();
        let row = state.users.get_mut(username).ok_or_else(|| not_found(username))?;
        if hash.is_some() && row.user.source == UserSource::Ldap {
            return Err(StoreError::invalid(
                USER,
                ValidationError::Invalid {
                    field: "password",
                    reason: "an LDAP-owned account has no local password".into(),
                },
            ));
        }
        row.password_hash = hash.map(str::to_owned);
        Ok(())
    }

    async fn get_profile(&self, username: &str) -> Result<Option<Profile>, StoreError> {
        Ok(self.lock().users.get(username).and_then(|r| r.profile.clone()))
    }

    async fn set_profile(&self, username: &str, profile: &Profile) -> Result<(), StoreError> {
        let profile = normalised(profile)?;
        let mut state = self.lock();
        state.users.get_mut(username).ok_or_else(|| not_found(username))?.profile = Some(profile);
        Ok(())
    }

    async fn user_groups(&self, username: &str) -> Result<Vec<Group>, StoreError> {
        Ok(self.lock().users.get(username).map(|r| r.groups.iter().cloned().collect()).unwrap_or_default())
    }

    async fn set_user_groups(&self, username: &str, groups: &[Group]) -> Result<(), StoreError> {
        let mut state = self.lock();
        let wanted: BTreeSet<Group> = groups.iter().cloned().collect();
        let row = state.users.get_mut(username).ok_or_else(|| not_found(username))?;
        row.groups.clone_from(&wanted);
        state.groups.extend(wanted);
        Ok(())
    }

    async fn mirror_user(&self, mirror: &UserMirror) -> Result<Mirrored, StoreError> {
        let user = &mirror.user;
        user.validate().map_err(|e| StoreError::invalid(USER, e))?;
        let profile = mirror.profile.as_ref().map(normalised).transpose()?;
        let mut state = self.lock();
        let current = state.users.get(&user.username).map(|r| r.groups.clone()).unwrap_or_default();
        let wanted = mirrored_groups(mirror, &current)?;
        let outcome = match state.users.get(&user.username) {
            None => None,
            // A directory account never takes over a local one of the same name.
            Some(row) if user.source == UserSource::Ldap && row.user.source == UserSource::Local => {
                return Err(local_account());
            }
            Some(row)
                if user.source == UserSource::Ldap
                    && row.user.source == UserSource::Ldap
                    && row.user.directory != user.directory =>
            {
                return Err(other_directory());
            }
            Some(row) => {
                let mut next = row.clone();
                next.user = user.clone();
                if user.source == UserSource::Ldap {
                    next.password_hash = None;
                }
                if let Some(profile) = &profile {
                    next.profile = Some(profile.clone());
                }
                if let Some(wanted) = &wanted {
                    next.groups.clone_from(wanted);
                }
                let changed = next.user != row.user
                    || next.password_hash != row.password_hash
                    || next.profile != row.profile
                    || next.groups != row.groups;
                Some((row.id, changed.then_some(next)))
            }
        };
        if let Some(wanted) = &wanted {
            state.groups.extend(wanted.iter().cloned());
        }
        let (id, change) = match outcome {
            Some((id, None)) => (id, MirrorChange::Unchanged),
            Some((id, Some(next))) => {
                state.users.insert(user.username.clone(), next);
                (id, MirrorChange::Updated)
            }
            None => {
                let id = state.next_id("users");
                let groups = wanted.unwrap_or_default();
                let row = UserRow { id, user: user.clone(), password_hash: None, profile, groups };
                state.users.insert(user.username.clone(), row);
                (id, MirrorChange::Created)
            }
        };
        Ok(Mirrored { id: Id::new(id), change })
    }

    async fn deactivate_users(&self, usernames: &[String]) -> Result<u64, StoreError> {
        let mut state = self.lock();
        let names: BTreeSet<&String> = usernames.iter().collect();
        let mut changed = 0;
        for name in names {
            if let Some(row) = state.users.get_mut(name.as_str())
                && row.user.is_active
            {
                row.user.is_active = false;
                changed += 1;
            }
        }
        Ok(changed)
    }
}
