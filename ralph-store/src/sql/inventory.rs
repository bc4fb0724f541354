//! The inventory: how each model type maps onto its table (columns by name, unique keys, the
//! checks that need other rows), [`Repository`] for every model type and the
//! [`InventoryStore`] queries, once for all backends.

use std::net::IpAddr;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use ipnetwork::IpNetwork;
use ralph_core::{
    AssetStatus, Component, ComponentKind, CountryCode, DataCenter, Device, DeviceModel, DeviceType, Entity, Hostname,
    HostnameTemplate, Id, InventoryStore, IpAddress, IpStatus, MacAddress, Network, NetworkEnvironment, Orientation,
    Placement, Rack, RackSlot, Record, Repository, Secret, ServerRoom, SnmpVersion, StoreError, TransitionGraph,
    ValidationError, Vlan, check_rack_slot, ip_key, ip_to_u128, network_size, parse_cidr, parse_ip, u128_to_ip,
};
use sqlx::{ColumnIndex, Decode, Encode, Executor, FromRow, IntoArguments, QueryBuilder, Type};
use tracing::debug;

use ralph_core::history::{Action, HistoryRecord, new_correlation};

use super::history::ColumnText;
use super::{Columns, Mode, Writer, err};
use crate::dialect::{Backend, Stamp};
use crate::store::{SqlStore, TRACE_TARGET, commit};

