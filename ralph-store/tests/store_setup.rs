//! Opening stores: SQLite settings, repeatable migrations, pool configuration, backend choice by
//! URL scheme, and utf8mb4 on MySQL connections and tables.

use std::time::Duration;

use ralph_core::{DataCenter, InventoryStore, IpAddress, Repository, Secret, StoreError, UserStore};
use ralph_store::{AnyStore, PoolConfig, SqliteStore, sqlx};

mod store_common;
#[cfg(feature = "mysql")]
use store_common::fresh_mysql;
#[cfg(feature = "postgres")]
use store_common::fresh_postgres;

#[tokio::test]
async fn sqlite_file_is_created_in_wal_mode_with_foreign_keys() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("nested-name.sqlite3");
    let url = format!("sqlite://{}", path.display());
    let config = PoolConfig::default().max_connections(3).busy_timeout(std::time::Duration::from_millis(1500));
    let store = SqliteStore::connect_with(&url, &config).await.expect("create");
    assert!(path.exists(), "created when missing");
    let pool = store.pool();
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode").fetch_one(pool).await.expect("pragma");
    assert_eq!(mode, "wal");
    let fks: i64 = sqlx::query_scalar("PRAGMA foreign_keys").fetch_one(pool).await.expect("pragma");
    assert_eq!(fks, 1);
    let busy: i64 = sqlx::query_scalar("PRAGMA busy_timeout").fetch_one(pool).await.expect("pragma");
    assert_eq!(busy, 1500);
    assert_eq!(pool.options().get_max_connections(), 3);
    store.create(&DataCenter::new("dc1", None).expect("dc")).await.expect("dc");
    store.close().await;

    // Reopening runs the migrations again as a no-op and finds the data.
    let again = SqliteStore::connect(&url).await.expect("reopen");
    again.migrate().await.expect("migrate twice");
    assert_eq!(Repository::<DataCenter>::list(&again).await.expect("list").len(), 1);
}

/// The SNMP community is stored (discovery needs it back) but no store or driver event shows it.
#[tokio::test]
async fn store_events_never_show_the_snmp_community() {
    const COMMUNITY: &str = "c0mmunity-Secret-77";
    let capture = store_common::Capture::default();
    let _guard = capture.install();
    let store = SqliteStore::connect("sqlite::memory:").await.expect("store");
    let mut ip = IpAddress::parse("10.0.0.9", None).expect("ip");
    ip.snmp_community = Some(Secret::new(COMMUNITY));
    let id = store.create(&ip).await.expect("create");
    let read = store.get(id).await.expect("get");
    assert_eq!(read.snmp_community.as_ref().map(Secret::expose), Some(COMMUNITY));
    store.update(id, &read.value).await.expect("update");
    assert_eq!(
        store.ip_addresses_in(ralph_core::parse_cidr("10.0.0.0/24").expect("cidr"), false).await.expect("range").len(),
        1
    );
    assert!(format!("{read:?}").contains("redacted") && !format!("{read:?}").contains(COMMUNITY));
    let log = capture.text();
    assert!(log.contains("ralph::store") && log.contains("inserted"), "log was:\n{log}");
    assert!(!log.contains(COMMUNITY), "the community leaked into the log:\n{log}");
}

#[tokio::test]
async fn in_memory_sqlite_keeps_one_connection() {
    let store =
        SqliteStore::connect_with("sqlite::memory:", &PoolConfig::default().max_connections(8)).await.expect("memory");
    assert_eq!(store.pool().options().get_max_connections(), 1, "one database, one connection");
    store.create(&DataCenter::new("dc1", None).expect("dc")).await.expect("dc");
    assert_eq!(Repository::<DataCenter>::list(&store).await.expect("list").len(), 1);
}

