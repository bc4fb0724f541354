-- Only serial numbers and management addresses have comparison keys; the other fields'
-- provenance rows (most of them) need no entry in the lookup index.
DROP INDEX reconcile_fields_key;
CREATE INDEX reconcile_fields_key ON reconcile_fields (field, value_key) WHERE value_key IS NOT NULL;
