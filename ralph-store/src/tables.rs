//! How each model type maps onto its table: columns, unique keys, and the checks that need
//! other rows (rack placement, blade slots, rack height).

use async_trait::async_trait;
use ipnetwork::IpNetwork;
use ralph_core::{
    AssetStatus, Component, ComponentKind, CountryCode, DataCenter, Device, DeviceModel, DeviceType, Entity, Hostname,
    HostnameTemplate, Id, IpAddress, IpStatus, MacAddress, Network, NetworkEnvironment, Orientation, Placement, Rack,
    RackSlot, Secret, ServerRoom, SnmpVersion, StoreError, ValidationError, Vlan, check_rack_slot, ip_key, ip_to_u128,
    network_size, parse_cidr, parse_ip, u128_to_ip,
};

use crate::driver::{Backend, Kind, Row, Value};
use crate::store::{execute, fetch, fetch_id};

/// Rack cells a device takes, worked out before its row is written.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Cells {
    rack: i64,
    slot: RackSlot,
}

/// A model type stored in one table.
#[async_trait]
pub(crate) trait Table: Entity {
    /// The table.
    const TABLE: &'static str;
    /// The columns after `id`, in the order of [`Table::values`] and [`Table::decode`].
    const COLUMNS: &'static [(&'static str, Kind)];
    /// Unique keys, checked in code before a write (the database checks them again). A key
    /// with a NULL part is skipped: blanks never collide.
    const UNIQUE: &'static [&'static [&'static str]] = &[];

    /// The column values of `self`.
    fn values(&self) -> Result<Vec<Value>, StoreError>;

    /// Reads the columns back (after `id`).
    fn decode(row: &mut Row) -> Result<Self, StoreError>;

    /// Checks that need other rows, inside the write transaction, before the row is written.
    async fn before_write<DB: Backend>(
        &self,
        _conn: &mut DB::Connection,
        _id: Option<i64>,
    ) -> Result<Option<Cells>, StoreError> {
        Ok(None)
    }

    /// Writes that go with the row, inside the same transaction.
    async fn after_write<DB: Backend>(
        &self,
        _conn: &mut DB::Connection,
        _id: i64,
        _cells: Option<Cells>,
    ) -> Result<(), StoreError> {
        Ok(())
    }
}

/// `id, col1, col2...`.
pub(crate) fn select_list<T: Table>(prefix: &str) -> String {
    std::iter::once("id")
        .chain(T::COLUMNS.iter().map(|(c, _)| *c))
        .map(|c| format!("{prefix}{c}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The decode kinds of `id` plus the columns.
pub(crate) fn kinds<T: Table>() -> Vec<Kind> {
    std::iter::once(Kind::Int).chain(T::COLUMNS.iter().map(|(_, k)| *k)).collect()
}

/// The column names.
pub(crate) fn column_names<T: Table>() -> Vec<&'static str> {
    T::COLUMNS.iter().map(|(c, _)| *c).collect()
}

fn invalid<T: Entity>(error: ValidationError) -> StoreError {
    StoreError::invalid(T::NAME, error)
}

fn id_of<T>(row: &mut Row) -> Result<Id<T>, StoreError> {
    row.int().map(Id::new)
}

fn opt_id_of<T>(row: &mut Row) -> Result<Option<Id<T>>, StoreError> {
    Ok(row.opt_int()?.map(Id::new))
}

fn too_large(field: &'static str) -> ValidationError {
    ValidationError::Invalid { field, reason: "too large to store".into() }
}

#[async_trait]
impl Table for DataCenter {
    const TABLE: &'static str = "data_centers";
    const COLUMNS: &'static [(&'static str, Kind)] =
        &[("name", Kind::Text), ("country", Kind::Text), ("city", Kind::Text), ("address", Kind::Text)];
    const UNIQUE: &'static [&'static [&'static str]] = &[&["name"]];

    fn values(&self) -> Result<Vec<Value>, StoreError> {
        Ok(vec![
            self.name.as_str().into(),
            self.country.map(|c| c.as_str()).into(),
            self.city.as_deref().into(),
            self.address.as_deref().into(),
        ])
    }

    fn decode(row: &mut Row) -> Result<Self, StoreError> {
        Ok(Self {
            name: row.text()?,
            country: row.parse_opt(CountryCode::parse)?,
            city: row.opt_text()?,
            address: row.opt_text()?,
        })
    }
}

#[async_trait]
impl Table for ServerRoom {
    const TABLE: &'static str = "server_rooms";
    const COLUMNS: &'static [(&'static str, Kind)] = &[("name", Kind::Text), ("data_center_id", Kind::Int)];
    const UNIQUE: &'static [&'static [&'static str]] = &[&["data_center_id", "name"]];

    fn values(&self) -> Result<Vec<Value>, StoreError> {
        Ok(vec![self.name.as_str().into(), self.data_center.get().into()])
    }

    fn decode(row: &mut Row) -> Result<Self, StoreError> {
        Ok(Self { name: row.text()?, data_center: id_of(row)? })
    }
}

