-- Keys of the scan batches already recorded (ScanResultStore::record_batch): a batch retried
-- after its commit's outcome was lost is not recorded twice. Pruned by age.
CREATE TABLE IF NOT EXISTS scan_batches (
    batch_key   VARCHAR(128) NOT NULL PRIMARY KEY,
    recorded_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX IF NOT EXISTS scan_batches_recorded ON scan_batches (recorded_at);
