#!/usr/bin/env bash
# Hand-run check (not in CI): evaluates the whole NixOS module with nixpkgs' lib.evalModules
# for the example configuration of docs/nixos.md and for each assertion.
#
#   NIXPKGS_LIB=/tmp/nixpkgs-lib/lib bash nixos-tests/eval/check-module.sh
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
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
echo "check-module.sh: ok"
