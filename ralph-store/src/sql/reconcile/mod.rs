//! Reconciliation in the store: snapshots loaded from the inventory plus provenance, plans kept
//! as item rows, applied one device per transaction (a savepoint per item, a history row per
//! changed object), conflicts, and facts checksums per address.
//!
//! What the inventory holds (serial, host name, management address, model, manufacturer,
//! type) is the truth; `reconcile_fields` adds each value's provenance. A value the inventory
//! holds that reconciliation did not write (a person's edit through the inventory API) counts
//! as a person's: facts fill empty fields around it but never replace it.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use ralph_core::history::{Action, Actor, FieldChange, HistoryRecord, new_correlation};
use ralph_core::reconcile::{
    ApplyReport, Bookkeeping, Change, Checksum, ComponentState, DeviceRef, DeviceState, Field, FieldDiff, FieldState,
    ItemStatus, Misses, Plan, PlanItem, Provenance, ReconcileStore, Scan, ScanId, Snapshot, SnapshotQuery,
    StoredConflict, Suppressed, Unresolved,
};
use ralph_core::{
    AssetStatus, Component, ComponentKind, Device, DeviceModel, DeviceType, Entity, Id, Placement, StoreError,
    ValidationError, ip_key,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sqlx::{ColumnIndex, Connection, Decode, Encode, Executor, FromRow, IntoArguments, QueryBuilder, Type};
use tracing::{debug, warn};

mod batch;

use super::history::ColumnText;
use super::inventory::{ComponentRow, Table};
use super::{err, push_list};
use crate::dialect::{Backend, Stamp};
use crate::error::transient_conflict;
use crate::store::{SqlStore, TRACE_TARGET, commit};

const ENTITY: &str = "reconciliation";
/// Keys bound per `IN (...)` list.
const CHUNK: usize = 500;
/// The source credited with inventory values reconciliation did not write.
const INVENTORY: &str = "inventory";

fn to_json<T: Serialize>(value: &T) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|e| StoreError::Backend(Box::new(e)))
}

fn from_json<T: DeserializeOwned>(text: &str) -> Result<T, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt { entity: ENTITY, detail: e.to_string() })
}

fn u32_of(value: i64) -> u32 {
    u32::try_from(value).unwrap_or(u32::MAX)
}

/// The comparison key a field's value is indexed under.
fn value_key(field: Field, value: &str) -> Option<String> {
    match field {
        Field::SerialNumber => Some(value.to_uppercase()),
        Field::ManagementIp => value.parse::<IpAddr>().ok().map(ip_key),
        _ => None,
    }
}

fn status_columns(status: &ItemStatus) -> (&'static str, Option<&str>) {
    match status {
        ItemStatus::Pending => ("pending", None),
        ItemStatus::Applied => ("applied", None),
        ItemStatus::Failed(r) => ("failed", Some(r.as_str())),
        ItemStatus::Skipped(r) => ("skipped", Some(r.as_str())),
    }
}

fn action_name(change: &Change) -> &'static str {
    match change {
        Change::CreateDevice { .. } => "create_device",
        Change::UpdateDevice { .. } => "update_device",
        Change::DeleteDevice { .. } => "delete_device",
        Change::CreateComponent { .. } => "create_component",
        Change::UpdateComponent { .. } => "update_component",
        Change::MoveComponent { .. } => "move_component",
        Change::DeleteComponent { .. } => "delete_component",
        Change::Conflict { .. } => "conflict",
    }
}

/// The device whose transaction applies an item (a move: the device it joins).
fn item_device(change: &Change) -> Option<DeviceRef> {
    match change {
        Change::CreateDevice { device, .. } => Some(DeviceRef::New(*device)),
        Change::UpdateDevice { device, .. }
        | Change::DeleteDevice { device, .. }
        | Change::UpdateComponent { device, .. }
        | Change::DeleteComponent { device, .. } => Some(DeviceRef::Existing(*device)),
        Change::CreateComponent { device, .. } => Some(*device),
        Change::MoveComponent { to, .. } => Some(*to),
        Change::Conflict { .. } => None,
    }
}

#[derive(FromRow)]
struct ItemRow {
    seq: i64,
    body: String,
    depends_on: String,
    status: String,
    reason: Option<String>,
}

impl ItemRow {
    fn into_item(self) -> Result<PlanItem, StoreError> {
        let reason = self.reason.unwrap_or_default();
        let status = match self.status.as_str() {
            "pending" => ItemStatus::Pending,
            "applied" => ItemStatus::Applied,
            "failed" => ItemStatus::Failed(reason),
            "skipped" => ItemStatus::Skipped(reason),
            other => return Err(StoreError::Corrupt { entity: ENTITY, detail: format!("item status {other:?}") }),
        };
        Ok(PlanItem {
            seq: u32_of(self.seq),
            change: from_json(&self.body)?,
            depends_on: from_json(&self.depends_on)?,
            status,
        })
    }
}

#[derive(FromRow)]
struct NoteRow {
    kind: String,
    body: String,
}

#[derive(FromRow)]
struct PlanRow {
    scan_id: String,
}

#[derive(FromRow)]
struct InventoryDeviceRow {
    id: i64,
    serial_number: Option<String>,
    hostname: Option<String>,
    management_ip: Option<String>,
    model_name: String,
    manufacturer: Option<String>,
    kind: String,
}

#[derive(FromRow)]
struct FieldRow {
    device_id: i64,
    field: String,
    value: String,
    source: String,
    priority: i64,
    observed_at: DateTime<Utc>,
    by_person: bool,
    locked: bool,
}

#[derive(FromRow)]
struct ComponentProvenanceRow {
    component_id: i64,
    source: String,
    priority: i64,
    observed_at: DateTime<Utc>,
    by_person: bool,
    miss_count: i64,
    miss_scan: Option<String>,
}

#[derive(FromRow)]
struct MissRow {
    device_id: i64,
    miss_count: i64,
    miss_scan: Option<String>,
}

#[derive(FromRow)]
struct ConflictRow {
    id: i64,
    plan_id: i64,
    seq: i64,
    body: String,
    created_at: DateTime<Utc>,
    resolved_by: Option<String>,
    note: Option<String>,
}

#[derive(FromRow)]
struct ChecksumRow {
    address: String,
    checksum: String,
}

fn field_of(name: &str) -> Option<Field> {
    Field::ALL.into_iter().find(|f| f.as_str() == name)
}

fn inventory_provenance() -> Provenance {
    Provenance {
        source: INVENTORY.to_owned(),
        priority: Provenance::PERSON_PRIORITY,
        at: DateTime::UNIX_EPOCH,
        by_person: true,
    }
}

/// The inventory's value of each field it holds.
fn inventory_values(row: &InventoryDeviceRow) -> BTreeMap<Field, String> {
    let mut v = BTreeMap::new();
    let mut put = |field, value: Option<&str>| {
        if let Some(value) = value.map(str::trim).filter(|s| !s.is_empty()) {
            v.insert(field, value.to_owned());
        }
    };
    put(Field::SerialNumber, row.serial_number.as_deref());
    put(Field::Hostname, row.hostname.as_deref());
    put(Field::ManagementIp, row.management_ip.as_deref());
    put(Field::Model, Some(&row.model_name));
    put(Field::Manufacturer, row.manufacturer.as_deref());
    put(Field::DeviceType, Some(&row.kind));
    v
}

/// One device's fields: the inventory's values, with provenance where reconciliation wrote
/// them (see the module docs).
fn merge_fields(
    inventory: &BTreeMap<Field, String>,
    mut stored: BTreeMap<Field, FieldState>,
) -> BTreeMap<Field, FieldState> {
    // A device created from facts without a model gets a model named after its type (or
    // `unknown`): that placeholder is nobody's value.
    let placeholder = |field: Field, value: &str| match field {
        Field::Model => inventory.get(&Field::DeviceType).is_some_and(|t| t == value),
        Field::DeviceType => value == DeviceType::Unknown.as_str(),
        _ => false,
    };
    let mut fields = BTreeMap::new();
    for field in Field::ALL {
        let row = stored.remove(&field);
        let state = match (field, row, inventory.get(&field)) {
            (Field::Software, row, _) => row,
            (_, Some(row), Some(v)) if row.value == *v => Some(row),
            (_, Some(row), Some(v)) => {
                Some(FieldState { value: v.clone(), provenance: inventory_provenance(), locked: row.locked })
            }
            (_, None, Some(v)) if !placeholder(field, v) => {
                Some(FieldState { value: v.clone(), provenance: inventory_provenance(), locked: false })
            }
            _ => None,
        };
        if let Some(state) = state {
            fields.insert(field, state);
        }
    }
    fields
}

