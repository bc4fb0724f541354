//! Bulk upsert of scan observations ([`ScanResultStore`]) with Ralph's autoscan rules in SQL.
//!
//! [`ScanResultStore::record_observations`] writes a whole batch of discovery results in one
//! transaction: either every observation is recorded or none is. Per chunk it
//!
//! 1. reads the rows already known for the chunk's addresses, which gives the inserted /
//!    updated / changed counts and leaves buried addresses and dead answers from unknown
//!    addresses out (SQLite: under the write lock `BEGIN IMMEDIATE` took; PostgreSQL: in the
//!    same statement as the upsert, a CTE over the same snapshot; MySQL: a plain read);
//! 2. runs one multi-row upsert whose `DO UPDATE` / `ON DUPLICATE KEY UPDATE` clause is
//!    [`apply_observation`](ralph_core::apply_observation) written in SQL (a property test
//!    compares the two on random inputs).
//!
//! Chunks stay under each backend's bind-parameter limit: SQLite 32,766 parameters per
//! statement, MySQL/MariaDB 65,535; PostgreSQL binds one array per column and reads them with
//! `UNNEST`, so a chunk there costs nine parameters however many rows it has.
//!
//! MySQL ≥ 8.0.19 refers to the incoming row through a row alias (`INSERT ... AS new ON
//! DUPLICATE KEY UPDATE c = new.c`), because `VALUES(c)` is deprecated there. MariaDB (every
//! version up to 11.x) has no row alias, and there `VALUES(c)` is the documented, non-deprecated
//! form (also spelled `VALUE(c)`), so on MariaDB the store uses it.
//!
//! The upsert itself re-checks `is_buried` (a `WHERE` on `DO UPDATE`, an `IF()` per assignment
//! on MySQL), so an address buried by someone else between the read and the write stays
//! untouched; under such a race only the returned counts can be off.
//!
//! An address seen twice in one call is applied twice, in order, as `apply_observation` would.

use std::collections::HashMap;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use ralph_core::{Observation, RecordSummary, ScanResultStore, StoreError, ValidationError, ip_key};

/// The most observations one call takes from a chunk before it flushes; also the PostgreSQL
/// array length.
#[cfg(feature = "postgres")]
const PG_CHUNK: usize = 10_000;
/// Bind parameters per observation row on SQLite and MySQL.
#[cfg(any(feature = "sqlite", feature = "mysql"))]
const PARAMS_PER_ROW: usize = 9;
/// Rows per SQLite statement: under 32,766 parameters.
#[cfg(feature = "sqlite")]
const SQLITE_CHUNK: usize = 32_766 / PARAMS_PER_ROW;
/// Rows per MySQL statement: under 65,535 parameters and well inside a 16 MiB packet.
#[cfg(feature = "mysql")]
const MYSQL_CHUNK: usize = 65_535 / PARAMS_PER_ROW;

const ENTITY: &str = "IP address";

/// The largest `dead_ping_count` the model holds (`u32`); the SQL saturates there like
/// `apply_observation`'s `saturating_add`.
const MAX_DEAD: i64 = u32::MAX as i64;

/// A driver error as a [`StoreError`]: constraint violations and undecodable rows get their own
/// classes, everything else is [`StoreError::Backend`].
fn backend(error: sqlx::Error) -> StoreError {
    crate::driver::store_error(ENTITY, error)
}

/// One observation, checked and ready to bind.
struct Row<'a> {
    ip: u128,
    key: String,
    address: String,
    alive: bool,
    seen_at: DateTime<Utc>,
    http_family: Option<&'a str>,
    snmp_name: Option<&'a str>,
    /// Only kept with an SNMP name, as the rules say.
    snmp_community: Option<&'a str>,
    snmp_version: Option<&'static str>,
    checksum: Option<&'a str>,
}

fn check(field: &'static str, value: Option<&str>, max: usize) -> Result<(), StoreError> {
    match value {
        Some(v) => ralph_core::text::check_len(field, v, max).map_err(|e| StoreError::invalid(ENTITY, e)),
        None => Ok(()),
    }
}

