//! provision-dbs against a real PostgreSQL 15: creation with extensions and grants (proved by
//! has_*_privilege and a SCRAM login over TCP), no-op runs that send nothing, key order not
//! mattering, changes and --force applying, a hostile name created literally, the password
//! never in the server log, the process list or the output, a failure keeping the old stamp,
//! and waiting for a server that is not up yet.

use pgpitr_config::{Config, DatabaseConfig};
use pgpitr_integration::{Cluster, ClusterOptions, Run};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::Duration;

const PASSWORD: &str = "s3cret-Pa55word-9c1e";
const HOSTILE: &str = r#"x"; DROP TABLE t; --"#;

fn database(
    owner: &str,
    password: Option<&PathBuf>,
    ext: &[&str],
    perms: &[(&str, &[&str])],
) -> DatabaseConfig {
    DatabaseConfig {
        owner: owner.into(),
        owner_password_file: password.cloned(),
        extensions: ext.iter().map(|s| s.to_string()).collect(),
        permissions: perms
            .iter()
            .map(|(r, p)| (r.to_string(), p.iter().map(|s| s.to_string()).collect()))
            .collect(),
        encoding: None,
        locale: None,
        connection_limit: None,
    }
}

fn statements_logged(c: &Cluster) -> usize {
    fs::read_to_string(c.root.join("data.log"))
        .unwrap()
        .matches("statement: ")
        .count()
}

fn stamp(c: &Cluster) -> String {
    fs::read_to_string(c.root.join("state/provision.stamp")).unwrap_or_default()
}

