#!/usr/bin/env bash
# provision-dbs: 200 databases (default) from scratch, then the no-op run afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${DATABASES:-200}
BIN=/usr/lib/postgresql/15/bin
cargo build --release -q -p provision-dbs
as_pg() { if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
work=$(mktemp -d /tmp/pgpitr-bench-provision.XXXXXX)
chmod 755 "$work"
cleanup() { as_pg "$BIN/pg_ctl" stop -D "$work/data" -m immediate >/dev/null 2>&1 || true; rm -rf "$work"; }
trap cleanup EXIT
mkdir -p "$work/sock"
[ "$(id -u)" -eq 0 ] && chown -R postgres:postgres "$work"
as_pg "$BIN/initdb" -D "$work/data" -U postgres --auth=trust >/dev/null
printf "listen_addresses = ''\nunix_socket_directories = '%s'\n" "$work/sock" >> "$work/data/postgresql.conf"
as_pg "$BIN/pg_ctl" start -D "$work/data" -l "$work/server.log" -w >/dev/null
{
  echo 'instance = "bench"'
  echo '[postgres]'; echo "socket_dir = \"$work/sock\""
  echo '[archive]'; echo "dir = \"$work/archive\""
  echo '[backup]'; echo "dir = \"$work/backups\""
  echo '[provision]'; echo "state_dir = \"$work/state\""
  for i in $(seq 1 "$N"); do
    echo "[databases.db$i]"; echo "owner = \"owner$i\""; echo 'extensions = ["pg_trgm"]'
    echo "[databases.db$i.permissions]"; echo "reader$i = [\"SELECT\"]"
  done
} > "$work/cfg.toml"
t0=$(date +%s.%N); ./target/release/provision-dbs --config "$work/cfg.toml" > /dev/null; t1=$(date +%s.%N)
t2=$(date +%s.%N); ./target/release/provision-dbs --config "$work/cfg.toml" > /dev/null; t3=$(date +%s.%N)
printf '%-40s %10s\n' "run" "seconds"
printf '%-40s %10.3f\n' "$N databases from scratch" "$(echo "$t1 - $t0" | bc)"
printf '%-40s %10.3f\n' "no-op run afterwards" "$(echo "$t3 - $t2" | bc)"
