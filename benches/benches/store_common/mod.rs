//! Shared by the store benchmarks: fresh databases on the local servers, skipped with a
//! message when a server is unreachable.

use ralph_store::sqlx;

/// A fresh database `ralph_bench_<tag>_<pid>` on the server of `var` (or `default`); `None`
/// when the server cannot be reached.
pub async fn fresh(var: &str, default: &str, tag: &str) -> Option<(String, String, String)> {
    let url = std::env::var(var).unwrap_or_else(|_| default.to_owned());
    let (scheme_host, _) = url.rsplit_once('/')?;
    let name = format!("ralph_bench_{tag}_{}", std::process::id());
    let created = if url.starts_with("postgres") {
        match sqlx::postgres::PgPoolOptions::new().max_connections(1).connect(&url).await {
            Ok(admin) => {
                let r = sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\""))).execute(&admin).await;
                admin.close().await;
                r.map(drop)
            }
            Err(e) => Err(e),
        }
    } else {
        match sqlx::mysql::MySqlPoolOptions::new().max_connections(1).connect(&url).await {
            Ok(admin) => {
                let r = sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE `{name}` CHARACTER SET utf8mb4")))
                    .execute(&admin)
                    .await;
                admin.close().await;
                r.map(drop)
            }
            Err(e) => Err(e),
        }
    };
    match created {
        Ok(()) => Some((format!("{scheme_host}/{name}"), url, name)),
        Err(e) => {
            println!("SKIPPED {tag}: {url} is unreachable ({e})");
            None
        }
    }
}

/// Drops what [`fresh`] created.
pub async fn drop_db(admin_url: &str, name: &str) {
    if admin_url.starts_with("postgres") {
        if let Ok(admin) = sqlx::postgres::PgPoolOptions::new().max_connections(1).connect(admin_url).await {
            let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)")))
                .execute(&admin)
                .await;
            admin.close().await;
        }
    } else if let Ok(admin) = sqlx::mysql::MySqlPoolOptions::new().max_connections(1).connect(admin_url).await {
        let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS `{name}`"))).execute(&admin).await;
        admin.close().await;
    }
}

pub const PG_DEFAULT: &str = "postgres://postgres@127.0.0.1:5432/postgres";
pub const MYSQL_DEFAULT: &str = "mysql://root@127.0.0.1:3306/mysql";
