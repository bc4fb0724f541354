//! MySQL / MariaDB: utf8mb4 on every connection, migrations under a named lock, `READ
//! COMMITTED` claims with `FOR UPDATE SKIP LOCKED`, queue times from the server clock, and the
//! scan upsert with a row alias (MySQL ≥ 8.0.19) or `VALUES()` (MariaDB).

use std::collections::HashMap;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Datelike, Utc};
use ralph_core::{Id, Job, RecordSummary, StoreError};
use sqlx::error::BoxDynError;
use sqlx::migrate::MigrateError;
use sqlx::mysql::{MySqlConnectOptions, MySqlPool, MySqlQueryResult, MySqlTypeInfo, MySqlValueRef};
use sqlx::{Decode, Encode, FromRow, MySql, QueryBuilder, Type, encode::IsNull};

use super::{AddressChange, Backend, Dialect, KnownRow, ObservationRow, ServerTraits, Stamp, claimable};
use crate::PoolConfig;
use crate::schema_check::ServerInfo;
use crate::sql::queue::{corrupt, micros, new_token};
use crate::sql::scan::{assignments, plan, upsert_values, values_chunk};
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
    // MariaDB cuts JSON_ARRAYAGG at group_concat_max_len: rows.
    const FACTS_AS_JSON: Option<(&'static str, &'static str)> = None;
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

    /// The rows as one JSON document of `{"k", "a", "c"}` objects through `JSON_TABLE` (like
    /// [`update_stored`]'s), each probing the key index once.
    fn push_address_changes(qb: &mut QueryBuilder<MySql>, rows: &[AddressChange]) {
        let json = serde_json::Value::Array(
            rows.iter()
                .map(|r| {
                    let mut row = serde_json::Map::new();
                    row.insert("k".into(), (&*r.key).into());
                    row.insert("a".into(), r.action.as_str().into());
                    row.insert("c".into(), r.changes.as_str().into());
                    serde_json::Value::Object(row)
                })
                .collect(),
        )
        .to_string();
        qb.push("JSON_TABLE(").push_bind(json).push(
            ", '$[*]' COLUMNS (\
             ip_key CHAR(32) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin PATH '$.k' ERROR ON ERROR, \
             action VARCHAR(16) PATH '$.a' ERROR ON ERROR, \
             changes LONGTEXT CHARACTER SET utf8mb4 PATH '$.c' ERROR ON ERROR)) AS v \
             STRAIGHT_JOIN ip_addresses AS a FORCE INDEX (ip_key) ON a.ip_key = v.ip_key",
        );
    }

    /// Per chunk, a plain read of the known rows (unless the caller read them), then the rows
    /// in key order: runs of stored addresses answering alive through a join (see
    /// [`update_stored`]), the rest through the upsert. No `WHERE` on MySQL's upsert, so each
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
        let tail = format!("{head}{clause}");
        let mut summary = RecordSummary::default();
        for chunk in rows.chunks(values_chunk::<MySql>()) {
            let read;
            let known = match known {
                Some(known) => known,
                None => {
                    read = stored_rows(tx, chunk).await?;
                    &read
                }
            };
            // The rows to write, in key order, go out in that order: runs of stored addresses
            // answering alive through the update, everything between them through the upsert,
            // so that two recorders still take their row locks in one order (splitting a chunk
            // into "all updates, then all upserts" let answers that disagree deadlock).
            let write = plan(chunk, known, &mut summary);
            let joinable = |r: &ObservationRow<'_>| {
                r.alive && known.contains_key(&*r.key) && (1000..=9999).contains(&r.seen_at.year())
            };
            let mut pending: Vec<&ObservationRow<'_>> = Vec::new();
            let mut at = 0;
            while at < write.len() {
                let run = write[at..].iter().take_while(|r| joinable(r)).count();
                if run >= MIN_UPDATE_RUN {
                    upsert_values(tx, &pending, &tail).await?;
                    pending.clear();
                    update_stored(tx, &write[at..at + run], &limit).await?;
                    at += run;
                } else {
                    let take = run.max(1);
                    pending.extend_from_slice(&write[at..at + take]);
                    at += take;
                }
            }
            upsert_values(tx, &pending, &tail).await?;
        }
        Ok(summary)
    }
}

