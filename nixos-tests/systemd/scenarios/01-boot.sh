# Boot: both servers up (Type=notify), archiving, provisioning after the server, two
# instances side by side on their own ports and folders.
scenario_boot() {
  for i in main second; do
    wait_active "postgresql-$i.service" 60
    [ "$(ctl show -p Type --value "postgresql-$i.service")" = notify ] || fail "postgresql-$i is not Type=notify"
  done
  [ "$(psql_ct 5432 -c 'show data_directory')" = /var/lib/postgresql/main ] || fail "port 5432 is not main"
  [ "$(psql_ct 5433 -c 'show data_directory')" = /var/lib/postgresql/second ] || fail "port 5433 is not second"
  # Provisioning ran after the server and created the declared database.
  wait_active postgresql-database-provisioning-main.service 60
  local srv prov
  srv="$(ctl show -p ActiveEnterTimestampMonotonic --value postgresql-main.service)"
  prov="$(ctl show -p ExecMainStartTimestampMonotonic --value postgresql-database-provisioning-main.service)"
  [ "$prov" -gt "$srv" ] || fail "provisioning started ($prov) before the server was up ($srv)"
  [ "$(psql_ct 5432 -c "select datname from pg_database where datname = 'app'")" = app ] || fail "database app not provisioned"
  # Archiving through archive-wal on both instances.
  for p in 5432 5433; do
    psql_ct "$p" -c 'create table if not exists rig(x int); insert into rig values (1); select pg_switch_wal()' >/dev/null
  done
  local i n
  for i in main second; do
    for ((n = 0; n < 100; n++)); do
      [ -n "$(ct ls -A "/var/lib/postgresql/$i-wal-archive/wal" 2>/dev/null)" ] && break
      sleep 0.2
    done
    [ -n "$(ct ls -A "/var/lib/postgresql/$i-wal-archive/wal")" ] || fail "$i archived nothing"
  done
  [ "$(psql_ct 5432 -c 'select failed_count from pg_stat_archiver')" = 0 ] || fail "main: archive failures"
}
