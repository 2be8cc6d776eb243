#!/bin/bash
# Builds the precheck test image that does real work, with no registry:
#
#     tests/standin/klayout/build.sh [BASE_TAG [TAG]]
#
# 1. unless the engine has BASE_TAG: a Debian bookworm root filesystem with python3 and klayout
#    (and what they depend on; no apt, no documentation, no GPU drivers) made by mmdebstrap from
#    Debian's package mirror, streamed into `docker import` as BASE_TAG;
# 2. `docker build` of this folder's Dockerfile FROM BASE_TAG: precheck.py, its KLayout scripts
#    and DRC decks in /workspace, as TAG.
#
# The tests (tests/it/klayout_image.rs) run it with tags named by a hash of this folder; by hand
# the tags default to `...:manual`. MIRROR (default http://deb.debian.org/debian) picks the
# Debian mirror.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
base=${1:-precheck-server-test/precheck-klayout-base:manual}
tag=${2:-precheck-server-test/precheck-klayout:manual}
mirror=${MIRROR:-http://deb.debian.org/debian}

if ! docker image inspect "$base" >/dev/null 2>&1; then
    if ! command -v mmdebstrap >/dev/null 2>&1; then
        echo "build.sh: the KLayout test image is built with mmdebstrap: apt-get install mmdebstrap" >&2
        exit 1
    fi
    # Imported under a temporary tag first: a build cut short must not leave BASE_TAG behind.
    partial="$base-partial-$$"
    trap 'docker image rm "$partial" >/dev/null 2>&1 || true' EXIT
    # The DRI drivers and the LLVM they alone load are a third of the packages' size and serve
    # no offscreen KLayout. mmdebstrap runs as root or, unprivileged, in a user namespace.
    mmdebstrap --quiet --variant=essential --include=python3,klayout \
        --dpkgopt='path-exclude=/usr/share/doc/*' \
        --dpkgopt='path-exclude=/usr/share/man/*' \
        --dpkgopt='path-exclude=/usr/share/info/*' \
        --dpkgopt='path-exclude=/usr/share/locale/*' \
        --dpkgopt='path-exclude=/usr/lib/*-linux-gnu/dri/*' \
        --dpkgopt='path-exclude=/usr/lib/*-linux-gnu/libLLVM*' \
        --dpkgopt='path-exclude=/usr/lib/*-linux-gnu/libz3*' \
        bookworm - "$mirror" </dev/null |
        docker import \
            --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
            --change 'ENV LANG=C.UTF-8' \
            --change 'ENV QT_QPA_PLATFORM=offscreen' \
            --change 'ENV PDK_ROOT=/workspace/gf180mcu' \
            --change 'ENV PDK=gf180mcuD' \
            --change 'WORKDIR /workspace' \
            --change 'LABEL precheck-server.test=klayout-base' \
            - "$partial" >/dev/null
    docker tag "$partial" "$base"
fi

DOCKER_BUILDKIT=0 docker build -q --build-arg "BASE=$base" -t "$tag" "$here" >/dev/null
echo "$tag"
