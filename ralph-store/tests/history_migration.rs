//! A database whose change history was written before field changes moved into the history
//! row itself (migration 0205) keeps every change: the migration carries the old
//! `change_history_fields` rows over, and the store reads them back, sorted by field, on SQLite,
//! PostgreSQL and MariaDB.

mod store_common;

use std::path::Path;

use ralph_core::history::{FieldChange, HistoryStore};
use ralph_store::AnyStore;
use ralph_store::sqlx::migrate::Migrator;
use ralph_store::sqlx::{self, Connection as _};

/// The last migration before the changes moved.
const BEFORE_INLINE: i64 = 204;

/// Applies `backend`'s migrations up to [`BEFORE_INLINE`] over `conn` and writes two history
/// rows as that layout held them: one with three fields (written out of order, one of them
/// 2 MiB long), one with none.
macro_rules! old_layout {
    ($conn:ty, $url:expr, $backend:expr, $at:expr, $placeholder:expr) => {{
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations").join($backend);
        let migrator = Migrator::new(dir).await.expect("migrations");
        let mut conn = <$conn>::connect($url).await.expect("connect");
        migrator.run_direct(Some(BEFORE_INLINE), &mut conn, false).await.expect("older migrations");
        for sql in [
            format!(
                "INSERT INTO change_history (id, object_type, object_id, action, actor_kind, actor, at, correlation) \
                 VALUES (7, 'device', 41, 'update', 'user', 'ann', {}, 'c-1')",
                $at
            ),
            format!(
                "INSERT INTO change_history (id, object_type, object_id, action, actor_kind, actor, at, correlation) \
                 VALUES (8, 'device', 42, 'delete', 'system', 'ralph', {}, 'c-2')",
                $at
            ),
            "INSERT INTO change_history_fields (history_id, field, before_value, after_value) \
             VALUES (7, 'status', 'new', NULL)"
                .to_owned(),
            "INSERT INTO change_history_fields (history_id, field, before_value, after_value) \
             VALUES (7, 'hostname', NULL, 'db-1 \"primary\"')"
                .to_owned(),
        ] {
            sqlx::query(sqlx::AssertSqlSafe(sql.as_str())).execute(&mut conn).await.expect("old rows");
        }
        // A value longer than MariaDB's default cap on what JSON_ARRAYAGG returns (1 MiB).
        let sql = format!(
            "INSERT INTO change_history_fields (history_id, field, before_value, after_value) \
             VALUES (7, 'payload', {}, NULL)",
            $placeholder
        );
        sqlx::query(sqlx::AssertSqlSafe(sql.as_str())).bind(long_value()).execute(&mut conn).await.expect("long value");
        conn.close().await.expect("close");
    }};
}

/// A 2 MiB value.
fn long_value() -> String {
    "p".repeat(2 << 20)
}

async fn old_history_survives(url: &str) {
    let store = AnyStore::connect(url).await.expect("connect runs the rest");
    let history = store.object_history("device", 41, 10).await.expect("history");
    assert_eq!(history.len(), 1, "{history:?}");
    assert_eq!(
        history[0].record.changes,
        vec![
            FieldChange::new("hostname", None, Some("db-1 \"primary\"")),
            FieldChange::new("payload", Some(&long_value()), None),
            FieldChange::new("status", Some("new"), None)
        ]
    );
    let field = store.field_history("device", 41, "status", 10).await.expect("field history");
    assert_eq!(field.len(), 1);
    assert_eq!(field[0].record.changes, vec![FieldChange::new("status", Some("new"), None)]);
    let deleted = store.deleted_objects("device", 10).await.expect("deletions");
    assert_eq!(deleted.len(), 1);
    assert!(deleted[0].record.changes.is_empty());
    assert_eq!(deleted[0].record.object_id, 42);
    store.close().await;
}

#[cfg(feature = "sqlite")]
#[tokio::test]
async fn sqlite_old_history_survives_the_move() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("old.sqlite3");
    std::fs::File::create(&path).expect("file");
    let url = format!("sqlite://{}", path.display());
    old_layout!(sqlx::SqliteConnection, &url, "sqlite", "'2026-01-02T03:04:05+00:00'", "?");
    old_history_survives(&url).await;
}

#[cfg(feature = "postgres")]
#[tokio::test]
async fn pg_old_history_survives_the_move() {
    let base = ralph_testkit::require!("RALPH_TEST_PG_URL");
    let url = store_common::fresh_postgres(&base, "history_migration").await;
    old_layout!(sqlx::PgConnection, &url, "postgres", "'2026-01-02T03:04:05+00:00'", "$1");
    old_history_survives(&url).await;
}

#[cfg(feature = "mysql")]
#[tokio::test]
async fn mysql_old_history_survives_the_move() {
    let base = ralph_testkit::require!("RALPH_TEST_MYSQL_URL");
    let url = store_common::fresh_mysql(&base, "history_migration").await;
    old_layout!(sqlx::MySqlConnection, &url, "mysql", "'2026-01-02 03:04:05'", "?");
    old_history_survives(&url).await;
}
