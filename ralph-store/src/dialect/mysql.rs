//! MySQL / MariaDB: utf8mb4 on every connection, migrations under a named lock, `READ
//! COMMITTED` claims with `FOR UPDATE SKIP LOCKED`, queue times from the server clock, and the
//! scan upsert with a row alias (MySQL ≥ 8.0.19) or `VALUES()` (MariaDB).

use std::collections::HashMap;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use ralph_core::{Id, Job, RecordSummary, StoreError};
use sqlx::error::BoxDynError;
use sqlx::migrate::MigrateError;
use sqlx::mysql::{MySqlConnectOptions, MySqlPool, MySqlQueryResult, MySqlTypeInfo, MySqlValueRef};
use sqlx::{Decode, Encode, FromRow, MySql, QueryBuilder, Type, encode::IsNull};

use super::{Backend, Dialect, KnownRow, ObservationRow, ServerTraits, Stamp, claimable};
use crate::PoolConfig;
use crate::schema_check::ServerInfo;
use crate::sql::queue::{corrupt, micros, new_token};
use crate::sql::scan::{assignments, record_values};
use crate::sql::{err, push_list, returning_ids};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/mysql");

/// How long a process waits for another one's migrations before giving up.
const MIGRATION_LOCK_SECS: i64 = 600;

/// The collation of every table and connection: utf8mb4 with UCA 5.2.0 weights, which (unlike
/// `utf8mb4_unicode_ci`) tells emoji and other characters outside the BMP apart, and exists on
/// MySQL 5.6+ and every MariaDB.
pub const COLLATION: &str = "utf8mb4_unicode_520_ci";

impl Type<MySql> for Stamp {
    fn type_info() -> MySqlTypeInfo {
        <DateTime<Utc> as Type<MySql>>::type_info()
    }

    fn compatible(ty: &MySqlTypeInfo) -> bool {
        <DateTime<Utc> as Type<MySql>>::compatible(ty)
    }
}

impl Encode<'_, MySql> for Stamp {
    fn encode_by_ref(&self, buf: &mut Vec<u8>) -> Result<IsNull, BoxDynError> {
        <DateTime<Utc> as Encode<MySql>>::encode_by_ref(&self.0, buf)
    }
}

impl<'r> Decode<'r, MySql> for Stamp {
    fn decode(value: MySqlValueRef<'r>) -> Result<Self, BoxDynError> {
        <DateTime<Utc> as Decode<MySql>>::decode(value).map(Self)
    }
}

/// A job picked by a claim, before its row is marked running.
#[derive(FromRow)]
struct Picked {
    id: i64,
    payload: String,
    attempts: i32,
    enqueued_at: DateTime<Utc>,
    lease_until: DateTime<Utc>,
}

#[async_trait]
impl Dialect for MySql {
    const FOR_UPDATE: &'static str = " FOR UPDATE";
    const FOR_SHARE: &'static str = " LOCK IN SHARE MODE";
    const MAX_PARAMETERS: usize = 65_535;
    const INSERT_IGNORE: &'static str = "INSERT IGNORE INTO";
    const SERIAL_KEY: &'static str = "serial_number";
    const PREPARE_KEY_LISTS: bool = true;
    const COUNTS_IN_UPSERT: bool = false;
    const GAPLESS_LOCKS: bool = false;
    const APPLY_RUNS: usize = 2;

    fn ignore_conflict(_key: &str) -> String {
        String::new()
    }

    /// `SET NAMES utf8mb4` on every connection.
    async fn open(url: &str, config: &PoolConfig) -> Result<MySqlPool, sqlx::Error> {
        let options = MySqlConnectOptions::from_str(url)?.charset("utf8mb4").collation(COLLATION);
        config.pool_options().connect_with(options).await
    }