/// The values a planned creation gives its device's fields.
fn created_values(fields: &[FieldDiff]) -> BTreeMap<Field, String> {
    fields.iter().map(|d| (d.field, d.after.clone())).collect()
}

/// The device a planned creation makes (model resolved by the caller), validated.
fn new_device(fields: &[FieldDiff], model: Id<DeviceModel>) -> Result<Device, StoreError> {
    let values = created_values(fields);
    let device = Device {
        hostname: values.get(&Field::Hostname).cloned(),
        serial_number: values.get(&Field::SerialNumber).cloned(),
        barcode: None,
        model,
        placement: Placement::Unplaced,
        service_env: None,
        status: AssetStatus::New,
        management_ip: values.get(&Field::ManagementIp).and_then(|v| v.parse().ok()),
    };
    device.validate().map_err(|e| StoreError::invalid(Device::NAME, e))?;
    Ok(device)
}

/// The provenance rows a planned write leaves (never locked: a locked field is not written).
fn field_states(fields: &[FieldDiff]) -> Vec<(Field, FieldState)> {
    fields
        .iter()
        .map(|d| (d.field, FieldState { value: d.after.clone(), provenance: d.provenance.clone(), locked: false }))
        .collect()
}

/// The management address of `values` as the devices table holds it (checked).
fn management_ip_text(values: &BTreeMap<Field, String>) -> Result<Option<String>, StoreError> {
    values
        .get(&Field::ManagementIp)
        .map(|v| {
            v.parse::<IpAddr>().map(|ip| ip.to_string()).map_err(|_| {
                StoreError::invalid(
                    Device::NAME,
                    ValidationError::Invalid { field: "management_ip", reason: v.clone() },
                )
            })
        })
        .transpose()
}

/// Whether a planned update names another model.
fn model_changed(fields: &[FieldDiff]) -> bool {
    fields.iter().any(|d| matches!(d.field, Field::Model | Field::Manufacturer | Field::DeviceType))
}

/// The device's values after a planned update, checked against its locked current state: a
/// locked field, or one changed since the plan was made, refuses the update.
fn checked_update(
    state: &DeviceState,
    device: Id<Device>,
    fields: &[FieldDiff],
) -> Result<BTreeMap<Field, String>, StoreError> {
    for d in fields {
        let current = state.fields.get(&d.field);
        if current.is_some_and(|f| f.locked) {
            return Err(StoreError::Conflict {
                entity: Device::NAME,
                constraint: format!("field {} is locked", d.field),
            });
        }
        if current.map(|f| f.value.as_str()) != d.before.as_deref() {
            return Err(StoreError::Conflict {
                entity: Device::NAME,
                constraint: format!("stale plan: {} of device {device} changed since it was planned", d.field),
            });
        }
    }
    let mut values: BTreeMap<Field, String> = state.fields.iter().map(|(f, s)| (*f, s.value.clone())).collect();
    for d in fields {
        values.insert(d.field, d.after.clone());
    }
    Ok(values)
}

/// The history record of a device a plan created.
fn created_record(id: Id<Device>, fields: &[FieldDiff], actor: &Actor) -> HistoryRecord {
    HistoryRecord::new(Device::NAME, id.get(), Action::Create, actor.clone())
        .with_changes(fields.iter().map(|d| FieldChange::new(d.field.as_str(), None, Some(&d.after))).collect())
}

/// The history record of a device a plan updated.
fn updated_record(id: Id<Device>, fields: &[FieldDiff], actor: &Actor) -> HistoryRecord {
    HistoryRecord::new(Device::NAME, id.get(), Action::Update, actor.clone()).with_changes(
        fields.iter().map(|d| FieldChange::new(d.field.as_str(), d.before.as_deref(), Some(&d.after))).collect(),
    )
}

/// The model a device with these values names: (type, name, manufacturer); a device without
/// a model gets one named after its type.
fn model_key(values: &BTreeMap<Field, String>) -> (DeviceType, String, Option<String>) {
    let kind = values.get(&Field::DeviceType).and_then(|t| DeviceType::parse(t).ok()).unwrap_or(DeviceType::Unknown);
    let name = values.get(&Field::Model).map_or_else(|| kind.as_str().to_owned(), Clone::clone);
    (kind, name, values.get(&Field::Manufacturer).cloned())
}

