#!/usr/bin/env bash
# Measures what docs/benchmarks.md reports, on this machine, with the release build:
#   1. the server's idle RSS, its peak RSS during a 1 GiB upload, and the upload's MB/s next to
#      `cat FILE > DEST && sync` of the same file onto the same disk (the integration test that
#      checks the upload prints them);
#   2. the median time from POST /api/v1/prechecks to /wait returning, for a no-op stand-in
#      run, next to a plain `docker run --rm --network none` of the same image doing the same
#      work, and 20 no-op runs created at once at 2 slots against the ideal (10 plain runs);
#   3. how long a restart takes to be serving again with 20 queued and 2 running runs, after
#      SIGTERM and after kill -9 (the running containers are reattached, not restarted);
#   4. 40 no-op runs through one engine of 2 slots and through two engines of 2 slots each (a
#      second dockerd of the test's own; the integration test that checks it prints the times).
# Usage: scripts/bench.sh [RUNS]   (default 20 runs each). Needs Docker, curl, jq, busybox-static.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS="${1:-20}"

echo "== 1 GiB upload (release build) =="
cargo test --release --quiet --test it a_1_gib_upload -- --nocapture 2>&1 | grep -E '^1 GiB upload:'
echo "(that client is reqwest in the test process; the goal is measured with curl below)"

echo "== create -> /wait, no-op stand-in run, median of $RUNS =="
cargo build --release --quiet --bins --examples
# The stand-in precheck image the test above built (tagged by its Dockerfile's hash; newest first).
IMAGE=$(docker images --format '{{.Repository}}:{{.Tag}}' precheck-server-test/precheck | grep -m1 ':standin')
work=$(mktemp -d)
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
ms() { echo $(( ($(date +%s%N) - $1) / 1000000 )); }
# A stopped server leaves its containers running (they are reattached at its next start): remove them.
trap 'kill "$pid" 2>/dev/null || true; docker ps -aq --filter name=precheck-bench- | xargs -r docker rm -f >/dev/null; rm -rf "$work"' EXIT
cat >"$work/config.toml" <<TOML
[server]
port = 0
storage_path = "data"
max_concurrent = 2
[docker]
image = "$IMAGE"
container_prefix = "precheck-bench-"
TOML
# Starts the server; once it answers the API, sets pid, SERVER and started_ms (how long that took).
start_server() {
  local t0
  t0=$(date +%s%N)
  : >"$work/out"
  ./target/release/precheck-server serve --config "$work/config.toml" >"$work/out" 2>>"$work/err" &
  pid=$!
  until grep -q 'listening on' "$work/out" 2>/dev/null; do
    kill -0 "$pid" 2>/dev/null || { echo "the server did not start:" >&2; cat "$work/err" >&2; exit 1; }
    sleep 0.005
  done
  SERVER=$(grep -o 'http://[0-9.:]*' "$work/out")
  until curl -sf "$SERVER/api/v1/queue" >/dev/null; do sleep 0.005; done
  started_ms=$(ms "$t0")
}
start_server
echo "idle RSS of a fresh release server: $(awk '/VmRSS/ {print $2, $3}' /proc/$pid/status)"
# A good 1x1 die, as the tests make it (layout::write::Die).
./target/release/examples/layout "$work/chip_top.gds"

: >"$work/server.ms"
for _ in $(seq "$RUNS"); do
  upload=$(curl -sf -F "file=@$work/chip_top.gds" "$SERVER/api/v1/uploads" | jq -r .Id)
  t0=$(date +%s%N)
  run=$(curl -sf -X POST "$SERVER/api/v1/prechecks" -H 'Content-Type: application/json' \
    -d "{\"upload_id\":\"$upload\",\"top_cell\":\"chip_top\"}" | jq -r .Id)
  code=$(curl -sf -X POST "$SERVER/api/v1/prechecks/$run/wait?timeout=60" | jq -r .StatusCode)
  ms "$t0" >>"$work/server.ms"
  [ "$code" = 0 ] || { echo "run $run ended with $code" >&2; exit 1; }
done

: >"$work/docker.ms"
for _ in $(seq "$RUNS"); do
  t0=$(date +%s%N)
  docker run --rm --network none --cap-drop ALL --security-opt no-new-privileges "$IMAGE" \
    python3 precheck.py --input /workspace/precheck.py --output /tmp/design.gds --top chip_top \
    --id FFFFFFFF --slot 1x1 --dir /tmp/work >/dev/null
  ms "$t0" >>"$work/docker.ms"
done
server_ms=$(median <"$work/server.ms")
docker_ms=$(median <"$work/docker.ms")
echo "precheck-server create -> /wait: median $server_ms ms"
echo "plain docker run:                median $docker_ms ms"
echo "create -> /wait against docker run: $(awk -v a="$server_ms" -v b="$docker_ms" 'BEGIN {printf "%.2fx", a / b}') (goal: 1.15x or less)"

