#!/usr/bin/env bash
# IPv6 data-plane benchmark (issue 17): single-stream pod-to-pod TCP over IPv6 through our
# IPv6-only cluster (vxlan: flannel-v6.1, host-gw: IPv6 routes) against a hand-built IPv6
# kernel topology in the same run, rounds alternating; plus the IPv4 pair (our cluster vs
# shared/bench/dataplane-limits.sh) so that a regression of IPv4 shows in the same numbers.
#
#   scripts/bench-ipv6.sh              (DUR=10 REPS=3; V4=0 skips the IPv4 pair)
#
# The reference is shared/bench/dataplane-limits.sh's topology with IPv6 addresses:
#   ul  : bridge br0 (the "switch")
#   n1,n2: eth0 fd00:198:18::N/64 (veth to ul/br0), bridge cni0 fd00:10:244:N::1/64
#   p1,p2: eth0 fd00:10:244:N::2/64 (veth to nN/cni0), default via fd00:10:244:N::1
#   hostgw6: ip -6 route add fd00:10:244:R::/64 via fd00:198:18::R
#   vxlan6 : flannel-v6.1 (id 1, local fd00:198:18::N, dstport 8472, nolearning), MTU 1430
#            (1500 - 70: the outer IPv6 header is 40 bytes), fd00:10:244:N::/128 on it, per
#            peer an onlink route via fd00:10:244:R::, a permanent neighbour and an FDB entry
#            to fd00:198:18::R — what flanneld programs.
# The reference has no NAT, so our pods are attached with the delegate's `ipMasq: false`
# (`flannel-bench --pod-masq no`): a masquerade chain turns on connection tracking for every
# packet of the node, which is the price of masquerading, not of the overlay.
# Namespaces are named bench6-$$-*, created here and deleted on exit (also on failure).
# Never touches the root namespace.
set -euo pipefail
source "$(dirname "$0")/bench-prelude.sh"
command -v iperf3 >/dev/null && command -v python3 >/dev/null || scripts/deps.sh

