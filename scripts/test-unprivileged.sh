#!/usr/bin/env bash
# Runs the whole test suite as an unprivileged user (nobody), as a developer without root
# would: unit tests — including reconcile, ADD rollback and DEL teardown on the recording
# kernel — must pass, and every test that needs root must say so and skip. Prints how many
# tests ran and how many root tests were skipped.
#
# Must be started as root (to drop to nobody); builds the test binaries first as the caller.
# CI is unset for the run: under CI=true a skip is a failure by design.
set -euo pipefail
cd "$(dirname "$0")/.."
user=${TEST_USER:-nobody}
uid=$(id -u "$user")
gid=$(id -g "$user")

if [ -z "${FLANNEL_UNPRIV_WORK:-}" ]; then
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
    # A checkout under a directory `nobody` cannot enter (root's home, say) is made reachable
    # at the same path inside a private mount namespace — the test binaries carry absolute
    # paths into it. Nothing outside that namespace changes.
    blocked="" dir=$PWD
    while [ "$dir" != / ]; do
        setpriv --reuid="$uid" --regid="$gid" --clear-groups test -x "$dir" || blocked=$dir
        dir=$(dirname "$dir")
    done
    if [ -n "$blocked" ]; then
        echo "test-unprivileged: $user cannot enter $blocked; running in a private mount namespace"
        FLANNEL_UNPRIV_WORK=$work FLANNEL_UNPRIV_BLOCKED=$blocked \
            unshare --mount --propagation private "$0"
        exit $?
    fi
else
    work=$FLANNEL_UNPRIV_WORK
    if [ -n "${FLANNEL_UNPRIV_BLOCKED:-}" ]; then
        blocked=$FLANNEL_UNPRIV_BLOCKED repo=$PWD
        mkdir -p "$work/repo"
        mount --bind "$repo" "$work/repo"
        mount -t tmpfs -o mode=0755 flannel-unpriv "$blocked"
        mkdir -p "$repo"
        d=$repo
        while [ "$d" != "$blocked" ] && [ "$d" != / ]; do chmod 0755 "$d"; d=$(dirname "$d"); done
        mount --bind "$work/repo" "$repo"
        cd "$repo"
    fi
fi

passed=0 failed=0 skipped=0 root_skipped=0 bad=()
while read -r exe dir; do
    log="$work/$(basename "$exe").log"
    # One thread and --nocapture: every SKIPPED line is printed, on a line of its own.
    if (cd "$dir" && env -u CI HOME="$work" TMPDIR="$work" \
        setpriv --reuid="$uid" --regid="$gid" --clear-groups \
        "$exe" --test-threads=1 --nocapture >"$log" 2>&1); then
        :
    else
        bad+=("$exe")
    fi
    read -r p f < <(python3 -c '
import re, sys
p = f = 0
for l in open(sys.argv[1], errors="replace"):
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
