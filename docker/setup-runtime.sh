#!/bin/sh
# Runtime setup shared by both Dockerfiles: the demo users, a config, man pages and completions.
# The binaries need only the C and C++ runtimes, which every Debian base has.
set -eu
# Demo users with the same uids on every node, as a cluster's directory service would give;
# their homes live on the shared /home volume and are created by the entrypoint.
groupadd --gid 1001 alice && useradd --uid 1001 --gid 1001 --no-create-home --home-dir /home/alice --shell /bin/bash alice
groupadd --gid 1002 bob && useradd --uid 1002 --gid 1002 --no-create-home --home-dir /home/bob --shell /bin/bash bob
mkdir -p /etc/cm /var/lib/cm
# Only /home is on a volume every node mounts: a job submitted from elsewhere gets a warning.
cat > /etc/cm/config.yaml <<'EOF'
workdirs:
  shared: [/home]
  unshared: warn
EOF
# Man pages and bash completions of the tools, made from the tools' own definitions.
mkdir -p /usr/local/share/man/man1 /usr/share/bash-completion/completions
for tool in cmrun cminfo cmkill cmacct cmctl; do
    CM_GENERATE=man "$tool" > "/usr/local/share/man/man1/$tool.1"
    CM_GENERATE=bash "$tool" > "/usr/share/bash-completion/completions/$tool"
done
chmod 755 /usr/local/lib/cm/entrypoint.sh
rm -rf /var/lib/apt/lists/* /var/cache/apt/*
