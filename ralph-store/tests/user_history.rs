//! Every user write is on record, on SQLite, PostgreSQL and MariaDB: a directory mirror as
//! the source `ldap`, a person's writes as the handle's actor, only what changed, the password
//! only as set or changed (never a hash), a bulk import under one correlation id, and a deleted
//! account's last values.

mod store_common;

use ralph_core::history::{Action, Actor, ActorKind, HistoryEntry, HistoryStore};
use ralph_core::{CountryCode, Group, MirrorChange, Profile, User, UserMirror, UserSource, UserStore};
use ralph_store::AnyStore;

/// One field's change as (field, before, after).
type Change<'a> = (&'a str, Option<&'a str>, Option<&'a str>);

/// The changes of `entry`.
fn changes(entry: &HistoryEntry) -> Vec<Change<'_>> {
    entry.record.changes.iter().map(|c| (c.field.as_str(), c.before.as_deref(), c.after.as_deref())).collect()
}

fn ldap_mirror(name: &str, last: &str, groups: &[&str]) -> UserMirror {
    let user = User {
        source: UserSource::Ldap,
        directory: Some("corp".into()),
        last_name: last.into(),
        ..User::new(name).expect("user")
    };
    UserMirror {
        user,
        profile: Some(Profile {
            department: Some("Ops".into()),
            country: Some(CountryCode::parse("PL").expect("country")),
            ..Profile::default()
        }),
        groups: Some(groups.iter().map(|g| Group::new(g).expect("group")).collect()),
        group_scope: Default::default(),
    }
}

async fn user_writes_are_recorded(store: &AnyStore) {
    // A first login mirrors the account: one create, by the directory.
    let first = store.mirror_user(&ldap_mirror("hist-ann", "Nowak", &["staff", "ops"])).await.expect("mirror");
    assert_eq!(first.change, MirrorChange::Created);
    let id = first.id.get();
    let history = store.object_history("user", id, 10).await.expect("history");
    assert_eq!(history.len(), 1, "{history:?}");
    let created = &history[0];
    assert_eq!((created.record.action, &created.record.actor), (Action::Create, &Actor::source("ldap")));
    assert_eq!(created.record.message.as_deref(), Some("directory corp"));
    let fields = changes(created);
    for expected in [
        ("username", None, Some("hist-ann")),
        ("last_name", None, Some("Nowak")),
        ("source", None, Some("ldap")),
        ("profile.department", None, Some("Ops")),
        ("profile.country", None, Some("PL")),
        ("groups", None, Some("ops, staff")),
    ] {
        assert!(fields.contains(&expected), "{expected:?} missing from {fields:?}");
    }

    // The same login again writes nothing; a changed name and group list writes only those.
    assert_eq!(
        store.mirror_user(&ldap_mirror("hist-ann", "Nowak", &["staff", "ops"])).await.expect("again").change,
        MirrorChange::Unchanged
    );
    assert_eq!(store.object_history("user", id, 10).await.expect("history").len(), 1, "no record of nothing");
    store.mirror_user(&ldap_mirror("hist-ann", "Nowak-Kowalska", &["staff"])).await.expect("changed");
    let history = store.object_history("user", id, 10).await.expect("history");
    assert_eq!(history.len(), 2);
    assert_eq!(history[0].record.action, Action::Update);
    assert_eq!(
        changes(&history[0]),
        [("groups", Some("ops, staff"), Some("staff")), ("last_name", Some("Nowak"), Some("Nowak-Kowalska"))]
    );
    // "When did the surname change": the field's own history.
    let surname = store.field_history("user", id, "last_name", 10).await.expect("field");
    assert_eq!(surname.len(), 2);
    // What the account was at a time: before its creation, as created, now.
    let (created_at, renamed_at) = (history[1].at, history[0].at);
    let before = store.object_at("user", id, created_at - chrono::Duration::microseconds(1)).await.expect("at");
    assert!(!before.existed && before.fields.is_empty());
    let then = store.object_at("user", id, created_at).await.expect("at");
    assert!(then.existed && then.complete, "{then:?}");
    assert_eq!(then.fields.get("last_name").map(String::as_str), Some("Nowak"));
    assert_eq!(then.fields.get("groups").map(String::as_str), Some("ops, staff"));
    let now = store.object_at("user", id, renamed_at).await.expect("at");
    assert_eq!(now.fields.get("last_name").map(String::as_str), Some("Nowak-Kowalska"));
    assert_eq!(now.fields.get("groups").map(String::as_str), Some("staff"));
    assert_eq!(now.fields.get("profile.country").map(String::as_str), Some("PL"), "unchanged fields carry over");

    // A person's writes, through a handle acting as that person.
    let jan = store.acting_as(Actor::user("jan"));
    let local = User { first_name: "Bob".into(), ..User::new("hist-bob").expect("user") };
    let bob = jan.create_user(&local).await.expect("create").get();
    jan.set_password_hash("hist-bob", Some("$argon2id$v=19$first-hash")).await.expect("password");
    jan.set_password_hash("hist-bob", Some("$argon2id$v=19$second-hash")).await.expect("password again");
    jan.set_profile("hist-bob", &Profile { company: Some("ACME".into()), ..Profile::default() })
        .await
        .expect("profile");
    jan.set_user_groups("hist-bob", &[Group::new("admins").expect("group")]).await.expect("groups");
    jan.update_user(&User { is_staff: true, ..local.clone() }).await.expect("update");
    assert_eq!(jan.deactivate_users(&["hist-bob".into(), "nobody".into()]).await.expect("deactivate"), 1);
    let history = store.object_history("user", bob, 20).await.expect("history");
    let seen: Vec<(Action, Vec<Change<'_>>)> = history.iter().rev().map(|e| (e.record.action, changes(e))).collect();
    assert_eq!(seen[0].0, Action::Create);
    assert_eq!(
        seen[1..],
        [
            (Action::Update, vec![("password_hash", None, Some("(secret)"))]),
            (Action::Update, vec![("password_hash", Some("(secret)"), Some("(secret, changed)"))]),
            (Action::Update, vec![("profile.company", None, Some("ACME"))]),
            (Action::Update, vec![("groups", None, Some("admins"))]),
            (Action::Update, vec![("is_staff", Some("false"), Some("true"))]),
            (Action::Update, vec![("is_active", Some("true"), Some("false"))]),
        ]
    );
    assert!(history.iter().all(|e| e.record.actor == Actor::user("jan")), "{history:?}");
    let text = format!("{history:?}");
    assert!(!text.contains("first-hash"), "a hash is on record");
    assert!(!text.contains("second-hash"), "a hash is on record");

    // A deleted account's last values stay on record.
    jan.delete_user("hist-bob").await.expect("delete");
    let gone = store.deleted_objects("user", 10).await.expect("deleted");
    assert_eq!(gone.len(), 1);
    let last = changes(&gone[0]);
    for expected in [
        ("username", Some("hist-bob"), None),
        ("is_staff", Some("true"), None),
        ("profile.company", Some("ACME"), None),
        ("groups", Some("admins"), None),
        ("password_hash", Some("(secret)"), None),
    ] {
        assert!(last.contains(&expected), "{expected:?} missing from {last:?}");
    }
    assert_eq!(gone[0].record.actor.kind, ActorKind::User);
    let after = store.object_at("user", bob, gone[0].at).await.expect("at");
    assert!(!after.existed && after.complete && after.fields.is_empty(), "{after:?}");
    let last_day = store.object_at("user", bob, gone[0].at - chrono::Duration::microseconds(1)).await.expect("at");
    assert!(last_day.existed, "{last_day:?}");
    assert_eq!(last_day.fields.get("is_active").map(String::as_str), Some("false"));
    assert_eq!(last_day.fields.get("profile.company").map(String::as_str), Some("ACME"));

    // A first import: every new user created in bulk, each recorded, under one correlation.
    let page: Vec<UserMirror> =
        (0..30).map(|i| ldap_mirror(&format!("hist-bulk-{i:02}"), "Bulk", &["staff"])).collect();
    let results = store.mirror_users(&page).await.expect("page");
    let ids: Vec<i64> = results.iter().map(|r| r.as_ref().expect("mirrored").id.get()).collect();
    let mut correlations = std::collections::BTreeSet::new();
    for id in &ids {
        let history = store.object_history("user", *id, 10).await.expect("history");
        assert_eq!(history.len(), 1, "user {id}: {history:?}");
        assert_eq!(history[0].record.action, Action::Create);
        correlations.insert(history[0].correlation.clone());
    }
    assert_eq!(correlations.len(), 1, "one import, one correlation id");
    let together = store.correlated(correlations.first().expect("one")).await.expect("correlated");
    assert_eq!(together.len(), 30);
}

#[cfg(feature = "sqlite")]
#[tokio::test]
async fn sqlite_user_writes_are_recorded() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("users.sqlite3").display());
    user_writes_are_recorded(&AnyStore::connect(&url).await.expect("connect")).await;
}

