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
  psql_ct 5432 -c 'insert into rig values (44)' >/dev/null
  switch_and_wait_archived 5432 "main does not archive after the reboot"
  start_ok postgresql-basebackup-main.service
  start_ok postgresql-healthcheck-main.service
}
