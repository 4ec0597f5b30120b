#!/usr/bin/env bash
# Kernel cost of one more peer route with N routes already there, inline gateway (flannel's
# `ip route replace DST via GW dev flannel.1 onlink`) against a nexthop object plus a route
# naming it (`ip nexthop replace id ID via GW dev flannel.1 onlink` + `ip route replace DST
# nhid ID`), the way flanneld writes IPv4 peer routes. Everything happens in a namespace this
# script creates and deletes (also on failure); no packet is sent. Routes are /30s of
# 10.244.0.0/16 with the subnet's first address as gateway, as flannel's vxlan routes are.
#
#   scripts/bench-nexthop.sh            (as root; SIZES="1000 10000" ADD=1000 by default)
set -euo pipefail
[[ $EUID -eq 0 ]] || { echo "run as root" >&2; exit 1; }
SIZES=${SIZES:-"1000 10000"} ADD=${ADD:-1000}
NS=fl-nexthop-$$
WORK=$(mktemp -d /tmp/bench-nexthop.XXXXXX)
cleanup() { ip netns del "$NS" 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
ip netns add "$NS"
ip -n "$NS" link add flannel.1 type vxlan id 1 local 198.18.0.1 dstport 8472 nolearning
ip -n "$NS" addr add 10.244.0.0/32 dev flannel.1
ip -n "$NS" link set flannel.1 up

# gen MODE FIRST COUNT: `ip -batch` lines for routes FIRST.. (skipping /30 number 0, ours)
gen() {
  python3 - "$@" <<'PY'
import sys
mode, first, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for k in range(first + 1, first + 1 + count):
    net = f"10.244.{k >> 6}.{(k & 63) << 2}"
    if mode == "inline":
        print(f"route replace {net}/30 via {net} dev flannel.1 onlink proto 150")
    else:
        nid = (10 << 24) | (244 << 16) | (k << 2)
        print(f"nexthop replace id {nid} via {net} dev flannel.1 onlink proto 150")
        print(f"route replace {net}/30 nhid {nid} proto 150")
PY
}
for n in $SIZES; do
  (( n + ADD < 16384 )) || { echo "SIZES + ADD must stay below 16384 /30s" >&2; exit 1; }
done
printf '%-8s %8s %22s\n' form routes "ms for $ADD more"
for mode in inline nexthop; do
  for n in $SIZES; do
    ip -n "$NS" route flush dev flannel.1 proto 150 2>/dev/null || true
    ip -n "$NS" nexthop flush >/dev/null 2>&1 || true
    gen "$mode" 0 "$n" >"$WORK/pre"
    gen "$mode" "$n" "$ADD" >"$WORK/add"
    ip -n "$NS" -batch "$WORK/pre"
    start=${EPOCHREALTIME/./}
    ip -n "$NS" -batch "$WORK/add"
    end=${EPOCHREALTIME/./}
    printf '%-8s %8d %22.1f\n' "$mode" "$n" "$(( 10#$end - 10#$start ))e-3"
  done
done
