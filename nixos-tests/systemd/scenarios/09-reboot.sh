# A reboot comes back healthy with nothing lost: both servers up, the rows committed before
# it present, archiving and the base backup working.
scenario_reboot() {
  psql_ct 5432 -c 'insert into rig values (42)' >/dev/null
  psql_ct 5433 -c 'insert into rig values (43)' >/dev/null
  reboot_container
  wait_active postgresql-main.service 60
  wait_active postgresql-second.service 60
  [ "$(psql_ct 5432 -c 'select count(*) from rig where x = 42')" = 1 ] || fail "main lost a row"
  [ "$(psql_ct 5433 -c 'select count(*) from rig where x = 43')" = 1 ] || fail "second lost a row"
  local before after n
  before="$(psql_ct 5432 -c 'select archived_count from pg_stat_archiver')"
  psql_ct 5432 -c 'insert into rig values (44); select pg_switch_wal()' >/dev/null
  for ((n = 0; n < 100; n++)); do
    after="$(psql_ct 5432 -c 'select archived_count from pg_stat_archiver')"
    [ "$after" -gt "$before" ] && break
    sleep 0.2
  done
  [ "$after" -gt "$before" ] || fail "main does not archive after the reboot"
  start_ok postgresql-basebackup-main.service
  start_ok postgresql-healthcheck-main.service
}
