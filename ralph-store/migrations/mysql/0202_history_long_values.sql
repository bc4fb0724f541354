-- A history value holds whatever the recorded field held: a discarded job's payload is
-- LONGTEXT in queue_jobs, so its record must not be cut at TEXT's 64 KiB (strict mode would
-- refuse the insert, and with it the discard). PostgreSQL and SQLite TEXT have no such limit.
-- The table is rebuilt: on an upgrade with a large history this takes a while, under the
-- migration lock (other processes starting meanwhile wait for it).
ALTER TABLE change_history_fields MODIFY before_value LONGTEXT, MODIFY after_value LONGTEXT;