#[async_trait]
impl Table for Rack {
    const TABLE: &'static str = "racks";
    const COLUMNS: &'static [(&'static str, Kind)] = &[
        ("name", Kind::Text),
        ("server_room_id", Kind::Int),
        ("max_u_height", Kind::Int),
        ("orientation", Kind::Text),
        ("reverse_ordering", Kind::Bool),
    ];
    const UNIQUE: &'static [&'static [&'static str]] = &[&["server_room_id", "name"]];

    fn values(&self) -> Result<Vec<Value>, StoreError> {
        Ok(vec![
            self.name.as_str().into(),
            self.server_room.get().into(),
            self.max_u_height.into(),
            self.orientation.as_str().into(),
            self.reverse_ordering.into(),
        ])
    }

    fn decode(row: &mut Row) -> Result<Self, StoreError> {
        Ok(Self {
            name: row.text()?,
            server_room: id_of(row)?,
            max_u_height: row.u32()?,
            orientation: row.parse(Orientation::parse)?,
            reverse_ordering: row.bool()?,
        })
    }

    /// A rack may not shrink below a device standing in it.
    async fn before_write<DB: Backend>(
        &self,
        conn: &mut DB::Connection,
        id: Option<i64>,
    ) -> Result<Option<Cells>, StoreError> {
        let Some(id) = id else { return Ok(None) };
        // Lock the rack so no device is placed while its height changes.
        let sql = format!("SELECT id FROM racks WHERE id = ?{}", DB::DIALECT.for_update());
        fetch_id::<DB>(conn, Self::NAME, &sql, &[id.into()]).await?;
        let rows = fetch::<DB>(
            conn,
            Self::NAME,
            "SELECT MAX(unit) FROM rack_cells WHERE rack_id = ?",
            &[id.into()],
            &[Kind::Int],
        )
        .await?;
        let highest = rows.into_iter().next().map(|mut r| r.opt_int()).transpose()?.flatten();
        if let Some(unit) = highest.and_then(|u| u32::try_from(u).ok()).filter(|u| *u > self.max_u_height) {
            return Err(invalid::<Self>(ValidationError::OutOfRack {
                position: unit,
                height: 1,
                rack_height: self.max_u_height,
            }));
        }
        Ok(None)
    }
}

