#!/usr/bin/env bash
# Installs the system packages the tests, demo and benchmarks need (Debian 12), then
# verifies every tool is really there. Fails loudly on anything missing.
#   scripts/deps.sh            apt-get update + install, always
#   scripts/deps.sh --if-missing   only when a tool is missing (fast path for re-runs)
#   scripts/deps.sh --musl-target  only the Rust musl target (status 0 when installed)
set -euo pipefail

PKGS=(iproute2 iputils-ping jq nftables protobuf-compiler etcd-server etcd-client ethtool python3 openssl iptables
      containernetworking-plugins iperf3 procps util-linux gcc wireguard-go wireguard-tools tcpdump)
TOOLS=(ip ping jq nft protoc etcd etcdctl iperf3 unshare nsenter cc openssl iptables-legacy iptables-nft ip6tables-legacy ip6tables-nft bridge wireguard-go wg tcpdump)
REF_PLUGINS=(/usr/lib/cni/bridge /usr/lib/cni/host-local)

missing() {
  local t
  for t in "${TOOLS[@]}"; do command -v "$t" >/dev/null 2>&1 || { echo "$t"; return 0; }; done
  for t in "${REF_PLUGINS[@]}"; do [[ -x $t ]] || { echo "$t"; return 0; }; done
  return 1
}

# The installable CNI plugin is linked against musl (see scripts/build-cni.sh); its Rust
# target comes through rustup. Without it the plugin is built against glibc, slower to start
# on a VM, so a failure here is a loud warning rather than an error. Status 0 when the target
# is installed; `scripts/deps.sh --musl-target` does only this step (build-cni.sh uses it).
MUSL_TARGET=x86_64-unknown-linux-musl
ensure_musl_target() {
  command -v rustup >/dev/null || { echo "deps.sh: WARNING: no rustup, cannot add Rust target $MUSL_TARGET" >&2; return 1; }
  rustup target list --installed 2>/dev/null | grep -qx "$MUSL_TARGET" && return 0
  rustup target add "$MUSL_TARGET" >&2 && return 0
  echo "deps.sh: WARNING: 'rustup target add $MUSL_TARGET' failed; the CNI plugin will be built against glibc" >&2
  return 1
}
if [[ ${1:-} == --musl-target ]]; then
  ensure_musl_target
  exit
fi
ensure_musl_target || true

if [[ ${1:-} == --if-missing ]] && ! missing >/dev/null; then
  exit 0
fi
[[ $EUID -eq 0 ]] || { echo "deps.sh: must run as root (apt-get install)" >&2; exit 1; }
export DEBIAN_FRONTEND=noninteractive
apt-get update
apt-get install -y "${PKGS[@]}"
if m=$(missing); then
  echo "deps.sh: still missing after install: $m" >&2
  exit 1
fi
command -v cargo >/dev/null || { echo "deps.sh: cargo is missing: install the Rust toolchain (rustup)" >&2; exit 1; }
echo "deps.sh: all tools present"
