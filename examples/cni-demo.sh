#!/usr/bin/env bash
# Single-node CNI demo: a node namespace and three pod namespaces; the `flannel` plugin's
# ADD for each pod, a ping matrix between them, then DEL and removal of every namespace.
# Everything happens inside namespaces this script creates (removed on exit, also on
# failure); the root namespace is never touched.
#   examples/cni-demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."
[[ $EUID -eq 0 ]] || { echo "run as root" >&2; exit 1; }
scripts/deps.sh --if-missing
cargo build --release -p cni-plugin --bin flannel >&2
PLUGIN=$PWD/target/release/flannel

PFX="fdemo$$"
STATE=$(mktemp -d /tmp/flannel-demo.XXXXXX)
cleanup() {
  local rc=$?
  for ns in $(ip netns list | awk '{print $1}' | grep "^$PFX-" || true); do ip netns del "$ns"; done
  rm -rf "$STATE"
  echo "# cleaned up (namespaces with prefix $PFX removed)"
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

NODE=$PFX-node
ip netns add "$NODE"
ip -n "$NODE" link set lo up
cat >"$STATE/subnet.env" <<ENV
FLANNEL_NETWORK=10.244.0.0/16
FLANNEL_SUBNET=10.244.1.1/24
FLANNEL_MTU=1450
FLANNEL_IPMASQ=true
ENV
CONF=$(jq -n --arg se "$STATE/subnet.env" --arg dd "$STATE/ipam" --arg fd "$STATE/flannel" \
  '{cniVersion:"0.3.1", name:"cbr0", type:"flannel", subnetFile:$se, dataDir:$fd,
    delegate:{hairpinMode:true, isDefaultGateway:true}, ipam:{dataDir:$dd}}')
echo "# config: $(jq -c . <<<"$CONF")"

cni() { # cni CMD pod
  ip netns exec "$NODE" env CNI_COMMAND="$1" CNI_CONTAINERID="$2" CNI_NETNS="/run/netns/$PFX-$2" \
    CNI_IFNAME=eth0 CNI_PATH=/usr/lib/cni "$PLUGIN" <<<"$CONF"
}

declare -A IP
for p in pod-a pod-b pod-c; do
  ip netns add "$PFX-$p"
  res=$(cni ADD "$p")
  IP[$p]=$(jq -r '.ips[0].address' <<<"$res" | cut -d/ -f1)
  echo "ADD $p -> ${IP[$p]} (veth $(jq -r '.interfaces[1].name' <<<"$res"))"
done

echo "# ping matrix (from row to column)"
printf '%-8s' ""; for q in pod-a pod-b pod-c; do printf '%-8s' "$q"; done; echo
fail=0
for p in pod-a pod-b pod-c; do
  printf '%-8s' "$p"
  for q in pod-a pod-b pod-c; do
    if [[ $p == "$q" ]]; then printf '%-8s' "-"; continue; fi
    if ip netns exec "$PFX-$p" ping -c1 -W1 -q "${IP[$q]}" >/dev/null; then printf '%-8s' ok; else printf '%-8s' FAIL; fail=1; fi
  done
  echo
done

for p in pod-a pod-b pod-c; do cni DEL "$p"; echo "DEL $p"; done
left=$(ls "$STATE/ipam/cbr0" 2>/dev/null | grep -c '^10\.' || true)
echo "# reservations left after DEL: $left; veths left: $(ip -n "$NODE" -o link show master cbr0 | grep -c . || true)"
[[ $fail -eq 0 && $left -eq 0 ]]
