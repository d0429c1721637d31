# Shared by the benchmarks that need a throw-away PostgreSQL cluster.
# After `bench_cluster NAME`: $work is a fresh folder (removed on exit, server stopped),
# $work/data a cluster listening only on the socket in $work/sock; as_pg runs a command as
# the server's account when we are root (PostgreSQL refuses root).
BIN=/usr/lib/postgresql/15/bin
as_pg() { if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
bench_cluster() { # NAME [extra postgresql.conf lines]
  work=$(mktemp -d "/tmp/pgpitr-bench-$1.XXXXXX")
  chmod 755 "$work"
  trap 'as_pg "$BIN/pg_ctl" stop -D "$work/data" -m immediate >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
  mkdir -p "$work/sock"
  [ "$(id -u)" -eq 0 ] && chown -R postgres:postgres "$work"
  as_pg "$BIN/initdb" -D "$work/data" -U postgres --auth=trust >/dev/null
  printf "listen_addresses = ''\nunix_socket_directories = '%s'\n%s\n" "$work/sock" "${2:-}" >> "$work/data/postgresql.conf"
  as_pg "$BIN/pg_ctl" start -D "$work/data" -l "$work/server.log" -w >/dev/null
}
