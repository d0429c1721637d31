# One instance end to end: declare it, write rows, DELETE them, `pgpitr restore` to the moment
# before, rows back; the textfile metrics exist and node_exporter serves them.
{ module, common }:
{
  name = "pgpitr-single";

  nodes.machine = { pkgs, ... }: {
    imports = [ module ];
    virtualisation.memorySize = 2048;
    virtualisation.diskSize = 4096;
    environment.systemPackages = [ pkgs.curl ];

    services.pgpitr.instances.main = {
      version = "16";
      port = 5432;
      sharedBuffers = "128MB";
      backup.encryption = {
        recipients = [ common.recipient ];
        identityFile = "/run/keys/main.age";
      };
      monitoring = {
        enable = true;
        textfileDir = "/var/lib/prometheus-node-exporter-text-files";
      };
    };

    services.prometheus.exporters.node = {
      enable = true;
      enabledCollectors = [ "textfile" ];
      extraFlags = [ "--collector.textfile.directory=/var/lib/prometheus-node-exporter-text-files" ];
    };
  };

  testScript = common.pythonHelpers + ''
    machine.start()
    machine.wait_for_unit("postgresql-main.service")
    machine.wait_for_unit("prometheus-node-exporter.service")

    # The config the module wrote is accepted by the Rust schema.
    pgpitr(machine, "main", "config check")

    # Only restoring needs the identity; it never enters the store.
    machine.succeed(
        "install -d -m 0755 /run/keys && "
        "printf '%s\\n' '${common.identity}' > /run/keys/main.age && "
        "chown postgres:postgres /run/keys/main.age && chmod 0600 /run/keys/main.age"
    )

    psql(machine, 5432, "CREATE TABLE orders (id int PRIMARY KEY, note text)")
    psql(machine, 5432, "INSERT INTO orders SELECT g, 'order ' || g FROM generate_series(1, 100) g")
    machine.succeed("systemctl start postgresql-basebackup-main.service")
    psql(machine, 5432, "INSERT INTO orders SELECT g, 'late ' || g FROM generate_series(101, 150) g")

    before = psql(machine, 5432,
        "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')")
    machine.succeed("sleep 1.1")
    psql(machine, 5432, "DELETE FROM orders")
    assert psql(machine, 5432, "SELECT count(*) FROM orders") == "0"
    psql(machine, 5432, "SELECT pg_switch_wal()")

    # pgpitr checks the window and the WAL chain itself: wait until the DELETE's segment is
    # archived and the target is restorable.
    machine.wait_until_succeeds(
        f"pgpitr --config /etc/pgpitr/main.json restore --to {before} --into /srv/rewind --port 5439 --dry-run",
        timeout=120,
    )
    pgpitr(machine, "main", f"restore --to {before} --into /srv/rewind --port 5439")
    rows = psql(machine, 5439, "SELECT count(*) FROM orders")
    assert rows == "150", f"expected the 150 rows back, got {rows}"

    # Metrics: files written by archive-wal and basebackup, served by node_exporter.
    machine.succeed("systemctl start postgresql-healthcheck-main.service || true")
    machine.succeed("ls /var/lib/prometheus-node-exporter-text-files/pgpitr_archive_main.prom")
    machine.succeed("ls /var/lib/prometheus-node-exporter-text-files/pgpitr_basebackup_main.prom")
    metrics = machine.wait_until_succeeds(
        "curl -sf http://127.0.0.1:9100/metrics | grep -F 'postgresql_backup_last_success_timestamp'"
    )
    for name in ["postgresql_wal_archive_last_success_timestamp",
                 "postgresql_wal_archive_files_present",
                 "postgresql_health"]:
        machine.succeed(f"curl -sf http://127.0.0.1:9100/metrics | grep -F '{name}'")
    # node_exporter could read every file (a permission problem shows up here).
    machine.fail("curl -sf http://127.0.0.1:9100/metrics | grep -F 'node_textfile_scrape_error 1'")

    # Hardening is in place on the jobs.
    props = machine.succeed("systemctl show -p ProtectSystem -p NoNewPrivileges -p UMask postgresql-basebackup-main.service")
    assert "ProtectSystem=strict" in props and "NoNewPrivileges=yes" in props and "UMask=0077" in props, props
  '';
}
