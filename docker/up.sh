#!/usr/bin/env bash
# One command from a fresh clone to a running simulated cluster: a database, a head node and N
# compute nodes (default 4) sharing /home, as docker-compose.yml describes.
#   sudo docker/up.sh [N]
# CM_BIN_DIR: use the cm binaries there instead of building them; CM_COMPOSE: the compose
# command (default: `docker compose` where installed, else `docker-compose`);
# COMPOSE_PROJECT_NAME: as for docker-compose.
# It builds what is missing and remembers its choices in .env, so that later docker-compose
# commands (up, restart, --scale, down) need nothing more:
#   - with cargo on this machine, the node image around binaries built here, and the base and
#     database images from Debian's packages and PyPI (docker/prepare-local.sh): no image
#     registry needed;
#   - else, with an image registry, the node image from source (docker/Dockerfile) and mongo:7.
set -euo pipefail
cd "$(dirname "$0")/.."

nodes="${1:-4}"
case "$nodes" in
    '' | *[!0-9]*) echo "usage: docker/up.sh [NUMBER_OF_COMPUTE_NODES]" >&2; exit 2 ;;
esac
say() { printf '[%3d s] %s\n' "$SECONDS" "$*"; }
fail() { printf '[%3d s] %s\n' "$SECONDS" "$*" >&2; exit 1; }

docker info >/dev/null 2>&1 || fail "no Docker engine answers 'docker info' (is it running, and may you use it?)"
if [ -n "${CM_COMPOSE:-}" ]; then
    read -r -a compose <<< "$CM_COMPOSE"
elif docker compose version >/dev/null 2>&1; then
    compose=(docker compose)
elif docker-compose version >/dev/null 2>&1; then
    compose=(docker-compose)
else
    fail "neither 'docker compose' nor 'docker-compose' is installed (Debian: apt install docker-compose)"
fi

if command -v cargo >/dev/null 2>&1; then
    bin_dir="${CM_BIN_DIR:-}"
    if [ -z "$bin_dir" ]; then
        say "compiling cm (cargo build --release; minutes the first time)..."
        cargo build --release --bins --quiet
        bin_dir="${CARGO_TARGET_DIR:-target}/release"
    fi
    # Progress lines, without the Docker engine's notice that its legacy builder is deprecated.
    docker/prepare-local.sh "$bin_dir" 2>&1 | grep --line-buffered -v -e DEPRECATED -e buildx -e '^ *$' \
        | while IFS= read -r line; do say "$line"; done
    mongo_image=cm-secantusdb:local
elif timeout 60 docker pull -q mongo:7 >/dev/null 2>&1; then
    say "no cargo here: building the node image from source (docker/Dockerfile; about 10 minutes)..."
    mongo_image=mongo:7
    CM_MONGO_IMAGE="$mongo_image" "${compose[@]}" build
else
    fail "cannot build: no cargo on this machine (https://rustup.rs) and no image registry to pull from"
fi

# Later docker-compose commands read their variables from here.
printf 'CM_MONGO_IMAGE=%s\n' "$mongo_image" > .env
say "wrote .env (CM_MONGO_IMAGE=$mongo_image)"

say "starting the database, the head and $nodes compute nodes..."
log="$(mktemp)"
"${compose[@]}" up -d --scale compute="$nodes" > "$log" 2>&1 || { cat "$log" >&2; fail "${compose[*]} up failed"; }
rm -f "$log"
up=0
for _ in $(seq 1 120); do
    up="$("${compose[@]}" exec -T head sh -c 'cminfo --json | python3 -c "import json, sys
print(sum(n[\"role\"] == \"Compute\" and n[\"health\"][\"health\"] == \"Up\" for n in json.load(sys.stdin)[\"nodes\"]))"' \
        2>/dev/null || echo 0)"
    [ "$up" -ge "$nodes" ] && break
    sleep 1
done
[ "$up" -ge "$nodes" ] || fail "only $up of $nodes compute nodes came up; see: ${compose[*]} logs"
say "ready: $nodes compute nodes up"
cat <<EOF

  ${compose[*]} exec head su - alice     a shell on the head node as alice (or bob)
  cminfo; cmrun -n 2 -p 2 --wait hostname    then, as alice
  cp -r /usr/local/share/doc/cm/examples .   example jobs, MPI ones too
  ${compose[*]} down -v                  stop and remove everything, volumes too
EOF
