//! Bulk upsert of scan observations ([`ScanResultStore`]) with Ralph's autoscan rules in SQL.
//!
//! [`ScanResultStore::record_observations`] writes a whole batch of discovery results in one
//! transaction: either every observation is recorded or none is. Per round (every address at
//! most once; an address seen twice in one call goes to the next round, which runs after and
//! sees the previous one, as [`apply_observation`](ralph_core::apply_observation) would) the
//! dialect
//!
//! 1. reads the rows already known for the round's addresses, which gives the inserted /
//!    updated / changed counts and leaves buried addresses and dead answers from unknown
//!    addresses out (SQLite: under the write lock `BEGIN IMMEDIATE` took, and without history
//!    as one aggregate for the alive answers instead of a row per address; PostgreSQL: in the
//!    same statement as the upsert, a CTE over the same snapshot; MySQL: a plain read, a join
//!    over the keys as one JSON document);
//! 2. runs one multi-row upsert whose `DO UPDATE` / `ON DUPLICATE KEY UPDATE` clause is
//!    [`assignments`]: `apply_observation` written in SQL, once, with each dialect naming the
//!    incoming and stored row its own way (a property test compares the two on random inputs,
//!    with and without history). On MySQL, stored addresses answering alive are written by an
//!    `UPDATE ... JOIN` over the same assignments instead, which spares InnoDB an insert it
//!    would take back.
//!
//! Statements stay under each backend's bind-parameter limit: SQLite 32,766 parameters,
//! MySQL/MariaDB 65,535 (the multi-row `VALUES` path below, [`QueryBuilder::push_values`]);
//! PostgreSQL binds one array per column and reads them with `UNNEST`, so a statement there
//! costs ten parameters however many rows it has.
//!
//! The upsert itself re-checks `is_buried`, so an address buried by someone else between the
//! read and the write stays untouched; under such a race only the returned counts can be off
//! (on MySQL an address deleted between the read and the write is not stored again: the end
//! state is that of the recording ordered before the deletion).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use ralph_core::history::{Action, new_correlation};
use ralph_core::{
    IpAddress, Observation, RecordSummary, ScanResultStore, StoreError, ValidationError, check_batch_key, ip_key,
    ip_to_u128, parse_ip,
};
use sqlx::{ColumnIndex, Decode, Encode, Executor, FromRow, IntoArguments, QueryBuilder, Type};

use super::err;
use super::history::{AddressChange, ColumnText, pack};
#[cfg(feature = "sqlite")]
use super::push_list;
use crate::dialect::{Backend, Stamp};
use crate::store::{SqlStore, TRACE_TARGET, commit};

const ENTITY: &str = "IP address";
/// Addresses per read of their followed facts.
const FACT_CHUNK: usize = 500;

/// Observation rows per statement on the `VALUES` path: nine parameters a row, within the
/// database's limit on parameters per statement.
#[cfg(any(feature = "sqlite", feature = "mysql"))]
pub(crate) fn values_chunk<DB: Backend>() -> usize {
    DB::MAX_PARAMETERS / 9
}

/// The largest `dead_ping_count` the model holds (`u32`); the SQL saturates there like
/// `apply_observation`'s `saturating_add`.
const MAX_DEAD: i64 = u32::MAX as i64;

/// The columns an observation writes, in the order [`ObservationRow`]s are bound.
pub(crate) const INSERT_COLUMNS: &str = "address, ip_key, last_seen, dead_ping_count, http_family, snmp_name, \
                                         snmp_community, snmp_version, scan_checksum";

/// One observation, checked and ready to bind. Its `Debug` shows the SNMP community as
/// redacted, like [`ralph_core::Secret`] does.
#[derive(Clone)]
pub struct ObservationRow<'a> {
    /// The observation itself.
    pub(crate) observation: &'a Observation,
    pub(crate) ip: u128,
    // Shared strings: SQLite's driver takes an `Arc<str>` as it is, where it copies a `&str`
    // into two new allocations on every bind (and the key is bound twice per round).
    pub(crate) key: Arc<str>,
    pub(crate) address: Arc<str>,
    pub(crate) alive: bool,
    pub(crate) seen_at: DateTime<Utc>,
    pub(crate) http_family: Option<Arc<str>>,
    pub(crate) snmp_name: Option<&'a str>,
    /// Only kept with an SNMP name, as the rules say.
    pub(crate) snmp_community: Option<&'a str>,
    pub(crate) snmp_version: Option<&'static str>,
    pub(crate) checksum: Option<Arc<str>>,
}

