#!/usr/bin/env bash
# Removes what scripts/install.sh installed (same DESTDIR and PREFIX) and, on a live node
# (no DESTDIR), what flanneld created: it stops the service, then `flanneld --cleanup` removes
# the vxlan/TUN devices, the routes with protocol 150, the nftables table, our iptables
# FORWARD rules (the operator's stay) and subnet.env. The etcd lease is kept (the node gets
# the same subnet if it comes back) unless --release-lease is given.
#
#   scripts/uninstall.sh [--release-lease]
#   DESTDIR=/tmp/pkg scripts/uninstall.sh
set -euo pipefail
DESTDIR=${DESTDIR:-}
PREFIX=${PREFIX:-/usr/local}
RELEASE=false
for a in "$@"; do
  case $a in
    --release-lease) RELEASE=true ;;
    *) echo "usage: scripts/uninstall.sh [--release-lease]" >&2; exit 2 ;;
  esac
done
MANIFEST=$DESTDIR$PREFIX/share/flannel-rs/installed
[[ -f $MANIFEST ]] || { echo "uninstall.sh: $MANIFEST not found: nothing installed with this DESTDIR/PREFIX" >&2; exit 1; }

if [[ -z $DESTDIR ]]; then
  [[ $EUID -eq 0 ]] || { echo "uninstall.sh: needs root" >&2; exit 1; }
  if [[ -d /run/systemd/system ]]; then
    systemctl disable --now flanneld.service || true
  fi
  if [[ -x $PREFIX/bin/flanneld ]]; then
    set -a; [[ -r /etc/default/flanneld ]] && . /etc/default/flanneld; set +a
    "$PREFIX/bin/flanneld" --cleanup --release-lease-on-shutdown=$RELEASE
  fi
fi

# Files first, then the directories install.sh created, deepest first, if empty.
mapfile -t entries <"$MANIFEST"
for e in "${entries[@]}"; do
  [[ $e == */ ]] || rm -f "$DESTDIR$e"
done
for ((i=${#entries[@]}-1; i>=0; i--)); do
  e=${entries[i]}
  [[ $e == */ ]] && rmdir "$DESTDIR${e%/}" 2>/dev/null || true
done
if [[ -z $DESTDIR && -d /run/systemd/system ]]; then systemctl daemon-reload; fi
echo "uninstall.sh: removed"
