#!/usr/bin/env bash
# Archive benchmark: the same real WAL segments (pgbench on PostgreSQL) archived one process
# per segment, as archive_command does, by
#   archive-wal (zstd 3), archive-wal (zstd 3 + age), archive-wal (zstd 3 + metrics),
#   pgbackrest archive-push (zst 3)
# and prints segments per second, compression ratio and peak resident memory side by side.
# Run as root (servers run as `postgres`) or as a user who can run initdb.
set -euo pipefail
cd "$(dirname "$0")/.."
SEGMENTS=${SEGMENTS:-40}
. bench/lib.sh
for t in "$BIN/initdb" pgbackrest age-keygen /usr/bin/time; do
  command -v "$t" >/dev/null || { echo "missing $t: apt-get install -y postgresql-15 pgbackrest age time" >&2; exit 1; }
done
cargo build --release -q -p archive-wal
bench_cluster archive "max_wal_size = '8GB'
wal_keep_size = '4GB'
checkpoint_timeout = '1h'
fsync = off"
mkdir -p "$work/segments" "$work/bin"
cp target/release/archive-wal "$work/bin/"
[ "$(id -u)" -eq 0 ] && chown -R postgres:postgres "$work"
echo "generating WAL with pgbench ..." >&2
psql() { as_pg /usr/bin/psql -h "$work/sock" -U postgres -qAt "$@"; }
start=$(psql -c "SELECT pg_walfile_name(pg_current_wal_lsn())")
# pgbench's initial load writes WAL fast; a short OLTP run adds the usual record mix.
as_pg "$BIN/pgbench" -h "$work/sock" -U postgres -i -s "$(( SEGMENTS + 10 ))" -q postgres >/dev/null 2>&1
as_pg "$BIN/pgbench" -h "$work/sock" -U postgres -T 20 -c 2 postgres >/dev/null 2>&1
psql -c "SELECT pg_switch_wal()" >/dev/null
ls "$work/data/pg_wal" | grep -E '^[0-9A-F]{24}$' | sort | awk -v s="$start" '$0 >= s' | head -n "$SEGMENTS" > "$work/list"
while read -r f; do cp "$work/data/pg_wal/$f" "$work/segments/"; done < "$work/list"
raw=$(( $(wc -l < "$work/list") * 16777216 ))

age-keygen -o "$work/key.txt" 2>/dev/null
recipient=$(age-keygen -y "$work/key.txt")
mkdir -p "$work/metrics"
for v in zstd age metrics; do
  mkdir -p "$work/arch-$v"
  {
    echo "instance = \"bench\""
    echo "[archive]"; echo "dir = \"$work/arch-$v\""; echo "level = 3"
    echo "[backup]"; echo "dir = \"$work/backups\""
    [ $v = age ] && { echo "[encryption]"; echo "recipients = [\"$recipient\"]"; }
    [ $v = metrics ] && { echo "[metrics]"; echo "textfile_dir = \"$work/metrics\""; }
  } > "$work/$v.toml"
done
cat > "$work/pgbackrest.conf" <<CONF
[global]
repo1-path=$work/pgbr
compress-type=zst
compress-level=3
archive-async=n
log-level-console=warn
log-level-file=off
lock-path=$work/pgbr-lock
spool-path=$work/pgbr-spool
[bench]
pg1-path=$work/data
pg1-socket-path=$work/sock
pg1-user=postgres
CONF
[ "$(id -u)" -eq 0 ] && chown -R postgres:postgres "$work"
as_pg pgbackrest --config="$work/pgbackrest.conf" --stanza=bench stanza-create >/dev/null

# run VARIANT: archives every segment, one process each; prints secs and peak RSS (KiB).
run() {
  local v=$1 peak=0 t0 t1 rss
  sync  # no variant pays for the previous one's writeback
  t0=$(date +%s.%N)
  while read -r f; do
    if [ "$v" = pgbackrest ]; then
      rss=$(cd "$work/data" && as_pg /usr/bin/time -f %M pgbackrest --config="$work/pgbackrest.conf" --stanza=bench archive-push "$work/segments/$f" 2>&1 >/dev/null | tail -1)
    else
      rss=$(cd "$work/data" && as_pg /usr/bin/time -f %M "$work/bin/archive-wal" --config "$work/$v.toml" "$work/segments/$f" "$f" 2>&1 >/dev/null | tail -1)
    fi
    [ "$rss" -gt "$peak" ] && peak=$rss
  done < "$work/list"
  t1=$(date +%s.%N)
  echo "$(echo "$t1 - $t0" | bc) $peak"
}
stored() { du -sb --apparent-size "$1" | cut -f1; }
count=$(wc -l < "$work/list")
ROUNDS=${ROUNDS:-3}
variants="zstd metrics age pgbackrest"
declare -A best peakrss
# Rounds interleave the variants (in a rotating order) and each keeps its best time: fsync latency on shared or
# virtual disks varies from one second to the next, and this way every variant sees the same.
for round in $(seq 1 "$ROUNDS"); do
  # Rotate the order each round so no variant always follows the same one's writeback.
  order=$(echo $variants | tr ' ' '\n' | awk -v r="$round" '{a[NR]=$0} END {for (i=0;i<NR;i++) print a[(i+r-1)%NR+1]}')
  for v in $order; do
    if [ "$v" = pgbackrest ]; then
      find "$work/pgbr/archive" -mindepth 3 -maxdepth 3 -type d -name '0000000*' -exec rm -rf {} +
    else
      rm -rf "$work/arch-$v/wal"
    fi
    read -r secs peak < <(run $v)
    if [ -z "${best[$v]:-}" ] || [ "$(echo "$secs < ${best[$v]}" | bc)" = 1 ]; then best[$v]=$secs; fi
    [ "$peak" -gt "${peakrss[$v]:-0}" ] && peakrss[$v]=$peak
  done
done
printf '%-34s %9s %9s %9s %12s\n' "tool ($count segments of 16 MiB)" "seconds" "seg/s" "ratio" "peak RSS MiB"
for v in $variants; do
  case $v in
    pgbackrest) dir="$work/pgbr/archive"; label="pgbackrest archive-push zst:3" ;;
    zstd) dir="$work/arch-$v"; label="archive-wal zstd:3" ;;
    age) dir="$work/arch-$v"; label="archive-wal zstd:3 + age" ;;
    metrics) dir="$work/arch-$v"; label="archive-wal zstd:3 + metrics" ;;
  esac
  printf '%-34s %9.2f %9.1f %9.2f %12.1f\n' "$label" "${best[$v]}" "$(echo "$count / ${best[$v]}" | bc -l)" "$(echo "$raw / $(stored "$dir")" | bc -l)" "$(echo "${peakrss[$v]} / 1024" | bc -l)"
done
echo "(best of $ROUNDS rounds, variants interleaved in rotating order; one process per segment, as archive_command runs)"
