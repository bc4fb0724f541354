//! Concurrency at the level of locks: an unchanged mirror takes none, and a transient conflict
//! (SQLite busy, a PostgreSQL or MariaDB deadlock) is retried by the store's policy instead of
//! reaching the caller. Each conflict is provoked for real, by a second connection.

use std::time::Duration;

use ralph_core::{Group, MirrorChange, Profile, StoreError, User, UserMirror, UserSource, UserStore};
use ralph_store::sqlx::{self, Connection as _};
use ralph_store::{ConflictRetry, PoolConfig};

mod store_common;

fn mirror(username: &str) -> UserMirror {
    UserMirror {
        user: User { source: UserSource::Ldap, ..User::new(username).expect("user") },
        profile: Some(Profile { company: Some("Allegro".into()), ..Profile::default() }),
        groups: Some(vec![Group::new("active").expect("group")]),
        group_scope: Default::default(),
    }
}

fn renamed(mirror: &UserMirror) -> UserMirror {
    UserMirror { user: User { first_name: "Renamed".into(), ..mirror.user.clone() }, ..mirror.clone() }
}

/// With the user's row (SQLite: the database's write lock) held by another connection, an
/// unchanged mirror completes (it only reads) while a changed one waits for the lock.
async fn unchanged_mirror_waits_for_no_lock<S: UserStore, G>(s: &S, lock: impl AsyncFnOnce(&str) -> G) {
    let m = mirror("gina");
    assert_eq!(s.mirror_user(&m).await.expect("create").change, MirrorChange::Created);
    let guard = lock("gina").await;
    let done = tokio::time::timeout(Duration::from_secs(30), s.mirror_user(&m))
        .await
        .expect("an unchanged mirror must not wait for a lock")
        .expect("mirror");
    assert_eq!(done.change, MirrorChange::Unchanged);
    // The control: a mirror that has something to write does wait.
    let changed = renamed(&m);
    assert!(
        tokio::time::timeout(Duration::from_millis(300), s.mirror_user(&changed)).await.is_err(),
        "a changed mirror writes, so it must wait for the lock"
    );
    drop(guard);
    assert_eq!(s.mirror_user(&changed).await.expect("after the lock").change, MirrorChange::Updated);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_unchanged_mirror_waits_for_no_lock() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("locks.sqlite3").display());
    let store = ralph_store::SqliteStore::connect(&url).await.expect("open");
    let other = store.clone();
    unchanged_mirror_waits_for_no_lock(&store, async move |_: &str| {
        let mut tx = other.pool().begin_with("BEGIN IMMEDIATE").await.expect("write lock");
        sqlx::query("UPDATE users SET last_name = last_name").execute(&mut *tx).await.expect("hold");
        tx
    })
    .await;
}

/// The row-lock variant for a server database: another connection holds the user's row with
/// `SELECT ... FOR UPDATE` in an open transaction.
macro_rules! row_lock_test {
    ($name:ident, $var:literal, $fresh:path, $store:ty, $conn:ty, $lock_sql:literal) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            let base: String = ralph_testkit::require!($var);
            let url = $fresh(&base, "locks_unchanged").await;
            let store = <$store>::connect(&url).await.expect("open");
            unchanged_mirror_waits_for_no_lock(&store, async |name: &str| {
                let mut conn = <$conn>::connect(&url).await.expect("connect");
                sqlx::query("BEGIN").execute(&mut conn).await.expect("begin");
                sqlx::query($lock_sql).bind(name).execute(&mut conn).await.expect("row lock");
                conn
            })
            .await;
        }
    };
}

row_lock_test!(
    postgres_unchanged_mirror_waits_for_no_lock,
    "RALPH_TEST_PG_URL",
    store_common::fresh_postgres,
    ralph_store::PgStore,
    sqlx::PgConnection,
    "SELECT id FROM users WHERE username = $1 FOR UPDATE"
);
row_lock_test!(
    mysql_unchanged_mirror_waits_for_no_lock,
    "RALPH_TEST_MYSQL_URL",
    store_common::fresh_mysql,
    ralph_store::MySqlStore,
    sqlx::MySqlConnection,
    "SELECT id FROM users WHERE username = ? FOR UPDATE"
);

