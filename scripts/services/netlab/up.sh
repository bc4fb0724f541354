#!/usr/bin/env bash
# Network-namespace lab for ralph-discovery tests.
#
# Creates namespace `ralphlab` and a veth pair. The namespace holds the whole 10.213.0.0/20 locally
# (`ip route add local ... dev lo`), so every one of its 4,094 host addresses answers ARP and accepts
# on the lab ports. The host side of the veth holds 10.213.31.254/19, so the /20 is on-link from the
# host and a sweep creates real neighbour (ARP) entries. Only addresses inside this namespace are
# ever probed. Prints only `export RALPH_TEST_...` lines on stdout; logs go to stderr.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
RUN_DIR="${RALPH_TEST_RUN_DIR:-/tmp/ralph-test-run}"
mkdir -p "$RUN_DIR"
NS=ralphlab
HOST_IF=ralphlab0
NS_IF=ralphlab1
LAB_CIDR=10.213.0.0/20
HOST_ADDR=10.213.31.254/19
NS_ADDR=10.213.31.253/19
OPEN_PORT=80
CLOSED_PORT=81
DEAD_CIDR=10.213.16.0/24

log() { echo "netlab: $*" >&2; }

if [ "$(id -u)" != 0 ]; then
    log "not root: the lab is not started (tests that need it skip, or fail under CI=true)"
    exit 0
fi

# Idempotent: clear anything a previous run left behind.
bash "$HERE/down.sh" >&2 || true

ip netns add "$NS"
ip link add "$HOST_IF" type veth peer name "$NS_IF"
ip link set "$NS_IF" netns "$NS"
ip addr add "$HOST_ADDR" dev "$HOST_IF"
ip link set "$HOST_IF" up
ip netns exec "$NS" ip link set lo up
ip netns exec "$NS" ip addr add "$NS_ADDR" dev "$NS_IF"
ip netns exec "$NS" ip link set "$NS_IF" up
# AnyIP: every address of the lab range is local inside the namespace (and answered by ARP).
ip netns exec "$NS" ip route add local "$LAB_CIDR" dev lo
# Hosts that are down: 10.213.16.0/24 is routed into the namespace's blackhole, so nothing
# answers ARP for it (the host side sees them unreachable) and no packet leaves the lab.
ip netns exec "$NS" ip route add blackhole "$DEAD_CIDR"
# Accept many concurrent connections inside the namespace.
ip netns exec "$NS" sysctl -qw net.core.somaxconn=8192 >&2 || true
ip netns exec "$NS" sysctl -qw net.ipv4.tcp_max_syn_backlog=8192 >&2 || true

PY="$(command -v python3)"
ip netns exec "$NS" "$PY" "$HERE/listener.py" "$OPEN_PORT" > "$RUN_DIR/netlab-listener.log" 2>&1 &
echo $! > "$RUN_DIR/netlab-listener.pid"

# Wait until the listener accepts.
for _ in $(seq 1 50); do
    if ip netns exec "$NS" "$PY" -c "import socket; socket.create_connection(('10.213.0.1', $OPEN_PORT), 0.2).close()" 2>/dev/null; then
        break
    fi
    sleep 0.1
done
log "lab up: $LAB_CIDR in namespace $NS via $HOST_IF"

echo "export RALPH_TEST_NETLAB_CIDR=$LAB_CIDR"
echo "export RALPH_TEST_NETLAB_DEAD_CIDR=$DEAD_CIDR"
echo "export RALPH_TEST_NETLAB_OPEN_PORT=$OPEN_PORT"
echo "export RALPH_TEST_NETLAB_CLOSED_PORT=$CLOSED_PORT"
echo "export RALPH_TEST_NETLAB_IFACE=$HOST_IF"
echo "export RALPH_TEST_NETLAB_NS=$NS"
