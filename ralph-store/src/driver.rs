//! The narrow seam between the store's SQL (written once) and each sqlx driver: bound values,
//! decoded rows, placeholders, transactions and driver-error mapping.

// `Driver` is the sealed half of the public `Backend` trait: its items are `pub` so they may
// appear in `Backend`'s bounds, yet this module is private, so none of them is reachable.
#![allow(unreachable_pub)]

use std::borrow::Cow;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use ralph_core::{StoreError, ValidationError};
use sqlx::error::ErrorKind;

use crate::PoolConfig;

/// A database the store runs on: [`sqlx::Sqlite`], [`sqlx::Postgres`] or [`sqlx::MySql`]
/// (each behind its cargo feature). Sealed: the store's SQL is only known to work on these.
pub trait Backend: sqlx::Database + Driver {}

/// One value bound to, or read from, a statement. The store only needs these four shapes,
/// which every backend encodes natively.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Int(Option<i64>),
    Text(Option<String>),
    Bool(bool),
    Time(Option<DateTime<Utc>>),
}

impl Value {
    pub(crate) fn text(value: impl Into<String>) -> Self {
        Self::Text(Some(value.into()))
    }

    pub(crate) fn is_null(&self) -> bool {
        matches!(self, Self::Int(None) | Self::Text(None) | Self::Time(None))
    }
}

impl From<i64> for Value {
    fn from(value: i64) -> Self {
        Self::Int(Some(value))
    }
}

impl From<u32> for Value {
    fn from(value: u32) -> Self {
        Self::Int(Some(i64::from(value)))
    }
}

impl From<Option<u32>> for Value {
    fn from(value: Option<u32>) -> Self {
        Self::Int(value.map(i64::from))
    }
}

impl From<bool> for Value {
    fn from(value: bool) -> Self {
        Self::Bool(value)
    }
}

impl From<&str> for Value {
    fn from(value: &str) -> Self {
        Self::text(value)
    }
}

impl From<Option<&str>> for Value {
    fn from(value: Option<&str>) -> Self {
        Self::Text(value.map(str::to_owned))
    }
}

impl From<Option<String>> for Value {
    fn from(value: Option<String>) -> Self {
        Self::Text(value)
    }
}

/// The type a column is decoded as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Int,
    Text,
    Bool,
    Time,
}

/// A decoded row, read left to right by the table mappings.
#[derive(Debug)]
pub struct Row {
    values: std::vec::IntoIter<Value>,
    entity: &'static str,
}

impl Row {
    pub(crate) fn new(values: Vec<Value>, entity: &'static str) -> Self {
        Self { values: values.into_iter(), entity }
    }

    pub(crate) fn corrupt(&self, detail: impl Into<String>) -> StoreError {
        StoreError::Corrupt { entity: self.entity, detail: detail.into() }
    }

    fn next(&mut self) -> Result<Value, StoreError> {
        self.values.next().ok_or_else(|| StoreError::Corrupt { entity: self.entity, detail: "missing column".into() })
    }

    pub(crate) fn opt_int(&mut self) -> Result<Option<i64>, StoreError> {
        match self.next()? {
            Value::Int(v) => Ok(v),
            other => Err(self.corrupt(format!("expected an integer, got {other:?}"))),
        }
    }

    pub(crate) fn int(&mut self) -> Result<i64, StoreError> {
        self.opt_int()?.ok_or_else(|| self.corrupt("unexpected NULL integer"))
    }

    pub(crate) fn opt_u32(&mut self) -> Result<Option<u32>, StoreError> {
        self.opt_int()?.map(|v| u32::try_from(v).map_err(|_| self.corrupt(format!("{v} is out of range")))).transpose()
    }

    pub(crate) fn u32(&mut self) -> Result<u32, StoreError> {
        self.opt_u32()?.ok_or_else(|| self.corrupt("unexpected NULL integer"))
    }

    pub(crate) fn opt_text(&mut self) -> Result<Option<String>, StoreError> {
        match self.next()? {
            Value::Text(v) => Ok(v),
            other => Err(self.corrupt(format!("expected text, got {other:?}"))),
        }
    }

    pub(crate) fn text(&mut self) -> Result<String, StoreError> {
        self.opt_text()?.ok_or_else(|| self.corrupt("unexpected NULL text"))
    }

    pub(crate) fn bool(&mut self) -> Result<bool, StoreError> {
        match self.next()? {
            Value::Bool(v) => Ok(v),
            other => Err(self.corrupt(format!("expected a boolean, got {other:?}"))),
        }
    }

    pub(crate) fn opt_time(&mut self) -> Result<Option<DateTime<Utc>>, StoreError> {
        match self.next()? {
            Value::Time(v) => Ok(v),
            other => Err(self.corrupt(format!("expected a time, got {other:?}"))),
        }
    }

