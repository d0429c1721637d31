#!/usr/bin/env bash
# Builds (or reuses) the Debian 12 root file system the rig boots with systemd-nspawn.
# Usage: rootfs.sh  -> prints the path of the ready root file system.
# Cached under $PGPITR_RIG_CACHE (default /var/cache/pgpitr-rig), keyed by ROOTFS_VERSION:
# change the package list, bump the version, and the next run rebuilds it from scratch.
set -euo pipefail

ROOTFS_VERSION="3"
# Inside the container: systemd as PID 1, PostgreSQL 15 standing in for nixpkgs' build,
# restic for the off-site job, zfs-fuse for the ZFS unit. node_exporter runs on the host.
INCLUDE="systemd,systemd-sysv,dbus,procps,acl"
PACKAGES="postgresql-15 restic zfs-fuse"
MIRROR="${PGPITR_RIG_MIRROR:-http://deb.debian.org/debian}"

cache="${PGPITR_RIG_CACHE:-/var/cache/pgpitr-rig}"
root="$cache/rootfs-v$ROOTFS_VERSION"

need() {
  command -v "$1" >/dev/null 2>&1 || {
    echo "rig: \`$1\` is missing. Install it with: apt-get install -y debootstrap systemd-container" >&2
    exit 1
  }
}
need debootstrap
need systemd-nspawn

if [ -f "$root/.pgpitr-rig-ready" ]; then
  echo "$root"
  exit 0
fi

mkdir -p "$cache"
# Only one builder at a time; others wait and reuse the result.
exec 9>"$cache/.lock"
flock 9
if [ -f "$root/.pgpitr-rig-ready" ]; then echo "$root"; exit 0; fi
# Older versions of the root file system (and a half-built one) go.
for d in "$cache"/rootfs-v*; do
  [ -e "$d" ] && rm -rf "$d"
done
start=$(date +%s)
echo "rig: building the root file system in $root (debootstrap bookworm, about 2-3 minutes)" >&2
debootstrap --variant=minbase --include="$INCLUDE" bookworm "$root.tmp" "$MIRROR" >&2
mkdir -p "$root.tmp/etc/postgresql-common/createcluster.d"
echo "create_main_cluster = false" >"$root.tmp/etc/postgresql-common/createcluster.d/pgpitr-rig.conf"
# A throw-away root: dpkg need not fsync every file it unpacks.
mkdir -p "$root.tmp/etc/dpkg/dpkg.cfg.d"
echo force-unsafe-io >"$root.tmp/etc/dpkg/dpkg.cfg.d/pgpitr-rig-unsafe-io"
# No daemons started by package scripts inside the chroot.
printf '#!/bin/sh\nexit 101\n' >"$root.tmp/usr/sbin/policy-rc.d"
chmod +x "$root.tmp/usr/sbin/policy-rc.d"
chroot "$root.tmp" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $PACKAGES >&2
rm -f "$root.tmp/usr/sbin/policy-rc.d"
chroot "$root.tmp" apt-get clean
# Debian's own units that the module's units replace: never started at boot.
chroot "$root.tmp" systemctl mask postgresql.service zfs-fuse.service >&2 || true
touch "$root.tmp/.pgpitr-rig-ready"
mv "$root.tmp" "$root"
echo "rig: root file system built in $(( $(date +%s) - start )) s" >&2
echo "$root"
