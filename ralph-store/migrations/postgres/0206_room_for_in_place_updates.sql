-- Tables that every scan or reconciliation updates in columns no index covers (last seen,
-- dead pings, facts; provenance times; miss counters) leave room in each page, so PostgreSQL
-- can update a row in place (a heap-only tuple: no new entry in any index, and the old
-- version pruned without VACUUM). Pages written from now on keep the room.
ALTER TABLE ip_addresses SET (fillfactor = 70);
ALTER TABLE reconcile_fields SET (fillfactor = 70);
ALTER TABLE reconcile_components SET (fillfactor = 70);
ALTER TABLE reconcile_devices SET (fillfactor = 70);
