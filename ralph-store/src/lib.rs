//! # ralph-store
//!
//! [sqlx](https://docs.rs/sqlx) implementations of ralph-core's storage traits
//! ([`Repository`](ralph_core::Repository) for every model type,
//! [`InventoryStore`](ralph_core::InventoryStore), [`UserStore`](ralph_core::UserStore)) on
//! SQLite, PostgreSQL and MySQL/MariaDB, with one connection pool per store.
//!
//! ## Picking a backend
//!
//! Each backend is a cargo feature: `sqlite` (the default), `postgres`, `mysql`. Turn on the
//! ones you use and open the matching store with a URL:
//!
//! | feature    | store              | URL                                          |
//! |------------|--------------------|----------------------------------------------|
//! | `sqlite`   | [`SqliteStore`]    | `sqlite://ralph.sqlite3`, `sqlite::memory:`  |
//! | `postgres` | [`PgStore`]        | `postgres://user:pass@host:5432/ralph`       |
//! | `mysql`    | [`MySqlStore`]     | `mysql://user:pass@host:3306/ralph`          |
//!
//! [`AnyStore::connect`] picks the backend from the URL scheme when the choice is made at run
//! time. Pool sizes and time-outs come from [`PoolConfig`], which a host application can load
//! from its own configuration file.
//!
//! ## How the SQL is organised
//!
//! Every statement is written once, generically over the sqlx database, in `src/sql/`
//! (`inventory`, `users`, `queue`, `scan`): statements built with [`sqlx::QueryBuilder`], rows
//! decoded by column name into `#[derive(sqlx::FromRow)]` structs. What differs between the
//! databases (row locks, insert-or-ignore, returning ids, the queue's clock, job claims, the
//! bulk scan upsert) is in one dialect module per backend, `src/dialect/{sqlite,postgres,mysql}.rs`.
//!
//! ## Migrations
//!
//! The schema lives in `migrations/{sqlite,postgres,mysql}/` and is compiled into the crate.
//! [`SqlStore::connect`] applies the migrations that have not run yet, under a lock so that
//! several processes may start at once: sqlx's advisory lock on PostgreSQL, a named
//! `GET_LOCK` of the store's own on MySQL/MariaDB (MariaDB answers the infinite wait sqlx asks
//! for with NULL at once). [`SqlStore::from_pool`] skips them; [`SqlStore::migrate`] runs them
//! explicitly.
//! SQLite files are created when missing and opened in WAL mode with foreign keys on; MySQL
//! tables are InnoDB with `utf8mb4` and every connection speaks `utf8mb4`.
//!
//! ## Invariants
//!
//! Every write validates the value first and runs in one transaction. Uniqueness (names, serial
//! numbers, barcodes, MAC addresses, blade slots), references and value ranges are checked in
//! code and again by database constraints; a device's rack units are stored as cells under a
//! unique key, so two racing writers cannot overlap devices either. Driver errors come back as
//! [`StoreError`](ralph_core::StoreError) classes: `Conflict`, `Reference`, `Invalid`,
//! `Corrupt`, `Backend`.
//!
//! ## Conformance
//!
//! With the `conformance` feature, the `conformance` module holds the suite every store here
//! passes, as public async functions a host application can run on its own implementation of
//! the core storage traits (ralph-core's in-memory `testing::MemoryStore` passes the user-store
//! part).
//!
//! ## Example
//!
//! ```
//! # #[cfg(feature = "sqlite")]
//! # tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(async {
//! use ralph_core::{DataCenter, InventoryStore, Orientation, Rack, Repository, ServerRoom, StoreError};
//! use ralph_store::SqliteStore;
//!
//! let dir = tempfile::tempdir()?;
//! let url = format!("sqlite://{}", dir.path().join("ralph.sqlite3").display());
//! let store = SqliteStore::connect(&url).await?;
//!
//! let dc = store.create(&DataCenter::new("dc1", Some("pl"))?).await?;
//! let room = store.create(&ServerRoom::new("room-a", dc)?).await?;
//! store.create(&Rack::new("r1", room)?).await?;
//!
//! // A second rack with the same name in the same room is refused, and nothing is written.
//! let again = store.create(&Rack::new("r1", room)?).await;
//! assert!(matches!(again, Err(StoreError::Conflict { .. })));
//! assert_eq!(Repository::<Rack>::list(&store).await?.len(), 1);
//! assert_eq!(store.find_data_center("dc1").await?.map(|r| r.id), Some(dc));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # })?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod any;
mod config;
#[cfg(feature = "conformance")]
pub mod conformance;
mod dialect;
mod error;
pub mod queue;
mod retry;
#[cfg(feature = "mysql")]
pub mod schema_check;
mod sql;
mod store;

pub use any::AnyStore;
pub use config::{ConflictRetry, PoolConfig};
pub use dialect::Backend;
#[cfg(feature = "mysql")]
pub use dialect::mysql::COLLATION as MYSQL_COLLATION;
pub use store::{SqlStore, TRACE_TARGET};

/// The store on SQLite.
#[cfg(feature = "sqlite")]
pub type SqliteStore = SqlStore<sqlx::Sqlite>;
/// The store on PostgreSQL.
#[cfg(feature = "postgres")]
pub type PgStore = SqlStore<sqlx::Postgres>;
/// The store on MySQL or MariaDB.
#[cfg(feature = "mysql")]
pub type MySqlStore = SqlStore<sqlx::MySql>;

#[cfg(not(any(feature = "sqlite", feature = "postgres", feature = "mysql")))]
compile_error!("ralph-store needs at least one backend feature: sqlite, postgres or mysql");

/// Re-exported so a host application names pools and options with the same sqlx version.
pub use sqlx;
