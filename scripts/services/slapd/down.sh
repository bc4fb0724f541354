#!/usr/bin/env bash
# Stops the test slapd started by up.sh and removes its files; safe after a partial start.
set -uo pipefail
DIR="${RALPH_TEST_RUN_DIR:?}/slapd"
if [ -f "$DIR/slapd.pid" ]; then
    pid="$(cat "$DIR/slapd.pid")"
    if kill -0 "$pid" 2>/dev/null; then
        kill "$pid" 2>/dev/null
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
        kill -9 "$pid" 2>/dev/null || true
    fi
fi
rm -rf "$DIR"
exit 0