impl<'a> Row<'a> {
    fn new(o: &'a Observation) -> Result<Self, StoreError> {
        check("http_family", o.http_family.as_deref(), 64)?;
        check("snmp_name", o.snmp_name.as_deref(), 255)?;
        check("checksum", o.checksum.as_deref(), 128)?;
        if o.snmp_community.as_ref().is_some_and(|c| c.expose().chars().count() > 255) {
            // The community is a secret: the error names the field only.
            return Err(StoreError::invalid(ENTITY, ValidationError::TooLong { field: "snmp_community", max: 255 }));
        }
        let snmp = o.snmp_name.is_some();
        Ok(Self {
            ip: ralph_core::ip_to_u128(o.address),
            key: ip_key(o.address),
            address: o.address.to_string(),
            alive: o.alive,
            seen_at: o.seen_at,
            http_family: o.http_family.as_deref(),
            snmp_name: o.snmp_name.as_deref(),
            snmp_community: o.snmp_community.as_ref().filter(|_| snmp).map(ralph_core::Secret::expose),
            snmp_version: o.snmp_version.filter(|_| snmp).map(ralph_core::SnmpVersion::as_str),
            checksum: o.checksum.as_deref(),
        })
    }

    /// `dead_ping_count` of the incoming row: 0 says "alive" to the update clause.
    fn dead_flag(&self) -> i64 {
        i64::from(!self.alive)
    }
}

/// Splits the batch into rounds in which every address appears once, keeping order: a repeated
/// address goes to the next round, which runs after (and sees) the previous one.
fn rounds(rows: Vec<Row<'_>>) -> Vec<Vec<Row<'_>>> {
    let mut seen: HashMap<u128, usize> = HashMap::with_capacity(rows.len());
    let mut rounds: Vec<Vec<Row<'_>>> = Vec::new();
    for row in rows {
        let n = seen.entry(row.ip).or_insert(0);
        if rounds.len() <= *n {
            rounds.push(Vec::new());
        }
        rounds[*n].push(row);
        *n += 1;
    }
    rounds
}

/// Picks the rows to write from what the database holds, counting as it goes.
#[cfg(any(feature = "sqlite", feature = "mysql"))]
fn plan<'r, 'a>(
    chunk: &'r [Row<'a>],
    known: &HashMap<String, (bool, Option<String>)>,
    summary: &mut RecordSummary,
) -> Vec<&'r Row<'a>> {
    let mut write = Vec::with_capacity(chunk.len());
    for row in chunk {
        match known.get(&row.key) {
            Some((true, _)) => {} // buried: untouched
            Some((false, old)) => {
                summary.updated += 1;
                if row.checksum.is_some() && old.as_deref() != row.checksum {
                    summary.changed += 1;
                }
                write.push(row);
            }
            None if row.alive => {
                summary.inserted += 1;
                write.push(row);
            }
            None => {} // a dead answer from an address nobody knew: nothing to record
        }
    }
    write
}

/// The update half of the upsert: `apply_observation` in SQL, as `(column, expression)`. `new(c)` names the incoming
/// row's column, `old(c)` the stored one; `least` is the two-argument minimum. The
/// assignments that read the stored `dead_ping_count` come before the one that changes it,
/// because MySQL evaluates assignments left to right on the updated row.
fn assignments(new: impl Fn(&str) -> String, old: impl Fn(&str) -> String, least: &str) -> Vec<(&'static str, String)> {
    let alive = format!("{} = 0", new("dead_ping_count"));
    let next_dead = format!("{least}({} + 1, {MAX_DEAD})", old("dead_ping_count"));
    let cleared = format!("(NOT ({alive}) AND {next_dead} >= ?LIMIT)");
    let snmp = format!("({alive} AND {} IS NOT NULL)", new("snmp_name"));
    let fact = |col: &'static str, when_alive: &str| {
        (col, format!("CASE WHEN {when_alive} THEN {} WHEN {cleared} THEN NULL ELSE {} END", new(col), old(col)))
    };
    let http_alive = format!("({alive} AND {} IS NOT NULL)", new("http_family"));
    vec![
        fact("http_family", &http_alive),
        fact("snmp_name", &snmp),
        fact("snmp_community", &snmp),
        fact("snmp_version", &snmp),
        ("scan_checksum", format!("COALESCE({}, {})", new("scan_checksum"), old("scan_checksum"))),
        ("last_seen", format!("CASE WHEN {alive} THEN {} ELSE {} END", new("last_seen"), old("last_seen"))),
        ("dead_ping_count", format!("CASE WHEN {alive} THEN 0 ELSE {next_dead} END")),
    ]
}

