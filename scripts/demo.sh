#!/usr/bin/env bash
# Installs what is missing (PostgreSQL, a Rust toolchain), builds pgpitr and runs the demo:
# a DELETE without WHERE, undone by a point-in-time restore.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
install_postgres
ensure_rust
cargo build --release --workspace --bins
exec ./target/release/pgpitr demo "$@"
