#!/usr/bin/env bash
# Prepares every image the simulated cluster needs on a machine with a Docker engine but no
# image registry, from Debian's packages, PyPI and this repository:
#   cm-base:trixie-HASH    Debian trixie with MUNGE, MPICH, a compiler and a class's tools,
#                          from debootstrap, imported into Docker (built once per package list)
#   cm-secantusdb:local    a MongoDB-compatible database (SecantusDB) on that base (built once)
#   cm-node:latest         the cm node image around binaries built on this host (rebuilt each run)
# Usage: docker/prepare-local.sh [BIN_DIR]
#   BIN_DIR holds cmd, cmstep, cmrun, cminfo, cmkill already built (default: builds them with
#   `cargo build --release`). Then: CM_MONGO_IMAGE=cm-secantusdb:local docker-compose up -d
set -euo pipefail
cd "$(dirname "$0")/.."

# What the nodes carry besides cm: MUNGE (each node runs munged, so users' tools anywhere prove
# who runs them), MPICH and a compiler (users build and run MPI programs; cm serves PMI), what a
# class writes and runs programs with, and dig, with which a container finds its name. automake
# is named because debootstrap cannot pick it among libmpich-dev's alternatives. Trixie, not
# bookworm: bookworm's MPICH 4.0 can hang in MPI_Finalize across hosts (its UCX teardown waits on
# peers already blocked in the last PMI barrier; MPICH removed that barrier in 4.1), trixie's is 4.2.
packages=munge,mpich,libmpich-dev,gcc,libc6-dev,automake,make,python3,procps,nano,less,man-db,bind9-dnsutils
# The tag names the package list, so a changed list makes a new base.
base="cm-base:trixie-$(printf '%s' "$packages" | sha256sum | cut -c1-8)"
if ! docker image inspect "$base" >/dev/null 2>&1; then
    if [ "$(id -u)" != 0 ]; then
        echo "prepare-local.sh builds the base image with debootstrap, which needs root: run it with sudo" >&2
        exit 1
    fi
    command -v debootstrap >/dev/null || {
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap
    }
    rootfs="$(mktemp -d)"
    # The image's / (mktemp makes it 0700): package scripts that run as other users cross it.
    chmod 755 "$rootfs"
    trap 'rm -rf "$rootfs"' EXIT
    echo "building $base with debootstrap (a few minutes, once)..."
    debootstrap --variant=minbase --include="$packages" trixie "$rootfs" http://deb.debian.org/debian >/dev/null
    # No documentation besides manual pages, no translations, no package lists.
    rm -rf "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/info/* \
        "$rootfs"/usr/share/locale/* "$rootfs"/var/cache/apt/* "$rootfs"/var/lib/apt/lists/*
    tar -C "$rootfs" -c . | docker import - "$base" >/dev/null
fi

if ! docker image inspect cm-secantusdb:local >/dev/null 2>&1; then
    echo "building cm-secantusdb:local..."
    # Wheels come from the host's pip, for the base image's Python.
    python="$(docker run --rm "$base" python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
    rm -rf docker/wheels && mkdir -p docker/wheels
    platforms=()
    for p in manylinux2014 manylinux_2_17 manylinux_2_24 manylinux_2_27 manylinux_2_28; do
        platforms+=(--platform "${p}_x86_64")
    done
    python3 -m pip download --quiet --disable-pip-version-check --dest docker/wheels --only-binary=:all: \
        --python-version "$python" "${platforms[@]}" "SecantusDB==0.7.0b3"
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
echo "images ready (docker/up.sh starts the cluster with them)"
