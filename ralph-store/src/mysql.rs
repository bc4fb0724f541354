//! MySQL/MariaDB connection settings: utf8mb4 on every connection.

use std::str::FromStr;

use sqlx::mysql::{MySqlConnectOptions, MySqlPool};

use crate::PoolConfig;

pub(crate) static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/mysql");

/// The collation of every table and connection: utf8mb4 with UCA 5.2.0 weights, which (unlike
/// `utf8mb4_unicode_ci`) tells emoji and other characters outside the BMP apart, and exists on
/// MySQL 5.6+ and every MariaDB.
pub const COLLATION: &str = "utf8mb4_unicode_520_ci";

/// Opens the pool with `SET NAMES utf8mb4` on every connection.
pub(crate) async fn open(url: &str, config: &PoolConfig) -> Result<MySqlPool, sqlx::Error> {
    let options = MySqlConnectOptions::from_str(url)?.charset("utf8mb4").collation(COLLATION);
    config.pool_options().connect_with(options).await
}
