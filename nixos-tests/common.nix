# Shared by the VM tests: a throw-away age key pair (test data only; the identity is written
# to /run/keys at run time so the module's "outside the store" rule holds) and psql helpers.
{
  recipient = "age1av89mhpmhhktscmm8ufdkuk53xlnmfedtg4mx0zyactr67sradaqus76x2";
  identity = "AGE-SECRET-KEY-1452AL2QWXDN4UGY368PZZVKYXJJHMCUU65UT4H058DYYPAMSX54SDUM8FH";

  # Python helpers prepended to each testScript.
  pythonHelpers = ''
    import json, shlex

    def psql(machine, port, sql, db="postgres", user="postgres"):
        return machine.succeed(
            f"sudo -u postgres psql -X -h /run/postgresql -p {port} -U {user} -d {db} -tAc {shlex.quote(sql)}"
        ).strip()

    def pgpitr(machine, instance, args):
        return machine.succeed(f"pgpitr --config /etc/pgpitr/{instance}.json {args}")
  '';
}
