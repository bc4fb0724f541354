//! [`UserStore`]: users, profiles, groups and local password hashes, once for all backends.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use ralph_core::{
    CountryCode, Group, Id, MirrorChange, Mirrored, Profile, Record, StoreError, User, UserMirror, UserSource,
    UserStore, ValidationError,
};
use tracing::{debug, instrument};

use crate::driver::{Backend, Kind, Row, Value};
use crate::store::{SqlStore, TRACE_TARGET, commit, execute, fetch, fetch_id, insert};

const USER: &str = "user";
const USER_COLUMNS: &str = "id, username, first_name, last_name, email, is_active, is_staff, is_superuser, source";
const USER_KINDS: &[Kind] =
    &[Kind::Int, Kind::Text, Kind::Text, Kind::Text, Kind::Text, Kind::Bool, Kind::Bool, Kind::Bool, Kind::Text];
const PROFILE_FIELDS: [&str; 6] = ["company", "manager", "department", "employee_id", "location", "country"];

fn decode_user(row: &mut Row) -> Result<Record<User>, StoreError> {
    Ok(Record {
        id: Id::new(row.int()?),
        value: User {
            username: row.text()?,
            first_name: row.text()?,
            last_name: row.text()?,
            email: row.opt_text()?,
            is_active: row.bool()?,
            is_staff: row.bool()?,
            is_superuser: row.bool()?,
            source: row.parse(UserSource::parse)?,
        },
    })
}

/// The columns written for a user, in `USER_COLUMNS` order after `id`.
fn user_values(user: &User) -> Vec<Value> {
    vec![
        user.username.as_str().into(),
        user.first_name.as_str().into(),
        user.last_name.as_str().into(),
        user.email.as_deref().into(),
        user.is_active.into(),
        user.is_staff.into(),
        user.is_superuser.into(),
        user.source.as_str().into(),
    ]
}

fn profile_values(profile: &Profile) -> Vec<Value> {
    vec![
        profile.company.as_deref().into(),
        profile.manager.as_deref().into(),
        profile.department.as_deref().into(),
        profile.employee_id.as_deref().into(),
        profile.location.as_deref().into(),
        profile.country.map(|c| c.as_str()).into(),
    ]
}

fn invalid_user(error: ValidationError) -> StoreError {
    StoreError::invalid(USER, error)
}

fn not_found(username: &str) -> StoreError {
    StoreError::NotFound { entity: USER, key: username.to_owned() }
}

/// The id of `username`, its row locked until the transaction ends: every write to a user's
/// rows (profile, memberships) holds it, so two writers of one user take turns.
async fn user_id<DB: Backend>(conn: &mut DB::Connection, username: &str) -> Result<Option<i64>, StoreError> {
    let sql = format!("SELECT id FROM users WHERE username = ?{}", DB::DIALECT.for_update());
    fetch_id::<DB>(conn, USER, &sql, &[username.into()]).await
}

/// Updates the row of `id` to `user`; an LDAP-owned account loses any local password hash.
async fn write_user<DB: Backend>(conn: &mut DB::Connection, id: i64, user: &User) -> Result<(), StoreError> {
    let clear = if user.source == UserSource::Ldap { ", password_hash = NULL" } else { "" };
    let sql = format!(
        "UPDATE users SET username = ?, first_name = ?, last_name = ?, email = ?, is_active = ?, is_staff = ?, \
         is_superuser = ?, source = ?{clear} WHERE id = ?"
    );
    let mut args = user_values(user);
    args.push(id.into());
    execute::<DB>(conn, USER, &sql, &args).await.map(drop)
}

/// The columns [`user_values`] fills: all but `id`.
fn user_columns() -> Vec<&'static str> {
    USER_COLUMNS.split(", ").skip(1).collect()
}

async fn insert_user<DB: Backend>(conn: &mut DB::Connection, user: &User) -> Result<i64, StoreError> {
    insert::<DB>(conn, USER, "users", &user_columns(), &user_values(user)).await
}