#[test]
fn provisions_idempotently_and_safely() {
    let c = Cluster::start(ClusterOptions {
        metrics: true,
        ..Default::default()
    });
    let port = 15432;
    {
        let mut db = c.connect(5432);
        for sql in [
            "CREATE TABLE t (x int)".to_string(),
            "ALTER SYSTEM SET log_statement = 'all'".into(),
            "ALTER SYSTEM SET listen_addresses = '127.0.0.1'".into(),
            format!("ALTER SYSTEM SET port = {port}"),
        ] {
            db.batch_execute(&sql).unwrap();
        }
    }
    let hba = c.data().join("pg_hba.conf");
    let mut text = fs::read_to_string(&hba).unwrap();
    text.insert_str(0, "host all all 127.0.0.1/32 scram-sha-256\n");
    fs::write(&hba, text).unwrap();
    c.stop_server(c.data());
    c.start_server(c.data());
    // The server now listens on `port` (socket and TCP); point the config there.
    let pw = c.root.join("app.pw");
    fs::write(&pw, format!("{PASSWORD}\n")).unwrap();
    fs::set_permissions(&pw, fs::Permissions::from_mode(0o600)).unwrap();
    let mut cfg: Config = c.cfg.clone();
    cfg.postgres.port = port;
    cfg.databases.insert(
        "app".into(),
        database(
            "app_owner",
            Some(&pw),
            &["pg_trgm", "uuid-ossp"],
            &[
                ("app_reader", &["SELECT"]),
                ("app_writer", &["SELECT", "INSERT", "UPDATE", "DELETE"]),
            ],
        ),
    );
    cfg.databases
        .insert(HOSTILE.into(), database(HOSTILE, None, &[], &[]));
    let path = c.write_config(&cfg, "prov.toml");

    // First run creates everything.
    let r = c.tool_with(&path, "provision-dbs", &[]).ok();
    assert!(!r.stdout.contains(PASSWORD) && !r.stderr.contains(PASSWORD));
    let first_stamp = stamp(&c);
    assert_eq!(first_stamp.trim().len(), 64);
    let mut db = c.connect(port);
    let q =
        |db: &mut pgpitr_pg::Client, sql: &str| -> bool { db.query_one(sql, &[]).unwrap().get(0) };
    assert!(q(
        &mut db,
        "SELECT has_database_privilege('app_reader', 'app', 'CONNECT')"
    ));
    assert!(q(
        &mut db,
        "SELECT NOT rolcanlogin FROM pg_roles WHERE rolname = 'app_reader'"
    ));
    assert!(q(
        &mut db,
        "SELECT rolcanlogin FROM pg_roles WHERE rolname = 'app_owner'"
    ));
    assert!(q(
        &mut db,
        &format!(
            "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = '{}')",
            HOSTILE.replace('\'', "''")
        )
    ));
    assert!(
        q(&mut db, "SELECT to_regclass('public.t') IS NOT NULL"),
        "the hostile name dropped nothing"
    );
    // A table the owner creates afterwards: default privileges apply.
    let mut app = pgpitr_integration::connect_db(&c, port, "app");
    app.batch_execute("SET ROLE app_owner; CREATE TABLE orders (id serial, item text)")
        .unwrap();
    assert!(q(
        &mut app,
        "SELECT has_table_privilege('app_reader', 'orders', 'SELECT')"
    ));
    assert!(!q(
        &mut app,
        "SELECT has_table_privilege('app_reader', 'orders', 'INSERT')"
    ));
    assert!(q(
        &mut app,
        "SELECT has_table_privilege('app_writer', 'orders', 'INSERT')"
    ));
    assert!(q(
        &mut app,
        "SELECT count(*) = 2 FROM pg_extension WHERE extname IN ('pg_trgm', 'uuid-ossp')"
    ));
    // Login with the password over TCP with scram-sha-256.
    let tcp = postgres::Config::new()
        .host("127.0.0.1")
        .port(port)
        .user("app_owner")
        .password(PASSWORD)
        .dbname("app")
        .connect(postgres::NoTls);
    assert!(tcp.is_ok(), "SCRAM login failed: {:?}", tcp.err());
    let wrong = postgres::Config::new()
        .host("127.0.0.1")
        .port(port)
        .user("app_owner")
        .password("nope")
        .dbname("app")
        .connect(postgres::NoTls);
    assert!(wrong.is_err());

    // Second run: nothing sent.
    let before = statements_logged(&c);
    let r = c.tool_with(&path, "provision-dbs", &[]).ok();
    assert!(r.stdout.contains("up to date"), "{}", r.stdout);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(statements_logged(&c), before, "a no-op run sent statements");

    // Key order does not change the hash: the same state written in another order.
    let text = fs::read_to_string(&path).unwrap();
    let mut sections: Vec<&str> = text.split("\n[").collect();
    let head = sections.remove(0);
    sections.reverse();
    let reordered = c.root.join("reordered.toml");
    fs::write(&reordered, format!("{head}\n[{}", sections.join("\n["))).unwrap();
    assert_ne!(fs::read_to_string(&reordered).unwrap(), text);
    let r = c.tool_with(&reordered, "provision-dbs", &[]).ok();
    assert!(r.stdout.contains("up to date"), "{}", r.stdout);

    // A change applies and updates the stamp.
    cfg.databases
        .get_mut("app")
        .unwrap()
        .extensions
        .push("hstore".into());
    let path2 = c.write_config(&cfg, "prov2.toml");
    c.tool_with(&path2, "provision-dbs", &[]).ok();
    assert_ne!(stamp(&c), first_stamp);
    assert!(q(
        &mut app,
        "SELECT count(*) = 1 FROM pg_extension WHERE extname = 'hstore'"
    ));
    // --force re-applies.
    let before = statements_logged(&c);
    c.tool_with(&path2, "provision-dbs", &["--force"]).ok();
    std::thread::sleep(Duration::from_millis(300));
    assert!(statements_logged(&c) > before);
    // --dry-run prints statements, redacted, and changes nothing.
    let r = c
        .tool_with(&path2, "provision-dbs", &["--dry-run", "--force"])
        .ok();
    assert!(
        r.stdout.contains("PASSWORD '<redacted>'") && !r.stdout.contains("SCRAM-SHA-256$"),
        "{}",
        r.stdout
    );

    // Undeclared things are reported, never dropped.
    db.batch_execute("CREATE DATABASE legacy").unwrap();
    let r = c.tool_with(&path2, "provision-dbs", &["--force"]).ok();
    assert!(
        r.stdout
            .contains("not declared (left alone): database \"legacy\""),
        "{}",
        r.stdout
    );
    assert!(q(
        &mut db,
        "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = 'legacy')"
    ));
    let prom = fs::read_to_string(c.root.join("metrics/pgpitr_provision_test.prom")).unwrap();
    assert!(
        prom.contains("pgpitr_databases_undeclared{instance=\"test\"} 1"),
        "{prom}"
    );
    assert!(
        prom.contains(&format!(
            "postgresql_databases_provisioned_hash{{instance=\"test\",hash=\"{}\"}} 1",
            stamp(&c).trim()
        )),
        "{prom}"
    );
    assert!(
        prom.contains("postgresql_databases_provisioned_count{instance=\"test\"} 2"),
        "{prom}"
    );

    // The password is nowhere: server log (log_statement = 'all'), output, metrics.
    let log = fs::read_to_string(c.root.join("data.log")).unwrap();
    assert!(log.contains("ALTER ROLE"), "statements are logged");
    assert!(
        !log.contains(PASSWORD),
        "the password reached the server log"
    );
    assert!(!prom.contains(PASSWORD));

    // A failure midway keeps the old stamp and names database and extension; a fix completes.
    let good = stamp(&c);
    cfg.databases
        .get_mut("app")
        .unwrap()
        .extensions
        .push("no_such_extension".into());
    let bad = c.write_config(&cfg, "prov-bad.toml");
    let r = c.tool_with(&bad, "provision-dbs", &[]);
    assert_ne!(r.code, 0);
    assert!(
        r.stderr.contains("\"app\"") && r.stderr.contains("no_such_extension"),
        "{}",
        r.stderr
    );
    assert_eq!(stamp(&c), good);
    assert!(
        fs::read_to_string(c.root.join("metrics/pgpitr_provision_test.prom"))
            .unwrap()
            .contains("pgpitr_provision_failures_total{instance=\"test\"} 1")
    );
    cfg.databases
        .get_mut("app")
        .unwrap()
        .extensions
        .retain(|e| e != "no_such_extension");
    cfg.databases
        .get_mut("app")
        .unwrap()
        .extensions
        .push("citext".into());
    let fixed = c.write_config(&cfg, "prov-fixed.toml");
    c.tool_with(&fixed, "provision-dbs", &[]).ok();
    assert_ne!(stamp(&c), good);

    // Server not up yet: waits, and proceeds when it starts within the bound.
    drop(db);
    drop(app);
    c.stop_server(c.data());
    cfg.databases
        .insert("later".into(), database("later_owner", None, &[], &[]));
    let later = c.write_config(&cfg, "prov-later.toml");
    let child = std::process::Command::new(c.tools.join("provision-dbs"))
        .arg("--config")
        .arg(&later)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Meanwhile the password is not in any process's argv.
    for p in fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmd) = fs::read(p.path().join("cmdline")) {
            assert!(!String::from_utf8_lossy(&cmd).contains(PASSWORD));
        }
    }
    std::thread::sleep(Duration::from_secs(2));
    c.start_server(c.data());
    let r = Run::from(child.wait_with_output().unwrap()).ok();
    assert!(r.stdout.contains("applied"), "{}", r.stdout);
    // ...and fails clearly after the bound.
    c.stop_server(c.data());
    cfg.provision.wait_timeout_seconds = Some(1);
    cfg.databases
        .insert("never".into(), database("never_owner", None, &[], &[]));
    let never = c.write_config(&cfg, "prov-never.toml");
    let r = c.tool_with(&never, "provision-dbs", &[]);
    assert_ne!(r.code, 0);
    assert!(
        r.stderr.contains("within 1 s") && r.stderr.contains("wait_timeout_seconds"),
        "{}",
        r.stderr
    );
}
