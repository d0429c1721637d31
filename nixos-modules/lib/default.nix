# Plain-Nix functions (builtins only, no nixpkgs) that turn one pgpitr instance's option
# values into the instance config file (/etc/pgpitr/<name>.json), postgresql.conf, pg_hba.conf,
# systemd units, tmpfiles rules and assertions. The NixOS module (../pgpitr.nix) calls them;
# CI evaluates them with a bare `nix-instantiate --eval --strict --json` (see ./tests.nix),
# because CI cannot load nixpkgs.
#
# Packages enter as strings (store paths) in `paths`, so evaluating this file builds nothing:
#   paths = { pgpitr = "/nix/store/...-pgpitr"; postgresql = "/nix/store/...-postgresql-16";
#             restic = "/nix/store/...-restic"; };
#
# The Rust schema (crates/pgpitr-config/src/lib.rs) is the source of truth for the config
# file. Keys in `pendingSchemaKeys` are emitted only when their option is used; see
# docs/nixos.md.
{ }:
let
  inherit (builtins)
    attrNames concatStringsSep elem filter foldl' hashString isAttrs isBool isFloat isInt
    isList isString length listToAttrs mapAttrs replaceStrings substring stringLength toJSON
    ;

  # --- small helpers (what nixpkgs' lib offers, rebuilt from builtins) ---------------------
  optional = c: x: if c then [ x ] else [ ];
  optionals = c: xs: if c then xs else [ ];
  optionalAttrs = c: a: if c then a else { };
  hasPrefix = p: s: substring 0 (stringLength p) s == p;
  unique = foldl' (acc: x: if elem x acc then acc else acc ++ [ x ]) [ ];
  nonNull = a: listToAttrs (filter (kv: kv.value != null) (map (n: {
    name = n;
    value = a.${n};
  }) (attrNames a)));
  recursiveUpdate = lhs: rhs:
    lhs // mapAttrs (n: v:
      if isAttrs v && lhs ? ${n} && isAttrs lhs.${n} && !(v ? outPath) then
        recursiveUpdate lhs.${n} v
      else
        v) rhs;
  anyNonNull = a: builtins.any (v: v != null) (builtins.attrValues a);

  configDir = "/etc/pgpitr";
  socketDir = "/run/postgresql";
  osUser = "postgres";
  osGroup = "postgres";

  # Keys the NixOS module can write that the Rust schema of this branch does not know yet.
  # They are emitted only when the matching option is used (see `pendingKeysOf`).
  pendingSchemaKeys = [ ];

  # The folders and settings every instance gets unless its definition says otherwise.
  # The module uses these as its option defaults, so there is one place for them.
  defaults = { name, pgMajor }: {
    enable = true;
    version = null;
    port = 5432;
    dataDir = "/var/lib/postgresql/${pgMajor}/${name}";
    settings = { };
    sharedBuffers = null;
    effectiveCacheSize = null;
    workMem = null;
    maintenanceWorkMem = null;
    maxConnections = null;
    authentication = "";
    initdbArgs = [ "--encoding=UTF8" "--locale=C.UTF-8" ];
    databases = { };
    provision = { waitTimeoutSeconds = null; };
    backup = {
      walArchive = {
        enable = true;
        dir = "/var/lib/postgresql/${pgMajor}/${name}-wal-archive";
        compression = "zstd";
        level = 3;
        retentionDays = null;
      };
      baseBackup = {
        enable = true;
        dir = "/var/backup/postgresql/${name}";
        schedule = "daily";
      };
      retention = {
        keepLast = null;
        keepWithinDays = null;
        keepDaily = null;
        keepWeekly = null;
        keepMonthly = null;
        keepYearly = null;
      };
      walprune = { schedule = "daily"; };
      encryption = {
        recipients = [ ];
        identityFile = null;
      };
      restic = {
        enable = false;
        repository = null;
        passwordFile = null;
        environmentFile = null;
        schedule = "daily";
      };
    };
    healthCheck = {
      enable = true;
      interval = "*:0/5";
      settings = { };
    };
    monitoring = {
      enable = false;
      textfileDir = "/var/lib/prometheus-node-exporter-text-files";
    };
    zfs = {
      enable = false;
      dataDataset = null;
      walDataset = null;
      properties = { data = { }; wal = { }; };
    };
    onFailure = [ ];
  };

  # A partial instance definition filled with the defaults (idempotent on module values).
  withDefaults = { name, pgMajor, instance }:
    recursiveUpdate (defaults { inherit name pgMajor; }) instance;

  # --- postgresql.conf ----------------------------------------------------------------------
  # Same rendering as nixpkgs' services.postgresql: strings quoted, booleans on/off.
  renderValue = v:
    if isBool v then (if v then "on" else "off")
    else if isInt v || isFloat v then toString v
    else if isList v then "'${concatStringsSep "," (map toString v)}'"
    else "'${replaceStrings [ "'" ] [ "''" ] (toString v)}'";

  renderConf = settings:
    concatStringsSep "\n" (map (k: "${k} = ${renderValue settings.${k}}") (attrNames settings)) + "\n";

  # Settings the module owns: a definition of one of these in `settings` is an assertion
  # failure, because pgpitr's recovery guarantee depends on them.
  managedSettings = [ "port" "archive_mode" "archive_command" "restore_command"
    "unix_socket_directories" "hba_file" "ident_file" "data_directory" ];

  # --- per instance ---------------------------------------------------------------------------
  mkInstance = { name, instance, paths, pgMajor }:
    let
      i = withDefaults { inherit name pgMajor instance; };
      b = i.backup;
      configPath = "${configDir}/${name}.json";
      confDir = "${configDir}/${name}";
      bin = "${paths.pgpitr}/bin";
      pgBin = "${paths.postgresql}/bin";
      cfgArg = "--config ${configPath}";
      monitoring = i.monitoring.enable;
      textfileDir = i.monitoring.textfileDir;
      retention = {
        keep_last = b.retention.keepLast;
        keep_within_days =
          if b.retention.keepWithinDays != null then b.retention.keepWithinDays
          else b.walArchive.retentionDays;
        keep_daily = b.retention.keepDaily;
        keep_weekly = b.retention.keepWeekly;
        keep_monthly = b.retention.keepMonthly;
        keep_yearly = b.retention.keepYearly;
      };
      hasRetention = anyNonNull retention;
      hasDatabases = i.databases != { };
      restic = b.restic.enable;
      encrypted = b.encryption.recipients != [ ];

      # ---- the instance config file (crates/pgpitr-config) ----
      configFile = {
        instance = name;
        postgres = {
          bin_dir = pgBin;
          data_dir = i.dataDir;
          port = i.port;
          socket_dir = socketDir;
          user = osUser;
          os_user = osUser;
        };
        archive = {
          dir = b.walArchive.dir;
          compression = b.walArchive.compression;
          level = b.walArchive.level;
        };
        backup = { dir = b.baseBackup.dir; };
        pgpitr = { bin_dir = bin; };
      }
      // optionalAttrs encrypted {
        encryption = { recipients = b.encryption.recipients; }
          // optionalAttrs (b.encryption.identityFile != null) {
            identity_file = b.encryption.identityFile;
          };
      }
      // optionalAttrs monitoring { metrics = { textfile_dir = textfileDir; }; }
      // optionalAttrs (i.healthCheck.settings != { }) { health = i.healthCheck.settings; }
      # Sections written only when their options are used (see docs/nixos.md).
      // optionalAttrs hasRetention { retention = nonNull retention; }
      // optionalAttrs hasDatabases {
        databases = mapAttrs (_: d: nonNull {
          owner = d.owner or null;
          owner_password_file = d.ownerPasswordFile or null;
          extensions = d.extensions or null;
          permissions = d.permissions or null;
          encoding = d.encoding or null;
          locale = d.locale or null;
          connection_limit = d.connectionLimit or null;
        }) i.databases;
        provision = nonNull {
          state_dir = provisionStateDir;
          wait_timeout_seconds = i.provision.waitTimeoutSeconds;
        };
      }
      // optionalAttrs restic {
        offsite = nonNull {
          repository = b.restic.repository;
          password_file = b.restic.passwordFile;
          environment_file = b.restic.environmentFile;
        };
      }
      // optionalAttrs i.zfs.enable {
        zfs = nonNull {
          data_dataset = i.zfs.dataDataset;
          wal_dataset = i.zfs.walDataset;
          data_properties = if (i.zfs.properties.data or { }) == { } then null else i.zfs.properties.data;
          wal_properties = if (i.zfs.properties.wal or { }) == { } then null else i.zfs.properties.wal;
        };
      };

      provisionStateDir = "/var/lib/pgpitr/${name}/provision";

      # ---- postgresql.conf ----
      shortcuts = nonNull {
        shared_buffers = i.sharedBuffers;
        effective_cache_size = i.effectiveCacheSize;
        work_mem = i.workMem;
        maintenance_work_mem = i.maintenanceWorkMem;
        max_connections = i.maxConnections;
      };
      postgresqlConf = {
        listen_addresses = "localhost";
        wal_level = "replica";
        log_destination = "stderr";
        # archive_timeout bounds how much committed work can be lost when the disk dies.
        archive_timeout = 60;
      }
      // shortcuts
      // i.settings
      // {
        port = i.port;
        unix_socket_directories = socketDir;
        hba_file = "${confDir}/pg_hba.conf";
        ident_file = "${confDir}/pg_ident.conf";
        archive_mode = b.walArchive.enable;
        # Only used when recovery.signal / standby.signal exists (pgpitr restore writes
        # its own into the folder it restores to).
        restore_command = "${bin}/restore-wal ${cfgArg} %f %p";
      }
      // optionalAttrs b.walArchive.enable {
        archive_command = "${bin}/archive-wal ${cfgArg} %p %f";
      };
      postgresqlConfText = renderConf postgresqlConf;
      # `authentication` comes first: pg_hba.conf uses the first matching line.
      hbaText = "# Written by the pgpitr NixOS module (services.pgpitr.instances.${name}).\n"
        + (if i.authentication == "" then "" else i.authentication + "\n") + ''
        local all all peer
        host  all all 127.0.0.1/32 scram-sha-256
        host  all all ::1/128      scram-sha-256
      '';

      # ---- units ----
      unit = suffix: "${suffix}-${name}";
      server = "postgresql-${name}";
      serverUnit = "${server}.service";

      hardening = rw: {
        ProtectSystem = "strict";
        ReadWritePaths = unique rw;
        PrivateTmp = true;
        NoNewPrivileges = true;
        UMask = "0077";
        ProtectHome = true;
        PrivateDevices = true;
        ProtectKernelTunables = true;
        ProtectKernelModules = true;
        ProtectKernelLogs = true;
        ProtectControlGroups = true;
        ProtectClock = true;
        ProtectHostname = true;
        RestrictSUIDSGID = true;
        RestrictRealtime = true;
        RestrictNamespaces = true;
        LockPersonality = true;
        SystemCallArchitectures = "native";
        RestrictAddressFamilies = [ "AF_UNIX" "AF_INET" "AF_INET6" ];
        CapabilityBoundingSet = "";
        User = osUser;
        Group = osGroup;
      };
      metricsRw = optional monitoring textfileDir;

      # A timer-driven job. Ordered after the server but not Requires=: when the server is
      # down the job must run, fail and fire OnFailure=, not be skipped as a dependency.
      job = { description, exec, rw, after ? [ serverUnit ], extra ? { }, serviceExtra ? { } }:
        {
          inherit description after;
          onFailure = i.onFailure;
          serviceConfig = hardening rw // {
            Type = "oneshot";
            ExecStart = exec;
            NotifyAccess = "main";
          } // serviceExtra;
        } // extra;

      timer = service: schedule: {
        wantedBy = [ "timers.target" ];
        timerConfig = {
          OnCalendar = schedule;
          Persistent = true;
          RandomizedDelaySec = "5min";
          Unit = "${service}.service";
        };
      };

      initdb = ''
        if [ ! -s ${i.dataDir}/PG_VERSION ]; then
          if [ -n "$(ls -A ${i.dataDir})" ]; then
            echo "${i.dataDir} is not empty and has no PG_VERSION: refusing to initdb over it" >&2
            exit 1
          fi
          ${pgBin}/initdb -D ${i.dataDir} -U ${osUser} --auth-local=peer --auth-host=scram-sha-256 ${concatStringsSep " " i.initdbArgs}
        fi
      '';

      services = {
        ${server} = {
          description = "PostgreSQL ${pgMajor} server, instance ${name} (pgpitr)";
          wantedBy = [ "multi-user.target" ];
          after = [ "network.target" ] ++ optional i.zfs.enable "zfs-mount.service";
          requires = optional i.zfs.enable "zfs-mount.service";
          onFailure = i.onFailure;
          environment = { PGDATA = i.dataDir; };
          preStart = initdb;
          reloadTriggers = [ (hashString "sha256" (postgresqlConfText + hbaText)) ];
          restartTriggers = [ paths.postgresql ];
          serviceConfig = hardening ([ i.dataDir socketDir ]
            ++ optional b.walArchive.enable b.walArchive.dir ++ metricsRw) // {
            Type = "notify";
            ExecStart = "${pgBin}/postgres -D ${i.dataDir} -c config_file=${confDir}/postgresql.conf";
            ExecReload = "${pgBin}/pg_ctl reload -D ${i.dataDir}";
            KillMode = "mixed";
            KillSignal = "SIGINT";
            TimeoutSec = 300;
            Restart = "on-failure";
            RestartSec = "5s";
            # The postmaster must survive the OOM killer longer than its clients.
            OOMScoreAdjust = -900;
          };
        };
      }
      // optionalAttrs b.baseBackup.enable {
        ${unit "postgresql-basebackup"} = job {
          description = "pgpitr base backup of PostgreSQL instance ${name}";
          exec = "${bin}/basebackup ${cfgArg}";
          rw = [ b.baseBackup.dir ] ++ metricsRw;
        };
      }
      // optionalAttrs hasRetention {
        ${unit "postgresql-walprune"} = job {
          description = "pgpitr retention: prune backups and WAL of instance ${name}";
          exec = "${bin}/walprune ${cfgArg}";
          rw = [ b.walArchive.dir b.baseBackup.dir ] ++ metricsRw;
          # Never prune while a base backup of this instance is being taken.
          after = [ serverUnit ] ++ optional b.baseBackup.enable "${unit "postgresql-basebackup"}.service";
        };
      }
      // optionalAttrs i.healthCheck.enable {
        ${unit "postgresql-healthcheck"} = job {
          description = "pgpitr health check of PostgreSQL instance ${name}";
          exec = "${bin}/healthcheck ${cfgArg}";
          rw = metricsRw;
        };
      }
      // optionalAttrs hasDatabases {
        ${unit "postgresql-database-provisioning"} = job {
          description = "Provision the declared databases of PostgreSQL instance ${name}";
          exec = "${bin}/provision-dbs ${cfgArg}";
          rw = [ provisionStateDir ] ++ metricsRw;
          extra = {
            wantedBy = [ "multi-user.target" ];
            requires = [ serverUnit ];
            # A changed declaration changes this unit, so switch-to-configuration re-runs it.
            restartTriggers = [ databasesHash ];
            environment = { PGPITR_DATABASES_HASH = databasesHash; };
          };
          serviceExtra = { RemainAfterExit = true; };
        };
      }
      // optionalAttrs restic {
        ${unit "pgpitr-offsite"} = job {
          description = "pgpitr off-site copy of instance ${name} with restic";
          exec = "${bin}/offsite-sync ${cfgArg}";
          rw = optional (b.restic.repository != null && hasPrefix "/" b.restic.repository) b.restic.repository
            ++ metricsRw;
          after = [ serverUnit ] ++ optional b.baseBackup.enable "${unit "postgresql-basebackup"}.service";
          extra = { path = [ paths.restic ]; };
          serviceExtra = {
            CacheDirectory = "pgpitr-offsite-${name}";
            Environment = [ "RESTIC_CACHE_DIR=/var/cache/pgpitr-offsite-${name}" ];
          };
        };
      };

      databasesHash = hashString "sha256" (toJSON i.databases);

      timers =
        optionalAttrs b.baseBackup.enable {
          ${unit "postgresql-basebackup"} = timer (unit "postgresql-basebackup") b.baseBackup.schedule;
        }
        // optionalAttrs hasRetention {
          ${unit "postgresql-walprune"} = timer (unit "postgresql-walprune") b.walprune.schedule;
        }
        // optionalAttrs i.healthCheck.enable {
          ${unit "postgresql-healthcheck"} = timer (unit "postgresql-healthcheck") i.healthCheck.interval;
        }
        // optionalAttrs restic {
          ${unit "pgpitr-offsite"} = timer (unit "pgpitr-offsite") b.restic.schedule;
        };

      own = "${osUser} ${osGroup}";
      tmpfiles = [
        "d ${socketDir} 0755 ${own} -"
        "d ${i.dataDir} 0700 ${own} -"
        "d ${b.baseBackup.dir} 0700 ${own} -"
      ]
      ++ optional b.walArchive.enable "d ${b.walArchive.dir} 0700 ${own} -"
      ++ optional hasDatabases "d ${provisionStateDir} 0700 ${own} -"
      ++ optionals monitoring [
        "d ${textfileDir} 0755 ${own} -"
        # Jobs run with UMask=0077, which would make the .prom files unreadable for
        # node_exporter. A default ACL takes precedence over the umask for new files, so
        # metrics (created 0644 by pgpitr) stay world-readable while everything else is 0600.
        "A+ ${textfileDir} - - - - default:user::rwx,default:group::r-x,default:other::r-x"
      ];
    in
    {
      inherit name configFile configPath postgresqlConf postgresqlConfText hbaText services
        timers tmpfiles databasesHash;
      pendingKeys = filter (k: configFile ? ${k}) pendingSchemaKeys;
      etc = {
        "pgpitr/${name}/postgresql.conf" = postgresqlConfText;
        "pgpitr/${name}/pg_hba.conf" = hbaText;
        "pgpitr/${name}/pg_ident.conf" = "";
      };
      units = attrNames services;
    };

  # --- assertions across instances ----------------------------------------------------------
  # instances: { <name> = instance definition; } (already filled or partial),
  # pgMajors: { <name> = "16"; }, zfsSupported: bool, storeDir: "/nix/store".
  assertions = { instances, pgMajors ? { }, zfsSupported ? false, storeDir ? "/nix/store" }:
    let
      names = attrNames instances;
      full = mapAttrs (n: inst: withDefaults {
        name = n;
        pgMajor = pgMajors.${n} or "16";
        instance = inst;
      }) instances;
      ports = map (n: full.${n}.port) names;
      portOwners = p: filter (n: full.${n}.port == p) names;
      dupPorts = unique (filter (p: length (portOwners p) > 1) ports);
      inStore = p: p != null && hasPrefix "${storeDir}/" (toString p);
      perInstance = n:
        let
          i = full.${n};
          b = i.backup;
          managed = filter (k: i.settings ? ${k}) managedSettings;
        in
        [
          {
            assertion = builtins.match "[A-Za-z0-9_.-]+" n != null;
            message = "services.pgpitr.instances.${n}: the instance name may only contain letters, digits, '-', '_' and '.' (it names units and /etc/pgpitr/${n}.json).";
          }
          {
            assertion = !(i.zfs.enable && !zfsSupported);
            message = "services.pgpitr.instances.${n}.zfs.enable needs ZFS support: add \"zfs\" to boot.supportedFilesystems (and set networking.hostId), or set zfs.enable = false.";
          }
          {
            assertion = !i.zfs.enable || (i.zfs.dataDataset != null && i.zfs.walDataset != null);
            message = "services.pgpitr.instances.${n}.zfs: dataDataset and walDataset must both be set when zfs.enable is true.";
          }
          {
            assertion = !(inStore b.encryption.identityFile);
            message = "services.pgpitr.instances.${n}.backup.encryption.identityFile is in the Nix store (${toString b.encryption.identityFile}), where every user can read it: point it at a file outside the store, e.g. /run/keys/${n}.age.";
          }
          {
            assertion = !(b.encryption.identityFile != null && b.encryption.recipients == [ ]);
            message = "services.pgpitr.instances.${n}.backup.encryption.identityFile is set but recipients is empty: add the age recipients (age1...) to encrypt to.";
          }
          {
            assertion = builtins.all (r: hasPrefix "age1" r) b.encryption.recipients;
            message = "services.pgpitr.instances.${n}.backup.encryption.recipients must be age X25519 recipients (age1...).";
          }
          {
            assertion = !b.restic.enable || (b.restic.repository != null && b.restic.passwordFile != null);
            message = "services.pgpitr.instances.${n}.backup.restic: repository and passwordFile must be set when restic.enable is true.";
          }
          {
            assertion = !(inStore b.restic.passwordFile || inStore b.restic.environmentFile);
            message = "services.pgpitr.instances.${n}.backup.restic: passwordFile and environmentFile must be outside the Nix store.";
          }
          {
            assertion = builtins.all (d: !(inStore (d.ownerPasswordFile or null))) (builtins.attrValues i.databases);
            message = "services.pgpitr.instances.${n}.databases: ownerPasswordFile must be outside the Nix store.";
          }
          {
            assertion = managed == [ ];
            message = "services.pgpitr.instances.${n}.settings sets ${concatStringsSep ", " managed}, which the module manages (use the instance options: port, backup.walArchive.enable).";
          }
        ];
    in
    [
      {
        assertion = dupPorts == [ ];
        message = "services.pgpitr.instances: each instance needs its own port; "
          + concatStringsSep "; " (map (p: "port ${toString p} is used by ${concatStringsSep ", " (portOwners p)}") dupPorts) + ".";
      }
    ]
    ++ builtins.concatLists (map perInstance names);
in
{
  inherit defaults withDefaults mkInstance assertions renderConf renderValue pendingSchemaKeys
    managedSettings configDir;
}
