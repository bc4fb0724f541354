#!/usr/bin/env bash
# Drops the databases up.sh created (and any the tests derived from them).
set -uo pipefail
RUN="${RALPH_TEST_RUN_DIR:?}"
if [ -f "$RUN/pg_db" ]; then
    base="$(cat "$RUN/pg_db")"
    for db in $(psql -h 127.0.0.1 -U postgres -d postgres -qtAc "select datname from pg_database where datname like '${base}%'"); do
        psql -h 127.0.0.1 -U postgres -d postgres -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null
    done
fi
if [ -f "$RUN/my_db" ]; then
    base="$(cat "$RUN/my_db")"
    for db in $(mysql -h 127.0.0.1 -uroot -N -e "select schema_name from information_schema.schemata where schema_name like '${base}%'"); do
        mysql -h 127.0.0.1 -uroot -e "DROP DATABASE IF EXISTS \`$db\`"
    done
fi
