#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit tests, and the root integration tests
# (network namespaces, real etcd, real kernel). Run as root on Debian 12:
#   scripts/test.sh
# Integration tests create their own namespaces and remove them, also on failure.
# Under CI=true a test that lacks root or a tool fails instead of skipping.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh --if-missing
[[ $EUID -eq 0 ]] || { echo "test.sh: the integration tests need root" >&2; exit 1; }
export RUST_BACKTRACE=1
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
# The multi-node tests exec the flanneld and flannel binaries: build them first.
cargo build --workspace --bins
cargo test --workspace --no-fail-fast
# The plugin as installed (scripts/build-cni.sh: static, size-optimised, musl when its target
# is there) must pass the same CNI integration tests as the debug build above.
CNI_BIN=$PWD/$(scripts/build-cni.sh)
echo "test.sh: CNI integration tests against the installable plugin $CNI_BIN"
# ... and so must the crash injection (SIGKILL anywhere in ADD and DEL, then DEL).
FLANNEL_CNI_BIN=$CNI_BIN cargo test -p cni-plugin --test cni_netns --test crash
# Without root, the unit tests (reconcile, ADD rollback, DEL teardown on the recording kernel)
# still run and every root test says it skipped: the suite once more as `nobody`, CI unset.
scripts/test-unprivileged.sh
