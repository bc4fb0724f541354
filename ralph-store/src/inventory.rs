//! [`Repository`] for every model type and the [`InventoryStore`] queries, once for all backends.

use std::net::IpAddr;

use async_trait::async_trait;
use ipnetwork::IpNetwork;
use ralph_core::{
    AssetStatus, Component, DataCenter, Device, Entity, Id, InventoryStore, IpAddress, Network, NetworkEnvironment,
    Rack, Record, Repository, StoreError, TransitionGraph, ip_key,
};
use tracing::debug;

use crate::driver::{Backend, Value};
use crate::store::{SqlStore, TRACE_TARGET, commit, execute, fetch_id, insert};
use crate::tables::{Table, column_names, family, key_range, kinds, select_list};

/// Refuses a write that would repeat a unique key, naming the key; the database's own unique
/// constraints back this up under races.
async fn check_unique<DB: Backend, T: Table>(
    conn: &mut DB::Connection,
    values: &[Value],
    id: Option<i64>,
) -> Result<(), StoreError> {
    for key in T::UNIQUE {
        let mut args = Vec::with_capacity(key.len() + 1);
        for column in *key {
            let value = T::COLUMNS.iter().position(|(c, _)| c == column).and_then(|pos| values.get(pos));
            let Some(value) = value else { continue };
            args.push(value.clone());
        }
        if args.iter().any(Value::is_null) {
            continue;
        }
        let mut sql = format!(
            "SELECT id FROM {} WHERE {}",
            T::TABLE,
            key.iter().map(|c| format!("{c} = ?")).collect::<Vec<_>>().join(" AND ")
        );
        if let Some(id) = id {
            sql.push_str(" AND id <> ?");
            args.push(id.into());
        }
        sql.push_str(" LIMIT 1");
        if fetch_id::<DB>(conn, T::NAME, &sql, &args).await?.is_some() {
            return Err(StoreError::Conflict { entity: T::NAME, constraint: key.join(", ") });
        }
    }
    Ok(())
}

impl<DB: Backend> SqlStore<DB> {
    /// Rows of `T` matching `filter` (SQL after `WHERE`, `?` placeholders), in `order`.
    pub(crate) async fn select<T: Table>(
        &self,
        filter: &str,
        args: &[Value],
        order: &str,
    ) -> Result<Vec<Record<T>>, StoreError> {
        let sql = format!("SELECT {} FROM {} WHERE {filter} ORDER BY {order}", select_list::<T>(""), T::TABLE);
        let rows = self.read(T::NAME, &sql, args, &kinds::<T>()).await?;
        rows.into_iter()
            .map(|mut row| {
                let id = Id::new(row.int()?);
                Ok(Record { id, value: T::decode(&mut row)? })
            })
            .collect()
    }

    async fn select_one<T: Table>(&self, filter: &str, args: &[Value]) -> Result<Option<Record<T>>, StoreError> {
        Ok(self.select(filter, args, "id").await?.into_iter().next())
    }
}

#[async_trait]
impl<DB: Backend, T: Table> Repository<T> for SqlStore<DB> {
    async fn create(&self, value: &T) -> Result<Id<T>, StoreError> {
        value.validate().map_err(|e| StoreError::invalid(T::NAME, e))?;
        let values = &value.values()?;
        self.retrying(T::NAME, || async {
            let mut tx = self.begin(T::NAME).await?;
            check_unique::<DB, T>(&mut tx, values, None).await?;
            let cells = value.before_write::<DB>(&mut tx, None).await?;
            let id = insert::<DB>(&mut tx, T::NAME, T::TABLE, &column_names::<T>(), values).await?;
            value.after_write::<DB>(&mut tx, id, cells).await?;
            commit(tx, T::NAME).await?;
            Ok(Id::new(id))
        })
        .await
    }

    async fn get(&self, id: Id<T>) -> Result<Record<T>, StoreError> {
        self.select_one("id = ?", &[id.get().into()])
            .await?
            .ok_or_else(|| StoreError::NotFound { entity: T::NAME, key: id.to_string() })
    }

    async fn list(&self) -> Result<Vec<Record<T>>, StoreError> {
        self.select("1 = 1", &[], "id").await
    }

