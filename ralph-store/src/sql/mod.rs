//! The store's SQL, written once for every backend on sqlx's own tools: statements are built
//! with [`sqlx::QueryBuilder`] (placeholders in each database's syntax), rows are decoded by
//! column name into `#[derive(sqlx::FromRow)]` structs, and what differs between databases is
//! asked of the backend's [`Dialect`](crate::dialect::Dialect).
//!
//! Generic code over a sqlx database has to name the types it binds and decodes; Rust does not
//! carry such bounds from a trait to its users, so each `impl` block of this module repeats the
//! same list: the executor, the arguments, and `i64`, `i32`, `bool`, `&str`/`String`,
//! `DateTime<Utc>` and the queue's [`Stamp`](crate::dialect::Stamp).

pub(crate) mod history;
pub(crate) mod inventory;
pub(crate) mod queue;
pub(crate) mod reconcile;
pub(crate) mod scan;
pub(crate) mod users;

use chrono::{DateTime, Utc};
use ralph_core::StoreError;
use sqlx::QueryBuilder;

use crate::dialect::Backend;
use crate::error::store_error;

/// Maps a driver error for `entity`.
pub(crate) fn err(entity: &'static str) -> impl Fn(sqlx::Error) -> StoreError {
    move |e| store_error(entity, e)
}

/// A model value's columns, named and typed, as a [`Table`](inventory::Table) hands them over:
/// the same calls fill an `INSERT`, an `UPDATE ... SET` and a unique-key check.
pub(crate) trait Columns {
    /// An integer column.
    fn int(&mut self, name: &'static str, value: Option<i64>);
    /// A text column.
    fn text(&mut self, name: &'static str, value: Option<&str>);
    /// A boolean column.
    fn bool(&mut self, name: &'static str, value: bool);
    /// A time column.
    fn time(&mut self, name: &'static str, value: Option<DateTime<Utc>>);
}

/// What a [`Writer`] builds from the columns it is handed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode<'k> {
    /// `c1, c2, ...` (the column list of an `INSERT`).
    Names,
    /// `?, ?, ...` (the values of an `INSERT`).
    Values,
    /// `c1 = ?, c2 = ?, ...` (an `UPDATE`'s assignments).
    Set,
    /// ` AND c1 = ? AND c2 = ?` for the columns of one unique key.
    Key(&'k [&'k str]),
}

/// Pushes the columns of a value into a statement.
pub(crate) struct Writer<'a, 'k, DB: Backend> {
    qb: &'a mut QueryBuilder<DB>,
    mode: Mode<'k>,
    first: bool,
    /// A key column was NULL: the key cannot collide.
    pub(crate) null_key: bool,
}

impl<'a, 'k, DB: Backend> Writer<'a, 'k, DB> {
    pub(crate) fn new(qb: &'a mut QueryBuilder<DB>, mode: Mode<'k>) -> Self {
        Self { qb, mode, first: true, null_key: false }
    }
}

impl<DB> Writer<'_, '_, DB>
where
    DB: Backend,
{
    /// Pushes the separator and column name this mode wants; false when the column is skipped.
    fn start(&mut self, name: &'static str, is_null: bool) -> bool {
        match self.mode {
            Mode::Key(key) if !key.contains(&name) => return false,
            Mode::Key(_) if is_null => {
                self.null_key = true;
                return false;
            }
            _ => {}
        }
        let sep = if self.first { "" } else { ", " };
        self.first = false;
        match self.mode {
            Mode::Names => {
                self.qb.push(sep).push(name);
                false
            }
            Mode::Values => {
                self.qb.push(sep);
                true
            }
            Mode::Set => {
                self.qb.push(sep).push(name).push(" = ");
                true
            }
            Mode::Key(_) => {
                self.qb.push(" AND ").push(name).push(" = ");
                true
            }
        }
    }
}

impl<DB> Columns for Writer<'_, '_, DB>
where
    DB: Backend,
    for<'q> Option<i64>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> Option<&'q str>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> Option<DateTime<Utc>>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> bool: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    fn int(&mut self, name: &'static str, value: Option<i64>) {
        if self.start(name, value.is_none()) {
            self.qb.push_bind(value);
        }
    }

    fn text(&mut self, name: &'static str, value: Option<&str>) {
        if self.start(name, value.is_none()) {
            self.qb.push_bind(value);
        }
    }

    fn bool(&mut self, name: &'static str, value: bool) {
        if self.start(name, false) {
            self.qb.push_bind(value);
        }
    }

    fn time(&mut self, name: &'static str, value: Option<DateTime<Utc>>) {
        if self.start(name, value.is_none()) {
            self.qb.push_bind(value);
        }
    }
}

/// Runs the `INSERT` in `qb` with `RETURNING id` (SQLite, PostgreSQL, MariaDB) and returns the
/// generated ids, ascending (the order of the `VALUES` rows).
pub(crate) async fn returning_ids<DB>(
    conn: &mut DB::Connection,
    mut qb: QueryBuilder<DB>,
) -> Result<Vec<i64>, sqlx::Error>
where
    DB: Backend,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    DB::Arguments: sqlx::IntoArguments<DB>,
    usize: sqlx::ColumnIndex<DB::Row>,
    for<'q> i64: sqlx::Decode<'q, DB> + sqlx::Type<DB>,
{
    qb.push(" RETURNING id");
    let mut ids = qb.build_query_scalar::<i64>().fetch_all(&mut *conn).await?;
    ids.sort_unstable();
    Ok(ids)
}

/// Like [`returning_ids`] for a one-row `INSERT` (MySQL's dialect reads the id otherwise).
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub(crate) async fn returning_id<DB>(conn: &mut DB::Connection, qb: QueryBuilder<DB>) -> Result<i64, sqlx::Error>
where
    DB: Backend,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    DB::Arguments: sqlx::IntoArguments<DB>,
    usize: sqlx::ColumnIndex<DB::Row>,
    for<'q> i64: sqlx::Decode<'q, DB> + sqlx::Type<DB>,
{
    returning_ids(conn, qb).await?.into_iter().next().ok_or(sqlx::Error::RowNotFound)
}

/// Pushes `?, ?, ...` binding each of `values` (an `IN (...)` list).
pub(crate) fn push_list<'t, DB, T>(qb: &mut QueryBuilder<DB>, values: impl IntoIterator<Item = T>)
where
    DB: Backend,
    T: sqlx::Encode<'t, DB> + sqlx::Type<DB>,
{
    let mut list = qb.separated(", ");
    for value in values {
        list.push_bind(value);
    }
}
