#!/usr/bin/env bash
# Installs pgpitr without NixOS: builds the release binaries and installs them into
# PREFIX/bin (default /usr/local), with each binary's --help text in
# PREFIX/share/doc/pgpitr/. Installs a Rust toolchain first when there is none.
#
#   bash scripts/install.sh [PREFIX]
#
# PostgreSQL itself is not installed here (pgpitr works with the server you run); the demo
# script installs it for its throw-away cluster.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
prefix="${1:-/usr/local}"
tools=(pgpitr archive-wal restore-wal basebackup healthcheck offsite-sync provision-dbs walprune)
ensure_rust
cargo build --release --workspace --bins
mkdir -p "$prefix/bin" "$prefix/share/doc/pgpitr"
for t in "${tools[@]}"; do
  install -m 0755 "target/release/$t" "$prefix/bin/$t"
  "$prefix/bin/$t" --help >"$prefix/share/doc/pgpitr/$t.txt"
done
for sub in status restore verify demo "zfs ensure" "config check"; do
  # shellcheck disable=SC2086
  "$prefix/bin/pgpitr" $sub --help >"$prefix/share/doc/pgpitr/pgpitr-${sub// /-}.txt"
done
echo "installed ${tools[*]} into $prefix/bin; --help texts in $prefix/share/doc/pgpitr"
case ":$PATH:" in
  *":$prefix/bin:"*) ;;
  *) echo "note: $prefix/bin is not on PATH; add it (export PATH=\"$prefix/bin:\$PATH\")" ;;
esac
