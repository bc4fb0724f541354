//! PostgreSQL: claims with `FOR UPDATE SKIP LOCKED` in one statement, queue times from the
//! server clock, and the scan upsert over `UNNEST`ed arrays in one statement per round.

use std::collections::HashMap;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use ralph_core::{Job, RecordSummary, StoreError};
use sqlx::error::BoxDynError;
use sqlx::postgres::{PgArgumentBuffer, PgConnectOptions, PgPool, PgQueryResult, PgTypeInfo, PgValueRef};
use sqlx::{Decode, Encode, FromRow, Postgres, QueryBuilder, Type, encode::IsNull};

use super::{AddressChange, Backend, Dialect, KnownRow, ObservationRow, ServerTraits, Stamp, claimable};
use crate::PoolConfig;
use crate::sql::queue::{JobRow, micros, new_token};
use crate::sql::scan::{INSERT_COLUMNS, set_clause};
use crate::sql::{err, returning_id, returning_ids};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

impl Type<Postgres> for Stamp {
    fn type_info() -> PgTypeInfo {
        <DateTime<Utc> as Type<Postgres>>::type_info()
    }

    fn compatible(ty: &PgTypeInfo) -> bool {
        <DateTime<Utc> as Type<Postgres>>::compatible(ty)
    }
}

impl Encode<'_, Postgres> for Stamp {
    fn encode_by_ref(&self, buf: &mut PgArgumentBuffer) -> Result<IsNull, BoxDynError> {
        <DateTime<Utc> as Encode<Postgres>>::encode_by_ref(&self.0, buf)
    }
}

impl<'r> Decode<'r, Postgres> for Stamp {
    fn decode(value: PgValueRef<'r>) -> Result<Self, BoxDynError> {
        <DateTime<Utc> as Decode<Postgres>>::decode(value).map(Self)
    }
}

/// The counts of one round's upsert.
#[derive(FromRow)]
struct Counts {
    inserted: i64,
    updated: i64,
    changed: i64,
}

#[async_trait]
impl Dialect for Postgres {
    const FOR_UPDATE: &'static str = " FOR UPDATE";
    const FOR_SHARE: &'static str = " FOR SHARE";
    const MAX_PARAMETERS: usize = 65_535;
    const INSERT_IGNORE: &'static str = "INSERT INTO";
    const SERIAL_KEY: &'static str = "UPPER(serial_number)";
    const PREPARE_KEY_LISTS: bool = false;
    const COUNTS_IN_UPSERT: bool = true;
    const GAPLESS_LOCKS: bool = true;
    // Tried: json_agg was no faster than sqlx-postgres decoding the rows.
    const FACTS_AS_JSON: Option<(&'static str, &'static str)> = None;
    const APPLY_RUNS: usize = 4;

    fn ignore_conflict(key: &str) -> String {
        format!(" ON CONFLICT ({key}) DO NOTHING")
    }

    /// The server tells `pg_stat_activity` who we are.
    async fn open(url: &str, config: &PoolConfig) -> Result<PgPool, sqlx::Error> {
        let options = PgConnectOptions::from_str(url)?.application_name("ralph-rs");
        config.pool_options().connect_with(options).await
    }

    /// sqlx holds an advisory lock while it migrates.
    async fn migrate(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
        MIGRATOR.run(pool).await
    }

