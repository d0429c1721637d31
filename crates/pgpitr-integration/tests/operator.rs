//! What an operator meets under pressure (issue 15), against real PostgreSQL: errors that
//! carry the server's own reason, restores that report success for a server that recovered,
//! readiness polling that leaves nothing in the server's log.

use pgpitr_integration::{Cluster, ClusterOptions, Run};
use pgpitr_pg::PgCtl;
use std::fs;
use std::process::Command;

/// Lines of the restored server's log that name a FATAL error.
/// The restored server's FATAL lines about connections. An autovacuum worker that happens to
/// run when the hand-over stops the promoted server logs a FATAL of its own; that is the
/// server's housekeeping, not a connection pgpitr made or was refused.
fn fatal_lines(into: &std::path::Path) -> Vec<String> {
    fs::read_to_string(pgpitr_restore::execute::log_path(into))
        .unwrap()
        .lines()
        .filter(|l| l.contains("FATAL") && !l.contains("terminating autovacuum process"))
        .map(str::to_string)
        .collect()
}

fn root_only() -> bool {
    let root = pgpitr_pg::current_user_name() == "root";
    assert!(
        root,
        "this test needs root (CI runs as root): it checks what pgpitr does as root against a server with peer authentication"
    );
    root
}

/// As root against `local all all peer`: basebackup says PostgreSQL's own reason and what to
/// do; `pgpitr restore --json` of such a backup replays, promotes, exits 0 and prints its
/// report although it can never connect to the restored server.
#[test]
fn peer_auth_as_root_gives_the_servers_reason_and_restore_succeeds() {
    root_only();
    let c = Cluster::start(ClusterOptions::default());
    let mut db = c.connect(5432);
    db.batch_execute("CREATE TABLE t (id serial, tag text); INSERT INTO t (tag) VALUES ('x')")
        .unwrap();
    drop(db);
    fs::write(
        c.data().join("pg_hba.conf"),
        "local all all peer\nlocal replication all peer\n",
    )
    .unwrap();
    c.chown(&c.data().join("pg_hba.conf"));
    let ctl = PgCtl {
        bins: &c.bins,
        account: c.account.as_ref(),
        data_dir: c.data(),
    };
    pgpitr_pg::run(
        pgpitr_pg::command_as(&c.bins.path("pg_ctl"), c.account.as_ref())
            .args(["reload", "-D"])
            .arg(c.data())
            .current_dir("/"),
    )
    .unwrap();
    assert!(ctl.is_running());
    // The reload is asynchronous: wait until the server really refuses root.
    let t = std::time::Instant::now();
    while c.endpoint(5432).connect("postgres").is_ok() {
        assert!(
            t.elapsed() < std::time::Duration::from_secs(30),
            "the server still lets root in 30 s after the pg_hba.conf reload"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }

    let r = c.tool("basebackup", &[]);
    assert_ne!(r.code, 0);
    assert!(
        r.stderr
            .contains("FATAL: Peer authentication failed for user \"postgres\"")
            && r.stderr.contains("runuser -u postgres"),
        "{}",
        r.stderr
    );
    assert_eq!(r.stderr.trim().lines().count(), 1, "one line: {}", r.stderr);

    // With -v the chain is there, one cause per line.
    let r = c.tool("basebackup", &["-v"]);
    assert!(r.stderr.contains("caused by:") || r.stderr.contains("Peer authentication"));

    // The healthcheck does not advise starting a server that runs.
    let r = c.tool("healthcheck", &["--json"]);
    assert!(
        !r.stdout.contains("systemctl start") && r.stdout.contains("is running"),
        "{}",
        r.stdout
    );

    // As the server's own user it works; then restore that backup as root.
    let out = Command::new("runuser")
        .args(["-u", "postgres", "--"])
        .arg(c.tools.join("basebackup"))
        .arg("--config")
        .arg(&c.cfg_path)
        .output()
        .unwrap();
    let backup = Run::from(out).ok().stdout.trim().to_string();
    assert!(!backup.is_empty());

    let into = c.root.join("restored-peer");
    let r = c.restore("immediate", &into, 5433, &["--json"]);
    assert_eq!(r.code, 0, "stdout: {}\nstderr: {}", r.stdout, r.stderr);
    let report: serde_json::Value = serde_json::from_str(&r.stdout).expect("JSON report");
    assert_eq!(
        report["timeline"],
        2,
        "{report}\n{}",
        fs::read_to_string(into.join("pgpitr-restore.log")).unwrap()
    );
    assert_eq!(report["backup_id"], backup.as_str());
    // The replay server ran with pgpitr's own access files (root mapped to the database
    // user): no refused connection, the recovery settings taken back after promotion, and the
    // server handed over to its own pg_hba.conf with the files removed.
    let fatal = fatal_lines(&into);
    assert_eq!(fatal, Vec::<String>::new());
    let auto = fs::read_to_string(into.join("postgresql.auto.conf")).unwrap();
    assert!(
        !auto.lines().any(|l| {
            let l = l.trim_start();
            l.starts_with("recovery_target") || l.starts_with("restore_command")
        }),
        "{auto}"
    );
    for f in pgpitr_restore::access::files(&into) {
        assert!(!f.exists(), "{} left behind", f.display());
    }
}

/// The promoted server cannot be restarted with its folder's own configuration: the backup
/// carries a `pg_hba.conf` line PostgreSQL rejects (written after the source server loaded its
/// rules). The restore has still succeeded: exit 0, and the report's `warnings` (and stderr)
/// say so with the command that starts the server and the access files to remove; the server
/// is not running, the files are kept, and following the advice brings it up on timeline 2.
#[test]
fn failed_hand_over_is_a_warning_with_the_way_out() {
    root_only();
    let c = Cluster::start(ClusterOptions::default());
    let mut db = c.connect(5432);
    db.batch_execute("CREATE TABLE t (id int); INSERT INTO t VALUES (1)")
        .unwrap();
    let bad_line = "local all all no-such-method";
    let hba = c.data().join("pg_hba.conf");
    let good = fs::read_to_string(&hba).unwrap();
    fs::write(&hba, format!("{good}{bad_line}\n")).unwrap();
    c.basebackup();
    c.switch_and_wait(5432);

    let into = c.root.join("restored-bad-hba");
    let r = c.restore("immediate", &into, 5441, &["--json"]).ok();
    let report: serde_json::Value = serde_json::from_str(&r.stdout).expect("JSON report");
    assert_eq!(report["timeline"], 2, "{report}");
    let warnings: Vec<&str> = report["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w.as_str().unwrap())
        .collect();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    let w = warnings[0];
    assert!(
        w.contains("restarting it with its own configuration failed"),
        "{w}"
    );
    // --json keeps stdout for the document; the warning still reaches stderr.
    assert!(r.stderr.contains(&format!("warning: {w}")), "{}", r.stderr);
    // The server is down, and its log says why.
    assert!(!into.join("postmaster.pid").exists());
    let log_file = pgpitr_restore::execute::log_path(&into);
    let log = fs::read_to_string(&log_file).unwrap();
    assert!(log.contains("pg_hba.conf"), "{log}");
    // The access files stay, named in the warning, until the server runs again.
    let files = pgpitr_restore::access::files(&into);
    for f in &files {
        assert!(f.exists(), "{} removed too early", f.display());
        assert!(w.contains(&f.display().to_string()), "{w}");
    }
    // The way out, as the warning gives it: fix the line, run the command, remove the files.
    let start = w
        .split_once("start it with `")
        .and_then(|(_, rest)| rest.split_once('`'))
        .map(|(cmd, _)| cmd.to_string())
        .unwrap_or_else(|| panic!("no start command in: {w}"));
    fs::write(into.join("pg_hba.conf"), &good).unwrap();
    let out = Command::new("sh").arg("-c").arg(&start).output().unwrap();
    assert!(
        out.status.success(),
        "{start}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for f in &files {
        fs::remove_file(f).unwrap();
    }
    let mut restored = c.connect(5441);
    let row = restored
        .query_one(
            "SELECT (SELECT count(*) FROM t), timeline_id FROM pg_control_checkpoint()",
            &[],
        )
        .unwrap();
    assert_eq!((row.get::<_, i64>(0), row.get::<_, i32>(1)), (1, 2));
}

/// Readiness comes from postmaster.pid: the restored server's log has no FATAL line at all
/// (before, every 300 ms of replay logged `the database system is starting up`).
#[test]
fn restore_polling_leaves_no_fatal_in_the_server_log() {
    let c = Cluster::start(ClusterOptions::default());
    let mut db = c.connect(5432);
    db.batch_execute("CREATE TABLE t (id serial, tag text)")
        .unwrap();
    c.basebackup();
    for i in 0..3 {
        db.batch_execute(&format!(
            "INSERT INTO t (tag) SELECT 'row-{i}-' || g FROM generate_series(1, 20000) g"
        ))
        .unwrap();
        c.switch_and_wait(5432);
    }
    let into = c.root.join("restored-quiet");
    let r = c.restore("latest", &into, 5434, &[]).ok();
    assert!(r.stdout.contains("new timeline 2"), "{}", r.stdout);
    assert_eq!(fatal_lines(&into), Vec::<String>::new());
    let mut restored = c.connect(5434);
    let n: i64 = restored
        .query_one("SELECT count(*) FROM t", &[])
        .unwrap()
        .get(0);
    assert_eq!(n, 60000);
}

/// `pgpitr` with the cluster's config, extra environment and arguments.
fn pgpitr_env(c: &Cluster, env: &[(&str, &str)], args: &[&str]) -> Run {
    c.tool_env(&c.cfg_path, "pgpitr", env, args)
}

/// The target time of a dry-run plan, as the instant it names.
fn planned_time(r: &Run) -> chrono::DateTime<chrono::Utc> {
    let plan: serde_json::Value = serde_json::from_str(&r.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}\n{}", r.stdout, r.stderr));
    assert_eq!(plan["target"]["kind"], "time", "{plan}");
    chrono::DateTime::parse_from_rfc3339(plan["target"]["value"].as_str().unwrap())
        .unwrap()
        .with_timezone(&chrono::Utc)
}

/// `--to` takes what a DBA copies (psql's `+00`, a log line's ` UTC`, `+01`, `+0100`, a zone
/// name, a zone-less local time, which the plan states), all naming the same instant; a
/// restore to psql's form keeps the row committed before and drops the one after; the
/// window start and end `status` prints are accepted when pasted back.
#[test]
fn time_forms_and_pasted_window_bounds() {
    let c = Cluster::start(ClusterOptions::default());
    let mut db = c.connect(5432);
    db.batch_execute("CREATE TABLE t (id serial, tag text)")
        .unwrap();
    c.basebackup();
    db.batch_execute("INSERT INTO t (tag) VALUES ('before')")
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1100));
    // psql's own rendering of the target instant.
    let psql_form: String = db
        .query_one("SET TimeZone = 'UTC'; SELECT now()::text", &[])
        .or_else(|_| db.query_one("SELECT now()::text", &[]))
        .unwrap()
        .get(0);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    db.batch_execute("INSERT INTO t (tag) VALUES ('after')")
        .unwrap();
    c.switch_and_wait(5432);

    let exact = pgpitr_time::parse(&psql_form, chrono::Utc::now())
        .unwrap()
        .time;
    let berlin = exact.with_timezone(&chrono_tz::Europe::Berlin);
    let naive_berlin = berlin.format("%Y-%m-%d %H:%M:%S%.6f").to_string();
    let forms = [
        psql_form.clone(),
        exact.format("%Y-%m-%d %H:%M:%S%.6f UTC").to_string(),
        berlin
            .format("%Y-%m-%d %H:%M:%S%.6f%:z")
            .to_string()
            .trim_end_matches(":00")
            .to_string(), // +01 / +02
        berlin.format("%Y-%m-%d %H:%M:%S%.6f%z").to_string(), // +0100
        format!("{naive_berlin} Europe/Berlin"),
        exact.to_rfc3339(),
    ];
    for f in &forms {
        let r = pgpitr_env(
            &c,
            &[],
            &[
                "restore",
                "--to",
                f,
                "--into",
                "/nonexistent-x",
                "--port",
                "5435",
                "--dry-run",
                "--json",
            ],
        );
        assert_eq!(r.code, 0, "{f}: {}", r.stderr);
        assert_eq!(planned_time(&r), pgpitr_time::trunc_micros(exact), "{f}");
    }
    // Zone-less: local time (TZ), and the plan says so.
    let r = pgpitr_env(
        &c,
        &[("TZ", "Europe/Berlin")],
        &[
            "restore",
            "--to",
            &naive_berlin,
            "--into",
            "/nonexistent-x",
            "--port",
            "5435",
            "--dry-run",
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stdout
            .contains("has no zone: read as local time Europe/Berlin"),
        "{}",
        r.stdout
    );

    // Restore to psql's form: exact sentinel rows.
    let into = c.root.join("restored-time");
    c.restore(&psql_form, &into, 5436, &[]).ok();
    let mut restored = c.connect(5436);
    assert_eq!(pgpitr_integration::tags(&mut restored), vec!["before"]);
    drop(restored);
    c.discard(&into);

    // The window status prints, pasted back, is accepted (local and --utc forms).
    for env in [[("TZ", "America/St_Johns")], [("TZ", "UTC")]] {
        let st = pgpitr_env(&c, &env, &["status"]).ok();
        let line = st
            .stdout
            .lines()
            .find(|l| l.starts_with("restorable from "))
            .unwrap_or_else(|| panic!("{}", st.stdout));
        let rest = line.trim_start_matches("restorable from ");
        let (start, rest) = rest.split_once(" to ").unwrap();
        let end = rest.split(" (timeline").next().unwrap();
        assert!(start.contains('.'), "window start has its fraction: {line}");
        for bound in [start, end] {
            let r = pgpitr_env(
                &c,
                &env,
                &[
                    "restore",
                    "--to",
                    bound,
                    "--into",
                    "/nonexistent-x",
                    "--port",
                    "5435",
                    "--dry-run",
                ],
            );
            assert_eq!(r.code, 0, "pasting {bound:?} from {line:?}: {}", r.stderr);
        }
    }
}

/// `status` with the archive folder gone fails with a message naming it (it printed
/// `0 objects` and a window, exit 0).
#[test]
fn status_fails_when_the_archive_folder_is_missing() {
    let c = Cluster::start(ClusterOptions::default());
    c.basebackup();
    c.tool("pgpitr", &["status"]).ok();
    let mut cfg = c.cfg.clone();
    cfg.archive.dir = c.root.join("archive-that-is-not-there");
    let p = c.write_config(&cfg, "missing-archive.toml");
    let r = c.tool_with(&p, "pgpitr", &["status"]);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stderr
            .contains("archive-that-is-not-there does not exist")
            && r.stderr.contains("archive.dir"),
        "{}",
        r.stderr
    );
    assert_eq!(r.stderr.trim().lines().count(), 1, "{}", r.stderr);
    let r = c.tool_with(&p, "pgpitr", &["status", "--json"]);
    assert_eq!(r.code, 1);
    let doc: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(doc["ok"], false);
}

