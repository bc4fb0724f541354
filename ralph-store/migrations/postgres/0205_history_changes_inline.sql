-- A history row carries its field changes itself, as a JSON array of [field, before, after]
-- (NULL: none): a change is one row written, not one plus one per field with the row's id read
-- back in between, and a read is one query. Rows already written keep their changes. Deletions
-- are found through a partial index instead of one over every row's action. Rewrites every
-- history row: on a large history this takes a while; stop every process of the old version
-- first (they write the old table).
ALTER TABLE change_history ADD COLUMN changes TEXT;
UPDATE change_history h SET changes = f.changes
FROM (SELECT history_id,
             json_agg(json_build_array(field, before_value, after_value) ORDER BY field)::TEXT AS changes
      FROM change_history_fields GROUP BY history_id) AS f
WHERE f.history_id = h.id;
DROP TABLE change_history_fields;
DROP INDEX change_history_action;
CREATE INDEX change_history_deletes ON change_history (object_type, id) WHERE action = 'delete';