/// Writes the profile of user `id`: an `UPDATE` when it has one (`exists`), else an `INSERT`.
/// Never an `UPDATE` that matches nothing: on MySQL that takes a gap lock, and two first
/// logins then deadlock on inserting their profiles into the same gap.
async fn write_profile<DB: Backend>(
    conn: &mut DB::Connection,
    id: i64,
    profile: &Profile,
    exists: bool,
) -> Result<(), StoreError> {
    let (sql, args) = if exists {
        let set = PROFILE_FIELDS.iter().map(|f| format!("{f} = ?")).collect::<Vec<_>>().join(", ");
        let mut args = profile_values(profile);
        args.push(id.into());
        (format!("UPDATE profiles SET {set} WHERE user_id = ?"), args)
    } else {
        let marks = vec!["?"; PROFILE_FIELDS.len() + 1].join(", ");
        let mut args = vec![id.into()];
        args.extend(profile_values(profile));
        (format!("INSERT INTO profiles (user_id, {}) VALUES ({marks})", PROFILE_FIELDS.join(", ")), args)
    };
    execute::<DB>(conn, "profile", &sql, &args).await.map(drop)
}

/// The ids of the groups named `names`, creating the missing ones. A collation that folds
/// case or accents may map two names onto one group: the ids are a set.
async fn group_ids<DB: Backend>(
    conn: &mut DB::Connection,
    names: &BTreeSet<&str>,
) -> Result<BTreeSet<i64>, StoreError> {
    if names.is_empty() {
        return Ok(BTreeSet::new());
    }
    let select = |names: &BTreeSet<&str>, lock: &str| {
        let marks = vec!["?"; names.len()].join(", ");
        let args: Vec<Value> = names.iter().map(|n| Value::from(*n)).collect();
        (format!("SELECT id, name FROM auth_groups WHERE name IN ({marks}){lock}"), args)
    };
    let (sql, args) = select(names, "");
    let found = fetch::<DB>(conn, "group", &sql, &args, &[Kind::Int, Kind::Text]).await?;
    let mut ids = BTreeSet::new();
    let mut known = BTreeSet::new();
    for mut row in found {
        ids.insert(row.int()?);
        known.insert(row.text()?);
    }
    let missing: BTreeSet<&str> = names.iter().copied().filter(|n| !known.contains(*n)).collect();
    if missing.is_empty() {
        return Ok(ids);
    }
    // Insert-or-ignore: a concurrent mirror may create the same group at the same time.
    let create = DB::DIALECT.insert_ignore("auth_groups", "name", "name");
    for name in &missing {
        execute::<DB>(conn, "group", &create, &[(*name).into()]).await?;
    }
    // A locking read: on MySQL a plain one reads the transaction's snapshot, which may predate
    // a group another transaction just created (and our insert then ignored).
    let (sql, args) = select(&missing, DB::DIALECT.for_share());
    for mut row in fetch::<DB>(conn, "group", &sql, &args, &[Kind::Int]).await? {
        ids.insert(row.int()?);
    }
    Ok(ids)
}

/// Makes the memberships of user `id` exactly `wanted`, given the `current` ones: inserts the
/// missing, deletes the extra, touches nothing else. Returns whether anything was written.
async fn diff_groups<DB: Backend>(
    conn: &mut DB::Connection,
    id: i64,
    current: &BTreeSet<i64>,
    wanted: &BTreeSet<i64>,
) -> Result<bool, StoreError> {
    let extra: Vec<Value> = current.difference(wanted).map(|g| Value::from(*g)).collect();
    if !extra.is_empty() {
        let marks = vec!["?"; extra.len()].join(", ");
        let mut args = vec![Value::from(id)];
        args.extend(extra.iter().cloned());
        let sql = format!("DELETE FROM user_groups WHERE user_id = ? AND group_id IN ({marks})");
        execute::<DB>(conn, "group", &sql, &args).await?;
    }
    let missing: Vec<i64> = wanted.difference(current).copied().collect();
    for group in &missing {
        execute::<DB>(
            conn,
            "group",
            "INSERT INTO user_groups (user_id, group_id) VALUES (?, ?)",
            &[id.into(), (*group).into()],
        )
        .await?;
    }
    Ok(!extra.is_empty() || !missing.is_empty())
}

