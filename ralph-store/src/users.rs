//! [`UserStore`]: users, profiles, groups and local password hashes, once for all backends.

use std::collections::BTreeSet;

use async_trait::async_trait;
use ralph_core::{
    CountryCode, Group, Id, Profile, Record, StoreError, User, UserMirror, UserSource, UserStore, ValidationError,
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

async fn user_id<DB: Backend>(conn: &mut DB::Connection, username: &str) -> Result<Option<i64>, StoreError> {
    fetch_id::<DB>(conn, USER, "SELECT id FROM users WHERE username = ?", &[username.into()]).await
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

async fn insert_user<DB: Backend>(conn: &mut DB::Connection, user: &User) -> Result<i64, StoreError> {
    let columns: Vec<&str> = USER_COLUMNS.split(", ").skip(1).collect();
    insert::<DB>(conn, USER, "users", &columns, &user_values(user)).await
}

async fn write_profile<DB: Backend>(conn: &mut DB::Connection, id: i64, profile: &Profile) -> Result<(), StoreError> {
    let set = PROFILE_FIELDS.iter().map(|f| format!("{f} = ?")).collect::<Vec<_>>().join(", ");
    let mut args = profile_values(profile);
    args.push(id.into());
    let updated =
        execute::<DB>(conn, "profile", &format!("UPDATE profiles SET {set} WHERE user_id = ?"), &args).await?;
    if updated == 0 {
        let marks = vec!["?"; PROFILE_FIELDS.len() + 1].join(", ");
        let sql = format!("INSERT INTO profiles (user_id, {}) VALUES ({marks})", PROFILE_FIELDS.join(", "));
        let mut args = vec![id.into()];
        args.extend(profile_values(profile));
        execute::<DB>(conn, "profile", &sql, &args).await?;
    }
    Ok(())
}

/// Replaces the memberships of `id` with `groups`, creating missing groups.
async fn write_groups<DB: Backend>(conn: &mut DB::Connection, id: i64, groups: &[Group]) -> Result<(), StoreError> {
    execute::<DB>(conn, "group", "DELETE FROM user_groups WHERE user_id = ?", &[id.into()]).await?;
    let names: BTreeSet<&str> = groups.iter().map(Group::as_str).collect();
    let create = DB::DIALECT.insert_ignore("auth_groups", "name", "name");
    for name in names {
        execute::<DB>(conn, "group", &create, &[name.into()]).await?;
        let group =
            fetch_id::<DB>(conn, "group", "SELECT id FROM auth_groups WHERE name = ?", &[name.into()])
                .await?
                .ok_or_else(|| StoreError::Corrupt { entity: "group", detail: format!("group {name:?} vanished") })?;
        // A collation that folds case or accents may map two names onto one group: skip repeats.
        let member = fetch_id::<DB>(
            conn,
            "group",
            "SELECT group_id FROM user_groups WHERE user_id = ? AND group_id = ?",
            &[id.into(), group.into()],
        )
        .await?;
        if member.is_none() {
            execute::<DB>(
                conn,
                "group",
                "INSERT INTO user_groups (user_id, group_id) VALUES (?, ?)",
                &[id.into(), group.into()],
            )
            .await?;
        }
    }
    Ok(())
}

#[async_trait]
impl<DB: Backend> UserStore for SqlStore<DB> {
    async fn create_user(&self, user: &User) -> Result<Id<User>, StoreError> {
        user.validate().map_err(invalid_user)?;
        let mut tx = self.begin(USER).await?;
        if user_id::<DB>(&mut tx, &user.username).await?.is_some() {
            return Err(StoreError::Conflict { entity: USER, constraint: "username".into() });
        }
        let id = insert_user::<DB>(&mut tx, user).await?;
        commit(tx, USER).await?;
        Ok(Id::new(id))
    }

    async fn get_user(&self, username: &str) -> Result<Option<Record<User>>, StoreError> {
        let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE username = ?");
        let rows = self.read(USER, &sql, &[username.into()], USER_KINDS).await?;
        rows.into_iter().next().map(|mut row| decode_user(&mut row)).transpose()
    }

    async fn update_user(&self, user: &User) -> Result<(), StoreError> {
        user.validate().map_err(invalid_user)?;
        let mut tx = self.begin(USER).await?;
        let id = user_id::<DB>(&mut tx, &user.username).await?.ok_or_else(|| not_found(&user.username))?;
        write_user::<DB>(&mut tx, id, user).await?;
        commit(tx, USER).await
    }

    async fn delete_user(&self, username: &str) -> Result<(), StoreError> {
        if self.run(USER, "DELETE FROM users WHERE username = ?", &[username.into()]).await? == 0 {
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
        commit(tx, USER).await?;
        debug!(target: TRACE_TARGET, username, set = hash.is_some(), "password hash changed");
        Ok(())
    }

    async fn get_profile(&self, username: &str) -> Result<Option<Profile>, StoreError> {
        let sql = format!(
            "SELECT {} FROM profiles p JOIN users u ON u.id = p.user_id WHERE u.username = ?",
            PROFILE_FIELDS.map(|f| format!("p.{f}")).join(", ")
        );
        let rows = self.read("profile", &sql, &[username.into()], &[Kind::Text; 6]).await?;
        let Some(mut row) = rows.into_iter().next() else { return Ok(None) };
        Ok(Some(Profile {
            company: row.opt_text()?,
            manager: row.opt_text()?,
            department: row.opt_text()?,
            employee_id: row.opt_text()?,
            location: row.opt_text()?,
            country: row.parse_opt(CountryCode::parse)?,
        }))
    }

    async fn set_profile(&self, username: &str, profile: &Profile) -> Result<(), StoreError> {
        let profile = profile.clone().normalised().map_err(|e| StoreError::invalid("profile", e))?;
        let mut tx = self.begin("profile").await?;
        let id = user_id::<DB>(&mut tx, username).await?.ok_or_else(|| not_found(username))?;
        write_profile::<DB>(&mut tx, id, &profile).await?;
        commit(tx, "profile").await
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
        let mut tx = self.begin("group").await?;
        let id = user_id::<DB>(&mut tx, username).await?.ok_or_else(|| not_found(username))?;
        write_groups::<DB>(&mut tx, id, groups).await?;
        commit(tx, "group").await
    }

    async fn mirror_user(&self, mirror: &UserMirror) -> Result<Id<User>, StoreError> {
        let user = &mirror.user;
        user.validate().map_err(invalid_user)?;
        let profile = mirror
            .profile
            .clone()
            .map(Profile::normalised)
            .transpose()
            .map_err(|e| StoreError::invalid("profile", e))?;
        let mut tx = self.begin(USER).await?;
        let stored = fetch::<DB>(
            &mut tx,
            USER,
            "SELECT id, source FROM users WHERE username = ?",
            &[user.username.as_str().into()],
            &[Kind::Int, Kind::Text],
        )
        .await?;
        let id = match stored.into_iter().next() {
            Some(mut row) => {
                let id = row.int()?;
                // A directory account never takes over a local one of the same name: the local
                // account (and its password, the way in while LDAP is down) stays as it is.
                if user.source == UserSource::Ldap && row.parse(UserSource::parse)? == UserSource::Local {
                    debug!(target: TRACE_TARGET, username = %user.username, "mirror refused: local account");
                    return Err(StoreError::Conflict { entity: USER, constraint: "local account".into() });
                }
                write_user::<DB>(&mut tx, id, user).await?;
                id
            }
            None => insert_user::<DB>(&mut tx, user).await?,
        };
        if let Some(profile) = &profile {
            write_profile::<DB>(&mut tx, id, profile).await?;
        }
        if let Some(groups) = &mirror.groups {
            write_groups::<DB>(&mut tx, id, groups).await?;
        }
        commit(tx, USER).await?;
        debug!(target: TRACE_TARGET, username = %user.username, source = user.source.as_str(), "user mirrored");
        Ok(Id::new(id))
    }

    async fn deactivate_users(&self, usernames: &[String]) -> Result<u64, StoreError> {
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
    }
}
