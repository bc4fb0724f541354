#!/usr/bin/env bash
# Starts (or restarts) the test slapd prepared by up.sh, on the ports up.sh chose, and waits
# until it answers. Usage: start.sh RUN_DIR. Also what RALPH_TEST_LDAP_RESTART runs after a
# test killed slapd. Logs go to stderr and RUN_DIR/slapd.log; prints nothing on stdout.
set -euo pipefail
DIR="${1:?usage: start.sh RUN_DIR}"
# shellcheck disable=SC1091
source "$DIR/ports.env"

if [ -f "$DIR/slapd.pid" ] && kill -0 "$(cat "$DIR/slapd.pid")" 2>/dev/null; then
    echo "slapd: already running (pid $(cat "$DIR/slapd.pid"))" >&2
    exit 0
fi
rm -f "$DIR/slapd.pid"

# -d 0 keeps slapd in the foreground with logging off; we background it ourselves so that the
# pid we record is slapd's own.
/usr/sbin/slapd -f "$DIR/slapd.conf" -h "ldap://127.0.0.1:$LDAP_PORT/ ldaps://127.0.0.1:$LDAPS_PORT/" \
    -d 0 >>"$DIR/slapd.log" 2>&1 &
pid=$!
echo "$pid" >"$DIR/slapd.pid"

for _ in $(seq 200); do
    if ! kill -0 "$pid" 2>/dev/null; then
        echo "slapd: exited during start; see $DIR/slapd.log" >&2
        tail -20 "$DIR/slapd.log" >&2 || true
        rm -f "$DIR/slapd.pid"
        exit 1
    fi
    if ldapsearch -x -LLL -H "ldap://127.0.0.1:$LDAP_PORT/" -s base -b "" namingContexts >/dev/null 2>&1; then
        exit 0
    fi
    sleep 0.05
done
echo "slapd: did not answer within 10 s, stopping it" >&2
# Never leave a slapd (and its pid file) behind on a failed start.
kill "$pid" 2>/dev/null || true
for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
kill -9 "$pid" 2>/dev/null || true
rm -f "$DIR/slapd.pid"
exit 1
