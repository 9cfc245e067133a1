#!/bin/sh
# Starts cmd in the role CM_ROLE (head or compute), configured by CM_* variables.
set -eu
# Homes on the shared volume, created by whichever node starts first.
for user in alice bob; do
    if [ ! -d "/home/$user" ]; then
        mkdir -p "/home/$user" && chown "$user:$user" "/home/$user" && chmod 750 "/home/$user"
    fi
done
if [ "${CM_ROLE:-}" = compute ] && [ -z "${CM_NODE_ID:-}" ]; then
    # compute-N, N from the container's name (PROJECT_compute_N, or PROJECT-compute-N with
    # compose v2), which Docker's DNS gives for the container's address: the same name across
    # restarts and re-creations, where the host name (the container id) is not.
    ip="$(hostname -i | cut -d' ' -f1)"
    for _ in 1 2 3 4 5; do
        n="$(dig +short -x "$ip" @127.0.0.11 | sed -n 's/^.*[_-]compute[_-]\([0-9][0-9]*\)\..*$/\1/p' | head -1)"
        [ -n "$n" ] && break
        sleep 0.2
    done
    CM_NODE_ID="${n:+compute-$n}"
    CM_NODE_ID="${CM_NODE_ID:-$(hostname)}"
    export CM_NODE_ID
fi
if [ "${CM_ROLE:-}" = compute ]; then
    # For the healthcheck, which runs apart from this shell.
    mkdir -p /run/cm && echo "$CM_NODE_ID" > /run/cm/node-id
fi
if [ "${CM_ROLE:-}" = compute ] && [ -z "${CM_ADVERTISE:-}" ]; then
    # Container names are not resolvable by other containers: the head reaches us by address.
    CM_ADVERTISE="$(hostname -i | cut -d' ' -f1):${CM_COMPUTE_PORT:-5002}"
    export CM_ADVERTISE
fi
# The cluster's two keys, made once by whichever node starts first, on a volume every node
# mounts and only root can read: the cluster key that the daemons seal their messages with, and
# the MUNGE key with which each node's munged vouches for the users of tools over TCP. Each is
# written aside and linked into place, so nodes starting together all end up with the same one.
keys=/etc/cm/keys
mkdir -p "$keys" && chmod 700 "$keys"
cmd keygen "$keys/cm.key" >/dev/null
export CM_CLUSTER_KEY="$keys/cm.key"
if [ ! -e "$keys/munge.key" ]; then
    mungekey --create --keyfile="$keys/munge.key.$$"
    ln "$keys/munge.key.$$" "$keys/munge.key" 2>/dev/null || true
    rm -f "$keys/munge.key.$$"
fi
install -m 600 -o munge -g munge "$keys/munge.key" /etc/munge/munge.key
mkdir -p /run/munge && chown munge:munge /run/munge
# munged detaches; the compose init reaps it.
runuser -u munge -- /usr/sbin/munged
# On the head node the tools reach the head over its Unix socket (/run/cm/head.sock, where they
# look first); elsewhere over TCP (CM_HEAD) with a MUNGE credential.
if [ "$#" -gt 0 ]; then
    exec "$@"
fi
exec cmd
