# Sourced by the scripts/bench-*.sh benchmarks: runs from the repository root, as root,
# with the test dependencies installed, and defines shared_bench.
cd "$(dirname "${BASH_SOURCE[0]}")/.."
[[ $EUID -eq 0 ]] || { echo "run as root" >&2; exit 1; }
scripts/deps.sh --if-missing
SHARED_DIR=${SHARED_DIR:-$(cd .. && pwd)/shared}

# shared_bench NAME: the path of $SHARED_DIR/bench/NAME; exits naming it if it is missing.
shared_bench() {
  local path=$SHARED_DIR/bench/$1
  [[ -f $path ]] || { echo "missing $path (set SHARED_DIR)" >&2; exit 1; }
  echo "$path"
}