impl std::fmt::Debug for ObservationRow<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObservationRow")
            .field("observation", &self.observation)
            .field("key", &self.key)
            .field("address", &self.address)
            .field("alive", &self.alive)
            .field("seen_at", &self.seen_at)
            .field("http_family", &self.http_family)
            .field("snmp_name", &self.snmp_name)
            .field("snmp_community", &self.snmp_community.map(|_| "<redacted>"))
            .field("snmp_version", &self.snmp_version)
            .field("checksum", &self.checksum)
            .finish_non_exhaustive()
    }
}

fn check(field: &'static str, value: Option<&str>, max: usize) -> Result<(), StoreError> {
    match value {
        Some(v) => ralph_core::text::check_len(field, v, max).map_err(|e| StoreError::invalid(ENTITY, e)),
        None => Ok(()),
    }
}

impl<'a> ObservationRow<'a> {
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
            observation: o,
            ip: ralph_core::ip_to_u128(o.address),
            key: ip_key(o.address).into(),
            address: o.address.to_string().into(),
            alive: o.alive,
            seen_at: o.seen_at,
            http_family: o.http_family.as_deref().map(Arc::from),
            snmp_name: o.snmp_name.as_deref(),
            snmp_community: o.snmp_community.as_ref().filter(|_| snmp).map(ralph_core::Secret::expose),
            snmp_version: o.snmp_version.filter(|_| snmp).map(ralph_core::SnmpVersion::as_str),
            checksum: o.checksum.as_deref().map(Arc::from),
        })
    }

    /// `dead_ping_count` of the incoming row: 0 says "alive" to the update clause.
    pub(crate) fn dead_flag(&self) -> i64 {
        i64::from(!self.alive)
    }
}