#[async_trait]
impl Table for NetworkEnvironment {
    const TABLE: &'static str = "network_environments";
    const COLUMNS: &'static [(&'static str, Kind)] = &[
        ("name", Kind::Text),
        ("data_center_id", Kind::Int),
        ("queue", Kind::Text),
        ("hostname_prefix", Kind::Text),
        ("hostname_counter_length", Kind::Int),
        ("hostname_postfix", Kind::Text),
    ];
    const UNIQUE: &'static [&'static [&'static str]] = &[&["name"]];

    fn values(&self) -> Result<Vec<Value>, StoreError> {
        let t = self.hostname_template.as_ref();
        Ok(vec![
            self.name.as_str().into(),
            self.data_center.get().into(),
            self.queue.as_str().into(),
            t.map(|t| t.prefix.as_str()).into(),
            t.map(|t| u32::from(t.counter_length)).into(),
            t.map(|t| t.postfix.as_str()).into(),
        ])
    }

    fn decode(row: &mut Row) -> Result<Self, StoreError> {
        let name = row.text()?;
        let data_center = id_of(row)?;
        let queue = row.text()?;
        let prefix = row.opt_text()?;
        let length = row.opt_int()?;
        let postfix = row.opt_text()?;
        let hostname_template = match (prefix, length) {
            (Some(prefix), Some(length)) => Some(HostnameTemplate {
                prefix,
                counter_length: u8::try_from(length).map_err(|_| row.corrupt("counter length out of range"))?,
                postfix: postfix.unwrap_or_default(),
            }),
            _ => None,
        };
        Ok(Self { name, data_center, queue, hostname_template })
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

#[async_trait]
impl Table for Network {
    const TABLE: &'static str = "networks";
    const COLUMNS: &'static [(&'static str, Kind)] = &[
        ("name", Kind::Text),
        ("cidr", Kind::Text),
        ("family", Kind::Int),
        ("prefix", Kind::Int),
        ("first_key", Kind::Text),
        ("last_key", Kind::Text),
        ("gateway", Kind::Text),
        ("reserved_from_beginning", Kind::Int),
        ("reserved_from_end", Kind::Int),
        ("vlan", Kind::Int),
        ("environment_id", Kind::Int),
    ];
    const UNIQUE: &'static [&'static [&'static str]] = &[&["cidr"]];

    fn values(&self) -> Result<Vec<Value>, StoreError> {
        let (first, last) = key_range(&self.cidr);
        Ok(vec![
            self.name.as_str().into(),
            self.cidr.to_string().as_str().into(),
            family(&self.cidr).into(),
            u32::from(self.cidr.prefix()).into(),
            first.as_str().into(),
            last.as_str().into(),
            Value::Text(self.gateway.map(|g| g.to_string())),
            self.reserved_from_beginning.into(),
            self.reserved_from_end.into(),
            self.vlan.map(u32::from).into(),
            Value::Int(self.environment.map(Id::get)),
        ])
    }

    fn decode(row: &mut Row) -> Result<Self, StoreError> {
        let name = row.text()?;
        let cidr = row.parse(parse_cidr)?;
        for _ in 0..4 {
            row.skip()?;
        }
        Ok(Self {
            name,
            cidr,
            gateway: row.parse_opt(parse_ip)?,
            reserved_from_beginning: row.u32()?,
            reserved_from_end: row.u32()?,
            vlan: row.opt_u32()?.map(Vlan::new).transpose().map_err(|e| row.corrupt(e.to_string()))?,
            environment: opt_id_of(row)?,
        })
    }
}

#[async_trait]
impl Table for IpAddress {
    const TABLE: &'static str = "ip_addresses";
    const COLUMNS: &'static [(&'static str, Kind)] = &[
        ("address", Kind::Text),
        ("ip_key", Kind::Text),
        ("hostname", Kind::Text),
        ("is_management", Kind::Bool),
        ("is_gateway", Kind::Bool),
        ("status", Kind::Text),
        ("last_seen", Kind::Time),
        ("dead_ping_count", Kind::Int),
        ("is_buried", Kind::Bool),
        ("snmp_name", Kind::Text),
        ("snmp_community", Kind::Text),
        ("snmp_version", Kind::Text),
        ("http_family", Kind::Text),
        ("device_id", Kind::Int),
        ("scan_checksum", Kind::Text),
    ];
    const UNIQUE: &'static [&'static [&'static str]] = &[&["ip_key"]];

    fn values(&self) -> Result<Vec<Value>, StoreError> {
        Ok(vec![
            self.address.to_string().as_str().into(),
            ip_key(self.address).as_str().into(),
            self.hostname.as_ref().map(Hostname::as_str).into(),
            self.is_management.into(),
            self.is_gateway.into(),
            self.status.as_str().into(),
            Value::Time(self.last_seen),
            self.dead_ping_count.into(),
            self.is_buried.into(),
            self.snmp_name.as_deref().into(),
            self.snmp_community.as_ref().map(Secret::expose).into(),
            self.snmp_version.map(SnmpVersion::as_str).into(),
            self.http_family.as_deref().into(),
            Value::Int(self.device.map(Id::get)),
            self.scan_checksum.as_deref().into(),
        ])
    }

    fn decode(row: &mut Row) -> Result<Self, StoreError> {
        let address = row.parse(parse_ip)?;
        row.skip()?;
        Ok(Self {
            address,
            hostname: row.parse_opt(Hostname::parse)?,
            is_management: row.bool()?,
            is_gateway: row.bool()?,
            status: row.parse(IpStatus::parse)?,
            last_seen: row.opt_time()?,
            dead_ping_count: row.u32()?,
            is_buried: row.bool()?,
            snmp_name: row.opt_text()?,
            snmp_community: row.opt_text()?.map(Secret::new),
            snmp_version: row.parse_opt(SnmpVersion::parse)?,
            http_family: row.opt_text()?,
            device: opt_id_of(row)?,
            scan_checksum: row.opt_text()?,
        })
    }
}

