#!/usr/bin/env bash
# The project's main demo (README, first command): etcd plus a 3-node cluster on this one
# machine, each node a network namespace running flanneld, two pods per node attached by the
# `flannel` CNI plugin, a ping/TCP connectivity matrix, then a full teardown.
#
#   examples/demo.sh [--backend vxlan|host-gw|udp] [--stack v4|dual|v6] [--nodes N] [--pods-per-node M]
#
# Everything runs in namespaces the demo creates (underlay 198.18.0.0/24, pods 10.244.0.0/16)
# and removes on exit, also on failure or Ctrl-C. The single-node CNI-only demo is
# examples/cni-demo.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
[[ $EUID -eq 0 ]] || { echo "demo.sh: run as root (it creates network namespaces)" >&2; exit 1; }
scripts/deps.sh --if-missing
cargo build --release --workspace --bins
exec target/release/flannel-demo --release "$@"