/// Makes `groups` the memberships of user `id` (now members of `current`), creating missing
/// groups. Returns whether anything was written.
async fn write_groups<DB: Backend>(
    conn: &mut DB::Connection,
    id: i64,
    current: &BTreeSet<i64>,
    groups: &[Group],
) -> Result<bool, StoreError> {
    let names: BTreeSet<&str> = groups.iter().map(Group::as_str).collect();
    let wanted = group_ids::<DB>(conn, &names).await?;
    diff_groups::<DB>(conn, id, current, &wanted).await
}

/// What the store holds for one user, as [`UserStore::mirror_user`] compares it.
#[derive(Debug)]
struct StoredMirror {
    user: Record<User>,
    has_password: bool,
    profile: Option<Profile>,
    group_ids: BTreeSet<i64>,
    group_names: BTreeSet<String>,
}

impl StoredMirror {
    /// Whether writing `mirror` (profile normalised) would change nothing.
    fn matches(&self, mirror: &UserMirror, profile: Option<&Profile>) -> bool {
        let names = |groups: &[Group]| groups.iter().map(|g| g.as_str().to_owned()).collect::<BTreeSet<_>>();
        self.user.value == mirror.user
            && !(mirror.user.source == UserSource::Ldap && self.has_password)
            && profile.is_none_or(|p| self.profile.as_ref() == Some(p))
            && mirror.groups.as_deref().is_none_or(|g| names(g) == self.group_names)
    }
}

/// How [`stored_mirror`] finds its user.
enum UserKey<'a> {
    Name(&'a str),
    Id(i64),
}

/// The user with profile and groups in one round trip (one row per group), or `None`.
async fn stored_mirror<DB: Backend>(
    conn: &mut DB::Connection,
    key: UserKey<'_>,
) -> Result<Option<StoredMirror>, StoreError> {
    let (filter, arg) = match key {
        UserKey::Name(name) => ("u.username = ?", Value::from(name)),
        UserKey::Id(id) => ("u.id = ?", Value::from(id)),
    };
    let sql = format!(
        "SELECT {}, CASE WHEN u.password_hash IS NULL THEN 'n' ELSE 'y' END, \
         CASE WHEN p.user_id IS NULL THEN 'n' ELSE 'y' END, {}, g.id, g.name \
         FROM users u LEFT JOIN profiles p ON p.user_id = u.id \
         LEFT JOIN user_groups ug ON ug.user_id = u.id LEFT JOIN auth_groups g ON g.id = ug.group_id \
         WHERE {filter}",
        USER_COLUMNS.split(", ").map(|c| format!("u.{c}")).collect::<Vec<_>>().join(", "),
        PROFILE_FIELDS.map(|f| format!("p.{f}")).join(", "),
    );
    let mut kinds = USER_KINDS.to_vec();
    kinds.extend([Kind::Text; 2 + PROFILE_FIELDS.len()]);
    kinds.extend([Kind::Int, Kind::Text]);
    let mut stored: Option<StoredMirror> = None;
    for mut row in fetch::<DB>(conn, USER, &sql, &[arg], &kinds).await? {
        let user = decode_user(&mut row)?;
        let has_password = row.text()? == "y";
        let has_profile = row.text()? == "y";
        let profile = decode_profile(&mut row)?;
        let entry = stored.get_or_insert_with(|| StoredMirror {
            user,
            has_password,
            profile: has_profile.then_some(profile),
            group_ids: BTreeSet::new(),
            group_names: BTreeSet::new(),
        });
        if let (Some(id), Some(name)) = (row.opt_int()?, row.opt_text()?) {
            entry.group_ids.insert(id);
            entry.group_names.insert(name);
        }
    }
    Ok(stored)
}

fn decode_profile(row: &mut Row) -> Result<Profile, StoreError> {
    Ok(Profile {
        company: row.opt_text()?,
        manager: row.opt_text()?,
        department: row.opt_text()?,
        employee_id: row.opt_text()?,
        location: row.opt_text()?,
        country: row.parse_opt(CountryCode::parse)?,
    })
}

