# services.pgpitr.instances.<name>: PostgreSQL servers with point-in-time recovery by pgpitr.
#
# This file declares the options and hands each instance's values to the plain-Nix functions
# in ./lib (builtins only, evaluated by CI); it adds only what needs nixpkgs: packages, the
# config file checked by `pgpitr config check` at build time, users and tmpfiles.
# Documentation: docs/nixos.md.
{ config, lib, pkgs, ... }:
let
  inherit (lib) mkOption mkEnableOption mkPackageOption mkIf types literalExpression;

  pgpitrLib = import ./lib { };
  cfg = config.services.pgpitr;
  stateVersion = config.system.stateVersion or "25.11";
  enabled = lib.filterAttrs (_: i: i.enable) cfg.instances;

  # A path that must never enter the Nix store (secrets). nixpkgs >= 25.05 has
  # types.externalPath; older lib gets the same check from pathWith / a plain str check.
  externalPath =
    types.externalPath or (
      if types ? pathWith then types.pathWith { inStore = false; absolute = true; }
      else types.addCheck types.str (s: lib.hasPrefix "/" s && !lib.hasPrefix "${builtins.storeDir}/" s)
    );

  majorOf = pkg: lib.versions.major pkg.version;
  zfsSupported =
    let sf = config.boot.supportedFilesystems or { };
    in if builtins.isList sf then builtins.elem "zfs" sf else sf.zfs or false;

  databaseModule = { name, ... }: {
    options = {
      owner = mkOption {
        type = types.str;
        default = name;
        description = "Role that owns the database (created when missing).";
      };
      ownerPasswordFile = mkOption {
        type = types.nullOr externalPath;
        default = null;
        example = "/run/keys/app-db-password";
        description = "File with the owner's password, read at provisioning time; never copied into the Nix store.";
      };
      extensions = mkOption {
        type = types.listOf types.str;
        default = [ ];
        example = [ "pg_trgm" "pgcrypto" ];
        description = "Extensions created in the database.";
      };
      permissions = mkOption {
        type = types.attrsOf (types.listOf types.str);
        default = { };
        example = { reporting = [ "CONNECT" "SELECT ON ALL TABLES IN SCHEMA public" ]; };
        description = "Privileges granted to other roles, by role.";
      };
      encoding = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "UTF8";
        description = "Encoding of a new database (the cluster's when null).";
      };
      locale = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "C.UTF-8";
        description = "Locale of a new database (the cluster's when null).";
      };
      connectionLimit = mkOption {
        type = types.nullOr types.ints.unsigned;
        default = null;
        description = "CONNECTION LIMIT of the database (no limit when null).";
      };
    };
  };

  instanceModule = { name, config, ... }:
    let
      d = pgpitrLib.defaults { inherit name; pgMajor = majorOf config.package; };
      # Like upstream services.postgresql: the default follows system.stateVersion, so a
      # channel update never changes the major version under an existing cluster.
      major =
        if config.version != null then config.version
        else pgpitrLib.defaultMajorFor stateVersion;
    in {
      options = {
        enable = mkEnableOption "this PostgreSQL instance with pgpitr archiving and backups" // {
          default = true;
        };
        version = mkOption {
          type = types.nullOr (types.enum pgpitrLib.supportedMajors);
          default = null;
          example = "16";
          description = ''
            PostgreSQL major version; picks `pkgs.postgresql_<version>` unless `package` is set.
            When null, it follows `system.stateVersion` as upstream's services.postgresql does
            (25.11: 17, 24.11: 16, 23.11: 15, 22.05: 14). A data folder initialised by another
            major version is refused at start with both versions named.
          '';
        };
        package = mkOption {
          type = types.package;
          default =
            if major == null then
              throw "services.pgpitr.instances.${name}: system.stateVersion ${stateVersion} predates every supported PostgreSQL default; set version (one of ${lib.concatStringsSep ", " pgpitrLib.supportedMajors})."
            else pkgs."postgresql_${major}";
          defaultText = literalExpression ''pkgs."postgresql_''${version, or the default of system.stateVersion}"'';
          description = "The PostgreSQL package; its major version must match `version` when both are set.";
        };
        port = mkOption {
          type = types.port;
          default = d.port;
          description = "TCP port; also names the socket in /run/postgresql. Unique across instances.";
        };
        dataDir = mkOption {
          type = types.str;
          default = d.dataDir;
          defaultText = literalExpression ''"/var/lib/postgresql/''${major version}/''${name}"'';
          description = "Data folder; initdb runs when it is empty.";
        };
        settings = mkOption {
          type = types.submodule {
            freeformType = with types; attrsOf (oneOf [ bool int float str (listOf str) ]);
          };
          default = { };
          example = literalExpression ''{ log_min_duration_statement = 250; jit = false; }'';
          description = ''
            postgresql.conf settings (RFC 42 freeform). Strings are quoted, booleans become
            on/off. `port`, `archive_mode`, `archive_command`, `restore_command`,
            `unix_socket_directories`, `hba_file`, `ident_file` and `data_directory` are managed
            by the module.
          '';
        };
        sharedBuffers = mkOption {
          type = types.nullOr types.str;
          default = null;
          example = "2GB";
          description = "shared_buffers (PostgreSQL's default when null).";
        };
        effectiveCacheSize = mkOption {
          type = types.nullOr types.str;
          default = null;
          example = "6GB";
          description = "effective_cache_size.";
        };
        workMem = mkOption {
          type = types.nullOr types.str;
          default = null;
          example = "16MB";
          description = "work_mem.";
        };
        maintenanceWorkMem = mkOption {
          type = types.nullOr types.str;
          default = null;
          example = "512MB";
          description = "maintenance_work_mem.";
        };
        maxConnections = mkOption {
          type = types.nullOr types.ints.positive;
          default = null;
          example = 200;
          description = "max_connections.";
        };
        authentication = mkOption {
          type = types.lines;
          default = "";
          example = "host app app 10.0.0.0/8 scram-sha-256";
          description = "pg_hba.conf lines placed before the defaults (local peer, localhost scram-sha-256).";
        };
        initdbArgs = mkOption {
          type = types.listOf types.str;
          default = d.initdbArgs;
          description = "Extra initdb arguments used when the data folder is empty.";
        };
        databases = mkOption {
          type = types.attrsOf (types.submodule databaseModule);
          default = { };
          description = "Databases created and kept in shape by postgresql-database-provisioning-<name>.service.";
        };
        provision.waitTimeoutSeconds = mkOption {
          type = types.nullOr types.ints.positive;
          default = null;
          description = "How long provisioning waits for the server to accept connections.";
        };

        backup = {
          walArchive = {
            enable = mkEnableOption "WAL archiving through archive-wal (needed for point-in-time recovery)" // {
              default = true;
            };
            dir = mkOption {
              type = types.str;
              default = d.backup.walArchive.dir;
              defaultText = literalExpression ''"/var/lib/postgresql/''${major version}/''${name}-wal-archive"'';
              description = "Archive folder (archive.dir).";
            };
            compression = mkOption {
              type = types.enum [ "zstd" "none" ];
              default = "zstd";
              description = "archive.compression.";
            };
            level = mkOption {
              type = types.ints.between 1 19;
              default = 3;
              description = "zstd level (archive.level).";
            };
            retentionDays = mkOption {
              type = types.nullOr types.ints.positive;
              default = null;
              description = "Keep WAL (and the backups it needs) for this many days; the default of `backup.retention.keepWithinDays`.";
            };
          };
          baseBackup = {
            enable = mkEnableOption "scheduled base backups" // { default = true; };
            dir = mkOption {
              type = types.str;
              default = d.backup.baseBackup.dir;
              defaultText = literalExpression ''"/var/backup/postgresql/''${name}"'';
              description = "Backup folder (backup.dir).";
            };
            schedule = mkOption {
              type = types.str;
              default = "daily";
              description = "systemd OnCalendar= of postgresql-basebackup-<name>.timer.";
            };
          };
          retention = lib.genAttrs [ "keepLast" "keepWithinDays" "keepDaily" "keepWeekly" "keepMonthly" "keepYearly" ]
            (k: mkOption {
              type = types.nullOr types.ints.positive;
              default = null;
              description = "Retention rule `${k}` applied by walprune. Setting any rule creates postgresql-walprune-<name>.{service,timer}.";
            });
          walprune.schedule = mkOption {
            type = types.str;
            default = "daily";
            description = "systemd OnCalendar= of postgresql-walprune-<name>.timer.";
          };
          encryption = {
            recipients = mkOption {
              type = types.listOf types.str;
              default = [ ];
              example = [ "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p" ];
              description = "age recipients; non-empty turns encryption on (encryption.recipients).";
            };
            identityFile = mkOption {
              type = types.nullOr externalPath;
              default = null;
              example = "/run/keys/main.age";
              description = "age identity, needed only to restore; must stay outside the Nix store.";
            };
          };
          restic = {
            enable = mkEnableOption "off-site copies with restic (pgpitr-offsite-<name>)";
            repository = mkOption {
              type = types.nullOr types.str;
              default = null;
              example = "s3:https://s3.example.com/pg-main";
              description = "restic repository.";
            };
            passwordFile = mkOption {
              type = types.nullOr externalPath;
              default = null;
              description = "restic repository password file, outside the Nix store.";
            };
            environmentFile = mkOption {
              type = types.nullOr externalPath;
              default = null;
              description = "Environment file with backend credentials (e.g. AWS_ACCESS_KEY_ID), outside the Nix store.";
            };
            schedule = mkOption {
              type = types.str;
              default = "daily";
              description = "systemd OnCalendar= of pgpitr-offsite-<name>.timer.";
            };
          };
        };

        healthCheck = {
          enable = mkEnableOption "the periodic healthcheck" // { default = true; };
          interval = mkOption {
            type = types.str;
            default = "*:0/5";
            description = "systemd OnCalendar= of postgresql-healthcheck-<name>.timer (every 5 minutes by default).";
          };
          settings = mkOption {
            type = types.attrsOf (types.oneOf [ types.int types.float ]);
            default = { };
            example = { backup_max_age_seconds = 93600; min_free_percent = 15.0; };
            description = "Thresholds written to the config's [health] table (keys as in docs/config.md).";
          };
        };

        monitoring = {
          enable = mkEnableOption "Prometheus textfile metrics (for services.prometheus.exporters.node)";
          textfileDir = mkOption {
            type = types.str;
            default = d.monitoring.textfileDir;
            description = "Folder read by node_exporter's textfile collector (metrics.textfile_dir).";
          };
        };

        zfs = {
          enable = mkEnableOption "ZFS datasets for data and WAL archive";
          dataDataset = mkOption {
            type = types.nullOr types.str;
            default = null;
            example = "tank/postgresql/main";
            description = "Dataset mounted at dataDir.";
          };
          walDataset = mkOption {
            type = types.nullOr types.str;
            default = null;
            example = "tank/postgresql/main-wal";
            description = "Dataset mounted at the WAL archive folder.";
          };
          properties = {
            data = mkOption {
              type = types.attrsOf types.str;
              default = { };
              example = { compression = "zstd"; };
              description = "ZFS properties of the data dataset, over pgpitr's defaults (recordsize=8K compression=lz4 atime=off xattr=sa logbias=latency).";
            };
            wal = mkOption {
              type = types.attrsOf types.str;
              default = { };
              example = { recordsize = "1M"; };
              description = "ZFS properties of the WAL archive dataset, over pgpitr's defaults (recordsize=128K compression=lz4 atime=off logbias=throughput).";
            };
          };
        };

        onFailure = mkOption {
          type = types.listOf types.str;
          default = [ ];
          example = [ "notify-admin@%n.service" ];
          description = "Units started when the server or any pgpitr job of this instance fails (OnFailure=).";
        };

        # The restore drill and preseed: nothing is written unless enabled.
        drill = {
          enable = mkEnableOption "a scheduled restore drill (postgresql-drill-<name>.{service,timer}, `pgpitr drill`)";
          schedule = mkOption {
            type = types.str;
            default = "weekly";
            description = "systemd OnCalendar= of postgresql-drill-<name>.timer.";
          };
          scratchDir = mkOption {
            type = types.str;
            default = d.drill.scratchDir;
            description = "Folder the drill restores into (emptied by the drill).";
          };
          port = mkOption {
            type = types.nullOr types.port;
            default = null;
            description = "Port of the throw-away restored server (drill.port).";
          };
          from = mkOption {
            type = types.nullOr (types.enum [ "local" "offsite" ]);
            default = null;
            example = "offsite";
            description = "Where the drill restores from: `--from` of the drill unit (null: pgpitr's default, local).";
          };
          heartbeatIntervalSeconds = mkOption {
            type = types.nullOr types.ints.positive;
            default = null;
            description = "drill.heartbeat_interval_seconds. null: derived from healthCheck.interval when it is `minutely`, `hourly` or `*:0/N`, else pgpitr's default (300).";
          };
        };
        preseed = {
          enable = mkEnableOption "preseeding an empty data folder before the first start (postgresql-preseed-<name>.service, then postgresql-preseed-basebackup-<name>.service)";
          methods = mkOption {
            type = types.nullOr (types.listOf (types.enum [ "syncoid" "local" "archive" "restic" "empty" ]));
            default = null;
            example = [ "syncoid" "local" "archive" "restic" ];
            description = "Preseed methods tried in order (preseed.methods); null: the schema's default.";
          };
          initdbArgs = mkOption {
            type = types.listOf types.str;
            default = [ ];
            description = "Extra initdb arguments for the `empty` method (preseed.initdb_args).";
          };
          recoveryTimeoutSeconds = mkOption {
            type = types.nullOr types.ints.positive;
            default = null;
            description = "How long a restored copy may take to replay (preseed.recovery_timeout_seconds); null: the schema's default.";
          };
          syncoid = {
            source = mkOption {
              type = types.nullOr types.str;
              default = null;
              example = "backup@old-host:tank/pg/main";
              description = "syncoid source dataset (preseed.syncoid.source).";
            };
            bin = mkOption {
              type = types.nullOr types.str;
              default = null;
              description = "syncoid executable (preseed.syncoid.bin); null: syncoid on PATH.";
            };
            options = mkOption {
              type = types.listOf types.str;
              default = [ ];
              description = "Extra syncoid arguments (preseed.syncoid.options).";
            };
          };
        };
      };
    };

  # The option values handed to the plain-Nix lib (only what it reads).
  toLibInstance = i: {
    inherit (i) enable port dataDir sharedBuffers effectiveCacheSize workMem maintenanceWorkMem
      maxConnections authentication initdbArgs onFailure healthCheck monitoring zfs provision
      drill preseed;
    settings = builtins.removeAttrs i.settings [ "_module" ];
    databases = lib.mapAttrs (_: db: builtins.removeAttrs db [ "_module" ]) i.databases;
    backup = {
      inherit (i.backup) walArchive baseBackup retention walprune encryption restic;
    };
  };

  built = lib.mapAttrs (name: i: pgpitrLib.mkInstance {
    inherit name;
    instance = toLibInstance i;
    pgMajor = majorOf i.package;
    paths = {
      pgpitr = "${cfg.package}";
      postgresql = "${i.package}";
      restic = "${cfg.resticPackage}";
      # Only read by the ZFS unit (zfs.enable).
      zfs = if config.boot ? zfs then "${config.boot.zfs.package}" else null;
    };
  }) enabled;

  # The config file, validated by the packaged `pgpitr config check` at build time: a key the
  # Rust schema does not know fails the system build instead of the first timer run.
  configFileDrv = name: r:
    pkgs.runCommand "pgpitr-${name}.json" {
      nativeBuildInputs = [ cfg.package ];
      value = builtins.toJSON r.configFile;
      passAsFile = [ "value" ];
    } ''
      cp "$valuePath" "$out"
      pgpitr --config "$out" config check
    '';
