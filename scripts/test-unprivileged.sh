#!/usr/bin/env bash
# Runs the whole test suite as an unprivileged user (nobody), as a developer without root
# would: unit tests — including reconcile, ADD rollback and DEL teardown on the recording
# kernel — must pass, and every test that needs root must say so and skip. Prints the totals
# and how many root tests were skipped.
#
# Must be started as root (to drop to nobody); builds the test binaries first as the caller.
# CI is unset for the run: under CI=true a skip is a failure by design.
set -euo pipefail
cd "$(dirname "$0")/.."
user=${TEST_USER:-nobody}
uid=$(id -u "$user")
gid=$(id -g "$user")
work=$(mktemp -d /tmp/flannel-unpriv.XXXXXX)
chmod 0777 "$work"
trap '[ -n "${KEEP_LOGS:-}" ] || rm -rf "$work"' EXIT

cargo build --workspace --bins --quiet
cargo test --workspace --no-run --message-format=json 2>/dev/null |
    python3 -c '
import json, sys
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["profile"]["test"]:
        print(m["executable"], m["manifest_path"].rsplit("/", 1)[0])
' >"$work/binaries"

passed=0 failed=0 skipped=0 root_skipped=0 bad=()
while read -r exe dir; do
    log="$work/$(basename "$exe").log"
    if (cd "$dir" && env -u CI HOME="$work" TMPDIR="$work" \
        setpriv --reuid="$uid" --regid="$gid" --clear-groups "$exe" --test-threads=1 --nocapture >"$log" 2>&1); then
        :
    else
        bad+=("$exe")
    fi
    read -r p f < <(python3 -c '
import re, sys
p = f = 0
for l in open(sys.argv[1]):
    m = re.search(r"test result: \w+\. (\d+) passed; (\d+) failed", l)
    if m:
        p += int(m.group(1)); f += int(m.group(2))
print(p, f)' "$log")
    passed=$((passed + p)) failed=$((failed + f))
    skipped=$((skipped + $(grep -c 'SKIPPED' "$log" || true)))
    root_skipped=$((root_skipped + $(grep -c 'SKIPPED (needs root)' "$log" || true)))
done <"$work/binaries"

# A skipped test returns early and counts as passed for libtest.
echo "as $user: $((passed - skipped)) tests ran and passed, $failed failed; $skipped skipped ($root_skipped because they need root: they run as root, and under CI=true a skip is a failure)"
for b in "${bad[@]}"; do
    echo "FAILED: $b (log follows)"
    tail -30 "$work/$(basename "$b").log"
done
[ "${#bad[@]}" -eq 0 ]
