-- Indexes for the reconciler's identity lookups (a snapshot reads devices by upper-cased serial,
-- by management address, and disks by upper-cased serial); without them each lookup of a chunk
-- of keys scans the whole table.
CREATE INDEX devices_serial_upper ON devices (UPPER(serial_number));
CREATE INDEX devices_management_ip ON devices (management_ip);
CREATE INDEX components_disk_serial_upper ON components (UPPER(serial_number)) WHERE kind = 'disk';
