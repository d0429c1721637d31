#!/usr/bin/env bash
# provision-dbs: 200 databases (default) from scratch, then the no-op run afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${DATABASES:-200}
. bench/lib.sh
cargo build --release -q -p provision-dbs
bench_cluster provision
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