/// `--dry-run` checks what the real run would trip over, before touching anything: a taken
/// port, a config file the server's user cannot read, a target folder it cannot reach.
#[test]
fn dry_run_refuses_a_taken_port_and_unreachable_files() {
    root_only();
    let c = Cluster::start(ClusterOptions::default());
    let mut db = c.connect(5432);
    db.batch_execute("CREATE TABLE t (id serial, tag text)")
        .unwrap();
    c.basebackup();
    c.switch_and_wait(5432);
    let into = c.root.join("never-created");
    let into_s = into.to_str().unwrap();

    // Port 5432 is the running source server's.
    let r = c.tool(
        "pgpitr",
        &[
            "restore",
            "--to",
            "latest",
            "--into",
            into_s,
            "--port",
            "5432",
            "--dry-run",
        ],
    );
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    assert!(r.stderr.contains("port 5432 is taken"), "{}", r.stderr);
    assert!(r.stdout.contains("check:    FAILED"), "{}", r.stdout);
    assert!(!into.exists());

    // A config only root can read: found now, not when recovery stops.
    let private = c.root.join("private");
    fs::create_dir(&private).unwrap();
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&private, fs::Permissions::from_mode(0o700)).unwrap();
    let cfg_copy = private.join("pgpitr.toml");
    fs::copy(&c.cfg_path, &cfg_copy).unwrap();
    let r = c.tool_with(
        &cfg_copy,
        "pgpitr",
        &[
            "restore",
            "--to",
            "latest",
            "--into",
            into_s,
            "--port",
            "5440",
            "--dry-run",
            "--json",
        ],
    );
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stderr.contains("user `postgres` cannot enter")
            && r.stderr.contains(private.to_str().unwrap()),
        "{}",
        r.stderr
    );
    let doc: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(doc["ok"], false);
    let failed: Vec<&str> = doc["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["ok"] == false)
        .map(|c| c["check"].as_str().unwrap())
        .collect();
    assert_eq!(failed, vec!["config_access"], "{doc}");

    // A target under a folder the server cannot enter; the real run refuses it as well.
    let hidden = private.join("restore-here");
    let r = c.restore("latest", &hidden, 5441, &[]);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stderr.contains("refused before touching anything")
            && r.stderr.contains("user `postgres` needs execute/search on"),
        "{}",
        r.stderr
    );
    assert!(!hidden.exists());

    // And all clear: the dry run passes.
    c.tool(
        "pgpitr",
        &[
            "restore",
            "--to",
            "latest",
            "--into",
            into_s,
            "--port",
            "5440",
            "--dry-run",
        ],
    )
    .ok();
}