    async fn update(&self, id: Id<T>, value: &T) -> Result<(), StoreError> {
        value.validate().map_err(|e| StoreError::invalid(T::NAME, e))?;
        let values = &value.values()?;
        let update_args = &[values.as_slice(), &[id.get().into()]].concat();
        let set = column_names::<T>().iter().map(|c| format!("{c} = ?")).collect::<Vec<_>>().join(", ");
        let update = &format!("UPDATE {} SET {set} WHERE id = ?", T::TABLE);
        self.retrying(T::NAME, || async {
            let mut tx = self.begin(T::NAME).await?;
            let exists = fetch_id::<DB>(
                &mut tx,
                T::NAME,
                &format!("SELECT id FROM {} WHERE id = ?", T::TABLE),
                &[id.get().into()],
            )
            .await?;
            if exists.is_none() {
                return Err(StoreError::NotFound { entity: T::NAME, key: id.to_string() });
            }
            check_unique::<DB, T>(&mut tx, values, Some(id.get())).await?;
            let cells = value.before_write::<DB>(&mut tx, Some(id.get())).await?;
            execute::<DB>(&mut tx, T::NAME, update, update_args).await?;
            value.after_write::<DB>(&mut tx, id.get(), cells).await?;
            commit(tx, T::NAME).await
        })
        .await?;
        debug!(target: TRACE_TARGET, entity = T::NAME, id = id.get(), "updated");
        Ok(())
    }

    async fn delete(&self, id: Id<T>) -> Result<(), StoreError> {
        let sql = format!("DELETE FROM {} WHERE id = ?", T::TABLE);
        let args = [Value::from(id.get())];
        if self.retrying(T::NAME, || self.run(T::NAME, &sql, &args)).await? == 0 {
            return Err(StoreError::NotFound { entity: T::NAME, key: id.to_string() });
        }
        debug!(target: TRACE_TARGET, entity = T::NAME, id = id.get(), "deleted");
        Ok(())
    }
}

#[async_trait]
impl<DB: Backend> InventoryStore for SqlStore<DB> {
    async fn find_data_center(&self, name: &str) -> Result<Option<Record<DataCenter>>, StoreError> {
        self.select_one("name = ?", &[name.into()]).await
    }

    async fn rack_devices(&self, rack: Id<Rack>) -> Result<Vec<Record<Device>>, StoreError> {
        // NULL positions (zero-U devices) last on every backend.
        self.select("rack_id = ?", &[rack.get().into()], "CASE WHEN position IS NULL THEN 1 ELSE 0 END, position, id")
            .await
    }

    async fn find_device_by_serial(&self, serial: &str) -> Result<Option<Record<Device>>, StoreError> {
        self.select_one("serial_number = ?", &[serial.trim().into()]).await
    }

    async fn device_components(&self, device: Id<Device>) -> Result<Vec<Record<Component>>, StoreError> {
        self.select("device_id = ?", &[device.get().into()], "id").await
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
        let args = [next.as_str().into(), id.get().into(), current.as_str().into()];
        let changed = self
            .retrying(Device::NAME, || {
                self.run(Device::NAME, "UPDATE devices SET status = ? WHERE id = ? AND status = ?", &args)
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
                "family = ? AND first_key <= ? AND last_key >= ?",
                &[family.into(), key.as_str().into(), key.as_str().into()],
                "prefix DESC, id",
            )
            .await?;
        Ok(rows.into_iter().next())
    }

    async fn environment_networks(
        &self,
        environment: Id<NetworkEnvironment>,
    ) -> Result<Vec<Record<Network>>, StoreError> {
        self.select("environment_id = ?", &[environment.get().into()], "family, first_key, prefix").await
    }

    async fn find_ip(&self, ip: IpAddr) -> Result<Option<Record<IpAddress>>, StoreError> {
        self.select_one("ip_key = ?", &[ip_key(ip).as_str().into()]).await
    }

    async fn ip_addresses_in(
        &self,
        range: IpNetwork,
        include_buried: bool,
    ) -> Result<Vec<Record<IpAddress>>, StoreError> {
        let (first, last) = key_range(&range);
        let mut filter = String::from("ip_key >= ? AND ip_key <= ?");
        let mut args = vec![first.as_str().into(), last.as_str().into()];
        if !include_buried {
            filter.push_str(" AND is_buried = ?");
            args.push(false.into());
        }
        let rows = self.select::<IpAddress>(&filter, &args, "ip_key").await?;
        // IPv4 keys live inside ::ffff:0:0/96, so a wide IPv6 range spans them: keep the family.
        let v4 = family(&range) == 4;
        Ok(rows.into_iter().filter(|r| r.address.is_ipv4() == v4).collect())
    }
}
