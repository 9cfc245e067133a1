#!/bin/sh
# Starts cmd in the role CM_ROLE (head or compute), configured by CM_* variables.
set -eu
# Homes on the shared volume, created by whichever node starts first.
for user in alice bob; do
    if [ ! -d "/home/$user" ]; then
        mkdir -p "/home/$user" && chown "$user:$user" "/home/$user" && chmod 750 "/home/$user"
    fi
done
if [ "${CM_ROLE:-}" = compute ] && [ -z "${CM_ADVERTISE:-}" ]; then
    # Container names are not resolvable by other containers: the head reaches us by address.
    CM_ADVERTISE="$(hostname -i | cut -d' ' -f1):${CM_COMPUTE_PORT:-5002}"
    export CM_ADVERTISE
fi
if [ "${CM_ROLE:-}" = head ] && [ ! -e /etc/cm/config.yaml ]; then
    # The head node's tools (users' shells, the healthcheck) reach the head over its Unix socket,
    # which spares each tool run TCP's connection costs; compute nodes keep TCP (CM_HEAD).
    printf 'head_socket: /run/cm/head.sock\nhead_address: ipc:///run/cm/head.sock\n' > /etc/cm/config.yaml
fi
if [ "$#" -gt 0 ]; then
    exec "$@"
fi
exec cmd