/// One attempt of [`UserStore::mirror_user`]'s write path, in one transaction.
///
/// A new user's row is inserted-or-ignored first, so racing first logins of one user meet in
/// the unique index (one insert wins, the others see its row) instead of both inserting; then
/// the row is locked, which serialises concurrent mirrors of the same user, and only what
/// differs from the stored state (read again under the lock) is written. Group rows are only ever read, inserted or
/// ignored, never locked for update, so mirrors of different users do not wait on each other.
async fn write_mirror<DB: Backend>(
    store: &SqlStore<DB>,
    mirror: &UserMirror,
    profile: Option<&Profile>,
    known: bool,
) -> Result<Mirrored, StoreError> {
    let user = &mirror.user;
    let mut tx = store.begin(USER).await?;
    // A user seen a moment ago is locked straight away: inserting first would take a shared
    // lock on MySQL, and two of those upgrading to exclusive deadlock.
    let mut id = if known { user_id::<DB>(&mut tx, &user.username).await? } else { None };
    let mut created = false;
    if id.is_none() {
        let create = DB::DIALECT.insert_ignore("users", &user_columns().join(", "), "username");
        created = execute::<DB>(&mut tx, USER, &create, &user_values(user)).await? == 1;
        id = user_id::<DB>(&mut tx, &user.username).await?;
    }
    let vanished = || StoreError::Corrupt { entity: USER, detail: format!("user {:?} vanished", user.username) };
    let id = id.ok_or_else(vanished)?;
    let stored = stored_mirror::<DB>(&mut tx, UserKey::Id(id)).await?.ok_or_else(vanished)?;
    // A directory account never takes over a local one of the same name: the local account
    // (and its password, the way in while LDAP is down) stays as it is.
    if !created && user.source == UserSource::Ldap && stored.user.value.source == UserSource::Local {
        debug!(target: TRACE_TARGET, username = %user.username, "mirror refused: local account");
        return Err(StoreError::Conflict { entity: USER, constraint: "local account".into() });
    }
    let mut changed = false;
    if !created && (stored.user.value != *user || (user.source == UserSource::Ldap && stored.has_password)) {
        write_user::<DB>(&mut tx, id, user).await?;
        changed = true;
    }
    if let Some(profile) = profile
        && stored.profile.as_ref() != Some(profile)
    {
        write_profile::<DB>(&mut tx, id, profile, stored.profile.is_some()).await?;
        changed = true;
    }
    if let Some(groups) = &mirror.groups {
        changed |= write_groups::<DB>(&mut tx, id, &stored.group_ids, groups).await?;
    }
    if !created && !changed {
        // A concurrent mirror wrote the same thing first; nothing to commit.
        return Ok(Mirrored { id: Id::new(id), change: MirrorChange::Unchanged });
    }
    commit(tx, USER).await?;
    let change = if created { MirrorChange::Created } else { MirrorChange::Updated };
    debug!(target: TRACE_TARGET, username = %user.username, source = user.source.as_str(), ?change, "user mirrored");
    Ok(Mirrored { id: Id::new(id), change })
}

#[async_trait]
impl<DB: Backend> UserStore for SqlStore<DB> {
    async fn create_user(&self, user: &User) -> Result<Id<User>, StoreError> {
        user.validate().map_err(invalid_user)?;
        self.retrying(USER, || async {
            let mut tx = self.begin(USER).await?;
            // A plain read, no lock: a locking read of a missing key takes a gap lock on MySQL,
            // which makes concurrent creations deadlock. The unique index settles a race.
            let taken = fetch_id::<DB>(
                &mut tx,
                USER,
                "SELECT id FROM users WHERE username = ?",
                &[user.username.as_str().into()],
            )
            .await?;
            if taken.is_some() {
                return Err(StoreError::Conflict { entity: USER, constraint: "username".into() });
            }
            let id = insert_user::<DB>(&mut tx, user).await?;
            commit(tx, USER).await?;
            Ok(Id::new(id))
        })
        .await
    }

    async fn get_user(&self, username: &str) -> Result<Option<Record<User>>, StoreError> {
        let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE username = ?");
        let rows = self.read(USER, &sql, &[username.into()], USER_KINDS).await?;
        rows.into_iter().next().map(|mut row| decode_user(&mut row)).transpose()
    }

