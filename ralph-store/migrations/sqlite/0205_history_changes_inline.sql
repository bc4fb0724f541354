-- A history row carries its field changes itself, as a JSON array of [field, before, after]
-- (NULL: none): a change is one row written, not one plus one per field with the row's id read
-- back in between, and a read is one query. Rows already written keep their changes. Deletions
-- are found through a partial index instead of one over every row's action. Rewrites every
-- history row: on a large history this takes a while; stop every process of the old version
-- first (they write the old table).
ALTER TABLE change_history ADD COLUMN changes TEXT;
UPDATE change_history SET changes = (
    SELECT json_group_array(json_array(f.field, f.before_value, f.after_value))
    FROM (SELECT field, before_value, after_value FROM change_history_fields
          WHERE history_id = change_history.id ORDER BY field) AS f)
WHERE id IN (SELECT history_id FROM change_history_fields);
DROP TABLE change_history_fields;
DROP INDEX change_history_action;
CREATE INDEX change_history_deletes ON change_history (object_type, id) WHERE action = 'delete';