/// Bytes on disk of every file under `dir`, each inode counted once (files vanishing
/// mid-walk count as gone). Counting by inode matters: a file is published by linking its
/// temp name to its final name and then unlinking the temp name, so a walk can meet one
/// file under both names; that is one file on disk, not two.
fn tree_bytes(dir: &std::path::Path) -> u64 {
    fn walk(dir: &std::path::Path, seen: &mut std::collections::HashSet<(u64, u64)>) -> u64 {
        use std::os::unix::fs::MetadataExt;
        let mut total = 0;
        let Ok(rd) = fs::read_dir(dir) else { return 0 };
        for e in rd.flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => total += walk(&e.path(), seen),
                Ok(m) if seen.insert((m.dev(), m.ino())) => total += m.len(),
                _ => {}
            }
        }
        total
    }
    walk(dir, &mut std::collections::HashSet::new())
}

/// basebackup streams pg_basebackup's tar through checking and compression: the backup
/// folder never holds more than the compressed backup plus its small metadata files (it held
/// the whole uncompressed tar before).
#[test]
fn basebackup_peak_disk_is_the_compressed_backup() {
    let c = Cluster::start(ClusterOptions::default());
    let mut db = c.connect(5432);
    db.batch_execute(
        "CREATE TABLE t (id serial, tag text); \
         INSERT INTO t (tag) SELECT repeat('compressible ', 20) || g FROM generate_series(1, 200000) g",
    )
    .unwrap();
    let backups = c.cfg.backup.dir.clone();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let stop = stop.clone();
        let backups = backups.clone();
        std::thread::spawn(move || {
            let mut peak = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                peak = peak.max(tree_bytes(&backups));
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            peak
        })
    };
    let r = c.tool("basebackup", &["--json"]).ok();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let peak = sampler.join().unwrap();
    let info: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    let file = &info["files"][0];
    let stored = file["stored_bytes"].as_u64().unwrap();
    let raw = file["raw_bytes"].as_u64().unwrap();
    let id = info["id"].as_str().unwrap();
    // What the finished backup keeps: the compressed tar and its small metadata files
    // (backup_manifest, the catalog snapshot, backup.json).
    let kept = tree_bytes(&backups.join(id));
    println!("raw {raw} B, stored {stored} B, kept {kept} B, peak in backup.dir {peak} B");
    assert!(
        raw > 4 * stored,
        "the data should compress well: {raw} vs {stored}"
    );
    assert!(
        peak <= kept + 4096,
        "peak {peak} B > the finished backup's {kept} B (compressed tar {stored} B and its metadata)"
    );
    // The stored backup restores: the manifest check and the tar are intact.
    c.tool("pgpitr", &["verify"]).ok();
    c.switch_and_wait(5432);
    let into = c.root.join("restored-stream");
    c.restore("immediate", &into, 5437, &[]).ok();
    let mut restored = c.connect(5437);
    let n: i64 = restored
        .query_one("SELECT count(*) FROM t", &[])
        .unwrap()
        .get(0);
    assert_eq!(n, 200000);
}

