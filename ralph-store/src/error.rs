//! Driver errors as [`StoreError`] classes, and which of them are transient conflicts that a
//! retried transaction may not meet again.

use ralph_core::{StoreError, ValidationError};
use sqlx::error::ErrorKind;

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
}
