-- Reconciliation (field provenance, suppressed values, miss counters, stored plans as item rows,
-- identity conflicts, facts checksums per address) and the change history.

CREATE TABLE reconcile_fields (
    device_id BIGINT NOT NULL,
    field VARCHAR(32) NOT NULL,
    value TEXT NOT NULL,
    -- Comparison key: upper-case serial, ip_key of a management address; NULL otherwise.
    value_key VARCHAR(255),
    source VARCHAR(255) NOT NULL,
    priority BIGINT NOT NULL CHECK (priority >= 0),
    observed_at DATETIME(6) NOT NULL,
    by_person BOOLEAN NOT NULL DEFAULT FALSE,
    locked BOOLEAN NOT NULL DEFAULT FALSE,
    PRIMARY KEY (device_id, field),
    FOREIGN KEY (device_id) REFERENCES devices (id) ON DELETE CASCADE
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_520_ci;
CREATE INDEX reconcile_fields_key ON reconcile_fields (field, value_key);

CREATE TABLE reconcile_suppressed (
    device_id BIGINT NOT NULL,
    field VARCHAR(32) NOT NULL,
    source VARCHAR(255) NOT NULL,
    value TEXT NOT NULL,
    priority BIGINT NOT NULL,
    observed_at DATETIME(6) NOT NULL,
    held_by VARCHAR(255) NOT NULL,
    reason VARCHAR(16) NOT NULL CHECK (reason IN ('locked', 'outranked')),
    PRIMARY KEY (device_id, field, source),
    FOREIGN KEY (device_id) REFERENCES devices (id) ON DELETE CASCADE
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_520_ci;

CREATE TABLE reconcile_devices (
    device_id BIGINT NOT NULL PRIMARY KEY,
    miss_count BIGINT NOT NULL DEFAULT 0,
    miss_scan VARCHAR(255),
    FOREIGN KEY (device_id) REFERENCES devices (id) ON DELETE CASCADE
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_520_ci;

CREATE TABLE reconcile_components (
    component_id BIGINT NOT NULL PRIMARY KEY,
    source VARCHAR(255) NOT NULL,
    priority BIGINT NOT NULL,
    observed_at DATETIME(6) NOT NULL,
    by_person BOOLEAN NOT NULL DEFAULT FALSE,
    miss_count BIGINT NOT NULL DEFAULT 0,
    miss_scan VARCHAR(255),
    FOREIGN KEY (component_id) REFERENCES components (id) ON DELETE CASCADE
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_520_ci;

CREATE TABLE reconcile_plans (
    id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    scan_id VARCHAR(255) NOT NULL,
    created_at DATETIME(6) NOT NULL,
    items BIGINT NOT NULL,
    applied_at DATETIME(6),
    correlation VARCHAR(64)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_520_ci;

CREATE TABLE reconcile_plan_items (
    plan_id BIGINT NOT NULL,
    seq BIGINT NOT NULL,
    action VARCHAR(32) NOT NULL,
    body MEDIUMTEXT NOT NULL,
    depends_on TEXT NOT NULL,
    status VARCHAR(16) NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'applied', 'failed', 'skipped')),
    reason TEXT,
    PRIMARY KEY (plan_id, seq),
    FOREIGN KEY (plan_id) REFERENCES reconcile_plans (id) ON DELETE CASCADE
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_520_ci;

-- Bookkeeping, suppressed values, unresolved addresses and checksums of a plan, one row each.
CREATE TABLE reconcile_plan_notes (
    plan_id BIGINT NOT NULL,
    kind VARCHAR(16) NOT NULL CHECK (kind IN ('bookkeeping', 'suppressed', 'unresolved', 'checksum')),
    seq BIGINT NOT NULL,
    body MEDIUMTEXT NOT NULL,
    PRIMARY KEY (plan_id, kind, seq),
    FOREIGN KEY (plan_id) REFERENCES reconcile_plans (id) ON DELETE CASCADE
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_520_ci;

CREATE TABLE reconcile_conflicts (
    id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    plan_id BIGINT NOT NULL,
    seq BIGINT NOT NULL,
    body MEDIUMTEXT NOT NULL,
    created_at DATETIME(6) NOT NULL,
    resolved_at DATETIME(6),
    resolved_by VARCHAR(255),
    note TEXT,
    FOREIGN KEY (plan_id) REFERENCES reconcile_plans (id) ON DELETE CASCADE
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_520_ci;
CREATE INDEX reconcile_conflicts_open ON reconcile_conflicts (resolved_at, id);

CREATE TABLE reconcile_checksums (
    ip_key CHAR(32) NOT NULL PRIMARY KEY CHECK (char_length(ip_key) = 32),
    address VARCHAR(45) NOT NULL,
    checksum VARCHAR(64) NOT NULL,
    scan_id VARCHAR(255) NOT NULL,
    updated_at DATETIME(6) NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_520_ci;

CREATE TABLE change_history (
    id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    object_type VARCHAR(64) NOT NULL,
    object_id BIGINT NOT NULL,
    related_type VARCHAR(64),
    related_id BIGINT,
    action VARCHAR(16) NOT NULL CHECK (action IN ('create', 'update', 'delete', 'move')),
    actor_kind VARCHAR(16) NOT NULL CHECK (actor_kind IN ('user', 'source', 'system')),
    actor VARCHAR(255) NOT NULL,
    at DATETIME(6) NOT NULL,
    correlation VARCHAR(64) NOT NULL,
    message TEXT
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_520_ci;
CREATE INDEX change_history_object ON change_history (object_type, object_id, id);
CREATE INDEX change_history_action ON change_history (object_type, action, id);
CREATE INDEX change_history_correlation ON change_history (correlation);
CREATE INDEX change_history_at ON change_history (at);

CREATE TABLE change_history_fields (
    history_id BIGINT NOT NULL,
    field VARCHAR(64) NOT NULL,
    before_value TEXT,
    after_value TEXT,
    PRIMARY KEY (history_id, field),
    FOREIGN KEY (history_id) REFERENCES change_history (id) ON DELETE CASCADE
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_520_ci;
