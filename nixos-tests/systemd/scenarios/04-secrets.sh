# Secrets: the source files are root-only and the jobs got them through LoadCredential=;
# neither the postgres uid nor a superuser's pg_read_file() reaches them, and the server's
# mount namespace has no /run/credentials at all.
scenario_secrets() {
  local f=/etc/pgpitr-rig-secrets/restic-password
  if ct runuser -u postgres -- cat "$f" >/dev/null 2>&1; then fail "postgres can read $f"; fi
  if psql_ct 5432 -c "select pg_read_file('$f')" >/dev/null 2>&1; then fail "pg_read_file reads $f"; fi
  grep -q '/run/credentials/pgpitr-offsite-main.service/restic-password' "$ROOT/etc/pgpitr/main.json" \
    || fail "main.json does not point at the credential"
  if grep -q '/etc/pgpitr-rig-secrets' "$ROOT/etc/pgpitr/main.json"; then fail "main.json names the secret source"; fi
  local pid
  pid="$(ctl show -p MainPID --value postgresql-main.service)"
  # $pid is a PID of the container's namespace: enter from inside it.
  [ -n "$pid" ] && [ "$pid" != 0 ] || fail "postgresql-main has no main PID"
  ct nsenter -t "$pid" -m true || fail "cannot enter the server's mount namespace"
  # While a job runs, its credential exists; the server cannot read it, and from the server's
  # mount namespace (InaccessiblePaths=) it is not even there, for root either.
  # A queued start is not yet "activating": the run is over only once the unit got a new
  # invocation and has left "activating".
  local inv_before inv state
  inv_before="$(ctl show -p InvocationID --value pgpitr-offsite-main.service)"
  ctl start --no-block pgpitr-offsite-main.service
  local n seen=0
  for ((n = 0; n < 100; n++)); do
    if ct test -e /run/credentials/pgpitr-offsite-main.service/restic-password; then
      seen=1
      if ct nsenter -t "$pid" -m test -e /run/credentials/pgpitr-offsite-main.service/restic-password; then
        fail "the off-site credential is visible in the server's mount namespace"
      fi
    fi
    if psql_ct 5432 -c "select pg_read_file('/run/credentials/pgpitr-offsite-main.service/restic-password')" >/dev/null 2>&1; then
      fail "pg_read_file reads the off-site credential"
    fi
    state="$(ctl is-active pgpitr-offsite-main.service || true)"
    inv="$(ctl show -p InvocationID --value pgpitr-offsite-main.service)"
    [ "$state" != activating ] && [ "$inv" != "$inv_before" ] && break
    sleep 0.1
  done
  [ "$seen" = 1 ] || fail "the off-site credential never appeared under /run/credentials"
  # The provisioning job read the owner password from its credential: app can log in.
  local pw
  pw="$(cat "$ROOT/etc/pgpitr-rig-secrets/app-password")"
  ct env PGPASSWORD="$pw" /usr/lib/postgresql/15/bin/psql -X -At -h 127.0.0.1 -p 5432 -U app -d app -c 'select 1' >/dev/null \
    || fail "app cannot log in with its provisioned password"
}
