# Helpers for the rig's scenarios (sourced by run.sh). A scenario is one file in scenarios/
# defining `scenario_<name>` (the file name without its NN- prefix, '-' becoming '_'); it
# drives the booted container through these helpers and fails with `fail MESSAGE`.

fail() { echo "FAIL: $*" >&2; return 1; }
log() { echo "rig: $*" >&2; }

# Runs a command inside the container (all namespaces of its PID 1).
ct() { nsenter -t "$CT_PID" -a "$@"; }
ctl() { ct systemctl "$@"; }
# psql as postgres inside the container, on an instance's port; prints unaligned tuples.
psql_ct() {
  local port="$1"; shift
  ct runuser -u postgres -- /usr/lib/postgresql/15/bin/psql -X -q -v ON_ERROR_STOP=1 -At \
    -h /run/postgresql -p "$port" "$@"
}

# Starts a oneshot unit and fails with its journal when it does not succeed.
start_ok() {
  local u="$1"
  if ! ctl start "$u"; then
    ct journalctl -u "$u" -n 40 --no-pager >&2 || true
    fail "$u did not succeed"
    return 1
  fi
}
# Waits up to $2 seconds (default 30) for a unit to be active.
wait_active() {
  local u="$1" t="${2:-30}" i
  for ((i = 0; i < t * 5; i++)); do
    [ "$(ctl is-active "$u" 2>/dev/null)" = active ] && return 0
    sleep 0.2
  done
  ctl status "$u" --no-pager -n 30 >&2 || true
  fail "$u not active after ${t}s"
}
# Waits up to $2 seconds for a line in the OnFailure= log naming unit $1.
wait_failure_logged() {
  local u="$1" t="${2:-30}" i
  for ((i = 0; i < t * 5; i++)); do
    grep -qx "$u" "$ROOT/var/lib/pgpitr-rig/failed.log" 2>/dev/null && return 0
    sleep 0.2
  done
  fail "OnFailure= never ran for $u (failed.log: $(cat "$ROOT/var/lib/pgpitr-rig/failed.log" 2>/dev/null))"
}
assert_contains() {
  local hay="$1" needle="$2" what="$3"
  case "$hay" in *"$needle"*) return 0 ;; esac
  fail "$what: expected to contain '$needle', got: $hay"
}

# switch_and_wait_archived PORT MESSAGE: switches the server's WAL segment and waits up to 20 s
# until that very segment is archived (its status is .done, or the archiver has passed it);
# fails with MESSAGE otherwise. A count of archived files would also move for a segment
# archive_timeout switched just before, while this one is still waiting.
switch_and_wait_archived() {
  local port=$1 seg n
  seg="$(psql_ct "$port" -c 'select pg_walfile_name(pg_switch_wal())')"
  for ((n = 0; n < 100; n++)); do
    [ "$(psql_ct "$port" -c "select exists (select 1 from pg_ls_archive_statusdir() where name = '$seg.done')
        or coalesce(substr(last_archived_wal, 1, 24) >= '$seg' and length(last_archived_wal) >= 24, false)
        from pg_stat_archiver")" = t ] && return 0
    sleep 0.2
  done
  fail "$2 (segment $seg)"
}