    async fn begin_write(pool: &PgPool) -> Result<sqlx::Transaction<'static, Postgres>, sqlx::Error> {
        pool.begin().await
    }

    fn rows_affected(result: &PgQueryResult) -> u64 {
        result.rows_affected()
    }

    async fn insert_id(conn: &mut sqlx::PgConnection, qb: QueryBuilder<Postgres>) -> Result<i64, sqlx::Error> {
        returning_id(conn, qb).await
    }

    async fn insert_ids(
        conn: &mut sqlx::PgConnection,
        qb: QueryBuilder<Postgres>,
        _rows: usize,
        _server: ServerTraits,
    ) -> Result<Vec<i64>, StoreError> {
        returning_ids(conn, qb).await.map_err(err("job"))
    }

    async fn server_traits(_pool: &PgPool) -> Result<ServerTraits, StoreError> {
        Ok(ServerTraits { insert_returning: true, row_alias: false })
    }

    fn push_now(qb: &mut QueryBuilder<Postgres>) {
        qb.push("now()");
    }

    fn push_now_plus(qb: &mut QueryBuilder<Postgres>, micros: i64) {
        qb.push("(now() + ").push_bind(micros).push(" * INTERVAL '1 microsecond')");
    }

    fn push_age_micros(qb: &mut QueryBuilder<Postgres>, column: &str) {
        qb.push("(EXTRACT(EPOCH FROM now() - ").push(column).push(") * 1000000)::BIGINT");
    }

    /// One statement: pending jobs first, then expired leases, each in due order, locked with
    /// `SKIP LOCKED`, so concurrent workers on any number of machines never wait on each
    /// other's rows.
    async fn claim(
        pool: &PgPool,
        queue: &str,
        limit: i64,
        lease: Duration,
        worker: &str,
        max_attempts: u32,
    ) -> Result<Vec<Job>, StoreError> {
        let filter = claimable(max_attempts);
        let mut qb = QueryBuilder::new("WITH picked AS MATERIALIZED (");
        for (n, state) in ["pending", "running"].into_iter().enumerate() {
            qb.push(if n == 0 {
                "(SELECT id FROM (SELECT id FROM queue_jobs WHERE queue = "
            } else {
                " UNION ALL (SELECT id FROM (SELECT id FROM queue_jobs WHERE queue = "
            });
            qb.push_bind(queue)
                .push(" AND state = ")
                .push_bind(state)
                .push(" AND due_at <= now() AND ")
                .push(&filter)
                .push(" ORDER BY due_at, id LIMIT ")
                .push_bind(limit)
                .push(" FOR UPDATE SKIP LOCKED) t)");
        }
        qb.push(" LIMIT ")
            .push_bind(limit)
            .push(") UPDATE queue_jobs j SET state = 'running', attempts = j.attempts + 1, lease_token = ")
            .push_bind(new_token())
            .push(", due_at = now() + ")
            .push_bind(micros(lease))
            .push(" * INTERVAL '1 microsecond', worker = ")
            .push_bind(worker)
            .push(
                " FROM picked WHERE j.id = picked.id \
                 RETURNING j.id, j.queue, j.payload, j.attempts, j.lease_token, j.due_at, j.enqueued_at",
            );
        let rows = qb.build_query_as::<JobRow>().fetch_all(pool).await.map_err(err("job"))?;
        rows.into_iter().map(JobRow::into_job).collect()
    }

    async fn lock_new_keys(tx: &mut sqlx::Transaction<'static, Postgres>, keys: &[&str]) -> Result<bool, StoreError> {
        if keys.is_empty() {
            return Ok(false);
        }
        // One namespace ("RALP") for these locks, apart from other users of advisory locks;
        // keys hashed into 256 buckets, so a transaction takes at most 256 of the server's
        // shared lock slots however many new addresses it writes (a per-key lock for each of
        // 10,000 new addresses would exhaust them).
        sqlx::query(
            "SELECT pg_advisory_xact_lock(1380011088, b) FROM (SELECT DISTINCT hashtext(k) & 255 AS b \
             FROM unnest($1::text[]) AS k) AS buckets ORDER BY b",
        )
        .bind(keys)
        .execute(&mut **tx)
        .await
        .map(|_| true)
        .map_err(err("IP address"))
    }

    /// Three arrays, `UNNEST`ed side by side.
    fn push_address_changes(qb: &mut QueryBuilder<Postgres>, rows: &[AddressChange]) {
        qb.push("UNNEST(")
            .push_bind(rows.iter().map(|r| &*r.key).collect::<Vec<_>>())
            .push("::TEXT[], ")
            .push_bind(rows.iter().map(|r| r.action.as_str()).collect::<Vec<_>>())
            .push("::TEXT[], ")
            .push_bind(rows.iter().map(|r| r.changes.as_str()).collect::<Vec<_>>())
            .push("::TEXT[]) AS v (ip_key, action, changes) JOIN ip_addresses AS a ON a.ip_key = v.ip_key");
    }

    /// One statement per round: the stored rows are read in the same snapshot the upsert
    /// starts from (for the counts and to skip buried and unknown-dead addresses), and the
    /// upsert's own row locks serialise it against concurrent writers.
    async fn record_round(
        tx: &mut sqlx::Transaction<'static, Postgres>,
        rows: &[ObservationRow<'_>],
        // The upsert reads the stored rows itself, in its own snapshot.
        _known: Option<&HashMap<String, KnownRow>>,
        dead_ping_limit: u32,
        _server: ServerTraits,
    ) -> Result<RecordSummary, StoreError> {
        let update = set_clause(|c| format!("EXCLUDED.{c}"), |c| format!("ip_addresses.{c}"), "LEAST", dead_ping_limit);
        let mut summary = RecordSummary::default();
        for chunk in rows.chunks(ARRAY_CHUNK) {
            let counts = upsert_chunk(tx, chunk, &update).await?;
            let count = |n: i64| u64::try_from(n).unwrap_or(0);
            summary.inserted += count(counts.inserted);
            summary.updated += count(counts.updated);
            summary.changed += count(counts.changed);
        }
        Ok(summary)
    }
}

