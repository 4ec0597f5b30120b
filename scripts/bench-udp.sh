#!/usr/bin/env bash
# udp backend benchmark (issue 4): single-stream pod-to-pod TCP, ping RTT and CPU per Gbit/s
# of our udp backend, against flannel's design (the naive one-packet-per-syscall TUN proxy,
# shared/bench/udptun.c) and kernel vxlan (shared/bench/dataplane-limits.sh), in the same run.
# Ours and the reference alternate, REPS rounds. Everything runs in namespaces the tools create.
#
#   scripts/bench-udp.sh          # REPS=3 DUR=10; SHARED_DIR defaults to ../shared
set -euo pipefail
source "$(dirname "$0")/bench-prelude.sh"
{ command -v ethtool && command -v python3; } >/dev/null || scripts/deps.sh
LIMITS=$(shared_bench dataplane-limits.sh)
REPS=${REPS:-3} DUR=${DUR:-10}
cargo build --release --workspace --bins >&2
B=target/release/flannel-bench
OUT=$(mktemp -d /tmp/bench-udp.XXXXXX)
echo "# results in $OUT"
for rep in $(seq "$REPS"); do
  for b in udp vxlan; do
    echo "## ours: $b (round $rep)"
    "$B" throughput --backend "$b" --dur "$DUR" --reps 1 | tee -a "$OUT/ours.txt"
  done
  echo "## reference: dataplane-limits.sh udp-naive vxlan (round $rep)"
  OUTDIR=$OUT/ref.$rep REPS=1 DUR=$DUR TESTS="ping tcp1" bash "$LIMITS" udp-naive vxlan \
    >"$OUT/ref.$rep.log" 2>&1 || { echo "dataplane-limits.sh failed: $OUT/ref.$rep.log" >&2; exit 1; }
done

python3 - "$OUT" <<'PY'
import glob, re, statistics as st, sys, collections, os
out = sys.argv[1]
ours = collections.defaultdict(list)
for line in open(f"{out}/ours.txt"):
    m = re.match(r"RESULT (\S+) ([0-9.]+)", line)
    if m: ours[m.group(1)].append(float(m.group(2)))
ref = collections.defaultdict(list)
for f in glob.glob(f"{out}/ref.*/results.tsv"):
    for row in open(f):
        mode, rep, test, k, v = row.rstrip("\n").split("\t")
        ref[(mode, test, k)].append(float(v))
med = lambda xs: st.median(xs) if xs else float("nan")
ncpu = os.cpu_count()
def ref_row(mode):
    g = med(ref[(mode, "tcp1", "gbps")])
    cpu = med(ref[(mode, "tcp1", "cpu_busy_pct")]) / 100 * ncpu
    return g, med(ref[(mode, "ping", "rtt_med_ms")]), med(ref[(mode, "ping", "rtt_p99_ms")]), cpu / g if g else float("nan")
rows = [
  ("ours udp", med(ours["tcp1_udp_median"]), med(ours["rtt_udp_median"]), med(ours["rtt_udp_p99"]), med(ours["cpu_per_gbps_udp_median"])),
  ("ours vxlan", med(ours["tcp1_vxlan_median"]), med(ours["rtt_vxlan_median"]), med(ours["rtt_vxlan_p99"]), med(ours["cpu_per_gbps_vxlan_median"])),
  ("ref udp-naive", *ref_row("udp-naive")),
  ("ref vxlan", *ref_row("vxlan")),
]
print("\n==== single-stream pod-to-pod TCP, medians of the rounds ====")
print("%-14s %10s %12s %12s %16s" % ("path", "Gbit/s", "rtt med ms", "rtt p99 ms", "cores per Gbit/s"))
for r in rows: print("%-14s %10.3f %12.4f %12.4f %16.3f" % r)
udp, naive, rvx = rows[0][1], rows[2][1], rows[3][1]
print(f"\nours udp / naive proxy   = {udp/naive:.2f}  (issue 19 target >= 8)")
print(f"ours udp / kernel vxlan  = {udp/rvx:.2f}  (issue 19 target >= 0.5)")
PY
