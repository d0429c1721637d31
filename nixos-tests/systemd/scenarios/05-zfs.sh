# ZFS on zfs-fuse: pgpitr-zfs-second.service (pgpitr zfs ensure --fix) created and tuned the
# datasets before the server started, and the server's data is on them.
scenario_zfs() {
  ctl is-active pgpitr-zfs-second.service >/dev/null || { ct journalctl -u pgpitr-zfs-second -n 30 --no-pager >&2; fail "zfs unit not active"; }
  local zfs_t srv_t
  zfs_t="$(ctl show -p ActiveEnterTimestampMonotonic --value pgpitr-zfs-second.service)"
  srv_t="$(ctl show -p ExecMainStartTimestampMonotonic --value postgresql-second.service)"
  [ "$zfs_t" -lt "$srv_t" ] || fail "datasets ($zfs_t) after the server ($srv_t)"
  local props
  props="$(ct zfs get -H -o name,property,value recordsize,mountpoint rig/pg/second rig/pg/second-wal)"
  assert_contains "$props" "rig/pg/second	recordsize	8K" "data dataset"
  assert_contains "$props" "rig/pg/second	mountpoint	/var/lib/postgresql/second" "data dataset"
  assert_contains "$props" "rig/pg/second-wal	mountpoint	/var/lib/postgresql/second-wal-archive" "wal dataset"
  local fs
  fs="$(ct findmnt -n -o FSTYPE -T /var/lib/postgresql/second/PG_VERSION)"
  assert_contains "$fs" "fuse" "file system of second's data"
}
