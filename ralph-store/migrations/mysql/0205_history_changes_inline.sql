-- A history row carries its field changes itself, as a JSON array of [field, before, after]
-- (NULL: none): a change is one row written, not one plus one per field with the row's id read
-- back in between, and a read is one query. Rows already written keep their changes (the store
-- sorts them by field when it reads them). Rewrites every history row: on a large history this
-- takes a while; stop every process of the old version first (they write the old table).
-- JSON_ARRAYAGG is capped by group_concat_max_len on MariaDB (1 MiB by default): lifted for this
-- session, so long values (a discarded job's payload) come over whole.
SET SESSION group_concat_max_len = 4294967295;
ALTER TABLE change_history ADD COLUMN changes LONGTEXT;
UPDATE change_history h
JOIN (SELECT history_id, JSON_ARRAYAGG(JSON_ARRAY(field, before_value, after_value)) AS changes
      FROM change_history_fields GROUP BY history_id) AS f ON f.history_id = h.id
SET h.changes = f.changes;
DROP TABLE change_history_fields;
