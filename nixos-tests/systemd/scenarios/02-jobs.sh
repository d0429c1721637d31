# The timer jobs: each timer is listed and each service succeeds when started, in the order
# a user meets them (base backup before the health check and the off-site copy).
scenario_jobs() {
  local timers
  timers="$(ctl list-timers --all --no-pager)"
  for t in postgresql-basebackup-main postgresql-healthcheck-main postgresql-walprune-main \
    pgpitr-offsite-main postgresql-basebackup-second postgresql-healthcheck-second; do
    assert_contains "$timers" "$t.timer" "list-timers"
  done
  # Needs the `replication` line in pg_hba.conf (pg_basebackup over the socket).
  start_ok postgresql-basebackup-main.service
  start_ok postgresql-basebackup-second.service
  start_ok postgresql-healthcheck-main.service
  start_ok postgresql-healthcheck-second.service
  start_ok postgresql-walprune-main.service
  # Reads its restic password through LoadCredential= (the file is root-only).
  start_ok pgpitr-offsite-main.service
  ls "$ROOT"/var/backup/postgresql/main/* >/dev/null || fail "no base backup of main"
}
