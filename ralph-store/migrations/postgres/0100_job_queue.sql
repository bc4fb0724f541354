-- Durable job queues (ralph_store::queue). Times come from the server clock.
CREATE TABLE IF NOT EXISTS queue_jobs (
    id          BIGSERIAL PRIMARY KEY,
    queue       VARCHAR(255) NOT NULL,
    payload     TEXT         NOT NULL,
    state       VARCHAR(16)  NOT NULL CHECK (state IN ('pending', 'running', 'done', 'dead')),
    attempts    INTEGER      NOT NULL DEFAULT 0,
    -- pending: claimable from; running: lease runs out at.
    due_at      TIMESTAMPTZ  NOT NULL,
    lease_token VARCHAR(64),
    worker      VARCHAR(255),
    last_error  TEXT,
    enqueued_at TIMESTAMPTZ  NOT NULL,
    finished_at TIMESTAMPTZ
);
CREATE INDEX IF NOT EXISTS queue_jobs_claim ON queue_jobs (queue, state, due_at, id);
