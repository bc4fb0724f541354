//! The change history: rows written inside the transactions of the changes they record
//! ([`SqlStore::write_history`], and for scanned addresses [`SqlStore::write_address_history`]),
//! the [`HistoryStore`] reads, and pruning in short chunks.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use ralph_core::history::{
    Action, Actor, ActorKind, FieldChange, HistoryEntry, HistoryRecord, HistoryStore, ObjectState, Retention,
};
use ralph_core::{Id, StoreError};
use sqlx::{ColumnIndex, Decode, Encode, Executor, FromRow, IntoArguments, QueryBuilder, Type};

use super::{Columns, err, push_list};
use crate::dialect::{Backend, Stamp};
use crate::store::SqlStore;

const ENTITY: &str = "history";

/// A value's columns as text, collected through [`Columns`]: what an inventory write's
/// history row compares.
#[derive(Debug, Default)]
pub(crate) struct ColumnText(pub(crate) Vec<(&'static str, Option<String>)>);

impl Columns for ColumnText {
    fn int(&mut self, name: &'static str, value: Option<i64>) {
        self.0.push((name, value.map(|v| v.to_string())));
    }
    fn text(&mut self, name: &'static str, value: Option<&str>) {
        self.0.push((name, value.map(str::to_owned)));
    }
    fn bool(&mut self, name: &'static str, value: bool) {
        self.0.push((name, Some(value.to_string())));
    }
    fn time(&mut self, name: &'static str, value: Option<DateTime<Utc>>) {
        self.0.push((name, value.map(|v| v.to_rfc3339())));
    }
}

impl ColumnText {
    /// The value of column `name`.
    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        self.0.iter().find(|(n, _)| *n == name).and_then(|(_, v)| v.as_deref())
    }

    /// The changes from `before` to `after` (either may be absent: a create or a delete),
    /// secrets left out (their columns are recorded as changed, never with their values).
    pub(crate) fn diff(before: Option<&Self>, after: Option<&Self>) -> Vec<FieldChange> {
        let mut fields: BTreeMap<&'static str, (Option<&str>, Option<&str>)> = BTreeMap::new();
        for (name, v) in before.map(|b| b.0.as_slice()).unwrap_or_default() {
            fields.entry(name).or_default().0 = v.as_deref();
        }
        for (name, v) in after.map(|a| a.0.as_slice()).unwrap_or_default() {
            fields.entry(name).or_default().1 = v.as_deref();
        }
        fields
            .into_iter()
            .filter(|(_, (b, a))| b != a)
            .map(|(name, (b, a))| {
                if SECRET_COLUMNS.contains(&name) {
                    // Never the values; a secret replaced by another still shows as a change.
                    let after = if b.is_some() { "(secret, changed)" } else { "(secret)" };
                    FieldChange::new(name, b.map(|_| "(secret)"), a.map(|_| after))
                } else {
                    FieldChange::new(name, b, a)
                }
            })
            .filter(|c| !c.is_noise())
            .collect()
    }
}

/// Columns whose values never enter history (a changed secret is recorded as changed).
const SECRET_COLUMNS: &[&str] = &["snmp_community", "password_hash"];

/// One change-history row of a stored IP address, named by its key: what a scan's recording
/// writes through [`SqlStore::write_address_history`], which finds the address's id itself.
#[doc(hidden)]
#[derive(Debug)]
pub struct AddressChange {
    /// The address's `ip_key`.
    pub(crate) key: Arc<str>,
    /// Create or update.
    pub(crate) action: Action,
    /// The changes as the `changes` column holds them (see [`pack`]); never empty.
    pub(crate) changes: String,
}

#[derive(FromRow)]
struct HistoryRow {
    id: i64,
    object_type: String,
    object_id: i64,
    related_type: Option<String>,
    related_id: Option<i64>,
    action: String,
    actor_kind: String,
    actor: String,
    at: DateTime<Utc>,
    correlation: String,
    message: Option<String>,
    changes: Option<String>,
}

fn corrupt(detail: String) -> StoreError {
    StoreError::Corrupt { entity: ENTITY, detail }
}

/// The `changes` column: a JSON array of `[field, before, after]`, `NULL` for none.
pub(crate) fn pack(changes: &[FieldChange]) -> Result<Option<String>, StoreError> {
    if changes.is_empty() {
        return Ok(None);
    }
    let rows: Vec<(&str, Option<&str>, Option<&str>)> =
        changes.iter().map(|c| (c.field.as_str(), c.before.as_deref(), c.after.as_deref())).collect();
    serde_json::to_string(&rows).map(Some).map_err(|e| corrupt(format!("field changes: {e}")))
}

/// The changes a `changes` column holds, sorted by field.
fn unpack(changes: Option<&str>) -> Result<Vec<FieldChange>, StoreError> {
    let Some(text) = changes else { return Ok(Vec::new()) };
    let rows: Vec<(String, Option<String>, Option<String>)> =
        serde_json::from_str(text).map_err(|e| corrupt(format!("field changes: {e}")))?;
    let mut changes: Vec<FieldChange> =
        rows.into_iter().map(|(field, before, after)| FieldChange { field, before, after }).collect();
    changes.sort_by(|a, b| a.field.cmp(&b.field));
    Ok(changes)
}

impl HistoryRow {
    fn into_entry(self) -> Result<HistoryEntry, StoreError> {
        let changes = unpack(self.changes.as_deref())?;
        let related = match (self.related_type, self.related_id) {
            (Some(t), Some(id)) => Some((t, id)),
            _ => None,
        };
        Ok(HistoryEntry {
            id: Id::new(self.id),
            at: self.at,
            correlation: self.correlation,
            record: HistoryRecord {
                object_type: self.object_type,
                object_id: self.object_id,
                related,
                action: Action::parse(&self.action).map_err(|e| corrupt(e.to_string()))?,
                changes,
                actor: Actor {
                    kind: ActorKind::parse(&self.actor_kind).map_err(|e| corrupt(e.to_string()))?,
                    name: self.actor,
                },
                message: self.message,
            },
        })
    }
}

/// The history filter of one object: `h.object_type = ? AND h.object_id = ?`.
fn of_object<DB>(object_type: &str, object_id: i64) -> impl FnOnce(&mut QueryBuilder<DB>) + '_
where
    DB: Backend,
    for<'q> Option<i64>: Encode<'q, DB> + Type<DB>,
    for<'q> Option<&'q str>: Encode<'q, DB> + Type<DB>,
{
    move |qb| {
        qb.push("h.object_type = ").push_bind(Some(object_type)).push(" AND h.object_id = ").push_bind(Some(object_id));
    }
}

/// History rows read per page while looking for one field's changes.
const FIELD_PAGE: u32 = 200;

/// The longest actor name the history keeps, in characters.
const MAX_ACTOR: usize = 255;

/// History rows per insert statement (11 parameters each).
const HISTORY_CHUNK: usize = 1_000;

/// Bytes of changes per insert statement: far under MySQL's smallest `max_allowed_packet`
/// worth having (16 MiB by default), however long the values (a discarded job's payload).
const HISTORY_BYTES: usize = 4 << 20;

/// Rows per insert statement of [`SqlStore::write_address_history`] (three parameters each
/// on SQLite, within its 32,766).
const ADDRESS_CHUNK: usize = 5_000;

/// Splits rows whose changes take `sizes` bytes into statements of at most `max_rows` rows and
/// about [`HISTORY_BYTES`] (a single larger row gets a statement of its own).
fn statements(sizes: &[usize], max_rows: usize) -> Vec<std::ops::Range<usize>> {
    let mut statements = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (n, size) in sizes.iter().enumerate() {
        if n > start && (n - start >= max_rows || bytes + size > HISTORY_BYTES) {
            statements.push(start..n);
            (start, bytes) = (n, 0);
        }
        bytes += size;
    }
    if start < sizes.len() {
        statements.push(start..sizes.len());
    }
    statements
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
    /// Writes `records` (empty ones skipped) under one correlation id, in the caller's
    /// transaction: the change and its record commit together. Many records go in a few
    /// multi-row statements (a bulk write's history costs one statement per
    /// [`HISTORY_CHUNK`] records, not one per record).
    pub(crate) async fn write_history(
        conn: &mut DB::Connection,
        records: &[HistoryRecord],
        correlation: &str,
        at: DateTime<Utc>,
    ) -> Result<usize, StoreError> {
        let records: Vec<&HistoryRecord> = records.iter().filter(|r| !r.is_empty()).collect();
        let changes = records.iter().map(|r| pack(&r.changes)).collect::<Result<Vec<_>, _>>()?;
        // The column holds MAX_ACTOR characters (MySQL refuses more); a longer name from a host's
        // access hook is cut rather than failing the change it records.
        let actors: Vec<String> = records.iter().map(|r| r.actor.name.chars().take(MAX_ACTOR).collect()).collect();
        let sizes: Vec<usize> = changes.iter().map(|c| c.as_ref().map_or(0, String::len)).collect();
        for rows in statements(&sizes, HISTORY_CHUNK) {
            let mut qb = QueryBuilder::new(
                "INSERT INTO change_history (object_type, object_id, related_type, related_id, action, actor_kind, \
                 actor, at, correlation, message, changes) ",
            );
            qb.push_values(rows, |mut v, n| {
                let record = records[n];
                v.push_bind(Some(record.object_type.as_str()))
                    .push_bind(Some(record.object_id))
                    .push_bind(record.related.as_ref().map(|(t, _)| t.as_str()))
                    .push_bind(record.related.as_ref().map(|(_, id)| *id))
                    .push_bind(Some(record.action.as_str()))
                    .push_bind(Some(record.actor.kind.as_str()))
                    .push_bind(Some(actors[n].as_str()))
                    .push_bind(Some(at))
                    .push_bind(Some(correlation))
                    .push_bind(record.message.as_deref())
                    .push_bind(changes[n].as_deref());
            });
            qb.build().execute(&mut *conn).await.map_err(err(ENTITY))?;
        }
        Ok(records.len())
    }

    /// Writes the history rows `rows` of stored IP addresses, all by `actor` at `at` under one
    /// correlation id and message, in the caller's transaction. The statement joins the rows
    /// to `ip_addresses` by key, so the addresses' ids (of rows this transaction just
    /// inserted, too) are never read back; the values shared by every row are bound once.
    /// Each call's rows get ids after those of earlier calls (an address named in two calls
    /// has its records in call order); within a call the database may number them in any
    /// order, so a call names an address at most once. An address that is not stored is an
    /// error: the caller names only rows it holds locked or just wrote.
    ///
    /// On MySQL/MariaDB an `INSERT ... SELECT` holds `change_history`'s auto-increment lock
    /// to the end of the statement at `innodb_autoinc_lock_mode = 1` (MariaDB's default):
    /// other inserts into the history wait for one statement (see docs/operations.md).
    pub(crate) async fn write_address_history(
        conn: &mut DB::Connection,
        rows: &[AddressChange],
        actor: &Actor,
        message: &str,
        correlation: &str,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let name: String = actor.name.chars().take(MAX_ACTOR).collect();
        // Counted as MySQL's JSON document carries them: escaped again (a quote or backslash
        // doubles) and wrapped in the row's key and action.
        let sizes: Vec<usize> = rows.iter().map(|r| 2 * r.changes.len() + 64).collect();
        for range in statements(&sizes, ADDRESS_CHUNK) {
            let rows = &rows[range];
            let mut qb = QueryBuilder::new(
                "INSERT INTO change_history (object_type, object_id, action, actor_kind, actor, at, correlation, \
                 message, changes) SELECT ",
            );
            qb.push_bind(Some(<ralph_core::IpAddress as ralph_core::Entity>::NAME))
                .push(", a.id, v.action, ")
                .push_bind(Some(actor.kind.as_str()))
                .push(", ")
                .push_bind(Some(name.as_str()))
                .push(", ")
                .push_bind(Some(at))
                .push(", ")
                .push_bind(Some(correlation))
                .push(", ")
                .push_bind(Some(message))
                .push(", v.changes FROM ");
            DB::push_address_changes(&mut qb, rows);
            let done = qb.build().execute(&mut *conn).await.map_err(err(ENTITY))?;
            let found = DB::rows_affected(&done);
            if found != rows.len() as u64 {
                return Err(corrupt(format!("history of {} addresses written, {found} of them stored", rows.len())));
            }
        }
        Ok(())
    }

    /// History rows selected by `filter` (pushed after `WHERE` on `change_history h`), in
    /// `order`, at most `limit`.
    async fn history_where(
        &self,
        filter: impl FnOnce(&mut QueryBuilder<DB>),
        order: &str,
        limit: Option<u32>,
    ) -> Result<Vec<HistoryEntry>, StoreError> {
        let mut qb = QueryBuilder::new(
            "SELECT h.id, h.object_type, h.object_id, h.related_type, h.related_id, h.action, h.actor_kind, h.actor, \
             h.at, h.correlation, h.message, h.changes FROM change_history h WHERE ",
        );
        filter(&mut qb);
        qb.push(" ORDER BY ").push(order);
        if let Some(limit) = limit {
            qb.push(" LIMIT ").push_bind(Some(i64::from(limit)));
        }
        let rows = qb.build_query_as::<HistoryRow>().fetch_all(self.pool()).await.map_err(err(ENTITY))?;
        rows.into_iter().map(HistoryRow::into_entry).collect()
    }

    /// Deletes the history rows with these ids in one short transaction.
    async fn delete_history(&self, ids: &[i64]) -> Result<u64, StoreError> {
        self.retrying(ENTITY, || async {
            let mut qb = QueryBuilder::new("DELETE FROM change_history WHERE id IN (");
            push_list(&mut qb, ids.iter().map(|id| Some(*id)));
            qb.push(")");
            let done = qb.build().execute(self.pool()).await.map_err(err(ENTITY))?;
            Ok(DB::rows_affected(&done))
        })
        .await
    }

    /// Ids of up to `chunk` rows matching `filter`, oldest first.
    async fn history_ids(
        &self,
        filter: impl FnOnce(&mut QueryBuilder<DB>),
        chunk: u32,
    ) -> Result<Vec<i64>, StoreError> {
        let mut qb = QueryBuilder::new("SELECT id FROM change_history WHERE ");
        filter(&mut qb);
        qb.push(" ORDER BY id LIMIT ").push_bind(Some(i64::from(chunk)));
        qb.build_query_scalar::<i64>().fetch_all(self.pool()).await.map_err(err(ENTITY))
    }
}

/// A history row's id and time, for pruning by age.
#[derive(FromRow)]
struct AgedRow {
    id: i64,
    at: DateTime<Utc>,
}

#[derive(FromRow)]
struct ObjectRow {
    object_type: String,
    object_id: i64,
}

#[async_trait]
impl<DB> HistoryStore for SqlStore<DB>
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
    async fn object_history(
        &self,
        object_type: &str,
        object_id: i64,
        limit: u32,
    ) -> Result<Vec<HistoryEntry>, StoreError> {
        self.history_where(of_object(object_type, object_id), "h.id DESC", Some(limit)).await
    }

    async fn object_at(&self, object_type: &str, object_id: i64, at: DateTime<Utc>) -> Result<ObjectState, StoreError> {
        let entries = self.history_where(of_object(object_type, object_id), "h.id", None).await?;
        Ok(ObjectState::at(&entries, at))
    }

    async fn field_history(
        &self,
        object_type: &str,
        object_id: i64,
        field: &str,
        limit: u32,
    ) -> Result<Vec<HistoryEntry>, StoreError> {
        // The object's rows newest first, a page at a time, keeping those that changed `field`
        // (the text test in SQL only skips rows that cannot match: a value may contain the
        // name too, so each kept row is checked).
        let limit = limit as usize;
        let mut found = Vec::new();
        let mut below = i64::MAX;
        // The name as the JSON holds it; one that JSON escapes (a quote, a backslash) is not
        // pre-filtered, since LIKE reads a backslash as its own escape on PostgreSQL and MySQL.
        let quoted = serde_json::to_string(field).map_err(|e| corrupt(format!("field name: {e}")))?;
        let pattern = (!quoted.contains('\\')).then(|| format!("%{quoted}%"));
        while found.len() < limit {
            let page = self
                .history_where(
                    |qb| {
                        of_object(object_type, object_id)(qb);
                        qb.push(" AND h.id < ").push_bind(Some(below));
                        if let Some(pattern) = &pattern {
                            qb.push(" AND h.changes LIKE ").push_bind(Some(pattern.as_str()));
                        }
                    },
                    "h.id DESC",
                    Some(FIELD_PAGE),
                )
                .await?;
            let Some(last) = page.last() else { break };
            below = last.id.get();
            let full = page.len() == FIELD_PAGE as usize;
            for mut entry in page {
                entry.record.changes.retain(|c| c.field == field);
                if !entry.record.changes.is_empty() && found.len() < limit {
                    found.push(entry);
                }
            }
            if !full {
                break;
            }
        }
        Ok(found)
    }

    async fn deleted_objects(&self, object_type: &str, limit: u32) -> Result<Vec<HistoryEntry>, StoreError> {
        self.history_where(
            |qb| {
                // The action as a literal: the partial index on deletions serves only that.
                qb.push("h.object_type = ").push_bind(Some(object_type)).push(" AND h.action = 'delete'");
            },
            "h.id DESC",
            Some(limit),
        )
        .await
    }

    async fn correlated(&self, correlation: &str) -> Result<Vec<HistoryEntry>, StoreError> {
        self.history_where(
            |qb| {
                qb.push("h.correlation = ").push_bind(Some(correlation));
            },
            "h.id",
            None,
        )
        .await
    }

    async fn prune_history(&self, retention: &Retention) -> Result<u64, StoreError> {
        let chunk = retention.chunk.max(1);
        let mut pruned = 0;
        // An age past what the clock can subtract (from a queued job's payload, say) keeps
        // everything.
        let cutoff = retention
            .max_age
            .and_then(|age| chrono::Duration::from_std(age).ok())
            .and_then(|age| Utc::now().checked_sub_signed(age));
        if let Some(cutoff) = cutoff {
            // Oldest first along the `at` index, each chunk starting at the time the last one
            // ended: a scan from the start would cross every row deleted so far (dead until
            // vacuumed), and one in id order would read the whole table to find no more.
            let mut from: Option<DateTime<Utc>> = None;
            loop {
                let mut qb = QueryBuilder::new("SELECT id, at FROM change_history WHERE at < ");
                qb.push_bind(Some(cutoff));
                if let Some(from) = from {
                    qb.push(" AND at >= ").push_bind(Some(from));
                }
                qb.push(" ORDER BY at, id LIMIT ").push_bind(Some(i64::from(chunk)));
                let rows = qb.build_query_as::<AgedRow>().fetch_all(self.pool()).await.map_err(err(ENTITY))?;
                let Some(last) = rows.last() else { break };
                from = Some(last.at);
                let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
                pruned += self.delete_history(&ids).await?;
            }
        }
        if let Some(keep) = retention.max_per_object {
            loop {
                let mut qb = QueryBuilder::new(
                    "SELECT object_type, object_id FROM change_history GROUP BY object_type, object_id HAVING COUNT(*) > ",
                );
                qb.push_bind(Some(i64::from(keep))).push(" LIMIT ").push_bind(Some(i64::from(chunk)));
                let objects = qb.build_query_as::<ObjectRow>().fetch_all(self.pool()).await.map_err(err(ENTITY))?;
                if objects.is_empty() {
                    break;
                }
                for o in objects {
                    // The oldest id kept; everything of the object below it goes.
                    let floor = if keep == 0 {
                        i64::MAX
                    } else {
                        let mut qb = QueryBuilder::new("SELECT id FROM change_history WHERE object_type = ");
                        qb.push_bind(Some(o.object_type.as_str()))
                            .push(" AND object_id = ")
                            .push_bind(Some(o.object_id))
                            .push(" ORDER BY id DESC LIMIT 1 OFFSET ")
                            .push_bind(Some(i64::from(keep - 1)));
                        let floor =
                            qb.build_query_scalar::<i64>().fetch_optional(self.pool()).await.map_err(err(ENTITY))?;
                        let Some(floor) = floor else { continue };
                        floor
                    };
                    loop {
                        let ids = self
                            .history_ids(
                                |qb| {
                                    qb.push("object_type = ")
                                        .push_bind(Some(o.object_type.as_str()))
                                        .push(" AND object_id = ")
                                        .push_bind(Some(o.object_id))
                                        .push(" AND id < ")
                                        .push_bind(Some(floor));
                                },
                                chunk,
                            )
                            .await?;
                        if ids.is_empty() {
                            break;
                        }
                        pruned += self.delete_history(&ids).await?;
                    }
                }
            }
        }
        Ok(pruned)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_cap_rows_and_bytes() {
        let sizes: Vec<usize> = statements(&[10; 2_500], HISTORY_CHUNK).into_iter().map(|r| r.len()).collect();
        assert_eq!(sizes, [1_000, 1_000, 500]);
        let sizes: Vec<usize> = statements(&[3 << 20; 5], HISTORY_CHUNK).into_iter().map(|r| r.len()).collect();
        assert_eq!(sizes, [1, 1, 1, 1, 1], "each 3 MiB row alone: two would pass 4 MiB");
        assert!(statements(&[], HISTORY_CHUNK).is_empty());
    }

    #[test]
    fn changes_round_trip_sorted_and_none_is_null() {
        let changes = vec![
            FieldChange::new("status", Some("used"), None),
            FieldChange::new("hostname", None, Some("a \"quoted\" \\ name")),
        ];
        let text = pack(&changes).expect("packs").expect("some");
        let back = unpack(Some(&text)).expect("unpacks");
        assert_eq!(back, vec![changes[1].clone(), changes[0].clone()]);
        assert_eq!(pack(&[]).expect("packs"), None);
        assert!(unpack(None).expect("none").is_empty());
        assert!(unpack(Some("{not json")).is_err_and(|e| matches!(e, StoreError::Corrupt { .. })));
    }
}