/// A user whose stored row no longer parses (a country code the validator does not know) can
/// still be fixed and deleted: the writes go on, recorded without the unreadable old values.
#[cfg(feature = "sqlite")]
#[tokio::test]
async fn sqlite_unreadable_user_can_be_fixed_and_deleted() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("users.sqlite3").display());
    let store = AnyStore::connect(&url).await.expect("connect");
    let id = store.create_user(&User::new("hist-odd").expect("user")).await.expect("create").get();
    let pl = Profile { country: Some(CountryCode::parse("PL").expect("country")), ..Profile::default() };
    store.set_profile("hist-odd", &pl).await.expect("profile");
    let raw = ralph_store::sqlx::SqlitePool::connect(&url).await.expect("raw");
    ralph_store::sqlx::query("UPDATE profiles SET country = 'XX'").execute(&raw).await.expect("corrupt");
    assert!(store.get_profile("hist-odd").await.is_err_and(|e| matches!(e, ralph_core::StoreError::Corrupt { .. })));
    let de = Profile { country: Some(CountryCode::parse("DE").expect("country")), ..Profile::default() };
    store.set_profile("hist-odd", &de).await.expect("a fix is not refused");
    assert_eq!(store.get_profile("hist-odd").await.expect("readable again"), Some(de));
    ralph_store::sqlx::query("UPDATE profiles SET country = 'XX'").execute(&raw).await.expect("corrupt again");
    store
        .update_user(&User { first_name: "Odd".into(), ..User::new("hist-odd").expect("user") })
        .await
        .expect("update");
    store.delete_user("hist-odd").await.expect("delete");
    let history = store.object_history("user", id, 10).await.expect("history");
    assert_eq!(history.first().map(|e| e.record.action), Some(Action::Delete), "{history:?}");
}

#[cfg(feature = "postgres")]
#[tokio::test]
async fn pg_user_writes_are_recorded() {
    let base = ralph_testkit::require!("RALPH_TEST_PG_URL");
    let url = store_common::fresh_postgres(&base, "user_history").await;
    user_writes_are_recorded(&AnyStore::connect(&url).await.expect("connect")).await;
}

#[cfg(feature = "mysql")]
#[tokio::test]
async fn mysql_user_writes_are_recorded() {
    let base = ralph_testkit::require!("RALPH_TEST_MYSQL_URL");
    let url = store_common::fresh_mysql(&base, "user_history").await;
    user_writes_are_recorded(&AnyStore::connect(&url).await.expect("connect")).await;
}
