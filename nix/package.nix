# The whole workspace (every binary: archive-wal, restore-wal, basebackup, healthcheck,
# walprune, provision-dbs, offsite-sync, pgpitr), built from Cargo.lock.
{ lib, rustPlatform }:
let
  cargoToml = builtins.fromTOML (builtins.readFile ../Cargo.toml);
in
rustPlatform.buildRustPackage {
  pname = "pgpitr";
  inherit (cargoToml.workspace.package) version;

  src = lib.fileset.toSource {
    root = ../.;
    fileset = lib.fileset.unions [ ../Cargo.toml ../Cargo.lock ../crates ];
  };
  cargoLock.lockFile = ../Cargo.lock;

  # pgpitr-integration's tests start real PostgreSQL servers (initdb, pg_ctl, as the postgres
  # user), call age, zstd and nix-instantiate, and need the built binaries in target/debug:
  # none of that exists in the build sandbox. They run in CI (scripts/test.sh) and the
  # NixOS VM tests (nixos-tests/) exercise the packaged binaries against a real server.
  # Every other crate's tests are pure and run here.
  cargoTestFlags = [ "--workspace" "--exclude" "pgpitr-integration" ];

  meta = {
    description = "Point-in-time recovery for self-hosted PostgreSQL";
    license = lib.licenses.asl20;
    mainProgram = "pgpitr";
    platforms = lib.platforms.linux;
  };
}
