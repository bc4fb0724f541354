//! MySQL/MariaDB schema check: every table InnoDB and utf8mb4, with the `ALTER TABLE` fixes.
//!
//! Ralph's users on MySQL met error screens on non-ASCII names because some tables were
//! `latin1` or `utf8mb3` (which cannot hold emoji), and lost data to `MyISAM` tables that ignore
//! transactions. [`check_schema`] inspects `information_schema` for the connection's current
//! database and returns each problem with the exact statement that fixes it;
//! [`fix_schema`] runs those statements.
//!
//! ```no_run
//! # async fn demo(pool: sqlx::MySqlPool) -> Result<(), ralph_core::StoreError> {
//! use ralph_store::schema_check::{check_schema, fix_schema};
//!
//! let report = check_schema(&pool).await?;
//! for fix in report.fixes() {
//!     println!("{fix};"); // review, or run them yourself
//! }
//! if !report.is_clean() {
//!     let applied = fix_schema(&pool).await?; // runs them, then re-checks
//!     assert!(check_schema(&pool).await?.is_clean(), "applied {} fixes", applied.fixes().len());
//! }
//! # Ok(())
//! # }
//! ```
//!
//! The fixes are `ALTER TABLE t ENGINE = InnoDB` for a non-InnoDB table, `ALTER TABLE t CONVERT
//! TO CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_520_ci` for a table whose default character set
//! is not utf8mb4 (this converts its text columns too, keeping the data; MySQL widens `TEXT` to
//! `MEDIUMTEXT` where needed to keep the byte capacity), `ALTER TABLE t MODIFY c ... CHARACTER SET
//! utf8mb4 COLLATE utf8mb4_unicode_520_ci` for a single column of an otherwise utf8mb4 table, and
//! `ALTER DATABASE` for a database whose default would give new tables another character set.
//! Converting rewrites the table: on a large table run it in a maintenance window.

use std::fmt;

use ralph_core::StoreError;
use sqlx::Row;
use sqlx::mysql::MySqlPool;

/// The collation the fixes convert to.
pub const UTF8MB4_COLLATION: &str = crate::MYSQL_COLLATION;

fn backend(error: sqlx::Error) -> StoreError {
    StoreError::Backend(Box::new(error))
}

/// Which server and version a MySQL pool talks to; features differ between MySQL and MariaDB.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerInfo {
    /// `SELECT VERSION()` as the server reported it.
    pub version: String,
    /// `(major, minor, patch)` parsed from it.
    pub numbers: (u32, u32, u32),
    mariadb: bool,
}

impl ServerInfo {
    /// Asks the server.
    ///
    /// # Errors
    /// The query failed.
    pub async fn detect(pool: &MySqlPool) -> Result<Self, StoreError> {
        let version: String = sqlx::query_scalar("SELECT VERSION()").fetch_one(pool).await.map_err(backend)?;
        Ok(Self::parse(&version))
    }

    /// Reads a `VERSION()` string such as `8.0.36` or `10.11.6-MariaDB-0+deb12u1`.
    #[must_use]
    pub fn parse(version: &str) -> Self {
        let mut parts = version.split(|c: char| !c.is_ascii_digit()).map(|p| p.parse::<u32>().unwrap_or(0));
        let numbers = (parts.next().unwrap_or(0), parts.next().unwrap_or(0), parts.next().unwrap_or(0));
        Self { version: version.to_owned(), numbers, mariadb: version.to_ascii_lowercase().contains("mariadb") }
    }

    /// True for MariaDB, false for Oracle MySQL.
    #[must_use]
    pub fn is_mariadb(&self) -> bool {
        self.mariadb
    }

    /// `SELECT ... FOR UPDATE SKIP LOCKED`: MySQL ≥ 8.0.1, MariaDB ≥ 10.6.
    #[must_use]
    pub fn supports_skip_locked(&self) -> bool {
        if self.mariadb { self.numbers >= (10, 6, 0) } else { self.numbers >= (8, 0, 1) }
    }

    /// `INSERT ... RETURNING`: MariaDB ≥ 10.5; no MySQL.
    #[must_use]
    pub fn supports_returning(&self) -> bool {
        self.mariadb && self.numbers >= (10, 5, 0)
    }

    /// `INSERT ... AS new ON DUPLICATE KEY UPDATE c = new.c` (the row alias that replaces the
    /// deprecated `VALUES(c)`): MySQL ≥ 8.0.19. MariaDB has no row alias, and on MariaDB
    /// `VALUES()` is not deprecated.
    #[must_use]
    pub fn supports_row_alias(&self) -> bool {
        !self.mariadb && self.numbers >= (8, 0, 19)
    }
}

