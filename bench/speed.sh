#!/usr/bin/env bash
# Speed benchmark (issue 14), one run on the same real WAL (pgbench on PostgreSQL 15):
#  (a) archive: archive-wal one-by-one (archive.parallel = 1) and with look-ahead
#      (archive.parallel = P) against pgbackrest archive-push without and with archive-async
#      (process-max = P); the script plays PostgreSQL's archiver: one call per segment in
#      order, .ready renamed to .done after each success.
#  (b) fetch: restore-wal without and with prefetch (restore.prefetch = 8) against pgbackrest
#      archive-get without and with its async queue; one call per segment in order.
#  (c) end to end: replay of >= 1 GiB of WAL from a base backup through restore-wal
#      (prefetch off and on) against the same WAL already in pg_wal.
#  (d) pgbench at full speed for DURATION s with archive_command set to each tool: the highest
#      number of .ready files seen (sampled every 0.1 s), and how long the backlog took to drain.
# Peak resident memory of one archive-wal / restore-wal / pgbackrest process comes from (a), (b).
# zstd level 1 for both tools, no encryption. Run as root (servers run as `postgres`).
set -euo pipefail
cd "$(dirname "$0")/.."
SEGMENTS=${SEGMENTS:-32}      # segments for (a) and (b)
ROUNDS=${ROUNDS:-2}           # rounds of (a), (b), variants in rotating order
REPLAY_ROUNDS=${REPLAY_ROUNDS:-$ROUNDS}  # rounds of (c)
REPLAY_GIB=${REPLAY_GIB:-1}   # WAL replayed in (c)
DURATION=${DURATION:-60}      # pgbench seconds per tool in (d)
P=${P:-$(nproc)}              # our workers = pgbackrest process-max
PARTS=${PARTS:-abcd}          # which parts to run ((a) always runs: (b) reads its archives)
. bench/lib.sh
for t in "$BIN/initdb" "$BIN/pg_basebackup" pgbackrest /usr/bin/time bc; do
  command -v "$t" >/dev/null || { echo "missing $t: apt-get install -y postgresql-15 pgbackrest time bc" >&2; exit 1; }
done
cargo build --release -q -p archive-wal -p restore-wal
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(free -g | awk '/Mem/{print $2}') GiB RAM; load before: $(cut -d' ' -f1-3 /proc/loadavg)"
bench_cluster speed "max_wal_size = '8GB'
wal_keep_size = '6GB'
checkpoint_timeout = '1h'
fsync = off
archive_mode = on
archive_command = '/bin/true'"
mkdir -p "$work/bin" "$work/segments" "$work/pgbr-spool"
cp target/release/archive-wal target/release/restore-wal "$work/bin/"
[ "$(id -u)" -eq 0 ] && chown -R postgres:postgres "$work"
psql() { as_pg /usr/bin/psql -h "$work/sock" -U postgres -qAt "$@"; }
now() { date +%s.%N; }
# ---------------------------------------------------------------- WAL
echo "base backup, then >= $REPLAY_GIB GiB of pgbench WAL ..." >&2
as_pg "$BIN/pg_basebackup" -h "$work/sock" -U postgres -D "$work/base" -X stream -c fast
start=$(psql -c "SELECT pg_walfile_name(pg_current_wal_lsn())")
scale=${SCALE:-$(( REPLAY_GIB * 90 ))}
as_pg "$BIN/pgbench" -h "$work/sock" -U postgres -i -s "$scale" -q postgres >/dev/null 2>&1
as_pg "$BIN/pgbench" -h "$work/sock" -U postgres -T 20 -c 2 postgres >/dev/null 2>&1
psql -c "SELECT pg_switch_wal()" >/dev/null
psql -c "CHECKPOINT" >/dev/null
ls "$work/data/pg_wal" | grep -E '^[0-9A-F]{24}$' | sort | awk -v s="$start" '$0 >= s' > "$work/all"
# the last one is the current segment, still being written
head -n -1 "$work/all" > "$work/replay"; mv "$work/replay" "$work/all"
nall=$(wc -l < "$work/all")
head -n "$SEGMENTS" "$work/all" > "$work/list"
count=$(wc -l < "$work/list")
while read -r f; do cp "$work/data/pg_wal/$f" "$work/segments/"; done < "$work/all"
echo "WAL: $nall segments ($(( nall * 16 )) MiB); (a)/(b) use the first $count" >&2

