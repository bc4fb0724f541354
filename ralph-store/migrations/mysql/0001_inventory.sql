-- Inventory: locations, networks, IP addresses, device models, devices, rack cells, components.
-- Every invariant the model checks in code is repeated here as a constraint, so a second writer
-- (or a race) cannot break it either.

CREATE TABLE data_centers (
    id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    name VARCHAR(255) NOT NULL UNIQUE CHECK (char_length(trim(name)) > 0),
    country VARCHAR(2) CHECK (country IS NULL OR char_length(country) = 2),
    city VARCHAR(255),
    address VARCHAR(255)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_520_ci;

CREATE TABLE server_rooms (
    id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    name VARCHAR(255) NOT NULL CHECK (char_length(trim(name)) > 0),
    data_center_id BIGINT NOT NULL,
    UNIQUE (data_center_id, name),
    FOREIGN KEY (data_center_id) REFERENCES data_centers (id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_520_ci;

CREATE TABLE racks (
    id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    name VARCHAR(255) NOT NULL CHECK (char_length(trim(name)) > 0),
    server_room_id BIGINT NOT NULL,
    max_u_height BIGINT NOT NULL DEFAULT 48 CHECK (max_u_height BETWEEN 1 AND 100),
    orientation VARCHAR(5) NOT NULL DEFAULT 'front' CHECK (orientation IN ('front', 'back')),
    reverse_ordering BOOLEAN NOT NULL DEFAULT FALSE,
    UNIQUE (server_room_id, name),
    FOREIGN KEY (server_room_id) REFERENCES server_rooms (id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_520_ci;

CREATE TABLE network_environments (
    id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    name VARCHAR(255) NOT NULL UNIQUE CHECK (char_length(trim(name)) > 0),
    data_center_id BIGINT NOT NULL,
    queue VARCHAR(255) NOT NULL CHECK (char_length(trim(queue)) > 0),
    hostname_prefix VARCHAR(255),
    hostname_counter_length BIGINT CHECK (hostname_counter_length BETWEEN 0 AND 255),
    hostname_postfix VARCHAR(255),
    CHECK ((hostname_prefix IS NULL) = (hostname_counter_length IS NULL)),
    FOREIGN KEY (data_center_id) REFERENCES data_centers (id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_520_ci;

CREATE TABLE networks (
    id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    name VARCHAR(255) NOT NULL CHECK (char_length(trim(name)) > 0),
    cidr VARCHAR(64) NOT NULL UNIQUE,
    family BIGINT NOT NULL CHECK (family IN (4, 6)),
    prefix BIGINT NOT NULL CHECK (prefix BETWEEN 0 AND 128),
    first_key CHAR(32) NOT NULL CHECK (char_length(first_key) = 32),
    last_key CHAR(32) NOT NULL CHECK (char_length(last_key) = 32),
    gateway VARCHAR(45),
    reserved_from_beginning BIGINT NOT NULL DEFAULT 10 CHECK (reserved_from_beginning >= 0),
    reserved_from_end BIGINT NOT NULL DEFAULT 0 CHECK (reserved_from_end >= 0),
    vlan BIGINT CHECK (vlan BETWEEN 1 AND 4094),
    environment_id BIGINT,
    CHECK (first_key <= last_key),
    FOREIGN KEY (environment_id) REFERENCES network_environments (id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_520_ci;
CREATE INDEX networks_range ON networks (first_key, last_key);
CREATE INDEX networks_environment ON networks (environment_id);

CREATE TABLE device_models (
    id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    name VARCHAR(255) NOT NULL CHECK (char_length(trim(name)) > 0),
    manufacturer VARCHAR(255),
    kind VARCHAR(32) NOT NULL CHECK (kind IN ('rack_server', 'blade_server', 'blade_system', 'switch', 'router',
        'load_balancer', 'storage', 'pdu', 'virtual_server', 'cloud_server', 'unknown')),
    height_u BIGINT NOT NULL CHECK (height_u BETWEEN 0 AND 100),
    full_depth BOOLEAN NOT NULL DEFAULT TRUE,
    UNIQUE (manufacturer, name)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_520_ci;

CREATE TABLE devices (
    id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    hostname VARCHAR(255),
    serial_number VARCHAR(255) UNIQUE CHECK (serial_number IS NULL OR char_length(trim(serial_number)) > 0),
    barcode VARCHAR(255) UNIQUE CHECK (barcode IS NULL OR char_length(trim(barcode)) > 0),
    model_id BIGINT NOT NULL,
    rack_id BIGINT,
    position BIGINT CHECK (position >= 1),
    orientation VARCHAR(5) NOT NULL DEFAULT 'front' CHECK (orientation IN ('front', 'back')),
    parent_id BIGINT,
    slot VARCHAR(32) CHECK (slot IS NULL OR char_length(trim(slot)) > 0),
    service_env VARCHAR(255),
    status VARCHAR(32) NOT NULL CHECK (status IN ('new', 'in_use', 'free', 'damaged', 'liquidated', 'to_deploy',
        'cleaned', 'pre_liquidated')),
    management_ip VARCHAR(45),
    CHECK (rack_id IS NOT NULL OR position IS NULL),
    CHECK (rack_id IS NULL OR parent_id IS NULL),
    CHECK ((parent_id IS NULL) = (slot IS NULL)),
    UNIQUE (parent_id, slot),
    FOREIGN KEY (model_id) REFERENCES device_models (id),
    FOREIGN KEY (rack_id) REFERENCES racks (id),
    FOREIGN KEY (parent_id) REFERENCES devices (id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_520_ci;
CREATE INDEX devices_rack ON devices (rack_id);

-- One row per (rack, face, unit) a device takes: the primary key makes overlaps impossible even
-- when two writers race past the check in code.
CREATE TABLE rack_cells (
    rack_id BIGINT NOT NULL,
    face VARCHAR(5) NOT NULL CHECK (face IN ('front', 'back')),
    unit BIGINT NOT NULL CHECK (unit BETWEEN 1 AND 100),
    device_id BIGINT NOT NULL,
    PRIMARY KEY (rack_id, face, unit),
    FOREIGN KEY (rack_id) REFERENCES racks (id),
    FOREIGN KEY (device_id) REFERENCES devices (id) ON DELETE CASCADE
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_520_ci;
CREATE INDEX rack_cells_device ON rack_cells (device_id);

CREATE TABLE ip_addresses (
    id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    address VARCHAR(255) NOT NULL,
    ip_key CHAR(32) NOT NULL UNIQUE CHECK (char_length(ip_key) = 32),
    hostname VARCHAR(255),
    is_management BOOLEAN NOT NULL DEFAULT FALSE,
    is_gateway BOOLEAN NOT NULL DEFAULT FALSE,
    status VARCHAR(32) NOT NULL DEFAULT 'used' CHECK (status IN ('used', 'reserved')),
    last_seen DATETIME(6),
    dead_ping_count BIGINT NOT NULL DEFAULT 0 CHECK (dead_ping_count >= 0),
    is_buried BOOLEAN NOT NULL DEFAULT FALSE,
    snmp_name VARCHAR(255),
    snmp_community VARCHAR(255),
    snmp_version VARCHAR(2) CHECK (snmp_version IN ('1', '2c', '3')),
    http_family VARCHAR(64),
    device_id BIGINT,
    scan_checksum VARCHAR(128),
    FOREIGN KEY (device_id) REFERENCES devices (id) ON DELETE SET NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_520_ci;
CREATE INDEX ip_addresses_device ON ip_addresses (device_id);

CREATE TABLE components (
    id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    device_id BIGINT NOT NULL,
    kind VARCHAR(32) NOT NULL CHECK (kind IN ('ethernet', 'processor', 'memory', 'disk')),
    mac VARCHAR(17) UNIQUE,
    label VARCHAR(64),
    speed_mbps BIGINT,
    idx BIGINT,
    model VARCHAR(255),
    cores BIGINT,
    size_mib BIGINT,
    mount_point VARCHAR(255),
    size_gib BIGINT,
    serial_number VARCHAR(255),
    CHECK (kind <> 'ethernet' OR mac IS NOT NULL),
    CHECK (kind NOT IN ('processor', 'memory') OR idx IS NOT NULL),
    CHECK (kind <> 'memory' OR size_mib IS NOT NULL),
    CHECK (kind <> 'disk' OR (mount_point IS NOT NULL AND size_gib IS NOT NULL)),
    UNIQUE (device_id, kind, idx),
    UNIQUE (device_id, mount_point),
    FOREIGN KEY (device_id) REFERENCES devices (id) ON DELETE CASCADE
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_520_ci;
