#!/usr/bin/env bash
# The test directory: an OpenLDAP slapd of our own (never the system one on 389), run from
# $RALPH_TEST_RUN_DIR/slapd on free loopback ports with ldap:// (StartTLS) and ldaps://.
#
# Makes a CA and a server certificate (plus an unrelated CA for "wrong CA" tests), writes
# slapd.conf (mdb, memberof + refint overlays, size limit 1000, bind_anon_cred, TLS), loads
# people.ldif plus 5,000 generated users with slapadd, starts slapd, then adds groups.ldif
# through slapd so the memberof overlay fills memberOf. Prints only `export RALPH_TEST_...`
# lines on stdout; everything else goes to stderr.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
RUN="${RALPH_TEST_RUN_DIR:?RALPH_TEST_RUN_DIR must be set}"
DIR="$RUN/slapd"
BASE="dc=ralph,dc=test"
BULK_USERS="${RALPH_TEST_LDAP_BULK_USERS:-5000}"
BENCH_ACTIVE=1000

log() { echo "slapd: $*" >&2; }

# Any failure (a command failing under set -e, or an explicit exit 1) stops whatever was
# started, so a failed setup never leaves slapd running.
cleanup_on_failure() {
    local rc=$?
    trap - ERR EXIT
    if [ "$rc" -ne 0 ]; then
        log "setup failed (status $rc), cleaning up"
        RALPH_TEST_RUN_DIR="$RUN" bash "$HERE/down.sh" || true
    fi
    exit "$rc"
}
trap cleanup_on_failure ERR EXIT

# Idempotent: a previous instance in this run dir is stopped and replaced.
RALPH_TEST_RUN_DIR="$RUN" bash "$HERE/down.sh"
mkdir -p "$DIR/db" "$DIR/tls"
chmod 700 "$DIR"

# --- TLS material -----------------------------------------------------------------------
make_ca() { # name subject
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 3 \
        -keyout "$DIR/tls/$1.key" -out "$DIR/tls/$1.pem" -subj "$2" \
        -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
}
make_ca ca "/CN=ralph-rs test CA"
make_ca other-ca "/CN=ralph-rs unrelated CA"
openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout "$DIR/tls/server.key" \
    -out "$DIR/tls/server.csr" -subj "/CN=localhost" 2>/dev/null
printf '%s\n' "subjectAltName=IP:127.0.0.1,DNS:localhost" "basicConstraints=CA:FALSE" \
    "keyUsage=critical,digitalSignature,keyEncipherment" "extendedKeyUsage=serverAuth" >"$DIR/tls/server.ext"
openssl x509 -req -in "$DIR/tls/server.csr" -CA "$DIR/tls/ca.pem" -CAkey "$DIR/tls/ca.key" -CAcreateserial \
    -days 3 -extfile "$DIR/tls/server.ext" -out "$DIR/tls/server.pem" 2>/dev/null

# --- free loopback ports ------------------------------------------------------------------
listening() { # port -> 0 when something listens on it (IPv4 or IPv6)
    local hex
    hex="$(printf ':%04X ' "$1")"
    grep -q " [0-9A-F:]*$hex[0-9A-F:]* 0A " /proc/net/tcp /proc/net/tcp6 2>/dev/null
}
pick_port() {
    local p
    while true; do
        p=$((20000 + RANDOM % 40000))
        listening "$p" || { echo "$p"; return; }
    done
}

# --- configuration ------------------------------------------------------------------------
ADMIN_PW="$(openssl rand -hex 16)"
SERVICE_PW="$(openssl rand -hex 16)"
cat >"$DIR/slapd.conf" <<CONF
include /etc/ldap/schema/core.schema
include /etc/ldap/schema/cosine.schema
include /etc/ldap/schema/inetorgperson.schema
include /etc/ldap/schema/nis.schema
include $HERE/ralph.schema

modulepath /usr/lib/ldap
moduleload back_mdb
moduleload memberof
moduleload refint
moduleload ppolicy

pidfile $DIR/slapd.run.pid
argsfile $DIR/slapd.args
loglevel none

