//! [`UserStore`]: users, profiles, groups and local password hashes, once for all backends.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use ralph_core::history::{Action, Actor, HistoryRecord, new_correlation};
use ralph_core::{
    CountryCode, Group, Id, MirrorChange, Mirrored, Profile, Record, StoreError, User, UserMirror, UserSource,
    UserStore, ValidationError,
};
use sqlx::{ColumnIndex, Decode, Encode, Executor, FromRow, IntoArguments, QueryBuilder, Type};
use tracing::{debug, instrument};

use super::history::ColumnText;
use super::{err, push_list};
use crate::dialect::{Backend, Stamp};
use crate::store::{SqlStore, TRACE_TARGET, commit};

const USER: &str = "user";
const PROFILE: &str = "profile";
const GROUP: &str = "group";

/// Usernames per `IN (...)` list: far under every backend's bind-parameter limit.
const NAMES_CHUNK: usize = 500;

/// The user columns every read selects (`u.` is the users table).
const USER_SELECT: &str = "u.id, u.username, u.first_name, u.last_name, u.email, u.is_active, u.is_staff, u.is_superuser, u.source, \
     u.directory";

/// A row of `users`.
#[derive(FromRow)]
struct UserRow {
    id: i64,
    username: String,
    first_name: String,
    last_name: String,
    email: Option<String>,
    is_active: bool,
    is_staff: bool,
    is_superuser: bool,
    source: String,
    directory: Option<String>,
}

impl UserRow {
    fn into_record(self) -> Result<Record<User>, StoreError> {
        let source = UserSource::parse(&self.source).map_err(|e| corrupt(&e))?;
        Ok(Record {
            id: Id::new(self.id),
            value: User {
                username: self.username,
                first_name: self.first_name,
                last_name: self.last_name,
                email: self.email,
                is_active: self.is_active,
                is_staff: self.is_staff,
                is_superuser: self.is_superuser,
                source,
                directory: self.directory,
            },
        })
    }
}

/// A row of `profiles` (every column nullable: it comes out of a `LEFT JOIN` too).
#[derive(FromRow)]
struct ProfileRow {
    company: Option<String>,
    manager: Option<String>,
    department: Option<String>,
    employee_id: Option<String>,
    location: Option<String>,
    country: Option<String>,
}

impl ProfileRow {
    fn into_profile(self) -> Result<Profile, StoreError> {
        Ok(Profile {
            company: self.company,
            manager: self.manager,
            department: self.department,
            employee_id: self.employee_id,
            location: self.location,
            country: self.country.as_deref().map(CountryCode::parse).transpose().map_err(|e| corrupt(&e))?,
        })
    }
}

/// One row of [`stored_mirror`]'s join: the user, whether it has a password and a profile, the
/// profile, and one of its groups.
#[derive(FromRow)]
struct MirrorRow {
    #[sqlx(flatten)]
    user: UserRow,
    has_password: bool,
    has_profile: bool,
    #[sqlx(flatten)]
    profile: ProfileRow,
    group_id: Option<i64>,
    group_name: Option<String>,
}

#[derive(FromRow)]
struct GroupRow {
    id: i64,
    name: String,
}

fn corrupt(error: &ValidationError) -> StoreError {
    StoreError::Corrupt { entity: USER, detail: error.to_string() }
}

fn invalid_user(error: ValidationError) -> StoreError {
    StoreError::invalid(USER, error)
}

fn not_found(username: &str) -> StoreError {
    StoreError::NotFound { entity: USER, key: username.to_owned() }
}

/// Pushes the users' columns (all but `id`) as `(c1, c2, ...) VALUES (?, ?, ...), (...)`.
fn push_user_insert<'u, DB>(qb: &mut QueryBuilder<DB>, users: impl IntoIterator<Item = &'u User>)
where
    DB: Backend,
    for<'q> Option<&'q str>: Encode<'q, DB> + Type<DB>,
    for<'q> bool: Encode<'q, DB> + Type<DB>,
{
    qb.push("(username, first_name, last_name, email, is_active, is_staff, is_superuser, source, directory) ");
    qb.push_values(users, |mut values, user| {
        values
            .push_bind(Some(user.username.as_str()))
            .push_bind(Some(user.first_name.as_str()))
            .push_bind(Some(user.last_name.as_str()))
            .push_bind(user.email.as_deref())
            .push_bind(user.is_active)
            .push_bind(user.is_staff)
            .push_bind(user.is_superuser)
            .push_bind(Some(user.source.as_str()))
            .push_bind(user.directory.as_deref());
    });
}

