//! Fresh databases for the store's integration tests: `<base>_<suffix>` on the server of the
//! `RALPH_TEST_*_URL` base, dropped and created again, so no test shares (or migrates) the base
//! database that other test binaries use at the same time. `scripts/services/databases/down.sh`
//! drops every `<base>*` database at the end of the run.

#![allow(dead_code, unreachable_pub)]

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
        sqlx::query(&sql).execute(&mut admin).await.expect("fresh PostgreSQL database");
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
        sqlx::query(&sql).execute(&mut admin).await.expect("fresh MariaDB database");
    }
    url
}
