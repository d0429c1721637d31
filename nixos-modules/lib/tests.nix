# Instance definitions evaluated by CI (crates/pgpitr-integration/tests/nix.rs) with
#   nix-instantiate --eval --strict --json nixos-modules/lib/tests.nix
# The Rust test asserts on units, ordering, timers and hardening, and runs
# `pgpitr config check` on every generated config file.
#
# `contract = true` cases produce only keys the Rust schema knows today, so their config must
# pass `pgpitr config check`. `contract = false` cases use options whose keys are pending
# schema support (docs/nixos.md); their config may only be rejected for a pending key.
let
  pgpitrLib = import ./. { };
  paths = {
    pgpitr = "/nix/store/00000000000000000000000000000000-pgpitr-0.1.0";
    postgresql = "/nix/store/11111111111111111111111111111111-postgresql-16.4";
    restic = "/nix/store/22222222222222222222222222222222-restic-0.17.3";
  };
  paths15 = paths // {
    postgresql = "/nix/store/33333333333333333333333333333333-postgresql-15.8";
  };

  case = { name, instance, contract, pgMajor ? "16", p ? paths }:
    let r = pgpitrLib.mkInstance { inherit name instance pgMajor; paths = p; };
    in {
      inherit contract pgMajor;
      inherit (r) configFile configPath services timers tmpfiles postgresqlConf postgresqlConfText
        hbaText pendingKeys units etc databasesHash;
      paths = p;
    };

  instances = {
    # Nothing but the name: every default.
    main = { };
    # Most options that map onto keys the Rust schema knows.
    full = {
      port = 5433;
      dataDir = "/srv/pg/full";
      sharedBuffers = "2GB";
      effectiveCacheSize = "6GB";
      workMem = "16MB";
      maintenanceWorkMem = "512MB";
      maxConnections = 200;
      settings = {
        log_min_duration_statement = 250;
        jit = false;
        search_path = "\"$user\", public";
      };
      authentication = "host app app 10.0.0.0/8 scram-sha-256";
      backup = {
        walArchive = { dir = "/srv/wal/full"; level = 9; };
        baseBackup = { dir = "/srv/backup/full"; schedule = "*-*-* 02:30:00"; };
        encryption = {
          recipients = [ "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p" ];
          identityFile = "/run/keys/full.age";
        };
      };
      healthCheck = {
        interval = "*:0/2";
        # Every [health] key, so the contract test sees the module can write all of them.
        settings = {
          archive_max_age_seconds = 600;
          ready_segments_max = 8;
          backup_max_age_seconds = 90000;
          min_free_percent = 15.0;
          connect_timeout_seconds = 3;
        };
      };
      monitoring = { enable = true; textfileDir = "/var/lib/node-exporter-textfiles"; };
      onFailure = [ "notify-admin@%n.service" ];
    };
    # An older PostgreSQL beside it, no base backups, no health timer.
    legacy = {
      port = 5434;
      backup.baseBackup.enable = false;
      backup.walArchive.compression = "none";
      healthCheck.enable = false;
    };
    # Options whose config keys await schema support.
    pending = {
      port = 5435;
      backup.walArchive.retentionDays = 14;
      backup.retention = { keepLast = 3; keepDaily = 7; keepWeekly = 4; };
      backup.restic = {
        enable = true;
        repository = "/mnt/offsite/pending";
        passwordFile = "/run/keys/restic-pending";
        environmentFile = "/run/keys/restic-pending.env";
      };
      databases.app = {
        owner = "app";
        ownerPasswordFile = "/run/keys/app-db";
        extensions = [ "pg_trgm" ];
        connectionLimit = 50;
      };
      zfs = {
        enable = true;
        dataDataset = "tank/pg/pending";
        walDataset = "tank/pg/pending-wal";
        properties = { wal = { recordsize = "128K"; }; };
      };
      onFailure = [ "page-oncall.service" ];
    };
    # The restore drill alone: the schema knows [drill], so this config must pass the check
    # (heartbeat_interval_seconds derived from healthCheck.interval).
    drilled = {
      port = 5437;
      healthCheck.interval = "*:0/10";
      monitoring.enable = true;
      drill = { enable = true; port = 15437; from = "local"; };
    };
    # The restore drill and preseed with every [preseed] key: the schema knows them, so this
    # config must pass the check.
    drill = {
      port = 5436;
      drill = { enable = true; port = 5499; from = "offsite"; };
      preseed = {
        enable = true;
        methods = [ "syncoid" "local" "archive" ];
        initdbArgs = [ "--locale=C.UTF-8" ];
        recoveryTimeoutSeconds = 600;
        syncoid = { source = "old-host:tank/pg/drill"; bin = "/run/current-system/sw/bin/syncoid"; options = [ "--sshkey=/run/keys/replica" ]; };
      };
      zfs = { enable = true; dataDataset = "tank/pg/drill"; walDataset = "tank/pg/drill-wal"; };
    };
  };

  # Issue 10: one definition per defect found under real systemd, so each fix is pinned here
  # (the rig in nixos-tests/systemd/ proves the same under systemd).
  mk = name: instance: pgpitrLib.mkInstance {
    inherit name instance;
    paths = paths // { zfs = "/nix/store/55555555555555555555555555555555-zfs-2.3.4"; };
    pgMajor = "16";
  };
  serverOf = name: instance: (mk name instance).services."postgresql-${name}";
  defects = {
    hba = (mk "main" { }).hbaText;
    zfs = {
      services = (mk "main" {
        zfs = { enable = true; dataDataset = "tank/z"; walDataset = "tank/z-wal"; };
      }).services;
    };
    defaultDirs = (mk "main" { }).configFile;
    preStart = (serverOf "main" { }).preStart;
    startLimit = (serverOf "main" { }).unitConfig or { };
    restartSec = (serverOf "main" { }).serviceConfig.RestartSec;
    tmpfiles = (mk "main" { }).tmpfiles;
    tmpfilesSrv = (mk "srv" {
      dataDir = "/srv/pg/a/data";
      backup.walArchive.dir = "/srv/pg/a/wal";
      backup.baseBackup.dir = "/srv/backup/a";
    }).tmpfiles;
    packages = (mk "main" { }).packages;
    upstream = assertionFailures { instances.main = { }; upstreamPostgresql = true; };
    supportedMajors = pgpitrLib.supportedMajors;
    defaultMajors = map pgpitrLib.defaultMajorFor [ "26.05" "25.11" "25.05" "24.11" "24.05" "23.11" "22.05" "21.11" ];
    unsupportedMajor = assertionFailures { instances.main = { }; pgMajors.main = "13"; };
    # Same settings but one restart-only (shared_buffers) or one reload-only (work_mem) change.
    triggers = {
      base = serverOf "main" { };
      sharedBuffers = serverOf "main" { sharedBuffers = "1GB"; };
      maxConnections = serverOf "main" { maxConnections = 500; };
      walLevel = serverOf "main" { settings.wal_level = "logical"; };
      preload = serverOf "main" { settings.shared_preload_libraries = [ "pg_stat_statements" ]; };
      workMem = serverOf "main" { workMem = "64MB"; };
      hba = serverOf "main" { authentication = "host app app 10.0.0.0/8 scram-sha-256"; };
    };
    secrets = mk "s" {
      backup.restic = {
        enable = true;
        repository = "s3:https://s3.example.com/s";
        passwordFile = "/run/keys/restic-s";
        environmentFile = "/run/keys/restic-s.env";
      };
      databases.app.ownerPasswordFile = "/run/keys/app";
      databases."odd name".ownerPasswordFile = "/run/keys/odd";
    };
    initdbArgs = (serverOf "main" { initdbArgs = [ "--locale=C.UTF-8" "--waldir=/srv/my wal" "--x='; rm -rf /'" ]; }).preStart;
    # The drill gets the root-only identity (and, from off-site, restic's secrets) through
    # LoadCredential= under the names pgpitr reads in place of the config's paths.
    drillSecrets = {
      local = mk "dl" {
        backup.encryption = {
          recipients = [ "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p" ];
          identityFile = "/run/keys/dl.age";
        };
        backup.restic = { enable = true; repository = "/mnt/offsite/dl"; passwordFile = "/run/keys/restic-dl"; };
        drill.enable = true;
      };
      offsite = mk "do" {
        backup.encryption = {
          recipients = [ "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p" ];
          identityFile = "/run/keys/do.age";
        };
        backup.restic = {
          enable = true;
          repository = "/mnt/offsite/do";
          passwordFile = "/run/keys/restic-do";
          environmentFile = "/run/keys/restic-do.env";
        };
        drill = { enable = true; from = "offsite"; };
      };
      # Recipients only (the identity is kept elsewhere): nothing to hand over.
      plain = mk "dn" {
        backup.encryption.recipients = [ "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p" ];
        drill.enable = true;
      };
    };
    drillPreseed = mk "dp" {
      drill = { enable = true; port = 5499; from = "offsite"; };
      preseed = { enable = true; methods = [ "syncoid" ]; syncoid.source = "old:tank/pg"; };
      zfs = { enable = true; dataDataset = "tank/dp"; walDataset = "tank/dp-wal"; };
    };
  };

  assertionFailures = args:
    map (a: a.message) (builtins.filter (a: !a.assertion) (pgpitrLib.assertions args));