/// The assignments as `col = expr, ...`.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
fn update_clause(new: impl Fn(&str) -> String, old: impl Fn(&str) -> String, least: &str) -> String {
    assignments(new, old, least).into_iter().map(|(col, expr)| format!("{col} = {expr}")).collect::<Vec<_>>().join(", ")
}

const INSERT_COLUMNS: &str = "address, ip_key, last_seen, dead_ping_count, http_family, snmp_name, snmp_community, \
                              snmp_version, scan_checksum";

/// Defines `known` for one driver with `?` placeholders (SQLite, MySQL): the stored buried flag
/// and checksum of each address in a chunk, keyed by `ip_key`, read inside the write transaction.
#[cfg(any(feature = "sqlite", feature = "mysql"))]
macro_rules! known_rows {
    ($db:ty) => {
        async fn known(
            tx: &mut sqlx::Transaction<'static, $db>,
            chunk: &[Row<'_>],
        ) -> Result<HashMap<String, (bool, Option<String>)>, StoreError> {
            let sql = format!(
                "SELECT ip_key, is_buried, scan_checksum FROM ip_addresses WHERE ip_key IN ({})",
                vec!["?"; chunk.len()].join(", ")
            );
            let mut query = sqlx::query(&sql);
            for row in chunk {
                query = query.bind(&row.key);
            }
            let rows = query.fetch_all(&mut **tx).await.map_err(backend)?;
            rows.iter()
                .map(|r| Ok((r.try_get(0)?, (r.try_get(1)?, r.try_get(2)?))))
                .collect::<Result<_, sqlx::Error>>()
                .map_err(backend)
        }
    };
}

#[cfg(feature = "sqlite")]
mod sqlite {
    use super::*;
    use sqlx::{Row as _, Sqlite};

    known_rows!(Sqlite);

    pub(super) async fn record(
        pool: &sqlx::SqlitePool,
        rows: Vec<Row<'_>>,
        limit: u32,
    ) -> Result<RecordSummary, StoreError> {
        let mut summary = RecordSummary::default();
        // The write lock from the start: no other writer between the read and the upsert.
        let mut tx = pool.begin_with("BEGIN IMMEDIATE").await.map_err(backend)?;
        let update = update_clause(|c| format!("excluded.{c}"), |c| format!("ip_addresses.{c}"), "MIN")
            .replace("?LIMIT", &limit.to_string());
        for round in rounds(rows) {
            for chunk in round.chunks(SQLITE_CHUNK) {
                let known = known(&mut tx, chunk).await?;
                let write = plan(chunk, &known, &mut summary);
                if write.is_empty() {
                    continue;
                }
                let sql = format!(
                    "INSERT INTO ip_addresses ({INSERT_COLUMNS}) VALUES {} ON CONFLICT (ip_key) DO UPDATE SET {update} \
                     WHERE NOT ip_addresses.is_buried",
                    vec!["(?, ?, ?, ?, ?, ?, ?, ?, ?)"; write.len()].join(", ")
                );
                let mut query = sqlx::query(&sql);
                for r in write {
                    query = query
                        .bind(&r.address)
                        .bind(&r.key)
                        .bind(r.seen_at)
                        .bind(r.dead_flag())
                        .bind(r.http_family)
                        .bind(r.snmp_name)
                        .bind(r.snmp_community)
                        .bind(r.snmp_version)
                        .bind(r.checksum);
                }
                query.execute(&mut *tx).await.map_err(backend)?;
            }
        }
        tx.commit().await.map_err(backend)?;
        Ok(summary)
    }
}

#[cfg(feature = "postgres")]
mod postgres {
    use super::*;
    use sqlx::Row as _;

    /// One statement per chunk: the stored rows are read in the same snapshot the upsert
    /// starts from (for the counts and to skip buried and unknown-dead addresses), and the
    /// upsert's own row locks serialise it against concurrent writers.
    fn statement() -> String {
        let update = update_clause(|c| format!("EXCLUDED.{c}"), |c| format!("ip_addresses.{c}"), "LEAST")
            .replace("?LIMIT", "$10");
        format!(
            "WITH input AS ( \
               SELECT * FROM UNNEST($1::TEXT[], $2::TEXT[], $3::TIMESTAMPTZ[], $4::BIGINT[], $5::TEXT[], $6::TEXT[], \
                                    $7::TEXT[], $8::TEXT[], $9::TEXT[]) \
                 AS t({INSERT_COLUMNS})), \
             old AS ( \
               SELECT a.is_buried, a.scan_checksum AS old_sum, i.scan_checksum AS new_sum \
               FROM input i JOIN ip_addresses a ON a.ip_key = i.ip_key), \
             up AS ( \
               INSERT INTO ip_addresses ({INSERT_COLUMNS}) \
               SELECT i.* FROM input i WHERE i.dead_ping_count = 0 \
                 OR EXISTS (SELECT 1 FROM ip_addresses a WHERE a.ip_key = i.ip_key AND NOT a.is_buried) \
               ON CONFLICT (ip_key) DO UPDATE SET {update} WHERE NOT ip_addresses.is_buried \
               RETURNING (xmax = 0) AS fresh) \
             SELECT \
               (SELECT COUNT(*) FROM up WHERE fresh) AS inserted, \
               (SELECT COUNT(*) FROM old WHERE NOT is_buried) AS updated, \
               (SELECT COUNT(*) FROM old WHERE NOT is_buried AND new_sum IS NOT NULL \
                  AND old_sum IS DISTINCT FROM new_sum) AS changed"
        )
    }

    pub(super) async fn record(
        pool: &sqlx::PgPool,
        rows: Vec<Row<'_>>,
        limit: u32,
    ) -> Result<RecordSummary, StoreError> {
        let mut summary = RecordSummary::default();
        let sql = statement();
        let mut tx = pool.begin().await.map_err(backend)?;
        for round in rounds(rows) {
            for chunk in round.chunks(PG_CHUNK) {
                let counts = sqlx::query(&sql)
                    .bind(chunk.iter().map(|r| r.address.as_str()).collect::<Vec<_>>())
                    .bind(chunk.iter().map(|r| r.key.as_str()).collect::<Vec<_>>())
                    .bind(chunk.iter().map(|r| r.seen_at).collect::<Vec<_>>())
                    .bind(chunk.iter().map(|r| r.dead_flag()).collect::<Vec<_>>())
                    .bind(chunk.iter().map(|r| r.http_family).collect::<Vec<_>>())
                    .bind(chunk.iter().map(|r| r.snmp_name).collect::<Vec<_>>())
                    .bind(chunk.iter().map(|r| r.snmp_community).collect::<Vec<_>>())
                    .bind(chunk.iter().map(|r| r.snmp_version).collect::<Vec<_>>())
                    .bind(chunk.iter().map(|r| r.checksum).collect::<Vec<_>>())
                    .bind(i64::from(limit))
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(backend)?;
                let get = |name: &str| counts.try_get::<i64, _>(name).map(|n| u64::try_from(n).unwrap_or(0));
                summary.inserted += get("inserted").map_err(backend)?;
                summary.updated += get("updated").map_err(backend)?;
                summary.changed += get("changed").map_err(backend)?;
            }
        }
        tx.commit().await.map_err(backend)?;
        Ok(summary)
    }
}

#[cfg(feature = "mysql")]
mod mysql {
    use super::*;
    use crate::schema_check::ServerInfo;
    use sqlx::{MySql, Row as _};

    known_rows!(MySql);

    /// The upsert's tail for this server: a row alias where MySQL supports it, `VALUES()` on
    /// MariaDB and older MySQL.
    pub(super) fn upsert_tail(server: &ServerInfo, limit: u32) -> String {
        let old = |c: &str| format!("ip_addresses.{c}");
        let (head, list) = if server.supports_row_alias() {
            (" AS new ON DUPLICATE KEY UPDATE ", assignments(|c| format!("new.{c}"), old, "LEAST"))
        } else {
            (" ON DUPLICATE KEY UPDATE ", assignments(|c| format!("VALUES({c})"), old, "LEAST"))
        };
        // No `WHERE` on this upsert: an address buried since the read keeps its values.
        let clause = list
            .into_iter()
            .map(|(col, expr)| format!("{col} = IF(ip_addresses.is_buried, ip_addresses.{col}, {expr})"))
            .collect::<Vec<_>>()
            .join(", ");
        format!("{head}{clause}").replace("?LIMIT", &limit.to_string())
    }

    pub(super) async fn record(
        pool: &sqlx::MySqlPool,
        rows: Vec<Row<'_>>,
        limit: u32,
    ) -> Result<RecordSummary, StoreError> {
        let server = ServerInfo::detect(pool).await?;
        let tail = upsert_tail(&server, limit);
        let mut summary = RecordSummary::default();
        let mut tx = pool.begin().await.map_err(backend)?;
        for round in rounds(rows) {
            for chunk in round.chunks(MYSQL_CHUNK) {
                let known = known(&mut tx, chunk).await?;
                let write = plan(chunk, &known, &mut summary);
                if write.is_empty() {
                    continue;
                }
                let sql = format!(
                    "INSERT INTO ip_addresses ({INSERT_COLUMNS}) VALUES {}{tail}",
                    vec!["(?, ?, ?, ?, ?, ?, ?, ?, ?)"; write.len()].join(", ")
                );
                let mut query = sqlx::query(&sql);
                for r in write {
                    query = query
                        .bind(&r.address)
                        .bind(&r.key)
                        .bind(r.seen_at)
                        .bind(r.dead_flag())
                        .bind(r.http_family)
                        .bind(r.snmp_name)
                        .bind(r.snmp_community)
                        .bind(r.snmp_version)
                        .bind(r.checksum);
                }
                query.execute(&mut *tx).await.map_err(backend)?;
            }
        }
        tx.commit().await.map_err(backend)?;
        Ok(summary)
    }
}

fn prepare(observations: &[Observation]) -> Result<Vec<Row<'_>>, StoreError> {
    observations.iter().map(Row::new).collect()
}

