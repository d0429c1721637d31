# Retention: base backups taken on simulated days (the VM clock moved forward), then walprune
# keeps the newest `keepLast` backups and the WAL they need, and the chain still restores.
{ module, common }:
{
  name = "pgpitr-retention";

  nodes.machine = { ... }: {
    imports = [ module ];
    virtualisation.memorySize = 2048;
    virtualisation.diskSize = 4096;
    # The test moves the clock; nothing may move it back.
    services.timesyncd.enable = false;
    services.pgpitr.instances.main = {
      version = "16";
      backup.retention.keepLast = 2;
    };
  };

  testScript = common.pythonHelpers + ''
    machine.start()
    machine.wait_for_unit("postgresql-main.service")
    psql(machine, 5432, "CREATE TABLE t (day int)")

    def archive_files():
        return int(machine.succeed("find /var/lib/postgresql/main-wal-archive -type f | wc -l").strip())

    for day in range(4):
        psql(machine, 5432, f"INSERT INTO t SELECT {day} FROM generate_series(1, 10000)")
        machine.succeed("systemctl start postgresql-basebackup-main.service")
        psql(machine, 5432, "SELECT pg_switch_wal()")
        machine.succeed("date -s '+1 day'")

    machine.wait_until_succeeds(
        "pgpitr --config /etc/pgpitr/main.json restore --to latest --into /tmp/x --port 5439 --dry-run",
        timeout=120,
    )
    files_before = archive_files()
    backups_before = int(machine.succeed("ls /var/backup/postgresql/main | wc -l").strip())
    assert backups_before >= 4, f"expected 4 backups, found {backups_before}"

    machine.succeed("systemctl start postgresql-walprune-main.service")

    backups = machine.succeed(
        "find /var/backup/postgresql/main -mindepth 2 -maxdepth 2 -name backup.json | wc -l").strip()
    assert backups == "2", f"keepLast = 2 should leave 2 backups, found {backups}"
    files_after = archive_files()
    assert files_after < files_before, f"walprune removed no WAL ({files_before} -> {files_after})"

    # What is left still restores: pgpitr checks the window and the chain.
    pgpitr(machine, "main", "restore --to latest --into /tmp/x --port 5439 --dry-run")
    pgpitr(machine, "main", "verify")
  '';
}