/// The checks a model type needs beyond its own fields, run inside the write transaction.
pub(crate) enum Checks<'a> {
    /// None.
    None,
    /// A rack may not shrink below a device standing in it.
    Rack(&'a Rack),
    /// A model's shape may not change while devices use it.
    Model(&'a DeviceModel),
    /// A device's model, rack place and blade parent.
    Device(&'a Device),
}

/// A row type that every backend compiled in decodes (by column name). Implied by
/// [`Table::Row`]'s bound, so code generic over the model type (`AnyStore`) may hand it to any
/// of the stores.
pub(crate) trait AnyRow: Send + Unpin + FromSqlite + FromPostgres + FromMySql {}
impl<R: Send + Unpin + FromSqlite + FromPostgres + FromMySql> AnyRow for R {}

/// Declares `$name`: decodes from `$row` when `$feature` is on, nothing otherwise.
macro_rules! from_backend_row {
    ($name:ident, $feature:literal, $row:ty) => {
        #[cfg(feature = $feature)]
        pub(crate) trait $name: for<'r> FromRow<'r, $row> {}
        #[cfg(feature = $feature)]
        impl<R: for<'r> FromRow<'r, $row>> $name for R {}
        #[cfg(not(feature = $feature))]
        pub(crate) trait $name {}
        #[cfg(not(feature = $feature))]
        impl<R> $name for R {}
    };
}
from_backend_row!(FromSqlite, "sqlite", sqlx::sqlite::SqliteRow);
from_backend_row!(FromPostgres, "postgres", sqlx::postgres::PgRow);
from_backend_row!(FromMySql, "mysql", sqlx::mysql::MySqlRow);

/// A model type stored in one table.
pub(crate) trait Table: Entity {
    /// The table.
    const TABLE: &'static str;
    /// Unique keys, checked in code before a write (the database checks them again). A key
    /// with a NULL part is skipped: blanks never collide.
    const UNIQUE: &'static [&'static [&'static str]] = &[];
    /// The order of [`Repository::list`]-like reads.
    const ORDER: &'static str = "id";
    /// The row as stored, decoded by column name.
    type Row: AnyRow;

    /// Hands every column of `self` to `columns`.
    ///
    /// # Errors
    /// A value the table cannot hold.
    fn columns(&self, columns: &mut dyn Columns) -> Result<(), StoreError>;

    /// The value and id of a stored row.
    ///
    /// # Errors
    /// [`StoreError::Corrupt`] for a row the model refuses.
    fn from_row(row: Self::Row) -> Result<Record<Self>, StoreError>;

    /// The checks this value needs.
    fn checks(&self) -> Checks<'_> {
        Checks::None
    }
}

fn corrupt<T: Entity>(detail: impl Into<String>) -> StoreError {
    StoreError::Corrupt { entity: T::NAME, detail: detail.into() }
}

fn invalid<T: Entity>(error: ValidationError) -> StoreError {
    StoreError::invalid(T::NAME, error)
}

/// Parses stored text with a model parser; a refusal means the row is corrupt.
fn parse<T: Entity, V>(text: &str, parse: impl FnOnce(&str) -> Result<V, ValidationError>) -> Result<V, StoreError> {
    parse(text).map_err(|e| corrupt::<T>(e.to_string()))
}

fn parse_opt<T: Entity, V>(
    text: Option<&str>,
    parser: impl FnOnce(&str) -> Result<V, ValidationError>,
) -> Result<Option<V>, StoreError> {
    text.map(|t| parse::<T, V>(t, parser)).transpose()
}

fn u32_of<T: Entity>(value: i64) -> Result<u32, StoreError> {
    u32::try_from(value).map_err(|_| corrupt::<T>(format!("{value} is out of range")))
}

fn opt_u32_of<T: Entity>(value: Option<i64>) -> Result<Option<u32>, StoreError> {
    value.map(u32_of::<T>).transpose()
}

fn record<T>(id: i64, value: T) -> Record<T> {
    Record { id: Id::new(id), value }
}

#[derive(FromRow)]
pub(crate) struct DataCenterRow {
    id: i64,
    name: String,
    country: Option<String>,
    city: Option<String>,
    address: Option<String>,
}

impl Table for DataCenter {
    const TABLE: &'static str = "data_centers";
    const UNIQUE: &'static [&'static [&'static str]] = &[&["name"]];
    type Row = DataCenterRow;

    fn columns(&self, c: &mut dyn Columns) -> Result<(), StoreError> {
        c.text("name", Some(&self.name));
        c.text("country", self.country.map(|c| c.as_str()));
        c.text("city", self.city.as_deref());
        c.text("address", self.address.as_deref());
        Ok(())
    }

    fn from_row(r: DataCenterRow) -> Result<Record<Self>, StoreError> {
        let country = parse_opt::<Self, _>(r.country.as_deref(), CountryCode::parse)?;
        Ok(record(r.id, Self { name: r.name, country, city: r.city, address: r.address }))
    }
}

#[derive(FromRow)]
pub(crate) struct ServerRoomRow {
    id: i64,
    name: String,
    data_center_id: i64,
}

impl Table for ServerRoom {
    const TABLE: &'static str = "server_rooms";
    const UNIQUE: &'static [&'static [&'static str]] = &[&["data_center_id", "name"]];
    type Row = ServerRoomRow;

    fn columns(&self, c: &mut dyn Columns) -> Result<(), StoreError> {
        c.text("name", Some(&self.name));
        c.int("data_center_id", Some(self.data_center.get()));
        Ok(())
    }

    fn from_row(r: ServerRoomRow) -> Result<Record<Self>, StoreError> {
        Ok(record(r.id, Self { name: r.name, data_center: Id::new(r.data_center_id) }))
    }
}

#[derive(FromRow)]
pub(crate) struct RackRow {
    id: i64,
    name: String,
    server_room_id: i64,
    max_u_height: i64,
    orientation: String,
    reverse_ordering: bool,
}

impl Table for Rack {
    const TABLE: &'static str = "racks";
    const UNIQUE: &'static [&'static [&'static str]] = &[&["server_room_id", "name"]];
    type Row = RackRow;

    fn columns(&self, c: &mut dyn Columns) -> Result<(), StoreError> {
        c.text("name", Some(&self.name));
        c.int("server_room_id", Some(self.server_room.get()));
        c.int("max_u_height", Some(i64::from(self.max_u_height)));
        c.text("orientation", Some(self.orientation.as_str()));
        c.bool("reverse_ordering", self.reverse_ordering);
        Ok(())
    }

    fn from_row(r: RackRow) -> Result<Record<Self>, StoreError> {
        Ok(record(
            r.id,
            Self {
                name: r.name,
                server_room: Id::new(r.server_room_id),
                max_u_height: u32_of::<Self>(r.max_u_height)?,
                orientation: parse::<Self, _>(&r.orientation, Orientation::parse)?,
                reverse_ordering: r.reverse_ordering,
            },
        ))
    }

    fn checks(&self) -> Checks<'_> {
        Checks::Rack(self)
    }
}

#[derive(FromRow)]
pub(crate) struct NetworkEnvironmentRow {
    id: i64,
    name: String,
    data_center_id: i64,
    queue: String,
    hostname_prefix: Option<String>,
    hostname_counter_length: Option<i64>,
    hostname_postfix: Option<String>,
}

impl Table for NetworkEnvironment {
    const TABLE: &'static str = "network_environments";
    const UNIQUE: &'static [&'static [&'static str]] = &[&["name"]];
    type Row = NetworkEnvironmentRow;

    fn columns(&self, c: &mut dyn Columns) -> Result<(), StoreError> {
        let t = self.hostname_template.as_ref();
        c.text("name", Some(&self.name));
        c.int("data_center_id", Some(self.data_center.get()));
        c.text("queue", Some(&self.queue));
        c.text("hostname_prefix", t.map(|t| t.prefix.as_str()));
        c.int("hostname_counter_length", t.map(|t| i64::from(t.counter_length)));
        c.text("hostname_postfix", t.map(|t| t.postfix.as_str()));
        Ok(())
    }

    fn from_row(r: NetworkEnvironmentRow) -> Result<Record<Self>, StoreError> {
        let hostname_template = match (r.hostname_prefix, r.hostname_counter_length) {
            (Some(prefix), Some(length)) => Some(HostnameTemplate {
                prefix,
                counter_length: u8::try_from(length).map_err(|_| corrupt::<Self>("counter length out of range"))?,
                postfix: r.hostname_postfix.unwrap_or_default(),
            }),
            _ => None,
        };
        Ok(record(
            r.id,
            Self { name: r.name, data_center: Id::new(r.data_center_id), queue: r.queue, hostname_template },
        ))
    }
}

/// The first and last sort keys of a network (see [`ralph_core::ip_key`]).
pub(crate) fn key_range(net: &IpNetwork) -> (String, String) {
    let first = ip_to_u128(net.network());
    let last = first.saturating_add(network_size(net) - 1);
    (ip_key(u128_to_ip(first)), ip_key(u128_to_ip(last)))
}

pub(crate) fn family(net: &IpNetwork) -> i64 {
    if net.is_ipv4() { 4 } else { 6 }
}

/// A network row; `family`, `prefix`, `first_key` and `last_key` are derived from `cidr` for
/// the containment queries and not read back.
#[derive(FromRow)]
pub(crate) struct NetworkRow {
    id: i64,
    name: String,
    cidr: String,
    gateway: Option<String>,
    reserved_from_beginning: i64,
    reserved_from_end: i64,
    vlan: Option<i64>,
    environment_id: Option<i64>,
}

impl Table for Network {
    const TABLE: &'static str = "networks";
    const UNIQUE: &'static [&'static [&'static str]] = &[&["cidr"]];
    type Row = NetworkRow;

    fn columns(&self, c: &mut dyn Columns) -> Result<(), StoreError> {
        let (first, last) = key_range(&self.cidr);
        c.text("name", Some(&self.name));
        c.text("cidr", Some(&self.cidr.to_string()));
        c.int("family", Some(family(&self.cidr)));
        c.int("prefix", Some(i64::from(self.cidr.prefix())));
        c.text("first_key", Some(&first));
        c.text("last_key", Some(&last));
        c.text("gateway", self.gateway.map(|g| g.to_string()).as_deref());
        c.int("reserved_from_beginning", Some(i64::from(self.reserved_from_beginning)));
        c.int("reserved_from_end", Some(i64::from(self.reserved_from_end)));
        c.int("vlan", self.vlan.map(|v| i64::from(v.get())));
        c.int("environment_id", self.environment.map(Id::get));
        Ok(())
    }

    fn from_row(r: NetworkRow) -> Result<Record<Self>, StoreError> {
        let vlan =
            opt_u32_of::<Self>(r.vlan)?.map(Vlan::new).transpose().map_err(|e| corrupt::<Self>(e.to_string()))?;
        Ok(record(
            r.id,
            Self {
                name: r.name,
                cidr: parse::<Self, _>(&r.cidr, parse_cidr)?,
                gateway: parse_opt::<Self, _>(r.gateway.as_deref(), parse_ip)?,
                reserved_from_beginning: u32_of::<Self>(r.reserved_from_beginning)?,
                reserved_from_end: u32_of::<Self>(r.reserved_from_end)?,
                vlan,
                environment: r.environment_id.map(Id::new),
            },
        ))
    }
}

/// An address row; `ip_key` is derived from `address` for ordering and not read back.
#[derive(FromRow)]
pub(crate) struct IpAddressRow {
    id: i64,
    address: String,
    hostname: Option<String>,
    is_management: bool,
    is_gateway: bool,
    status: String,
    last_seen: Option<DateTime<Utc>>,
    dead_ping_count: i64,
    is_buried: bool,
    snmp_name: Option<String>,
    snmp_community: Option<String>,
    snmp_version: Option<String>,
    http_family: Option<String>,
    device_id: Option<i64>,
    scan_checksum: Option<String>,
}

impl Table for IpAddress {
    const TABLE: &'static str = "ip_addresses";
    const UNIQUE: &'static [&'static [&'static str]] = &[&["ip_key"]];
    type Row = IpAddressRow;

    fn columns(&self, c: &mut dyn Columns) -> Result<(), StoreError> {
        c.text("address", Some(&self.address.to_string()));
        c.text("ip_key", Some(&ip_key(self.address)));
        c.text("hostname", self.hostname.as_ref().map(Hostname::as_str));
        c.bool("is_management", self.is_management);
        c.bool("is_gateway", self.is_gateway);
        c.text("status", Some(self.status.as_str()));
        c.time("last_seen", self.last_seen);
        c.int("dead_ping_count", Some(i64::from(self.dead_ping_count)));
        c.bool("is_buried", self.is_buried);
        c.text("snmp_name", self.snmp_name.as_deref());
        c.text("snmp_community", self.snmp_community.as_ref().map(Secret::expose));
        c.text("snmp_version", self.snmp_version.map(SnmpVersion::as_str));
        c.text("http_family", self.http_family.as_deref());
        c.int("device_id", self.device.map(Id::get));
        c.text("scan_checksum", self.scan_checksum.as_deref());
        Ok(())
    }

    fn from_row(r: IpAddressRow) -> Result<Record<Self>, StoreError> {
        Ok(record(
            r.id,
            Self {
                address: parse::<Self, _>(&r.address, parse_ip)?,
                hostname: parse_opt::<Self, _>(r.hostname.as_deref(), Hostname::parse)?,
                is_management: r.is_management,
                is_gateway: r.is_gateway,
                status: parse::<Self, _>(&r.status, IpStatus::parse)?,
                last_seen: r.last_seen,
                dead_ping_count: u32_of::<Self>(r.dead_ping_count)?,
                is_buried: r.is_buried,
                snmp_name: r.snmp_name,
                snmp_community: r.snmp_community.map(Secret::new),
                snmp_version: parse_opt::<Self, _>(r.snmp_version.as_deref(), SnmpVersion::parse)?,
                http_family: r.http_family,
                device: r.device_id.map(Id::new),
                scan_checksum: r.scan_checksum,
            },
        ))
    }
}

#[derive(FromRow)]
pub(crate) struct DeviceModelRow {
    id: i64,
    name: String,
    manufacturer: Option<String>,
    kind: String,
    height_u: i64,
    full_depth: bool,
}

impl Table for DeviceModel {
    const TABLE: &'static str = "device_models";
    const UNIQUE: &'static [&'static [&'static str]] = &[&["manufacturer", "name"]];
    type Row = DeviceModelRow;

    fn columns(&self, c: &mut dyn Columns) -> Result<(), StoreError> {
        c.text("name", Some(&self.name));
        c.text("manufacturer", self.manufacturer.as_deref());
        c.text("kind", Some(self.kind.as_str()));
        c.int("height_u", Some(i64::from(self.height_u)));
        c.bool("full_depth", self.full_depth);
        Ok(())
    }

    fn from_row(r: DeviceModelRow) -> Result<Record<Self>, StoreError> {
        Ok(record(
            r.id,
            Self {
                name: r.name,
                manufacturer: r.manufacturer,
                kind: parse::<Self, _>(&r.kind, DeviceType::parse)?,
                height_u: u32_of::<Self>(r.height_u)?,
                full_depth: r.full_depth,
            },
        ))
    }

    fn checks(&self) -> Checks<'_> {
        Checks::Model(self)
    }
}

#[derive(FromRow)]
pub(crate) struct DeviceRow {
    id: i64,
    hostname: Option<String>,
    serial_number: Option<String>,
    barcode: Option<String>,
    model_id: i64,
    rack_id: Option<i64>,
    position: Option<i64>,
    orientation: String,
    parent_id: Option<i64>,
    slot: Option<String>,
    service_env: Option<String>,
    status: String,
    management_ip: Option<String>,
}

impl Table for Device {
    const TABLE: &'static str = "devices";
    const UNIQUE: &'static [&'static [&'static str]] = &[&["serial_number"], &["barcode"], &["parent_id", "slot"]];
    type Row = DeviceRow;

    fn columns(&self, c: &mut dyn Columns) -> Result<(), StoreError> {
        let (rack, position, orientation, parent, slot) = match &self.placement {
            Placement::Unplaced => (None, None, Orientation::Front, None, None),
            Placement::Rack { rack, position, orientation } => (Some(rack.get()), *position, *orientation, None, None),
            Placement::Blade { parent, slot } => {
                (None, None, Orientation::Front, Some(parent.get()), Some(slot.as_str()))
            }
        };
        c.text("hostname", self.hostname.as_deref());
        c.text("serial_number", self.serial_number.as_deref());
        c.text("barcode", self.barcode.as_deref());
        c.int("model_id", Some(self.model.get()));
        c.int("rack_id", rack);
        c.int("position", position.map(i64::from));
        c.text("orientation", Some(orientation.as_str()));
        c.int("parent_id", parent);
        c.text("slot", slot);
        c.text("service_env", self.service_env.as_deref());
        c.text("status", Some(self.status.as_str()));
        c.text("management_ip", self.management_ip.map(|ip| ip.to_string()).as_deref());
        Ok(())
    }

    fn from_row(r: DeviceRow) -> Result<Record<Self>, StoreError> {
        let orientation = parse::<Self, _>(&r.orientation, Orientation::parse)?;
        let position = opt_u32_of::<Self>(r.position)?;
        let placement = match (r.rack_id, r.parent_id, r.slot) {
            (Some(rack), None, _) => Placement::Rack { rack: Id::new(rack), position, orientation },
            (None, Some(parent), Some(slot)) => Placement::Blade { parent: Id::new(parent), slot },
            (None, None, _) => Placement::Unplaced,
            _ => return Err(corrupt::<Self>("inconsistent placement columns")),
        };
        Ok(record(
            r.id,
            Self {
                hostname: r.hostname,
                serial_number: r.serial_number,
                barcode: r.barcode,
                model: Id::new(r.model_id),
                placement,
                service_env: r.service_env,
                status: parse::<Self, _>(&r.status, AssetStatus::parse)?,
                management_ip: parse_opt::<Self, _>(r.management_ip.as_deref(), parse_ip)?,
            },
        ))
    }

    fn checks(&self) -> Checks<'_> {
        Checks::Device(self)
    }
}

#[derive(FromRow)]
pub(crate) struct ComponentRow {
    id: i64,
    device_id: i64,
    kind: String,
    mac: Option<String>,
    label: Option<String>,
    speed_mbps: Option<i64>,
    idx: Option<i64>,
    model: Option<String>,
    cores: Option<i64>,
    size_mib: Option<i64>,
    mount_point: Option<String>,
    size_gib: Option<i64>,
    serial_number: Option<String>,
}

impl Table for Component {
    const TABLE: &'static str = "components";
    const UNIQUE: &'static [&'static [&'static str]] =
        &[&["mac"], &["device_id", "kind", "idx"], &["device_id", "mount_point"]];
    type Row = ComponentRow;

    fn columns(&self, c: &mut dyn Columns) -> Result<(), StoreError> {
        let size = |field, v: u64| i64::try_from(v).map_err(|_| invalid::<Self>(too_large(field)));
        c.int("device_id", Some(self.device.get()));
        c.text("kind", Some(self.kind.as_str()));
        // Every kind writes every column, the ones it does not use as NULL.
        let (mut mac, mut label, mut speed, mut index, mut model, mut cores) = (None, None, None, None, None, None);
        let (mut size_mib, mut mount_point, mut size_gib, mut serial) = (None, None, None, None);
        match &self.kind {
            ComponentKind::Ethernet { mac: m, label: l, speed_mbps } => {
                mac = Some(m.to_string());
                label = l.as_deref();
                speed = speed_mbps.map(i64::from);
            }
            ComponentKind::Processor { index: i, model: m, cores: n } => {
                index = Some(i64::from(*i));
                model = m.as_deref();
                cores = n.map(i64::from);
            }
            ComponentKind::Memory { index: i, size_mib: s } => {
                index = Some(i64::from(*i));
                size_mib = Some(size("size_mib", *s)?);
            }
            ComponentKind::Disk { mount_point: m, size_gib: s, serial_number } => {
                mount_point = Some(m.as_str());
                size_gib = Some(size("size_gib", *s)?);
                serial = serial_number.as_deref();
            }
        }
        c.text("mac", mac.as_deref());
        c.text("label", label);
        c.int("speed_mbps", speed);
        c.int("idx", index);
        c.text("model", model);
        c.int("cores", cores);
        c.int("size_mib", size_mib);
        c.text("mount_point", mount_point);
        c.int("size_gib", size_gib);
        c.text("serial_number", serial);
        Ok(())
    }

    fn from_row(r: ComponentRow) -> Result<Record<Self>, StoreError> {
        let missing = |what: &str| corrupt::<Self>(format!("{} component without {what}", r.kind));
        let unsigned = |v: Option<i64>, what: &str| {
            v.and_then(|v| u64::try_from(v).ok()).ok_or_else(|| corrupt::<Self>(format!("bad {what}")))
        };
        let index = opt_u32_of::<Self>(r.idx)?;
        let kind = match r.kind.as_str() {
            "ethernet" => ComponentKind::Ethernet {
                mac: parse_opt::<Self, _>(r.mac.as_deref(), MacAddress::parse)?.ok_or_else(|| missing("MAC"))?,
                label: r.label.clone(),
                speed_mbps: opt_u32_of::<Self>(r.speed_mbps)?,
            },
            "processor" => ComponentKind::Processor {
                index: index.ok_or_else(|| missing("index"))?,
                model: r.model.clone(),
                cores: opt_u32_of::<Self>(r.cores)?,
            },
            "memory" => ComponentKind::Memory {
                index: index.ok_or_else(|| missing("index"))?,
                size_mib: unsigned(r.size_mib, "size_mib")?,
            },
            "disk" => ComponentKind::Disk {
                mount_point: r.mount_point.clone().ok_or_else(|| missing("mount point"))?,
                size_gib: unsigned(r.size_gib, "size_gib")?,
                serial_number: r.serial_number.clone(),
            },
            other => return Err(corrupt::<Self>(format!("unknown component kind {other:?}"))),
        };
        Ok(record(r.id, Self { device: Id::new(r.device_id), kind }))
    }
}

fn too_large(field: &'static str) -> ValidationError {
    ValidationError::Invalid { field, reason: "too large to store".into() }
}

/// Rack cells a device takes, worked out before its row is written.
#[derive(Debug, Clone, Copy)]
struct Cells {
    rack: i64,
    slot: RackSlot,
}

#[derive(FromRow)]
struct SlotRow {
    id: i64,
    position: i64,
    orientation: String,
    height_u: i64,
    full_depth: bool,
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
    /// Rows of `T` whose `filter` holds (`push` adds it after `WHERE`), in `order`.
    async fn select<T>(
        &self,
        filter: impl FnOnce(&mut QueryBuilder<DB>),
        order: &str,
    ) -> Result<Vec<Record<T>>, StoreError>
    where
        T: Table,
        for<'r> T::Row: FromRow<'r, DB::Row>,
    {
        let mut qb = QueryBuilder::new(format!("SELECT * FROM {} WHERE ", T::TABLE));
        filter(&mut qb);
        qb.push(" ORDER BY ").push(order);
        let rows = qb.build_query_as::<T::Row>().fetch_all(self.pool()).await.map_err(err(T::NAME))?;
        rows.into_iter().map(T::from_row).collect()
    }

    async fn select_one<T>(&self, filter: impl FnOnce(&mut QueryBuilder<DB>)) -> Result<Option<Record<T>>, StoreError>
    where
        T: Table,
        for<'r> T::Row: FromRow<'r, DB::Row>,
    {
        Ok(self.select(filter, "id").await?.into_iter().next())
    }

    /// The id of the row of `table` where `column = id`, locked with `lock`, if there is one.
    async fn locked_id(
        conn: &mut DB::Connection,
        entity: &'static str,
        sql: &'static str,
        id: i64,
        lock: &str,
    ) -> Result<Option<i64>, StoreError> {
        let mut qb = QueryBuilder::new(sql);
        qb.push_bind(Some(id)).push(lock);
        qb.build_query_scalar::<i64>().fetch_optional(&mut *conn).await.map_err(err(entity))
    }

    /// Refuses a write that would repeat a unique key, naming the key; the database's own unique
    /// constraints back this up under races.
    async fn check_unique<T: Table>(conn: &mut DB::Connection, value: &T, id: Option<i64>) -> Result<(), StoreError> {
        for key in T::UNIQUE {
            let mut qb = QueryBuilder::new(format!("SELECT id FROM {} WHERE 1 = 1", T::TABLE));
            let mut w = Writer::new(&mut qb, Mode::Key(key));
            value.columns(&mut w)?;
            if w.null_key {
                continue;
            }
            if let Some(id) = id {
                qb.push(" AND id <> ").push_bind(Some(id));
            }
            qb.push(" LIMIT 1");
            let taken = qb.build_query_scalar::<i64>().fetch_optional(&mut *conn).await.map_err(err(T::NAME))?;
            if taken.is_some() {
                return Err(StoreError::Conflict { entity: T::NAME, constraint: key.join(", ") });
            }
        }
        Ok(())
    }

    /// The checks that need other rows, inside the write transaction, before the row is written.
    async fn before_write(
        conn: &mut DB::Connection,
        checks: Checks<'_>,
        id: Option<i64>,
    ) -> Result<Option<Cells>, StoreError> {
        match checks {
            Checks::None => Ok(None),
            Checks::Rack(rack) => {
                let Some(id) = id else { return Ok(None) };
                // Lock the rack so no device is placed while its height changes.
                Self::locked_id(conn, Rack::NAME, "SELECT id FROM racks WHERE id = ", id, DB::FOR_UPDATE).await?;
                let mut qb = QueryBuilder::new("SELECT MAX(unit) FROM rack_cells WHERE rack_id = ");
                qb.push_bind(Some(id));
                let highest =
                    qb.build_query_scalar::<Option<i64>>().fetch_one(&mut *conn).await.map_err(err(Rack::NAME))?;
                let height = rack.max_u_height;
                if let Some(unit) = highest.and_then(|u| u32::try_from(u).ok()).filter(|u| *u > height) {
                    return Err(invalid::<Rack>(ValidationError::OutOfRack {
                        position: unit,
                        height: 1,
                        rack_height: height,
                    }));
                }
                Ok(None)
            }
            Checks::Model(model) => {
                let Some(id) = id else { return Ok(None) };
                // Lock the model so no device is written against its old shape meanwhile.
                let Some(stored) = Self::load_model(conn, Id::new(id), DB::FOR_UPDATE).await? else { return Ok(None) };
                let changed = [
                    ("height_u", stored.height_u != model.height_u),
                    ("full_depth", stored.full_depth != model.full_depth),
                    ("kind", stored.kind != model.kind),
                ];
                let Some((field, _)) = changed.into_iter().find(|(_, changed)| *changed) else { return Ok(None) };
                // A locking read sees devices committed after this transaction's snapshot (MySQL).
                let mut qb = QueryBuilder::new("SELECT id FROM devices WHERE model_id = ");
                qb.push_bind(Some(id)).push(" LIMIT 1").push(DB::FOR_SHARE);
                let used =
                    qb.build_query_scalar::<i64>().fetch_optional(&mut *conn).await.map_err(err(DeviceModel::NAME))?;
                if used.is_some() {
                    return Err(invalid::<DeviceModel>(ValidationError::Invalid {
                        field,
                        reason: "devices use this model; move them to another model first".into(),
                    }));
                }
                Ok(None)
            }
            Checks::Device(device) => Self::check_device(conn, device, id).await,
        }
    }

    /// The model a device points at (share-locked: its shape cannot change until the device is
    /// written), or `None`.
    pub(crate) async fn load_model(
        conn: &mut DB::Connection,
        model: Id<DeviceModel>,
        lock: &str,
    ) -> Result<Option<DeviceModel>, StoreError> {
        let mut qb = QueryBuilder::new("SELECT * FROM device_models WHERE id = ");
        qb.push_bind(Some(model.get())).push(lock);
        let row =
            qb.build_query_as::<DeviceModelRow>().fetch_optional(&mut *conn).await.map_err(err(DeviceModel::NAME))?;
        row.map(|r| DeviceModel::from_row(r).map(|r| r.value)).transpose()
    }

    /// Checks the model, the rack (locked, so placements in one rack are serialised) and the
    /// blade parent, and works out the rack cells the device takes.
    async fn check_device(
        conn: &mut DB::Connection,
        device: &Device,
        id: Option<i64>,
    ) -> Result<Option<Cells>, StoreError> {
        let model =
            Self::load_model(conn, device.model, DB::FOR_SHARE).await?.ok_or_else(|| StoreError::Reference {
                entity: Device::NAME,
                detail: format!("device model {} does not exist", device.model),
            })?;
        device.validate_with_model(&model).map_err(invalid::<Device>)?;
        match &device.placement {
            Placement::Unplaced => Ok(None),
            Placement::Rack { rack, .. } => {
                let height = Self::locked_id(
                    conn,
                    Device::NAME,
                    "SELECT max_u_height FROM racks WHERE id = ",
                    rack.get(),
                    DB::FOR_UPDATE,
                )
                .await?
                .ok_or_else(|| StoreError::Reference {
                    entity: Device::NAME,
                    detail: format!("rack {rack} does not exist"),
                })?;
                let Some(slot) = device.rack_slot(&model) else { return Ok(None) };
                let mut qb = QueryBuilder::new(
                    "SELECT d.id, d.position, d.orientation, m.height_u, m.full_depth FROM devices d \
                     JOIN device_models m ON m.id = d.model_id WHERE d.rack_id = ",
                );
                qb.push_bind(Some(rack.get()))
                    .push(" AND d.id <> ")
                    .push_bind(Some(id.unwrap_or(0)))
                    .push(" AND d.position IS NOT NULL AND m.height_u > 0");
                let others = qb
                    .build_query_as::<SlotRow>()
                    .fetch_all(&mut *conn)
                    .await
                    .map_err(err(Device::NAME))?
                    .into_iter()
                    .map(|r| {
                        let slot = RackSlot {
                            position: u32_of::<Device>(r.position)?,
                            height: u32_of::<Device>(r.height_u)?,
                            orientation: parse::<Device, _>(&r.orientation, Orientation::parse)?,
                            full_depth: r.full_depth,
                        };
                        Ok((r.id, slot))
                    })
                    .collect::<Result<Vec<_>, StoreError>>()?;
                check_rack_slot(u32::try_from(height).unwrap_or(0), &slot, &others).map_err(invalid::<Device>)?;
                Ok(Some(Cells { rack: rack.get(), slot }))
            }
            Placement::Blade { parent, .. } => {
                let mut qb = QueryBuilder::new(
                    "SELECT m.kind FROM devices d JOIN device_models m ON m.id = d.model_id WHERE d.id = ",
                );
                qb.push_bind(Some(parent.get()));
                let kind =
                    qb.build_query_scalar::<String>().fetch_optional(&mut *conn).await.map_err(err(Device::NAME))?;
                let Some(kind) = kind else {
                    return Err(StoreError::Reference {
                        entity: Device::NAME,
                        detail: format!("blade system {parent} does not exist"),
                    });
                };
                if parse::<Device, _>(&kind, DeviceType::parse)? != DeviceType::BladeSystem {
                    return Err(invalid::<Device>(ValidationError::Placement(
                        "a blade's parent must be a blade system",
                    )));
                }
                Ok(None)
            }
        }
    }

    /// Replaces a device's rack cells; the cells' primary key refuses an overlap that a
    /// concurrent writer slipped past the check.
    async fn write_cells(conn: &mut DB::Connection, id: i64, cells: Option<Cells>) -> Result<(), StoreError> {
        let mut qb = QueryBuilder::new("DELETE FROM rack_cells WHERE device_id = ");
        qb.push_bind(Some(id));
        qb.build().execute(&mut *conn).await.map_err(err(Device::NAME))?;
        let Some(Cells { rack, slot }) = cells else { return Ok(()) };
        let mut qb = QueryBuilder::new("INSERT INTO rack_cells (rack_id, face, unit, device_id) ");
        qb.push_values(slot.cells(), |mut row, (face, unit)| {
            row.push_bind(Some(rack))
                .push_bind(Some(face.as_str()))
                .push_bind(Some(i64::from(unit)))
                .push_bind(Some(id));
        });
        qb.build().execute(&mut *conn).await.map(drop).map_err(err(Device::NAME))
    }

    /// The stored row of `T` with `id`, locked for the rest of the transaction.
    async fn locked_row<T>(conn: &mut DB::Connection, id: i64) -> Result<Option<Record<T>>, StoreError>
    where
        T: Table,
        for<'r> T::Row: FromRow<'r, DB::Row>,
    {
        let mut qb = QueryBuilder::new(format!("SELECT * FROM {} WHERE id = ", T::TABLE));
        qb.push_bind(Some(id)).push(DB::FOR_UPDATE);
        let row = qb.build_query_as::<T::Row>().fetch_optional(&mut *conn).await.map_err(err(T::NAME))?;
        row.map(T::from_row).transpose()
    }

    /// Records an inventory write in the change history, in its transaction, as made by this
    /// handle's actor; a write that changed nothing records nothing.
    async fn record_write<T: Table>(
        &self,
        conn: &mut DB::Connection,
        id: i64,
        action: Action,
        before: Option<&T>,
        after: Option<&T>,
    ) -> Result<(), StoreError> {
        let text = |value: Option<&T>| -> Result<Option<ColumnText>, StoreError> {
            value
                .map(|v| {
                    let mut c = ColumnText::default();
                    v.columns(&mut c).map(|()| c)
                })
                .transpose()
        };
        let (before, after) = (text(before)?, text(after)?);
        let mut record = HistoryRecord::new(T::NAME, id, action, self.actor().clone())
            .with_changes(ColumnText::diff(before.as_ref(), after.as_ref()));
        if let Some(device) =
            after.as_ref().or(before.as_ref()).and_then(|c| c.get("device_id")).and_then(|d| d.parse::<i64>().ok())
        {
            record = record.with_related(Device::NAME, device);
        }
        Self::write_history(conn, &[record], &new_correlation(), Utc::now()).await.map(drop)
    }

    /// Inserts `value` and returns its new id.
    pub(crate) async fn insert_row<T: Table>(conn: &mut DB::Connection, value: &T) -> Result<i64, StoreError> {
        let mut qb = QueryBuilder::new(format!("INSERT INTO {} (", T::TABLE));
        value.columns(&mut Writer::new(&mut qb, Mode::Names))?;
        qb.push(") VALUES (");
        value.columns(&mut Writer::new(&mut qb, Mode::Values))?;
        qb.push(")");
        let id = DB::insert_id(conn, qb).await.map_err(err(T::NAME))?;
        debug!(target: TRACE_TARGET, entity = T::NAME, id, "inserted");
        Ok(id)
    }
}

/// The cells a device write replaces: only devices have them.
fn has_cells(checks: &Checks<'_>) -> bool {
    matches!(checks, Checks::Device(_))
}

#[async_trait]
impl<DB, T> Repository<T> for SqlStore<DB>
where
    T: Table,
    for<'r> T::Row: FromRow<'r, DB::Row>,
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
    async fn create(&self, value: &T) -> Result<Id<T>, StoreError> {
        value.validate().map_err(|e| StoreError::invalid(T::NAME, e))?;
        self.retrying(T::NAME, || async {
            let mut tx = self.begin(T::NAME).await?;
            Self::check_unique(&mut tx, value, None).await?;
            let checks = value.checks();
            let cells_kept = has_cells(&checks);
            let cells = Self::before_write(&mut tx, checks, None).await?;
            let id = Self::insert_row(&mut tx, value).await?;
            if cells_kept {
                Self::write_cells(&mut tx, id, cells).await?;
            }
            self.record_write::<T>(&mut tx, id, Action::Create, None, Some(value)).await?;
            commit(tx, T::NAME).await?;
            Ok(Id::new(id))
        })
        .await
    }

    async fn get(&self, id: Id<T>) -> Result<Record<T>, StoreError> {
        self.select_one(|qb| {
            qb.push("id = ").push_bind(Some(id.get()));
        })
        .await?
        .ok_or_else(|| StoreError::NotFound { entity: T::NAME, key: id.to_string() })
    }

    async fn list(&self) -> Result<Vec<Record<T>>, StoreError> {
        self.select(
            |qb| {
                qb.push("1 = 1");
            },
            T::ORDER,
        )
        .await
    }

    async fn update(&self, id: Id<T>, value: &T) -> Result<(), StoreError> {
        value.validate().map_err(|e| StoreError::invalid(T::NAME, e))?;
        self.retrying(T::NAME, || async {
            let mut tx = self.begin(T::NAME).await?;
            let Some(before) = Self::locked_row::<T>(&mut tx, id.get()).await? else {
                return Err(StoreError::NotFound { entity: T::NAME, key: id.to_string() });
            };
            Self::check_unique(&mut tx, value, Some(id.get())).await?;
            let checks = value.checks();
            let cells_kept = has_cells(&checks);
            let cells = Self::before_write(&mut tx, checks, Some(id.get())).await?;
            let mut qb = QueryBuilder::new(format!("UPDATE {} SET ", T::TABLE));
            value.columns(&mut Writer::new(&mut qb, Mode::Set))?;
            qb.push(" WHERE id = ").push_bind(Some(id.get()));
            qb.build().execute(&mut *tx).await.map_err(err(T::NAME))?;
            if cells_kept {
                Self::write_cells(&mut tx, id.get(), cells).await?;
            }
            self.record_write::<T>(&mut tx, id.get(), Action::Update, Some(&before.value), Some(value)).await?;
            commit(tx, T::NAME).await
        })
        .await?;
        debug!(target: TRACE_TARGET, entity = T::NAME, id = id.get(), "updated");
        Ok(())
    }

    async fn delete(&self, id: Id<T>) -> Result<(), StoreError> {
        let sql = format!("DELETE FROM {} WHERE id = ", T::TABLE);
        let deleted = self
            .retrying(T::NAME, || async {
                let mut tx = self.begin(T::NAME).await?;
                let Some(before) = Self::locked_row::<T>(&mut tx, id.get()).await? else { return Ok(0) };
                let mut qb = QueryBuilder::new(&sql);
                qb.push_bind(Some(id.get()));
                let deleted =
                    qb.build().execute(&mut *tx).await.map(|r| DB::rows_affected(&r)).map_err(err(T::NAME))?;
                self.record_write::<T>(&mut tx, id.get(), Action::Delete, Some(&before.value), None).await?;
                commit(tx, T::NAME).await?;
                Ok(deleted)
            })
            .await?;
        if deleted == 0 {
            return Err(StoreError::NotFound { entity: T::NAME, key: id.to_string() });
        }
        debug!(target: TRACE_TARGET, entity = T::NAME, id = id.get(), "deleted");
        Ok(())
    }
}

#[async_trait]
impl<DB> InventoryStore for SqlStore<DB>
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
    async fn find_data_center(&self, name: &str) -> Result<Option<Record<DataCenter>>, StoreError> {
        self.select_one(|qb| {
            qb.push("name = ").push_bind(Some(name));
        })
        .await
    }

    async fn rack_devices(&self, rack: Id<Rack>) -> Result<Vec<Record<Device>>, StoreError> {
        // NULL positions (zero-U devices) last on every backend.
        self.select(
            |qb| {
                qb.push("rack_id = ").push_bind(Some(rack.get()));
            },
            "CASE WHEN position IS NULL THEN 1 ELSE 0 END, position, id",
        )
        .await
    }

    async fn find_device_by_serial(&self, serial: &str) -> Result<Option<Record<Device>>, StoreError> {
        self.select_one(|qb| {
            qb.push("serial_number = ").push_bind(Some(serial.trim()));
        })
        .await
    }

    async fn device_components(&self, device: Id<Device>) -> Result<Vec<Record<Component>>, StoreError> {
        self.select(
            |qb| {
                qb.push("device_id = ").push_bind(Some(device.get()));
            },
            "id",
        )
        .await
    }

    async fn transition_device(
        &self,
        id: Id<Device>,
        graph: &TransitionGraph,
        name: &str,
    ) -> Result<AssetStatus, StoreError> {
        let current = Repository::<Device>::get(self, id).await?.value.status;
        let next = graph.apply(name, current).map_err(|e| StoreError::invalid(Device::NAME, e))?;
        // Compare-and-set: a concurrent transition that moved the device first wins.
        let changed = self
            .retrying(Device::NAME, || async {
                let mut qb = QueryBuilder::new("UPDATE devices SET status = ");
                qb.push_bind(Some(next.as_str()))
                    .push(" WHERE id = ")
                    .push_bind(Some(id.get()))
                    .push(" AND status = ")
                    .push_bind(Some(current.as_str()));
                qb.build().execute(self.pool()).await.map(|r| DB::rows_affected(&r)).map_err(err(Device::NAME))
            })
            .await?;
        if changed == 0 {
            // Deleted meanwhile, or moved by a concurrent transition.
            Repository::<Device>::get(self, id).await?;
            return Err(StoreError::Conflict {
                entity: Device::NAME,
                constraint: format!("status changed from {current} concurrently"),
            });
        }
        debug!(target: TRACE_TARGET, id = id.get(), from = %current, to = %next, transition = name, "device status changed");
        Ok(next)
    }

    async fn network_containing(&self, ip: IpAddr) -> Result<Option<Record<Network>>, StoreError> {
        let key = ip_key(ip);
        let family: i64 = if ip.is_ipv4() { 4 } else { 6 };
        let rows = self
            .select::<Network>(
                |qb| {
                    qb.push("family = ")
                        .push_bind(Some(family))
                        .push(" AND first_key <= ")
                        .push_bind(Some(key.as_str()))
                        .push(" AND last_key >= ")
                        .push_bind(Some(key.as_str()));
                },
                "prefix DESC, id",
            )
            .await?;
        Ok(rows.into_iter().next())
    }

    async fn environment_networks(
        &self,
        environment: Id<NetworkEnvironment>,
    ) -> Result<Vec<Record<Network>>, StoreError> {
        self.select(
            |qb| {
                qb.push("environment_id = ").push_bind(Some(environment.get()));
            },
            "family, first_key, prefix",
        )
        .await
    }

    async fn find_ip(&self, ip: IpAddr) -> Result<Option<Record<IpAddress>>, StoreError> {
        let key = ip_key(ip);
        self.select_one(|qb| {
            qb.push("ip_key = ").push_bind(Some(key.as_str()));
        })
        .await
    }

    async fn ip_addresses_in(
        &self,
        range: IpNetwork,
        include_buried: bool,
    ) -> Result<Vec<Record<IpAddress>>, StoreError> {
        let (first, last) = key_range(&range);
        let rows = self
            .select::<IpAddress>(
                |qb| {
                    qb.push("ip_key >= ")
                        .push_bind(Some(first.as_str()))
                        .push(" AND ip_key <= ")
                        .push_bind(Some(last.as_str()));
                    if !include_buried {
                        qb.push(" AND is_buried = ").push_bind(false);
                    }
                },
                "ip_key",
            )
            .await?;
        // IPv4 keys live inside ::ffff:0:0/96, so a wide IPv6 range spans them: keep the family.
        let v4 = family(&range) == 4;
        Ok(rows.into_iter().filter(|r| r.address.is_ipv4() == v4).collect())
    }
}