#[tokio::test]
async fn pool_settings_reach_the_pool() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("settings.sqlite3").display());
    let store = SqliteStore::connect(&url).await.expect("default");
    assert!(store.pool().options().get_test_before_acquire(), "sqlx's safe default is kept");
    store.close().await;
    let config: PoolConfig =
        serde_json::from_str(r#"{"max_connections": 4, "test_before_acquire": false}"#).expect("json");
    let store = SqliteStore::connect_with(&url, &config).await.expect("configured");
    assert!(!store.pool().options().get_test_before_acquire());
    assert_eq!(store.pool().options().get_max_connections(), 4);
    let retry: PoolConfig =
        serde_json::from_str(r#"{"conflict_retry": {"max_attempts": 3, "min_delay": 0.01}}"#).expect("json");
    assert_eq!(
        retry.conflict_retry,
        ralph_store::ConflictRetry::default()
            .max_attempts(3)
            .delays(Duration::from_millis(10), Duration::from_millis(250))
    );
}

#[tokio::test]
async fn any_store_picks_the_backend_by_scheme() {
    let store = AnyStore::connect("sqlite::memory:").await.expect("sqlite");
    assert_eq!(store.backend(), "SQLite");
    store.create(&DataCenter::new("dc1", None).expect("dc")).await.expect("dc through AnyStore");
    assert_eq!(store.list_users(None).await.expect("users").len(), 0);

    let refused = AnyStore::connect("oracle://scott:tiger-Pass@db.example/ralph").await.expect_err("unknown scheme");
    assert!(matches!(refused, StoreError::Invalid { .. }));
    let text = format!("{refused} {refused:?}");
    assert!(text.contains("oracle") && !text.contains("tiger-Pass"), "{text}");

    #[cfg(feature = "postgres")]
    if let Some(base) = ralph_testkit::service("RALPH_TEST_PG_URL") {
        let url = fresh_postgres(&base, "setup_any").await;
        assert_eq!(AnyStore::connect(&url).await.expect("postgres").backend(), "PostgreSQL");
    }
    #[cfg(feature = "mysql")]
    if let Some(base) = ralph_testkit::service("RALPH_TEST_MYSQL_URL") {
        let url = fresh_mysql(&base, "setup_any").await.replacen("mysql:", "mariadb:", 1);
        assert_eq!(AnyStore::connect(&url).await.expect("mysql").backend(), "MySQL");
    }
}

#[cfg(feature = "mysql")]
#[tokio::test]
async fn mysql_connections_and_tables_are_utf8mb4() {
    let base = ralph_testkit::require!("RALPH_TEST_MYSQL_URL");
    let store = ralph_store::MySqlStore::connect(&fresh_mysql(&base, "setup_utf8").await).await.expect("mysql");
    let pool = store.pool();
    let (charset, collation): (String, String) =
        sqlx::query_as("SELECT @@character_set_connection, @@collation_connection")
            .fetch_one(pool)
            .await
            .expect("session variables");
    assert_eq!((charset.as_str(), collation.as_str()), ("utf8mb4", ralph_store::MYSQL_COLLATION));
    let tables: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT CAST(table_name AS CHAR), CAST(engine AS CHAR), CAST(table_collation AS CHAR) \
         FROM information_schema.tables WHERE table_schema = DATABASE() AND table_type = 'BASE TABLE'",
    )
    .fetch_all(pool)
    .await
    .expect("tables");
    for name in ["data_centers", "devices", "rack_cells", "ip_addresses", "users", "profiles", "auth_groups"] {
        let found = tables.iter().find(|(t, _, _)| t == name);
        let (_, engine, collation) = found.unwrap_or_else(|| panic!("table {name} missing"));
        assert_eq!(engine, "InnoDB", "{name}");
        assert_eq!(collation, ralph_store::MYSQL_COLLATION, "{name}");
    }
}

/// Four stores opening one fresh database at once: the migration lock lets exactly one of them
/// migrate and the others find the schema current. (MariaDB ignores sqlx's own lock request,
/// which made this fail before the store took its own lock.)
#[cfg(any(feature = "postgres", feature = "mysql"))]
async fn concurrent_first_connects<DB: ralph_store::Backend>(url: &str) {
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let url = url.to_owned();
        tasks.spawn(async move { ralph_store::SqlStore::<DB>::connect(&url).await.map(|_| ()) });
    }
    while let Some(result) = tasks.join_next().await {
        result.expect("task").expect("every concurrent connect succeeds");
    }
    let store = ralph_store::AnyStore::connect(url).await.expect("connect");
    store.create(&DataCenter::new("dc1", None).expect("dc")).await.expect("schema works");
}

#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_concurrent_first_connects_migrate_once() {
    let base = ralph_testkit::require!("RALPH_TEST_PG_URL");
    concurrent_first_connects::<sqlx::Postgres>(&fresh_postgres(&base, "setup_race").await).await;
}

#[cfg(feature = "mysql")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mysql_concurrent_first_connects_migrate_once() {
    let base = ralph_testkit::require!("RALPH_TEST_MYSQL_URL");
    concurrent_first_connects::<sqlx::MySql>(&fresh_mysql(&base, "setup_race").await).await;
}
