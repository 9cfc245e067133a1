#!/usr/bin/env bash
# Prepares every image the simulated cluster needs on a machine with a Docker engine but no
# image registry, from Debian's packages, PyPI and this repository:
#   cm-base:bookworm-mpich Debian bookworm with MUNGE, MPICH and a C compiler, from
#                          debootstrap, imported into Docker (built once)
#   cm-secantusdb:local    a MongoDB-compatible database (SecantusDB) on that base (built once)
#   cm-node:latest         the cm node image around binaries built on this host (rebuilt each run)
# Usage: docker/prepare-local.sh [BIN_DIR]
#   BIN_DIR holds cmd, cmstep, cmrun, cminfo, cmkill already built (default: builds them with
#   `cargo build --release`). Then: CM_MONGO_IMAGE=cm-secantusdb:local docker-compose up -d
set -euo pipefail
cd "$(dirname "$0")/.."

base=cm-base:bookworm-mpich
if ! docker image inspect "$base" >/dev/null 2>&1; then
    command -v debootstrap >/dev/null || {
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap
    }
    rootfs="$(mktemp -d)"
    # The image's / (mktemp makes it 0700): package scripts that run as other users cross it.
    chmod 755 "$rootfs"
    trap 'rm -rf "$rootfs"' EXIT
    echo "building $base with debootstrap (a few minutes)..."
    # MUNGE: each node runs munged, so that users' tools anywhere in the cluster prove who runs them.
    # MPICH and gcc: users build and run MPI programs (mpicc, then cmrun; cm serves PMI itself).
    # automake is named because debootstrap cannot pick it for libltdl-dev's alternatives.
    debootstrap --variant=minbase --include=munge,mpich,libmpich-dev,gcc,libc6-dev,automake bookworm "$rootfs" \
        http://deb.debian.org/debian >/dev/null
    # Runtime only: no documentation, manuals, translations or package lists.
    rm -rf "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* \
        "$rootfs"/usr/share/locale/* "$rootfs"/var/cache/apt/* "$rootfs"/var/lib/apt/lists/*
    tar -C "$rootfs" -c . | docker import - "$base" >/dev/null
fi

if ! docker image inspect cm-secantusdb:local >/dev/null 2>&1; then
    echo "building cm-secantusdb:local..."
    # Wheels come from the host's pip (the image's Python is bookworm's 3.11, as here).
    rm -rf docker/wheels && mkdir -p docker/wheels
    python3 -m pip wheel --quiet --disable-pip-version-check --wheel-dir docker/wheels "SecantusDB==0.7.0b3"
    docker build -q --build-arg BASE_IMAGE="$base" -t cm-secantusdb:local -f docker/Dockerfile.secantusdb docker >/dev/null
    rm -rf docker/wheels
fi

bin_dir="${1:-}"
if [ -z "$bin_dir" ]; then
    cargo build --release --bins
    bin_dir="${CARGO_TARGET_DIR:-target}/release"
fi
rm -rf docker/bin && mkdir -p docker/bin
for tool in cmd cmstep cmrun cminfo cmkill cmacct cmctl; do
    cp "$bin_dir/$tool" docker/bin/
done
strip docker/bin/* 2>/dev/null || true
echo "building cm-node:latest..."
docker build -q --build-arg BASE_IMAGE="$base" -t cm-node:latest -f docker/Dockerfile.prebuilt . >/dev/null
rm -rf docker/bin
echo "ready: CM_MONGO_IMAGE=cm-secantusdb:local docker-compose up -d --scale compute=4"
