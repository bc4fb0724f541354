-- Reconciliation (field provenance, suppressed values, miss counters, stored plans as item rows,
-- identity conflicts, facts checksums per address) and the change history.

CREATE TABLE reconcile_fields (
    device_id INTEGER NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    field TEXT NOT NULL,
    value TEXT NOT NULL,
    -- Comparison key: upper-case serial, ip_key of a management address; NULL otherwise.
    value_key TEXT,
    source TEXT NOT NULL,
    priority INTEGER NOT NULL CHECK (priority >= 0),
    observed_at TEXT NOT NULL,
    by_person INTEGER NOT NULL DEFAULT 0 CHECK (by_person IN (0, 1)),
    locked INTEGER NOT NULL DEFAULT 0 CHECK (locked IN (0, 1)),
    PRIMARY KEY (device_id, field)
);
CREATE INDEX reconcile_fields_key ON reconcile_fields (field, value_key);

CREATE TABLE reconcile_suppressed (
    device_id INTEGER NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    field TEXT NOT NULL,
    source TEXT NOT NULL,
    value TEXT NOT NULL,
    priority INTEGER NOT NULL,
    observed_at TEXT NOT NULL,
    held_by TEXT NOT NULL,
    reason TEXT NOT NULL CHECK (reason IN ('locked', 'outranked')),
    PRIMARY KEY (device_id, field, source)
);

CREATE TABLE reconcile_devices (
    device_id INTEGER PRIMARY KEY REFERENCES devices (id) ON DELETE CASCADE,
    miss_count INTEGER NOT NULL DEFAULT 0,
    miss_scan TEXT
);

CREATE TABLE reconcile_components (
    component_id INTEGER PRIMARY KEY REFERENCES components (id) ON DELETE CASCADE,
    source TEXT NOT NULL,
    priority INTEGER NOT NULL,
    observed_at TEXT NOT NULL,
    by_person INTEGER NOT NULL DEFAULT 0 CHECK (by_person IN (0, 1)),
    miss_count INTEGER NOT NULL DEFAULT 0,
    miss_scan TEXT
);

CREATE TABLE reconcile_plans (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    scan_id TEXT NOT NULL,
    created_at TEXT NOT NULL,
    items INTEGER NOT NULL,
    applied_at TEXT,
    correlation TEXT
);

CREATE TABLE reconcile_plan_items (
    plan_id INTEGER NOT NULL REFERENCES reconcile_plans (id) ON DELETE CASCADE,
    seq INTEGER NOT NULL,
    action TEXT NOT NULL,
    body TEXT NOT NULL,
    depends_on TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'applied', 'failed', 'skipped')),
    reason TEXT,
    PRIMARY KEY (plan_id, seq)
);

-- Bookkeeping, suppressed values, unresolved addresses and checksums of a plan, one row each.
CREATE TABLE reconcile_plan_notes (
    plan_id INTEGER NOT NULL REFERENCES reconcile_plans (id) ON DELETE CASCADE,
    kind TEXT NOT NULL CHECK (kind IN ('bookkeeping', 'suppressed', 'unresolved', 'checksum')),
    seq INTEGER NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (plan_id, kind, seq)
);

CREATE TABLE reconcile_conflicts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    plan_id INTEGER NOT NULL REFERENCES reconcile_plans (id) ON DELETE CASCADE,
    seq INTEGER NOT NULL,
    body TEXT NOT NULL,
    created_at TEXT NOT NULL,
    resolved_at TEXT,
    resolved_by TEXT,
    note TEXT
);
CREATE INDEX reconcile_conflicts_open ON reconcile_conflicts (resolved_at, id);

CREATE TABLE reconcile_checksums (
    ip_key TEXT PRIMARY KEY CHECK (length(ip_key) = 32),
    address TEXT NOT NULL,
    checksum TEXT NOT NULL,
    scan_id TEXT NOT NULL,
    updated_at TEXT NOT NULL
);

CREATE TABLE change_history (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    object_type TEXT NOT NULL,
    object_id INTEGER NOT NULL,
    related_type TEXT,
    related_id INTEGER,
    action TEXT NOT NULL CHECK (action IN ('create', 'update', 'delete', 'move')),
    actor_kind TEXT NOT NULL CHECK (actor_kind IN ('user', 'source', 'system')),
    actor TEXT NOT NULL,
    at TEXT NOT NULL,
    correlation TEXT NOT NULL,
    message TEXT
);
CREATE INDEX change_history_object ON change_history (object_type, object_id, id);
CREATE INDEX change_history_action ON change_history (object_type, action, id);
CREATE INDEX change_history_correlation ON change_history (correlation);
CREATE INDEX change_history_at ON change_history (at);

CREATE TABLE change_history_fields (
    history_id INTEGER NOT NULL REFERENCES change_history (id) ON DELETE CASCADE,
    field TEXT NOT NULL,
    before_value TEXT,
    after_value TEXT,
    PRIMARY KEY (history_id, field)
);
