#!/usr/bin/env bash
# Drops the database up.sh created and every `<name>_<suffix>` one the tests derived from it
# (underscores escaped in LIKE, so run 165 never touches run 1653's databases),
# with the account up.sh used. Safe after a partial start: it only acts on what up.sh recorded.
set -uo pipefail
RUN="${RALPH_TEST_RUN_DIR:?}"

if [ -f "$RUN/pg_db" ]; then
    { read -r base; read -r user; read -r pass; } < "$RUN/pg_db"
    pg() { PGPASSWORD="${pass:-}" psql -h 127.0.0.1 -U "${user:-postgres}" -d postgres "$@"; }
    esc="${base//_/\\_}"
    for db in $(pg -qtAc "select datname from pg_database where datname = '$base' or datname like '${esc}\\_%'"); do
        pg -qc "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" >/dev/null
    done
fi
if [ -f "$RUN/my_db" ]; then
    { read -r base; read -r user; read -r pass; } < "$RUN/my_db"
    my() { MYSQL_PWD="${pass:-}" mysql -h 127.0.0.1 -u"${user:-root}" "$@"; }
    esc="${base//_/\\_}"
    for db in $(my -N -e "select schema_name from information_schema.schemata where schema_name = '$base' or schema_name like '${esc}\\_%'"); do
        my -e "DROP DATABASE IF EXISTS \`$db\`"
    done
fi