/// One problem found by [`check_schema`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SchemaIssue {
    /// The database's default character set is not utf8mb4 (new tables would inherit it).
    DatabaseCharset {
        /// The database.
        database: String,
        /// Its default character set.
        charset: String,
    },
    /// A table that is not InnoDB.
    Engine {
        /// The table.
        table: String,
        /// Its engine (`MyISAM`, `Aria`...).
        engine: String,
    },
    /// A table whose default collation is not a utf8mb4 one.
    TableCharset {
        /// The table.
        table: String,
        /// Its default collation.
        collation: String,
    },
    /// A text column that is not utf8mb4.
    ColumnCharset {
        /// The table.
        table: String,
        /// The column.
        column: String,
        /// Its character set.
        charset: String,
    },
}

impl fmt::Display for SchemaIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::DatabaseCharset { database, charset } => {
                write!(f, "database {database} defaults to character set {charset}, not utf8mb4")
            }
            Self::Engine { table, engine } => write!(f, "table {table} uses engine {engine}, not InnoDB"),
            Self::TableCharset { table, collation } => {
                write!(f, "table {table} defaults to collation {collation}, not a utf8mb4 one")
            }
            Self::ColumnCharset { table, column, charset } => {
                write!(f, "column {table}.{column} uses character set {charset}, not utf8mb4")
            }
        }
    }
}

/// What [`check_schema`] found: the issues and the statements that fix them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SchemaReport {
    issues: Vec<SchemaIssue>,
    fixes: Vec<String>,
}

impl SchemaReport {
    /// No issue found.
    #[must_use]
    pub fn is_clean(&self) -> bool {
        self.issues.is_empty()
    }

    /// Every issue, database first, then by table and column.
    #[must_use]
    pub fn issues(&self) -> &[SchemaIssue] {
        &self.issues
    }

    /// The statements that fix them, at most one per table, in the order to run them.
    #[must_use]
    pub fn fixes(&self) -> &[String] {
        &self.fixes
    }
}

/// A MySQL identifier in backticks.
fn ident(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}

/// A MySQL string literal.
fn literal(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "''"))
}

struct Table {
    name: String,
    engine: Option<String>,
    collation: Option<String>,
}

struct Column {
    table: String,
    name: String,
    charset: String,
    column_type: String,
    nullable: bool,
    default: Option<String>,
    comment: String,
    generated: bool,
}

impl Column {
    /// `MODIFY` clause that keeps the column's type, nullability, default and comment.
    fn modify_clause(&self, mariadb: bool) -> String {
        let mut clause = format!(
            "MODIFY {} {} CHARACTER SET utf8mb4 COLLATE {UTF8MB4_COLLATION} {}",
            ident(&self.name),
            self.column_type,
            if self.nullable { "NULL" } else { "NOT NULL" }
        );
        match &self.default {
            // MariaDB reports the default as an SQL expression (`'abc'`, `NULL`); MySQL reports
            // the bare value.
            Some(d) if mariadb && d != "NULL" => clause.push_str(&format!(" DEFAULT {d}")),
            Some(d) if !mariadb => clause.push_str(&format!(" DEFAULT {}", literal(d))),
            _ => {}
        }
        if !self.comment.is_empty() {
            clause.push_str(&format!(" COMMENT {}", literal(&self.comment)));
        }
        clause
    }
}

fn charset_of(collation: &str) -> &str {
    collation.split('_').next().unwrap_or(collation)
}

