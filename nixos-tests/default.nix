# NixOS VM tests of the pgpitr module (need KVM). Run all with `nix flake check`, or one with
#   nix build .#checks.x86_64-linux.pgpitr-single -L
# The checks themselves live in the Rust tools the tests call (pgpitr restore validates the
# window and the WAL chain, healthcheck, walprune, provision-dbs); the scripts only drive them.
{ pkgs, module }:
let
  common = import ./common.nix;
  mk = file: pkgs.testers.runNixOSTest (import file { inherit module common; });
in
{
  pgpitr-single = mk ./single.nix;
  pgpitr-multi = mk ./multi.nix;
  pgpitr-provisioning = mk ./provisioning.nix;
  pgpitr-retention = mk ./retention.nix;
}