in
{
  options.services.pgpitr = {
    package = mkPackageOption pkgs "pgpitr" { };
    resticPackage = mkPackageOption pkgs "restic" { };
    instances = mkOption {
      type = types.attrsOf (types.submodule instanceModule);
      default = { };
      example = literalExpression ''
        {
          main = { version = "16"; port = 5432; monitoring.enable = true; };
          legacy = { version = "15"; port = 5433; };
        }
      '';
      description = "PostgreSQL instances managed with pgpitr, each with its own config file /etc/pgpitr/<name>.json.";
    };
  };

  config = mkIf (enabled != { }) {
    assertions = pgpitrLib.assertions {
      instances = lib.mapAttrs (_: toLibInstance) enabled;
      pgMajors = lib.mapAttrs (_: i: majorOf i.package) enabled;
      inherit zfsSupported;
      storeDir = builtins.storeDir;
      upstreamPostgresql = config.services.postgresql.enable or false;
    }
    ++ lib.mapAttrsToList (n: i: {
      assertion = i.version == null || majorOf i.package == i.version;
      message = "services.pgpitr.instances.${n}: version = \"${toString i.version}\" but package is PostgreSQL ${majorOf i.package}.";
    }) enabled;

    users.users.postgres = {
      group = "postgres";
      isSystemUser = true;
      description = "PostgreSQL server user";
      home = "/var/lib/postgresql";
    };
    users.groups.postgres = { };

    # pgpitr and each instance's own psql/pg_dump (upstream does the same for its server).
    environment.systemPackages = [ cfg.package ]
      ++ lib.unique (lib.concatLists (lib.mapAttrsToList (n: _: [ enabled.${n}.package ]) built));

    environment.etc = lib.mkMerge (lib.mapAttrsToList (name: r:
      {
        "pgpitr/${name}.json".source = configFileDrv name r;
      }
      // lib.mapAttrs (_: text: { inherit text; }) r.etc) built);

    systemd.services = lib.mkMerge (lib.mapAttrsToList (_: r: r.services) built);
    systemd.timers = lib.mkMerge (lib.mapAttrsToList (_: r: r.timers) built);
    systemd.tmpfiles.rules = lib.unique (lib.concatLists (lib.mapAttrsToList (_: r: r.tmpfiles) built));
  };
}