# A data folder stand-in for the tools: PG_VERSION, pg_control, pg_wal/archive_status.
fake() { # DIR
  rm -rf "$1"; mkdir -p "$1/global" "$1/pg_wal/archive_status"
  cp "$work/data/PG_VERSION" "$1/"; cp "$work/data/global/pg_control" "$1/global/"
  chmod 700 "$1"
}
# ---------------------------------------------------------------- configs
for v in one la; do
  mkdir -p "$work/arch-$v"
  cat > "$work/$v.toml" <<EOF
instance = "bench"
[archive]
dir = "$work/arch-$v"
level = 1
parallel = $([ $v = one ] && echo 1 || echo "$P")
[backup]
dir = "$work/backups"
[restore]
prefetch = $([ $v = one ] && echo 0 || echo 8)
EOF
done
pgbr_conf() { # FILE ASYNC(y|n) PG1PATH
  cat > "$1" <<EOF
[global]
repo1-path=$work/pgbr
compress-type=zst
compress-level=1
archive-async=$2
process-max=$P
log-level-console=warn
log-level-file=off
lock-path=$work/pgbr-lock
spool-path=$work/pgbr-spool
[bench]
pg1-path=$3
pg1-socket-path=$work/sock
pg1-user=postgres
EOF
}
pgbr_conf "$work/pgbr.conf" n "$work/data"
[ "$(id -u)" -eq 0 ] && chown -R postgres:postgres "$work"
as_pg pgbackrest --config="$work/pgbr.conf" --stanza=bench stanza-create >/dev/null
declare -A best peak
keep() { # VARIANT SECS RSS
  if [ -z "${best[$1]:-}" ] || [ "$(echo "$2 < ${best[$1]}" | bc)" = 1 ]; then best[$1]=$2; fi
  [ "$3" -gt "${peak[$1]:-0}" ] && peak[$1]=$3
  return 0
}
rotate() { echo "$2" | tr ' ' '\n' | awk -v r="$1" '{a[NR]=$0} END {for (i=0;i<NR;i++) print a[(i+r-1)%NR+1]}'; }

