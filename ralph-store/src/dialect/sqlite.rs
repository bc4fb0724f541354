//! SQLite: WAL, foreign keys, busy timeout, create-if-missing; `BEGIN IMMEDIATE` for writes;
//! queue times in microseconds from this machine's clock; single-statement claims.

use std::collections::HashMap;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use ralph_core::{Job, RecordSummary, StoreError};
use sqlx::error::BoxDynError;
use sqlx::sqlite::{
    SqliteArgumentsBuffer, SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqliteQueryResult, SqliteSynchronous,
    SqliteTypeInfo, SqliteValueRef,
};
use sqlx::{Decode, Encode, QueryBuilder, Sqlite, Type, encode::IsNull};

use super::{AddressChange, Backend, Dialect, KnownRow, ObservationRow, ServerTraits, Stamp, claimable};
use crate::PoolConfig;
use crate::sql::queue::{JobRow, micros, new_token};
use crate::sql::scan::{record_counted, record_values, set_clause};
use crate::sql::{err, returning_id, returning_ids};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

fn now_micros() -> i64 {
    Utc::now().timestamp_micros()
}

impl Type<Sqlite> for Stamp {
    fn type_info() -> SqliteTypeInfo {
        <i64 as Type<Sqlite>>::type_info()
    }

    fn compatible(ty: &SqliteTypeInfo) -> bool {
        <i64 as Type<Sqlite>>::compatible(ty)
    }
}

impl Encode<'_, Sqlite> for Stamp {
    fn encode_by_ref(&self, buf: &mut SqliteArgumentsBuffer) -> Result<IsNull, BoxDynError> {
        <i64 as Encode<Sqlite>>::encode(self.0.timestamp_micros(), buf)
    }
}

impl<'r> Decode<'r, Sqlite> for Stamp {
    fn decode(value: SqliteValueRef<'r>) -> Result<Self, BoxDynError> {
        let micros = <i64 as Decode<Sqlite>>::decode(value)?;
        DateTime::from_timestamp_micros(micros).map(Self).ok_or_else(|| format!("time {micros} out of range").into())
    }
}

#[async_trait]
impl Dialect for Sqlite {
    const FOR_UPDATE: &'static str = "";
    const FOR_SHARE: &'static str = "";
    const MAX_PARAMETERS: usize = 32_766;
    const INSERT_IGNORE: &'static str = "INSERT INTO";
    const SERIAL_KEY: &'static str = "UPPER(serial_number)";
    const PREPARE_KEY_LISTS: bool = true;
    const COUNTS_IN_UPSERT: bool = false;
    const GAPLESS_LOCKS: bool = true;
    const FACTS_AS_JSON: Option<(&'static str, &'static str)> = Some(("json_group_array(json_array(", "))"));
    const APPLY_RUNS: usize = 1;

    fn ignore_conflict(key: &str) -> String {
        format!(" ON CONFLICT ({key}) DO NOTHING")
    }