macro_rules! scan_store {
    ($feature:literal, $db:ty, $module:ident) => {
        #[cfg(feature = $feature)]
        #[async_trait]
        impl ScanResultStore for crate::SqlStore<$db> {
            async fn record_observations(
                &self,
                observations: &[Observation],
                dead_ping_limit: u32,
            ) -> Result<RecordSummary, StoreError> {
                // Every observation is checked before anything is written (an invalid one is
                // not a conflict: the first attempt returns it).
                let summary = self
                    .retrying(ENTITY, || async {
                        $module::record(self.pool(), prepare(observations)?, dead_ping_limit).await
                    })
                    .await?;
                tracing::debug!(
                    target: "ralph::store",
                    observations = observations.len(),
                    inserted = summary.inserted,
                    updated = summary.updated,
                    changed = summary.changed,
                    "recorded scan observations"
                );
                Ok(summary)
            }
        }
    };
}

scan_store!("sqlite", sqlx::Sqlite, sqlite);
scan_store!("postgres", sqlx::Postgres, postgres);
scan_store!("mysql", sqlx::MySql, mysql);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_addresses_go_to_later_rounds() {
        let ip = |s: &str| s.parse().expect("ip");
        let now = Utc::now();
        let obs = [
            Observation::new(ip("10.0.0.1"), true, now),
            Observation::new(ip("10.0.0.2"), true, now),
            Observation::new(ip("10.0.0.1"), false, now),
            Observation::new(ip("10.0.0.1"), false, now),
        ];
        let r = rounds(prepare(&obs).expect("valid"));
        let shape: Vec<Vec<bool>> = r.iter().map(|round| round.iter().map(|row| row.alive).collect()).collect();
        assert_eq!(shape, vec![vec![true, true], vec![false], vec![false]]);
    }

    #[test]
    fn overlong_facts_are_refused_before_writing() {
        let mut o = Observation::new("10.0.0.1".parse().expect("ip"), true, Utc::now());
        o.http_family = Some("x".repeat(65));
        assert!(prepare(std::slice::from_ref(&o)).is_err_and(|e| e.is_invalid()));
        o.http_family = None;
        o.snmp_community = Some(ralph_core::Secret::new("c".repeat(300)));
        let err = prepare(std::slice::from_ref(&o)).err().expect("too long");
        assert!(!format!("{err:?} {err}").contains("ccc"), "the community never appears in errors");
    }
}