#[async_trait]
impl Table for DeviceModel {
    const TABLE: &'static str = "device_models";
    const COLUMNS: &'static [(&'static str, Kind)] = &[
        ("name", Kind::Text),
        ("manufacturer", Kind::Text),
        ("kind", Kind::Text),
        ("height_u", Kind::Int),
        ("full_depth", Kind::Bool),
    ];
    const UNIQUE: &'static [&'static [&'static str]] = &[&["manufacturer", "name"]];

    fn values(&self) -> Result<Vec<Value>, StoreError> {
        Ok(vec![
            self.name.as_str().into(),
            self.manufacturer.as_deref().into(),
            self.kind.as_str().into(),
            self.height_u.into(),
            self.full_depth.into(),
        ])
    }

    fn decode(row: &mut Row) -> Result<Self, StoreError> {
        Ok(Self {
            name: row.text()?,
            manufacturer: row.opt_text()?,
            kind: row.parse(DeviceType::parse)?,
            height_u: row.u32()?,
            full_depth: row.bool()?,
        })
    }

    /// The shape of a model (height, depth, kind) decides the rack cells and blade slots of its
    /// devices: it may not change while any device uses the model.
    async fn before_write<DB: Backend>(
        &self,
        conn: &mut DB::Connection,
        id: Option<i64>,
    ) -> Result<Option<Cells>, StoreError> {
        let Some(id) = id else { return Ok(None) };
        // Lock the model so no device is written against its old shape meanwhile.
        let sql =
            format!("SELECT {} FROM device_models WHERE id = ?{}", select_list::<Self>(""), DB::DIALECT.for_update());
        let rows = fetch::<DB>(conn, Self::NAME, &sql, &[id.into()], &kinds::<Self>()).await?;
        let Some(mut row) = rows.into_iter().next() else { return Ok(None) };
        row.skip()?;
        let stored = Self::decode(&mut row)?;
        let changed = [
            ("height_u", stored.height_u != self.height_u),
            ("full_depth", stored.full_depth != self.full_depth),
            ("kind", stored.kind != self.kind),
        ];
        let Some((field, _)) = changed.into_iter().find(|(_, changed)| *changed) else { return Ok(None) };
        // A locking read sees devices committed after this transaction's snapshot (MySQL).
        let sql = format!("SELECT id FROM devices WHERE model_id = ? LIMIT 1{}", DB::DIALECT.for_share());
        if fetch_id::<DB>(conn, Self::NAME, &sql, &[id.into()]).await?.is_some() {
            return Err(invalid::<Self>(ValidationError::Invalid {
                field,
                reason: "devices use this model; move them to another model first".into(),
            }));
        }
        Ok(None)
    }
}

