#!/usr/bin/env bash
# Stops the second test slapd started by up.sh and removes its files; safe after a partial start.
set -uo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
RUN="${RALPH_TEST_RUN_DIR:?}/slapd2"
RALPH_TEST_RUN_DIR="$RUN" bash "$HERE/../slapd/down.sh"
rm -rf "$RUN"
exit 0
