#!/usr/bin/env bash
# CNI latency/throughput benchmark: runs shared/bench/cni-ref-bench.sh for Debian's
# reference bridge+host-local and for our `flannel` binary in the same run, then prints
# ours/reference ratios. Everything runs in private namespaces (see that script).
#   sudo scripts/bench-cni.sh            (SHARED_DIR defaults to ../shared)
set -euo pipefail
cd "$(dirname "$0")/.."
[[ $EUID -eq 0 ]] || { echo "run as root" >&2; exit 1; }
scripts/deps.sh --if-missing
SHARED_DIR=${SHARED_DIR:-$(cd .. && pwd)/shared}
BENCH=$SHARED_DIR/bench/cni-ref-bench.sh
[[ -f $BENCH ]] || { echo "missing $BENCH (set SHARED_DIR)" >&2; exit 1; }
scripts/build-cni.sh >/dev/null
BIN=$(mktemp -d /tmp/flannel-bench-bin.XXXXXX)
OUT=$(mktemp -d /tmp/flannel-bench-out.XXXXXX)
trap 'rm -rf "$BIN" "$OUT"' EXIT
cp target/release/flannel "$BIN/flannel"
echo "# binary size: $(stat -c %s "$BIN/flannel") bytes (release, LTO, stripped, static-pie)"

export SEQ_COUNTS=${SEQ_COUNTS-"10 100"} PARALLEL=${PARALLEL-"16"} CONC_N=${CONC_N:-64}
echo "# reference: /usr/lib/cni bridge + host-local"
bash "$BENCH" | tee "$OUT/ref.txt"
echo "# ours: flannel (bridge + veth + host-local in-process)"
CNI_BIN_DIR=$BIN PLUGIN=flannel IPAM_TYPE= CONF_STYLE=flannel bash "$BENCH" | tee "$OUT/ours.txt"

# field FILE LABEL CMD KEY: the value of "KEY=  value" on the summary line LABEL ... CMD
field() { awk -v l="$2" -v c="$3" -v k="$4=" 'index($0,l)==1 && $3==c { for(i=1;i<=NF;i++) if(index($i,k)==1){v=substr($i,length(k)+1); if(v=="") v=$(i+1); print v; exit} }' "$1"; }
med() { field "$1" "$2" "$3" med; }
tot() { field "$1" "$2" "$3" phase_total; }
echo
echo "==== ours / reference (same run) ===="
printf '%-26s %10s %10s %8s\n' metric reference ours ratio
row() { # label ref ours
  awk -v l="$1" -v r="$2" -v o="$3" 'BEGIN{ if(r>0 && o>0) printf "%-26s %10.2f %10.2f %8.3f\n", l, r, o, o/r; else printf "%-26s %10s %10s %8s\n", l, r, o, "n/a" }'
}
for n in $SEQ_COUNTS; do
  row "ADD median seq$n (ms)" "$(med "$OUT/ref.txt" "seq$n " ADD)" "$(med "$OUT/ours.txt" "seq$n " ADD)"
  row "DEL median seq$n (ms)" "$(med "$OUT/ref.txt" "seq$n " DEL)" "$(med "$OUT/ours.txt" "seq$n " DEL)"
  row "CHECK median seq$n (ms)" "$(med "$OUT/ref.txt" "seq$n " CHECK)" "$(med "$OUT/ours.txt" "seq$n " CHECK)"
done
for p in $PARALLEL; do
  r=$(tot "$OUT/ref.txt" "par$p " ADD); o=$(tot "$OUT/ours.txt" "par$p " ADD)
  row "ADD $CONC_N pods x$p total (ms)" "$r" "$o"
  awk -v r="$r" -v o="$o" -v n="$CONC_N" 'BEGIN{ if(r>0&&o>0) printf "%-26s %10.1f %10.1f %8.2fx\n", "ADD throughput (pods/s)", n*1000/r, n*1000/o, r/o }'
done
row "exec floor VERSION (ms)" "$(med "$OUT/ref.txt" "exec floor" VERSION)" "$(med "$OUT/ours.txt" "exec floor" VERSION)"
