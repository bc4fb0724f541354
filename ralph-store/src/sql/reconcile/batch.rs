//! The fast path of an apply and of its bookkeeping: many devices in one transaction, each
//! kind of write one multi-row statement per chunk.
//!
//! A batch takes the common device groups only: a device created with its components, and a
//! stored device whose fields are updated or which gains components. It checks everything the
//! one-device path checks (items still pending, devices still there, fields neither locked
//! nor changed since the plan, values valid). When a check fails or a statement errs, the
//! batch rolls back as a whole and its devices go through the one-device path, which gives
//! every item its own status: the outcome is the same, only the number of round trips differs.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use ralph_core::history::{Actor, HistoryRecord};
use ralph_core::reconcile::{
    Bookkeeping, Change, DeviceRef, DeviceState, Field, FieldState, ItemStatus, Plan, PlanItem, ScanId,
};
use ralph_core::{Component, Device, DeviceModel, Entity, Id, StoreError};
use sqlx::{ColumnIndex, Decode, Encode, Executor, IntoArguments, QueryBuilder, Type};

use super::{
    CHUNK, ENTITY, GroupOutcome, checked_update, created_record, created_values, field_states, inventory_provenance,
    model_changed, model_key, new_device, updated_record,
};
use crate::dialect::{Backend, ServerTraits, Stamp};
use crate::sql::history::ColumnText;
use crate::sql::inventory::Table;
use crate::sql::{Mode, Writer, err, push_list};
use crate::store::{SqlStore, commit};

/// Devices per batch transaction.
pub(super) const BATCH_DEVICES: usize = 500;
/// Bookkeeping updates per transaction (each statement still takes at most [`CHUNK`] keys).
const BOOKKEEPING_PER_TX: usize = 5_000;

/// Whether a device's pending items can go in a batch: a creation followed by its components,
/// or one update and components of a stored device, each item depending only on items before
/// it in the group or on items already applied.
pub(super) fn batchable(device: DeviceRef, items: &[&PlanItem], statuses: &BTreeMap<u32, bool>) -> bool {
    let mut seen = BTreeSet::new();
    let mut updates = 0;
    for (n, item) in items.iter().enumerate() {
        let fits = match (&item.change, device) {
            (Change::CreateDevice { device: key, .. }, DeviceRef::New(k)) => n == 0 && *key == k,
            (Change::CreateComponent { device: d, .. }, _) => {
                *d == device && (n > 0 || matches!(device, DeviceRef::Existing(_)))
            }
            (Change::UpdateDevice { device: d, .. }, DeviceRef::Existing(id)) => {
                updates += 1;
                *d == id && updates == 1
            }
            _ => false,
        };
        if !fits || !item.depends_on.iter().all(|d| seen.contains(d) || statuses.get(d) == Some(&true)) {
            return false;
        }
        seen.insert(item.seq);
    }
    !items.is_empty()
}

