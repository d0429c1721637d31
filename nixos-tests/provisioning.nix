# Declared databases are created after the server starts, and provisioning runs again when
# the declaration changes (switching to a specialisation with one more database).
{ module, common }:
{
  name = "pgpitr-provisioning";

  nodes.machine = { ... }: {
    imports = [ module ];
    virtualisation.memorySize = 2048;

    # Stand-in for a secrets manager: the password file appears in /run/keys before
    # provisioning, never in the store.
    systemd.services.test-secrets = {
      wantedBy = [ "multi-user.target" ];
      before = [ "postgresql-database-provisioning-main.service" ];
      requiredBy = [ "postgresql-database-provisioning-main.service" ];
      serviceConfig = { Type = "oneshot"; RemainAfterExit = true; };
      script = ''
        install -d -m 0755 /run/keys
        printf 's3cret' > /run/keys/app-db
        # root-only: PID 1 hands it to the provisioning job (LoadCredential=).
        chmod 0400 /run/keys/app-db
      '';
    };

    services.pgpitr.instances.main = {
      version = "16";
      monitoring.enable = true;
      databases.app = {
        owner = "app";
        ownerPasswordFile = "/run/keys/app-db";
        extensions = [ "pg_trgm" ];
        connectionLimit = 20;
      };
    };

    specialisation.more.configuration = {
      services.pgpitr.instances.main.databases.reports = { owner = "reports"; };
    };
  };

  testScript = common.pythonHelpers + ''
    machine.start()
    machine.wait_for_unit("postgresql-database-provisioning-main.service")
    assert psql(machine, 5432, "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'app'") == "app"
    assert psql(machine, 5432, "SELECT datconnlimit FROM pg_database WHERE datname = 'app'") == "20"
    assert psql(machine, 5432, "SELECT count(*) FROM pg_extension WHERE extname = 'pg_trgm'", db="app") == "1"
    machine.succeed("PGPASSWORD=s3cret psql -X -h 127.0.0.1 -p 5432 -U app -d app -tAc 'SELECT 1'")
    machine.succeed("grep -F 'postgresql_databases_provisioned_count' /var/lib/prometheus-node-exporter-text-files/*.prom")

    # A changed declaration re-runs provisioning on switch.
    machine.succeed("/run/current-system/specialisation/more/bin/switch-to-configuration test")
    machine.wait_until_succeeds(
        "sudo -u postgres psql -X -h /run/postgresql -p 5432 -tAc "
        "\"SELECT 1 FROM pg_database WHERE datname = 'reports'\" | grep -q 1",
        timeout=60,
    )
    assert psql(machine, 5432, "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'reports'") == "reports"
  '';
}