/// Observations per upsert statement (the length of each bound array).
const ARRAY_CHUNK: usize = 10_000;

/// One upsert statement over `UNNEST`ed column arrays; `update` is the conflict clause.
async fn upsert_chunk(
    tx: &mut sqlx::Transaction<'static, Postgres>,
    rows: &[ObservationRow<'_>],
    update: &str,
) -> Result<Counts, StoreError> {
    let mut qb = QueryBuilder::new("WITH input AS (SELECT * FROM UNNEST(");
    let mut arrays = qb.separated(", ");
    arrays.push_bind(rows.iter().map(|r| &*r.address).collect::<Vec<_>>()).push_unseparated("::TEXT[]");
    arrays.push_bind(rows.iter().map(|r| &*r.key).collect::<Vec<_>>()).push_unseparated("::TEXT[]");
    arrays.push_bind(rows.iter().map(|r| r.seen_at).collect::<Vec<_>>()).push_unseparated("::TIMESTAMPTZ[]");
    arrays.push_bind(rows.iter().map(ObservationRow::dead_flag).collect::<Vec<_>>()).push_unseparated("::BIGINT[]");
    for column in [
        rows.iter().map(|r| r.http_family.as_deref()).collect::<Vec<_>>(),
        rows.iter().map(|r| r.snmp_name).collect(),
        rows.iter().map(|r| r.snmp_community).collect(),
        rows.iter().map(|r| r.snmp_version).collect(),
        rows.iter().map(|r| r.checksum.as_deref()).collect(),
    ] {
        arrays.push_bind(column).push_unseparated("::TEXT[]");
    }
    qb.push(format!(
        ") AS t({INSERT_COLUMNS})), \
         old AS ( \
           SELECT a.is_buried, a.scan_checksum AS old_sum, i.scan_checksum AS new_sum \
           FROM input i JOIN ip_addresses a ON a.ip_key = i.ip_key), \
         up AS ( \
           INSERT INTO ip_addresses ({INSERT_COLUMNS}) \
           SELECT i.* FROM input i WHERE i.dead_ping_count = 0 \
             OR EXISTS (SELECT 1 FROM ip_addresses a WHERE a.ip_key = i.ip_key AND NOT a.is_buried) \
           ORDER BY i.ip_key \
           ON CONFLICT (ip_key) DO UPDATE SET {update} WHERE NOT ip_addresses.is_buried \
           RETURNING (xmax = 0) AS fresh) \
         SELECT \
           (SELECT COUNT(*) FROM up WHERE fresh) AS inserted, \
           (SELECT COUNT(*) FROM old WHERE NOT is_buried) AS updated, \
           (SELECT COUNT(*) FROM old WHERE NOT is_buried AND new_sum IS NOT NULL \
              AND old_sum IS DISTINCT FROM new_sum) AS changed"
    ));
    qb.build_query_as::<Counts>().fetch_one(&mut **tx).await.map_err(err("IP address"))
}

impl Backend for Postgres {}
