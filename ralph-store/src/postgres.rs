//! PostgreSQL connection settings.

use std::str::FromStr;

use sqlx::postgres::{PgConnectOptions, PgPool};

use crate::PoolConfig;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// Applies pending migrations (sqlx holds an advisory lock meanwhile).
pub(crate) async fn migrate(pool: &sqlx::Pool<sqlx::Postgres>) -> Result<(), sqlx::migrate::MigrateError> {
    MIGRATOR.run(pool).await
}

/// Opens the pool; the server tells `pg_stat_activity` who we are.
pub(crate) async fn open(url: &str, config: &PoolConfig) -> Result<PgPool, sqlx::Error> {
    let options = PgConnectOptions::from_str(url)?.application_name("ralph-rs");
    config.pool_options().connect_with(options).await
}