/// Every flag of every binary and subcommand has help text (`--json`, `--fix`, `--what` had
/// none).
#[test]
fn every_flag_has_help_text() {
    let bins = pgpitr_integration::built_bins();
    let mut runs: Vec<(String, Vec<&str>)> = pgpitr_integration::TOOLS
        .iter()
        .map(|t| (t.to_string(), vec!["--help"]))
        .collect();
    for sub in [
        vec!["status", "--help"],
        vec!["restore", "--help"],
        vec!["verify", "--help"],
        vec!["demo", "--help"],
        vec!["zfs", "ensure", "--help"],
        vec!["config", "check", "--help"],
    ] {
        runs.push(("pgpitr".into(), sub));
    }
    for (tool, args) in runs {
        let r = Run::from(Command::new(bins.join(&tool)).args(&args).output().unwrap()).ok();
        let lines: Vec<&str> = r.stdout.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let t = line.trim_start();
            // Flags ("-c, --config", "--json"), not possible values ("- wal: ...").
            if !t.starts_with('-') || t.starts_with("- ") {
                continue;
            }
            // "-c, --config <PATH>  Instance config file", or (clap's next-line layout) the
            // description on the following, further indented line.
            let same_line = t
                .split_once("  ")
                .map(|(_, d)| !d.trim().is_empty())
                .unwrap_or(false);
            let indent = line.len() - t.len();
            let next_line = lines.get(i + 1).is_some_and(|n| {
                let nt = n.trim_start();
                !nt.is_empty() && !nt.starts_with('-') && n.len() - nt.len() > indent
            });
            assert!(same_line || next_line, "{tool} {args:?}: no help for {t:?}");
        }
    }
    // The demo makes its own cluster: its help lists no instance flag, and it refuses them.
    let demo = Run::from(
        Command::new(bins.join("pgpitr"))
            .args(["demo", "--help"])
            .output()
            .unwrap(),
    )
    .ok();
    assert!(
        !demo.stdout.contains("--config") && !demo.stdout.contains("--instance"),
        "{}",
        demo.stdout
    );
    let r = Run::from(
        Command::new(bins.join("pgpitr"))
            .args(["demo", "--config", "/etc/pgpitr/main.toml"])
            .output()
            .unwrap(),
    );
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("reads no instance config"),
        "{}",
        r.stderr
    );
}

