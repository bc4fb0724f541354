#!/usr/bin/env bash
# Network-namespace lab for ralph-discovery tests.
#
# Creates a namespace and a veth pair. The namespace holds a whole /20 locally
# (`ip route add local ... dev lo`), so every one of its 4,094 host addresses answers ARP and
# accepts on the lab port; the next /24 is blackholed inside the namespace (hosts that are down).
# The first lab also answers for all of 198.19.0.0/16 (RALPH_TEST_NETLAB_WIDE_CIDR, benchmarks).
# The host side of the veth holds the /19 around them, so the /20 is on-link from the host and a
# sweep creates real neighbour (ARP) entries. Only addresses inside this namespace are probed.
#
# Several runs can coexist (two checkouts testing at once): each takes the first free slot N
# (namespace ralphlabN, interfaces rlabNh/rlabNn, addresses 198.18.(32N).0/19) and records it in
# $RALPH_TEST_RUN_DIR, so down.sh removes its own lab only.
#
# Every address lives in 198.18.0.0/15, the range RFC 2544 sets aside for benchmarking: it is
# never routed on the internet, so the lab can shadow no real route of the host.
# Prints only `export RALPH_TEST_...` lines on stdout; logs go to stderr.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
RUN_DIR="${RALPH_TEST_RUN_DIR:-/tmp/ralph-test-run}"
mkdir -p "$RUN_DIR"

log() { echo "netlab: $*" >&2; }

if [ "$(id -u)" != 0 ]; then
    log "not root: the lab is not started (tests that need it skip, or fail under CI=true)"
    exit 0
fi

# Idempotent: clear what this run directory started before.
bash "$HERE/down.sh" >&2 || true

SLOT=""
for n in 0 1 2 3 4 5 6 7; do
    if ! ip link show "rlab${n}h" > /dev/null 2>&1 && ! ip netns list 2>/dev/null | grep -qw "ralphlab$n" \
        && [ -z "$(ip -4 -o addr show to "198.18.$((n * 32)).0/19" 2>/dev/null)" ]; then
        SLOT=$n
        break
    fi
done
[ -n "$SLOT" ] || { log "no free lab slot (8 labs exist; run down.sh of stale runs)"; exit 1; }
echo "$SLOT" > "$RUN_DIR/netlab.slot"

NS="ralphlab$SLOT"
HOST_IF="rlab${SLOT}h"
NS_IF="rlab${SLOT}n"
BASE=$((SLOT * 32))
LAB_CIDR="198.18.$BASE.0/20"
DEAD_CIDR="198.18.$((BASE + 16)).0/24"
HOST_ADDR="198.18.$((BASE + 31)).254/19"
NS_ADDR="198.18.$((BASE + 31)).253/19"
OPEN_PORT=80
CLOSED_PORT=81

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
# Hosts that are down: routed into the namespace's blackhole, nothing answers ARP for them.
ip netns exec "$NS" ip route add blackhole "$DEAD_CIDR"
# The wide lab for the /16 benchmark: 198.19.0.0/16 (65,534 hosts) answers inside the namespace
# of the first lab that finds it free. The host side holds an address in it (so the whole /16
# is on-link there); inside the namespace a /32 route sends replies to that address back out
# over the veth instead of to the namespace's own AnyIP range.
WIDE_CIDR="198.19.0.0/16"
WIDE_HOST="198.19.255.254"
WIDE=""
if [ -z "$(ip -4 -o addr show to "$WIDE_CIDR" 2>/dev/null)" ]; then
    ip addr add "$WIDE_HOST/16" dev "$HOST_IF"
    ip netns exec "$NS" ip route add local "$WIDE_CIDR" dev lo
    ip netns exec "$NS" ip route add "$WIDE_HOST/32" dev "$NS_IF"
    WIDE=$WIDE_CIDR
fi
# Accept many concurrent connections inside the namespace.
# The accept queue holds a whole /16 sweep, so a listener slower than the sweep (one Python
# process on a busy machine) drops no handshake.
ip netns exec "$NS" sysctl -qw net.core.somaxconn=65535 >&2 || true
ip netns exec "$NS" sysctl -qw net.ipv4.tcp_max_syn_backlog=65535 >&2 || true

PY="$(command -v python3)"
ip netns exec "$NS" "$PY" "$HERE/listener.py" "$OPEN_PORT" > "$RUN_DIR/netlab-listener.log" 2>&1 &
echo $! > "$RUN_DIR/netlab-listener.pid"

FIRST="198.18.$BASE.1"
for _ in $(seq 1 50); do
    if ip netns exec "$NS" "$PY" -c "import socket; socket.create_connection(('$FIRST', $OPEN_PORT), 0.2).close()" 2>/dev/null; then
        break
    fi
    sleep 0.1
done
log "lab up: $LAB_CIDR in namespace $NS via $HOST_IF (down hosts: $DEAD_CIDR, wide: ${WIDE:-none})"

echo "export RALPH_TEST_NETLAB_CIDR=$LAB_CIDR"
echo "export RALPH_TEST_NETLAB_DEAD_CIDR=$DEAD_CIDR"
echo "export RALPH_TEST_NETLAB_OPEN_PORT=$OPEN_PORT"
echo "export RALPH_TEST_NETLAB_CLOSED_PORT=$CLOSED_PORT"
echo "export RALPH_TEST_NETLAB_IFACE=$HOST_IF"
echo "export RALPH_TEST_NETLAB_NS=$NS"
if [ -n "$WIDE" ]; then
    echo "export RALPH_TEST_NETLAB_WIDE_CIDR=$WIDE"
fi