DUR=${DUR:-10} REPS=${REPS:-3} V4=${V4:-1}
cargo build --release --workspace --bins >&2
B=target/release/flannel-bench
OUT=$(mktemp -d /tmp/bench-ipv6.XXXXXX)
echo "# results in $OUT"
P=bench6-$$
NSES=()
PIDS=()
cleanup() {
  set +e
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; done
  PIDS=()
  for ((i = ${#NSES[@]} - 1; i >= 0; i--)); do ip netns del "${NSES[i]}" 2>/dev/null; done
  NSES=()
}
trap cleanup EXIT

add_ns() { ip netns add "$1"; NSES+=("$1"); ip -n "$1" link set lo up; }
mac_of() { ip -n "$1" -j link show "$2" | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["address"])'; }

ref_topology() { # ref_topology vxlan6|hostgw6
  local mode=$1 i r
  for ns in ul n1 n2 p1 p2; do add_ns "$P-$ns"; done
  ip -n "$P-ul" link add br0 type bridge
  ip -n "$P-ul" link set br0 up
  for i in 1 2; do
    ip -n "$P-ul" link add "ul-n$i" type veth peer name eth0 netns "$P-n$i"
    ip -n "$P-ul" link set "ul-n$i" master br0 up
    ip -n "$P-n$i" -6 addr add "fd00:198:18::$i/64" dev eth0 nodad
    ip -n "$P-n$i" link set eth0 up
    ip netns exec "$P-n$i" sysctl -qw net.ipv6.conf.all.forwarding=1
    ip -n "$P-n$i" link add cni0 type bridge
    ip -n "$P-n$i" -6 addr add "fd00:10:244:$i::1/64" dev cni0 nodad
    ip -n "$P-n$i" link set cni0 up
    ip -n "$P-n$i" link add "veth-p$i" type veth peer name eth0 netns "$P-p$i"
    ip -n "$P-n$i" link set "veth-p$i" master cni0 up
    ip -n "$P-p$i" -6 addr add "fd00:10:244:$i::2/64" dev eth0 nodad
    ip -n "$P-p$i" link set eth0 up
    ip -n "$P-p$i" -6 route add default via "fd00:10:244:$i::1"
  done
  case $mode in
  hostgw6)
    ip -n "$P-n1" -6 route add fd00:10:244:2::/64 via fd00:198:18::2
    ip -n "$P-n2" -6 route add fd00:10:244:1::/64 via fd00:198:18::1
    ;;
  vxlan6)
    for i in 1 2; do
      ip -n "$P-n$i" link add flannel-v6.1 type vxlan id 1 local "fd00:198:18::$i" dev eth0 \
        dstport 8472 nolearning
      ip -n "$P-n$i" link set flannel-v6.1 mtu 1430
      ip -n "$P-n$i" -6 addr add "fd00:10:244:$i::/128" dev flannel-v6.1 nodad
      ip -n "$P-n$i" link set flannel-v6.1 up
    done
    for i in 1 2; do
      r=$((3 - i))
      local rmac
      rmac=$(mac_of "$P-n$r" flannel-v6.1)
      ip -n "$P-n$i" -6 route add "fd00:10:244:$r::/64" via "fd00:10:244:$r::" dev flannel-v6.1 onlink
      ip -n "$P-n$i" -6 neigh replace "fd00:10:244:$r::" lladdr "$rmac" dev flannel-v6.1 nud permanent
      ip netns exec "$P-n$i" bridge fdb replace "$rmac" dev flannel-v6.1 dst "fd00:198:18::$r" self permanent
    done
    for i in 1 2; do
      ip -n "$P-p$i" link set eth0 mtu 1430
      ip -n "$P-n$i" link set "veth-p$i" mtu 1430
    done
    ;;
  esac
}

ref_run() { # ref_run MODE REP -> "RESULT ref_tcp1_MODE GBPS"
  local mode=$1 rep=$2
  ref_topology "$mode"
  ip netns exec "$P-p2" iperf3 -s -p 5201 >/dev/null 2>&1 &
  PIDS+=($!)
  sleep 0.3
  ip netns exec "$P-p1" ping -6 -c 3 -i 0.2 -q fd00:10:244:2::2 >/dev/null
  ip netns exec "$P-p1" iperf3 -c fd00:10:244:2::2 -p 5201 -t "$DUR" -J >"$OUT/ref.$mode.$rep.json"
  python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print("RESULT ref_tcp1_%s %.3f Gbit/s" % (sys.argv[2], d["end"]["sum_received"]["bits_per_second"]/1e9))' \
    "$OUT/ref.$mode.$rep.json" "$mode" | tee -a "$OUT/results.txt"
  cleanup
}

run() { echo "## flannel-bench $*"; "$B" "$@" | tee -a "$OUT/results.txt"; }
LIMITS=""
[[ $V4 == 1 ]] && LIMITS=$(shared_bench dataplane-limits.sh)
for rep in $(seq "$REPS"); do
  run throughput --backend vxlan --stack v6 --dur "$DUR" --reps 1 --pod-masq no
  ref_run vxlan6 "$rep"
  run throughput --backend host-gw --stack v6 --dur "$DUR" --reps 1 --pod-masq no
  ref_run hostgw6 "$rep"
  if [[ $V4 == 1 ]]; then
    run throughput --backend vxlan --dur "$DUR" --reps 1 --pod-masq no
    run throughput --backend host-gw --dur "$DUR" --reps 1 --pod-masq no
    OUTDIR=$OUT/limits.$rep REPS=1 DUR=$DUR TESTS=tcp1 bash "$LIMITS" vxlan hostgw >"$OUT/limits.$rep.log" 2>&1 \
      || { echo "dataplane-limits.sh failed; see $OUT/limits.$rep.log" >&2; exit 1; }
  fi
done

python3 - "$OUT" <<'PY'
import glob, statistics, sys, re
out = sys.argv[1]
ours, ref = {}, {}
for line in open(f"{out}/results.txt"):
    m = re.match(r"RESULT tcp1_(\S+)_median ([0-9.]+)", line)
    if m: ours.setdefault(m.group(1), []).append(float(m.group(2)))
    m = re.match(r"RESULT ref_tcp1_(\S+) ([0-9.]+)", line)
    if m: ref.setdefault(m.group(1), []).append(float(m.group(2)))
for f in glob.glob(f"{out}/limits.*/results.tsv"):
    for row in open(f):
        mode, rep, test, key, val = row.rstrip("\n").split("\t")
        if test == "tcp1" and key == "gbps":
            ref.setdefault(mode, []).append(float(val))
print("\n==== pod-to-pod TCP, 1 stream (Gbit/s): median [per round] ====")
print("%-12s %-28s %-28s %7s" % ("backend", "reference", "ours", "ratio"))
for o, r in (("vxlan-v6", "vxlan6"), ("host-gw-v6", "hostgw6"), ("vxlan", "vxlan"), ("host-gw", "hostgw")):
    a, b = ours.get(o, []), ref.get(r, [])
    if a and b:
        fmt = lambda xs: "%.2f %s" % (statistics.median(xs), [round(x, 2) for x in xs])
        print("%-12s %-28s %-28s %7.3f" % (o, fmt(b), fmt(a), statistics.median(a) / statistics.median(b)))
    elif a or b:
        print("%-12s missing samples: ours=%s ref=%s" % (o, a, b))
PY
