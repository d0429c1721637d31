# Plain-Nix functions (builtins only, no nixpkgs) that turn one pgpitr instance's option
# values into the instance config file (/etc/pgpitr/<name>.json), postgresql.conf, pg_hba.conf,
# systemd units, tmpfiles rules and assertions. The NixOS module (../pgpitr.nix) calls them;
# CI evaluates them with a bare `nix-instantiate --eval --strict --json` (see ./tests.nix),
# because CI cannot load nixpkgs.
#
# Packages enter as strings (store paths) in `paths`, so evaluating this file builds nothing:
#   paths = { pgpitr = "/nix/store/...-pgpitr"; postgresql = "/nix/store/...-postgresql-16";
#             restic = "/nix/store/...-restic"; zfs = "/nix/store/...-zfs" (optional) };
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
  # lib.escapeShellArg: one word for sh, whatever it contains.
  escapeShellArg = s: "'" + replaceStrings [ "'" ] [ "'\\''" ] (toString s) + "'";
  dirOf' = p: builtins.dirOf p;
  optionalString = c: s: if c then s else "";

  # Seconds between runs of an OnCalendar= schedule, for the simple forms only
  # (`minutely`, `hourly`, `*:0/N`, `*:00/N`, `*:0/N:00`); null for anything else, and the
  # schema default (300) applies (docs/nixos.md).
  heartbeatIntervalOf = schedule:
    let m = builtins.match "\\*:0?0/0*([1-9][0-9]*)(:00)?" schedule;
    in if schedule == "minutely" then 60
    else if schedule == "hourly" then 3600
    else if m != null then 60 * builtins.fromJSON (builtins.head m)
    else null;

  # PostgreSQL majors nixpkgs 25.11 still ships (13 was removed).
  supportedMajors = [ "14" "15" "16" "17" "18" ];
  # The default major for a system.stateVersion, as upstream services.postgresql chooses it:
  # a channel update never changes it, only a deliberate stateVersion or `version` change.
  # null: stateVersion older than any supported default, so `version` must be set.
  defaultMajorFor = stateVersion:
    let atLeast = v: builtins.compareVersions stateVersion v >= 0;
    in if atLeast "25.11" then "17"
    else if atLeast "24.11" then "16"
    else if atLeast "23.11" then "15"
    else if atLeast "22.05" then "14"
    else null;

  # postgresql.conf settings that take effect only at server start (context "postmaster");
  # changing one restarts the server, changing anything else reloads it.
  restartSettings = [ "shared_buffers" "max_connections" "wal_level" "shared_preload_libraries"
    "max_wal_senders" "max_replication_slots" "max_worker_processes" "max_prepared_transactions"
    "max_locks_per_transaction" "max_pred_locks_per_transaction" "wal_buffers" "huge_pages"
    "listen_addresses" "port" "unix_socket_directories" "archive_mode" "hba_file" "ident_file"
    "data_directory" "max_files_per_process" "wal_log_hints" "track_commit_timestamp"
    "autovacuum_max_workers" "superuser_reserved_connections" "shared_memory_type"
    "dynamic_shared_memory_type" "cluster_name" "bonjour" "ssl_passphrase_command_supports_reload" ];

  # Folders under which the module also declares the intermediate folders of its own paths
  # (owned by postgres), so tmpfiles never meets a root-owned folder below a postgres-owned
  # one ("unsafe path transition").
  systemRoots = [ "/var/lib" "/var/backup" "/var/cache" "/srv" "/run" "/var" "/mnt" "/data" "/opt" ];
  ancestorsBelowRoot = path:
    let
      root = builtins.head (filter (r: hasPrefix "${r}/" path) systemRoots ++ [ null ]);
      up = p: if p == root || p == "/" || p == "." then [ ] else up (dirOf' p) ++ [ p ];
    in
    if root == null then [ ] else filter (p: p != path) (up path);

  credentialsDir = "/run/credentials";
  credentialId = s: if builtins.match "[A-Za-z0-9_.-]+" s != null then s
    else substring 0 16 (hashString "sha256" s);

  configDir = "/etc/pgpitr";
  socketDir = "/run/postgresql";
  osUser = "postgres";
  osGroup = "postgres";

  # Keys the NixOS module can write that the Rust schema of this branch does not know yet.
  # They are emitted only when the matching option is used (see `pendingKeysOf`).
  # (None right now: [preseed] and postgres.service are in the schema.)
  pendingSchemaKeys = [ ];

  # The folders and settings every instance gets unless its definition says otherwise.
  # The module uses these as its option defaults, so there is one place for them.
  defaults = { name, pgMajor }: {
    enable = true;
    version = null;
    port = 5432;
    # No major version in the default folders: a version change must meet the old cluster
    # (and be refused by preStart), never an empty folder it would silently initdb.
    dataDir = "/var/lib/postgresql/${name}";
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
        dir = "/var/lib/postgresql/${name}-wal-archive";
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
    drill = {
      enable = false;
      schedule = "weekly";
      scratchDir = "/var/lib/pgpitr/${name}/drill";
      port = null;
      # `--from` of the drill unit (null: the CLI default, local).
      from = null;
      # null: derived from healthCheck.interval when it is `*:0/N`, `minutely` or `hourly`
      # (see heartbeatIntervalOf), else the schema default (300).
      heartbeatIntervalSeconds = null;
    };
    # Off by default. null / [ ]: the schema's default (docs/config.md `[preseed]`).
    preseed = {
      enable = false;
      methods = null;
      initdbArgs = [ ];
      recoveryTimeoutSeconds = null;
      syncoid = { source = null; bin = null; options = [ ]; };
    };
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
      drill = i.drill.enable;
      preseed = i.preseed.enable;

      # Secrets reach the jobs through LoadCredential=: PID 1 reads the (root-only) files and
      # hands a copy to the job under /run/credentials/<unit>/, which the server cannot see
      # (InaccessiblePaths= below). The config file names those copies.
      credPath = unitName: id: "${credentialsDir}/${unitName}.service/${id}";
      offsiteCreds = optionals restic (
        optional (b.restic.passwordFile != null) { id = "restic-password"; src = b.restic.passwordFile; }
        ++ optional (b.restic.environmentFile != null) { id = "restic-environment"; src = b.restic.environmentFile; });
      # What a job running restic needs besides its secrets: a local repository writable
      # (restic takes its lock there) and the off-site job's cache, shared by the drill.
      resticLocalRepo = optional (restic && b.restic.repository != null
        && hasPrefix "/" b.restic.repository) b.restic.repository;
      resticCache = {
        CacheDirectory = "pgpitr-offsite-${name}";
        Environment = [ "RESTIC_CACHE_DIR=/var/cache/pgpitr-offsite-${name}" ];
      };
      dbCredId = db: "owner-password-${credentialId db}";
      provisionCreds = filter (c: c.src != null) (map (db: {
        id = dbCredId db;
        src = i.databases.${db}.ownerPasswordFile or null;
      }) (attrNames i.databases));
      loadCredential = creds: map (c: "${c.id}:${toString c.src}") creds;
      # The drill restores as postgres, so it cannot read the root-only sources either: it
      # gets the identity (to decrypt the archive) and, drilling from off-site, restic's
      # secrets under the same names, and pgpitr reads a credential of that name in place
      # of the path the config names (Config::use_credentials, docs/nixos.md).
      drillOffsite = i.drill.from == "offsite";
      drillCreds =
        optional (encrypted && b.encryption.identityFile != null)
          { id = "age-identity"; src = b.encryption.identityFile; }
        ++ optionals drillOffsite offsiteCreds;

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
          # `pgpitr restore --in-place` stops and starts the server through this unit.
          service = serverUnit;
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
        databases = mapAttrs (dbName: d: nonNull {
          owner = d.owner or null;
          owner_password_file =
            if (d.ownerPasswordFile or null) == null then null
            else credPath (unit "postgresql-database-provisioning") (dbCredId dbName);
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
          password_file =
            if b.restic.passwordFile == null then null
            else credPath (unit "pgpitr-offsite") "restic-password";
          environment_file =
            if b.restic.environmentFile == null then null
            else credPath (unit "pgpitr-offsite") "restic-environment";
        };
      }
      // optionalAttrs i.zfs.enable {
        zfs = nonNull {
          data_dataset = i.zfs.dataDataset;
          wal_dataset = i.zfs.walDataset;
          data_properties = if (i.zfs.properties.data or { }) == { } then null else i.zfs.properties.data;
          wal_properties = if (i.zfs.properties.wal or { }) == { } then null else i.zfs.properties.wal;
        };
      }
      // optionalAttrs drill {
        drill = nonNull {
          scratch_dir = i.drill.scratchDir;
          port = i.drill.port;
          # The heartbeat row is written by the healthcheck job: without it there is none.
          heartbeat = i.healthCheck.enable;
          heartbeat_interval_seconds =
            if i.drill.heartbeatIntervalSeconds != null then i.drill.heartbeatIntervalSeconds
            else heartbeatIntervalOf i.healthCheck.interval;
        };
      }
      // optionalAttrs preseed {
        preseed = nonNull {
          methods = i.preseed.methods;
          initdb_args = if i.preseed.initdbArgs == [ ] then null else i.preseed.initdbArgs;
          recovery_timeout_seconds = i.preseed.recoveryTimeoutSeconds;
          syncoid =
            let
              sy = nonNull {
                source = i.preseed.syncoid.source;
                bin = i.preseed.syncoid.bin;
                options = if i.preseed.syncoid.options == [ ] then null else i.preseed.syncoid.options;
              };
            in
            if sy == { } then null else sy;
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
        # Peer authentication through the `pgpitr` map (pg_ident.conf): each OS user is its
        # own database user, and root may also be postgres (pgpitr restore --in-place runs
        # as root, to stop and start the unit, and connects to the restored server).
        local all all peer map=pgpitr
        host  all all 127.0.0.1/32 scram-sha-256
        host  all all ::1/128      scram-sha-256
        # pg_basebackup (base backups) connects for replication.
        local replication all peer map=pgpitr
        host  replication all 127.0.0.1/32 scram-sha-256
        host  replication all ::1/128      scram-sha-256
      '';
      # The map `pgpitr` of pg_hba.conf: every OS user as itself, and root as ${osUser}.
      identText = "# Written by the pgpitr NixOS module (services.pgpitr.instances.${name}).\n"
        + "pgpitr  /^(.*)$  \\1\n"
        + "pgpitr  root     ${osUser}\n";
      restartConf = renderConf (nonNull (mapAttrs (k: v: if elem k restartSettings then v else null) postgresqlConf));
      reloadConf = renderConf (nonNull (mapAttrs (k: v: if elem k restartSettings then null else v) postgresqlConf));

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
      job = { description, exec, rw, after ? [ serverUnit ], extra ? { }, serviceExtra ? { }, creds ? [ ] }:
        {
          inherit description after;
          onFailure = i.onFailure;
          # A running backup is never killed by a system switch; the next timer run uses the
          # new unit.
          restartIfChanged = false;
          serviceConfig = hardening rw // {
            Type = "oneshot";
            ExecStart = exec;
            NotifyAccess = "main";
          } // optionalAttrs (creds != [ ]) { LoadCredential = loadCredential creds; }
          // serviceExtra;
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

      dataQ = escapeShellArg i.dataDir;
      # initdb only into an empty folder; a cluster of another major version is refused with
      # both versions named (an upgrade is deliberate: pg_upgrade, then change `version`).
      initdb = ''
        if [ -s ${dataQ}/PG_VERSION ]; then
          found=$(cat ${dataQ}/PG_VERSION)
          if [ "$found" != ${escapeShellArg pgMajor} ]; then
            echo "pgpitr: ${i.dataDir} holds a PostgreSQL $found cluster but services.pgpitr.instances.${name} runs PostgreSQL ${pgMajor}: refusing to start. Set version = \"$found\" to keep using it, or upgrade it deliberately (pg_upgrade) first." >&2
            exit 1
          fi
        else
          if [ -n "$(ls -A ${dataQ})" ]; then
            echo "pgpitr: ${i.dataDir} is not empty and has no PG_VERSION: refusing to initdb over it" >&2
            exit 1
          fi
          ${pgBin}/initdb -D ${dataQ} -U ${osUser} --auth-local=peer --auth-host=scram-sha-256 ${concatStringsSep " " (map escapeShellArg i.initdbArgs)}
        fi
      '';

      zfsUnit = "${unit "pgpitr-zfs"}.service";
      preseedUnit = "${unit "postgresql-preseed"}.service";
      # Units the server needs before it starts: the datasets, then the preseeded data.
      serverNeeds = optional i.zfs.enable zfsUnit ++ optional preseed preseedUnit;

      services = {
        ${server} = {
          description = "PostgreSQL ${pgMajor} server, instance ${name} (pgpitr)";
          wantedBy = [ "multi-user.target" ];
          after = [ "network.target" ] ++ serverNeeds;
          requires = serverNeeds;
          onFailure = i.onFailure;
          environment = {
            PGDATA = i.dataDir;
            # OOMScoreAdjust= below protects the postmaster only: every backend it forks
            # writes this value back, so the OOM killer still picks a runaway query first.
            PG_OOM_ADJUST_FILE = "/proc/self/oom_score_adj";
            PG_OOM_ADJUST_VALUE = "0";
          };
          preStart = initdb;
          # Settings read only at server start restart it; the rest reload it.
          reloadTriggers = [ (hashString "sha256" (reloadConf + hbaText + identText)) ];
          restartTriggers = [ paths.postgresql (hashString "sha256" restartConf) ];
          # A crash loop must end in `failed` (and OnFailure=): 5 starts within 5 minutes
          # at RestartSec=5s reach the limit after about 25 s.
          unitConfig = {
            StartLimitIntervalSec = 300;
            StartLimitBurst = 5;
          };
          serviceConfig = hardening ([ i.dataDir socketDir ]
            ++ optional b.walArchive.enable b.walArchive.dir ++ metricsRw) // {
            # The jobs' secrets (LoadCredential=) live there; a superuser's pg_read_file()
            # runs inside this process and must never reach them.
            InaccessiblePaths = [ "-${credentialsDir}" ];
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
          creds = provisionCreds;
          extra = {
            wantedBy = [ "multi-user.target" ];
            requires = [ serverUnit ];
            # Re-run on a switch when the declaration changed (see restartTriggers).
            restartIfChanged = true;
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
          rw = resticLocalRepo ++ metricsRw;
          after = [ serverUnit "network-online.target" ]
            ++ optional b.baseBackup.enable "${unit "postgresql-basebackup"}.service";
          creds = offsiteCreds;
          extra = {
            path = [ paths.restic ];
            wants = [ "network-online.target" ];
          };
          serviceExtra = resticCache;
        };
      }
      // optionalAttrs i.zfs.enable {
        # `pgpitr zfs ensure --fix`: creates the datasets (mounted at the data and archive
        # folders) with pgpitr's tuned properties before the server starts, and puts drift
        # back to the declared values. Runs as root (zfs needs it).
        ${unit "pgpitr-zfs"} = {
          description = "ZFS datasets of PostgreSQL instance ${name} (pgpitr)";
          after = [ "zfs-mount.service" "zfs-import.target" ];
          requires = [ "zfs-mount.service" ];
          before = [ serverUnit ];
          requiredBy = [ serverUnit ];
          onFailure = i.onFailure;
          # zfs(8) for pgpitr (NixOS units get coreutils, not the ZFS tools, in PATH).
          path = optional ((paths.zfs or null) != null) paths.zfs;
          postStart = ''
            chown ${own} ${dataQ} ${escapeShellArg b.walArchive.dir}
            chmod 0700 ${dataQ} ${escapeShellArg b.walArchive.dir}
          '';
          serviceConfig = {
            Type = "oneshot";
            RemainAfterExit = true;
            ExecStart = "${bin}/pgpitr ${cfgArg} zfs ensure --fix";
            PrivateTmp = true;
            NoNewPrivileges = true;
            ProtectHome = true;
            ProtectKernelTunables = true;
            ProtectControlGroups = true;
            ProtectClock = true;
            RestrictRealtime = true;
            LockPersonality = true;
            SystemCallArchitectures = "native";
          };
        };
      }
      // optionalAttrs drill {
        ${unit "postgresql-drill"} = job {
          description = "pgpitr restore drill of PostgreSQL instance ${name}";
          exec = "${bin}/pgpitr ${cfgArg} drill"
            + optionalString (i.drill.from != null) " --from ${i.drill.from}";
          # The scratch copy, drills.jsonl and the backup lock in backup.dir, the scratch
          # server's socket; archive.dir is only read (ProtectSystem=strict leaves it readable).
          rw = [ i.drill.scratchDir b.baseBackup.dir socketDir ] ++ metricsRw
            ++ optionals drillOffsite resticLocalRepo;
          after = [ serverUnit ] ++ optional b.baseBackup.enable "${unit "postgresql-basebackup"}.service"
            ++ optional drillOffsite "network-online.target";
          creds = drillCreds;
          extra = optionalAttrs drillOffsite {
            wants = [ "network-online.target" ];
          } // optionalAttrs (drillOffsite && restic) {
            path = [ paths.restic ];
          };
          serviceExtra = optionalAttrs (drillOffsite && restic) resticCache;
        };
      }
      // optionalAttrs preseed {
        # Seeds an empty data folder (from a ZFS snapshot, a restore...) before the server's
        # first start; a no-op when the folder already holds a cluster (the binary decides).
        ${unit "postgresql-preseed"} = {
          description = "pgpitr preseed of PostgreSQL instance ${name}";
          after = optional i.zfs.enable zfsUnit;
          requires = optional i.zfs.enable zfsUnit;
          before = [ serverUnit ];
          requiredBy = [ serverUnit ];
          onFailure = i.onFailure;
          serviceConfig = {
            Type = "oneshot";
            RemainAfterExit = true;
            ExecStart = "${bin}/preseed ${cfgArg}";
            # The staging folder and lock sit beside the data folder; the restored server
            # replays from (and archives its new timeline into) the archive.
            ReadWritePaths = unique ([ (dirOf' i.dataDir) i.dataDir b.walArchive.dir b.baseBackup.dir socketDir ]
              ++ metricsRw);
            ProtectSystem = "strict";
            PrivateTmp = true;
            NoNewPrivileges = true;
            ProtectHome = true;
            UMask = "0077";
          };
        };
      }
      // optionalAttrs (preseed && b.baseBackup.enable) {
        # A seeded cluster has no base backup of its own yet: take one once the server is up.
        ${unit "postgresql-preseed-basebackup"} = job {
          description = "pgpitr first base backup of preseeded PostgreSQL instance ${name}";
          # Waits for the server, then backs up only when its timeline has no backup yet.
          exec = "${bin}/preseed ${cfgArg} --follow-up-backup";
          rw = [ b.baseBackup.dir ] ++ metricsRw;
          after = [ serverUnit preseedUnit ];
          extra = {
            wantedBy = [ "multi-user.target" ];
            requires = [ serverUnit ];
          };
          serviceExtra = { RemainAfterExit = true; };
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
        }
        // optionalAttrs drill {
          ${unit "postgresql-drill"} = timer (unit "postgresql-drill") i.drill.schedule;
        };

      own = "${osUser}:${osGroup}";
      tmpOwn = "${osUser} ${osGroup}";
      leafDirs = [ i.dataDir b.baseBackup.dir ]
        ++ optional b.walArchive.enable b.walArchive.dir
        ++ optional hasDatabases provisionStateDir
        ++ optional drill i.drill.scratchDir;
      tmpfiles = [
        "d ${socketDir} 0755 ${tmpOwn} -"
        # Exists before any job's credentials, so the server's InaccessiblePaths= applies.
        "d ${credentialsDir} 0755 root root -"
      ]
      # Every folder between a system root (/var/lib, /srv...) and a leaf, owned by postgres
      # too, so no root-owned folder sits below a postgres-owned one.
      ++ map (d: "d ${d} 0755 ${tmpOwn} -")
        (filter (d: !(elem d leafDirs)) (unique (builtins.concatMap ancestorsBelowRoot leafDirs)))
      ++ map (d: "d ${d} 0700 ${tmpOwn} -") leafDirs
      ++ optionals monitoring [
        "d ${textfileDir} 0755 ${tmpOwn} -"
        # Jobs run with UMask=0077, which would make the .prom files unreadable for
        # node_exporter. A default ACL takes precedence over the umask for new files, so
        # metrics (created 0644 by pgpitr) stay world-readable while everything else is 0600.
        "A+ ${textfileDir} - - - - default:user::rwx,default:group::r-x,default:other::r-x"
      ];
    in
    {
      inherit name configFile configPath postgresqlConf postgresqlConfText hbaText services
        timers tmpfiles databasesHash;
      # environment.systemPackages: psql, pg_dump... of the server's own version.
      packages = [ paths.postgresql ];
      pendingKeys = filter (k: configFile ? ${k}) pendingSchemaKeys;
      etc = {
        "pgpitr/${name}/postgresql.conf" = postgresqlConfText;
        "pgpitr/${name}/pg_hba.conf" = hbaText;
        "pgpitr/${name}/pg_ident.conf" = identText;
      };
      units = attrNames services;
    };

  # --- assertions across instances ----------------------------------------------------------
  # instances: { <name> = instance definition; } (already filled or partial),
  # pgMajors: { <name> = "16"; }, zfsSupported: bool, storeDir: "/nix/store".
  # upstreamPostgresql: services.postgresql.enable (the two modules cannot share a host).
  assertions = { instances, pgMajors ? { }, zfsSupported ? false, storeDir ? "/nix/store",
    upstreamPostgresql ? false }:
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
          {
            assertion = elem (pgMajors.${n} or "16") supportedMajors;
            message = "services.pgpitr.instances.${n}: PostgreSQL ${pgMajors.${n} or "16"} is not supported (supported: ${concatStringsSep ", " supportedMajors}); set version to one of them.";
          }
        ];
    in
    [
      {
        assertion = !upstreamPostgresql;
        message = "services.pgpitr and services.postgresql cannot run on the same host: both own the postgres user and /run/postgresql, and upstream's RemoveIPC=true would break pgpitr's instances. Move the upstream database into services.pgpitr.instances (each instance has its own port and folders).";
      }
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
    heartbeatIntervalOf
    managedSettings configDir supportedMajors defaultMajorFor restartSettings escapeShellArg;
}