    /// An in-memory database lives in one connection, so its pool holds exactly one that never
    /// expires; a file gets WAL so readers never block the writer.
    async fn open(url: &str, config: &PoolConfig) -> Result<SqlitePool, sqlx::Error> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .foreign_keys(true)
            .busy_timeout(config.busy_timeout)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal);
        let in_memory = url.contains(":memory:") || url.contains("mode=memory");
        let config = if in_memory {
            config.clone().max_connections(1).min_connections(1).idle_timeout(None).max_lifetime(None)
        } else {
            config.clone()
        };
        config.pool_options().connect_with(options).await
    }

    async fn migrate(pool: &SqlitePool) -> Result<(), sqlx::migrate::MigrateError> {
        MIGRATOR.run(pool).await
    }

    /// `BEGIN IMMEDIATE` takes the write lock up front, so a transaction that reads before it
    /// writes (the rack overlap check) waits on busy_timeout instead of failing on upgrade.
    async fn begin_write(pool: &SqlitePool) -> Result<sqlx::Transaction<'static, Sqlite>, sqlx::Error> {
        pool.begin_with("BEGIN IMMEDIATE").await
    }

    fn rows_affected(result: &SqliteQueryResult) -> u64 {
        result.rows_affected()
    }

    async fn insert_id(conn: &mut sqlx::SqliteConnection, qb: QueryBuilder<Sqlite>) -> Result<i64, sqlx::Error> {
        returning_id(conn, qb).await
    }

    async fn insert_ids(
        conn: &mut sqlx::SqliteConnection,
        qb: QueryBuilder<Sqlite>,
        _rows: usize,
        _server: ServerTraits,
    ) -> Result<Vec<i64>, StoreError> {
        returning_ids(conn, qb).await.map_err(err("job"))
    }

    async fn server_traits(_pool: &SqlitePool) -> Result<ServerTraits, StoreError> {
        Ok(ServerTraits { insert_returning: true, row_alias: false })
    }

    fn push_now(qb: &mut QueryBuilder<Sqlite>) {
        qb.push_bind(now_micros());
    }

    fn push_now_plus(qb: &mut QueryBuilder<Sqlite>, micros: i64) {
        qb.push_bind(now_micros().saturating_add(micros));
    }

    fn push_age_micros(qb: &mut QueryBuilder<Sqlite>, column: &str) {
        qb.push("(").push_bind(now_micros()).push(" - ").push(column).push(")");
    }

    /// One `UPDATE ... WHERE id IN (SELECT ... LIMIT n) RETURNING` statement: SQLite runs one
    /// writer at a time, so the statement is the lock.
    async fn claim(
        pool: &SqlitePool,
        queue: &str,
        limit: i64,
        lease: Duration,
        worker: &str,
        max_attempts: u32,
    ) -> Result<Vec<Job>, StoreError> {
        let now = now_micros();
        let mut qb =
            QueryBuilder::new("UPDATE queue_jobs SET state = 'running', attempts = attempts + 1, lease_token = ");
        qb.push_bind(new_token())
            .push(", due_at = ")
            .push_bind(now.saturating_add(micros(lease)))
            .push(", worker = ")
            .push_bind(worker)
            .push(" WHERE id IN (SELECT id FROM queue_jobs WHERE queue = ")
            .push_bind(queue)
            .push(" AND state IN ('pending', 'running') AND due_at <= ")
            .push_bind(now)
            .push(" AND ")
            .push(claimable(max_attempts))
            .push(" ORDER BY due_at, id LIMIT ")
            .push_bind(limit)
            .push(") RETURNING id, queue, payload, attempts, lease_token, due_at, enqueued_at");
        let rows = qb.build_query_as::<JobRow>().fetch_all(pool).await.map_err(err("job"))?;
        rows.into_iter().map(JobRow::into_job).collect()
    }

    /// A `VALUES` list, named in a subquery; `CROSS JOIN` keeps it the outer loop.
    fn push_address_changes(qb: &mut QueryBuilder<Sqlite>, rows: &[AddressChange]) {
        qb.push("(SELECT column1 AS ip_key, column2 AS action, column3 AS changes FROM (");
        qb.push_values(rows, |mut b, r| {
            b.push_bind(Some(std::sync::Arc::clone(&r.key)))
                .push_bind(Some(r.action.as_str()))
                .push_bind(Some(r.changes.as_str()));
        });
        qb.push(")) AS v CROSS JOIN ip_addresses AS a ON a.ip_key = v.ip_key");
    }

    async fn record_round(
        tx: &mut sqlx::Transaction<'static, Sqlite>,
        rows: &[ObservationRow<'_>],
        known: Option<&HashMap<String, KnownRow>>,
        dead_ping_limit: u32,
        _server: ServerTraits,
    ) -> Result<RecordSummary, StoreError> {
        let update = set_clause(|c| format!("excluded.{c}"), |c| format!("ip_addresses.{c}"), "MIN", dead_ping_limit);
        let tail = format!(" ON CONFLICT (ip_key) DO UPDATE SET {update} WHERE NOT ip_addresses.is_buried");
        // The write lock is held since `BEGIN IMMEDIATE`: no other writer between the read and
        // the upsert.
        match known {
            Some(known) => record_values(tx, rows, Some(known), &tail).await,
            None => record_counted(tx, rows, &tail).await,
        }
    }
}

impl Backend for Sqlite {}
