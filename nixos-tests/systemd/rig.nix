# What the rig renders: two instances as a user would declare them, with the container's
# paths standing in for store paths (/opt/pgpitr/bin holds the workspace's built binaries,
# Debian's PostgreSQL 15 stands in for nixpkgs' postgresql_15).
# sealedRecipient: the age recipient of the identity run.sh made for `sealed` (age-keygen).
# renderArgs: extra arguments for render.nix (../eval/compare-units.nix passes asFiles).
{ sealedRecipient, renderArgs ? { } }:
let
  onFailure = [ "pgpitr-rig-failed@%n.service" ];
  textfileDir = "/var/lib/pgpitr-rig/metrics";
  # The container shares the host's disk, which a CI machine may fill past pgpitr's default
  # 10% free-space limit; the rig tests the units, not the host's free space.
  healthCheck.settings.min_free_percent = 1.0;
in
import ./render.nix (renderArgs // {
  pgMajor = "15";
  paths = {
    pgpitr = "/opt/pgpitr";
    postgresql = "/usr/lib/postgresql/15";
    restic = "/usr";
    zfs = "/usr"; # zfs-fuse's zfs(8) is /usr/sbin/zfs
  };
  instances = {
    main = {
      port = 5432;
      inherit onFailure healthCheck;
      monitoring = { enable = true; inherit textfileDir; };
      backup.retention.keepLast = 3;
      backup.restic = {
        enable = true;
        repository = "/var/lib/pgpitr-rig/restic";
        # root:root 0400: only PID 1 reads it (LoadCredential=).
        passwordFile = "/etc/pgpitr-rig-secrets/restic-password";
      };
      databases.app = {
        owner = "app";
        ownerPasswordFile = "/etc/pgpitr-rig-secrets/app-password";
        extensions = [ "pgcrypto" ];
      };
      sharedBuffers = "32MB";
      # The restore drill (scenarios/10-drill.sh): scratch folder and port left at their
      # defaults (/var/lib/pgpitr/main/drill, 5432 + 10000).
      drill.enable = true;
    };
    second = {
      port = 5433;
      inherit onFailure healthCheck;
      monitoring = { enable = true; inherit textfileDir; };
      zfs = {
        enable = true;
        dataDataset = "rig/pg/second";
        walDataset = "rig/pg/second-wal";
      };
    };
    # The rebuilt node (scenarios/11-preseed.sh): preseed before the server. `empty` lets the
    # first boot initdb (no archive.json, no backup yet); once the instance has data, only
    # `archive` may bring it back.
    seeded = {
      port = 5434;
      inherit healthCheck;
      preseed = { enable = true; methods = [ "archive" "empty" ]; };
    };
    # The encrypted instance (scenarios/10-drill.sh): its archive and backups are encrypted
    # to an identity only root can read, and its drill restores from the off-site copy, so
    # the drill unit needs the identity and restic's password through LoadCredential=.
    sealed = {
      port = 5435;
      inherit onFailure healthCheck;
      backup.encryption = {
        recipients = [ sealedRecipient ];
        identityFile = "/etc/pgpitr-rig-secrets/age-identity";
      };
      backup.restic = {
        enable = true;
        repository = "/var/lib/pgpitr-rig/restic-sealed";
        passwordFile = "/etc/pgpitr-rig-secrets/restic-password";
      };
      drill = { enable = true; from = "offsite"; };
    };
  };
  extraUnits = {
    # The OnFailure= target of both instances: records which unit failed.
    "pgpitr-rig-failed@.service" = ''
      [Unit]
      Description=rig: record the failure of %i

      [Service]
      Type=oneshot
      ExecStart=/bin/sh -c 'echo "%i" >> /var/lib/pgpitr-rig/failed.log'
    '';
    # Stand-ins for NixOS' ZFS units: zfs-fuse's daemon and a pool on a sparse file.
    "zfs-fuse-rig.service" = ''
      [Unit]
      Description=rig: zfs-fuse daemon
      DefaultDependencies=no
      After=local-fs.target

      [Service]
      Type=simple
      ExecStart=/usr/sbin/zfs-fuse --no-daemon --no-kstat-mount
    '';
    "zfs-mount.service" = ''
      [Unit]
      Description=rig: import the pool and mount its datasets (stands in for NixOS' zfs-mount)
      Requires=zfs-fuse-rig.service
      After=zfs-fuse-rig.service

      [Service]
      Type=oneshot
      RemainAfterExit=yes
      ExecStart=/bin/sh -ec 'for i in 1 2 3 4 5 6 7 8 9 10; do /usr/sbin/zpool list >/dev/null 2>&1 && break; sleep 0.5; done; /usr/sbin/zpool list rig >/dev/null 2>&1 || /usr/sbin/zpool import -d /var/lib/pgpitr-rig/zpool rig || /usr/sbin/zpool create -m none rig /var/lib/pgpitr-rig/zpool/disk; /usr/sbin/zfs list rig/pg >/dev/null 2>&1 || /usr/sbin/zfs create -o mountpoint=none rig/pg; /usr/sbin/zfs mount -a'
    '';
  };
})
