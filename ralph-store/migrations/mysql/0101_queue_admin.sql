-- Queue administration: paused queues, worker heartbeats, and the index purges read.
CREATE TABLE IF NOT EXISTS queue_settings (
    queue  VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL PRIMARY KEY,
    paused BOOLEAN      NOT NULL DEFAULT FALSE
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_520_ci;
CREATE TABLE IF NOT EXISTS queue_workers (
    name         VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL PRIMARY KEY,
    host         VARCHAR(255) NOT NULL,
    pid          BIGINT       NOT NULL,
    -- JSON arrays.
    queues       TEXT         NOT NULL,
    current_jobs TEXT         NOT NULL,
    started_at   DATETIME(6)  NOT NULL,
    last_seen    DATETIME(6)  NOT NULL
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_520_ci;
CREATE INDEX queue_jobs_finished ON queue_jobs (state, finished_at);