/// A SQLite store that gives up waiting for the write lock after 20 ms: another connection
/// holding the lock makes its writes fail with SQLITE_BUSY, which the retry policy absorbs;
/// without retries the caller gets a typed `Contended`, and nothing is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_busy_is_retried_then_typed() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("busy.sqlite3").display());
    let config = PoolConfig::default().busy_timeout(Duration::from_millis(20));
    let store = ralph_store::SqliteStore::connect_with(&url, &config).await.expect("open");
    // Takes the write lock on another connection and keeps it until told to let go. It
    // returns once the lock is held, so no step below depends on how fast a loaded machine
    // schedules the holder.
    let hold = async |store: &ralph_store::SqliteStore| {
        let (held_tx, held) = tokio::sync::oneshot::channel();
        let (release, release_rx) = tokio::sync::oneshot::channel::<()>();
        let holder = tokio::spawn({
            let store = store.clone();
            async move {
                let mut tx = store.pool().begin_with("BEGIN IMMEDIATE").await.expect("write lock");
                sqlx::query("UPDATE users SET last_name = last_name").execute(&mut *tx).await.expect("hold");
                held_tx.send(()).expect("test waits");
                release_rx.await.expect("test releases");
                tx.commit().await.expect("release");
            }
        });
        held.await.expect("holder");
        (holder, release)
    };

    // Retry limits far beyond any slowdown: the lock is released only once a retry was seen,
    // so the write must have been retried past SQLITE_BUSY to succeed.
    let patient = store
        .clone()
        .with_conflict_retry(ConflictRetry::default().max_attempts(1_000_000).max_elapsed(Duration::from_secs(120)));
    let (holder, release) = hold(&store).await;
    let write = tokio::spawn(async move { patient.mirror_user(&mirror("hank")).await });
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while store.conflict_retries() == 0 {
        assert!(std::time::Instant::now() < deadline, "the busy write was never retried");
        assert!(!write.is_finished(), "the write finished while the lock was held");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    release.send(()).expect("holder waits");
    holder.await.expect("holder");
    let done = write.await.expect("task").expect("retried past the busy database");
    assert_eq!(done.change, MirrorChange::Created);

    let no_retry = store.clone().with_conflict_retry(ConflictRetry::none());
    let (holder, release) = hold(&store).await;
    let error = no_retry.mirror_user(&mirror("ivan")).await.expect_err("busy, no retries");
    assert!(matches!(error, StoreError::Contended { attempts: 1, .. }), "{error:?}");
    assert!(error.is_contended());
    assert_eq!(store.conflicts_exhausted(), 1);
    release.send(()).expect("holder waits");
    holder.await.expect("holder");
    assert!(store.get_user("ivan").await.expect("get").is_none(), "nothing written");

    // Retries stop at the policy's time limit, however many attempts it would allow: the lock
    // is held until the error comes back, and 1000 attempts of up to 250 ms would take minutes.
    let short = store
        .clone()
        .with_conflict_retry(ConflictRetry::default().max_attempts(1000).max_elapsed(Duration::from_millis(150)));
    let (holder, release) = hold(&store).await;
    let started = std::time::Instant::now();
    let error = short.mirror_user(&mirror("judy")).await.expect_err("busy past the time limit");
    assert!(matches!(error, StoreError::Contended { .. }), "{error:?}");
    assert!(started.elapsed() < Duration::from_secs(5), "gave up after {:?}", started.elapsed());
    release.send(()).expect("holder waits");
    holder.await.expect("holder");
}

/// Users `dl-a` and `dl-b` (inserted in that order, so both databases lock them in that
/// order), plus `padding` more.
async fn deadlock_users<S: UserStore>(store: &S, padding: usize) -> Vec<String> {
    let mut names = vec!["dl-a".to_owned(), "dl-b".to_owned()];
    names.extend((0..padding).map(|i| format!("pad{i}")));
    for name in &names {
        store.create_user(&User::new(name).expect("user")).await.expect("create");
    }
    names[..2].to_vec()
}

/// Polls `waiting` (a query on a third connection) until the store's session waits for a
/// lock, however slowly it got there.
async fn wait_for_lock_wait(mut waiting: impl AsyncFnMut() -> bool) {
    // Generous: on a loaded 2-core machine the store's transaction may take long to get there.
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    while !waiting().await {
        assert!(std::time::Instant::now() < deadline, "the store never waited for the other connection's lock");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A real deadlock: the store's `deactivate_users(["dl-a", "dl-b"])` locks dl-a, then waits
/// for dl-b, held by another connection, which then asks for dl-a. PostgreSQL lets the session
/// that waited longest (the store's: it checks after `deadlock_timeout`, 1 s, first) find the
/// cycle and abort its own transaction; the store retries once the other side committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_deadlock_is_retried() {
    let base: String = ralph_testkit::require!("RALPH_TEST_PG_URL");
    let url = store_common::fresh_postgres(&base, "locks_deadlock").await;
    let store = ralph_store::PgStore::connect(&url).await.expect("open");
    let pair = deadlock_users(&store, 0).await;
    let mut other = sqlx::PgConnection::connect(&url).await.expect("connect");
    let lock = "SELECT id FROM users WHERE username = $1 FOR UPDATE";
    sqlx::query("BEGIN").execute(&mut other).await.expect("begin");
    sqlx::query(lock).bind("dl-b").execute(&mut other).await.expect("lock dl-b");
    let deactivate = tokio::spawn({
        let store = store.clone();
        async move { store.deactivate_users(&pair).await }
    });
    // Only the store's session can be waiting for a lock in this database: once it does, it
    // holds dl-a and wants dl-b, and the cycle can be closed.
    let mut observer = sqlx::PgConnection::connect(&url).await.expect("connect");
    wait_for_lock_wait(async || {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
             WHERE NOT l.granted AND a.datname = current_database()",
        )
        .fetch_one(&mut observer)
        .await
        .expect("pg_locks")
            > 0
    })
    .await;
    // Waits until the store's transaction is chosen as the victim and rolled back.
    sqlx::query(lock).bind("dl-a").execute(&mut other).await.expect("lock dl-a");
    sqlx::query("COMMIT").execute(&mut other).await.expect("commit");
    let deactivated = deactivate.await.expect("task").expect("the deadlock is retried, not returned");
    assert_eq!(deactivated, 2);
    assert!(store.conflict_retries() > 0, "the deadlock was retried");
}