/// What one device's transaction did: each item's status, and the devices it created.
type GroupOutcome = (Vec<(u32, ItemStatus)>, BTreeMap<u32, Id<Device>>);

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
    /// Ids from `sql` + `(keys)`, chunked.
    async fn ids_in(
        conn: &mut DB::Connection,
        sql: &str,
        keys: &[String],
        into: &mut BTreeSet<i64>,
    ) -> Result<(), StoreError> {
        for chunk in keys.chunks(CHUNK) {
            let mut qb = QueryBuilder::new(sql);
            push_list(&mut qb, chunk.iter().map(|k| Some(k.as_str())));
            qb.push(")");
            into.extend(
                qb.build_query_scalar::<i64>()
                    .persistent(DB::PREPARE_KEY_LISTS)
                    .fetch_all(&mut *conn)
                    .await
                    .map_err(err(ENTITY))?,
            );
        }
        Ok(())
    }

    /// The reconciler's view of the devices with these ids.
    async fn device_states(conn: &mut DB::Connection, ids: &[i64]) -> Result<Vec<DeviceState>, StoreError> {
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(CHUNK) {
            let ids = || chunk.iter().map(|id| Some(*id));
            let mut qb = QueryBuilder::new(
                "SELECT d.id, d.serial_number, d.hostname, d.management_ip, m.name AS model_name, m.manufacturer, \
                 m.kind FROM devices d JOIN device_models m ON m.id = d.model_id WHERE d.id IN (",
            );
            push_list(&mut qb, ids());
            qb.push(") ORDER BY d.id");
            let devices = qb
                .build_query_as::<InventoryDeviceRow>()
                .persistent(DB::PREPARE_KEY_LISTS)
                .fetch_all(&mut *conn)
                .await
                .map_err(err(ENTITY))?;

            let mut qb = QueryBuilder::new(
                "SELECT device_id, field, value, source, priority, observed_at, by_person, locked FROM \
                 reconcile_fields WHERE device_id IN (",
            );
            push_list(&mut qb, ids());
            qb.push(")");
            let mut fields: BTreeMap<i64, BTreeMap<Field, FieldState>> = BTreeMap::new();
            for r in qb
                .build_query_as::<FieldRow>()
                .persistent(DB::PREPARE_KEY_LISTS)
                .fetch_all(&mut *conn)
                .await
                .map_err(err(ENTITY))?
            {
                let Some(field) = field_of(&r.field) else { continue };
                let provenance = Provenance {
                    source: r.source,
                    priority: u32_of(r.priority),
                    at: r.observed_at,
                    by_person: r.by_person,
                };
                fields
                    .entry(r.device_id)
                    .or_default()
                    .insert(field, FieldState { value: r.value, provenance, locked: r.locked });
            }

            let mut qb = QueryBuilder::new("SELECT * FROM components WHERE device_id IN (");
            push_list(&mut qb, ids());
            qb.push(") ORDER BY id");
            let components = qb
                .build_query_as::<ComponentRow>()
                .persistent(DB::PREPARE_KEY_LISTS)
                .fetch_all(&mut *conn)
                .await
                .map_err(err(ENTITY))?
                .into_iter()
                .map(Component::from_row)
                .collect::<Result<Vec<_>, _>>()?;

            let mut qb = QueryBuilder::new(
                "SELECT p.component_id, p.source, p.priority, p.observed_at, p.by_person, p.miss_count, p.miss_scan \
                 FROM reconcile_components p JOIN components c ON c.id = p.component_id WHERE c.device_id IN (",
            );
            push_list(&mut qb, ids());
            qb.push(")");
            let provenance: BTreeMap<i64, ComponentProvenanceRow> = qb
                .build_query_as::<ComponentProvenanceRow>()
                .persistent(DB::PREPARE_KEY_LISTS)
                .fetch_all(&mut *conn)
                .await
                .map_err(err(ENTITY))?
                .into_iter()
                .map(|r| (r.component_id, r))
                .collect();

            let mut qb = QueryBuilder::new(
                "SELECT device_id, miss_count, miss_scan FROM reconcile_devices WHERE device_id IN (",
            );
            push_list(&mut qb, ids());
            qb.push(")");
            let misses: BTreeMap<i64, MissRow> = qb
                .build_query_as::<MissRow>()
                .persistent(DB::PREPARE_KEY_LISTS)
                .fetch_all(&mut *conn)
                .await
                .map_err(err(ENTITY))?
                .into_iter()
                .map(|r| (r.device_id, r))
                .collect();

            let mut by_device: BTreeMap<i64, Vec<ComponentState>> = BTreeMap::new();
            for c in components {
                let p = provenance.get(&c.id.get());
                let state = ComponentState {
                    id: c.id,
                    kind: c.value.kind,
                    provenance: p.map_or_else(inventory_provenance, |p| Provenance {
                        source: p.source.clone(),
                        priority: u32_of(p.priority),
                        at: p.observed_at,
                        by_person: p.by_person,
                    }),
                    misses: p.map_or_else(Misses::default, |p| Misses {
                        count: u32_of(p.miss_count),
                        last_scan: p.miss_scan.clone().map(ScanId),
                    }),
                };
                by_device.entry(c.value.device.get()).or_default().push(state);
            }
            for d in devices {
                let inventory = inventory_values(&d);
                let stored = fields.remove(&d.id).unwrap_or_default();
                out.push(DeviceState {
                    id: Id::new(d.id),
                    fields: merge_fields(&inventory, stored),
                    components: by_device.remove(&d.id).unwrap_or_default(),
                    misses: misses.get(&d.id).map_or_else(Misses::default, |m| Misses {
                        count: u32_of(m.miss_count),
                        last_scan: m.miss_scan.clone().map(ScanId),
                    }),
                });
            }
        }
        Ok(out)
    }

    /// Locks the device row for the rest of the transaction; false when it does not exist.
    async fn lock_device(conn: &mut DB::Connection, device: Id<Device>) -> Result<bool, StoreError> {
        Ok(Self::lock_devices(conn, &[device.get()]).await? == 1)
    }

    /// Locks the rows of the devices `ids` (sorted, so two transactions take them in the same
    /// order) for the rest of the transaction; returns how many exist.
    pub(super) async fn lock_devices(conn: &mut DB::Connection, ids: &[i64]) -> Result<usize, StoreError> {
        let mut locked = 0;
        for chunk in ids.chunks(CHUNK) {
            let mut qb = QueryBuilder::new("SELECT id FROM devices WHERE id IN (");
            push_list(&mut qb, chunk.iter().map(|id| Some(*id)));
            qb.push(") ORDER BY id").push(DB::FOR_UPDATE);
            locked += qb
                .build_query_scalar::<i64>()
                .persistent(DB::PREPARE_KEY_LISTS)
                .fetch_all(&mut *conn)
                .await
                .map_err(err(ENTITY))?
                .len();
        }
        Ok(locked)
    }

    /// Locks the items `seqs` of `plan` that are still pending; returns their numbers. A
    /// concurrent apply of the same plan waits, then sees them done.
    pub(super) async fn lock_pending_items(
        conn: &mut DB::Connection,
        plan: Id<Plan>,
        seqs: &[u32],
    ) -> Result<BTreeSet<i64>, StoreError> {
        let mut pending = BTreeSet::new();
        for chunk in seqs.chunks(CHUNK) {
            let mut qb = QueryBuilder::new("SELECT seq FROM reconcile_plan_items WHERE plan_id = ");
            qb.push_bind(Some(plan.get())).push(" AND status = 'pending' AND seq IN (");
            push_list(&mut qb, chunk.iter().map(|seq| Some(i64::from(*seq))));
            qb.push(")").push(DB::FOR_UPDATE);
            pending.extend(
                qb.build_query_scalar::<i64>()
                    .persistent(DB::PREPARE_KEY_LISTS)
                    .fetch_all(&mut *conn)
                    .await
                    .map_err(err(ENTITY))?,
            );
        }
        Ok(pending)
    }

    /// The locked, current state of one device.
    async fn locked_state(conn: &mut DB::Connection, device: Id<Device>) -> Result<DeviceState, StoreError> {
        if !Self::lock_device(conn, device).await? {
            return Err(StoreError::NotFound { entity: Device::NAME, key: device.to_string() });
        }
        Self::device_states(conn, &[device.get()])
            .await?
            .pop()
            .ok_or_else(|| StoreError::NotFound { entity: Device::NAME, key: device.to_string() })
    }

    /// The model named by these values, created when missing (a concurrent creation of the
    /// same model is found, not duplicated: the insert runs in its own savepoint).
    async fn model_for(
        conn: &mut DB::Connection,
        values: &BTreeMap<Field, String>,
    ) -> Result<Id<DeviceModel>, StoreError> {
        let (kind, name, manufacturer) = model_key(values);
        let find = async |conn: &mut DB::Connection| -> Result<Option<i64>, StoreError> {
            let mut qb = QueryBuilder::new("SELECT id FROM device_models WHERE name = ");
            qb.push_bind(Some(name.as_str()));
            match &manufacturer {
                Some(m) => qb.push(" AND manufacturer = ").push_bind(Some(m.as_str())),
                None => qb.push(" AND manufacturer IS NULL"),
            };
            qb.push(" ORDER BY id LIMIT 1");
            qb.build_query_scalar::<i64>().fetch_optional(&mut *conn).await.map_err(err(DeviceModel::NAME))
        };
        if let Some(id) = find(conn).await? {
            return Ok(Id::new(id));
        }
        let model =
            DeviceModel { name: name.clone(), manufacturer: manufacturer.clone(), kind, height_u: 0, full_depth: true };
        model.validate().map_err(|e| StoreError::invalid(DeviceModel::NAME, e))?;
        let mut sp = conn.begin().await.map_err(err(DeviceModel::NAME))?;
        match Self::insert_row(&mut *sp, &model).await {
            Ok(id) => {
                sp.commit().await.map_err(err(DeviceModel::NAME))?;
                Ok(Id::new(id))
            }
            Err(StoreError::Conflict { .. }) => {
                sp.rollback().await.map_err(err(DeviceModel::NAME))?;
                find(conn)
                    .await?
                    .map(Id::new)
                    .ok_or_else(|| StoreError::NotFound { entity: DeviceModel::NAME, key: name.clone() })
            }
            Err(e) => Err(e),
        }
    }

    /// Writes the inventory columns of `values` onto the device row (model resolved).
    async fn write_device_columns(
        conn: &mut DB::Connection,
        device: Id<Device>,
        values: &BTreeMap<Field, String>,
        model_changed: bool,
    ) -> Result<(), StoreError> {
        let management_ip = management_ip_text(values)?;
        let mut qb = QueryBuilder::new("UPDATE devices SET serial_number = ");
        qb.push_bind(values.get(&Field::SerialNumber).map(String::as_str))
            .push(", hostname = ")
            .push_bind(values.get(&Field::Hostname).map(String::as_str))
            .push(", management_ip = ")
            .push_bind(management_ip.as_deref());
        if model_changed {
            let model = Self::model_for(conn, values).await?;
            qb.push(", model_id = ").push_bind(Some(model.get()));
        }
        qb.push(" WHERE id = ").push_bind(Some(device.get()));
        qb.build().execute(&mut *conn).await.map(drop).map_err(err(Device::NAME))
    }

    /// [`write_device_columns`](Self::write_device_columns) of many devices whose models stay,
    /// one statement per [`CHUNK`] devices (`SET column = CASE id WHEN ... END`).
    pub(super) async fn write_many_device_columns(
        conn: &mut DB::Connection,
        devices: &[(Id<Device>, &BTreeMap<Field, String>)],
    ) -> Result<(), StoreError> {
        for chunk in devices.chunks(CHUNK) {
            let ips = chunk.iter().map(|(_, v)| management_ip_text(v)).collect::<Result<Vec<_>, _>>()?;
            let mut qb = QueryBuilder::new("UPDATE devices SET ");
            let columns = [
                (Field::SerialNumber, "serial_number"),
                (Field::Hostname, "hostname"),
                (Field::ManagementIp, "management_ip"),
            ];
            for (n, (field, column)) in columns.into_iter().enumerate() {
                qb.push(if n == 0 { "" } else { ", " }).push(column).push(" = CASE id");
                for ((device, values), ip) in chunk.iter().zip(&ips) {
                    let value = match field {
                        Field::ManagementIp => ip.as_deref(),
                        _ => values.get(&field).map(String::as_str),
                    };
                    qb.push(" WHEN ").push_bind(Some(device.get())).push(" THEN ").push_bind(value);
                }
                qb.push(" END");
            }
            qb.push(" WHERE id IN (");
            push_list(&mut qb, chunk.iter().map(|(d, _)| Some(d.get())));
            qb.push(")");
            qb.build().persistent(DB::PREPARE_KEY_LISTS).execute(&mut *conn).await.map_err(err(Device::NAME))?;
        }
        Ok(())
    }

    /// Replaces the provenance rows of `fields` of one device.
    async fn write_fields(
        conn: &mut DB::Connection,
        device: Id<Device>,
        fields: &[(Field, &FieldState)],
    ) -> Result<(), StoreError> {
        if fields.is_empty() {
            return Ok(());
        }
        let mut qb = QueryBuilder::new("DELETE FROM reconcile_fields WHERE device_id = ");
        qb.push_bind(Some(device.get())).push(" AND field IN (");
        push_list(&mut qb, fields.iter().map(|(f, _)| Some(f.as_str())));
        qb.push(")");
        qb.build().persistent(DB::PREPARE_KEY_LISTS).execute(&mut *conn).await.map_err(err(ENTITY))?;
        let rows: Vec<(i64, Field, &FieldState)> = fields.iter().map(|(f, s)| (device.get(), *f, *s)).collect();
        Self::insert_field_rows(conn, &rows).await
    }

    /// Inserts provenance rows `(device, field, state)`, [`CHUNK`] a statement.
    pub(super) async fn insert_field_rows(
        conn: &mut DB::Connection,
        rows: &[(i64, Field, &FieldState)],
    ) -> Result<(), StoreError> {
        for chunk in rows.chunks(CHUNK) {
            let keys: Vec<Option<String>> = chunk.iter().map(|(_, f, s)| value_key(*f, &s.value)).collect();
            let mut qb = QueryBuilder::new(
                "INSERT INTO reconcile_fields (device_id, field, value, value_key, source, priority, observed_at, \
                 by_person, locked) ",
            );
            qb.push_values(chunk.iter().zip(&keys), |mut row, ((id, field, state), key)| {
                row.push_bind(Some(*id))
                    .push_bind(Some(field.as_str()))
                    .push_bind(Some(state.value.as_str()))
                    .push_bind(key.as_deref())
                    .push_bind(Some(state.provenance.source.as_str()))
                    .push_bind(Some(i64::from(state.provenance.priority)))
                    .push_bind(Some(state.provenance.at))
                    .push_bind(state.provenance.by_person)
                    .push_bind(state.locked);
            });
            // An insert has no plan to go stale: a full chunk's statement is kept prepared on
            // every backend (a shorter one, each length its own text, only where lists are).
            qb.build()
                .persistent(chunk.len() == CHUNK || DB::PREPARE_KEY_LISTS)
                .execute(&mut *conn)
                .await
                .map_err(err(ENTITY))?;
        }
        Ok(())
    }

    /// Creates or replaces a component's provenance row (its miss counter kept).
    async fn write_component_provenance(
        conn: &mut DB::Connection,
        component: i64,
        provenance: &Provenance,
    ) -> Result<(), StoreError> {
        Self::ensure_component_row(conn, component, provenance).await?;
        let mut qb = QueryBuilder::new("UPDATE reconcile_components SET source = ");
        qb.push_bind(Some(provenance.source.as_str()))
            .push(", priority = ")
            .push_bind(Some(i64::from(provenance.priority)))
            .push(", observed_at = ")
            .push_bind(Some(provenance.at))
            .push(", by_person = ")
            .push_bind(provenance.by_person)
            .push(" WHERE component_id = ")
            .push_bind(Some(component));
        qb.build().execute(&mut *conn).await.map(drop).map_err(err(ENTITY))
    }

    /// Creates a component's provenance row with `provenance` unless it has one (or the
    /// component is gone).
    async fn ensure_component_row(conn: &mut DB::Connection, component: i64, p: &Provenance) -> Result<(), StoreError> {
        Self::ensure_component_rows(conn, (p.source.as_str(), p.priority, p.at, p.by_person), &[component]).await
    }

    /// The stored component, locked, checked to be on `device` with `kind`.
    async fn locked_component(
        conn: &mut DB::Connection,
        component: Id<Component>,
        device: Id<Device>,
        kind: &ComponentKind,
    ) -> Result<Component, StoreError> {
        let mut qb = QueryBuilder::new("SELECT * FROM components WHERE id = ");
        qb.push_bind(Some(component.get())).push(DB::FOR_UPDATE);
        let row = qb.build_query_as::<ComponentRow>().fetch_optional(&mut *conn).await.map_err(err(ENTITY))?;
        let Some(stored) = row.map(Component::from_row).transpose()? else {
            return Err(StoreError::NotFound { entity: Component::NAME, key: component.to_string() });
        };
        if stored.value.device != device || stored.value.kind != *kind {
            return Err(StoreError::Conflict {
                entity: Component::NAME,
                constraint: format!("stale plan: component {component} changed since it was planned"),
            });
        }
        Ok(stored.value)
    }

    async fn update_component_row(conn: &mut DB::Connection, id: i64, value: &Component) -> Result<(), StoreError> {
        value.validate().map_err(|e| StoreError::invalid(Component::NAME, e))?;
        let mut qb = QueryBuilder::new("UPDATE components SET ");
        value.columns(&mut super::Writer::new(&mut qb, super::Mode::Set))?;
        qb.push(" WHERE id = ").push_bind(Some(id));
        qb.build().execute(&mut *conn).await.map(drop).map_err(err(Component::NAME))
    }

    fn component_record(
        id: i64,
        action: Action,
        before: Option<&Component>,
        after: Option<&Component>,
        actor: &Actor,
    ) -> Result<HistoryRecord, StoreError> {
        let text = |c: Option<&Component>| -> Result<Option<ColumnText>, StoreError> {
            c.map(|c| {
                let mut t = ColumnText::default();
                c.columns(&mut t).map(|()| t)
            })
            .transpose()
        };
        let device = after.or(before).map_or(0, |c| c.device.get());
        Ok(HistoryRecord::new(Component::NAME, id, action, actor.clone())
            .with_related(Device::NAME, device)
            .with_changes(ColumnText::diff(text(before)?.as_ref(), text(after)?.as_ref())))
    }

    /// Applies one change in the caller's transaction; returns its history records and the
    /// device it created.
    async fn apply_change(
        conn: &mut DB::Connection,
        change: &Change,
        created: &BTreeMap<u32, Id<Device>>,
        actor: &Actor,
    ) -> Result<(Vec<HistoryRecord>, Option<(u32, Id<Device>)>), StoreError> {
        let resolve = |device: DeviceRef| match device {
            DeviceRef::Existing(id) => Ok(id),
            DeviceRef::New(key) => created.get(&key).copied().ok_or_else(|| StoreError::NotFound {
                entity: Device::NAME,
                key: format!("new device {key} of the plan"),
            }),
        };
        match change {
            Change::CreateDevice { device: key, fields, .. } => {
                let model = Self::model_for(conn, &created_values(fields)).await?;
                let device = new_device(fields, model)?;
                let id = Id::new(Self::insert_row(conn, &device).await?);
                let states = field_states(fields);
                Self::write_fields(conn, id, &states.iter().map(|(f, s)| (*f, s)).collect::<Vec<_>>()).await?;
                Ok((vec![created_record(id, fields, actor)], Some((*key, id))))
            }
            Change::UpdateDevice { device, fields } => {
                let state = Self::locked_state(conn, *device).await?;
                let values = checked_update(&state, *device, fields)?;
                Self::write_device_columns(conn, *device, &values, model_changed(fields)).await?;
                let states = field_states(fields);
                Self::write_fields(conn, *device, &states.iter().map(|(f, s)| (*f, s)).collect::<Vec<_>>()).await?;
                Ok((vec![updated_record(*device, fields, actor)], None))
            }
            Change::DeleteDevice { device, misses } => {
                let state = Self::locked_state(conn, *device).await?;
                if !state.components.is_empty() {
                    return Err(StoreError::Reference {
                        entity: Device::NAME,
                        detail: format!("device {device} still has components"),
                    });
                }
                let mut qb = QueryBuilder::new("DELETE FROM devices WHERE id = ");
                qb.push_bind(Some(device.get()));
                qb.build().execute(&mut *conn).await.map_err(err(Device::NAME))?;
                let record = HistoryRecord::new(Device::NAME, device.get(), Action::Delete, actor.clone())
                    .with_changes(
                        state.fields.iter().map(|(f, s)| FieldChange::new(f.as_str(), Some(&s.value), None)).collect(),
                    )
                    .with_message(&format!("missed by {misses} scans in a row"));
                Ok((vec![record], None))
            }
            Change::CreateComponent { device, kind, provenance } => {
                let device = resolve(*device)?;
                if !Self::lock_device(conn, device).await? {
                    return Err(StoreError::NotFound { entity: Device::NAME, key: device.to_string() });
                }
                let component = Component { device, kind: kind.clone() };
                component.validate().map_err(|e| StoreError::invalid(Component::NAME, e))?;
                let id = Self::insert_row(conn, &component).await?;
                Self::write_component_provenance(conn, id, provenance).await?;
                Ok((vec![Self::component_record(id, Action::Create, None, Some(&component), actor)?], None))
            }
            Change::UpdateComponent { component, device, before, after, provenance } => {
                let stored = Self::locked_component(conn, *component, *device, before).await?;
                let next = Component { device: *device, kind: after.clone() };
                Self::update_component_row(conn, component.get(), &next).await?;
                Self::write_component_provenance(conn, component.get(), provenance).await?;
                Ok((
                    vec![Self::component_record(component.get(), Action::Update, Some(&stored), Some(&next), actor)?],
                    None,
                ))
            }
            Change::MoveComponent { component, from, to, before, after, provenance } => {
                let to = resolve(*to)?;
                if !Self::lock_device(conn, to).await? {
                    return Err(StoreError::NotFound { entity: Device::NAME, key: to.to_string() });
                }
                let stored = Self::locked_component(conn, *component, *from, before).await?;
                let next = Component { device: to, kind: after.clone() };
                Self::update_component_row(conn, component.get(), &next).await?;
                Self::write_component_provenance(conn, component.get(), provenance).await?;
                let mut qb = QueryBuilder::new(
                    "UPDATE reconcile_components SET miss_count = 0, miss_scan = NULL WHERE component_id = ",
                );
                qb.push_bind(Some(component.get()));
                qb.build().execute(&mut *conn).await.map_err(err(ENTITY))?;
                Ok((
                    vec![Self::component_record(component.get(), Action::Move, Some(&stored), Some(&next), actor)?],
                    None,
                ))
            }
            Change::DeleteComponent { component, device, misses } => {
                let mut qb = QueryBuilder::new("SELECT * FROM components WHERE id = ");
                qb.push_bind(Some(component.get())).push(DB::FOR_UPDATE);
                let row = qb.build_query_as::<ComponentRow>().fetch_optional(&mut *conn).await.map_err(err(ENTITY))?;
                let Some(stored) = row.map(Component::from_row).transpose()? else {
                    return Err(StoreError::NotFound { entity: Component::NAME, key: component.to_string() });
                };
                if stored.value.device != *device {
                    return Err(StoreError::Conflict {
                        entity: Component::NAME,
                        constraint: format!("stale plan: component {component} left device {device}"),
                    });
                }
                let mut qb = QueryBuilder::new("DELETE FROM components WHERE id = ");
                qb.push_bind(Some(component.get()));
                qb.build().execute(&mut *conn).await.map_err(err(Component::NAME))?;
                let record = Self::component_record(component.get(), Action::Delete, Some(&stored.value), None, actor)?
                    .with_message(&format!("missed by {misses} scans in a row"));
                Ok((vec![record], None))
            }
            Change::Conflict { .. } => Ok((Vec::new(), None)),
        }
    }

    /// One device's items in one transaction: each item in a savepoint, its status and
    /// history written beside it. A new device's items stand or fall together.
    #[allow(clippy::too_many_arguments)]
    async fn apply_group(
        &self,
        plan: Id<Plan>,
        scan: &ScanId,
        items: &[&PlanItem],
        statuses: &BTreeMap<u32, bool>,
        created: &BTreeMap<u32, Id<Device>>,
        actor: &Actor,
        correlation: &str,
        whole: bool,
    ) -> Result<GroupOutcome, StoreError> {
        let mut tx = self.begin(ENTITY).await?;
        let seqs: Vec<u32> = items.iter().map(|i| i.seq).collect();
        let pending = Self::lock_pending_items(&mut tx, plan, &seqs).await?;
        let mut statuses = statuses.clone();
        let mut created = created.clone();
        let mut results = Vec::new();
        let at = Utc::now();
        for item in items.iter().filter(|i| pending.contains(&i64::from(i.seq))) {
            let status = if let Some(dep) = item.depends_on.iter().find(|d| statuses.get(d) != Some(&true)) {
                if whole {
                    return Err(StoreError::NotFound { entity: ENTITY, key: format!("item {dep} was not applied") });
                }
                ItemStatus::Skipped(format!("item {dep} was not applied"))
            } else {
                let mut sp = (*tx).begin().await.map_err(err(ENTITY))?;
                let outcome = async {
                    let (mut records, made) = Self::apply_change(&mut *sp, &item.change, &created, actor).await?;
                    let message = format!("scan {scan}, plan {plan} item {}", item.seq);
                    for r in &mut records {
                        if r.message.is_none() {
                            r.message = Some(message.clone());
                        }
                    }
                    Self::write_history(&mut *sp, &records, correlation, at).await?;
                    Ok::<_, StoreError>(made)
                }
                .await;
                match outcome {
                    Ok(made) => {
                        sp.commit().await.map_err(err(ENTITY))?;
                        if let Some((key, id)) = made {
                            created.insert(key, id);
                        }
                        ItemStatus::Applied
                    }
                    Err(e) if whole || transient_conflict(&e).is_some() => return Err(e),
                    Err(e) => {
                        sp.rollback().await.map_err(err(ENTITY))?;
                        ItemStatus::Failed(error_text(&e))
                    }
                }
            };
            statuses.insert(item.seq, status == ItemStatus::Applied);
            let created_id = match &item.change {
                Change::CreateDevice { device, .. } => created.get(device).map(|id| id.get().to_string()),
                _ => None,
            };
            Self::write_status(&mut tx, plan, item.seq, &status, created_id.as_deref()).await?;
            results.push((item.seq, status));
        }
        commit(tx, ENTITY).await?;
        Ok((results, created))
    }

    async fn write_status(
        conn: &mut DB::Connection,
        plan: Id<Plan>,
        seq: u32,
        status: &ItemStatus,
        created: Option<&str>,
    ) -> Result<(), StoreError> {
        let (name, reason) = status_columns(status);
        let mut qb = QueryBuilder::new("UPDATE reconcile_plan_items SET status = ");
        qb.push_bind(Some(name))
            .push(", reason = ")
            .push_bind(created.or(reason))
            .push(" WHERE plan_id = ")
            .push_bind(Some(plan.get()))
            .push(" AND seq = ")
            .push_bind(Some(i64::from(seq)));
        qb.build().execute(&mut *conn).await.map(drop).map_err(err(ENTITY))
    }

    /// Marks items failed or skipped after their device's transaction failed as a whole.
    async fn fail_items(&self, plan: Id<Plan>, items: &[(u32, ItemStatus)]) -> Result<(), StoreError> {
        self.retrying(ENTITY, || async {
            let mut tx = self.begin(ENTITY).await?;
            for (seq, status) in items {
                let mut qb = QueryBuilder::new("UPDATE reconcile_plan_items SET status = ");
                let (name, reason) = status_columns(status);
                qb.push_bind(Some(name))
                    .push(", reason = ")
                    .push_bind(reason)
                    .push(" WHERE plan_id = ")
                    .push_bind(Some(plan.get()))
                    .push(" AND seq = ")
                    .push_bind(Some(i64::from(*seq)))
                    .push(" AND status = 'pending'");
                qb.build().execute(&mut *tx).await.map_err(err(ENTITY))?;
            }
            commit(tx, ENTITY).await
        })
        .await
    }

    /// Stores the checksums of an applied plan, replacing older ones of the same addresses.
    async fn store_checksums(&self, scan: &ScanId, checksums: &BTreeMap<IpAddr, Checksum>) -> Result<(), StoreError> {
        let rows: Vec<(String, String, &str)> =
            checksums.iter().map(|(ip, c)| (ip_key(*ip), ip.to_string(), c.0.as_str())).collect();
        for chunk in rows.chunks(CHUNK) {
            self.retrying(ENTITY, || async {
                let mut tx = self.begin(ENTITY).await?;
                let mut qb = QueryBuilder::new("DELETE FROM reconcile_checksums WHERE ip_key IN (");
                push_list(&mut qb, chunk.iter().map(|(k, _, _)| Some(k.as_str())));
                qb.push(")");
                qb.build().execute(&mut *tx).await.map_err(err(ENTITY))?;
                let mut qb = QueryBuilder::new(format!(
                    "{} reconcile_checksums (ip_key, address, checksum, scan_id, updated_at) ",
                    DB::INSERT_IGNORE
                ));
                let now = Utc::now();
                qb.push_values(chunk, |mut row, (key, address, checksum)| {
                    row.push_bind(Some(key.as_str()))
                        .push_bind(Some(address.as_str()))
                        .push_bind(Some(*checksum))
                        .push_bind(Some(scan.0.as_str()))
                        .push_bind(Some(now));
                });
                qb.push(DB::ignore_conflict("ip_key"));
                qb.build().execute(&mut *tx).await.map_err(err(ENTITY))?;
                commit(tx, ENTITY).await
            })
            .await?;
        }
        Ok(())
    }
}

