-- Durable job queues (ralph_store::queue). Times are UTC from the server clock.
CREATE TABLE IF NOT EXISTS queue_jobs (
    id          BIGINT       NOT NULL AUTO_INCREMENT PRIMARY KEY,
    queue       VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    payload     LONGTEXT     NOT NULL,
    state       VARCHAR(16)  NOT NULL,
    attempts    INT          NOT NULL DEFAULT 0,
    -- pending: claimable from; running: lease runs out at.
    due_at      DATETIME(6)  NOT NULL,
    lease_token VARCHAR(64),
    worker      VARCHAR(255),
    last_error  TEXT,
    enqueued_at DATETIME(6)  NOT NULL,
    finished_at DATETIME(6),
    CONSTRAINT queue_jobs_state CHECK (state IN ('pending', 'running', 'done', 'dead')),
    KEY queue_jobs_claim (queue, state, due_at, id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_520_ci;
