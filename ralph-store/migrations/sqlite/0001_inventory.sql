-- Inventory: locations, networks, IP addresses, device models, devices, rack cells, components.
-- Every invariant the model checks in code is repeated here as a constraint, so a second writer
-- (or a race) cannot break it either.

CREATE TABLE data_centers (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE CHECK (length(trim(name)) > 0),
    country TEXT CHECK (country IS NULL OR length(country) = 2),
    city TEXT,
    address TEXT
);

CREATE TABLE server_rooms (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL CHECK (length(trim(name)) > 0),
    data_center_id INTEGER NOT NULL REFERENCES data_centers (id),
    UNIQUE (data_center_id, name)
);

CREATE TABLE racks (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL CHECK (length(trim(name)) > 0),
    server_room_id INTEGER NOT NULL REFERENCES server_rooms (id),
    max_u_height INTEGER NOT NULL DEFAULT 48 CHECK (max_u_height BETWEEN 1 AND 100),
    orientation TEXT NOT NULL DEFAULT 'front' CHECK (orientation IN ('front', 'back')),
    reverse_ordering INTEGER NOT NULL DEFAULT 0 CHECK (reverse_ordering IN (0, 1)),
    UNIQUE (server_room_id, name)
);

CREATE TABLE network_environments (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE CHECK (length(trim(name)) > 0),
    data_center_id INTEGER NOT NULL REFERENCES data_centers (id),
    queue TEXT NOT NULL CHECK (length(trim(queue)) > 0),
    hostname_prefix TEXT,
    hostname_counter_length INTEGER CHECK (hostname_counter_length BETWEEN 0 AND 255),
    hostname_postfix TEXT,
    CHECK ((hostname_prefix IS NULL) = (hostname_counter_length IS NULL))
);

CREATE TABLE networks (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL CHECK (length(trim(name)) > 0),
    cidr TEXT NOT NULL UNIQUE,
    family INTEGER NOT NULL CHECK (family IN (4, 6)),
    prefix INTEGER NOT NULL CHECK (prefix BETWEEN 0 AND 128),
    first_key TEXT NOT NULL CHECK (length(first_key) = 32),
    last_key TEXT NOT NULL CHECK (length(last_key) = 32),
    gateway TEXT,
    reserved_from_beginning INTEGER NOT NULL DEFAULT 10 CHECK (reserved_from_beginning >= 0),
    reserved_from_end INTEGER NOT NULL DEFAULT 0 CHECK (reserved_from_end >= 0),
    vlan INTEGER CHECK (vlan BETWEEN 1 AND 4094),
    environment_id INTEGER REFERENCES network_environments (id),
    CHECK (first_key <= last_key)
);
CREATE INDEX networks_range ON networks (first_key, last_key);
CREATE INDEX networks_environment ON networks (environment_id);

CREATE TABLE device_models (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL CHECK (length(trim(name)) > 0),
    manufacturer TEXT,
    kind TEXT NOT NULL CHECK (kind IN ('rack_server', 'blade_server', 'blade_system', 'switch', 'router',
        'load_balancer', 'storage', 'pdu', 'virtual_server', 'cloud_server', 'unknown')),
    height_u INTEGER NOT NULL CHECK (height_u BETWEEN 0 AND 100),
    full_depth INTEGER NOT NULL DEFAULT 1 CHECK (full_depth IN (0, 1)),
    UNIQUE (manufacturer, name)
);

CREATE TABLE devices (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    hostname TEXT,
    serial_number TEXT UNIQUE CHECK (serial_number IS NULL OR length(trim(serial_number)) > 0),
    barcode TEXT UNIQUE CHECK (barcode IS NULL OR length(trim(barcode)) > 0),
    model_id INTEGER NOT NULL REFERENCES device_models (id),
    rack_id INTEGER REFERENCES racks (id),
    position INTEGER CHECK (position >= 1),
    orientation TEXT NOT NULL DEFAULT 'front' CHECK (orientation IN ('front', 'back')),
    parent_id INTEGER REFERENCES devices (id),
    slot TEXT CHECK (slot IS NULL OR length(trim(slot)) > 0),
    service_env TEXT,
    status TEXT NOT NULL CHECK (status IN ('new', 'in_use', 'free', 'damaged', 'liquidated', 'to_deploy',
        'cleaned', 'pre_liquidated')),
    management_ip TEXT,
    CHECK (rack_id IS NOT NULL OR position IS NULL),
    CHECK (rack_id IS NULL OR parent_id IS NULL),
    CHECK ((parent_id IS NULL) = (slot IS NULL)),
    UNIQUE (parent_id, slot)
);
CREATE INDEX devices_rack ON devices (rack_id);

-- One row per (rack, face, unit) a device takes: the primary key makes overlaps impossible even
-- when two writers race past the check in code.
CREATE TABLE rack_cells (
    rack_id INTEGER NOT NULL REFERENCES racks (id),
    face TEXT NOT NULL CHECK (face IN ('front', 'back')),
    unit INTEGER NOT NULL CHECK (unit BETWEEN 1 AND 100),
    device_id INTEGER NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    PRIMARY KEY (rack_id, face, unit)
);
CREATE INDEX rack_cells_device ON rack_cells (device_id);

CREATE TABLE ip_addresses (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    address TEXT NOT NULL,
    ip_key TEXT NOT NULL UNIQUE CHECK (length(ip_key) = 32),
    hostname TEXT,
    is_management INTEGER NOT NULL DEFAULT 0 CHECK (is_management IN (0, 1)),
    is_gateway INTEGER NOT NULL DEFAULT 0 CHECK (is_gateway IN (0, 1)),
    status TEXT NOT NULL DEFAULT 'used' CHECK (status IN ('used', 'reserved')),
    last_seen TEXT,
    dead_ping_count INTEGER NOT NULL DEFAULT 0 CHECK (dead_ping_count >= 0),
    is_buried INTEGER NOT NULL DEFAULT 0 CHECK (is_buried IN (0, 1)),
    snmp_name TEXT,
    snmp_community TEXT,
    snmp_version TEXT CHECK (snmp_version IN ('1', '2c', '3')),
    http_family TEXT,
    device_id INTEGER REFERENCES devices (id) ON DELETE SET NULL,
    scan_checksum TEXT
);
CREATE INDEX ip_addresses_device ON ip_addresses (device_id);

CREATE TABLE components (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    device_id INTEGER NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    kind TEXT NOT NULL CHECK (kind IN ('ethernet', 'processor', 'memory', 'disk')),
    mac TEXT UNIQUE,
    label TEXT,
    speed_mbps INTEGER,
    idx INTEGER,
    model TEXT,
    cores INTEGER,
    size_mib INTEGER,
    mount_point TEXT,
    size_gib INTEGER,
    serial_number TEXT,
    CHECK (kind <> 'ethernet' OR mac IS NOT NULL),
    CHECK (kind NOT IN ('processor', 'memory') OR idx IS NOT NULL),
    CHECK (kind <> 'memory' OR size_mib IS NOT NULL),
    CHECK (kind <> 'disk' OR (mount_point IS NOT NULL AND size_gib IS NOT NULL)),
    UNIQUE (device_id, kind, idx),
    UNIQUE (device_id, mount_point)
);
