#!/usr/bin/env bash
# The project's main demo (README, first command). Currently the single-node CNI demo:
# a node namespace, three pods attached by the `flannel` CNI plugin, a ping matrix, and
# a full teardown. Runs entirely in namespaces it creates and removes.
set -euo pipefail
exec "$(dirname "$0")/cni-demo.sh" "$@"
