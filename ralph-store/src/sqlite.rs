//! SQLite connection settings: WAL, foreign keys, busy timeout, create-if-missing.

use std::str::FromStr;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqliteSynchronous};

use crate::PoolConfig;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// Applies pending migrations (SQLite runs one writer at a time).
pub(crate) async fn migrate(pool: &sqlx::Pool<sqlx::Sqlite>) -> Result<(), sqlx::migrate::MigrateError> {
    MIGRATOR.run(pool).await
}

/// Opens the pool. An in-memory database lives in one connection, so its pool holds exactly
/// one that never expires; a file gets WAL so readers never block the writer.
pub(crate) async fn open(url: &str, config: &PoolConfig) -> Result<SqlitePool, sqlx::Error> {
    let options = SqliteConnectOptions::from_str(url)?
        .create_if_missing(true)
        .foreign_keys(true)
        .busy_timeout(config.busy_timeout)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal);
    let in_memory = url.contains(":memory:") || url.contains("mode=memory");
    let config = if in_memory {
        config.clone().max_connections(1).min_connections(1).idle_timeout(None).max_lifetime(None)
    } else {
        config.clone()
    };
    config.pool_options().connect_with(options).await
}
