#!/usr/bin/env bash
# wireguard backend benchmark (issue 20): single-stream pod-to-pod TCP, ping RTT and CPU per
# Gbit/s through our wireguard backend (flanneld's userspace device: this kernel has no
# wireguard module) against Debian's wireguard-go configured as the same two flannel nodes
# (same namespaces, underlay, pods, CNI plugin and MTU 1420), plus our udp backend for scale.
# The three alternate, REPS rounds; medians at the end. Everything runs in namespaces the
# tools create.
#
#   scripts/bench-wireguard.sh          # REPS=3 DUR=10
set -euo pipefail
cd "$(dirname "$0")/.."
for t in wireguard-go wg iperf3; do command -v "$t" >/dev/null || scripts/deps.sh; done
REPS=${REPS:-3} DUR=${DUR:-10}
cargo build --release --workspace --bins >&2
B=target/release/flannel-bench
OUT=$(mktemp -d /tmp/bench-wireguard.XXXXXX)
echo "# results in $OUT"
echo "# wireguard-go $(dpkg-query -W -f '${Version}' wireguard-go 2>/dev/null || echo '?'), kernel $(uname -r), $(nproc) cores"
for rep in $(seq "$REPS"); do
  for b in wireguard wireguard-go udp; do
    echo "## $b (round $rep)"
    "$B" throughput --backend "$b" --dur "$DUR" --reps 1 --pod-masq no | tee -a "$OUT/results.txt"
  done
done

python3 - "$OUT/results.txt" <<'PY'
import re, statistics as st, sys, collections
runs = collections.defaultdict(list)
for line in open(sys.argv[1]):
    m = re.match(r"RESULT (\S+) ([0-9.]+)", line)
    if m: runs[m.group(1)].append(float(m.group(2)))
med = lambda xs: st.median(xs) if xs else float("nan")
spread = lambda xs: "%.3f-%.3f" % (min(xs), max(xs)) if xs else "-"
print("\n==== single-stream pod-to-pod TCP, medians of the rounds (spread) ====")
print("%-14s %10s %15s %12s %12s %16s" % ("path", "Gbit/s", "spread", "rtt med ms", "rtt p99 ms", "cores per Gbit/s"))
for b in ["wireguard", "wireguard-go", "udp"]:
    g = runs[f"tcp1_{b}_median"]
    print("%-14s %10.3f %15s %12.4f %12.4f %16.3f" % (b, med(g), spread(g), med(runs[f"rtt_{b}_median"]),
          med(runs[f"rtt_{b}_p99"]), med(runs[f"cpu_per_gbps_{b}_median"])))
ours, ref = med(runs["tcp1_wireguard_median"]), med(runs["tcp1_wireguard-go_median"])
ratios = [o / r for o, r in zip(runs["tcp1_wireguard_median"], runs["tcp1_wireguard-go_median"])]
print(f"\nours / wireguard-go = {ours/ref:.2f} (per round: {', '.join('%.2f' % r for r in ratios)}; issue 20 target >= 1.5)")
PY
