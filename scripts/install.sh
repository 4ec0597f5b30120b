#!/usr/bin/env bash
# Installs flannel-rs on this node (as root), or into a staging tree for packaging:
#
#   scripts/install.sh                      # build if needed, install, enable + start flanneld
#   DESTDIR=/tmp/pkg scripts/install.sh     # stage only: nothing is started or enabled
#   PREFIX=/usr scripts/install.sh          # flanneld in /usr/bin (default /usr/local)
#
# What goes where (under $DESTDIR):
#   $PREFIX/bin/flanneld                       the daemon
#   $PREFIX/bin/flannelctl                     the lease table tool
#   /opt/cni/bin/flannel                       the CNI plugin (static; scripts/build-cni.sh)
#   /etc/systemd/system/flanneld.service       hardened Type=notify unit (ExecStart = $PREFIX/bin/flanneld)
#   /etc/default/flanneld                      FLANNELD_* settings, mode 0600 (may hold the etcd password)
#   /etc/cni/net.d/10-flannel.conflist         flannel's stock CNI config
#   $PREFIX/share/doc/flannel-rs/README.md
#   $PREFIX/share/flannel-rs/installed         what this script created (scripts/uninstall.sh reads it)
#
# Idempotent: binaries, unit and docs are replaced; /etc/default/flanneld and the conflist are
# never overwritten once present (they hold the operator's settings). Prebuilt binaries can be
# given as FLANNELD_BIN=... CNI_BIN=... (no cargo run then).
set -euo pipefail
cd "$(dirname "$0")/.."
DESTDIR=${DESTDIR:-}
PREFIX=${PREFIX:-/usr/local}
[[ $PREFIX == /* ]] || { echo "install.sh: PREFIX must be absolute: $PREFIX" >&2; exit 1; }
if [[ -z $DESTDIR && $EUID -ne 0 ]]; then
  echo "install.sh: installing on this node needs root (or set DESTDIR to stage)" >&2
  exit 1
fi

FLANNELD_BIN=${FLANNELD_BIN:-}
CNI_BIN=${CNI_BIN:-}
if [[ -z $FLANNELD_BIN ]]; then
  cargo build --release -p flanneld --bins >&2
  FLANNELD_BIN=target/release/flanneld
fi
FLANNELCTL_BIN=${FLANNELCTL_BIN:-$(dirname "$FLANNELD_BIN")/flannelctl}
if [[ -z $CNI_BIN ]]; then
  CNI_BIN=$(scripts/build-cni.sh)
fi
for f in "$FLANNELD_BIN" "$FLANNELCTL_BIN" "$CNI_BIN"; do
  [[ -x $f ]] || { echo "install.sh: $f is not an executable" >&2; exit 1; }
done

MANIFEST_DIR=$PREFIX/share/flannel-rs
MANIFEST=$DESTDIR$MANIFEST_DIR/installed
declare -a CREATED=()
# Remember what we create (directories too), so that uninstall removes exactly that.
remember() { CREATED+=("$1"); }
mkdirs() {
  local d=$1 missing=() p
  p=$d
  while [[ ! -d $DESTDIR$p ]]; do missing=("$p" "${missing[@]}"); p=$(dirname "$p"); done
  for p in "${missing[@]}"; do install -d -m 0755 "$DESTDIR$p"; remember "$p/"; done
}
put() { # put MODE SRC DEST [keep]
  local mode=$1 src=$2 dest=$3 keep=${4:-}
  mkdirs "$(dirname "$dest")"
  if [[ -e $DESTDIR$dest && -n $keep ]]; then
    cmp -s "$src" "$DESTDIR$dest" || echo "install.sh: keeping your $DESTDIR$dest (differs from the shipped one)" >&2
    return
  fi
  [[ -e $DESTDIR$dest ]] || remember "$dest"
  install -m "$mode" "$src" "$DESTDIR$dest.new.$$"
  mv -f "$DESTDIR$dest.new.$$" "$DESTDIR$dest"
}

unit=$(mktemp); trap 'rm -f "$unit"' EXIT
sed "s#/usr/local/bin/flanneld#$PREFIX/bin/flanneld#g; s#/usr/local/share/doc#$PREFIX/share/doc#g" \
  examples/systemd/flanneld.service >"$unit"

put 0755 "$FLANNELD_BIN" "$PREFIX/bin/flanneld"
put 0755 "$FLANNELCTL_BIN" "$PREFIX/bin/flannelctl"
put 0755 "$CNI_BIN" /opt/cni/bin/flannel
put 0644 "$unit" /etc/systemd/system/flanneld.service
put 0600 examples/config/flanneld.env /etc/default/flanneld keep
put 0644 examples/config/10-flannel.conflist /etc/cni/net.d/10-flannel.conflist keep
put 0644 README.md "$PREFIX/share/doc/flannel-rs/README.md"
# An existing settings file keeps its content but not a mode that exposes a password.
chmod 0600 "$DESTDIR/etc/default/flanneld"

mkdirs "$MANIFEST_DIR"
{ [[ -f $MANIFEST ]] && cat "$MANIFEST"; printf '%s\n' "${CREATED[@]}"; } | awk 'NF && !seen[$0]++' >"$MANIFEST.new"
[[ -f $MANIFEST ]] || echo "$MANIFEST_DIR/installed" >>"$MANIFEST.new"
mv -f "$MANIFEST.new" "$MANIFEST"

if [[ -z $DESTDIR ]]; then
  if [[ -d /run/systemd/system ]]; then
    systemctl daemon-reload
    systemctl enable --now flanneld.service
    echo "install.sh: flanneld enabled and started; edit /etc/default/flanneld, then: systemctl restart flanneld"
  else
    echo "install.sh: installed; systemd is not running here, start $PREFIX/bin/flanneld yourself"
  fi
else
  echo "install.sh: staged under $DESTDIR (nothing started)"
fi