    /// Applies pending migrations under a named lock held by this connection.
    ///
    /// sqlx's own MySQL lock asks `GET_LOCK(name, -1)`, which MariaDB answers with NULL at once
    /// instead of waiting, so two processes starting together would both migrate. This lock
    /// waits (with a positive time-out) and its result is checked.
    async fn migrate(pool: &MySqlPool) -> Result<(), MigrateError> {
        let mut conn = pool.acquire().await?;
        let name: String =
            sqlx::query_scalar("SELECT CONCAT('ralph_store_migrate.', DATABASE())").fetch_one(&mut *conn).await?;
        let got: Option<i64> = sqlx::query_scalar("SELECT GET_LOCK(?, ?)")
            .bind(&name)
            .bind(MIGRATION_LOCK_SECS)
            .fetch_one(&mut *conn)
            .await?;
        if got != Some(1) {
            return Err(MigrateError::Execute(sqlx::Error::Protocol(format!(
                "could not take the migration lock {name} within {MIGRATION_LOCK_SECS} s"
            ))));
        }
        // `run_direct` on the locked connection itself: `run(&mut conn)` trips a higher-ranked
        // lifetime error in an async-trait future (sqlx documents `run_direct` for this).
        let result = MIGRATOR.run_direct(None, &mut *conn, false).await;
        let released = sqlx::query("SELECT RELEASE_LOCK(?)").bind(&name).execute(&mut *conn).await;
        result?;
        released.map(drop).map_err(MigrateError::from)
    }

