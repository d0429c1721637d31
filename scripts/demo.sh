#!/usr/bin/env bash
# Installs what is missing (PostgreSQL, a Rust toolchain), builds and installs pgpitr with
# scripts/install.sh into a prefix (default target/pgpitr, no root needed; DEMO_PREFIX to
# change it) and runs the demo: a DELETE without WHERE, undone by a point-in-time restore.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
install_postgres
prefix="${DEMO_PREFIX:-$PWD/target/pgpitr}"
bash scripts/install.sh "$prefix"
exec "$prefix/bin/pgpitr" demo "$@"
