#!/usr/bin/env bash
# PostgreSQL and MariaDB for the store tests: start them when installed and stopped, make sure
# this script can log in over TCP on 127.0.0.1, then create a fresh database per run (tests
# derive `<name>_<suffix>` databases from it). Prints only `export RALPH_TEST_...` lines.
#
# Login: `postgres` (trust) and MariaDB `root` (empty password) as on the project's machines.
# On a fresh install where those refuse TCP logins (Debian defaults: scram for host
# connections, unix_socket for root), a `ralph_test` account is created through the local
# socket as the servers' own admin, and used instead; nothing else is reconfigured.
set -euo pipefail
RUN="${RALPH_TEST_RUN_DIR:?}"
NAME="ralph_test_$$"
TEST_PASSWORD="ralph_test"

PG_USER=postgres PG_PASS=""
MY_USER=root MY_PASS=""

pg() { PGPASSWORD="$PG_PASS" psql -h 127.0.0.1 -U "$PG_USER" -d postgres -v ON_ERROR_STOP=1 "$@"; }
my() { MYSQL_PWD="$MY_PASS" mysql -h 127.0.0.1 -u"$MY_USER" "$@"; }
pg_ok() { pg -qtAc 'select 1' >/dev/null 2>&1; }
my_ok() { my -e 'select 1' >/dev/null 2>&1; }

# --- PostgreSQL ---------------------------------------------------------------------------
if ! pg_ok && command -v pg_ctlcluster >/dev/null && [ -d /etc/postgresql ]; then
    version="$(ls /etc/postgresql | sort -V | tail -1)"
    pg_ctlcluster --skip-systemctl-redirect "$version" main start >&2 || true
    for _ in $(seq 30); do
        pg_ok && break
        runuser -u postgres -- psql -qtAc 'select 1' >/dev/null 2>&1 && break
        sleep 1
    done
fi
if ! pg_ok && runuser -u postgres -- psql -qtAc 'select 1' >/dev/null 2>&1; then
    echo "databases: postgres refuses TCP logins here; using a ralph_test role" >&2
    runuser -u postgres -- psql -v ON_ERROR_STOP=1 -q >&2 <<SQL
DO \$\$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'ralph_test') THEN
    CREATE ROLE ralph_test LOGIN CREATEDB PASSWORD '$TEST_PASSWORD';
  END IF;
END \$\$;
SQL
    PG_USER=ralph_test PG_PASS="$TEST_PASSWORD"
fi

# --- MariaDB ------------------------------------------------------------------------------
if ! my_ok && [ -x /usr/sbin/mariadbd ]; then
    install -d -o mysql -g mysql /run/mysqld 2>/dev/null || true
    start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd -- --user=mysql >&2 || true
    for _ in $(seq 30); do
        my_ok && break
        mysql -uroot -e 'select 1' >/dev/null 2>&1 && break
        sleep 1
    done
fi
if ! my_ok && mysql -uroot -e 'select 1' >/dev/null 2>&1; then
    echo "databases: MariaDB root refuses TCP logins here; using a ralph_test account" >&2
    for host in 127.0.0.1 localhost; do
        mysql -uroot -e "CREATE USER IF NOT EXISTS 'ralph_test'@'$host' IDENTIFIED BY '$TEST_PASSWORD';
                         GRANT ALL PRIVILEGES ON *.* TO 'ralph_test'@'$host' WITH GRANT OPTION" >&2
    done
    MY_USER=ralph_test MY_PASS="$TEST_PASSWORD"
fi

# --- Databases for this run -------------------------------------------------------------
if pg_ok; then
    pg -qc "CREATE DATABASE $NAME ENCODING 'UTF8' TEMPLATE template0" >&2
    printf '%s\n%s\n%s\n' "$NAME" "$PG_USER" "$PG_PASS" > "$RUN/pg_db"
    auth="$PG_USER${PG_PASS:+:$PG_PASS}"
    echo "export RALPH_TEST_PG_URL=postgres://$auth@127.0.0.1:5432/$NAME"
    echo "export RALPH_TEST_PG_ADMIN_URL=postgres://$auth@127.0.0.1:5432/postgres"
else
    echo "databases: PostgreSQL is not reachable on 127.0.0.1:5432" >&2
fi
if my_ok; then
    my -e "CREATE DATABASE $NAME CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci" >&2
    printf '%s\n%s\n%s\n' "$NAME" "$MY_USER" "$MY_PASS" > "$RUN/my_db"
    auth="$MY_USER${MY_PASS:+:$MY_PASS}"
    echo "export RALPH_TEST_MYSQL_URL=mysql://$auth@127.0.0.1:3306/$NAME"
    echo "export RALPH_TEST_MYSQL_ADMIN_URL=mysql://$auth@127.0.0.1:3306/mysql"
else
    echo "databases: MariaDB is not reachable on 127.0.0.1:3306" >&2
fi