/// The profile's columns and values.
fn profile_fields(profile: &Profile) -> [(&'static str, Option<&str>); 6] {
    [
        ("company", profile.company.as_deref()),
        ("manager", profile.manager.as_deref()),
        ("department", profile.department.as_deref()),
        ("employee_id", profile.employee_id.as_deref()),
        ("location", profile.location.as_deref()),
        ("country", profile.country.map(|c| c.as_str())),
    ]
}

/// A profile column's name in the change history.
fn profile_history_name(column: &'static str) -> &'static str {
    match column {
        "company" => "profile.company",
        "manager" => "profile.manager",
        "department" => "profile.department",
        "employee_id" => "profile.employee_id",
        "location" => "profile.location",
        _ => "profile.country",
    }
}

/// A profile as the change history compares it (`profile.*` fields).
fn profile_text(profile: Option<&Profile>, into: &mut ColumnText) {
    if let Some(profile) = profile {
        into.0.extend(profile_fields(profile).map(|(name, v)| (profile_history_name(name), v.map(str::to_owned))));
    }
}

/// Group names as the change history records them: one `groups` field, sorted, comma-separated.
fn groups_text(groups: &BTreeSet<String>, into: &mut ColumnText) {
    let names: Vec<&str> = groups.iter().map(String::as_str).collect();
    into.0.push(("groups", (!names.is_empty()).then(|| names.join(", "))));
}

/// A user as the change history compares it: its columns, `password_hash` (shown only as
/// set or not, never its value), its profile's fields and its groups.
fn user_text(user: &User, password: Option<&str>, profile: Option<&Profile>, groups: &BTreeSet<String>) -> ColumnText {
    let flag = |b: bool| Some(b.to_string());
    let mut text = ColumnText(vec![
        ("username", Some(user.username.clone())),
        ("first_name", Some(user.first_name.clone())),
        ("last_name", Some(user.last_name.clone())),
        ("email", user.email.clone()),
        ("is_active", flag(user.is_active)),
        ("is_staff", flag(user.is_staff)),
        ("is_superuser", flag(user.is_superuser)),
        ("source", Some(user.source.as_str().to_owned())),
        ("directory", user.directory.clone()),
        ("password_hash", password.map(str::to_owned)),
    ]);
    profile_text(profile, &mut text);
    groups_text(groups, &mut text);
    text
}

impl StoredMirror {
    /// The stored user as the change history compares it.
    fn text(&self) -> ColumnText {
        user_text(&self.user.value, self.has_password.then_some(PASSWORD_SET), self.profile.as_ref(), &self.group_names)
    }
}

/// What `password_hash` is compared as where only its presence is known.
const PASSWORD_SET: &str = "(set)";

/// Who a mirror's writes are recorded as: the directory for an LDAP account, else the
/// handle's actor.
fn mirror_actor(user: &User, handle: &Actor) -> (Actor, Option<String>) {
    match user.source {
        UserSource::Ldap => (Actor::source("ldap"), user.directory.as_ref().map(|d| format!("directory {d}"))),
        UserSource::Local => (handle.clone(), None),
    }
}

/// The history record of a user write.
fn user_record(
    id: i64,
    action: Action,
    (actor, message): (Actor, Option<String>),
    before: Option<&ColumnText>,
    after: Option<&ColumnText>,
) -> HistoryRecord {
    let record = HistoryRecord::new(USER, id, action, actor).with_changes(ColumnText::diff(before, after));
    match message {
        Some(m) => record.with_message(&m),
        None => record,
    }
}

/// Pushes profiles of users as `(user_id, c1, ...) VALUES (?, ?, ...), (...)`.
fn push_profile_insert<'p, DB>(qb: &mut QueryBuilder<DB>, profiles: impl IntoIterator<Item = (i64, &'p Profile)>)
where
    DB: Backend,
    for<'q> Option<i64>: Encode<'q, DB> + Type<DB>,
    for<'q> Option<&'q str>: Encode<'q, DB> + Type<DB>,
{
    qb.push("(user_id");
    for (name, _) in profile_fields(&Profile::default()) {
        qb.push(", ").push(name);
    }
    qb.push(") ");
    qb.push_values(profiles, |mut values, (id, profile)| {
        values.push_bind(Some(id));
        for (_, value) in profile_fields(profile) {
            values.push_bind(value);
        }
    });
}

/// Pushes the profile's columns as `c1 = ?, ...`.
fn push_profile_update<DB>(qb: &mut QueryBuilder<DB>, profile: &Profile)
where
    DB: Backend,
    for<'q> Option<&'q str>: Encode<'q, DB> + Type<DB>,
{
    let mut set = qb.separated(", ");
    for (name, value) in profile_fields(profile) {
        set.push(name).push_unseparated(" = ").push_bind_unseparated(value);
    }
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
    /// The groups `mirror` leaves the user with (`None`: groups left alone).
    fn wanted_groups(&self, mirror: &UserMirror) -> Option<BTreeSet<String>> {
        mirror.resulting_groups(self.group_names.iter().map(String::as_str))
    }

    /// Whether writing `mirror` (profile normalised) would change nothing.
    fn matches(&self, mirror: &UserMirror, profile: Option<&Profile>) -> bool {
        self.user.value == mirror.user
            && !(mirror.user.source == UserSource::Ldap && self.has_password)
            && profile.is_none_or(|p| self.profile.as_ref() == Some(p))
            && self.wanted_groups(mirror).is_none_or(|g| g == self.group_names)
    }

    /// Why `mirror` may not write over this account, if it may not: a directory account never
    /// takes over a local one of the same name (the local account, and its password, the way
    /// in while LDAP is down, stay as they are), nor one another directory owns.
    fn refusal(&self, mirror: &UserMirror) -> Option<StoreError> {
        let (stored, user) = (&self.user.value, &mirror.user);
        if user.source != UserSource::Ldap {
            return None;
        }
        let constraint = match stored.source {
            UserSource::Local => "local account",
            UserSource::Ldap if stored.directory != user.directory => "account of another directory",
            UserSource::Ldap => return None,
        };
        debug!(target: TRACE_TARGET, username = %user.username, constraint, "mirror refused");
        Some(StoreError::Conflict { entity: USER, constraint: constraint.into() })
    }
}

/// How [`SqlStore::stored_mirrors`] finds its users.
enum UserKey<'a> {
    Name(&'a str),
    Id(i64),
    Names(&'a [&'a str]),
}

