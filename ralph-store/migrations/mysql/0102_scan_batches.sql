-- Keys of the scan batches already recorded (ScanResultStore::record_batch): a batch retried
-- after its commit's outcome was lost is not recorded twice. Pruned by age.
CREATE TABLE scan_batches (
    batch_key   VARCHAR(128) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL PRIMARY KEY,
    recorded_at DATETIME(6) NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
CREATE INDEX scan_batches_recorded ON scan_batches (recorded_at);
