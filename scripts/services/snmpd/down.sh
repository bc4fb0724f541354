#!/usr/bin/env bash
# Stops the test snmpd; safe after a partial start or when nothing runs.
set -uo pipefail
RUN_DIR="${RALPH_TEST_RUN_DIR:-/tmp/ralph-test-run}"
DIR="$RUN_DIR/snmpd"
for f in "$DIR/snmpd.bgpid" "$DIR/snmpd.pid"; do
    if [ -f "$f" ]; then
        pid="$(cat "$f")"
        [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
        rm -f "$f"
    fi
done
exit 0