/// Finds every table of the current database that is not InnoDB or not utf8mb4, and every
/// text column that is not utf8mb4, with the statements that fix them.
///
/// # Errors
/// The `information_schema` queries failed.
pub async fn check_schema(pool: &MySqlPool) -> Result<SchemaReport, StoreError> {
    let server = ServerInfo::detect(pool).await?;
    let db_row = sqlx::query(
        "SELECT SCHEMA_NAME, DEFAULT_CHARACTER_SET_NAME FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = DATABASE()",
    )
    .fetch_optional(pool)
    .await
    .map_err(backend)?;
    let mut report = SchemaReport::default();
    if let Some(row) = db_row {
        let database: String = row.try_get(0).map_err(backend)?;
        let charset: String = row.try_get(1).map_err(backend)?;
        if charset != "utf8mb4" {
            report
                .fixes
                .push(format!("ALTER DATABASE {} CHARACTER SET utf8mb4 COLLATE {UTF8MB4_COLLATION}", ident(&database)));
            report.issues.push(SchemaIssue::DatabaseCharset { database, charset });
        }
    }
    let tables = sqlx::query(
        "SELECT TABLE_NAME, ENGINE, TABLE_COLLATION FROM information_schema.TABLES \
         WHERE TABLE_SCHEMA = DATABASE() AND TABLE_TYPE = 'BASE TABLE' ORDER BY TABLE_NAME",
    )
    .fetch_all(pool)
    .await
    .map_err(backend)?
    .iter()
    .map(|r| Ok(Table { name: r.try_get(0)?, engine: r.try_get(1)?, collation: r.try_get(2)? }))
    .collect::<Result<Vec<_>, sqlx::Error>>()
    .map_err(backend)?;
    let columns = sqlx::query(
        "SELECT c.TABLE_NAME, c.COLUMN_NAME, c.CHARACTER_SET_NAME, c.COLUMN_TYPE, c.IS_NULLABLE, c.COLUMN_DEFAULT, \
         c.COLUMN_COMMENT, c.EXTRA FROM information_schema.COLUMNS c \
         JOIN information_schema.TABLES t ON t.TABLE_SCHEMA = c.TABLE_SCHEMA AND t.TABLE_NAME = c.TABLE_NAME \
         WHERE c.TABLE_SCHEMA = DATABASE() AND t.TABLE_TYPE = 'BASE TABLE' \
         AND c.CHARACTER_SET_NAME IS NOT NULL AND c.CHARACTER_SET_NAME <> 'utf8mb4' \
         ORDER BY c.TABLE_NAME, c.ORDINAL_POSITION",
    )
    .fetch_all(pool)
    .await
    .map_err(backend)?
    .iter()
    .map(|r| {
        let extra: String = r.try_get(7)?;
        Ok(Column {
            table: r.try_get(0)?,
            name: r.try_get(1)?,
            charset: r.try_get(2)?,
            column_type: r.try_get(3)?,
            nullable: r.try_get::<String, _>(4)? == "YES",
            default: r.try_get(5)?,
            comment: r.try_get(6)?,
            generated: extra.to_ascii_uppercase().contains("GENERATED"),
        })
    })
    .collect::<Result<Vec<_>, sqlx::Error>>()
    .map_err(backend)?;

    for table in &tables {
        let mut clauses = Vec::new();
        if let Some(engine) = table.engine.as_deref().filter(|e| !e.eq_ignore_ascii_case("InnoDB")) {
            report.issues.push(SchemaIssue::Engine { table: table.name.clone(), engine: engine.to_owned() });
            clauses.push("ENGINE = InnoDB".to_owned());
        }
        let bad_columns: Vec<&Column> = columns.iter().filter(|c| c.table == table.name).collect();
        let table_bad = table.collation.as_deref().is_some_and(|c| charset_of(c) != "utf8mb4");
        if let Some(collation) = table.collation.as_deref().filter(|_| table_bad) {
            report
                .issues
                .push(SchemaIssue::TableCharset { table: table.name.clone(), collation: collation.to_owned() });
        }
        for column in &bad_columns {
            report.issues.push(SchemaIssue::ColumnCharset {
                table: table.name.clone(),
                column: column.name.clone(),
                charset: column.charset.clone(),
            });
        }
        // A bad table default, or a column we cannot MODIFY in place (generated), takes the
        // whole-table conversion; otherwise only the bad columns change, so that columns with a
        // deliberate utf8mb4 collation (`utf8mb4_bin`) keep it.
        if table_bad || bad_columns.iter().any(|c| c.generated) {
            clauses.push(format!("CONVERT TO CHARACTER SET utf8mb4 COLLATE {UTF8MB4_COLLATION}"));
        } else {
            clauses.extend(bad_columns.iter().map(|c| c.modify_clause(server.is_mariadb())));
        }
        if !clauses.is_empty() {
            report.fixes.push(format!("ALTER TABLE {} {}", ident(&table.name), clauses.join(", ")));
        }
    }
    Ok(report)
}

/// Runs the fixes [`check_schema`] finds; returns the report of what was found and fixed.
///
/// Each statement is DDL, which MySQL commits on its own: if one fails, the ones before it
/// stay applied; run the check again to see what is left.
///
/// # Errors
/// The check or a fix failed.
pub async fn fix_schema(pool: &MySqlPool) -> Result<SchemaReport, StoreError> {
    let report = check_schema(pool).await?;
    for fix in report.fixes() {
        tracing::info!(target: "ralph::store", statement = %fix, "applying schema fix");
        sqlx::raw_sql(sqlx::AssertSqlSafe(fix.as_str())).execute(pool).await.map_err(backend)?;
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        let maria = ServerInfo::parse("10.11.6-MariaDB-0+deb12u1");
        assert!(maria.is_mariadb() && maria.supports_skip_locked() && !maria.supports_row_alias());
        assert_eq!(maria.numbers, (10, 11, 6));
        let old = ServerInfo::parse("10.5.20-MariaDB");
        assert!(!old.supports_skip_locked());
        let mysql = ServerInfo::parse("8.0.36");
        assert!(!mysql.is_mariadb() && mysql.supports_skip_locked() && mysql.supports_row_alias());
        assert!(!ServerInfo::parse("8.0.18").supports_row_alias());
    }

    #[test]
    fn quoting() {
        assert_eq!(ident("we`ird"), "`we``ird`");
        assert_eq!(literal("it's \\"), "'it''s \\\\'");
    }
}
