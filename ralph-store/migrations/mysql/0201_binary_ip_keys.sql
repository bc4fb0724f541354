-- ip_key is 32 hex digits: compare it byte by byte (utf8mb4_bin), not by the table's
-- Unicode collation, whose weights every unique-index probe of a scan upsert paid for. The
-- charset stays utf8mb4, so the schema check is still clean. The CHECK is repeated: MariaDB
-- keeps an inline column check as part of the column, which MODIFY replaces.
ALTER TABLE ip_addresses MODIFY ip_key CHAR(32) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL
    CHECK (char_length(ip_key) = 32);
ALTER TABLE reconcile_checksums MODIFY ip_key CHAR(32) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL
    CHECK (char_length(ip_key) = 32);