echo "== 1 GiB upload with curl against cat > DEST && sync, on the storage folder's disk =="
./target/release/examples/layout --size 1073741824 "$work/big.gds"
t0=$(date +%s%N)
big=$(curl -sf -F "file=@$work/big.gds" "$SERVER/api/v1/uploads" | jq -r .Id)
upload_ms=$(ms "$t0")
t0=$(date +%s%N)
cat "$work/big.gds" >"$work/data/tmp/cat.gds" && sync
cat_ms=$(ms "$t0")
rm -f "$work/data/tmp/cat.gds"
curl -sf -o /dev/null -X DELETE "$SERVER/api/v1/uploads/$big"
size=$(stat -c %s "$work/big.gds")
rm -f "$work/big.gds"
echo "1 GiB upload (sha256, layout read, fsync): $((size / 1000 / upload_ms)) MB/s; cat > DEST && sync: $((size / 1000 / cat_ms)) MB/s: $(awk -v a="$cat_ms" -v b="$upload_ms" 'BEGIN {printf "%.2fx", a / b}') (goal: 0.8x or more)"

echo "== 20 no-op runs created at once, 2 slots =="
upload=$(curl -sf -F "file=@$work/chip_top.gds" "$SERVER/api/v1/uploads" | jq -r .Id)
t0=$(date +%s%N)
batch=""
for _ in $(seq 20); do
  batch="$batch $(curl -sf -X POST "$SERVER/api/v1/prechecks" -H 'Content-Type: application/json' \
    -d "{\"upload_id\":\"$upload\",\"top_cell\":\"chip_top\"}" | jq -r .Id)"
done
for run in $batch; do
  code=$(curl -sf -X POST "$SERVER/api/v1/prechecks/$run/wait?timeout=120" | jq -r .StatusCode)
  [ "$code" = 0 ] || { echo "run $run ended with $code" >&2; exit 1; }
done
batch_ms=$(ms "$t0")
# The same 20 as plain docker runs, two at a time, for what two slots can do on this machine.
t0=$(date +%s%N)
pairs=""
for _ in 1 2; do
  (for _ in $(seq 10); do
    docker run --rm --network none --cap-drop ALL --security-opt no-new-privileges "$IMAGE" \
      python3 precheck.py --input /workspace/precheck.py --output /tmp/design.gds --top chip_top \
      --id FFFFFFFF --slot 1x1 --dir /tmp/work >/dev/null
  done) &
  pairs="$pairs $!"
done
# shellcheck disable=SC2086
wait $pairs
pair_ms=$(ms "$t0")
echo "20 no-op runs at 2 slots: $batch_ms ms; ideal (10 x plain docker run) $((10 * ${docker_ms%.*})) ms: $(awk -v a="$batch_ms" -v b="$docker_ms" 'BEGIN {printf "%.2fx", a / (10 * b)}') (goal: 1.2x or less)"
echo "20 plain docker runs, two at a time: $pair_ms ms (the server's 20: $(awk -v a="$batch_ms" -v b="$pair_ms" 'BEGIN {printf "%.2fx", a / b}') of it)"

echo "== restart with 20 queued and 2 running runs =="
create() {
  curl -sf -X POST "$SERVER/api/v1/prechecks" -H 'Content-Type: application/json' \
    -d "{\"upload_id\":\"$upload\",\"top_cell\":\"$1\"}" | jq -r .Id
}
# The stand-in's behaviour follows the top cell: a layout whose top cell is chip_sleep600.
./target/release/examples/layout "$work/chip_sleep600.gds"
upload=$(curl -sf -F "file=@$work/chip_sleep600.gds" "$SERVER/api/v1/uploads" | jq -r .Id)
runs=$(create chip_sleep600; create chip_sleep600)
upload=$(curl -sf -F "file=@$work/chip_top.gds" "$SERVER/api/v1/uploads" | jq -r .Id)
for _ in $(seq 20); do runs="$runs $(create chip_top)"; done
until [ "$(curl -sf "$SERVER/api/v1/queue" | jq .running)" = 2 ]; do sleep 0.1; done
for signal in TERM KILL; do
  t0=$(date +%s%N)
  kill -"$signal" "$pid"
  wait "$pid" 2>/dev/null || true
  stopped=$(ms "$t0")
  start_server
  queue=$(curl -sf "$SERVER/api/v1/queue")
  echo "SIG$signal: stopped in $stopped ms; serving again $started_ms ms after start ($queue)"
done
# Cancel everything so no container is left behind.
for run in $runs; do curl -s -o /dev/null -X DELETE "$SERVER/api/v1/prechecks/$run"; done

echo "== 40 no-op runs on 1 engine x 2 slots and on 2 engines x 2 slots (release build) =="
cargo test --release --quiet --test it forty_no_op_runs -- --nocapture 2>&1 | grep -E '^40 no-op runs:'
