#!/usr/bin/env bash
# Tears the namespace lab down; safe after a partial start or when nothing was started.
set -uo pipefail
RUN_DIR="${RALPH_TEST_RUN_DIR:-/tmp/ralph-test-run}"
NS=ralphlab
HOST_IF=ralphlab0

if [ -f "$RUN_DIR/netlab-listener.pid" ]; then
    kill "$(cat "$RUN_DIR/netlab-listener.pid")" 2>/dev/null || true
    rm -f "$RUN_DIR/netlab-listener.pid"
fi
# Anything still running inside the namespace (the listener) goes with it.
if ip netns list 2>/dev/null | grep -qw "$NS"; then
    for pid in $(ip netns pids "$NS" 2>/dev/null); do kill "$pid" 2>/dev/null || true; done
    ip netns del "$NS" 2>/dev/null || true
fi
ip link del "$HOST_IF" 2>/dev/null || true
# Neighbour entries the lab left on the host side vanish with the interface.
exit 0