    /// Skips a derived column (a sort key the model recomputes).
    pub(crate) fn skip(&mut self) -> Result<(), StoreError> {
        self.next().map(drop)
    }

    /// Parses text with a model parser; a refusal means the row is corrupt.
    pub(crate) fn parse<T>(&mut self, parse: impl FnOnce(&str) -> Result<T, ValidationError>) -> Result<T, StoreError> {
        let text = self.text()?;
        parse(&text).map_err(|e| self.corrupt(e.to_string()))
    }

    /// Like [`Row::parse`] for a nullable column.
    pub(crate) fn parse_opt<T>(
        &mut self,
        parse: impl FnOnce(&str) -> Result<T, ValidationError>,
    ) -> Result<Option<T>, StoreError> {
        match self.opt_text()? {
            Some(text) => parse(&text).map(Some).map_err(|e| self.corrupt(e.to_string())),
            None => Ok(None),
        }
    }
}

/// What an `INSERT`/`UPDATE`/`DELETE` did.
#[derive(Debug, Clone, Copy)]
pub struct Done {
    pub(crate) rows: u64,
    /// The generated id, on backends that report it (MySQL); the others use `RETURNING id`.
    pub(crate) last_id: Option<i64>,
}

/// Where the backends' SQL differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
    MySql,
}

impl Dialect {
    /// The store's SQL uses `?` placeholders; PostgreSQL wants `$1, $2...`.
    pub(crate) fn placeholders(self, sql: &str) -> Cow<'_, str> {
        if self != Self::Postgres || !sql.contains('?') {
            return Cow::Borrowed(sql);
        }
        let mut out = String::with_capacity(sql.len() + 16);
        let mut n = 0;
        let mut in_quote = false;
        for c in sql.chars() {
            match c {
                '\'' => {
                    in_quote = !in_quote;
                    out.push(c);
                }
                '?' if !in_quote => {
                    n += 1;
                    out.push('$');
                    out.push_str(&n.to_string());
                }
                _ => out.push(c),
            }
        }
        Cow::Owned(out)
    }

    /// Whether `INSERT ... RETURNING id` is how a new id is read back.
    pub(crate) fn returns_id(self) -> bool {
        self != Self::MySql
    }

    /// Row lock for a read inside a write transaction; SQLite has one writer already.
    pub(crate) fn for_update(self) -> &'static str {
        match self {
            Self::Sqlite => "",
            Self::Postgres | Self::MySql => " FOR UPDATE",
        }
    }

    /// Shared row lock for a read inside a write transaction (blocks writers of the row, not
    /// other readers); SQLite has one writer already.
    pub(crate) fn for_share(self) -> &'static str {
        match self {
            Self::Sqlite => "",
            Self::Postgres => " FOR SHARE",
            Self::MySql => " LOCK IN SHARE MODE",
        }
    }

    /// `INSERT` that silently skips a row whose unique key exists.
    pub(crate) fn insert_ignore(self, table: &str, columns: &str, conflict: &str) -> String {
        let values = vec!["?"; columns.split(',').count()].join(", ");
        match self {
            Self::MySql => format!("INSERT IGNORE INTO {table} ({columns}) VALUES ({values})"),
            Self::Sqlite | Self::Postgres => {
                format!("INSERT INTO {table} ({columns}) VALUES ({values}) ON CONFLICT ({conflict}) DO NOTHING")
            }
        }
    }
}

/// The per-driver primitives, implemented once by a macro for each sqlx database.
#[doc(hidden)]
#[async_trait]
pub trait Driver: sqlx::Database {
    #[doc(hidden)]
    const DIALECT: Dialect;

    #[doc(hidden)]
    async fn open(url: &str, config: &PoolConfig) -> Result<sqlx::Pool<Self>, sqlx::Error>;

    #[doc(hidden)]
    async fn migrate(pool: &sqlx::Pool<Self>) -> Result<(), sqlx::migrate::MigrateError>;

    #[doc(hidden)]
    async fn begin_write(pool: &sqlx::Pool<Self>) -> Result<sqlx::Transaction<'static, Self>, sqlx::Error>;

    #[doc(hidden)]
    async fn execute(conn: &mut Self::Connection, sql: &str, args: &[Value]) -> Result<Done, sqlx::Error>;

    #[doc(hidden)]
    async fn fetch(
        conn: &mut Self::Connection,
        sql: &str,
        args: &[Value],
        kinds: &[Kind],
    ) -> Result<Vec<Vec<Value>>, sqlx::Error>;
}

