# The restore drill as the module runs it: its timer is listed, and its service (as the
# postgres user, inside the module's sandbox) restores main's newest state into the scratch
# folder on drill.port, passes every check and appends its record to
# <backup.dir>/drills.jsonl; the scratch server is stopped and its copy removed.
scenario_drill() {
  assert_contains "$(ctl list-timers --all --no-pager)" postgresql-drill-main.timer "list-timers"
  local cfg
  cfg="$(cat "$ROOT/etc/pgpitr/main.json")"
  assert_contains "$cfg" '"heartbeat_interval_seconds":300' "[drill] of main.json"
  case "$cfg" in *'"from"'*) fail "main.json carries a drill \`from\` key" ;; esac
  # The first drill goes to `latest`: a heartbeat, then a transaction after it, both archived.
  start_ok postgresql-healthcheck-main.service
  local before after n
  before="$(psql_ct 5432 -c 'select archived_count from pg_stat_archiver')"
  psql_ct 5432 -c 'insert into rig values (45); select pg_switch_wal()' >/dev/null
  for ((n = 0; n < 100; n++)); do
    after="$(psql_ct 5432 -c 'select archived_count from pg_stat_archiver')"
    [ "$after" -gt "$before" ] && break
    sleep 0.2
  done
  [ "$after" -gt "$before" ] || fail "main did not archive before the drill"
  start_ok postgresql-drill-main.service
  local hist="$ROOT/var/backup/postgresql/main/drills.jsonl" rec
  [ -s "$hist" ] || fail "no $hist after the drill"
  rec="$(tail -n1 "$hist")"
  log "drill record: $rec"
  assert_contains "$rec" '"success":true' "the drill's record"
  assert_contains "$rec" '"mode":"latest"' "the drill's record"
  assert_contains "$rec" '"source":"local"' "the drill's record"
  local c
  for c in wal_chain plan restore target_reached promoted databases_connect amcheck heartbeat; do
    assert_contains "$rec" "\"check\":\"$c\",\"ok\":true" "check $c"
  done
  # It ran on drill.port (the default, 15432) and left nothing behind.
  assert_contains "$rec" "restored into /var/lib/pgpitr/main/drill/data on port 15432" \
    "the drill's restore check (scratch folder and port)"
  ! ct test -S /run/postgresql/.s.PGSQL.15432 || fail "the scratch server still runs"
  # Only the drill's lock file stays in the scratch folder.
  [ "$(ls -A "$ROOT/var/lib/pgpitr/main/drill")" = .drill.lock ] ||
    fail "the scratch folder was not emptied: $(ls -A "$ROOT/var/lib/pgpitr/main/drill")"
  # Its metrics reached the textfile folder (writable for the unit with monitoring on).
  assert_contains "$(cat "$ROOT"/var/lib/pgpitr-rig/metrics/*.prom)" \
    'pgpitr_drill_success{instance="main"} 1' "the drill's metrics"
  [ "$(ct stat -c %U /var/backup/postgresql/main/drills.jsonl)" = postgres ] ||
    fail "drills.jsonl is not owned by postgres"
}
