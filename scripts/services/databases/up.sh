#!/usr/bin/env bash
# PostgreSQL and MariaDB: started before the session on this kind of machine; start them if
# installed and stopped, then create fresh databases for this run. Prints the export lines.
set -euo pipefail
RUN="${RALPH_TEST_RUN_DIR:?}"
NAME="ralph_test_$$"

pg_ok() { psql -h 127.0.0.1 -U postgres -d postgres -qtAc 'select 1' >/dev/null 2>&1; }
my_ok() { mysql -h 127.0.0.1 -uroot -e 'select 1' >/dev/null 2>&1; }

if ! pg_ok && command -v pg_ctlcluster >/dev/null; then
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start >&2 || true
    for _ in $(seq 30); do pg_ok && break; sleep 1; done
fi
if ! my_ok && [ -x /usr/sbin/mariadbd ]; then
    start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd >&2 || true
    for _ in $(seq 30); do my_ok && break; sleep 1; done
fi

if pg_ok; then
    psql -h 127.0.0.1 -U postgres -d postgres -qc "CREATE DATABASE $NAME ENCODING 'UTF8' TEMPLATE template0" >&2
    echo "$NAME" > "$RUN/pg_db"
    echo "export RALPH_TEST_PG_URL=postgres://postgres@127.0.0.1:5432/$NAME"
    echo "export RALPH_TEST_PG_ADMIN_URL=postgres://postgres@127.0.0.1:5432/postgres"
else
    echo "databases: PostgreSQL is not reachable on 127.0.0.1:5432" >&2
fi
if my_ok; then
    mysql -h 127.0.0.1 -uroot -e "CREATE DATABASE $NAME CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci" >&2
    echo "$NAME" > "$RUN/my_db"
    echo "export RALPH_TEST_MYSQL_URL=mysql://root@127.0.0.1:3306/$NAME"
    echo "export RALPH_TEST_MYSQL_ADMIN_URL=mysql://root@127.0.0.1:3306/mysql"
else
    echo "databases: MariaDB is not reachable on 127.0.0.1:3306" >&2
fi
