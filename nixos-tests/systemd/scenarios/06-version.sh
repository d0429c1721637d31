# A data folder initialised by another major version is refused, naming both versions;
# nothing is initdb'd over it.
scenario_version() {
  ctl stop postgresql-main.service
  local pgv="$ROOT/var/lib/postgresql/main/PG_VERSION"
  echo 14 >"$pgv"
  if ctl start postgresql-main.service 2>/dev/null; then echo 15 >"$pgv"; fail "started on a PostgreSQL 14 folder"; fi
  local j
  j="$(ct journalctl -u postgresql-main.service -n 20 --no-pager -o cat)"
  echo 15 >"$pgv"
  assert_contains "$j" "holds a PostgreSQL 14 cluster" "refusal"
  assert_contains "$j" "runs PostgreSQL 15" "refusal"
  ctl reset-failed postgresql-main.service
  ctl start postgresql-main.service
  wait_active postgresql-main.service 30
  [ "$(psql_ct 5432 -c 'select count(*) from rig')" -ge 1 ] || fail "main lost its data"
}