    async fn begin_write(pool: &MySqlPool) -> Result<sqlx::Transaction<'static, MySql>, sqlx::Error> {
        pool.begin().await
    }

    async fn begin_locking_write(pool: &MySqlPool) -> Result<sqlx::Transaction<'static, MySql>, sqlx::Error> {
        pool.begin_with("SET TRANSACTION ISOLATION LEVEL READ COMMITTED; START TRANSACTION").await
    }

    fn rows_affected(result: &MySqlQueryResult) -> u64 {
        result.rows_affected()
    }

    async fn insert_id(conn: &mut sqlx::MySqlConnection, mut qb: QueryBuilder<MySql>) -> Result<i64, sqlx::Error> {
        let done = qb.build().execute(conn).await?;
        i64::try_from(done.last_insert_id()).map_err(|_| sqlx::Error::Protocol("insert id out of range".into()))
    }

    /// MariaDB ≥ 10.5: `RETURNING id`. MySQL: a multi-row `VALUES` insert is a "simple
    /// insert", whose auto-increment ids are allocated in one block in every
    /// `innodb_autoinc_lock_mode` (concurrent inserts cannot interleave into it):
    /// `LAST_INSERT_ID()` is the first, and the others follow `auto_increment_increment` apart
    /// (more than 1 on Galera and other multi-primary setups; read on this connection, as it
    /// is per session).
    async fn insert_ids(
        conn: &mut sqlx::MySqlConnection,
        mut qb: QueryBuilder<MySql>,
        rows: usize,
        server: ServerTraits,
    ) -> Result<Vec<i64>, StoreError> {
        if server.insert_returning {
            return returning_ids(conn, qb).await.map_err(err("job"));
        }
        let step = sqlx::query_scalar::<_, i64>("SELECT CAST(@@SESSION.auto_increment_increment AS SIGNED)")
            .fetch_one(&mut *conn)
            .await
            .map_err(err("job"))?;
        if step < 1 {
            return Err(corrupt("auto_increment_increment below 1"));
        }
        let done = qb.build().execute(&mut *conn).await.map_err(err("job"))?;
        if usize::try_from(done.rows_affected()).ok() != Some(rows) {
            return Err(corrupt("insert wrote an unexpected number of rows"));
        }
        let first = i64::try_from(done.last_insert_id()).map_err(|_| corrupt("insert id out of range"))?;
        (0..rows)
            .map(|n| {
                i64::try_from(n)
                    .ok()
                    .and_then(|n| n.checked_mul(step))
                    .and_then(|offset| first.checked_add(offset))
                    .ok_or_else(|| corrupt("insert id out of range"))
            })
            .collect()
    }

    async fn server_traits(pool: &MySqlPool) -> Result<ServerTraits, StoreError> {
        let server = ServerInfo::detect(pool).await?;
        Ok(ServerTraits { insert_returning: server.supports_returning(), row_alias: server.supports_row_alias() })
    }

    fn push_now(qb: &mut QueryBuilder<MySql>) {
        qb.push("UTC_TIMESTAMP(6)");
    }

    fn push_now_plus(qb: &mut QueryBuilder<MySql>, micros: i64) {
        qb.push("(UTC_TIMESTAMP(6) + INTERVAL ").push_bind(micros).push(" MICROSECOND)");
    }

    fn push_age_micros(qb: &mut QueryBuilder<MySql>, column: &str) {
        qb.push("TIMESTAMPDIFF(MICROSECOND, ").push(column).push(", UTC_TIMESTAMP(6))");
    }

    /// A `READ COMMITTED` transaction (no gap locks, so claims neither block enqueues nor each
    /// other): `SELECT ... FOR UPDATE SKIP LOCKED` of pending jobs, then of expired leases, each
    /// in due order along the `(queue, state, due_at)` index so that only the rows taken are
    /// locked, then one `UPDATE` (MariaDB has no `UPDATE ... RETURNING`).
    async fn claim(
        pool: &MySqlPool,
        queue: &str,
        limit: i64,
        lease: Duration,
        worker: &str,
        max_attempts: u32,
    ) -> Result<Vec<Job>, StoreError> {
        let filter = claimable(max_attempts);
        let mut tx = pool
            .begin_with("SET TRANSACTION ISOLATION LEVEL READ COMMITTED; START TRANSACTION")
            .await
            .map_err(err("job"))?;
        let mut picked: Vec<Picked> = Vec::new();
        for state in ["pending", "running"] {
            let left = limit - i64::try_from(picked.len()).unwrap_or(limit);
            if left <= 0 {
                break;
            }
            let mut qb = QueryBuilder::new("SELECT id, payload, attempts, enqueued_at, UTC_TIMESTAMP(6) + INTERVAL ");
            qb.push_bind(micros(lease))
                .push(" MICROSECOND AS lease_until FROM queue_jobs WHERE queue = ")
                .push_bind(queue)
                .push(" AND state = ")
                .push_bind(state)
                .push(" AND due_at <= UTC_TIMESTAMP(6) AND ")
                .push(&filter)
                .push(" ORDER BY due_at, id LIMIT ")
                .push_bind(left)
                .push(" FOR UPDATE SKIP LOCKED");
            picked.extend(qb.build_query_as::<Picked>().fetch_all(&mut *tx).await.map_err(err("job"))?);
        }
        let Some(lease_until) = picked.first().map(|p| p.lease_until) else {
            tx.commit().await.map_err(err("job"))?;
            return Ok(Vec::new());
        };
        let token = new_token();
        let mut qb =
            QueryBuilder::new("UPDATE queue_jobs SET state = 'running', attempts = attempts + 1, lease_token = ");
        qb.push_bind(&token)
            .push(", due_at = ")
            .push_bind(lease_until)
            .push(", worker = ")
            .push_bind(worker)
            .push(" WHERE id IN (");
        push_list(&mut qb, picked.iter().map(|p| Some(p.id)));
        qb.push(")");
        qb.build().execute(&mut *tx).await.map_err(err("job"))?;
        tx.commit().await.map_err(err("job"))?;
        picked
            .into_iter()
            .map(|p| {
                Ok(Job {
                    id: Id::new(p.id),
                    queue: queue.to_owned(),
                    payload: p.payload,
                    attempts: u32::try_from(i64::from(p.attempts) + 1)
                        .map_err(|_| corrupt(format!("attempts {} out of range", p.attempts)))?,
                    lease_token: token.clone(),
                    lease_until,
                    enqueued_at: p.enqueued_at,
                })
            })
            .collect()
    }

    /// A plain read of the known rows, then the upsert; no `WHERE` on MySQL's upsert, so each
    /// assignment keeps the stored value of an address buried since the read.
    async fn record_round(
        tx: &mut sqlx::Transaction<'static, MySql>,
        rows: &[ObservationRow<'_>],
        known: Option<&HashMap<String, KnownRow>>,
        dead_ping_limit: u32,
        server: ServerTraits,
    ) -> Result<RecordSummary, StoreError> {
        let old = |c: &str| format!("ip_addresses.{c}");
        let limit = dead_ping_limit.to_string();
        let (head, list) = if server.row_alias {
            (" AS new ON DUPLICATE KEY UPDATE ", assignments(|c| format!("new.{c}"), old, "LEAST", &limit))
        } else {
            (" ON DUPLICATE KEY UPDATE ", assignments(|c| format!("VALUES({c})"), old, "LEAST", &limit))
        };
        let clause = list
            .into_iter()
            .map(|(col, expr)| format!("{col} = IF(ip_addresses.is_buried, ip_addresses.{col}, {expr})"))
            .collect::<Vec<_>>()
            .join(", ");
        record_values(tx, rows, known, &format!("{head}{clause}")).await
    }
}

impl Backend for MySql {}