/// Binds every [`Value`] of `$args` to `$query`, each in the backend's native type.
macro_rules! bind_all {
    ($query:ident, $args:expr) => {
        for arg in $args {
            $query = match arg {
                Value::Int(v) => $query.bind(*v),
                Value::Text(v) => $query.bind(v.as_deref()),
                Value::Bool(v) => $query.bind(*v),
                Value::Time(v) => $query.bind(*v),
            };
        }
    };
}

/// Implements [`Driver`] for one sqlx database; the bodies are the same for every backend,
/// only the types and the few listed differences change.
macro_rules! driver {
    (
        feature = $feature:literal,
        db = $db:ty,
        dialect = $dialect:expr,
        open = $open:path,
        migrate = $migrate:path,
        begin = |$pool:ident| $begin:expr,
        last_id = |$res:ident| $last_id:expr $(,)?
    ) => {
        #[cfg(feature = $feature)]
        #[async_trait]
        impl Driver for $db {
            const DIALECT: Dialect = $dialect;

            async fn open(url: &str, config: &PoolConfig) -> Result<sqlx::Pool<Self>, sqlx::Error> {
                $open(url, config).await
            }

            async fn migrate(pool: &sqlx::Pool<Self>) -> Result<(), sqlx::migrate::MigrateError> {
                $migrate(pool).await
            }

            async fn begin_write($pool: &sqlx::Pool<Self>) -> Result<sqlx::Transaction<'static, Self>, sqlx::Error> {
                $begin.await
            }

            async fn execute(conn: &mut Self::Connection, sql: &str, args: &[Value]) -> Result<Done, sqlx::Error> {
                let sql = Self::DIALECT.placeholders(sql);
                let mut query = sqlx::query::<$db>(&sql);
                bind_all!(query, args);
                let $res = query.execute(&mut *conn).await?;
                Ok(Done { rows: $res.rows_affected(), last_id: $last_id })
            }

            async fn fetch(
                conn: &mut Self::Connection,
                sql: &str,
                args: &[Value],
                kinds: &[Kind],
            ) -> Result<Vec<Vec<Value>>, sqlx::Error> {
                use sqlx::Row as _;
                let sql = Self::DIALECT.placeholders(sql);
                let mut query = sqlx::query::<$db>(&sql);
                bind_all!(query, args);
                let rows = query.fetch_all(&mut *conn).await?;
                rows.iter()
                    .map(|row| {
                        kinds
                            .iter()
                            .enumerate()
                            .map(|(i, kind)| {
                                Ok(match kind {
                                    Kind::Int => Value::Int(row.try_get(i)?),
                                    // MySQL flags `utf8mb4_bin` text (usernames, group names) binary and
                                    // sqlx then refuses it as a string; its bytes are still UTF-8 text.
                                    Kind::Text => Value::Text(match row.try_get(i) {
                                        Err(sqlx::Error::ColumnDecode { .. }) if Self::DIALECT == Dialect::MySql => {
                                            row.try_get_unchecked(i)?
                                        }
                                        other => other?,
                                    }),
                                    Kind::Bool => Value::Bool(row.try_get(i)?),
                                    Kind::Time => Value::Time(row.try_get(i)?),
                                })
                            })
                            .collect()
                    })
                    .collect()
            }
        }

        #[cfg(feature = $feature)]
        impl Backend for $db {}
    };
}

// SQLite: `BEGIN IMMEDIATE` takes the write lock up front, so a transaction that reads before
// it writes (the rack overlap check) waits on busy_timeout instead of failing on upgrade.
driver! {
    feature = "sqlite",
    db = sqlx::Sqlite,
    dialect = Dialect::Sqlite,
    open = crate::sqlite::open,
    migrate = crate::sqlite::migrate,
    begin = |pool| pool.begin_with("BEGIN IMMEDIATE"),
    last_id = |r| Some(r.last_insert_rowid()),
}

driver! {
    feature = "postgres",
    db = sqlx::Postgres,
    dialect = Dialect::Postgres,
    open = crate::postgres::open,
    migrate = crate::postgres::migrate,
    begin = |pool| pool.begin(),
    last_id = |_r| None,
}

driver! {
    feature = "mysql",
    db = sqlx::MySql,
    dialect = Dialect::MySql,
    open = crate::mysql::open,
    migrate = crate::mysql::migrate,
    begin = |pool| pool.begin(),
    last_id = |r| i64::try_from(r.last_insert_id()).ok(),
}

