# `pgpitr restore --in-place --to <time>` on a server run by its systemd unit (the config's
# `postgres.service`, written by the module): rows written before and after a recorded time;
# after the restore the unit is active again with only the earlier rows, on a new timeline,
# with no recovery setting and none of pgpitr's access files left, a base backup on the new
# timeline, and the old data folder kept as a safety copy.
scenario_inplace() {
  local cfg=/etc/pgpitr/main.json
  wait_active postgresql-main.service 60
  start_ok postgresql-basebackup-main.service
  psql_ct 5432 -c 'create table if not exists inplace (x int); insert into inplace values (1), (2)' >/dev/null
  sleep 1
  local t tl0
  t="$(psql_ct 5432 -c 'select now()')"
  tl0="$(psql_ct 5432 -c 'select timeline_id from pg_control_checkpoint()')"
  sleep 1
  psql_ct 5432 -c 'insert into inplace values (3), (4)' >/dev/null
  switch_and_wait_archived 5432 "main did not archive before the restore"
  log "restoring main in place to $t"
  ct /opt/pgpitr/bin/pgpitr --config "$cfg" restore --in-place --to "$t" --dry-run >/dev/null
  if ! ct /opt/pgpitr/bin/pgpitr --config "$cfg" restore --in-place --to "$t" >"$RUN/inplace.out" 2>&1; then
    cat "$RUN/inplace.out" >&2
    fail "the in-place restore failed"
  fi
  inplace_handed_back inplace "1,2" "after the restore"
  local tl
  tl="$(psql_ct 5432 -c 'select timeline_id from pg_control_checkpoint()')"
  [ "$tl" -gt "$tl0" ] || fail "main is on timeline $tl, not after $tl0"
  [ "$(psql_ct 5432 -c 'select pg_is_in_recovery()')" = "f" ] || fail "main is still in recovery"
  # The window restarts at once: a base backup on the new timeline.
  grep -lE "\"timeline\": *$tl([^0-9]|\$)" "$ROOT"/var/backup/postgresql/main/*/backup.json >/dev/null ||
    fail "no base backup on timeline $tl"
  # The safety copy: the old data folder, renamed beside it.
  local safety
  safety="$(ct sh -c 'ls -d /var/lib/postgresql/main.pre-restore-* 2>/dev/null' | tail -n1)"
  [ -n "$safety" ] || fail "no safety copy beside /var/lib/postgresql/main"
  ct test -s "$safety/global/pg_control" || fail "$safety is not a data folder"
  log "safety copy: $safety"
  inplace_killed_then_resumed
}

# Killed after promotion, before the unit is started again (the replay server still runs with
# pgpitr's own access files): `--resume` finishes it through the unit.
inplace_killed_then_resumed() {
  local cfg=/etc/pgpitr/main.json
  wait_active postgresql-main.service 60
  psql_ct 5432 -c 'create table if not exists inplace2 (x int); insert into inplace2 values (5)' >/dev/null
  sleep 1
  local t n
  t="$(psql_ct 5432 -c 'select now()')"
  sleep 1
  psql_ct 5432 -c 'insert into inplace2 values (6)' >/dev/null
  switch_and_wait_archived 5432 "main did not archive before the restore"
  ct env PGPITR_TEST_HOLD_AT=restart /opt/pgpitr/bin/pgpitr --config "$cfg" restore --in-place --to "$t" \
    >"$RUN/inplace-held.out" 2>&1 &
  for ((n = 0; n < 300; n++)); do
    grep -q "test hold at restart" "$RUN/inplace-held.out" && break
    sleep 0.2
  done
  grep -q "test hold at restart" "$RUN/inplace-held.out" || { cat "$RUN/inplace-held.out" >&2; fail "the restore never reached the restart step"; }
  ct pkill -KILL -f "restore --in-place --to" || fail "no in-place restore to kill"
  wait || true
  # Killed: the next plain run refuses and names both ways out.
  if ct /opt/pgpitr/bin/pgpitr --config "$cfg" restore --in-place --to "$t" >"$RUN/inplace-refused.out" 2>&1; then
    fail "an in-place restore ran over an interrupted one"
  fi
  grep -q -- "--resume" "$RUN/inplace-refused.out" && grep -q -- "--undo" "$RUN/inplace-refused.out" ||
    { cat "$RUN/inplace-refused.out" >&2; fail "the refusal does not name --resume and --undo"; }
  if ! ct /opt/pgpitr/bin/pgpitr --config "$cfg" restore --in-place --resume --to "$t" >"$RUN/inplace-resumed.out" 2>&1; then
    cat "$RUN/inplace-resumed.out" >&2
    fail "--resume did not finish the killed in-place restore"
  fi
  inplace_handed_back inplace2 "5" "after --resume"
}

# After an in-place restore: the unit runs the server again (its main PID is the postmaster),
# TABLE holds EXPECTED (its x values, comma-separated), and what the restore wrote for its own
# server is gone (recovery settings, pgpitr's access files).
inplace_handed_back() { # TABLE EXPECTED WHAT
  local rows pid
  wait_active postgresql-main.service 60
  pid="$(ctl show -p MainPID --value postgresql-main.service)"
  [ "$pid" -gt 0 ] && [ "$(ct head -n1 /var/lib/postgresql/main/postmaster.pid)" = "$pid" ] ||
    fail "$3: the server is not the unit's main process"
  rows="$(psql_ct 5432 -c "select string_agg(x::text, ',' order by x) from $1")"
  [ "$rows" = "$2" ] || fail "$3: $1 holds $rows, not $2"
  if ct grep -E '^[[:space:]]*(recovery_target|restore_command)' /var/lib/postgresql/main/postgresql.auto.conf; then
    fail "$3: recovery settings left in postgresql.auto.conf"
  fi
  if ct sh -c 'ls /var/lib/postgresql/main.pgpitr-*.conf 2>/dev/null' | grep -q .; then
    fail "$3: pgpitr's access files were left beside the data folder"
  fi
}