/// The demo ends with the `pgpitr restore` command it stands for and where to read next.
#[test]
fn demo_ends_with_the_equivalent_restore_command() {
    let bins = pgpitr_integration::built_bins();
    let r = Run::from(
        Command::new(bins.join("pgpitr"))
            .arg("demo")
            .output()
            .unwrap(),
    )
    .ok();
    let tail: Vec<&str> = r.stdout.lines().rev().take(4).collect();
    assert!(
        // The DELETE's own transaction, left out: a restore to its commit time would keep it.
        tail.iter().any(|l| l.contains("restore --to xid:")
            && l.contains("--exclusive")
            && l.contains("--into")
            && l.contains("docs/runbook.md")),
        "{}",
        r.stdout
    );
}

/// Without a terminal (journald, a pipe), every long step prints a progress line every
/// `PGPITR_PROGRESS_SECONDS`: basebackup's streaming, restore's extraction and replay.
#[test]
fn progress_lines_without_a_terminal() {
    let c = Cluster::start(ClusterOptions::default());
    let mut db = c.connect(5432);
    db.batch_execute(
        "CREATE TABLE t AS SELECT g AS id, md5(g::text) AS tag FROM generate_series(1, 200000) g",
    )
    .unwrap();
    let fast = [("PGPITR_PROGRESS_SECONDS", "0.01")];
    let b = c.tool_env(&c.cfg_path, "basebackup", &fast, &[]).ok();
    assert!(
        b.stderr
            .contains("streaming, checking and compressing base.tar:"),
        "{}",
        b.stderr
    );
    db.batch_execute("INSERT INTO t SELECT g, 'more' FROM generate_series(1, 100000) g")
        .unwrap();
    c.switch_and_wait(5432);
    let into = c.root.join("restored-progress");
    c.track(&into);
    let r = pgpitr_env(
        &c,
        &fast,
        &[
            "restore",
            "--to",
            "latest",
            "--into",
            into.to_str().unwrap(),
            "--port",
            "5436",
        ],
    )
    .ok();
    assert!(r.stderr.contains("extracting base.tar:"), "{}", r.stderr);
    assert!(
        r.stderr.contains("replayed to ") || r.stderr.contains("replaying WAL"),
        "{}",
        r.stderr
    );
}
