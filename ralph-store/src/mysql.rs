//! MySQL/MariaDB connection settings: utf8mb4 on every connection.

use std::str::FromStr;

use sqlx::migrate::MigrateError;
use sqlx::mysql::{MySqlConnectOptions, MySqlPool};

use crate::PoolConfig;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/mysql");

/// How long a process waits for another one's migrations before giving up.
const MIGRATION_LOCK_SECS: i64 = 600;

/// The collation of every table and connection: utf8mb4 with UCA 5.2.0 weights, which (unlike
/// `utf8mb4_unicode_ci`) tells emoji and other characters outside the BMP apart, and exists on
/// MySQL 5.6+ and every MariaDB.
pub const COLLATION: &str = "utf8mb4_unicode_520_ci";

/// Opens the pool with `SET NAMES utf8mb4` on every connection.
pub(crate) async fn open(url: &str, config: &PoolConfig) -> Result<MySqlPool, sqlx::Error> {
    let options = MySqlConnectOptions::from_str(url)?.charset("utf8mb4").collation(COLLATION);
    config.pool_options().connect_with(options).await
}

/// Applies pending migrations under a named lock held by this connection.
///
/// sqlx's own MySQL lock asks `GET_LOCK(name, -1)`, which MariaDB answers with NULL at once
/// instead of waiting, so two processes starting together would both migrate. This lock waits
/// (with a positive time-out) and its result is checked.
pub(crate) async fn migrate(pool: &MySqlPool) -> Result<(), MigrateError> {
    let mut conn = pool.acquire().await?;
    let name: String =
        sqlx::query_scalar("SELECT CONCAT('ralph_store_migrate.', DATABASE())").fetch_one(&mut *conn).await?;
    let got: Option<i64> =
        sqlx::query_scalar("SELECT GET_LOCK(?, ?)").bind(&name).bind(MIGRATION_LOCK_SECS).fetch_one(&mut *conn).await?;
    if got != Some(1) {
        return Err(MigrateError::Execute(sqlx::Error::Protocol(format!(
            "could not take the migration lock {name} within {MIGRATION_LOCK_SECS} s"
        ))));
    }
    // `run_direct` on the locked connection itself: `run(&mut conn)` trips a higher-ranked
    // lifetime error in an async-trait future (sqlx documents `run_direct` for this).
    let result = MIGRATOR.run_direct(&mut *conn).await;
    let released = sqlx::query("SELECT RELEASE_LOCK(?)").bind(&name).execute(&mut *conn).await;
    result?;
    released.map(drop).map_err(MigrateError::from)
}