# Unauthenticated binds (a DN with an empty password, bind_anon_dn) and anonymous binds with
# credentials (bind_anon_cred) succeed as anonymous: clients must
# refuse empty passwords themselves, and the tests prove that they do.
allow bind_anon_cred bind_anon_dn

TLSCACertificateFile $DIR/tls/ca.pem
TLSCertificateFile $DIR/tls/server.pem
TLSCertificateKeyFile $DIR/tls/server.key

access to dn.base="" by * read
access to dn.base="cn=Subschema" by * read

database mdb
suffix "$BASE"
rootdn "cn=admin,$BASE"
rootpw $ADMIN_PW
directory $DIR/db
maxsize 1073741824
# Test data: no fsync per write (a killed slapd loses nothing; only a machine crash would).
dbnosync
index objectClass eq
index uid,sAMAccountName,cn eq
index member,memberUid,memberOf eq

# Size limit 1000 for everyone but the rootdn: a search for all users must page (RFC 2696);
# a paged search may return any total.
limits * size.soft=1000 size.hard=1000 size.prtotal=unlimited
sizelimit 1000

overlay memberof
memberof-group-oc groupOfNames
memberof-member-ad member
memberof-memberof-ad memberOf
memberof-refint TRUE

overlay refint
refint_attributes member

# Password policy overlay (its schema is built in since 2.5): pwdAccountLockedTime locks an
# account. The default policy only turns lockout on; nothing else (no expiry, no quality).
# cn=expiring (people.ldif) expires passwords after 30 days, for users naming it.
overlay ppolicy
ppolicy_default "cn=default,ou=policies,$BASE"

access to attrs=userPassword
    by self write
    by anonymous auth
    by * none
# Group names hidden from everyone but the rootdn under ou=hidden,ou=groups, as directories do
# hide group attributes from service accounts: a search finds these groups (DN, member) but
# returns them without cn. Tests add their own groups there at run time.
access to dn.subtree="ou=hidden,ou=groups,$BASE" attrs=cn
    by * none
access to *
    by users read
    by * none
CONF

# --- data ----------------------------------------------------------------------------------
{
    cat "$HERE/people.ldif"
    # Changed a minute ago under the expiring policy: in good standing.
    printf '\ndn: uid=pp-fresh,ou=adstate,%s\nobjectClass: inetOrgPerson\nobjectClass: ralphADUser\nuid: pp-fresh\nsAMAccountName: pp-fresh\ncn: Fresh password\nsn: State\nuserPassword: pp-fresh-pw\npwdChangedTime: %s\npwdPolicySubentry: cn=expiring,ou=policies,%s\n' \
        "$BASE" "$(date -u -d '1 minute ago' +%Y%m%d%H%M%SZ)" "$BASE"
    printf '\ndn: cn=ralph-service,ou=services,%s\nobjectClass: organizationalRole\nobjectClass: simpleSecurityObject\ncn: ralph-service\nuserPassword: %s\n' \
        "$BASE" "$SERVICE_PW"
    awk -v n="$BULK_USERS" -v base="$BASE" 'BEGIN {
        split("pl US de XX fr gb Poland it es nl", cc, " ")
        for (i = 0; i < n; i++) {
            u = sprintf("bulk%05d", i)
            printf "\ndn: uid=%s,ou=bulk,%s\nobjectClass: inetOrgPerson\nobjectClass: ralphADUser\n", u, base
            printf "uid: %s\nsAMAccountName: %s\ncn: Bulk User %05d\ngivenName: Bulk\nsn: User%05d\n", u, u, i, i
            printf "mail: %s@ralph.test\ncompany: Bulk Co\ndepartment: D%d\nemployeeID: B-%05d\n", u, i % 10, i
            printf "ISO-country-code: %s\nuserPassword: pw-%s\n", cc[(i % 10) + 1], u
        }
    }'
} >"$DIR/data.ldif"

