-- Tables that every scan or reconciliation updates in columns no index covers (last seen,
-- dead pings, facts; provenance times; miss counters; item statuses) leave room in each page,
-- so PostgreSQL can update a row in place (a heap-only tuple: no new entry in any index, and
-- the old version pruned without VACUUM). Pages written from now on keep the room.
ALTER TABLE ip_addresses SET (fillfactor = 70);
ALTER TABLE reconcile_fields SET (fillfactor = 70);
ALTER TABLE reconcile_components SET (fillfactor = 70);
ALTER TABLE reconcile_devices SET (fillfactor = 70);
ALTER TABLE reconcile_plan_items SET (fillfactor = 70);

-- Only serial numbers and management addresses have comparison keys; the other fields'
-- provenance rows (most of them) need no entry in the lookup index.
DROP INDEX reconcile_fields_key;
CREATE INDEX reconcile_fields_key ON reconcile_fields (field, value_key) WHERE value_key IS NOT NULL;