impl<DB> SqlStore<DB>
where
    DB: Backend,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    for<'r> &'r str: ColumnIndex<DB::Row>,
    usize: ColumnIndex<DB::Row>,
    for<'q> Option<i64>: Encode<'q, DB> + Type<DB>,
    for<'q> Option<&'q str>: Encode<'q, DB> + Type<DB>,
    for<'q> Option<DateTime<Utc>>: Encode<'q, DB> + Type<DB>,
    for<'q> bool: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> i64: Decode<'q, DB> + Type<DB>,
    for<'q> i32: Decode<'q, DB> + Type<DB>,
    for<'q> String: Decode<'q, DB> + Type<DB>,
    for<'q> DateTime<Utc>: Decode<'q, DB> + Type<DB>,
    for<'q> Stamp: Decode<'q, DB> + Type<DB>,
{
    /// The id of `username`, its row locked until the transaction ends: every write to a
    /// user's rows (profile, memberships) holds it, so two writers of one user take turns.
    async fn lock_user(conn: &mut DB::Connection, username: &str) -> Result<Option<i64>, StoreError> {
        let mut qb = QueryBuilder::new("SELECT id FROM users WHERE username = ");
        qb.push_bind(Some(username)).push(DB::FOR_UPDATE);
        qb.build_query_scalar::<i64>().fetch_optional(&mut *conn).await.map_err(err(USER))
    }

    /// The id of `username` by a plain read (no lock).
    async fn find_user_id(conn: &mut DB::Connection, username: &str) -> Result<Option<i64>, StoreError> {
        let mut qb = QueryBuilder::new("SELECT id FROM users WHERE username = ");
        qb.push_bind(Some(username));
        qb.build_query_scalar::<i64>().fetch_optional(&mut *conn).await.map_err(err(USER))
    }

    /// Updates the row of `id` to `user`; an LDAP-owned account loses any local password hash.
    async fn write_user(conn: &mut DB::Connection, id: i64, user: &User) -> Result<(), StoreError> {
        let mut qb = QueryBuilder::new("UPDATE users SET ");
        qb.separated(", ")
            .push("username = ")
            .push_bind_unseparated(Some(user.username.as_str()))
            .push("first_name = ")
            .push_bind_unseparated(Some(user.first_name.as_str()))
            .push("last_name = ")
            .push_bind_unseparated(Some(user.last_name.as_str()))
            .push("email = ")
            .push_bind_unseparated(user.email.as_deref())
            .push("is_active = ")
            .push_bind_unseparated(user.is_active)
            .push("is_staff = ")
            .push_bind_unseparated(user.is_staff)
            .push("is_superuser = ")
            .push_bind_unseparated(user.is_superuser)
            .push("source = ")
            .push_bind_unseparated(Some(user.source.as_str()))
            .push("directory = ")
            .push_bind_unseparated(user.directory.as_deref());
        if user.source == UserSource::Ldap {
            qb.push(", password_hash = NULL");
        }
        qb.push(" WHERE id = ").push_bind(Some(id));
        qb.build().execute(&mut *conn).await.map(drop).map_err(err(USER))
    }

    /// Writes the profile of user `id`: an `UPDATE` when it has one (`exists`), else an
    /// `INSERT`. Never an `UPDATE` that matches nothing: on MySQL that takes a gap lock, and
    /// two first logins then deadlock on inserting their profiles into the same gap.
    async fn write_profile(
        conn: &mut DB::Connection,
        id: i64,
        profile: &Profile,
        exists: bool,
    ) -> Result<(), StoreError> {
        let mut qb;
        if exists {
            qb = QueryBuilder::new("UPDATE profiles SET ");
            push_profile_update(&mut qb, profile);
            qb.push(" WHERE user_id = ").push_bind(Some(id));
        } else {
            qb = QueryBuilder::new("INSERT INTO profiles ");
            push_profile_insert(&mut qb, [(id, profile)]);
        }
        qb.build().execute(&mut *conn).await.map(drop).map_err(err(PROFILE))
    }

    /// The groups named `names` (share-locked with `lock`).
    async fn find_groups(
        conn: &mut DB::Connection,
        names: &BTreeSet<&str>,
        lock: &str,
    ) -> Result<Vec<GroupRow>, StoreError> {
        let mut qb = QueryBuilder::new("SELECT id, name FROM auth_groups WHERE name IN (");
        push_list(&mut qb, names.iter().map(|n| Some(*n)));
        qb.push(")").push(lock);
        qb.build_query_as::<GroupRow>().fetch_all(&mut *conn).await.map_err(err(GROUP))
    }

    /// The ids of the groups named `names`, creating the missing ones. A collation that folds
    /// case or accents may map two names onto one group: the ids are a set.
    async fn group_ids(conn: &mut DB::Connection, names: &BTreeSet<&str>) -> Result<BTreeSet<i64>, StoreError> {
        if names.is_empty() {
            return Ok(BTreeSet::new());
        }
        let found = Self::find_groups(conn, names, "").await?;
        let mut ids: BTreeSet<i64> = found.iter().map(|g| g.id).collect();
        let known: BTreeSet<&str> = found.iter().map(|g| g.name.as_str()).collect();
        let missing: BTreeSet<&str> = names.iter().copied().filter(|n| !known.contains(*n)).collect();
        if missing.is_empty() {
            return Ok(ids);
        }
        ids.extend(Self::create_groups(conn, &missing).await?.into_iter().map(|g| g.id));
        Ok(ids)
    }

    /// Creates the groups named `missing` (insert-or-ignore: a concurrent mirror may create the
    /// same group at the same time) and reads them back with a locking read: on MySQL a plain
    /// one reads the transaction's snapshot, which may predate a group another transaction just
    /// created (and our insert then ignored).
    async fn create_groups(conn: &mut DB::Connection, missing: &BTreeSet<&str>) -> Result<Vec<GroupRow>, StoreError> {
        let mut qb = QueryBuilder::new(DB::INSERT_IGNORE);
        qb.push(" auth_groups (name) ");
        qb.push_values(missing, |mut row, name| {
            row.push_bind(Some(*name));
        });
        qb.push(DB::ignore_conflict("name"));
        qb.build().execute(&mut *conn).await.map_err(err(GROUP))?;
        Self::find_groups(conn, missing, DB::FOR_SHARE).await
    }

    /// Makes the memberships of user `id` exactly `wanted`, given the `current` ones: inserts
    /// the missing, deletes the extra, touches nothing else. Returns whether anything was
    /// written.
    async fn diff_groups(
        conn: &mut DB::Connection,
        id: i64,
        current: &BTreeSet<i64>,
        wanted: &BTreeSet<i64>,
    ) -> Result<bool, StoreError> {
        let extra: Vec<i64> = current.difference(wanted).copied().collect();
        if !extra.is_empty() {
            let mut qb = QueryBuilder::new("DELETE FROM user_groups WHERE user_id = ");
            qb.push_bind(Some(id)).push(" AND group_id IN (");
            push_list(&mut qb, extra.iter().map(|g| Some(*g)));
            qb.push(")");
            qb.build().execute(&mut *conn).await.map_err(err(GROUP))?;
        }
        let missing: Vec<i64> = wanted.difference(current).copied().collect();
        if !missing.is_empty() {
            let mut qb = QueryBuilder::new("INSERT INTO user_groups (user_id, group_id) ");
            qb.push_values(&missing, |mut row, group| {
                row.push_bind(Some(id)).push_bind(Some(*group));
            });
            qb.build().execute(&mut *conn).await.map_err(err(GROUP))?;
        }
        Ok(!extra.is_empty() || !missing.is_empty())
    }

    /// Makes `names` the memberships of user `id` (now members of `current`), creating missing
    /// groups. Returns whether anything was written.
    async fn write_groups(
        conn: &mut DB::Connection,
        id: i64,
        current: &BTreeSet<i64>,
        names: &BTreeSet<&str>,
    ) -> Result<bool, StoreError> {
        let wanted = Self::group_ids(conn, names).await?;
        Self::diff_groups(conn, id, current, &wanted).await
    }

    /// The stored user as a write's history compares it; `None` when the user's rows do not
    /// parse (a country code the validator no longer knows, say): the write goes on, and its
    /// record goes without earlier values, rather than the write that would fix the row failing.
    async fn stored_for_history(conn: &mut DB::Connection, id: i64) -> Result<Option<StoredMirror>, StoreError> {
        match Self::stored_mirror(conn, UserKey::Id(id)).await {
            Ok(stored) => Ok(stored),
            Err(StoreError::Corrupt { detail, .. }) => {
                debug!(target: TRACE_TARGET, id, detail, "stored user unreadable: recorded without earlier values");
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// The user with profile and groups in one round trip (one row per group), or `None`.
    async fn stored_mirror(conn: &mut DB::Connection, key: UserKey<'_>) -> Result<Option<StoredMirror>, StoreError> {
        Ok(Self::stored_mirrors(conn, key).await?.into_values().next())
    }

    /// The users `key` names with profile and groups in one round trip (one row per group),
    /// by username.
    async fn stored_mirrors(
        conn: &mut DB::Connection,
        key: UserKey<'_>,
    ) -> Result<BTreeMap<String, StoredMirror>, StoreError> {
        let mut qb = QueryBuilder::new(format!(
            "SELECT {USER_SELECT}, \
             CASE WHEN u.password_hash IS NULL THEN FALSE ELSE TRUE END AS has_password, \
             CASE WHEN p.user_id IS NULL THEN FALSE ELSE TRUE END AS has_profile, \
             p.company, p.manager, p.department, p.employee_id, p.location, p.country, \
             g.id AS group_id, g.name AS group_name \
             FROM users u LEFT JOIN profiles p ON p.user_id = u.id \
             LEFT JOIN user_groups ug ON ug.user_id = u.id LEFT JOIN auth_groups g ON g.id = ug.group_id WHERE "
        ));
        match key {
            UserKey::Name(name) => qb.push("u.username = ").push_bind(Some(name)),
            UserKey::Id(id) => qb.push("u.id = ").push_bind(Some(id)),
            UserKey::Names(names) => {
                qb.push("u.username IN (");
                push_list(&mut qb, names.iter().map(|n| Some(*n)));
                qb.push(")")
            }
        };
        let rows = qb.build_query_as::<MirrorRow>().fetch_all(&mut *conn).await.map_err(err(USER))?;
        let mut stored: BTreeMap<String, StoredMirror> = BTreeMap::new();
        for row in rows {
            let entry = match stored.entry(row.user.username.clone()) {
                Entry::Occupied(entry) => entry.into_mut(),
                Entry::Vacant(entry) => entry.insert(StoredMirror {
                    user: row.user.into_record()?,
                    has_password: row.has_password,
                    profile: if row.has_profile { Some(row.profile.into_profile()?) } else { None },
                    group_ids: BTreeSet::new(),
                    group_names: BTreeSet::new(),
                }),
            };
            if let (Some(id), Some(name)) = (row.group_id, row.group_name) {
                entry.group_ids.insert(id);
                entry.group_names.insert(name);
            }
        }
        Ok(stored)
    }

    /// Creates users none of whom is stored yet (a directory's first import), with their
    /// profiles and groups, in one transaction of a few multi-row statements. `Ok(None)`, with
    /// nothing written, when the page does not fit that path: one of the users was created
    /// meanwhile (a racing login or sync; the unique index tells), or a group name matched a
    /// stored group only through the collation (`Admins` for `admins` on MySQL). The caller
    /// then takes [`UserStore::mirror_user`]'s path for each, which handles both.
    async fn create_mirrors(&self, new: &[(&UserMirror, Option<Profile>)]) -> Result<Option<Vec<i64>>, StoreError> {
        let names: Vec<&str> = new.iter().map(|(m, _)| m.user.username.as_str()).collect();
        // Each user's groups: a new user has none to keep, so the mirror's (scoped) list.
        let wanted: Vec<BTreeSet<String>> =
            new.iter().map(|(m, _)| m.resulting_groups(std::iter::empty()).unwrap_or_default()).collect();
        let all_groups: BTreeSet<&str> = wanted.iter().flatten().map(String::as_str).collect();
        self.retrying(USER, || async {
            let mut tx = self.begin(USER).await?;
            let mut inserted = 0;
            for chunk in new.chunks(NAMES_CHUNK) {
                let mut qb = QueryBuilder::new(DB::INSERT_IGNORE);
                qb.push(" users ");
                push_user_insert(&mut qb, chunk.iter().map(|(m, _)| &m.user));
                qb.push(DB::ignore_conflict("username"));
                inserted += DB::rows_affected(&qb.build().execute(&mut *tx).await.map_err(err(USER))?);
            }
            if inserted != u64::try_from(new.len()).unwrap_or(u64::MAX) {
                return Ok(None); // dropping `tx` rolls back
            }
            let mut ids = BTreeMap::new();
            for chunk in names.chunks(NAMES_CHUNK) {
                let mut qb = QueryBuilder::new("SELECT id, username AS name FROM users WHERE username IN (");
                push_list(&mut qb, chunk.iter().map(|n| Some(*n)));
                qb.push(")");
                let rows = qb.build_query_as::<GroupRow>().fetch_all(&mut *tx).await.map_err(err(USER))?;
                ids.extend(rows.into_iter().map(|r| (r.name, r.id)));
            }
            let Some(ids) = names.iter().map(|n| ids.get(*n).copied()).collect::<Option<Vec<i64>>>() else {
                return Ok(None);
            };
            let profiles: Vec<(i64, &Profile)> =
                ids.iter().zip(new).filter_map(|(id, (_, p))| p.as_ref().map(|p| (*id, p))).collect();
            for chunk in profiles.chunks(NAMES_CHUNK) {
                let mut qb = QueryBuilder::new("INSERT INTO profiles ");
                push_profile_insert(&mut qb, chunk.iter().copied());
                qb.build().execute(&mut *tx).await.map_err(err(PROFILE))?;
            }
            let Some(group_ids) = Self::group_ids_by_name(&mut tx, &all_groups).await? else {
                return Ok(None);
            };
            let memberships: BTreeSet<(i64, i64)> = ids
                .iter()
                .zip(&wanted)
                .flat_map(|(id, groups)| groups.iter().filter_map(|g| group_ids.get(g.as_str())).map(|g| (*id, *g)))
                .collect();
            let memberships: Vec<(i64, i64)> = memberships.into_iter().collect();
            for chunk in memberships.chunks(NAMES_CHUNK) {
                let mut qb = QueryBuilder::new("INSERT INTO user_groups (user_id, group_id) ");
                qb.push_values(chunk, |mut row, (user, group)| {
                    row.push_bind(Some(*user)).push_bind(Some(*group));
                });
                qb.build().execute(&mut *tx).await.map_err(err(GROUP))?;
            }
            let records: Vec<HistoryRecord> = ids
                .iter()
                .zip(new)
                .zip(&wanted)
                .map(|((id, (mirror, profile)), groups)| {
                    let after = user_text(&mirror.user, None, profile.as_ref(), groups);
                    user_record(*id, Action::Create, mirror_actor(&mirror.user, self.actor()), None, Some(&after))
                })
                .collect();
            Self::write_history(&mut tx, &records, &new_correlation(), Utc::now()).await?;
            commit(tx, USER).await?;
            Ok(Some(ids))
        })
        .await
    }

    /// The ids of the groups named `names` by their exact name, creating the missing ones
    /// (insert-or-ignore, many a statement); `None` when a name matched a stored group only
    /// through the collation.
    async fn group_ids_by_name<'n>(
        conn: &mut DB::Connection,
        names: &BTreeSet<&'n str>,
    ) -> Result<Option<BTreeMap<&'n str, i64>>, StoreError> {
        let mut ids = BTreeMap::new();
        let chunks: Vec<BTreeSet<&str>> = names
            .iter()
            .copied()
            .collect::<Vec<_>>()
            .chunks(NAMES_CHUNK)
            .map(|c| c.iter().copied().collect())
            .collect();
        for chunk in &chunks {
            let found = Self::find_groups(conn, chunk, "").await?;
            let known: BTreeSet<&str> = found.iter().map(|g| g.name.as_str()).collect();
            let missing: BTreeSet<&str> = chunk.iter().copied().filter(|n| !known.contains(n)).collect();
            let mut rows = found;
            if !missing.is_empty() {
                rows.extend(Self::create_groups(conn, &missing).await?);
            }
            for name in chunk {
                match rows.iter().find(|g| g.name == *name) {
                    Some(g) => ids.insert(*name, g.id),
                    None => return Ok(None),
                };
            }
        }
        Ok(Some(ids))
    }

    /// One attempt of [`UserStore::mirror_user`]'s write path, in one transaction.
    ///
    /// A new user's row is inserted-or-ignored first, so racing first logins of one user meet
    /// in the unique index (one insert wins, the others see its row) instead of both inserting;
    /// then the row is locked, which serialises concurrent mirrors of the same user, and only
    /// what differs from the stored state (read again under the lock) is written. Group rows
    /// are only ever read, inserted or ignored, never locked for update, so mirrors of
    /// different users do not wait on each other.
    async fn write_mirror(
        &self,
        mirror: &UserMirror,
        profile: Option<&Profile>,
        known: bool,
    ) -> Result<Mirrored, StoreError> {
        let user = &mirror.user;
        let mut tx = self.begin(USER).await?;
        // A user seen a moment ago is locked straight away: inserting first would take a
        // shared lock on MySQL, and two of those upgrading to exclusive deadlock.
        let mut id = if known { Self::lock_user(&mut tx, &user.username).await? } else { None };
        let mut created = false;
        if id.is_none() {
            let mut qb = QueryBuilder::new(DB::INSERT_IGNORE);
            qb.push(" users ");
            push_user_insert(&mut qb, [user]);
            qb.push(DB::ignore_conflict("username"));
            let done = qb.build().execute(&mut *tx).await.map_err(err(USER))?;
            created = DB::rows_affected(&done) == 1;
            id = Self::lock_user(&mut tx, &user.username).await?;
        }
        let vanished = || StoreError::Corrupt { entity: USER, detail: format!("user {:?} vanished", user.username) };
        let id = id.ok_or_else(vanished)?;
        let stored = Self::stored_mirror(&mut tx, UserKey::Id(id)).await?.ok_or_else(vanished)?;
        if !created && let Some(refusal) = stored.refusal(mirror) {
            return Err(refusal);
        }
        let before = (!created).then(|| stored.text());
        let mut changed = false;
        if !created && (stored.user.value != *user || (user.source == UserSource::Ldap && stored.has_password)) {
            Self::write_user(&mut tx, id, user).await?;
            changed = true;
        }
        if let Some(profile) = profile
            && stored.profile.as_ref() != Some(profile)
        {
            Self::write_profile(&mut tx, id, profile, stored.profile.is_some()).await?;
            changed = true;
        }
        let wanted = stored.wanted_groups(mirror);
        if let Some(groups) = &wanted {
            let names = groups.iter().map(String::as_str).collect();
            changed |= Self::write_groups(&mut tx, id, &stored.group_ids, &names).await?;
        }
        if !created && !changed {
            // A concurrent mirror wrote the same thing first; nothing to commit.
            return Ok(Mirrored { id: Id::new(id), change: MirrorChange::Unchanged });
        }
        let password = (user.source == UserSource::Local && stored.has_password).then_some(PASSWORD_SET);
        let after = user_text(
            user,
            password,
            profile.or(stored.profile.as_ref()),
            wanted.as_ref().unwrap_or(&stored.group_names),
        );
        let action = if created { Action::Create } else { Action::Update };
        let record = user_record(id, action, mirror_actor(user, self.actor()), before.as_ref(), Some(&after));
        Self::write_history(&mut tx, &[record], &new_correlation(), Utc::now()).await?;
        commit(tx, USER).await?;
        let change = if created { MirrorChange::Created } else { MirrorChange::Updated };
        debug!(target: TRACE_TARGET, username = %user.username, source = user.source.as_str(), ?change, "user mirrored");
        Ok(Mirrored { id: Id::new(id), change })
    }
}

#[async_trait]
impl<DB> UserStore for SqlStore<DB>
where
    DB: Backend,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    for<'r> &'r str: ColumnIndex<DB::Row>,
    usize: ColumnIndex<DB::Row>,
    for<'q> Option<i64>: Encode<'q, DB> + Type<DB>,
    for<'q> Option<&'q str>: Encode<'q, DB> + Type<DB>,
    for<'q> Option<DateTime<Utc>>: Encode<'q, DB> + Type<DB>,
    for<'q> bool: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> i64: Decode<'q, DB> + Type<DB>,
    for<'q> i32: Decode<'q, DB> + Type<DB>,
    for<'q> String: Decode<'q, DB> + Type<DB>,
    for<'q> DateTime<Utc>: Decode<'q, DB> + Type<DB>,
    for<'q> Stamp: Decode<'q, DB> + Type<DB>,
{
    async fn create_user(&self, user: &User) -> Result<Id<User>, StoreError> {
        user.validate().map_err(invalid_user)?;
        self.retrying(USER, || async {
            let mut tx = self.begin(USER).await?;
            // A plain read, no lock: a locking read of a missing key takes a gap lock on MySQL,
            // which makes concurrent creations deadlock. The unique index settles a race.
            if Self::find_user_id(&mut tx, &user.username).await?.is_some() {
                return Err(StoreError::Conflict { entity: USER, constraint: "username".into() });
            }
            let mut qb = QueryBuilder::new("INSERT INTO users ");
            push_user_insert(&mut qb, [user]);
            let id = DB::insert_id(&mut tx, qb).await.map_err(err(USER))?;
            let after = user_text(user, None, None, &BTreeSet::new());
            let record = user_record(id, Action::Create, (self.actor().clone(), None), None, Some(&after));
            Self::write_history(&mut tx, &[record], &new_correlation(), Utc::now()).await?;
            commit(tx, USER).await?;
            debug!(target: TRACE_TARGET, entity = USER, id, "inserted");
            Ok(Id::new(id))
        })
        .await
    }

    async fn get_user(&self, username: &str) -> Result<Option<Record<User>>, StoreError> {
        let mut qb = QueryBuilder::new(format!("SELECT {USER_SELECT} FROM users u WHERE u.username = "));
        qb.push_bind(Some(username));
        let row = qb.build_query_as::<UserRow>().fetch_optional(self.pool()).await.map_err(err(USER))?;
        row.map(UserRow::into_record).transpose()
    }

    async fn update_user(&self, user: &User) -> Result<(), StoreError> {
        user.validate().map_err(invalid_user)?;
        self.retrying(USER, || async {
            let mut tx = self.begin(USER).await?;
            let id = Self::lock_user(&mut tx, &user.username).await?.ok_or_else(|| not_found(&user.username))?;
            let stored = Self::stored_for_history(&mut tx, id).await?;
            Self::write_user(&mut tx, id, user).await?;
            let password = (user.source == UserSource::Local && stored.as_ref().is_some_and(|s| s.has_password))
                .then_some(PASSWORD_SET);
            let after = user_text(
                user,
                password,
                stored.as_ref().and_then(|s| s.profile.as_ref()),
                stored.as_ref().map_or(&BTreeSet::new(), |s| &s.group_names),
            );
            let before = stored.as_ref().map(StoredMirror::text);
            let record = user_record(id, Action::Update, (self.actor().clone(), None), before.as_ref(), Some(&after));
            Self::write_history(&mut tx, &[record], &new_correlation(), Utc::now()).await?;
            commit(tx, USER).await
        })
        .await
    }

    async fn delete_user(&self, username: &str) -> Result<(), StoreError> {
        self.retrying(USER, || async {
            let mut tx = self.begin(USER).await?;
            let id = Self::lock_user(&mut tx, username).await?.ok_or_else(|| not_found(username))?;
            let before = Self::stored_for_history(&mut tx, id).await?.map(|s| s.text()).unwrap_or_default();
            let mut qb = QueryBuilder::new("DELETE FROM users WHERE id = ");
            qb.push_bind(Some(id));
            qb.build().execute(&mut *tx).await.map_err(err(USER))?;
            // The deleted account's last values, so that it can be told who it was.
            let record = user_record(id, Action::Delete, (self.actor().clone(), None), Some(&before), None);
            Self::write_history(&mut tx, &[record], &new_correlation(), Utc::now()).await?;
            commit(tx, USER).await
        })
        .await?;
        debug!(target: TRACE_TARGET, username, "user deleted");
        Ok(())
    }

    async fn list_users(&self, source: Option<UserSource>) -> Result<Vec<Record<User>>, StoreError> {
        let mut qb = QueryBuilder::new(format!("SELECT {USER_SELECT} FROM users u"));
        if let Some(source) = source {
            qb.push(" WHERE u.source = ").push_bind(Some(source.as_str()));
        }
        let rows = qb.build_query_as::<UserRow>().fetch_all(self.pool()).await.map_err(err(USER))?;
        let mut users = rows.into_iter().map(UserRow::into_record).collect::<Result<Vec<_>, _>>()?;
        // Sorted here, not by the database, so every backend's collation gives the same order.
        users.sort_by(|a, b| a.username.cmp(&b.username));
        Ok(users)
    }

    #[instrument(target = "ralph::store", skip_all)]
    async fn password_hash(&self, username: &str) -> Result<Option<String>, StoreError> {
        let mut qb = QueryBuilder::new("SELECT password_hash FROM users WHERE username = ");
        qb.push_bind(Some(username)).push(" AND source = ").push_bind(Some(UserSource::Local.as_str()));
        let hash = qb.build_query_scalar::<Option<String>>().fetch_optional(self.pool()).await.map_err(err(USER))?;
        Ok(hash.flatten())
    }

    #[instrument(target = "ralph::store", skip_all)]
    async fn set_password_hash(&self, username: &str, hash: Option<&str>) -> Result<(), StoreError> {
        self.retrying(USER, || async {
            let mut tx = self.begin(USER).await?;
            let mut qb = QueryBuilder::new("SELECT id, source, password_hash FROM users WHERE username = ");
            qb.push_bind(Some(username)).push(DB::FOR_UPDATE);
            let row = qb
                .build_query_as::<(i64, String, Option<String>)>()
                .fetch_optional(&mut *tx)
                .await
                .map_err(err(USER))?;
            let Some((id, source, old)) = row else { return Err(not_found(username)) };
            if hash.is_some() && UserSource::parse(&source).map_err(|e| corrupt(&e))? == UserSource::Ldap {
                return Err(invalid_user(ValidationError::Invalid {
                    field: "password",
                    reason: "an LDAP-owned account has no local password".into(),
                }));
            }
            let mut qb = QueryBuilder::new("UPDATE users SET password_hash = ");
            qb.push_bind(hash).push(" WHERE username = ").push_bind(Some(username));
            qb.build().execute(&mut *tx).await.map_err(err(USER))?;
            // Recorded as set, changed or removed; the hashes themselves never are.
            let (before, after) = (
                ColumnText(vec![("password_hash", old)]),
                ColumnText(vec![("password_hash", hash.map(str::to_owned))]),
            );
            let record = user_record(id, Action::Update, (self.actor().clone(), None), Some(&before), Some(&after));
            Self::write_history(&mut tx, &[record], &new_correlation(), Utc::now()).await?;
            commit(tx, USER).await
        })
        .await?;
        debug!(target: TRACE_TARGET, username, set = hash.is_some(), "password hash changed");
        Ok(())
    }

    async fn get_profile(&self, username: &str) -> Result<Option<Profile>, StoreError> {
        let mut qb = QueryBuilder::new(
            "SELECT p.company, p.manager, p.department, p.employee_id, p.location, p.country \
             FROM profiles p JOIN users u ON u.id = p.user_id WHERE u.username = ",
        );
        qb.push_bind(Some(username));
        let row = qb.build_query_as::<ProfileRow>().fetch_optional(self.pool()).await.map_err(err(PROFILE))?;
        row.map(ProfileRow::into_profile).transpose()
    }

    async fn set_profile(&self, username: &str, profile: &Profile) -> Result<(), StoreError> {
        let profile = &profile.clone().normalised().map_err(|e| StoreError::invalid(PROFILE, e))?;
        self.retrying(PROFILE, || async {
            let mut tx = self.begin(PROFILE).await?;
            let id = Self::lock_user(&mut tx, username).await?.ok_or_else(|| not_found(username))?;
            // Read under the user's row lock: nobody else adds the profile meanwhile.
            let stored = Self::stored_for_history(&mut tx, id).await?;
            let exists = match &stored {
                Some(stored) => stored.profile.is_some(),
                None => {
                    let mut qb = QueryBuilder::new("SELECT user_id FROM profiles WHERE user_id = ");
                    qb.push_bind(Some(id));
                    qb.build_query_scalar::<i64>().fetch_optional(&mut *tx).await.map_err(err(PROFILE))?.is_some()
                }
            };
            Self::write_profile(&mut tx, id, profile, exists).await?;
            let (mut before, mut after) = (ColumnText::default(), ColumnText::default());
            profile_text(stored.as_ref().and_then(|s| s.profile.as_ref()), &mut before);
            profile_text(Some(profile), &mut after);
            let record = user_record(id, Action::Update, (self.actor().clone(), None), Some(&before), Some(&after));
            Self::write_history(&mut tx, &[record], &new_correlation(), Utc::now()).await?;
            commit(tx, PROFILE).await
        })
        .await
    }

    async fn user_groups(&self, username: &str) -> Result<Vec<Group>, StoreError> {
        let mut qb = QueryBuilder::new(
            "SELECT g.name FROM auth_groups g JOIN user_groups ug ON ug.group_id = g.id \
             JOIN users u ON u.id = ug.user_id WHERE u.username = ",
        );
        qb.push_bind(Some(username));
        let names = qb.build_query_scalar::<String>().fetch_all(self.pool()).await.map_err(err(GROUP))?;
        let mut groups = names.iter().map(|n| Group::new(n).map_err(|e| corrupt(&e))).collect::<Result<Vec<_>, _>>()?;
        groups.sort();
        Ok(groups)
    }

    async fn set_user_groups(&self, username: &str, groups: &[Group]) -> Result<(), StoreError> {
        self.retrying(GROUP, || async {
            let mut tx = self.begin(GROUP).await?;
            let id = Self::lock_user(&mut tx, username).await?.ok_or_else(|| not_found(username))?;
            let stored = Self::stored_mirror(&mut tx, UserKey::Id(id)).await?.ok_or_else(|| not_found(username))?;
            let names = groups.iter().map(Group::as_str).collect();
            Self::write_groups(&mut tx, id, &stored.group_ids, &names).await?;
            let (mut before, mut after) = (ColumnText::default(), ColumnText::default());
            groups_text(&stored.group_names, &mut before);
            groups_text(&groups.iter().map(|g| g.as_str().to_owned()).collect(), &mut after);
            let record = user_record(id, Action::Update, (self.actor().clone(), None), Some(&before), Some(&after));
            Self::write_history(&mut tx, &[record], &new_correlation(), Utc::now()).await?;
            commit(tx, GROUP).await
        })
        .await
    }

    async fn mirror_user(&self, mirror: &UserMirror) -> Result<Mirrored, StoreError> {
        let user = &mirror.user;
        user.validate().map_err(invalid_user)?;
        let profile =
            mirror.profile.clone().map(Profile::normalised).transpose().map_err(|e| StoreError::invalid(PROFILE, e))?;
        // The common case, a user logging in again with nothing changed, is one read on a
        // pooled connection: no transaction, no lock, no write.
        let mut conn = self.acquire(USER).await?;
        let stored = Self::stored_mirror(&mut conn, UserKey::Name(&user.username)).await?;
        drop(conn);
        if let Some(stored) = &stored {
            if let Some(refusal) = stored.refusal(mirror) {
                return Err(refusal);
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
                let mut conn = self.acquire(USER).await?;
                Self::find_user_id(&mut conn, &user.username).await?.is_some()
            };
            self.write_mirror(mirror, profile, known).await
        })
        .await
    }

    /// One read finds the page's stored users (chunked under the bind-parameter limits); the
    /// unchanged ones are answered from it, the new ones are created together in one
    /// transaction (a first import), and only the others go through
    /// [`UserStore::mirror_user`]'s write path.
    async fn mirror_users(&self, mirrors: &[UserMirror]) -> Result<Vec<Result<Mirrored, StoreError>>, StoreError> {
        let mut stored = BTreeMap::new();
        let mut conn = self.acquire(USER).await?;
        for chunk in mirrors.chunks(NAMES_CHUNK) {
            let names: Vec<&str> = chunk.iter().map(|m| m.user.username.as_str()).collect();
            stored.extend(Self::stored_mirrors(&mut conn, UserKey::Names(&names)).await?);
        }
        drop(conn);
        // Users not stored yet, valid, first of their name in the page: created together.
        let mut seen = BTreeSet::new();
        let mut new = Vec::new();
        for (n, mirror) in mirrors.iter().enumerate() {
            let name = mirror.user.username.as_str();
            if stored.contains_key(name) || !seen.insert(name) || mirror.user.validate().is_err() {
                continue;
            }
            if let Ok(profile) = mirror.profile.clone().map(Profile::normalised).transpose() {
                new.push((n, (mirror, profile)));
            }
        }
        let mut created: BTreeMap<usize, i64> = BTreeMap::new();
        if !new.is_empty() {
            let batch: Vec<(&UserMirror, Option<Profile>)> = new.iter().map(|(_, m)| m.clone()).collect();
            match self.create_mirrors(&batch).await {
                Ok(Some(ids)) => created.extend(new.iter().map(|(n, _)| *n).zip(ids)),
                // Raced or collation-folded: each goes through `mirror_user` below.
                Ok(None) => {}
                // An error here is retried one by one, so that it stays with its user.
                Err(e) => debug!(target: TRACE_TARGET, error = %e, "bulk creation failed; mirroring one by one"),
            }
            if !created.is_empty() {
                debug!(target: TRACE_TARGET, users = created.len(), "users created in bulk");
            }
        }
        let mut results = Vec::with_capacity(mirrors.len());
        for (n, mirror) in mirrors.iter().enumerate() {
            if let Some(id) = created.get(&n) {
                results.push(Ok(Mirrored { id: Id::new(*id), change: MirrorChange::Created }));
                continue;
            }
            let unchanged = stored.get(&mirror.user.username).and_then(|s| {
                let profile = mirror.profile.clone().map(Profile::normalised).transpose().ok()?;
                (mirror.user.validate().is_ok() && s.refusal(mirror).is_none() && s.matches(mirror, profile.as_ref()))
                    .then_some(s.user.id)
            });
            results.push(match unchanged {
                Some(id) => Ok(Mirrored { id, change: MirrorChange::Unchanged }),
                None => self.mirror_user(mirror).await,
            });
        }
        Ok(results)
    }

    async fn deactivate_users(&self, usernames: &[String]) -> Result<u64, StoreError> {
        self.retrying(USER, || async {
            let mut changed = 0;
            // One transaction: all of them or (on an error) none of them.
            let mut tx = self.begin(USER).await?;
            // Chunks keep every statement far below each backend's bind-parameter limit.
            let correlation = new_correlation();
            for chunk in usernames.chunks(NAMES_CHUNK) {
                let mut qb = QueryBuilder::new("SELECT id FROM users WHERE is_active = ");
                qb.push_bind(true).push(" AND username IN (");
                push_list(&mut qb, chunk.iter().map(|u| Some(u.as_str())));
                qb.push(")").push(DB::FOR_UPDATE);
                let ids = qb.build_query_scalar::<i64>().fetch_all(&mut *tx).await.map_err(err(USER))?;
                if ids.is_empty() {
                    continue;
                }
                let mut qb = QueryBuilder::new("UPDATE users SET is_active = ");
                qb.push_bind(false).push(" WHERE is_active = ").push_bind(true).push(" AND id IN (");
                push_list(&mut qb, ids.iter().map(|id| Some(*id)));
                qb.push(")");
                let done = qb.build().execute(&mut *tx).await.map_err(err(USER))?;
                changed += DB::rows_affected(&done);
                let (before, after) = (
                    ColumnText(vec![("is_active", Some("true".into()))]),
                    ColumnText(vec![("is_active", Some("false".into()))]),
                );
                let records: Vec<HistoryRecord> = ids
                    .iter()
                    .map(|id| {
                        user_record(*id, Action::Update, (self.actor().clone(), None), Some(&before), Some(&after))
                    })
                    .collect();
                Self::write_history(&mut tx, &records, &correlation, Utc::now()).await?;
            }
            commit(tx, USER).await?;
            Ok(changed)
        })
        .await
    }
}