people_members() { # the named users that pass the user filter (all but eve and jsmith)
    for u in alice bob carol dave mallory łukasz cycler 'w*ld(c)ard\\' twin rolf nopass; do
        echo "member: uid=$u,ou=people,$BASE"
    done
    echo "member: cn=Twin Two,ou=people,$BASE"
}
{
    cat "$HERE/groups.ldif"
    printf '\ndn: cn=ralph-users,ou=groups,%s\nobjectClass: groupOfNames\ncn: ralph-users\n' "$BASE"
    people_members
    awk -v n="$BULK_USERS" -v base="$BASE" 'BEGIN { for (i = 0; i < n; i++) printf "member: uid=bulk%05d,ou=bulk,%s\n", i, base }'
    printf '\ndn: cn=_gr_ralph,ou=groups,%s\nobjectClass: groupOfNames\ncn: _gr_ralph\n' "$BASE"
    people_members | grep -v -e "uid=dave," -e "uid=rolf,"
    awk -v n="$BENCH_ACTIVE" -v m="$BULK_USERS" -v base="$BASE" \
        'BEGIN { for (i = 0; i < n && i < m; i++) printf "member: uid=bulk%05d,ou=bulk,%s\n", i, base }'
    # Close the cycle: cycle-a <- cycle-b <- cycle-a.
    printf '\ndn: cn=cycle-a,ou=groups,%s\nchangetype: modify\nadd: member\nmember: cn=cycle-b,ou=groups,%s\n' "$BASE" "$BASE"
} >"$DIR/groups.ldif"
# ldapadd wants changetype on every record once one has it: mark the adds explicitly.
awk '/^dn: / && !seen[$0]++ { print; getline; if ($0 !~ /^changetype:/) print "changetype: add"; print; next } { print }' \
    "$DIR/groups.ldif" >"$DIR/groups.changes.ldif"

slapadd -q -f "$DIR/slapd.conf" -l "$DIR/data.ldif" >&2

# --- start -----------------------------------------------------------------------------------
started=0
for _ in 1 2 3 4 5; do
    LDAP_PORT="$(pick_port)"
    LDAPS_PORT="$(pick_port)"
    [ "$LDAP_PORT" != "$LDAPS_PORT" ] || continue
    printf 'LDAP_PORT=%s\nLDAPS_PORT=%s\n' "$LDAP_PORT" "$LDAPS_PORT" >"$DIR/ports.env"
    if bash "$HERE/start.sh" "$DIR"; then started=1; break; fi
    log "start on $LDAP_PORT/$LDAPS_PORT failed, trying other ports"
done
[ "$started" = 1 ] || { log "could not start slapd"; exit 1; }

ldapmodify -x -c -H "ldap://127.0.0.1:$LDAP_PORT/" -D "cn=admin,$BASE" -w "$ADMIN_PW" \
    -f "$DIR/groups.changes.ldif" >"$DIR/groups.log" 2>&1 || { cat "$DIR/groups.log" >&2; exit 1; }
log "listening on ldap://127.0.0.1:$LDAP_PORT/ and ldaps://127.0.0.1:$LDAPS_PORT/ ($BULK_USERS bulk users)"

cat <<OUT
export RALPH_TEST_LDAP_URL=ldap://127.0.0.1:$LDAP_PORT
export RALPH_TEST_LDAPS_URL=ldaps://127.0.0.1:$LDAPS_PORT
export RALPH_TEST_LDAP_CA=$DIR/tls/ca.pem
export RALPH_TEST_LDAP_OTHER_CA=$DIR/tls/other-ca.pem
export RALPH_TEST_LDAP_BASE=$BASE
export RALPH_TEST_LDAP_BIND_DN=cn=ralph-service,ou=services,$BASE
export RALPH_TEST_LDAP_BIND_PASSWORD=$SERVICE_PW
export RALPH_TEST_LDAP_ADMIN_DN=cn=admin,$BASE
export RALPH_TEST_LDAP_ADMIN_PASSWORD=$ADMIN_PW
export RALPH_TEST_LDAP_BULK_USERS=$BULK_USERS
export RALPH_TEST_LDAP_PID_FILE=$DIR/slapd.pid
export RALPH_TEST_LDAP_RESTART="bash $HERE/start.sh $DIR"
OUT
