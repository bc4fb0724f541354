-- Indexes for the reconciler's identity lookups by management address and by disk serial.
-- Serial numbers need no expression index here: the tables' collation compares them
-- case-insensitively, so lookups use the plain column (and its unique index).
CREATE INDEX devices_management_ip ON devices (management_ip);
CREATE INDEX components_serial ON components (serial_number);