/// Maps a driver error onto the core error classes, keeping the cause where there is one.
pub(crate) fn store_error(entity: &'static str, error: sqlx::Error) -> StoreError {
    match error {
        sqlx::Error::Database(db) => {
            let detail = db.constraint().map_or_else(|| db.message().to_owned(), str::to_owned);
            match db.kind() {
                ErrorKind::UniqueViolation => StoreError::Conflict { entity, constraint: detail },
                ErrorKind::ForeignKeyViolation => StoreError::Reference { entity, detail },
                ErrorKind::CheckViolation | ErrorKind::NotNullViolation => StoreError::Invalid {
                    entity,
                    source: ValidationError::Invalid { field: "constraint", reason: detail },
                },
                _ => StoreError::Backend(Box::new(sqlx::Error::Database(db))),
            }
        }
        sqlx::Error::RowNotFound => StoreError::NotFound { entity, key: "?".into() },
        e @ (sqlx::Error::ColumnDecode { .. }
        | sqlx::Error::Decode(_)
        | sqlx::Error::ColumnNotFound(_)
        | sqlx::Error::ColumnIndexOutOfBounds { .. }
        | sqlx::Error::TypeNotFound { .. }) => StoreError::Corrupt { entity, detail: e.to_string() },
        other => StoreError::Backend(Box::new(other)),
    }
}

/// Names the transient conflict behind `error` (a write that a second try may complete), or
/// `None` for any other error. Only errors the database reported count: a pool time-out or a
/// lost connection is not retried here (the write may have committed). Each backend's codes
/// are read from its own error type, so one database's code never matches another's rule.
pub(crate) fn transient_conflict(error: &StoreError) -> Option<&'static str> {
    let StoreError::Backend(cause) = error else { return None };
    let Some(sqlx::Error::Database(db)) = cause.downcast_ref::<sqlx::Error>() else { return None };
    #[cfg(feature = "mysql")]
    if let Some(my) = db.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>() {
        return mysql_conflict(my.number());
    }
    #[cfg(feature = "postgres")]
    if let Some(pg) = db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>() {
        return postgres_conflict(pg.code());
    }
    #[cfg(feature = "sqlite")]
    if db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some() {
        return sqlite_conflict(db.code()?.parse().ok()?);
    }
    None
}

/// MySQL / MariaDB error numbers of conflicts a new transaction may not meet.
#[cfg_attr(not(feature = "mysql"), allow(dead_code))]
fn mysql_conflict(number: u16) -> Option<&'static str> {
    match number {
        1213 => Some("deadlock"),
        1205 => Some("lock wait timeout"),
        // ER_CHECKREAD: a locking read met a row changed after the transaction's snapshot
        // (MariaDB with innodb_snapshot_isolation, the default from 11.6).
        1020 => Some("record changed since read"),
        _ => None,
    }
}

/// PostgreSQL SQLSTATEs of conflicts a new transaction may not meet.
#[cfg_attr(not(feature = "postgres"), allow(dead_code))]
fn postgres_conflict(sqlstate: &str) -> Option<&'static str> {
    match sqlstate {
        "40001" => Some("serialization failure"),
        "40P01" => Some("deadlock"),
        _ => None,
    }
}

/// SQLite reports its extended result code; the primary code is its low byte.
#[cfg_attr(not(feature = "sqlite"), allow(dead_code))]
fn sqlite_conflict(extended: u32) -> Option<&'static str> {
    match extended & 0xff {
        5 => Some("database busy"),
        6 => Some("database table locked"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_backend_has_its_own_conflict_codes() {
        assert_eq!(mysql_conflict(1213), Some("deadlock"));
        assert_eq!(mysql_conflict(1062), None, "a duplicate key is not transient");
        assert_eq!(postgres_conflict("40P01"), Some("deadlock"));
        // SQLSTATEs whose digits end in ...05/...06 as numbers are no SQLite codes: a NUL byte
        // in text (22021) or a missing privilege (42501) is not retried as "busy".
        for sqlstate in ["22021", "42501", "23505"] {
            assert_eq!(postgres_conflict(sqlstate), None, "{sqlstate}");
        }
        assert_eq!(sqlite_conflict(5), Some("database busy"));
        assert_eq!(sqlite_conflict(517), Some("database busy"), "SQLITE_BUSY_SNAPSHOT");
        assert_eq!(sqlite_conflict(2067), None, "SQLITE_CONSTRAINT_UNIQUE");
    }

    #[test]
    fn postgres_placeholders_are_numbered() {
        assert_eq!(Dialect::Postgres.placeholders("a = ? AND b IN (?, ?)"), "a = $1 AND b IN ($2, $3)");
        assert_eq!(Dialect::Postgres.placeholders("x = '?' AND y = ?"), "x = '?' AND y = $1");
        assert_eq!(Dialect::MySql.placeholders("a = ?"), "a = ?");
        assert_eq!(
            Dialect::Sqlite.insert_ignore("g", "name", "name"),
            "INSERT INTO g (name) VALUES (?) ON CONFLICT (name) DO NOTHING"
        );
    }
}
