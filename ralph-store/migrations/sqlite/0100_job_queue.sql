-- Durable job queues (ralph_store::queue). Times are microseconds since the Unix epoch (UTC).
CREATE TABLE IF NOT EXISTS queue_jobs (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    queue       TEXT    NOT NULL,
    payload     TEXT    NOT NULL,
    state       TEXT    NOT NULL CHECK (state IN ('pending', 'running', 'done', 'dead')),
    attempts    INTEGER NOT NULL DEFAULT 0,
    -- pending: claimable from; running: lease runs out at.
    due_at      INTEGER NOT NULL,
    lease_token TEXT,
    worker      TEXT,
    last_error  TEXT,
    enqueued_at INTEGER NOT NULL,
    finished_at INTEGER
);
CREATE INDEX IF NOT EXISTS queue_jobs_claim ON queue_jobs (queue, state, due_at, id);