# ---------------------------------------------------------------- (a) archive
# Each variant runs twice per round: `time` (the tool alone, started as PostgreSQL's
# system() does: one fork, one exec) and `rss` (untimed, under /usr/bin/time for the peak
# resident memory). Measuring memory inside the timed loop added a fork, an exec and a `tail`
# per call (about 4 ms) to every tool and compressed the ratios.
arch_run() { # VARIANT MODE(time|rss) -> "secs peakKiB"
  local v=$1 mode=$2 d="$work/push-$1" t0 t1
  fake "$d"
  while read -r f; do cp "$work/segments/$f" "$d/pg_wal/"; touch "$d/pg_wal/archive_status/$f.ready"; done < "$work/list"
  case $v in
    one|la) rm -rf "$work/arch-$v/wal" "$work/arch-$v/archive.json" ;;
    pgbr|pgbr-async)
      find "$work/pgbr/archive" -mindepth 3 -maxdepth 3 -type d -name '0000000*' -exec rm -rf {} +
      rm -rf "$work/pgbr-spool"; mkdir -p "$work/pgbr-spool"
      pgbr_conf "$work/$v.conf" "$([ $v = pgbr ] && echo n || echo y)" "$d" ;;
  esac
  [ "$(id -u)" -eq 0 ] && chown -R postgres:postgres "$d" "$work/pgbr-spool" "$work"/*.conf
  sync
  # The loop runs as the server's user in one shell, as PostgreSQL's archiver does: one
  # `runuser` per call (a PAM session, about 10 ms) would be timed with every tool. The
  # .ready -> .done rename is PostgreSQL's (in-process there, an `mv` here for every tool).
  t0=$(now)
  as_pg bash -c '
    d=$1 work=$2 v=$3 mode=$4 mx=0 pre=()
    [ "$mode" = rss ] && pre=(/usr/bin/time -f %M -o "$work/rss")
    while read -r f; do
      case $v in
        one|la) (cd "$d" && exec "${pre[@]}" "$work/bin/archive-wal" --config "$work/$v.toml" "pg_wal/$f" "$f") ;;
        *) (cd "$d" && exec "${pre[@]}" pgbackrest --config="$work/$v.conf" --stanza=bench archive-push "pg_wal/$f") ;;
      esac || exit 1
      mv "$d/pg_wal/archive_status/$f.ready" "$d/pg_wal/archive_status/$f.done"
      if [ "$mode" = rss ]; then r=$(tail -1 "$work/rss"); [ "$r" -gt "$mx" ] && mx=$r; fi
    done < "$work/list"
    echo "$mx" > "$work/maxrss"' _ "$d" "$work" "$v" "$mode" || { echo "archive $v failed" >&2; exit 1; }
  t1=$(now)
  echo "$(echo "$t1 - $t0" | bc) $(cat "$work/maxrss")"
}
echo "(a) archive ..." >&2
for round in $(seq 1 "$ROUNDS"); do
  for v in $(rotate "$round" "one la pgbr pgbr-async"); do
    read -r s _ < <(arch_run "$v" time); keep "a-$v" "$s" 0
    read -r _ m < <(arch_run "$v" rss); keep "a-$v" 9999 "$m"
  done
done

# ---------------------------------------------------------------- (b) fetch
fetch_run() { # VARIANT MODE(time|rss) -> "secs peakKiB"
  local v=$1 mode=$2 d="$work/get-$1" t0 t1
  fake "$d"; touch "$d/recovery.signal"
  case $v in
    pgbr|pgbr-async) rm -rf "$work/pgbr-spool"; mkdir -p "$work/pgbr-spool"
      pgbr_conf "$work/get-$v.conf" "$([ $v = pgbr ] && echo n || echo y)" "$d" ;;
  esac
  [ "$(id -u)" -eq 0 ] && chown -R postgres:postgres "$d" "$work/pgbr-spool" "$work"/*.conf
  sync
  mkdir -p "$d/fetched"; [ "$(id -u)" -eq 0 ] && chown postgres:postgres "$d/fetched"
  # As in (a): one shell as the server's user, each call one fork and one exec into
  # pg_wal/RECOVERYXLOG, then an `mv` aside (PostgreSQL renames it in-process and unlinks any
  # old RECOVERYXLOG before the call: a tool renaming over an existing 16 MiB file makes ext4
  # start its writeback, about 10 ms here). Every fetched file is compared after the timing.
  t0=$(now)
  as_pg bash -c '
    d=$1 work=$2 v=$3 mode=$4 mx=0 pre=()
    [ "$mode" = rss ] && pre=(/usr/bin/time -f %M -o "$work/rss")
    while read -r f; do
      case $v in
        one|la) (cd "$d" && exec "${pre[@]}" "$work/bin/restore-wal" --config "$work/$v.toml" "$f" pg_wal/RECOVERYXLOG) ;;
        *) (cd "$d" && exec "${pre[@]}" pgbackrest --config="$work/get-$v.conf" --stanza=bench archive-get "$f" pg_wal/RECOVERYXLOG) ;;
      esac || exit 1
      mv "$d/pg_wal/RECOVERYXLOG" "$d/fetched/$f"
      if [ "$mode" = rss ]; then r=$(tail -1 "$work/rss"); [ "$r" -gt "$mx" ] && mx=$r; fi
    done < "$work/list"
    echo "$mx" > "$work/maxrss"' _ "$d" "$work" "$v" "$mode" || { echo "fetch $v failed" >&2; exit 1; }
  t1=$(now)
  rm -f "$d/recovery.signal"   # lets our prefetcher clean up and exit
  while read -r f; do
    cmp -s "$d/fetched/$f" "$work/segments/$f" || { echo "fetch $v: $f differs" >&2; exit 1; }
  done < "$work/list"
  rm -rf "$d/fetched"
  echo "$(echo "$t1 - $t0" | bc) $(cat "$work/maxrss")"
}
# What the harness itself costs per call (a fork and an exec of /bin/true), in every figure.
harness_us=$(as_pg bash -c 't0=$(date +%s%N); for i in $(seq 100); do (cd / && exec /bin/true); done; echo $(( ($(date +%s%N) - t0) / 100000 ))')
# Both archives hold the same segments from (a): ours from the look-ahead run.
sed -i "s|arch-one|arch-la|" "$work/one.toml"
echo "(b) fetch ..." >&2
for round in $(seq 1 "$ROUNDS"); do
  for v in $(rotate "$round" "one la pgbr pgbr-async"); do
    read -r s _ < <(fetch_run "$v" time); keep "b-$v" "$s" 0
    read -r _ m < <(fetch_run "$v" rss); keep "b-$v" 9999 "$m"
  done
done

sed -i "s|arch-la|arch-one|" "$work/one.toml"
# ---------------------------------------------------------------- (c) replay
if [[ $PARTS == *c* ]]; then
# Every segment of the run archived once (look-ahead) for the restore-wal variants.
rm -rf "$work/arch-la/wal" "$work/arch-la/archive.json"
fake "$work/push-all"
while read -r f; do ln "$work/segments/$f" "$work/push-all/pg_wal/$f"; touch "$work/push-all/pg_wal/archive_status/$f.ready"; done < "$work/all"
[ "$(id -u)" -eq 0 ] && chown -R postgres:postgres "$work/push-all"
while read -r f; do
  (cd "$work/push-all" && as_pg "$work/bin/archive-wal" --config "$work/la.toml" "pg_wal/$f" "$f")
  mv "$work/push-all/pg_wal/archive_status/$f.ready" "$work/push-all/pg_wal/archive_status/$f.done"
done < "$work/all"
# Both restore-wal variants read that archive.
sed -i "s|arch-one|arch-la|" "$work/one.toml"
declare -A redo
replay_run() { # VARIANT -> secs
  local v=$1 r="$work/replay-$1" t0 t1 rc
  rm -rf "$r"; cp -a "$work/base" "$r"
  case $v in
    local) while read -r f; do cp "$work/segments/$f" "$r/pg_wal/"; done < "$work/all"; rc="/bin/false" ;;
    one|la) rc="$work/bin/restore-wal --config $work/$v.toml %f %p" ;;
  esac
  printf "port = 5499\nhot_standby = off\narchive_mode = off\nrestore_command = '%s'\n" "$rc" >> "$r/postgresql.auto.conf"
  touch "$r/recovery.signal"
  [ "$(id -u)" -eq 0 ] && chown -R postgres:postgres "$r"
  sync
  # A fresh log each run: pg_ctl -l appends, and a "ready" line from the previous round would
  # end the wait below at once.
  rm -f "$work/replay-$v.log"
  t0=$(now)
  # pg_ctl -w returns when recovery starts (no hot standby): wait for the end of recovery.
  as_pg "$BIN/pg_ctl" start -D "$r" -l "$work/replay-$v.log" >/dev/null
  until grep -q "database system is ready to accept connections" "$work/replay-$v.log" 2>/dev/null; do
    sleep 0.05
    grep -qE "FATAL|PANIC" "$work/replay-$v.log" 2>/dev/null && break
  done
  t1=$(now)
  as_pg "$BIN/pg_ctl" stop -D "$r" -m immediate >/dev/null
  grep -q "redo done" "$work/replay-$v.log" || { echo "replay $v did not finish:" >&2; tail -20 "$work/replay-$v.log" >&2; exit 1; }
  rm -rf "$r"
  echo "$(echo "$t1 - $t0" | bc) $(grep -o 'redo done at [0-9A-F/]*' "$work/replay-$v.log" | cut -d' ' -f4)"
}
echo "(c) replay of $nall segments ..." >&2
for round in $(seq 1 "$REPLAY_ROUNDS"); do
  for v in $(rotate "$round" "local one la"); do
    read -r s l < <(replay_run "$v"); keep "c-$v" "$s" 0; redo[$v]=$l
  done
done

fi
# ---------------------------------------------------------------- (d) under load
load_run() { # VARIANT -> "maxready drainsecs walMiB"
  local v=$1 cmd mx=0 n t0 lsn0 lsn1 pid
  case $v in
    one|la) rm -rf "$work/arch-$v/wal" "$work/arch-$v/archive.json"; cmd="$work/bin/archive-wal --config $work/$v.toml %p %f" ;;
    pgbr|pgbr-async) rm -rf "$work/pgbr-spool"; mkdir -p "$work/pgbr-spool"
      pgbr_conf "$work/load-$v.conf" "$([ $v = pgbr ] && echo n || echo y)" "$work/data"
      [ "$(id -u)" -eq 0 ] && chown -R postgres:postgres "$work/pgbr-spool" "$work/load-$v.conf"
      cmd="pgbackrest --config=$work/load-$v.conf --stanza=bench archive-push %p" ;;
  esac
  psql -c "ALTER SYSTEM SET archive_command = '$cmd'" >/dev/null
  psql -c "SELECT pg_reload_conf()" >/dev/null
  psql -c "SELECT pg_switch_wal()" >/dev/null; sleep 2
  lsn0=$(psql -c "SELECT pg_current_wal_lsn()")
  as_pg "$BIN/pgbench" -h "$work/sock" -U postgres -T "$DURATION" -c 4 -j 2 postgres >/dev/null 2>&1 &
  pid=$!
  while kill -0 $pid 2>/dev/null; do
    n=$(find "$work/data/pg_wal/archive_status" -name '*.ready' | wc -l)
    [ "$n" -gt "$mx" ] && mx=$n
    sleep 0.1
  done
  lsn1=$(psql -c "SELECT pg_current_wal_lsn()")
  t0=$(now)
  while [ "$(find "$work/data/pg_wal/archive_status" -name '*.ready' | wc -l)" -gt 0 ]; do
    sleep 0.1
    [ "$(echo "$(now) - $t0 > 900" | bc)" = 1 ] && { echo "$v: backlog not drained in 900 s" >&2; break; }
  done
  echo "$mx $(echo "$(now) - $t0" | bc) $(psql -c "SELECT round(pg_wal_lsn_diff('$lsn1', '$lsn0') / 1048576)")"
}
declare -A ready drain walmb
if [[ $PARTS == *d* ]]; then
echo "(d) pgbench ${DURATION}s per tool ..." >&2
for v in one la pgbr pgbr-async; do
  read -r r dr mb < <(load_run "$v"); ready[$v]=$r; drain[$v]=$dr; walmb[$v]=$mb
done
psql -c "ALTER SYSTEM SET archive_command = '/bin/true'" >/dev/null

fi
# ---------------------------------------------------------------- report
mib() { echo "scale=1; $1 / 1024" | bc; }
label() { case $1 in one) echo "archive-wal one-by-one";; la) echo "archive-wal look-ahead P=$P";; pgbr) echo "pgbackrest archive-push";; pgbr-async) echo "pgbackrest archive-push async P=$P";; esac; }
flabel() { case $1 in one) echo "restore-wal";; la) echo "restore-wal prefetch=8";; pgbr) echo "pgbackrest archive-get";; pgbr-async) echo "pgbackrest archive-get async";; esac; }
echo
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
printf '\n(a) archive %s segments of 16 MiB, zstd 1\n%-36s %8s %8s %10s %12s\n' "$count" tool seconds seg/s "vs sync" "peak RSS MiB"
for v in one la pgbr pgbr-async; do
  printf '%-36s %8.2f %8.1f %9.2fx %12s\n' "$(label $v)" "${best[a-$v]}" "$(echo "$count / ${best[a-$v]}" | bc -l)" "$(echo "${best[a-pgbr]} / ${best[a-$v]}" | bc -l)" "$(mib "${peak[a-$v]}")"
done
printf '\n(b) fetch %s segments\n%-36s %8s %8s %10s %12s\n' "$count" tool seconds seg/s "vs sync" "peak RSS MiB"
for v in one la pgbr pgbr-async; do
  printf '%-36s %8.2f %8.1f %9.2fx %12s\n' "$(flabel $v)" "${best[b-$v]}" "$(echo "$count / ${best[b-$v]}" | bc -l)" "$(echo "${best[b-pgbr]} / ${best[b-$v]}" | bc -l)" "$(mib "${peak[b-$v]}")"
done
if [[ $PARTS == *c* ]]; then
printf '\n(c) replay of %s segments (%s MiB) from a base backup\n%-36s %8s %10s\n' "$nall" "$(( nall * 16 ))" source seconds "vs local"
for v in local one la; do
  case $v in local) l="WAL already in pg_wal";; one) l="restore-wal";; la) l="restore-wal prefetch=8";; esac
  printf '%-36s %8.2f %9.2fx  redo done at %s\n' "$l" "${best[c-$v]}" "$(echo "${best[c-$v]} / ${best[c-local]}" | bc -l)" "${redo[$v]}"
done
fi
if [[ $PARTS == *d* ]]; then
printf '\n(d) pgbench -c 4 -j 2, %ss at full speed, archive_command = tool\n%-36s %10s %10s %10s\n' "$DURATION" tool "max .ready" "drain s" "WAL MiB"
for v in one la pgbr pgbr-async; do
  printf '%-36s %10s %10.1f %10s\n' "$(label $v)" "${ready[$v]}" "${drain[$v]}" "${walmb[$v]}"
done
fi
echo "(best of $ROUNDS rounds for (a), (b) and $REPLAY_ROUNDS for (c), variants interleaved in rotating order;"
echo " (a) and (b) time each call as PostgreSQL starts it, one fork and one exec: $harness_us us per call"
echo " on this machine with /bin/true, included in every tool's figure; peak RSS from a separate untimed pass)"
