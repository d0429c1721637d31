# tmpfiles: every folder between /var/lib (etc.) and the instances' folders is declared, so
# a postgres-owned /var/lib/postgresql (as Debian's package leaves it) is no unsafe path
# transition.
scenario_tmpfiles() {
  [ "$(stat -c %U "$ROOT/var/lib/postgresql")" = postgres ] || fail "/var/lib/postgresql not owned by postgres"
  local out
  out="$(ct systemd-tmpfiles --create /etc/tmpfiles.d/pgpitr.conf 2>&1)" || fail "systemd-tmpfiles failed: $out"
  case "$out" in *unsafe*) fail "tmpfiles: $out" ;; esac
  out="$(ct journalctl -b -u systemd-tmpfiles-setup.service --no-pager -o cat)"
  case "$out" in *unsafe*) fail "tmpfiles at boot: $out" ;; esac
}
