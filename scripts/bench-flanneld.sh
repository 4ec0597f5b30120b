#!/usr/bin/env bash
# flanneld benchmarks (issue 3), all inside namespaces the harness creates and removes:
#   1. convergence: a new lease -> programmed on all 3 nodes (vxlan, host-gw)
#   2. scale: 1000 and 10000 synthetic leases -> all programmed on a node; flanneld RSS;
#      20 s idle, then 20 s of 200 lease changes/s -> flanneld CPU per change (SCALE_REPS
#      rounds, medians and the 10000/1000 ratio printed at the end); a re-list at 10000
#   3. acquire: acquire time with 5000 existing leases
#   4. pod-to-pod TCP throughput for vxlan and host-gw through our cluster, compared in the
#      same run with the hand-built kernel topology of shared/bench/dataplane-limits.sh
#
#   scripts/bench-flanneld.sh          (DUR=10 REPS=3 SCALE_REPS=3 by default; SHARED_DIR=../shared)
set -euo pipefail
source "$(dirname "$0")/bench-prelude.sh"
{ command -v ethtool && command -v python3; } >/dev/null || scripts/deps.sh

LIMITS=$(shared_bench dataplane-limits.sh)
DUR=${DUR:-10} REPS=${REPS:-3} SCALE_REPS=${SCALE_REPS:-3}
cargo build --release --workspace --bins >&2
B=target/release/flannel-bench
OUT=$(mktemp -d /tmp/flanneld-bench.XXXXXX)
echo "# results in $OUT"

run() { echo "## flannel-bench $*" | tee -a "$OUT/results.txt"; "$B" "$@" | tee -a "$OUT/results.txt"; }
run convergence --backend vxlan --rounds 20
run convergence --backend host-gw --rounds 20
# Scale: 1,000 and 10,000 leases alternating, SCALE_REPS rounds, each with 20 s idle and 20 s
# of churn; the re-list after a compaction once at 10,000.
for rep in $(seq "$SCALE_REPS"); do
  run scale --backend vxlan --leases 1000 --churn 20
  run scale --backend vxlan --leases 10000 --churn 20
done
run scale --backend vxlan --leases 10000 --relist yes
run scale --backend host-gw --leases 1000
run acquire --leases 5000

# Throughput: ours and the reference topology alternate, REPS rounds each.
for rep in $(seq "$REPS"); do
  run throughput --backend vxlan --dur "$DUR" --reps 1
  run throughput --backend host-gw --dur "$DUR" --reps 1
  echo "## dataplane-limits.sh vxlan hostgw (round $rep)"
  OUTDIR=$OUT/limits.$rep REPS=1 DUR=$DUR TESTS=tcp1 bash "$LIMITS" vxlan hostgw >"$OUT/limits.$rep.log" 2>&1 \
    || { echo "dataplane-limits.sh failed; see $OUT/limits.$rep.log" >&2; exit 1; }
done

python3 - "$OUT" "$REPS" <<'PY'
import glob, statistics, sys, re
out, reps = sys.argv[1], int(sys.argv[2])
ours = {"vxlan": [], "host-gw": []}
for line in open(f"{out}/results.txt"):
    m = re.match(r"RESULT tcp1_(\S+)_median ([0-9.]+)", line)
    if m: ours[m.group(1)].append(float(m.group(2)))
ref = {"vxlan": [], "hostgw": []}
for f in glob.glob(f"{out}/limits.*/results.tsv"):
    for row in open(f):
        mode, rep, test, key, val = row.rstrip("\n").split("\t")
        if test == "tcp1" and key == "gbps" and mode in ref:
            ref[mode].append(float(val))
scale = {}
churn_run = False
for line in open(f"{out}/results.txt"):
    if line.startswith("## "):
        # Only the churn runs enter the scale summary (the re-list run is reported alone).
        churn_run = line.startswith("## flannel-bench scale") and "--churn" in line
        continue
    if not churn_run:
        continue
    m = re.match(r"RESULT scale_vxlan_(\d+)_(cpu_per_change|programmed|write|idle_cpu) ([0-9.]+)", line)
    if m:
        scale.setdefault((int(m.group(1)), m.group(2)), []).append(float(m.group(3)))
    m = re.match(r"RESULT scale_vxlan_rss_(after_churn|\d+_leases) (\d+)", line)
    if m:
        scale.setdefault(("rss", m.group(1)), []).append(int(m.group(2)) / 1024)
if scale:
    print("\n==== scale (vxlan): medians over the rounds, [every round] ====")
    for n in (1000, 10000):
        cpu = scale.get((n, "cpu_per_change"), [])
        lag = [p - w for p, w in zip(scale.get((n, "programmed"), []), scale.get((n, "write"), []))]
        rss = scale.get(("rss", f"{n}_leases"), [])
        if cpu:
            print("%6d leases: CPU per change %.3f ms %s; programmed after the last write %.0f ms %s; RSS %.1f MiB"
                  % (n, statistics.median(cpu), cpu, statistics.median(lag), [round(x) for x in lag],
                     statistics.median(rss) if rss else float("nan")))
    after = scale.get(("rss", "after_churn"), [])
    if after:
        print("RSS after churn (MiB): %s" % [round(x, 1) for x in after])
    a, b = scale.get((1000, "cpu_per_change")), scale.get((10000, "cpu_per_change"))
    if a and b:
        print("CPU per change, 10000 / 1000 leases: %.2f" % (statistics.median(b) / statistics.median(a)))
print("\n==== pod-to-pod TCP, 1 stream, median of %d (Gbit/s) ====" % reps)
print("%-8s %10s %10s %7s" % ("backend", "reference", "ours", "ratio"))
for ours_name, ref_name in (("vxlan", "vxlan"), ("host-gw", "hostgw")):
    o, r = ours[ours_name], ref[ref_name]
    if o and r:
        mo, mr = statistics.median(o), statistics.median(r)
        print("%-8s %10.3f %10.3f %7.3f" % (ours_name, mr, mo, mo / mr))
    else:
        print("%-8s missing samples: ours=%s ref=%s" % (ours_name, o, r))
print("\n==== control plane ====")
for line in open(f"{out}/results.txt"):
    if line.startswith("RESULT") and "tcp1_" not in line:
        print(line.rstrip()[7:])
PY
