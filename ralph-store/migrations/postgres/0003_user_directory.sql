-- The directory (LDAP realm) that owns an LDAP account when several are configured.
ALTER TABLE users ADD COLUMN IF NOT EXISTS directory VARCHAR(64);
