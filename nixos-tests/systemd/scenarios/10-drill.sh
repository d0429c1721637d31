# The restore drill as the module runs it (then drill_sealed, below, on the encrypted
# instance): its timer is listed, and its service (as the
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
  psql_ct 5432 -c 'insert into rig values (45)' >/dev/null
  switch_and_wait_archived 5432 "main did not archive before the drill"
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
  drill_sealed
}

# The encrypted instance `sealed`: archive and backups encrypted to an age identity only root
# can read (/etc/pgpitr-rig-secrets/age-identity, 0400), its drill restores from the off-site
# copy. The drill unit runs as postgres and gets the identity and restic's password through
# LoadCredential=; pgpitr (and the scratch server's restore-wal) reads them in place of the
# paths the config names. Without that it cannot decrypt (Permission denied on the identity).
drill_sealed() {
  local id=/etc/pgpitr-rig-secrets/age-identity
  ct test -s "$id" || fail "no $id"
  if ct runuser -u postgres -- cat "$id" >/dev/null 2>&1; then fail "postgres can read $id"; fi
  assert_contains "$(cat "$ROOT/etc/pgpitr/sealed.json")" "\"identity_file\":\"$id\"" "sealed.json"
  assert_contains "$(ctl cat postgresql-drill-sealed.service)" \
    "LoadCredential=age-identity:$id" "the drill unit"
  wait_active postgresql-sealed.service 60
  psql_ct 5435 -c 'create table if not exists rig(x int); insert into rig values (1)' >/dev/null
  start_ok postgresql-basebackup-sealed.service
  start_ok postgresql-healthcheck-sealed.service
  local n
  psql_ct 5435 -c 'insert into rig values (2)' >/dev/null
  switch_and_wait_archived 5435 "sealed did not archive before the drill"
  # What the archive holds is age-encrypted.
  local obj
  obj="$(ct find /var/lib/postgresql/sealed-wal-archive/wal -type f -name '*.zst.age' | head -n1)"
  [ -n "$obj" ] || fail "no encrypted WAL object in sealed's archive"
  [ "$(ct head -c 21 "$obj")" = "age-encryption.org/v1" ] || fail "$obj is not age-encrypted"
  start_ok pgpitr-offsite-sealed.service
  start_ok postgresql-drill-sealed.service
  local hist="$ROOT/var/backup/postgresql/sealed/drills.jsonl" rec c
  [ -s "$hist" ] || fail "no $hist after the drill"
  rec="$(tail -n1 "$hist")"
  log "sealed drill record: $rec"
  assert_contains "$rec" '"success":true' "sealed's drill record"
  assert_contains "$rec" '"source":"offsite"' "sealed's drill record"
  for c in fetch wal_chain plan restore target_reached promoted databases_connect amcheck heartbeat; do
    assert_contains "$rec" "\"check\":\"$c\",\"ok\":true" "sealed check $c"
  done
  # The heartbeat allowance: archive_timeout as the instance has it (the module's 60 s), not
  # the restored copy's initdb default.
  assert_contains "$rec" "archive_timeout 60 s of the instance" "sealed's heartbeat check"
  # The credential went with the unit; the identity is still root-only.
  # systemd removes the unit's credentials when it ends (waited for: in one full run the copy
  # was still there right after `systemctl start` returned, and gone in isolated runs).
  local cred=/run/credentials/postgresql-drill-sealed.service/age-identity
  for ((n = 0; n < 50; n++)); do
    ct test -e "$cred" || break
    if ct runuser -u postgres -- cat "$cred" >/dev/null 2>&1; then
      log "note: postgres can read $cred while it exists (the unit's own user)"
    fi
    sleep 0.1
  done
  ! ct test -e "$cred" || fail "the drill's copy of the identity stayed 5 s after the unit ended"
  if ct runuser -u postgres -- cat "$id" >/dev/null 2>&1; then fail "postgres can read $id after the drill"; fi
}
