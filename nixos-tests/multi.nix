# Two instances of different PostgreSQL versions side by side, each with its own port, config,
# archive and backups.
{ module, common }:
{
  name = "pgpitr-multi";

  nodes.machine = { ... }: {
    imports = [ module ];
    virtualisation.memorySize = 2048;
    virtualisation.diskSize = 4096;
    services.pgpitr.instances = {
      old = { version = "15"; port = 5433; };
      new = { version = "17"; port = 5434; };
    };
  };

  testScript = common.pythonHelpers + ''
    machine.start()
    for name, port, major in [("old", 5433, "15"), ("new", 5434, "17")]:
        machine.wait_for_unit(f"postgresql-{name}.service")
        version = psql(machine, port, "SHOW server_version_num")
        assert version.startswith(major), f"{name}: expected PostgreSQL {major}, got {version}"
        pgpitr(machine, name, "config check")
        psql(machine, port, f"CREATE TABLE t AS SELECT '{name}' AS who")
        machine.succeed(f"systemctl start postgresql-basebackup-{name}.service")
        psql(machine, port, "SELECT pg_switch_wal()")

    for name in ["old", "new"]:
        # Each archive belongs to its own cluster (archive-wal refuses foreign segments), and
        # the health check passes once a backup and archived WAL exist.
        machine.wait_until_succeeds(f"systemctl start postgresql-healthcheck-{name}.service", timeout=120)
        status = json.loads(pgpitr(machine, name, "status --json"))
        assert status, f"{name}: empty status"

    machine.succeed("test -d /var/lib/postgresql/old-wal-archive")
    machine.succeed("test -d /var/lib/postgresql/new-wal-archive")
  '';
}
