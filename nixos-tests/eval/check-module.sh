#!/usr/bin/env bash
# Hand-run check (not in CI): evaluates the whole NixOS module with nixpkgs' lib.evalModules
# for the example configuration of docs/nixos.md and for each assertion. With NIXPKGS naming a
# nixpkgs checkout (one with nixos/lib/systemd-lib.nix), it also compares the rig's own unit
# rendering with nixpkgs' (compare-units.nix) and fails on any difference not accepted there.
#
#   NIXPKGS_LIB=/tmp/nixpkgs-lib/lib bash nixos-tests/eval/check-module.sh
#   NIXPKGS=/path/to/nixpkgs bash nixos-tests/eval/check-module.sh   (NIXPKGS_LIB defaults to $NIXPKGS/lib)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
if [ -n "${NIXPKGS:-}" ] && [ -z "${NIXPKGS_LIB:-}" ]; then NIXPKGS_LIB="$NIXPKGS/lib"; fi
if [ -z "${NIXPKGS_LIB:-}" ]; then
  cat >&2 <<'MSG'
check-module.sh: NIXPKGS_LIB is unset. It must name a nixpkgs `lib` folder, for example:
  git clone https://github.com/nix-community/nixpkgs.lib /tmp/nixpkgs.lib   # or any nixpkgs checkout
  NIXPKGS_LIB=/tmp/nixpkgs.lib/lib bash nixos-tests/eval/check-module.sh
(with a full nixpkgs checkout: NIXPKGS_LIB=/path/to/nixpkgs/lib)
MSG
  exit 2
fi
if [ ! -f "$NIXPKGS_LIB/default.nix" ] || [ ! -f "$NIXPKGS_LIB/modules.nix" ]; then
  echo "check-module.sh: NIXPKGS_LIB=$NIXPKGS_LIB is not a nixpkgs lib folder (no default.nix and modules.nix)" >&2
  exit 2
fi
command -v nix-instantiate >/dev/null || {
  echo "check-module.sh: nix-instantiate is missing: apt-get install -y nix-bin" >&2
  exit 2
}
nix-instantiate --eval --strict --json "$here/module-eval.nix" \
  --arg nixpkgsLib "$(cd "$NIXPKGS_LIB" && pwd)"
echo
if [ -n "${NIXPKGS:-}" ]; then
  systemd_lib="$NIXPKGS/nixos/lib/systemd-lib.nix"
  [ -f "$systemd_lib" ] || { echo "check-module.sh: NIXPKGS=$NIXPKGS has no nixos/lib/systemd-lib.nix" >&2; exit 2; }
  result="$(nix-instantiate --eval --strict --json "$here/compare-units.nix" \
    --arg nixpkgsLib "$(cd "$NIXPKGS_LIB" && pwd)" --arg systemdLib "$(cd "$(dirname "$systemd_lib")" && pwd)/systemd-lib.nix")"
  echo "$result"
  echo
  case "$result" in
    *'"differences":[]'*'"missing":[]'* | *'"missing":[]'*'"differences":[]'*)
      echo "check-module.sh: the rig's units match nixpkgs' systemd-lib.nix rendering (accepted differences only)" ;;
    *) echo "check-module.sh: the rig's units differ from nixpkgs' systemd-lib.nix rendering (see differences/missing above)" >&2; exit 1 ;;
  esac
else
  echo "check-module.sh: NIXPKGS unset: unit texts not compared with nixpkgs' systemd-lib.nix"
fi
echo "check-module.sh: ok"
