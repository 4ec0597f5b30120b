#!/usr/bin/env bash
# Crash injection at scale (issue 18): the installable CNI plugin SIGKILLed at random instants
# of ADD (then DEL, and DEL + ADD + DEL every fifth trial) and of DEL (then DEL), in private
# namespaces, checking after every trial that no reservation, host veth, masquerade entry or
# pod interface is left. The suite runs 300 ADD and 100 DEL trials; this runs ROUNDS rounds
# of TRIALS each with different seeds (default 4 x 1000 = 4,000 ADD and ~1,300 DEL trials).
#   scripts/bench-crash.sh        ROUNDS=4 TRIALS=1000
set -euo pipefail
cd "$(dirname "$0")/.."
[[ $EUID -eq 0 ]] || { echo "bench-crash.sh: needs root (network namespaces)" >&2; exit 1; }
ROUNDS=${ROUNDS:-4} TRIALS=${TRIALS:-1000}
CNI_BIN=$PWD/$(scripts/build-cni.sh)
for round in $(seq "$ROUNDS"); do
  echo "## round $round: seed $round, $TRIALS trials, $CNI_BIN"
  FLANNEL_CNI_BIN=$CNI_BIN CRASH_SEED=$round CRASH_TRIALS=$TRIALS \
    cargo test -p cni-plugin --test crash -- --nocapture --test-threads 1 2>&1 \
    | grep -E -A3 "trials|panicked|test result"
done