    async fn update_user(&self, user: &User) -> Result<(), StoreError> {
        user.validate().map_err(invalid_user)?;
        self.retrying(USER, || async {
            let mut tx = self.begin(USER).await?;
            let id = user_id::<DB>(&mut tx, &user.username).await?.ok_or_else(|| not_found(&user.username))?;
            write_user::<DB>(&mut tx, id, user).await?;
            commit(tx, USER).await
        })
        .await
    }

    async fn delete_user(&self, username: &str) -> Result<(), StoreError> {
        let args = [Value::from(username)];
        let deleted = self.retrying(USER, || self.run(USER, "DELETE FROM users WHERE username = ?", &args)).await?;
        if deleted == 0 {
            return Err(not_found(username));
        }
        debug!(target: TRACE_TARGET, username, "user deleted");
        Ok(())
    }

    async fn list_users(&self, source: Option<UserSource>) -> Result<Vec<Record<User>>, StoreError> {
        let (filter, args) = match source {
            Some(s) => ("WHERE source = ?", vec![s.as_str().into()]),
            None => ("", Vec::new()),
        };
        let sql = format!("SELECT {USER_COLUMNS} FROM users {filter}");
        let rows = self.read(USER, &sql, &args, USER_KINDS).await?;
        let mut users = rows.into_iter().map(|mut row| decode_user(&mut row)).collect::<Result<Vec<_>, _>>()?;
        // Sorted here, not by the database, so every backend's collation gives the same order.
        users.sort_by(|a, b| a.username.cmp(&b.username));
        Ok(users)
    }

    #[instrument(target = "ralph::store", skip_all)]
    async fn password_hash(&self, username: &str) -> Result<Option<String>, StoreError> {
        let rows = self
            .read(
                USER,
                "SELECT password_hash FROM users WHERE username = ? AND source = ?",
                &[username.into(), UserSource::Local.as_str().into()],
                &[Kind::Text],
            )
            .await?;
        rows.into_iter().next().map(|mut row| row.opt_text()).transpose().map(Option::flatten)
    }

    #[instrument(target = "ralph::store", skip_all)]
    async fn set_password_hash(&self, username: &str, hash: Option<&str>) -> Result<(), StoreError> {
        self.retrying(USER, || async {
            let mut tx = self.begin(USER).await?;
            let rows = fetch::<DB>(
                &mut tx,
                USER,
                "SELECT source FROM users WHERE username = ?",
                &[username.into()],
                &[Kind::Text],
            )
            .await?;
            let Some(mut row) = rows.into_iter().next() else { return Err(not_found(username)) };
            if hash.is_some() && row.parse(UserSource::parse)? == UserSource::Ldap {
                return Err(invalid_user(ValidationError::Invalid {
                    field: "password",
                    reason: "an LDAP-owned account has no local password".into(),
                }));
            }
            execute::<DB>(
                &mut tx,
                USER,
                "UPDATE users SET password_hash = ? WHERE username = ?",
                &[hash.into(), username.into()],
            )
            .await?;
            commit(tx, USER).await
        })
        .await?;
        debug!(target: TRACE_TARGET, username, set = hash.is_some(), "password hash changed");
        Ok(())
    }

    async fn get_profile(&self, username: &str) -> Result<Option<Profile>, StoreError> {
        let sql = format!(
            "SELECT {} FROM profiles p JOIN users u ON u.id = p.user_id WHERE u.username = ?",
            PROFILE_FIELDS.map(|f| format!("p.{f}")).join(", ")
        );
        let rows = self.read("profile", &sql, &[username.into()], &[Kind::Text; 6]).await?;
        rows.into_iter().next().map(|mut row| decode_profile(&mut row)).transpose()
    }

    async fn set_profile(&self, username: &str, profile: &Profile) -> Result<(), StoreError> {
        let profile = &profile.clone().normalised().map_err(|e| StoreError::invalid("profile", e))?;
        self.retrying("profile", || async {
            let mut tx = self.begin("profile").await?;
            let id = user_id::<DB>(&mut tx, username).await?.ok_or_else(|| not_found(username))?;
            // Read under the user's row lock: nobody else adds the profile meanwhile.
            let exists =
                fetch_id::<DB>(&mut tx, "profile", "SELECT user_id FROM profiles WHERE user_id = ?", &[id.into()])
                    .await?
                    .is_some();
            write_profile::<DB>(&mut tx, id, profile, exists).await?;
            commit(tx, "profile").await
        })
        .await
    }

