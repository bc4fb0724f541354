//! Connection reuse: 10,000 small store calls from 64 concurrent tasks open no more server
//! connections than the pool's maximum, by the server's own counters.
//!
//! - PostgreSQL: `pg_stat_database.sessions` of a database only this test uses counts every
//!   session ever established to it (a backend that started and ended between two looks at
//!   `pg_stat_activity` would be missed there, but not here).
//! - MariaDB: the global `Connections` status counts every server-wide connection attempt, so
//!   other tests running at the same time would inflate it; the test therefore connects as a
//!   user of its own and reads that user's `TOTAL_CONNECTIONS` from
//!   `information_schema.USER_STATISTICS` (switching `userstat` on for the run, which is why
//!   the test is `serial_`). The global delta is printed alongside.
#![cfg(any(feature = "postgres", feature = "mysql"))]

mod queue_common;

use std::sync::Arc;
use std::time::Duration;

use ralph_core::InventoryStore;
use ralph_store::PoolConfig;

const TASKS: usize = 10_000;
const CONCURRENCY: usize = 64;
const POOL_MAX: u32 = 8;

async fn hammer<S: InventoryStore + 'static>(store: Arc<S>) {
    let per_task = TASKS / CONCURRENCY;
    let extra = TASKS % CONCURRENCY;
    let mut handles = Vec::new();
    for t in 0..CONCURRENCY {
        let store = Arc::clone(&store);
        let n = per_task + usize::from(t < extra);
        handles.push(tokio::spawn(async move {
            for _ in 0..n {
                assert!(store.find_data_center("nowhere").await.expect("small task").is_none());
            }
            n
        }));
    }
    let mut done = 0;
    for h in handles {
        done += h.await.expect("task");
    }
    assert_eq!(done, TASKS);
}

#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_pool_reuses_connections() {
    use queue_common::pg;
    use ralph_store::PgStore;
    use sqlx::postgres::PgPoolOptions;

    let Some(db) = pg::fresh("pool").await else { return };
    let admin_url = std::env::var("RALPH_TEST_PG_URL").expect("url");
    let sessions = async || -> i64 {
        // A new connection to another database each time: a fresh statistics snapshot, and
        // not a session of the database being counted.
        let admin = PgPoolOptions::new().max_connections(1).connect(&admin_url).await.expect("admin");
        let n = sqlx::query_scalar("SELECT sessions FROM pg_stat_database WHERE datname = $1")
            .bind(&db.name)
            .fetch_one(&admin)
            .await
            .expect("sessions");
        admin.close().await;
        n
    };
    let before = sessions().await;
    let store = Arc::new(
        PgStore::connect_with(&db.url, &PoolConfig::default().max_connections(POOL_MAX)).await.expect("connect"),
    );
    hammer(Arc::clone(&store)).await;
    store.close().await;
    // Sessions report their statistics as they end; give the last ones a moment.
    let mut opened = 0;
    for _ in 0..20 {
        opened = sessions().await - before;
        if opened > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    eprintln!("PostgreSQL sessions opened for {TASKS} tasks: {opened} (pool max {POOL_MAX})");
    assert!(opened >= 1, "the counter saw the store's connections");
    assert!(opened <= i64::from(POOL_MAX), "{opened} sessions for a pool of {POOL_MAX}");
    pg::drop_db(db).await;
}

#[cfg(feature = "mysql")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serial_mysql_pool_reuses_connections() {
    use queue_common::my;
    use ralph_store::MySqlStore;
    use sqlx::mysql::MySqlPoolOptions;

    let Some(db) = my::fresh("pool").await else { return };
    let admin = MySqlPoolOptions::new()
        .max_connections(1)
        .connect(&std::env::var("RALPH_TEST_MYSQL_URL").expect("url"))
        .await
        .expect("admin");
    let user = format!("ralph_pool_{}", std::process::id());
    let userstat: String = sqlx::query_scalar("SELECT @@GLOBAL.userstat + 0")
        .fetch_one(&admin)
        .await
        .map(|v: i64| v.to_string())
        .expect("userstat");
    for sql in [
        format!("DROP USER IF EXISTS '{user}'@'127.0.0.1'"),
        format!("CREATE USER '{user}'@'127.0.0.1'"),
        format!("GRANT ALL ON `{}`.* TO '{user}'@'127.0.0.1'", db.name),
        "SET GLOBAL userstat = 1".to_owned(),
    ] {
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql.as_str())).execute(&admin).await.expect("setup");
    }
    let user_connections = async || -> i64 {
        sqlx::query_scalar(
            "SELECT COALESCE(MAX(TOTAL_CONNECTIONS), 0) FROM information_schema.USER_STATISTICS WHERE USER = ?",
        )
        .bind(&user)
        .fetch_one(&admin)
        .await
        .expect("user statistics")
    };
    let global_connections = async || -> i64 {
        let (_, value): (String, String) =
            sqlx::query_as("SHOW GLOBAL STATUS LIKE 'Connections'").fetch_one(&admin).await.expect("status");
        value.parse().expect("number")
    };
    let before = user_connections().await;
    let global_before = global_connections().await;

    // Same server and database, the test's own user (no password).
    let (scheme, rest) = db.url.split_once("://").expect("url scheme");
    let host = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
    let url = format!("{scheme}://{user}@{host}");
    let store = Arc::new(
        MySqlStore::connect_with(&url, &PoolConfig::default().max_connections(POOL_MAX)).await.expect("connect"),
    );
    hammer(Arc::clone(&store)).await;
    store.close().await;

    let opened = user_connections().await - before;
    let global = global_connections().await - global_before;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "SET GLOBAL userstat = {userstat}; DROP USER IF EXISTS '{user}'@'127.0.0.1'"
    )))
    .execute(&admin)
    .await
    .expect("restore");
    admin.close().await;
    eprintln!(
        "MariaDB connections opened by the store's user for {TASKS} tasks: {opened} (pool max {POOL_MAX}); \
         global Connections delta, other tests included: {global}"
    );
    assert!(opened >= 1, "the counter saw the store's connections");
    assert!(opened <= i64::from(POOL_MAX), "{opened} connections for a pool of {POOL_MAX}");
    my::drop_db(db).await;
}
