#!/usr/bin/env bash
# A second, independent test directory for the several-directories tests (ralph-ldap's
# `realm`): the same fixture as scripts/services/slapd (same base, same people, so the same
# usernames exist in both), without bulk users, in $RALPH_TEST_RUN_DIR/slapd2, on its own
# free loopback ports and with its own passwords and CA. Prints only
# `export RALPH_TEST_LDAP2_...` lines on stdout (the slapd fixture's names with
# LDAP2; its ldaps:// URL is RALPH_TEST_LDAP2_LDAPS_URL).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
RUN="${RALPH_TEST_RUN_DIR:?RALPH_TEST_RUN_DIR must be set}/slapd2"
mkdir -p "$RUN"
RALPH_TEST_RUN_DIR="$RUN" RALPH_TEST_LDAP_BULK_USERS=0 bash "$HERE/../slapd/up.sh" \
    | sed -n -e 's/^export RALPH_TEST_LDAPS_URL=/export RALPH_TEST_LDAP2_LDAPS_URL=/p' \
        -e 's/^export RALPH_TEST_LDAP_/export RALPH_TEST_LDAP2_/p'
# up.sh cleans up after itself on failure; its status is what counts, not sed's.
exit "${PIPESTATUS[0]}"
