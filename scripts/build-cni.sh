#!/usr/bin/env bash
# Builds the installable CNI plugin and prints its path on stdout (cargo's output goes to
# stderr). Install the printed file as /opt/cni/bin/flannel.
#
# A CNI plugin is exec'd for every verb, so its start-up is part of every ADD and DEL:
# * `cni` profile (release, LTO, stripped, optimised for size; see Cargo.toml);
# * statically linked, which saves the dynamic loader (~0.4 ms), and not position-independent,
#   which saves applying ~3,700 relocations (~20 copy-on-write page faults and an mprotect);
# * against musl when the x86_64-unknown-linux-musl target is installed (scripts/deps.sh adds
#   it through rustup). glibc's start-up runs ~35 CPUID instructions (CPU features and cache
#   geometry for its string functions), and on a virtual machine each one traps to the
#   hypervisor: ~6 us apiece on this kind of VM, about 40% of the plugin's own CPU time for
#   VERSION. musl runs none. Measured here: VERSION x500 task-clock 0.47 -> 0.22 ms, 45 -> 27
#   page faults; ADD and DEL medians ~0.3 ms lower each (60 pods, binaries alternating pod by
#   pod, 6 runs).
#
#   CNI_LIBC=auto (default: musl if its target is installed or can be added through
#   scripts/deps.sh --musl-target, else glibc with a warning)
#   CNI_LIBC=musl (fail without the musl target) | CNI_LIBC=gnu
# Output: target/x86_64-unknown-linux-musl/cni/flannel (musl) or target/cni/flannel (glibc).
set -euo pipefail
cd "$(dirname "$0")/.."
MUSL=x86_64-unknown-linux-musl
CNI_LIBC=${CNI_LIBC:-auto}
case $CNI_LIBC in
  auto) if scripts/deps.sh --musl-target; then CNI_LIBC=musl; else
          echo "build-cni.sh: WARNING: no Rust target $MUSL; building against glibc, whose" \
               "start-up costs ~0.3 ms more per plugin call on a VM" >&2
          CNI_LIBC=gnu
        fi ;;
  musl) scripts/deps.sh --musl-target || { echo "build-cni.sh: CNI_LIBC=musl but there is no Rust target $MUSL" >&2; exit 1; } ;;
  gnu) ;;
  *) echo "build-cni.sh: CNI_LIBC must be auto, musl or gnu, got '$CNI_LIBC'" >&2; exit 1 ;;
esac
FLAGS=(-C target-feature=+crt-static -C relocation-model=static)
if [[ $CNI_LIBC == musl ]]; then
  cargo rustc --profile cni -p cni-plugin --bin flannel --target "$MUSL" -- "${FLAGS[@]}" >&2
  echo "target/$MUSL/cni/flannel"
else
  cargo rustc --profile cni -p cni-plugin --bin flannel -- "${FLAGS[@]}" >&2
  echo target/cni/flannel
fi
