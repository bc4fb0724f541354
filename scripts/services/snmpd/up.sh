#!/usr/bin/env bash
# snmpd on a free loopback UDP port with a known community and sysName/sysDescr, for the
# ralph-discovery SNMP tests. Prints only `export RALPH_TEST_...` lines on stdout.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
RUN_DIR="${RALPH_TEST_RUN_DIR:-/tmp/ralph-test-run}"
DIR="$RUN_DIR/snmpd"
mkdir -p "$DIR"
bash "$HERE/down.sh" >&2 || true

SNMPD="$(command -v snmpd || echo /usr/sbin/snmpd)"
[ -x "$SNMPD" ] || { echo "snmpd: not installed" >&2; exit 1; }

COMMUNITY="ralph-lab-community"
SYSNAME="ralph-snmp-lab"
SYSDESCR="Linux ralph-snmp-lab 6.1.0 ralph-rs test agent"

free_udp_port() {
    python3 -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

for _ in 1 2 3 4 5; do
    PORT="$(free_udp_port)"
    cat > "$DIR/snmpd.conf" <<CONF
agentAddress udp:127.0.0.1:$PORT
rocommunity $COMMUNITY 127.0.0.1
sysName $SYSNAME
sysDescr $SYSDESCR
sysLocation ralph-rs test lab
sysContact ralph-rs
CONF
    # -C: only this config; -f: foreground (backgrounded here so we know its pid); -Lf: log file.
    "$SNMPD" -f -C -c "$DIR/snmpd.conf" -Lf "$DIR/snmpd.log" -p "$DIR/snmpd.pid" \
        -M /dev/null -I -ifXTable,ipAddressTable > /dev/null 2>&1 &
    echo $! > "$DIR/snmpd.bgpid"
    for _ in $(seq 1 50); do
        if grep -q "NET-SNMP version" "$DIR/snmpd.log" 2>/dev/null; then break; fi
        if ! kill -0 "$(cat "$DIR/snmpd.bgpid")" 2>/dev/null; then break; fi
        sleep 0.1
    done
    if kill -0 "$(cat "$DIR/snmpd.bgpid")" 2>/dev/null && grep -q "NET-SNMP version" "$DIR/snmpd.log" 2>/dev/null; then
        echo "snmpd: listening on 127.0.0.1:$PORT" >&2
        echo "export RALPH_TEST_SNMP_ADDR=127.0.0.1:$PORT"
        echo "export RALPH_TEST_SNMP_COMMUNITY=$COMMUNITY"
        echo "export RALPH_TEST_SNMP_SYSNAME=\"$SYSNAME\""
        echo "export RALPH_TEST_SNMP_SYSDESCR=\"$SYSDESCR\""
        exit 0
    fi
    echo "snmpd: start on port $PORT failed, retrying" >&2
    cat "$DIR/snmpd.log" >&2 2>/dev/null || true
    bash "$HERE/down.sh" >&2 || true
done
echo "snmpd: could not start" >&2
exit 1