    async fn user_groups(&self, username: &str) -> Result<Vec<Group>, StoreError> {
        let rows = self
            .read(
                "group",
                "SELECT g.name FROM auth_groups g JOIN user_groups ug ON ug.group_id = g.id \
                 JOIN users u ON u.id = ug.user_id WHERE u.username = ?",
                &[username.into()],
                &[Kind::Text],
            )
            .await?;
        let mut groups = rows.into_iter().map(|mut row| row.parse(Group::new)).collect::<Result<Vec<_>, _>>()?;
        groups.sort();
        Ok(groups)
    }

    async fn set_user_groups(&self, username: &str, groups: &[Group]) -> Result<(), StoreError> {
        self.retrying("group", || async {
            let mut tx = self.begin("group").await?;
            let id = user_id::<DB>(&mut tx, username).await?.ok_or_else(|| not_found(username))?;
            let current = stored_mirror::<DB>(&mut tx, UserKey::Id(id)).await?.map(|s| s.group_ids).unwrap_or_default();
            write_groups::<DB>(&mut tx, id, &current, groups).await?;
            commit(tx, "group").await
        })
        .await
    }

    async fn mirror_user(&self, mirror: &UserMirror) -> Result<Mirrored, StoreError> {
        let user = &mirror.user;
        user.validate().map_err(invalid_user)?;
        let profile = mirror
            .profile
            .clone()
            .map(Profile::normalised)
            .transpose()
            .map_err(|e| StoreError::invalid("profile", e))?;
        // The common case, a user logging in again with nothing changed, is one read on a
        // pooled connection: no transaction, no lock, no write.
        let mut conn = self.acquire(USER).await?;
        let stored = stored_mirror::<DB>(&mut conn, UserKey::Name(&user.username)).await?;
        drop(conn);
        if let Some(stored) = &stored {
            if user.source == UserSource::Ldap && stored.user.value.source == UserSource::Local {
                debug!(target: TRACE_TARGET, username = %user.username, "mirror refused: local account");
                return Err(StoreError::Conflict { entity: USER, constraint: "local account".into() });
            }
            if stored.matches(mirror, profile.as_ref()) {
                return Ok(Mirrored { id: stored.user.id, change: MirrorChange::Unchanged });
            }
        }
        // A retry asks again whether the user exists (a plain read, no lock): the conflict it
        // follows was most likely a racing first login of the same user, whose row now exists
        // and is then locked at once. Inserting again would take MySQL's shared lock on the
        // duplicate (many holders upgrading to exclusive deadlock again and again); locking a
        // still missing row would take a gap lock (first logins of neighbours deadlock).
        let first_attempt = &AtomicBool::new(true);
        let (stored, profile) = (&stored, profile.as_ref());
        self.retrying(USER, || async move {
            let known = if first_attempt.swap(false, Ordering::Relaxed) {
                stored.is_some()
            } else {
                self.read(
                    USER,
                    "SELECT id FROM users WHERE username = ?",
                    &[user.username.as_str().into()],
                    &[Kind::Int],
                )
                .await?
                .into_iter()
                .next()
                .is_some()
            };
            write_mirror(self, mirror, profile, known).await
        })
        .await
    }

    async fn deactivate_users(&self, usernames: &[String]) -> Result<u64, StoreError> {
        self.retrying(USER, || async {
            let mut changed = 0;
            // One transaction: all of them or (on an error) none of them.
            let mut tx = self.begin(USER).await?;
            // Chunks keep every statement far below each backend's bind-parameter limit.
            for chunk in usernames.chunks(500) {
                let marks = vec!["?"; chunk.len()].join(", ");
                let sql = format!("UPDATE users SET is_active = ? WHERE is_active = ? AND username IN ({marks})");
                let mut args: Vec<Value> = vec![false.into(), true.into()];
                args.extend(chunk.iter().map(|u| Value::from(u.as_str())));
                changed += execute::<DB>(&mut tx, USER, &sql, &args).await?;
            }
            commit(tx, USER).await?;
            Ok(changed)
        })
        .await
    }
}