/// The same deadlock on MariaDB, which detects it at once and rolls back the transaction that
/// wrote less: the other connection first updates 20 padding rows, so the victim is the store's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_deadlock_is_retried() {
    let base: String = ralph_testkit::require!("RALPH_TEST_MYSQL_URL");
    let url = store_common::fresh_mysql(&base, "locks_deadlock").await;
    let store = ralph_store::MySqlStore::connect(&url).await.expect("open");
    let pair = deadlock_users(&store, 20).await;
    let mut other = sqlx::MySqlConnection::connect(&url).await.expect("connect");
    sqlx::query("BEGIN").execute(&mut other).await.expect("begin");
    for sql in [
        "UPDATE users SET first_name = 'heavy' WHERE username LIKE 'pad%'",
        "UPDATE users SET first_name = 'held' WHERE username = 'dl-b'",
    ] {
        sqlx::query(sql).execute(&mut other).await.expect("lock dl-b");
    }
    let deactivate = tokio::spawn({
        let store = store.clone();
        async move { store.deactivate_users(&pair).await }
    });
    // Only the store's transaction can be waiting for a lock in this database: once it does,
    // it holds dl-a and wants dl-b, and the cycle can be closed.
    let mut observer = sqlx::MySqlConnection::connect(&url).await.expect("connect");
    wait_for_lock_wait(async || {
        sqlx::query_scalar::<_, i64>(
            "SELECT COUNT(*) FROM information_schema.INNODB_TRX t \
             JOIN information_schema.PROCESSLIST p ON p.ID = t.trx_mysql_thread_id \
             WHERE t.trx_state = 'LOCK WAIT' AND p.DB = DATABASE()",
        )
        .fetch_one(&mut observer)
        .await
        .expect("INNODB_TRX")
            > 0
    })
    .await;
    sqlx::query("UPDATE users SET first_name = 'held' WHERE username = 'dl-a'")
        .execute(&mut other)
        .await
        .expect("lock dl-a");
    sqlx::query("COMMIT").execute(&mut other).await.expect("commit");
    let deactivated = deactivate.await.expect("task").expect("the deadlock is retried, not returned");
    assert_eq!(deactivated, 2);
    assert!(store.conflict_retries() > 0, "the deadlock was retried");
}

/// First logins of 32 different users at once, all with a profile and the same (new) groups,
/// with retries turned off: none may conflict with another. (On MariaDB, an `UPDATE` of a
/// missing profile followed by an `INSERT` made gap locks that deadlocked these.)
async fn distinct_first_mirrors_never_conflict<S: UserStore + Clone + 'static>(store: S) {
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..32 {
        let store = store.clone();
        tasks.spawn(async move { store.mirror_user(&mirror(&format!("first{i}"))).await });
    }
    while let Some(result) = tasks.join_next().await {
        let done = result.expect("task").expect("a first mirror of its own user conflicted");
        assert_eq!(done.change, MirrorChange::Created);
    }
    assert_eq!(store.list_users(Some(UserSource::Ldap)).await.expect("list").len(), 32);
}

fn wide_pool_without_retries() -> PoolConfig {
    PoolConfig::default().max_connections(32).conflict_retry(ConflictRetry::none())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_distinct_first_mirrors_never_conflict() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("distinct.sqlite3").display());
    // SQLite writers take turns on one file lock: under load, 32 of them can queue longer than
    // the default 5 s busy timeout, which is a wait, not the conflict this test looks for.
    let config = wide_pool_without_retries().busy_timeout(Duration::from_secs(60));
    let store = ralph_store::SqliteStore::connect_with(&url, &config).await.expect("open");
    distinct_first_mirrors_never_conflict(store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_distinct_first_mirrors_never_conflict() {
    let base: String = ralph_testkit::require!("RALPH_TEST_PG_URL");
    let url = store_common::fresh_postgres(&base, "locks_distinct").await;
    let store = ralph_store::PgStore::connect_with(&url, &wide_pool_without_retries()).await.expect("open");
    distinct_first_mirrors_never_conflict(store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_distinct_first_mirrors_never_conflict() {
    let base: String = ralph_testkit::require!("RALPH_TEST_MYSQL_URL");
    let url = store_common::fresh_mysql(&base, "locks_distinct").await;
    let store = ralph_store::MySqlStore::connect_with(&url, &wide_pool_without_retries()).await.expect("open");
    distinct_first_mirrors_never_conflict(store).await;
}
