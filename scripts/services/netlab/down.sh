#!/usr/bin/env bash
# Tears down the lab this run directory started; safe after a partial start or when nothing
# was started. Other runs' labs are left alone.
set -uo pipefail
RUN_DIR="${RALPH_TEST_RUN_DIR:-/tmp/ralph-test-run}"

if [ -f "$RUN_DIR/netlab-listener.pid" ]; then
    kill "$(cat "$RUN_DIR/netlab-listener.pid")" 2>/dev/null || true
    rm -f "$RUN_DIR/netlab-listener.pid"
fi
[ -f "$RUN_DIR/netlab.slot" ] || exit 0
SLOT="$(cat "$RUN_DIR/netlab.slot")"
NS="ralphlab$SLOT"
if ip netns list 2>/dev/null | grep -qw "$NS"; then
    # Anything still running inside the namespace (the listener) goes with it.
    for pid in $(ip netns pids "$NS" 2>/dev/null); do kill "$pid" 2>/dev/null || true; done
    ip netns del "$NS" 2>/dev/null || true
fi
# Deleting the host side removes the pair and the neighbour entries on it.
ip link del "rlab${SLOT}h" 2>/dev/null || true
rm -f "$RUN_DIR/netlab.slot"
exit 0
