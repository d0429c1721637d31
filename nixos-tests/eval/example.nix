# The example configuration of docs/nixos.md (kept here so check-module.sh evaluates exactly
# what the documentation shows).
{ ... }:
{
  boot.supportedFilesystems = { zfs = true; };

  services.pgpitr.instances = {
    main = {
      version = "16";
      port = 5432;
      sharedBuffers = "2GB";
      effectiveCacheSize = "6GB";
      workMem = "16MB";
      maintenanceWorkMem = "512MB";
      maxConnections = 200;
      settings = {
        log_min_duration_statement = 250;
        jit = false;
      };
      authentication = ''
        host app app 10.0.0.0/8 scram-sha-256
      '';
      databases.app = {
        owner = "app";
        ownerPasswordFile = "/run/keys/app-db-password";
        extensions = [ "pg_trgm" ];
      };
      backup = {
        walArchive.retentionDays = 14;
        baseBackup.schedule = "*-*-* 02:30:00";
        retention = { keepLast = 7; keepWeekly = 4; keepMonthly = 6; };
        encryption = {
          recipients = [ "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p" ];
          identityFile = "/run/keys/main.age";
        };
        restic = {
          enable = true;
          repository = "s3:https://s3.example.com/pg-main";
          passwordFile = "/run/keys/restic-main";
          environmentFile = "/run/keys/restic-main.env";
          schedule = "*-*-* 04:00:00";
        };
      };
      healthCheck.interval = "*:0/5";
      monitoring.enable = true;
      zfs = {
        enable = true;
        dataDataset = "tank/postgresql/main";
        walDataset = "tank/postgresql/main-wal";
        properties = { wal = { recordsize = "128K"; }; };
      };
      onFailure = [ "notify-admin@%n.service" ];
    };

    # An older major version beside it, on its own port.
    legacy = {
      version = "15";
      port = 5433;
      backup.baseBackup.schedule = "weekly";
    };
  };
}
