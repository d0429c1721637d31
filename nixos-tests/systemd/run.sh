#!/usr/bin/env bash
# The real-systemd rig (issue 10): renders the NixOS module's units, tmpfiles rules and
# config files from its plain-Nix core (render.nix, rig.nix), installs them into a Debian 12
# root file system (rootfs.sh, cached), boots it with systemd-nspawn and runs every scenario
# in scenarios/ against that systemd. Always powers the container off on exit.
#
#   nixos-tests/systemd/run.sh [SCENARIO...]       (as root; default: all, in file order)
# Env: PGPITR_RIG_BIN_DIR  built binaries (default: target/debug, as `cargo build --workspace --bins`)
#      PGPITR_RIG_CACHE    root file system cache (default /var/cache/pgpitr-rig)
#      PGPITR_RIG_KEEP=1   keep the run folder for inspection
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
. "$here/lib.sh"

[ "$(id -u)" -eq 0 ] || { echo "rig: run as root (it boots a container)" >&2; exit 1; }
for c in debootstrap systemd-nspawn nsenter nix-instantiate age-keygen; do
  if ! command -v "$c" >/dev/null 2>&1; then
    case "$c" in
      age-keygen) echo "rig: \`$c\` is missing. Install it with: apt-get install -y age" >&2 ;;
      nix-instantiate) echo "rig: \`$c\` is missing. Install it with: apt-get install -y nix-bin" >&2 ;;
      nsenter) echo "rig: \`$c\` is missing. Install it with: apt-get install -y util-linux" >&2 ;;
      *) echo "rig: \`$c\` is missing. Install it with: apt-get install -y debootstrap systemd-container" >&2 ;;
    esac
    exit 1
  fi
done
NODE_EXPORTER="$(command -v prometheus-node-exporter || command -v node_exporter || true)"
[ -n "$NODE_EXPORTER" ] || { echo "rig: node_exporter is missing. Install it with: apt-get install -y prometheus-node-exporter" >&2; exit 1; }
BIN_DIR="${PGPITR_RIG_BIN_DIR:-$repo/target/debug}"
for b in pgpitr archive-wal restore-wal basebackup walprune healthcheck provision-dbs offsite-sync preseed; do
  [ -x "$BIN_DIR/$b" ] || { echo "rig: $BIN_DIR/$b is missing: run \`cargo build --workspace --bins\` first (or set PGPITR_RIG_BIN_DIR)" >&2; exit 1; }
done

t0=$(date +%s)
rootfs="$("$here/rootfs.sh")"
RUN="$(mktemp -d /var/tmp/pgpitr-rig.XXXXXX)"
ROOT="$RUN/root"
NSPAWN_PID=""
CT_PID=""
MOUNTED=0