/// Splits the batch into rounds in which every address appears once, keeping order: a repeated
/// address goes to the next round, which runs after (and sees) the previous one.
fn rounds(rows: Vec<ObservationRow<'_>>) -> Vec<Vec<ObservationRow<'_>>> {
    let mut seen: HashMap<u128, usize> = HashMap::with_capacity(rows.len());
    let mut rounds: Vec<Vec<ObservationRow<'_>>> = Vec::new();
    for row in rows {
        let n = seen.entry(row.ip).or_insert(0);
        if rounds.len() <= *n {
            rounds.push(Vec::new());
        }
        rounds[*n].push(row);
        *n += 1;
    }
    // Each round in address order: every recorder takes its rows' locks in the same order.
    for round in &mut rounds {
        round.sort_by_key(|row| row.ip);
    }
    rounds
}

/// The update half of the upsert: `apply_observation` in SQL, as `(column, expression)`.
/// `new(c)` names the incoming row's column, `old(c)` the stored one; `least` is the
/// two-argument minimum; `limit` is the dead-ping limit. The assignments that read the stored
/// `dead_ping_count` come before the one that changes it, because MySQL evaluates assignments
/// left to right on the updated row.
pub(crate) fn assignments(
    new: impl Fn(&str) -> String,
    old: impl Fn(&str) -> String,
    least: &str,
    limit: &str,
) -> Vec<(&'static str, String)> {
    let alive = format!("{} = 0", new("dead_ping_count"));
    let next_dead = format!("{least}({} + 1, {MAX_DEAD})", old("dead_ping_count"));
    let cleared = format!("(NOT ({alive}) AND {next_dead} >= {limit})");
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

/// [`assignments`] as `c1 = e1, c2 = e2, ...`.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub(crate) fn set_clause(
    new: impl Fn(&str) -> String,
    old: impl Fn(&str) -> String,
    least: &str,
    limit: u32,
) -> String {
    assignments(new, old, least, &limit.to_string())
        .into_iter()
        .map(|(col, expr)| format!("{col} = {expr}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// What the store holds for an address a round mentions (read by SQLite's and MySQL's
/// recording; PostgreSQL's decides in SQL).
#[derive(Debug, FromRow)]
#[cfg_attr(not(any(feature = "sqlite", feature = "mysql")), allow(dead_code))]
pub struct KnownRow {
    pub(crate) ip_key: String,
    pub(crate) is_buried: bool,
    pub(crate) scan_checksum: Option<String>,
}

/// Picks the rows to write from what the database holds, counting as it goes.
#[cfg(any(feature = "sqlite", feature = "mysql"))]
pub(crate) fn plan<'r, 'a>(
    round: &'r [ObservationRow<'a>],
    known: &HashMap<String, KnownRow>,
    summary: &mut RecordSummary,
) -> Vec<&'r ObservationRow<'a>> {
    let mut write = Vec::with_capacity(round.len());
    for row in round {
        match known.get(&*row.key) {
            Some(k) if k.is_buried => {} // buried: untouched
            Some(k) => {
                summary.updated += 1;
                if row.checksum.is_some() && k.scan_checksum.as_deref() != row.checksum.as_deref() {
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

/// The `VALUES` path of SQLite: per chunk, read the known rows (unless the caller did), then
/// one multi-row upsert ending in the dialect's `tail` (its conflict clause over
/// [`assignments`]).
#[cfg(feature = "sqlite")]
pub(crate) async fn record_values(
    tx: &mut sqlx::Transaction<'static, sqlx::Sqlite>,
    round: &[ObservationRow<'_>],
    known: Option<&HashMap<String, KnownRow>>,
    tail: &str,
) -> Result<RecordSummary, StoreError> {
    let mut summary = RecordSummary::default();
    for chunk in round.chunks(values_chunk::<sqlx::Sqlite>()) {
        let read;
        let known = match known {
            Some(known) => known,
            None => {
                read = known_rows(tx, chunk).await?;
                &read
            }
        };
        let write = plan(chunk, known, &mut summary);
        upsert_values(tx, &write, tail).await?;
    }
    Ok(summary)
}

/// What the store holds for the addresses of `chunk` (at most [`values_chunk`] of them), by key.
#[cfg(feature = "sqlite")]
async fn known_rows(
    tx: &mut sqlx::Transaction<'static, sqlx::Sqlite>,
    chunk: &[ObservationRow<'_>],
) -> Result<HashMap<String, KnownRow>, StoreError> {
    let mut qb = QueryBuilder::new("SELECT ip_key, is_buried, scan_checksum FROM ip_addresses WHERE ip_key IN (");
    push_list(&mut qb, chunk.iter().map(|r| Some(Arc::clone(&r.key))));
    qb.push(")");
    Ok(qb
        .build_query_as::<KnownRow>()
        .fetch_all(&mut **tx)
        .await
        .map_err(err(ENTITY))?
        .into_iter()
        .map(|k| (k.ip_key.clone(), k))
        .collect())
}

/// One multi-row upsert of `rows` (at most [`values_chunk`] of them) ending in `tail`.
#[cfg(any(feature = "sqlite", feature = "mysql"))]
pub(crate) async fn upsert_values<DB>(
    tx: &mut sqlx::Transaction<'static, DB>,
    rows: &[&ObservationRow<'_>],
    tail: &str,
) -> Result<(), StoreError>
where
    DB: Backend,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    for<'q> Option<i64>: Encode<'q, DB> + Type<DB>,
    for<'q> Option<&'q str>: Encode<'q, DB> + Type<DB>,
    for<'q> Option<Arc<str>>: Encode<'q, DB> + Type<DB>,
    for<'q> Option<DateTime<Utc>>: Encode<'q, DB> + Type<DB>,
{
    if rows.is_empty() {
        return Ok(());
    }
    let mut qb = QueryBuilder::new(format!("INSERT INTO ip_addresses ({INSERT_COLUMNS}) "));
    qb.push_values(rows, |mut b, r| {
        b.push_bind(Some(Arc::clone(&r.address)))
            .push_bind(Some(Arc::clone(&r.key)))
            .push_bind(Some(r.seen_at))
            .push_bind(Some(r.dead_flag()))
            .push_bind(r.http_family.clone())
            .push_bind(r.snmp_name)
            .push_bind(r.snmp_community)
            .push_bind(r.snmp_version)
            .push_bind(r.checksum.clone());
    });
    qb.push(tail);
    qb.build().execute(&mut **tx).await.map_err(err(ENTITY))?;
    Ok(())
}

/// What an aggregate over a chunk's stored rows says (SQLite without history).
#[cfg(feature = "sqlite")]
#[derive(FromRow)]
struct StoredCounts {
    stored: i64,
    buried: i64,
    changed: i64,
}

/// SQLite without history: a round's alive answers are counted by one aggregate per chunk,
/// which returns one row where reading the stored rows back returned one per known address
/// (about a third of an update's time went into handing those rows over), then upserted
/// as they are: an alive answer is written whether or not the address is known, and the
/// upsert's `WHERE` leaves buried ones alone. Dead answers take [`record_values`]' reading
/// path, because those from unknown addresses must not be inserted. SQLite has one writer,
/// held since `BEGIN IMMEDIATE`, so nothing changes between the count and the write.
#[cfg(feature = "sqlite")]
pub(crate) async fn record_counted(
    tx: &mut sqlx::Transaction<'static, sqlx::Sqlite>,
    round: &[ObservationRow<'_>],
    tail: &str,
) -> Result<RecordSummary, StoreError> {
    let (alive, dead): (Vec<ObservationRow<'_>>, Vec<ObservationRow<'_>>) =
        round.iter().cloned().partition(|r| r.alive);
    let mut summary = record_values(tx, &dead, None, tail).await?;
    let count = |n: i64| u64::try_from(n).unwrap_or(0);
    for chunk in alive.chunks(values_chunk::<sqlx::Sqlite>()) {
        // `CROSS JOIN` keeps the incoming rows outside: one probe of the `ip_key` index each.
        let mut qb = QueryBuilder::new(
            "SELECT COUNT(*) AS stored, COALESCE(SUM(a.is_buried), 0) AS buried, \
             COALESCE(SUM(NOT a.is_buried AND v.column2 IS NOT NULL AND a.scan_checksum IS NOT v.column2), 0) \
             AS changed FROM (",
        );
        qb.push_values(chunk, |mut b, r| {
            b.push_bind(Some(Arc::clone(&r.key))).push_bind(r.checksum.clone());
        });
        qb.push(") AS v CROSS JOIN ip_addresses AS a WHERE a.ip_key = v.column1");
        let c = qb.build_query_as::<StoredCounts>().fetch_one(&mut **tx).await.map_err(err(ENTITY))?;
        let stored = count(c.stored);
        summary.inserted += (chunk.len() as u64).saturating_sub(stored);
        summary.updated += stored.saturating_sub(count(c.buried));
        summary.changed += count(c.changed);
        let rows: Vec<&ObservationRow<'_>> = chunk.iter().collect();
        upsert_values(tx, &rows, tail).await?;
    }
    Ok(summary)
}

/// The columns of a [`FactRow`], in the order of its fields (a JSON array of them is read
/// field by field).
pub(crate) const FACT_COLUMNS: &str =
    "ip_key, dead_ping_count, is_buried, http_family, snmp_name, snmp_community, snmp_version, scan_checksum";

/// The facts of a stored address its change history follows (`last_seen`, the dead-ping
/// counter and the checksum change on every scan: noise, not history). Read as a row, or as a
/// JSON array of [`FACT_COLUMNS`] (see [`crate::dialect::Dialect::FACTS_AS_JSON`]).
#[derive(FromRow, serde::Deserialize)]
struct FactRow {
    ip_key: String,
    dead_ping_count: i64,
    #[serde(deserialize_with = "flag")]
    is_buried: bool,
    http_family: Option<String>,
    snmp_name: Option<String>,
    snmp_community: Option<String>,
    snmp_version: Option<String>,
    scan_checksum: Option<String>,
}

/// The error for stored facts whose JSON does not read as [`FactRow`]s: it names the first
/// address that does not and which column, never a value (the text holds SNMP communities).
fn unreadable_facts(json: &str) -> StoreError {
    let rows: Vec<Vec<serde_json::Value>> = serde_json::from_str(json).unwrap_or_default();
    let detail = rows
        .iter()
        .find_map(|row| {
            let e = serde_json::from_value::<FactRow>(serde_json::Value::Array(row.clone())).err()?;
            let key = row.first().and_then(serde_json::Value::as_str).unwrap_or("?");
            let column = FACT_COLUMNS.split(", ").zip(row).find(|(name, value)| !fits(name, value)).map(|(n, _)| n);
            Some(format!(
                "the stored facts of key {key} do not read ({:?}, column {})",
                e.classify(),
                column.unwrap_or("?")
            ))
        })
        .unwrap_or_else(|| "the stored facts do not read as JSON".to_owned());
    StoreError::Corrupt { entity: ENTITY, detail }
}

/// Whether `value` has the JSON type column `name` of a [`FactRow`] takes.
fn fits(name: &str, value: &serde_json::Value) -> bool {
    match name {
        "dead_ping_count" => value.is_i64(),
        "is_buried" => value.is_i64() || value.is_boolean(),
        "ip_key" => value.is_string(),
        _ => value.is_string() || value.is_null(),
    }
}

/// A boolean as JSON gives it: `true`/`false`, or `1`/`0` (SQLite, which has no booleans).
fn flag<'de, D: serde::Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum Flag {
        Bool(bool),
        Int(i64),
    }
    Ok(match <Flag as serde::Deserialize>::deserialize(d)? {
        Flag::Bool(b) => b,
        Flag::Int(n) => n != 0,
    })
}

impl FactRow {
    /// What a round's upsert needs to know of the stored row.
    fn known(&self) -> KnownRow {
        KnownRow { ip_key: self.ip_key.clone(), is_buried: self.is_buried, scan_checksum: self.scan_checksum.clone() }
    }

    /// The stored address `ip` as far as the scan rules read it (facts and dead-ping count).
    fn address(&self, ip: IpAddr) -> IpAddress {
        let mut a = IpAddress::new(ip);
        a.dead_ping_count = u32::try_from(self.dead_ping_count).unwrap_or(u32::MAX);
        a.is_buried = self.is_buried;
        a.http_family.clone_from(&self.http_family);
        a.snmp_name.clone_from(&self.snmp_name);
        a.snmp_community = self.snmp_community.as_deref().map(ralph_core::Secret::new);
        a.snmp_version = self.snmp_version.as_deref().and_then(|v| ralph_core::SnmpVersion::parse(v).ok());
        a
    }
}

/// The followed facts of an address, as its history records them.
fn facts_text(a: &IpAddress) -> ColumnText {
    ColumnText(vec![
        ("http_family", a.http_family.clone()),
        ("snmp_name", a.snmp_name.clone()),
        ("snmp_community", a.snmp_community.as_ref().map(|c| c.expose().to_owned())),
        ("snmp_version", a.snmp_version.map(|v| v.as_str().to_owned())),
    ])
}

/// Whether recording `row` may change a followed fact: an answer carrying facts sets them, a
/// dead answer may clear them (at the dead-ping limit). A bare "alive" changes none.
fn may_change_facts(row: &ObservationRow<'_>) -> bool {
    !row.alive || row.http_family.is_some() || row.snmp_name.is_some()
}

fn prepare(observations: &[Observation]) -> Result<Vec<ObservationRow<'_>>, StoreError> {
    observations.iter().map(ObservationRow::new).collect()
}

/// One buried address row.
#[derive(FromRow)]
struct BuriedRow {
    address: String,
}

impl<DB> SqlStore<DB>
where
    DB: Backend,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    for<'r> &'r str: ColumnIndex<DB::Row>,
    usize: ColumnIndex<DB::Row>,
    for<'q> Option<i64>: Encode<'q, DB> + Type<DB>,
    for<'q> Option<&'q str>: Encode<'q, DB> + Type<DB>,
    for<'q> Option<DateTime<Utc>>: Encode<'q, DB> + Type<DB>,
    for<'q> bool: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> i64: Decode<'q, DB> + Type<DB>,
    for<'q> i32: Decode<'q, DB> + Type<DB>,
    for<'q> String: Decode<'q, DB> + Type<DB>,
    for<'q> DateTime<Utc>: Decode<'q, DB> + Type<DB>,
    for<'q> Stamp: Decode<'q, DB> + Type<DB>,
{
    /// The followed facts of the stored addresses among `keys`, by key (`lock`: the row lock
    /// to take, or "").
    async fn facts_of(
        tx: &mut sqlx::Transaction<'static, DB>,
        keys: &[&str],
        lock: &str,
    ) -> Result<HashMap<String, FactRow>, StoreError> {
        let mut out = HashMap::new();
        for chunk in keys.chunks(FACT_CHUNK) {
            let mut qb = QueryBuilder::new(match DB::FACTS_AS_JSON {
                Some((open, close)) => format!("SELECT {open}{FACT_COLUMNS}{close} FROM ("),
                None => String::new(),
            });
            qb.push(format!("SELECT {FACT_COLUMNS} FROM ip_addresses WHERE ip_key IN ("));
            super::push_list(&mut qb, chunk.iter().map(|k| Some(*k)));
            qb.push(") ORDER BY ip_key").push(lock);
            let rows: Vec<FactRow> = match DB::FACTS_AS_JSON {
                Some(_) => {
                    qb.push(") AS f");
                    let json: String = qb
                        .build_query_scalar()
                        .persistent(DB::PREPARE_KEY_LISTS)
                        .fetch_one(&mut **tx)
                        .await
                        .map_err(err(ENTITY))?;
                    serde_json::from_str(&json).map_err(|_| unreadable_facts(&json))?
                }
                None => qb
                    .build_query_as::<FactRow>()
                    .persistent(DB::PREPARE_KEY_LISTS)
                    .fetch_all(&mut **tx)
                    .await
                    .map_err(err(ENTITY))?,
            };
            out.extend(rows.into_iter().map(|r| (r.ip_key.clone(), r)));
        }
        Ok(out)
    }

    /// Records `observations` in one transaction, after storing `key` when one is given
    /// (`None`, nothing written: the key was stored before).
    async fn record(
        &self,
        key: Option<&str>,
        observations: &[Observation],
        dead_ping_limit: u32,
    ) -> Result<Option<RecordSummary>, StoreError> {
        // Every observation is checked before anything is written (an invalid one is not a
        // conflict: the first attempt returns it).
        let rounds = &rounds(prepare(observations)?);
        let message = key.map_or_else(|| "scan results".to_owned(), |k| format!("scan results, batch {k}"));
        let server = self.server_traits().await?;
        let summary = self
            .retrying(ENTITY, || async {
                let mut tx = self.begin(ENTITY).await?;
                if let Some(key) = key {
                    // Insert-or-ignore: a racing retry of the same batch waits on the key and
                    // then finds it taken.
                    let mut qb = QueryBuilder::new(DB::INSERT_IGNORE);
                    qb.push(" scan_batches (batch_key, recorded_at) VALUES (")
                        .push_bind(Some(key))
                        .push(", ")
                        .push_bind(Some(Utc::now()))
                        .push(")")
                        .push(DB::ignore_conflict("batch_key"));
                    let done = qb.build().execute(&mut *tx).await.map_err(err(ENTITY))?;
                    if DB::rows_affected(&done) == 0 {
                        return Ok(None);
                    }
                }
                let mut summary = RecordSummary::default();
                let correlation = new_correlation();
                for round in rounds {
                    // The followed facts of the addresses this round may change, locked. Their
                    // next values are the core rule's (`apply_observation`, which the SQL is
                    // held equal to), so nothing is read back after the upsert.
                    let follows = |r: &&ObservationRow<'_>| self.scan_history && may_change_facts(r);
                    // Where a locking read of a missing key locks nothing (PostgreSQL; SQLite
                    // has one writer), every address of the round is locked here, in key order,
                    // so that the upsert waits on no row another recorder locked after one of
                    // ours (two recorders' locks taken in different orders deadlock).
                    let lock_all = self.scan_history && DB::GAPLESS_LOCKS;
                    let locked: Vec<&str> = round.iter().filter(|r| lock_all || follows(r)).map(|r| &*r.key).collect();
                    let mut before = Self::facts_of(&mut tx, &locked, DB::FOR_UPDATE).await?;
                    // Where the upsert does not read the stored rows itself, the other addresses
                    // are read here too, plainly (a locking read of a missing key takes a gap
                    // lock on MySQL, and two recorders of new addresses in one gap would
                    // deadlock): each address is read once, and the upsert is handed the reads.
                    let hand_over = self.scan_history && !DB::COUNTS_IN_UPSERT;
                    if hand_over && !lock_all {
                        let rest: Vec<&str> = round.iter().filter(|r| !follows(r)).map(|r| &*r.key).collect();
                        before.extend(Self::facts_of(&mut tx, &rest, "").await?);
                    }
                    let new: Vec<&str> = round
                        .iter()
                        .filter(|r| follows(r) && r.alive && !before.contains_key(&*r.key))
                        .map(|r| &*r.key)
                        .collect();
                    // Another transaction may be inserting them: wait for it, read again.
                    if DB::lock_new_keys(&mut tx, &new).await? {
                        before.extend(Self::facts_of(&mut tx, &new, DB::FOR_UPDATE).await?);
                    }
                    let known: Option<HashMap<String, KnownRow>> =
                        hand_over.then(|| before.values().map(|f| (f.ip_key.clone(), f.known())).collect());
                    // A dead answer from an address this transaction read as unknown records
                    // nothing, even if another transaction stores the address meanwhile (it
                    // is ordered before that insert).
                    let kept: Vec<ObservationRow<'_>>;
                    let round: &[ObservationRow<'_>] =
                        if self.scan_history && round.iter().any(|r| !r.alive && !before.contains_key(&*r.key)) {
                            kept = round.iter().filter(|r| r.alive || before.contains_key(&*r.key)).cloned().collect();
                            &kept
                        } else {
                            round
                        };
                    let s = DB::record_round(&mut tx, round, known.as_ref(), dead_ping_limit, server).await?;
                    summary.inserted += s.inserted;
                    summary.updated += s.updated;
                    summary.changed += s.changed;
                    let mut changed = Vec::new();
                    for r in round.iter().filter(follows) {
                        let was = before.get(&*r.key);
                        if was.is_some_and(|w| w.is_buried) {
                            continue;
                        }
                        let ip = r.observation.address;
                        let mut next = was.map_or_else(|| IpAddress::new(ip), |w| w.address(ip));
                        ralph_core::apply_observation(&mut next, r.observation, dead_ping_limit);
                        let before = was.map(|w| facts_text(&w.address(ip)));
                        let changes = ColumnText::diff(before.as_ref(), Some(&facts_text(&next)));
                        if let Some(changes) = pack(&changes)? {
                            let action = if was.is_some() { Action::Update } else { Action::Create };
                            changed.push(AddressChange { key: Arc::clone(&r.key), action, changes });
                        }
                    }
                    // Stamped now, with the round's locks held: a recorder that waited on another
                    // one's locks writes the later time as well as the later row.
                    Self::write_address_history(&mut tx, &changed, self.actor(), &message, &correlation, Utc::now())
                        .await?;
                }
                commit(tx, ENTITY).await?;
                Ok(Some(summary))
            })
            .await?;
        match &summary {
            Some(summary) => tracing::debug!(
                target: TRACE_TARGET,
                observations = observations.len(),
                batch = key,
                inserted = summary.inserted,
                updated = summary.updated,
                changed = summary.changed,
                "recorded scan observations"
            ),
            None => tracing::debug!(target: TRACE_TARGET, batch = key, "scan batch recorded before; skipped"),
        }
        Ok(summary)
    }
}

#[async_trait]
impl<DB> ScanResultStore for SqlStore<DB>
where
    DB: Backend,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    for<'r> &'r str: ColumnIndex<DB::Row>,
    usize: ColumnIndex<DB::Row>,
    for<'q> Option<i64>: Encode<'q, DB> + Type<DB>,
    for<'q> Option<&'q str>: Encode<'q, DB> + Type<DB>,
    for<'q> Option<DateTime<Utc>>: Encode<'q, DB> + Type<DB>,
    for<'q> bool: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> i64: Decode<'q, DB> + Type<DB>,
    for<'q> i32: Decode<'q, DB> + Type<DB>,
    for<'q> String: Decode<'q, DB> + Type<DB>,
    for<'q> DateTime<Utc>: Decode<'q, DB> + Type<DB>,
    for<'q> Stamp: Decode<'q, DB> + Type<DB>,
{
    async fn record_observations(
        &self,
        observations: &[Observation],
        dead_ping_limit: u32,
    ) -> Result<RecordSummary, StoreError> {
        let summary = self.record(None, observations, dead_ping_limit).await?;
        Ok(summary.unwrap_or_default())
    }

    async fn record_batch(
        &self,
        key: &str,
        observations: &[Observation],
        dead_ping_limit: u32,
    ) -> Result<Option<RecordSummary>, StoreError> {
        check_batch_key(key)?;
        self.record(Some(key), observations, dead_ping_limit).await
    }

    async fn prune_batches(&self, older_than: Duration) -> Result<u64, StoreError> {
        let cutoff = Utc::now() - chrono::Duration::from_std(older_than).unwrap_or(chrono::Duration::MAX);
        self.retrying(ENTITY, || async {
            let mut qb = QueryBuilder::new("DELETE FROM scan_batches WHERE recorded_at < ");
            qb.push_bind(Some(cutoff));
            let done = qb.build().execute(self.pool()).await.map_err(err(ENTITY))?;
            Ok(DB::rows_affected(&done))
        })
        .await
    }

    async fn buried_between(&self, first: IpAddr, last: IpAddr) -> Result<Vec<IpAddr>, StoreError> {
        if ip_to_u128(first) > ip_to_u128(last) {
            return Ok(Vec::new());
        }
        let (lo, hi) = (ip_key(first), ip_key(last));
        // One range scan of the unique `ip_key` index; buried rows are few, so the filter on
        // `is_buried` costs nothing worth an index of its own.
        let mut qb = QueryBuilder::new("SELECT address FROM ip_addresses WHERE ip_key >= ");
        qb.push_bind(Some(lo.as_str()))
            .push(" AND ip_key <= ")
            .push_bind(Some(hi.as_str()))
            .push(" AND is_buried = ")
            .push_bind(true)
            .push(" ORDER BY ip_key");
        let rows = qb.build_query_as::<BuriedRow>().fetch_all(self.pool()).await.map_err(err(ENTITY))?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let ip = parse_ip(&row.address)
                .map_err(|e| StoreError::Corrupt { entity: ENTITY, detail: format!("address: {e}") })?;
            // IPv4 keys live inside ::ffff:0:0/96, so an IPv6 range may span them.
            if ip.is_ipv4() == first.is_ipv4() {
                out.push(ip);
            }
        }
        Ok(out)
    }
}

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
    fn debug_output_hides_the_community() {
        let mut o = Observation::new("10.0.0.1".parse().expect("ip"), true, Utc::now());
        o.snmp_name = Some("core-sw1".into());
        o.snmp_community = Some(ralph_core::Secret::new("s3cret-community"));
        let rows = prepare(std::slice::from_ref(&o)).expect("valid");
        let shown = format!("{rows:?}");
        assert!(shown.contains("core-sw1") && shown.contains("<redacted>"), "{shown}");
        assert!(!shown.contains("s3cret-community"), "{shown}");
    }

    /// A JSON row is read by position: each field must take its own column of FACT_COLUMNS.
    #[test]
    fn fact_rows_read_by_position_match_fact_columns() {
        let row: Vec<serde_json::Value> = FACT_COLUMNS
            .split(", ")
            .map(|name| match name {
                "dead_ping_count" => 7.into(),
                "is_buried" => 1.into(),
                _ => name.into(),
            })
            .collect();
        let f: FactRow = serde_json::from_value(serde_json::Value::Array(row)).expect("reads");
        assert_eq!((f.ip_key.as_str(), f.dead_ping_count, f.is_buried), ("ip_key", 7, true));
        let texts = [&f.http_family, &f.snmp_name, &f.snmp_community, &f.snmp_version, &f.scan_checksum];
        let names = ["http_family", "snmp_name", "snmp_community", "snmp_version", "scan_checksum"];
        for (text, name) in texts.into_iter().zip(names) {
            assert_eq!(text.as_deref(), Some(name));
        }
        let f: FactRow = serde_json::from_str(r#"["k", 0, false, null, null, null, null, null]"#).expect("reads");
        assert!(!f.is_buried && f.http_family.is_none());
    }

    #[test]
    fn unreadable_facts_name_the_key_and_column_never_a_value() {
        let json = r#"[["k1", 0, 0, null, null, null, null, null],
                       ["k2", "x", 0, null, "sw", "s3cret-community", "2c", null]]"#;
        assert!(serde_json::from_str::<Vec<FactRow>>(json).is_err());
        let e = unreadable_facts(json);
        let shown = format!("{e} {e:?}");
        assert!(shown.contains("k2") && shown.contains("dead_ping_count"), "{shown}");
        assert!(!shown.contains("s3cret") && !shown.contains("k1"), "{shown}");
        assert!(matches!(unreadable_facts("[[1"), StoreError::Corrupt { .. }));
    }

    #[test]
    fn overlong_facts_are_refused_before_writing() {
        let mut o = Observation::new("10.0.0.1".parse().expect("ip"), true, Utc::now());
        o.http_family = Some("x".repeat(65));
        assert!(prepare(std::slice::from_ref(&o)).is_err_and(|e| e.is_invalid()));
        o.http_family = None;
        o.snmp_community = Some(ralph_core::Secret::new("c".repeat(300)));
        let err = prepare(std::slice::from_ref(&o)).expect_err("too long");
        assert!(!format!("{err:?} {err}").contains("ccc"), "the community never appears in errors");
    }
}
