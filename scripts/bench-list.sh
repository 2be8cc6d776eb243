#!/usr/bin/env bash
# Measures the precheck list at scale (docs/benchmarks.md, "Run lists at scale"): a release
# server with one slot, taken by a stand-in run that sleeps, and QUEUED prechecks queued behind
# it (made through the API, as clients make them); then the median of GETS requests of
#   GET /api/v1/prechecks                     (the first page, 100 runs, with queue positions)
#   GET /api/v1/prechecks?limit=1000          (the largest page)
#   GET /api/v1/prechecks?before=<middle>     (a page in the middle, by its cursor)
#   GET /api/v1/prechecks?status=queued&before=<newest>
#   GET /health                               (while 16 clients poll the first page)
# Usage: scripts/bench-list.sh [QUEUED] [GETS]   (default 10000 and 50). Needs Docker, curl, jq,
# busybox-static (for the stand-in image, built as scripts/standin.sh does).
set -euo pipefail
cd "$(dirname "$0")/.."
QUEUED="${1:-10000}"
GETS="${2:-50}"
cargo build --release --quiet --bins --examples
bin=$PWD/target/release/precheck-server
work=$(mktemp -d)
image=precheck-server-bench/standin:list
pid=
pollers=()
# A stopped server leaves its containers running: remove the sleeper's.
trap 'for p in "${pollers[@]}"; do kill "$p" 2>/dev/null || true; done; kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; docker ps -aq --filter name=precheck-bench-list- | xargs -r docker rm -f >/dev/null; docker rmi -f "$image" >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

scripts/standin.sh "$image" >/dev/null
cat >"$work/config.toml" <<TOML
[server]
port = 0
storage_path = "data"
max_concurrent = 1
[docker]
image = "$image"
container_prefix = "precheck-bench-list-"
TOML
"$bin" serve --config "$work/config.toml" >"$work/out" 2>"$work/err" &
pid=$!
until grep -q 'listening on' "$work/out" 2>/dev/null; do
  kill -0 "$pid" 2>/dev/null || { echo "the server did not start:" >&2; cat "$work/err" >&2; exit 1; }
  sleep 0.05
done
server=$(grep -o 'http://[0-9.:]*' "$work/out")
until curl -sf "$server/health" | grep -q '"ready"'; do sleep 0.2; done

top=chip_sleep3600
./target/release/examples/layout --top "$top" "$work/$top.gds"
upload=$(curl -sf -F "file=@$work/$top.gds" "$server/api/v1/uploads" | jq -r .Id)
body="{\"upload_id\":\"$upload\",\"top_cell\":\"$top\"}"
curl -sf -X POST "$server/api/v1/prechecks" -H 'Content-Type: application/json' -d "$body" >/dev/null
# Many creates through one curl, over one keep-alive connection.
quoted=$(jq -Rn --arg b "$body" '$b')
entry=$(printf 'url = "%s/api/v1/prechecks"\nrequest = "POST"\nheader = "Content-Type: application/json"\ndata = %s\noutput = "/dev/null"' "$server" "$quoted")
for i in $(seq "$QUEUED"); do
  [ "$i" -gt 1 ] && echo next
  echo "$entry"
done >"$work/creates.curl"
t0=$(date +%s%N)
curl -sf --config "$work/creates.curl"
echo "$QUEUED prechecks queued through the API in $(( ($(date +%s%N) - t0) / 1000000 )) ms"
length=$(curl -sf "$server/api/v1/queue" | jq -c .)
echo "queue: $length"

# GETS timed GETs of one URL: median and worst, in ms, and the answer's size.
measure() {
  local what=$1 url=$2
  : >"$work/times"
  for _ in $(seq "$GETS"); do
    curl -sf -o "$work/body" -w '%{time_total}\n' "$url" >>"$work/times"
  done
  local med max size
  med=$(awk '{print $1 * 1000}' "$work/times" | median)
  max=$(awk '{print $1 * 1000}' "$work/times" | sort -n | tail -1)
  size=$(wc -c <"$work/body")
  printf '%-52s median %6.2f ms, worst %7.2f ms, %8d bytes\n' "$what" "$med" "$max" "$size"
}
newest=$(curl -sf "$server/api/v1/prechecks?limit=1" | jq -r '.[0].Id')
middle=$(curl -sf "$server/api/v1/prechecks?limit=1000" -D "$work/headers" -o /dev/null; grep -i '^x-next-before:' "$work/headers" | tr -d '\r' | awk '{print $2}')
echo "== $QUEUED queued + 1 running, $GETS GETs each =="
measure "first page (limit 100)" "$server/api/v1/prechecks"
measure "limit=1000" "$server/api/v1/prechecks?limit=1000"
measure "before=<the 1000th> (limit 100)" "$server/api/v1/prechecks?before=$middle"
measure "status=queued&before=<newest> (limit 100)" "$server/api/v1/prechecks?status=queued&before=$newest"
measure "one queued run (GET /api/v1/prechecks/{id})" "$server/api/v1/prechecks/$newest"
measure "/health, idle" "$server/health"
for _ in $(seq 16); do
  ( while :; do curl -sf -o /dev/null "$server/api/v1/prechecks" || true; done ) &
  pollers+=($!)
done
sleep 1
measure "/health while 16 clients poll the first page" "$server/health"
measure "first page while 16 clients poll it" "$server/api/v1/prechecks"
