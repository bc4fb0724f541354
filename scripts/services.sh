# Sourced by scripts/test and scripts/bench: installs the Debian packages the services need,
# starts every service under scripts/services/*/up.sh (each prints `export RALPH_TEST_...=...`
# lines, evaluated here) and stops them again on exit, even on failure.
#
# Expects ROOT (the checkout) and RALPH_TEST_RUN_DIR (where services keep their state).

STARTED=()
services_cleanup() {
    local status=$?
    local i
    for ((i = ${#STARTED[@]} - 1; i >= 0; i--)); do
        echo "==> stopping ${STARTED[i]}"
        bash "scripts/services/${STARTED[i]}/down.sh" || echo "warning: ${STARTED[i]} teardown failed" >&2
    done
    exit "$status"
}
trap services_cleanup EXIT
trap 'exit 130' INT TERM

# 1. Debian packages the services need (each service lists its own in `packages`).
missing=()
for list in scripts/services/*/packages; do
    [ -f "$list" ] || continue
    while read -r pkg; do
        [ -z "$pkg" ] || [[ "$pkg" == \#* ]] && continue
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
    done < "$list"
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "==> installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" > "$RALPH_TEST_RUN_DIR/apt.log" 2>&1 \
        || { cat "$RALPH_TEST_RUN_DIR/apt.log" >&2; exit 1; }
fi

# 2. Services, in name order; each up.sh prints export lines for the tests.
for dir in scripts/services/*/; do
    name="$(basename "$dir")"
    [ -f "$dir/up.sh" ] || continue
    echo "==> starting $name"
    STARTED+=("$name")
    exports="$(bash "$dir/up.sh")"
    eval "$exports"
    echo "$exports" | sed -n 's/^export \(RALPH_TEST_[A-Z0-9_]*\)=.*/    \1/p'
done
