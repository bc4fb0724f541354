-- Heartbeats carry the progress of the worker's current jobs (JSON array; NULL: none reported).
ALTER TABLE queue_workers ADD COLUMN progress TEXT;
