#!/usr/bin/env bash
# What makes a CNI ADD slower as pods accumulate on a node: our plugin adds N pods (default
# 500) one after another into a bridge in a private node namespace (the loop runs inside it,
# as shared/bench's worker does), and the mean ADD of the first and of the last 50 is printed,
# once with our default (IPv6 off on the interface of a pod given no IPv6 address) and once
# with `podIPv6LinkLocal: true` (the pods keep the kernel's IPv6, as with flannel and the
# reference bridge plugin), to show how much of the growth is each new pod's IPv6
# autoconfiguration multicast (MLD reports, router solicitations) that the bridge floods to
# every other pod. Only namespaces this script creates are touched; all are deleted on exit.
# Addresses: 10.244.0.0/22.
#
#   scripts/bench-cni-growth.sh            (as root; N=500 ROUNDS=2)
set -euo pipefail
source "$(dirname "$0")/bench-prelude.sh"
N=${N:-500} ROUNDS=${ROUNDS:-2}
(( N >= 100 && N <= 1000 )) || { echo "N must be 100..1000" >&2; exit 1; }
BIN=$(scripts/build-cni.sh)
P=fl-growth-$$
ST=$(mktemp -d /tmp/bench-cni-growth.XXXXXX)
drop_namespaces() {
  for ns in $(ip netns list | awk '{print $1}' | grep "^$P-" || true); do ip netns del "$ns"; done
}
trap 'drop_namespaces; rm -rf "$ST"' EXIT

run() { # run LABEL LINK_LOCAL(true|false)
  local label=$1 link_local=$2 i
  ip netns add "$P-node"; ip -n "$P-node" link set lo up
  rm -rf "$ST/ipam" "$ST/flannel"
  printf 'FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.0.1/22\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n' >"$ST/subnet.env"
  printf '{"cniVersion":"1.0.0","name":"cbr0","type":"flannel","subnetFile":"%s","dataDir":"%s","delegate":{"bridge":"cni0","hairpinMode":true,"isDefaultGateway":true,"podIPv6LinkLocal":%s},"ipam":{"dataDir":"%s"}}\n' \
    "$ST/subnet.env" "$ST/flannel" "$link_local" "$ST/ipam" >"$ST/conf.json"
  for i in $(seq 1 "$N"); do ip netns add "$P-$i"; done
  cat >"$ST/range.sh" <<'R'
add() { CNI_COMMAND=ADD CNI_CONTAINERID=c$1 CNI_NETNS=/run/netns/$P-$1 CNI_IFNAME=eth0 CNI_PATH=/nonexistent "$BIN" <"$ST/conf.json" >/dev/null || echo "ADD $1 failed" >&2; }
t0=${EPOCHREALTIME/./}; for i in $(seq "$1" "$2"); do add "$i"; done; t1=${EPOCHREALTIME/./}
echo $(( (10#$t1 - 10#$t0) / ($2 - $1 + 1) ))
R
  local first last
  first=$(P=$P ST=$ST BIN=$BIN ip netns exec "$P-node" bash "$ST/range.sh" 1 50)
  P=$P ST=$ST BIN=$BIN ip netns exec "$P-node" bash "$ST/range.sh" 51 $((N - 50)) >/dev/null
  last=$(P=$P ST=$ST BIN=$BIN ip netns exec "$P-node" bash "$ST/range.sh" $((N - 49)) "$N")
  awk -v l="$label" -v a="$first" -v b="$last" -v n="$N" \
    'BEGIN { printf "%-28s pods 1-50 %6.2f ms   pods %d-%d %6.2f ms   growth %.2f\n", l, a/1000, n-49, n, b/1000, b/a }'
  drop_namespaces
}
for r in $(seq 1 "$ROUNDS"); do
  run "round $r: default (IPv6 off)" false
  run "round $r: podIPv6LinkLocal" true
done