in
{
  cases = {
    main = case { name = "main"; instance = instances.main; contract = true; };
    full = case { name = "full"; instance = instances.full; contract = true; };
    legacy = case { name = "legacy"; instance = instances.legacy; contract = true; pgMajor = "15"; p = paths15; };
    pending = case { name = "pending"; instance = instances.pending; contract = true; };
    drill = case { name = "drill"; instance = instances.drill; contract = true; };
    drilled = case { name = "drilled"; instance = instances.drilled; contract = true; };
  };
  pendingSchemaKeys = pgpitrLib.pendingSchemaKeys;
  inherit defects;

  # Each entry: the messages of the assertions that fail for that set of instances.
  assertions = {
    good = assertionFailures {
      instances = { inherit (instances) main full legacy; };
      pgMajors = { legacy = "15"; };
    };
    goodWithZfs = assertionFailures {
      instances = { inherit (instances) pending; };
      zfsSupported = true;
    };
    duplicatePorts = assertionFailures {
      instances = { a = { port = 5440; }; b = { port = 5440; }; c = { port = 5441; }; };
    };
    zfsWithoutSupport = assertionFailures {
      instances = { inherit (instances) pending; };
      zfsSupported = false;
    };
    identityInStore = assertionFailures {
      instances.main.backup.encryption = {
        recipients = [ "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p" ];
        identityFile = "/nix/store/44444444444444444444444444444444-key.age";
      };
    };
    managedSetting = assertionFailures {
      instances.main.settings.archive_command = "cp %p /tmp/%f";
    };
    resticIncomplete = assertionFailures {
      instances.main.backup.restic.enable = true;
    };
    badName = assertionFailures {
      instances."my db" = { };
    };
  };
}
