#!/usr/bin/env bash
# Incidents benchmark: `pgpitr incidents` over ~1 GiB of archived WAL (SEGMENTS=64 segments of
# pgbench traffic, bulk UPDATEs and one DELETE without WHERE, archived by archive-wal with
# zstd 3), against pg_waldump alone on the same segments (already decompressed, one
# process, output thrown away), both measured in the same run. Prints seconds, MiB/s and the
# load average, since the machine may be shared. Run as root (servers run as `postgres`).
set -euo pipefail
LOAD0=$(cut -d" " -f1-3 /proc/loadavg)
cd "$(dirname "$0")/.."
SEGMENTS=${SEGMENTS:-64}
. bench/lib.sh
for t in "$BIN/initdb" "$BIN/pgbench" "$BIN/pg_waldump" zstd /usr/bin/time; do
  command -v "$t" >/dev/null || { echo "missing $t: apt-get install -y postgresql-15 zstd time" >&2; exit 1; }
done
cargo build --release -q -p pgpitr -p archive-wal -p restore-wal -p basebackup
work_cfg() { cat <<CFG
instance = "bench"
[postgres]
bin_dir = "$BIN"
data_dir = "$work/data"
socket_dir = "$work/sock"
port = 5432
[archive]
dir = "$work/archive"
[backup]
dir = "$work/backups"
[pgpitr]
bin_dir = "$work/bin"
CFG
}
bench_cluster incidents "max_wal_size = '4GB'
checkpoint_timeout = '1h'
fsync = off
archive_mode = on
archive_command = '/bin/false'"
mkdir -p "$work/bin" "$work/archive" "$work/backups" "$work/segments"
cp target/release/{archive-wal,restore-wal,basebackup,pgpitr} "$work/bin/"
work_cfg > "$work/pgpitr.toml"
[ "$(id -u)" -eq 0 ] && chown -R postgres:postgres "$work"
psql() { as_pg /usr/bin/psql -h "$work/sock" -U postgres -qAt "$@"; }
psql -c "ALTER SYSTEM SET archive_command = '\"$work/bin/archive-wal\" --config \"$work/pgpitr.toml\" %p %f'" >/dev/null
psql -c "SELECT pg_reload_conf()" >/dev/null
echo "generating ~$SEGMENTS segments of WAL ..." >&2
as_pg "$BIN/pgbench" -h "$work/sock" -U postgres -i -s 10 -q postgres >/dev/null 2>&1
psql -c "CREATE TABLE orders AS SELECT g AS id, 'item ' || g AS item FROM generate_series(1, 200000) g" >/dev/null
as_pg "$work/bin/basebackup" --config "$work/pgpitr.toml" >/dev/null
start=$(psql -c "SELECT pg_current_wal_lsn()")
want=$(( SEGMENTS * 16777216 ))
written() { psql -c "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '$start')::bigint"; }
deleted=no
while [ "$(written)" -lt "$want" ]; do
  as_pg "$BIN/pgbench" -h "$work/sock" -U postgres -n -c 2 -T 5 postgres >/dev/null 2>&1
  psql -c "UPDATE pgbench_accounts SET filler = md5(aid::text || now()::text) WHERE aid % 3 = 0" >/dev/null
  if [ $deleted = no ] && [ "$(written)" -gt $(( want / 2 )) ]; then
    psql -c "DELETE FROM orders" >/dev/null; deleted=yes
  fi
done
last=$(psql -c "SELECT pg_walfile_name(pg_current_wal_lsn())")
psql -c "SELECT pg_switch_wal()" >/dev/null
until [ "$(psql -c "SELECT coalesce(last_archived_wal, '') >= '$last' FROM pg_stat_archiver")" = t ]; do sleep 1; done

# pgpitr incidents, end to end (decode + pg_waldump in parallel + accounting).
/usr/bin/time -f '%e %M' -o "$work/t.inc" "$work/bin/pgpitr" --config "$work/pgpitr.toml" incidents --json > "$work/inc.json"
scanned=$(python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(d['scanned']['segments'], d['scanned']['jobs'], d['scanned']['records'], d['incidents'][0]['kind'] if d['incidents'] else 'none', d['incidents'][0]['rows_deleted'] if d['incidents'] else 0)" "$work/inc.json")
read -r nseg jobs records top toprows <<< "$scanned"
# The same segments, decompressed once, then pg_waldump alone (one process).
first=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['scanned']['first_segment'])" "$work/inc.json")
t0=$(date +%s.%N)
find "$work/archive/wal" -type f -name '0*' | sort | while read -r o; do
  n=$(basename "$o"); n=${n%%-*}
  [[ "$n" < "$first" ]] && continue
  zstd -qdc "$o" > "$work/segments/$n"
done
t1=$(date +%s.%N)
/usr/bin/time -f '%e %M' -o "$work/t.wd" "$BIN/pg_waldump" -p "$work/segments" -s "$(python3 -c "
import sys; n=sys.argv[1]; seg=int(n[8:16],16)*256+int(n[16:],16); x=seg*16777216; print(f'{x>>32:X}/{x&0xffffffff:X}')" "$first")" > /dev/null 2>&1 || true
# /usr/bin/time prints "Command exited with non-zero status" first when pg_waldump stops at the end of the WAL
read -r inc_s inc_kb < <(tail -n 1 "$work/t.inc"); read -r wd_s wd_kb < <(tail -n 1 "$work/t.wd")
mib=$(( nseg * 16 ))
printf 'load average before/after: %s / %s (nproc %s)\n' "$LOAD0" "$(cut -d' ' -f1-3 /proc/loadavg)" "$(nproc)" 
printf '%-58s %8s %8s %10s\n' "run ($nseg segments = $mib MiB of WAL, $records records)" seconds "MiB/s" "peak RSS"
printf '%-58s %8.2f %8.1f %7d MiB\n' "pgpitr incidents ($jobs jobs, incl. zstd decode)" "$inc_s" "$(echo "$mib / $inc_s" | bc -l)" $(( inc_kb / 1024 ))
printf '%-58s %8.2f %8.1f %10s\n' "zstd -d of the same objects (one process)" "$(echo "$t1 - $t0" | bc)" "$(echo "$mib / ($t1 - $t0)" | bc -l)" "-"
printf '%-58s %8.2f %8.1f %7d MiB\n' "pg_waldump alone on the decoded segments (one process)" "$wd_s" "$(echo "$mib / $wd_s" | bc -l)" $(( wd_kb / 1024 ))
printf 'top incident: %s of %s rows (expected DELETE of 200000)\n' "$top" "$toprows"
python3 -c "
import json, sys
for i in json.load(open(sys.argv[1]))['incidents'][:5]:
    print('  #%d %s xid %d: %s' % (i['rank'], i['kind'], i['xid'], ', '.join('%s -%d ~%d +%d%s' % (r['relation'], r['deleted'], r['updated'], r['inserted'], ' truncated' if r['truncated'] else '') for r in i['relations'])))
" "$work/inc.json"