#[async_trait]
impl Table for Device {
    const TABLE: &'static str = "devices";
    const COLUMNS: &'static [(&'static str, Kind)] = &[
        ("hostname", Kind::Text),
        ("serial_number", Kind::Text),
        ("barcode", Kind::Text),
        ("model_id", Kind::Int),
        ("rack_id", Kind::Int),
        ("position", Kind::Int),
        ("orientation", Kind::Text),
        ("parent_id", Kind::Int),
        ("slot", Kind::Text),
        ("service_env", Kind::Text),
        ("status", Kind::Text),
        ("management_ip", Kind::Text),
    ];
    const UNIQUE: &'static [&'static [&'static str]] = &[&["serial_number"], &["barcode"], &["parent_id", "slot"]];

    fn values(&self) -> Result<Vec<Value>, StoreError> {
        let (rack, position, orientation, parent, slot) = match &self.placement {
            Placement::Unplaced => (None, None, Orientation::Front, None, None),
            Placement::Rack { rack, position, orientation } => (Some(rack.get()), *position, *orientation, None, None),
            Placement::Blade { parent, slot } => {
                (None, None, Orientation::Front, Some(parent.get()), Some(slot.as_str()))
            }
        };
        Ok(vec![
            self.hostname.as_deref().into(),
            self.serial_number.as_deref().into(),
            self.barcode.as_deref().into(),
            self.model.get().into(),
            Value::Int(rack),
            position.into(),
            orientation.as_str().into(),
            Value::Int(parent),
            slot.into(),
            self.service_env.as_deref().into(),
            self.status.as_str().into(),
            Value::Text(self.management_ip.map(|ip| ip.to_string())),
        ])
    }

    fn decode(row: &mut Row) -> Result<Self, StoreError> {
        let hostname = row.opt_text()?;
        let serial_number = row.opt_text()?;
        let barcode = row.opt_text()?;
        let model = id_of(row)?;
        let rack = opt_id_of(row)?;
        let position = row.opt_u32()?;
        let orientation = row.parse(Orientation::parse)?;
        let parent = opt_id_of(row)?;
        let slot = row.opt_text()?;
        let placement = match (rack, parent, slot) {
            (Some(rack), None, _) => Placement::Rack { rack, position, orientation },
            (None, Some(parent), Some(slot)) => Placement::Blade { parent, slot },
            (None, None, _) => Placement::Unplaced,
            _ => return Err(row.corrupt("inconsistent placement columns")),
        };
        Ok(Self {
            hostname,
            serial_number,
            barcode,
            model,
            placement,
            service_env: row.opt_text()?,
            status: row.parse(AssetStatus::parse)?,
            management_ip: row.parse_opt(parse_ip)?,
        })
    }

    /// Checks the model, the rack (locked, so placements in one rack are serialised) and the
    /// blade parent, and works out the rack cells the device takes.
    async fn before_write<DB: Backend>(
        &self,
        conn: &mut DB::Connection,
        id: Option<i64>,
    ) -> Result<Option<Cells>, StoreError> {
        let model = load_model::<DB>(conn, self.model).await?;
        self.validate_with_model(&model).map_err(invalid::<Self>)?;
        match &self.placement {
            Placement::Unplaced => Ok(None),
            Placement::Rack { rack, .. } => {
                let sql = format!("SELECT max_u_height FROM racks WHERE id = ?{}", DB::DIALECT.for_update());
                let height = fetch_id::<DB>(conn, Self::NAME, &sql, &[rack.get().into()]).await?.ok_or_else(|| {
                    StoreError::Reference { entity: Self::NAME, detail: format!("rack {rack} does not exist") }
                })?;
                let Some(slot) = self.rack_slot(&model) else { return Ok(None) };
                let others = rack_slots::<DB>(conn, rack.get(), id.unwrap_or(0)).await?;
                let height = u32::try_from(height).unwrap_or(0);
                check_rack_slot(height, &slot, &others).map_err(invalid::<Self>)?;
                Ok(Some(Cells { rack: rack.get(), slot }))
            }
            Placement::Blade { parent, .. } => {
                let rows = fetch::<DB>(
                    conn,
                    Self::NAME,
                    "SELECT m.kind FROM devices d JOIN device_models m ON m.id = d.model_id WHERE d.id = ?",
                    &[parent.get().into()],
                    &[Kind::Text],
                )
                .await?;
                let Some(mut row) = rows.into_iter().next() else {
                    return Err(StoreError::Reference {
                        entity: Self::NAME,
                        detail: format!("blade system {parent} does not exist"),
                    });
                };
                if row.parse(DeviceType::parse)? != DeviceType::BladeSystem {
                    return Err(invalid::<Self>(ValidationError::Placement("a blade's parent must be a blade system")));
                }
                Ok(None)
            }
        }
    }

    /// Replaces the device's rack cells; the cells' primary key refuses an overlap that a
    /// concurrent writer slipped past the check.
    async fn after_write<DB: Backend>(
        &self,
        conn: &mut DB::Connection,
        id: i64,
        cells: Option<Cells>,
    ) -> Result<(), StoreError> {
        execute::<DB>(conn, Self::NAME, "DELETE FROM rack_cells WHERE device_id = ?", &[id.into()]).await?;
        let Some(Cells { rack, slot }) = cells else { return Ok(()) };
        let mut args = Vec::new();
        for (face, unit) in slot.cells() {
            args.extend([rack.into(), face.as_str().into(), unit.into(), id.into()]);
        }
        let rows = vec!["(?, ?, ?, ?)"; args.len() / 4].join(", ");
        let sql = format!("INSERT INTO rack_cells (rack_id, face, unit, device_id) VALUES {rows}");
        execute::<DB>(conn, Self::NAME, &sql, &args).await.map(drop)
    }
}

