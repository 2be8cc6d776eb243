#!/usr/bin/env bash
# Measures layout inspection (docs/benchmarks.md): `precheck-server inspect` on a generated
# 1 GiB GDSII file and on its gzip, next to `sha256sum` and `gzip -dc > /dev/null` of the same
# files, with the inspector's peak memory (GNU time's maximum resident set size). With a second
# argument, a git revision, the inspector built from that revision is measured too, in the same
# run on the same files (e.g. the one before the reader kept geometry, issue 15).
# Usage: scripts/bench-layout.sh [SIZE_MIB [REVISION]]   (default 1024). Needs python3, gzip, bc,
# /usr/bin/time, and git for REVISION.
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE_MIB="${1:-1024}"
BEFORE="${2:-}"
cargo build --release --quiet
work=$(mktemp -d)
trap 'rm -rf "$work" "$work-before-target"; [ -z "$BEFORE" ] || git worktree remove --force "$work-before" 2>/dev/null || true' EXIT
before_bin=""
if [ -n "$BEFORE" ]; then
  git worktree add --quiet --detach "$work-before" "$BEFORE"
  (cd "$work-before" && CARGO_TARGET_DIR="$work-before-target" cargo build --release --quiet)
  before_bin="$work-before-target/release/precheck-server"
fi

# A library of 1 000 cells, each placing the previous one, with boxes up to the size asked
# (each cell holds whole blocks of 8 192 boxes, so the file is at least 512 MiB).
python3 - "$work/big.gds" "$SIZE_MIB" <<'PY'
import random, struct, sys
path, mib = sys.argv[1], int(sys.argv[2])
def rec(kind, dtype, data=b""):
    if len(data) % 2:
        data += b"\0"
    return struct.pack(">HBB", len(data) + 4, kind, dtype) + data
def real8(v):
    e = 64
    while v >= 1: v /= 16; e += 1
    while v < 1 / 16: v *= 16; e -= 1
    return bytes([e]) + int(round(v * 2**56)).to_bytes(7, "big")
def box(x, y, w, h):
    return rec(0x08, 0) + rec(0x0D, 2, struct.pack(">h", 1)) + rec(0x0E, 2, struct.pack(">h", 0)) \
        + rec(0x10, 3, struct.pack(">10i", x, y, x + w, y, x + w, y + h, x, y + h, x, y)) + rec(0x11, 0)
# 8 192 boxes at pseudo-random places: a block larger than gzip's window, so the file
# compresses like real geometry (a few times), not like one record repeated.
rng = random.Random(1)
block = b"".join(box(rng.randrange(10**7), rng.randrange(10**7), rng.randrange(1, 5000), rng.randrange(1, 5000))
                 for _ in range(8192))
cells = 1000
per_cell = max(1, (mib << 20) // cells // len(block))
with open(path, "wb") as f:
    f.write(rec(0x00, 2, struct.pack(">h", 600)) + rec(0x01, 2, bytes(24)) + rec(0x02, 6, b"BENCH")
            + rec(0x03, 5, real8(1e-3) + real8(1e-9)))
    for i in range(cells):
        f.write(rec(0x05, 2, bytes(24)) + rec(0x06, 6, b"cell_%d" % i))
        if i:
            f.write(rec(0x0A, 0) + rec(0x12, 6, b"cell_%d" % (i - 1)) + rec(0x10, 3, bytes(8)) + rec(0x11, 0))
        f.write(block * per_cell + rec(0x07, 0))
    f.write(rec(0x04, 0))
PY
gzip -c "$work/big.gds" >"$work/big.gds.gz"
mb() { echo "scale=1; $(stat -c %s "$1") / 1000000" | bc; }
# Runs a command, prints "<what>: <MB/s> MB/s" for `file`, and the peak RSS when asked.
measure() {
  local what=$1 file=$2 size; shift 2
  size=$(stat -c %s "$file")
  local status=0
  /usr/bin/time -f '%e %M' -o "$work/time" "$@" >/dev/null || status=$?
  # `inspect` exits 1 for a layout the precheck would refuse (this one is no die): its answer.
  if [ "$status" -ne 0 ] && ! { [ "$status" -eq 1 ] && [ "${2:-}" = inspect ]; }; then
    echo "$what: exit $status" >&2
    exit 1
  fi
  # GNU time puts "Command exited with non-zero status N" before its own line then.
  read -r seconds kib < <(tail -n 1 "$work/time")
  seconds=$(echo "if ($seconds < 0.01) 0.01 else $seconds" | bc -l)
  printf '%-34s %8.0f MB/s   (%s s, peak RSS %s KiB)\n' "$what" \
    "$(echo "$size / 1000000 / $seconds" | bc -l)" "$seconds" "$kib"
}
echo "GDSII: $(mb "$work/big.gds") MB; gzip: $(mb "$work/big.gds.gz") MB"
for _ in 1 2; do cat "$work/big.gds" "$work/big.gds.gz" >/dev/null; done  # warm the page cache
measure "inspect big.gds" "$work/big.gds" ./target/release/precheck-server inspect "$work/big.gds"
measure "sha256sum big.gds" "$work/big.gds" sha256sum "$work/big.gds"
measure "inspect big.gds.gz (of the .gds)" "$work/big.gds" ./target/release/precheck-server inspect "$work/big.gds.gz"
if [ -n "$before_bin" ]; then
  measure "$BEFORE: inspect big.gds" "$work/big.gds" "$before_bin" inspect "$work/big.gds"
  measure "$BEFORE: inspect big.gds.gz (of the .gds)" "$work/big.gds" "$before_bin" inspect "$work/big.gds.gz"
fi
measure "gzip -dc big.gds.gz (of the .gds)" "$work/big.gds" sh -c "gzip -dc '$work/big.gds.gz' >/dev/null"
measure "sha256sum big.gds.gz" "$work/big.gds.gz" sha256sum "$work/big.gds.gz"
./target/release/precheck-server inspect "$work/big.gds" | sed -n 's/^\(Cells\|Top cells\|Die\):/  &/p' || true
