#!/usr/bin/env bash
# Measures the precheck test image that does real work (tests/standin/klayout, docs/benchmarks.md):
#   1. a cold build: the Debian base (mmdebstrap of python3 and klayout, docker import) and the
#      precheck layer on top, with nothing cached;
#   2. a good 1x1 die's precheck through the server (`precheck-server submit`, upload to result),
#      and a dirty one's (DRC errors: exit 1), RUNS times each, median.
# Usage: scripts/bench-klayout.sh [RUNS]   (default 3). Needs Docker, mmdebstrap; as root.
# BENCH_PROFILE=dev uses the debug build the tests made (what `.ci/run` does, to stay within CI's
# time: the container's work is the same, the server's share of the time is small either way).
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS="${1:-3}"
profile=${BENCH_PROFILE:-release}
cargo build --profile "$profile" --quiet --bins --examples
out=target/$([ "$profile" = dev ] && echo debug || echo "$profile")
bin=$PWD/$out/precheck-server
work=$(mktemp -d)
base=precheck-server-bench/klayout-base:cold
image=precheck-server-bench/klayout:cold
trap 'kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; docker rmi -f "$image" "$base" >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
pid=
ms() { echo $(( ($(date +%s%N) - $1) / 1000000 )); }
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

echo "== cold build of the KLayout precheck image =="
docker rmi -f "$image" "$base" >/dev/null 2>&1 || true
t0=$(date +%s%N)
tests/standin/klayout/build.sh "$base" "$image" >/dev/null 2>"$work/build.err" || { cat "$work/build.err" >&2; exit 1; }
echo "cold build (base and precheck layer): $(ms "$t0") ms; image $(docker image inspect --format '{{.Size}}' "$image" | awk '{printf "%.0f MB", $1/1e6}')"

echo "== precheck of a good and a dirty 1x1 die through the server, median of $RUNS =="
cat >"$work/config.toml" <<TOML
[server]
port = 0
storage_path = "data"
[docker]
image = "$image"
container_prefix = "precheck-bench-"
TOML
"$bin" serve --config "$work/config.toml" >"$work/out" 2>"$work/err" &
pid=$!
until grep -q 'listening on' "$work/out" 2>/dev/null; do
  kill -0 "$pid" 2>/dev/null || { echo "the server did not start:" >&2; cat "$work/err" >&2; exit 1; }
  sleep 0.05
done
server=$(grep -o 'http://[0-9.:]*' "$work/out")
until curl -sf "$server/health" | grep -q '"ready"'; do sleep 0.2; done
"$out/examples/layout" "$work/chip_top.gds"
"$out/examples/layout" --defect drc-space "$work/chip_dirty.gds"
for die in chip_top chip_dirty; do
  : >"$work/$die.ms"
  : >"$work/$die.codes"
  for _ in $(seq "$RUNS"); do
    t0=$(date +%s%N)
    code=0
    (cd "$work" && CI=1 "$bin" submit --server "$server" --output out.gds --debug debug.tar.gz \
      "$die.gds" >/dev/null 2>&1) || code=$?
    ms "$t0" >>"$work/$die.ms"
    echo "$code" >>"$work/$die.codes"
  done
  echo "$die.gds, upload to result: median $(median <"$work/$die.ms") ms; exit codes $(sort -u "$work/$die.codes" | tr '\n' ' ')"
done
