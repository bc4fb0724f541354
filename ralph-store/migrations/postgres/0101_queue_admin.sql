-- Queue administration: paused queues, worker heartbeats, and the index purges read.
CREATE TABLE IF NOT EXISTS queue_settings (
    queue  VARCHAR(255) NOT NULL PRIMARY KEY,
    paused BOOLEAN      NOT NULL DEFAULT FALSE
);
CREATE TABLE IF NOT EXISTS queue_workers (
    name         VARCHAR(255) NOT NULL PRIMARY KEY,
    host         VARCHAR(255) NOT NULL,
    pid          BIGINT       NOT NULL,
    -- JSON arrays.
    queues       TEXT         NOT NULL,
    current_jobs TEXT         NOT NULL,
    started_at   TIMESTAMPTZ  NOT NULL,
    last_seen    TIMESTAMPTZ  NOT NULL
);
-- Partial: only finished jobs (done, dead) have `finished_at`, so enqueues and claims, the hot
-- path, never touch this index; purge's `finished_at < ?` implies the predicate.
CREATE INDEX IF NOT EXISTS queue_jobs_finished ON queue_jobs (state, finished_at) WHERE finished_at IS NOT NULL;