/// A provenance as a grouping key: (source, priority, time, by a person).
type ProvenanceKey<'a> = (&'a str, u32, DateTime<Utc>, bool);
/// A miss counter as a grouping key: (count, last scan).
type MissKey<'a> = (u32, Option<&'a str>);

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
    /// Inserts `values` in multi-row statements; returns their ids in order.
    async fn insert_rows<T: Table>(
        conn: &mut DB::Connection,
        values: &[T],
        server: ServerTraits,
    ) -> Result<Vec<i64>, StoreError> {
        let Some(first) = values.first() else { return Ok(Vec::new()) };
        let mut columns = ColumnText::default();
        first.columns(&mut columns)?;
        let per_statement = (DB::MAX_PARAMETERS / columns.0.len().max(1)).clamp(1, CHUNK);
        let mut ids = Vec::with_capacity(values.len());
        for chunk in values.chunks(per_statement) {
            let mut qb = QueryBuilder::new(format!("INSERT INTO {} (", T::TABLE));
            first.columns(&mut Writer::new(&mut qb, Mode::Names))?;
            qb.push(") VALUES ");
            for (n, value) in chunk.iter().enumerate() {
                qb.push(if n == 0 { "(" } else { ", (" });
                value.columns(&mut Writer::new(&mut qb, Mode::Values))?;
                qb.push(")");
            }
            let got = DB::insert_ids(conn, qb, chunk.len(), server).await?;
            if got.len() != chunk.len() {
                return Err(StoreError::Corrupt { entity: T::NAME, detail: "a multi-row insert lost rows".into() });
            }
            ids.extend(got);
        }
        Ok(ids)
    }

    /// Rolls a batch back before its devices go one by one (so none of them waits on the
    /// batch's locks).
    async fn give_up(tx: sqlx::Transaction<'static, DB>) -> Result<Option<GroupOutcome>, StoreError> {
        tx.rollback().await.map_err(err(ENTITY))?;
        Ok(None)
    }

    /// Applies the groups of `groups` (each [`batchable`]) in one transaction. `Ok(None)`: a
    /// check failed and nothing was written; the caller applies these devices one by one.
    #[allow(clippy::too_many_lines)]
    pub(super) async fn apply_batch(
        &self,
        plan: Id<Plan>,
        scan: &ScanId,
        groups: &[(DeviceRef, &[&PlanItem])],
        actor: &Actor,
        correlation: &str,
    ) -> Result<Option<GroupOutcome>, StoreError> {
        let server = self.server_traits().await?;
        let items: Vec<&PlanItem> = groups.iter().flat_map(|(_, items)| items.iter().copied()).collect();
        let mut tx = self.begin(ENTITY).await?;

        let seqs: Vec<u32> = items.iter().map(|i| i.seq).collect();
        if Self::lock_pending_items(&mut tx, plan, &seqs).await?.len() != items.len() {
            return Self::give_up(tx).await;
        }

        // The stored devices, locked in id order, and their current state.
        let mut stored: Vec<i64> = groups
            .iter()
            .filter_map(|(d, _)| match d {
                DeviceRef::Existing(id) => Some(id.get()),
                DeviceRef::New(_) => None,
            })
            .collect();
        stored.sort_unstable();
        if Self::lock_devices(&mut tx, &stored).await? != stored.len() {
            return Self::give_up(tx).await;
        }
        let states: BTreeMap<i64, DeviceState> =
            Self::device_states(&mut tx, &stored).await?.into_iter().map(|s| (s.id.get(), s)).collect();

        // Every check before any write.
        let mut updates = Vec::new();
        for (_, items) in groups {
            for item in *items {
                if let Change::UpdateDevice { device, fields } = &item.change {
                    let Some(state) = states.get(&device.get()) else { return Self::give_up(tx).await };
                    match checked_update(state, *device, fields) {
                        Ok(values) => updates.push((*device, values, fields)),
                        Err(_) => return Self::give_up(tx).await,
                    }
                }
            }
        }

        // New devices, their models resolved once per model.
        let mut models: BTreeMap<_, Id<DeviceModel>> = BTreeMap::new();
        let mut new_devices = Vec::new();
        let mut new_keys = Vec::new();
        for (_, items) in groups {
            if let Some(Change::CreateDevice { device: key, fields, .. }) = items.first().map(|i| &i.change) {
                let values = created_values(fields);
                let (kind, name, manufacturer) = model_key(&values);
                let cache_key = (kind.as_str(), name, manufacturer);
                let model = match models.get(&cache_key) {
                    Some(id) => *id,
                    None => {
                        let id = Self::model_for(&mut tx, &values).await?;
                        models.insert(cache_key, id);
                        id
                    }
                };
                match new_device(fields, model) {
                    Ok(device) => new_devices.push(device),
                    Err(_) => return Self::give_up(tx).await,
                }
                new_keys.push((*key, fields));
            }
        }
        let new_ids = Self::insert_rows(&mut tx, &new_devices, server).await?;
        let created: BTreeMap<u32, Id<Device>> =
            new_keys.iter().zip(&new_ids).map(|((key, _), id)| (*key, Id::new(*id))).collect();

        // Devices whose model changes one by one (the model is found or created first), the
        // rest together.
        let mut same_model = Vec::new();
        for (device, values, fields) in &updates {
            if model_changed(fields) {
                Self::write_device_columns(&mut tx, *device, values, true).await?;
            } else {
                same_model.push((*device, values));
            }
        }
        Self::write_many_device_columns(&mut tx, &same_model).await?;

        // Provenance of the written fields: the old rows out, field by field, then the new in.
        let mut rows = Vec::new();
        for ((_, fields), id) in new_keys.iter().zip(&new_ids) {
            rows.extend(field_states(fields).into_iter().map(|(f, s)| (*id, f, s)));
        }
        for (device, _, fields) in &updates {
            rows.extend(field_states(fields).into_iter().map(|(f, s)| (device.get(), f, s)));
        }
        // A device created here has no provenance rows (ids are never reused: AUTOINCREMENT,
        // identity, AUTO_INCREMENT; rows of a deleted device go with it), so only updated
        // devices' rows are deleted (on MariaDB a delete by new ids would lock the gap above
        // the highest id, which a concurrent batch's inserts need).
        let mut by_field: BTreeMap<Field, Vec<i64>> = BTreeMap::new();
        for (device, _, fields) in &updates {
            for d in fields.iter() {
                by_field.entry(d.field).or_default().push(device.get());
            }
        }
        for (field, ids) in &by_field {
            for chunk in ids.chunks(CHUNK) {
                let mut qb = QueryBuilder::new("DELETE FROM reconcile_fields WHERE field = ");
                qb.push_bind(Some(field.as_str())).push(" AND device_id IN (");
                push_list(&mut qb, chunk.iter().map(|id| Some(*id)));
                qb.push(")");
                qb.build().persistent(DB::PREPARE_KEY_LISTS).execute(&mut *tx).await.map_err(err(ENTITY))?;
            }
        }
        let rows: Vec<(i64, Field, &FieldState)> = rows.iter().map(|(id, f, state)| (*id, *f, state)).collect();
        Self::insert_field_rows(&mut tx, &rows).await?;

        // New components, on stored devices or on devices of this batch.
        let mut components = Vec::new();
        let mut component_items = Vec::new();
        for (_, items) in groups {
            for item in *items {
                if let Change::CreateComponent { device, kind, provenance } = &item.change {
                    let device = match device {
                        DeviceRef::Existing(id) => *id,
                        DeviceRef::New(key) => match created.get(key) {
                            Some(id) => *id,
                            None => return Self::give_up(tx).await,
                        },
                    };
                    let component = Component { device, kind: kind.clone() };
                    if component.validate().is_err() {
                        return Self::give_up(tx).await;
                    }
                    components.push(component);
                    component_items.push((item.seq, provenance));
                }
            }
        }
        let component_ids = Self::insert_rows(&mut tx, &components, server).await?;
        let provenance: Vec<(i64, &ralph_core::reconcile::Provenance)> =
            component_ids.iter().zip(&component_items).map(|(id, (_, p))| (*id, *p)).collect();
        for chunk in provenance.chunks(CHUNK) {
            let mut qb = QueryBuilder::new(
                "INSERT INTO reconcile_components (component_id, source, priority, observed_at, by_person, \
                 miss_count) ",
            );
            qb.push_values(chunk, |mut row, (id, p)| {
                row.push_bind(Some(*id))
                    .push_bind(Some(p.source.as_str()))
                    .push_bind(Some(i64::from(p.priority)))
                    .push_bind(Some(p.at))
                    .push_bind(p.by_person)
                    .push_bind(Some(0_i64));
            });
            // An insert has no plan to go stale: a full chunk's statement is kept prepared on
            // every backend (a shorter one, each length its own text, only where lists are).
            qb.build()
                .persistent(chunk.len() == CHUNK || DB::PREPARE_KEY_LISTS)
                .execute(&mut *tx)
                .await
                .map_err(err(ENTITY))?;
        }

        // History: the records each item's own transaction would have written, in item order.
        let component_of: BTreeMap<u32, (i64, &Component)> = component_items
            .iter()
            .zip(component_ids.iter().zip(&components))
            .map(|((seq, _), (id, c))| (*seq, (*id, c)))
            .collect();
        let update_of: BTreeMap<i64, _> = updates.iter().map(|(d, _, f)| (d.get(), *f)).collect();
        let mut records: Vec<HistoryRecord> = Vec::with_capacity(items.len());
        let mut statuses = Vec::with_capacity(items.len());
        let mut reasons: Vec<(i64, String)> = Vec::new();
        for item in &items {
            let record = match &item.change {
                Change::CreateDevice { device: key, fields, .. } => {
                    let id = created[key];
                    reasons.push((i64::from(item.seq), id.get().to_string()));
                    created_record(id, fields, actor)
                }
                Change::UpdateDevice { device, .. } => updated_record(*device, update_of[&device.get()], actor),
                Change::CreateComponent { .. } => {
                    let (id, component) = component_of[&item.seq];
                    Self::component_record(id, ralph_core::history::Action::Create, None, Some(component), actor)?
                }
                _ => return Self::give_up(tx).await,
            };
            records.push(record.with_message(&format!("scan {scan}, plan {plan} item {}", item.seq)));
            statuses.push((item.seq, ItemStatus::Applied));
        }
        Self::write_history(&mut tx, &records, correlation, Utc::now()).await?;

        // Every item applied; a created device's id kept in its item's reason.
        let reason_of: BTreeMap<i64, &str> = reasons.iter().map(|(seq, r)| (*seq, r.as_str())).collect();
        for chunk in items.chunks(CHUNK) {
            let mut qb = QueryBuilder::new("UPDATE reconcile_plan_items SET status = 'applied', reason = ");
            let made: Vec<(i64, &str)> =
                chunk.iter().filter_map(|i| reason_of.get(&i64::from(i.seq)).map(|r| (i64::from(i.seq), *r))).collect();
            if made.is_empty() {
                qb.push("NULL");
            } else {
                qb.push("CASE seq");
                for (seq, reason) in &made {
                    qb.push(" WHEN ").push_bind(Some(*seq)).push(" THEN ").push_bind(Some(*reason));
                }
                qb.push(" END");
            }
            qb.push(" WHERE plan_id = ").push_bind(Some(plan.get())).push(" AND seq IN (");
            push_list(&mut qb, chunk.iter().map(|i| Some(i64::from(i.seq))));
            qb.push(")");
            qb.build().persistent(DB::PREPARE_KEY_LISTS).execute(&mut *tx).await.map_err(err(ENTITY))?;
        }
        commit(tx, ENTITY).await?;
        Ok(Some((statuses, created)))
    }

    /// Applies a plan's bookkeeping: the updates that set the same values go in one statement
    /// per [`CHUNK`] keys (a re-scan credits most fields to the same newer observation), in
    /// short transactions. For a key named twice the later update wins, as applied in order; a
    /// device or component gone since is skipped.
    pub(super) async fn apply_bookkeeping_grouped(&self, updates: &[Bookkeeping]) -> Result<(), StoreError> {
        for chunk in updates.chunks(BOOKKEEPING_PER_TX) {
            let mut fields: BTreeMap<(i64, Field), ProvenanceKey<'_>> = BTreeMap::new();
            let mut component_provenance: BTreeMap<i64, ProvenanceKey<'_>> = BTreeMap::new();
            let mut device_misses: BTreeMap<i64, MissKey<'_>> = BTreeMap::new();
            let mut component_misses: BTreeMap<i64, MissKey<'_>> = BTreeMap::new();
            for update in chunk {
                match update {
                    Bookkeeping::FieldProvenance { device, field, provenance: p } => {
                        fields.insert((device.get(), *field), (p.source.as_str(), p.priority, p.at, p.by_person));
                    }
                    Bookkeeping::ComponentProvenance { component, provenance: p } => {
                        component_provenance
                            .insert(component.get(), (p.source.as_str(), p.priority, p.at, p.by_person));
                    }
                    Bookkeeping::DeviceMisses { device, misses } => {
                        device_misses
                            .insert(device.get(), (misses.count, misses.last_scan.as_ref().map(|s| s.0.as_str())));
                    }
                    Bookkeeping::ComponentMisses { component, misses } => {
                        component_misses
                            .insert(component.get(), (misses.count, misses.last_scan.as_ref().map(|s| s.0.as_str())));
                    }
                }
            }
            let fields = invert(fields.into_iter().map(|((id, field), p)| (id, (field, p))));
            let component_provenance = invert(component_provenance);
            let device_misses = invert(device_misses);
            let component_misses = invert(component_misses);
            let inventory = inventory_provenance();
            self.retrying(ENTITY, || async {
                let mut tx = self.begin(ENTITY).await?;
                for ((field, (source, priority, at, by_person)), ids) in &fields {
                    for ids in ids.chunks(CHUNK) {
                        let mut qb = QueryBuilder::new("UPDATE reconcile_fields SET source = ");
                        qb.push_bind(Some(*source))
                            .push(", priority = ")
                            .push_bind(Some(i64::from(*priority)))
                            .push(", observed_at = ")
                            .push_bind(Some(*at))
                            .push(", by_person = ")
                            .push_bind(*by_person)
                            .push(" WHERE field = ")
                            .push_bind(Some(field.as_str()))
                            .push(" AND device_id IN (");
                        push_list(&mut qb, ids.iter().map(|id| Some(*id)));
                        qb.push(")");
                        qb.build().persistent(DB::PREPARE_KEY_LISTS).execute(&mut *tx).await.map_err(err(ENTITY))?;
                    }
                }
                for ((source, priority, at, by_person), ids) in &component_provenance {
                    for ids in ids.chunks(CHUNK) {
                        Self::ensure_component_rows(&mut tx, (source, *priority, *at, *by_person), ids).await?;
                        let mut qb = QueryBuilder::new("UPDATE reconcile_components SET source = ");
                        qb.push_bind(Some(*source))
                            .push(", priority = ")
                            .push_bind(Some(i64::from(*priority)))
                            .push(", observed_at = ")
                            .push_bind(Some(*at))
                            .push(", by_person = ")
                            .push_bind(*by_person)
                            .push(" WHERE component_id IN (");
                        push_list(&mut qb, ids.iter().map(|id| Some(*id)));
                        qb.push(")");
                        qb.build().persistent(DB::PREPARE_KEY_LISTS).execute(&mut *tx).await.map_err(err(ENTITY))?;
                    }
                }
                for ((count, scan), ids) in &device_misses {
                    for ids in ids.chunks(CHUNK) {
                        let mut qb = QueryBuilder::new(format!(
                            "{} reconcile_devices (device_id, miss_count) SELECT id, 0 FROM devices WHERE id IN (",
                            DB::INSERT_IGNORE
                        ));
                        push_list(&mut qb, ids.iter().map(|id| Some(*id)));
                        qb.push(")").push(DB::ignore_conflict("device_id"));
                        qb.build().persistent(DB::PREPARE_KEY_LISTS).execute(&mut *tx).await.map_err(err(ENTITY))?;
                        let mut qb = QueryBuilder::new("UPDATE reconcile_devices SET miss_count = ");
                        qb.push_bind(Some(i64::from(*count)))
                            .push(", miss_scan = ")
                            .push_bind(*scan)
                            .push(" WHERE device_id IN (");
                        push_list(&mut qb, ids.iter().map(|id| Some(*id)));
                        qb.push(")");
                        qb.build().persistent(DB::PREPARE_KEY_LISTS).execute(&mut *tx).await.map_err(err(ENTITY))?;
                    }
                }
                for ((count, scan), ids) in &component_misses {
                    for ids in ids.chunks(CHUNK) {
                        Self::ensure_component_rows(
                            &mut tx,
                            (inventory.source.as_str(), inventory.priority, inventory.at, inventory.by_person),
                            ids,
                        )
                        .await?;
                        let mut qb = QueryBuilder::new("UPDATE reconcile_components SET miss_count = ");
                        qb.push_bind(Some(i64::from(*count)))
                            .push(", miss_scan = ")
                            .push_bind(*scan)
                            .push(" WHERE component_id IN (");
                        push_list(&mut qb, ids.iter().map(|id| Some(*id)));
                        qb.push(")");
                        qb.build().persistent(DB::PREPARE_KEY_LISTS).execute(&mut *tx).await.map_err(err(ENTITY))?;
                    }
                }
                commit(tx, ENTITY).await
            })
            .await?;
        }
        Ok(())
    }

    /// Creates the provenance rows of these components with `provenance` where they have none
    /// (a component gone since is skipped).
    pub(super) async fn ensure_component_rows(
        conn: &mut DB::Connection,
        (source, priority, at, by_person): ProvenanceKey<'_>,
        ids: &[i64],
    ) -> Result<(), StoreError> {
        let mut qb = QueryBuilder::new(format!(
            "{} reconcile_components (component_id, source, priority, observed_at, by_person, miss_count) SELECT id, ",
            DB::INSERT_IGNORE
        ));
        qb.push_bind(Some(source))
            .push(", ")
            .push_bind(Some(i64::from(priority)))
            .push(", ")
            .push_bind(Some(at))
            .push(", ")
            .push_bind(by_person)
            .push(", 0 FROM components WHERE id IN (");
        push_list(&mut qb, ids.iter().map(|id| Some(*id)));
        qb.push(")").push(DB::ignore_conflict("component_id"));
        qb.build().persistent(DB::PREPARE_KEY_LISTS).execute(&mut *conn).await.map(drop).map_err(err(ENTITY))
    }
}

/// Groups keys by the value they are set to.
fn invert<K: Ord, V: Ord>(pairs: impl IntoIterator<Item = (K, V)>) -> BTreeMap<V, Vec<K>> {
    let mut out: BTreeMap<V, Vec<K>> = BTreeMap::new();
    for (k, v) in pairs {
        out.entry(v).or_default().push(k);
    }
    out
}
