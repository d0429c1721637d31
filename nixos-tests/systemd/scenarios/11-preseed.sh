# A rebuilt node: the data folder is gone (archive and backups intact). At boot preseed runs
# before the server and brings the cluster back from the archive (method `archive`); the
# server comes up on a new timeline with every archived row, and the follow-up unit takes the
# first base backup of that timeline. A second start of preseed does nothing.
scenario_preseed() {
  local cfg=/etc/pgpitr/seeded.json bdir=/var/backup/postgresql/seeded data=/var/lib/postgresql/seeded
  assert_contains "$(cat "$ROOT$cfg")" '"preseed":{"methods":["archive","empty"]}' "[preseed] of seeded.json"
  assert_contains "$(cat "$ROOT$cfg")" '"service":"postgresql-seeded.service"' "[postgres] of seeded.json"
  wait_active postgresql-seeded.service 60
  # The first boot: `empty` ran initdb (nothing anywhere yet), the follow-up took backup 1.
  assert_contains "$(ct journalctl -u postgresql-preseed-seeded.service --no-pager)" \
    "restored by method empty" "the first boot's preseed"
  local first
  first="$(ls "$ROOT$bdir" | grep -v '^\.' | sort)"
  [ -n "$first" ] || fail "the follow-up unit took no backup on the first boot"
  # Rows, archived.
  psql_ct 5434 -c 'create table rig (x int); insert into rig select generate_series(1, 50)' >/dev/null
  local tl0
  tl0="$(psql_ct 5434 -c 'select timeline_id from pg_control_checkpoint()')"
  switch_and_wait_archived 5434 "seeded did not archive the rows"
  # The node dies: the data folder is gone entirely.
  ctl stop postgresql-seeded.service
  ct rm -rf "$data"
  ! ct test -e "$data" || fail "$data is still there"
  reboot_container
  wait_active postgresql-seeded.service 90
  local j
  j="$(ct journalctl -b -u postgresql-preseed-seeded.service --no-pager)"
  log "preseed: $(printf '%s\n' "$j" | grep 'preseed: instance' | tail -n1)"
  assert_contains "$j" "restored by method archive" "preseed after the rebuild"
  [ "$(psql_ct 5434 -c 'select count(*) from rig')" = 50 ] || fail "the rows did not come back"
  local tl
  tl="$(psql_ct 5434 -c 'select timeline_id from pg_control_checkpoint()')"
  [ "$tl" -gt "$tl0" ] || fail "the restored server is on timeline $tl, not after $tl0"
  # The follow-up backup: a new one, on the new timeline.
  [ "$(ctl is-active postgresql-preseed-basebackup-seeded.service)" = active ] ||
    fail "the follow-up backup unit did not succeed"
  local newb
  newb="$(comm -13 <(printf '%s\n' "$first") <(ls "$ROOT$bdir" | grep -v '^\.' | sort))"
  [ -n "$newb" ] || fail "no new backup after the rebuild"
  grep -Eq "\"timeline\": ?$tl[,}]?" "$ROOT$bdir/$newb/backup.json" ||
    fail "the follow-up backup $newb is not on timeline $tl: $(grep -o '"timeline"[^,]*' "$ROOT$bdir/$newb/backup.json")"
  # The server archives on its new timeline.
  psql_ct 5434 -c 'insert into rig values (51)' >/dev/null
  switch_and_wait_archived 5434 "seeded does not archive on its new timeline"
  # A second start does nothing: the cluster is there (restarting preseed restarts the server
  # that requires it), and the follow-up needs no backup.
  ctl restart postgresql-preseed-seeded.service
  wait_active postgresql-seeded.service 60
  assert_contains "$(ct journalctl -u postgresql-preseed-seeded.service -n 5 --no-pager)" \
    "holds a valid cluster" "the second preseed"
  assert_contains "$(ct journalctl -u postgresql-preseed-seeded.service -n 5 --no-pager)" \
    "nothing to do" "the second preseed"
  [ "$(psql_ct 5434 -c 'select count(*) from rig')" = 51 ] || fail "rows changed on the second start"
  local count
  count="$(ls "$ROOT$bdir" | grep -vc '^\.')"
  ctl stop postgresql-preseed-basebackup-seeded.service
  start_ok postgresql-preseed-basebackup-seeded.service
  assert_contains "$(ct journalctl -u postgresql-preseed-basebackup-seeded.service -n 5 --no-pager)" \
    "no backup needed" "the second follow-up"
  [ "$(ls "$ROOT$bdir" | grep -vc '^\.')" = "$count" ] || fail "the second follow-up took a backup"
}
