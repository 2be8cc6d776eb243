#!/usr/bin/env bash
# Builds the stand-in precheck image, to try the server without the real gf180mcu image:
#   scripts/standin.sh [TAG]      (default precheck-server/standin:latest)
# then set `[docker] image = "TAG"` in the config. The stand-in is tests/standin/precheck: a
# static busybox (Debian's busybox-static) and a shell script that takes the real precheck.py's
# command line, prints a precheck-like log and passes any layout whose top cell has no "fail" in
# its name. Nothing is pulled.
set -euo pipefail
cd "$(dirname "$0")/.."
tag=${1:-precheck-server/standin:latest}
[ -x /bin/busybox ] || { echo "standin.sh: needs a static busybox at /bin/busybox: apt-get install busybox-static" >&2; exit 1; }
context=$(mktemp -d)
trap 'rm -rf "$context"' EXIT
cp tests/standin/precheck/Dockerfile tests/standin/precheck/python3 "$context/"
cp /bin/busybox "$context/busybox"
chmod 0755 "$context/python3" "$context/busybox"
DOCKER_BUILDKIT=0 docker build -q -t "$tag" "$context" >/dev/null
echo "built $tag: set [docker] image = \"$tag\" in the server's config"