/// The model a device points at; a missing one is a broken reference.
async fn load_model<DB: Backend>(conn: &mut DB::Connection, model: Id<DeviceModel>) -> Result<DeviceModel, StoreError> {
    // Shared lock: the model's shape cannot change until this device is written.
    let sql =
        format!("SELECT {} FROM device_models WHERE id = ?{}", select_list::<DeviceModel>(""), DB::DIALECT.for_share());
    let rows = fetch::<DB>(conn, DeviceModel::NAME, &sql, &[model.get().into()], &kinds::<DeviceModel>()).await?;
    let Some(mut row) = rows.into_iter().next() else {
        return Err(StoreError::Reference {
            entity: Device::NAME,
            detail: format!("device model {model} does not exist"),
        });
    };
    row.skip()?;
    DeviceModel::decode(&mut row)
}

/// The slots of the devices in `rack`, except `except`.
async fn rack_slots<DB: Backend>(
    conn: &mut DB::Connection,
    rack: i64,
    except: i64,
) -> Result<Vec<(i64, RackSlot)>, StoreError> {
    let rows = fetch::<DB>(
        conn,
        Device::NAME,
        "SELECT d.id, d.position, d.orientation, m.height_u, m.full_depth FROM devices d \
         JOIN device_models m ON m.id = d.model_id \
         WHERE d.rack_id = ? AND d.id <> ? AND d.position IS NOT NULL AND m.height_u > 0",
        &[rack.into(), except.into()],
        &[Kind::Int, Kind::Int, Kind::Text, Kind::Int, Kind::Bool],
    )
    .await?;
    rows.into_iter()
        .map(|mut row| {
            let id = row.int()?;
            let position = row.u32()?;
            let orientation = row.parse(Orientation::parse)?;
            let height = row.u32()?;
            let full_depth = row.bool()?;
            Ok((id, RackSlot { position, height, orientation, full_depth }))
        })
        .collect()
}

