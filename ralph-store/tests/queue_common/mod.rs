//! Shared by the queue, bulk, pool and utf8 tests: fresh databases per test, derived from the
//! `RALPH_TEST_*_URL` databases `scripts/test` creates (its teardown drops every database whose
//! name starts with theirs, so a crashed test leaves nothing behind).
#![allow(dead_code, unreachable_pub)]

use std::sync::atomic::{AtomicU32, Ordering};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// `base_tag_pid_n`, short enough for PostgreSQL's 63-byte names.
fn fresh_name(base: &str, tag: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let suffix = format!("_{}_{}_{n}", tag, std::process::id());
    let keep = 63usize.saturating_sub(suffix.len()).min(base.len());
    format!("{}{suffix}", &base[..keep])
}

/// Splits `scheme://host/db?x` into (`scheme://host/`, `db`, `?x`).
fn split_url(url: &str) -> (String, String, String) {
    let (head, query) = match url.split_once('?') {
        Some((h, q)) => (h.to_owned(), format!("?{q}")),
        None => (url.to_owned(), String::new()),
    };
    let cut = head.rfind('/').map_or(head.len(), |i| i + 1);
    (head[..cut].to_owned(), head[cut..].to_owned(), query)
}

/// A database created for one test; `drop_db` removes it (teardown does it anyway).
pub struct FreshDb {
    /// Its URL.
    pub url: String,
    /// Its name.
    pub name: String,
    admin_url: String,
}

#[cfg(feature = "postgres")]
pub mod pg {
    use super::*;
    use sqlx::postgres::{PgPool, PgPoolOptions};

    /// A fresh PostgreSQL database, or `None` (skip) when the service is missing outside CI.
    pub async fn fresh(tag: &str) -> Option<FreshDb> {
        let url = ralph_testkit::service("RALPH_TEST_PG_URL")?;
        let (prefix, base, query) = split_url(&url);
        let name = fresh_name(&base, tag);
        let admin = PgPoolOptions::new().max_connections(1).connect(&url).await.expect("connect to PostgreSQL");
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\" ENCODING 'UTF8' TEMPLATE template0")))
            .execute(&admin)
            .await
            .expect("create database");
        admin.close().await;
        Some(FreshDb { url: format!("{prefix}{name}{query}"), name, admin_url: url })
    }

    /// A pool on it.
    pub async fn pool(db: &FreshDb, max: u32) -> PgPool {
        PgPoolOptions::new().max_connections(max).connect(&db.url).await.expect("connect")
    }

    /// Drops it (forcing out any connection left).
    pub async fn drop_db(db: FreshDb) {
        let admin = PgPoolOptions::new().max_connections(1).connect(&db.admin_url).await.expect("connect");
        let _ = sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", db.name)))
            .execute(&admin)
            .await;
        admin.close().await;
    }
}

#[cfg(feature = "mysql")]
pub mod my {
    use super::*;
    use sqlx::mysql::{MySqlPool, MySqlPoolOptions};

    /// A fresh MariaDB/MySQL database (utf8mb4), or `None` (skip) when the service is missing
    /// outside CI.
    pub async fn fresh(tag: &str) -> Option<FreshDb> {
        let url = ralph_testkit::service("RALPH_TEST_MYSQL_URL")?;
        let (prefix, base, query) = split_url(&url);
        let name = fresh_name(&base, tag);
        let admin = MySqlPoolOptions::new().max_connections(1).connect(&url).await.expect("connect to MySQL");
        let collation = ralph_store::MYSQL_COLLATION;
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE {collation}"
        )))
        .execute(&admin)
        .await
        .expect("create database");
        admin.close().await;
        Some(FreshDb { url: format!("{prefix}{name}{query}"), name, admin_url: url })
    }

    /// A pool on it.
    pub async fn pool(db: &FreshDb, max: u32) -> MySqlPool {
        MySqlPoolOptions::new().max_connections(max).connect(&db.url).await.expect("connect")
    }

    /// Drops it.
    pub async fn drop_db(db: FreshDb) {
        let admin = MySqlPoolOptions::new().max_connections(1).connect(&db.admin_url).await.expect("connect");
        let _ =
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS `{}`", db.name))).execute(&admin).await;
        admin.close().await;
    }
}

#[cfg(feature = "sqlite")]
pub mod lite {
    use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};

    /// A pool on a fresh SQLite file in a temporary directory (kept alive by the returned guard).
    pub async fn pool(max: u32) -> (SqlitePool, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("tempdir");
        let options = SqliteConnectOptions::new()
            .filename(dir.path().join("store.db"))
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(std::time::Duration::from_secs(30));
        let pool = SqlitePoolOptions::new().max_connections(max).connect_with(options).await.expect("open sqlite");
        (pool, dir)
    }
}
