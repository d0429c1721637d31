# Failures page: an unwritable archive folder, a failing base backup and a crash-looping
# server each start the OnFailure= unit.
scenario_failures() {
  local arch=/var/lib/postgresql/main-wal-archive bk=/var/backup/postgresql/main
  # Archive folder unwritable: archiving fails, the health check fails and pages.
  ct find "$arch" -type d -exec chmod u-w {} +
  psql_ct 5432 -c 'create table if not exists rig(x int); insert into rig values (2); select pg_switch_wal()' >/dev/null
  local n
  for ((n = 0; n < 100; n++)); do
    [ "$(psql_ct 5432 -c 'select failed_count > 0 from pg_stat_archiver')" = t ] && break
    sleep 0.2
  done
  if ctl start postgresql-healthcheck-main.service 2>/dev/null; then ct find "$arch" -type d -exec chmod u+w {} +; fail "healthcheck passed with archiving broken"; fi
  ct find "$arch" -type d -exec chmod u+w {} +
  wait_failure_logged postgresql-healthcheck-main.service
  # A base backup that fails.
  ct chmod 0500 "$bk"
  if ctl start postgresql-basebackup-main.service 2>/dev/null; then ct chmod 0700 "$bk"; fail "basebackup passed into an unwritable folder"; fi
  ct chmod 0700 "$bk"
  wait_failure_logged postgresql-basebackup-main.service
  # A crash-looping server (its data folder made group-writable, which postgres refuses)
  # reaches the start limit, ends failed and pages.
  ct chmod 0770 /var/lib/postgresql/second
  ctl restart --no-block postgresql-second.service
  wait_failure_logged postgresql-second.service 90
  [ "$(ctl is-failed postgresql-second.service)" = failed ] || fail "crash-looping server not failed"
  ct chmod 0700 /var/lib/postgresql/second
  ctl reset-failed postgresql-second.service
  ctl start postgresql-second.service
  wait_active postgresql-second.service 30
}
