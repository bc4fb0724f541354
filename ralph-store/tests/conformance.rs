//! The conformance suite: the functions of `ralph_store::conformance` against SQLite (a temp
//! file), PostgreSQL and MariaDB (each test on a fresh database derived from
//! `RALPH_TEST_PG_URL` / `RALPH_TEST_MYSQL_URL`), plus the checks that need raw SQL; and the
//! functions that apply to a user store alone against ralph-core's in-memory `MemoryStore`. A
//! backend is done when it passes all of them.

use ralph_core::{DataCenter, Device, DeviceModel, DeviceType, InventoryStore, Repository, StoreError};
use ralph_store::conformance::*;

mod store_common;

/// Raw SQL on the store's own pool, to plant rows the model would never write.
trait Raw {
    async fn raw(&self, sql: &str);
}

macro_rules! raw {
    ($($feature:literal => $store:ty),*) => {$(
        #[cfg(feature = $feature)]
        impl Raw for $store {
            async fn raw(&self, sql: &str) {
                ralph_store::sqlx::query(ralph_store::sqlx::AssertSqlSafe(sql.to_owned())).execute(self.pool()).await.expect("raw statement");
            }
        }
    )*};
}

raw!("sqlite" => ralph_store::SqliteStore, "postgres" => ralph_store::PgStore, "mysql" => ralph_store::MySqlStore);

/// A row the model cannot represent is reported as corrupt, never as a panic or a default.
async fn corrupt_rows_are_reported<S: InventoryStore + Raw>(s: &S) {
    let dc = s.create(&DataCenter::new("dc-corrupt", Some("de")).expect("dc")).await.expect("dc");
    let model = s.create(&DeviceModel::new("m", None, DeviceType::RackServer, 1).expect("m")).await.expect("m");
    let device = s.create(&Device::new(model, Some("d"), None, None)).await.expect("device");
    s.raw("UPDATE data_centers SET country = 'XX'").await;
    s.raw("UPDATE devices SET management_ip = 'not-an-address'").await;
    assert!(matches!(s.get(dc).await, Err(StoreError::Corrupt { .. })));
    assert!(matches!(Repository::<DataCenter>::list(s).await, Err(StoreError::Corrupt { .. })));
    assert!(matches!(s.get(device).await, Err(StoreError::Corrupt { .. })));
    assert!(matches!(s.find_data_center("dc-corrupt").await, Err(StoreError::Corrupt { .. })));
}

/// [`buried_between_ranges`] with the address rows planted through the inventory.
async fn buried_between_ranges<S: InventoryStore + ralph_core::ScanResultStore>(s: &S) {
    ralph_store::conformance::buried_between_ranges(s, async |record: ralph_core::IpAddress| {
        s.create(&record).await.expect("plant address");
    })
    .await;
}

/// Declares one test per suite function for a backend; `$open` makes a fresh store.
macro_rules! suite {
    ($backend:ident, $open:ident, $var:expr) => {
        mod $backend {
            suite!(@tests $open, $var,
                round_trip_every_model,
                bad_input_is_refused_and_writes_nothing,
                blank_serials_do_not_collide,
                smallest_containing_network,
                address_ranges_skip_buried,
                buried_between_ranges,
                users_profiles_groups,
                usernames_match_exactly,
                mirror_keeps_local_accounts,
                mirror_reports_what_changed,
                mirror_group_scope_keeps_other_groups,
                mirror_keeps_directories_apart,
                mirror_users_reports_each,
                racing_first_mirrors,
                racing_bulk_imports,
                batches_are_recorded_once,
                model_shape_is_fixed_while_in_use,
                utf8_round_trips_byte_for_byte,
                racing_placements_never_overlap,
                corrupt_rows_are_reported,
                racing_transitions_apply_once,
            );
        }
    };
    (@tests $open:ident, $var:expr, $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let base: String = match $var {
                    Some(var) => ralph_testkit::require!(var),
                    None => String::new(),
                };
                let (store, _guard) = super::$open(&base, stringify!($name)).await;
                super::$name(&store).await;
            }
        )*
    };
}

#[cfg(feature = "sqlite")]
async fn open_sqlite(_base: &str, _name: &str) -> (ralph_store::SqliteStore, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("conformance.sqlite3").display());
    (ralph_store::SqliteStore::connect(&url).await.expect("open sqlite"), dir)
}

#[cfg(feature = "postgres")]
async fn open_postgres(base: &str, name: &str) -> (ralph_store::PgStore, ()) {
    let url = store_common::fresh_postgres(base, &format!("c_{name}")).await;
    (ralph_store::PgStore::connect(&url).await.expect("open postgres"), ())
}

#[cfg(feature = "mysql")]
async fn open_mysql(base: &str, name: &str) -> (ralph_store::MySqlStore, ()) {
    let url = store_common::fresh_mysql(base, &format!("c_{name}")).await;
    (ralph_store::MySqlStore::connect(&url).await.expect("open mysql"), ())
}

#[cfg(feature = "sqlite")]
suite!(sqlite, open_sqlite, None::<&str>);
#[cfg(feature = "postgres")]
suite!(postgres, open_postgres, Some("RALPH_TEST_PG_URL"));
#[cfg(feature = "mysql")]
suite!(mysql, open_mysql, Some("RALPH_TEST_MYSQL_URL"));

/// The suite functions that need only a [`ralph_core::UserStore`], against the in-memory
/// reference store.
mod memory {
    use ralph_core::testing::MemoryStore;

    macro_rules! memory {
        ($($name:ident),* $(,)?) => {$(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                super::$name(&MemoryStore::new()).await;
            }
        )*};
    }

    memory!(
        users_profiles_groups,
        usernames_match_exactly,
        mirror_keeps_local_accounts,
        mirror_reports_what_changed,
        mirror_group_scope_keeps_other_groups,
        mirror_keeps_directories_apart,
        mirror_users_reports_each,
        racing_first_mirrors,
        racing_bulk_imports,
        utf8_users_round_trip,
    );

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn batches_are_recorded_once() {
        ralph_store::conformance::batches_are_recorded_once(&MemoryStore::new()).await;
    }

    #[tokio::test]
    async fn buried_between_ranges() {
        let store = MemoryStore::new();
        ralph_store::conformance::buried_between_ranges(&store, async |record: ralph_core::IpAddress| {
            store.insert_ip_address(&record).expect("plant address");
        })
        .await;
    }
}
