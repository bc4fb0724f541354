-- Users, profiles, groups. An LDAP-owned user can never hold a local password hash.
-- Usernames and group names are identities: utf8mb4_bin compares them byte for byte, as the
-- other backends do, so "Admin", "ADMIN" and "Ádmin" are never the same account as "admin".

CREATE TABLE users (
    id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    username VARCHAR(150) COLLATE utf8mb4_bin NOT NULL UNIQUE CHECK (char_length(username) > 0),
    first_name VARCHAR(150) NOT NULL DEFAULT '',
    last_name VARCHAR(150) NOT NULL DEFAULT '',
    email VARCHAR(254),
    is_active BOOLEAN NOT NULL DEFAULT TRUE,
    is_staff BOOLEAN NOT NULL DEFAULT FALSE,
    is_superuser BOOLEAN NOT NULL DEFAULT FALSE,
    source VARCHAR(8) NOT NULL DEFAULT 'local' CHECK (source IN ('local', 'ldap')),
    password_hash VARCHAR(255),
    CHECK (source = 'local' OR password_hash IS NULL)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_520_ci;

CREATE TABLE profiles (
    user_id BIGINT NOT NULL PRIMARY KEY,
    company VARCHAR(255),
    manager VARCHAR(255),
    department VARCHAR(255),
    employee_id VARCHAR(255),
    location VARCHAR(255),
    country VARCHAR(2) CHECK (country IS NULL OR char_length(country) = 2),
    FOREIGN KEY (user_id) REFERENCES users (id) ON DELETE CASCADE
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_520_ci;

CREATE TABLE auth_groups (
    id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    name VARCHAR(255) COLLATE utf8mb4_bin NOT NULL UNIQUE CHECK (char_length(trim(name)) > 0)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_520_ci;

CREATE TABLE user_groups (
    user_id BIGINT NOT NULL,
    group_id BIGINT NOT NULL,
    PRIMARY KEY (user_id, group_id),
    FOREIGN KEY (user_id) REFERENCES users (id) ON DELETE CASCADE,
    FOREIGN KEY (group_id) REFERENCES auth_groups (id) ON DELETE CASCADE
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_520_ci;
CREATE INDEX user_groups_group ON user_groups (group_id);