#[async_trait]
impl Table for Component {
    const TABLE: &'static str = "components";
    const COLUMNS: &'static [(&'static str, Kind)] = &[
        ("device_id", Kind::Int),
        ("kind", Kind::Text),
        ("mac", Kind::Text),
        ("label", Kind::Text),
        ("speed_mbps", Kind::Int),
        ("idx", Kind::Int),
        ("model", Kind::Text),
        ("cores", Kind::Int),
        ("size_mib", Kind::Int),
        ("mount_point", Kind::Text),
        ("size_gib", Kind::Int),
        ("serial_number", Kind::Text),
    ];
    const UNIQUE: &'static [&'static [&'static str]] =
        &[&["mac"], &["device_id", "kind", "idx"], &["device_id", "mount_point"]];

    fn values(&self) -> Result<Vec<Value>, StoreError> {
        let size = |field, v: u64| i64::try_from(v).map(Some).map_err(|_| invalid::<Self>(too_large(field)));
        let mut v = vec![
            Value::from(self.device.get()),
            self.kind.as_str().into(),
            Value::Text(None),
            Value::Text(None),
            Value::Int(None),
            Value::Int(None),
            Value::Text(None),
            Value::Int(None),
            Value::Int(None),
            Value::Text(None),
            Value::Int(None),
            Value::Text(None),
        ];
        match &self.kind {
            ComponentKind::Ethernet { mac, label, speed_mbps } => {
                v[2] = Value::text(mac.to_string());
                v[3] = label.as_deref().into();
                v[4] = (*speed_mbps).into();
            }
            ComponentKind::Processor { index, model, cores } => {
                v[5] = (*index).into();
                v[6] = model.as_deref().into();
                v[7] = (*cores).into();
            }
            ComponentKind::Memory { index, size_mib } => {
                v[5] = (*index).into();
                v[8] = Value::Int(size("size_mib", *size_mib)?);
            }
            ComponentKind::Disk { mount_point, size_gib, serial_number } => {
                v[9] = mount_point.as_str().into();
                v[10] = Value::Int(size("size_gib", *size_gib)?);
                v[11] = serial_number.as_deref().into();
            }
        }
        Ok(v)
    }

    fn decode(row: &mut Row) -> Result<Self, StoreError> {
        let device = id_of(row)?;
        let kind = row.text()?;
        let mac = row.parse_opt(MacAddress::parse)?;
        let label = row.opt_text()?;
        let speed_mbps = row.opt_u32()?;
        let index = row.opt_u32()?;
        let model = row.opt_text()?;
        let cores = row.opt_u32()?;
        let size_mib = row.opt_int()?;
        let mount_point = row.opt_text()?;
        let size_gib = row.opt_int()?;
        let serial_number = row.opt_text()?;
        let missing = |what: &str| row.corrupt(format!("{kind} component without {what}"));
        let unsigned = |v: Option<i64>, what: &str| {
            v.and_then(|v| u64::try_from(v).ok()).ok_or_else(|| row.corrupt(format!("bad {what}")))
        };
        let kind = match kind.as_str() {
            "ethernet" => ComponentKind::Ethernet { mac: mac.ok_or_else(|| missing("MAC"))?, label, speed_mbps },
            "processor" => ComponentKind::Processor { index: index.ok_or_else(|| missing("index"))?, model, cores },
            "memory" => ComponentKind::Memory {
                index: index.ok_or_else(|| missing("index"))?,
                size_mib: unsigned(size_mib, "size_mib")?,
            },
            "disk" => ComponentKind::Disk {
                mount_point: mount_point.ok_or_else(|| missing("mount point"))?,
                size_gib: unsigned(size_gib, "size_gib")?,
                serial_number,
            },
            other => return Err(row.corrupt(format!("unknown component kind {other:?}"))),
        };
        Ok(Self { device, kind })
    }
}