stop_container() {
  [ -n "$NSPAWN_PID" ] || return 0
  if kill -0 "$NSPAWN_PID" 2>/dev/null; then
    [ -n "$CT_PID" ] && nsenter -t "$CT_PID" -a systemctl poweroff --no-block >/dev/null 2>&1 || true
    for _ in $(seq 1 100); do kill -0 "$NSPAWN_PID" 2>/dev/null || break; sleep 0.2; done
    if kill -0 "$NSPAWN_PID" 2>/dev/null; then
      log "container did not power off in 20 s: killing it"
      # Killing its PID 1 ends every process of the container's PID namespace.
      [ -n "$CT_PID" ] && kill -KILL "$CT_PID" 2>/dev/null || true
      kill -KILL "$NSPAWN_PID" 2>/dev/null || true
    fi
  fi
  wait "$NSPAWN_PID" 2>/dev/null || true
  NSPAWN_PID=""; CT_PID=""
}
cleanup() {
  local rc=$?
  stop_container
  [ "$MOUNTED" = 1 ] && umount "$ROOT" 2>/dev/null || true
  if [ "${PGPITR_RIG_KEEP:-0}" = 1 ] || [ "$rc" -ne 0 ]; then
    log "run folder kept: $RUN (the container's changes in $RUN/upper, journal in $RUN/upper/var/log/journal)"
  else
    rm -rf "$RUN"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The cached root file system stays untouched: each run writes into an overlay on top of it.
mkdir -p "$ROOT" "$RUN/upper" "$RUN/work"
mount -t overlay pgpitr-rig -o "lowerdir=$rootfs,upperdir=$RUN/upper,workdir=$RUN/work" "$ROOT"
MOUNTED=1
# The identity of the encrypted instance `sealed`: made fresh for each run, root-only.
mkdir -p "$ROOT/etc/pgpitr-rig-secrets"
(umask 077; age-keygen -o "$ROOT/etc/pgpitr-rig-secrets/age-identity" 2>/dev/null)
sealed_recipient="$(age-keygen -y "$ROOT/etc/pgpitr-rig-secrets/age-identity")"
install_script="$(nix-instantiate --eval --read-write-mode "$here/rig.nix" \
  --argstr sealedRecipient "$sealed_recipient" | tr -d '"')"
sh "$install_script" "$ROOT"
mkdir -p "$ROOT/opt/pgpitr/bin" "$ROOT/var/lib/pgpitr-rig/zpool"
truncate -s 1G "$ROOT/var/lib/pgpitr-rig/zpool/disk"
# Secrets: root-only files, read by PID 1 (LoadCredential=), never by the postgres uid.
head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$ROOT/etc/pgpitr-rig-secrets/restic-password"
head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$ROOT/etc/pgpitr-rig-secrets/app-password"
chmod 0700 "$ROOT/etc/pgpitr-rig-secrets"
chmod 0400 "$ROOT"/etc/pgpitr-rig-secrets/*
# The restic repository, made by the operator before the first off-site run.
for repo in restic restic-sealed; do
  chroot "$ROOT" sh -c "mkdir -p /var/lib/pgpitr-rig/$repo && \
    RESTIC_PASSWORD_FILE=/etc/pgpitr-rig-secrets/restic-password restic -q init -r /var/lib/pgpitr-rig/$repo >/dev/null && \
    chown -R postgres:postgres /var/lib/pgpitr-rig/$repo"
done
# The container gets the sys-* mounts read-only; no getty on the console.
chroot "$ROOT" systemctl mask console-getty.service systemd-networkd-wait-online.service >/dev/null 2>&1 || true

boot() {
  systemd-nspawn --quiet --register=no --keep-unit -D "$ROOT" --boot --console=pipe \
    --private-network --bind=/dev/fuse \
    --bind-ro="$BIN_DIR:/opt/pgpitr/bin" </dev/null >>"$RUN/console.log" 2>&1 &
  NSPAWN_PID=$!
  local i
  for ((i = 0; i < 150; i++)); do
    # The container's PID 1 is nspawn's child named systemd.
    CT_PID="$(ps -o pid=,comm= --ppid "$NSPAWN_PID" 2>/dev/null | awk '$2 == "systemd" {print $1; exit}' || true)"
    [ -n "$CT_PID" ] && nsenter -t "$CT_PID" -a true 2>/dev/null && break
    CT_PID=""
    sleep 0.2
  done
  [ -n "$CT_PID" ] || { cat "$RUN/console.log" >&2; fail "the container did not start"; return 1; }
  local state=""
  # systemctl answers once PID 1 listens on its socket; then wait for the boot to finish.
  for ((i = 0; i < 150; i++)); do
    state="$(nsenter -t "$CT_PID" -a systemctl is-system-running 2>/dev/null || true)"
    [ -n "$state" ] && break
    sleep 0.2
  done
  # A reboot's boot includes preseed's replay and its follow-up backup: give it minutes.
  state="$(timeout 600 nsenter -t "$CT_PID" -a systemctl is-system-running --wait 2>/dev/null || true)"
  log "booted in the container: system $state"
  echo "$NSPAWN_PID $CT_PID" >"$RUN/pids"
  if [ "$state" != running ] && [ "$state" != degraded ]; then
    ctl --failed --no-pager >&2 || true
    ctl list-jobs --no-pager >&2 || true
    fail "boot did not finish: $state"; return 1
  fi
}
# A reboot as a user does it: poweroff, then boot the same root file system again.
reboot_container() { stop_container; boot; }

boot

scenarios=()
for f in "$here"/scenarios/*.sh; do
  n="$(basename "$f" .sh)"; n="${n#[0-9][0-9]-}"
  if [ $# -eq 0 ] || printf '%s\n' "$@" | grep -qx "$n"; then scenarios+=("$f"); fi
done
failed=()
for f in "${scenarios[@]}"; do
  . "$f"
  n="$(basename "$f" .sh)"; n="${n#[0-9][0-9]-}"
  s=$(date +%s)
  # A subshell with errexit, so every failing command fails the scenario; a scenario that
  # reboots hands the new container's PIDs back through $RUN/pids.
  set +e
  ( set -e; "scenario_${n//-/_}" )
  rc=$?
  set -e
  read -r NSPAWN_PID CT_PID <"$RUN/pids"
  if [ "$rc" -eq 0 ]; then
    log "ok   $n ($(( $(date +%s) - s )) s)"
  else
    log "FAIL $n ($(( $(date +%s) - s )) s)"
    failed+=("$n")
  fi
done
log "total $(( $(date +%s) - t0 )) s, ${#scenarios[@]} scenarios, ${#failed[@]} failed ${failed[*]:-}"
[ ${#failed[@]} -eq 0 ]