/// What the store holds for the addresses of `chunk`, by key: a join over the keys as one
/// JSON document, where a list of that many placeholders cost MariaDB about 50 ms per 7,000
/// keys to run even when it found none.
async fn stored_rows(
    tx: &mut sqlx::Transaction<'static, MySql>,
    chunk: &[ObservationRow<'_>],
) -> Result<HashMap<String, KnownRow>, StoreError> {
    let keys = serde_json::Value::Array(chunk.iter().map(|r| serde_json::Value::from(&*r.key)).collect()).to_string();
    let mut qb = QueryBuilder::<MySql>::new("SELECT a.ip_key, a.is_buried, a.scan_checksum FROM JSON_TABLE(");
    qb.push_bind(keys).push(
        ", '$[*]' COLUMNS (ip_key CHAR(32) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin PATH '$')) AS v \
         STRAIGHT_JOIN ip_addresses AS a FORCE INDEX (ip_key) ON a.ip_key = v.ip_key",
    );
    Ok(qb
        .build_query_as::<KnownRow>()
        .fetch_all(&mut **tx)
        .await
        .map_err(err("IP address"))?
        .into_iter()
        .map(|k| (k.ip_key.clone(), k))
        .collect())
}

/// Stored addresses answering alive go through [`update_stored`] in runs of at least this
/// many (in key order); shorter runs stay in the upsert, where a statement more would cost
/// more than the update saves.
const MIN_UPDATE_RUN: usize = 64;

/// The incoming rows of [`update_stored`], one JSON object each, after `JSON_TABLE(` and the
/// bound document (the key is compared byte by byte, like the `ip_key` column). A missing
/// member is NULL (`NULL ON EMPTY`, the default; JSON `null` is left out, since early MySQL
/// 8.0 releases read it as the text "null"); a value the column cannot hold is an error, not
/// a silent NULL.
const STORED_ROWS: &str = ", '$[*]' COLUMNS (\
     ip_key CHAR(32) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin PATH '$.k' ERROR ON ERROR, \
     last_seen DATETIME(6) PATH '$.t' ERROR ON ERROR, dead_ping_count BIGINT PATH '$.d' ERROR ON ERROR, \
     http_family VARCHAR(64) PATH '$.h' ERROR ON ERROR, snmp_name VARCHAR(255) PATH '$.n' ERROR ON ERROR, \
     snmp_community VARCHAR(255) PATH '$.c' ERROR ON ERROR, snmp_version VARCHAR(2) PATH '$.v' ERROR ON ERROR, \
     scan_checksum VARCHAR(128) PATH '$.s' ERROR ON ERROR)) AS v";

/// Stored addresses answering alive (a run of them, in key order), in one `UPDATE ... JOIN`
/// over the rows as JSON: an upsert of a row that exists costs InnoDB an insert it then takes
/// back (the clustered index before the unique key), about twice the time of this update. Only alive answers come
/// here: their assignments never read the stored `dead_ping_count`, so they give the same
/// result in any order (MySQL does not promise left-to-right in a multi-table `UPDATE`).
/// `STRAIGHT_JOIN` and `FORCE INDEX` keep one probe of the key index per row even where the
/// table's statistics are stale (a new table read as empty gets a full scan per row), and
/// the rows in the document's order, which is key order. An address deleted since it was read
/// is not written again: as if the recording came first and the deletion after it.
async fn update_stored(
    tx: &mut sqlx::Transaction<'static, MySql>,
    rows: &[&ObservationRow<'_>],
    limit: &str,
) -> Result<(), StoreError> {
    if rows.is_empty() {
        return Ok(());
    }
    let json = serde_json::Value::Array(
        rows.iter()
            .map(|r| {
                let mut row = serde_json::Map::new();
                row.insert("k".into(), (&*r.key).into());
                // UTC, as sqlx binds a `DateTime<Utc>` to a DATETIME(6); the caller sends only
                // years 1000 to 9999, the column's range.
                row.insert("t".into(), r.seen_at.format("%Y-%m-%d %H:%M:%S%.6f").to_string().into());
                row.insert("d".into(), r.dead_flag().into());
                for (name, value) in [
                    ("h", r.http_family.as_deref()),
                    ("n", r.snmp_name),
                    ("c", r.snmp_community),
                    ("v", r.snmp_version),
                    ("s", r.checksum.as_deref()),
                ] {
                    if let Some(value) = value {
                        row.insert(name.into(), value.into());
                    }
                }
                serde_json::Value::Object(row)
            })
            .collect(),
    )
    .to_string();
    let set = assignments(|c| format!("v.{c}"), |c| format!("a.{c}"), "LEAST", limit)
        .into_iter()
        .map(|(col, expr)| format!("a.{col} = {expr}"))
        .collect::<Vec<_>>()
        .join(", ");
    let mut qb = QueryBuilder::<MySql>::new("UPDATE JSON_TABLE(");
    qb.push_bind(json).push(format!(
        "{STORED_ROWS} STRAIGHT_JOIN ip_addresses AS a FORCE INDEX (ip_key) ON a.ip_key = v.ip_key \
         SET {set} WHERE NOT a.is_buried"
    ));
    qb.build().execute(&mut **tx).await.map_err(err("IP address"))?;
    Ok(())
}

impl Backend for MySql {}
