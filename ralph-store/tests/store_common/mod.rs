//! Helpers for the store's integration tests.
//!
//! Fresh databases: `<base>_<suffix>` on the server of the `RALPH_TEST_*_URL` base, dropped and
//! created again, so no test shares (or migrates) the base database that other test binaries
//! use at the same time; `scripts/services/databases/down.sh` drops every `<base>*` database at
//! the end of the run. Log capture: a tracing subscriber writing into a buffer.

#![allow(dead_code, unreachable_pub)]

use std::io;
use std::sync::{Arc, Mutex};

/// Collects everything a fmt subscriber writes.
#[derive(Clone, Default)]
pub struct Capture(Arc<Mutex<Vec<u8>>>);

impl io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().map_err(|_| io::Error::other("poisoned"))?.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Capture {
    /// Installs a TRACE-level subscriber writing here, for the current thread, until the
    /// guard is dropped.
    pub fn install(&self) -> tracing::subscriber::DefaultGuard {
        let writer = self.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::set_default(subscriber)
    }

    /// What was written so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("capture lock")).into_owned()
    }
}

/// The base URL with its database name replaced by `<base>_<suffix>`, and that name.
pub fn derived(base: &str, suffix: &str) -> (String, String) {
    let (server, name) = base.rsplit_once('/').expect("URL with a database name");
    let db = format!("{name}_{suffix}");
    (format!("{server}/{db}"), db)
}

/// A fresh, empty PostgreSQL database; returns its URL.
#[cfg(feature = "postgres")]
pub async fn fresh_postgres(base: &str, suffix: &str) -> String {
    use ralph_store::sqlx::{self, Connection as _};
    let (url, db) = derived(base, suffix);
    let mut admin = sqlx::PgConnection::connect(base).await.expect("connect to PostgreSQL");
    for sql in [
        format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"),
        format!("CREATE DATABASE {db} ENCODING 'UTF8' TEMPLATE template0"),
    ] {
        sqlx::query(sqlx::AssertSqlSafe(sql.as_str())).execute(&mut admin).await.expect("fresh PostgreSQL database");
    }
    url
}

/// A fresh, empty MySQL/MariaDB database (utf8mb4 by default); returns its URL.
#[cfg(feature = "mysql")]
pub async fn fresh_mysql(base: &str, suffix: &str) -> String {
    use ralph_store::sqlx::{self, Connection as _};
    let (url, db) = derived(base, suffix);
    let mut admin = sqlx::MySqlConnection::connect(base).await.expect("connect to MariaDB");
    for sql in [
        format!("DROP DATABASE IF EXISTS `{db}`"),
        format!("CREATE DATABASE `{db}` CHARACTER SET utf8mb4 COLLATE {}", ralph_store::MYSQL_COLLATION),
    ] {
        sqlx::query(sqlx::AssertSqlSafe(sql.as_str())).execute(&mut admin).await.expect("fresh MariaDB database");
    }
    url
}
