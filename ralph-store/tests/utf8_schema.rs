//! MySQL/MariaDB schema check: a latin1 MyISAM table and a latin1 column are reported with the
//! exact fixes, applying them makes the check clean and keeps the data, and the store's own
//! tables are clean.
#![cfg(feature = "mysql")]

mod queue_common;

use queue_common::my;
use ralph_store::MySqlStore;
use ralph_store::schema_check::{SchemaIssue, UTF8MB4_COLLATION, check_schema, fix_schema};

#[tokio::test]
async fn mysql_store_tables_are_clean() {
    let Some(db) = my::fresh("sclean").await else { return };
    let store = MySqlStore::connect(&db.url).await.expect("connect");
    let report = check_schema(store.pool()).await.expect("check");
    assert!(report.is_clean(), "store schema issues: {:?}", report.issues());
    assert!(report.fixes().is_empty());
    store.close().await;
    my::drop_db(db).await;
}

#[tokio::test]
async fn mysql_latin1_and_myisam_are_reported_and_fixed() {
    let Some(db) = my::fresh("slatin").await else { return };
    let store = MySqlStore::connect(&db.url).await.expect("connect");
    let pool = store.pool();
    for sql in [
        "CREATE TABLE legacy (id INT PRIMARY KEY, name VARCHAR(50)) ENGINE = MyISAM CHARACTER SET latin1",
        "INSERT INTO legacy VALUES (1, 'café')",
        "CREATE TABLE mixed (id INT PRIMARY KEY, note VARCHAR(20) CHARACTER SET latin1 NOT NULL DEFAULT 'x' \
         COMMENT 'it''s old', body TEXT) ENGINE = InnoDB CHARACTER SET utf8mb4 COLLATE utf8mb4_bin",
        "INSERT INTO mixed VALUES (1, 'Größe', 'kept')",
    ] {
        sqlx::raw_sql(sql).execute(pool).await.expect(sql);
    }

    let report = check_schema(pool).await.expect("check");
    assert_eq!(
        report.issues(),
        &[
            SchemaIssue::Engine { table: "legacy".into(), engine: "MyISAM".into() },
            SchemaIssue::TableCharset { table: "legacy".into(), collation: "latin1_swedish_ci".into() },
            SchemaIssue::ColumnCharset { table: "legacy".into(), column: "name".into(), charset: "latin1".into() },
            SchemaIssue::ColumnCharset { table: "mixed".into(), column: "note".into(), charset: "latin1".into() },
        ]
    );
    assert_eq!(
        report.fixes(),
        &[
            format!(
                "ALTER TABLE `legacy` ENGINE = InnoDB, CONVERT TO CHARACTER SET utf8mb4 COLLATE {UTF8MB4_COLLATION}"
            ),
            format!(
                "ALTER TABLE `mixed` MODIFY `note` varchar(20) CHARACTER SET utf8mb4 COLLATE {UTF8MB4_COLLATION} \
                 NOT NULL DEFAULT 'x' COMMENT 'it''s old'"
            ),
        ]
    );

    let applied = fix_schema(pool).await.expect("fix");
    assert_eq!(applied.fixes(), report.fixes());
    let after = check_schema(pool).await.expect("check again");
    assert!(after.is_clean(), "left: {:?}", after.issues());

    // The data survived, and the columns now take 4-byte UTF-8.
    let name: String = sqlx::query_scalar("SELECT name FROM legacy WHERE id = 1").fetch_one(pool).await.expect("read");
    assert_eq!(name, "café");
    // `utf8mb4_bin` text comes back flagged binary: read the bytes.
    let (note, body): (String, Vec<u8>) =
        sqlx::query_as("SELECT note, body FROM mixed WHERE id = 1").fetch_one(pool).await.expect("read");
    assert_eq!((note.as_str(), body.as_slice()), ("Größe", "kept".as_bytes()));
    let wide = "Zażółć gęślą jaźń 🚀 東京";
    sqlx::query("UPDATE legacy SET name = ? WHERE id = 1").bind(wide).execute(pool).await.expect("write 4-byte");
    let back: String = sqlx::query_scalar("SELECT name FROM legacy WHERE id = 1").fetch_one(pool).await.expect("read");
    assert_eq!(back.as_bytes(), wide.as_bytes(), "byte for byte");
    // The column fix kept its definition, and the table's other columns kept their collation.
    let (nullable, default, collation): (String, Option<String>, String) = sqlx::query_as(
        "SELECT IS_NULLABLE, COLUMN_DEFAULT, COLLATION_NAME FROM information_schema.COLUMNS \
         WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'mixed' AND COLUMN_NAME = 'note'",
    )
    .fetch_one(pool)
    .await
    .expect("column");
    assert_eq!((nullable.as_str(), collation.as_str()), ("NO", UTF8MB4_COLLATION));
    assert!(default.is_some_and(|d| d.trim_matches('\'') == "x"));
    let body_collation: String = sqlx::query_scalar(
        "SELECT COLLATION_NAME FROM information_schema.COLUMNS \
         WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'mixed' AND COLUMN_NAME = 'body'",
    )
    .fetch_one(pool)
    .await
    .expect("column");
    assert_eq!(body_collation, "utf8mb4_bin");
    store.close().await;
    my::drop_db(db).await;
}