/// An item's failure reason: the error and its causes.
fn error_text(e: &StoreError) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[async_trait]
impl<DB> ReconcileStore for SqlStore<DB>
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
    async fn load_snapshot(&self, query: &SnapshotQuery, scan: &Scan) -> Result<Snapshot, StoreError> {
        let mut conn = self.acquire(ENTITY).await?;
        let mut ids = BTreeSet::new();
        let wanted: Vec<i64> = query.inventory_ids.iter().map(|i| i.get()).collect();
        for chunk in wanted.chunks(CHUNK) {
            let mut qb = QueryBuilder::new("SELECT id FROM devices WHERE id IN (");
            push_list(&mut qb, chunk.iter().map(|id| Some(*id)));
            qb.push(")");
            ids.extend(qb.build_query_scalar::<i64>().fetch_all(&mut *conn).await.map_err(err(ENTITY))?);
        }
        let list = |v: Vec<String>| v;
        Self::ids_in(
            &mut conn,
            &format!("SELECT id FROM devices WHERE {} IN (", DB::SERIAL_KEY),
            &list(query.serials.iter().cloned().collect()),
            &mut ids,
        )
        .await?;
        Self::ids_in(
            &mut conn,
            "SELECT device_id FROM components WHERE mac IN (",
            &list(query.macs.iter().map(ToString::to_string).collect()),
            &mut ids,
        )
        .await?;
        Self::ids_in(
            &mut conn,
            &format!("SELECT device_id FROM components WHERE kind = 'disk' AND {} IN (", DB::SERIAL_KEY),
            &list(query.disk_serials.iter().cloned().collect()),
            &mut ids,
        )
        .await?;
        Self::ids_in(
            &mut conn,
            "SELECT id FROM devices WHERE management_ip IN (",
            &list(query.addresses.iter().map(ToString::to_string).collect()),
            &mut ids,
        )
        .await?;
        for network in &scan.networks {
            let first = ip_key(network.network());
            let last = ip_key(network.broadcast());
            let mut qb = QueryBuilder::new(
                "SELECT device_id FROM reconcile_fields WHERE field = 'management_ip' AND value_key >= ",
            );
            qb.push_bind(Some(first.as_str())).push(" AND value_key <= ").push_bind(Some(last.as_str()));
            ids.extend(qb.build_query_scalar::<i64>().fetch_all(&mut *conn).await.map_err(err(ENTITY))?);
        }
        let ids: Vec<i64> = ids.into_iter().collect();
        let devices = Self::device_states(&mut conn, &ids).await?;
        debug!(target: TRACE_TARGET, devices = devices.len(), "reconciliation snapshot loaded");
        Ok(Snapshot { devices })
    }

    async fn save_plan(&self, plan: &Plan) -> Result<Id<Plan>, StoreError> {
        let items: Vec<(i64, &'static str, String, String, &'static str, Option<String>)> = plan
            .items
            .iter()
            .map(|i| {
                let (status, reason) = status_columns(&i.status);
                Ok((
                    i64::from(i.seq),
                    action_name(&i.change),
                    to_json(&i.change)?,
                    to_json(&i.depends_on)?,
                    status,
                    reason.map(str::to_owned),
                ))
            })
            .collect::<Result<_, StoreError>>()?;
        let mut notes: Vec<(&'static str, i64, String)> = Vec::new();
        for (n, b) in (0..).zip(&plan.bookkeeping) {
            notes.push(("bookkeeping", n, to_json(b)?));
        }
        for (n, s) in (0..).zip(&plan.suppressed) {
            notes.push(("suppressed", n, to_json(s)?));
        }
        for (n, u) in (0..).zip(&plan.unresolved) {
            notes.push(("unresolved", n, to_json(u)?));
        }
        for (n, c) in (0..).zip(&plan.checksums) {
            notes.push(("checksum", n, to_json(&c)?));
        }
        let id = self
            .retrying(ENTITY, || async {
                let mut tx = self.begin(ENTITY).await?;
                let now = Utc::now();
                let mut qb = QueryBuilder::new("INSERT INTO reconcile_plans (scan_id, created_at, items) VALUES (");
                qb.push_bind(Some(plan.scan.0.as_str()))
                    .push(", ")
                    .push_bind(Some(now))
                    .push(", ")
                    .push_bind(Some(i64::try_from(plan.items.len()).unwrap_or(i64::MAX)))
                    .push(")");
                let id = DB::insert_id(&mut tx, qb).await.map_err(err(ENTITY))?;
                for chunk in items.chunks(CHUNK / 2) {
                    let mut qb = QueryBuilder::new(
                        "INSERT INTO reconcile_plan_items (plan_id, seq, action, body, depends_on, status, reason) ",
                    );
                    qb.push_values(chunk, |mut row, (seq, action, body, deps, status, reason)| {
                        row.push_bind(Some(id))
                            .push_bind(Some(*seq))
                            .push_bind(Some(*action))
                            .push_bind(Some(body.as_str()))
                            .push_bind(Some(deps.as_str()))
                            .push_bind(Some(*status))
                            .push_bind(reason.as_deref());
                    });
                    qb.build().execute(&mut *tx).await.map_err(err(ENTITY))?;
                }
                for chunk in notes.chunks(CHUNK) {
                    let mut qb = QueryBuilder::new("INSERT INTO reconcile_plan_notes (plan_id, kind, seq, body) ");
                    qb.push_values(chunk, |mut row, (kind, seq, body)| {
                        row.push_bind(Some(id))
                            .push_bind(Some(*kind))
                            .push_bind(Some(*seq))
                            .push_bind(Some(body.as_str()));
                    });
                    qb.build().execute(&mut *tx).await.map_err(err(ENTITY))?;
                }
                let conflicts: Vec<&(i64, &str, String, String, &str, Option<String>)> =
                    items.iter().filter(|i| i.1 == "conflict").collect();
                for chunk in conflicts.chunks(CHUNK) {
                    let mut qb = QueryBuilder::new("INSERT INTO reconcile_conflicts (plan_id, seq, body, created_at) ");
                    qb.push_values(chunk, |mut row, (seq, _, body, ..)| {
                        row.push_bind(Some(id))
                            .push_bind(Some(*seq))
                            .push_bind(Some(body.as_str()))
                            .push_bind(Some(now));
                    });
                    qb.build().execute(&mut *tx).await.map_err(err(ENTITY))?;
                }
                commit(tx, ENTITY).await?;
                Ok(id)
            })
            .await?;
        debug!(target: TRACE_TARGET, plan = id, items = plan.items.len(), "reconciliation plan stored");
        Ok(Id::new(id))
    }

    async fn plan_items(&self, plan: Id<Plan>, after: Option<u32>, limit: u32) -> Result<Vec<PlanItem>, StoreError> {
        let mut qb = QueryBuilder::new(
            "SELECT seq, body, depends_on, status, reason FROM reconcile_plan_items WHERE plan_id = ",
        );
        qb.push_bind(Some(plan.get()))
            .push(" AND seq > ")
            .push_bind(Some(after.map_or(-1, i64::from)))
            .push(" ORDER BY seq LIMIT ")
            .push_bind(Some(i64::from(limit)));
        let rows = qb.build_query_as::<ItemRow>().fetch_all(self.pool()).await.map_err(err(ENTITY))?;
        rows.into_iter().map(ItemRow::into_item).collect()
    }

    async fn load_plan(&self, plan: Id<Plan>) -> Result<Plan, StoreError> {
        let mut qb = QueryBuilder::new("SELECT scan_id FROM reconcile_plans WHERE id = ");
        qb.push_bind(Some(plan.get()));
        let Some(row) = qb.build_query_as::<PlanRow>().fetch_optional(self.pool()).await.map_err(err(ENTITY))? else {
            return Err(StoreError::NotFound { entity: ENTITY, key: format!("plan {plan}") });
        };
        let mut items = Vec::new();
        loop {
            let page = self.plan_items(plan, items.last().map(|i: &PlanItem| i.seq), 1000).await?;
            if page.is_empty() {
                break;
            }
            items.extend(page);
        }
        let mut qb = QueryBuilder::new("SELECT kind, body FROM reconcile_plan_notes WHERE plan_id = ");
        qb.push_bind(Some(plan.get())).push(" ORDER BY kind, seq");
        let mut out = Plan {
            scan: ScanId(row.scan_id),
            items,
            bookkeeping: Vec::new(),
            suppressed: Vec::new(),
            unresolved: Vec::new(),
            checksums: BTreeMap::new(),
        };
        for note in qb.build_query_as::<NoteRow>().fetch_all(self.pool()).await.map_err(err(ENTITY))? {
            match note.kind.as_str() {
                "bookkeeping" => out.bookkeeping.push(from_json::<Bookkeeping>(&note.body)?),
                "suppressed" => out.suppressed.push(from_json::<Suppressed>(&note.body)?),
                "unresolved" => out.unresolved.push(from_json::<Unresolved>(&note.body)?),
                "checksum" => {
                    let (ip, c) = from_json::<(IpAddr, Checksum)>(&note.body)?;
                    out.checksums.insert(ip, c);
                }
                other => return Err(StoreError::Corrupt { entity: ENTITY, detail: format!("note kind {other:?}") }),
            }
        }
        Ok(out)
    }

    async fn apply_plan(&self, plan_id: Id<Plan>, actor: &Actor) -> Result<ApplyReport, StoreError> {
        let plan = self.load_plan(plan_id).await?;
        let correlation = new_correlation();
        let mut report = ApplyReport::default();
        report.correlation.clone_from(&correlation);
        let mut statuses: BTreeMap<u32, bool> = BTreeMap::new();
        let mut created: BTreeMap<u32, Id<Device>> = BTreeMap::new();
        // Groups of pending items by the device whose transaction applies them.
        let mut groups: BTreeMap<DeviceRef, Vec<&PlanItem>> = BTreeMap::new();
        let mut conflicts = Vec::new();
        // Created ids of an earlier, interrupted apply (kept in the item's reason).
        let mut qb = QueryBuilder::new(
            "SELECT seq, body, depends_on, status, reason FROM reconcile_plan_items WHERE plan_id = ",
        );
        qb.push_bind(Some(plan_id.get())).push(" AND action = 'create_device' AND status = 'applied'");
        for row in qb.build_query_as::<ItemRow>().fetch_all(self.pool()).await.map_err(err(ENTITY))? {
            if let (Some(id), Ok(Change::CreateDevice { device, .. })) =
                (row.reason.as_deref().and_then(|r| r.parse::<i64>().ok()), from_json::<Change>(&row.body))
            {
                created.insert(device, Id::new(id));
            }
        }
        for item in &plan.items {
            if item.status != ItemStatus::Pending {
                statuses.insert(item.seq, item.status == ItemStatus::Applied);
                continue;
            }
            match item_device(&item.change) {
                Some(device) => groups.entry(device).or_default().push(item),
                None => conflicts.push((item.seq, ItemStatus::Applied)),
            }
        }
        // Device deletions last (their components leave first, by moves into other groups).
        let mut order: Vec<(bool, u32, DeviceRef)> = groups
            .iter()
            .map(|(d, items)| {
                let deletes = items.iter().any(|i| matches!(i.change, Change::DeleteDevice { .. }));
                (deletes, items.first().map_or(0, |i| i.seq), *d)
            })
            .collect();
        order.sort();
        let order: Vec<DeviceRef> = order.into_iter().map(|(_, _, device)| device).collect();
        let mut next = 0;
        while next < order.len() {
            // Runs of devices the fast path takes, each in one transaction, up to
            // `DB::APPLY_RUNS` at once: their devices and items are disjoint, and no item of
            // one depends on an item of another (`batchable` admits only dependencies already
            // applied or inside the device's own group). Devices whose run cannot be applied
            // go one by one below, with the same outcome.
            let mut runs: Vec<Vec<(DeviceRef, &[&PlanItem])>> = Vec::new();
            while self.batched_apply && runs.len() < DB::APPLY_RUNS {
                let mut run: Vec<(DeviceRef, &[&PlanItem])> = Vec::new();
                while let Some(device) = order.get(next).copied() {
                    let items = groups[&device].as_slice();
                    if run.len() >= batch::BATCH_DEVICES || !batch::batchable(device, items, &statuses) {
                        break;
                    }
                    run.push((device, items));
                    next += 1;
                }
                if run.is_empty() {
                    break;
                }
                runs.push(run);
            }
            let mut one_by_one: Vec<DeviceRef> = Vec::new();
            if runs.is_empty() {
                one_by_one.push(order[next]);
                next += 1;
            }
            if runs.len() > 1 {
                // The models the runs' new devices name, found or created first, in one short
                // transaction: concurrent runs creating the same model would duplicate it
                // (a NULL manufacturer escapes the unique key).
                let values: Vec<BTreeMap<Field, String>> = runs
                    .iter()
                    .flatten()
                    .filter_map(|(_, items)| match items.first().map(|i| &i.change) {
                        Some(Change::CreateDevice { fields, .. }) => Some(created_values(fields)),
                        _ => None,
                    })
                    .collect();
                let mut seen = BTreeSet::new();
                let distinct: Vec<&BTreeMap<Field, String>> = values
                    .iter()
                    .filter(|v| {
                        let (kind, name, manufacturer) = model_key(v);
                        seen.insert((kind.as_str(), name, manufacturer))
                    })
                    .collect();
                if !distinct.is_empty() {
                    self.retrying(ENTITY, || async {
                        let mut tx = self.begin(ENTITY).await?;
                        for v in &distinct {
                            Self::model_for(&mut tx, v).await?;
                        }
                        commit(tx, ENTITY).await
                    })
                    .await?;
                }
            }
            let outcomes =
                futures::future::join_all(runs.iter().map(|run| {
                    self.retrying(ENTITY, || self.apply_batch(plan_id, &plan.scan, run, actor, &correlation))
                }))
                .await;
            for (run, outcome) in runs.iter().zip(outcomes) {
                match outcome {
                    Ok(Some((results, made))) => {
                        created.extend(made);
                        self.count_batched(run.len());
                        for (seq, status) in results {
                            report.applied += 1;
                            statuses.insert(seq, status == ItemStatus::Applied);
                        }
                        continue;
                    }
                    Ok(None) => {}
                    Err(e) => {
                        warn!(target: TRACE_TARGET, plan = plan_id.get(), error = %e, "batch failed; applying its devices one by one");
                    }
                }
                one_by_one.extend(run.iter().map(|(device, _)| *device));
            }
            for device in one_by_one {
                let items = &groups[&device];
                let whole = matches!(device, DeviceRef::New(_));
                let outcome = self
                    .retrying(ENTITY, || {
                        self.apply_group(plan_id, &plan.scan, items, &statuses, &created, actor, &correlation, whole)
                    })
                    .await;
                match outcome {
                    Ok((results, made)) => {
                        created = made;
                        for (seq, status) in results {
                            match &status {
                                ItemStatus::Applied => report.applied += 1,
                                ItemStatus::Failed(_) => report.failed += 1,
                                ItemStatus::Skipped(_) => report.skipped += 1,
                                ItemStatus::Pending => {}
                            }
                            statuses.insert(seq, status == ItemStatus::Applied);
                        }
                    }
                    Err(e) => {
                        warn!(target: TRACE_TARGET, plan = plan_id.get(), ?device, error = %e, "device transaction failed");
                        let reason = error_text(&e);
                        let failed: Vec<(u32, ItemStatus)> = items
                            .iter()
                            .enumerate()
                            .map(|(n, i)| {
                                let s = if n == 0 {
                                    ItemStatus::Failed(reason.clone())
                                } else {
                                    ItemStatus::Skipped(format!("item {} was not applied", items[0].seq))
                                };
                                (i.seq, s)
                            })
                            .collect();
                        self.fail_items(plan_id, &failed).await?;
                        for (seq, s) in failed {
                            if matches!(s, ItemStatus::Failed(_)) {
                                report.failed += 1;
                            } else {
                                report.skipped += 1;
                            }
                            statuses.insert(seq, false);
                        }
                    }
                }
            }
        }
        // Bookkeeping in short transactions; a device or component gone since is skipped.
        self.apply_bookkeeping_grouped(&plan.bookkeeping).await?;
        for chunk in plan.suppressed.chunks(CHUNK) {
            self.retrying(ENTITY, || async {
                let mut tx = self.begin(ENTITY).await?;
                for s in chunk {
                    let device = match s.device {
                        DeviceRef::Existing(id) => id,
                        DeviceRef::New(key) => match created.get(&key) {
                            Some(id) => *id,
                            None => continue,
                        },
                    };
                    let mut qb = QueryBuilder::new("DELETE FROM reconcile_suppressed WHERE device_id = ");
                    qb.push_bind(Some(device.get()))
                        .push(" AND field = ")
                        .push_bind(Some(s.field.as_str()))
                        .push(" AND source = ")
                        .push_bind(Some(s.offered_by.source.as_str()));
                    qb.build().execute(&mut *tx).await.map_err(err(ENTITY))?;
                    let mut qb = QueryBuilder::new(
                        "INSERT INTO reconcile_suppressed (device_id, field, source, value, priority, observed_at, \
                         held_by, reason) SELECT id, ",
                    );
                    let reason = match s.reason {
                        ralph_core::reconcile::SuppressedReason::Locked => "locked",
                        ralph_core::reconcile::SuppressedReason::Outranked => "outranked",
                    };
                    let mut v = qb.separated(", ");
                    v.push_bind(Some(s.field.as_str()))
                        .push_bind(Some(s.offered_by.source.as_str()))
                        .push_bind(Some(s.value.as_str()))
                        .push_bind(Some(i64::from(s.offered_by.priority)))
                        .push_bind(Some(s.offered_by.at))
                        .push_bind(Some(s.held_by.source.as_str()))
                        .push_bind(Some(reason));
                    qb.push(" FROM devices WHERE id = ").push_bind(Some(device.get()));
                    qb.build().execute(&mut *tx).await.map_err(err(ENTITY))?;
                }
                commit(tx, ENTITY).await
            })
            .await?;
        }
        self.store_checksums(&plan.scan, &plan.checksums).await?;
        self.retrying(ENTITY, || async {
            let mut tx = self.begin(ENTITY).await?;
            for (seq, status) in &conflicts {
                Self::write_status(&mut tx, plan_id, *seq, status, None).await?;
            }
            let mut qb = QueryBuilder::new("UPDATE reconcile_plans SET applied_at = ");
            qb.push_bind(Some(Utc::now()))
                .push(", correlation = ")
                .push_bind(Some(correlation.as_str()))
                .push(" WHERE id = ")
                .push_bind(Some(plan_id.get()));
            qb.build().execute(&mut *tx).await.map_err(err(ENTITY))?;
            commit(tx, ENTITY).await
        })
        .await?;
        report.created = created;
        debug!(
            target: TRACE_TARGET,
            plan = plan_id.get(),
            applied = report.applied,
            failed = report.failed,
            skipped = report.skipped,
            "reconciliation plan applied"
        );
        Ok(report)
    }

    async fn open_conflicts(&self, limit: u32) -> Result<Vec<StoredConflict>, StoreError> {
        let mut qb = QueryBuilder::new(
            "SELECT id, plan_id, seq, body, created_at, resolved_by, note FROM reconcile_conflicts \
             WHERE resolved_at IS NULL ORDER BY id LIMIT ",
        );
        qb.push_bind(Some(i64::from(limit)));
        let rows = qb.build_query_as::<ConflictRow>().fetch_all(self.pool()).await.map_err(err(ENTITY))?;
        rows.into_iter()
            .map(|r| {
                Ok(StoredConflict {
                    id: Id::new(r.id),
                    plan: Id::new(r.plan_id),
                    seq: u32_of(r.seq),
                    change: from_json(&r.body)?,
                    created_at: r.created_at,
                    resolution: r.resolved_by.map(|by| (by, r.note)),
                })
            })
            .collect()
    }

    async fn resolve_conflict(
        &self,
        conflict: Id<StoredConflict>,
        actor: &Actor,
        note: Option<&str>,
    ) -> Result<bool, StoreError> {
        let by = actor.to_string();
        let changed = self
            .retrying(ENTITY, || async {
                let mut qb = QueryBuilder::new("UPDATE reconcile_conflicts SET resolved_at = ");
                qb.push_bind(Some(Utc::now()))
                    .push(", resolved_by = ")
                    .push_bind(Some(by.as_str()))
                    .push(", note = ")
                    .push_bind(note)
                    .push(" WHERE id = ")
                    .push_bind(Some(conflict.get()))
                    .push(" AND resolved_at IS NULL");
                qb.build().execute(self.pool()).await.map(|r| DB::rows_affected(&r)).map_err(err(ENTITY))
            })
            .await?;
        Ok(changed > 0)
    }

    async fn changed_addresses(&self, checksums: &BTreeMap<IpAddr, Checksum>) -> Result<Vec<IpAddr>, StoreError> {
        let mut stored: BTreeMap<String, String> = BTreeMap::new();
        let keys: Vec<String> = checksums.keys().map(|ip| ip_key(*ip)).collect();
        for chunk in keys.chunks(CHUNK) {
            let mut qb = QueryBuilder::new("SELECT address, checksum FROM reconcile_checksums WHERE ip_key IN (");
            push_list(&mut qb, chunk.iter().map(|k| Some(k.as_str())));
            qb.push(")");
            for r in qb.build_query_as::<ChecksumRow>().fetch_all(self.pool()).await.map_err(err(ENTITY))? {
                stored.insert(r.address, r.checksum);
            }
        }
        Ok(checksums.iter().filter(|(ip, c)| stored.get(&ip.to_string()) != Some(&c.0)).map(|(ip, _)| *ip).collect())
    }

    async fn set_field(
        &self,
        device: Id<Device>,
        field: Field,
        value: Option<&str>,
        actor: &Actor,
        lock: bool,
    ) -> Result<(), StoreError> {
        let value = value.map(str::trim).filter(|v| !v.is_empty());
        if value.is_none() && matches!(field, Field::Model | Field::DeviceType) {
            return Err(StoreError::invalid(Device::NAME, ValidationError::Empty { field: "model" }));
        }
        if let (Field::DeviceType, Some(v)) = (field, value) {
            DeviceType::parse(v).map_err(|e| StoreError::invalid(Device::NAME, e))?;
        }
        let correlation = new_correlation();
        self.retrying(ENTITY, || async {
            let mut tx = self.begin(ENTITY).await?;
            let state = Self::locked_state(&mut tx, device).await?;
            let before = state.value(field).map(str::to_owned);
            let mut values: BTreeMap<Field, String> = state.fields.iter().map(|(f, s)| (*f, s.value.clone())).collect();
            match value {
                Some(v) => values.insert(field, v.to_owned()),
                None => values.remove(&field),
            };
            let model_changed = matches!(field, Field::Model | Field::Manufacturer | Field::DeviceType);
            Self::write_device_columns(&mut tx, device, &values, model_changed).await?;
            let person = Provenance::person(&actor.name, Provenance::PERSON_PRIORITY, Utc::now());
            match value {
                Some(v) => {
                    let state = FieldState { value: v.to_owned(), provenance: person, locked: lock };
                    Self::write_fields(&mut tx, device, &[(field, &state)]).await?;
                }
                None => {
                    let mut qb = QueryBuilder::new("DELETE FROM reconcile_fields WHERE device_id = ");
                    qb.push_bind(Some(device.get())).push(" AND field = ").push_bind(Some(field.as_str()));
                    qb.build().execute(&mut *tx).await.map_err(err(ENTITY))?;
                }
            }
            let record = HistoryRecord::new(Device::NAME, device.get(), Action::Update, actor.clone())
                .with_changes(vec![FieldChange::new(field.as_str(), before.as_deref(), value)])
                .with_message(if lock { "set and locked by a person" } else { "set by a person" });
            Self::write_history(&mut tx, &[record], &correlation, Utc::now()).await?;
            commit(tx, ENTITY).await
        })
        .await
    }
}
