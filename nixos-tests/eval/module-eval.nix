# Evaluates the whole NixOS module with nixpkgs' lib.evalModules, without nixpkgs itself:
# stand-ins declare the NixOS options the module writes (as attrsOf anything) and fake
# packages replace derivations. Run by ./check-module.sh (not in CI: CI has no nixpkgs lib).
{ nixpkgsLib }:
let
  lib = import nixpkgsLib;
  inherit (lib) mkOption types;

  fakePkg = pname: version: {
    type = "derivation";
    name = "${pname}-${version}";
    inherit pname version;
    outPath = "/nix/store/${builtins.substring 0 32 (builtins.hashString "sha256" pname)}-${pname}-${version}";
    meta = { };
  };
  pkgs = {
    pgpitr = fakePkg "pgpitr" "0.1.0";
    restic = fakePkg "restic" "0.17.3";
    postgresql = fakePkg "postgresql" "16.4";
    postgresql_13 = fakePkg "postgresql" "13.16";
    postgresql_14 = fakePkg "postgresql" "14.13";
    postgresql_15 = fakePkg "postgresql" "15.8";
    postgresql_16 = fakePkg "postgresql" "16.4";
    postgresql_17 = fakePkg "postgresql" "17.0";
    postgresql_18 = fakePkg "postgresql" "18.0";
    runCommand = name: _env: _script: fakePkg name "checked";
  };

  # The NixOS options the module sets, as loose stand-ins (never part of the module).
  standIns = {
    options = {
      assertions = mkOption { type = types.listOf types.anything; default = [ ]; };
      warnings = mkOption { type = types.listOf types.str; default = [ ]; };
      users.users = mkOption { type = types.attrsOf types.anything; default = { }; };
      users.groups = mkOption { type = types.attrsOf types.anything; default = { }; };
      environment.etc = mkOption { type = types.attrsOf types.anything; default = { }; };
      environment.systemPackages = mkOption { type = types.listOf types.anything; default = [ ]; };
      systemd.services = mkOption { type = types.attrsOf types.anything; default = { }; };
      systemd.timers = mkOption { type = types.attrsOf types.anything; default = { }; };
      systemd.tmpfiles.rules = mkOption { type = types.listOf types.str; default = [ ]; };
      boot.supportedFilesystems = mkOption { type = types.attrsOf types.bool; default = { }; };
      system.stateVersion = mkOption { type = types.str; default = "25.11"; };
      services.postgresql.enable = mkOption { type = types.bool; default = false; };
    };
  };

  eval = modules: lib.evalModules {
    modules = [ standIns ../../nixos-modules { _module.args = { inherit pkgs; }; } ] ++ modules;
  };
  failed = c: map (a: a.message) (builtins.filter (a: !a.assertion) c.assertions);

  # The documented example: no assertion fails, the expected units and files exist.
  example = (eval [ ./example.nix ]).config;
  expectUnits = [
    "postgresql-main" "postgresql-basebackup-main" "postgresql-walprune-main"
    "postgresql-healthcheck-main" "postgresql-database-provisioning-main" "pgpitr-offsite-main"
    "postgresql-legacy" "postgresql-basebackup-legacy" "postgresql-healthcheck-legacy"
  ];
  expectTimers = [
    "postgresql-basebackup-main" "postgresql-walprune-main" "postgresql-healthcheck-main"
    "pgpitr-offsite-main" "postgresql-basebackup-legacy" "postgresql-healthcheck-legacy"
  ];
  missing = want: have: builtins.filter (u: !(have ? ${u})) want;
  exampleProblems =
    (map (m: "example: assertion failed: ${m}") (failed example))
    ++ map (u: "example: no systemd.services.${u}") (missing expectUnits example.systemd.services)
    ++ map (u: "example: no systemd.timers.${u}") (missing expectTimers example.systemd.timers)
    ++ map (f: "example: no environment.etc.${f}") (missing [ "pgpitr/main.json" "pgpitr/legacy.json" "pgpitr/main/postgresql.conf" ] example.environment.etc)
    ++ lib.optional (!(lib.hasInfix "-postgresql-15.8/bin/postgres" example.systemd.services.postgresql-legacy.serviceConfig.ExecStart))
      "example: legacy does not run PostgreSQL 15";

  # Each assertion: a configuration that must fail it, with a piece of the expected message.
  base = { services.pgpitr.instances.main = { }; };
  assertionCases = {
    duplicatePorts = {
      config = { services.pgpitr.instances = { a.port = 5440; b.port = 5440; }; };
      expect = "port 5440 is used by a, b";
    };
    zfsWithoutSupport = {
      config = { services.pgpitr.instances.main.zfs = { enable = true; dataDataset = "t/d"; walDataset = "t/w"; }; };
      expect = "needs ZFS support";
    };
    zfsDatasets = {
      config = { boot.supportedFilesystems.zfs = true; services.pgpitr.instances.main.zfs.enable = true; };
      expect = "dataDataset and walDataset must both be set";
    };
    identityWithoutRecipients = {
      config = { services.pgpitr.instances.main.backup.encryption.identityFile = "/run/keys/k.age"; };
      expect = "recipients is empty";
    };
    badRecipient = {
      config = { services.pgpitr.instances.main.backup.encryption.recipients = [ "ssh-ed25519 AAAA" ]; };
      expect = "must be age X25519 recipients";
    };
    resticIncomplete = {
      config = { services.pgpitr.instances.main.backup.restic.enable = true; };
      expect = "repository and passwordFile must be set";
    };
    managedSetting = {
      config = { services.pgpitr.instances.main.settings.archive_command = "cp %p /tmp/%f"; };
      expect = "sets archive_command, which the module manages";
    };
    badName = {
      config = { services.pgpitr.instances."my db" = { }; };
      expect = "may only contain letters";
    };
    besideUpstream = {
      config = lib.recursiveUpdate base { services.postgresql.enable = true; };
      expect = "cannot run on the same host";
    };
    versionAndPackage = {
      config = { services.pgpitr.instances.main = { version = "15"; package = pkgs.postgresql_16; }; };
      expect = "version = \"15\" but package is PostgreSQL 16";
    };
  };

  # Issue 10: the default major follows system.stateVersion (not pkgs.postgresql), the
  # instance's own psql is installed, and "13" is no longer a version.
  serverOf = c: (eval [ c ]).config.systemd.services.postgresql-main.serviceConfig.ExecStart;
  versionProblems =
    lib.optional (!(lib.hasInfix "-postgresql-17.0/bin/postgres" (serverOf (base // { system.stateVersion = "25.11"; }))))
      "stateVersion 25.11 does not default to PostgreSQL 17"
    ++ lib.optional (!(lib.hasInfix "-postgresql-16.4/bin/postgres" (serverOf (base // { system.stateVersion = "24.11"; }))))
      "stateVersion 24.11 does not default to PostgreSQL 16"
    ++ lib.optional (!(lib.hasInfix "-postgresql-15.8/bin/postgres" (serverOf (base // { system.stateVersion = "23.11"; }))))
      "stateVersion 23.11 does not default to PostgreSQL 15"
    ++ lib.optional (!(builtins.elem "postgresql-17.0" (map (p: p.name) (eval [ base ]).config.environment.systemPackages)))
      "the instance's PostgreSQL (psql) is not in environment.systemPackages"
    ++ lib.optional (builtins.tryEval (builtins.deepSeq
        (serverOf { services.pgpitr.instances.main.version = "13"; }) true)).success
      "version \"13\" (removed from nixpkgs 25.11) is accepted";
  caseProblems = lib.concatLists (lib.mapAttrsToList (name: c:
    let msgs = failed (eval [ c.config ]).config;
    in lib.optional (!(builtins.any (m: lib.hasInfix c.expect m) msgs))
      "assertion case ${name}: expected a failed assertion containing \"${c.expect}\", got: ${builtins.toJSON msgs}")
    assertionCases);

  # A store path as identity file is refused by the option type itself (types.externalPath).
  storeIdentity = builtins.tryEval (builtins.deepSeq
    (eval [ (base // { services.pgpitr.instances.main.backup.encryption = {
      recipients = [ "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p" ];
      identityFile = "${builtins.storeDir}/00000000000000000000000000000000-key.age";
    }; }) ]).config.assertions true);
  storeProblems = lib.optional (storeIdentity.success && !(builtins.any (m: lib.hasInfix "is in the Nix store" m)
      (failed (eval [ { services.pgpitr.instances.main.backup.encryption = {
        recipients = [ "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p" ];
        identityFile = "${builtins.storeDir}/00000000000000000000000000000000-key.age";
      }; } ]).config)))
    "identity file in the store: neither the option type nor an assertion refused it";

  problems = exampleProblems ++ caseProblems ++ storeProblems ++ versionProblems;
in
if problems == [ ] then {
  ok = true;
  exampleUnits = builtins.attrNames example.systemd.services;
  exampleTimers = builtins.attrNames example.systemd.timers;
  assertionCases = builtins.attrNames assertionCases;
}
else throw ("module evaluation check failed:\n  " + lib.concatStringsSep "\n  " problems)
