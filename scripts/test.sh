#!/usr/bin/env bash
# Installs everything the tests need (Debian/Ubuntu packages), then checks formatting and
# lints and runs the whole test suite against the real components.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
install_postgres
# age and zstd: interoperability checks (objects readable with the stock CLIs).
apt_install age zstd ca-certificates nix-bin
# node_exporter scrapes the textfile metrics for real; promtool (package prometheus) checks
# the documented alert rules.
apt_install prometheus-node-exporter prometheus
# restic: offsite copies go to real repositories on local disk.
apt_install restic
# ZFS: a real (old) ZFS through FUSE; the tests start its daemon and use a pool on a sparse file.
apt_install zfs-fuse
# issue 12 (preseed): syncoid from the sanoid package receives a replica between two datasets.
apt_install sanoid
# preseed's syncoid from a replica over ssh: the test runs its own sshd on 127.0.0.1.
apt_install openssh-server openssh-client
ensure_rust
cargo fmt --all -- --check
cargo build --workspace --bins
cargo clippy --workspace --all-targets -q -- -D warnings
cargo test --workspace --no-fail-fast
# --- issue 10: the NixOS module's units under a real systemd -------------------------------
# Renders the module's units, tmpfiles rules and configs from its plain-Nix core, boots them in
# a Debian 12 systemd-nspawn container (root file system cached in /var/cache/pgpitr-rig, about
# 2-3 minutes to build when missing) with the debug binaries built above, and runs the
# lifecycle in nixos-tests/systemd/scenarios/. About 3 minutes with the cache.
apt_install debootstrap systemd-container
bash nixos-tests/systemd/run.sh
# Issue 11: the integration gate and the restore lifecycle also run on PostgreSQL 16, from
# the `pgserver` package on PyPI (a full PostgreSQL 16 build in pgserver/pginstall, its
# libpq in pgserver.libs beside it). pip installs it into a venv; the two folders are copied
# to /opt/pgpitr-pg16 keeping their relative layout (the binaries find libpq through
# $ORIGIN/../../../pgserver.libs) where the postgres user can read them.
PG16_BIN=/opt/pgpitr-pg16/pgserver/pginstall/bin
if [ ! -x "$PG16_BIN/postgres" ]; then
  apt_install python3-venv python3-pip
  python3 -m venv /opt/pgpitr-pg16-venv
  /opt/pgpitr-pg16-venv/bin/pip install -q pgserver
  sp=$(/opt/pgpitr-pg16-venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  mkdir -p /opt/pgpitr-pg16/pgserver
  cp -a "$sp/pgserver/pginstall" /opt/pgpitr-pg16/pgserver/
  cp -a "$sp/pgserver.libs" /opt/pgpitr-pg16/
  chmod -R a+rX /opt/pgpitr-pg16
fi
PGPITR_PG_BIN="$PG16_BIN" PGPITR_PG_MAJOR=16 \
  cargo test -p pgpitr-integration --test targets --test lifecycle
